"""`imgdex serve`: the official SDK and plain HTTP clients against a real server process on loopback.

Every answer is compared with what the CLI prints for the same store. The server is started with
`python -m queries.server.app` and stopped with SIGTERM, as a service manager would.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

import grpc
import pytest
import yandexcloud
from google.protobuf.json_format import MessageToDict, MessageToJson
from yandex.cloud.containerregistry.v1 import (
    image_service_pb2 as isv,
    image_service_pb2_grpc as isv_grpc,
    registry_service_pb2 as gsv,
    registry_service_pb2_grpc as gsv_grpc,
    repository_service_pb2 as rsv,
    repository_service_pb2_grpc as rsv_grpc,
)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
REAL = os.path.join(HERE, "fixtures", "real")
YCR = os.path.join(HERE, "fixtures", "ycr")
READY = re.compile(r"gRPC (\S+), REST (?:http://(\S+)|off),")


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`imgdex` as users run it, in a new process."""
    result = subprocess.run(
        [sys.executable, "-m", "queries.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    if check and result.returncode != 0:
        raise AssertionError(f"imgdex {' '.join(args)} failed: {result.stderr}")
    return result


def build_store(store: str, *sources: str) -> None:
    cli("index", *sources, "--store", store, "--quiet")


def fixture_sources() -> list[str]:
    """The committed real archives and layouts, plus YCR JSON (for registries and real ids)."""
    archives = sorted(os.path.join(REAL, n) for n in os.listdir(REAL) if n.endswith(".tar"))
    return [
        *archives,
        os.path.join(REAL, "oci-layout"),
        f"ycr-json:{os.path.join(YCR, 'image-list.json')}",
        f"ycr-json:{os.path.join(YCR, 'image-get.json')}",
    ]


@dataclass
class Server:
    proc: subprocess.Popen
    grpc: str | None
    http: str | None
    ready_line: str

    def stop(self, timeout: float = 5.0) -> tuple[int, float, str]:
        """SIGTERM; (exit code, seconds to exit, rest of stderr)."""
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=timeout + 5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
            return -9, time.monotonic() - t0, err
        return self.proc.returncode, time.monotonic() - t0, err


def start_server(
    store: str, *args: str, timeout: float = 30.0, open_files: int | None = None, sigint_ignored: bool = False
) -> Server:
    argv = [sys.executable, "-m", "queries.server.app", "--store", store]
    if sigint_ignored:  # as nohup, or `&` in a script, starts it
        argv = ["sh", "-c", 'trap "" INT; exec "$@"', "sh", *argv]
    if not any(a == "--grpc" for a in args):
        argv += ["--grpc", "127.0.0.1:0"]
    if not any(a == "--http" for a in args):
        argv += ["--http", "127.0.0.1:0"]

    def limit() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

    preexec = limit if open_files is not None else None
    proc = subprocess.Popen([*argv, *args], cwd=ROOT, stderr=subprocess.PIPE, text=True, preexec_fn=preexec)
    selector = selectors.DefaultSelector()
    selector.register(proc.stderr, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if selector.select(timeout=max(0.0, deadline - time.monotonic())):
            line = proc.stderr.readline()
            if not line:
                break
            m = READY.search(line)
            if m:
                grpc = None if m.group(1) == "off" else m.group(1)
                return Server(proc, grpc, m.group(2), line)
    proc.kill()
    _, err = proc.communicate()
    raise AssertionError(f"server did not become ready: {err}")


def http_get(address: str, path: str, headers: dict | None = None, method: str = "GET") -> tuple[int, bytes, dict]:
    request = urllib.request.Request(f"http://{address}{path}", headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def http_json(address: str, path: str, headers: dict | None = None) -> tuple[int, dict]:
    status, body, _ = http_get(address, path, headers)
    return status, json.loads(body)


# --- fixtures -------------------------------------------------------------------------------------

REGISTRY_ID = "crp7b2m3p8k0v1ej5s4n"  # the YCR registry of tests/fixtures/ycr


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("serve-store"))
    build_store(path, *fixture_sources())
    return path


@pytest.fixture(scope="module")
def cli_images(store):
    """Every image as `imgdex list` prints it, in list order."""
    return json.loads(cli("list", "--store", store, "--page-size", "1000").stdout)["images"]


@pytest.fixture(scope="module")
def server(store):
    srv = start_server(store)
    yield srv
    code, seconds, err = srv.stop()
    assert code == 0, err
    assert seconds < 5, f"shutdown took {seconds:.1f} s"


@pytest.fixture(scope="module")
def sdk():
    # No credentials: with an explicit endpoint and insecure=True the SDK opens a plain channel
    # and never asks the metadata service or IAM for a token.
    return yandexcloud.SDK()


@pytest.fixture(scope="module")
def images(sdk, server):
    return sdk.client(isv_grpc.ImageServiceStub, endpoint=server.grpc, insecure=True)


@pytest.fixture(scope="module")
def repositories(sdk, server):
    return sdk.client(rsv_grpc.RepositoryServiceStub, endpoint=server.grpc, insecure=True)


@pytest.fixture(scope="module")
def registries(sdk, server):
    return sdk.client(gsv_grpc.RegistryServiceStub, endpoint=server.grpc, insecure=True)


def grpc_code(call, *args, **kwargs) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, timeout=10, **kwargs)
    return info.value.code()


def list_all_grpc(images, page_size: int, **fields) -> tuple[list[dict], list[str]]:
    found, tokens, token = [], [], ""
    for _ in range(1000):  # bounded: a broken token must not loop forever
        page = images.List(isv.ListImagesRequest(page_size=page_size, page_token=token, **fields), timeout=10)
        found += [MessageToDict(i) for i in page.images]
        token = page.next_page_token
        if not token:
            return found, tokens
        tokens.append(token)
    raise AssertionError("paging did not end")


def list_all_rest(address: str, page_size: int) -> tuple[list[dict], list[str]]:
    found, tokens, token = [], [], ""
    for _ in range(1000):
        query = urllib.parse.urlencode({"pageSize": page_size, "pageToken": token})
        status, doc = http_json(address, f"/container-registry/v1/images?{query}")
        assert status == 200, doc
        found += doc.get("images", [])
        token = doc.get("nextPageToken", "")
        if not token:
            return found, tokens
        tokens.append(token)
    raise AssertionError("paging did not end")


# --- ImageService ---------------------------------------------------------------------------------


def test_store_has_what_the_tests_need(cli_images):
    names = {i.get("name", "") for i in cli_images}
    assert len(cli_images) >= 15
    assert any(n.startswith(REGISTRY_ID + "/") for n in names) and "" in names


def test_sdk_get_equals_cli_get_for_every_image(store, images, cli_images):
    for image in cli_images:
        printed = cli("get", image["id"], "--store", store).stdout
        answer = images.Get(isv.GetImageRequest(image_id=image["id"]), timeout=10)
        assert MessageToDict(answer) == json.loads(printed)
        assert MessageToJson(answer) == printed.rstrip("\n")


def test_rest_get_is_byte_for_byte_the_cli_get(store, server, cli_images):
    for image in cli_images:
        printed = cli("get", image["id"], "--store", store).stdout
        status, body, headers = http_get(server.http, f"/container-registry/v1/images/{image['id']}")
        assert status == 200 and headers["Content-Type"] == "application/json"
        assert body.decode() == printed.rstrip("\n")


def test_curl_smoke(server, cli_images):
    curl = __import__("shutil").which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    image = cli_images[0]
    out = subprocess.run(
        [curl, "-sS", "--fail", "--max-time", "10", f"http://{server.http}/container-registry/v1/images/{image['id']}"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == image


def test_list_equals_cli_list(store, images, server):
    printed = json.loads(cli("list", "--store", store).stdout)
    assert MessageToDict(images.List(isv.ListImagesRequest(), timeout=10)) == printed
    assert http_json(server.http, "/container-registry/v1/images")[1] == printed
    filtered = json.loads(
        cli("list", "--store", store, "--filter", 'name="team/app"', "--order-by", "created_at desc").stdout
    )
    answer = images.List(isv.ListImagesRequest(filter='name="team/app"', order_by="created_at desc"), timeout=10)
    assert MessageToDict(answer) == filtered and filtered["images"]
    query = urllib.parse.urlencode({"filter": 'name="team/app"', "orderBy": "created_at desc"})
    assert http_json(server.http, f"/container-registry/v1/images?{query}")[1] == filtered


@pytest.mark.parametrize("page_size", [1, 2, 7])
def test_grpc_paging_returns_every_image_exactly_once(images, cli_images, page_size):
    found, tokens = list_all_grpc(images, page_size)
    assert [i["id"] for i in found] == [i["id"] for i in cli_images]
    assert found == cli_images
    assert all(len(t) <= 100 for t in tokens)


@pytest.mark.parametrize("page_size", [1, 4])
def test_rest_paging_returns_every_image_exactly_once(server, cli_images, page_size):
    found, tokens = list_all_rest(server.http, page_size)
    assert found == cli_images
    assert all(len(t) <= 100 for t in tokens)


def test_page_tokens_pass_through_between_cli_and_server(store, images, server):
    """The server hands out `listing`'s own tokens, short enough for the API, and takes the CLI's."""
    for order in ("", "created_at desc", "last_modified desc, name", "name, digest, created_at, last_modified"):
        printed = json.loads(cli("list", "--store", store, "--page-size", "2", "--order-by", order).stdout)
        answer = MessageToDict(images.List(isv.ListImagesRequest(page_size=2, order_by=order), timeout=10))
        assert answer == printed and 0 < len(answer["nextPageToken"]) <= 100
        token = answer["nextPageToken"]
        following = json.loads(
            cli("list", "--store", store, "--page-size", "2", "--order-by", order, "--page-token", token).stdout
        )
        query = urllib.parse.urlencode({"pageSize": 2, "orderBy": order, "pageToken": token})
        assert http_json(server.http, f"/container-registry/v1/images?{query}") == (200, following)


def test_a_token_holding_a_lone_surrogate_is_an_invalid_token_everywhere(store, images, server):
    """JSON spells a lone surrogate as an escape; DuckDB cannot bind the str it decodes to."""
    import base64

    from queries import listing

    for order, keys in (("", [None, None, "\ud800"]), ("", ["\udfff", "d", "crp00000000000000000"])):
        fingerprint = listing.plan(listing.Query(order_by=order)).fingerprint
        payload = json.dumps({"q": fingerprint, "k": keys}).encode()
        token = base64.urlsafe_b64encode(payload).decode().rstrip("=")
        assert len(token) <= 100
        with pytest.raises(grpc.RpcError) as info:
            images.List(isv.ListImagesRequest(page_token=token, order_by=order), timeout=10)
        assert (info.value.code(), info.value.details()) == (INVALID, "invalid page token")
        query = urllib.parse.urlencode({"pageToken": token, "orderBy": order})
        status, doc = http_json(server.http, f"/container-registry/v1/images?{query}")
        assert (status, doc["code"], doc["message"]) == (400, 3, "invalid page token")
        printed = cli("list", "--store", store, "--page-token", token, "--order-by", order, check=False)
        assert (printed.returncode, printed.stderr) == (1, "imgdex: invalid page token\n")


def test_registry_id_and_repository_scopes(images, cli_images):
    web = f"{REGISTRY_ID}/team/web"
    in_registry = [i for i in cli_images if i.get("name", "").startswith(REGISTRY_ID + "/")]
    found, _ = list_all_grpc(images, 100, registry_id=REGISTRY_ID)
    assert found == in_registry
    # registry_id is ignored when repository_name is set ...
    found, _ = list_all_grpc(images, 100, registry_id="crpnosuchregistry000", repository_name=web)
    assert found == [i for i in cli_images if i.get("name") == web] and found
    # ... and folder_id when either is set; the index records no folders, so alone it does not narrow.
    found, _ = list_all_grpc(images, 100, registry_id=REGISTRY_ID, folder_id="b1gnosuchfolder")
    assert found == in_registry
    found, _ = list_all_grpc(images, 100, folder_id="b1gnosuchfolder")
    assert found == cli_images


def test_page_size_zero_is_the_default(images, cli_images):
    page = images.List(isv.ListImagesRequest(page_size=0), timeout=10)
    assert len(page.images) == min(100, len(cli_images))


def test_get_answers_ids_only(images, cli_images):
    named = next(i for i in cli_images if i.get("tags") and i.get("name") and i.get("config"))
    assert (
        grpc_code(images.Get, isv.GetImageRequest(image_id=f"{named['name']}:{named['tags'][0]}"))
        == grpc.StatusCode.NOT_FOUND
    )
    assert (
        grpc_code(images.Get, isv.GetImageRequest(image_id=named["config"]["digest"][7:19]))
        == grpc.StatusCode.NOT_FOUND
    )


# --- validation: every rule gets its status, on both transports -----------------------------------

INVALID = grpc.StatusCode.INVALID_ARGUMENT
OK = grpc.StatusCode.OK
LIST_CASES = [
    ({"page_size": 1001}, INVALID),
    ({"page_size": 1000}, grpc.StatusCode.OK),
    ({"page_size": 0}, grpc.StatusCode.OK),
    ({"page_size": -1}, INVALID),
    ({"page_token": "x" * 101}, INVALID),
    ({"page_token": "x" * 100}, INVALID),  # within the length, but not a token of this query
    ({"filter": "name IN (" + ", ".join(['"' + "a" * 244 + '"'] * 3 + ['"' + "a" * 245 + '"']) + ")"}, INVALID),
    ({"filter": "name IN (" + ", ".join(['"' + "a" * 244 + '"'] * 4) + ")"}, OK),  # 1,000 characters; 1,001 above
    ({"filter": 'name="' + "a" * 257 + '"'}, INVALID),  # a value of 257 characters
    ({"filter": 'name="' + "a" * 256 + '"'}, OK),
    ({"filter": 'name="Not/Valid"'}, INVALID),  # not a repository name
    ({"filter": 'name NOT IN ("team/app", "x")'}, OK),
    ({"filter": "tags CONTAINS x"}, INVALID),
    ({"page_token": "eyJxIjoiQUFBQUFBIiwiayI6W251bGwsbnVsbCwiY3JwMDAwMDAwMDAwMDAwMDAwMDAiXX0"}, INVALID),  # foreign
    ({"order_by": "name" + " " * 97}, INVALID),  # 101
    ({"order_by": "size"}, INVALID),
    ({"registry_id": "r" * 51}, INVALID),
    ({"registry_id": "r" * 50}, grpc.StatusCode.OK),
    ({"folder_id": "f" * 51}, INVALID),
    ({"repository_name": "Not/Valid"}, INVALID),
    ({"repository_name": "ok/name"}, grpc.StatusCode.OK),
]


def _call_code(call, request) -> grpc.StatusCode:
    try:
        call(request, timeout=10)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize(
    "fields,code", LIST_CASES, ids=[f"{next(iter(f))}-{len(str(next(iter(f.values()))))}" for f, _ in LIST_CASES]
)
def test_list_images_rules(images, server, fields, code):
    assert _call_code(images.List, isv.ListImagesRequest(**fields)) == code
    camel = {
        "page_size": "pageSize",
        "page_token": "pageToken",
        "order_by": "orderBy",
        "registry_id": "registryId",
        "folder_id": "folderId",
        "repository_name": "repositoryName",
        "filter": "filter",
    }
    query = urllib.parse.urlencode({camel[k]: v for k, v in fields.items()})
    status, doc = http_json(server.http, f"/container-registry/v1/images?{query}")
    if code == grpc.StatusCode.OK:
        assert status == 200
    else:
        assert (status, doc["code"], doc["details"]) == (400, 3, []) and doc["message"]


@pytest.mark.parametrize(
    "image_id,code,http",
    [
        ("", INVALID, 400),
        ("c" * 51, INVALID, 400),
        ("crp" + "0" * 47, grpc.StatusCode.NOT_FOUND, 404),
        ("crp00000000000000000", grpc.StatusCode.NOT_FOUND, 404),
    ],
)
def test_get_image_rules(images, server, image_id, code, http):
    assert grpc_code(images.Get, isv.GetImageRequest(image_id=image_id)) == code
    if http is not None:
        status, doc = http_json(server.http, f"/container-registry/v1/images/{image_id}")
        assert status == http and doc["code"] == code.value[0] and doc["details"] == []


@pytest.mark.parametrize("collection", ["images", "repositories", "registries"])
def test_an_empty_rest_path_parameter_is_a_get_without_an_id_not_a_list(server, collection):
    """`/images/` is the Get template `/images/{imageId}` with an empty id, as the gRPC Get."""
    status, doc = http_json(server.http, f"/container-registry/v1/{collection}/?folderId=b1g")
    assert (status, doc["code"]) == (400, 3) and "is required" in doc["message"]


def test_rest_rejects_malformed_parameters(server):
    status, doc = http_json(server.http, "/container-registry/v1/images?pageSize=ten")
    assert (status, doc["code"]) == (400, 3)


@pytest.mark.parametrize(
    "target, named",
    [
        ("/images?pageSize=5&pageSize=1", "pageSize"),
        ("/images?page_size=1&page_size=1", "page_size"),
        ("/images?filter=&orderBy=name&orderBy=id", "orderBy"),
        ("/repositories?registryId=a&registryId=b", "registryId"),
        ("/registries?folderId=b1g&folderId=b1g", "folderId"),
    ],
)
def test_rest_refuses_a_field_given_twice(server, target, named):
    """As grpc-gateway does: the last value was taken, a request other than the one sent."""
    status, doc = http_json(server.http, "/container-registry/v1" + target)
    assert (status, doc["code"], doc["details"]) == (400, 3, []), doc
    assert doc["message"] == f"invalid request parameter: {named} is given 2 times and takes one value"


@pytest.mark.parametrize(
    "target, first, second, times",
    [
        ("/images?pageSize=5&page_size=1", "pageSize", "page_size", 2),
        ("/images?order_by=name&orderBy=id", "order_by", "orderBy", 2),
        ("/images?pageSize=5&page_size=1&pageSize=2", "pageSize", "page_size", 3),
        ("/repositories?registry_id=a&registryId=b", "registry_id", "registryId", 2),
    ],
)
def test_rest_refuses_a_field_given_under_both_spellings(server, target, first, second, times):
    """`pageSize` and `page_size` are one field: given once each, one value would be dropped."""
    status, doc = http_json(server.http, "/container-registry/v1" + target)
    assert (status, doc["code"], doc["details"]) == (400, 3, []), doc
    assert doc["message"] == (
        f"invalid request parameter: {first} is given {times} times (as {first} and {second}) and takes one value"
    )


def test_rest_ignores_a_repeated_parameter_that_names_no_field_or_one_of_the_path(server, cli_images):
    status, doc = http_json(server.http, "/container-registry/v1/images?pageSize=1&x=1&x=2")
    assert status == 200 and len(doc["images"]) == 1
    image = cli_images[0]
    assert http_json(server.http, f"/container-registry/v1/images/{image['id']}?imageId=a&imageId=b") == (200, image)


# --- repositories and registries ------------------------------------------------------------------


def test_repositories_are_the_distinct_names(repositories, server, cli_images):
    from queries.server.catalog import repository_id

    names = sorted({i["name"] for i in cli_images if i.get("name")})
    answer = MessageToDict(repositories.List(rsv.ListRepositoriesRequest(), timeout=10))
    assert answer == {"repositories": [{"name": n, "id": repository_id(n)} for n in names]}
    assert http_json(server.http, "/container-registry/v1/repositories")[1] == answer
    # Paging: each once, in order, short tokens.
    seen, token = [], ""
    for _ in range(100):
        page = repositories.List(rsv.ListRepositoriesRequest(page_size=2, page_token=token), timeout=10)
        seen += [r.name for r in page.repositories]
        token = page.next_page_token
        assert len(token) <= 100
        if not token:
            break
    assert seen == names
    desc = repositories.List(rsv.ListRepositoriesRequest(order_by="name desc"), timeout=10)
    assert [r.name for r in desc.repositories] == names[::-1]
    scoped = repositories.List(rsv.ListRepositoriesRequest(registry_id=REGISTRY_ID), timeout=10)
    assert [r.name for r in scoped.repositories] == [n for n in names if n.startswith(REGISTRY_ID + "/")]
    filtered = repositories.List(rsv.ListRepositoriesRequest(filter='name="team/app"'), timeout=10)
    assert [r.name for r in filtered.repositories] == ["team/app"]


def test_repository_get_and_get_by_name(repositories, server):
    from queries.server.catalog import repository_id

    name = f"{REGISTRY_ID}/team/web"
    expected = {"name": name, "id": repository_id(name)}
    assert (
        MessageToDict(repositories.Get(rsv.GetRepositoryRequest(repository_id=expected["id"]), timeout=10)) == expected
    )
    assert (
        MessageToDict(repositories.GetByName(rsv.GetRepositoryByNameRequest(repository_name=name), timeout=10))
        == expected
    )
    assert http_json(server.http, f"/container-registry/v1/repositories/{expected['id']}") == (200, expected)
    assert http_json(server.http, f"/container-registry/v1/repositories/{name}:byName") == (200, expected)
    assert http_json(
        server.http, f"/container-registry/v1/repositories/{urllib.parse.quote(name, safe='')}:byName"
    ) == (200, expected)
    assert (
        grpc_code(repositories.Get, rsv.GetRepositoryRequest(repository_id="crp00000000000000000"))
        == grpc.StatusCode.NOT_FOUND
    )
    assert (
        grpc_code(repositories.GetByName, rsv.GetRepositoryByNameRequest(repository_name="no/such"))
        == grpc.StatusCode.NOT_FOUND
    )
    assert grpc_code(repositories.GetByName, rsv.GetRepositoryByNameRequest(repository_name="Bad Name")) == INVALID
    assert grpc_code(repositories.Get, rsv.GetRepositoryRequest(repository_id="")) == INVALID


def test_a_long_name_not_found_is_named_cut_short(repositories, server):
    """A repository name has no length rule: the message that echoes it must stay short."""
    name = ("a/" * 4000)[:7999]  # a valid name; with the field's key, within a gRPC request's limit
    with pytest.raises(grpc.RpcError) as info:
        repositories.GetByName(rsv.GetRepositoryByNameRequest(repository_name=name), timeout=10)
    assert (info.value.code(), info.value.details()) == (
        grpc.StatusCode.NOT_FOUND,
        f"repository {name[:120]}... not found",
    )
    longer = ("a/" * 20000)[:39999]
    status, body, _ = http_get(server.http, f"/container-registry/v1/repositories/{longer}:byName")
    assert status == 404 and json.loads(body)["message"] == f"repository {longer[:120]}... not found"
    assert len(body) < 300
    # A path the API does not have, and a method it does not serve, are echoed cut short too.
    path = "/container-registry/v1/nothing/" + "x" * 40000
    status, body, _ = http_get(server.http, path)
    assert status == 404 and json.loads(body)["message"] == f"no such path {path[:120]}..."


def test_registries_from_ycr_names(registries, server):
    expected = {"id": REGISTRY_ID, "status": "ACTIVE"}
    answer = MessageToDict(registries.List(gsv.ListRegistriesRequest(folder_id="b1gfolder"), timeout=10))
    assert answer == {"registries": [expected]}
    assert http_json(server.http, "/container-registry/v1/registries?folderId=b1gfolder") == (200, answer)
    assert MessageToDict(registries.Get(gsv.GetRegistryRequest(registry_id=REGISTRY_ID), timeout=10)) == expected
    assert http_json(server.http, f"/container-registry/v1/registries/{REGISTRY_ID}") == (200, expected)
    assert (
        grpc_code(registries.Get, gsv.GetRegistryRequest(registry_id="crp00000000000000000"))
        == grpc.StatusCode.NOT_FOUND
    )
    # folder_id is required by the API.
    assert grpc_code(registries.List, gsv.ListRegistriesRequest()) == INVALID
    assert http_json(server.http, "/container-registry/v1/registries")[0] == 400


def test_writes_are_unimplemented(images, repositories, registries, server, cli_images):
    image_id = cli_images[0]["id"]
    assert grpc_code(images.Delete, isv.DeleteImageRequest(image_id=image_id)) == grpc.StatusCode.UNIMPLEMENTED
    assert grpc_code(repositories.Upsert, rsv.UpsertRepositoryRequest(name="a/b")) == grpc.StatusCode.UNIMPLEMENTED
    assert grpc_code(registries.Create, gsv.CreateRegistryRequest(folder_id="f")) == grpc.StatusCode.UNIMPLEMENTED
    assert (
        grpc_code(registries.ListIpPermission, gsv.ListIpPermissionRequest(registry_id=REGISTRY_ID))
        == grpc.StatusCode.UNIMPLEMENTED
    )
    status, body, _ = http_get(server.http, f"/container-registry/v1/images/{image_id}", method="DELETE")
    assert status == 501 and json.loads(body)["code"] == 12
    status, body, _ = http_get(server.http, "/container-registry/v1/registries", method="POST")
    assert status == 501
    # And the image is still there.
    assert images.Get(isv.GetImageRequest(image_id=image_id), timeout=10).id == image_id


def _largest_within_rules(message_class):
    """The request with every field at the most its rules allow, each character 4 bytes in UTF-8."""
    from indexer.references import NAME_MAX
    from queries.server import rules

    fields = {}
    for rule in rules.rules_of(message_class):
        if rule.length is not None:
            fields[rule.name] = "\U0001f600" * rule.length.high
        elif rule.pattern is not None:
            fields[rule.name] = "a" * NAME_MAX  # a repository name, whose length only distribution bounds
        elif rule.value is not None:
            fields[rule.name] = rule.value.high
    return message_class(**fields)


def test_grpc_refuses_requests_larger_than_any_valid_one(images, repositories, registries):
    from queries.server import rules
    from queries.server.grpc_api import MAX_REQUEST_BYTES

    methods = [images.Get, images.List, repositories.Get, repositories.GetByName, repositories.List]
    methods += [registries.Get, registries.List]
    for message_class, method in zip(rules.SERVED_REQUESTS, methods, strict=True):
        request = _largest_within_rules(message_class)
        assert request.ByteSize() <= MAX_REQUEST_BYTES // 2, message_class
        assert _call_code(method, request) != grpc.StatusCode.RESOURCE_EXHAUSTED, message_class
    assert _call_code(images.List, isv.ListImagesRequest(repository_name="a" * 8000)) == OK
    too_large = isv.ListImagesRequest(repository_name="a" * MAX_REQUEST_BYTES)
    assert _call_code(images.List, too_large) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _call_code(images.List, isv.ListImagesRequest()) == OK


def test_grpc_calls_beyond_what_the_workers_can_take_are_refused_at_once(store, cli_images):
    import threading

    from queries.server.app import Service
    from queries.server.grpc_api import CALLS_PER_WORKER

    service = Service(store, ("127.0.0.1", 0), None, workers=1)
    release = threading.Event()
    original = service.api.get_image

    def held_get(request):
        release.wait(30)
        return original(request)

    service.api.get_image = held_get
    service.start()
    request = isv.GetImageRequest(image_id=cli_images[0]["id"])
    try:
        with grpc.insecure_channel(service.grpc_address) as channel:
            stub = isv_grpc.ImageServiceStub(channel)
            held = [stub.Get.future(request, timeout=60) for _ in range(CALLS_PER_WORKER)]
            time.sleep(1.0)  # one call running, the others waiting for the worker
            t0 = time.monotonic()
            with pytest.raises(grpc.RpcError) as info:
                stub.Get(request, timeout=10)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert time.monotonic() - t0 < 2
            release.set()
            assert [MessageToDict(call.result()) for call in held] == [cli_images[0]] * CALLS_PER_WORKER
            assert MessageToDict(stub.Get(request, timeout=10)) == cli_images[0]
    finally:
        release.set()
        service.stop(grace=1)


def test_grpc_calls_whose_request_never_comes_free_their_worker(store, cli_images, monkeypatch):
    """A call whose headers came and whose message never does waits on a worker (grpcio reads the
    request there): with one worker, one such call held every other call, health checks too, for
    as long as its client liked. Its connection is closed after its age and grace, and the worker
    answers again."""
    import threading

    from queries.server import grpc_api
    from queries.server.app import Service

    monkeypatch.setattr(grpc_api, "MAX_CONNECTION_AGE_MS", 1000)
    monkeypatch.setattr(grpc_api, "MAX_CONNECTION_AGE_GRACE_MS", 1000)
    service = Service(store, ("127.0.0.1", 0), None, workers=1)
    service.start()
    stall = threading.Event()

    def never():  # the headers go out, no message
        stall.wait(60)
        return
        yield

    request = isv.GetImageRequest(image_id=cli_images[0]["id"])
    get = "/yandex.cloud.containerregistry.v1.ImageService/Get"
    try:
        with grpc.insecure_channel(service.grpc_address, options=[("grpc.use_local_subchannel_pool", 1)]) as stalled:
            call = stalled.stream_unary(get).future(never())
            time.sleep(0.5)
            with grpc.insecure_channel(service.grpc_address) as channel:
                answer = isv_grpc.ImageServiceStub(channel).Get(request, timeout=15)
            assert MessageToDict(answer) == cli_images[0]
            with pytest.raises(grpc.RpcError):
                call.result(timeout=15)  # cut by the server, not by its own client
    finally:
        stall.set()
        service.stop(grace=1)


def test_unknown_rest_path_is_not_found(server):
    status, doc = http_json(server.http, "/container-registry/v2/images")
    assert (status, doc["code"]) == (404, 5)


@pytest.mark.parametrize(
    "target",
    [
        "/container-registry/v1/images/caf\u00e9",
        "/container-registry/v1/repositories/t\u00e9am/app:byName",
        "/container-registry/v1/images?repositoryName=t\u00e9am/app",
        "/container-registry/v1/n\u00f6where",
        # Characters holding the bytes \xa0 or \x85, which str.split() takes for whitespace: the
        # request line was cut inside them (400, a malformed line or a target that is not UTF-8).
        "/container-registry/v1/images/voil\u00e0",
        "/container-registry/v1/images?repositoryName=t\u00e0am/app&pageSize=2",
        "/container-registry/v1/repositories/\u00c5b/app:byName",
        "/container-registry/v1/n\u0920where",
        "//container-registry/v1/images/\u0160",
    ],
)
def test_a_target_sent_as_raw_utf8_is_read_as_its_percent_escapes_are(server, target):
    # curl sends the characters of a URL unescaped; the answer names them as the client wrote them.
    escaped = urllib.parse.quote(target, safe="/?=:&")
    raw = target.encode("utf-8")
    answers = []
    for sent in (escaped.encode("ascii"), raw):
        out, _ = exchange(server.http, b"GET " + sent + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        head, _, body = out.partition(b"\r\n\r\n")
        answers.append((head.split(b"\r\n")[0], json.loads(body)))
    (escaped_status, escaped_doc), (raw_status, raw_doc) = answers
    assert raw_status == escaped_status
    if "message" in raw_doc:  # a path the API lacks is echoed as sent: escaped, or not
        escaped_doc["message"] = urllib.parse.unquote(escaped_doc["message"])
    assert raw_doc == escaped_doc


def test_health_and_reflection(server):
    health = pytest.importorskip("grpc_health.v1.health_pb2")
    health_grpc = pytest.importorskip("grpc_health.v1.health_pb2_grpc")
    reflection = pytest.importorskip("grpc_reflection.v1alpha.reflection_pb2")
    reflection_grpc = pytest.importorskip("grpc_reflection.v1alpha.reflection_pb2_grpc")
    with grpc.insecure_channel(server.grpc) as channel:
        answer = health_grpc.HealthStub(channel).Check(health.HealthCheckRequest(), timeout=10)
        assert answer.status == health.HealthCheckResponse.SERVING
        answer = health_grpc.HealthStub(channel).Check(
            health.HealthCheckRequest(service="yandex.cloud.containerregistry.v1.ImageService"), timeout=10
        )
        assert answer.status == health.HealthCheckResponse.SERVING
        responses = reflection_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection.ServerReflectionRequest(list_services="")]), timeout=10
        )
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert {
        "yandex.cloud.containerregistry.v1.ImageService",
        "yandex.cloud.containerregistry.v1.RepositoryService",
        "yandex.cloud.containerregistry.v1.RegistryService",
        "grpc.health.v1.Health",
    } <= names


# --- a new index run is served without a restart --------------------------------------------------


def test_new_index_run_is_served_without_restart(tmp_path, sdk):
    store = str(tmp_path / "store")
    build_store(store, os.path.join(REAL, "docker-save-base.tar"))
    before = {i["id"] for i in json.loads(cli("list", "--store", store).stdout)["images"]}
    srv = start_server(store)
    try:
        stub = sdk.client(isv_grpc.ImageServiceStub, endpoint=srv.grpc, insecure=True)
        assert {i.id for i in stub.List(isv.ListImagesRequest(), timeout=10).images} == before
        build_store(store, os.path.join(REAL, "oci-archive-app.tar"))
        after = json.loads(cli("list", "--store", store).stdout)["images"]
        new = [i for i in after if i["id"] not in before]
        assert new
        t0 = time.monotonic()
        while time.monotonic() - t0 < 10:
            try:
                answer = stub.Get(isv.GetImageRequest(image_id=new[0]["id"]), timeout=10)
                break
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.NOT_FOUND
                time.sleep(0.1)
        else:
            raise AssertionError("the new image was not served within 10 s")
        picked_up = time.monotonic() - t0
        assert MessageToDict(answer) == new[0]
        assert picked_up < 3, f"took {picked_up:.1f} s"
        assert MessageToDict(stub.List(isv.ListImagesRequest(), timeout=10)) == {"images": after}
        assert http_json(srv.http, f"/container-registry/v1/images/{new[0]['id']}") == (200, new[0])
        assert srv.proc.poll() is None
    finally:
        code, _, err = srv.stop()
    assert code == 0, err


def test_store_without_a_run_yet_is_unavailable_until_indexed(tmp_path, sdk):
    store = tmp_path / "empty"
    store.mkdir()
    srv = start_server(str(store))
    try:
        assert "no completed index run yet" in srv.ready_line
        stub = sdk.client(isv_grpc.ImageServiceStub, endpoint=srv.grpc, insecure=True)
        with pytest.raises(grpc.RpcError) as refused:
            stub.List(isv.ListImagesRequest(), timeout=10)
        # The store's path is the operator's (the ready line has it), not the clients'.
        assert (refused.value.code(), refused.value.details()) == (
            grpc.StatusCode.UNAVAILABLE,
            "no index run has completed yet",
        )
        status, doc = http_json(srv.http, "/container-registry/v1/images")
        assert (status, doc) == (503, {"code": 14, "message": "no index run has completed yet", "details": []})
        build_store(str(store), os.path.join(REAL, "docker-save-base.tar"))
        for _ in range(100):
            try:
                if stub.List(isv.ListImagesRequest(), timeout=10).images:
                    break
            except grpc.RpcError:
                pass
            time.sleep(0.1)
        else:
            raise AssertionError("the first index run was not picked up")
    finally:
        code, _, err = srv.stop()
    assert code == 0, err


# --- auth -----------------------------------------------------------------------------------------


def test_bearer_token(tmp_path, store, sdk, cli_images):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    srv = start_server(store, "--token-file", str(token_file))
    try:
        stub = sdk.client(isv_grpc.ImageServiceStub, endpoint=srv.grpc, insecure=True)
        request = isv.GetImageRequest(image_id=cli_images[0]["id"])
        assert grpc_code(stub.Get, request) == grpc.StatusCode.UNAUTHENTICATED
        assert (
            grpc_code(stub.Get, request, metadata=[("authorization", "Bearer wrong")])
            == grpc.StatusCode.UNAUTHENTICATED
        )
        assert (
            grpc_code(stub.Get, request, metadata=[("authorization", "s3cret-token")])
            == grpc.StatusCode.UNAUTHENTICATED
        )
        assert (
            grpc_code(stub.List, isv.ListImagesRequest(), metadata=[("authorization", "Bearer s3cret-tokenX")])
            == grpc.StatusCode.UNAUTHENTICATED
        )
        answer = stub.Get(request, metadata=[("authorization", "Bearer s3cret-token")], timeout=10)
        assert MessageToDict(answer) == cli_images[0]
        if importlib.util.find_spec("grpc_health") is not None:  # health is optional: the token covers it too
            from grpc_health.v1 import health_pb2, health_pb2_grpc

            with grpc.insecure_channel(srv.grpc) as channel:
                check = health_pb2_grpc.HealthStub(channel).Check
                assert grpc_code(check, health_pb2.HealthCheckRequest()) == grpc.StatusCode.UNAUTHENTICATED
                assert (
                    check(
                        health_pb2.HealthCheckRequest(), metadata=[("authorization", "Bearer s3cret-token")], timeout=10
                    ).status
                    == 1
                )
        path = f"/container-registry/v1/images/{cli_images[0]['id']}"
        status, body, headers = http_get(srv.http, path)
        assert status == 401 and json.loads(body)["code"] == 16 and headers.get("WWW-Authenticate") == "Bearer"
        assert http_get(srv.http, path, {"Authorization": "Bearer wrong"})[0] == 401
        assert http_get(srv.http, path, {"Authorization": "Basic czNjcmV0LXRva2Vu"})[0] == 401
        assert http_json(srv.http, path, {"Authorization": "Bearer s3cret-token"}) == (200, cli_images[0])
    finally:
        code, _, err = srv.stop()
    assert code == 0, err


def _readme_sdk_example_with_token() -> str:
    """The README's Python example of the SDK calling a server that has `--token-file`."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        blocks = re.findall(r"^```python\n(.*?)^```$", f.read(), re.DOTALL | re.MULTILINE)
    [example] = [b for b in blocks if "yandexcloud.SDK()" in b and "authorization" in b]
    return example


def test_the_readme_s_sdk_example_sends_the_token(tmp_path, store):
    """With `insecure=True` the SDK sends no credentials of its own: the README's SDK example
    got UNAUTHENTICATED from a server with a token."""
    (tmp_path / "token").write_text("s3cret-token\n")
    srv = start_server(store, "--token-file", str(tmp_path / "token"))
    try:
        # What the README says does not work: the SDK's own token, over the plain channel.
        own = yandexcloud.SDK(iam_token="s3cret-token").client(
            isv_grpc.ImageServiceStub, endpoint=srv.grpc, insecure=True
        )
        assert grpc_code(own.List, isv.ListImagesRequest(page_size=5)) == grpc.StatusCode.UNAUTHENTICATED
        example = _readme_sdk_example_with_token()
        assert "127.0.0.1:50051" in example
        script = example.replace("127.0.0.1:50051", srv.grpc)
        run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        listed = json.loads(cli("list", "--store", store, "--page-size", "5").stdout)["images"]
        assert [m["id"] for m in listed] == re.findall(r'^  id: "(crp\w+)"$', run.stdout, re.MULTILINE)
    finally:
        code, _, err = srv.stop()
    assert code == 0, err


def test_a_method_that_does_not_exist_needs_the_token_too(tmp_path, store):
    """Without the token it answered UNIMPLEMENTED: which services and methods exist was learned
    without it, one name at a time."""
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    srv = start_server(store, "--token-file", str(token_file))
    methods = ("/yandex.cloud.containerregistry.v1.ImageService/Nope", "/no.such.Service/Get")
    try:
        with grpc.insecure_channel(srv.grpc) as channel:

            def unary(method, **kwargs):
                return channel.unary_unary(method)(b"", **kwargs)

            def streams(method, **kwargs):
                return list(channel.stream_stream(method)(iter([b"", b""]), **kwargs))

            for method in methods:
                for call in (unary, streams):
                    assert grpc_code(call, method) == grpc.StatusCode.UNAUTHENTICATED, (method, call)
                    wrong = grpc_code(call, method, metadata=[("authorization", "Bearer wrong")])
                    assert wrong == grpc.StatusCode.UNAUTHENTICATED, (method, call)
                    with_token = grpc_code(call, method, metadata=[("authorization", "Bearer s3cret-token")])
                    assert with_token == grpc.StatusCode.UNIMPLEMENTED, (method, call)
    finally:
        code, _, err = srv.stop()
    assert code == 0, err


def _serve_exit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "queries.server.app", *args], cwd=ROOT, capture_output=True, text=True, timeout=30
    )


def test_non_loopback_needs_a_token_or_an_explicit_opt_out(store, tmp_path):
    # Refused before anything is bound: no test listens beyond loopback.
    result = _serve_exit("--store", store, "--grpc", "0.0.0.0:0", "--http", "off")
    assert result.returncode == 2 and "not a loopback address" in result.stderr
    result = _serve_exit("--store", store, "--grpc", "off", "--http", "192.0.2.1:0")
    assert result.returncode == 2 and "--insecure-no-auth" in result.stderr
    token = tmp_path / "t"
    token.write_text("x")
    result = _serve_exit("--store", store, "--token-file", str(token), "--insecure-no-auth")
    assert result.returncode == 2
    result = _serve_exit("--store", store, "--grpc", "off", "--http", "off")
    assert result.returncode == 2 and "nothing to serve" in result.stderr
    result = _serve_exit("--store", store, "--grpc", "nonsense")
    assert result.returncode == 2
    empty = tmp_path / "empty-token"
    empty.write_text("  \n")
    assert _serve_exit("--store", store, "--token-file", str(empty)).returncode == 2


def test_a_token_that_is_not_visible_ascii_is_a_usage_error(tmp_path):
    """Such a token was taken, and then no request matched it: every call refused, nothing said."""
    token = tmp_path / "token"
    token.write_bytes("caf\u00e9\n".encode())
    # No store there: taken, the token would have the server stop at once all the same.
    result = _serve_exit("--store", str(tmp_path / "nowhere"), "--token-file", str(token))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"{token}: the token holds a byte that is not visible ASCII (0x21-0x7E)" in result.stderr


def test_missing_store_and_taken_ports_fail_with_one_line(store, tmp_path):
    result = _serve_exit("--store", str(tmp_path / "nowhere"), "--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0")
    assert result.returncode == 1 and result.stderr.startswith("imgdex: no image store at")
    srv = start_server(store)
    try:
        for args, taken in (
            (["--grpc", srv.grpc, "--http", "off"], f"{srv.grpc} for gRPC"),
            (["--grpc", "off", "--http", srv.http], f"{srv.http} for REST"),
        ):
            result = _serve_exit("--store", store, *args)
            assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
            [line] = result.stderr.splitlines()
            assert line.startswith(f"imgdex: cannot listen on {taken}"), line  # which address, and why
    finally:
        srv.stop()


def test_a_store_of_a_newer_schema_version_is_refused_in_one_line(store, tmp_path):
    """As by every other command: served, it answered `no completed index run yet` for ever."""
    import shutil

    from deltalake import DeltaTable

    from indexer.store import deltalog

    newer = str(tmp_path / "newer")
    shutil.copytree(store, newer)
    DeltaTable(os.path.join(newer, "images")).alter.set_table_properties(
        {deltalog.SCHEMA_VERSION_PROPERTY: str(deltalog.SCHEMA_VERSION + 1)}, raise_if_not_exists=False
    )
    result = _serve_exit("--store", newer, "--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0")
    assert result.returncode == 1, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("imgdex: table images has store schema version") and "newer imgdex" in line, line


# Protocols a later writer could give the images table, which this reader refuses whatever comes after.
REFUSED_PROTOCOLS = {
    "deletion vectors": {
        "minReaderVersion": 3,
        "minWriterVersion": 7,
        "readerFeatures": ["deletionVectors"],
        "writerFeatures": ["deletionVectors"],
    },
    "Delta reader version 4": {"minReaderVersion": 4, "minWriterVersion": 7, "writerFeatures": []},
}


def give_protocol(store: str, protocol: dict) -> None:
    """Commit `protocol` to the images table of `store`, as the next version of its log."""
    log = os.path.join(store, "images", "_delta_log")
    version = max(int(name[:20]) for name in os.listdir(log) if name.endswith(".json")) + 1
    actions = [{"commitInfo": {"timestamp": int(time.time() * 1000), "operation": "SET TBLPROPERTIES"}}]
    with open(os.path.join(log, f"{version:020d}.json"), "w") as f:
        f.write("\n".join(json.dumps(a) for a in [*actions, {"protocol": protocol}]) + "\n")


@pytest.mark.parametrize("reason", sorted(REFUSED_PROTOCOLS))
def test_a_store_this_reader_refuses_for_good_is_refused_in_one_line(store, tmp_path, reason):
    """As `get` and `list` refuse it: served, it answered `no completed index run yet` for ever."""
    import shutil

    refused = str(tmp_path / "refused")
    shutil.copytree(store, refused)
    give_protocol(refused, REFUSED_PROTOCOLS[reason])
    listed = cli("list", "--store", refused, check=False)
    assert listed.returncode == 1 and reason in listed.stderr, listed.stderr
    result = _serve_exit("--store", refused, "--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0")
    assert result.returncode == 1, result.stderr
    [line] = result.stderr.splitlines()
    assert line == listed.stderr.strip() and line.startswith("imgdex: table images "), line


def test_one_protocol_off(store, cli_images):
    srv = start_server(store, "--grpc", "off")
    try:
        assert srv.grpc is None and srv.http
        assert http_json(srv.http, f"/container-registry/v1/images/{cli_images[0]['id']}") == (200, cli_images[0])
    finally:
        code, _, _ = srv.stop()
    assert code == 0


# --- lifecycle ------------------------------------------------------------------------------------


def test_sigterm_with_idle_keepalive_connection_exits_promptly(store):
    import http.client

    srv = start_server(store)
    host, _, port = srv.http.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", "/container-registry/v1/images?pageSize=1")
    assert conn.getresponse().read()
    channel = grpc.insecure_channel(srv.grpc)
    isv_grpc.ImageServiceStub(channel).List(isv.ListImagesRequest(page_size=1), timeout=10)
    code, seconds, err = srv.stop()
    channel.close()
    conn.close()
    assert code == 0 and seconds < 5, err
    assert "imgdex: stopped" in err


def test_sigterm_taken_by_any_thread_stops_the_server(store):
    """The kernel gives a signal sent to a process to any of its threads that does not block it:
    one that a gRPC or REST thread took was heard only when the main thread's hour-long wait ended."""
    import ctypes

    tgkill = getattr(ctypes.CDLL(None, use_errno=True), "tgkill", None)
    if not os.path.isdir("/proc/self/task") or tgkill is None:
        pytest.skip("needs Linux's tgkill")
    srv = start_server(store)
    pid = srv.proc.pid

    def takes_sigterm(tid: int) -> bool:
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            blocked = next(line for line in f if line.startswith("SigBlk:")).split()[1]
        return not int(blocked, 16) & (1 << (signal.SIGTERM - 1))

    others = [tid for tid in map(int, os.listdir(f"/proc/{pid}/task")) if tid != pid and takes_sigterm(tid)]
    assert tgkill(pid, others[-1], signal.SIGTERM) == 0, ctypes.get_errno()
    try:
        _, err = srv.proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        srv.proc.kill()
        srv.proc.communicate()
        raise AssertionError("SIGTERM on another thread than the main one left the server running") from None
    assert srv.proc.returncode == 0 and err.splitlines() == ["imgdex: stopped"], err


def test_started_with_sigint_ignored_it_keeps_ignoring_it(store, cli_images):
    """nohup, or `imgdex serve &` in a script, starts the server with SIGINT ignored: the Ctrl-C
    meant for the shell in front stopped it. SIGTERM still does."""
    srv = start_server(store, sigint_ignored=True)
    try:
        if os.path.exists(f"/proc/{srv.proc.pid}/status"):
            with open(f"/proc/{srv.proc.pid}/status") as f:
                ignored = next(line for line in f if line.startswith("SigIgn:")).split()[1]
            assert int(ignored, 16) & (1 << (signal.SIGINT - 1)), "SIGINT is handled, not ignored"
        srv.proc.send_signal(signal.SIGINT)
        path = f"/container-registry/v1/images/{cli_images[0]['id']}"
        assert http_json(srv.http, path) == (200, cli_images[0])
        with grpc.insecure_channel(srv.grpc) as channel:
            answer = isv_grpc.ImageServiceStub(channel).Get(
                isv.GetImageRequest(image_id=cli_images[0]["id"]), timeout=10
            )
        assert MessageToDict(answer) == cli_images[0]
        assert srv.proc.poll() is None
    finally:
        code, _, err = srv.stop()
    assert code == 0 and err.splitlines() == ["imgdex: stopped"], err


def test_in_flight_requests_finish_on_shutdown(store, cli_images):
    """In-process: a request that is running when shutdown starts still gets its answer."""
    import threading

    from queries.server.app import Service

    service = Service(store, ("127.0.0.1", 0), ("127.0.0.1", 0), workers=4)
    started = threading.Event()
    original = service.api.get_image

    def slow_get(request):
        started.set()
        time.sleep(1.0)
        return original(request)

    service.api.get_image = slow_get
    service.start()
    results = {}

    def call_grpc():
        with grpc.insecure_channel(service.grpc_address) as channel:
            stub = isv_grpc.ImageServiceStub(channel)
            results["grpc"] = MessageToDict(stub.Get(isv.GetImageRequest(image_id=cli_images[0]["id"]), timeout=10))

    def call_rest():
        results["rest"] = http_json(service.http_address, f"/container-registry/v1/images/{cli_images[0]['id']}")

    threads = [threading.Thread(target=call_grpc), threading.Thread(target=call_rest)]
    for t in threads:
        t.start()
    assert started.wait(10)
    time.sleep(0.2)  # both calls are inside the slow method now
    t0 = time.monotonic()
    service.stop(grace=4.5)
    for t in threads:
        t.join(10)
    assert time.monotonic() - t0 < 5
    assert results == {"grpc": cli_images[0], "rest": (200, cli_images[0])}


def test_serve_is_a_click_command_for_the_cli_group():
    import click
    from click.testing import CliRunner

    from queries.server.app import serve

    @click.group()
    def group():
        pass

    group.add_command(serve)
    result = CliRunner().invoke(group, ["serve", "--help"])
    assert result.exit_code == 0
    for option in ("--store", "--grpc", "--http", "--token-file", "--insecure-no-auth", "--workers"):
        assert option in result.output


def test_cli_module_does_not_pay_for_grpc_at_import():
    code = (
        "import sys, queries.server.app; "
        "print(sorted(m for m in ('grpc', 'duckdb', 'yandexcloud', 'google.protobuf') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


# --- REST framing and limits ----------------------------------------------------------------------

SMUGGLED = b"GET /container-registry/v1/SMUGGLED HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def exchange(address: str, data: bytes, timeout: float = 5.0) -> tuple[bytes, bool]:
    """Sends `data` on a new connection; (all read, whether the server closed before `timeout`)."""
    import socket

    host, _, port = address.rpartition(":")
    out = b""
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        deadline = time.monotonic() + timeout
        try:
            sock.sendall(data)
            while time.monotonic() < deadline:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = sock.recv(65536)
                if not chunk:
                    return out, True
                out += chunk
        except ConnectionError:
            return out, True
        except TimeoutError:
            pass
    return out, False


def responses(out: bytes) -> list[tuple[int, dict, bytes]]:
    """(status, headers, body) of each response in `out`, as framed by Content-Length."""
    found = []
    while out:
        head, sep, rest = out.partition(b"\r\n\r\n")
        assert sep and head.startswith(b"HTTP/1.1 "), out[:200]
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", 0))
        found.append((int(lines[0].split()[1]), headers, rest[:length]))
        out = rest[length:]
    return found


def _get(path: str = "/container-registry/v1/images?pageSize=1", headers: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode()


@pytest.mark.parametrize(
    "request_,status",
    [
        (_get(headers="Content-Length: abc\r\n"), 400),
        (_get(headers="Content-Length: 1e3\r\n"), 400),
        (_get(headers="Content-Length: -1\r\n"), 400),  # read to the end of the stream before
        (_get(headers="Content-Length: 0\r\nContent-Length: 0\r\n"), 400),
        (_get(headers=f"Content-Length: 0\r\nContent-Length: {len(SMUGGLED)}\r\n") + SMUGGLED, 400),
        (_get(headers="Content-Length : 5\r\n") + b"hello", 400),
        (_get(headers="X: a\r\n folded\r\n"), 400),
        (_get(headers="X: a\rContent-Length: 5\r\n") + b"hello", 400),
        (
            _get(headers="Content-Length: 4\r\nTransfer-Encoding: chunked\r\n") + b"%x\r\n" % len(SMUGGLED) + SMUGGLED,
            501,
        ),
        (_get(headers="Transfer-Encoding: chunked\r\n") + b"5\r\nhello\r\n0\r\n\r\n" + SMUGGLED, 501),
        (_get(headers=f"Content-Length: {(1 << 20) + 1}\r\n"), 413),
        (_get(headers=f"Content-Length: {'9' * 5000}\r\n"), 413),
    ],
)
def test_rest_refuses_bodies_it_cannot_frame_and_closes(server, request_, status):
    out, closed = exchange(server.http, request_)
    (answer,) = responses(out)
    code = 12 if status == 501 else 3
    assert answer[0] == status and answer[1]["connection"] == "close" and closed, out[:300]
    assert answer[1]["content-type"] == "application/json"
    doc = json.loads(answer[2])
    assert doc["code"] == code and doc["details"] == [] and doc["message"], doc


@pytest.mark.parametrize(
    "headers,status",
    [
        (f"Content-Length: {(1 << 20) + 1}\r\n", 413),
        ("Transfer-Encoding: chunked\r\n", 501),
        ("Content-Length: 5\r\n", 100),
    ],
)
def test_rest_answers_expect_100_with_the_refusal_when_the_body_would_be_refused(server, headers, status):
    """It said `100 Continue`, asking for a body that was then thrown away unread."""
    out, _ = exchange(server.http, _get(headers="Expect: 100-continue\r\n" + headers))
    assert out.split(b"\r\n", 1)[0].split()[1] == str(status).encode(), out[:300]
    if status != 100:
        (answer,) = responses(out)
        assert answer[0] == status and answer[1]["connection"] == "close"


def test_rest_small_bodies_are_still_read_and_ignored(server):
    pipelined = _get(headers="Content-Length: 5\r\n") + b"hello" + _get(headers="Connection: close\r\n")
    out, closed = exchange(server.http, pipelined)
    assert [status for status, _, _ in responses(out)] == [200, 200] and closed


@pytest.mark.parametrize(
    "request_,status,code",
    [
        (b"HEAD /container-registry/v1/images HTTP/1.1\r\nHost: x\r\n\r\n", 501, 12),
        (b"OPTIONS /container-registry/v1/images HTTP/1.1\r\nHost: x\r\n\r\n", 501, 12),
        (_get("/container-registry/v1/images?pageToken=" + "A" * 70_000), 414, 3),
        (_get(headers="X: " + "a" * 70_000 + "\r\n"), 431, 3),
        (_get(headers="".join(f"X{i}: a\r\n" for i in range(101))), 431, 3),
        (_get(headers="".join(f"X{i}: {'a' * 1000}\r\n" for i in range(70))), 431, 3),  # 70 KB in all
        (b"GET /container-registry/v1/images HTTP/2.0\r\n\r\n", 505, 12),
        (b"GET /container-registry/v1/images HTTP/0.9\r\n\r\n", 505, 12),
        (b"GET /container-registry/v1/images HTTP/1.1\r\n\r\n", 400, 3),  # no Host
        (_get(headers="Host: y\r\n"), 400, 3),
        (b"GET /container-registry/v1/images HTTP/1.1\r\nHost: a b\r\n\r\n", 400, 3),
        (_get(headers="X: a\0b\r\n"), 400, 3),
        (b"GET /container-registry/v1/images HTTP/1.2\r\nHost: x\r\n\r\n", 505, 12),
        (b"GET /container-registry/v1/images HTTP/1.0000000001\r\nHost: x\r\n\r\n", 505, 12),
        (b"GARBAGE\r\n\r\n", 400, 3),
        (b"GET /container-registry/v1/images\r\n\r\n", 400, 3),  # HTTP/0.9: no status line in the answer
    ],
)
def test_rest_http_layer_errors_are_status_json(server, request_, status, code):
    out, closed = exchange(server.http, request_)
    (answer,) = responses(out)
    assert answer[0] == status and answer[1]["content-type"] == "application/json" and closed, out[:300]
    if request_.startswith(b"HEAD"):
        assert answer[2] == b""  # a HEAD response has no body, only its length
    else:
        doc = json.loads(answer[2])
        assert doc["code"] == code and doc["details"] == [] and doc["message"], doc


def test_rest_takes_99_header_lines_and_refuses_100_in_its_words(server):
    # Host and Connection are two of them
    fill = "".join(f"X{i}: a\r\n" for i in range(97))
    [(status, headers, _)] = responses(exchange(server.http, _get(headers=fill + "Connection: close\r\n"))[0])
    assert status == 200
    assert headers["server"] == "imgdex"  # no trailing space where a Python version would go
    [(status, _, body)] = responses(exchange(server.http, _get(headers=fill + "X: a\r\nConnection: close\r\n"))[0])
    assert (status, json.loads(body)["message"]) == (431, "100 header lines or more")


@pytest.mark.parametrize(
    "target",
    [
        b"/container-registry/v1/images/%FF",
        b"/container-registry/v1/images/crp%C3",
        b"/container-registry/v1/images?filter=%FF",
        b"/container-registry/v1/images?%FF=1",
        b"/container-registry/v1/images/caf\xe9",  # Latin-1 sent raw
    ],
)
def test_rest_a_target_that_is_not_utf8_is_invalid(server, target):
    # A proto3 string holds UTF-8 only; a replacement character would look up another id than the one sent.
    out, closed = exchange(server.http, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    [(status, _, body)] = responses(out)
    doc = json.loads(body)
    assert (status, doc["code"]) == (400, 3), doc
    assert "not UTF-8" in doc["message"] and "\ufffd" not in doc["message"]


def test_rest_an_absolute_target_whose_authority_is_no_host_is_invalid(server):
    target = b"http://[::1/container-registry/v1/images"  # a bracket left open
    out, _ = exchange(server.http, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    [(status, _, body)] = responses(out)
    doc = json.loads(body)
    assert (status, doc["code"]) == (400, 3), doc
    assert "invalid request target" in doc["message"]


def test_rest_a_close_among_connection_options_closes_and_a_leading_empty_line_is_ignored(server):
    """RFC 9112 9.6: `close` among other options still closes. RFC 9112 2.2: an empty line before a
    request line is skipped, and the request after it answered."""
    out, closed = exchange(server.http, _get(headers="Connection: keep-alive, close\r\n"))
    [(status, headers, _)] = responses(out)
    assert status == 200 and headers["connection"] == "close" and closed
    out, closed = exchange(server.http, b"\r\n" + _get(headers="Connection: close\r\n"))
    assert [status for status, _, _ in responses(out)] == [200] and closed
    body = b"hello"
    pipelined = (
        _get(headers=f"Content-Length: {len(body)}\r\n") + body + b"\r\n" + _get(headers="Connection: close\r\n")
    )
    out, closed = exchange(server.http, pipelined)
    assert [status for status, _, _ in responses(out)] == [200, 200] and closed


@pytest.mark.parametrize(
    "query",
    [
        "pageSize=1_0",
        "pageSize=%D9%A3",
        "pageSize=1e3",
        "pageSize=%2B5",
        "pageSize=",
        "filter=" + urllib.parse.quote('name IN ("a",,)'),
    ],
)
def test_rest_integers_are_ascii_decimal_and_lists_have_no_empty_items(server, query):
    status, doc = http_json(server.http, f"/container-registry/v1/images?{query}")
    assert (status, doc["code"]) == (400, 3), doc


def test_rest_hang_ups_leave_no_traceback(store):
    import socket
    import struct

    srv = start_server(store)
    try:
        host, _, port = srv.http.rpartition(":")
        for _ in range(20):
            with socket.create_connection((host, int(port))) as sock:  # gone mid-headers
                sock.sendall(b"GET /container-registry/v1/images HTTP/1.1\r\nHost: x\r\n")
            with socket.create_connection((host, int(port))) as sock:  # gone before its answer, with a reset
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.sendall(_get("/container-registry/v1/images?pageSize=100"))
        assert http_get(srv.http, "/container-registry/v1/images?pageSize=1")[0] == 200
    finally:
        code, _, err = srv.stop()
    assert code == 0 and "Traceback" not in err and "Error" not in err, err


@pytest.fixture
def limited_rest(store):
    """An in-process REST server with a short request timeout and a cap of two connections."""
    from queries.server.api import Api
    from queries.server.rest_api import RestServer
    from queries.server.snapshots import SnapshotSource

    source = SnapshotSource(store)
    rest = RestServer(Api(source), "127.0.0.1", 0, 2, None, max_connections=2, request_timeout=0.6)
    source.start()
    rest.start()
    yield f"127.0.0.1:{rest.port}"
    rest.stop(0)
    source.stop()


def test_rest_idle_and_trickling_connections_time_out(limited_rest):
    import socket

    t0 = time.monotonic()
    assert exchange(limited_rest, b"", timeout=5) == (b"", True)  # idle: let go
    assert time.monotonic() - t0 < 3
    with socket.create_connection(("127.0.0.1", int(limited_rest.rpartition(":")[2])), timeout=5) as sock:
        t0 = time.monotonic()
        closed = False
        for byte in _get(headers="X: " + "a" * 200 + "\r\n"):  # a byte every 20 ms: 4 s for all of it
            try:
                sock.sendall(bytes([byte]))
            except ConnectionError:
                closed = True
                break
            time.sleep(0.02)
        assert closed or sock.recv(100) == b""
        assert time.monotonic() - t0 < 3  # the deadline is the request's, not each read's
    # A keep-alive client that asks in time is served, again and again, past the timeout.
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", int(limited_rest.rpartition(":")[2]), timeout=5)
    for _ in range(3):
        conn.request("GET", "/container-registry/v1/images?pageSize=1")
        assert conn.getresponse().read() and conn.sock is not None
        time.sleep(0.3)
    conn.close()


def test_rest_connections_beyond_the_cap_are_refused_at_once(limited_rest):
    import socket

    host, _, port = limited_rest.rpartition(":")
    held = [socket.create_connection((host, int(port)), timeout=5) for _ in range(2)]
    try:
        time.sleep(0.1)
        t0 = time.monotonic()
        out, closed = exchange(limited_rest, b"", timeout=5)
        (answer,) = responses(out)
        assert answer[0] == 503 and closed and time.monotonic() - t0 < 0.5
        assert json.loads(answer[2])["code"] == 14
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.2)
    assert http_get(limited_rest, "/container-registry/v1/images?pageSize=1")[0] == 200


def test_idle_grpc_connections_cannot_use_up_the_descriptors(store):
    """Connections that only sent the HTTP/2 preface had no cap: 10,000 of them took every
    descriptor of the process, and REST hung and new index runs were not loaded."""
    server = start_server(store, open_files=256)  # gRPC may hold 64 connections, REST 128
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    held = []
    try:
        host, port = server.grpc.rsplit(":", 1)
        for _ in range(400):
            sock = socket.create_connection((host, int(port)), timeout=5)
            sock.sendall(preface)
            held.append(sock)
        time.sleep(1)
        in_use = len(os.listdir(f"/proc/{server.proc.pid}/fd"))
        assert in_use < 64 + 40, in_use  # the cap, and the server's own files
        status, doc = http_json(server.http, "/container-registry/v1/images?pageSize=1")
        assert status == 200 and doc["images"]
    finally:
        for sock in held:
            sock.close()
        code, _, err = server.stop()
    assert code == 0 and "descriptor" not in err, err


def test_a_client_cannot_make_the_server_write_on_stderr(store):
    """gRPC's own logging wrote a line per call whose metadata was over the limit: a client could
    fill the server's log."""
    server = start_server(store)
    try:
        with grpc.insecure_channel(server.grpc) as channel:
            stub = isv_grpc.ImageServiceStub(channel)
            for _ in range(5):
                with pytest.raises(grpc.RpcError) as info:
                    stub.Get(
                        isv.GetImageRequest(image_id="x"), metadata=[(f"x-{i}", "a") for i in range(2000)], timeout=5
                    )
                assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        code, _, err = server.stop()
    assert code == 0 and err.splitlines() == ["imgdex: stopped"], err


def test_open_reflection_streams_leave_workers_for_calls(store):
    """grpcui keeps its reflection stream open; `--workers` such streams held every call for up
    to 90 s. At most half the workers may serve reflection streams at once."""
    import queue

    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    server = start_server(store, "--workers", "4")
    pending, streams = [], []
    try:
        with grpc.insecure_channel(server.grpc) as channel:
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            for _ in range(3):
                held = queue.Queue()

                def requests(held=held):
                    yield reflection_pb2.ServerReflectionRequest(list_services="")
                    while (item := held.get()) is not None:
                        yield item

                pending.append(held)
                streams.append(reflection.ServerReflectionInfo(requests(), timeout=30))
            answered = []
            for stream in streams:
                try:
                    answered.append(len(next(stream).list_services_response.service) > 0)
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
                    answered.append(False)
            # Two held open, the third refused at once: which one is the server's order of the
            # streams, which need not be the order they were opened in.
            assert sorted(answered) == [False, True, True]
            stub = isv_grpc.ImageServiceStub(channel)
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as info:
                stub.Get(isv.GetImageRequest(image_id="crp00000000000000000"), timeout=5)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND and time.monotonic() - started < 2
    finally:
        for held in pending:
            held.put(None)
        for stream in streams:
            stream.cancel()
        server.stop()


@pytest.mark.parametrize("token", [False, True])
def test_a_request_that_is_not_its_message_is_invalid_argument(store, tmp_path, token):
    """grpcio answered INTERNAL ('Exception deserializing request!'), which reads as the server's
    fault; REST answers the same id (`/images/crp%ff`) 400. Without the token, the call is refused
    for that first."""
    args = []
    if token:
        (tmp_path / "t").write_text("s3cret")
        args = ["--token-file", str(tmp_path / "t")]
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    server = start_server(store, *args)
    try:
        with grpc.insecure_channel(server.grpc) as channel:
            raw = channel.unary_unary("/yandex.cloud.containerregistry.v1.ImageService/Get")
            for body in (b"\x0a\x02\xff\xfe", b"\xff\xff\xff"):  # not UTF-8; not protobuf at all
                with pytest.raises(grpc.RpcError) as info:
                    raw(body, timeout=5)
                wanted = grpc.StatusCode.UNAUTHENTICATED if token else grpc.StatusCode.INVALID_ARGUMENT
                assert info.value.code() == wanted, info.value.details()
                if not token:
                    assert info.value.details().startswith("the request is not a valid message: ")
            metadata = [("authorization", "Bearer s3cret")] if token else []
            stub = isv_grpc.ImageServiceStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                stub.Get(isv.GetImageRequest(image_id="crp00000000000000000"), metadata=metadata, timeout=5)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND  # a valid request, still answered
            health = health_pb2_grpc.HealthStub(channel)
            watch = health.Watch(health_pb2.HealthCheckRequest(service=""), metadata=metadata, timeout=5)
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING  # a streamed answer too
            watch.cancel()
    finally:
        server.stop()


@pytest.mark.parametrize("token", [None, b"s3cret"])
def test_an_undecodable_message_in_a_request_stream_is_invalid_argument(tmp_path, token):
    """Reflection reads a stream of requests: a message in it that is not a request was grpcio's
    INTERNAL, as a unary call's was. Without the token, the call is refused for that first."""
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    from queries.server.app import Service

    (tmp_path / "store").mkdir()
    service = Service(str(tmp_path / "store"), ("127.0.0.1", 0), None, token, workers=2)
    service.start()
    metadata = [("authorization", "Bearer s3cret")] if token else []
    list_services = reflection_pb2.ServerReflectionRequest(list_services="")
    try:
        with grpc.insecure_channel(service.grpc_address) as channel:
            raw = channel.stream_stream(
                "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", request_serializer=lambda b: b
            )
            for bodies in ([b"\xff\xff\xff"], [list_services.SerializeToString(), b"\x0a\x02\xff\xfe"]):
                if token:
                    with pytest.raises(grpc.RpcError) as info:
                        list(raw(iter(bodies), timeout=10))
                    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
                with pytest.raises(grpc.RpcError) as info:
                    list(raw(iter(bodies), metadata=metadata, timeout=10))
                assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
                assert info.value.details().startswith("the request is not a valid message: ")
            # Each of those streams gave its slot back (one, with two workers).
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            [answer] = stub.ServerReflectionInfo(iter([list_services]), metadata=metadata, timeout=10)
            assert answer.list_services_response.service
    finally:
        service.stop(grace=1)
