"""`imgdex sql` within bounds: Ctrl-C and a deadline stop any query in one line, memory is capped,
nothing spills to disk, rows stream, and the data printed is the data stored.

Queries that ran away before these bounds run in a child process with a timeout, so that a
regression fails here rather than hanging or filling the machine's memory."""

from __future__ import annotations

import glob
import os
import pty
import resource
import signal
import subprocess
import sys
import time

import pytest

from test_badinput import IMGDEX_ENV, ROOT, assert_no_traceback, invoke, run_measured

RECURSIVE = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n+1 FROM r) SELECT count(*) FROM r"
MIB = 1024 * 1024


def _env() -> dict:
    return {key: value for key, value in os.environ.items() if key not in IMGDEX_ENV}


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "queries.cli", *args]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("sqlbounds") / "store")
    samples = sorted(glob.glob(os.path.join(ROOT, "data", "samples", "*")))
    subprocess.run(
        _command("index", *samples, "--repository", "samples/app", "--store", path),
        cwd=ROOT,
        env=_env(),
        check=True,
        capture_output=True,
        timeout=300,
    )
    return path


def _interrupted(store: str, query: str, *options: str, ignored: bool = False) -> tuple[int, str]:
    """`imgdex sql QUERY`, sent SIGINT once it is well under way; its exit code and stderr."""
    command = _command("sql", query, "--store", store, *options)
    if ignored:  # started as a script's background job is
        command = ["sh", "-c", 'trap "" INT; exec "$@"', "sh", *command]
    proc = subprocess.Popen(
        command,
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    try:
        _, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("the query went on after Ctrl-C")
    return proc.returncode, stderr.decode("utf-8", "replace")


@pytest.mark.parametrize("query", ["SELECT count(*) FROM range(1000000000000)", RECURSIVE])
def test_ctrl_c_stops_any_query_in_one_line(store, query):
    code, stderr = _interrupted(store, query)
    assert_no_traceback(stderr)
    assert stderr == "imgdex: query interrupted\n"
    assert code == 130


def test_an_ignored_sigint_leaves_the_query_to_its_deadline(store):
    code, stderr = _interrupted(store, "SELECT count(*) FROM range(1000000000000)", "--timeout", "6", ignored=True)
    assert (code, stderr) == (1, "imgdex: query took longer than 6 s\n")


def test_a_query_past_its_deadline_stops_in_one_line(store):
    m = run_measured(["sql", RECURSIVE, "--store", store, "--timeout", "1"], timeout=120)
    assert_no_traceback(m.stderr)
    assert m.stderr == "imgdex: query took longer than 1 s\n"
    assert m.code == 1
    assert m.seconds < 60


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_rows_stream_in_bounded_memory(store, fmt):
    # 3,000,000 rows held as Python tuples and then as one text took 380-600 MB; streamed, ~75 MB.
    m = run_measured(["sql", "SELECT range AS n FROM range(3000000)", "--store", store, "--format", fmt], timeout=300)
    assert m.code == 0, m.stderr
    lines = m.stdout.splitlines()
    assert len(lines) == 3_000_000 + (fmt == "csv")
    assert lines[-1] == ('{"n": 2999999}' if fmt == "json" else "2999999")
    assert m.peak_rss < 250 * MIB


def test_a_table_lays_out_a_bounded_number_of_rows(store):
    m = run_measured(["sql", "SELECT range AS n FROM range(20000)", "--store", store], timeout=120)
    assert m.code == 0, m.stderr
    body = [line for line in m.stdout.splitlines() if line.startswith("|")][1:]
    assert len(body) == 10_000
    assert body[-1].split() == ["|", "9999", "|"]
    assert m.stderr.count("\n") == 1 and "first 10,000 rows" in m.stderr


def test_memory_is_capped_by_default(store):
    # 2 GB of text in one aggregate: DuckDB's own default let it take most of the machine's memory.
    query = "SELECT length(string_agg(repeat('x', 1000000), '')) FROM range(2000)"
    m = run_measured(["sql", query, "--store", store], timeout=300)
    assert_no_traceback(m.stderr)
    assert m.code == 1
    assert m.stderr.startswith("imgdex: Out of Memory Error") and m.stderr.count("\n") == 1
    assert m.peak_rss < 1800 * MIB


def _out_of_memory(stderr: str) -> bool:
    return stderr.startswith("imgdex: Out of Memory Error") and stderr.count("\n") == 1


# 1 GB of text in one value, which DuckDB builds outside its memory_limit: before the process was
# capped, this ran to 1.9 GB under --memory-limit 64.
HUGE_VALUE = "SELECT length(repeat('x', 1000000000)) AS n"


@pytest.mark.parametrize(
    "query",
    [
        HUGE_VALUE,
        # 100 MB of text in one row: DuckDB holds it within the cap, its copies in Python do not fit.
        "SELECT repeat('x', 100000000) AS s",
    ],
    ids=["a value DuckDB does not count", "rows too large to print"],
)
def test_memory_past_duckdbs_own_limit_is_capped_in_one_line(store, query):
    m = run_measured(["sql", query, "--store", store, "--memory-limit", "64", "--format", "csv"], timeout=300)
    assert_no_traceback(m.stderr)
    assert (m.code, m.stdout) == (1, ""), m.stderr
    assert _out_of_memory(m.stderr), m.stderr
    assert m.peak_rss < 800 * MIB


def test_the_cap_is_lifted_once_the_query_ends(store):
    # In one process (a caller that goes on): the cap holds for the query, and is put back after.
    before = resource.getrlimit(resource.RLIMIT_DATA)
    outcome = invoke("sql", HUGE_VALUE, "--store", store, "--memory-limit", "64")
    assert outcome.code == 1 and _out_of_memory(outcome.stderr), outcome.stderr
    assert resource.getrlimit(resource.RLIMIT_DATA) == before


def test_a_cap_past_what_setrlimit_takes_is_no_cap():
    # For a caller of the library, which --memory-limit's range does not guard: 2**64 bytes does not
    # fit setrlimit's C long, and the query failed with a traceback of OverflowError.
    from queries import sqlshell

    before = resource.getrlimit(resource.RLIMIT_DATA)
    with sqlshell.memory_cap(1 << 64):
        assert resource.getrlimit(resource.RLIMIT_DATA) == before
    assert resource.getrlimit(resource.RLIMIT_DATA) == before


def test_statements_that_each_fit_run_one_after_another_under_the_cap(store):
    # The allocator keeps what it frees mapped unless told otherwise, and the cap counts it: these
    # three, each under 1.1 GB, failed once they ran one after another.
    join = "SELECT count(*) AS n FROM range(30000000) a JOIN range(30000000) b ON a.range = b.range"
    strings = "SELECT count(*) FROM (SELECT DISTINCT repeat('x', 1000) || range::VARCHAR AS s FROM range(600000))"
    m = run_measured(["sql", f"{join}; {strings}; {join}", "--store", store, "--format", "csv"], timeout=300)
    assert m.code == 0, m.stderr
    assert m.stdout.splitlines()[-1].endswith("30000000")


@pytest.mark.parametrize(("option", "shown"), [((), "1.0 GiB"), (("--memory-limit", "256"), "256.0 MiB")])
def test_the_memory_limit_is_set(store, option, shown):
    m = run_measured(
        ["sql", "SELECT current_setting('memory_limit') AS m", "--store", store, "--format", "csv", *option]
    )
    assert (m.code, m.stdout) == (0, f"m\n{shown}\n"), m.stderr


def test_a_query_over_the_limit_writes_no_files(store, tmp_path):
    # DuckDB spills a sort that does not fit to `.tmp` under the working directory by default.
    query = "SELECT count(*) FROM (SELECT range, random() AS r FROM range(6000000) ORDER BY r OFFSET 1)"
    proc = subprocess.run(
        _command("sql", query, "--store", store, "--memory-limit", "64", "--format", "csv"),
        cwd=tmp_path,
        env={**_env(), "PYTHONPATH": ROOT},
        capture_output=True,
        timeout=300,
    )
    stderr = proc.stderr.decode("utf-8", "replace")
    assert_no_traceback(stderr)
    assert proc.returncode in (0, 1), stderr
    assert proc.returncode == 0 or stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_csv_prints_the_data_as_stored(store):
    proc = subprocess.run(
        _command("sql", "SELECT 'a' || chr(27) || '[31mb' AS x", "--store", store, "--format", "csv"),
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        timeout=120,
    )
    assert (proc.returncode, proc.stdout) == (0, b"x\na\x1b[31mb\n")


def test_csv_on_a_terminal_escapes_control_characters(store):
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run(
            _command("sql", "SELECT 'a' || chr(27) || '[31mb' AS x", "--store", store, "--format", "csv"),
            cwd=ROOT,
            env=_env(),
            stdout=follower,
            stderr=subprocess.PIPE,
            timeout=120,
        )
        os.close(follower)
        follower = None
        out = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the terminal's other end has closed
                break
            if not chunk:
                break
            out += chunk
    finally:
        if follower is not None:
            os.close(follower)
        os.close(leader)
    assert proc.returncode == 0, proc.stderr
    assert out.replace(b"\r\n", b"\n") == b"x\na\\x1b[31mb\n"


@pytest.mark.parametrize("query", ["CREATE TEMP TABLE t AS SELECT 1", "SELECT 1; CREATE TEMPORARY VIEW v AS SELECT 2"])
def test_temporary_objects_are_refused(store, query):
    m = run_measured(["sql", query, "--store", store], timeout=120)
    assert m.code == 1
    assert m.stdout == ""
    assert m.stderr.startswith("imgdex: statements run read-only") and m.stderr.count("\n") == 1


def test_no_progress_bar_is_drawn_into_the_rows(store):
    """DuckDB's Python client turns its progress bar on where it takes the session for an interactive
    one (`python -c`, a notebook, a script embedding the CLI) and draws it on standard output, among
    the rows, once a query runs past two seconds. Every reader turns it off, for good."""
    embedded = [sys.executable, "-c", "from queries.cli import main; main()"]
    query = "SELECT current_setting('enable_progress_bar') AS bar, current_setting('progress_bar_time') AS wait"
    done = subprocess.run(
        [*embedded, "sql", query, "--store", store, "--format", "csv"],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        timeout=120,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, b"bar,wait\nfalse,2000\n", b"")
