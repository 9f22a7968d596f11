"""docker-daemon: against a real engine and a real registry, started privately (see services.py).

The images are made by the engine itself: `docker import` of a tiny rootfs, a legacy build
with LABEL/COPY/ENV steps, tags into several repositories, a push to the registry and
`docker rmi` plus pull so that RepoDigests is set. The expected Image.Get documents are built
from the docker client's own inspect and from the sizes of the files put into each layer
(the engine's layer size is the size of the file contents it stores), never from imgdex.
What the registry serves for the same image must agree with what the engine gave.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time

import pytest

from indexer.references import blob_id, image_id, parse_reference
from indexer.timestamps import normalise

from services import engine, registry, services_folder  # noqa: F401  (session fixtures)

pytestmark = pytest.mark.services

# The console script of the interpreter running the tests, never another `imgdex` on PATH.
_SCRIPT = os.path.join(os.path.dirname(sys.executable), "imgdex")
IMGDEX = [_SCRIPT] if os.access(_SCRIPT, os.X_OK) else [sys.executable, "-m", "queries.cli"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.index.v1+json",
    ]
)

BASE_FILES = {
    "hello": b"hello from the imgdex live base image\n",
    "etc/imgdex-release": b"NAME=imgdex-live-base\nVERSION=1.0\n",
}
APP_CONF = b"mode=test\nlisten=127.0.0.1:8080\n"
RUN_SH = b"#!/bin/sh\necho imgdex live app\n"
LOOSE_FILES = {"loose": b"an untagged import\n"}


def imgdex(*args, env=None, check=True) -> subprocess.CompletedProcess:
    result = subprocess.run([*IMGDEX, *map(str, args)], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def get(store: str, query: str) -> dict:
    return json.loads(imgdex("get", query, "--store", store).stdout)


def listing(store: str) -> list[dict]:
    return json.loads(imgdex("list", "--store", store, "--page-size", "1000").stdout).get("images", [])


def make_rootfs_tar(folder: str, files: dict[str, bytes], name: str) -> str:
    path = os.path.join(folder, name)
    with tarfile.open(path, "w") as tar:
        for member, data in sorted(files.items()):
            parts = member.split("/")
            for depth in range(1, len(parts)):
                info = tarfile.TarInfo("/".join(parts[:depth]))
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1700000000
                if info.name not in tar.getnames():
                    tar.addfile(info)
            info = tarfile.TarInfo(member)
            info.size, info.mode, info.mtime = len(data), 0o755, 1700000000
            tar.addfile(info, io.BytesIO(data))
    return path


class RegistryClient:
    def __init__(self, address: str):
        import requests

        self.base = f"http://{address}/v2"
        self.http = requests.Session()
        self.http.trust_env = False

    def manifest(self, name: str, reference: str) -> tuple[str, dict, bytes]:
        response = self.http.get(
            f"{self.base}/{name}/manifests/{reference}", headers={"Accept": MANIFEST_TYPES}, timeout=30
        )
        response.raise_for_status()
        digest = "sha256:" + hashlib.sha256(response.content).hexdigest()
        assert response.headers["Docker-Content-Digest"] == digest
        return digest, response.json(), response.content

    def blob(self, name: str, digest: str) -> bytes:
        response = self.http.get(f"{self.base}/{name}/blobs/{digest}", timeout=30)
        response.raise_for_status()
        assert "sha256:" + hashlib.sha256(response.content).hexdigest() == digest
        return response.content

    def tags(self, name: str) -> list[str]:
        response = self.http.get(f"{self.base}/{name}/tags/list", timeout=30)
        response.raise_for_status()
        return sorted(response.json()["tags"])


def docker_inspect(engine, ref: str) -> dict:  # noqa: F811
    return json.loads(engine.docker("image", "inspect", ref))[0]


@pytest.fixture(scope="module")
def world(engine, registry, tmp_path_factory):  # noqa: F811
    """The images, made once by the engine; returns what the docker client says of them."""
    work = str(tmp_path_factory.mktemp("daemon-live"))
    reg = registry.address
    base_tar = make_rootfs_tar(work, BASE_FILES, "base.tar")
    engine.docker(
        "import",
        "-m",
        "imgdex live base",
        "-c",
        "ENV FOO=bar",
        "-c",
        'CMD ["/hello"]',
        base_tar,
        "imgdex-live/base:1.0",
    )

    app_dir = os.path.join(work, "app")
    os.makedirs(app_dir)
    with open(os.path.join(app_dir, "app.conf"), "wb") as f:
        f.write(APP_CONF)
    with open(os.path.join(app_dir, "run.sh"), "wb") as f:
        f.write(RUN_SH)
    with open(os.path.join(app_dir, "Dockerfile"), "w") as f:
        f.write(
            "FROM imgdex-live/base:1.0\n"
            'LABEL org.opencontainers.image.title="imgdex live app" org.opencontainers.image.version="1.0"\n'
            "COPY app.conf /etc/app.conf\n"
            "ENV APP_MODE=test\n"
            "COPY run.sh /usr/local/bin/run.sh\n"
        )
    engine.docker("build", "--no-cache", "-t", "imgdex-live/app:1.0", "-t", "imgdex-live/app:latest", app_dir)
    engine.docker("tag", "imgdex-live/app:1.0", "example.org/mirror/app:v1")

    # A push, then the pushed references removed and pulled back: RepoDigests comes from the pull.
    engine.docker("tag", "imgdex-live/app:1.0", f"{reg}/team/app:v1")
    engine.docker("push", f"{reg}/team/app:v1")
    engine.docker("rmi", f"{reg}/team/app:v1")  # the repository's last tag: its digest reference goes too
    assert not [d for d in docker_inspect(engine, "imgdex-live/app:1.0")["RepoDigests"] if d.startswith(reg)]
    engine.docker("pull", f"{reg}/team/app:v1")

    # The same image as an OCI manifest in the registry (skopeo converts it), pulled as its own engine image.
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        reason = "skopeo is needed to make an OCI copy in the registry"
        pytest.fail(reason) if os.environ.get("CI") else pytest.skip("skopeo missing")
    subprocess.run(
        [
            skopeo,
            "--insecure-policy",
            "copy",
            "-q",
            "--format",
            "oci",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            f"docker://{reg}/team/app:v1",
            f"docker://{reg}/team/app-oci:v1",
        ],
        check=True,
        capture_output=True,
        timeout=300,
        env=engine.env,
    )
    engine.docker("pull", f"{reg}/team/app-oci:v1")

    # An untagged image.
    loose_tar = make_rootfs_tar(work, LOOSE_FILES, "loose.tar")
    loose_id = engine.docker("import", "-c", "ENV LOOSE=1", loose_tar).strip()

    refs = {
        "base": "imgdex-live/base:1.0",
        "app": "imgdex-live/app:1.0",
        "pulled": f"{reg}/team/app:v1",
        "oci": f"{reg}/team/app-oci:v1",
        "loose": loose_id,
    }
    return {
        "work": work,
        "registry": reg,
        "skopeo": skopeo,
        "inspect": {key: docker_inspect(engine, ref) for key, ref in refs.items()},
        "sizes": {
            "base": [sum(len(d) for d in BASE_FILES.values())],
            "app": [sum(len(d) for d in BASE_FILES.values()), len(APP_CONF), len(RUN_SH)],
            "loose": [sum(len(d) for d in LOOSE_FILES.values())],
        },
        "top_ids": set(engine.docker("images", "-q", "--no-trunc").split()),
        "all_ids": set(engine.docker("images", "-a", "-q", "--no-trunc").split()),
    }


@pytest.fixture(scope="module")
def store(engine, world, tmp_path_factory):  # noqa: F811
    """The whole engine indexed once through the CLI."""
    folder = str(tmp_path_factory.mktemp("daemon-store"))
    result = imgdex("index", "docker-daemon:", "--docker-host", engine.host, "--store", folder)
    assert result.stdout.startswith("indexed ") and " 0 failed" in result.stdout
    return folder


def expected(inspect: dict, registry: str, name: str, sizes: list[int]) -> dict:  # noqa: F811
    """The Image.Get document of one engine image in one repository, from the docker client's facts."""

    def here(text: str) -> bool:
        ref = parse_reference(text)
        return (ref.registry, ref.name) == (registry, name)

    tags = sorted(parse_reference(t).tag for t in inspect["RepoTags"] if here(t))
    digests = [parse_reference(d).digest for d in inspect["RepoDigests"] if here(d)]
    digest = digests[0] if digests else ""
    layers = inspect["RootFS"]["Layers"]
    assert len(layers) == len(sizes)
    out = {"id": image_id(registry, name, digest or inspect["Id"])}
    if name:
        out["name"] = name
    if digest:
        out["digest"] = digest
    out["compressedSize"] = str(sum(sizes))
    out["config"] = {"id": blob_id(inspect["Id"]), "digest": inspect["Id"]}  # the engine cannot tell the config size
    out["layers"] = [{"id": blob_id(d), "digest": d, "size": str(s)} for d, s in zip(layers, sizes, strict=True)]
    if tags:
        out["tags"] = tags
    out["createdAt"] = normalise(inspect["Created"])
    return out


