"""The images table described once (`indexer/store/columns.py`): the Arrow schema, the DuckDB DDL,
the Arrow build and the response's JSON keys all follow from it."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple
import os
import subprocess
import sys
from datetime import datetime, timezone

import duckdb
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from yandex.cloud.containerregistry.v1 import blob_pb2, image_pb2

from indexer import lineage, timestamps
from indexer.model import IMPORTED, Blob, HistoryEntry, ImageRecord, Platform
from indexer.references import blob_id
from indexer.store import columns, schema, writer
from indexer.store.writer import record_from_row, records_to_arrow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64
NOW = datetime(2026, 11, 30, 12, 0, 0, 123456, tzinfo=timezone.utc)


def test_the_arrow_schema_is_the_table_in_order():
    assert schema.IMAGES.names == [c.name for c in columns.IMAGES]
    for column, field in zip(columns.IMAGES, schema.IMAGES, strict=True):
        assert field.type == schema.arrow_type(column.type), column.name
    assert [f.name for f in schema.BLOB] == [c.name for c in columns.BLOB]
    assert [f.name for f in schema.HISTORY] == [c.name for c in columns.HISTORY]
    assert len({c.name for c in columns.IMAGES}) == len(columns.IMAGES)


def test_each_column_has_exactly_one_source_of_values():
    for column in (*columns.IMAGES, *columns.BLOB, *columns.HISTORY):
        assert (column.get is None) != (column.build is None), column.name


def test_the_duckdb_ddl_creates_the_arrow_schema():
    con = duckdb.connect()
    con.execute(schema.create_table_sql("images"))
    created = con.execute("DESCRIBE images").fetchall()
    con.register("arrow_images", schema.IMAGES.empty_table())
    from_arrow = con.execute("DESCRIBE arrow_images").fetchall()
    assert [row[0] for row in created] == [c.name for c in columns.IMAGES]
    for (name, ddl_type, *_), (_, arrow_type, *_) in zip(created, from_arrow, strict=True):
        assert duckdb.sqltype(ddl_type) == duckdb.sqltype(arrow_type), name


def test_response_columns_follow_the_official_message():
    image_fields = [f.json_name for f in sorted(image_pb2.Image.DESCRIPTOR.fields, key=lambda f: f.number)]
    blob_fields = [f.json_name for f in sorted(blob_pb2.Blob.DESCRIPTOR.fields, key=lambda f: f.number)]
    assert list(columns.IMAGE_FIELDS) == image_fields
    assert list(columns.BLOB_FIELDS) == blob_fields
    assert columns.RESPONSE_COLUMNS == (
        "id",
        "name",
        "digest",
        "compressed_size",
        "config_id",
        "config_digest",
        "config_size",
        "config_urls",
        "layers",
        "tags",
        "created",
    )
    assert columns.RESPONSE_KEYS["compressed_size"] == ("compressedSize",)
    assert columns.RESPONSE_KEYS["config_urls"] == ("config", "urls")
    assert columns.RESPONSE_KEYS["created"] == ("createdAt",)
    # every field of the message is printed from some column
    assert {keys[0] for keys in columns.RESPONSE_KEYS.values()} == set(image_fields)
    assert {keys[1] for keys in columns.RESPONSE_KEYS.values() if keys[0] == "config"} == set(blob_fields)
    assert set(columns.BLOB_RESPONSE_KEYS.values()) == set(blob_fields)


def test_the_table_imports_no_arrow():
    # The lookup path takes RESPONSE_COLUMNS from here and must stay free of pyarrow.
    code = "import sys, indexer.store.columns; print('pyarrow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _full() -> ImageRecord:
    layer = Blob(D1, 10, "application/vnd.oci.image.layer.v1.tar+gzip")
    foreign = Blob(D2, 2**40, "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", ("https://x/y",), "")
    return ImageRecord(
        id="crp00000000000000001",
        registry="cr.example",
        name="team/app",
        digest=D3,
        media_type="application/vnd.oci.image.manifest.v1+json",
        kind="image",
        config=Blob(D2, 1234, "application/vnd.oci.image.config.v1+json", (), "crpconfigrealid00000"),
        layers=(layer, foreign),
        layers_compressed=True,
        tags=("1.0", "latest"),
        created="2026-11-29T10:54:27.000347894Z",
        platform=Platform("linux", "arm64", "v8"),
        parent_digest=D1,
        source_kind="oci",
        source_path="/x/layout",
        exactness=3,
        labels=(("a", "1"), ("b", "ü")),
        env=("PATH=/bin",),
        entrypoint=("/e",),
        cmd=("serve", "--port", "8080"),
        history=(HistoryEntry("2026-01-01T00:00:00Z", "ADD x", "c", False), HistoryEntry("", "ENV", "", True)),
        diff_ids=(D1, D2),
        manifest_raw=b'{"schemaVersion":2}',
        config_raw=b"{}",
    )


def _bare() -> ImageRecord:
    return ImageRecord(
        id="crp00000000000000002",
        registry="",
        name="",
        digest="",
        media_type="",
        kind="index",
        config=None,
        layers=(),
        layers_compressed=True,
        tags=(),
        created=None,
        platform=None,
        parent_digest="",
        source_kind="docker-archive",
        source_path="a.tar",
        exactness=1,
    )


def _imported() -> ImageRecord:
    return dataclasses.replace(
        _full(), id="crpimportedid0000000", id_origin="imported", exactness=IMPORTED, declared_compressed_size=99
    )


@pytest.mark.parametrize("make", [_full, _bare, _imported])
def test_a_record_round_trips_through_the_build(make):
    record = make()
    table = records_to_arrow([record, _bare()], NOW)
    assert table.schema == schema.IMAGES
    row = table.to_pylist()[0]
    assert record_from_row(row) == record
    assert row["indexed_at"] == NOW
    nanos = timestamps.epoch_nanos(record.created) if record.created else None
    assert table.column("created_at").cast(pa.int64())[0].as_py() == nanos
    chains = lineage.chain_ids(record.diff_ids)
    assert row["chain_ids"] == list(chains)
    assert row["chain_id"] == (chains[-1] if chains else None)
    if record.config is not None:
        assert row["config_id"] == (record.config.id or blob_id(record.config.digest))
    assert [layer["id"] for layer in row["layers"]] == [blob_id(layer.digest) for layer in record.layers]
    assert row["compressed_size"] == record.compressed_size


def test_every_column_is_built_from_its_getter():
    # A change to one entry's getter shows in that column alone.
    records = [_full(), _bare(), _imported()]
    table = records_to_arrow(records, NOW)
    for column in columns.IMAGES:
        if column.get is None:
            continue
        expected = [columns.value(column, r) for r in records]
        got = table.column(column.name).to_pylist()
        if column.type == "timestamp[ns]":
            got = table.column(column.name).cast(pa.int64()).to_pylist()
        elif column.type == "map<string, string>":
            expected = [list(pairs) for pairs in expected]
        elif column.type == "list<blob>":
            expected = [[{f.name: columns.value(f, b) for f in columns.BLOB} for b in group] for group in expected]
            got = [[dict(b, urls=tuple(b["urls"])) for b in group] for group in got]
            expected = [[dict(b, urls=tuple(b["urls"])) for b in group] for group in expected]
        elif column.type == "list<history>":
            expected = [[h._asdict() for h in group] for group in expected]
        elif column.type.startswith("list<"):
            expected = [list(v) for v in expected]
        assert got == expected, column.name


_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=6)  # no lone surrogate: no UTF-8
_TEXTS = st.lists(_TEXT, max_size=4).map(tuple)


@st.composite
def _nested(draw) -> ImageRecord:
    """A record whose nested columns (those `pa.array` may build) vary."""
    labels = draw(st.dictionaries(_TEXT, _TEXT, max_size=4))
    history = draw(st.lists(st.builds(HistoryEntry, _TEXT, _TEXT, _TEXT, st.booleans()), max_size=4))
    layers = draw(st.lists(st.builds(Blob, st.just(D1), st.integers(0, 2**60), _TEXT, _TEXTS), max_size=3))
    return dataclasses.replace(
        draw(st.sampled_from([_full(), _bare(), _imported()])),
        labels=tuple(labels.items()),
        history=tuple(history),
        layers=tuple(layers),
        env=draw(_TEXTS),
        entrypoint=draw(_TEXTS),
        cmd=draw(_TEXTS),
        tags=draw(_TEXTS),
        diff_ids=draw(st.lists(st.sampled_from([D1, D2, D3]), max_size=3).map(tuple)),
    )


@settings(max_examples=150, deadline=None)
@given(st.lists(_nested(), min_size=1, max_size=5))
def test_pa_array_and_the_buffers_build_the_same_table(records):
    """Nested columns are built by `pa.array` where that imports no pandas, else from buffers."""
    built = {}
    for alone in (True, False):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(writer, "converts_alone", lambda alone=alone: alone)
            built[alone] = records_to_arrow(records, NOW)
    assert built[True].equals(built[False])
    assert [record_from_row(row) for row in built[True].to_pylist()] == records


@pytest.mark.parametrize("alone", [True, False])
def test_both_builds_refuse_what_the_store_cannot_take(alone, monkeypatch):
    monkeypatch.setattr(writer, "converts_alone", lambda: alone)
    for spoilt in (
        dataclasses.replace(_full(), env=("\ud800",)),
        dataclasses.replace(_full(), history=(HistoryEntry("", "\ud800", "", False),)),
        dataclasses.replace(_full(), labels=(("k", "\ud800"),)),
        dataclasses.replace(_full(), labels=(("k", "1"), ("k", "2"))),
        dataclasses.replace(_full(), tags=("v1", 2)),
    ):
        with pytest.raises((TypeError, ValueError)):
            records_to_arrow([spoilt], NOW)


def test_pandas_is_imported_only_where_it_is_loaded_already():
    code = (
        "import sys, datetime\n"
        "sys.path.insert(0, 'tests')\n"
        "from test_columns import _full\n"
        "from indexer.store import writer\n"
        "writer.records_to_arrow([_full()], datetime.datetime.now(datetime.timezone.utc))\n"
        "print('pandas' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


def test_only_named_tuples_in_the_struct_order_go_to_arrow_as_they_are():
    swapped = NamedTuple("Swapped", [("created_by", str), ("created", str), ("comment", str), ("empty_layer", bool)])
    assert writer._positional("history", [(), (HistoryEntry("a", "b", "c", True),)])
    assert not writer._positional("history", [(swapped("b", "a", "c", True),)])
    assert not writer._positional("history", [(("a", "b", "c", True),)])  # a plain tuple names nothing
    assert not writer._positional("blob", [(Blob(D1, 1),)])  # its id is computed, and comes first
    assert not writer._positional("string", [("a",)])
