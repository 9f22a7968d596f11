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


@pytest.mark.parametrize("kind", ["fifo", "device"])
@pytest.mark.parametrize("command", ["history", "compact", "index"])
def test_a_last_checkpoint_hint_that_is_no_regular_file_is_refused_without_waiting(store, kind, command):
    """delta-rs reads the hint before anything else: a FIFO there held compact, index and history
    for ever. Readers do not read it, and read the store."""
    path = os.path.join(store, LOG, "_last_checkpoint")
    if kind == "fifo":
        os.mkfifo(path)
    else:
        os.symlink("/dev/zero", path)
    args = ["index", os.path.join(ROOT, "data", "samples", "docker-save-app.tar")] if command == "index" else [command]
    run = run_capped([*args, "--store", store])
    kind_name = "named pipe" if kind == "fifo" else "character device"
    prefix = r"^imgdex: cannot open store \S+: " if command == "index" else "^imgdex: "
    named = rf"table images: its log file _last_checkpoint is not a regular file \({kind_name}\)$"
    assert_refused(run, prefix + named)
    assert run_capped(["list", "--store", store]).code == 0


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_commit_before_the_checkpoint_that_is_no_regular_file_is_refused_by_history(store, kind):
    """history reads every commit the log holds, the ones a checkpoint stands for too, which the
    log reader never opens: a FIFO there held it for ever."""
    from deltalake import DeltaTable

    DeltaTable(os.path.join(store, "images")).create_checkpoint()
    path = os.path.join(store, LOG, "00000000000000000001.json")
    os.remove(path)
    if kind == "fifo":
        os.mkfifo(path)
    else:
        os.symlink("/dev/zero", path)
    run = run_capped(["history", "--store", store])
    kind_name = "named pipe" if kind == "fifo" else "character device"
    assert_refused(run, rf"^imgdex: store \S+: cannot read commit 1 of images: not a regular file \({kind_name}\)$")
    assert run_capped(["list", "--store", store]).code == 0


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


def test_a_missing_checkpoint_that_last_checkpoint_names_is_named_by_compact_index_and_history(store, some_id):
    """The commits are all there, so readers read them; delta-rs, which compact, index and history
    open a table with, said only "Kernel error: Invalid Checkpoint"."""
    from deltalake import DeltaTable

    DeltaTable(os.path.join(store, "images")).create_checkpoint()
    assert os.path.exists(os.path.join(store, LOG, "_last_checkpoint"))
    os.remove(os.path.join(store, LOG, "00000000000000000002.checkpoint.parquet"))
    assert invoke("get", some_id, "--store", store).code == 0
    named = (
        r"table images: its log's _last_checkpoint names checkpoint 2, which the log does not hold "
        r"\(the commits are read without it; removing _last_checkpoint lets delta-rs read them too\)$"
    )
    for args in (["compact"], ["history"]):
        out = invoke(*args, "--store", store)
        assert out.code == 1 and error_lines(out.stderr) == [out.stderr.strip()], (args, out.stderr)
        assert re.search("^imgdex: " + named, out.stderr.strip()), (args, out.stderr)
    run = run_capped(["index", os.path.join(ROOT, "data", "samples", "docker-save-app.tar"), "--store", store])
    assert_refused(run, "^imgdex: cannot open store .*: " + named)
    os.remove(os.path.join(store, LOG, "_last_checkpoint"))  # as the message says
    assert invoke("compact", "--store", store).code == 0


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


# ---- fields of the wrong type, which delta-rs refuses in its own words (or reads otherwise)

