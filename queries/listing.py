"""Image.List: the API's rules, filter, order and keyset pages with short, opaque, stable page tokens.

`imgdex list` and `imgdex serve` both come here with the request's fields, so both apply the same
rules (`api_rules`) in the same order and answer the same pages.

A page is found in two steps: the keys of its rows first (the id and the order columns only, at
most page_size + 1 rows after the token's position), then the rows themselves, by id and within
the page's names. Rendering (and reading layers) thus costs the rows shown, not every row that
matches. `Source` runs both steps as SQL over `images`; the server gives its own, which answers
them from memory. Compaction keeps each file in the default order, so that in a compacted store
both steps read a row group or two of each file (statistics on name), not the whole table.

A page token is URL-safe base64 (unpadded) of compact JSON `{"q": QUERY, "k": KEY}`:

- QUERY: six characters of a hash of what the token is valid for: the scope after the precedence
  rules, the filter as parsed and the order. A token of another query is refused.
- KEY: the last row's key, one entry per order field and then its id. The id alone places a row
  (ids are unique), so entries that never change for an id (name, digest, created_at) are null and
  read back by id at the next call; last_modified, which a later index run may change, travels by
  value, so that the list goes on from where the page ended even when that row moved since. A
  token may carry any entry by value. Tokens stay within the API's 100 characters.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import re
from dataclasses import dataclass

from indexer.errors import QueryError

from . import api_rules
from .api_rules import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from .render import SELECT, list_response, to_response

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "Page",
    "Plan",
    "Query",
    "Source",
    "list_images",
    "page",
    "parse_filter",
    "plan",
]

_INT64 = range(-(2**63), 2**63)
# The created time in nanoseconds since the epoch, exact. created_at holds microseconds, floored
# (Delta and Spark keep no finer time), so the nanoseconds within the microsecond come from
# `created`, the canonical text: only its nine-digit form (30 characters) has any. epoch_ns() of
# created_at was not this: it dropped those nanoseconds, and it converts to TIMESTAMP_NS, which
# fails for a time floored below that type's range (1677-09-21T00:12:43.145224192Z up to the next
# microsecond), failing every such list. A HUGEINT, because the earliest time is -2**63 ns: an
# image without a time in that range (none, or year 1 as go-containerregistry writes it) sorts
# below every other, at -2**63 - 1.
_CREATED_NO_TIME = -(2**63) - 1
_CREATED_NS = (
    "coalesce(epoch_us(created_at)::HUGEINT * 1000 + CASE WHEN length(created) = 30"
    f" THEN coalesce(TRY_CAST(substr(created, 27, 3) AS INTEGER), 0) ELSE 0 END, {_CREATED_NO_TIME})"
)
# Sort keys never NULL, so that keyset comparisons are total.
_ORDER_FIELDS = {
    "name": "name",
    "digest": "coalesce(digest, '')",
    "created_at": _CREATED_NS,
    "last_modified": "epoch_us(indexed_at)",
}
# What each sort key holds (a range: an integer within it), so that a hand-edited token fails here
# and not inside DuckDB.
_KEY_TYPES = {
    "name": str,
    "digest": str,
    "created_at": range(_CREATED_NO_TIME, 2**63),
    "last_modified": _INT64,
}
# The one key a later index run may change for the same id (the time its record was written).
BY_VALUE = frozenset({"last_modified"})
_DEFAULT_ORDER = "name,digest"
_TOKEN_LIMIT = 100
# Up to this many ids go into a query as constants, beyond as one list parameter.
_LITERAL_IDS = 1000

_STRING = r"""("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')"""
_TERM = re.compile(
    rf"""\s*(?:(?P<field>name)\s*(?:(?P<op>!=|=)\s*{_STRING}|\s+(?P<in>(?:NOT\s+)?IN)\s*\((?P<list>[^)]*)\))"""
    r"""|(?P<and>AND))\s*""",
    re.IGNORECASE,
)
# One or more quoted names, each after a comma but the first: no empty or trailing elements.
_LIST = re.compile(rf"""\s*{_STRING}\s*(?:,\s*{_STRING}\s*)*""")


@dataclass(frozen=True)
class Query:
    """The fields of a ListImagesRequest, as the CLI and the server receive them (not yet checked)."""

    registry_id: str = ""
    repository_name: str = ""
    filter: str = ""
    order_by: str = ""
    page_size: int = 0  # 0: the default page
    page_token: str = ""
    folder_id: str = ""


def _quoted(text: str) -> str:
    """A filter as messages quote it, cut short: it may be any length."""
    return api_rules.shown(text)


def _unquote(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text[1:-1])


def parse_filter(text: str, check_values: bool = True) -> tuple[str, list]:
    """`name="x"`, `name!="x"`, `name IN ("a", "b")`, `name NOT IN (...)`, joined by AND -> (SQL, params).

    Values must be repository names, as the API reference requires; `check_values=False` takes
    any quoted text (for names that are not repository names, such as registries').
    """
    conditions: list[str] = []
    params: list = []
    position = 0
    expect_term = True
    text = text.strip()

    def value(quoted: str) -> str:
        name = _unquote(quoted)
        problem = api_rules.filter_value_problem(name) if check_values else ""
        if problem:
            raise QueryError(f"invalid filter {_quoted(text)}: {problem}")
        return name

    while position < len(text):
        m = _TERM.match(text, position)
        if not m or m.end() == position:
            raise QueryError(
                f"invalid filter {_quoted(text)} at position {position}: "
                'expected name="...", name!="...", name IN (...) or name NOT IN (...)'
            )
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
            if not _LIST.fullmatch(m.group("list")):
                raise QueryError(f"invalid filter {_quoted(text)}: IN takes a list of quoted names")
            negated = m.group("in").upper() != "IN"
            conditions.append(f"name {'NOT IN' if negated else 'IN'} (SELECT unnest(?::VARCHAR[]))")
            params.append([value(i) for i in re.findall(_STRING, m.group("list"))])
        else:
            conditions.append("name = ?" if m.group("op") == "=" else "name <> ?")
            params.append(value(m.group(3)))
    if expect_term and conditions:
        raise QueryError(f"invalid filter {_quoted(text)}: ends with AND")
    return " AND ".join(conditions), params


def parse_order(text: str) -> list[tuple[str, bool]]:
    """`name, created_at desc` -> [(field, descending)]; the id breaks the remaining ties.

    A field named again is dropped: the first mention already ordered every tie it could break.
    Empty items are skipped, so an order of nothing but them (`,`, a blank) is the default one,
    as an empty order_by is.
    """
    if not text or not text.replace(",", "").strip():
        text = _DEFAULT_ORDER
    order: list[tuple[str, bool]] = []
    for part in text.split(","):
        words = part.split()
        if not words:
            continue
        if (
            words[0] not in _ORDER_FIELDS
            or len(words) > 2
            or (len(words) == 2 and words[1].lower() not in ("asc", "desc"))
        ):
            raise QueryError(
                f"invalid order {api_rules.shown(part.strip())}: "
                f"fields are {', '.join(_ORDER_FIELDS)}, each with an optional desc"
            )
        if all(field != words[0] for field, _ in order):
            order.append((words[0], len(words) == 2 and words[1].lower() == "desc"))
    return order


@dataclass(frozen=True)
class Plan:
    """A checked query: what to select, in which order, from where on, and what the token must say."""

    conditions: tuple[str, ...]
    params: tuple
    order: tuple[tuple[str, bool], ...]  # (field, descending), the id not included
    page_size: int
    fingerprint: str
    token_keys: tuple | None  # the previous page's last key: values (None: read back by id), then the id

    @property
    def keys(self) -> list[tuple[str, bool]]:
        """(SQL expression, descending) of every sort key, the id last."""
        return [(_ORDER_FIELDS[field], desc) for field, desc in self.order] + [("id", False)]

    @property
    def key_sql(self) -> str:
        return ", ".join(expr for expr, _ in self.keys)

    @property
    def order_sql(self) -> str:
        return ", ".join(f"{expr} {'DESC' if desc else 'ASC'}" for expr, desc in self.keys)

    def after(self, key: tuple) -> tuple[str, list]:
        """The keyset condition for the rows after `key` (one value per sort key), with its params."""
        return self._keyset(key, later=True)

    def until(self, key: tuple) -> tuple[str, list]:
        """The keyset condition for the rows up to `key`, itself included, with its params."""
        return self._keyset(key, later=False)

    def _keyset(self, key: tuple, later: bool) -> tuple[str, list]:
        # Led by the bound on the first sort key that the alternatives imply (`name >= ?`): DuckDB
        # does not derive it from an OR, and as a plain conjunct it reaches the Parquet scan, where
        # the row groups' statistics skip everything outside the page.
        keys = self.keys
        first, first_desc = keys[0]
        conditions, params = [f"{first} {'>=' if later != first_desc else '<='} ?"], [key[0]]
        alternatives = []
        for i, (expr, desc) in enumerate(keys):
            op = ">" if later != desc else "<"
            if not later and i == len(keys) - 1:
                op += "="  # the id is unique: equal on every key is the row `key` itself
            equal = [f"{keys[j][0]} = ?" for j in range(i)]
            alternatives.append("(" + " AND ".join(equal + [f"{expr} {op} ?"]) + ")")
            params += list(key[:i]) + [key[i]]
        conditions.append("(" + " OR ".join(alternatives) + ")")
        return "(" + " AND ".join(conditions) + ")", params

    def sort(self, rows: list[tuple]) -> list[tuple]:
        """Key rows (one value per sort key, the id last) in the plan's order, as DuckDB orders them:
        strings by code point (their UTF-8 bytes), which is how Python compares them too."""

        def compare(a: tuple, b: tuple) -> int:
            for (_, desc), x, y in zip(self.keys, a, b, strict=True):
                if x != y:
                    return (1 if x < y else -1) if desc else (-1 if x < y else 1)
            return 0

        return sorted(rows, key=functools.cmp_to_key(compare))

    def where(self, after: tuple | None) -> tuple[str, list]:
        conditions, params = list(self.conditions), list(self.params)
        if after is not None:
            condition, values = self.after(after)
            conditions.append(condition)
            params += values
        return " AND ".join(conditions) or "TRUE", params


def _scope_conditions(scope: api_rules.ImageScope) -> tuple[list[str], list]:
    conditions: list[str] = []
    params: list = []
    registry = scope.registry_id
    if registry:
        # A YCR registry id is the first component of the name; other registries go by host.
        # `name = ? OR starts_with(...)` is that first component, and far cheaper than splitting
        # every name; a '/' in the id can never be a first component.
        if "/" in registry:
            conditions.append("registry = ?")
            params.append(registry)
        else:
            conditions.append("(registry = ? OR name = ? OR starts_with(name, ?))")
            params += [registry, registry, registry + "/"]
    if scope.repository_name:
        conditions.append("name = ?")
        params.append(scope.repository_name)
    return conditions, params


def _fingerprint(scope: api_rules.ImageScope, conditions: list[str], params: list, order) -> str:
    text = json.dumps([scope.registry_id, scope.repository_name, conditions, params, order], separators=(",", ":"))
    return base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()[:6]).decode()[:6]


