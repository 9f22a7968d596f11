"""Every local source kind on synthetic images: names, indexes, artifacts, compression, links."""

import bz2
import gzip
import json
import lzma
import os
import tarfile

import pytest
import zstandard

from indexer.errors import SourceError
from indexer.model import KIND_ARTIFACT, KIND_ATTESTATION, KIND_IMAGE, KIND_INDEX, ImageRecord
from indexer.references import image_id
from indexer.sources import parse_source
from indexer.sources.parse import Context

from builders import OCI_MANIFEST, Blobs, classic_save_files, digest_of, dumps, named, tar_bytes, write_dir, write_tar


def collect(spec, **ctx):
    notes = []
    source = parse_source(spec)
    context = Context(source.kind, source.location, note=notes.append, **ctx)
    items = list(source.records(context))
    records = [i for i in items if isinstance(i, ImageRecord)]
    errors = [i for i in items if isinstance(i, SourceError)]
    return records, errors, notes


def by_name(records):
    return {(r.registry, r.name, r.digest or r.config.digest): r for r in records}


def test_layout_names_from_full_reference_bare_tag_and_containerd(tmp_path):
    blobs = Blobs()
    a, b, c = blobs.image(layers=(b"1",)), blobs.image(layers=(b"2",)), blobs.image(layers=(b"3",))
    top = [named(a, "v1"), named(b, "cr.yandex/crp1/app:2"), named(c, "3", containerd="docker.io/library/redis:7")]
    write_dir(str(tmp_path), blobs.layout_files(top))
    records, errors, _ = collect(f"oci:{tmp_path}", registry="reg.example", repository="team/app")
    assert not errors
    names = {(r.registry, r.name, r.tags) for r in records}
    assert names == {
        ("reg.example", "team/app", ("v1",)),
        ("cr.yandex", "crp1/app", ("2",)),
        ("docker.io", "library/redis", ("7",)),
    }
    record = next(r for r in records if r.name == "crp1/app")
    assert record.id == image_id("cr.yandex", "crp1/app", b["digest"])
    assert record.created == "2026-11-29T10:54:27.000347894Z"
    assert record.layers_compressed and record.exactness == 3


def test_a_name_that_carries_another_manifest_s_digest_is_dropped_with_a_note(tmp_path):
    """A name with a digest names that manifest: kept where it is this one's, else not stored
    (its digest was dropped without a word, leaving the name on a manifest it does not name)."""
    blobs = Blobs()
    a, b, c = blobs.image(layers=(b"1",)), blobs.image(layers=(b"2",)), blobs.image(layers=(b"3",))
    top = [
        named(a, f"cr.example/team/app:1@{a['digest']}"),
        named(b, f"cr.example/team/app:2@{a['digest']}"),
        named(c, "3", containerd=f"docker.io/library/redis@{a['digest']}"),
    ]
    write_dir(str(tmp_path), blobs.layout_files(top))
    records, errors, notes = collect(f"oci:{tmp_path}", registry="reg.example", repository="team/app")
    assert not errors
    assert {(r.digest, r.name, r.tags) for r in records} == {
        (a["digest"], "team/app", ("1",)),
        (b["digest"], "team/app", ()),
        (c["digest"], "team/app", ()),
    }
    assert [r.registry for r in records] == ["cr.example", "reg.example", "reg.example"]
    assert notes == [
        f"{tmp_path}: ignoring name 'cr.example/team/app:2@{a['digest']}': it names manifest {a['digest']}, "
        f"not {b['digest']}",
        f"{tmp_path}: ignoring name 'docker.io/library/redis@{a['digest']}': it names manifest {a['digest']}, "
        f"not {c['digest']}",
    ]


