"""docker:// against answers a real registry never gives: each is one clear error, and the rest lands."""

import dataclasses
import json
import re
import threading
import time

import pytest

from builders import OCI_INDEX, OCI_MANIFEST, Blobs, digest_of, dumps
from indexer.errors import SourceError
from indexer.model import KIND_ARTIFACT, ImageRecord
from indexer.sources import parse_source
from indexer.sources.parse import Context
from indexer.sources.registry_client import RegistryOptions
from registry_server import Reply


def image():
    blobs = Blobs()
    descriptor = blobs.image(layers=(b"only-layer",))
    manifest = blobs.blobs[descriptor["digest"]]
    config_digest = json.loads(manifest)["config"]["digest"]
    layer_digest = json.loads(manifest)["layers"][0]["digest"]
    return manifest, {config_digest: blobs.blobs[config_digest]}, layer_digest


def crawl(spec, **options):
    settings = dict(timeout=1.0, retries=2, backoff=0.01, jobs=4, auth_files=[])
    settings.update(options)
    source = parse_source(spec, registry_options=RegistryOptions(**settings))
    notes = []
    items = list(source.records(Context(source.kind, source.location, note=notes.append)))
    records = [i for i in items if isinstance(i, ImageRecord)]
    errors = [str(i) for i in items if isinstance(i, SourceError)]
    return records, errors, notes


class Flaky:
    """The first `failures` requests get `reply`, the rest `then`; the times of the requests are kept."""

    def __init__(self, reply: Reply, then: Reply, failures: int = 1):
        self.reply, self.then, self.failures = reply, then, failures
        self.times: list[float] = []
        self.lock = threading.Lock()

    def __call__(self, method, headers):
        with self.lock:
            self.times.append(time.monotonic())
            return self.reply if len(self.times) <= self.failures else self.then


