"""OCI image layouts: a directory (`oci:DIR[:REF]`) or the same as a tar (`oci-archive:PATH`).

Only regular files are read from a layout directory, each up to its size limit. The top-level
index.json may be far larger than a manifest (it lists every image of the layout): up to
MAX_JSON_BYTES it is parsed at once, above that descriptor by descriptor, so memory follows
one descriptor rather than the whole list.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import weakref
from typing import Callable, Iterable, Iterator

from .. import collector
from ..errors import ImgdexError, SourceError, printable
from ..model import ImageRecord
from ..references import Reference, is_bare_tag, parse_reference
from ..shard import in_shard
from . import configbounds
from . import mediatypes as mt
from .parse import (
    MAX_INDEX_DEPTH,
    MAX_JSON_BYTES,
    MAX_PARSED_BYTES,
    Context,
    Walks,
    load_object,
    parse_descriptor,
    parsed_size,
    walk,
)
from .jsonstream import STARTS_A_VALUE, JsonText, loads
from ..files import not_regular, open_readable
from .tarball import MAX_INDEX_BYTES, TarMembers

_PIECE = 1 << 20
# A plain blob is opened without following links, and without blocking should a FIFO be swapped in.
_PLAIN_OPEN = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# A blob folder read this many times is listed once (a cheaper way to learn which blobs are plain
# files than an lstat each), unless it holds more than _MAX_LISTED files (about 100 bytes each).
_LIST_AFTER = 64
_DIR_FD = os.open in os.supports_dir_fd and os.stat in os.supports_dir_fd
_MAX_LISTED = 1_000_000
# Blob sizes kept at most (about 200 bytes each). Shared base layers are what the cache is for; an
# image's own layers are asked about once, so a large layout would otherwise keep them all.
_MAX_SIZES = 65_536


def _regular_names(folder: int) -> frozenset[str]:
    """The names of the regular files (not links) in `folder`, from one listing: the type of each
    comes with its name. Empty when the folder cannot be listed or holds more than _MAX_LISTED."""
    names = set()
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_file(follow_symlinks=False):
                    names.add(entry.name)
                    if len(names) > _MAX_LISTED:
                        return frozenset()
    except OSError:
        return frozenset()
    return frozenset(names)


def read_plain(name: str, folder: int, limit: int) -> bytes | None:
    """The bytes of `name` in the open folder `folder` when it is a regular file (not a link) of at
    most `limit` bytes that reads whole; None for anything else, which the caller reads the
    checked way, wording any error."""
    try:
        fd = os.open(name, _PLAIN_OPEN, dir_fd=folder)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode) and info.st_size <= limit:
            data = os.read(fd, info.st_size + 1)
            if len(data) == info.st_size:
                return data
    except OSError:
        pass
    finally:
        os.close(fd)
    return None


def _blob_path(digest: str) -> str:
    algorithm, _, encoded = digest.partition(":")
    return f"blobs/{algorithm}/{encoded}"


class DirBlobs:
    """Blobs of a layout directory. A blob reached through a symlink must stay inside the layout."""

    holder = "layout"  # what errors call the root

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self._real_root = os.path.realpath(root)
        self._sizes: dict[str, int | None] = {}
        self._safe_folders: set[str] = set()
        # algorithm -> a descriptor of its blob folder, once that folder was found inside the layout:
        # blobs are opened relative to it, which spares the kernel the walk down the whole path
        self._plain_folders: dict[str, int] = {}
        # algorithm -> the names of the regular files of its folder, listed once it is read much
        self._regular: dict[str, frozenset[str]] = {}
        self._reads: dict[str, int] = {}

    def _relative(self, digest: str) -> str:
        """Where the blob lies below the root."""
        return _blob_path(digest)

    def _what(self, relative: str) -> str:
        """What messages call the file at `relative`."""
        return "blob"

    def _checked_path(self, digest: str) -> str:
        relative = self._relative(digest)
        return self.checked(relative, digest.partition(":")[0], self._what(relative))

    def checked(self, relative: str, algorithm: str = "", what: str = "blob") -> str:
        """The path of `relative` below the root, once what leads there is found inside it."""
        path = os.path.join(self.root, relative)
        folder = os.path.dirname(relative)
        if folder not in self._safe_folders:
            self.check_inside(os.path.join(self.root, folder), "folder")
            self._safe_folders.add(folder)
            if folder == f"blobs/{algorithm}" and "/" not in algorithm and algorithm not in (".", ".."):
                self._open_plain_folder(algorithm, os.path.join(self.root, folder))
        try:
            if stat.S_ISLNK(os.lstat(path).st_mode):
                self.check_inside(path, what)
        except OSError:
            pass  # missing, a name too long, a folder that is a file: the caller's access says which
        return path

    def _open_plain_folder(self, algorithm: str, path: str) -> None:
        if not _DIR_FD:
            return
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return  # a linked or unreadable folder: its blobs go the checked way
        self._plain_folders[algorithm] = fd
        weakref.finalize(self, os.close, fd)

    def check_inside(self, path: str, what: str = "blob") -> None:
        if not self._inside(path):
            # name the link that leaves, which may be a folder on the way (blobs/ linked elsewhere)
            relative = os.path.relpath(path, self.root).split(os.sep)
            for end in range(1, len(relative)):
                folder = os.path.join(self.root, *relative[:end])
                if not self._inside(folder):
                    raise SourceError(printable(folder), f"folder is a symlink that points outside the {self.holder}")
            raise SourceError(printable(path), f"{what} is a symlink that points outside the {self.holder}")

    def _inside(self, path: str) -> bool:
        try:
            real = os.path.realpath(path)
        except RecursionError:
            # realpath follows each link by a recursive call (unlike the kernel, which stops at 40):
            # a chain of a thousand links inside the layout ended the whole run.
            raise SourceError(printable(path), os.strerror(errno.ELOOP)) from None
        return real == self._real_root or real.startswith(self._real_root + os.sep)

    def _plain_file(self, digest: str) -> tuple[str, int, os.stat_result] | None:
        """(name, folder descriptor, lstat) of a blob that is a regular file, not a symlink, in a
        folder already found inside the layout; None for anything else, which the checked path
        (`_checked_path`) handles."""
        algorithm, _, encoded = digest.partition(":")
        folder = self._plain_folders.get(algorithm)
        if folder is None or not encoded or "/" in encoded or encoded[0] == ".":
            return None
        try:
            info = os.lstat(encoded, dir_fd=folder)
        except (OSError, ValueError):
            return None
        return (encoded, folder, info) if stat.S_ISREG(info.st_mode) else None

    def _plain_read_path(self, digest: str) -> tuple[str, int] | None:
        """(name, folder descriptor) of a blob that is a regular file, as `_plain_file`; for a folder
        read often, its listing tells the file's type, so no lstat is needed before opening it."""
        algorithm, _, encoded = digest.partition(":")
        regular = self._regular.get(algorithm)
        if regular is None:
            reads = self._reads[algorithm] = self._reads.get(algorithm, 0) + 1
            if reads == _LIST_AFTER and algorithm in self._plain_folders:
                regular = self._regular[algorithm] = _regular_names(self._plain_folders[algorithm])
        if regular is not None and encoded in regular:
            return encoded, self._plain_folders[algorithm]
        plain = self._plain_file(digest)
        return None if plain is None else plain[:2]

    def blob_size(self, digest: str) -> int | None:
        if digest not in self._sizes:
            if len(self._sizes) >= _MAX_SIZES:
                self._sizes.clear()  # what is still shared is asked about again soon
            plain = self._plain_file(digest)
            if plain is not None:
                self._sizes[digest] = plain[2].st_size
                return plain[2].st_size
            path = self._checked_path(digest)
            try:
                info = os.stat(path)
            except OSError:
                self._sizes[digest] = None
            else:
                if not stat.S_ISREG(info.st_mode):
                    raise SourceError(printable(path), not_regular("blob", info.st_mode))
                self._sizes[digest] = info.st_size
        return self._sizes[digest]

    def read_blob(self, digest: str, limit: int) -> bytes:
        # Most blobs are plain files: one lstat (or the folder's listing), an open that cannot follow
        # a link swapped in since, one fstat and one read. Anything else (a link, a special file, a
        # file that changes, any error) goes the checked way below, which also words the error.
        plain = self._plain_read_path(digest)
        if plain is not None:
            data = read_plain(plain[0], plain[1], limit)
            if data is not None:
                return data
        return self._read_checked(digest, limit)

    def _read_checked(self, digest: str, limit: int) -> bytes:
        return self.read_path(self._checked_path(digest), limit, self._what(self._relative(digest)))

    def read_path(self, path: str, limit: int, what: str = "blob") -> bytes:
        """A checked path's bytes (`checked`), up to `limit`; errors name the file."""
        try:
            with open_readable(path, what) as f:
                size = os.fstat(f.fileno()).st_size
                if size > limit:
                    raise SourceError(printable(path), f"{what} is {size} bytes, over the {limit}-byte limit")
                # Never more than the size checked (read(n) allocates n bytes up front), plus one
                # byte to see whether the file grew since.
                data = f.read(size)
                grew = bool(f.read(1))
        except FileNotFoundError:
            raise SourceError(printable(path), f"{what} is missing") from None
        except OSError as exc:
            raise SourceError(printable(path), exc.strerror or str(exc)) from None
        if grew or len(data) != size:
            raise SourceError(printable(path), f"{what} changed size while it was read")
        return data

    def blob_digest(self, digest: str) -> str | None:
        """The blob's digest by the algorithm `digest` names (one of `DIGEST_ALGORITHMS`), from its
        bytes; None when it is absent."""
        algorithm = digest.partition(":")[0]
        path = self._checked_path(digest)
        hasher = hashlib.new(algorithm)
        try:
            with open_readable(path, "blob") as f:
                while chunk := f.read(_PIECE):
                    hasher.update(chunk)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise SourceError(printable(path), exc.strerror or str(exc)) from None
        return f"{algorithm}:{hasher.hexdigest()}"


