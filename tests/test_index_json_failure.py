"""`index --json` when the store fails: a script reading stdout still gets the summary, with what
landed before the failure and the store's failure in `store_error`, while stderr has its one line
and the exit code is 1."""

from __future__ import annotations

import dataclasses
import errno
import json
import os

import duckdb  # noqa: F401  (workers started by these tests are fresh interpreters, as in test_jobs)
from click.testing import CliRunner

import indexer.run as run_module
from indexer import workers
from indexer.model import Blob, ImageRecord
from queries import engine
from queries.cli import cli

import test_write_hardening
from test_write_hardening import Fixed, oci_layout, records_of

base_store = test_write_hardening.base_store  # the fixture, shared
KEYS = {"indexed", "failed", "seconds", "errors", "store_error"}


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False, prog_name="imgdex")


def count(store) -> int:
    return engine.connect(str(store)).execute("SELECT count(*) FROM images").fetchall()[0][0]


def runs(store) -> list[tuple]:
    query = "SELECT images_indexed, images_failed FROM runs ORDER BY started_at"
    return engine.connect(str(store)).execute(query).fetchall()


def failed_run(result, store) -> dict:
    """The JSON summary of a run the store ended, after checking the rest of what it said."""
    assert result.exit_code == 1
    *_errors, line = result.stderr.splitlines()  # each failed source's line, then the store's
    assert line.startswith(f"imgdex: store {store}: ") or line.startswith(f"imgdex: cannot open store {store}: "), line
    summary = json.loads(result.stdout)
    assert set(summary) == KEYS
    assert f"imgdex: {summary['store_error']}" == line  # the same words as on stderr
    return summary


def _enospc():
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _commits_fail_after(monkeypatch, allowed: int) -> None:
    """The store's disk fills up once `allowed` commits have gone in."""
    from deltalake import DeltaTable

    real = DeltaTable.create_write_transaction
    done = []

    def commit(self, *args, **kwargs):
        if len(done) >= allowed:
            raise _enospc()
        done.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(DeltaTable, "create_write_transaction", commit)


def _runs_row_fails(monkeypatch) -> None:
    """The runs table's data file cannot be written (a store gone read-only at the end of a run)."""
    import indexer.store.delta as delta_module

    real = delta_module.pq.ParquetWriter

    def writer(sink, schema, **kwargs):
        if "images_indexed" in schema.names:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real(sink, schema, **kwargs)

    monkeypatch.setattr(delta_module.pq, "ParquetWriter", writer)


def test_a_store_that_cannot_be_opened_still_gives_a_summary(tmp_path, monkeypatch):
    from indexer.store.delta import DeltaStore

    def unreadable(self):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(DeltaStore, "exists", unreadable)
    store = tmp_path / "store"
    result = invoke("index", f"oci:{oci_layout(tmp_path / 'l', 2)}", "--store", store, "--json")
    summary = failed_run(result, store)
    assert summary["store_error"].endswith("permission denied")
    assert (summary["indexed"], summary["failed"], summary["errors"]) == (0, 0, [])


