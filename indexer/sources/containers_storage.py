"""skopeo's `containers-storage:`: the local image store of podman, buildah and CRI-O
(containers/storage), read from its files, with no daemon and nothing mounted.

A store keeps its images in `GRAPHROOT/DRIVER-images/images.json`, one entry per image: its id,
its names (`localhost/app:1`, `docker.io/library/busybox:latest`) and the names of its "big data"
items, each a file in the image's folder. containers/image stores there the image's own manifest
(`manifest`), every manifest it was pulled through (`manifest-DIGEST`, the list of a
multi-platform pull among them) and the config (under its digest). Layers are kept unpacked by the
driver, not as the blobs the manifest names: their digests and sizes are the manifest's, as
`podman image inspect` reports them, and --verify does not apply.

The image's manifest has no descriptor: its digest is the sha256 of the bytes read, the same bytes
the walk then parses, and it must be the digest images.json records for that item; the config is
checked against the manifest's descriptor, as for every source.
"""

from __future__ import annotations

import base64
import dataclasses
import glob
import hashlib
import os
import re
import stat
from dataclasses import dataclass
from typing import Iterator

import msgspec

from .. import collector
from ..errors import ImgdexError, SourceError, printable
from ..files import read_small, stored_path
from ..model import Blob, ImageRecord, TagsRetired
from ..references import Reference, is_valid_digest, parse_reference
from ..shard import in_shard
from .layout import DirBlobs, directory_where, read_plain
from .parse import MAX_JSON_BYTES, MAX_PARSED_BYTES, Context, load_json, parsed_size, walk
from .registry_schema1 import is_schema1
from .vanished import holds_tags, vanished_tags

TRANSPORT = "containers-storage:"
IMAGES_JSON = "images.json"
_IMAGES_LOCK = "images.lock"
# images.json lists every image of the store, about 2 KB each: 64 MiB is some 30,000 images.
MAX_IMAGES_JSON_BYTES = 64 * 1024 * 1024
_OWN_MANIFEST = "manifest"  # containers/image's key for the image's own manifest
_MANIFEST_PREFIX = "manifest-"
_ID = re.compile(r"[0-9a-f]{64}")
_ID_PREFIX = re.compile(r"[0-9a-f]{3,64}")
# Each driver keeps its images in DRIVER-images; a root holding several is read with one named.
_IMAGES_SUFFIX = "-images"


def big_data_file(key: str) -> str:
    """The file name containers/storage gives the big-data item `key` (makeBigDataBaseName): the key
    itself when it holds only lowercase letters, digits and dots, else "=" and its base64."""
    if all(c == "." or "0" <= c <= "9" or "a" <= c <= "z" for c in key):
        return key
    return "=" + base64.b64encode(key.encode()).decode("ascii")


def is_storage_root(path: str) -> bool:
    """Whether a directory is a containers/storage graph root: `storage.lock` beside a
    `DRIVER-images` folder."""
    return os.path.isfile(os.path.join(path, "storage.lock")) and bool(_image_folders(path))


def _image_folders(root: str) -> list[str]:
    """The `DRIVER-images` folders of a root, sorted: those holding an images.json, or the lock a
    store makes before its first image."""
    found = set()
    for name in (IMAGES_JSON, _IMAGES_LOCK):
        for path in glob.glob(os.path.join(glob.escape(root), "*" + _IMAGES_SUFFIX, name)):
            if not os.path.islink(os.path.dirname(path)):
                found.add(os.path.dirname(path))
    return sorted(found)


@dataclass(frozen=True)
class StorageSpec:
    """What `containers-storage:[DRIVER@ROOT+RUNROOT:OPTIONS]REF` names; the root and driver are
    empty when not given."""

    driver: str
    root: str
    ref: str


def parse_spec(rest: str) -> StorageSpec:
    """The store specifier and the reference, split as containers/image splits them."""
    if not rest.startswith("["):
        return StorageSpec("", "", rest)
    where = TRANSPORT + rest
    close = rest.find("]")
    if close < 1:
        raise SourceError(where, "the store specifier [DRIVER@ROOT] has no closing ']'")
    inner, ref = rest[1:close], rest[close + 1 :]
    driver, at, root = inner.partition("@")
    if not at:
        driver, root = "", inner
    elif not driver:
        raise SourceError(where, "the store specifier names no driver before '@'")
    root = root.partition(":")[0].partition("+")[0]  # options, then the run root: not read
    if not root:
        raise SourceError(where, "the store specifier names no graph root")
    return StorageSpec(driver, root, ref)


