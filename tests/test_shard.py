"""--shard K/N: the text, the ownership function, and every source taking its slice.

For each source kind the N shards are disjoint and their union is exactly the unsharded run:
the same records (as a multiset, since the run merges repeated ids), the same errors, and for
archives and folders the same notes. The registry part runs against Debian's docker-registry.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import subprocess
import sys
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from builders import (
    OCI_INDEX,
    OCI_MANIFEST,
    Blobs,
    classic_save_files,
    digest_of,
    dumps,
    named,
    write_dir,
    write_tar,
)
from conftest import REAL, ROOT
from fake_engine import EngineRefused, FakeEngine, classic_image, containerd_image
from indexer.errors import SourceError
from indexer.model import ImageRecord
from indexer.shard import Shard, in_shard, repository_key
from indexer.sources import parse_source
from indexer.sources.daemon import DockerDaemon
from indexer.sources.parse import Context

# ---------------------------------------------------------------- the text and the function


def test_parse_takes_k_of_n_one_based():
    assert Shard.parse("1/1") == Shard(1, 1) == Shard.ALL
    assert Shard.parse("2/4") == Shard(2, 4)
    assert Shard.parse("4/4") == Shard(4, 4)
    assert Shard.parse("17/100") == Shard(17, 100)
    assert str(Shard.parse("3/8")) == "3/8"


@pytest.mark.parametrize(
    "text",
    [
        "0/4",
        "5/4",
        "a/b",
        "1/0",
        "0/0",
        "-1/4",
        "+1/4",
        "1/-4",
        " 1/4",
        "1/4 ",
        "1 /4",
        "1/ 4",
        "1/4\n",
        "\t1/4",
        "",
        "/",
        "1",
        "1/",
        "/4",
        "1/4/8",
        "1.0/4",
        "01/4",
        "1/04",
        "\u0661/\u0664",  # Arabic-Indic digits: int() takes them, a shard text does not
        "\uff11/\uff14",  # fullwidth digits
        "1_0/20",
        "1234567890/1234567891",
    ],
)
def test_parse_refuses_bad_text_in_one_line(text):
    with pytest.raises(ValueError) as caught:
        Shard.parse(text)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("invalid shard ")
    assert "K/N" in message


def test_parse_refuses_what_is_not_text():
    for value in (None, 2, b"1/2"):
        with pytest.raises(ValueError):
            Shard.parse(value)


def test_constructor_checks_the_range():
    for index, count in ((0, 4), (5, 4), (1, 0), (-1, 3), (True, 2)):
        with pytest.raises(ValueError):
            Shard(index, count)


def test_shard_is_frozen_and_hashable():
    shard = Shard(1, 2)
    with pytest.raises(AttributeError):
        shard.index = 2
    assert {Shard(1, 2), Shard.parse("1/2")} == {shard}


def _expected_owner(key: str, count: int) -> int:
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % count + 1


def test_owns_is_the_first_eight_bytes_of_sha256_mod_n():
    keys = ["docker.io/library/ubuntu", "sha256:" + "0" * 64, "", "folder/a.tar", "ключ", "\udcff.tar"]
    for count in range(1, 9):
        for key in keys:
            owners = [k for k in range(1, count + 1) if Shard(k, count).owns(key)]
            assert owners == [_expected_owner(key, count)]


# Workers of different versions may crawl into one store: who owns what must never change.
PINNED = [2, 7, 2, 6, 7, 6, 2, 1, 4, 3, 4, 7, 7, 5, 5, 7, 2, 2, 4, 6]


def _pinned() -> list[int]:
    return [next(k for k in range(1, 8) if Shard(k, 7).owns(f"repo/{i}")) for i in range(20)]


def test_owners_are_pinned():
    assert _pinned() == PINNED
    assert [k for k in range(1, 5) if Shard(k, 4).owns("docker.io/library/ubuntu")] == [1]


def test_owners_do_not_depend_on_the_process():
    code = (
        "import json; from indexer.shard import Shard; "
        "print(json.dumps([next(k for k in range(1, 8) if Shard(k, 7).owns(f'repo/{i}')) for i in range(20)]))"
    )
    seen = set()
    for seed in ("0", "1", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
        )
        seen.add(out.stdout.strip())
    assert seen == {json.dumps(PINNED)}


def test_in_shard_none_and_all_take_everything():
    for key in ("a", "", "b/c"):
        assert in_shard(None, key) and in_shard(Shard.ALL, key) and Shard.ALL.owns(key)


def test_slices_are_balanced():
    keys = [f"registry.example/team/app{i}" for i in range(8000)]
    counts = collections.Counter(next(k for k in range(1, 5) if Shard(k, 4).owns(key)) for key in keys)
    assert all(1700 < counts[k] < 2300 for k in range(1, 5)), counts


_KEYS = st.one_of(
    st.text(),
    st.text(alphabet=st.characters(categories=["Cs"])),  # lone surrogates, as os.fsdecode makes
    st.binary().map(lambda raw: "sha256:" + hashlib.sha256(raw).hexdigest()),
)


@given(key=_KEYS, count=st.integers(min_value=1, max_value=8))
@settings(max_examples=500, deadline=None)
def test_exactly_one_shard_owns_each_key(key, count):
    owners = [index for index in range(1, count + 1) if Shard(index, count).owns(key)]
    assert owners == [_expected_owner(key, count)]
    assert Shard.parse(f"{owners[0]}/{count}").owns(key)


def test_repository_key_names_host_and_path():
    assert repository_key("127.0.0.1:5000", "team/app") == "127.0.0.1:5000/team/app"


# ---------------------------------------------------------------- sources on synthetic input


def run(source, shard: Shard | None, **ctx):
    notes: list[str] = []
    context = Context(source.kind, source.location, note=notes.append, shard=shard, **ctx)
    items = list(source.records(context))
    records = [i for i in items if isinstance(i, ImageRecord)]
    errors = [str(i) for i in items if isinstance(i, SourceError)]
    return records, errors, notes


def run_spec(spec: str, shard: Shard | None, **ctx):
    return run(parse_source(spec), shard, **ctx)


def assert_partition(whole, parts, *, notes=True):
    """`parts` (one (records, errors, notes) per shard) are disjoint and add up to `whole`."""
    records, errors, whole_notes = whole
    assert records, "a partition of nothing proves nothing"
    union = collections.Counter()
    owners: dict[str, int] = {}
    for number, (part_records, _, _) in enumerate(parts):
        union.update(part_records)
        for record in part_records:
            assert owners.setdefault(record.id, number) == number, f"{record.id} is in two shards"
    assert union == collections.Counter(records)
    assert collections.Counter(e for part in parts for e in part[1]) == collections.Counter(errors)
    if notes:
        assert collections.Counter(n for part in parts for n in part[2]) == collections.Counter(whole_notes)


def sharded(count: int) -> list[Shard]:
    return [Shard(index, count) for index in range(1, count + 1)]


def check_partitions(runner, counts=(1, 2, 3, 4, 7), notes=True):
    whole = runner(None)
    assert runner(Shard.ALL) == whole
    for count in counts:
        assert_partition(whole, [runner(shard) for shard in sharded(count)], notes=notes)
    return whole


def layout_images(blobs: Blobs) -> list[dict]:
    """Top-level descriptors: plain images, an index with children, one manifest listed three
    times (two names, two tags in one of them), and a descriptor whose manifest is missing (one
    error)."""
    top = [named(blobs.image(layers=(f"layer-{i}".encode(),)), f"v{i}") for i in range(12)]
    amd = blobs.image(layers=(b"amd",))
    arm = blobs.image(layers=(b"arm",), arch="arm64")
    top.append(
        named(
            blobs.index(
                [dict(amd, platform={"os": "linux", "architecture": "amd64"}), dict(arm, platform={"os": "linux"})]
            ),
            "docker.io/library/multi:1",
        )
    )
    twice = blobs.image(layers=(b"twice",))
    top += [named(twice, "cr.example/a/b:1"), named(twice, "cr.example/c/d:2"), named(twice, "cr.example/a/b:3")]
    missing = {"mediaType": OCI_MANIFEST, "digest": digest_of(b"not there"), "size": 9}
    top.append(named(missing, "gone"))
    return top


def test_oci_layout_shards_partition_the_records(tmp_path):
    blobs = Blobs()
    write_dir(str(tmp_path), blobs.layout_files(layout_images(blobs)))
    whole = check_partitions(lambda shard: run_spec(f"oci:{tmp_path}", shard, repository="team/app"))
    assert len(whole[0]) == 12 + 3 + 3 and len(whole[1]) == 1


def test_a_shard_reads_only_its_own_manifests(tmp_path, monkeypatch):
    from indexer.sources import layout

    blobs = Blobs()
    top = layout_images(blobs)
    write_dir(str(tmp_path), blobs.layout_files(top))
    read: list[str] = []
    original = layout.DirBlobs.read_blob

    def spy(self, digest, limit):
        read.append(digest)
        return original(self, digest, limit)

    monkeypatch.setattr(layout.DirBlobs, "read_blob", spy)
    keys = layout.shard_keys(layout.DirBlobs(str(tmp_path)), (tmp_path / "index.json").read_bytes(), "x")
    assert len(set(keys)) == len(top) - 2  # the manifest listed three times is one unit
    plain = [d["mediaType"] == OCI_MANIFEST for d in top]
    for shard in sharded(3):
        read.clear()
        run_spec(f"oci:{tmp_path}", shard, repository="team/app")
        own = {d["digest"] for d, key in zip(top, keys) if shard.owns(key)}
        others = {d["digest"] for d, key, leaf in zip(top, keys, plain) if leaf and not shard.owns(key)}
        assert own - {top[-1]["digest"]} <= set(read)  # the last one is missing: asked for, not found
        assert not others & set(read)  # indexes are read by every shard, the others' manifests never


def test_a_manifest_reached_twice_is_one_shards(tmp_path):
    """An index's child also listed on its own, two indexes sharing a child, nested indexes: each
    group of descriptors that reach a common manifest is walked whole by one shard."""
    blobs = Blobs()
    top = []
    for i in range(6):
        amd = blobs.image(layers=(f"amd-{i}".encode(),))
        arm = blobs.image(layers=(f"arm-{i}".encode(),), arch="arm64")
        platforms = [dict(amd, platform={"os": "linux", "architecture": "amd64"}), dict(arm, platform={"os": "linux"})]
        index = blobs.index(platforms)
        top += [named(index, f"reg.example/multi{i}:1"), named(amd, f"reg.example/multi{i}:1-amd64")]
        if i % 2:
            top.append(named(blobs.index([platforms[1]]), f"reg.example/multi{i}:arm-only"))
        if i == 4:
            top.append(named(blobs.index([index]), f"reg.example/multi{i}:nested"))
    top += [named(blobs.image(layers=(f"plain-{i}".encode(),)), f"reg.example/plain:{i}") for i in range(6)]
    write_dir(str(tmp_path), blobs.layout_files(top))
    whole = check_partitions(lambda shard: run_spec(f"oci:{tmp_path}", shard))
    assert len({r.id for r in whole[0]}) < len(whole[0])  # the same resources do come from several walks


@pytest.mark.parametrize("with_index", [False, True])
def test_a_streamed_index_is_sharded_as_a_small_one_in_two_passes(tmp_path, monkeypatch, with_index):
    """A large index.json is read one descriptor at a time: once to check it whole, once to walk.
    Where no descriptor may be an index, the check also tells each descriptor's shard key, so a
    shard reads the file no more often than an unsharded walk does; the partition is the same."""
    from indexer.sources import layout

    blobs = Blobs()
    top = layout_images(blobs) if with_index else [named(blobs.image(layers=(b"%d" % i,)), f"v{i}") for i in range(20)]
    top.append(named(dict(blobs.image(layers=(b"odd",)), mediaType=["x"]), "odd"))  # no index either
    write_dir(str(tmp_path), blobs.layout_files(top))
    small = check_partitions(lambda shard: run_spec(f"oci:{tmp_path}", shard, repository="team/app"))

    passes = []
    original = layout._index_elements

    def counted(pieces, where, summary):
        passes.append(where)
        return original(pieces, where, summary)

    monkeypatch.setattr(layout, "MAX_JSON_BYTES", 16)  # stream even a small index
    monkeypatch.setattr(layout, "_index_elements", counted)
    streamed = check_partitions(lambda shard: run_spec(f"oci:{tmp_path}", shard, repository="team/app"))
    assert streamed == small
    for shard in (None, *sharded(3)):
        passes.clear()
        run_spec(f"oci:{tmp_path}", shard, repository="team/app")
        assert len(passes) == (3 if with_index and shard is not None else 2)  # grouping below an index: one more


descriptor_values = st.one_of(
    st.none(),
    st.integers(),
    st.text(max_size=4),
    st.lists(st.text(max_size=3), max_size=2),
    st.dictionaries(
        st.sampled_from(["mediaType", "digest", "size"]),
        st.one_of(
            st.sampled_from(
                [
                    "",
                    "sha256:" + "a" * 64,
                    "sha256:" + "b" * 64,
                    OCI_MANIFEST,
                    OCI_INDEX,
                    "application/vnd.docker.distribution.manifest.list.v2+json",
                ]
            ),
            st.none(),
            st.integers(),
            st.lists(st.text(max_size=2), max_size=2),
            st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
        ),
    ),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(descriptor_values, max_size=6))
def test_shard_keys_take_any_descriptors_and_agree_with_the_check(tmp_path_factory, descriptors):
    """Grouping runs before descriptors are checked: any JSON there gives keys, never an exception,
    and where the check finds no possible index, the keys are the descriptors' own."""
    from indexer.sources import layout

    root = tmp_path_factory.mktemp("layout")
    (root / "blobs" / "sha256").mkdir(parents=True)
    data = json.dumps({"schemaVersion": 2, "manifests": descriptors}).encode()
    keys = layout.shard_keys(layout.DirBlobs(str(root)), data, "x")
    own = [layout.descriptor_key(raw, position) for position, raw in enumerate(descriptors)]
    for whole in (True, False):
        index = layout.IndexJson("x", len(data) if whole else 1 << 30, lambda: iter([data]))
        if not index.lists_indexes():
            assert keys == own
    assert layout.IndexJson("x", len(data), lambda: iter([data])).lists_indexes() == (
        layout.IndexJson("x", 1 << 30, lambda: iter([data])).lists_indexes()
    )


