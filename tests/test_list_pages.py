"""List pages over Delta stores whose compacted files keep the default list order, compared with a
plain reference: every row version resolved in one query, filtered and sorted, nothing pruned.

The stores have row groups of a few rows, so pages, and runs of equal names or digests, cross
row-group, run and file boundaries; they are read compacted, compacted with runs appended since
(more and less exact records, tag moves, new images, retired ids, an imported record that renames
an image, a new last_modified), and as written.
"""

from __future__ import annotations

import base64
import json
import random
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from indexer.errors import QueryError
from indexer.store import deltalog, schema
from indexer.store.delta import Changes, DeltaStore
from queries import engine, listing
from queries.render import SELECT

NAMES = ["a/x", "a/y", "b", "crpab0cd1ef2gh3ij4kl/team/z", "c/d/e", "", "b-"]
CREATED = [1_767_225_600_000_000_000, 1_767_225_600_500_000_000, None, 1_767_225_599_999_999_999]
IMAGES = 120
ORDERS = ["", "name desc", "digest", "created_at desc", "last_modified desc, name"]
FILTERS = [
    {},
    {"filter": 'name = "b"'},
    {"filter": 'name NOT IN ("a/x", "b")'},
    {"registry_id": "crpab0cd1ef2gh3ij4kl"},
]


def _at(day: int) -> datetime:
    return datetime(2026, 11, day, tzinfo=timezone.utc)


def image(n: int, *, exactness: int = 1, name: str | None = None, tags=(), day: int = 1, note: str = "") -> dict:
    digest = None if n % 11 == 0 else f"sha256:{n % 25:064x}"  # ties on digest, and no digest
    return {
        "id": f"crp{n:017d}",
        "registry": "r.example",
        "name": NAMES[n % len(NAMES)] if name is None else name,  # ties on name, across row groups
        "digest": digest,
        "media_type": "application/vnd.oci.image.manifest.v1+json",
        "kind": "image",
        "config_id": f"crpc{n:016d}",
        "config_digest": f"sha256:{n + 1000:064x}",
        "config_size": 100 + n,
        "exactness": exactness,
        "tags": sorted(tags),
        "created": None,
        "created_at": CREATED[n % len(CREATED)],
        "layers": [
            {"id": f"crpl{n:016d}", "digest": f"sha256:{n + 2000:064x}", "size": n, "media_type": "m", "urls": []}
        ],
        "compressed_size": n,
        "labels": [("note", note)],
        "config_raw": json.dumps({"note": note}).encode(),
        "source_kind": "oci",
        "source_path": f"/src/{n}",
        "indexed_at": _at(day),
    }


def images(*rows) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=schema.IMAGES)


def run(run_id: str) -> dict:
    """A `runs` row: the run's id, and an empty record of what it read."""
    empty = {pa.types.is_list: [], pa.types.is_integer: 0, pa.types.is_timestamp: _at(1)}
    row = {f.name: next((v for test, v in empty.items() if test(f.type)), None) for f in schema.RUNS}
    return {**row, "run_id": run_id}


