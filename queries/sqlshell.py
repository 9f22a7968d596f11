"""SQL over the store for analysts, printed as a table, CSV or JSON lines."""

from __future__ import annotations

import base64
import csv
import io
import json
import math

from .render import format_table

# JSON has no number for these: written as proto3 JSON spells them, so that strict parsers
# (jq, JSON.parse) read the line.
_NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def _plain(value, for_json: bool = False):
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, dict):
        return {str(k): _plain(v, for_json) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, for_json) for v in value]
    if for_json and isinstance(value, float) and not math.isfinite(value):
        return _NON_FINITE[repr(value)]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def run(reader, query: str, fmt: str) -> str:
    """`query` through an engine.Reader, which keeps it read-only; the last statement's rows as text."""
    result = reader.run(query)
    if result is None or result.description is None:
        return ""
    columns = [d[0] for d in result.description]
    rows = result.fetchall()
    if fmt == "json":
        return "".join(
            json.dumps(dict(zip(columns, (_plain(v, for_json=True) for v in row), strict=True)), ensure_ascii=False)
            + "\n"
            for row in rows
        )
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow(
                [
                    json.dumps(_plain(v, for_json=True))
                    if isinstance(v, (list, dict))
                    else ("" if v is None else _plain(v))
                    for v in row
                ]
            )
        return buffer.getvalue()
    cells = [["NULL" if v is None else str(_plain(v)) for v in row] for row in rows]
    return format_table(columns, cells) + "\n"
