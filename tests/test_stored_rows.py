"""The current state of a small store's images, settled in Python (`StoredRows`), against DuckDB's
resolution of the same files: stores made by random runs of data rows, tags-only rows, tombstones
and compactions."""

from __future__ import annotations

import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from indexer.store import arrow, delta, schema, stored_rows
from indexer.store.delta import Changes, DeltaStore, Snapshot, premerge
from indexer.store.delta_writer import _with_digests
from indexer.store.stored_rows import KEY_COLUMNS, StoredRows
from test_delta_store import image, images

TAGS = ("latest", "v1", "v2", "stable")
NAMES = ("app", "web")


def _id(n: int) -> str:
    return f"crp{n:017d}"


def _row(n: int, exactness: int, tags, note: str) -> dict:
    # One name per image, as an id is made from it; two sources, whose rows of one image differ.
    row = image(n, exactness, tags=sorted(set(tags)), note=note, name=NAMES[n % 2])
    return dict(row, source_path=f"/src/{note}")


_images = st.integers(1, 3)
_tags = st.lists(st.sampled_from(TAGS), max_size=3)
_steps = st.lists(
    st.one_of(
        st.tuples(st.just("merge"), _images, st.integers(1, 3), _tags, st.sampled_from(["a", "b"])),
        st.tuples(st.just("append"), _images, st.integers(1, 3), _tags, st.sampled_from(["a", "b"])),
        st.tuples(st.just("tags"), _images, _tags),
        st.tuples(st.just("retire"), _images),
        st.tuples(st.just("compact")),
    ),
    min_size=1,
    max_size=6,
)


def _apply(store: DeltaStore, number: int, step: tuple) -> None:
    run = {"run_id": f"run{number:03d}"}
    kind = step[0]
    if kind == "merge":
        _, n, exactness, tags, note = step
        store.write_run(run, lambda snap: premerge(snap, images(_row(n, exactness, tags, note))))
    elif kind == "append":  # written blindly: rows of one id pile up, as concurrent runs leave them
        _, n, exactness, tags, note = step
        store.write_run(run, Changes(images=images(_row(n, exactness, tags, note))))
    elif kind == "tags":
        _, n, tags = step
        table = arrow.rows_table([{"id": _id(n), "tags": sorted(set(tags))}], delta._IMAGE_TAGS)
        store.write_run(run, Changes(image_tags=table))
    elif kind == "retire":
        store.write_run(run, Changes(retired_images=[_id(step[1])]))
    else:
        store.compact(vacuum=False)


def _stored_rows(store: DeltaStore, files) -> StoredRows:
    kept = {}
    for path in files["images"].files:
        with store._fs.open_input_file(path) as source:
            kept[path] = pq.ParquetFile(source).read(columns=list(KEY_COLUMNS))
    return StoredRows(kept, store._fs.open_input_file)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=_steps)
def test_stored_rows_settle_what_duckdb_resolves(tmp_path_factory, steps):
    path = str(tmp_path_factory.mktemp("store") / "store")
    with DeltaStore(path) as store:
        store.create()
        for number, step in enumerate(steps):
            _apply(store, number, step)
        files = store.files()
        rows = _stored_rows(store, files)
        duck = Snapshot(files, store._duckdb)  # no own rows: every answer from the files
        ids = [_id(n) for n in range(1, 6)]
        expected = {r["id"]: r for r in duck.image_state(ids).to_pylist()}
        settled = rows.state(ids, hashed=())
        assert settled is not None
        by_python = {r["id"]: r for r in settled}
        assert by_python.keys() == expected.keys()
        for image_id, row in by_python.items():
            want = expected[image_id]
            for column in ("exactness", "tags", "registry", "name", "digest"):
                assert row[column] == want[column], (image_id, column)
            if row["content_hash"] is not None:
                assert row["content_hash"] == want["content_hash"]
        keys = [("r.example", name, tag) for name in NAMES for tag in TAGS]
        holders = rows.tag_holders(keys)
        assert holders is not None
        table = arrow.table({c: arrow.strings([k[i] for k in keys]) for i, c in enumerate(("registry", "name", "tag"))})
        assert sorted(holders) == sorted(tuple(r.values()) for r in duck.tag_holders(table).to_pylist())
        digests = {f"sha256:{n:064x}" for n in range(1, 6)}
        columns = ("id", "registry", "name", "digest", "id_origin", "tags")
        assert sorted(rows.with_digests(digests, columns)) == sorted(_with_digests(duck, digests, columns))
        for source in ("/src/a", "/src/b"):
            assert rows.source_tags("oci", source) == duck.source_tags("oci", source)
        # The same data as stored, by value here and by content hash in DuckDB.
        incoming = delta._cast("images", images(*(_row(n, 1, (), "a") for n in range(1, 4))))
        incoming = incoming.select([f.name for f in schema.IMAGES])
        hashes = dict(zip(incoming.column("id").to_pylist(), delta._hash_via(store._duckdb(), incoming)))
        same = {i for i, h in hashes.items() if i in expected and expected[i]["content_hash"] == h}
        assert rows.same_data(incoming, delta.DATA_COLUMNS) == same


