"""`docker-daemon:`: the images of a running Docker engine, read through its API.

The engine's inspect gives the image config's fields but not its bytes, and its history gives
the size of each layer as stored (uncompressed). So records are built from those, never by
exporting images (`docker save`):

- one resource per repository the image is named in (RepoTags and RepoDigests); untagged
  images get the context's name (empty unless --registry/--repository);
- the manifest digest is the repository's RepoDigests entry (after a push or pull), else
  unknown, and the id then derives from the config digest (the image ID);
- layers are the config's diff_ids with the history's sizes, marked uncompressed; the config
  size is unknown (the API has no way to read it) and stays 0;
- exactness is UNCOMPRESSED, so a later record of the same manifest from a registry or an OCI
  archive (compressed sizes, verified bytes) replaces it in the store.

With the containerd image store (API 1.47+), an image is its target manifest or index: the
engine reports the manifest descriptors, and a multi-platform image gives the index and its
children.

`docker-daemon:REF` indexes one image: by reference, in that reference's repository; by ID,
in all of its repositories. The Docker SDK is imported only when an engine is contacted.
"""
from __future__ import annotations

import bisect
import json
import os
import re
from collections import deque
from contextlib import closing
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from itertools import islice
from typing import Callable, Iterable, Iterator, Protocol
from urllib.parse import urlencode

from .. import timestamps
from ..errors import ImgdexError, SourceError
from ..model import (
    KIND_ATTESTATION,
    KIND_IMAGE,
    KIND_INDEX,
    UNCOMPRESSED,
    Blob,
    HistoryEntry,
    ImageConfig,
    ImageRecord,
    Platform,
)
from ..references import Reference, parse_reference
from . import mediatypes as mt
from .parse import Context, check_sizes, new_record, parse_config, platform_of, size_problem, valid_size

DEFAULT_HOST = "unix:///var/run/docker.sock"
CONNECT_TIMEOUT = 10.0  # seconds for the first contact: an absent engine fails fast
REQUEST_TIMEOUT = 60.0  # seconds for each later request: a stuck engine fails, never hangs
WORKERS = 4  # requests in flight: the engine answers while the previous image is mapped
WINDOW = 16  # images fetched ahead of the consumer; bounds the details held in memory

CONTAINERD_SNAPSHOTTER = "io.containerd.snapshotter.v1"
_GO_ZERO_SECONDS = -62135596800  # time.Time{}.Unix(): the engine's "no time"
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_IMAGE_ID = re.compile(r"(?:sha256:)?([0-9a-f]{4,64})")


class EngineUnavailable(ImgdexError):
    """The engine cannot be reached, or stopped answering."""


class NoSuchImage(ImgdexError):
    """The engine has no image by that name or ID."""


class EngineRefused(ImgdexError):
    """The engine answered one request with an error."""


class EngineClient(Protocol):
    """The few engine calls this source makes; the Docker SDK client and the test fake provide them.

    Methods return the engine's JSON documents and raise only the three errors above.
    """

    address: str
    api_version: str

    def list_images(self, *, all: bool = False, manifests: bool = False) -> list[dict]:
        """GET /images/json."""

    def inspect_image(self, ref: str, *, platform: Platform | None = None, manifests: bool = False) -> dict:
        """GET /images/{ref}/json."""

    def image_history(self, ref: str, *, platform: Platform | None = None) -> list[dict]:
        """GET /images/{ref}/history, newest entry first."""

    def info(self) -> dict:
        """GET /info."""

    def close(self) -> None: ...


def api_at_least(version: str, wanted: str) -> bool:
    def parts(text: str) -> tuple[int, ...]:
        try:
            return tuple(int(p) for p in text.split("."))
        except ValueError:
            return (0,)

    return parts(version) >= parts(wanted)


def resolve_host(docker_host: str = "") -> str:
    """The engine address the Docker SDK would use: --docker-host, else DOCKER_HOST, else the local socket."""
    return docker_host or os.environ.get("DOCKER_HOST") or DEFAULT_HOST


# ----------------------------------------------------------------------------- the SDK client


