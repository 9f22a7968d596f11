"""Where `imgdex export` may write. A folder that is the store or lies inside it is refused in one
usage line (exit 2) before anything is written: `compact` deletes every file in a table's folder
that the table does not list, so an export there was lost at the next compaction. Paths are
compared resolved (symbolic links, `..`), and a store inside the export folder is left alone.
The summary names the folder on one line, escaped as every other message does.
"""

from __future__ import annotations

import os

import pytest
from builders import classic_save_files, write_tar
from click.testing import CliRunner

from queries.cli import cli

TABLE_FILES = ("images.parquet", "tags.parquet", "runs.parquet")


def _invoke(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False, prog_name="imgdex")


@pytest.fixture
def store(tmp_path, monkeypatch):
    """`store`, in the current folder: paths stay short enough to be quoted whole."""
    monkeypatch.chdir(tmp_path)
    archive = write_tar(
        "app.tar",
        classic_save_files([{"tags": ["app:1"], "layers": [b"base", b"one"], "created": "2026-11-29T10:00:00Z"}]),
    )
    result = _invoke("index", archive, "--store", "store")
    assert result.exit_code == 0, result.output
    return "store"


def _files(folder) -> dict:
    """Every file and folder under `folder`, with each file's bytes."""
    found = {}
    for top, folders, files in os.walk(folder):
        for name in folders:
            found[os.path.relpath(os.path.join(top, name), folder)] = None
        for name in files:
            path = os.path.join(top, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, folder)] = f.read()
    return found


@pytest.mark.parametrize(
    "target, where",
    [
        ("{store}", "is the store"),
        ("{store}/images", "lies inside the store"),
        ("{store}/tags/_delta_log", "lies inside the store"),
        ("{store}/runs/new/deeper", "lies inside the store"),
        ("{store}/../store/images", "lies inside the store"),
        ("{store}/images/..", "is the store"),
        ("./{store}/.", "is the store"),
        ("linked/exports", "lies inside the store"),
        ("alias", "is the store"),
    ],
)
def test_a_folder_in_the_store_is_refused_before_anything_is_written(store, tmp_path, target, where):
    os.symlink(os.path.join(store, "images"), "linked")
    os.symlink(tmp_path / store, "alias")
    target = target.format(store=store, tmp=tmp_path)
    before = _files(store)

    result = _invoke("export", target, "--store", store)

    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith(f"imgdex export: Invalid value for 'DIRECTORY': '{target}' {where}"), line
    assert f"{where} 'store', whose" in line or where == "is the store"
    assert "compact deletes the files its tables do not list" in line
    assert line.endswith("See 'imgdex export --help'."), line
    assert _files(store) == before, "the store's folders were written to"


@pytest.mark.parametrize("target", [".", "{tmp}", "store-exports", "stor", "store/../exports"])
def test_a_folder_beside_or_above_the_store_takes_the_export(store, tmp_path, target):
    """A name that starts as the store's does is not inside it; a store inside the export folder is
    left as it was, since an export writes nothing but its three files there."""
    target = target.format(tmp=tmp_path)
    before = _files(store)

    result = _invoke("export", target, "--store", store)

    assert result.exit_code == 0, result.output
    assert set(TABLE_FILES) <= set(os.listdir(target))
    assert _files(store) == before
    assert _invoke("get", "app:1", "--store", store).exit_code == 0


def test_the_library_refuses_a_folder_in_the_store_too(store):
    from indexer.errors import QueryError
    from queries.export import export_from_store

    with pytest.raises(QueryError, match="lies inside the store"):
        export_from_store(store, os.path.join(store, "images"))
    assert not set(TABLE_FILES) & set(os.listdir(os.path.join(store, "images")))


@pytest.mark.parametrize(
    "name, shown",
    [
        ("new\nline", "new\\nline"),
        ("esc\x1b[2Jape", "esc\\x1b[2Jape"),
        ("bidi\u202eexe.txt", "bidi\\u202eexe.txt"),
        ("tab\there", "tab\\there"),
    ],
)
def test_the_summary_names_the_folder_on_one_line(store, name, shown):
    """The summary quoted the folder raw: a newline split it, a terminal's escape sequence ran."""
    result = _invoke("export", name, "--store", store)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"1 images, 1 tags, 1 runs written to {shown}\n"
    assert set(TABLE_FILES) <= set(os.listdir(name))


@pytest.mark.parametrize("kind", ["file", "device", "fifo"])
def test_a_target_that_exists_and_is_no_folder_is_one_usage_line(store, tmp_path, kind):
    """click's Path refused a regular file with exit 2; a device or a FIFO came to the export
    and failed there with exit 1."""
    target = {"file": "plain", "device": "/dev/null", "fifo": "fifo"}[kind]
    if kind == "file":
        (tmp_path / target).write_bytes(b"")
    elif kind == "fifo":
        os.mkfifo(target)
    result = _invoke("export", target, "--store", store)
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"imgdex export: Invalid value for 'DIRECTORY': '{target}' exists and is not a directory. "
        "See 'imgdex export --help'."
    ]


def test_an_empty_target_is_one_usage_line(store):
    # It failed as `cannot create : No such file or directory`, naming nothing.
    result = _invoke("export", "", "--store", store)
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "imgdex export: Invalid value for 'DIRECTORY': an empty value names no folder (`.` is this one). "
        "See 'imgdex export --help'."
    ]


@pytest.mark.parametrize("command", [("get", "app:1"), ("list",), ("sql", "SELECT 1")])
def test_as_of_on_an_export_says_it_keeps_no_history_not_to_migrate(store, command):
    """Migrating an export would replace its files, and it holds current rows only: the old
    layout's advice to migrate was the wrong one for it."""
    assert _invoke("export", "out", "--store", store).exit_code == 0
    result = _invoke(*command, "--store", "out", "--as-of", "1")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "imgdex: store out holds plain Parquet files (an `imgdex export`), which keep no history"
    ]
