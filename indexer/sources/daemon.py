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
in all of its repositories. The engine is found as the Docker SDK finds it (DOCKER_HOST,
DOCKER_TLS_VERIFY, DOCKER_CERT_PATH), and its HTTP API is spoken directly (`EngineApiClient`).
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import http.client
import json
import os
import re
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Mapping
from contextlib import closing
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from itertools import islice
from typing import Callable, Iterable, Iterator, Protocol
from urllib.parse import quote, urlencode, urlsplit

from .. import timestamps
from ..errors import EngineRefused, EngineUnavailable, ImgdexError, NoSuchImage, SourceError
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
    TagsRetired,
)
from ..references import DIGEST_ALGORITHMS, SSH_LOGIN, Reference, is_valid_digest, parse_reference
from ..shard import Shard, in_shard, repository_key
from . import mediatypes as mt
from .bodies import BodyTooLarge, InterimSkipping, TooManyInterim, read_capped
from .configbounds import MAX_ENTRIES, too_many_values
from .docker_context import current_context
from .jsonshape import list_at, object_at, string_at
from .jsonstream import LongInteger, loads
from .parse import (
    MAX_PARSED_BYTES,
    Context,
    check_sizes,
    new_record,
    parse_config,
    parsed_size,
    platform_of,
    size_problem,
    valid_size,
)
from .ssh_dial import DialHelper, SshTarget, helper_command, parse_ssh
from .tcp_dial import connect_tcp
from .tlsfiles import load_ca, load_key_pair
from .vanished import holds_tags, vanished_tags

DEFAULT_HOST = "unix:///var/run/docker.sock"
CONNECT_TIMEOUT = 10.0  # seconds for the whole first contact: an absent or silent engine fails fast
REQUEST_TIMEOUT = 60.0  # seconds for the whole of each later request: a stuck engine fails, never hangs
WORKERS = 4  # requests in flight: the engine answers while the previous image is mapped
WINDOW = 16  # images fetched ahead of the consumer; bounds the details held in memory
# Image requests in a row that got no whole answer, though the engine still answered GET /version,
# after which the engine is taken as stuck: as many as are in flight at once, so an engine that
# answers no image request fails the source after about one request's deadline, as it did when
# the first lost answer failed it; one image's lost answer, between answered ones, fails that image.
LOST_IN_A_ROW = WORKERS
# The longest answer read from the engine: GET /images/json lists ~600 bytes an image, so this
# holds about 800,000 images; an engine that sends more (or sends forever) fails in one line.
MAX_ANSWER_BYTES = 512 * 1024 * 1024
# The longest inspect, history or info: an inspect carries a config's fields (configs are read up
# to 8 MiB from every other source) and repeats them under ContainerConfig on older engines; a
# history carries the config's history text plus ~100 bytes of the engine's own fields for each of
# at most MAX_ENTRIES entries. Real answers are a few KB; WINDOW images' worth of them are held.
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024
# The listing may be long (see above), but not dense: a real one spends 20 to 40 bytes of text on
# each value (IDs, names, dates), ~4x its bytes once parsed as `parsed_size` counts it. `[{},{},...]`
# is one value every 3 bytes, ~21x: 60 MB of it took 1.6 GB. Listings under MAX_PARSED_BYTES
# parsed are never refused, however dense.
LISTING_PARSED_PER_BYTE = 8
# The fields of a history entry the mapping reads; the rest is dropped as soon as the answer is in,
# so an image waiting in the prefetch window holds no more than it needs.
_HISTORY_FIELDS = ("Created", "CreatedBy", "Comment", "Size")

CONTAINERD_SNAPSHOTTER = "io.containerd.snapshotter.v1"
_GO_ZERO_SECONDS = -62135596800  # time.Time{}.Unix(): the engine's "no time"
_GO_ZERO_TIME = "0001-01-01T00:00:00Z"  # the same, as inspect prints it
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_IMAGE_ID = re.compile(r"(?:sha256:)?([0-9a-f]{4,64})")