def default_store() -> tuple[str, str, tuple[str, ...]]:
    """(graph root, driver, additional image stores) as podman finds them: storage.conf
    (`CONTAINERS_STORAGE_CONF`, else the user's, else the system's), else the default root of this
    user; the driver may be empty."""
    rootless = os.geteuid() != 0
    home = os.path.expanduser("~")
    config_home = os.environ.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
    candidates = [os.environ.get("CONTAINERS_STORAGE_CONF", "")]
    if rootless:
        candidates.append(os.path.join(config_home, "containers", "storage.conf"))
    candidates += ["/etc/containers/storage.conf", "/usr/share/containers/storage.conf"]
    settings = next((found for path in candidates if path and (found := _storage_conf(path)) is not None), {})
    driver = settings.get("driver", "")
    if rootless:
        data_home = os.environ.get("XDG_DATA_HOME") or os.path.join(home, ".local", "share")
        root = settings.get("rootless_storage_path", "") or os.path.join(data_home, "containers", "storage")
    else:
        root = settings.get("graphroot", "") or "/var/lib/containers/storage"
    extra = settings.get(_ADDITIONAL, ())
    return root.replace("$HOME", home).replace("$UID", str(os.geteuid())), driver, tuple(extra)


_ADDITIONAL = "additionalimagestores"


def _storage_conf(path: str) -> dict | None:
    """The `[storage]` strings of a storage.conf, and the list of `[storage.options]`
    `additionalimagestores`; None when there is no such file; a file that cannot be read or parsed
    is one SourceError."""
    if not os.path.lexists(path):
        return None
    from . import tomlfile

    try:
        data = read_small(path, tomlfile.MAX_FILE_BYTES, "storage.conf")
        table = tomlfile.loads(data, "storage.conf").get("storage", {})
    except (OSError, tomlfile.TomlRefused) as exc:
        raise SourceError(printable(path), f"storage.conf cannot be read ({exc})") from None
    if not isinstance(table, dict):
        return {}
    settings: dict = {key: value for key, value in table.items() if isinstance(value, str)}
    options = table.get("options")
    extra = options.get(_ADDITIONAL) if isinstance(options, dict) else None
    settings[_ADDITIONAL] = (
        [item for item in extra if isinstance(item, str) and item] if isinstance(extra, list) else []
    )
    return settings


@dataclass
class ContainersStorage:
    """`containers-storage:[[DRIVER@]ROOT]REF`, or a bare graph root."""

    location: str  # the graph root
    driver: str = ""
    ref: str = ""
    given: str = ""  # the source as named, for messages about REF
    extra: tuple[str, ...] = ()  # read-only stores storage.conf adds to the default one
    kind: str = "containers-storage"
    reads_layers = False
    reads_index = True  # a whole store is its word on the tags of the images recorded from it (vanished.py)
    store = None

    @classmethod
    def from_spec(cls, rest: str) -> "ContainersStorage":
        spec = parse_spec(rest)
        root, driver, extra = (spec.root, spec.driver, ()) if spec.root else default_store()
        return cls(location=root, driver=spec.driver or driver, ref=spec.ref, given=TRANSPORT + rest, extra=extra)

    def bind_store(self, store) -> None:
        self.store = store

    def records(self, ctx: Context) -> Iterator[ImageRecord | SourceError | TagsRetired]:
        ctx.source_path = stored_path(self.location)
        ctx.verify = False  # the layers are unpacked: nothing holds the bytes their digests name
        given = self.given or TRANSPORT + self.ref
        return read_storage(self.location, self.driver, self.ref, ctx, given, self.extra, self.store)


