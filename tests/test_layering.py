"""Data flows one way: indexer never imports queries, and lookups never import heavy modules."""

import ast
import os

import shutil

import pyarrow.parquet as pq

from conftest import ROOT, modules_after_cli, store_views
from indexer.store import deltalog

SAMPLES = (("oci-archive", "oci-archive-app.tar"), ("docker-archive", "docker-save-app.tar"))


def imported_modules(path: str) -> set[str]:
    with open(path) as f:
        tree = ast.parse(f.read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_indexer_never_imports_queries():
    offenders = []
    for folder, _, files in os.walk(os.path.join(ROOT, "indexer")):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                if any(m == "queries" or m.startswith("queries.") for m in imported_modules(path)):
                    offenders.append(os.path.relpath(path, ROOT))
    assert offenders == []


def test_lookup_path_does_not_import_pyarrow_or_docker(samples_store):
    heavy = ("pyarrow", "docker", "requests", "urllib3", "yaml")
    loaded, out = modules_after_cli([["get", "imgdex-test/app:1.0", "--store", samples_store]], heavy)
    assert '"id"' in out
    assert loaded == []


def test_get_by_id_does_not_compile_the_reference_grammar(samples_store):
    """A cold `imgdex get ID` imports ids only; references.py is for lookups by reference, and
    model.py for building records."""
    some_id = store_views(samples_store).execute("SELECT id FROM images LIMIT 1").fetchone()[0]
    watched = ("indexer.references", "indexer.model")
    loaded, out = modules_after_cli([["get", some_id, "--store", samples_store]], watched)
    assert '"id"' in out
    assert loaded == []


def test_a_small_run_into_a_store_does_not_import_pyarrow_compute(samples_store, tmp_path):
    """pyarrow.compute takes ~50 ms to import, a sixth of a one-image run: rows a run writes out of
    order (a new image, and the one that lost its tag to it) are put in order without it."""
    store = str(tmp_path / "store")
    shutil.copytree(samples_store, store)
    before = set(deltalog.read_table(os.path.join(store, "images")).files)
    samples = os.path.join(ROOT, "data", "samples")
    # the second claims the tag of the first: a tags-only row beside a new image
    runs = [[f"{kind}:{samples}/{name}", "--repository", "moved/app"] for kind, name in SAMPLES]
    loaded, _ = modules_after_cli([["index", *args, "--store", store] for args in runs], ("pyarrow.compute",))
    assert loaded == []
    written = set(deltalog.read_table(os.path.join(store, "images")).files) - before
    rows = pq.read_table(sorted(written), columns=["id", "tags_only"]).to_pylist()
    assert any(r["tags_only"] for r in rows) and len(rows) > len(written)
    for path in written:
        ids = pq.read_table(path, columns=["id"]).column("id").to_pylist()
        assert ids == sorted(ids)
