"""`imgdex serve` under load: 8 concurrent clients, each figure against floors measured in the same run.

    python bench/serve_bench.py                  # 100,000 images, 5 s per figure
    python bench/serve_bench.py --images 10000 --seconds 2
    python bench/serve_bench.py --asgi           # also REST on Starlette + uvicorn, for comparison
    python bench/serve_bench.py --only grpc-list,rest-list   # some figures only

The store is written straight through the store writer (like bench/run.py's lookup store): this
measures serving, not parsing. Names are YCR-style (`crp<registry id>/team/appN` under
cr.yandex) so registries and repositories exist; each image has three shared base layers and one
of its own. Clients are separate processes (one client each, requests back to back), so the
clients' own CPU competes with the server's exactly as it does for every figure, floors included.

Figures: gRPC Get through the official SDK client, REST Get through http.client (keep-alive),
gRPC List of 100 (all images, and one registry's newest first) and REST List of 100, each as
requests/s and p50/p99 latency, each list walking its pages from the first; floors: the
server's gRPC health check (no store access) and a REST request for an unknown path (routing
only), and the cold `imgdex get ID` rate (a new process per lookup). Nothing asserts a time.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import corpus  # noqa: E402  (beside this file)

# Two registry ids of the real shape: "crp" and 17 base32hex characters.
REGISTRIES = ("crpbench0reg1str0001", "crpbench0reg1str0002")
CLIENTS = 8
KINDS = ("grpc-health", "grpc-get", "grpc-list", "grpc-list-scoped", "rest-noop", "rest-get", "rest-list")


def make_store(store: str, n: int) -> list[str]:
    """n images in `store`; returns their ids."""
    from indexer.model import Blob, ImageRecord, Platform
    from indexer.references import image_id

    base = [Blob(f"sha256:{i:064x}", 10_000_000 + i, "application/vnd.oci.image.layer.v1.tar+gzip") for i in range(3)]
    ids, records = [], []
    for i in range(n):
        registry_id = REGISTRIES[i % len(REGISTRIES)]
        name = f"{registry_id}/team/app{i % 50}"
        digest = f"sha256:{i + 10**6:064x}"
        rid = image_id("cr.yandex", name, digest)
        ids.append(rid)
        nanos = f".{i % 1000:03d}" if i % 3 else ""  # proto3 prints 0, 3, 6 or 9 digits
        records.append(
            ImageRecord(
                id=rid,
                registry="cr.yandex",
                name=name,
                digest=digest,
                media_type="application/vnd.oci.image.manifest.v1+json",
                kind="image",
                config=Blob(f"sha256:{i + 2 * 10**6:064x}", 1500 + i % 100, "application/vnd.oci.image.config.v1+json"),
                layers=(
                    *base,
                    Blob(f"sha256:{i + 3 * 10**6:064x}", 5000 + i, "application/vnd.oci.image.layer.v1.tar+gzip"),
                ),
                layers_compressed=True,
                tags=(f"t{i}",),
                created=f"2026-11-{1 + i % 28:02d}T10:54:27{nanos}Z",
                platform=Platform("linux", "amd64"),
                parent_digest="",
                source_kind="oci",
                source_path="bench",
                exactness=3,
            )
        )
    corpus.write_records(store, records)
    return ids


# --- clients (each runs in its own process) ---------------------------------------------------


def _client(kind: str, address: str, ids: list[str], seconds: float, seed: int, max_requests: int) -> list[float]:
    rng = random.Random(seed)
    latencies: list[float] = []
    call = _make_call(kind, address, ids, rng)
    call()  # connect and warm up outside the measurement
    end = time.perf_counter() + seconds
    while len(latencies) < max_requests:
        t0 = time.perf_counter()
        if t0 >= end:
            break
        call()
        latencies.append(time.perf_counter() - t0)
    return latencies


def _make_call(kind: str, address: str, ids: list[str], rng: random.Random):
    if kind.startswith("grpc"):
        import yandexcloud
        from yandex.cloud.containerregistry.v1.image_service_pb2 import GetImageRequest, ListImagesRequest
        from yandex.cloud.containerregistry.v1.image_service_pb2_grpc import ImageServiceStub

        sdk = yandexcloud.SDK()
        images = sdk.client(ImageServiceStub, endpoint=address, insecure=True)
        if kind == "grpc-get":
            return lambda: images.Get(GetImageRequest(image_id=rng.choice(ids)), timeout=10)
        if kind in ("grpc-list", "grpc-list-scoped"):
            state = {"token": ""}
            # Scoped: one registry's images, newest first (a condition, and an order of its own).
            fields = {"registry_id": REGISTRIES[0], "order_by": "created_at desc"} if kind == "grpc-list-scoped" else {}

            def list_page():
                page = images.List(ListImagesRequest(page_size=100, page_token=state["token"], **fields), timeout=10)
                state["token"] = page.next_page_token  # walk the pages, back to the first at the end

            return list_page
        if kind == "grpc-health":
            import grpc
            from grpc_health.v1 import health_pb2, health_pb2_grpc

            health = health_pb2_grpc.HealthStub(grpc.insecure_channel(address))
            return lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=10)
    import http.client
    import urllib.parse

    host, _, port = address.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)

    def get(path: str, ok=(200,)) -> bytes:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        if response.status not in ok:
            raise RuntimeError(f"{path}: HTTP {response.status} {body[:200]!r}")
        return body

    if kind == "rest-get":
        return lambda: get(f"/container-registry/v1/images/{rng.choice(ids)}")
    if kind == "rest-list":
        state = {"token": ""}

        def list_page():
            query = urllib.parse.urlencode({"pageSize": 100, "pageToken": state["token"]})
            state["token"] = json.loads(get(f"/container-registry/v1/images?{query}")).get("nextPageToken", "")

        return list_page
    if kind == "rest-noop":
        return lambda: get("/container-registry/v1/nothing", ok=(404,))
    raise ValueError(kind)


def _run_client(args):
    return _client(*args)


def load(kind: str, address: str, ids: list[str], seconds: float, max_requests: int = 10**9) -> dict:
    with multiprocessing.get_context("spawn").Pool(CLIENTS) as pool:
        t0 = time.perf_counter()
        results = pool.map(_run_client, [(kind, address, ids, seconds, seed, max_requests) for seed in range(CLIENTS)])
        wall = time.perf_counter() - t0
    latencies = sorted(x for r in results for x in r)
    # Rate over the clients' own measured windows, not pool start-up.
    window = max(sum(r) for r in results) if results else wall
    return {
        "kind": kind,
        "requests": len(latencies),
        "rate": len(latencies) / window,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
    }


# --- servers ---------------------------------------------------------------------------------


def start_server(store: str, workers: int) -> tuple[subprocess.Popen, str, str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "queries.server.app",
            "--store",
            store,
            "--grpc",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--workers",
            str(workers),
        ],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stderr.readline()
    m = re.search(r"gRPC (\S+), REST http://(\S+),", line)
    if not m:
        proc.kill()
        raise SystemExit(f"server did not start: {line}{proc.stderr.read()}")
    return proc, m.group(1), m.group(2)


def stop_server(proc: subprocess.Popen) -> float:
    t0 = time.perf_counter()
    proc.terminate()
    proc.wait(timeout=10)
    return time.perf_counter() - t0


ASGI_SERVER = r"""
import sys, uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.routing import Route
from queries.server.app import Service
from queries.server.api import error_body, status_of
from queries.server.rest_api import _dump, route
from urllib.parse import parse_qs

