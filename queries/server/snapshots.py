"""The snapshot a server answers from, and the switch to the next one after an index run.

Measured on 100,000 images: a get by id costs ~6 ms through a view over the Parquet file (DuckDB
decodes a whole row group) and ~1 ms from an in-memory table (a scan, and list columns fetched a
vector at a time; DuckDB does not use an ART index for it). So each completed snapshot is loaded
once into its own in-memory DuckDB database (the columns responses, filters and orders read, not
the raw manifests, configs and history), which lists sort on (see `pages`); and the rows
`lookup.by_id` would return are computed once, by the same SELECT, into Arrow columns with a dict
from id to row: a get is then ~15 us, and the rows of a list page one take per column. The price
is memory: a server holding 100,000 images has ~470 MB resident (~1 KB an image of it the Arrow
columns), ~15 MB more for each order a list asked for, and twice that for the moment of a swap.

Every request runs on one snapshot from start to end: a response never mixes two versions. A
watcher notices a new version (a commit to the images table, which carries every image's tags;
in a bare Parquet copy or an old-layout store, the files replaced), loads it beside the current one
and swaps it in; the old database is closed when its last request finishes. Once loaded, nothing
reads the version's files again, so compaction and vacuum may remove them freely.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import threading
import time
from typing import Callable

import duckdb
import pyarrow

from indexer.errors import RefusedStore, StoreError
from indexer.store import duck, paths

from .. import engine, render

# Columns no response, filter or order reads, and by far the largest: left on disk.
_NOT_LOADED = frozenset(
    {
        "manifest_raw",
        "config_raw",
        "history",
        "labels",
        "env",
        "entrypoint",
        "cmd",
        "diff_ids",
        "chain_ids",
        "chain_id",
    }
)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def settle() -> None:
    """Keep what was just loaded out of the cyclic collector's way.

    A snapshot's objects (and an order's, see `pages`) live until the next swap, but every full
    collection, which the garbage of requests triggers now and then, walks them all again: on
    100,000 images that was a 30-80 ms pause every ~200 lists. Frozen, they are still freed by
    reference counting when their snapshot goes; a full collection then takes 0.1 ms.
    """
    gc.freeze()


def snapshot_key(store: str) -> tuple | None:
    """What identifies the store's current version, cheaply: one listing of the images table's log
    (the images table carries every image's tags, so it alone decides what a response holds), or,
    in the old layout, one readlink and one stat."""
    if paths.is_table_store(store):
        from indexer.store import deltalog

        version = deltalog.latest_version(deltalog.table_location(store, "images"), "images")
        return None if version is None else (store, "images", version)
    directory = paths.snapshot_dir(store)
    if directory is None:
        return None
    try:
        st = os.stat(paths.table_file(directory, "images"))
    except FileNotFoundError:
        return None
    return (directory, st.st_ino, st.st_mtime_ns, st.st_size)


def _run_recorded(key: tuple) -> bool:
    """Whether the store of a snapshot `key` holds a `runs` row, which a run writes last."""
    if key[1:2] != ("images",):
        return True  # the old layout wrote a store whole, at the end of its run
    from indexer.store import deltalog

    try:
        return bool(deltalog.read_table(deltalog.table_location(key[0], "runs"), table="runs").files)
    except StoreError:
        return False


class NotServing(StoreError):
    """No snapshot to answer from, in words for the API's clients: unlike other store failures,
    whose messages name the store's files (the operator's to know), it is answered as it is."""


class Snapshot:
    """One index run's images in memory, with a DuckDB cursor per thread that reads it."""

    def __init__(
        self, key: tuple, con: duckdb.DuckDBPyConnection, images: int, seconds: float, columns: list, index: dict
    ):
        self.key = key
        self.path = key[0]
        self.images = images
        self.load_seconds = seconds
        self._con = con
        self._columns = columns
        self._index = index
        self._local = threading.local()
        self._cursors: dict[threading.Thread, duckdb.DuckDBPyConnection] = {}
        self._lock = threading.Lock()
        self._users = 0
        self._retired = False
        self._closed = False
        self._derived: dict = {}
        self._derive_lock = threading.Lock()

    @classmethod
    def load(cls, key: tuple) -> "Snapshot":
        started = time.perf_counter()
        con = duck.connect(":memory:")
        try:
            if key[1:2] == ("images",):
                from indexer.store import deltalog

                files = deltalog.read_table(
                    deltalog.table_location(key[0], "images"), table="images", version=key[2], con=con
                )
                source = f"({deltalog.resolved_sql(files)})"
            else:
                source = f"read_parquet({_quote(paths.table_file(key[0], 'images'))}, hive_partitioning = false)"
            columns = [row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()]
            keep = ", ".join('"' + c.replace('"', '""') + '"' for c in columns if c not in _NOT_LOADED)
            con.execute(f"CREATE TABLE images AS SELECT {keep} FROM {source}")
            images = con.execute("SELECT count(*) FROM images").fetchall()[0][0]
            table = con.sql(f"SELECT {render.SELECT} FROM images").to_arrow_table()
            columns = [column.combine_chunks() for column in table.columns]
            index = {image_id: row for row, image_id in enumerate(columns[0].to_pylist())}
            # Requests bind user input as parameters only; still, a served database reads no
            # file and cannot be reconfigured, with the same settings as every other reader.
            con.execute(engine.lock_settings([]))
        except duckdb.Error as exc:
            con.close()
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise StoreError(f"cannot load snapshot {key[0]}: {first}") from None
        except StoreError:
            con.close()
            raise
        return cls(key, con, images, time.perf_counter() - started, columns, index)

    def image_row(self, image_id: str) -> tuple | None:
        """What `lookup.by_id` returns for `image_id` on this snapshot."""
        row = self._index.get(image_id)
        if row is None:
            return None
        return tuple(column[row].as_py() for column in self._columns)

    def image_rows(self, image_ids: list[str]) -> list[tuple]:
        """`image_row` of each of `image_ids`, all indexed: one take per column, not one per value."""
        if not image_ids:
            return []
        positions = pyarrow.array([self._index[image_id] for image_id in image_ids], pyarrow.int64())
        return list(zip(*(column.take(positions).to_pylist() for column in self._columns), strict=True))

    def cursor(self):
        """This thread's cursor on the snapshot: a DuckDB connection is not shared between threads."""
        cur = getattr(self._local, "cursor", None)
        if cur is None:
            with self._lock:
                if self._closed:
                    raise StoreError("snapshot was closed")
                # The REST server runs a thread per connection: a cursor is closed once its thread
                # has ended, or every connection would keep one (~10 KB) until the snapshot retires.
                for thread in [thread for thread in self._cursors if not thread.is_alive()]:
                    with contextlib.suppress(duckdb.Error):
                        self._cursors.pop(thread).close()
                cur = self._con.cursor()
                self._cursors[threading.current_thread()] = cur
            self._local.cursor = cur
        return cur

    def derived(self, name: str, build: Callable[["Snapshot"], object]):
        """A value computed once per snapshot (catalogs of repositories and registries)."""
        value = self._derived.get(name)
        if value is None:
            with self._derive_lock:
                value = self._derived.get(name)
                if value is None:
                    value = build(self)
                    self._derived[name] = value
        return value

    def _enter(self) -> bool:
        with self._lock:
            if self._retired:
                return False
            self._users += 1
            return True

    def _leave(self) -> None:
        with self._lock:
            self._users -= 1
            close = self._retired and self._users == 0
        if close:
            self._close()

    def retire(self) -> None:
        """No new request starts on this snapshot; it closes once the running ones finish."""
        with self._lock:
            self._retired = True
            close = self._users == 0
        if close:
            self._close()

    def _close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            cursors, self._cursors = list(self._cursors.values()), {}
        for cur in cursors:
            with contextlib.suppress(duckdb.Error):
                cur.close()
        with contextlib.suppress(duckdb.Error):
            self._con.close()


