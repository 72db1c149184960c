"""This process in the host ledger: joining, leaving, following the grants.

A process takes part while at least one host-scoped budget section holds
part of the host (any thread); it asks for the most any of them asked.
Whoever changes the membership (a join, a leave, a dead participant
dropped) recomputes every grant and every pinned participant's CPUs under
the file's lock and writes them to the file (``threadguard.shares`` holds
the arithmetic); every participant's watcher thread sees the generation
move and makes its process follow its grant. The watcher also drops dead
participants, so a SIGKILLed one is reclaimed within a second, and finds
the ledger again when its file was deleted or replaced.

Each hold is a numbered token: giving one back twice is harmless, so an
exit interrupted by a signal and tried again never gives back another
section's part. What the file should say follows from the holds
(``_settle``), and is made true again by the next call or the watcher when
a write was interrupted.

The guard (``threadguard.guard``) registers ``on_change``; this module
never imports it.
"""

from __future__ import annotations

import atexit
import itertools
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
_tokens = itertools.count(1)


class _Member:
    """This process's participation."""

    def __init__(self):
        self.file: LedgerFile | None = None
        self.index: int | None = None  # our slot, while the file holds one
        self.holds: dict[int, tuple[int, bool]] = {}  # token -> (asked, pinned)
        self.ask = 0  # what the file holds as this process's ask
        self.pinned = False  # what the file holds: pinned or not
        self.grant: int | None = None
        self.cpus: tuple[int, ...] | None = None
        self.seen = 0  # the generation last followed
        self.stop: threading.Event | None = None
        self.machine: tuple = ()  # (capacity, host CPUs, cgroup, nodes' CPUs)
        self.start: float | None = None
        self.callers = 1  # threads of this process that call its pools at once (Dask tasks)
        self.follow = True  # a watcher follows the grants (not for run, which execs)
        self.busy: int | None = None  # the thread inside a file transaction


_member = _Member()
_lock = threading.RLock()  # the membership; never held while the guard's lock is taken
on_change: Callable[[], None] | None = None  # the guard re-syncs the process
forked_cpus: tuple[int, ...] | None = None  # in a forked child: the CPUs its parent held


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
    return m.cpus if m.index is not None and m.pinned else None


def path() -> str | None:
    """The ledger file this process uses (None before its first join)."""
    return _member.file.path if _member.file is not None else None


def machine_facts(topology) -> tuple:
    """What the ledger needs of this process's machine: ``(capacity, host
    CPUs, cgroup key, nodes, allowed)``. The nodes are the host's (online
    CPUs, one per core first), so whoever rebalances hands out CPUs from
    the same lists; each participant's own allowed CPUs bound what it gets."""
    online = set(topology.online_cpus) or set(topology.allowed_cpus)
    nodes = []
    for node in topology.numa_nodes or ():
        cpus = [c for c in node.cpus if c in online]
        if not cpus:
            continue
        first = sorted(core.cpus[0] for core in topology.cores if core.cpus and core.cpus[0] in cpus)
        nodes.append(tuple(first + [c for c in cpus if c not in first]))
    if not nodes:
        nodes.append(tuple(sorted(online)))
    return (topology.effective_cpus, len(online),
            cgroup_key(topology.cgroup_path, topology.allowed_cpus), tuple(nodes),
            tuple(topology.allowed_cpus))


def new_token() -> int:
    return next(_tokens)


def hold(token: int, asked: int, pin: bool, topology: Callable, *, follow: bool = True,
         callers: int = 1) -> int:
    """A host-scoped section enters with ``token``: join (or raise this
    process's ask). ``topology()`` gives this process's topology, read only
    to join. ``follow=False``: no watcher (``run`` holds a share for a
    command it execs: the slot stays the command's, same pid, same start
    time). ``callers``: threads that call the process's pools at once, each
    getting an equal part of the grant (``asked`` counts them all).
    Returns ``grant()``. Raises LedgerError when the ledger cannot be used
    (nothing is then held)."""
    with _lock:
        m = _member
        if m.busy == threading.get_ident():  # a signal handler, inside our own file work
            raise LedgerError("entered from a signal handler while this thread was inside "
                              "the host ledger")
        if callers > m.callers:
            m.callers = callers
        m.holds[token] = (asked, bool(pin))
        if m.index is not None and asked <= m.ask and (m.pinned or not pin):
            return grant()  # no change in membership
        m.busy = threading.get_ident()
        try:
            if m.index is None and not m.machine:
                m.machine = machine_facts(topology())
            m.follow = m.follow and follow
            _settle()
        except BaseException:
            m.holds.pop(token, None)
            try:
                _settle()
            except Exception:  # the watcher settles it later
                pass
            raise
        finally:
            m.busy = None
        if m.index is None:
            raise LedgerError("the host ledger could not be joined")
        return grant()