def test_the_tags_of_a_source_are_those_of_the_images_whose_current_row_is_its(tmp_path):
    with DeltaStore(str(tmp_path / "store")) as store:
        store.create()
        # Image 1 read from /src/a, then more exactly from /src/b: b's now, with a's tags pooled.
        store.write_run({"run_id": "a"}, lambda snap: premerge(snap, images(_row(1, 1, ["v1"], "a"))))
        store.write_run({"run_id": "b"}, lambda snap: premerge(snap, images(_row(1, 3, ["v2"], "b"))))
        store.write_run({"run_id": "c"}, lambda snap: premerge(snap, images(_row(2, 1, ["stable"], "a"))))
        rows = _stored_rows(store, store.files())
        duck = Snapshot(store.files(), store._duckdb)
        for source, tags in (
            ("/src/a", [("r.example", "app", "stable")]),
            ("/src/b", [("r.example", "web", "v1"), ("r.example", "web", "v2")]),
        ):
            assert duck.source_tags("oci", source) == tags
            assert rows.source_tags("oci", source) == tags


def test_a_hash_the_rows_lack_is_left_to_duckdb(tmp_path):
    with DeltaStore(str(tmp_path / "store")) as store:
        store.create()
        # Appended blindly, with no content hash, as a run that never started DuckDB writes it.
        store.write_run({"run_id": "a"}, Changes(images=images(_row(1, 1, ["v1"], "a"))))
        rows = _stored_rows(store, store.files())
        assert rows.state([_id(1)], hashed=()) is not None
        assert rows.state([_id(1)]) is None  # the batch's own id would compare by its hash


def test_a_stored_image_settled_from_the_rows_is_still_compared_by_its_hash(tmp_path):
    path = str(tmp_path / "store")
    with DeltaStore(path) as store:
        store.create()
        store.write_run({"run_id": "a"}, Changes(images=images(_row(1, 1, ["v1"], "a"))))
    again = _row(1, 1, ["v1"], "b")
    with DeltaStore(path) as store:  # another writer: DuckDB compares, and the row keeps its hash
        store.write_run({"run_id": "b"}, lambda snap: premerge(snap, images(again)))
    with DeltaStore(path) as store:
        snapshot = store.snapshot(seed=True)
        assert snapshot.rows is not None
        # The same image again: unchanged, so nothing is written, as when DuckDB answers.
        changes = premerge(snapshot, images(again))
        assert changes.images is None and changes.image_tags is None
        assert premerge(snapshot, images(_row(1, 1, ["v1"], "c"))).images is not None


def test_a_row_group_declared_larger_than_the_bound_is_left_to_duckdb(tmp_path, monkeypatch):
    with DeltaStore(str(tmp_path / "store")) as store:
        store.create()
        store.write_run({"run_id": "a"}, Changes(images=images(_row(1, 1, ["v1"], "a"))))
        rows = _stored_rows(store, store.files())
        incoming = delta._cast("images", images(_row(1, 1, (), "a"))).select([f.name for f in schema.IMAGES])
        assert rows.same_data(incoming, delta.DATA_COLUMNS) == {_id(1)}
        monkeypatch.setattr(stored_rows, "MAX_READ_BYTES", 100)
        assert rows.same_data(incoming, delta.DATA_COLUMNS) is None
