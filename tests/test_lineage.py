"""Base-image lineage: ChainIDs as the OCI image spec defines them, and `imgdex base` / `derived`."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
from builders import (
    OCI_CONFIG,
    OCI_LAYER_GZ,
    OCI_MANIFEST,
    Blobs,
    classic_save_files,
    digest_of,
    dumps,
    named,
    write_dir,
    write_tar,
)
from fake_engine import FakeEngine, Step, classic_image

from indexer import lineage
from indexer.model import ImageRecord
from indexer.sources.daemon import DockerDaemon
from indexer.sources.parse import Context
from indexer.store.delta_writer import DeltaWriter
from indexer.store.writer import now_utc, record_from_row

REG = "reg.example"
BASE_NAME = "org.opencontainers.image.base.name"
BASE_DIGEST = "org.opencontainers.image.base.digest"
OLD = "2020-01-01T00:00:00Z"
A = "sha256:ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb"  # sha256("a")
B = "sha256:3e23e8160039594a33894f6564e1b1348bbd7a0088d42c4acb73eeaed59c009d"  # sha256("b")
C = "sha256:2e7d2c03a9507ae265ecf5b5356885a53393a2029d241394997265a1a25aefc6"  # sha256("c")


# ----------------------------------------------------------------------------- ChainID


def test_chain_ids_follow_the_spec_definition():
    # C1 = D1; Ci = "sha256:" + sha256(C(i-1) + " " + Di)
    diff_ids = [A, B, C]
    want = [A]
    for diff_id in diff_ids[1:]:
        want.append("sha256:" + hashlib.sha256(f"{want[-1]} {diff_id}".encode()).hexdigest())
    assert lineage.chain_ids(diff_ids) == tuple(want)
    assert lineage.chain_id(diff_ids) == want[-1]


def test_chain_ids_match_values_computed_with_sha256sum():
    # printf '%s %s' "$A" "$B" | sha256sum, then the same with that result and "$C"
    two = "sha256:51c0c8ace48498d6f5fee6b0592cc06f2da0f3cbe09c5a34a97dce85c3889676"
    three = "sha256:2fce7f8ce91bcf0a1428b36e1024639fdbd9469eea762dba98aa749631885106"
    lineage._PREFIXES.clear()
    assert lineage.chain_ids((A, B, C)) == (A, two, three)
    assert lineage.chain_ids((A, B, C)) == (A, two, three)  # remembered steps give the same answer
    assert lineage.chain_ids((A, B)) == (A, two)


def test_a_single_layer_is_its_own_chain_and_no_layers_have_none():
    assert lineage.chain_ids([A]) == (A,)
    assert lineage.chain_ids([]) == () and lineage.chain_id([]) == ""


@pytest.mark.parametrize("bad", ["sha512:" + "a" * 128, "sha256:ABC", "", "sha256:" + "a" * 63])
def test_a_diff_id_that_is_not_a_sha256_digest_means_no_chain(bad):
    assert lineage.chain_ids([A, bad]) == ()
    assert lineage.chain_ids([bad, A]) == ()


# ----------------------------------------------------------------------------- images to index


def layer(text: str) -> bytes:
    return text.encode()


def image(
    blobs: Blobs,
    layers: list[str],
    *,
    labels=None,
    empty_steps=0,
    arch="amd64",
    annotations=None,
    created="2026-11-29T10:54:27Z",
    diff_ids: list | None = None,
) -> dict:
    """An OCI image whose diff_ids are digest_of(b"diff-" + layer); `empty_steps` history entries
    that made no layer (ENV, LABEL) come after the layers."""
    data = [layer(t) for t in layers]
    history = [{"created": created, "created_by": f"ADD {t}"} for t in layers]
    history += [{"created": created, "created_by": f"ENV STEP={i}", "empty_layer": True} for i in range(empty_steps)]
    config = {
        "architecture": arch,
        "os": "linux",
        "created": created,
        "config": {"Labels": labels or {}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids if diff_ids is not None else [diff_of(t) for t in layers]},
        "history": history,
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": blobs.add(dumps(config), OCI_CONFIG),
        "layers": [blobs.add(d, OCI_LAYER_GZ) for d in data],
    }
    if annotations:
        manifest["annotations"] = annotations
    return blobs.add(dumps(manifest), OCI_MANIFEST)


def diff_of(text: str) -> str:
    return digest_of(b"diff-" + layer(text))


def layout(tmp_path, name: str, blobs: Blobs, top: list[dict]) -> str:
    return write_dir(str(tmp_path / name), blobs.layout_files(top))


def index_into(run_cli, store: str, *sources: str) -> None:
    result = run_cli("index", *sources, "--store", store)
    assert result.exit_code == 0, result.output


def answer(run_cli, store: str, command: str, query: str, *extra) -> dict:
    result = run_cli(command, query, "--store", store, *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def names(doc: dict, key: str) -> list[tuple]:
    return [(e.get("name", ""), ",".join(e.get("tags", [])), e["sharedLayers"]) for e in doc.get(key, [])]


@pytest.fixture
def family(tmp_path, run_cli):
    """os (2 layers) <- app (3) <- web (4), tool (3) on os; os again in a second repository; and an
    image with only empty layers on top of os, which is the same chain as os."""
    blobs = Blobs()
    top = [
        named(image(blobs, ["os1", "os2"], created=OLD), f"{REG}/base/os:1"),
        named(image(blobs, ["os1", "os2"], created=OLD), f"{REG}/mirror/os:1"),
        named(image(blobs, ["os1", "os2"], empty_steps=3, labels={"x": "y"}), f"{REG}/base/os-env:1"),
        named(image(blobs, ["os1", "os2", "app"], empty_steps=2), f"{REG}/team/app:1"),
        named(image(blobs, ["os1", "os2", "app", "web"]), f"{REG}/team/web:1"),
        named(image(blobs, ["os1", "os2", "tool"]), f"{REG}/team/tool:1"),
        named(image(blobs, ["lonely"]), f"{REG}/solo/one:1"),
    ]
    store = str(tmp_path / "store")
    index_into(run_cli, store, layout(tmp_path, "family", blobs, top))
    return store


# ----------------------------------------------------------------------------- base


def test_nearest_base_lists_every_resource_of_that_chain(run_cli, family):
    doc = answer(run_cli, family, "base", f"{REG}/team/app:1")
    # os, its copy in another repository, and the image that only added empty layers: one chain
    assert names(doc, "bases") == [("base/os", "1", 2), ("base/os-env", "1", 2), ("mirror/os", "1", 2)]
    assert {e["totalLayers"] for e in doc["bases"]} == {3}
    assert all(e["id"].startswith("crp") and e["digest"].startswith("sha256:") for e in doc["bases"])
    assert set(doc) == {"bases"}


def test_all_goes_down_to_the_first_base(run_cli, family):
    assert names(answer(run_cli, family, "base", f"{REG}/team/web:1"), "bases") == [("team/app", "1", 3)]
    doc = answer(run_cli, family, "base", f"{REG}/team/web:1", "--all")
    assert names(doc, "bases") == [
        ("team/app", "1", 3),
        ("base/os", "1", 2),
        ("base/os-env", "1", 2),
        ("mirror/os", "1", 2),
    ]
    assert {e["totalLayers"] for e in doc["bases"]} == {4}


def test_layer_counts_are_json_numbers(run_cli, family):
    result = run_cli("base", f"{REG}/team/app:1", "--store", family)
    assert '"sharedLayers": 2' in result.stdout and '"totalLayers": 3' in result.stdout


@pytest.mark.parametrize("query", [f"{REG}/solo/one:1", f"{REG}/base/os:1", f"{REG}/base/os-env:1"])
def test_no_base_is_an_empty_document_and_exit_0(run_cli, family, query):
    # a single layer has nothing below it; os-env has os's layers exactly, which is no base
    result = run_cli("base", query, "--store", family)
    assert result.exit_code == 0 and result.stdout == "{}\n" and result.stderr == ""


def test_an_image_with_empty_layers_is_a_base_by_its_real_layers(run_cli, family):
    # app has two empty steps after its third layer: tool is not built on it, web is
    assert names(answer(run_cli, family, "derived", f"{REG}/team/app:1"), "images") == [("team/web", "1", 3)]


# ----------------------------------------------------------------------------- derived


def test_derived_lists_the_images_whose_nearest_base_it_is(run_cli, family):
    doc = answer(run_cli, family, "derived", f"{REG}/base/os:1")
    assert names(doc, "images") == [("team/app", "1", 2), ("team/tool", "1", 2)]
    assert set(doc["images"][0]) == {"id", "name", "digest", "tags", "sharedLayers"}
    # the copy in the other repository and the empty-layer image share the chain, so the answer
    assert answer(run_cli, family, "derived", f"{REG}/mirror/os:1") == doc
    assert answer(run_cli, family, "derived", f"{REG}/base/os-env:1") == doc


def test_derived_all_lists_every_descendant_nearest_first(run_cli, family):
    doc = answer(run_cli, family, "derived", f"{REG}/base/os:1", "--all")
    assert names(doc, "images") == [("team/app", "1", 2), ("team/tool", "1", 2), ("team/web", "1", 2)]


def test_no_derived_image_is_an_empty_document(run_cli, family):
    for query in (f"{REG}/team/web:1", f"{REG}/solo/one:1"):
        result = run_cli("derived", query, "--store", family)
        assert result.exit_code == 0 and result.stdout == "{}\n"


def test_image_is_anything_get_accepts(run_cli, family):
    got = json.loads(run_cli("get", f"{REG}/base/os:1", "--store", family).stdout)
    want = answer(run_cli, family, "derived", f"{REG}/base/os:1")
    assert answer(run_cli, family, "derived", got["id"]) == want
    assert answer(run_cli, family, "derived", f"{REG}/base/os@{got['digest']}") == want
    config = json.loads(run_cli("get", got["id"], "--store", family).stdout)["config"]["digest"]
    # a config digest prefix is ambiguous here: three resources share os's config
    result = run_cli("derived", config[7:19], "--store", family)
    assert result.exit_code == 1 and "is ambiguous" in result.stderr and "Traceback" not in result.output


def test_unknown_image_is_one_line_and_exit_1(run_cli, family):
    for command in ("base", "derived"):
        result = run_cli(command, f"{REG}/nothing/here:1", "--store", family)
        assert result.exit_code == 1 and result.stdout == ""
        assert result.stderr == f"imgdex: image {REG}/nothing/here:1 not found\n"


def test_table_and_yaml(run_cli, family):
    table = run_cli("base", f"{REG}/team/web:1", "--store", family, "--format", "table").stdout
    header = [cell.strip() for cell in table.splitlines()[1].split("|")[1:-1]]
    assert header == ["ID", "NAME", "DIGEST", "TAGS", "SHARED LAYERS", "TOTAL LAYERS"]
    row = [cell.strip() for cell in table.splitlines()[3].split("|")[1:-1]]
    assert row[1:] == ["team/app", row[2], "1", "3", "4"] and row[2].startswith("sha256:")
    derived = run_cli("derived", f"{REG}/base/os:1", "--store", family, "--format", "table").stdout
    assert "team/app" in derived and "team/tool" in derived and "team/web" not in derived
    import yaml

    doc = yaml.safe_load(run_cli("derived", f"{REG}/base/os:1", "--store", family, "--format", "yaml").stdout)
    assert doc == answer(run_cli, family, "derived", f"{REG}/base/os:1")


# ----------------------------------------------------------------------------- identical images, sources


def test_identical_images_in_two_repositories_and_two_sources(tmp_path, run_cli):
    """The same base in two repositories of a layout and in a classic docker save: every resource is
    listed, exact records (from manifests) before the docker save's."""
    blobs = Blobs()
    top = [
        named(image(blobs, ["os1"]), f"{REG}/base/os:1"),
        named(image(blobs, ["os1"]), f"{REG}/copy/os:1"),
        named(image(blobs, ["os1", "app"]), f"{REG}/team/app:1"),
    ]
    # docker save stores uncompressed layers: their digests are the diff_ids
    saved = classic_save_files([{"tags": ["saved/os:1"], "layers": [b"diff-os1"]}])
    save = write_tar(str(tmp_path / "save.tar"), saved)
    store = str(tmp_path / "store")
    index_into(run_cli, store, layout(tmp_path, "l", blobs, top), save)
    doc = answer(run_cli, store, "base", f"{REG}/team/app:1")
    assert names(doc, "bases") == [("base/os", "1", 1), ("copy/os", "1", 1), ("saved/os", "1", 1)]
    assert "digest" not in doc["bases"][2]  # a classic docker save has no manifest digest
    for query in (f"{REG}/base/os:1", f"{REG}/copy/os:1", "saved/os:1"):
        assert names(answer(run_cli, store, "derived", query), "images") == [("team/app", "1", 1)]