def test_each_bad_answer_is_one_clear_error_and_the_rest_land(fake):
    manifest, configs, layer_digest = image()
    good_digest = digest_of(manifest)
    json_type = {"Content-Type": "application/json"}
    repos = {}

    def add(name, **kwargs):
        repos[name] = kwargs
        fake.add_image(name, {"v1": manifest}, configs, OCI_MANIFEST, **kwargs)

    add("good/one")
    add("bad/digest", digest_header="sha256:" + "0" * 64)
    truncated = manifest[:-7]
    fake.add_image("bad/truncated", {"v1": truncated}, configs, OCI_MANIFEST)
    add("bad/cut")
    fake.routes["/v2/bad/cut/manifests/v1"] = Reply(
        200, manifest[:40], {"Content-Type": OCI_MANIFEST}, content_length=len(manifest)
    )
    add("bad/missing")
    del fake.routes["/v2/bad/missing/manifests/v1"]
    add("bad/denied")
    fake.routes["/v2/bad/denied/tags/list"] = Reply(
        401,
        b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}',
        {"WWW-Authenticate": 'Basic realm="fake"', **json_type},
    )
    add("bad/busy")
    fake.routes["/v2/bad/busy/manifests/v1"] = Reply(429, b"", {"Retry-After": "0"})
    add("bad/broken")
    fake.routes["/v2/bad/broken/manifests/v1"] = Reply(
        500, b'{"errors":[{"code":"UNKNOWN","message":"disk on fire"}]}', json_type
    )
    add("bad/slow")
    fake.routes["/v2/bad/slow/manifests/v1"] = Reply(
        200, manifest, {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": good_digest}, delay=2.5
    )
    add("bad/noconfig")
    fake.routes.pop(f"/v2/bad/noconfig/blobs/{next(iter(configs))}")
    fake.routes["/v2/bad/tagsjson/tags/list"] = Reply(200, b'{"name": "bad/tagsjson", "tags": [', json_type)
    add("flaky/busy")
    busy = Flaky(Reply(429, b"", {"Retry-After": "1"}), fake.routes["/v2/flaky/busy/manifests/v1"])
    fake.routes["/v2/flaky/busy/manifests/v1"] = busy
    add("flaky/down")
    down = Flaky(Reply(503, b""), fake.routes["/v2/flaky/down/manifests/v1"])
    fake.routes["/v2/flaky/down/manifests/v1"] = down
    fake.catalog(sorted(list(repos) + ["bad/truncated", "bad/tagsjson"]))

    records, errors, _ = crawl(f"docker://{fake.host}")

    landed = sorted(r.name for r in records)
    assert landed == ["flaky/busy", "flaky/down", "good/one"]
    assert all(r.digest == good_digest for r in records)
    by_repo = {}
    for error in errors:
        match = re.match(rf"^{re.escape(fake.host)}/([^:@ ]+)", error)  # every error names host/repo first
        assert match, error
        by_repo.setdefault(match.group(1), []).append(error)
    assert sorted(by_repo) == [
        "bad/broken",
        "bad/busy",
        "bad/cut",
        "bad/denied",
        "bad/digest",
        "bad/missing",
        "bad/noconfig",
        "bad/slow",
        "bad/tagsjson",
        "bad/truncated",
    ], errors
    assert all(len(v) == 1 for v in by_repo.values()), errors

    def one(repo):
        return by_repo[repo][0]

    assert "Docker-Content-Digest" in one("bad/digest") and "hash to" in one("bad/digest")
    assert "not valid JSON" in one("bad/truncated")
    assert "cut short" in one("bad/cut")
    assert "404" in one("bad/missing")
    assert "401 Unauthorized" in one("bad/denied") and "no credentials" in one("bad/denied")
    assert "429" in one("bad/busy") and "after 3 attempts" in one("bad/busy")
    assert "500" in one("bad/broken") and "disk on fire" in one("bad/broken")
    assert "no complete answer within 1 s" in one("bad/slow")
    assert "GET blob" in one("bad/noconfig") and "404" in one("bad/noconfig")
    assert "not valid JSON" in one("bad/tagsjson")

    assert fake.hits["/v2/bad/broken/manifests/v1"] == 3  # the first try and two retries
    assert busy.times[1] - busy.times[0] >= 0.95  # Retry-After: 1 honoured
    assert not any(path.endswith(layer_digest) for path in fake.hits)  # layers are never fetched


def test_catalog_page_loop_is_reported_and_the_repositories_found_still_land(fake):
    manifest, configs, _ = image()
    for repo in ("a/one", "b/two"):
        fake.add_image(repo, {"v1": manifest}, configs, OCI_MANIFEST)
    json_type = {"Content-Type": "application/json"}
    fake.routes["/v2/_catalog"] = Reply(
        200, b'{"repositories": ["a/one"]}', {**json_type, "Link": '</v2/_catalog?last=a%2Fone&n=1>; rel="next"'}
    )
    fake.routes["/v2/_catalog?last=a%2Fone&n=1"] = Reply(
        200, b'{"repositories": ["b/two"]}', {**json_type, "Link": '</v2/_catalog>; rel="next"'}
    )
    records, errors, _ = crawl(f"docker://{fake.host}")
    assert sorted(r.name for r in records) == ["a/one", "b/two"]
    assert len(errors) == 1 and "loops back" in errors[0] and "catalog" in errors[0]


def test_catalog_pages_are_followed(fake):
    manifest, configs, _ = image()
    names = [f"repo/n{i}" for i in range(5)]
    for repo in names:
        fake.add_image(repo, {"v1": manifest, "v2": manifest}, configs, OCI_MANIFEST)
    json_type = {"Content-Type": "application/json"}
    pages = [names[0:2], names[2:4], names[4:]]
    for number, page in enumerate(pages):
        path = "/v2/_catalog" if number == 0 else f"/v2/_catalog?last={pages[number - 1][-1].replace('/', '%2F')}&n=2"
        headers = dict(json_type)
        if number + 1 < len(pages):
            headers["Link"] = f'<http://{fake.host}/v2/_catalog?last={page[-1].replace("/", "%2F")}&n=2>; rel="next"'
        fake.routes[path] = Reply(200, json.dumps({"repositories": page}).encode(), headers)
    records, errors, _ = crawl(f"docker://{fake.host}", repository_prefix="repo")
    assert not errors
    assert sorted(r.name for r in records) == names
    assert all(r.tags == ("v1", "v2") for r in records)  # two tags of one manifest: one record


def test_link_to_another_host_is_refused(fake):
    fake.routes["/v2/_catalog"] = Reply(
        200, b'{"repositories": ["x/y"]}', {"Link": '<http://127.0.0.2:1/v2/_catalog?last=x>; rel="next"'}
    )
    _, errors, _ = crawl(f"docker://{fake.host}")
    assert any("another host" in e for e in errors)


def test_unreachable_registry_fails_the_source(fake):
    host = fake.host
    fake.stop()
    with pytest.raises(SourceError, match="connection refused"):
        crawl(f"docker://{host}", retries=0)


def test_not_a_registry(fake):
    fake.routes["/v2/"] = Reply(404, b"not here")
    with pytest.raises(SourceError, match="not a registry"):
        crawl(f"docker://{fake.host}")


def test_catalog_refused_fails_the_source(fake):
    fake.routes["/v2/_catalog"] = Reply(404, b'{"errors":[{"code":"UNSUPPORTED","message":"catalog disabled"}]}')
    with pytest.raises(SourceError, match="cannot list the repositories.*UNSUPPORTED"):
        crawl(f"docker://{fake.host}")


def test_artifacts_and_unknown_manifests_never_crash(fake):
    blobs = Blobs()
    config = blobs.add(b'{"chart": "demo"}', "application/vnd.cncf.helm.config.v1+json")
    layer = blobs.add(b"chart-bytes", "application/vnd.cncf.helm.chart.content.v1.tar+gzip")
    artifact = dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": [layer]})
    fake.add_image("charts/demo", {"0.1.0": artifact}, {config["digest"]: blobs.blobs[config["digest"]]}, OCI_MANIFEST)
    odd = dumps({"mediaType": "application/vnd.example.thing.v1+json", "payload": 1})
    fake.add_image("odd/thing", {"v1": odd}, {}, "application/vnd.example.thing.v1+json")
    fake.catalog(["charts/demo", "odd/thing"])
    records, errors, notes = crawl(f"docker://{fake.host}")
    assert not errors
    assert [(r.name, r.kind, r.tags) for r in records] == [("charts/demo", KIND_ARTIFACT, ("0.1.0",))]
    assert any("odd/thing" in n and "unknown media type" in n for n in notes)


def test_a_manifest_served_as_the_other_kind_is_one_error_and_the_rest_land(fake):
    """The Content-Type names the kind of the tag's manifest, and an index's descriptor that of each
    child: a body of the other kind is refused, as containerd refuses it, not read by its own word."""
    manifest, configs, _ = image()
    fake.add_image("good/app", {"v1": manifest}, configs, OCI_MANIFEST)
    # An image manifest served as an index, and an index served as an image manifest.
    fake.add_image("bad/as-index", {"v1": manifest}, configs, OCI_INDEX)
    index = dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []})
    fake.add_image("bad/as-manifest", {"v1": index}, {}, "application/vnd.docker.distribution.manifest.v2+json")
    # An index whose child, listed as an image manifest, is an index.
    inner = dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": digest_of(manifest), "size": len(manifest)}],
        }
    )
    outer = dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": digest_of(inner), "size": len(inner)}],
        }
    )
    fake.add_image("bad/child", {"v1": outer}, configs, OCI_INDEX)
    fake.routes[f"/v2/bad/child/manifests/{digest_of(inner)}"] = Reply(
        200, inner, {"Content-Type": OCI_INDEX, "Docker-Content-Digest": digest_of(inner)}
    )
    fake.catalog(["bad/as-index", "bad/as-manifest", "bad/child", "good/app"])
    records, errors, _ = crawl(f"docker://{fake.host}")
    host = fake.host
    assert sorted(errors) == sorted(
        [
            f"{host}/bad/as-index:v1: manifest {digest_of(manifest)} is listed as {OCI_INDEX} "
            f"but its own mediaType is {OCI_MANIFEST!r}",
            f"{host}/bad/as-manifest:v1: manifest {digest_of(index)} is listed as "
            f"application/vnd.docker.distribution.manifest.v2+json but its own mediaType is {OCI_INDEX!r}",
            f"{host}/bad/child:v1: manifest {digest_of(inner)} is listed as {OCI_MANIFEST} "
            f"but its own mediaType is {OCI_INDEX!r}",
        ]
    )
    landed = {(r.name, r.tags, r.kind) for r in records}
    assert ("good/app", ("v1",), "image") in landed
    assert not any(name == "bad/as-index" or name == "bad/as-manifest" for name, _, _ in landed)


