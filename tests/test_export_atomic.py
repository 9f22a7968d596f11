"""`imgdex export` over a previous export is all or nothing: when a later table cannot be written or
renamed into place, every TABLE.parquet in the folder is still the previous export's (read back and
compared, not only listed), no temporary file is left, the user's other files are untouched, and
the command says so in one line with exit code 1. Once the cause is gone, the next export is whole.

The previous export comes from a store of one image; the new one from a store that also indexed a
second archive, so images, tags and runs all differ between the two.
"""

from __future__ import annotations

import errno
import os
import shutil

import pyarrow.parquet as pq
import pytest
from builders import classic_save_files, write_tar
from click.testing import CliRunner

from queries.cli import cli

TABLE_FILES = ("images.parquet", "tags.parquet", "runs.parquet")


def _invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def _index(store: str, *archives: str) -> None:
    for archive in archives:
        result = _invoke("index", archive, "--store", store)
        assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """(old store, new store, a clean export of the new store to compare with)."""
    root = tmp_path_factory.mktemp("export-atomic")
    first = write_tar(
        str(root / "first.tar"),
        classic_save_files([{"tags": ["app:1"], "layers": [b"base", b"one"], "created": "2026-11-29T10:00:00Z"}]),
    )
    second = write_tar(
        str(root / "second.tar"),
        classic_save_files([{"tags": ["web:2", "web:latest"], "layers": [b"two"], "created": "2026-11-30T10:00:00Z"}]),
    )
    old, new = str(root / "old"), str(root / "new")
    _index(old, first)
    _index(new, first, second)
    reference = str(root / "reference")
    assert _invoke("export", reference, "--store", new).exit_code == 0
    return old, new, reference


def _contents(folder) -> dict:
    return {
        name: pq.read_table(os.path.join(folder, name))
        for name in TABLE_FILES
        if os.path.isfile(os.path.join(folder, name))
    }


def _rows(table) -> tuple:
    # Row order is not part of an export (the store's files are read in parallel).
    return table.schema, sorted(map(repr, table.to_pylist()))


def _same(got: dict, expected: dict) -> bool:
    return got.keys() == expected.keys() and all(_rows(got[name]) == _rows(expected[name]) for name in expected)


@pytest.fixture
def previous(stores, tmp_path):
    """A folder holding the old store's export and a file of the user's: (folder, its tables)."""
    old, new, reference = stores
    out = tmp_path / "out"
    result = _invoke("export", str(out), "--store", old)
    assert result.exit_code == 0, result.output
    (out / "notes.txt").write_text("mine")
    tables = _contents(out)
    assert set(tables) == set(TABLE_FILES)
    assert not _same(tables, _contents(reference)), "the two exports must differ for the checks to mean anything"
    return out, tables


