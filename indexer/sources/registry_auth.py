"""Registry credentials and the distribution auth protocols: anonymous, basic, and bearer tokens.

Credentials come from the command line first, then from the auth files docker and skopeo read
(`auths` entries with a base64 `auth` or an `identitytoken`, `credHelpers` and `credsStore`
helpers). A bearer token is asked for per scope from the realm named in the `WWW-Authenticate`
challenge (by GET with basic credentials, or by an OAuth2 refresh-token POST for an identity
token, as docker does), and cached until shortly before it expires.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import re
import selectors
import subprocess
import threading
import time
import urllib.parse
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Hashable, Iterator

from ..errors import AuthError, SourceError
from ..files import read_small
from ..references import DOCKER_HUB, DOCKER_HUB_ALIASES, is_docker_hub
from .docker_context import docker_config_dir
from .jsonstream import LongInteger, loads

DOCKER_HUB_KEYS = (*DOCKER_HUB_ALIASES, "https://index.docker.io/v1/")
# A token is renewed this long before the expiry the server gave, so a slow request still carries a valid one.
_TOKEN_SLACK = 10.0
_DEFAULT_TOKEN_LIFETIME = 60.0
# A longer one is kept this long: a crawl that outlives it asks for another, which costs one request.
_MAX_TOKEN_LIFETIME = 24 * 3600.0
# Tokens kept per host. A crawl asks for one per repository, so a catalog of a million repositories
# would otherwise keep a million; only the repositories under way at once (a few per job) use theirs,
# and a token dropped too early costs one more request to the token server.
_MAX_TOKENS = 4096
# Rotated refresh tokens kept (as secrets to hide) besides the one the credentials gave.
_KEPT_REFRESH_TOKENS = 16


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)
    origin: str = ""  # where they were found, for messages (never the secret)
    # An OAuth2 refresh token (docker's `identitytoken`, a helper's `<token>` secret): traded at
    # the token realm for access tokens, never sent to the registry itself.
    identity_token: str = field(default="", repr=False)
    # skopeo's --registry-token: a bearer token sent to the registry as it is, for a Bearer
    # challenge, instead of one asked of its token server.
    registry_token: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        # They go into a Basic header or a form as UTF-8; bytes that are not (a password read from
        # stdin or the environment keeps them as surrogates) would fail there, deep in a request.
        for value in (self.username, self.password, self.identity_token, self.registry_token):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise AuthError(
                    f"{self.origin or 'credentials'}: the username or password is not valid UTF-8"
                ) from None

    @property
    def basic(self) -> bool:
        """Whether these answer a Basic challenge: an identity token or a registry token alone
        does not, as in docker and skopeo."""
        return bool(self.username or self.password) and not (self.identity_token and not self.password)


@dataclass(frozen=True)
class Challenge:
    scheme: str  # "basic" or "bearer", lower case
    params: dict

    @property
    def realm(self) -> str:
        return self.params.get("realm", "")


_PARAM = re.compile(r'\s*([A-Za-z0-9_.-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,]*)\s*(?:,|$)')


def parse_challenges(header: str) -> list[Challenge]:
    """`Bearer realm="…",service="…",scope="a,b"` (one or more challenges) -> Challenge list."""
    out: list[Challenge] = []
    rest = header.strip()
    while rest:
        match = re.match(r"([A-Za-z][A-Za-z0-9_-]*)\s*", rest)
        if not match:
            break
        scheme = match.group(1).lower()
        rest = rest[match.end() :]
        params: dict[str, str] = {}
        while rest:
            param = _PARAM.match(rest)
            if not param:
                break
            value = param.group(2)
            if value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            params[param.group(1).lower()] = value
            rest = rest[param.end() :]
        out.append(Challenge(scheme, params))
        rest = rest.lstrip(", ")
    return out


# ---------------------------------------------------------------- credential files

# A docker config.json or containers auth.json holds a few entries; far past that, it is no auth file.
MAX_AUTH_FILE_BYTES = 16 << 20


def auth_files(env: dict | None = None) -> list[str]:
    """The files docker and skopeo read credentials from, in the order skopeo tries them."""
    env = os.environ if env is None else env
    home = env.get("HOME") or os.path.expanduser("~")
    files = []
    if env.get("REGISTRY_AUTH_FILE"):
        files.append(env["REGISTRY_AUTH_FILE"])
    if env.get("XDG_RUNTIME_DIR"):
        files.append(os.path.join(env["XDG_RUNTIME_DIR"], "containers", "auth.json"))
    files.append(os.path.join(env.get("XDG_CONFIG_HOME") or os.path.join(home, ".config"), "containers", "auth.json"))
    files.append(os.path.join(docker_config_dir(env), "config.json"))
    files.append(os.path.join(home, ".dockercfg"))
    return files


def _normalise_key(key: str) -> str:
    """An `auths` key as docker writes it (`https://host/v1/`, `host`, `host/ns/repo`) -> `host[/path]`."""
    text = key.strip()
    if "://" in text:
        parsed = urllib.parse.urlsplit(text)
        text = parsed.netloc + parsed.path
    text = text.rstrip("/")
    if text == "index.docker.io/v1" or is_docker_hub(text):
        return DOCKER_HUB
    if text.endswith("/v1") or text.endswith("/v2"):
        text = text[:-3]
    return text


def _decode_auth(entry: dict, origin: str) -> Credentials | None:
    # `docker login` to a registry that hands out refresh tokens (Azure's, through `az acr login`)
    # keeps one here beside `auth` (then `user:` with no password), as skopeo reads it too.
    token = entry.get("identitytoken")
    token = token if isinstance(token, str) else ""
    encoded = entry.get("auth")
    if isinstance(encoded, str) and encoded:
        try:
            user, sep, password = base64.b64decode(encoded, validate=False).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise AuthError(f"{origin}: the auth value is not base64 of user:password") from None
        if not sep:
            raise AuthError(f"{origin}: the auth value is not base64 of user:password")
        return Credentials(user, password, origin, token)
    user, password = entry.get("username"), entry.get("password")
    if isinstance(user, str) and user and isinstance(password, str):
        return Credentials(user, password, origin, token)
    if token:
        return Credentials("", "", origin, token)
    return None


# What a helper may print on each stream, and how long it may take. Docker's helpers print one
# small JSON object; one that streams without end must not fill memory or hold the run.
_HELPER_OUTPUT = 64 * 1024
_HELPER_SECONDS = 30.0
# Of a failing helper's own words, at most this many characters go into the message.
_HELPER_MESSAGE = 300


def _helper_output(program: str, server: str) -> tuple[int, bytes, bytes]:
    """`program get`'s exit status, stdout and stderr. OSError when it cannot start, prints more
    than _HELPER_OUTPUT bytes on a stream, or has not finished within _HELPER_SECONDS."""
    deadline = time.monotonic() + _HELPER_SECONDS
    proc = subprocess.Popen([program, "get"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        with contextlib.suppress(BrokenPipeError):  # a helper that does not read its input
            proc.stdin.write(server.encode())  # a host name: far below a pipe's buffer
            proc.stdin.close()
        out = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
        with selectors.DefaultSelector() as selector:
            for fd in out:
                selector.register(fd, selectors.EVENT_READ)
            while selector.get_map():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise OSError(f"no answer within {_HELPER_SECONDS:.0f} s")
                for key, _ in selector.select(left):
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        selector.unregister(key.fd)
                    elif len(out[key.fd]) + len(chunk) > _HELPER_OUTPUT:
                        raise OSError(f"it printed more than {_HELPER_OUTPUT // 1024} KiB")
                    else:
                        out[key.fd] += chunk
        try:
            status = proc.wait(max(deadline - time.monotonic(), 0.001))
        except subprocess.TimeoutExpired:
            raise OSError(f"no answer within {_HELPER_SECONDS:.0f} s") from None
        return status, bytes(out[proc.stdout.fileno()]), bytes(out[proc.stderr.fileno()])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            with contextlib.suppress(OSError):
                stream.close()


def _run_helper(helper: str, server: str, origin: str) -> Credentials | None:
    program = f"docker-credential-{helper}"
    try:
        status, stdout, stderr = _helper_output(program, server)
    except OSError as exc:
        raise AuthError(f"{origin}: credential helper {program} failed: {exc}") from None
    if status != 0:
        message = " ".join((stdout or stderr).decode(errors="replace").split())
        if "credentials not found" in message.lower():
            return None
        if len(message) > _HELPER_MESSAGE:
            message = message[:_HELPER_MESSAGE] + " …"
        raise AuthError(f"{origin}: credential helper {program} failed: {message or f'exit {status}'}")
    try:
        doc = json.loads(stdout)
        user, secret = doc["Username"], doc["Secret"]
    except (ValueError, KeyError, TypeError, RecursionError):
        user = secret = None
    # the protocol's fields are strings; a number, null or object is no credential
    if not (isinstance(user, str) and isinstance(secret, str)):
        raise AuthError(f"{origin}: credential helper {program} printed no Username/Secret")
    if user == "<token>":  # the helper protocol's way of handing over an identity token
        return Credentials("", "", f"{origin} ({program})", secret) if secret else None
    return Credentials(user, secret, f"{origin} ({program})")


def _host_keys(registry: str) -> tuple[str, ...]:
    return DOCKER_HUB_KEYS if registry == DOCKER_HUB else (registry,)


def find_credentials(registry: str, repository: str = "", files: list[str] | None = None) -> Credentials | None:
    """Credentials for `registry` (and `repository`, for repository-scoped keys) from the auth files.

    The first file that has an entry for the registry wins; inside it the most specific key
    (`host/ns/repo` before `host/ns` before `host`) wins, as skopeo does.
    """
    for path in files if files is not None else auth_files():
        try:
            # A FIFO would wait for a writer for ever, a link to /dev/zero never end.
            doc = json.loads(read_small(path, MAX_AUTH_FILE_BYTES, os.path.basename(path)))
        except FileNotFoundError:
            continue
        except SourceError as exc:
            raise AuthError(f"cannot read credentials from {path}: {exc.reason}") from None
        except (OSError, ValueError, RecursionError) as exc:
            raise AuthError(f"cannot read credentials from {path}: {exc}") from None
        if not isinstance(doc, dict):
            continue
        helpers = doc.get("credHelpers") if isinstance(doc.get("credHelpers"), dict) else {}
        for key in _host_keys(registry):
            helper = helpers.get(key)
            if isinstance(helper, str) and helper:
                found = _run_helper(helper, key, path)
                if found is not None:
                    return found
        auths = doc.get("auths") if isinstance(doc.get("auths"), dict) else None
        if auths is None and path.endswith(".dockercfg"):
            auths = doc  # the legacy file is the auths map itself
        if auths:
            entries = {_normalise_key(key): value for key, value in auths.items() if isinstance(value, dict)}
            host = DOCKER_HUB if registry == DOCKER_HUB else registry
            candidates = []
            parts = repository.split("/") if repository else []
            for length in range(len(parts), 0, -1):
                candidates.append(host + "/" + "/".join(parts[:length]))
            candidates.append(host)
            for candidate in candidates:
                entry = entries.get(candidate)
                if entry is not None:
                    found = _decode_auth(entry, f"{path} ({candidate})")
                    if found is not None:
                        return found
        store = doc.get("credsStore")
        if isinstance(store, str) and store:
            found = _run_helper(store, _host_keys(registry)[-1] if registry == DOCKER_HUB else registry, path)
            if found is not None:
                return found
    return None


# ---------------------------------------------------------------- the per-host state


def repository_scope(name: str) -> str:
    return f"repository:{name}:pull"


CATALOG_SCOPE = "registry:catalog:*"


class KeyedLocks:
    """A lock per key, kept only while some thread holds or waits for it: keys come from what a
    registry lists (scopes, digests), so locks kept for good would grow with the registry."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._locks: dict[Hashable, list] = {}  # key -> [lock, threads holding or waiting for it]

    @contextlib.contextmanager
    def hold(self, key: Hashable) -> Iterator[None]:
        with self._lock:
            entry = self._locks.get(key)
            if entry is None:
                entry = self._locks[key] = [threading.Lock(), 0]
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._lock:
                entry[1] -= 1
                if not entry[1]:
                    del self._locks[key]

    def __len__(self) -> int:
        return len(self._locks)


