"""The one error hierarchy of the library. Only the CLI turns these into messages and exit codes."""

from __future__ import annotations

import re


# Bidirectional controls too (marks, embeddings, overrides, isolates): shown raw, U+202E would make
# a terminal print what follows it right to left, so that a value reads as something else.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")


def printable(text: str) -> str:
    """`text` fit for a one-line message: control characters, line separators, bidirectional
    controls and bytes that were not UTF-8 are escaped (`\\n`, `\\x1b`, `\\u202e`, `\\xff`), so a
    file name cannot split a message nor reorder it."""
    return _UNPRINTABLE.sub(_escape, text)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's text (libraries underneath word theirs over several), or
    its type when it has none."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # os.fsdecode keeps an undecodable byte as a lone surrogate
        return f"\\x{code - 0xDC00:02x}"
    return repr(match.group())[1:-1]


class ImgdexError(Exception):
    """Base of every error the library raises on purpose."""


class ReferenceError_(ImgdexError):
    """A string is not a valid image reference."""


class SourceError(ImgdexError):
    """A source, or one image in it, cannot be read. `where` names the file (and member)."""

    def __init__(self, where: str, reason: str):
        where, reason = printable(where), printable(reason)
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


class StoreError(ImgdexError):
    """The store cannot be opened, read or written."""


class RefusedStore(StoreError):
    """A table this imgdex refuses rather than misreads, for what the table is rather than for the
    moment it was read at: unlike a folder pruned between a listing and a read, or a log that
    cannot be read for its permissions, waiting does not make it readable (writers never lower a
    table's protocol nor its schema version), so a long-running reader refuses it at start."""


class NewerStore(RefusedStore):
    """A table written by a newer imgdex, which this one refuses rather than misreads."""


class UnsupportedTable(RefusedStore):
    """A table using a Delta feature this reader does not implement (a reader version or feature
    it does not know, deletion vectors, column mapping, partitions, v2 checkpoints): reading its
    data files as plain Parquet would return wrong rows."""


class NotFound(ImgdexError):
    """No image matches a lookup."""


class Ambiguous(ImgdexError):
    """An id prefix matches several images."""

    def __init__(self, query: str, candidates: list[str]):
        super().__init__(f"{query} is ambiguous: " + ", ".join(candidates))
        self.candidates = candidates


class QueryError(ImgdexError):
    """A filter, order, page token or SQL query is not valid."""


# ---- where each kind of failure comes from (their modules raise them; only the CLI words exit codes)


class NotAnArchive(SourceError):
    """The file is no image tarball at all (empty, not a tar, no manifest.json or index.json),
    as opposed to an image tarball that is broken. A folder of archives skips it with a note."""


class HttpError(ImgdexError):
    """A registry request failed for good: `where` says what was asked, `reason` why it failed."""

    def __init__(self, where: str, reason: str, status: int | None = None):
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason
        self.status = status


class HostDown(HttpError):
    """A request not sent because its host is given up on; the message names the host and why."""


class AuthError(ImgdexError):
    """Registry credentials are missing, rejected, or the token server failed."""


class EngineUnavailable(ImgdexError):
    """The Docker engine cannot be reached, or stopped answering."""


class NoSuchImage(ImgdexError):
    """The engine has no image by that name or ID."""


class EngineRefused(ImgdexError):
    """The engine answered one request with an error."""


class Unauthenticated(ImgdexError):
    """A request to `imgdex serve` without the server's bearer token."""


class Unimplemented(ImgdexError):
    """A method the index cannot answer: every write, and reads of data it does not hold."""
