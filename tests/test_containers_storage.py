"""`containers-storage:`, podman's and buildah's local image store: a real store written by skopeo
(the vfs driver, in a temporary root), read from its files. Each image is the image of the archive
it was copied from, named as the store names it; REF selects images as skopeo does; a bare graph
root is detected; damage to the store's files fails one image or the source in one line."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import REAL, need_skopeo
from indexer.errors import SourceError
from indexer.sources import tomlfile
from indexer.sources import ContainersStorage, parse_source
from indexer.sources.containers_storage import big_data_file, is_storage_root, parse_spec
from test_badinput import error_lines, invoke, sql_rows

APP = os.path.join(REAL, "oci-archive-app.tar")
MULTIARCH = os.path.join(REAL, "oci-archive-base-multiarch.tar")
CLASSIC = os.path.join(REAL, "docker-save-app.tar")
SAME = ("digest", "compressedSize", "config", "layers", "createdAt")


def _skopeo() -> str:
    return need_skopeo("write the containers-storage store these tests read")


def _spec(root: str) -> str:
    return f"containers-storage:[vfs@{root}+{root}-run]"


@pytest.fixture(scope="session")
def store_root(tmp_path_factory) -> str:
    """A vfs store written by skopeo: one image of an OCI archive under two names, the amd64 and
    arm64 images of a multi-arch archive (each copied through its index), and one image of a
    classic docker save."""
    skopeo = _skopeo()
    root = str(tmp_path_factory.mktemp("containers-storage") / "root")
    env = dict(os.environ, TMPDIR=str(tmp_path_factory.mktemp("skopeo-tmp")))
    for source, name, extra in (
        (f"oci-archive:{APP}", "localhost/app:1", []),
        (f"oci-archive:{MULTIARCH}", "localhost/base:amd64", ["--override-arch", "amd64"]),
        (f"oci-archive:{MULTIARCH}", "localhost/base:arm64", ["--override-arch", "arm64"]),
        (f"docker-archive:{CLASSIC}:@0", "localhost/classic:1", []),
    ):
        subprocess.run(
            [skopeo, "--insecure-policy", *extra, "copy", "-q", source, _spec(root) + name],
            check=True,
            capture_output=True,
            timeout=120,
            env=env,
        )
    # A second name for the same image: the store adds it to the image it holds (the same id).
    subprocess.run(
        [skopeo, "--insecure-policy", "copy", "-q", f"oci-archive:{APP}", _spec(root) + "cr.example.com/team/app:v1"],
        check=True,
        capture_output=True,
        timeout=120,
        env=env,
    )
    return root


def _copy(root: str, tmp_path) -> str:
    target = str(tmp_path / "root")
    shutil.copytree(root, target, symlinks=True)
    return target


def _index(store, *sources: str, code: int = 0) -> str:
    out = invoke("index", *sources, "--store", str(store))
    assert out.code == code, out.stderr
    return out.stderr


def _images(store) -> list[dict]:
    out = invoke("list", "--store", str(store), "--page-size", "1000")
    assert out.code == 0, out.stderr
    return sorted(
        json.loads(out.stdout).get("images", []),
        key=lambda doc: (doc.get("name", ""), doc.get("tags", []), doc.get("digest", "")),
    )


def _raw(source: str) -> bytes:
    return subprocess.run([_skopeo(), "inspect", "--raw", source], check=True, capture_output=True, timeout=60).stdout


def _entries(root: str) -> list[dict]:
    with open(os.path.join(root, "vfs-images", "images.json"), "rb") as f:
        return json.load(f)


def _by_name(root: str, name: str) -> dict:
    return next(entry for entry in _entries(root) if name in entry.get("names", []))


def test_each_image_is_named_as_the_store_names_it(store_root, tmp_path):
    _index(tmp_path, _spec(store_root))
    got = [(doc["name"], doc.get("tags")) for doc in _images(tmp_path)]
    assert got == [
        ("app", ["1"]),
        ("base", ["amd64"]),
        ("base", ["arm64"]),
        ("classic", ["1"]),
        ("team/app", ["v1"]),
    ]
    rows = sql_rows(str(tmp_path), "SELECT DISTINCT registry, source_kind, source_path FROM images ORDER BY registry")
    assert rows == [
        {"registry": "cr.example.com", "source_kind": "containers-storage", "source_path": store_root},
        {"registry": "localhost", "source_kind": "containers-storage", "source_path": store_root},
    ]


@pytest.mark.parametrize(
    "name, archive, platform",
    [
        ("localhost/app:1", APP, None),
        ("localhost/base:arm64", MULTIARCH, "arm64"),
        ("localhost/base:amd64", MULTIARCH, "amd64"),
    ],
)
def test_an_image_is_the_image_of_its_archive(store_root, name, archive, platform, tmp_path):
    _index(tmp_path / "storage", _spec(store_root) + name)
    _index(tmp_path / "archive", archive)
    got = _images(tmp_path / "storage")  # the app has two names: a record in each repository
    wanted = _images(tmp_path / "archive")
    if platform is not None:  # the archive's index and both images: the one of that platform
        rows = sql_rows(
            str(tmp_path / "archive"), f"SELECT digest FROM images WHERE platform_architecture = '{platform}'"
        )
        wanted = [doc for doc in wanted if doc["digest"] == rows[0]["digest"]]
    assert [{key: doc.get(key) for key in SAME} for doc in got] == [{key: wanted[0].get(key) for key in SAME}] * len(
        got
    )
    # The digest is the one skopeo reports for the stored image: that of its own manifest.
    assert got[0]["digest"] == "sha256:" + hashlib.sha256(_raw(_spec(store_root) + name)).hexdigest()


def test_a_converted_image_keeps_the_config(store_root, tmp_path):
    """skopeo gives a docker save's image a manifest of its own: the config is the archive's."""
    _index(tmp_path / "storage", _spec(store_root) + "localhost/classic:1")
    _index(tmp_path / "archive", f"docker-archive:{CLASSIC}:@0")
    (got,), wanted = _images(tmp_path / "storage"), _images(tmp_path / "archive")
    assert {(doc["config"]["digest"], doc["createdAt"]) for doc in wanted} == {
        (got["config"]["digest"], got["createdAt"])
    }
    manifest = json.loads(_raw(_spec(store_root) + "localhost/classic:1"))
    assert [layer["digest"] for layer in got["layers"]] == [layer["digest"] for layer in manifest["layers"]]


def test_ref_selects_by_name_id_or_prefix(store_root, tmp_path):
    entry = _by_name(store_root, "localhost/app:1")
    for number, ref in enumerate(("localhost/app:1", "cr.example.com/team/app:v1", entry["id"], entry["id"][:12])):
        store = tmp_path / str(number)
        _index(store, _spec(store_root) + ref)
        # The image, under every name the store gives it.
        assert [(doc["name"], doc["tags"]) for doc in _images(store)] == [("app", ["1"]), ("team/app", ["v1"])]
    digest = "sha256:" + hashlib.sha256(_raw(_spec(store_root) + "localhost/app:1")).hexdigest()
    _index(tmp_path / "digest", _spec(store_root) + f"localhost/app@{digest}")
    assert {doc["digest"] for doc in _images(tmp_path / "digest")} == {digest}


@pytest.mark.parametrize(
    "ref, reason",
    [
        ("localhost/app:2", "no such image in the store"),
        # docker.io/library/app:1, as skopeo reads it; podman would look in localhost/ too
        ("app:1", "no such image in the store (it holds localhost/app:1: name it so)"),
        ("base", "no such image in the store"),  # localhost/base:latest is no image either
        ("team/app:v1", "no such image in the store"),  # the host is cr.example.com, not localhost
        ("x/../y", "'x/../y' is not an image reference or ID"),
    ],
)
def test_a_ref_that_names_nothing_is_one_line(store_root, ref, reason, tmp_path):
    (line,) = error_lines(_index(tmp_path, _spec(store_root) + ref, code=1))
    assert line == f"imgdex: {_spec(store_root)}{ref}: {reason}"


def test_the_store_of_storage_conf_is_the_default(store_root, tmp_path, monkeypatch):
    conf = tmp_path / "storage.conf"
    conf.write_text(f'[storage]\ndriver = "vfs"\ngraphroot = "{store_root}"\nrootless_storage_path = "{store_root}"\n')
    monkeypatch.setenv("CONTAINERS_STORAGE_CONF", str(conf))
    source = parse_source("containers-storage:")
    assert (source.location, source.driver) == (store_root, "vfs")
    named, default = tmp_path / "named", tmp_path / "default"
    _index(named, _spec(store_root))
    _index(default, "containers-storage:")
    assert _images(default) == _images(named)
    conf.write_text("[storage\n")
    (line,) = error_lines(_index(tmp_path / "broken", "containers-storage:", code=1))
    assert line.startswith(f"imgdex: {conf}: storage.conf cannot be read (")


@pytest.mark.parametrize(
    "text, reason",
    [
        # tomllib's time grows with the square of a dotted key's parts: 600 KB of them took minutes
        ("[" + "a." * 3000 + "a]\n", "line 1 is longer than 4096 bytes, which no storage.conf needs"),
        ("a = " + "[\n" * 100_000, "not valid TOML for storage.conf: arrays or tables nested too deeply"),
    ],
)
def test_a_storage_conf_built_to_cost_is_one_line_at_once(tmp_path, monkeypatch, text, reason):
    conf = tmp_path / "storage.conf"
    conf.write_text(text)
    monkeypatch.setenv("CONTAINERS_STORAGE_CONF", str(conf))
    with pytest.raises(SourceError) as caught:
        parse_source("containers-storage:")
    assert str(caught.value) == f"{conf}: storage.conf cannot be read ({reason})"


def test_a_bare_root_is_detected(store_root, tmp_path):
    assert is_storage_root(store_root)
    assert isinstance(parse_source(store_root), ContainersStorage)
    _index(tmp_path / "bare", store_root)
    _index(tmp_path / "named", _spec(store_root))
    assert _images(tmp_path / "bare") == _images(tmp_path / "named")


def test_a_root_in_a_folder_is_read_not_walked(store_root, tmp_path):
    """The layers below a root are whole file systems: never tried one file at a time as archives."""
    folder = tmp_path / "exports"
    shutil.copytree(store_root, folder / "podman", symlinks=True)
    shutil.copy(CLASSIC, folder / "save.tar")
    stderr = _index(tmp_path / "store", str(folder))
    assert "note:" not in stderr
    rows = sql_rows(str(tmp_path / "store"), "SELECT source_kind, count(*) AS n FROM images GROUP BY 1 ORDER BY 1")
    assert [(row["source_kind"], row["n"]) for row in rows] == [("containers-storage", 5), ("docker-archive", 4)]


def test_big_data_files_are_named_as_containers_storage_names_them(store_root):
    entry = _by_name(store_root, "localhost/app:1")
    folder = os.path.join(store_root, "vfs-images", entry["id"])
    assert sorted(os.listdir(folder)) == sorted(big_data_file(key) for key in entry["big-data-names"])
    assert big_data_file("manifest") == "manifest"


def test_verify_does_not_apply(store_root, tmp_path):
    stderr = _index(tmp_path, _spec(store_root) + "localhost/app:1", "--verify")
    assert "--verify does not apply" in stderr


def _damaged(store_root: str, tmp_path, name: str, key: str) -> tuple[str, str, str]:
    root = _copy(store_root, tmp_path)
    entry = _by_name(root, name)
    folder = os.path.join(root, "vfs-images", entry["id"])
    return root, folder, os.path.join(folder, big_data_file(key))


def test_an_altered_config_fails_its_image_alone(store_root, tmp_path):
    entry = _by_name(store_root, "localhost/app:1")
    root, folder, path = _damaged(store_root, tmp_path, "localhost/app:1", f"sha256:{entry['id']}")
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data.replace(b"amd64", b"AMD64"))
    (line,) = error_lines(_index(tmp_path / "store", _spec(root), code=1))
    assert line.startswith(f"imgdex: {folder}: manifest sha256:") and "config" in line and "bytes hash to" in line
    assert {doc["name"] for doc in _images(tmp_path / "store")} == {"base", "classic"}


def test_an_altered_manifest_is_refused(store_root, tmp_path):
    root, folder, path = _damaged(store_root, tmp_path, "localhost/app:1", "manifest")
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data + b"\n")  # the same manifest, but bytes whose digest images.json does not record
    (line,) = error_lines(_index(tmp_path / "store", _spec(root), code=1))
    assert line.startswith(f"imgdex: {folder}: manifest is sha256:") and line.endswith("as images.json records it")


@pytest.mark.parametrize(
    "damage", ["missing folder", "folder linked out", "manifest a FIFO", "manifest linked out", "config missing"]
)
def test_a_broken_image_fails_alone(store_root, damage, tmp_path):
    entry = _by_name(store_root, "localhost/app:1")
    root, folder, manifest = _damaged(store_root, tmp_path, "localhost/app:1", "manifest")
    if damage == "missing folder":
        shutil.rmtree(folder)
        reason = "the image's folder is missing"
    elif damage == "folder linked out":
        shutil.move(folder, tmp_path / "elsewhere")
        os.symlink(tmp_path / "elsewhere", folder)
        reason = "folder is a symlink that points outside the store"
    elif damage == "manifest a FIFO":
        os.remove(manifest)
        os.mkfifo(manifest)
        reason = "manifest is not a regular file (named pipe)"
    elif damage == "manifest linked out":
        outside = tmp_path / "outside"
        outside.write_bytes(open(manifest, "rb").read())
        os.remove(manifest)
        os.symlink(outside, manifest)
        reason = "manifest is a symlink that points outside the store"
    else:
        os.remove(os.path.join(folder, big_data_file(f"sha256:{entry['id']}")))
        reason = "missing"
    (line,) = error_lines(_index(tmp_path / "store", _spec(root), code=1))
    assert line.startswith("imgdex: ") and reason in line and entry["id"] in line
    assert {doc["name"] for doc in _images(tmp_path / "store")} == {"base", "classic"}


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"{not json", "images.json is not valid JSON ("),
        (b'{"id": "x"}', "images.json is not a JSON list of images"),
        (b"NaN", "images.json is not valid JSON (NaN is not a JSON value)"),
    ],
)
def test_a_broken_images_json_is_one_line(store_root, content, reason, tmp_path):
    root = _copy(store_root, tmp_path)
    path = os.path.join(root, "vfs-images", "images.json")
    with open(path, "wb") as f:
        f.write(content)
    (line,) = error_lines(_index(tmp_path / "store", _spec(root), code=1))
    assert line == f"imgdex: {path}: {reason}" or (
        reason.endswith("(") and line.startswith(f"imgdex: {path}: {reason}")
    )


def test_images_json_that_is_special_or_linked_out_is_refused_unread(store_root, tmp_path):
    root = _copy(store_root, tmp_path)
    path = os.path.join(root, "vfs-images", "images.json")
    os.remove(path)
    os.mkfifo(path)  # no writer comes: it would block a reader for ever
    (line,) = error_lines(_index(tmp_path / "fifo", _spec(root), code=1))
    assert line == f"imgdex: {path}: images.json is not a regular file (named pipe)"
    os.remove(path)
    outside = tmp_path / "images.json"
    outside.write_text(json.dumps(_entries(store_root)))
    os.symlink(outside, path)
    (line,) = error_lines(_index(tmp_path / "linked", _spec(root), code=1))
    assert line == f"imgdex: {path}: images.json is a symlink that points outside the store"


def test_an_entry_without_an_id_fails_alone(store_root, tmp_path):
    root = _copy(store_root, tmp_path)
    path = os.path.join(root, "vfs-images", "images.json")
    entries = _entries(root)
    entries.insert(1, {"id": "../../etc", "names": ["localhost/evil:1"]})
    with open(path, "w") as f:
        json.dump(entries, f)
    (line,) = error_lines(_index(tmp_path / "store", _spec(root), code=1))
    assert line == f"imgdex: {path}: entry 1: id is not 64 hex digits"
    assert len(_images(tmp_path / "store")) == 5


def test_roots_of_several_drivers_need_one_named(store_root, tmp_path):
    root = _copy(store_root, tmp_path)
    os.mkdir(os.path.join(root, "overlay-images"))
    with open(os.path.join(root, "overlay-images", "images.json"), "w") as f:
        f.write("[]")
    (line,) = error_lines(_index(tmp_path / "any", f"containers-storage:[{root}]", code=1))
    assert line == f"imgdex: {root}: holds images of several drivers (overlay, vfs): name one as [DRIVER@ROOT]"
    _index(tmp_path / "vfs", f"containers-storage:[vfs@{root}]")
    assert len(_images(tmp_path / "vfs")) == 5
    _index(tmp_path / "overlay", f"containers-storage:[overlay@{root}]")  # no image: nothing lands
    missing = os.path.join(root, "btrfs-images")
    (line,) = error_lines(_index(tmp_path / "btrfs", f"containers-storage:[btrfs@{root}]", code=1))
    assert line == f"imgdex: {missing}: the store has no btrfs images (no such directory)"


@pytest.mark.parametrize(
    "rest, spec",
    [
        ("[vfs@/r+/run:opt=1]app:1", ("vfs", "/r", "app:1")),
        ("[/r]app", ("", "/r", "app")),
        ("[overlay@/r]", ("overlay", "/r", "")),
        ("localhost/app", ("", "", "localhost/app")),
        ("", ("", "", "")),
    ],
)
def test_the_store_specifier_is_split_as_skopeo_splits_it(rest, spec):
    got = parse_spec(rest)
    assert (got.driver, got.root, got.ref) == spec


@pytest.mark.parametrize("rest", ["[vfs@/r", "[]", "[@/r]app", "[vfs@]app"])
def test_a_broken_store_specifier_is_one_error(rest):
    with pytest.raises(SourceError) as raised:
        parse_spec(rest)
    assert str(raised.value).startswith(f"containers-storage:{rest}: ")


@given(
    driver=st.sampled_from(["", "vfs", "overlay"]),
    root=st.text(st.characters(blacklist_characters="]@+:\x00"), min_size=1, max_size=20),
    run=st.text(st.characters(blacklist_characters="]@:\x00"), max_size=10),
    ref=st.text(max_size=20),
)
def test_any_specifier_parses_to_its_parts(driver, root, run, ref):
    text = "[" + (driver + "@" if driver else "") + root + ("+" + run if run else "") + "]" + ref
    got = parse_spec(text)
    assert (got.driver, got.root, got.ref) == (driver, root, ref)


@given(st.text(max_size=40))
def test_parse_spec_raises_only_source_errors(text):
    try:
        parse_spec(text)
    except SourceError:
        pass


def test_an_image_stored_under_two_manifests_is_the_one_skopeo_reports(store_root, tmp_path):
    """Copied from the store into itself, an image's layers come out unpacked, under a manifest of
    their own: the store keeps both manifests and makes the new one the image's."""
    root = _copy(store_root, tmp_path)
    subprocess.run(
        [
            _skopeo(),
            "--insecure-policy",
            "copy",
            "-q",
            _spec(root) + "localhost/app:1",
            _spec(root) + "localhost/app:2",
        ],
        check=True,
        capture_output=True,
        timeout=120,
        env=dict(os.environ, TMPDIR=str(tmp_path)),
    )
    entry = _by_name(root, "localhost/app:2")
    assert len([name for name in entry["big-data-names"] if name.startswith("manifest-")]) == 2
    _index(tmp_path / "store", _spec(root) + "localhost/app:2")
    digests = {doc["digest"] for doc in _images(tmp_path / "store")}
    assert digests == {"sha256:" + hashlib.sha256(_raw(_spec(root) + "localhost/app:2")).hexdigest()}


