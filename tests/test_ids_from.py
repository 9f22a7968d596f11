"""`imgdex get --ids-from` under hostile input (devices, FIFOs without a writer, endless lines)
and with many queries that match nothing: every answer is still the one `resolve` gives."""

import errno
import io
import json
import os
import socket
import subprocess
import sys

import pytest
from builders import classic_save_files, write_tar
from click.testing import CliRunner

from conftest import ROOT, sample_sources
from test_badinput import run_fed_without_end
from indexer.errors import QueryError
from queries import engine, lookup
from queries import cli as imgdex
from queries.cli import MAX_QUERY_LINE, cli

CLI = [sys.executable, "-m", "queries.cli"]
# An image whose repository name has the shape of an id: a query for it is both.
ID_NAMED = "crpaaaaaaaaaaaaaaaaa"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("ids-from")
    store = str(root / "store")
    named = write_tar(
        str(root / "named.tar"),
        classic_save_files([{"tags": [f"{ID_NAMED}:latest"], "layers": [b"named"], "created": None}]),
    )
    for sources, extra in (([named], []), (sample_sources(), ["--repository", "samples/app"])):
        result = CliRunner().invoke(cli, ["index", *sources, "--store", store, "--quiet", *extra])
        assert result.exit_code == 0, result.output
    return store


@pytest.fixture(scope="module")
def ids(store):
    reader = engine.connect(store, tables=("images",))
    return [row[0] for row in reader.execute("SELECT id FROM images ORDER BY id").fetchall()]


def _get(store, ids_from, **kwargs):
    return subprocess.run(
        [*CLI, "get", "--ids-from", ids_from, "--store", store], capture_output=True, cwd=ROOT, timeout=60, **kwargs
    )


