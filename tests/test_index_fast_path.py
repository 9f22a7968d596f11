"""The index path's shortcuts give what the long way gives: Arrow arrays built from their buffers,
blobs read through a folder's listing, and a new store's questions answered from what the run
itself wrote (delta.OwnRows) instead of from its files."""

from __future__ import annotations

import dataclasses
import json
import os
import types
from typing import Callable

import pyarrow as pa
import pytest
from builders import Blobs, named, write_dir
from hypothesis import given, settings, strategies as st

from indexer.errors import SourceError
from indexer.model import ImageRecord
from indexer.sources import layout as layout_module, parse_source
from indexer.sources.parse import Context
from indexer.store import arrow, delta, stored_rows
from indexer.store.delta_writer import DeltaWriter
from indexer.store.writer import now_utc

# ----------------------------------------------------------------------------- Arrow builders

texts = st.text(max_size=12) | st.sampled_from(["", "é", "\U0001f600", "a\x00b"])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.none() | texts, max_size=40),
    st.lists(st.none() | st.binary(max_size=8), max_size=40),
    st.lists(st.none() | st.integers(-(2**63), 2**63 - 1), max_size=40),
    st.lists(st.none() | st.integers(-128, 127), max_size=40),
    st.lists(st.none() | st.booleans(), max_size=40),
    st.lists(st.none() | st.lists(texts, max_size=3), max_size=20),
)
def test_arrays_from_buffers_equal_pa_array(strings, binaries, int64s, int8s, bools, string_lists):
    assert arrow.strings(strings).equals(pa.array(strings, pa.string()))
    assert arrow.binaries(binaries).equals(pa.array(binaries, pa.binary()))
    assert arrow.int64s(int64s).equals(pa.array(int64s, pa.int64()))
    assert arrow.int8s(int8s).equals(pa.array(int8s, pa.int8()))
    assert arrow.bools(bools).equals(pa.array(bools, pa.bool_()))
    assert arrow.string_lists(string_lists).equals(pa.array(string_lists, pa.list_(pa.string())))


@pytest.mark.parametrize(
    "build, values",
    [
        (arrow.strings, ["a", 1]),
        (arrow.strings, ["\ud800"]),  # a lone surrogate is no UTF-8
        (arrow.binaries, [b"a", "a"]),
        (arrow.int64s, [1, True]),
        (arrow.int64s, [1, 1.5]),
        (arrow.int64s, [2**63]),
        (arrow.int8s, [128]),
        (arrow.bools, [True, 1]),
        (arrow.string_lists, [["a"], [2]]),
    ],
)
def test_values_of_another_type_are_refused(build, values):
    with pytest.raises((TypeError, OverflowError, UnicodeEncodeError)):
        build(values)


# ----------------------------------------------------------------------------- blobs of a layout


def _special_layout(tmp_path, spoil) -> str:
    """A layout of 80 images (enough for its blob folder to be listed) whose 70th image's `which`
    blob is made special after the files are written."""
    blobs = Blobs()
    top = [named(blobs.image(layers=(b"base", f"layer-{i}".encode())), f"v{i}") for i in range(80)]
    root = write_dir(str(tmp_path / "layout"), blobs.layout_files(top))
    manifest_digest = top[70]["digest"]
    manifest = json.loads(blobs.blobs[manifest_digest])
    spoil(root, manifest_digest, manifest)
    return root


def _blob(root, digest) -> str:
    return os.path.join(root, "blobs", *digest.split(":"))


def _replace(kind):
    def spoil(root, manifest_digest, manifest):
        target = {"manifest": manifest_digest, "config": manifest["config"]["digest"]}.get(kind)
        if target is None:
            target = manifest["layers"][1]["digest"]
        path = _blob(root, target)
        os.remove(path)
        if kind.endswith("fifo"):
            os.mkfifo(path)
        elif kind.endswith("outside"):
            outside = os.path.join(os.path.dirname(root), "outside")
            with open(outside, "wb") as f:
                f.write(b"x")
            os.symlink(outside, path)
        elif kind.endswith("inside"):
            os.symlink(os.path.join(root, "oci-layout"), path)
        # else: missing

    return spoil


