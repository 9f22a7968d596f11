"""What a registry crawl holds stays bounded however big the registry: repositories under way,
per-digest locks, tokens."""

import hashlib
import threading
import types
from collections import deque
from concurrent.futures import Future

import pytest

from indexer.sources import registry, registry_auth
from indexer.sources.registry import ConfigCache, RepoState, interleave
from indexer.sources.registry_auth import HostAuth
from indexer.sources.registry_client import Reply, RegistryClient, RegistryOptions
from test_registry_units import offline_crawl


# ---------------------------------------------------------------- repositories under way


def test_interleave_reads_its_flows_lazily_and_runs_at_most_the_window_at_once():
    out, gates = deque(), []
    pulled, running, most = [0], [0], [0]

    def flow(n):
        running[0] += 1
        most[0] = max(most[0], running[0])
        gate = Future()
        gates.append(gate)
        yield gate
        out.append(n)
        running[0] -= 1

    def flows():
        for n in range(100):
            pulled[0] += 1
            yield flow(n)

    def opener():
        # frees the flows one at a time, from another thread, as a pool would
        for n in range(100):
            while len(gates) <= n:
                threading.Event().wait(0.001)
            gates[n].set_result(None)

    threading.Thread(target=opener, daemon=True).start()
    items = interleave(flows(), out, window=3)
    first = next(items)
    assert pulled[0] <= 4  # the three under way, and the one started as the first ended
    # a flow whose gate opened before it yielded goes on at once, ahead of gates queued earlier
    assert sorted([first, *items]) == list(range(100))
    assert most[0] == 3 and pulled[0] == 100


def test_a_flow_that_ends_at_once_leaves_its_place_to_the_next():
    out = deque()

    def flow(n):
        out.append(n)
        yield from ()

    assert list(interleave((flow(n) for n in range(10)), out, window=2)) == list(range(10))


def test_closing_a_windowed_interleave_starts_no_more_flows():
    out, started, closed = deque(), [], []

    def flow(n):
        started.append(n)
        try:
            out.append(n)
            yield Future()
        finally:
            closed.append(n)

    items = interleave((flow(n) for n in range(50)), out, window=4)
    assert next(items) == 0
    items.close()
    assert started == [0, 1, 2, 3] and sorted(closed) == [0, 1, 2, 3]


def test_a_catalog_crawl_keeps_only_a_window_of_repositories_under_way(monkeypatch):
    """Every listing of the catalog used to be queued before the first tag was fetched."""
    queued_repositories = []  # at each submit: the repositories with work queued or running

    class Pool(registry.Pool):
        def submit(self, priority, fn, *args):
            future = super().submit(priority, fn, *args)
            name = args[0].name if isinstance(args[0], RepoState) else args[0]
            with self._ready:
                names = {
                    entry[4][0].name if isinstance(entry[4][0], RepoState) else entry[4][0] for entry in self._queue
                }
            queued_repositories.append(len(names | {name}))
            return future

    monkeypatch.setattr(registry, "Pool", Pool)
    names = [f"r{i:03d}" for i in range(300)]
    jobs = 2
    crawl, notes = offline_crawl(monkeypatch, names, jobs=jobs, list_tags=lambda name: (["a", "b", "c"], None))
    items = list(crawl.run())
    assert sorted(items) == sorted(f"{name}@sha256:{name} ['a', 'b', 'c']" for name in names)
    window = registry._REPOSITORY_WINDOW * jobs
    assert max(queued_repositories) <= window, max(queued_repositories)
    assert crawl.stats.repositories == 300 and crawl.stats.tags == 900


def test_the_order_within_a_repository_is_kept_under_a_window(monkeypatch):
    digests = {f"t{n}": f"sha256:{n}" for n in range(6)}
    crawl, _ = offline_crawl(
        monkeypatch,
        [f"r{i:02d}" for i in range(40)],
        jobs=1,
        list_tags=lambda name: (list(digests), None),
        fetch_tag=lambda state, tag: registry.Fetched(tag, digests[tag], None, ""),
    )
    items = list(crawl.run())
    for name in (f"r{i:02d}" for i in range(40)):
        assert [item for item in items if item.startswith(name + "@")] == [
            f"{name}@{digest} ['{tag}']" for tag, digest in digests.items()
        ]


# ---------------------------------------------------------------- per-digest locks


