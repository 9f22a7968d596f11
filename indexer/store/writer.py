"""Records as Arrow columns and back, one record per id, and what counts as a failure of the
store's files: what the writer (`delta_writer.py`) and the merge rules share."""

from __future__ import annotations

import dataclasses
import errno
import os
from datetime import datetime, timezone

import duckdb
import pyarrow as pa

from .. import lineage, timestamps
from ..model import IMPORTED, Blob, HistoryEntry, ImageRecord, Platform, merge_records
from ..references import blob_id
from . import schema


def _offsets(groups) -> pa.Array:
    offsets = [0]
    total = 0
    for group in groups:
        total += len(group)
        offsets.append(total)
    return pa.array(offsets, pa.int32())


def _string_lists(groups: list) -> pa.Array:
    return pa.ListArray.from_arrays(_offsets(groups), pa.array([v for g in groups for v in g], pa.string()))


def _blob_lists(groups: list) -> pa.Array:
    flat = [b for g in groups for b in g]
    struct = pa.StructArray.from_arrays(
        [
            pa.array([b.id or blob_id(b.digest) for b in flat], pa.string()),
            pa.array([b.digest for b in flat], pa.string()),
            pa.array([b.size for b in flat], pa.int64()),
            pa.array([b.media_type for b in flat], pa.string()),
            _string_lists([b.urls for b in flat]),
        ],
        fields=list(schema.BLOB),
    )
    return pa.ListArray.from_arrays(_offsets(groups), struct)


def _history_lists(groups: list) -> pa.Array:
    flat = [h for g in groups for h in g]
    struct = pa.StructArray.from_arrays(
        [
            pa.array([h.created for h in flat], pa.string()),
            pa.array([h.created_by for h in flat], pa.string()),
            pa.array([h.comment for h in flat], pa.string()),
            pa.array([h.empty_layer for h in flat], pa.bool_()),
        ],
        fields=list(schema.HISTORY),
    )
    return pa.ListArray.from_arrays(_offsets(groups), struct)


def _label_maps(groups: list) -> pa.Array:
    return pa.MapArray.from_arrays(
        _offsets(groups),
        pa.array([k for g in groups for k, _ in g], pa.string()),
        pa.array([v for g in groups for _, v in g], pa.string()),
    )


def records_to_arrow(records: list[ImageRecord], indexed_at: datetime) -> pa.Table:
    """Column by column: building nested Arrow arrays from flat lists is far cheaper than row dicts."""

    def column(getter, dtype):
        return pa.array([getter(r) for r in records], dtype)

    def of_config(getter, dtype):
        return pa.array([getter(r.config) if r.config is not None else None for r in records], dtype)

    def of_platform(attribute):
        return pa.array(
            [getattr(r.platform, attribute) if r.platform is not None else None for r in records], pa.string()
        )

    string, int64 = pa.string(), pa.int64()
    chains = [lineage.chain_ids(r.diff_ids) for r in records]
    arrays = {
        "id": column(lambda r: r.id, string),
        "registry": column(lambda r: r.registry, string),
        "name": column(lambda r: r.name, string),
        "digest": column(lambda r: r.digest, string),
        "media_type": column(lambda r: r.media_type, string),
        "kind": column(lambda r: r.kind, string),
        "config_id": of_config(lambda c: c.id or blob_id(c.digest), string),
        "config_digest": of_config(lambda c: c.digest, string),
        "config_size": of_config(lambda c: c.size, int64),
        "config_media_type": of_config(lambda c: c.media_type, string),
        "config_urls": _string_lists([r.config.urls if r.config is not None else () for r in records]),
        "layers": _blob_lists([r.layers for r in records]),
        "layers_compressed": column(lambda r: r.layers_compressed, pa.bool_()),
        "compressed_size": column(lambda r: r.compressed_size, int64),
        "tags": _string_lists([r.tags for r in records]),
        "created": column(lambda r: r.created, string),
        "created_at": column(lambda r: timestamps.epoch_nanos(r.created) if r.created else None, int64).cast(
            pa.timestamp("ns")
        ),
        "platform_os": of_platform("os"),
        "platform_architecture": of_platform("architecture"),
        "platform_variant": of_platform("variant"),
        "parent_digest": column(lambda r: r.parent_digest, string),
        "labels": _label_maps([r.labels for r in records]),
        "env": _string_lists([r.env for r in records]),
        "entrypoint": _string_lists([r.entrypoint for r in records]),
        "cmd": _string_lists([r.cmd for r in records]),
        "history": _history_lists([r.history for r in records]),
        "diff_ids": _string_lists([r.diff_ids for r in records]),
        "chain_ids": _string_lists(chains),
        "chain_id": pa.array([c[-1] if c else None for c in chains], string),
        "source_kind": column(lambda r: r.source_kind, string),
        "source_path": column(lambda r: r.source_path, string),
        "exactness": column(lambda r: r.exactness, pa.int8()),
        "id_origin": column(lambda r: r.id_origin, string),
        "indexed_at": pa.array([indexed_at] * len(records), pa.timestamp("us", tz="UTC")),
        "manifest_raw": column(lambda r: r.manifest_raw, pa.binary()),
        "config_raw": column(lambda r: r.config_raw, pa.binary()),
    }
    return pa.Table.from_arrays([arrays[f.name] for f in schema.IMAGES], schema=schema.IMAGES)


