"""The store as three append-only Delta Lake tables (images, tags, runs), written through delta-rs.

    STORE/images/_delta_log/…   STORE/images/part-….parquet
    STORE/tags/_delta_log/…     STORE/tags/part-….parquet
    STORE/runs/_delta_log/…     STORE/runs/part-….parquet

Why append-only: delta-rs writes no deletion vectors, so any update or MERGE rewrites every file
holding a touched row; with ids spread uniformly by hashing, that is every file. A run therefore
appends new row versions, and readers resolve the current one per key (the SQL is
`deltalog.resolved_sql`, one window per table):

- images: per id, the data row with the highest `exactness` wins, then the newest `written_at`,
  then the greater `run_id`; the image's tags are those of its newest row, data or tags-only (a
  tag move appends a small tags-only row instead of the image again). A tombstone (an id replaced
  by an imported one) has exactness 127, so it retires the id for good.
- tags: per (registry, name, tag), the newest claim wins; a tombstone retires the tag.
- runs: every row stays.

Columns added to the Arrow schemas of `schema.py`: `written_at` (the attempt's time, later than
every row the attempt read), `run_id`, `tombstone`; images also get `content_hash` (DuckDB's hash
of the data columns, so that a run tells an unchanged record without reading it back; NULL in the
rows of a run that read nothing, such as the first load of a new store, which then never starts
DuckDB: a reader that needs the hash of such a row computes it from the row, and compaction stores
it),
`tags_only`, and `tags_written_at` (set by compaction when the tags came from a newer row than the
data). `images.created_at` is stored as TIMESTAMP(us, UTC) instead of TIMESTAMP_NS, because Spark
cannot read nanoseconds; `created` keeps the exact text.

Concurrent runs: each attempt reads a snapshot, derives its rows (`write_run(prepare)`), writes its
data files and commits each table at exactly the next version, after checking that no run that
committed since its snapshot wrote the same keys. An overlap makes the attempt start over from a
fresh snapshot, so the outcome equals running the runs one after another. Data files of an
attempt that did not commit are never referenced; `vacuum` removes them after the retention window.
A batch whose images commit landed and whose tags commit did not (a full disk, a kill between the
two) leaves its tags files, named with the attempt's mark as its images files are: the next batch
into the store from another DeltaStore, or `compact`, commits them (`_land_stray_tags`).

`compact` rewrites each table to one row per key (images: each file one range of ids, its rows in
list order in sorted runs; the other tables sorted by key; row-group statistics and a Bloom filter
on the key, so a lookup reads one row group) as one commit that
removes exactly the files it read; runs that commit meanwhile keep theirs, and of two compactions
at once the second starts over. `vacuum` then deletes files that left the table more than the
retention window ago (7 days by default): a reader holding an older file list keeps working for
that long.
"""

from __future__ import annotations

import array
import contextlib
import dataclasses
import errno
import json
import math
import os
import random
import re
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from deltalake import CommitProperties, DeltaTable, Field, PostCommitHookProperties
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError
from deltalake.transaction import AddAction, RemoveAction

from ..errors import SourceError, StoreError, first_line
from ..files import open_readable
from ..model import IMPORTED, one_image, shown
from . import arrow, deltalog, duck, schema, stored_rows
from .paths import delta_rs_refusal, local_folder
from .hashset import HashSet
from .stored_rows import KEY_COLUMNS, StoredRows
from .deltalog import CONTENT_HASH, RUN_ID, TAGS_ONLY, TAGS_WRITTEN_AT, TOMBSTONE, TOMBSTONE_EXACTNESS, WRITTEN_AT

if TYPE_CHECKING:  # imported when first connected: a run into a new store never needs it (~60 ms)
    import duckdb

TABLES = deltalog.TABLES
DEFAULT_RETENTION = timedelta(days=7)
# Vacuum deletes unreferenced files older than the retention, including those an attempt has
# written and not yet committed; below this, an ordinary slow run could lose its files.
MIN_RETENTION = timedelta(hours=1)
BATCH_ROWS = 50_000
# Row groups of appended files. Smaller ones cost a premerge less to fetch a stored row from.
ROW_GROUP_ROWS = 1024
# Compacted files: each holding one range of ids (images in list order within, see `_current_parts`;
# the other tables sorted by key), so that a lookup can open the one
# file whose id range (Delta statistics, `TableFiles.for_key`) holds its id. DuckDB spends ~10 us
# per row group of every file it opens even with footers cached, and decodes a page per column of
# the matching row group: at this row shape a lookup measured 3.5-4.4 ms in a file of 25-50k rows
# against 7 ms in one of 250k, whatever the row group size from 1,024 to 4,096 (256 cost more).
COMPACT_ROW_GROUP_ROWS = 2048
COMPACT_FILE_ROWS = 50_000
# Ids per sorted run of a compacted images file: what compaction sorts at once. Runs of 200,000
# ran out of the store's 512 MB of DuckDB memory at 1M images. Against files of 50,000 ids, a list
# page took ~5 % less CPU in files of 100,000 in two runs, ~15 % less in one run of 100,000.
COMPACT_RANGE_ROWS = 50_000
MAX_ATTEMPTS = 50

_UTC_US = pa.timestamp("us", tz="UTC")
_META = "imgdex."

# What a source knows of an image: the columns whose change makes a new version. Tags, the
# source and indexed_at (and created_at, derived from created) do not (as in writer.py).
DATA_COLUMNS = tuple(
    f.name
    for f in schema.IMAGES
    if f.name not in ("id", "tags", "source_kind", "source_path", "indexed_at", "created_at", "id_origin")
)


def _hash_sql(qualifier: str = "") -> str:
    """The content hash of a row in DuckDB: the same whether the row comes from Arrow or the files."""
    return "(hash(" + ", ".join(f'{qualifier}"{c}"' for c in DATA_COLUMNS) + ") >> 1)::BIGINT"


def _stored_hash_sql(qualifier: str = "") -> str:
    """The content hash a stored row keeps: NULL for a tombstone or a tags-only row, which hold no data."""
    return (
        f"CASE WHEN coalesce({qualifier}{TOMBSTONE}, false) OR coalesce({qualifier}{TAGS_ONLY}, false) "
        f"THEN NULL ELSE {_hash_sql(qualifier)} END"
    )


_HASH_SQL = _hash_sql()
KEYS = {"images": ("id",), "tags": ("registry", "name", "tag"), "runs": ("run_id",)}
# The images files also give the range of their names, which a run's tag question narrows by.
_STATS_COLUMNS = {"images": ("id", "name")}
_SORT = {"images": ("id",), "tags": ("registry", "name", "tag"), "runs": ("started_at", "run_id")}
# The order of compacted images within each run of a file: Image.List's default order (name, digest,
# then the id; `queries/listing.py`), so that a page's rows are neighbours.
_LIST_ORDER = "v.name, coalesce(v.digest, ''), v.id"


def _delta_schema(table: str) -> pa.Schema:
    fields = []
    for field in schema.TABLES[table]:
        if table == "images" and field.name == "created_at":
            field = pa.field("created_at", _UTC_US)
        fields.append(field)
    if table in ("images", "tags"):
        fields += [pa.field(WRITTEN_AT, _UTC_US), pa.field(RUN_ID, pa.string()), pa.field(TOMBSTONE, pa.bool_())]
    if table == "images":
        fields += [
            pa.field(CONTENT_HASH, pa.int64()),
            pa.field(TAGS_ONLY, pa.bool_()),
            pa.field(TAGS_WRITTEN_AT, _UTC_US),
        ]
    return pa.schema(fields)


DELTA_SCHEMAS = {table: _delta_schema(table) for table in TABLES}

# Retention here must not be shorter than what `vacuum` uses, or delta-rs refuses to vacuum.
TABLE_CONFIGURATION = {
    "delta.checkpointInterval": "20",
    "delta.logRetentionDuration": "interval 30 days",
    "delta.deletedFileRetentionDuration": "interval 7 days",
}

# Statistics only where a reader filters: the key, and what orders versions. Min/max of raw JSON
# would bloat every footer that a cold lookup parses.
_STATISTICS = {
    "images": ["id", "registry", "name", "digest", "config_digest", "exactness", WRITTEN_AT, RUN_ID, TOMBSTONE],
    "tags": ["registry", "name", "tag", "image_id", WRITTEN_AT, RUN_ID, TOMBSTONE],
    "runs": ["run_id", "started_at"],
}
# The columns the resolution rule reads (deltalog.resolved_sql), with the tags it keeps.
_RESOLVED = "id, exactness, tags, written_at, run_id, tombstone, tags_only, tags_written_at"
# Up to this many keys go into a query as constants (see Snapshot.key_filter); past about a
# thousand, DuckDB's join with a registered table is faster (5,000 ids at 1M images: 0.28 s as
# constants, 0.13 s joined; one id: alike).
_LITERAL_KEYS = 1_000
# Images whose keys a DeltaStore keeps in memory (OwnRows): ~12 bytes a key (id, digest, each tag)
# past 131,072 of a kind (hashset.py): ~75 MB for 2M images with a tag each.
MAX_OWN_KEYS = 2_000_000
# `_seed`: a store of up to this many data files (images and tags) and images rows is read for
# its keys when a run starts.
SEED_FILES = 256
SEED_ROWS = 50_000
# The key columns of one file at most, by the decompressed size its metadata declares (a run's
# file of 5,000 images declares well under 1 MB of them).
SEED_FILE_BYTES = 64 << 20
_BLOOM = {"images": ("id",), "tags": ("image_id",)}
_NO_DICTIONARY = {"images": {"id", "digest", "config_id", "config_digest", "manifest_raw", "config_raw", "created"}}


# ---- conversions into the Delta schemas


def _cast(table: str, data: pa.Table) -> pa.Table:
    target = DELTA_SCHEMAS[table]
    columns = []
    for field in target:
        if field.name in data.column_names:
            column = data.column(field.name)
            if field.name == "created_at" and column.type.unit == "ns":
                column = pa.chunked_array([_floor_micros(chunk) for chunk in column.chunks], _UTC_US)
            # A cast, even to the same type, would import pyarrow.compute (see arrow.py).
            columns.append(column if column.type == field.type else column.cast(field.type))
        else:
            columns.append(pa.chunked_array([pa.nulls(len(data), field.type)], field.type))
    return pa.Table.from_arrays(columns, schema=target)


