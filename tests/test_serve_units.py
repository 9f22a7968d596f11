"""`imgdex serve` without a network: the validation rules, snapshot switching, pages from memory."""

from __future__ import annotations

import json
import os
import threading

import pytest
from google.protobuf import json_format
from yandex.cloud.containerregistry.v1 import image_service_pb2 as isv
from yandex.cloud.containerregistry.v1 import registry_service_pb2 as gsv
from yandex.cloud.containerregistry.v1 import repository_service_pb2 as rsv

from indexer.errors import QueryError, StoreError
from queries import api_rules
from queries.server import rules
from test_serve import REAL, REFUSED_PROTOCOLS, build_store, fixture_sources, give_protocol


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
    scope = api_rules.image_scope(registry_id="r", repository_name="n", folder_id="f")
    assert (scope.registry_id, scope.repository_name, scope.folder_id) == ("", "n", "")
    scope = api_rules.image_scope(registry_id="r", repository_name="", folder_id="f")
    assert (scope.registry_id, scope.repository_name, scope.folder_id) == ("r", "", "")
    scope = api_rules.image_scope(registry_id="", repository_name="", folder_id="f")
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
    together = threading.Barrier(4)  # all alive at once, as concurrent requests are

    def work():
        seen.append(snapshot.cursor())
        together.wait(timeout=10)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(cur) for cur in seen}) == 4 and snapshot.cursor() is snapshot.cursor()
    snapshot.retire()


def test_the_cursor_of_a_thread_that_ended_is_closed(unit_store):
    """The REST server runs a thread per connection, and each connection's cursor was kept until
    the snapshot retired: memory grew with every connection that listed (2,000 cursors, +19 MB)."""
    import duckdb

    from queries.server.snapshots import Snapshot, snapshot_key

    snapshot = Snapshot.load(snapshot_key(unit_store))
    cursors = []
    for _ in range(50):  # one connection after another
        thread = threading.Thread(target=lambda: cursors.append(snapshot.cursor()))
        thread.start()
        thread.join()
    for cur in cursors[:-1]:
        with pytest.raises(duckdb.ConnectionException):
            cur.execute("SELECT 1")
    assert cursors[-1].execute("SELECT count(*) FROM images").fetchall()[0][0] == snapshot.images
    assert snapshot.cursor().execute("SELECT 1").fetchall() == [(1,)]  # this thread's, alive
    snapshot.retire()


def test_no_snapshot_is_a_store_error(tmp_path):
    from queries.server.snapshots import SnapshotSource

    source = SnapshotSource(str(tmp_path))
    with pytest.raises(StoreError, match="^no index run has completed yet$"):
        with source.use():
            pass


def test_a_store_failure_is_told_to_clients_without_the_store_s_files(tmp_path, capsys):
    """A client learns that the index cannot be read; which file failed is for the server's log."""
    from queries.server.api import error_body
    from queries.server.snapshots import SnapshotSource

    failure = StoreError(f"cannot read store {tmp_path}/secret: No such file or directory")
    assert error_body(failure) == {"code": 14, "message": "the index cannot be read now", "details": []}
    assert capsys.readouterr().err == f"imgdex: {failure}\n"
    with pytest.raises(StoreError) as none_yet:
        with SnapshotSource(str(tmp_path)).use():
            pass
    assert error_body(none_yet.value) == {"code": 14, "message": "no index run has completed yet", "details": []}
    assert str(tmp_path) not in str(none_yet.value) and capsys.readouterr().err == ""


def test_a_log_that_cannot_be_listed_keeps_the_snapshot_served_and_is_said_once(unit_store, monkeypatch):
    from queries.server import snapshots

    said = []
    source = snapshots.SnapshotSource(str(unit_store), log=said.append)
    assert source.refresh() and source.current is not None
    served = source.current
    log = os.path.join(str(unit_store), "tags", "_delta_log")
    listing = os.scandir

    def scandir(path="."):
        if os.fspath(path) == log:
            raise PermissionError(13, "Permission denied", path)
        return listing(path)

    monkeypatch.setattr(os, "scandir", scandir)
    assert not source.refresh() and not source.refresh()
    assert source.current is served
    assert said == [f"cannot read the Delta log {log}: Permission denied"]
    source.stop()