def test_shards_take_each_image_once(store_root, tmp_path):
    _index(tmp_path / "whole", _spec(store_root))
    halves = []
    for shard in ("1/2", "2/2"):
        out = invoke("index", _spec(store_root), "--store", str(tmp_path / shard.replace("/", "-")), "--shard", shard)
        assert out.code == 0, out.stderr
        halves += _images(tmp_path / shard.replace("/", "-"))
    assert sorted(halves, key=json.dumps) == sorted(_images(tmp_path / "whole"), key=json.dumps)
    for shard in ("1/2", "2/2"):  # a REF that names nothing is said by one shard
        out = invoke("index", _spec(store_root) + "nothing:1", "--store", str(tmp_path / "none"), "--shard", shard)
        halves.append(len(error_lines(out.stderr)))
    assert halves[-2:] in ([1, 0], [0, 1])


def test_an_image_without_names_takes_the_given_repository(store_root, tmp_path):
    root = _copy(store_root, tmp_path)
    entries = _entries(root)
    for entry in entries:
        entry["names"] = []
    with open(os.path.join(root, "vfs-images", "images.json"), "w") as f:
        json.dump(entries, f)
    out = invoke("index", _spec(root), "--store", str(tmp_path / "store"), "--repository", "mirror/unnamed")
    assert out.code == 0, out.stderr
    assert {(doc["name"], tuple(doc.get("tags", ()))) for doc in _images(tmp_path / "store")} == {
        ("mirror/unnamed", ())
    }
    assert len(_images(tmp_path / "store")) == 4  # one per image: the app's two names were one image