def test_a_repo_tag_with_a_digest_is_dropped_with_a_note(tmp_path):
    """`docker load` refuses such a RepoTag; it was kept as the tag alone."""
    files = classic_save_files([{"tags": ["app:1", f"app:2@sha256:{'a' * 64}"], "layers": [b"x"]}])
    records, errors, notes = collect(write_tar(str(tmp_path / "save.tar"), files))
    assert not errors and [(r.name, r.tags) for r in records] == [("library/app", ("1",))]
    assert notes == [f"{tmp_path / 'save.tar'}: ignoring RepoTag 'app:2@sha256:{'a' * 64}': a RepoTag names no digest"]


def test_layout_ref_selects_one_image(tmp_path):
    blobs = Blobs()
    a, b = blobs.image(layers=(b"1",)), blobs.image(layers=(b"2",))
    write_dir(str(tmp_path), blobs.layout_files([named(a, "v1"), named(b, "v2")]))
    records, errors, _ = collect(f"oci:{tmp_path}:v2", repository="x")
    assert [r.digest for r in records] == [b["digest"]] and not errors
    _, errors, _ = collect(f"oci:{tmp_path}:v9", repository="x")
    assert len(errors) == 1 and "no image named 'v9'" in str(errors[0])


def test_nested_index_gives_index_children_and_attestation(tmp_path):
    blobs = Blobs()
    amd = blobs.image(layers=(b"amd",))
    arm = blobs.image(layers=(b"arm",), arch="arm64")
    att = blobs.image(layers=(b"att",), created=None)
    inner = blobs.index(
        [
            dict(amd, platform={"os": "linux", "architecture": "amd64"}),
            dict(arm, platform={"os": "linux", "architecture": "arm64", "variant": "v8"}),
            dict(
                att,
                platform={"os": "unknown", "architecture": "unknown"},
                annotations={"vnd.docker.reference.type": "attestation-manifest"},
            ),
        ]
    )
    outer = blobs.index([inner])
    write_dir(str(tmp_path), blobs.layout_files([named(outer, "docker.io/library/multi:1")]))
    records, errors, _ = collect(str(tmp_path))
    assert not errors
    kinds = {r.digest: r for r in records}
    assert kinds[outer["digest"]].kind == KIND_INDEX and kinds[outer["digest"]].tags == ("1",)
    assert kinds[inner["digest"]].kind == KIND_INDEX and kinds[inner["digest"]].parent_digest == outer["digest"]
    assert kinds[amd["digest"]].kind == KIND_IMAGE and kinds[amd["digest"]].tags == ()
    assert (
        str(kinds[arm["digest"]].platform) == "linux/arm64/v8" and kinds[arm["digest"]].parent_digest == inner["digest"]
    )
    assert kinds[att["digest"]].kind == KIND_ATTESTATION and kinds[att["digest"]].created is None
    assert {r.name for r in records} == {"library/multi"}


def test_unknown_media_type_is_a_note_and_artifacts_are_kept(tmp_path):
    blobs = Blobs()
    chart_config = blobs.add(b'{"name":"chart"}', "application/vnd.cncf.helm.config.v1+json")
    chart_layer = blobs.add(b"tgz", "application/vnd.cncf.helm.chart.content.v1.tar+gzip")
    chart = blobs.add(
        dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": chart_config,
                "layers": [chart_layer],
            }
        ),
        "application/vnd.oci.image.manifest.v1+json",
    )
    odd = blobs.add(b"{}", "application/x-unknown")
    write_dir(str(tmp_path), blobs.layout_files([named(chart, "charts/app:0.1.0"), odd]))
    records, errors, notes = collect(str(tmp_path))
    assert not errors
    assert len(records) == 1 and records[0].kind == KIND_ARTIFACT
    assert records[0].config.media_type == "application/vnd.cncf.helm.config.v1+json"
    assert any("unknown media type application/x-unknown" in n for n in notes)


