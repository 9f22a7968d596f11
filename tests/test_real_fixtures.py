"""Archives written by real Docker, skopeo and zstd give exactly the expected Image.Get documents."""

import json
import os

import pytest
from click.testing import CliRunner

from conftest import REAL
from expectations import REPOSITORY, expected_documents, registry_facts
from queries.cli import cli

with open(os.path.join(REAL, "expected.json")) as f:
    EXPECTED = json.load(f)


def index_and_list(source: str, store: str) -> list[dict]:
    runner = CliRunner()
    result = runner.invoke(cli, ["index", source, "--store", store, "--repository", REPOSITORY, "--quiet"])
    assert result.exit_code == 0, result.output
    listing = json.loads(runner.invoke(cli, ["list", "--store", store, "--page-size", "1000"]).stdout)
    return sorted(listing.get("images", []), key=lambda d: d["id"])


@pytest.mark.parametrize("name", sorted(EXPECTED["archives"]))
def test_archive_gives_exact_documents(name, tmp_path):
    got = index_and_list(os.path.join(REAL, name), str(tmp_path))
    want = expected_documents(EXPECTED["archives"][name])
    assert got == want


@pytest.mark.parametrize(
    "prefix, name",
    [("docker-archive:", "docker-save-app.tar"), ("oci-archive:", "oci-archive-app.tar"), ("oci:", "oci-layout")],
)
def test_explicit_source_kinds(prefix, name, tmp_path):
    assert index_and_list(prefix + os.path.join(REAL, name), str(tmp_path)) == expected_documents(
        EXPECTED["archives"][name]
    )


def test_oci_copies_match_what_the_registry_serves(tmp_path):
    facts = registry_facts(EXPECTED)
    store = str(tmp_path)
    for name in ("oci-layout", "oci-archive-app.tar", "oci-archive-base-multiarch.tar"):
        index_and_list(os.path.join(REAL, name), store)
    rows = json.loads(CliRunner().invoke(cli, ["list", "--store", store, "--page-size", "1000"]).stdout)["images"]
    compared = 0
    for row in rows:
        fact = facts.get(row.get("digest"))
        if fact is None:
            continue
        compared += 1
        if fact["kind"] == "image":
            assert row["config"]["digest"] == fact["config"]["digest"]
            assert [layer["digest"] for layer in row["layers"]] == [layer["digest"] for layer in fact["layers"]]
            from indexer.timestamps import normalise

            assert row["createdAt"] == normalise(fact["created"])
    assert compared >= 3  # the OCI-format pushes keep their registry digests through skopeo


def test_nanosecond_created_survives(tmp_path):
    rows = index_and_list(os.path.join(REAL, "docker-save-app.tar"), str(tmp_path))
    fractions = {row["createdAt"].split(".")[1] for row in rows if "." in row.get("createdAt", "")}
    assert any(len(f) == 10 for f in fractions)  # nine digits and the Z


def test_zstd_and_gzip_equal_plain(tmp_path):
    plain = index_and_list(os.path.join(REAL, "docker-save-app.tar"), str(tmp_path / "a"))
    for suffix in (".gz", ".zst"):
        assert index_and_list(os.path.join(REAL, "docker-save-app.tar" + suffix), str(tmp_path / suffix)) == plain
