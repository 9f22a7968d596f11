"""ycr-json: imports keep YCR's real ids, and `imgdex get <real id>` gives the imported document back."""

import json
import os

import pytest

from conftest import HERE, REAL
from indexer.errors import SourceError
from indexer.model import IMPORTED, ImageRecord
from indexer.sources import parse_source
from indexer.sources.parse import Context

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


def test_empty_list_response(run_cli, tmp_path):
    path = tmp_path / "empty.json"
    path.write_text("{}")
    result = run_cli("index", f"ycr-json:{path}", "--store", str(tmp_path / "s"))
    assert result.exit_code == 0 and "no images" in result.output


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
    path.write_text(json.dumps({"images": [good, victim]}, ensure_ascii=False), encoding="utf-8")
    store = str(tmp_path / "store")
    result = run_cli("index", f"ycr-json:{path}", "--store", store)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"imgdex: {path} images[1]: ") and reason in lines[0], lines
    assert get(run_cli, store, good["id"]) == good


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


@pytest.mark.parametrize("name", ["crp1/App", "crp1/team/../app", "crp1/app\n", "crp1/тест"])
def test_invalid_name_fails_that_image_as_a_missing_name_does(run_cli, tmp_path, name):
    good, victim = images_of("image-array.json")[:2]
    path = tmp_path / "names.json"
    path.write_text(json.dumps([good, dict(victim, name=name)], ensure_ascii=False), encoding="utf-8")
    store = str(tmp_path / "store")
    result = run_cli("index", f"ycr-json:{path}", "--store", store)
    assert result.exit_code == 1 and "invalid repository name" in result.stderr
    assert [d["id"] for d in listing(run_cli, store)] == [good["id"]]