def test_engine_records_have_lineage(tmp_path, run_cli):
    """docker-daemon: records carry the engine's RootFS.Layers as diff_ids."""
    fake = FakeEngine()
    base = fake.add(classic_image("base", tags=["lin/base:1"], steps=(Step("ADD rootfs", 7),)))
    steps = (Step("ADD rootfs", 7), Step("ENV A=1", None), Step("COPY x", 3))
    app = classic_image("app", tags=["lin/app:1"], steps=steps)
    app["inspect"]["RootFS"]["Layers"][0] = base["inspect"]["RootFS"]["Layers"][0]
    fake.add(app)
    source = DockerDaemon(location=fake.address, ref="", connect=lambda address: fake, workers=1, window=4)
    records = [r for r in source.records(Context(source.kind, source.location)) if isinstance(r, ImageRecord)]
    assert {r.name: r.diff_ids for r in records}["lin/app"] == tuple(app["inspect"]["RootFS"]["Layers"])
    store = str(tmp_path / "store")
    with DeltaWriter(store) as writer:
        writer.write(records, now_utc())
    assert names(answer(run_cli, store, "base", "lin/app:1"), "bases") == [("lin/base", "1", 1)]
    assert names(answer(run_cli, store, "derived", "lin/base:1"), "images") == [("lin/app", "1", 1)]