def test_a_store_before_its_first_image_holds_none(tmp_path):
    root = tmp_path / "root"
    (root / "overlay-images").mkdir(parents=True)
    (root / "overlay-images" / "images.lock").write_bytes(b"")
    (root / "storage.lock").write_bytes(b"")
    assert is_storage_root(str(root))
    out = invoke("index", f"containers-storage:[{root}]", "--store", str(tmp_path / "store"))
    assert (out.code, error_lines(out.stderr)) == (0, [])
    assert out.stdout.startswith("indexed 0 images, 0 failed")
    os.rename(root / "overlay-images", root / "overlay-other")
    (line,) = error_lines(_index(tmp_path / "store", f"containers-storage:[{root}]", code=1))
    assert line == f"imgdex: {root}: not a containers-storage graph root (no DRIVER-images folder)"


def test_an_image_folder_linked_inside_the_store_is_read(store_root, tmp_path):
    root = _copy(store_root, tmp_path)
    entry = _by_name(root, "localhost/app:1")
    folder = os.path.join(root, "vfs-images", entry["id"])
    os.rename(folder, folder + ".moved")
    os.symlink(entry["id"] + ".moved", folder)
    _index(tmp_path / "linked", _spec(root))
    _index(tmp_path / "plain", _spec(store_root))
    assert _images(tmp_path / "linked") == _images(tmp_path / "plain")


