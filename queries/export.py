"""The store's current rows as Parquet files that Spark 4 (local mode, no extra jars) reads as they are.

`export_store(con, directory)` writes DIRECTORY/images.parquet, tags.parquet and runs.parquet from the
views `images`, `tags` and `runs` of `con`, and returns the row count of each. `con` is either

- a `queries.engine.Reader`, which is how the CLI reads a store (`export_from_store(store, directory)`
  opens one, exports and closes it): the export sees exactly the current rows that `get`, `list`
  and `sql` see, whatever the store's layout; or
- a plain `duckdb` connection on which those views exist (tests, notebooks).

pyarrow writes the files, not DuckDB's `COPY ... TO`: the Reader's DuckDB may open no file but the
store's own (that lock is what makes every read path safe), so the export must not need it.

An export is all or nothing. Each file is written under a temporary name in the target folder, and
only once every table is written are they renamed over the old ones, one by one: each path names a
whole file, the previous one or the new one, never a partial one (a reader that opened the old file
keeps reading it). Before the first rename every old file gets a second name, a hard link, so that
when a later rename fails the files already replaced are put back: an export that fails (a full disk,
a store that cannot be read, a folder where a file should go) leaves the previous export as it was,
not new images beside old tags, and removes its temporary files. Where the file system or its owner
refuses a hard link, the old file is renamed aside just before its replacement instead, and for that
instant its path names no file. The renames are not one step, though: a reader that opens
images.parquet and then tags.parquet while an export finishes, or is rolled back, may get files of
two exports, and a process killed between two renames leaves them so until the next export. A killed
export also leaves its temporary files (`.TABLE.parquet.*.tmp`, and `.TABLE.parquet.*.old`, the old
files' second names). Only the files named TABLE.parquet and the export's own temporary files are
ever written or removed; other files in the folder are left alone.

The target folder lies outside the store (`check_outside_store`): `compact` deletes every file in a
table's folder that the table does not list, exports included, and the store's folder and the
folders under it are the store's alone. A store inside the target folder is left alone, as any other
file there: an export writes no name but TABLE.parquet and its temporary files, and replaces no
folder.

Rows reach pyarrow in record batches from a relation (`con.sql(...)`, or the Reader's
`arrow_batches`), which streams: `con.execute(...)` would first materialise the whole result inside
DuckDB (measured with DuckDB 2.0: 1.9 GiB of peak memory against 0.3 GiB for the same 1.5 GB of rows).

Spark 4 refuses Parquet's TIMESTAMP(NANOS) ("Illegal Parquet type"), and reads a timestamp without a
time zone as TIMESTAMP_NTZ. The store keeps every time in UTC, so each top-level timestamp column
that is not already TIMESTAMPTZ in microseconds (TIMESTAMP_NS as images.created_at is in the old
layout, and any naive TIMESTAMP, TIMESTAMP_MS or TIMESTAMP_S) is written as TIMESTAMPTZ in
microseconds, floored, and read as UTC; Spark sees TimestampType. The column types come from
`DESCRIBE`, not from a list of names. The exact nanosecond text stays in `created` (a string).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
from collections.abc import Iterable

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from indexer.errors import QueryError, first_line, printable
from queries.api_rules import shown

TABLES = ("images", "tags", "runs")

# Rows per record batch, and so per Parquet row group. images rows carry the raw manifest and
# config, a few KiB each, so this keeps a batch in the tens of MiB.
BATCH_ROWS = 8192

_TIMESTAMP = re.compile(r"TIMESTAMP(_NS|_MS|_S|TZ|TZ_NS)?( WITH TIME ZONE)?")
_SPARK_READY = {"TIMESTAMP WITH TIME ZONE", "TIMESTAMPTZ"}


def export_store(con, directory: str, tables: Iterable[str] = TABLES, *, batch_rows: int = BATCH_ROWS) -> dict:
    """Write DIRECTORY/TABLE.parquet for each of `tables`; {table: rows written}.

    The target folder is created when missing; a target that exists and is not a folder is a
    QueryError, and so is a file that cannot be written. Errors of the Reader itself (a store that
    cannot be read) come through as they are.
    """
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise QueryError(f"cannot export to {printable(directory)}: it exists and is not a directory")
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise QueryError(f"cannot create {printable(directory)}: {exc.strerror or exc}") from None
    tables = tuple(tables)
    targets = {table: os.path.join(directory, f"{table}.parquet") for table in tables}
    # Before reading the store, which may take minutes: a folder in the way is known now.
    for path in targets.values():
        _check_replaceable(path)
    counts, written = {}, []
    try:
        for table in tables:
            counts[table], temporary = _export_table(con, table, targets[table], batch_rows)
            written.append((temporary, targets[table]))
        _swap_in(written)
    except BaseException:
        for temporary, _ in written:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
        raise
    _fsync_dir(directory)
    return counts


def export_from_store(store: str, directory: str, *, as_of=None, tables: Iterable[str] = TABLES) -> dict:
    """What an `imgdex export DIR [--store STORE] [--as-of V]` command calls: the store's current rows
    (or those of version `as_of`, as `engine.connect` takes it), read through a locked Reader."""
    from queries import engine

    check_outside_store(directory, store)
    tables = tuple(tables)
    reader = engine.connect(store, tables=tables, as_of=as_of)
    try:
        return export_store(reader, directory, tables)
    finally:
        reader.close()


def check_outside_store(directory: str, store: str) -> None:
    """A QueryError when `directory` is the folder of `store` or lies inside it, where `compact` would
    delete the exported files (see the module's docstring); checked before anything is written."""
    found = _store_folder_of(directory, store)
    if found is None:
        return
    where = "is the store" if found == os.path.realpath(directory) else f"lies inside the store {shown(store)}"
    raise QueryError(
        f"{shown(directory)} {where}, whose folders are its own (compact deletes the files its tables do not"
        " list): export to a folder outside it"
    )


def _store_folder_of(directory: str, store: str) -> str | None:
    """`directory` or the folder above it that is `store`, resolved; None when it lies outside.

    Both are compared as the kernel will find them: symbolic links and `..` followed
    (os.path.realpath, as the rest of imgdex resolves paths), and each folder on the way up also
    compared with the store by device and inode, which finds a store reached by another name (a
    bind mount, a case-insensitive file system)."""
    if "://" in store and not store.startswith("file://"):
        return None  # object storage: no local folder lies inside it
    root = os.path.realpath(store.removeprefix("file://"))
    try:
        root_stat = os.stat(root)
    except OSError:
        root_stat = None  # no store there: only its path can match
    folder = os.path.realpath(directory)
    while True:
        if folder == root:
            return folder
        if root_stat is not None:
            with contextlib.suppress(OSError):  # a folder the export would make
                if os.path.samestat(os.stat(folder), root_stat):
                    return folder
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent


def select_sql(con, table: str) -> str:
    """The SELECT that reads `table` in Spark-readable types (see the module's docstring)."""
    columns = con.execute(f"DESCRIBE SELECT * FROM {_ident(table)}").fetchall()
    return f"SELECT {', '.join(_column(name, dtype) for name, dtype, *_ in columns)} FROM {_ident(table)}"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _column(name: str, dtype: str) -> str:
    column = _ident(name)
    if not _TIMESTAMP.fullmatch(dtype) or dtype in _SPARK_READY:
        return column
    # Not CAST: CAST(x AS TIMESTAMP) rounds nanoseconds to the nearest microsecond, and
    # CAST(x AS TIMESTAMPTZ) reads a naive value in the session's TimeZone, which a Reader cannot
    # set (its settings are locked). epoch_us floors, and timezone('UTC', ...) reads the value as UTC.
    if "TZ" in dtype or "WITH TIME ZONE" in dtype:
        # TIMESTAMPTZ_NS has no epoch_us; floor its nanoseconds by hand (DuckDB's // truncates).
        ns = f"epoch_ns({column})"
        micros = f"({ns} // 1000 - CASE WHEN {ns} % 1000 < 0 THEN 1 ELSE 0 END)"
    else:
        micros = f"epoch_us({column})"
    return f"timezone('UTC', make_timestamp({micros})) AS {column}"


def _export_table(con, table: str, path: str, batch_rows: int) -> tuple[int, str]:
    """Rows written and the temporary file beside `path` that holds them."""
    try:
        batches = _batches(con, select_sql(con, table), batch_rows)
        schema = _spark_schema(table, batches.schema)
        return _write_temporary(path, schema, batches)
    except duckdb.Error as exc:
        raise QueryError(f"cannot export {table}: {_first_line(exc)}") from None
    except pa.ArrowException as exc:
        raise QueryError(f"cannot export {table}: {_first_line(exc)}") from None
    except OSError as exc:
        raise QueryError(f"cannot write {printable(path)}: {exc.strerror or _first_line(exc)}") from None


def _batches(con, sql: str, batch_rows: int) -> pa.RecordBatchReader:
    if isinstance(con, duckdb.DuckDBPyConnection):
        return con.sql(sql).to_arrow_reader(batch_rows)
    return con.arrow_batches(sql, batch_rows)


def _spark_schema(table: str, schema: pa.Schema) -> pa.Schema:
    """`schema` with every time zone named UTC (DuckDB names its session's), checked for Spark."""
    fields = []
    for field in schema:
        if pa.types.is_timestamp(field.type) and field.type.tz is not None:
            field = field.with_type(pa.timestamp(field.type.unit, tz="UTC"))
        if _has_nanoseconds(field.type):
            raise QueryError(
                f"cannot export {table}: column {printable(field.name)} holds nanosecond timestamps"
                " (in a nested type, where they are not converted), which Spark cannot read"
            )
        fields.append(field)
    return pa.schema(fields, metadata=schema.metadata)


def _has_nanoseconds(dtype: pa.DataType) -> bool:
    if pa.types.is_timestamp(dtype):
        return dtype.unit == "ns"
    if pa.types.is_map(dtype):
        return _has_nanoseconds(dtype.key_type) or _has_nanoseconds(dtype.item_type)
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype) or pa.types.is_fixed_size_list(dtype):
        return _has_nanoseconds(dtype.value_type)
    if pa.types.is_struct(dtype):
        return any(_has_nanoseconds(dtype.field(i).type) for i in range(dtype.num_fields))
    return False


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    if batch.schema.equals(schema):
        return batch
    # Only time zone names differ, so each cast relabels the column without copying it.
    columns = [
        column if column.type == field.type else column.cast(field.type) for column, field in zip(batch.columns, schema)
    ]
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def _write_temporary(path: str, schema: pa.Schema, batches: Iterable[pa.RecordBatch]) -> tuple[int, str]:
    folder, name = os.path.split(path)
    temporary = os.path.join(folder, f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    # O_EXCL: never write through a name someone else made; 0o666 under the umask, like any file.
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    rows = 0
    try:
        with os.fdopen(fd, "wb") as sink:
            # Spark reads the standard three-level list layout; pyarrow's default since 13, said here.
            with pq.ParquetWriter(sink, schema, compression="zstd", use_compliant_nested_type=True) as writer:
                for batch in batches:
                    writer.write_batch(_conform(batch, schema))
                    rows += batch.num_rows
            sink.flush()
            os.fsync(sink.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return rows, temporary


def _check_replaceable(path: str) -> None:
    """A QueryError when `path` is a folder: a rename of a file onto it fails, and it is not ours to remove."""
    try:
        is_folder = stat.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise _cannot_write(path, exc) from None
    if is_folder:
        raise _cannot_write(path, OSError(errno.EISDIR, os.strerror(errno.EISDIR)))


class _Old:
    """The previous file at `path`, kept under the second name `aside` until the export is whole."""

    def __init__(self, path: str):
        self.path = path
        folder, name = os.path.split(path)
        self.aside = os.path.join(folder, f".{name}.{os.getpid()}.{secrets.token_hex(4)}.old")
        # Linked: `aside` names the old file while `path` still does; moved: only `aside` does.
        self.linked = self.moved = self.kept = False

    def keep(self) -> None:
        _check_replaceable(self.path)
        try:
            # Not following a symbolic link: the link itself is what the rename replaces.
            os.link(self.path, self.aside, follow_symlinks=False)
        except OSError:
            # Hard links refused (a file system without them, or an old file of another user under
            # protected_hardlinks): the old file is renamed aside just before its replacement instead.
            return
        self.linked = True

    def move_aside(self) -> None:
        if self.linked:
            return
        try:
            os.rename(self.path, self.aside)
        except OSError as exc:
            raise _cannot_write(self.path, exc) from None
        self.moved = True

    def restore(self) -> None:
        os.replace(self.aside, self.path)
        self.linked = self.moved = False

    def discard(self) -> None:
        if self.linked or self.moved:
            with contextlib.suppress(OSError):
                os.unlink(self.aside)


def _swap_in(written: list[tuple[str, str]]) -> None:
    """Rename each temporary file over its path; when one rename fails, put every old file back."""
    olds = {path: _Old(path) for _, path in written if os.path.lexists(path)}
    replaced = []
    try:
        for old in olds.values():
            old.keep()
        for temporary, path in written:
            if path in olds:
                olds[path].move_aside()
            try:
                os.replace(temporary, path)
            except OSError as exc:
                raise _cannot_write(path, exc) from None
            replaced.append(path)
    except BaseException as exc:
        lost = _roll_back(replaced, olds)
        if lost and isinstance(exc, QueryError):
            raise QueryError(f"{exc}; {lost}") from None
        raise
    for old in olds.values():
        old.discard()


def _roll_back(replaced: list[str], olds: dict) -> str:
    """Put back the old file of each path replaced or moved aside; what could not be, in words."""
    lost = []
    for path in [*replaced, *(path for path, old in olds.items() if old.moved and path not in replaced)]:
        old = olds.get(path)
        try:
            if old is None:
                os.unlink(path)  # no file was here before this export
            else:
                old.restore()
        except OSError as exc:
            reason = exc.strerror or _first_line(exc)
            name = printable(os.path.basename(path))
            if old is None:
                lost.append(f"the new {name} could not be removed: {reason}")
            else:
                # The only copy of the old file now: never discarded.
                old.kept = True
                lost.append(
                    f"the previous {name} could not be put back (it is kept as {printable(old.aside)}): {reason}"
                )
    for old in olds.values():
        if not old.kept:
            old.discard()
    return "; ".join(lost)


def _cannot_write(path: str, exc: OSError) -> QueryError:
    return QueryError(f"cannot write {printable(path)}: {exc.strerror or _first_line(exc)}")


def _fsync_dir(folder: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder or ".", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _first_line(exc: BaseException) -> str:
    return printable(first_line(exc))
