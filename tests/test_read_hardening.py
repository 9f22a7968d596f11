"""The read side under hostile or unlucky input: read-only SQL, odd store paths and copies,
broken page tokens, batch lookups, snapshots pruned under a reader, and bad arguments.
Every failure is one `imgdex: ...` line and exit 1 (or a usage error, exit 2), never a traceback."""

import base64
import json
import os
import shutil
import subprocess
import sys
import time

import duckdb
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ROOT, SAMPLES, sample_sources
from indexer.errors import QueryError, StoreError
from indexer.run import RunSummary
from indexer.store import paths
from queries import engine, lookup
from queries.cli import cli

CLI = [sys.executable, "-m", "queries.cli"]


def invoke(*args, input=None, env=None):
    return CliRunner().invoke(cli, [str(a) for a in args], input=input, env=env, catch_exceptions=False)


def index_samples(store, repository="samples/app"):
    result = invoke("index", *sample_sources(), "--store", store, "--repository", repository, "--quiet")
    assert result.exit_code == 0, result.output


def assert_one_line(result, code=1, prefix="imgdex: "):
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def sql_json(store, query):
    result = invoke("sql", query, "--store", store, "--format", "json")
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A store of its own: the attacks below must not be able to harm a shared one."""
    path = tmp_path_factory.mktemp("hardening") / "store"
    index_samples(path)
    return path


@pytest.fixture(scope="module")
def ids(store):
    return [row["id"] for row in sql_json(store, "SELECT id FROM images ORDER BY id")]


# ---------------------------------------------------------------------------------------------
# 1. sql is read-only in the engine
# ---------------------------------------------------------------------------------------------


def _store_files(store) -> dict[str, int]:
    return {
        os.path.relpath(os.path.join(root, name), store): os.path.getsize(os.path.join(root, name))
        for root, _, names in os.walk(store)
        for name in names
    }


def _attacks(store, tmp_path):
    database = next(os.path.join(store, "images", n) for n in os.listdir(store / "images") if n.endswith(".parquet"))
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cr3t\n")
    written = tmp_path / "written.csv"
    return written, [
        f"ATTACH '{database}' AS s; DELETE FROM s.images",
        f"ATTACH '{database}' AS s (READ_ONLY); SELECT count(*) FROM s.images",
        f"COPY (SELECT 1) TO '{written}'",
        f"COPY images TO '{written}' (FORMAT csv)",
        f"EXPORT DATABASE '{tmp_path / 'exported'}'",
        "CREATE TABLE x AS SELECT 1",
        "COMMIT; CREATE TABLE x AS SELECT 1",
        "ROLLBACK; CREATE VIEW v AS SELECT 1",
        "BEGIN TRANSACTION; CREATE TABLE x (a INT)",
        "CREATE MACRO m(a) AS a + 1",
        "ATTACH ':memory:' AS m; CREATE TABLE m.t AS SELECT 1",
        "ATTACH ':memory:' AS m",
        f"SELECT * FROM read_text('{secret}')",
        f"SELECT * FROM read_csv('{secret}')",
        f"SELECT * FROM read_blob('{secret}')",
        "SELECT * FROM read_text('/etc/shadow')",
        "SELECT * FROM glob('/etc/*')",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET enable_external_access = true",
        "RESET enable_external_access",
        "SET lock_configuration = false",
        "SET allowed_directories = ['/']",
        "SELECT * FROM 'https://example.com/x.parquet'",
    ]


def test_sql_cannot_write_or_read_other_files(store, tmp_path):
    written, attacks = _attacks(store, tmp_path)
    before = sql_json(store, "SELECT count(*) AS n FROM images")
    files = _store_files(store)
    for query in attacks:
        result = invoke("sql", query, "--store", store)
        line = assert_one_line(result)
        assert "s3cr3t" not in result.output, query
        assert result.stdout == "", query
        assert "imgdex: " in line, query
    assert not written.exists() and not (tmp_path / "exported").exists()
    assert _store_files(store) == files
    assert sql_json(store, "SELECT count(*) AS n FROM images") == before


@pytest.mark.parametrize(
    "query",
    [
        "ATTACH ':memory:' AS m",
        "ATTACH DATABASE '' AS m",
        "SELECT 1 AS a; ATTACH OR REPLACE ':memory:' AS memory",
        "ATTACH ':memory:' AS m; SELECT 1 AS a",
    ],
)
def test_sql_cannot_attach_an_in_memory_database(store, query):
    # It opens no file, so the lock on files let DuckDB attach it: exit 0, though nothing is attached.
    line = assert_one_line(invoke("sql", query, "--store", store))
    assert line == "imgdex: statements run read-only: ATTACH cannot run, not even for an in-memory database"
    reader = engine.connect(str(store))
    try:
        with pytest.raises(QueryError, match="ATTACH cannot run"):
            reader.run(query)
        assert reader.run("SELECT count(*) > 0 AS ok FROM images").fetchall() == [(True,)]
    finally:
        reader.close()


def test_sql_cannot_detach(store):
    line = assert_one_line(invoke("sql", "DETACH DATABASE IF EXISTS m", "--store", store))
    assert line == "imgdex: statements run read-only: DETACH cannot run"


@pytest.mark.parametrize(
    "query",
    [
        "SET VARIABLE v = repeat('x', 100000000); SELECT length(getvariable('v')) AS n",
        "SELECT 1 AS a; SET VARIABLE v = 1",
        "EXPLAIN ANALYZE SET VARIABLE v = 1",
        "RESET VARIABLE v",
        "USE memory",
    ],
)
def test_sql_cannot_set_a_variable(store, query):
    # Its value was held from its statement to the end of the run, which DuckDB's limit does not count.
    line = assert_one_line(invoke("sql", query, "--store", store))
    assert line.startswith("imgdex: statements run read-only: SET cannot run"), line
    reader = engine.connect(str(store))
    try:
        with pytest.raises(QueryError, match="SET cannot run"):
            reader.run(query)
    finally:
        reader.close()


CREATE_REFUSED = "imgdex: statements run read-only: CREATE cannot run, not even for a temporary object"


@pytest.mark.parametrize(
    "query",
    [
        "EXPLAIN ANALYZE CREATE TEMP TABLE t AS SELECT 1",
        "EXPLAIN CREATE TEMP VIEW v AS SELECT 1",
        "EXPLAIN (ANALYZE, FORMAT json) CREATE TEMP MACRO m() AS 1",
        "EXPLAIN(ANALYZE)CREATE TEMP SEQUENCE s",
        "/* c */ explain -- analyse\n analyse create temp table t as select ')'",
        "SELECT 1 AS a; EXPLAIN ANALYZE CREATE TEMP TABLE t AS SELECT 1",
    ],
)
def test_sql_cannot_explain_what_it_refuses(store, query):
    # The statement's type is EXPLAIN, which passed; EXPLAIN ANALYZE ran the CREATE it explained.
    assert assert_one_line(invoke("sql", query, "--store", store)) == CREATE_REFUSED
    reader = engine.connect(str(store))
    try:
        with pytest.raises(QueryError, match="CREATE cannot run"):
            reader.run(query)
    finally:
        reader.close()


@pytest.mark.parametrize(
    "query",
    [
        "EXPLAIN SELECT count(*) FROM images",
        "EXPLAIN ANALYZE SELECT count(*) FROM images",
        "EXPLAIN (ANALYZE, FORMAT json) SELECT ')'",
        "EXPLAIN ANALYSE FROM images",
        # A parenthesis after EXPLAIN may open the statement rather than its options.
        "EXPLAIN (SELECT 1) UNION ALL (SELECT 2)",
        "EXPLAIN (ANALYZE) (SELECT 1)",
        "EXPLAIN ANALYZE PIVOT images ON name USING count(*)",
    ],
)
def test_sql_explains_what_it_runs(store, query):
    result = invoke("sql", query, "--store", store, "--format", "json")
    assert result.exit_code == 0, result.output
    [row] = [json.loads(line) for line in result.stdout.splitlines()]
    assert set(row) == {"explain_key", "explain_value"}


# An EXPLAIN's words, and what DuckDB reads between them: a parenthesis inside a comment or a
# string must not be taken for one that opens or closes the options.
_EXPLAIN_WORDS = st.sampled_from(
    [
        ["EXPLAIN"],
        ["explain", "analyze"],
        ["EXPLAIN", "ANALYSE"],
        ["EXPLAIN", "(", "ANALYZE", ")"],
        ["EXPLAIN", "(", "FORMAT", "json", ")"],
        ["EXPLAIN", "(", "ANALYZE", "true", ",", "FORMAT", "'json'", ")"],
    ]
)
_GAPS = st.sampled_from([" ", "\n\t", " /* ( */ ", " -- )\n", "/**/"])
_EXPLAINED = {
    "CREATE TEMP TABLE t AS SELECT ')'": True,
    "create temporary view v as select 1": True,
    "CREATE TEMP MACRO m() AS '('": True,
    "SELECT ')' AS x": False,
    "(SELECT 1) UNION ALL (SELECT 2)": False,
    "FROM images": False,
    "VALUES ('(')": False,
}


@pytest.fixture(scope="module")
def reader(store):
    reader = engine.connect(str(store))
    yield reader
    reader.close()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_EXPLAIN_WORDS, st.data(), st.sampled_from(sorted(_EXPLAINED)))
def test_an_explain_is_refused_as_what_it_explains(reader, words, data, statement):
    query = "".join(word + data.draw(_GAPS) for word in words) + statement
    if _EXPLAINED[statement]:
        with pytest.raises(QueryError, match="^statements run read-only: CREATE cannot run"):
            reader.run(query)
    else:
        assert reader.run(query).fetchall()


@pytest.mark.parametrize(
    "query",
    [
        "PREPARE p AS CREATE TEMP TABLE t AS SELECT 1; EXECUTE p",
        "PREPARE p AS EXPLAIN ANALYZE CREATE TEMP TABLE t AS SELECT 1; EXECUTE p",
        "PREPARE p AS ATTACH ':memory:' AS m; EXECUTE p",
    ],
)
def test_sql_cannot_prepare_what_it_refuses(store, query):
    # DuckDB prepares none of these; were it to, EXECUTE would run what the check never saw.
    line = assert_one_line(invoke("sql", query, "--store", store))
    assert "is not a preparable statement" in line or line.startswith("imgdex: statements run read-only: ")


def test_sql_still_reads_the_store(store):
    assert sql_json(store, "SELECT count(*) AS n FROM tags")[0]["n"] > 0
    assert sql_json(store, "SELECT count(*) AS n FROM runs")[0]["n"] == 1
    assert sql_json(store, "SELECT count(*) AS n FROM image_layers")[0]["n"] > 0
    # several statements: the last one's rows, each statement still read-only
    assert sql_json(store, "SELECT 1 AS a; COMMIT; SELECT 2 AS b") == [{"b": 2}]
    assert sql_json(store, "ROLLBACK; SELECT count(*) > 0 AS ok FROM images") == [{"ok": True}]
    assert invoke("sql", "", "--store", store).exit_code == 0


def test_every_read_path_shares_the_lock(store, tmp_path):
    written = tmp_path / "written.csv"
    reader = engine.connect(str(store), tables=("images", "tags"))
    with pytest.raises(QueryError):
        reader.execute(f"COPY (SELECT 1) TO '{written}'")
    with pytest.raises(QueryError):
        reader.execute("CREATE TABLE x AS SELECT 1")
    with pytest.raises(QueryError):
        reader.run("COMMIT; CREATE TABLE x AS SELECT 1")
    # a failed statement leaves the reader usable, and still read-only
    assert reader.execute("SELECT count(*) FROM images").fetchone()[0] > 0
    with pytest.raises(QueryError):
        reader.execute("CREATE TABLE x AS SELECT 1")
    assert not written.exists()


def test_store_without_snapshot_is_locked_too(store, tmp_path):
    """A store of the old layout read from its database (no snapshot) gets the same lock."""
    exported = _bare_copy(store, tmp_path / "exported", paths.TABLES)
    copy = tmp_path / "dbonly"
    copy.mkdir()
    with duckdb.connect(str(copy / paths.DATABASE)) as con:
        for table in paths.TABLES:
            con.execute(f"CREATE TABLE {table} AS SELECT * FROM '{exported / (table + '.parquet')}'")
    assert sql_json(copy, "SELECT count(*) AS n FROM images")[0]["n"] > 0
    for query in ("DELETE FROM images", "COMMIT; DELETE FROM images", f"COPY images TO '{tmp_path / 'out.csv'}'"):
        assert_one_line(invoke("sql", query, "--store", copy))
    assert not (tmp_path / "out.csv").exists()
    with duckdb.connect(str(copy / paths.DATABASE), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM images").fetchone()[0] > 0


# ---------------------------------------------------------------------------------------------
# 2. no hive partitioning
# ---------------------------------------------------------------------------------------------


def test_key_value_folders_in_the_store_path_add_no_columns(store, tmp_path, ids):
    odd = tmp_path / "env=prod" / "store"
    shutil.copytree(store, odd, symlinks=True)
    tags = sql_json(odd, "SELECT * FROM tags ORDER BY name, tag")
    assert tags and set(tags[0]) == {"registry", "name", "tag", "image_id"}
    columns = [row["column_name"] for row in sql_json(odd, "DESCRIBE images")]
    assert "env" in columns  # the image's own env column, once
    assert columns.count("env") == 1
    assert columns == [row["column_name"] for row in sql_json(store, "DESCRIBE images")]
    assert invoke("get", ids[0], "--store", odd).stdout == invoke("get", ids[0], "--store", store).stdout


# ---------------------------------------------------------------------------------------------
# 3. Parquet-only copies missing a file
# ---------------------------------------------------------------------------------------------


def _bare_copy(store, folder, tables):
    """The store's current rows as plain Parquet files (`imgdex export`), `tables` of them kept."""
    result = invoke("export", folder, "--store", store)
    assert result.exit_code == 0, result.output
    for table in paths.TABLES:
        if table not in tables:
            os.unlink(paths.table_file(str(folder), table))
    return folder