class EngineClient(Protocol):
    """The few engine calls this source makes; `EngineApiClient` and the test fake provide them.

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

    def ping(self) -> None:
        """EngineUnavailable unless the engine answers at all; asked only after an `AnswerLost`."""

    def abort(self) -> None:
        """Cut the requests under way and refuse new ones: the source has failed."""

    def close(self) -> None: ...


def api_at_least(version: str, wanted: str) -> bool:
    def parts(text: str) -> tuple[int, ...]:
        try:
            return tuple(int(p) for p in text.split("."))
        except ValueError:
            return (0,)

    return parts(version) >= parts(wanted)


def resolve_host(docker_host: str = "") -> tuple[str, dict[str, str] | None]:
    """The engine address, and the TLS variables to read in place of the environment's (None: the
    environment's): --docker-host, else DOCKER_HOST, else the docker CLI's current context (see
    docker_context.py), else the local socket."""
    if docker_host or os.environ.get("DOCKER_HOST"):
        return docker_host or os.environ["DOCKER_HOST"], None
    context = current_context()
    if context is None:
        return DEFAULT_HOST, None
    return context.host, context.environ


# ----------------------------------------------------------------------------- where the engine is


@dataclass(frozen=True)
class TlsSettings:
    """TLS to the engine: whether its certificate is verified, and the files found ("" when absent)."""

    verify: bool
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""


@dataclass(frozen=True)
class Endpoint:
    """Where the engine listens: a unix socket, or a TCP host and port, with TLS or without."""

    socket_path: str = ""
    host: str = ""
    port: int = 0
    tls: TlsSettings | None = None
    prefix: str = ""  # the path the API is served under (tcp://host:2375/prefix)
    ssh: SshTarget | None = None  # another machine's engine, through `docker system dial-stdio` there


def tls_from_env(environ: Mapping[str, str]) -> TlsSettings | None:
    """TLS as DOCKER_TLS_VERIFY and DOCKER_CERT_PATH ask for it, read with the Docker SDK's rules.

    DOCKER_TLS_VERIFY set to anything but "" turns TLS on and verifies the engine; DOCKER_CERT_PATH
    alone turns it on without verification. The files are ca.pem, cert.pem and key.pem in
    DOCKER_CERT_PATH, else in ~/.docker. As the docker CLI does, a missing file is left out rather
    than refused: without ca.pem the system's CAs are trusted, without the pair no client
    certificate is offered, and the engine's answer decides.
    """
    verify = environ.get("DOCKER_TLS_VERIFY", "") != ""
    cert_path = environ.get("DOCKER_CERT_PATH") or ""
    if not verify and not cert_path:
        return None
    folder = cert_path or os.path.join(os.path.expanduser("~"), ".docker")

    def present(name: str) -> str:
        path = os.path.join(folder, name)
        return path if os.path.isfile(path) else ""

    cert, key = present("cert.pem"), present("key.pem")
    if not (cert and key):
        cert = key = ""
    return TlsSettings(verify=verify, ca_file=present("ca.pem"), cert_file=cert, key_file=key)


# RFC 3986's scheme: what precedes "://" is a scheme only in this form. Anything else is part of a
# bare HOST:PORT, a password holding "://" among them, and is never quoted as a scheme.
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")


def _split_scheme(text: str) -> tuple[str, str]:
    """(scheme, lowercased, or "" for a bare address; what follows "://")."""
    scheme, separator, rest = text.partition("://")
    if separator and _SCHEME.fullmatch(scheme):
        return scheme.lower(), rest
    return "", text


def shown_address(address: str) -> str:
    """The engine address as messages show it: credentials as `***`, no query or fragment.

    Whatever precedes the last '@' is hidden, so a password holding spaces, '/', '?', '#' or '@'
    is hidden whole, in the bare HOST:PORT form as after a scheme; a query or fragment (where a
    token rides) is dropped. Only a unix socket's path and an ssh:// login name are kept as written.
    """
    text = address.strip()
    scheme, rest = _split_scheme(text)
    prefix = text[: len(text) - len(rest)]
    at = rest.rfind("@")
    if at >= 0 and not _keeps_at(scheme, rest[:at]):
        rest = "***" + rest[at:]
    return prefix + re.split(r"[?#]", rest, maxsplit=1)[0]


def _keeps_at(scheme: str, before: str) -> bool:
    if scheme in ("unix", "http+unix"):
        return before.startswith("/")  # a socket path, which may hold an '@'
    # a login name as ssh:// addresses carry it (ssh://me@build-host) is no secret
    return scheme == "ssh" and SSH_LOGIN.fullmatch(before) is not None


def endpoint_of(address: str, environ: Mapping[str, str] | None = None) -> Endpoint:
    """The endpoint of an engine address, in the forms the Docker SDK takes: unix://PATH, tcp://HOST:PORT (TLS
    when the environment asks for it), http://HOST:PORT, https://HOST:PORT and a bare HOST:PORT.

    ssh://[USER@]HOST[:PORT][/SOCKET] reaches another machine's engine as the docker CLI does.
    ValueError, with a short reason, for anything else (npipe:// among them).
    """
    environ = os.environ if environ is None else environ
    scheme, rest = _split_scheme(address.strip())
    scheme = scheme or "tcp"
    if scheme in ("unix", "http+unix"):
        path = rest or DEFAULT_HOST.removeprefix("unix://")
        return Endpoint(socket_path=path if path.startswith("/") else "/" + path)
    if scheme == "tcp":
        tls = tls_from_env(environ)
    elif scheme == "https":
        tls = tls_from_env(environ) or TlsSettings(verify=True)
    elif scheme == "http":
        tls = None
    elif scheme == "ssh":
        return Endpoint(ssh=parse_ssh(rest))
    else:
        raise ValueError(f"{scheme}:// addresses are not supported (unix://, tcp://, http://, https:// and ssh:// are)")
    parts = urlsplit("//" + rest)
    try:
        port = parts.port
    except ValueError:
        port = None
    if not port or parts.query or parts.fragment or parts.username is not None:
        raise ValueError("not an engine address (unix://PATH or tcp://HOST:PORT)")
    return Endpoint(host=parts.hostname or "127.0.0.1", port=port, tls=tls, prefix=parts.path.rstrip("/"))


def _tls_context(tls: TlsSettings) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        if not tls.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        elif tls.ca_file:
            load_ca(context, tls.ca_file)
        else:
            context.load_default_certs()
        if tls.cert_file:
            load_key_pair(context, tls.cert_file, tls.key_file)
    except SourceError as exc:
        raise ValueError(f"the TLS file {exc}") from None
    except (OSError, ValueError) as exc:
        files = ", ".join(path for path in (tls.ca_file, tls.cert_file, tls.key_file) if path)
        raise ValueError(f"the TLS files ({files}) cannot be used: {_reason(exc)}") from None
    context.sslsocket_class = _DeadlineTlsSocket
    return context


# ----------------------------------------------------------------------------- the engine's HTTP API


class _Deadline:
    """Mixed into the sockets of engine connections: no send or receive waits past `deadline`.

    A timeout per receive alone would let an engine that sends a byte now and then hold a request
    for as long as it likes; the deadline bounds the whole exchange (connect, request, headers, body).
    """

    deadline = 0.0  # a time.monotonic() value, set for each request

    def _bound(self) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out")
        self.settimeout(left)

    # http.client receives through makefile(), whose reader calls recv_into, and sends with sendall.
    def recv_into(self, *args, **kwargs):
        self._bound()
        return super().recv_into(*args, **kwargs)

    def sendall(self, *args, **kwargs):
        self._bound()
        return super().sendall(*args, **kwargs)


class _DeadlineSocket(_Deadline, socket.socket):
    pass


class _DeadlineTlsSocket(_Deadline, ssl.SSLSocket):
    pass


def _open_socket(endpoint: Endpoint, context: ssl.SSLContext | None, deadline: float) -> socket.socket:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("timed out")
    if endpoint.socket_path:
        sock = _DeadlineSocket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(left)
            sock.connect(endpoint.socket_path)
        except BaseException:
            sock.close()
            raise
    else:
        plain = connect_tcp(endpoint.host, endpoint.port, deadline)
        plain.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock = _DeadlineSocket(plain.family, plain.type, plain.proto, fileno=plain.detach())
        if context is not None:
            try:
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                sock = context.wrap_socket(sock, server_hostname=endpoint.host)
            except BaseException:
                sock.close()
                raise
    sock.deadline = deadline
    return sock


class _Response(InterimSkipping):
    def _read_next_chunk_size(self) -> int:
        # int(line, 16) takes a sign: -5 made read() raise a bare ValueError, -1 read to the deadline.
        # http.client turns a ValueError here into IncompleteRead, an answer cut short.
        size = super()._read_next_chunk_size()
        if size < 0:
            raise ValueError(f"negative chunk size {size}")
        return size


class _Connection(http.client.HTTPConnection):
    """One keep-alive connection to the engine, on a socket that keeps the deadline of each request."""

    response_class = _Response

    def __init__(self, endpoint: Endpoint, context: ssl.SSLContext | None, connect_timeout: float = CONNECT_TIMEOUT):
        super().__init__(endpoint.host or "localhost", endpoint.port or None)
        self._endpoint = endpoint
        self._context = context
        self._connect_timeout = connect_timeout
        self.deadline = 0.0
        self.helper: DialHelper | None = None  # the ssh process of an ssh:// engine's connection
        self._last_words = ""  # what that process said as it ended in failure, once it is gone

    def bound(self, deadline: float) -> None:
        """The next request, and the connect it may need, end by `deadline`."""
        self.deadline = deadline
        if self.sock is not None:
            self.sock.deadline = deadline

    def connect(self) -> None:
        if self._endpoint.ssh is None:
            self.sock = _open_socket(self._endpoint, self._context, self.deadline)
            return
        if self.deadline <= time.monotonic():
            raise TimeoutError("timed out")
        self.helper = DialHelper(helper_command(self._endpoint.ssh, self._connect_timeout))
        plain = self.helper.socket
        self.sock = _DeadlineSocket(plain.family, plain.type, plain.proto, fileno=plain.detach())
        self.sock.deadline = self.deadline

    def helper_failure(self) -> str:
        """What ssh said when it ended in failure (a login refused, a host not reached, no docker
        there), waited for until the deadline; "" otherwise."""
        if self.helper is None:
            return self._last_words
        return self.helper.failure(min(self.deadline - time.monotonic(), 5.0))

    def close(self) -> None:
        super().close()
        helper, self.helper = self.helper, None
        if helper is not None:
            self._last_words = helper.stop()


# A reused keep-alive connection that the engine closed in the meantime fails in one of these ways
# before any answer; the request is sent again on a new connection.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)
_API_VERSION = re.compile(r"[0-9]{1,3}\.[0-9]{1,3}")


class _AnswerTooLong(http.client.HTTPException):
    pass


class AnswerLost(EngineUnavailable):
    """A request got no whole answer: it timed out, was cut short, or its connection dropped.

    That alone does not tell an engine that is gone from one answer it could not give (an image
    whose inspect it cannot finish, a proxy that drops one response): the source asks the engine
    (`ping`) before failing more than the image. `what` names the request, `reason` says what failed.
    """

    def __init__(self, message: str, what: str, reason: str):
        super().__init__(message)
        self.what = what
        self.reason = reason


def _reason(exc: BaseException) -> str:
    """Why an exchange with the engine failed, in a few words."""
    if isinstance(exc, (_AnswerTooLong, TooManyInterim)):
        return str(exc)
    if isinstance(exc, ssl.SSLError):
        detail = getattr(exc, "verify_message", "") or (exc.reason or "").lower().replace("_", " ")
        return f"TLS: {detail or exc}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "the connection was closed without an answer"
    if isinstance(exc, http.client.IncompleteRead):
        return "the answer was cut short"
    if isinstance(exc, http.client.HTTPException):
        return "the answer is not HTTP"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class EngineApiClient:
    """The engine's HTTP API on its unix socket, or on TCP with or without TLS, through http.client.

    The Docker SDK offers no public way to send the containerd store's `manifests` and `platform`
    options, and its requests session costs more CPU per request than the engine takes to answer,
    so the five GETs this source makes are spoken here. Connections are kept alive, one per request
    in flight. Every request has one deadline for connect, send, headers and body, so an engine that
    hangs fails the request instead of holding the run.
    """

    def __init__(
        self,
        address: str,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        timeout: float = REQUEST_TIMEOUT,
        environ: Mapping[str, str] | None = None,
    ):
        self.address = shown_address(address)  # what messages name; the endpoint keeps where to connect
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._idle: list[_Connection] = []
        self._busy: set[_Connection] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._aborted = False
        self._headers = {"User-Agent": "imgdex"}
        try:
            self._endpoint = endpoint_of(address, environ)
            self._context = _tls_context(self._endpoint.tls) if self._endpoint.tls is not None else None
        except ValueError as exc:
            raise EngineUnavailable(f"cannot reach the Docker engine at {self.address}: {exc}") from None
        self.api_version = self._negotiate(connect_timeout)
        self._prefix = f"{self._endpoint.prefix}/v{self.api_version}"

    def _negotiate(self, seconds: float) -> str:
        """The engine's API version, from the first contact, which gets `seconds` in all."""

        def unreachable(reason: str) -> EngineUnavailable:
            return EngineUnavailable(f"cannot reach the Docker engine at {self.address}: {reason}")

        status, body = self._version_answer(seconds, unreachable)
        if status != 200:
            message = _error_message(body)
            raise unreachable(f"GET /version answered HTTP {status}" + (f": {message}" if message else ""))
        try:
            doc = loads(body)
        except (ValueError, RecursionError):
            doc = None
        version = doc.get("ApiVersion") if isinstance(doc, dict) else None
        if not isinstance(version, str) or not _API_VERSION.fullmatch(version):
            raise unreachable("the answer to GET /version is not the Docker engine API's")
        return version

    def _exchange(self, target: str, seconds: float, limit: int = 0) -> tuple[int, bytes]:
        """(status, body) of one GET, all of it within `seconds`."""
        deadline = time.monotonic() + seconds
        limit = limit or _document_limit()
        while True:
            with self._lock:
                if self._aborted:
                    raise ConnectionAbortedError(errno.ECONNABORTED, "the run gave up on the engine")
                connection = self._idle.pop() if self._idle else None
                reused = connection is not None
                if connection is None:
                    connection = _Connection(self._endpoint, self._context, self._connect_timeout)
                self._busy.add(connection)
            connection.bound(deadline)
            try:
                connection.request("GET", target, headers=self._headers)
                response = connection.getresponse()
                try:
                    body = read_capped(response, limit)
                except BodyTooLarge:
                    raise _AnswerTooLong(f"the answer is over {limit:,} bytes") from None
            except BaseException as exc:
                said = connection.helper_failure() if isinstance(exc, (OSError, http.client.HTTPException)) else ""
                connection.close()
                if said:
                    raise ConnectionError(said) from None
                if reused and isinstance(exc, _STALE):
                    continue  # each idle connection is tried at most once, then a new one
                raise
            finally:
                with self._lock:
                    self._busy.discard(connection)
            if not response.will_close:
                with self._lock:
                    if not self._closed:
                        self._idle.append(connection)
                        return response.status, body
            connection.close()
            return response.status, body

    def _get_json(
        self, what: str, endpoint: str, path: str, params: dict | None, shape: type, *, listing: bool = False
    ):
        """The answer to GET `path`, a JSON document of type `shape` (dict or list; null, for a list,
        is an empty one); EngineRefused, naming the `endpoint`, for anything else or too much of it.
        A `listing` may be long (MAX_ANSWER_BYTES), other answers are documents (MAX_DOCUMENT_BYTES)."""
        target = self._prefix + path + ("?" + urlencode(params) if params else "")
        try:
            status, body = self._exchange(target, self._timeout, MAX_ANSWER_BYTES if listing else _document_limit())
        except _AnswerTooLong as exc:
            raise EngineRefused(f"{what}: {exc}") from None
        except (OSError, http.client.HTTPException, ValueError) as exc:
            # ValueError: what else http.client trips over in a malformed answer
            reason = _reason(exc)
            if reason == "timed out":
                reason = f"no complete answer in {self._timeout:g} s"
            raise AnswerLost(
                f"the Docker engine at {self.address} stopped answering ({what}): {reason}", what, reason
            ) from None
        if not 200 <= status < 300:
            message = _error_message(body) or f"HTTP {status}"
            raise (NoSuchImage if status == 404 else EngineRefused)(f"{what}: {message}")
        # Refused before parsing: what a document costs as objects is bounded by its values, not its bytes.
        if listing:
            if parsed_size(body) > max(MAX_PARSED_BYTES, LISTING_PARSED_PER_BYTE * len(body)):
                raise EngineRefused(f"{what}: the answer to {endpoint} holds too many values for its size")
        elif too_many_values(body):
            raise EngineRefused(f"{what}: the answer to {endpoint} holds too many values")
        try:
            doc = loads(body)
        except RecursionError:
            raise EngineRefused(f"{what}: the engine's answer is not JSON (nested too deeply)") from None
        except ValueError:
            raise EngineRefused(f"{what}: the engine's answer is not JSON") from None
        if doc is None and shape is list:
            return []
        if not isinstance(doc, shape):
            wanted = "an array" if shape is list else "an object"
            raise EngineRefused(f"{what}: the answer to {endpoint} is {_json_type(doc)}, not {wanted}")
        return doc

    def list_images(self, *, all: bool = False, manifests: bool = False) -> list[dict]:
        params = {"all": 1 if all else 0}
        if manifests:
            params["manifests"] = 1
        return self._get_json("listing images", "GET /images/json", "/images/json", params, list, listing=True)

    def inspect_image(self, ref: str, *, platform: Platform | None = None, manifests: bool = False) -> dict:
        params = {}
        if platform is not None:
            params["platform"] = _platform_json(platform)
        if manifests:
            params["manifests"] = 1
        return self._get_json(f"image {ref}", "GET /images/{name}/json", f"/images/{_quote(ref)}/json", params, dict)

    def image_history(self, ref: str, *, platform: Platform | None = None) -> list[dict]:
        params = {"platform": _platform_json(platform)} if platform is not None else None
        path = f"/images/{_quote(ref)}/history"
        return self._get_json(f"history of image {ref}", "GET /images/{name}/history", path, params, list)

    def info(self) -> dict:
        return self._get_json("engine info", "GET /info", "/info", None, dict)

    def ping(self) -> None:
        # GET /version answered the first contact through the same prefix, so any engine this
        # client reached serves it; it is small and costs the engine nothing to answer.
        def gone(reason: str) -> EngineUnavailable:
            return EngineUnavailable(f"the Docker engine at {self.address} stopped answering: {reason}")

        status, _ = self._version_answer(self._connect_timeout, gone)
        if status != 200:
            raise gone(f"GET /version answered HTTP {status}")

    def _version_answer(self, seconds: float, failed: Callable[[str], EngineUnavailable]) -> tuple[int, bytes]:
        """(status, body) of GET /version within `seconds`; `failed(reason)` raised when none comes."""
        try:
            return self._exchange(f"{self._endpoint.prefix}/version", seconds)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            reason = _reason(exc)
            raise failed(f"no answer in {seconds:g} s" if reason == "timed out" else reason) from None

    def abort(self) -> None:
        """Cut the requests under way and refuse new ones: once the source has failed, a stuck
        engine's other requests would each wait out their own deadline."""
        with self._lock:
            self._aborted = True
            busy = [connection.sock for connection in self._busy if connection.sock is not None]
        for sock in busy:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()


def _document_limit() -> int:
    return min(MAX_DOCUMENT_BYTES, MAX_ANSWER_BYTES)


def _json_type(doc: object) -> str:
    if doc is None:
        return "null"
    if isinstance(doc, bool):
        return "a boolean"
    if isinstance(doc, (int, float, LongInteger)):
        return "a number"
    if isinstance(doc, str):
        return "a string"
    return "an array" if isinstance(doc, list) else "an object"


def _quote(ref: str) -> str:
    # The engine routes /images/{name}/json with slashes and colons in the name, as the SDK sends them.
    return quote(ref, safe="/:")


def _error_message(data: bytes) -> str:
    """The first line of the engine's error text; "" when there is none to show (the status then stands alone)."""
    try:
        doc = loads(data)
    except RecursionError:
        return ""  # `[[[[…` is no message, and Python's words for it would read as the engine's
    except ValueError:
        doc = None
    text = doc.get("message") if isinstance(doc, dict) else data.decode("utf-8", "replace")
    lines = str(text or "").strip().splitlines()
    return lines[0] if lines else ""


def _platform_json(platform: Platform) -> str:
    doc = {"os": platform.os, "architecture": platform.architecture}
    if platform.variant:
        doc["variant"] = platform.variant
    return json.dumps(doc, separators=(",", ":"))


def connect_engine(address: str, environ: Mapping[str, str] | None = None) -> EngineClient:
    return EngineApiClient(address, environ=environ)


# ----------------------------------------------------------------------------- mapping


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
        HistoryEntry(
            _history_time(e.get("Created")), string_at(e, "CreatedBy"), string_at(e, "Comment"), i not in chosen
        )
        for i, e in enumerate(entries)
    )
    return layer_sizes, history_entries


