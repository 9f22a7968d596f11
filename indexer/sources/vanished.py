"""Tags a source no longer lists, for sources whose whole listing is their word on their tags.

A Docker engine or a podman store read whole lists every tag it holds; a tag stored from an
earlier read of it that it no longer lists was removed there (`docker rmi`, `podman untag`). Such
tags are retired (`model.TagsRetired`), as a registry re-crawl retires the tags that vanished from
a repository. Only the tags of images whose stored record is this source's are: another source's
record of an image (a registry's, an archive's more exact one) is that source's word on its tags.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from ..model import TagsRetired
from ..shard import CountedShard, Shard, in_shard, repository_key

Key = tuple[str, str, str]  # registry, name, tag

_SHOWN = 5  # tags named in the note


def holds_tags(store) -> bool:
    """Whether `store` can say which tags came from a source (a writer of the index can; without
    one, nothing is retired)."""
    return store is not None and callable(getattr(store, "source_tags", None))


def vanished_tags(
    store,
    kind: str,
    location: str,
    listed: Iterable[Key],
    shard: Shard | CountedShard | None,
    where: str,
    note: Callable[[str], None],
) -> Iterator[TagsRetired]:
    """TagsRetired for the stored tags of the images last recorded from (`kind`, `location`)
    that `listed` does not hold, in `shard`'s repositories; a note says how many."""
    listed = set(listed)
    if isinstance(shard, CountedShard):
        shard = shard.shard  # these keys are no units of the source's enumeration: not counted
    gone: dict[tuple[str, str], list[str]] = {}
    for registry, name, tag in store.source_tags(kind, location):
        if (registry, name, tag) not in listed and in_shard(shard, repository_key(registry, name)):
            gone.setdefault((registry, name), []).append(tag)
    if not gone:
        return
    retired = [(registry, name, tuple(sorted(tags))) for (registry, name), tags in sorted(gone.items())]
    for registry, name, tags in retired:
        yield TagsRetired(registry, name, tags)
    shown = [f"{registry}/{name}:{tag}" for registry, name, tags in retired for tag in tags]
    more = f", and {len(shown) - _SHOWN} more" if len(shown) > _SHOWN else ""
    count = f"{len(shown)} tags" if len(shown) > 1 else "a tag"
    note(f"{where}: removed {count} it no longer holds ({', '.join(shown[:_SHOWN])}{more})")