@pytest.mark.parametrize("media_type", [["x"], {"a": 1}, 7])
def test_a_media_type_that_is_no_string_is_one_error_in_any_shard(tmp_path, media_type):
    """Grouping descriptors for shards looks at media types before any check has run: a list or an
    object there must not stop the run (a list is unhashable), and is the walk's one error."""
    blobs = Blobs()
    top = [named(blobs.image(layers=(f"plain-{i}".encode(),)), f"reg.example/plain:{i}") for i in range(5)]
    odd = dict(blobs.image(layers=(b"odd",)), mediaType=media_type)
    child = blobs.image(layers=(b"child",))
    index = blobs.index([dict(child, platform={"os": "linux", "architecture": "amd64"}), odd])
    top += [named(odd, "reg.example/odd:1"), named(index, "reg.example/multi:1")]
    write_dir(str(tmp_path), blobs.layout_files(top))
    records, errors, _ = check_partitions(lambda shard: run_spec(f"oci:{tmp_path}", shard))
    assert sorted(r.name for r in records) == ["multi"] * 2 + ["plain"] * 5  # the index and its good child
    assert len(errors) == 2 and all("has an invalid mediaType" in e for e in errors)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.lists(st.tuples(st.integers(0, 30), st.sampled_from([None, "arm64"])), min_size=1, max_size=4),
        max_size=5,
    ),
    st.lists(st.tuples(st.integers(0, 30), st.integers(0, 2)), min_size=1, max_size=7),
)
def test_indexes_shared_between_descriptors_partition_exactly(tmp_path_factory, indexes, tops):
    """What one descriptor's walk reads once for another (an index's children, a kept index) is
    shared only between descriptors that meet, which one shard walks: any layout of images and
    indexes over each other, listed again alike or not, partitions exactly."""
    root = tmp_path_factory.mktemp("shared")
    blobs = Blobs()
    nodes = [blobs.image(layers=(b"shared-%d" % i,)) for i in range(4)]
    for children in indexes:
        listed = []
        for pick, arch in children:
            child = dict(nodes[pick % len(nodes)])
            if arch:
                child["platform"] = {"os": "linux", "architecture": arch}
            listed.append(child)
        nodes.append(blobs.index(listed))
    top = [named(nodes[pick % len(nodes)], f"reg.example/repo{repo}:t{n}") for n, (pick, repo) in enumerate(tops)]
    write_dir(str(root), blobs.layout_files(top))
    check_partitions(lambda shard: run_spec(f"oci:{root}", shard), counts=(2, 3))