def _extra_store(tmp_path) -> str:
    """A second store: the app image the main one holds too, and one image only it holds (quay.io/x/y:2)."""
    extra = str(tmp_path / "extra")
    for source, name in ((f"oci-archive:{APP}", "localhost/app:1"), (f"docker-archive:{CLASSIC}:@1", "quay.io/x/y:2")):
        subprocess.run(
            [_skopeo(), "--insecure-policy", "copy", "-q", source, _spec(extra) + name],
            check=True,
            capture_output=True,
            timeout=120,
            env=dict(os.environ, TMPDIR=str(tmp_path)),
        )
    return extra


def test_additional_image_stores_of_storage_conf_are_read(store_root, tmp_path, monkeypatch):
    """As podman lists them: a read-only store's images beside the main one's; an image both hold
    is the main store's, and a store that cannot be read is a note."""
    extra = _extra_store(tmp_path)
    conf = tmp_path / "storage.conf"
    missing = str(tmp_path / "missing")
    conf.write_text(
        f'[storage]\ndriver = "vfs"\ngraphroot = "{store_root}"\nrootless_storage_path = "{store_root}"\n'
        f'[storage.options]\nadditionalimagestores = ["{extra}", "{missing}"]\n'
    )
    monkeypatch.setenv("CONTAINERS_STORAGE_CONF", str(conf))
    assert parse_source("containers-storage:").extra == (extra, missing)
    stderr = _index(tmp_path / "store", "containers-storage:")
    notes = [line for line in stderr.splitlines() if line.startswith("imgdex: note:")]
    assert notes == [
        f"imgdex: note: {missing}: no such file or directory (an additional image store of storage.conf); skipped"
    ]
    rows = sql_rows(str(tmp_path / "store"), "SELECT registry, name, source_path FROM images ORDER BY 1, 2")
    by_source = {(row["registry"], row["name"]): row["source_path"] for row in rows}
    assert by_source[("quay.io", "x/y")] == extra  # only the extra store holds it
    assert by_source[("localhost", "app")] == store_root  # both do: the main store's
    assert len(rows) == 6
    # A REF is looked for in every store.
    _index(tmp_path / "one", "containers-storage:quay.io/x/y:2")
    assert [(doc["name"], doc["tags"]) for doc in _images(tmp_path / "one")] == [("x/y", ["2"])]


