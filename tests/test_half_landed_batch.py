"""A batch is one commit of the images table, then one of the tags table. When the first lands and
the second does not (a full disk, an I/O error, a kill between the two), readers that take the
current tags from the images (`get`, `list`, `sql` over `tags`, `serve`) see the batch whole at
once; the tags table, the log of claims that `tags_versions` and readers of the Delta tables see,
lacks the batch's rows until the next run into the store (or `compact`) commits the tags files the
batch left, so the store converges whatever the next run indexes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from deltalake import DeltaTable
from deltalake.transaction import AddAction

from indexer.store.delta import Conflict, DeltaStore
from queries import engine

from test_write_hardening import REGISTRY, _enospc, invoke, oci_layout

BASE = "team/base"


def _layout(tmp_path, name: str, count: int, repo: str, salt: str = "") -> str:
    return f"oci:{oci_layout(tmp_path / name, count, repo=repo, salt=salt)}"


def _fail_tags_commits(monkeypatch, exc=_enospc):
    """Every commit of the tags table fails as a full disk would; the images commit lands."""
    real = DeltaTable.create_write_transaction

    def failing(self, *args, **kwargs):
        if self.table_uri.rstrip("/").endswith("/tags"):
            raise exc()
        return real(self, *args, **kwargs)

    monkeypatch.setattr(DeltaTable, "create_write_transaction", failing)


def _current(store) -> set[tuple]:
    """The current tags as every command reads them: from the images."""
    con = engine.connect(str(store))
    return set(con.execute("SELECT registry, name, tag, image_id FROM tags").fetchall())


def _log(store) -> set[tuple]:
    """The current tags of the tags table itself, resolved as an analyst reading the Delta table
    would: the newest claim per key, a tombstone retiring it."""
    rows = DeltaTable(str(store / "tags")).to_pyarrow_table().to_pylist()
    newest: dict = {}
    for row in rows:
        key = (row["registry"], row["name"], row["tag"])
        if key not in newest or (row["written_at"], row["run_id"]) > (newest[key]["written_at"], newest[key]["run_id"]):
            newest[key] = row
    return {key + (row["image_id"],) for key, row in newest.items() if not row["tombstone"]}


def _versions(store, name: str) -> set[tuple]:
    con = engine.connect(str(store))
    query = "SELECT tag, image_id FROM tags_versions WHERE name = ? AND NOT coalesce(tombstone, false)"
    return set(con.execute(query, [name]).fetchall())


@pytest.fixture
def half_landed(tmp_path, monkeypatch):
    """A store of one run (team/base:t0..t2), then a run whose one batch adds team/more:t0..t3 and
    moves team/base:t0 to a new image, its tags commit failing on a full disk."""
    store = tmp_path / "store"
    assert invoke("index", _layout(tmp_path, "base", 3, BASE), "--store", store).exit_code == 0
    _fail_tags_commits(monkeypatch)
    more = _layout(tmp_path, "more", 4, "team/more", salt="more")
    moved = _layout(tmp_path, "moved", 1, BASE, salt="moved")
    result = invoke("index", more, moved, "--store", store)
    monkeypatch.undo()
    assert result.exit_code == 1 and result.stderr.strip().endswith("no space left on device"), result.output
    return store, more, moved


def test_what_readers_see_when_only_the_images_commit_landed(half_landed):
    store, _, _ = half_landed
    current = _current(store)
    # get, list, sql over `tags`, serve: the batch whole, its new tags and the moved one.
    assert {(n, t) for _, n, t, _ in current} == {(BASE, f"t{i}") for i in range(3)} | {
        ("team/more", f"t{i}") for i in range(4)
    }
    got = invoke("get", f"{REGISTRY}/team/more:t2", "--store", store)
    assert got.exit_code == 0 and json.loads(got.output)["tags"] == ["t2"]
    listed = invoke("list", "--store", store, "--repository-name", "team/more", "--format", "json")
    assert listed.exit_code == 0 and len(json.loads(listed.output)["images"]) == 4
    # The tags table (tags_versions, the Delta table) holds only the first run's claims.
    assert _versions(store, "team/more") == set()
    assert {(n, t) for _, n, t, _ in _log(store)} == {(BASE, f"t{i}") for i in range(3)}
    assert _log(store) != current


@pytest.mark.parametrize("next_run", ["same-source", "other-source"])
def test_the_next_run_lands_the_missing_tag_rows(tmp_path, half_landed, next_run):
    store, more, moved = half_landed
    current = _current(store)
    if next_run == "same-source":
        assert invoke("index", more, moved, "--store", store).exit_code == 0
        assert _current(store) == current
    else:
        assert invoke("index", _layout(tmp_path, "other", 2, "team/other", salt="o"), "--store", store).exit_code == 0
        current |= {row for row in _current(store) if row[1] == "team/other"}
        assert _current(store) == current
    assert _log(store) == current
    assert {t for t, _ in _versions(store, "team/more")} == {f"t{i}" for i in range(4)}
    # `history` says which commit landed late, under the run whose rows it holds.
    history = invoke("history", "--store", store, "--format", "json")
    assert history.exit_code == 0, history.output
    versions = json.loads(history.output)["versions"]
    late = [v for v in versions if v["operation"] == "append (landed late)"]
    assert [(v["table"], v["rows"]) for v in late] == [("tags", 5)]
    half_run = {v["run"] for v in versions if v["table"] == "images" and v["operation"] == "append"}
    assert late[0]["run"] in half_run


def test_compaction_lands_the_missing_tag_rows_before_it_vacuums(half_landed):
    store, _, _ = half_landed
    current = _current(store)
    result = invoke("compact", "--store", store, "--retention", "0h", "--allow-short-retention")
    assert result.exit_code == 0, result.output
    assert _current(store) == current
    assert _log(store) == current


def test_a_second_try_of_the_tags_commit_on_a_full_disk_keeps_the_files(tmp_path, half_landed, monkeypatch):
    store, more, moved = half_landed
    current = _current(store)
    _fail_tags_commits(monkeypatch)
    assert invoke("index", more, moved, "--store", store).exit_code == 1
    monkeypatch.undo()
    assert _log(store) != current
    assert invoke("index", more, moved, "--store", store).exit_code == 0
    assert _log(store) == current == _current(store)


def test_a_damaged_stray_tags_file_is_said_not_dropped_silently(tmp_path, half_landed):
    store, _, _ = half_landed
    live = set(DeltaTable(str(store / "tags")).file_uris())
    strays = [p for p in (store / "tags").glob("*.parquet") if not any(uri.endswith(p.name) for uri in live)]
    assert len(strays) == 1
    strays[0].write_bytes(strays[0].read_bytes()[:100])  # cut short, as by a crash of the disk
    current = _current(store)
    said = f"note: store {store}: cannot read tags file {strays[0].name} of a batch whose images landed"
    result = invoke("index", _layout(tmp_path, "other", 1, "team/other", salt="o"), "--store", store)
    assert result.exit_code == 0, result.output
    assert said in result.stderr and result.stderr.count(said) == 1
    assert {row for row in _current(store) if row[1] != "team/other"} == current  # what readers see stays whole
    result = invoke("compact", "--store", store)
    assert result.exit_code == 0 and said[len("note: ") :] in result.stderr


_KILLED_BETWEEN = """
import os, signal, sys
from indexer.store.delta import Conflict, DeltaStore
from queries.cli import cli