class HostAuth:
    """What a host asked for, and the tokens it gave. Shared by all worker threads of a crawl."""

    def __init__(self, registry: str, credentials: Credentials | None):
        self.registry = registry
        self.credentials = credentials
        self.scheme = ""  # "", "basic" or "bearer": learned from the first challenge
        self.realm = ""
        self.service = ""
        self._tokens: OrderedDict[str, tuple[str, float]] = OrderedDict()  # least recently used first
        # The refresh token to trade next: a token server may answer with a new one and retire the
        # one it was given (RFC 6819's rotation). Every one held is a secret.
        self._refresh = credentials.identity_token if credentials is not None else ""
        self._refreshes: list[str] = [self._refresh] if self._refresh else []
        self._trading: dict[str, int] = {}  # refresh token -> requests under way with it
        self._lock = threading.Lock()
        self._traded = threading.Condition(self._lock)
        self._scope_locks = KeyedLocks()

    def learn(self, header: str) -> Challenge | None:
        """Remember the first usable challenge of a 401; None when there is none we can answer."""
        challenge = first_usable(header)
        if challenge is not None:
            self.remember(challenge)
        return challenge

    def remember(self, challenge: Challenge) -> None:
        """Answer this host's requests by `challenge` from now on."""
        with self._lock:
            if challenge.scheme == "bearer":
                self.scheme, self.realm = "bearer", challenge.realm
                self.service = challenge.params.get("service", self.service)
            else:
                self.scheme = "basic"

    @property
    def refresh_token(self) -> str:
        with self._lock:
            return self._refresh

    def begin_trade(self) -> str:
        """The refresh token to send now, counted as under way until `end_trade`."""
        with self._lock:
            used = self._refresh
            self._trading[used] = self._trading.get(used, 0) + 1
            return used

    def end_trade(self, used: str, new: str = "") -> None:
        """A request that sent `used` is over; the token server answered it with `new`, if any,
        which is traded from now on."""
        with self._lock:
            left = self._trading[used] - 1
            if left:
                self._trading[used] = left
            else:
                del self._trading[used]
            if new and new != used:
                if self._refresh == used:
                    self._refresh = new
                if new not in self._refreshes:
                    # The one given and the latest few: a server that rotates retires the others,
                    # and a crawl of a million repositories would keep a million.
                    self._refreshes.append(new)
                    del self._refreshes[1:-_KEPT_REFRESH_TOKENS]
            self._traded.notify_all()

    def refused_for_good(self, used: str, timeout: float) -> bool:
        """After `used` was refused: False when a newer refresh token is to be tried. A server
        that rotates them retires `used` as soon as a parallel request traded it, and that
        request's answer (the new one) may still be on its way: it is waited for."""
        with self._lock:
            self._traded.wait_for(lambda: self._refresh != used or used not in self._trading, timeout)
            return self._refresh == used

    def basic_header(self) -> dict:
        if self.credentials is None or not self.credentials.basic:
            return {}
        raw = f"{self.credentials.username}:{self.credentials.password}".encode()
        return {"Authorization": "Basic " + base64.b64encode(raw).decode()}

    def cached_token(self, scope: str) -> str | None:
        with self._lock:
            entry = self._tokens.get(scope)
            if entry is None:
                return None
            if entry[1] <= time.monotonic():
                del self._tokens[scope]
                return None
            self._tokens.move_to_end(scope)
            return entry[0]

    def scope_lock(self, scope: str) -> contextlib.AbstractContextManager:
        """Held while a token for `scope` is asked for, so threads wanting the same one ask once."""
        return self._scope_locks.hold(scope)

    def store_token(self, scope: str, token: str, lifetime: float) -> None:
        now = time.monotonic()
        with self._lock:
            self._tokens[scope] = (token, now + max(lifetime - _TOKEN_SLACK, 1.0))
            self._tokens.move_to_end(scope)
            # The least recently used go first, and with them those that expired: unused tokens
            # gather at the front, so this costs no scan of the map.
            while self._tokens:
                oldest = next(iter(self._tokens.values()))
                if len(self._tokens) <= _MAX_TOKENS and oldest[1] > now:
                    break
                self._tokens.popitem(last=False)

    def drop_token(self, scope: str) -> None:
        with self._lock:
            self._tokens.pop(scope, None)

    def secrets(self) -> list[str]:
        """Everything this client may have sent that must never be quoted back: the password, the
        Basic value that carries it, and the tokens still kept."""
        found = []
        if self.credentials is not None:
            found += [self.credentials.password, self.credentials.registry_token]
            found += [value.partition(" ")[2] for value in self.basic_header().values()]
        with self._lock:
            found += self._refreshes
            found += [token for token, _ in self._tokens.values()]
        return [secret for secret in found if secret]


