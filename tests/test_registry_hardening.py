"""docker:// against hostile or broken registries: names outside Docker's grammar, answers that
trickle or never come, hosts that keep failing, flaky 503s under many jobs, credentials in the
source name, and the exact record winning over an engine's.

Hostile answers come from `FakeRegistry` on 127.0.0.1 (threads; every delay and trickle ends when
the server stops). The exact-record test uses a real `docker-registry`.
"""

import dataclasses
import json
import os
import re
import socket
import random
import threading
import time

import pytest

from builders import OCI_MANIFEST, Blobs
from conftest import resolver_for, store_views
from indexer.errors import SourceError
from indexer.model import UNCOMPRESSED, Blob, ImageRecord
from indexer.sources import mediatypes as mt
from indexer.sources import parse_source
from indexer.sources.parse import Context
from indexer.sources.registry import parse_target
from indexer.sources.registry_client import RegistryOptions, is_canonical_path
from registry_server import RealRegistry, Reply, skopeo_copy
from test_registry_bad import crawl, image

JSON = {"Content-Type": "application/json"}
# Generous for a loaded two-core machine: with a 1 s deadline the runs below need under 9 s.
BOUND = 15.0


def run_index(store: str, spec: str, **kwargs):
    """One index run as the CLI makes it, store lock held: (summary, error lines, notes, seconds)."""
    from indexer.run import RunObserver, RunSettings, index_sources
    from indexer.store.delta_writer import DeltaWriter

    from indexer.sources import SourceOptions

    errors, notes = [], []
    started = time.monotonic()
    settings = RunSettings(options=SourceOptions(registry=RegistryOptions(**kwargs) if kwargs else None))
    observer = RunObserver(on_error=errors.append, on_note=notes.append)
    with DeltaWriter(store) as writer:
        summary = index_sources([spec], writer, settings=settings, observer=observer)
    return summary, errors, notes, time.monotonic() - started


def distinct_images(count: int):
    """`count` manifests with their own configs: (tag -> manifest bytes, config digest -> bytes)."""
    tags, configs = {}, {}
    for number in range(count):
        blobs = Blobs()
        descriptor = blobs.image(layers=(f"layer {number}".encode(),))
        manifest = blobs.blobs[descriptor["digest"]]
        config = json.loads(manifest)["config"]["digest"]
        tags[f"t{number}"] = manifest
        configs[config] = blobs.blobs[config]
    return tags, configs


def behind_bearer(fake, challenge: str) -> None:
    """Image a/one:v1, whose requests are answered only with an Authorization header."""
    manifest, configs, _ = image()
    fake.add_image("a/one", {"v1": manifest}, configs, OCI_MANIFEST)
    served = dict(fake.routes)
    for path in [p for p in served if p.startswith("/v2/a/")]:
        fake.routes[path] = lambda method, headers, reply=served[path]: (
            reply if "Authorization" in headers else Reply(401, b"{}", {**JSON, "WWW-Authenticate": challenge})
        )


# ---------------------------------------------------------------- names and tags


