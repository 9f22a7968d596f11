"""The writer under bad records and failing disks: one bad record never sinks a run, a full
disk is one line that names the store and leaves it as it was, a run that lands nothing
creates no store, and URL credentials never reach the runs table or a message."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import subprocess
import sys

import duckdb
import pytest
from click.testing import CliRunner

import indexer.run as run_module
from indexer.errors import SourceError, StoreError
from indexer.model import Blob, ImageRecord
from indexer.run import index_sources
from indexer.sources import parse_source
from indexer.sources.parse import Context
from indexer.store import paths
from indexer.store import writer as writer_module
from indexer.store.writer import StoreWriter, now_utc
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
    if how == "refused-by-duckdb":  # Arrow takes it, DuckDB refuses it inside the transaction
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
    monkeypatch.setattr(run_module, "parse_source", lambda spec, **_options: Fixed(items))
    monkeypatch.setattr(run_module, "BATCH", batch)
    errors = []
    store = tmp_path / "store"
    with StoreWriter(str(store)) as writer:
        summary = index_sources(["fixed"], writer, on_error=errors.append)
    assert (summary.indexed, summary.failed) == (6, 3)
    assert errors == summary.errors and len(errors) == 3
    for i in spoiled:
        [line] = [e for e in errors if f"/data/bad-{i}.tar" in e]
        assert line.startswith(f"/data/bad-{i}.tar: image {records[i].id} ") and "\n" not in line
    stored = {row[0] for row in engine.connect(str(store)).execute("SELECT id FROM images").fetchall()}
    assert stored == {r.id for i, r in enumerate(records) if i not in spoiled}
    [(sources, indexed, failed, run_errors)] = runs(store)
    assert (sources, indexed, failed) == (["fixed"], 6, 3) and run_errors == errors


def test_bad_record_through_the_cli_is_one_line_and_exit_1(tmp_path, monkeypatch):
    records = [r for r in records_of(f"oci:{oci_layout(tmp_path / 'layout', 3)}") if isinstance(r, ImageRecord)]
    items = [records[0], dataclasses.replace(_spoil(records[1], "too-big"), source_path="/data/x.tar"), records[2]]
    monkeypatch.setattr(run_module, "parse_source", lambda spec, **_options: Fixed(items))
    result = invoke("index", "fixed", "--store", tmp_path / "store")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("imgdex: /data/x.tar: image ") and "Traceback" not in result.output
    assert result.stdout.startswith("indexed 2 images, 1 failed")
    assert count(tmp_path / "store") == 2


# ---------------------------------------------------------------------------------------------
# a full disk
# ---------------------------------------------------------------------------------------------


class FailingConnection:
    """A DuckDB connection whose statements starting with `prefix` fail as a full disk would."""

    def __init__(self, con, prefix: str, exc: BaseException):
        self._con, self._prefix, self._exc = con, prefix, exc

    def execute(self, sql, *args):
        if sql.lstrip().upper().startswith(self._prefix):
            raise self._exc
        return self._con.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self._con, name)


def _enospc():
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _duckdb_wal_full():
    # what DuckDB raises when its write-ahead log hits a full disk
    return duckdb.TransactionException(
        'TransactionContext Error: Failed to commit: Could not write file "imgdex.duckdb.wal": No space left on device'
    )


def _quota_exceeded():
    return duckdb.IOException('IO Error: Could not write file "images.parquet": Disk quota exceeded')


FAILURES = {
    "commit-oserror": ("COMMIT", _enospc, "no space left on device"),
    "commit-duckdb": ("COMMIT", _duckdb_wal_full, "no space left on device"),
    "runs-row": ("INSERT INTO RUNS", lambda: OSError(errno.EROFS, os.strerror(errno.EROFS)), "read-only file system"),
    "snapshot-copy": ("COPY", _quota_exceeded, "disk quota exceeded"),
}


@pytest.fixture
def base_store(tmp_path):
    store = tmp_path / "store"
    result = invoke("index", f"oci:{oci_layout(tmp_path / 'base', 3, repo='team/base')}", "--store", store)
    assert result.exit_code == 0, result.output
    return store


def _more(tmp_path, images: int) -> str:
    return f"oci:{oci_layout(tmp_path / 'more', images, repo='team/more', salt='more')}"


def _assert_previous_state(store, tmp_path, in_database=3):
    assert count(store) == 3
    assert len(runs(store)) == 1
    with StoreWriter(str(store)) as writer:  # the writer opens it again, and a run goes through
        assert writer.con.execute("SELECT count(*) FROM images").fetchall()[0][0] == in_database
        assert index_sources([f"oci:{oci_layout(tmp_path / 'after', 2, repo='team/after', salt='after')}"], writer).ok
    assert count(store) == in_database + 2


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_full_disk_is_one_line_naming_the_store(tmp_path, monkeypatch, base_store, failure):
    prefix, make, cause = FAILURES[failure]
    original = StoreWriter.__init__

    def failing_init(self, store):
        original(self, store)
        self.con = FailingConnection(self.con, prefix, make())

    monkeypatch.setattr(StoreWriter, "__init__", failing_init)
    result = invoke("index", _more(tmp_path, 4), "--store", base_store)
    monkeypatch.undo()
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [f"imgdex: store {base_store}: {cause}"]
    assert result.stdout == ""
    assert count(base_store) == 3  # readers still see the previous snapshot
    # A failed commit leaves nothing of its batch; batches committed before a failed snapshot
    # stay in the database (as after kill -9), and the next run's snapshot shows them.
    _assert_previous_state(base_store, tmp_path, in_database=3 if prefix == "COMMIT" else 7)


def test_full_disk_while_syncing_the_snapshot(tmp_path, monkeypatch, base_store):
    snapshots = set(os.listdir(base_store / paths.SNAPSHOTS))
    previous = paths.snapshot_dir(str(base_store))

    def fsync_fails(path):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(writer_module, "_fsync_tree", fsync_fails)
    result = invoke("index", _more(tmp_path, 2), "--store", base_store)
    monkeypatch.undo()
    assert result.exit_code == 1 and result.stderr.splitlines() == [f"imgdex: store {base_store}: input/output error"]
    assert paths.snapshot_dir(str(base_store)) == previous
    # The half-written snapshot does not hold on to the space.
    assert set(os.listdir(base_store / paths.SNAPSHOTS)) == snapshots


def test_full_disk_while_writing_the_lock(tmp_path, monkeypatch, base_store):
    class FullFile:
        def __init__(self, f):
            self._f = f

        def flush(self):
            raise _enospc()

        def __getattr__(self, name):
            return getattr(self._f, name)

    monkeypatch.setattr(writer_module, "open", lambda *a, **k: FullFile(open(*a, **k)), raising=False)
    result = invoke("index", _more(tmp_path, 2), "--store", base_store)
    monkeypatch.undo()
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [f"imgdex: cannot open store {base_store}: no space left on device"]
    _assert_previous_state(base_store, tmp_path)


def test_write_raises_store_error_only_for_the_store(tmp_path):
    with StoreWriter(str(tmp_path / "store")) as writer:
        writer.con = FailingConnection(writer.con, "COMMIT", _duckdb_wal_full())
        record = [r for r in records_of(f"oci:{oci_layout(tmp_path / 'l', 1)}") if isinstance(r, ImageRecord)][0]
        with pytest.raises(StoreError, match="no space left on device"):
            writer.write([record], now_utc())
        # Bad data is not a store failure: the caller isolates the record.
        with pytest.raises(Exception) as caught:
            writer.write([_spoil(record, "refused-by-duckdb")], now_utc())
        assert not isinstance(caught.value, StoreError)
        writer.con = writer.con._con


def _mount_tmpfs(path, size) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    os.makedirs(path, exist_ok=True)
    command = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
    return subprocess.run(command, capture_output=True).returncode == 0


def _fill(path, leave: int) -> None:
    """Fill the file system of `path` until `leave` bytes (roughly) are free."""
    with open(os.path.join(path, "filler"), "wb") as f:
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
            with StoreWriter(str(store)) as writer:
                assert writer.con.execute("SELECT count(*) FROM images").fetchall()[0][0] >= got
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


def test_writer_that_commits_nothing_removes_the_store_it_created(tmp_path):
    with StoreWriter(str(tmp_path / "a" / "store")) as writer:
        assert writer.pristine
    assert not os.path.exists(tmp_path / "a")
    with StoreWriter(str(tmp_path / "b")) as writer:
        writer.snapshot()
        assert not writer.pristine
    assert os.path.isfile(tmp_path / "b" / paths.DATABASE)
    with StoreWriter(str(tmp_path / "b")) as writer:
        assert not writer.pristine  # not its own creation
    assert os.path.isfile(tmp_path / "b" / paths.DATABASE)


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
    monkeypatch.setattr(run_module, "parse_source", lambda spec, **_options: sources[spec])
    errors, notes = [], []
    store = tmp_path / "store"
    with StoreWriter(str(store)) as writer:
        summary = index_sources([secret_spec], writer, on_error=errors.append, on_note=notes.append)
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
