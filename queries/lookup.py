"""Get by id, by reference or by Docker image ID prefix; and batch get by ids."""

from __future__ import annotations

import json
import re
from typing import Iterable, Iterator

from indexer.errors import Ambiguous, ImgdexError, NotFound, QueryError, printable

# Ids only at import time: the reference grammar is compiled only when a reference is looked up.
from indexer.identifiers import DEFAULT_PLATFORM, ID_RE

from .render import SELECT

_HEX_PREFIX = re.compile(r"^(?:sha256:)?([0-9a-f]{1,64})$")
_FULL_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_BATCH = 20000
_SHOWN = 120


def shown(query: str) -> str:
    """A query as messages quote it: cut short, and on one line whatever it holds."""
    if not query.strip():  # nothing, or only blanks, which would vanish from the message
        return repr(query[:_SHOWN])
    text = query if len(query) <= _SHOWN else query[:_SHOWN] + "..."
    # printable escapes a byte that was not UTF-8 (kept as a lone surrogate) as the byte, `\xff`
    return text if text.isprintable() else printable(text)


# A part of OS/ARCH[/VARIANT] as the OCI image index spells them (linux, amd64, arm64, v8, ppc64le).
_PLATFORM_PART = re.compile(r"[A-Za-z0-9._-]{1,64}")


def parse_platform(text: str) -> tuple[str, str, str]:
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(_PLATFORM_PART.fullmatch(part) for part in parts):
        raise ImgdexError(f"invalid platform {shown(text)}: expected OS/ARCH[/VARIANT]")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else ""


def by_id(con, image_id: str):
    return con.execute(f"SELECT {SELECT} FROM images WHERE id = ?", [image_id]).fetchone()


# Candidates an ambiguous query names; a prefix such as `0` matches a sixteenth of the store.
_LISTED = 10


class _Rows(list):
    """The first rows of a query, and how many it matched in all."""

    total = 0


def _candidates(con, where: str, params: list) -> _Rows:
    fetched = con.execute(
        f"SELECT id, registry, name, kind, digest, config_digest, count(*) OVER () FROM images WHERE {where} "
        f"ORDER BY registry, name, id LIMIT {_LISTED + 1}",
        params,
    ).fetchall()
    rows = _Rows(row[:6] for row in fetched)
    rows.total = fetched[0][6] if fetched else 0
    return rows


def _describe(row) -> str:
    image_id, registry, name, _, digest, config_digest = row
    place = f"{registry}/{name}" if registry else name
    return f"{image_id} ({place or '<unnamed>'}@{digest or config_digest})"


def _by_reference(con, ref, explicit_host: bool) -> list[tuple]:
    if ref.digest:
        condition, value = "(digest = ? OR config_digest = ?)", [ref.digest, ref.digest]
    else:
        condition, value = (
            "id IN (SELECT image_id FROM tags WHERE registry = t.registry AND name = t.name AND tag = ?)",
            [ref.tag or "latest"],
        )
    condition = condition.replace("t.registry", "images.registry").replace("t.name", "images.name")
    rows = _candidates(con, f"registry = ? AND name = ? AND {condition}", [ref.registry, ref.name, *value])
    if rows or explicit_host:
        return rows
    # Images indexed without a registry, or from another registry, answer to their bare name.
    return _candidates(con, f"name IN (SELECT unnest(?::VARCHAR[])) AND {condition}", [_reference_names(ref), *value])


# As deep as indexing follows nested indexes (MAX_INDEX_DEPTH in indexer/sources/parse.py): no
# child below that was stored.
_MAX_INDEX_DEPTH = 16


