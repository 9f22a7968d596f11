"""The store's tables, defined once as Arrow schemas. DuckDB DDL and Parquet files follow from them.

The images table is described column by column in `columns.py`; its schema here derives from that.
"""

from __future__ import annotations

import pyarrow as pa

from . import columns

_STRINGS = pa.list_(pa.string())
_SCALARS = {
    "string": pa.string(),
    "int8": pa.int8(),
    "int64": pa.int64(),
    "bool": pa.bool_(),
    "binary": pa.binary(),
    "timestamp[ns]": pa.timestamp("ns"),
    "timestamp[us, UTC]": pa.timestamp("us", tz="UTC"),
    "map<string, string>": pa.map_(pa.string(), pa.string()),
}


def arrow_type(spelled: str) -> pa.DataType:
    """The Arrow type of a column of `columns.py` from its spelling there."""
    if spelled.startswith("list<") and spelled.endswith(">"):
        return pa.list_(arrow_type(spelled[5:-1]))
    if spelled in columns.STRUCTS:
        return pa.struct([(c.name, arrow_type(c.type)) for c in columns.STRUCTS[spelled]])
    return _SCALARS[spelled]


BLOB = arrow_type("blob")
HISTORY = arrow_type("history")
IMAGES = pa.schema([(c.name, arrow_type(c.type)) for c in columns.IMAGES])

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
