"""Crawl a local registry holding 2,000 manifests: `imgdex index docker://HOST` with --jobs 1 and
--jobs 8, an incremental re-crawl, the peer, `skopeo inspect` once per image in a shell loop, and
the ceiling: what the same registry serves to a C client (`ab`) for the requests a crawl makes.

    python bench/registry_bench.py [--repositories 20] [--tags 100] [--configs 5] [--skopeo-sample 100]
                                   [--rounds 3] [--ab-requests 2000] [--json OUT]

Everything runs on 127.0.0.1: Debian's `docker-registry` (distribution 2.8) with filesystem
storage in a temporary folder. The registry is filled through its HTTP API: per repository one
tiny layer and a few config blobs, then one distinct OCI manifest per tag (an annotation makes
each manifest unique), PUT by tag. Every manifest is its own digest, so a crawl really fetches
and verifies 2,000 manifests; configs repeat, as they do across the tags of real repositories.

The skopeo loop is timed on a random sample of images and extrapolated to all of them (a full
loop takes minutes); the sample size is printed with the figures.

The ceiling: one crawl runs with the registry's access log on, which gives the requests a crawl
makes, by kind (ping, catalog, tags/list, manifest GET or HEAD, blob GET or HEAD). Then, with the
log off again, `ab -k -c JOBS` is timed on one URL of each kind the crawl asked for (manifests
with the crawl's Accept header), and the mix is priced at those rates: the registry serves the
crawl's requests to ab in sum(count / rate) seconds, which is the ceiling in manifests/s. curl
then replays every request of that crawl, in order, `JOBS` at once over kept-alive connections
(distinct manifests, where ab repeats one URL). The ceiling runs and the `--jobs 8` crawls
alternate, round by round, so that both see the same load on a shared machine; each round's
fraction is reported beside the best figures. CPU seconds of the registry process and of the
client (imgdex, ab or curl) are taken for every run: on a machine with few cores they tell
whether the registry, the client or neither is what bounds the crawl.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import shlex
import shutil
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
# The crawler's Accept header for manifests, so that ab asks for exactly what a crawl asks for.
MANIFEST_ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        OCI_MANIFEST,
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        "application/vnd.docker.distribution.manifest.v1+json",
    ]
)
_ACCESS_LINE = re.compile(r'"(GET|HEAD) (/v2/\S*) HTTP/[\d.]+" (\d{3})')
IMGDEX = os.path.join(os.path.dirname(sys.executable), "imgdex")
if not os.path.exists(IMGDEX):
    IMGDEX = "imgdex"


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


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a running process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Measured:
    """Wall time, the registry's CPU and the CPU of the children waited for, over a block."""

    def __init__(self, registry: RealRegistry):
        self.registry = registry

    def __enter__(self):
        self.started = time.monotonic()
        self.registry_cpu = cpu_seconds(self.registry.process.pid)
        self.client_cpu = children_cpu()
        return self

    def __exit__(self, *exc):
        self.wall = time.monotonic() - self.started
        self.registry_cpu = cpu_seconds(self.registry.process.pid) - self.registry_cpu
        self.client_cpu = children_cpu() - self.client_cpu

    def figures(self) -> dict:
        return {
            "wall_seconds": round(self.wall, 3),
            "registry_cpu_seconds": round(self.registry_cpu, 2),
            "client_cpu_seconds": round(self.client_cpu, 2),
        }


def crawl(registry: RealRegistry, store: str, jobs: int) -> dict:
    with Measured(registry) as measured:
        result = subprocess.run(
            [IMGDEX, "index", f"docker://{registry.host}", "--store", store, "--jobs", str(jobs), "--json", "--quiet"],
            capture_output=True,
            text=True,
        )
    if result.returncode != 0:
        raise RuntimeError(f"imgdex index failed: {result.stderr[-2000:]}")
    summary = json.loads(result.stdout)
    return {
        "indexed": summary["indexed"],
        "failed": summary["failed"],
        "run_seconds": summary["seconds"],
        **measured.figures(),
    }


def set_access_log(registry: RealRegistry, on: bool) -> None:
    """Restart the registry with its access log on or off (it costs the registry CPU per request)."""
    registry.stop()
    with open(registry.config_path) as f:
        config = f.read()
    old, new = ("disabled: true", "disabled: false") if on else ("disabled: false", "disabled: true")
    with open(registry.config_path, "w") as f:
        f.write(config.replace(f"accesslog:\n    {old}", f"accesslog:\n    {new}"))
    registry.start()


