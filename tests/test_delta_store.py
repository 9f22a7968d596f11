"""The Delta Lake store: append-only versions, the resolution rule, compaction, vacuum, history,
concurrent writers, killed writers, and the log reader of the lookup path."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timedelta, timezone

import deltalake
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st


from indexer.errors import StoreError
from indexer.model import IMPORTED
from indexer.store import delta, deltalog, schema
from indexer.store.delta import Changes, DeltaStore, premerge

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHORT = {"retention": timedelta(0), "allow_short_retention": True}
IGNORED = ("indexed_at", "source_path")  # where and when a record was seen, not what it says


def image(n: int, exactness: int = 1, tags=(), note: str = "", name: str = "app", registry: str = "r.example") -> dict:
    return {
        "id": f"crp{n:017d}",
        "registry": registry,
        "name": name,
        "digest": f"sha256:{n:064x}",
        "media_type": "application/vnd.oci.image.manifest.v1+json",
        "kind": "image",
        "config_digest": f"sha256:{n + 1000:064x}",
        "config_size": 100 + n,
        "exactness": exactness,
        "tags": sorted(tags),
        "created": "2026-11-29T10:54:27.000347894Z",
        "created_at": 1796035467000347894,
        "layers": [{"id": f"blob{n}", "digest": f"sha256:{n + 2000:064x}", "size": n, "media_type": "m", "urls": []}],
        "labels": [("note", note)],
        "config_raw": f'{{"note": "{note}"}}'.encode(),
        "source_kind": "oci",
        "source_path": f"/src/{n}",
        "indexed_at": datetime(2026, 11, 29, tzinfo=timezone.utc),
    }


def images(*rows) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=schema.IMAGES)


def claims(*rows) -> pa.Table:
    return pa.Table.from_pylist(
        [dict(zip(("registry", "name", "tag", "image_id"), r, strict=True)) for r in rows], schema=schema.TAGS
    )


def current(store: DeltaStore, version=None, as_of=None) -> dict:
    snap = store.snapshot(version=version, as_of=as_of)
    columns = [f.name for f in schema.IMAGES if f.name not in IGNORED]
    rows = snap.con.execute(f"SELECT {', '.join(columns)} FROM images ORDER BY id").fetchall()
    tags = snap.con.execute("SELECT * FROM tags ORDER BY registry, name, tag").fetchall()
    return {"images": rows, "tags": tags}


@pytest.fixture
def store(tmp_path):
    s = DeltaStore(str(tmp_path / "store"))
    s.create()
    yield s
    s.close()


def test_append_resolves_highest_exactness_then_newest(store):
    store.write_run({"run_id": "a"}, Changes(images=images(image(1, 3, note="exact"), image(2, 1, note="old"))))
    store.write_run({"run_id": "b"}, Changes(images=images(image(1, 1, note="engine"), image(2, 1, note="new"))))
    rows = {r[0]: r for r in store.snapshot().con.execute("SELECT id, exactness, labels FROM images").fetchall()}
    assert rows["crp00000000000000001"][1:] == (3, {"note": "exact"})  # a newer, less exact record loses
    assert rows["crp00000000000000002"][1:] == (1, {"note": "new"})  # equally exact: the newest write wins
    store.write_run({"run_id": "c"}, Changes(images=images(image(1, 3, note="exact again"))))
    labels = store.snapshot().con.execute("SELECT labels FROM images WHERE id = 'crp00000000000000001'").fetchall()
    assert labels == [({"note": "exact again"},)]


def _notes(path: str) -> list:
    with DeltaStore(path) as s:
        return [r[0]["note"] for r in s.snapshot().con.execute("SELECT labels FROM images ORDER BY id").fetchall()]


def _newest_row(path: str) -> datetime:
    with DeltaStore(path) as s:
        query = (
            "SELECT max(written_at) FROM "
            "(SELECT written_at FROM images_versions UNION ALL SELECT written_at FROM tags_versions)"
        )
        return s.snapshot().con.execute(query).fetchall()[0][0]


def test_a_run_sorts_after_rows_a_clock_ahead_wrote_also_after_compaction(store, monkeypatch):
    """A row version must sort after every version its run could read, whatever the clocks: the
    newest written_at is known from the data files' names, which compaction keeps honest."""
    path = store.store
    monkeypatch.setattr(delta, "_now", lambda: datetime.now(timezone.utc) + timedelta(hours=1))
    with DeltaStore(path) as ahead:
        ahead.write_run({"run_id": "ahead"}, Changes(images=images(image(1, note="ahead"))))
    monkeypatch.undo()
    newest = _newest_row(path)
    assert newest > datetime.now(timezone.utc) + timedelta(minutes=30)
    with monkeypatch.context() as m:
        # answered from the names in the log, without reading a file
        m.setattr(delta.Snapshot, "con", property(lambda self: pytest.fail("read the files")))
        with DeltaStore(path) as s:
            named = s.snapshot().latest_written_at()
    assert newest <= named < newest + timedelta(seconds=30)
    with DeltaStore(path) as behind:
        behind.write_run({"run_id": "behind"}, Changes(images=images(image(1, note="behind"))))
    assert _notes(path) == ["behind"]
    with DeltaStore(path) as s:
        s.compact(**SHORT)  # on the clock that is behind: its files' names must not go back
    with DeltaStore(path) as behind:
        behind.write_run({"run_id": "after"}, Changes(images=images(image(1, note="after compaction"))))
    assert _notes(path) == ["after compaction"]


def test_a_file_named_by_another_writer_sends_the_newest_time_to_the_files(store):
    ahead = datetime.now(timezone.utc) + timedelta(hours=1)
    data = delta._cast("images", images(image(1, note="foreign")))
    for column, value in ((deltalog.WRITTEN_AT, ahead), (deltalog.RUN_ID, "foreign"), (deltalog.TOMBSTONE, False)):
        field = data.schema.field(column)
        data = data.set_column(data.schema.get_field_index(column), field, pa.array([value], field.type))
    deltalake.write_deltalake(store.location("images"), data, mode="append")
    assert delta._newest_by_name(deltalog.read_table(store.location("images")).files) is delta._UNNAMED
    with DeltaStore(store.store) as s:
        assert s.snapshot().latest_written_at() == ahead
        s.write_run({"run_id": "ours"}, Changes(images=images(image(1, note="ours"))))
    assert _notes(store.store) == ["ours"]


def test_created_at_is_utc_microseconds_and_created_keeps_nanoseconds(store):
    store.write_run({"run_id": "a"}, Changes(images=images(image(1))))
    table = deltalake.DeltaTable(store.location("images"))
    field = pa.schema(table.schema().to_arrow()).field("created_at")
    assert field.type == pa.timestamp("us", tz="UTC")
    (path,) = deltalog.read_table(store.location("images")).files
    assert pq.read_schema(path).field("created_at").type == pa.timestamp("us", tz="UTC")
    row = store.snapshot().con.execute("SELECT created, epoch_us(created_at) FROM images").fetchall()
    assert row == [("2026-11-29T10:54:27.000347894Z", 1796035467000347)]


