"""docker:// and signed schema1 manifests: the digest names the JWS payload
(`data[:formatLength] + formatTail`), so every recorded fact, and the raw manifest kept, comes from
that payload and never from the rest of what the registry served."""

import base64
import json
import os

import pytest

from builders import digest_of
from conftest import REAL
from indexer.sources import mediatypes as mt
from registry_server import FakeRegistry, RealRegistry, Reply, http, skopeo_copy
from test_registry_bad import crawl

LAYER_A, LAYER_B, EMPTY = digest_of(b"layer-a"), digest_of(b"layer-b"), digest_of(b"empty")
SIZES = {LAYER_A: 11, LAYER_B: 7, EMPTY: 3}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def signature(length: int, tail: bytes, time: str = "2020-01-01T00:00:00Z") -> dict:
    protected = json.dumps({"formatLength": length, "formatTail": b64url(tail), "time": time}).encode()
    return {"header": {"alg": "ES256"}, "signature": "c2lnbmF0dXJl", "protected": b64url(protected)}


def manifest(architecture: str, created: str, env: str, layer: str) -> dict:
    """A schema1 manifest of one layer below a throwaway (ENV) step, top entry first."""
    top = {"id": "b", "parent": "a", "created": created, "os": "linux", "config": {"Env": [env]}, "throwaway": True}
    top["container_config"] = {"Cmd": ["/bin/sh", "-c", f"#(nop) ENV {env}"]}
    history = [top, {"id": "a", "created": created}]
    return {
        "schemaVersion": 1,
        "name": "lib/app",
        "tag": "v1",
        "architecture": architecture,
        "fsLayers": [{"blobSum": EMPTY}, {"blobSum": layer}],
        "history": [{"v1Compatibility": json.dumps(entry)} for entry in history],
    }


GENUINE = json.dumps(manifest("amd64", "2020-01-01T00:00:00Z", "GENUINE=1", LAYER_A), indent=3).encode()
FAKE = manifest("arm64", "2031-06-06T06:06:06Z", "FAKE=1", LAYER_B)


def pretty_signed(payload: bytes, *signatures: dict) -> bytes:
    """The payload with its signatures spliced in before the closing brace, as libtrust writes
    it; by default one signature whose protected header gives that brace back as formatTail."""
    length = payload.rindex(b"\n}")
    signatures = signatures or (signature(length, payload[length:]),)
    inserted = b',\n   "signatures": ' + json.dumps(list(signatures), indent=3).encode()
    return payload[:length] + inserted + payload[length:]


def hostile(payload: bytes, *signatures: dict) -> bytes:
    """Bytes that share only their first byte with `payload`: the signature carries the rest of
    it as formatTail, and the served document says something else entirely."""
    signatures = signatures or (signature(1, payload[1:]),)
    served = json.dumps({**FAKE, "signatures": list(signatures)}, indent=3).encode()
    assert served[:1] == payload[:1]
    return served


@pytest.fixture
def fake():
    server = FakeRegistry()
    for layer, size in SIZES.items():
        server.routes[f"/v2/lib/app/blobs/{layer}"] = Reply(200, b"x" * size)
    yield server
    server.stop()


def serve(fake: FakeRegistry, served: bytes, digest: str) -> None:
    """Serve `served` as lib/app:v1 and as lib/app@digest, with `digest` as its Docker-Content-Digest."""
    fake.add_image("lib/app", {"v1": served}, {}, mt.DOCKER_SCHEMA1_SIGNED, digest_header=digest)
    fake.routes[f"/v2/lib/app/manifests/{digest}"] = fake.routes["/v2/lib/app/manifests/v1"]
    fake.catalog(["lib/app"])


def facts(record) -> tuple:
    return (
        record.digest,
        [(layer.digest, layer.size) for layer in record.layers],
        str(record.platform),
        record.created,
        record.env,
        [(h.created_by, h.empty_layer) for h in record.history],
    )


