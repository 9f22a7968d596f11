"""SQL over the store for analysts, printed as a table, CSV or JSON lines."""

from __future__ import annotations

import base64
import contextlib
import csv
import io
import json
import math
import os
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


def _csv_field(value):
    """A value as a csv field. A list, struct, map or array is its JSON, as the json format writes
    it, the text kept as UTF-8 like the text around it. A boolean is spelled as DuckDB's CSV writer
    and JSON spell it, as NaN and infinities already were (nan, inf): Python's True made a file
    differ from DuckDB's COPY of the same query, and a boolean read True alone and true in a list."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(_plain(value, for_json=True), ensure_ascii=False)
    return _plain(value)


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
    result = reader.run(query, before)
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
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        for rows in chunks():
            for row in rows:
                fields = [_csv_field(v) for v in row]
                writer.writerow([printable(f) if isinstance(f, str) else f for f in fields] if terminal else fields)
            put(buffer.getvalue())
            buffer.seek(0)
            buffer.truncate()
        if buffer.tell():
            put(buffer.getvalue())
        return
    cells = []
    for rows in chunks():
        cells += [["NULL" if v is None else str(_plain(v)) for v in row] for row in rows]
        if len(cells) > TABLE_ROWS:
            del cells[TABLE_ROWS:]
            if note is not None:
                note(f"the table shows the first {TABLE_ROWS:,} rows; --format csv or json prints them all")
            break
    put(format_table(columns, cells) + "\n")