def config_from_inspect(inspect: dict, where: str) -> ImageConfig:
    """The inspect's config fields, through the shared config parser; SourceError for an inspect the
    store cannot take: nested too deeply to encode again, or layers that are not digests."""
    rootfs = object_at(inspect, "RootFS")
    created = string_at(inspect, "Created")
    if timestamps.normalise(created) == _GO_ZERO_TIME:
        # The engine's "no time", as in its history: what it prints for a config without
        # `created`. Left unknown, so a save or registry record of the image decides.
        created = ""
    doc = {
        "created": created,
        "os": string_at(inspect, "Os"),
        "architecture": string_at(inspect, "Architecture"),
        "variant": string_at(inspect, "Variant"),
        "config": object_at(inspect, "Config"),
        "rootfs": {"type": string_at(rootfs, "Type"), "diff_ids": list_at(rootfs, "Layers")},
    }
    try:
        data = json.dumps(doc).encode()
    except RecursionError:
        # Parsed on a worker thread, it is encoded again here, deeper in the stack: nesting that
        # just fitted there may not fit here. No real config nests more than a few levels.
        raise SourceError(where, "the engine's inspect is nested too deeply") from None
    except TypeError:  # a LongInteger: no Go engine writes one from its typed Config
        raise SourceError(where, "the engine's inspect holds a number of more digits than any field takes") from None
    config = parse_config(data, where)
    _check_layers(list_at(rootfs, "Layers"), where)
    return config