# ----------------------------------------------------------------------------- exact documents


def test_imported_image_gives_the_exact_document(store, world):
    inspect = world["inspect"]["base"]
    assert "FOO=bar" in inspect["Config"]["Env"]  # the import's -c ENV reached the config
    want = expected(inspect, "docker.io", "imgdex-live/base", world["sizes"]["base"])
    assert get(store, "imgdex-live/base:1.0") == want


def test_built_image_gives_one_exact_document_per_repository(store, world):
    inspect = world["inspect"]["app"]
    assert inspect["Config"]["Labels"]["org.opencontainers.image.title"] == "imgdex live app"
    assert get(store, "imgdex-live/app:latest") == expected(
        inspect, "docker.io", "imgdex-live/app", world["sizes"]["app"]
    )
    assert get(store, "example.org/mirror/app:v1") == expected(
        inspect, "example.org", "mirror/app", world["sizes"]["app"]
    )
    pulled = get(store, f"{world['registry']}/team/app:v1")
    assert pulled == expected(world["inspect"]["pulled"], world["registry"], "team/app", world["sizes"]["app"])
    assert pulled["digest"]  # from RepoDigests, set by the pull
    assert world["inspect"]["pulled"]["Id"] == inspect["Id"]  # one engine image, three resources


def test_oci_pulled_image_gives_the_exact_document(store, world):
    inspect = world["inspect"]["oci"]
    want = expected(inspect, world["registry"], "team/app-oci", world["sizes"]["app"])
    assert get(store, f"{world['registry']}/team/app-oci:v1") == want


