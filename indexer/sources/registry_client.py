"""The HTTP side of the registry source: one client per registry host, shared by the worker threads.

Network I/O uses urllib3 directly (the transport under requests and the Docker SDK): its pool
manager is safe to share between threads and costs half the CPU per request of a requests
Session, which matters when a crawl is thousands of small GETs. Transient failures (connection
errors, timeouts, a cut-short body, 408/429/5xx) are retried with
exponential backoff and jitter, and a server's `Retry-After` is honoured. A 401 is answered once
per request with the credentials or token its challenge asks for.

Every attempt has one deadline (`RegistryOptions.timeout`) for connect, headers and the whole
body: urllib3's read timeout bounds each recv only, so a server sending a byte now and then
would otherwise hold a worker, and the store lock, for as long as it likes. A host that gives
no answer `breaker_threshold` times in a row is given up on for the rest of the crawl.
"""

from __future__ import annotations

import base64
import email.utils
import glob
import http.client
import io
import ipaddress
import os
import random
import re
import socket
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass, field

import urllib.request

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import (
    ConnectTimeoutError,
    LocationParseError,
    MaxRetryError,
    NameResolutionError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)
from urllib3.exceptions import TimeoutError as Urllib3Timeout
from urllib3.util.connection import allowed_gai_family

from ..errors import AuthError, HostDown, HttpError, SourceError
from ..references import redact_url_secrets
from . import mediatypes as mt
from .bodies import BodyTooLarge, InterimSkipping, decimal, read_capped, read_prefix
from .registry_auth import (
    Credentials,
    HostAuth,
    first_usable,
    oauth_error_text,
    parse_token_response,
    refresh_token_of,
    scrub,
    scrub_bytes,
    sent_secrets,
)
from .tcp_dial import ResolverTimeout, connect_tcp
from .tlsfiles import load_ca, load_key_pair

USER_AGENT = "imgdex-registry-crawler/0.1"
# The OAuth2 `client_id` a refresh-token grant must name (docker says `docker`, skopeo `containers/image`).
CLIENT_ID = "imgdex"
# How many times a token request is asked again because a parallel one rotated the refresh token.
_REFRESH_RACES = 8
MANIFEST_ACCEPT = ", ".join(
    [mt.OCI_INDEX, mt.OCI_MANIFEST, mt.DOCKER_LIST, mt.DOCKER_MANIFEST, mt.DOCKER_SCHEMA1_SIGNED, mt.DOCKER_SCHEMA1]
)
RETRYABLE = frozenset({408, 429, 500, 502, 503, 504})
CERTS_DIRS = ("/etc/docker/certs.d", "/etc/containers/certs.d")
SMALL_LIMIT = 1024 * 1024  # pings, tag lists pages and token answers
CATALOG_LIMIT = 64 * 1024 * 1024
# An error or redirect answer is read only to be quoted: distribution's are a few hundred bytes, and
# one of a registry's choosing must not cost what a catalog page may.
ERROR_BODY_LIMIT = 64 * 1024
QUOTED_LIMIT = 300  # characters of a registry's own text (error messages, reasons) a message quotes
MAX_REDIRECTS = 5
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


@dataclass
class RegistryOptions:
    """Everything the registry source takes from the command line, with the CLI defaults."""

    repository_prefix: str = ""
    username: str = ""
    password: str | None = field(default=None, repr=False)
    tls_verify: bool = True
    ca_cert: str = ""
    insecure_registries: tuple[str, ...] = ()
    jobs: int = 8
    timeout: float = 30.0  # one deadline per attempt: connect, headers and the whole body
    retries: int = 3
    breaker_threshold: int = 5  # attempts in a row without an answer before a host is given up on
    backoff: float = 0.5
    max_backoff: float = 10.0
    max_retry_after: float = 60.0
    # Waits between the attempts of one request, Retry-After and backoff alike, may add up to this
    # much: a server answering `Retry-After: 60` every time would otherwise hold a worker for
    # max_retry_after × retries.
    max_retry_wait: float = 60.0
    auth_files: list[str] | None = None  # None: the files docker and skopeo read
    certs_dirs: tuple[str, ...] = CERTS_DIRS
    # skopeo's --cert-dir: one folder of *.crt, *.cert and *.key for every host, read instead of
    # the host's folder under certs_dirs
    cert_dir: str = ""
    # skopeo's --registries-conf: the registries.conf read instead of the usual ones ('' for those)
    registries_conf: str = ""
    # skopeo's --registry-token: a bearer token for the registry named, sent instead of one asked
    # of its token server
    registry_token: str = field(default="", repr=False)


@dataclass
class Reply:
    status: int
    headers: urllib3.HTTPHeaderDict
    body: bytes
    url: str
    reason: str = ""


def split_host(host: str) -> tuple[str, str]:
    """`name:port` or `[v6]:port` -> (name, port)."""
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        return name, rest.lstrip(":")
    name, _, port = host.partition(":")
    return name, port


def is_loopback(host: str) -> bool:
    name, _ = split_host(host)
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def is_insecure(host: str, insecure: tuple[str, ...]) -> bool:
    """Listed as HOST, HOST:PORT or a CIDR network, as docker's insecure-registries are."""
    name, _ = split_host(host)
    for entry in insecure:
        entry = entry.strip().lower()
        if entry in (host.lower(), name.lower()):
            return True
        if "/" in entry:
            try:
                if ipaddress.ip_address(name) in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                continue
    return False


