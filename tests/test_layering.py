"""Data flows one way: indexer never imports queries, and lookups never import heavy modules."""

import ast
import os
import subprocess
import sys

from conftest import ROOT


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
