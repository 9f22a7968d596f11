"""Layouts that reach the same manifests many times: what a run costs against reading each blob once.

Three OCI layouts around one image index that lists one image --listings times (default 20,000;
about 2 MB):

- tags: --tags (default 50) tags of one repository on the index. Every tag's records of the
  children are the same, so a run reads each blob once;
- names: --names (default 5,000) repositories on the index, and 5 plain images. Each repository's
  records differ, so the work grows with the names until the source's bound on walks in all;
  past it each name is one error, and the plain images land (the run exits 1, as it says);
- mirror (with --mirror): 100 repositories on an index of 2,000 distinct images, within the bound.

The floor reads and `json.loads` each distinct blob of the layout once (index.json, the index,
each manifest and config): what a run must do at least. Each figure is one whole `imgdex index`
process into a new store, the median of --repeat runs.

Usage::

    python bench/repeats_bench.py [--listings 20000] [--tags 50] [--names 5000] [--repeat 3] [--mirror] [--module]

--module runs `python -m queries.cli` from this checkout rather than the installed console
script, to compare two checkouts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import corpus  # noqa: E402

COMPACT = corpus.JSON_COMPACT


class Layout:
    """Blobs written once by digest, and the top-level descriptors of index.json."""

    def __init__(self, path: str):
        shutil.rmtree(path, ignore_errors=True)
        self.path = path
        self.blobs = os.path.join(path, "blobs", "sha256")
        os.makedirs(self.blobs)

    def put(self, data: bytes, media_type: str) -> dict:
        hexd = corpus.sha256_hex(data)
        target = os.path.join(self.blobs, hexd)
        if not os.path.exists(target):
            with open(target, "wb") as f:
                f.write(data)
        return {"mediaType": media_type, "digest": "sha256:" + hexd, "size": len(data)}

    def image(self, seed: int) -> dict:
        tar = corpus.small_tar([(f"file{seed}", b"%d" % seed)])
        layer = self.put(corpus.gzip_blob(tar), corpus.MT_OCI_LAYER_GZIP)
        config = {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + corpus.sha256_hex(tar)]},
            "config": {"Env": [f"SEED={seed}"]},
        }
        config_desc = self.put(json.dumps(config, **COMPACT).encode(), corpus.MT_OCI_CONFIG)
        manifest = {
            "schemaVersion": 2,
            "mediaType": corpus.MT_OCI_MANIFEST,
            "config": config_desc,
            "layers": [layer],
        }
        return self.put(json.dumps(manifest, **COMPACT).encode(), corpus.MT_OCI_MANIFEST)

    def index(self, children: list[dict]) -> dict:
        doc = {"schemaVersion": 2, "mediaType": corpus.MT_OCI_INDEX, "manifests": children}
        return self.put(json.dumps(doc, **COMPACT).encode(), corpus.MT_OCI_INDEX)

    def finish(self, top: list[dict]) -> str:
        with open(os.path.join(self.path, "index.json"), "w") as f:
            json.dump({"schemaVersion": 2, "mediaType": corpus.MT_OCI_INDEX, "manifests": top}, f, **COMPACT)
        with open(os.path.join(self.path, "oci-layout"), "w") as f:
            f.write('{"imageLayoutVersion":"1.0.0"}')
        return self.path


def named(descriptor: dict, ref: str) -> dict:
    return dict(descriptor, annotations={corpus.REF_NAME: ref})


def repeated_index(layout: Layout, listings: int) -> dict:
    return layout.index([layout.image(0)] * listings)


def make_tags(path: str, listings: int, tags: int) -> str:
    layout = Layout(path)
    index = repeated_index(layout, listings)
    return layout.finish([named(index, f"{corpus.REGISTRY}/team/app:v{i}") for i in range(tags)])


def make_names(path: str, listings: int, names: int) -> str:
    layout = Layout(path)
    index = repeated_index(layout, listings)
    top = [named(index, f"{corpus.REGISTRY}/mirror{i}/app:v1") for i in range(names)]
    top += [named(layout.image(1 + i), f"{corpus.REGISTRY}/plain/app:v{i}") for i in range(5)]
    return layout.finish(top)


def make_mirror(path: str) -> str:
    layout = Layout(path)
    index = layout.index([layout.image(i) for i in range(2000)])
    return layout.finish([named(index, f"{corpus.REGISTRY}/mirror{i}/app:v1") for i in range(100)])


def floor(path: str) -> float:
    """Read and parse index.json and each distinct blob it leads to, once."""
    started = time.perf_counter()
    with open(os.path.join(path, "index.json"), "rb") as f:
        pending = [d["digest"] for d in json.loads(f.read())["manifests"]]
    seen: set[str] = set()
    while pending:
        digest = pending.pop()
        if digest in seen:
            continue
        seen.add(digest)
        with open(os.path.join(path, "blobs", "sha256", digest.split(":")[1]), "rb") as f:
            doc = json.loads(f.read())
        pending.extend(d["digest"] for d in doc.get("manifests", ()))
        if "layers" in doc:  # a manifest: its config too
            pending.append(doc["config"]["digest"])
    return time.perf_counter() - started


def imgdex(module: bool) -> list[str]:
    beside = os.path.join(os.path.dirname(sys.executable), "imgdex")
    if os.access(beside, os.X_OK) and not module:
        return [beside]
    return [sys.executable, "-m", "queries.cli"]  # this checkout's code, run from its root


def index_run(path: str, work: str, module: bool) -> tuple[float, int, str]:
    """(wall seconds, exit code, the summary and the count of error lines) of one run into a new store."""
    store = os.path.join(work, "store")
    shutil.rmtree(store, ignore_errors=True)
    started = time.perf_counter()
    done = subprocess.run(
        [*imgdex(module), "index", f"oci:{path}", "--store", store], capture_output=True, text=True, cwd=ROOT
    )
    wall = time.perf_counter() - started
    if done.returncode not in (0, 1) or "Traceback" in done.stderr:
        raise SystemExit(f"imgdex failed ({done.returncode}):\n{done.stderr[-2000:]}")
    said = (done.stdout + done.stderr).strip().splitlines()
    errors = sum(line.startswith("imgdex: ") for line in said)
    summary = next((line for line in reversed(said) if line.startswith("indexed ")), "")
    return wall, done.returncode, f"{summary}; {errors} error lines"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listings", type=int, default=20_000)
    parser.add_argument("--tags", type=int, default=50)
    parser.add_argument("--names", type=int, default=5_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--mirror", action="store_true", help="also the 100 repositories on 2,000 images")
    parser.add_argument("--module", action="store_true", help="run `python -m queries.cli` from this checkout")
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "imgdex-bench-repeats"))
    args = parser.parse_args()

    cases = [
        ("tags", lambda p: make_tags(p, args.listings, args.tags)),
        ("names", lambda p: make_names(p, args.listings, args.names)),
    ]
    if args.mirror:
        cases.append(("mirror", make_mirror))
    for label, make in cases:
        path = make(os.path.join(args.work, label))
        walls, floors = [], []
        for _ in range(args.repeat):
            floors.append(floor(path))
            wall, code, summary = index_run(path, args.work, args.module)
            walls.append(wall)
        wall, base = statistics.median(walls), statistics.median(floors)
        print(
            f"[repeats] {label}: imgdex index {wall:.2f} s (runs {min(walls):.2f}-{max(walls):.2f} s, exit {code}: "
            f"{summary})  ratio {wall / base:.1f}x vs reading each blob once ({base:.3f} s)",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
