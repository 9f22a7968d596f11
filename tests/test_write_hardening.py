"""The writer under bad records and failing disks: one bad record never sinks a run, a full
disk is one line that names the store and leaves it as it was, a run that lands nothing
creates no store, and URL credentials never reach the runs table or a message."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

import indexer.run as run_module
from indexer.errors import SourceError, StoreError
from indexer.model import Blob, HistoryEntry, ImageRecord
from indexer.run import RunObserver, index_sources
from indexer.sources import parse_source
from indexer.sources.parse import Context
from indexer.store import paths
from indexer.store.delta_writer import DeltaWriter
from indexer.store.writer import now_utc
from queries import engine
from queries.cli import cli

from builders import Blobs, named, write_dir

REGISTRY = "reg.example"


def oci_layout(root, count, repo="team/app", salt="") -> str:
    blobs = Blobs()
    top = []
    for i in range(count):
        desc = blobs.image(created=f"2026-01-01T00:00:00.{i:09d}Z", layers=(b"base", f"{salt}top-{i}".encode()))
        top.append(named(desc, f"{REGISTRY}/{repo}:t{i}"))
    return write_dir(str(root), blobs.layout_files(top))


def records_of(spec: str) -> list[ImageRecord]:
    source = parse_source(spec)
    return list(source.records(Context(source.kind, source.location)))


class Fixed:
    """A source that yields given records, errors and notes."""

    kind = "test"
    reads_layers = True
    reads_index = False

    def __init__(self, items, location="fixed", notes=()):
        self.items = items
        self.location = location
        self.notes = notes

    def records(self, ctx):
        for note in self.notes:
            ctx.note(note)
        return iter(self.items)


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def count(store) -> int:
    return engine.connect(str(store)).execute("SELECT count(*) FROM images").fetchall()[0][0]


def runs(store) -> list[tuple]:
    query = "SELECT sources, images_indexed, images_failed, errors FROM runs ORDER BY started_at"
    return engine.connect(str(store)).execute(query).fetchall()


# ---------------------------------------------------------------------------------------------
# one bad record never sinks a run
# ---------------------------------------------------------------------------------------------


def _spoil(record: ImageRecord, how: str) -> ImageRecord:
    if how == "not-convertible":  # a label value Arrow cannot make a string of
        return dataclasses.replace(record, labels=(("broken", 12345),))
    if how == "too-big":  # past int64, which the Arrow build refuses with an OverflowError
        return dataclasses.replace(record, layers=(Blob(record.layers[0].digest, 2**70, record.layers[0].media_type),))
    if how == "refused-by-duckdb":  # Arrow takes it, DuckDB would refuse to read it: refused before writing
        return dataclasses.replace(record, labels=(("a", "1"), ("a", "2")))
    raise AssertionError(how)


@pytest.mark.parametrize("batch", [5000, 4, 1])
def test_bad_records_are_isolated_and_the_rest_lands(tmp_path, monkeypatch, batch):
    records = [r for r in records_of(f"oci:{oci_layout(tmp_path / 'layout', 9)}") if isinstance(r, ImageRecord)]
    assert len(records) == 9
    spoiled = {2: "not-convertible", 5: "too-big", 7: "refused-by-duckdb"}
    items = [
        dataclasses.replace(_spoil(r, spoiled[i]), source_path=f"/data/bad-{i}.tar") if i in spoiled else r
        for i, r in enumerate(records)
    ]
    monkeypatch.setattr(run_module, "parse_source", lambda spec, _options=None: Fixed(items))
    monkeypatch.setattr(run_module, "BATCH", batch)
    errors = []
    store = tmp_path / "store"
    with DeltaWriter(str(store)) as writer:
        summary = index_sources(["fixed"], writer, observer=RunObserver(on_error=errors.append))
    assert (summary.indexed, summary.failed) == (6, 3)
    assert errors == summary.errors and len(errors) == 3
    for i in spoiled:
        [line] = [e for e in errors if f"/data/bad-{i}.tar" in e]
        assert line.startswith(f"/data/bad-{i}.tar: image {records[i].id} ") and "\n" not in line
    stored = {row[0] for row in engine.connect(str(store)).execute("SELECT id FROM images").fetchall()}
    assert stored == {r.id for i, r in enumerate(records) if i not in spoiled}
    [(sources, indexed, failed, run_errors)] = runs(store)
    assert (sources, indexed, failed) == (["fixed"], 6, 3) and run_errors == errors


@pytest.mark.parametrize("batch", [5000, 3, 1])
def test_an_image_met_again_in_a_later_batch_counts_once(tmp_path, monkeypatch, batch):
    """The same layout twice, then three of its images again: 9 images indexed, whatever the
    batches, in the summary and the runs row alike."""
    records = [r for r in records_of(f"oci:{oci_layout(tmp_path / 'layout', 9)}") if isinstance(r, ImageRecord)]
    monkeypatch.setattr(run_module, "parse_source", lambda spec, _options=None: Fixed(records * 2 + records[3:6]))
    monkeypatch.setattr(run_module, "BATCH", batch)
    store = tmp_path / "store"
    with DeltaWriter(str(store)) as writer:
        summary = index_sources(["fixed"], writer)
    assert (summary.indexed, summary.failed, count(store)) == (9, 0, 9)
    assert [row[1] for row in runs(store)] == [9]


def test_a_repeated_label_key_among_very_many_is_named_in_one_pass(tmp_path):
    # 200,000 labels: a search for the repeat by counting would take hours.
    record = [r for r in records_of(f"oci:{oci_layout(tmp_path / 'l', 1)}") if isinstance(r, ImageRecord)][0]
    labels = tuple((f"key{i}", "v") for i in range(200_000)) + (("key7", "again"),)
    with DeltaWriter(str(tmp_path / "store")) as writer:
        with pytest.raises(ValueError, match="map key 'key7' appears more than once"):
            writer.write([dataclasses.replace(record, labels=labels)], now_utc())


def test_a_batch_is_written_once_its_bytes_pass_the_budget(tmp_path, monkeypatch):
    # Six records whose manifests and configs pass the budget every two records: three batches,
    # and every record lands.
    records = [r for r in records_of(f"oci:{oci_layout(tmp_path / 'layout', 6)}") if isinstance(r, ImageRecord)]
    each = len(records[0].manifest_raw) + len(records[0].config_raw)
    monkeypatch.setattr(run_module, "BATCH_BYTES", 2 * each - 1)
    store = tmp_path / "store"
    assert _batches_written(store, records, monkeypatch) == [2, 2, 2]
    stored = {row[0] for row in engine.connect(str(store)).execute("SELECT id FROM images").fetchall()}
    assert stored == {r.id for r in records}


def test_a_batch_is_written_once_its_config_entries_pass_the_budget(tmp_path, monkeypatch):
    # A config of many tiny entries is short as text but many objects once parsed: six records
    # whose history entries pass the budget every two records, though their bytes never would.
    records = [r for r in records_of(f"oci:{oci_layout(tmp_path / 'layout', 6)}") if isinstance(r, ImageRecord)]
    entries = 10 * (len(records[0].manifest_raw) + len(records[0].config_raw))
    records = [dataclasses.replace(r, history=(HistoryEntry(),) * entries) for r in records]
    monkeypatch.setattr(run_module, "BATCH_BYTES", entries * 150)  # 100 bytes an entry, about
    assert _batches_written(tmp_path / "store", records, monkeypatch) == [2, 2, 2]


def test_an_image_met_again_counts_its_bytes_once_toward_the_batch(tmp_path, monkeypatch):
    # A record that merges into a pending one holds no more than the merge keeps: counted whole
    # each time, one image named by thousands of manifest.json entries wrote a batch every few.
    records = [r for r in records_of(f"oci:{oci_layout(tmp_path / 'layout', 2)}") if isinstance(r, ImageRecord)]
    each = len(records[0].manifest_raw) + len(records[0].config_raw)
    monkeypatch.setattr(run_module, "BATCH_BYTES", 3 * each)
    monkeypatch.setattr(
        run_module, "parse_source", lambda spec, _options=None: Fixed([records[0]] * 10 + [records[1]] * 10)
    )
    batches = []
    with DeltaWriter(str(tmp_path / "store")) as writer:
        write = writer.write
        monkeypatch.setattr(writer, "write", lambda batch, at: (batches.append(len(batch)), write(batch, at))[1])
        assert index_sources(["fixed"], writer).indexed == 2
    assert batches == [2]


def _batches_written(store, records, monkeypatch) -> list[int]:
    """The sizes of the batches a run of `records` writes into `store`; every record lands."""
    monkeypatch.setattr(run_module, "parse_source", lambda spec, _options=None: Fixed(records))
    batches = []
    with DeltaWriter(str(store)) as writer:
        write = writer.write
        monkeypatch.setattr(writer, "write", lambda batch, at: (batches.append(len(batch)), write(batch, at))[1])
        assert index_sources(["fixed"], writer).indexed == len(records)
    return batches


def test_errors_and_notes_past_the_limit_are_counted_and_said_not_kept(tmp_path, monkeypatch):
    errors = [SourceError(f"/data/bad-{i}.tar", "broken") for i in range(7)]
    notes = [f"note {i}" for i in range(5)]
    monkeypatch.setattr(run_module, "parse_source", lambda spec, _options=None: Fixed(errors, notes=notes))
    monkeypatch.setattr(run_module, "MAX_MESSAGES", 3)
    said, noted = [], []
    with DeltaWriter(str(tmp_path / "store")) as writer:
        summary = index_sources(["fixed"], writer, observer=RunObserver(on_error=said.append, on_note=noted.append))
    assert len(said) == 7 and len(noted) == 5  # every one is said as it happens
    assert summary.failed == 7
    assert summary.errors == [*said[:3], "4 more errors not listed here"]
    assert summary.notes == [*noted[:3], "2 more notes not listed here"]


def test_index_prints_the_first_errors_and_counts_the_rest(tmp_path):
    """A layout of a thousand broken descriptors and two images: the images land, the first
    MAX_MESSAGES errors are printed, one line counts the others, and the summary counts them all."""
    layout = oci_layout(tmp_path / "layout", 2)
    index_path = os.path.join(layout, "index.json")
    with open(index_path) as f:
        index = json.load(f)
    broken = run_module.MAX_MESSAGES + 3
    index["manifests"] = [{}] * broken + index["manifests"]
    with open(index_path, "w") as f:
        json.dump(index, f)
    result = CliRunner().invoke(cli, ["index", layout, "--store", str(tmp_path / "store")])
    assert result.exit_code == 1
    assert result.stdout.startswith(f"indexed 2 images, {broken} failed")
    lines = result.stderr.splitlines()
    assert len(lines) == run_module.MAX_MESSAGES + 1
    assert lines[0].endswith("index.json manifests[0] has an invalid digest None")
    assert lines[-2].endswith(f"index.json manifests[{run_module.MAX_MESSAGES - 1}] has an invalid digest None")
    assert lines[-1] == (
        f"imgdex: 3 more errors not printed: a run prints its first {run_module.MAX_MESSAGES} errors and notes"
    )


def test_index_counts_unprinted_notes_apart_and_quiet_prints_neither(tmp_path, monkeypatch):
    monkeypatch.setattr(run_module, "MAX_MESSAGES", 2)
    folder = tmp_path / "exports"
    oci_layout(folder / "layout", 1)
    for i in range(5):
        (folder / f"readme-{i}.txt").write_text("not an archive")
    (folder / "broken").mkdir()
    (folder / "broken" / "index.json").write_text("{")
    store = str(tmp_path / "store")
    result = CliRunner().invoke(cli, ["index", str(folder), "--store", store])
    assert result.exit_code == 1 and result.stdout.startswith("indexed 1 images, 1 failed")
    lines = result.stderr.splitlines()
    assert [line.startswith("imgdex: note: ") for line in lines[:-1]].count(True) == 2
    assert lines[-1] == "imgdex: 3 more notes not printed: a run prints its first 2 errors and notes"
    quiet = CliRunner().invoke(cli, ["index", str(folder), "--store", store, "--quiet"])
    assert quiet.exit_code == 1
    assert "note" not in quiet.stderr and "not printed" not in quiet.stderr


def test_a_long_message_is_cut_where_it_is_said_and_kept(tmp_path, monkeypatch):
    """An engine or a registry may quote 15 MB of its own text in an error: 1,000 such messages
    kept took gigabytes. A message is cut after its redaction, so that a cut cannot split a URL's
    credentials out of reach."""
    secret = "https://user:hunter2@registry.example/v2/"
    errors = [SourceError("/data/a.tar", secret + "x" * 5_000_000), SourceError("/data/b.tar", "short")]
    notes = ["y" * 3000]
    good = [r for r in records_of(f"oci:{oci_layout(tmp_path / 'layout', 1)}") if isinstance(r, ImageRecord)]
    monkeypatch.setattr(run_module, "parse_source", lambda spec, _options=None: Fixed(errors + good, notes=notes))
    said, noted = [], []
    store = tmp_path / "store"
    with DeltaWriter(str(store)) as writer:
        summary = index_sources(["fixed"], writer, observer=RunObserver(on_error=said.append, on_note=noted.append))
        run_module.record_run(writer, ["fixed"], summary, now_utc())
    limit = run_module.MAX_MESSAGE_CHARS
    assert said[0].startswith("/data/a.tar: https://***@registry.example/v2/xxx") and "hunter2" not in said[0]
    cut = len("/data/a.tar: https://***@registry.example/v2/") + 5_000_000 - limit
    assert said[0].endswith(f"… ({cut:,} more characters)")
    assert len(said[0]) < limit + 40 and said[1] == "/data/b.tar: short"
    assert noted == ["y" * limit + "… (1,000 more characters)"]
    assert summary.errors == said and summary.notes == noted
    assert runs(store)[0][3] == said


def test_bad_record_through_the_cli_is_one_line_and_exit_1(tmp_path, monkeypatch):
    records = [r for r in records_of(f"oci:{oci_layout(tmp_path / 'layout', 3)}") if isinstance(r, ImageRecord)]
    items = [records[0], dataclasses.replace(_spoil(records[1], "too-big"), source_path="/data/x.tar"), records[2]]
    monkeypatch.setattr(run_module, "parse_source", lambda spec, _options=None: Fixed(items))
    result = invoke("index", "fixed", "--store", tmp_path / "store")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("imgdex: /data/x.tar: image ") and "Traceback" not in result.output
    assert result.stdout.startswith("indexed 2 images, 1 failed")
    assert count(tmp_path / "store") == 2


# ---------------------------------------------------------------------------------------------
# a full disk
# ---------------------------------------------------------------------------------------------


def _enospc():
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class _FailingParquetWriter:
    """pyarrow's ParquetWriter for the tables in `tables`, failing as a full disk would."""

    def __init__(self, real, tables, exc):
        self.real, self.tables, self.exc = real, tables, exc

    def __call__(self, sink, schema, **kwargs):
        if any(f"/{table}/" in str(getattr(sink, "path", "")) or self._writes(schema, table) for table in self.tables):
            raise self.exc()
        return self.real(sink, schema, **kwargs)

    @staticmethod
    def _writes(schema, table) -> bool:
        return {"images": "manifest_raw", "tags": "image_id", "runs": "images_indexed"}[table] in schema.names


