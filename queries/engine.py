"""A read-only DuckDB connection over a store's last completed snapshot.

Readers use the Parquet snapshot, so they never wait for or block an index run, and a store
copied as bare Parquet files works the same. Only a store that has no snapshot yet is read
from its database file. Never imports pyarrow.
"""
from __future__ import annotations

import os

import duckdb

from indexer.errors import StoreError
from indexer.store import layout
from indexer.store.views import create_views


def _quote(path: str) -> str:
    return "'" + path.replace("'", "''") + "'"


def connect(store: str, tables: tuple[str, ...] = layout.TABLES) -> duckdb.DuckDBPyConnection:
    """`tables` limits the snapshot views to what a command reads: each view costs a Parquet footer read."""
    snapshot = layout.snapshot_dir(store)
    if snapshot is not None:
        con = duckdb.connect()
        for table in tables:
            path = layout.table_file(snapshot, table)
            if os.path.isfile(path):
                con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet({_quote(path)})")
        if tables == layout.TABLES:
            create_views(con)
        return con
    database = os.path.join(store, layout.DATABASE)
    if os.path.isfile(database):
        try:
            con = duckdb.connect(database, read_only=True)
        except duckdb.Error as exc:
            raise StoreError(f"store {store} has no snapshot yet and its database is busy ({exc})") from None
        return con
    raise StoreError(f"no image store at {store} (run `imgdex index` first, or set --store / IMGDEX_STORE)")