def json_object(raw) -> dict:
    """The JSON object stored manifest bytes hold; {} when there are none, or they are not JSON, nest
    too deep to parse, or hold something other than an object: the caller then answers without
    what it would have read there, rather than failing the whole lookup."""
    if not raw:
        return {}
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _listed(manifest_raw) -> dict[str, tuple[int, tuple[str, str, str] | None]]:
    """The manifests an index lists, by digest: (position, platform or None). The stored bytes are
    the ones verified against the index's digest when it was indexed."""
    manifests = json_object(manifest_raw).get("manifests")
    listed: dict[str, tuple[int, tuple[str, str, str] | None]] = {}
    for position, entry in enumerate(manifests if isinstance(manifests, list) else ()):
        digest = entry.get("digest") if isinstance(entry, dict) else None
        if not isinstance(digest, str) or digest in listed:
            continue
        raw = entry.get("platform")
        parts = [raw.get(key) for key in ("os", "architecture", "variant")] if isinstance(raw, dict) else []
        platform = tuple(part if isinstance(part, str) else "" for part in parts)
        listed[digest] = (position, platform if any(platform[:2]) else None)
    return listed


def _members(con, registry: str, name: str, digest: str, manifest_raw, depth: int = 0, seen=None):
    """(id, digest, platform, place) of each stored image manifest below an index, in the order
    the index lists them. Children are looked up by the digests the index lists: a child's
    `parent_digest` names one of the indexes that share it only. Those that name this index are
    taken too, for indexes stored without their bytes (an engine's)."""
    seen = set() if seen is None else seen
    seen.add(digest)
    listed = _listed(manifest_raw)
    rows = con.execute(
        "SELECT id, kind, digest, CASE WHEN kind = 'index' THEN manifest_raw END, "
        "platform_os, platform_architecture, platform_variant FROM images "
        "WHERE registry = ? AND name = ? AND kind IN ('image', 'index') "
        "AND (digest IN (SELECT unnest(?::VARCHAR[])) OR (? <> '' AND parent_digest = ?))",
        [registry, name, list(listed), digest, digest],
    ).fetchall()
    for child_id, kind, child_digest, raw, *stored in sorted(
        rows, key=lambda r: (listed.get(r[2], (len(listed), None))[0], r[0])
    ):
        position, platform = listed.get(child_digest, (len(listed), None))
        if kind == "image":
            # The index's word on the platform is what a client picks by; the config's when it has none.
            yield child_id, child_digest, platform or tuple(part or "" for part in stored), (position,)
        elif depth < _MAX_INDEX_DEPTH and child_digest not in seen:
            for member in _members(con, registry, name, child_digest, raw, depth + 1, seen):
                yield (*member[:3], (position, *member[3]))


# containerd's platforms.Normalize, which docker and crane follow: architectures by their other
# names, with the variant each name implies (None: the variant given is kept).
_ARCHES = {
    "i386": ("386", ""),
    "x86_64": ("amd64", None),
    "x86-64": ("amd64", None),
    "aarch64": ("arm64", None),
    "armhf": ("arm", "v7"),
    "armel": ("arm", "v6"),
}
# Variants that name no other code than none at all (v1 is every amd64, v8 every arm64).
_NO_VARIANT = {"amd64": ("v1",), "arm64": ("8", "v8", "v8.0")}
# What an arm variant runs, best first: a v7 machine runs v6 and v5 code, as containerd matches.
_ARM_RUNS = {"v8": ("v8", "v7", "v6", "v5"), "v7": ("v7", "v6", "v5"), "v6": ("v6", "v5"), "v5": ("v5",)}
# An amd64 variant that names a microarchitecture level (x86-64-v2 and on), as containerd reads it.
_AMD64_LEVEL = re.compile(r"v[1-9][0-9]{0,8}", re.ASCII)


def normalise_platform(os_name: str, arch: str, variant: str) -> tuple[str, str, str]:
    os_name, arch, variant = os_name.lower(), arch.lower(), variant.lower()
    if os_name == "macos":
        os_name = "darwin"
    arch, implied = _ARCHES.get(arch, (arch, None))
    variant = variant if implied is None else implied
    if variant in _NO_VARIANT.get(arch, ()):
        variant = ""
    if arch == "arm" and variant in ("", "5", "6", "7", "8"):
        variant = "v" + (variant or "7")  # an arm without a variant is a v7, as Debian's armhf
    return os_name, arch, variant