def test_image_tombstone_retires_the_id_for_good(store):
    store.write_run({"run_id": "a"}, Changes(images=images(image(1, 3), image(2))))
    store.write_run({"run_id": "b"}, Changes(retired_images=["crp00000000000000001"]))
    store.write_run({"run_id": "c"}, Changes(images=images(image(1, 4))))
    ids = [r[0] for r in store.snapshot().con.execute("SELECT id FROM images ORDER BY id").fetchall()]
    assert ids == ["crp00000000000000002"]
    tombstones = store.snapshot().con.execute("SELECT count(*) FROM images_versions WHERE tombstone").fetchall()
    assert tombstones == [(1,)]


def test_tags_newest_claim_wins_and_a_tombstone_retires_it(store):
    """The tags table is the log of claims; its resolved state is the newest claim per key."""
    key = ("r.example", "app", "latest")

    def claimed():
        files = store.files()["tags"]
        sql = f"SELECT tag, image_id FROM ({deltalog.resolved_sql(files)}) ORDER BY tag"
        return store.snapshot().con.execute(sql).fetchall()

    store.write_run({"run_id": "a"}, Changes(tags=claims((*key, "crp1"), ("r.example", "app", "v1", "crp1"))))
    store.write_run({"run_id": "b"}, Changes(tags=claims((*key, "crp2"))))
    assert claimed() == [("latest", "crp2"), ("v1", "crp1")]
    store.write_run({"run_id": "c"}, Changes(retired_tags=[key]))
    assert claimed() == [("v1", "crp1")]
    store.write_run({"run_id": "d"}, Changes(tags=claims((*key, "crp3"))))
    assert claimed() == [("latest", "crp3"), ("v1", "crp1")]


def test_current_tags_are_those_the_images_carry(store):
    store.write_run({"run_id": "a"}, Changes(images=images(image(1, tags=["v1", "latest"]), image(2))))
    con = store.snapshot().con
    assert con.execute("SELECT tag, image_id FROM tags ORDER BY tag").fetchall() == [
        ("latest", "crp00000000000000001"),
        ("v1", "crp00000000000000001"),
    ]


def test_a_key_twice_in_one_run_is_refused(store):
    with pytest.raises(StoreError, match="same images key twice"):
        store.write_run({"run_id": "a"}, Changes(images=images(image(1), image(1, note="again"))))
    assert store.snapshot().con.execute("SELECT count(*) FROM images_versions").fetchall() == [(0,)]


def test_identical_reappend_resolves_to_the_same_state(store):
    rows = images(image(1, 3, tags=["v1"]), image(2, 1, tags=["v2"]))
    tags = claims(
        ("r.example", "app", "v1", "crp00000000000000001"), ("r.example", "app", "v2", "crp00000000000000002")
    )
    store.write_run({"run_id": "a"}, Changes(images=rows, tags=tags))
    before = current(store)
    store.write_run({"run_id": "b"}, Changes(images=rows, tags=tags))
    assert current(store) == before
    assert store.snapshot().con.execute("SELECT count(*) FROM images_versions").fetchall() == [(4,)]


def test_premerge_moves_tags_pools_them_and_writes_nothing_when_nothing_is_new(store):
    def run(run_id, *rows, retired=()):
        return store.write_run({"run_id": run_id}, lambda snap: premerge(snap, images(*rows), retired_tags=retired))

    run("a", image(1, tags=["latest", "v1"]), image(2, tags=["v2"]))
    run("b", image(2, tags=["latest"]))  # latest moves from 1 to 2; 2 keeps v2
    state = current(store)
    tags_of = {row[0]: row[14] for row in state["images"]}
    assert tags_of == {"crp00000000000000001": ["v1"], "crp00000000000000002": ["latest", "v2"]}
    assert ("r.example", "app", "latest", "crp00000000000000002") in state["tags"]
    again = run("c", image(2, tags=["latest"]))
    assert again.versions["images"] is None and again.versions["tags"] is None and again.versions["runs"] is not None
    assert current(store) == state
    run("d", retired=[("r.example", "app", "v1")])
    tags_of = {row[0]: row[14] for row in current(store)["images"]}
    assert tags_of["crp00000000000000001"] == []
    run("e", image(1, 3, tags=["v1"], note="exact"))  # a more exact record wins whole; tags pooled
    run("f", image(1, 1, note="engine"))  # a less exact one changes nothing
    row = [r for r in current(store)["images"] if r[0] == "crp00000000000000001"][0]
    assert (row[schema.IMAGES.get_field_index("exactness") - 1], row[14]) == (3, ["v1"])
    # tag moves append tags-only rows, never the image's data again
    versions = (
        store.snapshot()
        .con.execute(
            "SELECT count(*) FILTER (WHERE tags_only), count(*) FILTER (WHERE manifest_raw IS NULL AND NOT tags_only) "
            "FROM images_versions"
        )
        .fetchall()
    )
    assert versions[0][0] >= 2
    state = current(store)
    store.compact(vacuum=False)
    assert current(store) == state
    rows = store.snapshot().con.execute("SELECT count(*), count(DISTINCT id) FROM images_versions").fetchall()
    assert rows == [(2, 2)]  # one row per image: the winning data with the newest tags


def test_an_imported_row_lists_every_tag_of_its_image(store):
    """A registry's own document of an image (exactness IMPORTED) says which tags it has: those the
    store held for the id that it no longer lists are retired, with a tombstone in the tags log; a
    tag another row of the batch claims moves as always; a less exact record still pools."""

    def run(run_id, *rows):
        return store.write_run({"run_id": run_id}, lambda snap: premerge(snap, images(*rows)))

    def tags_of():
        return {row[0]: row[14] for row in current(store)["images"]}

    run("a", image(1, IMPORTED, tags=["1.0", "latest", "old"]))
    run("b", image(1, 1, tags=["local"]))  # pooled: a less exact record adds its claim
    assert tags_of() == {"crp00000000000000001": ["1.0", "latest", "local", "old"]}
    run("c", image(1, IMPORTED, tags=["1.0"]), image(2, IMPORTED, tags=["latest"]))
    assert tags_of() == {"crp00000000000000001": ["1.0"], "crp00000000000000002": ["latest"]}
    log = (
        store.snapshot()
        .con.execute("SELECT tag, image_id, tombstone FROM tags_versions WHERE run_id = 'c' ORDER BY tag")
        .fetchall()
    )
    assert log == [
        ("latest", "crp00000000000000002", False),
        ("local", None, True),
        ("old", None, True),
    ]
    unchanged = run("d", image(1, IMPORTED, tags=["1.0"]))
    assert unchanged.versions["images"] is None and unchanged.versions["tags"] is None
    run("e", image(1, IMPORTED))
    assert tags_of()["crp00000000000000001"] == []


