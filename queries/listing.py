"""Image.List: filter, order and keyset pages with opaque, stable page tokens."""
from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass

from indexer.errors import QueryError

from .render import SELECT, list_response, to_response

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000

# Sort keys never NULL, so that keyset comparisons are total.
_ORDER_FIELDS = {
    "name": "name",
    "digest": "coalesce(digest, '')",
    "created_at": "coalesce(epoch_ns(created_at), -9223372036854775807)",
    "last_modified": "epoch_us(indexed_at)",
}
_DEFAULT_ORDER = "name,digest"

_STRING = r"""("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')"""
_TOKEN = re.compile(rf"""\s*(?:(?P<field>name)\s*(?:(?P<op>!=|=)\s*{_STRING}|\s+(?P<in>IN)\s*\((?P<list>[^)]*)\))|(?P<and>AND))\s*""", re.IGNORECASE)


@dataclass(frozen=True)
class Query:
    registry_id: str = ""
    repository_name: str = ""
    filter: str = ""
    order_by: str = ""
    page_size: int = DEFAULT_PAGE_SIZE
    page_token: str = ""


def _quoted(text: str) -> str:
    """A filter as messages quote it, cut short: it may be any length."""
    return repr(text if len(text) <= 120 else text[:120] + "...")


def _unquote(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text[1:-1])


def parse_filter(text: str) -> tuple[str, list]:
    """`name="x"`, `name!="x"`, `name IN ("a", "b")`, joined by AND -> (SQL condition, params)."""
    conditions: list[str] = []
    params: list = []
    position = 0
    expect_term = True
    text = text.strip()
    while position < len(text):
        m = _TOKEN.match(text, position)
        if not m or m.end() == position:
            raise QueryError(f"invalid filter {_quoted(text)} at position {position}: expected name=\"...\", name!=\"...\" or name IN (...)")
        position = m.end()
        if m.group("and"):
            if expect_term:
                raise QueryError(f"invalid filter {_quoted(text)}: AND without a condition before it")
            expect_term = True
            continue
        if not expect_term:
            raise QueryError(f"invalid filter {_quoted(text)}: conditions must be joined by AND")
        expect_term = False
        if m.group("in"):
            items = re.findall(_STRING, m.group("list"))
            leftover = re.sub(_STRING, "", m.group("list")).replace(",", "").strip()
            if not items or leftover:
                raise QueryError(f"invalid filter {_quoted(text)}: IN takes a list of quoted names")
            conditions.append("name IN (SELECT unnest(?::VARCHAR[]))")
            params.append([_unquote(i) for i in items])
        else:
            conditions.append("name = ?" if m.group("op") == "=" else "name <> ?")
            params.append(_unquote(m.group(3)))
    if expect_term and conditions:
        raise QueryError(f"invalid filter {_quoted(text)}: ends with AND")
    return " AND ".join(conditions), params


def parse_order(text: str) -> list[tuple[str, bool]]:
    """`name, created_at desc` -> [(field, descending)]; id is appended as the final tie-break."""
    order: list[tuple[str, bool]] = []
    for part in (text or _DEFAULT_ORDER).split(","):
        words = part.split()
        if not words:
            continue
        if words[0] not in _ORDER_FIELDS or len(words) > 2 or (len(words) == 2 and words[1].lower() not in ("asc", "desc")):
            raise QueryError(f"invalid order {part.strip()!r}: fields are {', '.join(_ORDER_FIELDS)}, each with an optional desc")
        order.append((words[0], len(words) == 2 and words[1].lower() == "desc"))
    if not order:
        raise QueryError("empty order")
    return order


def _encode(payload: dict) -> str:
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(token: str) -> dict:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        payload = None
    if not isinstance(payload, dict) or not isinstance(payload.get("k"), list):
        raise QueryError("invalid page token")
    return payload


# What each sort key holds, so that a hand-edited token fails here and not inside DuckDB.
_KEY_TYPES = {"name": str, "digest": str, "created_at": int, "last_modified": int}
_INT64 = range(-(2**63), 2**63)


def _valid_key(value, kind) -> bool:
    if kind is int:
        return type(value) is int and value in _INT64
    return type(value) is str


def list_images(con, query: Query) -> dict:
    if not 1 <= query.page_size <= MAX_PAGE_SIZE:
        raise QueryError(f"page size must be between 1 and {MAX_PAGE_SIZE}")
    order = parse_order(query.order_by)
    keys = [(_ORDER_FIELDS[field], desc) for field, desc in order] + [("id", False)]
    conditions: list[str] = []
    params: list = []
    if query.registry_id:
        # A YCR registry id is the first component of the name; other registries go by host.
        conditions.append("(registry = ? OR split_part(name, '/', 1) = ?)")
        params += [query.registry_id, query.registry_id]
    if query.repository_name:
        conditions.append("name = ?")
        params.append(query.repository_name)
    if query.filter:
        condition, values = parse_filter(query.filter)
        if condition:
            conditions.append(condition)
            params += values
    fingerprint = [query.registry_id, query.repository_name, query.filter, [list(o) for o in order]]
    if query.page_token:
        payload = _decode(query.page_token)
        if payload.get("q") != fingerprint or len(payload["k"]) != len(keys):
            raise QueryError("page token does not belong to this query")
        kinds = [_KEY_TYPES[field] for field, _ in order] + [str]
        if not all(_valid_key(value, kind) for value, kind in zip(payload["k"], kinds, strict=True)):
            raise QueryError("invalid page token")
        alternatives = []
        for i, (expr, desc) in enumerate(keys):
            equal = [f"{keys[j][0]} = ?" for j in range(i)]
            alternatives.append("(" + " AND ".join(equal + [f"{expr} {'<' if desc else '>'} ?"]) + ")")
            params += payload["k"][:i] + [payload["k"][i]]
        conditions.append("(" + " OR ".join(alternatives) + ")")
    where = " AND ".join(conditions) or "TRUE"
    order_sql = ", ".join(f"{expr} {'DESC' if desc else 'ASC'}" for expr, desc in keys)
    key_sql = ", ".join(expr for expr, _ in keys)
    rows = con.execute(
        f"SELECT {SELECT}, {key_sql} FROM images WHERE {where} ORDER BY {order_sql} LIMIT ?",
        params + [query.page_size + 1],
    ).fetchall()
    width = len(SELECT.split(", "))
    page = rows[: query.page_size]
    token = ""
    if len(rows) > query.page_size:
        token = _encode({"q": fingerprint, "k": list(page[-1][width:])})
    return list_response([to_response(row[:width]) for row in page], token)