def _fail_data_files(monkeypatch, tables, exc):
    import indexer.store.delta as delta_module

    monkeypatch.setattr(
        delta_module.pq, "ParquetWriter", _FailingParquetWriter(delta_module.pq.ParquetWriter, tables, exc)
    )


def _fail_commits(monkeypatch, exc):
    from deltalake import DeltaTable

    def failing(self, *args, **kwargs):
        raise exc()

    monkeypatch.setattr(DeltaTable, "create_write_transaction", failing)


FAILURES = {
    "images-data": (lambda mp: _fail_data_files(mp, ["images"], _enospc), "no space left on device", 3),
    "commit": (lambda mp: _fail_commits(mp, _enospc), "no space left on device", 3),
    "runs-row": (
        lambda mp: _fail_data_files(mp, ["runs"], lambda: OSError(errno.EROFS, os.strerror(errno.EROFS))),
        "read-only file system",
        7,
    ),
    "quota": (
        lambda mp: _fail_data_files(mp, ["images"], lambda: OSError("Error writing bytes: Disk quota exceeded")),
        "disk quota exceeded",
        3,
    ),
}


@pytest.fixture
def base_store(tmp_path):
    store = tmp_path / "store"
    result = invoke("index", f"oci:{oci_layout(tmp_path / 'base', 3, repo='team/base')}", "--store", store)
    assert result.exit_code == 0, result.output
    return store


