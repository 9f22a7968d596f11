"""The shared parser: digest checks, config fields, and fuzzing with hypothesis."""

import json

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from indexer.errors import SourceError
from indexer.model import UNCOMPRESSED, ImageRecord
from indexer.references import Reference
from indexer.sources import parse_source
from indexer.sources.layout import top_descriptors
from indexer.sources.parse import Context, group_names, parse_config, parse_descriptor, record_from_config, verify, walk

from builders import Blobs, classic_save_files, digest_of, dumps, named, write_dir, write_tar

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=20,
)
manifest_like = st.fixed_dictionaries(
    {},
    optional={
        "schemaVersion": st.sampled_from([1, 2, "2", None]),
        "mediaType": st.sampled_from(
            ["application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json", "x/y", 3]
        ),
        "config": json_values
        | st.fixed_dictionaries(
            {
                "digest": st.text(max_size=80) | st.just("use-real"),
                "size": json_values,
                "mediaType": st.sampled_from(["application/vnd.oci.image.config.v1+json", "x/y"]) | json_values,
            }
        ),
        "layers": json_values
        | st.lists(st.fixed_dictionaries({"digest": st.text(max_size=80), "size": json_values}), max_size=3),
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


# ---------------------------------------------------------------------------------------------
# sizes: int64 or a SourceError for that image, never an error in the store
# ---------------------------------------------------------------------------------------------

INT64_MAX = 2**63 - 1


@pytest.mark.parametrize(
    "size, reason",
    [
        (10**30, "out of range"),
        (1e30, "not an integer"),
        (12.0, "not an integer"),
        (True, "not an integer"),
        (-1, "out of range"),
        ("12", "not an integer"),
        (INT64_MAX + 1, "out of range"),
        (None, "not an integer"),
    ],
)
def test_descriptor_size_must_be_an_int64(size, reason):
    raw = {"mediaType": "x/y", "digest": "sha256:" + "a" * 64, "size": size}
    with pytest.raises(SourceError, match=f"^f: layers\\[0\\] has an invalid size: .*{reason}"):
        parse_descriptor(raw, "f", "layers[0]")
    assert parse_descriptor(dict(raw, size=INT64_MAX), "f", "layers[0]").size == INT64_MAX


def _foreign_layers_layout(root, sizes) -> str:
    """A layout with a good image and one whose foreign layers (never stored, so their sizes are
    only what the manifest says) have the given sizes."""
    blobs = Blobs()
    good = blobs.image(layers=(b"good",))
    config = blobs.add(
        dumps({"architecture": "amd64", "os": "linux", "rootfs": {"diff_ids": []}}),
        "application/vnd.oci.image.config.v1+json",
    )
    layers = [
        {
            "mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
            "digest": "sha256:" + f"{i:x}" * 64,
            "size": size,
            "urls": [f"https://example.net/{i}"],
        }
        for i, size in enumerate(sizes)
    ]
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config,
            "layers": layers,
        }
    )
    bad = blobs.add(manifest.encode(), "application/vnd.oci.image.manifest.v1+json")
    return write_dir(
        str(root), blobs.layout_files([named(good, "reg.example/good:1"), named(bad, "reg.example/bad:1")])
    )


@pytest.mark.parametrize(
    "sizes, reason",
    [
        ([10**30], "out of range"),
        ([2**62, 2**62], "add up to 9223372036854775808"),
        ([INT64_MAX, 1], "add up to"),
    ],
)
def test_oversized_layers_fail_their_image_and_the_run_goes_on(tmp_path, run_cli, sizes, reason):
    layout_dir = _foreign_layers_layout(tmp_path / "layout", sizes)
    store = tmp_path / "store"
    result = run_cli("index", f"oci:{layout_dir}", "--store", store)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"imgdex: {layout_dir}: manifest sha256:") and reason in lines[0], (
        lines
    )
    listed = json.loads(run_cli("sql", "SELECT name FROM images", "--store", store, "--format", "json").stdout)
    assert listed == {"name": "good"}
    runs = run_cli("sql", "SELECT images_indexed, images_failed FROM runs", "--store", store, "--format", "json").stdout
    assert json.loads(runs) == {"images_indexed": 1, "images_failed": 1}


