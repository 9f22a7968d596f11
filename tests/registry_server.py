"""Real and fake registries on 127.0.0.1 for the registry-source tests and the benchmark.

- `RealRegistry`: Debian's `docker-registry` (distribution 2.8) with a config file, anonymous,
  with `auth: htpasswd`, or with `auth: token` in front of `TokenServer`.
- `TokenServer`: a small token endpoint that checks basic credentials, records the scopes asked
  for, and signs RS256 JWTs (with `openssl`) that distribution verifies against its root bundle.
- `FakeRegistry`: a programmable /v2/ server for responses a real registry never gives, hostile
  ones included (answers that trickle a byte at a time, or never come).

When CI is set, a registry that cannot start is a failure, never a skip.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

REGISTRY_BIN = os.environ.get("REGISTRY_BIN", "docker-registry")
SKOPEO = os.environ.get("SKOPEO", "skopeo")


def unavailable(*tools: str) -> str:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    return "missing tools: " + ", ".join(missing) if missing else ""


def give_up(reason: str) -> None:
    """Skip the test; fail it instead when CI is set. Outside pytest (the benchmark), raise."""
    try:
        import pytest
    except ImportError:
        raise RuntimeError(reason) from None
    if os.environ.get("CI"):
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


def require(*tools: str) -> None:
    reason = unavailable(*tools)
    if reason:
        give_up(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_http(url: str, process: subprocess.Popen | None, log_path: str | None, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            log = open(log_path).read() if log_path else ""
            raise RuntimeError(f"registry exited with {process.returncode}: {log[-2000:]}")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return  # 401 is an answer too
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


def htpasswd_line(user: str, password: str) -> str:
    """A bcrypt entry, as distribution's htpasswd auth requires."""
    if shutil.which("htpasswd"):
        out = subprocess.run(["htpasswd", "-nbB", user, password], check=True, capture_output=True, text=True).stdout
        return out.strip() + "\n"
    import bcrypt  # fallback when apache2-utils is absent

    return f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode()}\n"


