"""`imgdex serve` without a network: the validation rules, snapshot switching, token shortening."""

from __future__ import annotations

import os
import threading

import pytest
from yandex.cloud.containerregistry.v1 import image_service_pb2 as isv
from yandex.cloud.containerregistry.v1 import registry_service_pb2 as gsv
from yandex.cloud.containerregistry.v1 import repository_service_pb2 as rsv

from indexer.errors import QueryError, StoreError
from queries.server import rules
from test_serve import REAL, build_store, fixture_sources


def test_rules_are_read_from_the_official_messages():
    get = {r.name: r for r in rules.RULES["yandex.cloud.containerregistry.v1.GetImageRequest"]}
    assert get["image_id"].required and get["image_id"].length.high == 50
    listing = {r.name: r for r in rules.RULES["yandex.cloud.containerregistry.v1.ListImagesRequest"]}
    assert listing["page_size"].value.high == 1000
    assert listing["page_token"].length.high == 100
    assert listing["filter"].length.high == 1000
    assert listing["order_by"].length.high == 100
    assert listing["registry_id"].length.high == 50 and listing["folder_id"].length.high == 50
    assert listing["repository_name"].pattern.fullmatch("") and not listing["repository_name"].pattern.fullmatch("A")
    registries = {r.name: r for r in rules.RULES["yandex.cloud.containerregistry.v1.ListRegistriesRequest"]}
    assert registries["folder_id"].required


@pytest.mark.parametrize(
    "text,inside,outside",
    [
        ("<=50", [0, 50], [51]),
        ("<50", [49], [50]),
        (">0", [1], [0]),
        (">=1", [1], [0]),
        ("1-63", [1, 63], [0, 64]),
        ("7", [7], [6, 8]),
    ],
)
def test_bounds(text, inside, outside):
    bound = rules.Bound.parse(text)
    assert all(bound.holds(v) for v in inside) and not any(bound.holds(v) for v in outside)


def test_unknown_bound_forms_are_not_guessed():
    assert rules.Bound.parse("~5") is None


@pytest.mark.parametrize(
    "request_,message",
    [
        (isv.GetImageRequest(), "image_id is required"),
        (isv.GetImageRequest(image_id="x" * 51), "image_id length must be at most 50"),
        (isv.ListImagesRequest(page_size=1001), "page_size must be at most 1000"),
        (isv.ListImagesRequest(page_token="t" * 101), "page_token length must be at most 100"),
        (isv.ListImagesRequest(filter="f" * 1001), "filter length must be at most 1000"),
        (isv.ListImagesRequest(order_by="o" * 101), "order_by length must be at most 100"),
        (isv.ListImagesRequest(registry_id="r" * 51), "registry_id length must be at most 50"),
        (isv.ListImagesRequest(folder_id="f" * 51), "folder_id length must be at most 50"),
        (isv.ListImagesRequest(repository_name="UPPER"), "repository_name 'UPPER' does not match"),
        (rsv.GetRepositoryByNameRequest(repository_name="a//b"), "does not match"),
        (gsv.ListRegistriesRequest(), "folder_id is required"),
    ],
)
def test_violations_name_the_field(request_, message):
    with pytest.raises(QueryError, match=message.replace("(", r"\(")):
        rules.validate(request_)


def test_valid_requests_pass():
    rules.validate(isv.GetImageRequest(image_id="x" * 50))
    rules.validate(
        isv.ListImagesRequest(
            page_size=1000,
            page_token="t" * 100,
            filter="f" * 1000,
            order_by="o" * 100,
            registry_id="r" * 50,
            folder_id="f" * 50,
            repository_name="crp1/a.b-c_d/e",
        )
    )
    rules.validate(isv.ListImagesRequest())


def test_page_size_default_and_scope_precedence():
    assert rules.page_size(0) == 100 and rules.page_size(7) == 7
    with pytest.raises(QueryError):
        rules.page_size(-1)
    scope = rules.image_scope(isv.ListImagesRequest(registry_id="r", repository_name="n", folder_id="f"))
    assert (scope.registry_id, scope.repository_name, scope.folder_id) == ("", "n", "")
    scope = rules.image_scope(isv.ListImagesRequest(registry_id="r", folder_id="f"))
    assert (scope.registry_id, scope.repository_name, scope.folder_id) == ("r", "", "")
    scope = rules.image_scope(isv.ListImagesRequest(folder_id="f"))
    assert (scope.registry_id, scope.repository_name, scope.folder_id) == ("", "", "f")


