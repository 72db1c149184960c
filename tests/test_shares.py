"""The ledger's arithmetic, as tables: how sections share the CPUs."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from threadguard.shares import Top, entry_grants, nested_want, pinned_cpus, process_value


@pytest.mark.parametrize("tops, expected", [
    ([], None),  # nobody inside: originals go back
    ([Top(4, 8, 4)], 4),  # one thread: what it asked
    ([Top(16, 8, 8)], 8),  # never above its CPUs
    ([Top(8, 8, 8), Top(8, 8, 4)], 4),  # two threads on 8 CPUs: 4 each
    ([Top(8, 8, 8), Top(2, 8, 2)], 2),  # ... but never above what one asked
    ([Top(1, 2, 1), Top(1, 2, 1), Top(1, 2, 1)], 1),  # more threads than CPUs: at least 1
    ([Top(16, 16, 16), Top(4, 8, 4)], 4),  # an oversubscription allowance counts
])
def test_process_value(tops, expected):
    assert process_value(tops) == expected


@pytest.mark.parametrize("want, capacity, others, expected", [
    (8, 8, [], (8, 8)),  # alone: everything asked
    (8, 8, [Top(8, 8, 8)], (4, 1)),  # the other's OpenMP limit is 8: only itself is left
    (8, 8, [Top(8, 8, 4)], (4, 4)),
    (2, 8, [Top(8, 8, 3)], (2, 2)),
    (4, 2, [Top(2, 2, 2), Top(2, 2, 2)], (1, 1)),  # never 0
])
def test_entry_grants(want, capacity, others, expected):
    assert entry_grants(want, capacity, others) == expected


def test_nested_never_exceeds_the_enclosing():
    assert nested_want(8, Top(2, 8, 2)) == 2
    assert nested_want(1, Top(2, 8, 2)) == 1
    assert nested_want(8, None) == 8


def test_pins_are_the_union():
    assert pinned_cpus([]) is None
    assert pinned_cpus([frozenset({0}), frozenset({2, 3})]) == {0, 2, 3}


tops = st.lists(st.builds(Top, st.integers(1, 64), st.integers(1, 64), st.integers(1, 64)),
                max_size=8)


@given(tops)
def test_shares_are_at_least_one_and_never_above_a_request(t):
    value = process_value(t)
    if t:
        assert 1 <= value <= min(x.want for x in t)
        assert value <= max(x.capacity for x in t)


@given(st.integers(1, 64), st.integers(1, 64), tops)
def test_an_entering_thread_takes_only_what_is_left(want, capacity, others):
    grant, thread_grant = entry_grants(want, capacity, others)
    assert 1 <= thread_grant <= grant <= want
    left = capacity - sum(o.thread_grant for o in others)
    assert thread_grant <= max(1, left)
