"""The gRPC health service against a real server on loopback: it says SERVING only once the server
has a completed index run to answer from, and every API call would otherwise answer UNAVAILABLE."""

from __future__ import annotations

import os
import threading
import time

import grpc
import pytest
from yandex.cloud.containerregistry.v1 import image_service_pb2 as isv, image_service_pb2_grpc as isv_grpc

from queries.server.app import Service
from queries.server.grpc_api import SERVICE_NAMES

health_pb2 = pytest.importorskip("grpc_health.v1.health_pb2")
health_pb2_grpc = pytest.importorskip("grpc_health.v1.health_pb2_grpc")

HERE = os.path.dirname(os.path.abspath(__file__))
IMAGE = os.path.join(HERE, "fixtures", "real", "docker-save-base.tar")
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# The server polls the store every 0.5 s; loading one image's snapshot takes well under a second.
PICKED_UP_WITHIN = 15.0
WORKERS = 2


@pytest.fixture
def empty_service(tmp_path):
    """An in-process server, gRPC only, on a store directory no index run has written yet."""
    store = tmp_path / "store"
    store.mkdir()
    service = Service(str(store), ("127.0.0.1", 0), None, workers=WORKERS)
    service.start()
    yield service
    service.stop(grace=1)


def _statuses(channel) -> dict[str, int]:
    check = health_pb2_grpc.HealthStub(channel).Check
    return {
        name: check(health_pb2.HealthCheckRequest(service=name), timeout=10).status for name in ("", *SERVICE_NAMES)
    }


def _index(run_cli, store: str) -> None:
    result = run_cli("index", IMAGE, "--store", store, "--quiet")
    assert result.exit_code == 0, result.output


def test_health_is_not_serving_until_the_first_index_run_is_picked_up(empty_service, run_cli):
    with grpc.insecure_channel(empty_service.grpc_address) as channel:
        images = isv_grpc.ImageServiceStub(channel)
        assert _statuses(channel) == dict.fromkeys(("", *SERVICE_NAMES), NOT_SERVING)
        with pytest.raises(grpc.RpcError) as info:
            images.List(isv.ListImagesRequest(), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE

        _index(run_cli, empty_service.store)
        deadline = time.monotonic() + PICKED_UP_WITHIN
        while (statuses := _statuses(channel))[""] != SERVING:
            assert time.monotonic() < deadline, f"health still says {statuses} after the first index run"
            time.sleep(0.05)
        assert statuses == dict.fromkeys(("", *SERVICE_NAMES), SERVING)
        # SERVING is said only once a call can be answered: no retry here.
        assert images.List(isv.ListImagesRequest(), timeout=10).images


@pytest.mark.parametrize("service_name", ["", SERVICE_NAMES[0]])
def test_a_watch_stream_sees_not_serving_then_serving(empty_service, run_cli, service_name):
    with grpc.insecure_channel(empty_service.grpc_address) as channel:
        stream = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=service_name), timeout=PICKED_UP_WITHIN + 30
        )
        try:
            assert next(stream).status == NOT_SERVING
            _index(run_cli, empty_service.store)
            # Blocks until the server sends the change; the call's timeout bounds the wait.
            assert next(stream).status == SERVING
            images = isv_grpc.ImageServiceStub(channel)
            assert images.List(isv.ListImagesRequest(), timeout=10).images
        finally:
            stream.cancel()


def test_open_watch_streams_leave_the_workers_to_calls(empty_service):
    """A Watch stream lasts as long as its client watches (a probe's or a load balancer's for
    ever): as many of them as there are workers held every worker, and every other call waited."""
    watches = []
    with grpc.insecure_channel(empty_service.grpc_address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        try:
            for _ in range(2):
                opened = [health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=60) for _ in range(WORKERS)]
                watches += opened
                # Answered: had a watch held a worker, these would hold them all now.
                assert [next(watch).status for watch in opened] == [NOT_SERVING] * WORKERS
                assert _statuses(channel) == dict.fromkeys(("", *SERVICE_NAMES), NOT_SERVING)
                with pytest.raises(grpc.RpcError) as info:
                    isv_grpc.ImageServiceStub(channel).List(isv.ListImagesRequest(), timeout=10)
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            for watch in watches:
                watch.cancel()


def test_tables_a_first_run_has_only_made_are_not_served(empty_service, run_cli):
    """A first run makes the tables before its first batch, and removes them if it fails: until a
    run is recorded, health and calls stay as before the tables existed."""
    from indexer.store.delta import DeltaStore

    DeltaStore(empty_service.store).create()
    source = empty_service.api.source
    assert not source.refresh()  # the empty tables were looked at, and not taken
    with grpc.insecure_channel(empty_service.grpc_address) as channel:
        assert _statuses(channel)[""] == NOT_SERVING
        with pytest.raises(grpc.RpcError) as info:
            isv_grpc.ImageServiceStub(channel).List(isv.ListImagesRequest(), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        _index(run_cli, empty_service.store)
        assert source.refresh() or source.current is not None
        assert _statuses(channel)[""] == SERVING


def _healthz(address: str, token: str | None = None) -> tuple[int, dict]:
    import json
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"http://{address}/healthz")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as failed:
        return failed.code, json.loads(failed.read())


def test_rest_health_answers_as_grpc_health_does(tmp_path, run_cli):
    """With REST alone there is no gRPC health service: an HTTP probe gets the same answer."""
    store = tmp_path / "store"
    store.mkdir()
    service = Service(str(store), None, ("127.0.0.1", 0), b"s3cret", workers=2)
    service.start()
    try:
        assert _healthz(service.http_address)[0] == 401  # as every call, health is behind the token
        assert _healthz(service.http_address, "s3cret") == (503, {"status": "NOT_SERVING"})
        _index(run_cli, str(store))
        deadline = time.monotonic() + PICKED_UP_WITHIN
        while (answer := _healthz(service.http_address, "s3cret"))[0] != 200:
            assert time.monotonic() < deadline, f"health still says {answer} after the first index run"
            time.sleep(0.05)
        assert answer == (200, {"status": "SERVING"})
        service.rest._server.stopping = True  # as a graceful shutdown sets it, for the connections it drains
        assert _healthz(service.http_address, "s3cret") == (503, {"status": "NOT_SERVING"})
    finally:
        service.stop(grace=1)


def test_a_stop_goes_on_when_telling_the_watch_streams_hangs(tmp_path, monkeypatch):
    """grpc's send to a Watch stream whose client is cancelling it can wait for ever: a teardown
    hung in `enter_graceful_shutdown`. The shutdown tells the streams, waits a moment, and goes on."""
    store = tmp_path / "store"
    store.mkdir()
    service = Service(str(store), ("127.0.0.1", 0), None, workers=WORKERS)
    service.start()
    stuck = threading.Event()
    monkeypatch.setattr(service.grpc.health, "enter_graceful_shutdown", lambda: stuck.wait(600))
    started = time.monotonic()
    service.stop(grace=1)
    try:
        assert time.monotonic() - started < 10
        with pytest.raises(grpc.RpcError), grpc.insecure_channel(service.grpc_address) as channel:
            _statuses(channel)
    finally:
        stuck.set()