def test_jobs_split_the_store_between_processes(store_root, tmp_path, monkeypatch):
    from indexer import workers

    monkeypatch.setattr(workers, "MIN_WORK", 0)  # five images are far below what a worker pays for
    work = workers.plan([_spec(store_root)], jobs=2)
    assert [[task.spec for task in share] for share in work.shares] == [[_spec(store_root)]] * 2
    stores = []
    for jobs in ("1", "2"):
        out = invoke("index", _spec(store_root), "--store", str(tmp_path / jobs), "--jobs", jobs)
        assert out.code == 0, out.stderr
        assert out.stdout.startswith("indexed 5 images, 0 failed")
        stores.append(_images(tmp_path / jobs))
    assert stores[0] == stores[1] and len(stores[0]) == 5
    # What does not depend on the slice is said once, as by one process.
    root = _copy(store_root, tmp_path)
    with open(os.path.join(root, "vfs-images", "images.json"), "w") as f:
        f.write("[")
    out = invoke("index", _spec(root), "--store", str(tmp_path / "broken"), "--jobs", "2")
    assert out.code == 1 and len(error_lines(out.stderr)) == 1, out.stderr
    assert workers.plan([_spec(store_root) + "localhost/app:1"], jobs=2) is None  # one image: one process


_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
_HEX = "5b34b50846cefb3672853d03351cfa3be9275d03c46fc5b8e16d656a7ac5292e"


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {},
            optional={
                "id": st.sampled_from([_HEX, "../x", "", _HEX.upper()]) | _JSONISH,
                "names": st.lists(
                    st.sampled_from(["localhost/a:1", "a@sha256:" + _HEX, "bad name", "x/../y"]) | _JSONISH
                )
                | _JSONISH,
                "big-data-names": st.lists(st.sampled_from(["manifest", "manifest-sha256:" + _HEX, "sha256:" + _HEX]))
                | _JSONISH,
                "big-data-digests": st.dictionaries(st.sampled_from(["manifest", "x"]), _JSONISH) | _JSONISH,
                "digest": _JSONISH,
            },
        )
        | _JSONISH,
        max_size=4,
    ),
    st.sampled_from(["", _HEX[:6], "localhost/a:1", "a@sha256:" + _HEX, "x/../y"]),
)
def test_any_images_json_gives_records_or_one_line_errors(entries, ref):
    """Whatever images.json holds, the source yields records or SourceErrors, or raises one."""
    import tempfile

    from indexer.model import ImageRecord
    from indexer.sources.containers_storage import read_storage
    from indexer.sources.parse import Context

    with tempfile.TemporaryDirectory() as root:
        os.makedirs(os.path.join(root, "vfs-images", _HEX))
        with open(os.path.join(root, "vfs-images", _HEX, "manifest"), "wb") as f:
            f.write(b'{"schemaVersion": 2, "config": {"digest": "sha256:' + _HEX.encode() + b'", "size": 2}}')
        with open(os.path.join(root, "vfs-images", "images.json"), "w") as f:
            json.dump(entries, f)
        ctx = Context("containers-storage", root)
        try:
            items = list(read_storage(root, "vfs", ref, ctx))
        except SourceError as exc:
            assert "\n" not in str(exc)
            return
        for item in items:
            assert isinstance(item, (ImageRecord, SourceError))
            assert "\n" not in str(item) if isinstance(item, SourceError) else True


