"""Whole-process `imgdex` commands against a large store, each against a floor measured in the same run.

    python bench/index_store_bench.py                   # a 1,000,000-image store (about 5 minutes here)
    python bench/index_store_bench.py --rows 100000     # a quicker pass
    python bench/index_store_bench.py --json out.json
    python bench/index_store_bench.py --skip-index --compacted   # only the reads, as loaded and compacted

The store is the load phase of bench/store_bench.py: the same synthetic images (its Arrow input file
is reused from --input-dir when it is there), written by DeltaStore as one streamed run, not
compacted. It is checked with `imgdex sql "select count(*) from images"`.

Measured, with the console script beside this interpreter (`.venv/bin/imgdex`, not a shim):

- `imgdex index oci:LAYOUT` of an OCI layout of --images new images (bench/corpus.py) into the large
  store, against the same run into an empty store and against `python -c "import duckdb, deltalake"`;
  and the plain-parse floor of the layout (bench/floor.py) for reference;
- `imgdex index docker-archive:PATH` of one docker-save archive, the same way;
- cold `imgdex get ID` and `imgdex list --page-size 100` (first page) on the large store, against
  `python -c "import duckdb"`; with --compacted also `imgdex compact` of a copy of the store, and
  the same reads on that copy.

Each index run into the large store goes into its own copy of it (data files hard-linked, which runs
never rewrite; `_delta_log` copied), made outside the timed part. Repetitions interleave the command
and its floors, so that load from elsewhere on the machine falls on all of them alike. Peak RSS is
wait4's ru_maxrss of the measured process, started by a small launcher (bench/launch.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

import corpus  # noqa: E402
from launch import compiled_modules, launch  # noqa: E402
import floor  # noqa: E402
import store_bench  # noqa: E402

RESULTS: list[dict] = []


def imgdex_script() -> list[str]:
    beside = os.path.join(os.path.dirname(sys.executable), "imgdex")
    if os.access(beside, os.X_OK):
        return [beside]
    return [sys.executable, "-m", "queries.cli"]


def run(cmd: list[str], *, capture: bool = False) -> tuple[float, float, str]:
    """Wall seconds, peak RSS in MiB and (if `capture`) stdout of one new process (see launch.py)."""
    wall, rss, out = launch(cmd, cwd=ROOT)
    return wall, rss, out if capture else ""


def clone_store(base: str, target: str) -> None:
    """A copy that a run may append to without touching `base`: Parquet data files are immutable
    once written, so they are hard-linked; the logs (whose _last_checkpoint is rewritten) are copied."""
    shutil.rmtree(target, ignore_errors=True)
    for folder, _, names in os.walk(base):
        rel = os.path.relpath(folder, base)
        dest = os.path.join(target, rel)
        os.makedirs(dest, exist_ok=True)
        in_log = "_delta_log" in rel.split(os.sep)
        for name in names:
            src = os.path.join(folder, name)
            if in_log:
                shutil.copy2(src, os.path.join(dest, name))
            else:
                os.link(src, os.path.join(dest, name))


def count_images(store: str) -> int:
    _, _, out = run(
        [*imgdex_script(), "sql", "select count(*) from images", "--store", store, "--format", "csv"], capture=True
    )
    return int(out.splitlines()[1])


def report(figure: str, value: float, unit: str, floor_value: float | None = None, floor_name: str = "", **extra):
    row = {"figure": figure, "value": value, "unit": unit, "floor": floor_value, "floor_name": floor_name, **extra}
    text = f"{figure}: {value:.4g} {unit}"
    if floor_value:
        row["ratio"] = value / floor_value
        text += f"   ratio {row['ratio']:.2f}x vs {floor_name} ({floor_value:.4g} {unit})"
    for key, value in extra.items():
        text += f"   {key} {value:.4g}" if isinstance(value, float) else f"   {key} {value}"
    RESULTS.append(row)
    print(text, flush=True)


def build_store(args) -> None:
    """The large store: store_bench's load phase, in a process of its own (peak RSS is its own)."""
    marker = os.path.join(args.dir, f"base-{args.rows}.done")
    if os.path.exists(marker) and os.path.isdir(args.base):
        return
    shutil.rmtree(args.base, ignore_errors=True)
    input_path = os.path.join(args.input_dir, f"input-{args.rows}.arrow")
    os.makedirs(args.input_dir, exist_ok=True)
    store_bench.ensure_input(input_path, args.rows)
    code = (
        "import argparse, json, sys\n"
        f"sys.path.insert(0, {HERE!r})\n"
        "import store_bench\n"
        f"ns = argparse.Namespace(store={args.base!r}, input={input_path!r}, row_group={args.row_group})\n"
        "print(json.dumps(store_bench.phase_load(ns)))\n"
    )
    wall, rss, out = run([sys.executable, "-c", code], capture=True)
    load = json.loads(out.strip().splitlines()[-1])
    report(f"build: load of {args.rows:,} images (store_bench load phase)", load["seconds"], "s", peak_rss_mib=rss)
    with open(marker, "w") as f:
        f.write(str(args.rows))


