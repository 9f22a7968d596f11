"""ycr-json: imports keep YCR's real ids, and `imgdex get <real id>` gives the imported document back."""

import io
import json
import os
import sys
import threading
import time
import tracemalloc

import pytest

from conftest import HERE, REAL
from indexer.errors import SourceError
from indexer.model import IMPORTED, ImageRecord
from indexer.sources import parse_source
from indexer.sources import ycr_json
from indexer.sources.parse import Context
from test_badinput import assert_within_limits, error_lines, run_measured

YCR = os.path.join(HERE, "fixtures", "ycr")
SNAKE = {"compressed_size": "compressedSize", "created_at": "createdAt"}


def load(name):
    with open(os.path.join(YCR, name)) as f:
        return json.load(f)


def camel(doc: dict) -> dict:
    return {SNAKE.get(k, k): v for k, v in doc.items()}


def images_of(name) -> list[dict]:
    doc = load(name)
    if isinstance(doc, list):
        return [camel(d) for d in doc]
    if "images" in doc:
        return doc["images"]
    return [doc]


def get(run_cli, store, query):
    result = run_cli("get", query, "--store", store)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def listing(run_cli, store):
    result = run_cli("list", "--store", store, "--page-size", "1000")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout).get("images", [])


@pytest.mark.parametrize("name", ["image-get.json", "image-list.json", "image-array.json", "yc-image-list.json"])
def test_get_by_real_id_returns_the_imported_document(name, run_cli, tmp_path):
    store = str(tmp_path)
    result = run_cli("index", f"ycr-json:{os.path.join(YCR, name)}", "--store", store)
    assert result.exit_code == 0, result.output
    expected = images_of(name)
    assert expected
    for doc in expected:
        assert get(run_cli, store, doc["id"]) == doc
    assert sorted(d["id"] for d in listing(run_cli, store)) == sorted(d["id"] for d in expected)


def test_records_are_imported_and_exact(tmp_path):
    source = parse_source(f"ycr-json:{os.path.join(YCR, 'image-list.json')}")
    notes = []
    items = list(source.records(Context(source.kind, source.location, note=notes.append)))
    assert all(isinstance(i, ImageRecord) for i in items)
    assert {(r.registry, r.id_origin, r.exactness) for r in items} == {("cr.yandex", "imported", IMPORTED)}
    kinds = {r.name + "@" + r.digest[:12]: r.kind for r in items}
    assert sorted(kinds.values()) == ["image", "image", "index"]
    assert any("nextPageToken" in n for n in notes)


def test_registry_option_overrides_cr_yandex(run_cli, tmp_path):
    store = str(tmp_path)
    assert (
        run_cli(
            "index", f"ycr-json:{os.path.join(YCR, 'image-get.json')}", "--store", store, "--registry", "cr.example.net"
        ).exit_code
        == 0
    )
    doc = load("image-get.json")
    assert get(run_cli, store, f"cr.example.net/{doc['name']}:latest") == doc
    result = run_cli("sql", "SELECT DISTINCT registry FROM images", "--store", store, "--format", "csv")
    assert "cr.example.net" in result.stdout and "cr.yandex" not in result.stdout


def test_a_name_docker_hub_would_rewrite_is_refused_not_answered_otherwise(run_cli, tmp_path):
    doc = dict(load("image-get.json"), name="ubuntu")
    path = tmp_path / "one.json"
    path.write_text(json.dumps(doc))
    result = run_cli("index", f"ycr-json:{path}", "--store", str(tmp_path / "s"), "--registry", "docker.io")
    assert result.exit_code == 1
    assert "name 'ubuntu' would be stored as 'library/ubuntu' under docker.io" in result.output, result.output
    kept = run_cli("index", f"ycr-json:{path}", "--store", str(tmp_path / "s"), "--registry", "cr.example.net")
    assert kept.exit_code == 0 and get(run_cli, str(tmp_path / "s"), doc["id"]) == doc


def test_lookup_by_reference_and_digest(run_cli, tmp_path):
    store = str(tmp_path)
    run_cli("index", f"ycr-json:{os.path.join(YCR, 'image-get.json')}", "--store", store)
    doc = load("image-get.json")
    assert get(run_cli, store, f"cr.yandex/{doc['name']}:1.0") == doc
    assert get(run_cli, store, f"cr.yandex/{doc['name']}@{doc['digest']}") == doc


def _layout_source():
    doc = load("image-get.json")
    return doc, ["--registry", "cr.yandex", "--repository", doc["name"]]