@pytest.mark.parametrize("fault", ["absent", "edited"])
def test_an_artifacts_config_is_verified_as_an_images_is(tmp_path, fault):
    """Its digest and size are reported: an absent blob would leave them unchecked."""
    blobs = Blobs()
    chart_config = blobs.add(b'{"name":"chart"}', "application/vnd.cncf.helm.config.v1+json")
    chart = blobs.add(
        dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": chart_config, "layers": []}), OCI_MANIFEST
    )
    if fault == "absent":
        del blobs.blobs[chart_config["digest"]]
    else:
        blobs.blobs[chart_config["digest"]] = b'{"name":"other"}'
    write_dir(str(tmp_path), blobs.layout_files([named(chart, "charts/app:0.1.0")]))
    records, errors, _ = collect(str(tmp_path))
    assert records == []
    [error] = errors
    reason = "blob is missing" if fault == "absent" else "config digest mismatch"
    assert reason in str(error) and chart_config["digest"].split(":")[1] in str(error), str(error)


def test_missing_child_of_an_index_is_skipped_with_a_note(tmp_path):
    blobs = Blobs()
    amd = blobs.image(layers=(b"amd",))
    idx = blobs.index(
        [
            dict(amd, platform={"os": "linux", "architecture": "amd64"}),
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": "sha256:" + "e" * 64,
                "size": 10,
                "platform": {"os": "linux", "architecture": "s390x"},
            },
        ]
    )
    write_dir(str(tmp_path), blobs.layout_files([named(idx, "x.example/multi:1")]))
    records, errors, notes = collect(str(tmp_path))
    assert not errors and len(records) == 2
    assert any("not in the source" in n for n in notes)


def classic(tags=("app:1", "app:2", "127.0.0.1:5000/team/app:v1")):
    return classic_save_files(
        [
            {
                "tags": list(tags) if tags is not None else None,
                "layers": [b"aaaa", b"bb"],
                "created": "2026-11-29T12:54:27.000347894+02:00",
            },
            {"tags": None, "layers": [b"c"]},
        ]
    )


def test_classic_docker_save_one_resource_per_repository(tmp_path):
    path = write_tar(str(tmp_path / "save.tar"), classic())
    records, errors, _ = collect(f"docker-archive:{path}")
    assert not errors
    named_ = {(r.registry, r.name): r for r in records if r.name}
    assert set(named_) == {("docker.io", "library/app"), ("127.0.0.1:5000", "team/app")}
    app = named_[("docker.io", "library/app")]
    assert app.tags == ("1", "2") and app.digest == "" and not app.layers_compressed
    assert app.id == image_id("docker.io", "library/app", app.config.digest)
    assert [layer.size for layer in app.layers] == [4, 2]
    assert app.layers[0].digest == digest_of(b"aaaa")
    assert app.created == "2026-11-29T10:54:27.000347894Z"
    unnamed = [r for r in records if not r.name]
    assert len(unnamed) == 1 and unnamed[0].created is None and unnamed[0].tags == ()


@pytest.mark.parametrize("compress", ["gzip", "zstd", "xz", "bz2"])
def test_compressed_archives_read_in_one_pass(tmp_path, compress):
    raw = tar_bytes(classic())
    path = tmp_path / f"save.tar.{compress}"
    path.write_bytes(
        {
            "gzip": gzip.compress,
            "zstd": zstandard.ZstdCompressor().compress,
            "xz": lzma.compress,
            "bz2": bz2.compress,
        }[compress](raw)
    )
    records, errors, _ = collect(str(path))
    plain, _, _ = collect(write_tar(str(tmp_path / "plain.tar"), classic()))
    assert not errors
    assert sorted(r.id for r in records) == sorted(r.id for r in plain)