@pytest.mark.parametrize("literal_keys", [5_000, 1], ids=["listed", "joined"])
def test_a_few_keys_are_read_from_the_files_whose_ranges_may_hold_them(store, monkeypatch, literal_keys):
    """A store of many small runs: a run's questions open the files whose id or name range (from
    the log's statistics) may hold its keys, and answer as the whole store does."""

    def run(run_id, *rows):
        return store.write_run({"run_id": run_id}, lambda snap: premerge(snap, images(*rows)))

    for n in range(10):
        run(f"r{n}", image(n, tags=[f"v{n}"], name=f"app{n}"))
    run("move", image(10, tags=["v3"], name="app3"))  # v3 moves from image 3: a tags-only row
    run("retire", image(11, name="app7"))
    store.write_run({"run_id": "t"}, Changes(retired_images=["crp00000000000000007"]))
    total = len(deltalog.read_table(store.location("images")).files)
    keys = [
        ("r.example", "app3", "v3"),
        ("r.example", "app5", "v5"),
        ("r.example", "app9", "none"),
        ("r.example", "app7", "v7"),
    ]
    ids = [f"crp{n:017d}" for n in (3, 5, 7, 10, 99)]
    # With one key as the limit, the keys and the ids found go to DuckDB as joined tables.
    monkeypatch.setattr(delta, "_LITERAL_KEYS", literal_keys)
    with DeltaStore(store.store) as s:
        snap = s.snapshot()
        opened = []
        versions_sql = deltalog.versions_sql
        monkeypatch.setattr(
            deltalog, "versions_sql", lambda files, **kw: opened.append(files.files) or versions_sql(files, **kw)
        )
        key_table = pa.table({c: [k[i] for k in keys] for i, c in enumerate(("registry", "name", "tag"))})
        holders = sorted(tuple(r.values()) for r in snap.tag_holders(key_table).to_pylist())
        state = {r["id"]: (r["exactness"], r["tags"]) for r in snap.image_state(ids).to_pylist()}
        rows = {r["id"]: dict(r["labels"]) for r in snap.images(ids).to_pylist()}
        # the runs of other images and names were never opened (the ids of many, joined, read all)
        untouched = [f"-rr{n}-" for n in (0, 1, 2, 4, 6, 8)]
        assert len(opened) >= 4 and all(
            len(files) < total for files in opened[: len(opened) if literal_keys > 1 else 1]
        )
        if literal_keys > 1:
            assert not [path for files in opened for path in files if any(mark in path for mark in untouched)]
        monkeypatch.undo()
        wanted = " OR ".join(f"(name = '{n}' AND tag = '{t}')" for _, n, t in keys)
        assert holders == sorted(snap.con.execute(f"SELECT * FROM tags WHERE {wanted}").fetchall())
        assert holders == [
            ("r.example", "app3", "v3", "crp00000000000000010"),
            ("r.example", "app5", "v5", "crp00000000000000005"),
        ]
        listed = ", ".join(f"'{i}'" for i in ids)
        expected = snap.con.execute(f"SELECT id, exactness, tags, labels FROM images WHERE id IN ({listed})").fetchall()
        assert state == {i: (e, t) for i, e, t, _ in expected}
        assert rows == {i: dict(labels) for i, _, _, labels in expected} and len(rows) == 3


def test_file_ranges_narrow_by_id_or_name_and_keep_what_they_cannot_rule_out():
    files = deltalog.TableFiles(
        "images",
        "x",
        1,
        0,
        ("a", "b", "c", "d"),
        (),
        None,
        (("k1", "k3"), ("k4", "k6"), None, ("k0", "k9")),
        True,
        (("app", "app"), (), ("web", "zoo"), None),
    )
    assert files.holding(["k2"]).files == ("a", "c", "d")
    assert files.for_key("k2").files == ("a", "c", "d")
    # a file whose key column holds no values is never a candidate
    assert dataclasses.replace(files, key_ranges=((), *files.key_ranges[1:])).for_key("k2").files == ("c", "d")
    assert files.holding(["k5", "k7"]).files == ("b", "c", "d")
    assert files.holding(["app"], column="name").files == ("a", "d")  # b holds no names
    assert files.holding(["x"], column="name").files == ("c", "d")
    assert files.holding([], column="name").files == ("d",)
    narrowed = files.holding(["web"], column="name")
    assert narrowed.key_ranges == (None, ("k0", "k9")) and narrowed.name_ranges == (("web", "zoo"), None)
    unknown = dataclasses.replace(files, name_ranges=())
    assert unknown.holding(["x"], column="name") is unknown


_key = st.text(alphabet="abcde", max_size=3)


@given(
    ranges=st.lists(st.one_of(st.tuples(_key, _key).map(lambda r: tuple(sorted(r))), st.just(())), max_size=6),
    keys=st.lists(_key, max_size=12),
)
def test_the_keys_file_ranges_may_hold_are_counted_once_each(ranges, keys):
    files = deltalog.TableFiles(
        "images", "x", 1, 0, tuple(f"f{i}" for i in range(len(ranges))), (), None, tuple(ranges)
    )
    inside = {k for k in keys if any(r and r[0] <= k <= r[1] for r in ranges)}
    assert files.may_hold_count(keys) == len(inside)
    # A range the log does not give rules nothing out.
    unknown = dataclasses.replace(files, files=(*files.files, "g"), key_ranges=(*ranges, None))
    assert unknown.may_hold_count(keys) == len(set(keys))


@given(st.text(min_size=0, max_size=80))
def test_string_statistics_bound_long_values_under_32_characters(text):
    low, high = delta._lower_bound(text), delta._upper_bound(text)
    assert low <= text and len(low) < 32
    if high is not None:
        assert text <= high and len(high) < 32
        high.encode("utf-8")  # no surrogate
        # every string that begins as `text` does stays under the bound
        assert text[:31] + "\U0010ffff" * 3 <= high or len(text) <= 31


def test_long_names_narrow_by_their_bounds(store, monkeypatch):
    names = ["team/" + letter * 35 for letter in "abc"]
    for n, name in enumerate(names):
        store.write_run(
            {"run_id": f"r{n}"}, lambda snap, n=n, name=name: premerge(snap, images(image(n, tags=["v"], name=name)))
        )
    files = deltalog.read_table(store.location("images"))
    assert all(r and len(r[0]) < 32 for r in files.name_ranges)
    assert len(files.holding([names[1]], column="name").files) == 1
    with DeltaStore(store.store) as s:
        keys = pa.table({"registry": ["r.example"], "name": [names[1]], "tag": ["v"]})
        holders = s.snapshot().tag_holders(keys).to_pylist()
    assert holders == [{"registry": "r.example", "name": names[1], "tag": "v", "image_id": image(1)["id"]}]


def test_file_ranges_come_from_statistics_and_distrust_cut_strings():
    def ranges(low, high, nulls=0):
        stats = {"numRecords": 2, "minValues": {"id": "a", "name": low}, "maxValues": {"id": "b", "name": high}}
        stats["nullCount"] = {"id": 0, "name": nulls}
        if low is None:
            del stats["minValues"]["name"], stats["maxValues"]["name"]
        return deltalog._stat_ranges(json.dumps(stats), ("id", "name"))

    assert ranges("app", "web") == [("a", "b"), ("app", "web")]
    assert ranges(None, None, nulls=2) == [("a", "b"), ()]  # no names in the file
    assert ranges(None, None, nulls=1) == [("a", "b"), None]  # names too long to be given
    long = "team/" + "x" * 27  # 32 characters: perhaps a prefix of a longer name
    assert ranges("app", long) == [("a", "b"), None]
    assert ranges("app", long[:-1]) == [("a", "b"), ("app", long[:-1])]
    assert deltalog._stat_ranges(None, ("id", "name")) == [None, None]
    assert deltalog._stat_ranges("{not json", ("id",)) == [None]


