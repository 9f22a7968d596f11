"""Registry documents of one run are each the registry's word on an image: two that disagree on one
id, or that give one manifest two ids, are refused as one file listing an image twice is. A later
run's document replaces an earlier one's, as a newer export does."""

import json

import pytest

from test_ycr_json import get, listing, load


def write(tmp_path, name: str, docs: list[dict]) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(docs), encoding="utf-8")
    return str(path)


def index(run_cli, store: str, *paths: str):
    return run_cli("index", *(f"ycr-json:{p}" for p in paths), "--store", store)


def test_the_same_image_in_two_documents_of_one_run_with_other_tags_keeps_the_first(run_cli, tmp_path):
    doc = load("image-get.json")
    first = write(tmp_path, "monday.json", [doc])
    second = write(tmp_path, "tuesday.json", [dict(doc, tags=["other"])])
    store = str(tmp_path / "store")
    result = index(run_cli, store, first, second)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"imgdex: {second}: image {doc['id']} is in an earlier source of this run with different "
        "contents; the first is kept"
    ]
    assert get(run_cli, store, doc["id"]) == doc  # not the tags of both


def test_the_same_image_in_two_documents_alike_is_one_image(run_cli, tmp_path):
    doc = load("image-get.json")
    paths = [write(tmp_path, f"{n}.json", [doc]) for n in ("a", "b")]
    store = str(tmp_path / "store")
    result = index(run_cli, store, *paths)
    assert result.exit_code == 0, result.output
    assert get(run_cli, store, doc["id"]) == doc
    assert listing(run_cli, store) == [doc]


@pytest.mark.parametrize("files", [1, 2])
def test_one_manifest_under_two_ids_in_one_run_keeps_the_first(run_cli, tmp_path, files):
    doc = load("image-get.json")
    other = dict(doc, id="crp" + "v" * 17, tags=["else"])
    if files == 1:
        paths = [write(tmp_path, "both.json", [doc, other])]
    else:
        paths = [write(tmp_path, "a.json", [doc]), write(tmp_path, "b.json", [other])]
    store = str(tmp_path / "store")
    result = index(run_cli, store, *paths)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"imgdex: {paths[-1]}: image {other['id']} is cr.yandex/{doc['name']}@{doc['digest']}, which an "
        "earlier image of this run has under another id; the first is kept"
    ]
    assert listing(run_cli, store) == [doc]
    assert get(run_cli, store, f"cr.yandex/{doc['name']}@{doc['digest']}") == doc


def test_a_later_run_that_gives_a_manifest_another_id_replaces_the_earlier_id(run_cli, tmp_path):
    """A registry gives an image deleted and pushed again a new id; the later export is its word."""
    doc = load("image-get.json")
    again = dict(doc, id="crp" + "v" * 17, tags=doc["tags"][:1], createdAt="2030-01-01T00:00:00Z")
    store = str(tmp_path / "store")
    assert index(run_cli, store, write(tmp_path, "old.json", [doc])).exit_code == 0
    result = index(run_cli, store, write(tmp_path, "new.json", [again]))
    assert result.exit_code == 0, result.output
    assert listing(run_cli, store) == [again]
    assert get(run_cli, store, f"cr.yandex/{doc['name']}@{doc['digest']}") == again
    missing = run_cli("get", doc["id"], "--store", store)
    assert missing.exit_code != 0 and "not found" in missing.stderr


@pytest.mark.parametrize("order", ["older first", "newer first"])
def test_a_later_run_with_other_contents_for_one_id_replaces_it_whole(run_cli, tmp_path, order):
    """The two documents were merged field by field, each field its greater value: `get` printed
    one that neither import held, with exit 0 and no word."""
    doc = load("image-get.json")
    layers = [dict(doc["layers"][0], id="crp" + "a" * 17), *doc["layers"][1:]]
    other = dict(doc, createdAt="2020-01-01T00:00:00Z", compressedSize="999999", layers=layers)
    first, second = (doc, other) if order == "older first" else (other, doc)
    store = str(tmp_path / "store")
    assert index(run_cli, store, write(tmp_path, "one.json", [first])).exit_code == 0
    result = index(run_cli, store, write(tmp_path, "two.json", [second]))
    assert result.exit_code == 0, result.output
    assert get(run_cli, store, doc["id"]) == second
    assert listing(run_cli, store) == [second]
