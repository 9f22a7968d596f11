"""docker:// against a real registry: Debian's docker-registry (distribution 2.8) on 127.0.0.1.

Images are pushed with skopeo from the real fixtures. Expected documents are built from what the
registry serves to skopeo (`skopeo inspect --raw`, `--config`), not from the crawler's parser.
Without docker-registry or skopeo these tests skip, and fail when CI is set.
"""

import base64
import json
import os
import subprocess

import pytest

from conftest import REAL, need_skopeo
from indexer.references import blob_id, image_id
from indexer.timestamps import normalise
from registry_server import (
    RealRegistry,
    TokenServer,
    htpasswd_line,
    http,
    push_manifest,
    sha256,
    skopeo_copy,
    skopeo_raw,
)

pytestmark = pytest.mark.services

LAYOUT = os.path.join(REAL, "oci-layout")
DOCKER_SAVE = os.path.join(REAL, "docker-save-app.tar")
MULTIARCH = os.path.join(REAL, "oci-archive-base-multiarch.tar")


def push_fixtures(host: str, creds: str = "") -> None:
    skopeo_copy(f"docker-archive:{DOCKER_SAVE}:imgdex-test/app:1.0", f"docker://{host}/team/app:v1", creds=creds)
    skopeo_copy(f"docker-archive:{DOCKER_SAVE}:imgdex-test/app:1.0", f"docker://{host}/team/app:1.0", creds=creds)
    skopeo_copy(f"oci:{LAYOUT}:v1", f"docker://{host}/team/app-oci:v1", creds=creds)
    skopeo_copy(f"oci-archive:{MULTIARCH}:1.0", f"docker://{host}/team/base:1.0", all_images=True, creds=creds)
    skopeo_copy(f"oci:{LAYOUT}:base-1.0-amd64", f"docker://{host}/team/base:1.0-amd64", creds=creds)


def served_documents(host: str, repositories: dict[str, list[str]], creds: str = "") -> dict[str, dict]:
    """id -> the Image.Get document of every manifest the registry serves for these tags."""
    docs: dict[str, dict] = {}

    def visit(repo: str, digest: str, tags: list[str]) -> None:
        raw = skopeo_raw(f"docker://{host}/{repo}@{digest}", creds=creds)
        assert sha256(raw) == digest
        manifest = json.loads(raw)
        doc = {"id": image_id(host, repo, digest), "name": repo, "digest": digest}
        if "manifests" in manifest:
            if tags:
                doc["tags"] = sorted(tags)
            docs[doc["id"]] = doc
            for child in manifest["manifests"]:
                visit(repo, child["digest"], [])
            return
        config = json.loads(skopeo_raw(f"docker://{host}/{repo}@{digest}", config=True, creds=creds))
        layers = manifest["layers"]
        doc["compressedSize"] = str(sum(layer["size"] for layer in layers))
        doc["config"] = {
            "id": blob_id(manifest["config"]["digest"]),
            "digest": manifest["config"]["digest"],
            "size": str(manifest["config"]["size"]),
        }
        doc["layers"] = [
            {"id": blob_id(layer["digest"]), "digest": layer["digest"], "size": str(layer["size"])} for layer in layers
        ]
        if tags:
            doc["tags"] = sorted(tags)
        doc["createdAt"] = normalise(config["created"])
        docs[doc["id"]] = doc

    for repo, tags in repositories.items():
        by_digest: dict[str, list[str]] = {}
        for tag in tags:
            digest = sha256(skopeo_raw(f"docker://{host}/{repo}:{tag}", creds=creds))
            by_digest.setdefault(digest, []).append(tag)
        for digest, its_tags in by_digest.items():
            visit(repo, digest, its_tags)
    return docs


FIXTURE_TAGS = {"team/app": ["1.0", "v1"], "team/app-oci": ["v1"], "team/base": ["1.0", "1.0-amd64"]}


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    reg = RealRegistry(str(tmp_path_factory.mktemp("registry")))
    try:
        push_fixtures(reg.host)
        reg.expected = served_documents(reg.host, FIXTURE_TAGS)
        yield reg
    finally:
        reg.stop()


def listing(run_cli, store) -> dict[str, dict]:
    result = run_cli("list", "--store", store, "--page-size", "1000")
    assert result.exit_code == 0, result.output
    return {d["id"]: d for d in json.loads(result.stdout).get("images", [])}


def get(run_cli, store, query):
    result = run_cli("get", query, "--store", store)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def index(run_cli, store, *args, ok=True):
    result = run_cli("index", *args, "--store", store)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def test_whole_registry_gives_exact_documents(registry, run_cli, tmp_path):
    store = str(tmp_path)
    result = index(run_cli, store, f"docker://{registry.host}")
    assert f"indexed {len(registry.expected)} images, 0 failed" in result.output
    got = listing(run_cli, store)
    assert got == registry.expected
    for image_id_ in registry.expected:
        assert get(run_cli, store, image_id_) == registry.expected[image_id_]
    index_doc = next(d for d in registry.expected.values() if d["name"] == "team/base" and d.get("tags") == ["1.0"])
    child = get(run_cli, store, f"{registry.host}/team/base:1.0")
    assert child["id"] != index_doc["id"] and "config" in child  # the platform child of the index


def test_jobs_one_gives_the_same_store(registry, run_cli, tmp_path):
    index(run_cli, str(tmp_path / "a"), f"docker://{registry.host}", "--jobs", "1")
    assert listing(run_cli, str(tmp_path / "a")) == registry.expected


