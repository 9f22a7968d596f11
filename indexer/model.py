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
    # The config's rootfs.diff_ids: the uncompressed layers, which image lineage is computed from.
    diff_ids: tuple[str, ...] = ()
    manifest_raw: bytes | None = None
    config_raw: bytes | None = None
    # "derived" ids follow the id formula; "imported" ids are a registry's real ids and are kept
    # by every later record of the same (registry, name, digest).
    id_origin: str = "derived"
    # A registry's own figure (YCR's compressedSize), kept even when it is not the sum of the
    # layers; None means the sum.
    declared_compressed_size: int | None = None

    @property
    def compressed_size(self) -> int:
        if self.declared_compressed_size is not None:
            return self.declared_compressed_size
        return sum(layer.size for layer in self.layers)


def merge_records(old: ImageRecord, new: ImageRecord) -> ImageRecord:
    """Two records of one resource. The more exact one wins whole; of two equally exact ones,
    each field keeps the value that is known (see `_merge_equal`). Tags are pooled, and the
    source fields are the newer record's."""
    tags = old.tags if old.tags == new.tags else tuple(sorted(set(old.tags) | set(new.tags)))
    if new.exactness != old.exactness:
        winner = new if new.exactness > old.exactness else old
        return winner if winner.tags == tags else dataclasses.replace(winner, tags=tags)
    if _data(old) == _data(new):
        return new if new.tags == tags else dataclasses.replace(new, tags=tags)
    return _merge_equal(old, new, tags)


# What a source knows of an image, as opposed to where and when it was seen (source_kind,
# source_path, the store's indexed_at) and the tags, which are pooled.
_DATA_FIELDS = (
    "digest",
    "media_type",
    "kind",
    "config",
    "layers",
    "layers_compressed",
    "declared_compressed_size",
    "created",
    "platform",
    "parent_digest",
    "labels",
    "env",
    "entrypoint",
    "cmd",
    "history",
    "manifest_raw",
    "config_raw",
    "diff_ids",
)


def _data(record: ImageRecord) -> tuple:
    return tuple(getattr(record, name) for name in _DATA_FIELDS)


def _knowledge(record: ImageRecord) -> int:
    """How many of the record's fields are known; 0, "", None and () mean unknown."""
    config = record.config
    fields = (
        record.digest,
        record.media_type,
        record.created,
        record.platform,
        record.parent_digest,
        record.labels,
        record.env,
        record.entrypoint,
        record.cmd,
        record.history,
        record.manifest_raw,
        record.config_raw,
        record.layers,
        record.declared_compressed_size,
        record.diff_ids,
    )
    return (
        sum(1 for value in fields if value)
        + (config is not None)
        + (config is not None and config.size > 0)
        + sum(1 for layer in record.layers if layer.size > 0)
    )


def _merge_blob(a: Blob | None, b: Blob | None) -> Blob | None:
    if a is None:
        return b
    if b is None or a == b or a.digest != b.digest:
        return a
    # A size of 0 is how a source says it does not know (the engine's config, unmatched history).
    return Blob(a.digest, a.size or b.size, a.media_type or b.media_type, a.urls or b.urls, a.id or b.id)


def _merge_layers(a: tuple[Blob, ...], b: tuple[Blob, ...]) -> tuple[Blob, ...]:
    if not a or a == b:
        return a or b
    if not b or [layer.digest for layer in a] != [layer.digest for layer in b]:
        return a
    return tuple(_merge_blob(x, y) for x, y in zip(a, b, strict=True))


def _merge_platform(a: Platform | None, b: Platform | None) -> Platform | None:
    if a is None or b is None:
        return a if b is None else b
    if any(x and y and x != y for x, y in zip(a, b, strict=True)):
        return a
    return Platform(*(x or y for x, y in zip(a, b, strict=True)))


def _merge_equal(old: ImageRecord, new: ImageRecord, tags: tuple[str, ...]) -> ImageRecord:
    """Field by field, so that the result never depends on which record came first: a known
    value beats an unknown one, and where both are known and differ, the record that knows
    more fields (then the one whose data sorts last) gives its value."""
    a, b = sorted((old, new), key=lambda r: (_knowledge(r), repr(_data(r))), reverse=True)
    layers = _merge_layers(a.layers, b.layers)
    declared = next((v for v in (a.declared_compressed_size, b.declared_compressed_size) if v), None)
    if declared is None:
        declared = a.declared_compressed_size if a.declared_compressed_size is not None else b.declared_compressed_size
    return dataclasses.replace(
        new,
        digest=a.digest or b.digest,
        media_type=a.media_type or b.media_type,
        kind=a.kind or b.kind,
        config=_merge_blob(a.config, b.config),
        layers=layers,
        layers_compressed=a.layers_compressed if a.layers or not b.layers else b.layers_compressed,
        declared_compressed_size=declared,
        tags=tags,
        created=a.created or b.created,
        platform=_merge_platform(a.platform, b.platform),
        parent_digest=a.parent_digest or b.parent_digest,
        labels=a.labels or b.labels,
        env=a.env or b.env,
        entrypoint=a.entrypoint or b.entrypoint,
        cmd=a.cmd or b.cmd,
        history=a.history or b.history,
        diff_ids=a.diff_ids or b.diff_ids,
        manifest_raw=a.manifest_raw or b.manifest_raw,
        config_raw=a.config_raw or b.config_raw,
        id_origin="imported" if "imported" in (a.id_origin, b.id_origin) else new.id_origin,
    )


# What a registry crawl learns without a new record: tags that moved to manifests already
# indexed, and tags that vanished. Sources yield them beside records; the run hands them to the
# store, so a source never writes.


@dataclass(frozen=True)
class TagMoves:
    """Tags now pointing at manifests the store already holds: (name, tag, manifest digest)."""

    registry: str
    claims: tuple[tuple[str, str, str], ...]


@dataclass(frozen=True)
class TagsRetired:
    """Tags that vanished from a repository; its images stay (untagged if it was the last)."""

    registry: str
    name: str
    tags: tuple[str, ...]
