"""The store: schema, idempotent re-indexing, exactness, tag moves, readers beside a writer,
the writer lock, killed index runs, Parquet-only copies and the IMGDEX_STORE variable.

Anything that needs its own process runs `python -m queries.cli` in a subprocess. No test
asserts on elapsed time; delays only pick the moment a run is killed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import duckdb
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from indexer import timestamps
from indexer.errors import NotFound
from indexer.model import (
    EXACT_MANIFEST,
    IMPORTED,
    UNCOMPRESSED,
    Blob,
    HistoryEntry,
    ImageRecord,
    Platform,
    merge_records,
)
from indexer.run import index_sources
from indexer.sources import parse_source
from indexer.sources.parse import Context
from indexer.store import paths, schema
from indexer.store.delta_writer import DeltaWriter
from indexer.store.writer import now_utc
from queries import engine, lookup

from builders import Blobs, classic_save_files, named, write_dir, write_tar
from conftest import store_views
from fake_engine import FakeEngine, Step, classic_image

CLI = [sys.executable, "-m", "queries.cli"]
REGISTRY = "reg.example"
BIG_IMAGES = 3000
BIG_REPOS = 7
SMALL_IMAGES = 5
# Runs `imgdex` with a smaller batch, so that a run commits many transactions before its snapshot.
SMALL_BATCH_RUNNER = (
    "import sys, indexer.run; indexer.run.BATCH = int(sys.argv.pop(1)); from queries.cli import main; main()"
)
KILL_BATCH = 200
SUBPROCESS_TIMEOUT = 120


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def clean_env(**extra) -> dict:
    env = dict(os.environ)
    env.pop(paths.STORE_ENV, None)
    env.update(extra)
    return env


def imgdex(*args, cwd, env=None, stdin=None, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [*CLI, *map(str, args)],
        cwd=cwd,
        env=env if env is not None else clean_env(),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"imgdex {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def sql_rows(store, query, cwd, env=None) -> list[dict]:
    args = ["sql", query, "--format", "json"]
    if store is not None:
        args += ["--store", store]
    out = imgdex(*args, cwd=cwd, env=env).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def count_images(store, cwd, env=None) -> int:
    return sql_rows(store, "select count(*) as n from images", cwd, env)[0]["n"]


def get_many(store, ids, cwd) -> list[dict]:
    out = imgdex("get", "--store", store, "--ids-from", "-", cwd=cwd, stdin="\n".join(ids) + "\n").stdout
    return [json.loads(line) for line in out.splitlines()]


def list_all(store, cwd, *extra) -> list[dict]:
    images, token = [], ""
    while True:
        args = ["list", "--store", store, "--page-size", "1000", *extra]
        if token:
            args += ["--page-token", token]
        page = json.loads(imgdex(*args, cwd=cwd).stdout)
        images += page.get("images", [])
        token = page.get("nextPageToken", "")
        if not token:
            return images


def oci_layout(root, count, *, repo="team/app", repos=1, salt="", created_base="2026-01-01T00:00:00") -> str:
    """A layout of `count` single-platform images sharing one base layer, each named REGISTRY/REPO[N]:tI."""
    blobs = Blobs()
    top = []
    for i in range(count):
        desc = blobs.image(
            created=f"{created_base}.{i:09d}Z",
            layers=(b"shared-base-layer", f"{salt}unique-{i}".encode()),
        )
        name = f"{repo}{i % repos}" if repos > 1 else repo
        top.append(named(desc, f"{REGISTRY}/{name}:t{i}"))
    return write_dir(str(root), blobs.layout_files(top))


def multi_platform_layout(root) -> str:
    blobs = Blobs()
    amd64 = blobs.image(layers=(b"multi-amd64-base", b"multi-amd64-top"), arch="amd64")
    arm64 = blobs.image(layers=(b"multi-arm64-base",), arch="arm64", created="2026-02-03T04:05:06.7Z")
    index = blobs.index(
        [
            dict(amd64, platform={"os": "linux", "architecture": "amd64"}),
            dict(arm64, platform={"os": "linux", "architecture": "arm64", "variant": "v8"}),
        ]
    )
    return write_dir(str(root), blobs.layout_files([named(index, f"{REGISTRY}/multi:v1")]))


def classic_save(path) -> str:
    return write_tar(
        str(path),
        classic_save_files(
            [
                {
                    "tags": [f"{REGISTRY}/classic:1.0", f"{REGISTRY}/classic:latest"],
                    "layers": [b"classic-1", b"classic-22"],
                    "created": "2026-03-04T05:06:07.123456789Z",
                },
                {"tags": [f"{REGISTRY}/other:2"], "layers": [b"other-333"], "created": None},
            ]
        ),
    )


def records_of(spec: str) -> list[ImageRecord]:
    source = parse_source(spec)
    ctx = Context(source_kind=source.kind, source_path=source.location)
    records = list(source.records(ctx))
    assert all(isinstance(r, ImageRecord) for r in records), records
    return records


def same_type(a: pa.DataType, b: pa.DataType) -> bool:
    """Type equality that ignores the names Parquet gives list and map children."""
    if pa.types.is_list(a) or pa.types.is_large_list(a):
        return pa.types.is_list(b) and same_type(a.value_type, b.value_type)
    if pa.types.is_map(a):
        return pa.types.is_map(b) and same_type(a.key_type, b.key_type) and same_type(a.item_type, b.item_type)
    if pa.types.is_struct(a):
        return (
            pa.types.is_struct(b)
            and [f.name for f in a] == [f.name for f in b]
            and all(same_type(x.type, y.type) for x, y in zip(a, b))
        )
    return a == b


def is_scalar(dtype: pa.DataType) -> bool:
    return not (pa.types.is_list(dtype) or pa.types.is_map(dtype) or pa.types.is_struct(dtype))


def assert_consistent(con, where: str) -> int:
    """Every image row is whole and the tags table agrees with it; returns the image count."""
    rows = con.execute(
        "SELECT id, registry, name, kind, manifest_raw, layers, compressed_size, tags FROM images"
    ).fetchall()
    ids = [row[0] for row in rows]
    assert len(ids) == len(set(ids)), f"{where}: duplicate image ids"
    by_id = {}
    for image_id, registry, name, kind, manifest_raw, layers, compressed_size, tags in rows:
        by_id[image_id] = (registry, name)
        sizes = [layer["size"] for layer in layers]
        assert compressed_size == sum(sizes), (
            f"{where}: {image_id} compressed_size {compressed_size} != sum of layers {sum(sizes)}"
        )
        if kind == "image" and manifest_raw is not None:
            manifest = json.loads(bytes(manifest_raw))
            expected = [(layer["digest"], layer["size"]) for layer in manifest["layers"]]
            assert [(layer["digest"], layer["size"]) for layer in layers] == expected, (
                f"{where}: {image_id} layers differ from its manifest"
            )
        assert list(tags) == sorted(tags), f"{where}: {image_id} tags not sorted"
    tag_rows = con.execute("SELECT registry, name, tag, image_id FROM tags").fetchall()
    keys = [row[:3] for row in tag_rows]
    assert len(keys) == len(set(keys)), f"{where}: several rows for one (registry, name, tag)"
    tags_of: dict[str, list[str]] = {}
    for registry, name, tag, image_id in tag_rows:
        assert image_id in by_id, f"{where}: tag {registry}/{name}:{tag} points at missing image {image_id}"
        assert by_id[image_id] == (registry, name), (
            f"{where}: tag {registry}/{name}:{tag} points into another repository"
        )
        tags_of.setdefault(image_id, []).append(tag)
    for image_id, *_rest, tags in rows:
        assert list(tags) == sorted(tags_of.get(image_id, [])), (
            f"{where}: {image_id} tags column disagrees with the tags table"
        )
    return len(rows)


def store_con(store):
    """A reader's connection (the Parquet snapshot), as the CLI opens it."""
    return engine.connect(str(store))


