"""SQL over the store for analysts, printed as a table, CSV or JSON lines."""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import re
import select
import signal
import sys
import threading
import time

from indexer.errors import QueryError, printable

from .render import format_table

# JSON has no number for these: written as proto3 JSON spells them, so that strict parsers
# (jq, JSON.parse) read the line.
_NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def _plain(value, for_json: bool = False):
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, dict):
        return {str(k): _plain(v, for_json) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, for_json) for v in value]
    if for_json and isinstance(value, float) and not math.isfinite(value):
        return _NON_FINITE[repr(value)]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


# Types whose Python values print as DuckDB writes them (a boolean and a BLOB are spelled in
# `_csv_field`), by DuckDB's id, with the name a cast to them takes.
_KEPT = {
    name: name.upper()
    for name in (
        *("boolean", "tinyint", "smallint", "integer", "bigint", "hugeint", "double", "varchar", "blob"),
        *("utinyint", "usmallint", "uinteger", "ubigint", "uhugeint"),
    )
}
# Types Python reads exactly and prints as DuckDB's text (a UUID, an ENUM's label, a BIT's digits):
# left as they are, but VARCHAR, the same text, inside a nested value that is cast for another.
_SAME_TEXT = {"uuid", "enum", "bit", "bignum", "varint", "null"}


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _retyped(kind, float_as: str) -> tuple[str, bool] | None:
    """DuckDB's type `kind` spelled with every value that Python does not print as DuckDB does as
    VARCHAR, DuckDB's own text of it, and a FLOAT as `float_as`; and whether that changes anything.
    None for a type that cannot be spelled (a struct of unnamed fields): its values stay Python's.

    Python loses what the rest hold: a TIMESTAMP_NS its nanoseconds, an INTERVAL its months (1
    month reads 30 days), a DATE or TIMESTAMP its infinities (read as 9999-12-31, a real date), a
    DECIMAL its spelling (0E-10), TIME '24:00:00' and TIMESTAMPTZ their DuckDB spelling (+00:00
    for +00). Any type not named here is DuckDB's text too, which is never wrong."""
    name = kind.id
    if name in _KEPT:
        return _KEPT[name], False
    if name in _SAME_TEXT:
        return "VARCHAR", False
    if name == "float":
        return float_as, True
    if name in ("list", "array"):
        inner = _retyped(kind.children[0][1], float_as)
        if inner is None:
            return None
        return inner[0] + ("[]" if name == "list" else f"[{kind.children[1][1]}]"), inner[1]
    if name in ("struct", "union", "map"):
        # A UNION's first child is its tag, not a member.
        children = kind.children[1:] if name == "union" else kind.children
        spelled = [_retyped(child, float_as) for _, child in children]
        if None in spelled or (name != "map" and not all(field for field, _ in children)):
            return None
        if name == "map":
            inner = ", ".join(text for text, _ in spelled)
        else:
            inner = ", ".join(
                f"{_quoted(field)} {text}" for (field, _), (text, _) in zip(children, spelled, strict=True)
            )
        return f"{name.upper()}({inner})", any(changed for _, changed in spelled)
    return "VARCHAR", True


def duckdb_texts(types) -> list[str] | None:
    """The select list (`#1`, `CAST(#2 AS VARCHAR)`, …) over a query's columns of DuckDB `types` that
    has DuckDB write each value that Python would not print as DuckDB's CSV writer does, at any
    depth; None when every value prints as it is. A FLOAT becomes DuckDB's text of it read back as
    a DOUBLE, which Python prints with the same digits, so that JSON keeps it a number: Python
    widens a FLOAT (0.1 reads 0.10000000149011612), and DuckDB's digits are not always the shortest
    that read back as the same FLOAT (2**-12 is 0.000244140625, not 0.00024414062).

    DuckDB casts them in the query itself, as it reads them: a value converted to Python first
    would have lost what the cast has to show."""
    listed, changed = [], False
    for position, kind in enumerate(types, 1):
        text = _retyped(kind, "VARCHAR")
        if text is None or not text[1]:
            listed.append(f"#{position}")
            continue
        changed = True
        cast = f"CAST(#{position} AS {text[0]})"
        floats = _retyped(kind, "DOUBLE")[0]
        listed.append(cast if floats == text[0] else f"CAST({cast} AS {floats})")
    return listed if changed else None


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def unique_names(names: list[str]) -> list[str]:
    """`names` made unique as DuckDB names the columns of `CREATE TABLE … AS` or `COPY … TO` of a
    query (`a`, `a` become `a`, `a_1`): a JSON object keeps one value of each key, so a repeated
    name would lose a column, and csv says the same names as json. Names that differ in ASCII case
    alone are the same name, as they are to DuckDB; other letters' case makes them differ."""
    taken: dict[str, int] = {}
    unique = []
    for name in names:
        folded = name.translate(_ASCII_LOWER)
        if folded in taken:
            # The repeats of a name count on from its last suffix, skipping any name already used.
            while (renamed := f"{name}_{taken[folded]}").translate(_ASCII_LOWER) in taken:
                taken[folded] += 1
            name, folded = renamed, renamed.translate(_ASCII_LOWER)
        taken[folded] = 1
        unique.append(name)
    return unique


