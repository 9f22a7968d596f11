#!/usr/bin/env python3
"""(Re)write the bad-input corpus: tests/badinput/corpus/, its README.md and tests/badinput/expected.json.

Every entry is a small source that `imgdex index` must refuse with exactly one one-line error
naming the file and the reason, without a traceback and without losing the other sources of
the run. The entries are built from tests/builders.py and the standard library (plus the
`zstandard` module the indexer already depends on), deterministically, so running this script
again rewrites the same bytes.

The oversized-JSON entries are not committed (they are over 8 MiB): they are marked
`"generated": true` in expected.json and `generate(name, directory)` builds them at test time.

Some generated entries are special files (FIFOs, device nodes) that git cannot hold; device
nodes need root, and generate() raises Unavailable without it.

expected.json placeholders, replaced by the test:
  {path}   the absolute path of the entry (raw in "source", regex-escaped in "error")
  {where}  the path as messages show it (control characters escaped), regex-escaped (in "error")
  {limit}  indexer.sources.parse.MAX_JSON_BYTES (in "error")

Usage: python tests/badinput/make_corpus.py [--out DIR] [--expected FILE]
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import io
import json
import lzma
import os
import random
import shutil
import stat
import sys
import tarfile
import zlib
from dataclasses import dataclass
from typing import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/, for builders

import builders  # noqa: E402
from builders import OCI_CONFIG, OCI_LAYER_GZ, OCI_MANIFEST, Blobs, digest_of, dumps, named  # noqa: E402

CORPUS = os.path.join(HERE, "corpus")
EXPECTED = os.path.join(HERE, "expected.json")

CREATED = "2024-05-01T12:00:00Z"
SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
SCHEMA1_JSON = "application/vnd.docker.distribution.manifest.v1+json"

# Regex pieces for expected.json.
HEX = "[0-9a-f]{64}"
SHA = f"sha256:{HEX}"
LINE = "^imgdex: "


@dataclass
class Entry:
    name: str  # the file or directory in the corpus (for a nested entry, the path below the corpus)
    source: str  # the SOURCE argument, with {path}
    error: str  # regex the one error line must fully match, with {path} and {limit}
    why: str  # what the entry is and why it is bad (README.md)
    build: Callable[[str], None] | None = None  # writes the entry at the given path
    generated: bool = False  # built at test time by generate(), never committed
    partial: bool = False  # records read before the fault (outer indexes) may land in the store
    limits: bool = False  # the test also bounds the peak RSS and wall time of this entry alone


class Unavailable(Exception):
    """A generated entry that cannot be built here (a device node needs root)."""


# ---------------------------------------------------------------------------------------------
# Small building blocks


def noise(seed: int, size: int) -> bytes:
    """Deterministic incompressible bytes."""
    return random.Random(seed).randbytes(size)


def save_files(tag: str, layer: bytes = b"layer-content") -> dict[str, bytes]:
    """A valid classic docker save of one image with one layer."""
    return builders.classic_save_files([{"tags": [tag], "layers": [layer], "created": CREATED}])


def save_names(files: dict[str, bytes]) -> tuple[str, list[str]]:
    """(config member, layer members) of a classic save."""
    entry = json.loads(files["manifest.json"])[0]
    return entry["Config"], entry["Layers"]


def layout_files(ref: str) -> tuple[dict[str, bytes], Blobs, dict]:
    """A valid OCI layout of one image named `ref`: (files, blobs, manifest descriptor)."""
    blobs = Blobs()
    manifest = blobs.image(created=CREATED)
    return blobs.layout_files([named(manifest, containerd=ref)]), blobs, manifest


def blob_name(digest: str) -> str:
    algorithm, encoded = digest.split(":")
    return f"blobs/{algorithm}/{encoded}"


def manifest_doc(files: dict[str, bytes], descriptor: dict) -> dict:
    return json.loads(files[blob_name(descriptor["digest"])])


def layout_with_config(ref: str, config_raw: bytes) -> dict[str, bytes]:
    """An OCI layout whose config blob holds `config_raw`, named by its true digest."""
    blobs = Blobs()
    layer = blobs.add(b"layer-a", OCI_LAYER_GZ)
    config = blobs.add(config_raw, OCI_CONFIG)
    manifest = blobs.add(
        dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": [layer]}), OCI_MANIFEST
    )
    return blobs.layout_files([named(manifest, containerd=ref)])


def write_tar(path: str, files: dict[str, bytes], extra: list[tarfile.TarInfo] | None = None) -> None:
    builders.write_tar(path, files, extra)


def write_bytes(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def write_layout(path: str, files: dict[str, bytes]) -> None:
    os.makedirs(path, exist_ok=True)
    builders.write_dir(path, files)


def member_span(data: bytes, name: str) -> tuple[int, int]:
    """(data offset, size) of a member of an uncompressed tar."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        info = tar.getmember(name)
        return info.offset_data, info.size


