"""In a forked child, imports that threads which do not exist there had
under way are made importable again, where a budget may need them.

After fork only the forking thread exists. A module another thread was
importing at that moment stays locked in the child by a thread that does
not exist there, and any import of it there waits forever: the child's
first budget among them. threadguard's modules are imported on first use
(often from a worker thread's first budget), threadpoolctl at the first
look at the loaded libraries, and with them standard modules (tempfile,
dataclasses, ...) that any other thread of the program may be importing
too.

Waiting in the parent instead cannot be made safe: a fork hook that waits
for, or holds, a lock runs beside other libraries' hooks and CPython's own
import lock, and can deadlock with them. So the parent never waits; the
child repairs the abandoned imports of threadguard's modules, threadpoolctl
and the standard library. Each one's module lock is forgotten, and a
module that was executing is taken out of ``sys.modules``, so the next
import runs it afresh (as after a failed import). Other imports of the
program's own are left as CPython leaves them.

A fork from a signal handler never touches an import of its own thread's;
if that thread waited for one of those abandoned imports, the wait is woken
and a module that was executing runs again in place, here in the hook
(with its packages that were executing too). Not covered: a signal that
came while that thread was inside the module lock's own bookkeeping.
"""

from __future__ import annotations

import _thread
import importlib
import os
import sys

_PACKAGE = __name__.rpartition(".")[0]
_STDLIB = getattr(sys, "stdlib_module_names", frozenset())


def _needed(name: str) -> bool:
    """Whether a budget may import the module: ours, threadpoolctl, and the
    standard library's that they use."""
    top = name.partition(".")[0]
    return top == _PACKAGE or top == "threadpoolctl" or top in _STDLIB


def _waited_for_by(bootstrap, me: int) -> list:
    """The module locks the forking thread waits for (a signal handler
    forked during that wait)."""
    blocking = getattr(bootstrap, "_blocking_on", None)
    if blocking is None:
        return []
    waits = blocking.get(me)  # a lock before 3.12, a list of locks since
    if waits is None:
        return []
    return list(waits) if isinstance(waits, list) else [waits]


def _release_for_dead_owner(lock) -> bool:
    """What the dead owner's release would have done, for a thread of this
    process blocked on the lock; False when its internal lock is taken
    (the signal came inside it: where the thread stopped cannot be told)
    and nothing was changed."""
    inner = lock.lock
    owned = getattr(inner, "_is_owned", None)  # an RLock since 3.12
    if (owned is not None and owned()) or not inner.acquire(False):
        return False
    try:
        lock.owner = None
        lock.count = [] if isinstance(lock.count, list) else 0
        if lock.waiters:
            if isinstance(lock.waiters, list):
                lock.waiters.pop()
            else:
                lock.waiters -= 1
        if lock.wakeup.locked():  # a waiter blocks on it
            lock.wakeup.release()
    finally:
        inner.release()
    return True


def _mid_execution(module) -> bool:
    return bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def _run_again_in_place(module, bootstrap, me: int) -> None:
    """Run a module's code again into the same object: the forking thread
    waits for it in CPython's fast path, which hands out the object it saw
    before waiting, not what ``sys.modules`` holds after."""
    blocking = bootstrap._blocking_on
    waiting = blocking.get(me)  # before 3.12 (a dict), the reload's own wait drops this entry
    try:
        importlib.reload(module)
    except Exception:  # its error is for the woken import to meet
        pass
    finally:
        if isinstance(blocking, dict) and waiting is not None and blocking.get(me) is None:
            blocking[me] = waiting


def _repair_in_child() -> None:
    bootstrap = getattr(importlib, "_bootstrap", None)
    locks = getattr(bootstrap, "_module_locks", None)
    if not isinstance(locks, dict):
        return
    me = _thread.get_ident()
    # Locks of modules a budget may need, held by threads that do not exist here.
    held = []
    for name, ref in list(locks.items()):
        lock = ref()
        owner = getattr(lock, "owner", None)
        if owner is not None and owner != me and _needed(name):
            held.append((name, lock))
    if not held:
        return
    waits = _waited_for_by(bootstrap, me)
    waited, abandoned = [], []
    for name, lock in held:
        if any(w is lock for w in waits):
            waited.append((name, lock))
        else:
            abandoned.append(name)
    # Modules this thread waited for, that were executing: they run again in
    # place, and so do their packages that were executing too (after them,
    # deepest first): the in-place run needs its parent.
    again = [n for n, lock in waited
             if _release_for_dead_owner(lock) and _mid_execution(sys.modules.get(n))]
    parents = {n.rpartition(".")[0] for n in again}
    for name in abandoned:
        if _mid_execution(sys.modules.get(name)):
            if any(p == name or p.startswith(name + ".") for p in parents):
                again.append(name)
            else:
                del sys.modules[name]  # the next import runs it afresh
        locks.pop(name, None)  # the next import makes a new lock
    # After the other repairs: their code may import those.
    for name in sorted(again, key=lambda n: -n.count(".")):
        module = sys.modules.get(name)
        if module is not None:
            _run_again_in_place(module, bootstrap, me)


def acquire_following(current):
    """Acquire the lock ``current()`` returns, waiting in steps: a fork from
    a signal handler during the wait replaces the lock in the child, where
    its holder does not exist, and the wait goes on with the new one."""
    while True:
        lock = current()
        if lock.acquire(timeout=0.05):
            return lock


def _after_fork_in_child() -> None:
    try:
        _repair_in_child()
    except Exception:  # an interpreter whose import internals differ: as without it
        pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
