"""Image.List for the CLI and the server alike: the API's rules in one place, short stable page
tokens, pages that hold every image exactly once (ties, NULLs, both directions), and responses
written as before, byte for byte."""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from conftest import ROOT
from indexer.errors import QueryError
from queries import api_rules, engine, listing, render
from queries.cli import cli

# --- the rules ------------------------------------------------------------------------------------


def test_list_images_rules_are_what_the_official_descriptors_say():
    from queries.server import rules

    assert api_rules.LIST_IMAGES == rules.RULES["yandex.cloud.containerregistry.v1.ListImagesRequest"]
    by_name = {r.name: r for r in api_rules.LIST_IMAGES}
    assert by_name["page_size"].value.high == api_rules.MAX_PAGE_SIZE == 1000
    assert by_name["repository_name"].pattern.pattern == "|" + api_rules.NAME_PATTERN
    # The server checks every other request with the same rule types and the same checks.
    assert rules.Bound is api_rules.Bound and rules.FieldRule is api_rules.FieldRule


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"page_size": 1000, "page_token": "t" * 100, "filter": "f" * 1000, "order_by": "o" * 100},
        {"registry_id": "r" * 50, "folder_id": "f" * 50, "repository_name": "crp1/a.b-c_d/e"},
        {"page_size": 1001},
        {"page_token": "t" * 101},
        {"filter": "f" * 1001},
        {"order_by": "o" * 101},
        {"registry_id": "r" * 51},
        {"folder_id": "f" * 51},
        {"repository_name": "UPPER"},
        {"repository_name": "a//b"},
    ],
)
def test_cli_rules_and_server_rules_agree(fields):
    from yandex.cloud.containerregistry.v1 import image_service_pb2

    from queries.server import rules

    request = image_service_pb2.ListImagesRequest(**fields)
    values = {rule.name: getattr(request, rule.name) for rule in api_rules.LIST_IMAGES}
    verdicts = []
    for check in (lambda: rules.validate(request), lambda: api_rules.check(api_rules.LIST_IMAGES, values)):
        try:
            check()
            verdicts.append("")
        except QueryError as exc:
            verdicts.append(str(exc))
    assert verdicts[0] == verdicts[1]


