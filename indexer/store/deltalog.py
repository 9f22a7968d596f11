"""Which Parquet files make up a Delta table, read from its `_delta_log` without importing deltalake.

The lookup path needs only the list of live data files of each table. Replaying the log with the
standard library (JSON commits) and DuckDB (a Parquet checkpoint, when there is one) costs a few
milliseconds, where importing deltalake and pyarrow costs far more (see bench/store_bench.py).

The reader is strict rather than complete: it accepts only what the tables of this store use
(no partitions, no deletion vectors, no column mapping, classic single or multi-part checkpoints)
and refuses anything else with a StoreError, since reading the data files of such a table directly
would return wrong rows. A table at another location (`s3://...`) is listed through deltalake.

This module also holds the DuckDB SQL that turns the append-only tables into current rows, so the
rule lives in one place for readers and for compaction.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import os
import re
import stat
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from urllib.parse import unquote, urlparse

from ..errors import NewerStore, SourceError, StoreError, UnsupportedTable, printable
from ..files import not_regular, open_readable

TABLES = ("images", "tags", "runs")
LOG_DIR = "_delta_log"

# Columns this store adds to the Arrow schemas of `schema.py`: when a row was written, by which
# run, and whether it retires its key instead of describing it.
WRITTEN_AT = "written_at"
RUN_ID = "run_id"
TOMBSTONE = "tombstone"
CONTENT_HASH = "content_hash"
# An images row that changes only the image's tags (a tag moved away, or a less exact record
# added one): no data, so a tag move never rewrites, nor reads, an image's raw JSON.
TAGS_ONLY = "tags_only"
# Set by compaction when an image's tags came from a newer row than its data: the time of that row.
TAGS_WRITTEN_AT = "tags_written_at"
VERSION_COLUMNS = (WRITTEN_AT, RUN_ID, TOMBSTONE, CONTENT_HASH, TAGS_ONLY, TAGS_WRITTEN_AT)

# Table property set while some files predate the table's last added column (until compaction).
MIXED_SCHEMAS = "imgdex.mixedSchemas"
# The store's layout version, a table property of each table. 1 was the DuckDB database with Parquet
# snapshots (`imgdex migrate` converts it); 2 are these tables, whose columns only ever grow (new
# ones are added when a run opens the store). A version above this one means a newer imgdex changed
# the layout in a way this one cannot read right, so it is refused rather than guessed at.
SCHEMA_VERSION_PROPERTY = "imgdex.schemaVersion"
SCHEMA_VERSION = 2


def check_schema_version(table: str, configuration: dict) -> None:
    text = configuration.get(SCHEMA_VERSION_PROPERTY) or str(SCHEMA_VERSION)
    try:
        version = int(text)
    except ValueError:
        version = SCHEMA_VERSION + 1
    if version > SCHEMA_VERSION:
        raise NewerStore(
            f"table {table} has store schema version {text}, written by a newer imgdex; "
            f"this one reads version {SCHEMA_VERSION} (upgrade imgdex)"
        )


# A tombstone of an image carries this exactness, above any record's, so that the resolution
# rule retires the id for good: an id replaced by an imported one is never used again.
TOMBSTONE_EXACTNESS = 127

# Which rows are current. Windows partitioned by the key, so that DuckDB pushes an equality
# filter on the key below them into the Parquet scan (row-group pruning by id).
RESOLUTION = {
    "images": (("id",), f"coalesce({TAGS_ONLY}, false), exactness DESC, {WRITTEN_AT} DESC, {RUN_ID} DESC"),
    "tags": (("registry", "name", "tag"), f"{WRITTEN_AT} DESC, {RUN_ID} DESC"),
}
# An image's tags are those of its newest row, data or tags-only.
NEWEST = f"coalesce({TAGS_WRITTEN_AT}, {WRITTEN_AT}) DESC, {RUN_ID} DESC"

# Reader features whose only effect is on how values are typed, not on which rows a file holds.
_SAFE_READER_FEATURES = frozenset({"timestampNtz"})
_COMMIT = re.compile(r"^(\d{20})\.json$")
_CHECKPOINT = re.compile(r"^(\d{20})\.checkpoint\.parquet$")
_MULTIPART = re.compile(r"^(\d{20})\.checkpoint\.(\d{10})\.(\d{10})\.parquet$")
_V2_CHECKPOINT = re.compile(r"^(\d{20})\.checkpoint\.[0-9a-fA-F-]{36}\.(json|parquet)$")


@dataclasses.dataclass(frozen=True)
class TableFiles:
    """The live data files of one table at one version."""

    table: str
    location: str
    version: int
    timestamp_ms: int  # the commit's time (commitInfo.timestamp), as deltalake reads it
    files: tuple[str, ...]
    columns: tuple[tuple[str, str], ...]  # (name, DuckDB type) from the table's schema
    run_id: str | None = None  # the run that made this version, from the commit's metadata
    # Per file, the (min, max) of the first key column from the add action's statistics, or None.
    key_ranges: tuple = ()
    # False when some file predates the last schema change: such files lack the newer columns,
    # so DuckDB must match columns by name (slower: every file's schema is read per query).
    uniform: bool = True
    # Per file of the images table, the (min, max) of `name` likewise; () for a file without names
    # (tombstones and tags-only rows).
    name_ranges: tuple = ()
    # Per file, its rows by the add action's statistics (numRecords), or None.
    row_counts: tuple = ()

    def holding(self, keys: Iterable[str], *, column: str = "id") -> "TableFiles":
        """This table narrowed to the files whose range of `column` (the first key column, or
        "name") may hold one of `keys`: the rows of a few keys, read without opening the rest."""
        ranges = self.key_ranges if column != "name" else self.name_ranges
        if len(ranges) != len(self.files):
            return self
        wanted = sorted({k for k in keys if k is not None})
        return self.only({self.files[i] for i, r in enumerate(ranges) if r is None or (r and _any_within(wanted, r))})

    def may_hold_count(self, keys: Iterable[str]) -> int:
        """How many of `keys` the files' ranges of the first key column do not rule out (all of them
        when a range is unknown)."""
        wanted = sorted({k for k in keys if k is not None})
        if len(self.key_ranges) != len(self.files) or None in self.key_ranges:
            return len(wanted)
        spans = sorted(
            (bisect.bisect_left(wanted, r[0]), bisect.bisect_right(wanted, r[1])) for r in self.key_ranges if r
        )
        count, end = 0, 0
        for low, high in spans:  # the union of the index spans, each counted once
            low = max(low, end)
            if high > low:
                count += high - low
                end = high
        return count

    def for_key(self, key: str) -> "TableFiles":
        """This table narrowed to the files that may hold `key` (for `resolved_sql` of one lookup)."""
        return self.holding([key])

    def only(self, paths: set[str]) -> "TableFiles":
        """This table narrowed to the files among `paths`, in their order."""
        kept = [i for i, path in enumerate(self.files) if path in paths]
        if len(kept) == len(self.files):
            return self
        return dataclasses.replace(
            self,
            files=tuple(self.files[i] for i in kept),
            key_ranges=tuple(self.key_ranges[i] for i in kept) if len(self.key_ranges) == len(self.files) else (),
            name_ranges=tuple(self.name_ranges[i] for i in kept) if len(self.name_ranges) == len(self.files) else (),
            row_counts=tuple(self.row_counts[i] for i in kept) if len(self.row_counts) == len(self.files) else (),
        )


def _any_within(wanted: list[str], bounds: tuple[str, str]) -> bool:
    at = bisect.bisect_left(wanted, bounds[0])
    return at < len(wanted) and wanted[at] <= bounds[1]


def is_local(location: str) -> bool:
    scheme = urlparse(location).scheme
    return scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt")


def local_path(location: str) -> str:
    parsed = urlparse(location)
    return unquote(parsed.path) if parsed.scheme == "file" else location


def table_location(store: str, table: str) -> str:
    return f"{store.rstrip('/')}/{table}"


def _ms(when: datetime | int | float | str) -> int:
    if isinstance(when, (int, float)):
        return int(when)
    if isinstance(when, str):
        when = datetime.fromisoformat(when.replace("Z", "+00:00"))
    if when.tzinfo is None:
        raise StoreError("a time-travel timestamp needs a time zone")
    return int(when.timestamp() * 1000)


class _Replay:
    """The state of one table's log, built from a checkpoint and the commits after it."""

    def __init__(self, table: str, directory: str):
        self.table = table
        self.directory = directory
        self.files: dict[str, tuple] = {}  # relative path -> (version added, statistics text)
        self.protocol: dict | None = None
        self.metadata: dict | None = None
        self.version = -1  # of the action being applied

    def _add(self, action: dict) -> None:
        if action.get("deletionVector"):
            raise UnsupportedTable(f"table {self.table} has deletion vectors, which this reader refuses")
        if action.get("partitionValues"):
            raise UnsupportedTable(f"table {self.table} is partitioned, which this reader refuses")
        path = unquote(action["path"])
        if not _inside(path):
            raise StoreError(f"table {self.table} names a data file outside its folder: {printable(action['path'])}")
        if _GLOB.search(path):
            # DuckDB reads a file name as a pattern: `part-*.parquet` would read every file it matches.
            shown = printable(action["path"])
            raise StoreError(f"table {self.table} names a data file by a pattern (`*`, `?` or `[`): {shown}")
        self.files[path] = (self.version, action.get("stats"))

    def apply(self, action: dict) -> None:
        if "add" in action:
            self._add(action["add"])
        elif "remove" in action:
            self.files.pop(unquote(action["remove"]["path"]), None)
        elif "protocol" in action:
            self.protocol = action["protocol"]
        elif "metaData" in action:
            self.metadata = action["metaData"]
        # commitInfo, txn, cdc and domainMetadata change no file list; anything the protocol
        # does not allow is caught by the protocol check.

    def check(self) -> None:
        protocol, metadata = self.protocol, self.metadata
        if protocol is None or metadata is None:
            raise StoreError(f"table {self.table} has no protocol or metadata in its log")
        reader = protocol.get("minReaderVersion")
        configuration = _as_dict(metadata.get("configuration"))
        mapping = configuration.get("delta.columnMapping.mode", "none")
        features = set(protocol.get("readerFeatures") or ())
        if reader not in (1, 2, 3):
            raise UnsupportedTable(f"table {self.table} needs Delta reader version {reader}, which this reader refuses")
        if mapping not in ("none", None) or "columnMapping" in features:
            raise UnsupportedTable(f"table {self.table} uses column mapping, which this reader refuses")
        if "deletionVectors" in features:
            raise UnsupportedTable(f"table {self.table} has deletion vectors, which this reader refuses")
        if reader == 3 and not features <= _SAFE_READER_FEATURES:
            refused = ", ".join(sorted(features - _SAFE_READER_FEATURES))
            raise UnsupportedTable(f"table {self.table} needs reader features {refused}, which this reader refuses")
        if metadata.get("partitionColumns"):
            raise UnsupportedTable(f"table {self.table} is partitioned, which this reader refuses")
        check_schema_version(self.table, configuration)

    def path(self, relative: str) -> str:
        return os.path.join(self.directory, relative)