GENUINE_FACTS = (
    digest_of(GENUINE),
    [(LAYER_A, 11)],
    "linux/amd64",
    "2020-01-01T00:00:00Z",
    ("GENUINE=1",),
    [("", False), ("/bin/sh -c #(nop) ENV GENUINE=1", True)],
)


def test_a_signed_manifest_is_recorded_from_its_payload(fake):
    serve(fake, pretty_signed(GENUINE), digest_of(GENUINE))
    records, errors, _ = crawl(f"docker://{fake.host}")
    assert not errors
    [record] = records
    assert facts(record) == GENUINE_FACTS
    assert record.media_type == mt.DOCKER_SCHEMA1_SIGNED and record.config is None
    # the raw manifest kept is what its digest names
    assert record.manifest_raw == GENUINE


@pytest.mark.parametrize("by", ["tag", "digest"])
def test_bytes_outside_the_payload_are_never_read(fake, by):
    serve(fake, hostile(GENUINE), digest_of(GENUINE))
    spec = f"docker://{fake.host}/lib/app" + (":v1" if by == "tag" else f"@{digest_of(GENUINE)}")
    records, errors, _ = crawl(spec)
    assert not errors
    [record] = records
    assert facts(record) == GENUINE_FACTS
    assert record.manifest_raw == GENUINE
    assert LAYER_B not in {layer.digest for layer in record.layers}


@pytest.mark.parametrize(
    "second",
    [
        signature(1, GENUINE[1:].replace(b"GENUINE=1", b"SHADOWS=1")),
        signature(2, GENUINE[2:]),
        {"header": {"alg": "ES256"}, "signature": "c2lnbmF0dXJl", "protected": b64url(b"{}")},
    ],
    ids=["other-tail", "other-length", "no-format"],
)
def test_signatures_that_name_other_payloads_are_refused(fake, second):
    serve(fake, hostile(GENUINE, signature(1, GENUINE[1:]), second), digest_of(GENUINE))
    records, errors, _ = crawl(f"docker://{fake.host}")
    assert records == [] and len(errors) == 1 and "\n" not in errors[0]
    assert errors[0].startswith(f"{fake.host}/lib/app:v1: schema1 manifest: ")
    assert "formatLength/formatTail" in errors[0]


def test_signatures_that_name_one_payload_are_one_manifest(fake):
    length = GENUINE.rindex(b"\n}")
    first, second = (
        signature(length, GENUINE[length:], time) for time in ("2020-01-01T00:00:00Z", "2021-01-01T00:00:00Z")
    )
    serve(fake, pretty_signed(GENUINE, first, second), digest_of(GENUINE))
    records, errors, _ = crawl(f"docker://{fake.host}")
    assert not errors
    assert [facts(record) for record in records] == [GENUINE_FACTS]


def test_numbers_int_cannot_convert_are_read_past_and_out_of_range_as_a_length(fake):
    """An integer of more digits than int() converts, where nothing reads it (a v1Compatibility's
    unknown key), is read past as Go reads it; as the formatLength, it is out of range. Both made
    the manifest "not JSON" or "no usable formatLength", whatever their place."""
    big = "9" * 5000
    doc = manifest("amd64", "2020-01-01T00:00:00Z", "GENUINE=1", LAYER_A)
    doc["history"][0]["v1Compatibility"] = doc["history"][0]["v1Compatibility"][:-1] + f', "x": {big}}}'
    payload = json.dumps(doc, indent=3).encode()
    length = payload.rindex(b"\n}")
    serve(fake, pretty_signed(payload), digest_of(payload))
    records, errors, _ = crawl(f"docker://{fake.host}")
    assert not errors and [record.digest for record in records] == [digest_of(payload)]
    long = signature(length, payload[length:])
    header = json.dumps({"formatLength": "BIG", "formatTail": b64url(payload[length:])}).replace('"BIG"', big)
    long["protected"] = b64url(header.encode())
    serve(fake, pretty_signed(payload, long), digest_of(payload))
    records, errors, _ = crawl(f"docker://{fake.host}")
    assert records == [] and errors == [f"{fake.host}/lib/app:v1: schema1 manifest: formatLength is out of range"]