def load(store: DeltaStore) -> None:
    """Two runs, so that last_modified has ties and differs; then compaction into several files,
    each of several runs of ids, in row groups of four rows."""
    order = list(range(IMAGES))
    random.Random(5).shuffle(order)
    for number, part in enumerate((order[: IMAGES // 2], order[IMAGES // 2 :])):
        rows = [image(n, tags=[f"t{n}"], day=1 + number) for n in part]
        store.write_run(run(f"load{number}"), Changes(images=images(*rows)))


def compact(store: DeltaStore) -> None:
    store.compact_range_rows = 15
    store.compact(retention=timedelta(days=7), vacuum=False, file_rows=30)


def append_since(store: DeltaStore) -> None:
    """Runs after compaction that touch compacted images in every way a run can."""
    store.write_run(
        run("exact"),
        Changes(images=images(*[image(n, exactness=3, tags=[f"t{n}"], day=5, note="exact") for n in range(0, 60, 7)])),
    )
    store.write_run(
        run("loose"), Changes(images=images(*[image(n, exactness=0, day=6, note="loose") for n in (3, 10, 17)]))
    )
    moved = pa.table({"id": [f"crp{n:017d}" for n in (4, 11, 18)], "tags": [["moved"], [], ["x", "y"]]})
    store.write_run(run("tags"), Changes(image_tags=moved))
    store.write_run(run("new"), Changes(images=images(*[image(n, day=7) for n in range(IMAGES, IMAGES + 25)])))
    store.write_run(run("retire"), Changes(retired_images=[f"crp{n:017d}" for n in (5, 12, 19, 26)]))
    # An imported record of a compacted id under another name: the image moves elsewhere in name order.
    store.write_run(run("import"), Changes(images=images(image(30, exactness=4, name="a/a", day=8), image(31, day=9))))


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    made = {}
    for state in ("compacted", "appended", "written"):
        path = str(tmp_path_factory.mktemp(state) / "store")
        with DeltaStore(path, compact_row_group_rows=4) as store:
            store.create()
            load(store)
            if state != "written":
                compact(store)
            if state == "appended":
                append_since(store)
        made[state] = path
    return made


class Reference:
    """The current rows of a store by the resolution rule over every row version, in one query."""

    def __init__(self, store: str):
        self.con = duckdb.connect()
        self.con.execute("SET TimeZone = 'UTC'")
        files = deltalog.read_store(store, tables=("images",), con=self.con)["images"]
        self.relation = f"({deltalog.resolved_sql(files, f'({deltalog.versions_sql(files)})')})"

    def rows(self, query: listing.Query, after: tuple | None = None) -> list[tuple]:
        plan = listing.plan(replace(query, page_token=""))
        where, params = plan.where(after)
        return self.con.execute(
            f"SELECT {SELECT} FROM {self.relation} AS images WHERE {where} ORDER BY {plan.order_sql}", params
        ).fetchall()

    def keys(self, query: listing.Query, image_id: str) -> tuple:
        plan = listing.plan(replace(query, page_token=""))
        return self.con.execute(
            f"SELECT {plan.key_sql} FROM {self.relation} AS images WHERE id = ?", [image_id]
        ).fetchone()


def walk(reader, query: listing.Query) -> tuple[list[tuple], int]:
    """Every row of every page from the first, and how many pages."""
    rows, token, pages = [], "", 0
    while True:
        page = listing.page(reader, replace(query, page_token=token))
        rows += page.rows
        pages += 1
        token = page.next_page_token
        if not token:
            return rows, pages
        assert pages < IMAGES * 2


@pytest.mark.parametrize(
    ("state", "order_by"),
    [(state, order_by) for state in ("compacted", "appended") for order_by in ORDERS]
    + [("written", ""), ("written", "name desc, created_at, last_modified desc")],
)
def test_every_page_is_the_reference_slice(stores, state, order_by):
    reader = engine.connect(stores[state], tables=("images",))
    reference = Reference(stores[state])
    for fields in FILTERS:
        query = listing.Query(order_by=order_by, **fields)
        expected = reference.rows(query)
        assert expected, (state, fields)
        # Pages of one row where every name is the same: ties broken by digest and id alone.
        for size in (1, 5, 1000) if fields.get("filter") == 'name = "b"' else (5, 1000):
            rows, pages = walk(reader, replace(query, page_size=size))
            assert rows == expected, (state, order_by, fields, size)
            assert pages == max(1, -(-len(expected) // size))


def test_the_appended_store_holds_what_its_runs_say(stores):
    """The cases the appended store is built to cover are there, so that the comparison sees them."""
    reader = engine.connect(stores["appended"], tables=("images",))
    assert reader.images_parts is not None and reader.images_parts.recent is not None
    reference = Reference(stores["appended"])
    current = f"SELECT id, {{'name': name, 'tags': tags}} FROM {reference.relation}"
    rows = dict(reference.con.execute(current).fetchall())
    assert f"crp{5:017d}" not in rows and f"crp{IMAGES + 3:017d}" in rows
    assert rows[f"crp{30:017d}"]["name"] == "a/a"  # renamed by the imported record
    assert rows[f"crp{4:017d}"]["tags"] == ["moved"] and rows[f"crp{11:017d}"]["tags"] == []


@pytest.mark.parametrize("state", ["compacted", "appended"])
@pytest.mark.parametrize("order_by", ["", "name desc", "last_modified desc, name", "created_at"])
def test_pages_from_any_token_are_the_reference_slice(stores, state, order_by):
    """A page from every position: the rows after the token's image, whose keys the store gives now."""
    reader = engine.connect(stores[state], tables=("images",))
    reference = Reference(stores[state])
    query = listing.Query(order_by=order_by, page_size=5)
    plan = listing.plan(query)
    everything = reference.rows(query)
    for position in range(0, len(everything), 4):
        last = everything[position][0]
        token = listing.page_token(plan, reference.keys(query, last))
        page = listing.page(reader, replace(query, page_token=token))
        assert page.rows == everything[position + 1 : position + 6], (order_by, position)


def test_token_strings_must_be_encodable_before_any_query_sees_them():
    """A JSON escape can make a str that is not text (a lone surrogate); only such values are refused."""
    fingerprint = listing.plan(listing.Query()).fingerprint

    def token(keys) -> str:
        return base64.urlsafe_b64encode(json.dumps({"q": fingerprint, "k": keys}).encode()).decode().rstrip("=")

    for keys in ([None, None, "\ud800"], [None, None, "crp\udc80"], ["\ud83d", None, "c"], [None, "\udfff", "c"]):
        with pytest.raises(QueryError, match="^invalid page token$"):
            listing.plan(listing.Query(page_token=token(keys)))
    for keys in ([None, None, "c"], ["\u00e9\U0001f600", "\x00", "c"]):
        assert listing.plan(listing.Query(page_token=token(keys))).token_keys == tuple(keys)


def test_a_token_continues_after_its_image_is_touched(tmp_path):
    """A page token of the compacted store, used after a run rewrote its last image (a newer
    last_modified; the token carries the old one by value) and renamed the image before it."""
    path = str(tmp_path / "store")
    query = listing.Query(order_by="last_modified desc, name", page_size=9)
    with DeltaStore(path, compact_row_group_rows=4) as store:
        store.create()
        load(store)
        compact(store)
        first = listing.page(engine.connect(path, tables=("images",)), query)
        last, before = first.rows[-1], first.rows[-2]
        store.write_run(
            run("later"),
            Changes(
                images=images(
                    image(int(last[0][3:]), exactness=3, day=20, note="later"),
                    image(int(before[0][3:]), exactness=4, name="zz/top", day=1),
                )
            ),
        )
    token = json.loads(base64.urlsafe_b64decode(first.next_page_token + "=" * (-len(first.next_page_token) % 4)))
    reader = engine.connect(path, tables=("images",))
    assert reader.images_parts.recent is not None
    page = listing.page(reader, replace(query, page_token=first.next_page_token))
    # The rows after the token's key: its last_modified as it travelled, the name read back now.
    expected = Reference(path).rows(query, after=(token["k"][0], last[1], last[0]))
    assert page.rows == expected[:9] and len(page.rows) == 9


def test_keyset_conditions_split_the_order_where_python_agrees():
    """`after` and `until` of any key split the rows in two, in the order SQL and `Plan.sort` give."""
    con = duckdb.connect()
    rng = random.Random(3)
    rows = [
        (
            rng.choice(["", "a", "a/b", "b", "é", "z"]),
            rng.choice(["", "sha256:1", "sha256:2"]),
            rng.randrange(3),
            f"i{n:03d}",
        )
        for n in range(120)
    ]
    con.execute("CREATE TABLE t (name VARCHAR, digest VARCHAR, created_at BIGINT, id VARCHAR)")
    con.executemany("INSERT INTO t VALUES (?, ?, ?, ?)", rows)
    for order_by in ("", "name desc", "digest desc, name", "name, created_at desc"):
        plan = listing.plan(listing.Query(order_by=order_by))
        keys = plan.key_sql.replace(listing._ORDER_FIELDS["created_at"], "created_at")
        order = plan.order_sql.replace(listing._ORDER_FIELDS["created_at"], "created_at")
        ordered = con.execute(f"SELECT {keys} FROM t ORDER BY {order}").fetchall()
        assert plan.sort(list(reversed(ordered))) == ordered
        for position in (0, 1, 59, 118, 119):
            key = ordered[position]
            for method, want in ((plan.after, ordered[position + 1 :]), (plan.until, ordered[: position + 1])):
                condition, params = method(key)
                condition = condition.replace(listing._ORDER_FIELDS["created_at"], "created_at")
                got = con.execute(f"SELECT {keys} FROM t WHERE {condition} ORDER BY {order}", params).fetchall()
                assert got == want, (order_by, position, method.__name__)


def test_compacted_files_are_id_ranges_in_list_order(stores):
    """Each compacted file holds one range of ids, disjoint from the others', in runs sorted by name,
    digest and id; so a lookup by id opens one file, and a page's names fall in few row groups."""
    files = deltalog.read_table(f"{stores['compacted']}/images")
    assert len(files.files) > 1
    ranges = {}
    runs = 0
    for path in files.files:
        data = pq.read_table(path, columns=["id", "name", "digest"]).to_pylist()
        ids = [row["id"] for row in data]
        ranges[path] = (min(ids), max(ids))
        keys = [(row["name"], row["digest"] or "", row["id"]) for row in data]
        breaks = sum(1 for a, b in zip(keys, keys[1:], strict=False) if b < a)
        assert breaks <= 1  # 30 ids per file, in runs of 15
        runs += breaks + 1
    spans = sorted(ranges.values())
    assert all(high < low for (_, high), (low, _) in zip(spans, spans[1:], strict=False))
    for path, (low, high) in ranges.items():
        assert files.for_key(low).files == files.for_key(high).files == (path,)
    page = listing.page(engine.connect(stores["compacted"], tables=("images",)), listing.Query(page_size=3))
    low, high = page.rows[0][1], page.rows[-1][1]
    overlapping = total = 0
    for path in files.files:
        meta = pq.ParquetFile(path).metadata
        column = meta.schema.names.index("name")
        for group in range(meta.num_row_groups):
            stats = meta.row_group(group).column(column).statistics
            total += 1
            overlapping += stats.has_min_max and stats.min <= high and stats.max >= low
    assert overlapping <= runs < total / 2, (overlapping, runs, total)