class SnapshotSource:
    """The newest snapshot of a store, checked every `poll` seconds by a background thread."""

    def __init__(self, store: str, poll: float = 0.5, log: Callable[[str], None] | None = None):
        self.store = store
        self.poll = poll
        self._log = log or (lambda text: print(f"imgdex: {text}", file=sys.stderr, flush=True))
        self._current: Snapshot | None = None
        self._swap = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_error = ""
        self._listeners: list[Callable[[Snapshot | None], None]] = []
        self.generation = 0

    def subscribe(self, listener: Callable[[Snapshot | None], None]) -> None:
        """Call `listener` with each snapshot swapped in, and with None once none is served."""
        self._listeners.append(listener)

    def _notify(self, snapshot: Snapshot | None) -> None:
        for listener in self._listeners:
            try:
                listener(snapshot)
            except Exception as exc:  # the swap is done: a listener's failure must not undo the poll
                self._log(f"snapshot listener failed: {exc}")

    @property
    def current(self) -> Snapshot | None:
        return self._current

    def refresh(self, refuse_for_good: bool = False) -> bool:
        """Load the store's snapshot if it is not the one served; True when a new one was swapped in.

        `refuse_for_good`: a store this imgdex refuses for what it is (written by a newer imgdex,
        or using a Delta feature this reader does not read) raises RefusedStore rather than being
        noted.
        """
        try:
            key = snapshot_key(self.store)
            current = self._current
            if key is None or (current is not None and current.key == key):
                return False
            fresh = Snapshot.load(key)
        except StoreError as exc:
            if refuse_for_good and isinstance(exc, RefusedStore):
                raise
            # Most often an index run pruned the folder between the stat and the load; the next
            # poll sees the newer snapshot. Or a log that cannot be read (its permissions): the
            # snapshot served stays. Said once, not every poll.
            if str(exc) != self._last_error:
                self._last_error = str(exc)
                self._log(str(exc))
            return False
        self._last_error = ""
        if fresh.images == 0 and not _run_recorded(key):
            # Tables a first run has only made so far (it may yet fail and remove them): no index
            # run has completed, and calls answer UNAVAILABLE as before the tables existed.
            fresh.retire()
            return False
        settle()
        with self._swap:
            old, self._current = self._current, fresh
            self.generation += 1
        if old is not None:
            old.retire()
        self._notify(fresh)
        return True

    def start(self) -> None:
        """Loads the store's snapshot, then watches for the next. RefusedStore when the store is
        one this imgdex refuses (written by a newer imgdex, or with a Delta feature this reader
        does not read): no later poll could serve it, and every call would answer that no index
        run has completed, for ever."""
        self.refresh(refuse_for_good=True)
        self._thread = threading.Thread(target=self._watch, name="imgdex-snapshot-watch", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(self.poll):
            try:
                self.refresh()
            except Exception as exc:  # the watcher must outlive any one bad poll
                self._log(f"snapshot check failed: {exc}")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._swap:
            old, self._current = self._current, None
        if old is not None:
            old.retire()
        self._notify(None)

    @contextlib.contextmanager
    def use(self):
        """The snapshot a request runs on, from its start to its end."""
        for _ in range(3):
            snapshot = self._current
            if snapshot is None:
                raise NotServing("no index run has completed yet")
            if snapshot._enter():
                break
        else:  # swapped three times while starting: only under a storm of index runs
            raise NotServing("the index is changing too fast to read")
        try:
            yield snapshot
        finally:
            snapshot._leave()
