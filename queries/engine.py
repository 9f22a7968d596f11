"""A locked, read-only DuckDB connection over one version of a store.

A store of Delta tables is read at its newest version (or the one `--as-of` names) through views
over the data files its logs list (`deltalog`), so readers never wait for or block index runs and
see one version from start to end. A folder of plain Parquet files (`imgdex export`) and a store
of the first layout (its snapshot, else its database file) are read as they are. Never imports
pyarrow or deltalake.

Read-only is enforced by DuckDB, not by looking at SQL text: once the views exist, DuckDB may
open no file but the store's own (no COPY TO, ATTACH, read_csv or read_text of other files,
INSTALL, LOAD from disk), the configuration is locked so that no statement can undo this, and
every statement runs in a read-only transaction, so not even the in-memory catalog is written.
What that still lets a user's statement do (CREATE a temporary object, ATTACH an in-memory
database) is refused by the statement's type, as DuckDB parses it, before any statement runs;
an EXPLAIN by the type of the statement it explains, which EXPLAIN ANALYZE runs.
A reader of the first layout also pins its snapshot (see `paths.pin_snapshot`).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import weakref

import duckdb

from indexer.errors import QueryError, StoreError, first_line
from indexer.store import duck, paths
from indexer.store.views import VIEWS

# A copy of the Parquet files without tags.parquet still answers every lookup: the images
# table carries each image's tags, which is what the tags table is derived from.
_TAGS_FROM_IMAGES = "SELECT registry, name, unnest(tags) AS tag, id AS image_id FROM images"
# The ids of a batch lookup: one VARCHAR[] parameter.
_IDS = "(SELECT unnest(?::VARCHAR[]))"


def _quote(path: str) -> str:
    return "'" + path.replace("'", "''") + "'"


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# Statements refused by their type, before any statement runs.
_REFUSED = {
    # A read-only transaction still lets a statement create temporary objects; their memory
    # would outlast the statement's, and every one is dropped before the next statement.
    duckdb.StatementType.CREATE: "CREATE cannot run, not even for a temporary object",
    # Attaching a file is refused with every other file, but an in-memory database (':memory:' or
    # '') opens none, and DuckDB attaches it: a database of the user's own beside the store's, which
    # read-only promises there is not. DETACH goes with it: there is nothing a user may detach.
    duckdb.StatementType.ATTACH: "ATTACH cannot run, not even for an in-memory database",
    duckdb.StatementType.DETACH: "DETACH cannot run",
    # The settings are locked already, but SET VARIABLE is no setting: its value (a 100 MB repeat())
    # is held past the statement, uncounted by DuckDB's memory limit, as a temporary table's rows
    # would be. USE and SET search_path, which the lock lets through, choose among what a store has
    # only one of.
    duckdb.StatementType.SET: "SET cannot run: the settings are locked, and a variable would outlast its statement",
}


def _explained(query: str) -> list[str]:
    """The texts that may be the statement `query`, an EXPLAIN statement, explains, as DuckDB's
    own tokenizer splits it (comments and quoted text are read as DuckDB reads them). What follows
    EXPLAIN is ANALYZE (ANALYSE) or a list of options in parentheses, then the statement; but a
    parenthesis may also open the statement itself (`EXPLAIN (SELECT 1) UNION (SELECT 2)`), so
    both readings are given, and the caller keeps those that parse."""
    tokens = duckdb.tokenize(query)
    ends = [position for position, _ in tokens[1:]] + [len(query)]
    words = [
        (position, kind, query[position:end].strip())
        for (position, kind), end in zip(tokens, ends, strict=True)
        if kind != duckdb.token_type.comment
    ]
    rest = words[1:]  # the first word is EXPLAIN
    if not rest:
        return []
    _, kind, text = rest[0]
    if kind == duckdb.token_type.keyword and text.upper() in ("ANALYZE", "ANALYSE"):
        return [query[rest[1][0] :]] if len(rest) > 1 else []
    readings = [query[rest[0][0] :]]
    if text.startswith("("):
        depth = 0
        for index, (_, kind, text) in enumerate(rest):
            if kind == duckdb.token_type.operator:
                depth += text.count("(") - text.count(")")
            if depth <= 0:
                readings.append(query[rest[index + 1][0] :] if index + 1 < len(rest) else "")
                break
    return readings


def _called(query: str) -> str:
    """`CALL f(…)`, the text of a CALL statement, as the query `FROM f(…)`, which has its rows."""
    words = [position for position, kind in duckdb.tokenize(query) if kind != duckdb.token_type.comment]
    return "FROM " + query[words[1] :] if len(words) > 1 else query


class Interrupted(QueryError):
    """A query stopped by `Reader.interrupt`: its caller knows why, and words it."""


class Result:
    """A query's rows. DuckDB streams them, so reading them can fail too; such failures are library errors."""

    __slots__ = ("_reader", "_cursor")

    def __init__(self, reader: "Reader", cursor):
        self._reader = reader
        self._cursor = cursor

    @property
    def description(self):
        return self._cursor.description

    def fetchone(self):
        return self._fetch(self._cursor.fetchone)

    def fetchall(self):
        return self._fetch(self._cursor.fetchall)

    def fetchmany(self, size: int):
        return self._fetch(lambda: self._cursor.fetchmany(size))

    def _fetch(self, fetch):
        try:
            return self._reader._guard(fetch)
        except OverflowError as exc:
            # A value DuckDB holds and Python cannot (an interval beyond timedelta's range).
            raise QueryError(f"a value of the result cannot be read in Python: {exc}") from None