def images_folder(root: str, driver: str) -> str:
    """`ROOT/DRIVER-images`; without a driver, the only one the root holds."""
    where = directory_where(root, "containers-storage", "no graph root given")
    if driver:
        folder = os.path.join(root, driver + _IMAGES_SUFFIX)
        if not os.path.isdir(folder):
            raise SourceError(printable(folder), f"the store has no {driver} images (no such directory)")
        return folder
    folders = _image_folders(root)
    if not folders:
        raise SourceError(where, "not a containers-storage graph root (no DRIVER-images folder)")
    if len(folders) > 1:
        drivers = ", ".join(os.path.basename(f)[: -len(_IMAGES_SUFFIX)] for f in folders)
        raise SourceError(where, f"holds images of several drivers ({drivers}): name one as [DRIVER@ROOT]")
    return folders[0]


def read_storage(
    root: str,
    driver: str,
    ref: str,
    ctx: Context,
    given: str = "",
    extra: tuple[str, ...] = (),
    store=None,
) -> Iterator[ImageRecord | SourceError | TagsRetired]:
    """The images of a store, and of the read-only stores `extra` (an image the store holds too is
    its); with `ref`, those it names (`given`, the source's name, is what a message about it names).
    Read whole, with the index's `store`: the tags stored from these stores that they no longer hold
    are retired."""
    folder = images_folder(root, driver)
    entries = [(folder, position, entry) for position, entry in _entries(folder)]
    driver = driver or os.path.basename(folder)[: -len(_IMAGES_SUFFIX)]  # the one the others use too
    held = {_id_of(entry) for _, _, entry in entries}
    listed = [(folder, [entry for _, _, entry in entries])]  # every image of each store read
    for other in extra:
        try:
            other_folder = images_folder(other, driver)
            others = _entries(other_folder)
        except SourceError as exc:
            if in_shard(ctx.shard, other):
                ctx.note(f"{exc} (an additional image store of storage.conf); skipped")
            continue
        entries += [(other_folder, p, e) for p, e in others if not _id_of(e) or _id_of(e) not in held]
        held.update(_id_of(e) for _, e in others)
        listed.append((other_folder, [e for _, e in others]))
    try:
        chosen = _chosen(entries, ref, given or TRANSPORT + ref) if ref else entries
    except SourceError:
        if in_shard(ctx.shard, given or ref):  # said by one shard, as one process says it
            raise
        return

    def held_in(store_folder: str) -> str:
        """The source_path of a store's records: the root as given, an additional store's own."""
        return ctx.source_path if store_folder == folder else stored_path(os.path.dirname(store_folder))

    for store_folder in dict.fromkeys(f for f, _, _ in chosen):
        blobs = StorageBlobs(store_folder, _items([e for f, _, e in entries if f == store_folder]))
        sub = ctx if store_folder == folder else dataclasses.replace(ctx, source_path=held_in(store_folder))
        try:
            yield from collector.paused_while(_images(blobs, [c for c in chosen if c[0] == store_folder], sub))
        finally:
            blobs.close()
    if ref or not holds_tags(store):
        return  # the images a REF names are not the store's list of tags
    tags = _tags_of([entry for _, held_entries in listed for entry in held_entries])
    if tags is None:
        return
    for store_folder, _ in listed:
        path = held_in(store_folder)
        yield from vanished_tags(store, ctx.source_kind, path, tags, ctx.shard, printable(path), ctx.note)


def _tags_of(entries: list[dict]) -> set[tuple[str, str, str]] | None:
    """(registry, name, tag) of every tag the entries' names give; None when an entry's names
    cannot be known (it is no object, or its names no list), so that no tag is taken for gone."""
    tags = set()
    for entry in entries:
        names = entry.get("names", [])
        if not _ID.fullmatch(_id_of(entry)) or not isinstance(names, list):
            return None
        for text in _strings(names):
            ref = _parsed(text)
            if ref is not None and ref.tag:
                tags.add((ref.registry, ref.name, ref.tag))
    return tags


def _items(entries: list[dict]) -> dict[str, tuple[str, str]]:
    """digest -> (image id, big-data key) of the manifests and configs the store's images hold."""
    items: dict[str, tuple[str, str]] = {}
    for entry in entries:
        image_id = _id_of(entry)
        if not _ID.fullmatch(image_id):
            continue
        for key in _strings(entry.get("big-data-names")):
            digest = key[len(_MANIFEST_PREFIX) :] if key.startswith(_MANIFEST_PREFIX) else key
            if is_valid_digest(digest):
                items.setdefault(digest, (image_id, key))
    return items


