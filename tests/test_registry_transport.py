"""docker:// at the HTTP level: bodies bounded whatever their framing says, answers http.client
cannot read, what a registry's error text may cost and show, and redirects to other hosts
(their challenges, their failures, their scheme).

Registries are `FakeRegistry` on 127.0.0.1, or `RawRegistry` below where an answer must be framed
as no HTTP server library would frame it. Memory is measured on an `imgdex index` child process.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import threading

import pytest

from builders import OCI_MANIFEST
from fake_engine import make_tls_files
from indexer.errors import SourceError
from registry_server import FakeRegistry, Reply, free_port, give_up, sha256
from test_badinput import assert_no_traceback, error_lines, run_measured
from test_registry_bad import crawl, image

JSON = {"Content-Type": "application/json"}
# Generous bounds for one crawl of a few repositories; a small run peaks near 150 MB here.
MAX_PEAK_RSS = 400 << 20
MAX_SECONDS = 60


@pytest.fixture
def elsewhere():
    """A second host, for redirects to point at."""
    server = FakeRegistry()
    yield server
    server.stop()


# ---------------------------------------------------------------- a registry of raw answers


def answer(status: int, body: bytes = b"", headers: dict | None = None) -> bytes:
    head = {"Content-Length": str(len(body)), "Connection": "close", **(headers or {})}
    lines = [f"HTTP/1.1 {status} X"] + [f"{key}: {value}" for key, value in head.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class RawRegistry:
    """One request per connection, answered with `routes[path]`: bytes sent as they are, or a
    callable(socket) that writes what it likes. Anything else is a 404. Writers stop when the
    client goes away or the server stops."""

    def __init__(self):
        self.routes: dict = {"/v2/": answer(200, b"{}", JSON)}
        self.stopping = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.host = f"127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def add_image(self, repo: str, manifest: bytes, configs: dict) -> None:
        self.routes[f"/v2/{repo}/tags/list"] = answer(200, json.dumps({"name": repo, "tags": ["v1"]}).encode(), JSON)
        served = answer(200, manifest, {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": sha256(manifest)})
        self.routes[f"/v2/{repo}/manifests/v1"] = self.routes[f"/v2/{repo}/manifests/{sha256(manifest)}"] = served
        for digest, data in configs.items():
            self.routes[f"/v2/{repo}/blobs/{digest}"] = answer(200, data)

    def catalog(self, repositories: list[str]) -> None:
        self.routes["/v2/_catalog"] = answer(200, json.dumps({"repositories": repositories}).encode(), JSON)

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as reader:
            try:
                if conn.recv(1, socket.MSG_PEEK) == b"\x16":
                    return  # the https probe: a TLS handshake holds no line to wait for
                request = reader.readline(65536).split()
                while reader.readline(65536) not in (b"\r\n", b"\n", b""):
                    pass
                if len(request) < 2:
                    return
                route = self.routes.get(request[1].decode("latin-1").split("?")[0], answer(404, b"{}", JSON))
                if callable(route):
                    route(conn, self.stopping)
                elif request[0] != b"HEAD":
                    conn.sendall(route)
                else:
                    conn.sendall(route.split(b"\r\n\r\n")[0] + b"\r\n\r\n")
            except OSError:
                pass  # the client went away: what it read was enough for it

    def stop(self) -> None:
        self.stopping.set()
        self.sock.close()


@pytest.fixture
def raw():
    server = RawRegistry()
    yield server
    server.stop()


def endless_chunks(head: bytes, megabytes: int):
    """A writer of `head`, then `megabytes` chunks of a MiB each, then the last chunk."""
    chunk = b"100000\r\n" + b"\0" * (1 << 20) + b"\r\n"

    def write(conn: socket.socket, stopping: threading.Event) -> None:
        conn.sendall(head)
        for _ in range(megabytes):
            if stopping.is_set():
                return
            conn.sendall(chunk)
        conn.sendall(b"0\r\n\r\n")

    return write


def raw_registry_with(raw: RawRegistry, hostile_manifest) -> None:
    """`a/good` served well, and `h/hostile` whose manifest is `hostile_manifest`."""
    manifest, configs, _ = image()
    raw.add_image("a/good", manifest, configs)
    raw.add_image("h/hostile", manifest, configs)
    raw.routes["/v2/h/hostile/manifests/v1"] = hostile_manifest
    raw.catalog(["a/good", "h/hostile"])


def measured_crawl(host: str, tmp_path, *extra: str):
    run = run_measured(["index", f"docker://{host}", "--store", str(tmp_path / "store"), *extra], timeout=MAX_SECONDS)
    assert run.code >= 0, f"killed by signal {-run.code}\n{run.stderr[-3000:]}"
    assert_no_traceback(run.stdout, run.stderr[-20000:])
    return run


# ---------------------------------------------------------------- bodies bounded whatever the headers say


def test_a_chunked_body_that_also_announces_a_small_length_is_read_only_to_the_limit(raw, tmp_path):
    # http.client ignores Content-Length for a chunked body: one read() of it took 6 GB for 3 GB sent
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    raw_registry_with(raw, endless_chunks(head, 600))

    run = measured_crawl(raw.host, tmp_path, "--jobs", "1")

    assert run.peak_rss < MAX_PEAK_RSS, f"peak RSS {run.peak_rss >> 20} MiB\n{run.stderr[-3000:]}"
    assert run.code == 1 and "indexed 1 images, 1 failed" in run.stdout, run.stdout + run.stderr[-3000:]
    [line] = error_lines(run.stderr)
    assert line.startswith(f"imgdex: {raw.host}/h/hostile:v1: GET manifest") and "over the 8388608-byte limit" in line


def test_an_engine_answer_chunked_despite_its_content_length_is_refused_at_the_limit():
    import http.client

    from indexer.sources.bodies import BodyTooLarge, read_capped

    server, client = socket.socketpair()
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
    write = endless_chunks(head, 8)

    def serve() -> None:
        try:
            write(server, threading.Event())
        except OSError:
            pass  # the reader stopped at its limit

    writer = threading.Thread(target=serve)
    writer.start()
    response = http.client.HTTPResponse(client)
    try:
        response.begin()
        with pytest.raises(BodyTooLarge):
            read_capped(response, 1 << 20)
    finally:
        response.close()
        client.close()
        writer.join(10)
        server.close()


@pytest.mark.parametrize("size", [b"ffffffffffffffff", b"-5"])
def test_a_chunk_size_past_int64_or_negative_is_one_error_and_the_rest_land(raw, size):
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    raw_registry_with(raw, head + size + b"\r\nabcde\r\n0\r\n\r\n")

    records, errors, _ = crawl(f"docker://{raw.host}", retries=0)

    assert [r.name for r in records] == ["a/good"]
    assert len(errors) == 1 and errors[0].startswith(f"{raw.host}/h/hostile:v1: GET manifest"), errors
    assert "cannot be sent" not in errors[0], errors  # nothing was wrong with the request
    assert size != b"-5" or errors[0].endswith("not valid HTTP (a chunk size is out of range)"), errors


# ---------------------------------------------------------------- interim answers


def three_repositories(fake, interim: tuple[int, ...]) -> None:
    """a/r0..a/r2 listed in the catalog, a/r1's manifest answered after the `interim` 1xx answers."""
    import dataclasses

    from test_registry_hardening import distinct_images

    tags, configs = distinct_images(3)
    for number, (tag, manifest) in enumerate(tags.items()):
        fake.add_image(f"a/r{number}", {tag: manifest}, configs, OCI_MANIFEST)
    fake.catalog([f"a/r{number}" for number in range(3)])
    path = "/v2/a/r1/manifests/t1"
    fake.routes[path] = dataclasses.replace(fake.routes[path], interim=interim)