# What DuckDB's read_parquet expands in a file name; no Delta writer names a file with one.
_GLOB = re.compile(r"[*?\[]")


def _inside(path: str) -> bool:
    """Whether `path`, an add action's path once decoded, names a file under the table's folder.
    This store writes only relative names; an absolute one, a URL or `..` would have DuckDB open
    any file the user can read (a log is data, and may come from elsewhere)."""
    if not path or "\x00" in path or "\\" in path or urlparse(path).scheme or os.path.isabs(path):
        return False
    return not any(part in ("", ".", "..") for part in path.split("/"))


def _as_dict(value) -> dict:
    # DuckDB returns a MAP as a dict, older versions as {"key": [...], "value": [...]}.
    if not value:
        return {}
    if set(value) == {"key", "value"} and isinstance(value["key"], list):
        return dict(zip(value["key"], value["value"], strict=True))
    return dict(value)


def _list_log(table: str, log: str) -> tuple[dict[int, str], dict[int, list[str]]]:
    commits: dict[int, str] = {}
    parts: dict[int, dict[int, list[str]]] = {}
    try:
        names = os.listdir(log)
    except FileNotFoundError:
        raise StoreError(f"table {table} has no Delta log at {log}") from None
    except OSError as exc:
        raise StoreError(f"cannot read the log of table {table}: {exc.strerror or exc}") from None
    for name in names:
        if match := _COMMIT.match(name):
            commits[int(match.group(1))] = name
        elif match := _CHECKPOINT.match(name):
            parts.setdefault(int(match.group(1)), {}).setdefault(1, []).append(name)
        elif match := _MULTIPART.match(name):
            parts.setdefault(int(match.group(1)), {}).setdefault(int(match.group(3)), []).append(name)
        elif _V2_CHECKPOINT.match(name):
            raise UnsupportedTable(f"table {table} has a v2 checkpoint, which this reader refuses")
    complete: dict[int, list[str]] = {}
    for version, by_count in parts.items():
        for count, names_ in by_count.items():
            if len(names_) == count:  # a multi-part checkpoint is usable only whole
                complete[version] = sorted(names_)
    return commits, complete


# The most a commit file may hold. A run's commit holds one add action per data file it wrote
# (about 1 KiB each with statistics), and a compaction's a remove per file it read and an add per
# file it wrote: 100,000 files, far more than any table of this store has between compactions,
# come to ~100 MiB. A file past this bound is no commit of this store, and reading it whole would
# take memory without end.
MAX_COMMIT_BYTES = 256 << 20
# Bytes alone do not bound what parsing takes: 256 MiB of tiny actions are 20 million objects,
# gigabytes. 250,000 actions (the 100,000 files above, twice, and then some) parse to ~130 MiB at
# worst, and one line (an action: its schema and statistics take a few KiB) to 8 MiB of text.
MAX_COMMIT_ACTIONS = 250_000
MAX_ACTION_BYTES = 8 << 20