def link_info(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    info.mtime = 0
    return info


# ---------------------------------------------------------------------------------------------
# Committed entries


def build_truncated_tar(path: str) -> None:
    files = save_files("registry.example/bad/truncated:v1", layer=noise(1, 4096))
    data = builders.tar_bytes(files)
    _, layers = save_names(files)
    offset, size = member_span(data, layers[0])
    write_bytes(path, data[: offset + size // 2])


def build_not_an_image_tar(path: str) -> None:
    write_tar(
        path,
        {
            "notes/readme.txt": b"just some notes\n",
            "notes/todo.txt": b"- water the plants\n- call Bob\n",
            "hello.txt": b"hello\n",
        },
    )


def build_missing_manifest(path: str) -> None:
    files = save_files("registry.example/bad/no-manifest:v1")
    del files["manifest.json"]
    write_tar(path, files)


def build_manifest_not_json(path: str) -> None:
    files = save_files("registry.example/bad/manifest-not-json:v1")
    files["manifest.json"] = b'[{"Config": "abc.json", "RepoTags": ["registry.example/bad/x:v1"], "Layers": [\n'
    write_tar(path, files)


def build_missing_config(path: str) -> None:
    files = save_files("registry.example/bad/no-config:v1")
    config, _ = save_names(files)
    del files[config]
    write_tar(path, files)


def build_missing_layer(path: str) -> None:
    files = save_files("registry.example/bad/no-layer:v1")
    _, layers = save_names(files)
    del files[layers[0]]
    write_tar(path, files)


def _save_with_config(path: str, tag: str, bad) -> None:
    """A classic save whose config is `bad(config bytes)`, named by the true digest of those bytes."""
    files = save_files(tag)
    old_config, _ = save_names(files)
    data = bad(files.pop(old_config))
    new_config = digest_of(data).split(":")[1] + ".json"
    files[new_config] = data
    entry = json.loads(files["manifest.json"])
    entry[0]["Config"] = new_config
    files["manifest.json"] = dumps(entry)
    write_tar(path, files)


def build_config_not_json_save(path: str) -> None:
    bad = b'{"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [\n'
    _save_with_config(path, "registry.example/bad/config-not-json:v1", lambda _config: bad)


def build_config_nan_save(path: str) -> None:
    # JSON but for NaN, which json.loads takes and Go refuses
    _save_with_config(path, "registry.example/bad/config-nan:v1", lambda config: config[:-1] + b', "x": NaN}')


def build_hardlink_forward(path: str) -> None:
    files = save_files("registry.example/bad/hardlink-forward:v1")
    config, _ = save_names(files)
    entry = json.loads(files["manifest.json"])
    entry[0]["Config"] = "cfg.json"
    files["manifest.json"] = dumps(entry)
    data = files.pop(config)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, body in [*files.items(), ("cfg.json", None), (config, data)]:
            if body is None:
                tar.addfile(link_info(name, config, tarfile.LNKTYPE))  # before the member it links to
                continue
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(body), 0
            tar.addfile(info, io.BytesIO(body))
    write_bytes(path, buffer.getvalue())


def build_member_dotdot(path: str) -> None:
    files = save_files("registry.example/bad/dotdot:v1")
    files["../escape.txt"] = b"written outside the extraction directory\n"
    write_tar(path, files)


def build_member_absolute(path: str) -> None:
    files = save_files("registry.example/bad/absolute:v1")
    files["/etc/imgdex-absolute.txt"] = b"written at an absolute path\n"
    write_tar(path, files)


def build_member_newline(path: str) -> None:
    files = save_files("registry.example/bad/newline-member:v1")
    files["../evil\nimgdex: forged line"] = b"a member name that would split a message in two\n"
    write_tar(path, files)


def build_member_symlink_outside(path: str) -> None:
    files = save_files("registry.example/bad/symlink-member:v1")
    write_tar(path, files, [link_info("shared/layer.tar", "../../../etc/passwd")])


def build_link_loop(path: str) -> None:
    files = save_files("registry.example/bad/link-loop:v1")
    del files["manifest.json"]
    write_tar(path, files, [link_info("manifest.json", "loop.json"), link_info("loop.json", "manifest.json")])


def build_oci_missing_layer(path: str) -> None:
    files, _, manifest = layout_files("registry.example/bad/oci-no-layer:v1")
    layer = manifest_doc(files, manifest)["layers"][0]["digest"]
    del files[blob_name(layer)]
    write_layout(path, files)


def build_oci_missing_config(path: str) -> None:
    files, _, manifest = layout_files("registry.example/bad/oci-no-config:v1")
    config = manifest_doc(files, manifest)["config"]["digest"]
    del files[blob_name(config)]
    write_layout(path, files)


def _edited_manifest(ref: str) -> dict[str, bytes]:
    files, _, manifest = layout_files(ref)
    doc = manifest_doc(files, manifest)
    doc["annotations"] = {"edited": "after the blob was named"}
    files[blob_name(manifest["digest"])] = dumps(doc)  # same name, other bytes
    return files


def build_manifest_digest_mismatch_dir(path: str) -> None:
    write_layout(path, _edited_manifest("registry.example/bad/edited-dir:v1"))


def build_manifest_digest_mismatch_archive(path: str) -> None:
    write_tar(path, _edited_manifest("registry.example/bad/edited-archive:v1"))


def build_config_not_json_oci(path: str) -> None:
    write_layout(
        path,
        layout_with_config(
            "registry.example/bad/oci-config-not-json:v1", b'{"architecture": "amd64", "os": "linux",\n'
        ),
    )


def build_index_not_json(path: str) -> None:
    files, _, _ = layout_files("registry.example/bad/index-not-json:v1")
    files["index.json"] = b'{"schemaVersion": 2, "manifests": [\n'
    write_layout(path, files)


def _symlinked_blob(path: str, which: str) -> None:
    """`path` is ENTRY/layout; the blob is replaced by a symlink to ENTRY/outside.json (same bytes)."""
    files, _, manifest = layout_files(f"registry.example/bad/symlink-{which}:v1")
    digest = manifest["digest"] if which == "manifest" else manifest_doc(files, manifest)["config"]["digest"]
    name = blob_name(digest)
    outside = files.pop(name)
    write_layout(path, files)
    write_bytes(os.path.join(os.path.dirname(path), "outside.json"), outside)
    # blobs/sha256/HEX -> ../../../outside.json is ENTRY/outside.json: a readable file with the right digest
    os.symlink("../../../outside.json", os.path.join(path, name))


def build_symlink_config_outside(path: str) -> None:
    _symlinked_blob(path, "config")


def build_symlink_manifest_outside(path: str) -> None:
    _symlinked_blob(path, "manifest")


def _schema1_doc(with_signature: bool) -> dict:
    doc = {
        "schemaVersion": 1,
        "name": "bad/schema1",
        "tag": "v1",
        "architecture": "amd64",
        "fsLayers": [{"blobSum": digest_of(b"layer-a")}],
        "history": [{"v1Compatibility": json.dumps({"id": "a" * 64, "created": CREATED, "os": "linux"})}],
    }
    if with_signature:
        doc["signatures"] = [{"header": {"alg": "ES256"}, "signature": "c2lnbmF0dXJl", "protected": "cHJvdGVjdGVk"}]
    return doc


def build_schema1_declared(path: str) -> None:
    blobs = Blobs()
    manifest = blobs.add(json.dumps(_schema1_doc(True), indent=3).encode(), SCHEMA1_SIGNED)
    write_layout(path, blobs.layout_files([named(manifest, containerd="registry.example/bad/schema1-signed:v1")]))


def build_schema1_sniffed(path: str) -> None:
    blobs = Blobs()
    doc = {"mediaType": SCHEMA1_JSON, **_schema1_doc(False)}
    manifest = blobs.add(dumps(doc), SCHEMA1_JSON)
    del manifest["mediaType"]  # the descriptor does not say; the blob does
    write_layout(path, blobs.layout_files([named(manifest, containerd="registry.example/bad/schema1-json:v1")]))


def build_empty(path: str) -> None:
    write_bytes(path, b"")


def build_not_a_layout(path: str) -> None:
    write_bytes(os.path.join(path, "notes.txt"), b"a directory with no oci-layout, no index.json and no blobs\n")


def build_random(path: str) -> None:
    data = noise(2, 1024)
    assert not data.startswith((b"\x1f\x8b", b"\x28\xb5\x2f\xfd", b"\xfd7zXZ\x00", b"BZh"))
    try:
        tarfile.TarInfo.frombuf(data[:512], "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        pass
    else:  # pragma: no cover - the seed is fixed
        raise AssertionError("random bytes look like a tar header; change the seed")
    write_bytes(path, data)


def build_truncated_gzip(path: str) -> None:
    data = builders.tar_bytes(save_files("registry.example/bad/truncated-gzip:v1", layer=noise(3, 4096)))
    packed = gzip.compress(data, compresslevel=9, mtime=0)
    write_bytes(path, packed[: len(packed) // 2])


def _zstd(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor(level=3, write_checksum=True).compress(data)


def build_corrupt_zstd(path: str) -> None:
    packed = bytearray(
        _zstd(builders.tar_bytes(save_files("registry.example/bad/corrupt-zstd:v1", layer=noise(4, 4096))))
    )
    middle = len(packed) // 2
    for i in range(middle, middle + 16):
        packed[i] ^= 0x5A
    write_bytes(path, bytes(packed))


def build_truncated_zstd(path: str) -> None:
    packed = _zstd(builders.tar_bytes(save_files("registry.example/bad/truncated-zstd:v1", layer=noise(5, 4096))))
    write_bytes(path, packed[: len(packed) // 2])


def _xz_or_bzip2(compression: str, data: bytes) -> bytes:
    return lzma.compress(data, format=lzma.FORMAT_XZ) if compression == "xz" else bz2.compress(data, 9)


def build_truncated_xz_or_bzip2(compression: str, seed: int):
    def build(path: str) -> None:
        tag = f"registry.example/bad/truncated-{compression}:v1"
        packed = _xz_or_bzip2(compression, builders.tar_bytes(save_files(tag, layer=noise(seed, 4096))))
        write_bytes(path, packed[: len(packed) // 2])

    return build


def build_corrupt_xz_or_bzip2(compression: str, seed: int):
    def build(path: str) -> None:
        tag = f"registry.example/bad/corrupt-{compression}:v1"
        packed = bytearray(_xz_or_bzip2(compression, builders.tar_bytes(save_files(tag, layer=noise(seed, 4096)))))
        middle = len(packed) // 2
        for i in range(middle, middle + 16):
            packed[i] ^= 0x5A
        write_bytes(path, bytes(packed))

    return build


def build_corrupt_gzip(path: str) -> None:
    packed = bytearray(
        gzip.compress(
            builders.tar_bytes(save_files("registry.example/bad/corrupt-gzip:v1", layer=noise(6, 4096))),
            compresslevel=9,
            mtime=0,
        )
    )
    # Bytes flipped early in the deflate data break its structure (an invalid block or distance),
    # which the decompressor reports as its own error, not only as a CRC mismatch at the end.
    for i in range(24, 40):
        packed[i] ^= 0x5A
    try:
        zlib.decompress(bytes(packed[10:]), -15)
    except zlib.error:
        pass
    else:  # pragma: no cover - the input is fixed
        raise AssertionError("the flipped deflate stream still decodes; flip other bytes")
    write_bytes(path, bytes(packed))


def generate_gzip_long_header(path: str) -> None:
    """A gzip member whose name field (FNAME) runs for 600 KB before the deflate data."""
    data = builders.tar_bytes(save_files("registry.example/bad/gzip-long-header:v1"))
    header = b"\x1f\x8b\x08\x08" + b"\0" * 4 + b"\0\xff" + b"A" * 600_000 + b"\0"
    body = zlib.compressobj(9, zlib.DEFLATED, -15)
    trailer = zlib.crc32(data).to_bytes(4, "little") + (len(data) & 0xFFFFFFFF).to_bytes(4, "little")
    write_bytes(path, header + body.compress(data) + body.flush() + trailer)


def build_gzip_not_tar(path: str) -> None:
    write_bytes(path, gzip.compress(b"plain text, gzip-compressed, no tar inside\n" * 20, mtime=0))


def build_truncated_in_header(path: str) -> None:
    files = save_files("registry.example/bad/truncated-header:v1")
    data = builders.tar_bytes(files)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        header = tar.getmember("manifest.json").offset
    write_bytes(path, data[: header + 100])  # ends inside the 512-byte header of manifest.json


def build_deeply_nested_json(path: str) -> None:
    files = save_files("registry.example/bad/deep-json:v1")
    files["manifest.json"] = b"[" * 5000 + b"]" * 5000  # 10 KB, valid JSON, 5000 levels deep
    write_tar(path, files)


def build_lone_surrogate(path: str) -> None:
    blobs = Blobs()
    # "\ud800" is a lone UTF-16 surrogate escape: the bytes are ASCII and json.loads accepts them,
    # but the decoded string cannot be encoded as UTF-8.
    manifest = blobs.image(created=CREATED, labels={"org.example.note": "\ud800"})
    write_layout(path, blobs.layout_files([named(manifest, containerd="registry.example/bad/surrogate:v1")]))


# ---------------------------------------------------------------------------------------------
# Entries generated at test time (too big to commit)


def generate_deeply_nested_index(path: str) -> None:
    """An OCI layout of 1000 image indexes, each the only child of the next (1000 small blobs)."""
    blobs = Blobs()
    top = blobs.image(created=CREATED)
    for _ in range(1000):
        top = blobs.index([top])
    write_layout(path, blobs.layout_files([named(top, containerd="registry.example/bad/deep-index:v1")]))


BOMB_MEMBERS = 200
BOMB_MEMBER_SIZE = 8 << 20


def generate_member_bomb(path: str) -> None:
    """A 1.6 MB gzip archive of 200 members of 8 MiB that start with `{`, each named like a docker
    save config (`<hex>.json`), so a streaming pass that keeps what may be referenced must stop at
    its budget. gzip members concatenate: the 8 MiB body is compressed once and repeated."""
    body = gzip.compress(b"{" + b" " * (BOMB_MEMBER_SIZE - 2) + b"}", compresslevel=9, mtime=0)
    with open(path, "wb") as f:
        for i in range(BOMB_MEMBERS):
            info = tarfile.TarInfo(digest_of(str(i).encode()).split(":")[1] + ".json")
            info.size = BOMB_MEMBER_SIZE
            info.mtime = 0
            f.write(gzip.compress(info.tobuf(format=tarfile.GNU_FORMAT), mtime=0))
            f.write(body)
        f.write(gzip.compress(b"\0" * 1024, mtime=0))


def _special_blob(path: str, which: str, make: Callable[[str], None]) -> None:
    """A valid OCI layout whose `which` file (a blob, index.json or oci-layout) is replaced by `make`."""
    files, _, manifest = layout_files(f"registry.example/bad/special-{which}:v1")
    if which == "manifest":
        name = blob_name(manifest["digest"])
    elif which == "config":
        name = blob_name(manifest_doc(files, manifest)["config"]["digest"])
    else:
        name = which
    files.pop(name, None)
    write_layout(path, files)
    make(os.path.join(path, name))


def _fifo(path: str) -> None:
    os.mkfifo(path)


def _zero_device(path: str) -> None:
    """A character device node like /dev/zero (1, 5): endless bytes if it were read."""
    try:
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 5))
    except PermissionError:
        raise Unavailable("creating a device node needs root") from None


def generate_oci_manifest_fifo(path: str) -> None:
    _special_blob(path, "manifest", _fifo)


def generate_oci_config_device(path: str) -> None:
    _special_blob(path, "config", _zero_device)


def generate_oci_index_fifo(path: str) -> None:
    _special_blob(path, "index.json", _fifo)


def generate_oci_layout_device(path: str) -> None:
    _special_blob(path, "oci-layout", _zero_device)


def generate_archive_fifo(path: str) -> None:
    _fifo(path)


def generate_archive_device(path: str) -> None:
    _zero_device(path)


def generate_empty_folder(path: str) -> None:
    os.makedirs(path)


def generate_newline_path(path: str) -> None:
    build_not_an_image_tar(path)


def generate_nothing(path: str) -> None:
    """The entry is the SOURCE argument itself; no file is made."""


def oversized_manifest_json() -> dict[str, bytes]:
    """A classic save whose manifest.json is valid and 1 MiB over the limit (padded with spaces)."""
    from indexer.sources.parse import MAX_JSON_BYTES

    files = save_files("registry.example/bad/oversized:v1")
    text = files["manifest.json"]
    files["manifest.json"] = text[:-1] + b" " * (MAX_JSON_BYTES + (1 << 20) - len(text)) + b"]"
    return files


def generate_oversized_manifest_tar(path: str) -> None:
    write_tar(path, oversized_manifest_json())


def generate_oversized_manifest_gzip(path: str) -> None:
    write_bytes(path, gzip.compress(builders.tar_bytes(oversized_manifest_json()), compresslevel=1, mtime=0))


def generate_oversized_config_blob(path: str) -> None:
    """An OCI layout whose config blob is valid JSON, correctly named, and 1 MiB over the limit."""
    from indexer.sources.parse import MAX_JSON_BYTES

    config = dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [digest_of(b"diff")]}}
    )
    config = config[:-1] + b" " * (MAX_JSON_BYTES + (1 << 20) - len(config)) + b"}"
    write_layout(path, layout_with_config("registry.example/bad/oversized-config:v1", config))


# ---------------------------------------------------------------------------------------------
# The table

ENTRIES: list[Entry] = [
    Entry(
        "truncated.tar",
        "docker-archive:{path}",
        LINE + r"{path}: truncated tar: member '" + HEX + r"/layer\.tar' ends past the end of the file$",
        "A classic `docker save` tar cut in the middle of its layer member (config and manifest.json are lost).",
        build_truncated_tar,
    ),
    Entry(
        "not-an-image.tar",
        "{path}",
        LINE + r"{path}: not an image archive \(no manifest\.json or index\.json\)$",
        "A valid tar of a few text files: neither a docker save nor an OCI archive.",
        build_not_an_image_tar,
    ),
    Entry(
        "missing-manifest.tar",
        "docker-archive:{path}",
        LINE + r"{path}: missing manifest\.json: not a docker save archive$",
        "A classic save with its layer and config but without manifest.json, named as docker-archive:.",
        build_missing_manifest,
    ),
    Entry(
        "manifest-not-json.tar",
        "{path}",
        LINE + r"{path}: manifest\.json is not valid JSON \(.+\)$",
        "A classic save whose manifest.json is cut short: not JSON.",
        build_manifest_not_json,
    ),
    Entry(
        "missing-config.tar",
        "docker-archive:{path}",
        LINE + r"{path}: config '" + HEX + r"\.json' is missing from the archive$",
        "A classic save whose manifest.json names a config member that is not in the tar.",
        build_missing_config,
    ),
    Entry(
        "missing-layer.tar",
        "docker-archive:{path}",
        LINE + r"{path}: layer '" + HEX + r"/layer\.tar' listed in manifest\.json is missing from the archive$",
        "A classic save whose manifest.json lists a layer member that is not in the tar.",
        build_missing_layer,
    ),
    Entry(
        "config-not-json-save.tar",
        "docker-archive:{path}",
        LINE + r"{path}: config is not valid JSON \(.+\)$",
        "A classic save whose config member is not JSON; the member is named by the true sha256 of its bad bytes, "
        "so only the parse can fail.",
        build_config_not_json_save,
    ),
    Entry(
        "config-nan-save.tar",
        "docker-archive:{path}",
        LINE + r"{path}: config is not valid JSON \(NaN is not a JSON value\)$",
        "A classic save whose config is JSON but for a NaN, which Python's decoder reads and Go's (docker load, "
        "skopeo) refuses; the member is named by the true sha256 of its bytes.",
        build_config_nan_save,
    ),
    Entry(
        "hardlink-forward.tar",
        "{path}",
        LINE + r"{path}: member 'cfg\.json' is a hard link to '" + HEX + r"\.json', which is not an earlier member$",
        "A classic save whose config member is a hard link to a member that comes after it: docker load cannot "
        "make that link, and skopeo reads it as empty.",
        build_hardlink_forward,
    ),
    Entry(
        "member-dotdot.tar",
        "{path}",
        LINE + r"{path}: member '\.\./escape\.txt' has a '\.\.' path component$",
        "A valid classic save plus a member named ../escape.txt (path traversal).",
        build_member_dotdot,
    ),
    Entry(
        "member-absolute.tar",
        "{path}",
        LINE + r"{path}: member '/etc/imgdex-absolute\.txt' has an absolute path$",
        "A valid classic save plus a member named /etc/imgdex-absolute.txt.",
        build_member_absolute,
    ),
    Entry(
        "member-newline.tar",
        "{path}",
        LINE + r"{path}: member '\.\./evil\\nimgdex: forged line' has a '\.\.' path component$",
        "A valid classic save plus a member whose name climbs out and holds a newline: the error must stay on one "
        "line, with the newline escaped.",
        build_member_newline,
    ),
    Entry(
        "member-symlink-outside.tar",
        "{path}",
        LINE + r"{path}: member 'shared/layer\.tar' links outside the archive \('\.\./\.\./\.\./etc/passwd'\)$",
        "A valid classic save plus a symlink member whose target climbs out of the archive.",
        build_member_symlink_outside,
    ),
    Entry(
        "link-loop.tar",
        "{path}",
        LINE + r"{path}: member 'manifest\.json': too many levels of links$",
        "A classic save whose manifest.json is a symlink to loop.json, itself a symlink back to manifest.json.",
        build_link_loop,
    ),
    Entry(
        "oci-missing-layer",
        "oci:{path}",
        LINE + r"{path}: manifest " + SHA + r": layer " + SHA + r" is missing$",
        "An OCI layout directory whose manifest lists a layer blob that is not in blobs/.",
        build_oci_missing_layer,
    ),
    Entry(
        "oci-missing-config",
        "oci:{path}",
        LINE + r"{path}/blobs/sha256/" + HEX + r": blob is missing$",
        "An OCI layout directory whose manifest names a config blob that is not in blobs/.",
        build_oci_missing_config,
    ),
    Entry(
        "manifest-digest-mismatch",
        "{path}",
        LINE
        + r"{path}: manifest "
        + SHA
        + r" digest mismatch: descriptor says "
        + SHA
        + r", bytes hash to "
        + SHA
        + r"$",
        "An OCI layout directory whose manifest blob was edited after it was named: "
        "its bytes no longer hash to its name.",
        build_manifest_digest_mismatch_dir,
    ),
    Entry(
        "manifest-digest-mismatch.oci.tar",
        "oci-archive:{path}",
        LINE
        + r"{path}: manifest "
        + SHA
        + r" digest mismatch: descriptor says "
        + SHA
        + r", bytes hash to "
        + SHA
        + r"$",
        "The same edit in an oci-archive tar.",
        build_manifest_digest_mismatch_archive,
    ),
    Entry(
        "config-not-json-oci",
        "oci:{path}",
        LINE + r"{path} \(config " + SHA + r"\): config is not valid JSON \(.+\)$",
        "An OCI layout directory whose config blob is not JSON; the descriptor digest and size are those of the bad "
        "bytes, so only the parse can fail.",
        build_config_not_json_oci,
    ),
    Entry(
        "index-not-json",
        "{path}",
        LINE + r"{path}: index\.json is not valid JSON \(.+\)$",
        "An OCI layout directory whose index.json is cut short: not JSON.",
        build_index_not_json,
    ),
    Entry(
        "symlink-config-outside/layout",
        "oci:{path}",
        LINE + r"{path}/blobs/sha256/" + HEX + r": blob is a symlink that points outside the layout$",
        "An OCI layout directory whose config blob is a symlink (../../../outside.json) to a file outside the layout. "
        "The target holds the right bytes, so only the containment check can refuse it.",
        build_symlink_config_outside,
    ),
    Entry(
        "symlink-manifest-outside/layout",
        "oci:{path}",
        LINE + r"{path}/blobs/sha256/" + HEX + r": blob is a symlink that points outside the layout$",
        "The same with the manifest blob.",
        build_symlink_manifest_outside,
    ),
    Entry(
        "schema1-signed",
        "{path}",
        LINE + r"{path}: manifest " + SHA + r" is a schema1 manifest "
        r"\(application/vnd\.docker\.distribution\.manifest\.v1\+prettyjws\), which is not supported$",
        "An OCI layout directory whose index.json points to a signed schema1 manifest "
        "(descriptor mediaType application/vnd.docker.distribution.manifest.v1+prettyjws).",
        build_schema1_declared,
    ),
    Entry(
        "schema1-json",
        "{path}",
        LINE + r"{path}: manifest " + SHA + r" is a schema1 manifest\b.*, which is not supported$",
        "An OCI layout directory whose index.json descriptor has no mediaType and points to a schema1 manifest "
        "whose own mediaType is application/vnd.docker.distribution.manifest.v1+json.",
        build_schema1_sniffed,
    ),
    Entry(
        "empty.tar",
        "{path}",
        LINE + r"{path}: empty file$",
        "An empty file.",
        build_empty,
    ),
    Entry(
        "not-a-layout",
        "{path}",
        LINE + r"{path}: directory is not an image layout \(no index\.json\) and holds no image archives$",
        "A directory holding one text file: no oci-layout, index.json or blobs, and no archive (the file is skipped "
        "with a note).",
        build_not_a_layout,
    ),
    Entry(
        "random.bin",
        "{path}",
        LINE + r"{path}: not a tar archive \(nor gzip, zstd, xz or bzip2\)$",
        "1 KiB of random bytes.",
        build_random,
    ),
    Entry(
        "truncated.tar.gz",
        "{path}",
        LINE + r"{path}: truncated or corrupt gzip archive \(.+\)$",
        "A gzip-compressed classic save cut in the middle of the compressed stream.",
        build_truncated_gzip,
    ),
    Entry(
        "gzip-not-tar.gz",
        "{path}",
        LINE + r"{path}: not a readable gzip tar archive \(.+\)$",
        "A valid gzip stream of plain text: no tar inside.",
        build_gzip_not_tar,
    ),
    Entry(
        "corrupt.tar.zst",
        "{path}",
        LINE + r"{path}: corrupt zstd archive \(.+\)$",
        "A zstd-compressed classic save (with a content checksum) with 16 bytes flipped in the middle of the frame.",
        build_corrupt_zstd,
    ),
    Entry(
        "corrupt.tar.gz",
        "{path}",
        LINE + r"{path}: corrupt gzip archive \(.+\)$",
        "A gzip-compressed classic save with 16 bytes flipped near the start of the deflate stream.",
        build_corrupt_gzip,
    ),
    Entry(
        "gzip-long-header.tar.gz",
        "{path}",
        LINE + r"{path}: corrupt gzip archive \(.+\)$",
        "A gzip-compressed classic save whose gzip header holds a 600 KB file name (FNAME): valid gzip, but "
        "longer than the decompressor reads ahead, so it is refused whole.",
        generate_gzip_long_header,
        generated=True,
    ),
    Entry(
        "truncated.tar.zst",
        "{path}",
        LINE + r"{path}: [^:]*\btruncated\b[^:]* zstd archive\b.*$",
        "A zstd-compressed classic save cut in the middle of the frame. The error must say the archive is truncated.",
        build_truncated_zstd,
    ),
    Entry(
        "truncated.tar.xz",
        "{path}",
        LINE + r"{path}: truncated or corrupt xz archive \(.+\)$",
        "An xz-compressed classic save cut in the middle of the stream.",
        build_truncated_xz_or_bzip2("xz", 7),
    ),
    Entry(
        "corrupt.tar.xz",
        "{path}",
        LINE + r"{path}: corrupt xz archive \(.+\)$",
        "An xz-compressed classic save with 16 bytes flipped in the middle of the stream.",
        build_corrupt_xz_or_bzip2("xz", 8),
    ),
    Entry(
        "truncated.tar.bz2",
        "{path}",
        LINE + r"{path}: truncated or corrupt bzip2 archive \(.+\)$",
        "A bzip2-compressed classic save cut in the middle of the stream.",
        build_truncated_xz_or_bzip2("bzip2", 9),
    ),
    Entry(
        "corrupt.tar.bz2",
        "{path}",
        LINE + r"{path}: corrupt bzip2 archive \(.+\)$",
        "A bzip2-compressed classic save with 16 bytes flipped in the middle of the stream.",
        build_corrupt_xz_or_bzip2("bzip2", 10),
    ),
    Entry(
        "truncated-in-header.tar",
        "docker-archive:{path}",
        LINE + r"{path}: [^:]*\btruncated\b.*$",
        "A classic save cut 100 bytes into the 512-byte header of its last member (manifest.json). "
        "The error must say the tar is truncated, not that manifest.json is absent.",
        build_truncated_in_header,
    ),
    Entry(
        "deeply-nested-json.tar",
        "{path}",
        LINE + r"{path}: manifest\.json\b.*\b(JSON|nested|deep|depth)\b.*$",
        "A classic save whose 10 KB manifest.json is 5000 nested JSON arrays: deeper than the JSON parser's "
        "recursion limit.",
        build_deeply_nested_json,
    ),
    Entry(
        "lone-surrogate-label",
        "{path}",
        LINE + r"{path}\b.*\b(surrogates?|[Uu]nicode|UTF-8|JSON)\b.*$",
        'An OCI layout directory whose config (correctly named) has a label value "\\ud800": a lone UTF-16 '
        "surrogate escape, which decodes to a string that is not valid Unicode and cannot be stored.",
        build_lone_surrogate,
    ),
    Entry(
        "deeply-nested-index",
        "oci:{path}",
        LINE + r"{path}: .*(nest|deep|depth).*$",
        "An OCI layout of 1000 image indexes, each the only child of the next, above one "
        "image. The nesting must be refused at some depth; the outer indexes read before it may land.",
        generate_deeply_nested_index,
        generated=True,
        partial=True,
    ),
    Entry(
        "member-bomb.tar.gz",
        "{path}",
        LINE + r"{path}: more than \d+ bytes of members that may be manifests or configs, the limit for a compressed "
        r"or piped archive \(.+\)$",
        "A 1.6 MB gzip archive of 200 members of 8 MiB that start with `{` and are named like configs "
        "(`<hex>.json`). A streaming pass keeps such members until they could be referenced: their total must be "
        "bounded.",
        generate_member_bomb,
        generated=True,
        limits=True,
    ),
    Entry(
        "oci-manifest-fifo",
        "oci:{path}",
        LINE + r"{path}/blobs/sha256/" + HEX + r": blob is not a regular file \(named pipe\)$",
        "An OCI layout directory whose manifest blob is a FIFO: opening it for reading would block for ever.",
        generate_oci_manifest_fifo,
        generated=True,
        limits=True,
    ),
    Entry(
        "oci-config-device",
        "oci:{path}",
        LINE + r"{path}/blobs/sha256/" + HEX + r": blob is not a regular file \(character device\)$",
        "An OCI layout directory whose config blob is a character device like /dev/zero (needs root to make): "
        "reading it would never end.",
        generate_oci_config_device,
        generated=True,
        limits=True,
    ),
    Entry(
        "oci-index-fifo",
        "{path}",
        LINE + r"{path}/index\.json: index\.json is not a regular file \(named pipe\)$",
        "An OCI layout directory whose index.json is a FIFO.",
        generate_oci_index_fifo,
        generated=True,
        limits=True,
    ),
    Entry(
        "oci-layout-device",
        "oci:{path}",
        LINE + r"{path}/oci-layout: oci-layout is not a regular file \(character device\)$",
        "An OCI layout directory whose oci-layout file is a character device like /dev/zero (needs root to make).",
        generate_oci_layout_device,
        generated=True,
        limits=True,
    ),
    Entry(
        "ycr-device.json",
        "ycr-json:{path}",
        LINE + r"{path}: not a regular file \(character device\)$",
        "A YCR JSON export that is a character device like /dev/zero (needs root to make): reading it would "
        "never end. A pipe is read as a stream, up to the export limit.",
        generate_archive_device,
        generated=True,
        limits=True,
    ),
    Entry(
        "archive-fifo.tar",
        "{path}",
        LINE + r"{path}: not a regular file \(named pipe\)$",
        "A bare path that is a FIFO (only standard input, `-`, is read as a stream).",
        generate_archive_fifo,
        generated=True,
        limits=True,
    ),
    Entry(
        "archive-device.tar",
        "docker-archive:{path}",
        LINE + r"{path}: not a regular file \(character device\)$",
        "A docker-archive: path that is a character device like /dev/zero (needs root to make).",
        generate_archive_device,
        generated=True,
        limits=True,
    ),
    Entry(
        "empty-folder",
        "{path}",
        LINE + r"{path}: directory is not an image layout \(no index\.json\) and holds no image archives$",
        "An empty directory: neither a layout nor a folder of archives.",
        generate_empty_folder,
        generated=True,
    ),
    Entry(
        "newline\nin-name.tar",
        "{path}",
        LINE + r"{where}: not an image archive \(no manifest\.json or index\.json\)$",
        "A tar of text files whose file name holds a newline: the error names it on one line, escaped.",
        generate_newline_path,
        generated=True,
    ),
    Entry(
        "typo",
        "docker-achive:{path}",
        LINE + r"docker-achive:{path}: unknown source type \"docker-achive:\"; valid: docker-archive:, oci-archive:, "
        r"oci:, dir:, docker-daemon:, containers-storage:, docker://, ycr-json:$",
        "A mistyped transport (docker-achive: for docker-archive:) before a path that does not exist.",
        generate_nothing,
        generated=True,
    ),
    Entry(
        "oversized-manifest-json.tar",
        "docker-archive:{path}",
        LINE + r"{path}: manifest\.json 'manifest\.json' is \d+ bytes, over the {limit}-byte limit$",
        "A classic save whose manifest.json is valid JSON padded to 1 MiB over the limit. It must be refused unread.",
        generate_oversized_manifest_tar,
        generated=True,
    ),
    Entry(
        "oversized-manifest-json.tar.gz",
        "{path}",
        LINE + r"{path}: manifest\.json 'manifest\.json' is \d+ bytes, over the {limit}-byte limit$",
        "The same, gzip-compressed (the streaming reader must not keep the member).",
        generate_oversized_manifest_gzip,
        generated=True,
    ),
    Entry(
        "oversized-config-blob",
        "oci:{path}",
        LINE + r"{path}/blobs/sha256/" + HEX + r": blob is \d+ bytes, over the {limit}-byte limit$",
        "An OCI layout directory whose correctly named config blob is valid JSON padded to 1 MiB over the limit.",
        generate_oversized_config_blob,
        generated=True,
    ),
]

BY_NAME = {entry.name: entry for entry in ENTRIES}


def generate(name: str, directory: str) -> str:
    """Build the generated entry `name` under `directory`; return its path."""
    entry = BY_NAME[name]
    if not entry.generated:
        raise ValueError(f"{name} is a committed entry")
    path = os.path.join(directory, entry.name)
    entry.build(path)
    return path


def expected_document() -> dict:
    return {
        "placeholders": {
            "{path}": "absolute path of the entry: raw in source, regex-escaped in error",
            "{where}": "the path as messages show it (control characters escaped), regex-escaped in error",
            "{limit}": "indexer.sources.parse.MAX_JSON_BYTES",
        },
        "fields": {
            "source": "the SOURCE argument of `imgdex index`",
            "error": "regex the one `imgdex: ` error line of the entry must fully match",
            "generated": "built at test time by make_corpus.generate() instead of committed",
            "partial": "records read before the fault may land; otherwise no record of the entry may",
            "limits": "the peak RSS and wall time of `imgdex index` on this entry alone are bounded too",
        },
        "entries": [
            {
                "name": e.name,
                "source": e.source,
                "error": e.error,
                "generated": e.generated,
                "partial": e.partial,
                "limits": e.limits,
                "why": e.why,
            }
            for e in ENTRIES
        ],
    }


def readme_text() -> str:
    lines = [
        "# Bad-input corpus",
        "",
        "Sources that `imgdex index` must refuse with exactly one one-line `imgdex: PATH...: REASON` error,",
        "no traceback, exit code 1, while the other sources of the same run are still indexed.",
        "tests/test_badinput.py runs every entry; `../expected.json` holds the SOURCE argument and the",
        "regex of the error line of each entry.",
        "",
        "Do not edit these files by hand: `python tests/badinput/make_corpus.py` rewrites them",
        "(and expected.json) deterministically.",
        "",
        "| Entry | Source | Why it is bad |",
        "| --- | --- | --- |",
    ]
    for entry in ENTRIES:
        shown = entry.name.replace("\n", "\\n")
        where = f"`{shown}`" + (" (generated at test time)" if entry.generated else "")
        source = entry.source.replace("{path}", "PATH")
        lines.append(f"| {where} | `{source}` | {entry.why} |")
    lines += [
        "",
        "`symlink-*-outside/outside.json` are the targets of the symlinked blobs, not entries of their own.",
        "The generated entries are too big to commit (over the 8 MiB JSON limit, MAX_JSON_BYTES in",
        "indexer/sources/parse.py, or a decompression bomb), special files git cannot hold (FIFOs, device",
        "nodes: these need root and are skipped without it), names git would mangle, or no file at all;",
        "`generate()` in make_corpus.py builds them into a temporary directory.",
        "",
    ]
    return "\n".join(lines)


def write_corpus(out: str, expected: str) -> None:
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out)
    for entry in ENTRIES:
        if not entry.generated:
            entry.build(os.path.join(out, entry.name))
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(readme_text())
    with open(expected, "w") as f:
        json.dump(expected_document(), f, indent=2)
        f.write("\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=CORPUS, help="corpus directory (default: %(default)s)")
    parser.add_argument("--expected", default=EXPECTED, help="expected.json to write (default: %(default)s)")
    args = parser.parse_args(argv)
    write_corpus(args.out, args.expected)


if __name__ == "__main__":
    main()
