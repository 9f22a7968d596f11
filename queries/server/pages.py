"""ListImages pages on a served snapshot: `listing`'s two steps, answered from memory.

`listing.Source` runs both steps as SQL; on 100,000 images the first (a top-N over the sort keys
of every row that matches) costs 2-5 ms, which eight concurrent clients on two cores turn into
tens of milliseconds. So the first request for an order sorts the snapshot once by it (~0.1 s for
100,000 images) and keeps the ids in that order with each id's position: a token then names a
position, and a page without conditions is a slice.

Conditions (the scope and the filter) only ever look at an image's registry and name. So they are
run, as the very SQL `listing` builds, on the snapshot's distinct (registry, name) pairs, a small
table, and a page takes the next positions whose pair matched: the merged position lists of the
matching pairs when they are few, else a walk along the order. The rows come from the snapshot's
Arrow columns, as gets do.

Whatever the fast path cannot take, `listing.Source` answers: a token whose last image is gone or
has moved (a later run rewrote it: its last_modified differs), a hand-made token carrying values,
a condition matching few images spread over many names, and orders beyond the first few of a
snapshot, so that memory stays bounded.
"""

from __future__ import annotations

import bisect
import heapq
import threading
import weakref
from array import array

from .. import listing
from .snapshots import settle

# Orders kept per snapshot; each costs ~15 MB on 100,000 images.
MAX_ORDERINGS = 8
# Matching (registry, name) pairs up to which a page merges their position lists.
MERGE_GROUPS = 64
# Below this share of the images matching, a walk along the order could be long: SQL answers.
WALK_SHARE = 0.05
# Conditions whose matching pairs are kept per snapshot.
MAX_ANSWERS = 256


class Groups:
    """The distinct (registry, name) pairs of one snapshot, numbered, in a table of the snapshot's database."""

    def __init__(self, snapshot):
        cursor = snapshot.cursor()
        cursor.execute(
            "CREATE TABLE name_groups AS SELECT (row_number() OVER (ORDER BY registry, name) - 1)::INTEGER AS g,"
            " registry, name FROM (SELECT DISTINCT registry, name FROM images)"
        )
        rows = cursor.execute("SELECT g, registry, name FROM name_groups").fetchall()
        self.number = {(registry, name): g for g, registry, name in rows}
        # The pages of one list ask the same question again and again: the answers are kept, a few.
        self._answers: dict[str, frozenset[int]] = {}

    def matching(self, cursor, plan: listing.Plan) -> frozenset[int]:
        where, params = plan.where(None)
        question = repr((where, params))
        found = self._answers.get(question)
        if found is None:
            rows = cursor.execute(f"SELECT g FROM name_groups WHERE {where}", params).fetchall()
            found = frozenset(g for (g,) in rows)
            if len(self._answers) >= MAX_ANSWERS:
                self._answers.clear()
            self._answers[question] = found
        return found


