"""pandas and polars read what the README says they read: the Delta tables themselves (every row
version, the history) and the Parquet export (the current rows), with `created` exact to the
nanosecond and `created_at` in microseconds (Delta's and Spark's precision).

The store has two runs: the second moves `app:latest` to a new image, so the tables hold a
tags-only row version beside the first ones. Every frame is compared with what `imgdex sql` says of
the same store, so a reader that drops rows, versions or nanoseconds fails here.
"""

from __future__ import annotations

import json
import os

import pytest
from builders import classic_save_files, write_tar

deltalake = pytest.importorskip("deltalake")
pandas = pytest.importorskip("pandas")
polars = pytest.importorskip("polars")

CREATED = ["2026-11-29T10:54:27.000347894Z", "2026-11-30T08:01:02.123456789Z"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from click.testing import CliRunner

    from queries.cli import cli

    root = tmp_path_factory.mktemp("analysts")
    store = str(root / "store")
    first = write_tar(
        str(root / "first.tar"),
        classic_save_files([{"tags": ["app:latest", "app:1"], "layers": [b"base", b"one"], "created": CREATED[0]}]),
    )
    second = write_tar(
        str(root / "second.tar"),
        classic_save_files([{"tags": ["app:latest", "app:2"], "layers": [b"base", b"two"], "created": CREATED[1]}]),
    )
    for archive in (first, second):
        result = CliRunner().invoke(cli, ["index", archive, "--store", store], catch_exceptions=False)
        assert result.exit_code == 0, result.output
    return store


def _sql(store: str, query: str) -> list[dict]:
    from click.testing import CliRunner

    from queries.cli import cli

    result = CliRunner().invoke(cli, ["sql", "--store", store, "--format", "json", query], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.output.splitlines()]


def _epoch_ns(text: str) -> int:
    from indexer.timestamps import epoch_nanos

    return epoch_nanos(text)


def test_the_store_has_history_to_read(store):
    versions = _sql(store, "SELECT id, tags_only FROM images_versions")
    current = _sql(store, "SELECT id FROM images")
    assert len(current) == 2
    assert len(versions) > len(current), "the tag move should have written a row version"
    assert any(row["tags_only"] for row in versions)


def _micros(text: str) -> int:
    # Delta's TIMESTAMP is microseconds: created_at is floored there, `created` keeps the nanoseconds
    return _epoch_ns(text) // 1000


@pytest.mark.parametrize("reader", ["pandas", "polars"])
def test_delta_tables_read_as_their_history(store, reader):
    path = os.path.join(store, "images")
    columns = ["id", "tags", "tags_only", "created", "created_at"]
    if reader == "pandas":
        frame = deltalake.DeltaTable(path).to_pandas(columns=columns)
        micros = [None if pandas.isna(value) else value.value // 1000 for value in frame["created_at"]]
        rows = frame.drop(columns=["created_at"]).astype(object).where(frame.notna(), None).to_dict("records")
    else:
        frame = polars.read_delta(path).select(columns)
        assert frame.schema["created_at"] == polars.Datetime("us", "UTC")
        micros = frame.get_column("created_at").cast(polars.Int64).to_list()
        rows = frame.drop("created_at").to_dicts()
    got = sorted(
        (r["id"], sorted(r["tags"] if r["tags"] is not None else []), bool(r["tags_only"]), r["created"] or None, m)
        for r, m in zip(rows, micros, strict=True)
    )
    expected = _sql(store, "SELECT id, tags, tags_only, created FROM images_versions")
    assert got == sorted(
        (
            r["id"],
            sorted(r["tags"] or []),
            bool(r["tags_only"]),
            r["created"],
            _micros(r["created"]) if r["created"] else None,
        )
        for r in expected
    )
    assert sorted(r[3] for r in got if r[3]) == CREATED


@pytest.mark.parametrize("reader", ["pandas", "polars"])
def test_export_reads_as_the_current_rows(store, tmp_path, reader):
    from click.testing import CliRunner

    from queries.cli import cli

    out = str(tmp_path / "export")
    result = CliRunner().invoke(cli, ["export", out, "--store", store], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    images = os.path.join(out, "images.parquet")
    columns = ["id", "name", "tags", "created", "created_at"]
    if reader == "pandas":
        frame = pandas.read_parquet(images, columns=columns)
        rows = {r.id: (r.name, sorted(r.tags), r.created, r.created_at.value // 1000) for r in frame.itertuples()}
    else:
        frame = polars.read_parquet(images, columns=columns)
        micros = frame.get_column("created_at").cast(polars.Int64).to_list()
        rows = {
            r["id"]: (r["name"], sorted(r["tags"]), r["created"], m)
            for r, m in zip(frame.iter_rows(named=True), micros, strict=True)
        }
    expected = _sql(store, "SELECT id, name, tags, created FROM images")
    assert rows == {r["id"]: (r["name"], sorted(r["tags"]), r["created"], _micros(r["created"])) for r in expected}
    assert sorted(created for _, _, created, _ in rows.values()) == CREATED
    latest = [image_id for image_id, (_, tags, _, _) in rows.items() if "latest" in tags]
    assert len(latest) == 1, "the moved tag is on one image in the current rows"
