"""A first run into a new store that fails before landing anything (a full disk while the tables
are being made, or under its first batch) leaves the store folder as it was, and what it cannot
remove reads as no store."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from click.testing import CliRunner

from indexer.errors import StoreError
from indexer.model import ImageRecord
from indexer.store import paths
from indexer.store.delta_writer import DeltaWriter
from indexer.store.writer import now_utc
from queries.cli import cli
from test_write_hardening import (
    _delta_rs_enospc,
    _enospc,
    _fail_data_files,
    _fill,
    _mount_tmpfs,
    count,
    oci_layout,
    records_of,
)

READERS = (["get", "team/app:t0"], ["list"], ["sql", "SELECT count(*) FROM images"])


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def _tree(folder) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(root, name), folder)
        for root, dirs, names in os.walk(folder)
        for name in dirs + names
    )


def _says_no_store(store) -> None:
    for args in READERS:
        result = invoke(*args, "--store", store)
        assert result.exit_code == 1, (args, result.output)
        assert (
            result.stderr.strip()
            == f"imgdex: no image store at {store} (run `imgdex index` first, or set --store / IMGDEX_STORE)"
        )


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "small"
    if not _mount_tmpfs(mount, "2m"):
        reason = "needs root and a mountable tmpfs"
        pytest.fail(reason) if os.environ.get("CI") else pytest.skip(reason)
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_first_run_on_a_filling_disk_leaves_nothing_at_any_stage(tmp_path, small_disk):
    """Free space from none up, a page at a time: the first run fails while creating each table,
    marking it, writing and committing its first batch, until one lands. Each failure leaves no
    store folder, readers say there is no store, and a run with room completes."""
    layout = oci_layout(tmp_path / "layout", 3)
    store = small_disk / "new" / "store"
    failures = set()
    for leave in range(0, 256 * 1024, 4096):
        _fill(small_disk, leave)
        result = invoke("index", "-q", f"oci:{layout}", "--store", store)
        os.unlink(small_disk / "filler")
        if result.exit_code == 0:
            break
        [line] = result.stderr.splitlines()
        assert line.endswith("no space left on device") and str(store) in line, line
        if os.path.exists(store / "images" / "_delta_log" / f"{2:020d}.json"):
            break  # its first batch landed: it stays, as after kill -9
        failures.add(line.split(": ", 1)[1])
        assert not os.path.exists(small_disk / "new"), (leave, line, _tree(small_disk / "new"))
        _says_no_store(store)
    else:
        raise AssertionError("no run had room enough")
    assert len(failures) >= 4, failures  # creating a table, marking it, its data, a commit
    shutil.rmtree(store, ignore_errors=True)
    assert invoke("index", "-q", f"oci:{layout}", "--store", store).exit_code == 0
    assert count(store) == 3


@pytest.mark.parametrize("table", ["images", "tags", "runs"])
def test_a_table_that_cannot_be_created_leaves_an_empty_folder_empty(tmp_path, monkeypatch, table):
    from deltalake import DeltaTable

    create = DeltaTable.create

    def failing(location, *args, **kwargs):
        if str(location).rstrip("/").endswith("/" + table):
            raise _delta_rs_enospc()
        return create(location, *args, **kwargs)

    store = tmp_path / "store"
    store.mkdir()
    monkeypatch.setattr(DeltaTable, "create", failing)
    result = invoke("index", f"oci:{oci_layout(tmp_path / 'layout', 2)}", "--store", store)
    monkeypatch.undo()
    assert result.exit_code == 1 and result.stderr.strip().endswith("no space left on device")
    assert os.listdir(store) == []
    _says_no_store(store)


def test_a_first_batch_that_cannot_be_written_leaves_no_tables(tmp_path, monkeypatch):
    store = tmp_path / "deeper" / "store"
    _fail_data_files(monkeypatch, ["tags"], _enospc)
    result = invoke("index", f"oci:{oci_layout(tmp_path / 'layout', 2)}", "--store", store)
    monkeypatch.undo()
    assert result.exit_code == 1 and result.stderr.strip().endswith("cannot write tags data: no space left on device")
    assert not os.path.exists(tmp_path / "deeper")


def test_tables_another_writer_holds_are_not_removed(tmp_path, monkeypatch):
    """A run that opened the store meanwhile may commit into the tables the failed run made: they
    stay while it holds the store, and go with the failed run's next failure once it is gone."""
    store = tmp_path / "store"
    records = [r for r in records_of(f"oci:{oci_layout(tmp_path / 'layout', 1)}") if isinstance(r, ImageRecord)]
    _fail_data_files(monkeypatch, ["images"], _enospc)
    with DeltaWriter(str(store)) as failing:
        failing._ensure_tables()  # what its first batch does first
        with DeltaWriter(str(store)) as other:
            assert not other.pristine  # it found the store, and may commit to it
            with pytest.raises(StoreError, match="no space left on device"):
                failing.write(records, now_utc())
            assert sorted(os.listdir(store)) == ["images", "runs", "tags"]
        with pytest.raises(StoreError, match="no space left on device"):
            failing.write(records, now_utc())
    assert not os.path.exists(store)


