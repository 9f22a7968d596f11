"""Does indexing grow linearly? `imgdex index` of OCI layouts of growing size, each against the
plain-Python floor of the same layout (bench/floor.py), with the process's peak RSS.

    python bench/scale_bench.py                              # 10,000 and 100,000 images
    python bench/scale_bench.py --sizes 10000,100000,1000000 # 1M: ~3M files, ~12 GB, minutes to write
    python bench/scale_bench.py -- --jobs 1                  # extra arguments go to `imgdex index`

Layouts are written once under --work and reused (bench/corpus.py; 50 repositories, three shared
base layers). Each size's figure is the median of --repeat runs into a new store; the floor is the
median of as many runs, in the same invocation. "growth" is the time of a size over the time of the
size before it, beside the growth of the images themselves: linear means the two are close.
Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import corpus  # noqa: E402
from launch import compiled_modules, launch  # noqa: E402
import floor  # noqa: E402


def _run(argv: list[str]) -> tuple[float, int]:
    """(wall seconds, peak RSS in MiB) of one process (see launch.py)."""
    wall, rss, _ = launch(argv, cwd=ROOT)
    return wall, int(rss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/imgdex-bench")
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("index_args", nargs="*", help="extra arguments for `imgdex index` (after --)")
    args = parser.parse_args()
    sizes = [int(text) for text in args.sizes.split(",")]
    compiled_modules(args.work, ROOT)
    previous = None
    for n in sizes:
        layout = os.path.join(args.work, f"oci{n}")
        if not os.path.exists(layout):
            t0 = time.perf_counter()
            corpus.write_oci_layout(layout, n)
            print(f"wrote {layout} in {time.perf_counter() - t0:.0f} s", flush=True)
        floor.floor_oci_layout(layout)  # untimed: the page cache holds the layout for both sides
        floors = [floor.floor_oci_layout(layout)[1] for _ in range(args.repeat)]
        store = os.path.join(args.work, "stores", "scale")
        command = [sys.executable, "-m", "queries.cli", "index", layout, "--store", store, "--quiet", *args.index_args]
        runs = []
        for _ in range(args.repeat):
            shutil.rmtree(store, ignore_errors=True)
            runs.append(_run(command))
        shutil.rmtree(store, ignore_errors=True)
        wall = statistics.median(w for w, _ in runs)
        rss = max(r for _, r in runs)
        floor_time = statistics.median(floors)
        line = (
            f"[scale] {n} images: {wall:.2f} s ({n / wall:,.0f} images/s), peak RSS {rss} MiB; "
            f"floor {floor_time:.2f} s; ratio {wall / floor_time:.2f}x"
        )
        if previous is not None:
            n0, wall0 = previous
            line += f"; growth {wall / wall0:.1f}x for {n / n0:.0f}x the images"
        print(line, flush=True)
        previous = (n, wall)


if __name__ == "__main__":
    main()