def test_names_and_tags_outside_the_grammar_are_dropped_with_a_note_and_never_requested(fake):
    manifest, configs, _ = image()
    host = fake.host
    long_tag = "t" * 128  # the longest valid tag
    fake.add_image("ok/a", {"v1": manifest, "v2": manifest, long_tag: manifest}, configs, OCI_MANIFEST)
    fake.add_image("ok/b", {"v1": manifest}, configs, OCI_MANIFEST)
    fake.routes["/v2/ok/a/tags/list"] = Reply(
        200, json.dumps({"name": "ok/a", "tags": ["v1", "тег", "t" * 129, "v1\n", "v2", long_tag]}).encode(), JSON
    )
    bad_names = [
        "x/../ok/a",  # would be asked as /v2/ok/a/ once urllib3 removed the dot segments
        "ok/./a",
        "Upper/case",
        "тест/app",
        "ok/a\n",
        "r" * 256,
        "q" * (255 - len(host)),  # valid alone, but over 255 with the host
    ]
    fake.catalog(["ok/a", "ok/b"] + bad_names)

    records, errors, notes = crawl(f"docker://{host}")

    assert not errors
    landed = sorted((r.name, r.tags) for r in records)
    assert landed == [("ok/a", tuple(sorted(["v1", "v2", long_tag]))), ("ok/b", ("v1",))]
    skipped_repos = [n for n in notes if "skipped repository" in n]
    skipped_tags = [n for n in notes if "skipped tag" in n]
    assert len(skipped_repos) == len(bad_names) and len(skipped_tags) == 3, notes
    assert all("\n" not in n and len(n) < 300 for n in notes)
    assert any("'x/../ok/a'" in n for n in skipped_repos) and any("'тег'" in n for n in skipped_tags)
    # every request path is exactly one of these: built from valid names only, never rewritten
    allowed = {"/v2/", "/v2/_catalog"}
    for repo, tags in (("ok/a", ["v1", "v2", long_tag]), ("ok/b", ["v1"])):
        allowed.add(f"/v2/{repo}/tags/list")
        allowed.update(f"/v2/{repo}/manifests/{tag}" for tag in tags)
        allowed.update(f"/v2/{repo}/blobs/{digest}" for digest in configs)
    assert {path for _, path in fake.log} <= allowed, fake.log
    assert fake.hits["/v2/ok/a/tags/list"] == 1


class KnownTags:
    """A store that knows some tags, so the crawl HEADs them, as a re-crawl does."""

    def __init__(self, rows):
        self.rows = rows

    def repository_states(self, registry, prefix=""):
        known: dict[str, dict[str, str]] = {}
        for name, tag, digest in self.rows:
            known.setdefault(name, {})[tag] = digest
        for name in sorted(known):
            yield name, known[name], set()


def test_a_docker_content_digest_that_is_not_a_digest_is_an_error_and_never_requested(fake):
    manifest, configs, _ = image()
    header = "sha256:" + "a" * 64 + "/../../../../v2/_catalog"
    fake.add_image("app/x", {"v1": manifest}, configs, OCI_MANIFEST, digest_header=header)
    options = RegistryOptions(timeout=1.0, retries=0, jobs=2, auth_files=[])
    source = parse_source(f"docker://{fake.host}/app/x:v1", registry_options=options)
    source.bind_store(KnownTags([("app/x", "v1", "sha256:" + "b" * 64)]))
    items = list(source.records(Context(source.kind, source.location, note=lambda text: None)))
    errors = [str(i) for i in items if isinstance(i, SourceError)]
    assert len(errors) == 1 and "Docker-Content-Digest" in errors[0] and "not a digest" in errors[0], errors
    assert fake.log == [("GET", "/v2/"), ("HEAD", "/v2/app/x/manifests/v1")]


@pytest.mark.parametrize("status", [405, 400, 501])
def test_a_re_crawl_of_a_registry_that_refuses_head_falls_back_on_get(fake, status):
    """A registry that refuses HEAD on manifests failed every tag of every re-crawl."""
    manifest, configs, _ = image()
    fake.add_image("app/x", {"v1": manifest}, configs, OCI_MANIFEST)
    served = fake.routes["/v2/app/x/manifests/v1"]
    fake.routes["/v2/app/x/manifests/v1"] = lambda method, _headers: Reply(status) if method == "HEAD" else served
    options = RegistryOptions(timeout=5.0, retries=0, jobs=2, auth_files=[])
    source = parse_source(f"docker://{fake.host}/app/x:v1", registry_options=options)
    source.bind_store(KnownTags([("app/x", "v1", "sha256:" + "b" * 64)]))
    items = list(source.records(Context(source.kind, source.location, note=lambda text: None)))
    assert [str(i) for i in items if isinstance(i, SourceError)] == []
    assert [(r.name, r.tags, r.digest) for r in items] == [("app/x", ("v1",), served.headers["Docker-Content-Digest"])]
    asked = [entry for entry in fake.log if entry[1] == "/v2/app/x/manifests/v1"]
    assert asked == [("HEAD", "/v2/app/x/manifests/v1"), ("GET", "/v2/app/x/manifests/v1")]