@pytest.mark.parametrize(
    "served", [OCI_INDEX, "application/vnd.docker.distribution.manifest.v2+json", "application/octet-stream", None]
)
def test_a_child_fetched_by_digest_is_judged_by_its_listing_and_its_body_not_its_content_type(fake, served):
    """An index's entry names the child's kind and its digest its bytes: the Content-Type of the
    by-digest answer adds nothing the registry could not say otherwise of the same bytes, so the
    child reads as it does from a layout or an archive, whatever the header (see Bad input)."""
    manifest, configs, _ = image()
    entry = {"mediaType": OCI_MANIFEST, "digest": digest_of(manifest), "size": len(manifest)}
    index = dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry]})
    fake.add_image("lib/app", {"v1": index}, configs, OCI_INDEX)
    headers = {"Docker-Content-Digest": digest_of(manifest)}
    fake.routes[f"/v2/lib/app/manifests/{digest_of(manifest)}"] = Reply(
        200, manifest, headers if served is None else {**headers, "Content-Type": served}
    )
    fake.catalog(["lib/app"])
    records, errors, notes = crawl(f"docker://{fake.host}")
    assert errors == [] and not any("skipped" in note for note in notes)
    assert [(r.digest, r.kind, r.media_type) for r in records] == [
        (digest_of(index), "index", OCI_INDEX),
        (digest_of(manifest), "image", OCI_MANIFEST),
    ]