def test_a_refusal_met_while_serving_keeps_the_snapshot_served_and_is_said_once(unit_store, tmp_path):
    """The start refuses such a store; one that becomes so while served is not a reason to stop."""
    import shutil

    from queries.server import snapshots

    store = str(tmp_path / "store")
    shutil.copytree(unit_store, store)
    said = []
    source = snapshots.SnapshotSource(store, poll=3600, log=said.append)
    source.start()
    served = source.current
    assert served is not None
    give_protocol(store, REFUSED_PROTOCOLS["deletion vectors"])
    assert not source.refresh() and not source.refresh()
    assert source.current is served
    assert said == ["table images has deletion vectors, which this reader refuses"]
    source.stop()


def test_served_database_reads_no_files(unit_store):
    import duckdb

    from queries.server.snapshots import Snapshot, snapshot_key

    snapshot = Snapshot.load(snapshot_key(unit_store))
    cursor = snapshot.cursor()
    with pytest.raises(duckdb.Error):
        cursor.execute(f"SELECT * FROM read_parquet('{snapshot.path}/images.parquet')").fetchall()
    with pytest.raises(duckdb.Error):
        cursor.execute("SET enable_external_access = true")
    for setting in ("autoload_known_extensions", "autoinstall_known_extensions"):
        assert cursor.execute(f"SELECT current_setting('{setting}')").fetchone()[0] is False
    snapshot.retire()


def _walk(list_page, size: int, **fields) -> tuple[list[dict], list[str]]:
    """Every page of one query: the pages as answered, and the tokens between them."""
    pages, tokens, token = [], [], ""
    for _ in range(1000):
        page = list_page(size=size, token=token, **fields)
        pages.append(page)
        token = page.get("nextPageToken", "")
        if not token:
            return pages, tokens
        tokens.append(token)
    raise AssertionError("paging did not end")


@pytest.fixture(scope="module")
def served(unit_store):
    """The server's ListImages (pages from memory) and the CLI's (SQL over the Parquet snapshot)."""
    from queries import engine, listing
    from queries.server.api import Api
    from queries.server.snapshots import SnapshotSource

    source = SnapshotSource(unit_store, poll=3600)
    source.start()
    api = Api(source)
    reader = engine.connect(unit_store, tables=("images",))

    def server(size, token, **fields):
        request = isv.ListImagesRequest(page_size=size, page_token=token, **fields)
        return api.list_images(request)

    def cli(size, token, **fields):
        return listing.list_images(reader, listing.Query(page_size=size, page_token=token, **fields))

    yield server, cli, api
    source.stop()


ORDERS = ["", "name desc", "created_at desc", "created_at", "last_modified desc, name", "digest desc, name desc"]


@pytest.mark.parametrize("order_by", ORDERS)
def test_served_pages_and_tokens_are_the_cli_s(served, order_by):
    """The server answers every page from memory exactly as `imgdex list` does, tokens included:
    tokens pass through both ways, unchanged."""
    server, cli, _ = served
    for size in (1, 3, 100):
        for fields in ({}, {"filter": 'name != "team/app"'}, {"registry_id": "crp7b2m3p8k0v1ej5s4n"}):
            served_pages, tokens = _walk(server, size, order_by=order_by, **fields)
            assert served_pages == _walk(cli, size, order_by=order_by, **fields)[0]
            assert all(len(t) <= 100 for t in tokens)


def test_served_pages_fall_back_to_sql_when_the_token_s_row_moved_or_left(served):
    import base64
    import json

    server, cli, api = served
    first = server(2, "", order_by="last_modified desc")
    token = first["nextPageToken"]
    payload = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    # The row was rewritten by a later run: its last_modified in the token is an older one.
    payload["k"][0] -= 1
    moved = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")
    assert server(2, moved, order_by="last_modified desc") == cli(2, moved, order_by="last_modified desc")
    # A row that is gone: with its values in the token, the list goes on from there.
    payload["k"][1] = "crp00000000000000000"
    gone = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")
    assert server(2, gone, order_by="last_modified desc") == cli(2, gone, order_by="last_modified desc")
    # Without them, it cannot.
    default = server(2, "")["nextPageToken"]
    payload = json.loads(base64.urlsafe_b64decode(default + "=" * (-len(default) % 4)))
    payload["k"][-1] = "crp00000000000000000"
    stale = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")
    for list_page in (server, cli):
        with pytest.raises(QueryError, match="page token is stale"):
            list_page(2, stale)


