"""In a forked child, imports that threads which do not exist there had
under way are made importable again, where a budget may need them.

After fork only the forking thread exists. A module another thread was
importing at that moment stays locked in the child by a thread that does
not exist there, and any import of it there waits forever: the child's
first budget among them. threadguard's modules are imported on first use
(often from a worker thread's first budget), threadpoolctl at the first
look at the loaded libraries, and with them standard modules (tempfile,
ctypes, ...) that any other thread of the program may be importing too.

Waiting in the parent instead cannot be made safe: a fork hook that waits
for, or holds, a lock runs beside other libraries' hooks and CPython's own
import lock, and can deadlock with them. So the parent never waits; the
child repairs. Imports abandoned in the child are dropped: for modules of
threadguard, threadpoolctl and the standard library, and for every import
a thread had under way around or inside one of threadguard's. A dropped
import's module lock is forgotten, and a module of Python code that was
executing is taken out of ``sys.modules``, so the next import runs it
afresh. Extension modules half-initialised are left as they are: running
their initialisation twice is not safe. Other imports of the program's
own are left as CPython leaves them.

A fork from a signal handler while its own thread waits for such an import
wakes that wait (the import is then done by this thread), and never
touches an import of the forking thread's own.
"""

from __future__ import annotations

import _thread
import importlib
import importlib.machinery
import os
import sys

_PACKAGE = __name__.rpartition(".")[0]
_PREFIX = _PACKAGE + "."
_OTHERS = ("threadpoolctl",)


_STDLIB = getattr(sys, "stdlib_module_names", frozenset())


def _watched(name: str) -> bool:
    return name == _PACKAGE or name.startswith(_PREFIX) or name in _OTHERS


def _needed(name: str) -> bool:
    """Whether a budget may import the module: ours, threadpoolctl, and the
    standard library's that they use."""
    return _watched(name) or name.partition(".")[0] in _STDLIB


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
    process blocked on the lock; False when its internal lock is taken (by
    whom cannot be told) and nothing was changed."""
    inner = lock.lock
    if not inner.acquire(False):
        return False
    try:
        lock.owner = None
        lock.count = [] if isinstance(lock.count, list) else 0
        if lock.waiters:
            if isinstance(lock.waiters, list):
                lock.waiters.pop()
            else:
                lock.waiters -= 1
            lock.wakeup.release()
    finally:
        inner.release()
    return True


def _mid_execution(module) -> bool:
    return bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def _native(module) -> bool:
    """Whether the module is an extension (or built in): its initialisation
    cannot be run twice safely."""
    origin = getattr(getattr(module, "__spec__", None), "origin", None) or ""
    return origin == "built-in" or origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def _repair_in_child() -> None:
    bootstrap = getattr(importlib, "_bootstrap", None)
    locks = getattr(bootstrap, "_module_locks", None)
    if not isinstance(locks, dict):
        return
    me = _thread.get_ident()
    held = []  # (name, lock) of locks held by threads that do not exist here
    for name, ref in list(locks.items()):
        lock = ref()
        owner = getattr(lock, "owner", None)
        if owner is not None and owner != me:
            held.append((name, lock))
    if not held:
        return
    ours = {lock.owner for name, lock in held if _watched(name)}  # threads in an import of ours
    waited = _waited_for_by(bootstrap, me)
    for name, lock in held:
        if lock.owner not in ours and not _needed(name):
            continue  # another import of the program's own: as CPython leaves it
        module = sys.modules.get(name)
        if module is not None and _mid_execution(module):
            if _native(module):
                continue  # half-initialised native code: left as it is
            del sys.modules[name]
        if any(w is lock for w in waited):
            _release_for_dead_owner(lock)
        elif locks.get(name) is not None and locks[name]() is lock:
            del locks[name]  # the next import makes a new one


def _after_fork_in_child() -> None:
    try:
        _repair_in_child()
    except Exception:  # an interpreter whose import internals differ: as without it
        pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