def test_shared_layers_linked_inside_the_archive(tmp_path):
    files = classic(tags=("app:1",))
    layer_path = next(name for name in files if name.endswith("layer.tar"))
    link = tarfile.TarInfo("linked/layer.tar")
    link.type = tarfile.SYMTYPE
    link.linkname = "../" + layer_path
    manifest = __import__("json").loads(files["manifest.json"])
    manifest[1]["Layers"] = ["linked/layer.tar"]
    config_name = manifest[1]["Config"]
    config = __import__("json").loads(files[config_name])
    config["rootfs"]["diff_ids"] = [digest_of(b"aaaa")]
    del files[config_name]
    new_config = dumps(config)
    manifest[1]["Config"] = digest_of(new_config).split(":")[1] + ".json"
    files[manifest[1]["Config"]] = new_config
    files["manifest.json"] = dumps(manifest)
    path = write_tar(str(tmp_path / "linked.tar"), files, extra=[link])
    records, errors, _ = collect(path)
    assert not errors
    unnamed = next(r for r in records if not r.name)
    assert unnamed.layers[0].size == 4


def docker25_files(index_manifests="named", repo_tags=("app:1",)):
    """A save in the Docker 25+ layout: an OCI layout beside manifest.json, layers uncompressed."""
    blobs = Blobs()
    layer = blobs.add(b"layer-tar-bytes", "application/vnd.oci.image.layer.v1.tar")
    config = blobs.add(
        dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "created": "2026-01-02T03:04:05.123456789Z",
                "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]},
            }
        ),
        "application/vnd.oci.image.config.v1+json",
    )
    manifest = blobs.add(
        dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": config,
                "layers": [layer],
            }
        ),
        "application/vnd.oci.image.manifest.v1+json",
    )
    top = {"named": [named(manifest, "1", containerd="docker.io/library/app:1")], "empty": [], "null": None}[
        index_manifests
    ]
    files = blobs.layout_files(top or [])
    if top is None:
        files["index.json"] = (
            b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":null}'
        )
    hexes = {d: d.split(":")[1] for d in (config["digest"], layer["digest"])}
    files["manifest.json"] = dumps(
        [
            {
                "Config": f"blobs/sha256/{hexes[config['digest']]}",
                "RepoTags": list(repo_tags) if repo_tags is not None else None,
                "Layers": [f"blobs/sha256/{hexes[layer['digest']]}"],
            }
        ]
    )
    return files, manifest


def test_docker25_save_uses_the_real_manifest(tmp_path):
    files, manifest = docker25_files()
    records, errors, _ = collect(write_tar(str(tmp_path / "d25.tar"), files))
    assert not errors and len(records) == 1
    record = records[0]
    assert record.digest == manifest["digest"] and record.tags == ("1",) and record.name == "library/app"
    assert not record.layers_compressed and record.exactness == 3


@pytest.mark.parametrize("variant", ["empty", "null"])
def test_docker25_save_without_index_entries_falls_back_to_manifest_json(tmp_path, variant):
    files, _ = docker25_files(index_manifests=variant, repo_tags=None)
    records, errors, _ = collect(write_tar(str(tmp_path / "d25.tar"), files), repository="local/app")
    assert not errors and len(records) == 1
    assert records[0].digest == "" and records[0].name == "local/app" and records[0].tags == ()


def test_repo_tags_of_docker25_save_name_the_manifest(tmp_path):
    files, manifest = docker25_files(repo_tags=("app:1", "app:extra", "other.example/x:y"))
    records, errors, _ = collect(write_tar(str(tmp_path / "d25.tar"), files))
    assert not errors
    assert {(r.registry, r.name, r.tags, r.digest) for r in records} == {
        ("docker.io", "library/app", ("1", "extra"), manifest["digest"]),
        ("other.example", "x", ("y",), manifest["digest"]),
    }


def test_index_json_symlinked_outside_the_layout_is_refused(tmp_path):
    blobs = Blobs()
    image = blobs.image()
    layout = tmp_path / "layout"
    write_dir(str(layout), blobs.layout_files([named(image, "v1")]))
    (layout / "index.json").rename(tmp_path / "elsewhere.json")
    os.symlink("../elsewhere.json", layout / "index.json")
    with pytest.raises(SourceError, match="index.json is a symlink that points outside the layout"):
        collect(str(layout))