def _more(tmp_path, images: int) -> str:
    return f"oci:{oci_layout(tmp_path / 'more', images, repo='team/more', salt='more')}"


def _data_files(store) -> set[str]:
    return {
        os.path.join(root, name) for root, _, names in os.walk(store) for name in names if name.endswith(".parquet")
    }


def _assert_store_goes_on(store, tmp_path, images):
    assert count(store) == images
    assert len(runs(store)) == 1
    assert (
        invoke(
            "index", f"oci:{oci_layout(tmp_path / 'after', 2, repo='team/after', salt='after')}", "--store", store
        ).exit_code
        == 0
    )
    assert count(store) == images + 2


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_full_disk_is_one_line_naming_the_store(tmp_path, monkeypatch, base_store, failure):
    inject, cause, images_after = FAILURES[failure]
    files = _data_files(base_store)
    inject(monkeypatch)
    result = invoke("index", _more(tmp_path, 4), "--store", base_store)
    monkeypatch.undo()
    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(f"imgdex: store {base_store}: ") and line.endswith(cause), line
    assert result.stdout == ""
    # A batch that failed left nothing, not even its files; one that committed before its run's
    # record failed stays, as after kill -9.
    assert count(base_store) == images_after
    if images_after == 3:
        assert _data_files(base_store) == files
    _assert_store_goes_on(base_store, tmp_path, images_after)


