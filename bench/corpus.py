"""Synthetic image corpus generator for imgdex benchmarks.

Three kinds of input can be produced, all deterministic for a given ``--seed``:

``oci-layout DIR --images N``
    One OCI image layout holding N single-platform images. All images share
    ``--base-layers`` gzip layers and each has one small unique top layer.
    ``index.json`` names every image with ``org.opencontainers.image.ref.name``
    set to a full reference (``bench.example/team/app<i % repos>:t<i>``).

``docker-save DIR --images N``
    N classic ``docker save`` archives (``<id>/layer.tar``, ``<id>/VERSION``,
    ``<id>/json``, ``<config-hex>.json``, ``manifest.json``, ``repositories``).
    Members are stored in lexical order, as ``docker save`` does, so
    ``manifest.json`` and ``repositories`` are the last members.

``big-docker-save PATH --size BYTES``
    One classic archive whose layer tars add up to about BYTES, spread over
    ``--layers`` layers. Layer data is streamed, never held in memory. Layer
    directories come first (base to top), then the config, ``manifest.json``
    and ``repositories``, because the config can only be written once the
    layer digests are known.

``--gzip`` writes ``.tar.gz`` archives (isal's igzip when installed, else the
standard gzip module). Layer payloads are pseudo-random text with some binary
noise, which compresses roughly 3x with deflate.

Only the standard library is required.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import gzip
import hashlib
import io
import itertools
import json
import os
import random
import re
import sys
import tarfile
import time

try:  # optional, much faster deflate
    from isal import igzip as _igzip
except ImportError:  # pragma: no cover - depends on the environment
    _igzip = None

MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"

REGISTRY = "bench.example"
NAMESPACE = "team"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# 2026-11-29T10:54:27Z, the newest timestamp the corpus uses.
EPOCH_NS = int(datetime.datetime(2026, 11, 29, 10, 54, 27, tzinfo=datetime.timezone.utc).timestamp()) * 10**9
# Fixed mtime for tar members so output only depends on the seed.
TAR_MTIME = EPOCH_NS // 10**9

BLOCK = tarfile.BLOCKSIZE  # 512
_EOF = bytes(2 * BLOCK)

JSON_COMPACT = {"separators": (",", ":")}


# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def timestamp(ns: int) -> str:
    """RFC 3339 UTC timestamp with nanoseconds, e.g. 2026-11-29T10:54:27.000347894Z."""
    secs, frac = divmod(ns, 10**9)
    dt = datetime.datetime.fromtimestamp(secs, datetime.timezone.utc)
    return f"{dt:%Y-%m-%dT%H:%M:%S}.{frac:09d}Z"


def parse_size(text: str) -> int:
    """Parse '1073741824', '1G', '1GiB', '512M', '64k' (binary multiples)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}")
    unit = m.group(2).lower()
    mult = 1024 ** ("kmgt".index(unit) + 1) if unit else 1
    return int(float(m.group(1)) * mult)


def _pad(n: int) -> int:
    return -n % BLOCK


@functools.lru_cache(maxsize=256)
def _tar_header(
    name: str, size: int = 0, *, directory: bool = False, mode: int | None = None, mtime: int = TAR_MTIME
) -> bytes:
    ti = tarfile.TarInfo(name)
    ti.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    ti.size = 0 if directory else size
    ti.mode = mode if mode is not None else (0o755 if directory else 0o644)
    ti.mtime = mtime
    ti.uname = ti.gname = "root"
    return ti.tobuf(format=tarfile.USTAR_FORMAT)


def small_tar(members: list[tuple[str, bytes | None]]) -> bytes:
    """Build an uncompressed tar in memory.

    ``members`` is a list of (name, data); data None means a directory.
    Like archive/tar in Go (and unlike tarfile.close()), the archive ends
    with exactly two zero blocks and no record padding.
    """
    parts = []
    for name, data in members:
        if data is None:
            parts.append(_tar_header(name.rstrip("/") + "/", directory=True))
        else:
            parts.append(_tar_header(name, len(data)))
            parts.append(data)
            parts.append(bytes(_pad(len(data))))
    parts.append(_EOF)
    return b"".join(parts)


def gzip_blob(data: bytes) -> bytes:
    # stdlib gzip on purpose: the output (and so the blob digest) must not
    # depend on whether isal happens to be installed.
    return gzip.compress(data, compresslevel=6, mtime=0)