def _walked(root, monkeypatch, plain: bool) -> list:
    with monkeypatch.context() as patch:
        if not plain:
            patch.setattr(layout_module, "_DIR_FD", False)  # every blob the checked way
        source = parse_source(root)
        ctx = Context(source_kind=source.kind, source_path=source.location)
        return [str(item) if isinstance(item, SourceError) else item for item in source.records(ctx)]


@pytest.mark.parametrize(
    "kind", ["manifest", "config", "layer", "config-fifo", "layer-fifo", "config-outside", "manifest-inside"]
)
def test_blobs_read_through_the_listing_fail_as_the_checked_way_words_it(tmp_path, monkeypatch, kind):
    root = _special_layout(tmp_path, _replace(kind))
    fast = _walked(root, monkeypatch, plain=True)
    checked = _walked(root, monkeypatch, plain=False)
    assert fast == checked
    assert sum(isinstance(item, ImageRecord) for item in fast) == 79
    [error] = [item for item in fast if isinstance(item, str)]
    assert error.startswith(root) or error.startswith(os.path.join(root, "blobs")), error


def test_the_blob_size_cache_is_bounded_and_answers_alike(tmp_path, monkeypatch):
    root = _special_layout(tmp_path, _replace("layer"))
    unbounded = _walked(root, monkeypatch, plain=True)
    largest = []
    size_of = layout_module.DirBlobs.blob_size

    def watched(self, digest):
        largest.append(len(self._sizes))
        return size_of(self, digest)

    monkeypatch.setattr(layout_module, "_MAX_SIZES", 5)
    monkeypatch.setattr(layout_module.DirBlobs, "blob_size", watched)
    assert _walked(root, monkeypatch, plain=True) == unbounded
    assert max(largest) == 5  # 80 own layers were asked about, and a few kept


# ----------------------------------------------------------------------------- a new store


def _records(tmp_path, count: int, name: str = "team/app") -> list[ImageRecord]:
    blobs = Blobs()
    top = [named(blobs.image(layers=(f"{name}-{i}".encode(),)), f"v{i}") for i in range(count)]
    root = write_dir(str(tmp_path / name.replace("/", "-")), blobs.layout_files(top))
    source = parse_source(root)
    ctx = Context(source_kind=source.kind, source_path=source.location, registry="cr.example", repository=name)
    return [r for r in source.records(ctx) if isinstance(r, ImageRecord)]


def _state(store: str) -> list[tuple]:
    with delta.DeltaStore(store) as tables:
        snapshot = tables.snapshot()
        ids = [row[0] for row in snapshot.con.execute("SELECT id FROM images").fetchall()]
        rows = snapshot.image_state(ids).to_pylist()  # the content hash too, which the views leave out
        return sorted((r["id"], r["tags"], r["exactness"], r["content_hash"]) for r in rows)