def _retry_after(reply_headers) -> float | None:
    value = reply_headers.get("Retry-After")
    if not value:
        return None
    value = value.strip()
    seconds = decimal(value)
    if seconds is not None:
        return float(seconds)
    if value.isascii() and value.isdigit():
        return float("inf")  # more digits than any wait: longer than any allowed, not absent
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


class UnusableTlsFiles(Exception):
    """A CA file, client certificate or key that cannot be loaded: every request says why."""


def _with_system_cas(cas: tuple[str, ...], client_cert: tuple[str, str] | None) -> ssl.SSLContext:
    """A context trusting the system's CAs and those of `cas`, offering `client_cert`;
    UnusableTlsFiles naming the file that cannot be loaded, and why.

    Docker and skopeo add a registry's own CAs (every certs.d `*.crt`, a CA file) to the system's
    rather than trust them alone: the blob store or CDN a registry redirects to, and its token
    server, are often public hosts, and a certs.d folder may hold the old CA and the new one."""
    context = urllib3.util.create_urllib3_context(cert_reqs=ssl.CERT_REQUIRED)
    context.load_default_certs()
    for path in cas:
        try:
            load_ca(context, path)
        except SourceError as exc:
            raise UnusableTlsFiles(str(exc)) from None
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise UnusableTlsFiles(f"{path}: the CA file cannot be used ({_tls_reason(exc)})") from None
    if client_cert:
        try:
            load_key_pair(context, *client_cert)
        except SourceError as exc:
            raise UnusableTlsFiles(str(exc)) from None
        except (OSError, ValueError) as exc:
            raise UnusableTlsFiles(
                f"{client_cert[0]}: the client certificate cannot be used ({_tls_reason(exc)})"
            ) from None
    return context


def _tls_reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc) or type(exc).__name__


