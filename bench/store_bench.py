"""The Delta Lake store (indexer/store/delta.py) against floors measured in the same run.

    python bench/store_bench.py                  # 1,000,000 images (about 10 minutes here)
    python bench/store_bench.py --rows 100000    # a quicker pass
    python bench/store_bench.py --json out.json
    python bench/store_bench.py --phase list --rows 1000000   # only the list figures, on the store as it is

The synthetic images are generated once, deterministically, into an Arrow IPC file under --dir
(default /tmp/imgdex-store-bench) and streamed from there, so load timings exclude generation:
per image 2-5 layers (one of 50 shared base layers first), a config of about 1.6 KB of raw JSON
with its diff_ids, history, env and labels, a manifest of about 0.6 KB, and one tag.

Each phase runs in its own process, so its peak RSS is its own (wait4's ru_maxrss).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

BATCH = 50_000
RESULTS: list[dict] = []

# ---- synthetic data

_COMMANDS = [
    "/bin/sh -c #(nop) ADD file:%s in / ",
    "/bin/sh -c apt-get update && apt-get install -y --no-install-recommends "
    "ca-certificates curl tzdata && rm -rf /var/lib/apt/lists/*",
    "/bin/sh -c #(nop)  ENV LANG=C.UTF-8",
    "/bin/sh -c pip install --no-cache-dir -r /app/requirements.txt",
    "/bin/sh -c #(nop) WORKDIR /app",
    "/bin/sh -c #(nop) COPY dir:%s in /app ",
    '/bin/sh -c #(nop)  CMD ["python" "-m" "app"]',
]


def _hex(*parts) -> str:
    return hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()


def _image_id(n: int) -> str:
    digest = hashlib.sha256(f"bench.example/app@{n}".encode()).digest()
    return "crp" + base64.b32hexencode(digest).decode().lower()[:17]


def generate_batch(start: int, count: int, variant: str = ""):
    """`count` images numbered from `start`, in schema.IMAGES; `variant` changes their data."""
    import pyarrow as pa

    from indexer.store import schema

    cols: dict[str, list] = {f.name: [] for f in schema.IMAGES}
    now = 1_796_000_000_000_000
    for n in range(start, start + count):
        k = 2 + n % 4
        diff_ids = ["sha256:" + _hex("base", n % 50)] + ["sha256:" + _hex("diff", n, j, variant) for j in range(1, k)]
        layer_digests = ["sha256:" + _hex("base-gz", n % 50)] + [
            "sha256:" + _hex("layer", n, j, variant) for j in range(1, k)
        ]
        sizes = [30_000_000 + n % 1000] + [1000 + (n * 7919 + j) % 50_000_000 for j in range(1, k)]
        created = f"2026-{1 + n % 12:02d}-{1 + n % 28:02d}T10:{n % 60:02d}:27.{n % 1_000_000_000:09d}Z"
        history = [
            {
                "created": created,
                "created_by": _COMMANDS[(n + j) % len(_COMMANDS)].replace("%s", diff_ids[0][7:])
                if "%s" in _COMMANDS[(n + j) % len(_COMMANDS)]
                else _COMMANDS[(n + j) % len(_COMMANDS)],
                "comment": None,
                "empty_layer": j % 2 == 1,
            }
            for j in range(5)
        ]
        env = [
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG=C.UTF-8",
            f"APP_VERSION=1.{n % 100}.{n % 7}",
            "PYTHONUNBUFFERED=1",
        ]
        labels = [
            ("org.opencontainers.image.source", f"https://git.example/team{n % 1000}/app"),
            ("org.opencontainers.image.revision", _hex("rev", n, variant)[:40]),
            ("maintainer", f"team{n % 1000}@example.com"),
        ]
        config_raw = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "created": created,
                "config": {"Env": env, "Cmd": ["python", "-m", "app"], "WorkingDir": "/app", "Labels": dict(labels)},
                "rootfs": {"type": "layers", "diff_ids": diff_ids},
                "history": history,
            },
            separators=(",", ":"),
        ).encode()
        config_digest = "sha256:" + hashlib.sha256(config_raw).hexdigest()
        manifest_raw = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": config_digest,
                    "size": len(config_raw),
                },
                "layers": [
                    {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": s}
                    for d, s in zip(layer_digests, sizes, strict=True)
                ],
            },
            separators=(",", ":"),
        ).encode()
        row = {
            "id": _image_id(n),
            "registry": "bench.example",
            "name": f"team{n % 1000}/app{n % 37}",
            "digest": "sha256:" + hashlib.sha256(manifest_raw).hexdigest(),
            "media_type": "application/vnd.oci.image.manifest.v1+json",
            "kind": "image",
            "config_id": "crp" + _hex("cfg", config_digest)[:17],
            "config_digest": config_digest,
            "config_size": len(config_raw),
            "config_media_type": "application/vnd.oci.image.config.v1+json",
            "config_urls": [],
            "layers": [
                {
                    "id": "crp" + d[7:24],
                    "digest": d,
                    "size": s,
                    "media_type": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "urls": [],
                }
                for d, s in zip(layer_digests, sizes, strict=True)
            ],
            "layers_compressed": True,
            "compressed_size": sum(sizes),
            "tags": [f"v{n}"],
            "created": created,
            "created_at": None,
            "platform_os": "linux",
            "platform_architecture": "amd64",
            "platform_variant": None,
            "parent_digest": None,
            "labels": labels,
            "env": env,
            "entrypoint": [],
            "cmd": ["python", "-m", "app"],
            "history": history,
            "source_kind": "oci",
            "source_path": f"/data/layouts/team{n % 1000}",
            "exactness": 3,
            "id_origin": "derived",
            "indexed_at": now,
            "manifest_raw": manifest_raw,
            "config_raw": config_raw,
        }
        for name in cols:
            cols[name].append(row.get(name))
    arrays = []
    for field in schema.IMAGES:
        values = cols[field.name]
        if pa.types.is_list(field.type) and field.name in ("diff_ids", "chain_ids"):
            values = [[] for _ in values]
        if field.name == "created_at":
            arrays.append(pa.array([None] * len(values), pa.int64()).cast(field.type))
            continue
        if field.name == "indexed_at":
            arrays.append(pa.array(values, pa.int64()).cast(field.type))
            continue
        arrays.append(pa.array(values, field.type))
    return pa.Table.from_arrays(arrays, schema=schema.IMAGES)


def ensure_input(path: str, rows: int) -> None:
    import pyarrow as pa

    from indexer.store import schema

    marker = f"{path}.rows"
    if os.path.exists(path) and os.path.exists(marker) and open(marker).read() == str(rows):
        return
    started = time.perf_counter()
    with pa.OSFile(path + ".tmp", "wb") as sink, pa.ipc.new_file(sink, schema.IMAGES) as writer:
        for start in range(0, rows, BATCH):
            writer.write_table(generate_batch(start, min(BATCH, rows - start)), max_chunksize=BATCH)
    os.replace(path + ".tmp", path)
    with open(marker, "w") as f:
        f.write(str(rows))
    print(
        f"generated {rows:,} images into {path} ({os.path.getsize(path) / 2**30:.2f} GiB) in "
        f"{time.perf_counter() - started:.1f} s",
        flush=True,
    )


def input_batches(path: str):
    import pyarrow as pa

    # Read, not memory-mapped: mapped pages of the input would count in the writer's RSS.
    with pa.OSFile(path) as source:
        reader = pa.ipc.open_file(source)
        for i in range(reader.num_record_batches):
            yield pa.Table.from_batches([reader.get_batch(i)])


def tag_batches(path: str):
    import pyarrow as pa
    import pyarrow.compute as pc

    from indexer.store import schema

    for data in input_batches(path):
        tags = pc.list_flatten(data.column("tags"))
        yield pa.Table.from_arrays(
            [data.column("registry"), data.column("name"), tags, data.column("id")], schema=schema.TAGS
        )


# ---- phases, each in its own process


def phase_floor_write(args) -> dict:
    import pyarrow.parquet as pq

    from indexer.store import schema

    target = os.path.join(args.dir, "floor.parquet")
    started = time.perf_counter()
    with pq.ParquetWriter(target, schema.IMAGES, compression="zstd", compression_level=3) as writer:
        for data in input_batches(args.input):
            writer.write_table(data, row_group_size=args.row_group)
    return {"seconds": time.perf_counter() - started, "bytes": os.path.getsize(target)}


def phase_load(args) -> dict:
    from indexer.store.delta import Changes, DeltaStore

    shutil.rmtree(args.store, ignore_errors=True)
    started = time.perf_counter()
    with DeltaStore(args.store, row_group_rows=args.row_group) as store:
        store.create()
        result = store.write_run(
            {"run_id": "load"}, Changes(images=input_batches(args.input), tags=tag_batches(args.input))
        )
    return {"seconds": time.perf_counter() - started, "rows": result.rows}


def phase_incremental(args) -> dict:
    from indexer.store.delta import Changes, DeltaStore, premerge

    import pyarrow as pa

    first = args.rows + args.offset * 1000
    fresh = generate_batch(first, 600)
    # 200 of the new images take the tag of an older image of the same repository (names repeat
    # every 37,000 images): a tag move, which gives the older image a tags-only row.
    moved = [[f"v{n}", f"v{n - 37_000}"] if j < 200 else [f"v{n}"] for j, n in enumerate(range(first, first + 600))]
    fresh = fresh.set_column(fresh.schema.get_field_index("tags"), "tags", pa.array(moved, pa.list_(pa.string())))
    # Changed data under the same id and manifest digest, as a record of another source or
    # exactness brings: an id is one image, so a variant with its own digest would be refused.
    start = args.offset * 7 % args.rows
    changed = generate_batch(start, 200, variant=f"v{args.offset}")
    digest = changed.schema.get_field_index("digest")
    changed = changed.set_column(digest, "digest", generate_batch(start, 200).column("digest"))
    same = generate_batch((args.offset * 13 + 5000) % (args.rows - 200), 200)

    incoming = pa.concat_tables([fresh, changed, same])
    out = {}
    with DeltaStore(args.store, row_group_rows=args.row_group) as store:
        started = time.perf_counter()
        result = store.write_run({"run_id": f"inc-{args.offset}"}, lambda snap: premerge(snap, incoming))
        out["premerge_seconds"] = time.perf_counter() - started
        out["premerge_rows"] = result.rows
        blind = generate_batch(args.rows * 2 + args.offset * 1000, 1000)
        started = time.perf_counter()
        store.write_run({"run_id": f"blind-{args.offset}"}, Changes(images=blind))
        out["blind_seconds"] = time.perf_counter() - started
    return out


def phase_get(args) -> dict:
    import duckdb

    from indexer.store import deltalog
    from queries.render import SELECT

    files = deltalog.read_store(args.store)
    rng = random.Random(7)
    ids = [_image_id(rng.randrange(args.rows)) for _ in range(args.lookups)]
    listed = ", ".join("'" + p + "'" for p in files["images"].files)
    out = {"files": len(files["images"].files)}
    uncached = duckdb.connect()
    con = duckdb.connect()
    # Footers parsed once per connection instead of once per query: what a long-lived reader wants.
    con.execute("SET parquet_metadata_cache = true")
    for c in (con, uncached):
        for statement in deltalog.view_statements(files):
            c.execute(statement)
        c.execute(f"CREATE VIEW plain AS SELECT * FROM read_parquet([{listed}])")
    images = files["images"]

    def pruned(image_id):
        # only the files whose id range (Delta add statistics) may hold the id
        return f"({deltalog.resolved_sql(images.for_key(image_id))})"

    for label, relation, c in (
        ("view", "images", con),
        ("plain", "plain", con),
        ("uncached", "images", uncached),
        ("pruned", pruned, con),
    ):
        con = c
        name = relation if isinstance(relation, str) else relation(ids[0])
        con.execute(f"SELECT {SELECT} FROM {name} AS i WHERE id = ?", [ids[0]]).fetchall()
        times = []
        for image_id in ids:
            t = time.perf_counter()
            name = relation if isinstance(relation, str) else relation(image_id)
            rows = con.execute(f"SELECT {SELECT} FROM {name} AS i WHERE id = ?", [image_id]).fetchall()
            times.append(time.perf_counter() - t)
            assert len(rows) == 1, (label, image_id, rows)
        times.sort()
        out[label] = {"p50_ms": 1000 * times[len(times) // 2], "p99_ms": 1000 * times[int(len(times) * 0.99)]}
    return out


def phase_list(args) -> dict:
    """`imgdex list` pages of 100 in the default order: the first and page 501 (rows 50,001 to
    50,100), each on a new reader in this process (median of --lookups // 50 runs, at least 5) and
    as a whole `imgdex list` process (median of 3)."""
    from queries import engine, listing

    def page(token: str) -> tuple[dict, float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        reader = engine.connect(args.store, tables=("images",))
        result = listing.list_images(reader, listing.Query(page_size=100, page_token=token))
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        reader.close()
        return result, seconds, cpu

    reader = engine.connect(args.store, tables=("images",))
    plan = listing.plan(listing.Query())
    key = reader.execute(f"SELECT {plan.key_sql} FROM images ORDER BY {plan.order_sql} LIMIT 1 OFFSET 49999")
    deep = listing.page_token(plan, tuple(key.fetchone()))
    reader.close()
    out = {}
    for label, token in (("first", ""), ("deep", deep)):
        result = page(token)[0]
        assert len(result["images"]) == 100, label
        timed = [page(token)[1:] for _ in range(max(5, args.lookups // 50))]
        argv = [sys.executable, "-m", "queries.cli", "list", "--store", args.store]
        argv += ["--page-token", token] if token else []
        walls = []
        for _ in range(3):
            started = time.perf_counter()
            subprocess.run(argv, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
            walls.append(time.perf_counter() - started)
        out[label] = {
            "ms": 1000 * statistics.median(t[0] for t in timed),
            "cpu_ms": 1000 * statistics.median(t[1] for t in timed),
            "process_ms": 1000 * statistics.median(walls),
            "first_id": result["images"][0]["id"],
        }
    return out


def phase_compact(args) -> dict:
    from datetime import timedelta

    from indexer.store.delta import DeltaStore

    with DeltaStore(args.store, row_group_rows=args.row_group, temp_directory=os.path.join(args.dir, "spill")) as store:
        started = time.perf_counter()
        report = store.compact(vacuum=False)
        seconds = time.perf_counter() - started
        bytes_retained = _du(args.store)
        started = time.perf_counter()
        store.vacuum(retention=timedelta(0), allow_short_retention=True)
        vacuum_seconds = time.perf_counter() - started
    return {"seconds": seconds, "vacuum_seconds": vacuum_seconds, "report": report, "bytes_retained": bytes_retained}


def phase_writer(args) -> dict:
    from indexer.store.delta import DeltaStore, premerge

    started = time.perf_counter()
    with DeltaStore(args.store, row_group_rows=args.row_group) as store:
        for i in range(args.runs):
            batch = generate_batch(args.rows * 3 + args.offset + i * 1000, 1000)
            store.write_run({"run_id": f"c-{args.offset}-{i}"}, lambda snap, b=batch: premerge(snap, b))
    return {"seconds": time.perf_counter() - started}


PHASES = {
    "floor_write": phase_floor_write,
    "load": phase_load,
    "incremental": phase_incremental,
    "get": phase_get,
    "list": phase_list,
    "compact": phase_compact,
    "writer": phase_writer,
}


def run_phase(args, name: str, **extra) -> tuple[dict, float, float]:
    """The phase's result, its wall time and its peak RSS in MiB."""
    cmd = [
        sys.executable,
        __file__,
        "--phase",
        name,
        "--dir",
        args.dir,
        "--rows",
        str(args.rows),
        "--row-group",
        str(args.row_group),
        "--lookups",
        str(args.lookups),
    ]
    for key, value in extra.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, cwd=ROOT)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"phase {name} failed")
    return json.loads(out.decode().strip().splitlines()[-1]), wall, usage.ru_maxrss / 1024