# Statements whose rows `Reader.run` reads through a select list over a relation of them.
_SHOWN_AS_RUN = (duckdb.StatementType.EXECUTE, duckdb.StatementType.MULTI)
# The name that select list reads those rows under; the relation's own, for that query alone.
_ROWS = "imgdex_rows"


class _Rows:
    """A relation's rows, read once, through the cursor methods `Result` calls."""

    __slots__ = ("description", "_rows")

    def __init__(self, relation):
        self.description = None if relation is None else relation.description
        self._rows = iter(()) if relation is None else relation.iter_rows()

    def fetchone(self):
        return next(self._rows, None)

    def fetchall(self):
        return list(self._rows)

    def fetchmany(self, size: int):
        return list(itertools.islice(self._rows, size))


class Reader:
    """One store, opened read-only by `connect`; every read path (get, list, sql) uses one.

    `execute` runs the library's own parameterised SQL; `run` runs SQL from a user, statement by
    statement, so that a COMMIT in it cannot leave the read-only transaction.
    """

    def __init__(
        self,
        con,
        store: str,
        files: list[str],
        pin: int | None,
        missing: tuple[str, ...] = (),
        images_parts=None,
    ):
        self._con = con
        self.store = store
        self._files = files
        self._missing = missing
        # For a compacted Delta table: the parts of the images view (`deltalog.Compacted`), which
        # a list queries apart to let DuckDB prune each by its statistics; None otherwise.
        self.images_parts = images_parts
        # The current images rows of the ids given as one VARCHAR[] parameter: for an uncompacted
        # Delta table resolved over those ids' rows alone, elsewhere picked out of the images view.
        self.images_of_ids = f"SELECT * FROM images WHERE id IN {_IDS}"
        self._outside = False  # a user's COMMIT may have ended the read-only transaction
        self._unpin = weakref.finalize(self, os.close, pin) if pin is not None else None

    def execute(self, sql: str, params=None) -> Result:
        if self._outside:
            self._guard(self._begin)
            self._outside = False
        return Result(self, self._guard(self._con.execute, sql, params))

    def arrow_batches(self, sql: str, batch_rows: int):
        """The rows of the library's own `sql` as a pyarrow RecordBatchReader that streams them (for
        exports: a large table never sits whole in memory). Read errors surface as duckdb errors."""
        if self._outside:
            self._guard(self._begin)
            self._outside = False
        return self._guard(lambda: self._con.sql(sql).to_arrow_reader(batch_rows))

    def run(self, sql: str, before=None, shown=None) -> Result | None:
        """Every statement of `sql`; the result of the last one, or None when there is none.
        `before` is called ahead of each statement (to stop between them). `shown`, given the
        DuckDB types of the last statement's columns, returns the select list over them (`#1`,
        `CAST(#2 AS VARCHAR)`) that its rows are read through, or None to read them as they are."""
        try:
            sql.encode("utf-8")
        except UnicodeEncodeError:  # bytes of an argument that were not UTF-8 (os.fsdecode keeps them)
            raise QueryError("the query is not UTF-8 text") from None
        statements = self._guard(self._con.extract_statements, sql)
        for statement in statements:
            refused = self._refused(statement)
            if refused is not None:
                raise QueryError(f"statements run read-only: {refused}")
        cursor = None
        for index, statement in enumerate(statements):
            if before is not None:
                before()
            self._guard(self._begin)
            self._outside = True
            if shown is not None and index == len(statements) - 1:
                wrapped = self._shown(statement, shown)
                if wrapped is None and statement.type in _SHOWN_AS_RUN:
                    return Result(self, self._guard(self._run_shown, statement.query, shown))
                statement = wrapped or statement
            cursor = self._guard(self._con.execute, statement)
        return None if cursor is None else Result(self, cursor)

    def _run_shown(self, query: str, shown) -> _Rows:
        """The rows of `query`, a statement whose text cannot be spliced into a query (an EXECUTE; a
        PIVOT without an IN list, which DuckDB runs as several statements), read through `shown`'s
        select list: DuckDB knows its columns' types once it has bound it, and selects over its rows."""
        rows = self._con.sql(query)
        listed = None if rows is None else shown(rows.types)
        if listed is not None:
            names = ", ".join(f"{item} AS {_identifier(name)}" for item, name in zip(listed, rows.columns, strict=True))
            rows = rows.query(_ROWS, f"SELECT {names} FROM {_ROWS}")
        return _Rows(rows)

    def _shown(self, statement, shown) -> str | None:
        """`statement`, a query or the CALL of a table function, as a query over its rows through
        `shown`'s select list, under the names it gives them; None to run it as it is: any other
        statement (PRAGMA, EXPLAIN), rows that need nothing, or a query that fails here (it fails
        again when run, and says why). Its types come from DESCRIBE, which binds it without running it, so
        the query runs once."""
        query = statement.query
        if statement.type == duckdb.StatementType.CALL:
            query = _called(query)
        elif statement.type not in (duckdb.StatementType.SELECT, duckdb.StatementType.MULTI):
            return None
        # On lines of their own: a query may end in a line comment.
        text = f"\n{query}\n"
        try:
            described = self._guard(lambda: self._con.execute(self._query(f"DESCRIBE {text}")).fetchall())
            listed = shown([self._con.sqltype(row[1]) for row in described])
            if listed is None:
                return None
            names = ", ".join(f"{item} AS {_identifier(row[0])}" for item, row in zip(listed, described, strict=True))
            return self._query(f"SELECT {names} FROM ({text})")
        except Interrupted:
            raise
        except (QueryError, StoreError, duckdb.Error):
            return None

    def _query(self, text: str) -> str:
        """`text`, once DuckDB has parsed it as one query and nothing else (a query's text spliced
        into another must not make it more than that, whatever the text holds)."""
        parsed = self._con.extract_statements(text)
        if len(parsed) != 1 or parsed[0].type != duckdb.StatementType.SELECT:
            raise QueryError("not one query")
        return text

    def _refused(self, statement) -> str | None:
        """Why `statement` is refused, or None. EXPLAIN is refused with what it explains: EXPLAIN
        ANALYZE runs the statement (a CREATE creates its temporary object), and a plan of what
        cannot run explains nothing."""
        if statement.type != duckdb.StatementType.EXPLAIN:
            return _REFUSED.get(statement.type)
        explained = []
        for text in _explained(statement.query):
            # A reading of the text that is not a statement: the other one is.
            with contextlib.suppress(duckdb.ParserException):
                explained += self._con.extract_statements(text)
        if not explained:  # what it would run cannot be told, so it does not run
            return "EXPLAIN cannot run: the statement it explains cannot be told from its options"
        return next(filter(None, map(self._refused, explained)), None)

    def interrupt(self) -> None:
        """Stop the running query, from any thread; it fails with `Interrupted`."""
        self._con.interrupt()

    def close(self) -> None:
        self._con.close()
        if self._unpin is not None:
            self._unpin()

    def _begin(self) -> None:
        # A BEGIN inside a transaction would abort it, so end whatever is open first.
        with contextlib.suppress(duckdb.TransactionException):
            self._con.execute("ROLLBACK")
        self._con.execute("BEGIN TRANSACTION READ ONLY")

    def _guard(self, call, *args):
        try:
            return call(*args)
        except duckdb.Error as exc:
            # A failed statement aborts its transaction; the next one needs a new read-only one.
            with contextlib.suppress(duckdb.Error):
                self._begin()
            raise self._translate(exc) from None

    def _translate(self, exc: duckdb.Error) -> Exception:
        if isinstance(exc, duckdb.InterruptException):
            return Interrupted("query interrupted")
        message = first_line(exc)
        for path in self._files:
            if not os.path.isfile(path):
                # Deleted by something other than an index run, which leaves pinned snapshots be.
                return StoreError(f"cannot read store {self.store}: {path} has been removed")
        if isinstance(exc, duckdb.CatalogException):
            for table in self._missing:
                if f"Table with name {table} does not exist" in message:
                    return StoreError(f"store {self.store} has no {table}.parquet")
        if isinstance(exc, duckdb.IOException):
            return StoreError(f"cannot read store {self.store}: {message}")
        return QueryError(message)