@pytest.mark.parametrize(
    "payload, reason",
    [
        (b' {"schemaVersion": 1, "fsLayers": [', "schema1 manifest payload is not valid JSON"),
        (b' ["schemaVersion", 1]', "schema1 manifest payload is not a JSON object"),
    ],
    ids=["not-json", "not-an-object"],
)
def test_a_payload_that_is_no_json_object_is_one_error(fake, payload, reason):
    # leading whitespace is part of a JSON document, so formatLength 1 can hand anything to the tail
    served = b" " + json.dumps({**FAKE, "signatures": [signature(1, payload[1:])]}).encode()
    serve(fake, served, digest_of(payload))
    records, errors, _ = crawl(f"docker://{fake.host}")
    assert records == [] and len(errors) == 1 and "\n" not in errors[0]
    assert errors[0].startswith(f"{fake.host}/lib/app:v1: {reason}")


@pytest.mark.services
def test_a_real_registry_schema1_manifest_keeps_its_payload(tmp_path):
    reg = RealRegistry(str(tmp_path / "registry"), extra="compatibility:\n  schema1:\n    enabled: true\n")
    try:
        layout = os.path.join(REAL, "oci-layout")
        skopeo_copy(f"oci:{layout}:v1", f"docker://{reg.host}/team/old:s1", fmt="v2s1")
        skopeo_copy(f"oci:{layout}:v1", f"docker://{reg.host}/team/new:v1")
        _, headers, served = http(
            "GET", f"{reg.url}/v2/team/old/manifests/s1", headers={"Accept": mt.DOCKER_SCHEMA1_SIGNED}
        )
        [old], errors, _ = crawl(f"docker://{reg.host}/team/old:s1")
        [new], more, _ = crawl(f"docker://{reg.host}/team/new:v1")
        assert not errors and not more
        assert old.digest == headers["Docker-Content-Digest"] == digest_of(old.manifest_raw)
        assert "signatures" in json.loads(served) and "signatures" not in json.loads(old.manifest_raw)
        assert [(x.digest, x.size) for x in old.layers] == [(x.digest, x.size) for x in new.layers]
        assert (old.created, old.platform, old.env, old.cmd) == (new.created, new.platform, new.env, new.cmd)
    finally:
        reg.stop()


@pytest.mark.parametrize("value", [5, ["amd64"], {"a": 1}, True])
def test_an_architecture_that_is_no_string_is_absent(fake, value):
    # Docker reads v1Compatibility into a struct whose architecture is a string: any other type
    # says nothing about the platform, and must not reach the store's string column.
    doc = manifest("", "2020-01-01T00:00:00Z", "GENUINE=1", LAYER_A)
    top = json.loads(doc["history"][0]["v1Compatibility"])
    doc["history"][0]["v1Compatibility"] = json.dumps({**top, "architecture": value})
    payload = json.dumps(doc, indent=3).encode()
    serve(fake, pretty_signed(payload), digest_of(payload))
    records, errors, _ = crawl(f"docker://{fake.host}")
    assert not errors
    [record] = records
    assert (record.platform.os, record.platform.architecture) == ("linux", "")


@pytest.mark.parametrize("spec", ["", "/lib/app", "/lib/app:v1"], ids=["registry", "repository", "tag"])
def test_a_signed_manifest_served_without_its_digest_is_named_by_its_payload(fake, spec):
    served = pretty_signed(GENUINE)
    serve(fake, served, digest_of(GENUINE))
    # a registry that sends no Docker-Content-Digest: the digest is computed, over the payload
    fake.routes["/v2/lib/app/manifests/v1"] = Reply(200, served, {"Content-Type": mt.DOCKER_SCHEMA1_SIGNED})
    records, errors, _ = crawl(f"docker://{fake.host}{spec}")
    assert not errors
    [record] = records
    assert facts(record) == GENUINE_FACTS and record.tags == ("v1",)
