"""Records as Arrow columns and back, one record per id, and what counts as a failure of the
store's files: what the writer (`delta_writer.py`) and the merge rules share."""

from __future__ import annotations

import dataclasses
import errno
import functools
import importlib.util
import os
import sys
from itertools import chain
from operator import attrgetter
from typing import Sequence
from datetime import datetime, timezone

import pyarrow as pa

from .. import lineage
from ..errors import first_line
from ..model import IMPORTED, Blob, HistoryEntry, ImageRecord, Platform, merge_records
from ..identifiers import NO_BLOB_ID
from ..references import blob_id
from . import arrow, columns, schema


_SCALARS = {
    "string": arrow.strings,
    "int64": arrow.int64s,
    "int8": arrow.int8s,
    "bool": arrow.bools,
    "binary": arrow.binaries,
    "timestamp[ns]": arrow.timestamps_ns,
}


def _values(table: tuple[columns.Column, ...], items) -> dict[str, list]:
    """Each column's values from `items` (records, or a struct's members): the attribute columns
    in one pass, each item giving a tuple of them that is then turned into columns."""
    by_attribute = [c for c in table if isinstance(c.get, str)]
    out: dict[str, list] = {}
    by_name = _transposed(items)
    if by_name:
        # Named tuples (layers, history entries) turn into columns without a getter call each.
        out.update((c.name, by_name[c.get]) for c in by_attribute)
    else:
        # Records come in id order, scattered in memory: each is visited once, for all of its
        # attributes, and what a member holds (config.digest) is read from the members alike.
        paths = [c.get.partition(".") for c in by_attribute]
        heads = sorted({head for head, _, _ in paths})
        rows = list(map(attrgetter(*heads), items)) if len(heads) > 1 else [(getattr(i, heads[0]),) for i in items]
        held = dict(zip(heads, zip(*rows))) if rows else dict.fromkeys(heads, ())
        members: dict[str, dict[str, Sequence]] = {}
        for c, (head, _, attribute) in zip(by_attribute, paths):
            if not attribute:
                out[c.name] = held[head]
                continue
            if head not in members:
                members[head] = _transposed(held[head])
            if members[head]:
                out[c.name] = members[head][attribute]
            else:  # some records hold none, or not all of one type
                out[c.name] = [None if h is None else getattr(h, attribute) for h in held[head]]
    for c in table:
        if callable(c.get):
            out[c.name] = [c.get(item) for item in items]
    return out


def _transposed(held) -> dict[str, Sequence]:
    """Attribute -> one value per item, when every item is a named tuple of one type; else {}."""
    names = getattr(type(held[0]), "_fields", None) if held else None
    if names is None or len(set(map(type, held))) != 1:
        return {}
    return dict(zip(names, zip(*held)))


def _array(spelled: str, values) -> pa.Array:
    """An Arrow array of a `columns.py` type from one value per row."""
    if isinstance(values, pa.Array):
        return values
    build = _SCALARS.get(spelled)
    if build is not None:
        return build(values)
    if spelled.startswith("list<"):
        inner = spelled[5:-1]
        if (inner == "string" or _positional(inner, values)) and converts_alone():
            return pa.array(values, schema.arrow_type(spelled))
        flat = list(chain.from_iterable(values))
        if inner in columns.STRUCTS:
            fields = columns.STRUCTS[inner]
            members = _values(fields, flat)
            items = pa.StructArray.from_arrays(
                [_array(f.type, members[f.name]) for f in fields], fields=list(schema.arrow_type(inner))
            )
        else:
            items = _array(inner, flat)
        return pa.ListArray.from_arrays(arrow.offsets(values), items)
    if spelled == "map<string, string>":
        for entries in values:
            # Arrow takes repeated keys, DuckDB refuses to read them: a file holding one would
            # break every reader of the store, so the record is refused here.
            if len(entries) > 1 and len(dict(entries)) != len(entries):
                raise ValueError(f"map key {_first_repeated(key for key, _ in entries)!r} appears more than once")
        if converts_alone():
            return pa.array(values, schema.arrow_type(spelled))
        pairs = list(chain.from_iterable(values))
        keys, items = zip(*pairs) if pairs else ((), ())
        return pa.MapArray.from_arrays(arrow.offsets(values), arrow.strings(keys), arrow.strings(items))
    if spelled == "timestamp[us, UTC]":
        return arrow.utc_micros(values, schema.arrow_type(spelled))
    raise ValueError(f"no Arrow build for {spelled}")


