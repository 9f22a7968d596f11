"""`imgdex list` on large stores: the first page and a page 500 deep, in-process and as a whole process.

    python bench/list_bench.py                       # 100,000 images
    python bench/list_bench.py --images 1000000      # 1M (derived from the 100,000 store in seconds)
    python bench/list_bench.py --delta /tmp/imgdex-index-store-bench/store-1000000   # a 1M Delta store

The 100,000-image store is the one bench/serve_bench.py writes (through the store writer), and is
reused. Larger stores are bare Parquet copies derived from it with DuckDB: each image repeated with
a new id, digest and tags, sorted by id in row groups of 8,192 as the writer writes them, so a
million images take seconds to make instead of minutes of Python records.

--delta takes a Delta store as a run loaded it (bench/index_store_bench.py keeps one of 1M images,
from bench/store_bench.py's synthetic images). It is copied (data files hard-linked) and compacted
by `imgdex compact` of this checkout, the copy kept in --work for the next run (--recompact makes
it again); then measured as it is, and with --appended incremental runs of bench/store_bench.py
after the compaction (1,000 images each: new ones, tag moves, changed and unchanged records), as a
store reads between two nightly compactions.

Each in-process figure opens a new reader (as every CLI command does) and lists one page; the
median of --runs runs. "deep" is page 501 of 100 (rows 50,001 to 50,100), reached with pages of
1,000. The whole-process figure is `imgdex list` in a new interpreter, start-up included, for the
first page and the deep one. Nothing asserts a time.
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
BASE_IMAGES = 100_000

ORDERS = ("", "created_at desc", "last_modified desc, name")


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def base_store(work: str) -> str:
    sys.path.insert(0, HERE)
    import serve_bench

    store = os.path.join(work, "stores", f"serve{BASE_IMAGES}")
    ids_file = store + ".ids"
    if not os.path.exists(ids_file):
        t0 = time.perf_counter()
        ids = serve_bench.make_store(store, BASE_IMAGES)
        with open(ids_file, "w") as f:
            f.write("\n".join(ids))
        print(f"store of {BASE_IMAGES} images written in {time.perf_counter() - t0:.1f} s")
    return store


def derived_store(work: str, base: str, n: int) -> str:
    """A bare Parquet store of n images: the base images repeated with new ids, digests and tags."""
    import duckdb

    store = os.path.join(work, "stores", f"list{n}")
    images = os.path.join(store, "images.parquet")
    if os.path.exists(images):
        return store
    os.makedirs(store, exist_ok=True)
    copies = -(-n // BASE_IMAGES)
    source = os.path.join(os.path.realpath(os.path.join(base, "parquet")), "images.parquet")
    t0 = time.perf_counter()
    con = duckdb.connect()
    con.execute(
        f"""COPY (
            SELECT * EXCLUDE (c) REPLACE (
                'crp' || md5(id || '-' || c)[:17] AS id,
                'sha256:' || sha256(digest || '-' || c) AS digest,
                list_transform(tags, lambda t: t || '-' || c) AS tags
            )
            FROM read_parquet({_quote(source)}), range({copies}) r(c)
            LIMIT {n}
        ) TO {_quote(images + ".tmp")} (FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 8192)"""
    )
    # Sorted by id as the writer sorts it, in a second pass so that the LIMIT above is cheap.
    con.execute(
        f"COPY (SELECT * FROM read_parquet({_quote(images + '.tmp')}) ORDER BY id) TO {_quote(images)} "
        "(FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 8192)"
    )
    os.remove(images + ".tmp")
    con.close()
    print(f"store of {n} images derived in {time.perf_counter() - t0:.1f} s")
    return store


def _page(store: str, order: str, size: int, token: str) -> tuple[dict, float, float]:
    """One page on a new reader: (the response, wall seconds, CPU seconds of every thread)."""
    from queries import engine, listing

    t0, c0 = time.perf_counter(), time.process_time()
    con = engine.connect(store, tables=("images",))
    result = listing.list_images(con, listing.Query(order_by=order, page_size=size, page_token=token))
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    con.close()
    return result, seconds, cpu


def deep_token(store: str, order: str, rows: int) -> tuple[str, float]:
    """The token after `rows` rows, and the seconds it took to page there by 1,000."""
    token, t0 = "", time.perf_counter()
    for _ in range(rows // 1000):
        token = _page(store, order, 1000, token)[0]["nextPageToken"]
    return token, time.perf_counter() - t0


def in_process(store: str, order: str, token: str, runs: int) -> tuple[float, float, str]:
    """Median wall and CPU seconds of one page of 100, and the page's first id."""
    walls, cpus, first_id = [], [], ""
    for _ in range(runs):
        result, seconds, cpu = _page(store, order, 100, token)
        walls.append(seconds)
        cpus.append(cpu)
        first_id = result["images"][0]["id"]
    return statistics.median(walls), statistics.median(cpus), first_id


