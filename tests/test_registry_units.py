"""The registry source's small parts: names, challenges, credential files, Retry-After, the crawl's scheduling."""

import base64
import json
import os
import stat
import threading
from collections import deque
from concurrent.futures import CancelledError, Future

import pytest
from hypothesis import given
from hypothesis import strategies as st

from indexer.errors import AuthError, HttpError, SourceError
from indexer.model import TagMoves, TagsRetired
from indexer.sources import registry, registry_schema1
from indexer.sources.jsonstream import loads
from indexer.sources.parse import Context
from indexer.sources.registry import (
    FETCH,
    WALK,
    Crawl,
    Fetched,
    Pool,
    RegistrySource,
    Target,
    all_done,
    interleave,
    parse_target,
    under_prefix,
)
from indexer.sources.registry_client import RegistryOptions, is_canonical_path
from indexer.sources.registry_auth import find_credentials, parse_challenges, parse_token_response
from indexer.sources.registry_client import _retry_after


@pytest.mark.parametrize(
    "text, target",
    [
        ("127.0.0.1:5000", Target("127.0.0.1:5000", "127.0.0.1:5000")),
        ("registry.example.com", Target("registry.example.com", "registry.example.com")),
        ("myregistry:5000/", Target("myregistry:5000", "myregistry:5000")),
        ("localhost:5000/team/app", Target("localhost:5000", "localhost:5000", "team/app")),
        ("cr.yandex/crp1/app:v1", Target("cr.yandex", "cr.yandex", "crp1/app", "v1")),
        ("reg.example/a/b@sha256:" + "a" * 64, Target("reg.example", "reg.example", "a/b", "", "sha256:" + "a" * 64)),
        ("ubuntu:22", Target("docker.io", "registry-1.docker.io", "library/ubuntu", "22")),
        ("docker.io", Target("docker.io", "registry-1.docker.io")),
        ("127.0.0.1:65535/a", Target("127.0.0.1:65535", "127.0.0.1:65535", "a")),
        ("[::1]/a", Target("[::1]", "[::1]", "a")),
    ],
)
def test_parse_target(text, target):
    assert parse_target(text) == target


@pytest.mark.parametrize("text", ["", "Reg.example/UPPER/case", "host:5000/a:b:c"])
def test_parse_target_rejects(text):
    with pytest.raises(SourceError):
        parse_target(text)


@pytest.mark.parametrize("text", ["127.0.0.1:99999/x", "127.0.0.1:65536", "[::1]:070000/x:1"])
def test_a_port_out_of_range_is_refused_before_any_request(text):
    # Docker's grammar takes any digits; each was tried over https and http, four times, and then
    # said to be a connection that failed.
    with pytest.raises(SourceError) as raised:
        parse_target(text)
    assert raised.value.where == f"docker://{text}" and "is out of range" in raised.value.reason


def test_under_prefix_is_by_path_component():
    assert under_prefix("team/app", "team") and under_prefix("team", "team") and under_prefix("team/app", "team/")
    assert not under_prefix("teams/app", "team") and under_prefix("x", "")


def test_parse_challenges():
    [bearer] = parse_challenges(
        'Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push",error="insufficient_scope"'
    )
    assert bearer.scheme == "bearer" and bearer.realm == "https://auth.example/token"
    assert bearer.params["scope"] == "repository:a/b:pull,push" and bearer.params["error"] == "insufficient_scope"
    basic, other = parse_challenges('Basic realm="a \\"quoted\\" realm", Bearer realm="https://t/x"')
    assert basic.scheme == "basic" and basic.params["realm"] == 'a "quoted" realm' and other.realm == "https://t/x"
    assert parse_challenges("") == []


def test_token_response():
    assert parse_token_response(b'{"token": "t", "expires_in": 300}', "r") == ("t", 300.0)
    jwt = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln-_/+=="
    assert parse_token_response(json.dumps({"token": jwt}).encode(), "r") == (jwt, 60.0)
    for bad in ("s3cr\r\nX-Injected: 1", "s3cr t", "s3cr\x00", "s3cré"):
        with pytest.raises(AuthError, match="not visible ASCII") as caught:
            parse_token_response(json.dumps({"token": bad}).encode(), "r")
        assert "s3cr" not in str(caught.value)
    assert parse_token_response(b'{"access_token": "a"}', "r") == ("a", 60.0)
    with pytest.raises(AuthError):
        parse_token_response(b"{}", "r")