@pytest.mark.parametrize("encode", ["bom", "utf-16", "nan"])
def test_a_manifest_or_config_that_is_not_plain_utf8_json_is_refused(fake, encode):
    """As Docker and containerd read JSON: UTF-8 without a byte order mark, and no NaN."""
    encoded = {
        "bom": lambda text: b"\xef\xbb\xbf" + text,
        "utf-16": lambda text: text.decode().encode("utf-16"),
        "nan": lambda text: text[: text.rindex(b"}")] + b',"x":NaN}',
    }[encode]
    manifest, configs, _ = image()
    fake.add_image("good/app", {"v1": manifest}, configs, OCI_MANIFEST)
    fake.add_image("bad/manifest", {"v1": encoded(manifest)}, configs, OCI_MANIFEST)
    blobs = Blobs()
    config = blobs.add(encoded(b'{"os":"linux"}'), "application/vnd.oci.image.config.v1+json")
    with_config = dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": []})
    fake.add_image("bad/config", {"v1": with_config}, blobs.blobs, OCI_MANIFEST)
    fake.catalog(["bad/config", "bad/manifest", "good/app"])
    records, errors, _ = crawl(f"docker://{fake.host}")
    reason = {
        "bom": "it starts with a UTF-8 byte order mark",
        "utf-16": "its first bytes are UTF-16 text",
        "nan": "NaN is not a JSON value",
    }[encode]
    assert len(errors) == 2 and all(f"is not valid JSON ({reason}" in error for error in errors), errors
    assert [r.name for r in records] == ["good/app"]


def test_unsigned_schema1_keeps_what_it_can(fake):
    layer_a, layer_b = digest_of(b"base"), digest_of(b"top")
    v1 = [
        {
            "id": "b",
            "parent": "a",
            "created": "2020-01-02T03:04:05.123456789Z",
            "os": "linux",
            "config": {"Env": ["A=1"], "Labels": {"k": "v"}},
            "container_config": {"Cmd": ["/bin/sh", "-c", "add top"]},
        },
        {
            "id": "e",
            "parent": "a",
            "throwaway": True,
            "created": "2020-01-02T03:04:04Z",
            "container_config": {"Cmd": ["ENV A=1"]},
        },
        {"id": "a", "created": "2020-01-01T00:00:00Z"},
    ]
    manifest = dumps(
        {
            "schemaVersion": 1,
            "name": "old/one",
            "tag": "v1",
            "architecture": "amd64",
            "fsLayers": [{"blobSum": layer_b}, {"blobSum": digest_of(b"empty")}, {"blobSum": layer_a}],
            "history": [{"v1Compatibility": json.dumps(entry)} for entry in v1],
        }
    )
    fake.add_image("old/one", {"v1": manifest}, {}, "application/vnd.docker.distribution.manifest.v1+json")
    fake.routes[f"/v2/old/one/blobs/{layer_a}"] = Reply(200, b"x" * 11)
    fake.routes[f"/v2/old/one/blobs/{layer_b}"] = Reply(200, b"x" * 7)
    fake.catalog(["old/one"])
    records, errors, _ = crawl(f"docker://{fake.host}")
    assert not errors
    [record] = records
    assert record.digest == digest_of(manifest) and record.config is None
    assert [(layer.digest, layer.size) for layer in record.layers] == [(layer_a, 11), (layer_b, 7)]
    assert record.created == "2020-01-02T03:04:05.123456789Z" and str(record.platform) == "linux/amd64"
    assert record.env == ("A=1",) and record.labels == (("k", "v"),)
    assert [h.empty_layer for h in record.history] == [False, True, False]
    assert fake.log.count(("HEAD", f"/v2/old/one/blobs/{layer_a}")) == 1  # sizes by HEAD, bodies never