def request_kind(method: str, path: str) -> str:
    if path == "/v2/":
        return "ping"
    if path.startswith("/v2/_catalog"):
        return "catalog"
    if "/tags/list" in path:
        return "tags/list"
    kind = "manifest" if "/manifests/" in path else "blob" if "/blobs/" in path else "other"
    return f"{kind} {method}"


def count_requests(registry: RealRegistry, store: str, jobs: int) -> tuple[dict, dict, list]:
    """One crawl with the access log on: (requests per kind, one path of each kind, every (method, path))."""
    set_access_log(registry, True)
    try:
        start = os.path.getsize(registry.log_path)
        crawl(registry, store, jobs)
    finally:
        set_access_log(registry, False)
    counts: dict[str, int] = {}
    paths: dict[str, tuple[str, str]] = {}
    requests: list[tuple[str, str]] = []
    with open(registry.log_path, errors="replace") as f:
        f.seek(start)
        for line in f:
            match = _ACCESS_LINE.search(line)
            if not match:
                continue
            method, path, _status = match.groups()
            kind = request_kind(method, path)
            counts[kind] = counts.get(kind, 0) + 1
            paths.setdefault(kind, (method, path))
            requests.append((method, path))
    return counts, paths, requests


def replay(registry: RealRegistry, requests: list, manifests: int, jobs: int, work: str) -> dict | None:
    """Every request of the crawl again, in its order, from curl: `jobs` at once over kept-alive connections."""
    if shutil.which("curl") is None:
        return None
    with Measured(registry) as measured:
        for method in ("GET", "HEAD"):
            urls = [path for asked, path in requests if asked == method]
            if not urls:
                continue
            config = os.path.join(work, f"replay-{method}.cfg")
            with open(config, "w") as f:
                for path in urls:
                    f.write(f'url = "{registry.url}{path}"\noutput = "/dev/null"\n')
            command = ["curl", "-s", "-f", "-Z", "--parallel-max", str(jobs), "-H", f"Accept: {MANIFEST_ACCEPT}"]
            subprocess.run(command + (["-I"] if method == "HEAD" else []) + ["-K", config], check=True)
    return {"manifests_per_second": round(manifests / measured.wall, 1), **measured.figures()}


def ab(url: str, method: str, requests: int, concurrency: int, headers: dict) -> float:
    """Requests per second `ab` gets, keep-alive, `concurrency` connections."""
    command = ["ab", "-q", "-k", "-c", str(concurrency), "-n", str(requests)]
    if method == "HEAD":
        command.append("-i")
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    result = subprocess.run(command + [url], capture_output=True, text=True)
    match = re.search(r"Requests per second:\s+([\d.]+)", result.stdout)
    failed = re.search(r"Failed requests:\s+(\d+)", result.stdout)
    non_2xx = re.search(r"Non-2xx responses:\s+(\d+)", result.stdout)
    if result.returncode != 0 or not match or (failed and int(failed.group(1))) or non_2xx:
        raise RuntimeError(f"ab {method} {url} failed: {result.stdout[-1500:]} {result.stderr[-500:]}")
    return float(match.group(1))


