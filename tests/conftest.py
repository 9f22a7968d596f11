import os
import socket
import sys

import pytest
from click.testing import CliRunner

HERE = os.path.dirname(__file__)
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)  # tests import builders.py directly

REAL = os.path.join(HERE, "fixtures", "real")
SAMPLES = os.path.join(ROOT, "data", "samples")
GOLDEN = os.path.join(HERE, "golden")


# getaddrinfo as it is before any test stands in for it
_real_getaddrinfo = socket.getaddrinfo


def resolver_for(host: str | None, answer):
    """A stand-in for socket.getaddrinfo: `answer()` for a lookup of `host` (of any name for None)
    that may ask a name server, the real one for any other, and for a lookup with AI_NUMERICHOST,
    which asks none."""

    def getaddrinfo(name, *args, **kwargs):
        flags = kwargs.get("flags", args[4] if len(args) > 4 else 0)
        if host in (None, name) and not flags & socket.AI_NUMERICHOST:
            return answer()
        return _real_getaddrinfo(name, *args, **kwargs)

    return getaddrinfo


def sample_sources() -> list[str]:
    return sorted(os.path.join(SAMPLES, name) for name in os.listdir(SAMPLES) if not name.startswith("."))


@pytest.fixture(scope="session")
def samples_store(tmp_path_factory):
    """The bundled samples indexed as the README's first command does."""
    from queries.cli import cli

    store = str(tmp_path_factory.mktemp("samples-store"))
    result = CliRunner().invoke(cli, ["index", *sample_sources(), "--store", store, "--repository", "samples/app"])
    assert result.exit_code == 0, result.output
    return store


def store_views(store: str):
    """A plain DuckDB connection with the store's current tables as views, for tests that look
    under the CLI (a reader of the library is locked down to the store's files)."""
    import duckdb

    from indexer.store import deltalog

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    for statement in deltalog.view_statements(deltalog.read_store(store, con=con)):
        con.execute(statement)
    return con


def modules_after_cli(calls: list[list[str]], watched: tuple[str, ...]) -> tuple[list[str], str]:
    """Run the `imgdex` commands `calls` (argument lists) in one new interpreter: (the `watched`
    modules it then holds, sorted, and its stdout). What a command imports is a cost every run pays."""
    import ast
    import subprocess

    code = (
        "import sys\n"
        "from queries.cli import cli\n"
        f"for args in {calls!r}:\n"
        "    try:\n        cli.main(args, standalone_mode=False)\n"
        "    except SystemExit:\n        pass\n"
        f"print(sorted(m for m in {tuple(watched)!r} if m in sys.modules), file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return ast.literal_eval(result.stderr.strip().splitlines()[-1]), result.stdout


@pytest.fixture
def fake():
    """A registry on 127.0.0.1 that answers what the test puts in its routes."""
    from registry_server import FakeRegistry

    server = FakeRegistry()
    yield server
    server.stop()


@pytest.fixture
def run_cli():
    from queries.cli import cli

    def invoke(*args, input=None):
        return CliRunner().invoke(cli, [str(a) for a in args], input=input, catch_exceptions=False, prog_name="imgdex")

    return invoke


def need_skopeo(purpose: str) -> str:
    """The skopeo program; a missing one fails the test under CI (`purpose` says what it is needed
    for) and skips it elsewhere."""
    import shutil

    found = shutil.which("skopeo")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"skopeo is needed to {purpose}")
        pytest.skip("skopeo missing")
    return found