def test_an_old_layout_store_refused_at_open_gives_a_summary(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    (store / "imgdex.duckdb").write_bytes(b"")
    result = invoke("index", f"oci:{oci_layout(tmp_path / 'l', 1)}", "--store", store, "--json")
    assert result.exit_code == 1
    summary = json.loads(result.stdout)
    assert set(summary) == KEYS and "imgdex migrate" in summary["store_error"]
    assert result.stderr == f"imgdex: {summary['store_error']}\n"
    assert (summary["indexed"], summary["failed"], summary["errors"]) == (0, 0, [])


def test_a_store_that_fills_up_mid_run_reports_what_landed(tmp_path, monkeypatch, base_store):
    monkeypatch.setattr(run_module, "BATCH", 1)  # a commit an image
    missing = tmp_path / "missing.tar"
    more = f"oci:{oci_layout(tmp_path / 'more', 5, repo='team/more')}"
    _commits_fail_after(monkeypatch, 2)
    result = invoke("index", missing, more, "--store", base_store, "--json")
    monkeypatch.undo()
    summary = failed_run(result, base_store)
    assert summary["store_error"].endswith("no space left on device")
    landed = count(base_store) - 3
    assert 0 < landed < 5 and summary["indexed"] == landed
    assert summary["failed"] == 1 and summary["errors"] == [f"{missing}: no such file or directory"]
    assert runs(base_store) == [(3, 0)]  # the run's record is what failed to land


def test_a_batch_halved_around_a_bad_record_counts_the_half_that_landed(tmp_path, monkeypatch, base_store):

    records = [r for r in records_of(f"oci:{oci_layout(tmp_path / 'more', 4, repo='team/more')}")]
    records = [r for r in records if isinstance(r, ImageRecord)]
    bad = records[2]
    too_big = Blob(bad.layers[0].digest, 2**70, bad.layers[0].media_type)  # past int64: refused by Arrow
    records[2] = dataclasses.replace(bad, layers=(too_big,), source_path="/data/x.tar")
    monkeypatch.setattr(run_module, "parse_source", lambda spec, _options=None: Fixed(records))
    # One batch of four: refused whole, then its first half lands (a commit to images, one to
    # tags) and the disk fills up before the fourth image, the third being the bad one.
    _commits_fail_after(monkeypatch, 2)
    result = invoke("index", "fixed", "--store", base_store, "--json", "--jobs", 1)
    monkeypatch.undo()
    summary = failed_run(result, base_store)
    assert count(base_store) == 5 and summary["indexed"] == 2
    assert summary["failed"] == 1 and summary["errors"][0].startswith("/data/x.tar: image ")


def test_a_runs_row_that_cannot_be_written_gives_the_whole_summary(tmp_path, monkeypatch, base_store):
    missing = tmp_path / "missing.tar"
    _runs_row_fails(monkeypatch)
    result = invoke(
        "index", f"oci:{oci_layout(tmp_path / 'more', 4, repo='team/more')}", missing, "--store", base_store, "--json"
    )
    monkeypatch.undo()
    summary = failed_run(result, base_store)
    assert summary["store_error"].endswith("read-only file system")
    assert (summary["indexed"], summary["failed"]) == (4, 1) and count(base_store) == 7
    assert summary["errors"] == [f"{missing}: no such file or directory"]
    assert runs(base_store) == [(3, 0)]


def test_jobs_a_runs_row_that_cannot_be_written_gives_the_whole_summary(tmp_path, monkeypatch, base_store):
    monkeypatch.setattr(workers, "MIN_WORK", 0)
    sources = [f"oci:{oci_layout(tmp_path / f'more{i}', 3, repo=f'team/more{i}')}" for i in range(2)]
    _runs_row_fails(monkeypatch)  # in this process, which records the run; workers write no runs row
    result = invoke("index", *sources, "--store", base_store, "--json", "--jobs", 2)
    monkeypatch.undo()
    summary = failed_run(result, base_store)
    assert (summary["indexed"], summary["failed"], summary["errors"]) == (6, 0, [])
    assert count(base_store) == 9


def test_jobs_a_store_failure_before_the_summary_is_known_still_gives_a_document(tmp_path, monkeypatch, base_store):
    from indexer.store.delta import DeltaStore

    monkeypatch.setattr(workers, "MIN_WORK", 0)
    missing = tmp_path / "missing.tar"
    sources = [f"oci:{oci_layout(tmp_path / f'more{i}', 3, repo=f'team/more{i}')}" for i in range(2)]

    def unreadable(self):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    # This process cannot open the store; the workers (fresh interpreters) can, and may have
    # written their share by the time the run stops.
    monkeypatch.setattr(DeltaStore, "exists", unreadable)
    result = invoke("index", missing, *sources, "--store", base_store, "--json", "--jobs", 2)
    monkeypatch.undo()
    summary = failed_run(result, base_store)
    assert summary["indexed"] is None  # what the workers landed is theirs to say, and they were stopped
    assert summary["failed"] == len(summary["errors"])