def test_layout_ref_not_found_is_said_by_every_shard_alike(tmp_path):
    blobs = Blobs()
    write_dir(str(tmp_path), blobs.layout_files(layout_images(blobs)))
    for shard in sharded(3):
        records, errors, _ = run_spec(f"oci:{tmp_path}:nope", shard)
        assert not records and len(errors) == 1 and "no image named 'nope'" in errors[0]
    # a ref that exists is one shard's
    counts = [len(run_spec(f"oci:{tmp_path}:v3", shard, repository="x")[0]) for shard in sharded(3)]
    assert sorted(counts) == [0, 0, 1]


def test_oci_archive_shards_partition_the_records(tmp_path):
    blobs = Blobs()
    path = write_tar(str(tmp_path / "a.tar"), blobs.layout_files(layout_images(blobs)))
    check_partitions(lambda shard: run_spec(f"oci-archive:{path}", shard, repository="team/app"))
    check_partitions(lambda shard: run_spec(path, shard, repository="team/app"), counts=(3,))


def test_classic_docker_save_is_sharded_by_image_id(tmp_path):
    images = [{"tags": [f"team/app{i % 3}:{i}"], "layers": [f"l{i}".encode(), b"shared"]} for i in range(10)]
    images.append({"tags": ["team/app0:also", "other/app:x"], "layers": [b"two-repos"]})
    images.append({"tags": None, "layers": [b"untagged"]})
    files = classic_save_files(images)
    manifest = json.loads(files["manifest.json"])
    manifest.append({"Config": "missing.json", "RepoTags": ["team/broken:1"], "Layers": []})
    files["manifest.json"] = dumps(manifest)
    path = write_tar(str(tmp_path / "save.tar"), files)
    whole = check_partitions(lambda shard: run_spec(f"docker-archive:{path}", shard, repository="r/x"))
    assert len(whole[0]) == 13 and len(whole[1]) == 1
    # the two records of the image in two repositories are one shard's
    for shard in sharded(4):
        names = {r.name for r in run_spec(path, shard)[0] if r.config.digest == whole[0][10].config.digest}
        assert names in (set(), {"team/app0", "other/app"})