def bench_index(args, label: str, source: str, floor_seconds: float | None, expected_new: int) -> None:
    imgdex = imgdex_script()
    empty = os.path.join(args.dir, "empty")
    big = os.path.join(args.dir, "big")
    walls: dict[str, list[float]] = {"large": [], "empty": [], "import": []}
    rss: dict[str, list[float]] = {"large": [], "empty": []}
    for _ in range(args.repeat):
        shutil.rmtree(empty, ignore_errors=True)
        clone_store(args.base, big)
        wall, _, _ = run([sys.executable, "-c", "import duckdb, deltalake"])
        walls["import"].append(wall)
        wall, peak, _ = run([*imgdex, "index", source, "--store", empty, "--quiet"])
        walls["empty"].append(wall)
        rss["empty"].append(peak)
        wall, peak, _ = run([*imgdex, "index", source, "--store", big, "--quiet"])
        walls["large"].append(wall)
        rss["large"].append(peak)
    got = count_images(big)
    if got != args.rows + expected_new:
        raise SystemExit(f"{label}: the large store holds {got} images after the run, not {args.rows + expected_new}")
    med = {k: statistics.median(v) for k, v in walls.items()}
    n = f"{args.rows:,}"
    report(
        f"imgdex index {label} into a {n}-image store (whole process)",
        med["large"],
        "s",
        med["empty"],
        "the same run into an empty store",
        peak_rss_mib=max(rss["large"]),
        runs=walls["large"],
    )
    report(
        f"imgdex index {label} into a {n}-image store, against start-up",
        med["large"],
        "s",
        med["import"],
        "python -c 'import duckdb, deltalake'",
    )
    report(
        f"imgdex index {label} into an empty store (whole process)",
        med["empty"],
        "s",
        med["import"],
        "python -c 'import duckdb, deltalake'",
        peak_rss_mib=max(rss["empty"]),
        runs=walls["empty"],
    )
    if floor_seconds:
        report(
            f"imgdex index {label} into a {n}-image store, against a plain parse",
            med["large"],
            "s",
            floor_seconds,
            "read + json.loads of index, manifests and configs (bench/floor.py)",
        )
    shutil.rmtree(big, ignore_errors=True)
    shutil.rmtree(empty, ignore_errors=True)


