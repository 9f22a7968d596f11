"""The shared parser: digest checks, config fields, and fuzzing with hypothesis."""
import json

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from indexer.errors import SourceError
from indexer.model import ImageRecord
from indexer.sources.layout import top_descriptors
from indexer.sources.parse import Context, parse_config, parse_descriptor, verify, walk

from builders import Blobs, digest_of, dumps

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=20,
)
manifest_like = st.fixed_dictionaries(
    {},
    optional={
        "schemaVersion": st.sampled_from([1, 2, "2", None]),
        "mediaType": st.sampled_from(["application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json", "x/y", 3]),
        "config": json_values | st.fixed_dictionaries({"digest": st.text(max_size=80) | st.just("use-real"), "size": json_values, "mediaType": st.sampled_from(["application/vnd.oci.image.config.v1+json", "x/y"]) | json_values}),
        "layers": json_values | st.lists(st.fixed_dictionaries({"digest": st.text(max_size=80), "size": json_values}), max_size=3),
        "manifests": json_values,
    },
)


class MemoryBlobs:
    def __init__(self, blobs):
        self.blobs = blobs

    def read_blob(self, digest, limit):
        if digest not in self.blobs:
            raise SourceError("mem", f"blob {digest} is missing")
        return self.blobs[digest]

    def blob_size(self, digest):
        data = self.blobs.get(digest)
        return None if data is None else len(data)


def test_verify_rejects_wrong_digest_and_size():
    data = b'{"a":1}'
    verify(data, digest_of(data), len(data), "f", "manifest")
    with pytest.raises(SourceError, match="digest mismatch"):
        verify(data + b" ", digest_of(data), None, "f", "manifest")
    with pytest.raises(SourceError, match="size mismatch"):
        verify(data, digest_of(data), len(data) + 1, "f", "manifest")


def test_parse_config_reads_the_fields_analysts_want():
    config = parse_config(
        dumps(
            {
                "created": "2026-11-29T12:00:00.000000001+02:00",
                "architecture": "arm64",
                "variant": "v8",
                "os": "linux",
                "config": {"Env": ["A=1"], "Entrypoint": ["/e"], "Cmd": ["c"], "Labels": {"b": "2", "a": "1"}},
                "rootfs": {"diff_ids": ["sha256:" + "1" * 64]},
                "history": [{"created_by": "RUN x", "empty_layer": True}],
            }
        ),
        "f",
    )
    assert config.created == "2026-11-29T10:00:00.000000001Z"
    assert (config.os, config.architecture, config.variant) == ("linux", "arm64", "v8")
    assert config.labels == (("a", "1"), ("b", "2"))
    assert config.env == ("A=1",) and config.entrypoint == ("/e",) and config.cmd == ("c",)
    assert config.history[0].created_by == "RUN x" and config.history[0].empty_layer


def test_walk_yields_a_record_for_a_valid_manifest():
    blobs = Blobs()
    desc = blobs.image()
    records = list(walk(MemoryBlobs(blobs.blobs), parse_descriptor(desc, "f", "d"), [], Context("oci", "p"), "p"))
    assert len(records) == 1 and isinstance(records[0], ImageRecord)
    assert records[0].digest == desc["digest"]
    assert records[0].compressed_size == sum(len(x) for x in (b"layer-a", b"layer-b"))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()))
def test_parse_config_fuzz_raises_only_source_errors(data):
    try:
        parse_config(data, "f")
    except SourceError:
        pass


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(manifest_like, json_values)
def test_walk_fuzz_yields_only_records_or_source_errors(manifest, config):
    config_raw = json.dumps(config).encode()
    if isinstance(manifest.get("config"), dict) and manifest["config"].get("digest") == "use-real":
        manifest["config"]["digest"] = digest_of(config_raw)
        manifest["config"]["size"] = len(config_raw)
    raw = json.dumps(manifest).encode()
    store = MemoryBlobs({digest_of(raw): raw, digest_of(config_raw): config_raw})
    desc = parse_descriptor({"digest": digest_of(raw), "size": len(raw), "mediaType": ""}, "f", "d")
    for item in walk(store, desc, [], Context("oci", "p"), "p"):
        assert isinstance(item, (ImageRecord, SourceError))


@settings(max_examples=200)
@given(st.binary(max_size=200) | json_values.map(lambda v: json.dumps({"schemaVersion": 2, "manifests": v}).encode()))
def test_index_fuzz_raises_only_source_errors(data):
    try:
        top_descriptors(data, "index.json")
    except SourceError:
        pass
