"""The registry source: `docker://HOST[/REPO[:TAG|@DIGEST]]` over the Docker Registry HTTP API V2.

`docker://HOST` crawls every repository of `/v2/_catalog`; `docker://HOST/REPO` every tag of one
repository; a tag or digest one image. Per tag the manifest is fetched (or, on a re-crawl, only
HEADed), and the shared parser walks it through `HttpBlobs`, which fetches child manifests and
config blobs on demand and never a layer. Work runs in a bounded thread pool; everything that
touches the store stays on the calling thread.

Names and tags a registry lists are checked against Docker's grammar before anything is asked
about them: a request path is built only from valid names, so it is exactly the name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import queue
import re
import threading
import urllib.parse
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
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
    redact_userinfo,
)
from . import mediatypes as mt
from ..shard import in_shard, repository_key
from .parse import MAX_JSON_BYTES, Context, walk
from .registry_auth import CATALOG_SCOPE, Credentials, find_credentials, repository_scope
from .registry_client import (
    CATALOG_LIMIT,
    MANIFEST_ACCEPT,
    RegistryClient,
    RegistryOptions,
    registry_error_text,
)
from .registry_schema1 import schema1_records

PREFIX = "docker://"
_LINK_NEXT = re.compile(r'<([^>]*)>\s*;\s*(?:[^,]*;\s*)*rel="?next"?', re.IGNORECASE)
_MAX_PAGES = 100_000
_CONFIG_CACHE_BYTES = 64 * 1024 * 1024
_KNOWN_MANIFEST_TYPES = mt.INDEXES | mt.MANIFESTS | mt.SCHEMA1
_DIGEST_PREFIXES = tuple(f"{algorithm}:" for algorithm in DIGEST_ALGORITHMS)
_NOT_A_NAME = "not a valid repository name"


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
        if signs and text[signs[-1] + 1 :].startswith(_DIGEST_PREFIXES):
            signs.pop()  # NAME@DIGEST: that @ is the digest's
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
    host_only = text.endswith("/") and "/" not in text.rstrip("/")
    if host_only or ("/" not in text and _looks_like_host(text)):
        host = text.rstrip("/")
        try:
            parse_reference(f"{host}/probe")
        except ImgdexError:
            raise SourceError(spec, f"invalid registry host {host!r}") from None
        registry = DOCKER_HUB if is_docker_hub(host) else host.lower()
        return Target(registry, _api_host(registry))
    try:
        ref = parse_reference(text)
    except ImgdexError as exc:
        raise SourceError(spec, str(exc)) from None
    registry = ref.registry.lower()
    return Target(registry, _api_host(registry), ref.name, ref.tag, ref.digest)


def _api_host(registry: str) -> str:
    return "registry-1.docker.io" if registry == DOCKER_HUB else registry


def under_prefix(name: str, prefix: str) -> bool:
    prefix = prefix.strip("/")
    return not prefix or name == prefix or name.startswith(prefix + "/")


def _media_type(content_type: str) -> str:
    value = (content_type or "").split(";", 1)[0].strip().lower()
    return value if value in _KNOWN_MANIFEST_TYPES else ""


def _next_link(reply, where: str) -> str:
    header = reply.headers.get("Link", "")
    match = _LINK_NEXT.search(header) if header else None
    if not match:
        return ""
    target = match.group(1)
    url = urllib.parse.urljoin(reply.url, target)
    here, there = urllib.parse.urlsplit(reply.url), urllib.parse.urlsplit(url)
    if there.netloc != here.netloc:
        raise HttpError(where, f"the Link header points to another host ({redact_userinfo(url)})")
    # A next page is the same list with another query; a path of the server's choosing (`..`
    # included, which urllib3 would resolve) would make the crawl ask for something else.
    if there.path != here.path or there.scheme != here.scheme or not target.isascii() or not target.isprintable():
        raise HttpError(where, f"the Link header points away from {here.path} ({target[:200]!r})")
    return url


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


@dataclass
class RepoState:
    name: str
    known: dict[str, str]  # tag -> digest, from the store
    indexed: set[str]  # manifest digests the store already has for this repository
    tags: list[str] = field(default_factory=list)
    pending: int = 0
    fetched: list[Fetched] = field(default_factory=list)


@dataclass
class Stats:
    repositories: int = 0
    tags: int = 0
    fetched: int = 0
    unchanged: int = 0
    retagged: int = 0
    removed: int = 0


class ConfigCache:
    """Config blobs by digest, verified before they are kept, shared by every repository of a crawl."""

    def __init__(self, limit: int = _CONFIG_CACHE_BYTES):
        self.limit = limit
        self.size = 0
        self._blobs: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._fetching: dict[str, threading.Lock] = {}

    def fetch_once(self, digest: str, fetch: Callable[[], bytes]) -> bytes:
        """The cached blob, or `fetch()` run by one thread while the others wanting it wait."""
        cached = self._blobs.get(digest)
        if cached is not None:
            return cached
        with self._lock:
            lock = self._fetching.setdefault(digest, threading.Lock())
        with lock:
            cached = self._blobs.get(digest)
            if cached is not None:
                return cached
            data = fetch()
            self.put(digest, data)
            return data

    def put(self, digest: str, data: bytes) -> None:
        algorithm, _, _ = digest.partition(":")
        if algorithm not in DIGEST_ALGORITHMS or f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}" != digest:
            return
        with self._lock:
            if digest not in self._blobs and self.size + len(data) <= self.limit:
                self._blobs[digest] = data
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
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError):
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

    def __init__(self, source: "RegistrySource", ctx: Context):
        self.source = source
        self.ctx = ctx
        self.target = source.target
        self.options = source.options
        self.registry = self.target.registry
        self.spec = source.location
        self.client = RegistryClient(self.registry, self.target.api_host, self.options, self._credentials())
        self.configs = ConfigCache()
        self.stats = Stats()
        self.store = source.store if _is_incremental_store(source.store) else None
        self._futures: dict[Future, Callable] = {}
        self._done: queue.SimpleQueue[Future] = queue.SimpleQueue()
        self._down_reported: set[str] = set()
        self._pool: ThreadPoolExecutor | None = None

    def _credentials(self) -> Credentials | None:
        options = self.options
        if options.username:
            if options.password is None:
                raise SourceError(
                    self.spec,
                    "--username needs a password: give it on stdin with --password-stdin, or in IMGDEX_PASSWORD",
                )
            return Credentials(options.username, options.password, "--username")
        if options.password is not None:
            raise SourceError(self.spec, "a password was given without --username")
        try:
            return find_credentials(self.registry, self.target.repository, options.auth_files)
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
        reply = self.client.request(
            method,
            self._path(repository, "manifests", reference, where),
            scope=repository_scope(repository),
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
        return self.configs.fetch_once(digest, lambda: self._fetch_blob(repository, digest, limit, where))

    def _fetch_blob(self, repository: str, digest: str, limit: int, where: str) -> bytes:
        try:
            reply = self.client.request(
                "GET",
                self._path(repository, "blobs", digest, where),
                scope=repository_scope(repository),
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
        try:
            reply = self.client.request(
                "HEAD",
                self._path(repository, "blobs", digest, where),
                scope=repository_scope(repository),
                what=f"{where}: HEAD blob {digest}",
                limit=0,
            )
        except HttpError as exc:
            raise _as_source_error(where, exc) from None
        length = reply.headers.get("Content-Length", "")
        if reply.status != 200 or not length.isdigit():
            raise SourceError(where, f"HEAD blob {digest}: {reply.status}, no size")
        return int(length)

    def _paged(self, path: str, key: str, scope: str, what: str, limit: int) -> tuple[list[str], HttpError | None]:
        """Every entry of a paged list (`repositories` or `tags`), and the error that cut it short (None if none)."""
        out: list[str] = []
        seen_entries: set[str] = set()
        seen_urls: set[str] = set()
        url = path
        pages = 0
        while url:
            absolute = url if "://" in url else self.client.base + url
            if absolute in seen_urls:
                return out, HttpError(what, f"the Link pagination loops back to {absolute} after {pages} pages")
            seen_urls.add(absolute)
            pages += 1
            if pages > _MAX_PAGES:
                return out, HttpError(what, f"more than {_MAX_PAGES} pages")
            try:
                reply = self.client.request("GET", url, scope=scope, what=what, limit=limit)
                if reply.status != 200:
                    detail = registry_error_text(reply.body)
                    return out, HttpError(what, f"{reply.status}{' ' + detail if detail else ''}", reply.status)
                try:
                    doc = json.loads(reply.body)
                except (ValueError, UnicodeDecodeError) as exc:
                    return out, HttpError(what, f"the answer is not valid JSON ({str(exc).splitlines()[0]})")
                entries = doc.get(key) if isinstance(doc, dict) else None
                if entries is None and isinstance(doc, dict) and key in doc:
                    entries = []  # distribution writes "tags": null for a repository without tags
                if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
                    return out, HttpError(what, f"the answer has no list of {key}")
                for entry in entries:
                    if entry not in seen_entries:
                        seen_entries.add(entry)
                        out.append(entry)
                url = _next_link(reply, what)
            except HttpError as exc:
                return out, exc
        return out, None

    # -------------------------------------------------------------- tasks

    def _fetch_tag(self, state: RepoState, tag: str) -> Fetched | SourceError:
        where = self._where(state.name, tag)
        try:
            if state.known:  # a re-crawl: a HEAD tells whether the tag moved
                _, digest, media_type = self.get_manifest(state.name, tag, where, "HEAD")
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
        try:
            if data is None:
                data, served, media_type = self.get_manifest(repository, digest, where)
                if served and served != digest:
                    return [
                        SourceError(where, f"asked for manifest {digest}, the registry answered with {served}")
                    ], notes
            names = [Reference(self.registry, repository, tag) for tag in tags] or [
                Reference(self.registry, repository)
            ]
            ctx = dataclasses.replace(self.ctx, note=notes.append)
            if media_type in mt.SCHEMA1 or (not media_type and _is_schema1(data)):
                items = schema1_records(
                    data, digest, media_type, names, ctx, where, lambda d: self.head_blob_size(repository, d, where)
                )
                return items, notes
            if digest.startswith("sha256:") and digest != "sha256:" + hashlib.sha256(data).hexdigest():
                return [
                    SourceError(
                        where,
                        f"the registry says the manifest is {digest} (Docker-Content-Digest), "
                        f"but its bytes hash to sha256:{hashlib.sha256(data).hexdigest()}",
                    )
                ], notes
            blobs = HttpBlobs(self, repository, digest, data, where)
            return list(walk(blobs, Blob(digest, len(data), media_type), names, ctx, where)), notes
        except (SourceError, HttpError) as exc:
            return [_as_source_error(where, exc)], notes
        except Exception as exc:  # a malformed answer must cost one image, never the crawl
            return [SourceError(where, f"unexpected {type(exc).__name__}: {exc}")], notes

    # -------------------------------------------------------------- scheduling (calling thread)

    def _submit(self, then: Callable, fn: Callable, *args) -> None:
        assert self._pool is not None
        future = self._pool.submit(fn, *args)
        self._futures[future] = then
        # a completion queue: waiting on thousands of futures at once costs O(n) per wake-up
        future.add_done_callback(self._done.put)

    def _drain(self) -> Iterator[ImageRecord | SourceError]:
        while self._futures:
            future = self._done.get()
            then = self._futures.pop(future)
            yield from then(future.result())

    def run(self) -> Iterator[ImageRecord | SourceError]:
        try:
            self.client.ping()
        except HttpError as exc:
            raise SourceError(self.spec, str(exc)) from None
        self._pool = ThreadPoolExecutor(max_workers=max(1, self.options.jobs), thread_name_prefix="imgdex-registry")
        try:
            yield from self._run()
            yield from self._drain()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self.client.close()
        s = self.stats
        self.ctx.note(
            f"{self.spec}: {s.repositories} repositories, {s.tags} tags; {s.fetched} manifests fetched, "
            f"{s.unchanged} tags unchanged, {s.retagged} retagged, {s.removed} removed"
        )

    def _store_state(self, prefix: str, exact: str = "") -> tuple[dict[str, dict[str, str]], dict[str, set[str]]]:
        """(tag -> digest per repository, exact manifest digests per repository) from the store.

        The store answers `indexed_digests` with exact records only (exactness >= 3). A tag is
        left alone only when its digest is one of them, so an engine's record (diff_ids, no config
        size) of a manifest the registry serves is replaced by the exact one, as promised.
        """
        if self.store is None:
            return {}, {}
        known: dict[str, dict[str, str]] = {}
        for name, tag, digest in self.store.known_tags(self.registry, prefix):
            if not exact or name == exact:
                known.setdefault(name, {})[tag] = digest
        indexed: dict[str, set[str]] = {}
        for name, digest in self.store.indexed_digests(self.registry, prefix):
            if not exact or name == exact:
                indexed.setdefault(name, set()).add(digest)
        return known, indexed

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

    def _run(self) -> Iterator[ImageRecord | SourceError]:
        target = self.target
        if target.repository:
            known, indexed = self._store_state(target.repository, exact=target.repository)
            state = RepoState(
                target.repository, known.get(target.repository, {}), indexed.get(target.repository, set())
            )
            self.stats.repositories = 1
            if target.digest:
                self.stats.tags = 0
                if target.digest in state.indexed:
                    self.stats.unchanged += 1
                    return
                self.stats.fetched += 1
                self._submit(
                    lambda result: self._walked(target.repository, result),
                    self._walk,
                    target.repository,
                    target.digest,
                    None,
                    "",
                    [],
                )
            elif target.tag:
                state.tags = [target.tag]
                self._start_tags(state, [target.tag], complete=False)
            else:
                self._submit(lambda result: self._listed(state, result), self._list_tags, state.name)
            return
        prefix = self.options.repository_prefix.strip("/")
        # No `n`: distribution refuses an n above its catalog.maxentries, and every registry pages by Link anyway.
        repositories, error = self._paged(
            "/v2/_catalog", "repositories", CATALOG_SCOPE, f"{self.registry}: GET /v2/_catalog", CATALOG_LIMIT
        )
        if error:
            if not repositories:
                raise SourceError(self.spec, f"cannot list the repositories: {error}")
            yield SourceError(f"{self.registry} catalog", str(error))
        repositories = [
            name for name in self._valid_repositories(repositories) if under_prefix(name, prefix) and self.owns(name)
        ]
        known, indexed = self._store_state(prefix)
        self.stats.repositories = len(repositories)
        for name in repositories:
            state = RepoState(name, known.get(name, {}), indexed.get(name, set()))
            self._submit(lambda result, state=state: self._listed(state, result), self._list_tags, name)
        if not error and self.store is not None:
            listed = set(repositories)
            for name, tags in known.items():
                if name not in listed and tags and self.owns(name):
                    yield TagsRetired(self.registry, name, tuple(sorted(tags)))
                    self.stats.removed += len(tags)

    def _list_tags(self, repository: str) -> tuple[list[str], HttpError | None]:
        what = f"{self.registry}/{repository}: GET tags/list"
        if not is_valid_repository(repository):
            return [], HttpError(what, f"refusing to request repository {_shown(repository)}: {_NOT_A_NAME}")
        return self._paged(f"/v2/{repository}/tags/list", "tags", repository_scope(repository), what, CATALOG_LIMIT)

    def _listed(self, state: RepoState, result: tuple[list[str], HttpError | None]) -> Iterable:
        tags, error = result
        if error:
            return self._report(state.name, [_as_source_error(self._where(state.name), error)])
        tags = self._valid_tags(state.name, tags)
        state.tags = tags
        self.stats.tags += len(tags)
        return self._start_tags(state, tags, complete=True)

    def _start_tags(self, state: RepoState, tags: list[str], complete: bool) -> list:
        out: list = []
        if complete:
            vanished = sorted(set(state.known) - set(tags))
            if vanished and self.store is not None:
                out.append(TagsRetired(self.registry, state.name, tuple(vanished)))
                self.stats.removed += len(vanished)
        if not complete:
            self.stats.tags += len(tags)
        state.pending = len(tags)
        for tag in tags:
            self._submit(lambda result, state=state: self._tag_done(state, result), self._fetch_tag, state, tag)
        return out

    def _tag_done(self, state: RepoState, result: Fetched | SourceError) -> Iterable:
        state.pending -= 1
        out: list = []
        if isinstance(result, SourceError):
            out = self._report(state.name, [result])
        else:
            state.fetched.append(result)
        if state.pending == 0:
            out += self._group(state)
        return out

    def _group(self, state: RepoState) -> list:
        """Fetches the manifests of the tags that changed; the tags that only moved to a manifest
        already indexed come back as one TagMoves."""
        by_digest: dict[str, list[Fetched]] = {}
        for fetched in state.fetched:
            key = fetched.digest or ("sha256:" + hashlib.sha256(fetched.data or b"").hexdigest())
            by_digest.setdefault(key, []).append(fetched)
        claims = []
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
            self.stats.fetched += 1
            self._submit(
                lambda result, name=state.name: self._walked(name, result),
                self._walk,
                state.name,
                digest,
                with_data.data if with_data else None,
                with_data.media_type if with_data else "",
                tags,
            )
        state.fetched.clear()
        return [TagMoves(self.registry, tuple(claims))] if claims else []

    def _walked(self, repository: str, result: tuple[list, list[str]]) -> Iterable:
        items, notes = result
        for note in notes:
            self.ctx.note(note)
        return self._report(repository, items)


def _is_schema1(data: bytes) -> bool:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(doc, dict) and doc.get("schemaVersion") == 1


def _is_incremental_store(store) -> bool:
    return store is not None and all(callable(getattr(store, name, None)) for name in ("known_tags", "indexed_digests"))


class RegistrySource:
    """`docker://…` as a Source. `bind_store` gives it what is indexed (`known_tags` and
    `indexed_digests`, read only), which makes re-crawls incremental: it then yields TagMoves and
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
        return Crawl(self, ctx).run()