def test_a_re_crawl_does_not_get_a_tag_whose_head_says_it_is_gone(fake):
    manifest, configs, _ = image()
    fake.add_image("app/x", {"v1": manifest}, configs, OCI_MANIFEST)
    fake.routes["/v2/app/x/manifests/v1"] = Reply(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}')
    options = RegistryOptions(timeout=5.0, retries=0, jobs=2, auth_files=[])
    source = parse_source(f"docker://{fake.host}/app/x:v1", registry_options=options)
    source.bind_store(KnownTags([("app/x", "v1", "sha256:" + "b" * 64)]))
    items = list(source.records(Context(source.kind, source.location, note=lambda text: None)))
    assert len(items) == 1 and isinstance(items[0], SourceError) and "404" in str(items[0])
    assert [entry for entry in fake.log if entry[1] == "/v2/app/x/manifests/v1"] == [("HEAD", "/v2/app/x/manifests/v1")]


def test_a_link_to_another_path_of_the_host_is_refused(fake):
    manifest, configs, _ = image()
    fake.add_image("a/one", {"v1": manifest}, configs, OCI_MANIFEST)
    link = {"Link": '</v2/a/one/tags/list?n=1>; rel="next"'}
    fake.routes["/v2/_catalog"] = Reply(200, b'{"repositories": ["a/one"]}', {**JSON, **link})
    records, errors, _ = crawl(f"docker://{fake.host}")
    assert [r.name for r in records] == ["a/one"]
    assert len(errors) == 1 and "points away from /v2/_catalog" in errors[0]
    assert fake.hits.get("/v2/a/one/tags/list?n=1") is None


def test_request_paths_are_sent_as_they_are_or_not_at_all():
    assert is_canonical_path("/v2/team/app/manifests/v1.0_rc-1") and is_canonical_path("/v2/_catalog?last=a%2Fb&n=2")
    for path in ("/v2/x/../ok/tags/list", "/v2/./a", "/v2/тег", "/v2/a\n", "/v2/a b", "v2/a", "/v2/a#frag"):
        assert not is_canonical_path(path), path


# ---------------------------------------------------------------- bounded time


@pytest.mark.parametrize("headers_too", [False, True], ids=["trickled-body", "trickled-headers"])
def test_a_trickling_answer_costs_one_deadline_per_attempt(fake, tmp_path, headers_too):
    manifest, configs, _ = image()
    fake.add_image("slow/app", {"v1": manifest}, configs, OCI_MANIFEST)
    served = fake.routes["/v2/slow/app/manifests/v1"]
    # a byte every 50 ms: never a second of silence, so a per-recv timeout alone would wait it out
    fake.routes["/v2/slow/app/manifests/v1"] = dataclasses.replace(served, trickle=0.05, trickle_headers=headers_too)
    fake.catalog(["slow/app"])

    summary, errors, _, seconds = run_index(str(tmp_path), f"docker://{fake.host}", timeout=1.0)

    assert seconds < BOUND, (seconds, errors)
    assert summary.indexed == 0 and len(errors) == 1, errors
    expected = f"{fake.host}/slow/app:v1: GET manifest: no complete answer within 1 s (after 4 attempts)"
    assert errors[0].startswith(expected), errors


def test_a_registry_that_stops_answering_is_given_up_on_with_one_line_per_repository(fake, tmp_path):
    repositories = [f"team/r{number:02d}" for number in range(24)]
    for name in repositories:
        fake.routes[f"/v2/{name}/tags/list"] = Reply(200, b'{"tags": []}', JSON, delay=60)  # ends when the server stops
    fake.catalog(repositories)

    summary, errors, _, seconds = run_index(str(tmp_path), f"docker://{fake.host}", timeout=1.0, jobs=4)

    assert seconds < BOUND, (seconds, errors)
    assert summary.failed == len(repositories) and len(errors) == len(repositories), errors
    # one line per repository, each naming the host and the cause
    assert sorted(line.split(": ", 1)[0] for line in errors) == [f"{fake.host}/{n}" for n in repositories]
    assert all("GET tags/list" in line and "no complete answer within 1 s" in line for line in errors), errors
    assert any(f"not sent: {fake.host} gave no answer" in line for line in errors), errors
    asked = sum(count for path, count in fake.hits.items() if path.endswith("/tags/list"))
    assert asked < len(repositories), fake.hits  # the rest were never sent


