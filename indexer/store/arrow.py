"""Arrow arrays built from Python lists through their buffers.

`pa.array` on a list first asks whether the list is a pandas object, and to ask, it imports pandas
(0.3 s, a whole parse of 10,000 images) in any process where pandas is installed; `pa.scalar`
does the same. The index path therefore builds its arrays here, from the bytes Arrow lays them
out in. Each builder takes values of exactly its type (or None) and raises TypeError or
OverflowError on anything else, so that a record the store cannot take fails its batch before any
file is written, as with `pa.array`.
"""

from __future__ import annotations

import array
import re
from datetime import date, datetime, timezone
from itertools import accumulate

import pyarrow as pa

_INT32_MAX = 2**31 - 1
_NS_MIN, _NS_MAX = -(2**63), 2**63 - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _validity(values) -> tuple[pa.Buffer | None, int]:
    """The validity bitmap of `values` (None is null) and the null count; no bitmap without nulls."""
    if None not in values:  # identity first: faster than counting, which compares each value
        return None, 0
    nulls = values.count(None)
    bits = "".join(["0" if v is None else "1" for v in reversed(values)])
    return pa.py_buffer(int(bits, 2).to_bytes((len(values) + 7) // 8, "little")), nulls


def offsets(groups) -> pa.Array:
    """int32 list offsets of `groups` (sequences; None is not allowed)."""
    out = array.array("i", list(accumulate(map(len, groups), initial=0)))
    return pa.Array.from_buffers(pa.int32(), len(out), [None, pa.py_buffer(out)])


def _utf8(values) -> tuple[bytes, array.array]:
    joined = "".join(values)
    if not joined:  # all empty, as most comments and variants are: every offset is 0
        return b"", array.array("i", bytes(4 * (len(values) + 1)))
    if len(joined) > _INT32_MAX:
        return joined.encode("utf-8"), array.array("i")  # the caller goes another way
    if joined.isascii():
        data = joined.encode("ascii")
        lengths = map(len, values)
    else:
        encoded = [v.encode("utf-8") for v in values]  # a lone surrogate raises, as in pa.array
        data = b"".join(encoded)
        lengths = map(len, encoded)
    # From a list: array.array grows one item at a time from an iterator.
    return data, array.array("i", list(accumulate(lengths, initial=0)))


def strings(values) -> pa.Array:
    """A string array of str or None."""
    try:
        data, ends = _utf8(values)
        validity, nulls = None, 0
    except TypeError:  # a None, or something that is no string
        validity, nulls = _validity(values)
        if not nulls:
            raise
        data, ends = _utf8(["" if v is None else v for v in values])
    if len(data) > _INT32_MAX:
        return pa.array(values, pa.string())  # Arrow splits what int32 offsets cannot hold
    return pa.StringArray.from_buffers(len(values), pa.py_buffer(ends), pa.py_buffer(data), validity, nulls)


def binaries(values) -> pa.Array:
    """A binary array of bytes or None."""
    try:
        data = b"".join(values)
        validity, nulls, plain = None, 0, values
    except TypeError:  # a None, or something that is not bytes
        validity, nulls = _validity(values)
        if not nulls:
            raise
        plain = [b"" if v is None else v for v in values]
        data = b"".join(plain)
    if len(data) > _INT32_MAX:
        return pa.array(values, pa.binary())  # Arrow splits what int32 offsets cannot hold
    ends = array.array("i", list(accumulate(map(len, plain), initial=0)))
    return pa.Array.from_buffers(pa.binary(), len(values), [validity, pa.py_buffer(ends), pa.py_buffer(data)], nulls)


def _integers(values, dtype: pa.DataType, code: str) -> pa.Array:
    types = set(map(type, values))
    if bool in types:  # array.array takes booleans as 0 and 1
        raise TypeError("expected an integer, got a boolean")
    validity, nulls = (None, 0) if type(None) not in types else _validity(values)
    plain = values if not nulls else [0 if v is None else v for v in values]
    data = array.array(code, plain)  # TypeError for other types, OverflowError outside the range
    return pa.Array.from_buffers(dtype, len(values), [validity, pa.py_buffer(data)], nulls)


def int64s(values) -> pa.Array:
    return _integers(values, pa.int64(), "q")


def int8s(values) -> pa.Array:
    return _integers(values, pa.int8(), "b")


def bools(values) -> pa.Array:
    types = set(map(type, values))
    if not types <= {bool, type(None)}:
        raise TypeError(f"expected booleans, got {', '.join(sorted(t.__name__ for t in types))}")
    validity, nulls = (None, 0) if type(None) not in types else _validity(values)
    bits = "".join(["1" if v else "0" for v in reversed(values)]) or "0"
    data = int(bits, 2).to_bytes((len(values) + 7) // 8, "little")
    return pa.Array.from_buffers(pa.bool_(), len(values), [validity, pa.py_buffer(data)], nulls)


def timestamps_ns(values) -> pa.Array:
    """A timestamp[ns] array of nanoseconds since the epoch (int) or None."""
    return int64s(values).view(pa.timestamp("ns"))


def utc_micros(values, dtype: pa.DataType) -> pa.Array:
    """A timestamp[us, UTC] array of aware datetimes or None."""
    return int64s([None if v is None else epoch_micros(v) for v in values]).view(dtype)


def epoch_micros(when: datetime) -> int:
    """Microseconds since the epoch of an aware datetime, or of a naive one taken as UTC."""
    return ((when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)) - _EPOCH) // _MICROSECOND


_MICROSECOND = datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=timezone.utc) - _EPOCH


def string_lists(groups) -> pa.Array:
    """A list<string> array of sequences of str, or None."""
    try:
        return pa.ListArray.from_arrays(offsets(groups), strings([v for group in groups for v in group]))
    except TypeError:  # a None, or something that is no sequence
        if None not in groups:
            raise
        plain = [() if g is None else g for g in groups]
        mask = bools([g is None for g in groups])
        return pa.ListArray.from_arrays(offsets(plain), strings([v for g in plain for v in g]), mask=mask)


def table(columns: dict[str, pa.Array], schema: pa.Schema | None = None) -> pa.Table:
    if schema is not None:
        return pa.Table.from_arrays([columns[f.name] for f in schema], schema=schema)
    return pa.Table.from_arrays(list(columns.values()), names=list(columns))


def column(dtype: pa.DataType, values: list) -> pa.Array:
    """An array of `dtype` (the plain types the tables use) from one value per row."""
    if pa.types.is_string(dtype):
        return strings(values)
    if pa.types.is_int64(dtype):
        return int64s(values)
    if pa.types.is_int8(dtype):
        return int8s(values)
    if pa.types.is_boolean(dtype):
        return bools(values)
    if pa.types.is_binary(dtype):
        return binaries(values)
    if pa.types.is_timestamp(dtype) and dtype.unit == "us" and dtype.tz is not None:
        return utc_micros(values, dtype)
    if pa.types.is_list(dtype) and pa.types.is_string(dtype.value_type):
        return string_lists(values)
    raise TypeError(f"no Arrow build for {dtype}")


def rows_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """`rows` (dicts by column name; a missing column is null) as a table of `schema`."""
    return pa.Table.from_arrays([column(f.type, [row.get(f.name) for row in rows]) for f in schema], schema=schema)


# The canonical text of `timestamps.format_utc`, whose nanoseconds are read here directly; any
# other text goes through the fallback.
_CANONICAL = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{3}|\.[0-9]{6}|\.[0-9]{9})?Z")
_EPOCH_DAY = date(1970, 1, 1).toordinal()


def _canonical_nanos(text: str, fallback) -> int | None:
    if _CANONICAL.fullmatch(text) is None:
        return fallback(text)
    try:
        day = date(int(text[0:4]), int(text[5:7]), int(text[8:10])).toordinal() - _EPOCH_DAY
    except ValueError:
        return fallback(text)
    seconds = day * 86400 + int(text[11:13]) * 3600 + int(text[14:16]) * 60 + int(text[17:19])
    fraction = text[20:-1]
    nanos = seconds * 1_000_000_000 + (int(fraction.ljust(9, "0")) if fraction else 0)
    return nanos if _NS_MIN <= nanos <= _NS_MAX else None


def utc_nanos_of_text(values, fallback) -> pa.Array:
    """timestamp[ns] (UTC, naive) of RFC 3339 texts or None; `fallback(text)` gives the
    nanoseconds (or None) of texts not in the canonical form."""
    return timestamps_ns([None if v is None else _canonical_nanos(v, fallback) for v in values])


def empty(schema: pa.Schema) -> pa.Table:
    """A table of no rows (`Schema.empty_table` imports pandas)."""
    return pa.Table.from_arrays([pa.nulls(0, f.type) for f in schema], schema=schema)
