"""Writing records into the store: bulk Arrow inserts into DuckDB, then a Parquet snapshot.

Every batch is one transaction, so a killed run leaves whole images or none. The snapshot is
written to a new folder and swapped in with one atomic rename of the `parquet` link, so
readers always see the last completed run.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import shutil
import time
from datetime import datetime, timezone

import duckdb
import pyarrow as pa

from .. import timestamps
from ..errors import StoreError, StoreLocked
from ..model import ImageRecord, merge_records
from ..references import blob_id
from . import layout, schema
from .views import create_views


def _offsets(groups) -> pa.Array:
    offsets = [0]
    total = 0
    for group in groups:
        total += len(group)
        offsets.append(total)
    return pa.array(offsets, pa.int32())


def _string_lists(groups: list) -> pa.Array:
    return pa.ListArray.from_arrays(_offsets(groups), pa.array([v for g in groups for v in g], pa.string()))


def _blob_lists(groups: list) -> pa.Array:
    flat = [b for g in groups for b in g]
    struct = pa.StructArray.from_arrays(
        [
            pa.array([b.id or blob_id(b.digest) for b in flat], pa.string()),
            pa.array([b.digest for b in flat], pa.string()),
            pa.array([b.size for b in flat], pa.int64()),
            pa.array([b.media_type for b in flat], pa.string()),
            _string_lists([b.urls for b in flat]),
        ],
        fields=list(schema.BLOB),
    )
    return pa.ListArray.from_arrays(_offsets(groups), struct)


def _history_lists(groups: list) -> pa.Array:
    flat = [h for g in groups for h in g]
    struct = pa.StructArray.from_arrays(
        [
            pa.array([h.created for h in flat], pa.string()),
            pa.array([h.created_by for h in flat], pa.string()),
            pa.array([h.comment for h in flat], pa.string()),
            pa.array([h.empty_layer for h in flat], pa.bool_()),
        ],
        fields=list(schema.HISTORY),
    )
    return pa.ListArray.from_arrays(_offsets(groups), struct)


def _label_maps(groups: list) -> pa.Array:
    return pa.MapArray.from_arrays(
        _offsets(groups),
        pa.array([k for g in groups for k, _ in g], pa.string()),
        pa.array([v for g in groups for _, v in g], pa.string()),
    )


def records_to_arrow(records: list[ImageRecord], indexed_at: datetime) -> pa.Table:
    """Column by column: building nested Arrow arrays from flat lists is far cheaper than row dicts."""
    def column(getter, dtype):
        return pa.array([getter(r) for r in records], dtype)

    def of_config(getter, dtype):
        return pa.array([getter(r.config) if r.config is not None else None for r in records], dtype)

    def of_platform(attribute):
        return pa.array([getattr(r.platform, attribute) if r.platform is not None else None for r in records], pa.string())

    string, int64 = pa.string(), pa.int64()
    arrays = {
        "id": column(lambda r: r.id, string),
        "registry": column(lambda r: r.registry, string),
        "name": column(lambda r: r.name, string),
        "digest": column(lambda r: r.digest, string),
        "media_type": column(lambda r: r.media_type, string),
        "kind": column(lambda r: r.kind, string),
        "config_id": of_config(lambda c: c.id or blob_id(c.digest), string),
        "config_digest": of_config(lambda c: c.digest, string),
        "config_size": of_config(lambda c: c.size, int64),
        "config_media_type": of_config(lambda c: c.media_type, string),
        "config_urls": _string_lists([r.config.urls if r.config is not None else () for r in records]),
        "layers": _blob_lists([r.layers for r in records]),
        "layers_compressed": column(lambda r: r.layers_compressed, pa.bool_()),
        "compressed_size": column(lambda r: r.compressed_size, int64),
        "tags": _string_lists([r.tags for r in records]),
        "created": column(lambda r: r.created, string),
        "created_at": column(lambda r: timestamps.epoch_nanos(r.created) if r.created else None, int64).cast(pa.timestamp("ns")),
        "platform_os": of_platform("os"),
        "platform_architecture": of_platform("architecture"),
        "platform_variant": of_platform("variant"),
        "parent_digest": column(lambda r: r.parent_digest, string),
        "labels": _label_maps([r.labels for r in records]),
        "env": _string_lists([r.env for r in records]),
        "entrypoint": _string_lists([r.entrypoint for r in records]),
        "cmd": _string_lists([r.cmd for r in records]),
        "history": _history_lists([r.history for r in records]),
        "source_kind": column(lambda r: r.source_kind, string),
        "source_path": column(lambda r: r.source_path, string),
        "exactness": column(lambda r: r.exactness, pa.int8()),
        "id_origin": column(lambda r: r.id_origin, string),
        "indexed_at": pa.array([indexed_at] * len(records), pa.timestamp("us", tz="UTC")),
        "manifest_raw": column(lambda r: r.manifest_raw, pa.binary()),
        "config_raw": column(lambda r: r.config_raw, pa.binary()),
    }
    return pa.Table.from_arrays([arrays[f.name] for f in schema.IMAGES], schema=schema.IMAGES)


def _one_per_id(records: list[ImageRecord]) -> list[ImageRecord]:
    # Within a batch as across batches, a known manifest is one resource: an imported id wins.
    imported = {(r.registry, r.name, r.digest): r.id for r in records if r.id_origin == "imported" and r.digest}
    if imported:
        records = [
            dataclasses.replace(r, id=imported[key], id_origin="imported")
            if r.id_origin != "imported" and (key := (r.registry, r.name, r.digest)) in imported
            else r
            for r in records
        ]
    by_id: dict[str, ImageRecord] = {}
    for record in records:
        known = by_id.get(record.id)
        by_id[record.id] = record if known is None else merge_records(known, record)
    return list(by_id.values())


def _tags_to_arrow(records: list[ImageRecord]) -> pa.Table:
    # A tag names one manifest per repository: within a batch the last record that claims it wins.
    latest = {(r.registry, r.name, tag): r.id for r in records for tag in r.tags}
    rows = [(*key, image_id) for key, image_id in latest.items()]
    return pa.Table.from_arrays(
        [pa.array([row[i] for row in rows], pa.string()) for i in range(4)], schema=schema.TAGS
    )


# Rows lose to an existing row of the same id that is more exact; tag claims always apply,
# since a tag names one manifest per repository and the newest claim is the truth.
# A resource with a known manifest digest is one resource whatever its id: an imported (real)
# id is adopted by later records of the same (registry, name, digest), and replaces a derived one.
_MERGE = [
    "CREATE OR REPLACE TEMP TABLE incoming AS SELECT * FROM incoming_arrow",
    "CREATE OR REPLACE TEMP TABLE claims AS SELECT * FROM claims_arrow",
    """CREATE OR REPLACE TEMP TABLE renamed AS
         SELECT i.id AS old_id, e.id AS new_id FROM incoming i JOIN images e
           ON e.registry = i.registry AND e.name = i.name AND e.digest = i.digest
         WHERE i.digest <> '' AND e.id <> i.id AND e.id_origin = 'imported' AND i.id_origin <> 'imported'""",
    "UPDATE incoming SET id = r.new_id, id_origin = 'imported' FROM renamed r WHERE incoming.id = r.old_id",
    "UPDATE claims SET image_id = r.new_id FROM renamed r WHERE claims.image_id = r.old_id",
    """CREATE OR REPLACE TEMP TABLE replaced AS
         SELECT e.id AS old_id, i.id AS new_id FROM incoming i JOIN images e
           ON e.registry = i.registry AND e.name = i.name AND e.digest = i.digest
         WHERE i.digest <> '' AND e.id <> i.id AND i.id_origin = 'imported' AND e.id_origin <> 'imported'""",
    "UPDATE tags SET image_id = r.new_id FROM replaced r WHERE tags.image_id = r.old_id",
    "DELETE FROM images WHERE id IN (SELECT old_id FROM replaced)",
    """CREATE OR REPLACE TEMP TABLE affected AS
         SELECT id FROM incoming
         UNION SELECT t.image_id FROM tags t JOIN claims c USING (registry, name, tag)""",
    """DELETE FROM incoming WHERE id IN (
         SELECT i.id FROM incoming i JOIN images e ON e.id = i.id WHERE e.exactness > i.exactness)""",
    "DELETE FROM images WHERE id IN (SELECT id FROM incoming)",
    "INSERT INTO images SELECT * FROM incoming",
    "DELETE FROM tags WHERE (registry, name, tag) IN (SELECT (registry, name, tag) FROM claims)",
    "INSERT INTO tags SELECT DISTINCT * FROM claims",
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
        records = _one_per_id(records)
        incoming_arrow = records_to_arrow(records, indexed_at)
        claims_arrow = _tags_to_arrow(records)
        con = self.con
        con.register("incoming_arrow", incoming_arrow)
        con.register("claims_arrow", claims_arrow)
        try:
            with self._transaction():
                for statement in _MERGE:
                    con.execute(statement)
                self._recompute_tags("affected")
        finally:
            con.unregister("incoming_arrow")
            con.unregister("claims_arrow")

    def record_run(self, run: dict) -> None:
        table = pa.Table.from_pylist([run], schema=schema.RUNS)
        self.con.register("run_arrow", table)
        self.con.execute("INSERT INTO runs SELECT * FROM run_arrow")
        self.con.unregister("run_arrow")

    # ---- for incremental registry crawls: what a repository's tags point at, and tag moves that
    # need no new record (the manifest is already indexed) or that remove a tag.

    def known_tags(self, registry: str, prefix: str = "") -> list[tuple[str, str, str]]:
        """(name, tag, manifest digest) of every tag of `registry` under the path `prefix`."""
        return self.con.execute(
            """SELECT t.name, t.tag, i.digest FROM tags t JOIN images i ON i.id = t.image_id
               WHERE t.registry = ? AND i.digest <> '' AND (? = '' OR t.name = ? OR starts_with(t.name, ? || '/'))""",
            [registry, prefix, prefix, prefix],
        ).fetchall()

    def indexed_digests(self, registry: str, prefix: str = "") -> list[tuple[str, str]]:
        """(name, manifest digest) of every exact image (exactness >= 3) of `registry` under the path `prefix`.

        A re-crawl skips only these: a less exact record of the same manifest (from the engine) is
        replaced by the registry's.
        """
        return self.con.execute(
            """SELECT DISTINCT name, digest FROM images
               WHERE registry = ? AND digest <> '' AND exactness >= 3 AND (? = '' OR name = ? OR starts_with(name, ? || '/'))""",
            [registry, prefix, prefix, prefix],
        ).fetchall()

    def claim_tags(self, registry: str, claims: list[tuple[str, str, str]]) -> int:
        """Point each (name, tag) at the indexed image of (name, digest); returns the tags moved.

        Claims whose manifest is not indexed are ignored. One transaction, like `write`.
        """
        if not claims:
            return 0
        table = pa.Table.from_arrays(
            [pa.array([registry] * len(claims), pa.string())] + [pa.array([c[i] for c in claims], pa.string()) for i in range(3)],
            names=["registry", "name", "tag", "digest"],
        )
        con = self.con
        con.register("tag_claims_arrow", table)
        try:
            with self._transaction():
                # the most exact record of a (registry, name, digest) holds its tags
                con.execute(
                    """CREATE OR REPLACE TEMP TABLE tag_claims AS
                       SELECT c.registry, c.name, c.tag, arg_max(i.id, i.exactness) AS image_id
                       FROM tag_claims_arrow c JOIN images i
                         ON i.registry = c.registry AND i.name = c.name AND i.digest = c.digest
                       GROUP BY c.registry, c.name, c.tag"""
                )
                moved = con.execute("SELECT count(*) FROM tag_claims").fetchone()[0]
                con.execute(
                    """CREATE OR REPLACE TEMP TABLE tag_affected AS
                       SELECT image_id AS id FROM tag_claims
                       UNION SELECT t.image_id FROM tags t JOIN tag_claims c USING (registry, name, tag)"""
                )
                con.execute("DELETE FROM tags WHERE (registry, name, tag) IN (SELECT (registry, name, tag) FROM tag_claims)")
                con.execute("INSERT INTO tags SELECT registry, name, tag, image_id FROM tag_claims")
                self._recompute_tags("tag_affected")
        finally:
            con.unregister("tag_claims_arrow")
        return moved

    def retire_tags(self, registry: str, name: str, tags: list[str]) -> None:
        """Remove tags that vanished from a repository. Their images stay, untagged if it was the last."""
        if not tags:
            return
        con = self.con
        with self._transaction():
            con.execute(
                """CREATE OR REPLACE TEMP TABLE tag_affected AS
                   SELECT DISTINCT image_id AS id FROM tags
                   WHERE registry = ? AND name = ? AND tag IN (SELECT unnest(?::VARCHAR[]))""",
                [registry, name, list(tags)],
            )
            con.execute(
                "DELETE FROM tags WHERE registry = ? AND name = ? AND tag IN (SELECT unnest(?::VARCHAR[]))",
                [registry, name, list(tags)],
            )
            self._recompute_tags("tag_affected")

    @contextlib.contextmanager
    def _transaction(self):
        self.con.execute("BEGIN TRANSACTION")
        try:
            yield
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")

    def _recompute_tags(self, affected_table: str) -> None:
        self.con.execute(
            f"""UPDATE images SET tags = coalesce(
                   (SELECT list_sort(list(t.tag)) FROM tags t WHERE t.image_id = images.id), []::VARCHAR[])
               WHERE id IN (SELECT id FROM {affected_table})"""
        )

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
        previous = ""
        if os.path.islink(link):
            previous = os.path.basename(os.readlink(link))
        elif os.path.isdir(link):
            # A snapshot copied in as a plain folder: keep it as an older snapshot.
            previous = f"copied-{name}"
            os.replace(link, os.path.join(snapshots, previous))
        temporary = f"{link}.{os.getpid()}.tmp"
        if os.path.lexists(temporary):
            os.unlink(temporary)
        os.symlink(os.path.join(layout.SNAPSHOTS, name), temporary)
        os.replace(temporary, link)
        _fsync_dir(self.store)
        self._prune(snapshots, keep={name, previous})
        return target

    def _prune(self, snapshots: str, keep: set[str]) -> None:
        # The snapshot the link named before the swap stays, for readers that resolved it just
        # before; anything else (older snapshots, folders of killed runs) goes.
        for entry in os.listdir(snapshots):
            if entry not in keep:
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
