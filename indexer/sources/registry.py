"""The registry source: `docker://HOST[/REPO[:TAG|@DIGEST]]` over the Docker Registry HTTP API V2.

`docker://HOST` crawls every repository of `/v2/_catalog`; `docker://HOST/REPO` every tag of one
repository; a tag or digest one image. Per tag the manifest is fetched (or, on a re-crawl, only
HEADed), and the shared parser walks it through `HttpBlobs`, which fetches child manifests and
config blobs on demand and never a layer. Requests run in a pool of `--jobs` threads; each
repository's crawl is plain sequential code on the calling thread, interleaved with the others by
`interleave`, so everything that touches the store or the bookkeeping stays on the calling thread.
A few repositories per thread are under way at a time, the next starting as one ends, so what a
crawl holds does not grow with the catalog.
The pool takes walks before fetches: a repository's manifests are walked as soon as its tags are
in, while the other repositories' fetches keep the threads busy, instead of all walks waiting at
the end behind every fetch of the crawl.

Names and tags a registry lists are checked against Docker's grammar before anything is asked
about them: a request path is built only from valid names, so it is exactly the name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import itertools
import json
import queue
import re
import threading
import urllib.parse
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from ..errors import AuthError, HostDown, HttpError, ImgdexError, SourceError
from ..model import Blob, ImageRecord, TagMoves, TagsRetired
from ..references import (
    DIGEST_ALGORITHMS,
    DOCKER_HUB,
    NAME_MAX,
    Reference,
    is_docker_hub,
    is_valid_digest,
    is_valid_repository,
    is_valid_tag,
    parse_reference,
    redact_url_secrets,
)
from . import configbounds
from . import mediatypes as mt
from .bodies import decimal
from .jsonstream import LongInteger, loads
from ..shard import in_shard, repository_key
from .parse import MAX_JSON_BYTES, Context, walk
from . import registries_conf
from .registry_auth import CATALOG_SCOPE, Credentials, KeyedLocks, find_credentials, repository_scope, scrub
from .registry_client import (
    CATALOG_LIMIT,
    MANIFEST_ACCEPT,
    RegistryClient,
    RegistryOptions,
    is_insecure,
    registry_error_text,
)
from .registry_schema1 import is_schema1, payload_digest, schema1_records

PREFIX = "docker://"
_LINK_NEXT = re.compile(r'<([^>]*)>\s*;\s*(?:[^,]*;\s*)*rel="?next"?', re.IGNORECASE)
_MAX_PAGES = 100_000
# Pages in a row that list nothing new: a registry pages on while it has entries left, so a Link
# past this many is one that never ends (a new URL each time), not a listing.
_MAX_IDLE_PAGES = 100
# Entries one listing may collect, across all its pages: a registry that pages forever, each page
# new, would otherwise grow the crawl's memory until it is killed, with nothing landed. Each entry
# held costs ~150 bytes (the name, and its place in the table of those listed); the
# largest real repositories list tens of thousands of tags, and the largest catalogs some hundreds
# of thousands of repositories, so these bounds are ~45 and ~300 MB that no real listing reaches.
_MAX_TAGS = 300_000
_MAX_REPOSITORIES = 2_000_000
# Values one page may hold beyond the entries its listing may still take. A page is parsed whole
# before its list can be measured, at up to ~100 bytes a value however short its text (`"a",`),
# so a 64 MiB page of 7 million tags would cost ~900 MB before the bound above was checked. The
# extra leaves room for what some registries list beside the entries (gcr.io describes each
# manifest of the repository in a dozen values), ~25 MB of it.
_PAGE_EXTRA_VALUES = 2**18
# Bytes a listing's pages and their Link URLs may add up to, per entry it may hold: room for the
# longest name (255 bytes) with its quotes and comma on every entry, so ~77 MB for a repository's
# tags. It ends a listing whose pages repeat the same entries under new URLs before the page bound
# does, and bounds what the entries it collects may weigh.
_LISTING_BYTES_PER_ENTRY = 256
# A Link URL followed: servers commonly refuse longer request lines (nginx's default buffer is 8
# KiB), and real registries link with a name and a count (`last=…&n=…`) or a short token.
_MAX_LINK_URL = 8 * 1024
_CONFIG_CACHE_BYTES = 64 * 1024 * 1024
_KNOWN_MANIFEST_TYPES = mt.INDEXES | mt.MANIFESTS | mt.SCHEMA1
_DIGEST_PREFIXES = tuple(f"{algorithm}:" for algorithm in DIGEST_ALGORITHMS)
_NOT_A_NAME = "not a valid repository name"
# Repositories crawled at once, per job: enough that while some wait on their listing or on the
# last of their fetches, the others keep every thread busy; few enough that what a repository holds
# while under way (its flow, its queued requests and their answers) stays bounded, however long the
# catalog.
_REPOSITORY_WINDOW = 4
# Manifest bytes the fetches of one repository keep for its walks. Past it a fetch keeps the
# digest only and the walk fetches the manifest again by digest, so a repository of many tags (or
# one serving manifests of 8 MiB) holds digests, not bytes, until its tags are all in.
_KEPT_MANIFEST_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Target:
    registry: str  # as records name it (Docker Hub is docker.io)
    api_host: str  # where the API answers
    repository: str = ""
    tag: str = ""
    digest: str = ""


def _looks_like_host(text: str) -> bool:
    # Not references.is_registry_host: this text has no '/', so `ubuntu:22` is a name and a tag, and
    # an uppercase word is refused as a name rather than taken for a host.
    name = text.rsplit("]", 1)[0] if text.startswith("[") else text.partition(":")[0]
    return text.startswith("[") or "." in name or name == "localhost"


def parse_target(text: str) -> Target:
    """`HOST`, `HOST/`, `HOST/REPO`, `HOST/REPO:TAG`, `HOST/REPO@DIGEST`; a bare name is on Docker Hub.

    `USER:PASSWORD@HOST` is refused without echoing it: a password on the command line shows in
    process lists and shell history, which is why the CLI takes it only from stdin or the environment.
    """
    try:
        return _parse_target(text)
    except SourceError:
        signs = [position for position, char in enumerate(text) if char == "@"]
        if signs and (not text[signs[-1] + 1 :] or text[signs[-1] + 1 :].startswith(_DIGEST_PREFIXES)):
            signs.pop()  # NAME@DIGEST: that @ is the digest's; with no host after it, no userinfo ends there
        if not signs:
            raise
        # everything up to the last @ before the host may be a password, @ and / included
        raise SourceError(
            f"{PREFIX}***@{text[signs[-1] + 1 :]}",
            "credentials in a registry source are not accepted; give --username with --password-stdin "
            "or IMGDEX_PASSWORD, or log in with docker login",
        ) from None


def _parse_target(text: str) -> Target:
    spec = PREFIX + text
    if not text:
        raise SourceError(spec, "no registry host")
    if "?" in text:
        # Said without the text: what follows a `?` may be a token, and the spec is shown masked.
        raise SourceError(spec, "a registry source takes no query (`?...`): a reference ends at its tag or digest")
    host_only = text.endswith("/") and "/" not in text.rstrip("/")
    if host_only or ("/" not in text and _looks_like_host(text)):
        host = text.rstrip("/")
        try:
            parse_reference(f"{host}/probe")
        except ImgdexError:
            raise SourceError(spec, f"invalid registry host {host!r}") from None
        registry = DOCKER_HUB if is_docker_hub(host) else host.lower()
        return Target(registry, _api_host(spec, registry))
    try:
        ref = parse_reference(text)
    except ImgdexError as exc:
        raise SourceError(spec, str(exc)) from None
    registry = ref.registry.lower()
    return Target(registry, _api_host(spec, registry), ref.name, ref.tag, ref.digest)


def _api_host(spec: str, registry: str) -> str:
    # Docker's grammar takes any digits for a port; a connection cannot, so it is said at once
    # rather than after every attempt over https and http.
    after_address = registry.rpartition("]")[2]
    if ":" in after_address and int(port := after_address.rpartition(":")[2]) > 65535:
        raise SourceError(spec, f"invalid registry host {registry!r}: port {int(port)} is out of range")
    return "registry-1.docker.io" if registry == DOCKER_HUB else registry


def _blocked(entry: registries_conf.RegistryEntry) -> str:
    return f"registry {entry.prefix} is blocked in {entry.origin}"


def under_prefix(name: str, prefix: str) -> bool:
    prefix = prefix.strip("/")
    return not prefix or name == prefix or name.startswith(prefix + "/")


def _media_type(content_type: str) -> str:
    value = (content_type or "").split(";", 1)[0].strip().lower()
    return value if value in _KNOWN_MANIFEST_TYPES else ""


def _next_link(reply, where: str, base: str, path: str) -> str:
    """The next page of the list at `path` of the registry at `base`, from the answer's Link header;
    "" when there is none. It must be that list on that registry, wherever a redirect took the page."""
    header = reply.headers.get("Link", "")
    match = _LINK_NEXT.search(header) if header else None
    if not match:
        return ""
    target = match.group(1)
    if len(target) > _MAX_LINK_URL:  # not quoted: it would be the whole line
        raise HttpError(where, f"the Link header's URL is {len(target):,} bytes, over the {_MAX_LINK_URL:,}-byte limit")
    try:
        url = urllib.parse.urljoin(reply.url, target)
        home, there = urllib.parse.urlsplit(base), urllib.parse.urlsplit(url)
    except ValueError:  # `http://[zz/…`: a bracketed host that is no IPv6 address
        raise HttpError(where, f"the Link header holds no valid URL ({redact_url_secrets(target)[:200]!r})") from None
    if (there.scheme, there.netloc) != (home.scheme, home.netloc):
        raise HttpError(where, f"the Link header points to another host ({there.netloc.rpartition('@')[2]})")
    # A next page is the same list with another query; a path of the server's choosing (`..`
    # included, which urllib3 would resolve) would make the crawl ask for something else.
    if there.path != path or not target.isascii() or not target.isprintable():
        shown = redact_url_secrets(f"//{home.netloc}{target[:200]}")[len(home.netloc) + 2 :]
        raise HttpError(where, f"the Link header points away from {path} ({shown!r})")
    return url


def _page_entries(body: bytes, key: str, what: str, page: int, left: int, max_entries: int) -> list[str]:
    """The list of `key` of one page, of which `left` more may be taken: a page that may hold more
    values than that (and what a registry lists beside them) is refused before it is parsed."""
    bound = left + _PAGE_EXTRA_VALUES
    if configbounds.too_many_values(body, bound):
        raise HttpError(
            what,
            f"page {page} may list more than the {max_entries:,} {key} a listing may hold: "
            f"it holds more than {bound:,} values",
        )
    try:
        doc = loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # `[[[[…`: too deep for the parser
        raise HttpError(what, f"the answer is not valid JSON ({str(exc).splitlines()[0]})") from None
    entries = doc.get(key) if isinstance(doc, dict) else None
    if entries is None and isinstance(doc, dict) and key in doc:
        entries = []  # distribution writes "tags": null for a repository without tags
    if not isinstance(entries, list):
        raise HttpError(what, f"the answer has no list of {key}")
    if not all(type(e) is str for e in entries):
        # Skipped one by one as invalid names are, so the valid entries beside them are kept.
        entries = [e if type(e) is str else _not_a_string(e) for e in entries]
    return entries


def _not_a_string(entry: object) -> str:
    """A listed value that is no string, as text no tag or repository name can be ('<' is in neither)."""
    if type(entry) is LongInteger:
        return f"<{entry}>"
    try:
        return f"<{json.dumps(entry)[:100]}>"
    except (ValueError, TypeError, RecursionError):  # TypeError: a LongInteger inside
        return f"<{type(entry).__name__}>"


def _shown(text: str, limit: int = 80) -> str:
    """A name from a registry, quoted on one line, long ones cut short."""
    return repr(text if len(text) <= limit else text[:limit] + "…")


def _as_source_error(where: str, exc: HttpError | SourceError) -> SourceError:
    if isinstance(exc, SourceError):
        return exc
    error_class = _HostDownError if isinstance(exc, HostDown) else SourceError
    if exc.where == where:
        reason = exc.reason
    elif exc.where.startswith(f"{where}: "):  # what was asked, within `where`: GET manifest, …
        reason = f"{exc.where[len(where) + 2 :]}: {exc.reason}"
    else:
        reason = str(exc)
    return error_class(where, reason)


class _HostDownError(SourceError):
    """A request not sent because the registry host is given up on: one line per repository is enough."""


@dataclass
class Fetched:
    tag: str
    digest: str
    data: bytes | None  # None after a HEAD
    media_type: str


class _Budget:
    """Bytes that threads take from one allowance until it runs out."""

    def __init__(self, allowance: int):
        self.left = allowance
        self._lock = threading.Lock()

    def take(self, size: int) -> bool:
        with self._lock:
            if size > self.left:
                return False
            self.left -= size
            return True


@dataclass
class RepoState:
    name: str
    known: dict[str, str]  # tag -> digest, from the store
    indexed: set[str]  # manifest digests the store already has for this repository


@dataclass
class Stats:
    repositories: int = 0
    tags: int = 0
    fetched: int = 0
    unchanged: int = 0
    retagged: int = 0
    removed: int = 0


# A manifest to walk: its digest, its bytes (None: fetch them by digest), media type, and its tags.
Walk = tuple[str, bytes | None, str, list[str]]

# One sequential piece of a crawl, run by `interleave`: it yields each future it has to wait for.
Flow = Iterator[Future]


def interleave(flows: Iterable[Flow], out: deque, window: int | None = None) -> Iterator:
    """Runs many flows at once on the calling thread, and yields what they put in `out` as they go.

    A flow is a generator that submits work to a pool and yields each future it needs before it can
    go on; it is resumed once that future is done, and reads its result. Meanwhile the other flows
    run, so each flow is straight-line code while the pool's threads stay busy across all of them.
    A future is waited on by one flow. Futures come back through one queue, in the order they
    finish: waiting on thousands of futures at once (`concurrent.futures.wait`, `as_completed`)
    costs O(n) per wake-up. Closing this generator closes the flows still waiting; the work they
    left queued is the pool's to cancel, by its owner's shutdown.

    `flows` is read lazily, and with a `window` (at least 1) at most that many flows are under way
    at once: a flow and the work it queues cost memory until it ends, so a catalog of a million
    repositories must not start them all before the first is done. The next flow starts as one ends.
    """
    finished: queue.SimpleQueue[Future] = queue.SimpleQueue()
    waiting: dict[Future, Flow] = {}
    pending = iter(flows)
    more = True  # `pending` may have flows left

    def resume(flow: Flow) -> None:
        for future in flow:
            if not future.done():
                waiting[future] = flow
                future.add_done_callback(finished.put)
                return

    def start() -> None:
        """Start flows until `window` wait; a flow that ends at once still takes its turn, so a
        round starts at most `window` before what they found is handed on."""
        nonlocal more
        for _ in itertools.count() if window is None else range(len(waiting), window):
            flow = next(pending, None)
            if flow is None:
                more = False
                return
            resume(flow)

    try:
        while True:
            if more:
                start()
            while out:
                yield out.popleft()
            if waiting:
                resume(waiting.pop(finished.get()))
            elif not more:
                return
    finally:
        for flow in waiting.values():
            flow.close()


def all_done(futures: list[Future]) -> Future:
    """A future done once all of `futures` are: a flow waiting on many wakes once, not once each."""
    done: Future = Future()
    left = [len(futures)]
    lock = threading.Lock()

    def one(_: Future) -> None:
        with lock:
            left[0] -= 1
            last = left[0] == 0
        if last:
            done.set_result(None)

    if not futures:
        done.set_result(None)
    for future in futures:
        future.add_done_callback(one)
    return done


# What the pool runs first: walking what was fetched, then listing and fetching.
WALK, FETCH = 0, 1


class Pool:
    """`workers` threads that take work by priority (lowest first), then in the order it came."""

    def __init__(self, workers: int, name: str):
        self._queue: list = []
        self._order = itertools.count()
        self._ready = threading.Condition(threading.Lock())
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"{name}_{n}", daemon=True) for n in range(workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, priority: int, fn: Callable, *args) -> Future:
        future: Future = Future()
        with self._ready:
            if self._closed:
                raise RuntimeError("the pool is shut down")
            heapq.heappush(self._queue, (priority, next(self._order), future, fn, args))
            self._ready.notify()
        return future

    def _work(self) -> None:
        while True:
            with self._ready:
                while not self._queue and not self._closed:
                    self._ready.wait()
                if not self._queue:
                    return
                _, _, future, fn, args = heapq.heappop(self._queue)
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args)
            except BaseException as exc:  # the flow waiting on it reads it, as from any future
                future.set_exception(exc)
            else:
                future.set_result(result)

    def shutdown(self, cancel_futures: bool = True, wait: bool = True) -> None:
        """Stop taking work; queued work is cancelled (or, without `cancel_futures`, run); `wait`: the threads end."""
        with self._ready:
            self._closed = True
            dropped, self._queue = (self._queue, []) if cancel_futures else ([], self._queue)
            self._ready.notify_all()
        for entry in dropped:
            entry[2].cancel()
        for thread in self._threads if wait else ():
            if thread is not threading.current_thread():
                thread.join()


class ConfigCache:
    """Config blobs by repository and digest, verified before they are kept.

    Per repository, as skopeo and crane read them: a registry serves a blob of one repository only
    if that repository holds it. Shared across repositories, a config missing from one was taken
    from another whenever that one's thread fetched it first, and the same registry crawled twice
    gave two stores and two exit codes."""

    def __init__(self, limit: int = _CONFIG_CACHE_BYTES):
        self.limit = limit
        self.size = 0
        self._blobs: dict[tuple[str, str], bytes] = {}
        self._lock = threading.Lock()
        self._fetching = KeyedLocks()

    def fetch_once(self, digest: str, fetch: Callable[[], bytes], repository: str = "") -> bytes:
        """The cached blob, or `fetch()` run by one thread while the others wanting it wait.

        A thread that waited finds the blob cached, or fetches it in turn when it was not kept
        (too big for what is left of the cache, or not matching its digest)."""
        key = (repository, digest)
        cached = self._blobs.get(key)
        if cached is not None:
            return cached
        with self._fetching.hold(key):
            cached = self._blobs.get(key)
            if cached is not None:
                return cached
            data = fetch()
            self.put(digest, data, repository)
            return data

    def put(self, digest: str, data: bytes, repository: str = "") -> None:
        if not _is_digest_of(digest, data):
            return
        with self._lock:
            if (repository, digest) not in self._blobs and self.size + len(data) <= self.limit:
                self._blobs[repository, digest] = data
                self.size += len(data)


class HttpBlobs:
    """A BlobStore over one repository of a registry, for `walk`.

    Sizes come from the descriptors of manifests already read: the registry accepted those
    manifests only with their blobs present, and asking it again per layer would cost one request
    per layer for nothing. Manifests are fetched from /manifests/, everything else from /blobs/.
    """

    def __init__(self, crawl: "Crawl", repository: str, top_digest: str, top_data: bytes, where: str):
        self.crawl = crawl
        self.repository = repository
        self.where = where
        self.manifests: dict[str, bytes] = {top_digest: top_data}
        self.declared: dict[str, tuple[str, int, str]] = {}
        self._register(top_data)

    def _register(self, data: bytes) -> None:
        if configbounds.too_many_values(data):
            return  # the walk refuses it
        try:
            doc = loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return
        if not isinstance(doc, dict):
            return

        def note(raw, kind):
            if isinstance(raw, dict) and isinstance(raw.get("digest"), str) and type(raw.get("size")) is int:
                media_type = raw.get("mediaType") if isinstance(raw.get("mediaType"), str) else ""
                self.declared.setdefault(raw["digest"], (kind, raw["size"], media_type))

        children, layers = doc.get("manifests"), doc.get("layers")
        for child in children if isinstance(children, list) else ():
            note(child, "manifest")
        note(doc.get("config"), "config")
        for layer in layers if isinstance(layers, list) else ():
            note(layer, "layer")

    def blob_size(self, digest: str) -> int | None:
        data = self.manifests.get(digest)
        if data is not None:
            return len(data)
        entry = self.declared.get(digest)
        if entry is None:
            return None
        kind, size, media_type = entry
        if kind == "config" and media_type not in mt.IMAGE_CONFIGS and size > MAX_JSON_BYTES:
            return None  # an artifact's payload, not JSON to parse
        return size

    def read_blob(self, digest: str, limit: int) -> bytes:
        data = self.manifests.get(digest)
        if data is not None:
            return data
        kind = self.declared.get(digest, ("", 0, ""))[0]
        if kind == "layer":
            raise SourceError(self.where, f"refusing to download layer {digest}")
        if kind == "manifest":
            try:
                data, _, _ = self.crawl.get_manifest(self.repository, digest, self.where)
            except HttpError as exc:  # one missing child costs that child, not the index and its siblings
                raise _as_source_error(self.where, exc) from None
            self.manifests[digest] = data
            self._register(data)
            return data
        return self.crawl.get_config(self.repository, digest, limit, self.where)


class Crawl:
    """One run of a registry source: the pool, the client and the bookkeeping of one crawl."""

    def __init__(
        self,
        source: "RegistrySource",
        ctx: Context,
        conf: registries_conf.RegistriesConf | None = None,
        mirror: registries_conf.RegistryEntry | None = None,
    ):
        self.source = source
        self.ctx = ctx
        self.target = source.target
        self.options = source.options
        self.registry = self.target.registry
        self.spec = source.location
        self.conf = conf if conf is not None else registries_conf.RegistriesConf()
        self._moved: registries_conf.RegistryEntry | None = None  # the entry that moves the crawl
        self._served_path = ""  # the namespace the served host holds the registry's repositories in
        # the host that serves the images: the registry's, or where registries.conf moves it
        self.served = self._served_by(self.target.repository, mirror)
        self.client = RegistryClient(self.served, _api_host(self.spec, self.served), self.options, self._credentials())
        self.configs = ConfigCache()
        self.stats = Stats()
        self.store = source.store if _is_incremental_store(source.store) else None
        self._down_reported: set[str] = set()
        self._pool: Pool | None = None
        self._out: deque = deque()  # what the flows found, for `interleave` to hand on

    def _served_by(self, repository: str, mirror: registries_conf.RegistryEntry | None) -> str:
        """The host that serves `repository` (the whole registry for ''), by registries.conf, as
        containers/image finds it: blocked, insecure, and a location (or the `mirror` asked
        for) that another host or namespace serves. Sets `_moved` and `_served_path`, and adds
        an insecure host to the --insecure-registry ones."""
        name = f"{self.registry}/{repository}" if repository else self.registry
        entry = self.conf.find(name)
        served_name = name
        if entry is not None and entry.blocked:
            raise SourceError(self.spec, _blocked(entry))
        insecure_mirror = mirror is not None and mirror.insecure
        entry = mirror or entry
        if entry is not None and entry.location and entry.location != entry.prefix:
            served_name = registries_conf.rewritten(entry, name)
            try:
                parse_reference(served_name if repository else f"{served_name}/probe")
            except ImgdexError as exc:
                where = f"{entry.origin} has {entry.prefix} served as {entry.location}"
                raise SourceError(self.spec, f"{where}, which makes {served_name!r}: {exc}") from None
            self._moved = entry
            if not repository:
                self._served_path = served_name.partition("/")[2]
            entry = self.conf.find(served_name)
            if entry is not None and entry.blocked:
                raise SourceError(self.spec, _blocked(entry))
        host = served_name.partition("/")[0]
        served = DOCKER_HUB if is_docker_hub(host) else host.lower()
        insecure = insecure_mirror or (entry is not None and entry.insecure)
        if insecure and not is_insecure(served, self.options.insecure_registries):
            hosts = (*self.options.insecure_registries, served)
            self.options = dataclasses.replace(self.options, insecure_registries=hosts)
        return served

    def served_repository(self, repository: str) -> str:
        """The path on the served host of one of the registry's repositories."""
        if self._moved is None:
            return repository
        return registries_conf.rewritten(self._moved, f"{self.registry}/{repository}").partition("/")[2]

    def _listed_repository(self, served: str) -> str | None:
        """The registry's name for a repository the served host's catalog lists; None for one
        outside the namespace registries.conf moves the registry into."""
        if not self._served_path:
            return served
        head = self._served_path + "/"
        return served[len(head) :] if served.startswith(head) else None

    def _refusal(self, repository: str) -> str:
        """Why registries.conf keeps a repository of the catalog from being crawled here, or ''."""
        entry = self.conf.find(f"{self.registry}/{repository}")
        if entry is not None and "/" in entry.prefix:  # not the registry's own entry, applied to the whole crawl
            if entry.blocked:
                return _blocked(entry)
            if entry.location and entry.location != entry.prefix:
                return (
                    f"{entry.origin} has {entry.prefix} served as {entry.location}, which a crawl of the "
                    f"whole registry does not follow: crawl docker://{self.registry}/{repository}"
                )
        if self._moved is not None:
            served = self.conf.find(f"{self.served}/{self.served_repository(repository)}")
            if served is not None and served.blocked:
                return _blocked(served)
        return ""

    def _credentials(self) -> Credentials | None:
        options = self.options
        if options.username:
            if options.password is None:
                raise SourceError(
                    self.spec,
                    "--username needs a password: give it on stdin with --password-stdin, or in IMGDEX_PASSWORD",
                )
        elif options.password is not None:
            raise SourceError(self.spec, "a password was given without --username")
        try:
            # as containers/image, credentials given for a registry go to no other host that serves it
            if (options.username or options.registry_token) and self.served == self.registry:
                origin = "--username" if options.username else "the registry token given"
                return Credentials(
                    options.username, options.password or "", origin, registry_token=options.registry_token
                )
            repository = self.served_repository(self.target.repository) if self.target.repository else ""
            return find_credentials(self.served, repository, options.auth_files)
        except AuthError as exc:
            raise SourceError(self.spec, str(exc)) from None

    # -------------------------------------------------------------- HTTP calls (worker threads)

    def _where(self, repository: str, tag: str = "", digest: str = "") -> str:
        out = f"{self.registry}/{repository}"
        return out + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")

    def _path(self, repository: str, kind: str, reference: str, where: str) -> str:
        """`/v2/REPO/KIND/REF`, from names that passed Docker's grammar only."""
        if not is_valid_repository(repository):
            raise HttpError(where, f"refusing to request repository {_shown(repository)}: {_NOT_A_NAME}")
        if kind == "blobs" and not is_valid_digest(reference):
            raise HttpError(where, f"refusing to request blob {_shown(reference)}: not a valid digest")
        if kind == "manifests" and not (is_valid_tag(reference) or is_valid_digest(reference)):
            raise HttpError(where, f"refusing to request manifest {_shown(reference)}: not a valid tag or digest")
        return f"/v2/{repository}/{kind}/{reference}"

    def get_manifest(
        self, repository: str, reference: str, where: str, method: str = "GET"
    ) -> tuple[bytes | None, str, str]:
        """(bytes or None for HEAD, the registry's digest or '', media type or '')."""
        served = self.served_repository(repository)
        reply = self.client.request(
            method,
            self._path(served, "manifests", reference, where),
            scope=repository_scope(served),
            what=f"{where}: {method} manifest",
            limit=MAX_JSON_BYTES,
            headers={"Accept": MANIFEST_ACCEPT},
        )
        if reply.status != 200:
            detail = registry_error_text(reply.body)
            raise HttpError(
                where, f"{method} manifest {reference}: {reply.status}{' ' + detail if detail else ''}", reply.status
            )
        digest = reply.headers.get("Docker-Content-Digest", "").strip()
        if digest and not is_valid_digest(digest):
            header = f"the Docker-Content-Digest header {_shown(digest)}"
            raise HttpError(where, f"{method} manifest {reference}: {header} is not a digest")
        return (None if method == "HEAD" else reply.body), digest, _media_type(reply.headers.get("Content-Type", ""))

    def get_config(self, repository: str, digest: str, limit: int, where: str) -> bytes:
        return self.configs.fetch_once(digest, lambda: self._fetch_blob(repository, digest, limit, where), repository)

    def _fetch_blob(self, repository: str, digest: str, limit: int, where: str) -> bytes:
        served = self.served_repository(repository)
        try:
            reply = self.client.request(
                "GET",
                self._path(served, "blobs", digest, where),
                scope=repository_scope(served),
                what=f"{where}: GET blob {digest}",
                limit=limit,
            )
        except HttpError as exc:
            raise _as_source_error(where, exc) from None
        if reply.status != 200:
            detail = registry_error_text(reply.body)
            raise SourceError(where, f"GET blob {digest}: {reply.status}{' ' + detail if detail else ''}")
        return reply.body

    def head_blob_size(self, repository: str, digest: str, where: str) -> int:
        served = self.served_repository(repository)
        try:
            reply = self.client.request(
                "HEAD",
                self._path(served, "blobs", digest, where),
                scope=repository_scope(served),
                what=f"{where}: HEAD blob {digest}",
                limit=0,
            )
        except HttpError as exc:
            raise _as_source_error(where, exc) from None
        length = decimal(reply.headers.get("Content-Length", ""))
        if reply.status != 200 or length is None:
            raise SourceError(where, f"HEAD blob {digest}: {reply.status}, no size")
        return length

    def _paged(
        self, path: str, key: str, scope: str, what: str, limit: int, max_entries: int
    ) -> tuple[list[str], HttpError | None]:
        """Every entry of a paged list (`repositories` or `tags`), at most `max_entries` of them, and
        the error that cut it short (None if none).

        What a listing holds is bounded whatever the registry sends: the entries, one page at a time,
        and a digest of each URL asked for; and its pages may add up to so many bytes."""
        found: dict[str, None] = {}  # the entries in order, and which were seen, in one table
        asked: set[bytes] = set()  # digests of the URLs asked for, ~100 bytes each however long the URL
        max_bytes = max_entries * _LISTING_BYTES_PER_ENTRY
        received = 0
        url = path
        pages = idle = 0
        while url:
            absolute = url if "://" in url else self.client.base + url
            digest = hashlib.blake2b(absolute.encode("utf-8", "surrogatepass"), digest_size=16).digest()
            if digest in asked:
                return list(found), HttpError(what, f"the Link pagination loops back to {absolute} after {pages} pages")
            asked.add(digest)
            pages += 1
            if pages > _MAX_PAGES:
                return list(found), HttpError(what, f"more than {_MAX_PAGES} pages")
            try:
                reply = self.client.request("GET", url, scope=scope, what=what, limit=limit)
                if reply.status != 200:
                    detail = registry_error_text(reply.body)
                    return list(found), HttpError(what, f"{reply.status}{' ' + detail if detail else ''}", reply.status)
                received += len(url) + len(reply.body)
                if received > max_bytes:
                    error = f"the pages add up to more than {max_bytes:,} bytes (after {pages} pages)"
                    return list(found), HttpError(what, error)
                entries = _page_entries(reply.body, key, what, pages, max_entries - len(found), max_entries)
                before = len(found)
                for entry in entries:
                    if entry not in found:
                        if len(found) == max_entries:
                            error = f"more than {max_entries:,} {key} listed (after {pages} pages)"
                            return list(found), HttpError(what, error)
                        found[entry] = None
                url = _next_link(reply, what, self.client.base, path)
                idle = 0 if len(found) > before else idle + 1
                if url and idle >= _MAX_IDLE_PAGES:
                    error = (
                        f"the Link pagination goes on with no new {key} in {idle} pages in a row (after {pages} pages)"
                    )
                    return list(found), HttpError(what, error)
                entries, reply = [], None  # not held while the next page is read
            except HttpError as exc:
                return list(found), exc
        return list(found), None

    # -------------------------------------------------------------- tasks

    def _list_tags(self, repository: str) -> tuple[list[str], HttpError | None]:
        what = f"{self.registry}/{repository}: GET tags/list"
        served = self.served_repository(repository)
        if not is_valid_repository(served):
            return [], HttpError(what, f"refusing to request repository {_shown(served)}: {_NOT_A_NAME}")
        return self._paged(f"/v2/{served}/tags/list", "tags", repository_scope(served), what, CATALOG_LIMIT, _MAX_TAGS)

    def _fetch_kept(self, state: RepoState, tag: str, budget: "_Budget") -> Fetched | SourceError:
        """`_fetch_tag`, keeping the manifest's bytes while `budget` lasts. Bytes let go must match
        their digest first, which the walk's second fetch is then checked against."""
        fetched = self._fetch_tag(state, tag)
        if not isinstance(fetched, Fetched) or fetched.data is None or budget.take(len(fetched.data)):
            return fetched
        if _is_signed(fetched.media_type, fetched.data):
            # Its digest is not that of these bytes: without one from the registry, keep them.
            return Fetched(tag, fetched.digest, None, fetched.media_type) if fetched.digest else fetched
        wrong = _not_its_digest(fetched.digest, fetched.data)
        if wrong:
            return SourceError(self._where(state.name, tag), wrong)
        digest = fetched.digest or "sha256:" + hashlib.sha256(fetched.data).hexdigest()
        return Fetched(tag, digest, None, fetched.media_type)

    def _fetch_tag(self, state: RepoState, tag: str) -> Fetched | SourceError:
        where = self._where(state.name, tag)
        try:
            if state.known:  # a re-crawl: a HEAD tells whether the tag moved
                try:
                    _, digest, media_type = self.get_manifest(state.name, tag, where, "HEAD")
                except HttpError as exc:
                    # Some registries and proxies refuse HEAD on manifests (405, 400): the GET
                    # below tells as well, as crane falls back on one. A tag that is gone (404)
                    # or a host that does not answer would only fail again.
                    if exc.status is None or exc.status == 404:
                        raise
                    digest = ""
                if digest:
                    return Fetched(tag, digest, None, media_type)
            data, digest, media_type = self.get_manifest(state.name, tag, where)
            return Fetched(tag, digest, data, media_type)
        except HttpError as exc:
            return _as_source_error(where, exc)

    def _walk(
        self, repository: str, digest: str, data: bytes | None, media_type: str, tags: list[str]
    ) -> tuple[list, list[str]]:
        if len(tags) == 1:
            where = self._where(repository, tags[0])
        else:
            where = self._where(repository, digest=digest) + (f" (tags {', '.join(tags)})" if tags else "")
        notes: list[str] = []
        asked = data is None  # fetched by its digest here; else the tag's answer named it
        try:
            if data is None:
                data, served, media_type = self.get_manifest(repository, digest, where)
                if served and served != digest and not _also_names(served, digest, data):
                    return [
                        SourceError(where, f"asked for manifest {digest}, the registry answered with {served}")
                    ], notes
            names = [Reference(self.registry, repository, tag) for tag in tags] or [
                Reference(self.registry, repository)
            ]
            ctx = dataclasses.replace(self.ctx, note=notes.append)
            if _is_signed(media_type, data):
                items = schema1_records(
                    data, digest, media_type, names, ctx, where, lambda d: self.head_blob_size(repository, d, where)
                )
                return items, notes
            wrong = _not_its_digest(digest, data, asked)
            if wrong:
                return [SourceError(where, wrong)], notes
            blobs = HttpBlobs(self, repository, digest, data, where)
            return list(walk(blobs, Blob(digest, len(data), media_type), names, ctx, where)), notes
        except (SourceError, HttpError) as exc:
            return [_as_source_error(where, exc)], notes
        except Exception as exc:  # a malformed answer must cost one image, never the crawl
            return [SourceError(where, f"unexpected {type(exc).__name__}: {exc}")], notes

    # -------------------------------------------------------------- the crawl (calling thread)

    def run(self) -> Iterator[ImageRecord | SourceError | TagMoves | TagsRetired]:
        # A registry may echo a credential anywhere (a Location's or Link's path, an error body): no
        # message of the crawl, error or note, quotes one.
        note, secrets = self.ctx.note, self.client.auth.secrets
        self.ctx = dataclasses.replace(self.ctx, note=lambda message: note(scrub(message, secrets())))
        try:
            self.client.ping()
        except HttpError as exc:
            raise SourceError(self.spec, scrub(str(exc), secrets())) from None
        self._pool = Pool(max(1, self.options.jobs), "imgdex-registry")
        try:
            for item in self._crawl():
                if isinstance(item, SourceError):
                    item = SourceError(scrub(item.where, secrets()), scrub(item.reason, secrets()))
                yield item
        finally:
            # after an error, or when the caller stops reading, the requests not yet sent never are
            self._pool.shutdown(cancel_futures=True)
            self.client.close()
        s = self.stats
        self.ctx.note(
            f"{self.spec}: {s.repositories} repositories, {s.tags} tags; {s.fetched} manifests fetched, "
            f"{s.unchanged} tags unchanged, {s.retagged} retagged, {s.removed} removed"
        )

    def _crawl(self) -> Iterator[ImageRecord | SourceError | TagMoves | TagsRetired]:
        """The catalog's repositories, or the repository, tag or image asked for: a flow each, interleaved."""
        target = self.target
        if not target.repository:
            yield from self._catalog()
            return
        name = target.repository
        state = RepoState(name, {}, set())
        states = self._states(name)
        try:
            for held, tags, exact in states:
                if held == name:  # the prefix also holds the repositories below it
                    state = RepoState(name, tags, exact)
                    break
        finally:
            states.close()
        self.stats.repositories = 1
        if target.digest:
            if target.digest in state.indexed:
                self.stats.unchanged += 1
                return
            flow = self._walks(name, [(target.digest, None, "", [])])
        elif target.tag:  # one tag is not the list of tags: the others are not retired
            self.stats.tags += 1
            flow = self._tags(state, [target.tag])
        else:
            flow = self._repository(state)
        yield from interleave([flow], self._out)

    def _catalog(self) -> Iterator[ImageRecord | SourceError | TagMoves | TagsRetired]:
        """Every repository of the catalog under the prefix and in this shard; those of the store that
        the catalog no longer lists have all their tags retired."""
        prefix = self.options.repository_prefix.strip("/")
        # No `n`: distribution refuses an n above its catalog.maxentries, and every registry pages by Link anyway.
        repositories, error = self._paged(
            "/v2/_catalog",
            "repositories",
            CATALOG_SCOPE,
            f"{self.registry}: GET /v2/_catalog",
            CATALOG_LIMIT,
            _MAX_REPOSITORIES,
        )
        if error:
            if not repositories:
                raise SourceError(self.spec, f"cannot list the repositories: {error}")
            yield SourceError(f"{self.registry} catalog", str(error))
        listed = (self._listed_repository(name) for name in self._valid_repositories(repositories))
        repositories = [name for name in listed if name and under_prefix(name, prefix) and self.owns(name)]
        self.stats.repositories = len(repositories)
        # Repositories and the store's states meet in name order, so the store's side is read as the
        # crawl goes; those of the store that the catalog no longer lists have their tags retired as
        # they are passed (a catalog cut short does not say which repositories are gone).
        repositories.sort()
        retire = not error and self.store is not None
        states = self._states(prefix)
        pending = next(states, None)

        def state_of(name: str | None) -> RepoState | None:
            nonlocal pending
            while pending is not None and (name is None or pending[0] < name):
                held, tags, _ = pending
                if retire and tags and self.owns(held):
                    self._out.append(TagsRetired(self.registry, held, tuple(sorted(tags))))
                    self.stats.removed += len(tags)
                pending = next(states, None)
            if name is None:
                return None
            if pending is not None and pending[0] == name:
                state, pending = RepoState(name, pending[1], pending[2]), next(states, None)
                return state
            return RepoState(name, {}, set())

        def flows() -> Iterator[Flow]:
            for name in repositories:
                yield self._repository(state_of(name))
            state_of(None)

        try:
            yield from interleave(flows(), self._out, window=_REPOSITORY_WINDOW * max(1, self.options.jobs))
        finally:
            states.close()

    def _repository(self, state: RepoState) -> Flow:
        """One repository: list its tags, retire those that vanished, crawl the others."""
        refusal = self._refusal(state.name) if not self.target.repository else ""
        if refusal:
            self._emit(state.name, [SourceError(self._where(state.name), refusal)])
            return
        listing = self._pool.submit(FETCH, self._list_tags, state.name)
        yield listing
        tags, error = listing.result()
        if error:
            self._emit(state.name, [_as_source_error(self._where(state.name), error)])
            return
        tags = self._valid_tags(state.name, tags)
        self.stats.tags += len(tags)
        vanished = sorted(set(state.known) - set(tags))
        if vanished and self.store is not None:
            self._out.append(TagsRetired(self.registry, state.name, tuple(vanished)))
            self.stats.removed += len(vanished)
        yield from self._tags(state, tags)

    def _tags(self, state: RepoState, tags: list[str]) -> Flow:
        """Fetch every tag's manifest at once (a HEAD on a re-crawl), then walk the manifests that changed.

        A repository's tags are settled together: which of them moved is known only once all are in."""
        budget = _Budget(_KEPT_MANIFEST_BYTES)
        fetches = [self._pool.submit(FETCH, self._fetch_kept, state, tag, budget) for tag in tags]
        yield all_done(fetches)
        results = [fetch.result() for fetch in fetches]
        self._emit(state.name, [result for result in results if isinstance(result, SourceError)])
        claims, walks = self._group(state, [result for result in results if isinstance(result, Fetched)])
        if claims:
            self._out.append(TagMoves(self.registry, tuple(claims)))
        yield from self._walks(state.name, walks)

    def _walks(self, repository: str, walks: list[Walk]) -> Flow:
        """Walk every manifest at once; what each walk found is handed on in order."""
        self.stats.fetched += len(walks)
        futures = [self._pool.submit(WALK, self._walk, repository, *walk) for walk in walks]
        for future in futures:
            yield future
            items, notes = future.result()
            for note in notes:
                self.ctx.note(note)
            self._emit(repository, items)

    def _group(self, state: RepoState, fetched: list[Fetched]) -> tuple[list[tuple[str, str, str]], list[Walk]]:
        """The tags by manifest: (claims of the tags that only moved to a manifest already indexed, as
        one TagMoves; the manifests to walk)."""
        by_digest: dict[str, list[Fetched]] = {}
        for one in fetched:
            key = one.digest or _digest_of(one.data or b"", one.media_type)
            by_digest.setdefault(key, []).append(one)
        claims: list[tuple[str, str, str]] = []
        walks: list[Walk] = []
        for digest, group in by_digest.items():
            tags = sorted(f.tag for f in group)
            exact = digest in state.indexed and self.store is not None
            # a tag is unchanged only when the store already holds the exact record it points at
            changed = [t for t in tags if not exact or state.known.get(t) != digest]
            self.stats.unchanged += len(tags) - len(changed)
            if not changed:
                continue
            if exact:
                claims += [(state.name, tag, digest) for tag in changed]
                self.stats.retagged += len(changed)
                continue
            with_data = next((f for f in group if f.data is not None), None)
            if with_data is None:
                walks.append((digest, None, "", tags))
            else:
                walks.append((digest, with_data.data, with_data.media_type, tags))
        return claims, walks

    def _emit(self, repository: str, items: Iterable) -> None:
        self._out.extend(self._report(repository, items))

    def _states(self, prefix: str) -> Iterator[tuple[str, dict[str, str], set[str]]]:
        """(repository, tag -> digest, exact manifest digests) from the store, in name order.

        The store answers exact digests from exact records only (exactness >= 3). A tag is left
        alone only when its digest is one of them, so an engine's record (diff_ids, no config
        size) of a manifest the registry serves is replaced by the exact one, as promised.
        """
        if self.store is not None:
            yield from self.store.repository_states(self.registry, prefix)

    def _valid_repositories(self, names: list[str]) -> list[str]:
        out = []
        for name in names:
            if is_valid_repository(name) and len(self.registry) + 1 + len(name) <= NAME_MAX:
                out.append(name)
            else:
                self.ctx.note(f"{self.registry}: skipped repository {_shown(name)} from the catalog: {_NOT_A_NAME}")
        return out

    def _valid_tags(self, repository: str, tags: list[str]) -> list[str]:
        out = []
        for tag in tags:
            if is_valid_tag(tag):
                out.append(tag)
            else:
                self.ctx.note(f"{self._where(repository)}: skipped tag {_shown(tag)} from tags/list: not a valid tag")
        return out

    def _report(self, repository: str, errors: Iterable) -> list:
        """The errors worth a line: once the host is given up on, one line per repository says so."""
        out = []
        for error in errors:
            if isinstance(error, _HostDownError):
                if repository in self._down_reported:
                    continue
                self._down_reported.add(repository)
            out.append(error)
        return out

    def owns(self, repository: str) -> bool:
        """Whether this crawl's shard takes the repository: all its tags are one shard's, so
        that shard alone decides which of them moved or vanished."""
        return in_shard(self.ctx.shard, repository_key(self.registry, repository))