# ----------------------------------------------------------------------------- multi-platform


def test_lineage_is_per_platform_child(tmp_path, run_cli):
    blobs = Blobs()
    os_amd = image(blobs, ["os-amd"], arch="amd64")
    os_arm = image(blobs, ["os-arm"], arch="arm64")
    app_amd = image(blobs, ["os-amd", "app-amd"], arch="amd64")
    app_arm = image(blobs, ["os-arm", "app-arm"], arch="arm64")

    def platforms(amd, arm):
        return blobs.index(
            [
                {**amd, "platform": {"os": "linux", "architecture": "amd64"}},
                {**arm, "platform": {"os": "linux", "architecture": "arm64"}},
            ]
        )

    top = [
        named(platforms(os_amd, os_arm), f"{REG}/base/os:1"),
        named(platforms(app_amd, app_arm), f"{REG}/team/app:1"),
    ]
    store = str(tmp_path / "store")
    index_into(run_cli, store, layout(tmp_path, "multi", blobs, top))

    amd = answer(run_cli, store, "base", f"{REG}/team/app:1")
    assert [e["digest"] for e in amd["bases"]] == [os_amd["digest"]]
    assert "tags" not in amd["bases"][0]  # a platform child is untagged: its index holds the tag
    arm = answer(run_cli, store, "base", f"{REG}/team/app:1", "--platform", "linux/arm64")
    assert [e["digest"] for e in arm["bases"]] == [os_arm["digest"]]

    derived = answer(run_cli, store, "derived", f"{REG}/base/os:1", "--platform", "linux/arm64")
    assert [e["digest"] for e in derived["images"]] == [app_arm["digest"]]
    # an index named by id answers for its platform child
    index_id = json.loads(run_cli("get", f"{REG}/base/os@{top[0]['digest']}", "--store", store).stdout)["id"]
    assert answer(run_cli, store, "derived", index_id)["images"][0]["digest"] == app_amd["digest"]
    result = run_cli("base", f"{REG}/team/app:1", "--store", store, "--platform", "linux/s390x")
    assert result.exit_code == 1 and "no manifest for platform linux/s390x" in result.stderr


