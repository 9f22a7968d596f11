"""A store's Delta log damaged or written by hand: every reader, `history` and `compact` refuse it in
one line with a non-zero exit, in bounded memory and time, and never open a file outside the store."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import sample_sources
from indexer.errors import StoreError
from indexer.store import deltalog
from test_badinput import _MEASURE, IMGDEX_ENV, MAX_PEAK_RSS, ROOT, Measured, error_lines, invoke, run_measured

LOG = os.path.join("images", "_delta_log")
NEWEST = os.path.join(LOG, "00000000000000000002.json")
# Address space allowed to a child imgdex: room for DuckDB and pyarrow, yet a reader that grows
# without bound fails at once instead of taking the machine.
ADDRESS_SPACE = 4 << 30

# Sets the cap before imgdex starts, so that runaway growth ends in MemoryError, not in swapping.
_CAPPED = """
import resource, runpy, sys
cap = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
sys.argv = ["imgdex", *sys.argv[2:]]
runpy.run_module("queries.cli", run_name="__main__", alter_sys=True)
"""


def run_capped(args: list[str], timeout: float = 60) -> Measured:
    """`imgdex ARGS` in a child process with its address space capped, killed after `timeout`;
    with its peak RSS and wall time."""
    env = {key: value for key, value in os.environ.items() if key not in IMGDEX_ENV}
    with tempfile.TemporaryDirectory() as scratch:
        report = os.path.join(scratch, "report.json")
        command = [sys.executable, "-c", _MEASURE, report, str(timeout)]
        command += [sys.executable, "-c", _CAPPED, str(ADDRESS_SPACE), *args]
        started = time.monotonic()
        proc = subprocess.run(command, capture_output=True, cwd=ROOT, env=env, timeout=timeout + 60)
        seconds = time.monotonic() - started
        with open(report) as f:
            result = json.load(f)
    return Measured(
        result["code"],
        proc.stdout.decode(errors="replace"),
        proc.stderr.decode(errors="replace"),
        result["maxrss"],
        seconds,
    )


def assert_refused(run: Measured, pattern: str, seconds: float = 30) -> None:
    assert run.code >= 0, f"killed by signal {-run.code} after {run.seconds:.1f} s\n{run.stderr[-2000:]}"
    assert run.code == 1, run.stderr[-2000:]
    assert "Traceback" not in run.stderr, run.stderr[-2000:]
    assert run.peak_rss < MAX_PEAK_RSS, f"peak RSS {run.peak_rss >> 20} MiB\n{run.stderr[-2000:]}"
    assert run.seconds < seconds, f"took {run.seconds:.1f} s"
    lines = error_lines(run.stderr)
    assert len(lines) == 1 and re.search(pattern, lines[0]), run.stderr[-2000:]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> str:
    """A store of two runs: the images log holds commits 0 to 2."""
    store = str(tmp_path_factory.mktemp("log-store") / "store")
    for _ in range(2):
        out = invoke("index", *sample_sources(), "--repository", "samples/app", "--store", store)
        assert out.code == 0, out.stderr
    assert os.path.exists(os.path.join(store, NEWEST))
    return store


@pytest.fixture(scope="module")
def some_id(pristine) -> str:
    out = invoke("sql", "SELECT id FROM images ORDER BY id LIMIT 1", "--store", pristine, "--format", "json")
    assert out.code == 0, out.stderr
    return json.loads(out.stdout.splitlines()[0])["id"]


@pytest.fixture
def store(pristine, tmp_path) -> str:
    copy = str(tmp_path / "store")
    shutil.copytree(pristine, copy)
    return copy


def commands(image: str) -> list[list[str]]:
    return [["get", image], ["list"], ["sql", "SELECT count(*) FROM images"], ["history"], ["compact"]]


def refused_everywhere(store: str, image: str, pattern: str, *, compact: str | None = "") -> None:
    """Every command reading the store, in process, refuses it in one line with exit code 1.
    `compact`: what compact says, when not `pattern`; None when delta-rs, which compact opens each
    table with first, has its own words for it."""
    for args in commands(image):
        out = invoke(*args, "--store", store)
        lines = error_lines(out.stderr)
        assert out.code == 1, (args, out.stderr)
        wanted = pattern if args[0] != "compact" or compact == "" else compact or ""
        assert len(lines) == 1 and re.search(wanted, lines[0]), (args, out.stderr)


def append_line(store: str, line: str) -> None:
    with open(os.path.join(store, NEWEST), "a") as f:
        f.write("\n" + line + "\n")


def log_names(store: str) -> list[str]:
    return sorted(os.listdir(os.path.join(store, LOG)))


# ---- a commit named with a huge version


@pytest.mark.parametrize("command", ["get", "list", "compact", "index"])
def test_a_commit_named_with_a_huge_version_is_a_gap_refused_at_once(store, some_id, command):
    os.rename(os.path.join(store, NEWEST), os.path.join(store, LOG, "99999999999999999999.json"))
    args = {
        "get": ["get", some_id],
        "list": ["list"],
        "compact": ["compact"],
        "index": ["index", *sample_sources(), "--repository", "samples/app"],
    }[command]
    run = run_capped([*args, "--store", store])
    assert_refused(run, r"table images: its log skips from version 1 to 99999999999999999999; a commit is missing")


def test_a_gap_just_before_the_newest_commit_is_named(store, some_id):
    os.rename(os.path.join(store, NEWEST), os.path.join(store, LOG, "00000000000000000003.json"))
    refused_everywhere(
        store, some_id, r"^imgdex: table images: its log skips from version 1 to 3; a commit is missing$"
    )


# ---- commit files that are not regular files, or too large


@pytest.mark.parametrize("kind", ["fifo", "device"])
@pytest.mark.parametrize("command", ["get", "list", "history", "compact"])
def test_a_commit_that_is_no_regular_file_is_refused_without_waiting(store, some_id, kind, command):
    path = os.path.join(store, NEWEST)
    os.remove(path)
    if kind == "fifo":
        os.mkfifo(path)
    else:
        os.symlink("/dev/zero", path)
    args = ["get", some_id] if command == "get" else [command]
    run = run_capped([*args, "--store", store])
    kind_name = "named pipe" if kind == "fifo" else "character device"
    assert_refused(
        run,
        rf"^imgdex: table images: cannot read commit 00000000000000000002\.json: not a regular file \({kind_name}\)$",
    )


def test_a_checkpoint_that_is_no_regular_file_is_refused_without_waiting(store, some_id):
    from deltalake import DeltaTable

    DeltaTable(os.path.join(store, "images")).create_checkpoint()
    checkpoint = os.path.join(store, LOG, "00000000000000000002.checkpoint.parquet")
    os.remove(checkpoint)
    os.mkfifo(checkpoint)
    run = run_capped(["get", some_id, "--store", store])
    assert_refused(
        run,
        r"^imgdex: table images: cannot read checkpoint 00000000000000000002\.checkpoint\.parquet: "
        r"not a regular file \(named pipe\)$",
    )


def test_a_checkpoint_cut_short_is_named_by_compact_and_index_too(store, some_id):
    """delta-rs, which compact and index open a table with, said only "Corrupt footer"."""
    from deltalake import DeltaTable

    DeltaTable(os.path.join(store, "images")).create_checkpoint()
    checkpoint = os.path.join(store, LOG, "00000000000000000002.checkpoint.parquet")
    with open(checkpoint, "r+b") as f:
        f.truncate(os.path.getsize(checkpoint) // 2)
    named = r"table images: cannot read checkpoint 00000000000000000002\.checkpoint\.parquet: .*No magic bytes"
    refused_everywhere(store, some_id, "^imgdex: " + named)
    run = run_capped(["index", os.path.join(ROOT, "data", "samples", "docker-save-app.tar"), "--store", store])
    assert_refused(run, "^imgdex: cannot open store .*: " + named)


def test_a_commit_larger_than_the_bound_is_refused(store, monkeypatch):
    monkeypatch.setattr(deltalog, "MAX_COMMIT_BYTES", 64, raising=False)
    with pytest.raises(StoreError, match=r"^table images: commit 00000000000000000000\.json is larger than "):
        deltalog.read_table(os.path.join(store, "images"))


def test_a_commit_of_too_many_actions_is_refused_before_it_is_all_parsed(store, monkeypatch):
    monkeypatch.setattr(deltalog, "MAX_COMMIT_ACTIONS", 2, raising=False)
    with pytest.raises(
        StoreError, match=r"^table images: commit 00000000000000000000\.json holds more than 2 actions$"
    ):
        deltalog.read_table(os.path.join(store, "images"))


def test_a_commit_line_longer_than_an_action_takes_is_refused(store, monkeypatch):
    monkeypatch.setattr(deltalog, "MAX_ACTION_BYTES", 1 << 20, raising=False)
    append_line(store, json.dumps({"commitInfo": {"note": "x" * (2 << 20)}}))
    with pytest.raises(
        StoreError, match=r"^table images: commit 00000000000000000002\.json has a line longer than 1 MiB$"
    ):
        deltalog.read_table(os.path.join(store, "images"))


# ---- lines the JSON parser or the protocol refuse


def test_a_deeply_nested_line_is_refused_in_one_line(store, some_id):
    append_line(store, '{"x":' + "[" * 100_000 + "]" * 100_000 + "}")
    refused_everywhere(
        store, some_id, r"^imgdex: table images: cannot read commit 00000000000000000002\.json: a line nests too deeply"
    )


@pytest.mark.parametrize("stamp", ["1e400", "NaN", '"abc"', "99999999999999999999999999", "1796307716276.5", "true"])
def test_a_commit_time_outside_int64_milliseconds_is_refused(store, some_id, stamp):
    path = os.path.join(store, NEWEST)
    with open(path) as f:
        text = f.read()
    head, _, tail = text.partition('"timestamp":')
    digits = len(tail) - len(tail.lstrip("0123456789"))
    assert digits
    with open(path, "w") as f:
        f.write(head + '"timestamp":' + stamp + tail[digits:])
    refused_everywhere(
        store,
        some_id,
        r"^imgdex: table images: commit 00000000000000000002\.json is not a Delta commit: "
        r"its commit time is not a whole number of milliseconds within int64$",
        compact="",
    )


def test_history_refuses_a_commit_time_python_cannot_show_in_one_line(store, some_id):
    path = os.path.join(store, NEWEST)
    with open(path) as f:
        text = f.read()
    head, _, tail = text.partition('"timestamp":')
    digits = len(tail) - len(tail.lstrip("0123456789"))
    with open(path, "w") as f:
        f.write(head + '"timestamp":999999999999999' + tail[digits:])
    out = invoke("history", "--store", store)
    assert out.code == 1, out.stderr
    assert error_lines(out.stderr) == ["imgdex: cannot read the history of table images: year 33658 is out of range"]
    assert invoke("get", some_id, "--store", store).code == 0  # a valid time, only past what Python shows


# ---- a commit with no action: a write cut short


@pytest.mark.parametrize("content", ["", "\n\n \n"])
def test_a_commit_without_actions_is_refused_not_read_as_empty(store, some_id, content):
    with open(os.path.join(store, NEWEST), "w") as f:
        f.write(content)
    before = {table: sorted(os.listdir(os.path.join(store, table, "_delta_log"))) for table in deltalog.TABLES}
    refused_everywhere(
        store, some_id, r"^imgdex: table images: commit 00000000000000000002\.json holds no actions \(a torn write\)$"
    )
    after = {table: sorted(os.listdir(os.path.join(store, table, "_delta_log"))) for table in deltalog.TABLES}
    assert after == before  # compact committed nothing


# ---- data files outside the table's folder


@pytest.mark.parametrize("path", ["part-*.parquet", "part-?.parquet", "part-[0-9].parquet", "%2A.parquet"])
def test_an_added_file_named_by_a_pattern_is_refused(store, some_id, path):
    """DuckDB expanded it: every file of the folder that matched was read, live or not."""
    append_line(
        store,
        json.dumps(
            {"add": {"path": path, "size": 1, "partitionValues": {}, "modificationTime": 1, "dataChange": True}}
        ),
    )
    refused_everywhere(
        store,
        some_id,
        r"^imgdex: table images names a data file by a pattern \(`\*`, `\?` or `\[`\): " + re.escape(path) + "$",
    )


@pytest.mark.parametrize(
    "path",
    [
        "file:///etc/hostname",
        "/etc/hostname",
        "../../x.parquet",
        "part/../../../x.parquet",
        "%2E%2E/%2E%2E/x.parquet",
        "%2Fetc%2Fhostname",
        "file%3A%2F%2F%2Fetc%2Fhostname",
    ],
)
def test_an_added_file_outside_the_table_folder_is_refused(store, some_id, path):
    append_line(
        store,
        json.dumps(
            {"add": {"path": path, "size": 1, "partitionValues": {}, "modificationTime": 1, "dataChange": True}}
        ),
    )
    refused_everywhere(
        store,
        some_id,
        r"^imgdex: table images names a data file outside its folder: " + re.escape(path) + "$",
    )


# ---- data files that are not regular files


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_a_data_file_that_is_not_a_regular_file_is_refused_before_it_is_opened(store, some_id, kind):
    """A FIFO in place of a data file made every command wait for ever on DuckDB's open, before
    `sql --timeout` started counting."""
    [victim] = [name for name in os.listdir(os.path.join(store, "images")) if name.endswith(".parquet")][:1]
    path = os.path.join(store, "images", victim)
    os.remove(path)
    os.mkfifo(path) if kind == "fifo" else os.mkdir(path)
    what = {"fifo": "named pipe", "directory": "directory"}[kind]
    for args in [*commands(some_id), ["index", os.path.join(ROOT, "data", "samples", "docker-save-app.tar")]]:
        out = run_measured([*args, "--store", store], timeout=60)
        assert out.code == 1, (args, out.stderr)
        assert error_lines(out.stderr) == [f"imgdex: table images: data file {path} is not a regular file ({what})"], (
            args,
            out.stderr,
        )