def test_single_tag_digest_and_repository(registry, run_cli, tmp_path):
    host = registry.host
    docs = registry.expected
    store = str(tmp_path / "tag")
    index(run_cli, store, f"docker://{host}/team/app:v1")
    [only] = listing(run_cli, store).values()
    assert only == dict(docs[only["id"]], tags=["v1"])

    base_index = next(d for d in docs.values() if d["name"] == "team/base" and d.get("tags") == ["1.0"])
    store = str(tmp_path / "digest")
    index(run_cli, store, f"docker://{host}/team/base@{base_index['digest']}")
    got = listing(run_cli, store)
    assert len(got) == 3  # the index and both platforms, untagged
    assert all("tags" not in d for d in got.values())

    store = str(tmp_path / "repo")
    index(run_cli, store, f"docker://{host}/team/app")
    assert listing(run_cli, store) == {k: v for k, v in docs.items() if v["name"] == "team/app"}


def test_repository_prefix(registry, run_cli, tmp_path):
    store = str(tmp_path)
    index(run_cli, store, f"docker://{registry.host}", "--repository-prefix", "team/app")
    assert {d["name"] for d in listing(run_cli, store).values()} == {"team/app"}  # not team/app-oci


def test_layers_are_never_fetched(registry, run_cli, tmp_path, monkeypatch):
    from indexer.sources import registry_client

    seen = []
    original = registry_client.RegistryClient.send

    def spy(self, method, url, *args, **kwargs):
        seen.append((method, url))
        return original(self, method, url, *args, **kwargs)

    monkeypatch.setattr(registry_client.RegistryClient, "send", spy)
    index(run_cli, str(tmp_path), f"docker://{registry.host}")
    layer_digests = {layer["digest"] for d in registry.expected.values() for layer in d.get("layers", [])}
    config_digests = {d["config"]["digest"] for d in registry.expected.values() if "config" in d}
    fetched_blobs = {url.rsplit("/", 1)[1] for method, url in seen if "/blobs/" in url}
    assert fetched_blobs <= config_digests and not fetched_blobs & layer_digests
    assert len([u for m, u in seen if "/blobs/" in u]) == len(config_digests)  # each config once: cached by digest


# ---------------------------------------------------------------- registries.conf, beside skopeo


def _skopeo_inspect(conf: str, ref: str) -> subprocess.CompletedProcess:
    args = ["skopeo", "--registries-conf", conf, "inspect", "--raw", "--tls-verify=false", ref]
    return subprocess.run(args, capture_output=True, timeout=60)


def test_a_registry_another_host_serves_is_crawled_there_and_named_as_asked(registry, run_cli, tmp_path):
    conf = tmp_path / "registries.conf"
    conf.write_text(f'[[registry]]\nprefix = "registry.imgdex.test"\nlocation = "{registry.host}"\n')
    store = str(tmp_path / "store")
    # registry.imgdex.test resolves nowhere: every request goes to the location
    index(run_cli, store, "docker://registry.imgdex.test/team/app:v1", "--registries-conf", str(conf))
    [only] = listing(run_cli, store).values()
    served = skopeo_raw(f"docker://{registry.host}/team/app:v1")
    assert only["digest"] == sha256(served) and only["tags"] == ["v1"]
    doc = get(run_cli, store, "registry.imgdex.test/team/app:v1")
    assert doc["digest"] == only["digest"]
    skopeo = _skopeo_inspect(str(conf), "docker://registry.imgdex.test/team/app:v1")
    assert skopeo.returncode == 0 and skopeo.stdout == served, skopeo.stderr


def test_a_namespace_registries_conf_moves_is_crawled_there_as_skopeo_pulls_it(registry, run_cli, tmp_path):
    """A proxy cache's layout: `prefix = "registry.imgdex.test/apps"` served as HOST/team."""
    conf = tmp_path / "registries.conf"
    conf.write_text(f'[[registry]]\nprefix = "registry.imgdex.test/apps"\nlocation = "{registry.host}/team"\n')
    store = str(tmp_path / "one")
    index(run_cli, store, "docker://registry.imgdex.test/apps/app", "--registries-conf", str(conf))
    got = listing(run_cli, store)
    expected = {d["digest"]: d.get("tags") for d in registry.expected.values() if d["name"] == "team/app"}
    assert {d["digest"]: d.get("tags") for d in got.values()} == expected
    assert {d["name"] for d in got.values()} == {"apps/app"}
    skopeo = _skopeo_inspect(str(conf), "docker://registry.imgdex.test/apps/app:v1")
    assert skopeo.returncode == 0 and skopeo.stdout == skopeo_raw(f"docker://{registry.host}/team/app:v1")


def test_a_whole_registry_moved_into_a_namespace_is_listed_from_that_namespace(registry, run_cli, tmp_path):
    conf = tmp_path / "registries.conf"
    conf.write_text(
        f'[[registry]]\nprefix = "registry.imgdex.test"\nlocation = "{registry.host}/team"\n'
        # a repository moved on its own is not followed by a crawl of the whole registry
        f'[[registry]]\nprefix = "registry.imgdex.test/base"\nlocation = "{registry.host}/team/app-oci"\n'
    )
    store = str(tmp_path / "all")
    result = index(run_cli, store, "docker://registry.imgdex.test", "--registries-conf", str(conf), ok=False)
    assert result.exit_code == 1
    assert (
        f"imgdex: registry.imgdex.test/base: {conf} has registry.imgdex.test/base served as "
        f"{registry.host}/team/app-oci, which a crawl of the whole registry does not follow: crawl docker://registry.imgdex.test/base"
    ) in result.output.splitlines(), result.output
    got = listing(run_cli, store)
    served = {
        (d["name"].removeprefix("team/"), d["digest"], tuple(d.get("tags", ())))
        for d in registry.expected.values()
        if d["name"] in ("team/app", "team/app-oci")
    }
    assert {(d["name"], d["digest"], tuple(d.get("tags", ()))) for d in got.values()} == served


