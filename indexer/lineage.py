"""ChainIDs of the OCI image spec: the identity of a stack of layers, whatever their compression.

    C1 = D1;  Ci = "sha256:" + sha256(C(i-1) + " " + Di)

where D1..Dn are the config's `rootfs.diff_ids` (empty layers are not among them). Image A is a
base of image B when A's top ChainID is B's Ci for some i below B's layer count: A's layers are
then exactly B's first i layers, however either was stored or shipped.
"""

from __future__ import annotations

import hashlib
import re

# Only sha256 diff_ids are defined to chain; anything else in a config means its lineage is unknown.
_DIFF_ID = re.compile(r"sha256:[0-9a-f]{64}")

# Images of one store share their lower layers, so most images extend a prefix that an earlier
# image already chained: chains are remembered by the tuple of their diff_ids, and an image costs
# one dict lookup and one sha256. Bounded by the layers held (about 10 MiB), whatever the configs
# say; shared prefixes come back at once after a clear.
_PREFIXES: dict[tuple[str, ...], tuple[str, ...]] = {}
_MAX_CACHED_LAYERS = 65_536
_cached_layers = 0


def chain_ids(diff_ids: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """C1..Cn for `diff_ids`; () when there are none or one is not a sha256 digest."""
    global _cached_layers
    diff_ids = tuple(diff_ids)
    if len(diff_ids) <= 1:
        return diff_ids if not diff_ids or _DIFF_ID.fullmatch(diff_ids[0]) else ()
    head = diff_ids[:-1]
    below = _PREFIXES.get(head)
    if below is None:
        below = _chain(head)
        if _cached_layers + len(head) > _MAX_CACHED_LAYERS:
            _PREFIXES.clear()
            _cached_layers = 0
        if len(head) <= _MAX_CACHED_LAYERS:
            _PREFIXES[head] = below
            _cached_layers += len(head)
    last = diff_ids[-1]
    if not below or not _DIFF_ID.fullmatch(last):
        return ()
    return (*below, _step(below[-1], last))


def _step(chain: str, diff_id: str) -> str:
    return "sha256:" + hashlib.sha256(f"{chain} {diff_id}".encode("ascii")).hexdigest()


def _chain(diff_ids: tuple[str, ...]) -> tuple[str, ...]:
    if not all(_DIFF_ID.fullmatch(diff_id) for diff_id in diff_ids):
        return ()
    out = [diff_ids[0]]
    for diff_id in diff_ids[1:]:
        out.append(_step(out[-1], diff_id))
    return tuple(out)


def chain_id(diff_ids: tuple[str, ...] | list[str]) -> str:
    """The top ChainID (Cn), or "" when `chain_ids` gives none."""
    chains = chain_ids(diff_ids)
    return chains[-1] if chains else ""