class TarBlobs:
    """Blobs of a layout packed in a tar (oci-archive, Docker 25+ save)."""

    def __init__(self, members: TarMembers):
        self.members = members

    def blob_size(self, digest: str) -> int | None:
        return self.members.size(_blob_path(digest))

    def read_blob(self, digest: str, limit: int) -> bytes:
        return self.members.read(_blob_path(digest), limit, "blob")

    def blob_digest(self, digest: str) -> str | None:
        algorithm = digest.partition(":")[0]
        hexpart = self.members.hexdigest(_blob_path(digest), algorithm)
        return None if hexpart is None else f"{algorithm}:{hexpart}"


def names_from_annotations(annotations: dict, ctx: Context, where: str, digest: str = "") -> list[Reference]:
    """Names of a top-level descriptor of manifest `digest`: containerd's full name, else ref.name
    (a tag or a reference). A name whose own digest is another manifest's names none of this one."""
    full = annotations.get(mt.ANNOTATION_CONTAINERD_NAME)
    ref_name = annotations.get(mt.ANNOTATION_REF_NAME)
    try:
        if isinstance(full, str) and full:
            text, ref = full, parse_reference(full)
            if not ref.tag and isinstance(ref_name, str) and is_bare_tag(ref_name):
                ref = Reference(ref.registry, ref.name, ref_name, ref.digest)
        elif isinstance(ref_name, str) and ref_name:
            if is_bare_tag(ref_name):
                return [Reference(ctx.registry, ctx.repository, ref_name)]
            text, ref = ref_name, parse_reference(ref_name)
        else:
            return []
    except ImgdexError as exc:
        ctx.note(f"{where}: ignoring name: {exc}")
        return []
    if ref.digest and digest and ref.digest != digest:
        ctx.note(f"{where}: ignoring name {printable(text)!r}: it names manifest {ref.digest}, not {digest}")
        return []
    return [ref]