def docker25_save(tmp_path) -> str:
    """A Docker 25+ save: layout descriptors, their manifest.json entries, an entry only
    manifest.json knows (classic record), and a descriptor whose walk fails while its entry can
    still be read the classic way (both said, by one shard)."""
    blobs = Blobs()
    top, entries = [], []

    def entry(descriptor: dict, tags: list[str]) -> None:
        manifest = json.loads(blobs.blobs[descriptor["digest"]])
        config_hex = manifest["config"]["digest"].split(":")[1]
        layers = [f"blobs/sha256/{layer['digest'].split(':')[1]}" for layer in manifest["layers"]]
        entries.append({"Config": f"blobs/sha256/{config_hex}", "RepoTags": tags, "Layers": layers})

    for i in range(8):
        descriptor = blobs.image(layers=(f"d25-{i}".encode(),))
        top.append(named(descriptor, containerd=f"docker.io/team/app{i % 3}:{i}"))
        entry(descriptor, [f"team/app{i % 3}:{i}"])
    alone = blobs.image(layers=(b"manifest-json-only",))
    entry(alone, ["team/alone:1"])
    # its layer descriptor claims a size the blob does not have: the walk fails, the entry stands
    good = json.loads(blobs.blobs[blobs.image(layers=(b"liar",))["digest"]])
    good["layers"][0]["size"] += 1
    liar = blobs.add(dumps(good), OCI_MANIFEST)
    top.append(named(liar, containerd="docker.io/team/liar:1"))
    entries.append(
        {
            "Config": f"blobs/sha256/{good['config']['digest'].split(':')[1]}",
            "RepoTags": ["team/liar:1"],
            "Layers": [f"blobs/sha256/{good['layers'][0]['digest'].split(':')[1]}"],
        }
    )
    files = blobs.layout_files(top)
    files["manifest.json"] = dumps(entries)
    return write_tar(str(tmp_path / "save25.tar"), files)