@pytest.mark.parametrize("merge_groups, walk_share", [(64, 0.05), (0, 0.0), (0, 2.0)], ids=["merge", "walk", "sql"])
def test_conditions_take_every_way_to_the_same_pages(served, monkeypatch, merge_groups, walk_share):
    """Matching names merged, a walk along the order, or SQL: the pages are the CLI's."""
    from queries.server import pages

    server, cli, _ = served
    monkeypatch.setattr(pages, "MERGE_GROUPS", merge_groups)
    monkeypatch.setattr(pages, "WALK_SHARE", walk_share)
    for fields in (
        {"filter": 'name != "team/app"', "order_by": "created_at desc"},
        {"filter": 'name NOT IN ("team/app", "samples/app") AND name != "x"', "order_by": "name desc"},
        {"registry_id": "crp7b2m3p8k0v1ej5s4n", "order_by": "last_modified desc, digest"},
        {"repository_name": "team/app"},
        {"filter": 'name = "no/such"'},
    ):
        for size in (1, 2, 5):
            assert _walk(server, size, **fields) == _walk(cli, size, **fields), (fields, size)


def test_orders_beyond_the_kept_ones_are_answered_by_sql(served, monkeypatch):
    from queries.server import pages

    server, cli, _ = served
    monkeypatch.setattr(pages, "MAX_ORDERINGS", 0)
    for order in ("name, created_at desc", "digest"):
        assert _walk(server, 4, order_by=order) == _walk(cli, 4, order_by=order)


def test_catalog_ids_are_stable():
    from queries.server.catalog import repository_id

    assert repository_id("crp7b2m3p8k0v1ej5s4n/team/web") == repository_id("crp7b2m3p8k0v1ej5s4n/team/web")
    assert len(repository_id("a")) == 20 and repository_id("a").startswith("crp")
    assert repository_id("a") != repository_id("b")


def _one_image_layout(tmp_path, name: str, layer: bytes) -> str:
    """An OCI layout of one image, tagged v1, of one layer."""
    from builders import Blobs, named, write_dir

    blobs = Blobs()
    return write_dir(str(tmp_path / name), blobs.layout_files([named(blobs.image(layers=(layer,)), "v1")]))


def _served_store(tmp_path):
    """A store of one image, and a started SnapshotSource on it (the caller stops it)."""
    from queries.server.snapshots import SnapshotSource

    store = str(tmp_path / "store")
    build_store(store, "--repository", "team/app", f"oci:{_one_image_layout(tmp_path, 'one', b'a')}")
    source = SnapshotSource(store, poll=3600)
    source.start()
    return store, source


def _index_another_image(tmp_path, store: str) -> None:
    build_store(store, "--repository", "team/app", f"oci:{_one_image_layout(tmp_path, 'two', b'b')}")


def test_rendered_images_are_kept_per_version_and_follow_a_tag_move(tmp_path):
    """A list renders each image once per served version; the next version renders afresh, so a
    tag moved by an index run shows in the next list."""
    from queries import engine, listing
    from queries.server import grpc_api, rest_api
    from queries.server.api import Api

    store, source = _served_store(tmp_path)
    try:
        api = Api(source)
        request = isv.ListImagesRequest(page_size=10)

        def cli_list():
            reader = engine.connect(store, tables=("images",))
            return listing.list_images(reader, listing.Query(page_size=10))

        first = api.list_images(request)
        assert api.list_images(request) == first == cli_list()
        assert json.loads(rest_api.route(api, "GET", "/container-registry/v1/images", {"pageSize": ["10"]})) == first
        kept = source.current.derived("image-docs", dict)
        assert set(kept) == {image["id"] for image in first["images"]}

        _index_another_image(tmp_path, store)
        assert source.refresh()
        second = api.list_images(request)
        assert second == cli_list() and second != first
        assert sorted(tuple(image.get("tags", [])) for image in second["images"]) == [(), ("v1",)]
        message = grpc_api.list_images(api, request)
        assert json_format.MessageToDict(message) == second
    finally:
        source.stop()


@pytest.mark.parametrize("order_by", ["", "name desc"])
def test_a_version_a_list_was_answered_on_is_freed_once_swapped_out(tmp_path, order_by):
    """What a list derives from a snapshot (its name groups and orderings) must not keep it: the
    server freezes what it loads out of the collector's way, so a cycle would keep every version
    a list was answered on, ~10 MB a run on 6,000 images."""
    import gc
    import weakref

    from queries.server.api import Api

    store, source = _served_store(tmp_path)
    try:
        api = Api(source)
        assert api.list_images(isv.ListImagesRequest(page_size=10, order_by=order_by))["images"]
        served = weakref.ref(source.current)
        gc.freeze()  # as the server leaves what it made
        _index_another_image(tmp_path, store)
        assert source.refresh()
        assert served() is None  # freed by reference counting alone: no collection reaches it
    finally:
        source.stop()
        gc.unfreeze()