def release(token: int) -> None:
    """A host-scoped section leaves: give its hold back (once: a token given
    back again is ignored) and leave the ledger with the last one. A write
    interrupted by a signal is finished first; the signal's exception then
    goes on."""
    with _lock:
        if _member.busy == threading.get_ident():  # a signal handler inside our file work:
            _member.holds.pop(token, None)  # the hold goes now; the watcher settles the file
            return
        if _member.holds.pop(token, None) is None:
            return
        pending = None
        _member.busy = threading.get_ident()
        try:
            for _ in range(3):
                try:
                    _settle()
                    break
                except Exception:  # the ledger went away: the watcher tries again
                    break
                except BaseException as err:
                    pending = pending or err
        finally:
            _member.busy = None
        if pending is not None:
            raise pending


def _wanted() -> tuple[int, bool]:
    holds = _member.holds.values()
    return max((a for a, _ in holds), default=0), any(p for _, p in holds)


def _settle() -> None:
    """Make the file say what the holds want: joined with their ask, or not
    in it at all (``_lock`` is held)."""
    m = _member
    ask, pin = _wanted()
    if not ask:
        if m.index is not None:
            _leave()
        return
    if m.index is not None and (ask, pin) == (m.ask, m.pinned):
        return
    if m.file is None:
        m.file = LedgerFile()
        atexit.register(_leave_at_exit)
    if m.start is None:
        m.start = process_start(os.getpid()) or -1.0
    with m.file as f:
        _follow(f, _rebalance(f, _write_mine(f, f.reap(f.slots()), ask, pin)))
    if m.follow:
        _start_watcher()


def _mine(slots: Sequence[Slot]) -> Slot | None:
    """This very process's slot: its pid and its start time."""
    pid, start = os.getpid(), _member.start
    return next((s for s in slots if s.pid == pid and s.start == start), None)


def _write_mine(f: LedgerFile, slots: list[Slot], ask: int, pin: bool) -> list[Slot]:
    """This process's slot written with ``ask``, in ``slots`` (returned; the
    lock is held). A slot of this very process is taken over: the one run
    --scope host took before it became this program by exec, or ours."""
    m = _member
    capacity, host_cpus, cgroup, _, allowed = m.machine
    mine = _mine(slots)
    if mine is None:
        index = f.free_index({s.index for s in slots})
        joined, cpus, grant_then = time.time(), (), 0
    else:
        index, joined, cpus, grant_then = mine.index, mine.joined, mine.cpus, mine.grant
    m.index = index  # first: an interrupted join is settled again
    new = Slot(index, os.getpid(), pin, m.start, joined, ask, capacity, host_cpus, grant_then,
               cgroup, cpus if pin else (), allowed)
    f.write(new)
    m.ask, m.pinned = ask, pin
    return sorted([s for s in slots if s.index != index] + [new])


def _leave() -> None:
    m = _member
    if m.file is not None:
        with m.file as f:
            slots = f.slots()
            left = [s for s in slots if not (s.pid == os.getpid() and s.start == m.start)]
            used = {s.index for s in left}
            for s in slots:
                if s.index not in used:
                    f.clear(s.index, used)
            _rebalance(f, left)
    m.index = None
    m.grant = m.cpus = None
    m.ask, m.pinned, m.callers = 0, False, 1


def _leave_at_exit() -> None:
    with _lock:
        _member.holds.clear()
        if _member.index is not None:
            try:
                _leave()
            except Exception:  # at exit: the others reap the slot
                pass


def _rebalance(f: LedgerFile, slots: list[Slot]) -> list[Slot]:
    """Every participant's grant and pinned CPUs, written; ``slots`` as
    they are now (the lock is held). Returns them as written."""
    out = []
    for s, (grant_now, cpus) in zip(slots, _shares_of(slots, _member.machine[3])):
        new = s._replace(grant=grant_now, cpus=cpus)
        if new != s:
            f.write(new)
        out.append(new)
    f.bump()
    return out


def _shares_of(slots: Sequence[Slot], nodes) -> list[tuple[int, tuple[int, ...]]]:
    """Each participant's ``(grant, CPUs when pinned)``, in the ledger's order."""
    if not slots:
        return []
    grants = _shares.host_grants(host_capacity(slots), [s.asked for s in slots])
    pinned = [i for i, s in enumerate(slots) if s.pinned]
    cpus = dict(zip(pinned, _shares.host_cpus(nodes, [grants[i] for i in pinned],
                                              [slots[i].allowed for i in pinned])))
    return [(g, cpus.get(i, ())) for i, g in enumerate(grants)]


def host_capacity(slots: Sequence[Slot]) -> int:
    """The CPUs the participants share: their cgroup's effective CPUs when
    they all run in one, else the host's."""
    if len({s.cgroup for s in slots}) == 1:
        return max(1, min(s.capacity for s in slots))
    return max(1, max(s.host_cpus for s in slots))