def _id_of(entry: dict) -> str:
    """The entry's id as text ("" for any other value: `_images` says what is wrong with it)."""
    value = entry.get("id")
    return value if isinstance(value, str) else ""


def _images(
    blobs: StorageBlobs, chosen: list[tuple[str, int, dict]], ctx: Context
) -> Iterator[ImageRecord | SourceError]:
    folder = blobs.root
    for _, position, entry in chosen:
        image_id = entry.get("id")
        if not isinstance(image_id, str) or not _ID.fullmatch(image_id):
            if in_shard(ctx.shard, f"entry {position}"):
                yield SourceError(
                    printable(os.path.join(folder, IMAGES_JSON)), f"entry {position}: id is not 64 hex digits"
                )
            continue
        if not in_shard(ctx.shard, image_id):
            continue
        try:
            yield from _image(blobs, image_id, entry, ctx)
        except SourceError as exc:
            yield exc


def _entries(folder: str) -> list[tuple[int, dict]]:
    """(position, entry) of every image images.json lists."""
    blobs = DirBlobs(folder)
    blobs.holder = "store"
    path = blobs.checked(IMAGES_JSON, what=IMAGES_JSON)
    if not os.path.lexists(path):
        return []  # containers/storage writes it with the store's first image
    where = printable(path)
    data = blobs.read_path(path, MAX_IMAGES_JSON_BYTES, IMAGES_JSON)
    if parsed_size(data) > 4 * MAX_PARSED_BYTES:
        raise SourceError(where, f"images.json holds too many values for its {len(data)} bytes")
    doc = load_json(data, where, IMAGES_JSON)
    if not isinstance(doc, list):
        raise SourceError(where, "images.json is not a JSON list of images")
    return [(position, entry if isinstance(entry, dict) else {}) for position, entry in enumerate(doc)]


def _strings(value: object) -> list[str]:
    return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []


def _chosen(entries: list[tuple[str, int, dict]], ref: str, where: str) -> list[tuple[str, int, dict]]:
    """The entries `ref` names: an image id or a unique prefix of one, else a reference matched
    against the images' names as containers/image matches it (`app` is
    `docker.io/library/app:latest`; `NAME@DIGEST` the image of that name holding that manifest)."""
    if _ID_PREFIX.fullmatch(ref):
        found = [(f, p, e) for f, p, e in entries if isinstance(e.get("id"), str) and e["id"].startswith(ref)]
        if len(found) > 1:
            raise SourceError(where, f"the ID prefix {ref!r} names {len(found)} images")
        if found:
            return found
    try:
        wanted = parse_reference(ref)
    except ImgdexError:
        raise SourceError(where, f"{ref!r} is not an image reference or ID") from None
    if not wanted.tag and not wanted.digest:
        wanted = Reference(wanted.registry, wanted.name, "latest")
    found = []
    for folder, position, entry in entries:
        names = [_parsed(name) for name in _strings(entry.get("names"))]
        if wanted.digest:
            held = {
                name[len(_MANIFEST_PREFIX) :]
                for name in _strings(entry.get("big-data-names"))
                if name.startswith(_MANIFEST_PREFIX)
            }
            held.update(_strings(entry.get("digests")) + _strings([entry.get("digest")]))
            if wanted.digest in held and any(
                n and (n.registry, n.name) == (wanted.registry, wanted.name) for n in names
            ):
                found.append((folder, position, entry))
        elif any(n and (n.registry, n.name, n.tag) == (wanted.registry, wanted.name, wanted.tag) for n in names):
            found.append((folder, position, entry))
    if not found:
        local = _local_name(ref)
        if local and _chosen_quietly(entries, local):
            # podman names a short name it built or loaded localhost/NAME; skopeo does not look there
            raise SourceError(where, f"no such image in the store (it holds {local}: name it so)")
        raise SourceError(where, "no such image in the store")
    return found


