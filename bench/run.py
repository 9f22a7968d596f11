"""imgdex benchmarks: each figure is a ratio against a floor measured in the same run.

    python bench/run.py                # everything, full sizes (several minutes)
    python bench/run.py --quick        # smaller corpora, for a smoke run
    python bench/run.py --only get     # one section: index, big, gzip, get, batch, skopeo
    python bench/run.py --only index   # the OCI layout: the default, --jobs 1 and --jobs 2

Corpora are generated under --work (default /tmp/imgdex-bench) and reused across runs.
Timings are medians of --repeat runs. Nothing here asserts a time: the figures go in the README.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

import corpus  # noqa: E402
import floor  # noqa: E402
from io_counter import measure  # noqa: E402
from launch import compiled_modules  # noqa: E402

CLI = ["-m", "queries.cli"]
RESULTS: list[dict] = []


def report(
    section: str,
    figure: str,
    value: float,
    unit: str,
    floor_value: float | None = None,
    floor_name: str = "",
    target: str = "",
) -> None:
    row = {
        "section": section,
        "figure": figure,
        "value": value,
        "unit": unit,
        "floor": floor_value,
        "floor_name": floor_name,
        "target": target,
    }
    if floor_value:
        row["ratio"] = value / floor_value
    RESULTS.append(row)
    ratio = f"  ratio {row['ratio']:.2f}x vs {floor_name} ({floor_value:.4g} {unit})" if floor_value else ""
    print(f"[{section}] {figure}: {value:.4g} {unit}{ratio}{'  target ' + target if target else ''}", flush=True)


def median_wall(cmd: list[str], repeat: int, **kwargs) -> tuple[float, dict]:
    runs = [measure(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, **kwargs) for _ in range(repeat)]
    for run in runs:
        if run["returncode"] != 0:
            raise SystemExit(f"command failed ({run['returncode']}): {' '.join(run['cmd'])}")
    return statistics.median(r["wall"] for r in runs), runs[len(runs) // 2]


def timed(argv: list[str], repeat: int) -> float:
    walls = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        walls.append(time.perf_counter() - t0)
    return statistics.median(walls)


def ensure(path: str, make) -> str:
    if not os.path.exists(path):
        make()
    return path


def fresh_store(work: str, name: str) -> str:
    store = os.path.join(work, "stores", name)
    shutil.rmtree(store, ignore_errors=True)
    return store


def bench_index(args) -> None:
    n = 1000 if args.quick else 10_000
    layout = ensure(
        os.path.join(args.work, f"oci{n}"), lambda: corpus.write_oci_layout(os.path.join(args.work, f"oci{n}"), n)
    )
    floor_times = [floor.floor_oci_layout(layout)[1] for _ in range(args.repeat)]
    floor_time = statistics.median(floor_times)
    # The default (--jobs: the CPUs this process may use), then one process and two, interleaved
    # so that a noisy moment of the machine hits all three alike.
    runs = {"default": [], "--jobs 1": ["--jobs", "1"], "--jobs 2": ["--jobs", "2"]}
    walls: dict[str, list[float]] = {label: [] for label in runs}
    for _ in range(args.repeat):
        for label, extra in runs.items():
            store = fresh_store(args.work, "index")
            t0 = time.perf_counter()
            subprocess.run(
                [sys.executable, *CLI, "index", layout, "--store", store, "--quiet", *extra],
                check=True,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
            )
            walls[label].append(time.perf_counter() - t0)
    wall = statistics.median(walls["default"])
    report(
        "index",
        f"imgdex index OCI layout, {n} images (wall, whole process)",
        wall,
        "s",
        floor_time,
        "read+json.loads loop",
        "<= 2x",
    )
    report("index", "imgdex throughput", n / wall, "images/s")
    for label in ("--jobs 1", "--jobs 2"):
        spread = f"{min(walls[label]):.2f}-{max(walls[label]):.2f} s"
        report(
            "index",
            f"imgdex index {label}, OCI layout, {n} images (wall, whole process; runs {spread})",
            statistics.median(walls[label]),
            "s",
            floor_time,
            "read+json.loads loop",
            "<= 2x with --jobs 2",
        )
    one, two = statistics.median(walls["--jobs 1"]), statistics.median(walls["--jobs 2"])
    report("index", "--jobs 2 against --jobs 1 (wall)", two, "s", one, "--jobs 1", "clearly < 1x")


def bench_big(args) -> None:
    small = ensure(
        os.path.join(args.work, "big-1m.tar"),
        lambda: corpus.write_big_docker_save(os.path.join(args.work, "big-1m.tar"), 1 << 20),
    )
    big_size = (64 << 20) if args.quick else (1 << 30)
    big_path = os.path.join(args.work, f"big-{big_size >> 20}m.tar")
    big = ensure(big_path, lambda: corpus.write_big_docker_save(big_path, big_size))
    results = {}
    for label, path in (("1 MiB", small), (f"{big_size >> 20} MiB", big)):
        store = fresh_store(args.work, "big")
        wall, run = median_wall([*CLI, "index", path, "--store", store, "--quiet"], args.repeat)
        results[label] = (wall, run)
        startup = run["startup"]["rchar"] or 0
        report(
            "big",
            f"docker-save {label}: bytes read by the run (rchar, minus interpreter start-up)",
            (run["rchar"] - startup) / 1024,
            "KiB",
        )
    (small_wall, small_run), (big_wall, big_run) = results["1 MiB"], results[f"{big_size >> 20} MiB"]
    report(
        "big",
        f"extra bytes read for the {big_size >> 20} MiB archive over the 1 MiB one",
        (big_run["rchar"] - small_run["rchar"]) / 1024,
        "KiB",
        target="a few KiB per layer",
    )
    report(
        "big", f"docker-save {big_size >> 20} MiB index time", big_wall, "s", small_wall, "the 1 MiB archive", "<= 2x"
    )


def bench_gzip(args) -> None:
    size = (64 << 20) if args.quick else (512 << 20)
    base = os.path.join(args.work, f"gz-{size >> 20}m.tar")
    gz = ensure(base + ".gz", lambda: corpus.write_big_docker_save(base + ".gz", size, gz=True))
    gunzip = timed(["sh", "-c", f"gzip -dc '{gz}' > /dev/null"], args.repeat)
    store = fresh_store(args.work, "gz")
    wall, _ = median_wall([*CLI, "index", gz, "--store", store, "--quiet"], args.repeat)
    mib = os.path.getsize(gz) / (1 << 20)
    report(
        "gzip",
        f"imgdex index of a {mib:.0f} MiB .tar.gz, throughput",
        mib / wall,
        "MiB/s",
        mib / gunzip,
        "gzip -dc > /dev/null",
        ">= 1.0x",
    )


def _small_store(args) -> tuple[str, str]:
    layout = ensure(
        os.path.join(args.work, "oci1000"), lambda: corpus.write_oci_layout(os.path.join(args.work, "oci1000"), 1000)
    )
    store = os.path.join(args.work, "stores", "get")
    if not os.path.isdir(os.path.join(store, "images", "_delta_log")):
        subprocess.run(
            [sys.executable, *CLI, "index", layout, "--store", store, "--quiet"],
            check=True,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )
    out = subprocess.run(
        [
            sys.executable,
            *CLI,
            "sql",
            "SELECT id FROM images WHERE kind = 'image' LIMIT 1",
            "--store",
            store,
            "--format",
            "csv",
        ],
        check=True,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    return store, out.stdout.splitlines()[1]


def bench_get(args) -> None:
    store, image_id = _small_store(args)
    repeat = max(args.repeat, 21)
    # The console script next to this interpreter: a version manager's shim on PATH (pyenv) would
    # add its own start-up to every run.
    beside = os.path.join(os.path.dirname(sys.executable), "imgdex")
    imgdex = beside if os.access(beside, os.X_OK) else shutil.which("imgdex")
    get_cmd = (
        [imgdex, "get", image_id, "--store", store]
        if imgdex
        else [sys.executable, *CLI, "get", image_id, "--store", store]
    )
    # Interleaved, so that a noisy moment of the machine hits both sides alike.
    floor_walls, walls = [], []
    for _ in range(repeat):
        floor_walls.append(timed([sys.executable, "-c", "import duckdb"], 1))
        walls.append(timed(get_cmd, 1))
    floor_wall, wall = statistics.median(floor_walls), statistics.median(walls)
    report(
        "get", "cold `imgdex get ID` (new process each)", wall, "s", floor_wall, "python -c 'import duckdb'", "<= 1.5x"
    )
    check = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, queries.cli, queries.engine, queries.lookup, queries.render; "
            "print(sorted(m for m in ('pyarrow', 'docker') if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    print(f"[get] heavy modules imported on the get path: {check.stdout.strip()}")


def _synthetic_store(store: str, n: int) -> list[str]:
    """A store of n images written straight through the writer: this measures lookups, not parsing."""
    from indexer.model import Blob, ImageRecord, Platform
    from indexer.references import image_id

    records, ids = [], []
    base = [Blob(f"sha256:{i:064x}", 1000 + i, "application/vnd.oci.image.layer.v1.tar+gzip") for i in range(3)]
    for i in range(n):
        digest = f"sha256:{i + 10**6:064x}"
        name = f"team/app{i % 50}"
        rid = image_id("bench.example", name, digest)
        ids.append(rid)
        records.append(
            ImageRecord(
                id=rid,
                registry="bench.example",
                name=name,
                digest=digest,
                media_type="application/vnd.oci.image.manifest.v1+json",
                kind="image",
                config=Blob(f"sha256:{i + 2 * 10**6:064x}", 1500, "application/vnd.oci.image.config.v1+json"),
                layers=(
                    *base,
                    Blob(f"sha256:{i + 3 * 10**6:064x}", 5000 + i, "application/vnd.oci.image.layer.v1.tar+gzip"),
                ),
                layers_compressed=True,
                tags=(f"t{i}",),
                created=f"2026-11-{1 + i % 28:02d}T10:54:27.{i:09d}Z",
                platform=Platform("linux", "amd64"),
                parent_digest="",
                source_kind="oci",
                source_path="bench",
                exactness=3,
            )
        )
    corpus.write_records(store, records)
    return ids


def bench_batch(args) -> None:
    n = 10_000 if args.quick else 100_000
    store = os.path.join(args.work, "stores", f"batch{n}")
    ids_file = os.path.join(args.work, f"ids{n}.txt")
    if not os.path.exists(ids_file):
        shutil.rmtree(store, ignore_errors=True)
        ids = _synthetic_store(store, n)
        with open(ids_file, "w") as f:
            f.write("\n".join(ids) + "\n")
    floor_wall = timed([sys.executable, "-c", "import duckdb"], args.repeat)
    wall = timed([sys.executable, *CLI, "get", "--ids-from", ids_file, "--store", store], args.repeat)
    report("batch", f"`imgdex get --ids-from` {n} ids on a {n}-image store", n / wall, "ids/s", target=">= 20000 ids/s")
    report("batch", "the same, excluding interpreter + duckdb import", n / max(wall - floor_wall, 1e-9), "ids/s")


def bench_skopeo(args) -> None:
    """imgdex against a `skopeo inspect` loop over the same docker-save archives: all archives in one
    `imgdex index`, and one `imgdex index` process per archive (as a CI job indexing each image it
    builds would run it). Rounds alternate the three, so load from other work falls on all alike."""
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        print("[skopeo] skopeo not installed; peer figure skipped")
        return
    n = 20 if args.quick else 100
    folder = os.path.join(args.work, f"ds{n}")
    ensure(folder, lambda: corpus.write_docker_save(folder, n))
    archives = sorted(os.path.join(folder, f) for f in os.listdir(folder))
    loops, together, each = [], [], []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        for archive in archives:
            subprocess.run([skopeo, "inspect", f"docker-archive:{archive}"], check=True, stdout=subprocess.DEVNULL)
        loops.append(time.perf_counter() - t0)
        store = fresh_store(args.work, "skopeo")
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, *CLI, "index", *archives, "--store", store, "--quiet"],
            check=True,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )
        together.append(time.perf_counter() - t0)
        store = fresh_store(args.work, "skopeo-each")
        t0 = time.perf_counter()
        for archive in archives:
            subprocess.run(
                [sys.executable, *CLI, "index", archive, "--store", store, "--quiet"],
                check=True,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
            )
        each.append(time.perf_counter() - t0)
    skopeo_rate = n / statistics.median(loops)
    floor_name = "skopeo inspect, one process per image"
    report(
        "skopeo",
        f"imgdex index of {n} docker-save archives in one process",
        n / statistics.median(together),
        "images/s",
        skopeo_rate,
        floor_name,
        target=">= 3x",
    )
    report(
        "skopeo",
        "imgdex index of the same, one process per archive",
        n / statistics.median(each),
        "images/s",
        skopeo_rate,
        floor_name,
        target=">= 1x",
    )


SECTIONS = {
    "index": bench_index,
    "big": bench_big,
    "gzip": bench_gzip,
    "get": bench_get,
    "batch": bench_batch,
    "skopeo": bench_skopeo,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/imgdex-bench")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", action="append", choices=sorted(SECTIONS))
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args()
    os.makedirs(os.path.join(args.work, "stores"), exist_ok=True)
    compiled_modules(args.work, ROOT)
    print(f"imgdex benchmarks on {os.cpu_count()} cores, repeat {args.repeat}{', quick' if args.quick else ''}")
    for name in args.only or SECTIONS:
        SECTIONS[name](args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(RESULTS, f, indent=2)


if __name__ == "__main__":
    main()
