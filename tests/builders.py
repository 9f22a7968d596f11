"""Small synthetic images for unit tests: OCI layouts and docker-save tars built in memory.

The fixtures under tests/fixtures/real come from real tools; these builders make the odd cases
(nested indexes, artifacts, bad input) that real tools rarely write.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass, field

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZ = "application/vnd.oci.image.layer.v1.tar+gzip"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def dumps(doc) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


@dataclass
class Blobs:
    """A content-addressed blob set that can be written as a layout dir or into a tar."""

    blobs: dict[str, bytes] = field(default_factory=dict)

    def add(self, data: bytes, media_type: str, **extra) -> dict:
        digest = digest_of(data)
        self.blobs[digest] = data
        return {"mediaType": media_type, "digest": digest, "size": len(data), **extra}

    def image(
        self,
        created="2026-11-29T10:54:27.000347894Z",
        layers=(b"layer-a", b"layer-b"),
        arch="amd64",
        os_name="linux",
        labels=None,
        extra_config=None,
    ):
        layer_descs = [self.add(data, OCI_LAYER_GZ) for data in layers]
        config = {
            "architecture": arch,
            "os": os_name,
            "config": {"Env": ["PATH=/bin"], "Cmd": ["/hello"], "Labels": labels or {"a": "b"}},
            "rootfs": {"type": "layers", "diff_ids": [digest_of(b"diff-" + d) for d in layers]},
            "history": [{"created": created, "created_by": "test"}],
        }
        if created is not None:
            config["created"] = created
        config.update(extra_config or {})
        config_desc = self.add(dumps(config), OCI_CONFIG)
        manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config_desc, "layers": layer_descs}
        return self.add(dumps(manifest), OCI_MANIFEST)

    def index(self, children: list[dict], **extra) -> dict:
        doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children}
        return self.add(dumps(doc), OCI_INDEX, **extra)

    def layout_files(self, top: list[dict]) -> dict[str, bytes]:
        files = {
            "oci-layout": b'{"imageLayoutVersion":"1.0.0"}',
            "index.json": dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": top}),
        }
        for digest, data in self.blobs.items():
            algorithm, hexpart = digest.split(":")
            files[f"blobs/{algorithm}/{hexpart}"] = data
        return files


def named(desc: dict, ref_name: str | None = None, containerd: str | None = None, **annotations) -> dict:
    out = dict(desc)
    notes = dict(annotations)
    if ref_name is not None:
        notes["org.opencontainers.image.ref.name"] = ref_name
    if containerd is not None:
        notes["io.containerd.image.name"] = containerd
    if notes:
        out["annotations"] = notes
    return out


def write_dir(root: str, files: dict[str, bytes]) -> str:
    for name, data in files.items():
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    return root


def tar_bytes(files: dict[str, bytes], extra: list[tarfile.TarInfo] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
        for info in extra or []:
            tar.addfile(info)
    return buffer.getvalue()


def write_tar(path: str, files: dict[str, bytes], extra=None) -> str:
    with open(path, "wb") as f:
        f.write(tar_bytes(files, extra))
    return path


def classic_save_files(images: list[dict]) -> dict[str, bytes]:
    """A classic docker save. Each image: {"tags": [...] or None, "layers": [bytes], "created": str}."""
    files: dict[str, bytes] = {}
    manifest = []
    for number, image in enumerate(images):
        layer_paths = []
        diff_ids = []
        for position, content in enumerate(image["layers"]):
            diff_id = digest_of(content)
            folder = hashlib.sha256(f"{number}/{position}".encode()).hexdigest()
            files[f"{folder}/layer.tar"] = content
            files[f"{folder}/VERSION"] = b"1.0"
            layer_paths.append(f"{folder}/layer.tar")
            diff_ids.append(diff_id)
        config = {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": ["A=1"], "Labels": {"n": str(number)}},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
        if image.get("created") is not None:
            config["created"] = image["created"]
        config_raw = dumps(config)
        config_name = digest_of(config_raw).split(":")[1] + ".json"
        files[config_name] = config_raw
        manifest.append({"Config": config_name, "RepoTags": image.get("tags"), "Layers": layer_paths})
    files["manifest.json"] = dumps(manifest)
    return files
