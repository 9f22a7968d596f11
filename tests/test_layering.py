"""Data flows one way: indexer never imports queries, and lookups never import heavy modules."""

import ast
import os
import subprocess
import sys

import shutil

import pyarrow.parquet as pq

from conftest import ROOT
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
    code = (
        "import sys\n"
        "from queries.cli import cli\n"
        f"try:\n    cli.main(['get', 'imgdex-test/app:1.0', '--store', {samples_store!r}], standalone_mode=False)\n"
        "except SystemExit:\n    pass\n"
        "heavy = ('pyarrow', 'docker', 'requests', 'urllib3', 'yaml')\n"
        "print(sorted(m for m in heavy if m in sys.modules), file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert '"id"' in result.stdout
    assert result.stderr.strip().splitlines()[-1] == "[]"


def test_get_by_id_does_not_compile_the_reference_grammar(samples_store):
    """A cold `imgdex get ID` imports ids only; references.py is for lookups by reference."""
    code = (
        "import sys\n"
        "from queries.cli import cli\n"
        "from queries import engine, lookup\n"
        f"reader = engine.connect({samples_store!r}, tables=('images',))\n"
        "some_id = reader.execute('SELECT id FROM images LIMIT 1').fetchone()[0]\n"
        f"try:\n    cli.main(['get', some_id, '--store', {samples_store!r}], standalone_mode=False)\n"
        "except SystemExit:\n    pass\n"
        "print('indexer.references' in sys.modules, file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert '"id"' in result.stdout
    assert result.stderr.strip().splitlines()[-1] == "False"


def test_a_small_run_into_a_store_does_not_import_pyarrow_compute(samples_store, tmp_path):
    """pyarrow.compute takes ~50 ms to import, a sixth of a one-image run: rows a run writes out of
    order (a new image, and the one that lost its tag to it) are put in order without it."""
    store = str(tmp_path / "store")
    shutil.copytree(samples_store, store)
    before = set(deltalog.read_table(os.path.join(store, "images")).files)
    samples = os.path.join(ROOT, "data", "samples")
    # the second claims the tag of the first: a tags-only row beside a new image
    runs = [[f"{kind}:{samples}/{name}", "--repository", "moved/app"] for kind, name in SAMPLES]
    code = (
        "import sys\n"
        "from queries.cli import cli\n"
        f"for args in {runs!r}:\n"
        f"    try:\n        cli.main(['index', *args, '--store', {store!r}], standalone_mode=False)\n"
        "    except SystemExit:\n        pass\n"
        "print('pyarrow.compute' in sys.modules, file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "False"
    written = set(deltalog.read_table(os.path.join(store, "images")).files) - before
    rows = pq.read_table(sorted(written), columns=["id", "tags_only"]).to_pylist()
    assert any(r["tags_only"] for r in rows) and len(rows) > len(written)
    for path in written:
        ids = pq.read_table(path, columns=["id"]).column("id").to_pylist()
        assert ids == sorted(ids)
