"""skopeo's `dir:DIR`: one image (or, copied with `--all`, an index and its images) as loose files.

containers/image writes the top manifest as `manifest.json`, the manifests an index lists as
`HEX.manifest.json`, and every other blob (configs, layers) under its digest's hex alone, with
a `version` file ("Directory Transport Version: 1.1"). The directory names no image: records
take the name given by --registry/--repository, as an unnamed layout's do. Inside a folder, a copy
whose path there is a full reference (`quay.io/libpod/busybox:latest`, as `skopeo sync --scoped
--dest dir` names it) takes that name (`synced_name`).

The top manifest has no descriptor: its digest is the sha256 of `manifest.json`, as skopeo
reports it (that of its payload for a signed schema1 one). The walk parses the bytes that digest
was computed from, not the file read again, so a file changed in between cannot land under the
digest of other bytes.
"""

from __future__ import annotations

import hashlib
import os
from typing import Iterator

from .. import collector
from ..errors import ImgdexError, SourceError, printable
from ..files import open_readable
from ..model import Blob, ImageRecord
from ..references import Reference, parse_reference
from ..shard import in_shard
from .layout import DirBlobs, directory_where
from .parse import MAX_JSON_BYTES, Context, verify_layers, walk
from .registry_schema1 import is_schema1, payload_digest, schema1_records

MANIFEST = "manifest.json"
VERSION = "version"
# What every version of the transport writes first in `version`.
_VERSION_PREFIX = b"Directory Transport Version: "
_INSTANCE = ".manifest.json"


def is_skopeo_dir(path: str) -> bool:
    """Whether a directory is one `skopeo copy … dir:` wrote: a `version` file that says so, beside
    a `manifest.json` (of any type: the source then says what is wrong with it)."""
    try:
        if not os.path.lexists(os.path.join(path, MANIFEST)):
            return False
        with open_readable(os.path.join(path, VERSION)) as f:
            return f.read(len(_VERSION_PREFIX)) == _VERSION_PREFIX
    except (OSError, SourceError):
        return False


class SkopeoDirBlobs(DirBlobs):
    """The blobs of a dir: image, by the names containers/image gives them."""

    holder = "directory"

    def __init__(self, root: str):
        super().__init__(root)
        self.top = ""  # the digest of manifest.json, once read
        self.top_data = b""  # its bytes

    def _relative(self, digest: str) -> str:
        if digest == self.top:
            return MANIFEST
        encoded = digest.partition(":")[2]
        # A manifest an index lists has a name of its own; anything else is its hex alone.
        instance = encoded + _INSTANCE
        return instance if os.path.lexists(os.path.join(self.root, instance)) else encoded

    def _what(self, relative: str) -> str:
        return relative if relative.endswith(MANIFEST) else "blob"  # manifest.json, HEX.manifest.json

    def read_blob(self, digest: str, limit: int) -> bytes:
        if digest == self.top and self.top_data:
            return self.top_data
        return super().read_blob(digest, limit)


def synced_name(relative: list[str]) -> Reference | None:
    """The reference a copy's path below the folder indexed spells when its first component names
    a registry host, as `skopeo sync --scoped --dest dir` writes each copy (`HOST/REPO:TAG` or
    `HOST/REPO@DIGEST` below the destination); None for any other path. Without `--scoped` sync
    writes the last component alone (`busybox:latest`), which does not say which registry the
    image came from. The host is told as docker tells it, except by case: `Mirror/` is a folder."""
    host = relative[0]
    if len(relative) < 2 or not ("." in host or ":" in host or host == "localhost"):
        return None
    try:
        ref = parse_reference("/".join(relative))
    except ImgdexError:
        return None
    return ref if ref.tag or ref.digest else None


def read_skopeo_dir(path: str, ctx: Context, name: Reference | None = None) -> Iterator[ImageRecord | SourceError]:
    """The records of a copy; `name`, what its path spells (`synced_name`), names them unless it
    names another manifest."""
    where = directory_where(path, "dir", "no directory given")
    manifest = os.path.join(path, MANIFEST)
    if not os.path.lexists(manifest):
        raise SourceError(where, "directory is not a dir: image (no manifest.json)")
    blobs = SkopeoDirBlobs(path)
    # A link that leaves the directory is refused unread; anything but a regular file is refused
    # unopened.
    data = blobs.read_path(blobs.checked(MANIFEST, what=MANIFEST), MAX_JSON_BYTES, MANIFEST)
    if data.lstrip(b" \t\r\n")[:1] == b"[":
        # What an unpacked `docker save` holds: its images are read from the tar, as docker load does.
        raise SourceError(printable(manifest), "a list of images, as a docker save's is, not a dir: manifest")
    if is_schema1(data):
        yield from _schema1_records(blobs, data, ctx, where, name)
        return
    blobs.top, blobs.top_data = "sha256:" + hashlib.sha256(data).hexdigest(), data
    if not in_shard(ctx.shard, blobs.top):
        return
    # No media type: the walk tells a manifest from an index by what it holds, as skopeo does.
    top = Blob(blobs.top, len(data), "", ())
    names = _names(name, blobs.top, ctx, where)
    yield from collector.paused_while(walk(blobs, top, names, ctx, where, annotations={}))


def _names(name: Reference | None, digest: str, ctx: Context, where: str) -> list[Reference]:
    if name is None:
        return []
    if name.digest and name.digest != digest:
        ctx.note(f"{where}: ignoring the name {printable(str(name))!r} its path gives: it names another manifest")
        return []
    return [name]


def _schema1_records(
    blobs: SkopeoDirBlobs, data: bytes, ctx: Context, where: str, name: Reference | None = None
) -> Iterator:
    """A schema1 manifest (`skopeo copy --format v2s1`, or a copy from a registry that serves one):
    named by the digest of its payload, as skopeo and registries name it, and read as the registry
    source reads one, with each layer's size from its file."""
    digest = payload_digest(data)
    if not in_shard(ctx.shard, digest):
        return
    label = f"manifest {digest}"

    def size(layer: str) -> int:
        found = blobs.blob_size(layer)
        if found is None:
            raise SourceError(where, f"{label}: layer {layer} is missing")
        return found

    try:
        records = schema1_records(data, digest, "", _names(name, digest, ctx, where), ctx, where, size)
        if ctx.verify and records:
            verify_layers(blobs, records[0].layers, ctx, where, label)
    except SourceError as exc:
        yield exc
        return
    yield from records