def test_a_base_child_shared_by_two_indexes_agrees_with_either(tmp_path, run_cli):
    # os:2 rebuilt amd64 only: both tags list one arm64 manifest, whose record names one of the
    # two indexes as its parent. An arm64 app declaring either index by digest is built on it.
    blobs = Blobs()
    arm = image(blobs, ["os-arm"], arch="arm64")
    arm64 = {"os": "linux", "architecture": "arm64"}
    amd64 = {"os": "linux", "architecture": "amd64"}
    indexes = [
        blobs.index([{**image(blobs, [f"os-amd-{n}"]), "platform": amd64}, {**arm, "platform": arm64}]) for n in (1, 2)
    ]
    top = [named(index, f"{REG}/base/os:{n}") for n, index in enumerate(indexes, 1)]
    for n, index in enumerate(indexes, 1):
        declares = {BASE_NAME: f"{REG}/base/os:{n}", BASE_DIGEST: index["digest"]}
        top.append(named(image(blobs, ["os-arm", f"app{n}"], arch="arm64", annotations=declares), f"{REG}/app{n}:1"))
    store = str(tmp_path / "store")
    index_into(run_cli, store, layout(tmp_path, "shared", blobs, top))
    for n in (1, 2):
        doc = answer(run_cli, store, "base", f"{REG}/app{n}:1")
        assert [e["digest"] for e in doc["bases"]] == [arm["digest"]]
        assert doc["declaredBase"]["agreement"] == "AGREES", n
        derived = answer(run_cli, store, "derived", f"{REG}/base/os:{n}", "--platform", "linux/arm64")
        assert [e["name"] for e in derived["images"]] == ["app1", "app2"]


# ----------------------------------------------------------------------------- declared bases


def test_declared_base_is_reported_beside_the_computed_one(tmp_path, run_cli):
    blobs = Blobs()
    os_desc = image(blobs, ["os1"])
    top = [named(os_desc, f"{REG}/base/os:1"), named(image(blobs, ["other"]), f"{REG}/base/other:1")]
    annotated = {BASE_NAME: f"{REG}/base/os:1", "org.opencontainers.image.base.digest": os_desc["digest"]}
    top.append(named(image(blobs, ["os1", "app"], annotations=annotated), f"{REG}/team/app:1"))

    def declaring(layers, base, ref):
        top.append(named(image(blobs, layers, labels={BASE_NAME: base}), ref))

    # labels are inherited: web, built on app, still declares os
    declaring(["os1", "app", "web"], f"{REG}/base/os:1", f"{REG}/team/web:1")
    declaring(["os1", "liar"], f"{REG}/base/other:1", f"{REG}/team/liar:1")
    declaring(["os1", "far"], "elsewhere.example/os:9", f"{REG}/team/far:1")
    declaring(["alone"], f"{REG}/base/os:1", f"{REG}/team/alone:1")
    store = str(tmp_path / "store")
    index_into(run_cli, store, layout(tmp_path, "declared", blobs, top))

    def declared(query):
        return answer(run_cli, store, "base", query).get("declaredBase")

    want = {"name": f"{REG}/base/os:1", "digest": os_desc["digest"], "agreement": "AGREES"}
    assert declared(f"{REG}/team/app:1") == want
    assert declared(f"{REG}/team/web:1") == {"name": f"{REG}/base/os:1", "agreement": "ANCESTOR"}
    assert declared(f"{REG}/team/liar:1") == {"name": f"{REG}/base/other:1", "agreement": "DIFFERS"}
    assert declared(f"{REG}/team/far:1") == {"name": "elsewhere.example/os:9", "agreement": "NOT_INDEXED"}
    alone = answer(run_cli, store, "base", f"{REG}/team/alone:1")
    assert alone == {"declaredBase": {"name": f"{REG}/base/os:1", "agreement": "DIFFERS"}}
    table = run_cli("base", f"{REG}/team/web:1", "--store", store, "--format", "table").stdout
    assert table.rstrip().splitlines()[-1] == (
        f"declared base: {REG}/base/os:1 (disagrees: it is a base further down than the computed nearest base)"
    )


