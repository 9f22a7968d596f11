"""Tag moves and retirements of a run (a registry re-crawl finds them repository by repository)
settle in one commit per batch, with the outcome of committing them one by one."""

from __future__ import annotations

import shutil

import pytest

from indexer import run
from indexer.model import TagMoves, TagsRetired
from indexer.store import deltalog
from indexer.store.delta import DeltaStore, premerge
from indexer.store.delta_writer import DeltaWriter
from test_delta_store import image, images

REPOSITORIES = 40


class _Source:
    """What `parse_source` gives a run, yielding prepared items."""

    kind, location, reads_index, reads_layers = "registry", "fake", False, False

    def __init__(self, items):
        self.items = items

    def records(self, ctx):
        yield from self.items


def _digest(n: int) -> str:
    return f"sha256:{n:064x}"


@pytest.fixture
def store(tmp_path):
    """Each repository app<k> holds image 2k tagged latest and image 2k+1 tagged old."""
    path = str(tmp_path / "store")
    with DeltaStore(path) as s:
        s.create()
        rows = []
        for k in range(REPOSITORIES):
            rows += [
                image(2 * k, 3, tags=["latest"], name=f"app{k}"),
                image(2 * k + 1, 3, tags=["old"], name=f"app{k}"),
            ]
        s.write_run({"run_id": "first"}, lambda snap: premerge(snap, images(*rows)))
    return path


def _recrawl() -> list:
    """latest moves to the other image of each repository; old goes."""
    items = []
    for k in range(REPOSITORIES):
        items.append(TagMoves("r.example", ((f"app{k}", "latest", _digest(2 * k + 1)),)))
        items.append(TagsRetired("r.example", f"app{k}", ("old",)))
    return items


def _tags(path: str) -> list:
    with DeltaStore(path) as s:
        return s.snapshot().con.execute("SELECT name, tag, image_id FROM tags ORDER BY ALL").fetchall()


def _version(path: str) -> int:
    return deltalog.read_table(f"{path}/images").version


def _run(path: str, items: list, monkeypatch) -> None:
    monkeypatch.setattr(run, "parse_source", lambda spec, options: _Source(items))
    writer = DeltaWriter(path)
    try:
        summary = run.run_tasks([run.Task(0, "docker://fake")], writer)
    finally:
        writer.close()
    assert summary.failed == 0


def _one_by_one(path: str, items: list) -> None:
    writer = DeltaWriter(path)
    try:
        for item in items:
            if isinstance(item, TagMoves):
                writer.claim_tags(item.registry, list(item.claims))
            else:
                writer.retire_tags(item.registry, item.name, list(item.tags))
    finally:
        writer.close()


def test_a_recrawl_settles_its_tag_changes_in_one_commit_as_one_by_one(store, tmp_path, monkeypatch):
    reference = str(tmp_path / "reference")
    shutil.copytree(store, reference)
    before = _version(store)
    _run(store, _recrawl(), monkeypatch)
    _one_by_one(reference, _recrawl())
    assert _version(store) == before + 1
    assert _version(reference) == before + 2 * REPOSITORIES
    tags = _tags(store)
    assert tags == _tags(reference)
    assert tags == [(f"app{k}", "latest", image(2 * k + 1)["id"]) for k in sorted(range(REPOSITORIES), key=str)]


def test_a_later_change_of_a_waiting_tag_wins(store, tmp_path, monkeypatch):
    # moved, then retired: retired, as one by one (in one commit the move would win)
    items = [
        TagMoves("r.example", (("app1", "latest", _digest(3)),)),
        TagsRetired("r.example", "app1", ("latest",)),
        TagsRetired("r.example", "app2", ("old",)),
        TagMoves("r.example", (("app2", "old", _digest(4)),)),
    ]
    reference = str(tmp_path / "reference")
    shutil.copytree(store, reference)
    _run(store, items, monkeypatch)
    _one_by_one(reference, items)
    tags = _tags(store)
    assert tags == _tags(reference)
    assert ("app1", "latest", image(2)["id"]) not in tags and ("app1", "latest", image(3)["id"]) not in tags
    assert ("app2", "old", image(4)["id"]) in tags


def test_a_waiting_move_settles_before_the_batch_that_follows_it(store, tmp_path, monkeypatch):
    """One by one, a move committed at once and the images read after it at the end of their
    batch: an image of the run that claims the moved tag later keeps it."""
    from indexer.identifiers import image_id
    from indexer.model import Blob, ImageRecord

    new_digest = _digest(500)
    record = ImageRecord(
        id=image_id("r.example", "app5", new_digest),
        registry="r.example",
        name="app5",
        digest=new_digest,
        media_type="application/vnd.oci.image.manifest.v1+json",
        kind="image",
        config=Blob(_digest(501), 2, "application/vnd.oci.image.config.v1+json"),
        layers=(),
        layers_compressed=True,
        tags=("latest",),
        created=None,
        platform=None,
        parent_digest="",
        source_kind="registry",
        source_path="fake",
        exactness=3,
        manifest_raw=b"{}",
        config_raw=b"{}",
    )
    _run(store, [TagMoves("r.example", (("app5", "latest", _digest(11)),)), record], monkeypatch)
    assert ("app5", "latest", record.id) in _tags(store)