@pytest.mark.parametrize("length", ["\u00b2", "9" * 5000])
def test_a_content_length_that_is_no_plain_number_is_no_length(fake, length):
    """`²` passes str.isdigit and fails int(), as 5,000 digits do: a manifest sent with such a
    length is read to the end of its connection, and a size given only by one is no size."""
    manifest, configs, _ = image()
    fake.add_image("odd/length", {"v1": manifest}, configs, OCI_MANIFEST)
    fake.routes["/v2/odd/length/manifests/v1"] = dataclasses.replace(
        fake.routes["/v2/odd/length/manifests/v1"], content_length=length
    )
    layer = digest_of(b"layer")
    schema1 = dumps(
        {
            "schemaVersion": 1,
            "name": "odd/head",
            "tag": "v1",
            "architecture": "amd64",
            "fsLayers": [{"blobSum": layer}],
            "history": [{"v1Compatibility": json.dumps({"id": "a", "created": "2020-01-01T00:00:00Z"})}],
        }
    )
    fake.add_image("odd/head", {"v1": schema1}, {}, "application/vnd.docker.distribution.manifest.v1+json")
    fake.routes[f"/v2/odd/head/blobs/{layer}"] = Reply(200, b"x" * 3, content_length=length)
    fake.catalog(["odd/length", "odd/head"])
    records, errors, _ = crawl(f"docker://{fake.host}")
    assert [r.name for r in records] == ["odd/length"] and records[0].digest == digest_of(manifest)
    assert errors == [f"{fake.host}/odd/head:v1: HEAD blob {layer}: 200, no size"]


def test_plain_http_only_for_loopback_and_insecure_hosts():
    from indexer.sources.registry_client import RegistryClient

    def allowed(host, insecure=()):
        return RegistryClient(
            host, host, RegistryOptions(insecure_registries=insecure, auth_files=[]), None
        ).plain_http_allowed

    assert allowed("127.0.0.1:5000") and allowed("localhost:5000") and allowed("[::1]:5000")
    assert not allowed("registry.example.com") and not allowed("10.1.2.3:5000")
    assert allowed("registry.example.com", ("registry.example.com",))
    assert allowed("10.1.2.3:5000", ("10.0.0.0/8",))
    assert not allowed("10.1.2.3:5000", ("10.1.2.3:6000",))


def test_a_missing_child_costs_only_that_child(fake):
    blobs = Blobs()
    amd = blobs.image(layers=(b"amd",))
    arm = blobs.image(layers=(b"arm",), arch="arm64")
    top = blobs.index(
        [
            dict(amd, platform={"os": "linux", "architecture": "amd64"}),
            dict(arm, platform={"os": "linux", "architecture": "arm64"}),
        ]
    )
    index_bytes = blobs.blobs[top["digest"]]
    fake.add_image("multi/app", {"1.0": index_bytes}, {}, "application/vnd.oci.image.index.v1+json")
    amd_manifest = blobs.blobs[amd["digest"]]
    config = json.loads(amd_manifest)["config"]["digest"]
    fake.routes[f"/v2/multi/app/manifests/{amd['digest']}"] = Reply(200, amd_manifest, {"Content-Type": OCI_MANIFEST})
    fake.routes[f"/v2/multi/app/blobs/{config}"] = Reply(200, blobs.blobs[config])
    records, errors, _ = crawl(f"docker://{fake.host}/multi/app")
    assert sorted((r.kind, r.digest) for r in records) == sorted([("index", top["digest"]), ("image", amd["digest"])])
    assert len(errors) == 1 and arm["digest"] in errors[0] and "404" in errors[0]


def test_a_link_or_realm_that_is_no_url_is_one_line(fake):
    manifest, configs, _ = image()
    json_type = {"Content-Type": "application/json"}
    for repo in ("a/one", "b/two"):
        fake.add_image(repo, {"v1": manifest}, configs, OCI_MANIFEST)
    bad_link = {**json_type, "Link": '<http://[zz/v2/_catalog?last=b>; rel="next"'}
    fake.routes["/v2/_catalog"] = Reply(200, b'{"repositories": ["a/one", "b/two"]}', bad_link)
    fake.routes["/v2/b/two/tags/list"] = Reply(
        200, b'{"tags": ["v1"]}', {**json_type, "Link": '<http://[zz/x>; rel="next"'}
    )

    records, errors, _ = crawl(f"docker://{fake.host}")

    assert [r.name for r in records] == ["a/one"]
    assert len(errors) == 2, errors
    assert errors[0].startswith(f"{fake.host} catalog") and "no valid URL" in errors[0], errors
    assert errors[1].startswith(f"{fake.host}/b/two") and "no valid URL" in errors[1], errors

    challenge = {**json_type, "WWW-Authenticate": 'Bearer realm="http://[zz/token",service="x"'}
    fake.routes["/v2/a/one/tags/list"] = Reply(401, b"{}", challenge)
    _, errors, _ = crawl(f"docker://{fake.host}/a/one")
    assert len(errors) == 1 and "the token realm 'http://[zz/token' is not a valid URL" in errors[0], errors