def open_gzip_writer(path: str, level: int):
    """Binary gzip writer for a whole archive; isal when available."""
    if _igzip is not None:
        return _igzip.IGzipFile(path, "wb", compresslevel=max(0, min(level, 3)), mtime=0)
    return gzip.GzipFile(path, "wb", compresslevel=max(1, min(level, 9)), mtime=0)


def make_pool(seed: int, size: int = 4 << 20) -> bytes:
    """Pseudo-random, text-like data (deflate ratio ~3) used as layer payload.

    Words drawn from a small vocabulary with a Zipf-like distribution,
    interleaved with short runs of random bytes. Deflate only looks back
    32 KiB, so cycling through a 4 MiB pool does not make output any more
    compressible than the pool itself.
    """
    rng = random.Random(f"pool-{seed}")
    alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789_-./ ="
    vocab = [bytes(rng.choices(alphabet, k=rng.randint(2, 14))) for _ in range(2048)]
    cum = list(itertools.accumulate(1.0 / (i + 1) for i in range(len(vocab))))
    out = bytearray()
    while len(out) < size:
        out += b" ".join(rng.choices(vocab, cum_weights=cum, k=2048))
        out += b"\n"
        out += rng.randbytes(rng.randint(0, 256))
    return bytes(out[:size])


class _Payload:
    """Slices of a pool; ``take(n, offset)`` is a cheap memoryview."""

    def __init__(self, pool: bytes):
        self.size = len(pool)
        self._mv = memoryview(pool + pool)

    def take(self, n: int, offset: int) -> memoryview:
        assert n <= self.size
        offset %= self.size
        return self._mv[offset : offset + n]

    def chunks(self, total: int, offset: int, chunk: int = 1 << 20):
        left = total
        while left > 0:
            n = min(chunk, left)
            yield self.take(n, offset)
            offset += n
            left -= n


def _image_files(rng: random.Random, payload: _Payload, i: int, repo: str) -> list:
    """Members of the unique top layer of image ``i``."""
    build = (f"image={REGISTRY}/{NAMESPACE}/{repo}:t{i}\nbuild={i}\nrevision={rng.randbytes(20).hex()}\n").encode()
    blob = bytes(payload.take(rng.randint(256, 2048), rng.randrange(payload.size)))
    return [
        ("app", None),
        ("app/BUILD", build),
        ("app/entrypoint.sh", b'#!/bin/sh\nexec /app/server "$@"\n'),
        (f"app/data-{i}.txt", blob),
    ]


def _base_layer_tars(seed: int, count: int, payload: _Payload) -> list[bytes]:
    rng = random.Random(f"base-{seed}")
    tars = []
    for k in range(count):
        members = [
            ("etc", None),
            ("etc/bench-release", f"NAME=bench-base\nLAYER={k}\n".encode()),
            ("usr", None),
            ("usr/lib", None),
            (f"usr/lib/bench{k}", None),
        ]
        for j in range(rng.randint(2, 5)):
            data = bytes(payload.take(rng.randint(1024, 8192), rng.randrange(payload.size)))
            members.append((f"usr/lib/bench{k}/lib{j}.so", data))
        tars.append(small_tar(members))
    return tars


def _base_history(base_diff_ids: list[str], created: list[str]) -> list[dict]:
    hist = []
    for k, diff_id in enumerate(base_diff_ids):
        hist.append({"created": created[k], "created_by": f"/bin/sh -c #(nop) ADD file:{diff_id[7:71]} in / "})
    return hist