def _listening_socket(path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen()
    return sock


@pytest.mark.parametrize("kind", ["character device", "directory", "socket"])
def test_ids_from_refuses_what_is_neither_a_file_nor_a_pipe(store, tmp_path, kind):
    path, sock = str(tmp_path), None
    if kind == "character device":
        path = "/dev/zero"  # read as lines, it never ends
    elif kind == "socket":
        path = str(tmp_path / "s")
        sock = _listening_socket(path)
    try:
        result = _get(store, path)
    finally:
        if sock is not None:
            sock.close()
    assert result.returncode == 2 and result.stdout == b""
    said = f"imgdex get: Invalid value for '--ids-from': '{path}': not a regular file ({kind})."
    assert result.stderr.decode().splitlines() == [f"{said} See 'imgdex get --help'."]


def test_ids_from_a_fifo_that_no_one_writes_reads_as_empty(store, tmp_path):
    fifo = str(tmp_path / "ids")
    os.mkfifo(fifo)
    result = _get(store, fifo)
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")


def test_ids_from_stops_at_a_line_that_does_not_end(store, ids):
    # An endless stream without a newline (`head -c 100G /dev/zero |`): the lines before it are
    # answered, then the input is given up with one error rather than read for ever.
    done = run_fed_without_end(["get", "--ids-from", "-", "--store", store], ids[0].encode() + b"\n", timeout=60)
    out, err = done.stdout.decode(), done.stderr.decode()
    message = f"line longer than {imgdex.MAX_SKIPPED_LINE} bytes: the rest of the input is not read"
    assert done.returncode == 1
    docs = [json.loads(line) for line in out.splitlines()]
    assert docs[0]["id"] == ids[0]
    assert docs[1:] == [{"error": {"code": 3, "message": message}}]
    assert err.splitlines() == [f"imgdex: <stdin>:2: {message}"]


@pytest.mark.parametrize("path, reason", [("/proc/self/mem", "Input/output error"), ("/proc/self/attr/current", None)])
def test_ids_from_a_file_whose_read_fails_is_one_line(store, path, reason):
    """Both pass as regular files and refuse the read: one line naming the file, not a traceback."""
    if not os.path.exists(path):
        pytest.skip(f"{path} is not on this kernel")
    result = _get(store, path)
    assert result.returncode == 1 and result.stdout == b""
    [line] = result.stderr.decode().splitlines()
    assert line.startswith(f"imgdex: {path}: ") and (reason is None or line == f"imgdex: {path}: {reason}")


class _FailingAfter(io.BytesIO):
    """Lines, then a read that fails as a disk's would."""

    def readline(self, size=-1):
        line = super().readline(size)
        if not line:
            raise OSError(errno.EIO, "Input/output error")
        return line


def test_answers_made_before_a_failed_read_are_printed(store, ids):
    result = CliRunner().invoke(
        cli, ["get", "--ids-from", "-", "--store", store], input=_FailingAfter(f"{ids[0]}\n{ids[1]}\n".encode())
    )
    assert result.exit_code == 1
    assert [json.loads(line)["id"] for line in result.stdout.splitlines()] == ids[:2]
    assert result.stderr.splitlines() == ["imgdex: <stdin>: Input/output error"]


def test_ids_from_standard_input_that_is_a_device_ends(store):
    with open("/dev/zero", "rb") as zeros:
        result = _get(store, "-", stdin=zeros)
    message = f"line longer than {imgdex.MAX_SKIPPED_LINE} bytes: the rest of the input is not read"
    assert result.returncode == 1
    assert [json.loads(line) for line in result.stdout.splitlines()] == [{"error": {"code": 3, "message": message}}]
    assert result.stderr.decode().splitlines() == [f"imgdex: <stdin>:1: {message}"]


class _Counting:
    """A reader that counts the queries run through it."""

    def __init__(self, reader):
        self.reader = reader
        self.images_of_ids = reader.images_of_ids
        self.calls = 0

    def execute(self, sql, params=None):
        self.calls += 1
        return self.reader.execute(sql, params)


def _answer(result):
    if isinstance(result, Exception):
        return {"error": (type(result).__name__, str(result))}
    return result


def test_ids_from_answers_misses_as_resolve_does_without_a_query_each(store, ids):
    reader = engine.connect(store, tables=("images", "tags"))
    unknown = [f"crp{n:017d}" for n in range(200)]
    shared = "8b3baa161d18"  # the config of three samples: an ambiguous image ID prefix
    config = reader.execute("SELECT config_digest FROM images WHERE id = ?", [ids[0]]).fetchone()[0]
    digest = reader.execute("SELECT digest FROM images WHERE digest <> '' LIMIT 1").fetchone()[0]
    mix = [
        ids[0],
        "",
        ID_NAMED,  # id-shaped, and the name of an image
        f"docker.io/library/{ID_NAMED}",
        ids[1],
        shared,
        config[7:19],  # a unique prefix
        "sha256:" + config[7:30],
        config,
        digest,
        "sha256:" + "0" * 64,
        "0123abcdef",  # a prefix of nothing
        "samples/app:v1",
        "samples/app:nosuchtag",
        "nosuch/repository",
        "example.org/nosuch/app",
        "UPPER case!",
        "a\x00b",
        "   ",
        QueryError(f"line longer than {MAX_QUERY_LINE} bytes"),
        ids[2],
    ]
    expected = []
    for query in mix:
        if isinstance(query, Exception):
            expected.append(("", _answer(query)))
        elif not query:
            expected.append((query, None))
        else:
            try:
                expected.append((query, _answer(lookup.resolve(reader, query))))
            except (lookup.NotFound, lookup.Ambiguous, QueryError) as exc:
                expected.append((query, _answer(exc)))
    errors = {answer["error"][0] for _, answer in expected if isinstance(answer, dict)}
    assert errors == {"NotFound", "Ambiguous", "QueryError"}
    found = [query for query, answer in expected if isinstance(answer, tuple)]
    assert ID_NAMED in found and config[7:19] in found and "samples/app:v1" in found

    counted = _Counting(reader)
    assert [(q, _answer(a)) for q, a in lookup.batch(counted, mix)] == expected
    with_unknown = _Counting(reader)
    queries = unknown[:100] + mix + unknown[100:]
    answers = [(q, _answer(a)) for q, a in lookup.batch(with_unknown, queries)]
    assert answers[100:-100] == expected
    for query, answer in answers[:100] + answers[-100:]:
        assert answer == {"error": ("NotFound", f"image {query} not found")}
    # ids that match nothing are answered by the queries the batch runs anyway
    assert with_unknown.calls == counted.calls