def test_a_manifest_asked_for_by_digest_that_hashes_otherwise_says_what_was_asked(fake):
    """No Docker-Content-Digest came with the answer: the message used to say the registry claimed
    the digest in that header."""
    manifest, configs, _ = image()
    fake.add_image("a/app", {"v1": manifest}, configs, OCI_MANIFEST)
    asked = digest_of(manifest)
    other = manifest.replace(b"{", b"{ ", 1)
    fake.routes[f"/v2/a/app/manifests/{asked}"] = Reply(200, other, {"Content-Type": OCI_MANIFEST})

    records, errors, _ = crawl(f"docker://{fake.host}/a/app@{asked}")

    assert records == []
    assert errors == [
        f"{fake.host}/a/app@{asked}: asked for manifest {asked}, "
        f"but the bytes the registry answered with hash to {digest_of(other)}"
    ]


@pytest.mark.parametrize("served", ["its sha256", "none", "another sha256", "another sha512"])
def test_a_manifest_asked_for_by_sha512_may_be_answered_with_its_sha256(fake, served):
    """Registries name a manifest by sha256 in Docker-Content-Digest whatever it was asked by: one
    asked for by its sha512 digest was refused for that. A header that names other bytes still is."""
    import hashlib

    manifest, configs, _ = image()
    fake.add_image("a/app", {"v1": manifest}, configs, OCI_MANIFEST)
    asked = "sha512:" + hashlib.sha512(manifest).hexdigest()
    header = {
        "its sha256": digest_of(manifest),
        "none": "",
        "another sha256": "sha256:" + "0" * 64,
        "another sha512": "sha512:" + "1" * 128,
    }[served]
    fake.routes[f"/v2/a/app/manifests/{asked}"] = Reply(
        200, manifest, {"Content-Type": OCI_MANIFEST, **({"Docker-Content-Digest": header} if header else {})}
    )

    records, errors, _ = crawl(f"docker://{fake.host}/a/app@{asked}")

    if served in ("its sha256", "none"):
        assert not errors and [(r.name, r.digest) for r in records] == [("a/app", asked)], errors
    else:
        assert records == []
        assert errors == [f"{fake.host}/a/app@{asked}: asked for manifest {asked}, the registry answered with {header}"]


def test_listed_values_that_are_no_strings_are_skipped_and_the_rest_kept(fake):
    """A tags or catalog page listing a number, null or an object beside valid names failed the
    whole listing ('the answer has no list of tags'); invalid string names were skipped alone."""
    manifest, configs, _ = image()
    json_type = {"Content-Type": "application/json"}
    for repo in ("a/one", "b/two"):
        fake.add_image(repo, {"v1": manifest, "5": manifest}, configs, OCI_MANIFEST)
    fake.routes["/v2/_catalog"] = Reply(200, b'{"repositories": ["a/one", 7, null, "b/two"]}', json_type)
    fake.routes["/v2/a/one/tags/list"] = Reply(200, b'{"name": "a/one", "tags": ["v1", 5, null, {}, true]}', json_type)

    records, errors, notes = crawl(f"docker://{fake.host}")

    assert not errors, errors
    assert sorted((r.name, r.tags) for r in records) == [("a/one", ("v1",)), ("b/two", ("5", "v1"))]
    skipped = sorted(n for n in notes if "skipped" in n)
    assert len(skipped) == 6, notes  # 7 and null from the catalog; 5, null, {} and true from a/one's tags
    assert any("skipped tag '<5>'" in n for n in skipped) and any("'<null>'" in n for n in skipped), skipped


@pytest.mark.parametrize("realm", ["ftp://x/", "http://[zz/token", "http://auth.example.com/token"])
def test_one_repositorys_unusable_realm_fails_that_repository_only(fake, realm):
    """The host's /v2/ is anonymous; one repository challenges with a realm no token is asked of
    (another scheme, no URL, plain HTTP to a host that is not loopback). It was remembered for the
    host, so every repository crawled after it failed with its reason."""
    manifest, configs, _ = image()
    for repo in ("a/evil", "b/good", "c/good"):
        fake.add_image(repo, {"v1": manifest}, configs, OCI_MANIFEST)
    challenge = {"Content-Type": "application/json", "WWW-Authenticate": f'Bearer realm="{realm}",service="x"'}
    fake.routes["/v2/a/evil/tags/list"] = Reply(401, b"{}", challenge)
    fake.routes["/v2/_catalog"] = Reply(
        200, b'{"repositories": ["a/evil", "b/good", "c/good"]}', {"Content-Type": "application/json"}
    )

    records, errors, _ = crawl(f"docker://{fake.host}", jobs=1)

    assert sorted(r.name for r in records) == ["b/good", "c/good"]
    assert len(errors) == 1 and errors[0].startswith(f"{fake.host}/a/evil: "), errors
    assert "realm" in errors[0] or "for a token over plain HTTP" in errors[0], errors