def declared_base(tmp_path, run_cli, blobs, top, image_ref: str, folder: str) -> dict:
    """The declaredBase `imgdex base` gives `image_ref` once the layout of `top` is indexed."""
    store = str(tmp_path / "store")
    index_into(run_cli, store, layout(tmp_path, folder, blobs, top))
    return answer(run_cli, store, "base", image_ref)["declaredBase"]


def test_annotations_and_labels_are_not_mixed(tmp_path, run_cli):
    """web inherits app's labels (which declare os by name and digest) and its annotation declares
    app by name only: the annotation is the declaration, not its name beside the labels' digest."""
    blobs = Blobs()
    os_desc = image(blobs, ["os1"])
    inherited = {BASE_NAME: f"{REG}/base/os:1", BASE_DIGEST: os_desc["digest"]}
    top = [
        named(os_desc, f"{REG}/base/os:1"),
        named(image(blobs, ["os1", "app"], labels=inherited), f"{REG}/team/app:1"),
        named(
            image(blobs, ["os1", "app", "web"], labels=inherited, annotations={BASE_NAME: f"{REG}/team/app:1"}),
            f"{REG}/team/web:1",
        ),
    ]
    declared = declared_base(tmp_path, run_cli, blobs, top, f"{REG}/team/web:1", "mixed")
    assert declared == {"name": f"{REG}/team/app:1", "agreement": "AGREES"}


def test_a_digest_in_the_declared_name_is_the_image_declared(tmp_path, run_cli):
    # os:1 is app's base; the name pins os:2, another image of the same repository
    blobs = Blobs()
    other = image(blobs, ["other"])
    top = [named(image(blobs, ["os1"]), f"{REG}/base/os:1"), named(other, f"{REG}/base/os:2")]
    pinned = f"{REG}/base/os@{other['digest']}"
    top.append(named(image(blobs, ["os1", "app"], labels={BASE_NAME: pinned}), f"{REG}/team/app:1"))
    declared = declared_base(tmp_path, run_cli, blobs, top, f"{REG}/team/app:1", "pinned")
    assert declared == {"name": pinned, "agreement": "DIFFERS"}


def test_a_declared_tag_that_is_not_indexed_is_not_checked(tmp_path, run_cli):
    # app is built on os:9, which was not indexed; os:1, of other layers, was
    blobs = Blobs()
    top = [named(image(blobs, ["os1"]), f"{REG}/base/os:1")]
    top.append(named(image(blobs, ["os9", "app"], labels={BASE_NAME: f"{REG}/base/os:9"}), f"{REG}/team/app:1"))
    declared = declared_base(tmp_path, run_cli, blobs, top, f"{REG}/team/app:1", "tagged")
    assert declared == {"name": f"{REG}/base/os:9", "agreement": "NOT_INDEXED"}


def test_a_declared_digest_that_is_not_indexed_is_not_checked(tmp_path, run_cli):
    # app was built on an os:1 that has been rebuilt since; only the new os:1 was indexed
    blobs = Blobs()
    top = [named(image(blobs, ["os-new"]), f"{REG}/base/os:1")]
    built_on = {BASE_NAME: f"{REG}/base/os:1", BASE_DIGEST: "sha256:" + "0" * 64}
    top.append(named(image(blobs, ["os-old", "app"], labels=built_on), f"{REG}/team/app:1"))
    declared = declared_base(tmp_path, run_cli, blobs, top, f"{REG}/team/app:1", "rebuilt")
    assert declared == {"name": f"{REG}/base/os:1", "digest": built_on[BASE_DIGEST], "agreement": "NOT_INDEXED"}


def test_a_declared_name_is_escaped_in_the_table(tmp_path, run_cli):
    blobs = Blobs()
    evil = "evil\x1b[2J\nname"
    top = [named(image(blobs, ["os1"], annotations={BASE_NAME: evil}), f"{REG}/team/app:1")]
    store = str(tmp_path / "store")
    index_into(run_cli, store, layout(tmp_path, "evil", blobs, top))
    table = run_cli("base", f"{REG}/team/app:1", "--store", store, "--format", "table").stdout
    assert "\x1b" not in table
    assert table.splitlines()[-1] == "declared base: evil\\x1b[2J\\nname (not indexed, so not checked)"