@pytest.mark.parametrize("soft,cap", [(1024, 512), (64, 32), (1, 1), (1_000_000, 1024)])
def test_rest_connections_leave_half_the_descriptors(monkeypatch, soft, cap):
    import resource

    from queries.server import rest_api

    monkeypatch.setattr(resource, "getrlimit", lambda which: (soft, resource.RLIM_INFINITY))
    assert rest_api.default_max_connections() == cap


@pytest.mark.parametrize("text", ["[zz:1", "[::1:80", "::1]:80", "[[::1]]:80"])
def test_a_listen_host_with_brackets_astray_is_not_an_address(text):
    import click

    from queries.server.app import parse_address

    with pytest.raises(click.BadParameter, match="is not HOST:PORT"):
        parse_address(text, "--http")


@pytest.mark.parametrize("text", ["127.0.0.1:\u00b2", "127.0.0.1:\u0663", "127.0.0.1:" + "9" * 5000, "127.0.0.1:65536"])
def test_a_listen_port_is_ascii_digits_up_to_65535(text):
    import click

    from queries.server.app import parse_address

    with pytest.raises(click.BadParameter):
        parse_address(text, "--grpc")
    assert parse_address("[::1]:08080", "--grpc") == ("::1", 8080)


@pytest.mark.parametrize(
    "content",
    ["caf\u00e9-token\n".encode(), b"\xef\xbb\xbfs3cret\n", b"s3c\x00ret", b"s3c\x7fret", b"\xe9t\xe9"],
)
def test_a_token_that_is_not_visible_ascii_is_refused(tmp_path, content):
    """Taken, such a token matched no request: every call was refused, and nothing said why."""
    import click

    from queries.server.app import read_token

    path = tmp_path / "token"
    path.write_bytes(content)
    with pytest.raises(click.BadParameter) as info:
        read_token(str(path))
    assert info.value.param_hint == "--token-file"
    assert info.value.message == (
        f"{path}: the token holds a byte that is not visible ASCII (0x21-0x7E), as a bearer token must be"
    )
    path.write_bytes(b" !s3cret~token\r\n")  # every visible ASCII byte is taken, and only those
    assert read_token(str(path)) == b"!s3cret~token"


@pytest.mark.parametrize("content", [b"", b" \r\n", b"two tokens\n"])
def test_a_token_file_without_one_token_is_named_on_one_line(tmp_path, content):
    """Every other message of read_token escapes the name; this one handed it on raw, newline and all."""
    import click

    from queries.server.app import read_token

    path = tmp_path / "new\nline\x1b[2J"
    path.write_bytes(content)
    with pytest.raises(click.BadParameter) as info:
        read_token(str(path))
    assert info.value.param_hint == "--token-file"
    assert info.value.message == f"{tmp_path}/new\\nline\\x1b[2J must hold one non-empty token"


def test_a_header_is_compared_as_the_bytes_it_came_as():
    """http.client reads a header's bytes as latin-1; encoded as UTF-8 again, a byte over 0x7F
    became two, and a token was compared with bytes no client sent."""
    from queries.server.grpc_api import token_matches

    assert token_matches("Bearer s3cret", b"s3cret")
    assert token_matches(b"Bearer s3cret", b"s3cret")
    assert token_matches("Bearer caf\u00e9", b"caf\xe9")
    assert not token_matches("Bearer caf\u00e9", "caf\u00e9".encode())
    # Beyond latin-1 (gRPC metadata read as UTF-8), or a lone surrogate: no match, and no error.
    assert not token_matches("Bearer s3cret\u20ac", b"s3cret")
    assert not token_matches("Bearer s3cret\udc80", b"s3cret\x80")
    assert not token_matches("Bearer \udc41", b"A")
    assert not token_matches(None, b"s3cret")


def test_the_ready_line_escapes_the_store_s_name():
    # The line goes to a terminal: a name's line break or escape sequence must not reach it raw.
    from types import SimpleNamespace

    from queries.server.app import Service

    service = SimpleNamespace(
        source=SimpleNamespace(current=None), grpc_address="127.0.0.1:1", http_address=None, store="s\nx\x1b[2Jy"
    )
    line = Service.ready_line(service)
    assert "\n" not in line and "\x1b" not in line
    assert "store s\\nx\\x1b[2Jy (" in line