def converts_alone() -> bool:
    """Whether `pa.array` converts Python lists here without importing pandas.

    It is ~3 times as fast as the buffers built in arrow.py for nested values (history, labels,
    lists of strings), but when numpy is loaded (pyarrow loads it if it is installed), it first
    asks pandas whether a list is one of its arrays, and imports pandas to ask: 0.2-0.3 s, more
    than the build of 10,000 images. So only where pandas is loaded already, or cannot be (the
    imgdex index process fails its import, as where it is not installed)."""
    return "pandas" in sys.modules or not _may_import_pandas()


@functools.cache
def _may_import_pandas() -> bool:
    return "numpy" in sys.modules and importlib.util.find_spec("pandas") is not None


def _positional(inner: str, values) -> bool:
    """Whether the items of a list<struct> column are named tuples whose fields begin with the
    struct's, in its order (HistoryEntry), so that Arrow can take them as they are."""
    fields = columns.STRUCTS.get(inner)
    if fields is None or not all(isinstance(f.get, str) for f in fields):
        return False
    item = next((item for group in values if group for item in group), None)
    names = getattr(type(item), "_fields", None)
    return names is not None and names[: len(fields)] == tuple(f.get for f in fields)


def _first_repeated(keys):
    seen = set()
    for key in keys:  # one pass: a config may carry a great many labels
        if key in seen:
            return key
        seen.add(key)
    return None


def records_to_arrow(records: list[ImageRecord], indexed_at: datetime) -> pa.Table:
    """Column by column, as `columns.IMAGES` describes them: building nested Arrow arrays from flat
    lists is far cheaper than from row dicts."""
    # A config whose diff_ids do not match the manifest's layers one for one is not the image's
    # history: its chain would make it a base of images it does not underlie. Its lineage is unknown.
    chains = [lineage.chain_ids(r.diff_ids) if len(r.diff_ids) == len(r.layers) else () for r in records]
    batch = columns.Batch(records, indexed_at, chains)
    values = _values(columns.IMAGES, records)
    arrays = [_array(c.type, c.build(batch) if c.build is not None else values[c.name]) for c in columns.IMAGES]
    return pa.Table.from_arrays(arrays, schema=schema.IMAGES)


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


def _blob_from_row(digest: str, size: int, media_type: str, urls, stored_id: str) -> Blob:
    # The formula id is stored spelled out; in a record it is the empty default. Only an imported
    # blob given without an id is stored without one.
    if not stored_id:
        stored_id = NO_BLOB_ID
    elif stored_id == blob_id(digest):
        stored_id = ""
    return Blob(digest, size, media_type or "", tuple(urls or ()), stored_id)


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
        # mount, a folder that lost its permissions. delta-rs raises one without an errno, in
        # lines of its own words with the operating system's last.
        return exc.strerror.lower() if exc.strerror else (_known_cause(str(exc)) or first_line(exc))
    # Not imported for this: a process that never loaded DuckDB has no DuckDB error to tell.
    duckdb = sys.modules.get("duckdb")
    if duckdb is not None and isinstance(exc, duckdb.Error):
        cause = _known_cause(str(exc))
        if cause is not None:
            return cause
        if isinstance(exc, (duckdb.IOException, duckdb.FatalException, duckdb.InternalException)):
            return first_line(exc)
    return None


def _known_cause(text: str) -> str | None:
    for message, cause in _STORE_CAUSES.items():
        if message.lower() in text.lower():
            return cause
    return None


def now_utc() -> datetime:
    return datetime.now(timezone.utc)