def test_a_registry_that_never_answers_is_one_line_in_bounded_time(fake, tmp_path):
    fake.routes["/v2/"] = Reply(200, b"{}", JSON, delay=60)
    summary, errors, _, seconds = run_index(str(tmp_path), f"docker://{fake.host}", timeout=1.0)
    assert seconds < BOUND, (seconds, errors)
    assert summary.failed == 1 and len(errors) == 1, errors
    # the plain-HTTP attempt is the news; the https probe of a plain-HTTP host failing is expected
    assert f"GET http://{fake.host}/v2/: no complete answer within 1 s" in errors[0], errors


def test_a_loopback_registry_failing_over_plain_http_reports_that_failure(fake):
    fake.routes["/v2/"] = Reply(500, b'{"errors":[{"code":"UNKNOWN","message":"database is down"}]}', JSON)
    with pytest.raises(SourceError) as caught:
        crawl(f"docker://{fake.host}", retries=1)
    message = str(caught.value)
    assert f"GET http://{fake.host}/v2/: 500 Internal Server Error" in message, message
    assert "database is down" in message, message
    assert "over https:" in message  # what the https probe met is still there, after


def test_a_plain_http_answer_that_is_no_registry_still_says_what_https_met(fake):
    # A TLS registry with a certificate not trusted answers plain HTTP with 400: the https
    # failure is the cause, and was dropped.
    fake.routes["/v2/"] = Reply(400, b"Client sent an HTTP request to an HTTPS server.", {})
    with pytest.raises(SourceError) as caught:
        crawl(f"docker://{fake.host}", retries=1)
    message = str(caught.value)
    assert "answered 400: not a registry" in message and "; over https: " in message, message


@pytest.mark.parametrize("lifetime", ["NaN", "Infinity", "-Infinity"])
def test_a_token_answer_holding_nan_is_no_json(lifetime):
    # As Go's decoder (docker) reads a token answer: NaN and Infinity are no JSON values.
    from indexer.errors import AuthError
    from indexer.sources import registry_auth

    with pytest.raises(AuthError, match="answered with something that is not JSON"):
        registry_auth.parse_token_response(f'{{"token": "t", "expires_in": {lifetime}}}'.encode(), "r")


@pytest.mark.parametrize("lifetime", ["1" + "0" * 400, "-5", "1e308", "1e400"])
def test_a_token_lifetime_no_clock_can_hold_is_one_the_crawl_survives(fake, lifetime):
    from indexer.sources import registry_auth

    token, seconds = registry_auth.parse_token_response(f'{{"token": "t", "expires_in": {lifetime}}}'.encode(), "r")
    assert token == "t" and 0 < seconds <= registry_auth._MAX_TOKEN_LIFETIME

    behind_bearer(fake, f'Bearer realm="http://{fake.host}/token",service="x"')
    fake.routes["/token"] = Reply(200, f'{{"token": "tok", "expires_in": {lifetime}}}'.encode(), JSON)
    records, errors, _ = crawl(f"docker://{fake.host}/a/one")
    assert not errors and [r.name for r in records] == ["a/one"]
    asked = sum(count for path, count in fake.hits.items() if path.startswith("/token"))
    assert asked == 1, fake.hits  # kept, not asked for again on every request


@pytest.mark.parametrize("where", ["username", "password", "config"])
def test_credentials_that_are_not_utf8_are_one_line(fake, tmp_path, where):
    from indexer.errors import AuthError
    from indexer.sources.registry_auth import Credentials, find_credentials

    bad = b"p\xffw".decode("utf-8", "surrogateescape")  # as read from stdin or the environment
    if where == "config":
        path = tmp_path / "auth.json"
        path.write_text(json.dumps({"auths": {fake.host: {"username": "u", "password": "p\udcffw"}}}))
        with pytest.raises(AuthError, match="not valid UTF-8"):
            find_credentials(fake.host, "a/one", [str(path)])
        return
    with pytest.raises(AuthError, match="^--username: the username or password is not valid UTF-8$"):
        Credentials(bad if where == "username" else "u", bad if where == "password" else "p", "--username")
    options = {"username": bad if where == "username" else "u", "password": bad if where == "password" else "p"}
    source = parse_source(f"docker://{fake.host}", registry_options=RegistryOptions(auth_files=[], **options))
    with pytest.raises(SourceError) as caught:
        list(source.records(Context("registry", fake.host)))
    assert "not valid UTF-8" in str(caught.value) and bad not in str(caught.value)
    assert not fake.hits  # refused before any request


