"""Where a store keeps its files. Imports nothing heavy: the lookup path reads this.

    STORE/images/_delta_log/…   STORE/images/part-….parquet     (see delta.py)
    STORE/tags/…                STORE/runs/…

A folder of plain Parquet files (`imgdex export`: images.parquet, tags.parquet, runs.parquet) is
read as a store too. So is a store of the first layout, until `imgdex migrate` converts it:

    STORE/imgdex.duckdb          the embedded database
    STORE/parquet -> .snapshots/ID   its Parquet snapshot
    STORE/.snapshots/ID/TABLE.parquet
    STORE/.lock

Readers of that layout pin the snapshot folder they opened with a shared `flock` on the folder,
as its writer deleted only folders it could lock exclusively.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re

from ..errors import StoreError, printable

DATABASE = "imgdex.duckdb"
SNAPSHOT_LINK = "parquet"
SNAPSHOTS = ".snapshots"
LOCK = ".lock"
TABLES = ("images", "tags", "runs")
DEFAULT_STORE = "data"
STORE_ENV = "IMGDEX_STORE"


def is_table_store(store: str) -> bool:
    """Whether `store` holds the Delta tables of this version (or is an object-storage URI, which
    can hold nothing else)."""
    if "://" in store and not store.startswith("file://"):
        return True
    store = store.removeprefix("file://")
    # Every table, each with a commit: a first run that failed (a full disk) midway through creating
    # the tables may have left some of them, which is no store yet, and the next run completes them.
    return all(_has_commits(os.path.join(store, table, "_delta_log")) for table in TABLES)


def _has_commits(log: str) -> bool:
    """Whether the Delta log folder `log` holds a commit or a checkpoint (NNNNNNNNNNNNNNNNNNNN.…)."""
    try:
        with os.scandir(log) as entries:
            return any(entry.name[:20].isdigit() and entry.name[20:21] == "." for entry in entries)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:
        # A log that is there but cannot be listed (its permissions, an I/O error) is a store that
        # cannot be read, not a folder without one: "run `imgdex index` first" would mislead.
        raise StoreError(f"cannot read the Delta log {log}: {exc.strerror or exc}") from None


def is_old_layout(store: str) -> bool:
    """Whether `store` is a store of the first layout: a DuckDB file plus Parquet snapshots."""
    if "://" in store:
        return False
    return os.path.isfile(os.path.join(store, DATABASE)) or snapshot_dir(store) is not None


def enclosing_store(folder: str) -> str | None:
    """The store, of either layout, in a folder above `folder` (resolved), or None. A store there
    owns its folders: `compact` deletes the files in its tables' folders that its tables do not list."""
    path = os.path.realpath(folder)
    while (parent := os.path.dirname(path)) != path:
        path = parent
        # A folder above that cannot be read holds no store this run could tell of.
        with contextlib.suppress(StoreError, OSError):
            if is_table_store(path) or is_old_layout(path):
                return path
    return None


def no_store_message(store: str) -> str:
    folder = local_folder(store)
    link = dangling_link(folder) if folder is not None else None
    if link is not None:
        # often a volume not mounted yet: "run imgdex index first" would send a run to the wrong disk
        where = "" if link[0] == folder else f"{link[0]} is "
        return f"store {store}: {where}a symlink to a missing folder ({link[1]})"
    return f"no image store at {store} (run `imgdex index` first, or set --store / IMGDEX_STORE)"


def dangling_link(folder: str) -> tuple[str, str] | None:
    """The symlink that `folder` is, or lies below, whose target is missing, with that target."""
    path = folder
    while not os.path.lexists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    if os.path.islink(path) and not os.path.exists(path):
        try:
            return path, os.readlink(path)
        except OSError:  # replaced since
            return None
    return None


def holds_old_database(store: str) -> bool:
    """Whether a store of the first layout (`is_old_layout`) has its database or snapshot link, as
    imgdex 0.1 wrote it; without them it is bare Parquet files, as `imgdex export` writes them."""
    return os.path.isfile(os.path.join(store, DATABASE)) or os.path.lexists(os.path.join(store, SNAPSHOT_LINK))


