"""What an image config may cost once parsed, as both of its parsers (`typed.py`, `parse.py`) bound
it, so that a config is kept or refused alike whichever of them reads it.

An 8 MiB config is small as bytes, but every entry of its lists becomes Python objects of 50 to
100 bytes however short its text: `{}` is three bytes of history and a HistoryEntry of ~100, so
8 MiB of them would take ~650 MB to parse, and a batch of such records gigabytes.
"""

from __future__ import annotations

import re

# Entries a config may list in any one of history, rootfs.diff_ids, Env, Entrypoint, Cmd and
# Labels (~2 MB of objects at most, before their strings). Real images hold far fewer: overlayfs
# stacks at most 127 layers (Docker's limit; 500 on recent kernels), history adds to those one
# entry per metadata-only step (ENV, LABEL, CMD...) of the build and of its base images, and the
# largest configs seen list a few thousand environment variables or labels.
MAX_ENTRIES = 20_000
# Values (keys included) a config may hold at all, wherever they are: a parser builds them all
# before any list can be measured, at most ~90 bytes each (`{"a":"bc"}`, `[]`, `"bc"`), so ~45 MB.
# Well above what the entry bounds let through: a full history entry is nine values, and Docker's
# configs repeat Env, Cmd and Labels under container_config.
MAX_VALUES = 2**19
_STRING = re.compile(rb'"[^"]*"')
_WINDOW = 1 << 16
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b",:[{")  # deleted, to count the rest fast


def _structure(data: bytes) -> int:
    """A bound on the values of `data`: each one is the first in its array or object, or follows a
    comma or a colon."""
    return len(data.translate(None, _NOT_STRUCTURE)) + 1


def too_many_values(data: bytes, bound: int | None = None) -> bool:
    """Whether the JSON text `data` may hold more than `bound` values (MAX_VALUES unless given),
    counted without parsing it, and in no more time than parsing text within the bound would take."""
    if bound is None:
        bound = MAX_VALUES
    # Every value but the first takes a separator and at least one byte, so a document of up to
    # twice as many bytes cannot hold more: nearly every config is not counted at all.
    if len(data) < 2 * bound or _structure(data) <= bound:
        return False
    # The separators counted may be text inside strings (a label holding JSON, a long script):
    # count again without the strings. Escaped quotes and backslashes go first, so that a quote
    # left is one that opens or closes a string.
    bare = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    # A window at a time (each ends outside any string), so that the pieces `re.sub` keeps of a
    # window of many short strings stay few.
    count = 1
    start = 0
    while start < len(bare) and count <= bound:
        end = start + _WINDOW
        if bare.count(b'"', start, end) % 2:
            closing = bare.find(b'"', end)
            end = len(bare) if closing < 0 else closing + 1
        count += _structure(_STRING.sub(b"", bare[start:end])) - 1
        start = end
    return count > bound
