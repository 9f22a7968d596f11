"""Writing records into the store: bulk Arrow inserts into DuckDB, then a Parquet snapshot.

Every batch is one transaction, so a killed run leaves whole images or none. The snapshot is
written to a new folder and swapped in with one atomic rename of the `parquet` link, so
readers always see the last completed run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import os
import shutil
import time
from datetime import datetime, timezone

import duckdb
import pyarrow as pa

from .. import lineage, timestamps
from ..errors import StoreError, StoreLocked
from ..model import IMPORTED, Blob, HistoryEntry, ImageRecord, Platform, merge_records
from ..references import blob_id
from . import paths, schema
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
        return pa.array(
            [getattr(r.platform, attribute) if r.platform is not None else None for r in records], pa.string()
        )

    string, int64 = pa.string(), pa.int64()
    chains = [lineage.chain_ids(r.diff_ids) for r in records]
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
        "created_at": column(lambda r: timestamps.epoch_nanos(r.created) if r.created else None, int64).cast(
            pa.timestamp("ns")
        ),
        "platform_os": of_platform("os"),
        "platform_architecture": of_platform("architecture"),
        "platform_variant": of_platform("variant"),
        "parent_digest": column(lambda r: r.parent_digest, string),
        "labels": _label_maps([r.labels for r in records]),
        "env": _string_lists([r.env for r in records]),
        "entrypoint": _string_lists([r.entrypoint for r in records]),
        "cmd": _string_lists([r.cmd for r in records]),
        "history": _history_lists([r.history for r in records]),
        "diff_ids": _string_lists([r.diff_ids for r in records]),
        "chain_ids": _string_lists(chains),
        "chain_id": pa.array([c[-1] if c else None for c in chains], string),
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
    return pa.Table.from_arrays([pa.array([row[i] for row in rows], pa.string()) for i in range(4)], schema=schema.TAGS)


def _blob_from_row(digest: str, size: int, media_type: str, urls, stored_id: str) -> Blob:
    # The formula id is stored spelled out; in a record it is the empty default.
    return Blob(digest, size, media_type or "", tuple(urls or ()), "" if stored_id == blob_id(digest) else stored_id)


def record_from_row(row: dict) -> ImageRecord:
    """A stored `images` row back as the record that wrote it, for field-by-field merges."""
    config = None
    if row["config_digest"] is not None:
        config = _blob_from_row(
            row["config_digest"], row["config_size"], row["config_media_type"], row["config_urls"], row["config_id"]
        )
    layers = tuple(
        _blob_from_row(b["digest"], b["size"], b["media_type"], b["urls"], b["id"]) for b in row["layers"] or ()
    )
    history = tuple(
        HistoryEntry(h["created"], h["created_by"], h["comment"], h["empty_layer"]) for h in row["history"] or ()
    )
    platform = None
    if any(row[f"platform_{part}"] is not None for part in ("os", "architecture", "variant")):
        platform = Platform(row["platform_os"] or "", row["platform_architecture"] or "", row["platform_variant"] or "")
    return ImageRecord(
        id=row["id"],
        registry=row["registry"],
        name=row["name"],
        digest=row["digest"],
        media_type=row["media_type"],
        kind=row["kind"],
        config=config,
        layers=layers,
        layers_compressed=row["layers_compressed"],
        tags=tuple(row["tags"] or ()),
        created=row["created"],
        platform=platform,
        parent_digest=row["parent_digest"],
        source_kind=row["source_kind"],
        source_path=row["source_path"],
        exactness=row["exactness"],
        labels=tuple((k, v) for k, v in row["labels"] or ()),
        env=tuple(row["env"] or ()),
        entrypoint=tuple(row["entrypoint"] or ()),
        cmd=tuple(row["cmd"] or ()),
        history=history,
        diff_ids=tuple(row["diff_ids"] or ()),
        manifest_raw=row["manifest_raw"],
        config_raw=row["config_raw"],
        id_origin=row["id_origin"],
        # Only imported records keep a compressed size of their own (see ImageRecord).
        declared_compressed_size=row["compressed_size"] if row["exactness"] >= IMPORTED else None,
    )


# Columns that hold what a source knows of an image. Tags, the source and indexed_at (and
# created_at, derived from created) never make two rows differ for a merge.
_DATA_COLUMNS = [
    f.name
    for f in schema.IMAGES
    if f.name not in ("id", "tags", "source_kind", "source_path", "indexed_at", "created_at", "id_origin")
]
# created_at is left out: it derives from created, and nanosecond timestamps do not convert to Python.
_ROW_COLUMNS = [f.name for f in schema.IMAGES if f.name not in ("created_at", "indexed_at")]
_DIFFERING = (
    f"SELECT {', '.join(f'e.{c}' for c in _ROW_COLUMNS)} FROM images e JOIN incoming_arrow i ON e.id = i.id"
    " WHERE e.exactness = i.exactness"
    f" AND ({', '.join(f'e.{c}' for c in _DATA_COLUMNS)})"
    f" IS DISTINCT FROM ({', '.join(f'i.{c}' for c in _DATA_COLUMNS)})"
)

# Failures that mean the store's files cannot be written, whatever the data: DuckDB reports
# them inside its own exception types (a failed WAL write is a TransactionException), so they
# are known by their operating-system message as well as by their errno.
_STORE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO)
_STORE_CAUSES = {os.strerror(code): os.strerror(code).lower() for code in _STORE_ERRNOS}


def store_failure(exc: BaseException) -> str | None:
    """The cause, in a few words, when `exc` is a failure of the store's files; else None."""
    if isinstance(exc, OSError):
        # Any OSError on the store's own files is the store's: a full disk, a read-only
        # mount, a folder that lost its permissions.
        return exc.strerror.lower() if exc.strerror else (str(exc) or type(exc).__name__)
    if isinstance(exc, duckdb.Error):
        text = str(exc)
        for message, cause in _STORE_CAUSES.items():
            if message.lower() in text.lower():
                return cause
        if isinstance(exc, (duckdb.IOException, duckdb.FatalException, duckdb.InternalException)):
            lines = text.strip().splitlines()
            return lines[0] if lines else type(exc).__name__
    return None


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
        self.con = None
        # What this writer creates, so that a run that lands nothing can leave no store behind:
        # the topmost folder that did not exist, else the database and lock files.
        self._created_dir = _first_missing(store)
        self._created_files = [
            name
            for name in (paths.DATABASE, paths.DATABASE + ".wal", paths.LOCK)
            if self._created_dir is None and not os.path.lexists(os.path.join(store, name))
        ]
        self._created_database = self._created_dir is not None or paths.DATABASE in self._created_files
        self._touched = False
        try:
            os.makedirs(store, exist_ok=True)
            self._lock_file = open(os.path.join(store, paths.LOCK), "a+")
        except OSError as exc:
            self._remove_created()
            raise StoreError(f"cannot open store {store}: {store_failure(exc)}") from None
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.seek(0)
            holder = self._lock_file.read().strip() or "unknown"
            self._lock_file.close()
            raise StoreLocked(
                f"store {store} is being written by another index run (pid {holder}); try again when it ends"
            ) from None
        if self._created_database and os.path.exists(os.path.join(store, paths.DATABASE)):
            # Another run created the store between the look above and the lock: it is not ours.
            self._created_dir, self._created_files, self._created_database = None, [], False
        try:
            self._lock_file.seek(0)
            self._lock_file.truncate()
            self._lock_file.write(str(os.getpid()))
            self._lock_file.flush()
            self.con = duckdb.connect(os.path.join(store, paths.DATABASE))
            for table in schema.TABLES:
                self.con.execute(schema.create_table_sql(table))
            create_views(self.con)
        except (OSError, duckdb.Error) as exc:
            cause = store_failure(exc) or str(exc)
            self.close(quiet=True)
            raise StoreError(f"cannot open store {store}: {cause}") from None

    @property
    def pristine(self) -> bool:
        """True while the store is this writer's own creation and nothing is committed to it:
        closing the writer then removes the store again."""
        return self._created_database and not self._touched

    def _failed(self, exc: BaseException) -> None:
        """Raise StoreError when `exc` is a failure of the store's files; return otherwise."""
        cause = store_failure(exc)
        if cause is not None:
            raise StoreError(f"store {self.store}: {cause}") from None

    def _remove_created(self) -> None:
        if self._created_dir is not None:
            shutil.rmtree(self._created_dir, ignore_errors=True)
            return
        for name in self._created_files:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.store, name))

    def write(self, records: list[ImageRecord], indexed_at: datetime) -> None:
        """One transaction. StoreError when the store's files cannot be written; any other
        exception means something in `records` cannot be stored, and nothing was written."""
        if not records:
            return
        records = _one_per_id(records)
        incoming_arrow = records_to_arrow(records, indexed_at)
        claims_arrow = _tags_to_arrow(records)
        con = self.con
        try:
            con.register("incoming_arrow", incoming_arrow)
            con.register("claims_arrow", claims_arrow)
            with self._transaction():
                merged = self._merge_with_stored(records)
                if merged is not None:
                    con.unregister("incoming_arrow")
                    con.register("incoming_arrow", records_to_arrow(merged, indexed_at))
                for statement in _MERGE:
                    con.execute(statement)
                self._recompute_tags("affected")
        except Exception as exc:
            self._failed(exc)
            raise
        finally:
            for view in ("incoming_arrow", "claims_arrow"):
                with contextlib.suppress(Exception):
                    con.unregister(view)
        self._touched = True

    def _merge_with_stored(self, records: list[ImageRecord]) -> list[ImageRecord] | None:
        """Records of ids already stored, equally exact and with other data, merged field by
        field with the stored row exactly as within a run (merge_records), so the result does
        not depend on the order of runs. None when no stored row differs."""
        stored = self.con.sql(_DIFFERING).to_arrow_table().to_pylist()
        if not stored:
            return None
        known = {row["id"]: record_from_row(row) for row in stored}
        # Tags are left as the incoming records claim them: the tag tables pool them.
        return [
            dataclasses.replace(merge_records(known[r.id], r), tags=r.tags) if r.id in known else r for r in records
        ]

    def record_run(self, run: dict) -> None:
        table = pa.Table.from_pylist([run], schema=schema.RUNS)
        try:
            self.con.register("run_arrow", table)
            self.con.execute("INSERT INTO runs SELECT * FROM run_arrow")
            self.con.unregister("run_arrow")
        except Exception as exc:
            self._failed(exc)
            raise
        self._touched = True

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
        """(name, manifest digest) of every exact image (exactness >= 3) of `registry` under the path
        `prefix`: a registry crawl skips only those, so a less exact record gets replaced."""
        return self.con.execute(
            """SELECT DISTINCT name, digest FROM images
               WHERE registry = ? AND digest <> '' AND exactness >= 3
                 AND (? = '' OR name = ? OR starts_with(name, ? || '/'))""",
            [registry, prefix, prefix, prefix],
        ).fetchall()

    def claim_tags(self, registry: str, claims: list[tuple[str, str, str]]) -> int:
        """Point each (name, tag) at the indexed image of (name, digest); returns the tags moved.

        Claims whose manifest is not indexed are ignored. One transaction, like `write`.
        """
        if not claims:
            return 0
        table = pa.Table.from_arrays(
            [pa.array([registry] * len(claims), pa.string())]
            + [pa.array([c[i] for c in claims], pa.string()) for i in range(3)],
            names=["registry", "name", "tag", "digest"],
        )
        con = self.con
        try:
            con.register("tag_claims_arrow", table)
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
                con.execute(
                    "DELETE FROM tags WHERE (registry, name, tag) IN (SELECT (registry, name, tag) FROM tag_claims)"
                )
                con.execute("INSERT INTO tags SELECT registry, name, tag, image_id FROM tag_claims")
                self._recompute_tags("tag_affected")
        except Exception as exc:
            self._failed(exc)
            raise
        finally:
            with contextlib.suppress(Exception):
                con.unregister("tag_claims_arrow")
        self._touched = True
        return moved

    def retire_tags(self, registry: str, name: str, tags: list[str]) -> None:
        """Remove tags that vanished from a repository. Their images stay, untagged if it was the last."""
        if not tags:
            return
        con = self.con
        try:
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
        except Exception as exc:
            self._failed(exc)
            raise
        self._touched = True

    @contextlib.contextmanager
    def _transaction(self):
        self.con.execute("BEGIN TRANSACTION")
        try:
            yield
        except BaseException:
            # A failed statement may have ended the transaction already (DuckDB does on a
            # failed WAL write); the first error is the one to report.
            with contextlib.suppress(duckdb.Error):
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
        """Write every table to a new Parquet folder and swap it in atomically.

        StoreError when the files cannot be written; readers keep the previous snapshot then."""
        try:
            snapshots, name, previous, target = self._write_snapshot()
        except Exception as exc:
            self._failed(exc)
            raise
        self._touched = True
        self._prune(snapshots, keep={name, previous})
        return target

    def _write_snapshot(self) -> tuple[str, str, str, str]:
        snapshots = os.path.join(self.store, paths.SNAPSHOTS)
        os.makedirs(snapshots, exist_ok=True)
        name = f"{time.time_ns()}-{os.getpid()}"
        target = os.path.join(snapshots, name)
        os.makedirs(target)
        order = {"images": "id", "tags": "registry, name, tag", "runs": "started_at"}
        link = os.path.join(self.store, paths.SNAPSHOT_LINK)
        temporary = f"{link}.{os.getpid()}.tmp"
        try:
            for table in schema.TABLES:
                path = paths.table_file(target, table).replace("'", "''")
                # Sorted by id with small row groups, so a lookup by id reads one row group.
                self.con.execute(
                    f"COPY (SELECT * FROM {table} ORDER BY {order[table]}) TO '{path}' "
                    "(FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 8192)"
                )
            _fsync_tree(target)
            previous = ""
            if os.path.islink(link):
                previous = os.path.basename(os.readlink(link))
            elif os.path.isdir(link):
                # A snapshot copied in as a plain folder: keep it as an older snapshot.
                previous = f"copied-{name}"
                os.replace(link, os.path.join(snapshots, previous))
            if os.path.lexists(temporary):
                os.unlink(temporary)
            os.symlink(os.path.join(paths.SNAPSHOTS, name), temporary)
            os.replace(temporary, link)
        except BaseException:
            # Not swapped in: readers keep the previous snapshot, and on a full disk the
            # half-written one must not hold on to the space.
            with contextlib.suppress(OSError):
                if os.path.lexists(temporary):
                    os.unlink(temporary)
            shutil.rmtree(target, ignore_errors=True)
            raise
        _fsync_dir(self.store)
        return snapshots, name, previous, target

    def _prune(self, snapshots: str, keep: set[str]) -> None:
        # The snapshot the link named before the swap stays, for readers that resolved it just
        # before; so does any snapshot a reader still pins (a later run prunes it). Anything
        # else (older snapshots, folders of killed runs) goes.
        for entry in os.listdir(snapshots):
            if entry in keep:
                continue
            path = os.path.join(snapshots, entry)
            with paths.unpinned(path) as free:
                if free:
                    shutil.rmtree(path, ignore_errors=True)

    def close(self, *, quiet: bool = False) -> None:
        """Close the database and release the lock; a store this writer created and never
        committed to is removed. `quiet`: an error is already on its way, keep it."""
        failure = None
        con = getattr(self, "con", None)
        if con is not None:
            self.con = None
            try:
                con.close()  # checkpoints the write-ahead log into the database file
            except (OSError, duckdb.Error) as exc:
                failure = exc
        if self.pristine:
            self._remove_created()
        lock_file = getattr(self, "_lock_file", None)
        if lock_file is not None and not lock_file.closed:
            with contextlib.suppress(OSError):
                fcntl.flock(lock_file, fcntl.LOCK_UN)
            with contextlib.suppress(OSError):
                lock_file.close()  # nothing left to flush: the pid was flushed when the lock was taken
        if failure is not None and not quiet:
            raise StoreError(f"store {self.store}: {store_failure(failure) or failure}") from None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, traceback):
        self.close(quiet=exc_type is not None)


def _first_missing(path: str) -> str | None:
    """The topmost folder of `path` that does not exist yet (what makedirs would create)."""
    path = os.path.abspath(path)
    missing = None
    while not os.path.lexists(path):
        missing = path
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing


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