def test_docker25_save_is_sharded_with_its_manifest_json_entries(tmp_path):
    path = docker25_save(tmp_path)
    whole = check_partitions(lambda shard: run_spec(f"docker-archive:{path}", shard))
    names = sorted(r.name for r in whole[0])
    assert names.count("team/alone") == 1 and names.count("team/liar") == 1 and len(whole[1]) == 1
    assert len(whole[0]) == 10


def fan_out(blobs: Blobs) -> list[dict]:
    """Five plain images and a chain of 16 indexes, each listing the next ten times: 10**16 paths
    down to one manifest, in about 25 KB."""
    top = [named(blobs.image(layers=(f"fan-{i}".encode(),)), f"reg.example/plain:{i}") for i in range(5)]
    descriptor = blobs.image(layers=(b"deep",))
    for _ in range(16):
        descriptor = blobs.index([descriptor] * 10)
    return top + [named(descriptor, "reg.example/deep:1")]


@pytest.mark.parametrize("kind", ["oci", "oci-archive", "docker-archive"])
def test_indexes_that_fan_out_are_grouped_for_shards_in_bounded_reads(tmp_path, monkeypatch, kind):
    """Grouping follows an index's children to see which descriptors meet. Read once per index,
    a chain that lists each next index ten times costs 17 reads; followed down every path it would
    not end. The walk, too, walks each index's children once, and the shards partition it."""
    from indexer.sources import layout

    blobs = Blobs()
    top = fan_out(blobs)
    files = blobs.layout_files(top)
    if kind == "oci":
        write_dir(str(tmp_path), files)
        spec = f"oci:{tmp_path}"
    else:
        if kind == "docker-archive":  # a Docker 25+ save: manifest.json beside the layout
            entries = []
            for descriptor in top[:5]:
                manifest = json.loads(blobs.blobs[descriptor["digest"]])
                entries.append(
                    {
                        "Config": f"blobs/sha256/{manifest['config']['digest'].split(':')[1]}",
                        "RepoTags": [descriptor["annotations"]["org.opencontainers.image.ref.name"]],
                        "Layers": [f"blobs/sha256/{layer['digest'].split(':')[1]}" for layer in manifest["layers"]],
                    }
                )
            files["manifest.json"] = dumps(entries)
        spec = f"{kind}:{write_tar(str(tmp_path / 'fan.tar'), files)}"

    reads = collections.Counter()
    for owner in (layout.DirBlobs, layout.TarBlobs):
        original = owner.read_blob

        def counted(self, digest, limit, original=original):
            reads[digest] += 1
            if sum(reads.values()) > 20_000:
                pytest.fail("reading the same indexes over and over")
            return original(self, digest, limit)

        monkeypatch.setattr(owner, "read_blob", counted)

    whole = run_spec(spec, None, repository="team/app")
    assert not whole[1] and {r.name for r in whole[0]} == {"plain", "deep"}
    assert len({r.id for r in whole[0]}) == 5 + 17
    for count in (2, 3):
        parts = [run_spec(spec, shard, repository="team/app") for shard in sharded(count)]
        assert_partition(whole, parts)


@pytest.mark.parametrize(
    "name", sorted(n for n in os.listdir(REAL) if n.endswith((".tar", ".gz", ".zst")) or n == "oci-layout")
)
def test_real_fixtures_shard_exactly(name):
    path = os.path.join(REAL, name)
    check_partitions(lambda shard: run_spec(path, shard, repository="samples/app"), counts=(2, 3, 4))


def folder_of_exports(root) -> dict[str, str]:
    """A folder of archives and layouts (and things that are neither); key -> what it is."""
    made = {}
    for i in range(6):
        blobs = Blobs()
        descriptor = blobs.image(layers=(f"folder-{i}".encode(),))
        path = write_tar(str(root / f"oci-{i}.tar"), blobs.layout_files([named(descriptor, f"reg.example/f/oci:{i}")]))
        made[os.path.basename(path)] = "oci-archive"
    for i in range(4):
        files = classic_save_files([{"tags": [f"f/save{i}:1"], "layers": [f"save-{i}".encode()]}])
        os.makedirs(root / "nested" / "deeper", exist_ok=True)
        write_tar(str(root / "nested" / "deeper" / f"save-{i}.tar"), files)
        made[f"nested/deeper/save-{i}.tar"] = "docker-archive"
    for i in range(3):
        blobs = Blobs()
        top = [named(blobs.image(layers=(f"dir-{i}-{j}".encode(),)), f"v{j}") for j in range(3)]
        write_dir(str(root / f"layout-{i}"), blobs.layout_files(top))
        made[f"layout-{i}"] = "oci"
    (root / "README.txt").write_text("not an archive\n")
    (root / "broken.tar").write_bytes(b"\x1f\x8b" + b"\0" * 40)
    os.mkfifo(root / "a-fifo")
    made["README.txt"] = made["broken.tar"] = made["a-fifo"] = "other"
    return made


