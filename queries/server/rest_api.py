"""The REST side: the public API's read paths on a threaded HTTP/1.1 server from the standard library.

Bodies are what MessageToJson prints for the response (two-space indent, proto field order),
errors a google.rpc.Status JSON body with the HTTP status the public API gives its code. Query
parameters are the request message's fields in JSON form (`pageSize`, also `page_size`), parsed
with json_format into the official request message, so both transports validate the very same
message.

One thread per connection, keep-alive; at most `workers` requests are answered at once, and at most
`max_connections` connections are held (half the open-files limit, at most 1024: REST alone cannot
take the process's last descriptors). Chosen by
measurement (bench/serve_bench.py --asgi, 100,000 images, 8 clients, this 2-core machine): gets
at 5,400 requests/s against 3,200 for the same routes on Starlette + uvicorn (httptools, uvloop,
reads handed to its thread pool), and 10,000 against 4,400 for a request that only routes. The
lookups are short and release the GIL in DuckDB, so threads lose nothing to an event loop here,
and the server needs no dependency.
"""

from __future__ import annotations

import errno
import http.client
import re
import socket
import sys
import threading
import time
import traceback
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf import json_format
from yandex.cloud.containerregistry.v1 import image_service_pb2, registry_service_pb2, repository_service_pb2

from indexer.errors import NotFound, QueryError, Unauthenticated, Unimplemented

from .. import render
from ..api_rules import cut, shown
from .api import INTERNAL, INVALID_ARGUMENT, UNAVAILABLE, UNIMPLEMENTED, Api, error_body, status_of
from .grpc_api import token_matches

PREFIX = "/container-registry/v1/"
# An HTTP probe (a Kubernetes readiness or liveness check, a load balancer's) for a server run with
# REST alone: the answer of gRPC's health service, 200 SERVING or 503 NOT_SERVING.
HEALTH_PATH = "/healthz"
# Read methods of the public API that the index holds no data for.
_UNSERVED_SUFFIXES = (":listAccessBindings", ":listIpPermission")

# A request must arrive whole (line, headers, body) within this many seconds of the server starting
# to wait for it, and a response must be taken within as long: an idle keep-alive connection is
# closed after it too. Requests here are a few hundred bytes, so only a stalled or hostile client
# needs more; it is generous so that a client on a slow or lossy link (TCP retransmits back off to
# seconds) is not cut off mid-request, yet a held connection and its thread are freed in half a minute.
REQUEST_TIMEOUT = 30.0
# Each connection holds one descriptor and one thread. Half the soft open-files limit leaves the
# other half to the store's files, DuckDB and gRPC; 1024 bounds threads and buffers (~250 MB at
# most, every connection with a full request line and headers) where the limit is high.
MAX_CONNECTIONS = 1024
# No method here takes a body: a small one is read and ignored, a larger one refused unread.
MAX_BODY = 1 << 20
# The request line (the standard library's limit), and the header lines in all: real requests
# carry a few KiB at most.
MAX_LINE = 65536
MAX_HEADERS = 65536
_DRAIN_CHUNK = 1 << 16
_DECIMAL = re.compile(r"-?[0-9]+")
_NON_ASCII = re.compile(rb"[\x80-\xff]")
_INTEGER_TYPES = frozenset({1, 2, 3, 4})  # FieldDescriptor.CPPTYPE_INT32, INT64, UINT32, UINT64


def _dump(doc: dict) -> bytes:
    return render.to_json(doc).encode()


