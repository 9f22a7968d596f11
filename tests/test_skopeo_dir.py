"""`dir:DIR`, skopeo's directory transport: the real fixtures copied by skopeo itself, indexed as
the same images their archives hold, detected as a bare path and inside a folder, and refused
in one line when a file is missing, altered, special or a link out of the directory."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import REAL, need_skopeo
from indexer.errors import SourceError
from indexer.sources import SkopeoDir, parse_source
from indexer.sources.skopeo_dir import is_skopeo_dir, synced_name
from services import registry, services_folder  # noqa: F401  (session fixtures)
from test_badinput import error_lines, invoke, sql_rows

APP = os.path.join(REAL, "oci-archive-app.tar")
MULTIARCH = os.path.join(REAL, "oci-archive-base-multiarch.tar")
CLASSIC = os.path.join(REAL, "docker-save-app.tar")
REPOSITORY = "mirror/app"
# What two sources of one image must agree on in its Image.Get answer: all but what names it.
SAME = ("digest", "compressedSize", "config", "layers", "createdAt")


def _skopeo() -> str:
    return need_skopeo("write the dir: copies these tests read")


@pytest.fixture(scope="session")
def copies(tmp_path_factory) -> dict[str, str]:
    """dir: copies written by skopeo: one image of an OCI archive, every image of a multi-arch one
    (`--all`), and one image of a classic docker save (which skopeo gives a schema 2 manifest)."""
    skopeo = _skopeo()
    root = tmp_path_factory.mktemp("skopeo-dir")
    made = {}
    for name, source, extra in (
        ("app", f"oci-archive:{APP}", []),
        ("multiarch", f"oci-archive:{MULTIARCH}", ["--all"]),
        ("classic", f"docker-archive:{CLASSIC}:@0", []),
        ("schema1", f"oci-archive:{APP}", ["--format", "v2s1"]),  # signed with a key of the copy's own
    ):
        target = str(root / name)
        env = dict(os.environ, TMPDIR=str(tmp_path_factory.mktemp("skopeo-tmp")))
        subprocess.run(
            [skopeo, "--insecure-policy", "copy", "-q", *extra, source, f"dir:{target}"],
            check=True,
            capture_output=True,
            timeout=120,
            env=env,
        )
        made[name] = target
    return made


def _copy(copies: dict[str, str], name: str, tmp_path) -> str:
    target = str(tmp_path / name)
    shutil.copytree(copies[name], target)
    return target


def _images(store: str) -> list[dict]:
    out = invoke("list", "--store", store, "--page-size", "1000")
    assert out.code == 0, out.stderr
    return sorted(json.loads(out.stdout).get("images", []), key=lambda doc: (doc.get("digest", ""), doc["id"]))


def _index(store: str, *sources: str, code: int = 0) -> str:
    out = invoke("index", *sources, "--store", store, "--repository", REPOSITORY)
    assert out.code == code, out.stderr
    return out.stderr


def _skopeo_raw(source: str) -> bytes:
    return subprocess.run([_skopeo(), "inspect", "--raw", source], check=True, capture_output=True, timeout=60).stdout


def _same(doc: dict) -> dict:
    return {key: doc.get(key) for key in SAME}


@pytest.mark.parametrize("name, archive", [("app", APP), ("multiarch", MULTIARCH)])
def test_a_copy_is_the_images_of_its_archive(copies, name, archive, tmp_path):
    from_dir, from_archive = str(tmp_path / "dir"), str(tmp_path / "archive")
    _index(from_dir, f"dir:{copies[name]}")
    _index(from_archive, archive)
    got, want = _images(from_dir), _images(from_archive)
    assert got and [_same(doc) for doc in got] == [_same(doc) for doc in want]
    # The directory names no image: the records take --repository, as an unnamed layout's do.
    assert {doc["name"] for doc in got} == {REPOSITORY}
    # The top manifest's digest is the one skopeo reports for the directory.
    top = "sha256:" + hashlib.sha256(_skopeo_raw(f"dir:{copies[name]}")).hexdigest()
    rows = sql_rows(from_dir, "SELECT digest, kind, parent_digest, source_kind, source_path FROM images")
    assert {row["source_kind"] for row in rows} == {"dir"}
    assert {row["source_path"] for row in rows} == {copies[name]}
    tops = [row for row in rows if not row["parent_digest"]]
    assert [row["digest"] for row in tops] == [top]
    if name == "multiarch":  # the index, and each image it lists, read from HEX.manifest.json
        assert tops[0]["kind"] == "index"
        assert len(rows) == 3 and all(row["parent_digest"] == top for row in rows if row is not tops[0])


def test_a_converted_copy_keeps_the_config(copies, tmp_path):
    """skopeo gives a docker save's image a manifest of its own: the config is the archive's."""
    from_dir, from_archive = str(tmp_path / "dir"), str(tmp_path / "archive")
    _index(from_dir, f"dir:{copies['classic']}")
    _index(from_archive, f"docker-archive:{CLASSIC}:@0")
    (got,), wanted = _images(from_dir), _images(from_archive)  # the archive names it four times
    manifest = json.loads(_skopeo_raw(f"dir:{copies['classic']}"))
    assert manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert got["digest"] == _top(copies["classic"])
    assert {(want["config"]["digest"], want["createdAt"]) for want in wanted} == {
        (manifest["config"]["digest"], got["createdAt"])
    }
    assert got["config"]["digest"] == manifest["config"]["digest"]
    assert [layer["digest"] for layer in got["layers"]] == [layer["digest"] for layer in manifest["layers"]]


def test_a_schema1_copy_is_named_by_its_payload(copies, tmp_path):
    """skopeo names a signed schema1 manifest by its payload, without the signatures, as registries do."""
    from_dir, from_archive = str(tmp_path / "dir"), str(tmp_path / "archive")
    _index(from_dir, f"dir:{copies['schema1']}", "--verify")
    _index(from_archive, APP)
    (got,), (want,) = _images(from_dir), _images(from_archive)
    inspected = json.loads(
        subprocess.run(
            [_skopeo(), "inspect", f"dir:{copies['schema1']}"], check=True, capture_output=True, timeout=60
        ).stdout
    )
    assert got["digest"] == inspected["Digest"] != _top(copies["schema1"])
    assert b'"signatures"' in open(os.path.join(copies["schema1"], "manifest.json"), "rb").read()
    # The same layer blobs, without the empty ones schema1 lists for steps that made no layer.
    assert got["layers"] == want["layers"] and got["compressedSize"] == want["compressedSize"]
    assert got["createdAt"] == want["createdAt"] and "config" not in got
    rows = sql_rows(from_dir, "SELECT media_type, exactness FROM images")
    assert rows[0]["media_type"] == "application/vnd.docker.distribution.manifest.v1+prettyjws"


def test_a_schema1_copy_checks_its_layers(copies, tmp_path):
    folder = _copy(copies, "schema1", tmp_path)
    layer = _images_of(f"dir:{folder}", tmp_path / "first")[0]["layers"][0]["digest"]
    path = os.path.join(folder, layer.split(":")[1])
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(bytes([data[0] ^ 1]) + data[1:])
    (line,) = error_lines(_index(str(tmp_path / "verify"), f"dir:{folder}", "--verify", code=1))
    assert line.startswith(f"imgdex: {folder}: manifest sha256:") and f"layer {layer} content hashes to" in line
    os.remove(path)
    (line,) = error_lines(_index(str(tmp_path / "missing"), f"dir:{folder}", code=1))
    assert line.startswith(f"imgdex: {folder}: manifest sha256:") and line.endswith(f"layer {layer} is missing")


def _images_of(source: str, store) -> list[dict]:
    _index(str(store), source)
    return _images(str(store))


def test_a_bare_path_is_detected(copies, tmp_path):
    assert is_skopeo_dir(copies["app"])
    assert isinstance(parse_source(copies["app"]), SkopeoDir)
    bare, named = str(tmp_path / "bare"), str(tmp_path / "named")
    _index(bare, copies["app"])
    _index(named, f"dir:{copies['app']}")
    assert _images(bare) == _images(named)


def test_a_version_file_that_says_otherwise_is_no_copy(copies, tmp_path):
    folder = _copy(copies, "app", tmp_path)
    with open(os.path.join(folder, "version"), "w") as f:
        f.write("something else\n")
    assert not is_skopeo_dir(folder)
    os.remove(os.path.join(folder, "version"))
    assert not is_skopeo_dir(folder)
    os.mkfifo(os.path.join(folder, "version"))  # never opened for a blocking read: no writer comes
    assert not is_skopeo_dir(folder)


def test_a_folder_indexes_the_copies_below_it(copies, tmp_path):
    folder = tmp_path / "exports"
    shutil.copytree(copies["app"], folder / "one")
    shutil.copytree(copies["multiarch"], folder / "nested" / "two")
    shutil.copy(CLASSIC, folder / "three.tar")
    store = str(tmp_path / "store")
    stderr = _index(store, str(folder))
    assert "note:" not in stderr  # no file of a copy is tried as an archive
    rows = sql_rows(store, "SELECT DISTINCT source_kind, source_path FROM images ORDER BY source_path")
    assert [(row["source_kind"], os.path.relpath(row["source_path"], folder)) for row in rows] == [
        ("dir", os.path.join("nested", "two")),
        ("dir", "one"),
        ("docker-archive", "three.tar"),
    ]


def test_shards_take_the_copy_once(copies, tmp_path):
    taken = []
    for shard in ("1/2", "2/2"):
        store = str(tmp_path / shard.replace("/", "-"))
        out = invoke("index", f"dir:{copies['multiarch']}", "--store", store, "--shard", shard, "--quiet")
        assert out.code == 0, out.stderr
        taken.append(len(_images(store)) if os.path.isdir(store) else 0)
    assert sorted(taken) == [0, 3]


def test_verify_hashes_the_layers(copies, tmp_path):
    folder = _copy(copies, "app", tmp_path)
    _index(str(tmp_path / "good"), f"dir:{folder}", "--verify")
    layer = json.loads(_skopeo_raw(f"dir:{folder}"))["layers"][0]["digest"]
    path = os.path.join(folder, layer.split(":")[1])
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(bytes([data[0] ^ 1]) + data[1:])  # same size: only --verify can tell
    _index(str(tmp_path / "plain"), f"dir:{folder}")
    stderr = _index(str(tmp_path / "bad"), f"dir:{folder}", "--verify", code=1)
    assert error_lines(stderr) == [
        f"imgdex: {folder}: manifest {_top(folder)}: layer {layer} content hashes to "
        f"sha256:{hashlib.sha256(bytes([data[0] ^ 1]) + data[1:]).hexdigest()}"
    ]


def _top(folder: str) -> str:
    with open(os.path.join(folder, "manifest.json"), "rb") as f:
        return "sha256:" + hashlib.sha256(f.read()).hexdigest()


def _config_file(folder: str) -> str:
    with open(os.path.join(folder, "manifest.json"), "rb") as f:
        return os.path.join(folder, json.loads(f.read())["config"]["digest"].split(":")[1])


def _missing_config(folder):
    os.remove(_config_file(folder))
    return f"{_config_file(folder)}: blob is missing"


def _altered_config(folder):
    path = _config_file(folder)
    with open(path, "ab") as f:
        f.write(b" ")
    return f"{folder}: manifest {_top(folder)} config digest mismatch"


def _fifo_manifest(folder):
    path = os.path.join(folder, "manifest.json")
    os.remove(path)
    os.mkfifo(path)  # never opened for a blocking read: no writer would ever come
    return f"{path}: manifest.json is not a regular file (named pipe)"


def _manifest_out(folder):
    path = os.path.join(folder, "manifest.json")
    os.remove(path)
    os.symlink(APP, path)
    return f"{path}: manifest.json is a symlink that points outside the directory"


def _config_out(folder):
    path = _config_file(folder)
    os.remove(path)
    os.symlink(APP, path)
    return f"{path}: blob is a symlink that points outside the directory"


def _no_manifest(folder):
    os.remove(os.path.join(folder, "manifest.json"))
    return f"{folder}: directory is not a dir: image (no manifest.json)"


def _docker_save_manifest(folder):
    path = os.path.join(folder, "manifest.json")
    with open(path, "w") as f:
        f.write(' [{"Config": "x.json", "RepoTags": ["app:1"], "Layers": []}]')
    return f"{path}: a list of images, as a docker save's is, not a dir: manifest"


def _manifest_too_large(folder):
    from indexer.sources.parse import MAX_JSON_BYTES

    with open(os.path.join(folder, "manifest.json"), "ab") as f:
        f.truncate(MAX_JSON_BYTES + 1)
    return f"{os.path.join(folder, 'manifest.json')}: manifest.json is {MAX_JSON_BYTES + 1} bytes, over the"


@pytest.mark.parametrize(
    "damage",
    [
        _missing_config,
        _altered_config,
        _fifo_manifest,
        _manifest_out,
        _config_out,
        _no_manifest,
        _manifest_too_large,
        _docker_save_manifest,
    ],
)
def test_a_broken_copy_is_one_line_and_the_others_land(copies, damage, tmp_path):
    broken = _copy(copies, "app", tmp_path)
    expected = damage(broken)
    store = str(tmp_path / "store")
    stderr = _index(store, f"dir:{broken}", f"dir:{copies['multiarch']}", code=1)
    (line,) = error_lines(stderr)
    assert line.startswith(f"imgdex: {expected}"), line
    assert "Traceback" not in stderr
    assert len(_images(store)) == 3  # the multi-arch copy's index and its two images


def test_an_index_only_copy_lands_its_index(copies, tmp_path):
    """`skopeo copy --multi-arch index-only` leaves the images out: each is a note, as in a layout."""
    folder = _copy(copies, "multiarch", tmp_path)
    for name in os.listdir(folder):
        if name.endswith(".manifest.json"):
            os.remove(os.path.join(folder, name))
    store = str(tmp_path / "store")
    stderr = _index(store, f"dir:{folder}")
    assert stderr.count("is not in the source; skipped") == 2
    assert [row["kind"] for row in sql_rows(store, "SELECT kind FROM images")] == ["index"]


@pytest.mark.parametrize("spec, message", [("dir:", "dir: no directory given"), ("dir:/nonexistent", None)])
def test_a_name_that_is_no_directory(spec, message):
    source = parse_source(spec)
    with pytest.raises(SourceError) as caught:
        list(source.records(_context(source)))
    assert str(caught.value) == (message or "/nonexistent: no such file or directory")


def _context(source):
    from indexer.sources.parse import Context

    return Context(source.kind, source.location)


def test_jobs_give_each_copy_whole_to_one_process(copies, tmp_path, monkeypatch):
    from indexer import workers

    monkeypatch.setattr(workers, "MIN_WORK", 0)  # three images are far below what a worker pays for
    specs = [f"dir:{copies['app']}", copies["multiarch"], f"dir:{copies['classic']}"]
    work = workers.plan(specs, jobs=2)
    assert sorted(task.spec for share in work.shares for task in share) == sorted(specs)
    assert all(task.shard is None for share in work.shares for task in share)
    assert all(work.shares)  # both processes have a copy to read
    stores = []
    for jobs in ("1", "2"):
        store = str(tmp_path / f"jobs{jobs}")
        out = invoke("index", *specs, "--store", store, "--repository", REPOSITORY, "--jobs", jobs)
        assert out.code == 0, out.stderr
        assert out.stdout.startswith("indexed 5 images, 0 failed")
        stores.append(_images(store))
    assert stores[0] == stores[1] and len(stores[0]) == 5


def test_an_instance_manifest_is_named_in_its_errors(copies, tmp_path):
    """A manifest an index lists is refused under its own name, not as a blob."""
    folder = _copy(copies, "multiarch", tmp_path)
    instance = sorted(name for name in os.listdir(folder) if name.endswith(".manifest.json"))[0]
    path = os.path.join(folder, instance)
    os.remove(path)
    os.symlink(APP, path)
    (line,) = error_lines(_index(str(tmp_path / "linked"), f"dir:{folder}", code=1))
    assert line == f"imgdex: {path}: {instance} is a symlink that points outside the directory"
    os.remove(path)
    with open(path, "wb") as f:
        f.truncate(8 * 1024 * 1024 + 1)
    (line,) = error_lines(_index(str(tmp_path / "large"), f"dir:{folder}", code=1))
    assert line.startswith(f"imgdex: {path}: {instance} is {8 * 1024 * 1024 + 1} bytes, over the")


# ----------------------------------------------------------------------------- skopeo sync --dest dir


def _run_skopeo(*args: str, tmp_path) -> None:
    subprocess.run(
        [_skopeo(), "--insecure-policy", *args],
        check=True,
        capture_output=True,
        timeout=300,
        env=dict(os.environ, TMPDIR=str(tmp_path)),
    )


@pytest.fixture(scope="module")
def synced(registry, tmp_path_factory) -> dict[str, str]:  # noqa: F811
    """A registry's repositories mirrored by `skopeo sync --dest dir`, with and without --scoped:
    team/app tagged v1 and v2 (one image), base:1 a multi-arch index with its images."""
    work = tmp_path_factory.mktemp("sync")
    host = registry.address
    for source, ref, extra in (
        (f"oci-archive:{APP}", "team/app:v1", []),
        (f"oci-archive:{APP}", "team/app:v2", []),
        (f"oci-archive:{MULTIARCH}", "base:1", ["--all"]),
    ):
        _run_skopeo("copy", "-q", *extra, "--dest-tls-verify=false", source, f"docker://{host}/{ref}", tmp_path=work)
    made = {}
    for kind, scoped in (("scoped", ["--scoped"]), ("plain", [])):
        made[kind] = str(work / kind)
        for repository in ("team/app", "base"):
            _run_skopeo(
                "sync", "--all", *scoped, "--src", "docker", "--dest", "dir", "--src-tls-verify=false",
                f"{host}/{repository}", made[kind], tmp_path=work,
            )  # fmt: skip
    return made


def _plain_images(store: str, *sources: str) -> list[dict]:
    out = invoke("index", *sources, "--store", store)
    assert out.code == 0, out.stderr
    return _images(store)


@pytest.mark.services
def test_a_scoped_sync_is_named_as_the_registry_it_mirrors(synced, registry, tmp_path):  # noqa: F811
    host = registry.address
    assert os.path.isdir(os.path.join(synced["scoped"], host, "team", "app:v1"))
    mirrored = _plain_images(str(tmp_path / "mirror"), synced["scoped"])
    crawled = _plain_images(str(tmp_path / "crawl"), f"docker://{host}", "--insecure-registry", host)
    # Every Image.Get answer of the mirror is the registry's own: ids, names, tags, digests.
    assert mirrored == crawled
    tagged = sorted((doc["name"], doc["tags"]) for doc in mirrored if doc.get("tags"))
    assert tagged == [("base", ["1"]), ("team/app", ["v1", "v2"])]
    assert len(mirrored) == 4  # base's two platform images, untagged, beside its index
    rows = sql_rows(str(tmp_path / "mirror"), "SELECT DISTINCT registry FROM images")
    assert rows == [{"registry": host}]


@pytest.mark.services
def test_an_unscoped_sync_or_a_path_that_names_another_manifest_names_nothing(synced, registry, tmp_path):  # noqa: F811
    # Without --scoped the path gives no registry: the copies land unnamed.
    assert sorted(os.listdir(synced["plain"])) == ["app:v1", "app:v2", "base:1"]
    assert {doc.get("name", "") for doc in _plain_images(str(tmp_path / "plain"), synced["plain"])} == {""}
    # A digest in the path must be the copy's own manifest's.
    folder = str(tmp_path / "mirror")
    shutil.copytree(synced["scoped"], folder)
    app = os.path.join(folder, registry.address, "team")
    other = "sha256:" + "0" * 64
    os.rename(os.path.join(app, "app:v2"), os.path.join(app, f"app@{other}"))
    out = invoke("index", folder, "--store", str(tmp_path / "store"))
    assert out.code == 0, out.stderr
    assert error_lines(out.stderr) == []
    assert f"ignoring the name '{registry.address}/team/app@{other}' its path gives" in out.stderr
    tagged = sorted((doc.get("name", ""), doc.get("tags", [])) for doc in _images(str(tmp_path / "store")))
    assert ("team/app", ["v1"]) in tagged


@pytest.mark.parametrize(
    "path, name",
    [
        ("quay.io/libpod/busybox:latest", "quay.io/libpod/busybox:latest"),
        ("127.0.0.1:5000/team/app:v1", "127.0.0.1:5000/team/app:v1"),
        ("localhost/app:1", "localhost/app:1"),
        ("docker.io/library/busybox:1", "docker.io/library/busybox:1"),
        ("docker.io/busybox:1", "docker.io/library/busybox:1"),
        (f"r.example/app@sha256:{'a' * 64}", f"r.example/app@sha256:{'a' * 64}"),
        ("busybox:latest", None),  # sync without --scoped: no registry
        ("team/app:v1", None),  # a path, not a host, first
        ("Mirror/app:v1", None),  # a folder in another case is no host here
        ("quay.io/libpod/busybox", None),  # no tag: not what sync writes
        ("mirror.d/quay.io/app:1:x", None),  # not a reference
        ("quay.io", None),
    ],
)
def test_a_synced_path_names_its_copy_only_when_it_is_a_full_reference(path, name):
    found = synced_name(path.split("/"))
    assert (str(found) if found else None) == name


@given(st.lists(st.text(alphabet="abc.:@/-_0123456789ABCsha", max_size=12), min_size=1, max_size=5))
def test_any_path_gives_a_reference_with_a_host_or_none(parts):
    found = synced_name(parts)
    if found is not None:
        assert found.registry == parts[0] or parts[0] == "docker.io"
        assert found.tag or found.digest