def lock_settings(files: list[str]) -> str:
    """The settings that leave a connection able to read `files` and nothing else, for good.

    Every reader applies them: the Reader here, and the server's in-memory copy of a snapshot.
    """
    return (
        f"SET allowed_paths = [{', '.join(map(_quote, files))}];"
        " SET enable_external_access = false;"
        " SET autoinstall_known_extensions = false;"
        " SET autoload_known_extensions = false;"
        " SET lock_configuration = true;"
    )


def _lock_down(files: list[str], memory_limit: str | None = None) -> str:
    bounds = ""
    if memory_limit is not None:
        # No temp_directory: what does not fit fails rather than spilling files into the working
        # directory (DuckDB's default is `.tmp` there), and nothing is ever written.
        bounds = f"SET memory_limit = {_quote(memory_limit)}; SET temp_directory = '';"
    # A TIMESTAMPTZ is shown in UTC, whatever the machine's zone, from a store of any kind: DuckDB's
    # default is the machine's, which a store of Parquet files (an export, the first layout) showed.
    return bounds + "SET TimeZone = 'UTC'; " + lock_settings(files) + " BEGIN TRANSACTION READ ONLY;"


def _over_snapshot(
    store: str, snapshot: str, tables: tuple[str, ...], pin: int | None, memory_limit: str | None = None
) -> Reader:
    # One script, not one call per statement: each call costs start-up time on the `get` path.
    script, files, missing = [], [], []
    for table in tables:
        path = paths.table_file(snapshot, table)
        if os.path.isfile(path):
            # Hive partitioning off: a `key=value` folder in the store's path is not a column.
            source = f"read_parquet({_quote(path)}, hive_partitioning = false)"
            script.append(f"CREATE VIEW {table} AS SELECT * FROM {source};")
            files.append(path)
        elif table == "tags":
            script.append(f"CREATE VIEW tags AS {_TAGS_FROM_IMAGES};")
        else:
            missing.append(table)
    if tables == paths.TABLES:
        script += [f"CREATE VIEW {name} AS {body};" for name, body in VIEWS.items()]
    script.append(_lock_down(files, memory_limit))
    con = duck.connect()
    try:
        con.execute("\n".join(script))
    except duckdb.Error as exc:
        con.close()
        if pin is not None:
            os.close(pin)
        raise StoreError(f"cannot read store {store}: {first_line(exc)}") from None
    return Reader(con, store, files, pin, tuple(missing))


