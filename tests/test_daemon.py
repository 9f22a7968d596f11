"""docker-daemon: the mapping of engine documents to records, on a fake engine behind the client interface.

The same interface is served by the engine API client against a real engine in
test_daemon_live.py; here only the mapping, laziness, failures and the wiring are checked.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
from click.testing import CliRunner
from conftest import resolver_for

from indexer.errors import SourceError
from indexer.model import (
    EXACT_MANIFEST,
    KIND_ATTESTATION,
    KIND_IMAGE,
    KIND_INDEX,
    UNCOMPRESSED,
    HistoryEntry,
    ImageRecord,
    Platform,
)
from indexer.references import blob_id, image_id
from indexer.sources import SourceOptions, daemon, parse_source
from indexer.sources.daemon import DockerDaemon, EngineApiClient, match_history
from indexer.sources.parse import Context
from indexer.store.delta_writer import DeltaWriter
from indexer.store.writer import now_utc
from queries import engine as store_engine
from queries import render
from queries.cli import cli

from builders import Blobs, named, write_dir
from fake_engine import (
    DeadEngine,
    EngineRefused,
    EngineUnavailable,
    FakeEngine,
    NoSuchImage,
    Step,
    UnixHttpServer,
    classic_image,
    containerd_image,
    fake_digest,
)

APP_STEPS = (
    Step("", 7, comment="imported"),
    Step("/bin/sh -c #(nop)  LABEL a=b", None),
    Step("/bin/sh -c #(nop) COPY file:1 in /etc/app.conf ", 4),
    Step("/bin/sh -c #(nop)  ENV APP_MODE=test", None),
    Step("/bin/sh -c #(nop) COPY file:2 in /usr/local/bin/run.sh ", 5),
)


def collect(fake: FakeEngine, ref: str = "", *, all_images=False, workers=1, window=4, **ctx):
    notes = []
    source = DockerDaemon(
        location=fake.address,
        ref=ref,
        all_images=all_images,
        connect=lambda address: fake,
        workers=workers,
        window=window,
    )
    context = Context(source.kind, source.location, note=notes.append, **ctx)
    items = list(source.records(context))
    records = [i for i in items if isinstance(i, ImageRecord)]
    errors = [i for i in items if isinstance(i, SourceError)]
    return records, errors, notes


def by_repo(records):
    return {(r.registry, r.name): r for r in records}


# ----------------------------------------------------------------------------- names and ids


def test_parse_source_names_the_engine(monkeypatch):
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    source = parse_source("docker-daemon:")
    assert isinstance(source, DockerDaemon) and source.kind == "docker-daemon"
    assert source.location == "unix:///var/run/docker.sock" and source.ref == "" and not source.all_images
    monkeypatch.setenv("DOCKER_HOST", "tcp://10.0.0.1:2375")
    assert parse_source("docker-daemon:app:1").location == "tcp://10.0.0.1:2375"
    source = parse_source("docker-daemon:sha256:abcd", SourceOptions(docker_host="unix:///x.sock", all_images=True))
    assert (source.location, source.ref, source.all_images) == ("unix:///x.sock", "sha256:abcd", True)


def test_image_in_two_repositories_gives_one_resource_per_repository():
    fake = FakeEngine()
    pushed = fake_digest("pushed manifest")
    image = fake.add(
        classic_image(
            "app",
            tags=["127.0.0.1:5000/team/app:v1", "t/app:1.0", "t/app:latest", "other/app:v1"],
            digests=[f"127.0.0.1:5000/team/app@{pushed}"],
            steps=APP_STEPS,
            labels={"z": "1", "a": "2"},
            env=("PATH=/bin", "APP_MODE=test"),
            entrypoint=("/entry",),
            cmd=("run",),
        )
    )
    config = image["inspect"]["Id"]
    layers = image["inspect"]["RootFS"]["Layers"]
    records, errors, notes = collect(fake)
    assert not errors and not notes
    repos = by_repo(records)
    assert sorted(repos) == [("127.0.0.1:5000", "team/app"), ("docker.io", "other/app"), ("docker.io", "t/app")]

    team = repos[("127.0.0.1:5000", "team/app")]
    assert team.digest == pushed and team.id == image_id("127.0.0.1:5000", "team/app", pushed)
    assert team.tags == ("v1",) and team.exactness == UNCOMPRESSED

    app = repos[("docker.io", "t/app")]
    assert app.digest == "" and app.id == image_id("docker.io", "t/app", config)
    assert app.tags == ("1.0", "latest") and app.media_type == "" and app.kind == KIND_IMAGE
    assert app.config.digest == config and app.config.size == 0
    assert [(layer.digest, layer.size) for layer in app.layers] == list(zip(layers, [7, 4, 5], strict=True))
    assert not app.layers_compressed and app.compressed_size == 16
    assert app.created == "2026-11-29T11:48:54.000134049Z"
    assert app.labels == (("a", "2"), ("z", "1"))
    assert app.env == ("PATH=/bin", "APP_MODE=test") and app.entrypoint == ("/entry",) and app.cmd == ("run",)
    assert app.platform == Platform("linux", "amd64", "") and app.parent_digest == ""
    assert app.source_kind == "docker-daemon" and app.source_path == fake.address
    assert app.config_raw is None and app.manifest_raw is None
    assert [h.empty_layer for h in app.history] == [False, True, False, True, False]
    assert app.history[0] == HistoryEntry("2026-11-29T11:48:50Z", "", "imported", False)


def test_created_is_normalised_and_variant_kept():
    fake = FakeEngine()
    fake.add(
        classic_image(
            "arm", tags=["arm/app:1"], created="2026-11-29T13:48:54.12345+02:00", architecture="arm64", variant="v8"
        )
    )
    records, _, _ = collect(fake)
    assert records[0].created == "2026-11-29T11:48:54.123450Z"
    assert str(records[0].platform) == "linux/arm64/v8"


def test_untagged_image_takes_the_context_name_and_placeholders_are_ignored():
    fake = FakeEngine()
    fake.add(classic_image("dangling", tags=["<none>:<none>"], digests=["<none>@<none>"]))
    records, errors, notes = collect(fake)
    assert [(r.registry, r.name, r.tags) for r in records] == [("", "", ())] and not errors and not notes
    records, _, _ = collect(fake, registry="cr.example", repository="team/x")
    assert [(r.registry, r.name) for r in records] == [("cr.example", "team/x")]
    assert records[0].id == image_id("cr.example", "team/x", fake.images[0]["inspect"]["Id"])


def test_repository_known_only_by_digest_is_named_without_tags():
    fake = FakeEngine()
    digest = fake_digest("pulled by digest")
    fake.add(classic_image("bydigest", digests=[f"reg.example/team/app@{digest}"]))
    records, _, _ = collect(fake)
    assert [(r.registry, r.name, r.digest, r.tags) for r in records] == [("reg.example", "team/app", digest, ())]


def test_first_repo_digest_of_a_repository_wins():
    fake = FakeEngine()
    first, second = fake_digest("one"), fake_digest("two")
    fake.add(
        classic_image(
            "two-digests", tags=["reg.example/app:1"], digests=[f"reg.example/app@{first}", f"reg.example/app@{second}"]
        )
    )
    records, _, _ = collect(fake)
    assert [r.digest for r in records] == [first]


def test_ref_by_digest_records_that_digest_of_a_repository_of_two():
    # A real engine lists both manifests of one config pulled into one repository (a Docker
    # schema 2 and an OCI manifest), lexically sorted.
    fake = FakeEngine()
    first, second = sorted([fake_digest("schema2"), fake_digest("oci")])
    fake.add(
        classic_image(
            "two-digests",
            tags=["reg.example/app:1", "other/app:v1"],
            digests=[f"reg.example/app@{first}", f"reg.example/app@{second}"],
        )
    )
    for digest in (first, second):
        records, errors, _ = collect(fake, f"reg.example/app@{digest}")
        assert [(r.name, r.digest, r.tags) for r in records] == [("app", digest, ("1",))] and not errors


def test_bad_repo_tag_is_a_note_not_a_failure():
    fake = FakeEngine()
    fake.add(classic_image("bad", tags=["UPPER/Case:1", "good/app:1"]))
    records, errors, notes = collect(fake)
    assert [r.name for r in records] == ["good/app"] and not errors
    assert len(notes) == 1 and "UPPER/Case:1" in notes[0]


def test_intermediate_images_only_with_all():
    fake = FakeEngine()
    fake.add(classic_image("top", tags=["app:1"]))
    fake.add(classic_image("step"), intermediate=True)
    records, _, _ = collect(fake)
    assert [r.name for r in records] == ["library/app"]
    assert ("list", False, False) in fake.calls
    records, _, _ = collect(fake, all_images=True)
    assert sorted(r.name for r in records) == ["", "library/app"]
    assert ("list", True, False) in fake.calls


# ----------------------------------------------------------------------------- docker-daemon:REF


def test_ref_by_reference_keeps_that_repository():
    fake = FakeEngine()
    fake.add(classic_image("app", tags=["t/app:1.0", "t/app:latest", "other/app:v1"]))
    records, errors, _ = collect(fake, "t/app:1.0")
    assert [(r.name, r.tags) for r in records] == [("t/app", ("1.0", "latest"))] and not errors
    assert fake.count("list") == 0


def test_ref_by_id_keeps_every_repository():
    fake = FakeEngine()
    image = fake.add(classic_image("app", tags=["t/app:1.0", "other/app:v1"]))
    short = image["inspect"]["Id"].removeprefix("sha256:")[:12]
    for ref in (short, image["inspect"]["Id"]):
        records, errors, _ = collect(fake, ref)
        assert sorted(r.name for r in records) == ["other/app", "t/app"] and not errors


def test_ref_missing_is_an_error_naming_the_engine():
    fake = FakeEngine()
    records, errors, _ = collect(fake, "nope:1")
    assert not records and len(errors) == 1
    assert "has no image 'nope:1'" in str(errors[0]) and fake.address in str(errors[0])


@pytest.mark.parametrize("ref", ["..", ".", "x/../t/app:1.0", "T/App:1", "app:", "@sha256:" + "a" * 64])
def test_ref_that_names_no_image_is_refused_before_the_engine_is_asked(ref):
    """`..` reached the engine as another path, and the error was its redirect: `HTTP 301`."""
    fake = FakeEngine()
    fake.add(classic_image("app", tags=["t/app:1.0"]))
    records, errors, _ = collect(fake, ref)
    assert not records and [error.reason for error in errors] == [f"{ref!r} is not an image reference or ID"]
    assert fake.count("inspect") == 0
    # Not even reached: with no engine at the address, the refusal is still what is said.
    connected = []
    source = DockerDaemon(location="tcp://127.0.0.1:1", ref=ref, connect=lambda address: connected.append(address))
    [error] = list(source.records(Context(source.kind, source.location)))
    assert error.reason == f"{ref!r} is not an image reference or ID" and not connected


@pytest.mark.parametrize("length", [4, 12, 64])
def test_ref_by_a_short_id_is_still_asked(length):
    fake = FakeEngine()
    image = fake.add(classic_image("app", tags=["t/app:1.0"]))
    records, errors, _ = collect(fake, image["inspect"]["Id"].removeprefix("sha256:")[:length])
    assert [r.name for r in records] == ["t/app"] and not errors


# ----------------------------------------------------------------------------- layer sizes from history


def _history(*sizes):
    return [
        {"Created": 1795952930, "CreatedBy": f"step {i}", "Comment": "", "Size": s}
        for i, s in reversed(list(enumerate(sizes)))
    ]


@pytest.mark.parametrize(
    "layers, sizes, want, flags",
    [
        (3, (7, 0, 4, 0, 5), [7, 4, 5], [False, True, False, True, False]),
        (1, (7,), [7], [False]),
        (2, (7, 0), [7, 0], [False, False]),  # every entry is a layer
        (3, (7, 0, 0, 5), [7, 0, 5], None),  # one gap: sizes known, empty flags not
        (3, (0, 7, 0, 5), None, None),  # the zero layer is before or after 7
        (4, (7, 5), None, None),  # fewer entries than layers
        (1, (7, 5), None, None),  # more sized entries than layers
        (0, (0, 0), [], [True, True]),
        (2, (), None, None),
    ],
)
def test_match_history(layers, sizes, want, flags):
    got, history = match_history(layers, _history(*sizes))
    assert got == want
    if flags is None:
        assert history == ()
    else:
        assert [h.empty_layer for h in history] == flags
        assert [h.created_by for h in history] == [f"step {i}" for i in range(len(sizes))]


def test_unknown_sizes_are_zero_with_a_note():
    fake = FakeEngine()
    # A layer of size 0 and an empty ENV step look alike: is the 0-byte layer before or after the 7-byte one?
    fake.add(classic_image("odd", tags=["odd:1"], steps=(Step("RUN true", 0), Step("ADD x", 7), Step("ENV a=b", None))))
    records, errors, notes = collect(fake)
    assert not errors and [layer.size for layer in records[0].layers] == [0, 0]
    assert records[0].history == ()
    assert len(notes) == 1 and "sizes left unknown" in notes[0]


@pytest.mark.parametrize(
    "bad, reason",
    [
        (10**30, "out of range"),
        (2**63, "out of range"),
        (1e30, "not an integer"),
        (7.0, "not an integer"),
        (-5, "out of range"),
        (True, "not an integer"),
    ],
)
def test_history_size_outside_int64_fails_that_image_only(bad, reason):
    fake = FakeEngine()
    fake.add(classic_image("good", tags=["good/app:1"]))
    image = fake.add(classic_image("bad", tags=["bad/app:1"], steps=(Step("ADD a", 7), Step("ADD b", 5))))
    image["history"][0]["Size"] = bad
    records, errors, notes = collect(fake)
    assert [r.name for r in records] == ["good/app"] and not notes
    assert len(errors) == 1
    assert str(errors[0]).startswith(
        f"docker-daemon (image {image['inspect']['Id']}): history entry 0 has an invalid size"
    )
    assert reason in str(errors[0])


def test_history_sizes_adding_up_past_int64_fail_that_image_only(tmp_path, monkeypatch):
    fake = FakeEngine()
    fake.add(classic_image("good", tags=["good/app:1"]))
    fake.add(classic_image("bad", tags=["bad/app:1"], steps=(Step("ADD a", 2**62), Step("ADD b", 2**62))))
    records, errors, _ = collect(fake)
    assert [r.name for r in records] == ["good/app"]
    assert len(errors) == 1 and "add up to 9223372036854775808" in str(errors[0])
    # Through the CLI: one line, and what is good lands.
    monkeypatch.setattr(daemon, "connect_engine", lambda address, environ=None: fake)
    result = CliRunner().invoke(cli, ["index", "docker-daemon:", "--store", str(tmp_path / "store")])
    assert result.exit_code == 1 and result.stdout.startswith("indexed 1 images, 1 failed")
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_containerd_child_with_an_oversized_history_fails_alone():
    fake = FakeEngine(api_version="1.49", containerd=True)
    fake.add(
        containerd_image(
            "multi", tags=["reg.example/multi:1"], platforms=(("linux", "amd64", ""), ("linux", "arm64", "v8"))
        )
    )
    image = fake.images[0]
    arm = next(key for key in image["per_platform"] if key.architecture == "arm64")
    image["per_platform"][arm][2][0]["Size"] = 2**64
    records, errors, _ = collect(fake)
    assert sorted(r.kind for r in records) == ["image", "index"]
    assert len(errors) == 1 and "out of range" in str(errors[0])


@pytest.mark.parametrize(
    "bad",
    [
        "reg.example/app:v1\n",
        "reg.example/app:тег",
        "reg.example/app:" + "a" * 129,
        "reg.example/App:1",
        "reg.example/team/../app:1",
        "reg.example/app@sha256:" + "a" * 64 + "\n",
    ],
)
def test_invalid_repo_tags_and_digests_are_dropped_with_a_note(bad):
    fake = FakeEngine()
    key = "RepoDigests" if "@" in bad else "RepoTags"
    image = fake.add(classic_image("odd", tags=["reg.example/good:1"]))
    image["inspect"][key] = image["inspect"][key] + [bad]
    records, errors, notes = collect(fake)
    assert not errors
    assert [(r.registry, r.name, r.tags, r.digest) for r in records] == [("reg.example", "good", ("1",), "")]
    assert len(notes) == 1 and f"ignoring {key} entry" in notes[0]
    # Alone, the image lands untagged, as an image without names does.
    image["inspect"]["RepoTags"], image["inspect"]["RepoDigests"] = ([bad], []) if key == "RepoTags" else ([], [bad])
    records, errors, notes = collect(fake)
    assert not errors and [(r.registry, r.name, r.tags) for r in records] == [("", "", ())] and len(notes) == 1


# ----------------------------------------------------------------------------- laziness and failures


def test_images_are_inspected_lazily_one_at_a_time():
    fake = FakeEngine()
    for i in range(30):
        fake.add(classic_image(f"img{i}", tags=[f"app{i}:1"]))
    source = DockerDaemon(location=fake.address, connect=lambda address: fake, workers=1)
    items = source.records(Context("docker-daemon", fake.address))
    assert fake.calls == []  # nothing before the first record is asked for
    for k in range(1, 31):
        record = next(items)
        assert record.name == f"library/app{k - 1}"  # the engine's order
        assert fake.count("inspect") == k and fake.count("history") == k
    assert fake.count("list") == 1
    assert list(items) == [] and fake.closed


def test_prefetch_window_bounds_the_details_held():
    fake = FakeEngine()
    for i in range(40):
        fake.add(classic_image(f"img{i}", tags=[f"app{i}:1"]))
    source = DockerDaemon(location=fake.address, connect=lambda address: fake, workers=4, window=5)
    items = source.records(Context("docker-daemon", fake.address))
    names = []
    for k in range(1, 41):
        names.append(next(items).name)
        assert fake.count("inspect") <= k + 5
    assert names == [f"library/app{i}" for i in range(40)]
    items.close()
    assert fake.closed


def test_closing_early_stops_fetching():
    fake = FakeEngine()
    for i in range(100):
        fake.add(classic_image(f"img{i}", tags=[f"app{i}:1"]))
    source = DockerDaemon(location=fake.address, connect=lambda address: fake, workers=4, window=8)
    items = source.records(Context("docker-daemon", fake.address))
    next(items)
    items.close()
    settled = fake.count("inspect")
    assert settled <= 1 + 8
    time.sleep(0.05)
    assert fake.count("inspect") == settled and fake.closed


def test_engine_unreachable_is_a_source_error():
    source = DockerDaemon(location="unix:///gone.sock", connect=DeadEngine)
    with pytest.raises(SourceError) as caught:
        list(source.records(Context("docker-daemon", "unix:///gone.sock")))
    assert str(caught.value) == (
        "docker-daemon: cannot reach the Docker engine at unix:///gone.sock: No such file or directory"
    )


def test_engine_dying_midway_fails_the_source_after_what_was_read():
    fake = FakeEngine()
    for i in range(5):
        fake.add(classic_image(f"img{i}", tags=[f"app{i}:1"]))
    fake.fail_inspect[fake.images[2]["inspect"]["Id"]] = EngineUnavailable(
        "the Docker engine at unix:///fake/docker.sock stopped answering (image x): Connection reset by peer"
    )
    source = DockerDaemon(location=fake.address, connect=lambda address: fake, workers=2, window=3)
    got = []
    with pytest.raises(SourceError, match="stopped answering"):
        for item in source.records(Context("docker-daemon", fake.address)):
            got.append(item)
    assert [r.name for r in got] == ["library/app0", "library/app1"] and fake.closed


def test_removed_and_refused_images_do_not_stop_the_others():
    fake = FakeEngine()
    for i in range(4):
        fake.add(classic_image(f"img{i}", tags=[f"app{i}:1"]))
    fake.fail_inspect[fake.images[1]["inspect"]["Id"]] = NoSuchImage("gone")
    fake.fail_inspect[fake.images[2]["inspect"]["Id"]] = EngineRefused("image x: server error")
    records, errors, notes = collect(fake, workers=3)
    assert [r.name for r in records] == ["library/app0", "library/app3"]
    assert len(errors) == 1 and "server error" in str(errors[0])
    assert len(notes) == 1 and "removed while indexing" in notes[0]


# ----------------------------------------------------------------------------- the containerd image store


def test_containerd_multi_platform_gives_the_index_and_its_children():
    fake = FakeEngine(api_version="1.49", containerd=True)
    image = fake.add(
        containerd_image(
            "multi",
            tags=["reg.example/team/multi:1", "reg.example/team/multi:latest", "mirror.example/multi:1"],
            platforms=(("linux", "amd64", ""), ("linux", "arm64", "v8"), ("linux", "arm", "v7")),
            unavailable=(("linux", "arm", "v7"),),
            attestation=True,
        )
    )
    records, errors, notes = collect(fake)
    assert not errors
    index_digest = image["inspect"]["Descriptor"]["digest"]
    indexes = [r for r in records if r.kind == KIND_INDEX]
    assert sorted((r.registry, r.name, r.tags) for r in indexes) == [
        ("mirror.example", "multi", ("1",)),
        ("reg.example", "team/multi", ("1", "latest")),
    ]
    assert all(r.digest == index_digest and r.media_type == "application/vnd.oci.image.index.v1+json" for r in indexes)
    assert all(r.exactness == UNCOMPRESSED and r.config is None and r.layers == () for r in indexes)
    children = [r for r in records if r.kind == KIND_IMAGE and r.name == "team/multi"]
    assert [str(r.platform) for r in children] == ["linux/amd64", "linux/arm64/v8"]
    for child in children:
        digest, inspect, _ = image["per_platform"][child.platform]
        assert child.digest == digest and child.id == image_id("reg.example", "team/multi", digest)
        assert child.parent_digest == index_digest and child.tags == ()
        assert child.config is None  # the containerd store's API has no config digest
        assert [layer.digest for layer in child.layers] == inspect["RootFS"]["Layers"]
        assert [layer.size for layer in child.layers] == [11, 3] and not child.layers_compressed
        assert child.created == "2026-11-29T11:48:54.500Z"
    attestations = [r for r in records if r.kind == KIND_ATTESTATION]
    assert len(attestations) == 2 and all(r.parent_digest == index_digest for r in attestations)
    assert len(notes) == 1 and "not in the engine" in notes[0]
    assert ("list", False, True) in fake.calls
    assert ("inspect", image["inspect"]["Id"], Platform("linux", "arm64", "v8"), False) in fake.calls


def test_containerd_single_manifest_image():
    fake = FakeEngine(api_version="1.48", containerd=True)
    image = fake.add(containerd_image("single", tags=["app:2"], index=False))
    records, errors, notes = collect(fake)
    assert not errors and not notes and len(records) == 1
    record = records[0]
    assert record.kind == KIND_IMAGE and record.digest == image["inspect"]["Id"] and record.tags == ("2",)
    assert record.media_type == "application/vnd.oci.image.manifest.v1+json" and record.parent_digest == ""
    assert record.id == image_id("docker.io", "library/app", record.digest)
    assert [layer.size for layer in record.layers] == [11, 3]


def test_containerd_before_api_1_49_describes_the_default_platform_only():
    fake = FakeEngine(api_version="1.47", containerd=True)
    fake.add(
        containerd_image(
            "old", tags=["app:3"], platforms=(("linux", "amd64", ""), ("linux", "arm64", "")), descriptor=False
        )
    )
    records, errors, notes = collect(fake)
    assert not errors
    assert [(r.kind, str(r.platform or "")) for r in records] == [(KIND_INDEX, ""), (KIND_IMAGE, "linux/amd64")]
    assert len(notes) == 1 and "only from API 1.49" in notes[0]
    assert not any(call[0] == "inspect" and call[2] is not None for call in fake.calls)


def test_containerd_ref_uses_the_inspect_manifests():
    fake = FakeEngine(api_version="1.49", containerd=True)
    fake.add(containerd_image("named", tags=["app:4"], platforms=(("linux", "amd64", ""), ("linux", "arm64", ""))))
    records, errors, _ = collect(fake, "app:4")
    assert not errors and sorted(r.kind for r in records) == [KIND_IMAGE, KIND_IMAGE, KIND_INDEX]
    assert fake.count("list") == 0


def test_classic_engine_is_never_asked_for_manifests():
    fake = FakeEngine(api_version="1.47")
    fake.add(classic_image("classic", tags=["app:1"]))
    records, _, _ = collect(fake)
    assert ("list", False, False) in fake.calls and fake.count("info") == 1
    assert records[0].config.digest == fake.images[0]["inspect"]["Id"]


# ----------------------------------------------------------------------------- the store: exact records win


def _write(store, records):
    with DeltaWriter(store) as writer:
        writer.write(records, now_utc())


def _rows(store):
    con = store_engine.connect(store)
    rows = con.execute(f"SELECT {render.SELECT} FROM images ORDER BY id").fetchall()
    return [render.to_response(row) for row in rows]


def _engine_and_layout_of_one_image(tmp_path):
    """An OCI layout of one image, and an engine holding the same image pulled from reg.example."""
    blobs = Blobs()
    manifest = blobs.image(layers=(b"layer-one", b"layer-two"))
    write_dir(str(tmp_path / "layout"), blobs.layout_files([named(manifest, "reg.example/team/app:v1")]))
    fake = FakeEngine()
    fake.add(
        classic_image(
            "pulled",
            tags=["reg.example/team/app:v1", "reg.example/team/app:stable"],
            digests=[f"reg.example/team/app@{manifest['digest']}"],
            steps=(Step("ADD a", 100), Step("ADD b", 200)),
        )
    )
    return fake, manifest, str(tmp_path / "layout")


def _exact_records(layout):
    source = parse_source(f"oci:{layout}")
    return [r for r in source.records(Context(source.kind, source.location)) if isinstance(r, ImageRecord)]


@pytest.mark.parametrize("engine_first", [True, False])
def test_engine_then_exact_record_is_one_resource_and_exact_wins(tmp_path, engine_first):
    fake, manifest, layout = _engine_and_layout_of_one_image(tmp_path)
    engine_records, _, _ = collect(fake)
    exact = _exact_records(layout)
    assert [r.id for r in engine_records] == [r.id for r in exact]
    assert exact[0].exactness == EXACT_MANIFEST
    store = str(tmp_path / "store")
    for batch in [engine_records, exact] if engine_first else [exact, engine_records]:
        _write(store, batch)
    rows = _rows(store)
    assert len(rows) == 1
    row = rows[0]
    assert row["digest"] == manifest["digest"]
    assert [layer["size"] for layer in row["layers"]] == [str(len(b"layer-one")), str(len(b"layer-two"))]
    assert row["config"]["size"]  # the exact record knows the config size the engine does not
    assert row["tags"] == ["stable", "v1"]  # tags of both sources are pooled


# ----------------------------------------------------------------------------- the CLI and the engine API client


def test_cli_passes_docker_host_and_all(monkeypatch, tmp_path):
    fake = FakeEngine()
    fake.add(classic_image("app", tags=["t/app:1"], steps=APP_STEPS))
    fake.add(classic_image("step"), intermediate=True)
    addresses = []
    monkeypatch.setattr(daemon, "connect_engine", lambda address, environ=None: addresses.append(address) or fake)
    store = str(tmp_path)
    result = CliRunner().invoke(
        cli, ["index", "docker-daemon:", "--docker-host", "unix:///run/x.sock", "--all", "--store", store]
    )
    assert result.exit_code == 0, result.output
    assert addresses == ["unix:///run/x.sock"] and ("list", True, False) in fake.calls
    got = json.loads(CliRunner().invoke(cli, ["get", "t/app:1", "--store", store]).stdout)
    image = fake.images[0]["inspect"]
    assert got == {
        "id": image_id("docker.io", "t/app", image["Id"]),
        "name": "t/app",
        "compressedSize": "16",
        "config": {"id": blob_id(image["Id"]), "digest": image["Id"]},
        "layers": [
            {"id": blob_id(d), "digest": d, "size": str(s)}
            for d, s in zip(image["RootFS"]["Layers"], (7, 4, 5), strict=True)
        ],
        "tags": ["1"],
        "createdAt": "2026-11-29T11:48:54.000134049Z",
    }


def test_cli_unreachable_engine_is_one_line_and_exit_1(tmp_path):
    sock = str(tmp_path / "absent.sock")
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "queries.cli",
            "index",
            "docker-daemon:",
            "--docker-host",
            f"unix://{sock}",
            "--store",
            str(tmp_path / "s"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"imgdex: docker-daemon: cannot reach the Docker engine at unix://{sock}: No such file or directory"
    ]
    assert "Traceback" not in result.stdout + result.stderr
    assert time.monotonic() - started < 60


def test_refused_socket_is_one_line(tmp_path):
    """A socket file left by a dead engine: nobody listens, the connection is refused."""
    path = str(tmp_path / "stale.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()
    source = DockerDaemon(location=f"unix://{path}")
    with pytest.raises(SourceError) as caught:
        list(source.records(Context("docker-daemon", source.location)))
    assert str(caught.value) == f"docker-daemon: cannot reach the Docker engine at unix://{path}: Connection refused"


def test_silent_engine_times_out(tmp_path):
    """A socket that accepts and never answers: the first contact gives up after its timeout."""
    path = str(tmp_path / "silent.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(8)
    accepted = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        source = DockerDaemon(
            location=f"unix://{path}", connect=lambda address: EngineApiClient(address, connect_timeout=1.0)
        )
        started = time.monotonic()
        with pytest.raises(SourceError) as caught:
            list(source.records(Context("docker-daemon", source.location)))
        assert time.monotonic() - started < 15
        assert str(caught.value) == f"docker-daemon: cannot reach the Docker engine at unix://{path}: no answer in 1 s"
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        server.close()


def test_a_name_server_that_does_not_answer_costs_no_more_than_the_first_contact(monkeypatch):
    """The resolver's own timeouts (5 s a try, for each attempt and name server) are not the
    engine's: a host name that does not resolve in time is the same one line as a silent engine."""
    released = threading.Event()

    def unanswered():
        released.wait(30)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", resolver_for("engine.example", unanswered))
    source = DockerDaemon(
        location="tcp://engine.example:2375", connect=lambda address: EngineApiClient(address, connect_timeout=1.0)
    )
    started = time.monotonic()
    try:
        with pytest.raises(SourceError) as caught:
            list(source.records(Context("docker-daemon", source.location)))
        assert time.monotonic() - started < 5
    finally:
        released.set()
    assert (
        str(caught.value)
        == "docker-daemon: cannot reach the Docker engine at tcp://engine.example:2375: no answer in 1 s"
    )


