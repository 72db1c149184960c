"""Before a fork, let imports of threadguard's modules that other threads
have begun finish.

After fork only the forking thread exists. A module another thread was
importing at that moment stays locked in the child, by a thread that does
not exist there: the child's first budget, which imports what it needs,
would wait forever. threadguard's modules are imported on first use (often
from a worker thread), so the hook waits for those imports in the parent
instead; it runs before the interpreter takes its own import lock for the
fork, and costs a lookup in a small dict when nothing is being imported.

It never waits for an import of the forking thread's own (a signal handler
that forks in the middle of one) and does nothing where CPython's import
locks cannot be read.
"""

from __future__ import annotations

import _thread
import importlib
import os

_PACKAGE = __name__.rpartition(".")[0]
_PREFIX = _PACKAGE + "."


def _being_imported() -> list[str]:
    """Names of threadguard's modules that other threads are importing now."""
    bootstrap = getattr(importlib, "_bootstrap", None)
    # CPython's import locks of the modules being imported, held from before
    # the module is in sys.modules (while its file is found) until it is done.
    locks = getattr(bootstrap, "_module_locks", None)
    blocking = getattr(bootstrap, "_blocking_on", None)  # thread -> the lock(s) it waits for
    if not isinstance(locks, dict) or blocking is None:
        return []
    me = _thread.get_ident()
    try:
        if blocking.get(me):  # a signal handler, while this thread waits for an import
            return []
    except Exception:
        return []
    out = []
    for name, ref in list(locks.items()):
        if name == _PACKAGE or name.startswith(_PREFIX):
            owner = getattr(ref(), "owner", None)
            if owner is not None and owner != me:
                out.append(name)
    return out


def finish_imports() -> None:
    for name in _being_imported():
        try:
            importlib.import_module(name)  # waits for the thread importing it
        except Exception:  # its failure is that thread's to report
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=finish_imports)