@pytest.mark.parametrize("interim", [(103,), (102, 103), (100, 103, 199), (103,) * 5])
def test_interim_answers_before_the_real_one_are_read_past(fake, interim):
    """As Go's client does (http.client skips only 100): taken as the answer, a 103 Early Hints
    failed the image and left the real answer on the connection."""
    three_repositories(fake, interim)
    records, errors, _ = crawl(f"docker://{fake.host}", jobs=1)
    assert not errors and sorted(r.name for r in records) == ["a/r0", "a/r1", "a/r2"], errors


def test_more_than_five_interim_answers_fail_that_image_in_one_line(fake):
    three_repositories(fake, (103,) * 6)
    records, errors, _ = crawl(f"docker://{fake.host}", jobs=1)
    assert sorted(r.name for r in records) == ["a/r0", "a/r2"]
    assert len(errors) == 1 and "a/r1:t1" in errors[0], errors
    assert "the answer is not valid HTTP (more than 5 interim (1xx) answers)" in errors[0], errors


def test_a_switch_of_protocols_fails_that_image_and_its_connection_is_not_used_again(fake):
    three_repositories(fake, (101,))
    records, errors, _ = crawl(f"docker://{fake.host}", jobs=1)
    assert sorted(r.name for r in records) == ["a/r0", "a/r2"]
    assert len(errors) == 1 and errors[0].endswith("a/r1:t1: GET manifest t1: 101"), errors