def test_a_token_lifetime_of_more_digits_than_int_converts_is_read_as_any_other_out_of_range():
    # Go reads such a number into a float (expires_in is an int there and fails, so the token
    # still serves); refusing the whole answer as "not JSON" would make the registry unreachable.
    huge = "9" * 5000
    assert parse_token_response(f'{{"token": "t", "expires_in": {huge}}}'.encode(), "r") == ("t", 24 * 3600.0)
    assert parse_token_response(f'{{"token": "t", "expires_in": -{huge}}}'.encode(), "r") == ("t", 60.0)
    assert parse_token_response(f'{{"token": "t", "x": {huge}, "expires_in": 5}}'.encode(), "r") == ("t", 5.0)


def test_a_registry_error_body_with_an_unconvertible_number_still_gives_its_message():
    from indexer.sources.registry_client import registry_error_text

    body = f'{{"errors": [{{"code": "DENIED", "message": "no", "detail": {"1" * 5000}}}]}}'.encode()
    assert registry_error_text(body) == "DENIED: no"


# Deeper than json.loads goes on any stack: it raises RecursionError, not ValueError.
TOO_DEEP = b"[" * 200_000 + b"]" * 200_000


def test_json_nested_too_deeply_is_bad_json_not_a_crash():
    from indexer.sources import registry_schema1

    with pytest.raises(AuthError, match="answered with something that is not JSON"):
        parse_token_response(TOO_DEEP, "https://auth.example/token")
    assert registry_schema1.is_schema1(TOO_DEEP) is False
    with pytest.raises(SourceError, match=r"history\[0\].v1Compatibility is not JSON"):
        registry_schema1._v1({"v1Compatibility": TOO_DEEP.decode()}, "where", 0)
    protected = base64.urlsafe_b64encode(TOO_DEEP).decode().rstrip("=")
    with pytest.raises(SourceError, match="no usable formatLength"):
        registry_schema1._format({"protected": protected}, "where")


def write(path, doc):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return str(path)


def auth(user, password):
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def test_docker_config_auths(tmp_path):
    path = write(
        tmp_path / "config.json",
        {
            "auths": {
                "https://reg.example:5000/v1/": {"auth": auth("u", "p:with:colons")},
                "reg.example:5000/team": {"auth": auth("team", "t")},
                "https://index.docker.io/v1/": {"auth": auth("hub", "h")},
                "other.example": {"username": "plain", "password": "pw"},
            }
        },
    )
    found = find_credentials("reg.example:5000", "", [path])
    assert (found.username, found.password) == ("u", "p:with:colons")
    assert find_credentials("reg.example:5000", "team/app", [path]).username == "team"  # the most specific key
    assert find_credentials("docker.io", "library/redis", [path]).username == "hub"
    assert find_credentials("other.example", "", [path]).password == "pw"
    assert find_credentials("nowhere.example", "", [path]) is None
    assert "p:with" not in repr(found)


def test_first_file_with_an_entry_wins_and_missing_files_are_skipped(tmp_path):
    first = write(tmp_path / "auth.json", {"auths": {"reg.example": {"auth": auth("podman", "x")}}})
    second = write(tmp_path / "config.json", {"auths": {"reg.example": {"auth": auth("docker", "y")}}})
    assert find_credentials("reg.example", "", [str(tmp_path / "missing.json"), first, second]).username == "podman"


def test_bad_auth_value_is_an_error(tmp_path):
    path = write(tmp_path / "config.json", {"auths": {"reg.example": {"auth": base64.b64encode(b"no-colon").decode()}}})
    with pytest.raises(AuthError, match="base64 of user:password"):
        find_credentials("reg.example", "", [path])