def _is_signed(media_type: str, data: bytes) -> bool:
    """A schema 1 manifest, by its media type or, without one, its bytes: its digest is that of
    its payload without the signatures, not of the bytes served."""
    return media_type in mt.SCHEMA1 or (not media_type and is_schema1(data))


def _digest_of(data: bytes, media_type: str) -> str:
    """The digest of a manifest the registry gave none for: a signed schema1 one is named by its
    payload, and its walk compares that name with the payload as with one the registry gave."""
    if _is_signed(media_type, data):
        return payload_digest(data)
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _also_names(served: str, asked: str, data: bytes) -> bool:
    """Whether `served` is a digest of `data` by another algorithm than `asked`: registries answer
    a manifest asked for by its sha512 digest with its sha256 one. The walk checks `asked`."""
    return served.partition(":")[0] != asked.partition(":")[0] and _is_digest_of(served, data)


def _is_digest_of(digest: str, data: bytes) -> bool:
    algorithm = digest.partition(":")[0]
    return algorithm in DIGEST_ALGORITHMS and digest == f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def _not_its_digest(digest: str, data: bytes, asked: bool = False) -> str:
    """Why manifest bytes do not match the sha256 digest the registry gave for them (or, `asked`,
    that they were requested by); "" when they do (or the digest is of another algorithm, which the
    walk checks)."""
    if not digest.startswith("sha256:"):
        return ""
    hashed = "sha256:" + hashlib.sha256(data).hexdigest()
    if digest == hashed:
        return ""
    if asked:
        return f"asked for manifest {digest}, but the bytes the registry answered with hash to {hashed}"
    return f"the registry says the manifest is {digest} (Docker-Content-Digest), but its bytes hash to {hashed}"