def test_manifest_source_after_import_merges_into_the_real_id(run_cli, tmp_path):
    """The OCI layout holds the same app manifest: indexing it later adds its tags to the imported resource."""
    store = str(tmp_path)
    doc, naming = _layout_source()
    assert run_cli("index", f"ycr-json:{os.path.join(YCR, 'image-get.json')}", "--store", store).exit_code == 0
    result = run_cli("index", f"oci:{os.path.join(REAL, 'oci-layout')}:v1", "--store", store, *naming)
    assert result.exit_code == 0, result.output
    rows = [d for d in listing(run_cli, store) if d.get("digest") == doc["digest"]]
    assert [d["id"] for d in rows] == [doc["id"]]
    merged = get(run_cli, store, doc["id"])
    assert merged == dict(doc, tags=sorted(set(doc["tags"]) | {"v1"}))
    assert get(run_cli, store, f"cr.yandex/{doc['name']}:v1")["id"] == doc["id"]


def test_import_after_manifest_source_replaces_the_derived_id(run_cli, tmp_path):
    store = str(tmp_path)
    doc, naming = _layout_source()
    assert run_cli("index", f"oci:{os.path.join(REAL, 'oci-layout')}:v1", "--store", store, *naming).exit_code == 0
    derived = [d["id"] for d in listing(run_cli, store) if d.get("digest") == doc["digest"]]
    assert derived and derived != [doc["id"]]
    assert run_cli("index", f"ycr-json:{os.path.join(YCR, 'image-get.json')}", "--store", store).exit_code == 0
    rows = [d for d in listing(run_cli, store) if d.get("digest") == doc["digest"]]
    assert [d["id"] for d in rows] == [doc["id"]]
    assert get(run_cli, store, doc["id"]) == dict(doc, tags=sorted(set(doc["tags"]) | {"v1"}))


@pytest.mark.parametrize("import_first", [True, False])
def test_an_import_and_a_manifest_source_of_one_image_in_one_run_count_as_one_image(run_cli, tmp_path, import_first):
    """The summary counts each image the run read once: the layout's record is stored under the
    imported id, so the run indexed one image, not two."""
    store = str(tmp_path)
    doc, naming = _layout_source()
    sources = [f"ycr-json:{os.path.join(YCR, 'image-get.json')}", f"oci:{os.path.join(REAL, 'oci-layout')}:v1"]
    result = run_cli("index", *(sources if import_first else sources[::-1]), "--store", store, *naming, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["indexed"] == 1
    assert [d["id"] for d in listing(run_cli, store) if d.get("digest") == doc["digest"]] == [doc["id"]]


def test_an_image_written_under_its_derived_id_then_imported_in_one_run_counts_once(run_cli, tmp_path, monkeypatch):
    """The layout's batch lands before the import's (a batch of one image), and the import retires
    the derived id: the run still indexed one image, not two."""
    from indexer import run

    monkeypatch.setattr(run, "BATCH", 1)
    store = str(tmp_path)
    doc, naming = _layout_source()
    sources = [f"oci:{os.path.join(REAL, 'oci-layout')}:v1", f"ycr-json:{os.path.join(YCR, 'image-get.json')}"]
    result = run_cli("index", *sources, "--store", store, *naming, "--json", "--jobs", "1")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["indexed"] == 1
    assert [d["id"] for d in listing(run_cli, store) if d.get("digest") == doc["digest"]] == [doc["id"]]


@pytest.mark.parametrize("again", ["layout", "import"])
def test_an_import_and_a_manifest_source_that_committed_at_once_are_one_resource_after_either_runs_again(
    run_cli, tmp_path, monkeypatch, again
):
    """Two writers at once, each preparing before the other's rows are there, leave the derived
    and the imported row side by side (simulated: neither sees the other's row). The next run of
    either source leaves the one resource that either order gives."""
    from indexer.store import delta_writer

    store = str(tmp_path)
    doc, naming = _layout_source()
    layout = ["index", f"oci:{os.path.join(REAL, 'oci-layout')}:v1", "--store", store, *naming]
    export = ["index", f"ycr-json:{os.path.join(YCR, 'image-get.json')}", "--store", store]
    with monkeypatch.context() as blind:
        blind.setattr(delta_writer, "_adopt_ids", lambda snapshot, records: (records, []))
        assert run_cli(*export).exit_code == 0 and run_cli(*layout).exit_code == 0
    assert len([d for d in listing(run_cli, store) if d.get("digest") == doc["digest"]]) == 2
    assert run_cli(*(layout if again == "layout" else export)).exit_code == 0
    rows = [d for d in listing(run_cli, store) if d.get("digest") == doc["digest"]]
    assert [d["id"] for d in rows] == [doc["id"]]
    assert get(run_cli, store, doc["id"]) == dict(doc, tags=sorted(set(doc["tags"]) | {"v1"}))
    assert get(run_cli, store, f"cr.yandex/{doc['name']}:v1")["id"] == doc["id"]


def test_a_later_export_retires_the_tags_the_registry_removed(run_cli, tmp_path):
    """`yc container image list` run again after `yc container image delete-tag`-like changes: the
    newer export's tags are the image's tags, as `Image.Get` would then answer."""
    store = str(tmp_path / "store")
    doc = load("image-get.json")
    other = dict(doc, id="crp9s8r7q6p5o4n3m2l1", digest="sha256:" + "e" * 64, tags=["latest"])
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    first.write_text(json.dumps({"images": [doc]}))
    # 1.0 deleted, latest moved to another image
    second.write_text(json.dumps({"images": [dict(doc, tags=[]), other]}))
    assert run_cli("index", f"ycr-json:{first}", "--store", store).exit_code == 0
    assert get(run_cli, store, doc["id"])["tags"] == ["1.0", "latest"]
    assert run_cli("index", f"ycr-json:{second}", "--store", store).exit_code == 0
    untagged = {k: v for k, v in doc.items() if k != "tags"}
    assert get(run_cli, store, doc["id"]) == untagged
    assert get(run_cli, store, other["id"]) == other
    gone = run_cli("get", f"cr.yandex/{doc['name']}:1.0", "--store", store)
    assert gone.exit_code == 1 and "not found" in gone.stderr
    assert get(run_cli, store, f"cr.yandex/{doc['name']}:latest")["id"] == other["id"]
    # importing the older export again is the newer write: its tags come back
    assert run_cli("index", f"ycr-json:{first}", "--store", store).exit_code == 0
    assert get(run_cli, store, doc["id"]) == doc


def test_compressed_size_is_ycr_figure_not_layer_sum(run_cli, tmp_path):
    doc = dict(load("image-get.json"), compressedSize="700", id="crp9s8r7q6p5o4n3m2l1")
    path = tmp_path / "one.json"
    path.write_text(json.dumps(doc))
    store = str(tmp_path / "store")
    assert run_cli("index", f"ycr-json:{path}", "--store", store).exit_code == 0
    assert get(run_cli, store, doc["id"]) == doc


def test_json_lines_and_stdin(run_cli, tmp_path):
    docs = images_of("image-list.json")
    store = str(tmp_path)
    result = run_cli("index", "ycr-json:-", "--store", store, input="\n".join(json.dumps(d) for d in docs) + "\n")
    assert result.exit_code == 0, result.output
    for doc in docs:
        assert get(run_cli, store, doc["id"]) == doc


def test_bad_images_are_errors_and_the_rest_land(run_cli, tmp_path):
    good = images_of("image-array.json")
    bad = [{"name": "crp7b2m3p8k0v1ej5s4n/x"}, dict(good[0], id="crpzzzzzzzzzzzzzzzzz", digest="sha256:nothex"), "text"]
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps({"images": good + bad}))
    store = str(tmp_path / "store")
    result = run_cli("index", f"ycr-json:{path}", "--store", store)
    assert result.exit_code == 1
    assert "has no id" in result.output and "invalid digest" in result.output and "not a JSON object" in result.output
    assert "indexed 2 images, 3 failed" in result.output
    for doc in good:
        assert get(run_cli, store, doc["id"]) == doc