def test_a_store_made_while_a_writer_opens_is_not_removed_under_it(tmp_path, monkeypatch):
    """A first run that makes the store between another writer's lock (no folder yet: nothing to
    lock) and its look at the tables: that writer still holds the store before it takes it as
    found, so the first run's failure leaves the tables to it."""
    from indexer.store.delta import DeltaStore

    store = str(tmp_path / "store")
    records = [r for r in records_of(f"oci:{oci_layout(tmp_path / 'layout', 1)}") if isinstance(r, ImageRecord)]
    first = None
    exists = DeltaStore.exists

    def made_meanwhile(self):
        nonlocal first
        if first is None:
            first = "opening"  # its own look at the store comes here too
            made = DeltaWriter(store)
            made._ensure_tables()
            first = made
        return exists(self)

    monkeypatch.setattr(DeltaStore, "exists", made_meanwhile)
    other = DeltaWriter(store)
    monkeypatch.setattr(DeltaStore, "exists", exists)
    with other:
        assert not other.pristine
        with monkeypatch.context() as m:
            _fail_data_files(m, ["images"], _enospc)
            with pytest.raises(StoreError, match="no space left on device"):
                first.write(records, now_utc())
        first.close()
        other.write(records, now_utc())
    assert count(store) == 1


def test_the_last_of_two_failed_first_runs_removes_what_the_first_could_not(tmp_path, monkeypatch):
    """The run that made a table folder fails while another holds the store, so it may not remove
    it; the other, failing last, finds the folder without a commit and removes it too."""
    from deltalake import DeltaTable

    store = str(tmp_path / "store")
    first, second = DeltaWriter(store), None

    def failing(location, *args, **kwargs):
        nonlocal second
        os.makedirs(os.path.join(str(location), "_delta_log"), exist_ok=True)  # made before the commit fails
        if second is None:
            second = DeltaWriter(store)  # opens the store while the first run is making it
        raise _delta_rs_enospc()

    monkeypatch.setattr(DeltaTable, "create", failing)
    with pytest.raises(StoreError, match="no space left on device"):
        first._ensure_tables()
    assert os.listdir(os.path.join(store, "images")) == ["_delta_log"]  # the second holds the store
    first.close()
    with pytest.raises(StoreError, match="no space left on device"):
        second._ensure_tables()
    second.close()
    monkeypatch.undo()
    assert not os.path.exists(store) or os.listdir(store) == []
    _says_no_store(store)


def test_a_store_missing_a_table_reads_as_no_store(tmp_path):
    store = tmp_path / "store"
    assert invoke("index", f"oci:{oci_layout(tmp_path / 'layout', 2)}", "--store", store).exit_code == 0
    shutil.rmtree(store / "runs")  # as HEAD's failed first run left it: images and tags made, runs not
    _says_no_store(store)
    assert invoke("index", f"oci:{oci_layout(tmp_path / 'more', 1, salt='more')}", "--store", store).exit_code == 0


def test_a_store_removed_between_the_look_and_the_read_is_no_store(tmp_path, monkeypatch):
    from indexer.store.delta import DeltaStore
    from queries import engine

    store = str(tmp_path / "store")
    DeltaStore(store).create()  # what a first run makes before its first batch
    read = engine._over_tables

    def removed_meanwhile(*args):
        shutil.rmtree(store)  # the first run failed, and removed what it made
        return read(*args)

    monkeypatch.setattr(engine, "_over_tables", removed_meanwhile)
    with pytest.raises(StoreError, match="^no image store at "):
        engine.connect(store)


