"""Every entry of the bad-input corpus (tests/badinput/) fails alone, in one line, without a traceback.

For each entry, `imgdex index BAD GOOD --store TMP` must exit 1 with exactly one `imgdex: ` error
line (notes, `imgdex: note: ...`, do not count) that names the file and states the reason, while
the good image is still indexed and the store stays usable. The same holds for the whole corpus
in one run, within bounds of peak memory and time; entries marked `limits` (bombs, FIFOs,
devices) are also bounded alone. expected.json (written with the corpus by
tests/badinput/make_corpus.py) holds the SOURCE argument and the error regex of every entry.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from dataclasses import dataclass

import pytest
from click.testing import CliRunner

from indexer.sources.parse import MAX_JSON_BYTES
from indexer.errors import printable
from queries.cli import cli

HERE = os.path.dirname(os.path.abspath(__file__))
BADINPUT = os.path.join(HERE, "badinput")
CORPUS = os.path.join(BADINPUT, "corpus")
ROOT = os.path.dirname(HERE)


def _load_make_corpus():
    spec = importlib.util.spec_from_file_location("badinput_make_corpus", os.path.join(BADINPUT, "make_corpus.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


make_corpus = _load_make_corpus()
builders = make_corpus.builders

with open(os.path.join(BADINPUT, "expected.json")) as _f:
    EXPECTED = json.load(_f)
ENTRIES = EXPECTED["entries"]
ENTRY_IDS = [entry["name"].replace("\n", "\\n") for entry in ENTRIES]
OVERSIZED = [entry for entry in ENTRIES if entry["name"].startswith("oversized-")]
LIMITED = [entry for entry in ENTRIES if entry["limits"]]

# Bounds for one `imgdex index` process on bad input: a small run peaks near 150 MB here.
MAX_PEAK_RSS = 400 << 20
MAX_SECONDS = 30

# Settings the CLI reads from the environment; the runs here must not pick them up.
IMGDEX_ENV = ("IMGDEX_STORE", "IMGDEX_PASSWORD")

GOOD_REF = "registry.example/good/app:v1"
GOOD_NAME = "good/app"


# ---------------------------------------------------------------------------------------------
# Helpers


@dataclass
class Good:
    path: str
    digest: str


@pytest.fixture
def good(tmp_path) -> Good:
    """A small valid OCI layout of one image named GOOD_REF."""
    blobs = builders.Blobs()
    manifest = blobs.image()
    path = str(tmp_path / "good-layout")
    os.makedirs(path)
    builders.write_dir(path, blobs.layout_files([builders.named(manifest, containerd=GOOD_REF)]))
    return Good(path, manifest["digest"])


def entry_path(entry: dict, tmp_path) -> str:
    """The entry's path; a generated entry that cannot be built here skips the test."""
    try:
        return _entry_path(entry, tmp_path)
    except make_corpus.Unavailable as exc:
        pytest.skip(f"{entry['name']}: {exc}")


def _entry_path(entry: dict, tmp_path) -> str:
    if entry["generated"]:
        directory = tmp_path / "generated"
        directory.mkdir(exist_ok=True)
        return make_corpus.generate(entry["name"], str(directory))
    return os.path.join(CORPUS, entry["name"])


def source_arg(entry: dict, path: str) -> str:
    return entry["source"].replace("{path}", path)


def error_regex(entry: dict, path: str) -> str:
    return (
        entry["error"]
        .replace("{path}", re.escape(path))
        .replace("{where}", re.escape(printable(path)))
        .replace("{limit}", str(MAX_JSON_BYTES))
    )


def _runner() -> CliRunner:
    try:  # click < 8.2 mixes stderr into stdout unless told not to
        return CliRunner(mix_stderr=False)
    except TypeError:  # click >= 8.2: stderr is always separate
        return CliRunner()


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str