def test_unreadable_files_fail_the_source(tmp_path):
    path = tmp_path / "cut.json"
    path.write_text('{"images": [{"id": "crp')
    with pytest.raises(SourceError, match="not valid JSON"):
        list(parse_source(f"ycr-json:{path}").records(Context("ycr-json", str(path))))
    with pytest.raises(SourceError, match="no such file"):
        list(parse_source(f"ycr-json:{tmp_path}/missing.json").records(Context("ycr-json", "x")))


@pytest.mark.parametrize("text", ["{}", '{"images": null}', '{"images": []}'])
def test_empty_list_response(run_cli, tmp_path, text):
    path = tmp_path / "empty.json"
    path.write_text(text)
    result = run_cli("index", f"ycr-json:{path}", "--store", str(tmp_path / "s"))
    assert result.exit_code == 0 and "no images" in result.output


@pytest.mark.parametrize("images", ['""', "0", "false", "{}"])
def test_images_of_another_type_are_no_empty_list(run_cli, tmp_path, images):
    # "" , 0 and false were read as no images, where protobuf's JSON parser refuses them.
    path = tmp_path / "list.json"
    path.write_text(f'{{"images": {images}}}')
    result = run_cli("index", f"ycr-json:{path}", "--store", str(tmp_path / "s"))
    assert result.exit_code == 1 and result.stderr.splitlines() == [f"imgdex: {path}: images is not a list"]


@pytest.mark.parametrize("imported_first", [True, False])
def test_import_and_manifest_source_in_one_run_are_one_resource(run_cli, tmp_path, imported_first):
    store = str(tmp_path)
    doc, naming = _layout_source()
    sources = [f"ycr-json:{os.path.join(YCR, 'image-get.json')}", f"oci:{os.path.join(REAL, 'oci-layout')}:v1"]
    if not imported_first:
        sources.reverse()
    result = run_cli("index", *sources, "--store", store, *naming)
    assert result.exit_code == 0, result.output
    rows = [d for d in listing(run_cli, store) if d.get("digest") == doc["digest"]]
    assert [d["id"] for d in rows] == [doc["id"]]
    assert get(run_cli, store, doc["id"]) == dict(doc, tags=sorted(set(doc["tags"]) | {"v1"}))