def test_folder_of_archives_is_sharded_by_file(tmp_path, monkeypatch):
    import indexer.sources as sources

    root = tmp_path / "exports"
    root.mkdir()
    made = folder_of_exports(root)
    whole = check_partitions(lambda shard: run_spec(str(root), shard, repository="f/dir"))
    assert len(whole[0]) == 6 + 4 + 9 and len(whole[1]) == 1
    assert any("README.txt" in n for n in whole[2]) and any("a-fifo" in n for n in whole[2])

    opened: list[str] = []
    original_tar, original_dir = sources.TarMembers.open, sources.read_layout_dir

    def open_spy(path, *args, **kwargs):
        opened.append(os.path.relpath(path, root))
        return original_tar(path, *args, **kwargs)

    def dir_spy(path, *args, **kwargs):
        opened.append(os.path.relpath(path, root))
        return original_dir(path, *args, **kwargs)

    monkeypatch.setattr(sources.TarMembers, "open", staticmethod(open_spy))
    monkeypatch.setattr(sources, "read_layout_dir", dir_spy)
    seen = []
    for shard in sharded(4):
        opened.clear()
        records, _, _ = run_spec(str(root), shard, repository="f/dir")
        own = {key for key in made if shard.owns(key) and key != "a-fifo"}
        assert set(opened) == own  # never one of the others' files
        assert all(os.path.relpath(r.source_path, root) in own for r in records)
        seen += opened
    assert sorted(seen) == sorted(key for key in made if key != "a-fifo")


def test_folder_with_no_archives_of_this_shard_is_no_error(tmp_path):
    root = tmp_path / "exports"
    root.mkdir()
    folder_of_exports(root)
    for shard in sharded(40):  # most own nothing, or only files that are no archive
        _, errors, _ = run_spec(str(root), shard)
        assert all("broken.tar" in e for e in errors)
    empty = tmp_path / "empty"
    empty.mkdir()
    for shard in sharded(3):  # nothing to share out: every shard says so, as one worker would
        with pytest.raises(SourceError, match="holds no image archives"):
            run_spec(str(empty), shard)


def ycr_document() -> list[dict]:
    images = []
    for i in range(15):
        digest = digest_of(f"ycr-{i}".encode())
        images.append(
            {
                "id": f"crp{i:017d}",
                "name": f"crp123/app{i % 4}",
                "digest": digest,
                "compressedSize": "10",
                "config": {"id": f"crpc{i:016d}", "digest": digest_of(f"cfg-{i}".encode()), "size": "5"},
                "layers": [{"id": f"crpl{i:016d}", "digest": digest_of(f"l-{i}".encode()), "size": "10"}],
                "tags": [str(i)],
                "createdAt": "2026-11-29T10:54:27Z",
            }
        )
    images.append(dict(images[0]))  # the same id twice, alike: one shard's, and kept once
    images.append(dict(images[2], tags=["again"]))  # the same id with other contents: one shard's error
    images.append({"name": "crp123/no-id"})  # an error, said once
    images.append(dict(images[1], id="crp99999999999999999", extra="x"))  # a note, said once
    return images


def test_ycr_json_is_sharded_by_image_id(tmp_path):
    path = tmp_path / "images.json"
    path.write_text(json.dumps({"images": ycr_document(), "nextPageToken": "t"}))
    whole = check_partitions(lambda shard: run_spec(f"ycr-json:{path}", shard), notes=False)
    assert len(whole[0]) == 16 and len(whole[1]) == 2
    for shard in sharded(4):
        records = run_spec(f"ycr-json:{path}", shard)[0]
        assert all(shard.owns(r.id) for r in records)
    lines = tmp_path / "images.jsonl"
    lines.write_text("\n".join(json.dumps(image) for image in ycr_document()))
    check_partitions(lambda shard: run_spec(f"ycr-json:{lines}", shard), counts=(3,), notes=False)


# ---------------------------------------------------------------- docker-daemon on a fake engine


def engine_run(fake: FakeEngine, shard: Shard | None, ref: str = "", all_images: bool = True, **ctx):
    source = DockerDaemon(location=fake.address, ref=ref, all_images=all_images, connect=lambda address: fake)
    return run(source, shard, **ctx)


def classic_engine() -> FakeEngine:
    fake = FakeEngine()
    for i in range(12):
        fake.add(classic_image(f"img{i}", tags=[f"team/app{i % 5}:{i}"]))
    fake.add(classic_image("two", tags=["multi/x:1", "multi/y:1", "127.0.0.1:5000/multi/z:2"]))
    for i in range(4):
        fake.add(classic_image(f"layer{i}"), intermediate=True)
    broken = fake.add(classic_image("broken", tags=["multi/x:broken", "multi/w:1", "multi/v:1"]))
    fake.fail_inspect[broken["inspect"]["Id"]] = EngineRefused("image broken: server error")
    return fake


def test_engine_is_sharded_by_repository():
    fake = classic_engine()
    whole = check_partitions(lambda shard: engine_run(fake, shard, repository="team/untagged"))
    assert len(whole[1]) == 1 and len(whole[0]) == 12 + 3 + 4
    for shard in sharded(4):
        records = engine_run(fake, shard, repository="team/untagged")[0]
        for record in records:
            key = (
                record.config.digest if record.name == "team/untagged" else repository_key(record.registry, record.name)
            )
            assert shard.owns(key)