# ---------------------------------------------------------------- a registry's error text


def test_a_long_error_message_is_quoted_cut_short(fake):
    manifest, configs, _ = image()
    fake.add_image("a/good", {"v1": manifest}, configs, OCI_MANIFEST)
    message = "no such repository " + "x" * 5000
    body = json.dumps({"errors": [{"code": "NAME_UNKNOWN", "message": message}]}).encode()
    fake.routes["/v2/b/gone/tags/list"] = Reply(404, body, JSON)
    fake.catalog(["a/good", "b/gone"])

    records, errors, _ = crawl(f"docker://{fake.host}")

    assert [r.name for r in records] == ["a/good"]
    assert len(errors) == 1 and "NAME_UNKNOWN: no such repository xxx" in errors[0], errors
    assert len(errors[0]) < 600 and errors[0].endswith("…"), errors[0][-100:]


def test_huge_error_answers_are_read_only_as_far_as_they_are_quoted(fake, tmp_path):
    manifest, configs, _ = image()
    fake.add_image("a/good", {"v1": manifest}, configs, OCI_MANIFEST)
    body = json.dumps({"errors": [{"code": "NAME_UNKNOWN", "message": "A" * (40 << 20)}]}).encode()
    names = [f"big/r{number}" for number in range(6)]
    for name in names:
        fake.routes[f"/v2/{name}/tags/list"] = Reply(404, body, JSON)
    fake.catalog(["a/good", *names])

    run = measured_crawl(fake.host, tmp_path, "--jobs", "1")

    assert run.peak_rss < MAX_PEAK_RSS, f"peak RSS {run.peak_rss >> 20} MiB\n{run.stderr[-3000:]}"
    assert "indexed 1 images, 6 failed" in run.stdout, run.stdout + run.stderr[-3000:]
    lines = error_lines(run.stderr)
    assert len(lines) == 6 and all("404" in line and len(line) < 600 for line in lines), [s[:300] for s in lines]


# ---------------------------------------------------------------- secrets a registry echoes

PASSWORD = 'pa"ss\\w0rd-S3cr3t'
TOKEN = "tok-S3cr3t-bearer-abc123"


def guard(fake: FakeRegistry, accepts, challenge: str) -> None:
    """Every route of `fake` so far answers 401 with `challenge` unless `accepts(Authorization)`."""
    refusal = Reply(
        401, b'{"errors":[{"code":"UNAUTHORIZED","message":"auth"}]}', {**JSON, "WWW-Authenticate": challenge}
    )
    for path, route in list(fake.routes.items()):

        def guarded(method, headers, route=route):
            if not accepts(headers.get("Authorization", "")):
                return refusal
            return route(method, headers) if callable(route) else route

        fake.routes[path] = guarded


def echo(status: int, template: str):
    """A route whose error message quotes the Authorization it got, and the password inside a Basic one."""

    def route(method, headers):
        sent = headers.get("Authorization", "")
        decoded = base64.b64decode(sent[6:]).decode() if sent.startswith("Basic ") else ""
        message = template.format(sent=sent, credential=sent.partition(" ")[2], decoded=decoded)
        return Reply(status, json.dumps({"errors": [{"code": "DENIED", "message": message}]}).encode(), JSON)

    return route