@pytest.mark.parametrize(
    "field, value, reason",
    [
        ("compressedSize", "9223372036854775808", "out of range"),
        ("compressedSize", 1e30, "not an integer"),
        ("compressedSize", "١٢٣", "not an integer"),  # digits, but not ASCII ones
        ("compressedSize", "12.0", "not an integer"),
        ("compressedSize", True, "not an integer"),
        ("layer size", "99999999999999999999", "out of range"),
        ("layer size", 7.0, "not an integer"),
        # More digits than int() converts: refused by their count, and not echoed whole.
        ("layer size", "9" * 5000, "out of range (5000 digits; 0 to 2**63-1)"),
        # A JSON number of as many digits: read past as Go reads it, and out of range as a size.
        ("layer size", "number of 5000 digits", "layers[0] size is out of range (5000 digits; 0 to 2**63-1)"),
        ("layer sizes", ["4611686018427387904", "4611686018427387904"], "add up to 9223372036854775808"),
    ],
)
def test_sizes_must_be_int64(run_cli, tmp_path, field, value, reason):
    victim, good = images_of("image-array.json")[:2]  # the first has layers
    victim = json.loads(json.dumps(victim))
    if field == "compressedSize":
        victim["compressedSize"] = value
    elif field == "layer size":
        victim["layers"][0]["size"] = value
    else:
        victim["layers"] = [dict(victim["layers"][0], size=size) for size in value]
    path = tmp_path / "sizes.json"
    text = json.dumps({"images": [good, victim]}, ensure_ascii=False)
    # A JSON number too long for int(), which json.dumps cannot write: it fails its image alone.
    path.write_text(text.replace('"number of 5000 digits"', "9" * 5000), encoding="utf-8")
    store = str(tmp_path / "store")
    result = run_cli("index", f"ycr-json:{path}", "--store", store)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and reason in lines[0], lines
    assert lines[0].startswith(f"imgdex: {path} images[1]: "), lines
    assert get(run_cli, store, good["id"]) == good


def test_leading_zeros_do_not_count_as_digits(run_cli, tmp_path):
    doc = json.loads(json.dumps(images_of("image-array.json")[0]))
    size = doc["layers"][0]["size"]
    doc["layers"][0]["size"] = "0" * 5000 + str(size)
    path = tmp_path / "zeros.json"
    path.write_text(json.dumps({"images": [doc]}), encoding="utf-8")
    store = str(tmp_path / "store")
    result = run_cli("index", f"ycr-json:{path}", "--store", store)
    assert result.exit_code == 0, result.output
    assert get(run_cli, store, doc["id"])["layers"][0]["size"] == str(size)


def test_invalid_tags_are_dropped_with_a_note_and_the_image_lands(run_cli, tmp_path):
    doc = json.loads(json.dumps(load("image-get.json")))
    bad_tags = ["v1\n", "тег", "a" * 129, "-lead"]
    path = tmp_path / "tags.json"
    path.write_text(json.dumps(dict(doc, tags=doc["tags"] + bad_tags), ensure_ascii=False), encoding="utf-8")
    source = parse_source(f"ycr-json:{path}")
    notes = []
    [record] = list(source.records(Context(source.kind, source.location, note=notes.append)))
    assert isinstance(record, ImageRecord) and record.tags == tuple(sorted(doc["tags"]))
    assert len(notes) == 4 and all("ignoring tag" in n for n in notes)
    store = str(tmp_path / "store")
    result = run_cli("index", f"ycr-json:{path}", "--store", store)
    assert result.exit_code == 0 and get(run_cli, store, doc["id"]) == doc


@pytest.mark.parametrize("tag", [None, 5, ["1.0"], {"tag": "1.0"}])
def test_a_tag_that_is_not_a_string_fails_that_image(run_cli, tmp_path, tag):
    """proto3 JSON refuses such a document (json_format.Parse), as it does urls that are not strings."""
    good, victim = images_of("image-array.json")[:2]
    path = tmp_path / "tags.json"
    path.write_text(json.dumps([good, dict(victim, tags=[*victim.get("tags", []), tag])]), encoding="utf-8")
    store = str(tmp_path / "store")
    result = run_cli("index", f"ycr-json:{path}", "--store", store)
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == f"imgdex: {path}[1]: image {victim['id']}: tags is not a list of strings"
    assert [d["id"] for d in listing(run_cli, store)] == [good["id"]]


def test_a_tag_listed_twice_is_kept_once_with_a_note(run_cli, tmp_path):
    """It was kept once without a word, though the document (as the proto parser reads it) lists it
    twice."""
    doc = json.loads(json.dumps(load("image-get.json")))
    path = tmp_path / "tags.json"
    path.write_text(json.dumps(dict(doc, tags=doc["tags"] * 3)), encoding="utf-8")
    source = parse_source(f"ycr-json:{path}")
    notes = []
    [record] = list(source.records(Context(source.kind, source.location, note=notes.append)))
    assert record.tags == tuple(sorted(doc["tags"]))
    assert notes == [f"{path}: image {doc['id']}: tag {t!r} is listed 3 times; kept once" for t in doc["tags"]]


