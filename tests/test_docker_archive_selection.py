"""`docker-archive:PATH:IMAGE`: one image of a docker save, named as skopeo names it (`@N` or a tag).

skopeo, reading the same real archives, is the judge of which image a name selects."""

import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from builders import classic_save_files, write_tar
from conftest import REAL, ROOT, SAMPLES
from indexer.errors import SourceError
from indexer.references import Reference
from indexer.sources import DockerArchive, parse_source
from indexer.sources.docker_archive import parse_selection
from queries.cli import cli

CONTAINERD_NAME = "io.containerd.image.name"
ARCHIVES = ["docker-save-app.tar", "docker25-save-app.tar"]
# each real archive holds imgdex-test/app (four names) and imgdex-test/base, in that order
SELECTIONS = [
    "@0",
    "@1",
    "imgdex-test/app:1.0",
    "imgdex-test/app",
    "127.0.0.1:5000/team/app:v1",
    "imgdex-test/base:1.0",
]


def tar_members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isreg()}


def _index(source: str, store: str, *args: str):
    return CliRunner().invoke(cli, ["index", source, "--store", store, "--quiet", *args])


def _listed(store: str) -> list[dict]:
    listing = json.loads(CliRunner().invoke(cli, ["list", "--store", store, "--page-size", "1000"]).stdout)
    return sorted(listing.get("images", []), key=lambda d: d["id"])


def _skopeo_config_digest(source: str) -> str:
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        if os.environ.get("CI"):
            pytest.fail("skopeo is needed to judge which image a docker-archive name selects")
        pytest.skip("skopeo missing")
    raw = subprocess.run([skopeo, "inspect", "--raw", source], check=True, capture_output=True, timeout=60).stdout
    return json.loads(raw)["config"]["digest"]


@pytest.mark.parametrize("archive", ARCHIVES)
@pytest.mark.parametrize("selection", SELECTIONS)
def test_the_image_skopeo_selects_is_the_one_indexed(archive, selection, tmp_path):
    path = os.path.join(REAL, archive)
    config = _skopeo_config_digest(f"docker-archive:{path}:{selection}")
    whole, one = str(tmp_path / "whole"), str(tmp_path / "one")
    assert _index(path, whole).exit_code == 0
    result = _index(f"docker-archive:{path}:{selection}", one)
    assert result.exit_code == 0, result.output
    want = [doc for doc in _listed(whole) if doc["config"]["digest"] == config]
    assert want  # the image, under every name the archive gives it
    assert _listed(one) == want


@pytest.mark.parametrize("archive", ARCHIVES)
@pytest.mark.parametrize(
    "selection, reason",
    [
        ("@2", "manifest.json lists 2 images: there is no @2"),
        ("imgdex-test/nope", "manifest.json has no image tagged docker.io/imgdex-test/nope:latest"),
        ("imgdex-test/app:2.0", "manifest.json has no image tagged docker.io/imgdex-test/app:2.0"),
        ("@-1", "invalid image position '@-1': expected @N, N a number from 0"),
        ("@", "invalid image position '@': expected @N, N a number from 0"),
        ("UPPER", "invalid repository name in reference 'UPPER'"),
        ("imgdex-test/app@", "invalid digest in reference 'imgdex-test/app@'"),  # it selected the image
        (
            "imgdex-test/app@sha256:" + "0" * 64,
            "the image must be named by a tag, not a digest: 'imgdex-test/app@sha256:" + "0" * 64 + "'",
        ),
    ],
)
def test_a_name_that_selects_nothing_is_one_error_line(archive, selection, reason, tmp_path):
    path = os.path.join(REAL, archive)
    result = _index(f"docker-archive:{path}:{selection}", str(tmp_path))
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [f"imgdex: {path}: {reason}"]


def test_other_images_broken_are_not_asked_for(tmp_path):
    # A selection reads only its own image: a broken neighbour is no error of this run.
    files = classic_save_files([{"tags": ["a/one:1"], "layers": [b"one"]}, {"tags": ["a/two:1"], "layers": [b"two"]}])
    entries = json.loads(files["manifest.json"])
    del files[entries[1]["Config"]]
    archive = write_tar(str(tmp_path / "save.tar"), files)
    store = str(tmp_path / "store")
    assert _index(archive, store).exit_code == 1  # the whole archive has one broken image
    result = _index(f"docker-archive:{archive}:a/one:1", str(tmp_path / "one"))
    assert result.exit_code == 0 and result.stderr == ""
    assert [doc["name"] for doc in _listed(str(tmp_path / "one"))] == ["a/one"]
    result = _index(f"docker-archive:{archive}:@1", str(tmp_path / "two"))
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"imgdex: {archive}: config {entries[1]['Config']!r} is missing from the archive"
    ]


def test_a_docker25_selection_walks_only_what_reaches_its_image(tmp_path):
    # Without the base image's manifest blob, the whole archive has one failure; the app alone, none.
    with open(os.path.join(REAL, "docker25-save-app.tar"), "rb") as f:
        members = tar_members(f.read())
    index = json.loads(members["index.json"])
    [base] = [
        m["digest"] for m in index["manifests"] if m["annotations"][CONTAINERD_NAME] == "docker.io/imgdex-test/base:1.0"
    ]
    del members["blobs/" + base.replace(":", "/")]
    archive = write_tar(str(tmp_path / "save.tar"), members)
    assert _index(archive, str(tmp_path / "whole")).exit_code == 1
    result = _index(f"docker-archive:{archive}:imgdex-test/app:latest", str(tmp_path / "app"))
    assert result.exit_code == 0 and result.stderr == ""
    assert {doc["name"] for doc in _listed(str(tmp_path / "app"))} == {"imgdex-test/app", "mirror/app", "team/app"}