def _mirrored(tmp_path, registry, settings: str = "", mirror: str = "") -> str:
    """A registries.conf whose registry 127.0.0.1:1 (nothing listens there) has HOST/team as its mirror."""
    conf = tmp_path / "registries.conf"
    conf.write_text(
        f'[[registry]]\nlocation = "127.0.0.1:1"\n{settings}'
        f'[[registry.mirror]]\nlocation = "{registry.host}/team"\n{mirror}'
    )
    return str(conf)


def test_an_image_comes_from_its_mirror_as_skopeo_pulls_it(registry, run_cli, tmp_path):
    conf = _mirrored(tmp_path, registry)
    store = str(tmp_path / "store")
    result = index(run_cli, store, "docker://127.0.0.1:1/app:v1", "--registries-conf", conf, "--retry-times", "0")
    [only] = listing(run_cli, store).values()
    served = skopeo_raw(f"docker://{registry.host}/team/app:v1")
    assert (only["name"], only["digest"], only["tags"]) == ("app", sha256(served), ["v1"])
    assert get(run_cli, store, "127.0.0.1:1/app:v1")["digest"] == sha256(served)
    skopeo = _skopeo_inspect(conf, "docker://127.0.0.1:1/app:v1")
    assert skopeo.returncode == 0 and skopeo.stdout == served, skopeo.stderr
    assert "Traceback" not in result.output


def test_when_every_mirror_fails_the_registry_s_error_says_how_each_did(registry, run_cli, tmp_path):
    conf = _mirrored(tmp_path, registry)
    result = index(
        run_cli,
        str(tmp_path / "s"),
        "docker://127.0.0.1:1/nothing:v1",
        "--registries-conf",
        conf,
        "--retry-times",
        "0",
        ok=False,
    )
    assert result.exit_code == 1
    [line] = [line for line in result.output.splitlines() if line.startswith("imgdex: ")]
    assert "connection refused" in line
    assert line.endswith(")") and f"(mirrors also failed: [{registry.host}/team/nothing:v1: " in line, line
    skopeo = _skopeo_inspect(conf, "docker://127.0.0.1:1/nothing:v1")
    assert skopeo.returncode != 0 and b"Mirrors also failed" in skopeo.stderr


@pytest.mark.parametrize(
    "settings, mirror, by_digest, by_tag",
    [
        ("mirror-by-digest-only = true\n", "", True, False),
        ("", 'pull-from-mirror = "digest-only"\n', True, False),
        ("", 'pull-from-mirror = "tag-only"\n', False, True),
    ],
)
def test_a_mirror_is_asked_only_for_the_references_it_is_for(
    registry, run_cli, tmp_path, settings, mirror, by_digest, by_tag
):
    conf = _mirrored(tmp_path, registry, settings, mirror)
    digest = sha256(skopeo_raw(f"docker://{registry.host}/team/app:v1"))
    for reference, used in ((f"@{digest}", by_digest), (":v1", by_tag)):
        store = str(tmp_path / reference.strip(":@").replace(":", "-"))
        source = f"docker://127.0.0.1:1/app{reference}"
        result = index(run_cli, store, source, "--registries-conf", conf, "--retry-times", "0", ok=False)
        assert (result.exit_code == 0) == used, result.output
        assert ("mirrors also failed" in result.output) is False
        skopeo = _skopeo_inspect(conf, source)
        assert (skopeo.returncode == 0) == used, skopeo.stderr


def test_a_blocked_repository_is_one_line_and_the_rest_of_the_catalog_lands(registry, run_cli, tmp_path):
    conf = tmp_path / "registries.conf"
    conf.write_text(f'[[registry]]\nlocation = "{registry.host}/team/app"\nblocked = true\n')
    store = str(tmp_path / "store")
    result = index(run_cli, store, f"docker://{registry.host}", "--registries-conf", str(conf), ok=False)
    assert result.exit_code == 1
    line = f"imgdex: {registry.host}/team/app: registry {registry.host}/team/app is blocked in {conf}"
    assert line in result.output.splitlines(), result.output
    assert {d["name"] for d in listing(run_cli, store).values()} == {"team/app-oci", "team/base"}

    result = index(run_cli, store, f"docker://{registry.host}/team/app:v1", "--registries-conf", str(conf), ok=False)
    assert result.exit_code == 1
    assert f"registry {registry.host}/team/app is blocked in {conf}" in result.output
    skopeo = _skopeo_inspect(str(conf), f"docker://{registry.host}/team/app:v1")
    assert skopeo.returncode != 0 and b"is blocked" in skopeo.stderr


