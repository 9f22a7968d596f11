"""Throughput floor for indexing: the least work any indexer has to do.

For an OCI image layout that is: read and parse ``index.json``, then read and
parse every manifest blob and the config blob each manifest references. No
hashing, no validation, no storage. An indexer that does more (verifies
digests, writes a database) can be compared against this number.

For classic ``docker save`` archives: open the tar with ``tarfile``, read and
parse ``manifest.json`` and the config member(s) it names.

Uncompressed archives are read with random access (tarfile only walks the
member headers). Gzip-compressed archives are read in a single streaming
pass, keeping small top-level members in memory until ``manifest.json`` has
been seen: ``docker save`` writes ``manifest.json`` after the layers, and
seeking backwards in a gzip stream means decompressing again from the start,
so any other approach costs two or more full decompressions. isal's igzip is
used for decompression when installed (``--stdlib-gzip`` turns it off).

Usage::

    python bench/floor.py oci-layout DIR [--repeat 3] [--cold] [--json]
    python bench/floor.py docker-save FILE [FILE ...] [--repeat 3] [--cold] [--json]

Without ``--cold`` every run reads from the page cache if the input was read
(or written) recently; ``--cold`` drops the input files from the cache before
each run (posix_fadvise, no root needed).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tarfile
import time

try:
    from isal import igzip as _igzip
except ImportError:  # pragma: no cover - depends on the environment
    _igzip = None

MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
_INDEX_TYPES = (MT_OCI_INDEX, MT_DOCKER_LIST)

# Top-level members larger than this are never config candidates.
_SMALL_MEMBER = 16 << 20


def _read_blob(blobs: str, digest: str) -> bytes:
    algo, _, hexd = digest.partition(":")
    with open(os.path.join(blobs, algo, hexd), "rb") as f:
        return f.read()


def floor_oci_layout(path: str) -> tuple[int, float]:
    """Parse index.json, every manifest and every config; return (images, seconds).

    Nested image indexes (multi-platform images) are followed; each image
    manifest counts as one image.
    """
    t0 = time.perf_counter()
    blobs = os.path.join(path, "blobs")
    with open(os.path.join(path, "index.json"), "rb") as f:
        pending = list(json.loads(f.read()).get("manifests", ()))
    images = 0
    while pending:
        desc = pending.pop()
        doc = json.loads(_read_blob(blobs, desc["digest"]))
        if desc.get("mediaType") in _INDEX_TYPES or "manifests" in doc:
            pending.extend(doc.get("manifests", ()))
            continue
        json.loads(_read_blob(blobs, doc["config"]["digest"]))
        images += 1
    return images, time.perf_counter() - t0


def _is_gzip(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _docker_save_random_access(path: str) -> int:
    with tarfile.open(path, "r:") as tf:
        manifest = json.loads(tf.extractfile("manifest.json").read())
        for entry in manifest:
            json.loads(tf.extractfile(entry["Config"]).read())
    return len(manifest)


def _docker_save_streaming(path: str, use_isal: bool) -> int:
    opener = _igzip.open if (use_isal and _igzip is not None) else gzip.open
    small: dict[str, bytes] = {}
    with opener(path, "rb") as raw, tarfile.open(fileobj=raw, mode="r|") as tf:
        for member in tf:
            # manifest.json, repositories and <config>.json live at the top level.
            if member.isfile() and "/" not in member.name and member.size <= _SMALL_MEMBER:
                small[member.name] = tf.extractfile(member).read()
    manifest = json.loads(small["manifest.json"])
    for entry in manifest:
        json.loads(small[entry["Config"]])
    return len(manifest)


def floor_docker_save(paths, *, use_isal: bool = True) -> tuple[int, float]:
    """Parse manifest.json and the config of each archive; return (images, seconds)."""
    t0 = time.perf_counter()
    images = 0
    for path in paths:
        if _is_gzip(path):
            images += _docker_save_streaming(path, use_isal)
        else:
            images += _docker_save_random_access(path)
    return images, time.perf_counter() - t0


def _evict(paths) -> None:
    # io_counter.py sits next to this file; import it without needing a package.
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "_bench_io_counter", os.path.join(os.path.dirname(os.path.abspath(__file__)), "io_counter.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.evict_page_cache(paths)


def _rate(rate: float) -> str:
    return f"{rate:,.0f}" if rate >= 100 else f"{rate:.3g}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="floor.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("oci-layout", help="floor for one OCI image layout")
    sp.add_argument("dir")
    sp = sub.add_parser("docker-save", help="floor for docker-save archives")
    sp.add_argument("files", nargs="+")
    sp.add_argument(
        "--stdlib-gzip", action="store_true", help="decompress with the gzip module even if isal is installed"
    )
    for sp in sub.choices.values():
        sp.add_argument("--repeat", type=int, default=1, help="runs (default 1)")
        sp.add_argument("--cold", action="store_true", help="drop the inputs from the page cache before every run")
        sp.add_argument("--json", action="store_true", help="print one JSON object per run")
    args = p.parse_args(argv)

    if args.cmd == "oci-layout":
        run = lambda: floor_oci_layout(args.dir)  # noqa: E731
    else:
        run = lambda: floor_docker_save(args.files, use_isal=not args.stdlib_gzip)  # noqa: E731

    inputs = [args.dir] if args.cmd == "oci-layout" else args.files
    best = None
    for r in range(args.repeat):
        if args.cold:
            _evict(inputs)
        images, secs = run()
        rate = images / secs if secs > 0 else float("inf")
        if args.json:
            print(
                json.dumps(
                    {
                        "kind": args.cmd,
                        "run": r,
                        "images": images,
                        "seconds": round(secs, 6),
                        "images_per_s": round(rate, 1),
                    }
                )
            )
        else:
            print(f"run {r}: {images} images in {secs:.3f}s = {_rate(rate)} images/s")
        best = secs if best is None else min(best, secs)
    if args.repeat > 1 and not args.json:
        print(f"best: {_rate(images / best if best > 0 else float('inf'))} images/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
