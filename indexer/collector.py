"""Python's cyclic garbage collector, paused around work that allocates much and makes no cycles.

Parsing an image allocates many small containers, and its records pile up until their batch is
written; the collector's passes over them cost about a fifth of a parse, and find nothing to free.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Iterable, Iterator


@contextmanager
def paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def paused_while(items: Iterable) -> Iterator:
    """`items`, with the collector paused until they are all read (or the reader lets go of them,
    which closes this generator)."""
    with paused():
        yield from items