def _follow(f: LedgerFile, slots: list[Slot] | None = None) -> bool:
    """This process's grant and CPUs, from ``slots`` (read when not given);
    True when they changed."""
    m = _member
    m.seen = f.generation()
    mine = _mine(f.slots() if slots is None else slots)
    if mine is None:
        return False
    grant_now, cpus = min(mine.grant or 1, mine.asked or 1), (mine.cpus or None)
    changed = (grant_now, cpus) != (m.grant, m.cpus)
    m.grant, m.cpus = grant_now, cpus
    return changed


def _start_watcher() -> None:
    m = _member
    if m.stop is not None:
        return
    stop = m.stop = threading.Event()
    thread = threading.Thread(target=_watch, args=(stop,), name=WATCHER_NAME, daemon=True)
    thread.start()


def _watch(stop: threading.Event) -> None:
    """While this process takes part: follow the generation, drop the dead,
    find the file again if it was deleted or replaced, finish an interrupted
    join or leave."""
    last_reap = 0.0
    idle_since = None
    while not stop.wait(POLL):
        try:
            changed = False
            with _lock:
                m = _member
                if m.stop is not stop:  # another watcher took over (fork)
                    return
                wanted = _wanted()
                if (wanted[0] > 0) != (m.index is not None) or (
                        m.index is not None and wanted != (m.ask, m.pinned)):
                    _settle()  # a write a signal interrupted
                if m.file is not None:  # a lock an interrupted exit kept: let go
                    m.file.unlock()
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
                    if not f.same_file():  # deleted or replaced: the others are there now
                        _reopen()
                        f = m.file
                        changed = True
                    with f:
                        slots = f.slots()
                        live = f.reap(slots)
                        if _mine(live) is None:  # dropped by someone else (a rebuilt file)
                            _rebalance(f, _write_mine(f, live, m.ask, m.pinned))
                        elif len(live) != len(slots):
                            _rebalance(f, live)
                if f.generation() != m.seen:
                    with f:
                        changed = _follow(f) or changed
            if changed and on_change is not None:
                on_change()
        except Exception:  # the watcher never dies of a bad read; it tries again
            continue


def _reopen() -> None:
    """The path names another file now (or none): open it (made anew) and
    take part there (``_lock`` is held)."""
    m = _member
    old, m.file = m.file, LedgerFile(m.file.path)
    try:
        old.close()
    except OSError:
        pass
    with m.file as f:
        _follow(f, _rebalance(f, _write_mine(f, f.reap(f.slots()), m.ask, m.pinned)))


def _after_fork_in_child() -> None:
    """The child is not the participant its parent is: the guard keeps the
    grant it had at fork for the sections it inherited, and it joins as
    itself at its next host-scoped entry."""
    global _lock, forked_cpus
    _lock = threading.RLock()
    m = _member
    forked_cpus = m.cpus if m.index is not None and m.pinned else None
    if m.file is not None:
        try:
            m.file.close()  # the parent's open file (and its lock) stay the parent's
        except OSError:
            pass
    m.file, m.index, m.stop, m.start, m.seen = None, None, None, None, 0
    m.holds.clear()
    m.ask, m.pinned, m.grant, m.cpus, m.callers, m.follow = 0, False, None, None, 1, True
    m.machine = ()


os.register_at_fork(after_in_child=_after_fork_in_child)


def participants(path: str | None = None) -> list[Slot]:
    """The live participants of the ledger at ``path`` (default: this
    user's), read without joining. A missing ledger has none."""
    from .host_file import _alive, read_slots
    return [s for s in read_slots(path) if _alive(s)]


def preview(asked: int, pin: bool, topology) -> tuple[int, tuple[int, ...] | None, int]:
    """``(grant, CPUs when pinned, participants)`` this process would get if
    it joined now, read without joining (``run --dry-run``)."""
    try:
        slots = participants()
    except LedgerError:
        slots = []
    capacity, host_cpus, cgroup, nodes, allowed = machine_facts(topology)
    me = Slot(-1, os.getpid(), pin, -1.0, time.time(), asked, capacity, host_cpus, 0, cgroup, (),
              allowed)
    slots.append(me)
    grant_then, cpus = _shares_of(slots, nodes)[-1]
    return grant_then, (cpus or None) if pin else None, len(slots)


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
        try:
            since = datetime.datetime.fromtimestamp(s.joined).isoformat(timespec="seconds")
        except (OverflowError, OSError, ValueError):  # parse_slots keeps sane times only
            since = "?"
        rows.append({"pid": s.pid, "command": command, "asked": s.asked, "granted": s.grant,
                     "pinned": s.pinned, "cpus": list(s.cpus) if s.pinned else None,
                     "since": since})
    capacity = host_capacity(slots) if slots else None
    granted = sum(s.grant for s in slots)
    return {"ledger": path, "capacity": capacity, "granted": granted,
            "oversubscribed": bool(slots) and granted > capacity, "participants": rows}


__all__ = ["LedgerError", "grant", "hold", "release", "participants", "pinned_cpus",
           "host_capacity", "new_token", "snapshot", "preview"]