@pytest.mark.parametrize("damage", ["gone", "empty", "cut short", "another file"])
def test_a_data_file_gone_from_the_store_is_one_line_not_one_per_record(tmp_path, base_store, damage):
    # As a vacuum with a short retention leaves it when it races a run, or a file deleted by hand;
    # or damaged: each record used to be blamed for it, the batch halved down to one line each.
    [gone] = [p for p in _data_files(base_store) if os.sep + "images" + os.sep in p]
    if damage == "gone":
        os.remove(gone)
    elif damage == "another file":
        tags = [p for p in _data_files(base_store) if os.sep + "tags" + os.sep in p]
        shutil.copyfile(tags[0], gone)
    else:
        with open(gone, "r+b") as f:
            f.truncate(0 if damage == "empty" else os.path.getsize(gone) // 2)
    result = invoke("index", f"oci:{tmp_path / 'base'}", "--store", base_store)
    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(f"imgdex: store {base_store}: ") and os.path.basename(gone) in line, line


def test_a_run_whose_files_a_compaction_vacuums_meanwhile_reads_again_and_lands(tmp_path, monkeypatch, base_store):
    """`compact --retention 0` committing between a run's snapshot and its reads (its old files
    deleted at once): the run failed in DuckDB's words. It now takes the new snapshot."""
    import subprocess
    import sys

    from conftest import ROOT
    from indexer.store import delta

    assert invoke("index", _more(tmp_path, 2), "--store", base_store).exit_code == 0
    before = _data_files(base_store)
    snapshot, compacted = delta.DeltaStore.snapshot, []

    def compacting_snapshot(self, *args, **kwargs):
        taken = snapshot(self, *args, **kwargs)
        if not compacted:
            command = ["compact", "--store", str(base_store), "--retention", "0", "--allow-short-retention"]
            compacted.append(subprocess.run([sys.executable, "-m", "queries.cli", *command], cwd=ROOT))
        return taken

    monkeypatch.setattr(delta.DeltaStore, "snapshot", compacting_snapshot)
    result = invoke("index", f"oci:{tmp_path / 'base'}", "--store", base_store)
    monkeypatch.undo()
    assert compacted[0].returncode == 0 and not before & _data_files(base_store)  # every file it read is gone
    assert result.exit_code == 0, result.output
    assert count(base_store) == 5


def test_a_data_file_deleted_by_hand_is_said_so(tmp_path, base_store):
    [gone] = [p for p in _data_files(base_store) if os.sep + "images" + os.sep in p]
    os.remove(gone)
    result = invoke("index", f"oci:{tmp_path / 'base'}", "--store", base_store)
    assert result.exit_code == 1
    assert result.stderr == (
        f"imgdex: store {base_store}: data file {gone} is listed by the log but gone (deleted, or vacuumed by a "
        "compact whose retention was shorter than a run)\n"
    )


def test_a_store_failure_in_a_batch_before_the_last_is_one_line(tmp_path, monkeypatch, base_store):
    monkeypatch.setattr(run_module, "BATCH", 1)  # every image a batch of its own, flushed mid-source
    [gone] = [p for p in _data_files(base_store) if os.sep + "images" + os.sep in p]
    os.remove(gone)
    result = invoke("index", f"oci:{tmp_path / 'base'}", _more(tmp_path, 2), "--store", base_store, "--jobs", 1)
    assert result.exit_code == 1
    [line] = result.stderr.splitlines()  # not once more for each source that follows
    assert line.startswith(f"imgdex: store {base_store}: "), line


def test_compaction_on_a_full_disk_is_one_line_and_leaves_the_store_as_it_was(tmp_path, monkeypatch, base_store):
    assert invoke("index", _more(tmp_path, 2), "--store", base_store).exit_code == 0
    files = _data_files(base_store)
    _fail_commits(monkeypatch, _enospc)
    result = invoke("compact", "--store", base_store)
    monkeypatch.undo()
    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    assert line == f"imgdex: store {base_store}: cannot compact images: no space left on device"
    assert _data_files(base_store) == files  # the compacted files it wrote are gone again
    assert count(base_store) == 5
    assert invoke("compact", "--store", base_store).exit_code == 0
    assert count(base_store) == 5


def _delta_rs_enospc():
    # What delta-rs raises: no errno, and the operating system's words on the last of its lines.
    return OSError(
        "Generic LocalFileSystem error\n  -> Unable to copy data to file\n   -> No space left on device (os error 28)"
    )


def test_a_vacuum_on_a_full_disk_says_so(tmp_path, monkeypatch, base_store):
    from deltalake import DeltaTable

    def failing(*args, **kwargs):
        raise _delta_rs_enospc()

    monkeypatch.setattr(DeltaTable, "vacuum", failing)
    result = invoke("compact", "--store", base_store)
    monkeypatch.undo()
    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    assert line == f"imgdex: store {base_store}: cannot vacuum images: no space left on device"
    assert count(base_store) == 3
    assert invoke("compact", "--store", base_store).exit_code == 0


@pytest.mark.parametrize("step", ["create", "set-properties"])
def test_a_new_store_on_a_full_disk_is_one_line(tmp_path, monkeypatch, step):
    from deltalake import DeltaTable
    from deltalake.table import TableAlterer

    def failing(*args, **kwargs):
        raise _delta_rs_enospc()

    if step == "create":
        monkeypatch.setattr(DeltaTable, "create", failing)
    else:
        monkeypatch.setattr(TableAlterer, "set_table_properties", failing)
    store = tmp_path / "store"
    result = invoke("index", _more(tmp_path, 1), "--store", store)
    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("imgdex: ") and str(store) in line and line.endswith(": no space left on device"), line


def test_a_store_folder_with_a_percent_escape_is_refused_before_anything_is_made(tmp_path):
    """delta-rs makes a new table under the path as given and opens it with %XX decoded."""
    store = tmp_path / "data%20x"
    result = invoke("index", _more(tmp_path, 1), "--store", store)
    assert result.exit_code == 2
    [line] = result.stderr.splitlines()
    assert f"index: Invalid value for '--store': {store}: its path holds %20, " in line, line
    assert not store.exists()


@pytest.mark.parametrize("folder", ["t\tb", "data%20x", "b\\s"])
def test_the_library_refuses_a_store_path_delta_rs_cannot_take_before_anything_is_made(tmp_path, folder):
    """Below the command line too: delta-rs failed each call on a tab (a run blamed every image of
    it), or made a table at one path and looked for it at another."""
    store = tmp_path / folder
    with pytest.raises(StoreError, match=f"^store {re.escape(str(store))}: its path holds "):
        DeltaWriter(str(store))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("below", ["", "sub/store"])
def test_a_store_through_a_symlink_to_a_missing_folder_is_one_true_line(tmp_path, below):
    """As `mkdir -p` does, the link's target is not made (it may be a volume not mounted yet);
    the line says what is wrong instead of `file exists` or `no such file or directory`."""
    link, target = tmp_path / "link", tmp_path / "gone" / "store"
    link.symlink_to(target)
    store = link / below if below else link
    result = invoke("index", _more(tmp_path, 1), "--store", store)
    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    what = "a symlink" if not below else f"{link} is a symlink"
    assert line == f"imgdex: store {store}: {what} to a missing folder ({target})", line
    assert not (tmp_path / "gone").exists() and link.is_symlink()


@pytest.mark.parametrize("command", [["list"], ["get", "app:v1"], ["history"], ["sql", "SELECT 1"], ["compact"]])
def test_reading_a_store_through_a_symlink_to_a_missing_folder_says_so(tmp_path, command):
    """Not "no image store (run imgdex index first)": the folder is most likely a volume not
    mounted, and an index run would only be refused in turn."""
    link, target = tmp_path / "link", tmp_path / "gone" / "store"
    link.symlink_to(target)
    result = invoke(*command, "--store", link)
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [f"imgdex: store {link}: a symlink to a missing folder ({target})"]
    assert not (tmp_path / "gone").exists()


@pytest.mark.parametrize("file", ["images", "tags/_delta_log", "runs"])
def test_a_table_folder_that_is_a_file_is_one_true_line(tmp_path, file):
    """delta-rs said `Generic LocalFileSystem error` and only that."""
    store = tmp_path / "store"
    (store / file).parent.mkdir(parents=True)
    (store / file).write_bytes(b"")
    result = invoke("index", _more(tmp_path, 1), "--store", store)
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [f"imgdex: store {store}: {store / file} is not a folder"]
    assert sorted(p.name for p in store.iterdir()) == [file.split("/")[0]]


def test_write_raises_store_error_only_for_the_store(tmp_path, monkeypatch):
    record = [r for r in records_of(f"oci:{oci_layout(tmp_path / 'l', 1)}") if isinstance(r, ImageRecord)][0]
    with DeltaWriter(str(tmp_path / "store")) as writer:
        with monkeypatch.context() as mp:
            _fail_commits(mp, _enospc)
            with pytest.raises(StoreError, match="no space left on device"):
                writer.write([record], now_utc())
        # Bad data is not a store failure: the caller isolates the record.
        with pytest.raises(Exception) as caught:
            writer.write([_spoil(record, "refused-by-duckdb")], now_utc())
        assert not isinstance(caught.value, StoreError)


def _mount_tmpfs(path, size) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    os.makedirs(path, exist_ok=True)
    command = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
    return subprocess.run(command, capture_output=True).returncode == 0


def _fill(path, leave: int) -> None:
    """Fill the file system of `path` until `leave` bytes (roughly) are free."""
    with open(os.path.join(path, "filler"), "wb", buffering=0) as f:
        chunk = b"\0" * 65536
        try:
            while True:
                f.write(chunk)
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    size = os.path.getsize(os.path.join(path, "filler"))
    os.truncate(os.path.join(path, "filler"), max(size - leave, 0))


def test_a_really_full_tmpfs(tmp_path):
    """A small tmpfs filled up: every run either completes or fails in one line, and the store
    always opens at a completed state."""
    mount = tmp_path / "small"
    if not _mount_tmpfs(mount, "4m"):
        pytest.skip("needs root and a mountable tmpfs")
    try:
        store = mount / "store"
        cli_run = [sys.executable, "-m", "queries.cli", "index", "-q", "--store", str(store)]
        base = oci_layout(tmp_path / "base", 3, repo="team/base")
        assert subprocess.run([*cli_run, f"oci:{base}"], capture_output=True, text=True, timeout=120).returncode == 0
        expected = 3
        for number, leave in enumerate([0, 8 * 1024, 64 * 1024, 256 * 1024]):
            _fill(mount, leave)
            more = oci_layout(tmp_path / f"more{number}", 300, repo=f"team/more{number}", salt=f"more{number}")
            proc = subprocess.run([*cli_run, f"oci:{more}"], capture_output=True, text=True, timeout=120)
            os.unlink(mount / "filler")
            if proc.returncode == 0:
                expected += 300
            else:
                lines = proc.stderr.strip().splitlines()
                assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
                assert lines[0].startswith(("imgdex: store ", "imgdex: cannot open store ")), lines
                assert "no space left on device" in lines[0]
            got = count(store)
            assert got in (expected, expected + 300) and got % 300 == 3, got
            expected = got
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)