def _over_database(store: str, database: str, memory_limit: str | None = None) -> Reader:
    try:
        con = duck.connect(database, read_only=True)
    except duckdb.Error as exc:
        raise StoreError(f"store {store} has no snapshot yet and its database is busy ({first_line(exc)})") from None
    try:
        con.execute(_lock_down([database], memory_limit))
    except duckdb.Error as exc:
        con.close()
        raise StoreError(f"cannot read store {store}: {first_line(exc)}") from None
    return Reader(con, store, [database], None)


def _over_tables(
    store: str, tables: tuple[str, ...], as_of, key: str | None = None, memory_limit: str | None = None
) -> Reader:
    from indexer.store import deltalog

    version = None
    if isinstance(as_of, int):
        version, as_of = as_of, None
    if version is not None and "images" not in tables:
        tables = ("images", *tables)
    con = duck.connect()
    try:
        files = deltalog.read_store(store, version=version, as_of=as_of, tables=tables, con=con)
        if key is not None:
            # Only the files whose id range holds `key` (Delta statistics): after compaction one.
            files["images"] = _holding_rows_of(con, files["images"].for_key(key), key)
        # Footers are parsed once per reader, not once per query: a list runs two to six queries over
        # the same files, and parsing the footers of a compacted 1M-image table costs ~30 ms of CPU
        # each time.
        script = ["SET parquet_metadata_cache = true;"] + [
            statement + ";" for statement in deltalog.view_statements(files)
        ]
        if set(paths.TABLES) <= set(tables):
            script += [f"CREATE VIEW {name} AS {body};" for name, body in VIEWS.items()]
        allowed = deltalog.all_files(files)
        script.append(_lock_down(allowed, memory_limit))
        con.execute("\n".join(script))
    except StoreError:
        con.close()
        raise
    except duckdb.Error as exc:
        con.close()
        raise StoreError(f"cannot read store {store}: {first_line(exc)}") from None
    parts = deltalog.compacted_parts(files["images"]) if "images" in files and key is None else None
    # Versions stay readable for the store's retention window (see `imgdex compact`): no pin.
    reader = Reader(con, store, allowed if deltalog.is_local(store) else [], None, images_parts=parts)
    # An id's current row is resolved from its own rows alone, so a batch of ids filters the row
    # versions before the resolution window: the images view would resolve every id of the store
    # first (uncompacted, 100,000 images: 0.30-0.36 s per 20,000 ids, against 0.15-0.22 s). A
    # compacted table's view reads its untouched rows without the window, which is faster still.
    if "images" in files and parts is None:
        reader.images_of_ids = deltalog.resolved_sql(
            files["images"], f"(SELECT * FROM images_versions WHERE id IN {_IDS})"
        )
    return reader