class RealRegistry:
    """`docker-registry serve CONFIG` on 127.0.0.1:PORT with filesystem storage under `root`."""

    def __init__(self, root: str, *, auth: dict | None = None, extra: str = ""):
        require(REGISTRY_BIN)
        os.makedirs(root, exist_ok=True)
        self.root = root
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        self.log_path = os.path.join(root, "registry.log")
        lines = [
            "version: 0.1",
            "log:",
            "  level: error",
            "  accesslog:",
            "    disabled: true",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {root}/data",
            "  delete:",
            "    enabled: true",
            "  cache:",
            "    blobdescriptor: inmemory",
            "http:",
            f"  addr: {self.host}",
            "  secret: imgdex-tests-not-a-secret",
        ]
        if auth:
            lines.append("auth:")
            for kind, settings in auth.items():
                lines.append(f"  {kind}:")
                for key, value in settings.items():
                    lines.append(f"    {key}: {value}")
        config = "\n".join(lines) + "\n" + extra
        self.config_path = os.path.join(root, "registry.yml")
        with open(self.config_path, "w") as f:
            f.write(config)
        self.process = None
        self.start()

    def start(self) -> None:
        log = open(self.log_path, "a")
        self.process = subprocess.Popen([REGISTRY_BIN, "serve", self.config_path], stdout=log, stderr=log)
        log.close()
        try:
            _wait_http(self.url + "/v2/", self.process, self.log_path)
        except RuntimeError as exc:
            self.stop()
            give_up(f"docker-registry did not start: {exc}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def skopeo_copy(src: str, dest: str, *, all_images: bool = False, creds: str = "", fmt: str = "") -> None:
    require(SKOPEO)
    args = [SKOPEO, "--insecure-policy", "copy", "-q", "--dest-tls-verify=false", "--src-tls-verify=false"]
    if all_images:
        args.append("--all")
    if creds:
        args += ["--dest-creds", creds]
    if fmt:
        args += ["--format", fmt]
    # a private TMPDIR: skopeo unpacks archives there
    subprocess.run(args + [src, dest], check=True, capture_output=True, text=True, timeout=120)


def skopeo_raw(ref: str, *, config: bool = False, creds: str = "") -> bytes:
    require(SKOPEO)
    args = [SKOPEO, "inspect", "--raw", "--tls-verify=false"]
    if config:
        args.insert(2, "--config")
    if creds:
        args += ["--creds", creds]
    return subprocess.run(args + [ref], check=True, capture_output=True, timeout=60).stdout


# ---------------------------------------------------------------- registry HTTP API helpers


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def http(method: str, url: str, data: bytes | None = None, headers: dict | None = None) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def push_blob(base_url: str, repo: str, data: bytes, headers: dict | None = None) -> str:
    """Monolithic upload: POST an upload session, then PUT the bytes with the digest."""
    digest = sha256(data)
    status, _, _ = http("HEAD", f"{base_url}/v2/{repo}/blobs/{digest}", headers=headers)
    if status == 200:
        return digest
    status, got, body = http("POST", f"{base_url}/v2/{repo}/blobs/uploads/", data=b"", headers=headers)
    assert status == 202, (status, body)
    location = urllib.parse.urljoin(base_url + "/", got["Location"])
    joiner = "&" if "?" in location else "?"
    status, _, body = http(
        "PUT",
        f"{location}{joiner}digest={digest}",
        data=data,
        headers={**(headers or {}), "Content-Type": "application/octet-stream"},
    )
    assert status == 201, (status, body)
    return digest


def push_manifest(
    base_url: str, repo: str, reference: str, data: bytes, media_type: str, headers: dict | None = None
) -> str:
    status, got, body = http(
        "PUT",
        f"{base_url}/v2/{repo}/manifests/{reference}",
        data=data,
        headers={**(headers or {}), "Content-Type": media_type},
    )
    assert status == 201, (status, body)
    return got.get("Docker-Content-Digest", sha256(data))


def delete_tag_by_manifest(base_url: str, repo: str, digest: str) -> None:
    status, _, body = http("DELETE", f"{base_url}/v2/{repo}/manifests/{digest}")
    assert status == 202, (status, body)


# ---------------------------------------------------------------- token server


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """Issues distribution-compatible bearer tokens after checking basic credentials.

    Every request is recorded as (scope list, user, User-Agent) so tests can check what a client
    asked for. Known users get the actions they ask for, except on `denied_repositories`;
    anonymous requests get a token that grants nothing.
    """

    def __init__(
        self,
        workdir: str,
        users: dict[str, str],
        *,
        service: str = "imgdex-test-registry",
        issuer: str = "imgdex-test-issuer",
    ):
        require("openssl")
        os.makedirs(workdir, exist_ok=True)
        self.users = users
        self.service = service
        self.issuer = issuer
        self.key_path = os.path.join(workdir, "token.key")
        self.cert_path = os.path.join(workdir, "token.crt")
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=imgdex-test-token-issuer",
                "-keyout",
                self.key_path,
                "-out",
                self.cert_path,
            ],
            check=True,
            capture_output=True,
        )
        der = subprocess.run(
            ["openssl", "x509", "-in", self.cert_path, "-outform", "DER"], check=True, capture_output=True
        ).stdout
        self._x5c = base64.b64encode(der).decode()
        self.requests: list[tuple[list[str], str]] = []
        self.denied_repositories: set[str] = set()
        # OAuth2 refresh tokens (docker's identity tokens) -> user; `rotate` answers each use with a
        # new one and retires the one used, as RFC 6819's rotation does.
        self.refresh_tokens: dict[str, str] = {}
        self.rotate = False
        self.posts: list[dict[str, list[str]]] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, status: int, doc: dict | None = None) -> None:
                body = json.dumps(doc).encode() if doc is not None else b""
                self.send_response(status)
                if doc is not None:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
                    return self.rfile.read(int(self.headers.get("Content-Length", "0")))
                # Go's client sends a body it cannot size (skopeo's token form) chunked.
                body = b""
                while True:
                    size = int(self.rfile.readline().split(b";")[0], 16)
                    if not size:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass  # trailers
                        return body
                    body += self.rfile.read(size)
                    self.rfile.readline()

            def do_POST(self):
                # The distribution spec's OAuth2 endpoint (docs/spec/auth/oauth.md), refresh-token grant.
                form = urllib.parse.parse_qs(self._body().decode())
                with server._lock:
                    server.posts.append({**form, "user-agent": [self.headers.get("User-Agent", "")]})
                    given = form.get("refresh_token", [""])[0]
                    user = server.refresh_tokens.get(given, "")
                    fresh = ""
                    if user and server.rotate:
                        del server.refresh_tokens[given]
                        fresh = "rt-" + os.urandom(12).hex()
                        server.refresh_tokens[fresh] = user
                if self.headers.get("Content-Type", "") != "application/x-www-form-urlencoded":
                    return self._answer(400, {"error": "invalid_request"})
                if form.get("grant_type") != ["refresh_token"] or not form.get("client_id", [""])[0]:
                    return self._answer(400, {"error": "unsupported_grant_type"})
                if form.get("service", [""])[0] != server.service:
                    return self._answer(400, {"error": "invalid_request", "error_description": "unknown service"})
                if not user:
                    return self._answer(400, {"error": "invalid_grant", "error_description": "refresh token not valid"})
                scopes = [scope for field in form.get("scope", []) for scope in field.split(" ") if scope]
                access = []
                for scope in scopes:
                    kind, _, rest = scope.partition(":")
                    name, _, actions = rest.rpartition(":")
                    if name not in server.denied_repositories:
                        access.append({"type": kind, "name": name, "actions": actions.split(",")})
                doc = {"access_token": server.sign(user, access), "expires_in": 300, "scope": " ".join(scopes)}
                if fresh:
                    doc["refresh_token"] = fresh
                self._answer(200, doc)

            def do_GET(self):
                parsed = urllib.parse.urlparse(self.path)
                query = urllib.parse.parse_qs(parsed.query)
                user = ""
                header = self.headers.get("Authorization", "")
                if header.startswith("Basic "):
                    user, _, password = base64.b64decode(header[6:]).decode().partition(":")
                    if server.users.get(user) != password:
                        self.send_response(401)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                if query.get("service", [""])[0] != server.service:
                    self.send_response(400)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                scopes = query.get("scope", [])
                with server._lock:
                    server.requests.append((scopes, user, self.headers.get("User-Agent", "")))
                access = []
                for scope in scopes:
                    kind, _, rest = scope.partition(":")
                    name, _, actions = rest.rpartition(":")
                    if not user or name in server.denied_repositories:
                        continue  # anonymous users get a token without access, as real servers do
                    access.append({"type": kind, "name": name, "actions": actions.split(",")})
                body = json.dumps(
                    {
                        "token": server.sign(user, access),
                        "expires_in": 300,
                        "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.realm = f"http://127.0.0.1:{self.port}/token"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def sign(self, subject: str, access: list[dict]) -> str:
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self._x5c]}
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": os.urandom(8).hex(),
            "access": access,
        }
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", self.key_path],
            input=signing_input.encode(),
            check=True,
            capture_output=True,
        ).stdout
        return f"{signing_input}.{_b64url(signature)}"

    def registry_auth(self) -> dict:
        return {
            "token": {
                "realm": self.realm,
                "service": self.service,
                "issuer": self.issuer,
                "rootcertbundle": self.cert_path,
            }
        }

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# ---------------------------------------------------------------- fake registry