def _check_layers(layers: list, where: str) -> None:
    # The layers are the config's diff_ids, and the records' layer digests and lineage are made of
    # them: each must be a digest, as a classic docker save's diff_ids must be.
    for position, layer in enumerate(layers):
        if not isinstance(layer, str):
            raise SourceError(where, f"inspect's RootFS.Layers[{position}] is {_json_type(layer)}, not a digest")
        if not _trusted_digest(layer):
            raise SourceError(where, f"inspect's RootFS.Layers[{position}] has an invalid digest {layer!r}")


def _untrusted(digest: str) -> str:
    """Why `_trusted_digest` refuses a digest, well formed or not."""
    if is_valid_digest(digest):
        return f"digest algorithm {digest.partition(':')[0]!r} is not one this index checks"
    return f"invalid digest {digest!r}"


def _trusted_digest(text: object) -> bool:
    """A digest a record may carry: well formed, and of an algorithm whose digests are checked
    (one of any other names nothing this index can stand behind, so it is refused, not trusted)."""
    return is_valid_digest(text) and text.partition(":")[0] in DIGEST_ALGORITHMS


@dataclass
class _Repository:
    registry: str
    name: str
    tags: set[str] = field(default_factory=set)
    digests: list[str] = field(default_factory=list)
    named: bool = True  # False: the image has no name, and takes the context's

    def sorted_tags(self) -> tuple[str, ...]:
        return tuple(sorted(self.tags))

    def shard_key(self, image: str) -> str:
        """A named repository is one shard's whole, as in a registry crawl. Images without a name
        (intermediate ones under --all, whatever --repository says) are keyed by their ID, so they
        spread over the shards instead of falling to one."""
        return repository_key(self.registry, self.name) if self.named else image