def _one_line_failure(result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("imgdex: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], result.stderr
    assert "Traceback" not in result.output


def _assert_untouched(out, tables: dict, others: set[str]) -> None:
    assert set(os.listdir(out)) == set(tables) | others, "a temporary or old file was left behind"
    assert _same(_contents(out), tables)
    assert (out / "notes.txt").read_text() == "mine"


def _assert_new_export(stores, out, others: set[str]) -> None:
    _, new, reference = stores
    result = _invoke("export", str(out), "--store", new)
    assert result.exit_code == 0, result.output
    assert set(os.listdir(out)) == set(TABLE_FILES) | others
    assert _same(_contents(out), _contents(reference))
    assert (out / "notes.txt").read_text() == "mine"


def test_a_folder_in_place_of_tags_leaves_the_previous_export(stores, previous):
    out, tables = previous
    (out / "tags.parquet").unlink()
    (out / "tags.parquet").mkdir()
    (out / "tags.parquet" / "part-0.parquet").write_bytes(b"someone else's")
    del tables["tags.parquet"]

    result = _invoke("export", str(out), "--store", stores[1])

    _one_line_failure(result, f"cannot write {out / 'tags.parquet'}: Is a directory")
    _assert_untouched(out, tables, {"notes.txt", "tags.parquet"})
    assert (out / "tags.parquet" / "part-0.parquet").read_bytes() == b"someone else's"

    shutil.rmtree(out / "tags.parquet")
    _assert_new_export(stores, out, {"notes.txt"})


def _fail_replace_onto(monkeypatch, target: str, code: int = errno.EBUSY) -> None:
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        # Only the new file's rename: putting the old file back onto the same path is what must work.
        if os.fspath(dst) == target and os.fspath(src).endswith(".tmp"):
            raise OSError(code, os.strerror(code))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize("links", ["hard links", "no hard links"])
@pytest.mark.parametrize("failing", ["tags.parquet", "runs.parquet"])
def test_a_rename_that_fails_after_the_first_puts_the_old_files_back(stores, previous, monkeypatch, links, failing):
    out, tables = previous
    if links == "no hard links":
        # As on a file system without them: the old files are renamed aside instead.
        def refuse(*args, **kwargs):
            raise OSError(errno.EPERM, os.strerror(errno.EPERM))

        monkeypatch.setattr(os, "link", refuse)
    _fail_replace_onto(monkeypatch, str(out / failing))

    result = _invoke("export", str(out), "--store", stores[1])

    _one_line_failure(result, f"cannot write {out / failing}: Device or resource busy")
    _assert_untouched(out, tables, {"notes.txt"})
    monkeypatch.undo()
    _assert_new_export(stores, out, {"notes.txt"})


def test_a_folder_made_while_the_store_is_read_leaves_the_previous_export(stores, previous, monkeypatch):
    from queries import export

    out, tables = previous
    real = export._export_table

    def export_table(con, table, path, batch_rows):
        if table == "runs":
            (out / "tags.parquet").unlink()
            (out / "tags.parquet").mkdir()
        return real(con, table, path, batch_rows)

    monkeypatch.setattr(export, "_export_table", export_table)
    del tables["tags.parquet"]

    result = _invoke("export", str(out), "--store", stores[1])

    _one_line_failure(result, f"cannot write {out / 'tags.parquet'}: Is a directory")
    _assert_untouched(out, tables, {"notes.txt", "tags.parquet"})
    monkeypatch.undo()
    (out / "tags.parquet").rmdir()
    _assert_new_export(stores, out, {"notes.txt"})


def test_a_full_disk_after_the_first_table_leaves_the_previous_export(stores, previous, monkeypatch):
    out, tables = previous
    real = pq.ParquetWriter.write_batch
    writers = []

    def write_batch(self, *args, **kwargs):
        if self not in writers:
            writers.append(self)
        if len(writers) > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetWriter, "write_batch", write_batch)

    result = _invoke("export", str(out), "--store", stores[1])

    _one_line_failure(result, f"cannot write {out / 'tags.parquet'}: No space left on device")
    assert len(writers) == 2, "images is written whole before tags fails"
    _assert_untouched(out, tables, {"notes.txt"})
    monkeypatch.undo()
    _assert_new_export(stores, out, {"notes.txt"})


def test_an_old_file_that_cannot_be_put_back_is_kept_and_named(stores, previous, monkeypatch):
    out, tables = previous
    images = str(out / "images.parquet")
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if os.fspath(dst) == str(out / "tags.parquet") and os.fspath(src).endswith(".tmp"):
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))
        if os.fspath(dst) == images and os.path.basename(os.fspath(src)).endswith(".old"):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)

    result = _invoke("export", str(out), "--store", stores[1])

    _one_line_failure(
        result,
        f"cannot write {out / 'tags.parquet'}: Device or resource busy",
        "the previous images.parquet could not be put back (it is kept as ",
    )
    kept = [name for name in os.listdir(out) if name.startswith(".images.parquet.") and name.endswith(".old")]
    assert len(kept) == 1 and str(out / kept[0]) in result.stderr
    assert _rows(pq.read_table(out / kept[0])) == _rows(tables["images.parquet"])
    # tags and runs were never replaced, so they are still the previous export's.
    assert _same(_contents(out), {**tables, "images.parquet": _contents(stores[2])["images.parquet"]})
    assert {name for name in os.listdir(out) if name.startswith(".")} == set(kept), "a temporary file was left"