def _matches(annotations: dict, wanted: str) -> bool:
    for key in (mt.ANNOTATION_REF_NAME, mt.ANNOTATION_CONTAINERD_NAME):
        value = annotations.get(key)
        if isinstance(value, str) and value == wanted:
            return True
    return False


def _annotations(raw: object) -> dict:
    return raw["annotations"] if isinstance(raw, dict) and isinstance(raw.get("annotations"), dict) else {}


# The image spec requires the key; a document without it (`{}`, a manifest copied there) is no
# index, and reading it as an empty one would index nothing without a word.
_NO_MANIFESTS = "index.json is not an image index (it has no manifests key)"


def top_descriptors(index_raw: bytes, where: str) -> list[tuple[object, dict]]:
    """(raw descriptor, annotations) of index.json; `"manifests": null` (Go's nil list) counts as empty."""
    doc = load_object(index_raw, where, "index.json")
    if doc.get("schemaVersion") not in (2, None):
        raise SourceError(where, f"index.json has unsupported schemaVersion {doc.get('schemaVersion')!r}")
    if "manifests" not in doc:
        raise SourceError(where, _NO_MANIFESTS)
    manifests = doc["manifests"]
    if manifests is None:
        return []
    if not isinstance(manifests, list):
        raise SourceError(where, "index.json: manifests is not a list")
    return [(raw, _annotations(raw)) for raw in manifests]