def test_credentials_a_basic_registry_echoes_are_never_shown(fake):
    manifest, configs, _ = image()
    fake.add_image("a/good", {"v1": manifest}, configs, OCI_MANIFEST)
    fake.add_image("e/echo", {"v1": manifest}, configs, OCI_MANIFEST)
    fake.routes["/v2/e/echo/manifests/v1"] = echo(403, "header {sent} (user and password {decoded}) denied")
    fake.catalog(["a/good", "e/echo"])
    basic = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    guard(fake, lambda sent: sent == f"Basic {basic}", 'Basic realm="r"')

    records, errors, _ = crawl(f"docker://{fake.host}", username="alice", password=PASSWORD)

    assert [r.name for r in records] == ["a/good"]
    assert len(errors) == 1 and "403" in errors[0] and "header Basic *** (user and password alice:***)" in errors[0]
    assert basic not in errors[0] and "S3cr3t" not in errors[0], errors


def test_tokens_a_bearer_registry_echoes_are_never_shown(fake):
    manifest, configs, _ = image()
    fake.add_image("a/good", {"v1": manifest}, configs, OCI_MANIFEST)
    fake.add_image("e/echo", {"v1": manifest}, configs, OCI_MANIFEST)
    fake.add_image("e/other", {"v1": manifest}, configs, OCI_MANIFEST)
    fake.routes["/v2/e/echo/manifests/v1"] = echo(404, "you sent: {sent}")
    fake.routes["/v2/e/other/manifests/v1"] = echo(403, "token {credential} is not valid for this")
    fake.catalog(["a/good", "e/echo", "e/other"])
    guard(fake, lambda sent: sent == f"Bearer {TOKEN}", f'Bearer realm="http://{fake.host}/token",service="reg"')
    fake.routes["/token"] = Reply(200, json.dumps({"token": TOKEN, "expires_in": 300}).encode(), JSON)

    records, errors, _ = crawl(f"docker://{fake.host}", username="alice", password=PASSWORD)

    assert [r.name for r in records] == ["a/good"]
    assert len(errors) == 2 and all(TOKEN not in e and "S3cr3t" not in e for e in errors), errors
    assert any("you sent: Bearer ***" in e for e in errors) and any("token *** is not" in e for e in errors), errors


# ---------------------------------------------------------------- redirects to other hosts


def redirect(to: str, status: int = 307) -> Reply:
    return Reply(status, b"", {"Location": to})


def test_a_challenge_from_a_redirect_target_is_not_answered_with_the_registry_s_credentials(fake, elsewhere):
    manifest, configs, _ = image()
    for name in ("a/first", "b/moved", "c/later"):
        fake.add_image(name, {"v1": manifest}, configs, OCI_MANIFEST)
    fake.routes["/v2/b/moved/manifests/v1"] = redirect(f"http://{elsewhere.host}/storage/{sha256(manifest)}")
    fake.catalog(["a/first", "b/moved", "c/later"])
    basic = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    guard(fake, lambda sent: sent == f"Basic {basic}", 'Basic realm="r"')
    token_asks = []
    elsewhere.routes["/token"] = lambda method, headers: (
        token_asks.append(headers) or Reply(200, b'{"token":"t"}', JSON)
    )
    challenge = f'Bearer realm="http://{elsewhere.host}/token",service="x"'
    elsewhere.routes[f"/storage/{sha256(manifest)}"] = Reply(401, b"{}", {**JSON, "WWW-Authenticate": challenge})

    records, errors, _ = crawl(f"docker://{fake.host}", username="alice", password=PASSWORD, jobs=1)

    assert not token_asks  # the redirect target's realm got neither the password nor a request
    assert sorted(r.name for r in records) == ["a/first", "c/later"]  # still basic auth after it
    assert len(errors) == 1 and errors[0].startswith(f"{fake.host}/b/moved:v1: GET manifest"), errors
    assert f"401 Unauthorized from {elsewhere.host}, where {fake.host} redirected the request" in errors[0]
    assert basic not in errors[0] and "S3cr3t" not in errors[0]


