"""Repositories and registries, derived from the indexed images.

The index stores images only; the API also answers for the repositories and registries holding
them, as far as the images tell:

- A **repository** is a distinct non-empty image `name`, exactly as `Image.name` shows it (so the
  same name indexed from two registry hosts is one repository, as `ListImages(repository_name=)`
  treats it). Its id is `"crp" + base32hex_lower(sha256(name))[:17]`, the blob-id formula over
  the name: stable across runs and machines, and never equal to an image or blob id, whose
  hashed texts contain `@` or `:`, which a name cannot.
- A **registry** exists only for YCR-style names `crpXXXXXXXXXXXXXXXXX/PATH`, whose first
  component is a registry id; that component is the registry's id. Its status is ACTIVE (it
  holds images). Its folder, name, creation time and labels are not in the index and are
  omitted, so a `name` filter matches registries as if their name were empty.

Lists page by keyset on the one sort key; a page token is the last id of the page and a short
fingerprint of the query it belongs to, 27 characters.
"""

from __future__ import annotations

import base64
import hashlib
import json

from indexer.errors import NotFound, QueryError
from indexer.references import ID_RE

from ..api_rules import cut, shown
from ..listing import parse_filter

_YCR_NAME = f"regexp_full_match(name, '^{ID_RE.pattern}/.+')"


def _short_hash(text: str, length: int) -> str:
    return base64.b32hexencode(hashlib.sha256(text.encode()).digest()).decode().lower()[:length]


def repository_id(name: str) -> str:
    return "crp" + _short_hash(name, 17)


def _repositories_by_id(snapshot) -> dict[str, str]:
    names = snapshot.cursor().execute("SELECT DISTINCT name FROM images WHERE name <> ''").fetchall()
    return {repository_id(name): name for (name,) in names}


def repositories_by_id(snapshot) -> dict[str, str]:
    return snapshot.derived("repositories_by_id", _repositories_by_id)


def repository(name: str) -> dict:
    """As MessageToJson prints a Repository: fields in proto order (name, id)."""
    return {"name": name, "id": repository_id(name)}


def registry(registry_id: str) -> dict:
    return {"id": registry_id, "status": "ACTIVE"}


def get_repository(snapshot, repo_id: str) -> dict:
    name = repositories_by_id(snapshot).get(repo_id)
    if name is None:
        raise NotFound(f"repository {cut(repo_id)} not found")
    return repository(name)


def get_repository_by_name(snapshot, name: str) -> dict:
    found = snapshot.cursor().execute("SELECT 1 FROM images WHERE name = ? LIMIT 1", [name]).fetchone()
    if found is None:
        raise NotFound(f"repository {cut(name)} not found")
    return repository(name)


def get_registry(snapshot, registry_id: str) -> dict:
    found = (
        snapshot.cursor()
        .execute(f"SELECT 1 FROM images WHERE {_YCR_NAME} AND split_part(name, '/', 1) = ? LIMIT 1", [registry_id])
        .fetchone()
    )
    if found is None:
        raise NotFound(f"registry {cut(registry_id)} not found")
    return registry(registry_id)


def _order(text: str) -> bool:
    """True for descending: repositories sort by name, the one key the index gives them."""
    words = text.split()
    if not words or words == ["name"]:
        return False
    if len(words) == 2 and words[0] == "name" and words[1].lower() in ("asc", "desc"):
        return words[1].lower() == "desc"
    raise QueryError(f"invalid order {shown(text.strip())}: repositories sort by name, with an optional desc")


def _fingerprint(*parts) -> str:
    return _short_hash(json.dumps(parts), 6)


def _token_after(token: str, fingerprint: str) -> str:
    last, dot, mark = token.rpartition(".")
    if not dot or mark != fingerprint or not last:
        raise QueryError("page token does not belong to this query")
    return last


def _page(cursor, select: str, where: list[str], params: list, key: str, descending: bool, size: int, after):
    if after is not None:
        where = where + [f"{key} {'<' if descending else '>'} ?"]
        params = params + [after]
    sql = f"{select} WHERE {' AND '.join(where) or 'TRUE'} ORDER BY {key} {'DESC' if descending else 'ASC'} LIMIT ?"
    rows = cursor.execute(sql, params + [size + 1]).fetchall()
    return [r[0] for r in rows[:size]], len(rows) > size


def _filtered(text: str) -> tuple[list[str], list]:
    if not text:
        return [], []
    # The grammar of ListImages filters, over names that need not be repository names.
    condition, values = parse_filter(text, check_values=False)
    return ([condition] if condition else []), values


def list_repositories(snapshot, registry_id: str, filter_: str, order_by: str, page_size: int, page_token: str) -> dict:
    descending = _order(order_by)
    fingerprint = _fingerprint("repositories", registry_id, filter_, descending)
    where = ["name <> ''"]
    params: list = []
    if registry_id:
        # As ListImages: the registry id is the first name component, or the registry host.
        where.append("(registry = ? OR split_part(name, '/', 1) = ?)")
        params += [registry_id, registry_id]
    condition, values = _filtered(filter_)
    after = None
    if page_token:
        after = repositories_by_id(snapshot).get(_token_after(page_token, fingerprint))
        if after is None:
            raise QueryError("page token names a repository that is no longer indexed; start the list again")
    names, more = _page(
        snapshot.cursor(),
        "SELECT DISTINCT name FROM images",
        where + condition,
        params + values,
        "name",
        descending,
        page_size,
        after,
    )
    out: dict = {}
    if names:
        out["repositories"] = [repository(n) for n in names]
    if more:
        out["nextPageToken"] = f"{repository_id(names[-1])}.{fingerprint}"
    return out


def list_registries(snapshot, filter_: str, page_size: int, page_token: str) -> dict:
    fingerprint = _fingerprint("registries", filter_)
    condition, values = _filtered(filter_)
    after = _token_after(page_token, fingerprint) if page_token else None
    # The index knows no registry names: a name filter sees an empty one.
    select = (
        f"SELECT id FROM (SELECT DISTINCT split_part(name, '/', 1) AS id, '' AS name FROM images WHERE {_YCR_NAME})"
    )
    ids, more = _page(snapshot.cursor(), select, condition, values, "id", False, page_size, after)
    out: dict = {}
    if ids:
        out["registries"] = [registry(i) for i in ids]
    if more:
        out["nextPageToken"] = f"{ids[-1]}.{fingerprint}"
    return out