def sent_secrets(headers: dict) -> list[str]:
    """The credential of an Authorization header as sent: a registry may echo it whatever it is."""
    value = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
    credential = value.partition(" ")[2].strip()
    return [credential] if credential else []


def _forms(secret: str) -> set[str]:
    """A secret as it may appear in a registry's answer: as sent, or escaped inside a JSON string,
    by Python's rules or Go's (which also escape <, > and &)."""
    escaped = json.dumps(secret)[1:-1]
    go = escaped.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return {secret, escaped, go, json.dumps(secret, ensure_ascii=False)[1:-1]}


def scrub(text: str, secrets) -> str:
    """`text` with every secret in it replaced by `***`, longest first, so a token that holds the
    password is hidden whole."""
    for secret in sorted({form for s in secrets for form in _forms(s)}, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, "***")
    return text


def scrub_bytes(body: bytes, secrets) -> bytes:
    """`scrub` for an answer's body before it is decoded: its JSON may spell a secret either way."""
    for secret in sorted({form for s in secrets for form in _forms(s)}, key=len, reverse=True):
        encoded = secret.encode("utf-8", "surrogatepass")
        if encoded in body:
            body = body.replace(encoded, b"***")
    return body


_TOKEN = re.compile(r"[\x21-\x7e]+\Z")