def test_registries_conf_comes_from_the_environment_as_podman_s_does(registry, run_cli, tmp_path, monkeypatch):
    """CONTAINERS_REGISTRIES_CONF, which podman and buildah read (skopeo only takes --registries-conf);
    a version 1 file, as older systems have."""
    conf = tmp_path / "registries.conf"
    conf.write_text(f'[registries.block]\nregistries = ["{registry.host}"]\n')
    monkeypatch.setenv("CONTAINERS_REGISTRIES_CONF", str(conf))
    result = index(run_cli, str(tmp_path / "store"), f"docker://{registry.host}/team/app:v1", ok=False)
    assert result.exit_code == 1
    assert f"registry {registry.host} is blocked in {conf}" in result.output
    skopeo = _skopeo_inspect(str(conf), f"docker://{registry.host}/team/app:v1")
    assert skopeo.returncode != 0 and b"is blocked" in skopeo.stderr
    monkeypatch.delenv("CONTAINERS_REGISTRIES_CONF")
    index(run_cli, str(tmp_path / "store"), f"docker://{registry.host}/team/app:v1")


def test_a_registries_conf_that_cannot_be_used_is_one_line_naming_it(registry, run_cli, tmp_path):
    conf = tmp_path / "registries.conf"
    conf.write_text('[[registry]]\nlocation = "https://example.com"\n')
    result = index(run_cli, str(tmp_path / "a"), f"docker://{registry.host}", "--registries-conf", str(conf), ok=False)
    assert result.exit_code == 1
    assert (
        f"imgdex: docker://{registry.host}: {conf}: registry entry 1: invalid location 'https://example.com': "
        "URI schemes are not supported"
    ) in result.output.splitlines()
    assert "Traceback" not in result.output
    missing = tmp_path / "nowhere.conf"
    result = index(
        run_cli, str(tmp_path / "b"), f"docker://{registry.host}", "--registries-conf", str(missing), ok=False
    )
    assert result.exit_code == 1
    assert f"imgdex: docker://{registry.host}: {missing}: no such registries.conf" in result.output.splitlines()


def retag(url: str, repo: str, source: str, target: str) -> None:
    """Point `target` at the manifest `source` names, bytes unchanged, as `crane tag` does. Copying
    the docker-save archive again is not the same: skopeo compresses its layers anew, and took a
    different compressed blob now and then (its blob-info cache is shared by every test)."""
    accept = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json"
    status, headers, data = http("GET", f"{url}/v2/{repo}/manifests/{source}", headers={"Accept": accept})
    assert status == 200, data
    push_manifest(url, repo, target, data, headers["Content-Type"])


def test_recrawl_is_incremental_moves_and_retires_tags(run_cli, tmp_path):
    reg = RealRegistry(str(tmp_path / "registry"))
    try:
        host = reg.host
        skopeo_copy(f"docker-archive:{DOCKER_SAVE}:imgdex-test/app:1.0", f"docker://{host}/team/app:v1")
        retag(reg.url, "team/app", "v1", "latest")
        skopeo_copy(f"oci:{LAYOUT}:base-1.0-amd64", f"docker://{host}/team/app:moving")
        skopeo_copy(f"oci:{LAYOUT}:v1", f"docker://{host}/team/app:gone")
        store = str(tmp_path / "store")
        first = index(run_cli, store, f"docker://{host}")
        assert "indexed 3 images, 0 failed" in first.output
        app = get(run_cli, store, f"{host}/team/app:v1")
        gone = get(run_cli, store, f"{host}/team/app:gone")
        old_moving = get(run_cli, store, f"{host}/team/app:moving")
        assert app["tags"] == ["latest", "v1"]

        second = index(run_cli, store, f"docker://{host}")
        assert "indexed 0 images" in second.output
        assert "0 manifests fetched, 4 tags unchanged, 0 retagged, 0 removed" in second.output

        # moving -> a manifest already indexed here; latest -> a new multi-platform index; gone -> deleted
        retag(reg.url, "team/app", "v1", "moving")
        skopeo_copy(f"oci-archive:{MULTIARCH}:1.0", f"docker://{host}/team/app:latest", all_images=True)
        status, _, body = http("DELETE", f"{reg.url}/v2/team/app/manifests/{gone['digest']}")
        assert status == 202, body
        third = index(run_cli, store, f"docker://{host}")
        assert "1 manifests fetched, 1 tags unchanged, 1 retagged, 1 removed" in third.output
        assert "indexed 3 images, 0 failed" in third.output  # the index and its two platforms

        assert get(run_cli, store, f"{host}/team/app:moving")["id"] == app["id"]
        assert get(run_cli, store, app["id"])["tags"] == ["moving", "v1"]
        latest_digest = sha256(skopeo_raw(f"docker://{host}/team/app:latest"))
        [latest_index] = [d for d in listing(run_cli, store).values() if d["digest"] == latest_digest]
        assert latest_index["tags"] == ["latest"]
        assert "tags" not in get(run_cli, store, gone["id"])  # kept, untagged
        assert "tags" not in get(run_cli, store, old_moving["id"])
        result = run_cli("get", f"{host}/team/app:gone", "--store", store)
        assert result.exit_code == 1 and "not found" in result.output

        fourth = index(run_cli, store, f"docker://{host}")
        assert "0 manifests fetched, 3 tags unchanged, 0 retagged, 0 removed" in fourth.output
    finally:
        reg.stop()


def test_catalog_pagination_of_a_real_registry(run_cli, tmp_path):
    reg = RealRegistry(str(tmp_path / "registry"), extra="catalog:\n  maxentries: 2\n")
    try:
        names = [f"page/r{i}" for i in range(5)]
        for name in names:
            skopeo_copy(f"oci:{LAYOUT}:base-1.0-amd64", f"docker://{reg.host}/{name}:v1")
        assert http("GET", f"{reg.url}/v2/_catalog")[1].get("Link")  # the registry really pages
        store = str(tmp_path / "store")
        index(run_cli, store, f"docker://{reg.host}")
        assert sorted(d["name"] for d in listing(run_cli, store).values()) == names
    finally:
        reg.stop()


