"""Base-image lineage: what the ChainIDs cost an index run, and how fast `base` / `derived` answer.

    python bench/lineage_bench.py                      # index and query, full sizes
    python bench/lineage_bench.py --quick              # smaller corpora
    python bench/lineage_bench.py --only instructions  # or: index, query

index
    An OCI layout from bench/corpus.py (10,000 images sharing 3 base layers, one top layer each)
    indexed by a whole `imgdex index` process, alternately as shipped and with lineage turned off
    in the same code (no diff_ids kept, no ChainIDs computed: the columns stay empty). The ratio
    of the medians is the cost of lineage; CPU time is printed beside wall time, since it moves
    less on a busy machine. The same comparison is made in one process (CPU time of whole index
    runs, sources to snapshot, alternating), and the lineage work alone (ChainIDs and the three
    Arrow columns for the same images, cold prefix cache) is timed beside it.

instructions (only with --only instructions: ten minutes under valgrind)
    The two index runs of `index` under callgrind: instructions executed, with and without lineage.

query
    A store of 100,100 images written straight through the writer (parsing is not what is
    measured): 100 bases of 3 layers, each with 1,000 images of one more layer built on it.
    Cold `imgdex derived BASE` (a new process each time, 1,000 answers), `derived --all`,
    `base IMAGE` and a count over the image_bases view, each against `python -c "import duckdb"`
    run interleaved with it.

Corpora and stores are kept under --work (default /tmp/imgdex-bench) and reused.
Nothing here asserts a time: the figures go in the README.
"""

from __future__ import annotations

import argparse
import os
import resource
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

FAMILIES = 100
CHILDREN = 1000
BASE_LAYERS = 3
REGISTRY = "bench.example"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def _imgdex() -> list[str]:
    # The console script beside this interpreter: a version manager's shim on PATH adds its own start-up.
    beside = os.path.join(os.path.dirname(sys.executable), "imgdex")
    if os.access(beside, os.X_OK):
        return [beside]
    found = shutil.which("imgdex")
    return [found] if found else [sys.executable, "-m", "queries.cli"]


def _wall(argv: list[str]) -> float:
    return _timed(argv)[0]