def plan(query: Query) -> Plan:
    """Every rule of the API applied to `query`, in the order of its fields; QueryError at the first broken one."""
    api_rules.check(api_rules.LIST_IMAGES, query.__dict__)
    size = api_rules.page_size(query.page_size)
    scope = api_rules.image_scope(query.registry_id, query.repository_name, query.folder_id)
    # The index records no folders: a folder_id alone does not narrow the list.
    conditions, params = _scope_conditions(scope)
    if query.filter:
        condition, values = parse_filter(query.filter)
        if condition:
            conditions.append(condition)
            params += values
    order = tuple(parse_order(query.order_by))
    fingerprint = _fingerprint(scope, conditions, params, order)
    token = _decode(query.page_token, fingerprint, order) if query.page_token else None
    return Plan(tuple(conditions), tuple(params), order, size, fingerprint, token)


# --- page tokens ---------------------------------------------------------------------------------


def _encode(payload: dict) -> str:
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _valid_text(value) -> bool:
    # JSON can spell a lone surrogate ("\ud800"): a str that DuckDB, like UTF-8, cannot take.
    if type(value) is not str:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _valid_key(value, kind) -> bool:
    if value is None:
        return True
    if isinstance(kind, range):
        return type(value) is int and value in kind
    return _valid_text(value)


