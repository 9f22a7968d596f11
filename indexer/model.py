"""The normalised image record that every source yields and the store keeps.

This module imports nothing else of ours but `timestamps` (which imports nothing of ours), so every
layer can depend on it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

from . import timestamps

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
    id: str = ""  # a registry's real blob id; empty means the id formula applies; NO_BLOB_ID, none given


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


def named(record: ImageRecord) -> tuple:
    """What a record's id names: (registry, name, digest), as `one_image` compares it."""
    return record.registry, record.name, record.digest


def one_image(a: tuple, b: tuple) -> bool:
    """Whether two (registry, name, digest) of one id name one image: the same repository, and the
    same manifest where both know it. Computed ids hash just that; an imported id is kept as
    written, so a crafted one can be another image's."""
    return a[:2] == b[:2] and (not a[2] or not b[2] or a[2] == b[2])


def shown(image: tuple) -> str:
    """(registry, name, digest) for messages: registry/name@digest."""
    registry, name, digest = image
    return f"{registry or ''}/{name or ''}" + (f"@{digest}" if digest else "")


def merge_records(old: ImageRecord, new: ImageRecord) -> ImageRecord:
    """Two records of one resource. The more exact one wins whole; of two equally exact ones,
    each field keeps the value that is known, or the greater of two (see `_merge_equal`), but of
    two imported registry documents the newer one wins whole. Tags are pooled, and the source
    fields are the newer record's."""
    tags = old.tags if old.tags == new.tags else tuple(sorted(set(old.tags) | set(new.tags)))
    if new.exactness != old.exactness:
        winner = new if new.exactness > old.exactness else old
        return winner if winner.tags == tags else dataclasses.replace(winner, tags=tags)
    if new.exactness == IMPORTED or _data(old) == _data(new):
        # Of two registry documents of one image, the later import is the registry's newer word on
        # it, whole: a field-by-field merge would answer a document that neither holds.
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


def _join(a, b):
    """The known of two values (0, "", None and () are unknown), and of two known ones the greater.

    A choice by the values alone, never by the records that hold them: however many records
    merge, in whatever order and grouping, each field ends with the greatest value any of them
    knew (a record that merged others knows more than each of them, so a choice by how much a
    record knows would depend on the grouping)."""
    if not a or not b:
        if a or b:
            return a or b
        return None if a is None or b is None else a
    return a if a >= b else b


def _join_size(a: int | None, b: int | None) -> int | None:
    # A declared size of 0 is known; None is not.
    if a is None or b is None:
        return b if a is None else a
    return max(a, b)


def _join_blob(a: Blob | None, b: Blob | None) -> Blob | None:
    if a is None or b is None:
        return b if a is None else a
    if a == b:
        return a
    if a.digest != b.digest:
        return a if a.digest > b.digest else b
    # A size of 0 is how a source says it does not know (the engine's config, unmatched history).
    return Blob(
        a.digest, max(a.size, b.size), _join(a.media_type, b.media_type), _join(a.urls, b.urls), _join(a.id, b.id)
    )


def _join_layers(a: tuple[Blob, ...], b: tuple[Blob, ...]) -> tuple[Blob, ...]:
    """Layers of one list of digests merge layer by layer; of two lists, the greater one is kept
    whole, as the layers of other digests describe another image."""
    if not a or not b or a == b:
        return a or b
    digests_a, digests_b = [layer.digest for layer in a], [layer.digest for layer in b]
    if digests_a != digests_b:
        return a if digests_a > digests_b else b
    return tuple(_join_blob(x, y) for x, y in zip(a, b, strict=True))


def _history_key(history: tuple[HistoryEntry, ...]) -> list[tuple]:
    # The engine's API gives history times in whole seconds, in UTC ("…:26Z"), where the config says
    # "…:26.566970946Z", or the same instant in another offset ("…21:42:26.5-05:00"). Compared as
    # UTC text without the "Z", the cut time is a prefix of the exact one and sorts first (as text,
    # "Z" sorts after "." and "-05:00" before a later UTC hour). Of one instant, the text as the
    # config wrote it (not in the engine's form) is kept; the whole text breaks ties.
    return [(*_history_time(e.created), e.created, e.created_by, e.comment, e.empty_layer) for e in history]


def _history_time(text: str) -> tuple[str, bool]:
    utc = timestamps.normalise(text) if text else None
    if utc is None:
        return text.removesuffix("Z"), False
    return utc.removesuffix("Z"), utc != text


def _join_history(a: tuple[HistoryEntry, ...], b: tuple[HistoryEntry, ...]) -> tuple[HistoryEntry, ...]:
    if not a or not b or a == b:
        return a or b
    return a if _history_key(a) >= _history_key(b) else b


def _join_platform(a: Platform | None, b: Platform | None) -> Platform | None:
    if a is None or b is None:
        return b if a is None else a
    return Platform(*(_join(x, y) for x, y in zip(a, b, strict=True)))


def _merge_equal(old: ImageRecord, new: ImageRecord, tags: tuple[str, ...]) -> ImageRecord:
    """Field by field, so that the result never depends on which record came first, nor on how a
    run grouped them: a known value beats an unknown one, and of two known values that differ the
    greater one is kept (`_join`)."""
    layers = _join_layers(old.layers, new.layers)
    if [x.digest for x in old.layers] == [x.digest for x in new.layers]:  # none, or the same list
        compressed = old.layers_compressed or new.layers_compressed
    else:  # the list kept says how its layers were shipped
        compressed = old.layers_compressed if layers is old.layers else new.layers_compressed
    return dataclasses.replace(
        new,
        digest=_join(old.digest, new.digest),
        media_type=_join(old.media_type, new.media_type),
        kind=_join(old.kind, new.kind),
        config=_join_blob(old.config, new.config),
        layers=layers,
        layers_compressed=compressed,
        declared_compressed_size=_join_size(old.declared_compressed_size, new.declared_compressed_size),
        tags=tags,
        created=_join(old.created, new.created),
        platform=_join_platform(old.platform, new.platform),
        parent_digest=_join(old.parent_digest, new.parent_digest),
        labels=_join(old.labels, new.labels),
        env=_join(old.env, new.env),
        entrypoint=_join(old.entrypoint, new.entrypoint),
        cmd=_join(old.cmd, new.cmd),
        history=_join_history(old.history, new.history),
        diff_ids=_join(old.diff_ids, new.diff_ids),
        manifest_raw=_join(old.manifest_raw, new.manifest_raw),
        config_raw=_join(old.config_raw, new.config_raw),
        id_origin="imported" if "imported" in (old.id_origin, new.id_origin) else new.id_origin,
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