def endless(key: str, path: str, per_page: int = 10):
    """A listing whose every page is new and links to the next, for ever."""
    pages = []

    def page(method, headers):
        pages.append(1)
        number = len(pages)
        entries = [f"e{number}x{i}" if key == "tags" else f"n/e{number}x{i}" for i in range(per_page)]
        link = f'<{path}?n={per_page}&last={number}>; rel="next"'
        return Reply(200, json.dumps({key: entries}).encode(), {"Content-Type": "application/json", "Link": link})

    return page


def test_a_listing_that_pages_for_ever_is_cut_at_its_bound_and_the_rest_land(fake, monkeypatch):
    from indexer.sources import registry

    monkeypatch.setattr(registry, "_MAX_TAGS", 50, raising=False)
    monkeypatch.setattr(registry, "_MAX_PAGES", 100)  # an end for the crawl should the bound fail
    manifest, configs, _ = image()
    fake.add_image("a/one", {"v1": manifest}, configs, OCI_MANIFEST)
    fake.routes["/v2/b/two/tags/list"] = endless("tags", "/v2/b/two/tags/list")
    fake.catalog(["a/one", "b/two"])

    records, errors, _ = crawl(f"docker://{fake.host}")

    assert [r.name for r in records] == ["a/one"]
    assert len(errors) == 1 and errors[0].startswith(f"{fake.host}/b/two"), errors
    assert "more than 50 tags listed (after 6 pages)" in errors[0], errors


def test_a_catalog_that_pages_for_ever_is_cut_at_its_bound_and_what_it_listed_lands(fake, monkeypatch):
    from indexer.sources import registry

    monkeypatch.setattr(registry, "_MAX_REPOSITORIES", 30, raising=False)
    monkeypatch.setattr(registry, "_MAX_PAGES", 100)  # an end for the crawl should the bound fail
    fake.routes["/v2/_catalog"] = endless("repositories", "/v2/_catalog")

    records, errors, _ = crawl(f"docker://{fake.host}")

    catalog = [e for e in errors if "catalog" in e]
    assert len(catalog) == 1 and "more than 30 repositories listed (after 4 pages)" in catalog[0], errors
    listed = sum(count for path, count in fake.hits.items() if path.endswith("/tags/list"))
    assert listed == 30  # the repositories listed before the bound are crawled


@pytest.mark.parametrize("jobs", [1, 4])
def test_a_config_one_repository_lacks_is_not_taken_from_another(fake, jobs):
    """The registry serves a blob of a repository only if that repository holds it (skopeo and
    crane fail such an image alike). With configs shared across a crawl, the image landed
    whenever another repository's thread fetched the config first: the same registry gave two
    stores and two exit codes."""
    manifest, configs, _ = image()
    [config_digest] = configs
    for repo in ("a/has", "b/lacks", "c/has"):
        fake.add_image(repo, {"v1": manifest}, configs if repo.endswith("has") else {}, OCI_MANIFEST)
    fake.catalog(["a/has", "b/lacks", "c/has"])
    for _ in range(3):
        records, errors, _ = crawl(f"docker://{fake.host}", jobs=jobs)
        assert sorted(r.name for r in records) == ["a/has", "c/has"]
        assert len(errors) == 1 and "b/lacks" in errors[0] and config_digest in errors[0], errors
    assert fake.hits[f"/v2/b/lacks/blobs/{config_digest}"] >= 3


PASSWORD = "S3cr3tPW"


def _behind_basic_auth(fake) -> None:
    """`fake` asks for Basic credentials at /v2/."""
    fake.routes["/v2/"] = lambda _method, headers: (
        Reply(200, b"{}", {"Content-Type": "application/json"})
        if headers.get("Authorization")
        else Reply(401, b"{}", {"WWW-Authenticate": 'Basic realm="r"', "Content-Type": "application/json"})
    )