# What a failed attempt says about its host: these kinds mean no answer came at all, and count
# towards giving the host up. A TLS error or a cut-short body is an answer of sorts.
_NO_ANSWER = frozenset({"timeout", "refused", "broken", "failed", "unresolved"})
# Failures no retry mends: a certificate, a host name the resolver says does not exist.
_FINAL = frozenset({"tls", "unresolved"})
# The resolver's "no such name" answers; EAI_AGAIN (a resolver that did not answer) is retried.
_NO_SUCH_HOST = frozenset(code for code in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", None)) if code is not None)
# How a failed name lookup begins its reason: no plain-HTTP hint applies to it.
_UNRESOLVED = "cannot resolve "
# Why a lookup failed when the name server said nothing before the attempt's deadline.
_NO_LOOKUP = "the name server gave no answer in time"


def _classify(exc: BaseException, timeout: float) -> tuple[str, str]:
    """(kind, one-line reason) of a failed attempt."""
    if isinstance(exc, MaxRetryError) and exc.reason is not None:
        exc = exc.reason
    refused = exc.args[-1] if isinstance(exc, ProtocolError) and exc.args else None
    if isinstance(refused, (http.client.HTTPException, OverflowError)) and not isinstance(refused, ConnectionError):
        exc = refused  # http.client refused the status line or headers; urllib3 says "Connection aborted."
    if isinstance(exc, NameResolutionError):
        cause = exc.__cause__ if isinstance(exc.__cause__, socket.gaierror) else getattr(exc, "_reason", None)
        host = redact_url_secrets(str(getattr(exc, "_host", "") or "the host"))[:200]
        words = getattr(cause, "strerror", None) or "no address"
        kind = "unresolved" if getattr(cause, "errno", None) in _NO_SUCH_HOST else "failed"
        return kind, f"{_UNRESOLVED}{host}: {words}"
    text = _innermost(exc)
    if "Connection refused" in text:
        return "refused", "connection refused"
    if isinstance(exc, ReadTimeoutError) or "Read timed out" in text:
        return "timeout", f"no complete answer within {timeout:g} s"
    if isinstance(exc, SSLError):
        return "tls", f"TLS error: {text}"
    if isinstance(exc, ConnectTimeoutError) and "timed out" in text:
        return "timeout", f"could not connect within {timeout:g} s"
    if isinstance(exc, Urllib3Timeout) and not isinstance(exc, ConnectTimeoutError):
        return "timeout", f"no complete answer within {timeout:g} s"
    if "IncompleteRead" in text:
        return "cut", "the response body was cut short"
    if isinstance(exc, (http.client.HTTPException, OverflowError)):
        # http.client's own refusals of what it read (an OverflowError for a chunk size past int64)
        return "malformed", f"the answer is not valid HTTP ({text})"
    if isinstance(exc, ProtocolError):
        return "broken", f"the connection broke: {text}"
    return "failed", f"connection failed: {text}"


def _innermost(exc: BaseException) -> str:
    seen = exc
    for _ in range(10):
        if seen.args and isinstance(seen.args[0], BaseException):
            seen = seen.args[0]
        elif isinstance(getattr(seen, "reason", None), BaseException):
            seen = seen.reason
        else:
            break
    return redact_url_secrets(" ".join(str(seen).split()))[:300]


# Paths of names that passed Docker's grammar: nothing urllib3 would encode or resolve, unless a
# segment starts with a dot or is empty, which the full check below decides.
_PLAIN_PATH = re.compile(r"/[A-Za-z0-9_.:@/-]*\Z")
_ORIGIN = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*")


def is_canonical_path(path: str) -> bool:
    """True when urllib3 sends `path` exactly as given: printable ASCII, no dot segments, nothing to encode."""
    if _PLAIN_PATH.match(path) and "/." not in path and "//" not in path:
        return True  # the common case, without parsing: every manifest and blob path of a crawl
    if not path.startswith("/") or not path.isascii() or not path.isprintable() or " " in path:
        return False
    try:
        parsed = urllib3.util.parse_url("http://host" + path)
    except ValueError:
        return False
    return (parsed.path or "") + (f"?{parsed.query}" if parsed.query is not None else "") == path


def quoted(text: str, secrets=(), limit: int = QUOTED_LIMIT) -> str:
    """A registry's own text as a message may quote it: the secrets it echoes hidden, then cut."""
    text = scrub(text, secrets)
    return text if len(text) <= limit else text[:limit] + "…"


def registry_error_text(body: bytes, secrets=()) -> str:
    """distribution's `{"errors":[{"code","message"}]}` -> `CODE: message`, cut to a few hundred
    characters; '' when absent."""
    from .jsonstream import loads

    if len(body) > ERROR_BODY_LIMIT:
        return ""  # an error answer that long is no distribution error: it is not parsed
    try:
        doc = loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return ""
    errors = doc.get("errors") if isinstance(doc, dict) else None
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        code, message = errors[0].get("code", ""), errors[0].get("message", "")
        return quoted(": ".join(str(p) for p in (code, message) if p), secrets)
    return ""


def _read_body(response: urllib3.BaseHTTPResponse, limit: int, method: str) -> bytes:
    """The body, refused past `limit`, or the first bytes of an answer that is only quoted."""
    if method == "HEAD":
        response.read()  # no body, but http.client counts the response open until it is read
        return b""
    if response.status >= 300:
        return read_prefix(response, min(limit, ERROR_BODY_LIMIT))
    return read_capped(response, limit)


def _origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) as urllib3 compares hosts before it sends credentials on."""
    try:
        parsed = urllib3.util.parse_url(url)
    except ValueError:
        return "", url, None  # matches no other URL: nothing is handed on to it
    scheme = (parsed.scheme or "").lower()
    return scheme, (parsed.host or "").lower(), parsed.port or {"http": 80, "https": 443}.get(scheme)


def _host_of(url: str) -> str:
    """`host[:port]` of a URL, without any userinfo it carries."""
    return urllib.parse.urlsplit(url).netloc.rpartition("@")[2]


# The deadline of the attempt running on this thread, for the responses it creates: urllib3 builds
# them deep inside `urlopen`, where no argument reaches.
_attempt = threading.local()


class _DeadlineReader(io.RawIOBase):
    """A response's socket as http.client reads it, every recv bounded by what is left of the deadline."""

    def __init__(self, sock: socket.socket, raw, deadline: float):
        super().__init__()
        self._sock = sock
        # the reader http.client made with makefile(), which counts a reader on the socket, so a
        # response handed the connection (`Connection: close`) can read its body after http.client
        # closes the socket
        self._raw = raw
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("timed out: the deadline of the request passed")
        self._sock.settimeout(remaining)
        return self._raw.readinto(buffer)

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


class _DeadlineResponse(InterimSkipping):
    def __init__(self, sock, *args, **kwargs):
        super().__init__(sock, *args, **kwargs)
        deadline = getattr(_attempt, "deadline", None)
        if deadline is not None:
            self.fp = io.BufferedReader(_DeadlineReader(sock, self.fp.detach(), deadline))


class _DeadlineDial:
    """urllib3's dial, the name lookup bounded by the attempt's deadline (see tcp_dial)."""

    def _new_conn(self) -> socket.socket:
        deadline = getattr(_attempt, "deadline", None)
        if deadline is None:
            timeout = self.timeout if isinstance(self.timeout, (int, float)) else RegistryOptions.timeout
            deadline = time.monotonic() + timeout
        host = self._dns_host.strip("[]")
        try:
            host.encode("idna")
        except UnicodeError:
            raise LocationParseError(f"'{host}', label empty or too long") from None
        try:
            sock = connect_tcp(host, self.port, deadline, allowed_gai_family(), self.socket_options or ())
        except ResolverTimeout as exc:
            raise NameResolutionError(self.host, self, socket.gaierror(socket.EAI_AGAIN, _NO_LOOKUP)) from exc
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc
        except TimeoutError as exc:
            raise ConnectTimeoutError(self, f"Connection to {self.host} timed out.") from exc
        except OSError as exc:
            raise NewConnectionError(self, f"Failed to establish a new connection: {exc}") from exc
        return sock


class _HTTPConnection(_DeadlineDial, HTTPConnection):
    response_class = _DeadlineResponse


