"""Image sources, named as skopeo names them, behind one small protocol.

Each source yields normalised records (or a SourceError per image that failed) and raises
SourceError when the whole source cannot be read.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator, Protocol

from ..errors import SourceError
from ..model import ImageRecord
from .docker_archive import read_docker_archive
from .layout import read_layout_dir, read_layout_tar
from .parse import Context
from .tarball import TarMembers

KINDS = ("docker-archive", "oci-archive", "oci", "docker-daemon", "docker", "ycr-json")


class Source(Protocol):
    kind: str
    location: str

    def records(self, ctx: Context) -> Iterator[ImageRecord | SourceError]: ...


@dataclass
class DockerArchive:
    location: str
    kind: str = "docker-archive"

    def records(self, ctx):
        return read_docker_archive(TarMembers.open(self.location, hash_members=ctx.verify), ctx)


@dataclass
class OciArchive:
    location: str
    ref: str = ""
    kind: str = "oci-archive"

    def records(self, ctx):
        return read_layout_tar(TarMembers.open(self.location, hash_members=ctx.verify), ctx, self.ref)


@dataclass
class OciLayout:
    location: str
    ref: str = ""
    kind: str = "oci"

    def records(self, ctx):
        return read_layout_dir(self.location, ctx, self.ref)


@dataclass
class DetectedArchive:
    """A bare file path: docker-archive when it has manifest.json, else oci-archive."""

    location: str
    kind: str = "archive"

    def records(self, ctx):
        members = TarMembers.open(self.location, hash_members=ctx.verify)
        if members.size("manifest.json") is not None:
            ctx.source_kind = self.kind = "docker-archive"
            return read_docker_archive(members, ctx)
        if members.size("index.json") is not None:
            ctx.source_kind = self.kind = "oci-archive"
            return read_layout_tar(members, ctx)
        raise SourceError(self.location, "not an image archive (no manifest.json or index.json)")


def _split_ref(rest: str) -> tuple[str, str]:
    # skopeo splits `oci:PATH:REF` at the first colon after the transport
    path, sep, ref = rest.partition(":")
    return (path, ref) if sep else (rest, "")


def parse_source(text: str, *, docker_host: str = "", all_images: bool = False, registry_options=None) -> Source:
    """A source from its skopeo-style name; a bare path is detected.

    `docker_host` and `all_images` apply to `docker-daemon:` only; `registry_options` (a
    RegistryOptions) to `docker://` only.
    """
    if text.startswith("docker-archive:"):
        return DockerArchive(text[len("docker-archive:"):])
    if text.startswith("oci-archive:"):
        return OciArchive(*_split_ref(text[len("oci-archive:"):]))
    if text.startswith("oci:"):
        return OciLayout(*_split_ref(text[len("oci:"):]))
    if text.startswith("docker-daemon:"):
        from .daemon import DockerDaemon  # the Docker SDK itself is imported only on contact

        return DockerDaemon.from_spec(text[len("docker-daemon:"):], docker_host, all_images)
    if text.startswith("docker://"):
        from .registry import RegistrySource  # requests is imported only for registries

        return RegistrySource(text, registry_options)
    if text.startswith("ycr-json:"):
        from .ycr_json import YcrJson

        return YcrJson(text[len("ycr-json:"):])
    if os.path.isdir(text):
        return OciLayout(text)
    if os.path.exists(text):
        return DetectedArchive(text)
    raise SourceError(text, "no such file or directory")
