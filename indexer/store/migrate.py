"""Converting a store of the first layout (a DuckDB file plus Parquet snapshots) into Delta tables.

The tables are built beside the old files, in a folder of their own, and moved into place with one
rename each, images last: readers go by `images/_delta_log`, so until that rename they read the old
layout, and after it the new one, whole. Only then are the old files removed. A killed migration
leaves the old store as it was (and a folder that the next attempt clears).
"""

from __future__ import annotations

import contextlib
import os
import shutil

import duckdb
import pyarrow as pa

from ..errors import StoreError, first_line
from . import duck, paths, schema
from .delta import Changes, DeltaStore

_WORK = ".migrating"
_BATCH_ROWS = 20_000
OLD_FILES = (paths.DATABASE, paths.DATABASE + ".wal", paths.SNAPSHOT_LINK, paths.SNAPSHOTS, paths.LOCK)


def _old_source(store: str) -> tuple[duckdb.DuckDBPyConnection, str]:
    """A connection that sees the old tables, and what it reads. The database is the truth; a store
    copied as bare Parquet files has only its snapshot."""
    con = duck.connect()
    database = os.path.join(store, paths.DATABASE)
    try:
        if os.path.isfile(database):
            con.execute(f"ATTACH '{database.replace(chr(39), chr(39) * 2)}' AS old (READ_ONLY)")
            return con, "old.main."
        snapshot = paths.snapshot_dir(store)
        if snapshot is None:
            raise StoreError(f"{store} holds no store to migrate")
        for table in paths.TABLES:
            path = paths.table_file(snapshot, table)
            if os.path.isfile(path):
                quoted = path.replace("'", "''")
                con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet('{quoted}', hive_partitioning = false)")
        if not os.path.isfile(paths.table_file(snapshot, "tags")):
            con.execute("CREATE VIEW tags AS SELECT registry, name, unnest(tags) AS tag, id AS image_id FROM images")
        if not os.path.isfile(paths.table_file(snapshot, "runs")):
            con.register("runs", schema.RUNS.empty_table())
        return con, ""
    except duckdb.Error as exc:
        con.close()
        raise StoreError(f"cannot read the old store {store}: {first_line(exc)}") from None


def migrate(store: str) -> dict[str, int]:
    """Convert `store` in place; returns the rows of each table. StoreError when it is not an old store."""
    if paths.is_table_store(store):
        raise StoreError(f"store {store} is already in the current layout")
    if not paths.is_old_layout(store):
        raise StoreError(f"{store} holds no store to migrate")
    work = os.path.join(store, _WORK)
    shutil.rmtree(work, ignore_errors=True)
    con, prefix = _old_source(store)
    counts: dict[str, int] = {}
    try:
        columns = {table: [f.name for f in schema.TABLES[table]] for table in ("images", "tags")}
        present = {
            table: {row[0] for row in con.execute(f"DESCRIBE {prefix}{table}").fetchall()} for table in paths.TABLES
        }
        with DeltaStore(work) as tables:
            tables.create()

            def stream(table: str):
                # Columns a later schema added read as NULL, as they would in the old store.
                select = ", ".join(c if c in present[table] else f"NULL AS {c}" for c in columns[table])
                reader = con.sql(f"SELECT {select} FROM {prefix}{table}").to_arrow_reader(_BATCH_ROWS)
                for batch in reader:
                    counts[table] = counts.get(table, 0) + batch.num_rows
                    yield pa.Table.from_batches([batch])

            tables.write_changes("migration", Changes(images=stream("images"), tags=stream("tags")))
            runs = con.sql(f"SELECT * FROM {prefix}runs ORDER BY started_at").to_arrow_table()
            names = [f.name for f in schema.RUNS]
            for run in runs.to_pylist():
                tables.append_run({name: run.get(name) for name in names})
            counts["runs"] = runs.num_rows
    except (duckdb.Error, OSError) as exc:
        shutil.rmtree(work, ignore_errors=True)
        raise StoreError(f"cannot migrate {store}: {first_line(exc)}") from None
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        con.close()
    try:
        # images last: its table is what makes the folder a store of this layout.
        for table in ("runs", "tags", "images"):
            target = os.path.join(store, table)
            if os.path.isdir(os.path.join(target, "_delta_log")) and not os.path.islink(target):
                # A table an interrupted migration moved in before it stopped: the old store is
                # still the store (its images table never arrived), and this one replaces it.
                shutil.rmtree(target)
            os.replace(os.path.join(work, table), target)
        os.rmdir(work)
    except OSError as exc:
        raise StoreError(f"cannot migrate {store}: {exc.filename or store}: {exc.strerror or exc}") from None
    for name in OLD_FILES:
        path = os.path.join(store, name)
        with contextlib.suppress(FileNotFoundError):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
    for table in paths.TABLES:
        # a bare Parquet copy kept its tables at the top
        with contextlib.suppress(FileNotFoundError):
            os.unlink(paths.table_file(store, table))
    return counts