def config_blob(n):
    data = f'{{"n": {n}}}'.encode()
    return data, "sha256:" + hashlib.sha256(data).hexdigest()


def test_a_config_fetched_by_many_threads_is_fetched_once_and_leaves_no_lock():
    cache = ConfigCache()
    data, digest = config_blob(1)
    calls, release = [], threading.Event()

    def fetch():
        calls.append(1)
        release.wait(10)
        return data

    got = []
    threads = [threading.Thread(target=lambda: got.append(cache.fetch_once(digest, fetch))) for _ in range(8)]
    for thread in threads:
        thread.start()
    threading.Event().wait(0.05)  # most of them now wait for the first
    release.set()
    for thread in threads:
        thread.join(10)
    assert got == [data] * 8 and calls == [1]
    assert len(cache._fetching) == 0


def test_no_lock_is_kept_per_config_whatever_the_fetch_gave():
    cache = ConfigCache(limit=0)  # too small to keep anything: every caller fetches
    for n in range(50):
        data, digest = config_blob(n)
        assert cache.fetch_once(digest, lambda data=data: data) == data
    with pytest.raises(ValueError):
        cache.fetch_once(config_blob(99)[1], lambda: int("x"))
    assert len(cache._fetching) == 0 and cache.size == 0


def test_a_thread_waiting_on_a_config_that_was_not_kept_fetches_it_itself():
    cache = ConfigCache(limit=1)
    data, digest = config_blob(2)
    first_in, release, calls = threading.Event(), threading.Event(), []

    def slow():
        calls.append("first")
        first_in.set()
        release.wait(10)
        return data

    got = []
    first = threading.Thread(target=lambda: got.append(cache.fetch_once(digest, slow)))
    first.start()
    first_in.wait(10)
    second = threading.Thread(
        target=lambda: got.append(cache.fetch_once(digest, lambda: calls.append("second") or data))
    )
    second.start()
    while cache._fetching._locks["", digest][1] < 2:  # until the second waits for the first
        threading.Event().wait(0.001)
    release.set()
    first.join(10)
    second.join(10)
    assert got == [data, data] and calls == ["first", "second"]
    assert len(cache._fetching) == 0


# ---------------------------------------------------------------- tokens


@pytest.fixture
def clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(registry_auth, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    return now


def test_the_tokens_kept_are_capped_least_recently_used_first(monkeypatch, clock):
    monkeypatch.setattr(registry_auth, "_MAX_TOKENS", 3)
    auth = HostAuth("registry.example", None)
    for scope in "abc":
        auth.store_token(scope, f"token {scope}", 300)
    assert auth.cached_token("a") == "token a"  # now b is the least recently used
    auth.store_token("d", "token d", 300)
    assert len(auth._tokens) == 3
    assert auth.cached_token("b") is None
    assert [auth.cached_token(scope) for scope in "acd"] == ["token a", "token c", "token d"]


def test_expired_tokens_are_dropped(clock):
    auth = HostAuth("registry.example", None)
    auth.store_token("a", "token a", 60)
    auth.store_token("b", "token b", 60)
    clock[0] += 120
    auth.store_token("c", "token c", 60)
    assert list(auth._tokens) == ["c"]
    clock[0] += 120
    assert auth.cached_token("c") is None and len(auth._tokens) == 0


def test_an_evicted_scope_gets_a_new_token_and_no_scope_lock_is_kept(monkeypatch):
    monkeypatch.setattr(registry_auth, "_MAX_TOKENS", 2)
    client = RegistryClient("registry.example", "registry.example", RegistryOptions(auth_files=[]), None)
    client.auth.scheme, client.auth.realm = "bearer", "https://auth.example/token"
    asked = []

    def send(method, url, headers, limit, what, **kwargs):
        asked.append(url.rsplit("scope=", 1)[1])
        return Reply(200, {}, f'{{"token": "t{len(asked)}", "expires_in": 300}}'.encode(), url)

    monkeypatch.setattr(client, "send", send)
    headers = [client._auth_headers(f"repository:{name}:pull")["Authorization"] for name in "abcab"]
    assert headers == ["Bearer t1", "Bearer t2", "Bearer t3", "Bearer t4", "Bearer t5"]
    assert len(asked) == 5  # a and b were dropped for c, then b for a again, and so on
    assert client._auth_headers("repository:b:pull") == {"Authorization": "Bearer t5"}
    assert len(client.auth._tokens) == 2 and len(client.auth._scope_locks) == 0