def test_vanished_repository_tags_are_retired(run_cli, tmp_path):
    reg = RealRegistry(str(tmp_path / "registry"))
    try:
        host = reg.host
        skopeo_copy(f"oci:{LAYOUT}:v1", f"docker://{host}/keep/app:v1")
        skopeo_copy(f"oci:{LAYOUT}:base-1.0-amd64", f"docker://{host}/drop/base:1.0")
        store = str(tmp_path / "store")
        index(run_cli, store, f"docker://{host}")
        dropped = get(run_cli, store, f"{host}/drop/base:1.0")
        digest = dropped["digest"]
        assert http("DELETE", f"{reg.url}/v2/drop/base/manifests/{digest}")[0] == 202
        # distribution keeps listing a repository whose manifests are deleted, with no tags
        result = index(run_cli, store, f"docker://{host}")
        assert "1 removed" in result.output
        assert "tags" not in get(run_cli, store, dropped["id"])
    finally:
        reg.stop()


# ---------------------------------------------------------------- basic auth


@pytest.fixture(scope="module")
def basic_registry(tmp_path_factory):
    root = tmp_path_factory.mktemp("basic-registry")
    path = os.path.join(root, "htpasswd")
    with open(path, "w") as f:
        f.write(htpasswd_line("crawler", "s3cret-pass"))
    reg = RealRegistry(str(root / "registry"), auth={"htpasswd": {"realm": "imgdex-basic", "path": path}})
    try:
        skopeo_copy(f"oci:{LAYOUT}:v1", f"docker://{reg.host}/team/app-oci:v1", creds="crawler:s3cret-pass")
        skopeo_copy(
            f"oci-archive:{MULTIARCH}:1.0",
            f"docker://{reg.host}/team/base:1.0",
            all_images=True,
            creds="crawler:s3cret-pass",
        )
        reg.expected = served_documents(
            reg.host, {"team/app-oci": ["v1"], "team/base": ["1.0"]}, creds="crawler:s3cret-pass"
        )
        yield reg
    finally:
        reg.stop()


@pytest.fixture
def no_auth_files(monkeypatch, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    for name in ("REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "DOCKER_CONFIG", "IMGDEX_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(home))
    return home


def test_basic_auth_needs_credentials(basic_registry, run_cli, tmp_path, no_auth_files):
    result = index(run_cli, str(tmp_path), f"docker://{basic_registry.host}", ok=False)
    assert result.exit_code == 1
    assert f"authentication required and no credentials for {basic_registry.host}" in result.output


def test_a_registry_token_does_not_answer_a_basic_challenge(
    basic_registry, run_cli, tmp_path, no_auth_files, monkeypatch
):
    monkeypatch.setenv("IMGDEX_REGISTRY_TOKEN", "t0ken")
    result = index(run_cli, str(tmp_path), f"docker://{basic_registry.host}", ok=False)
    assert result.exit_code == 1 and "t0ken" not in result.output
    said = f"the registry asks for a password, and only a registry token was given for {basic_registry.host}"
    assert said in result.output, result.output


def test_basic_auth_with_password_from_environment(basic_registry, run_cli, tmp_path, no_auth_files, monkeypatch):
    monkeypatch.setenv("IMGDEX_PASSWORD", "s3cret-pass")
    store = str(tmp_path)
    index(run_cli, store, f"docker://{basic_registry.host}", "--username", "crawler")
    assert listing(run_cli, store) == basic_registry.expected


def test_basic_auth_with_password_stdin(basic_registry, run_cli, tmp_path, no_auth_files):
    store = str(tmp_path)
    result = run_cli(
        "index",
        f"docker://{basic_registry.host}",
        "--username",
        "crawler",
        "--password-stdin",
        "--store",
        store,
        input="s3cret-pass\n",
    )
    assert result.exit_code == 0, result.output
    assert listing(run_cli, store) == basic_registry.expected


def test_basic_auth_wrong_password(basic_registry, run_cli, tmp_path, no_auth_files):
    result = run_cli(
        "index",
        f"docker://{basic_registry.host}",
        "--username",
        "crawler",
        "--password-stdin",
        "--store",
        str(tmp_path),
        input="wrong\n",
    )
    assert result.exit_code == 1
    assert "rejected the credentials of crawler" in result.output
    assert "wrong" not in result.output


def test_basic_auth_from_docker_config(basic_registry, run_cli, tmp_path, no_auth_files):
    docker = no_auth_files / ".docker"
    docker.mkdir()
    auth = base64.b64encode(b"crawler:s3cret-pass").decode()
    (docker / "config.json").write_text(json.dumps({"auths": {basic_registry.host: {"auth": auth}}}))
    store = str(tmp_path / "store")
    index(run_cli, store, f"docker://{basic_registry.host}")
    assert listing(run_cli, store) == basic_registry.expected


def test_an_authfile_is_read_instead_of_the_default_files(basic_registry, run_cli, tmp_path, no_auth_files):
    """skopeo's --authfile: its credentials are used, and the user's config.json (here with a wrong
    password, which would be refused) is not read."""
    docker = no_auth_files / ".docker"
    docker.mkdir()
    wrong = base64.b64encode(b"crawler:wrong-pass").decode()
    (docker / "config.json").write_text(json.dumps({"auths": {basic_registry.host: {"auth": wrong}}}))
    authfile = tmp_path / "auth.json"
    right = base64.b64encode(b"crawler:s3cret-pass").decode()
    authfile.write_text(json.dumps({"auths": {basic_registry.host: {"auth": right}}}))
    result = index(run_cli, str(tmp_path / "default"), f"docker://{basic_registry.host}", ok=False)
    assert result.exit_code == 1 and "rejected the credentials of crawler" in result.output
    store = str(tmp_path / "store")
    index(run_cli, store, f"docker://{basic_registry.host}", "--authfile", authfile)
    assert listing(run_cli, store) == basic_registry.expected


# ---------------------------------------------------------------- bearer tokens


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory):
    root = tmp_path_factory.mktemp("token-registry")
    tokens = TokenServer(str(root / "token"), {"crawler": "t0ken-pass"})
    reg = RealRegistry(str(root / "registry"), auth=tokens.registry_auth())
    try:
        for repo in ("team/app-oci", "team/secret"):
            skopeo_copy(f"oci:{LAYOUT}:v1", f"docker://{reg.host}/{repo}:v1", creds="crawler:t0ken-pass")
        skopeo_copy(
            f"oci-archive:{MULTIARCH}:1.0",
            f"docker://{reg.host}/team/base:1.0",
            all_images=True,
            creds="crawler:t0ken-pass",
        )
        reg.expected = served_documents(
            reg.host, {"team/app-oci": ["v1"], "team/base": ["1.0"]}, creds="crawler:t0ken-pass"
        )
        reg.expected_digests = {doc["digest"] for doc in reg.expected.values()}
        reg.tokens = tokens
        yield reg
    finally:
        reg.stop()
        tokens.stop()