def make_config(
    *, created: str, base_created: list[str], repo: str, i: int, diff_ids: list[str], revision: str
) -> dict:
    """A realistic image config (what buildkit writes for a small service)."""
    n_base = len(base_created)
    labels = {
        "org.opencontainers.image.source": f"https://git.{REGISTRY}/{NAMESPACE}/{repo}",
        "org.opencontainers.image.revision": revision,
        "org.opencontainers.image.version": f"t{i}",
        "org.opencontainers.image.title": repo,
        "com.example.team": NAMESPACE,
        "com.example.build": str(i),
    }
    history = _base_history(diff_ids[:n_base], base_created)
    history += [
        {
            "created": created,
            "created_by": f"ENV APP_NAME={repo} APP_BUILD={i}",
            "comment": "buildkit.dockerfile.v0",
            "empty_layer": True,
        },
        {
            "created": created,
            "created_by": "LABEL " + " ".join(f"{k}={v}" for k, v in labels.items()),
            "comment": "buildkit.dockerfile.v0",
            "empty_layer": True,
        },
        {"created": created, "created_by": "WORKDIR /app", "comment": "buildkit.dockerfile.v0", "empty_layer": True},
    ]
    for _ in diff_ids[n_base:]:
        history.append(
            {"created": created, "created_by": "COPY app/ /app/ # buildkit", "comment": "buildkit.dockerfile.v0"}
        )
    history += [
        {
            "created": created,
            "created_by": "EXPOSE map[8080/tcp:{}]",
            "comment": "buildkit.dockerfile.v0",
            "empty_layer": True,
        },
        {
            "created": created,
            "created_by": 'CMD ["serve" "--port" "8080"]',
            "comment": "buildkit.dockerfile.v0",
            "empty_layer": True,
        },
    ]
    return {
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": {
            "User": "1000:1000",
            "ExposedPorts": {"8080/tcp": {}},
            "Env": [PATH_ENV, f"APP_NAME={repo}", f"APP_BUILD={i}", "LANG=C.UTF-8"],
            "Entrypoint": ["/app/entrypoint.sh"],
            "Cmd": ["serve", "--port", "8080"],
            "WorkingDir": "/app",
            "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    }


def _base_created(rng: random.Random, count: int) -> list[str]:
    # Base layers: a few months before the newest image.
    t = EPOCH_NS - 200 * 86400 * 10**9 + rng.randrange(10**9)
    out = []
    for _ in range(count):
        out.append(timestamp(t))
        t += rng.randrange(60, 3600) * 10**9 + rng.randrange(10**9)
    return out


def _image_created(rng: random.Random, i: int, n: int) -> str:
    # Image i is (n - i) minutes older than the newest, plus jitter.
    return timestamp(EPOCH_NS - (n - 1 - i) * 60 * 10**9 + rng.randrange(10**9))


def _ensure_empty_dir(path: str) -> None:
    if os.path.exists(path):
        if not os.path.isdir(path) or os.listdir(path):
            raise SystemExit(f"{path}: exists and is not an empty directory")
    else:
        os.makedirs(path)


# --------------------------------------------------------------------------
# OCI image layout
# --------------------------------------------------------------------------


def write_oci_layout(path: str, images: int, *, base_layers: int = 3, seed: int = 0, repos: int = 50) -> dict:
    """Write an OCI image layout with ``images`` images; returns a summary."""
    _ensure_empty_dir(path)
    blob_dir = os.path.join(path, "blobs", "sha256")
    os.makedirs(blob_dir)
    rng = random.Random(seed)
    payload = _Payload(make_pool(seed, 1 << 20))
    written: set[str] = set()
    stats = {"blobs": 0, "bytes": 0}

    def put(data: bytes) -> str:
        hexd = sha256_hex(data)
        if hexd not in written:
            with open(os.path.join(blob_dir, hexd), "wb") as f:
                f.write(data)
            written.add(hexd)
            stats["blobs"] += 1
            stats["bytes"] += len(data)
        return "sha256:" + hexd

    base_tars = _base_layer_tars(seed, base_layers, payload)
    base_created = _base_created(rng, base_layers)
    base_diff_ids = ["sha256:" + sha256_hex(t) for t in base_tars]
    base_descs = []
    for t in base_tars:
        gz = gzip_blob(t)
        base_descs.append({"mediaType": MT_OCI_LAYER_GZIP, "digest": put(gz), "size": len(gz)})

    index_entries = []
    for i in range(images):
        repo = f"app{i % repos}"
        top_tar = small_tar(_image_files(rng, payload, i, repo))
        top_gz = gzip_blob(top_tar)
        top_desc = {"mediaType": MT_OCI_LAYER_GZIP, "digest": put(top_gz), "size": len(top_gz)}
        config = make_config(
            created=_image_created(rng, i, images),
            base_created=base_created,
            repo=repo,
            i=i,
            diff_ids=base_diff_ids + ["sha256:" + sha256_hex(top_tar)],
            revision=rng.randbytes(20).hex(),
        )
        config_bytes = json.dumps(config, **JSON_COMPACT).encode()
        manifest = {
            "schemaVersion": 2,
            "mediaType": MT_OCI_MANIFEST,
            "config": {"mediaType": MT_OCI_CONFIG, "digest": put(config_bytes), "size": len(config_bytes)},
            "layers": base_descs + [top_desc],
        }
        manifest_bytes = json.dumps(manifest, **JSON_COMPACT).encode()
        index_entries.append(
            {
                "mediaType": MT_OCI_MANIFEST,
                "digest": put(manifest_bytes),
                "size": len(manifest_bytes),
                "annotations": {REF_NAME: f"{REGISTRY}/{NAMESPACE}/{repo}:t{i}"},
            }
        )

    index = {"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": index_entries}
    with open(os.path.join(path, "index.json"), "w") as f:
        json.dump(index, f, **JSON_COMPACT)
    with open(os.path.join(path, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f, **JSON_COMPACT)
    return {"images": images, **stats}


# --------------------------------------------------------------------------
# classic docker save archives
# --------------------------------------------------------------------------


def v1_layer_id(parent: str, diff_id: str, top_config: bytes | None = None) -> str:
    """Stable pseudo v1 layer id from the chain (parent id + diff id)."""
    h = hashlib.sha256(f"{parent}\n{diff_id}\n".encode())
    if top_config is not None:
        h.update(top_config)
    return h.hexdigest()


def _v1_json(layer_id: str, parent: str, created: str, config: dict | None) -> bytes:
    doc: dict = {"id": layer_id}
    if parent:
        doc["parent"] = parent
    doc["created"] = created
    if config is None:
        doc["container_config"] = {
            "Hostname": "",
            "Domainname": "",
            "User": "",
            "AttachStdin": False,
            "AttachStdout": False,
            "AttachStderr": False,
            "Tty": False,
            "OpenStdin": False,
            "StdinOnce": False,
            "Env": None,
            "Cmd": None,
            "Image": "",
            "Volumes": None,
            "WorkingDir": "",
            "Entrypoint": None,
            "OnBuild": None,
            "Labels": None,
        }
    else:
        doc.update({"architecture": config["architecture"], "os": config["os"], "config": config["config"]})
    return json.dumps(doc, **JSON_COMPACT).encode()


def _layer_ids(diff_ids: list[str], config_bytes: bytes) -> list[str]:
    ids, parent = [], ""
    for k, d in enumerate(diff_ids):
        top = config_bytes if k == len(diff_ids) - 1 else None
        parent = v1_layer_id(parent, d, top)
        ids.append(parent)
    return ids


def _add_bytes(tf: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    ti.mode = mode
    ti.mtime = TAR_MTIME
    tf.addfile(ti, io.BytesIO(data))


def _add_dir(tf: tarfile.TarFile, name: str) -> None:
    ti = tarfile.TarInfo(name)
    ti.type = tarfile.DIRTYPE
    ti.mode = 0o755
    ti.mtime = TAR_MTIME
    tf.addfile(ti)


def _open_archive(path: str, gz: bool, level: int):
    """Returns (TarFile, raw gzip stream or None)."""
    if gz:
        raw = open_gzip_writer(path, level)
        return tarfile.open(fileobj=raw, mode="w", copybufsize=1 << 20), raw
    return tarfile.open(path, mode="w", copybufsize=1 << 20), None


def _manifest_json(config_name: str, tag: str, layer_ids: list[str]) -> bytes:
    return json.dumps(
        [{"Config": config_name, "RepoTags": [tag], "Layers": [f"{lid}/layer.tar" for lid in layer_ids]}],
        **JSON_COMPACT,
    ).encode()


def _repositories_json(tag: str, top_id: str) -> bytes:
    repo, _, t = tag.rpartition(":")
    return json.dumps({repo: {t: top_id}}, **JSON_COMPACT).encode()


def write_docker_save(
    path: str, images: int, *, base_layers: int = 3, seed: int = 0, gz: bool = False, level: int = 1
) -> dict:
    """Write ``images`` classic docker-save archives into directory ``path``."""
    _ensure_empty_dir(path)
    rng = random.Random(seed)
    payload = _Payload(make_pool(seed, 1 << 20))
    base_tars = _base_layer_tars(seed, base_layers, payload)
    base_created = _base_created(rng, base_layers)
    base_diff_ids = ["sha256:" + sha256_hex(t) for t in base_tars]
    ext = ".tar.gz" if gz else ".tar"
    total = 0
    for i in range(images):
        repo = "app"
        tag = f"{REGISTRY}/{NAMESPACE}/{repo}:t{i}"
        top_tar = small_tar(_image_files(rng, payload, i, repo))
        layer_tars = base_tars + [top_tar]
        diff_ids = base_diff_ids + ["sha256:" + sha256_hex(top_tar)]
        created = _image_created(rng, i, images)
        config = make_config(
            created=created,
            base_created=base_created,
            repo=repo,
            i=i,
            diff_ids=diff_ids,
            revision=rng.randbytes(20).hex(),
        )
        config_bytes = json.dumps(config, **JSON_COMPACT).encode()
        config_name = sha256_hex(config_bytes) + ".json"
        ids = _layer_ids(diff_ids, config_bytes)

        # name -> bytes (None: directory); written in lexical order like docker save
        members: dict[str, bytes | None] = {config_name: config_bytes}
        parent = ""
        for k, (lid, ltar) in enumerate(zip(ids, layer_tars)):
            top = config if k == len(ids) - 1 else None
            members[lid + "/"] = None
            members[lid + "/VERSION"] = b"1.0"
            members[lid + "/json"] = _v1_json(lid, parent, created if top else "1970-01-01T00:00:00Z", top)
            members[lid + "/layer.tar"] = ltar
            parent = lid
        members["manifest.json"] = _manifest_json(config_name, tag, ids)
        members["repositories"] = _repositories_json(tag, ids[-1])

        out = os.path.join(path, f"{repo}-t{i:05d}{ext}")
        tf, raw = _open_archive(out, gz, level)
        try:
            for name in sorted(members):
                data = members[name]
                if data is None:
                    _add_dir(tf, name)
                else:
                    _add_bytes(tf, name, data)
        finally:
            tf.close()
            if raw is not None:
                raw.close()
        total += os.path.getsize(out)
    return {"images": images, "files": images, "bytes": total}


class _LayerStream:
    """File-like object producing one layer tar; hashes what is read.

    tarfile's copy loop requires read(n) to return exactly n bytes until
    the end, so the generated parts are re-chunked through a buffer.
    """

    def __init__(self, parts):
        self._parts = iter(parts)
        self._buf = bytearray()
        self.sha256 = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        buf = self._buf
        while n < 0 or len(buf) < n:
            try:
                buf += next(self._parts)
            except StopIteration:
                break
        if n < 0 or n >= len(buf):
            out = bytes(buf)
            buf.clear()
        else:
            out = bytes(buf[:n])
            del buf[:n]
        self.sha256.update(out)
        return out


def _big_layer_plan(target: int, max_file: int) -> tuple[int, int, int]:
    """(files, bytes per file, exact layer tar size) for a layer of ~target bytes."""
    files = max(1, -(-target // max_file))
    per_file = ((target - len(_EOF)) // files - BLOCK) // BLOCK * BLOCK
    per_file = max(BLOCK, per_file)
    return files, per_file, files * (BLOCK + per_file) + len(_EOF)


def write_big_docker_save(
    path: str,
    size: int,
    *,
    layers: int = 8,
    seed: int = 0,
    gz: bool = False,
    level: int = 1,
    tag: str | None = None,
    max_file: int = 16 << 20,
) -> dict:
    """One docker-save archive whose layer tars total about ``size`` bytes."""
    if layers < 1:
        raise ValueError("layers must be >= 1")
    tag = tag or f"{REGISTRY}/{NAMESPACE}/big:{size}"
    rng = random.Random(seed)
    payload = _Payload(make_pool(seed))
    base_created = _base_created(rng, layers - 1)
    created = timestamp(EPOCH_NS + rng.randrange(10**9))
    per_layer = size // layers
    tf, raw = _open_archive(path, gz, level)
    diff_ids, ids, parent, layer_total = [], [], "", 0
    try:
        for k in range(layers):
            files, per_file, tar_size = _big_layer_plan(per_layer, max_file)
            offsets = [rng.randrange(payload.size) for _ in range(files)]

            def parts(k=k, files=files, per_file=per_file, offsets=offsets):
                for j in range(files):
                    yield _tar_header(f"data/layer{k}/blob{j:04d}.bin", per_file)
                    yield from payload.chunks(per_file, offsets[j])
                yield _EOF

            # Layer ids only need to be unique and stable; the chain id of a
            # real docker save is not reproducible without the layer digest.
            lid = v1_layer_id(parent, f"big-{seed}-{size}-{k}")
            _add_dir(tf, lid + "/")
            _add_bytes(tf, lid + "/VERSION", b"1.0")
            ti = tarfile.TarInfo(lid + "/layer.tar")
            ti.size = tar_size
            ti.mode = 0o644
            ti.mtime = TAR_MTIME
            stream = _LayerStream(parts())
            tf.addfile(ti, stream)
            diff_ids.append("sha256:" + stream.sha256.hexdigest())
            ids.append(lid)
            layer_total += tar_size
            if k < layers - 1:
                _add_bytes(tf, lid + "/json", _v1_json(lid, parent, "1970-01-01T00:00:00Z", None))
            parent = lid

        config = make_config(
            created=created,
            base_created=base_created,
            repo="big",
            i=0,
            diff_ids=diff_ids,
            revision=rng.randbytes(20).hex(),
        )
        config_bytes = json.dumps(config, **JSON_COMPACT).encode()
        config_name = sha256_hex(config_bytes) + ".json"
        top_parent = ids[-2] if len(ids) > 1 else ""
        _add_bytes(tf, ids[-1] + "/json", _v1_json(ids[-1], top_parent, created, config))
        _add_bytes(tf, config_name, config_bytes)
        _add_bytes(tf, "manifest.json", _manifest_json(config_name, tag, ids))
        _add_bytes(tf, "repositories", _repositories_json(tag, ids[-1]))
    finally:
        tf.close()
        if raw is not None:
            raw.close()
    return {"images": 1, "layers": layers, "layer_bytes": layer_total, "bytes": os.path.getsize(path)}


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return str(n)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="corpus.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp, base=True):
        sp.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        if base:
            sp.add_argument("--base-layers", type=int, default=3, help="shared base layers per image (default 3)")

    def compression(sp):
        sp.add_argument("--gzip", action="store_true", help="write .tar.gz")
        sp.add_argument(
            "--compresslevel", type=int, default=1, help="gzip level (default 1; isal supports 0-3, higher is clamped)"
        )

    sp = sub.add_parser("oci-layout", help="one OCI image layout with N images")
    sp.add_argument("dir")
    sp.add_argument("--images", type=int, required=True)
    sp.add_argument("--repos", type=int, default=50, help="repositories to spread over (default 50)")
    common(sp)

    sp = sub.add_parser("docker-save", help="N classic docker-save archives")
    sp.add_argument("dir")
    sp.add_argument("--images", type=int, required=True)
    common(sp)
    compression(sp)

    sp = sub.add_parser("big-docker-save", help="one large classic docker-save archive")
    sp.add_argument("path")
    sp.add_argument("--size", type=parse_size, required=True, help="total layer bytes, e.g. 1048576, 1MiB, 1G")
    sp.add_argument("--layers", type=int, default=8, help="number of layers (default 8)")
    sp.add_argument("--tag", default=None, help="RepoTags entry (default bench.example/team/big:<size>)")
    common(sp, base=False)
    compression(sp)

    args = p.parse_args(argv)
    t0 = time.perf_counter()
    if args.cmd == "oci-layout":
        res = write_oci_layout(args.dir, args.images, base_layers=args.base_layers, seed=args.seed, repos=args.repos)
    elif args.cmd == "docker-save":
        res = write_docker_save(
            args.dir, args.images, base_layers=args.base_layers, seed=args.seed, gz=args.gzip, level=args.compresslevel
        )
    else:
        path = args.path
        if args.gzip and not path.endswith((".gz", ".tgz")):
            path += ".gz"
        res = write_big_docker_save(
            path, args.size, layers=args.layers, seed=args.seed, gz=args.gzip, level=args.compresslevel, tag=args.tag
        )
    dt = time.perf_counter() - t0
    extra = ", ".join(f"{k}={_fmt_bytes(v) if 'bytes' in k else v}" for k, v in res.items())
    print(f"{args.cmd}: {extra} in {dt:.2f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())


def write_records(store: str, records: list, batch: int = 20_000) -> None:
    """Write records straight through the store writer as one run: stores for measuring reads,
    where parsing is not what is measured."""
    from indexer.store.delta_writer import DeltaWriter
    from indexer.store.writer import now_utc

    with DeltaWriter(store) as writer:
        for start in range(0, len(records), batch):
            writer.write(records[start : start + batch], now_utc())
        writer.record_run(
            {
                "run_id": "bench",
                "started_at": now_utc(),
                "finished_at": now_utc(),
                "sources": [],
                "images_indexed": len(records),
                "images_failed": 0,
                "errors": [],
            }
        )