# (action, field, value): the field of an add, metaData or protocol action set to `value` (None:
# left out), or a remove of a file the table never had, with `value` for `field`. Each is either
# refused by delta-rs when it opens the table ("Kernel error: Json error: whilst decoding field
# 'add'...") or made by no writer.
MISTYPED = [
    ("add", "size", "x"),
    ("add", "size", "123"),
    ("add", "size", 1.5),
    ("add", "size", True),
    ("add", "size", -1),
    ("add", "size", 1 << 63),
    ("add", "size", None),
    ("add", "modificationTime", "x"),
    ("add", "modificationTime", 1.0),
    ("add", "modificationTime", None),
    ("add", "dataChange", "true"),
    ("add", "dataChange", 1),
    ("add", "dataChange", None),
    ("add", "tags", "x"),
    ("add", "tags", []),
    ("add", "tags", {"a": {}}),
    ("add", "tags", {"a": 1}),
    ("add", "partitionValues", None),
    ("add", "baseRowId", "x"),
    ("add", "defaultRowCommitVersion", True),
    ("remove", "dataChange", None),
    ("remove", "dataChange", "x"),
    ("remove", "deletionTimestamp", "x"),
    ("remove", "deletionTimestamp", 1 << 63),
    ("remove", "size", {}),
    ("remove", "partitionValues", 5),
    ("remove", "tags", {"a": []}),
    ("remove", "extendedFileMetadata", 0),
    ("metaData", "id", None),
    ("metaData", "format", {"provider": "parquet"}),
    ("metaData", "format", {"provider": "parquet", "options": {"a": {}}}),
    ("metaData", "createdTime", "x"),
    ("metaData", "partitionColumns", None),
    ("metaData", "configuration", None),
    ("metaData", "configuration", {"a": 5}),
    ("protocol", "minWriterVersion", None),
    ("protocol", "minWriterVersion", "2"),
    ("protocol", "readerFeatures", [5]),
    ("protocol", "writerFeatures", "x"),
]
# The commit of the images log each kind of action is set in (metaData and protocol: where the
# store's first run made them).
IN_COMMIT = {"add": 2, "remove": 2, "metaData": 1, "protocol": 0}

# (the statistics of the add, as JSON text, the field named): each refused by delta-rs when the
# file is live, or made by no writer.
MISSTATED = [
    ("", "stats"),
    ("x", "stats"),
    ("5", "stats"),
    ("null", "stats"),
    ('{"numRecords": NaN}', "stats"),
    ('{"numRecords": "x"}', "stats.numRecords"),
    ('{"numRecords": 1.5}', "stats.numRecords"),
    ('{"numRecords": true}', "stats.numRecords"),
    ('{"numRecords": 1, "minValues": 5}', "stats.minValues"),
    ('{"numRecords": 1, "maxValues": []}', "stats.maxValues"),
    ('{"numRecords": 1, "nullCount": "x"}', "stats.nullCount"),
    ('{"numRecords": 1, "nullCount": {"id": "x"}}', "stats.nullCount.id"),
    ('{"numRecords": 1, "nullCount": {"tags": {}}}', "stats.nullCount.tags"),
    ('{"numRecords": 1, "maxValues": {"exactness": 300}}', "stats.maxValues.exactness"),
    ('{"numRecords": 1, "minValues": {"config_size": "x"}}', "stats.minValues.config_size"),
    ('{"numRecords": 1, "minValues": {"tombstone": 1}}', "stats.minValues.tombstone"),
    ('{"numRecords": 1, "minValues": {"id": {}}}', "stats.minValues.id"),
]

EVERY_COMMAND = ["get", "list", "sql", "export", "history", "compact", "index"]


def _args(command: str, image: str, scratch: str) -> list[str]:
    return {
        "get": ["get", image],
        "list": ["list"],
        "sql": ["sql", "SELECT count(*) FROM images"],
        "export": ["export", os.path.join(scratch, "export")],
        "history": ["history"],
        "compact": ["compact"],
        "index": ["index", os.path.join(ROOT, "data", "samples", "docker-save-app.tar")],
    }[command]


