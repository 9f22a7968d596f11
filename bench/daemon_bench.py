"""Throughput of `imgdex index docker-daemon:` against a loop of `docker image inspect`.

The engine holds N distinct images (default 500), each a `docker import` of a tiny tar with an
ENV change, tagged into its own repository. Both sides read the same images:

- imgdex: one `imgdex index docker-daemon: --docker-host H` process into a fresh store, timed
  whole (start-up, listing, inspect and history of every image, the store write and snapshot);
  the run's own figure (`--json` "seconds", without interpreter start-up) is printed beside it.
  The console script beside this interpreter is run, not a version manager's shim on PATH
  (pyenv's adds about 0.1 s to every command); --module runs `python -m queries.cli` from this
  checkout instead, to compare two checkouts with the same start-up;
- the loop: one `docker image inspect REF` process per image, one after the other, output
  discarded, as a shell script over `docker images` would do it.

Runs alternate between the two and the median of --repeat runs is reported, since the
figures move with whatever else the machine is doing.

Without --docker-host a private engine is started (as tests/services.py starts it; needs root,
Debian's docker.io) and removed afterwards. With --docker-host the images are made in that
engine under imgdex-bench/ and removed at the end unless --keep.

Usage::

    python bench/daemon_bench.py [--images 500] [--repeat 3] [--docker-host URL] [--keep] [--module] [--json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, ROOT)

REPOSITORY = "imgdex-bench/app{i}"


def tiny_tar(i: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = f"image {i}\n".encode()
        info = tarfile.TarInfo(f"bench-{i}")
        info.size, info.mtime = len(data), 1700000000
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def make_images(host: str, count: int) -> list[str]:
    import docker

    client = docker.APIClient(base_url=host, version="auto", timeout=300)
    refs = [f"{REPOSITORY.format(i=i)}:1" for i in range(count)]

    def one(i: int) -> None:
        repository, tag = refs[i].rsplit(":", 1)
        client.import_image_from_data(tiny_tar(i), repository=repository, tag=tag, changes=[f"ENV BENCH_IMAGE={i}"])

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(count)))
    present = {t for image in client.images() for t in image.get("RepoTags") or []}
    missing = [r for r in refs if r not in present]
    if missing:
        raise SystemExit(f"daemon_bench: {len(missing)} images were not made, e.g. {missing[0]}")
    client.close()
    return refs


def remove_images(host: str, refs: list[str]) -> None:
    import docker

    client = docker.APIClient(base_url=host, version="auto", timeout=300)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda ref: client.remove_image(ref, force=True), refs))
    client.close()


def imgdex_command(module: bool = False) -> list[str]:
    if module:
        return [sys.executable, "-m", "queries.cli"]
    beside = os.path.join(os.path.dirname(sys.executable), "imgdex")
    if os.access(beside, os.X_OK):
        return [beside]
    found = shutil.which("imgdex")
    return [found] if found else [sys.executable, "-m", "queries.cli"]


def time_imgdex(command: list[str], host: str, work: str, run: int) -> tuple[float, float, int]:
    store = os.path.join(work, f"store-{run}")
    started = time.perf_counter()
    result = subprocess.run(
        [*command, "index", "docker-daemon:", "--docker-host", host, "--store", store, "--json", "--quiet"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"daemon_bench: imgdex failed: {result.stderr.strip()}")
    summary = json.loads(result.stdout)
    shutil.rmtree(store, ignore_errors=True)
    return wall, summary["seconds"], summary["indexed"]


def time_inspect_loop(docker_cli: str, env: dict, refs: list[str]) -> float:
    started = time.perf_counter()
    for ref in refs:
        subprocess.run(
            [docker_cli, "image", "inspect", ref],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            check=True,
        )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--docker-host", default="", help="use this engine instead of starting a private one")
    parser.add_argument("--keep", action="store_true", help="keep the images made in a --docker-host engine")
    parser.add_argument("--module", action="store_true", help="run `python -m queries.cli` from this checkout")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import services

    folder = services.short_folder("imgdex-bench.")
    engine = None
    refs: list[str] = []
    try:
        if args.docker_host:
            host = args.docker_host
            env = dict(os.environ, DOCKER_HOST=host)
        else:
            engine = services.start_engine(os.path.join(folder, "engine"))
            host, env = engine.host, engine.env
        made = time.perf_counter()
        refs = make_images(host, args.images)
        made = time.perf_counter() - made
        docker_cli = services.DOCKER
        server = subprocess.run(
            [docker_cli, "version", "-f", "{{.Server.Version}}"], env=env, capture_output=True, text=True
        ).stdout.strip()

        command = imgdex_command(args.module)
        walls, runs, loops = [], [], []
        indexed = 0
        for run in range(args.repeat):
            wall, seconds, indexed = time_imgdex(command, host, folder, run)
            walls.append(wall)
            runs.append(seconds)
            loops.append(time_inspect_loop(docker_cli, env, refs))
        if indexed != len(refs):
            raise SystemExit(f"daemon_bench: imgdex indexed {indexed} images, the engine holds {len(refs)}")

        n = len(refs)
        result = {
            "images": n,
            "engine": server,
            "cpus": os.cpu_count(),
            "imgdex": " ".join(command),
            "setup_seconds": round(made, 2),
            "imgdex_seconds": round(statistics.median(walls), 3),
            "imgdex_images_per_s": round(n / statistics.median(walls), 1),
            "imgdex_run_seconds": round(statistics.median(runs), 3),
            "imgdex_run_images_per_s": round(n / statistics.median(runs), 1),
            "inspect_loop_seconds": round(statistics.median(loops), 3),
            "inspect_loop_images_per_s": round(n / statistics.median(loops), 1),
        }
        result["ratio"] = round(result["imgdex_images_per_s"] / result["inspect_loop_images_per_s"], 1)
        result["ratio_run"] = round(result["imgdex_run_images_per_s"] / result["inspect_loop_images_per_s"], 1)
        if args.json:
            print(json.dumps(result))
        else:
            print(f"engine {server}, {n} images ({result['cpus']} CPUs), median of {args.repeat} runs")
            r = result
            print(
                f"  imgdex index docker-daemon:   {r['imgdex_seconds']:8.2f} s"
                f"  {r['imgdex_images_per_s']:8.1f} images/s  (whole process)"
            )
            print(
                f"    of which the index run      {r['imgdex_run_seconds']:8.2f} s"
                f"  {r['imgdex_run_images_per_s']:8.1f} images/s"
            )
            print(
                f"  docker image inspect loop     {r['inspect_loop_seconds']:8.2f} s"
                f"  {r['inspect_loop_images_per_s']:8.1f} images/s"
            )
            print(f"  ratio {result['ratio']}x (whole process), {result['ratio_run']}x (index run)")
    finally:
        if engine is not None:
            engine.stop()
        elif refs and not args.keep:
            remove_images(args.docker_host, refs)
        services.remove_folder(folder)


if __name__ == "__main__":
    main()
