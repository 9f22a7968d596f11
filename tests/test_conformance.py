"""Every golden and every rendered image is a valid yandex.cloud.containerregistry.v1.Image.

The official message is the judge: strict parsing (unknown fields fail), and MessageToJson of
the parsed message must give back our exact text.
"""

import glob
import json
import os

import pytest
from click.testing import CliRunner
from google.protobuf import json_format
from yandex.cloud.containerregistry.v1 import image_pb2, image_service_pb2

from conftest import GOLDEN, REAL
from queries.cli import cli


def assert_conforms(text: str) -> None:
    message = json_format.Parse(text, image_pb2.Image(), ignore_unknown_fields=False)
    again = json_format.MessageToJson(message)
    assert again == text.rstrip("\n"), "not byte-identical to MessageToJson"
    assert json.loads(again) == json.loads(text)


def golden_files():
    return sorted(glob.glob(os.path.join(GOLDEN, "get-*.json")))


@pytest.mark.parametrize("path", golden_files(), ids=os.path.basename)
def test_golden_get_files_conform(path):
    with open(path) as f:
        assert_conforms(f.read())


def test_golden_list_conforms_to_list_images_response():
    path = os.path.join(GOLDEN, "list-samples.json")
    with open(path) as f:
        text = f.read()
    message = json_format.Parse(text, image_service_pb2.ListImagesResponse(), ignore_unknown_fields=False)
    assert json.loads(json_format.MessageToJson(message)) == json.loads(text)


def test_goldens_exist():
    assert len(golden_files()) >= 5


@pytest.fixture(scope="module")
def real_store(tmp_path_factory):
    store = str(tmp_path_factory.mktemp("real"))
    sources = sorted(glob.glob(os.path.join(REAL, "*.tar*"))) + [os.path.join(REAL, "oci-layout")]
    result = CliRunner().invoke(cli, ["index", *sources, "--store", store, "--quiet"])
    assert result.exit_code == 0, result.output
    return store


def test_every_rendered_image_conforms(real_store):
    runner = CliRunner()
    listing = json.loads(runner.invoke(cli, ["list", "--store", real_store, "--page-size", "1000"]).stdout)
    assert len(listing["images"]) >= 10
    for image in listing["images"]:
        text = runner.invoke(cli, ["get", image["id"], "--store", real_store]).stdout
        assert_conforms(text)
    batch = runner.invoke(
        cli, ["get", "--ids-from", "-", "--store", real_store], input="\n".join(i["id"] for i in listing["images"])
    )
    for line in batch.stdout.splitlines():
        message = json_format.Parse(line, image_pb2.Image(), ignore_unknown_fields=False)
        assert json.loads(json_format.MessageToJson(message)) == json.loads(line)