# Bytes as DuckDB's cast of a BLOB to text writes them, and so its CSV writer: printable ASCII as
# it is but for the quotes and the backslash, every other byte as \xAA.
_BLOB_TEXT = {byte: f"\\x{byte:02X}" for byte in range(256) if not 32 <= byte <= 126 or chr(byte) in "\\'\""}


def _blob_text(value) -> str:
    return bytes(value).decode("latin-1").translate(_BLOB_TEXT)


def _csv_field(value):
    """A value as a csv field. A list, struct, map or array is its JSON, as the json format writes
    it, the text kept as UTF-8 like the text around it. A boolean is spelled as DuckDB's CSV writer
    and JSON spell it, as NaN and infinities already were (nan, inf): Python's True made a file
    differ from DuckDB's COPY of the same query, and a boolean read True alone and true in a list.
    A BLOB is DuckDB's text of it (`\\xAA`), as its CSV writer writes it, not base64."""
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value) and math.copysign(1.0, value) < 0:
        return "-nan"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _blob_text(value)
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(_plain(value, for_json=True), ensure_ascii=False)
    return _plain(value)


# What DuckDB's CSV writer quotes a field for: its delimiter, quote and line breaks, and the `#`
# that a reader may take for a comment. It quotes an empty text too, so that it differs from NULL.
_QUOTED = re.compile('[,"\n\r#]')


def _csv_line(fields) -> str:
    """A row of csv fields (None for NULL) as DuckDB's CSV writer writes it, which Python's csv
    module does not: it writes NULL and an empty text alike, and neither a carriage return nor a
    `#` is quoted."""
    out = []
    for field in fields:
        if field is None:
            out.append("")
            continue
        text = field if isinstance(field, str) else str(field)
        out.append('"' + text.replace('"', '""') + '"' if not text or _QUOTED.search(text) else text)
    return ",".join(out) + "\n"


# Rows taken from DuckDB at a time: output streams, so a result of any size costs this many rows.
_CHUNK = 2048
# A table is laid out once its widths are known, so it holds its rows: no more than this many.
TABLE_ROWS = 10_000


class Stopped(QueryError):
    """A query ended by Ctrl-C or by its deadline; `code` is the exit code that tells which."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


# What the process may hold past --memory-limit while a query runs: the chunk of rows being
# printed, as Python objects and text (~350 MiB for `SELECT * FROM images` of 10,000 images), and
# what DuckDB allocates past its own accounting near its limit.
HEADROOM = 512 * 1024 * 1024


def return_freed_memory() -> None:
    """Have DuckDB's allocator (its own jemalloc, configured when duckdb is imported) unmap what it
    frees. By default it keeps the address space, which `memory_cap` counts: five statements that
    each held under 1.1 GB left 2.8 GB mapped, and the next query failed with no more in use."""
    if "duckdb" in sys.modules:
        return
    ours = os.environ.get("DUCKDB_JE_MALLOC_CONF")
    # Later options win: a user's own setting of retain stands.
    os.environ["DUCKDB_JE_MALLOC_CONF"] = "retain:false" + (f",{ours}" if ours else "")


def _data_size() -> int | None:
    """The process's data size as RLIMIT_DATA counts it (VmData: private writable mappings, thread
    stacks among them), or None where the system does not say."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmData:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


@contextlib.contextmanager
def memory_cap(budget: int):
    """Until the block ends, an allocation that takes the process more than `budget` bytes past
    what it holds now fails: in DuckDB as its Out of Memory Error, in Python as MemoryError.

    DuckDB's memory_limit does not count the values an expression builds: repeat('x', 3000000000)
    took 5.9 GB under a 1 GiB limit. RLIMIT_DATA rather than RLIMIT_AS: the address space also
    holds code and each thread's malloc arena, 64 MiB reserved apiece, which grow with the cores
    and hold no memory. Counted from now, so that what came before is not the query's (DuckDB's
    threads, and delta-rs, which aborts rather than fails when an allocation does). Only the soft
    limit is lowered, and it is put back: a caller in the same process goes on unbounded."""
    before = _lower_data_limit(budget)
    try:
        yield
    finally:
        if before is not None:
            import resource

            resource.setrlimit(resource.RLIMIT_DATA, before)


def _lower_data_limit(budget: int) -> tuple[int, int] | None:
    """Lower the soft RLIMIT_DATA to `budget` past what the process holds; the limits it replaced,
    or None where it is left as it was: not POSIX (DuckDB's own limit alone), no /proc, a soft limit
    that is lower already, a sandbox that refuses the call, or a cap past what the call takes (an
    OverflowError past 8 EiB, which bounds nothing)."""
    try:
        import resource
    except ImportError:
        return None
    held = _data_size()
    if held is None:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    cap = held + budget if hard == resource.RLIM_INFINITY else min(held + budget, hard)
    if soft != resource.RLIM_INFINITY and soft <= cap:
        return None
    try:
        resource.setrlimit(resource.RLIMIT_DATA, (cap, hard))
    except (OSError, ValueError, OverflowError):
        return None
    return soft, hard


