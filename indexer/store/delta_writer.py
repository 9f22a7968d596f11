"""An index run's writer: records in, appended Delta commits out (see `delta.py` for the tables).

Each batch of records is one commit of the images and tags tables, derived by `delta.premerge` from
the store as it is when the batch commits, so the merge rules hold against every run that committed
before it, concurrent ones included: a batch whose keys another run wrote meanwhile starts over on a
fresh snapshot. The run's `runs` row comes last. A killed run leaves whole batches or nothing (a
batch killed between its images and tags commits is whole for readers of the current tags, and its
tags files are committed by the next batch; see `delta.py`), and a
store this writer would create exists only once a batch has landed: a run that ends having landed
nothing (every record refused) removes the tables it made, as a failed one does (`leave_nothing`).

A run that fails (a full disk) after creating tables and before landing anything removes the
tables and folders it made, holding the store folder's `flock` exclusively: every writer shares
that lock from before it looks at the tables until it closes, so tables another writer found are
never removed under it. What cannot be removed is at worst a store missing a table, which readers
take for no store (`paths.is_table_store`) and the next run completes.

The merge policy lives here and in `premerge`, and nowhere else:
- a resource with a known manifest digest is one resource whatever its id: a record adopts the
  imported (real) id stored for its (registry, name, digest), and an imported record retires the
  derived id stored for it, taking its tags;
- the more exact record wins; equally exact ones with different data merge field by field
  (`model.merge_records`), so the result does not depend on the order of runs;
- a tag names one manifest per repository, and the newest claim wins;
- an imported record of an image already imported is the registry's newer document of it: the
  tags the store held for the image that it does not list are retired (`premerge`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import sys
import tempfile
import uuid
from datetime import datetime, timedelta, timezone
from functools import partial
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq


from .. import collector, timestamps
from ..errors import StoreError, first_line
from ..model import ImageRecord, merge_records
from . import deltalog, paths, schema
from .delta import KEYS, Changes, DeltaStore, RunResult, Snapshot, premerge
from .writer import _one_per_id, record_from_row, records_to_arrow, store_failure

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
# Rows of a registry's repositories under a path (parameters: registry, prefix × 3): which row
# versions to resolve, then which current rows to keep (an id's current row may be elsewhere).
_UNDER = "registry = ? AND (? = '' OR name = ? OR starts_with(name, ? || '/'))"


class DeltaWriter:
    """Writes one index run into a store of Delta tables. Many may write one store at once."""

    def __init__(self, store: str, run_id: str = "", made_folder: str | None = None):
        """`made_folder`: the outermost folder of the store that was missing when the run began, for
        a run of several processes (`index --jobs`), any of which may be the one that makes it."""
        self.store = store
        paths.refuse_old_layout(store)
        # Every commit of the run carries it, the runs row too (workers of one run share it).
        self.run_id = run_id or uuid.uuid4().hex
        self._tables = DeltaStore(store)
        local = deltalog.is_local(self._tables.store)
        self._root = deltalog.local_path(self._tables.store) if local else None
        self._lock: int | None = None  # the store folder, share-locked
        self._made_folder = made_folder  # the outermost folder this run made for the store
        self._made_tables: set[str] = set()  # the tables whose folders were missing when it created them
        if self._root is not None:
            self._refuse_files_for_folders()
        try:
            self._exists = self._found()
        except Exception as exc:  # an unreadable folder, an unreachable bucket
            self.close()  # the lock taken on the way: no caller holds this object to close it
            raise StoreError(f"cannot open store {store}: {store_failure(exc) or exc}") from None
        except BaseException:  # Ctrl-C: the lock would be held until this object is collected
            self.close()
            raise
        self._touched = False

    def _refuse_files_for_folders(self) -> None:
        """A table's folder or its log that is a file (or a device, a FIFO) is refused in words that
        say so: delta-rs said `Generic LocalFileSystem error`, and only that."""
        for table in paths.TABLES:
            folder = os.path.join(self._root, table)
            for path in (folder, os.path.join(folder, "_delta_log")):
                if os.path.lexists(path) and not os.path.isdir(path):
                    raise StoreError(f"store {self.store}: {path} is not a folder")

    def _found(self) -> bool:
        """Whether the store exists, asked holding its lock wherever its folder exists: a store
        found without the lock (made by another run between the two) could be removed under this
        run by that run's failure."""
        for _ in range(5):
            self._hold()
            exists = self._tables.exists()
            if not exists or self._lock is not None or self._root is None:
                return exists
        return exists

    @property
    def pristine(self) -> bool:
        """True while this run has committed nothing to a store that does not exist: a run that
        lands nothing then leaves nothing behind. A store another run created meanwhile (shard
        workers start together) exists, and this run's record goes into it."""
        if self._exists or self._touched:
            return False
        self._exists = self._guarded(self._found)
        return not self._exists

    def leave_nothing(self) -> bool:
        """For a run that ends without a `runs` row unless the store exists: True when it does not,
        once the tables and folders this run made for batches whose every record was refused are removed
        (`_undo_creation`). False when the store holds anything else, or another writer holds it:
        the run's record then goes into it."""
        self._undo_creation()
        return self.pristine

    def _ensure_tables(self) -> None:
        if self._exists:
            return
        try:
            if self._root is not None:
                self._guarded(self._make_root)
                self._made_tables |= {t for t in paths.TABLES if not os.path.lexists(os.path.join(self._root, t))}
            self._guarded(self._tables.create, self.run_id)
        except (StoreError, KeyboardInterrupt):
            self._undo_creation()
            raise
        self._exists = True

    def _make_root(self) -> None:
        self._refuse_dangling_link()
        for _ in range(5):  # each retry: a failed run removed the folder between making and locking it
            if self._made_folder is None:
                self._made_folder = paths.outermost_missing(self._root)
            os.makedirs(self._root, exist_ok=True)
            self._hold()
            if self._lock is not None:
                return

    def _refuse_dangling_link(self) -> None:
        """A store at or below a symlink whose target is missing is refused, in words that say so.

        makedirs cannot go through such a link (`file exists`, or `no such file or directory`
        below it), and making its target as well is what `mkdir -p` will not do either: the target
        is often a volume not mounted yet, whose mount point's folder would take the store.
        """
        if paths.dangling_link(self._root) is not None:
            raise StoreError(paths.no_store_message(self.store))

    def _hold(self) -> None:
        """Take the store folder's shared lock, if it exists, unless held: see the module's notes."""
        if self._lock is not None or self._root is None:
            return
        for _ in range(5):
            try:
                fd = os.open(self._root, os.O_RDONLY | os.O_DIRECTORY)
            except FileNotFoundError:
                return
            try:
                fcntl.flock(fd, fcntl.LOCK_SH)
                if os.path.samestat(os.fstat(fd), os.stat(self._root)):
                    self._lock = fd
                    return
            except FileNotFoundError:
                pass  # removed while this run waited for the lock: made again by the caller
            except OSError:
                # No locks on this file system: no run ever gets the exclusive lock to remove tables.
                os.close(fd)
                return
            os.close(fd)

    def _undo_creation(self) -> None:
        """After a failure: remove the tables and folders this run made, if it has landed nothing
        and no other writer holds the store. Tables another process of this run made (a worker of
        `index --jobs`, which shares the run's id) are the run's own too: whichever of its
        processes fails last, once the others let go of the store, removes them."""
        if self._touched:
            return
        if self._lock is None:
            # The folder may have been made since this writer looked, by a worker of this run (the
            # first process of `index --jobs` opens the store as its workers start).
            with contextlib.suppress(OSError):
                self._hold()
            if self._lock is None:
                return
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            # The shared lock may be lost in the attempt: taken again, this writer still holds the store.
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock, fcntl.LOCK_SH)
            return
        removed = False
        try:
            tables = self._tables
            if all(tables.made_only_by(t, self.run_id) for t in paths.TABLES):
                # images first: without it, readers see no store at once. A table of another run
                # passes only if it holds no commit: another failed first run made it and could not
                # remove it while this one held the store.
                for table in paths.TABLES:
                    with contextlib.suppress(OSError):
                        tables.remove_creation(table, self.run_id)
                self._made_tables = set()
                folder = self._root
                while self._made_folder is not None:
                    try:
                        os.rmdir(folder)  # only empty: what else is there stays
                    except OSError:
                        break
                    if folder == self._made_folder:
                        self._made_folder = None
                    folder = os.path.dirname(folder)
                self._exists = False
                removed = True
        finally:
            if removed:
                os.close(self._lock)
                self._lock = None
            else:
                with contextlib.suppress(OSError):
                    fcntl.flock(self._lock, fcntl.LOCK_SH)

    def _guarded(self, call, *args, **kwargs):
        try:
            return call(*args, **kwargs)
        except StoreError:
            raise
        except OSError as exc:
            raise StoreError(f"store {self.store}: {store_failure(exc)}") from None
        except Exception as exc:
            # A data file the log lists but that is gone (vacuumed with a short retention, deleted
            # by hand) or damaged (cut short, emptied, another file's bytes) fails every batch
            # alike: one line, not a batch halved down to one error per record.
            duckdb = sys.modules.get("duckdb")
            if duckdb is not None and isinstance(exc, duckdb.BinderException):
                # The write's SQL is fixed and a batch has the table's schema: only a data file
                # holding other columns (another table's file copied over one) fails to bind.
                other = self._file_of_other_columns()
                what = f"data file {other}" if other else "a data file"
                cause = f"{what} does not hold the table's columns ({first_line(exc)})"
                raise StoreError(f"store {self.store}: {cause}") from None
            if duckdb is None or not (isinstance(exc, duckdb.IOException) or self._names_own_file(exc)):
                raise
            raise StoreError(f"store {self.store}: {store_failure(exc) or first_line(exc)}") from None

    def _file_of_other_columns(self) -> str | None:
        """The first live data file whose columns are not its table's (footers only); None when
        none is found, or the log cannot be read."""
        try:
            for table, files in deltalog.read_store(self.store, tables=("images", "tags")).items():
                # A file written before a column was added lacks it; none lacks a key, or holds a
                # column its table never had.
                wanted, keys = set(schema.TABLES[table].names), set(KEYS[table])
                for path in files.files:
                    names = set(pq.read_schema(path).names)
                    if not keys <= names or not names <= wanted:
                        return path
        except (StoreError, OSError, ValueError, pa.ArrowException):
            return None
        return None

    def _names_own_file(self, exc: Exception) -> bool:
        """Whether DuckDB refused `exc`'s input as a file of this store (`File '…/images/part-…'
        too small to be a Parquet file`, no magic bytes, another schema): a record is never a file."""
        duckdb = sys.modules["duckdb"]
        if not isinstance(exc, duckdb.InvalidInputException):
            return False
        text = str(exc)
        return any(f"{root.rstrip(os.sep)}{os.sep}" in text for root in {self.store, os.path.abspath(self.store)})

    def _snapshot(self) -> Snapshot | None:
        return self._guarded(self._tables.snapshot) if self._exists else None

    # ---- what an index run calls

    def write(self, records: list[ImageRecord], indexed_at: datetime) -> tuple[list[str], list[str]]:
        """One commit; the ids the records were stored under (an imported id of the same manifest
        takes the place of a derived one), and the ids it retired so. StoreError when the store
        cannot be written; any other exception means something in `records` cannot be stored, and
        nothing was written."""
        if not records:
            return [], []
        records = _in_id_order(_one_per_id(records))
        stored: list[str] = []
        retired: list[str] = []

        # A record that cannot become Arrow fails in prepare, before any file is written. Every
        # attempt prepares before it commits: `stored` and `retired` hold what the one that landed did.
        def prepare(snapshot: Snapshot) -> Changes:
            adopted, retired[:] = _adopt_ids(snapshot, records)
            stored[:] = [record.id for record in adopted]
            return premerge(
                snapshot, records_to_arrow(adopted, indexed_at), retired_images=list(retired), merge=_merge_rows
            )

        def ids() -> set[str]:
            return {r.id for r in records}

        self._ensure_tables()
        with collector.paused():
            self._commit(partial(self._tables.write_changes, seed=ids), self.run_id, prepare)
        return stored, retired

    def take_notes(self) -> list[str]:
        return self._tables.take_notes()

    def record_run(self, run: dict) -> None:
        self._ensure_tables()
        self._commit(self._tables.append_run, dict(run, run_id=self.run_id))

    def _commit(self, call, *args) -> None:
        """Run `call`, a commit. One that found nothing to write (a tag settle pointing at no image
        of the store: a RunResult without versions) leaves the store still this run's own to
        remove (`leave_nothing`); a store failure removes it at once, as in `_ensure_tables`, and
        so does Ctrl-C: a store that did not exist then reads as before, as no store, not as an
        empty one (a commit that landed as Ctrl-C came keeps it, `made_only_by`)."""
        try:
            result = self._guarded(call, *args)
        except (StoreError, KeyboardInterrupt):
            self._undo_creation()
            raise
        if not isinstance(result, RunResult) or any(v is not None for v in result.versions.values()):
            self._touched = True

    # ---- for incremental registry crawls

    def repository_states(self, registry: str, prefix: str = "") -> Iterator[tuple[str, dict[str, str], set[str]]]:
        """(name, tag -> manifest digest, exact manifest digests) of each repository of `registry`
        under the path `prefix` that the store holds, in name order. Exact digests are those of
        records with exactness >= 3: a registry crawl skips only those, so a less exact record gets
        replaced.

        The rows are sorted by DuckDB into a file aside and read back a batch at a time, so a
        re-crawl holds the state of the repositories under way, not every tag of the registry."""
        snapshot = self._snapshot()
        if snapshot is None:
            return
        images = snapshot.current_images(_UNDER, ("registry", "name", "digest", "tags", "exactness"))
        sql = (
            f"SELECT name, unnest(tags) AS tag, digest, false AS exact FROM ({images}) "
            f"WHERE {_UNDER} AND digest <> '' "
            f"UNION ALL SELECT DISTINCT name, NULL, digest, true FROM ({images}) "
            f"WHERE {_UNDER} AND digest <> '' AND exactness >= 3 ORDER BY name"
        )
        with tempfile.TemporaryDirectory(prefix="imgdex-states-") as folder:
            path = os.path.join(folder, "states.parquet")
            quoted = path.replace("'", "''")
            self._guarded(
                lambda: snapshot.versions_con.execute(
                    f"COPY ({sql}) TO '{quoted}' (FORMAT parquet)", [registry, prefix, prefix, prefix] * 4
                )
            )
            name, tags, exact = None, {}, set()
            for batch in pq.ParquetFile(path).iter_batches(batch_size=8192):
                columns = [batch.column(i).to_pylist() for i in range(4)]
                for row_name, tag, digest, is_exact in zip(*columns, strict=True):
                    if row_name != name:
                        if name is not None:
                            yield name, tags, exact
                        name, tags, exact = row_name, {}, set()
                    if is_exact:
                        exact.add(digest)
                    else:
                        tags[tag] = digest
            if name is not None:
                yield name, tags, exact

    def source_tags(self, kind: str, location: str) -> list[tuple[str, str, str]]:
        """`Snapshot.source_tags` of the store as it is now (the tags an engine or a podman store
        read whole may retire: sources/vanished.py)."""
        if not self._exists:
            return []
        # Seeded as a first commit seeds it: a small store's rows then answer without DuckDB, and
        # the run's first batch finds them read.
        snapshot = self._guarded(self._tables.snapshot, seed=True)
        return self._guarded(snapshot.source_tags, kind, location)

    def settle_tags(self, moves: dict[str, list[tuple[str, str, str]]], retired: list[tuple[str, str, str]]) -> None:
        """In one commit, like `write`: point each tag of `moves` (registry -> (name, tag, digest))
        at the indexed image of (name, digest), ignoring claims whose manifest is not indexed, and
        remove the `retired` tags (registry, name, tag), whose images stay, untagged if it was
        their last. A claim and a retirement of one tag: the claim wins."""
        if not (moves or retired) or not self._exists:
            return

        def prepare(snapshot: Snapshot) -> Changes:
            pointed = []
            for registry, claims in moves.items():
                holders = _most_exact(snapshot, registry, {(name, digest) for name, _, digest in claims})
                pointed += [
                    (registry, name, tag, holders[(name, digest)])
                    for name, tag, digest in claims
                    if (name, digest) in holders
                ]
            return premerge(snapshot, None, claims=pointed, retired_tags=list(retired))

        self._commit(self._tables.write_changes, self.run_id, prepare)

    def claim_tags(self, registry: str, claims: list[tuple[str, str, str]]) -> None:
        """`settle_tags` of the tag moves of one registry."""
        self.settle_tags({registry: claims}, [])

    def claim_tags_by_id(self, claims: list[tuple[str, str, str, str]]) -> None:
        """Point each (registry, name, tag, image id) at that image: for images without a manifest
        digest (a classic docker save), which `claim_tags` cannot find. One commit, like `write`."""
        if not claims or not self._exists:
            return
        self._commit(
            self._tables.write_changes, self.run_id, lambda snapshot: premerge(snapshot, None, claims=list(claims))
        )

    def retire_tags(self, registry: str, name: str, tags: list[str]) -> None:
        """`settle_tags` of tags that vanished from one repository."""
        self.settle_tags({}, [(registry, name, tag) for tag in tags])

    def close(self) -> None:
        self._tables.close()
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _in_id_order(records: list[ImageRecord]) -> list[ImageRecord]:
    """The records by id, the order the store's files are written in (so they are written without
    reordering), unless two claim one tag: premerge gives it to the later one."""
    claimed = set()
    for record in records:
        for tag in record.tags:
            key = (record.registry, record.name, tag)
            if key in claimed:
                return records
            claimed.add(key)
    return sorted(records, key=lambda record: record.id)