def _rewrite(store: str, change, kind: str = "add") -> None:
    """Apply `change` to the body of the `kind` action of the images commit that has one."""
    path = os.path.join(store, LOG, f"{IN_COMMIT[kind]:020d}.json")
    with open(path) as f:
        lines = f.read().splitlines()
    at = next(i for i, line in enumerate(lines) if kind in json.loads(line))
    action = json.loads(lines[at])
    change(action[kind])
    lines[at] = json.dumps(action)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def _mistype(store: str, action: str, field: str, value) -> None:
    if action == "remove":
        body = {"path": "gone.parquet", "deletionTimestamp": 1, "dataChange": True, field: value}
        append_line(store, json.dumps({"remove": {k: v for k, v in body.items() if v is not None}}))
        return

    def change(add: dict) -> None:
        add.pop(field, None) if value is None else add.update({field: value})

    _rewrite(store, change, action)


def assert_refused_by(
    store: str, image: str, command: str, scratch: str, field: str, action: str = "add", commit: int = 2
) -> None:
    out = invoke(*_args(command, image, scratch), "--store", store)
    named = (
        rf"table images: commit {commit:020d}\.json is not a Delta commit: "
        rf"its {action} action has no valid {re.escape(field)}$"
    )
    # `index` says which store it could not open, as for any other flaw of its log
    prefix = r"^imgdex: (cannot open store \S+: )?" if command == "index" else "^imgdex: "
    lines = error_lines(out.stderr)
    assert out.code == 1, (command, out.stderr)
    assert len(lines) == 1 and re.search(prefix + named, lines[0]), (command, out.stderr)
    assert "Kernel error" not in out.stderr


@pytest.mark.parametrize("command", EVERY_COMMAND)
@pytest.mark.parametrize(("action", "field", "value"), MISTYPED, ids=lambda x: json.dumps(x) if x is not None else "-")
def test_an_action_field_of_the_wrong_type_is_refused_by_every_command(
    store, some_id, tmp_path, command, action, field, value
):
    """An add with a `size` of text was read by every reader, and `history`, `compact` and `index`
    passed on delta-rs's "Kernel error: Json error: whilst decoding field 'add'", naming no commit."""
    _mistype(store, action, field, value)
    assert_refused_by(store, some_id, command, str(tmp_path), field, action, IN_COMMIT[action])


@pytest.mark.parametrize("command", EVERY_COMMAND)
@pytest.mark.parametrize(("stats", "field"), MISSTATED)
def test_statistics_of_the_wrong_shape_are_refused_by_every_command(store, some_id, tmp_path, command, stats, field):
    _rewrite(store, lambda add: add.update(stats=stats))
    assert_refused_by(store, some_id, command, str(tmp_path), field)


# (changes to the store's protocol, minReaderVersion 1 and minWriterVersion 2, the field named):
# each refused by delta-rs, whose types alone are right.
UNMATCHED_FEATURES = [
    ({"readerFeatures": ["timestampNtz"]}, "readerFeatures"),
    ({"readerFeatures": []}, "readerFeatures"),
    ({"minReaderVersion": 3}, "readerFeatures"),
    ({"writerFeatures": []}, "writerFeatures"),
    ({"minWriterVersion": 7}, "writerFeatures"),
    ({"minReaderVersion": 3, "readerFeatures": []}, "writerFeatures"),
    (
        {"minReaderVersion": 3, "minWriterVersion": 7, "readerFeatures": ["timestampNtz"], "writerFeatures": []},
        "readerFeatures",
    ),
]


@pytest.mark.parametrize("command", EVERY_COMMAND)
@pytest.mark.parametrize(("change", "field"), UNMATCHED_FEATURES, ids=lambda x: json.dumps(x, sort_keys=True))
def test_features_that_do_not_match_the_versions_are_refused_by_every_command(
    store, some_id, tmp_path, command, change, field
):
    """Readers served such a table while `history`, `compact` and `index` passed on delta-rs's
    "Kernel error: Invalid protocol action in the delta log"."""
    _rewrite(store, lambda protocol: protocol.update(change), "protocol")
    assert_refused_by(store, some_id, command, str(tmp_path), field, "protocol", IN_COMMIT["protocol"])