def _root_cause(exc: BaseException, seen: set[int]) -> str:
    """A timeout or an OS error anywhere in the chain (causes, contexts and wrapped exceptions)."""
    if id(exc) in seen:
        return ""
    seen.add(id(exc))
    if isinstance(exc, TimeoutError) or "Timeout" in type(exc).__name__:
        return "timed out"
    inner = [arg for arg in getattr(exc, "args", ()) if isinstance(arg, BaseException)]
    for nested in (exc.__cause__, exc.__context__, *inner):
        if nested is not None:
            found = _root_cause(nested, seen)
            if found:
                return found
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return ""


def _reason(exc: BaseException) -> str:
    """Why a connection failed, in a few words."""
    found = _root_cause(exc, set())
    if found:
        return found
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class SdkEngineClient:
    """The engine through the Docker SDK's low-level `docker.APIClient`.

    The APIClient finds the engine, negotiates the API version and sets up the transport (unix
    socket, TCP, TLS). On a unix socket the per-image requests then go straight to the
    connection pool of the SDK's socket adapter: the `requests` layer above it costs about as
    much as the engine's answer. Other transports use the APIClient's own request helpers.
    The SDK has no parameters for the containerd store's `manifests` and `platform` options,
    so every request is built here from the client's versioned URL.
    """

    def __init__(self, address: str, *, connect_timeout: float = CONNECT_TIMEOUT, timeout: float = REQUEST_TIMEOUT, pool: int = WORKERS):
        try:
            import docker
            from docker.utils import kwargs_from_env
        except ImportError:
            raise EngineUnavailable(f"cannot contact the Docker engine at {address}: the Docker SDK for Python (docker) is not installed") from None

        self.address = address
        self._errors = docker.errors
        kwargs = kwargs_from_env()
        kwargs["base_url"] = address
        try:
            client = docker.APIClient(version="auto", timeout=connect_timeout, max_pool_size=max(pool, 1), **kwargs)
        except Exception as exc:  # DockerException for most; a malformed address or missing TLS files raise others
            reason = _reason(exc)
            if reason == "timed out":
                reason = f"no answer in {connect_timeout:g} s"
            raise EngineUnavailable(f"cannot reach the Docker engine at {address}: {reason}") from None
        client.timeout = timeout
        self._client = client
        self.api_version = client.api_version
        self._pool = None
        if address.startswith("unix://"):
            client.trust_env = False  # a local socket never goes through a proxy
            self._pool = _socket_pool(client)
            if self._pool is not None:
                import urllib3

                self._pool_timeout = urllib3.Timeout(connect=timeout, read=timeout)
                self._headers = {"User-Agent": client.headers.get("User-Agent", "docker-sdk-python")}

    def _call(self, what: str, function: Callable[[], object]):
        errors = self._errors
        try:
            return function()
        except errors.NotFound as exc:
            raise NoSuchImage(f"{what}: {_explanation(exc)}") from None
        except errors.APIError as exc:
            raise EngineRefused(f"{what}: {_explanation(exc)}") from None
        except Exception as exc:  # connection reset, timeouts, a proxy in the way
            raise EngineUnavailable(f"the Docker engine at {self.address} stopped answering ({what}): {_reason(exc)}") from None

    def _get_json(self, what: str, path: str, ref: str | None, params: dict):
        client = self._client
        url = client._url(path, ref) if ref is not None else client._url(path)
        if self._pool is None:
            return self._call(what, lambda: client._result(client._get(url, params=params), True))
        target = url[len(client.base_url):]
        if params:
            target += "?" + urlencode(params)
        try:
            response = self._pool.urlopen("GET", target, headers=self._headers, retries=False, timeout=self._pool_timeout)
        except Exception as exc:
            raise EngineUnavailable(f"the Docker engine at {self.address} stopped answering ({what}): {_reason(exc)}") from None
        if response.status >= 400:
            message = _error_message(response.data) or f"HTTP {response.status}"
            raise (NoSuchImage if response.status == 404 else EngineRefused)(f"{what}: {message}")
        try:
            return json.loads(response.data)
        except ValueError:
            raise EngineRefused(f"{what}: the engine's answer is not JSON") from None

    def list_images(self, *, all: bool = False, manifests: bool = False) -> list[dict]:
        params = {"all": 1 if all else 0}
        if manifests:
            params["manifests"] = 1
        return self._get_json("listing images", "/images/json", None, params) or []

    def inspect_image(self, ref: str, *, platform: Platform | None = None, manifests: bool = False) -> dict:
        params = {}
        if platform is not None:
            params["platform"] = _platform_json(platform)
        if manifests:
            params["manifests"] = 1
        return self._get_json(f"image {ref}", "/images/{0}/json", ref, params)

    def image_history(self, ref: str, *, platform: Platform | None = None) -> list[dict]:
        params = {"platform": _platform_json(platform)} if platform is not None else {}
        return self._get_json(f"history of image {ref}", "/images/{0}/history", ref, params) or []

    def info(self) -> dict:
        return self._call("engine info", self._client.info)

    def close(self) -> None:
        self._client.close()


