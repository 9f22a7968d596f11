"""A first run whose every record the store refuses (each one error line) has created the tables for
its first batch, and lands nothing: it leaves the store folder as it was, as a failed first run does,
and a later run creates the store. Into an existing store, and from a `--shard K/N` worker, the run
is recorded all the same."""

from __future__ import annotations

import dataclasses
import os

import pytest

import indexer.run as run_module
from indexer.model import ImageRecord, TagMoves
from test_first_run_full_disk import _says_no_store, _tree, invoke
from test_write_hardening import REGISTRY, Fixed, _spoil, count, oci_layout, records_of, runs


def _refused(tmp_path, how: str, images: int = 3) -> list[ImageRecord]:
    layout = oci_layout(tmp_path / "refused", images, salt="refused")
    records = [r for r in records_of(f"oci:{layout}") if isinstance(r, ImageRecord)]
    return [dataclasses.replace(_spoil(r, how), source_path=f"/data/bad-{i}.tar") for i, r in enumerate(records)]


def _index_refused(monkeypatch, items, store, *options):
    monkeypatch.setattr(run_module, "parse_source", lambda spec, _options=None: Fixed(items))
    result = invoke("index", "fixed", "--store", store, *options)
    monkeypatch.undo()
    return result


def _assert_each_refused_once(result, images: int) -> None:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == images and all(" cannot be stored: " in line for line in lines), lines
    assert result.stdout.startswith(f"indexed 0 images, {images} failed")


def _assert_a_good_run_creates_the_store(tmp_path, store) -> None:
    result = invoke("index", "-q", f"oci:{oci_layout(tmp_path / 'good', 2)}", "--store", store)
    assert result.exit_code == 0, result.output
    assert count(store) == 2
    assert [(r[1], r[2]) for r in runs(store)] == [(2, 0)]


@pytest.mark.parametrize("how", ["too-big", "refused-by-duckdb"])
@pytest.mark.parametrize("batch", [5000, 1])
def test_a_first_run_whose_records_are_all_refused_leaves_no_store(tmp_path, monkeypatch, how, batch):
    store = tmp_path / "new" / "deeper" / "store"
    monkeypatch.setattr(run_module, "BATCH", batch)  # one batch, or one per record: each made the tables
    result = _index_refused(monkeypatch, _refused(tmp_path, how), store)
    _assert_each_refused_once(result, 3)
    assert not os.path.exists(tmp_path / "new"), _tree(tmp_path / "new")
    _says_no_store(store)
    _assert_a_good_run_creates_the_store(tmp_path, store)


def test_into_an_existing_empty_folder_it_stays_empty_and_into_a_store_it_is_recorded(tmp_path, monkeypatch):
    store = tmp_path / "store"
    store.mkdir()
    result = _index_refused(monkeypatch, _refused(tmp_path, "too-big"), store)
    _assert_each_refused_once(result, 3)
    assert os.listdir(store) == []
    _assert_a_good_run_creates_the_store(tmp_path, store)
    result = _index_refused(monkeypatch, _refused(tmp_path, "too-big"), store)
    _assert_each_refused_once(result, 3)
    assert count(store) == 2
    assert [(r[1], r[2]) for r in runs(store)] == [(2, 0), (0, 3)]


def test_a_tag_claim_settled_after_the_refused_batch_leaves_no_store(tmp_path, monkeypatch):
    """A claim waits for the next batch and settles first; it points at no image this run landed,
    so nothing is committed and the store goes as if it had not been there."""
    store = tmp_path / "store"
    first, second = _refused(tmp_path, "too-big", 2)
    claim = TagMoves(REGISTRY, (("team/app", "moved", first.digest),))
    monkeypatch.setattr(run_module, "BATCH", 1)
    result = _index_refused(monkeypatch, [first, claim, second], store)
    _assert_each_refused_once(result, 2)
    assert not os.path.exists(store), _tree(store)
    _assert_a_good_run_creates_the_store(tmp_path, store)


def test_a_shard_worker_whose_records_are_all_refused_records_its_run_and_a_plain_run_does_not(tmp_path, monkeypatch):
    plain, sharded = tmp_path / "plain", tmp_path / "sharded"
    _assert_each_refused_once(_index_refused(monkeypatch, _refused(tmp_path, "too-big"), plain), 3)
    assert not os.path.exists(plain), _tree(plain)
    result = _index_refused(monkeypatch, _refused(tmp_path, "too-big"), sharded, "--shard", "1/2")
    _assert_each_refused_once(result, 3)
    assert [(r[1], r[2]) for r in runs(sharded)] == [(0, 3)] and count(sharded) == 0
    assert invoke("index", "-q", f"oci:{oci_layout(tmp_path / 'good', 2)}", "--store", sharded).exit_code == 0
    assert count(sharded) == 2 and [(r[1], r[2]) for r in runs(sharded)] == [(0, 3), (2, 0)]