def repositories(inspect: dict, ctx: Context, where: str, only: Reference | None = None) -> list[_Repository]:
    """The image's repositories with their tags and manifest digests, in a stable order.

    `only` keeps the repository of a reference the user named; an image named by ID keeps all.
    """
    found: dict[tuple[str, str], _Repository] = {}
    for key in ("RepoTags", "RepoDigests"):
        for text in list_at(inspect, key):
            if not isinstance(text, str) or text.startswith("<none>"):
                continue  # the engine's placeholder for an untagged image
            try:
                ref = parse_reference(text)
            except ImgdexError as exc:
                ctx.note(f"{where}: ignoring {key} entry {text!r}: {exc}")
                continue
            if ref.digest and not _trusted_digest(ref.digest):
                # It would become the manifest digest of the repository's record.
                ctx.note(f"{where}: ignoring {key} entry {text!r}: {_untrusted(ref.digest)}")
                continue
            repo = found.setdefault((ref.registry, ref.name), _Repository(ref.registry, ref.name))
            if ref.tag and not ref.digest:
                repo.tags.add(ref.tag)
            if ref.digest and ref.digest not in repo.digests:
                repo.digests.append(ref.digest)
    if only is not None and (only.registry, only.name) in found:
        repo = found[(only.registry, only.name)]
        if only.digest in repo.digests:
            # The record carries the repository's first digest: a manifest named by digest is
            # the one asked for, even where the engine knows the image under another one first.
            repo.digests.remove(only.digest)
            repo.digests.insert(0, only.digest)
        found = {(only.registry, only.name): repo}
    if not found:
        return [_Repository(ctx.registry, ctx.repository, named=False)]
    return [found[key] for key in sorted(found)]


# In a listing's tags: an entry whose tags cannot be known, so none is retired.
_UNKNOWN_TAGS = ("", "", "")


def _tag_keys(repos: list[_Repository]) -> Iterator[tuple[str, str, str]]:
    return ((repo.registry, repo.name, tag) for repo in repos if repo.named for tag in repo.tags)


def _owned(repos: list[_Repository], image: str, shard: Shard | None) -> tuple[list[_Repository], bool]:
    """(the repositories this shard takes, whether it speaks for the whole image).

    An image in repositories of several shards gives each shard its own records; what is about
    the image itself (it cannot be read, a platform failed) is said by the shard of its first
    repository only, so the shards together say it once.
    """
    if shard is None:
        return repos, True
    return [repo for repo in repos if shard.owns(repo.shard_key(image))], shard.owns(repos[0].shard_key(image))


def _layers(config: ImageConfig, sizes: list[int] | None) -> tuple[Blob, ...]:
    if sizes is None:
        sizes = [0] * len(config.diff_ids)
    return tuple(
        Blob(digest=d, size=s, media_type=mt.DOCKER_LAYER_TAR) for d, s in zip(config.diff_ids, sizes, strict=True)
    )