def test_docker_sdk_is_not_imported_off_the_engine_path(samples_store):
    code = (
        "import sys\n"
        "import queries.cli, indexer.run, indexer.sources\n"
        "from indexer.sources import parse_source\n"
        "parse_source('docker-daemon:')\n"
        "assert 'docker' not in sys.modules, 'imported by the modules'\n"
        "from queries.cli import cli\n"
        "try:\n"
        f"    cli(['get', 'samples/app:v1', '--store', {samples_store!r}], prog_name='imgdex')\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "assert 'docker' not in sys.modules, 'imported by get'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    assert result.returncode == 0, result.stderr


class _StubEngine:
    """A few Docker API answers over HTTP, on a unix socket or on loopback TCP (with `tls`, a server
    context, over TLS); records the paths asked and counts connections. `close_each` closes every
    connection after its answer without saying so, as an engine restarting its listener would.
    /v1.49/images/slow/json answers a byte every 0.1 s; /v1.49/images/endless/json says it sends
    1 GiB and tries to; /v1.49/images/unannounced/json does too, without a Content-Length. `answers`
    gives the bodies of other paths (without the query), as bytes."""

    def __init__(self, transport: str, *, tls=None, close_each: bool = False, answers=None):
        import http.server
        import socketserver
        import tempfile

        seen = self.seen = []
        connections = self.connections = []

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the engine

            def log_message(self, *args):
                pass

            def setup(self):
                connections.append(self.client_address)
                super().setup()

            def drip(self):
                self.send_response(200)
                self.send_header("Content-Length", "1000")
                self.end_headers()
                try:
                    for _ in range(200):
                        self.wfile.write(b" ")
                        self.wfile.flush()
                        time.sleep(0.1)
                except OSError:
                    pass
                self.close_connection = True

            def flood(self, announced: bool):
                self.send_response(200)
                if announced:
                    self.send_header("Content-Length", str(1 << 30))
                else:
                    self.send_header("Connection", "close")  # a body that ends when the connection does
                self.end_headers()
                try:
                    for _ in range(1 << 14):
                        self.wfile.write(b" " * 65536)
                except OSError:
                    pass
                self.close_connection = True

            def do_GET(self):
                seen.append(self.path)
                path = self.path.split("?")[0]
                if path == "/v1.49/images/slow/json":
                    return self.drip()
                if path == "/v1.49/images/endless/json":
                    return self.flood(announced=True)
                if path == "/v1.49/images/unannounced/json":
                    return self.flood(announced=False)
                if answers and path in answers:
                    body, status = answers[path], 200
                elif path == "/version":
                    body, status = {"ApiVersion": "1.49", "Version": "28.2.2"}, 200
                elif path == "/v1.49/images/json":
                    body, status = [{"Id": "sha256:" + "a" * 64}], 200
                elif path.startswith("/v1.49/images/missing"):
                    body, status = {"message": "No such image: missing"}, 404
                elif path.startswith("/v1.49/images/broken"):
                    body, status = {"message": "boom"}, 500
                elif path.endswith("/history"):
                    body, status = [{"Size": 1}], 200
                else:
                    body, status = {"Id": "x"}, 200
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                if close_each:
                    self.close_connection = True

        if transport == "unix":
            self.folder = tempfile.mkdtemp(prefix="imgdex-stub.", dir="/tmp")
            path = os.path.join(self.folder, "d.sock")
            self.server = UnixHttpServer(path, Handler)
            self.address = f"unix://{path}"
        else:

            class TcpServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
                daemon_threads = True

            self.folder = None
            self.server = TcpServer(("127.0.0.1", 0), Handler)
            self.address = f"tcp://127.0.0.1:{self.server.server_address[1]}"
            if tls is not None:
                self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        import shutil

        self.server.shutdown()
        self.server.server_close()
        if self.folder:
            shutil.rmtree(self.folder, ignore_errors=True)


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_api_client_requests_and_errors(transport):
    """The real client's request shapes and error mapping, on a stub engine speaking the Docker API."""
    from urllib.parse import parse_qs, urlsplit

    stub = _StubEngine(transport)
    try:
        client = EngineApiClient(stub.address)
        assert client.api_version == "1.49"
        assert client.list_images(all=True, manifests=True) == [{"Id": "sha256:" + "a" * 64}]
        assert client.inspect_image("app:1", platform=Platform("linux", "arm64", "v8")) == {"Id": "x"}
        assert client.image_history("app:1", platform=Platform("linux", "amd64")) == [{"Size": 1}]
        client.inspect_image("app:1", manifests=True)
        for _ in range(20):
            client.inspect_image("sha256:" + "b" * 64)
        with pytest.raises(NoSuchImage, match="No such image: missing"):
            client.inspect_image("missing")
        with pytest.raises(EngineRefused, match="boom"):
            client.inspect_image("broken")
        client.close()
    finally:
        stub.stop()
    queries = [(urlsplit(p).path, parse_qs(urlsplit(p).query)) for p in stub.seen]
    assert ("/v1.49/images/json", {"all": ["1"], "manifests": ["1"]}) in queries
    platform = '{"os":"linux","architecture":"arm64","variant":"v8"}'
    assert ("/v1.49/images/app:1/json", {"platform": [platform]}) in queries
    assert ("/v1.49/images/app:1/history", {"platform": ['{"os":"linux","architecture":"amd64"}']}) in queries
    assert ("/v1.49/images/app:1/json", {"manifests": ["1"]}) in queries


def test_api_client_reuses_one_connection_on_a_socket(monkeypatch):
    """Every request to a unix socket goes over the same keep-alive connection."""
    stub = _StubEngine("unix")
    connects = []
    original = socket.socket.connect

    def counting(self, *args):
        connects.append(args)
        return original(self, *args)

    try:
        client = EngineApiClient(stub.address)
        monkeypatch.setattr(socket.socket, "connect", counting)
        for i in range(50):
            client.inspect_image(f"sha256:{i:064x}")
            client.image_history(f"sha256:{i:064x}")
        monkeypatch.undo()
        client.close()
    finally:
        stub.stop()
    assert len(connects) <= 1


def test_client_retries_a_keep_alive_connection_the_engine_closed():
    stub = _StubEngine("unix", close_each=True)
    try:
        client = EngineApiClient(stub.address)
        for i in range(10):
            assert client.inspect_image(f"app:{i}") == {"Id": "x"}
        client.close()
    finally:
        stub.stop()
    assert len(stub.connections) == 11  # the version, then one per request
    assert sum(1 for path in stub.seen if path.startswith("/v1.49/images/app:")) == 10


def test_slow_engine_fails_the_request_at_its_deadline():
    """An engine sending a byte every 0.1 s never trips a timeout per read; the deadline of the request stops it."""
    stub = _StubEngine("unix")
    try:
        client = EngineApiClient(stub.address, timeout=1.0)
        started = time.monotonic()
        with pytest.raises(EngineUnavailable) as caught:
            client.inspect_image("slow")
        assert 0.9 < time.monotonic() - started < 5
        assert str(caught.value) == (
            f"the Docker engine at {stub.address} stopped answering (image slow): no complete answer in 1 s"
        )
        assert client.inspect_image("app:1") == {"Id": "x"}  # the others still go through
        client.close()
    finally:
        stub.stop()


@pytest.mark.parametrize("image", ["endless", "unannounced"])
def test_an_answer_past_the_limit_fails_the_request_in_one_line(monkeypatch, image):
    monkeypatch.setattr(daemon, "MAX_ANSWER_BYTES", 100_000)
    stub = _StubEngine("unix")
    try:
        client = EngineApiClient(stub.address)
        with pytest.raises(EngineRefused) as caught:
            client.inspect_image(image)
        assert str(caught.value) == f"image {image}: the answer is over 100,000 bytes"
        assert client.inspect_image("app:1") == {"Id": "x"}  # the others still go through
        client.close()
    finally:
        stub.stop()


_GOOD = classic_image("good", tags=["good/app:1"])
_BAD = classic_image("bad", tags=["bad/app:1"])


def _stub_answers(**overrides):
    """The stub's answers for an engine holding _BAD and _GOOD, with some replaced (raw bytes)."""
    answers = {
        "/v1.49/images/json": [
            {"Id": _BAD["inspect"]["Id"], "RepoTags": ["bad/app:1"]},
            {"Id": _GOOD["inspect"]["Id"], "RepoTags": ["good/app:1"]},
        ],
        "/v1.49/info": {"DriverStatus": [["Backing Filesystem", "extfs"]]},
    }
    for image in (_BAD, _GOOD):
        answers[f"/v1.49/images/{image['inspect']['Id']}/json"] = image["inspect"]
        answers[f"/v1.49/images/{image['inspect']['Id']}/history"] = image["history"]
    answers.update(overrides)
    return {path: body if isinstance(body, bytes) else json.dumps(body).encode() for path, body in answers.items()}


def _collect_stub(answers):
    stub = _StubEngine("unix", answers=answers)
    try:
        source = DockerDaemon(location=stub.address, workers=2, window=4)
        items = list(source.records(Context(source.kind, source.location)))
    finally:
        stub.stop()
    return [i for i in items if isinstance(i, ImageRecord)], [str(i) for i in items if isinstance(i, SourceError)]


_BAD_ID = _BAD["inspect"]["Id"]


@pytest.mark.parametrize(
    "path, body, reason",
    [
        (
            f"/v1.49/images/{_BAD_ID}/json",
            b"[1,2,3]",
            "the answer to GET /images/{name}/json is an array, not an object",
        ),
        (f"/v1.49/images/{_BAD_ID}/json", b"null", "the answer to GET /images/{name}/json is null, not an object"),
        (
            f"/v1.49/images/{_BAD_ID}/history",
            b"5",
            "the answer to GET /images/{name}/history is a number, not an array",
        ),
        (
            f"/v1.49/images/{_BAD_ID}/history",
            b'{"a":1}',
            "the answer to GET /images/{name}/history is an object, not an array",
        ),
    ],
)
def test_an_image_answer_of_the_wrong_json_type_fails_that_image_only(path, body, reason):
    records, errors = _collect_stub(_stub_answers(**{path: body}))
    assert [r.name for r in records] == ["good/app"]
    assert len(errors) == 1
    assert errors[0].startswith(("docker-daemon: image ", "docker-daemon: history of image "))
    assert errors[0].count(_BAD_ID) == 1 and errors[0].endswith(reason)  # the image named once


@pytest.mark.parametrize(
    "path, body, message",
    [
        ("/v1.49/images/json", b"5", "listing images: the answer to GET /images/json is a number, not an array"),
        ("/v1.49/images/json", b"true", "listing images: the answer to GET /images/json is a boolean, not an array"),
        ("/v1.49/images/json", b'"x"', "listing images: the answer to GET /images/json is a string, not an array"),
        ("/v1.49/info", b"[1,2]", "engine info: the answer to GET /info is an array, not an object"),
    ],
)
def test_a_listing_or_info_of_the_wrong_json_type_fails_the_source_in_one_line(path, body, message):
    stub = _StubEngine("unix", answers=_stub_answers(**{path: body}))
    try:
        with pytest.raises(SourceError) as caught:
            list(DockerDaemon(location=stub.address).records(Context("docker-daemon", stub.address)))
    finally:
        stub.stop()
    assert str(caught.value) == f"docker-daemon: {message}"


def test_an_empty_listing_or_history_may_be_null():
    """Go encodes an empty slice as null; the engine's answer is then no images, or no history entries."""
    records, errors = _collect_stub(_stub_answers(**{f"/v1.49/images/{_BAD_ID}/history": b"null"}))
    assert sorted(r.name for r in records) == ["bad/app", "good/app"] and errors == []
    records, errors = _collect_stub(_stub_answers(**{"/v1.49/images/json": b"null"}))
    assert records == [] and errors == []


def test_a_driver_status_that_is_not_a_list_reads_as_the_classic_store():
    records, errors = _collect_stub(_stub_answers(**{"/v1.49/info": b'{"DriverStatus": 5}'}))
    assert sorted(r.name for r in records) == ["bad/app", "good/app"] and errors == []


def test_a_listing_far_denser_than_a_real_one_is_refused_unparsed(monkeypatch):
    monkeypatch.setattr(daemon, "MAX_PARSED_BYTES", 64 * 1024)
    real = json.loads(_stub_answers()["/v1.49/images/json"]) * 2000  # ~4x its bytes as parsed_size counts it
    records, errors = _collect_stub(_stub_answers(**{"/v1.49/images/json": json.dumps(real).encode()}))
    assert len(records) == 2 and errors == []
    dense = b"[" + b",".join([b"{}"] * 200_000) + b"]"
    stub = _StubEngine("unix", answers=_stub_answers(**{"/v1.49/images/json": dense}))
    try:
        with pytest.raises(SourceError) as caught:
            list(DockerDaemon(location=stub.address).records(Context("docker-daemon", stub.address)))
    finally:
        stub.stop()
    assert str(caught.value) == (
        "docker-daemon: listing images: the answer to GET /images/json holds too many values for its size"
    )


def test_an_image_answer_of_too_many_values_or_bytes_fails_that_image_only(monkeypatch):
    # 600,000 values in 3.3 MB, over the bound on a config's values, refused before it is parsed.
    history = b"[" + b'{"Size":0},' * 300_000 + b'{"Size":1}]'
    records, errors = _collect_stub(_stub_answers(**{f"/v1.49/images/{_BAD_ID}/history": history}))
    assert [r.name for r in records] == ["good/app"]
    assert errors == [
        f"docker-daemon: history of image {_BAD_ID}: the answer to GET /images/{{name}}/history holds too many values"
    ]
    monkeypatch.setattr(daemon, "MAX_DOCUMENT_BYTES", 100_000)
    inspect = dict(_BAD["inspect"], Comment="x" * 100_000)
    records, errors = _collect_stub(_stub_answers(**{f"/v1.49/images/{_BAD_ID}/json": inspect}))
    assert [r.name for r in records] == ["good/app"]
    assert errors == [f"docker-daemon: image {_BAD_ID}: the answer is over 100,000 bytes"]


def test_a_history_over_the_config_entry_bound_fails_that_image_only():
    fake = FakeEngine()
    bad = fake.add(classic_image("bad", tags=["bad/app:1"]))
    fake.add(classic_image("good", tags=["good/app:1"]))
    bad["history"] = bad["history"] + [{"Size": 0, "CreatedBy": "ENV A=1"}] * 20_000
    records, errors, _ = collect(fake)
    assert [r.name for r in records] == ["good/app"]
    image = bad["inspect"]["Id"]
    assert [str(e) for e in errors] == [
        f"docker-daemon: history of image {image}: 20,001 entries, over the 20,000 an image may have"
    ]
    fake.images[0]["history"] = fake.images[0]["history"][:20_000]
    records, errors, _ = collect(fake)
    assert sorted(r.name for r in records) == ["bad/app", "good/app"] and errors == []


def test_history_entries_keep_only_what_the_mapping_reads():
    fake = FakeEngine()
    image = fake.add(classic_image("a", tags=["a/b:1"], steps=APP_STEPS))
    image["history"] = [dict(entry, Extra=["x"] * 100) for entry in image["history"]]
    source = DockerDaemon(location=fake.address, connect=lambda address: fake)
    details = source._fetch(fake, image["inspect"]["Id"], None, False)
    assert all(set(entry) <= {"Created", "CreatedBy", "Comment", "Size"} for entry in details.history)
    assert len(details.history) == len(image["history"])


# ----------------------------------------------------------------------------- the engine's address and TLS


@pytest.mark.parametrize(
    "address, env, want",
    [
        ("unix:///run/d.sock", {}, daemon.Endpoint(socket_path="/run/d.sock")),
        ("unix://", {}, daemon.Endpoint(socket_path="/var/run/docker.sock")),
        ("unix://var/run/docker.sock", {}, daemon.Endpoint(socket_path="/var/run/docker.sock")),
        ("http+unix:///run/d.sock", {}, daemon.Endpoint(socket_path="/run/d.sock")),
        ("tcp://10.0.0.1:2375", {}, daemon.Endpoint(host="10.0.0.1", port=2375)),
        ("10.0.0.1:2375", {}, daemon.Endpoint(host="10.0.0.1", port=2375)),
        ("tcp://:2375", {}, daemon.Endpoint(host="127.0.0.1", port=2375)),
        ("tcp://[::1]:2375/api/", {}, daemon.Endpoint(host="::1", port=2375, prefix="/api")),
        (
            "tcp://h:2376",
            {"DOCKER_TLS_VERIFY": "1"},
            daemon.Endpoint(host="h", port=2376, tls=daemon.TlsSettings(True)),
        ),
        (
            "tcp://h:2376",
            {"DOCKER_TLS_VERIFY": "0"},
            daemon.Endpoint(host="h", port=2376, tls=daemon.TlsSettings(True)),
        ),
        ("tcp://h:2376", {"DOCKER_TLS_VERIFY": ""}, daemon.Endpoint(host="h", port=2376)),
        (
            "tcp://h:2376",
            {"DOCKER_CERT_PATH": "/nowhere"},
            daemon.Endpoint(host="h", port=2376, tls=daemon.TlsSettings(False)),
        ),
        ("http://h:2375", {"DOCKER_TLS_VERIFY": "1"}, daemon.Endpoint(host="h", port=2375)),
        ("https://h:2376", {}, daemon.Endpoint(host="h", port=2376, tls=daemon.TlsSettings(True))),
    ],
)
def test_engine_addresses_read_as_the_sdk_reads_them(address, env, want, monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.docker certificates
    assert daemon.endpoint_of(address, env) == want


def test_tls_files_are_taken_from_docker_cert_path_or_home(tmp_path, monkeypatch):
    folder = tmp_path / "certs"
    folder.mkdir()
    (folder / "ca.pem").write_text("x")
    assert daemon.tls_from_env({"DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(folder)}) == daemon.TlsSettings(
        True, ca_file=str(folder / "ca.pem")
    )
    (folder / "cert.pem").write_text("x")
    (folder / "key.pem").write_text("x")
    home = tmp_path / "home"
    (home / ".docker").mkdir(parents=True)
    for name in ("cert.pem", "key.pem"):
        (home / ".docker" / name).write_text("x")
    monkeypatch.setenv("HOME", str(home))
    assert daemon.tls_from_env({"DOCKER_TLS_VERIFY": "yes"}) == daemon.TlsSettings(
        True, cert_file=str(home / ".docker" / "cert.pem"), key_file=str(home / ".docker" / "key.pem")
    )
    assert daemon.tls_from_env({"DOCKER_CERT_PATH": str(folder)}).cert_file == str(folder / "cert.pem")
    assert daemon.tls_from_env({}) is None


@pytest.mark.parametrize(
    "address, reason",
    [
        (
            "ssh://me@build-host;id",
            "not an ssh address: after ssh: comes [USER@]HOST[:PORT][/SOCKET], of letters, digits and . _ -",
        ),
        (
            "npipe:////./pipe/docker_engine",
            "npipe:// addresses are not supported (unix://, tcp://, http://, https:// and ssh:// are)",
        ),
        ("tcp://10.0.0.1", "not an engine address (unix://PATH or tcp://HOST:PORT)"),
        ("tcp://10.0.0.1:99999", "not an engine address (unix://PATH or tcp://HOST:PORT)"),
    ],
)
def test_unusable_engine_address_is_one_line(address, reason):
    source = DockerDaemon(location=address)
    with pytest.raises(SourceError) as caught:
        list(source.records(Context("docker-daemon", address)))
    assert str(caught.value) == f"docker-daemon: cannot reach the Docker engine at {address}: {reason}"


def test_answer_that_is_not_the_engine_api_is_one_line(tmp_path):
    import http.server

    class NotDocker(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "5")
            self.end_headers()
            self.wfile.write(b"hello")

    server = http.server.HTTPServer(("127.0.0.1", 0), NotDocker)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    address = f"tcp://127.0.0.1:{server.server_address[1]}"
    try:
        with pytest.raises(EngineUnavailable) as caught:
            EngineApiClient(address)
    finally:
        server.shutdown()
        server.server_close()
    assert str(caught.value) == (
        f"cannot reach the Docker engine at {address}: the answer to GET /version is not the Docker engine API's"
    )


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    from fake_engine import make_tls_files

    try:
        return make_tls_files(str(tmp_path_factory.mktemp("tls")))
    except FileNotFoundError as exc:
        pytest.fail(str(exc)) if os.environ.get("CI") else pytest.skip(str(exc))


def _tls_server_context(files, require_client_certificate=True):
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(files["server_cert"], files["server_key"])
    if require_client_certificate:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(files["ca"])
    return context


def test_tls_engine_found_through_docker_tls_verify_and_cert_path(tls_files, tmp_path):
    """Client certificates checked by the engine, its certificate checked against ca.pem: `dockerd --tlsverify`."""
    stub = _StubEngine("tcp", tls=_tls_server_context(tls_files))
    env = {"DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": tls_files["client"]}
    try:
        client = EngineApiClient(stub.address, environ=env)
        assert client.api_version == "1.49"
        for _ in range(5):
            assert client.inspect_image("app:1") == {"Id": "x"}
        with pytest.raises(NoSuchImage, match="No such image: missing"):
            client.inspect_image("missing")
        client.close()
        assert len(stub.connections) == 1

        def refused(environ):
            with pytest.raises(EngineUnavailable) as caught:
                EngineApiClient(stub.address, environ=environ, connect_timeout=5)
            text = str(caught.value)
            assert text.startswith(f"cannot reach the Docker engine at {stub.address}: ") and "\n" not in text
            return text

        # Our CA alone, no client certificate: the engine refuses.
        ca_only = tmp_path / "ca-only"
        ca_only.mkdir()
        (ca_only / "ca.pem").write_bytes(open(tls_files["ca"], "rb").read())
        refused({"DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(ca_only)})
        # A CA that did not sign the engine's certificate: we refuse.
        other = tmp_path / "other"
        other.mkdir()
        (other / "ca.pem").write_bytes(open(tls_files["server_cert"], "rb").read())
        assert "TLS: " in refused({"DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(other)})
        # Plain HTTP to a TLS port.
        refused({})
    finally:
        stub.stop()


def test_tls_without_verification_when_only_docker_cert_path_is_set(tls_files):
    stub = _StubEngine("tcp", tls=_tls_server_context(tls_files, require_client_certificate=False))
    try:
        client = EngineApiClient(stub.address, environ={"DOCKER_CERT_PATH": "/nonexistent"})
        assert client.image_history("app:1") == [{"Size": 1}]
        client.close()
    finally:
        stub.stop()


def test_unusable_tls_files_are_one_line(tls_files, tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (folder / name).write_text("not a certificate\n")
    with pytest.raises(EngineUnavailable) as caught:
        EngineApiClient("tcp://127.0.0.1:9", environ={"DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(folder)})
    assert str(caught.value).startswith(
        f"cannot reach the Docker engine at tcp://127.0.0.1:9: the TLS files ({folder}/ca.pem"
    )


def test_a_tls_file_over_its_limit_is_refused_unread(tmp_path):
    from indexer.sources.tlsfiles import MAX_TLS_FILE_BYTES

    folder = tmp_path / "huge"
    folder.mkdir()
    with open(folder / "ca.pem", "wb") as f:
        f.truncate(MAX_TLS_FILE_BYTES + 1)  # sparse: what a link to a device would never stop giving
    with pytest.raises(EngineUnavailable) as caught:
        EngineApiClient("tcp://127.0.0.1:9", environ={"DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(folder)})
    assert str(caught.value) == (
        f"cannot reach the Docker engine at tcp://127.0.0.1:9: the TLS file {folder}/ca.pem:"
        f" CA file is over the {MAX_TLS_FILE_BYTES}-byte limit"
    )


def test_engine_path_imports_neither_the_docker_sdk_nor_requests():
    stub = _StubEngine("unix")
    code = (
        "import sys\n"
        "from indexer.sources import SourceOptions, parse_source\n"
        "from indexer.sources.parse import Context\n"
        f"source = parse_source('docker-daemon:', SourceOptions(docker_host={stub.address!r}))\n"
        "items = list(source.records(Context(source.kind, source.location)))\n"
        "assert len(items) == 1, items\n"
        "leaked = [name for name in ('docker', 'requests') if name in sys.modules]\n"
        "assert not leaked, leaked\n"
    )
    try:
        result = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=os.path.dirname(os.path.dirname(__file__)),
        )
    finally:
        stub.stop()
    assert result.returncode == 0, result.stderr


# ----------------------------------------------------------------------------- tags the engine no longer holds


def _index_engine(monkeypatch, fake: FakeEngine, store: str, *args: str, code: int = 0):
    monkeypatch.setattr(daemon, "connect_engine", lambda address, environ=None: fake)
    result = CliRunner().invoke(cli, ["index", *args, "--store", store])
    assert result.exit_code == code, result.output
    return result


def _tags(store: str) -> dict[str, list[str]]:
    out = CliRunner().invoke(cli, ["list", "--store", store, "--page-size", "1000"])
    assert out.exit_code == 0, out.output
    return {doc["name"]: doc.get("tags", []) for doc in json.loads(out.stdout).get("images", [])}


def test_tags_the_engine_no_longer_lists_are_retired(tmp_path, monkeypatch):
    fake = FakeEngine()
    app = fake.add(classic_image("app", tags=["t/app:1", "t/app:2", "t/other:x"]))
    gone = fake.add(classic_image("gone", tags=["t/gone:1"]))
    store = str(tmp_path / "store")
    _index_engine(monkeypatch, fake, store, "docker-daemon:")
    assert _tags(store) == {"t/app": ["1", "2"], "t/other": ["x"], "t/gone": ["1"]}
    # `docker rmi t/app:2 t/other:x t/gone:1`: the last removes the image
    app["inspect"]["RepoTags"] = ["t/app:1"]
    fake.images.remove(gone)
    result = _index_engine(monkeypatch, fake, store, "docker-daemon:")
    # the images stay, untagged, as after a registry re-crawl
    assert _tags(store) == {"t/app": ["1"], "t/other": [], "t/gone": []}
    assert result.stderr.splitlines() == [
        "imgdex: note: docker-daemon: removed 3 tags it no longer holds "
        "(docker.io/t/app:2, docker.io/t/gone:1, docker.io/t/other:x)"
    ]
    # Said once: an unchanged engine retires nothing more.
    assert not _index_engine(monkeypatch, fake, store, "docker-daemon:").stderr


def test_a_named_image_is_not_the_engines_list_of_tags(tmp_path, monkeypatch):
    fake = FakeEngine()
    app = fake.add(classic_image("app", tags=["t/app:1", "t/app:2"]))
    fake.add(classic_image("other", tags=["t/other:1"]))
    store = str(tmp_path / "store")
    _index_engine(monkeypatch, fake, store, "docker-daemon:")
    app["inspect"]["RepoTags"] = ["t/app:1"]
    fake.images[1]["inspect"]["RepoTags"] = []
    _index_engine(monkeypatch, fake, store, "docker-daemon:t/app:1")
    assert _tags(store) == {"t/app": ["1", "2"], "t/other": ["1"]}


def test_another_engine_retires_none_of_this_ones_tags(tmp_path, monkeypatch):
    fake = FakeEngine()
    fake.add(classic_image("app", tags=["t/app:1"]))
    store = str(tmp_path / "store")
    _index_engine(monkeypatch, fake, store, "docker-daemon:")
    empty = FakeEngine(address="unix:///other/docker.sock")
    _index_engine(monkeypatch, empty, store, "docker-daemon:", "--docker-host", empty.address)
    assert _tags(store) == {"t/app": ["1"]}
    _index_engine(monkeypatch, FakeEngine(), store, "docker-daemon:")  # the first engine, emptied
    assert _tags(store) == {"t/app": []}


def test_tags_of_an_image_a_more_exact_source_recorded_are_not_the_engines(tmp_path, monkeypatch):
    fake, _, layout = _engine_and_layout_of_one_image(tmp_path)
    store = str(tmp_path / "store")
    _index_engine(monkeypatch, fake, store, f"oci:{layout}", "docker-daemon:")
    assert _tags(store) == {"team/app": ["stable", "v1"]}
    fake.images[0]["inspect"]["RepoTags"] = []  # the layout's record is the store's: its tags are its word
    _index_engine(monkeypatch, fake, store, "docker-daemon:")
    assert _tags(store) == {"team/app": ["stable", "v1"]}


def test_a_listing_not_read_whole_retires_nothing(tmp_path, monkeypatch):
    fake = FakeEngine()
    app = fake.add(classic_image("app", tags=["t/app:1", "t/app:2"]))
    store = str(tmp_path / "store")
    _index_engine(monkeypatch, fake, store, "docker-daemon:")
    app["inspect"]["RepoTags"] = ["t/app:1"]
    listing = fake.list_images
    # An entry that is no object: whatever tags it held are unknown.
    monkeypatch.setattr(fake, "list_images", lambda **kw: [*listing(**kw), 5])
    result = _index_engine(monkeypatch, fake, store, "docker-daemon:", code=1)
    assert "entry 1 is a number, not an object" in result.stderr
    assert _tags(store) == {"t/app": ["1", "2"]}
    # An engine that stops answering part way through: the run ends before any tag is retired.
    monkeypatch.setattr(fake, "list_images", listing)
    fake.fail_inspect[app["inspect"]["Id"]] = EngineUnavailable("the engine is gone")
    _index_engine(monkeypatch, fake, store, "docker-daemon:", code=1)
    assert _tags(store) == {"t/app": ["1", "2"]}


def test_each_shard_retires_the_tags_of_its_repositories(tmp_path, monkeypatch):
    from indexer.shard import Shard, repository_key

    fake = FakeEngine()
    names = [f"t/app{i}" for i in range(8)]
    for name in names:
        fake.add(classic_image(name, tags=[f"{name}:1", f"{name}:2"]))
    store = str(tmp_path / "store")
    _index_engine(monkeypatch, fake, store, "docker-daemon:")
    for image in fake.images:
        image["inspect"]["RepoTags"] = image["inspect"]["RepoTags"][:1]
    first = Shard.parse("1/2")
    _index_engine(monkeypatch, fake, store, "docker-daemon:", "--shard", "1/2")
    mine = {name for name in names if first.owns(repository_key("docker.io", name))}
    assert mine and mine != set(names)
    assert _tags(store) == {name: ["1"] if name in mine else ["1", "2"] for name in names}
    _index_engine(monkeypatch, fake, store, "docker-daemon:", "--shard", "2/2")
    assert _tags(store) == {name: ["1"] for name in names}
