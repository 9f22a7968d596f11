"""Docker reference parsing and normalisation, and the resource id derivation.

Follows the grammar of distribution's `reference` package: the first path component is a
registry host when it holds a '.' or ':' or is 'localhost'; Docker Hub names are normalised to
`docker.io` with `library/` for one-component names.
"""
from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass

from .errors import ReferenceError_

DOCKER_HUB = "docker.io"
_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io"}

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_HOST_RE = re.compile(r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?$")
TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
DIGEST_RE = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}$")
SHA256_RE = re.compile(r"^sha256:[a-f0-9]{64}$")


@dataclass(frozen=True)
class Reference:
    registry: str
    name: str  # repository path without the registry host
    tag: str = ""
    digest: str = ""

    def __str__(self) -> str:
        out = f"{self.registry}/{self.name}"
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


def _split_host(remainder: str) -> tuple[str, str]:
    first, sep, rest = remainder.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        return first, rest
    return "", remainder


def parse_reference(text: str, default_registry: str = DOCKER_HUB) -> Reference:
    """Parse `[HOST/]NAME[:TAG][@DIGEST]`; raises ReferenceError_ on anything else."""
    if not text or len(text) > 4096:
        raise ReferenceError_(f"invalid reference {text!r}")
    remainder, _, digest = text.partition("@")
    if digest and not DIGEST_RE.match(digest):
        raise ReferenceError_(f"invalid digest in reference {text!r}")
    host, path = _split_host(remainder)
    tag = ""
    slash = path.rfind("/")
    colon = path.rfind(":")
    if colon > slash:
        path, tag = path[:colon], path[colon + 1 :]
        if not TAG_RE.match(tag):
            raise ReferenceError_(f"invalid tag in reference {text!r}")
    if host and not _HOST_RE.match(host):
        raise ReferenceError_(f"invalid registry host in reference {text!r}")
    if not _PATH_RE.match(path):
        raise ReferenceError_(f"invalid repository name in reference {text!r}")
    registry = host or default_registry
    if registry in _HUB_ALIASES:
        registry = DOCKER_HUB
        if "/" not in path:
            path = f"library/{path}"
    return Reference(registry=registry, name=path, tag=tag, digest=digest)


def is_bare_tag(text: str) -> bool:
    """True for an OCI `ref.name` that is only a tag (`v1`), not a reference."""
    return bool(TAG_RE.match(text)) and not any(c in text for c in "/:@")


_BASE32HEX = "0123456789abcdefghijklmnopqrstuv"


def _short_hash(text: str) -> str:
    """The first 17 base32hex characters (85 bits) of sha256(text), lowercased.

    Same as base64.b32hexencode(...).lower()[:17], which is pure Python and slow on the lookup path.
    """
    bits = int.from_bytes(hashlib.sha256(text.encode()).digest()[:11], "big") >> 3
    return "".join([_BASE32HEX[(bits >> shift) & 31] for shift in range(80, -1, -5)])


def image_id(registry: str, name: str, key: str) -> str:
    """Stable resource id; `key` is the manifest digest, or the config digest if that is unknown."""
    return "crp" + _short_hash(f"{registry}/{name}@{key}")


@functools.lru_cache(maxsize=65536)
def blob_id(digest: str) -> str:
    return "crp" + _short_hash(digest)
