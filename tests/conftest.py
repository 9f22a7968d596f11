import os
import sys

import pytest
from click.testing import CliRunner

HERE = os.path.dirname(__file__)
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)  # tests import builders.py directly

REAL = os.path.join(HERE, "fixtures", "real")
SAMPLES = os.path.join(ROOT, "data", "samples")
GOLDEN = os.path.join(HERE, "golden")


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


@pytest.fixture
def run_cli():
    from queries.cli import cli

    def invoke(*args, input=None):
        return CliRunner().invoke(cli, [str(a) for a in args], input=input, catch_exceptions=False)

    return invoke