@pytest.mark.parametrize(
    "text",
    [
        "storage = 5\n",
        "[storage]\ngraphroot = 5\ndriver = []\n",
        "[storage]\noptions = 5\n",
        "[storage.options]\nadditionalimagestores = 'x'\n",
        "[storage.options]\nadditionalimagestores = [1, '', {a = 1}]\n",
    ],
)
def test_settings_of_other_types_are_read_as_absent(text, tmp_path, monkeypatch):
    conf = tmp_path / "storage.conf"
    conf.write_text(text)
    monkeypatch.setenv("CONTAINERS_STORAGE_CONF", str(conf))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    source = parse_source("containers-storage:")
    assert source.driver == "" and source.extra == ()
    assert source.location in ("/var/lib/containers/storage", str(tmp_path / "data" / "containers" / "storage"))


@pytest.mark.parametrize("content", [b"\xff\xfe", b"[storage\n", b"a = 1\na = 2\n"])
def test_a_storage_conf_that_does_not_parse_is_one_line(content, tmp_path, monkeypatch):
    conf = tmp_path / "storage.conf"
    conf.write_bytes(content)
    monkeypatch.setenv("CONTAINERS_STORAGE_CONF", str(conf))
    out = invoke("index", "containers-storage:", "--store", str(tmp_path / "store"))
    (line,) = error_lines(out.stderr)
    assert out.code == 1 and line.startswith(f"imgdex: {conf}: storage.conf cannot be read (")


def test_a_storage_conf_that_is_a_fifo_is_refused_unopened(tmp_path, monkeypatch):
    conf = tmp_path / "storage.conf"
    os.mkfifo(conf)  # no writer comes: an open would wait for ever
    monkeypatch.setenv("CONTAINERS_STORAGE_CONF", str(conf))
    out = invoke("index", "containers-storage:", "--store", str(tmp_path / "store"))
    assert out.code == 1 and error_lines(out.stderr) == [
        f"imgdex: {conf}: storage.conf is not a regular file (named pipe)"
    ]


def _add_list(root: str, tmp_path, *, drop: str = "") -> str:
    """An image holding only the multi-arch archive's index, as `podman manifest create` and
    `podman build --manifest` keep a list; its children are images of the store of their own."""
    import base64

    raw = _raw(f"oci-archive:{MULTIARCH}")
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    list_id = "ab" * 32
    folder = os.path.join(root, "vfs-images", list_id)
    os.makedirs(folder)
    key = f"manifest-{digest}"
    for name in ("manifest", "=" + base64.b64encode(key.encode()).decode()):
        with open(os.path.join(folder, name), "wb") as f:
            f.write(raw)
    entries = [entry for entry in _entries(root) if drop not in entry.get("names", [])] if drop else _entries(root)
    entries.append(
        {"id": list_id, "digest": digest, "names": ["localhost/list:1"], "big-data-names": ["manifest", key]}
    )
    with open(os.path.join(root, "vfs-images", "images.json"), "w") as f:
        json.dump(entries, f)
    return digest