def test_compaction_keeps_the_resolved_state_in_id_ranges(store, tmp_path):
    for run in range(6):
        rows = [image(n, 1 + (n + run) % 3, note=f"run {run}") for n in range(run * 7 % 13, 60, 3)]
        store.write_run({"run_id": f"r{run}"}, Changes(images=images(*rows)))
    store.write_run({"run_id": "t"}, Changes(retired_images=["crp00000000000000003"]))
    before = current(store)
    store.row_group_rows = 8
    store.compact_range_rows = 10  # several id ranges, as a large table is compacted
    report = store.compact(retention=timedelta(days=7))
    assert report["images"]["files_after"] == 1 and report["images"]["files_before"] == 7
    assert current(store) == before
    files = deltalog.read_table(store.location("images")).files
    assert len(files) == 1
    data = pq.read_table(files[0])
    ids = data.column("id").to_pylist()
    assert len(ids) == len(set(ids))
    # Runs of ids, each in list order (name, digest, id): these images share a name and their digests
    # follow their ids, so by id; the young tombstone, which has no name, last in its run.
    assert [i for i in ids if i != "crp00000000000000003"] == sorted(set(ids) - {"crp00000000000000003"})
    assert "crp00000000000000003" in ids  # a young tombstone stays: an older run may still commit
    # split into files by id range, a lookup opens only the file whose range holds its id
    store.compact(retention=timedelta(days=7), vacuum=False, file_rows=16)
    images_files = deltalog.read_table(store.location("images"))
    assert len(images_files.files) > 1
    narrowed = images_files.for_key("crp00000000000000007")
    assert len(narrowed.files) == 1
    one = (
        store.snapshot()
        .con.execute(f"SELECT id, labels FROM ({deltalog.resolved_sql(narrowed)}) WHERE id = 'crp00000000000000007'")
        .fetchall()
    )
    assert (
        one
        == store.snapshot().con.execute("SELECT id, labels FROM images WHERE id = 'crp00000000000000007'").fetchall()
        and one
    )
    meta = pq.ParquetFile(files[0]).metadata
    assert meta.num_row_groups > 1 and meta.row_group(0).column(0).statistics.has_min_max
    # once older than the retention, a tombstone goes
    store.compact(retention=timedelta(hours=1), now=datetime.now(timezone.utc) + timedelta(hours=2), vacuum=False)
    ids = pq.read_table(list(deltalog.read_table(store.location("images")).files)).column("id").to_pylist()
    assert "crp00000000000000003" not in ids and ids == sorted(ids)
    assert current(store) == before


def test_after_compaction_only_keys_touched_since_are_resolved(store):
    """Readers take compacted rows as they are unless a later file touches their key; the result
    equals resolving every row version, whatever the later runs did."""
    for run in range(3):
        rows = [image(n, 1 + (n + run) % 3, tags=[f"t{n}"], note=f"run {run}") for n in range(run, 40, 2)]
        store.write_run({"run_id": f"r{run}"}, Changes(images=images(*rows)))
    store.write_run({"run_id": "gone"}, Changes(retired_images=["crp00000000000000004"]))
    store.compact(retention=timedelta(days=7), vacuum=False)
    # after compaction: a more exact record, a less exact one, a tag move (a tags-only row), a new
    # image, a retired id, a record of an id whose tombstone is still in the compacted file
    store.write_run({"run_id": "a"}, Changes(images=images(image(5, 3, tags=["t5"], note="exact"))))
    store.write_run({"run_id": "b"}, Changes(images=images(image(6, 0, tags=["t6"], note="loose"))))
    snapshot = store.snapshot()
    store.write_run(
        {"run_id": "c"},
        premerge(snapshot, images(image(7, 2, tags=["t7", "t8"], note="run 0" if 7 % 2 else "x"), image(99, 1))),
    )
    store.write_run({"run_id": "d"}, Changes(retired_images=["crp00000000000000009"]))
    store.write_run({"run_id": "e"}, Changes(images=images(image(4, 2, note="back"))))
    files = store.files()
    compacted, appended = deltalog._split(files["images"])
    assert compacted.files and appended.files
    con = store.snapshot().con
    full = {
        table: deltalog.resolved_sql(files[table], f"({deltalog.versions_sql(files[table])})")
        for table in ("images", "tags")
    }
    for table, keys in (("images", "id"), ("tags", "registry, name, tag")):
        fast = con.execute(f"SELECT * FROM ({deltalog.resolved_sql(files[table])}) ORDER BY {keys}").fetchall()
        slow = con.execute(f"SELECT * FROM ({full[table]}) ORDER BY {keys}").fetchall()
        assert fast == slow and fast, table
    ids = [row[0] for row in con.execute("SELECT id FROM images").fetchall()]
    assert "crp00000000000000004" not in ids and "crp00000000000000009" not in ids and "crp00000000000000099" in ids


def test_compaction_tolerates_concurrent_runs_and_loses_no_commit(store):
    store.write_run({"run_id": "base"}, Changes(images=images(*[image(n) for n in range(50)])))
    script = _writer_script(
        store.store,
        """
        for i in range(8):
            rows = images(*[image(1000 + 10 * i + k, note=str(i)) for k in range(10)])
            s.write_run({"run_id": f"w{i}"}, Changes(images=rows))
    """,
    )
    writer = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT)
    try:
        for _ in range(4):
            store.compact(vacuum=False)
    finally:
        assert writer.wait(timeout=120) == 0
    store.compact(vacuum=False)
    ids = store.snapshot().con.execute("SELECT count(*), count(DISTINCT id) FROM images").fetchall()
    assert ids == [(130, 130)]