def _adopt_ids(snapshot: Snapshot, records: list[ImageRecord]) -> tuple[list[ImageRecord], list[str]]:
    """Records with the imported ids the store holds for their manifests, and the ids that imported
    records replace: derived ones (their tags move to the imported id), and an earlier import's id
    of the same manifest (a registry gives an image pushed again after its deletion a new id; the
    later export is its word on it, as for its tags)."""
    digests = {r.digest for r in records if r.digest}
    if not digests:
        return records, []
    stored = _with_digests(snapshot, digests, ("id", "registry", "name", "digest", "id_origin", "tags"))
    if not stored:
        return records, []
    imported: dict[tuple, str] = {}
    earlier: dict[tuple, list[str]] = {}  # every imported id of each manifest
    derived: dict[tuple, list[tuple[str, tuple]]] = {}
    for image_id, reg, name, digest, origin, tags in stored:
        if origin == "imported":
            imported[(reg, name, digest)] = image_id
            earlier.setdefault((reg, name, digest), []).append(image_id)
        else:
            derived.setdefault((reg, name, digest), []).append((image_id, tuple(tags or ())))
    out, retired = [], []
    for record in records:
        key = (record.registry, record.name, record.digest)
        if not record.digest:
            out.append(record)
        elif record.id_origin != "imported" and key in imported and imported[key] != record.id:
            # A derived row beside the imported one (an import and a manifest source that committed
            # at once, each before the other's rows were there to see) is retired here too, so
            # the next run of either source leaves the one resource that either order gives.
            replaced = [(i, t) for i, t in derived.get(key, ()) if i != imported[key]]
            retired += [i for i, _ in replaced]
            tags = {t for _, held in replaced for t in held} | set(record.tags)
            out.append(dataclasses.replace(record, id=imported[key], id_origin="imported", tags=tuple(sorted(tags))))
        elif record.id_origin == "imported" and (key in derived or key in earlier):
            retired += [i for i in earlier.get(key, ()) if i != record.id]
            replaced = [(i, t) for i, t in derived.get(key, ()) if i != record.id]
            retired += [i for i, _ in replaced]
            tags = {t for _, held in replaced for t in held} | set(record.tags)
            out.append(dataclasses.replace(record, tags=tuple(sorted(tags))))
        else:
            out.append(record)
    return _one_per_id(out), retired