def test_untagged_image_has_no_name(store, world):
    inspect = world["inspect"]["loose"]
    want = expected(inspect, "", "", world["sizes"]["loose"])
    assert get(store, want["id"]) == want


def test_every_repository_of_the_engine_is_one_resource(store, world):
    rows = listing(store)
    ids = [row["id"] for row in rows]
    assert len(ids) == len(set(ids))
    names = sorted(row.get("name", "") for row in rows)
    assert names == sorted(["", "imgdex-live/base", "imgdex-live/app", "mirror/app", "team/app", "team/app-oci"])


# ----------------------------------------------------------------------------- what the registry serves


@pytest.mark.parametrize("key, name", [("pulled", "team/app"), ("oci", "team/app-oci")])
def test_engine_record_agrees_with_the_registry(store, world, key, name):
    client = RegistryClient(world["registry"])
    digest, manifest, _ = client.manifest(name, "v1")
    config = json.loads(client.blob(name, manifest["config"]["digest"]))
    row = get(store, f"{world['registry']}/{name}:v1")
    assert row["digest"] == digest
    assert row["config"]["digest"] == manifest["config"]["digest"] == world["inspect"][key]["Id"]
    assert row["tags"] == client.tags(name)
    assert row["createdAt"] == normalise(config["created"])
    assert [layer["digest"] for layer in row["layers"]] == config["rootfs"]["diff_ids"]