def test_largest_sizes_that_fit_are_stored(tmp_path, run_cli):
    layout_dir = _foreign_layers_layout(tmp_path / "layout", [INT64_MAX - 1, 1])
    store = tmp_path / "store"
    assert run_cli("index", f"oci:{layout_dir}", "--store", store).exit_code == 0
    doc = json.loads(run_cli("get", "reg.example/bad:1", "--store", store).stdout)
    assert doc["compressedSize"] == str(INT64_MAX)


@pytest.mark.parametrize(
    "sizes, reason",
    [
        ([2**63], "layer 0 size 9223372036854775808 is out of range"),
        ([1.5], "layer 0 size 1.5 is not an integer"),
        ([2**62, 2**62], "add up to"),
    ],
)
def test_record_from_config_checks_stored_sizes(sizes, reason):
    config = dumps({"rootfs": {"diff_ids": ["sha256:" + f"{i}" * 64 for i in range(len(sizes))]}})
    with pytest.raises(SourceError, match=reason) as caught:
        record_from_config(
            config, digest_of(config), sizes, [], Context("docker-archive", "a.tar"), "a.tar", UNCOMPRESSED
        )
    assert caught.value.where == "a.tar"


def test_classic_save_with_a_huge_foreign_layer_fails_that_image(tmp_path, run_cli):
    files = classic_save_files(
        [{"tags": ["reg.example/ok:1"], "layers": [b"ok"]}, {"tags": ["reg.example/huge:1"], "layers": [b"x"]}]
    )
    manifest = json.loads(files["manifest.json"])
    config_name = manifest[1]["Config"]
    diff_id = json.loads(files[config_name])["rootfs"]["diff_ids"][0]
    manifest[1]["LayerSources"] = {
        diff_id: {
            "mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
            "digest": "sha256:" + "f" * 64,
            "size": 2**64,
            "urls": ["https://example.net/x"],
        }
    }
    files["manifest.json"] = dumps(manifest)
    archive = write_tar(str(tmp_path / "save.tar"), files)
    result = run_cli("index", archive, "--store", tmp_path / "store")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"imgdex: {archive}: ") and "out of range" in lines[0]
    listed = run_cli("sql", "SELECT name FROM images", "--store", tmp_path / "store", "--format", "csv").stdout
    assert listed.split() == ["name", "ok"]


# ---------------------------------------------------------------------------------------------
# names and tags outside Docker's grammar are dropped with a note
# ---------------------------------------------------------------------------------------------

BAD_NAMES = [
    "reg.example/app:v1\n",  # a trailing newline
    "reg.example/app:тег",  # a tag outside ASCII
    "reg.example/app:" + "a" * 129,  # a tag over 128 characters
    "reg.example/App:1",  # an uppercase repository
    "reg.example/team/../app:1",  # a `..` path component
    "reg.example/" + "a" * 250 + ":1",  # a name over 255 characters with its host
]


def _layout_named(root, **annotations) -> str:
    blobs = Blobs()
    desc = blobs.image()
    return write_dir(str(root), blobs.layout_files([named(desc, **annotations)]))


def _collect(spec, **ctx):
    source = parse_source(spec)
    notes = []
    items = list(source.records(Context(source.kind, source.location, note=notes.append, **ctx)))
    return [i for i in items if isinstance(i, ImageRecord)], [i for i in items if isinstance(i, SourceError)], notes


@pytest.mark.parametrize("bad", BAD_NAMES, ids=range(len(BAD_NAMES)))
@pytest.mark.parametrize("key", ["containerd", "ref_name"])
def test_invalid_annotation_name_is_dropped_with_a_note(tmp_path, bad, key):
    layout_dir = _layout_named(tmp_path / "layout", **{key: bad})
    records, errors, notes = _collect(f"oci:{layout_dir}")
    assert not errors and len(records) == 1
    assert (records[0].registry, records[0].name, records[0].tags) == ("", "", ())
    assert len(notes) == 1 and "ignoring" in notes[0]