def test_an_auth_file_nested_too_deep_is_one_line(tmp_path):
    from indexer.errors import AuthError
    from indexer.sources.registry_auth import find_credentials

    path = tmp_path / "config.json"
    path.write_text("[" * 100_000)
    with pytest.raises(AuthError, match="cannot read credentials from"):
        find_credentials("registry.example", "a/one", [str(path)])


# ---------------------------------------------------------------- many jobs, flaky registry


def test_flaky_503s_under_eight_jobs_lose_no_tag_and_no_connection(fake, tmp_path):
    from indexer.store.delta_writer import DeltaWriter
    from indexer.store.writer import now_utc

    tags, configs = distinct_images(200)
    fake.add_image("app/x", tags, configs, OCI_MANIFEST)
    chance = random.Random(20261130)
    lock = threading.Lock()

    def flaky(served):
        def route(method, headers):
            with lock:
                unlucky = chance.random() < 0.3
            return Reply(503, b'{"errors":[{"code":"UNAVAILABLE","message":"busy"}]}', JSON) if unlucky else served

        return route

    for path in [p for p in fake.routes if p.startswith("/v2/app/x/")]:
        fake.routes[path] = flaky(fake.routes[path])
    fake.catalog(["app/x"])
    options = RegistryOptions(jobs=8, retries=15, backoff=0.001, max_backoff=0.01, timeout=5.0, auth_files=[])

    def crawl_into(writer):
        source = parse_source(f"docker://{fake.host}", registry_options=options)
        source.bind_store(writer)
        before = fake.connections
        items = list(source.records(Context(source.kind, source.location, note=lambda text: None)))
        writer.write([i for i in items if isinstance(i, ImageRecord)], now_utc())
        return items, fake.connections - before

    with DeltaWriter(str(tmp_path)) as writer:
        first, _ = crawl_into(writer)
        # the re-crawl HEADs every tag: a HEAD answer left open on a pooled connection broke the
        # next request another worker sent on it (ResponseNotReady('Request-sent'))
        second, connections = crawl_into(writer)
        stored = store_views(writer.store).execute("SELECT count(*) FROM tags WHERE name = 'app/x'").fetchone()[0]
    for items in (first, second):
        errors = [str(i) for i in items if isinstance(i, SourceError)]
        assert not errors, errors[:5]
    assert len([i for i in first if isinstance(i, ImageRecord)]) == 200 and stored == 200
    # every connection the pool opened lived to the end: one per job, two spare, one https probe
    assert connections <= options.jobs + 3, connections


# ---------------------------------------------------------------- credentials in the source


@pytest.mark.parametrize(
    "spec, shown",
    [
        ("alice:S3cr3t@127.0.0.1:5000", "docker://***@127.0.0.1:5000"),
        ("alice:S3cr3t@registry.example.com/team/app:v1", "docker://***@registry.example.com/team/app:v1"),
        ("a.b:S3cr3t@registry.example.com", "docker://***@registry.example.com"),
        ("alice:S3/cr3t@registry.example.com", "docker://***@registry.example.com"),
        ("alice:S3cr3t@reg.example.com/app@sha256:" + "a" * 64, "docker://***@reg.example.com/app@sha256:" + "a" * 64),
        ("alice:S3@cr3t@registry.example.com", "docker://***@registry.example.com"),
    ],
)
def test_credentials_in_the_source_are_refused_and_never_echoed(spec, shown):
    with pytest.raises(SourceError) as caught:
        parse_source("docker://" + spec)
    assert "S3cr3t" not in str(caught.value) and "cr3t" not in str(caught.value)
    assert caught.value.where == shown
    assert "--password-stdin" in caught.value.reason


def test_a_name_at_a_digest_is_not_taken_for_credentials():
    digest = "sha256:" + "a" * 64
    assert parse_target(f"ubuntu@{digest}").digest == digest
    assert parse_source(f"docker://ubuntu@{digest}").location == f"docker://ubuntu@{digest}"
    with pytest.raises(SourceError, match="invalid digest") as caught:
        parse_target("ubuntu@sha256:short")
    assert caught.value.where == "docker://ubuntu@sha256:short"