def _read_commit(table: str, log: str, name: str) -> list[dict]:
    try:
        with open_readable(os.path.join(log, name)) as f:
            actions, constants = _parse_commit(table, name, f)
    except FileNotFoundError:
        # removed by log clean-up between listing and reading
        raise StoreError(f"table {table}: commit {name} vanished while reading; try again") from None
    except SourceError as exc:
        raise StoreError(f"table {table}: cannot read commit {name}: {exc.reason}") from None
    except OSError as exc:
        raise StoreError(f"table {table}: cannot read commit {name}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise StoreError(f"table {table}: cannot read commit {name}: {printable(str(exc))}") from None
    except RecursionError:
        raise StoreError(f"table {table}: cannot read commit {name}: a line nests too deeply") from None
    if not actions:
        # A commit is written whole: one with no action is a write cut short, and reading it as an
        # empty commit would drop nothing yet hide that the log is broken.
        raise StoreError(f"table {table}: commit {name} holds no actions (a torn write)")
    for action in actions:
        if (flaw := _flaw(action)) is not None:
            raise StoreError(f"table {table}: commit {name} is not a Delta commit: {flaw}")
    if constants:
        raise StoreError(f"table {table}: commit {name} is not a Delta commit: a line holds NaN or Infinity")
    return actions


def _parse_commit(table: str, name: str, f) -> tuple[list[dict], bool]:
    """The actions of a commit, and whether a line held NaN or Infinity."""
    actions, left, constants = [], MAX_COMMIT_BYTES, False
    while line := f.readline(min(left, MAX_ACTION_BYTES) + 1):
        left -= len(line)
        if left < 0:
            raise StoreError(f"table {table}: commit {name} is larger than {MAX_COMMIT_BYTES >> 20} MiB")
        if len(line) > MAX_ACTION_BYTES:
            raise StoreError(f"table {table}: commit {name} has a line longer than {MAX_ACTION_BYTES >> 20} MiB")
        if not line.strip():
            continue
        if len(actions) == MAX_COMMIT_ACTIONS:
            raise StoreError(f"table {table}: commit {name} holds more than {MAX_COMMIT_ACTIONS:,} actions")
        text = line.decode(json.detect_encoding(line), "surrogatepass")
        try:
            actions.append(_JSON.decode(text))
        except _NotJSON:
            # Read all the same, and refused once the line's fields are checked: one in a field
            # the checks know (a commit time of NaN) is named by that field.
            actions.append(json.loads(text))
            constants = True
    return actions, constants


class _NotJSON(ValueError):
    pass


def _not_json(text: str):
    raise _NotJSON(f"{text} is not JSON")


# Python's json reads NaN and Infinity, which JSON has not, and delta-rs refuses.
_JSON = json.JSONDecoder(parse_constant=_not_json)


# What the replay reads of each action, and what delta-rs decodes of add and remove actions, with
# the types the Delta protocol gives them: checked once per commit, so that a log damaged or written
# by hand is refused in one line, not mid-replay, and not in delta-rs's words by the commands that
# open the table with it (it refuses a commit whose add has a `size` of text, for one).
def _of(*types: type):
    return lambda value: isinstance(value, types)


def _long(value) -> bool:
    # A protocol long: True is an int to Python, and delta-rs refuses a number past int64.
    return type(value) is int and _INT64[0] <= value <= _INT64[1]


def _count(value) -> bool:
    # a size or a count: no writer makes a negative one, and delta-rs cannot read the file of one
    return _long(value) and value >= 0


def _bool(value) -> bool:
    return type(value) is bool


def _string_map(value) -> bool:
    # Map[String, String]; delta-rs refuses an object or a list for a value.
    return type(value) is dict and all(v is None or type(v) is str for v in value.values())


def _names(value) -> bool:
    return type(value) is list and all(type(v) is str for v in value)


def _format(value) -> bool:
    return type(value) is dict and type(value.get("provider")) is str and _string_map(value.get("options"))


def _maybe(check):
    return lambda value: value is None or check(value)


_FIELDS = {
    "add": {
        "path": _of(str),
        "partitionValues": _string_map,
        "size": _count,
        "modificationTime": _long,
        "dataChange": _bool,
        "stats": _of(str, type(None)),
        "tags": _maybe(_string_map),
        "baseRowId": _maybe(_long),
        "defaultRowCommitVersion": _maybe(_long),
    },
    "remove": {
        "path": _of(str),
        "dataChange": _bool,
        "deletionTimestamp": _maybe(_long),
        "size": _maybe(_count),
        "partitionValues": _maybe(_string_map),
        "tags": _maybe(_string_map),
        "extendedFileMetadata": _maybe(_bool),
        "baseRowId": _maybe(_long),
        "defaultRowCommitVersion": _maybe(_long),
    },
    "metaData": {
        "id": _of(str),
        "name": _maybe(_of(str)),
        "description": _maybe(_of(str)),
        "format": _format,
        "schemaString": _of(str),
        "partitionColumns": _names,
        "createdTime": _maybe(_long),
        "configuration": _string_map,
    },
    "protocol": {
        "minReaderVersion": _long,
        "minWriterVersion": _long,
        "readerFeatures": _maybe(_names),
        "writerFeatures": _maybe(_names),
    },
}


def _flaw(action) -> str | None:
    """Why a line of a commit cannot be replayed, or None."""
    if not isinstance(action, dict) or not all(isinstance(body, dict) for body in action.values()):
        return "a line is not an object of actions"
    for kind, fields in _FIELDS.items():
        body = action.get(kind)
        for field, check in fields.items() if body is not None else ():
            if not check(body.get(field)):
                return f"its {kind} action has no valid {field}"
    if "protocol" in action and (field := _protocol_flaw(action["protocol"])) is not None:
        return f"its protocol action has no valid {field}"
    info = action.get("commitInfo", {})
    stamp = info.get("timestamp")
    # The protocol's commit time is a long of milliseconds; a float (1e400 is infinity), text or a
    # number past int64 would fail later, or be read by deltalake otherwise than here.
    if stamp is not None and not _long(stamp):
        return "its commit time is not a whole number of milliseconds within int64"
    if not isinstance(info.get("imgdex.runId"), (str, type(None))):
        return "its run id is not text"
    return None


_INT64 = (-(1 << 63), (1 << 63) - 1)


def _protocol_flaw(protocol: dict) -> str | None:
    """The field that breaks the rules tying a protocol's features to its versions, as delta-rs
    holds them: reader features with reader version 3 and only then, writer features with writer
    version 7 and only then, and every reader feature among the writer features."""
    readers, writers = protocol.get("readerFeatures"), protocol.get("writerFeatures")
    if (readers is not None) != (protocol.get("minReaderVersion") == 3):
        return "readerFeatures"
    if (writers is not None) != (protocol.get("minWriterVersion") == 7):
        return "writerFeatures"
    if readers is not None and writers is None:
        return "writerFeatures"
    if readers is not None and not set(readers) <= set(writers):
        return "readerFeatures"
    return None


def _commit_info(actions: list[dict]) -> dict:
    for action in actions:
        if "commitInfo" in action:
            return action["commitInfo"]
    return {}


def commit_info(table: str, log: str, name: str) -> dict:
    """The commitInfo of commit `name` in the log folder `log`, read under the log's caps."""
    return _commit_info(_read_commit(table, log, name))


def _read_checkpoint(replay: _Replay, log: str, names: list[str], con) -> None:
    paths = [os.path.join(log, name) for name in names]
    for name, path in zip(names, paths, strict=True):
        # DuckDB would wait on a FIFO, or read a device without end.
        try:
            open_readable(path).close()
        except SourceError as exc:
            raise StoreError(f"table {replay.table}: cannot read checkpoint {name}: {exc.reason}") from None
        except OSError as exc:
            raise StoreError(f"table {replay.table}: cannot read checkpoint {name}: {exc.strerror or exc}") from None
    rows = _checkpoint_rows(paths)
    if rows is None:
        rows = _checkpoint_rows_duckdb(replay, names, paths, con)
    for path, partition_values, has_dv, stats, protocol, metadata in rows:
        if path is not None:
            replay._add(
                {"path": path, "partitionValues": _as_dict(partition_values), "deletionVector": has_dv, "stats": stats}
            )
        if protocol is not None:
            replay.protocol = protocol
        if metadata is not None:
            replay.metadata = dict(metadata, configuration=_as_dict(metadata.get("configuration")))


# A checkpoint up to this size, on disk and as its parts declare the columns read once
# decompressed, is read with pyarrow, in this process's memory; a larger one by DuckDB under its
# memory limit.
_ARROW_CHECKPOINT_BYTES = 64 << 20
_CHECKPOINT_COLUMNS = ("add", "protocol", "metaData")


def _checkpoint_rows(paths: list[str]) -> list[tuple] | None:
    """(path, partitionValues, has a deletion vector, stats, protocol, metaData) of the checkpoint
    parts' rows that hold an add, protocol or metaData action, read with pyarrow: a run that needs
    no query then never starts DuckDB (~0.1 s). None when a part is large, cannot be read, or has
    fields of other types than the protocol's; DuckDB then reads them, and words what is wrong.
    Also None where pyarrow is not loaded yet: a lookup, which queries DuckDB anyway, does not
    import it (~80 ms) for this."""
    if "pyarrow.parquet" not in sys.modules:
        return None
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = []
    try:
        for path in paths:
            with open_readable(path) as source:
                if os.fstat(source.fileno()).st_size > _ARROW_CHECKPOINT_BYTES:
                    return None
                parquet = pq.ParquetFile(source)
                schema = parquet.schema_arrow
                if not all(name in schema.names for name in _CHECKPOINT_COLUMNS):
                    return None
                add = schema.field("add").type
                if not (
                    pa.types.is_struct(add)
                    and pa.types.is_struct(schema.field("protocol").type)
                    and pa.types.is_struct(schema.field("metaData").type)
                    and all(add.get_field_index(f) >= 0 for f in ("path", "partitionValues", "deletionVector", "stats"))
                    and add.field("path").type == pa.string()
                    and add.field("stats").type == pa.string()
                    and pa.types.is_map(add.field("partitionValues").type)
                    and pa.types.is_struct(add.field("deletionVector").type)
                ):
                    return None
                if declares_more(parquet.metadata, _CHECKPOINT_COLUMNS, _ARROW_CHECKPOINT_BYTES):
                    return None  # a few MiB that expand without end
                table = parquet.read(columns=list(_CHECKPOINT_COLUMNS))
            # Maps come as lists of pairs, which `_read_checkpoint` turns into dicts (`_as_dict`).
            for action in table.to_pylist():
                added, protocol, metadata = action["add"], action["protocol"], action["metaData"]
                if added is None and protocol is None and metadata is None:
                    continue
                added = added or {}
                file, values, stats = added.get("path"), added.get("partitionValues"), added.get("stats")
                out.append((file, values, added.get("deletionVector") is not None, stats, protocol, metadata))
    except (OSError, SourceError, ValueError, TypeError, KeyError, pa.ArrowException):
        return None
    return out


def declares_more(metadata, columns: Sequence[str], bound: int) -> bool:
    """Whether the leaves of `columns` declare more than `bound` bytes decompressed. The row groups'
    totals first: a Python walk of every column chunk costs ~70 µs a file, most of a small read."""
    total = sum(metadata.row_group(group).total_byte_size for group in range(metadata.num_row_groups))
    return total > bound and declared_bytes(metadata, columns) > bound


def declared_bytes(metadata, columns: Sequence[str]) -> int:
    """The decompressed size that a Parquet file's metadata gives for the leaves of `columns`."""
    total = 0
    for group in range(metadata.num_row_groups):
        row_group = metadata.row_group(group)
        for index in range(row_group.num_columns):
            chunk = row_group.column(index)
            if chunk.path_in_schema.split(".", 1)[0] in columns:
                total += chunk.total_uncompressed_size
    return total


def _checkpoint_rows_duckdb(replay: "_Replay", names: list[str], paths: list[str], con) -> list[tuple]:
    if callable(con):
        con = con()  # the caller's connection, opened only now that a checkpoint must be read
    own = con is None
    if own:
        from . import duck  # only when a checkpoint must be read: the connection costs start-up time

        con = duck.connect()
    try:
        listed = ", ".join("'" + p.replace("'", "''") + "'" for p in paths)
        return con.execute(
            f"SELECT add.path, add.partitionValues, add.deletionVector IS NOT NULL, add.stats, protocol, metaData "
            f"FROM read_parquet([{listed}], hive_partitioning = false) "
            f"WHERE add IS NOT NULL OR protocol IS NOT NULL OR metaData IS NOT NULL"
        ).fetchall()
    except Exception as exc:  # duckdb.Error, without importing duckdb on the common path
        cause = str(exc).splitlines()[0]
        if cause == "Query interrupted" or type(exc).__name__ == "InterruptException":
            raise  # Ctrl-C, which the CLI reports as such: the checkpoint is not to blame
        raise StoreError(f"table {replay.table}: cannot read checkpoint {names[0]}: {cause}") from None
    finally:
        if own:
            con.close()


def read_table(
    location: str,
    *,
    table: str | None = None,
    version: int | None = None,
    as_of: datetime | int | str | None = None,
    con=None,
) -> TableFiles:
    """The live files of the Delta table at `location`, at `version`, at the newest version
    committed at or before `as_of` (a datetime with a zone, ISO text or epoch milliseconds), or
    at the latest version. `con`: a DuckDB connection to read a checkpoint with, if one is needed,
    or a function that opens one (called only then)."""
    table = table or os.path.basename(location.rstrip("/"))
    if not is_local(location):
        return _read_with_deltalake(location, table, version, as_of)
    directory = local_path(location)
    log = os.path.join(directory, LOG_DIR)
    commits, checkpoints = _list_log(table, log)
    if not commits and not checkpoints:
        raise StoreError(f"table {table} has no commits in {log}")
    latest = max(list(commits) + list(checkpoints))
    infos: dict[int, list[dict]] = {}
    if as_of is not None:
        version = _version_at(table, log, commits, _ms(as_of), infos)
    if version is None:
        version = latest
    if version < 0 or version > latest:
        raise StoreError(f"table {table} has no version {version} (latest is {latest})")
    usable = [v for v in checkpoints if v <= version]
    start = max(usable) if usable else -1
    _check_contiguous(table, commits, start, version)
    replay = _Replay(table, directory)
    if start >= 0:
        replay.version = start
        _read_checkpoint(replay, log, checkpoints[start], con)
    timestamp, run_id = 0, None
    for v in range(start + 1, version + 1):
        actions = infos.get(v) or _read_commit(table, log, commits[v])
        replay.version = v
        for action in actions:
            replay.apply(action)
        if v == version:
            info = _commit_info(actions)
            timestamp, run_id = int(info.get("timestamp") or 0), info.get("imgdex.runId")
    if start == version and version in commits:
        info = commit_info(table, log, commits[version])
        timestamp, run_id = int(info.get("timestamp") or 0), info.get("imgdex.runId")
    replay.check()
    columns, checks = _schema(replay.metadata)
    files = tuple(replay.path(p) for p in replay.files)
    _check_regular(table, files)
    first_key = columns[0][0] if columns else None
    wanted = (first_key, "name") if table == "images" else (first_key,)
    # delta-rs decodes the statistics of the live files alone (those of a file removed since are
    # never read): so are they checked here, parsed once for the key ranges too.
    parsed, counts = [], []
    for added, stats in replay.files.values():
        values, flaw = _file_stats(stats, checks)
        if flaw is not None:
            if added == start:
                raise StoreError(f"table {table}: cannot read checkpoint {checkpoints[start][0]}: {flaw}")
            raise StoreError(f"table {table}: commit {commits[added]} is not a Delta commit: {flaw}")
        parsed.append(_ranges(values, wanted))
        counts.append(values.get("numRecords") if values is not None else None)
    ranges = tuple(p[0] for p in parsed)
    names = tuple(p[1] for p in parsed) if table == "images" else ()
    uniform = _as_dict(replay.metadata.get("configuration")).get(MIXED_SCHEMAS) != "true"
    return TableFiles(
        table, location, version, timestamp, files, columns, run_id, ranges, uniform, names, row_counts=tuple(counts)
    )


def _check_regular(table: str, files: Sequence[str]) -> None:
    """StoreError for a live data file that is not a regular file: DuckDB would wait for ever on a
    FIFO's open, before any query deadline starts. One stat each; a missing or unreadable file is
    left to the read, which names it."""
    for path in files:
        try:
            mode = os.stat(path).st_mode
        except (OSError, ValueError):
            continue
        if not stat.S_ISREG(mode):
            raise StoreError(f"table {table}: {not_regular(f'data file {printable(path)}', mode)}")


def _check_contiguous(table: str, commits: dict[int, str], start: int, version: int) -> None:
    """StoreError unless every commit after `start` up to `version` is there. Counted, never
    walked: a commit named with a huge version (a stray file) would make the range endless."""
    held = sorted(v for v in commits if start < v <= version)
    if len(held) == version - start:
        return
    if (held and held[-1] == version and held[-1] - held[0] + 1 == len(held)) or (
        not held and start < 0 and _cleaned_up(commits)
    ):
        # only the oldest are gone: log clean-up removed them (all up to a checkpoint after
        # `version`, as delta-rs cleans up)
        raise StoreError(f"table {table}: version {version} can no longer be read (its log was cleaned up)")
    before = start
    for v in held:
        if v != before + 1:
            break
        before = v
    after = min((v for v in commits if v > before), default=None)
    if after is None:
        raise StoreError(f"table {table} has no commit {before + 1} in its log")
    raise StoreError(f"table {table}: its log skips from version {before} to {after}; a commit is missing")


def _cleaned_up(commits: dict[int, str]) -> bool:
    """Whether the log's first commits are gone and every one after them is there: what log
    clean-up leaves, rather than one commit lost in the middle."""
    if not commits:
        return False
    first = min(commits)
    return first > 0 and len(commits) == max(commits) - first + 1


LAST_CHECKPOINT = "_last_checkpoint"


def special_last_checkpoint(location: str, table: str) -> str | None:
    """Why delta-rs cannot be let open a local table whose log's `_last_checkpoint` is no regular
    file: it reads the hint first, and a FIFO there held `compact`, `index` and `history` for ever.
    One stat; None for a hint that is a file or is absent (or object storage)."""
    if not is_local(location):
        return None
    path = os.path.join(local_path(location), LOG_DIR, LAST_CHECKPOINT)
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    if stat.S_ISREG(mode):
        return None
    return f"table {table}: {not_regular(f'its log file {LAST_CHECKPOINT}', mode)}"


def last_checkpoint_flaw(location: str, table: str) -> str | None:
    """What is wrong with the `_last_checkpoint` hint of a local table's log, when it names a
    checkpoint the log does not hold whole: delta-rs then refuses the table (`Invalid
    Checkpoint`), while the commits themselves may all be there. None when it is fine, absent or
    unreadable (that is delta-rs's to say)."""
    if not is_local(location):
        return None
    log = os.path.join(local_path(location), LOG_DIR)
    try:
        with open_readable(os.path.join(log, LAST_CHECKPOINT)) as f:
            hint = json.loads(f.read(64 << 10))
    except (OSError, SourceError, ValueError, RecursionError):
        return None
    version = hint.get("version") if isinstance(hint, dict) else None
    if type(version) is not int or version < 0:
        return None
    _, checkpoints = _list_log(table, log)
    if version in checkpoints:
        return None
    return (
        f"table {table}: its log's {LAST_CHECKPOINT} names checkpoint {version}, which the log does not hold "
        f"(the commits are read without it; removing {LAST_CHECKPOINT} lets delta-rs read them too)"
    )


def latest_version(location: str, table: str) -> int | None:
    """The newest committed version of a table, from one listing of its log; None without one."""
    if not is_local(location):
        return _read_with_deltalake(location, table, None, None).version
    commits, checkpoints = _list_log(table, os.path.join(local_path(location), LOG_DIR))
    versions = list(commits) + list(checkpoints)
    return max(versions) if versions else None


def _stat_ranges(stats: str | None, columns: tuple) -> list:
    """Per column, (min, max) from a file's statistics; () when the column holds only nulls; None
    when unknown."""
    if not stats:
        return [None] * len(columns)
    try:
        parsed = json.loads(stats)
    except (ValueError, RecursionError):
        return [None] * len(columns)
    return _ranges(parsed, columns)


def _ranges(parsed: dict | None, columns: tuple) -> list:
    if parsed is None:
        return [None] * len(columns)
    return [_range(parsed, column) for column in columns]


def _file_stats(text: str | None, checks: tuple) -> tuple:
    """(statistics, None) for an add action's statistics, parsed (None without any), or (None, why
    delta-rs would refuse them). `checks`: from `_stat_checks`."""
    if text is None:
        return None, None
    try:
        stats = _JSON.decode(text)
    except (ValueError, RecursionError):
        stats = None
    if type(stats) is not dict:
        return None, "its add action has no valid stats"
    if not _maybe(_count)(stats.get("numRecords")):
        return None, "its add action has no valid stats.numRecords"
    bounds, counts = checks
    for key, of in (("minValues", bounds), ("maxValues", bounds), ("nullCount", counts)):
        values = stats.get(key)
        if values is None:
            continue
        if type(values) is not dict:
            return None, f"its add action has no valid stats.{key}"
        if (column := _stats_flaw(values, of)) is not None:
            return None, f"its add action has no valid stats.{key}.{printable(column)}"
    return stats, None


def _stats_flaw(values: dict, checks: dict) -> str | None:
    """The first column of `values` whose value its check refuses; columns the table does not
    have, or whose values delta-rs does not decode, are left alone, as delta-rs does."""
    for column, value in values.items():
        if value is not None and (check := checks.get(column)) is not None and not check(value):
            return column
    return None


# Delta's integer types, by the bits of their magnitude.
_INTEGERS = {"byte": 7, "short": 15, "integer": 31, "long": 63}


def _stat_checks(fields: list) -> tuple[dict, dict]:
    """The checks of the statistics of a schema's columns, each of a value other than null: per
    column, of its min and max values, and of its null count, as delta-rs decodes them. A bound of
    an integer column must be an integer in its range, of a boolean one a boolean, of a string one
    no object or list; a null count must be a count. Where delta-rs decodes no bound (timestamps,
    binary, arrays, maps), none is checked, as a writer may write them in forms of its own."""
    bounds, counts = {}, {}
    for field in fields:
        name, kind = field["name"], field["type"]
        if isinstance(kind, dict) and kind.get("type") == "struct":
            inner_bounds, inner_counts = _stat_checks(kind["fields"])
            bounds[name], counts[name] = _struct_check(inner_bounds), _struct_check(inner_counts)
            continue
        counts[name] = _count
        if not isinstance(kind, str):
            continue
        if kind in _INTEGERS:
            bounds[name] = _integer_check(_INTEGERS[kind])
        elif kind == "boolean":
            bounds[name] = _bool
        elif kind == "string":
            bounds[name] = _scalar
    return bounds, counts


def _integer_check(bits: int):
    low, high = -(1 << bits), (1 << bits) - 1
    return lambda value: type(value) is int and low <= value <= high


def _scalar(value) -> bool:
    return not isinstance(value, (dict, list))


def _struct_check(inner: dict):
    return lambda value: type(value) is dict and _stats_flaw(value, inner) is None


def _range(parsed, column: str | None) -> tuple | None:
    try:
        low, high = parsed["minValues"][column], parsed["maxValues"][column]
    except (KeyError, TypeError):
        try:
            if column and parsed["nullCount"][column] == parsed["numRecords"]:
                return ()
        except (KeyError, TypeError):
            pass
        return None
    if not isinstance(low, str) or not isinstance(high, str):
        return None
    # Writers may cut string statistics to a prefix of 32 characters (Delta's default), and a cut
    # maximum is below the values it stands for: a bound that long is not trusted to rule a key out.
    return (low, high) if len(low) < STRING_STATS and len(high) < STRING_STATS else None


# String statistics this long may be a writer's cut prefix (see `_range`; delta.py writes shorter).
STRING_STATS = 32


def _version_at(table: str, log: str, commits: dict[int, str], when_ms: int, infos: dict) -> int:
    # Commit times only grow with the version in a log written by one clock; the newest version
    # at or before the time is what deltalake's load_as_version picks as well.
    found = None
    for v in sorted(commits):
        actions = infos[v] = _read_commit(table, log, commits[v])
        stamp = _commit_info(actions).get("timestamp")
        if stamp is not None and int(stamp) <= when_ms:
            found = v
    if found is None:
        if _cleaned_up(commits):
            # The commits before the oldest kept one were removed by log clean-up: the time may be
            # one the store had a version at, which can no longer be read.
            raise StoreError(
                f"table {table} has no version committed at or before that time that can still be read "
                "(its log was cleaned up)"
            )
        raise _NoVersionYet(f"table {table} has no version committed at or before that time")
    return found


class _NoVersionYet(StoreError):
    """A time before a table's first commit (its log kept whole)."""


def _read_with_deltalake(location: str, table: str, version, as_of) -> TableFiles:
    from deltalake import DeltaTable  # object storage: delta-rs knows its protocols and credentials

    storage = storage_options_from_env()
    try:
        dt = DeltaTable(location, storage_options=storage or None)
        if as_of is not None:
            when = as_of if isinstance(as_of, datetime) else datetime.fromtimestamp(_ms(as_of) / 1000, timezone.utc)
            dt.load_as_version(when)
        elif version is not None:
            dt.load_as_version(version)
        protocol = dt.protocol()
        if protocol.min_reader_version > 1 or protocol.reader_features:
            raise UnsupportedTable(f"table {table} needs Delta reader features this reader refuses")
        check_schema_version(table, dict(dt.metadata().configuration or {}))
        metadata = {"schemaString": dt.schema().to_json()}
        info = dt.history(1)[0] if version is None and as_of is None else {}
        return TableFiles(
            table,
            location,
            dt.version(),
            int(info.get("timestamp") or 0),
            tuple(dt.file_uris()),
            _columns(metadata),
            info.get("imgdex.runId"),
        )
    except StoreError:
        raise
    except Exception as exc:
        raise StoreError(f"cannot read table {table} at {location}: {str(exc).splitlines()[0]}") from None


def storage_options_from_env() -> dict[str, str]:
    """delta-rs storage options for object storage, from IMGDEX_STORAGE_OPTIONS (a JSON object)."""
    text = os.environ.get("IMGDEX_STORAGE_OPTIONS")
    if not text:
        return {}
    try:
        options = json.loads(text)
    except (ValueError, RecursionError):
        raise StoreError("IMGDEX_STORAGE_OPTIONS is not a JSON object") from None
    if not isinstance(options, dict):
        raise StoreError("IMGDEX_STORAGE_OPTIONS is not a JSON object")
    return {str(k): str(v) for k, v in options.items()}


# ---- Delta types to DuckDB types: the log's own schema, so an empty table still has typed columns.

_PRIMITIVES = {
    "string": "VARCHAR",
    "long": "BIGINT",
    "integer": "INTEGER",
    "short": "SMALLINT",
    "byte": "TINYINT",
    "boolean": "BOOLEAN",
    "binary": "BLOB",
    "double": "DOUBLE",
    "float": "FLOAT",
    "date": "DATE",
    "timestamp": "TIMESTAMP WITH TIME ZONE",
    "timestamp_ntz": "TIMESTAMP",
}


def _duck_type(delta_type) -> str:
    if isinstance(delta_type, str):
        if delta_type in _PRIMITIVES:
            return _PRIMITIVES[delta_type]
        if delta_type.startswith("decimal"):
            return delta_type.upper()
        raise StoreError(f"unknown Delta type {delta_type}")
    kind = delta_type.get("type")
    if kind == "array":
        return f"{_duck_type(delta_type['elementType'])}[]"
    if kind == "map":
        return f"MAP({_duck_type(delta_type['keyType'])}, {_duck_type(delta_type['valueType'])})"
    if kind == "struct":
        fields = ", ".join(f'"{f["name"]}" {_duck_type(f["type"])}' for f in delta_type["fields"])
        return f"STRUCT({fields})"
    raise StoreError(f"unknown Delta type {kind}")


def _columns(metadata: dict) -> tuple[tuple[str, str], ...]:
    return _schema(metadata)[0]


def _schema(metadata: dict) -> tuple[tuple[tuple[str, str], ...], tuple[dict, dict]]:
    """The columns of a table's schema, (name, DuckDB type), and the checks of their statistics."""
    try:
        fields = json.loads(metadata["schemaString"])["fields"]
        return tuple((f["name"], _duck_type(f["type"])) for f in fields), _stat_checks(fields)
    except (KeyError, TypeError, ValueError, RecursionError):
        raise StoreError("a Delta table's schema cannot be read") from None


# ---- a whole store


def read_store(
    store: str,
    *,
    version: int | None = None,
    as_of: datetime | int | str | None = None,
    tables: tuple[str, ...] = TABLES,
    con=None,
) -> dict[str, TableFiles]:
    """The live files of each table of `store`.

    `as_of` applies to every table. `version` is a version of the images table; the other tables
    are read as they were when it was committed, and include the rest of its batch (a run commits
    each batch's images, then its tags, and its runs row after the last batch), so a version names
    one consistent state.
    """
    out: dict[str, TableFiles] = {}
    if version is not None and as_of is None:
        images = read_table(table_location(store, "images"), table="images", version=version, con=con)
        out["images"] = images
        mates = _mates(images) if is_local(images.location) else None
        for table in tables:
            if table != "images":
                out[table] = _same_run(table_location(store, table), table, images, con, mates)
        return {t: out[t] for t in tables}
    for table in ("images", *(t for t in tables if t != "images")):
        location = table_location(store, table)
        try:
            out[table] = read_table(location, table=table, as_of=as_of, con=con)
        except _NoVersionYet:
            if table == "images" or "images" not in out:
                raise
            # The first run makes the tables one after another: at a time between, a table made
            # after the images table did not exist yet, and held no rows. Read at its creation.
            out[table] = read_table(location, table=table, version=0, con=con)
    return {t: out[t] for t in tables}


def _mates(images: TableFiles):
    """Whether a commit of another table belongs with images version `images`: the same run and
    operation, and, for a batch, the tags of that batch, or the runs row once it was the run's last;
    for a compaction, the other tables' compaction of the same `compact`."""
    log = os.path.join(local_path(images.location), LOG_DIR)
    commits, _ = _list_log("images", log)
    info = commit_info("images", log, commits[images.version]) if images.version in commits else {}
    run, operation = info.get("imgdex.runId"), info.get("imgdex.operation")
    compaction = info.get("imgdex.compactionId")
    batches = _batches(info)
    # Workers of `index --jobs` share the run id: the run's last images commit may be any of theirs.
    last = (
        bool(run)
        and operation == "append"
        and not any(
            commit_info("images", log, commits[v]).get("imgdex.runId") == run for v in commits if v > images.version
        )
    )

    def mate(table: str, other: dict) -> bool:
        if compaction:
            # The tables are compacted in turn, and vacuum may then remove what each had before.
            return other.get("imgdex.compactionId") == compaction
        # A batch's tags committed late by a later run carry the run id of their batch, but come
        # after other runs' commits: matched by time alone, so those commits stay out.
        if not run or other.get("imgdex.runId") != run or other.get("imgdex.landedLate"):
            return False
        if other.get("imgdex.operation") != operation:
            return False
        if table == "runs" and operation == "append":
            return last
        # Commits written before batches were marked are matched by their run alone.
        return not batches or bool(batches & _batches(other))

    return mate


def _batches(info: dict) -> set[str]:
    """The batches whose data files a commit adds, from the names its metadata lists."""
    names = str(info.get("imgdex.files") or "").split(",")
    return {batch for batch in map(batch_of, names) if batch}


# The attempt a data file of images or tags was written by, in its name (see delta's `_write_parquet`).
_BATCH = re.compile(r"-b([0-9a-f]{32})-[0-9a-f]{32}\.zstd\.parquet$")


def batch_of(path: str) -> str | None:
    match = _BATCH.search(path)
    return match.group(1) if match else None


def _same_run(location: str, table: str, images: TableFiles, con, mates=None) -> TableFiles:
    if not is_local(location) or mates is None:
        return read_table(location, table=table, as_of=images.timestamp_ms, con=con)
    log = os.path.join(local_path(location), LOG_DIR)
    commits, _ = _list_log(table, log)
    chosen = None
    for v in sorted(commits):
        info = commit_info(table, log, commits[v])
        stamp = int(info.get("timestamp") or 0)
        if stamp <= images.timestamp_ms or mates(table, info):
            chosen = v
    if chosen is None:
        if 0 not in commits:
            # Log clean-up removed the commits of that time: the oldest one left is a newer state.
            raise StoreError(
                f"table {table}: its version at images version {images.version} can no longer be read "
                "(its log was cleaned up)"
            )
        # Made after that images commit (a store's tables are made images first): empty then.
        chosen = 0
    return read_table(location, table=table, version=chosen, con=con)


# ---- SQL over the files


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def versions_sql(files: TableFiles, *, positions: bool = False) -> str:
    """Every row version of the table (the raw Delta table), or no rows of its types when empty.
    `positions` adds each row's `filename` and `file_row_number`."""
    columns = list(files.columns) + ([("filename", "VARCHAR"), ("file_row_number", "BIGINT")] if positions else [])
    typed = ", ".join(f"NULL::{dtype} AS {_ident(name)}" for name, dtype in columns)
    if not files.files:
        return f"SELECT {typed} WHERE false"
    listed = ", ".join(_quote(p) for p in files.files)
    options = ", filename = true, file_row_number = true" if positions else ""
    if files.uniform:
        return f"SELECT * FROM read_parquet([{listed}], hive_partitioning = false{options})"
    # Some files predate a column: match columns by name, and take the table's own column list
    # first, so that a column no file has yet reads as NULL.
    return (
        f"SELECT {typed} WHERE false UNION ALL BY NAME "
        f"SELECT * FROM read_parquet([{listed}], hive_partitioning = false, union_by_name = true{options})"
    )


# Data files written by compaction are named so (see delta.py): together they hold at most one row
# per key, none of them tags-only, so a key that no later file touches needs no resolution.
COMPACTED_PREFIX = "compact-"


def _split(files: TableFiles) -> tuple[TableFiles, TableFiles]:
    """(compacted, appended): the files of the last compaction, and those appended since."""
    ranges = files.key_ranges if len(files.key_ranges) == len(files.files) else (None,) * len(files.files)
    pairs = list(zip(files.files, ranges, strict=True))

    def part(keep: bool) -> TableFiles:
        chosen = [(f, r) for f, r in pairs if os.path.basename(f).startswith(COMPACTED_PREFIX) == keep]
        return dataclasses.replace(files, files=tuple(f for f, _ in chosen), key_ranges=tuple(r for _, r in chosen))

    return part(True), part(False)


@dataclasses.dataclass(frozen=True)
class Compacted:
    """A table read after compaction, as SQL for the parts its current rows are made of (`resolved_sql`).

    The compacted files hold at most one row per key, none of them tags-only; their live rows are
    current unless a file appended since touches their key. Readers that know what they look for
    (`queries/listing.py`) query the parts apart, so that DuckDB can prune each by its statistics.
    """

    files: TableFiles
    versions: str  # every row of the compacted files, tombstones included
    recent: str | None  # every row version of the files appended since; None when there are none

    @property
    def keys(self) -> tuple[str, ...]:
        return RESOLUTION[self.files.table][0]

    @property
    def rows(self) -> str:
        """The live rows of the compacted files, every column."""
        return f"SELECT * FROM ({self.versions}) AS v WHERE NOT coalesce({TOMBSTONE}, false)"

    @property
    def touched(self) -> str | None:
        """The keys the appended files touch (distinct)."""
        return None if self.recent is None else f"SELECT DISTINCT {', '.join(self.keys)} FROM ({self.recent}) AS r"

    @property
    def untouched(self) -> str:
        """The live rows of the compacted files whose key no appended file touches: current rows."""
        if self.recent is None:
            return self.rows
        return f"SELECT * FROM ({self.rows}) AS v ANTI JOIN ({self.touched}) AS t USING ({', '.join(self.keys)})"

    def resolved(self, condition: str) -> str:
        """The current rows (public columns) of the keys that `condition`, SQL on the key columns
        alone, holds: resolved from every version of theirs, so DuckDB prunes each file by it."""
        versions = f"SELECT * FROM ({self.versions})"
        if self.recent is not None:
            versions += f" UNION ALL BY NAME SELECT * FROM ({self.recent})"
        return resolved_sql(self.files, f"(SELECT * FROM ({versions}) AS v WHERE {condition})")


def compacted_parts(files: TableFiles) -> Compacted | None:
    """The parts of a table with compacted files; None for one without, or for a table kept whole (runs)."""
    if files.table not in RESOLUTION:
        return None
    compacted, appended = _split(files)
    if not compacted.files:
        return None
    recent = versions_sql(appended) if appended.files else None
    return Compacted(files, versions_sql(compacted), recent)


def _resolved_after_compaction(files: TableFiles, parts: Compacted, columns: tuple[str, ...] | None) -> str:
    """The current rows, reading each key of the compacted files as it is unless an appended file
    touches it: only those keys (few, between two compactions) go through the resolution window."""
    names = columns or tuple(n for n, _ in files.columns if n not in VERSION_COLUMNS)
    public = ", ".join(_ident(n) for n in names)
    if parts.recent is None:
        return f"SELECT {public} FROM ({parts.rows}) AS v"
    key_list = ", ".join(parts.keys)
    touched = f"({parts.touched})"
    untouched = f"SELECT {public} FROM ({parts.untouched}) AS v"
    # Every version of a touched key, tombstones included: a young one may be what retires it.
    versions = (
        f"(SELECT v.* FROM ({parts.versions}) AS v SEMI JOIN {touched} AS t USING ({key_list}) "
        f"UNION ALL BY NAME SELECT * FROM ({parts.recent}) AS r)"
    )
    return f"{untouched} UNION ALL {resolved_sql(files, versions, names)}"


def resolved_sql(files: TableFiles, source: str | None = None, columns: tuple[str, ...] | None = None) -> str:
    """The current rows of the table: for images, per id the data row with the highest exactness,
    then the newest write (written_at, then run_id), with the tags of the id's newest row (data or
    tags-only); for tags, per (registry, name, tag) the newest claim.
    A winning tombstone removes the key. The store's own columns are left out. `source` replaces
    the table's files (any relation with the same columns); `columns` the columns returned."""
    if source is None and (parts := compacted_parts(files)) is not None:
        return _resolved_after_compaction(files, parts, columns)
    source = source or f"({versions_sql(files)})"
    if files.table not in RESOLUTION:
        # runs keeps every row, and its run_id is its own column
        names = columns or tuple(n for n, _ in files.columns)
        return f"SELECT {', '.join(_ident(n) for n in names)} FROM {source} AS v"
    names = columns or tuple(n for n, _ in files.columns if n not in VERSION_COLUMNS)
    public = ", ".join(_ident(n) for n in names)
    keys, order = RESOLUTION[files.table]
    partition = ", ".join(keys)
    if files.table == "images":
        tags = (
            f"first_value(tags) OVER (PARTITION BY {partition} ORDER BY {NEWEST} "
            "ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING) AS newest_tags"
        )
        public = ", ".join("newest_tags AS tags" if n == "tags" else _ident(n) for n in names)
        return (
            f"SELECT {public} FROM (SELECT *, {tags} FROM {source} AS v "
            f"QUALIFY row_number() OVER (PARTITION BY {partition} ORDER BY {order}) = 1) AS current "
            f"WHERE NOT coalesce({TOMBSTONE}, false) AND NOT coalesce({TAGS_ONLY}, false)"
        )
    return (
        f"SELECT {public} FROM (SELECT * FROM {source} AS v "
        f"QUALIFY row_number() OVER (PARTITION BY {partition} ORDER BY {order}) = 1) AS current "
        f"WHERE NOT coalesce({TOMBSTONE}, false)"
    )


# The current tags come from the images table, whose tags column every commit of a batch keeps
# whole: a run commits images before tags, so a run killed between the two leaves the tags table
# behind the images, never the other way, until the next batch commits the tags files it left
# (`DeltaStore._land_stray_tags`). The tags table is the log of claims (who claimed a tag,
# when, in which run), which is what "what did this tag point at last Tuesday" reads.
def current_tags_sql(images: str = "images") -> str:
    return f"SELECT registry, name, unnest(tags) AS tag, id AS image_id FROM {images}"


def view_statements(store_files: dict[str, TableFiles], *, versions: bool = True, current: bool = True) -> list[str]:
    """CREATE VIEW statements: TABLE_versions (every row version) and TABLE (current rows), or
    one kind of the two (the views of current rows read those of the versions)."""
    statements = []
    for table, files in store_files.items():
        if versions:
            statements.append(f"CREATE OR REPLACE VIEW {table}_versions AS {versions_sql(files)}")
        if not current:
            continue
        if table == "tags" and "images" in store_files:
            statements.append(f"CREATE OR REPLACE VIEW tags AS {current_tags_sql()}")
            continue
        statements.append(f"CREATE OR REPLACE VIEW {table} AS {resolved_sql(files)}")
    return statements


def all_files(store_files: dict[str, TableFiles]) -> list[str]:
    """Every file the views read: what a locked-down reader must be allowed to open."""
    return [path for files in store_files.values() for path in files.files]