real = DeltaStore._commit_append

def commit(self, table, *args, **kwargs):
    if table == "tags":
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, table, *args, **kwargs)

DeltaStore._commit_append = commit
cli(sys.argv[1:])
"""


def test_a_run_killed_between_the_two_commits(tmp_path):
    store = tmp_path / "store"
    assert invoke("index", _layout(tmp_path, "base", 3, BASE), "--store", store).exit_code == 0
    more = _layout(tmp_path, "more", 4, "team/more", salt="more")
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_BETWEEN, "index", more, "--store", str(store)],
        capture_output=True,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    current = _current(store)
    assert {t for _, n, t, _ in current if n == "team/more"} == {f"t{i}" for i in range(4)}
    assert _log(store) != current
    assert invoke("index", more, "--store", store).exit_code == 0
    assert _log(store) == current == _current(store)


def test_tags_files_landed_by_another_writer_are_not_committed_again(half_landed):
    store, _, _ = half_landed
    with DeltaStore(str(store)) as tables:
        before = tables.files()["tags"]
        assert tables._land_stray_tags(tables.files())
        after = tables.files()["tags"]
        [stray] = set(after.files) - set(before.files)
        assert not tables._land_stray_tags(tables.files())
        # The batch's own writer, late, committing from the version it read: it finds its file
        # landed and adds nothing.
        name = os.path.basename(stray)
        add = AddAction(name, os.path.getsize(stray), {}, 0, True, "{}")
        assert tables._commit_append("tags", [add], before.version, None, metadata={"files": name}) == after.version
        assert tables.files()["tags"].version == after.version
    assert _log(store) == _current(store)


def test_a_tags_commit_that_meets_a_conflict_after_its_images_landed_keeps_its_rows(tmp_path, monkeypatch):
    # The batch is derived again, from images that already carry its tags: no tag row comes of it,
    # so the rows of the first attempt are the ones to land.
    store = tmp_path / "store"
    assert invoke("index", _layout(tmp_path, "base", 3, BASE), "--store", store).exit_code == 0
    real, conflicts = DeltaStore._commit_append, []

    def commit(self, table, *args, **kwargs):
        if table == "tags" and not conflicts:
            conflicts.append(table)
            raise Conflict(table)
        return real(self, table, *args, **kwargs)

    monkeypatch.setattr(DeltaStore, "_commit_append", commit)
    assert invoke("index", _layout(tmp_path, "more", 4, "team/more", salt="more"), "--store", store).exit_code == 0
    monkeypatch.undo()
    assert conflicts
    assert _log(store) == _current(store)


@pytest.mark.parametrize("vacuum", [True, False])
def test_a_batch_that_lands_while_compact_runs_is_committed_once(tmp_path, monkeypatch, vacuum):
    """Compaction rewrites images, then tags: a batch landing between the two keeps its marked
    images files, and its tags files are rewritten and left on disk, removed. They were committed
    once, and are not strays for compact's own vacuum or the next run."""
    store = tmp_path / "store"
    assert invoke("index", _layout(tmp_path, "base", 3, BASE), "--store", store).exit_code == 0
    compact_table = DeltaStore._compact_table

    def batch_between(self, table, *args, **kwargs):
        out = compact_table(self, table, *args, **kwargs)
        if table == "images":
            result = invoke("index", _layout(tmp_path, "mid", 2, "team/mid", salt="mid"), "--store", store)
            assert result.exit_code == 0, result.output
        return out

    monkeypatch.setattr(DeltaStore, "_compact_table", batch_between)
    with DeltaStore(str(store)) as tables:
        tables.compact(vacuum=vacuum)
    monkeypatch.undo()
    assert invoke("index", _layout(tmp_path, "other", 1, "team/other", salt="o"), "--store", store).exit_code == 0
    rows = DeltaTable(str(store / "tags")).to_pyarrow_table().to_pylist()
    claims = [(row["name"], row["tag"], row["run_id"]) for row in rows]
    assert len(claims) == len(set(claims))
    assert _log(store) == _current(store)


