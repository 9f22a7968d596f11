"""The current state of a few images of a small store, resolved in Python from its files.

A run into a small store that others wrote reads the keys of its images files before its first
commit (`DeltaStore._seed`). When a batch holds a key the store holds (a moved `:latest`, the
usual case of one `imgdex index` per build; an image indexed again), it needs who holds the tag
now and that image's tags, or the stored image's row: without these rows, DuckDB starts to
answer, ~0.15 s of a run that otherwise takes ~0.3 s. Here the same answer comes from the files
already read, plus other columns of the few files that hold the ids concerned, by the rules
`deltalog.resolved_sql` gives DuckDB:

- an id's row is its first by (not tags-only, exactness, written_at, run_id), descending, nulls
  last; a tombstone or a tags-only row first means the id is not current;
- its tags are those of its newest row (data or tags-only) by (tags_written_at or written_at,
  run_id), descending, nulls last;
- a tag is held by the current images whose registry, name and tags carry it.

Anything these rules do not settle (two rows of one id tied on every ordering column, which SQL
would order at random; a file that cannot be read again) gives None, and the caller asks DuckDB.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from .deltalog import CONTENT_HASH, RUN_ID, TAGS_ONLY, TAGS_WRITTEN_AT, TOMBSTONE, WRITTEN_AT, declares_more

# The columns of the rows first read for their keys (`DeltaStore._absorb_files`), then those read
# for the ids whose state is asked.
KEY_COLUMNS = ("id", "digest", "registry", "name", "tags")
_VERSION_COLUMNS = ("exactness", WRITTEN_AT, RUN_ID, TOMBSTONE, TAGS_ONLY, TAGS_WRITTEN_AT, CONTENT_HASH, "id_origin")

# A row: its key columns, its version columns, then its file and its position there.
_ID, _DIGEST, _REGISTRY, _NAME, _TAGS = range(5)
_EXACTNESS, _WRITTEN, _RUN, _TOMB, _TAGS_ONLY, _TAGS_WRITTEN, _HASH, _ORIGIN, _PATH, _POSITION = range(5, 15)
_BY_NAME = {name: i for i, name in enumerate(KEY_COLUMNS + _VERSION_COLUMNS)}
# Stored images compared by value at most, per batch: each costs a row group read and a row made
# Python, where DuckDB's content hashes cost the same for a whole batch.
MAX_COMPARED = 64
# What one read here takes at most (a file's version columns, a row group to compare), by the
# decompressed size its file declares: a run's groups hold 1,024 images (a few MB), and this
# process has no memory limit of its own, as DuckDB has.
MAX_READ_BYTES = 64 << 20


def _python(column: pa.ChunkedArray) -> list:
    """A column's values; timestamps as their integers, which order alike: made datetimes, a zoned
    one asks pandas for its zone (importing it, 0.3 s, wherever it is installed)."""
    if pa.types.is_timestamp(column.type):
        return [v for chunk in column.chunks for v in chunk.view(pa.int64()).to_pylist()]
    return column.to_pylist()


def _desc(value) -> tuple:
    """A sort key that puts nulls below every value: DuckDB's default `DESC NULLS LAST`, for max()."""
    return (False, 0) if value is None else (True, value)


