"""Where a store keeps its files. Imports nothing heavy: the lookup path reads this.

    STORE/imgdex.duckdb          the embedded database, written by index runs
    STORE/parquet -> .snapshots/ID   the Parquet snapshot of the last completed run
    STORE/.snapshots/ID/TABLE.parquet
    STORE/.lock                  held by the index run that is writing
"""
from __future__ import annotations

import os

DATABASE = "imgdex.duckdb"
SNAPSHOT_LINK = "parquet"
SNAPSHOTS = ".snapshots"
LOCK = ".lock"
TABLES = ("images", "tags", "runs")
DEFAULT_STORE = "data"
STORE_ENV = "IMGDEX_STORE"


def default_store() -> str:
    return os.environ.get(STORE_ENV) or DEFAULT_STORE


def snapshot_dir(store: str) -> str | None:
    """The folder holding the last completed snapshot's Parquet files, resolved once.

    Resolving the link once means a reader sees one consistent snapshot even while a writer
    swaps in the next. A store copied as bare Parquet files (no link) works as well.
    """
    link = os.path.join(store, SNAPSHOT_LINK)
    for candidate in (link, store):
        real = os.path.realpath(candidate)
        if os.path.isfile(os.path.join(real, "images.parquet")):
            return real
    return None


def table_file(directory: str, table: str) -> str:
    return os.path.join(directory, f"{table}.parquet")