def test_features_that_match_the_versions_are_read(store, some_id):
    both = {"minReaderVersion": 3, "minWriterVersion": 7, "readerFeatures": [], "writerFeatures": ["appendOnly"]}
    _rewrite(store, lambda protocol: protocol.update(both), "protocol")
    assert invoke("get", some_id, "--store", store).code == 0
    assert invoke("history", "--store", store).code == 0


def test_statistics_of_a_file_removed_since_are_not_read(store, some_id):
    """delta-rs reads the statistics of live files alone; neither does this reader refuse a table
    for those of a file no version it reads still has."""
    names = []
    _rewrite(store, lambda add: names.append(add["path"]) or add.update(stats="x"))
    remove = {"path": names[0], "deletionTimestamp": 1, "dataChange": True}
    with open(os.path.join(store, LOG, "00000000000000000003.json"), "w") as f:
        f.write(json.dumps({"commitInfo": {"timestamp": 1}}) + "\n" + json.dumps({"remove": remove}) + "\n")
    assert invoke("history", "--store", store).code == 0
    assert invoke("list", "--store", store).code == 0
    refused = invoke("list", "--as-of", "2", "--store", store)
    assert refused.code == 1 and "commit 00000000000000000002.json is not a Delta commit" in refused.stderr


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_a_line_holding_nan_anywhere_is_refused(store, some_id, constant):
    """JSON has no NaN; delta-rs refuses a commit holding one ("Encountered unexpected 'N'")."""
    append_line(store, '{"commitInfo2": {"note": ' + constant + "}}")
    refused_everywhere(
        store,
        some_id,
        r"^imgdex: table images: commit 00000000000000000002\.json is not a Delta commit: "
        r"a line holds NaN or Infinity$",
    )


def test_tables_written_by_deltalake_directly_are_read(tmp_path):
    """Every column type and its statistics as delta-rs writes them, nulls and extremes too: the
    checks above refuse nothing a writer makes."""
    import datetime as dt

    import pyarrow as pa
    from deltalake import DeltaTable, write_deltalake

    point = pa.struct([("x", pa.int32()), ("y", pa.struct([("z", pa.string())]))])
    data = pa.table(
        {
            "id": pa.array(["a", None, "z" * 100]),
            "i8": pa.array([-128, 127, None], pa.int8()),
            "i16": pa.array([-(1 << 15), None, 1], pa.int16()),
            "i32": pa.array([None, -(1 << 31), (1 << 31) - 1], pa.int32()),
            "i64": pa.array([-(1 << 63), (1 << 63) - 1, None], pa.int64()),
            "f32": pa.array([1.5, float("nan"), None], pa.float32()),
            "f64": pa.array([float("-inf"), float("inf"), float("nan")], pa.float64()),
            "ok": pa.array([True, None, False]),
            "raw": pa.array([b"\x00", None, b"\xff"]),
            "day": pa.array([dt.date(1, 1, 1), None, dt.date(9999, 12, 31)]),
            "at": pa.array([dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc), None, None], pa.timestamp("us", "UTC")),
            "naive": pa.array([dt.datetime(2000, 1, 1), None, None], pa.timestamp("us")),
            "money": pa.array([None, None, None], pa.decimal128(10, 2)),
            "names": pa.array([["a"], None, []], pa.list_(pa.string())),
            "labels": pa.array([[("k", "v")], None, []], pa.map_(pa.string(), pa.string())),
            "point": pa.array([{"x": 1, "y": {"z": "q"}}, None, {"x": None, "y": None}], point),
        }
    )
    location = str(tmp_path / "t")
    write_deltalake(location, data)
    write_deltalake(location, data.take([0]), mode="append")
    write_deltalake(location, data.take([2]), mode="overwrite")  # a slice made delta-rs panic
    write_deltalake(location, data, mode="append")
    table = DeltaTable(location)
    expected = sorted(deltalog.local_path(uri) for uri in table.file_uris())
    for version in range(table.version() + 1):
        deltalog.read_table(location, version=version)
    assert sorted(deltalog.read_table(location).files) == expected
    table.create_checkpoint()
    assert sorted(deltalog.read_table(location).files) == expected