def _du(path: str) -> int:
    total = 0
    for folder, _, names in os.walk(path):
        for name in names:
            total += os.path.getsize(os.path.join(folder, name))
    return total


def _cold_interleaved(variants: dict[str, str], runs: int) -> dict[str, float]:
    """Median wall time of each snippet in a new process; rounds interleave the snippets, so that
    load from elsewhere on the machine falls on all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(runs):
        for name, code in variants.items():
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def report(
    figure: str, value: float, unit: str, floor: float | None = None, floor_name: str = "", target: str = ""
) -> None:
    row = {"figure": figure, "value": value, "unit": unit, "floor": floor, "floor_name": floor_name, "target": target}
    text = f"{figure}: {value:.4g} {unit}"
    if floor:
        row["ratio"] = value / floor
        text += f"   ratio {row['ratio']:.2f}x vs {floor_name} ({floor:.4g} {unit})"
    if target:
        text += f"   target {target}"
    RESULTS.append(row)
    print(text, flush=True)


def report_list(figures: dict, what: str) -> None:
    for label, shown in (("first", "first page"), ("deep", "page 501")):
        row = figures[label]
        report(f"imgdex list {shown} of 100, {what}, in-process (new reader)", row["ms"], "ms", target="<= 200 ms")
        report("  CPU of the same (all threads)", row["cpu_ms"], "ms")
        report("  whole process", row["process_ms"], "ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dir", default="/tmp/imgdex-store-bench")
    parser.add_argument("--row-group", type=int, default=1024)
    parser.add_argument("--lookups", type=int, default=500)
    parser.add_argument("--cold-runs", type=int, default=11)
    parser.add_argument("--json")
    parser.add_argument("--phase", choices=sorted(PHASES))
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    args.input = os.path.join(args.dir, f"input-{args.rows}.arrow")
    args.store = os.path.join(args.dir, "store")
    if args.phase:
        print(json.dumps(PHASES[args.phase](args)), flush=True)
        return 0
    os.makedirs(args.dir, exist_ok=True)
    ensure_input(args.input, args.rows)
    n = f"{args.rows:,}"

    floor, floor_wall, floor_rss = run_phase(args, "floor_write")
    load, load_wall, load_rss = run_phase(args, "load")
    report(
        f"first load of {n} images (+ {n} tags), streamed",
        load["seconds"],
        "s",
        floor["seconds"],
        "pyarrow ParquetWriter of the same images, one file",
    )
    report("first load peak RSS", load_rss, "MiB", floor_rss, "the floor's peak RSS", "<= 1024 MiB")
    loaded_bytes = _du(os.path.join(args.store, "images"))
    report("images table bytes after load", loaded_bytes / 2**20, "MiB", floor["bytes"] / 2**20, "floor Parquet")

    get_before, _, _ = run_phase(args, "get")
    report_list(run_phase(args, "list")[0], f"{get_before['files']} load files")
    report(
        f"warm get by id p50, {get_before['files']} load files (resolution view)",
        get_before["view"]["p50_ms"],
        "ms",
        get_before["plain"]["p50_ms"],
        "DuckDB read_parquet of the same files, no view",
    )
    report(
        "warm get by id p99, before compaction",
        get_before["view"]["p99_ms"],
        "ms",
        get_before["plain"]["p99_ms"],
        "same files, no view",
        "<= 5 ms",
    )
    report(
        "warm get by id p99, before compaction, without parquet_metadata_cache", get_before["uncached"]["p99_ms"], "ms"
    )

    for i in range(3):
        inc, inc_wall, _ = run_phase(args, "incremental", offset=i + 1)
        report(
            f"incremental run {i + 1}: 1,000 images (600 new of which 200 take an older image's tag, "
            "200 changed, 200 unchanged) with premerge",
            inc["premerge_seconds"],
            "s",
            target="<= 2 s",
        )
        report(f"incremental run {i + 1}: 1,000 new images appended blind", inc["blind_seconds"], "s")

    compact, compact_wall, compact_rss = run_phase(args, "compact")
    report(f"compact {n} images (+ tags, runs)", compact["seconds"], "s", floor["seconds"], "floor Parquet write")
    report("compact peak RSS", compact_rss, "MiB")
    images_bytes = _du(os.path.join(args.store, "images"))
    report(
        "images table bytes after compact and vacuum",
        images_bytes / 2**20,
        "MiB",
        floor["bytes"] / 2**20,
        "floor Parquet (one version per image)",
        "<= 1.3x",
    )
    report(
        "whole store bytes inside the retention window (old files kept)",
        compact["bytes_retained"] / 2**20,
        "MiB",
        floor["bytes"] / 2**20,
        "floor Parquet",
    )

    get_after, _, _ = run_phase(args, "get")
    report_list(run_phase(args, "list")[0], "compacted")
    report(
        "warm get by id p50, compacted",
        get_after["view"]["p50_ms"],
        "ms",
        get_after["plain"]["p50_ms"],
        "same files, no view",
    )
    report(
        "warm get by id p99, compacted",
        get_after["view"]["p99_ms"],
        "ms",
        get_after["plain"]["p99_ms"],
        "same files, no view",
        "<= 5 ms",
    )
    report("warm get by id p50 / p99, compacted, without parquet_metadata_cache", get_after["uncached"]["p50_ms"], "ms")
    report("  p99 of the same", get_after["uncached"]["p99_ms"], "ms")
    report(
        "warm get by id p50, compacted, only files whose Delta id range holds the id",
        get_after["pruned"]["p50_ms"],
        "ms",
        get_after["plain"]["p50_ms"],
        "all files, no view",
    )
    report(
        "warm get by id p99, compacted, only files whose Delta id range holds the id",
        get_after["pruned"]["p99_ms"],
        "ms",
        get_after["plain"]["p99_ms"],
        "all files, no view",
        "<= 5 ms",
    )

    image_id = _image_id(12345)
    query = f"f'SELECT {{SELECT}} FROM read_parquet([{{listed}}]) WHERE id = ?', [{image_id!r}]"
    variants = {
        "floor": "import duckdb",
        "known": (
            "import duckdb\nfrom queries.render import SELECT\n"
            f"listed = {', '.join(repr(f) for f in deltalog_files(args.store))!r}\ncon = duckdb.connect()\n"
            f"assert con.execute({query}).fetchall()\n"
        ),
        "log": (
            "import duckdb\nfrom indexer.store import deltalog\nfrom queries.render import SELECT\n"
            f"con = duckdb.connect()\nfiles = deltalog.read_store({args.store!r}, con=con)\n"
            "listed = ', '.join(repr(f) for f in files['images'].files)\n"
            f"assert con.execute({query}).fetchall()\n"
        ),
        "view": (
            "import duckdb\nfrom indexer.store import deltalog\nfrom queries.render import SELECT\n"
            f"con = duckdb.connect()\nfiles = deltalog.read_store({args.store!r}, con=con)\n"
            "con.execute(';'.join(deltalog.view_statements(files)))\n"
            f"assert con.execute(f'SELECT {{SELECT}} FROM images WHERE id = ?', [{image_id!r}]).fetchall()\n"
        ),
        "pruned": (
            "import duckdb\nfrom indexer.store import deltalog\nfrom queries.render import SELECT\n"
            f"con = duckdb.connect()\nfiles = deltalog.read_store({args.store!r}, tables=('images',), con=con)\n"
            f"sql = deltalog.resolved_sql(files['images'].for_key({image_id!r}))\n"
            f"assert con.execute(f'SELECT {{SELECT}} FROM ({{sql}}) AS i WHERE id = ?', [{image_id!r}]).fetchall()\n"
        ),
        "deltalake": (
            "import duckdb, deltalake\nfrom queries.render import SELECT\n"
            f"files = {{t: deltalake.DeltaTable({args.store!r} + '/' + t).file_uris()"
            " for t in ('images', 'tags', 'runs')}\n"
            "listed = ', '.join(repr(f) for f in files['images'])\ncon = duckdb.connect()\n"
            f"assert con.execute({query}).fetchall()\n"
        ),
        "import deltalake": "import deltalake",
        "import pyarrow": "import pyarrow",
        "pass": "pass",
    }
    cold = _cold_interleaved(variants, args.cold_runs)
    report(
        "cold get (new process): file list known in advance, read_parquet, no view",
        cold["known"],
        "s",
        cold["floor"],
        "python -c 'import duckdb'",
    )
    report(
        "cold get (new process): file list from the _delta_log reader, no view",
        cold["log"],
        "s",
        cold["floor"],
        "python -c 'import duckdb'",
    )
    report(
        "cold get (new process): _delta_log reader + resolution views",
        cold["view"],
        "s",
        cold["floor"],
        "python -c 'import duckdb'",
        "<= 1.5x",
    )
    report(
        "cold get (new process): _delta_log reader, resolution SQL over the files whose id range holds the id",
        cold["pruned"],
        "s",
        cold["floor"],
        "python -c 'import duckdb'",
        "<= 1.5x",
    )
    report(
        "cold get (new process): file list through deltalake, no view",
        cold["deltalake"],
        "s",
        cold["floor"],
        "python -c 'import duckdb'",
    )
    for module in ("deltalake", "pyarrow"):
        report(f"python -c 'import {module}'", cold[f"import {module}"], "s", cold["pass"], "python -c pass")
    report("python -c 'import duckdb'", cold["floor"], "s", cold["pass"], "python -c pass")

    one, one_wall, _ = run_phase(args, "writer", offset=0, runs=8)
    procs = []
    started = time.perf_counter()
    for w in range(4):
        cmd = [
            sys.executable,
            __file__,
            "--phase",
            "writer",
            "--dir",
            args.dir,
            "--rows",
            str(args.rows),
            "--offset",
            str(100_000 * (w + 1)),
            "--runs",
            "2",
        ]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, cwd=ROOT))
    assert all(p.wait() == 0 for p in procs)
    four = time.perf_counter() - started
    report(
        "4 concurrent writers x 2 runs of 1,000 new images (premerge), total",
        four,
        "s",
        one_wall,
        "1 writer doing the same 8 runs",
    )

    if args.json:
        with open(args.json, "w") as f:
            json.dump(RESULTS, f, indent=2)
    return 0


def deltalog_files(store: str) -> list[str]:
    from indexer.store import deltalog

    return list(deltalog.read_table(f"{store}/images").files)


if __name__ == "__main__":
    sys.exit(main())