# ---------------------------------------------------------------------------------------------
# corpora shared by several tests
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpora")
    return {
        "classic": classic_save(root / "classic.tar"),
        "oci": oci_layout(root / "oci", 3, repo="team/plain"),
        "multi": multi_platform_layout(root / "multi"),
        "small": oci_layout(root / "small", SMALL_IMAGES, repo="team/small", salt="small-"),
    }


@pytest.fixture(scope="module")
def mixed_specs(corpora):
    return [f"docker-archive:{corpora['classic']}", f"oci:{corpora['oci']}", f"oci:{corpora['multi']}"]


@pytest.fixture(scope="module")
def big_layout(tmp_path_factory):
    return oci_layout(tmp_path_factory.mktemp("big") / "layout", BIG_IMAGES, repos=BIG_REPOS, salt="big-")


@pytest.fixture(scope="module")
def base_store(tmp_path_factory, corpora):
    """A store holding one completed run of the small layout; copy it, never write to it."""
    root = tmp_path_factory.mktemp("base")
    store = root / "store"
    imgdex("index", "--store", store, f"oci:{corpora['small']}", cwd=root)
    return store


def copy_store(base, target):
    shutil.copytree(base, target, symlinks=True)
    return target


# ---------------------------------------------------------------------------------------------
# 1. schema
# ---------------------------------------------------------------------------------------------


def _reader_type(field: pa.Field) -> str:
    # Delta keeps microseconds, so created_at is a UTC instant of microseconds (see delta.py).
    if field.name == "created_at":
        return "TIMESTAMP WITH TIME ZONE"
    return schema.duckdb_type(field.type)


def _assert_reader_matches(con, where):
    for table, arrow_schema in schema.TABLES.items():
        described = con.execute(f"DESCRIBE {table}").fetchall()
        assert [row[0] for row in described] == arrow_schema.names, f"{where}: {table} columns"
        for (column, duck_type, *_), field in zip(described, arrow_schema):
            expected = _reader_type(field)
            assert duckdb.sqltype(duck_type) == duckdb.sqltype(expected), (
                f"{where}: {table}.{column} is {duck_type}, schema says {expected}"
            )


def _assert_tables_match(store, where):
    import deltalake

    from indexer.store.delta import DELTA_SCHEMAS

    for table in schema.TABLES:
        stored = pa.schema(deltalake.DeltaTable(os.path.join(store, table)).schema().to_arrow())
        expected = DELTA_SCHEMAS[table]
        assert stored.names == expected.names, f"{where}: {table} columns"
        for field in expected:
            got = stored.field(field.name).type
            got = pa.string() if got == pa.string_view() else got
            assert same_type(got, field.type) or str(got).replace("large_", "") == str(field.type), (
                f"{where}: {table}.{field.name} is {got} in the table, schema says {field.type}"
            )


def test_schema_of_a_new_store(tmp_path, corpora):
    store = tmp_path / "store"
    imgdex("index", "--store", store, f"oci:{corpora['oci']}", cwd=tmp_path)
    _assert_tables_match(str(store), "new store")
    _assert_reader_matches(store_con(store), "reader")