def test_failures_at_a_redirect_target_are_charged_to_that_host(fake):
    manifest, configs, _ = image()
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    moved = [f"a/moved{number}" for number in range(3)]
    healthy = [f"z/healthy{number:02d}" for number in range(12)]
    for name in moved + healthy:
        fake.add_image(name, {"v1": manifest}, configs, OCI_MANIFEST)
    for name in moved:
        fake.routes[f"/v2/{name}/manifests/v1"] = redirect(f"http://{dead}/blob", 302)
    fake.catalog(moved + healthy)

    records, errors, _ = crawl(f"docker://{fake.host}", jobs=2)

    assert sorted(r.name for r in records) == healthy
    assert len(errors) == len(moved) and all(f"(redirected to {dead})" in e for e in errors), errors
    assert not any(f"{fake.host} gave no answer" in e for e in errors), errors


def test_a_redirect_to_plain_http_is_followed_only_to_loopback_and_insecure_hosts(fake, elsewhere):
    manifest, configs, _ = image()
    far = "192.0.2.1:5000"  # TEST-NET-1: neither loopback nor listed as insecure
    fake.add_image("a/near", {"v1": manifest}, configs, OCI_MANIFEST)
    fake.add_image("b/far", {"v1": manifest}, configs, OCI_MANIFEST)
    elsewhere.add_image("a/near", {"v1": manifest}, configs, OCI_MANIFEST)
    fake.routes["/v2/a/near/manifests/v1"] = redirect(f"http://{elsewhere.host}/v2/a/near/manifests/v1", 302)
    fake.routes["/v2/b/far/manifests/v1"] = redirect(f"http://{far}/m/{sha256(manifest)}", 302)
    fake.catalog(["a/near", "b/far"])

    records, errors, _ = crawl(f"docker://{fake.host}")

    assert [r.name for r in records] == ["a/near"]
    assert len(errors) == 1 and f"refusing to follow a redirect to plain HTTP at {far}" in errors[0], errors
    assert errors[0].startswith(f"{fake.host}/b/far:v1: GET manifest"), errors


def test_a_redirect_to_plain_http_at_an_insecure_host_is_followed(fake):
    manifest, configs, _ = image()
    fake.add_image("b/far", {"v1": manifest}, configs, OCI_MANIFEST)
    fake.routes["/v2/b/far/manifests/v1"] = redirect(f"http://192.0.2.1:5000/m/{sha256(manifest)}", 302)
    fake.catalog(["b/far"])

    _, errors, _ = crawl(f"docker://{fake.host}", retries=0, timeout=0.5, insecure_registries=("192.0.2.0/24",))

    # asked, and met nothing there: TEST-NET-1 addresses answer no one
    assert len(errors) == 1 and "(redirected to 192.0.2.1:5000)" in errors[0], errors
    assert "refusing" not in errors[0], errors


# ---------------------------------------------------------------- CAs


def serve_tls(server: FakeRegistry, files: dict) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(files["server_cert"], files["server_key"])
    server.httpd.socket = context.wrap_socket(server.httpd.socket, server_side=True)


def served_with_a_ca_of_its_own(server: FakeRegistry, tmp_path) -> dict:
    """`server` over TLS with a certificate of a new CA (which no system trusts); its files."""
    try:
        files = make_tls_files(str(tmp_path / "tls"))
    except FileNotFoundError as exc:
        give_up(str(exc))
    serve_tls(server, files)
    return files


def test_a_ca_cert_is_added_to_the_system_s_so_a_public_host_a_registry_redirects_to_is_trusted(
    fake, elsewhere, tmp_path, monkeypatch
):
    try:
        own, public = make_tls_files(str(tmp_path / "own")), make_tls_files(str(tmp_path / "public"))
    except FileNotFoundError as exc:
        give_up(str(exc))
    serve_tls(fake, own)  # a registry with a CA of its own, given with --ca-cert
    serve_tls(elsewhere, public)  # its blob store, with a certificate the system trusts
    monkeypatch.setenv("SSL_CERT_FILE", public["ca"])
    manifest, configs, _ = image()
    fake.add_image("a/app", {"v1": manifest}, {}, OCI_MANIFEST)
    for digest, data in configs.items():
        elsewhere.routes[f"/storage/{digest}"] = Reply(200, data, {"Content-Type": "application/octet-stream"})
        fake.routes[f"/v2/a/app/blobs/{digest}"] = redirect(f"https://{elsewhere.host}/storage/{digest}")

    records, errors, _ = crawl(f"docker://{fake.host}/a/app", ca_cert=own["ca"])

    assert not errors and [r.name for r in records] == ["a/app"], errors
    assert elsewhere.hits == {f"/storage/{digest}": 1 for digest in configs}