def _request(message_class, query: dict[str, list[str]], **path):
    """The request message from path parameters and the query string."""
    descriptor = message_class.DESCRIPTOR
    given: dict[str, list[str]] = {}  # field name -> the keys naming it, once per value
    for key, values in query.items():
        field = descriptor.fields_by_name.get(key) or descriptor.fields_by_camelcase_name.get(key)
        # grpc-gateway, the API's front end, refuses a field that holds one value given several
        # times; taking one of them would answer a request other than the one the client meant.
        # `pageSize=5&page_size=1` is that too (the gateway sets the field once per spelling, in
        # no set order). A parameter that names no field is ignored, by the gateway too, and so
        # is one naming a field the path gives.
        if field is None or field.camelcase_name in path or field.name in path:
            continue
        if not _repeated(field):
            given.setdefault(field.name, []).extend([key] * len(values))
    for keys in given.values():
        if len(keys) > 1:
            spellings = list(dict.fromkeys(keys))
            how = f" (as {' and '.join(spellings)})" if len(spellings) > 1 else ""
            raise QueryError(
                f"invalid request parameter: {keys[0]} is given {len(keys)} times{how} and takes one value"
            )
    fields = {key: values[-1] for key, values in query.items()}
    fields.update(path)
    # json_format hands integer strings to int(), which also takes `1_0`, `1e3` and non-ASCII
    # digits; the API's own front end takes ASCII decimal digits only.
    for key, value in fields.items():
        field = descriptor.fields_by_name.get(key) or descriptor.fields_by_camelcase_name.get(key)
        if field is not None and field.cpp_type in _INTEGER_TYPES and not _DECIMAL.fullmatch(value):
            raise QueryError(f"invalid request parameter: {key} must be a decimal integer, not {shown(value)}")
    try:
        return json_format.ParseDict(fields, message_class(), ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise QueryError(f"invalid request parameter: {cut(str(exc))}") from None


def _repeated(field) -> bool:
    # protobuf 6.32 has `is_repeated` and deprecates `label`, which later releases drop.
    repeated = getattr(field, "is_repeated", None)
    return repeated if isinstance(repeated, bool) else field.label == field.LABEL_REPEATED


def route(api: Api, method: str, path: str, query: dict[str, list[str]]) -> dict | str:
    """The response dict (or, for a list of images, its body already written) for one request.

    An ImgdexError for its error status.
    """
    if not path.startswith(PREFIX):
        raise NotFound(f"no such path {cut(path)}")
    rest = path[len(PREFIX) :]
    # `images/` is the Get template with an empty id, as gRPC's Get with one: not the list.
    collection, item, tail = rest.partition("/")
    if collection not in ("images", "repositories", "registries"):
        raise NotFound(f"no such path {cut(path)}")
    if method != "GET":
        raise Unimplemented(f"{method} {cut(path)} is not served by the read-only index")
    tail = _unquoted(tail)
    if tail.endswith(_UNSERVED_SUFFIXES):
        raise Unimplemented(f"{cut(path)} is not served by the index")
    if collection == "images":
        if item:
            return api.get_image(_request(image_service_pb2.GetImageRequest, query, imageId=tail))
        request = _request(image_service_pb2.ListImagesRequest, query)
        fragments, token = api.list_rendered(request, "rest-image-fragments", render.list_fragment)
        return render.list_json_of(fragments, token)
    if collection == "repositories":
        if tail.endswith(":byName"):
            name = tail[: -len(":byName")]
            return api.get_repository_by_name(
                _request(repository_service_pb2.GetRepositoryByNameRequest, query, repositoryName=name)
            )
        if item:
            return api.get_repository(_request(repository_service_pb2.GetRepositoryRequest, query, repositoryId=tail))
        return api.list_repositories(_request(repository_service_pb2.ListRepositoriesRequest, query))
    if item:
        return api.get_registry(_request(registry_service_pb2.GetRegistryRequest, query, registryId=tail))
    return api.list_registries(_request(registry_service_pb2.ListRegistriesRequest, query))


def _unquoted(text: str) -> str:
    """`text` with its percent-escapes decoded, which must spell UTF-8: a proto3 string holds
    nothing else (gRPC refuses such a request), and a replacement character would look up another
    id than the one sent."""
    try:
        return urllib.parse.unquote(text, errors="strict")
    except UnicodeDecodeError:
        raise QueryError(f"invalid request: {shown(text)} is not UTF-8 once its %-escapes are decoded") from None


def _query(text: str) -> dict[str, list[str]]:
    try:
        return urllib.parse.parse_qs(text, keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise QueryError(
            f"invalid request: the query {shown(text)} is not UTF-8 once its %-escapes are decoded"
        ) from None


def _as_sent(target: str) -> str:
    """The request target as the client meant it: http.server decodes the request line as Latin-1,
    and a client that sent UTF-8 unescaped (curl does) meant the characters that its
    percent-escapes would decode to."""
    try:
        return target.encode("latin-1").decode("utf-8")
    except UnicodeError:
        raise QueryError(f"invalid request: the target {shown(target)} is not UTF-8") from None


def _target(path: str) -> urllib.parse.SplitResult:
    """The request target, split. urlsplit raises ValueError for an absolute-form target whose
    authority is no host (`http://[::1/...`, a bracket left open): the client's mistake, which was
    answered 500 with a traceback on stderr."""
    sent = _as_sent(path)
    try:
        return urllib.parse.urlsplit(sent)
    except ValueError:
        raise QueryError(f"invalid request target {shown(sent)}") from None


def default_max_connections(share: int = 2) -> int:
    """1/`share` of the soft open-files limit (half for REST), at most MAX_CONNECTIONS."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return MAX_CONNECTIONS
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(1, min(MAX_CONNECTIONS, soft // share))


def _rpc_code(http_status: int) -> int:
    """The google.rpc code of an error answered before the request reaches the API."""
    if http_status in (501, 505):
        return UNIMPLEMENTED.code
    if http_status == 503:
        return UNAVAILABLE.code
    return INVALID_ARGUMENT.code  # the request itself cannot be taken: too large or malformed


class _Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class _HeaderLines:
    """What http.client reads the header lines from: MAX_HEADERS bytes in all. Notes whether the
    client hung up before the blank line that ends them (http.client takes that end for the blank
    line), and lines with a CR inside, which the email parser takes for two lines where a proxy in
    front may see one."""

    def __init__(self, rfile):
        self._rfile = rfile
        self._left = MAX_HEADERS
        self.cut = False
        self.bare_cr = False

    def readline(self, size: int = -1) -> bytes:
        line = self._rfile.readline(self._left + 1 if size < 0 else min(size, self._left + 1))
        self._left -= len(line)
        if self._left < 0:
            raise http.client.LineTooLong("header lines")
        if not line.endswith(b"\n"):
            self.cut = True
        if b"\r" in line.removesuffix(b"\n").removesuffix(b"\r"):
            self.bare_cr = True
        return line


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body leave in two writes; with Nagle on, the body waits for the client's
    # delayed ACK (40 ms a request on Linux).
    disable_nagle_algorithm = True
    server_version = "imgdex"
    server: "_Server"

    def version_string(self) -> str:
        return self.server_version  # the standard library appends a space and the Python version

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, busy=False)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self.connection)

    def log_message(self, format, *args) -> None:  # noqa: A002 - the base class's signature
        pass  # one line per request would drown the ready line and errors

    def parse_request(self) -> bool:
        self._sent_line = None
        if self.raw_requestline in (b"\r\n", b"\n"):
            # RFC 9112 2.2: an empty line before a request line is ignored (a client may end the
            # body of its last request with a stray CRLF); the standard library hung up instead.
            self.raw_requestline = self.rfile.readline(MAX_LINE + 1)
            if len(self.raw_requestline) > MAX_LINE:
                self.requestline, self.command = "", None
                self.send_error(414)
                return False
        line = self.raw_requestline.rstrip(b"\r\n")
        requestline = str(line, "iso-8859-1")
        # Split as bytes, at ASCII whitespace only: str.split() also splits at \x85 and \xa0, which
        # are bytes of UTF-8 characters a client may send raw (à is C3 A0).
        words = line.split()
        if len(words) not in (0, 3):
            # HTTP/0.9 (no version) would be answered without a status line; junk is junk.
            self.requestline, self.command, self.request_version = requestline, None, self.protocol_version
            self._refuse(400, f"malformed request line {shown(requestline)}")
            return False
        self._sent_line = requestline
        if not line.isascii():
            # The standard library splits the line as text: it gets the non-ASCII bytes escaped,
            # and the target as sent is put back once it has parsed the rest.
            self.raw_requestline = _NON_ASCII.sub(lambda byte: b"%%%02X" % byte[0][0], self.raw_requestline)
        rfile = self.rfile
        self.rfile = lines = _HeaderLines(rfile)
        try:
            parsed = super().parse_request()
        finally:
            self.rfile = rfile
        if not parsed:
            return False
        if not line.isascii():
            path = str(words[1], "iso-8859-1")
            # As the standard library does to the target (gh-87389: `//host` read as another host).
            self.requestline, self.path = requestline, "/" + path.lstrip("/") if path.startswith("//") else path
        if lines.cut:
            self.close_connection = True  # the client left mid-headers: no request to answer
            return False
        if self.request_version not in ("HTTP/1.0", "HTTP/1.1"):
            # The standard library serves any 1.x as 1.1 and an explicit HTTP/0.9 without a status
            # line or headers, where a 404 could not be told from a 200.
            self.send_error(505)
            return False
        headers = self.headers
        if (
            lines.bare_cr
            or headers.defects
            or headers.get_payload()
            or any("\n" in v or "\0" in v for v in headers.values())
        ):
            # A line without a colon, a space before one, a folded line, a CR or a NUL inside one
            # (RFC 9110 5.5): a proxy in front may read these headers otherwise, so they cannot
            # frame the request for certain.
            self._refuse(400, "malformed header line")
            return False
        hosts = headers.get_all("Host", [])
        if len(hosts) > 1 or (self.request_version == "HTTP/1.1" and not hosts) or any(" " in h for h in hosts):
            # RFC 9112 3.2: exactly one Host, and one that is a host: which of two a proxy in front
            # routed by cannot be known.
            self._refuse(400, "an HTTP/1.1 request needs exactly one valid Host header")
            return False
        tokens = {token.strip().lower() for value in headers.get_all("Connection", []) for token in value.split(",")}
        if "close" in tokens:
            self.close_connection = True  # RFC 9112 9.6; the standard library took only a whole value of `close`
        return True

    def handle_expect_100(self) -> bool:
        """`Expect: 100-continue` with a body that will be refused: the refusal at once, rather than
        a `100 Continue` that asks the client to send a body only to be thrown away."""
        try:
            self._body_length()
        except _Refused as exc:
            self._refuse(exc.status, str(exc))
            return False
        return super().handle_expect_100()

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The errors BaseHTTPRequestHandler answers itself, as Status bodies in imgdex's words."""
        self.requestline = getattr(self, "_sent_line", None) or getattr(self, "requestline", "")
        if code == 414:
            message = f"request line over {MAX_LINE:,} bytes"
        elif code == 431:
            message = (
                # the standard library counts the blank line that ends them
                "100 header lines or more" if message == "Too many headers" else f"headers over {MAX_HEADERS:,} bytes"
            )
        elif code == 505:
            message = f"{shown(self.requestline.split()[-1])} is not supported: HTTP/1.0 and HTTP/1.1 are"
        elif code == 501:
            message = f"method {shown(self.command)} is not served by the read-only index"
        elif code == 400:
            message = f"malformed request line {shown(self.requestline)}"
        self._refuse(code, message or self.responses.get(code, ("error",))[0].lower())

    def _refuse(self, status: int, message: str) -> None:
        """An error found before the request reached the API. The connection is closed after it:
        what follows on it cannot be trusted to start a request."""
        self.close_connection = True
        if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":
            self.request_version = self.protocol_version  # else the answer goes without status line and headers
        self.requestline = getattr(self, "requestline", "")
        self.command = getattr(self, "command", None)
        self._respond(status, _dump({"code": _rpc_code(status), "message": message, "details": []}))

    def _respond(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if status == 401:
            self.send_header("WWW-Authenticate", "Bearer")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _body_length(self) -> int:
        """The length of the request's body, which no method here needs; _Refused when the headers
        do not frame it beyond doubt (RFC 9112 section 6), or it is over MAX_BODY."""
        if self.headers.get_all("Transfer-Encoding"):
            raise _Refused(501, "Transfer-Encoding is not supported on requests: no method here takes a body")
        lengths = self.headers.get_all("Content-Length") or []
        if len(lengths) > 1:
            raise _Refused(400, "more than one Content-Length header")
        if not lengths:
            return 0
        text = lengths[0].strip(" \t")
        if not re.fullmatch(r"[0-9]+", text):
            raise _Refused(400, f"invalid Content-Length {shown(text)}")
        if len(text) > 20 or int(text) > MAX_BODY:
            raise _Refused(413, f"request body over {MAX_BODY:,} bytes: no method here takes a body")
        return int(text)

    def _drain(self, length: int) -> bool:
        """Reads the body and drops it; False when the client hung up before its end."""
        while length:
            chunk = self.rfile.read(min(length, _DRAIN_CHUNK))
            if not chunk:
                return False
            length -= len(chunk)
        return True

    def _handle(self, method: str) -> None:
        server = self.server
        server.track(self.connection, busy=True)
        try:
            if server.stopping:
                self.close_connection = True
            try:
                length = self._body_length()
            except _Refused as exc:
                self._refuse(exc.status, str(exc))
                return
            if not self._drain(length):
                self.close_connection = True
                return
            try:
                if server.token is not None and not token_matches(self.headers.get("Authorization"), server.token):
                    raise Unauthenticated("missing or invalid bearer token (Authorization: Bearer TOKEN)")
                url = _target(self.path)
                if url.path == HEALTH_PATH and method == "GET":
                    # As gRPC's: SERVING once a completed index run is loaded, until shutdown begins.
                    serving = server.api.source.current is not None and not server.stopping
                    status, body = (200, b'{"status":"SERVING"}') if serving else (503, b'{"status":"NOT_SERVING"}')
                else:
                    with server.slots:
                        doc = route(server.api, method, url.path, _query(url.query))
                    status, body = 200, doc.encode() if isinstance(doc, str) else _dump(doc)
            except Exception as exc:  # every failure is a Status body
                st = status_of(exc)
                if st is INTERNAL:
                    traceback.print_exc(file=sys.stderr)
                status, body = st.http, _dump(error_body(exc))
            self._respond(status, body)
        finally:
            server.track(self.connection, busy=False)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def do_PUT(self) -> None:
        self._handle("PUT")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The default backlog of 5 refuses connections under a burst of new clients.
    request_queue_size = 128

    def __init__(
        self,
        address,
        api: Api,
        token: bytes | None,
        workers: int,
        max_connections: int | None = None,
        request_timeout: float = REQUEST_TIMEOUT,
    ):
        self.api = api
        self.token = token
        self.slots = threading.BoundedSemaphore(workers)
        self.stopping = False
        self.max_connections = max_connections or default_max_connections()
        self.request_timeout = request_timeout
        self._open = 0
        # connection -> (answering a request, since when it waits for a request or answers one)
        self._connections: dict[socket.socket, tuple[bool, float]] = {}
        self._lock = threading.Condition()
        self._closing = threading.Event()
        body = _dump(
            {
                "code": UNAVAILABLE.code,
                "message": f"too many connections (at most {self.max_connections}): try again later",
                "details": [],
            }
        )
        self._busy = (
            b"HTTP/1.1 503 Service Unavailable\r\nServer: imgdex\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
        )
        super().__init__(address, _Handler)
        threading.Thread(target=self._reap, name="imgdex-http-deadlines", daemon=True).start()

    def server_bind(self) -> None:
        if ":" in self.server_address[0]:
            self.address_family = socket.AF_INET6
            self.socket = socket.socket(self.address_family, self.socket_type)
        super().server_bind()

    def get_request(self):
        try:
            return super().get_request()
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                # The listening socket stays readable, so serve_forever would retry at once, at
                # full CPU, until a descriptor is freed.
                time.sleep(0.1)
            raise

    def process_request(self, request, client_address) -> None:
        with self._lock:
            full = self._open >= self.max_connections
            if not full:
                self._open += 1
        if full:
            self._turn_away(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._closed()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._closed()

    def _closed(self) -> None:
        with self._lock:
            self._open -= 1

    def _turn_away(self, request: socket.socket) -> None:
        """503 at once from the accepting thread, the request unread: waiting for it would take a
        thread, and a client that sends nothing would hold up the next ones."""
        try:
            request.setblocking(False)
            request.send(self._busy)  # a few hundred bytes into a new socket's empty buffer
        except OSError:
            pass
        self.shutdown_request(request)

    def handle_error(self, request, client_address) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return  # the client hung up or stalled: nothing went wrong here
        super().handle_error(request, client_address)

    def track(self, connection: socket.socket, busy: bool) -> None:
        with self._lock:
            self._connections[connection] = (busy, time.monotonic())
            self._lock.notify_all()

    def _reap(self) -> None:
        """Hang up connections whose request has not arrived whole, or whose answer has not been
        taken, within `request_timeout`: the wait for a request starts when the connection opens
        or its last answer is sent, so an idle keep-alive connection goes too, and a client that
        sends a byte now and then cannot hold one. Done here, from a clock, rather than with a
        socket timeout on every read and write, which cost a poll per call: a third of REST's
        throughput."""
        period = min(1.0, self.request_timeout / 4)
        while not self._closing.wait(period):
            expired = time.monotonic() - self.request_timeout
            with self._lock:
                late = [c for c, (_, since) in self._connections.items() if since < expired]
            for connection in late:
                try:
                    connection.shutdown(socket.SHUT_RDWR)  # the handler's blocked read or write ends
                except OSError:
                    pass

    def server_close(self) -> None:
        self._closing.set()
        super().server_close()

    def untrack(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.pop(connection, None)
            self._lock.notify_all()

    def drain(self, deadline: float) -> None:
        """Let running requests finish (until `deadline`), then hang up idle keep-alive connections."""
        self.stopping = True
        with self._lock:
            while any(busy for busy, _ in self._connections.values()) and time.monotonic() < deadline:
                self._lock.wait(max(0.0, min(0.05, deadline - time.monotonic())))
            idle = list(self._connections)
        for connection in idle:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class RestServer:
    def __init__(
        self,
        api: Api,
        host: str,
        port: int,
        workers: int,
        token: bytes | None,
        max_connections: int | None = None,
        request_timeout: float = REQUEST_TIMEOUT,
    ):
        self._server = _Server((host, port), api, token, workers, max_connections, request_timeout)
        self.port = self._server.server_address[1]
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name="imgdex-http", daemon=True
        )
        self._thread.start()

    def stop(self, grace: float) -> None:
        deadline = time.monotonic() + grace
        if self._thread is None:  # never started: nothing to wait for
            self._server.server_close()
            return
        self._server.shutdown()  # no new connections are accepted
        self._server.drain(deadline)
        self._server.server_close()
