"""The columns of the `images` table, each described once.

An entry names the column, its Arrow type, how its values come from an `ImageRecord` (a getter
per record, or a builder over the whole batch for columns derived across records), and, for the
fields of the Yandex Cloud `Image` response, its JSON key path. The Arrow schema (`schema.IMAGES`),
the DuckDB DDL and the Arrow build (`writer.records_to_arrow`) derive from this table, so adding a
column is one entry here.

Types are spelled as text so that this module imports nothing heavy: the lookup path reads
`RESPONSE_COLUMNS` from here and never imports pyarrow. `schema.arrow_type` turns the text into
an Arrow type.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, NamedTuple

from .. import timestamps
from ..identifiers import NO_BLOB_ID, blob_id

if TYPE_CHECKING:  # a lookup reads RESPONSE_COLUMNS and builds no record: model.py costs ~3 ms
    from ..model import Blob, ImageRecord


class Column(NamedTuple):
    name: str
    # "string", "int8", "int64", "bool", "binary", "timestamp[ns]", "timestamp[us, UTC]",
    # "list<T>" or "map<string, string>"; "blob" and "history" are the structs described below.
    type: str
    # The value of one record (None is null; a list column takes a sequence, a map one of pairs):
    # the name of the record's attribute that holds it, "member.attribute" for an attribute of a
    # named tuple the record may hold (None when it holds none), or a function of the record.
    get: str | Callable | None = None
    # Or the whole column at once, from a `Batch` (see writer.py): for values shared by a batch
    # or derived from other columns; a list of values or an Arrow array.
    build: Callable | None = None
    # The JSON key path of the column in the `Image` response, e.g. ("config", "digest").
    response: tuple[str, ...] = ()


class Batch(NamedTuple):
    """What builders see: the records and the time of the write that stores them."""

    records: list[ImageRecord]
    indexed_at: object  # datetime, UTC
    chains: list[tuple[str, ...]]  # lineage.chain_ids of each record's diff_ids


def _created_at(batch: Batch):
    from . import arrow  # pyarrow: only a write builds columns, and this module stays light

    return arrow.utc_nanos_of_text([r.created for r in batch.records], timestamps.epoch_nanos)


def _stored_id(blob: Blob) -> str:
    if blob.id == NO_BLOB_ID:
        return ""
    return blob.id or blob_id(blob.digest)


# A layer (and the config, flattened into config_* columns below): a struct in a list column.
BLOB: tuple[Column, ...] = (
    # The formula id is stored spelled out; in a record it is the empty default.
    Column("id", "string", _stored_id, response=("id",)),
    Column("digest", "string", "digest", response=("digest",)),
    Column("size", "int64", "size", response=("size",)),
    Column("media_type", "string", "media_type"),
    Column("urls", "list<string>", "urls", response=("urls",)),
)

HISTORY: tuple[Column, ...] = (
    Column("created", "string", "created"),
    Column("created_by", "string", "created_by"),
    Column("comment", "string", "comment"),
    Column("empty_layer", "bool", "empty_layer"),
)

STRUCTS: dict[str, tuple[Column, ...]] = {"blob": BLOB, "history": HISTORY}

IMAGES: tuple[Column, ...] = (
    Column("id", "string", "id", response=("id",)),
    Column("registry", "string", "registry"),
    Column("name", "string", "name", response=("name",)),
    Column("digest", "string", "digest", response=("digest",)),
    Column("media_type", "string", "media_type"),
    Column("kind", "string", "kind"),
    Column(
        "config_id",
        "string",
        lambda r: None if r.config is None else _stored_id(r.config),
        response=("config", "id"),
    ),
    Column("config_digest", "string", "config.digest", response=("config", "digest")),
    Column("config_size", "int64", "config.size", response=("config", "size")),
    Column("config_media_type", "string", "config.media_type"),
    Column(
        "config_urls", "list<string>", lambda r: () if r.config is None else r.config.urls, response=("config", "urls")
    ),
    Column("layers", "list<blob>", "layers", response=("layers",)),
    Column("layers_compressed", "bool", "layers_compressed"),
    Column("compressed_size", "int64", "compressed_size", response=("compressedSize",)),
    Column("tags", "list<string>", "tags", response=("tags",)),
    # The exact text (nanoseconds, as the response prints it); created_at is the same instant as
    # a timestamp for SQL.
    Column("created", "string", "created", response=("createdAt",)),
    Column("created_at", "timestamp[ns]", build=_created_at),
    Column("platform_os", "string", "platform.os"),
    Column("platform_architecture", "string", "platform.architecture"),
    Column("platform_variant", "string", "platform.variant"),
    Column("parent_digest", "string", "parent_digest"),
    Column("labels", "map<string, string>", "labels"),
    Column("env", "list<string>", "env"),
    Column("entrypoint", "list<string>", "entrypoint"),
    Column("cmd", "list<string>", "cmd"),
    Column("history", "list<history>", "history"),
    # Lineage: the config's diff_ids and their ChainIDs (C1..Cn; see indexer/lineage.py), and
    # the top ChainID on its own, so that finding bases reads one plain column.
    Column("diff_ids", "list<string>", "diff_ids"),
    Column("chain_ids", "list<string>", build=lambda batch: batch.chains),
    Column("chain_id", "string", build=lambda batch: [c[-1] if c else None for c in batch.chains]),
    Column("source_kind", "string", "source_kind"),
    Column("source_path", "string", "source_path"),
    Column("exactness", "int8", "exactness"),
    Column("id_origin", "string", "id_origin"),
    Column("indexed_at", "timestamp[us, UTC]", build=lambda batch: [batch.indexed_at] * len(batch.records)),
    Column("manifest_raw", "binary", "manifest_raw"),
    Column("config_raw", "binary", "config_raw"),
)

# The `Image` message's fields in proto order (yandex.cloud.containerregistry.v1.Image), and
# those of its `Blob` (config, layers): the order the response prints them in.
IMAGE_FIELDS = ("id", "name", "digest", "compressedSize", "config", "layers", "tags", "createdAt")
BLOB_FIELDS = ("id", "digest", "size", "urls")


def _proto_position(column: Column) -> tuple[int, ...]:
    top, *inner = column.response
    return (IMAGE_FIELDS.index(top), *(BLOB_FIELDS.index(key) for key in inner))


# What the response needs, in proto field order: id, name, digest, compressed_size, config_id,
# config_digest, config_size, config_urls, layers, tags, created.
RESPONSE_COLUMNS: tuple[str, ...] = tuple(
    c.name for c in sorted((c for c in IMAGES if c.response), key=_proto_position)
)
# Column name -> its JSON key path in the response.
RESPONSE_KEYS: dict[str, tuple[str, ...]] = {c.name: c.response for c in IMAGES if c.response}
# Of a layer: struct field -> its JSON key in the response's Blob.
BLOB_RESPONSE_KEYS: dict[str, str] = {c.name: c.response[0] for c in BLOB if c.response}

BY_NAME: dict[str, Column] = {c.name: c for c in IMAGES}


def value(column: Column, item) -> object:
    """`column`'s value for one record (or struct member) by its getter."""
    if not isinstance(column.get, str):
        return column.get(item)
    head, _, attribute = column.get.partition(".")
    held = getattr(item, head)
    return held if not attribute or held is None else getattr(held, attribute)