def test_engine_shard_inspects_only_images_it_takes():
    fake = classic_engine()
    by_id = {image["inspect"]["Id"]: image for image in fake.images}
    total = 0
    for shard in sharded(3):
        fake.calls.clear()
        engine_run(fake, shard)
        inspected = {call[1] for call in fake.calls if call[0] in ("inspect", "history")}
        for image_id in inspected:
            inspect = by_id[image_id]["inspect"]
            names = [t.rsplit(":", 1)[0] for t in inspect["RepoTags"]]
            keys = [repository_key(*_split(n)) for n in names] or [image_id]
            assert any(shard.owns(k) for k in keys)
        total += fake.count("inspect")
    # an image in repositories of two shards is inspected by both, and no image by more
    assert len(by_id) <= total <= len(by_id) + 2 * 3


def _split(name: str) -> tuple[str, str]:
    from indexer.references import parse_reference

    ref = parse_reference(name)
    return ref.registry, ref.name


def test_containerd_engine_is_sharded_by_repository():
    fake = FakeEngine(api_version="1.49", containerd=True)
    for i in range(6):
        fake.add(
            containerd_image(
                f"multi{i}", tags=[f"team/c{i}:1"], platforms=(("linux", "amd64", ""), ("linux", "arm64", "v8"))
            )
        )
    fake.add(containerd_image("both", tags=["team/p:1", "team/q:1"], attestation=True))
    fake.add(containerd_image("single", tags=["team/s:1"], index=False))
    check_partitions(lambda shard: engine_run(fake, shard))


def test_engine_named_image_is_one_shards():
    fake = classic_engine()
    for ref in ("team/app1:1", "multi/y:1", fake.images[0]["inspect"]["Id"][7:19]):
        whole = engine_run(fake, None, ref=ref)
        assert whole[0]
        assert_partition(whole, [engine_run(fake, shard, ref=ref) for shard in sharded(4)])
    missing = [engine_run(fake, shard, ref="no/such:1") for shard in sharded(4)]
    assert sum(len(errors) for _, errors, _ in missing) == 1


# ---------------------------------------------------------------- docker:// against a real registry


def push_image(url: str, repo: str, blobs: Blobs, descriptor: dict, tags: list[str]) -> None:
    from registry_server import push_blob, push_manifest

    def push(desc: dict) -> None:
        doc = json.loads(blobs.blobs[desc["digest"]])
        for child in doc.get("manifests", []):
            push(child)
        if "config" in doc:
            for blob in [doc["config"], *doc["layers"]]:
                push_blob(url, repo, blobs.blobs[blob["digest"]])
        push_manifest(url, repo, desc["digest"], blobs.blobs[desc["digest"]], desc["mediaType"])

    push(descriptor)
    for tag in tags:
        push_manifest(url, repo, tag, blobs.blobs[descriptor["digest"]], descriptor["mediaType"])


REPOSITORIES = [f"team/app{i}" for i in range(9)] + ["other/base", "deep/path/to/web", "team/multi"]


@pytest.fixture(scope="module")
def shard_registry(tmp_path_factory):
    from registry_server import RealRegistry

    reg = RealRegistry(str(tmp_path_factory.mktemp("shard-registry")))
    try:
        blobs = Blobs()
        shared = blobs.image(layers=(b"shared-everywhere",))
        for repo in REPOSITORIES:
            if repo == "team/multi":
                amd = blobs.image(layers=(b"m-amd",))
                arm = blobs.image(layers=(b"m-arm",), arch="arm64")
                top = blobs.index(
                    [
                        dict(amd, platform={"os": "linux", "architecture": "amd64"}),
                        dict(arm, platform={"os": "linux", "architecture": "arm64"}),
                    ]
                )
                push_image(reg.url, repo, blobs, top, ["1.0", "latest"])
                continue
            for version in range(3):
                descriptor = blobs.image(layers=(f"{repo}-{version}".encode(), b"base"))
                push_image(reg.url, repo, blobs, descriptor, [f"v{version}"] + (["latest"] if version == 2 else []))
            push_image(reg.url, repo, blobs, shared, ["shared"])  # one manifest in every repository
        yield reg
    finally:
        reg.stop()


def crawl(spec: str, shard: Shard | None, store=None, **options):
    from indexer.model import TagMoves, TagsRetired
    from indexer.sources.registry_client import RegistryOptions

    settings_ = dict(jobs=4, auth_files=[])
    settings_.update(options)
    source = parse_source(spec, registry_options=RegistryOptions(**settings_))
    if store is not None:
        source.bind_store(store)
    notes: list[str] = []
    items = list(source.records(Context(source.kind, source.location, note=notes.append, shard=shard)))
    for item in items:  # what the run hands to the store
        if isinstance(item, TagMoves):
            store.claim_tags(item.registry, list(item.claims))
        elif isinstance(item, TagsRetired):
            store.retire_tags(item.registry, item.name, list(item.tags))
    records = [i for i in items if isinstance(i, ImageRecord)]
    errors = [str(i) for i in items if isinstance(i, SourceError)]
    return records, errors, notes


