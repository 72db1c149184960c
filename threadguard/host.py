"""This process in the host ledger: joining, leaving, following the grants.

A process takes part while at least one host-scoped budget section is
inside (any thread); it asks for the most any of them asked. Whoever
changes the membership (a join, a leave, a dead participant dropped)
recomputes every grant and every pinned participant's CPUs under the file's
lock and writes them to the file (``threadguard.shares`` holds the
arithmetic); every participant's watcher thread sees the generation move
and makes its process follow its grant. The watcher also drops dead
participants, so a SIGKILLed one is reclaimed within a second.

The guard (``threadguard.guard``) registers ``on_change``; this module
never imports it.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
from typing import Callable, Sequence

from . import shares as _shares
from .host_file import LedgerError, LedgerFile, Slot, cgroup_key, ledger_path, process_start

POLL = 0.2  # seconds between looks at the generation
REAP = 0.4  # seconds between liveness checks of the others
LINGER = 2.0  # seconds the watcher waits for a new join before it ends
WATCHER_NAME = "threadguard-host"


class _Member:
    """This process's participation."""

    def __init__(self):
        self.file: LedgerFile | None = None
        self.index: int | None = None
        self.asks: dict[int, int] = {}  # asked -> sections holding it
        self.ask = 0  # what the file holds as this process's ask: max(asks)
        self.pins = 0  # sections holding a pinned share
        self.grant: int | None = None
        self.cpus: tuple[int, ...] | None = None
        self.seen = 0  # the generation last followed
        self.stop: threading.Event | None = None
        self.machine: tuple = ()  # (capacity, host CPUs, cgroup, nodes' CPUs)
        self.start: float | None = None
        self.callers = 1  # threads of this process that call its pools at once (Dask tasks)
        self.stale: int | None = None  # a slot left while the file could not be locked


_member = _Member()
_lock = threading.RLock()  # the membership; never held while the guard's lock is taken
on_change: Callable[[], None] | None = None  # the guard re-syncs the process


