"""The HTTP side of the registry source: one client per registry host, shared by the worker threads.

Network I/O uses urllib3 directly (the transport under requests and the Docker SDK): its pool
manager is safe to share between threads and costs half the CPU per request of a requests
Session, which matters when a crawl is thousands of small GETs. Transient failures (connection errors, timeouts, a cut-short body, 408/429/5xx) are retried with
exponential backoff and jitter, and a server's `Retry-After` is honoured. A 401 is answered once
per request with the credentials or token its challenge asks for.
"""
from __future__ import annotations

import email.utils
import ipaddress
import glob
import os
import random
import threading
import time
import urllib.parse
from dataclasses import dataclass, field

import urllib.request

import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import MaxRetryError, ProtocolError, ReadTimeoutError, SSLError, TimeoutError as Urllib3Timeout

from ..errors import ImgdexError
from . import mediatypes as mt
from .registry_auth import AuthError, Credentials, HostAuth, parse_token_response

USER_AGENT = "imgdex-registry-crawler/0.1"
MANIFEST_ACCEPT = ", ".join(
    [mt.OCI_INDEX, mt.OCI_MANIFEST, mt.DOCKER_LIST, mt.DOCKER_MANIFEST, mt.DOCKER_SCHEMA1_SIGNED, mt.DOCKER_SCHEMA1]
)
RETRYABLE = frozenset({408, 429, 500, 502, 503, 504})
CERTS_DIRS = ("/etc/docker/certs.d", "/etc/containers/certs.d")
SMALL_LIMIT = 1024 * 1024  # pings, tag lists pages and token answers
CATALOG_LIMIT = 64 * 1024 * 1024


class HttpError(ImgdexError):
    """A request failed for good; the message says what was asked and why it failed."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


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
    timeout: float = 30.0
    retries: int = 3
    backoff: float = 0.5
    max_backoff: float = 10.0
    max_retry_after: float = 60.0
    auth_files: list[str] | None = None  # None: the files docker and skopeo read
    certs_dirs: tuple[str, ...] = CERTS_DIRS


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
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def _describe(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, MaxRetryError) and exc.reason is not None:
        exc = exc.reason
    text = _innermost(exc)
    if isinstance(exc, ReadTimeoutError) or "Read timed out" in text:
        return f"no answer within {timeout:g} s (read timeout)"
    if isinstance(exc, SSLError):
        return f"TLS error: {text}"
    if "Connection refused" in text:
        return "connection refused"
    if isinstance(exc, Urllib3Timeout):
        return f"could not connect within {timeout:g} s"
    if isinstance(exc, ProtocolError) or "IncompleteRead" in text:
        return "the response body was cut short" if "IncompleteRead" in text else f"the connection broke: {text}"
    return f"connection failed: {text}"


def _innermost(exc: BaseException) -> str:
    seen = exc
    for _ in range(10):
        if seen.args and isinstance(seen.args[0], BaseException):
            seen = seen.args[0]
        elif isinstance(getattr(seen, "reason", None), BaseException):
            seen = seen.reason
        else:
            break
    return str(seen)[:300]


def registry_error_text(body: bytes) -> str:
    """distribution's `{"errors":[{"code","message"}]}` -> `CODE: message`; '' when absent."""
    import json

    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return ""
    errors = doc.get("errors") if isinstance(doc, dict) else None
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        code, message = errors[0].get("code", ""), errors[0].get("message", "")
        return ": ".join(str(p) for p in (code, message) if p)
    return ""


class _TooLarge(Exception):
    pass


def _read_capped(response: urllib3.BaseHTTPResponse, limit: int) -> bytes:
    length = response.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > limit:
        raise _TooLarge(int(length))
    chunks, total = [], 0
    while True:
        chunk = response.read(65536)
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > limit:
            raise _TooLarge(total)
        chunks.append(chunk)


# Redirects are followed (blob stores hand out signed URLs; urllib3 drops Authorization when the
# host changes); everything else is retried by `send`, which knows about Retry-After.
_REDIRECTS_ONLY = urllib3.Retry(total=None, connect=0, read=0, status=0, other=0, redirect=5, raise_on_redirect=True)