# ---------------------------------------------------------------------------------------------
# no store from a run that lands nothing
# ---------------------------------------------------------------------------------------------


def test_failed_run_creates_no_store(tmp_path):
    store = tmp_path / "new" / "deeper" / "store"
    result = invoke("index", tmp_path / "nonexistent", "--store", store)
    assert result.exit_code == 1
    assert not os.path.exists(tmp_path / "new")
    # Through the default ./data as well.
    workdir = tmp_path / "work"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if k != paths.STORE_ENV}
    command = [sys.executable, "-m", "queries.cli", "index", str(tmp_path / "nonexistent")]
    proc = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and os.listdir(workdir) == []


def test_failed_run_into_an_existing_empty_folder_leaves_it_empty(tmp_path):
    store = tmp_path / "empty"
    store.mkdir()
    (store / "unrelated.txt").write_text("kept")
    assert invoke("index", tmp_path / "nonexistent", "--store", store).exit_code == 1
    assert os.listdir(store) == ["unrelated.txt"]


def test_runs_that_land_something_or_hit_a_store_record_their_run(tmp_path):
    store = tmp_path / "store"
    good = oci_layout(tmp_path / "good", 2)
    result = invoke("index", good, tmp_path / "nonexistent", "--store", store)
    assert result.exit_code == 1 and count(store) == 2
    assert [(r[1], r[2]) for r in runs(store)] == [(2, 1)]
    # Into an existing store, a run that lands nothing still records its run, as before.
    assert invoke("index", tmp_path / "nonexistent", "--store", store).exit_code == 1
    assert [(r[1], r[2]) for r in runs(store)] == [(2, 1), (0, 1)]