def _rank(want: tuple[str, str, str], have: tuple[str, str, str]):
    """How well a child's platform serves the one asked for, lower is better; None if it does not.
    Both are normalised: `linux/arm64/v8` asks for what an index lists as `linux/arm64`."""
    want, have = normalise_platform(*want), normalise_platform(*have)
    if want[:2] != have[:2]:
        return None
    if want[1] == "arm" and want[2] in _ARM_RUNS:
        runs = _ARM_RUNS[want[2]]
        return runs.index(have[2]) if have[2] in runs else None
    if want[1] == "amd64" and _AMD64_LEVEL.fullmatch(want[2]):
        # An x86-64-vN machine runs the older levels' code, the nearest first; v1 is the plain one.
        level = int(want[2][1:])
        if not have[2]:
            return level - 1
        if _AMD64_LEVEL.fullmatch(have[2]) and int(have[2][1:]) <= level:
            return level - int(have[2][1:])
        return None
    if want[2]:
        return 0 if have[2] == want[2] else None
    # No variant asked for: any will do, the plain one first ("" sorts first).
    return have[2]


def pick_platform(con, row, platform: str):
    image_id, registry, name, kind, digest, _ = row
    if kind != "index":
        return image_id
    want = parse_platform(platform)
    (manifest_raw,) = con.execute("SELECT manifest_raw FROM images WHERE id = ?", [image_id]).fetchone()
    members = list(_members(con, registry, name, digest, manifest_raw))
    if not members:
        # No manifest below it is known (a YCR export lists a multi-platform image as the index
        # alone, as `yc container image get` answers it): the index is the answer, as by id.
        return image_id
    best = None
    for child_id, _digest, have, place in members:
        rank = _rank(want, have)
        if rank is not None and (best is None or (rank, place) < best[:2]):
            best = (rank, place, child_id)
    if best is None:
        raise NotFound(f"image {name}@{digest} has no manifest for platform {platform}")
    return best[2]


def index_members(con, digest: str) -> set[str]:
    """The digests of the image manifests below every stored index whose digest is `digest`."""
    found: set[str] = set()
    rows = con.execute(
        "SELECT registry, name, manifest_raw FROM images WHERE digest = ? AND kind = 'index'", [digest]
    ).fetchall()
    for registry, name, manifest_raw in rows:
        found.update(member[1] for member in _members(con, registry, name, digest, manifest_raw))
    return found


def _unmatched(query: str, is_reference: bool, is_hex: bool) -> ImgdexError:
    """What resolve() answers a query that no image matches."""
    if not is_reference and not is_hex and not ID_RE.fullmatch(query):
        return QueryError(f"invalid image {shown(query)}: not an image id, a reference or an image ID prefix")
    return NotFound(f"image {shown(query)} not found")


def _reference_names(ref) -> list[str]:
    names = [ref.name]
    if ref.name.startswith("library/"):
        names.append(ref.name[len("library/") :])
    return names


def resolve(con, query: str, platform: str = DEFAULT_PLATFORM):
    """The row for an id, a reference or a unique config digest prefix; NotFound or Ambiguous."""
    if ID_RE.fullmatch(query):
        row = by_id(con, query)
        if row is not None:
            return row
    from indexer.references import is_registry_host, parse_reference

    rows: list[tuple] = []
    try:
        ref = parse_reference(query)
    except ImgdexError:
        ref = None
    if ref is not None:
        explicit = "/" in query and is_registry_host(query.partition("/")[0])
        rows = _by_reference(con, ref, explicit)
    hex_match = _HEX_PREFIX.match(query)
    if not rows:
        if hex_match:
            if _FULL_DIGEST.match(query):
                rows = _candidates(con, "digest = ? OR config_digest = ?", [query, query])
            else:
                rows = _candidates(con, "starts_with(config_digest, ?)", ["sha256:" + hex_match.group(1)])
    if not rows:
        raise _unmatched(query, ref is not None, hex_match is not None)
    if len(rows) > 1:
        named = [_describe(r) for r in rows[:_LISTED]]
        if rows.total > len(named):
            named.append(f"and {rows.total - len(named):,} more")
        raise Ambiguous(shown(query), named)
    return by_id(con, pick_platform(con, rows[0], platform))