def _most_exact(snapshot: Snapshot, registry: str, wanted: set[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """The id of the most exact current image of each (name, digest) of `registry` in `wanted`."""
    if not wanted:
        return {}
    best: dict[tuple[str, str], tuple[int, str]] = {}
    for image_id, reg, name, digest, exactness in _with_digests(
        snapshot, {d for _, d in wanted}, ("id", "registry", "name", "digest", "exactness")
    ):
        key = (name, digest)
        if reg == registry and key in wanted and (key not in best or exactness > best[key][0]):
            best[key] = (exactness, image_id)
    return {key: image_id for key, (_, image_id) in best.items()}


def _with_digests(snapshot: Snapshot, digests: set[str], columns: tuple[str, ...]) -> list[tuple]:
    """`columns` of the current images that have a row version with one of `digests`."""
    if not snapshot.may_hold("digest", digests):
        return []
    if snapshot.rows is not None and (settled := snapshot.rows.with_digests(digests, columns)) is not None:
        return settled
    where = snapshot.key_filter("digest", sorted(digests), "wanted_digests")
    # The ids first, from the digest column alone: most digests of a run are new, and then no
    # wider column is read.
    found = snapshot.versions_con.execute(f"SELECT DISTINCT id FROM images_versions WHERE {where}").fetchall()
    sql = snapshot.current_of([row[0] for row in found], columns, held=True) if found else None
    return snapshot.versions_con.execute(f"SELECT {', '.join(columns)} FROM ({sql})").fetchall() if sql else []


def _merge_rows(stored: dict, incoming: dict) -> dict:
    """`premerge`'s field-by-field merge of two equally exact rows, by `model.merge_records`."""
    merged = merge_records(record_from_row(stored), record_from_row(incoming))
    row = records_to_arrow([merged], incoming["indexed_at"]).drop_columns(["created_at"]).to_pylist()[0]
    row["created_at"] = _microseconds(merged.created)
    return row


def _microseconds(created: str | None) -> datetime | None:
    # Floored, as the table stores every created_at (Delta keeps microseconds only).
    nanos = timestamps.epoch_nanos(created) if created else None
    # Out of the nanosecond range (before 1678, after 2261) is NULL, as records_to_arrow writes it.
    return None if nanos is None else _EPOCH + timedelta(microseconds=nanos // 1000)