def test_credentials_in_the_source_never_reach_the_output(run_cli, tmp_path):
    result = run_cli("index", "docker://alice:S3cr3t@127.0.0.1:1/team/app:v1", "--store", str(tmp_path))
    assert result.exit_code == 1
    assert "S3cr3t" not in result.output and "docker://***@127.0.0.1:1/team/app:v1" in result.output


def test_credentials_in_a_token_realm_are_never_echoed(fake):
    challenge = 'Bearer realm="http://tok:T0kS3cret@auth.example.com/token",service="x"'
    fake.routes["/v2/"] = Reply(401, b"{}", {**JSON, "WWW-Authenticate": challenge})
    fake.catalog(["a/b"])
    with pytest.raises(SourceError) as caught:
        crawl(f"docker://{fake.host}")
    assert "refusing to ask" in str(caught.value) and "T0kS3cret" not in str(caught.value)


@pytest.mark.parametrize("answer", [200, 401])
def test_a_loopback_realm_with_user_info_is_asked_with_it_as_basic_credentials(fake, answer):
    """As Go's client sends a URL's user info when no credentials are set; never echoed."""
    import base64

    behind_bearer(fake, f'Bearer realm="http://tok:T0k%40S3c@{fake.host}/token",service="x"')
    sent = []

    def token(method, headers):
        sent.append(headers.get("Authorization"))
        return Reply(answer, b'{"token": "tok"}', JSON)

    fake.routes["/token"] = token
    records, errors, _ = crawl(f"docker://{fake.host}/a/one")
    assert sent and set(sent) == {"Basic " + base64.b64encode(b"tok:T0k@S3c").decode()}
    if answer == 200:
        assert not errors and [r.name for r in records] == ["a/one"]
    else:
        assert len(errors) == 1 and "refused the credentials its URL holds" in errors[0], errors
        assert "S3c" not in errors[0] and "T0k" not in errors[0]


# ---------------------------------------------------------------- engine first, registry second


@pytest.mark.services
def test_an_engine_record_gives_way_to_the_exact_record_of_a_later_crawl(run_cli, tmp_path):
    from conftest import REAL
    from indexer.store.delta_writer import DeltaWriter
    from indexer.store.writer import now_utc

    reg = RealRegistry(str(tmp_path / "registry"))
    try:
        skopeo_copy(f"oci:{os.path.join(REAL, 'oci-layout')}:v1", f"docker://{reg.host}/team/app:v1")
        source = parse_source(f"docker://{reg.host}/team/app:v1", registry_options=RegistryOptions(auth_files=[]))
        [exact] = [i for i in source.records(Context(source.kind, source.location, note=lambda text: None))]
        assert isinstance(exact, ImageRecord) and exact.exactness >= 3
        # what docker-daemon: records for the same pushed image: diff_ids, sizes from history, no config size
        diff_ids = json.loads(exact.config_raw)["rootfs"]["diff_ids"]
        engine = dataclasses.replace(
            exact,
            media_type="",
            config=Blob(exact.config.digest, 0, mt.DOCKER_CONFIG),
            layers=tuple(Blob(d, 1000 + n, mt.DOCKER_LAYER_TAR) for n, d in enumerate(diff_ids)),
            layers_compressed=False,
            exactness=UNCOMPRESSED,
            source_kind="docker-daemon",
            source_path="docker-daemon:",
            manifest_raw=None,
            config_raw=None,
        )
        store = str(tmp_path / "store")
        with DeltaWriter(store) as writer:
            writer.write([engine], now_utc())

        result = run_cli("index", f"docker://{reg.host}", "--store", store)
        assert result.exit_code == 0, result.output
        assert "1 manifests fetched, 0 tags unchanged" in result.output
        query = f"SELECT exactness, source_kind, config_size, compressed_size FROM images WHERE id = '{exact.id}'"
        got = run_cli("sql", query, "--store", store, "--format", "json")
        [line] = got.stdout.splitlines()  # JSON lines, one per row
        row = json.loads(line)
        assert row["exactness"] == exact.exactness and row["source_kind"] == "docker"
        assert row["config_size"] == exact.config.size and row["compressed_size"] == exact.compressed_size

        again = run_cli("index", f"docker://{reg.host}", "--store", store)
        assert "0 manifests fetched, 1 tags unchanged" in again.output  # exact now: skipped
    finally:
        reg.stop()