def test_writer_that_commits_nothing_creates_no_store(tmp_path):
    with DeltaWriter(str(tmp_path / "a" / "store")) as writer:
        assert writer.pristine
    assert not os.path.exists(tmp_path / "a")
    with DeltaWriter(str(tmp_path / "b")) as writer:
        writer.record_run({"started_at": now_utc(), "finished_at": now_utc(), "sources": []})
        assert not writer.pristine
    assert paths.is_table_store(str(tmp_path / "b"))
    with DeltaWriter(str(tmp_path / "b")) as writer:
        assert not writer.pristine  # not its own creation


def test_a_run_that_lands_nothing_is_recorded_in_a_store_created_meanwhile(tmp_path):
    """Shard workers start together on a store that does not exist yet; one whose slice is empty
    still records its run once another has created the store."""
    store = str(tmp_path / "store")
    empty = DeltaWriter(store)
    with DeltaWriter(store) as other:
        assert index_sources([oci_layout(tmp_path / "layout", 2)], other).ok
    with empty:
        summary = index_sources([], empty)
    assert summary.indexed == 0
    assert [(r[1], r[2]) for r in runs(store)] == [(2, 0), (0, 0)]


# ---------------------------------------------------------------------------------------------
# credentials
# ---------------------------------------------------------------------------------------------