def ceiling(registry: RealRegistry, counts: dict, paths: dict, manifests: int, most: int, jobs: int) -> dict:
    """ab's rate for each kind of request the crawl made, and the crawl's mix priced at those rates."""
    rates: dict[str, float] = {}
    with Measured(registry) as measured:
        for kind, (method, path) in paths.items():
            headers = {"Accept": MANIFEST_ACCEPT} if kind.startswith("manifest") else {}
            # as many requests as the crawl made, within [200, most]: long enough to time, short enough to repeat
            requests = max(200, min(most, counts[kind]))
            rates[kind] = ab(registry.url + path, method, requests, jobs, headers)
    seconds = sum(counts[kind] / rates[kind] for kind in counts)
    total = sum(counts.values())
    return {
        "requests_per_second": {kind: round(rate, 1) for kind, rate in rates.items()},
        "mix_seconds": round(seconds, 3),
        "mix_requests_per_second": round(total / seconds, 1),
        "manifests_per_second": round(manifests / seconds, 1),
        "ab_runs": measured.figures(),
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
    parser.add_argument(
        "--ab-requests", type=int, default=2000, help="most requests per ab run (the crawl's count of each kind)"
    )
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
        if shutil.which("ab") is None:
            raise RuntimeError("ab is missing (apache2-utils): it measures the registry's ceiling")
        counts, paths, requests = count_requests(registry, os.path.join(work, "store-count"), 8)
        figures["crawl_requests"] = dict(sorted(counts.items()))
        figures["requests_per_manifest"] = round(sum(counts.values()) / total, 3)
        ceilings, replays, rounds = [], [], []
        for jobs in (1, 8):
            best = None
            for round_ in range(args.rounds):
                if jobs == 8:
                    ceilings.append(ceiling(registry, counts, paths, total, args.ab_requests, jobs))
                    replays.append(replay(registry, requests, total, jobs, work))
                store = os.path.join(work, f"store-j{jobs}-{round_}")
                result = crawl(registry, store, jobs)
                if result["indexed"] != total or result["failed"]:
                    raise RuntimeError(
                        f"--jobs {jobs}: indexed {result['indexed']} of {total}, {result['failed']} failed"
                    )
                if jobs == 8:
                    rounds.append(
                        {
                            "ceiling_manifests_per_second": ceilings[-1]["manifests_per_second"],
                            "curl_replay_manifests_per_second": (replays[-1] or {}).get("manifests_per_second"),
                            "imgdex_manifests_per_second": round(total / result["wall_seconds"], 1),
                            "fraction": round(total / result["wall_seconds"] / ceilings[-1]["manifests_per_second"], 3),
                            "imgdex_cpu_seconds": result["client_cpu_seconds"],
                            "registry_cpu_seconds": result["registry_cpu_seconds"],
                        }
                    )
                if best is None or result["wall_seconds"] < best["wall_seconds"]:
                    best = result
            best["manifests_per_second"] = round(total / best["wall_seconds"], 1)
            best["manifests_per_second_in_run"] = round(total / best["run_seconds"], 1)
            figures[f"jobs_{jobs}"] = best
        top = max(ceilings, key=lambda c: c["manifests_per_second"])
        figures["ceiling_ab"] = top
        figures["rounds_jobs_8"] = rounds
        if replays and all(replays):
            figures["curl_replay"] = max(replays, key=lambda r: r["manifests_per_second"])
        figures["fraction_of_ceiling"] = round(
            figures["jobs_8"]["manifests_per_second"] / top["manifests_per_second"], 3
        )
        figures["fraction_of_ceiling_in_run"] = round(
            figures["jobs_8"]["manifests_per_second_in_run"] / top["manifests_per_second"], 3
        )
        recrawl = crawl(registry, os.path.join(work, "store-j8-0"), 8)
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
    top = figures["ceiling_ab"]
    fractions = [r["fraction"] for r in figures["rounds_jobs_8"]]
    lines = [
        f"\n{total} manifests in {args.repositories} repositories over loopback",
        f"  imgdex --jobs 1    {j1['wall_seconds']:6.2f} s  {j1['manifests_per_second']:7.1f} manifests/s",
        f"  imgdex --jobs 8    {j8['wall_seconds']:6.2f} s  {j8['manifests_per_second']:7.1f} manifests/s",
        f"  re-crawl --jobs 8  {figures['recrawl_jobs_8']['wall_seconds']:6.2f} s  (HEAD per tag, nothing changed)",
        f"  skopeo inspect     {sk['extrapolated_seconds_for_all']:6.1f} s  "
        f"{sk['manifests_per_second']:7.1f} manifests/s (timed on {sk['sampled_images']} images, extrapolated)",
        f"  ab -k -c 8 ceiling {top['mix_seconds']:6.2f} s  {top['manifests_per_second']:7.1f} manifests/s "
        f"({figures['requests_per_manifest']} requests per manifest; manifest GETs alone: "
        f"{top['requests_per_second'].get('manifest GET', 0):.0f}/s)",
    ]
    if "curl_replay" in figures:
        replayed = figures["curl_replay"]
        lines.append(
            f"  curl replay        {replayed['wall_seconds']:6.2f} s  "
            f"{replayed['manifests_per_second']:7.1f} manifests/s (every request of a crawl, 8 at once)"
        )
    lines += [
        f"  --jobs 8 is {figures['speedup_jobs_8_vs_skopeo']}x the skopeo loop, "
        f"{figures['speedup_jobs_8_vs_jobs_1']}x --jobs 1, and {figures['fraction_of_ceiling']:.0%} of the ab ceiling "
        f"(rounds: {min(fractions):.0%}-{max(fractions):.0%}; "
        f"in the run itself {figures['fraction_of_ceiling_in_run']:.0%})",
        f"  CPU of the best --jobs 8 crawl: imgdex {j8['client_cpu_seconds']} s, "
        f"registry {j8['registry_cpu_seconds']} s in {j8['wall_seconds']} s on {figures['cpus']} cores; "
        f"ab runs: ab {top['ab_runs']['client_cpu_seconds']} s, "
        f"registry {top['ab_runs']['registry_cpu_seconds']} s in {top['ab_runs']['wall_seconds']} s",
    ]
    print("\n".join(lines))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
