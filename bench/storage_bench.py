"""Throughput of `imgdex index containers-storage:` against its floor and a `skopeo inspect` loop.

The store is synthetic: the images of `corpus.write_oci_layout` (N of them, default 10,000)
written as containers/storage keeps them with the vfs driver: `vfs-images/images.json` and, per
image, the big-data files `manifest`, `manifest-DIGEST` and the config (layers are not needed: no
reader of metadata opens them). Three figures, measured alternately, medians of --repeat:

- the floor: read and `json.loads` images.json, then every image's manifest and config file;
- imgdex: one `imgdex index containers-storage:[vfs@ROOT]` process into a new store, timed whole
  (start-up, reading, digest checks, the store write), with `--jobs 1` and `--jobs 2`;
- skopeo: `skopeo inspect containers-storage:[vfs@ROOT]ID` once per image for the first --skopeo
  images (each process opens the store and takes its lock), as images/s.

Usage::

    python bench/storage_bench.py [--images 10000] [--repeat 5] [--skopeo 50] [--work DIR] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import corpus  # noqa: E402

from indexer.sources.containers_storage import big_data_file  # noqa: E402


def write_store(layout: str, root: str) -> list[str]:
    """A vfs store holding the layout's images; their ids, in images.json's order."""
    shutil.rmtree(root, ignore_errors=True)
    images = os.path.join(root, "vfs-images")
    os.makedirs(images)
    open(os.path.join(root, "storage.lock"), "wb").close()
    with open(os.path.join(layout, "index.json"), "rb") as f:
        index = json.load(f)
    entries = []
    for descriptor in index["manifests"]:
        with open(os.path.join(layout, "blobs", "sha256", descriptor["digest"].split(":")[1]), "rb") as f:
            manifest = f.read()
        config_digest = json.loads(manifest)["config"]["digest"]
        with open(os.path.join(layout, "blobs", "sha256", config_digest.split(":")[1]), "rb") as f:
            config = f.read()
        image_id = config_digest.split(":")[1]
        digest = descriptor["digest"]
        items = {"manifest": manifest, f"manifest-{digest}": manifest, config_digest: config}
        folder = os.path.join(images, image_id)
        os.makedirs(folder)
        for key, data in items.items():
            with open(os.path.join(folder, big_data_file(key)), "wb") as f:
                f.write(data)
        name = descriptor["annotations"]["org.opencontainers.image.ref.name"].rsplit("/", 1)[-1]
        entries.append(
            {
                "id": image_id,
                "digest": digest,
                "names": [f"localhost/{name}"],
                "layer": hashlib.sha256(image_id.encode()).hexdigest(),
                "big-data-names": list(items),
                "big-data-sizes": {key: len(data) for key, data in items.items()},
                "big-data-digests": {key: "sha256:" + hashlib.sha256(data).hexdigest() for key, data in items.items()},
                "created": "2026-12-07T00:00:00Z",
            }
        )
    with open(os.path.join(images, "images.json"), "w") as f:
        json.dump(entries, f)
    open(os.path.join(images, "images.lock"), "wb").close()
    return [entry["id"] for entry in entries]


def floor(root: str) -> float:
    started = time.perf_counter()
    images = os.path.join(root, "vfs-images")
    with open(os.path.join(images, "images.json"), "rb") as f:
        entries = json.loads(f.read())
    for entry in entries:
        folder = os.path.join(images, entry["id"])
        with open(os.path.join(folder, "manifest"), "rb") as f:
            manifest = json.loads(f.read())
        with open(os.path.join(folder, big_data_file(manifest["config"]["digest"])), "rb") as f:
            json.loads(f.read())
    return time.perf_counter() - started


def imgdex(root: str, store: str, jobs: str) -> float:
    shutil.rmtree(store, ignore_errors=True)
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "queries.cli", "index", f"containers-storage:[vfs@{root}]", "--store", store]
        + ["--quiet", "--jobs", jobs],
        check=True,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def skopeo_loop(root: str, ids: list[str], tmp: str) -> float:
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        return 0.0
    started = time.perf_counter()
    for image_id in ids:
        subprocess.run(
            [skopeo, "inspect", f"containers-storage:[vfs@{root}+{tmp}]{image_id}"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--skopeo", type=int, default=50, help="images inspected one process each (0: none)")
    parser.add_argument("--work", default="/tmp/imgdex-bench")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    layout = os.path.join(args.work, f"oci{args.images}")
    if not os.path.isfile(os.path.join(layout, "index.json")):
        corpus.write_oci_layout(layout, args.images)
    root = os.path.join(args.work, f"containers-storage{args.images}")
    ids = write_store(layout, root)
    run_root = os.path.join(args.work, "containers-storage-run")
    floors, walls, twos, loops = [], [], [], []
    for _ in range(args.repeat):
        floors.append(floor(root))
        walls.append(imgdex(root, os.path.join(args.work, "stores", "containers-storage"), "1"))
        twos.append(imgdex(root, os.path.join(args.work, "stores", "containers-storage"), "2"))
        if args.skopeo:
            loops.append(skopeo_loop(root, ids[: args.skopeo], run_root))
    result = {
        "images": len(ids),
        "floor_seconds": round(statistics.median(floors), 3),
        "imgdex_seconds": round(statistics.median(walls), 3),
        "imgdex_spread": [round(min(walls), 3), round(max(walls), 3)],
    }
    result["ratio"] = round(result["imgdex_seconds"] / result["floor_seconds"], 2)
    result["jobs2_seconds"] = round(statistics.median(twos), 3)
    result["jobs2_ratio"] = round(result["jobs2_seconds"] / result["floor_seconds"], 2)
    result["imgdex_images_per_s"] = round(len(ids) / result["imgdex_seconds"])
    if loops:
        result["skopeo_images_per_s"] = round(args.skopeo / statistics.median(loops), 1)
        result["against_skopeo"] = round(result["imgdex_images_per_s"] / result["skopeo_images_per_s"], 1)
    if args.json:
        print(json.dumps(result))
        return
    r = result
    print(f"containers-storage, {r['images']} images, median of {args.repeat} (vfs, synthetic)")
    print(f"  floor (read + json.loads)   {r['floor_seconds']:8.3f} s")
    print(
        f"  imgdex index --jobs 1, whole process {r['imgdex_seconds']:8.3f} s  {r['imgdex_images_per_s']} images/s"
        f"  ({r['ratio']}x the floor; runs {r['imgdex_spread'][0]}-{r['imgdex_spread'][1]} s)"
    )
    print(f"  imgdex index --jobs 2, whole process {r['jobs2_seconds']:8.3f} s  ({r['jobs2_ratio']}x the floor)")
    if loops:
        print(
            f"  skopeo inspect, one process per image  {r['skopeo_images_per_s']} images/s"
            f"  (imgdex {r['against_skopeo']}x)"
        )


if __name__ == "__main__":
    main()