def test_engine_then_oci_archive_is_one_resource_and_the_exact_record_wins(engine, world, tmp_path):  # noqa: F811
    reg = world["registry"]
    archive = str(tmp_path / "app-oci.tar")
    subprocess.run(
        [
            world["skopeo"],
            "--insecure-policy",
            "copy",
            "-q",
            "--src-tls-verify=false",
            f"docker://{reg}/team/app-oci:v1",
            f"oci-archive:{archive}:{reg}/team/app-oci:v1",
        ],
        check=True,
        capture_output=True,
        timeout=300,
        env=engine.env,
    )
    folder = str(tmp_path / "store")
    imgdex("index", "docker-daemon:", "--docker-host", engine.host, "--store", folder)
    before = get(folder, f"{reg}/team/app-oci:v1")
    imgdex("index", f"oci-archive:{archive}", "--store", folder)
    after = get(folder, f"{reg}/team/app-oci:v1")

    digest, manifest, _ = RegistryClient(reg).manifest("team/app-oci", "v1")
    assert before["id"] == after["id"] and after["digest"] == digest
    assert [row for row in listing(folder) if row.get("name") == "team/app-oci"] == [after]
    config = manifest["config"]
    assert after["config"] == {"id": blob_id(config["digest"]), "digest": config["digest"], "size": str(config["size"])}
    assert [(layer["digest"], int(layer["size"])) for layer in after["layers"]] == [
        (layer["digest"], layer["size"]) for layer in manifest["layers"]
    ]
    assert after["compressedSize"] == str(sum(layer["size"] for layer in manifest["layers"]))
    assert after["tags"] == ["v1"] and after["createdAt"] == before["createdAt"]
    # Indexing the engine again does not bring the uncompressed record back.
    imgdex("index", "docker-daemon:", "--docker-host", engine.host, "--store", folder)
    assert get(folder, f"{reg}/team/app-oci:v1") == after


def test_save_and_engine_merged_keep_the_configs_history_times(engine, world, tmp_path):  # noqa: F811
    """The engine's API gives history times in whole seconds; a docker save of the same image
    (exactness 1 both, one id: no RepoDigests in docker.io) has the config's exact times, and the
    merged record keeps those, whichever source came first."""
    archive = str(tmp_path / "app.tar")
    engine.docker("save", "-o", archive, "imgdex-live/app:1.0")
    with tarfile.open(archive) as tar:
        [entry] = json.load(tar.extractfile("manifest.json"))
        config = json.load(tar.extractfile(entry["Config"]))
    exact = [h["created"] for h in config["history"]]
    sources = {"save": f"docker-archive:{archive}", "engine": "docker-daemon:imgdex-live/app:1.0"}

    def times(folder: str) -> list[list[str]]:
        sql = "SELECT [h.created FOR h IN history] AS t FROM images WHERE name = 'imgdex-live/app'"
        out = imgdex("sql", sql, "--store", folder, "--format", "json").stdout
        return [json.loads(line)["t"] for line in out.splitlines()]

    imgdex("index", sources["engine"], "--docker-host", engine.host, "--store", tmp_path / "engine")
    [alone] = times(str(tmp_path / "engine"))
    assert alone != exact and [t[:19] for t in alone] == [t[:19] for t in exact]  # cut to the second
    for order in (["save", "engine"], ["engine", "save"]):
        folder = str(tmp_path / "-".join(order))
        for key in order:
            imgdex("index", sources[key], "--docker-host", engine.host, "--store", folder)
        assert times(folder) == [exact], order


# ----------------------------------------------------------------------------- selection and options


def test_all_adds_the_intermediate_images(engine, world, tmp_path):  # noqa: F811
    def config_digests(folder):
        return {row["config"]["digest"] for row in listing(folder)}

    imgdex("index", "docker-daemon:", "--docker-host", engine.host, "--store", tmp_path / "top")
    imgdex("index", "docker-daemon:", "--all", "--docker-host", engine.host, "--store", tmp_path / "all")
    assert config_digests(str(tmp_path / "top")) == world["top_ids"]
    assert config_digests(str(tmp_path / "all")) == world["all_ids"]
    assert world["all_ids"] > world["top_ids"]  # the legacy builder kept its intermediate images


def test_ref_by_name_and_by_id(engine, world, tmp_path):  # noqa: F811
    app = world["inspect"]["app"]
    imgdex("index", "docker-daemon:imgdex-live/app:1.0", "--docker-host", engine.host, "--store", tmp_path / "name")
    assert [row.get("name") for row in listing(str(tmp_path / "name"))] == ["imgdex-live/app"]
    short = app["Id"].removeprefix("sha256:")[:12]
    imgdex("index", f"docker-daemon:{short}", "--docker-host", engine.host, "--store", tmp_path / "id")
    names = sorted(row.get("name") for row in listing(str(tmp_path / "id")))
    assert names == ["imgdex-live/app", "mirror/app", "team/app"]
    missing = imgdex(
        "index",
        "docker-daemon:imgdex-live/nope:1",
        "--docker-host",
        engine.host,
        "--store",
        tmp_path / "x",
        check=False,
    )
    assert missing.returncode == 1
    assert missing.stderr.splitlines() == [
        f"imgdex: docker-daemon:imgdex-live/nope:1: the Docker engine at {engine.host}"
        " has no image 'imgdex-live/nope:1'"
    ]


