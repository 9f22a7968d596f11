"""An in-memory Docker engine behind the same narrow client interface as the engine API client.

It answers with documents shaped as a real engine's (/images/json, inspect, history, info),
records every call, and can fail on purpose. Only the mapping is tested with it; the proof
against a real engine is in test_daemon_live.py. `make_tls_files` makes the certificates of an
engine secured as Docker documents it (a CA, a server certificate, a client certificate).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socketserver
import subprocess
import sys
import threading
from dataclasses import dataclass, field

from indexer.model import Platform
from indexer.errors import EngineRefused, EngineUnavailable, NoSuchImage

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def fake_digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Step:
    """One history entry; size None marks an empty layer (ENV, LABEL, CMD...)."""

    created_by: str
    size: int | None
    created: int = 1795952930
    comment: str = ""


def classic_image(
    seed: str,
    *,
    tags=(),
    digests=(),
    steps=None,
    created="2026-11-29T11:48:54.000134049Z",
    os="linux",
    architecture="amd64",
    variant="",
    env=("PATH=/bin",),
    cmd=("/hello",),
    entrypoint=None,
    labels=None,
    parent="",
) -> dict:
    """An engine image (classic store): its inspect and history documents, made consistent."""
    if steps is None:
        steps = (Step("ADD rootfs", 7),)
    image_id = fake_digest("config " + seed)
    layers = [fake_digest(f"layer {seed} {i}") for i, step in enumerate(steps) if step.size is not None]
    inspect = {
        "Id": image_id,
        "RepoTags": list(tags),
        "RepoDigests": list(digests),
        "Parent": parent,
        "Comment": "",
        "Created": created,
        "DockerVersion": "20.10.24+dfsg1",
        "Author": "",
        "Config": {
            "Env": list(env) if env is not None else None,
            "Cmd": list(cmd) if cmd is not None else None,
            "Entrypoint": list(entrypoint) if entrypoint is not None else None,
            "Labels": labels,
        },
        "Architecture": architecture,
        "Os": os,
        "Size": sum(step.size or 0 for step in steps),
        "GraphDriver": {"Data": None, "Name": "vfs"},
        "RootFS": {"Type": "layers", "Layers": layers},
        "Metadata": {"LastTagTime": "0001-01-01T00:00:00Z"},
    }
    if variant:
        inspect["Variant"] = variant
    history = [
        {
            "Comment": s.comment,
            "Created": s.created,
            "CreatedBy": s.created_by,
            "Id": "<missing>",
            "Size": s.size or 0,
            "Tags": None,
        }
        for s in reversed(steps)
    ]
    history[0]["Id"] = image_id
    return {"inspect": inspect, "history": history, "intermediate": False}


def containerd_image(
    seed: str,
    *,
    tags=(),
    platforms=(("linux", "amd64", ""),),
    unavailable=(),
    attestation=False,
    index=True,
    descriptor=True,
) -> dict:
    """An engine image (containerd store): an index of platform manifests, or one manifest."""
    children = []
    per_platform = {}
    for os_name, arch, variant in platforms:
        key = f"{seed} {os_name}/{arch}/{variant}"
        digest = fake_digest("manifest " + key)
        platform = {"os": os_name, "architecture": arch, **({"variant": variant} if variant else {})}
        child = classic_image(
            key,
            created="2026-11-29T11:48:54.5Z",
            os=os_name,
            architecture=arch,
            variant=variant,
            steps=(Step("ADD rootfs", 11), Step("ENV A=1", None), Step("COPY x", 3)),
        )
        per_platform[Platform(os_name, arch, variant)] = (digest, child)
        children.append(
            {
                "ID": digest,
                "Descriptor": {"mediaType": OCI_MANIFEST, "digest": digest, "size": 500, "platform": platform},
                "Available": (os_name, arch, variant) not in unavailable,
                "Size": {"Total": 1000, "Content": 900},
                "Kind": "image",
                "ImageData": {"Platform": platform, "Containers": [], "Size": {"Unpacked": 14}},
            }
        )
    if attestation:
        digest = fake_digest("attestation " + seed)
        children.append(
            {
                "ID": digest,
                "Descriptor": {
                    "mediaType": OCI_MANIFEST,
                    "digest": digest,
                    "size": 300,
                    "platform": {"os": "unknown", "architecture": "unknown"},
                },
                "Available": True,
                "Size": {"Total": 300, "Content": 300},
                "Kind": "attestation",
                "AttestationData": {"For": children[0]["ID"]},
            }
        )
    if index:
        target = {"mediaType": OCI_INDEX, "digest": fake_digest("index " + seed), "size": 800}
    else:
        target = dict(children[0]["Descriptor"])
        target.pop("platform")
    first_digest, first = next(iter(per_platform.values()))
    inspect = dict(
        first["inspect"],
        Id=target["digest"],
        RepoTags=list(tags),
        RepoDigests=[_digested(t, target["digest"]) for t in tags],
    )
    if descriptor:
        inspect["Descriptor"] = target
    return {
        "inspect": inspect,
        "history": first["history"],
        "manifests": children,
        "per_platform": {
            p: (
                d,
                dict(c["inspect"], Id=d, Descriptor={"mediaType": OCI_MANIFEST, "digest": d, "size": 500}),
                c["history"],
            )
            for p, (d, c) in per_platform.items()
        },
        "intermediate": False,
    }


def _digested(tag: str, digest: str) -> str:
    slash = tag.rfind("/")
    colon = tag.rfind(":")
    return (tag[:colon] if colon > slash else tag) + "@" + digest


@dataclass
class FakeEngine:
    images: list[dict] = field(default_factory=list)
    api_version: str = "1.41"
    containerd: bool = False
    address: str = "unix:///fake/docker.sock"
    calls: list[tuple] = field(default_factory=list)
    closed: bool = False
    aborted: bool = False
    fail_inspect: dict[str, Exception] = field(default_factory=dict)  # image id -> what its inspect raises
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, image: dict, intermediate: bool = False) -> dict:
        image["intermediate"] = intermediate
        self.images.append(image)
        return image

    def _record(self, *call) -> None:
        with self.lock:
            self.calls.append(call)

    def count(self, kind: str) -> int:
        with self.lock:
            return sum(1 for call in self.calls if call[0] == kind)

    def _find(self, ref: str) -> dict:
        for image in self.images:
            if image["inspect"]["Id"] == ref:
                return image
        bare = ref.removeprefix("sha256:")
        for image in self.images:
            inspect = image["inspect"]
            names = set(inspect["RepoTags"]) | set(inspect["RepoDigests"])
            if ref in names or f"{ref}:latest" in names:
                return image
        for image in self.images:
            if len(bare) >= 4 and image["inspect"]["Id"].removeprefix("sha256:").startswith(bare):
                return image
        raise NoSuchImage(f"image {ref}: no such image: {ref}")

    # -- the EngineClient interface

    def list_images(self, *, all: bool = False, manifests: bool = False) -> list[dict]:
        self._record("list", all, manifests)
        out = []
        for image in self.images:
            if image["intermediate"] and not all:
                continue
            inspect = image["inspect"]
            summary = {
                "Containers": -1,
                "Created": 1795952934,
                "Id": inspect["Id"],
                "Labels": inspect["Config"].get("Labels"),
                "ParentId": inspect.get("Parent", ""),
                "RepoDigests": inspect["RepoDigests"] or ["<none>@<none>"],
                "RepoTags": inspect["RepoTags"] or ["<none>:<none>"],
                "SharedSize": -1,
                "Size": inspect.get("Size", 0),
            }
            if manifests and self.containerd:
                summary["Manifests"] = image.get("manifests", [])
            out.append(summary)
        return out

    def inspect_image(self, ref: str, *, platform: Platform | None = None, manifests: bool = False) -> dict:
        self._record("inspect", ref, platform, manifests)
        image = self._find(ref)
        failure = self.fail_inspect.get(image["inspect"]["Id"])
        if failure is not None:
            raise failure
        if platform is not None:
            if "per_platform" not in image or platform not in image["per_platform"]:
                raise EngineRefused(f"image {ref}: no match for platform in manifest")
            return dict(
                image["per_platform"][platform][1],
                RepoTags=image["inspect"]["RepoTags"],
                RepoDigests=image["inspect"]["RepoDigests"],
            )
        doc = dict(image["inspect"])
        if manifests and self.containerd:
            doc["Manifests"] = image.get("manifests", [])
        return doc

    def image_history(self, ref: str, *, platform: Platform | None = None) -> list[dict]:
        self._record("history", ref, platform)
        image = self._find(ref)
        if platform is not None:
            return image["per_platform"][platform][2]
        return image["history"]

    def info(self) -> dict:
        self._record("info")
        status = (
            [["driver-type", "io.containerd.snapshotter.v1"]] if self.containerd else [["Backing Filesystem", "extfs"]]
        )
        return {"Driver": "overlayfs" if self.containerd else "vfs", "DriverStatus": status}

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        self.closed = True


def make_tls_files(folder: str) -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1 and localhost, and a client certificate, made with openssl.

    Returns the paths by role: ca, server_cert, server_key, and `client`: a folder laid out as
    DOCKER_CERT_PATH wants it (ca.pem, cert.pem, key.pem). Raises FileNotFoundError without openssl.
    """
    if shutil.which("openssl") is None:
        raise FileNotFoundError("openssl is not installed")
    os.makedirs(folder, exist_ok=True)
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=60)

    openssl(
        "req", "-x509", *key, "-keyout", "ca-key.pem", "-out", "ca.pem", "-days", "2", "-subj", "/CN=imgdex test CA"
    )
    extensions = {
        "server": "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        "client": "extendedKeyUsage=clientAuth\n",
    }
    for role, text in extensions.items():
        with open(os.path.join(folder, f"{role}.ext"), "w") as f:
            f.write(text)
        openssl("req", *key, "-keyout", f"{role}-key.pem", "-out", f"{role}.csr", "-subj", f"/CN=imgdex test {role}")
        openssl(
            "x509",
            "-req",
            "-in",
            f"{role}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-out",
            f"{role}.pem",
            "-days",
            "2",
            "-extfile",
            f"{role}.ext",
        )
    client = os.path.join(folder, "client")
    os.makedirs(client, exist_ok=True)
    for source, target in (("ca.pem", "ca.pem"), ("client.pem", "cert.pem"), ("client-key.pem", "key.pem")):
        shutil.copyfile(os.path.join(folder, source), os.path.join(client, target))
    return {
        "ca": os.path.join(folder, "ca.pem"),
        "server_cert": os.path.join(folder, "server.pem"),
        "server_key": os.path.join(folder, "server-key.pem"),
        "client": client,
    }


class DeadEngine:
    """Connecting to it fails as an absent engine does."""

    def __init__(self, address: str):
        raise EngineUnavailable(f"cannot reach the Docker engine at {address}: No such file or directory")


__all__ = [
    "FakeEngine",
    "DeadEngine",
    "Step",
    "classic_image",
    "containerd_image",
    "fake_digest",
    "make_tls_files",
    "EngineRefused",
    "EngineUnavailable",
    "NoSuchImage",
]


class UnixHttpServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """An HTTP server on a unix socket, where an engine listens. http.server wants each client's
    address as (host, port), which a unix socket does not give: a made-up one stands in."""

    daemon_threads = True

    def get_request(self):
        request, _ = super().get_request()
        return request, ("local", 0)

    def handle_error(self, request, client_address):
        # A client that gave up on an answer (a deadline, an abort) is no error of the engine's;
        # anything else still prints, where a test's output shows it.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)