def test_url_credentials_never_reach_the_runs_table_or_messages(tmp_path, monkeypatch):
    secret_spec = "docker://alice:s3cret@reg.example/team/app"
    good = [r for r in records_of(f"oci:{oci_layout(tmp_path / 'layout', 1)}") if isinstance(r, ImageRecord)]
    sources = {
        secret_spec: Fixed(
            [SourceError("https://alice:s3cret@reg.example/v2/team/app/manifests/v1", "HTTP 500"), *good],
            location="https://alice:s3cret@reg.example",
            notes=["https://bob:hunter2@reg.example/v2/_catalog: skipped a page"],
        ),
    }
    monkeypatch.setattr(run_module, "parse_source", lambda spec, _options=None: sources[spec])
    errors, notes = [], []
    store = tmp_path / "store"
    with DeltaWriter(str(store)) as writer:
        observer = RunObserver(on_error=errors.append, on_note=notes.append)
        summary = index_sources([secret_spec], writer, observer=observer)
    assert summary.indexed == 1 and summary.failed == 1
    everything = json.dumps([errors, notes, summary.errors, summary.notes, runs(store)], default=str)
    assert "s3cret" not in everything and "hunter2" not in everything
    assert errors == ["https://***@reg.example/v2/team/app/manifests/v1: HTTP 500"]
    assert notes == ["https://***@reg.example/v2/_catalog: skipped a page"]
    [(run_sources, *_rest)] = runs(store)
    assert run_sources == ["docker://***@reg.example/team/app"]