@pytest.mark.parametrize(
    "name", ["crp1/App", "crp1/team/../app", "crp1/app\n", "crp1/тест", "crp1/app:1", "crp1/app@sha256:" + "a" * 64]
)
def test_invalid_name_fails_that_image_as_a_missing_name_does(run_cli, tmp_path, name):
    good, victim = images_of("image-array.json")[:2]
    path = tmp_path / "names.json"
    path.write_text(json.dumps([good, dict(victim, name=name)], ensure_ascii=False), encoding="utf-8")
    store = str(tmp_path / "store")
    result = run_cli("index", f"ycr-json:{path}", "--store", store)
    assert result.exit_code == 1 and "invalid repository name" in result.stderr
    assert [d["id"] for d in listing(run_cli, store)] == [good["id"]]


# ---------------------------------------------------------------------------------------------
# Bounded reading: streamed input, size limits, devices and pipes


def many_images(count: int) -> list[dict]:
    template = images_of("image-array.json")[0]
    return [dict(template, id=f"crp{i:017d}", tags=[f"v{i}"]) for i in range(count)]


def records_of(spec: str, notes=None) -> list:
    source = parse_source(spec)
    ctx = Context(source.kind, source.location, note=(notes.append if notes is not None else lambda _: None))
    return list(source.records(ctx))


def expected_records(images: list[dict], location: str) -> list[ImageRecord]:
    ctx = Context("ycr-json", location)
    return [ycr_json.image_record(image, "cr.yandex", ctx, location, []) for image in images]


class Endless(io.RawIOBase):
    """A stream that never ends: `head` once, then `filler` for ever."""

    def __init__(self, head: bytes, filler: bytes):
        self.head, self.filler = head, filler

    def readable(self):
        return True

    def readinto(self, buffer):
        data = self.head or self.filler * (len(buffer) // len(self.filler) or 1)
        self.head = b""
        data = data[: len(buffer)]
        buffer[: len(data)] = data
        return len(data)


def with_stdin(monkeypatch, stream) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(stream)))


@pytest.mark.parametrize("piece", [1 << 20, 333])
@pytest.mark.parametrize("shape", ["lines", "array", "list response", "pretty array"])
def test_streamed_shapes_give_the_records_of_the_whole_document(tmp_path, monkeypatch, shape, piece):
    monkeypatch.setattr(ycr_json, "_PIECE", piece)  # pieces that cut values and lines anywhere
    images = many_images(300)
    path = tmp_path / "many.json"
    if shape == "lines":
        path.write_text("\n\n".join(json.dumps(image) for image in images) + "\n")
    elif shape == "array":
        path.write_text(json.dumps(images))
    elif shape == "list response":
        path.write_text(json.dumps({"images": images, "nextPageToken": ""}))
    else:
        path.write_text(json.dumps([camel(image) for image in images], indent=2))
    got = records_of(f"ycr-json:{path}")
    assert got == expected_records(images, str(path))


def test_a_large_array_is_read_one_image_at_a_time(tmp_path, monkeypatch):
    # A line up to MAX_VALUE_BYTES may be parsed at once (it may be one JSON line); the file is larger.
    monkeypatch.setattr(ycr_json, "MAX_VALUE_BYTES", 1 << 20)
    images = many_images(20_000)
    path = tmp_path / "large.json"
    path.write_text(json.dumps({"images": images}))
    size = path.stat().st_size
    source = parse_source(f"ycr-json:{path}")
    count = 0
    tracemalloc.start()
    try:
        for record in source.records(Context(source.kind, source.location)):
            assert isinstance(record, ImageRecord)
            count += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == len(images)
    # Parsed whole, the document takes several times its size (about 80 MB); streamed, a window of pieces.
    assert size > 12 << 20 and peak < 16 << 20, (size, peak)


def test_an_endless_stream_stops_at_the_export_limit(monkeypatch):
    monkeypatch.setattr(ycr_json, "MAX_EXPORT_BYTES", 4 << 20)
    line = json.dumps(images_of("image-array.json")[0]).encode() + b"\n"
    for head, filler in [(b"", line), (b"[", line.replace(b"\n", b",")), (line, b"\n")]:
        with_stdin(monkeypatch, Endless(head, filler))
        with pytest.raises(SourceError) as caught:
            records_of("ycr-json:-")
        assert str(caught.value) == f"-: more than {4 << 20} bytes, the limit for one export"


@pytest.mark.parametrize(
    "head, filler, where",
    [
        (b'{"images": [{"id": "crp1", "name": "', b"x", "-"),  # a string that never ends
        (b"", b"\x00", "-"),  # /dev/zero through a pipe
        (json.dumps({"id": "crp1"}).encode() + b"\n", b"y", "- line 2"),  # a JSON line that never ends
    ],
)
def test_a_value_over_the_limit_fails_in_one_line(monkeypatch, head, filler, where):
    monkeypatch.setattr(ycr_json, "MAX_VALUE_BYTES", 1 << 20)
    with_stdin(monkeypatch, Endless(head, filler))
    with pytest.raises(SourceError) as caught:
        records_of("ycr-json:-")
    message = str(caught.value)
    assert message.startswith(f"{where}: ") and "\n" not in message
    assert f"{1 << 20}-byte limit" in message or "not valid JSON" in message


