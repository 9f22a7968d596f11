"""Opening what a user names as input, refusing what would never end or has effects of its own.

Kept free of heavy imports: `imgdex get --ids-from` opens its file through it too."""

from __future__ import annotations

import os
import stat
from typing import BinaryIO, Iterator

from .errors import SourceError, printable


def file_type(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "directory"),
        (stat.S_ISFIFO, "named pipe"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
    ):
        if test(mode):
            return name
    return "special file"


def not_regular(what: str, mode: int) -> str:
    return f"{what + ' is ' if what else ''}not a regular file ({file_type(mode)})"


def open_readable(path: str, what: str = "", *, pipes: bool = False, buffering: int = -1) -> BinaryIO:
    """Open `path` for reading if it is a regular file (or, with `pipes`, a FIFO, read as a stream);
    SourceError if it is anything else: a device would never end.

    The type is checked before opening (opening some devices has effects of its own) and again on
    the open descriptor, in case the path was swapped in between. The open does not block, so a
    FIFO swapped in, or one that no one writes, reads as empty instead of waiting. OSError
    (missing, unreadable) is left to the caller."""

    def check(mode: int) -> None:
        if not (stat.S_ISREG(mode) or (pipes and stat.S_ISFIFO(mode))):
            raise SourceError(printable(path), not_regular(what, mode))

    check(os.stat(path).st_mode)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        check(mode)
        if stat.S_ISFIFO(mode):
            os.set_blocking(fd, True)  # a writer may come: wait for what it writes
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb", buffering)


def read_small(path: str, limit: int, what: str, *, pipes: bool = False) -> bytes:
    """The whole of `path`, a regular file of at most `limit` bytes (`what` names it in errors):
    SourceError for anything else, a FIFO (unless `pipes`, then read as it is written) or device
    refused unopened, a longer file refused rather than cut (a cut at a line's end can parse as
    valid text that says less). OSError (missing, unreadable) is left to the caller."""
    with open_readable(path, what, pipes=pipes) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise SourceError(printable(path), f"{what} is over the {limit}-byte limit")
    return data


def check_small(path: str, limit: int, what: str) -> None:
    """SourceError unless `path` is a regular file of at most `limit` bytes: for files a library
    opens by name (a FIFO would block its open for ever, a device never end). OSError is the caller's."""
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):
        raise SourceError(printable(path), not_regular(what, info.st_mode))
    if info.st_size > limit:
        raise SourceError(printable(path), f"{what} is over the {limit}-byte limit")


def walk(top: str, onerror=None) -> Iterator[tuple[str, list[str], list[str]]]:
    """`os.walk(top, onerror=onerror)`, top-down, in the same order, without following symlinks,
    and without its recursion: before Python 3.12 it recurses once per level, and a folder nested
    about a thousand deep ended a whole run with RecursionError. Pruning `dirs` in place works
    as with os.walk."""
    stack = [top]
    while stack:
        folder = stack.pop()
        try:
            entries = os.scandir(folder)
        except OSError as exc:
            if onerror is not None:
                onerror(exc)
            continue
        dirs: list[str] = []
        files: list[str] = []
        with entries:
            while True:
                try:
                    entry = next(entries)
                except StopIteration:
                    break
                except OSError as exc:
                    if onerror is not None:
                        onerror(exc)
                    break
                try:
                    is_dir = entry.is_dir()
                except OSError:
                    is_dir = False
                (dirs if is_dir else files).append(entry.name)
        yield folder, dirs, files
        for name in reversed(dirs):
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                stack.append(path)


def stored_path(path: str) -> str:
    """A path as records keep it: bytes that are not UTF-8 cannot be stored as text, so a name
    holding them is kept escaped (the file is still opened by its real name)."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return printable(path)