def test_a_blob_folder_linked_outside_the_layout_is_named(tmp_path):
    """The link that leaves is blobs/ itself; the message named blobs/sha256 as a blob."""
    blobs = Blobs()
    layout = tmp_path / "layout"
    write_dir(str(layout), blobs.layout_files([named(blobs.image(), "v1")]))
    (layout / "blobs").rename(tmp_path / "blobs")
    os.symlink("../blobs", layout / "blobs")
    records, errors, _ = collect(str(layout))
    assert records == [] and errors
    assert {str(e) for e in errors} == {f"{layout / 'blobs'}: folder is a symlink that points outside the layout"}


def confused_layout(listed_as: str) -> tuple[dict[str, bytes], str, str]:
    """(layout files, the confused digest, its refusal) with one image manifest listed as an index
    and one index listed as an image manifest (`listed_as` says which is top-level), beside a good
    image."""
    blobs = Blobs()
    good = blobs.image(layers=(b"good",))
    image = blobs.image(layers=(b"image",))
    index = blobs.index([blobs.image(layers=(b"child",))])
    if listed_as == "index":  # an image manifest whose descriptor says index
        confused = dict(image, mediaType="application/vnd.docker.distribution.manifest.list.v2+json")
        own = OCI_MANIFEST
    else:  # an index whose descriptor says image manifest
        confused = dict(index, mediaType="application/vnd.docker.distribution.manifest.v2+json")
        own = "application/vnd.oci.image.index.v1+json"
    files = blobs.layout_files(
        [named(good, containerd="cr.example/good:1"), named(confused, containerd="cr.example/bad:1")]
    )
    reason = f"manifest {confused['digest']} is listed as {confused['mediaType']} but its own mediaType is {own!r}"
    return files, confused["digest"], reason


@pytest.mark.parametrize("listed_as", ["index", "manifest"])
@pytest.mark.parametrize("packing", ["oci", "oci-archive", "oci-archive.gz", "docker25", "docker25.zst"])
def test_a_document_listed_as_the_other_kind_fails_alone_on_every_local_source(tmp_path, listed_as, packing):
    files, digest, reason = confused_layout(listed_as)
    if packing.startswith("docker25"):
        files["manifest.json"] = b"[]"
    if packing == "oci":
        write_dir(str(tmp_path / "layout"), files)
        spec = where = str(tmp_path / "layout")
        spec = f"oci:{spec}"
    else:
        raw = tar_bytes(files)
        path = tmp_path / "archive.tar"
        if packing.endswith(".gz"):
            raw = gzip.compress(raw, mtime=0)
        elif packing.endswith(".zst"):
            raw = zstandard.ZstdCompressor().compress(raw)
        path.write_bytes(raw)
        where = str(path)
        spec = f"oci-archive:{path}" if packing.startswith("oci") else f"docker-archive:{path}"
    records, errors, _ = collect(spec)
    assert [str(e) for e in errors] == [f"{where}: {reason}"]
    assert [r.name for r in records] == ["good"]
    assert digest not in {r.digest for r in records}


def test_a_config_listed_in_index_json_is_skipped_with_a_note(tmp_path):
    # The image spec: an index's media type unknown to the reader must be ignored; a config is not
    # a manifest, and listing one is no claim about what a manifest's digest holds.
    blobs = Blobs()
    good = blobs.image()
    config = blobs.add(b'{"os":"linux"}', "application/vnd.oci.image.config.v1+json")
    write_dir(str(tmp_path), blobs.layout_files([named(good, containerd="cr.example/good:1"), config]))
    records, errors, notes = collect(f"oci:{tmp_path}")
    assert not errors and [r.name for r in records] == ["good"]
    assert notes == [
        f"{tmp_path}: skipped {config['digest']}: unknown media type application/vnd.oci.image.config.v1+json"
    ]