def _shapes(query: str):
    """How resolve() reads `query`: (whether it is a reference, whether it is an image ID prefix
    or digest, the repository names it may stand for, what a digest it matches starts with)."""
    from indexer.references import parse_reference

    try:
        names = _reference_names(parse_reference(query))
    except ImgdexError:
        names = []
    hex_match = _HEX_PREFIX.match(query)
    start = None
    if hex_match:
        start = query if _FULL_DIGEST.match(query) else "sha256:" + hex_match.group(1)
    return bool(names), start is not None, names, start


def _may_match(con, shapes: dict[str, tuple]) -> set[str]:
    """The queries some image may answer, found for a whole batch in at most two queries; resolve()
    costs several queries each, which for a batch of unknown ids is nearly all of its time. A query
    left out is one that resolve() would find no candidate for: its repository name (with or
    without `library/`) is in no image, and no digest or config digest starts with its prefix.
    `shapes` holds each query's `_shapes`."""
    by_name: dict[str, list[str]] = {}
    by_start: dict[str, list[str]] = {}
    for query, (_, _, names, start) in shapes.items():
        for name in names:
            by_name.setdefault(name, []).append(query)
        if start is not None:
            by_start.setdefault(start, []).append(query)
    possible: set[str] = set()
    if by_name:
        rows = con.execute(
            "SELECT DISTINCT name FROM images WHERE name IN (SELECT unnest(?::VARCHAR[]))", [list(by_name)]
        ).fetchall()
        for (name,) in rows:
            possible.update(by_name.get(name, ()))
    if by_start:
        # An equality join on each digest cut to the lengths asked for: a join on starts_with()
        # or on a range is planned as a nested loop over every pair (minutes for 10,000 prefixes
        # of a store of 1M images, against half a second).
        rows = con.execute(
            "WITH q AS (SELECT unnest(?::VARCHAR[]) AS start), n AS (SELECT DISTINCT length(start) AS n FROM q) "
            "SELECT DISTINCT q.start FROM q JOIN (SELECT left(d, n) AS head FROM "
            "(SELECT digest AS d FROM images UNION ALL SELECT config_digest FROM images), n) AS h ON h.head = q.start",
            [list(by_start)],
        ).fetchall()
        for (start,) in rows:
            possible.update(by_start.get(start, ()))
    return possible


def batch(con, queries: Iterable[str | ImgdexError], platform: str = DEFAULT_PLATFORM) -> Iterator[tuple[str, object]]:
    """(query, row or error) for each query, in order; None for an empty query. Ids are fetched in bulk.
    A query that is an error already (a line its reader refused) is answered with it.

    The error is NotFound, Ambiguous or QueryError (a malformed query); a store that cannot be
    read raises instead, since no later query could be answered either.
    """
    pending: list[str] = []

    def drain():
        ids = [q for q in pending if isinstance(q, str) and ID_RE.fullmatch(q)]
        found = {}
        if ids:
            for row in con.execute(f"SELECT {SELECT} FROM ({con.images_of_ids}) AS images", [ids]).fetchall():
                found[row[0]] = row
        # Each miss is read once, for the bulk match and for the answer of one that matches nothing
        shapes = {q: _shapes(q) for q in pending if isinstance(q, str) and q and q not in found}
        possible = _may_match(con, shapes) if shapes else set()
        for q in pending:
            if not isinstance(q, str):  # the reader's own verdict on a line (one too long to read)
                yield "", q
                continue
            row = found.get(q)
            if row is None and q:
                if q in possible:
                    try:
                        row = resolve(con, q, platform)
                    except (NotFound, Ambiguous, QueryError) as exc:
                        row = exc
                else:
                    row = _unmatched(q, *shapes[q][:2])
            yield q, row
        pending.clear()

    lines = iter(queries)
    while True:
        try:
            query = next(lines)
        except StopIteration:
            break
        except ImgdexError:  # the input cannot be read further: the lines read so far still count
            yield from drain()
            raise
        pending.append(query)
        if len(pending) >= _BATCH:
            yield from drain()
    yield from drain()