class IndexJson:
    """A layout's top-level index.json, read from `chunks()` (a fresh iterator of byte pieces per call).

    Up to MAX_JSON_BYTES it is parsed at once, as every other document, unless it holds so many
    small values that their objects would take more than MAX_PARSED_BYTES (8 MiB of `0,` is four
    million of them). Otherwise it is parsed one value at a time, twice: a first pass checks the
    whole document (syntax, schemaVersion, the type of `manifests`) before any image is handed out,
    as for a small index; the second hands out the descriptors. Memory follows the largest
    descriptor, not the number of images.
    """

    def __init__(self, where: str, size: int, chunks: Callable[[], Iterable[bytes]]):
        self.where = where
        self.size = size
        self._chunks = chunks
        self._small: list[tuple[object, dict]] | None = None
        self._whole: bool | None = None
        self._checked: tuple[int, int] | None = None  # (which `manifests` key counts, its length)
        self._leads: bool | None = None  # whether a descriptor may be an index (`_leads_further`)

    def count(self) -> int:
        if self._parsed_at_once():
            return len(self._small)
        return self._check()[1]

    def lists_indexes(self) -> bool:
        """Whether a descriptor may be an index, which other descriptors' manifests may sit below.
        Where none is, each descriptor is its own shard unit, and the walk needs no pass of its own
        to group them (`shard_keys`): the check a large index.json gets anyway tells."""
        if self._parsed_at_once():
            return any(_leads_further(raw) for raw, _ in self._small)
        self._check()
        return self._leads

    def descriptors(self) -> Iterator[tuple[object, dict]]:
        if self._parsed_at_once():
            yield from self._small
            return
        wanted, _ = self._check()
        for ordinal, raw in _index_elements(self._chunks(), self.where, {}):
            if ordinal == wanted:
                yield raw, _annotations(raw)

    def _parsed_at_once(self) -> bool:
        if self._whole is None:
            self._whole = False
            if self.size <= MAX_JSON_BYTES:
                data = b"".join(self._chunks())
                if parsed_size(data) <= MAX_PARSED_BYTES:
                    self._small = top_descriptors(data, self.where)
                    self._whole = True
        return self._whole

    def _check(self) -> tuple[int, int]:
        if self._checked is None:
            summary: dict = {}
            leads: set[int] = set()  # the `manifests` keys that list a possible index
            for ordinal, element in _index_elements(self._chunks(), self.where, summary):
                if ordinal not in leads and _leads_further(element):
                    leads.add(ordinal)
            schema = summary["schema"]
            if schema not in (2, None):
                raise SourceError(self.where, f"index.json has unsupported schemaVersion {schema!r}")
            last = summary["last"]  # json.loads keeps the last of repeated keys
            if not last:
                raise SourceError(self.where, _NO_MANIFESTS)
            kind = summary["kinds"].get(last, "null")
            if kind == "other":
                raise SourceError(self.where, "index.json: manifests is not a list")
            self._checked = (last, summary["counts"][last]) if kind == "list" else (0, 0)
            self._leads = last in leads
        return self._checked


def _index_elements(pieces: Iterable[bytes], where: str, summary: dict) -> Iterator[tuple[int, object]]:
    """(ordinal of its `manifests` key, element) for each element of each `manifests` array of a
    top-level index.json. `summary` gets the last schemaVersion, the ordinal of the last
    `manifests` key, and per key whether it held a list, null or other, and how many elements."""
    text = JsonText(pieces, where, "index.json")
    summary.update(schema=None, last=0, kinds={}, counts={})
    first = text.peek()
    if first != "{":
        if first in STARTS_A_VALUE:
            raise SourceError(where, "index.json is not a JSON object")
        text.fail("Expecting value")
    ordinal = 0
    for key in text.members():
        if key == "manifests":
            ordinal += 1
            summary["last"] = ordinal
            if text.peek() == "[":
                summary["kinds"][ordinal] = "list"
                count = 0
                for element in text.elements():
                    yield ordinal, element
                    count += 1
                summary["counts"][ordinal] = count
            else:
                summary["kinds"][ordinal] = "null" if text.value() is None else "other"
        else:
            value = text.value()
            if key == "schemaVersion":
                summary["schema"] = value
    if text.peek() != "":
        text.fail("Extra data")


