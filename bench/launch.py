"""Wall time and peak RSS of one command, measured by a small launcher process.

On Linux a child's ru_maxrss also counts the memory of the process it was forked (or vforked)
from, until it execs: a benchmark that holds a large floor or input in memory would report its own
size for every command it starts. The command is therefore started by a fresh interpreter that
holds almost nothing, which reports what wait4 says.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

_LAUNCHER = """
import os, sys, time
out = os.open(sys.argv[1], os.O_WRONLY)
started = time.perf_counter()
pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ, file_actions=[(os.POSIX_SPAWN_DUP2, out, 1)])
_, status, usage = os.wait4(pid, 0)
print(time.perf_counter() - started, usage.ru_maxrss, os.waitstatus_to_exitcode(status))
"""


def launch(argv: list[str], *, cwd: str) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MiB, stdout) of `argv` (its first item an absolute path); exits
    with the command's stderr when it fails."""
    with tempfile.NamedTemporaryFile(mode="w+") as stdout:
        done = subprocess.run(
            [sys.executable, "-c", _LAUNCHER, stdout.name, *argv], cwd=cwd, capture_output=True, text=True
        )
        try:
            wall, rss_kib, code = done.stdout.split()
        except ValueError:
            raise SystemExit(f"launcher failed: {' '.join(argv)}\n{done.stderr}") from None
        if done.returncode != 0 or code != "0":
            raise SystemExit(f"command failed ({code}): {' '.join(argv)}\n{done.stderr}")
        stdout.seek(0)
        return float(wall), int(rss_kib) / 1024, stdout.read()


# What the commands measured import: loaded once beforehand, so that none of them compiles.
_MODULES = "queries.cli, queries.engine, indexer.workers, indexer.store.delta_writer, duckdb, deltalake"


def compiled_modules(work: str, root: str) -> None:
    """Commands started from here load compiled modules, as an installed imgdex does (pip compiles
    them at install time). Where PYTHONDONTWRITEBYTECODE is set, every command run from the source
    tree `root` would compile our modules again (~40 ms); the bytecode goes under `work`."""
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ.setdefault("PYTHONPYCACHEPREFIX", os.path.join(work, "pycache"))
    subprocess.run([sys.executable, "-c", f"import {_MODULES}"], cwd=root, check=True)
