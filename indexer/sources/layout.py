"""OCI image layouts: a directory (`oci:DIR[:REF]`) or the same as a tar (`oci-archive:PATH`)."""
from __future__ import annotations

import hashlib
import os
import stat
from typing import Iterator

from ..errors import ImgdexError, SourceError
from ..model import ImageRecord
from ..references import Reference, is_bare_tag, parse_reference
from . import mediatypes as mt
from .parse import MAX_JSON_BYTES, Context, load_object, parse_descriptor, walk
from .tarball import TarMembers


def _blob_path(digest: str) -> str:
    algorithm, _, encoded = digest.partition(":")
    return f"blobs/{algorithm}/{encoded}"


class DirBlobs:
    """Blobs of a layout directory. A blob reached through a symlink must stay inside the layout."""

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self._real_root = os.path.realpath(root)
        self._sizes: dict[str, int | None] = {}
        self._safe_folders: set[str] = set()

    def _checked_path(self, digest: str) -> str:
        relative = _blob_path(digest)
        path = os.path.join(self.root, relative)
        folder = os.path.dirname(relative)
        if folder not in self._safe_folders:
            self.check_inside(os.path.join(self.root, folder))
            self._safe_folders.add(folder)
        try:
            if stat.S_ISLNK(os.lstat(path).st_mode):
                self.check_inside(path)
        except FileNotFoundError:
            pass
        return path

    def check_inside(self, path: str, what: str = "blob") -> None:
        real = os.path.realpath(path)
        if real != self._real_root and not real.startswith(self._real_root + os.sep):
            raise SourceError(path, f"{what} is a symlink that points outside the layout")

    def blob_size(self, digest: str) -> int | None:
        if digest not in self._sizes:
            path = self._checked_path(digest)
            try:
                self._sizes[digest] = os.stat(path).st_size
            except OSError:
                self._sizes[digest] = None
        return self._sizes[digest]

    def read_blob(self, digest: str, limit: int) -> bytes:
        path = self._checked_path(digest)
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size > limit:
                    raise SourceError(path, f"blob is {size} bytes, over the {limit}-byte limit")
                return f.read()
        except FileNotFoundError:
            raise SourceError(path, "blob is missing") from None
        except OSError as exc:
            raise SourceError(path, exc.strerror or str(exc)) from None


    def blob_sha256(self, digest: str) -> str | None:
        path = self._checked_path(digest)
        hasher = hashlib.sha256()
        try:
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    hasher.update(chunk)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise SourceError(path, exc.strerror or str(exc)) from None
        return hasher.hexdigest()


class TarBlobs:
    """Blobs of a layout packed in a tar (oci-archive, Docker 25+ save)."""

    def __init__(self, members: TarMembers):
        self.members = members

    def blob_size(self, digest: str) -> int | None:
        return self.members.size(_blob_path(digest))

    def read_blob(self, digest: str, limit: int) -> bytes:
        return self.members.read(_blob_path(digest), limit, "blob")

    def blob_sha256(self, digest: str) -> str | None:
        return self.members.sha256(_blob_path(digest))


def names_from_annotations(annotations: dict, ctx: Context, where: str) -> list[Reference]:
    """Names of a top-level descriptor: containerd's full name, else ref.name (a tag or a reference)."""
    full = annotations.get(mt.ANNOTATION_CONTAINERD_NAME)
    ref_name = annotations.get(mt.ANNOTATION_REF_NAME)
    try:
        if isinstance(full, str) and full:
            ref = parse_reference(full)
            if not ref.tag and isinstance(ref_name, str) and is_bare_tag(ref_name):
                ref = Reference(ref.registry, ref.name, ref_name)
            return [ref]
        if isinstance(ref_name, str) and ref_name:
            if is_bare_tag(ref_name):
                return [Reference(ctx.registry, ctx.repository, ref_name)]
            return [parse_reference(ref_name)]
    except ImgdexError as exc:
        ctx.note(f"{where}: ignoring name: {exc}")
    return []


def _matches(annotations: dict, wanted: str) -> bool:
    for key in (mt.ANNOTATION_REF_NAME, mt.ANNOTATION_CONTAINERD_NAME):
        value = annotations.get(key)
        if isinstance(value, str) and value == wanted:
            return True
    return False


def top_descriptors(index_raw: bytes, where: str) -> list[tuple[object, dict]]:
    """(raw descriptor, annotations) of index.json; `"manifests": null` counts as empty."""
    doc = load_object(index_raw, where, "index.json")
    if doc.get("schemaVersion") not in (2, None):
        raise SourceError(where, f"index.json has unsupported schemaVersion {doc.get('schemaVersion')!r}")
    manifests = doc.get("manifests")
    if manifests is None:
        return []
    if not isinstance(manifests, list):
        raise SourceError(where, "index.json: manifests is not a list")
    out = []
    for raw in manifests:
        annotations = raw.get("annotations") if isinstance(raw, dict) and isinstance(raw.get("annotations"), dict) else {}
        out.append((raw, annotations))
    return out


def walk_layout(
    blobs,
    index_raw: bytes,
    ctx: Context,
    where: str,
    ref: str = "",
    extra_names=None,
) -> Iterator[ImageRecord | SourceError]:
    """Every image of a layout's index.json. `extra_names(descriptor)` adds names a caller knows."""
    found = False
    for position, (raw, notes) in enumerate(top_descriptors(index_raw, where)):
        if ref and not _matches(notes, ref):
            continue
        found = True
        try:
            descriptor = parse_descriptor(raw, where, f"index.json manifests[{position}]")
        except SourceError as exc:
            yield exc
            continue
        names = names_from_annotations(notes, ctx, where)
        if extra_names is not None:
            names = names + extra_names(descriptor)
        yield from walk(blobs, descriptor, names, ctx, where, annotations=notes)
    if ref and not found:
        yield SourceError(where, f"no image named {ref!r} in index.json")


def read_layout_dir(path: str, ctx: Context, ref: str = "") -> Iterator[ImageRecord | SourceError]:
    index_path = os.path.join(path, "index.json")
    if not os.path.isdir(path):
        raise SourceError(path, "not a directory")
    if not os.path.isfile(index_path):
        raise SourceError(path, "directory is not an image layout (no index.json)")
    blobs = DirBlobs(path)
    blobs.check_inside(index_path, "index.json")
    try:
        size = os.path.getsize(index_path)
        if size > MAX_JSON_BYTES:
            raise SourceError(index_path, f"index.json is {size} bytes, over the {MAX_JSON_BYTES}-byte limit")
        with open(index_path, "rb") as f:
            index_raw = f.read()
    except OSError as exc:
        raise SourceError(index_path, exc.strerror or str(exc)) from None
    yield from walk_layout(blobs, index_raw, ctx, path, ref)


def read_layout_tar(members: TarMembers, ctx: Context, ref: str = "") -> Iterator[ImageRecord | SourceError]:
    if members.size("index.json") is None:
        raise SourceError(members.path, "not an OCI archive (no index.json)")
    index_raw = members.read("index.json", MAX_JSON_BYTES, "index.json")
    yield from walk_layout(TarBlobs(members), index_raw, ctx, members.path, ref)