def _floor_micros(nanos: pa.Array) -> pa.Array:
    """timestamp[ns] (UTC) as timestamp[us, UTC], floored: a time before 1970 keeps its microsecond."""
    values = nanos.view(pa.int64()).to_pylist()
    return arrow.int64s([None if v is None else v // 1000 for v in values]).view(_UTC_US)


def _as_table(data) -> pa.Table:
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    raise StoreError(f"expected Arrow tables or record batches, got {type(data).__name__}")


def _batches(data) -> Iterator[pa.Table]:
    if data is None:
        return
    if isinstance(data, (pa.Table, pa.RecordBatch)):
        yield _as_table(data)
        return
    if isinstance(data, pa.RecordBatchReader):
        for batch in data:
            yield pa.Table.from_batches([batch])
        return
    for item in data:
        yield _as_table(item)


def image_tombstones(ids: Sequence[str]) -> pa.Table:
    """Rows that retire `ids` (ids replaced by another): no data, exactness 127."""
    n = len(ids)
    return arrow.table(
        {
            "id": arrow.strings(list(ids)),
            "exactness": arrow.int8s([TOMBSTONE_EXACTNESS] * n),
            TOMBSTONE: arrow.bools([True] * n),
        }
    )


def tag_tombstones(keys: Sequence[tuple[str, str, str]]) -> pa.Table:
    """Rows that retire (registry, name, tag) keys: the tag vanished from its repository."""
    return arrow.table(
        {
            "registry": arrow.strings([k[0] for k in keys]),
            "name": arrow.strings([k[1] for k in keys]),
            "tag": arrow.strings([k[2] for k in keys]),
            TOMBSTONE: arrow.bools([True] * len(keys)),
        }
    )


# ---- what a run hands in


@dataclasses.dataclass
class Changes:
    """What one attempt of a run appends. Images and tags come as Arrow tables or record batches
    (an iterable is consumed once per attempt, so a large load streams) in the columns of
    `schema.IMAGES` / `schema.TAGS`; created_at may be TIMESTAMP_NS or already TIMESTAMP(us, UTC).
    Each key at most once per run."""

    images: object = None
    image_tags: pa.Table | None = None  # id, tags: new tag lists of images whose data stays
    retired_images: Sequence[str] = ()
    tags: object = None
    retired_tags: Sequence[tuple[str, str, str]] = ()


@dataclasses.dataclass(frozen=True)
class RunResult:
    run_id: str
    versions: dict  # table -> version committed by this run, or None when it wrote nothing there
    rows: dict  # table -> rows appended (tombstones included)
    attempts: int


@dataclasses.dataclass(frozen=True)
class HistoryEntry:
    table: str
    version: int
    time: datetime
    operation: str  # append, compact, create, vacuum, or delta-rs's own name for other commits
    run_id: str | None
    rows: int | None
    tombstones: int | None


class Conflict(Exception):
    """A commit made since the attempt's snapshot touched the same keys."""


# ---- reading a snapshot, for runs that merge with what is stored


@dataclasses.dataclass
class OwnRows:
    """What one DeltaStore has committed itself: its data files and the keys their rows hold. While
    every live file of the images and tags tables is among them (a store this process created, and
    no other process wrote since), a question about keys none of them holds has an empty answer,
    known without reading a file; a run into a new store then never starts DuckDB to read.

    Keys are kept as their `hash()`, a 64-bit int, in a `HashSet`: about 12 bytes a key once large (a
    Python set took ~76 bytes), so the keys of a 1M-image run fit in ~40 MB and no batch has to scan
    the files it wrote before (which made long runs quadratic). A hash shared by two keys only sends a
    question to the files. The tag of a row with no name (a tags-only row) is kept alone, so any
    image's claim of that tag goes to the files. Beyond MAX_OWN_KEYS images it stops keeping keys,
    and every question goes to the files."""

    files: set = dataclasses.field(default_factory=set)  # absolute paths
    ids: HashSet = dataclasses.field(default_factory=HashSet)  # hash(id)
    digests: HashSet = dataclasses.field(default_factory=HashSet)  # hash(digest)
    tags: HashSet = dataclasses.field(default_factory=HashSet)  # hash((registry, name, tag)), hash(tag) when unnamed
    latest_written_at: datetime | None = None
    complete: bool = True  # False once the keys were dropped

    @staticmethod
    def hashes(piece: pa.Table) -> tuple[array.array, array.array, array.array]:
        """The key hashes (ids, digests, tags) of images rows that `add` takes once they commit: 8
        bytes a key, where the rows' columns would take ten times that until the commit."""
        columns = [piece.column(c).to_pylist() for c in ("id", "digest", "registry", "name", "tags")]
        ids = array.array("q", map(hash, columns[0]))
        digests = array.array("q", [hash(d) for d in columns[1] if d is not None])
        tag_keys = array.array("q")
        for registry, name, image_tags in zip(*columns[2:], strict=True):
            if not image_tags:
                continue
            if registry is None or name is None:
                tag_keys.extend(map(hash, image_tags))
            else:
                tag_keys.extend([hash((registry, name, tag)) for tag in image_tags])
        return ids, digests, tag_keys

    def add(self, table: str, paths: Sequence[str], written: Sequence[tuple] | None, written_at: datetime) -> None:
        """The files of a commit, and the key hashes (`hashes`) of its images rows; None when the
        run wrote more than MAX_OWN_KEYS images."""
        self.files.update(paths)
        if self.latest_written_at is None or written_at > self.latest_written_at:
            self.latest_written_at = written_at
        if table != "images" or not self.complete:
            return
        if written is None:
            self.drop_keys()
            return
        for ids, digests, tag_keys in written:
            self.ids.update(ids.tolist())
            self.digests.update(digests.tolist())
            self.tags.update(tag_keys.tolist())
        if len(self.ids) > MAX_OWN_KEYS:
            self.drop_keys()

    def drop_keys(self) -> None:
        self.complete = False
        self.ids, self.digests, self.tags = HashSet(), HashSet(), HashSet()

    def may_hold(self, column: str, values) -> bool:
        if column == "tag":
            held = self.tags
            return any(hash(key) in held or hash(key[2]) in held for key in values)
        held = self.ids if column == "id" else self.digests
        return any(hash(value) in held for value in values)

    def covers(self, files: dict[str, deltalog.TableFiles]) -> bool:
        return self.complete and all(
            set(files[table].files) <= self.files for table in ("images", "tags") if table in files
        )


def _first_gone(files: dict[str, deltalog.TableFiles]) -> str | None:
    """The first data file `files` lists that is no longer there."""
    for table_files in files.values():
        for path in table_files.files:
            if not os.path.exists(path):
                return path
    return None


class Snapshot:
    """The store at fixed versions, over DuckDB: views `images`, `tags`, `runs` (current rows) and
    `TABLE_versions` (every row version). What a run reads to decide what it appends.

    DuckDB starts when first asked: with `own` (the rows of a store one process wrote alone), the
    questions about keys the store does not hold are answered without it."""

    def __init__(
        self, files: dict[str, deltalog.TableFiles], con, own: OwnRows | None = None, rows: StoredRows | None = None
    ):
        self.files = files
        connect = con if callable(con) else (lambda: con)
        self._read = False

        def connected() -> duckdb.DuckDBPyConnection:
            self._read = True
            return connect()

        self._connect = connected
        self._con = None
        self._current_views = False
        self.own = own if own is not None and own.covers(files) else None
        # The seeded rows of a small store answer for it while they are all of its images files.
        images = frozenset(files["images"].files if "images" in files else ())
        self.rows = rows if self.own is not None and rows is not None and rows.paths == images else None

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        """DuckDB with every view: TABLE_versions and TABLE."""
        con = self.versions_con
        if not self._current_views:
            for statement in deltalog.view_statements(self.files, versions=False):
                con.execute(statement)
            self._current_views = True
        return con

    @property
    def versions_con(self) -> duckdb.DuckDBPyConnection:
        """DuckDB with the views TABLE_versions only: all that a run reads (DuckDB binds a view when
        it is created, and the views of current rows cost ~10 ms that a small run felt)."""
        if self._con is None:
            con = self._connect()
            for statement in deltalog.view_statements(self.files, current=False):
                con.execute(statement)
            self._con = con
        return self._con

    @property
    def has_read(self) -> bool:
        """Whether DuckDB was started for this snapshot: to read the store's files, or to compute."""
        return self._read

    @property
    def hashing_con(self) -> duckdb.DuckDBPyConnection:
        """A connection for computing, not reading: no views needed."""
        return self._con if self._con is not None else self._connect()

    def may_hold(self, column: str, values) -> bool:
        """False when no row version of the images table has one of `values` in `column` (id,
        digest, or (registry, name, tag) for "tag"), as far as is known without reading a file."""
        return self.own is None or self.own.may_hold(column, values)

    @property
    def versions(self) -> dict[str, int]:
        return {table: f.version for table, f in self.files.items()}

    def key_filter(self, column: str, values: Sequence[str], table: str) -> str:
        """A filter on `column`: constants for a short list, which DuckDB pushes into the Parquet
        scan (min/max and Bloom filters skip row groups), else a semi-join with registered keys."""
        values = list(dict.fromkeys(v for v in values if v is not None))
        if len(values) <= _LITERAL_KEYS:
            return f"{column} IN ({', '.join(_quote(v) for v in values) or 'NULL'})"
        self._connect().register(table, arrow.table({column: arrow.strings(values)}))
        return f"{column} IN (SELECT {column} FROM {table})"

    def versions_of(
        self, ids: list[str], columns: str, *, held: bool = False
    ) -> tuple[deltalog.TableFiles, str] | None:
        """The images files that may hold `ids`, by the id ranges in the log, and SQL for the
        `columns` of those ids' row versions in them; None when the store holds none of them. A
        store of many small runs then opens a file or two, not every file, for a run's few
        images. Unless the ids are known to be `held`, those the files hold are first found from
        the id column alone: a run's new images, most of a large run, then cost no read of the
        wider columns (0.16 s for 1,000 new ids at 1M images, against 0.03 s)."""
        files = self.files["images"].holding(ids)
        if not files.files:
            return None
        where = self.key_filter("id", ids, "wanted_ids")
        if not held:
            found = self._connect().execute(f"SELECT DISTINCT id FROM ({deltalog.versions_sql(files)}) WHERE {where}")
            present = [row[0] for row in found.fetchall()]
            if not present:
                return None
            if len(present) < len(set(ids)):
                files = files.holding(present)
                where = self.key_filter("id", present, "held_ids")
        return files, f"(SELECT {columns} FROM ({deltalog.versions_sql(files)}) WHERE {where})"

    def current_of(self, ids: list[str], columns: tuple[str, ...], *, held: bool = False) -> str | None:
        """SQL for the current rows, in `columns`, of those of `ids` that the store holds; None
        when it holds none (see `versions_of`)."""
        read = ", ".join(dict.fromkeys([*_RESOLVED.split(", "), *columns]))
        versions = self.versions_of(ids, read, held=held)
        return None if versions is None else deltalog.resolved_sql(*versions, columns=columns)

    def image_state(self, ids: Sequence[str] | pa.Array, *, hashed: Iterable[str] | None = None) -> pa.Table:
        """id, exactness, content_hash, tags and what the id names (registry, name, digest) of the
        current rows of `ids` that exist; reads only those narrow columns, so it stays cheap on a
        large table. The content hash is there for the ids of `hashed` (all when None); the others'
        may be null."""
        ids = ids.to_pylist() if isinstance(ids, (pa.Array, pa.ChunkedArray)) else list(ids)
        if not self.may_hold("id", ids):
            return arrow.empty(_IMAGE_STATE)
        if self.rows is not None and (state := self.rows.state(ids, hashed)) is not None:
            return arrow.rows_table(state, _IMAGE_STATE)
        sql = self.current_of(ids, tuple(_IMAGE_STATE.names))
        if not sql:
            return arrow.empty(_IMAGE_STATE)
        state = _arrow(self._connect(), sql)
        hashes = state.column(CONTENT_HASH)
        if not hashes.null_count:
            return state
        # Rows written without a hash (see premerge): computed from their data columns, a second
        # query over those rows alone, as the writer would have computed it.
        hashes, held = hashes.to_pylist(), state.column("id").to_pylist()
        asked = None if hashed is None else set(hashed)
        lacking = [i for i, h in zip(held, hashes, strict=True) if h is None and (asked is None or i in asked)]
        if not lacking:
            return state
        rows = self.current_of(lacking, ("id", *DATA_COLUMNS), held=True)
        found = dict(self._connect().execute(f"SELECT id, {_HASH_SQL} FROM ({rows})").fetchall()) if rows else {}
        filled = arrow.int64s([found.get(i) if h is None else h for i, h in zip(held, hashes, strict=True)])
        return state.set_column(state.schema.get_field_index(CONTENT_HASH), CONTENT_HASH, filled)

    def same_data(self, incoming: pa.Table) -> set[str]:
        """The ids of `incoming` (rows of `schema.IMAGES` as premerge casts them) whose current
        stored row holds the same data, as far as the rows of a small store tell without DuckDB;
        the others are compared by content hash."""
        if self.rows is None or not len(incoming) or not self.may_hold("id", incoming.column("id").to_pylist()):
            return set()
        return self.rows.same_data(incoming, DATA_COLUMNS) or set()

    def current_images(self, where: str, columns: tuple[str, ...]) -> str:
        """SQL for the current rows, in `columns`, of the images that have a row version matching
        `where` (SQL over the images columns). The ids come first from a scan of the columns
        `where` reads, then only their versions are resolved, so its cost follows the matches,
        not the table (the `images` view would rank every row of an uncompacted table)."""
        return deltalog.resolved_sql(
            self.files["images"],
            f"(SELECT * FROM images_versions WHERE id IN (SELECT id FROM images_versions WHERE {where}))",
            columns=columns,
        )

    def images(self, ids: Sequence[str] | pa.Array) -> pa.Table:
        """The current rows of `ids` that exist, in the columns of `schema.IMAGES`."""
        ids = ids.to_pylist() if isinstance(ids, (pa.Array, pa.ChunkedArray)) else list(ids)
        versions = self.may_hold("id", ids) and self.versions_of(ids, "*")
        if not versions:
            return arrow.empty(schema.IMAGES)
        return _arrow(self._connect(), deltalog.resolved_sql(*versions)).select([f.name for f in schema.IMAGES])

    def source_tags(self, kind: str, location: str) -> list[tuple[str, str, str]]:
        """(registry, name, tag) of every tag held by the current images whose record is that of
        the source `kind` at `location` (the source of the data row that wins: a more exact record
        of the image from elsewhere makes it that source's), sorted."""
        if self.rows is not None and (found := self.rows.source_tags(kind, location)) is not None:
            return found
        where = "source_kind = ? AND source_path = ?"
        images = self.current_images(where, ("registry", "name", "tags", "source_kind", "source_path"))
        sql = f"SELECT registry, name, unnest(tags) FROM ({images}) WHERE {where} ORDER BY 1, 2, 3"
        return [tuple(row) for row in self.versions_con.execute(sql, [kind, location] * 2).fetchall()]

    def tag_holders(self, keys: pa.Table) -> pa.Table:
        """registry, name, tag, image_id of the current claims among `keys` (registry, name, tag)."""
        keys = keys.select(["registry", "name", "tag"])
        columns = [keys.column(c).to_pylist() for c in ("registry", "name", "tag")]
        if not self.may_hold("tag", zip(*columns)):
            return arrow.empty(schema.TAGS)
        if self.rows is not None and (held := self.rows.tag_holders(list(zip(*columns)))) is not None:
            return arrow.table({c: arrow.strings([h[i] for h in held]) for i, c in enumerate(schema.TAGS.names)})
        # Read from the images that carry these names, as readers see tags (deltalog.current_tags_sql):
        # the ids of the names first, by a scan of the name column of the files whose name range
        # holds one, then the current rows of those ids only. In one query, DuckDB read every
        # column of every file to find those ids.
        con = self._connect()
        names = keys.column("name").to_pylist()
        named = self.files["images"].holding(names, column="name")
        if not named.files:
            return arrow.empty(schema.TAGS)
        where = self.key_filter("name", names, "wanted_names")
        found = _arrow(con, f"SELECT DISTINCT id FROM ({deltalog.versions_sql(named)}) WHERE {where}")
        wanted = _RESOLVED + ", registry, name"
        if len(found) > _LITERAL_KEYS:
            # The names of large repositories: their ids are joined in DuckDB, not listed in Python.
            con.register("holder_ids", found)
            whole = self.files["images"]
            versions = (
                whole,
                (f"(SELECT {wanted} FROM ({deltalog.versions_sql(whole)}) WHERE id IN (SELECT id FROM holder_ids))"),
            )
        else:
            versions = self.versions_of(found.column("id").to_pylist(), wanted, held=True) if len(found) else None
        if versions is None:
            return arrow.empty(schema.TAGS)
        images = deltalog.resolved_sql(*versions, columns=("id", "registry", "name", "tags"))
        con.register("wanted_keys", keys)
        try:
            sql = (
                f"SELECT registry, name, tag, image_id FROM ({deltalog.current_tags_sql(f'({images})')}) "
                "WHERE (registry, name, tag) IN (SELECT (registry, name, tag) FROM wanted_keys)"
            )
            return _arrow(con, sql)
        finally:
            con.unregister("wanted_keys")
            if len(found) > _LITERAL_KEYS:
                con.unregister("holder_ids")

    def latest_written_at(self) -> datetime | None:
        if self.own is not None:
            return self.own.latest_written_at
        return _newest_written(
            self._connect, [p for t in ("images", "tags") if t in self.files for p in self.files[t].files]
        )


# ---- the store


class DeltaStore:
    """One store folder (or object-storage prefix) of three Delta tables."""

    def __init__(
        self,
        store: str,
        *,
        storage_options: dict[str, str] | None = None,
        batch_rows: int = BATCH_ROWS,
        row_group_rows: int = ROW_GROUP_ROWS,
        compact_row_group_rows: int = COMPACT_ROW_GROUP_ROWS,
        memory_limit: str = "512MB",
        temp_directory: str | None = None,
    ):
        self.store = store.rstrip("/") if "://" in store else os.path.abspath(store)
        # Refused before anything is made: delta-rs fails each call on such a path (a run would
        # blame every image), or makes a table at one path and looks for it at another.
        folder = local_folder(self.store)
        reason = None if folder is None else delta_rs_refusal(folder)
        if reason is not None:
            raise StoreError(f"store {self.store}: its path holds {reason}; choose another folder")
        self.storage_options = storage_options if storage_options is not None else (deltalog.storage_options_from_env())
        self.batch_rows = batch_rows
        self.row_group_rows = row_group_rows
        self.memory_limit = memory_limit
        self.compact_range_rows = COMPACT_RANGE_ROWS
        self.compact_row_group_rows = compact_row_group_rows
        self.temp_directory = temp_directory
        self._fs, self._root = self._filesystem()
        self._con: duckdb.DuckDBPyConnection | None = None
        self._own = OwnRows()
        # Whether to look for the tags files of a half-landed batch (`_land_stray_tags`): once, at
        # the first batch into a store this object did not write alone, and again after a batch of
        # its own lost its tags commit.
        self._seek_strays = True
        self._own_strays = False
        self._seeded = False  # OwnRows came from the store's files (`_seed`), not from commits
        self._stored_rows: StoredRows | None = None  # their rows, while they are the whole store
        # What the caller should be told but that fails nothing: `take_notes` hands them over.
        self.notes: list[str] = []

    def take_notes(self) -> list[str]:
        taken, self.notes = self.notes, []
        return taken

    # -- plumbing

    def _filesystem(self) -> tuple[pafs.FileSystem, str]:
        if deltalog.is_local(self.store):
            return pafs.LocalFileSystem(), deltalog.local_path(self.store)
        try:
            return pafs.FileSystem.from_uri(self.store)
        except (pa.ArrowInvalid, OSError) as exc:
            raise StoreError(f"cannot open store {self.store}: {str(exc).splitlines()[0]}") from None

    def _relative(self, table: str, path: str) -> str:
        # A data file's path as its table's log names it: relative to the table's folder.
        for prefix in (self._table_dir(table), self.location(table)):
            prefix = prefix.rstrip("/") + "/"
            if path.startswith(prefix):
                return path[len(prefix) :]
        for prefix in (self._table_dir(table), self.location(table)):
            marker = prefix.rstrip("/").rsplit("://", 1)[-1] + "/"
            if marker in path:
                return path.split(marker, 1)[1]
        raise StoreError(f"data file {path} is outside table {table}")

    def location(self, table: str) -> str:
        return deltalog.table_location(self.store, table)

    def _table_dir(self, table: str) -> str:
        return f"{self._root.rstrip('/')}/{table}"

    def _delta(self, table: str, version: int | None = None) -> DeltaTable:
        special = deltalog.special_last_checkpoint(self.location(table), table)
        if special is not None:
            raise StoreError(special)
        try:
            return DeltaTable(self.location(table), version=version, storage_options=self.storage_options or None)
        except TableNotFoundError:
            raise StoreError(f"store {self.store} has no {table} table; create it first") from None
        except (DeltaError, OSError) as exc:
            self._explain_unopened(table, version)
            raise StoreError(f"cannot open table {table} of {self.store}: {first_line(exc)}") from None

    def _explain_unopened(self, table: str, version: int | None) -> None:
        """Raise what this store's own log reader says of a table delta-rs would not open, if it
        says anything: it names the commit or checkpoint and the reason ("Permission denied",
        "cut short"), where delta-rs says "Generic LocalFileSystem error" or "Corrupt footer"."""
        if not deltalog.is_local(self.location(table)):
            return
        # Opened only here, on a failure: the log reader needs DuckDB for a checkpoint.
        deltalog.read_table(self.location(table), table=table, version=version, con=self._duckdb)
        flaw = deltalog.last_checkpoint_flaw(self.location(table), table)
        if flaw is not None:
            raise StoreError(flaw)

    def _duckdb(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            config = {"memory_limit": self.memory_limit, "threads": max(1, min(4, os.cpu_count() or 1))}
            # Sorting a large table for compaction spills here; DuckDB's default is a folder in the
            # working directory.
            config["temp_directory"] = self.temp_directory or os.path.join(
                tempfile.gettempdir(), f"imgdex-spill-{os.getpid()}"
            )
            self._con = duck.connect(config=config)
            self._con.execute("SET TimeZone = 'UTC'")
        return self._con

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None
            if not self.temp_directory:
                with contextlib.suppress(OSError):  # DuckDB removed its files; the folder is ours
                    os.rmdir(os.path.join(tempfile.gettempdir(), f"imgdex-spill-{os.getpid()}"))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- creation

    def exists(self) -> bool:
        """Whether every table exists; StoreError when one was written by a newer imgdex."""
        if not all(DeltaTable.is_deltatable(self.location(t), self.storage_options or None) for t in TABLES):
            return False
        self._check_schema_versions(TABLES)
        return True

    def _check_schema_versions(self, tables: Sequence[str]) -> None:
        for table in tables:
            deltalog.check_schema_version(table, dict(self._delta(table).metadata().configuration or {}))

    def create(self, run_id: str = "") -> None:
        """Create whichever tables do not exist yet. Safe when several processes do it at once.
        `run_id` marks the commits, so that a run that fails before landing anything can tell the
        tables it made from those of another run (`made_only_by`)."""
        for table in TABLES:
            location = self.location(table)
            if DeltaTable.is_deltatable(location, self.storage_options or None):
                self._add_new_columns(table)
                continue
            try:
                if deltalog.is_local(location):
                    os.makedirs(deltalog.local_path(location), exist_ok=True)
                DeltaTable.create(
                    location,
                    DELTA_SCHEMAS[table],
                    mode="ignore",
                    name=table,
                    configuration=TABLE_CONFIGURATION,
                    storage_options=self.storage_options or None,
                    commit_properties=_creation_properties("create", run_id),
                )
            except (CommitFailedError, DeltaError) as exc:
                # another process created it first
                if not DeltaTable.is_deltatable(location, self.storage_options or None):
                    raise StoreError(f"cannot create table {table} in {self.store}: {first_line(exc)}") from None
            except OSError as exc:
                raise StoreError(f"cannot create table {table} in {self.store}: {_cause(exc)}") from None
            self._mark_schema_version(table, run_id)

    def _mark_schema_version(self, table: str, run_id: str = "") -> None:
        # delta-rs refuses properties it does not know at creation, but sets them afterwards. Another
        # process that found the table made may already append to it, and a commit of its makes
        # this one fail: then try again on the newer version.
        failure = None
        for _ in range(MAX_ATTEMPTS):
            dt = self._delta(table)
            if deltalog.SCHEMA_VERSION_PROPERTY in (dt.metadata().configuration or {}):
                return
            try:
                dt.alter.set_table_properties(
                    {deltalog.SCHEMA_VERSION_PROPERTY: str(deltalog.SCHEMA_VERSION)},
                    raise_if_not_exists=False,
                    commit_properties=_creation_properties("schema-version", run_id),
                )
                return
            except (CommitFailedError, DeltaError) as exc:
                failure = exc
        raise StoreError(f"cannot create table {table} in {self.store}: {first_line(failure)}") from None

    def made_only_by(self, table: str, run_id: str) -> bool:
        """Whether table `table` holds nothing but what `create(run_id)` wrote into it, or nothing at
        all: no commit of another run, no data file but those of run `run_id` that no commit took,
        nothing else. Local stores only."""
        folder = deltalog.local_path(self.location(table))
        try:
            # A process of the run stopped mid-batch (a worker of `index --jobs` ended when another
            # failed) leaves its data files uncommitted: they hold nothing of the store.
            names = [name for name in os.listdir(folder) if not (run_id and _run_mark(run_id) in name)]
            if not names:
                return True
            if names != [deltalog.LOG_DIR]:
                return False
            log = os.path.join(folder, deltalog.LOG_DIR)
            names = os.listdir(log)
            return all(name in _CREATION_COMMITS and _created_by(table, log, name, run_id) for name in names)
        except FileNotFoundError:
            return not os.path.lexists(folder)
        except OSError:
            return False

    def remove_creation(self, table: str, run_id: str = "") -> None:
        """Delete what `create` wrote of table `table` and the uncommitted data files of run `run_id`
        (see `made_only_by`), newest commit first: a deletion that stops halfway leaves a log that
        still starts at version 0. OSError when it cannot."""
        folder = deltalog.local_path(self.location(table))
        log = os.path.join(folder, deltalog.LOG_DIR)
        if run_id and os.path.isdir(folder):
            for name in os.listdir(folder):
                if _run_mark(run_id) in name:
                    os.unlink(os.path.join(folder, name))
        if os.path.isdir(log):
            for name in sorted(os.listdir(log), reverse=True):
                if name in _CREATION_COMMITS:
                    os.unlink(os.path.join(log, name))
            os.rmdir(log)
        if os.path.isdir(folder):
            os.rmdir(folder)

    def _add_new_columns(self, table: str) -> None:
        """Columns added to `schema.py` since the table was created are added to it (files written
        before read them as NULL); any other difference is refused rather than guessed at."""
        dt = self._delta(table)
        stored = {f.name: f.type for f in pa.schema(dt.schema().to_arrow())}
        missing = [f for f in DELTA_SCHEMAS[table] if f.name not in stored]
        if not missing:
            return
        try:
            dt.alter.add_columns([Field.from_arrow(f) for f in missing])
            # Files written before now lack the new columns: readers match columns by name until
            # compaction has rewritten them all.
            self._delta(table).alter.set_table_properties({deltalog.MIXED_SCHEMAS: "true"}, raise_if_not_exists=False)
        except (CommitFailedError, DeltaError) as exc:
            latest = {f.name for f in pa.schema(self._delta(table).schema().to_arrow())}
            if not all(f.name in latest for f in missing):  # else another process added them first
                raise StoreError(f"cannot add columns to table {table}: {first_line(exc)}") from None

    # -- reading

    def files(self, *, version: int | None = None, as_of=None) -> dict[str, deltalog.TableFiles]:
        # A checkpoint is read with DuckDB, through this store's connection, opened only then (the
        # log alone needs none): a connection of its own per table cost ~10 ms each.
        return deltalog.read_store(self.store, version=version, as_of=as_of, con=self._duckdb)

    def snapshot(
        self, *, version: int | None = None, as_of=None, run_id: str = "", seed: bool | Callable[[], set[str]] = False
    ) -> Snapshot:
        """The store at `version` (or `as_of`), else now. With `run_id`, the files other processes of
        that run added since are first read for their keys (`_absorb`); with `seed`, those of a small
        store this object has not written to yet (`_seed`), unless many of the batch's ids (`seed()`)
        may be stored."""
        files = self.files(version=version, as_of=as_of)
        if version is not None or as_of is not None:
            return Snapshot(files, self._duckdb)
        if seed:
            self._seed(files, None if seed is True else seed)
        if run_id:
            self._absorb(files, run_id)
        snapshot = Snapshot(files, self._duckdb, self._own, self._stored_rows)
        if snapshot.rows is None:
            self._stored_rows = None  # the store moved on (a commit since): the files answer
        return snapshot

    def _seed(self, files: dict[str, deltalog.TableFiles], ids: Callable[[], set[str]] | None = None) -> None:
        """Before this object's first commit into a small store that others wrote, take the keys of
        all its files into OwnRows (five narrow columns each), so that a run's questions about keys
        the store does not hold are answered from memory, and those about keys it holds from these
        rows (`StoredRows`: a moved tag, an image indexed again). Without them every batch asks
        DuckDB, which a one-image run pays ~0.1 s to start, while reading a few hundred small files
        with pyarrow costs a few milliseconds. A larger store, or any file that cannot be read,
        leaves the questions to the files, as before."""
        own = self._own
        if own.files or not own.complete or not deltalog.is_local(self.store):
            return
        paths = {table: files[table].files for table in ("images", "tags") if table in files}
        if not paths.get("images") or sum(map(len, paths.values())) > SEED_FILES:
            return
        # The log's row counts rule out a large store of few files before one is opened (each file's
        # own count is checked as it is read, for a log that says none or less).
        counts = files["images"].row_counts
        if len(counts) == len(paths["images"]) and sum(c or 0 for c in counts) > SEED_ROWS:
            return
        # A batch of many stored images is compared by DuckDB's content hashes (see MAX_COMPARED):
        # its keys would be read for nothing.
        if ids is not None and files["images"].may_hold_count(ids()) > stored_rows.MAX_COMPARED:
            return
        seeded = OwnRows()
        kept: dict[str, pa.Table] = {}
        if self._absorb_files(seeded, paths, max_rows=SEED_ROWS, keep=kept):
            self._own = seeded
            self._seeded = True
            self._stored_rows = StoredRows(kept, self._fs.open_input_file)

    def _absorb_files(
        self,
        own: OwnRows,
        paths: dict[str, Sequence[str]],
        max_rows: int | None = None,
        keep: dict[str, pa.Table] | None = None,
    ) -> bool:
        """Read the keys of the data files `paths` (table -> files) into `own`; False when one cannot
        be read, or when the images files hold more than `max_rows` rows. `keep` takes the key
        columns read, by images file."""
        rows = 0
        for table, listed in paths.items():
            for path in listed:
                # A file's name bounds its written_at (`_newest_by_name`): a tags file then need not
                # be opened, since only the images rows hold keys.
                named = _newest_by_name([path])
                if table != "images" and named is not _UNNAMED:
                    own.add(table, [path], [], named)
                    continue
                columns = list(KEY_COLUMNS) if table == "images" else []
                if named is _UNNAMED:
                    columns.append(WRITTEN_AT)
                try:
                    # ParquetFile, not read_table: that imports pyarrow.dataset and compute (~0.1 s).
                    with self._fs.open_input_file(path) as source:
                        parquet = pq.ParquetFile(source)
                        rows += parquet.metadata.num_rows if table == "images" else 0
                        if max_rows is not None and rows > max_rows:
                            return False
                        if deltalog.declares_more(parquet.metadata, columns, SEED_FILE_BYTES):
                            return False  # few rows of huge strings: DuckDB reads them under its limit
                        data = parquet.read(columns=columns)
                except (OSError, ValueError, TypeError, pa.ArrowException):
                    return False  # vacuumed or unreadable: the questions go to the files
                if not set(columns) <= set(data.column_names):
                    # pyarrow leaves out a column the file lacks (another table's file in its
                    # place): the files' reader words that once, for the run
                    return False
                if named is _UNNAMED:
                    written = [t for t in data.column(WRITTEN_AT).to_pylist() if t is not None]
                    named = max(written, default=own.latest_written_at)
                latest = named or datetime.min.replace(tzinfo=timezone.utc)
                held = OwnRows.hashes(data) if table == "images" else None
                own.add(table, [path], [held] if held is not None else [], latest)
                if keep is not None and table == "images":
                    keep[path] = data
        return True

    def _absorb(self, files: dict[str, deltalog.TableFiles], run_id: str) -> None:
        """Take into OwnRows the keys of the files that the other processes of this run (the workers
        of `index --jobs`, which share its id) committed: each file is read once, five narrow
        columns, so every process keeps answering from memory instead of scanning every file for
        every batch. A file of any other run leaves the questions to the files, as before."""
        own = self._own
        if not own.complete:
            return
        mark = _run_mark(run_id)
        unknown = {
            table: [path for path in files[table].files if path not in own.files]
            for table in ("images", "tags")
            if table in files
        }
        if not all(mark in path.rsplit("/", 1)[-1] for paths in unknown.values() for path in paths):
            return
        self._absorb_files(own, unknown)

    # -- writing

    def write_run(
        self,
        run: dict,
        prepare: Callable[[Snapshot], Changes] | Changes | None = None,
        *,
        max_attempts: int = MAX_ATTEMPTS,
        _before_commit: Callable[[str], None] | None = None,
    ) -> RunResult:
        """Append one run: its images and tags, then its `runs` row (columns of `schema.RUNS`).

        `prepare(snapshot)` derives the changes from the store as it is; when another run commits
        rows with the same keys first, it is called again on a fresh snapshot (so it must not
        have side effects). A `Changes` value instead is appended blindly: the resolution rule alone
        decides. A run that changes nothing appends only its `runs` row."""
        run_id = run.get("run_id") or uuid.uuid4().hex
        result = self.write_changes(run_id, prepare, max_attempts=max_attempts, _before_commit=_before_commit)
        result.versions["runs"] = self.append_run(dict(run, run_id=run_id))
        result.rows["runs"] = 1
        return result

    def write_changes(
        self,
        run_id: str,
        prepare: Callable[[Snapshot], Changes] | Changes | None,
        *,
        max_attempts: int = MAX_ATTEMPTS,
        seed: bool | Callable[[], set[str]] = False,
        _before_commit: Callable[[str], None] | None = None,
    ) -> RunResult:
        """One part of run `run_id`: `write_run` without the `runs` row, for a run that commits its
        images in bounded batches and records itself once at the end (`append_run`). `seed` (True, or
        the batch's ids on demand) lets a small store be read for its keys first (`_seed`)."""
        versions: dict = {"images": None, "tags": None, "runs": None}
        rows: dict = {"images": 0, "tags": 0, "runs": 0}
        vanished = None
        for attempt in range(1, max_attempts + 1):
            snapshot = self.snapshot(run_id=run_id, seed=seed)
            # A store others wrote may hold a batch that landed half (`_land_stray_tags`): looked
            # for at the first batch, whether its keys were seeded or not.
            if self._own_strays or (self._seek_strays and (snapshot.own is None or self._seeded)):
                landed = self._land_stray_tags(snapshot.files)
                self._seek_strays = self._own_strays = self._seeded = False
                if landed:
                    snapshot = self.snapshot(run_id=run_id)
            try:
                changes = prepare(snapshot) if callable(prepare) else (prepare or Changes())
            except Exception:
                # A compaction that committed since the snapshot may have vacuumed its files (with
                # a retention shorter than this run): the next snapshot no longer lists them.
                gone = _first_gone(snapshot.files)
                if gone is None:
                    raise
                if gone == vanished:
                    raise StoreError(
                        f"store {self.store}: data file {gone} is listed by the log but gone (deleted, or "
                        "vacuumed by a compact whose retention was shorter than a run)"
                    ) from None
                vanished = gone
                continue
            written_at = _next_time(snapshot.latest_written_at())
            try:
                outcome = self._attempt(
                    run_id, changes, snapshot, written_at, check=callable(prepare), before_commit=_before_commit
                )
            except Conflict:
                # Back off a little, at random, so that runs racing for the same keys spread out.
                time.sleep(random.uniform(0, min(0.05 * attempt, 0.5)))
                continue
            for table, (version, count) in outcome.items():
                versions[table], rows[table] = version, count
            return RunResult(run_id, versions, rows, attempt)
        raise StoreError(
            f"run {run_id}: other runs kept changing the same images; gave up after {max_attempts} attempts"
        )

    def _attempt(
        self, run_id, changes: Changes, snapshot: Snapshot, written_at: datetime, *, check: bool, before_commit
    ) -> dict:
        outcome = {}
        images = self._stream_images(changes)
        tags = self._stream_tags(changes)
        staged = {}
        # Names the files of both tables of this attempt: tags files whose images landed without
        # them are then known for the batch's (`_land_stray_tags`).
        batch = uuid.uuid4().hex
        try:
            staged["images"] = self._write_files("images", images, written_at, run_id, batch)
            staged["tags"] = self._write_files("tags", tags, written_at, run_id, batch)
            if before_commit is not None:
                before_commit("images")
            # The current tags are those the images rows carry: the images commit must also yield
            # to a run that claimed one of this batch's tags meanwhile, or readers would see the tag
            # on two images until this run's tags commit sends it back (for good, if it is killed).
            claims = staged["tags"][1]
            for table in ("images", "tags"):
                adds, keys, count, tombstones, written = staged[table]
                if not adds:
                    continue
                version = self._commit_append(
                    table,
                    adds,
                    snapshot.files[table].version if check else None,
                    keys,
                    claims=claims if table == "images" else None,
                    metadata={
                        "operation": "append",
                        "runId": run_id,
                        "rows": count,
                        "tombstones": tombstones,
                        "writtenAt": written_at.isoformat(),
                        "files": _names(adds),
                    },
                )
                staged[table] = ([], None, 0, 0, [])
                self._own.add(table, [f"{self._table_dir(table)}/{a.path}" for a in adds], written, written_at)
                outcome[table] = (version, count)
        except BaseException:

            def since(table: str) -> int:
                return snapshot.files[table].version if table in snapshot.files else -1

            # The images commit may have landed with the error right behind it (Ctrl-C as it
            # returns). In doubt its tags files stay: they are committed only if its images are live.
            images = staged.get("images", ([],))[0]
            landed = self._landed_of("images", images, since("images")) if images else set()
            images_landed = "images" in outcome or landed is None or bool(landed)
            for table, (adds, *_) in staged.items():
                if table == "tags" and adds and images_landed:
                    # Readers already see the batch: its tags files are what the tags table lacks,
                    # committed by the next batch or run (a retry after a conflict derives no tag
                    # rows from images that already carry their tags).
                    self._own_strays = True
                    continue
                self._discard(table, adds, since=since(table))
            raise
        return outcome

    def _stream_images(self, changes: Changes) -> Iterator[pa.Table]:
        for data in _batches(changes.images):
            yield _cast("images", data)
        if changes.image_tags is not None and len(changes.image_tags):
            ids = changes.image_tags.column("id")
            yield _cast(
                "images",
                pa.table(
                    {
                        "id": ids,
                        "tags": changes.image_tags.column("tags"),
                        TAGS_ONLY: arrow.bools([True] * len(ids)),
                    }
                ),
            )
        if changes.retired_images:
            yield _cast("images", image_tombstones(list(changes.retired_images)))

    def _stream_tags(self, changes: Changes) -> Iterator[pa.Table]:
        for data in _batches(changes.tags):
            yield _cast("tags", data)
        if changes.retired_tags:
            yield _cast("tags", tag_tombstones(list(changes.retired_tags)))

    def _content_hash(self, data: pa.Table) -> pa.Array:
        con = self._duckdb()
        con.register("hash_input", data)
        try:
            result = _arrow(con, f"SELECT {_stored_hash_sql()} FROM hash_input")
        finally:
            con.unregister("hash_input")
        return result.column(0).combine_chunks()

    def _write_files(self, table: str, stream: Iterable[pa.Table], written_at: datetime, run_id: str, batch: str = ""):
        """Write the stream as sorted Parquet files of at most `batch_rows` rows. Returns the add
        actions, the keys written, the row count, the tombstone count and the key columns of the
        images rows written."""
        adds: list[AddAction] = []
        keys: list[pa.Table] = []
        written: list[tuple] | None = []  # the key hashes of the images rows, for OwnRows
        count = tombstones = 0
        pending: list[pa.Table] = []
        pending_rows = 0

        def flush():
            nonlocal count, tombstones, pending, pending_rows, written
            if not pending:
                return
            data = pa.concat_tables(pending) if len(pending) > 1 else pending[0]
            pending, pending_rows = [], 0
            n = len(data)
            data = data.set_column(
                data.schema.get_field_index(WRITTEN_AT), WRITTEN_AT, arrow.utc_micros([written_at] * n, _UTC_US)
            )
            data = data.set_column(data.schema.get_field_index(RUN_ID), RUN_ID, arrow.strings([run_id] * n))
            flags = _flags(data.column(TOMBSTONE))
            data = data.set_column(data.schema.get_field_index(TOMBSTONE), TOMBSTONE, flags)
            # Rows of a run that read nothing go without: DuckDB would start only for this.
            if table == "images" and self._con is not None and _lacks_hashes(data):
                data = data.set_column(
                    data.schema.get_field_index(CONTENT_HASH), CONTENT_HASH, self._content_hash(data)
                )
            order = _python_order(data, _SORT[table])
            if order is not None:
                if not isinstance(order, range):
                    # A few rows out of order (a new image and the one that lost its tag to it): put
                    # in order by slices, as a take imports pyarrow.compute (50 ms, a small run's sixth).
                    data = pa.concat_tables([data.slice(i, 1) for i in order]).combine_chunks()
                pieces = iter((data,))
                # Kept until the commit, so copied: a column shares its buffer with every column of
                # its batch when the batch was read whole (an Arrow IPC or Flight stream), and the
                # keys of a streamed load held all of its rows (5 GB for a million images).
                sorted_keys = _detached(data.select(list(KEYS[table])))
            else:  # a take imports pyarrow.compute: the index path hands rows in order
                import pyarrow.compute as pc

                order = pc.sort_indices(data, sort_keys=[(k, "ascending") for k in _SORT[table]])
                sorted_keys = data.select(list(KEYS[table])).take(order)  # a copy of its own
                # Sorted a few row groups at a time: a sorted copy of the whole batch would double
                # the memory a load needs.
                step = self.row_group_rows * 4
                pieces = (data.take(order.slice(start, step)) for start in range(0, n, step))
            if _has_adjacent_duplicates(sorted_keys):
                raise StoreError(f"a run wrote the same {table} key twice; each key may appear once per run")
            adds.append(
                self._write_parquet(table, pieces, data_change=True, run_id=run_id, newest=written_at, batch=batch)
            )
            keys.append(sorted_keys)
            if table == "images" and written is not None:
                written.append(OwnRows.hashes(data))
                if count + n > MAX_OWN_KEYS:
                    written = None  # more than OwnRows keeps
            count += n
            tombstones += flags.to_pylist().count(True)

        try:
            for data in stream:
                for offset in range(0, len(data), self.batch_rows):
                    piece = data.slice(offset, self.batch_rows)
                    pending.append(piece)
                    pending_rows += len(piece)
                    if pending_rows >= self.batch_rows:
                        flush()
            flush()
        except BaseException:
            self._discard(table, adds)
            raise
        key_table = pa.concat_tables(keys) if keys else None
        if len(adds) > 1 and self._duplicates_across(table, adds):
            self._discard(table, adds)
            raise StoreError(f"a run wrote the same {table} key twice; each key may appear once per run")
        return adds, key_table, count, tombstones, written

    def _duplicates_across(self, table: str, adds: Sequence[AddAction]) -> bool:
        """Whether a key repeats across the files of one run (each file was checked by itself); read
        back from the files, so that a run of a million rows needs no hash set of its keys. Grouped
        by the keys' 64-bit hash first, a third of the memory of grouping the strings (a load of a
        million tags went over 1 GB); the keys themselves only if two hashes meet."""
        listed = ", ".join(_quote(f"{self._table_dir(table)}/{a.path}") for a in adds)
        keys = ", ".join(KEYS[table])
        con = self._duckdb()
        for group in (f"hash({keys})", keys):
            query = f"SELECT 1 FROM read_parquet([{listed}]) GROUP BY {group} HAVING count(*) > 1 LIMIT 1"
            if not con.execute(query).fetchall():
                return False
        return True

    def _write_parquet(
        self,
        table: str,
        data: pa.Table | Iterable[pa.Table | pa.RecordBatch],
        *,
        data_change: bool,
        row_group_rows: int | None = None,
        run_id: str = "",
        newest: datetime | None = None,
        batch: str = "",
    ) -> AddAction:
        """One data file from a table or a stream of pieces (written as they come, so a compacted
        file never sits whole in memory), and its add action with Delta statistics. `newest`: the
        latest written_at of its rows, which its name must not be earlier than (`_newest_by_name`)."""
        # Compaction's files (the only ones that change no data) are known by their name: readers
        # take their rows as they are (deltalog.COMPACTED_PREFIX).
        prefix = "part-" if data_change else deltalog.COMPACTED_PREFIX
        # The run's id in the name tells the processes of one `index --jobs` run each other's files
        # (see `_absorb`).
        run = _run_mark(run_id) if run_id else ""
        run += f"b{batch}-" if batch else ""
        stamp = max(arrow.epoch_micros(_now()), arrow.epoch_micros(newest) if newest is not None else 0)
        name = f"{prefix}{stamp:016d}-{run}{uuid.uuid4().hex}.zstd.parquet"
        path = f"{self._table_dir(table)}/{name}"
        target = DELTA_SCHEMAS[table]
        no_dictionary = _NO_DICTIONARY.get(table, set())
        stats = _Stats(table)
        pieces = [data] if isinstance(data, pa.Table) else data
        row_group_rows = row_group_rows or self.row_group_rows
        try:
            with (
                self._fs.open_output_stream(path) as sink,
                pq.ParquetWriter(
                    sink,
                    target,
                    compression="zstd",
                    # A run's files are rewritten by compaction: they favour speed (zstd 1 also came
                    # out smaller at this row group size), compacted files size.
                    compression_level=1 if data_change else 3,
                    use_dictionary=[f.name for f in target if f.name not in no_dictionary],
                    write_statistics=_STATISTICS[table],
                    store_schema=False,
                    # DuckDB skips a row group whose Bloom filter rules the key out: with ids spread by
                    # hashing, min/max alone cannot, in any file not sorted together with the others.
                    bloom_filter_options={k: {"ndv": row_group_rows, "fpp": 0.01} for k in _BLOOM.get(table, ())},
                ) as writer,
            ):
                for piece in pieces:
                    piece = _as_table(piece)
                    if piece.schema != target:
                        piece = piece.cast(target)
                    stats.update(piece)
                    writer.write_table(piece, row_group_size=row_group_rows)
            info = self._fs.get_file_info(path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                self._fs.delete_file(path)
            raise StoreError(f"store {self.store}: cannot write {table} data: {_cause(exc)}") from None
        except BaseException:
            with contextlib.suppress(OSError):
                self._fs.delete_file(path)
            raise
        mtime = int(info.mtime.timestamp() * 1000) if info.mtime else int(time.time() * 1000)
        return AddAction(name, info.size, {}, mtime, data_change, stats.json())

    def _discard(self, table: str, adds: Sequence[AddAction], since: int | None = None) -> None:
        """Delete files of an attempt that will not commit (vacuum would, after the retention).

        With `since`, the attempt may have reached its commit: a commit after version `since` that
        took a file keeps it. An error can follow a commit that landed (Ctrl-C as the commit call
        returns, a post-commit hook that fails), and deleting its files then would leave a version
        whose data is gone. When the log cannot tell, every file stays for vacuum."""
        if not adds:
            return
        committed = self._landed_of(table, adds, since) if since is not None else set()
        if committed is None:
            return
        for add in adds:
            if add.path in committed:
                continue
            with contextlib.suppress(OSError):
                self._fs.delete_file(f"{self._table_dir(table)}/{add.path}")

    def _landed_of(self, table: str, adds: Sequence[AddAction], since: int) -> set[str] | None:
        """The files of `adds` that a commit after version `since` took; None when the log cannot tell."""
        try:
            return self._committed_since(table, since, {add.path for add in adds})
        except Exception:  # noqa: BLE001 - the caller keeps every file in doubt
            return None

    def _log_commit(self, table: str, version: int) -> bytes | None:
        """The text of commit `version` of `table`, None when the log holds no such commit; read by
        version, as delta-rs's history() numbers the newest commits from the version the table was
        loaded at, and a commit landing in between takes the place of the one asked about."""
        location = self.location(table)
        name = f"{version:020d}.json"
        try:
            if deltalog.is_local(location):
                # Without blocking, as the log reader opens commits: a FIFO there held `history`.
                with open_readable(os.path.join(deltalog.local_path(location), deltalog.LOG_DIR, name)) as f:
                    text = f.read(deltalog.MAX_COMMIT_BYTES + 1)
            else:
                with self._fs.open_input_stream(f"{self._table_dir(table)}/_delta_log/{name}") as stream:
                    text = stream.read(deltalog.MAX_COMMIT_BYTES + 1)
        except FileNotFoundError:
            return None
        except SourceError as exc:
            raise StoreError(f"store {self.store}: cannot read commit {version} of {table}: {exc.reason}") from None
        except OSError as exc:
            raise StoreError(f"store {self.store}: cannot read commit {version} of {table}: {_cause(exc)}") from None
        if len(text) > deltalog.MAX_COMMIT_BYTES:
            raise StoreError(
                f"store {self.store}: commit {version} of {table} is larger than {deltalog.MAX_COMMIT_BYTES >> 20} MiB"
            )
        return text

    def _commit_info(self, table: str, version: int) -> dict | None:
        """The commitInfo of commit `version`, with its version; {} with the version when the commit
        states none (or none that parses), None when the log holds no such commit."""
        text = self._log_commit(table, version)
        if text is None:
            return None
        info = None
        for line in text.splitlines():
            if b'"commitInfo"' in line:
                with contextlib.suppress(ValueError, AttributeError):
                    info = json.loads(line).get("commitInfo")
                break
        info = dict(info) if isinstance(info, dict) else {}
        info["version"] = version
        return info

    def _commits_between(self, table: str, since: int, latest: int) -> list[dict]:
        """The commitInfo of each commit after version `since` up to `latest`, with its version."""
        infos = []
        for version in range(since + 1, latest + 1):
            info = self._commit_info(table, version)
            if info is None:
                raise StoreError(f"store {self.store}: cannot read commit {version} of {table}: it is missing")
            if len(info) == 1:
                # A commit whose info cannot be read is taken as another run's: its files are read.
                info[_META + "runId"] = f"unknown commit {version}"
            infos.append(info)
        return infos

    def _committed_since(self, table: str, since: int, names: set[str]) -> set[str]:
        """Those of `names` (data files of the table) that a commit after version `since` adds."""
        found: set[str] = set()
        version = max(since, -1) + 1
        while (text := self._log_commit(table, version)) is not None:
            for line in text.decode("utf-8").splitlines():
                if '"add"' in line and any(name in line for name in names):
                    path = (json.loads(line).get("add") or {}).get("path")
                    if path in names:
                        found.add(path)
            version += 1
        return found

    def _land_stray_tags(self, files: dict[str, deltalog.TableFiles]) -> bool:
        """Commit the tags files of batches whose images commit landed and whose tags commit did
        not (a full disk, a kill between the two): the images already show the batch's tags, and
        a later run derives no tag rows for tags the images carry, so the tags table would lack
        them for good. The rows keep their written_at, so a newer claim of another run still wins.
        One listing of the tags folder; a file is read only when its batch's images are live.
        True when it committed any."""
        batches = {deltalog.batch_of(path) for path in files["images"].files} - {None}
        if not batches or "tags" not in files:
            return False
        folder = self._table_dir("tags")
        live = {path.rsplit("/", 1)[-1] for path in files["tags"].files}
        try:
            listed = self._fs.get_file_info(pafs.FileSelector(folder))
        except OSError:
            return False
        strays: dict[str, list] = {}
        for info in listed:
            batch = deltalog.batch_of(info.base_name)
            if info.type == pafs.FileType.File and batch in batches and info.base_name not in live:
                strays.setdefault(batch, []).append(info)
        if strays:
            # A compaction that ran while the batch landed rewrote its tags files and left them on
            # disk, removed: they were committed once. Each tags commit lists its files.
            committed = set().union(*map(_files_of, self._delta("tags").history()))
            strays = {
                batch: infos
                for batch, infos in strays.items()
                if not any(info.base_name in committed for info in infos)
            }
        landed = False
        for batch, infos in strays.items():
            adds, rows, tombstones, run_ids, written = [], 0, 0, set(), []
            try:
                for info in sorted(infos, key=lambda i: i.base_name):
                    data = pq.read_table(
                        info.path, columns=[*KEYS["tags"], RUN_ID, WRITTEN_AT, TOMBSTONE], filesystem=self._fs
                    )
                    stats = _Stats("tags")
                    stats.update(data)
                    mtime = int(info.mtime.timestamp() * 1000) if info.mtime else int(time.time() * 1000)
                    adds.append(AddAction(info.base_name, info.size, {}, mtime, True, stats.json()))
                    rows += len(data)
                    tombstones += data.column(TOMBSTONE).to_pylist().count(True)
                    run_ids.update(data.column(RUN_ID).to_pylist())
                    written += [t for t in data.column(WRITTEN_AT).to_pylist() if t is not None]
            except (OSError, ValueError, TypeError, pa.ArrowException) as exc:
                # A file cut short or unreadable: the batch's images, and the current tags read from
                # them, stay whole; the tags table lacks its rows. Said every time, as every run
                # tries again until vacuum removes the file.
                self.notes.append(
                    f"store {self.store}: cannot read tags file {info.base_name} of a batch whose images "
                    f"landed ({_cause(exc)}); its tag rows stay out of the tags table"
                )
                continue
            if len(run_ids) != 1 or not written:
                continue
            [run_id], newest = run_ids, max(written)
            metadata = {"operation": "append", "runId": run_id, "rows": rows, "tombstones": tombstones}
            metadata.update(writtenAt=newest.isoformat(), files=_names(adds), landedLate="true")
            self._commit_append("tags", adds, files["tags"].version, None, metadata=metadata)
            if {path for path in files["images"].files if deltalog.batch_of(path) == batch} <= self._own.files:
                # This object's own batch: its files stay all known, and questions answered from memory.
                self._own.add("tags", [f"{folder}/{a.path}" for a in adds], [], newest)
            landed = True
        return landed

    def _land_strays_for(self, tables: Sequence[str]) -> None:
        if "tags" in tables:
            files = deltalog.read_store(self.store, tables=("images", "tags"), con=self._duckdb)
            self._land_stray_tags(files)

    def _commit_append(
        self,
        table: str,
        adds: list[AddAction],
        read_version: int | None,
        keys: pa.Table | None,
        *,
        claims: pa.Table | None = None,
        metadata: dict,
    ) -> int:
        """Commit at exactly the next version; with `read_version`, only while no commit after it
        touched `keys`, nor (images) carried a tag of `claims`. Returns the version committed, or
        the one where another writer committed these tags files first (`_land_stray_tags`)."""
        meta = {_META + k: v for k, v in metadata.items()}
        seen = read_version
        while True:
            dt = self._delta(table)
            latest = dt.version()
            if seen is not None and latest > seen:
                # The commits after `seen`, read by version from the log: delta-rs's history lists
                # the newest commits at the time it is asked, and numbers them from the version the
                # table was loaded at, so a commit landing in between took the place of the one
                # to check (two runs then gave one tag to two images). A blind append of images
                # asks nothing of them.
                history = (
                    self._commits_between(table, seen, latest) if table == "tags" or read_version is not None else []
                )
                # The tags files of a batch may be committed by two writers at once: its own, late,
                # and one that found them stray. Whichever comes second adds nothing.
                if table == "tags" and (done := _landed(history, seen, _names(adds))) is not None:
                    return done
                if read_version is not None and self._overlaps(table, dt, read_version, keys, claims, history):
                    raise Conflict(table)
                if read_version is not None:
                    read_version = latest
            seen = latest
            try:
                dt.create_write_transaction(
                    adds,
                    "append",
                    DELTA_SCHEMAS[table],
                    commit_properties=CommitProperties(custom_metadata=meta, max_commit_retries=0),
                    post_commithook_properties=PostCommitHookProperties(create_checkpoint=True),
                )
                return latest + 1
            except CommitFailedError:
                continue  # another commit took that version; check what it holds and try the next
            except (DeltaError, OSError) as exc:
                raise StoreError(f"store {self.store}: cannot commit to {table}: {_cause(exc)}") from None

    def _overlaps(
        self,
        table: str,
        dt: DeltaTable,
        since: int,
        keys: pa.Table | None,
        claims: pa.Table | None = None,
        history: list[dict] | None = None,
    ) -> bool:
        """Whether a run committed after version `since` wrote any of `keys`, or an images row
        carrying a tag of `claims` (registry, name, tag); `history`: the commitInfo of each commit
        after `since` up to `dt`'s version (`_commits_between`), when already read.

        Read with pyarrow, a few narrow columns a row group at a time: the question comes up
        whenever two processes of one run (`index --jobs`) commit together, and DuckDB would cost
        one of them ~50 ms to load for it. Keys are compared by their hash, so a shared hash at
        worst sends the run to prepare again (a Conflict), never past a real overlap."""
        tagged = set(map(hash, _key_rows(claims, KEYS["tags"]))) if claims is not None else set()
        if (keys is None or keys.num_rows == 0) and not tagged:
            return False
        latest = dt.version()
        runs = set()
        for entry in history if history is not None else self._commits_between(table, since, latest):
            if since < entry.get("version", -1) <= latest and entry.get(_META + "operation") != "compact":
                run = entry.get(_META + "runId")
                runs.add(run)
        runs.discard(None)
        if not runs:
            return False
        location = self.location(table)
        before = set(deltalog.read_table(location, table=table, version=since, con=self._duckdb).files)
        after = deltalog.read_table(location, table=table, version=latest, con=self._duckdb).files
        new_files = [f for f in after if f not in before]
        if not new_files:
            return False
        names = KEYS[table]
        own = set(map(hash, _key_rows(keys, names))) if keys is not None else set()
        carried = ["registry", "name", "tags"] if tagged else []
        for path in new_files:
            try:
                parquet = pq.ParquetFile(path, filesystem=self._fs)
                for batch in parquet.iter_batches(columns=[RUN_ID, *names, *carried], batch_size=65536):
                    run_ids = batch.column(RUN_ID).to_pylist()
                    if runs.isdisjoint(run_ids):
                        continue
                    rows = _key_rows(batch, names)
                    if any(run in runs and hash(row) in own for run, row in zip(run_ids, rows)):
                        return True
                    if tagged:
                        columns = zip(run_ids, *(batch.column(c).to_pylist() for c in carried))
                        for run, registry, name, tags in columns:
                            if run in runs and any(hash((registry, name, t)) in tagged for t in tags or ()):
                                return True
            except (OSError, ValueError, pa.ArrowException) as exc:
                raise StoreError(f"store {self.store}: cannot read {table} data: {_cause(exc)}") from None
        return False

    def append_run(self, run: dict) -> int:
        """Record a run (columns of `schema.RUNS`); returns the runs table's version."""
        data = arrow.rows_table([run], schema.RUNS)
        add = self._write_parquet("runs", _cast("runs", data), data_change=True)
        meta = {_META + "operation": "append", _META + "runId": run["run_id"], _META + "rows": 1}
        for _ in range(MAX_ATTEMPTS):
            dt = self._delta("runs")
            latest = dt.version()
            try:
                dt.create_write_transaction(
                    [add],
                    "append",
                    DELTA_SCHEMAS["runs"],
                    commit_properties=CommitProperties(custom_metadata=meta, max_commit_retries=0),
                )
                return latest + 1
            except CommitFailedError:
                continue
            except (DeltaError, OSError) as exc:
                self._discard("runs", [add], since=latest)
                raise StoreError(f"store {self.store}: cannot commit to runs: {_cause(exc)}") from None
        self._discard("runs", [add])
        raise StoreError(f"store {self.store}: cannot commit to runs: too many concurrent commits")

    # -- compaction and vacuum

    def compact(
        self,
        *,
        tables: Sequence[str] = TABLES,
        retention: timedelta = DEFAULT_RETENTION,
        vacuum: bool = True,
        file_rows: int = COMPACT_FILE_ROWS,
        now: datetime | None = None,
        allow_short_retention: bool = False,
    ) -> dict[str, dict]:
        """Rewrite each table to its current rows sorted by key, then vacuum.

        Tombstones that won are kept while younger than `retention` (a run that started before
        them may still commit an older version of their key) and dropped after. Runs that commit
        during compaction keep their files: the compaction commit removes only what it read, and
        it starts over when another compaction removed the same files first."""
        _check_retention(retention, allow_short_retention)
        self._check_schema_versions(tables)
        # Before the images files that name a half-landed batch are rewritten, and before vacuum
        # would delete its tags files.
        self._land_strays_for(tables)
        now = now or datetime.now(timezone.utc)
        report = {}
        # Marks the tables' compaction commits as one change: `--as-of` the images one reads the
        # others compacted too (vacuum may have removed the files they had before).
        compaction = uuid.uuid4().hex
        for table in tables:
            report[table] = self._compact_table(table, _before(now, retention), file_rows, compaction)
        if vacuum:
            removed = self.vacuum(tables=tables, retention=retention, allow_short_retention=allow_short_retention)
            for table in tables:
                report[table]["vacuumed"] = removed[table]
        return report

    def _compact_table(self, table: str, cutoff: datetime, file_rows: int, compaction: str) -> dict:
        import duckdb

        for attempt in range(1, MAX_ATTEMPTS + 1):
            files = deltalog.read_table(self.location(table), table=table, con=self._duckdb())
            _check_known_columns(table, files)
            if not files.files:
                return {"version": files.version, "files_before": 0, "files_after": 0, "rows": 0, "attempts": attempt}
            adds: list[AddAction] = []
            rows = 0
            try:
                newest = _newest_written(self._duckdb, files.files) if table in ("images", "tags") else None
                for part in self._current_parts(table, files, cutoff, file_rows):
                    # An images part is already one file's span of ids (see `_current_parts`): one
                    # file, none when all of it was dropped, so that files never share ids.
                    for chunk in _chunks(part, 2**62 if table == "images" else file_rows):
                        adds.append(
                            self._write_parquet(
                                table,
                                chunk,
                                data_change=False,
                                row_group_rows=self.compact_row_group_rows,
                                newest=newest,
                            )
                        )
                rows = sum(json.loads(a.stats)["numRecords"] for a in adds)
                removes = [RemoveAction(self._relative(table, p), False, int(time.time() * 1000)) for p in files.files]
                meta = {
                    _META + "operation": "compact",
                    _META + "rows": rows,
                    _META + "filesRemoved": len(removes),
                    _META + "readVersion": files.version,
                    _META + "compactionId": compaction,
                }
                self._commit_compaction(table, files, adds + removes, meta)
            except Conflict:
                self._discard(table, adds)
                continue
            except (CommitFailedError, DeltaError) as exc:
                self._discard(table, adds, since=files.version)
                if _is_conflict(exc):
                    continue
                raise StoreError(f"store {self.store}: cannot compact {table}: {first_line(exc)}") from None
            except duckdb.Error as exc:
                self._discard(table, adds, since=files.version)
                raise StoreError(f"store {self.store}: cannot compact {table}: {first_line(exc)}") from None
            except BaseException:
                self._discard(table, adds, since=files.version)
                raise
            if not files.uniform:
                with contextlib.suppress(CommitFailedError, DeltaError):
                    # every file now has every column
                    self._delta(table).alter.set_table_properties(
                        {deltalog.MIXED_SCHEMAS: "false"}, raise_if_not_exists=False
                    )
            with contextlib.suppress(DeltaError, OSError):
                # A checkpoint right after compaction lets a reader load the table from one file.
                self._delta(table).create_checkpoint()
            return {
                "version": self._delta(table).version(),
                "files_before": len(files.files),
                "files_after": len(adds),
                "rows": rows,
                "attempts": attempt,
            }
        raise StoreError(f"store {self.store}: cannot compact {table}: other compactions kept winning")

    def _current_parts(
        self, table: str, files: deltalog.TableFiles, cutoff: datetime, file_rows: int
    ) -> Iterator[Iterator[pa.RecordBatch]]:
        """The current rows of the table, as streams of batches that each go to files of their own.

        Images go file by file, each file one span of about `file_rows` ids: a lookup by id opens the
        one file whose id range holds its id (`TableFiles.for_key`). Within a file the rows are in
        Image.List's default order (`_LIST_ORDER`) in runs of at most COMPACT_RANGE_ROWS ids, since
        sorting a whole table of raw JSON at once would need memory in proportion to it: a page of
        `imgdex list` then sits in a row group of each run, which the row groups' statistics on name
        let a reader find (`queries/listing.py`). A run's id range filter reads only the row groups
        that overlap it, since every file holds one range of ids, and its winners are ranked on the
        narrow columns first and their wide rows fetched after. The other tables are sorted by key
        in one pass."""
        con = self._duckdb()
        scan = f"({deltalog.versions_sql(files, positions=True)})"
        columns = ", ".join(f'"{f.name}"' for f in DELTA_SCHEMAS[table])
        order = ", ".join(_SORT[table])
        if table not in deltalog.RESOLUTION:
            yield _arrow_reader(con, f"SELECT {columns} FROM {scan} AS v ORDER BY {order}", None, 16_384)
            return
        keys, ranking = deltalog.RESOLUTION[table]
        keep = f"WHERE NOT coalesce({TOMBSTONE}, false) OR {WRITTEN_AT} >= ?"
        window = f"QUALIFY row_number() OVER (PARTITION BY {', '.join(keys)} ORDER BY {ranking}) = 1"
        if table != "images":  # narrow rows: one pass
            query = f"SELECT {columns} FROM (SELECT * FROM {scan} AS v {window}) AS current {keep} ORDER BY {order}"
            yield _arrow_reader(con, query, [cutoff], 16_384)
            return
        # Per id, one row: the data row that wins, with the tags of the id's newest row and, when that
        # row is newer, its time; nothing of an id whose winner is a tombstone older than the cutoff.
        by_id = "PARTITION BY id"
        newest = f"OVER ({by_id} ORDER BY {deltalog.NEWEST})"
        ranked = (
            f"SELECT filename, file_row_number, {TAGS_ONLY}, {TOMBSTONE}, {WRITTEN_AT}, "
            f"first_value(tags) {newest} AS newest_tags, "
            f"first_value(coalesce({TAGS_WRITTEN_AT}, {WRITTEN_AT})) {newest} AS newest_at "
            "FROM {scan} {where} "
            f"QUALIFY row_number() OVER ({by_id} ORDER BY {ranking}) = 1"
        )
        chosen = f"WHERE NOT coalesce({TAGS_ONLY}, false) AND (NOT coalesce({TOMBSTONE}, false) OR {WRITTEN_AT} >= ?)"
        # A data row written without its hash (by a run that read nothing) gets it here.
        hashed = f"coalesce(v.{CONTENT_HASH}, {_stored_hash_sql('v.')}) AS {CONTENT_HASH}"
        merged = ", ".join(
            "k.newest_tags AS tags"
            if f.name == "tags"
            else f"CASE WHEN k.newest_at > v.{WRITTEN_AT} THEN k.newest_at END AS {TAGS_WRITTEN_AT}"
            if f.name == TAGS_WRITTEN_AT
            else hashed
            if f.name == CONTENT_HASH
            else f'v."{f.name}"'
            for f in DELTA_SCHEMAS[table]
        )

        def run(low, high) -> Iterator[pa.RecordBatch]:
            conditions, params = [], []
            if low is not None:
                conditions.append("id >= ?")
                params.append(low)
            if high is not None:
                conditions.append("id < ?")
                params.append(high)
            where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
            con.execute(
                "CREATE OR REPLACE TEMP TABLE compact_keep AS SELECT filename, file_row_number, newest_tags, "
                f"newest_at FROM ({ranked.format(scan=scan, where=where)}) AS ranked {chosen}",
                [*params, cutoff],
            )
            query = (
                f"SELECT {merged} FROM (SELECT * FROM {scan} {where}) AS v "
                f"JOIN compact_keep AS k USING (filename, file_row_number) ORDER BY {_LIST_ORDER}"
            )
            # Each batch is written as row groups of its own, so no row group spans two runs.
            yield from _arrow_reader(con, query, params or None, 8_192)

        def file(edges) -> Iterator[pa.RecordBatch]:
            for low, high in zip(edges, edges[1:], strict=False):
                yield from run(low, high)

        # Runs and files are spans of ids (tombstones and ids about to be dropped counted too).
        ids = con.execute(f"SELECT count(DISTINCT id) FROM {scan}").fetchall()[0][0]
        run_ids = max(1, min(file_rows, self.compact_range_rows))
        runs = max(1, -(-ids // run_ids))
        bounds: list = []
        if runs > 1:
            cuts = [i / runs for i in range(1, runs)]
            spans = f"SELECT quantile_disc(id, {cuts!r}) FROM (SELECT DISTINCT id FROM {scan})"
            bounds = con.execute(spans).fetchall()[0][0]
        edges = [None, *dict.fromkeys(bounds), None]
        per_file = max(1, file_rows // run_ids)
        for first in range(0, len(edges) - 1, per_file):
            yield file(edges[first : first + per_file + 1])
        con.execute("DROP TABLE IF EXISTS compact_keep")

    def _commit_compaction(self, table: str, files: deltalog.TableFiles, actions: list, meta: dict) -> None:
        """Commit at exactly the next version while every file read is still live. delta-rs does not
        see two removes of one file as a conflict, so without this check two compactions at once
        would both land and store every row twice."""
        read = set(files.files)
        while True:
            dt = self._delta(table)
            latest = dt.version()
            if latest > files.version:
                live = set(
                    deltalog.read_table(self.location(table), table=table, version=latest, con=self._duckdb()).files
                )
                if not read <= live:
                    raise Conflict(table)
            try:
                dt.create_write_transaction(
                    actions,
                    "append",
                    DELTA_SCHEMAS[table],
                    commit_properties=CommitProperties(custom_metadata=meta, max_commit_retries=0),
                )
                return
            except CommitFailedError:
                continue  # another commit took that version: look at what it did, then try the next
            except OSError as exc:  # a full disk or a read-only one, as for a run's commit
                raise StoreError(f"store {self.store}: cannot compact {table}: {_cause(exc)}") from None

    def vacuum(
        self,
        *,
        tables: Sequence[str] = TABLES,
        retention: timedelta = DEFAULT_RETENTION,
        allow_short_retention: bool = False,
    ) -> dict[str, int]:
        """Delete data files that no version within `retention` needs, and files of attempts that
        never committed once they are older than `retention`. Returns the count per table."""
        _check_retention(retention, allow_short_retention)
        self._land_strays_for(tables)
        # delta-rs takes whole hours: rounded up, as rounding down would delete files that left the
        # table within the retention (119 minutes vacuumed like 60).
        hours = math.ceil(retention.total_seconds() / 3600)
        out = {}
        for table in tables:
            try:
                removed = self._delta(table).vacuum(
                    retention_hours=hours,
                    dry_run=False,
                    enforce_retention_duration=False,
                    full=True,
                    commit_properties=CommitProperties(custom_metadata={_META + "operation": "vacuum"}),
                )
            except (DeltaError, OSError) as exc:
                # Vacuum writes commits too: on a full disk delta-rs puts the cause on its last line.
                raise StoreError(f"store {self.store}: cannot vacuum {table}: {_cause(exc)}") from None
            out[table] = len(removed)
        return out

    # -- history

    def history(self, *, tables: Sequence[str] = TABLES, limit: int | None = None) -> list[HistoryEntry]:
        """Every commit of the tables, newest first: time, operation, run id and row counts."""
        # The logs are read by imgdex's own reader first, so that a log every other command
        # refuses (a FIFO or an empty file for a commit, a gap) is refused here alike, rather than
        # listed as delta-rs reads it (it skips what it cannot list) or in its words.
        # Each table is listed from the version that read found, its commits read by version.
        versions = {
            table: deltalog.read_table(self.location(table), table=table, con=self._duckdb).version for table in tables
        }
        self._check_schema_versions(tables)
        entries = []
        for table in tables:
            try:
                entries.extend(self._history_entries(table, versions[table], limit))
            except (DeltaError, OSError, ValueError, TypeError, OverflowError, KeyError) as exc:
                # a time or count that delta-rs or Python cannot take (a commit time in year 33658)
                raise StoreError(f"cannot read the history of table {table}: {first_line(exc)}") from None
        entries.sort(key=lambda e: (e.time, e.table, e.version), reverse=True)
        return entries[:limit] if limit else entries

    def _history_entries(self, table: str, version: int, limit: int | None) -> Iterator[HistoryEntry]:
        """The table's commits, newest first, from `version` back to the oldest its log still holds
        (clean-up removes those before its newest checkpoint), or `limit` of them."""
        while version >= 0 and (limit is None or limit > 0):
            info = self._commit_info(table, version)
            if info is None:
                return
            operation = info.get(_META + "operation") or str(info.get("operation", "")).lower()
            if info.get(_META + "landedLate"):
                # The tags of an earlier run's batch, committed by a later run or compact: read as a
                # plain append, it looked like that earlier run writing again.
                operation += " (landed late)"
            stamp = datetime.fromtimestamp(int(info.get("timestamp", 0)) / 1000, timezone.utc)
            yield HistoryEntry(
                table,
                version,
                stamp,
                operation,
                info.get(_META + "runId"),
                _int(info.get(_META + "rows")),
                _int(info.get(_META + "tombstones")),
            )
            version -= 1
            if limit is not None:
                limit -= 1


# ---- a reference pre-merge: what a run appends, given the store as it is


def _detached(table: pa.Table) -> pa.Table:
    """`table` in buffers of its own, which pin no other column's memory."""
    if not table.num_rows:
        return table.schema.empty_table()
    return pa.Table.from_arrays([pa.concat_arrays(column.chunks) for column in table.columns], schema=table.schema)


def premerge(
    snapshot: Snapshot,
    incoming: pa.Table | None,
    *,
    retired_tags: Sequence[tuple[str, str, str]] = (),
    retired_images: Sequence[str] = (),
    claims: Sequence[tuple[str, str, str, str]] = (),
    merge: Callable[[dict, dict], dict] | None = None,
) -> Changes:
    """The changes that apply `incoming` (rows in `schema.IMAGES`, one per id, tags as claimed by
    each record) to the store as `snapshot` has it, as the DuckDB writer does:

    - a record less exact than the stored one keeps the stored data; a more exact one wins whole;
      of two equally exact ones with different data, `merge(stored_row, incoming_row)` decides
      (rows as Arrow dicts; without `merge` the incoming row wins and no stored row is read; the
      writer passes `model.merge_records` here);
    - tags are pooled with the stored ones, a tag claimed here moves from its previous image (which
      gets a tags-only row without it), and a tag claimed twice in `incoming` goes to the later row;
      but an imported row (exactness IMPORTED: the registry's own document) lists every tag of its
      image, and the stored tags of its id that it does not list are retired;
    - nothing is appended for a record whose data and tags are unchanged; a tags-only row for one
      whose data is unchanged (or loses) but whose tags change;
    - `claims` (registry, name, tag, image_id) point tags at stored images that `incoming` does not
      carry (a tag moved to a manifest already indexed), and lose to a claim of `incoming`;
    - `retired_images` get a tombstone and nothing else.
    Reads only the keys involved, and the narrow columns of them unless `merge` needs a whole row,
    so its cost follows the size of `incoming`, not of the store."""
    if incoming is None:
        incoming = arrow.empty(_cast_schema_for_rows())
    incoming = _cast("images", incoming).select([f.name for f in schema.IMAGES])
    ids = incoming.column("id").to_pylist()
    retired = set(retired_images)
    registries = incoming.column("registry").to_pylist()
    names = incoming.column("name").to_pylist()
    claimed_tags = incoming.column("tags").to_pylist()

    final_holder: dict[tuple, str] = {}
    for registry, name, tag, image_id in claims:
        final_holder[(registry, name, tag)] = image_id
    for image_id, registry, name, tags in zip(ids, registries, names, claimed_tags, strict=True):
        for tag in tags or ():
            final_holder[(registry, name, tag)] = image_id
    retired_keys = [tuple(k) for k in retired_tags if tuple(k) not in final_holder]
    keys = list(final_holder) + retired_keys
    key_table = arrow.table(
        {
            "registry": arrow.strings([k[0] for k in keys]),
            "name": arrow.strings([k[1] for k in keys]),
            "tag": arrow.strings([k[2] for k in keys]),
        }
    )
    # Every image that holds a key now: one, unless concurrent runs both claimed it (each commits
    # its images before the tags commit that detects the clash); the claim here settles it.
    holders: dict[tuple, set] = {}
    if len(key_table):
        for row in snapshot.tag_holders(key_table).to_pylist():
            holders.setdefault((row["registry"], row["name"], row["tag"]), set()).add(row["image_id"])

    # tags each image loses: claimed by another image here, or retired
    losing: dict[str, set] = {}
    for key, new_holder in final_holder.items():
        for old in holders.get(key, ()):
            if old != new_holder:
                losing.setdefault(old, set()).add(key[2])
    for key in retired_keys:
        for old in holders.get(key, ()):
            losing.setdefault(old, set()).add(key[2])
    incoming_ids = set(ids)
    gaining: dict[str, set] = {}
    for key, new_holder in final_holder.items():
        if new_holder not in incoming_ids and new_holder not in holders.get(key, ()):
            gaining.setdefault(new_holder, set()).add(key[2])
    tag_rows = [(k, v) for k, v in final_holder.items() if holders.get(k) != {v}]
    tag_tombs = [k for k in retired_keys if k in holders]

    wanted = list(dict.fromkeys(ids + list(losing) + list(gaining)))
    # Stored images whose data the rows of a small store show unchanged need no hash; the batch's
    # other ids are compared by it.
    same = snapshot.same_data(incoming)
    hashed = [i for i in ids if i not in same]
    state = {r["id"]: r for r in snapshot.image_state(wanted, hashed=hashed).to_pylist()} if wanted else {}
    exactness = incoming.column("exactness").to_pylist()
    # The hash decides "unchanged" without reading stored rows, and the rows written keep it. A
    # snapshot that read no file (a new store, answered from what the run wrote) mostly holds none
    # of these ids: nothing to compare, and the rows go without a hash rather than start DuckDB. One
    # that settled a stored id of equal exactness from its rows (`StoredRows`) compares it all the same.
    compared = any(i in state and state[i]["exactness"] == e for i, e in zip(hashed, exactness))
    if len(incoming) and (snapshot.has_read or compared):
        store_hash = _hash_via(snapshot.hashing_con, incoming)
    else:
        store_hash = [None] * len(incoming)
    need_full = []
    decisions = []
    dropped: dict[tuple, None] = {}  # tags that imported rows no longer list, in order
    # Decided on the narrow columns; the wide rows stay in Arrow, and only those that merge
    # field by field become Python (a batch of new images is one `take`).
    digests = incoming.column("digest").to_pylist()
    for position, (image_id, registry, name, claimed, exact, content) in enumerate(
        zip(ids, registries, names, claimed_tags, exactness, store_hash, strict=True)
    ):
        stored = state.get(image_id)
        if stored is not None:
            # Only an imported id (kept as written) can be another image's: merged, the stored
            # image would vanish under the import, its tags moving along. The run fails that record alone.
            held = (stored["registry"], stored["name"], stored["digest"])
            if not one_image(held, (registry, name, digests[position])):
                raise ValueError(f"its id is already that of {shown(held)}")
        own = {t for t in claimed or () if final_holder.get((registry, name, t)) == image_id}
        keep_stored = set(stored["tags"] or ()) if stored else set()
        if exact >= IMPORTED and keep_stored:
            # The registry's own document of this image: a tag it does not list was removed there.
            for tag in sorted(keep_stored - own):
                key = (stored["registry"], stored["name"], tag)
                if key not in final_holder:
                    dropped[key] = None
            keep_stored = set()
        tags = sorted((keep_stored | own) - losing.get(image_id, set()))
        if stored is None or exact > stored["exactness"]:
            decisions.append(("incoming", position, tags))
        elif exact < stored["exactness"] or image_id in same or _same_hash(content, stored[CONTENT_HASH]):
            if tags != list(stored["tags"] or ()):
                decisions.append(("tags", image_id, tags))
        elif merge is None:
            decisions.append(("incoming", position, tags))
        else:
            decisions.append(("merge", position, tags))
            need_full.append(image_id)
    for image_id in dict.fromkeys(list(losing) + list(gaining)):
        if image_id in incoming_ids or image_id not in state or image_id in retired:
            continue
        stored_tags = set(state[image_id]["tags"] or ())
        tags = sorted((stored_tags | gaining.get(image_id, set())) - losing.get(image_id, set()))
        if tags != sorted(stored_tags):
            decisions.append(("tags", image_id, tags))

    full = {r["id"]: r for r in snapshot.images(need_full).to_pylist()} if need_full else {}
    taken, taken_tags, merged_rows, tag_updates = [], [], [], []
    for kind, subject, tags in decisions:
        if kind == "incoming":
            taken.append(subject)
            taken_tags.append(tags)
        elif kind == "tags":
            tag_updates.append({"id": subject, "tags": tags})
        else:
            row = incoming.slice(subject, 1).to_pylist()[0]
            merged_rows.append(dict(merge(full[row["id"]], row), tags=tags))
    parts = []
    if taken:
        # In id order, the order the files are written in: a batch of new images in id order is
        # then written as it comes, without a take.
        order = sorted(range(len(taken)), key=lambda i: ids[taken[i]])
        taken = [taken[i] for i in order]
        taken_tags = [taken_tags[i] for i in order]
        chosen = incoming if taken == list(range(len(incoming))) else incoming.take(arrow.int64s(taken))
        column = chosen.schema.get_field_index("tags")
        chosen = chosen.set_column(column, "tags", arrow.string_lists(taken_tags))
        parts.append(chosen.append_column(CONTENT_HASH, arrow.int64s([store_hash[i] for i in taken])))
    if merged_rows:
        merged = pa.Table.from_pylist(merged_rows, schema=_cast_schema_for_rows()).cast(incoming.schema)
        parts.append(merged.append_column(CONTENT_HASH, pa.nulls(len(merged), pa.int64())))
    images = pa.concat_tables(parts) if parts else None
    image_tags = arrow.rows_table(tag_updates, _IMAGE_TAGS) if tag_updates else None
    already = set(tag_tombs)
    tag_tombs += [key for key in dropped if key not in already]
    tags_table = None
    if tag_rows:
        # The order the tags files are written in, by one string per key (registry, name and tag
        # hold no NUL): comparing tuples that share their first parts costs far more.
        tag_rows.sort(key=lambda row: "\0".join(row[0]))
        tags_table = arrow.table(
            {
                "registry": arrow.strings([k[0] for k, _ in tag_rows]),
                "name": arrow.strings([k[1] for k, _ in tag_rows]),
                "tag": arrow.strings([k[2] for k, _ in tag_rows]),
                "image_id": arrow.strings([v for _, v in tag_rows]),
            },
            schema.TAGS,
        )
    return Changes(
        images=images,
        image_tags=image_tags,
        tags=tags_table,
        retired_tags=tag_tombs,
        retired_images=list(retired_images),
    )


_IMAGE_TAGS = pa.schema([("id", pa.string()), ("tags", pa.list_(pa.string()))])
_IMAGE_STATE = pa.schema(
    [
        ("id", pa.string()),
        ("exactness", pa.int8()),
        (CONTENT_HASH, pa.int64()),
        ("tags", pa.list_(pa.string())),
        ("registry", pa.string()),
        ("name", pa.string()),
        ("digest", pa.string()),
    ]
)


def _same_hash(incoming: int | None, stored: int | None) -> bool:
    # No hash is no evidence: a batch that compared nothing computed none.
    return incoming is not None and incoming == stored


def _cast_schema_for_rows() -> pa.Schema:
    # Rows read back from the store carry created_at as TIMESTAMP(us, UTC).
    return pa.schema([pa.field("created_at", _UTC_US) if f.name == "created_at" else f for f in schema.IMAGES])


def _hash_via(con: duckdb.DuckDBPyConnection, data: pa.Table) -> list:
    con.register("hash_input", data)
    try:
        return [r[0] for r in con.execute(f"SELECT {_HASH_SQL} FROM hash_input").fetchall()]
    finally:
        con.unregister("hash_input")


# ---- helpers


def _arrow(con, sql: str, params=None) -> pa.Table:
    # A relation hands Arrow over without the copy a DB-API result makes; DuckDB 2 renamed the method.
    relation = con.sql(sql, params=params)
    method = getattr(relation, "to_arrow_table", None) or relation.fetch_arrow_table
    return method()


def _arrow_reader(con, sql: str, params, batch_rows: int) -> pa.RecordBatchReader:
    relation = con.sql(sql, params=params)
    method = getattr(relation, "to_arrow_reader", None) or relation.fetch_record_batch
    return method(batch_rows)


_CREATION_COMMITS = {f"{0:020d}.json", f"{1:020d}.json"}


def _creation_properties(operation: str, run_id: str) -> CommitProperties:
    metadata = {_META + "operation": operation}
    if run_id:
        metadata[_META + "runId"] = run_id
    # No retries: delta-rs retried a create that lost the race for version 0 as a second CREATE
    # TABLE at the next free version, with a table id of its own, and a run of two processes that
    # failed then kept its tables (they were not only its two creation commits). The callers
    # take a lost race as the table made, or the property set, by the other process.
    return CommitProperties(custom_metadata=metadata, max_commit_retries=0)


def _created_by(table: str, log: str, name: str, run_id: str) -> bool:
    """Whether commit `name` of `table` is one of the two commits `create(run_id)` makes."""
    if not run_id:
        return False
    try:
        info = deltalog.commit_info(table, log, name)
    except StoreError:
        return False
    return info.get(_META + "runId") == run_id and info.get(_META + "operation") in ("create", "schema-version")


def _run_mark(run_id: str) -> str:
    return f"r{run_id}-"


def _names(files: Iterable) -> str:
    """The file names of add actions or paths, as a commit's metadata lists them."""
    return ",".join(sorted(str(getattr(f, "path", f)).rsplit("/", 1)[-1] for f in files))


def _files_of(entry: dict) -> set[str]:
    """The file names a commit of the history lists in its metadata (see `_names`)."""
    return set(str(entry.get(_META + "files", "")).split(","))


def _landed(history: Iterable[dict], since: int, names: str) -> int | None:
    """The version after `since` that committed a file of `names` (a commit's list), if any."""
    wanted = set(names.split(","))
    for entry in history:
        version = entry.get("version", -1)
        if version > since and wanted & _files_of(entry):
            return version
    return None


# The time in the name of a data file of images or tags (microseconds since the epoch) is never
# earlier than a written_at in it: a run names its files after the later of now and its rows'
# written_at, compaction after the later of now and the newest row it rewrote. The newest row of
# the store is then known from the file names in its log, without opening a file (a scan of
# written_at cost 17 ms at 100,000 images, 74 ms at 1M). A name without that time (a file written
# by another tool) sends the question to the files.
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_NAME_TIME = re.compile(r"(?:part-|compact-)([0-9]{16})-")
_UNNAMED = object()


def _key_rows(data: pa.Table | pa.RecordBatch, names: Sequence[str]) -> Iterable:
    """The rows of `data`'s key columns: one value each for a one-column key, else tuples."""
    columns = [data.column(name).to_pylist() for name in names]
    return columns[0] if len(columns) == 1 else zip(*columns)


def _newest_written(connect: Callable[[], duckdb.DuckDBPyConnection], paths: list[str]) -> datetime | None:
    """The latest written_at of the rows in the data files `paths` (of images or tags, None for no
    rows): by their names, else read from the files through `connect()`."""
    named = _newest_by_name(paths)
    if named is not _UNNAMED:
        return named
    listed = ", ".join(_quote(p) for p in paths)
    query = f"SELECT max({WRITTEN_AT}) FROM read_parquet([{listed}], hive_partitioning = false, union_by_name = true)"
    return connect().execute(query).fetchall()[0][0]


def _newest_by_name(paths: Iterable[str]):
    """The latest time named by `paths` (None for none), or `_UNNAMED` when one names none."""
    newest = -1
    for path in paths:
        match = _NAME_TIME.match(path.rsplit("/", 1)[-1])
        if match is None:
            return _UNNAMED
        newest = max(newest, int(match.group(1)))
    return None if newest < 0 else _EPOCH + timedelta(microseconds=newest)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _next_time(seen: datetime | None) -> datetime:
    """Now, or just after the newest row already written when a clock is behind: a row version
    must sort after every version its run could read."""
    now = _now()
    if seen is not None:
        if seen.tzinfo is None:
            seen = seen.replace(tzinfo=timezone.utc)
        if seen >= now:
            return seen + timedelta(microseconds=1)
    return now


def _before(now: datetime, span: timedelta) -> datetime:
    """`now - span`, or the earliest time there is when `span` reaches back past it: a retention of
    a million days keeps every tombstone, as a long one does."""
    try:
        return now - span
    except OverflowError:
        return datetime.min.replace(tzinfo=timezone.utc)


def _flags(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """A boolean column with null as False."""
    if column.null_count == 0:
        return column
    return pa.chunked_array([arrow.bools([v is True for v in column.to_pylist()])], pa.bool_())


def _lacks_hashes(data: pa.Table) -> bool:
    """Whether a data row (not a tombstone, not tags-only) of `data` has no content hash yet."""
    hashes = data.column(CONTENT_HASH)
    if hashes.null_count == 0:
        return False
    no_data = [
        tomb is True or tags is True
        for tomb, tags in zip(data.column(TOMBSTONE).to_pylist(), data.column(TAGS_ONLY).to_pylist(), strict=True)
    ]
    return hashes.null_count > no_data.count(True)


# Up to this many rows out of order are put in order in Python (see `_write_files`).
_SMALL_ORDER = 1024


def _python_order(data: pa.Table, keys: Sequence[str]) -> Sequence[int] | None:
    """The order of the rows by their sort keys, as Arrow orders them: a `range` when they are in
    order already; None when a key is null or more than _SMALL_ORDER rows are out of order. Python
    orders str as Arrow orders their UTF-8 bytes."""
    if len(data) < 2:
        return range(len(data))
    columns = [data.column(key).to_pylist() for key in keys]
    if any(None in values for values in columns):
        return None
    rows = columns[0] if len(columns) == 1 else list(zip(*columns))
    if all(a <= b for a, b in zip(rows, rows[1:])):
        return range(len(rows))
    if len(rows) > _SMALL_ORDER:
        return None
    return sorted(range(len(rows)), key=rows.__getitem__)


def _has_adjacent_duplicates(sorted_keys: pa.Table) -> bool:
    if len(sorted_keys) < 2:
        return False
    rows = list(zip(*(column.to_pylist() for column in sorted_keys.columns)))
    # As Arrow compares: a null key equals nothing, not even another null.
    return any(a == b and None not in a for a, b in zip(rows, rows[1:]))


class _Stats:
    """Delta file statistics for the key columns, gathered piece by piece: what delta-rs and Spark
    skip files by."""

    def __init__(self, table: str):
        self.columns = _STATS_COLUMNS.get(table, KEYS[table])
        self.rows = 0
        self.nulls = dict.fromkeys(self.columns, 0)
        self.low: dict = dict.fromkeys(self.columns)
        self.high: dict = dict.fromkeys(self.columns)

    def update(self, data: pa.Table) -> None:
        self.rows += len(data)
        for column in self.columns:
            values = data.column(column)
            self.nulls[column] += values.null_count
            if values.null_count == len(values):
                continue
            present = [v for v in values.to_pylist() if v is not None]
            low, high = min(present), max(present)
            self.low[column] = low if self.low[column] is None else min(low, self.low[column])
            self.high[column] = high if self.high[column] is None else max(high, self.high[column])

    def json(self) -> str:
        stats = {"numRecords": self.rows, "minValues": {}, "maxValues": {}, "nullCount": self.nulls}
        for column in self.columns:
            low, high = self.low[column], self.high[column]
            if isinstance(low, str) and isinstance(high, str):
                low, high = _lower_bound(low), _upper_bound(high)
                if high is not None:
                    stats["minValues"][column] = low
                    stats["maxValues"][column] = high
        return json.dumps(stats, separators=(",", ":"))


# String statistics are kept under 32 characters, where readers (deltalog._range) trust them: a
# longer value is written as a bound of 31, its prefix for a minimum, and for a maximum its prefix
# with the last character raised, which is above every string that begins with that prefix.
_BOUND = deltalog.STRING_STATS - 1


def _lower_bound(text: str) -> str:
    return text[:_BOUND]


def _upper_bound(text: str) -> str | None:
    if len(text) <= _BOUND:
        return text
    prefix = text[:_BOUND]
    while prefix:
        point = ord(prefix[-1]) + 1
        if point == 0xD800:
            point = 0xE000  # no surrogates in a string that must encode as UTF-8
        if point <= 0x10FFFF:
            return prefix[:-1] + chr(point)
        prefix = prefix[:-1]
    return None  # all of it the highest code point: no bound


def _chunks(reader: pa.RecordBatchReader, rows: int) -> Iterator[Iterator[pa.RecordBatch]]:
    """The reader's batches in runs of `rows` rows, each run a stream, so a file is written as
    its batches arrive."""
    batches = iter(reader)
    carry: list[pa.RecordBatch] = []

    def run():
        count = 0
        while count < rows:
            batch = carry.pop() if carry else next(batches, None)
            if batch is None:
                return
            if count + len(batch) > rows:
                carry.append(batch.slice(rows - count))
                batch = batch.slice(0, rows - count)
            count += len(batch)
            yield batch

    while True:
        first = carry.pop() if carry else next(batches, None)
        if first is None:
            return
        carry.append(first)
        yield run()


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _int(value) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _is_conflict(exc: Exception) -> bool:
    text = str(exc).lower()
    return isinstance(exc, CommitFailedError) or "conflict" in text or "concurrent" in text


def _check_retention(retention: timedelta, allow_short: bool) -> None:
    if retention < timedelta(0):
        raise StoreError("retention cannot be negative")
    if retention < MIN_RETENTION and not allow_short:
        raise StoreError(f"retention below {MIN_RETENTION} could delete files of a run that is still writing")


def _check_known_columns(table: str, files: deltalog.TableFiles) -> None:
    """StoreError when the table has columns this imgdex does not know: a newer one added them
    without a new schema version (columns only grow), and a compaction writes the columns it knows,
    so it would drop theirs."""
    known = set(DELTA_SCHEMAS[table].names)
    unknown = [name for name, _ in files.columns if name not in known]
    if unknown:
        raise StoreError(
            f"table {table} has columns this imgdex does not know ({', '.join(unknown)}), added by a newer "
            "imgdex; compacting would drop them (upgrade imgdex)"
        )


# Failures of the store's files, whatever layer reports them: pyarrow and delta-rs put the
# operating system's words in their own messages, not always with an errno.
_STORE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EACCES)


def _cause(exc: BaseException) -> str:
    """Why the store's files cannot be written, in a few words: `no space left on device`."""
    code = getattr(exc, "errno", None)
    if code in _STORE_ERRNOS:
        return os.strerror(code).lower()
    text = str(exc).lower()
    for known in _STORE_ERRNOS:
        if os.strerror(known).lower() in text:
            return os.strerror(known).lower()
    return first_line(exc)
