"""The one error hierarchy of the library. Only the CLI turns these into messages and exit codes."""

from __future__ import annotations

import re


_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def printable(text: str) -> str:
    """`text` fit for a one-line message: control characters, line separators and bytes that
    were not UTF-8 are escaped (`\\n`, `\\x1b`, `\\xff`), so a file name cannot split a message."""
    return _UNPRINTABLE.sub(_escape, text)


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


class NotFound(ImgdexError):
    """No image matches a lookup."""


class Ambiguous(ImgdexError):
    """An id prefix matches several images."""

    def __init__(self, query: str, candidates: list[str]):
        super().__init__(f"{query} is ambiguous: " + ", ".join(candidates))
        self.candidates = candidates


class QueryError(ImgdexError):
    """A filter, order, page token or SQL query is not valid."""