def interim_answer(status: int) -> bytes:
    """A 1xx answer as a server sends it before the real one: a header, no body."""
    return f"HTTP/1.1 {status} Interim\r\nLink: </x>; rel=preload\r\n\r\n".encode()


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict = field(default_factory=dict)
    delay: float = 0.0  # before answering; cut short when the server stops
    content_length: int | None = None  # a larger value than len(body) makes a truncated response
    trickle: float = 0.0  # seconds between the bytes of the body, one byte at a time
    trickle_headers: bool = False  # trickle the status line and headers too
    interim: tuple[int, ...] = ()  # 1xx answers sent first, each with one header and no body


class FakeRegistry:
    """A /v2/ server whose answers are given per path: `routes[path] = Reply | callable(handler) -> Reply`.

    `hits[path]` counts requests, so tests can check retries, and that layers are never fetched;
    `connections` counts the TCP connections accepted. Delays and trickles end when the server
    stops, so no handler thread outlives a test by more than one byte's wait.
    """

    def __init__(self):
        self.routes: dict[str, Reply | Callable[[str, dict], Reply]] = {}
        self.hits: dict[str, int] = {}
        self.log: list[tuple[str, str]] = []
        self.posted: list[tuple[str, bytes]] = []  # (path, body) of every POST
        self.connections = 0
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def setup(self):
                super().setup()
                with fake._lock:
                    fake.connections += 1

            def _trickle(self, data: bytes, interval: float) -> None:
                for position in range(len(data)):
                    if fake.stopping.is_set():
                        raise ConnectionResetError("the server is stopping")
                    self.wfile.write(data[position : position + 1])
                    self.wfile.flush()
                    fake.stopping.wait(interval)

            def _serve(self, method: str):
                with fake._lock:
                    fake.hits[self.path] = fake.hits.get(self.path, 0) + 1
                    fake.log.append((method, self.path))
                route = fake.routes.get(self.path)
                if route is None:
                    route = fake.routes.get(urllib.parse.urlparse(self.path).path)
                if callable(route):
                    route = route(method, dict(self.headers))
                if route is None:
                    route = Reply(
                        404,
                        b'{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry"}]}',
                        {"Content-Type": "application/json"},
                    )
                if route.delay and fake.stopping.wait(route.delay):
                    self.close_connection = True
                    return
                try:
                    for status in route.interim:
                        self.wfile.write(interim_answer(status))
                    if route.trickle_headers:
                        self._headers_buffer = []
                        self.send_response_only(route.status)
                    else:
                        self.send_response(route.status)
                    for key, value in route.headers.items():
                        self.send_header(key, value)
                    length = route.content_length if route.content_length is not None else len(route.body)
                    self.send_header("Content-Length", str(length))
                    if route.content_length is not None:
                        self.send_header("Connection", "close")
                    if route.trickle_headers:
                        self._headers_buffer.append(b"\r\n")
                        head, self._headers_buffer = b"".join(self._headers_buffer), []
                        self._trickle(head, route.trickle)
                    else:
                        self.end_headers()
                    if method != "HEAD":
                        if route.trickle:
                            self._trickle(route.body, route.trickle)
                        else:
                            self.wfile.write(route.body)
                    if route.content_length is not None:
                        self.close_connection = True
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

            def do_GET(self):
                self._serve("GET")

            def do_HEAD(self):
                self._serve("HEAD")

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with fake._lock:
                    fake.posted.append((self.path, body))
                self._serve("POST")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        self.routes["/v2/"] = Reply(
            200, b"{}", {"Content-Type": "application/json", "Docker-Distribution-API-Version": "registry/2.0"}
        )
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def catalog(self, repositories: list[str]) -> None:
        self.routes["/v2/_catalog"] = Reply(
            200, json.dumps({"repositories": repositories}).encode(), {"Content-Type": "application/json"}
        )

    def add_image(
        self,
        repo: str,
        tags: dict[str, bytes],
        blobs: dict[str, bytes],
        media_type: str,
        digest_header: str | None = None,
    ) -> None:
        """Serve `tags` (tag -> manifest bytes) and `blobs` of `repo`, as distribution does."""
        self.routes[f"/v2/{repo}/tags/list"] = Reply(
            200, json.dumps({"name": repo, "tags": sorted(tags)}).encode(), {"Content-Type": "application/json"}
        )
        for tag, data in tags.items():
            reply = Reply(
                200, data, {"Content-Type": media_type, "Docker-Content-Digest": digest_header or sha256(data)}
            )
            self.routes[f"/v2/{repo}/manifests/{tag}"] = reply
            self.routes[f"/v2/{repo}/manifests/{sha256(data)}"] = reply
        for digest, data in blobs.items():
            self.routes[f"/v2/{repo}/blobs/{digest}"] = Reply(
                200, data, {"Content-Type": "application/octet-stream", "Docker-Content-Digest": digest}
            )

    def stop(self) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