@pytest.fixture(scope="module")
def unit_store(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("serve-unit-store"))
    build_store(path, *fixture_sources())
    return path


def test_image_rows_are_what_lookup_selects(unit_store):
    from queries import engine, lookup
    from queries.server.snapshots import Snapshot, snapshot_key

    snapshot = Snapshot.load(snapshot_key(unit_store))
    reader = engine.connect(unit_store, tables=("images",))
    ids = [row[0] for row in reader.execute("SELECT id FROM images").fetchall()]
    assert len(ids) == snapshot.images >= 15
    for image_id in ids:
        assert snapshot.image_row(image_id) == lookup.by_id(reader, image_id)
    assert snapshot.image_row("crp00000000000000000") is None
    snapshot.retire()


def test_a_running_request_keeps_its_snapshot_across_a_swap(tmp_path):
    from queries.server.snapshots import SnapshotSource

    store = str(tmp_path / "store")
    build_store(store, os.path.join(REAL, "docker-save-base.tar"))
    source = SnapshotSource(store, poll=3600)  # swaps only when the test says so
    source.start()
    try:
        with source.use() as first:
            count = first.cursor().execute("SELECT count(*) FROM images").fetchone()[0]
            build_store(store, os.path.join(REAL, "oci-archive-app.tar"))
            assert source.refresh()
            assert source.current is not first
            # The old snapshot still answers the request that began on it, and answers the same.
            assert first.cursor().execute("SELECT count(*) FROM images").fetchone()[0] == count
        assert first._closed  # closed as soon as its last request left
        with source.use() as second:
            assert second.cursor().execute("SELECT count(*) FROM images").fetchone()[0] > count
        assert not source.refresh()  # nothing new
    finally:
        source.stop()


def test_cursors_are_per_thread(unit_store):
    from queries.server.snapshots import Snapshot, snapshot_key

    snapshot = Snapshot.load(snapshot_key(unit_store))
    seen = []
    threads = [threading.Thread(target=lambda: seen.append(id(snapshot.cursor()))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == 4 and snapshot.cursor() is snapshot.cursor()
    snapshot.retire()


def test_no_snapshot_is_a_store_error(tmp_path):
    from queries.server.snapshots import SnapshotSource

    source = SnapshotSource(str(tmp_path))
    with pytest.raises(StoreError, match="no completed index run"):
        with source.use():
            pass


def test_served_database_reads_no_files(unit_store):
    import duckdb

    from queries.server.snapshots import Snapshot, snapshot_key

    snapshot = Snapshot.load(snapshot_key(unit_store))
    cursor = snapshot.cursor()
    with pytest.raises(duckdb.Error):
        cursor.execute(f"SELECT * FROM read_parquet('{snapshot.path}/images.parquet')").fetchall()
    with pytest.raises(duckdb.Error):
        cursor.execute("SET enable_external_access = true")
    snapshot.retire()


def test_page_tokens_pass_through_when_short():
    from queries.server.api import PageTokens

    tokens = PageTokens(capacity=2)
    assert tokens.outgoing("short") == "short" and tokens.incoming("short") == "short"
    long = ["L" * 150 + str(i) for i in range(3)]
    shorts = [tokens.outgoing(t) for t in long]
    assert all(len(s) <= 100 for s in shorts)
    assert tokens.incoming(shorts[2]) == long[2]
    with pytest.raises(QueryError):
        tokens.incoming(shorts[0])  # evicted: the map is bounded


def test_catalog_ids_are_stable():
    from queries.server.catalog import repository_id

    assert repository_id("crp7b2m3p8k0v1ej5s4n/team/web") == repository_id("crp7b2m3p8k0v1ej5s4n/team/web")
    assert len(repository_id("a")) == 20 and repository_id("a").startswith("crp")
    assert repository_id("a") != repository_id("b")