def invoke(*args: str) -> Outcome:
    """Run `imgdex ARGS` in process; an exception other than the CLI's own exit fails the test."""
    result = _runner().invoke(cli, list(args), env=dict.fromkeys(IMGDEX_ENV))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        text = "".join(traceback.format_exception(*result.exc_info)[-12:])  # the tail; a RecursionError's is long
        pytest.fail(f"imgdex {' '.join(args)} raised instead of reporting an error:\n{text}\nstderr:\n{result.stderr}")
    return Outcome(result.exit_code, result.stdout, result.stderr)


@dataclass
class Measured:
    code: int
    stdout: str
    stderr: str
    peak_rss: int  # bytes, of the imgdex process alone
    seconds: float
    stdin_broken: bool = False  # the process closed standard input before it was all written


# Runs the command and reports its peak RSS. On Linux a child's maxrss starts from its parent's
# RSS at fork, even across exec: forked from pytest (hundreds of MB), imgdex would report pytest's
# size. This small process forks it instead, and waits for it with wait4.
_MEASURE = """
import json, os, subprocess, sys, threading
report, timeout, command = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
child = subprocess.Popen(command)
killer = threading.Timer(timeout, child.kill)
killer.start()
_, status, usage = os.wait4(child.pid, 0)
killer.cancel()
child.returncode = os.waitstatus_to_exitcode(status)
with open(report, "w") as f:
    json.dump({"code": child.returncode, "maxrss": usage.ru_maxrss * 1024}, f)
"""