def test_list_and_get_do_not_import_grpc_or_protobuf(tmp_path):
    store = tmp_path / "store"
    build(store)
    code = (
        "import sys\n"
        "from queries.cli import cli\n"
        "for args in (['list', '--page-size', '2'], ['list', '--page-token', 'x', '--filter', 'name=\"a\"'],\n"
        f"             ['get', 'crp00000000000000000']):\n"
        "    try:\n"
        f"        cli.main([*args, '--store', {str(store)!r}], standalone_mode=False)\n"
        "    except BaseException:\n"
        "        pass\n"
        "heavy = ('grpc', 'google.protobuf', 'yandex', 'yandexcloud')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy or m.startswith('google.protobuf')),"
        " file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.stderr.strip().splitlines()[-1] == "[]", result.stderr


def test_filter_grammar():
    condition, params = listing.parse_filter('name NOT IN ("a", \'b/c\') AND name != "d" and name IN ("e")')
    assert condition.count("NOT IN") == 1 and params == [["a", "b/c"], "d", ["e"]]
    for bad in ('name="A"', 'name=""', 'name="' + "a" * 257 + '"', 'name IN ("a", "-b")', "name NOT ('a')"):
        with pytest.raises(QueryError, match="invalid filter"):
            listing.parse_filter(bad)
    listing.parse_filter('name="' + "a" * 256 + '"')


# --- a store with ties -----------------------------------------------------------------------------

NAMES = ["a/x", "a/y", "b", "crpab0cd1ef2gh3ij4kl/team/z"]
CREATED = [
    "2026-01-01T00:00:00Z",
    "2026-01-01T00:00:00.500Z",
    "2025-12-31T23:59:59.999999999Z",
    None,
    # Apart only below the microsecond, which is all the store's created_at keeps.
    "2026-01-01T00:00:00.000000900Z",
    "2026-01-01T00:00:00.000000100Z",
    # In the nanosecond range, and before it once floored to the microsecond.
    "1677-09-21T00:12:43.145224500Z",
    # Outside the nanosecond range: created_at is NULL, sorted with the images without a time.
    "0001-01-01T00:00:00Z",
]
RUNS = 3
PER_RUN = 20


def _id(text: str) -> str:
    return "crp" + base64.b32hexencode(hashlib.sha256(text.encode()).digest()).decode().lower()[:17]


def images_of_run(run: int) -> list[dict]:
    out = []
    for i in range(run * PER_RUN, (run + 1) * PER_RUN):
        digest = f"sha256:{i % 25:064x}"  # the same digest under several names: ties on digest
        image = {
            "id": _id(f"image {i}"),
            "name": NAMES[i % len(NAMES)],  # ties on name
            "digest": digest,
            "compressedSize": str(1000 * (i % 7) + 1),
            "config": {"id": _id(f"config {i}"), "digest": f"sha256:{i + 500:064x}", "size": "100"},
            "layers": [{"id": _id(f"layer {i}"), "digest": f"sha256:{i + 900:064x}", "size": str(1000 * (i % 7) + 1)}],
        }
        if i % 3:
            image["tags"] = [f"t{i}"]
        if CREATED[i % len(CREATED)]:
            image["createdAt"] = CREATED[i % len(CREATED)]  # ties, and images without a time
        out.append(image)
    return out


def build(store) -> None:
    """Three index runs, so that last_modified has ties within a run and differs between runs."""
    for run in range(RUNS):
        path = os.path.join(str(store) + f".run{run}.json")
        with open(path, "w") as f:
            json.dump({"images": images_of_run(run)}, f)
        result = CliRunner().invoke(cli, ["index", f"ycr-json:{path}", "--store", str(store), "--quiet"])
        assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def ties_store(tmp_path_factory):
    store = tmp_path_factory.mktemp("ties") / "store"
    build(store)
    return str(store)


def _nanos(created: str | None) -> int:
    from indexer.timestamps import epoch_nanos

    nanos = epoch_nanos(created) if created is not None else None
    return -(2**63) - 1 if nanos is None else nanos


def expected_order(order_by: str) -> list[str]:
    """Every image id in the order `order_by` asks for, worked out here from what was indexed."""
    rows = []
    for run in range(RUNS):
        for image in images_of_run(run):
            rows.append(
                {
                    "id": image["id"],
                    "name": image["name"],
                    "digest": image["digest"],
                    "created_at": _nanos(image.get("createdAt")),
                    "last_modified": run,
                }
            )
    order = listing.parse_order(order_by)

    def compare(a, b):
        for field, desc in [*order, ("id", False)]:
            if a[field] != b[field]:
                less = a[field] < b[field]
                return (1 if less else -1) if desc else (-1 if less else 1)
        return 0

    return [row["id"] for row in sorted(rows, key=functools.cmp_to_key(compare))]


ORDERS = [
    "",
    "name desc",
    "created_at desc",
    "created_at",
    "last_modified desc, digest",
    "digest desc, created_at",
    "name, digest desc, created_at, last_modified desc",
]


@pytest.fixture(scope="module")
def listers(ties_store):
    """`imgdex list` (SQL over the Parquet snapshot) and the server's ListImages (from memory)."""
    from yandex.cloud.containerregistry.v1 import image_service_pb2

    from queries.server.api import Api
    from queries.server.snapshots import SnapshotSource

    reader = engine.connect(ties_store, tables=("images",))
    source = SnapshotSource(ties_store, poll=3600)
    source.start()
    api = Api(source)

    def by_cli(**fields):
        return listing.list_images(reader, listing.Query(**fields))

    def by_server(**fields):
        return api.list_images(image_service_pb2.ListImagesRequest(**fields))

    yield {"cli": by_cli, "server": by_server}
    source.stop()


def walk(list_page, size: int, **fields) -> tuple[list[str], list[str]]:
    ids, tokens, token = [], [], ""
    for _ in range(RUNS * PER_RUN + 2):
        page = list_page(page_size=size, page_token=token, **fields)
        ids += [image["id"] for image in page.get("images", [])]
        token = page.get("nextPageToken", "")
        if not token:
            return ids, tokens
        tokens.append(token)
    raise AssertionError("paging did not end")


@pytest.mark.parametrize("order_by", ORDERS)
@pytest.mark.parametrize("via", ["cli", "server"])
def test_pages_hold_every_image_exactly_once(listers, order_by, via):
    expected = expected_order(order_by)
    assert len(expected) == len(set(expected)) == RUNS * PER_RUN
    for size in (1, 2, 7, 59, 60, 1000):
        ids, tokens = walk(listers[via], size, order_by=order_by)
        assert ids == expected, (order_by, size)
        assert len(tokens) == (len(expected) - 1) // size
        assert all(len(token) <= 100 for token in tokens)
        # Stable: the same page asked again gives the same token.
        if tokens:
            assert walk(listers[via], size, order_by=order_by)[1] == tokens


@pytest.mark.parametrize("order_by", [",", " ", " , ,", "\t"])
@pytest.mark.parametrize("via", ["cli", "server"])
def test_an_order_of_empty_items_is_the_default_order(listers, order_by, via):
    """Empty items are skipped; when nothing else is left, the order is the one an empty order_by
    gives (it was `empty order`), and its tokens are that order's."""
    ids, tokens = walk(listers[via], 7, order_by=order_by)
    assert ids == expected_order("")
    assert tokens == walk(listers[via], 7)[1]


@pytest.mark.parametrize("via", ["cli", "server"])
def test_filtered_pages_hold_every_matching_image_once(listers, via):
    for fields, keep in (
        ({"filter": 'name NOT IN ("a/x", "b")'}, lambda n: n not in ("a/x", "b")),
        ({"filter": 'name = "b"', "order_by": "created_at desc"}, lambda n: n == "b"),
        ({"registry_id": "crpab0cd1ef2gh3ij4kl", "order_by": "digest"}, lambda n: n.startswith("crpab0cd1ef2gh3ij4kl")),
        ({"repository_name": "a/y", "registry_id": "nosuch", "order_by": "last_modified desc"}, lambda n: n == "a/y"),
        ({"folder_id": "b1gnosuch"}, lambda n: True),
    ):
        everything = walk(listers[via], 1000, order_by=fields.get("order_by", ""))[0]
        names = {image["id"]: image["name"] for run in range(RUNS) for image in images_of_run(run)}
        expected = [i for i in everything if keep(names[i])]
        for size in (1, 3, 1000):
            assert walk(listers[via], size, **fields)[0] == expected, (fields, size)


def _payload(token: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))


