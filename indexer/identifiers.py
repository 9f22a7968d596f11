"""Resource and blob ids, and the platform a lookup picks by default.

Kept apart from references.py because `imgdex get ID` needs only these: the cold lookup path
imports nothing that compiles the reference grammar.
"""

from __future__ import annotations

import functools
import hashlib
import re

DEFAULT_PLATFORM = "linux/amd64"

_BASE32HEX = "0123456789abcdefghijklmnopqrstuv"


# Two base32hex characters for each 10-bit value.
_PAIRS = [a + b for a in _BASE32HEX for b in _BASE32HEX]


def _short_hash(text: str) -> str:
    """The first 17 base32hex characters (85 bits) of sha256(text), lowercased.

    Same as base64.b32hexencode(...).lower()[:17], which is pure Python and slow on the lookup path;
    ten bits at a time, as indexing computes one for every image and config.
    """
    bits = int.from_bytes(hashlib.sha256(text.encode()).digest()[:11], "big") >> 3
    pairs = _PAIRS
    return (
        _BASE32HEX[bits >> 80]
        + pairs[(bits >> 70) & 1023]
        + pairs[(bits >> 60) & 1023]
        + pairs[(bits >> 50) & 1023]
        + pairs[(bits >> 40) & 1023]
        + pairs[(bits >> 30) & 1023]
        + pairs[(bits >> 20) & 1023]
        + pairs[(bits >> 10) & 1023]
        + pairs[bits & 1023]
    )


# The shape of image_id() and blob_id(): "crp" and 17 lowercase base32hex characters.
ID_RE = re.compile(r"crp[0-9a-v]{17}", re.ASCII)


def image_id(registry: str, name: str, key: str) -> str:
    """Stable resource id; `key` is the manifest digest, or the config digest if that is unknown."""
    return "crp" + _short_hash(f"{registry}/{name}@{key}")


@functools.lru_cache(maxsize=65536)
def blob_id(digest: str) -> str:
    return "crp" + _short_hash(digest)


# A blob that a registry's own document gives without an id (proto3 JSON omits an empty one): it
# is stored as "" and answered without one, while an empty `Blob.id` stands for blob_id(). Not
# empty, so that a merge keeps it over the formula (an imported document is answered as it was
# written); a NUL, which no id holds.
NO_BLOB_ID = "\x00"