def test_a_malformed_file_lands_nothing_but_stdin_hands_out_what_came_before(run_cli, tmp_path, monkeypatch):
    images = many_images(3)
    text = json.dumps(images)[:-1] + ", {"
    path = tmp_path / "cut.json"
    path.write_text(text)
    with pytest.raises(SourceError, match="not valid JSON"):
        records_of(f"ycr-json:{path}")  # before any record
    with_stdin(monkeypatch, io.BytesIO(text.encode()))
    got = []
    with pytest.raises(SourceError, match="not valid JSON"):
        for record in parse_source("ycr-json:-").records(Context("ycr-json", "-")):
            got.append(record)
    assert [r.id for r in got] == [image["id"] for image in images]


def test_a_device_fails_in_one_line_within_limits(tmp_path):
    good = os.path.join(YCR, "image-get.json")
    run = run_measured(["index", "ycr-json:/dev/zero", f"ycr-json:{good}", "--store", str(tmp_path / "store")])
    assert_within_limits(run)
    assert run.code == 1, run.stderr
    assert error_lines(run.stderr) == ["imgdex: /dev/zero: not a regular file (character device)"]
    assert "indexed 1 images, 1 failed" in run.stdout, run.stdout


def test_an_endless_pipe_fails_in_one_line_within_limits(tmp_path):
    endless = b'[{"id": "crp1", "name": "' + b"x" * (64 << 20)  # piped: more than the stream is read
    good = os.path.join(YCR, "image-get.json")
    run = run_measured(["index", "ycr-json:-", f"ycr-json:{good}", "--store", str(tmp_path / "s")], stdin_data=endless)
    assert_within_limits(run)
    assert run.code == 1, run.stderr
    limit = ycr_json.MAX_VALUE_BYTES
    assert error_lines(run.stderr) == [f"imgdex: -: a JSON value is longer than the {limit}-byte limit"]
    assert "indexed 1 images, 1 failed" in run.stdout, run.stdout


def test_a_named_pipe_is_read_as_a_stream(tmp_path):
    images = many_images(5)
    fifo = str(tmp_path / "images.fifo")
    os.mkfifo(fifo)
    opened = threading.Event()

    def write() -> None:
        with open(fifo, "w") as f:  # as `<(yc ...)`: the writer holds the pipe before imgdex opens it
            opened.set()
            f.write("\n".join(json.dumps(image) for image in images))

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    holder = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # lets the writer's open return
    try:
        assert opened.wait(10)
        got = records_of(f"ycr-json:{fifo}")
    finally:
        os.close(holder)
        writer.join(timeout=10)
    assert got == expected_records(images, fifo)


def test_a_named_pipe_without_a_writer_does_not_wait(tmp_path):
    fifo = str(tmp_path / "nobody.fifo")
    os.mkfifo(fifo)
    started = time.monotonic()
    with pytest.raises(SourceError, match="not valid JSON"):
        records_of(f"ycr-json:{fifo}")
    assert time.monotonic() - started < 5


def test_a_directory_is_refused(tmp_path):
    with pytest.raises(SourceError, match=r"not a regular file \(directory\)$"):
        records_of(f"ycr-json:{tmp_path}")


def test_a_table_escapes_control_characters_of_stored_values(run_cli, tmp_path):
    # An imported id is kept as the registry wrote it (with a note when it has no id's shape): a
    # table must not pass its escape sequences to the terminal.
    doc = json.loads(json.dumps(images_of("image-array.json")[0]))
    doc["id"] = "crp\x1b]0;title\x07\x1b[2J\x9b31m\u202egnp.exe"
    path = tmp_path / "control.json"
    path.write_text(json.dumps({"images": [doc]}), encoding="utf-8")
    store = str(tmp_path / "store")
    assert run_cli("index", f"ycr-json:{path}", "--store", store).exit_code == 0
    table = run_cli("list", "--store", store, "--format", "table")
    assert table.exit_code == 0, table.output
    assert "crp\\x1b]0;title\\x07\\x1b[2J\\x9b31m\\u202egnp.exe" in table.stdout
    assert not any(c in table.stdout for c in "\x1b\x07\x9b\u202e")
    rows = table.stdout.splitlines()
    assert len({len(row) for row in rows}) == 1  # the columns line up with the escaped text
    assert [d["id"] for d in listing(run_cli, store)] == [doc["id"]]  # stored and answered as written


