"""docker-daemon: one image's answer that never arrives whole fails that image only.

An inspect or history cut short, one that times out, or a connection dropped instead of answering
is about that image while the engine answers everything else: the run names the image in one line,
the engine's other images land, and the exit code is 1. An engine that is gone, or answers no image
request at all, still fails the source in one line.

The fake engine is served here over the Docker API on a unix socket, so the real client meets the
faults as it would meet them from an engine.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import tempfile
import threading
import time
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from indexer.model import Platform
from indexer.sources import daemon
from indexer.sources.daemon import EngineApiClient

from fake_engine import EngineRefused, FakeEngine, NoSuchImage, UnixHttpServer, classic_image, containerd_image

TIMEOUT = 1.0  # seconds for each request of the client under test


class _Served:
    """`fake` behind the engine's HTTP API on a unix socket. `faults` maps (image ID, "json" or
    "history", architecture or None) to how that request is answered: "cut" (half the body, then
    the connection closes), "hang" (nothing, until the client gives up), "drop" (the connection
    closes unanswered), "die" (the engine goes away once `die_after` has happened)."""

    def __init__(self, fake: FakeEngine, faults: dict | None = None):
        self.fake = fake
        self.faults = faults or {}
        self.stopped = threading.Event()
        self.dead = False
        self.asked: list[str] = []
        self.die_after = lambda: True
        served = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                if served.dead:
                    self.close_connection = True
                    return
                served.asked.append(self.path)
                fault, status, body = served.answer(self.path)
                if fault == "die":
                    served.die()
                    self.close_connection = True
                    return
                if fault == "drop":
                    self.close_connection = True
                    return
                if fault == "hang":
                    served.stopped.wait(30)
                    self.close_connection = True
                    return
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                if fault.startswith("chunk"):  # "chunk-5": a chunked answer whose first size is -5
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    self.wfile.write(fault.removeprefix("chunk").encode() + b"\r\n" + body + b"\r\n0\r\n\r\n")
                    return
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if fault == "cut":
                    self.wfile.write(body[: len(body) // 2])
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.folder = tempfile.mkdtemp(prefix="imgdex-per-image.", dir="/tmp")
        self.path = os.path.join(self.folder, "d.sock")
        self.server = UnixHttpServer(self.path, Handler)
        self.address = f"unix://{self.path}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, target: str) -> tuple[str, int, bytes]:
        """(fault or "", status, body) for GET `target`, from the fake engine."""
        parts = urlsplit(target)
        query = {key: values[0] for key, values in parse_qs(parts.query).items()}
        path = parts.path
        if path == "/version":
            return "", 200, json.dumps({"ApiVersion": self.fake.api_version}).encode()
        path = path.removeprefix(f"/v{self.fake.api_version}")
        platform = None
        if "platform" in query:
            doc = json.loads(query["platform"])
            platform = Platform(doc["os"], doc["architecture"], doc.get("variant", ""))
        try:
            if path == "/info":
                doc = self.fake.info()
            elif path == "/images/json":
                doc = self.fake.list_images(all=query.get("all") == "1", manifests=query.get("manifests") == "1")
                return self.faults.get(("", "listing", None), ""), 200, json.dumps(doc).encode()
            else:
                ref, _, what = unquote(path.removeprefix("/images/")).rpartition("/")
                fault = self.faults.get((ref, what, platform.architecture if platform else None), "")
                if what == "json":
                    doc = self.fake.inspect_image(ref, platform=platform, manifests=query.get("manifests") == "1")
                else:
                    doc = self.fake.image_history(ref, platform=platform)
                return fault, 200, json.dumps(doc).encode()
        except NoSuchImage as exc:
            return "", 404, json.dumps({"message": str(exc)}).encode()
        except EngineRefused as exc:
            return "", 500, json.dumps({"message": str(exc)}).encode()
        return "", 200, json.dumps(doc).encode()

    def die(self) -> None:
        deadline = time.monotonic() + 10
        while not self.die_after() and time.monotonic() < deadline:
            time.sleep(0.01)
        self.dead = True
        os.unlink(self.path)  # a new connection finds no engine, as when dockerd has exited

    def close(self) -> None:
        self.stopped.set()
        self.server.shutdown()
        self.server.server_close()
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture
def serve(monkeypatch):
    def connect(address, environ=None):
        return EngineApiClient(address, timeout=TIMEOUT, environ=environ)

    monkeypatch.setattr(daemon, "connect_engine", connect)
    servers = []

    def start(fake: FakeEngine, faults: dict | None = None) -> _Served:
        servers.append(_Served(fake, faults))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _engine(*seeds: str, **kwargs) -> FakeEngine:
    fake = FakeEngine(**kwargs)
    for seed in seeds:
        fake.add(classic_image(seed, tags=[f"{seed}/app:1"]))
    return fake


def _id(fake: FakeEngine, seed: str) -> str:
    return next(i["inspect"]["Id"] for i in fake.images if i["inspect"]["RepoTags"] == [f"{seed}/app:1"])


def _index(run_cli, served: _Served, store) -> tuple[int, list[str], str]:
    result = run_cli("index", "docker-daemon:", "--docker-host", served.address, "--store", store)
    assert "Traceback" not in result.output
    return result.exit_code, result.stderr.strip().splitlines(), result.stdout


def _names(run_cli, store) -> list[str]:
    result = run_cli("list", "--store", store, "--page-size", "1000")
    return sorted(image["name"] for image in json.loads(result.stdout)["images"])


# ----------------------------------------------------------------------------- one image's answer lost


@pytest.mark.parametrize(
    "what, fault, reason",
    [
        ("json", "cut", "the answer was cut short"),
        ("history", "cut", "the answer was cut short"),
        ("json", "hang", f"no complete answer in {TIMEOUT:g} s"),
        ("history", "hang", f"no complete answer in {TIMEOUT:g} s"),
        ("json", "drop", "the connection was closed without an answer"),
        # int(size, 16) takes a sign: -5 raised a bare ValueError, -1 read on to the deadline
        ("json", "chunk-5", "the answer was cut short"),
        ("history", "chunk-1", "the answer was cut short"),
    ],
)
def test_one_image_answer_lost_fails_that_image_only(serve, run_cli, tmp_path, what, fault, reason):
    fake = _engine("one", "bad", "two", "three")
    bad = _id(fake, "bad")
    served = serve(fake, {(bad, what, None): fault})
    code, errors, out = _index(run_cli, served, tmp_path / "s")
    assert code == 1, out
    assert out.startswith("indexed 3 images, 1 failed")
    assert len(errors) == 1 and bad in errors[0] and errors[0].endswith(reason)
    assert "stopped answering" not in errors[0]  # the engine did not: it answered the other images
    assert _names(run_cli, tmp_path / "s") == ["one/app", "three/app", "two/app"]


def test_a_platform_inspect_answered_for_another_image_fails_that_platform(serve, run_cli, tmp_path):
    """Only the image's own inspect was checked against the listed Id: an engine answering one
    platform of an image with another image's landed that image's layers under this one."""
    fake = FakeEngine(api_version="1.49", containerd=True)
    platforms = (("linux", "amd64", ""), ("linux", "arm64", "v8"))
    one = fake.add(containerd_image("one", tags=["one/app:1"], platforms=platforms))
    two = fake.add(containerd_image("two", tags=["two/app:1"], platforms=platforms))
    arm = Platform("linux", "arm64", "v8")
    one["per_platform"][arm] = two["per_platform"][arm]
    served = serve(fake)
    code, errors, out = _index(run_cli, served, tmp_path / "s")
    assert code == 1, out
    [error] = errors
    assert error.startswith(f"imgdex: docker-daemon (image {one['inspect']['Id']}) manifest "), error  # named once
    assert two["per_platform"][arm][0] in error, error
    sql = "SELECT name, platform_architecture AS arch FROM images WHERE kind = 'image'"
    got = run_cli("sql", "--store", tmp_path / "s", "--format", "json", sql)
    rows = sorted((row["name"], row["arch"]) for row in map(json.loads, got.stdout.splitlines()))
    assert rows == [("one/app", "amd64"), ("two/app", "amd64"), ("two/app", "arm64")]


def test_a_listing_with_a_negative_chunk_size_is_one_line(serve, run_cli, tmp_path):
    served = serve(_engine("one", "two"), {("", "listing", None): "chunk-5"})
    code, errors, _ = _index(run_cli, served, tmp_path / "s")
    assert code == 1
    assert errors == [
        f"imgdex: docker-daemon: the Docker engine at {served.address} stopped answering (listing images): "
        "the answer was cut short"
    ]


def test_one_platform_answer_lost_fails_that_platform_only(serve, run_cli, tmp_path):
    fake = FakeEngine(api_version="1.49", containerd=True)
    platforms = (("linux", "amd64", ""), ("linux", "arm64", "v8"))
    multi = fake.add(containerd_image("multi", tags=["multi/app:1"], platforms=platforms))
    fake.add(containerd_image("other", tags=["other/app:1"], platforms=platforms[:1]))
    fake.add(classic_image("plain", tags=["plain/app:1"]))
    image = multi["inspect"]["Id"]
    served = serve(fake, {(image, "json", "arm64"): "cut"})
    code, errors, out = _index(run_cli, served, tmp_path / "s")
    assert code == 1, out
    assert len(errors) == 1 and image in errors[0] and errors[0].endswith("the answer was cut short")
    got = run_cli("sql", "--store", tmp_path / "s", "--format", "json", "SELECT name, kind FROM images ORDER BY 1, 2")
    assert got.exit_code == 0, got.output
    kinds = sorted((row["name"], row["kind"]) for row in map(json.loads, got.stdout.splitlines()))
    # multi's index and its amd64 manifest land; only arm64, whose answer was lost, is missing.
    assert kinds.count(("multi/app", "image")) == 1 and ("multi/app", "index") in kinds
    assert ("other/app", "image") in kinds and ("plain/app", "image") in kinds


# ----------------------------------------------------------------------------- the engine itself


def test_an_engine_gone_after_one_lost_answer_still_fails_the_source_in_one_line(serve, run_cli, tmp_path):
    fake = _engine("one", "bad", "two", "last")
    bad, last = _id(fake, "bad"), _id(fake, "last")
    read = [f"/images/{_id(fake, seed)}/history" for seed in ("one", "two")]
    served = serve(fake, {(bad, "json", None): "cut", (last, "json", None): "die"})
    # The engine goes once the lost answer was judged (a second GET /version) and the others were read.
    served.die_after = lambda: (
        served.asked.count("/version") >= 2
        and all(any(path.endswith(history) for path in list(served.asked)) for history in read)
    )
    code, errors, out = _index(run_cli, served, tmp_path / "s")
    assert code == 1, out
    assert len(errors) == 2, errors
    assert bad in errors[0] and errors[0].endswith("the answer was cut short")
    assert errors[1].startswith(f"imgdex: docker-daemon: the Docker engine at {served.address} stopped answering")
    assert _names(run_cli, tmp_path / "s") == ["one/app", "two/app"]


def test_abort_cuts_the_requests_under_way_and_refuses_new_ones(serve):
    """Once a stuck engine has failed the source, the requests the fetching threads had started
    meanwhile used to wait out a deadline of their own: a second deadline for the run."""
    fake = _engine("stuck")
    stuck = _id(fake, "stuck")
    served = serve(fake, {(stuck, "json", None): "hang"})
    client = EngineApiClient(served.address, timeout=60)
    outcome = []
    asking = threading.Thread(target=lambda: outcome.append(_raised(client.inspect_image, stuck)))
    asking.start()
    deadline = time.monotonic() + 10
    while not any(path.endswith(f"{stuck}/json") for path in served.asked) and time.monotonic() < deadline:
        time.sleep(0.01)
    client.abort()
    asking.join(10)  # far below the request's 60 s deadline
    assert not asking.is_alive()
    assert isinstance(outcome[0], daemon.AnswerLost), outcome
    assert isinstance(_raised(client.inspect_image, stuck), daemon.AnswerLost)  # no new request goes out
    assert sum(path.endswith(f"{stuck}/json") for path in served.asked) == 1
    client.close()


def _raised(call, *args):
    try:
        call(*args)
    except Exception as exc:
        return exc
    return None


def test_an_engine_answering_no_image_request_fails_the_source_after_one_deadline(serve, run_cli, tmp_path):
    fake = _engine("one", "bad", "two", *(f"stuck{i}" for i in range(12)))
    faults = {(_id(fake, "bad"), "json", None): "cut"}
    faults.update({(_id(fake, f"stuck{i}"), "json", None): "hang" for i in range(12)})
    served = serve(fake, faults)
    started = time.monotonic()
    code, errors, out = _index(run_cli, served, tmp_path / "s")
    assert code == 1, out
    assert _id(fake, "bad") in errors[0]
    assert errors[-1].startswith(f"imgdex: docker-daemon: the Docker engine at {served.address} stopped answering")
    assert errors[-1].endswith("image requests in a row got no whole answer)")
    # Four requests in flight lose their answers together: the source fails then, not image by image.
    assert len(errors) <= 1 + daemon.LOST_IN_A_ROW
    assert time.monotonic() - started < 12 * TIMEOUT
    assert _names(run_cli, tmp_path / "s") == ["one/app", "two/app"]
