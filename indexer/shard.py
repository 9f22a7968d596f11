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

    def within(self, index: int, count: int) -> Shard:
        """The `index`-th of `count` slices of this shard's slice (`index --jobs` within `--shard`).

        `owns` keeps residue K-1 of N; the key's hash divided by N, taken modulo `count`, splits
        that residue class again. Together that is one residue of N*count: a plain Shard, and the
        `count` slices are disjoint and make up exactly this one."""
        inner = Shard(index, count)
        return Shard(self.index + self.count * (inner.index - 1), self.count * inner.count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


Shard.ALL = Shard(1, 1)


class CountedShard:
    """A shard that counts the units it is asked about, owned or not.

    Every slice of a source asks about the same units in the same order (ownership is decided per
    unit, never by what came before), so `asked` names a unit's place in the source's enumeration
    identically in every worker of `index --jobs`: the run orders tag claims by it.
    """

    def __init__(self, shard: Shard):
        self.shard = shard
        self.asked = 0

    def owns(self, key: str) -> bool:
        self.asked += 1
        return self.shard.owns(key)

    def __str__(self) -> str:
        return str(self.shard)


def in_shard(shard: Shard | None, key: str) -> bool:
    """`shard.owns(key)`, where None means no sharding."""
    return shard is None or shard.owns(key)


def repository_key(registry: str, name: str) -> str:
    """The key of a repository, the same for a registry crawl and an engine, so one worker
    takes a repository wherever it is read from."""
    return f"{registry}/{name}"