def _socket_pool(client):
    """The connection pool of the SDK's unix-socket adapter, shared by every request.

    The adapter keys its pools by the whole request URL, so left alone every image's URL
    would open a new connection and evict an older pool; one key keeps the engine's
    keep-alive connections in use. None when the SDK's adapter is not the one expected.
    """
    adapter = getattr(client, "_custom_adapter", None)
    original = getattr(adapter, "get_connection", None)
    if original is None:
        return None
    key = client.base_url
    adapter.get_connection = lambda url, proxies=None: original(key, proxies)
    try:
        pool = original(key)
    except Exception:
        return None
    return pool if hasattr(pool, "urlopen") else None


def _error_message(data: bytes) -> str:
    try:
        doc = json.loads(data)
    except ValueError:
        doc = None
    text = doc.get("message") if isinstance(doc, dict) else data.decode("utf-8", "replace")
    lines = str(text or "").strip().splitlines()
    return lines[0] if lines else ""


def _explanation(exc) -> str:
    text = getattr(exc, "explanation", None) or str(exc)
    return str(text).strip().splitlines()[0] if str(text).strip() else type(exc).__name__


def _platform_json(platform: Platform) -> str:
    doc = {"os": platform.os, "architecture": platform.architecture}
    if platform.variant:
        doc["variant"] = platform.variant
    return json.dumps(doc, separators=(",", ":"))


def connect_sdk(address: str) -> EngineClient:
    return SdkEngineClient(address)


# ----------------------------------------------------------------------------- mapping


def _text(doc: dict, key: str) -> str:
    value = doc.get(key)
    return value if isinstance(value, str) else ""


def _list(doc: dict, key: str) -> list:
    value = doc.get(key)
    return value if isinstance(value, list) else []


def _object(doc: dict, key: str) -> dict:
    value = doc.get(key)
    return value if isinstance(value, dict) else {}


def _history_time(seconds: object) -> str:
    if not isinstance(seconds, int) or isinstance(seconds, bool) or seconds <= _GO_ZERO_SECONDS:
        return ""
    try:
        return timestamps.format_utc(_EPOCH + timedelta(seconds=seconds), 0)
    except OverflowError:
        return ""