def _image_record(
    ctx: Context,
    repo: _Repository,
    *,
    digest: str,
    kind: str,
    tags: tuple[str, ...] = (),
    media_type: str = "",
    config_blob: Blob | None = None,
    config: ImageConfig | None = None,
    layers: tuple[Blob, ...] = (),
    history: tuple[HistoryEntry, ...] = (),
    platform: Platform | None = None,
    parent: str = "",
) -> ImageRecord:
    """One resource of `repo`; index and attestation records leave the image fields at their defaults."""
    return new_record(
        ctx,
        repo.registry,
        repo.name,
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


@dataclass(frozen=True)
class ManifestSummary:
    """One of the manifests the containerd image store reports for an image (its `Manifests`)."""

    digest: str
    media_type: str
    kind: str  # KIND_IMAGE or KIND_ATTESTATION; "" for any other kind the engine names
    raw_kind: str  # the engine's own word for the kind, for notes
    available: bool  # the manifest's content is in the engine
    platform: Platform | None


@dataclass(frozen=True)
class ImageSummary:
    """One image of the engine's listing: its ID and, with the containerd image store, its manifests."""

    image_id: str
    manifests: tuple[ManifestSummary, ...] | None = None
    lead: bool = True  # this shard speaks for the image (see `_owned`)
    problem: str = ""  # why the entry cannot be read: said in its place, and nothing is asked for it


@dataclass(frozen=True)
class _Inspected:
    """An image's (or one platform's) inspect and history documents, as the engine gave them."""

    inspect: dict
    history: list[dict]


@dataclass
class _Details:
    """What one image needs from the engine, fetched together off the consumer's thread."""

    inspect: dict
    history: list[dict]
    manifests: tuple[ManifestSummary, ...] | None = None  # containerd image store only
    children: dict[str, _Inspected | Exception] = field(default_factory=dict)  # by manifest digest


# ----------------------------------------------------------------------------- the source


class _ImageRequests:
    """The requests about one image (inspect, history), shared by the fetching threads.

    A lost answer (`AnswerLost`) to one of them fails that image only, as an error answer about it
    does: it becomes EngineRefused when the engine still answers GET /version. It stays
    EngineUnavailable, and fails the source, when the engine does not, or when LOST_IN_A_ROW image
    requests in a row lost their answers: an engine that answers no image request is stuck.
    """

    def __init__(self, client: EngineClient, limit: int = LOST_IN_A_ROW):
        self._client = client
        self.api_version = client.api_version
        self._limit = max(limit, 1)
        self._lock = threading.Lock()
        self._lost = 0  # image requests in a row without a whole answer

    def inspect_image(self, ref: str, *, platform: Platform | None = None, manifests: bool = False) -> dict:
        return self._ask(self._client.inspect_image, ref, platform=platform, manifests=manifests)

    def image_history(self, ref: str, *, platform: Platform | None = None) -> list[dict]:
        return self._ask(self._client.image_history, ref, platform=platform)

    def _ask(self, request: Callable, *args, **kwargs):
        try:
            answer = request(*args, **kwargs)
        except AnswerLost as exc:
            raise self._judged(exc) from None
        except (NoSuchImage, EngineRefused):
            self._answered()
            raise
        self._answered()
        return answer

    def _answered(self) -> None:
        with self._lock:
            self._lost = 0

    def _judged(self, exc: AnswerLost) -> ImgdexError:
        with self._lock:
            self._lost += 1
            lost = self._lost
        if lost >= self._limit:
            return EngineUnavailable(f"{exc} ({lost} image requests in a row got no whole answer)")
        try:
            self._client.ping()
        except EngineUnavailable:
            return exc
        return EngineRefused(f"{exc.what}: {exc.reason}")


@dataclass
class DockerDaemon:
    """A Docker engine, found as the Docker SDK finds it or at an explicit address."""

    location: str  # the engine address
    ref: str = ""
    all_images: bool = False
    kind: str = "docker-daemon"
    reads_layers = False
    # A whole listing is the engine's word on the tags of the images recorded from it (vanished.py)
    reads_index = True
    store = None
    connect: Callable[[str], EngineClient] | None = None  # None: connect_engine, the engine's HTTP API
    workers: int = WORKERS
    window: int = WINDOW
    tls_environ: dict[str, str] | None = None  # a docker context's TLS settings, read in place of the environment's

    @classmethod
    def from_spec(cls, ref: str, docker_host: str = "", all_images: bool = False) -> "DockerDaemon":
        location, tls_environ = resolve_host(docker_host)
        return cls(
            location=location,
            ref=ref,
            all_images=all_images,
            workers=WORKERS,
            window=WINDOW,
            tls_environ=tls_environ,
        )

    @property
    def spec(self) -> str:
        return f"docker-daemon:{self.ref}" if self.ref else "docker-daemon"

    def bind_store(self, store) -> None:
        self.store = store

    def records(self, ctx: Context) -> Iterator[ImageRecord | SourceError | TagsRetired]:
        where = self.spec
        if self.ref and not _IMAGE_ID.fullmatch(self.ref):
            try:
                parse_reference(self.ref)
            except ImgdexError:
                # `..` or `x/../y` would reach the engine as another path (it answered 301), and no
                # image is named so: refused as the docker CLI refuses it, before any engine is asked.
                if in_shard(ctx.shard, self._ref_key()):
                    yield SourceError(where, f"{self.ref!r} is not an image reference or ID")
                return
        try:
            if self.connect is not None:
                client = self.connect(self.location)
            else:
                client = connect_engine(self.location, self.tls_environ)
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
        status = client.info().get("DriverStatus")
        if not isinstance(status, list):
            return False  # an engine that does not say which store it runs on is read as the classic one
        return any(isinstance(pair, list) and CONTAINERD_SNAPSHOTTER in pair for pair in status)

    def _targets(
        self, client: EngineClient, containerd: bool, ctx: Context, listed: set[tuple[str, str, str]] | None
    ) -> list[ImageSummary]:
        """The images to read, each once, in the engine's order; only IDs (and manifests) are kept.

        With a shard, an image none of whose repositories (as the listing names them) the shard
        takes is dropped here, before its inspect and history are asked for. Every tag the listing
        names, in every shard, goes into `listed` (`_UNKNOWN_TAGS` for an entry that is no object,
        whose tags cannot be known)."""
        targets = []
        seen = set()
        quiet = replace(ctx, note=lambda message: None)  # what the listing names wrongly is noted by the mapping
        for position, doc in enumerate(client.list_images(all=self.all_images, manifests=containerd)):
            problem = _listing_problem(doc, position)
            if listed is not None:
                if isinstance(doc, dict):
                    listed.update(_tag_keys(repositories(doc, quiet, self.spec)))
                else:
                    listed.add(_UNKNOWN_TAGS)
            doc = doc if isinstance(doc, dict) else {}
            image = "" if problem else doc["Id"]
            if not problem:
                if image in seen:
                    continue
                seen.add(image)
            lead = True
            if ctx.shard is not None:
                key = image or f"listing entry {position}"
                owned, lead = _owned(repositories(doc, quiet, self.spec), key, ctx.shard)
                if not owned:
                    continue
            manifests = manifest_summaries(doc.get("Manifests")) if containerd and not problem else None
            targets.append(ImageSummary(image, manifests, lead, problem))
        return targets

    def _records(
        self, client: EngineClient, ctx: Context, where: str
    ) -> Iterator[ImageRecord | SourceError | TagsRetired]:
        containerd = self._containerd(client)
        requests = _ImageRequests(client)
        if self.ref:
            # One image is not the engine's list of tags: none is retired.
            yield from self._named(client, requests, ctx, where, containerd)
            return

        def fetch(target: ImageSummary) -> _Details | None:
            if target.problem:
                return None
            return self._fetch(requests, target.image_id, target.manifests, containerd)

        listed: set[tuple[str, str, str]] | None = set() if holds_tags(self.store) else None
        targets = self._targets(client, containerd, ctx, listed)
        with closing(prefetch(targets, fetch, self.workers, self.window)) as fetched:
            for target, details in fetched:
                if target.problem:
                    if target.lead:
                        yield SourceError(where, target.problem)
                    continue
                if isinstance(details, NoSuchImage):
                    if target.lead:
                        ctx.note(f"{where}: image {target.image_id} was removed while indexing; skipped")
                    continue
                if isinstance(details, EngineUnavailable):
                    client.abort()  # before the prefetch waits for what it has under way
                    raise details
                if isinstance(details, Exception):
                    if target.lead:
                        # The engine's own errors name the image already (`image X: HTTP 500`).
                        text = str(details)
                        yield SourceError(
                            where, text if target.image_id in text else f"image {target.image_id}: {text}"
                        )
                    continue
                for item in self._map(details, ctx, where, None, containerd):
                    if listed is not None and isinstance(item, ImageRecord):
                        # An image tagged again between the listing and its inspect
                        listed.update((item.registry, item.name, tag) for tag in item.tags)
                    yield item
        if listed is not None and _UNKNOWN_TAGS not in listed:
            yield from vanished_tags(self.store, self.kind, self.location, listed, ctx.shard, where, ctx.note)

    def _named(
        self, client: EngineClient, requests: _ImageRequests, ctx: Context, where: str, containerd: bool
    ) -> Iterator[ImageRecord | SourceError]:
        # The one inspect is asked for by every shard: only the image's names tell which shard's
        # it is (a name may be an alias, an ID prefix stands for all its repositories). A failure
        # to find it is said by the shard that owns the name as given.
        try:
            inspect = requests.inspect_image(self.ref)
        except NoSuchImage:
            if in_shard(ctx.shard, self._ref_key()):
                yield SourceError(
                    where, f"the Docker engine at {shown_address(self.location)} has no image {self.ref!r}"
                )
            return
        except EngineRefused as exc:
            if in_shard(ctx.shard, self._ref_key()):
                yield SourceError(where, str(exc))
            return
        if not _trusted_digest(inspect.get("Id")):
            # The Id goes into the paths of the next requests and is the config digest of the records.
            if in_shard(ctx.shard, self._ref_key()):
                yield SourceError(
                    where, f"image {self.ref}: the engine's inspect has an invalid Id {_shown_id(inspect)}"
                )
            return
        only = None
        match = _IMAGE_ID.fullmatch(self.ref)
        by_id = match is not None and string_at(inspect, "Id").removeprefix("sha256:").startswith(match.group(1))
        if not by_id:
            try:
                only = parse_reference(self.ref)
            except ImgdexError:
                only = None
        lead = True
        if ctx.shard is not None:
            quiet = replace(ctx, note=lambda message: None)
            owned, lead = _owned(repositories(inspect, quiet, where, only), string_at(inspect, "Id"), ctx.shard)
            if not owned:
                return
        manifests = None
        try:
            if containerd:
                manifests = self._manifests_of(client, requests, inspect)
            details = self._fetch(requests, string_at(inspect, "Id"), manifests, containerd, inspect=inspect)
        except (NoSuchImage, EngineRefused) as exc:
            if lead:
                yield SourceError(where, str(exc))
            return
        yield from self._map(details, ctx, where, only, containerd)

    def _ref_key(self) -> str:
        try:
            ref = parse_reference(self.ref)
        except ImgdexError:
            return self.ref
        return repository_key(ref.registry, ref.name)

    def _manifests_of(
        self, client: EngineClient, requests: _ImageRequests, inspect: dict
    ) -> tuple[ManifestSummary, ...] | None:
        if api_at_least(client.api_version, "1.48"):
            full = requests.inspect_image(string_at(inspect, "Id"), manifests=True)
            return manifest_summaries(full.get("Manifests"))
        # API 1.47 reports manifests only in the listing.
        for doc in client.list_images(all=True, manifests=True):
            if isinstance(doc, dict) and doc.get("Id") == inspect.get("Id"):
                return manifest_summaries(doc.get("Manifests"))
        return None

    # -- fetching (runs on worker threads)

    def _fetch(
        self,
        client: _ImageRequests,
        image: str,
        manifests: tuple[ManifestSummary, ...] | None,
        containerd: bool,
        inspect: dict | None = None,
    ) -> _Details:
        if inspect is None:
            inspect = client.inspect_image(image)
            _check_same_image(inspect, image)
        if not containerd:
            return _Details(inspect, _history(client, image))
        details = _Details(inspect, [], manifests or ())
        _, single = containerd_shape(inspect, details.manifests)
        if single is not None:
            details.history = _history(client, image)
            return details
        per_platform = api_at_least(client.api_version, "1.49")
        default_platform = _inspect_platform(inspect)
        for manifest in details.manifests:
            if manifest.kind != KIND_IMAGE or not manifest.available or manifest.platform is None:
                continue
            if not _trusted_digest(manifest.digest):
                continue  # refused by the mapping; nothing to ask for
            try:
                if per_platform:
                    child = client.inspect_image(image, platform=manifest.platform)
                    _check_same_platform_image(child, image, manifest.digest)
                    details.children[manifest.digest] = _Inspected(child, _history(client, image, manifest.platform))
                elif manifest.platform == default_platform:
                    # Before API 1.49 only the engine's default platform can be inspected.
                    details.children[manifest.digest] = _Inspected(inspect, _history(client, image))
            except (NoSuchImage, EngineRefused) as exc:
                details.children[manifest.digest] = exc
        return details

    # -- mapping

    def _map(
        self, details: _Details, ctx: Context, where: str, only: Reference | None, containerd: bool
    ) -> Iterator[ImageRecord | SourceError]:
        inspect = details.inspect
        image = string_at(inspect, "Id")
        label = f"{where} (image {image})"
        repos, lead = _owned(repositories(inspect, ctx, where, only), image, ctx.shard)
        if not repos:
            return
        if containerd:
            yield from self._map_containerd(details, repos, ctx, where, label, lead)
            return
        try:
            config = config_from_inspect(inspect, label)
            sizes, history = _sizes(config, details.history, ctx, label)
        except SourceError as exc:
            if lead:
                yield exc
            return
        layers = _layers(config, sizes)
        config_blob = Blob(digest=image, size=0, media_type=mt.DOCKER_CONFIG)
        for repo in repos:
            yield _image_record(
                ctx,
                repo,
                digest=repo.digests[0] if repo.digests else "",
                kind=KIND_IMAGE,
                tags=repo.sorted_tags(),
                config_blob=config_blob,
                config=config,
                layers=layers,
                history=history,
                platform=platform_of(config),
            )

    def _map_containerd(
        self, details: _Details, repos: list[_Repository], ctx: Context, where: str, label: str, lead: bool = True
    ):
        target, single = containerd_shape(details.inspect, details.manifests or ())
        if not _trusted_digest(target.digest):
            if lead:
                yield SourceError(
                    label, f"the engine's descriptor of the image has an invalid digest {target.digest!r}"
                )
            return
        if single is not None:
            yield from _containerd_image(
                _Inspected(details.inspect, details.history),
                single,
                repos,
                ctx,
                label,
                tagged=True,
                parent="",
                lead=lead,
            )
            return
        for repo in repos:
            yield _image_record(
                ctx, repo, digest=target.digest, kind=KIND_INDEX, tags=repo.sorted_tags(), media_type=target.media_type
            )
        for manifest in details.manifests or ():
            if not _trusted_digest(manifest.digest):
                if lead:
                    yield SourceError(label, f"the engine lists a manifest with an invalid digest {manifest.digest!r}")
                continue
            child_label = f"{label} manifest {manifest.digest}"
            if manifest.kind == KIND_ATTESTATION:
                for repo in repos:
                    yield _image_record(
                        ctx,
                        repo,
                        digest=manifest.digest,
                        kind=KIND_ATTESTATION,
                        media_type=manifest.media_type,
                        platform=manifest.platform,
                        parent=target.digest,
                    )
                continue
            if manifest.kind != KIND_IMAGE:
                ctx.note(f"{child_label}: skipped: the engine reports its kind as {manifest.raw_kind or 'unknown'}")
                continue
            if not manifest.available:
                ctx.note(f"{child_label}: skipped: its content is not in the engine")
                continue
            fetched = details.children.get(manifest.digest)
            if fetched is None:
                ctx.note(
                    f"{child_label}: skipped: the engine inspects platform {manifest.platform or '(none)'}"
                    " only from API 1.49"
                )
                continue
            if isinstance(fetched, Exception):
                if lead:
                    yield SourceError(child_label, str(fetched))
                continue
            yield from _containerd_image(
                fetched, manifest, repos, ctx, child_label, tagged=False, parent=target.digest, lead=lead
            )


def _listing_problem(doc: object, position: int) -> str:
    """Why a listing entry names no image to ask for ("" when it names one). Its Id goes into the
    paths of the image's requests and is the config digest of its records: it must be a digest."""
    if not isinstance(doc, dict):
        return f"listing images: entry {position} is {_json_type(doc)}, not an object"
    if "Id" not in doc:
        return f"listing images: entry {position} has no Id"
    image = doc["Id"]
    if not isinstance(image, str):
        return f"listing images: entry {position} has an Id that is {_json_type(image)}, not a string"
    if not _trusted_digest(image):
        return f"listing images: entry {position} has an invalid Id {image!r}"
    return ""


def _check_same_image(inspect: dict, image: str) -> None:
    """EngineRefused when the inspect of the listed `image` names another: records are made from the
    inspect's Id, so two images answered for as one (or as none) would become one record."""
    if inspect.get("Id") != image:
        raise EngineRefused(f"the engine's inspect of it has Id {_shown_id(inspect)}, not the listed one")


def _check_same_platform_image(inspect: dict, image: str, manifest: str) -> None:
    """EngineRefused when the inspect of one platform of `image` names neither that platform's
    `manifest` (as engines answer) nor the image: another image's platform would land as this one's."""
    if inspect.get("Id") not in (manifest, image):
        raise EngineRefused(f"the engine's inspect of its manifest {manifest} has Id {_shown_id(inspect)}")


def _shown_id(inspect: dict) -> str:
    found = inspect.get("Id")
    return repr(found) if isinstance(found, str) else _json_type(found)


def _history(client: _ImageRequests, image: str, platform: Platform | None = None) -> list[dict]:
    """The image's history, with only the fields the mapping reads; EngineRefused past MAX_ENTRIES
    entries, the bound on a config's history from every other source."""
    history = client.image_history(image, platform=platform)
    if len(history) > MAX_ENTRIES:
        raise EngineRefused(
            f"history of image {image}: {len(history):,} entries, over the {MAX_ENTRIES:,} an image may have"
        )
    return [{k: e[k] for k in _HISTORY_FIELDS if k in e} if isinstance(e, dict) else None for e in history]


def _sizes(config: ImageConfig, history: list[dict], ctx: Context, label: str):
    """Layer sizes and history; SourceError when the engine reports a size the store cannot hold."""
    for position, entry in enumerate(history):
        size = entry.get("Size") if isinstance(entry, dict) else None
        if size is not None and not valid_size(size):
            raise SourceError(label, f"history entry {position} has an invalid size: {size_problem(size)}")
    sizes, entries = match_history(len(config.diff_ids), history)
    if sizes is None and config.diff_ids:
        ctx.note(
            f"{label}: the engine's history does not tell the sizes of its {len(config.diff_ids)} layers;"
            " sizes left unknown"
        )
    elif sizes:
        check_sizes(_layers(config, sizes), None, label)
    return sizes, entries


def _containerd_image(
    fetched: _Inspected,
    manifest: ManifestSummary,
    repos: list[_Repository],
    ctx: Context,
    label: str,
    *,
    tagged: bool,
    parent: str,
    lead: bool = True,
) -> Iterator[ImageRecord | SourceError]:
    try:
        config = config_from_inspect(fetched.inspect, label)
        sizes, entries = _sizes(config, fetched.history, ctx, label)
    except SourceError as exc:
        if lead:
            yield exc
        return
    layers = _layers(config, sizes)
    platform = manifest.platform or platform_of(config)
    for repo in repos:
        # The containerd store's API gives no config digest: the config stays unknown.
        yield _image_record(
            ctx,
            repo,
            digest=manifest.digest,
            kind=KIND_IMAGE,
            tags=repo.sorted_tags() if tagged else (),
            media_type=manifest.media_type,
            config=config,
            layers=layers,
            history=entries,
            platform=platform,
            parent=parent,
        )


def manifest_summaries(raw: object) -> tuple[ManifestSummary, ...] | None:
    """The engine's `Manifests` (in its index order) as summaries; None when it reports none."""
    if not isinstance(raw, list):
        return None
    out = []
    for item in raw:
        if not isinstance(item, dict):
            continue
        descriptor = object_at(item, "Descriptor")
        digest = string_at(descriptor, "digest") or string_at(item, "ID") or string_at(item, "Id")
        if not digest:
            continue
        raw_kind = string_at(item, "Kind")
        platform_doc = object_at(object_at(item, "ImageData"), "Platform") or object_at(descriptor, "platform")
        platform = None
        if platform_doc:
            platform = Platform(
                string_at(platform_doc, "os"),
                string_at(platform_doc, "architecture"),
                string_at(platform_doc, "variant"),
            )
        out.append(
            ManifestSummary(
                digest=digest,
                media_type=string_at(descriptor, "mediaType"),
                kind={"image": KIND_IMAGE, "attestation": KIND_ATTESTATION}.get(raw_kind, ""),
                raw_kind=raw_kind,
                available=item.get("Available") is True,
                platform=platform,
            )
        )
    return tuple(out) or None


def _target(inspect: dict) -> Blob:
    descriptor = object_at(inspect, "Descriptor")
    digest = string_at(descriptor, "digest") or string_at(inspect, "Id")
    size = descriptor.get("size")
    return Blob(digest=digest, size=size if isinstance(size, int) else 0, media_type=string_at(descriptor, "mediaType"))


def containerd_shape(inspect: dict, manifests: tuple[ManifestSummary, ...]) -> tuple[Blob, ManifestSummary | None]:
    """The image's target, and the manifest it is when it is not an index (None for an index)."""
    target = _target(inspect)
    if target.media_type in mt.INDEXES:
        return target, None
    for manifest in manifests:
        if manifest.digest == target.digest:
            return target, manifest
    if not manifests or target.media_type in mt.MANIFESTS:
        return target, ManifestSummary(
            digest=target.digest,
            media_type=target.media_type,
            kind=KIND_IMAGE,
            raw_kind="image",
            available=True,
            platform=None,
        )
    return target, None  # children that are not the target itself: an index


def _inspect_platform(inspect: dict) -> Platform:
    return Platform(string_at(inspect, "Os"), string_at(inspect, "Architecture"), string_at(inspect, "Variant"))


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