def test_diff_ids_with_an_entry_that_is_not_a_string_have_no_chain(tmp_path, run_cli):
    """[os1, 5, app] is not the chain [os1, app]: without the 5 the config would claim app's layers."""
    blobs = Blobs()
    diff_ids = [digest_of(b"diff-os1"), 5, digest_of(b"diff-app")]
    config = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": blobs.add(dumps(config), OCI_CONFIG),
        "layers": [blobs.add(layer(t), OCI_LAYER_GZ) for t in ("os1", "five", "app")],
    }
    top = [
        named(blobs.add(dumps(manifest), OCI_MANIFEST), f"{REG}/odd/three:1"),
        named(image(blobs, ["os1", "app"]), f"{REG}/team/app:1"),
        named(image(blobs, ["os1", "app", "web"]), f"{REG}/team/web:1"),
    ]
    store = str(tmp_path / "store")
    index_into(run_cli, store, layout(tmp_path, "odd", blobs, top))
    assert names(answer(run_cli, store, "base", f"{REG}/team/web:1"), "bases") == [("team/app", "1", 2)]
    assert answer(run_cli, store, "derived", f"{REG}/odd/three:1") == {}


# ----------------------------------------------------------------------------- no lineage


def test_imported_json_has_no_lineage_and_says_so(tmp_path, run_cli):
    doc = {
        "id": "crp9s8r7q6p5o4n3m2l1",
        "name": "crp1/app",
        "digest": "sha256:" + "1" * 64,
        "layers": [{"id": "crp9s8r7q6p5o4n3m2l2", "digest": "sha256:" + "2" * 64, "size": "3"}],
        "tags": ["1"],
    }
    source = tmp_path / "ycr.json"
    source.write_text(json.dumps(doc))
    store = str(tmp_path / "store")
    index_into(run_cli, store, f"ycr-json:{source}")
    for command in ("base", "derived"):
        result = run_cli(command, "cr.yandex/crp1/app:1", "--store", store)
        assert result.exit_code == 0 and result.stdout == "{}\n"
        assert result.stderr == (
            f"imgdex: note: image {doc['id']} has no known diff_ids (an imported record carries none),"
            " so its lineage is unknown\n"
        )


@pytest.mark.parametrize("import_first", [True, False])
def test_an_import_merged_with_a_manifest_source_says_the_import_left_no_diff_ids(tmp_path, run_cli, import_first):
    # the layout's config was indexed, so "no image config was indexed" would mislead
    fixtures = os.path.join(os.path.dirname(__file__), "fixtures")
    exported = os.path.join(fixtures, "ycr", "image-get.json")
    with open(exported) as f:
        doc = json.load(f)
    layout_source = os.path.join(fixtures, "real", "oci-layout")
    naming = ("--registry", "cr.yandex", "--repository", doc["name"])
    store = str(tmp_path / "store")
    runs = [
        ("index", f"ycr-json:{exported}", "--store", store),
        ("index", f"oci:{layout_source}:v1", "--store", store, *naming),
    ]
    for args in runs if import_first else runs[::-1]:
        assert run_cli(*args).exit_code == 0
    result = run_cli("base", doc["id"], "--store", store)
    assert result.exit_code == 0 and result.stdout == "{}\n"
    assert result.stderr == (
        f"imgdex: note: image {doc['id']} has no known diff_ids (an imported record carries none),"
        " so its lineage is unknown\n"
    )


def test_the_note_says_why_an_indexed_config_gives_no_lineage(tmp_path, run_cli):
    blobs = Blobs()

    def config_only(diff_ids: list[str], listed=None) -> dict:
        listed = diff_ids if listed is None else listed
        config = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": listed}}
        layers = [blobs.add(layer(d), OCI_LAYER_GZ) for d in diff_ids]
        manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": blobs.add(dumps(config), OCI_CONFIG)}
        return blobs.add(dumps({**manifest, "layers": layers}), OCI_MANIFEST)

    top = [
        named(config_only([]), f"{REG}/odd/empty:1"),
        named(config_only([A, "sha256:" + "A" * 64]), f"{REG}/odd/upper:1"),
        named(config_only([A], listed=[A, None]), f"{REG}/odd/null:1"),  # the note blamed a missing config
    ]
    store = str(tmp_path / "store")
    index_into(run_cli, store, layout(tmp_path, "odd", blobs, top))
    for query, why in (
        ("empty", "has no layers, so it has no lineage"),
        ("upper", "has diff_ids that are not all sha256 digests, so its lineage is unknown"),
        (
            "null",
            "has a config without usable rootfs.diff_ids (missing, or not a list of strings),"
            " so its lineage is unknown",
        ),
    ):
        image_id = json.loads(run_cli("get", f"{REG}/odd/{query}:1", "--store", store).stdout)["id"]
        for command in ("base", "derived"):
            result = run_cli(command, f"{REG}/odd/{query}:1", "--store", store)
            assert result.exit_code == 0 and result.stdout == "{}\n"
            assert result.stderr == f"imgdex: note: image {image_id} {why}\n"


# ----------------------------------------------------------------------------- the store


