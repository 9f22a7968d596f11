"""The compact set of hashes that a run keeps its own keys in (delta.OwnRows)."""

from __future__ import annotations

import sys

from hypothesis import example, given, settings
from hypothesis import strategies as st

from indexer.store import hashset
from indexer.store.hashset import HashSet

_HASHES = st.integers(min_value=-(2**63), max_value=2**63 - 1)


@settings(max_examples=300, deadline=None)
@given(
    batches=st.lists(st.lists(_HASHES | st.integers(-3, 3), max_size=12), max_size=12),
    probes=st.lists(_HASHES),
    spill_at=st.integers(1, 40),
)
# Two values of one bucket whose bytes, one after the other, hold 0's eight zero bytes across them.
@example(batches=[[1 << 16, 1 << 24]], probes=[0], spill_at=1)
def test_holds_what_a_set_holds(batches, probes, spill_at):
    saved = hashset.SPILL_AT
    hashset.SPILL_AT = spill_at  # small, so that most examples spill part way
    try:
        compact, plain = HashSet(), set()
        for batch in batches:
            compact.update(iter(batch))
            plain.update(batch)
            for value in [*plain, *probes, *(v ^ 1 << 16 for v in plain), *(v ^ 1 for v in plain)]:
                assert (value in compact) == (value in plain)
            assert len(plain) <= len(compact) <= sum(map(len, batches))
    finally:
        hashset.SPILL_AT = saved


def test_spills_into_byte_strings_past_the_limit(monkeypatch):
    monkeypatch.setattr(hashset, "SPILL_AT", 4)
    values = HashSet([1, 2, 3])
    assert values._buckets is None
    values.update([3, 1 << 16 | 1])  # four distinct values: spilled, the set emptied
    assert values._buckets is not None and not values._set
    assert values._buckets[1] == (1).to_bytes(8, "little") + (1 << 16 | 1).to_bytes(8, "little")
    values.update([-(2**63), 2**63 - 1])
    assert all(v in values for v in (1, 2, 3, 1 << 16 | 1, -(2**63), 2**63 - 1))
    assert 4 not in values and (2 << 16 | 1) not in values and len(values) == 6


def test_large_sets_cost_a_fraction_of_a_python_set():
    keys = [hash(("registry", f"name{i}", "tag")) for i in range(300_000)]
    compact = HashSet(keys)
    plain = set(keys)
    held = sum(map(sys.getsizeof, compact._buckets)) + sys.getsizeof(compact._buckets)
    # A Python set's table and its ints against everything the spilled set holds.
    assert held * 2 < sys.getsizeof(plain) + sum(map(sys.getsizeof, plain))
    assert all(k in compact for k in keys[::97]) and len(compact) == len(plain)


@settings(max_examples=200, deadline=None)
@given(batches=st.lists(st.lists(_HASHES | st.integers(-3, 3), max_size=12), max_size=12), spill_at=st.integers(1, 40))
def test_add_new_counts_the_values_not_held_and_values_gives_them_back(batches, spill_at):
    saved = hashset.SPILL_AT
    hashset.SPILL_AT = spill_at
    try:
        compact, plain = HashSet(), set()
        for batch in batches:
            assert compact.add_new(iter(batch)) == len(set(batch) - plain)
            plain.update(batch)
            assert set(compact.values()) == plain
            assert all(value in compact for value in plain)
    finally:
        hashset.SPILL_AT = saved