def walk_layout(
    blobs,
    index: IndexJson | bytes,
    ctx: Context,
    where: str,
    ref: str = "",
    extra_names=None,
    keys: list[str] | None = None,
    wanted=None,
) -> Iterator[ImageRecord | SourceError]:
    """Every image of a layout's index.json. `extra_names(descriptor)` adds names a caller knows;
    `wanted(position, raw)`, where given, says which top-level descriptors to walk.

    With `ctx.shard`, each top-level descriptor is walked by the shard that owns its key (`keys`,
    by position; `shard_keys` when not given).
    """
    return collector.paused_while(_walk_layout(blobs, index, ctx, where, ref, extra_names, keys, wanted))


def _walk_layout(blobs, index, ctx, where, ref, extra_names, keys, wanted) -> Iterator[ImageRecord | SourceError]:
    own_keys = False  # each descriptor keyed by its own digest (`descriptor_key`)
    if ctx.shard is not None and keys is None:
        if isinstance(index, IndexJson) and not index.lists_indexes():
            own_keys = True  # what `shard_keys` would find, without a pass over index.json
        else:
            keys = shard_keys(blobs, index, where)
    found = False
    walks = Walks()
    descriptors = index.descriptors() if isinstance(index, IndexJson) else top_descriptors(index, where)
    for position, (raw, notes) in enumerate(descriptors):
        if ref and not _matches(notes, ref):
            continue
        if wanted is not None and not wanted(position, raw):
            continue
        found = True  # before the shard test: "no image named" is for a ref no shard finds
        if keys is not None and not in_shard(ctx.shard, keys[position]):
            continue
        if own_keys and not in_shard(ctx.shard, descriptor_key(raw, position)):
            continue
        try:
            descriptor = parse_descriptor(raw, where, f"index.json manifests[{position}]")
        except SourceError as exc:
            yield exc
            continue
        names = names_from_annotations(notes, ctx, where, descriptor.digest)
        if extra_names is not None:
            names = names + extra_names(descriptor)
        yield from walk(blobs, descriptor, names, ctx, where, annotations=notes, walks=walks)
    if ref and not found:
        yield SourceError(where, f"no image named {ref!r} in index.json")


def descriptor_key(raw: object, position: int) -> str:
    """A top-level descriptor's manifest digest, from index.json alone; one without a digest (an
    error either way) is named by its position."""
    digest = raw.get("digest") if isinstance(raw, dict) else None
    return digest if isinstance(digest, str) and digest else f"manifests[{position}]"


def _may_be_index(media_type: object) -> bool:
    # Without a media type, only its bytes tell; one that is no string (an error the walk reports)
    # names nothing, and must not reach the set lookup (a list is unhashable).
    return not media_type or (isinstance(media_type, str) and media_type in mt.INDEXES)


def _leads_further(raw: object) -> bool:
    """Whether a top-level descriptor may be an index, whose manifests another descriptor may reach."""
    if not isinstance(raw, dict):
        return False
    digest = raw.get("digest")
    return isinstance(digest, str) and bool(digest) and _may_be_index(raw.get("mediaType"))


def _reachable(blobs, digest: str, expanded: dict[str, int], depth: int = 0) -> Iterator[str]:
    """The manifests an index leads to, best effort: what cannot be read leads nowhere, as in the
    walk. Read unverified; a wrong answer only joins more descriptors, never splits them.

    An index already expanded at this depth or a shallower one is not read again: its group
    already holds all it leads to, so joining it is enough. Without that, a chain of indexes that
    each list the next ten times is read 10**depth times. One first met deep is read again when met
    shallower, where the depth limit cuts fewer of its descendants."""
    if depth > MAX_INDEX_DEPTH or expanded.get(digest, MAX_INDEX_DEPTH + 1) <= depth:
        return
    expanded[digest] = depth
    try:
        if blobs.blob_size(digest) is None:
            return
        data = blobs.read_blob(digest, MAX_JSON_BYTES)
        if configbounds.too_many_values(data):
            return  # the walk refuses it
        doc = loads(data)
    except (SourceError, ValueError, UnicodeDecodeError, RecursionError):
        return
    children = doc.get("manifests") if isinstance(doc, dict) else None
    for child in children if isinstance(children, list) else ():
        if isinstance(child, dict) and isinstance(child.get("digest"), str):
            yield child["digest"]
            if _may_be_index(child.get("mediaType")):
                yield from _reachable(blobs, child["digest"], expanded, depth + 1)