def _decode(token: str, fingerprint: str, order) -> tuple:
    try:
        raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError, binascii.Error):
        payload = None
    if not isinstance(payload, dict) or not isinstance(payload.get("q"), str) or not isinstance(payload.get("k"), list):
        raise QueryError("invalid page token")
    if payload["q"] != fingerprint:
        raise QueryError("invalid page token: it belongs to another query (filter, order or scope)")
    keys = payload["k"]
    kinds = [_KEY_TYPES[field] for field, _ in order]
    if len(keys) == len(kinds) + 1 and keys[-1] is None and isinstance(payload.get("h"), str):
        if not _ID_HASH.fullmatch(payload["h"]) or any(value is not None for value in keys[:-1]):
            raise QueryError("invalid page token")
        return (*keys[:-1], IdHash(payload["h"]))
    if len(keys) != len(kinds) + 1 or not _valid_text(keys[-1]):
        raise QueryError("invalid page token")
    if not all(_valid_key(value, kind) for value, kind in zip(keys[:-1], kinds, strict=True)):
        raise QueryError("invalid page token")
    return tuple(keys)


class IdHash(str):
    """A token's stand-in for an id too long to fit it: the first 16 hex digits of its sha256."""


_ID_HASH = re.compile(r"[0-9a-f]{16}", re.ASCII)


