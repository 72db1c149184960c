"""The ledger's arithmetic, pure: how budget sections share the CPUs.

Sections are entered by Python threads; each thread has a stack of them and
its innermost one (its *top*) is what counts. With ``k`` threads inside
sections on ``C`` CPUs each thread's share is ``C // k`` (at least 1: the
thread itself). Nested sections never exceed their enclosing one.

- Limits that are one value per process (OpenBLAS, MKL, torch...) follow
  every thread's share at once: ``process_value``.
- Limits that belong to a thread (an OpenMP runtime's nthreads-var) can be
  set only by that thread, at its entry: an entering section takes at most
  what the other threads' limits leave (and always one, itself):
  ``entry_grants``.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence


class Top(NamedTuple):
    """A thread's innermost section, as the arithmetic sees it."""

    want: int  # threads asked for (already capped by its enclosing section)
    capacity: int  # CPUs it may share (the effective CPUs, or more when allowed)
    thread_grant: int  # the limit it set on its thread's own runtimes


def nested_want(asked: int, enclosing: Top | None) -> int:
    return min(asked, enclosing.want) if enclosing is not None else asked


def entry_grants(want: int, capacity: int, others: Sequence[Top]) -> tuple[int, int]:
    """``(grant, thread_grant)`` of a section entered while ``others`` (the
    tops of the other threads) are inside."""
    threads = len(others) + 1
    grant = min(want, max(1, capacity // threads))
    left = capacity - sum(t.thread_grant for t in others)
    return grant, max(1, min(grant, left))


def process_value(tops: Sequence[Top]) -> int | None:
    """What one-per-process limits are set to while ``tops`` are inside
    (None: no section, put the original values back)."""
    if not tops:
        return None
    if len(tops) == 1:
        return min(tops[0].want, tops[0].capacity)
    capacity = max(t.capacity for t in tops)
    return min(max(1, capacity // len(tops)), min(t.want for t in tops))


def pinned_cpus(pins: Sequence[frozenset]) -> frozenset | None:
    """The CPUs every thread is restricted to while pinned sections are
    inside: the union of theirs (None: no pinned section, put affinity back)."""
    if not pins:
        return None
    return frozenset().union(*pins)