def test_two_compactions_at_once_leave_one_version_per_id(store):
    for run in range(5):
        store.write_run({"run_id": f"r{run}"}, Changes(images=images(*[image(n, note=str(run)) for n in range(40)])))
    before = current(store)
    script = _writer_script(
        store.store,
        """
        s.compact(vacuum=False)
    """,
    )
    procs = [subprocess.Popen([sys.executable, "-c", script], cwd=ROOT) for _ in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert current(store) == before
    versions = store.snapshot().con.execute("SELECT count(*), count(DISTINCT id) FROM images_versions").fetchall()
    assert versions == [(40, 40)]


def test_a_column_added_to_the_schema_is_added_to_the_table(tmp_path, monkeypatch):
    old = delta.DELTA_SCHEMAS["images"]
    monkeypatch.setitem(delta.DELTA_SCHEMAS, "images", old.remove(old.get_field_index("id_origin")))
    s = DeltaStore(str(tmp_path / "store"))
    s.create()
    s.write_run({"run_id": "old"}, Changes(images=images(image(1))))
    monkeypatch.setitem(delta.DELTA_SCHEMAS, "images", old)
    s.create()
    assert not deltalog.read_table(s.location("images")).uniform
    s.write_run({"run_id": "new"}, Changes(images=images(dict(image(2), id_origin="imported"))))
    query = "SELECT id, id_origin FROM images ORDER BY id"
    expected = [("crp00000000000000001", None), ("crp00000000000000002", "imported")]
    assert s.snapshot().con.execute(query).fetchall() == expected
    s.compact(vacuum=False)
    assert deltalog.read_table(s.location("images")).uniform
    assert s.snapshot().con.execute(query).fetchall() == expected
    s.close()


def test_an_older_imgdex_refuses_to_compact_away_a_column_it_does_not_know(tmp_path, monkeypatch):
    s = DeltaStore(str(tmp_path / "store"))
    s.create()
    s.write_run({"run_id": "new"}, Changes(images=images(dict(image(1), id_origin="imported"))))
    query = "SELECT id, id_origin FROM images"
    expected = [("crp00000000000000001", "imported")]
    old = delta.DELTA_SCHEMAS["images"]  # an imgdex from before the column
    monkeypatch.setitem(delta.DELTA_SCHEMAS, "images", old.remove(old.get_field_index("id_origin")))
    with pytest.raises(StoreError, match=r"table images has columns this imgdex does not know \(id_origin\)"):
        s.compact(vacuum=False)
    monkeypatch.setitem(delta.DELTA_SCHEMAS, "images", old)
    assert s.snapshot().con.execute(query).fetchall() == expected
    s.compact(vacuum=False)
    assert s.snapshot().con.execute(query).fetchall() == expected
    s.close()


def test_vacuum_keeps_files_within_the_retention_window(store):
    store.write_run({"run_id": "a"}, Changes(images=images(image(1))))
    store.write_run({"run_id": "b"}, Changes(images=images(image(2))))
    old = deltalog.read_table(store.location("images"))
    orphan = os.path.join(deltalog.local_path(store.location("images")), "part-orphan.parquet")
    pq.write_table(pa.table({"id": ["x"]}), orphan)  # a killed run's file: never committed
    report = store.compact()
    assert report["images"]["vacuumed"] == 0
    assert all(os.path.exists(p) for p in old.files) and os.path.exists(orphan)
    assert len(current(store, version=old.version)["images"]) == 2  # older versions still read
    assert store.vacuum(**SHORT)["images"] == len(old.files) + 1
    assert not any(os.path.exists(p) for p in old.files) and not os.path.exists(orphan)
    assert len(current(store)["images"]) == 2
    with pytest.raises(StoreError, match="retention below"):
        store.vacuum(retention=timedelta(minutes=5))


def test_vacuum_keeps_files_for_the_whole_retention_not_whole_hours_of_it(store, monkeypatch):
    store.write_run({"run_id": "a"}, Changes(images=images(image(1))))
    store.write_run({"run_id": "b"}, Changes(images=images(image(2))))
    old = deltalog.read_table(store.location("images")).files
    ago = time.time() - 90 * 60

    class Earlier:  # the clock of delta.py, so that compaction removes the files 90 minutes ago
        sleep = staticmethod(time.sleep)

        @staticmethod
        def time():
            return ago

    with monkeypatch.context() as patched:
        patched.setattr(delta, "time", Earlier)
        store.compact(vacuum=False)
    for path in old:
        os.utime(path, (ago, ago))
    assert store.vacuum(retention=timedelta(minutes=119))["images"] == 0
    assert all(os.path.exists(p) for p in old)
    assert store.vacuum(retention=timedelta(minutes=60))["images"] == len(old)


def test_history_and_reading_as_of_a_version_or_a_time(store):
    store.write_run({"run_id": "a"}, Changes(images=images(image(1)), tags=claims(("r.example", "app", "v", "crp1"))))
    first = current(store)
    middle = datetime.now(timezone.utc)
    time.sleep(0.01)
    store.write_run({"run_id": "b"}, Changes(images=images(image(2)), tags=claims(("r.example", "app", "v", "crp2"))))
    entries = [e for e in store.history() if e.operation == "append"]
    newest = [(e.table, e.run_id, e.rows) for e in entries[:3]]
    assert newest == [("runs", "b", 1), ("tags", "b", 1), ("images", "b", 1)]
    version_a = next(e.version for e in entries if e.table == "images" and e.run_id == "a")
    assert current(store, version=version_a) == first  # a version includes its run's tags
    assert current(store, as_of=middle) == first
    dt = deltalake.DeltaTable(store.location("images"))
    dt.load_as_version(middle)
    assert deltalog.read_table(store.location("images"), as_of=middle).version == dt.version()
    with pytest.raises(StoreError, match="no version"):
        store.snapshot(version=99)


def test_a_version_of_a_run_in_batches_reads_its_batch_not_the_later_ones(store):
    """A run commits its images in batches, each followed by its tags, and its runs row after the
    last: a version of one batch reads none of the claims of the batches after it, and no runs row
    until the run's last batch."""
    store.write_changes("a", Changes(images=images(image(1)), tags=claims(("r.example", "app", "v1", "crp1"))))
    first = current(store)
    version = store.files()["images"].version
    store.write_changes("a", Changes(images=images(image(2)), tags=claims(("r.example", "app", "v2", "crp2"))))
    store.append_run({"run_id": "a"})
    last = current(store)

    def claimed_and_runs(version):
        con = store.snapshot(version=version).con
        claimed = con.execute("SELECT tag FROM tags_versions ORDER BY tag").fetchall()
        return claimed, con.execute("SELECT run_id FROM runs").fetchall()

    assert current(store, version=version) == first
    assert claimed_and_runs(version) == ([("v1",)], [])
    assert current(store, version=version + 1) == last
    assert claimed_and_runs(version + 1) == ([("v1",), ("v2",)], [("a",)])


def test_a_version_whose_pair_was_cleaned_from_the_log_is_refused_not_read_newer(store):
    """When log clean-up removed every tags commit up to an images version's time, the tags cannot
    be read as they were then: the oldest commit left is a newer state, and is not read in its place."""
    for run in "abc":
        store.write_run({"run_id": run}, Changes(images=images(image(ord(run))), tags=claims(("r", "app", run, run))))
    first = next(e.version for e in store.history() if e.table == "images" and e.run_id == "a")
    deltalake.DeltaTable(store.location("tags")).create_checkpoint()
    log = os.path.join(deltalog.local_path(store.location("tags")), "_delta_log")
    latest = max(int(name[:20]) for name in os.listdir(log) if name.endswith(".json") and name[:20].isdigit())
    for version in range(latest):
        os.remove(os.path.join(log, f"{version:020d}.json"))
    with pytest.raises(StoreError, match="can no longer be read"):
        store.snapshot(version=first)


def test_a_version_whose_commits_delta_rs_cleaned_up_is_said_to_be_cleaned_up(store):
    """delta-rs's log clean-up removes every commit before its newest checkpoint that is older than
    the log's retention, the commit the version was made by included: that is a cleaned-up log,
    not a commit missing from it."""
    for run in "abcd":
        store.write_run({"run_id": run}, Changes(images=images(image(ord(run))), tags=claims(("r", "app", run, run))))
    first = next(e.version for e in store.history() if e.table == "images" and e.run_id == "a")
    written, held = datetime.now(timezone.utc), current(store)
    for table in ("images", "tags"):
        dt = deltalake.DeltaTable(store.location(table))
        dt.create_checkpoint()
        log = os.path.join(deltalog.local_path(store.location(table)), "_delta_log")
        old = time.time() - 40 * 86400  # past the log's 30 days
        for name in os.listdir(log):
            os.utime(os.path.join(log, name), (old, old))
        dt.cleanup_metadata()
        assert not os.path.exists(os.path.join(log, f"{first:020d}.json"))
    cleaned = rf"^table images: version {first} can no longer be read \(its log was cleaned up\)$"
    with pytest.raises(StoreError, match=cleaned):
        store.snapshot(version=first)
    before = written - timedelta(days=1)
    with pytest.raises(StoreError, match=r"at or before that time that can still be read \(its log was cleaned up\)$"):
        store.snapshot(as_of=before)
    assert current(store) == held  # the store itself reads as before


def test_the_version_of_a_compaction_reads_the_other_tables_compacted_too(store):
    """Each table is compacted in turn, milliseconds apart: the images compaction's version pairs
    with the tags compaction, whose files vacuum kept, not the tags version before it."""
    for run in "abc":
        store.write_run({"run_id": run}, Changes(images=images(image(ord(run))), tags=claims(("r", "app", run, run))))
    store.compact(**SHORT)
    compacted = next(e.version for e in store.history() if e.table == "images" and e.operation == "compact")
    snap = store.snapshot(version=compacted)
    assert snap.con.execute("SELECT count(*) FROM tags_versions").fetchall() == [(3,)]
    assert current(store, version=compacted) == current(store)


def test_the_log_reader_agrees_with_deltalake(store):
    for run in range(45):  # past two checkpoints (every 20 commits)
        store.write_run({"run_id": f"r{run}"}, Changes(images=images(image(run % 17, note=str(run)))))
        if run == 30:
            store.compact(vacuum=False)
    log = os.listdir(os.path.join(deltalog.local_path(store.location("images")), "_delta_log"))
    assert any(name.endswith(".checkpoint.parquet") for name in log)
    for table in delta.TABLES:
        dt = deltalake.DeltaTable(store.location(table))
        for version in range(dt.version() + 1):
            dt.load_as_version(version)
            expected = sorted(deltalog.local_path(u) for u in dt.file_uris())
            assert sorted(deltalog.read_table(store.location(table), version=version).files) == expected


def _handmade_table(path, protocol: dict, configuration: dict | None = None, add: dict | None = None) -> str:
    os.makedirs(os.path.join(path, "_delta_log"))
    schema_string = json.dumps(
        {"type": "struct", "fields": [{"name": "id", "type": "string", "nullable": True, "metadata": {}}]}
    )
    actions = [
        {"protocol": protocol},
        {
            "metaData": {
                "id": "x",
                "format": {"provider": "parquet", "options": {}},
                "schemaString": schema_string,
                "partitionColumns": [],
                "configuration": configuration or {},
                "createdTime": 0,
            }
        },
    ]
    if add:
        actions.append({"add": add})
    with open(os.path.join(path, "_delta_log", f"{0:020d}.json"), "w") as f:
        f.write("\n".join(json.dumps(a) for a in actions) + "\n")
    return str(path)


@pytest.mark.parametrize(
    "protocol, configuration, add, reason",
    [
        (
            {
                "minReaderVersion": 3,
                "minWriterVersion": 7,
                "readerFeatures": ["deletionVectors"],
                "writerFeatures": ["deletionVectors"],
            },
            {},
            None,
            "deletion vectors",
        ),
        ({"minReaderVersion": 2, "minWriterVersion": 5}, {"delta.columnMapping.mode": "name"}, None, "column mapping"),
        (
            {
                "minReaderVersion": 3,
                "minWriterVersion": 7,
                "readerFeatures": ["columnMapping"],
                "writerFeatures": ["columnMapping"],
            },
            {"delta.columnMapping.mode": "id"},
            None,
            "column mapping",
        ),
        (
            {"minReaderVersion": 1, "minWriterVersion": 2},
            {},
            {
                "path": "a.parquet",
                "partitionValues": {},
                "size": 1,
                "modificationTime": 0,
                "dataChange": True,
                "deletionVector": {
                    "storageType": "u",
                    "pathOrInlineDv": "x",
                    "offset": 1,
                    "sizeInBytes": 1,
                    "cardinality": 1,
                },
            },
            "deletion vectors",
        ),
        (
            {
                "minReaderVersion": 3,
                "minWriterVersion": 7,
                "readerFeatures": ["v2Checkpoint"],
                "writerFeatures": ["v2Checkpoint"],
            },
            {},
            None,
            "reader features",
        ),
        ({"minReaderVersion": 4, "minWriterVersion": 7, "writerFeatures": []}, {}, None, "reader version"),
    ],
)
def test_the_log_reader_refuses_what_it_cannot_read_right(tmp_path, protocol, configuration, add, reason):
    path = _handmade_table(tmp_path / "t", protocol, configuration, add)
    with pytest.raises(StoreError, match=reason):
        deltalog.read_table(path)


def test_views_give_duckdb_the_current_rows(store):
    import duckdb

    store.write_run(
        {"run_id": "a"}, Changes(images=images(image(1, 1), image(2)), tags=claims(("r.example", "app", "v", "crp2")))
    )
    store.write_run({"run_id": "b"}, Changes(images=images(image(1, 3, note="x"))))
    files = deltalog.read_store(store.store)
    con = duckdb.connect()
    for statement in deltalog.view_statements(files):
        con.execute(statement)
    assert con.execute("SELECT id, exactness FROM images ORDER BY id").fetchall() == [
        ("crp00000000000000001", 3),
        ("crp00000000000000002", 1),
    ]
    assert con.execute("SELECT count(*) FROM images_versions").fetchall() == [(3,)]
    assert "written_at" not in [d[0] for d in con.execute("SELECT * FROM images").description]
    assert sorted(deltalog.all_files(files)) == sorted(p for f in files.values() for p in f.files)


def test_an_empty_store_has_typed_empty_views(store):
    con = store.snapshot().con
    assert con.execute("SELECT count(*) FROM images").fetchall() == [(0,)]
    types = dict(con.execute("SELECT column_name, column_type FROM (DESCRIBE images)").fetchall())
    assert types["created_at"] == "TIMESTAMP WITH TIME ZONE" and types["exactness"] == "TINYINT"


# ---- several processes

_PRELUDE = """
import sys
sys.path.insert(0, {root!r})
from test_delta_store import image, images, claims
from indexer.store.delta import Changes, DeltaStore, premerge
s = DeltaStore({store!r})
"""


def _writer_script(store: str, body: str) -> str:
    prelude = _PRELUDE.format(root=os.path.join(ROOT, "tests"), store=store)
    return prelude + textwrap.dedent(body)


# Four runs that overlap: the same images at different exactness, and tags that move between them.
_RUNS = {
    "w0": [image(1, 1, ["latest", "a"], "w0"), image(2, 1, ["b"], "w0"), image(10, 1, [], "w0")],
    "w1": [image(1, 3, ["stable"], "w1"), image(3, 1, ["latest"], "w1"), image(11, 1, [], "w1")],
    "w2": [image(2, 1, ["latest"], "w2"), image(3, 3, ["a"], "w2"), image(12, 1, ["b"], "w2")],
    "w3": [image(1, 1, ["b"], "w3"), image(4, 1, ["latest", "stable"], "w3"), image(2, 3, [], "w3")],
}


def _run_sequentially(path, order) -> dict:
    s = DeltaStore(path)
    s.create()
    for run_id in order:
        s.write_run({"run_id": run_id}, lambda snap, r=run_id: premerge(snap, images(*_RUNS[r])))
    try:
        return current(s)
    finally:
        s.close()


def test_four_concurrent_writers_equal_a_sequential_run(store, tmp_path):
    start = time.time() + 2.0
    procs = []
    for run_id in _RUNS:
        script = _writer_script(
            store.store,
            f"""
            import time
            time.sleep(max(0, {start} - time.time()))
            from test_delta_store import _RUNS
            s.write_run({{"run_id": {run_id!r}}}, lambda snap: premerge(snap, images(*_RUNS[{run_id!r}])))
        """,
        )
        procs.append(subprocess.Popen([sys.executable, "-c", script], cwd=ROOT))
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    result = current(store)
    runs = store.snapshot().con.execute("SELECT run_id FROM runs").fetchall()
    assert sorted(r[0] for r in runs) == sorted(_RUNS)
    # The runs serialise: the result is that of running them one after another in some order.
    # Try first the order their commits landed in.
    landed = [e.run_id for e in sorted(store.history(tables=("tags",)), key=lambda e: e.version) if e.run_id]
    first = list(dict.fromkeys(reversed(landed)))[::-1]
    orders = [first] + [list(p) for p in itertools.permutations(_RUNS) if list(p) != first]
    for n, order in enumerate(orders):
        if _run_sequentially(str(tmp_path / f"seq{n}"), order) == result:
            break
    else:
        pytest.fail("the concurrent result equals no sequential order of the runs")


@pytest.mark.parametrize(
    "other, our_tags, conflicts",
    [(1, [], True), (7, [], False), (7, ["latest"], True), (7, ["stable"], False)],
)
def test_a_commit_landing_before_ours_sends_the_run_back_only_when_it_shares_a_key(store, other, our_tags, conflicts):
    """Between a run's read and its commit another run commits: an image or a tag both wrote
    means preparing again on the new state; disjoint keys let the commit through at once."""
    store.write_run({"run_id": "base"}, Changes(images=images(image(1, note="base"))))
    landed = []

    def meanwhile(table):
        if not landed:
            with DeltaStore(store.store) as s:
                theirs = images(image(other, 3, ["latest"], "other"))
                s.write_run({"run_id": "other"}, lambda snap: premerge(snap, theirs))
            landed.append(table)

    result = store.write_run(
        {"run_id": "ours"},
        lambda snap: premerge(snap, images(image(1, 2, note="ours"), image(2, 1, our_tags, "ours"))),
        _before_commit=meanwhile,
    )
    assert result.attempts == (2 if conflicts else 1)
    rows = {r[0]: r[1:] for r in store.snapshot().con.execute("SELECT id, exactness, labels FROM images").fetchall()}
    expected_first = (3, {"note": "other"}) if other == 1 else (2, {"note": "ours"})
    assert rows["crp00000000000000001"] == expected_first  # the more exact record, whoever committed last
    assert rows["crp00000000000000002"] == (1, {"note": "ours"})
    assert ("crp00000000000000007" in rows) is (other == 7)
    holders = dict(((r[2], r[3]) for r in current(store)["tags"]))
    if our_tags == ["latest"]:
        assert holders["latest"] == "crp00000000000000002"  # prepared again, ours claims it last


def _claimed_meanwhile_and_stopped(store, monkeypatch, landed: list) -> list:
    """Run `ours` claiming `latest` for image 2 while another run claims it for image 7 between
    our read and our commit, and stop ours between its images and tags commits (the tags commit's
    own check would mend what its images commit did): the holders of `latest` then."""

    def meanwhile(table):
        if not landed:
            with DeltaStore(store.store) as s:
                theirs = images(image(7, 3, ["latest"], "other"))
                s.write_run({"run_id": "other"}, lambda snap: premerge(snap, theirs))
            landed.append(table)

    commit = store._commit_append

    def stopped_before_tags(table, *args, **kwargs):
        if table == "tags":
            raise KeyboardInterrupt  # the run dies between its two commits
        return commit(table, *args, **kwargs)

    monkeypatch.setattr(store, "_commit_append", stopped_before_tags)
    with pytest.raises(KeyboardInterrupt):
        store.write_run(
            {"run_id": "ours"},
            lambda snap: premerge(snap, images(image(2, 1, ["latest"], "ours"))),
            _before_commit=meanwhile,
        )
    return [r[3] for r in current(store)["tags"] if r[2] == "latest"]


def test_a_tag_claimed_meanwhile_stops_the_images_commit(store, monkeypatch):
    """Another run claims our tag for another image between our read and our commit: our images
    commit must not land on top of it, or until our tags commit a reader sees the tag on both
    images, and a run stopped there leaves it so."""
    holders = _claimed_meanwhile_and_stopped(store, monkeypatch, [])
    assert holders == ["crp00000000000000002"]  # prepared again: ours took it from the other image


def test_a_claim_is_seen_when_a_third_run_commits_as_ours_is_checked(store, monkeypatch):
    """A third run commits between our loading the table to commit and our reading what was
    committed since our read: the commits checked are those after our read, by version. delta-rs's
    history gives the newest ones instead, numbered from the version loaded: the third run's
    commit stood in for the claim, and the tag ended on two images."""
    landed: list = []
    load = store._delta

    def loaded_then_a_third_commit(table, version=None):
        dt = load(table, version)
        if table == "images" and landed == ["images"]:
            landed.append("third")
            with DeltaStore(store.store) as s:
                s.write_changes("third", Changes(images=images(image(9, 1, [], "third"))))
        return dt

    monkeypatch.setattr(store, "_delta", loaded_then_a_third_commit)
    holders = _claimed_meanwhile_and_stopped(store, monkeypatch, landed)
    assert landed == ["images", "third"]
    assert holders == ["crp00000000000000002"]  # prepared again: ours took it from the other image


def test_concurrent_blind_appends_all_land(store):
    created = deltalake.DeltaTable(store.location("images")).version()
    procs = []
    start = time.time() + 2.0
    for w in range(4):
        script = _writer_script(
            store.store,
            f"""
            import time
            time.sleep(max(0, {start} - time.time()))
            for i in range(5):
                s.write_run({{"run_id": "w{w}-%d" % i}}, Changes(images=images(image({w} * 100 + i))))
        """,
        )
        procs.append(subprocess.Popen([sys.executable, "-c", script], cwd=ROOT))
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    assert store.snapshot().con.execute("SELECT count(*) FROM images").fetchall() == [(20,)]
    assert deltalake.DeltaTable(store.location("images")).version() == created + 20


def test_a_writer_killed_between_writing_files_and_committing_leaves_nothing(store, tmp_path):
    store.write_run({"run_id": "base"}, Changes(images=images(image(1))))
    before = current(store)
    marker = tmp_path / "written"
    script = _writer_script(
        store.store,
        f"""
        import time
        def hold(table):
            open({str(marker)!r}, "w").close()
            time.sleep(60)
        s.write_run({{"run_id": "killed"}}, Changes(images=images(image(2), image(3))), _before_commit=hold)
    """,
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT)
    deadline = time.time() + 60
    while not marker.exists():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    folder = deltalog.local_path(store.location("images"))
    live = set(deltalog.read_table(store.location("images")).files)
    written = [os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".parquet")]
    stray = [p for p in written if p not in live]
    assert stray  # its data files were written ...
    assert current(store) == before  # ... and are not part of the table
    assert store.vacuum(**SHORT)["images"] == len(stray)
    store.write_run({"run_id": "next"}, Changes(images=images(image(4))))
    assert len(current(store)["images"]) == 2