class StoredRows:
    """The key columns of every images row of a store's files (`paths`), by file, as read for the
    keys; `open_file(path)` opens a data file again for the version columns of some of its rows."""

    def __init__(self, keys: dict[str, pa.Table], open_file: Callable[[str], object]):
        self.paths = frozenset(keys)
        self._open = open_file
        self._tables = keys
        self._lists: dict[str, list[list]] | None = None
        self._versions: dict[str, list[list]] = {}  # path -> version columns, once read

    @property
    def _keys(self) -> dict[str, list[list]]:
        """Per file, its rows' key columns as Python lists (a small store: at most SEED_ROWS rows),
        made when first asked: most runs hold no stored key and never ask."""
        if self._lists is None:
            self._lists = {path: [t.column(c).to_pylist() for c in KEY_COLUMNS] for path, t in self._tables.items()}
        return self._lists

    def _ids_where(self, column: int, test: Callable[[object], bool]) -> set[str]:
        """The ids of the rows whose key column at position `column` passes `test`."""
        return {row_id for keys in self._keys.values() for row_id, value in zip(keys[_ID], keys[column]) if test(value)}

    def _rows_of(self, ids: set[str]) -> dict[str, list[tuple]] | None:
        """Every row version of `ids` (key and version columns), by id; None when a file that
        holds one cannot be read again as it was."""
        found: dict[str, list[tuple]] = {}
        for path, columns in self._keys.items():
            positions = [i for i, row_id in enumerate(columns[_ID]) if row_id in ids]
            if not positions:
                continue
            versions = self._versions.get(path)
            if versions is None:
                read = self._read(path, _VERSION_COLUMNS)
                if read is None:
                    return None
                # A column that a file predates reads as null, as DuckDB's union by name reads it.
                absent = [None] * len(columns[_ID])
                versions = self._versions[path] = [read.get(c, absent) for c in _VERSION_COLUMNS]
            for i in positions:
                row = tuple(c[i] for c in columns) + tuple(c[i] for c in versions) + (path, i)
                found.setdefault(row[_ID], []).append(row)
        return found

    def _read(self, path: str, columns: Sequence[str]) -> dict[str, list] | None:
        """Those of `columns` that a file read for its keys has, as Python lists; None when it cannot
        be read again or no longer holds as many rows."""
        rows = len(self._keys[path][_ID])
        try:
            with self._open(path) as source:
                parquet = pq.ParquetFile(source)
                if parquet.metadata.num_rows != rows:
                    return None
                present = [c for c in columns if c in set(parquet.schema_arrow.names)]
                if declares_more(parquet.metadata, present, MAX_READ_BYTES):
                    return None
                data = parquet.read(columns=present)
        except (OSError, ValueError, TypeError, pa.ArrowException):
            return None
        return {c: _python(data.column(c)) for c in present}

    @staticmethod
    def _current(rows: list[tuple]) -> tuple | None | bool:
        """The current row of one id with its tags in place, None when the id is not current, or
        False when the rows tie on every ordering column and SQL's pick is not known."""

        def rank(row: tuple) -> tuple:
            return (not row[_TAGS_ONLY], _desc(row[_EXACTNESS]), _desc(row[_WRITTEN]), _desc(row[_RUN]))

        def age(row: tuple) -> tuple:
            written = row[_TAGS_WRITTEN] if row[_TAGS_WRITTEN] is not None else row[_WRITTEN]
            return (_desc(written), _desc(row[_RUN]))

        first = max(rows, key=rank)
        newest = max(rows, key=age)
        if sum(rank(r) == rank(first) for r in rows) > 1 or sum(age(r) == age(newest) for r in rows) > 1:
            return False
        if first[_TOMB] or first[_TAGS_ONLY]:
            return None
        return first[:_TAGS] + (newest[_TAGS],) + first[_TAGS + 1 :]

    def _settled(self, ids: set[str]) -> list[tuple] | None:
        """The current rows (tags in place) of those of `ids` that are current, in id order; None
        when one of them cannot be settled here."""
        rows = self._rows_of(ids)
        if rows is None:
            return None
        out = []
        for image_id in sorted(rows):
            current = self._current(rows[image_id])
            if current is False:
                return None
            if current is not None:
                out.append(current)
        return out

    def state(self, ids: Iterable[str], hashed: Iterable[str] | None = None) -> list[dict] | None:
        """`Snapshot.image_state` of `ids`: the current rows of those the files hold;
        None when one of them cannot be settled here, or lacks the content hash that `hashed` (all
        of `ids` when None) asks for (DuckDB computes it)."""
        wanted = set(ids)
        need_hash = wanted if hashed is None else set(hashed)
        settled = self._settled(wanted)
        if settled is None or any(row[_HASH] is None and row[_ID] in need_hash for row in settled):
            return None
        return [
            {
                "id": row[_ID],
                "exactness": row[_EXACTNESS],
                CONTENT_HASH: row[_HASH],
                "tags": row[_TAGS],
                "registry": row[_REGISTRY],
                "name": row[_NAME],
                "digest": row[_DIGEST],
            }
            for row in settled
        ]

    def with_digests(self, digests: set[str], columns: Sequence[str]) -> list[tuple] | None:
        """`columns` (among the key and version columns) of the current images that have a row
        version with one of `digests`; None when one of them cannot be settled here."""
        candidates = self._ids_where(_DIGEST, digests.__contains__)
        settled = self._settled(candidates) if candidates else []
        if settled is None:
            return None
        return [tuple(row[_BY_NAME[c]] for c in columns) for row in settled]

    def same_data(self, incoming: pa.Table, columns: Sequence[str]) -> set[str] | None:
        """The ids of `incoming` whose current stored row holds the same values in `columns` (read
        from its file); None when one of them cannot be settled or read here, or when more than
        MAX_COMPARED are stored (DuckDB compares a large batch by content hash for less)."""
        ids = incoming.column("id").to_pylist()
        held = self._ids_where(_ID, set(ids).__contains__)
        if len(held) > MAX_COMPARED:
            return None
        settled = self._settled(held)
        if settled is None:
            return None
        position = {image_id: i for i, image_id in enumerate(ids)}
        by_file: dict[str, list[tuple]] = {}
        for row in settled:
            by_file.setdefault(row[_PATH], []).append(row)
        same = set()
        for path, rows in by_file.items():
            stored = self._rows_at(path, {row[_POSITION] for row in rows}, columns)
            if stored is None:
                return None
            for row in rows:
                if stored[row[_POSITION]] == incoming.slice(position[row[_ID]], 1).select(list(columns)).to_pylist()[0]:
                    same.add(row[_ID])
        return same

    def _rows_at(self, path: str, positions: set[int], columns: Sequence[str]) -> dict[int, dict] | None:
        """`columns` of the rows at `positions` of a file read for its keys, from the row groups that
        hold them (the raw JSON of a whole compacted file would be tens of MB); None when it cannot
        be read again, lacks one of `columns`, or declares a group of more than MAX_READ_BYTES
        (DuckDB reads it under its memory limit)."""
        out = {}
        try:
            with self._open(path) as source:
                parquet = pq.ParquetFile(source)
                metadata = parquet.metadata
                if metadata.num_rows != len(self._keys[path][_ID]) or not set(columns) <= set(
                    parquet.schema_arrow.names
                ):
                    return None
                start = 0
                for group in range(metadata.num_row_groups):
                    end = start + metadata.row_group(group).num_rows
                    inside = sorted(p for p in positions if start <= p < end)
                    if inside:
                        if metadata.row_group(group).total_byte_size > MAX_READ_BYTES:
                            return None
                        rows = parquet.read_row_group(group, columns=list(columns))
                        out.update((p, rows.slice(p - start, 1).to_pylist()[0]) for p in inside)
                    start = end
        except (OSError, ValueError, TypeError, pa.ArrowException):
            return None
        return out if len(out) == len(positions) else None

    def tag_holders(self, keys: Sequence[tuple[str, str, str]]) -> list[tuple[str, str, str, str]] | None:
        """`Snapshot.tag_holders`: (registry, name, tag, image_id) of the current images that carry
        one of `keys`; None when one of them cannot be settled here."""
        wanted = set(keys)
        tags = {key[2] for key in wanted}
        # An image that holds a tag carries it in its newest row, which is one of these rows:
        # only the ids of rows that list one of the tags can hold one.
        candidates = self._ids_where(_TAGS, lambda row_tags: bool(row_tags) and not tags.isdisjoint(row_tags))
        if not candidates:
            return []
        settled = self._settled(candidates)
        if settled is None:
            return None
        return [
            (row[_REGISTRY], row[_NAME], tag, row[_ID])
            for row in settled
            for tag in row[_TAGS] or ()
            if (row[_REGISTRY], row[_NAME], tag) in wanted
        ]

    def source_tags(self, kind: str, location: str) -> list[tuple[str, str, str]] | None:
        """`Snapshot.source_tags`: (registry, name, tag) of the tags held by the current images
        whose data row is the record of the source `kind` at `location`, sorted; None when one of
        them cannot be settled or read here. The source columns of every file are read (two narrow
        columns), so that only the ids with a row of that source are settled."""
        columns = ("source_kind", "source_path")
        sources: dict[str, dict[str, list]] = {}
        candidates: set[str] = set()
        for path, keys in self._keys.items():
            read = self._read(path, columns)
            if read is None or len(read) != len(columns):
                return None
            sources[path] = read
            candidates.update(
                row_id
                for row_id, row_kind, row_path in zip(keys[_ID], read["source_kind"], read["source_path"])
                if row_kind == kind and row_path == location
            )
        settled = self._settled(candidates) if candidates else []
        if settled is None:
            return None
        found = []
        for row in settled:
            source = sources[row[_PATH]]
            position = row[_POSITION]
            if row[_TAGS] and (source["source_kind"][position], source["source_path"][position]) == (kind, location):
                found += [(row[_REGISTRY], row[_NAME], tag) for tag in row[_TAGS]]
        return sorted(found)