def test_url_credentials_are_redacted_from_cli_errors(tmp_path):
    good = oci_layout(tmp_path / "good", 1)
    secret = "ycr-json:https://alice:s3cret@example.net/images.json"
    result = invoke("index", good, secret, "--store", tmp_path / "store")
    assert result.exit_code == 1
    assert "s3cret" not in result.output and "***@example.net" in result.stderr
    assert "s3cret" not in json.dumps(runs(tmp_path / "store"), default=str)


def test_a_shard_that_lands_nothing_records_its_run_even_before_the_store_exists(tmp_path):
    """A worker of `--shard K/N` with an empty slice may finish before the others create the store:
    it creates it with its run, so the store tells that all N ran, whatever the timing."""
    from indexer.run import RunSettings
    from indexer.shard import Shard

    store = str(tmp_path / "store")
    with DeltaWriter(store) as empty:
        summary = index_sources([], empty, settings=RunSettings(shard=Shard(2, 4)))
    assert summary.indexed == 0 and [(r[1], r[2]) for r in runs(store)] == [(0, 0)]
    with DeltaWriter(str(tmp_path / "unsharded")) as plain:
        index_sources([], plain)
    assert not os.path.exists(tmp_path / "unsharded")  # without --shard, nothing is created for nothing


def test_a_store_that_cannot_be_opened_leaves_no_descriptor_open(tmp_path):
    """The store folder's lock is taken before the tables are opened; when they cannot be, nothing
    holds the writer to close it, and a long-lived caller (a server, a test run) kept one more
    descriptor on the folder each time."""
    store = tmp_path / "store"
    assert invoke("index", _more(tmp_path, 1), "--store", store).exit_code == 0
    commit = store / "images" / "_delta_log" / f"{0:020d}.json"
    lines = commit.read_text().splitlines()
    for at, line in enumerate(lines):
        action = json.loads(line)
        if "protocol" in action:
            action["protocol"]["minWriterVersion"] = 7  # writer features are then required
            lines[at] = json.dumps(action)
    commit.write_text("\n".join(lines) + "\n")
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        with pytest.raises(StoreError, match="cannot open store"):
            DeltaWriter(str(store))
    assert len(os.listdir("/proc/self/fd")) == before


@pytest.mark.parametrize("inner", ["images", "tags/_delta_log", "new/deeper", "../store/runs", "link"])
def test_a_store_inside_another_store_is_refused(tmp_path, run_cli, inner):
    """A store made in `store/images` was accepted, and `compact` of the outer store deleted its
    files, which the outer tables do not list."""
    from conftest import sample_sources

    outer = tmp_path / "store"
    assert run_cli("index", "--store", outer, "-q", *sample_sources()).exit_code == 0
    os.symlink(outer / "images", tmp_path / "link")
    target = str(tmp_path / inner) if inner == "link" else f"{outer}/{inner}"
    before = sorted(str(p) for p in outer.rglob("*"))
    result = run_cli("index", "--store", target, *sample_sources())
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines()[-1] == (
        f"imgdex index: Invalid value for '--store': {target} lies inside the store {os.path.realpath(outer)},"
        " whose folders are its own (compact deletes the files its tables do not list): give a store outside it."
        " See 'imgdex index --help'."
    )
    assert sorted(str(p) for p in outer.rglob("*")) == before
    # Beside the store, and the store itself, as before.
    for store in (tmp_path / "beside", outer):
        assert run_cli("index", "--store", store, "-q", *sample_sources()).exit_code == 0