def test_tags_removed_with_docker_rmi_are_retired_on_the_next_run(engine, world, tmp_path):  # noqa: F811
    gone_tar = make_rootfs_tar(str(tmp_path), {"gone": b"removed before the next run\n"}, "gone.tar")
    engine.docker("tag", "imgdex-live/base:1.0", "imgdex-live/extra:tmp")
    gone_id = engine.docker("import", gone_tar, "imgdex-live/gone:1").strip()
    store = tmp_path / "store"
    try:
        imgdex("index", "docker-daemon:", "--docker-host", engine.host, "--store", store)
        tags = {row.get("name", ""): row.get("tags", []) for row in listing(str(store))}
        assert tags["imgdex-live/extra"] == ["tmp"] and tags["imgdex-live/gone"] == ["1"]
    finally:
        # the second removes the image: the engine's image list is again as `world` saw it
        engine.docker("rmi", "imgdex-live/extra:tmp", "imgdex-live/gone:1")
    assert gone_id not in engine.docker("images", "-q", "--no-trunc")
    again = imgdex("index", "docker-daemon:", "--docker-host", engine.host, "--store", store)
    assert again.stderr.splitlines() == [
        "imgdex: note: docker-daemon: removed 2 tags it no longer holds "
        "(docker.io/imgdex-live/extra:tmp, docker.io/imgdex-live/gone:1)"
    ]
    rows = listing(str(store))
    tags = {row.get("name", ""): row.get("tags", []) for row in rows}
    # The images stay, untagged, as after a registry re-crawl; the engine's other tags are kept.
    assert tags["imgdex-live/extra"] == [] and tags["imgdex-live/gone"] == []
    assert tags["imgdex-live/base"] == ["1.0"] and tags["imgdex-live/app"] == ["1.0", "latest"]
    gone = next(row for row in rows if row.get("name") == "imgdex-live/gone")
    assert gone["config"]["digest"] == gone_id


def test_engine_found_through_docker_host(engine, world, tmp_path):  # noqa: F811
    env = dict(os.environ, DOCKER_HOST=engine.host)
    imgdex("index", "docker-daemon:imgdex-live/base:1.0", "--store", tmp_path, env=env)
    assert get(str(tmp_path), "imgdex-live/base:1.0")["config"]["digest"] == world["inspect"]["base"]["Id"]


class _Relay:
    """127.0.0.1:PORT relayed to the engine's unix socket, over TLS when given a server context.

    The engine is then reached as `dockerd -H tcp://... [--tlsverify]` serves it, with the test
    engine started as every other test starts it.
    """

    def __init__(self, socket_path: str, tls=None):
        import socket
        import threading

        self._socket_path = socket_path
        self._tls = tls
        self._open = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        import threading

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client):
        import socket
        import threading

        try:
            if self._tls is not None:
                client = self._tls.wrap_socket(client, server_side=True)
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(self._socket_path)
        except OSError:
            client.close()
            return
        self._open += [client, upstream]
        threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()
        self._pump(client, upstream)

    @staticmethod
    def _pump(source, target):
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                target.sendall(data)
        except OSError:
            pass
        for sock in (source, target):
            try:
                sock.close()
            except OSError:
                pass

    def stop(self):
        self.listener.close()
        for sock in self._open:
            try:
                sock.close()
            except OSError:
                pass


def _checking_client_certificates(tmp_path):
    """(a server TLS context that requires a client certificate, the folder of the client's
    ca.pem, cert.pem and key.pem), as an engine started with --tlsverify checks them."""
    import ssl

    from fake_engine import make_tls_files

    try:
        files = make_tls_files(str(tmp_path / "tls"))
    except FileNotFoundError as exc:
        pytest.fail(str(exc)) if os.environ.get("CI") else pytest.skip(str(exc))
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(files["server_cert"], files["server_key"])
    tls.verify_mode = ssl.CERT_REQUIRED
    tls.load_verify_locations(files["ca"])
    return tls, files["client"]


