"""SQL over the store for analysts, printed as a table, CSV or JSON lines."""
from __future__ import annotations

import base64
import csv
import io
import json

import duckdb

from indexer.errors import QueryError

from .render import format_table


def _plain(value):
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def run(con, query: str, fmt: str) -> str:
    try:
        cursor = con.execute(query)
        if cursor.description is None:
            return ""
        columns = [d[0] for d in cursor.description]
        rows = cursor.fetchall()
    except duckdb.Error as exc:
        raise QueryError(str(exc).splitlines()[0]) from None
    if fmt == "json":
        return "".join(json.dumps(dict(zip(columns, map(_plain, row))), ensure_ascii=False) + "\n" for row in rows)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([json.dumps(_plain(v)) if isinstance(v, (list, dict)) else ("" if v is None else _plain(v)) for v in row])
        return buffer.getvalue()
    cells = [["NULL" if v is None else str(_plain(v)) for v in row] for row in rows]
    return format_table(columns, cells) + "\n"