def test_credential_helper(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    helper = bin_dir / "docker-credential-imgdextest"
    helper.write_text(
        "#!/bin/sh\nread host\n"
        'if [ "$host" = "helped.example" ]; then '
        'echo \'{"ServerURL":"helped.example","Username":"hu","Secret":"hs"}\'; '
        'else echo "credentials not found in native keychain"; exit 1; fi\n'
    )
    helper.chmod(helper.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    path = write(
        tmp_path / "config.json",
        {"credHelpers": {"helped.example": "imgdextest"}, "credsStore": "imgdextest", "auths": {}},
    )
    found = find_credentials("helped.example", "", [path])
    assert (found.username, found.password) == ("hu", "hs")
    assert find_credentials("unknown.example", "", [path]) is None


@pytest.mark.parametrize(
    "printed",
    [
        '{"Username":5,"Secret":"hs"}',
        '{"Username":"hu","Secret":null}',
        '{"Username":"hu","Secret":{"token":"hidden-value"}}',
        '["hu","hs"]',
        '{"Username":"hu","Secret":' + "9" * 5000 + "}",
    ],
)
def test_a_helper_printing_no_strings_is_one_error(tmp_path, monkeypatch, printed):
    # Docker's helper protocol gives both as JSON strings; anything else is the helper's fault,
    # told in one line that names the file and the helper and prints nothing it printed.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    helper = bin_dir / "docker-credential-imgdextest"
    (tmp_path / "out.json").write_text(printed)
    helper.write_text(f"#!/bin/sh\nread host\ncat '{tmp_path / 'out.json'}'\n")
    helper.chmod(helper.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    path = write(tmp_path / "config.json", {"credHelpers": {"helped.example": "imgdextest"}})
    with pytest.raises(AuthError) as caught:
        find_credentials("helped.example", "", [path])
    message = str(caught.value)
    assert message == f"{path}: credential helper docker-credential-imgdextest printed no Username/Secret"
    assert "hidden-value" not in message


def _helper(tmp_path, monkeypatch, script: str) -> str:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    helper = bin_dir / "docker-credential-imgdextest"
    helper.write_text("#!/bin/sh\n" + script)
    helper.chmod(helper.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return write(tmp_path / "config.json", {"credHelpers": {"helped.example": "imgdextest"}})


@pytest.mark.parametrize("stream", ["", " >&2; exit 1"])
def test_a_helper_printing_without_end_is_stopped_in_bounded_memory(tmp_path, monkeypatch, stream):
    # `yes` never ends: reading all it prints would fill memory before the deadline ends it
    path = _helper(tmp_path, monkeypatch, f"yes 'secret-value-{stream and 2}'{stream}\n")
    with pytest.raises(AuthError) as caught:
        find_credentials("helped.example", "", [path])
    assert str(caught.value) == (
        f"{path}: credential helper docker-credential-imgdextest failed: it printed more than 64 KiB"
    )


def test_a_helper_that_does_not_finish_is_stopped_at_the_deadline(tmp_path, monkeypatch):
    from indexer.sources import registry_auth

    monkeypatch.setattr(registry_auth, "_HELPER_SECONDS", 1.0)
    # a child that keeps the output open outlives the helper: the deadline still holds
    path = _helper(tmp_path, monkeypatch, "sleep 30 &\necho '{}'\nsleep 30\n")
    with pytest.raises(AuthError) as caught:
        find_credentials("helped.example", "", [path])
    assert str(caught.value) == f"{path}: credential helper docker-credential-imgdextest failed: no answer within 1 s"


def test_a_failing_helper_message_is_one_short_line(tmp_path, monkeypatch):
    path = _helper(tmp_path, monkeypatch, "{ printf 'keychain\\nlocked '; seq 1000; } >&2; exit 3\n")
    with pytest.raises(AuthError) as caught:
        find_credentials("helped.example", "", [path])
    message = str(caught.value)
    prefix = f"{path}: credential helper docker-credential-imgdextest failed: keychain locked 1 2 3"
    assert message.startswith(prefix) and message.endswith(" …") and "\n" not in message
    assert len(message) == len(f"{path}: credential helper docker-credential-imgdextest failed: ") + 300 + 2
    (tmp_path / "quiet").mkdir()
    path = _helper(tmp_path / "quiet", monkeypatch, "exit 4\n")
    with pytest.raises(AuthError, match="failed: exit 4$"):
        find_credentials("helped.example", "", [path])


def test_a_helper_that_does_not_read_its_input_still_answers(tmp_path, monkeypatch):
    path = _helper(tmp_path, monkeypatch, """echo '{"Username":"hu","Secret":"hs"}'\n""")
    found = find_credentials("helped.example", "", [path])
    assert (found.username, found.password) == ("hu", "hs")


def test_retry_after_forms():
    assert _retry_after({"Retry-After": "3"}) == 3.0
    assert _retry_after({}) is None
    assert _retry_after({"Retry-After": "soon"}) is None
    # HTTP numbers are ASCII digits: str.isdigit also takes these, and float() or int() refuses them
    assert _retry_after({"Retry-After": "\u00b2"}) is None
    # More digits than int64 holds ask for a longer wait than any allowed: they were read as none,
    # and the request retried, where a wait over the bound is an error at once.
    assert _retry_after({"Retry-After": "9" * 20}) == _retry_after({"Retry-After": "9" * 5000}) == float("inf")
    assert 0 <= _retry_after({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}) < 1


@pytest.mark.parametrize("key", ["index.docker.io", "registry-1.docker.io", "https://index.docker.io/v1/", "docker.io"])
def test_every_docker_hub_alias_is_a_key_for_docker_hub(tmp_path, key):
    path = write(tmp_path / "config.json", {"auths": {key: {"auth": auth("hub", "h")}}})
    assert find_credentials("docker.io", "library/redis", [path]).username == "hub"


@pytest.mark.parametrize("host", ["docker.io", "index.docker.io", "registry-1.docker.io"])
def test_a_docker_hub_alias_is_docker_hub(host):
    assert parse_target(host) == Target("docker.io", "registry-1.docker.io")
    assert parse_target(f"{host}/team/app") == Target("docker.io", "registry-1.docker.io", "team/app")


# ---------------------------------------------------------------- the crawl's scheduling, without a registry

D1, D2, D3, D4 = (f"sha256:{n * 64}" for n in "1234")


def finished_within(seconds, iterator):
    """The items of `iterator`, read on another thread; None if they do not all come in time."""
    items = []
    reader = threading.Thread(target=lambda: items.extend(iterator), daemon=True)
    reader.start()
    reader.join(seconds)
    return None if reader.is_alive() else items


def test_a_flow_that_waits_lets_the_others_run():
    out = deque()
    gate = Future()

    def waiter():
        out.append("waiting")
        yield gate
        out.append(f"got {gate.result()}")

    def opener():
        out.append("opening")
        gate.set_result(1)
        yield from ()

    assert finished_within(10, interleave([waiter(), opener()], out)) == ["waiting", "opening", "got 1"]


def test_closing_interleave_closes_the_flows_still_waiting():
    out = deque()
    closed = []

    def flow(name, future):
        try:
            out.append(name)
            yield future
        finally:
            closed.append(name)

    items = interleave([flow("a", Future()), flow("b", Future())], out)
    assert next(items) == "a"
    items.close()
    assert sorted(closed) == ["a", "b"]


def test_the_pool_takes_walks_before_fetches_queued_earlier_and_cancels_what_is_left():
    pool = Pool(1, "imgdex-registry-test")
    gate, ran = threading.Event(), []
    try:
        pool.submit(FETCH, gate.wait, 10)  # holds the only thread while the rest is queued
        fetches = [pool.submit(FETCH, ran.append, f"fetch {n}") for n in range(2)]
        walk = pool.submit(WALK, ran.append, "walk")
        gate.set()
        for future in [walk, *fetches]:
            future.result(10)
        assert ran == ["walk", "fetch 0", "fetch 1"]
        gate.clear()
        pool.submit(FETCH, gate.wait, 10)
        left = pool.submit(WALK, ran.append, "never")
    finally:
        gate.set()
        pool.shutdown(cancel_futures=True)
    assert "never" not in ran
    with pytest.raises(CancelledError):
        left.result(0)
    with pytest.raises(RuntimeError):
        pool.submit(FETCH, ran.append, "after")
    assert not [thread for thread in threading.enumerate() if thread.name.startswith("imgdex-registry-test")]


def test_a_worker_s_exception_reaches_the_future():
    pool = Pool(2, "imgdex-registry-test")
    try:
        future = pool.submit(FETCH, int, "not a number")
        with pytest.raises(ValueError):
            future.result(10)
        assert pool.submit(FETCH, int, "7").result(10) == 7  # the thread survived it
    finally:
        pool.shutdown()


def test_all_done_is_done_only_once_every_future_is():
    futures = [Future() for _ in range(3)]
    done = all_done(futures)
    futures[2].set_result(1)
    futures[0].set_exception(ValueError("x"))
    assert not done.done()
    futures[1].cancel()
    assert done.done()
    assert all_done([]).done()


@pytest.mark.parametrize(
    "path",
    [
        "/v2/team/app/manifests/v1.0_rc-1",
        "/v2/a/blobs/sha256:" + "0" * 64,
        "/v2/a@b/manifests/x",
        "/",
        "/v2/_catalog?last=a%2Fb&n=2",
        "/v2/a/./b",
        "/v2/a/../b",
        "/v2/a/.hidden",
        "/v2/a//b",
        "/v2/a/b/.",
        "/v2/a/b/..",
        "/v2/a b",
        "/v2/a%2e%2e/b",
        "/v2/é",
        "/v2/a\nb",
        "/v2/a#b",
        "/v2/a/b/",
        "v2/a",
    ],
)
def test_the_quick_path_check_agrees_with_urllib3(path):
    import urllib3

    try:
        parsed = urllib3.util.parse_url("http://host" + path)
        sent = (parsed.path or "") + (f"?{parsed.query}" if parsed.query is not None else "")
        expected = path.startswith("/") and path.isascii() and path.isprintable() and " " not in path and sent == path
    except ValueError:
        expected = False
    assert is_canonical_path(path) is expected


class FakeStore:
    def __init__(self, known, indexed):
        self.known, self.indexed = known, indexed

    def repository_states(self, registry, prefix):
        for name in sorted(set(self.known) | set(self.indexed)):
            yield name, dict(self.known.get(name, {})), set(self.indexed.get(name, ()))


def offline_crawl(monkeypatch, repositories, jobs=2, store=None, list_tags=None, fetch_tag=None):
    """A crawl of `docker://registry.example` whose requests are the given functions."""
    source = RegistrySource("docker://registry.example", RegistryOptions(jobs=jobs, auth_files=[]))
    if store is not None:
        source.bind_store(store)
    notes = []
    crawl = Crawl(source, Context("docker", source.location, note=notes.append))
    crawl.client.base = "https://registry.example"  # the scheme is known: no /v2/ probe
    monkeypatch.setattr(crawl, "_paged", lambda path, *rest: (list(repositories), None))  # the catalog
    monkeypatch.setattr(crawl, "_list_tags", list_tags or (lambda name: (["t"], None)))
    monkeypatch.setattr(
        crawl, "_fetch_tag", fetch_tag or (lambda state, tag: Fetched(tag, f"sha256:{state.name}", None, ""))
    )
    monkeypatch.setattr(
        crawl, "_walk", lambda name, digest, data, media_type, tags: ([f"{name}@{digest} {tags}"], [f"walked {name}"])
    )
    return crawl, notes


def test_a_repository_s_tags_are_fetched_while_another_is_still_listed(monkeypatch):
    fetching_a, listing_b = threading.Event(), threading.Event()
    met = {}

    def list_tags(name):
        if name == "b":
            listing_b.set()
            met["listing b saw a fetch"] = fetching_a.wait(10)
        return ["t"], None

    def fetch_tag(state, tag):
        if state.name == "a":
            fetching_a.set()
            met["fetching a saw b listed"] = listing_b.wait(10)
        return Fetched(tag, f"sha256:{state.name}", None, "")

    crawl, notes = offline_crawl(monkeypatch, ["a", "b"], jobs=2, list_tags=list_tags, fetch_tag=fetch_tag)
    assert sorted(crawl.run()) == ["a@sha256:a ['t']", "b@sha256:b ['t']"]
    assert met == {"listing b saw a fetch": True, "fetching a saw b listed": True}
    assert sorted(notes[:2]) == ["walked a", "walked b"]
    assert notes[2] == (
        "docker://registry.example: 2 repositories, 2 tags; 2 manifests fetched, "
        "0 tags unchanged, 0 retagged, 0 removed"
    )


def test_a_crawl_closed_early_sends_no_more_requests_and_leaves_no_thread(monkeypatch):
    listed = []
    cancelled = threading.Event()

    class Pool(registry.Pool):
        def shutdown(self, cancel_futures=True, wait=True):
            super().shutdown(cancel_futures=cancel_futures, wait=False)
            cancelled.set()  # only now may the listing under way finish: nothing queued may start
            super().shutdown(wait=wait)

    def list_tags(name):
        listed.append(name)
        if name == "r01":
            cancelled.wait(10)
        return [], HttpError(f"registry.example/{name}: GET tags/list", "500")

    monkeypatch.setattr(registry, "Pool", Pool)
    crawl, _ = offline_crawl(monkeypatch, [f"r{i:02d}" for i in range(50)], jobs=1, list_tags=list_tags)
    items = crawl.run()
    first = next(items)
    assert isinstance(first, SourceError) and "registry.example/r00" in str(first)
    items.close()
    assert listed in (["r00"], ["r00", "r01"])
    assert not [thread for thread in threading.enumerate() if thread.name.startswith("imgdex-registry")]


def test_a_recrawl_retires_then_moves_then_walks_each_repository(monkeypatch):
    store = FakeStore({"app": {"v1": D1, "old": D2, "moved": D1}}, {"app": {D1, D3}})
    served = {"v1": D1, "moved": D3, "new": D4, "dup": D4}
    crawl, notes = offline_crawl(
        monkeypatch,
        ["app"],
        store=store,
        list_tags=lambda name: (list(served), None),
        fetch_tag=lambda state, tag: Fetched(tag, served[tag], None, ""),
    )
    assert list(crawl.run()) == [
        TagsRetired("registry.example", "app", ("old",)),
        TagMoves("registry.example", (("app", "moved", D3),)),
        f"app@{D4} ['dup', 'new']",
    ]
    assert notes == [
        "walked app",
        "docker://registry.example: 1 repositories, 4 tags; 1 manifests fetched, "
        "1 tags unchanged, 1 retagged, 1 removed",
    ]


class StreamedStore(FakeStore):
    """A FakeStore that records how far the crawl has read its states when each repository is listed."""

    def __init__(self, known, indexed):
        super().__init__(known, indexed)
        self.read: list[str] = []

    def repository_states(self, registry, prefix):
        for state in super().repository_states(registry, prefix):
            self.read.append(state[0])
            yield state


def test_a_recrawl_reads_the_store_s_states_as_it_goes_and_retires_what_the_catalog_dropped(monkeypatch):
    # The store holds r00..r59 (r05 and r50 dropped from the catalog); the catalog lists r00..r59
    # but those two, and a new r99, out of order.
    known = {f"r{n:02d}": {"t": D1} for n in range(60)}
    store = StreamedStore(known, {name: {D1} for name in known})
    catalog = sorted((set(known) - {"r05", "r50"}) | {"r99"}, reverse=True)
    seen_when_listed = {}

    def list_tags(name):
        seen_when_listed[name] = len(store.read)
        return ["t"], None

    def fetch_tag(state, tag):
        return Fetched(tag, D1 if state.name in known else f"sha256:{state.name}", None, "")

    crawl, _ = offline_crawl(monkeypatch, catalog, jobs=1, store=store, list_tags=list_tags, fetch_tag=fetch_tag)
    out = list(crawl.run())
    retired = [item for item in out if isinstance(item, TagsRetired)]
    assert retired == [TagsRetired("registry.example", "r05", ("t",)), TagsRetired("registry.example", "r50", ("t",))]
    assert [item for item in out if not isinstance(item, TagsRetired)] == ["r99@sha256:r99 ['t']"]
    assert crawl.stats.unchanged == 58 and crawl.stats.removed == 2
    # a repository is listed when the store has been read no further than the window (4 a job)
    # past it, not all 60 states at once
    assert seen_when_listed["r00"] <= 6 and seen_when_listed["r40"] <= 40 + 7


def test_a_repository_keeps_manifest_bytes_up_to_its_budget_then_digests_only(monkeypatch):
    import hashlib

    monkeypatch.setattr(registry, "_KEPT_MANIFEST_BYTES", 20)
    manifests = {f"t{n}": f"manifest {n}".encode() for n in range(5)}  # 10 bytes each
    manifests["liar"] = b"manifest x"
    manifests["signed"] = b"manifest s"  # schema 1: its digest is that of its payload, not of these bytes

    def digest(data):
        return "sha256:" + hashlib.sha256(data).hexdigest()

    def fetch_tag(state, tag):
        if tag == "signed":
            return Fetched(
                tag, digest(b"payload"), manifests[tag], "application/vnd.docker.distribution.manifest.v1+prettyjws"
            )
        said = digest(b"another manifest") if tag == "liar" else digest(manifests[tag])
        return Fetched(tag, said, manifests[tag], "application/vnd.oci.image.manifest.v1+json")

    walked = {}

    def walk(name, found, data, media_type, tags):
        walked[tags[0]] = data
        return [f"{name}@{found} {tags}"], []

    crawl, _ = offline_crawl(
        monkeypatch, ["app"], jobs=1, list_tags=lambda name: (list(manifests), None), fetch_tag=fetch_tag
    )
    monkeypatch.setattr(crawl, "_walk", walk)
    out = list(crawl.run())
    # one thread fetches in tag order: the first 20 bytes are kept, the rest walked by digest
    assert {tag for tag, data in walked.items() if data is not None} == {"t0", "t1"}
    assert walked["t0"] == manifests["t0"] and sorted(walked) == ["signed", "t0", "t1", "t2", "t3", "t4"]
    assert walked["signed"] is None  # let go unchecked: the walk fetches it again by its digest
    errors = [str(item) for item in out if isinstance(item, SourceError)]
    # the liar's bytes were let go only after they were checked against the digest it gave
    assert errors == [
        f"registry.example/app:liar: the registry says the manifest is {digest(b'another manifest')} "
        f"(Docker-Content-Digest), but its bytes hash to {digest(manifests['liar'])}"
    ]


_VERSIONS = st.one_of(
    st.integers(-2, 12),
    st.sampled_from([1.0, 1e0, True, "1", None, [1], 1.5]),
)
_SPACE = st.sampled_from(["", " ", "\n  ", "\t", "\r\n"])


@given(
    version=_VERSIONS,
    space=_SPACE,
    escaped=st.booleans(),
    extra=st.dictionaries(st.sampled_from(["name", "tag", "schemaVersio", "x"]), st.integers() | st.text(max_size=5)),
    encoding=st.sampled_from(["utf-8", "utf-16", "utf-16-le", "utf-32"]),
)
def test_the_quick_schema1_test_answers_as_the_parse(version, space, escaped, extra, encoding):
    """is_schema1 skips the parse for text that cannot hold the key with a value of 1: whatever the
    spelling, the answer is the parse's."""
    key = '"schema\\u0056ersion"' if escaped else '"schemaVersion"'
    body = ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in extra.items())
    text = "{" + space + key + space + ":" + space + json.dumps(version) + ("," + body if body else "") + space + "}"
    data = text.encode(encoding)
    try:
        doc = loads(data)
        wanted = isinstance(doc, dict) and type(doc.get("schemaVersion")) is int and doc["schemaVersion"] == 1
    except ValueError:
        wanted = False
    assert registry_schema1.is_schema1(data) is wanted