def _id_hash(image_id: str) -> str:
    return hashlib.sha256(image_id.encode()).hexdigest()[:16]


def page_token(plan: Plan, key: tuple) -> str:
    """The token for the rows after `key` (the last row's sort keys, the id last).

    Only the values of `BY_VALUE` fields are read from `key`; the others may be None.
    """
    values = [value if field in BY_VALUE else None for (field, _), value in zip(plan.order, key[:-1], strict=True)]
    token = _encode({"q": plan.fingerprint, "k": [*values, key[-1]]})
    if len(token) > _TOKEN_LIMIT:
        # Not with 20-character ids: the longest order (all four fields) then fits in 100 exactly.
        # Longer ids would have every value read back, rather than a token the API refuses.
        token = _encode({"q": plan.fingerprint, "k": [None] * len(plan.order) + [key[-1]]})
    if len(token) > _TOKEN_LIMIT:
        # An imported id is kept as written, of any length: one of ~30 characters or more does not
        # fit even alone, and a token past the limit is one the API (and imgdex) refuses. The id
        # is found again by its hash.
        token = _encode({"q": plan.fingerprint, "k": [None] * (len(plan.order) + 1), "h": _id_hash(key[-1])})
    return token


# --- the two steps -------------------------------------------------------------------------------


def _among(ids: list[str]) -> tuple[str, list]:
    """`id IN (...)` for `ids`, with its params. Constants reach the Parquet scan, where min/max
    and Bloom filters skip row groups; a long list goes as one parameter instead."""
    if len(ids) <= _LITERAL_IDS:
        return f"id IN ({', '.join('?' * len(ids))})", list(ids)
    return "id IN (SELECT unnest(?::VARCHAR[]))", [list(ids)]


