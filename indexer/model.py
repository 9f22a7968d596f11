"""The normalised image record that every source yields and the store keeps.

This module imports nothing else of ours, so every layer can depend on it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

# How much a record can be trusted; a store never replaces a record with a less exact one.
IMPORTED = 4  # a registry's own record (YCR JSON): its id is the real one
EXACT_MANIFEST = 3  # built from the manifest bytes whose digest we verified
UNCOMPRESSED = 1  # built from a config alone (classic docker save, engine without manifests)

KIND_IMAGE = "image"
KIND_INDEX = "index"
KIND_ATTESTATION = "attestation"
KIND_ARTIFACT = "artifact"


# The small value types are named tuples: there are many of them per image, and building
# frozen dataclasses costs several times more.
class Blob(NamedTuple):
    digest: str
    size: int
    media_type: str = ""
    urls: tuple[str, ...] = ()
    id: str = ""  # a registry's real blob id; empty means the id formula applies


class Platform(NamedTuple):
    os: str = ""
    architecture: str = ""
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


class HistoryEntry(NamedTuple):
    created: str = ""
    created_by: str = ""
    comment: str = ""
    empty_layer: bool = False


@dataclass(frozen=True)
class ImageConfig:
    """What the store keeps of an image config, parsed once."""

    created: str | None = None  # RFC 3339, UTC, nanoseconds kept (see timestamps)
    os: str = ""
    architecture: str = ""
    variant: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    env: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    diff_ids: tuple[str, ...] = ()
    history: tuple[HistoryEntry, ...] = ()


@dataclass(frozen=True)
class ImageRecord:
    """One image resource: one manifest in one repository."""

    id: str
    registry: str
    name: str
    digest: str  # manifest digest; "" when the source has no manifest (classic docker save)
    media_type: str
    kind: str
    config: Blob | None
    layers: tuple[Blob, ...]
    layers_compressed: bool
    tags: tuple[str, ...]
    created: str | None
    platform: Platform | None
    parent_digest: str
    source_kind: str
    source_path: str
    exactness: int
    labels: tuple[tuple[str, str], ...] = ()
    env: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    history: tuple[HistoryEntry, ...] = ()
    manifest_raw: bytes | None = None
    config_raw: bytes | None = None
    # "derived" ids follow the id formula; "imported" ids are a registry's real ids and are kept
    # by every later record of the same (registry, name, digest).
    id_origin: str = "derived"

    @property
    def compressed_size(self) -> int:
        return sum(layer.size for layer in self.layers)


def merge_records(old: ImageRecord, new: ImageRecord) -> ImageRecord:
    """Two records of one resource: the more exact one wins (the newer on a tie), tags are pooled."""
    winner = new if new.exactness >= old.exactness else old
    tags = tuple(sorted(set(old.tags) | set(new.tags)))
    return winner if winner.tags == tags else dataclasses.replace(winner, tags=tags)
