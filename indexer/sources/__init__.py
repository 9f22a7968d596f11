"""Image sources, named as skopeo names them, behind one small protocol.

Each source yields normalised records (or a SourceError per image that failed) and raises
SourceError when the whole source cannot be read. A new source is one module with a class that
satisfies `Source`, and one line in `SCHEMES`.
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

from ..errors import NotAnArchive, SourceError, printable
from ..model import ImageRecord
from ..shard import in_shard
from .containers_storage import ContainersStorage, is_storage_root, read_storage
from .docker_archive import Selection, parse_selection, read_docker_archive
from .layout import is_layout_dir, read_layout_dir, read_layout_tar
from .parse import Context
from .skopeo_dir import is_skopeo_dir, read_skopeo_dir, synced_name
from ..files import not_regular, stored_path, walk
from .tarball import STDIN_NAMES, TarMembers

# What a mistyped transport looks like; two characters at least, so `C:` stays a path.
_TRANSPORT_LIKE = re.compile(r"[A-Za-z][A-Za-z0-9._+-]+")


class Source(Protocol):
    kind: str
    location: str
    # Whether layer contents can be read (and so checked with --verify): archives and layouts only.
    reads_layers: bool
    # Whether it reads what is already indexed (`bind_store`), to skip it: registry crawls, which
    # also yield TagMoves and TagsRetired (model.py) for tags that changed without a new record.
    reads_index: bool

    def records(self, ctx: Context) -> Iterator[ImageRecord | SourceError]: ...


@dataclass(frozen=True)
class SourceOptions:
    """What the command line says about sources; each kind takes its own fields."""

    docker_host: str = ""  # docker-daemon:
    all_images: bool = False  # docker-daemon:
    registry: object = None  # docker://: a registry_client.RegistryOptions (which imports urllib3)


class _LocalFiles:
    """Archives and layouts on this machine: their layers can be read (--verify), and their path
    is what records keep as their source."""

    reads_layers = True
    reads_index = False

    def records(self, ctx):
        ctx.source_path = stored_path(ctx.source_path)
        return self._read(ctx)


@dataclass
class DockerArchive(_LocalFiles):
    location: str
    selection: Selection | None = None  # one image: `@N` or a tag, as after skopeo's `PATH:`
    kind: str = "docker-archive"

    def _read(self, ctx):
        return read_docker_archive(TarMembers.open(self.location, hash_members=ctx.verify), ctx, self.selection)


@dataclass
class OciArchive(_LocalFiles):
    location: str
    ref: str = ""
    kind: str = "oci-archive"

    def _read(self, ctx):
        return read_layout_tar(TarMembers.open(self.location, hash_members=ctx.verify), ctx, self.ref)


@dataclass
class OciLayout(_LocalFiles):
    location: str
    ref: str = ""
    kind: str = "oci"

    def _read(self, ctx):
        return read_layout_dir(self.location, ctx, self.ref)


@dataclass
class SkopeoDir(_LocalFiles):
    """`dir:DIR`, as `skopeo copy … dir:DIR` writes it."""

    location: str
    kind: str = "dir"

    def _read(self, ctx):
        return read_skopeo_dir(self.location, ctx)


def _read_detected(members: TarMembers, ctx: Context) -> tuple[str, Iterator[ImageRecord | SourceError]]:
    """(kind, records) of a tar: docker-archive when it has manifest.json, else oci-archive."""
    if members.size("manifest.json") is not None:
        return "docker-archive", read_docker_archive(members, ctx)
    if members.size("index.json") is not None:
        return "oci-archive", read_layout_tar(members, ctx)
    raise NotAnArchive(members.where, "not an image archive (no manifest.json or index.json)")


@dataclass
class DetectedArchive(_LocalFiles):
    """A bare file path (or `-`, standard input): docker-archive when it has manifest.json, else oci-archive."""

    location: str
    kind: str = "archive"

    def _read(self, ctx):
        kind, records = _read_detected(TarMembers.open(self.location, hash_members=ctx.verify), ctx)
        ctx.source_kind = self.kind = kind
        return records


@dataclass
class ArchiveFolder(_LocalFiles):
    """A bare directory that is not an OCI layout: every archive and layout below it, in path order.

    Files that are no image archive are skipped with a note; each broken archive is one error
    and the others still land.
    """

    location: str
    kind: str = "directory"

    def _read(self, ctx):
        return _read_folder(self.location, ctx)


def _folder_key(root: str, path: str) -> str:
    """The shard key of an entry of a folder: its path below the folder, `/`-separated, so workers
    that mount the folder in different places agree."""
    return "/".join(os.path.relpath(path, root).split(os.sep))


def _folder_contents(root: str, ctx: Context) -> list[tuple[str, str]]:
    """(path, kind) of everything to try below `root`, sorted by path components: an OCI layout
    ("oci") or a skopeo dir: ("dir"), each a directory, else a file ("archive").

    Notes about what is skipped come from the shard that owns the path, so each is said once."""
    found: list[tuple[tuple[str, ...], str, str]] = []
    errors: list[OSError] = []

    def note(path: str, message: str) -> None:
        if in_shard(ctx.shard, _folder_key(root, path)):
            ctx.note(message)

    for folder, dirs, files in walk(root, onerror=errors.append):
        descend = []
        for name in dirs:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                note(path, f"{printable(path)}: symlinked directory not followed; skipped")
            elif (kind := image_dir_kind(path)) is not None:
                found.append((tuple(os.path.relpath(path, root).split(os.sep)), path, kind))
            else:
                descend.append(name)
        dirs[:] = descend
        for name in files:
            path = os.path.join(folder, name)
            try:
                mode = os.stat(path).st_mode
            except OSError as exc:
                note(path, f"{printable(path)}: {exc.strerror or exc}; skipped")
                continue
            if not stat.S_ISREG(mode):  # never opened: a FIFO would block, a device never end
                note(path, f"{printable(path)}: {not_regular('', mode)}; skipped")
                continue
            found.append((tuple(os.path.relpath(path, root).split(os.sep)), path, "archive"))
    for exc in errors:
        if exc.filename == root:
            raise SourceError(printable(root), exc.strerror or str(exc))
        note(exc.filename or root, f"{printable(exc.filename or root)}: {exc.strerror or exc}; skipped")
    return [(path, kind) for _, path, kind in sorted(found)]


def image_dir_kind(path: str) -> str | None:
    """ "oci" for an OCI layout, "dir" for a skopeo dir:, "containers-storage" for the graph root of
    podman's store, None for any other directory. A layout wins: `docker save` since Docker 25
    writes a manifest.json beside index.json."""
    if is_layout_dir(path):
        return "oci"
    if is_skopeo_dir(path):
        return "dir"
    return "containers-storage" if is_storage_root(path) else None


def _read_dir(kind: str, path: str, ctx: Context, root: str) -> Iterator[ImageRecord | SourceError]:
    """The records of a directory `image_dir_kind` found to be of `kind` below the folder `root`."""
    if kind == "oci":
        return read_layout_dir(path, ctx)
    if kind == "dir":
        return read_skopeo_dir(path, ctx, synced_name(os.path.relpath(path, root).split(os.sep)))
    return read_storage(path, "", "", ctx)


def _read_folder(root: str, ctx: Context) -> Iterator[ImageRecord | SourceError]:
    """With `ctx.shard`, each archive or layout is taken whole by the shard that owns its path
    below the folder; the others never open it."""
    archives = 0
    others = 0  # candidates another shard takes: whether they are archives is not known here
    for path, kind in _folder_contents(root, ctx):
        if not in_shard(ctx.shard, _folder_key(root, path)):
            others += 1
            continue
        # Records take their source from the context: one per archive. The archive is this
        # shard's whole, so its images are not sharded again.
        sub = dataclasses.replace(ctx, source_kind=kind, source_path=stored_path(path), shard=None)
        try:
            if kind != "archive":
                archives += 1
                yield from _read_dir(kind, path, sub, root)
                continue
            kind, records = _read_detected(TarMembers.open(path, hash_members=ctx.verify), sub)
            archives += 1
            sub.source_kind = kind
            yield from records
        except NotAnArchive as exc:
            ctx.note(f"{exc}; skipped")
        except SourceError as exc:
            archives += 1
            yield exc
    if not archives and not others:
        raise SourceError(
            printable(root), "directory is not an image layout (no index.json) and holds no image archives"
        )


def _split_ref(rest: str) -> tuple[str, str]:
    # skopeo splits `oci:PATH:REF` at the first colon after the transport; a name that is a file
    # or folder as it stands is taken whole, as for docker-archive:
    path, sep, ref = rest.partition(":")
    return (path, ref) if sep and not os.path.lexists(rest) else (rest, "")


def _docker_archive(rest: str, options: SourceOptions) -> Source:
    # skopeo splits `docker-archive:PATH:IMAGE` at the first colon. A name that is a file as it
    # stands is taken whole, so that an archive whose path holds a colon is still read.
    path, sep, image = rest.partition(":")
    if not sep or rest in STDIN_NAMES or os.path.lexists(rest):
        return DockerArchive(rest)
    return DockerArchive(path, parse_selection(image, printable(path)))


def _daemon(rest: str, options: SourceOptions) -> Source:
    from .daemon import DockerDaemon  # imported only when an engine is asked for

    return DockerDaemon.from_spec(rest, options.docker_host, options.all_images)


def _registry(rest: str, options: SourceOptions) -> Source:
    from .registry import PREFIX, RegistrySource  # urllib3 is imported only for registries

    return RegistrySource(PREFIX + rest, options.registry)


def _containers_storage(rest: str, options: SourceOptions) -> Source:
    return ContainersStorage.from_spec(rest)


def _ycr_json(rest: str, options: SourceOptions) -> Source:
    from .ycr_json import YcrJson

    return YcrJson(rest)


# Each transport and what it makes of the rest of the name.
SCHEMES: dict[str, Callable[[str, SourceOptions], Source]] = {
    "docker-archive:": _docker_archive,
    "oci-archive:": lambda rest, options: OciArchive(*_split_ref(rest)),
    "oci:": lambda rest, options: OciLayout(*_split_ref(rest)),
    "dir:": lambda rest, options: SkopeoDir(rest),
    "docker-daemon:": _daemon,
    "containers-storage:": _containers_storage,
    "docker://": _registry,
    "ycr-json:": _ycr_json,
}
TRANSPORTS = tuple(SCHEMES)
# Sources named by a file, whose empty name would otherwise be reported as ": no such file"
_FILE_SCHEMES = {"docker-archive:": "archive path", "oci-archive:": "archive path", "ycr-json:": "file"}


def parse_source(text: str, options: SourceOptions | None = None, *, registry_options=None) -> Source:
    """A source from its skopeo-style name; a bare path is detected. `registry_options`: a
    shorthand for SourceOptions(registry=...)."""
    if options is None:
        options = SourceOptions(registry=registry_options)
    for transport, make in SCHEMES.items():
        if text.startswith(transport):
            rest = text[len(transport) :]
            if transport in _FILE_SCHEMES and not rest.partition(":")[0]:
                raise SourceError(transport.rstrip(":"), f"no {_FILE_SCHEMES[transport]} given")
            return make(rest, options)
    if not text:
        raise SourceError("''", "an empty source name")
    if text in STDIN_NAMES:
        return DetectedArchive(text)
    if os.path.isdir(text):
        kinds = {"oci": OciLayout, "dir": SkopeoDir, "containers-storage": ContainersStorage}
        return kinds.get(image_dir_kind(text), ArchiveFolder)(text)
    if os.path.lexists(text):
        return DetectedArchive(text)
    prefix, colon, _ = text.partition(":")
    if colon and _TRANSPORT_LIKE.fullmatch(prefix):
        valid = ", ".join(TRANSPORTS)
        raise SourceError(printable(text), f'unknown source type "{printable(prefix)}:"; valid: {valid}')
    raise SourceError(printable(text), "no such file or directory")