def _answers(store, ids):
    batch = "\n".join([*ids, "samples/app:v1"])
    return {
        "get-id": invoke("get", ids[0], "--store", store).stdout,
        "get-tag": invoke("get", "imgdex-test/app:1.0", "--store", store).stdout,
        "get-batch": invoke("get", "--ids-from", "-", "--store", store, input=batch).stdout,
        "list": invoke("list", "--store", store).stdout,
        "tags": invoke("sql", "SELECT * FROM tags ORDER BY ALL", "--store", store, "--format", "csv").stdout,
    }


def test_copy_without_tags_parquet_answers_everything(store, tmp_path, ids):
    bare = _bare_copy(store, tmp_path / "notags", ("images", "runs"))
    expected = _answers(store, ids)
    assert all(expected.values())
    assert _answers(bare, ids) == expected
    assert sql_json(bare, "SELECT count(*) AS n FROM runs") == [{"n": 1}]


def test_copy_without_runs_parquet_names_the_file(store, tmp_path, ids):
    bare = _bare_copy(store, tmp_path / "noruns", ("images", "tags"))
    assert _answers(bare, ids) == _answers(store, ids)
    line = assert_one_line(invoke("sql", "SELECT * FROM runs", "--store", bare))
    assert line == f"imgdex: store {bare} has no runs.parquet"


