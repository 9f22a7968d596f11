"""`get NAME:TAG --platform …`: which child of a multi-platform index answers for it."""

from __future__ import annotations

import json
import os

import pytest
from builders import OCI_INDEX, Blobs, named, write_dir
from conftest import HERE

REG = "reg.example"


def _index(blobs: Blobs, children: list[tuple[dict, dict]]) -> dict:
    return blobs.index([{**child, "platform": platform} for child, platform in children])


def _store(tmp_path, run_cli, blobs: Blobs, top: list[dict]) -> str:
    layout = write_dir(str(tmp_path / "layout"), blobs.layout_files(top))
    store = str(tmp_path / "store")
    result = run_cli("index", layout, "--store", store)
    assert result.exit_code == 0, result.output
    return store


def _get(run_cli, store: str, query: str, *extra) -> dict:
    result = run_cli("get", query, "--store", store, *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


LINUX_AMD64 = {"os": "linux", "architecture": "amd64"}
LINUX_ARM64 = {"os": "linux", "architecture": "arm64"}


def test_a_child_shared_by_two_indexes_answers_for_both(tmp_path, run_cli):
    # A rebuild where arm64 did not change: both tags list the same arm64 manifest. Its record
    # can name one parent only, so each index must find its children from its own manifest.
    blobs = Blobs()
    amd1 = blobs.image(layers=(b"amd-1",))
    amd2 = blobs.image(layers=(b"amd-2",))
    arm = blobs.image(layers=(b"arm",), arch="arm64")
    top = [
        named(_index(blobs, [(amd1, LINUX_AMD64), (arm, LINUX_ARM64)]), f"{REG}/team/app:1"),
        named(_index(blobs, [(amd2, LINUX_AMD64), (arm, LINUX_ARM64)]), f"{REG}/team/app:2"),
    ]
    store = _store(tmp_path, run_cli, blobs, top)
    for tag, amd in (("1", amd1), ("2", amd2)):
        assert _get(run_cli, store, f"{REG}/team/app:{tag}")["digest"] == amd["digest"]
        assert _get(run_cli, store, f"{REG}/team/app:{tag}", "--platform", "linux/arm64")["digest"] == arm["digest"]


def test_a_nested_index_is_followed_to_its_manifests(tmp_path, run_cli):
    blobs = Blobs()
    amd = blobs.image(layers=(b"amd",))
    arm = blobs.image(layers=(b"arm",), arch="arm64")
    inner = _index(blobs, [(amd, LINUX_AMD64), (arm, LINUX_ARM64)])
    outer = blobs.index([inner])
    assert outer["mediaType"] == OCI_INDEX
    store = _store(tmp_path, run_cli, blobs, [named(outer, f"{REG}/team/nested:1")])
    assert _get(run_cli, store, f"{REG}/team/nested:1")["digest"] == amd["digest"]
    assert _get(run_cli, store, f"{REG}/team/nested:1", "--platform", "linux/arm64")["digest"] == arm["digest"]
    missing = run_cli("get", f"{REG}/team/nested:1", "--platform", "linux/s390x", "--store", store)
    assert missing.exit_code == 1 and "no manifest for platform linux/s390x" in missing.stderr


def test_an_index_without_known_children_answers_for_itself(tmp_path, run_cli):
    # YCR lists a multi-platform image as one image without config or layers, and its export
    # names none of its manifests: the index is all there is to answer with, as `yc` answers.
    source = os.path.join(HERE, "fixtures", "ycr", "image-list.json")
    store = str(tmp_path / "store")
    assert run_cli("index", f"ycr-json:{source}", "--store", store).exit_code == 0
    with open(source) as f:
        multi = next(d for d in json.load(f)["images"] if d["name"].endswith("/multi"))
    ref = f"cr.yandex/{multi['name']}:{multi['tags'][0]}"
    assert _get(run_cli, store, ref) == multi
    assert _get(run_cli, store, ref, "--platform", "linux/arm64") == multi
    assert _get(run_cli, store, f"cr.yandex/{multi['name']}@{multi['digest']}") == multi
    lineage = run_cli("base", ref, "--store", store)
    assert lineage.exit_code == 0 and lineage.stdout == "{}\n" and "is not an image" in lineage.stderr


@pytest.fixture
def arches(tmp_path, run_cli):
    """An index of amd64, arm64/v8, arm/v6 and arm/v7 (arm/v6 listed first), and one of arm/v6
    alone, whose arm64 child's descriptor calls it aarch64."""
    blobs = Blobs()
    children = {
        "amd64": blobs.image(layers=(b"amd64",)),
        "arm64": blobs.image(layers=(b"arm64",), arch="arm64"),
        "arm/v6": blobs.image(layers=(b"arm-v6",), arch="arm"),
        "arm/v7": blobs.image(layers=(b"arm-v7",), arch="arm"),
        "386": blobs.image(layers=(b"386",), arch="386"),
    }
    platforms = {
        "amd64": {"os": "linux", "architecture": "amd64"},
        "arm64": {"os": "linux", "architecture": "arm64", "variant": "v8"},
        "arm/v6": {"os": "linux", "architecture": "arm", "variant": "v6"},
        "arm/v7": {"os": "linux", "architecture": "arm", "variant": "v7"},
        "386": {"os": "linux", "architecture": "386"},
    }
    order = ["amd64", "arm/v6", "arm64", "arm/v7", "386"]
    top = [
        named(_index(blobs, [(children[k], platforms[k]) for k in order]), f"{REG}/team/arches:1"),
        named(
            _index(
                blobs,
                [
                    (children["arm/v6"], platforms["arm/v6"]),
                    (children["arm64"], {"os": "linux", "architecture": "aarch64"}),
                ],
            ),
            f"{REG}/team/arches:old",
        ),
    ]
    return _store(tmp_path, run_cli, blobs, top), {k: v["digest"] for k, v in children.items()}


@pytest.mark.parametrize(
    "asked, child",
    [
        ("linux/amd64", "amd64"),
        ("LINUX/AMD64", "amd64"),
        ("linux/x86_64", "amd64"),
        ("linux/x86-64", "amd64"),
        ("linux/amd64/v1", "amd64"),
        ("linux/arm64", "arm64"),
        ("linux/arm64/v8", "arm64"),
        ("linux/aarch64", "arm64"),
        ("linux/arm", "arm/v7"),
        ("linux/arm/7", "arm/v7"),
        ("linux/armhf", "arm/v7"),
        ("linux/arm/v6", "arm/v6"),
        ("linux/armel", "arm/v6"),
        ("linux/i386", "386"),
    ],
)
def test_platforms_are_matched_as_containerd_normalises_them(arches, run_cli, asked, child):
    store, digests = arches
    assert _get(run_cli, store, f"{REG}/team/arches:1", "--platform", asked)["digest"] == digests[child]


@pytest.mark.parametrize(
    "asked, child",
    [("linux/arm64", "arm64"), ("linux/arm64/v8", "arm64"), ("linux/arm", "arm/v6"), ("linux/arm/v7", "arm/v6")],
)
def test_stored_platforms_are_normalised_and_arm_falls_back_to_older_variants(arches, run_cli, asked, child):
    # A v7 machine runs v6 code, so an index with arm/v6 alone answers for linux/arm, as docker does
    store, digests = arches
    assert _get(run_cli, store, f"{REG}/team/arches:old", "--platform", asked)["digest"] == digests[child]
    missing = run_cli("get", f"{REG}/team/arches:old", "--platform", "linux/arm/v5", "--store", store)
    assert missing.exit_code == 1 and "no manifest for platform linux/arm/v5" in missing.stderr


def test_an_amd64_level_falls_back_to_the_older_levels_nearest_first(tmp_path, run_cli):
    # containerd's platforms.Only: an x86-64-v3 machine runs v2 and plain amd64 code, not v4's. The
    # variant was compared as it is, so linux/amd64/v3 found nothing in an index of v2 and v4.
    blobs = Blobs()
    children = {level: blobs.image(layers=(level.encode(),)) for level in ("v4", "", "v2")}
    top = [
        named(
            _index(blobs, [(children[level], {**LINUX_AMD64, "variant": level}) for level in children]),
            f"{REG}/team/levels:1",
        ),
        named(_index(blobs, [(children[""], LINUX_AMD64)]), f"{REG}/team/levels:plain"),
    ]
    store = _store(tmp_path, run_cli, blobs, top)
    for asked, child in [
        ("linux/amd64", ""),
        ("linux/amd64/v1", ""),
        ("linux/amd64/v2", "v2"),
        ("linux/amd64/v3", "v2"),
        ("linux/amd64/V4", "v4"),
        ("linux/amd64/v9", "v4"),
    ]:
        assert _get(run_cli, store, f"{REG}/team/levels:1", "--platform", asked)["digest"] == children[child]["digest"]
    assert (
        _get(run_cli, store, f"{REG}/team/levels:plain", "--platform", "linux/amd64/v3")["digest"]
        == children[""]["digest"]
    )
    for asked in ("linux/amd64/v3x", "linux/amd64/v99999999999"):
        missing = run_cli("get", f"{REG}/team/levels:1", "--platform", asked, "--store", store)
        assert missing.exit_code == 1 and f"no manifest for platform {asked}" in missing.stderr