class Ordering:
    """One snapshot's ids in one order, each id's position, and the by-value keys at each position."""

    def __init__(self, snapshot, plan: listing.Plan, groups: Groups):
        fields = [field for field, _ in plan.order]
        self.by_value = [i for i, field in enumerate(fields) if field in listing.BY_VALUE]
        exprs = [plan.keys[i][0] for i in self.by_value]
        rows = (
            snapshot.cursor()
            .execute(f"SELECT {', '.join(['id', 'registry', 'name', *exprs])} FROM images ORDER BY {plan.order_sql}")
            .fetchall()
        )
        self.width = len(fields)
        self.ids = [row[0] for row in rows]
        self.values = [row[3:] for row in rows] if self.by_value else None
        self.position = {image_id: n for n, image_id in enumerate(self.ids)}
        number = groups.number
        self.group_at = array("i", [number[(row[1], row[2])] for row in rows])
        self.positions_of: dict[int, array] = {}
        for position, g in enumerate(self.group_at):
            found = self.positions_of.get(g)
            if found is None:
                found = self.positions_of[g] = array("i")
            found.append(position)

    def keys(self, positions) -> list[tuple]:
        """The sort keys at `positions` as `listing.page_token` reads them: by-value fields only, the id last."""
        ids = self.ids
        if self.values is None:
            blank = (None,) * self.width
            return [(*blank, ids[p]) for p in positions]
        out = []
        for p in positions:
            key = [None] * self.width
            for i, value in zip(self.by_value, self.values[p], strict=True):
                key[i] = value
            key.append(ids[p])
            out.append(tuple(key))
        return out

    def start(self, token_keys: tuple) -> int | None:
        """The position after the token's row, or None when only SQL can tell."""
        position = self.position.get(token_keys[-1])
        if position is None:
            return None
        for i, value in enumerate(token_keys[:-1]):
            if value is None:
                continue
            if i not in self.by_value:
                return None  # a value no token of ours carries: compared by SQL
            if self.values[position][self.by_value.index(i)] != value:
                return None  # the row moved since the token was made
        return position + 1

    def matching_positions(self, groups: frozenset[int], start: int, limit: int) -> list[int] | None:
        """The first `limit` positions from `start` on whose pair is in `groups`; None when SQL does better."""
        if len(groups) <= MERGE_GROUPS:
            tails = []
            for g in groups:
                positions = self.positions_of.get(g)
                if positions:
                    first = bisect.bisect_left(positions, start)
                    tails.append(map(positions.__getitem__, range(first, len(positions))))
            return [p for p, _ in zip(heapq.merge(*tails), range(limit), strict=False)]
        matching = sum(len(self.positions_of.get(g, ())) for g in groups)
        if matching < WALK_SHARE * len(self.ids):
            return None
        out: list[int] = []
        group_at = self.group_at
        for p in range(start, len(group_at)):
            if group_at[p] in groups:
                out.append(p)
                if len(out) == limit:
                    break
        return out


class Orderings:
    """The name groups and orderings of one snapshot, made on first use, at most MAX_ORDERINGS orders."""

    def __init__(self, snapshot):
        # Weakly: the snapshot keeps its Orderings (`Snapshot.derived`), and `settle` freezes what
        # was just made, so a cycle between the two would never be collected and each version
        # served a list would stay in memory after its swap (~10 MB a run on 6,000 images).
        self._snapshot = weakref.ref(snapshot)
        self._made: dict[tuple, Ordering] = {}
        self._lock = threading.Lock()
        self.groups: Groups | None = None

    def get(self, plan: listing.Plan) -> Ordering | None:
        ordering = self._made.get(plan.order)
        if ordering is not None:
            return ordering
        snapshot = self._snapshot()  # alive: the request asking holds it
        with self._lock:
            if self.groups is None:
                self.groups = Groups(snapshot)
            ordering = self._made.get(plan.order)
            if ordering is None and len(self._made) < MAX_ORDERINGS:
                ordering = Ordering(snapshot, plan, self.groups)
                settle()
                self._made[plan.order] = ordering
        return ordering


class ServedPages(listing.Source):
    """`listing`'s page steps on one served snapshot."""

    def __init__(self, snapshot):
        super().__init__(snapshot.cursor())
        self._snapshot = snapshot
        self._orderings = snapshot.derived("orderings", Orderings)

    def page_keys(self, plan: listing.Plan, limit: int) -> list[tuple]:
        ordering = self._orderings.get(plan)
        if ordering is None:
            return super().page_keys(plan, limit)
        start = 0
        if plan.token_keys is not None:
            start = ordering.start(plan.token_keys)
            if start is None:
                return super().page_keys(plan, limit)
        if not plan.conditions:
            return ordering.keys(range(start, min(start + limit, len(ordering.ids))))
        positions = ordering.matching_positions(self._orderings.groups.matching(self.con, plan), start, limit)
        if positions is None:
            return super().page_keys(plan, limit)
        return ordering.keys(positions)

    def rows(self, ids: list[str]) -> list[tuple]:
        return self._snapshot.image_rows(ids)