def test_a_writer_killed_at_any_moment_leaves_whole_commits(store):
    script = _writer_script(
        store.store,
        """
        for i in range(1000):
            s.write_run({"run_id": "k%d" % i}, Changes(images=images(*[image(10 * i + k) for k in range(10)])))
    """,
    )
    for delay in (0.9, 1.3, 1.7):
        proc = subprocess.Popen([sys.executable, "-c", script.replace("k%d", f"k{delay}-%d")], cwd=ROOT)
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        files = deltalog.read_table(store.location("images"))
        assert all(os.path.exists(p) for p in files.files)
        counts = store.snapshot().con.execute("SELECT run_id, count(*) FROM images_versions GROUP BY run_id").fetchall()
        assert all(count == 10 for _, count in counts)  # every commit holds its whole run
        assert deltalake.DeltaTable(store.location("images")).version() == files.version


def test_the_schema_version_is_marked_when_another_commit_came_first(tmp_path, monkeypatch):
    # Another process changed the table between this one reading it and marking it: the mark is
    # made on the newer version, not given up.
    tables = DeltaStore(str(tmp_path / "store"))
    location = tables.location("runs")
    os.makedirs(location)
    deltalake.DeltaTable.create(location, delta.DELTA_SCHEMAS["runs"], name="runs")
    stale = deltalake.DeltaTable(location)
    deltalake.DeltaTable(location).alter.set_table_properties({"delta.appendOnly": "false"})
    opened = []
    fresh = tables._delta

    def first_stale(table, version=None):
        opened.append(table)
        return stale if len(opened) == 1 else fresh(table, version)

    monkeypatch.setattr(tables, "_delta", first_stale)
    tables._mark_schema_version("runs")
    configuration = deltalake.DeltaTable(location).metadata().configuration
    assert configuration[deltalog.SCHEMA_VERSION_PROPERTY] == str(deltalog.SCHEMA_VERSION)
    assert len(opened) >= 2