def test_bearer_token_flow(token_registry, run_cli, tmp_path, no_auth_files, monkeypatch):
    tokens = token_registry.tokens
    tokens.denied_repositories = {"team/secret"}
    before = len(tokens.requests)
    monkeypatch.setenv("IMGDEX_PASSWORD", "t0ken-pass")
    store = str(tmp_path)
    result = index(run_cli, store, f"docker://{token_registry.host}", "--username", "crawler", ok=False)
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("imgdex: ") and "note:" not in line]
    assert len(errors) == 1 and f"{token_registry.host}/team/secret" in errors[0] and "401" in errors[0]
    assert listing(run_cli, store) == token_registry.expected
    asked = [(scopes, user) for scopes, user, agent in tokens.requests[before:] if agent.startswith("imgdex")]
    scopes = {scope for s, _ in asked for scope in s}
    assert scopes == {
        "registry:catalog:*",
        "repository:team/app-oci:pull",
        "repository:team/base:pull",
        "repository:team/secret:pull",
    }
    assert {user for _, user in asked} == {"crawler"}
    # one token per scope, reused by every request of the crawl; an insufficient_scope answer is final
    assert len(asked) == len(scopes)


def test_a_registry_token_given_is_sent_as_it_is_as_skopeo_s_registry_token(
    token_registry, run_cli, tmp_path, no_auth_files, monkeypatch
):
    tokens = token_registry.tokens
    token = tokens.sign("crawler", [{"type": "repository", "name": "team/app-oci", "actions": ["pull"]}])
    before = len(tokens.requests)
    store = str(tmp_path / "env")
    monkeypatch.setenv("IMGDEX_REGISTRY_TOKEN", token)
    result = index(run_cli, store, f"docker://{token_registry.host}/team/app-oci")
    assert token not in result.output
    assert listing(run_cli, store) == {k: v for k, v in token_registry.expected.items() if v["name"] == "team/app-oci"}
    assert tokens.requests[before:] == []  # its token server was never asked
    monkeypatch.delenv("IMGDEX_REGISTRY_TOKEN")
    result = run_cli(
        "index",
        f"docker://{token_registry.host}/team/app-oci",
        "--registry-token-stdin",
        "--store",
        str(tmp_path / "stdin"),
        input=token + "\n",
    )
    assert result.exit_code == 0, result.output
    assert listing(run_cli, str(tmp_path / "stdin")) == listing(run_cli, store)
    skopeo = subprocess.run(
        [
            "skopeo",
            "inspect",
            "--raw",
            "--tls-verify=false",
            "--registry-token",
            token,
            f"docker://{token_registry.host}/team/app-oci:v1",
        ],
        capture_output=True,
        timeout=60,
    )
    assert skopeo.returncode == 0 and sha256(skopeo.stdout) in {d["digest"] for d in listing(run_cli, store).values()}

    # a token for another repository: one line, the token never quoted, no other token asked for
    result = run_cli(
        "index",
        f"docker://{token_registry.host}/team/base",
        "--registry-token-stdin",
        "--store",
        str(tmp_path / "other"),
        input=token,
    )
    assert result.exit_code == 1 and token not in result.output
    [line] = [line for line in result.output.splitlines() if line.startswith("imgdex: ") and "note:" not in line]
    assert "401 Unauthorized: the registry token given does not grant access" in line, result.output
    assert tokens.requests[before:] == []


def test_bearer_without_credentials_is_a_clear_error(token_registry, run_cli, tmp_path, no_auth_files):
    result = index(run_cli, str(tmp_path), f"docker://{token_registry.host}", ok=False)
    assert result.exit_code == 1
    assert "cannot list the repositories" in result.output and "401" in result.output
    assert "no credentials were given" in result.output


# ---------------------------------------------------------------- identity tokens (OAuth2 refresh tokens)

# What `az acr login` leaves in config.json: a placeholder user with no password, and the token.
IDENTITY_USER = "00000000-0000-0000-0000-000000000000"