class RequestLog:
    """The paths the registry client asks for, by thread-safe append."""

    def __init__(self, monkeypatch):
        from indexer.sources import registry_client

        self.paths: list[str] = []
        lock = threading.Lock()
        original = registry_client.RegistryClient.send

        def spy(client, method, url, *args, **kwargs):
            with lock:
                self.paths.append(url.split("://", 1)[-1].split("/", 1)[-1])
            return original(client, method, url, *args, **kwargs)

        monkeypatch.setattr(registry_client.RegistryClient, "send", spy)

    def repositories(self) -> set[str]:
        """The repositories asked about (tags/list, manifests, blobs)."""
        out = set()
        for path in self.paths:
            path = "/" + path.split("?", 1)[0]
            for marker in ("/tags/list", "/manifests/", "/blobs/"):
                if marker in path and path.startswith("/v2/"):
                    out.add(path[len("/v2/") : path.index(marker)])
        return out


def summary(records) -> collections.Counter:
    return collections.Counter((r.id, r.registry, r.name, r.digest, r.tags, r.kind) for r in records)


@pytest.mark.services
def test_registry_crawl_is_sharded_by_repository(shard_registry, monkeypatch):
    spec = f"docker://{shard_registry.host}"
    whole_records, whole_errors, _ = crawl(spec, None)
    assert not whole_errors
    assert {r.name for r in whole_records} == set(REPOSITORIES)
    assert len(whole_records) == 11 * 4 + 3

    log = RequestLog(monkeypatch)
    union: collections.Counter = collections.Counter()
    names_by_shard = []
    for shard in sharded(4):
        log.paths.clear()
        records, errors, notes = crawl(spec, shard)
        assert not errors
        names = {r.name for r in records}
        owned = {repo for repo in REPOSITORIES if shard.owns(repository_key(shard_registry.host, repo))}
        assert names == owned
        assert log.repositories() <= owned  # not one request about another shard's repository
        assert any(path.startswith("v2/_catalog") for path in log.paths)
        assert f"{len(owned)} repositories" in notes[-1]
        for other in names_by_shard:
            assert not names & other
        names_by_shard.append(names)
        union.update(summary(records))
    assert union == summary(whole_records)
    assert sum(1 for names in names_by_shard if names) >= 2  # the slices really split this registry


@pytest.mark.services
def test_registry_single_repository_is_one_shards(shard_registry, monkeypatch):
    log = RequestLog(monkeypatch)
    for repo in ("team/multi", "team/app3", "team/app3:v1"):
        spec = f"docker://{shard_registry.host}/{repo}"
        whole = crawl(spec, None)
        assert whole[0] and not whole[1]
        takers = 0
        for shard in sharded(4):
            log.paths.clear()
            records, errors, _ = crawl(spec, shard)
            assert not errors
            if records:
                takers += 1
                assert summary(records) == summary(whole[0])
            else:
                assert log.paths == []  # not even a ping
        assert takers == 1


class FakeStore:
    """The store's incremental interface, in memory: what the crawl asks and what it retires."""

    def __init__(self, known: dict[str, dict[str, str]]):
        self.known = known
        self.retired: list[tuple[str, str]] = []
        self.claimed: list[tuple[str, str, str]] = []

    def repository_states(self, registry, prefix):
        for name in sorted(self.known):
            yield name, dict(self.known[name]), set()

    def claim_tags(self, registry, claims):
        self.claimed += claims

    def retire_tags(self, registry, name, tags):
        self.retired += [(name, tag) for tag in tags]


@pytest.mark.services
def test_registry_shards_retire_only_their_own_repositories(shard_registry):
    spec = f"docker://{shard_registry.host}"
    stale = digest_of(b"stale")

    def known():
        out = {f"gone/r{i}": {"v1": stale, "v2": stale} for i in range(10)}
        out["team/app0"] = {"vanished": stale}
        out["team/app5"] = {"vanished": stale}
        return out

    whole_store = FakeStore(known())
    whole = crawl(spec, None, store=whole_store)
    assert not whole[1] and len(whole_store.retired) == 22
    retired = []
    for shard in sharded(4):
        store = FakeStore(known())
        records, errors, _ = crawl(spec, shard, store=store)
        assert not errors
        assert all(shard.owns(repository_key(shard_registry.host, name)) for name, _ in store.retired)
        retired += store.retired
    assert sorted(retired) == sorted(whole_store.retired)


@pytest.mark.services
def test_four_shard_workers_at_once_fill_one_store_as_one_run_does(shard_registry, tmp_path, run_cli):
    """`imgdex index --shard K/4` in four processes at once, into one store, against the real
    registry: the store equals a single run's, image for image and tag for tag."""
    import json
    import subprocess
    import sys

    from conftest import ROOT

    spec = f"docker://{shard_registry.host}"
    store = str(tmp_path / "sharded")
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "queries.cli", "index", spec, "--store", store, "--shard", f"{k}/4", "-q"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(1, 5)
    ]
    for worker in workers:
        _, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err
    single = str(tmp_path / "single")
    assert run_cli("index", spec, "--store", single, "-q").exit_code == 0

    def state(path):
        query = "SELECT id, name, digest, tags, exactness FROM images ORDER BY id"
        result = run_cli("sql", query, "--store", path, "--format", "json")
        assert result.exit_code == 0, result.output
        return [json.loads(line) for line in result.stdout.splitlines()]

    assert state(store) == state(single)
    runs = run_cli("sql", "SELECT count(*) AS n FROM runs", "--store", store, "--format", "json").stdout
    assert json.loads(runs) == {"n": 4}
    bad = run_cli("index", spec, "--store", store, "--shard", "5/4")
    assert bad.exit_code == 2 and "K/N" in bad.output
