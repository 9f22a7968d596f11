"""The tag claims of one `index --jobs` run: which image each worker last pointed each tag at, and
which tags two images of the run claimed (the later claim wins; see workers.py).

A worker meets a claim for nearly every image, so at a million images the claims are most of what
a run keeps. They are kept as Arrow columns, about 180 bytes a claim where tuples of Python strings
took 600, and the parent finds the contested tags with one DuckDB query instead of a dict of lists.
"""

from __future__ import annotations

# Claims gathered as Python values before they become a batch of Arrow columns.
_BATCH = 65_536
# Up to this many claims in all, whether any tag is in two workers' claims is first looked over in
# Python (~7 ms for 10,000, ~70 ms for 100,000); past it, starting DuckDB costs less than the look.
_LOOKED_OVER = 50_000
_COLUMNS = ("registry", "name", "tag", "position", "asked", "seen", "image_id", "digest")


class ClaimLog:
    """The claims one process met, in the order it met them. A claim is (registry, name, tag), its
    order (source position, units its shard had been asked about, record number: how one process
    reading the sources in turn would meet it), and the image id and manifest digest it points the
    tag at (a registry's tag move has no image id)."""

    def __init__(self) -> None:
        self.batches: list = []  # pyarrow.RecordBatch, picklable as they are
        self._rows: list[tuple] = []

    def add(self, registry: str, name: str, tag: str, order: tuple[int, int, int], image_id: str, digest: str):
        self._rows.append((registry, name, tag, *order, image_id, digest))
        if len(self._rows) >= _BATCH:
            self._seal()

    def __len__(self) -> int:
        return sum(batch.num_rows for batch in self.batches) + len(self._rows)

    def sealed(self) -> list:
        """Every claim, as record batches of `_COLUMNS`."""
        self._seal()
        return self.batches

    def _seal(self) -> None:
        if not self._rows:
            return
        # Loaded only here: workers start before pyarrow is (see workers.py).
        import pyarrow as pa

        from .store import arrow

        columns = list(zip(*self._rows))
        self._rows = []
        build = [arrow.strings] * 3 + [arrow.int64s] * 3 + [arrow.strings] * 2
        arrays = [make(list(values)) for make, values in zip(build, columns)]
        self.batches.append(pa.RecordBatch.from_arrays(arrays, names=list(_COLUMNS)))


def _shared_keys(tables: list) -> bool:
    """Whether a (registry, name, tag) is among the claims of two of `tables` (one per worker)."""
    seen: set = set()
    for table in tables:
        keys = set(zip(*(table.column(c).to_pylist() for c in ("registry", "name", "tag"))))
        if not seen.isdisjoint(keys):
            return True
        seen |= keys
    return False


def contested(logs: dict[int, list]) -> list[tuple[str, str, str, str, str]]:
    """(registry, name, tag, image id, digest) of the later claim of each tag that two images of the
    run claimed, from each worker's sealed claims (`logs`: worker -> record batches). Each worker's
    last claim of a tag counts; images are told apart by id, or by digest for a tag move."""
    import pyarrow as pa

    from .store import arrow

    tables = []
    for worker, batches in logs.items():
        if batches:
            table = pa.Table.from_batches(batches)
            tables.append(table.append_column("worker", arrow.int64s([worker] * table.num_rows)))
    if len(tables) < 2:
        return []  # one worker's own claims were settled by its writer as it went
    if sum(t.num_rows for t in tables) <= _LOOKED_OVER and not _shared_keys(tables):
        return []  # no tag in two workers' claims: nothing to settle, and no DuckDB to start (~80 ms)
    # Few tags are claimed in two workers: those are found first by a grouping that holds only
    # keys, and only their claims are ranked.
    from .store import duck

    con = duck.connect(config={"threads": 1, "memory_limit": "256MB"})
    try:
        con.register("claims", pa.concat_tables(tables))
        return con.execute(
            """
            WITH shared_keys AS (
                SELECT registry, name, tag FROM claims GROUP BY registry, name, tag HAVING count(DISTINCT worker) > 1
            ),
            latest AS (
                SELECT * FROM claims SEMI JOIN shared_keys USING (registry, name, tag)
                QUALIFY row_number() OVER (
                    PARTITION BY worker, registry, name, tag ORDER BY position DESC, asked DESC, seen DESC
                ) = 1
            ),
            shared AS (
                SELECT registry, name, tag FROM latest GROUP BY registry, name, tag
                HAVING count(DISTINCT CASE WHEN image_id <> '' THEN 'id:' || image_id ELSE 'digest:' || digest END) > 1
            )
            SELECT registry, name, tag, image_id, digest FROM latest JOIN shared USING (registry, name, tag)
            QUALIFY row_number() OVER (
                PARTITION BY registry, name, tag
                ORDER BY position DESC, asked DESC, seen DESC, image_id DESC, digest DESC
            ) = 1
            ORDER BY registry, name, tag
            """
        ).fetchall()
    finally:
        con.close()
