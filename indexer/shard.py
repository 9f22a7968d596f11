"""Shards of one index run: `--shard K/N` lets N workers index the same sources into one store.

Every source names each unit of its work with a key (a repository, an image's manifest or
config digest, an archive's path inside a folder) and skips the units its shard does not own,
before reading them. Ownership is a pure function of the key text, so every worker, on every
machine, agrees on it: the N shards are disjoint and together are the unsharded run.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import ClassVar

# [0-9], not \d (which takes other scripts' digits, as int() does), no sign, no leading zero, no
# blanks: a shard text that is not exactly `K/N` is a mistake, not a variant. Nine digits are
# more workers than any job has.
_TEXT = re.compile(r"([1-9][0-9]{0,8})/([1-9][0-9]{0,8})")


@dataclass(frozen=True)
class Shard:
    """The `index`-th of `count` slices; `index` is 1-based, as in the `K/N` text (1/4 … 4/4)."""

    index: int
    count: int

    ALL: ClassVar[Shard]

    def __post_init__(self) -> None:
        if type(self.index) is not int or type(self.count) is not int or not 1 <= self.index <= self.count:
            raise ValueError(f"invalid shard {self.index!r}/{self.count!r}: K/N needs 1 <= K <= N")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """`K/N` (`2/4`) as a Shard; ValueError with a one-line message otherwise."""
        match = _TEXT.fullmatch(text) if isinstance(text, str) else None
        if match is not None:
            index, count = int(match.group(1)), int(match.group(2))
            if index <= count:
                return cls(index, count)
        raise ValueError(f"invalid shard {text!r}: expected K/N with 1 <= K <= N, such as 2/4")

    def owns(self, key: str) -> bool:
        """Whether this shard takes the unit named `key`.

        sha256 rather than hash(): Python salts str hashes per process, and every worker must
        agree. surrogatepass, so a file name that was not UTF-8 (os.fsdecode) still hashes.
        """
        if self.count == 1:
            return True
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
        return int.from_bytes(digest[:8], "big") % self.count == self.index - 1

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


Shard.ALL = Shard(1, 1)


def in_shard(shard: Shard | None, key: str) -> bool:
    """`shard.owns(key)`, where None means no sharding."""
    return shard is None or shard.owns(key)


def repository_key(registry: str, name: str) -> str:
    """The key of a repository, the same for a registry crawl and an engine, so one worker
    takes a repository wherever it is read from."""
    return f"{registry}/{name}"