def _timed(argv: list[str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one process; CPU time moves less than wall time on a busy machine."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _report(figure: str, value: float, unit: str, floor: float | None = None, floor_name: str = "") -> None:
    ratio = f"  ({value / floor:.3f}x {floor_name}, {floor:.4g} {unit})" if floor else ""
    print(f"{figure}: {value:.4g} {unit}{ratio}", flush=True)


# ----------------------------------------------------------------------------- index cost


def _index_child(lineage_on: bool, layout: str, store: str) -> None:
    """One index run in this process, as the console script runs it, optionally without lineage."""
    if not lineage_on:
        import indexer.lineage
        import indexer.sources.parse as parse

        indexer.lineage.chain_ids = lambda diff_ids: ()
        fields = parse._config_fields
        parse._config_fields = lambda config: {k: v for k, v in fields(config).items() if k != "diff_ids"}
    from queries.cli import main

    sys.argv = ["imgdex", "index", layout, "--store", store, "--quiet"]
    main()


class _Switch:
    """Lineage on or off in this process, by the same two patches as `_index_child`."""

    def __init__(self):
        import indexer.lineage
        import indexer.sources.parse as parse

        self.lineage, self.parse = indexer.lineage, parse
        self.chain_ids, self.fields = indexer.lineage.chain_ids, parse._config_fields

    def set(self, on: bool) -> None:
        fields = self.fields
        self.lineage.chain_ids = self.chain_ids if on else (lambda diff_ids: ())
        self.parse._config_fields = (
            fields if on else (lambda config: {k: v for k, v in fields(config).items() if k != "diff_ids"})
        )


def _in_process(layout: str, work: str, repeat: int) -> dict[bool, list[float]]:
    """CPU seconds of whole index runs (sources, store, snapshot) in this process, alternating."""
    from indexer.run import index_sources
    from indexer.store.delta_writer import DeltaWriter

    switch = _Switch()
    cpus: dict[bool, list[float]] = {True: [], False: []}
    for i in range(repeat + 1):
        for on in (False, True) if i % 2 else (True, False):
            switch.set(on)
            switch.lineage._PREFIXES.clear()
            store = os.path.join(work, "stores", "lineage-inproc")
            shutil.rmtree(store, ignore_errors=True)
            t0 = time.process_time()
            with DeltaWriter(store) as writer:
                index_sources([layout], writer)
            if i:  # the first round warms imports and caches
                cpus[on].append(time.process_time() - t0)
    switch.set(True)
    return cpus


def _lineage_work(layout: str) -> tuple[int, float]:
    """(images, seconds) of computing ChainIDs and building the lineage columns for the layout's images."""
    import json

    import pyarrow as pa

    from indexer import lineage
    from indexer.store.writer import _string_lists

    with open(os.path.join(layout, "index.json")) as f:
        manifests = json.load(f)["manifests"]
    lists = []
    for entry in manifests:
        with open(os.path.join(layout, "blobs", "sha256", entry["digest"][7:]), "rb") as f:
            config_digest = json.load(f)["config"]["digest"]
        with open(os.path.join(layout, "blobs", "sha256", config_digest[7:]), "rb") as f:
            lists.append(tuple(json.load(f)["rootfs"]["diff_ids"]))
    times = []
    for _ in range(5):
        lineage._PREFIXES.clear()  # as in a new index process
        t0 = time.perf_counter()
        chains = [lineage.chain_ids(d) for d in lists]
        _string_lists(lists)
        _string_lists(chains)
        pa.array([c[-1] if c else None for c in chains], pa.string())
        times.append(time.perf_counter() - t0)
    return len(lists), statistics.median(times)


def bench_index(args) -> None:
    n = 1000 if args.quick else 10_000
    layout = os.path.join(args.work, f"oci{n}")
    if not os.path.exists(layout):
        corpus.write_oci_layout(layout, n)
    walls: dict[bool, list[float]] = {True: [], False: []}
    cpus: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.repeat):
        for lineage_on in (False, True):
            store = os.path.join(args.work, "stores", "lineage-index")
            shutil.rmtree(store, ignore_errors=True)
            mode = "_index-with" if lineage_on else "_index-without"
            wall, cpu = _timed([sys.executable, os.path.abspath(__file__), mode, layout, store])
            walls[lineage_on].append(wall)
            cpus[lineage_on].append(cpu)
    print(f"[index] {n} images, medians of {args.repeat} alternating runs (whole process, store and snapshot)")
    for label, on in (("with lineage:   ", True), ("without lineage:", False)):
        print(
            f"[index]   {label} wall {', '.join(f'{w:.2f}' for w in walls[on])} s;"
            f" CPU {', '.join(f'{c:.2f}' for c in cpus[on])} s"
        )
    with_, without = statistics.median(walls[True]), statistics.median(walls[False])
    _report("[index] index wall time with lineage", with_, "s", without, "the same run without lineage")
    _report(
        "[index] index CPU time with lineage",
        statistics.median(cpus[True]),
        "s",
        statistics.median(cpus[False]),
        "the same run without lineage",
    )
    cpu = statistics.median(cpus[True])
    inproc = _in_process(layout, args.work, args.repeat)
    print(
        f"[index] in one process, CPU: with {', '.join(f'{c:.2f}' for c in inproc[True])} s;"
        f" without {', '.join(f'{c:.2f}' for c in inproc[False])} s"
    )
    _report(
        "[index] in-process index CPU time with lineage",
        statistics.median(inproc[True]),
        "s",
        statistics.median(inproc[False]),
        "the same run without lineage",
    )
    images, work = _lineage_work(layout)
    _report(f"[index] lineage work alone for {images} images (ChainIDs + Arrow columns)", work * 1000, "ms")
    print(f"[index]   = {100 * work / cpu:.2f} % of the index run's CPU time")


# ----------------------------------------------------------------------------- queries


def _digest(*parts: int) -> str:
    return "sha256:" + "".join(f"{p:016x}" for p in parts).ljust(64, "0")


def _synthetic_store(store: str, families: int, children: int) -> None:
    """`families` bases of BASE_LAYERS layers, each with `children` images of one more layer."""
    from indexer.model import Blob, ImageRecord, Platform
    from indexer.references import image_id
    from indexer.store.delta_writer import DeltaWriter
    from indexer.store.writer import now_utc

    def record(name: str, tag: str, serial: int, diff_ids: list[str], created: str) -> ImageRecord:
        digest = _digest(1, serial)
        layers = tuple(Blob(_digest(2, serial, k), 1000 + k, LAYER) for k in range(len(diff_ids)))
        return ImageRecord(
            id=image_id(REGISTRY, name, digest),
            registry=REGISTRY,
            name=name,
            digest=digest,
            media_type="application/vnd.oci.image.manifest.v1+json",
            kind="image",
            config=Blob(_digest(3, serial), 1500, "application/vnd.oci.image.config.v1+json"),
            layers=layers,
            layers_compressed=True,
            tags=(tag,),
            created=created,
            platform=Platform("linux", "amd64"),
            parent_digest="",
            source_kind="oci",
            source_path="bench",
            exactness=3,
            diff_ids=tuple(diff_ids),
        )

    records = []
    serial = 0
    for family in range(families):
        base_diff_ids = [_digest(4, family, k) for k in range(BASE_LAYERS)]
        serial += 1
        records.append(record(f"base/os{family}", "1", serial, base_diff_ids, "2026-01-01T00:00:00Z"))
        for child in range(children):
            serial += 1
            records.append(
                record(
                    f"team/app{family}",
                    f"t{child}",
                    serial,
                    [*base_diff_ids, _digest(5, family, child)],
                    f"2026-11-{1 + child % 28:02d}T10:54:27Z",
                )
            )
    with DeltaWriter(store) as writer:
        for start in range(0, len(records), 20_000):
            writer.write(records[start : start + 20_000], now_utc())


def bench_query(args) -> None:
    families, children = (10, CHILDREN) if args.quick else (FAMILIES, CHILDREN)
    total = families * (children + 1)
    store = os.path.join(args.work, "stores", f"lineage{total}")
    if not os.path.exists(os.path.join(store, "parquet")):
        shutil.rmtree(store, ignore_errors=True)
        t0 = time.perf_counter()
        _synthetic_store(store, families, children)
        print(f"[query] wrote a {total}-image store in {time.perf_counter() - t0:.1f} s")
    imgdex = _imgdex()
    target = f"{REGISTRY}/base/os{families // 2}:1"
    child = f"{REGISTRY}/team/app{families // 2}:t7"
    commands = {
        f"cold `imgdex derived BASE` ({children} images built on it, {total}-image store)": [
            *imgdex,
            "derived",
            target,
            "--store",
            store,
        ],
        "cold `imgdex derived BASE --all`": [*imgdex, "derived", target, "--all", "--store", store],
        "cold `imgdex base IMAGE`": [*imgdex, "base", child, "--store", store],
        "cold `imgdex sql 'SELECT count(*) FROM image_bases'`": [
            *imgdex,
            "sql",
            "SELECT count(*) FROM image_bases",
            "--store",
            store,
        ],
    }
    out = subprocess.run(commands[next(iter(commands))], check=True, capture_output=True, text=True, cwd=ROOT).stdout
    assert out.count('"sharedLayers"') == children, "the derived answer is not the expected one"
    repeat = max(args.repeat, 11)
    for figure, argv in commands.items():
        floors, walls = [], []
        for _ in range(repeat):
            floors.append(_wall([sys.executable, "-c", "import duckdb"]))
            walls.append(_wall(argv))
        _report(
            f"[query] {figure}, median of {repeat}",
            statistics.median(walls),
            "s",
            statistics.median(floors),
            "python -c 'import duckdb'",
        )
        print(f"[query]   range {min(walls):.3f}-{max(walls):.3f} s")


def bench_instructions(args) -> None:
    """Instructions executed (valgrind's callgrind), which a busy machine does not change."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        print("[instructions] valgrind not installed; skipped")
        return
    n = 1000 if args.quick else 10_000
    layout = os.path.join(args.work, f"oci{n}")
    if not os.path.exists(layout):
        corpus.write_oci_layout(layout, n)
    counts = {}
    for lineage_on in (False, True):
        store = os.path.join(args.work, "stores", "lineage-callgrind")
        shutil.rmtree(store, ignore_errors=True)
        mode = "_index-with" if lineage_on else "_index-without"
        result = subprocess.run(
            [
                valgrind,
                "--tool=callgrind",
                "--callgrind-out-file=/dev/null",
                sys.executable,
                os.path.abspath(__file__),
                mode,
                layout,
                store,
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=True,
        )
        collected = [line for line in result.stderr.splitlines() if "Collected :" in line]
        counts[lineage_on] = int(collected[-1].split(":")[-1])
    _report(
        f"[instructions] index of {n} images with lineage (whole process)",
        counts[True] / 1e9,
        "G instructions",
        counts[False] / 1e9,
        "the same run without lineage",
    )


SECTIONS = {"index": bench_index, "query": bench_query, "instructions": bench_instructions}


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] in ("_index-with", "_index-without"):
        _index_child(sys.argv[1] == "_index-with", sys.argv[2], sys.argv[3])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/imgdex-bench")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--only", action="append", choices=sorted(SECTIONS))
    args = parser.parse_args()
    os.makedirs(os.path.join(args.work, "stores"), exist_ok=True)
    print(f"imgdex lineage benchmarks on {os.cpu_count()} cores{', quick' if args.quick else ''}")
    for name in args.only or ("index", "query"):
        SECTIONS[name](args)


if __name__ == "__main__":
    main()
