"""--verify hashes layer contents; without it, layers are never read."""

import bz2
import gzip
import hashlib
import json
import lzma
import os
import subprocess

import pytest
import zstandard

from conftest import REAL
from builders import (
    OCI_CONFIG,
    OCI_LAYER_GZ,
    OCI_MANIFEST,
    Blobs,
    classic_save_files,
    digest_of,
    dumps,
    named,
    tar_bytes,
    write_dir,
)


def _tampered_layout(root):
    blobs = Blobs()
    image = blobs.image(layers=(b"good-layer",))
    write_dir(str(root), blobs.layout_files([named(image, "cr.example/app:1")]))
    layer = json.loads(blobs.blobs[image["digest"]])["layers"][0]["digest"]
    path = root / "blobs" / "sha256" / layer.split(":")[1]
    path.write_bytes(b"evil-layer")  # same size, other bytes
    return layer


def test_tampered_layer_passes_without_verify_and_fails_with_it(run_cli, tmp_path):
    layer = _tampered_layout(tmp_path / "layout")
    plain = run_cli("index", tmp_path / "layout", "--store", tmp_path / "a")
    assert plain.exit_code == 0  # layer bytes are not read by default
    checked = run_cli("index", tmp_path / "layout", "--store", tmp_path / "b", "--verify")
    assert checked.exit_code == 1
    assert f"layer {layer} content hashes to sha256:" in checked.stderr
    assert "Traceback" not in checked.output


@pytest.mark.parametrize("compress", ["", "gzip", "zstd", "xz", "bz2"])
def test_classic_layers_are_checked_against_diff_ids(run_cli, tmp_path, compress):
    files = classic_save_files([{"tags": ["app:1"], "layers": [b"aaaa", b"bb"]}])
    layer_path = next(name for name in files if name.endswith("layer.tar"))
    files[layer_path] = b"zzzz"[: len(files[layer_path])]
    raw = tar_bytes(files)
    path = tmp_path / f"save.tar{'.' + compress if compress else ''}"
    path.write_bytes(
        gzip.compress(raw)
        if compress == "gzip"
        else zstandard.ZstdCompressor().compress(raw)
        if compress == "zstd"
        else lzma.compress(raw)
        if compress == "xz"
        else bz2.compress(raw)
        if compress == "bz2"
        else raw
    )
    assert run_cli("index", path, "--store", tmp_path / "a").exit_code == 0
    checked = run_cli("index", path, "--store", tmp_path / "b", "--verify")
    assert checked.exit_code == 1 and f"layer {layer_path!r} content hashes to" in checked.stderr


@pytest.mark.parametrize(
    "name",
    [
        "docker-save-app.tar",
        "docker-save-app.tar.gz",
        "docker-save-app.tar.zst",
        "docker-save-base.tar",
        "docker25-save-app.tar",
        "oci-archive-app.tar",
        "oci-archive-base-multiarch.tar",
        "oci-layout",
    ],
)
def test_real_archives_verify(run_cli, tmp_path, name):
    result = run_cli("index", os.path.join(REAL, name), "--store", tmp_path, "--verify", "--repository", "x/y")
    assert result.exit_code == 0, result.output
    assert (
        json.loads(run_cli("sql", "SELECT count(*) AS n FROM images", "--store", tmp_path, "--format", "json").stdout)[
            "n"
        ]
        > 0
    )


def _sha512_layout(root, layer_bytes):
    """A layout whose blobs are all named by sha512, as the image spec allows; its one layer holds
    `layer_bytes` (the size it claims, but maybe other bytes)."""
    blobs = Blobs()

    def add(data, media_type):
        digest = "sha512:" + hashlib.sha512(data).hexdigest()
        blobs.blobs[digest] = data
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    layer = add(b"good-layer", OCI_LAYER_GZ)
    config = add(b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}', OCI_CONFIG)
    manifest = add(
        dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": [layer]}), OCI_MANIFEST
    )
    blobs.blobs[layer["digest"]] = layer_bytes
    write_dir(str(root), blobs.layout_files([named(manifest, "cr.example/app:1")]))
    return layer["digest"]


