"""Crawl a local registry holding 2,000 manifests: `imgdex index docker://HOST` with --jobs 1 and
--jobs 8, an incremental re-crawl, and the peer, `skopeo inspect` once per image in a shell loop.

    python bench/registry_bench.py [--repositories 20] [--tags 100] [--configs 5] [--skopeo-sample 100] [--json OUT]

Everything runs on 127.0.0.1: Debian's `docker-registry` (distribution 2.8) with filesystem
storage in a temporary folder. The registry is filled through its HTTP API: per repository one
tiny layer and a few config blobs, then one distinct OCI manifest per tag (an annotation makes
each manifest unique), PUT by tag. Every manifest is its own digest, so a crawl really fetches
and verifies 2,000 manifests; configs repeat, as they do across the tags of real repositories.

The skopeo loop is timed on a random sample of images and extrapolated to all of them (a full
loop takes minutes); the sample size is printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

from registry_server import RealRegistry, push_blob, sha256  # noqa: E402

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def fill(registry: RealRegistry, repositories: int, tags: int, configs: int) -> list[tuple[str, str]]:
    """Push the corpus; returns (repository, tag) of every manifest."""
    import requests

    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=8))
    refs = []
    jobs = []
    for r in range(repositories):
        repo = f"bench/r{r:03d}"
        layer = b"\x1f\x8b" + os.urandom(62)  # a small blob; the registry does not look inside
        layer_digest = push_blob(registry.url, repo, layer)
        config_descriptors = []
        for c in range(configs):
            config = json.dumps(
                {
                    "created": f"2026-01-{c + 1:02d}T00:00:00.123456789Z",
                    "architecture": "amd64",
                    "os": "linux",
                    "config": {"Env": ["PATH=/bin"], "Labels": {"bench.config": str(c)}},
                    "rootfs": {"type": "layers", "diff_ids": [sha256(layer + b"-diff")]},
                }
            ).encode()
            config_descriptors.append(
                {"mediaType": OCI_CONFIG, "digest": push_blob(registry.url, repo, config), "size": len(config)}
            )
        for t in range(tags):
            manifest = json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": OCI_MANIFEST,
                    "config": config_descriptors[t % configs],
                    "layers": [{"mediaType": OCI_LAYER, "digest": layer_digest, "size": len(layer)}],
                    "annotations": {"bench.manifest": f"{r}-{t}"},
                }
            ).encode()
            jobs.append((repo, f"t{t:04d}", manifest))
            refs.append((repo, f"t{t:04d}"))

    def put(job):
        repo, tag, manifest = job
        response = session.put(
            f"{registry.url}/v2/{repo}/manifests/{tag}", data=manifest, headers={"Content-Type": OCI_MANIFEST}
        )
        if response.status_code != 201:
            raise RuntimeError(f"PUT {repo}:{tag}: {response.status_code} {response.text[:200]}")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, jobs))
    return refs


def crawl(host: str, store: str, jobs: int) -> dict:
    started = time.monotonic()
    result = subprocess.run(
        ["imgdex", "index", f"docker://{host}", "--store", store, "--jobs", str(jobs), "--json", "--quiet"],
        capture_output=True,
        text=True,
    )
    wall = time.monotonic() - started
    if result.returncode != 0:
        raise RuntimeError(f"imgdex index failed: {result.stderr[-2000:]}")
    summary = json.loads(result.stdout)
    return {
        "indexed": summary["indexed"],
        "failed": summary["failed"],
        "run_seconds": summary["seconds"],
        "wall_seconds": round(wall, 3),
    }


def skopeo_loop(host: str, refs: list[tuple[str, str]]) -> float:
    script = "\n".join(
        f"skopeo inspect --tls-verify=false {shlex.quote(f'docker://{host}/{repo}:{tag}')} >/dev/null || exit 1"
        for repo, tag in refs
    )
    started = time.monotonic()
    subprocess.run(["bash", "-c", script], check=True)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repositories", type=int, default=20)
    parser.add_argument("--tags", type=int, default=100)
    parser.add_argument("--configs", type=int, default=5)
    parser.add_argument("--skopeo-sample", type=int, default=100, help="images timed with skopeo (0: all)")
    parser.add_argument("--rounds", type=int, default=3, help="crawls per --jobs setting; the best is reported")
    parser.add_argument("--json", dest="json_out", default="", help="also write the figures here")
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="imgdex-registry-bench-")
    registry = RealRegistry(os.path.join(work, "registry"))
    try:
        started = time.monotonic()
        refs = fill(registry, args.repositories, args.tags, args.configs)
        fill_seconds = time.monotonic() - started
        total = len(refs)
        figures: dict = {
            "manifests": total,
            "repositories": args.repositories,
            "fill_seconds": round(fill_seconds, 2),
            "cpus": os.cpu_count(),
        }
        for jobs in (1, 8):
            best = None
            for round_ in range(args.rounds):
                store = os.path.join(work, f"store-j{jobs}-{round_}")
                result = crawl(registry.host, store, jobs)
                if result["indexed"] != total or result["failed"]:
                    raise RuntimeError(
                        f"--jobs {jobs}: indexed {result['indexed']} of {total}, {result['failed']} failed"
                    )
                if best is None or result["wall_seconds"] < best["wall_seconds"]:
                    best = result
            best["manifests_per_second"] = round(total / best["wall_seconds"], 1)
            best["manifests_per_second_in_run"] = round(total / best["run_seconds"], 1)
            figures[f"jobs_{jobs}"] = best
        recrawl = crawl(registry.host, os.path.join(work, "store-j8-0"), 8)
        recrawl["tags_per_second"] = round(total / recrawl["wall_seconds"], 1)
        figures["recrawl_jobs_8"] = recrawl

        sample = (
            refs
            if args.skopeo_sample <= 0 or args.skopeo_sample >= total
            else random.Random(7).sample(refs, args.skopeo_sample)
        )
        seconds = skopeo_loop(registry.host, sample)
        per_image = seconds / len(sample)
        figures["skopeo"] = {
            "sampled_images": len(sample),
            "sample_seconds": round(seconds, 2),
            "seconds_per_image": round(per_image, 4),
            "extrapolated_seconds_for_all": round(per_image * total, 1),
            "manifests_per_second": round(1 / per_image, 1),
        }
        figures["speedup_jobs_8_vs_skopeo"] = round(figures["jobs_8"]["manifests_per_second"] * per_image, 1)
        figures["speedup_jobs_8_vs_jobs_1"] = round(
            figures["jobs_1"]["wall_seconds"] / figures["jobs_8"]["wall_seconds"], 2
        )
    finally:
        registry.stop()
        subprocess.run(["rm", "-rf", work])

    print(json.dumps(figures, indent=2))
    j1, j8, sk = figures["jobs_1"], figures["jobs_8"], figures["skopeo"]
    print(
        f"\n{total} manifests in {args.repositories} repositories over loopback\n"
        f"  imgdex --jobs 1   {j1['wall_seconds']:7.2f} s  {j1['manifests_per_second']:7.1f} manifests/s\n"
        f"  imgdex --jobs 8   {j8['wall_seconds']:7.2f} s  {j8['manifests_per_second']:7.1f} manifests/s\n"
        f"  re-crawl --jobs 8 {figures['recrawl_jobs_8']['wall_seconds']:7.2f} s  (HEAD per tag, nothing changed)\n"
        f"  skopeo inspect    {sk['extrapolated_seconds_for_all']:7.1f} s  "
        f"{sk['manifests_per_second']:7.1f} manifests/s "
        f"(timed on {sk['sampled_images']} images, extrapolated)\n"
        f"  --jobs 8 is {figures['speedup_jobs_8_vs_skopeo']}x the skopeo loop and "
        f"{figures['speedup_jobs_8_vs_jobs_1']}x --jobs 1"
    )
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