def test_a_docker25_selection_whose_config_is_missing_is_one_error(tmp_path):
    with open(os.path.join(REAL, "docker25-save-app.tar"), "rb") as f:
        members = tar_members(f.read())
    config = json.loads(members["manifest.json"])[1]["Config"]
    del members[config]
    archive = write_tar(str(tmp_path / "save.tar"), members)
    result = _index(f"docker-archive:{archive}:@1", str(tmp_path / "base"))
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [f"imgdex: {archive}: config {config!r} is missing from the archive"]
    result = _index(f"docker-archive:{archive}:@0", str(tmp_path / "app"))
    assert result.exit_code == 0 and result.stderr == ""


def test_the_first_entry_with_the_tag_is_taken(tmp_path):
    files = classic_save_files([{"tags": ["a/b:1"], "layers": [b"one"]}, {"tags": ["a/b:1"], "layers": [b"two"]}])
    archive = write_tar(str(tmp_path / "save.tar"), files)
    assert _index(f"docker-archive:{archive}:a/b:1", str(tmp_path / "s")).exit_code == 0
    assert [doc["config"]["digest"] for doc in _listed(str(tmp_path / "s"))] == [
        "sha256:" + json.loads(files["manifest.json"])[0]["Config"].removesuffix(".json")
    ]


def test_a_path_that_holds_a_colon_and_exists_is_taken_whole(tmp_path):
    archive = tmp_path / "app:1.0.tar"
    shutil.copyfile(os.path.join(REAL, "docker-save-app.tar"), archive)
    result = _index(f"docker-archive:{archive}", str(tmp_path / "s"))
    assert result.exit_code == 0, result.output
    assert len(_listed(str(tmp_path / "s"))) == 4
    assert parse_source(f"docker-archive:{tmp_path}/nosuch:1.0.tar") == DockerArchive(
        f"{tmp_path}/nosuch", Reference("docker.io", "library/1.0.tar", "latest")
    )


@pytest.mark.parametrize("transport, sample", [("oci:", "oci-layout"), ("oci-archive:", "oci-archive-app.tar")])
def test_a_layout_or_oci_archive_whose_path_holds_a_colon_is_taken_whole(tmp_path, transport, sample):
    from indexer.sources import OciArchive, OciLayout

    copied = tmp_path / f"app:{sample}"
    source = os.path.join(SAMPLES, sample)
    if os.path.isdir(source):
        shutil.copytree(source, copied)
    else:
        shutil.copyfile(source, copied)
    whole = _index(f"{transport}{copied}", str(tmp_path / "whole"))
    plain = _index(f"{transport}{source}", str(tmp_path / "plain"))
    assert whole.exit_code == plain.exit_code == 0, whole.output
    assert [i["digest"] for i in _listed(str(tmp_path / "whole"))] == [
        i["digest"] for i in _listed(str(tmp_path / "plain"))
    ]
    kind = OciLayout if transport == "oci:" else OciArchive
    assert parse_source(f"{transport}{tmp_path}/app:v1") == kind(f"{tmp_path}/app", "v1")


def test_standard_input_takes_a_selection(tmp_path):
    with open(os.path.join(REAL, "docker25-save-app.tar"), "rb") as archive:
        result = subprocess.run(
            [sys.executable, "-m", "queries.cli", "index", "docker-archive:-:@1", "--store", str(tmp_path)],
            stdin=archive,
            capture_output=True,
            cwd=ROOT,
            timeout=120,
        )
    assert result.returncode == 0, result.stderr.decode()
    assert [doc["name"] for doc in _listed(str(tmp_path))] == ["imgdex-test/base"]


@given(st.text(max_size=40))
def test_any_name_is_a_selection_or_a_source_error(text):
    try:
        selected = parse_selection(text, "x.tar")
    except SourceError as exc:
        assert str(exc).startswith("x.tar: ") and "\n" not in str(exc).replace("\\n", "")
        return
    if isinstance(selected, int):
        assert text == f"@{selected}"
    else:
        assert selected.tag and not selected.digest


@pytest.mark.parametrize("packing", ["tar", "gzip"])
def test_a_member_given_twice_is_read_as_tar_x_and_docker_load_read_it_the_last(tmp_path, packing):
    """`tar -rf` appends an updated manifest.json; extracting, as `docker load` does, keeps the last.
    (skopeo reads the first; the README says so.) Both ways of reading an archive agree."""
    with open(os.path.join(REAL, "docker-save-app.tar"), "rb") as f:
        members = tar_members(f.read())
    manifest = json.loads(members["manifest.json"])
    assert "imgdex-test/app:1.0" in manifest[0]["RepoTags"]
    renamed = [dict(manifest[0], RepoTags=["appended/app:2"]), *manifest[1:]]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in [*members.items(), ("manifest.json", json.dumps(renamed).encode())]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    data = buffer.getvalue()
    path = tmp_path / ("twice.tar" if packing == "tar" else "twice.tar.gz")
    path.write_bytes(data if packing == "tar" else gzip.compress(data))

    _index(str(path), str(tmp_path / "store"))
    names = sorted((image["name"], tuple(image.get("tags", ()))) for image in _listed(str(tmp_path / "store")))
    assert ("appended/app", ("2",)) in names
    assert not [name for name, _ in names if name == "imgdex-test/app"]