def _is_incremental_store(store) -> bool:
    return store is not None and callable(getattr(store, "repository_states", None))


class RegistrySource:
    """`docker://…` as a Source. `bind_store` gives it what is indexed (`repository_states`, read
    only), which makes re-crawls incremental: it then yields TagMoves and
    TagsRetired beside records, for the run to hand to the store."""

    kind = "docker"
    reads_layers = False
    reads_index = True

    def __init__(self, location: str, options: RegistryOptions | None = None):
        # parse_target refuses USER:PASSWORD@ (without echoing it), so the location, which becomes
        # every record's source_path, holds no credentials
        self.target = parse_target(location[len(PREFIX) :] if location.startswith(PREFIX) else location)
        self.location = location
        self.options = options or RegistryOptions()
        self.store = None

    def bind_store(self, store) -> None:
        self.store = store

    def records(self, ctx: Context) -> Iterator[ImageRecord | SourceError]:
        target = self.target
        if target.repository and not in_shard(ctx.shard, repository_key(target.registry, target.repository)):
            return iter(())  # another shard's repository: no request, no credential helper run
        try:
            conf = registries_conf.load_once(self.options.registries_conf)
        except SourceError as exc:
            raise SourceError(self.location, f"{exc.where}: {exc.reason}") from None
        entry = conf.find(f"{target.registry}/{target.repository}") if target.repository else None
        if entry is None or entry.blocked or not (target.tag or target.digest):
            return Crawl(self, ctx, conf).run()  # a tag list or a catalog is the registry's own
        mirrors = entry.pull_sources(digested=bool(target.digest))[:-1]
        return self._pulled(ctx, conf, mirrors) if mirrors else Crawl(self, ctx, conf).run()

    def _pulled(
        self, ctx: Context, conf: registries_conf.RegistriesConf, mirrors: list[registries_conf.RegistryEntry]
    ) -> Iterator[ImageRecord | SourceError]:
        """One image from the first of its mirrors that serves it whole, else from the registry,
        whose errors then say how each mirror failed (as containers/image says it)."""
        target = self.target
        name = f"{target.registry}/{target.repository}"
        reference = (f":{target.tag}" if target.tag else "") + (f"@{target.digest}" if target.digest else "")
        failures = []
        for mirror in mirrors:
            there = registries_conf.rewritten(mirror, name) + reference
            notes: list[str] = []  # a mirror that fails leaves no note, only its line in the error
            try:
                items = list(Crawl(self, dataclasses.replace(ctx, note=notes.append), conf, mirror).run())
            except SourceError as exc:
                failures.append(f"[{there}: {exc.reason}]")
                continue
            failed = next((item for item in items if isinstance(item, SourceError)), None)
            if failed is not None:
                failures.append(f"[{there}: {failed.reason}]")
                continue
            for note in notes:
                ctx.note(note)
            ctx.note(f"{self.location}: pulled from the mirror {there}")
            yield from items
            return
        also = f" (mirrors also failed: {' '.join(failures)})"
        try:
            for item in Crawl(self, ctx, conf).run():
                yield SourceError(item.where, item.reason + also) if isinstance(item, SourceError) else item
        except SourceError as exc:
            raise SourceError(exc.where, exc.reason + also) from None