@pytest.mark.parametrize("bad", BAD_NAMES, ids=range(len(BAD_NAMES)))
def test_invalid_repo_tag_of_a_docker_save_is_dropped_with_a_note(tmp_path, bad):
    archive = write_tar(
        str(tmp_path / "save.tar"), classic_save_files([{"tags": [bad, "reg.example/good:1"], "layers": [b"l"]}])
    )
    records, errors, notes = _collect(f"docker-archive:{archive}")
    assert not errors and [(r.registry, r.name, r.tags) for r in records] == [("reg.example", "good", ("1",))]
    assert len(notes) == 1 and "ignoring" in notes[0]
    archive = write_tar(str(tmp_path / "alone.tar"), classic_save_files([{"tags": [bad], "layers": [b"l"]}]))
    records, errors, notes = _collect(f"docker-archive:{archive}", registry="cr.example", repository="team/x")
    # unnamed, as an untagged save is: the --registry/--repository name
    assert not errors and [(r.registry, r.name, r.tags) for r in records] == [("cr.example", "team/x", ())]


def test_group_names_drops_references_outside_the_grammar():
    notes = []
    ctx = Context("oci", "p", note=notes.append)
    groups = group_names(
        [
            Reference("reg.example", "app", "v1\n"),
            Reference("reg.example", "App"),
            Reference("reg.example", "app", "ok"),
            Reference("bad host!", "app", "1"),
            Reference("reg.example", "app", "x" * 129),
        ],
        ctx,
        "where",
    )
    assert groups == [("reg.example", "app", ("ok",))]
    assert len(notes) == 4 and all(n.startswith("where: ignoring ") for n in notes)
    assert group_names([], ctx) == [("", "", ())]


def test_created_with_a_trailing_newline_or_non_ascii_digits_is_not_a_time():
    assert parse_config(dumps({"created": "2026-11-29T12:00:00Z\n"}), "f").created is None
    assert parse_config(dumps({"created": "２０２６-11-29T12:00:00Z"}), "f").created is None
    assert parse_config(dumps({"created": "2026-11-29T12:00:00Z"}), "f").created == "2026-11-29T12:00:00Z"


def test_created_offsets_out_of_range_are_not_a_time_and_long_fractions_are_cut_to_nanoseconds():
    assert parse_config(dumps({"created": "2020-01-02T03:04:05+00:99"}), "f").created is None
    assert parse_config(dumps({"created": "2020-01-02T03:04:05-24:00"}), "f").created is None
    long = parse_config(dumps({"created": "2020-01-02T03:04:05.1234567891Z"}), "f")
    assert long.created == "2020-01-02T03:04:05.123456789Z"


def test_only_descriptors_with_a_media_type_of_legal_length_are_kept_as_shapes():
    from indexer.sources import typed

    digest = "sha256:" + "a" * 64
    plain = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest, "size": 3}
    long = dict(plain, mediaType="application/" + "x" * 1000)
    shapes: dict = {}
    for raw in (plain, long):
        blob = parse_descriptor(raw, "w", "layer", shapes)
        assert (blob.media_type, blob.digest, blob.size) == (raw["mediaType"], digest, 3)
    assert list(shapes) == [(plain["mediaType"], digest, 3)]
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": dict(plain, mediaType="application/vnd.oci.image.config.v1+json"),
        "layers": [plain, long],
    }
    typed_shapes: dict = {}
    decoded = typed.decode_manifest(json.dumps(manifest).encode(), manifest["mediaType"], typed_shapes)
    assert decoded is not None and [b.media_type for b in decoded[2]] == [plain["mediaType"], long["mediaType"]]
    assert all(len(key[0]) <= 255 for key in typed_shapes) and len(typed_shapes) == 2