def test_a_manifest_list_is_an_index_of_the_store_images(store_root, tmp_path):
    root = _copy(store_root, tmp_path)
    digest = _add_list(root, tmp_path)
    stderr = _index(tmp_path / "store", _spec(root) + "localhost/list:1")
    assert "note:" not in stderr
    rows = sql_rows(
        str(tmp_path / "store"), "SELECT name, kind, digest, parent_digest, tags FROM images ORDER BY kind DESC, digest"
    )
    children = sql_rows(
        str(tmp_path / "store"), "SELECT 1 FROM images WHERE platform_architecture IN ('amd64', 'arm64')"
    )
    assert rows[0] == {"name": "list", "kind": "index", "digest": digest, "parent_digest": "", "tags": ["1"]}
    assert [(row["name"], row["kind"], row["parent_digest"], row["tags"]) for row in rows[1:]] == [
        ("list", "image", digest, [])
    ] * 2
    assert len(children) == 2
    # The children are the store's images of their own, whose manifests they are.
    _index(tmp_path / "bases", _spec(root) + "localhost/base:amd64", _spec(root) + "localhost/base:arm64")
    assert {row["digest"] for row in rows[1:]} == {doc["digest"] for doc in _images(tmp_path / "bases")}


def test_a_child_the_store_does_not_hold_is_a_note(store_root, tmp_path):
    root = _copy(store_root, tmp_path)
    digest = _add_list(root, tmp_path, drop="localhost/base:arm64")
    stderr = _index(tmp_path / "store", _spec(root) + "localhost/list:1")
    (note,) = [line for line in stderr.splitlines() if line.startswith("imgdex: note:")]
    assert note.endswith(f"of index {digest} is not in the source; skipped")
    assert len(sql_rows(str(tmp_path / "store"), "SELECT 1 FROM images")) == 2


def test_files_over_their_limits_are_refused_unread(store_root, tmp_path):
    """Sizes are checked before a byte is read: sparse files stand for large ones."""
    from indexer.sources.containers_storage import MAX_IMAGES_JSON_BYTES
    from indexer.sources.parse import MAX_JSON_BYTES

    root, folder, manifest = _damaged(store_root, tmp_path, "localhost/app:1", "manifest")
    os.truncate(manifest, MAX_JSON_BYTES + 1)
    (line,) = error_lines(_index(tmp_path / "manifest", _spec(root), code=1))
    assert line == f"imgdex: {manifest}: manifest is {MAX_JSON_BYTES + 1} bytes, over the {MAX_JSON_BYTES}-byte limit"
    assert len(_images(tmp_path / "manifest")) == 3  # the app's two names were its image's
    images_json = os.path.join(root, "vfs-images", "images.json")
    os.truncate(images_json, MAX_IMAGES_JSON_BYTES + 1)
    (line,) = error_lines(_index(tmp_path / "images", _spec(root), code=1))
    assert line == (
        f"imgdex: {images_json}: images.json is {MAX_IMAGES_JSON_BYTES + 1} bytes,"
        f" over the {MAX_IMAGES_JSON_BYTES}-byte limit"
    )


def test_a_child_linked_out_of_the_store_is_refused_by_name(store_root, tmp_path):
    root = _copy(store_root, tmp_path)
    digest = _add_list(root, tmp_path)
    child = _by_name(root, "localhost/base:arm64")
    key = next(name for name in child["big-data-names"] if name.startswith("manifest-") and digest not in name)
    path = os.path.join(root, "vfs-images", child["id"], big_data_file(key))
    outside = tmp_path / "outside"
    outside.write_bytes(open(path, "rb").read())
    os.remove(path)
    os.symlink(outside, path)
    stderr = _index(tmp_path / "store", _spec(root) + "localhost/list:1", code=1)
    (line,) = error_lines(stderr)
    assert line == f"imgdex: {path}: manifest is a symlink that points outside the store"
    assert digest in {row["digest"] for row in sql_rows(str(tmp_path / "store"), "SELECT digest FROM images")}


def test_a_digest_ref_names_a_manifest_not_a_config(store_root, tmp_path):
    entry = _by_name(store_root, "localhost/app:1")
    (line,) = error_lines(_index(tmp_path, _spec(store_root) + f"localhost/app@sha256:{entry['id']}", code=1))
    assert line.endswith(": no such image in the store")


def test_an_image_without_its_own_manifest_item_is_read_from_the_manifests_kept(store_root, tmp_path):
    root = _copy(store_root, tmp_path)
    entries = _entries(root)
    for entry in entries:
        if "localhost/app:1" in entry.get("names", []):
            entry["big-data-names"].remove("manifest")
            os.remove(os.path.join(root, "vfs-images", entry["id"], "manifest"))
    with open(os.path.join(root, "vfs-images", "images.json"), "w") as f:
        json.dump(entries, f)
    _index(tmp_path / "kept", _spec(root) + "localhost/app:1")
    _index(tmp_path / "whole", _spec(store_root) + "localhost/app:1")
    assert _images(tmp_path / "kept") == _images(tmp_path / "whole")


