"""An error right behind a commit that landed (Ctrl-C as the commit call returns, a post-commit
hook that fails) must not delete the files that commit took: the log would then name data that is
gone, and every later read of the store would fail."""

from __future__ import annotations

import os
import sys

import pytest
from click.testing import CliRunner
from deltalake import DeltaTable

from conftest import ROOT
from queries.cli import cli

sys.path.insert(0, os.path.join(ROOT, "bench"))
import corpus  # noqa: E402


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def count(store, table="images") -> int:
    return len(rows(store, f"SELECT 1 FROM {table}"))


def rows(store, query) -> list[str]:
    result = invoke("sql", query, "--store", store, "--format", "csv")
    assert result.exit_code == 0, result.output
    return sorted(result.stdout.splitlines()[1:])


TAGS_LOG = "SELECT name, tag, image_id FROM tags_versions WHERE NOT coalesce(tombstone, false)"


def interrupt_after_commits(monkeypatch, error=KeyboardInterrupt, *, skip=0):
    """The next commit (after `skip` others) lands, then `error` is raised as the call returns."""
    original = DeltaTable.create_write_transaction
    seen = [0]

    def commit_then_fail(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        seen[0] += 1
        if seen[0] == skip + 1:
            raise error()
        return result

    monkeypatch.setattr(DeltaTable, "create_write_transaction", commit_then_fail)


@pytest.fixture
def indexed(tmp_path):
    layout, store = tmp_path / "layout", tmp_path / "store"
    corpus.write_oci_layout(str(layout), 40)
    assert invoke("index", layout, "--store", store, "--quiet").exit_code == 0
    return layout, store


def test_ctrl_c_as_a_compaction_commit_returns_keeps_its_files(indexed, monkeypatch):
    _, store = indexed
    interrupt_after_commits(monkeypatch)
    result = invoke("compact", "--store", store)
    assert result.exit_code == 130 and result.stderr.splitlines() == ["imgdex: interrupted"]
    monkeypatch.undo()
    assert count(store) == 40
    assert invoke("compact", "--store", store).exit_code == 0
    assert count(store) == 40 and count(store, "tags") == 40


@pytest.mark.parametrize("error", [KeyboardInterrupt, lambda: OSError("post-commit hook failed")])
def test_an_error_as_an_images_commit_returns_keeps_the_batch(tmp_path, indexed, monkeypatch, error):
    _, store = indexed
    more = tmp_path / "more"
    corpus.write_oci_layout(str(more), 30, seed=7)
    interrupt_after_commits(monkeypatch, error)
    result = invoke("index", more, "--store", store, "--quiet")
    assert result.exit_code != 0
    monkeypatch.undo()
    assert count(store) == 70  # the images commit landed: its rows read
    # The tags files of the landed batch were kept, and the next run commits them: the tags log
    # ends as that of a store that was never interrupted.
    assert invoke("index", more, "--store", store, "--quiet").exit_code == 0
    clean = tmp_path / "clean"
    for source in indexed[0], more:
        assert invoke("index", source, "--store", clean, "--quiet").exit_code == 0
    assert count(store) == 70
    assert rows(store, TAGS_LOG) == rows(clean, TAGS_LOG) and len(rows(clean, TAGS_LOG)) >= 40


def test_a_batch_whose_commit_never_happened_leaves_no_files(tmp_path, indexed, monkeypatch):
    _, store = indexed
    more = tmp_path / "more"
    corpus.write_oci_layout(str(more), 30, seed=7)
    before = {name for _, _, names in os.walk(store) for name in names if name.endswith(".parquet")}

    def refuse(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(DeltaTable, "create_write_transaction", refuse)
    assert invoke("index", more, "--store", store, "--quiet").exit_code == 130
    monkeypatch.undo()
    after = {name for _, _, names in os.walk(store) for name in names if name.endswith(".parquet")}
    assert after == before
    assert count(store) == 40