def test_a_streamed_load_holds_only_its_keys_until_the_commit(tmp_path):
    """Batches read whole (Arrow IPC) keep every column in one buffer: what a run keeps of them
    until its commit (keys for conflicts, key hashes for OwnRows) must not pin those buffers, or
    a load of a million images held all of them (5 GB) until it committed."""
    padding = "x" * 20_000  # a config_raw-sized column, far larger than the keys
    path = str(tmp_path / "input.arrow")
    batches, rows = 8, 500
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, schema.IMAGES) as writer:
        for b in range(batches):
            table = images(*(dict(image(b * rows + i), config_raw=padding.encode()) for i in range(rows)))
            writer.write_table(table)
    input_bytes = batches * rows * len(padding)

    def stream():
        with pa.OSFile(path) as source:  # read, not mapped: the batches are allocated
            reader = pa.ipc.open_file(source)
            for i in range(reader.num_record_batches):
                yield pa.Table.from_batches([reader.get_batch(i)])

    held = []
    with DeltaStore(str(tmp_path / "store"), batch_rows=rows) as s:
        s.create()
        baseline = pa.total_allocated_bytes()
        s.write_run(
            {"run_id": "load"},
            Changes(images=stream()),
            _before_commit=lambda table: held.append(pa.total_allocated_bytes() - baseline),
        )
        assert len(current(s)["images"]) == batches * rows
    assert held and max(held) < input_bytes / 4, (held, input_bytes)