def _local_name(ref: str) -> str:
    """`localhost/REF` for a short name without a registry host, as podman names its own builds;
    "" for anything else."""
    first = ref.partition("/")[0]
    if "@" in ref or "/" in ref and (first == "localhost" or "." in first or ":" in first):
        return ""
    name = "localhost/" + ref
    return name if ":" in ref.rpartition("/")[2] else name + ":latest"


def _chosen_quietly(entries: list[tuple[str, int, dict]], ref: str) -> bool:
    try:
        return bool(_chosen(entries, ref, ""))
    except SourceError:
        return False


def _parsed(name: str) -> Reference | None:
    try:
        return parse_reference(name)
    except ImgdexError:
        return None


class _Layer(msgspec.Struct, gc=False):
    digest: str = ""
    size: int = -1


class _Layers(msgspec.Struct, gc=False):
    layers: list[_Layer] | None = None


_LAYERS = msgspec.json.Decoder(_Layers)
_FOLDER_OPEN = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class StorageBlobs(DirBlobs):
    """The big-data items of the store's images, one image at a time (`select`), by digest: the
    image's own manifest, the manifests it was pulled through, its config. A layer is known by
    the size its manifest declares. What the image does not hold is looked for among the other
    images' items (`elsewhere`): the images a manifest list lists (`podman manifest create`,
    `podman build --manifest`) are images of the store of their own.

    A plain file is opened relative to its image's folder, itself opened without following a link:
    what is found so lies inside the store. Anything else (a link, a special file, a file that
    changes, any error) goes the checked way of DirBlobs, which also words the error."""

    holder = "store"

    def __init__(self, folder: str, elsewhere: dict[str, tuple[str, str]] | None = None):
        super().__init__(folder)
        self.elsewhere = elsewhere or {}  # digest -> (image id, big-data key) of the store's images
        self.own: set[str] = set()  # the digests the selected image holds under their own key
        self.image = ""
        self.top = ""  # the digest of the image's own manifest, once read
        self.top_data = b""
        self.manifests: set[str] = set()
        self.layers: dict[str, int] = {}
        self._folder = -1

    def select(self, image_id: str, manifests: set[str], own: set[str] = frozenset()) -> None:
        self.close()
        self.image, self.manifests, self.layers, self.top, self.top_data = image_id, manifests, {}, "", b""
        self.own = own
        self._safe_folders.clear()  # one image's folder at a time
        try:
            self._folder = os.open(os.path.join(self.root, image_id), _FOLDER_OPEN)
        except FileNotFoundError:
            raise SourceError(
                printable(os.path.join(self.root, image_id)),
                "the image's folder is missing (removed since images.json was read?)",
            ) from None
        except OSError:
            pass  # a link, or a file: the checked way says which and whether it may be read

    def close(self) -> None:
        if self._folder >= 0:
            os.close(self._folder)
            self._folder = -1

    def _located(self, digest: str) -> tuple[str, str, str]:
        """(image id, file name, what it is) of a digest: the selected image's, else another's."""
        if digest == self.top:
            return self.image, big_data_file(_OWN_MANIFEST), "manifest"
        if digest in self.manifests:
            return self.image, big_data_file(_MANIFEST_PREFIX + digest), "manifest"
        if digest not in self.own and digest in self.elsewhere:
            image, key = self.elsewhere[digest]
            return image, big_data_file(key), "manifest" if key.startswith(_MANIFEST_PREFIX) else "config"
        return self.image, big_data_file(digest), "config"

    def _relative(self, digest: str) -> str:
        image, name, _ = self._located(digest)
        return f"{image}/{name}"

    def _what(self, relative: str) -> str:
        name = relative.rpartition("/")[2]
        try:
            key = base64.b64decode(name[1:], validate=True).decode() if name.startswith("=") else name
        except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
            return "blob"
        return "manifest" if key.startswith(_OWN_MANIFEST) else "config"

    def read_item(self, name: str, limit: int, what: str) -> bytes:
        """The bytes of the file `name` of the selected image, up to `limit`."""
        if self._folder >= 0:
            data = read_plain(name, self._folder, limit)
            if data is not None:
                return data
        return self.read_path(self.checked(f"{self.image}/{name}", what=what), limit, what)

    def read_blob(self, digest: str, limit: int) -> bytes:
        if digest == self.top and self.top_data:
            return self.top_data  # the bytes its digest was computed from
        image, name, what = self._located(digest)
        if image == self.image:
            data = self.read_item(name, limit, what)
        else:  # another image's: read the checked way, which also finds its folder inside the store
            data = self.read_path(self.checked(f"{image}/{name}", what=what), limit, what)
        if what == "manifest":
            self._declare(data)
        return data

    def _declare(self, data: bytes) -> None:
        """Note the layers a manifest declares; the walk says what is wrong with one that is not
        plain (it reads the same bytes)."""
        try:
            layers = _LAYERS.decode(data).layers
        except (msgspec.DecodeError, RecursionError):
            layers = None  # the exact parser's turn: it says what the walk will say
        if layers is not None:
            for layer in layers:
                self.layers.setdefault(layer.digest, layer.size)
            return
        try:
            doc = load_json(data, "", "")
        except SourceError:
            return
        raw = doc.get("layers") if isinstance(doc, dict) else None
        for layer in raw if isinstance(raw, list) else ():
            if isinstance(layer, dict) and isinstance(layer.get("digest"), str) and type(layer.get("size")) is int:
                self.layers.setdefault(layer["digest"], layer["size"])

    def blob_size(self, digest: str) -> int | None:
        declared = self.layers.get(digest)
        if declared is not None and declared >= 0:
            return declared
        image, name, _ = self._located(digest)
        if self._folder >= 0 and image == self.image:
            try:
                info = os.stat(name, dir_fd=self._folder, follow_symlinks=False)
            except OSError:
                return None
            if stat.S_ISREG(info.st_mode):
                return info.st_size
        return super().blob_size(digest)