# ---------------------------------------------------------------- hostile answers


def test_a_gzip_bomb_is_refused_at_the_limit_of_what_it_unpacks_to(fake):
    import gzip

    manifest, configs, _ = image()
    fake.add_image("ok/app", {"v1": manifest}, configs, OCI_MANIFEST)
    fake.add_image("bomb/app", {"v1": manifest}, configs, OCI_MANIFEST)
    # 16 KiB on the wire, announced as such, 16 MiB unpacked: twice the manifest limit
    bomb = gzip.compress(b" " * (16 * 1024 * 1024), 9)
    fake.routes["/v2/bomb/app/manifests/v1"] = Reply(
        200, bomb, {"Content-Type": OCI_MANIFEST, "Content-Encoding": "gzip"}
    )
    fake.catalog(["bomb/app", "ok/app"])

    records, errors, _ = crawl(f"docker://{fake.host}")

    assert [r.name for r in records] == ["ok/app"]
    assert len(errors) == 1 and errors[0].startswith(f"{fake.host}/bomb/app:v1: GET manifest"), errors
    assert "over the 8388608-byte limit" in errors[0], errors


def test_a_token_that_would_inject_a_header_is_one_line_that_never_shows_it(fake):
    manifest, configs, _ = image()
    fake.add_image("a/one", {"v1": manifest}, configs, OCI_MANIFEST)
    challenge = f'Bearer realm="http://{fake.host}/token",service="x"'
    served = fake.routes["/v2/a/one/tags/list"]
    fake.routes["/v2/a/one/tags/list"] = lambda method, headers: (
        served if "Authorization" in headers else Reply(401, b"{}", {**JSON, "WWW-Authenticate": challenge})
    )
    fake.routes["/token"] = Reply(200, json.dumps({"token": "S3cr3tTok\r\nX-Injected: 1"}).encode(), JSON)

    _, errors, _ = crawl(f"docker://{fake.host}/a/one")

    assert len(errors) == 1 and "gave a token that is not visible ASCII" in errors[0], errors
    assert "S3cr3tTok" not in errors[0] and "\n" not in errors[0]


def test_a_header_that_cannot_be_sent_is_one_line_that_never_shows_it(fake):
    from indexer.errors import HttpError
    from indexer.sources.registry_client import RegistryClient

    client = RegistryClient(fake.host, fake.host, RegistryOptions(timeout=1.0, auth_files=[]), None)
    try:
        with pytest.raises(HttpError) as caught:
            client.send("GET", f"http://{fake.host}/v2/", {"Authorization": "Bearer S3cr3t\r\nX: 1"}, 1024, "here")
    finally:
        client.close()
    assert "cannot be sent" in str(caught.value) and "S3cr3t" not in str(caught.value)


def test_retry_after_on_every_answer_waits_at_most_the_retry_budget_of_one_request(fake):
    manifest, configs, _ = image()
    fake.add_image("a/one", {"v1": manifest}, configs, OCI_MANIFEST)
    fake.add_image("b/two", {"v1": manifest}, configs, OCI_MANIFEST)
    fake.routes["/v2/b/two/manifests/v1"] = Reply(503, b"{}", {**JSON, "Retry-After": "1"})
    fake.catalog(["a/one", "b/two"])

    started = time.monotonic()
    records, errors, _ = crawl(f"docker://{fake.host}", retries=5, max_retry_wait=1.5)
    seconds = time.monotonic() - started

    assert [r.name for r in records] == ["a/one"]
    assert len(errors) == 1 and errors[0].startswith(f"{fake.host}/b/two:v1: GET manifest: 503"), errors
    assert "past the 1.5 s one request may wait in all (after 2 attempts)" in errors[0], errors
    assert fake.hits["/v2/b/two/manifests/v1"] == 2  # one wait of 1 s; a second would pass 1.5 s
    assert seconds < BOUND