service = Service(sys.argv[1], None, None)
service.source.start()

def answer(method, path, query):
    try:
        doc = route(service.api, method, path, parse_qs(query, keep_blank_values=True))
        return 200, doc.encode() if isinstance(doc, str) else _dump(doc)
    except Exception as exc:
        return status_of(exc).http, _dump(error_body(exc))

async def endpoint(request):
    status, body = await run_in_threadpool(answer, request.method, request.url.path, request.url.query)
    return Response(body, status_code=status, media_type="application/json")

app = Starlette(routes=[Route("/{path:path}", endpoint, methods=["GET"])])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning", loop="uvloop", http="httptools")
"""


def start_asgi(store: str) -> tuple[subprocess.Popen, str] | None:
    import importlib.util
    import socket

    missing = [m for m in ("starlette", "uvicorn", "httptools", "uvloop") if importlib.util.find_spec(m) is None]
    if missing:
        print(f"--asgi needs {', '.join(missing)} installed; comparison skipped")
        return None

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-c", ASGI_SERVER, store, str(port)], cwd=ROOT)
    import http.client

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/container-registry/v1/nothing")
            conn.getresponse().read()
            return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the ASGI server did not start")


def cold_cli_rate(store: str, image_id: str, runs: int) -> float:
    beside = os.path.join(os.path.dirname(sys.executable), "imgdex")
    cmd = [beside] if os.access(beside, os.X_OK) else [sys.executable, "-m", "queries.cli"]
    walls = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([*cmd, "get", image_id, "--store", store], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        walls.append(time.perf_counter() - t0)
    return 1 / statistics.median(walls)


def _line(result: dict) -> str:
    return f"{result['rate']:8.0f} req/s  p50 {result['p50_ms']:6.2f} ms  p99 {result['p99_ms']:6.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/imgdex-bench")
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument(
        "--asgi", action="store_true", help="also measure REST Get on Starlette + uvicorn (httptools, uvloop)"
    )
    parser.add_argument("--only", default="", metavar="KIND,...", help=f"measure these only: {', '.join(KINDS)}")
    args = parser.parse_args()
    kinds = [k for k in args.only.split(",") if k] or list(KINDS)
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        parser.error(f"unknown kinds: {', '.join(unknown)}")

    store = os.path.join(args.work, "stores", f"serve{args.images}")
    ids_file = store + ".ids"
    if not os.path.exists(ids_file):
        shutil.rmtree(store, ignore_errors=True)
        t0 = time.perf_counter()
        ids = make_store(store, args.images)
        with open(ids_file, "w") as f:
            f.write("\n".join(ids))
        print(f"store of {args.images} images written in {time.perf_counter() - t0:.1f} s")
    with open(ids_file) as f:
        ids = f.read().split()

    figures: dict[str, dict] = {}
    # Other work on the machine shows in every tail latency: the load is printed with the figures.
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    proc, grpc_address, http_address = start_server(store, args.workers)
    try:
        for kind in kinds:
            address = grpc_address if kind.startswith("grpc") else http_address
            figures[kind] = result = load(kind, address, ids, args.seconds)
            print(f"{kind:16s} {_line(result)}  ({result['requests']} requests)", flush=True)
    finally:
        stop_seconds = stop_server(proc)
    print(f"shutdown on SIGTERM: {stop_seconds:.2f} s")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.only:
        return
    started = start_asgi(store) if args.asgi else None
    args.asgi = started is not None
    if started is not None:
        asgi, asgi_address = started
        try:
            for kind in ("rest-noop", "rest-get"):
                figures[f"asgi-{kind}"] = result = load(kind, asgi_address, ids, args.seconds)
                print(f"asgi {kind:7s} {_line(result)}", flush=True)
        finally:
            asgi.terminate()
            asgi.wait(timeout=10)
    cold = cold_cli_rate(store, ids[len(ids) // 2], 11)
    print(f"cold CLI get {cold:8.1f} req/s (a new process per lookup, median of 11)")
    print()
    print("ratios")
    print(f"  gRPC Get / cold CLI get:        {figures['grpc-get']['rate'] / cold:7.1f}x")
    print(f"  REST Get / cold CLI get:        {figures['rest-get']['rate'] / cold:7.1f}x")
    print(f"  gRPC Get / gRPC health check:   {figures['grpc-get']['rate'] / figures['grpc-health']['rate']:7.2f}")
    print(f"  REST Get / REST no-op (404):    {figures['rest-get']['rate'] / figures['rest-noop']['rate']:7.2f}")
    print(f"  gRPC List 100 p99:              {figures['grpc-list']['p99_ms']:7.1f} ms")
    print(f"  REST List 100 p99:              {figures['rest-list']['p99_ms']:7.1f} ms")
    if args.asgi:
        print(
            f"  REST Get, stdlib / Starlette:   {figures['rest-get']['rate'] / figures['asgi-rest-get']['rate']:7.2f}"
        )


if __name__ == "__main__":
    main()