def shard_keys(blobs, index: IndexJson | bytes, where: str) -> list[str]:
    """The shard key of each top-level descriptor, by position.

    A manifest may be reached from several descriptors: listed under two names, or an index's
    child that is also listed on its own (as `skopeo copy` and `docker save` of a platform leave
    them). All of them must be walked by one shard, or two shards would each write its record. So
    descriptors that reach a common manifest form one group, keyed by the least digest in it (a
    key that does not depend on the order anything is read in). Only indexes are read to find
    this out, never a plain manifest, a config or a layer.
    """
    parent: dict[str, str] = {}

    def root(node: str) -> str:
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    tops = []
    expanded: dict[str, int] = {}
    descriptors = index.descriptors() if isinstance(index, IndexJson) else top_descriptors(index, where)
    for position, (raw, _) in enumerate(descriptors):
        key = descriptor_key(raw, position)
        tops.append(key)
        parent.setdefault(key, key)
        if _leads_further(raw):
            for reached in _reachable(blobs, key, expanded):
                parent.setdefault(reached, reached)
                a, b = root(key), root(reached)
                if a != b:
                    parent[max(a, b)] = min(a, b)
    return [root(key) for key in tops]


def is_layout_dir(path: str) -> bool:
    """A directory that says it is an OCI layout: it holds an index.json or oci-layout file.

    A folder of exports may hold a layout called `oci-layout`, a directory: that says nothing.
    """
    for name in ("index.json", "oci-layout"):
        marker = os.path.join(path, name)
        if os.path.lexists(marker) and not os.path.isdir(marker):
            return True
    return False


def _file_chunks(f, where: str, limit: int) -> Iterator[bytes]:
    f.seek(0)
    total = 0
    while chunk := f.read(_PIECE):
        total += len(chunk)
        if total > limit:
            raise SourceError(where, f"index.json grew over the {limit}-byte limit while it was read")
        yield chunk


def directory_where(path: str, transport: str, nothing: str) -> str:
    """`path` as messages name it, once it is found to be a directory; else one SourceError, which
    names the transport when no path was given (`nothing` says what is missing)."""
    if not path:
        raise SourceError(transport, nothing)
    if not os.path.isdir(path):
        raise SourceError(printable(path), "not a directory" if os.path.lexists(path) else "no such file or directory")
    return printable(path)


def read_layout_dir(path: str, ctx: Context, ref: str = "") -> Iterator[ImageRecord | SourceError]:
    where = directory_where(path, "oci", "no layout directory given")
    marker = os.path.join(path, "oci-layout")
    try:
        mode = os.stat(marker).st_mode
    except OSError:
        pass  # not read; some tools write layouts without it
    else:
        if not stat.S_ISREG(mode):
            raise SourceError(printable(marker), not_regular("oci-layout", mode))
    index_path = os.path.join(path, "index.json")
    index_where = printable(index_path)
    if not os.path.lexists(index_path):
        raise SourceError(where, "directory is not an image layout (no index.json)")
    blobs = DirBlobs(path)
    blobs.check_inside(index_path, "index.json")
    try:
        f = open_readable(index_path, "index.json")
    except FileNotFoundError:
        raise SourceError(where, "directory is not an image layout (no index.json)") from None
    except OSError as exc:
        raise SourceError(index_where, exc.strerror or str(exc)) from None
    with f:
        size = os.fstat(f.fileno()).st_size
        if size > MAX_INDEX_BYTES:
            raise SourceError(index_where, f"index.json is {size} bytes, over the {MAX_INDEX_BYTES}-byte limit")
        index = IndexJson(where, size, lambda: _file_chunks(f, index_where, MAX_INDEX_BYTES))
        yield from walk_layout(blobs, index, ctx, where, ref)


def tar_index(members: TarMembers) -> IndexJson:
    """The index.json of an archive (the caller checked that it has one)."""
    chunks = members.chunks("index.json", MAX_INDEX_BYTES, "index.json")
    return IndexJson(members.where, members.size("index.json"), chunks)


def read_layout_tar(members: TarMembers, ctx: Context, ref: str = "") -> Iterator[ImageRecord | SourceError]:
    if members.size("index.json") is None:
        raise SourceError(members.where, "not an OCI archive (no index.json)")
    yield from walk_layout(TarBlobs(members), tar_index(members), ctx, members.where, ref)
