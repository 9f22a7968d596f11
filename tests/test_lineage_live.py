"""Lineage against a real engine and a real registry, started privately (see services.py).

The engine builds the family itself: `docker import` of a tiny rootfs (root), a legacy build on
it (base), two builds on base (app1, app2) and one on app1 (app3), all named under the private
registry so that every source names them alike. They are pushed, saved with `docker save`, and
indexed from the engine (docker-daemon:), the registry (docker://) and the archive, each into
its own store and all into one. `base` and `derived` must give the same answer from every
source; the ChainIDs must be the ones the engine itself keeps in its layer database.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile

import pytest

from services import engine, registry, services_folder  # noqa: F401  (session fixtures)

pytestmark = pytest.mark.services

# The console script of the interpreter running the tests, never another `imgdex` on PATH.
_SCRIPT = os.path.join(os.path.dirname(sys.executable), "imgdex")
IMGDEX = [_SCRIPT] if os.access(_SCRIPT, os.X_OK) else [sys.executable, "-m", "queries.cli"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = ("engine", "registry", "archive")
ORDER = ("root", "base", "app1", "app2", "app3")
SHARED_LAYERS = {"root": 1, "base": 2, "app1": 3, "app2": 4, "app3": 4}


def imgdex(*args) -> subprocess.CompletedProcess:
    result = subprocess.run([*IMGDEX, *map(str, args)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return result


def answer(store: str, *args) -> dict:
    return json.loads(imgdex(*args, "--store", store).stdout)


def rootfs_tar(path: str, files: dict[str, bytes]) -> str:
    with tarfile.open(path, "w") as tar:
        for member, data in sorted(files.items()):
            info = tarfile.TarInfo(member)
            info.size, info.mode, info.mtime = len(data), 0o755, 1700000000
            tar.addfile(info, io.BytesIO(data))
    return path


def build(engine, folder: str, tag: str, dockerfile: str, files: dict, *build_args: str) -> None:  # noqa: F811
    os.makedirs(folder)
    for name, data in files.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
    with open(os.path.join(folder, "Dockerfile"), "w") as f:
        f.write(dockerfile)
    args = [arg for value in build_args for arg in ("--build-arg", value)]
    engine.docker("build", "--no-cache", *args, "-t", tag, folder)


@pytest.fixture(scope="module")
def family(engine, registry, tmp_path_factory):  # noqa: F811
    """The images, built, pushed and saved once; their references and what the engine says of them."""
    work = str(tmp_path_factory.mktemp("lineage-live"))
    reg = registry.address
    refs = {key: f"{reg}/lineage/{key}:1.0" for key in ORDER}
    engine.docker(
        "import", "-c", 'CMD ["/hello"]', rootfs_tar(os.path.join(work, "root.tar"), {"hello": b"root\n"}), refs["root"]
    )
    build(
        engine,
        os.path.join(work, "base"),
        refs["base"],
        f"FROM {refs['root']}\nENV BASE=1\nCOPY base.txt /base.txt\nLABEL org.example.role=base\n",
        {"base.txt": b"base layer\n"},
    )
    engine.docker("push", refs["base"])
    base_digest = next(d.split("@")[1] for d in inspect(engine, refs["base"])["RepoDigests"] if d.startswith(reg))
    build(
        engine,
        os.path.join(work, "app1"),
        refs["app1"],
        f"FROM {refs['base']}\nARG BASE_DIGEST\n"
        f"LABEL org.opencontainers.image.base.name={refs['base']} org.opencontainers.image.base.digest=$BASE_DIGEST\n"
        "COPY app1.txt /app1.txt\n",
        {"app1.txt": b"app one\n"},
        f"BASE_DIGEST={base_digest}",
    )
    build(
        engine,
        os.path.join(work, "app2"),
        refs["app2"],
        f"FROM {refs['base']}\nCOPY app2.txt /app2.txt\nENV APP=2\nCOPY more.txt /more.txt\n",
        {"app2.txt": b"app two\n", "more.txt": b"more\n"},
    )
    # app3 inherits app1's labels, so it declares base while it is built on app1
    build(
        engine,
        os.path.join(work, "app3"),
        refs["app3"],
        f"FROM {refs['app1']}\nCOPY app3.txt /app3.txt\n",
        {"app3.txt": b"app three\n"},
    )
    for key in ORDER:
        engine.docker("push", refs[key])
    archive = os.path.join(work, "family.tar")
    engine.docker("save", "-o", archive, *refs.values())
    return {
        "work": work,
        "registry": reg,
        "refs": refs,
        "archive": archive,
        "base_digest": base_digest,
        "inspect": {key: inspect(engine, ref) for key, ref in refs.items()},
    }


def inspect(engine, ref: str) -> dict:  # noqa: F811
    return json.loads(engine.docker("image", "inspect", ref))[0]


@pytest.fixture(scope="module")
def stores(engine, family, tmp_path_factory):  # noqa: F811
    """One store per source, and one with all three."""
    folder = str(tmp_path_factory.mktemp("lineage-stores"))
    sources = {
        "engine": ["--docker-host", engine.host, *(f"docker-daemon:{ref}" for ref in family["refs"].values())],
        "registry": [f"docker://{family['registry']}", "--repository-prefix", "lineage"],
        "archive": [f"docker-archive:{family['archive']}"],
    }
    out = {}
    for name, args in sources.items():
        out[name] = os.path.join(folder, name)
        result = imgdex("index", *args, "--store", out[name])
        assert result.stdout.startswith("indexed 5 images, 0 failed"), result.stdout
    out["all"] = os.path.join(folder, "all")
    for args in sources.values():
        imgdex("index", *args, "--store", out["all"])
    return out


def shape(doc: dict, key: str) -> list[tuple]:
    """What every source must agree on: ids and digests differ where a source knows no manifest."""
    return [(e["name"], tuple(e.get("tags", ())), e["sharedLayers"], e.get("totalLayers")) for e in doc.get(key, [])]


# ----------------------------------------------------------------------------- ChainIDs


def test_chain_ids_are_the_engines_own(engine, family, stores):  # noqa: F811
    """The engine keeps each layer stack under its ChainID in layerdb, with its diff_id and its parent."""
    layerdb = os.path.join(engine.folder, "root", "image", "vfs", "layerdb", "sha256")
    sql = "SELECT name, diff_ids, chain_ids FROM images ORDER BY name"
    lines = imgdex("sql", sql, "--store", stores["engine"], "--format", "json").stdout.splitlines()
    rows = [json.loads(line) for line in lines]
    assert len(rows) == len(ORDER)
    for row in rows:
        key = row["name"].split("/")[-1]
        assert row["diff_ids"] == family["inspect"][key]["RootFS"]["Layers"]
        assert len(row["chain_ids"]) == SHARED_LAYERS[key]
        parent = ""
        for diff_id, chain in zip(row["diff_ids"], row["chain_ids"], strict=True):
            folder = os.path.join(layerdb, chain.split(":")[1])
            with open(os.path.join(folder, "diff")) as f:
                assert f.read().strip() == diff_id
            if parent:
                with open(os.path.join(folder, "parent")) as f:
                    assert f.read().strip() == parent
            parent = chain


@pytest.mark.parametrize("source", SOURCES)
def test_every_source_stores_the_same_chains(stores, source):
    sql = "SELECT name, chain_ids FROM images ORDER BY name"
    want = imgdex("sql", sql, "--store", stores["engine"], "--format", "csv").stdout
    assert imgdex("sql", sql, "--store", stores[source], "--format", "csv").stdout == want


# ----------------------------------------------------------------------------- base and derived


EXPECTED_BASES = {
    "root": [],
    "base": [("root", 1)],
    "app1": [("base", 2)],
    "app2": [("base", 2)],
    "app3": [("app1", 3)],
}
EXPECTED_ALL_BASES = {
    "app1": [("base", 2), ("root", 1)],
    "app2": [("base", 2), ("root", 1)],
    "app3": [("app1", 3), ("base", 2), ("root", 1)],
}
EXPECTED_DERIVED = {"root": ["base"], "base": ["app1", "app2"], "app1": ["app3"], "app2": [], "app3": []}
EXPECTED_ALL_DERIVED = {"root": ["base", "app1", "app2", "app3"], "base": ["app1", "app2", "app3"]}


def bases_shape(key: str, expected: list[tuple[str, int]]) -> list[tuple]:
    return [(f"lineage/{b}", ("1.0",), shared, SHARED_LAYERS[key]) for b, shared in expected]


def derived_shape(key: str, expected: list[str]) -> list[tuple]:
    return [(f"lineage/{d}", ("1.0",), SHARED_LAYERS[key], None) for d in expected]


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("key", ORDER)
def test_base_from_every_source(family, stores, source, key):
    ref = family["refs"][key]
    assert shape(answer(stores[source], "base", ref), "bases") == bases_shape(key, EXPECTED_BASES[key])
    everything = EXPECTED_ALL_BASES.get(key, EXPECTED_BASES[key])
    assert shape(answer(stores[source], "base", ref, "--all"), "bases") == bases_shape(key, everything)


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("key", ORDER)
def test_derived_from_every_source(family, stores, source, key):
    ref = family["refs"][key]
    doc = answer(stores[source], "derived", ref)
    assert shape(doc, "images") == derived_shape(key, EXPECTED_DERIVED[key])
    if not EXPECTED_DERIVED[key]:
        assert doc == {}
    everything = EXPECTED_ALL_DERIVED.get(key, EXPECTED_DERIVED[key])
    assert shape(answer(stores[source], "derived", ref, "--all"), "images") == derived_shape(key, everything)


def test_registry_and_engine_give_the_same_resources(family, stores):
    # The engine knows each pushed image's manifest digest, so its records are the registry's.
    for key in ORDER:
        ref = family["refs"][key]
        for command in ("base", "derived"):
            assert answer(stores["engine"], command, ref, "--all") == answer(stores["registry"], command, ref, "--all")


def test_one_store_with_every_source_lists_each_resource_exact_first(family, stores):
    doc = answer(stores["all"], "base", family["refs"]["app3"])
    # app1 from the registry (merged with the engine's record of the same manifest), then the
    # classic docker save's record of the same image, which has no manifest digest
    assert [(e["name"], "digest" in e, e["sharedLayers"]) for e in doc["bases"]] == [
        ("lineage/app1", True, 3),
        ("lineage/app1", False, 3),
    ]
    registry_ids = [e["id"] for e in answer(stores["registry"], "base", family["refs"]["app3"])["bases"]]
    archive_ids = [e["id"] for e in answer(stores["archive"], "base", family["refs"]["app3"])["bases"]]
    assert [e["id"] for e in doc["bases"]] == registry_ids + archive_ids
    for key in ORDER:
        for command, field in (("base", "bases"), ("derived", "images")):
            single = shape(answer(stores["registry"], command, family["refs"][key], "--all"), field)
            combined = shape(answer(stores["all"], command, family["refs"][key], "--all"), field)
            # every image twice, manifest-keyed and from docker save; a tag names one of the two, the
            # one indexed last (the store's rule for tags), so tags are left out of the comparison
            untagged = [(name, shared, total) for name, _tags, shared, total in single]
            assert [(name, shared, total) for name, _tags, shared, total in combined] == [
                entry for entry in untagged for _ in range(2)
            ]
            assert sum(1 for entry in combined if entry[1]) == len(single)


# ----------------------------------------------------------------------------- declared bases


@pytest.mark.parametrize("source", SOURCES)
def test_declared_base_from_labels(family, stores, source):
    declared = {"name": family["refs"]["base"], "digest": family["base_digest"]}
    app1 = answer(stores[source], "base", family["refs"]["app1"])
    assert app1["declaredBase"] == {**declared, "agreement": "AGREES"}
    # inherited from app1: app3 is built on app1, whose base is base
    app3 = answer(stores[source], "base", family["refs"]["app3"])
    assert app3["declaredBase"] == {**declared, "agreement": "ANCESTOR"}
    assert "declaredBase" not in answer(stores[source], "base", family["refs"]["app2"])