def test_a_late_landing_does_not_pull_later_claims_into_an_older_version(tmp_path, monkeypatch):
    """`--as-of` the images version of a batch whose tags landed late: the tags versions read with
    it are those of that time, not every tags commit up to the late landing."""
    from datetime import datetime, timezone

    from indexer.store.delta_writer import DeltaWriter
    from test_write_hardening import records_of

    store = tmp_path / "store"
    assert invoke("index", _layout(tmp_path, "base", 3, BASE), "--store", store).exit_code == 0
    later = DeltaWriter(str(store))  # a long run, past its first batch before the batch below
    later.write(records_of(_layout(tmp_path, "first", 1, "team/first", salt="first")), datetime.now(timezone.utc))
    _fail_tags_commits(monkeypatch)
    assert invoke("index", _layout(tmp_path, "moved", 1, BASE, salt="A"), "--store", store).exit_code == 1
    monkeypatch.undo()
    half = DeltaTable(str(store / "images")).version()
    later.write(records_of(_layout(tmp_path, "claim", 1, BASE, salt="B")), datetime.now(timezone.utc))
    later.close()
    claim = next(image for _, name, tag, image in _current(store) if (name, tag) == (BASE, "t0"))
    assert invoke("index", _layout(tmp_path, "next", 1, "team/next", salt="n"), "--store", store).exit_code == 0
    con = engine.connect(str(store), as_of=half)
    query = "SELECT image_id FROM tags_versions WHERE name = ? AND tag = 't0'"
    assert claim not in {image for (image,) in con.execute(query, [BASE]).fetchall()}
    assert _log(store) == _current(store)  # the later claim still wins now