def _identity_config(home, host: str, token: str) -> str:
    docker = home / ".docker"
    docker.mkdir(exist_ok=True)
    auth = base64.b64encode(f"{IDENTITY_USER}:".encode()).decode()
    path = docker / "config.json"
    path.write_text(json.dumps({"auths": {host: {"auth": auth, "identitytoken": token}}}))
    return str(path)


@pytest.fixture
def identity(token_registry, monkeypatch):
    """A refresh token the token server knows, and a registry that denies nothing for the test."""
    tokens = token_registry.tokens
    token = "rt-" + os.urandom(12).hex()
    monkeypatch.setattr(tokens, "denied_repositories", set())
    monkeypatch.setattr(tokens, "rotate", False)
    monkeypatch.setitem(tokens.refresh_tokens, token, "crawler")
    return token


TOKEN_REPOSITORIES = ("team/app-oci", "team/base")


def _repositories(host: str) -> list[str]:
    return [f"docker://{host}/{repo}" for repo in TOKEN_REPOSITORIES]


def test_identity_token_from_docker_config(token_registry, identity, run_cli, tmp_path, no_auth_files):
    tokens = token_registry.tokens
    _identity_config(no_auth_files, token_registry.host, identity)
    gets, posts = len(tokens.requests), len(tokens.posts)
    store = str(tmp_path / "store")
    result = index(run_cli, store, *_repositories(token_registry.host))
    assert identity not in result.output
    assert listing(run_cli, store) == token_registry.expected
    asked = tokens.posts[posts:]
    assert {form["scope"][0] for form in asked} == {f"repository:{repo}:pull" for repo in TOKEN_REPOSITORIES}
    for form in asked:
        assert form["grant_type"] == ["refresh_token"] and form["refresh_token"] == [identity]
        assert form["client_id"] == ["imgdex"] and form["service"] == [tokens.service]
        assert form["user-agent"][0].startswith("imgdex")
    # the placeholder user's empty password is never tried as basic credentials
    assert not [agent for _, _, agent in tokens.requests[gets:] if agent.startswith("imgdex")]


def test_identity_token_from_a_credential_helper(
    token_registry, identity, run_cli, tmp_path, no_auth_files, monkeypatch
):
    helpers = tmp_path / "bin"
    helpers.mkdir()
    helper = helpers / "docker-credential-acr-test"
    answer = json.dumps({"Username": "<token>", "Secret": identity})
    helper.write_text(f"#!/bin/sh\ncat > /dev/null\necho '{answer}'\n")
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{helpers}{os.pathsep}{os.environ['PATH']}")
    docker = no_auth_files / ".docker"
    docker.mkdir()
    (docker / "config.json").write_text(json.dumps({"credHelpers": {token_registry.host: "acr-test"}}))
    posts = len(token_registry.tokens.posts)
    store = str(tmp_path / "store")
    result = index(run_cli, store, *_repositories(token_registry.host))
    assert identity not in result.output
    assert listing(run_cli, store) == token_registry.expected
    assert {form["refresh_token"][0] for form in token_registry.tokens.posts[posts:]} == {identity}


def test_a_rotated_refresh_token_is_the_one_traded_next(token_registry, identity, run_cli, tmp_path, no_auth_files):
    tokens = token_registry.tokens
    tokens.rotate = True  # each use answers with a new refresh token and retires the one used
    _identity_config(no_auth_files, token_registry.host, identity)
    posts = len(tokens.posts)
    store = str(tmp_path / "store")
    # the whole registry, four jobs: the catalog's and three repositories' tokens, asked in parallel
    tokens.denied_repositories = {"team/secret"}
    result = index(run_cli, store, f"docker://{token_registry.host}", "--jobs", "4", ok=False)
    errors = [line for line in result.output.splitlines() if line.startswith("imgdex: ") and "note:" not in line]
    assert len(errors) == 1 and f"{token_registry.host}/team/secret" in errors[0], result.output
    assert listing(run_cli, store) == token_registry.expected
    used = [form["refresh_token"][0] for form in tokens.posts[posts:]]
    assert used[0] == identity and len(set(used)) >= 4  # every later request traded a newer one
    assert not any(token in result.output for token in used)


def test_a_refused_identity_token_is_one_line_without_the_secret(
    token_registry, identity, run_cli, tmp_path, no_auth_files
):
    wrong = "rt-" + os.urandom(12).hex()
    path = _identity_config(no_auth_files, token_registry.host, wrong)
    result = index(run_cli, str(tmp_path / "store"), *_repositories(token_registry.host), ok=False)
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("imgdex: ") and "note:" not in line]
    assert len(errors) == len(TOKEN_REPOSITORIES), result.output
    for line in errors:
        assert f"refused the identity token of {path} ({token_registry.host})" in line, line
        assert "invalid_grant: refresh token not valid" in line
    assert wrong not in result.output