def test_every_ca_of_a_certs_d_folder_is_trusted(fake, tmp_path):
    try:
        old, new = make_tls_files(str(tmp_path / "old")), make_tls_files(str(tmp_path / "new"))
    except FileNotFoundError as exc:
        give_up(str(exc))
    serve_tls(fake, new)  # a registry whose certificate the second CA of its folder signed
    folder = tmp_path / "certs.d" / fake.host
    folder.mkdir(parents=True)
    for name, files in (("a-old.crt", old), ("b-new.crt", new)):
        (folder / name).write_bytes(open(files["ca"], "rb").read())
    manifest, configs, _ = image()
    fake.add_image("a/app", {"v1": manifest}, configs, OCI_MANIFEST)

    records, errors, _ = crawl(f"docker://{fake.host}/a/app", certs_dirs=(str(tmp_path / "certs.d"),))

    assert not errors and [r.name for r in records] == ["a/app"], errors


def test_a_registry_registries_conf_calls_insecure_is_crawled_without_verifying_its_certificate(fake, tmp_path):
    """`insecure = true` in registries.conf is --insecure-registry for that host, as skopeo takes it."""
    served_with_a_ca_of_its_own(fake, tmp_path)
    manifest, configs, _ = image()
    fake.add_image("a/app", {"v1": manifest}, configs, OCI_MANIFEST)
    conf = tmp_path / "registries.conf"
    conf.write_text(f'[[registry]]\nlocation = "{fake.host}/a"\ninsecure = true\n')

    records, errors, _ = crawl(f"docker://{fake.host}/a/app", registries_conf=str(conf))
    assert not errors and [r.name for r in records] == ["a/app"], errors

    # the entry is for the a/ namespace: another repository of the host is verified
    fake.add_image("b/app", {"v1": manifest}, configs, OCI_MANIFEST)
    with pytest.raises(SourceError) as caught:
        crawl(f"docker://{fake.host}/b/app", registries_conf=str(conf))
    assert "certificate verify failed" in str(caught.value)


def test_a_redirect_to_a_port_past_65535_fails_at_once(fake):
    # urllib3 failed to parse it on every attempt: four tries with backoff, then `Failed to parse`.
    manifest, configs, _ = image()
    fake.add_image("app", {"v1": manifest}, configs, OCI_MANIFEST)
    fake.routes["/v2/app/manifests/v1"] = redirect("http://127.0.0.1:99999/m")
    records, errors, _ = crawl(f"docker://{fake.host}/app:v1", retries=3, backoff=1.0)
    assert records == [] and fake.hits["/v2/app/manifests/v1"] == 1
    assert errors == [
        f"{fake.host}/app:v1: GET manifest: the redirect Location 'http://127.0.0.1:99999/m' is not a valid URL"
    ]


@pytest.mark.parametrize("damage", ["fifo ca", "huge ca", "fifo cert"])
def test_a_tls_file_of_certs_d_that_cannot_be_read_is_one_error_not_a_hang(fake, tmp_path, damage):
    """OpenSSL opens TLS files by name: a FIFO there blocked the crawl for ever (the open waits for
    a writer) before they were read or checked first."""
    from indexer.sources.tlsfiles import MAX_TLS_FILE_BYTES

    files = served_with_a_ca_of_its_own(fake, tmp_path)
    folder = tmp_path / "certs.d" / fake.host
    folder.mkdir(parents=True)
    ca = folder / "a.crt"
    if damage == "fifo ca":
        os.mkfifo(ca)  # no one writes it: read as a pipe, it is empty
        reason = f"{ca}: the CA file cannot be used ("
    elif damage == "huge ca":
        with open(ca, "wb") as f:
            f.truncate(MAX_TLS_FILE_BYTES + 1)
        reason = f"{ca}: CA file is over the {MAX_TLS_FILE_BYTES}-byte limit"
    else:
        ca.write_bytes(open(files["ca"], "rb").read())
        os.mkfifo(folder / "client.cert")
        (folder / "client.key").write_text("not read")
        reason = f"{folder / 'client.cert'}: client certificate is not a regular file (named pipe)"
    manifest, configs, _ = image()
    fake.add_image("a/app", {"v1": manifest}, configs, OCI_MANIFEST)
    with pytest.raises(SourceError) as raised:
        crawl(f"docker://{fake.host}/a/app", certs_dirs=(str(tmp_path / "certs.d"),))
    assert reason in str(raised.value) and "\n" not in str(raised.value)
    assert not fake.hits  # refused before any request