class _HTTPSConnection(_DeadlineDial, HTTPSConnection):
    response_class = _DeadlineResponse


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_POOL_CLASSES = {"http": _HTTPPool, "https": _HTTPSPool}


class _Breaker:
    """Attempts in a row that got no answer from one host; past the threshold the host is given up on."""

    def __init__(self, host: str, threshold: int):
        self.host = host
        self.threshold = max(1, threshold)
        self.failures = 0
        self.down = ""  # why the host is given up on; '' while it is not
        self._lock = threading.Lock()

    def check(self, what: str) -> None:
        if self.down:
            raise HostDown(what, f"not sent: {self.down}")

    def failed(self, cause: str) -> None:
        with self._lock:
            if self.down:
                return
            self.failures += 1
            if self.failures >= self.threshold:
                self.down = f"{self.host} gave no answer {self.failures} times in a row (the last: {cause})"

    def answered(self) -> None:
        if self.failures:
            with self._lock:
                if not self.down:
                    self.failures = 0


# Nothing is retried or followed by urllib3: `send` retries (it knows about Retry-After) and follows
# redirects one hop at a time, so each hop's host is checked, charged for its own failures, and
# handed no credentials unless it is the host they were sent to.
_NO_RETRIES = urllib3.Retry(total=None, connect=0, read=0, status=0, other=0, redirect=0, raise_on_redirect=False)
_CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})