def test_skopeo_trades_the_same_identity_token(token_registry, identity, tmp_path):
    """The token server's refresh-token grant is the one a real client speaks: skopeo reads the
    same auth file entry and is served by it."""
    tokens = token_registry.tokens
    auth = base64.b64encode(f"{IDENTITY_USER}:".encode()).decode()
    authfile = tmp_path / "auth.json"
    authfile.write_text(json.dumps({"auths": {token_registry.host: {"auth": auth, "identitytoken": identity}}}))
    posts = len(tokens.posts)
    ref = f"docker://{token_registry.host}/team/base:1.0"
    raw = subprocess.run(
        [need_skopeo("read a registry with an identity token"), "inspect", "--raw", "--tls-verify=false"]
        + ["--authfile", str(authfile), ref],
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout
    assert sha256(raw) in token_registry.expected_digests
    skopeo_forms = tokens.posts[posts:]
    assert skopeo_forms and all(form["refresh_token"] == [identity] for form in skopeo_forms)
    assert {form["grant_type"][0] for form in skopeo_forms} == {"refresh_token"}


def test_an_identity_token_does_not_answer_a_basic_challenge(basic_registry, run_cli, tmp_path, no_auth_files):
    path = _identity_config(no_auth_files, basic_registry.host, "rt-not-a-password")
    result = index(run_cli, str(tmp_path / "store"), f"docker://{basic_registry.host}", ok=False)
    assert result.exit_code == 1
    assert f"the credentials for {basic_registry.host} are an identity token ({path} ({basic_registry.host}))" in (
        result.output
    )
    assert "rt-not-a-password" not in result.output


# ---------------------------------------------------------------- schema1


def test_schema1_manifest_is_recorded(run_cli, tmp_path):
    reg = RealRegistry(str(tmp_path / "registry"), extra="compatibility:\n  schema1:\n    enabled: true\n")
    try:
        skopeo_copy(f"oci:{LAYOUT}:v1", f"docker://{reg.host}/team/old:s1", fmt="v2s1")
        skopeo_copy(f"oci:{LAYOUT}:v1", f"docker://{reg.host}/team/new:v1")
        store = str(tmp_path / "store")
        index(run_cli, store, f"docker://{reg.host}")
        old = get(run_cli, store, f"{reg.host}/team/old:s1")
        new = get(run_cli, store, f"{reg.host}/team/new:v1")
        status, headers, raw = http(
            "GET",
            f"{reg.url}/v2/team/old/manifests/s1",
            headers={"Accept": "application/vnd.docker.distribution.manifest.v1+prettyjws"},
        )
        assert status == 200 and headers["Content-Type"].startswith("application/vnd.docker.distribution.manifest.v1")
        assert old["digest"] == headers["Docker-Content-Digest"]
        assert [(x["digest"], x["size"]) for x in old["layers"]] == [(x["digest"], x["size"]) for x in new["layers"]]
        assert old["compressedSize"] == new["compressedSize"]
        assert old["createdAt"] == new["createdAt"]
        assert "config" not in old
    finally:
        reg.stop()


def test_no_creds_crawls_anonymously_whatever_the_auth_files_hold(basic_registry, run_cli, tmp_path, no_auth_files):
    docker = no_auth_files / ".docker"
    docker.mkdir()
    right = base64.b64encode(b"crawler:s3cret-pass").decode()
    (docker / "config.json").write_text(json.dumps({"auths": {basic_registry.host: {"auth": right}}}))
    index(run_cli, str(tmp_path / "with"), f"docker://{basic_registry.host}")
    result = index(run_cli, str(tmp_path / "without"), f"docker://{basic_registry.host}", "--no-creds", ok=False)
    assert result.exit_code == 1
    assert f"authentication required and no credentials for {basic_registry.host}" in result.output


@pytest.mark.parametrize(
    "given",
    [("--username", "crawler"), ("--authfile", "auth.json"), ("--password-stdin",), ("--registry-token-stdin",)],
)
def test_no_creds_with_credentials_is_a_usage_error(run_cli, tmp_path, given):
    (tmp_path / "auth.json").write_text("{}")
    given = tuple(str(tmp_path / part) if part == "auth.json" else part for part in given)
    result = run_cli("index", "docker://127.0.0.1:1/a", "--no-creds", *given, "--store", tmp_path / "s")
    assert result.exit_code == 2 and f"--no-creds and {given[0]} cannot both be given" in result.output


@pytest.mark.parametrize(
    "args, stdin, said",
    [
        (
            ["docker://127.0.0.1:1/a", "--password-stdin", "--username", "u", "--registry-token-stdin"],
            "x",
            "--password-stdin and --registry-token-stdin cannot both read standard input",
        ),
        (
            ["docker://127.0.0.1:1/a", "--registry-token-stdin"],
            "\n",
            "--registry-token-stdin: standard input held no token",
        ),
        (["docker://127.0.0.1:1/a", "-", "--registry-token-stdin"], "t", "cannot both read standard input"),
        (
            ["x.tar", "--registry-token-stdin"],
            "t",
            "--registry-token-stdin is for docker:// sources, and none is given",
        ),
    ],
)
def test_a_registry_token_from_stdin_that_cannot_be_had_is_a_usage_error(run_cli, tmp_path, args, stdin, said):
    result = run_cli("index", *args, "--store", tmp_path / "s", input=stdin)
    assert result.exit_code == 2 and said in result.output, result.output


def test_an_exported_registry_token_is_ignored_off_registries_and_by_no_creds(run_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("IMGDEX_REGISTRY_TOKEN", "t0ken")
    from indexer.sources.registry_client import RegistryOptions

    seen = []
    real = RegistryOptions.__init__

    def spy(self, *args, **kwargs):
        real(self, *args, **kwargs)
        seen.append(self.registry_token)

    monkeypatch.setattr(RegistryOptions, "__init__", spy)
    run_cli("index", "docker://127.0.0.1:1/a", "--no-creds", "--retry-times", "0", "--store", tmp_path / "a")
    run_cli("index", "docker://127.0.0.1:1/a", "--retry-times", "0", "--store", tmp_path / "b")
    assert seen == ["", "t0ken"]
