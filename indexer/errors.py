"""The one error hierarchy of the library. Only the CLI turns these into messages and exit codes."""
from __future__ import annotations


class ImgdexError(Exception):
    """Base of every error the library raises on purpose."""


class ReferenceError_(ImgdexError):
    """A string is not a valid image reference."""


class SourceError(ImgdexError):
    """A source, or one image in it, cannot be read. `where` names the file (and member)."""

    def __init__(self, where: str, reason: str):
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


class StoreError(ImgdexError):
    """The store cannot be opened, read or written."""


class StoreLocked(StoreError):
    """Another index run holds the store."""


class NotFound(ImgdexError):
    """No image matches a lookup."""


class Ambiguous(ImgdexError):
    """An id prefix matches several images."""

    def __init__(self, query: str, candidates: list[str]):
        super().__init__(f"{query} is ambiguous: " + ", ".join(candidates))
        self.candidates = candidates


class QueryError(ImgdexError):
    """A filter, order, page token or SQL query is not valid."""