@pytest.mark.parametrize("secure", [False, True], ids=["tcp", "tls"])
def test_engine_over_tcp_and_tls_found_through_the_environment(engine, store, tmp_path, secure):  # noqa: F811
    """DOCKER_HOST=tcp://..., and DOCKER_TLS_VERIFY with DOCKER_CERT_PATH for an engine checking client certificates."""
    env = {key: value for key, value in os.environ.items() if key not in ("DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH")}
    tls = None
    if secure:
        tls, client = _checking_client_certificates(tmp_path)
        env.update(DOCKER_TLS_VERIFY="1", DOCKER_CERT_PATH=client)
    relay = _Relay(engine.socket_path, tls)
    try:
        env["DOCKER_HOST"] = f"tcp://127.0.0.1:{relay.port}"
        imgdex("index", "docker-daemon:", "--store", tmp_path / "store", env=env)
        assert listing(str(tmp_path / "store")) == listing(store)
        if secure:
            plain = {key: value for key, value in env.items() if key not in ("DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH")}
            result = imgdex("index", "docker-daemon:", "--store", tmp_path / "plain", env=plain, check=False)
            assert result.returncode == 1 and len(result.stderr.splitlines()) == 1
            assert result.stderr.startswith(
                f"imgdex: docker-daemon: cannot reach the Docker engine at {env['DOCKER_HOST']}: "
            )
    finally:
        relay.stop()


@pytest.mark.parametrize("kind", ["unix", "tls"])
def test_engine_found_through_the_docker_clis_current_context(engine, store, tmp_path, kind):  # noqa: F811
    """`docker context create` and `docker context use`, run by the docker CLI itself: without
    DOCKER_HOST, the engine of the current context is indexed, over TLS with the context's files."""
    from services import DOCKER

    unset = ("DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_CONTEXT")
    env = {key: value for key, value in os.environ.items() if key not in unset}
    env["DOCKER_CONFIG"] = str(tmp_path / "docker-config")
    relay = None
    if kind == "unix":
        endpoint = f"host=unix://{engine.socket_path}"
    else:
        tls, client = _checking_client_certificates(tmp_path)
        relay = _Relay(engine.socket_path, tls)
        endpoint = f"host=tcp://127.0.0.1:{relay.port},ca={client}/ca.pem,cert={client}/cert.pem,key={client}/key.pem"
    try:
        for args in (("context", "create", "imgdex-live", "--docker", endpoint), ("context", "use", "imgdex-live")):
            subprocess.run([DOCKER, *args], env=env, check=True, capture_output=True, timeout=60)
        imgdex("index", "docker-daemon:", "--store", tmp_path / "store", env=env)
        assert listing(str(tmp_path / "store")) == listing(store)
    finally:
        if relay is not None:
            relay.stop()
    # DOCKER_CONTEXT names another, which does not exist: one line, as the CLI refuses it.
    env["DOCKER_CONTEXT"] = "nope"
    result = imgdex("index", "docker-daemon:", "--store", tmp_path / "none", env=env, check=False)
    assert result.returncode == 1 and len(result.stderr.splitlines()) == 1
    assert "docker context 'nope' (named by DOCKER_CONTEXT) does not exist" in result.stderr