class RegistryClient:
    """HTTP to one registry host: scheme choice, TLS settings, auth, retries."""

    def __init__(self, registry: str, api_host: str, options: RegistryOptions, credentials: Credentials | None):
        self.registry = registry
        self.host = api_host
        self.options = options
        self.auth = HostAuth(registry, credentials)
        self.base = ""
        self.insecure = is_insecure(api_host, options.insecure_registries) or is_insecure(
            registry, options.insecure_registries
        )
        self.plain_http_allowed = self.insecure or is_loopback(api_host)
        self.verify, self.client_cert = self._tls_settings(api_host)
        self._managers: dict[tuple[str, bool], urllib3.PoolManager] = {}
        self._proxy_cache: dict[tuple[str, str], str] = {}
        self._breakers: dict[str, _Breaker] = {}
        # (scheme://netloc, verify) -> (pool manager, breaker): one dict read per request once known
        self._routes: dict[tuple[str, object], tuple[urllib3.PoolManager, _Breaker]] = {}
        self._lock = threading.Lock()
        self._timeout = urllib3.Timeout(connect=options.timeout, read=options.timeout)
        if self.verify is False:
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)

    # -------------------------------------------------------------- plumbing

    def _tls_settings(self, host: str):
        """(verify: False, True or the CA files to add, client cert): --no-tls-verify / insecure host,
        certs.d, --ca-cert."""
        if self.insecure or not self.options.tls_verify:
            return False, None
        verify: bool | tuple[str, ...] = True
        client_cert = None
        folders = (
            [self.options.cert_dir]
            if self.options.cert_dir
            else [os.path.join(b, host) for b in self.options.certs_dirs]
        )
        for folder in folders:
            if not os.path.isdir(folder):
                continue
            cas = sorted(glob.glob(os.path.join(folder, "*.crt")))
            if cas and verify is True:
                verify = tuple(cas)
            for cert in sorted(glob.glob(os.path.join(folder, "*.cert"))):
                key = cert[: -len(".cert")] + ".key"
                if os.path.isfile(key) and client_cert is None:
                    client_cert = (cert, key)
        if self.options.ca_cert:
            verify = (*verify, self.options.ca_cert) if isinstance(verify, tuple) else (self.options.ca_cert,)
        return verify, client_cert

    def _proxy(self, url: str) -> str:
        """The proxy the environment names for this scheme and host ('' for none), looked up once."""
        parts = urllib.parse.urlsplit(url)
        key = (parts.scheme, parts.netloc)
        found = self._proxy_cache.get(key)
        if found is None:
            proxies = urllib.request.getproxies_environment()
            proxy = proxies.get(parts.scheme, "") or proxies.get("all", "")
            if proxy and urllib.request.proxy_bypass_environment(parts.netloc, proxies):
                proxy = ""
            found = self._proxy_cache[key] = proxy
        return found

    def _manager(self, url: str, verify) -> urllib3.PoolManager:
        proxy = self._proxy(url)
        insecure = verify is False
        key = (proxy, insecure)
        manager = self._managers.get(key)
        if manager is None:
            with self._lock:
                manager = self._managers.get(key)
                if manager is None:
                    tls: dict = {"cert_reqs": "CERT_NONE"} if insecure else {"cert_reqs": "CERT_REQUIRED"}
                    if not insecure and (isinstance(verify, tuple) or self.client_cert):
                        # Loaded here, each file read or checked first: urllib3 would open them by
                        # name on every connection, and a FIFO among them would hold it for ever.
                        cas = verify if isinstance(verify, tuple) else ()
                        tls["ssl_context"] = _with_system_cas(cas, self.client_cert)
                    # One connection per worker, and a few for token servers and redirects.
                    size = max(1, self.options.jobs) + 2
                    if proxy:
                        manager = urllib3.ProxyManager(proxy, num_pools=8, maxsize=size, block=True, **tls)
                    else:
                        manager = urllib3.PoolManager(num_pools=8, maxsize=size, block=True, **tls)
                    manager.pool_classes_by_scheme = _POOL_CLASSES
                    self._managers[key] = manager
        return manager

    def _breaker(self, url: str) -> _Breaker:
        host = urllib.parse.urlsplit(url).netloc.rpartition("@")[2]
        with self._lock:
            breaker = self._breakers.get(host)
            if breaker is None:
                breaker = self._breakers[host] = _Breaker(host, self.options.breaker_threshold)
            return breaker

    def _route(self, url: str, verify) -> tuple[urllib3.PoolManager, _Breaker]:
        match = _ORIGIN.match(url)
        key = (match.group(0) if match else url, verify)
        route = self._routes.get(key)
        if route is None:
            route = (self._manager(url, verify), self._breaker(url))
            if match:
                self._routes[key] = route
        return route

    def close(self) -> None:
        with self._lock:
            for manager in self._managers.values():
                manager.clear()
            self._managers.clear()
            self._routes.clear()

    def _backoff(self, attempt: int) -> float:
        delay = min(self.options.max_backoff, self.options.backoff * (2**attempt))
        return delay * random.uniform(0.5, 1.0)

    def send(
        self,
        method: str,
        url: str,
        headers: dict,
        limit: int,
        what: str,
        *,
        retries: int | None = None,
        verify=None,
        body: bytes | None = None,
    ) -> Reply:
        """One request with retries of transient failures and its redirects followed; every final
        answer is returned, 4xx too, its `url` the one that gave it. A `body` (a token request's
        form, which holds a secret) goes to the host it was meant for only."""
        first = _origin(url)
        hop_what, hops, waited = what, 0, 0.0
        while True:
            reply, waited = self._send_hop(method, url, headers, limit, hop_what, retries, verify, waited, body)
            location = reply.headers.get("Location", "") if reply.status in _REDIRECT_STATUSES else ""
            if not location:
                if reply.status >= 300 and reply.body:
                    reply.body = scrub_bytes(reply.body, self._secrets(headers))
                return reply
            hops += 1
            if hops > MAX_REDIRECTS:
                raise HttpError(hop_what, f"more than {MAX_REDIRECTS} redirects", reply.status)
            url = self._redirect_target(url, location, hop_what)
            if body is not None and reply.status in (301, 302, 303):
                method, body = "GET", None  # as Go's client and browsers do with a POST
            if body is not None and _origin(url) != first:
                there = _host_of(url)
                raise HttpError(hop_what, f"refusing to send the request's form to {there}, where it was redirected")
            if _origin(url) != first:
                # credentials are for the host they were sent to; a blob store gets them in its signed URL
                headers = {k: v for k, v in headers.items() if k.lower() not in _CREDENTIAL_HEADERS}
                hop_what = f"{what} (redirected to {_host_of(url)})"
            if reply.status == 303 and method != "HEAD":
                method = "GET"

    def _redirect_target(self, url: str, location: str, what: str) -> str:
        """The absolute URL a `Location` names, if this client may follow it there."""
        shown = quoted(redact_url_secrets(location), limit=200)
        if not location.isascii() or not location.isprintable():
            raise HttpError(what, f"the redirect Location {shown!r} is not a plain URL")
        try:
            target = urllib.parse.urljoin(url, location.strip())
            parts = urllib.parse.urlsplit(target)
            parts.port  # noqa: B018 - raises for a port past 65535, which no retry would mend
        except ValueError:
            raise HttpError(what, f"the redirect Location {shown!r} is not a valid URL") from None
        host = parts.netloc.rpartition("@")[2]
        if parts.scheme not in ("https", "http") or not host:
            raise HttpError(what, f"refusing to follow a redirect to {shown!r}: not an http(s) URL")
        if parts.scheme == "http" and not self._plain_http_to(host):
            hint = "plain HTTP is used only for --insecure-registry hosts and loopback"
            raise HttpError(what, f"refusing to follow a redirect to plain HTTP at {host} ({hint})")
        return target

    def _plain_http_to(self, host: str) -> bool:
        if host.lower() == self.host.lower():
            return self.plain_http_allowed
        return is_loopback(host) or is_insecure(host, self.options.insecure_registries)

    def _secrets(self, headers: dict) -> list[str]:
        return sent_secrets(headers) + self.auth.secrets()

    def _send_hop(
        self,
        method: str,
        url: str,
        headers: dict,
        limit: int,
        what: str,
        retries: int | None,
        verify,
        waited: float,
        data: bytes | None = None,
    ) -> tuple[Reply, float]:
        """One URL, its transient failures retried: (the answer, the seconds waited in all so far).
        `waited` carries over from the hops before, so redirects add no retry time of their own."""
        retries = self.options.retries if retries is None else retries
        try:
            manager, breaker = self._route(url, self.verify if verify is None else verify)
        except UnusableTlsFiles as exc:
            raise HttpError(what, str(exc)) from None
        timeout = self.options.timeout
        attempt = 0
        while True:
            breaker.check(what)
            response = None
            complete = False
            outer = getattr(_attempt, "deadline", None)
            _attempt.deadline = time.monotonic() + timeout
            try:
                response = manager.urlopen(
                    method,
                    url,
                    body=data,
                    headers={"User-Agent": USER_AGENT, **headers},
                    timeout=self._timeout,
                    retries=_NO_RETRIES,
                    redirect=False,
                    preload_content=False,
                    enforce_content_length=True,
                )
                body = _read_body(response, limit, method)
                complete = True
            except BodyTooLarge as exc:
                raise HttpError(what, f"the answer is {exc.size} bytes or more, over the {limit}-byte limit") from None
            except (Urllib3Error, OSError, http.client.HTTPException, OverflowError) as exc:
                kind, reason = _classify(exc, timeout)
                reason = scrub(reason, self._secrets(headers))  # http.client quotes what the server sent
                if kind in _NO_ANSWER:
                    breaker.failed(reason)
                if kind not in _FINAL and attempt < retries and not breaker.down:
                    delay = self._backoff(attempt)
                    if waited + delay <= self.options.max_retry_wait:
                        time.sleep(delay)
                        waited += delay
                        attempt += 1
                        continue
                tries = f" (after {attempt + 1} attempts)" if attempt else ""
                raise HttpError(what, f"{reason}{tries}") from None
            except ValueError:
                # Its message quotes the value, which may be a credential.
                if response is not None:  # a negative chunk size, read as a length
                    raise HttpError(what, "the answer is not valid HTTP (a chunk size is out of range)") from None
                # http.client refusing a header or URL it cannot send
                raise HttpError(what, "the request cannot be sent: a header or the URL is not valid HTTP") from None
            finally:
                _attempt.deadline = outer
                if response is not None:
                    # A connection goes back to the pool only with its response read to the end and
                    # closed: http.client refuses a new request on it otherwise (ResponseNotReady),
                    # and the worker that picks it up next would pay for it.
                    if not (complete and response.isclosed()):
                        response.close()
                    response.release_conn()
            breaker.answered()
            status = response.status
            # the reason phrase is the server's own text; an error's is quoted in messages
            reason = (response.reason or "")[:100]
            if status >= 300 and reason:
                reason = quoted(reason, self._secrets(headers), 100)
            if status in RETRYABLE:
                wait = _retry_after(response.headers)
                text = f"{status} {reason}".strip()
                if wait is not None and wait > self.options.max_retry_after:
                    shown = f"{wait:.0f}" if wait != float("inf") else "over 10**19"
                    raise HttpError(what, f"{text}, and the server asks to retry after {shown} s", status)
                if attempt < retries:
                    delay = max(wait or 0.0, self._backoff(attempt))
                    if waited + delay > self.options.max_retry_wait:
                        budget = f"the {self.options.max_retry_wait:g} s one request may wait in all"
                        tries = f"after {attempt + 1} attempts"
                        raise HttpError(what, f"{text}, and another retry would wait past {budget} ({tries})", status)
                    time.sleep(delay)
                    waited += delay
                    attempt += 1
                    continue
                detail = registry_error_text(body, self._secrets(headers))
                raise HttpError(
                    what, f"{text}{' (' + detail + ')' if detail else ''} (after {attempt + 1} attempts)", status
                )
            return Reply(status, response.headers, body, url, reason), waited

    # -------------------------------------------------------------- auth

    def _auth_headers(self, scope: str) -> dict:
        auth = self.auth
        if auth.scheme == "basic":
            return auth.basic_header()
        if auth.scheme == "bearer" and scope:
            token = auth.cached_token(scope) or self._fetch_token(scope)
            return {"Authorization": f"Bearer {token}"}
        return {}

    def _fetch_token(self, scope: str) -> str:
        auth = self.auth
        with auth.scope_lock(scope):
            token = auth.cached_token(scope)
            if token:
                return token
            if auth.credentials is not None and auth.credentials.registry_token:
                return auth.credentials.registry_token  # given for every scope; its server is not asked
            shown = redact_url_secrets(auth.realm)  # a realm may carry credentials; never echo them
            realm, host, realm_insecure = self._checked_realm(auth.realm)
            if auth.refresh_token:
                return self._trade_refresh_token(scope, realm, host, realm_insecure, shown)
            params = [("scope", scope)]
            if auth.service:
                params.insert(0, ("service", auth.service))
            headers = {}
            if auth.credentials is not None:
                params.append(("account", auth.credentials.username))
                headers = auth.basic_header()
            elif realm.username is not None:
                # Go's client sends a URL's user info as basic credentials when none are set.
                raw = f"{urllib.parse.unquote(realm.username)}:{urllib.parse.unquote(realm.password or '')}"
                headers = {"Authorization": "Basic " + base64.b64encode(raw.encode()).decode()}
            joiner = "&" if realm.query else "?"
            # Asked without its user info, which goes (if anywhere) in the header above.
            asked = auth.realm if host == realm.netloc else urllib.parse.urlunsplit(realm._replace(netloc=host))
            url = asked + joiner + urllib.parse.urlencode(params)
            verify = False if realm_insecure else None
            reply = self.send("GET", url, headers, SMALL_LIMIT, f"{self.registry}: token for {scope}", verify=verify)
            if reply.status == 401:
                who = f"the credentials of {auth.credentials.username}" if auth.credentials else "anonymous access"
                if auth.credentials is None and headers:
                    who = "the credentials its URL holds"
                raise HttpError(self.registry, f"the token server {shown} refused {who}", 401)
            if reply.status != 200:
                raise HttpError(self.registry, f"the token server {shown} answered {reply.status}", reply.status)
            try:
                token, lifetime = parse_token_response(reply.body, shown)
            except AuthError as exc:
                raise HttpError(self.registry, f"{exc}", reply.status) from None
            auth.store_token(scope, token, lifetime)
            return token

    def _trade_refresh_token(
        self, scope: str, realm: urllib.parse.SplitResult, host: str, realm_insecure: bool, shown: str
    ) -> str:
        """An access token for `scope` by the OAuth2 refresh-token grant (the distribution spec's
        `POST /token`), as docker asks for one with an identity token."""
        auth = self.auth
        url = urllib.parse.urlunsplit(realm._replace(netloc=host))  # user info is not sent
        verify = False if realm_insecure else None
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        origin = auth.credentials.origin if auth.credentials is not None else ""
        # A server that rotates refresh tokens retires the one a parallel request still holds:
        # that request is asked again with the newest, as long as the token keeps moving.
        for _ in range(_REFRESH_RACES):
            used = auth.begin_trade()
            new = ""
            try:
                form = [("grant_type", "refresh_token"), ("refresh_token", used), ("client_id", CLIENT_ID)]
                if auth.service:
                    form.append(("service", auth.service))
                form.append(("scope", scope))
                data = urllib.parse.urlencode(form).encode()
                what = f"{self.registry}: token for {scope}"
                reply = self.send("POST", url, headers, SMALL_LIMIT, what, verify=verify, body=data)
                if reply.status == 200:
                    new = refresh_token_of(reply.body)
            finally:
                auth.end_trade(used, new)
            if reply.status == 200:
                try:
                    token, lifetime = parse_token_response(reply.body, shown)
                except AuthError as exc:
                    raise HttpError(self.registry, f"{exc}", reply.status) from None
                auth.store_token(scope, token, lifetime)
                return token
            if reply.status not in (400, 401) or auth.refused_for_good(used, self.options.timeout):
                break
        secrets = self.auth.secrets()
        detail = quoted(oauth_error_text(reply.body), secrets) or registry_error_text(reply.body, secrets)
        detail = f" ({detail})" if detail else ""
        if reply.status in (400, 401):
            raise HttpError(
                self.registry, f"the token server {shown} refused the identity token of {origin}{detail}", 401
            )
        raise HttpError(self.registry, f"the token server {shown} answered {reply.status}{detail}", reply.status)

    def _checked_realm(self, text: str) -> tuple[urllib.parse.SplitResult, str, bool]:
        """(the parsed realm, its netloc without user info, whether that host is an insecure
        registry); HttpError for a realm no token is asked of."""
        shown = redact_url_secrets(text)  # a realm may carry credentials; never echo them
        try:
            realm = urllib.parse.urlsplit(text)
        except ValueError:  # `http://[zz/token`: a bracketed host that is no IPv6 address
            raise HttpError(self.registry, f"the token realm {shown[:200]!r} is not a valid URL", 401) from None
        if realm.scheme not in ("https", "http") or not realm.netloc:
            raise HttpError(self.registry, f"the token realm {shown!r} is not an http(s) URL", 401)
        host = realm.netloc.rpartition("@")[2]
        insecure = is_insecure(host, self.options.insecure_registries)
        if realm.scheme == "http" and not (insecure or is_loopback(host)):
            raise HttpError(self.registry, f"refusing to ask {shown} for a token over plain HTTP", 401)
        return realm, host, insecure

    def _retry_headers(self, reply: Reply, scope: str, sent: dict) -> dict | None:
        """After a 401: the auth headers worth one more try, or None."""
        challenge = first_usable(reply.headers.get("WWW-Authenticate", ""))
        if challenge is None:
            return None
        if challenge.scheme == "bearer":
            # checked before it is remembered: one repository's unusable realm fails its own
            # requests, not those of every repository of the host after it
            self._checked_realm(challenge.realm)
        self.auth.remember(challenge)
        if challenge.scheme == "basic":
            if self.auth.credentials is None or not self.auth.credentials.basic or "Authorization" in sent:
                return None
            return self.auth.basic_header()
        wanted = challenge.params.get("scope") or scope
        if not wanted:
            return None
        if sent.get("Authorization", "").startswith("Bearer "):
            if challenge.params.get("error") == "insufficient_scope":
                return None
            if self.auth.credentials is not None and self.auth.credentials.registry_token:
                return None  # the token given is the only one there is
            self.auth.drop_token(wanted)  # expired early or revoked: one fresh token is worth a try
        token = self.auth.cached_token(wanted) or self._fetch_token(wanted)
        return {"Authorization": f"Bearer {token}"}

    def _from_elsewhere(self, what: str, url: str, reply: Reply) -> HttpError | None:
        """A 401 from a host a redirect led to: its challenge is not learned (the credentials, and the
        token realm they go to, come from the registry alone), so it is an error of that request."""
        # Compared with the registry, not the URL asked: a Link page of a list that a redirect
        # moved elsewhere would name that host, and its challenge would get the credentials.
        if reply.status != 401 or _origin(reply.url) == _origin(self.base or url):
            return None
        there = _host_of(reply.url)
        return HttpError(
            what,
            f"401 Unauthorized from {there}, where {self.registry} redirected the request "
            f"(credentials are sent to {self.registry} and its token server only)",
            401,
        )

    def _unauthorized(self, what: str, reply: Reply, sent: dict) -> HttpError:
        detail = registry_error_text(reply.body, self._secrets(sent))
        if self.auth.scheme == "basic" and self.auth.credentials is None:
            hint = f"authentication required and no credentials for {self.registry} (use --username, or docker login)"
        elif self.auth.scheme == "basic" and not self.auth.credentials.basic and self.auth.credentials.registry_token:
            hint = f"the registry asks for a password, and only a registry token was given for {self.registry}"
        elif self.auth.scheme == "basic" and not self.auth.credentials.basic:
            credentials = self.auth.credentials
            hint = (
                f"the registry asks for a password, and the credentials for {self.registry} are an identity "
                f"token ({credentials.origin}), which is traded at a token server only"
            )
        elif self.auth.scheme == "basic":
            credentials = self.auth.credentials
            hint = f"the registry rejected the credentials of {credentials.username} ({credentials.origin})"
        elif self.auth.scheme == "bearer" and self.auth.credentials and self.auth.credentials.registry_token:
            hint = "the registry token given does not grant access"
        elif self.auth.scheme == "bearer":
            hint = "the token does not grant access" + ("" if self.auth.credentials else " (no credentials were given)")
        else:
            hint = "authentication required, and the registry sent no challenge this client can answer"
        return HttpError(what, f"401 Unauthorized: {hint}{' (' + detail + ')' if detail else ''}", 401)

    # -------------------------------------------------------------- the API

    def ping(self) -> None:
        """GET /v2/: choose https or (where allowed) plain http, and learn the auth scheme."""
        if self.base:
            return
        schemes = ["https", "http"] if self.plain_http_allowed else ["https"]
        failures: list[tuple[str, HttpError]] = []
        for position, scheme in enumerate(schemes):
            url = f"{scheme}://{self.host}/v2/"
            quick = position + 1 < len(schemes)  # the https probe of a plain-HTTP host fails fast; no retries
            try:
                reply = self.send(
                    "GET", url, {}, SMALL_LIMIT, f"{self.registry}: GET {url}", retries=0 if quick else None
                )
            except HttpError as exc:
                failures.append((url, exc))
                continue
            elsewhere = self._from_elsewhere(f"{self.registry}: GET {url}", url, reply)
            if elsewhere is not None:
                raise elsewhere
            if reply.status == 401:
                self.auth.learn(reply.headers.get("WWW-Authenticate", ""))
            elif reply.status != 200:
                # A TLS registry whose certificate is not trusted answers plain HTTP with 400: what
                # the https attempt met is the cause.
                https = f"; over https: {failures[0][1].reason}" if failures else ""
                raise HttpError(
                    self.registry,
                    f"GET {url} answered {reply.status}: not a registry (Docker Registry HTTP API V2){https}",
                    reply.status,
                )
            self.base = f"{scheme}://{self.host}"
            return
        if len(failures) > 1:
            # The https probe of a plain-HTTP registry fails by design; what plain HTTP met is the news.
            (_, https_error), (_, http_error) = failures
            raise HttpError(
                http_error.where, f"{http_error.reason}; over https: {https_error.reason}", http_error.status
            )
        _, error = failures[0]
        if not self.plain_http_allowed and not error.reason.startswith(_UNRESOLVED):
            hint = "plain HTTP is used only for --insecure-registry hosts and loopback"
            raise HttpError(error.where, f"{error.reason} ({hint})", error.status)
        raise error

    def request(
        self, method: str, path: str, *, scope: str, what: str, limit: int, headers: dict | None = None
    ) -> Reply:
        """`path` is relative to the host (`/v2/...`) or an absolute URL from a Link header."""
        if "://" not in path and not is_canonical_path(path):
            raise HttpError(what, f"refusing to request {path!r}: not a plain path (it would be rewritten)")
        url = path if "://" in path else self.base + path
        if _origin(url) != _origin(self.base):
            # Credentials are the registry's: a URL of another host (a Link page) never gets them.
            raise HttpError(what, f"refusing to send {self.registry}'s credentials to {_host_of(url)}")
        extra = headers or {}
        sent = self._auth_headers(scope)
        reply = self._own_send(method, url, {**extra, **sent}, limit, what)
        if reply.status == 401:
            retry = self._retry_headers(reply, scope, sent)
            if retry is not None:
                sent = retry
                reply = self._own_send(method, url, {**extra, **sent}, limit, what)
            if reply.status == 401:
                raise self._unauthorized(what, reply, sent)
        return reply

    def _own_send(self, method: str, url: str, headers: dict, limit: int, what: str) -> Reply:
        """`send`, with a 401 that came from a redirect target an error rather than a challenge."""
        reply = self.send(method, url, headers, limit, what)
        elsewhere = self._from_elsewhere(what, url, reply)
        if elsewhere is not None:
            raise elsewhere
        return reply
