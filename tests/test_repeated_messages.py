"""A failure met again word for word (one broken manifest under several tags, a layout listing one
broken descriptor many times) is one failure: said once, counted once, stored once."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest

from conftest import ROOT
from test_badinput import error_lines, run_measured, sql_rows

SAMPLE = os.path.join(ROOT, "data", "samples", "oci-layout")


def _layout_with_a_broken_manifest(tmp_path, copies: int) -> tuple[str, str]:
    """The sample layout with one manifest cut short; `copies` more descriptors of it are listed.
    Returns (layout, the broken digest)."""
    layout = str(tmp_path / "layout")
    shutil.copytree(SAMPLE, layout)
    with open(os.path.join(layout, "index.json"), "rb") as f:
        index = json.load(f)
    broken = index["manifests"][0]
    path = os.path.join(layout, "blobs", *broken["digest"].split(":"))
    with open(path, "rb") as f:
        data = f.read()
    os.chmod(path, 0o644)
    with open(path, "wb") as f:
        f.write(data[:-5])
    assert hashlib.sha256(data[:-5]).hexdigest() != broken["digest"].split(":")[1]
    index["manifests"] += [{k: v for k, v in broken.items() if k != "annotations"}] * copies
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump(index, f)
    return layout, broken["digest"]


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_failure_met_again_is_said_and_counted_once(tmp_path, jobs):
    layout, digest = _layout_with_a_broken_manifest(tmp_path, copies=500)
    reference = str(tmp_path / "reference")
    good = run_measured(["index", SAMPLE, "--store", reference, "--json"])
    assert good.code == 0, good.stderr
    store = str(tmp_path / "store")
    out = run_measured(["index", layout, "--store", store, "--json", "--jobs", jobs])
    assert out.code == 1
    errors = error_lines(out.stderr)
    assert len(errors) == 1 and digest in errors[0] and "digest mismatch" in errors[0], out.stderr
    summary = json.loads(out.stdout)
    assert summary["failed"] == 1 and summary["errors"] == [errors[0][len("imgdex: ") :]]
    assert "more messages repeated one said before word for word" in out.stderr
    # The images that do not need the broken manifest all land.
    ids = {row["id"] for row in sql_rows(store, "SELECT id FROM images")}
    all_ids = {row["id"] for row in sql_rows(reference, "SELECT id FROM images")}
    assert ids and ids < all_ids
    assert summary["indexed"] == len(ids)
    runs = sql_rows(store, "SELECT images_failed, errors FROM runs")
    assert [(run["images_failed"], len(run["errors"])) for run in runs] == [(1, 1)]


def test_distinct_failures_are_each_said(tmp_path):
    layout, digest = _layout_with_a_broken_manifest(tmp_path, copies=0)
    with open(os.path.join(layout, "index.json")) as f:
        index = json.load(f)
    index["manifests"].append(
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + "0" * 64, "size": 7}
    )
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump(index, f)
    out = run_measured(["index", layout, "--store", str(tmp_path / "store"), "--json"])
    errors = error_lines(out.stderr)
    assert len({line for line in errors}) == len(errors) >= 2, out.stderr
    assert json.loads(out.stdout)["failed"] == len(errors)


def test_an_archive_indexed_again_counts_its_images_and_commits_only_its_runs_row(tmp_path):
    """What the README says N is: the images read, written or found unchanged."""
    store = str(tmp_path / "store")
    first = run_measured(["index", SAMPLE, "--store", store, "--json"])
    second = run_measured(["index", SAMPLE, "--store", store, "--json"])
    assert first.code == second.code == 0, second.stderr
    assert json.loads(second.stdout)["indexed"] == json.loads(first.stdout)["indexed"] > 0
    history = json.loads(run_measured(["history", "--store", store, "--format", "json"]).stdout)["versions"]
    assert len({entry["run"] for entry in history if entry["run"]}) == 2
    latest = history[0]["run"]  # newest first
    assert [entry["table"] for entry in history if entry["run"] == latest] == ["runs"]