@pytest.mark.parametrize("answer", ["page", "challenge"])
def test_a_list_a_redirect_moved_elsewhere_never_gets_the_credentials_on_its_next_page(fake, answer):
    """The registry redirects its catalog to another host, whose page links to a next one there.
    That page was asked for with the registry's Basic credentials, and a 401 from it was answered
    with them too: the Link was checked against the host that served the page, not the registry."""
    from registry_server import FakeRegistry

    other = FakeRegistry()
    try:
        _behind_basic_auth(fake)
        carried: list[tuple[str, str]] = []

        def logged(reply):
            def route(method, headers):
                carried.append((method, headers.get("Authorization", "")))
                return reply

            return route

        fake.routes["/v2/_catalog"] = Reply(307, b"", {"Location": f"http://{other.host}/v2/_catalog"})
        listing = json.dumps({"repositories": ["app"]}).encode()
        other.routes["/v2/_catalog"] = logged(
            Reply(200, listing, {"Content-Type": "application/json", "Link": '</v2/_catalog?last=app>; rel="next"'})
        )
        second = (
            Reply(200, b'{"repositories": []}', {"Content-Type": "application/json"})
            if answer == "page"
            else Reply(401, b"{}", {"WWW-Authenticate": 'Basic realm="elsewhere"'})
        )
        other.routes["/v2/_catalog?last=app"] = logged(second)
        _, errors, notes = crawl(f"docker://{fake.host}", username="alice", password=PASSWORD)
        assert carried and all(auth == "" for _, auth in carried), carried
        assert other.hits.get("/v2/_catalog?last=app") is None
        assert any(f"the Link header points to another host ({other.host})" in e for e in errors), errors
        assert PASSWORD not in " ".join(errors + notes)
    finally:
        other.stop()


def test_a_credential_a_registry_echoes_in_a_link_or_location_is_never_shown(fake):
    # Quoted as the registry wrote them, in the message and the runs table.
    _behind_basic_auth(fake)
    manifest, configs, _ = image()
    fake.add_image("app", {"v1": manifest}, configs, OCI_MANIFEST)
    fake.add_image("bad", {"v1": manifest}, configs, OCI_MANIFEST)
    fake.routes["/v2/app/tags/list"] = Reply(
        200, b'{"name": "app", "tags": ["v1"]}', {"Link": f'</v2/{PASSWORD}/tags/list>; rel="next"'}
    )
    fake.routes["/v2/bad/manifests/v1"] = Reply(307, b"", {"Location": f"ftp://127.0.0.1/{PASSWORD}"})
    fake.catalog(["app", "bad"])
    _, errors, _ = crawl(f"docker://{fake.host}", username="alice", password=PASSWORD)
    assert sorted(errors) == [
        f"{fake.host}/app: GET tags/list: the Link header points away from /v2/app/tags/list ('/v2/***/tags/list')",
        f"{fake.host}/bad:v1: GET manifest: refusing to follow a redirect to 'ftp://127.0.0.1/***': not an http(s) URL",
    ]


@pytest.mark.parametrize("wait", ["61", "9" * 20])
def test_a_retry_after_past_the_bound_fails_at_once(fake, wait):
    manifest, configs, _ = image()
    fake.add_image("app", {"v1": manifest}, configs, OCI_MANIFEST)
    fake.routes["/v2/app/manifests/v1"] = Reply(503, b"{}", {"Retry-After": wait})
    started = time.monotonic()
    _, errors, _ = crawl(f"docker://{fake.host}/app:v1", retries=3, backoff=1.0)
    assert time.monotonic() - started < 1.0 and fake.hits["/v2/app/manifests/v1"] == 1
    assert len(errors) == 1 and "503 Service Unavailable, and the server asks to retry after " in errors[0], errors


@pytest.mark.parametrize("retry_times, lands", [(0, False), (1, False), (2, True)])
def test_retry_times_is_how_often_a_failed_request_is_asked_again(fake, run_cli, tmp_path, retry_times, lands):
    manifest, configs, _ = image()
    fake.add_image("flaky/app", {"v1": manifest}, configs, OCI_MANIFEST)
    down = Flaky(Reply(503, b""), fake.routes["/v2/flaky/app/manifests/v1"], failures=2)
    fake.routes["/v2/flaky/app/manifests/v1"] = down
    result = run_cli(
        "index", f"docker://{fake.host}/flaky/app:v1", "--retry-times", retry_times, "--store", tmp_path / "s"
    )
    assert len(down.times) == min(retry_times + 1, 3)
    if lands:
        assert result.exit_code == 0, result.output
    else:
        assert result.exit_code == 1 and "GET manifest: 503 Service Unavailable" in result.output, result.output