def run_fed_without_end(args: list[str], head: bytes, timeout: float) -> subprocess.CompletedProcess:
    """`imgdex ARGS` in a child process whose standard input is `head`, then zeros for ever (`cat
    FILE /dev/zero |`), written from a thread until the reader goes. A child still reading after
    `timeout` seconds fails the test."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "queries.cli", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )

    def write():
        try:
            proc.stdin.write(head)
            zeros = b"\0" * (1 << 20)
            while True:
                proc.stdin.write(zeros)
        except (BrokenPipeError, ValueError, OSError):
            pass

    threading.Thread(target=write, daemon=True).start()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"imgdex {' '.join(args)} read an endless input for ever")
    finally:
        with contextlib.suppress(OSError):
            proc.stdin.close()
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.read(), proc.stderr.read())


def run_measured(args: list[str], *, stdin_data: bytes | None = None, stdin=None, timeout: float = 300) -> Measured:
    """`imgdex ARGS` in a child process, with its own peak RSS and wall time. `stdin_data` is
    written through a pipe."""
    env = {key: value for key, value in os.environ.items() if key not in IMGDEX_ENV}
    with tempfile.TemporaryDirectory() as scratch:
        report = os.path.join(scratch, "report.json")
        command = [sys.executable, "-c", _MEASURE, report, str(timeout), sys.executable, "-m", "queries.cli", *args]
        started = time.monotonic()
        proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE if stdin_data is not None else (stdin if stdin is not None else subprocess.DEVNULL),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env=env,
        )
        broken = []
        pipe = proc.stdin

        def feed() -> None:
            try:
                pipe.write(stdin_data)
                pipe.close()
            except BrokenPipeError:
                broken.append(True)

        feeder = threading.Thread(target=feed) if stdin_data is not None else None
        if feeder is not None:
            feeder.start()
            proc.stdin = None  # written by the feeder; communicate() must leave it alone
        stdout, stderr = proc.communicate(timeout=timeout + 60)
        seconds = time.monotonic() - started
        if feeder is not None:
            feeder.join()
        with open(report) as f:
            result = json.load(f)
    return Measured(
        result["code"],
        stdout.decode("utf-8", "replace"),
        stderr.decode("utf-8", "replace"),
        result["maxrss"],
        seconds,
        bool(broken),
    )


def assert_within_limits(run: Measured, seconds: float = MAX_SECONDS) -> None:
    assert run.code >= 0, f"killed by signal {-run.code} after {run.seconds:.1f} s\n{run.stderr}"
    assert run.peak_rss < MAX_PEAK_RSS, f"peak RSS {run.peak_rss >> 20} MiB\n{run.stderr}"
    assert run.seconds < seconds, f"took {run.seconds:.1f} s\n{run.stderr}"


def error_lines(stderr: str) -> list[str]:
    return [
        line for line in stderr.splitlines() if line.startswith("imgdex: ") and not line.startswith("imgdex: note:")
    ]


def assert_no_traceback(*texts: str) -> None:
    for text in texts:
        assert "Traceback" not in text, text


def assert_one_line_messages(stderr: str) -> None:
    """Every stderr line is an `imgdex: ` message: no continuation lines, no stray output."""
    stray = [line for line in stderr.splitlines() if line.strip() and not line.startswith("imgdex: ")]
    assert not stray, f"stderr lines that are not `imgdex: ` messages: {stray!r}"


def sql_rows(store: str, query: str) -> list[dict]:
    out = invoke("sql", query, "--store", store, "--format", "json")
    assert out.code == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def assert_good_landed(store: str, good: Good, *, only_good: bool, failed: int) -> None:
    got = invoke("get", GOOD_REF, "--store", store)
    assert got.code == 0, got.stderr
    doc = json.loads(got.stdout)
    assert doc["digest"] == good.digest
    assert doc["name"] == GOOD_NAME

    names = [row["name"] for row in sql_rows(store, "SELECT name FROM images ORDER BY name")]
    assert GOOD_NAME in names
    if only_good:
        assert names == [GOOD_NAME], f"records of a refused source landed: {names}"
    runs = sql_rows(store, "SELECT images_failed FROM runs")
    assert [run["images_failed"] for run in runs] == [failed]


def assert_store_writable(store: str, good: Good) -> None:
    """The store lock was released: another run can write."""
    again = invoke("index", good.path, "--store", store)
    assert again.code == 0, again.stderr
    assert error_lines(again.stderr) == []


# ---------------------------------------------------------------------------------------------
# The corpus itself


def test_every_corpus_file_is_an_entry():
    committed = [entry["name"] for entry in ENTRIES if not entry["generated"]]
    for name in committed:
        assert os.path.lexists(os.path.join(CORPUS, name)), f"{name} is in expected.json but not in the corpus"
    tops = {name.split("/")[0] for name in committed}
    orphans = sorted(set(os.listdir(CORPUS)) - tops - {"README.md"})
    assert not orphans, f"corpus files that no entry covers: {orphans}"
    assert not any(os.path.lexists(os.path.join(CORPUS, e["name"])) for e in ENTRIES if e["generated"])


def test_corpus_stays_small():
    total = 0
    for folder, _, files in os.walk(CORPUS):
        for name in files:
            total += os.lstat(os.path.join(folder, name)).st_size
    assert total < 512 * 1024


def _tree(root: str) -> dict[str, object]:
    out: dict[str, object] = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root)
            if os.path.islink(path):
                out[rel] = ("link", os.readlink(path))
            elif name.endswith((".gz", ".zst")):
                out[rel] = "compressed"  # the compressor's output may differ between library versions
            else:
                with open(path, "rb") as f:
                    out[rel] = f.read()
    return out


def test_make_corpus_rewrites_the_committed_files(tmp_path):
    out = tmp_path / "corpus"
    expected = tmp_path / "expected.json"
    make_corpus.write_corpus(str(out), str(expected))
    assert expected.read_text() == open(os.path.join(BADINPUT, "expected.json")).read()
    assert _tree(str(out)) == _tree(CORPUS), "the corpus is out of date: run python tests/badinput/make_corpus.py"


# ---------------------------------------------------------------------------------------------
# Each entry alone, beside a good source


@pytest.mark.parametrize("entry", ENTRIES, ids=ENTRY_IDS)
def test_bad_source_fails_alone(entry, tmp_path, good):
    path = entry_path(entry, tmp_path)
    store = str(tmp_path / "store")

    out = invoke("index", source_arg(entry, path), good.path, "--store", store)

    assert_no_traceback(out.stdout, out.stderr)
    assert out.code == 1, f"exit code {out.code}\nstdout: {out.stdout}\nstderr: {out.stderr}"
    lines = error_lines(out.stderr)
    assert len(lines) == 1, f"expected one error line, got {len(lines)}:\n{out.stderr}"
    assert re.fullmatch(error_regex(entry, path), lines[0]), (
        f"error line does not match {entry['error']!r}:\n{lines[0]}"
    )
    assert_one_line_messages(out.stderr)
    assert "1 failed" in out.stdout, out.stdout

    assert_good_landed(store, good, only_good=not entry["partial"], failed=1)
    assert_store_writable(store, good)


@pytest.mark.parametrize("entry", OVERSIZED, ids=[entry["name"] for entry in OVERSIZED])
def test_oversized_member_is_refused_unread(entry, tmp_path, good):
    path = entry_path(entry, tmp_path)
    # Import everything the command needs first, so the traced run allocates only what it reads.
    warm = invoke("index", good.path, "--store", str(tmp_path / "warm"))
    assert warm.code == 0, warm.stderr

    tracemalloc.start()
    try:
        out = invoke("index", source_arg(entry, path), good.path, "--store", str(tmp_path / "store"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    lines = error_lines(out.stderr)
    assert out.code == 1 and len(lines) == 1, out.stderr
    assert re.fullmatch(error_regex(entry, path), lines[0]), lines[0]
    assert f"over the {MAX_JSON_BYTES}-byte limit" in lines[0]
    # Reading the member would allocate more than MAX_JSON_BYTES at once.
    assert peak < MAX_JSON_BYTES, f"peak traced memory {peak} bytes: the oversized member was read"


@pytest.mark.parametrize("entry", LIMITED, ids=[entry["name"] for entry in LIMITED])
def test_entry_alone_within_limits(entry, tmp_path, good):
    """A bomb, a FIFO or a device, indexed by a process of its own: bounded memory and time, one error."""
    path = entry_path(entry, tmp_path)

    run = run_measured(["index", source_arg(entry, path), good.path, "--store", str(tmp_path / "store")])

    assert_within_limits(run)
    assert_no_traceback(run.stdout, run.stderr)
    lines = error_lines(run.stderr)
    assert run.code == 1 and len(lines) == 1, run.stderr
    assert re.fullmatch(error_regex(entry, path), lines[0]), lines[0]
    assert "indexed 1 images, 1 failed" in run.stdout, run.stdout


# ---------------------------------------------------------------------------------------------
# The whole corpus in one run


def test_whole_corpus_in_one_run(tmp_path, good):
    paths = {}
    for entry in ENTRIES:
        try:
            paths[entry["name"]] = _entry_path(entry, tmp_path)
        except make_corpus.Unavailable:
            pass  # a device node without root; the other entries still run
    entries = [entry for entry in ENTRIES if entry["name"] in paths]
    sources = [source_arg(entry, paths[entry["name"]]) for entry in entries]
    half = len(sources) // 2
    store = str(tmp_path / "store")

    run = run_measured(["index", *sources[:half], good.path, *sources[half:], "--store", store], timeout=600)

    assert_within_limits(run, seconds=120)
    assert_no_traceback(run.stdout, run.stderr)
    assert run.code == 1, run.stderr
    assert_one_line_messages(run.stderr)
    lines = error_lines(run.stderr)
    assert len(lines) == len(entries), "\n".join(lines)
    unmatched = list(lines)
    for entry in entries:
        regex = error_regex(entry, paths[entry["name"]])
        hits = [line for line in lines if re.fullmatch(regex, line)]
        assert len(hits) == 1, f"{entry['name']}: {len(hits)} error lines match {entry['error']!r}"
        if hits[0] in unmatched:
            unmatched.remove(hits[0])
    assert not unmatched, f"error lines of no entry: {unmatched}"
    assert f"{len(entries)} failed" in run.stdout, run.stdout

    assert_good_landed(store, good, only_good=not any(entry["partial"] for entry in entries), failed=len(entries))
    assert_store_writable(store, good)