def test_blobs_without_a_digest_render_as_message_to_json_prints_them(run_cli, tmp_path):
    # An imported Blob may lack its digest: the config is still there (id and size), and an
    # empty digest is a default value, which the proto3 JSON mapping omits.
    from google.protobuf import json_format
    from yandex.cloud.containerregistry.v1 import image_pb2

    from queries.server.grpc_api import image_message

    doc = {
        "id": "crpbbbbbbbbbbbbbbbb1",
        "name": "crp456/nodigest",
        "config": {"id": "crpcccccccccccccccc1", "size": "10"},
        "layers": [{"id": "crpdddddddddddddddd1", "size": "5"}],
    }
    path = tmp_path / "nodigest.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    store = str(tmp_path / "store")
    assert run_cli("index", f"ycr-json:{path}", "--store", store).exit_code == 0
    expected = json.loads(json_format.MessageToJson(json_format.ParseDict(doc, image_pb2.Image())))
    assert expected == doc
    assert get(run_cli, store, doc["id"]) == doc
    assert listing(run_cli, store) == [doc]
    assert image_message(doc) == json_format.ParseDict(doc, image_pb2.Image())  # as serve answers it


def as_message_to_json(doc: dict) -> dict:
    """What the official message makes of `doc`: the judge of what `get` must answer."""
    from google.protobuf import json_format
    from yandex.cloud.containerregistry.v1 import image_pb2

    message = json_format.ParseDict(json.loads(json.dumps(doc)), image_pb2.Image())
    return json.loads(json_format.MessageToJson(message))


@pytest.mark.parametrize(
    "path",
    ["digest", "compressedSize", "layers", "tags"]
    + ["config size", "config digest", "layers[0] size", "layers[0] digest", "layers[0] urls"],
)
def test_null_is_the_default_value_as_proto3_json_reads_it(run_cli, tmp_path, path):
    doc = json.loads(json.dumps(load("image-get.json")))
    if " " in path:
        blob, field = path.split(" ")
        (doc["config"] if blob == "config" else doc["layers"][0])[field] = None
    else:
        doc[path] = None
    file = tmp_path / "nulls.json"
    file.write_text(json.dumps(doc), encoding="utf-8")
    store = str(tmp_path / "store")
    result = run_cli("index", f"ycr-json:{file}", "--store", store)
    assert result.exit_code == 0, result.output
    assert get(run_cli, store, doc["id"]) == as_message_to_json(doc)


@pytest.mark.parametrize("change", [{"digest": "sha256:" + "b" * 64}, {"tags": ["2.0"]}, {"createdAt": None}])
def test_an_id_listed_twice_with_different_contents_fails_the_second(run_cli, tmp_path, change):
    """Merged, the two would answer a document that neither holds (one's digest, both's tags)."""
    first = load("image-get.json")
    again = {
        "compressed_size": int(first["compressedSize"]),
        **{k: v for k, v in first.items() if k != "compressedSize"},
    }
    path = tmp_path / "twice.json"
    path.write_text(json.dumps([first, dict(first, **change), again]), encoding="utf-8")
    store = str(tmp_path / "store")
    result = run_cli("index", f"ycr-json:{path}", "--store", store)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"imgdex: {path}[1]: image {first['id']} is listed twice with different contents; the first is kept"
    ]
    assert get(run_cli, store, first["id"]) == first


@pytest.mark.parametrize("shape", ["array", "lines", "list response", "config"])
def test_a_member_given_twice_fails_that_image(run_cli, tmp_path, shape):
    """json_format.Parse refuses a repeated key ("duplicate key"); json.loads keeps the last one."""
    victim, good = images_of("image-array.json")[:2]  # the first has a config
    text = json.dumps(victim)
    if shape == "config":
        assert text.count('"size": "') > 1
        text, where, what = text.replace('"size": "', '"size": "1", "size": "', 1), "[1]", "config"
    else:
        text, where, what = text[:-1] + ', "name": "crp1/other"}', "[1]", "the image"
    if shape == "lines":
        text, where = f"{json.dumps(good)}\n{text}\n", " line 2"
    elif shape == "list response":
        text, where = f'{{"images": [{json.dumps(good)}, {text}]}}', " images[1]"
    else:
        text = f"[{json.dumps(good)}, {text}]"
    path = tmp_path / "twice.json"
    path.write_text(text, encoding="utf-8")
    store = str(tmp_path / "store")
    result = run_cli("index", f"ycr-json:{path}", "--store", store)
    assert result.exit_code == 1
    field = "size" if shape == "config" else "name"
    assert result.stderr.strip().splitlines() == [f"imgdex: {path}{where}: {what} has the field {field!r} twice"]
    assert [d["id"] for d in listing(run_cli, store)] == [good["id"]]


def test_an_image_document_with_a_field_given_twice_fails(run_cli, tmp_path):
    doc = json.dumps(load("image-get.json"), indent=2)
    path = tmp_path / "get.json"
    path.write_text(doc[: doc.rindex("}")] + ',  "tags": []\n}\n', encoding="utf-8")
    result = run_cli("index", f"ycr-json:{path}", "--store", str(tmp_path / "store"))
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [f"imgdex: {path}: the image has the field 'tags' twice"]


