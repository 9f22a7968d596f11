"""The Parquet export (queries/export.py) is read by a real Spark 4 in local mode, with no extra jars.

A small store-like database is built from the store's own Arrow schemas, with what Spark is picky
about: a list of structs, a map, a TIMESTAMP_NS with nanoseconds (one of them before 1970, where
flooring and truncating differ) and TIMESTAMPTZ columns. It is exported from a duckdb connection
and from the project's locked Reader; the bundled samples' real store is exported too. Without
pyspark or Java these tests skip, except when CI is set, where they fail.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
import warnings
from datetime import datetime, timedelta, timezone

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from indexer.errors import QueryError
from indexer.store import schema
from queries import engine
from queries.export import export_from_store, export_store

# 2026-11-29T10:54:27.000347894Z, 2025-01-02T03:04:05.123456789Z, 1969-12-31T23:59:59.999999500Z
CREATED_NS = [1_795_949_667_000_347_894, 1_735_787_045_123_456_789, -500, None]
CREATED = ["2026-11-29T10:54:27.000347894Z", "2025-01-02T03:04:05.123456789Z", "1969-12-31T23:59:59.999999500Z", None]
NAMES = ["team/app", "team/app", "library/base", "team/web"]
LAYERS = [
    ["sha256:" + "a1" * 32, "sha256:" + "a2" * 32],
    ["sha256:" + "a1" * 32, "sha256:" + "b2" * 32, "sha256:" + "b3" * 32],
    ["sha256:" + "c1" * 32],
    [],
]
STARTED = [
    datetime(2026, 11, 29, 10, 0, 0, 123456, tzinfo=timezone.utc),
    datetime(2026, 11, 30, 9, 0, tzinfo=timezone.utc),
]
FINISHED = [datetime(2026, 11, 29, 10, 0, 5, 654321, tzinfo=timezone.utc), None]


def _micros(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(microseconds=1)


def _images() -> pa.Table:
    rows = []
    for i, (name, layers, created) in enumerate(zip(NAMES, LAYERS, CREATED)):
        rows.append(
            {
                "id": f"crp{i:017d}",
                "registry": "cr.yandex",
                "name": name,
                "digest": f"sha256:{i:064x}",
                "kind": "image",
                "layers": [
                    {"id": f"blob{j}", "digest": digest, "size": 1000 + j, "media_type": "tar", "urls": None}
                    for j, digest in enumerate(layers)
                ],
                "tags": [f"v{i}"],
                "created": created,
                "labels": [("org.opencontainers.image.title", name), ("build", str(i))],
                "history": [{"created": created, "created_by": "RUN true", "comment": None, "empty_layer": False}],
                "exactness": i,
                "indexed_at": STARTED[0],
                "manifest_raw": b'{"schemaVersion":2}',
            }
        )
    table = pa.Table.from_pylist(rows, schema=schema.IMAGES)
    index = table.schema.get_field_index("created_at")
    return table.set_column(index, "created_at", pa.array(CREATED_NS, pa.timestamp("ns")))


def _tags() -> pa.Table:
    rows = [
        {"registry": "cr.yandex", "name": n, "tag": f"v{i}", "image_id": f"crp{i:017d}"} for i, n in enumerate(NAMES)
    ]
    return pa.Table.from_pylist(rows, schema=schema.TAGS)


def _runs() -> pa.Table:
    rows = [
        {"run_id": f"run{i}", "started_at": s, "finished_at": f, "sources": ["oci:x"], "images_indexed": 4}
        for i, (s, f) in enumerate(zip(STARTED, FINISHED))
    ]
    return pa.Table.from_pylist(rows, schema=schema.RUNS)


SOURCE = {"images": _images, "tags": _tags, "runs": _runs}


def _started(builder, attempts: int = 2):
    """The session, with one more try when the JVM exits before it answers. That happened once in
    many CI runs and passed at once when run again; the try is said in the warnings summary, and
    the JVM's own output is in the test's captured stderr."""
    for attempt in range(1, attempts + 1):
        try:
            return builder.getOrCreate()
        except Exception as exc:
            error_class = getattr(exc, "getCondition", lambda: None)()
            if error_class != "JAVA_GATEWAY_EXITED" or attempt == attempts:
                raise
            message = f"Spark's Java gateway exited before it started (try {attempt} of {attempts}): {exc}"
            warnings.warn(message, stacklevel=2)
            time.sleep(1)


@pytest.fixture(scope="module")
def spark(tmp_path_factory):
    missing = []
    try:
        import pyspark  # noqa: F401
    except ImportError:
        missing.append("pyspark (the test extra)")
    java_home = os.environ.get("JAVA_HOME")
    if not (shutil.which("java") or (java_home and os.path.isfile(os.path.join(java_home, "bin", "java")))):
        missing.append("java (openjdk-17-jre-headless)")
    if missing:
        reason = "needs " + " and ".join(missing) + "; bash .ci/install-test-deps installs them"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    from pyspark.sql import SparkSession

    scratch = tmp_path_factory.mktemp("spark")
    saved = {key: os.environ.get(key) for key in ("SPARK_LOCAL_IP", "PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON")}
    os.environ.update(SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    builder = (
        SparkSession.builder.master("local[1]")
        .appName("imgdex-export-test")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.memory", "512m")
        .config("spark.sql.shuffle.partitions", "1")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.warehouse.dir", str(scratch / "warehouse"))
        .config("spark.local.dir", str(scratch / "local"))
    )
    session = _started(builder)
    session.sparkContext.setLogLevel("ERROR")
    try:
        yield session
    finally:
        session.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def source_con():
    con = duckdb.connect()
    # Not UTC, so that a conversion that reads naive times in the session's zone shows.
    con.execute("SET TimeZone = 'America/New_York'")
    for table, make in SOURCE.items():
        con.register(f"{table}_arrow", make())
        con.execute(f"CREATE TABLE {table}_rows AS SELECT * FROM {table}_arrow")
        con.execute(f"CREATE VIEW {table} AS SELECT * FROM {table}_rows")
    types = dict(con.execute("SELECT column_name, column_type FROM (DESCRIBE images)").fetchall())
    assert types["created_at"] == "TIMESTAMP_NS"
    assert types["labels"] == "MAP(VARCHAR, VARCHAR)"
    yield con
    con.close()


def _check_with_spark(spark, directory: str) -> None:
    from pyspark.sql import functions as F
    from pyspark.sql.types import TimestampType

    frames = {table: spark.read.parquet(os.path.join(directory, f"{table}.parquet")) for table in SOURCE}
    assert {table: frame.count() for table, frame in frames.items()} == {"images": 4, "tags": 4, "runs": 2}

    images = frames["images"]
    counts = {row["name"]: row["count"] for row in images.groupBy("name").count().collect()}
    assert counts == {"team/app": 2, "library/base": 1, "team/web": 1}

    layers = images.select(F.explode("layers").alias("layer")).select("layer.digest", "layer.size")
    assert layers.count() == sum(len(digests) for digests in LAYERS)
    assert sorted(row["digest"] for row in layers.collect()) == sorted(d for digests in LAYERS for d in digests)

    assert images.schema["created_at"].dataType == TimestampType()
    rows = images.select("id", F.unix_micros("created_at").alias("us"), "created", "labels").orderBy("id").collect()
    # Floored to the microsecond: the pre-1970 time is -1 µs, where rounding or truncating gives 0.
    assert [row["us"] for row in rows] == [None if ns is None else ns // 1000 for ns in CREATED_NS]
    assert [row["created"] for row in rows] == CREATED
    assert [row["labels"]["org.opencontainers.image.title"] for row in rows] == NAMES
    assert images.where(F.col("name") == "team/app").select(F.max("exactness")).first()[0] == 1

    runs = frames["runs"].orderBy("run_id")
    assert runs.schema["started_at"].dataType == TimestampType()
    got = [
        (row["s"], row["f"])
        for row in runs.select(
            F.unix_micros("started_at").alias("s"), F.unix_micros("finished_at").alias("f")
        ).collect()
    ]
    assert got == [(_micros(s), None if f is None else _micros(f)) for s, f in zip(STARTED, FINISHED)]
    text = runs.select(F.date_format("started_at", "yyyy-MM-dd HH:mm:ss.SSSSSS").alias("t")).first()["t"]
    assert text == "2026-11-29 10:00:00.123456"


def test_spark_reads_export_from_duckdb(spark, source_con, tmp_path):
    counts = export_store(source_con, str(tmp_path / "out"))
    assert counts == {"images": 4, "tags": 4, "runs": 2}
    assert sorted(os.listdir(tmp_path / "out")) == ["images.parquet", "runs.parquet", "tags.parquet"]
    _check_with_spark(spark, str(tmp_path / "out"))


def test_spark_reads_export_through_the_locked_reader(spark, source_con, tmp_path):
    # A store copied as bare Parquet files, as an old-layout snapshot holds them (nanoseconds kept).
    store = tmp_path / "store"
    store.mkdir()
    for table, make in SOURCE.items():
        pq.write_table(make(), str(store / f"{table}.parquet"), version="2.6")
    reader = engine.connect(str(store))
    try:
        assert (
            dict(reader.execute("SELECT column_name, column_type FROM (DESCRIBE images)").fetchall())["created_at"]
            == "TIMESTAMP_NS"
        )
        counts = export_store(reader, str(tmp_path / "out"), batch_rows=3)
    finally:
        reader.close()
    assert counts == {"images": 4, "tags": 4, "runs": 2}
    # The same files as from a plain connection (the Reader path builds its batches from rows).
    plain = tmp_path / "plain"
    export_store(source_con, str(plain))
    for table in SOURCE:
        assert pq.read_table(tmp_path / "out" / f"{table}.parquet").equals(pq.read_table(plain / f"{table}.parquet"))
    _check_with_spark(spark, str(tmp_path / "out"))


def test_export_replaces_files_whole_and_refuses_a_file_as_target(source_con, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "images.parquet").write_bytes(b"old")
    export_store(source_con, str(out), tables=("images",))
    assert pq.read_table(out / "images.parquet").num_rows == 4
    assert os.listdir(out) == ["images.parquet"]  # no temporary file left behind
    target = tmp_path / "a-file"
    target.write_text("x")
    with pytest.raises(QueryError, match="exists and is not a directory"):
        export_store(source_con, str(target))
    assert target.read_text() == "x"


def test_a_failed_export_leaves_the_previous_export_whole(source_con, tmp_path):
    # A folder of images from one export and tags from another is a store whose tags name images
    # it lacks: so a table that fails (here runs, read last) leaves every file as it was.
    out = tmp_path / "out"
    export_store(source_con, str(out))
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    con = duckdb.connect()
    for table, make in SOURCE.items():
        con.register(f"{table}_arrow", make().slice(0, 1))
        con.execute(f"CREATE VIEW {table} AS SELECT * FROM {table}_arrow")
    con.execute("CREATE OR REPLACE VIEW runs AS SELECT * FROM runs_arrow WHERE error('the store went away') IS NULL")
    with pytest.raises(QueryError, match="cannot export runs: .*the store went away"):
        export_store(con, str(out))
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before


def test_spark_reads_the_samples_store(spark, samples_store, tmp_path):
    """The real store, end to end: through `imgdex export` once the CLI has it, else the function it calls."""
    from queries.cli import cli

    out = str(tmp_path / "export")
    if "export" in cli.commands:
        from click.testing import CliRunner

        result = CliRunner().invoke(cli, ["export", out, "--store", samples_store])
        assert result.exit_code == 0, result.output
    else:
        export_from_store(samples_store, out)

    reader = engine.connect(samples_store)
    try:
        expected = {t: reader.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in SOURCE}
        layers = reader.execute("SELECT coalesce(sum(len(layers)), 0) FROM images").fetchone()[0]
        created = sorted(
            (row[0], row[1]) for row in reader.execute("SELECT id, epoch_us(created_at) FROM images").fetchall()
        )
    finally:
        reader.close()
    assert expected["images"] > 0

    from pyspark.sql import functions as F

    frames = {table: spark.read.parquet(os.path.join(out, f"{table}.parquet")) for table in SOURCE}
    assert {table: frame.count() for table, frame in frames.items()} == expected
    images = frames["images"]
    assert images.select(F.explode("layers")).count() == layers
    got = sorted(
        (row["id"], row["us"]) for row in images.select("id", F.unix_micros("created_at").alias("us")).collect()
    )
    assert got == created