def _one_per_id(records: list[ImageRecord]) -> list[ImageRecord]:
    # Within a batch as across batches, a known manifest is one resource: an imported id wins.
    imported = {(r.registry, r.name, r.digest): r.id for r in records if r.id_origin == "imported" and r.digest}
    if imported:
        records = [
            dataclasses.replace(r, id=imported[key], id_origin="imported")
            if r.id_origin != "imported" and (key := (r.registry, r.name, r.digest)) in imported
            else r
            for r in records
        ]
    by_id: dict[str, ImageRecord] = {}
    for record in records:
        known = by_id.get(record.id)
        by_id[record.id] = record if known is None else merge_records(known, record)
    return list(by_id.values())


def _tags_to_arrow(records: list[ImageRecord]) -> pa.Table:
    # A tag names one manifest per repository: within a batch the last record that claims it wins.
    latest = {(r.registry, r.name, tag): r.id for r in records for tag in r.tags}
    rows = [(*key, image_id) for key, image_id in latest.items()]
    return pa.Table.from_arrays([pa.array([row[i] for row in rows], pa.string()) for i in range(4)], schema=schema.TAGS)


def _blob_from_row(digest: str, size: int, media_type: str, urls, stored_id: str) -> Blob:
    # The formula id is stored spelled out; in a record it is the empty default.
    return Blob(digest, size, media_type or "", tuple(urls or ()), "" if stored_id == blob_id(digest) else stored_id)


def record_from_row(row: dict) -> ImageRecord:
    """A stored `images` row back as the record that wrote it, for field-by-field merges."""
    config = None
    if row["config_digest"] is not None:
        config = _blob_from_row(
            row["config_digest"], row["config_size"], row["config_media_type"], row["config_urls"], row["config_id"]
        )
    layers = tuple(
        _blob_from_row(b["digest"], b["size"], b["media_type"], b["urls"], b["id"]) for b in row["layers"] or ()
    )
    history = tuple(
        HistoryEntry(h["created"], h["created_by"], h["comment"], h["empty_layer"]) for h in row["history"] or ()
    )
    platform = None
    if any(row[f"platform_{part}"] is not None for part in ("os", "architecture", "variant")):
        platform = Platform(row["platform_os"] or "", row["platform_architecture"] or "", row["platform_variant"] or "")
    return ImageRecord(
        id=row["id"],
        registry=row["registry"],
        name=row["name"],
        digest=row["digest"],
        media_type=row["media_type"],
        kind=row["kind"],
        config=config,
        layers=layers,
        layers_compressed=row["layers_compressed"],
        tags=tuple(row["tags"] or ()),
        created=row["created"],
        platform=platform,
        parent_digest=row["parent_digest"],
        source_kind=row["source_kind"],
        source_path=row["source_path"],
        exactness=row["exactness"],
        labels=tuple((k, v) for k, v in row["labels"] or ()),
        env=tuple(row["env"] or ()),
        entrypoint=tuple(row["entrypoint"] or ()),
        cmd=tuple(row["cmd"] or ()),
        history=history,
        diff_ids=tuple(row["diff_ids"] or ()),
        manifest_raw=row["manifest_raw"],
        config_raw=row["config_raw"],
        id_origin=row["id_origin"],
        # Only imported records keep a compressed size of their own (see ImageRecord).
        declared_compressed_size=row["compressed_size"] if row["exactness"] >= IMPORTED else None,
    )


# Failures that mean the store's files cannot be written, whatever the data: DuckDB reports
# them inside its own exception types (a failed WAL write is a TransactionException), so they
# are known by their operating-system message as well as by their errno.
_STORE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO)
_STORE_CAUSES = {os.strerror(code): os.strerror(code).lower() for code in _STORE_ERRNOS}


def store_failure(exc: BaseException) -> str | None:
    """The cause, in a few words, when `exc` is a failure of the store's files; else None."""
    if isinstance(exc, OSError):
        # Any OSError on the store's own files is the store's: a full disk, a read-only
        # mount, a folder that lost its permissions.
        return exc.strerror.lower() if exc.strerror else (str(exc) or type(exc).__name__)
    if isinstance(exc, duckdb.Error):
        text = str(exc)
        for message, cause in _STORE_CAUSES.items():
            if message.lower() in text.lower():
                return cause
        if isinstance(exc, (duckdb.IOException, duckdb.FatalException, duckdb.InternalException)):
            lines = text.strip().splitlines()
            return lines[0] if lines else type(exc).__name__
    return None


def now_utc() -> datetime:
    return datetime.now(timezone.utc)