class RegistryClient:
    """HTTP to one registry host: scheme choice, TLS settings, auth, retries."""

    def __init__(self, registry: str, api_host: str, options: RegistryOptions, credentials: Credentials | None):
        self.registry = registry
        self.host = api_host
        self.options = options
        self.auth = HostAuth(registry, credentials)
        self.base = ""
        self.insecure = is_insecure(api_host, options.insecure_registries) or is_insecure(registry, options.insecure_registries)
        self.plain_http_allowed = self.insecure or is_loopback(api_host)
        self.verify, self.client_cert = self._tls_settings(api_host)
        self._managers: dict[tuple[str, bool], urllib3.PoolManager] = {}
        self._proxy_cache: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()
        self._timeout = urllib3.Timeout(connect=options.timeout, read=options.timeout)
        if self.verify is False:
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)

    # -------------------------------------------------------------- plumbing

    def _tls_settings(self, host: str):
        """(verify, client cert): --no-tls-verify / insecure host, --ca-cert, then certs.d."""
        if self.insecure or not self.options.tls_verify:
            return False, None
        verify: bool | str = True
        client_cert = None
        for base in self.options.certs_dirs:
            folder = os.path.join(base, host)
            if not os.path.isdir(folder):
                continue
            cas = sorted(glob.glob(os.path.join(folder, "*.crt")))
            if cas and verify is True:
                verify = cas[0]
            for cert in sorted(glob.glob(os.path.join(folder, "*.cert"))):
                key = cert[: -len(".cert")] + ".key"
                if os.path.isfile(key) and client_cert is None:
                    client_cert = (cert, key)
        if self.options.ca_cert:
            verify = self.options.ca_cert
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
                    if not insecure and isinstance(verify, str):
                        tls["ca_certs"] = verify
                    if self.client_cert and not insecure:
                        tls["cert_file"], tls["key_file"] = self.client_cert
                    # One connection per worker, and a few for token servers and redirects.
                    size = max(1, self.options.jobs) + 2
                    if proxy:
                        manager = urllib3.ProxyManager(proxy, num_pools=8, maxsize=size, block=True, **tls)
                    else:
                        manager = urllib3.PoolManager(num_pools=8, maxsize=size, block=True, **tls)
                    self._managers[key] = manager
        return manager

    def close(self) -> None:
        with self._lock:
            for manager in self._managers.values():
                manager.clear()
            self._managers.clear()

    def _backoff(self, attempt: int) -> float:
        delay = min(self.options.max_backoff, self.options.backoff * (2**attempt))
        return delay * random.uniform(0.5, 1.0)

    def send(self, method: str, url: str, headers: dict, limit: int, what: str, *, retries: int | None = None, verify=None) -> Reply:
        """One request with retries of transient failures; every final answer is returned, 4xx too."""
        retries = self.options.retries if retries is None else retries
        manager = self._manager(url, self.verify if verify is None else verify)
        attempt = 0
        while True:
            response = None
            complete = False
            try:
                response = manager.request(
                    method,
                    url,
                    headers={"User-Agent": USER_AGENT, **headers},
                    timeout=self._timeout,
                    retries=_REDIRECTS_ONLY,
                    preload_content=False,
                    enforce_content_length=True,
                )
                body = b"" if method == "HEAD" else _read_capped(response, limit)
                complete = True
            except _TooLarge as exc:
                raise HttpError(f"{what}: the answer is {exc.args[0]} bytes or more, over the {limit}-byte limit") from None
            except (Urllib3Error, OSError) as exc:
                cause = exc.reason if isinstance(exc, MaxRetryError) and exc.reason is not None else exc
                transient = not isinstance(cause, SSLError) and not (isinstance(exc, MaxRetryError) and "redirect" in str(exc).lower())
                if transient and attempt < retries:
                    time.sleep(self._backoff(attempt))
                    attempt += 1
                    continue
                tries = f" (after {attempt + 1} attempts)" if attempt else ""
                raise HttpError(f"{what}: {_describe(exc, self.options.timeout)}{tries}") from None
            finally:
                if response is not None:
                    if not complete:
                        response.close()  # half-read: the connection must not serve another request
                    response.release_conn()
            status = response.status
            if status in RETRYABLE:
                wait = _retry_after(response.headers)
                text = f"{status} {response.reason or ''}".strip()
                if wait is not None and wait > self.options.max_retry_after:
                    raise HttpError(f"{what}: {text}, and the server asks to retry after {wait:.0f} s", status)
                if attempt < retries:
                    time.sleep(max(wait or 0.0, self._backoff(attempt)))
                    attempt += 1
                    continue
                detail = registry_error_text(body)
                raise HttpError(f"{what}: {text}{' (' + detail + ')' if detail else ''} (after {attempt + 1} attempts)", status)
            final = response.geturl() or ""
            return Reply(status, response.headers, body, final if "://" in final else url, response.reason or "")

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
            realm = urllib.parse.urlsplit(auth.realm)
            if realm.scheme not in ("https", "http") or not realm.netloc:
                raise HttpError(f"{self.registry}: the token realm {auth.realm!r} is not an http(s) URL", 401)
            realm_insecure = is_insecure(realm.netloc, self.options.insecure_registries)
            if realm.scheme == "http" and not (realm_insecure or is_loopback(realm.netloc)):
                raise HttpError(f"{self.registry}: refusing to ask {auth.realm} for a token over plain HTTP", 401)
            params = [("scope", scope)]
            if auth.service:
                params.insert(0, ("service", auth.service))
            headers = {}
            if auth.credentials is not None:
                params.append(("account", auth.credentials.username))
                headers = auth.basic_header()
            joiner = "&" if realm.query else "?"
            url = auth.realm + joiner + urllib.parse.urlencode(params)
            verify = False if realm_insecure else None
            reply = self.send("GET", url, headers, SMALL_LIMIT, f"{self.registry}: token for {scope}", verify=verify)
            if reply.status == 401:
                who = f"the credentials of {auth.credentials.username}" if auth.credentials else "anonymous access"
                raise HttpError(f"{self.registry}: the token server {auth.realm} refused {who}", 401)
            if reply.status != 200:
                raise HttpError(f"{self.registry}: the token server {auth.realm} answered {reply.status}", reply.status)
            try:
                token, lifetime = parse_token_response(reply.body, auth.realm)
            except AuthError as exc:
                raise HttpError(f"{self.registry}: {exc}", reply.status) from None
            auth.store_token(scope, token, lifetime)
            return token

    def _retry_headers(self, reply: Reply, scope: str, sent: dict) -> dict | None:
        """After a 401: the auth headers worth one more try, or None."""
        challenge = self.auth.learn(reply.headers.get("WWW-Authenticate", ""))
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            if self.auth.credentials is None or "Authorization" in sent:
                return None
            return self.auth.basic_header()
        wanted = challenge.params.get("scope") or scope
        if not wanted:
            return None
        if sent.get("Authorization", "").startswith("Bearer "):
            if challenge.params.get("error") == "insufficient_scope":
                return None
            self.auth.drop_token(wanted)  # expired early or revoked: one fresh token is worth a try
        token = self.auth.cached_token(wanted) or self._fetch_token(wanted)
        return {"Authorization": f"Bearer {token}"}

    def _unauthorized(self, what: str, reply: Reply, sent: dict) -> HttpError:
        detail = registry_error_text(reply.body)
        if self.auth.scheme == "basic" and self.auth.credentials is None:
            hint = f"authentication required and no credentials for {self.registry} (use --username, or docker login)"
        elif self.auth.scheme == "basic":
            hint = f"the registry rejected the credentials of {self.auth.credentials.username} ({self.auth.credentials.origin})"
        elif self.auth.scheme == "bearer":
            hint = "the token does not grant access" + ("" if self.auth.credentials else " (no credentials were given)")
        else:
            hint = "authentication required, and the registry sent no challenge this client can answer"
        return HttpError(f"{what}: 401 Unauthorized: {hint}{' (' + detail + ')' if detail else ''}", 401)

    # -------------------------------------------------------------- the API

    def ping(self) -> None:
        """GET /v2/: choose https or (where allowed) plain http, and learn the auth scheme."""
        if self.base:
            return
        schemes = ["https", "http"] if self.plain_http_allowed else ["https"]
        first_error: HttpError | None = None
        for position, scheme in enumerate(schemes):
            url = f"{scheme}://{self.host}/v2/"
            quick = position + 1 < len(schemes)  # the https probe of a plain-HTTP host fails fast; no retries
            try:
                reply = self.send("GET", url, {}, SMALL_LIMIT, f"{self.registry}: GET {url}", retries=0 if quick else None)
            except HttpError as exc:
                first_error = first_error or exc
                continue
            if reply.status == 401:
                self.auth.learn(reply.headers.get("WWW-Authenticate", ""))
            elif reply.status != 200:
                raise HttpError(f"{self.registry}: GET {url} answered {reply.status}: not a registry (Docker Registry HTTP API V2)", reply.status)
            self.base = f"{scheme}://{self.host}"
            return
        assert first_error is not None
        if len(schemes) > 1:
            raise HttpError(f"{first_error} (plain HTTP failed too)")
        if not self.plain_http_allowed:
            raise HttpError(f"{first_error} (plain HTTP is used only for --insecure-registry hosts and loopback)")
        raise first_error

    def request(self, method: str, path: str, *, scope: str, what: str, limit: int, headers: dict | None = None) -> Reply:
        """`path` is relative to the host (`/v2/...`) or an absolute URL from a Link header."""
        url = path if "://" in path else self.base + path
        extra = headers or {}
        sent = self._auth_headers(scope)
        reply = self.send(method, url, {**extra, **sent}, limit, what)
        if reply.status == 401:
            retry = self._retry_headers(reply, scope, sent)
            if retry is not None:
                sent = retry
                reply = self.send(method, url, {**extra, **sent}, limit, what)
            if reply.status == 401:
                raise self._unauthorized(what, reply, sent)
        return reply