def test_two_processes_creating_the_tables_at_once_make_only_the_two_creation_commits(tmp_path):
    """The processes of `index --jobs` create the tables together. One that found no table and lost
    the race for version 0 was retried by delta-rs as a second CREATE TABLE (with a table id of its
    own) at version 2: the run, failing then, could not tell the tables for its own and kept them."""
    import threading

    from indexer.store.delta import DeltaStore

    def create(store: str, start: threading.Barrier, failures: list) -> None:
        start.wait()
        try:
            DeltaStore(store).create("run")
        except Exception as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    for attempt in range(12):
        store = str(tmp_path / f"store{attempt}")
        start = threading.Barrier(2)
        failures: list = []
        workers = [threading.Thread(target=create, args=(store, start, failures)) for _ in range(2)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert not failures
        for table in paths.TABLES:
            log = os.path.join(store, table, "_delta_log")
            assert sorted(os.listdir(log)) == [f"{0:020d}.json", f"{1:020d}.json"], (attempt, table)
            assert DeltaStore(store).made_only_by(table, "run")


def test_a_fifo_in_a_log_is_not_taken_for_a_creation_commit(tmp_path):
    """The check of what a failed first run may remove reads commits as every log reader does:
    a FIFO named as a commit is refused at once, never waited on."""
    from indexer.store.delta import DeltaStore

    log = tmp_path / "store" / "images" / "_delta_log"
    log.mkdir(parents=True)
    os.mkfifo(log / f"{0:020d}.json")
    assert not DeltaStore(str(tmp_path / "store")).made_only_by("images", "run")


@pytest.mark.parametrize(("command", "method"), [(["history"], "history"), (["compact"], "compact")])
def test_history_and_compact_of_a_store_removed_meanwhile_say_no_store(tmp_path, monkeypatch, command, method):
    from indexer.store.delta import DeltaStore

    store = str(tmp_path / "store")
    DeltaStore(store).create()  # what a first run makes before its first batch
    original = getattr(DeltaStore, method)

    def removed_meanwhile(self, *args, **kwargs):
        shutil.rmtree(store)  # the first run failed, and removed what it made
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DeltaStore, method, removed_meanwhile)
    result = invoke(*command, "--store", store)
    assert result.exit_code == 1, result.output
    assert result.stderr.strip() == f"imgdex: {paths.no_store_message(store)}"


def test_a_store_that_is_still_there_keeps_its_own_error(tmp_path, monkeypatch):
    from indexer.store.delta import DeltaStore

    store = str(tmp_path / "store")
    assert invoke("index", f"oci:{oci_layout(tmp_path / 'one', 1)}", "--store", store).exit_code == 0

    def fails(self, *args, **kwargs):
        raise StoreError("cannot read the log of table images: Permission denied")

    monkeypatch.setattr(DeltaStore, "history", fails)
    result = invoke("history", "--store", store)
    assert result.exit_code == 1
    assert result.stderr.strip() == "imgdex: cannot read the log of table images: Permission denied"


@pytest.mark.parametrize("where", ["tables", "data", "commit", "landed"])
def test_ctrl_c_in_a_first_run_before_its_first_batch_lands_leaves_no_store(tmp_path, monkeypatch, where):
    """Ctrl-C leaves a store reading as before: one that did not exist is still no store, not an
    empty one; once the first batch's images commit has landed, the batch stays."""
    from deltalake import DeltaTable

    from indexer.store.delta import DeltaStore

    store = tmp_path / "store"
    layout = oci_layout(tmp_path / "layout", 2)

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    if where == "tables":
        real_mark = DeltaStore._mark_schema_version

        def mark(self, table, run_id=""):
            real_mark(self, table, run_id)
            if table == "tags":
                raise KeyboardInterrupt

        monkeypatch.setattr(DeltaStore, "_mark_schema_version", mark)
    elif where == "data":
        _fail_data_files(monkeypatch, ["tags"], KeyboardInterrupt)
    elif where == "commit":
        monkeypatch.setattr(DeltaTable, "create_write_transaction", interrupt)
    else:
        real_commit = DeltaTable.create_write_transaction

        def commit_then_interrupt(self, *args, **kwargs):
            real_commit(self, *args, **kwargs)
            raise KeyboardInterrupt

        monkeypatch.setattr(DeltaTable, "create_write_transaction", commit_then_interrupt)
    result = invoke("index", f"oci:{layout}", "--store", store)
    monkeypatch.undo()
    assert result.exit_code == 130 and result.stderr.strip() == "imgdex: interrupted"
    if where == "landed":
        assert count(store) == 2
    else:
        assert not os.path.exists(store)
        _says_no_store(store)
    assert invoke("index", f"oci:{layout}", "--store", store).exit_code == 0
    assert count(store) == 2


