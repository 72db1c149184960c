"""A fork never lands inside an import of threadguard's or threadpoolctl.

After fork only the forking thread exists. A module another thread was
importing at that moment stays locked in the child, by a thread that does
not exist there: the child's first budget, which imports what it needs,
would wait forever. threadguard's modules are imported on first use (often
from a worker thread's first budget), and threadpoolctl at the first look at
the loaded libraries.

So those lazy imports hold ``lock``, and the fork hook takes it too and
holds it until the fork is done: it waits for an import under way, and no
thread begins one between the hook and the fork (other libraries' hooks run
after this one). Imports made without the lock (a plain ``import
threadguard.guard`` in a thread) are waited for by watching CPython's
module locks. All waits are bounded; a fork from a signal handler never
waits for its own thread's import (the lock is reentrant, and a module lock
the forking thread owns is not waited for).
"""

from __future__ import annotations

import _thread
import importlib
import os
import threading
import time

_PACKAGE = __name__.rpartition(".")[0]
_PREFIX = _PACKAGE + "."
_OTHERS = ("threadpoolctl",)
_FORK_WAIT = 10.0  # seconds a fork waits at most for other threads' imports
_POLL = 0.001

lock = threading.RLock()  # held by threadguard's lazy imports, and across a fork


def _watched(name: str) -> bool:
    return name == _PACKAGE or name.startswith(_PREFIX) or name in _OTHERS


def others_importing() -> bool:
    """Whether another thread is importing one of the watched modules now
    (False where CPython's import locks cannot be read)."""
    bootstrap = getattr(importlib, "_bootstrap", None)
    # CPython's import locks of the modules being imported, held from before
    # the module is in sys.modules (while its file is found) until it is done.
    locks = getattr(bootstrap, "_module_locks", None)
    if not isinstance(locks, dict):
        return False
    me = _thread.get_ident()
    try:
        for name, ref in list(locks.items()):
            if _watched(name):
                owner = getattr(ref(), "owner", None)
                if owner is not None and owner != me:
                    return True
    except Exception:
        return False
    return False


def _before_fork() -> None:
    deadline = time.monotonic() + _FORK_WAIT
    while True:
        while others_importing() and time.monotonic() < deadline:
            time.sleep(_POLL)  # lets that thread run on
        if not lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            return  # held too long by another thread: fork without it
        if not others_importing() or time.monotonic() >= deadline:
            return  # held until the fork is done
        lock.release()  # an import begun meanwhile without the lock: wait again


def _after_fork_in_parent() -> None:
    if lock._is_owned():
        lock.release()


def _after_fork_in_child() -> None:
    if lock._is_owned():
        lock.release()
    else:  # not taken in time: its holder does not exist here
        lock._at_fork_reinit()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                        after_in_child=_after_fork_in_child)