class Source:
    """A page's keys and rows, as SQL over the `images` table or view of `con`.

    Over a compacted Delta table with files appended since (a Reader's `images_parts`), both steps
    query the parts of the view apart (`deltalog.Compacted`): the rows of the compacted files that
    no appended file touches, whose row groups DuckDB prunes by their statistics on name (compaction
    keeps each file in the default list order), and the touched images that may belong on the page,
    resolved by id. Through the view as one, every touched image would be resolved, which reads the
    compacted rows of each of them: a scan of every compacted file.
    """

    def __init__(self, con):
        self.con = con
        parts = getattr(con, "images_parts", None)
        self._parts = parts if parts is not None and parts.recent is not None else None
        # The name of each image of the last page_keys, when the order has it (see `rows`).
        self._names: dict[str, str] = {}

    def keys_of(self, plan: Plan, image_id: str) -> tuple | None:
        """Every sort key of one image, the id last; None when it is not indexed."""
        if self._parts is None:
            return self.con.execute(f"SELECT {plan.key_sql} FROM images WHERE id = ?", [image_id]).fetchone()
        found = self.con.execute(
            f"SELECT {plan.key_sql} FROM ({self._parts.untouched}) WHERE id = ?", [image_id]
        ).fetchone()
        if found is None:
            found = self.con.execute(
                f"SELECT {plan.key_sql} FROM ({self._parts.resolved('id = ?')})", [image_id]
            ).fetchone()
        return found

    def resolve(self, plan: Plan, token_keys: tuple) -> tuple:
        """A token's key with the values it leaves to be read back filled in."""
        if isinstance(token_keys[-1], IdHash):
            token_keys = (*token_keys[:-1], self._id_of_hash(token_keys[-1]))
        if None not in token_keys:
            return token_keys
        current = self.keys_of(plan, token_keys[-1])
        if current is None:
            raise QueryError(
                f"page token is stale: image {api_rules.shown(token_keys[-1])} is no longer indexed;"
                " start the list again"
            )
        return tuple(current[i] if value is None else value for i, value in enumerate(token_keys))

    def _id_of_hash(self, wanted: IdHash) -> str:
        """The indexed id whose hash a token carries (a scan of the ids: only ids too long for a
        token are carried so, which a short id of non-ASCII characters is too, escaped in JSON)."""
        found = self.con.execute(
            "SELECT DISTINCT id FROM images WHERE starts_with(sha256(id), ?) LIMIT 2", [wanted]
        ).fetchall()
        if len(found) != 1:
            # None: the image is gone. Two: 64 bits of sha256 alike, which no real ids are.
            raise QueryError(
                "page token is stale: the image it continues after is no longer indexed; start the list again"
            )
        return found[0][0]

    def _top(self, relation: str, plan: Plan, where: str, params: list, limit: int) -> list[tuple]:
        return self.con.execute(
            f"SELECT {plan.key_sql} FROM {relation} AS images WHERE {where} ORDER BY {plan.order_sql} LIMIT ?",
            params + [limit],
        ).fetchall()

    def page_keys(self, plan: Plan, limit: int) -> list[tuple]:
        """The sort keys (id last) of the first `limit` images after the plan's token, in order.

        A value the token would not carry (see `page_token`) may be None.
        """
        after = self.resolve(plan, plan.token_keys) if plan.token_keys is not None else None
        where, params = plan.where(after)
        keys = self._page_keys_apart(plan, where, params, limit) if self._parts is not None else None
        if keys is None:
            keys = self._top("images", plan, where, params, limit)
        fields = [field for field, _ in plan.order]
        at = fields.index("name") if "name" in fields else None
        self._names = {key[-1]: key[at] for key in keys} if at is not None else {}
        return keys

    def _page_keys_apart(self, plan: Plan, where: str, params: list, limit: int) -> list[tuple] | None:
        """`page_keys` from the parts of a compacted table; None when the view must answer."""
        parts = self._parts
        first = self._top(f"({parts.untouched})", plan, where, params, limit)
        # A touched image belongs on the page only if its current row, one of its row versions,
        # sorts within it: no later than the last untouched row found, when there are enough.
        bound, bound_params = plan.until(first[-1]) if len(first) == limit else ("TRUE", [])
        versions = (
            f"(SELECT v.* FROM ({parts.rows}) AS v SEMI JOIN ({parts.touched}) AS t USING (id) "
            f"UNION ALL BY NAME SELECT * FROM ({parts.recent}))"
        )
        candidates = [
            row[0]
            for row in self.con.execute(
                f"SELECT DISTINCT id FROM {versions} AS images WHERE {where} AND {bound}", params + bound_params
            ).fetchall()
        ]
        if not candidates:
            return first
        chosen, chosen_params = _among(candidates)
        resolved = self._top(f"({parts.resolved(chosen)})", plan, where, chosen_params + params, limit)
        merged = first + resolved
        if any(value is None for row in merged for value in row):
            return None  # keys are never NULL; should one be, DuckDB's order is the one to keep
        return plan.sort(merged)[:limit]

    def rows(self, ids: list[str]) -> list[tuple]:
        """The rows `to_response` renders, for `ids`, in that order.

        When the last `page_keys` gave these ids and their names, the names' range goes beside the
        ids: compaction keeps each file's rows in name order (indexer/store/delta.py), so the row
        groups' statistics on name leave the one or two of each file that can hold the page, where
        the ids alone, spread by hashing, match a row group of nearly every file.
        """
        if not ids:
            return []
        where, params = _among(ids)
        names = [self._names.get(image_id) for image_id in ids]
        if None not in names:
            where += " AND name BETWEEN ? AND ?"
            params += [min(names), max(names)]
        relation = "images" if self._parts is None else f"({self._parts.untouched})"
        found = self.con.execute(f"SELECT {SELECT} FROM {relation} AS images WHERE {where}", params).fetchall()
        by_id = {row[0]: row for row in found}
        missing = [image_id for image_id in ids if image_id not in by_id]
        if missing and self._parts is not None:
            # Images an appended file touches, resolved by id alone: their older rows may hold
            # another name.
            chosen, chosen_params = _among(missing)
            found = self.con.execute(f"SELECT {SELECT} FROM ({self._parts.resolved(chosen)})", chosen_params)
            by_id.update((row[0], row) for row in found.fetchall())
        return [by_id[image_id] for image_id in ids]


@dataclass(frozen=True)
class Page:
    rows: list[tuple]  # as `render.SELECT` selects them, in list order
    next_page_token: str


def page(con, query: Query, source: Source | None = None) -> Page:
    """The rows and the next page token that answer `query`."""
    checked = plan(query)
    source = source if source is not None else Source(con)
    keys = source.page_keys(checked, checked.page_size + 1)
    shown = keys[: checked.page_size]
    rows = source.rows([key[-1] for key in shown])
    token = page_token(checked, tuple(shown[-1])) if len(keys) > checked.page_size else ""
    return Page(rows, token)


def list_images(con, query: Query, source: Source | None = None) -> dict:
    """The ListImagesResponse for `query` as the JSON dict MessageToJson prints."""
    found = page(con, query, source)
    return list_response([to_response(row) for row in found.rows], found.next_page_token)