@pytest.mark.parametrize("kind", ["fifo", "huge", "device"])
def test_an_auth_file_that_is_no_small_regular_file_is_refused_in_one_line(tmp_path, kind):
    from indexer.errors import AuthError
    from indexer.sources.registry_auth import MAX_AUTH_FILE_BYTES, find_credentials

    path = tmp_path / "config.json"
    if kind == "fifo":
        os.mkfifo(path)  # opened for reading, it would wait for a writer for ever
    elif kind == "huge":
        with open(path, "wb") as f:
            f.truncate(MAX_AUTH_FILE_BYTES + 1)
    else:
        os.symlink("/dev/zero", path)  # read whole, it would never end
    reason = {
        "fifo": "config.json is not a regular file (named pipe)",
        "huge": "config.json is over the 16777216-byte limit",
        "device": "config.json is not a regular file (character device)",
    }
    with pytest.raises(AuthError, match=r"cannot read credentials from .*config\.json: " + re.escape(reason[kind])):
        find_credentials("registry.example", "a/one", [str(path)])


# ---------------------------------------------------------------- host names that do not resolve


@pytest.mark.parametrize(
    "code, words, attempts",
    [
        # the resolver's own "no such name": told at once, as no retry makes the name exist
        (socket.EAI_NONAME, "Name or service not known", 1),
        # a resolver that did not answer: retried like any connection that failed
        (socket.EAI_AGAIN, "Temporary failure in name resolution", 3),
    ],
)
def test_a_host_name_that_does_not_resolve_is_one_plain_line(monkeypatch, code, words, attempts):
    asked = []

    def refused():
        asked.append("registry.nowhere.example")
        raise socket.gaierror(code, words)

    monkeypatch.setattr(socket, "getaddrinfo", resolver_for("registry.nowhere.example", refused))
    with pytest.raises(SourceError) as caught:
        crawl("docker://registry.nowhere.example/team/app", retries=2)
    assert len(asked) == attempts
    tries = f" (after {attempts} attempts)" if attempts > 1 else ""
    assert str(caught.value) == (
        "docker://registry.nowhere.example/team/app: registry.nowhere.example: GET "
        f"https://registry.nowhere.example/v2/: cannot resolve registry.nowhere.example: {words}{tries}"
    )


def test_a_name_server_that_does_not_answer_costs_the_attempt_deadline_not_its_own(monkeypatch):
    """getaddrinfo takes no timeout and glibc waits 5 s a try, per attempt and name server: the
    lookup is bounded by the attempt's deadline, and retried like any connection that failed."""
    released, asked = threading.Event(), []

    def unanswered():
        asked.append("registry.silent.example")
        released.wait(60)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", resolver_for("registry.silent.example", unanswered))
    started = time.monotonic()
    try:
        with pytest.raises(SourceError) as caught:
            crawl("docker://registry.silent.example/team/app", timeout=0.3, retries=1)
        took = time.monotonic() - started
    finally:
        released.set()
    assert took < 10  # two attempts of 0.3 s, not the 60 s the resolver would hold each
    assert len(asked) == 2
    assert str(caught.value) == (
        "docker://registry.silent.example/team/app: registry.silent.example: GET https://registry.silent.example/v2/:"
        " cannot resolve registry.silent.example: the name server gave no answer in time (after 2 attempts)"
    )


def test_an_address_literal_is_dialled_without_waiting_on_a_name_server(monkeypatch):
    from indexer.sources import tcp_dial

    released = threading.Event()

    def unanswered():
        released.wait(30)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    # every lookup that may ask a name server waits, an address literal's included
    monkeypatch.setattr(socket, "getaddrinfo", resolver_for(None, unanswered))
    deadline = time.monotonic() + 0.2
    try:
        assert [a[4][0] for a in tcp_dial.resolve("127.0.0.1", 80, deadline)] == ["127.0.0.1"]
        assert [a[4][0] for a in tcp_dial.resolve("::1", 80, deadline, socket.AF_INET6)] == ["::1"]
        with pytest.raises(tcp_dial.ResolverTimeout):
            tcp_dial.resolve("registry.example", 80, deadline)
    finally:
        released.set()