def bench_reads(args, store: str, what: str) -> None:
    imgdex = imgdex_script()
    image_id = store_bench._image_id(12345)
    commands = {
        "floor": [sys.executable, "-c", "import duckdb"],
        "get": [*imgdex, "get", image_id, "--store", store],
        "list": [*imgdex, "list", "--page-size", "100", "--store", store],
    }
    # once each, untimed: page cache and .pyc
    outputs = {name: run(cmd, capture=True)[2] for name, cmd in commands.items()}
    assert json.loads(outputs["get"])["id"] == image_id, outputs["get"][:200]
    listed = json.loads(outputs["list"])
    walls: dict[str, list[float]] = {name: [] for name in commands}
    peak: dict[str, float] = {name: 0.0 for name in commands}
    for _ in range(args.cold_runs):
        for name, cmd in commands.items():
            wall, rss, _ = run(cmd)
            walls[name].append(wall)
            peak[name] = max(peak[name], rss)
    med = {name: statistics.median(v) for name, v in walls.items()}
    n = f"{args.rows:,}"
    report(
        f"cold imgdex get ID on the {n}-image store, {what} (new process, median of {args.cold_runs})",
        med["get"],
        "s",
        med["floor"],
        "python -c 'import duckdb'",
        peak_rss_mib=peak["get"],
    )
    report(
        f"cold imgdex list --page-size 100, first page, on the {n}-image store, {what} (median of {args.cold_runs})",
        med["list"],
        "s",
        med["floor"],
        "python -c 'import duckdb'",
        peak_rss_mib=peak["list"],
        listed=len(listed.get("images", [])) if isinstance(listed, dict) else -1,
    )


def load_files(store: str) -> int:
    """Data files in the current version of the images table."""
    from indexer.store import deltalog

    return len(deltalog.read_table(os.path.join(store, "images")).files)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dir", default="/tmp/imgdex-index-store-bench")
    parser.add_argument("--input-dir", default="/tmp/imgdex-store-bench", help="where store_bench keeps its input")
    parser.add_argument("--row-group", type=int, default=1024)
    parser.add_argument("--images", type=int, default=1000, help="images in the OCI layout")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cold-runs", type=int, default=11)
    parser.add_argument("--skip-index", action="store_true", help="only the reads")
    parser.add_argument("--compacted", action="store_true", help="also the reads on a compacted copy of the store")
    parser.add_argument("--json")
    args = parser.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    compiled_modules(args.dir, ROOT)
    args.base = os.path.join(args.dir, f"store-{args.rows}")

    build_store(args)
    started = time.perf_counter()
    count = count_images(args.base)
    report(
        "imgdex sql 'select count(*) from images' on the large store (one run)",
        time.perf_counter() - started,
        "s",
        images=count,
    )
    if count != args.rows:
        raise SystemExit(f"the large store holds {count} images, not {args.rows}")

    layout = os.path.join(args.dir, f"oci{args.images}")
    if not os.path.exists(os.path.join(layout, "index.json")):
        shutil.rmtree(layout, ignore_errors=True)
        corpus.write_oci_layout(layout, args.images, seed=1)
    archives = os.path.join(args.dir, "archive1")
    if not os.path.isdir(archives) or not os.listdir(archives):
        shutil.rmtree(archives, ignore_errors=True)
        corpus.write_docker_save(archives, 1, seed=1)
    archive = os.path.join(archives, sorted(os.listdir(archives))[0])

    parse_floor = statistics.median(floor.floor_oci_layout(layout)[1] for _ in range(args.repeat))
    if not args.skip_index:
        bench_index(args, f"oci:LAYOUT of {args.images:,} new images", f"oci:{layout}", parse_floor, args.images)
        bench_index(args, "docker-archive: of one image", f"docker-archive:{archive}", None, 1)
    bench_reads(args, args.base, f"as loaded ({load_files(args.base)} data files, not compacted)")
    if args.compacted:
        compacted = os.path.join(args.dir, "compacted")
        clone_store(args.base, compacted)
        wall, rss, _ = run([*imgdex_script(), "compact", "--store", compacted])
        report(
            f"imgdex compact of the {args.rows:,}-image store (whole process, vacuum included)",
            wall,
            "s",
            peak_rss_mib=rss,
        )
        bench_reads(args, compacted, f"compacted ({load_files(compacted)} data files)")
        shutil.rmtree(compacted, ignore_errors=True)

    if args.json:
        with open(args.json, "w") as f:
            json.dump(RESULTS, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
