"""Measure wall time and I/O counters of a Python command.

``/proc/<pid>/io`` of a child cannot be read reliably from outside just
before it exits, so the command is run under a tiny ``python -c`` wrapper
that snapshots its own ``/proc/self/io`` when it starts and again from an
``atexit`` hook, then writes both to a temporary file for the parent.

The hook is registered before the target is imported, so it runs after the
target's own atexit handlers (multiprocessing joins its workers there).
``/proc/self/io`` covers all threads of the process and every child it has
already reaped, so worker processes are included once they are joined.
If the target dies from a signal the counters are missing (``complete`` is
False); ``os._exit`` reports them first; wall time, exit code and rusage are
still reported.

Counters (see proc(5)):

* ``rchar`` -- bytes passed to read-like syscalls, page cache hits included.
* ``read_bytes`` -- bytes the process caused to be fetched from storage;
  0 when everything is already in the page cache.

Example::

    from bench.io_counter import measure
    r = measure(["-m", "queries.cli", "index", "/tmp/bench/oci10k"], cwd="/work/main")
    print(r["wall"], r["rchar"], r["read_bytes"])

    python bench/io_counter.py --quiet -- -m json.tool /tmp/bench/oci10k/index.json
    python bench/io_counter.py --quiet --evict /tmp/bench/oci10k -- -m queries.cli index /tmp/bench/oci10k

``evict_page_cache`` (``--evict``) drops given files from the page cache
without root, for cold-cache runs.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time

# Runs in the child. Imports only modules the interpreter has already loaded
# at startup (plus runpy, which ``python -m`` imports too) so the target's
# own import I/O is not hidden.
_WRAPPER = r"""
import atexit, os, sys, time
def _io():
    with open("/proc/self/io", "rb") as f:
        text = f.read().decode()
    return {k: int(v) for k, v in (l.split(":") for l in text.splitlines() if ":" in l)}
_out, _mode, _target = sys.argv[1:4]
_start = _io()
_t0 = time.perf_counter()
def _report():
    end = _io()
    t1 = time.perf_counter()
    with open(_out, "w") as f:
        f.write(repr({"start": _start, "end": end, "wall_target": t1 - _t0}))
atexit.register(_report)
del atexit
# imgdex leaves through os._exit once its output is flushed (no interpreter teardown), which runs
# no atexit hook: the counters are taken there too, by this process only. Forked workers leave
# through os._exit as well, and may do so after it: they must not overwrite its counters.
_os_exit = os._exit
_pid = os.getpid()
def _exit(code):
    if os.getpid() == _pid:
        _report()
    _os_exit(code)
os._exit = _exit
import runpy
if _mode == "-m":
    sys.argv = [_target] + sys.argv[4:]
    sys.path[0] = os.getcwd()
    runpy.run_module(_target, run_name="__main__", alter_sys=True)