def test_copy_without_images_parquet_names_the_file(store, tmp_path, ids):
    bare = _bare_copy(store, tmp_path / "noimages", ("tags", "runs"))
    for args in (("get", ids[0]), ("list",), ("sql", "SELECT 1")):
        line = assert_one_line(invoke(*args, "--store", bare))
        assert line == f"imgdex: store {bare} has no images.parquet"


def test_corrupt_parquet_is_one_line(store, tmp_path, ids):
    bare = _bare_copy(store, tmp_path / "corrupt", ("images", "tags", "runs"))
    data = (bare / "images.parquet").read_bytes()
    (bare / "images.parquet").write_bytes(data[: len(data) // 2])
    for args in (("get", ids[0]), ("list",), ("sql", "SELECT 1")):
        assert "cannot read store" in assert_one_line(invoke(*args, "--store", bare))


# ---------------------------------------------------------------------------------------------
# 4. page tokens
# ---------------------------------------------------------------------------------------------


def _token(payload) -> str:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def test_hand_edited_page_tokens(store):
    first = json.loads(invoke("list", "--store", store, "--page-size", "1").stdout)
    real = first["nextPageToken"]
    fingerprint = json.loads(base64.urlsafe_b64decode(real + "=" * (-len(real) % 4)))["q"]
    garbage = [
        real[:-1],
        real[:-2],
        real[: len(real) // 2],
        real[1:],
        real + "A",
        real + "!!",
        "=",
        "====",
        "A",
        "AAAA",
        "%%%%",
        "é",
        "\x00",
        "a" * 10_000,
        _token(b"\xff\xfe\x00garbage"),
        _token(b"not json"),
        _token(b'{"k": [1,'),
        _token(b"[" * 100_000),
        _token(b"1e999999"),
        _token(b"NaN"),
        _token([]),
        _token(42),
        _token("k"),
        _token(None),
        _token({}),
        _token({"k": "x"}),
        _token({"k": {}}),
        _token({"q": fingerprint, "k": None}),
        _token({"q": fingerprint, "k": [1, 2, 3]}),
        _token({"q": fingerprint, "k": [None, None, None]}),
        _token({"q": fingerprint, "k": [{"a": 1}, [2], True]}),
        _token({"q": fingerprint, "k": ["a", "b", 3.5]}),
        _token({"q": fingerprint, "k": ["a", "b", 10**40]}),
        _token({"q": fingerprint, "k": ["a", "b", False]}),
        _token({"q": fingerprint, "k": ["a", "b"]}),
        _token({"q": fingerprint, "k": ["a", "b", "c", "d"]}),
    ]
    for token in garbage:
        result = invoke("list", "--store", store, "--page-size", "1", "--page-token", token)
        line = assert_one_line(result)
        assert "page token" in line, token
        assert len(line) < 200
    # the same keys with the right types are a valid page
    ok = _token({"q": fingerprint, "k": ["a", "b", "c"]})
    assert invoke("list", "--store", store, "--page-size", "1", "--page-token", ok).exit_code == 0
    # sort keys holding integers reject other types
    by_time = ["list", "--store", store, "--page-size", "1", "--order-by", "created_at"]
    token = json.loads(invoke(*by_time).stdout)["nextPageToken"]
    q = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))["q"]
    for keys in (["x", "y"], [2**63, "y"], [1.5, "y"], [True, "y"], [1, 2]):
        line = assert_one_line(invoke(*by_time, "--page-token", _token({"q": q, "k": keys})))
        assert line == "imgdex: invalid page token", keys


# ---------------------------------------------------------------------------------------------
# 5. get --ids-from: one output line per input line
# ---------------------------------------------------------------------------------------------


def test_ids_from_prints_one_line_per_input_line(store, ids):
    shared = "8b3baa161d18"  # the config of three samples: an ambiguous image ID prefix
    lines = [
        ids[0],
        "",
        "crp00000000000000000",
        "UPPER case!",
        "   ",
        ids[1],
        shared,
        "samples/app:v1",
        "a\x00b",
        ids[2],
    ]
    result = invoke("get", "--ids-from", "-", "--store", store, input="\n".join(lines))  # no final newline
    assert result.exit_code == 1
    out = result.stdout.split("\n")
    assert out[-1] == "" and len(out) - 1 == len(lines)
    docs = [json.loads(line) if line else None for line in out[:-1]]
    assert [d["id"] for d in (docs[0], docs[5], docs[9])] == [ids[0], ids[1], ids[2]]
    assert docs[1] is None and docs[4] is None
    assert docs[2] == {"error": {"code": 5, "message": "image crp00000000000000000 not found"}}
    assert docs[3]["error"]["code"] == 3 and "UPPER case!" in docs[3]["error"]["message"]
    assert docs[6]["error"]["code"] == 3 and "ambiguous" in docs[6]["error"]["message"]
    assert docs[7]["name"] == "samples/app"
    assert docs[8]["error"]["code"] == 3 and "\x00" not in out[8]
    stderr = result.stderr.splitlines()
    assert stderr == [f"imgdex: <stdin>:{i + 1}: {docs[i]['error']['message']}" for i in (2, 3, 6, 8)]
    assert "imgdex: <stdin>:3: image crp00000000000000000 not found" in stderr


def test_ids_from_all_found_exits_zero_and_undecodable_lines_are_errors(store, ids):
    ok = invoke("get", "--ids-from", "-", "--store", store, input="\n".join(ids) + "\n")
    assert ok.exit_code == 0 and ok.stderr == ""
    assert [json.loads(line)["id"] for line in ok.stdout.splitlines()] == ids
    proc = subprocess.run(
        [*CLI, "get", "--ids-from", "-", "--store", str(store)],
        input=ids[0].encode() + b"\n\xff\xfe\x80\n" + ids[1].encode() + b"\n",
        capture_output=True,
        cwd=ROOT,
        timeout=60,
    )
    assert proc.returncode == 1 and b"Traceback" not in proc.stderr
    out = proc.stdout.decode().splitlines()
    assert len(out) == 3 and json.loads(out[1])["error"]["code"] == 3
    assert [json.loads(out[i])["id"] for i in (0, 2)] == ids[:2]


def test_ids_from_stays_batched(store, ids, monkeypatch):
    reader = engine.connect(str(store), tables=("images", "tags"))
    calls = []

    class Counting:
        images_of_ids = reader.images_of_ids

        def execute(self, sql, params=None):
            calls.append(sql)
            return reader.execute(sql, params)

    monkeypatch.setattr(lookup, "_BATCH", 4)
    queries = (ids * 3)[:10] + ["", "crp00000000000000000"]
    results = list(lookup.batch(Counting(), queries))
    assert [q for q, _ in results] == queries
    assert results[10][1] is None
    # three bulk fetches for 12 queries; only the miss is looked up on its own
    bulk = [sql for sql in calls if "unnest" in sql and "WHERE id IN" in sql]
    assert len(bulk) == 3
    assert len(calls) - len(bulk) <= 4


# ---------------------------------------------------------------------------------------------
# 6. readers keep the snapshot they opened
# ---------------------------------------------------------------------------------------------


def _index_more(store, n):
    for i in range(n):
        index_samples(store, repository=f"more/run{i}-{time.time_ns()}")


def test_reader_keeps_its_version_across_index_runs(tmp_path):
    store = tmp_path / "store"
    index_samples(store)
    reader = engine.connect(str(store))
    before = reader.execute("SELECT id, tags FROM images ORDER BY id").fetchall()
    _index_more(store, 2)
    assert sql_json(store, "SELECT count(*) AS n FROM images") != [{"n": len(before)}]
    assert reader.execute("SELECT id, tags FROM images ORDER BY id").fetchall() == before
    assert reader.execute("SELECT count(*) FROM image_layers").fetchone()[0] > 0


def test_get_ids_from_finishes_on_its_version(tmp_path):
    store = tmp_path / "store"
    index_samples(store)
    ids = [row["id"] for row in sql_json(store, "SELECT id FROM images ORDER BY id")]
    proc = subprocess.Popen(
        [*CLI, "get", "--ids-from", "-", "--store", str(store)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        text=True,
    )
    try:
        time.sleep(2)  # the process has opened the store's current version and waits for input
        _index_more(store, 2)
        # compaction with the default retention keeps every file that version reads
        result = invoke("compact", "--store", store)
        assert result.exit_code == 0, result.output
        out, err = proc.communicate("\n".join(ids) + "\n", timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert [json.loads(line)["id"] for line in out.splitlines()] == ids


def test_read_only_copy_works(store, tmp_path, ids):
    bare = _bare_copy(store, tmp_path / "ro", paths.TABLES)
    for name in os.listdir(bare):
        os.chmod(bare / name, 0o444)
    os.chmod(bare, 0o555)
    try:
        assert json.loads(invoke("get", ids[0], "--store", bare).stdout)["id"] == ids[0]
        assert sql_json(bare, "SELECT count(*) AS n FROM images") == [{"n": len(ids)}]
    finally:
        os.chmod(bare, 0o755)


def test_a_file_removed_under_a_reader_is_one_error(tmp_path):
    store = tmp_path / "store"
    index_samples(store)
    reader = engine.connect(str(store))
    for name in os.listdir(store / "images"):
        if name.endswith(".parquet"):
            os.unlink(store / "images" / name)
    with pytest.raises(StoreError, match="cannot read store"):
        reader.execute("SELECT count(*) FROM images").fetchall()


def test_read_only_store_works(tmp_path):
    store = tmp_path / "store"
    index_samples(store)
    ids = [row["id"] for row in sql_json(store, "SELECT id FROM images ORDER BY id")]
    for root, _folders, names in os.walk(store):
        for name in names:
            os.chmod(os.path.join(root, name), 0o444)
    modes = [(root, 0o555) for root, _, _ in os.walk(store)]
    for root, mode in modes:
        os.chmod(root, mode)
    try:
        assert json.loads(invoke("get", ids[0], "--store", store).stdout)["id"] == ids[0]
        assert sql_json(store, "SELECT count(*) AS n FROM images") == [{"n": len(ids)}]
        assert invoke("history", "--store", store).exit_code == 0
    finally:
        for root, _ in modes:
            os.chmod(root, 0o755)


# ---------------------------------------------------------------------------------------------
# 7. index wiring: --timeout, passwords
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def fake_index(monkeypatch):
    seen = {}

    def fake(specs, writer, **kwargs):
        seen.update(kwargs, specs=list(specs))
        return RunSummary()

    monkeypatch.setattr("indexer.run.index_sources", fake)
    return seen


def test_index_timeout_reaches_the_run(tmp_path, fake_index):
    assert invoke("index", "docker://127.0.0.1:1/app", "--store", tmp_path / "s").exit_code == 0
    assert fake_index["settings"].options.registry.timeout == 30.0
    assert invoke("index", "docker://127.0.0.1:1/app", "--store", tmp_path / "s", "--timeout", "2.5").exit_code == 0
    assert fake_index["settings"].options.registry.timeout == 2.5
    for bad in ("0", "-1", "nan", "inf", "soon"):
        result = invoke("index", "docker://127.0.0.1:1/app", "--store", tmp_path / "s", "--timeout", bad)
        assert result.exit_code == 2 and "--timeout" in result.stderr, bad
    assert "whole response included" in " ".join(invoke("index", "--help").stdout.split())


def test_password_variable_only_matters_for_registries(tmp_path, fake_index):
    archive = os.path.join(SAMPLES, "docker-save-app.tar")
    env = {"IMGDEX_PASSWORD": "hunter2"}
    assert invoke("index", archive, "--store", tmp_path / "s", env=env).exit_code == 0
    assert fake_index["settings"].options.registry is None
    result = invoke("index", "docker://127.0.0.1:1/app", "--store", tmp_path / "s", env=env)
    assert result.exit_code == 2 and "needs --username" in result.stderr
    result = invoke("index", "docker://127.0.0.1:1/app", "--username", "u", "--store", tmp_path / "s", env=env)
    assert result.exit_code == 0 and fake_index["settings"].options.registry.password == "hunter2"


def test_real_index_ignores_the_password_variable(tmp_path):
    archive = os.path.join(SAMPLES, "docker-save-app.tar")
    result = invoke("index", archive, "--store", tmp_path / "s", env={"IMGDEX_PASSWORD": "hunter2"})
    assert result.exit_code == 0, result.output


def test_password_stdin(tmp_path, fake_index):
    archive = os.path.join(SAMPLES, "docker-save-app.tar")
    options = ["--password-stdin", "--store", tmp_path / "s"]
    result = invoke("index", archive, *options, input="pw\n")
    assert result.exit_code == 2 and "docker://" in result.stderr
    result = invoke("index", "docker://127.0.0.1:1/app", "--username", "u", *options, input="pw\n")
    assert result.exit_code == 0 and fake_index["settings"].options.registry.password == "pw"
    stdin_sources = (
        "-",
        "docker-archive:-",
        "oci-archive:-",
        "oci-archive:-:v1",
        "ycr-json:-",
        "/dev/stdin",
        "docker-archive:/dev/stdin",
    )
    for source in stdin_sources:
        result = invoke("index", "docker://127.0.0.1:1/app", source, "--username", "u", *options, input="pw\n")
        assert result.exit_code == 2 and "cannot both read standard input" in result.stderr, source


# ---------------------------------------------------------------------------------------------
# 8. bad arguments
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("get", "a" * 10_000),
        ("get", "sha256:" + "a" * 10_000),
        ("get", "a/" * 5_000),
        ("get", "x" * 300 + ":" + "t" * 300),
        ("get", "a\x00b"),
        ("get", "crp\x00"),
        ("get", "line\nbreak"),
        ("get", ""),
        ("get", "UPPER"),
        ("get", "x@sha256:zz"),
        ("list", "--page-size", "-1"),
        ("list", "--page-size", "100000"),
        ("list", "--page-size", str(10**30)),
        ("list", "--filter", "garbage"),
        ("list", "--filter", "name="),
        ("list", "--filter", 'name="a" AND'),
        ("list", "--filter", "AND"),
        ("list", "--filter", "name IN ()"),
        ("list", "--filter", "name IN (" + '"a",' * 5000),
        ("list", "--filter", '((((name="a"' + " OR" * 5000),
        ("list", "--filter", "\x00"),
        ("list", "--filter", "x" * 100_000),
        ("list", "--order-by", "garbage"),
        ("list", "--order-by", "name desc desc"),
        ("list", "--order-by", "name; DROP TABLE images"),
        ("list", "--order-by", "id"),
        ("list", "--order-by", "\x00"),
        ("sql", "SELECT"),
        ("sql", "\x00"),
    ],
)
def test_bad_arguments_are_one_line(store, args):
    started = time.monotonic()
    result = invoke(*args, "--store", store)
    line = assert_one_line(result)
    assert len(line) < 600 and "\x00" not in line
    assert time.monotonic() - started < 10


@pytest.mark.parametrize(
    "args",
    [
        ("list", "--page-size", "abc"),
        ("list", "--format", "xml"),
        ("get",),
        ("get", "imgdex-test/app:1.0", "--platform", "linux"),
        ("get", "imgdex-test/app:1.0", "--platform", "a/b/c/d"),
    ],
)
def test_bad_arguments_are_usage_errors(store, args):
    result = invoke(*args, "--store", store)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_password_stdin_is_bounded(tmp_path):
    result = CliRunner().invoke(
        cli,
        ["index", "docker://127.0.0.1:1/app:1", "--username", "u", "--password-stdin", "--store", str(tmp_path / "s")],
        input="x" * (64 * 1024 + 10),
    )
    assert result.exit_code == 2
    assert "at most 65536 characters" in result.output
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    "args", [["list"], ["get", "x"], ["sql", "SELECT 1"], ["history"], ["compact"], ["index", sample_sources()[0]]]
)
def test_a_log_that_cannot_be_listed_is_not_taken_for_no_store(store, monkeypatch, args):
    """A table log without read permission (as for a user other than the store's) said `no image
    store … run imgdex index first`."""
    log = os.path.join(str(store), "tags", "_delta_log")
    listing = os.scandir

    def scandir(path="."):
        if os.fspath(path) == log:
            raise PermissionError(13, "Permission denied", path)
        return listing(path)

    monkeypatch.setattr(os, "scandir", scandir)
    line = assert_one_line(invoke(*args, "--store", store))
    assert line == f"imgdex: cannot read the Delta log {log}: Permission denied"
