"""Writing records into the store: bulk Arrow inserts into DuckDB, then a Parquet snapshot.

Every batch is one transaction, so a killed run leaves whole images or none. The snapshot is
written to a new folder and swapped in with one atomic rename of the `parquet` link, so
readers always see the last completed run.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import time
from datetime import datetime, timezone

import duckdb
import pyarrow as pa

from .. import timestamps
from ..errors import StoreError, StoreLocked
from ..model import ImageRecord
from . import layout, schema
from .views import create_views


def _blob_row(blob) -> dict:
    return {"digest": blob.digest, "size": blob.size, "media_type": blob.media_type, "urls": list(blob.urls)}


def records_to_arrow(records: list[ImageRecord], indexed_at: datetime) -> pa.Table:
    columns: dict[str, list] = {field.name: [] for field in schema.IMAGES}
    for r in records:
        config = r.config
        platform = r.platform
        values = {
            "id": r.id,
            "registry": r.registry,
            "name": r.name,
            "digest": r.digest,
            "media_type": r.media_type,
            "kind": r.kind,
            "config_digest": config.digest if config else None,
            "config_size": config.size if config else None,
            "config_media_type": config.media_type if config else None,
            "config_urls": list(config.urls) if config else [],
            "layers": [_blob_row(layer) for layer in r.layers],
            "layers_compressed": r.layers_compressed,
            "compressed_size": r.compressed_size,
            "tags": list(r.tags),
            "created": r.created,
            "created_at": timestamps.epoch_nanos(r.created) if r.created else None,
            "platform_os": platform.os if platform else None,
            "platform_architecture": platform.architecture if platform else None,
            "platform_variant": platform.variant if platform else None,
            "parent_digest": r.parent_digest,
            "labels": list(r.labels),
            "env": list(r.env),
            "entrypoint": list(r.entrypoint),
            "cmd": list(r.cmd),
            "history": [
                {"created": h.created, "created_by": h.created_by, "comment": h.comment, "empty_layer": h.empty_layer}
                for h in r.history
            ],
            "source_kind": r.source_kind,
            "source_path": r.source_path,
            "exactness": r.exactness,
            "indexed_at": indexed_at,
            "manifest_raw": r.manifest_raw,
            "config_raw": r.config_raw,
        }
        for key, value in values.items():
            columns[key].append(value)
    return pa.Table.from_pydict(columns, schema=schema.IMAGES)


def _tags_to_arrow(records: list[ImageRecord]) -> pa.Table:
    rows = [(r.registry, r.name, tag, r.id) for r in records for tag in r.tags]
    return pa.Table.from_arrays(
        [pa.array([row[i] for row in rows], pa.string()) for i in range(4)], schema=schema.TAGS
    )


# Rows lose to an existing row of the same id that is more exact; tag claims always apply,
# since a tag names one manifest per repository and the newest claim is the truth.
_MERGE = [
    "CREATE OR REPLACE TEMP TABLE incoming AS SELECT * FROM incoming_arrow",
    "CREATE OR REPLACE TEMP TABLE claims AS SELECT * FROM claims_arrow",
    """CREATE OR REPLACE TEMP TABLE affected AS
         SELECT id FROM incoming
         UNION SELECT t.image_id FROM tags t JOIN claims c USING (registry, name, tag)""",
    """DELETE FROM incoming WHERE id IN (
         SELECT i.id FROM incoming i JOIN images e ON e.id = i.id WHERE e.exactness > i.exactness)""",
    "DELETE FROM images WHERE id IN (SELECT id FROM incoming)",
    "INSERT INTO images SELECT * FROM incoming",
    "DELETE FROM tags WHERE (registry, name, tag) IN (SELECT (registry, name, tag) FROM claims)",
    "INSERT INTO tags SELECT DISTINCT * FROM claims",
    """UPDATE images SET tags = coalesce(
           (SELECT list_sort(list(t.tag)) FROM tags t WHERE t.image_id = images.id), []::VARCHAR[])
       WHERE id IN (SELECT id FROM affected)""",
]


class StoreWriter:
    """The one writer of a store. Holds the store lock from open to close."""

    def __init__(self, store: str):
        self.store = store
        try:
            os.makedirs(store, exist_ok=True)
            self._lock_file = open(os.path.join(store, layout.LOCK), "a+")
        except OSError as exc:
            raise StoreError(f"cannot open store {store}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.seek(0)
            holder = self._lock_file.read().strip() or "unknown"
            self._lock_file.close()
            raise StoreLocked(f"store {store} is being written by another index run (pid {holder}); try again when it ends") from None
        self._lock_file.seek(0)
        self._lock_file.truncate()
        self._lock_file.write(str(os.getpid()))
        self._lock_file.flush()
        try:
            self.con = duckdb.connect(os.path.join(store, layout.DATABASE))
            for table in schema.TABLES:
                self.con.execute(schema.create_table_sql(table))
            create_views(self.con)
        except duckdb.Error as exc:
            self.close()
            raise StoreError(f"cannot open store {store}: {exc}") from None

    def write(self, records: list[ImageRecord], indexed_at: datetime) -> None:
        if not records:
            return
        incoming_arrow = records_to_arrow(records, indexed_at)
        claims_arrow = _tags_to_arrow(records)
        con = self.con
        con.register("incoming_arrow", incoming_arrow)
        con.register("claims_arrow", claims_arrow)
        try:
            con.execute("BEGIN TRANSACTION")
            for statement in _MERGE:
                con.execute(statement)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        finally:
            con.unregister("incoming_arrow")
            con.unregister("claims_arrow")

    def record_run(self, run: dict) -> None:
        table = pa.Table.from_pylist([run], schema=schema.RUNS)
        self.con.register("run_arrow", table)
        self.con.execute("INSERT INTO runs SELECT * FROM run_arrow")
        self.con.unregister("run_arrow")

    def snapshot(self) -> str:
        """Write every table to a new Parquet folder and swap it in atomically."""
        snapshots = os.path.join(self.store, layout.SNAPSHOTS)
        os.makedirs(snapshots, exist_ok=True)
        name = f"{time.time_ns()}-{os.getpid()}"
        target = os.path.join(snapshots, name)
        os.makedirs(target)
        order = {"images": "id", "tags": "registry, name, tag", "runs": "started_at"}
        for table in schema.TABLES:
            path = layout.table_file(target, table).replace("'", "''")
            # Sorted by id with small row groups, so a lookup by id reads one row group.
            self.con.execute(
                f"COPY (SELECT * FROM {table} ORDER BY {order[table]}) TO '{path}' "
                "(FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 8192)"
            )
        _fsync_tree(target)
        link = os.path.join(self.store, layout.SNAPSHOT_LINK)
        if os.path.isdir(link) and not os.path.islink(link):
            # A snapshot copied in as a plain folder: keep it as an older snapshot.
            os.replace(link, os.path.join(snapshots, f"copied-{name}"))
        temporary = f"{link}.{os.getpid()}.tmp"
        if os.path.lexists(temporary):
            os.unlink(temporary)
        os.symlink(os.path.join(layout.SNAPSHOTS, name), temporary)
        os.replace(temporary, link)
        _fsync_dir(self.store)
        self._prune(snapshots, keep={name})
        return target

    def _prune(self, snapshots: str, keep: set[str]) -> None:
        # The previous snapshot stays for readers that resolved the link just before the swap.
        names = sorted(os.listdir(snapshots), key=lambda n: os.path.getmtime(os.path.join(snapshots, n)))
        previous = [n for n in names if n not in keep][-1:]
        for entry in names:
            if entry not in keep and entry not in previous:
                shutil.rmtree(os.path.join(snapshots, entry), ignore_errors=True)

    def close(self) -> None:
        con = getattr(self, "con", None)
        if con is not None:
            con.close()
            self.con = None
        if not self._lock_file.closed:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: str) -> None:
    for entry in os.listdir(path):
        with open(os.path.join(path, entry), "rb") as f:
            os.fsync(f.fileno())
    _fsync_dir(path)


def now_utc() -> datetime:
    return datetime.now(timezone.utc)