def match_history(layer_count: int, history: list[dict]) -> tuple[list[int] | None, tuple[HistoryEntry, ...]]:
    """Layer sizes from the engine's history (newest first), and the history itself.

    The engine reports an empty layer and a layer of size 0 alike, so the sizes are known
    when the entries of positive size, with the zero-size entries that must be layers, line up
    with the layers in one way only. The history's empty_layer flags need a unique choice of
    entries; when it is not unique the history is left out. None: the sizes cannot be known.
    """
    entries = [e for e in reversed(history) if isinstance(e, dict)]
    sizes = []
    for entry in entries:
        size = entry.get("Size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            return None, ()
        sizes.append(size)
    positive = [i for i, s in enumerate(sizes) if s > 0]
    zeros = [i for i, s in enumerate(sizes) if s == 0]
    missing = layer_count - len(positive)
    if missing < 0 or missing > len(zeros):
        return None, ()
    if missing in (0, len(zeros)):
        chosen = set(positive) if missing == 0 else set(range(len(entries)))
    elif len({bisect.bisect(positive, z) for z in zeros}) == 1:
        # The zeros all fall between the same two positive entries: the size sequence is the
        # same whichever of them are layers, but which ones are empty is not known.
        gap = bisect.bisect(positive, zeros[0])
        return [sizes[i] for i in positive[:gap]] + [0] * missing + [sizes[i] for i in positive[gap:]], ()
    else:
        return None, ()
    layer_sizes = [sizes[i] for i in range(len(entries)) if i in chosen]
    history_entries = tuple(
        HistoryEntry(_history_time(e.get("Created")), _text(e, "CreatedBy"), _text(e, "Comment"), i not in chosen)
        for i, e in enumerate(entries)
    )
    return layer_sizes, history_entries


def config_from_inspect(inspect: dict, where: str) -> ImageConfig:
    """The inspect's config fields, through the shared config parser."""
    rootfs = _object(inspect, "RootFS")
    doc = {
        "created": _text(inspect, "Created"),
        "os": _text(inspect, "Os"),
        "architecture": _text(inspect, "Architecture"),
        "variant": _text(inspect, "Variant"),
        "config": _object(inspect, "Config"),
        "rootfs": {"type": _text(rootfs, "Type"), "diff_ids": _list(rootfs, "Layers")},
    }
    return parse_config(json.dumps(doc).encode(), where)


@dataclass
class _Repository:
    registry: str
    name: str
    tags: set[str] = field(default_factory=set)
    digests: list[str] = field(default_factory=list)


def repositories(inspect: dict, ctx: Context, where: str, only: Reference | None = None) -> list[_Repository]:
    """The image's repositories with their tags and manifest digests, in a stable order.

    `only` keeps the repository of a reference the user named; an image named by ID keeps all.
    """
    found: dict[tuple[str, str], _Repository] = {}
    for key in ("RepoTags", "RepoDigests"):
        for text in _list(inspect, key):
            if not isinstance(text, str) or text.startswith("<none>"):
                continue  # the engine's placeholder for an untagged image
            try:
                ref = parse_reference(text)
            except ImgdexError as exc:
                ctx.note(f"{where}: ignoring {key} entry {text!r}: {exc}")
                continue
            repo = found.setdefault((ref.registry, ref.name), _Repository(ref.registry, ref.name))
            if ref.tag and not ref.digest:
                repo.tags.add(ref.tag)
            if ref.digest and ref.digest not in repo.digests:
                repo.digests.append(ref.digest)
    if only is not None and (only.registry, only.name) in found:
        found = {(only.registry, only.name): found[(only.registry, only.name)]}
    if not found:
        return [_Repository(ctx.registry, ctx.repository)]
    return [found[key] for key in sorted(found)]


def _layers(config: ImageConfig, sizes: list[int] | None) -> tuple[Blob, ...]:
    if sizes is None:
        sizes = [0] * len(config.diff_ids)
    return tuple(Blob(digest=d, size=s, media_type=mt.DOCKER_LAYER_TAR) for d, s in zip(config.diff_ids, sizes))


def _image_record(ctx: Context, repo: _Repository, tags: tuple[str, ...], digest: str, media_type: str, kind: str,
                  config_blob: Blob | None, config: ImageConfig | None, layers: tuple[Blob, ...],
                  history: tuple[HistoryEntry, ...], platform: Platform | None, parent: str) -> ImageRecord:
    return new_record(
        ctx, repo.registry, repo.name,
        digest=digest,
        config_blob=config_blob,
        layers=layers,
        config=config or ImageConfig(),
        media_type=media_type,
        kind=kind,
        tags=tags,
        platform=platform,
        parent_digest=parent,
        exactness=UNCOMPRESSED,
        history=history,
    )


@dataclass
class _Details:
    """What one image needs from the engine, fetched together off the consumer's thread."""

    inspect: dict
    history: list[dict]
    manifests: list[dict] | None = None  # containerd image store only
    children: dict[str, tuple[dict, list[dict]] | Exception] = field(default_factory=dict)


# ----------------------------------------------------------------------------- the source


@dataclass
class DockerDaemon:
    """A Docker engine, found as the Docker SDK finds it or at an explicit address."""

    location: str  # the engine address
    ref: str = ""
    all_images: bool = False
    kind: str = "docker-daemon"
    connect: Callable[[str], EngineClient] | None = None  # None: the Docker SDK client
    workers: int = WORKERS
    window: int = WINDOW

    @classmethod
    def from_spec(cls, ref: str, docker_host: str = "", all_images: bool = False) -> "DockerDaemon":
        return cls(location=resolve_host(docker_host), ref=ref, all_images=all_images, workers=WORKERS, window=WINDOW)

    @property
    def spec(self) -> str:
        return f"docker-daemon:{self.ref}" if self.ref else "docker-daemon"

    def records(self, ctx: Context) -> Iterator[ImageRecord | SourceError]:
        where = self.spec
        try:
            client = (self.connect or connect_sdk)(self.location)
        except EngineUnavailable as exc:
            raise SourceError(where, str(exc)) from None
        try:
            yield from self._records(client, ctx, where)
        except (EngineUnavailable, EngineRefused, NoSuchImage) as exc:
            raise SourceError(where, str(exc)) from None
        finally:
            client.close()

    # -- what to read

    def _containerd(self, client: EngineClient) -> bool:
        if not api_at_least(client.api_version, "1.47"):
            return False
        status = client.info().get("DriverStatus") or []
        return any(isinstance(pair, list) and CONTAINERD_SNAPSHOTTER in pair for pair in status)

    def _targets(self, client: EngineClient, containerd: bool) -> list[tuple[str, list[dict] | None]]:
        """(image ID, manifest descriptors or None) of each image to read; only IDs are kept."""
        summaries = client.list_images(all=self.all_images, manifests=containerd)
        targets = []
        seen = set()
        for summary in summaries:
            image = _text(summary, "Id") if isinstance(summary, dict) else ""
            if not image or image in seen:
                continue
            seen.add(image)
            manifests = _compact_manifests(summary.get("Manifests")) if containerd else None
            targets.append((image, manifests))
        return targets

    def _records(self, client: EngineClient, ctx: Context, where: str) -> Iterator[ImageRecord | SourceError]:
        containerd = self._containerd(client)
        if self.ref:
            yield from self._named(client, ctx, where, containerd)
            return
        fetch = lambda target: self._fetch(client, target[0], target[1], containerd)  # noqa: E731
        with closing(prefetch(self._targets(client, containerd), fetch, self.workers, self.window)) as fetched:
            for (image, _), details in fetched:
                if isinstance(details, NoSuchImage):
                    ctx.note(f"{where}: image {image} was removed while indexing; skipped")
                    continue
                if isinstance(details, EngineUnavailable):
                    raise details
                if isinstance(details, Exception):
                    yield SourceError(where, f"image {image}: {details}")
                    continue
                yield from self._map(details, ctx, where, None, containerd)

    def _named(self, client: EngineClient, ctx: Context, where: str, containerd: bool) -> Iterator[ImageRecord | SourceError]:
        try:
            inspect = client.inspect_image(self.ref)
        except NoSuchImage:
            yield SourceError(where, f"the Docker engine at {self.location} has no image {self.ref!r}")
            return
        except EngineRefused as exc:
            yield SourceError(where, str(exc))
            return
        only = None
        match = _IMAGE_ID.fullmatch(self.ref)
        by_id = match is not None and _text(inspect, "Id").removeprefix("sha256:").startswith(match.group(1))
        if not by_id:
            try:
                only = parse_reference(self.ref)
            except ImgdexError:
                only = None
        manifests = None
        if containerd:
            manifests = self._manifests_of(client, inspect)
        try:
            details = self._fetch(client, _text(inspect, "Id"), manifests, containerd, inspect=inspect)
        except (NoSuchImage, EngineRefused) as exc:
            yield SourceError(where, str(exc))
            return
        yield from self._map(details, ctx, where, only, containerd)

    def _manifests_of(self, client: EngineClient, inspect: dict) -> list[dict] | None:
        if api_at_least(client.api_version, "1.48"):
            full = client.inspect_image(_text(inspect, "Id"), manifests=True)
            return _compact_manifests(full.get("Manifests"))
        # API 1.47 reports manifests only in the listing.
        for summary in client.list_images(all=True, manifests=True):
            if isinstance(summary, dict) and summary.get("Id") == inspect.get("Id"):
                return _compact_manifests(summary.get("Manifests"))
        return None

    # -- fetching (runs on worker threads)

    def _fetch(self, client: EngineClient, image: str, manifests: list[dict] | None, containerd: bool, inspect: dict | None = None) -> _Details:
        if inspect is None:
            inspect = client.inspect_image(image)
        if not containerd:
            return _Details(inspect, client.image_history(image))
        details = _Details(inspect, [], manifests or [])
        _, single = containerd_shape(inspect, details.manifests)
        if single is not None:
            details.history = client.image_history(image)
            return details
        per_platform = api_at_least(client.api_version, "1.49")
        default_platform = _inspect_platform(inspect)
        for manifest in details.manifests:
            if manifest["kind"] != KIND_IMAGE or not manifest["available"] or manifest["platform"] is None:
                continue
            try:
                if per_platform:
                    details.children[manifest["digest"]] = (
                        client.inspect_image(image, platform=manifest["platform"]),
                        client.image_history(image, platform=manifest["platform"]),
                    )
                elif manifest["platform"] == default_platform:
                    # Before API 1.49 only the engine's default platform can be inspected.
                    details.children[manifest["digest"]] = (inspect, client.image_history(image))
            except (NoSuchImage, EngineRefused) as exc:
                details.children[manifest["digest"]] = exc
        return details

    # -- mapping

    def _map(self, details: _Details, ctx: Context, where: str, only: Reference | None, containerd: bool) -> Iterator[ImageRecord | SourceError]:
        inspect = details.inspect
        image = _text(inspect, "Id")
        label = f"{where} (image {image})"
        repos = repositories(inspect, ctx, where, only)
        if containerd:
            yield from self._map_containerd(details, repos, ctx, where, label)
            return
        try:
            config = config_from_inspect(inspect, label)
            sizes, history = _sizes(config, details.history, ctx, label)
        except SourceError as exc:
            yield exc
            return
        layers = _layers(config, sizes)
        config_blob = Blob(digest=image, size=0, media_type=mt.DOCKER_CONFIG)
        for repo in repos:
            digest = repo.digests[0] if repo.digests else ""
            yield _image_record(ctx, repo, tuple(sorted(repo.tags)), digest, "", KIND_IMAGE, config_blob, config,
                                layers, history, platform_of(config), "")

    def _map_containerd(self, details: _Details, repos: list[_Repository], ctx: Context, where: str, label: str):
        target, single = containerd_shape(details.inspect, details.manifests or [])
        if single is not None:
            yield from _containerd_image(details.inspect, details.history, single, repos, True, "", ctx, label)
            return
        for repo in repos:
            yield _image_record(ctx, repo, tuple(sorted(repo.tags)), target.digest, target.media_type, KIND_INDEX,
                                None, None, (), (), None, "")
        for manifest in details.manifests or []:
            child_label = f"{label} manifest {manifest['digest']}"
            if manifest["kind"] == KIND_ATTESTATION:
                for repo in repos:
                    yield _image_record(ctx, repo, (), manifest["digest"], manifest["media_type"], KIND_ATTESTATION,
                                        None, None, (), (), manifest["platform"], target.digest)
                continue
            if manifest["kind"] != KIND_IMAGE:
                ctx.note(f"{child_label}: skipped: the engine reports its kind as {manifest['raw_kind'] or 'unknown'}")
                continue
            if not manifest["available"]:
                ctx.note(f"{child_label}: skipped: its content is not in the engine")
                continue
            fetched = details.children.get(manifest["digest"])
            if fetched is None:
                ctx.note(f"{child_label}: skipped: the engine inspects platform {manifest['platform'] or '(none)'} only from API 1.49")
                continue
            if isinstance(fetched, Exception):
                yield SourceError(where, f"{child_label}: {fetched}")
                continue
            child_inspect, child_history = fetched
            yield from _containerd_image(child_inspect, child_history, manifest, repos, False, target.digest, ctx, child_label)


def _sizes(config: ImageConfig, history: list[dict], ctx: Context, label: str):
    """Layer sizes and history; SourceError when the engine reports a size the store cannot hold."""
    for position, entry in enumerate(history):
        size = entry.get("Size") if isinstance(entry, dict) else None
        if size is not None and not valid_size(size):
            raise SourceError(label, f"history entry {position} has an invalid size: {size_problem(size)}")
    sizes, entries = match_history(len(config.diff_ids), history)
    if sizes is None and config.diff_ids:
        ctx.note(f"{label}: the engine's history does not tell the sizes of its {len(config.diff_ids)} layers; sizes left unknown")
    elif sizes:
        check_sizes(_layers(config, sizes), None, label)
    return sizes, entries


def _containerd_image(inspect, history, manifest, repos, tagged, parent, ctx, label):
    try:
        config = config_from_inspect(inspect, label)
        sizes, entries = _sizes(config, history, ctx, label)
    except SourceError as exc:
        yield exc
        return
    layers = _layers(config, sizes)
    platform = manifest["platform"] or platform_of(config)
    for repo in repos:
        # The containerd store's API gives no config digest: the config stays unknown.
        yield _image_record(ctx, repo, tuple(sorted(repo.tags)) if tagged else (), manifest["digest"], manifest["media_type"],
                            KIND_IMAGE, None, config, layers, entries, platform, parent)


def _compact_manifests(raw: object) -> list[dict] | None:
    """The few fields kept of the engine's manifest summaries, in the engine's (index) order."""
    if not isinstance(raw, list):
        return None
    out = []
    for item in raw:
        if not isinstance(item, dict):
            continue
        descriptor = _object(item, "Descriptor")
        digest = _text(descriptor, "digest") or _text(item, "ID") or _text(item, "Id")
        if not digest:
            continue
        raw_kind = _text(item, "Kind")
        kind = {"image": KIND_IMAGE, "attestation": KIND_ATTESTATION}.get(raw_kind, "")
        platform_doc = _object(_object(item, "ImageData"), "Platform") or _object(descriptor, "platform")
        platform = None
        if platform_doc:
            platform = Platform(_text(platform_doc, "os"), _text(platform_doc, "architecture"), _text(platform_doc, "variant"))
        out.append(
            {
                "digest": digest,
                "media_type": _text(descriptor, "mediaType"),
                "kind": kind,
                "raw_kind": raw_kind,
                "available": item.get("Available") is True,
                "platform": platform,
            }
        )
    return out or None


def _target(inspect: dict) -> Blob:
    descriptor = _object(inspect, "Descriptor")
    digest = _text(descriptor, "digest") or _text(inspect, "Id")
    size = descriptor.get("size")
    return Blob(digest=digest, size=size if isinstance(size, int) else 0, media_type=_text(descriptor, "mediaType"))


def containerd_shape(inspect: dict, manifests: list[dict]) -> tuple[Blob, dict | None]:
    """The image's target, and the manifest it is when it is not an index (None for an index)."""
    target = _target(inspect)
    if target.media_type in mt.INDEXES:
        return target, None
    for manifest in manifests:
        if manifest["digest"] == target.digest:
            return target, manifest
    if not manifests or target.media_type in mt.MANIFESTS:
        return target, {"digest": target.digest, "media_type": target.media_type, "kind": KIND_IMAGE,
                        "raw_kind": "image", "available": True, "platform": None}
    return target, None  # children that are not the target itself: an index


def _inspect_platform(inspect: dict) -> Platform:
    return Platform(_text(inspect, "Os"), _text(inspect, "Architecture"), _text(inspect, "Variant"))


def prefetch(items: Iterable, fetch: Callable, workers: int, window: int) -> Iterator[tuple[object, object]]:
    """(item, fetch(item) or the exception it raised), in order, with at most `window` fetched ahead."""
    iterator = iter(items)
    if workers <= 1:
        for item in iterator:
            try:
                yield item, fetch(item)
            except Exception as exc:
                yield item, exc
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="docker-daemon")
    pending: deque = deque()
    try:
        for item in islice(iterator, max(window, 1)):
            pending.append((item, pool.submit(fetch, item)))
        while pending:
            item, future = pending.popleft()
            try:
                result = future.result()
            except Exception as exc:
                result = exc
            for following in islice(iterator, 1):
                pending.append((following, pool.submit(fetch, following)))
            yield item, result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