class Guard:
    """Stops the query on Ctrl-C or at the deadline, with `Reader.interrupt`, from a thread of its own.

    Python runs a signal handler only between bytecodes of the main thread, which sits in DuckDB
    for as long as a query runs (a recursive CTE never hands back), so the handler alone is not
    enough: the signal's wakeup byte is read by the thread, which interrupts DuckDB itself.
    """

    def __init__(self, timeout: float):
        self.reader = None
        self._timeout = timeout
        self._stop: Stopped | None = None
        self._closed = threading.Event()

    def __enter__(self) -> "Guard":
        self._read_end, self._write_end = os.pipe()
        os.set_blocking(self._write_end, False)
        # Signals can be handled only from the main thread; elsewhere (a caller's thread) the
        # deadline alone applies, as it does where SIGINT is ignored (a script's `imgdex sql … &`)
        # or taken by a caller's own handler.
        self._signals = (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        )
        if self._signals:
            # Not KeyboardInterrupt: DuckDB, finding it pending, fails with a traceback of its own.
            self._handler = signal.signal(signal.SIGINT, lambda _signum, _frame: None)
            self._wakeup = signal.set_wakeup_fd(self._write_end, warn_on_full_buffer=False)
        self._thread = threading.Thread(target=self._watch, name="sql-guard", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            os.write(self._write_end, b"\0")
        self._thread.join()
        if self._signals:
            signal.set_wakeup_fd(self._wakeup)
            signal.signal(signal.SIGINT, self._handler)
        os.close(self._read_end)
        os.close(self._write_end)

    def check(self) -> None:
        """Raise `Stopped` once the query has been stopped."""
        if self._stop is not None:
            raise self._stop

    def stopped(self, exc: Exception) -> Exception:
        """What to raise for `exc`, an engine.Interrupted: the reason it was stopped."""
        return self._stop if self._stop is not None else exc

    def _watch(self) -> None:
        deadline = time.monotonic() + self._timeout
        while self._stop is None and not self._closed.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._stop = Stopped(f"query took longer than {self._timeout:g} s", 1)
                break
            if select.select([self._read_end], [], [], remaining)[0]:
                with contextlib.suppress(BlockingIOError):
                    if signal.SIGINT in os.read(self._read_end, 512):
                        self._stop = Stopped("query interrupted", 130)
        # Again until the command is done: a query that had not yet started when it was first
        # called is not stopped by it.
        while not self._closed.is_set():
            if self.reader is not None:
                self.reader.interrupt()
            self._closed.wait(0.05)


def write(reader, query: str, fmt: str, put, note=None, before=None, terminal: bool = False) -> None:
    """`query` through an engine.Reader, which keeps it read-only; the last statement's rows are
    passed to `put` as text, a chunk of rows at a time. `before` is called ahead of each statement
    and chunk (to stop the query); `note` is told when the table is cut short. For a `terminal`,
    control characters in CSV fields are escaped, as the table does: stored text must not drive it."""
    result = reader.run(query, before, shown=duckdb_texts)
    if result is None or result.description is None:
        return
    columns = [d[0] for d in result.description]
    if fmt in ("json", "csv"):
        columns = unique_names(columns)

    def chunks():
        while True:
            if before is not None:
                before()
            rows = result.fetchmany(_CHUNK)
            if not rows:
                return
            yield rows

    if fmt == "json":
        for rows in chunks():
            put(
                "".join(
                    json.dumps(
                        dict(zip(columns, (_plain(v, for_json=True) for v in row), strict=True)), ensure_ascii=False
                    )
                    + "\n"
                    for row in rows
                )
            )
        return
    if fmt == "csv":
        # A name is the query's text, or stored text a PIVOT made a name of: escaped as the values are.
        head = _csv_line([printable(c) for c in columns] if terminal else columns)
        for rows in chunks():
            lines = []
            for row in rows:
                fields = [_csv_field(v) for v in row]
                if terminal:
                    fields = [printable(f) if isinstance(f, str) else f for f in fields]
                lines.append(_csv_line(fields))
            put(head + "".join(lines))
            head = ""
        if head:
            put(head)
        return
    cells = []
    for rows in chunks():
        # Each value as csv writes it, so that the two formats agree: Python's True, its repr of a
        # list or dict and base64 of a BLOB were neither DuckDB's spelling nor JSON.
        cells += [["NULL" if v is None else str(_csv_field(v)) for v in row] for row in rows]
        if len(cells) > TABLE_ROWS:
            del cells[TABLE_ROWS:]
            if note is not None:
                note(f"the table shows the first {TABLE_ROWS:,} rows; --format csv or json prints them all")
            break
    put(format_table(columns, cells) + "\n")