def test_a_first_run_of_several_processes_on_a_full_disk_leaves_no_tables(tmp_path, small_disk):
    """Under `--jobs`, each process holds the store while it runs, so the one that fails first
    cannot remove the tables: the last one does, as one process would, with the data files a
    worker stopped mid-batch left uncommitted."""
    import sys

    from conftest import ROOT

    harness = (
        "import sys; import indexer.workers as w; w.MIN_WORK = 0; from queries.cli import cli; "
        "cli.main(args=sys.argv[1:], prog_name='imgdex')"
    )
    layout = oci_layout(tmp_path / "layout", 40)
    store = small_disk / "store"
    stages = set()
    for leave in range(0, 512 * 1024, 8 * 1024):
        _fill(small_disk, leave)
        result = subprocess.run(
            [sys.executable, "-c", harness, "index", "-q", f"oci:{layout}", "--store", str(store), "--jobs", "2"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        os.unlink(small_disk / "filler")
        if result.returncode == 0:
            break
        assert result.stderr.strip().endswith("no space left on device"), result.stderr
        if os.path.exists(store / "images" / "_delta_log" / f"{2:020d}.json"):
            break  # a batch landed: it stays, as after kill -9
        stages.add("tables" if "cannot create" in result.stderr else "batch")
        assert not [t for t in paths.TABLES if os.path.exists(store / t)], (leave, result.stderr, _tree(store))
        # Nor the folder the run made for the store, as one process leaves none either.
        assert not os.path.lexists(store), (leave, result.stderr, _tree(store))
        _says_no_store(store)
    else:
        raise AssertionError("no run had room enough")
    assert "batch" in stages, stages
    shutil.rmtree(store, ignore_errors=True)
    assert invoke("index", "-q", f"oci:{layout}", "--store", store).exit_code == 0
    assert count(store) == 40


def test_tables_a_worker_made_after_the_first_process_looked_are_removed_by_it(tmp_path):
    """The first process of `index --jobs` opens the store as its workers start: when a worker made
    the folder and tables after it looked, it held no lock on them, and a Ctrl-C left them behind,
    an empty store."""
    store = str(tmp_path / "new" / "store")
    made = paths.outermost_missing(store)
    first = DeltaWriter(store, "f" * 32, made)  # the folder is missing: nothing to hold yet
    with DeltaWriter(store, "f" * 32, made) as worker:
        worker._ensure_tables()
    assert paths.is_table_store(store)
    assert first.leave_nothing()
    first.close()
    assert os.listdir(tmp_path) == []
    # Another run's tables, made after it looked, are not its own to remove.
    first = DeltaWriter(store, "f" * 32, made)
    with DeltaWriter(store, "0" * 32, made) as other:
        other._ensure_tables()
    assert not first.leave_nothing()
    first.close()
    assert paths.is_table_store(store)


def test_a_jobs_run_stopped_before_its_first_process_opened_the_store_leaves_nothing(tmp_path, monkeypatch):
    from indexer import workers
    from indexer.run import Task
    from indexer.store import delta_writer

    store = str(tmp_path / "new" / "store")
    real = delta_writer.DeltaWriter
    calls = []

    class Interrupted(real):
        def __init__(self, store, run_id="", made_folder=None):
            calls.append(run_id)
            if len(calls) == 1:
                with real(store, run_id, made_folder) as worker:  # a worker got there first
                    worker._ensure_tables()
                raise KeyboardInterrupt
            super().__init__(store, run_id, made_folder)

    monkeypatch.setattr(delta_writer, "DeltaWriter", Interrupted)
    missing = str(tmp_path / "missing.tar")  # the worker's share: it finds nothing and makes nothing
    plan = workers.Plan([missing, missing], [[Task(0, missing)], [Task(1, missing)]])
    with pytest.raises(KeyboardInterrupt):
        workers.index_parallel(plan, store)
    assert len(calls) == 2 and calls[0] == calls[1]
    assert os.listdir(tmp_path) == []