def _checkpointed(store) -> None:
    for run in range(25):  # past a checkpoint (every 20 commits)
        store.write_run({"run_id": f"r{run}"}, Changes(images=images(image(run % 7, note=str(run)))))


def test_checkpoints_read_alike_by_pyarrow_and_by_duckdb(store, monkeypatch):
    _checkpointed(store)
    read_by_arrow = []
    real = deltalog._checkpoint_rows

    def spy(paths):
        rows = real(paths)
        read_by_arrow.append(rows is not None)
        return rows

    monkeypatch.setattr(deltalog, "_checkpoint_rows", spy)
    by_arrow = {table: deltalog.read_table(store.location(table)) for table in delta.TABLES}
    assert read_by_arrow and all(read_by_arrow)
    monkeypatch.setattr(deltalog, "_checkpoint_rows", lambda paths: None)
    by_duckdb = {table: deltalog.read_table(store.location(table)) for table in delta.TABLES}
    assert by_arrow == by_duckdb
    assert by_arrow["images"].files and by_arrow["images"].key_ranges


def _images_checkpoint(store):
    """The images table's checkpoint past `_checkpointed`: its name, path and add column, and a
    function that writes the checkpoint again with another add column."""
    _checkpointed(store)
    log = os.path.join(deltalog.local_path(store.location("images")), "_delta_log")
    [name] = [n for n in os.listdir(log) if n.endswith(".checkpoint.parquet")]
    path = os.path.join(log, name)
    table = pq.read_table(path)

    def put_add(add, **options) -> None:
        pq.write_table(table.set_column(table.schema.get_field_index("add"), "add", add), path, **options)

    return name, path, table.column("add").combine_chunks(), put_add


def test_a_checkpoint_of_other_types_is_left_to_duckdb(store):
    """A checkpoint whose add action lacks a field the reader needs is read as before, by DuckDB,
    which says what is wrong, rather than guessed at."""
    name, path, add, put_add = _images_checkpoint(store)
    kept = [f.name for f in add.type if f.name != "deletionVector"]
    put_add(pa.StructArray.from_arrays([add.field(n) for n in kept], names=kept, mask=add.is_null()))
    assert deltalog._checkpoint_rows([path]) is None
    with pytest.raises(StoreError, match=f"table images: cannot read checkpoint {name}: "):
        deltalog.read_table(store.location("images"))


def test_a_checkpoint_that_expands_past_the_bound_is_left_to_duckdb(store, monkeypatch):
    """Small on disk, large once decompressed: pyarrow would hold it all in this process."""
    _, path, add, put_add = _images_checkpoint(store)
    padded = pa.array([None if v is None else "{" + " " * (1 << 20) + "}" for v in add.field("stats").to_pylist()])
    fields = [padded if f.name == "stats" else add.field(f.name) for f in add.type]
    put_add(pa.StructArray.from_arrays(fields, fields=list(add.type), mask=add.is_null()), compression="zstd")
    assert os.path.getsize(path) < 1 << 20
    assert deltalog._checkpoint_rows([path]) is not None
    monkeypatch.setattr(deltalog, "_ARROW_CHECKPOINT_BYTES", 1 << 20)
    assert deltalog._checkpoint_rows([path]) is None
    assert deltalog.read_table(store.location("images")).files  # DuckDB reads it


def test_a_file_declares_more_only_by_the_columns_asked(tmp_path):
    path = str(tmp_path / "f.parquet")
    pq.write_table(pa.table({"id": ["a", "b"], "blob": [b"x" * 500_000, b"y" * 500_000]}), path)
    metadata = pq.ParquetFile(path).metadata
    # The row group's total passes the bound, the id column's own size does not.
    assert deltalog.declares_more(metadata, ["id"], 100_000) is False
    assert deltalog.declares_more(metadata, ["blob"], 100_000) is True
    assert deltalog.declares_more(metadata, ["blob"], 10_000_000) is False