def test_a_ca_cert_given_through_a_pipe_is_read_as_it_is_written(fake, tmp_path):
    """`--ca-cert <(vault read …)`: the shell hands a pipe, which is read, not refused."""
    files = served_with_a_ca_of_its_own(fake, tmp_path)
    manifest, configs, _ = image()
    fake.add_image("a/app", {"v1": manifest}, configs, OCI_MANIFEST)
    read_end, write_end = os.pipe()
    with open(files["ca"], "rb") as f:
        os.write(write_end, f.read())  # a CA is far below a pipe's buffer
    os.close(write_end)
    try:
        records, errors, _ = crawl(f"docker://{fake.host}/a/app", ca_cert=f"/dev/fd/{read_end}")
    finally:
        os.close(read_end)
    assert not errors and [r.name for r in records] == ["a/app"], errors


def test_a_cert_dir_is_every_host_s_folder_instead_of_certs_d(fake, tmp_path, run_cli):
    """skopeo's --cert-dir: the CAs lie in the folder itself, and the host's certs.d folder (here one
    with a FIFO that would hold the crawl) is not read."""
    files = served_with_a_ca_of_its_own(fake, tmp_path)
    certs_d = tmp_path / "certs.d" / fake.host
    certs_d.mkdir(parents=True)
    os.mkfifo(certs_d / "a.crt")
    cert_dir = tmp_path / "mine"
    cert_dir.mkdir()
    (cert_dir / "ca.crt").write_bytes(open(files["ca"], "rb").read())
    manifest, configs, _ = image()
    fake.add_image("a/app", {"v1": manifest}, configs, OCI_MANIFEST)

    records, errors, _ = crawl(
        f"docker://{fake.host}/a/app", certs_dirs=(str(tmp_path / "certs.d"),), cert_dir=str(cert_dir)
    )
    assert not errors and [r.name for r in records] == ["a/app"], errors

    # the same from the command line; without the folder the registry's certificate is not trusted
    result = run_cli("index", f"docker://{fake.host}/a/app", "--store", tmp_path / "s", "--cert-dir", cert_dir)
    assert result.exit_code == 0, result.output
    result = run_cli("index", f"docker://{fake.host}/a/app", "--store", tmp_path / "t")
    assert result.exit_code == 1 and "certificate verify failed" in result.output


@pytest.mark.parametrize(
    "flag, verified",
    [("--tls-verify=false", False), ("--tls-verify=0", False), ("--tls-verify=true", True), ("--no-tls-verify", False)],
)
def test_skopeo_s_tls_verify_with_a_value_is_taken(fake, tmp_path, run_cli, flag, verified):
    served_with_a_ca_of_its_own(fake, tmp_path)
    manifest, configs, _ = image()
    fake.add_image("a/app", {"v1": manifest}, configs, OCI_MANIFEST)
    result = run_cli("index", f"docker://{fake.host}/a/app", flag, "--store", tmp_path / "s")
    if verified:
        assert result.exit_code == 1 and "certificate verify failed" in result.output
    else:
        assert result.exit_code == 0, result.output


def test_a_tls_verify_value_that_is_no_boolean_is_a_usage_error(run_cli, tmp_path):
    result = run_cli("index", "docker://127.0.0.1:1/a/app", "--tls-verify=maybe", "--store", tmp_path)
    assert result.exit_code == 2
    assert "Invalid value for '--tls-verify': 'maybe' is not a boolean" in result.output
