"""The store's tables, defined once as Arrow schemas. DuckDB DDL and Parquet files follow from them."""

from __future__ import annotations

import pyarrow as pa

_STRINGS = pa.list_(pa.string())

BLOB = pa.struct(
    [
        ("id", pa.string()),
        ("digest", pa.string()),
        ("size", pa.int64()),
        ("media_type", pa.string()),
        ("urls", _STRINGS),
    ]
)
HISTORY = pa.struct(
    [
        ("created", pa.string()),
        ("created_by", pa.string()),
        ("comment", pa.string()),
        ("empty_layer", pa.bool_()),
    ]
)

IMAGES = pa.schema(
    [
        ("id", pa.string()),
        ("registry", pa.string()),
        ("name", pa.string()),
        ("digest", pa.string()),
        ("media_type", pa.string()),
        ("kind", pa.string()),
        ("config_id", pa.string()),
        ("config_digest", pa.string()),
        ("config_size", pa.int64()),
        ("config_media_type", pa.string()),
        ("config_urls", _STRINGS),
        ("layers", pa.list_(BLOB)),
        ("layers_compressed", pa.bool_()),
        ("compressed_size", pa.int64()),
        ("tags", _STRINGS),
        ("created", pa.string()),
        ("created_at", pa.timestamp("ns")),
        ("platform_os", pa.string()),
        ("platform_architecture", pa.string()),
        ("platform_variant", pa.string()),
        ("parent_digest", pa.string()),
        ("labels", pa.map_(pa.string(), pa.string())),
        ("env", _STRINGS),
        ("entrypoint", _STRINGS),
        ("cmd", _STRINGS),
        ("history", pa.list_(HISTORY)),
        # Lineage: the config's diff_ids and their ChainIDs (C1..Cn; see indexer/lineage.py), and
        # the top ChainID on its own, so that finding bases reads one plain column.
        ("diff_ids", _STRINGS),
        ("chain_ids", _STRINGS),
        ("chain_id", pa.string()),
        ("source_kind", pa.string()),
        ("source_path", pa.string()),
        ("exactness", pa.int8()),
        ("id_origin", pa.string()),
        ("indexed_at", pa.timestamp("us", tz="UTC")),
        ("manifest_raw", pa.binary()),
        ("config_raw", pa.binary()),
    ]
)

TAGS = pa.schema(
    [
        ("registry", pa.string()),
        ("name", pa.string()),
        ("tag", pa.string()),
        ("image_id", pa.string()),
    ]
)

RUNS = pa.schema(
    [
        ("run_id", pa.string()),
        ("started_at", pa.timestamp("us", tz="UTC")),
        ("finished_at", pa.timestamp("us", tz="UTC")),
        ("sources", _STRINGS),
        ("images_indexed", pa.int64()),
        ("images_failed", pa.int64()),
        ("errors", _STRINGS),
    ]
)

TABLES = {"images": IMAGES, "tags": TAGS, "runs": RUNS}


def duckdb_type(dtype: pa.DataType) -> str:
    if pa.types.is_string(dtype):
        return "VARCHAR"
    if pa.types.is_int64(dtype):
        return "BIGINT"
    if pa.types.is_int8(dtype):
        return "TINYINT"
    if pa.types.is_boolean(dtype):
        return "BOOLEAN"
    if pa.types.is_binary(dtype):
        return "BLOB"
    if pa.types.is_timestamp(dtype):
        if dtype.tz is not None:
            if dtype.unit != "us":
                raise ValueError("DuckDB keeps time zones only at microsecond precision")
            return "TIMESTAMP WITH TIME ZONE"
        return {"ns": "TIMESTAMP_NS", "us": "TIMESTAMP"}[dtype.unit]
    if pa.types.is_map(dtype):
        return f"MAP({duckdb_type(dtype.key_type)}, {duckdb_type(dtype.item_type)})"
    if pa.types.is_list(dtype):
        return f"{duckdb_type(dtype.value_type)}[]"
    if pa.types.is_struct(dtype):
        fields = ", ".join(f'"{f.name}" {duckdb_type(f.type)}' for f in dtype)
        return f"STRUCT({fields})"
    raise ValueError(f"no DuckDB type for {dtype}")


def create_table_sql(table: str) -> str:
    columns = ", ".join(f'"{f.name}" {duckdb_type(f.type)}' for f in TABLES[table])
    return f"CREATE TABLE IF NOT EXISTS {table} ({columns})"