@pytest.mark.parametrize(
    "created", ["2026-11-30T08:15:02.417z", "2026-11-30t08:15:02Z", "2026-11-30 08:15:02Z", "2026-12-31T23:59:60Z"]
)
def test_created_at_in_a_form_proto3_json_refuses_fails_that_image(run_cli, tmp_path, created):
    from google.protobuf import json_format
    from yandex.cloud.containerregistry.v1 import image_pb2

    good, victim = images_of("image-array.json")[:2]
    victim = dict(victim, createdAt=created)
    with pytest.raises(json_format.ParseError):
        json_format.ParseDict(victim, image_pb2.Image())
    path = tmp_path / "created.json"
    path.write_text(json.dumps([good, victim]), encoding="utf-8")
    store = str(tmp_path / "store")
    result = run_cli("index", f"ycr-json:{path}", "--store", store)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"imgdex: {path}[1]: image {victim['id']}: createdAt {created!r} is not a proto3 JSON timestamp"
    ]
    assert [d["id"] for d in listing(run_cli, store)] == [good["id"]]


@pytest.mark.parametrize("one_run", [False, True])
def test_an_imported_id_that_is_another_images_id_fails_the_import(run_cli, tmp_path, one_run):
    """An imported id is kept as written, so a crafted one can be the id imgdex computed for
    another image. Merged under it, that image vanished and its tag moved to the import."""
    store = str(tmp_path / "store")
    layout = ["oci:" + os.path.join(REAL, "oci-layout") + ":v1", "--repository", "cr.yandex/crp1/lay"]
    if not one_run:
        assert run_cli("index", *layout, "--store", store).exit_code == 0
    before = get(run_cli, store, "cr.yandex/crp1/lay:v1") if not one_run else None
    doc = dict(load("image-get.json"), name="crp7/other", tags=["t"])
    path = tmp_path / "crafted.json"
    stolen = before["id"] if before else None
    if stolen is None:  # in one run: the id the layout's image gets, learnt from a store of its own
        scratch = str(tmp_path / "scratch")
        assert run_cli("index", *layout, "--store", scratch).exit_code == 0
        stolen = get(run_cli, scratch, "cr.yandex/crp1/lay:v1")["id"]
    path.write_text(json.dumps(dict(doc, id=stolen)), encoding="utf-8")
    sources = [*layout[:1], f"ycr-json:{path}", *layout[1:]] if one_run else [f"ycr-json:{path}"]
    result = run_cli("index", *sources, "--store", store)
    assert result.exit_code == 1
    [line] = [x for x in result.stderr.splitlines() if "already that of" in x]
    assert f"image {stolen} (cr.yandex/crp7/other@{doc['digest']}) cannot be stored" in line
    assert line.endswith(f"its id is already that of cr.yandex/crp1/lay@{get(run_cli, store, stolen)['digest']}")
    kept = get(run_cli, store, "cr.yandex/crp1/lay:v1")
    assert kept["id"] == stolen and kept["name"] == "crp1/lay" and kept["tags"] == ["v1"]
    assert run_cli("get", "cr.yandex/crp7/other:t", "--store", store).exit_code == 1


@pytest.mark.parametrize(
    "order", ["", "name desc", "digest desc, name", "last_modified desc, created_at desc, digest desc, name desc"]
)
def test_images_of_long_imported_ids_are_paged_with_tokens_the_api_takes(run_cli, tmp_path, order):
    """Imported ids are kept as written, of any length: a token carrying one of ~30 characters or
    more was over the API's 100 and refused, so the list could not go past its first page."""
    docs = []
    for n, image in enumerate(images_of("image-array.json") * 2):
        # Long, or short but escaped in JSON past the limit (non-ASCII).
        long_id = ("crp" + "a" * 40 + str(n), "x" * (150 + n), "crp" + "漢字" * 3 + str(n), "crp😀😀😀😀" + str(n))[
            n % 4
        ]
        docs.append(dict(image, id=long_id, digest="sha256:" + f"{n:02d}" * 32, tags=[f"t{n}"]))
    path = tmp_path / "long.json"
    path.write_text(json.dumps(docs), encoding="utf-8")
    store = str(tmp_path / "store")
    assert run_cli("index", f"ycr-json:{path}", "--store", store).exit_code == 0
    every = json.loads(run_cli("list", "--store", store, "--page-size", "1000", "--order-by", order).stdout)["images"]
    assert len(every) == len(docs)
    walked, token = [], ""
    while True:
        args = ["list", "--store", store, "--page-size", "1", "--order-by", order]
        result = run_cli(*args, *(["--page-token", token] if token else []))
        assert result.exit_code == 0, result.output
        page = json.loads(result.stdout)
        walked += page.get("images", [])
        token = page.get("nextPageToken", "")
        assert len(token) <= 100, token
        if not token:
            break
    assert [i["id"] for i in walked] == [i["id"] for i in every]