def test_store_keeps_diff_ids_and_chains_and_the_view(run_cli, family):
    result = run_cli(
        "sql",
        "SELECT name, len(diff_ids), len(chain_ids), chain_id = chain_ids[-1] FROM images WHERE name = 'team/web'",
        "--store",
        family,
        "--format",
        "csv",
    )
    assert result.stdout.splitlines()[1] == "team/web,4,4,true"
    sql = """SELECT i.name, b.name, v.shared_layers, v.distance FROM image_bases v
             JOIN images i ON i.id = v.image_id JOIN images b ON b.id = v.base_id
             WHERE i.name = 'team/web' ORDER BY v.distance, b.name"""
    rows = run_cli("sql", sql, "--store", family, "--format", "csv").stdout.splitlines()[1:]
    assert rows == [
        "team/web,team/app,3,1",
        "team/web,base/os,2,2",
        "team/web,base/os-env,2,2",
        "team/web,mirror/os,2,2",
    ]
    count = "SELECT count(*) FROM image_bases"
    assert run_cli("sql", count, "--store", family, "--format", "csv").stdout.splitlines()[1] == "10"


def test_documented_analyst_query_runs(run_cli, family):
    sql = """SELECT i.registry, i.name, b.name AS base, b.created_at AS base_created
             FROM image_bases ib
             JOIN images i ON i.id = ib.image_id
             JOIN images b ON b.id = ib.base_id
             WHERE ib.distance = 1 AND i.registry = 'reg.example'
               AND b.created_at < (now() AT TIME ZONE 'UTC') - INTERVAL 90 DAY
             ORDER BY i.name, b.name"""
    result = run_cli("sql", sql, "--store", family, "--format", "csv")
    assert result.exit_code == 0, result.output
    # os-env shares os's chain but is new; web's nearest base is app, which is new too
    assert result.stdout.splitlines() == [
        "registry,name,base,base_created",
        "reg.example,team/app,base/os,2020-01-01 00:00:00+00",
        "reg.example,team/app,mirror/os,2020-01-01 00:00:00+00",
        "reg.example,team/tool,base/os,2020-01-01 00:00:00+00",
        "reg.example,team/tool,mirror/os,2020-01-01 00:00:00+00",
    ]


def test_reindexing_and_stored_rows_keep_diff_ids(tmp_path, run_cli, family):
    blobs = Blobs()
    top = [named(image(blobs, ["os1", "os2", "app"], empty_steps=2), f"{REG}/team/app:1")]
    index_into(run_cli, family, layout(tmp_path, "again", blobs, top))
    assert names(answer(run_cli, family, "base", f"{REG}/team/app:1"), "bases") == [
        ("base/os", "1", 2),
        ("base/os-env", "1", 2),
        ("mirror/os", "1", 2),
    ]
    from conftest import store_views

    con = store_views(family)
    try:
        cursor = con.execute("SELECT * EXCLUDE (created_at, indexed_at) FROM images WHERE name = 'team/app'")
        columns = [d[0] for d in cursor.description]
        rows = [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]
    finally:
        con.close()
    assert len(rows) == 1
    record = record_from_row(rows[0])
    assert record.diff_ids == tuple(rows[0]["diff_ids"]) and len(record.diff_ids) == 3
    assert lineage.chain_ids(record.diff_ids) == tuple(rows[0]["chain_ids"])


def test_lineage_commands_import_neither_pyarrow_nor_docker(family):
    from conftest import modules_after_cli

    calls = [[command, f"{REG}/team/app:1", "--store", family] for command in ("base", "derived")]
    loaded, _ = modules_after_cli(calls, ("pyarrow", "docker", "yaml"))
    assert loaded == []


def test_a_store_without_lineage_columns_says_so(tmp_path, run_cli, family):
    """A store written before lineage existed (copied as bare Parquet files here) is one line, not a traceback."""
    from conftest import store_views

    bare = tmp_path / "old"
    bare.mkdir()
    old = "SELECT * EXCLUDE (diff_ids, chain_ids, chain_id) FROM images"
    store_views(family).execute(f"COPY ({old}) TO '{bare / 'images.parquet'}' (FORMAT parquet)")
    for command in ("base", "derived"):
        result = run_cli(command, f"{REG}/team/app:1", "--store", str(bare))
        assert result.exit_code == 1 and result.stdout == ""
        assert result.stderr == (
            f"imgdex: store {bare} has no lineage columns (it was written by an older imgdex); "
            "re-index into a new store\n"
        )


def _base_rows(run_cli, store: str) -> list[dict]:
    query = (
        "SELECT i.name AS image, b.name AS base, ib.shared_layers, ib.distance FROM image_bases ib "
        "JOIN images i ON i.id = ib.image_id JOIN images b ON b.id = ib.base_id ORDER BY 1, 2"
    )
    result = run_cli("sql", query, "--store", store, "--format", "json")
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_a_one_layer_image_whose_diff_id_reads_as_a_deeper_chain_id_is_no_base(tmp_path, run_cli):
    """C1 is the first diff_id itself: a config can name a diff_id equal to another image's C2.
    `base` took it for a base of 1 shared layer, image_bases of 2, and `derived` for none."""
    blobs = Blobs()
    chain = lineage.chain_ids([diff_of("a"), diff_of("b"), diff_of("c")])
    top = [
        named(image(blobs, ["a", "b", "c"]), f"{REG}/q/app:1"),
        named(image(blobs, ["fake"], diff_ids=[chain[1]]), f"{REG}/p/fake:1"),
        named(image(blobs, ["a", "b"]), f"{REG}/base/os:1"),
    ]
    store = str(tmp_path / "store")
    index_into(run_cli, store, layout(tmp_path, "crafted", blobs, top))
    assert names(answer(run_cli, store, "base", f"{REG}/q/app:1"), "bases") == [("base/os", "1", 2)]
    assert answer(run_cli, store, "derived", f"{REG}/p/fake:1") == {}
    assert _base_rows(run_cli, store) == [{"image": "q/app", "base": "base/os", "shared_layers": 2, "distance": 1}]