elif _mode == "-c":
    sys.argv = ["-c"] + sys.argv[4:]
    exec(compile(_target, "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
else:
    sys.argv = [_target] + sys.argv[4:]
    sys.path[0] = os.path.dirname(os.path.abspath(_target))
    runpy.run_path(_target, run_name="__main__")
"""

IO_FIELDS = ("rchar", "wchar", "syscr", "syscw", "read_bytes", "write_bytes", "cancelled_write_bytes")


def _split_command(cmd) -> tuple[str | None, str, str, list[str]]:
    """-> (interpreter or None, mode, target, args)."""
    if isinstance(cmd, str):
        cmd = shlex.split(cmd)
    cmd = list(cmd)
    python = None
    if (
        cmd
        and not cmd[0].startswith("-")
        and os.path.basename(cmd[0]).startswith("python")
        and not cmd[0].endswith(".py")
    ):
        python, cmd = cmd[0], cmd[1:]
    if not cmd:
        raise ValueError("empty command")
    if cmd[0] in ("-m", "-c"):
        if len(cmd) < 2:
            raise ValueError(f"{cmd[0]} needs an argument")
        return python, cmd[0], cmd[1], cmd[2:]
    if cmd[0].startswith("-"):
        raise ValueError(f"interpreter option {cmd[0]!r}: pass it in python_flags")
    return python, "script", cmd[0], cmd[1:]


def measure(
    cmd,
    *,
    python: str | None = None,
    python_flags=(),
    cwd=None,
    env=None,
    stdout=None,
    stderr=None,
    timeout: float | None = None,
) -> dict:
    """Run a Python command and return its wall time and I/O counters.

    ``cmd`` is what would follow the interpreter on a command line, as a
    list or a string: ``["-m", "queries.cli", "index", PATH]``,
    ``["script.py", "arg"]`` or ``["-c", "code", "arg"]``. A leading
    ``python``/``python3`` element is accepted and used as the interpreter.
    Interpreter options such as ``-X importtime`` go in ``python_flags``.

    ``stdout``/``stderr`` are passed to subprocess (e.g. subprocess.DEVNULL);
    pipes are not supported.

    Returns a dict with:

    * ``wall``: seconds from spawn to exit, seen by the parent (includes
      interpreter start-up); ``wall_target``: seconds the target itself ran.
    * ``rchar``, ``read_bytes``, ``wchar``, ``write_bytes``, ``syscr``,
      ``syscw``: totals for the whole process at exit (None if unavailable).
    * ``startup``: the same counters when the wrapper started, i.e. what
      interpreter start-up cost; subtract it to isolate the target.
    * ``returncode``, ``complete`` (counters were captured), ``user``,
      ``sys`` (CPU seconds) and ``maxrss_kb`` from wait4's rusage.
    """
    interp, mode, target, args = _split_command(cmd)
    python = python or interp or sys.executable
    if stdout == subprocess.PIPE or stderr == subprocess.PIPE:
        raise ValueError("pipes are not supported; use a file or DEVNULL")
    fd, out_path = tempfile.mkstemp(prefix="io_counter-", suffix=".txt")
    os.close(fd)
    argv = [python, *python_flags, "-c", _WRAPPER, out_path, mode, target, *args]
    timer = None
    try:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=stdout, stderr=stderr)
        if timeout is not None:
            timer = threading.Timer(timeout, proc.kill)
            timer.start()
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        with open(out_path) as f:
            text = f.read()
    finally:
        if timer is not None:
            timer.cancel()
        os.unlink(out_path)

    result: dict = {
        "cmd": [python, *python_flags, *([mode, target] if mode != "script" else [target]), *args],
        "wall": wall,
        "returncode": proc.returncode,
    }
    data = ast.literal_eval(text) if text else None
    result["complete"] = data is not None
    result["wall_target"] = data["wall_target"] if data else None
    end = data["end"] if data else {}
    for k in IO_FIELDS:
        result[k] = end.get(k)
    result["startup"] = {k: data["start"].get(k) for k in IO_FIELDS} if data else None
    result["user"] = ru.ru_utime
    result["sys"] = ru.ru_stime
    result["maxrss_kb"] = ru.ru_maxrss
    return result


def evict_page_cache(paths) -> int:
    """Drop the page-cache pages of files (directories are walked).

    Uses fdatasync + posix_fadvise(DONTNEED), which needs no privileges and
    leaves the rest of the system's cache alone, so a following run reads
    these files from storage (visible as ``read_bytes``). Returns the number
    of files processed. Pages mapped or in use elsewhere may stay cached.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    count = 0

    def drop(path):
        nonlocal count
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        count += 1

    for path in paths:
        if os.path.isdir(path):
            for root, _dirs, files in os.walk(path):
                for name in files:
                    drop(os.path.join(root, name))
        else:
            drop(path)
    return count


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="io_counter.py",
        description="Run a Python command and print its wall time and /proc I/O counters.",
        usage="%(prog)s [options] -- (-m MODULE | SCRIPT | -c CODE) [ARGS...]",
    )
    p.add_argument("--cwd", help="working directory for the command")
    p.add_argument("--quiet", action="store_true", help="discard the command's stdout")
    p.add_argument("--python", help="interpreter (default: this one)")
    p.add_argument(
        "-X", dest="xopts", action="append", default=[], help="pass -X OPTION to the interpreter (repeatable)"
    )
    p.add_argument("--timeout", type=float, help="kill the command after this many seconds")
    p.add_argument(
        "--evict",
        action="append",
        default=[],
        metavar="PATH",
        help="drop PATH (file or directory) from the page cache first (repeatable)",
    )
    p.add_argument("command", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        p.error("no command given")
    flags = [f for x in args.xopts for f in ("-X", x)]
    if args.evict:
        evict_page_cache(args.evict)
    res = measure(
        cmd,
        python=args.python,
        python_flags=flags,
        cwd=args.cwd,
        stdout=subprocess.DEVNULL if args.quiet else None,
        timeout=args.timeout,
    )
    print(json.dumps(res, indent=2), file=sys.stderr if not args.quiet else sys.stdout)
    return 0 if res["returncode"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