def first_usable(header: str) -> Challenge | None:
    """The first challenge of a WWW-Authenticate header this client can answer, or None."""
    for challenge in parse_challenges(header or ""):
        if (challenge.scheme == "bearer" and challenge.realm) or challenge.scheme == "basic":
            return challenge
    return None


def _object_of(body: bytes) -> dict:
    """A token server's answer as a JSON object; {} for anything else."""
    try:
        doc = loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # `[[[[…`: too deep for the parser
        return {}
    return doc if isinstance(doc, dict) else {}


def refresh_token_of(body: bytes) -> str:
    """The `refresh_token` a token server's answer holds, if it is one that can be sent again."""
    token = _object_of(body).get("refresh_token")
    return token if isinstance(token, str) and _TOKEN.match(token) else ""


def oauth_error_text(body: bytes) -> str:
    """`error: error_description` of an RFC 6749 error answer, or ''."""
    doc = _object_of(body)
    parts = [doc.get(key) for key in ("error", "error_description")]
    return ": ".join(part for part in parts if isinstance(part, str) and part)


def parse_token_response(body: bytes, realm: str) -> tuple[str, float]:
    try:
        doc = loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # `[[[[…`: too deep for the parser
        raise AuthError(f"token server {realm} answered with something that is not JSON") from None
    if not isinstance(doc, dict):
        raise AuthError(f"token server {realm} answered with something that is not a JSON object")
    token = doc.get("token") or doc.get("access_token")
    if not isinstance(token, str) or not token:
        raise AuthError(f"token server {realm} gave no token")
    if not _TOKEN.match(token):
        # The token goes into an Authorization header: a CR or LF would add headers of the server's
        # choosing. RFC 6750 tokens are narrower still; visible ASCII keeps every real one. The
        # token itself is never echoed.
        raise AuthError(f"token server {realm} gave a token that is not visible ASCII")
    lifetime = doc.get("expires_in")
    if type(lifetime) is LongInteger:  # more digits than int() converts: as long as is allowed, or not at all
        lifetime = -1 if lifetime.head.startswith("-") else _MAX_TOKEN_LIFETIME
    if not isinstance(lifetime, (int, float)) or isinstance(lifetime, bool):
        return token, _DEFAULT_TOKEN_LIFETIME
    try:
        seconds = float(lifetime)
    except OverflowError:  # an integer of hundreds of digits
        seconds = _MAX_TOKEN_LIFETIME
    if not seconds > 0:  # NaN too: a token that expires at once was asked for again on every request
        return token, _DEFAULT_TOKEN_LIFETIME
    return token, min(seconds, _MAX_TOKEN_LIFETIME)