def _never_read(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a new store's own rows were read back")

    monkeypatch.setattr(delta, "_arrow", refuse)


def test_a_new_store_is_written_without_reading_its_files(tmp_path, monkeypatch):
    records = _records(tmp_path, 6)
    store = str(tmp_path / "store")
    with DeltaWriter(store) as writer, monkeypatch.context() as patch:
        _never_read(patch)
        writer.write(records[:3], now_utc())
        writer.write(records[3:], now_utc())
    assert [row[0] for row in _state(store)] == sorted(r.id for r in records)


def _runs(tmp_path, store: str, steps) -> list[tuple]:
    with DeltaWriter(store) as writer:
        for records in steps:
            writer.write(records, now_utc())
    return _state(store)


def _from_files(monkeypatch, run):
    """`run()` with every question sent to the files: what the own rows must answer alike."""
    with monkeypatch.context() as patch:
        patch.setattr(delta.OwnRows, "covers", lambda self, files: False)
        return run()


def test_own_rows_answer_as_the_files_do(tmp_path, monkeypatch):
    records = _records(tmp_path, 6)
    others = _records(tmp_path, 2, "team/other")
    # a tag that moves to another image, one record again, one less exact
    moved = dataclasses.replace(records[4], tags=("v0",))
    poorer = dataclasses.replace(records[5], exactness=1, tags=("v5", "extra"))
    steps = [records[:3], records[3:], others, [moved, records[1], poorer]]
    with_own = _runs(tmp_path, str(tmp_path / "own"), steps)
    from_files = _from_files(monkeypatch, lambda: _runs(tmp_path, str(tmp_path / "files"), steps))
    assert with_own == from_files
    tags = {row[0]: row[1] for row in with_own}
    assert tags[records[0].id] == [] and tags[records[4].id] == ["v0", "v4"]
    assert tags[records[5].id] == ["extra", "v5"]


def test_a_tag_claimed_after_a_tags_only_row_moves_as_read_from_the_files(tmp_path, monkeypatch):
    # records[2] with new tags only is a tags-only row, which carries no name: its tags are kept
    # alone, and a later claim of one of them must still be seen.
    records = _records(tmp_path, 4)
    steps = [
        records[:3],
        [dataclasses.replace(records[2], tags=("v2", "next"))],
        [dataclasses.replace(records[3], tags=("next",))],
    ]
    with_own = _runs(tmp_path, str(tmp_path / "own"), steps)
    from_files = _from_files(monkeypatch, lambda: _runs(tmp_path, str(tmp_path / "files"), steps))
    assert with_own == from_files
    tags = {row[0]: row[1] for row in with_own}
    assert tags[records[2].id] == ["v2"] and tags[records[3].id] == ["next"]


def _stored_hashes(store: str) -> list:
    """content_hash of every row version of the images table, read from its files."""
    import pyarrow.parquet as pq

    with delta.DeltaStore(store) as tables:
        files = tables.files()["images"].files
    return [h for path in files for h in pq.read_table(path, columns=["content_hash"]).column(0).to_pylist()]


def _versions(store: str) -> int:
    with delta.DeltaStore(store) as tables:
        return tables.snapshot().con.execute("SELECT count(*) FROM images_versions").fetchone()[0]


def test_a_new_store_run_writes_no_hash_and_unchanged_records_still_append_nothing(tmp_path):
    records = _records(tmp_path, 4)
    store = str(tmp_path / "store")
    with DeltaWriter(store) as writer:
        writer.write(records, now_utc())
    assert _stored_hashes(store) == [None] * 4
    # Another run reads the store: the stored rows' hashes come from their data, and equal the
    # incoming ones, so the same records append nothing.
    with DeltaWriter(store) as writer:
        writer.write(records, now_utc())
    assert _versions(store) == 4
    # A record whose data changed is a new version, and its row is written with its hash.
    changed = dataclasses.replace(records[1], labels=(("changed", "yes"),))
    with DeltaWriter(store) as writer:
        writer.write([changed, *records[2:]], now_utc())
    hashes = _stored_hashes(store)
    assert _versions(store) == 5 and hashes.count(None) == 4
    with delta.DeltaStore(store) as tables:
        state = tables.snapshot().image_state([r.id for r in records]).to_pylist()
    assert len({row["content_hash"] for row in state}) == 4 and None not in {row["content_hash"] for row in state}


def test_compaction_stores_the_missing_hashes(tmp_path):
    records = _records(tmp_path, 5)
    store = str(tmp_path / "store")
    with DeltaWriter(store) as writer:
        writer.write(records[:3], now_utc())
        writer.write(records[3:], now_utc())
    with delta.DeltaStore(store) as tables:
        computed = {
            r["id"]: r["content_hash"] for r in tables.snapshot().image_state([r.id for r in records]).to_pylist()
        }
        tables.compact(vacuum=False)
    assert None not in computed.values()
    with delta.DeltaStore(store) as tables:
        files = tables.files()["images"].files
        con = tables.snapshot().versions_con
        listed = ", ".join(f"'{p}'" for p in files)
        stored = dict(con.execute(f"SELECT id, content_hash FROM read_parquet([{listed}])").fetchall())
    assert stored == computed


def test_a_new_store_run_never_imports_duckdb(tmp_path):
    from conftest import modules_after_cli

    archive = os.path.join(os.path.dirname(__file__), "fixtures", "real", "docker-save-app.tar")
    store = str(tmp_path / "store")
    loaded, _ = modules_after_cli([["index", archive, "--store", store, "--quiet"]], ("duckdb",))
    assert loaded == []
    assert _stored_hashes(store) and set(_stored_hashes(store)) == {None}


def test_beyond_the_key_limit_questions_go_to_the_files(tmp_path, monkeypatch):
    records = _records(tmp_path, 6)
    monkeypatch.setattr(delta, "MAX_OWN_KEYS", 2)
    store = str(tmp_path / "store")
    with DeltaWriter(store) as writer:
        writer.write(records[:3], now_utc())
        assert not writer._tables._own.complete and not writer._tables._own.ids
        writer.write([dataclasses.replace(records[3], tags=("v0",)), *records[4:]], now_utc())
    tags = {row[0]: row[1] for row in _state(store)}
    assert tags[records[0].id] == [] and tags[records[3].id] == ["v0"]


def _two_processes_of_one_run(tmp_path, store: str, records, run_id: str) -> tuple[list[tuple], bool]:
    """Two writers of one store, as two workers of `index --jobs`: the second writes after the
    first, claiming one of its tags and writing one of its images again."""
    with DeltaWriter(store, run_id) as first, DeltaWriter(store, run_id) as second:
        first.write(records[:3], now_utc())
        second.write([dataclasses.replace(records[3], tags=("v0", "v3")), records[1]], now_utc())
        second.write(records[4:], now_utc())
        covered = second._tables.snapshot(run_id=second.run_id).own is not None
    return _state(store), covered


def test_a_run_takes_in_the_keys_its_other_processes_wrote(tmp_path, monkeypatch):
    records = _records(tmp_path, 6)
    absorbed, covered = _two_processes_of_one_run(tmp_path, str(tmp_path / "one"), records, "a" * 32)
    assert covered  # the second writer answers from memory, the first one's files included
    from_files, _ = _from_files(
        monkeypatch, lambda: _two_processes_of_one_run(tmp_path, str(tmp_path / "files"), records, "b" * 32)
    )
    assert absorbed == from_files
    tags = {row[0]: row[1] for row in absorbed}
    assert tags[records[0].id] == [] and tags[records[3].id] == ["v0", "v3"]


def test_files_of_another_run_are_not_taken_in(tmp_path):
    records = _records(tmp_path, 4)
    store = str(tmp_path / "store")
    with DeltaWriter(store, "a" * 32) as first, DeltaWriter(store, "b" * 32) as second:
        second.write(records[2:3], now_utc())
        first.write(records[:2], now_utc())
        second.write(records[3:], now_utc())
        assert second._tables.snapshot(run_id=second.run_id).own is None


def _runs_each_its_own(store: str, steps) -> list[tuple]:
    """Each step a run of its own, as one `imgdex index` process per archive."""
    for records in steps:
        with DeltaWriter(store) as writer:
            writer.write(records, now_utc())
    return _state(store)


def test_a_run_into_a_small_store_others_wrote_answers_from_its_keys(tmp_path, monkeypatch):
    records = _records(tmp_path, 6)
    store = str(tmp_path / "store")
    with DeltaWriter(store) as writer:
        writer.write(records[:3], now_utc())
    with DeltaWriter(store) as writer, monkeypatch.context() as patch:
        _never_read(patch)
        writer.write(records[3:4], now_utc())  # a new image and a new tag: nothing to read back
        assert writer._tables._con is None  # DuckDB never started
    assert [row[0] for row in _state(store)] == sorted(r.id for r in records[:4])


def test_seeded_keys_answer_as_the_files_do(tmp_path, monkeypatch):
    records = _records(tmp_path, 6)
    others = _records(tmp_path, 2, "team/other")
    moved = dataclasses.replace(records[4], tags=("v0",))
    poorer = dataclasses.replace(records[5], exactness=1, tags=("v5", "extra"))
    steps = [records[:3], records[3:4], others, [moved], [records[1]], [poorer], records[4:5]]
    seeded = _runs_each_its_own(str(tmp_path / "seeded"), steps)
    from_files = _from_files(monkeypatch, lambda: _runs_each_its_own(str(tmp_path / "files"), steps))
    assert [row[:3] for row in seeded] == [row[:3] for row in from_files]
    tags = {row[0]: row[1] for row in seeded}
    assert tags[records[0].id] == [] and tags[records[4].id] == ["v0", "v4"]
    assert tags[records[5].id] == ["extra", "v5"]


@pytest.mark.parametrize("limit", ["SEED_ROWS", "SEED_FILES"])
def test_a_larger_store_is_not_read_for_its_keys(tmp_path, monkeypatch, limit):
    records = _records(tmp_path, 4)
    store = str(tmp_path / "store")
    with DeltaWriter(store) as writer:
        writer.write(records[:2], now_utc())
        writer.write(records[2:3], now_utc())
    monkeypatch.setattr(delta, limit, 1)
    opened = _parquet_opened(monkeypatch)
    with DeltaWriter(store) as writer:
        writer.write(records[3:], now_utc())
        assert writer._tables.snapshot().own is None
    # The log's file list and row counts tell, before a file is opened (a store of 100,000 images in
    # two files had its first 50,000 read for nothing).
    assert opened == []
    assert [row[0] for row in _state(store)] == sorted(r.id for r in records)


def _parquet_opened(monkeypatch) -> list:
    """Every Parquet file that delta.py opens with pq.ParquetFile from now on."""
    opened = []
    real = delta.pq.ParquetFile

    def spy(source, *args, **kwargs):
        opened.append(source)
        return real(source, *args, **kwargs)

    monkeypatch.setattr(delta, "pq", types.SimpleNamespace(**{**vars(delta.pq), "ParquetFile": spy}))
    return opened


@pytest.mark.parametrize(
    "change, duckdb",
    [
        ({"tags": ("v0",)}, False),  # the same image again: nothing to write
        ({"tags": ("v0", "again")}, False),  # with a new tag: a tags-only row
        ({"tags": ("v0",), "labels": (("changed", "1"),)}, True),  # other data: merged by DuckDB's rows
    ],
    ids=["same", "new-tag", "other-data"],
)
def test_an_image_indexed_again_into_a_small_store_is_compared_from_its_rows(tmp_path, monkeypatch, change, duckdb):
    records = _records(tmp_path, 3)
    again = dataclasses.replace(records[0], **change)
    steps = [*([r] for r in records), [again]]
    store = str(tmp_path / "store")
    _runs_each_its_own(store, steps[:-1])
    versions = _versions(store)
    assert _one_run_without_duckdb(store, steps[-1]) is not duckdb
    if change == {"tags": ("v0",)}:
        assert _versions(store) == versions  # no row written
    expected = _from_files(monkeypatch, lambda: _runs_each_its_own(str(tmp_path / "files"), steps))
    assert [row[:3] for row in _state(store)] == [row[:3] for row in expected]


def test_many_images_indexed_again_are_compared_by_duckdb(tmp_path, monkeypatch):
    records = _records(tmp_path, 3)
    store = str(tmp_path / "store")
    _runs_each_its_own(store, [records])
    versions = _versions(store)
    # Each image compared by value costs a row group read: past a few, DuckDB's hashes cost less,
    # and the log's id ranges tell so before any file is read for its keys.
    monkeypatch.setattr(stored_rows, "MAX_COMPARED", 2)
    opened = _parquet_opened(monkeypatch)
    assert not _one_run_without_duckdb(store, records)
    assert opened == []
    assert _versions(store) == versions
    monkeypatch.setattr(stored_rows, "MAX_COMPARED", 3)
    assert _one_run_without_duckdb(store, records)
    assert _versions(store) == versions


def _one_run_without_duckdb(store: str, records) -> bool:
    """One run of `records` into `store`; whether it settled them without starting DuckDB."""
    with DeltaWriter(store) as writer:
        writer.write(records, now_utc())
        return writer._tables._con is None


@pytest.mark.parametrize("holder", [0, 2], ids=["oldest", "newest"])
def test_a_tag_held_in_a_small_store_moves_without_starting_duckdb(tmp_path, monkeypatch, holder):
    records = _records(tmp_path, 4)
    store = str(tmp_path / "store")
    _runs_each_its_own(store, [[r] for r in records[:3]])
    opened = _parquet_opened(monkeypatch)
    # The tag of the image indexed last (a moved :latest) or first: every images file is read for
    # its keys, and the holder's rows settle the move.
    moved = dataclasses.replace(records[3], tags=(f"v{holder}",))
    assert _one_run_without_duckdb(store, [moved])
    assert len(opened) == 3
    tags = {row[0]: row[1] for row in _state(store)}
    assert tags[records[holder].id] == [] and tags[records[3].id] == [f"v{holder}"]
    expected = _from_files(
        monkeypatch,
        lambda: _runs_each_its_own(str(tmp_path / "files"), [*([r] for r in records[:3]), [moved]]),
    )
    assert [row[:3] for row in _state(store)] == [row[:3] for row in expected]


def test_keys_seeded_at_a_first_batch_answer_the_later_ones_as_the_files_do(tmp_path, monkeypatch):
    records = _records(tmp_path, 6)
    moved = dataclasses.replace(records[4], tags=("v0",))
    batches = [records[3:4], [moved], [records[1]], records[5:6]]

    def run(store: str, opened: Callable[[], list] = list) -> tuple[list[tuple], list]:
        _runs_each_its_own(store, [[r] for r in records[:3]])
        files = opened()
        return _runs(tmp_path, store, batches), files

    with monkeypatch.context() as patch:
        seeded, opened = run(str(tmp_path / "seeded"), lambda: _parquet_opened(patch))
    assert len(opened) == 3  # the first batch, all new, read the three images files for their keys
    from_files, _ = _from_files(monkeypatch, lambda: run(str(tmp_path / "files")))
    assert [row[:3] for row in seeded] == [row[:3] for row in from_files]
    tags = {row[0]: row[1] for row in seeded}
    assert tags[records[0].id] == [] and tags[records[4].id] == ["v0"] and tags[records[5].id] == ["v5"]


def _cut_short(paths) -> None:
    for path in paths:
        with open(path, "r+b") as f:
            f.truncate(10)


def _store_of_one_run(tmp_path) -> tuple[str, dict]:
    """A store one writer filled with two images, and its data files by table."""
    store = str(tmp_path / "store")
    with DeltaWriter(store) as writer:
        writer.write(_records(tmp_path, 2), now_utc())
    with delta.DeltaStore(store) as tables:
        return store, {table: tables.files()[table].files for table in ("images", "tags")}


def test_a_store_file_that_cannot_be_read_leaves_the_questions_to_the_files(tmp_path):
    store, files = _store_of_one_run(tmp_path)
    # An images file cut short: seeding stops, and the questions go to the files, as before.
    _cut_short(files["images"])
    with DeltaWriter(store) as writer:
        snapshot = writer._tables.snapshot(seed=True)
        assert snapshot.own is None
        assert not writer._tables._seeded


def test_a_tags_file_is_not_opened_to_seed_the_keys(tmp_path):
    store, files = _store_of_one_run(tmp_path)
    tags = files["tags"]
    with delta.DeltaStore(store) as tables:
        newest = tables.snapshot().latest_written_at()
    assert tags and newest is not None
    # Only the images rows hold keys, and a tags file's name bounds its newest row.
    _cut_short(tags)
    with DeltaWriter(store) as writer:
        snapshot = writer._tables.snapshot(seed=True)
        assert snapshot.own is not None and snapshot.own.files >= set(tags)
        assert snapshot.latest_written_at() == newest


def test_rows_another_writer_added_are_read_from_the_files(tmp_path, monkeypatch):
    records = _records(tmp_path, 4)
    store = str(tmp_path / "store")
    with DeltaWriter(store) as first:
        first.write(records[:2], now_utc())
        with DeltaWriter(store) as second:
            second.write([dataclasses.replace(records[2], tags=("v0",))], now_utc())
        # The store now holds a file the first writer did not write: it must read to see v0 moved.
        first.write([records[3]], now_utc())
        first.write([dataclasses.replace(records[3], tags=("v0", "v3"))], now_utc())
    tags = {row[0]: row[1] for row in _state(store)}
    assert tags[records[0].id] == [] and tags[records[2].id] == [] and tags[records[3].id] == ["v0", "v3"]


# ----------------------------------------------------------------------------- a store's states, for re-crawls


def test_repository_states_come_in_name_order_with_tags_and_exact_digests(tmp_path):
    apps = _records(tmp_path, 3, "team/app")
    tools = _records(tmp_path, 2, "team/app/tools")
    other = _records(tmp_path, 1, "teamx")
    loose = dataclasses.replace(tools[1], exactness=1)
    store = str(tmp_path / "store")
    with DeltaWriter(store) as writer:
        assert list(writer.repository_states("cr.example")) == []  # no store yet
        writer.write([*other, *apps, tools[0], loose], now_utc())
        states = list(writer.repository_states("cr.example", "team/app"))
        assert list(writer.repository_states("elsewhere.example")) == []
        everything = [name for name, _, _ in writer.repository_states("cr.example")]
    assert [name for name, _, _ in states] == ["team/app", "team/app/tools"]  # not teamx: not below
    app, app_tools = states
    assert app[1] == {f"v{i}": r.digest for i, r in enumerate(apps)} and app[2] == {r.digest for r in apps}
    assert app_tools[1] == {"v0": tools[0].digest, "v1": tools[1].digest}
    assert app_tools[2] == {tools[0].digest}  # the loose record's digest is not exact
    assert everything == ["team/app", "team/app/tools", "teamx"]


def test_a_store_file_declaring_huge_key_columns_leaves_the_questions_to_the_files(tmp_path, monkeypatch):
    store, _ = _store_of_one_run(tmp_path)
    # Few rows of huge strings would be read whole by this process; DuckDB reads them under its limit.
    monkeypatch.setattr(delta, "SEED_FILE_BYTES", 10)
    with DeltaWriter(store) as writer:
        assert writer._tables.snapshot(seed=True).own is None
    monkeypatch.setattr(delta, "SEED_FILE_BYTES", 1 << 20)
    with DeltaWriter(store) as writer:
        assert writer._tables.snapshot(seed=True).own is not None


def test_the_tags_of_a_source_in_a_small_store_come_from_its_rows(tmp_path, monkeypatch):
    """What a whole engine read again asks before it retires tags: answered from a small store's
    rows without starting DuckDB, as the files answer it, and its retirement settled alike."""
    records = _records(tmp_path, 3)
    others = _records(tmp_path, 2, "team/other")
    store = str(tmp_path / "store")
    _runs_each_its_own(store, [records[:2], others, records[2:]])
    kind, location = records[0].source_kind, records[0].source_path
    with DeltaWriter(store) as writer:
        tags = writer.source_tags(kind, location)
        assert writer._tables._con is None
        writer.retire_tags("cr.example", "team/app", ["v1"])
        assert writer._tables._con is None
    assert tags == [("cr.example", "team/app", f"v{i}") for i in range(3)]
    with DeltaWriter(store) as writer:
        assert writer.source_tags(others[0].source_kind, others[0].source_path) == [
            ("cr.example", "team/other", f"v{i}") for i in range(2)
        ]
    # The same questions of the files alone
    files = str(tmp_path / "files")
    _runs_each_its_own(files, [records[:2], others, records[2:]])
    with monkeypatch.context() as patch:
        patch.setattr(stored_rows.StoredRows, "source_tags", lambda self, kind, location: None)
        with DeltaWriter(files) as writer:
            assert writer.source_tags(kind, location) == tags
            writer.retire_tags("cr.example", "team/app", ["v1"])
    assert _state(store) == _state(files)