def test_a_config_with_fewer_diff_ids_than_layers_has_no_lineage(tmp_path, run_cli):
    """Its chain was made of the diff_ids it had, and it passed for a base of images built on
    other layers than its own."""
    blobs = Blobs()
    top = [
        named(image(blobs, ["x", "y", "z"], diff_ids=[diff_of("x"), diff_of("y")]), f"{REG}/odd/fewer:1"),
        named(image(blobs, ["x", "y", "w"]), f"{REG}/team/w:1"),
    ]
    store = str(tmp_path / "store")
    index_into(run_cli, store, layout(tmp_path, "fewer", blobs, top))
    assert answer(run_cli, store, "base", f"{REG}/team/w:1") == {}
    assert _base_rows(run_cli, store) == []
    result = run_cli("base", f"{REG}/odd/fewer:1", "--store", store)
    assert result.exit_code == 0 and json.loads(result.stdout) == {}
    assert "has a config listing 2 diff_ids for 3 layers, so its lineage is unknown" in result.stderr


def test_a_declared_base_of_an_image_without_lineage_is_not_checked(tmp_path, run_cli):
    """It was reported as DIFFERS, a disagreement no chain could show."""
    blobs = Blobs()
    top = [
        named(image(blobs, ["a", "b"]), f"{REG}/base/os:1"),
        named(
            image(
                blobs,
                ["a", "b", "c"],
                diff_ids=[diff_of("a"), diff_of("b"), "sha256:XYZ"],
                labels={BASE_NAME: f"{REG}/base/os:1"},
            ),
            f"{REG}/team/unknown:1",
        ),
    ]
    store = str(tmp_path / "store")
    index_into(run_cli, store, layout(tmp_path, "unknown", blobs, top))
    doc = answer(run_cli, store, "base", f"{REG}/team/unknown:1")
    assert doc == {"declaredBase": {"name": f"{REG}/base/os:1", "agreement": "NOT_CHECKED"}}
    table = run_cli("base", f"{REG}/team/unknown:1", "--store", store, "--format", "table").stdout
    assert (
        table.rstrip().splitlines()[-1]
        == f"declared base: {REG}/base/os:1 (not checked: this image's lineage is unknown)"
    )


def _agreements() -> set[str]:
    """Every value queries.lineage gives a declared base's "agreement", read from its assignments."""
    import ast
    import inspect

    from queries import lineage as answers

    found = set()
    for node in ast.walk(ast.parse(inspect.getsource(answers))):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Subscript) and isinstance(t.slice, ast.Constant) and t.slice.value == "agreement"
            for t in node.targets
        ):
            # `AGREES if … else ANCESTOR`: the module's constants among the names the value reads
            names = {n.id for n in ast.walk(node.value) if isinstance(n, ast.Name)}
            found |= {getattr(answers, n) for n in names if isinstance(getattr(answers, n, None), str)}
    return found


def test_base_help_explains_every_agreement(run_cli):
    agreements = _agreements()
    assert "NOT_CHECKED" in agreements and len(agreements) >= 5
    text = run_cli("base", "--help").stdout
    for agreement in agreements:
        # Each on a line of its own, with what it means beside it
        assert any(line.split()[:1] == [agreement] and len(line.split()) > 2 for line in text.splitlines()), agreement


def test_a_platform_child_agrees_only_with_a_tag_its_index_carries(tmp_path, run_cli):
    # app is built on os:1's amd64 child; os:9, which app declares, was not indexed
    blobs = Blobs()
    amd64, arm64 = {"os": "linux", "architecture": "amd64"}, {"os": "linux", "architecture": "arm64"}
    children = [{**image(blobs, ["os-amd"]), "platform": amd64}, {**image(blobs, ["os-arm"]), "platform": arm64}]
    top = [named(blobs.index(children), f"{REG}/base/os:1")]
    for tag in (1, 9):
        labels = {BASE_NAME: f"{REG}/base/os:{tag}"}
        top.append(named(image(blobs, ["os-amd", f"app{tag}"], labels=labels), f"{REG}/team/app{tag}:1"))
    store = str(tmp_path / "store")
    index_into(run_cli, store, layout(tmp_path, "tagged-index", blobs, top))
    for tag, agreement in ((1, "AGREES"), (9, "NOT_INDEXED")):
        doc = answer(run_cli, store, "base", f"{REG}/team/app{tag}:1")
        assert [e["digest"] for e in doc["bases"]] == [children[0]["digest"]]
        assert doc["declaredBase"] == {"name": f"{REG}/base/os:{tag}", "agreement": agreement}