def whole_process(root: str, store: str, order: str, token: str, runs: int) -> tuple[float, float]:
    """Median wall seconds and CPU seconds (user + system) of `imgdex list` in a new process."""
    argv = [sys.executable, "-m", "queries.cli", "list", "--store", store, "--order-by", order]
    if token:
        argv += ["--page-token", token]
    walls, cpus = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        process = subprocess.Popen(argv, cwd=root, stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(process.pid, 0)
        walls.append(time.perf_counter() - t0)
        cpus.append(usage.ru_utime + usage.ru_stime)
        if status != 0:
            raise SystemExit(f"imgdex list failed on {store}")
    return statistics.median(walls), statistics.median(cpus)


def clone(base: str, target: str) -> None:
    """A copy that a compaction or a run may change without touching `base`: data files are never
    rewritten, so they are hard-linked; the logs are copied."""
    shutil.rmtree(target, ignore_errors=True)
    for folder, _, names in os.walk(base):
        rel = os.path.relpath(folder, base)
        os.makedirs(os.path.join(target, rel), exist_ok=True)
        for name in names:
            source, dest = os.path.join(folder, name), os.path.join(target, rel, name)
            if "_delta_log" in rel.split(os.sep):
                shutil.copy2(source, dest)
            else:
                os.link(source, dest)


def delta_stores(root: str, work: str, base: str, appended: int, recompact: bool) -> dict[str, str]:
    """The compacted copy of `base`, and a copy of it with `appended` incremental runs after."""
    compacted = os.path.join(work, "stores", "delta-compacted")
    if recompact or not os.path.isdir(os.path.join(compacted, "images")):
        clone(base, compacted + ".tmp")
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "queries.cli", "compact", "--store", compacted + ".tmp", "--retention", "0d"]
            + ["--allow-short-retention"],
            cwd=root,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        print(f"imgdex compact of a copy of {base}: {time.perf_counter() - t0:.1f} s")
        shutil.rmtree(compacted, ignore_errors=True)
        os.rename(compacted + ".tmp", compacted)
    stores = {"compacted": compacted}
    if appended:
        sys.path.insert(0, HERE)
        import store_bench

        rows = _count(compacted)
        target = os.path.join(work, "stores", "delta-appended")
        clone(compacted, target)
        for offset in range(1, appended + 1):
            args = argparse.Namespace(store=target, rows=rows, offset=offset, row_group=1024)
            store_bench.phase_incremental(args)
        stores[f"compacted + {appended} runs"] = target
    return stores


def _count(store: str) -> int:
    from queries import engine

    reader = engine.connect(store, tables=("images",))
    try:
        return reader.execute("SELECT count(*) FROM images").fetchone()[0]
    finally:
        reader.close()


def measure(root: str, store: str, runs: int) -> dict:
    figures = {}
    for order in ORDERS:
        shown = order or "name, digest (default)"
        first, first_cpu, first_id = in_process(store, order, "", runs)
        token, walk = deep_token(store, order, 50_000)
        deep, deep_cpu, deep_id = in_process(store, order, token, runs)
        process, process_cpu = whole_process(root, store, order, "", max(3, runs // 2))
        deep_process, deep_process_cpu = whole_process(root, store, order, token, max(3, runs // 2))
        figures[shown] = {
            "first_ms": 1000 * first,
            "first_cpu_ms": 1000 * first_cpu,
            "deep_ms": 1000 * deep,
            "deep_cpu_ms": 1000 * deep_cpu,
            "process_ms": 1000 * process,
            "process_cpu_ms": 1000 * process_cpu,
            "deep_process_ms": 1000 * deep_process,
            "deep_process_cpu_ms": 1000 * deep_process_cpu,
        }
        print(
            f"  {shown:28s} first page {1000 * first:6.1f} ms ({1000 * first_cpu:6.1f})"
            f"   page 501 {1000 * deep:6.1f} ms ({1000 * deep_cpu:6.1f})   paging there by 1,000: {walk:5.1f} s"
            f"   whole process {1000 * process:5.0f} ms ({1000 * process_cpu:4.0f}),"
            f" page 501 {1000 * deep_process:5.0f} ms ({1000 * deep_process_cpu:4.0f})   [{first_id} .. {deep_id}]",
            flush=True,
        )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/imgdex-bench")
    parser.add_argument("--images", type=int, default=BASE_IMAGES)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--delta", metavar="STORE", help="a Delta store as loaded, measured compacted")
    parser.add_argument("--appended", type=int, default=3, help="incremental runs after compaction (0: none)")
    parser.add_argument("--recompact", action="store_true", help="compact the copy of --delta again")
    args = parser.parse_args()
    root = os.path.dirname(HERE)
    sys.path.insert(0, root)

    if args.delta:
        stores = delta_stores(root, args.work, args.delta, args.appended, args.recompact)
    else:
        store = base_store(args.work)
        if args.images != BASE_IMAGES:
            store = derived_store(args.work, store, args.images)
        stores = {f"{args.images} images": store}
    print(f"checkout {root}, medians of {args.runs}, wall (CPU of all threads)")
    # Other work on the machine shows in wall times: the load is printed with the figures.
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    figures = {}
    for label, store in stores.items():
        print(f"{label} ({store}):")
        figures[label] = measure(root, store, args.runs)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(json.dumps({"images": args.images if not args.delta else None, "figures": figures}))


if __name__ == "__main__":
    main()