def refuse_old_layout(store: str) -> None:
    """StoreError when `store` is of the first layout, which only `imgdex migrate` turns into tables."""
    if is_table_store(store) or not is_old_layout(store):
        return
    if holds_old_database(store):
        raise StoreError(
            f"store {store} has the layout of imgdex 0.1 (imgdex.duckdb and Parquet snapshots); "
            f"convert it once with `imgdex migrate --store {store}`"
        )
    # Bare Parquet files are what `imgdex export` writes, for readers other than imgdex: the advice
    # to migrate must say that it replaces them.
    raise StoreError(
        f"store {store} holds plain Parquet files (an `imgdex export`, or a copied imgdex 0.1 snapshot), "
        f"which get, list and sql read and nothing writes; `imgdex migrate --store {store}` would turn "
        "them into tables, replacing the Parquet files"
    )


@contextlib.contextmanager
def gone_is_no_store(store: str):
    """A StoreError raised inside, for a store that is no longer one, as the no-store error: a first
    run that failed removes the tables it made, and may do so between a reader's look and its read."""
    try:
        yield
    except StoreError:
        if is_table_store(store):
            raise
        raise StoreError(no_store_message(store)) from None


def require_table_store(store: str) -> None:
    """StoreError unless `store` holds the Delta tables (what history and compact work on)."""
    refuse_old_layout(store)
    if not is_table_store(store):
        raise StoreError(no_store_message(store))


# What delta-rs (1.x) cannot take in the path of a local table, found by trying each character: a
# control character fails every call ("illegal character sequence"), a backslash is read as a
# folder separator and %XX as an escape (a new table is made at one path and looked for at another),
# and bytes that are not UTF-8 cannot be handed to it at all. `[`, `|`, `#`, `?`, `%` alone, blanks
# and any other UTF-8 work.
_DELTA_RS_REFUSES = re.compile(r"[\x00-\x1f\x7f\\\udc80-\udcff]|%[0-9A-Fa-f]{2}")


def delta_rs_refusal(folder: str) -> str | None:
    """Why delta-rs cannot keep tables in the local folder `folder` (absolute: the working
    directory's name counts too), or None when it can."""
    match = _DELTA_RS_REFUSES.search(folder)
    if match is None:
        return None
    found = match.group()
    if found == "\\":
        return "a backslash, which delta-rs reads as a folder separator"
    if found.startswith("%"):
        return f"{found}, which delta-rs reads as an escape"
    if "\udc80" <= found <= "\udcff":
        return "bytes that are not UTF-8, which delta-rs cannot take"
    return f"a control character ({printable(found)}), which delta-rs cannot take"


def outermost_missing(folder: str) -> str | None:
    """The outermost of `folder` and its parents that does not exist (what `mkdir -p` would make
    first), None when `folder` is there."""
    if os.path.isdir(folder):
        return None
    outermost = folder
    while not os.path.lexists(os.path.dirname(outermost)) and os.path.dirname(outermost) != outermost:
        outermost = os.path.dirname(outermost)
    return outermost


def local_folder(store: str) -> str | None:
    """The absolute folder a local store names (a `file://` URL's path decoded, as delta-rs
    decodes it), or None for object storage."""
    if "://" not in store:
        return os.path.abspath(store)
    from urllib.parse import unquote, urlsplit

    parsed = urlsplit(store)
    if parsed.scheme != "file":
        return None
    return os.path.abspath(unquote(parsed.path, errors="surrogateescape"))


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


# Each retry means an index run pruned the folder between resolving and locking it; the next
# resolution finds the newer snapshot, which that run keeps.
_PIN_TRIES = 5


def pin_snapshot(store: str) -> tuple[str, int | None] | None:
    """The last completed snapshot's folder, as `snapshot_dir`, and a descriptor holding it.

    While the descriptor is open, no index run deletes the folder, so a long reader finishes on
    the snapshot it started with. Pinning is best effort: where the folder cannot be opened or
    locked (some network filesystems), the descriptor is None and the folder is read unpinned.
    """
    for _ in range(_PIN_TRIES):
        snapshot = snapshot_dir(store)
        if snapshot is None:
            return None
        try:
            fd = os.open(snapshot, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            continue
        except OSError:
            return snapshot, None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        except OSError:
            os.close(fd)
            return snapshot, None
        if os.path.isfile(table_file(snapshot, "images")):
            return snapshot, fd
        os.close(fd)
    snapshot = snapshot_dir(store)
    return None if snapshot is None else (snapshot, None)


@contextlib.contextmanager
def unpinned(directory: str):
    """Yields True, holding `directory` so that no reader can pin it, when no reader has; else False."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        yield True  # not a folder (or gone): nothing can pin it
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        free = True
    except BlockingIOError:
        free = False
    except OSError:
        free = True  # no locks on this filesystem: readers cannot pin either
    try:
        yield free
    finally:
        os.close(fd)