def test_a_storage_conf_over_its_limit_is_refused_not_cut(tmp_path, monkeypatch):
    conf = tmp_path / "storage.conf"
    # Cut at its limit, this would still read as valid TOML, without the line that says where the store is.
    conf.write_text("# padding\n" * (tomlfile.MAX_FILE_BYTES // 10) + '[storage]\ngraphroot = "/elsewhere"\n')
    monkeypatch.setenv("CONTAINERS_STORAGE_CONF", str(conf))
    out = invoke("index", "containers-storage:", "--store", str(tmp_path / "store"))
    limit = f"storage.conf is over the {tomlfile.MAX_FILE_BYTES}-byte limit"
    assert out.code == 1 and error_lines(out.stderr) == [f"imgdex: {conf}: {limit}"]


def _tags(store) -> dict[tuple[str, str], list[str]]:
    rows = sql_rows(str(store), "SELECT registry, name, tags FROM images ORDER BY 1, 2")
    found: dict[tuple[str, str], list[str]] = {}
    for row in rows:
        found.setdefault((row["registry"], row["name"]), []).extend(row["tags"])
    return {key: sorted(tags) for key, tags in found.items()}


WHOLE = {
    ("cr.example.com", "team/app"): ["v1"],
    ("localhost", "app"): ["1"],
    ("localhost", "base"): ["amd64", "arm64"],
    ("localhost", "classic"): ["1"],
}


def _write_entries(root: str, entries: list) -> None:
    with open(os.path.join(root, "vfs-images", "images.json"), "w") as f:
        json.dump(entries, f)


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_tags_the_store_no_longer_holds_are_retired(store_root, tmp_path, monkeypatch, jobs):
    from indexer import workers

    monkeypatch.setattr(workers, "MIN_WORK", 0)  # so that --jobs 2 splits five images
    root = _copy(store_root, tmp_path)
    store = tmp_path / "store"
    _index(store, _spec(root))
    assert _tags(store) == WHOLE
    # `skopeo delete` of an image (podman rmi), and one name taken off an image (podman untag)
    subprocess.run(
        [_skopeo(), "delete", _spec(root) + "localhost/classic:1"], check=True, capture_output=True, timeout=60
    )
    entries = _entries(root)
    for entry in entries:
        entry["names"] = [name for name in entry.get("names", []) if name != "cr.example.com/team/app:v1"]
    _write_entries(root, entries)
    stderr = _index(store, _spec(root), "--jobs", jobs)
    if jobs == "1":
        assert stderr.splitlines() == [
            f"imgdex: note: {root}: removed 2 tags it no longer holds (cr.example.com/team/app:v1, localhost/classic:1)"
        ]
    else:  # each process retires the tags of its repositories
        assert sorted(stderr.splitlines()) == [
            f"imgdex: note: {root}: removed a tag it no longer holds (cr.example.com/team/app:v1)",
            f"imgdex: note: {root}: removed a tag it no longer holds (localhost/classic:1)",
        ]
    # the images stay, untagged, as after a registry re-crawl
    assert _tags(store) == {**WHOLE, ("cr.example.com", "team/app"): [], ("localhost", "classic"): []}
    assert not _index(store, _spec(root))  # nothing more to say


def test_a_ref_or_a_store_not_read_whole_retires_no_tag(store_root, tmp_path):
    root = _copy(store_root, tmp_path)
    store = tmp_path / "store"
    _index(store, _spec(root))
    entries = _entries(root)
    for entry in entries:
        entry["names"] = [name for name in entry.get("names", []) if not name.startswith("localhost/base")]
    _write_entries(root, entries)
    _index(store, _spec(root) + "localhost/app:1")  # one image is not the store's list of tags
    assert _tags(store) == WHOLE
    for damaged in ([*entries, {"id": "x"}], [*entries, 5], [*entries[:-1], dict(entries[-1], names="x")]):
        _write_entries(root, damaged)  # an entry whose names cannot be known
        _index(store, _spec(root), code=1 if damaged[-1] in (5, {"id": "x"}) else 0)
        # (the images without names now land unnamed as well)
        assert _tags(store)[("localhost", "base")] == ["amd64", "arm64"]
    _write_entries(root, entries)
    _index(store, _spec(root))
    assert _tags(store) == {**WHOLE, ("localhost", "base"): [], ("", ""): []}


def test_tags_of_an_additional_store_that_cannot_be_read_stay(store_root, tmp_path, monkeypatch):
    extra = _extra_store(tmp_path)
    conf = tmp_path / "storage.conf"
    conf.write_text(
        f'[storage]\ndriver = "vfs"\ngraphroot = "{store_root}"\nrootless_storage_path = "{store_root}"\n'
        f'[storage.options]\nadditionalimagestores = ["{extra}"]\n'
    )
    monkeypatch.setenv("CONTAINERS_STORAGE_CONF", str(conf))
    store = tmp_path / "store"
    _index(store, "containers-storage:")
    assert _tags(store)[("quay.io", "x/y")] == ["2"]
    os.rename(extra, extra + ".away")
    _index(store, "containers-storage:")  # a note: the store is skipped, and its tags are not taken for gone
    assert _tags(store) == {**WHOLE, ("quay.io", "x/y"): ["2"]}
    os.rename(extra + ".away", extra)
    _write_entries(extra, [e for e in _entries(extra) if "quay.io/x/y:2" not in e.get("names", [])])
    stderr = _index(store, "containers-storage:")
    assert stderr.splitlines() == [f"imgdex: note: {extra}: removed a tag it no longer holds (quay.io/x/y:2)"]
    assert _tags(store) == {**WHOLE, ("quay.io", "x/y"): []}


def test_a_root_named_with_a_trailing_slash_retires_its_own_tags(store_root, tmp_path):
    root = _copy(store_root, tmp_path)
    spec = f"containers-storage:[vfs@{root}/]"  # the records' source path is the root as named
    store = tmp_path / "store"
    _index(store, spec)
    _write_entries(root, [e for e in _entries(root) if "localhost/classic:1" not in e.get("names", [])])
    assert "removed a tag it no longer holds (localhost/classic:1)" in _index(store, spec)
    assert _tags(store) == {**WHOLE, ("localhost", "classic"): []}