@pytest.mark.parametrize("form", ["layout", "tar", "gzip"])
def test_sha512_layers_are_hashed_by_sha512(run_cli, tmp_path, form):
    layer = _sha512_layout(tmp_path / "bad", b"evil-layer")
    _sha512_layout(tmp_path / "good", b"good-layer")

    def source(name):
        if form == "layout":
            return tmp_path / name
        files = {
            os.path.relpath(os.path.join(folder, file), tmp_path / name): open(os.path.join(folder, file), "rb").read()
            for folder, _, names in os.walk(tmp_path / name)
            for file in names
        }
        raw = tar_bytes(files)
        path = tmp_path / f"{name}.tar"
        path.write_bytes(gzip.compress(raw) if form == "gzip" else raw)
        return path

    good = run_cli("index", source("good"), "--store", tmp_path / "a", "--verify")
    assert good.exit_code == 0 and "not verified" not in good.stderr, good.output
    bad = run_cli("index", source("bad"), "--store", tmp_path / "b", "--verify")
    assert bad.exit_code == 1, bad.output
    assert f"layer {layer} content hashes to sha512:" in bad.stderr


def _crane_save(layer_text: bytes, diff_id_of: bytes) -> bytes:
    """A docker save as go-containerregistry (`crane pull`, `tarball.Write`) writes it: the config
    named `sha256:<hex>`, each layer gzip-compressed as `<hex>.tar.gz`; the config's diff_id is
    that of the tar of `diff_id_of`."""

    def layer_tar(text):
        return tar_bytes({"hello.txt": text})

    stored = gzip.compress(layer_tar(layer_text), mtime=0)
    config = dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [digest_of(layer_tar(diff_id_of))]},
        }
    )
    layer_name = hashlib.sha256(stored).hexdigest() + ".tar.gz"
    return tar_bytes(
        {
            digest_of(config): config,
            layer_name: stored,
            "manifest.json": dumps([{"Config": digest_of(config), "RepoTags": ["app:1"], "Layers": [layer_name]}]),
        }
    )


@pytest.mark.parametrize("compress", ["", "gzip"])
def test_compressed_layers_of_a_save_are_checked_decompressed(run_cli, tmp_path, compress):
    def archive(name, raw):
        path = tmp_path / name
        path.write_bytes(gzip.compress(raw) if compress else raw)
        return path

    good = run_cli("index", archive("good.tar", _crane_save(b"hello", b"hello")), "--store", tmp_path / "a", "--verify")
    assert good.exit_code == 0, good.output
    bad = run_cli("index", archive("bad.tar", _crane_save(b"evil!", b"hello")), "--store", tmp_path / "b", "--verify")
    assert bad.exit_code == 1 and "content hashes to" in bad.stderr, bad.output


def _crane_images(images: list[tuple[str, bytes, bytes]]) -> bytes:
    """A docker save as go-containerregistry writes it, of (tag, stored layer, the layer's tar)
    images: each config's diff_id is that of the tar, its layer member holds the stored bytes."""
    files, entries = {}, []
    for number, (tag, stored, layer_tar) in enumerate(images):
        config = dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "created": f"2026-01-0{number + 1}T00:00:00Z",
                "rootfs": {"type": "layers", "diff_ids": [digest_of(layer_tar)]},
            }
        )
        layer_name = hashlib.sha256(stored).hexdigest() + ".tar.gz"
        files[digest_of(config)] = config
        files[layer_name] = stored
        entries.append({"Config": digest_of(config), "RepoTags": [tag], "Layers": [layer_name]})
    files["manifest.json"] = dumps(entries)
    return tar_bytes(files)


def _layers_by_tag(run_cli, store) -> dict[str, list]:
    query = "select t.tag, i.layers from images i join tags t on t.image_id = i.id order by t.tag"
    result = run_cli("sql", query, "--store", store, "--format", "json")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    return {row["tag"]: [(layer["digest"], layer["size"]) for layer in row["layers"]] for row in rows}


def _skopeo_layers(archive) -> list[tuple[str, int]]:
    """(digest, size) of each layer, as `skopeo inspect` reports a docker save's."""
    judged = subprocess.run(
        ["skopeo", "inspect", "--raw", f"docker-archive:{archive}"], check=True, capture_output=True, timeout=60
    )
    return [(layer["digest"], layer["size"]) for layer in json.loads(judged.stdout)["layers"]]


@pytest.mark.parametrize("packing", ["tar", "tar.gz", "stdin"])
def test_a_crane_save_gives_its_layers_decompressed_sizes_as_skopeo_does(run_cli, tmp_path, packing):
    """A layer stored gzip-compressed has the diff_id of its tar as digest, so its size is the
    tar's too, as skopeo reports it; it was the stored gzip file's size."""
    layer_tar = tar_bytes({"hello.txt": b"hello" * 1000})
    raw = _crane_images([("app:1", gzip.compress(layer_tar, mtime=0), layer_tar)])
    plain = tmp_path / "crane.tar"
    plain.write_bytes(raw)
    skopeo_layers = _skopeo_layers(plain)
    assert skopeo_layers == [(digest_of(layer_tar), len(layer_tar))]
    store = tmp_path / "store"
    if packing == "stdin":
        result = run_cli("index", "-", "--store", store, input=raw)
    else:
        path = plain if packing == "tar" else tmp_path / "crane.tar.gz"
        if packing == "tar.gz":
            path.write_bytes(gzip.compress(raw, mtime=0))
        result = run_cli("index", path, "--store", store)
    assert result.exit_code == 0, result.output
    assert _layers_by_tag(run_cli, store) == {"1": skopeo_layers}


