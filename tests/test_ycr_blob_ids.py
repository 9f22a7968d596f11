"""A blob that a YCR document gives without an id is answered without one, as MessageToJson
prints it, whatever else is indexed for the same image."""

import json
import os

import pytest

from conftest import REAL
from test_ycr_json import as_message_to_json, get, listing, load


def without_blob_ids(doc: dict, spelling) -> dict:
    doc = json.loads(json.dumps(doc))
    for blob in (doc["config"], *doc["layers"]):
        if spelling is None:
            del blob["id"]
        else:
            blob["id"] = spelling
    return doc


def imported(run_cli, tmp_path, doc) -> str:
    path = tmp_path / "image.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    store = str(tmp_path / "store")
    result = run_cli("index", f"ycr-json:{path}", "--store", store)
    assert result.exit_code == 0, result.output
    return store


@pytest.mark.parametrize("spelling", [None, "", "null"])
def test_blobs_without_an_id_are_answered_without_one(run_cli, tmp_path, spelling):
    from google.protobuf import json_format
    from yandex.cloud.containerregistry.v1 import image_pb2

    from queries.server.grpc_api import image_message

    doc = without_blob_ids(load("image-get.json"), None if spelling == "null" else spelling)
    if spelling == "null":
        for blob in (doc["config"], *doc["layers"]):
            blob["id"] = None
    expected = as_message_to_json(doc)
    assert "id" not in expected["config"] and all("id" not in layer for layer in expected["layers"])
    store = imported(run_cli, tmp_path, doc)
    assert get(run_cli, store, doc["id"]) == expected
    assert listing(run_cli, store) == [expected]
    assert image_message(expected) == json_format.ParseDict(expected, image_pb2.Image())  # as serve answers it


def test_a_config_of_no_fields_is_an_empty_message(run_cli, tmp_path):
    doc = {"id": "crpbbbbbbbbbbbbbbbb2", "name": "crp456/empty", "config": {}, "layers": [{}, {"size": "3"}]}
    store = imported(run_cli, tmp_path, doc)
    expected = as_message_to_json(doc)
    assert expected == doc
    assert get(run_cli, store, doc["id"]) == expected
    assert listing(run_cli, store) == [expected]
    assert run_cli("get", doc["id"], "--store", store, "--format", "yaml").exit_code == 0


@pytest.mark.parametrize("imported_first", [True, False])
def test_a_manifest_source_of_the_same_image_does_not_give_them_ids(run_cli, tmp_path, imported_first):
    """The layout holds the imported image's manifest: its records carry the formula ids, which
    must not replace the document's absent ones, in either order."""
    doc = without_blob_ids(load("image-get.json"), None)
    path = tmp_path / "image.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    store = str(tmp_path / "store")
    runs = [
        ("index", f"ycr-json:{path}"),
        ("index", f"oci:{os.path.join(REAL, 'oci-layout')}:v1", "--registry", "cr.yandex", "--repository", doc["name"]),
    ]
    for args in runs if imported_first else runs[::-1]:
        result = run_cli(*args, "--store", store)
        assert result.exit_code == 0, result.output
    assert get(run_cli, store, doc["id"]) == dict(as_message_to_json(doc), tags=sorted(set(doc["tags"]) | {"v1"}))


def test_blob_ids_given_are_kept(run_cli, tmp_path):
    doc = load("image-get.json")
    store = imported(run_cli, tmp_path, doc)
    assert get(run_cli, store, doc["id"]) == doc