def test_engine_reached_over_ssh_as_the_docker_cli_reaches_it(engine, store, tmp_path, services_folder):  # noqa: F811
    """`ssh://root@127.0.0.1:PORT`, given as the address or as a docker context's host: a real sshd,
    whose session runs the real docker CLI's `system dial-stdio` against the test engine."""
    from services import DOCKER, Unavailable, start_sshd

    try:
        sshd = start_sshd(os.path.join(services_folder, f"sshd-{os.getpid()}"), engine.host)
    except (Unavailable, OSError, subprocess.SubprocessError) as exc:
        pytest.fail(str(exc)) if os.environ.get("CI") else pytest.skip(str(exc))
    unset = ("DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_CONTEXT")
    env = {key: value for key, value in os.environ.items() if key not in unset}
    env["PATH"] = f"{sshd.bin}{os.pathsep}{env['PATH']}"
    env["DOCKER_CONFIG"] = str(tmp_path / "docker-config")
    address = f"ssh://root@127.0.0.1:{sshd.port}"
    try:
        imgdex("index", "docker-daemon:", "--docker-host", address, "--store", tmp_path / "by-address", env=env)
        assert listing(str(tmp_path / "by-address")) == listing(store)
        for args in (("context", "create", "remote", "--docker", f"host={address}"), ("context", "use", "remote")):
            subprocess.run([DOCKER, *args], env=env, check=True, capture_output=True, timeout=60)
        imgdex("index", "docker-daemon:", "--store", tmp_path / "by-context", env=env)
        assert listing(str(tmp_path / "by-context")) == listing(store)
        # A login ssh refuses, and an engine socket that is not there: one line each, in ssh's or
        # the remote docker's own words, and no ssh process left behind.
        # the login names the engine as docker shows it: no secret
        for where, words in (
            (
                f"ssh://nobody@127.0.0.1:{sshd.port}",
                f"ssh://nobody@127.0.0.1:{sshd.port}: over ssh: nobody@127.0.0.1: Permission denied (publickey)",
            ),
            (f"{address}/nowhere.sock", f"{address}/nowhere.sock: over ssh: failed to open the raw stream connection"),
        ):
            result = imgdex(
                "index", "docker-daemon:", "--docker-host", where, "--store", tmp_path / "no", env=env, check=False
            )
            assert result.returncode == 1 and len(result.stderr.splitlines()) == 1, result.stderr
            assert f"cannot reach the Docker engine at {words}" in result.stderr, result.stderr
        assert "dial unix /nowhere.sock" in result.stderr
    finally:
        sshd.stop()
    # Neither this side's ssh nor the far side's dial-stdio outlives the runs (the far side's
    # session ends a moment after the client leaves).
    deadline = time.monotonic() + 10
    while left := subprocess.run(["pgrep", "-f", "dial-stdio"], capture_output=True, text=True).stdout.split():
        assert time.monotonic() < deadline, left
        time.sleep(0.1)


def test_stopped_engine_is_one_line_and_exit_1(tmp_path, services_folder):  # noqa: F811
    from services import Unavailable, start_engine

    try:
        spare = start_engine(os.path.join(services_folder, "spare"))
    except Unavailable as exc:
        pytest.fail(str(exc)) if os.environ.get("CI") else pytest.skip(str(exc))
    spare.stop()
    result = imgdex("index", "docker-daemon:", "--docker-host", spare.host, "--store", tmp_path, check=False)
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"imgdex: docker-daemon: cannot reach the Docker engine at {spare.host}: ")


def _without_created(saved: str, out: str, tag: str) -> None:
    """A classic save of one image, rewritten with `created` dropped from its config (and from its
    history), under a new name and tag; the layers are the save's own."""
    with tarfile.open(saved) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    [entry] = json.loads(files.pop("manifest.json"))
    config = json.loads(files.pop(entry["Config"]))
    config.pop("created")
    for step in config.get("history", []):
        step.pop("created", None)
    data = json.dumps(config).encode()
    name = hashlib.sha256(data).hexdigest() + ".json"
    files[name] = data
    files["manifest.json"] = json.dumps([dict(entry, Config=name, RepoTags=[tag])]).encode()
    files.pop("repositories", None)
    with tarfile.open(out, "w") as tar:
        for member, body in sorted(files.items()):
            info = tarfile.TarInfo(member)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))


def test_config_without_created_has_no_created_at_from_any_source(engine, world, tmp_path):  # noqa: F811
    """The engine's inspect says Go's zero time for a config without `created`, as its history
    does for an entry without one; the record has no createdAt, alone or merged with a save."""
    tag = "imgdex-live/no-created:1"
    archive = str(tmp_path / "no-created.tar")
    engine.docker("save", "-o", str(tmp_path / "base.tar"), "imgdex-live/base:1.0")
    _without_created(str(tmp_path / "base.tar"), archive, tag)
    engine.docker("load", "-i", archive)
    try:
        assert docker_inspect(engine, tag)["Created"] == "0001-01-01T00:00:00Z"
        save, daemon = f"docker-archive:{archive}", f"docker-daemon:{tag}"
        for sources in ([daemon], [save], [save, daemon], [daemon, save]):
            folder = str(tmp_path / "-".join(s.split(":")[0] for s in sources))
            for source in sources:
                imgdex("index", source, "--docker-host", engine.host, "--store", folder)
            row = get(folder, tag)
            assert "createdAt" not in row, sources
    finally:
        engine.docker("rmi", tag)  # the engine's image list stays as `world` saw it