@pytest.mark.parametrize("layer_packing", ["xz", "bzip2"])
@pytest.mark.parametrize("packing", ["tar", "tar.xz", "tar.bz2", "stdin"])
def test_xz_and_bzip2_layers_are_read_decompressed_as_docker_load_reads_them(run_cli, tmp_path, layer_packing, packing):
    """`docker load` decompresses an xz or bzip2 layer of a docker save before it checks the
    diff_id, as it does a gzip one, and skopeo counts its size so: the size is the tar's, and
    --verify checks the tar's digest, whether the archive is a file, compressed or piped."""
    layer_tar = tar_bytes({"hello.txt": b"hello" * 1000})
    stored = lzma.compress(layer_tar) if layer_packing == "xz" else bz2.compress(layer_tar)
    raw = _crane_images([("app:1", stored, layer_tar)])
    plain = tmp_path / "save.tar"
    plain.write_bytes(raw)
    skopeo_layers = _skopeo_layers(plain)
    assert skopeo_layers == [(digest_of(layer_tar), len(layer_tar))]
    for verify in ([], ["--verify"]):
        store = tmp_path / f"store{len(verify)}"
        if packing == "stdin":
            result = run_cli("index", "-", "--store", store, *verify, input=raw)
        else:
            path = plain
            if packing != "tar":
                path = tmp_path / f"save.{packing}"
                path.write_bytes(lzma.compress(raw) if packing == "tar.xz" else bz2.compress(raw))
            result = run_cli("index", path, "--store", store, *verify)
        assert result.exit_code == 0, result.output
        assert _layers_by_tag(run_cli, store) == {"1": skopeo_layers}


@pytest.mark.parametrize("layer_packing", ["xz", "bzip2"])
def test_a_corrupt_xz_or_bzip2_layer_fails_its_image(run_cli, tmp_path, layer_packing):
    layer_tar = tar_bytes({"hello.txt": b"hello" * 1000})
    stored = bytearray(lzma.compress(layer_tar) if layer_packing == "xz" else bz2.compress(layer_tar))
    for i in range(len(stored) // 2, len(stored) // 2 + 8):
        stored[i] ^= 0x5A
    path = tmp_path / "save.tar"
    path.write_bytes(_crane_images([("app:1", bytes(stored), layer_tar)]))
    result = run_cli("index", path, "--store", tmp_path / "store")
    assert result.exit_code == 1
    layer = hashlib.sha256(stored).hexdigest() + ".tar.gz"
    [line] = result.stderr.splitlines()
    assert line.startswith(f"imgdex: {path}: layer {layer!r} cannot be decompressed ("), line


@pytest.mark.parametrize("packing", ["tar", "tar.gz"])
def test_a_layer_that_expands_past_what_gzip_can_fails_only_its_image(run_cli, tmp_path, packing):
    """Counting a compressed layer's size means decompressing it: 64 MiB of zeros in 2 KiB of
    zstd is refused, where a zstd layer could otherwise take hours to count."""
    bomb_tar = b"\0" * (64 << 20)
    bomb = zstandard.ZstdCompressor(level=19).compress(bomb_tar)
    assert len(bomb) * 1032 + (1 << 20) < len(bomb_tar)
    good_tar = tar_bytes({"ok.txt": b"ok"})
    raw = _crane_images([("bomb:1", bomb, bomb_tar), ("good:1", gzip.compress(good_tar, mtime=0), good_tar)])
    path = tmp_path / f"crane.{packing}"
    path.write_bytes(gzip.compress(raw, mtime=0) if packing == "tar.gz" else raw)
    store = tmp_path / "store"
    result = run_cli("index", path, "--store", store)
    assert result.exit_code == 1
    layer = hashlib.sha256(bomb).hexdigest() + ".tar.gz"
    assert result.stderr == f"imgdex: {path}: layer {layer!r} expands more than 1032-fold, as no gzip layer can\n"
    assert result.stdout.startswith("indexed 1 images, 1 failed")
    assert _layers_by_tag(run_cli, store) == {"1": [(digest_of(good_tar), len(good_tar))]}