def test_schema_of_populated_store(tmp_path, mixed_specs):
    store = tmp_path / "store"
    imgdex("index", "--store", store, *mixed_specs, cwd=tmp_path)
    _assert_tables_match(str(store), "store after a run")
    _assert_reader_matches(store_con(store), "reader after a run")
    # created has every digit the config gave; created_at is that instant floored to microseconds.
    rows = store_views(str(store)).execute("SELECT created, epoch_us(created_at), indexed_at FROM images").fetchall()
    created = [row[0] for row in rows]
    assert any(text and not text.endswith("000Z") for text in created)
    for text, micros, indexed_at in rows:
        assert micros == (timestamps.epoch_nanos(text) // 1000 if text else None)
        assert indexed_at.tzinfo is not None


# ---------------------------------------------------------------------------------------------
# 2. idempotence
# ---------------------------------------------------------------------------------------------


def _state(store, cwd):
    ids = [row["id"] for row in sql_rows(store, "select id from images order by id", cwd)]
    return {
        "ids": ids,
        "count": count_images(store, cwd),
        "duplicates": sql_rows(store, "select count(*) - count(distinct id) as d from images", cwd)[0]["d"],
        "tags": sql_rows(store, "select registry, name, tag, image_id from tags order by all", cwd),
        "get": get_many(store, ids, cwd),
        "list": list_all(store, cwd),
    }


def test_reindexing_is_idempotent(tmp_path, mixed_specs):
    store = tmp_path / "store"
    imgdex("index", "--store", store, *mixed_specs, cwd=tmp_path)
    first = _state(store, tmp_path)
    # 2 classic + 3 OCI + (index + 2 children)
    assert first["count"] == 8
    assert first["duplicates"] == 0
    kinds = {row["kind"] for row in sql_rows(store, "select distinct kind from images", tmp_path)}
    assert kinds == {"image", "index"}
    assert {row["source_kind"] for row in sql_rows(store, "select distinct source_kind from images", tmp_path)} == {
        "docker-archive",
        "oci",
    }

    imgdex("index", "--store", store, *mixed_specs, cwd=tmp_path)
    second = _state(store, tmp_path)
    assert second == first

    # One source at a time, in another order: still the same store.
    for spec in reversed(mixed_specs):
        imgdex("index", "--store", store, spec, cwd=tmp_path)
    assert _state(store, tmp_path) == first
    assert count_images(store, tmp_path) == 8
    assert len(sql_rows(store, "select run_id from runs", tmp_path)) == 5


def test_reindexing_multi_platform_index_resolves_the_same(tmp_path, corpora):
    store = tmp_path / "store"
    spec = f"oci:{corpora['multi']}"
    outputs = []
    for _ in range(2):
        imgdex("index", "--store", store, spec, cwd=tmp_path)
        outputs.append(
            [
                json.loads(
                    imgdex("get", "--store", store, f"{REGISTRY}/multi:v1", "--platform", platform, cwd=tmp_path).stdout
                )
                for platform in ("linux/amd64", "linux/arm64", "linux/arm64/v8")
            ]
        )
    assert outputs[0] == outputs[1]
    amd64, arm64, arm64_v8 = outputs[0]
    assert amd64["id"] != arm64["id"]
    assert arm64 == arm64_v8
    assert count_images(store, tmp_path) == 3


# ---------------------------------------------------------------------------------------------
# 3. exactness
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def exact_record(corpora) -> ImageRecord:
    record = records_of(f"oci:{corpora['oci']}")[0]
    assert record.exactness == EXACT_MANIFEST and record.tags
    return record


def _loose(record: ImageRecord, tag: str) -> ImageRecord:
    """The same id, known less exactly: other layer sizes, another source, another tag."""
    return dataclasses.replace(
        record,
        exactness=UNCOMPRESSED,
        layers=tuple(Blob(layer.digest, layer.size * 10 + 1, layer.media_type, layer.urls) for layer in record.layers),
        layers_compressed=False,
        tags=(tag,),
        source_kind="docker-archive",
        source_path="/elsewhere.tar",
        manifest_raw=None,
    )


def _row(con, image_id):
    rows = con.execute(
        "SELECT exactness, compressed_size, source_kind, source_path, tags FROM images WHERE id = ?", [image_id]
    ).fetchall()
    assert len(rows) == 1, rows
    return rows[0]


def test_less_exact_record_never_replaces_a_more_exact_one(tmp_path, exact_record):
    loose = _loose(exact_record, "from-loose")
    with DeltaWriter(str(tmp_path / "store")) as writer:
        writer.write([exact_record], now_utc())
        writer.write([loose], now_utc())
        exactness, size, kind, path, tags = _row(store_views(writer.store), exact_record.id)
        assert (exactness, size, kind, path) == (
            EXACT_MANIFEST,
            exact_record.compressed_size,
            "oci",
            exact_record.source_path,
        )
        assert tags == sorted({*exact_record.tags, "from-loose"})
        # Written again, the loose record still loses, and a second loose tag is pooled too.
        writer.write([_loose(exact_record, "second")], now_utc())
        exactness, size, *_rest, tags = _row(store_views(writer.store), exact_record.id)
        assert (exactness, size) == (EXACT_MANIFEST, exact_record.compressed_size)
        assert tags == sorted({*exact_record.tags, "from-loose", "second"})
        assert_consistent(store_views(writer.store), "database")
    con = store_con(tmp_path / "store")
    assert _row(con, exact_record.id)[:2] == (EXACT_MANIFEST, exact_record.compressed_size)
    assert_consistent(con, "snapshot")


def test_more_exact_record_replaces_a_less_exact_one(tmp_path, exact_record):
    loose = _loose(exact_record, "from-loose")
    with DeltaWriter(str(tmp_path / "store")) as writer:
        writer.write([loose], now_utc())
        assert _row(store_views(writer.store), exact_record.id)[0] == UNCOMPRESSED
        writer.write([exact_record], now_utc())
        exactness, size, kind, _path, tags = _row(store_views(writer.store), exact_record.id)
        assert (exactness, size, kind) == (EXACT_MANIFEST, exact_record.compressed_size, "oci")
        assert tags == sorted({*exact_record.tags, "from-loose"})
        # An equally exact record with the same data changes nothing: where it was seen is not data.
        again = dataclasses.replace(exact_record, source_path="/again", tags=())
        writer.write([again], now_utc())
        assert _row(store_views(writer.store), exact_record.id)[3] == exact_record.source_path
        assert_consistent(store_views(writer.store), "database")


@pytest.mark.parametrize("exact_first", [True, False], ids=["exact-first", "loose-first"])
def test_exactness_holds_within_one_batch(tmp_path, exact_record, exact_first):
    """Two records of one id in one write: the more exact one is stored, once, with both tags."""
    loose = _loose(exact_record, "from-loose")
    batch = [exact_record, loose] if exact_first else [loose, exact_record]
    with DeltaWriter(str(tmp_path / "store")) as writer:
        writer.write(batch, now_utc())
        exactness, size, *_rest, tags = _row(store_views(writer.store), exact_record.id)
        assert (exactness, size) == (EXACT_MANIFEST, exact_record.compressed_size)
        assert tags == sorted({*exact_record.tags, "from-loose"})


# ---------------------------------------------------------------------------------------------
# 3b. equally exact records merge field by field, whatever their order
# ---------------------------------------------------------------------------------------------


def _save_and_engine(root):
    """A classic docker save of one image and an engine holding the same image (same config, same
    layers): two records of one resource, both exactness 1. The save knows the config size and
    bytes and the layer tar sizes; the engine knows the history and a tag more, not the config size."""
    files = classic_save_files(
        [
            {
                "tags": [f"{REGISTRY}/same:1"],
                "layers": [b"same-layer-1", b"same-layer-22"],
                "created": "2026-03-04T05:06:07.123456789Z",
            }
        ]
    )
    archive = write_tar(str(root / "save.tar"), files)
    config_name = json.loads(files["manifest.json"])[0]["Config"]
    config = json.loads(files[config_name])
    image = classic_image(
        "same",
        tags=[f"{REGISTRY}/same:1", f"{REGISTRY}/same:engine"],
        steps=(Step("ADD a", 9), Step("ENV x", None), Step("ADD b", 11)),
        created=config["created"],
        env=("A=1",),
        cmd=None,
        labels={"n": "0"},
    )
    image["inspect"]["Id"] = "sha256:" + config_name.removesuffix(".json")
    image["inspect"]["RootFS"]["Layers"] = config["rootfs"]["diff_ids"]
    fake = FakeEngine()
    fake.add(image)
    return [f"docker-archive:{archive}", "docker-daemon:"], fake, len(files[config_name])


def _child_and_standalone(root, created=None):
    """One manifest as the child of an index (platform from the index, a parent digest) and the
    same manifest named on its own: exactness 3 both, one id."""
    blobs = Blobs()
    child = blobs.image(layers=(b"arm-layer",), arch="arm64", **({"created": created} if created else {}))
    index = blobs.index([dict(child, platform={"os": "linux", "architecture": "arm64", "variant": "v8"})])
    write_dir(str(root / "with-index"), blobs.layout_files([named(index, f"{REGISTRY}/multi:v1")]))
    write_dir(str(root / "alone"), blobs.layout_files([named(child, f"{REGISTRY}/multi:arm")]))
    return [f"oci:{root / 'with-index'}", f"oci:{root / 'alone'}"], None, None


# Where and when a record was seen: the newest record's, so they follow the order of runs.
_ORDER_DEPENDENT = ("indexed_at", "source_kind", "source_path")


def _stored(store) -> tuple[list, list]:
    con = store_con(store)
    images = con.execute(f"SELECT * EXCLUDE ({', '.join(_ORDER_DEPENDENT)}) FROM images ORDER BY id").fetchall()
    tags = con.execute("SELECT * FROM tags ORDER BY ALL").fetchall()
    return images, tags


def _created_out_of_nanoseconds(root):
    # A time an int64 of nanoseconds cannot hold: its created_at is NULL, merged or not.
    return _child_and_standalone(root, created="1600-01-01T00:00:00Z")


@pytest.mark.parametrize(
    "corpus",
    [_save_and_engine, _child_and_standalone, _created_out_of_nanoseconds],
    ids=["save-and-engine", "child-and-standalone", "created-before-1678"],
)
def test_equally_exact_records_merge_field_by_field_in_any_order(tmp_path, monkeypatch, corpus):
    from indexer.sources import daemon

    specs, fake, config_size = corpus(tmp_path)
    if fake is not None:
        monkeypatch.setattr(daemon, "connect_engine", lambda address, environ=None: fake)
    a, b = specs
    layouts = {"a-then-b": [[a], [b]], "b-then-a": [[b], [a]], "one-run-ab": [[a, b]], "one-run-ba": [[b, a]]}
    results = {}
    for label, runs in layouts.items():
        store = tmp_path / label
        for run in runs:
            with DeltaWriter(str(store)) as writer:
                assert index_sources(run, writer).ok
        results[label] = _stored(store)
    first = results["a-then-b"]
    for label, got in results.items():
        assert got == first, f"{label} differs from a-then-b"
    con = store_con(tmp_path / "a-then-b")
    if fake is not None:
        [row] = con.execute(
            "SELECT config_size, compressed_size, config_raw IS NOT NULL, len(history), tags FROM images"
        ).fetchall()
        # the save's config size and bytes and its layer tar sizes; the engine's history; both tags
        assert row == (config_size, len(b"same-layer-1") + len(b"same-layer-22"), True, 3, ["1", "engine"])
    else:
        rows = con.execute(
            "SELECT kind, parent_digest, platform_variant, tags, created, created_at IS NULL FROM images ORDER BY kind"
        ).fetchall()
        [(kind, parent, variant, tags, created, no_time)] = [row for row in rows if row[0] == "image"]
        assert parent and variant == "v8" and tags == ["arm"]
        assert no_time == created.startswith("1600-"), created


def test_merge_records_keeps_known_fields_whatever_the_order(exact_record):
    unknowing = dataclasses.replace(
        exact_record,
        config=Blob(exact_record.config.digest, 0, ""),
        layers=tuple(Blob(layer.digest, 0, layer.media_type) for layer in exact_record.layers),
        labels=(),
        history=(HistoryEntry("2026-01-01T00:00:00Z", "RUN x"),),
        platform=Platform("linux", "", "v9"),
        manifest_raw=None,
        config_raw=None,
        tags=("other",),
        source_path="/second",
    )
    one, two = merge_records(exact_record, unknowing), merge_records(unknowing, exact_record)
    for merged in (one, two):
        assert merged.config == exact_record.config and merged.layers == exact_record.layers
        assert merged.labels == exact_record.labels and merged.manifest_raw == exact_record.manifest_raw
        assert merged.tags == tuple(sorted({*exact_record.tags, "other"}))
    # Both know a history: the one whose times are exact is kept over one cut to the second (as
    # the engine gives them), whichever came first. The platform's variant is filled in.
    assert exact_record.history[0].created == "2026-01-01T00:00:00.000000000Z"
    assert one.history == two.history == exact_record.history
    assert one.platform == two.platform == Platform(exact_record.platform.os, exact_record.platform.architecture, "v9")
    # Only where and when it was seen follow the newer record.
    assert (one.source_path, two.source_path) == ("/second", exact_record.source_path)
    assert dataclasses.replace(one, source_path="", tags=()) == dataclasses.replace(two, source_path="", tags=())
    # A more exact record still wins whole.
    loose = _loose(exact_record, "loose")
    assert merge_records(loose, exact_record).layers == merge_records(exact_record, loose).layers == exact_record.layers


@pytest.mark.parametrize(
    "config_time, engine_time",
    [
        # The config wrote local time: the instant in UTC is the engine's, with the fraction it cut.
        ("2023-05-05T20:59:58.5-05:00", "2023-05-06T01:59:58Z"),
        ("2023-05-06T07:29:58.5+05:30", "2023-05-06T01:59:58Z"),
        ("2023-05-06T01:59:58.000000001Z", "2023-05-06T01:59:58Z"),
        # One instant in whole seconds: the config's text is kept over the engine's form.
        ("2023-05-05T20:59:58-05:00", "2023-05-06T01:59:58Z"),
        ("2023-05-06T01:59:58.000Z", "2023-05-06T01:59:58Z"),
    ],
)
def test_a_history_with_the_configs_times_is_kept_over_the_engines(exact_record, config_time, engine_time):
    """The engine's API gives history times in whole seconds in UTC. Compared as text, a config's
    local time with a negative offset ("…20:59:58.5-05:00") sorted below the engine's UTC text, and
    the merge kept the engine's cut times."""
    config = dataclasses.replace(exact_record, history=(HistoryEntry(config_time, "RUN a"),))
    engine = dataclasses.replace(exact_record, history=(HistoryEntry(engine_time, "RUN a"),))
    assert merge_records(config, engine).history == merge_records(engine, config).history == config.history


_SIZES = st.sampled_from([0, 4, 5, 7])
_TEXTS = st.sampled_from(["", "a", "b"])
_DIGESTS = st.sampled_from(["sha256:" + c * 64 for c in "abc"])


@st.composite
def _equally_exact(draw, exactness):
    """A record of one resource as some source saw it: any field known or not, known values that
    may differ from another source's."""
    layer_digests = draw(st.sampled_from([(), ("sha256:" + "d" * 64, "sha256:" + "e" * 64), ("sha256:" + "f" * 64,)]))
    layers = tuple(
        Blob(d, draw(_SIZES), draw(_TEXTS), draw(st.sampled_from([(), ("u",)])), draw(_TEXTS)) for d in layer_digests
    )
    config = draw(st.none() | st.builds(Blob, _DIGESTS, _SIZES, _TEXTS, st.just(()), _TEXTS))
    platform = draw(st.none() | st.builds(Platform, _TEXTS, _TEXTS, _TEXTS))
    return ImageRecord(
        id="crp00000000000000001",
        registry="reg.example",
        name="team/app",
        digest=draw(st.sampled_from(["", "sha256:" + "1" * 64, "sha256:" + "2" * 64])),
        media_type=draw(_TEXTS),
        kind=draw(st.sampled_from(["", "image", "index"])),
        config=config,
        layers=layers,
        layers_compressed=draw(st.booleans()),
        tags=draw(st.sampled_from([(), ("v1",), ("v2",)])),
        created=draw(st.sampled_from([None, "2024-01-01T00:00:00Z", "2025-01-01T00:00:00Z"])),
        platform=platform,
        parent_digest=draw(_TEXTS),
        source_kind="test",
        source_path=draw(_TEXTS),
        exactness=exactness,
        labels=draw(st.sampled_from([(), (("k", "1"),), (("k", "2"),)])),
        env=draw(st.sampled_from([(), ("A=1",), ("A=2",)])),
        history=draw(st.sampled_from([(), (HistoryEntry("x", "RUN a"),), (HistoryEntry("x", "RUN b"),)])),
        diff_ids=draw(st.sampled_from([(), ("sha256:" + "9" * 64,)])),
        manifest_raw=draw(st.sampled_from([None, b"{}", b'{"a":1}'])),
        config_raw=draw(st.sampled_from([None, b"{}", b'{"b":1}'])),
        declared_compressed_size=draw(st.sampled_from([None, 0, 9])),
    )


def _source_free(record: ImageRecord) -> ImageRecord:
    # Where and when a record was seen follow the newest record on purpose.
    return dataclasses.replace(record, source_path="")


@settings(max_examples=400, deadline=None)
@given(st.integers(min_value=1, max_value=3).flatmap(lambda e: st.lists(_equally_exact(e), min_size=3, max_size=4)))
def test_merging_records_does_not_depend_on_order_or_grouping(records):
    import functools
    import itertools

    results = set()
    for order in itertools.permutations(records):
        results.add(_source_free(functools.reduce(merge_records, order)))
        # A run merges within its batch, then with what the store holds: any grouping.
        results.add(_source_free(merge_records(order[0], functools.reduce(merge_records, order[1:]))))
    assert len(results) == 1


def test_exactness_across_index_runs(tmp_path, exact_record, monkeypatch):
    """Through index_sources: a later run that only knows the loose record keeps the exact row."""
    import indexer.run as run_module

    store = str(tmp_path / "store")

    class Fixed:
        kind = "test"
        reads_layers = True
        reads_index = False

        def __init__(self, records):
            self.records_list = records
            self.location = "fixed"

        def records(self, ctx):
            return iter(self.records_list)

    sources = {"exact": Fixed([exact_record]), "loose": Fixed([_loose(exact_record, "from-loose")])}
    monkeypatch.setattr(run_module, "parse_source", lambda spec, _options=None: sources[spec])
    for spec in ("exact", "loose"):
        with DeltaWriter(store) as writer:
            assert index_sources([spec], writer).ok
    con = store_con(store)
    exactness, size, *_rest, tags = _row(con, exact_record.id)
    assert (exactness, size) == (EXACT_MANIFEST, exact_record.compressed_size)
    assert tags == sorted({*exact_record.tags, "from-loose"})


def test_a_batch_of_ids_resolves_each_as_a_get_of_it_alone(tmp_path, corpora, exact_record):
    """`get --ids-from` resolves a batch over the row versions of its own ids, not over the whole
    images view: across runs that replace a row by exactness, pool tags, move a tag and retire an
    id for an imported one, every id (and one never stored) answers as a get of it alone."""
    records = records_of(f"oci:{corpora['oci']}")
    other = next(r for r in records if r.id != exact_record.id)
    assert (other.registry, other.name) == (exact_record.registry, exact_record.name)
    imported = dataclasses.replace(other, id="crpimportedaaaaaaaaa", id_origin="imported", exactness=IMPORTED)
    store = str(tmp_path / "store")
    with DeltaWriter(store) as writer:
        writer.write([_loose(exact_record, "from-loose")], now_utc())
        writer.write(records, now_utc())
        writer.write([_loose(exact_record, "second")], now_utc())
        writer.write([dataclasses.replace(other, tags=(*other.tags, exact_record.tags[0]))], now_utc())
        writer.write([imported], now_utc())
    reader = engine.connect(store)
    assert "images_versions" in reader.images_of_ids  # an uncompacted Delta table: the batch's own resolution
    ids = [row[0] for row in reader.execute("SELECT DISTINCT id FROM images_versions ORDER BY id").fetchall()]
    assert {exact_record.id, other.id, imported.id} <= set(ids)
    ids.append("crp00000000000000000")
    alone = {i: lookup.by_id(reader, i) for i in ids}
    assert alone[other.id] is None and alone[imported.id] is not None  # retired, and its heir
    batched = {q: None if isinstance(row, NotFound) else row for q, row in lookup.batch(reader, ids)}
    assert batched == alone


# ---------------------------------------------------------------------------------------------
# 4. tags
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moving_tag(tmp_path_factory):
    """Layouts A and B both name reg.example/app:v1, for different images X and Y."""
    root = tmp_path_factory.mktemp("moving")
    out = {}
    for key, payload in (("a", b"image-x"), ("b", b"image-y")):
        blobs = Blobs()
        desc = blobs.image(layers=(payload,))
        other = blobs.image(layers=(payload + b"-other",))
        write_dir(
            str(root / key),
            blobs.layout_files([named(desc, f"{REGISTRY}/app:v1"), named(other, f"{REGISTRY}/app:{key}-only")]),
        )
        out[key] = {"spec": f"oci:{root / key}", "digest": desc["digest"], "other": other["digest"]}
    return out


def _tag_view(store, cwd):
    images = {row["digest"]: row for row in sql_rows(store, "select id, digest, tags from images", cwd)}
    tags = sql_rows(store, "select registry, name, tag, image_id from tags order by all", cwd)
    return images, tags


def _assert_v1_on(store, cwd, moving_tag, winner, loser):
    images, tags = _tag_view(store, cwd)
    x, y = images[moving_tag[loser]["digest"]], images[moving_tag[winner]["digest"]]
    assert "v1" not in x["tags"]
    assert "v1" in y["tags"]
    v1_rows = [row for row in tags if row["tag"] == "v1"]
    assert v1_rows == [{"registry": REGISTRY, "name": "app", "tag": "v1", "image_id": y["id"]}]
    keys = [(row["registry"], row["name"], row["tag"]) for row in tags]
    assert len(keys) == len(set(keys))
    got = json.loads(imgdex("get", "--store", store, f"{REGISTRY}/app:v1", cwd=cwd).stdout)
    assert got["digest"] == moving_tag[winner]["digest"]
    rendered = json.loads(imgdex("get", "--store", store, x["id"], cwd=cwd).stdout)
    assert "v1" not in rendered.get("tags", [])
    assert_consistent(store_con(store), "snapshot")
    return images


def test_tag_moves_between_runs(tmp_path, moving_tag):
    store = tmp_path / "store"
    imgdex("index", "--store", store, moving_tag["a"]["spec"], cwd=tmp_path)
    imgdex("index", "--store", store, moving_tag["b"]["spec"], cwd=tmp_path)
    images = _assert_v1_on(store, tmp_path, moving_tag, winner="b", loser="a")
    # Tags that did not move stay where they were.
    assert images[moving_tag["a"]["other"]]["tags"] == ["a-only"]
    assert images[moving_tag["b"]["other"]]["tags"] == ["b-only"]
    # And back again.
    imgdex("index", "--store", store, moving_tag["a"]["spec"], cwd=tmp_path)
    _assert_v1_on(store, tmp_path, moving_tag, winner="a", loser="b")


def test_tag_moves_within_one_run(tmp_path, moving_tag):
    """Both layouts in one run: the later claim wins, and the tags table still has one row per tag."""
    store = tmp_path / "store"
    imgdex("index", "--store", store, moving_tag["a"]["spec"], moving_tag["b"]["spec"], cwd=tmp_path)
    _assert_v1_on(store, tmp_path, moving_tag, winner="b", loser="a")


# ---------------------------------------------------------------------------------------------
# 5. readers while a run is writing
# ---------------------------------------------------------------------------------------------


def test_readers_see_each_committed_batch_whole(tmp_path, base_store, corpora):
    store = copy_store(base_store, tmp_path / "store")
    old_ids = [row["id"] for row in sql_rows(store, "select id from images order by id", tmp_path)]
    assert len(old_ids) == SMALL_IMAGES
    new_layout = oci_layout(tmp_path / "new", 40, repo="team/new", salt="new-")
    new_records = records_of(f"oci:{new_layout}")
    reader = store_con(store)  # opened before the batch: it keeps its version
    with DeltaWriter(str(store)) as writer:
        writer.write(new_records, now_utc())
        # The batch is one commit: readers that open now see all of it, with its tags.
        assert count_images(store, tmp_path) == SMALL_IMAGES + 40
        assert [doc["id"] for doc in get_many(store, old_ids, tmp_path)] == old_ids
        found = imgdex("get", "--store", store, f"{REGISTRY}/team/new:t0", cwd=tmp_path)
        assert json.loads(found.stdout)["id"] in {r.id for r in new_records}
        assert reader.execute("select count(*) from images").fetchone()[0] == SMALL_IMAGES
    assert_consistent(store_con(store), "store")


def test_reader_of_a_store_that_is_not_there_yet_fails_cleanly(tmp_path, corpora):
    store = tmp_path / "store"
    with DeltaWriter(str(store)) as writer:
        proc = imgdex("sql", "--store", store, "select count(*) from images", cwd=tmp_path, check=False)
        assert proc.returncode == 1
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("imgdex: no image store") and "Traceback" not in proc.stderr
        writer.write(records_of(f"oci:{corpora['oci']}"), now_utc())
        assert count_images(store, tmp_path) == 3


def _start_index(store, specs, cwd, batch=None) -> subprocess.Popen:
    # One process: these tests count whole batches of one writer (tests/test_jobs.py covers workers).
    args = ["index", "-q", "--jobs", "1", "--store", str(store), *specs]
    if batch is None:
        command = [*CLI, *args]
    else:
        command = [sys.executable, "-c", SMALL_BATCH_RUNNER, str(batch), *args]
    return subprocess.Popen(
        command, cwd=cwd, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_readers_in_other_processes_during_an_index_run(tmp_path, base_store, big_layout):
    store = copy_store(base_store, tmp_path / "store")
    per_repo = len(range(0, BIG_IMAGES, BIG_REPOS))
    last = BIG_IMAGES - 1
    last_ref = f"{REGISTRY}/team/app{last % BIG_REPOS}:t{last}"
    writer = _start_index(store, [f"oci:{big_layout}"], tmp_path, batch=KILL_BATCH)
    try:
        seen = []
        while True:
            running = writer.poll() is None
            count = count_images(store, tmp_path)
            seen.append(count)
            written = count - SMALL_IMAGES
            assert written in (0, BIG_IMAGES) or written % KILL_BATCH == 0, f"a reader saw a partial batch: {count}"
            assert seen == sorted(seen), "a reader went back in time"
            repo = list_all(store, tmp_path, "--repository-name", "team/app0")
            assert len(repo) <= per_repo
            old = imgdex("get", "--store", store, f"{REGISTRY}/team/small:t1", cwd=tmp_path)
            assert json.loads(old.stdout)["name"] == "team/small"
            new = imgdex("get", "--store", store, last_ref, cwd=tmp_path, check=False)
            assert new.returncode == 0 or (new.returncode == 1 and "not found" in new.stderr), new.stderr
            if not running:
                break
        out, err = writer.communicate(timeout=SUBPROCESS_TIMEOUT)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    assert writer.returncode == 0, err
    assert seen[-1] == SMALL_IMAGES + BIG_IMAGES
    assert count_images(store, tmp_path) == SMALL_IMAGES + BIG_IMAGES
    assert assert_consistent(store_con(store), "snapshot") == SMALL_IMAGES + BIG_IMAGES


# ---------------------------------------------------------------------------------------------
# 6. two writers
# ---------------------------------------------------------------------------------------------


def test_a_second_writer_runs_beside_the_first(tmp_path, base_store, corpora):
    store = copy_store(base_store, tmp_path / "store")
    runs_before = sql_rows(store, "select count(*) as n from runs", tmp_path)[0]["n"]
    new_records = records_of(f"oci:{oci_layout(tmp_path / 'new', 4, repo='team/new', salt='new-')}")
    with DeltaWriter(str(store)) as writer:
        writer.write(new_records[:2], now_utc())
        proc = imgdex("index", "--store", store, f"oci:{corpora['oci']}", cwd=tmp_path)
        assert proc.stderr == ""
        writer.write(new_records[2:], now_utc())
        writer.record_run({"started_at": now_utc(), "finished_at": now_utc(), "sources": [], "images_indexed": 4})
    assert count_images(store, tmp_path) == SMALL_IMAGES + 3 + 4
    assert sql_rows(store, "select count(*) as n from runs", tmp_path)[0]["n"] == runs_before + 2
    assert_consistent(store_con(store), "two writers")


# ---------------------------------------------------------------------------------------------
# 7. kill -9
# ---------------------------------------------------------------------------------------------


def _after(seconds):
    def trigger(store, proc, started):
        return time.monotonic() - started >= seconds

    return f"after {seconds} s", trigger


def _commits_over(count):
    """The run has committed more than `count` batches of images."""

    def trigger(store, proc, started):
        try:
            return len([n for n in os.listdir(store / "images" / "_delta_log") if n.endswith(".json")]) > count + 2
        except OSError:
            return False

    return trigger


KILL_POINTS = [
    _after(0.2),
    _after(0.5),
    ("first batch committed", _commits_over(0)),
    _after(0.8),
    ("several batches committed", _commits_over(4)),
    _after(1.6),
]
KILL_BUDGET = 45.0


def test_kill_9_leaves_a_usable_store(tmp_path, base_store, big_layout, corpora):
    started_test = time.monotonic()
    base_ids = [row["id"] for row in sql_rows(base_store, "select id from images order by id", tmp_path)]
    done = []
    store = None
    for number, (label, trigger) in enumerate(KILL_POINTS):
        if done and len(done) >= 3 and time.monotonic() - started_test > KILL_BUDGET:
            break
        store = copy_store(base_store, tmp_path / f"store{number}")
        proc = _start_index(store, [f"oci:{big_layout}"], tmp_path, batch=KILL_BATCH)
        started = time.monotonic()
        try:
            while proc.poll() is None and not trigger(store, proc, started):
                time.sleep(0.002)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=SUBPROCESS_TIMEOUT)
        killed = proc.returncode == -signal.SIGKILL
        where = f"kill point {label!r} ({'killed' if killed else 'ran to the end'})"

        # Readers work and see whole batches, never a part of one.
        count = count_images(store, tmp_path)
        written = count - SMALL_IMAGES
        assert written in (0, BIG_IMAGES) or written % KILL_BATCH == 0, f"{where}: readers see {count} images"
        page = json.loads(imgdex("list", "--store", store, "--page-size", "3", cwd=tmp_path).stdout)
        assert len(page["images"]) == 3
        assert [doc["id"] for doc in get_many(store, base_ids, tmp_path)] == base_ids
        assert assert_consistent(store_con(store), f"{where}") == count

        # A new run goes through on the store the killed one left.
        with DeltaWriter(str(store)) as writer:
            summary = index_sources([f"oci:{corpora['oci']}"], writer)
            assert summary.ok and summary.indexed == 3
        after = count_images(store, tmp_path)
        assert after == count + 3
        assert assert_consistent(store_con(store), f"{where}, after a new run") == after
        assert count_images(store, tmp_path) == after
        done.append((label, killed, written))

    assert len(done) >= 3
    assert any(killed for _label, killed, _written in done), f"no run was killed: {done}"
    # The last store finishes the interrupted work with a normal run.
    imgdex("index", "-q", "--store", store, f"oci:{big_layout}", cwd=tmp_path)
    assert count_images(store, tmp_path) == SMALL_IMAGES + BIG_IMAGES + 3
    assert assert_consistent(store_con(store), "snapshot after the final run") == SMALL_IMAGES + BIG_IMAGES + 3


def test_a_reader_keeps_its_version_across_runs_and_compaction(tmp_path, base_store, corpora):
    from indexer.store.delta import DeltaStore

    store = copy_store(base_store, tmp_path / "store")
    reader = store_con(store)
    before = reader.execute("select id, tags from images order by id").fetchall()
    imgdex("index", "--store", store, f"oci:{corpora['oci']}", cwd=tmp_path)
    with DeltaStore(str(store)) as tables:
        tables.compact()  # the default retention keeps what readers hold
    assert reader.execute("select id, tags from images order by id").fetchall() == before
    assert count_images(store, tmp_path) == SMALL_IMAGES + 3


# ---------------------------------------------------------------------------------------------
# 8. Parquet-only and copied stores
# ---------------------------------------------------------------------------------------------


def _reader_outputs(store, cwd, ids):
    return {
        "get": get_many(store, ids, cwd),
        "get-ref": json.loads(imgdex("get", "--store", store, f"{REGISTRY}/classic:latest", cwd=cwd).stdout),
        "get-multi": json.loads(
            imgdex("get", "--store", store, f"{REGISTRY}/multi:v1", "--platform", "linux/arm64", cwd=cwd).stdout
        ),
        "list": list_all(store, cwd),
        "list-yaml": imgdex("list", "--store", store, "--format", "yaml", cwd=cwd).stdout,
        "sql": sql_rows(
            store,
            "select name, count(*) as n, (select count(*) from image_layers) as layers,"
            " (select count(*) from tags) as tags from images group by name order by name",
            cwd,
        ),
    }


def test_parquet_only_and_copied_stores(tmp_path, mixed_specs):
    store = tmp_path / "store"
    imgdex("index", "--store", store, *mixed_specs, cwd=tmp_path)
    ids = [row["id"] for row in sql_rows(store, "select id from images order by id", tmp_path)]
    expected = _reader_outputs(store, tmp_path, ids)
    assert len(expected["list"]) == 8

    bare = tmp_path / "bare"
    imgdex("export", bare, "--store", store, cwd=tmp_path)
    assert sorted(os.listdir(bare)) == sorted(f"{t}.parquet" for t in schema.TABLES)
    assert _reader_outputs(bare, tmp_path, ids) == expected

    copied = tmp_path / "copied"
    subprocess.run(["cp", "-r", str(store), str(copied)], check=True)
    assert _reader_outputs(copied, tmp_path, ids) == expected
    # The copy is a store of its own: a run into it leaves the original alone.
    imgdex("index", "--store", copied, mixed_specs[0], cwd=tmp_path)
    assert _reader_outputs(copied, tmp_path, ids) == expected
    assert len(sql_rows(copied, "select * from runs", tmp_path)) == 2
    assert len(sql_rows(store, "select * from runs", tmp_path)) == 1


# ---------------------------------------------------------------------------------------------
# 9. IMGDEX_STORE
# ---------------------------------------------------------------------------------------------


def test_store_environment_variable(tmp_path, corpora):
    store = tmp_path / "from-env"
    workdir = tmp_path / "work"
    workdir.mkdir()
    env = clean_env(**{paths.STORE_ENV: str(store)})
    imgdex("index", f"oci:{corpora['oci']}", cwd=workdir, env=env)
    assert paths.is_table_store(str(store))
    assert not os.path.exists(workdir / paths.DEFAULT_STORE)

    assert count_images(None, workdir, env) == 3
    listed = json.loads(imgdex("list", cwd=workdir, env=env).stdout)
    assert len(listed["images"]) == 3
    got = json.loads(imgdex("get", f"{REGISTRY}/team/plain:t0", cwd=workdir, env=env).stdout)
    assert got["id"] in {image["id"] for image in listed["images"]}

    # --store wins over the variable.
    other = imgdex("list", "--store", tmp_path / "nowhere", cwd=workdir, env=env, check=False)
    assert other.returncode == 1 and "no image store" in other.stderr
    # Without either, the default ./data is used.
    default = imgdex("list", cwd=workdir, check=False)
    assert default.returncode == 1 and "no image store at data" in default.stderr