def _token(payload: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


def test_tokens_carry_the_id_and_last_modified_only(listers):
    by_cli = listers["cli"]
    token = by_cli(page_size=1)["nextPageToken"]
    keys = _payload(token)["k"]
    assert keys[:2] == [None, None] and keys[2].startswith("crp") and len(token) < 80
    worst = by_cli(page_size=1, order_by="name desc, digest, created_at, last_modified")["nextPageToken"]
    assert len(worst) <= 100 and isinstance(_payload(worst)["k"][3], int)


def test_foreign_and_garbled_tokens_are_invalid(listers):
    by_cli = listers["cli"]
    token = by_cli(page_size=2)["nextPageToken"]
    for fields in ({"order_by": "name desc"}, {"filter": 'name != "b"'}, {"repository_name": "b"}):
        with pytest.raises(QueryError, match="^invalid page token"):
            by_cli(page_size=2, page_token=token, **fields)
    # Whatever the scope's precedence ignores does not change the query.
    assert by_cli(page_size=2, page_token=token, folder_id="b1gx") == by_cli(page_size=2, page_token=token)
    payload = _payload(token)
    for garbled in (
        token[:-1],
        token + "A",
        "~" + token[1:],
        _token({**payload, "k": payload["k"][:-1]}),
        _token({**payload, "k": [*payload["k"][:-1], 7]}),
        _token({**payload, "k": ["a", 1, payload["k"][-1]]}),
        _token({"k": payload["k"]}),
        # The stand-in for an id too long for a token: 16 lowercase hex digits, and no other value.
        _token({**payload, "k": [None] * len(payload["k"]), "h": "ABCDEF0123456789"}),
        _token({**payload, "k": [None] * len(payload["k"]), "h": "0123"}),
        _token({**payload, "k": [None] * len(payload["k"]), "h": 7}),
        _token({**payload, "k": ["a", *[None] * (len(payload["k"]) - 1)], "h": "0123456789abcdef"}),
    ):
        with pytest.raises(QueryError, match="^invalid page token$"):
            by_cli(page_size=2, page_token=garbled)
    gone = _token({**payload, "k": [None] * len(payload["k"]), "h": "0123456789abcdef"})
    with pytest.raises(QueryError, match="^page token is stale"):
        by_cli(page_size=2, page_token=gone)


@pytest.mark.parametrize("via", ["cli", "server"])
def test_a_token_carrying_the_created_time_goes_on_from_its_image(listers, via):
    """Tokens leave created_at to be read back by id; one carrying it by value, the time in
    nanoseconds (below every time for an image without one), goes on from the same place."""
    expected = expected_order("created_at")
    created = {image["id"]: image.get("createdAt") for run in range(RUNS) for image in images_of_run(run)}
    fingerprint = listing.plan(listing.Query(order_by="created_at")).fingerprint
    for position in range(0, len(expected) - 1, 3):
        last = expected[position]
        token = _token({"q": fingerprint, "k": [_nanos(created[last]), last]})
        page = listers[via](page_size=4, order_by="created_at", page_token=token)
        assert [image["id"] for image in page["images"]] == expected[position + 1 : position + 5], position
    for outside in (-(2**63) - 2, 2**63):
        with pytest.raises(QueryError, match="^invalid page token$"):
            listers["cli"](order_by="created_at", page_token=_token({"q": fingerprint, "k": [outside, expected[0]]}))


# --- two steps: only the page's rows are rendered --------------------------------------------------


def test_only_the_rows_of_the_page_are_fetched(ties_store):
    fetched = []

    class Counting(listing.Source):
        def rows(self, ids):
            fetched.append(len(ids))
            return super().rows(ids)

    reader = engine.connect(ties_store, tables=("images",))
    page = listing.list_images(reader, listing.Query(page_size=7), Counting(reader))
    assert fetched == [7] and len(page["images"]) == 7


# --- the same bytes as before -----------------------------------------------------------------------


def _one_query(reader, order_by: str, where: str, params: list, size: int) -> str:
    """The first page as the one-query implementation wrote it: every column, every match, sorted."""
    keys = listing.plan(listing.Query(order_by=order_by)).order_sql
    rows = reader.execute(
        f"SELECT {render.SELECT} FROM images WHERE {where} ORDER BY {keys} LIMIT ?", [*params, size]
    ).fetchall()
    return json.dumps({"images": [render.to_response(r) for r in rows]} if rows else {}, indent=2, ensure_ascii=False)


@pytest.mark.parametrize("order_by", ORDERS)
def test_first_pages_are_byte_identical_to_one_sorted_query(ties_store, order_by):
    reader = engine.connect(ties_store, tables=("images",))
    for filter_, where, params in (("", "TRUE", []), ('name != "b"', "name <> ?", ["b"])):
        args = ["list", "--store", ties_store, "--page-size", "1000", "--order-by", order_by, "--filter", filter_]
        printed = CliRunner().invoke(cli, args).stdout
        assert printed == _one_query(reader, order_by, where, params, 1000) + "\n"


def test_fast_renderers_write_what_the_general_ones_write(ties_store):
    from google.protobuf.json_format import ParseDict
    from yandex.cloud.containerregistry.v1 import image_service_pb2

    from queries.server.grpc_api import image_field

    reader = engine.connect(ties_store, tables=("images",))
    rows = reader.execute(f"SELECT {render.SELECT} FROM images ORDER BY id").fetchall()
    odd = [
        ("crpa", None, None, None, None, None, None, None, None, None, None),
        (
            *("crpb", "n", "d", 5, "c", "sha256:x", None, ["u1", 'u"2']),
            '[{"id":"l","digest":"g","size":null,"urls":["é"]}]',
            ["t1", "é\u2028"],
            "2026-01-01T00:00:00.000000001Z",
        ),
    ]
    for chunk, token in ((rows, "tok"), (rows[:1], ""), (odd, "t"), ([], ""), ([], "t")):
        doc = render.list_response([render.to_response(r) for r in chunk], token)
        text = render.to_json(doc)
        assert text == json.dumps(doc, indent=2, ensure_ascii=False)
        assert render.list_json_of([render.list_fragment(row) for row in chunk], token) == text
        message = image_service_pb2.ListImagesResponse.FromString(b"".join(image_field(row) for row in chunk))
        message.next_page_token = token
        assert message == ParseDict(doc, image_service_pb2.ListImagesResponse())


def test_page_size_zero_means_the_default_hundred(ties_store):
    def page(*extra):
        result = CliRunner().invoke(cli, ["list", "--store", ties_store, *extra])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    default, zero, hundred = page(), page("--page-size", "0"), page("--page-size", "100")
    assert zero == default == hundred
    one = page("--page-size", "1")
    assert len(one["images"]) == 1 and one["images"][0] == default["images"][0]


def test_an_empty_blob_digest_is_left_out_as_the_api_leaves_it_out():
    """Blob.digest is a proto3 string: empty (a YCR export may hold such a layer), MessageToJson
    omits it, so the REST body and the CLI must too, and the gRPC answer must still be built."""
    from google.protobuf.json_format import MessageToDict

    from queries.server.grpc_api import image_message

    layers = '[{"id":"crpl","digest":"","size":5,"urls":[]}]'
    row = ("crpa", "n", None, None, None, None, None, None, layers, None, None)
    expected = {"id": "crpa", "name": "n", "layers": [{"id": "crpl", "size": "5"}]}
    assert render.to_response(row) == expected
    assert render.list_json_of([render.list_fragment(row)], "") == render.to_json({"images": [expected]})
    assert MessageToDict(image_message(expected)) == expected


def test_a_config_without_a_digest_is_still_the_image_s_config():
    """A stored config is NULL only when the image has none (an index); a YCR export may give one
    with an id and a size but no digest, which the Image still holds."""
    from google.protobuf.json_format import MessageToDict

    from queries.server.grpc_api import image_message

    row = ("crpa", "n", None, None, "crpc", "", 12, [], None, None, None)
    expected = {"id": "crpa", "name": "n", "config": {"id": "crpc", "size": "12"}}
    assert render.to_response(row) == expected
    assert render.list_json_of([render.list_fragment(row)], "") == render.to_json({"images": [expected]})
    assert MessageToDict(image_message(expected)) == expected