def _holding_rows_of(con, images, key: str):
    """`images` narrowed to the files that hold a row of `key`. An id's current row is resolved
    from its own rows alone, and each run appended since compaction spans every id, so their
    ranges keep them all: at 1M images with three such runs, 17 files, whose resolution took
    ~25 ms. Asking them for the id reads their id columns, pruned by statistics: ~7 ms."""
    if len(images.files) < 2 or not images.uniform:  # files of older schemas: left to the views
        return images
    listed = ", ".join(map(_quote, images.files))
    rows = con.execute(
        f"SELECT DISTINCT filename FROM read_parquet([{listed}], filename = true, hive_partitioning = false) "
        "WHERE id = ?",
        [key],
    ).fetchall()
    held = {row[0] for row in rows}
    # A name spelled otherwise than listed would drop a file that holds the id: then keep them all.
    return images.only(held) if held <= set(images.files) else images


def connect(
    store: str,
    tables: tuple[str, ...] = paths.TABLES,
    *,
    as_of=None,
    key: str | None = None,
    memory_limit: str | None = None,
) -> Reader:
    """A Reader over the store's current version (or the one `as_of` names: a version number of
    the images table, or a time), pinned until the Reader is closed or collected.

    `tables` limits the views to what a command reads: each view costs a Parquet footer read.
    `key`: the reader answers only about the image with this id (a get by id reads fewer files).
    `memory_limit` (DuckDB's spelling, "1GiB"): for a user's SQL, set with spilling off before the
    configuration is locked. Lookups leave DuckDB's defaults: their queries are the library's own.
    """
    if paths.is_table_store(store):
        with paths.gone_is_no_store(store):
            return _over_tables(store, tables, as_of, key, memory_limit)
    if as_of is not None and (paths.is_old_layout(store)):
        if paths.holds_old_database(store):
            raise StoreError(f"store {store} keeps no history in its old layout; convert it with `imgdex migrate`")
        # An export: its files hold the current rows only, and migrating would replace them.
        raise StoreError(f"store {store} holds plain Parquet files (an `imgdex export`), which keep no history")
    pinned = paths.pin_snapshot(store)
    if pinned is not None:
        snapshot, pin = pinned
        return _over_snapshot(store, snapshot, tables, pin, memory_limit)
    database = os.path.join(store, paths.DATABASE)
    if os.path.isfile(database):
        return _over_database(store, database, memory_limit)
    for folder in (store, os.path.join(store, paths.SNAPSHOT_LINK)):
        if any(os.path.isfile(paths.table_file(folder, table)) for table in paths.TABLES):
            raise StoreError(f"store {store} has no images.parquet")
    raise StoreError(paths.no_store_message(store))