def grant() -> int | None:
    """What this process's pools may use (its grant, shared by its concurrent
    callers), None when it takes no part."""
    m = _member
    if m.index is None or m.grant is None:
        return None
    return m.grant if m.callers == 1 else max(1, m.grant // m.callers)


def pinned_cpus() -> tuple[int, ...] | None:
    """The CPUs the ledger gave this process's pinned sections, if any."""
    m = _member
    return m.cpus if m.index is not None and m.pins else None


def machine_facts(topology) -> tuple:
    """What the ledger needs of this process's machine."""
    allowed = set(topology.allowed_cpus)
    firsts, rest = [], []
    nodes = []
    for node in topology.numa_nodes or ():
        cpus = [c for c in node.cpus if c in allowed]
        if not cpus:
            continue
        first = sorted(core.cpus[0] for core in topology.cores if core.cpus and core.cpus[0] in cpus)
        nodes.append(tuple(first + [c for c in cpus if c not in first]))
    if not nodes:
        firsts = sorted(allowed)
        nodes.append(tuple(firsts + rest))
    host_cpus = len(topology.online_cpus) or len(allowed)
    return (topology.effective_cpus, host_cpus,
            cgroup_key(topology.cgroup_path, topology.allowed_cpus), tuple(nodes))


def hold(asked: int, pin: bool, topology: Callable, *, follow: bool = True,
         callers: int = 1) -> int:
    """A host-scoped section enters: join (or raise this process's ask).
    ``topology()`` gives this process's topology, read only to join.
    ``follow=False``: no watcher (``run`` holds a share for a command it
    execs: the slot stays the command's, same pid, same start time).
    ``callers``: threads that call the process's pools at once, each
    getting an equal part of the grant (``asked`` counts them all).
    Returns ``grant()``. Raises LedgerError when the ledger cannot be used."""
    with _lock:
        m = _member
        if callers > m.callers:
            m.callers = callers
        if m.index is not None and asked <= m.ask and (m.pins or not pin):
            m.asks[asked] = m.asks.get(asked, 0) + 1  # no change in membership
            m.pins += pin
            return grant()
        m.asks[asked] = m.asks.get(asked, 0) + 1
        m.pins += bool(pin)
        try:
            if m.index is None:
                _join(topology(), follow)
            else:
                _update()
        except BaseException:
            _drop_hold(asked, pin)
            if not m.asks and m.index is not None:  # joined, then interrupted: leave again
                try:
                    _leave()
                except Exception:
                    pass
            raise
        return grant()


def path() -> str | None:
    """The ledger file this process uses (None before its first join)."""
    return _member.file.path if _member.file is not None else None


def release(asked: int, pin: bool) -> None:
    """A host-scoped section leaves: leave the ledger with the last one."""
    with _lock:
        m = _member
        if not _drop_hold(asked, pin):
            return
        if m.index is None:
            return
        try:
            if not m.asks:
                _leave()
            elif (asked == m.ask and asked not in m.asks) or (pin and not m.pins):
                _update()
        except (OSError, ValueError):  # the ledger went away: nothing to give back
            pass


def _drop_hold(asked: int, pin: bool) -> bool:
    m = _member
    count = m.asks.get(asked)
    if not count:
        return False
    if count == 1:
        del m.asks[asked]
    else:
        m.asks[asked] = count - 1
    m.pins -= bool(pin) if m.pins else 0
    return True


def _current_slot_ask() -> int:
    ask = _member.ask = max(_member.asks, default=0)
    return ask


def _join(topology, follow: bool = True) -> None:
    m = _member
    if m.file is None:
        m.file = LedgerFile()
        atexit.register(_leave_at_exit)
    m.machine = machine_facts(topology)
    if m.start is None:
        m.start = process_start(os.getpid()) or -1.0
    capacity, host_cpus, cgroup, _ = m.machine
    with m.file as f:
        _clear_stale(f)
        f.reap()
        slots = f.slots()
        # A slot of this very process (pid and start time): the one run
        # --scope host took before it became this program by exec.
        held = next((s.index for s in slots if s.pid == os.getpid() and s.start == m.start), None)
        index = held if held is not None else f.free_index({s.index for s in slots})
        m.index = index  # first: an interrupted join is left again (hold)
        f.write(Slot(index, os.getpid(), m.pins > 0, m.start, time.time(),
                     _current_slot_ask(), capacity, host_cpus, 0, cgroup, ()))
        _rebalance(f, m.machine[3])
        _follow(f)
    if follow:
        _start_watcher()


def _update() -> None:
    m = _member
    with m.file as f:
        mine = next((s for s in f.slots() if s.index == m.index and s.pid == os.getpid()), None)
        if mine is None:  # dropped by someone (a rebuilt file): join again
            m.index = None
            _join_locked(f)
        else:
            f.write(mine._replace(asked=_current_slot_ask(), pinned=m.pins > 0,
                                  cpus=mine.cpus if m.pins else ()))
        _rebalance(f, m.machine[3])
        _follow(f)


def _join_locked(f: LedgerFile) -> None:
    m = _member
    capacity, host_cpus, cgroup, _ = m.machine
    index = f.free_index({s.index for s in f.slots()})
    f.write(Slot(index, os.getpid(), m.pins > 0, m.start, time.time(), _current_slot_ask(),
                 capacity, host_cpus, 0, cgroup, ()))
    m.index = index


def _leave() -> None:
    m = _member
    index, m.index = m.index, None
    m.grant = m.cpus = None
    m.ask, m.callers = 0, 1
    if index is None or m.file is None:
        return
    m.stale = index  # until the file says so: the watcher retries
    with m.file as f:
        _clear_stale(f)
        _rebalance(f, m.machine[3])


def _clear_stale(f: LedgerFile) -> None:
    """Clear the slot this process left while the file could not be locked
    (the lock is held)."""
    m = _member
    if m.stale is not None:
        mine = next((s for s in f.slots() if s.index == m.stale), None)
        if mine is not None and mine.pid == os.getpid():
            f.clear(m.stale)
        m.stale = None


def _leave_at_exit() -> None:
    with _lock:
        if _member.index is not None:
            _member.asks.clear()
            try:
                _leave()
            except Exception:  # at exit: the others reap the slot
                pass


def _rebalance(f: LedgerFile, nodes: Sequence[Sequence[int]]) -> None:
    """Every participant's grant and pinned CPUs, written (the lock is held)."""
    slots = f.slots()
    if slots:
        grants = _shares.host_grants(host_capacity(slots), [s.asked for s in slots])
        pinned = [i for i, s in enumerate(slots) if s.pinned]
        cpus = dict(zip(pinned, _shares.host_cpus(nodes, [grants[i] for i in pinned])))
        for i, s in enumerate(slots):
            new = s._replace(grant=grants[i], cpus=cpus.get(i, ()))
            if new != s:
                f.write(new)
    f.bump()


def host_capacity(slots: Sequence[Slot]) -> int:
    """The CPUs the participants share: their cgroup's effective CPUs when
    they all run in one, else the host's."""
    if len({s.cgroup for s in slots}) == 1:
        return max(1, min(s.capacity for s in slots))
    return max(1, max(s.host_cpus for s in slots))


def _follow(f: LedgerFile) -> bool:
    """Read this process's grant and CPUs; True when they changed."""
    m = _member
    m.seen = f.generation()
    mine = next((s for s in f.slots() if s.index == m.index and s.pid == os.getpid()), None)
    if mine is None:
        return False
    grant, cpus = min(mine.grant or 1, mine.asked or 1), (mine.cpus or None)
    changed = (grant, cpus) != (m.grant, m.cpus)
    m.grant, m.cpus = grant, cpus
    return changed


def _start_watcher() -> None:
    m = _member
    if m.stop is not None:
        return
    stop = m.stop = threading.Event()
    thread = threading.Thread(target=_watch, args=(stop,), name=WATCHER_NAME, daemon=True)
    thread.start()


def _watch(stop: threading.Event) -> None:
    """While this process takes part: follow the generation, drop the dead."""
    last_reap = 0.0
    idle_since = None
    while not stop.wait(POLL):
        try:
            changed = False
            with _lock:
                m = _member
                if m.stop is not stop:  # another watcher took over (fork)
                    return
                if m.stale is not None and m.file is not None:  # a leave to finish
                    with m.file as f:
                        _clear_stale(f)
                        _rebalance(f, m.machine[3])
                if m.index is None or m.file is None:  # left: a join may come back soon
                    idle_since = idle_since or time.monotonic()
                    if time.monotonic() - idle_since > LINGER:
                        m.stop = None
                        return
                    continue
                idle_since = None
                f = m.file
                now = time.monotonic()
                if now - last_reap >= REAP:
                    last_reap = now
                    with f:
                        mine = any(s.index == m.index and s.pid == os.getpid() for s in f.slots())
                        if not mine:  # dropped by someone else (a rebuilt file)
                            _join_locked(f)
                            _rebalance(f, m.machine[3])
                        elif f.reap():
                            _rebalance(f, m.machine[3])
                if f.generation() != m.seen:
                    with f:
                        changed = _follow(f)
            if changed and on_change is not None:
                on_change()
        except Exception:  # the watcher never dies of a bad read; it tries again
            continue


def _after_fork_in_child() -> None:
    """The child is not the participant its parent is: it keeps the grant
    it had at fork for the sections it inherited, and joins on its own at
    its next host-scoped entry."""
    global _lock
    _lock = threading.RLock()
    m = _member
    if m.file is not None:
        try:
            m.file.close()  # the parent's open file (and its lock) stay the parent's
        except OSError:
            pass
    m.file, m.index, m.stop, m.start, m.seen, m.ask = None, None, None, None, 0, 0
    m.stale = None
    if m.asks:
        m.asks.clear()
        m.pins = 0


os.register_at_fork(after_in_child=_after_fork_in_child)


def participants(path: str | None = None) -> list[Slot]:
    """The live participants of the ledger at ``path`` (default: this
    user's), read without joining. A missing ledger has none."""
    from .host_file import read_slots
    return [s for s in read_slots(path) if _alive(s)]


def _alive(slot: Slot) -> bool:
    now = process_start(slot.pid)
    return now is not None and (slot.start == -1.0 or now == slot.start)


__all__ = ["LedgerError", "grant", "hold", "release", "participants", "pinned_cpus",
           "host_capacity"]


def preview(asked: int, pin: bool, topology) -> tuple[int, tuple[int, ...] | None, int]:
    """``(grant, CPUs when pinned, participants)`` this process would get if
    it joined now, read without joining (``run --dry-run``)."""
    from .host_file import read_slots
    try:
        slots = [s for s in read_slots() if _alive(s)]
    except LedgerError:
        slots = []
    capacity, host_cpus, cgroup, nodes = machine_facts(topology)
    me = Slot(-1, os.getpid(), pin, -1.0, time.time(), asked, capacity, host_cpus, 0, cgroup, ())
    slots.append(me)
    grants = _shares.host_grants(host_capacity(slots), [s.asked for s in slots])
    cpus = None
    if pin:
        pinned = [i for i, s in enumerate(slots) if s.pinned]
        cpus = _shares.host_cpus(nodes, [grants[i] for i in pinned])[-1]
    return grants[-1], cpus, len(slots)


def snapshot(path: str | None = None) -> dict:
    """The ledger as ``threadguard host`` shows it: the live participants
    (pid, command, asked, granted, CPUs if pinned, since), the CPUs they
    share and what is granted in all."""
    import datetime
    import shlex

    import psutil
    path = path or ledger_path()
    slots = participants(path)
    rows = []
    for s in slots:
        try:
            command = shlex.join(psutil.Process(s.pid).cmdline()) or "?"
        except (psutil.Error, OSError):
            command = "?"
        rows.append({"pid": s.pid, "command": command, "asked": s.asked, "granted": s.grant,
                     "pinned": s.pinned, "cpus": list(s.cpus) if s.pinned else None,
                     "since": datetime.datetime.fromtimestamp(s.joined).isoformat(
                         timespec="seconds")})
    capacity = host_capacity(slots) if slots else None
    granted = sum(s.grant for s in slots)
    return {"ledger": path, "capacity": capacity, "granted": granted,
            "oversubscribed": bool(slots) and granted > capacity, "participants": rows}
