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


# -- the host ledger: independent processes share the host ----------------------

def host_grants(capacity: int, asks: Sequence[int]) -> list[int]:
    """Each participant's share of ``capacity`` CPUs, in proportion to what it
    asked (``asks``, in the ledger's order). Everyone gets what it asked while
    the asks fit; past that, one thread each first (its own), then the rest
    of the CPUs in proportion to the rest of the asks, largest remainders
    first, so the grants add up to exactly ``capacity`` (or to one each, when
    there are more participants than CPUs)."""
    asks = [max(1, a) for a in asks]
    if sum(asks) <= capacity:
        return asks
    grants = [1] * len(asks)
    spare = capacity - len(asks)
    extra = [a - 1 for a in asks]
    total = sum(extra)
    if spare <= 0 or total <= 0:
        return grants
    exact = [spare * e / total for e in extra]
    for i, x in enumerate(exact):
        grants[i] += int(x)
    left = spare - sum(int(x) for x in exact)
    order = sorted(range(len(asks)), key=lambda i: (-(exact[i] - int(exact[i])), i))
    for i in order[:left]:
        grants[i] += 1
    return grants


def host_cpus(nodes: Sequence[Sequence[int]], sizes: Sequence[int],
              allowed: Sequence[Sequence[int]] | None = None) -> list[tuple[int, ...]]:
    """Disjoint CPU sets for pinned participants, ``sizes[i]`` CPUs each, in
    the ledger's order, each inside ``allowed[i]`` (the CPUs it may use; all
    when empty or not given). ``nodes`` lists each NUMA node's CPUs in the
    order they are best taken (one per core first). A participant takes its
    CPUs from the node with the fewest free CPUs it may use that still holds
    them all (it stays inside one node, and large nodes stay whole for later
    ones); else the free CPUs of the nodes with most free first; when its
    CPUs run out, the least shared of them again."""
    free = [list(cpus) for cpus in nodes]
    use: dict[int, int] = {c: 0 for cpus in nodes for c in cpus}
    out = []
    for k, size in enumerate(sizes):
        size = max(1, size)
        mine = set(allowed[k]) if allowed and allowed[k] else set(use)
        room_in = [[c for c in f if c in mine] for f in free]
        fitting = [i for i, f in enumerate(room_in) if len(f) >= size]
        if fitting:
            best = min(fitting, key=lambda i: (len(room_in[i]), i))
            taken = room_in[best][:size]
        else:
            taken = []
            for i in sorted(range(len(room_in)), key=lambda i: (-len(room_in[i]), i)):
                taken += room_in[i][:size - len(taken)]
            if len(taken) < size:  # more CPUs asked than it may use free: share the least used
                order = sorted((c for c in use if c in mine), key=lambda c: (use[c], c))
                taken += [c for c in order if c not in taken][:size - len(taken)]
        chosen = set(taken)
        free = [[c for c in f if c not in chosen] for f in free]
        for c in taken:
            use[c] = use.get(c, 0) + 1
        out.append(tuple(sorted(taken)))
    return out
