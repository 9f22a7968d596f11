"""The proof with real tools: make fresh archives with a real engine, registry and skopeo, then index them.

Runs tests/fixtures/make_fixtures.sh into a temporary folder. Needs root and Debian's docker.io,
docker-registry and skopeo; when CI is set a missing tool is a failure, never a skip.
"""

import json
import os
import subprocess

import pytest

from conftest import HERE
from expectations import expected_documents
from services import missing_tools, unavailable_or_fail
from test_real_fixtures import index_and_list

pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    reason = missing_tools("dockerd", "docker-registry", "skopeo", "zstd", "curl")
    if reason:
        unavailable_or_fail(reason)
    out = tmp_path_factory.mktemp("fresh-fixtures")
    env = dict(os.environ, FIXTURES_OUT=str(out / "real"), SAMPLES_OUT=str(out / "samples"))
    result = subprocess.run(
        ["bash", os.path.join(HERE, "fixtures", "make_fixtures.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    with open(out / "real" / "expected.json") as f:
        return str(out / "real"), json.load(f)


def test_every_fresh_archive_gives_exact_documents(fresh, tmp_path):
    folder, expected = fresh
    assert len(expected["archives"]) >= 10
    for name, entry in expected["archives"].items():
        got = index_and_list(os.path.join(folder, name), str(tmp_path / name))
        assert got == expected_documents(entry), name


def test_fresh_created_has_nanoseconds(fresh, tmp_path):
    folder, _ = fresh
    rows = index_and_list(os.path.join(folder, "docker-save-app.tar"), str(tmp_path))
    assert any(len(row.get("createdAt", "").split(".")[-1]) == 10 for row in rows)