@pytest.mark.parametrize(
    "created", ["2026-01-02t03:04:05z", "2026-01-02 03:04:05Z", "2026-01-02T03:04:05z", "2026-01-02t03:04:05.5Z"]
)
def test_a_created_time_that_go_refuses_is_no_time(tmp_path, created):
    """RFC 3339 lets a reader take a lowercase "t" or "z" or a space for the "T"; Go's parser
    refuses them, and skopeo and docker fail on such a config: the image has no time they show."""
    blobs = Blobs()
    odd, plain = blobs.image(layers=(b"1",), created=created), blobs.image(layers=(b"2",))
    write_dir(str(tmp_path), blobs.layout_files([named(odd, "odd"), named(plain, "plain")]))
    records, errors, _ = collect(f"oci:{tmp_path}", registry="reg.example", repository="team/app")
    assert not errors
    times = {r.tags: r.created for r in records}
    assert times == {("odd",): None, ("plain",): "2026-11-29T10:54:27.000347894Z"}


def test_an_image_of_no_layers_has_no_compressed_sizes(tmp_path):
    """`layers_compressed` says whether the layer sizes are compressed; with no layers there are
    none. An engine's or a classic `docker save`'s image of none was stored as compressed, which
    the sizes of those sources never are."""
    write_tar(str(tmp_path / "save.tar"), classic_save_files([{"tags": ["empty:1"], "layers": []}]))
    blobs = Blobs()
    write_dir(str(tmp_path / "layout"), blobs.layout_files([named(blobs.image(layers=()), "empty")]))
    for spec in (f"docker-archive:{tmp_path / 'save.tar'}", f"oci:{tmp_path / 'layout'}"):
        records, errors, _ = collect(spec, registry="reg.example", repository="team/app")
        assert not errors and len(records) == 1 and records[0].layers == (), spec
        assert records[0].layers_compressed is False, spec


@pytest.mark.parametrize(
    "key, value, reason",
    [
        ("LayerSources", 5, "manifest.json: LayerSources is not an object"),
        ("LayerSources", [], "manifest.json: LayerSources is not an object"),
        ("LayerSources", "", "manifest.json: LayerSources is not an object"),
        ("Layers", "", "manifest.json: Layers is not a list of paths"),
        ("Layers", 0, "manifest.json: Layers is not a list of paths"),
        ("RepoTags", False, "manifest.json: RepoTags is not a list"),
    ],
)
def test_a_manifest_json_field_of_the_wrong_type_fails_as_docker_load_does(tmp_path, key, value, reason):
    # A false value of another type (0, "", []) was read as empty, and a LayerSources of any other
    # type was skipped: docker load fails on each ("cannot unmarshal ..."). null is empty to both.
    files = classic_save_files([{"tags": ["a/app:1"], "layers": [] if key == "Layers" else [b"one"]}])
    entries = json.loads(files["manifest.json"])
    for given, expected in ((value, reason), (None, None)):
        entries[0][key] = given
        files["manifest.json"] = dumps(entries)
        path = write_tar(str(tmp_path / f"{key}-{given!r}.tar"), files)
        records, errors, _ = collect(f"docker-archive:{path}")
        if expected is None:
            assert not errors and len(records) == 1
        else:
            assert records == [] and [str(e) for e in errors] == [f"{path}: {expected}"]


@pytest.mark.parametrize("urls", ["", 0, False, {}, None])
def test_a_descriptor_whose_urls_are_no_list_fails(tmp_path, urls):
    # Read as no urls, as docker and skopeo read null alone.
    blobs = Blobs()
    image = blobs.image(layers=(b"one",))
    manifest = json.loads(blobs.blobs[image["digest"]])
    manifest["layers"][0]["urls"] = urls
    image = blobs.add(dumps(manifest), OCI_MANIFEST)
    layout = write_dir(str(tmp_path / "layout"), blobs.layout_files([named(image, "reg.example/a/app:1")]))
    records, errors, _ = collect(f"oci:{layout}")
    if urls is None:
        assert not errors and len(records) == 1
    else:
        assert records == [] and len(errors) == 1 and str(errors[0]).endswith(" layers[0] has invalid urls"), errors