def _image(blobs: StorageBlobs, image_id: str, entry: dict, ctx: Context) -> Iterator[ImageRecord | SourceError]:
    where = printable(os.path.join(blobs.root, image_id))
    big = set(_strings(entry.get("big-data-names")))
    manifests = {
        name[len(_MANIFEST_PREFIX) :]
        for name in big
        if name.startswith(_MANIFEST_PREFIX) and is_valid_digest(name[len(_MANIFEST_PREFIX) :])
    }
    blobs.select(image_id, manifests, {name for name in big if is_valid_digest(name)})
    if _OWN_MANIFEST in big:
        data = blobs.read_item(big_data_file(_OWN_MANIFEST), MAX_JSON_BYTES, "manifest")
        if is_schema1(data):
            raise SourceError(where, "the image's manifest is a schema1 manifest, which is not supported")
        top = "sha256:" + hashlib.sha256(data).hexdigest()
        recorded = entry.get("big-data-digests")
        recorded = recorded.get(_OWN_MANIFEST) if isinstance(recorded, dict) else None
        if isinstance(recorded, str) and recorded != top:
            # containers/storage recorded the digest of the bytes it wrote: these are others.
            raise SourceError(where, f"manifest is {top}, not {recorded} as images.json records it")
        blobs.top, blobs.top_data = top, data
        blobs._declare(data)
        tops = [Blob(top, len(data), "", ())]
    elif manifests:  # no item names the image's own manifest: each manifest kept is walked
        tops = []
        for digest in sorted(manifests):
            size = blobs.blob_size(digest)
            if size is None:
                raise SourceError(where, f"manifest {digest} is missing")
            tops.append(Blob(digest, size, "", ()))
    else:
        raise SourceError(where, "the image holds no manifest")
    names = _names(entry, ctx, where, {top.digest for top in tops} | manifests)
    for top in tops:
        yield from walk(blobs, top, names, ctx, where, annotations={})


def _names(entry: dict, ctx: Context, where: str, digests: set[str]) -> list[Reference]:
    """The image's names; one that does not parse, or names another manifest, is noted and left out."""
    names = []
    for text in _strings(entry.get("names")):
        ref = _parsed(text)
        if ref is None:
            ctx.note(f"{where}: ignoring name {printable(text)!r}: not an image reference")
        elif ref.digest and ref.digest not in digests:
            ctx.note(f"{where}: ignoring name {printable(text)!r}: it names another manifest")
        else:
            names.append(ref)
    return names
