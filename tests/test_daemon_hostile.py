"""docker-daemon: an engine that answers with what no real one sends fails the image it is about, in one line.

Error bodies nested past the parser's limits, inspects nested past the encoder's, engine addresses
holding credentials, and IDs, digests and layers that are not digests: each is refused (or hidden)
without a traceback, and the other images still land.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import replace

import pytest

from indexer.errors import SourceError
from indexer.model import KIND_IMAGE, KIND_INDEX, ImageRecord, Platform
from indexer.shard import Shard
from indexer.sources import daemon
from indexer.sources.daemon import DockerDaemon, EngineApiClient
from indexer.sources.parse import Context

from registry_server import interim_answer
from fake_engine import (
    EngineUnavailable,
    FakeEngine,
    UnixHttpServer,
    classic_image,
    containerd_image,
    fake_digest,
)

DEEP = b"[" * 200_000
SECRET = "s3cret"


def collect(fake: FakeEngine, ref: str = "", *, location: str = "", shard: Shard | None = None):
    notes = []
    source = DockerDaemon(location=location or fake.address, ref=ref, connect=lambda address: fake, workers=2)
    context = Context(source.kind, source.location, note=notes.append, shard=shard)
    items = list(source.records(context))
    records = [i for i in items if isinstance(i, ImageRecord)]
    errors = [str(i) for i in items if isinstance(i, SourceError)]
    return records, errors, notes


def _engine_of(*images) -> FakeEngine:
    fake = FakeEngine()
    for image in images:
        fake.add(image)
    return fake


class _Answers:
    """An HTTP server on a unix socket giving fixed (status, body[, interim statuses]) answers by
    path, 404 otherwise."""

    def __init__(self, answers: dict[str, tuple[int, bytes]]):
        import http.server

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                status, body, *interim = answers.get(self.path.split("?")[0], (404, b'{"message":"no such path"}'))
                for early in interim[0] if interim else ():  # 1xx answers before the real one
                    self.wfile.write(interim_answer(early))
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.folder = tempfile.mkdtemp(prefix="imgdex-hostile.", dir="/tmp")
        self.server = UnixHttpServer(os.path.join(self.folder, "d.sock"), Handler)
        self.address = f"unix://{self.folder}/d.sock"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        shutil.rmtree(self.folder, ignore_errors=True)


_GOOD = classic_image("good", tags=["good/app:1"])
_BAD = classic_image("bad", tags=["bad/app:1"])


def _answers(**overrides) -> dict[str, tuple[int, bytes]]:
    """An engine (API 1.49, classic store) holding _BAD and _GOOD, with some answers replaced."""
    answers = {
        "/version": {"ApiVersion": "1.49"},
        "/v1.49/info": {"DriverStatus": [["Backing Filesystem", "extfs"]]},
        "/v1.49/images/json": [{"Id": image["inspect"]["Id"]} for image in (_BAD, _GOOD)],
    }
    for image in (_BAD, _GOOD):
        answers[f"/v1.49/images/{image['inspect']['Id']}/json"] = image["inspect"]
        answers[f"/v1.49/images/{image['inspect']['Id']}/history"] = image["history"]
    out = {path: (200, json.dumps(body).encode()) for path, body in answers.items()}
    out.update(overrides)
    return out


# ----------------------------------------------------------------------------- error bodies nested too deeply


def test_a_version_error_nested_too_deeply_is_one_line_with_the_status():
    with _Answers({"/version": (500, DEEP)}) as engine:
        with pytest.raises(EngineUnavailable) as caught:
            EngineApiClient(engine.address)
    assert str(caught.value) == f"cannot reach the Docker engine at {engine.address}: GET /version answered HTTP 500"


def test_a_listing_error_nested_too_deeply_fails_the_source_in_one_line():
    with _Answers(_answers(**{"/v1.49/images/json": (500, DEEP)})) as engine:
        with pytest.raises(SourceError) as caught:
            list(DockerDaemon(location=engine.address).records(Context("docker-daemon", engine.address)))
    assert str(caught.value) == "docker-daemon: listing images: HTTP 500"


def test_an_inspect_error_nested_too_deeply_fails_that_image_only():
    bad = _BAD["inspect"]["Id"]
    with _Answers(_answers(**{f"/v1.49/images/{bad}/json": (500, DEEP)})) as engine:
        source = DockerDaemon(location=engine.address, workers=2)
        items = list(source.records(Context(source.kind, source.location)))
    assert [i.name for i in items if isinstance(i, ImageRecord)] == ["good/app"]
    errors = [str(i) for i in items if isinstance(i, SourceError)]
    assert (
        len(errors) == 1 and errors[0].startswith(f"docker-daemon: image {bad}: ") and errors[0].endswith(": HTTP 500")
    )


# ----------------------------------------------------------------------------- interim answers


@pytest.mark.parametrize("interim", [(103,), (102, 103), (100, 103, 199), (103,) * 5, (103,) * 6, (101,)])
def test_interim_answers_are_read_past_as_go_does_and_no_answer_is_left_for_the_next_request(interim):
    """Taken as the answer, a 103 failed the image and left the real answer on the kept-alive
    connection, for the next request to read as its own."""
    bad = _BAD["inspect"]["Id"]
    status, body = _answers()[f"/v1.49/images/{bad}/json"]
    with _Answers(_answers(**{f"/v1.49/images/{bad}/json": (status, body, interim)})) as engine:
        source = DockerDaemon(location=engine.address, workers=1)
        items = list(source.records(Context(source.kind, source.location)))
    names = sorted(i.name for i in items if isinstance(i, ImageRecord))
    errors = [str(i) for i in items if isinstance(i, SourceError)]
    if len(interim) <= 5 and 101 not in interim:
        assert not errors and names == ["bad/app", "good/app"], errors
        return
    assert names == ["good/app"] and len(errors) == 1, errors
    assert errors[0].startswith(f"docker-daemon: image {bad}: "), errors
    ending = "HTTP 101" if 101 in interim else ": more than 5 interim (1xx) answers"
    assert errors[0].endswith(ending), errors


# ----------------------------------------------------------------------------- inspects nested too deeply


def test_an_inspect_nested_too_deeply_to_encode_fails_that_image_only():
    bad = classic_image("bad", tags=["bad/app:1"])
    nested: list = []
    for _ in range(5000):
        nested = [nested]
    bad["inspect"]["Config"]["Healthcheck"] = {"Test": nested}
    records, errors, _ = collect(_engine_of(classic_image("good", tags=["good/app:1"]), bad))
    assert [r.name for r in records] == ["good/app"]
    assert errors == [f"docker-daemon (image {bad['inspect']['Id']}): the engine's inspect is nested too deeply"]


# ----------------------------------------------------------------------------- engine addresses with credentials


@pytest.mark.parametrize(
    "address, shown",
    [
        ("user:s3cret@127.0.0.1:2375", "***@127.0.0.1:2375"),
        ("tcp://user:s3cret PW@127.0.0.1:2375", "tcp://***@127.0.0.1:2375"),
        ("tcp://user:pa@ss/s3cret@127.0.0.1:2375", "tcp://***@127.0.0.1:2375"),
        ("tcp://s3cret@127.0.0.1:2375", "tcp://***@127.0.0.1:2375"),
        ("user:pa://s3cret@127.0.0.1:2375", "***@127.0.0.1:2375"),
        ("tcp://u:p?s3cret#x@h:2375", "tcp://***@h:2375"),
        ("tcp://127.0.0.1:2375?token=s3cret", "tcp://127.0.0.1:2375"),
        ("https://127.0.0.1:2376/api#s3cret", "https://127.0.0.1:2376/api"),
        ("unix:///run/docker.sock?token=s3cret", "unix:///run/docker.sock"),
        ("unix://user:s3cret@/run/docker.sock", "unix://***@/run/docker.sock"),
        ("ssh://me:s3cret@build-host", "ssh://***@build-host"),
        # Not credentials: a socket path holding '@', an ssh login name, a plain address.
        ("unix:///run/user@1000/docker.sock", "unix:///run/user@1000/docker.sock"),
        ("ssh://me@build-host", "ssh://me@build-host"),
        ("tcp://10.0.0.1:2375", "tcp://10.0.0.1:2375"),
        ("10.0.0.1:2375", "10.0.0.1:2375"),
    ],
)
def test_an_engine_address_is_shown_without_credentials(address, shown):
    assert daemon.shown_address(address) == shown


@pytest.mark.parametrize(
    "address",
    [
        "user:s3cret@127.0.0.1:2375",
        "tcp://user:s3cret PW@127.0.0.1:2375",
        "user:pa://s3cret@127.0.0.1:2375",
        "tcp://127.0.0.1:2375?token=s3cret",
        "tcp://127.0.0.1:2375#s3cret",
        "unix:///nowhere/docker.sock?token=s3cret",
    ],
)
def test_an_unusable_engine_address_is_named_without_credentials(address):
    source = DockerDaemon(location=address)
    with pytest.raises(SourceError) as caught:
        list(source.records(Context("docker-daemon", address)))
    message = str(caught.value)
    assert SECRET not in message
    assert message.startswith(f"docker-daemon: cannot reach the Docker engine at {daemon.shown_address(address)}: ")


def test_a_missing_image_names_the_engine_without_credentials():
    location = f"unix://user:{SECRET}@/run/docker.sock"
    records, errors, _ = collect(FakeEngine(), "missing:1", location=location)
    assert not records
    assert errors == [
        "docker-daemon:missing:1: the Docker engine at unix://***@/run/docker.sock has no image 'missing:1'"
    ]


def test_cli_never_prints_or_stores_the_engine_password(tmp_path):
    store = tmp_path / "s"
    env = dict(os.environ, DOCKER_HOST=f"user:{SECRET}PW@127.0.0.1:2375")
    command = [sys.executable, "-m", "queries.cli", "index", "--json", "--store", str(store), "docker-daemon:"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "cannot reach the Docker engine at ***@127.0.0.1:2375: not an engine address" in result.stderr
    assert SECRET not in result.stdout + result.stderr


# ----------------------------------------------------------------------------- digests the index cannot stand behind


class _Relisting(FakeEngine):
    """A fake engine whose listing and inspects are rewritten as a hostile engine would send them."""

    def __init__(self, *, extra=(), inspect_ids=None, **kwargs):
        super().__init__(**kwargs)
        self.extra = list(extra)  # listing entries added after the images
        self.inspect_ids = inspect_ids or {}  # listed ID -> the Id its inspect gives

    def list_images(self, **kwargs):
        return super().list_images(**kwargs) + self.extra

    def inspect_image(self, ref, **kwargs):
        doc = super().inspect_image(ref, **kwargs)
        if ref in self.inspect_ids:
            doc["Id"] = self.inspect_ids[ref]
        return doc


def _asked_for(fake: FakeEngine, image: str) -> list[tuple]:
    return [call for call in fake.calls if len(call) > 1 and call[1] == image]


@pytest.mark.parametrize("bad_id", ["foo", "../../version", "sha256:" + "A" * 64, "md5:" + "a" * 32, ""])
def test_a_listed_id_that_is_not_a_digest_fails_that_image_and_is_never_asked_for(bad_id):
    bad = classic_image("bad", tags=["bad/app:1"])
    bad["inspect"]["Id"] = bad_id
    fake = _engine_of(bad, classic_image("good", tags=["good/app:1"]))
    records, errors, _ = collect(fake)
    assert [r.name for r in records] == ["good/app"]
    assert errors == [f"docker-daemon: listing images: entry 0 has an invalid Id {bad_id!r}"]
    assert _asked_for(fake, bad_id) == []


@pytest.mark.parametrize(
    "entry, reason",
    [
        ({"Id": 12345, "RepoTags": ["other:1"]}, "entry 1 has an Id that is a number, not a string"),
        ({"Id": None}, "entry 1 has an Id that is null, not a string"),
        ({"RepoTags": ["other:1"]}, "entry 1 has no Id"),
        ("sha256:" + "a" * 64, "entry 1 is a string, not an object"),
    ],
)
def test_a_listing_entry_without_a_string_id_is_one_line_not_silence(entry, reason):
    fake = _Relisting(extra=[entry])
    fake.add(classic_image("good", tags=["good/app:1"]))
    records, errors, _ = collect(fake)
    assert [r.name for r in records] == ["good/app"]
    assert errors == [f"docker-daemon: listing images: {reason}"]


def test_a_bad_listing_entry_is_said_by_one_shard_only():
    fake = _Relisting(extra=[{"Id": 12345}, {"Id": 67890, "RepoTags": ["other:1"]}])
    said = []
    for index in (1, 2, 3):
        said += collect(fake, shard=Shard(index, 3))[1]
    assert sorted(said) == [
        "docker-daemon: listing images: entry 0 has an Id that is a number, not a string",
        "docker-daemon: listing images: entry 1 has an Id that is a number, not a string",
    ]


def test_inspects_naming_another_image_are_refused_not_merged():
    """Two listed images whose inspects both say `Id: ""` were one record; each fails in one line."""
    a, b = classic_image("a"), classic_image("b", tags=["b/app:1"])
    fake = _Relisting(inspect_ids={a["inspect"]["Id"]: "", b["inspect"]["Id"]: ""})
    fake.add(a)
    fake.add(b)
    fake.add(classic_image("good", tags=["good/app:1"]))
    records, errors, _ = collect(fake)
    assert [r.name for r in records] == ["good/app"]
    assert errors == [
        f"docker-daemon: image {image['inspect']['Id']}: the engine's inspect of it has Id '', not the listed one"
        for image in (a, b)
    ]


@pytest.mark.parametrize("bad_id", ["foo", "../../version"])
def test_a_named_image_whose_inspect_id_is_not_a_digest_fails_before_any_other_request(bad_id):
    bad = classic_image("bad", tags=["bad/app:1"])
    bad["inspect"]["Id"] = bad_id
    fake = _engine_of(bad)
    records, errors, _ = collect(fake, "bad/app:1")
    assert not records
    assert errors == [f"docker-daemon:bad/app:1: image bad/app:1: the engine's inspect has an invalid Id {bad_id!r}"]
    assert [call[0] for call in fake.calls] == ["inspect"]


@pytest.mark.parametrize(
    "digest, note",
    [
        ("md5:" + "a" * 32, "digest algorithm 'md5' is not one this index checks"),
        ("sha1:" + "a" * 40, "digest algorithm 'sha1' is not one this index checks"),
    ],
)
def test_repo_digests_of_unchecked_algorithms_are_dropped_with_a_note(digest, note):
    image = classic_image("app", tags=["reg.example/app:1"], digests=[f"reg.example/app@{digest}"])
    records, errors, notes = collect(_engine_of(image))
    assert not errors
    assert [(r.name, r.tags, r.digest) for r in records] == [("app", ("1",), "")]
    assert notes == [f"docker-daemon: ignoring RepoDigests entry 'reg.example/app@{digest}': {note}"]


@pytest.mark.parametrize(
    "layers, reason",
    [
        (["nope", fake_digest("x")], "inspect's RootFS.Layers[0] has an invalid digest 'nope'"),
        (
            [fake_digest("x"), "sha256:" + "A" * 64],
            f"inspect's RootFS.Layers[1] has an invalid digest {'sha256:' + 'A' * 64!r}",
        ),
        (["md5:" + "a" * 32], f"inspect's RootFS.Layers[0] has an invalid digest {'md5:' + 'a' * 32!r}"),
        ([fake_digest("x"), 5], "inspect's RootFS.Layers[1] is a number, not a digest"),
    ],
)
def test_layers_that_are_not_digests_fail_that_image_only(layers, reason):
    bad = classic_image("bad", tags=["bad/app:1"])
    bad["inspect"]["RootFS"]["Layers"] = layers
    records, errors, _ = collect(_engine_of(bad, classic_image("good", tags=["good/app:1"])))
    assert [r.name for r in records] == ["good/app"]
    assert errors == [f"docker-daemon (image {bad['inspect']['Id']}): {reason}"]


_PLATFORMS = (("linux", "amd64", ""), ("linux", "arm64", "v8"), ("linux", "386", ""))


def _containerd_engine(image: dict) -> FakeEngine:
    fake = FakeEngine(api_version="1.49", containerd=True)
    fake.add(image)
    fake.add(containerd_image("good", tags=["good/app:1"], platforms=_PLATFORMS[:1]))
    return fake


def test_containerd_children_whose_digests_are_not_digests_fail_alone_and_are_not_inspected():
    image = containerd_image("app", tags=["app:1"], platforms=_PLATFORMS)
    index = image["inspect"]["Id"]
    bad = {"linux/arm64": "md5:" + "b" * 32, "linux/386": "hello"}
    for child in image["manifests"]:
        platform = child["ImageData"]["Platform"]
        digest = bad.get(f"{platform['os']}/{platform['architecture']}")
        if digest:
            child["ID"] = child["Descriptor"]["digest"] = digest
    fake = _containerd_engine(image)
    records, errors, _ = collect(fake)
    assert sorted((r.name, r.kind, r.platform.architecture if r.platform else "") for r in records) == [
        ("good/app", KIND_IMAGE, "amd64"),
        ("good/app", KIND_INDEX, ""),
        ("library/app", KIND_IMAGE, "amd64"),
        ("library/app", KIND_INDEX, ""),
    ]
    assert errors == [
        f"docker-daemon (image {index}): the engine lists a manifest with an invalid digest {bad['linux/arm64']!r}",
        f"docker-daemon (image {index}): the engine lists a manifest with an invalid digest 'hello'",
    ]
    inspected = {call[2] for call in fake.calls if call[0] == "inspect" and call[1] == index}
    assert Platform("linux", "arm64", "v8") not in inspected and Platform("linux", "386", "") not in inspected


def test_a_containerd_target_whose_digest_is_not_a_digest_fails_that_image_only():
    image = containerd_image("app", tags=["app:1"], platforms=_PLATFORMS[:2])
    image["inspect"]["Descriptor"]["digest"] = "sha256:" + "A" * 64
    records, errors, _ = collect(_containerd_engine(image))
    assert {r.name for r in records} == {"good/app"}
    assert errors == [
        f"docker-daemon (image {image['inspect']['Id']}): the engine's descriptor of the image has an invalid digest"
        f" {'sha256:' + 'A' * 64!r}"
    ]


# ----------------------------------------------------------------------------- numbers int() will not convert

HUGE = b"7" * 5000  # more digits than int() converts by default


def _with_field(image: dict, where: str, value: bytes) -> bytes:
    """The inspect of `image`, a field `X-Huge` added at `where` ('' or 'Config') holding `value` raw."""
    text = json.dumps(image["inspect"]).encode()
    if where == "Config":
        return text.replace(b'"Config": {', b'"Config": {"X-Huge": ' + value + b", ", 1)
    return b'{"X-Huge": ' + value + b", " + text[1:]


def test_an_unread_number_too_long_for_int_does_not_fail_the_inspect():
    bad = _BAD["inspect"]["Id"]
    with _Answers(_answers()) as engine:
        source = DockerDaemon(location=engine.address, workers=2)
        before = sorted(
            (i for i in source.records(Context(source.kind, source.location)) if isinstance(i, ImageRecord)),
            key=lambda r: r.name,
        )
    with _Answers(_answers(**{f"/v1.49/images/{bad}/json": (200, _with_field(_BAD, "", HUGE))})) as engine:
        source = DockerDaemon(location=engine.address, workers=2)
        items = list(source.records(Context(source.kind, source.location)))
    assert [str(i) for i in items if isinstance(i, SourceError)] == []
    after = sorted((i for i in items if isinstance(i, ImageRecord)), key=lambda r: r.name)
    # the same records, but for the socket each engine listened on
    assert [replace(r, source_path="") for r in after] == [replace(r, source_path="") for r in before]
    assert [r.name for r in after] == ["bad/app", "good/app"]


def test_a_number_too_long_for_int_in_the_config_fails_that_image_in_one_line():
    bad = _BAD["inspect"]["Id"]
    inspect = _with_field(_BAD, "Config", HUGE)
    assert b"X-Huge" in inspect
    with _Answers(_answers(**{f"/v1.49/images/{bad}/json": (200, inspect)})) as engine:
        source = DockerDaemon(location=engine.address, workers=2)
        items = list(source.records(Context(source.kind, source.location)))
    assert [i.name for i in items if isinstance(i, ImageRecord)] == ["good/app"]
    errors = [str(i) for i in items if isinstance(i, SourceError)]
    assert len(errors) == 1 and errors[0].endswith("holds a number of more digits than any field takes"), errors
    assert "\n" not in errors[0] and len(errors[0]) < 300


def test_an_engine_error_with_a_number_too_long_for_int_keeps_its_message():
    body = b'{"message": "engine is shutting down", "n": ' + HUGE + b"}"
    with _Answers({"/version": (500, body)}) as engine:
        with pytest.raises(EngineUnavailable) as caught:
            EngineApiClient(engine.address)
    assert str(caught.value).endswith("GET /version answered HTTP 500: engine is shutting down")
