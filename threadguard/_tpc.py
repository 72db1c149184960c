"""threadpoolctl, imported without its side effect on the environment.

Importing threadpoolctl runs ``os.environ.setdefault("KMP_DUPLICATE_LIB_OK",
"True")``, which would leave the user's process (and its children) changed
and hide duplicate OpenMP runtimes. threadguard imports it through here and
puts the variable back as it was.

Several threads may ask at once (the first budgets of a thread pool): the
module is handed out only once fully imported. ``sys.modules`` holds a
module while it is still executing, so a plain lookup there would give a
second thread a half-initialised one.
"""

from __future__ import annotations

import os
import threading

_lock = threading.Lock()
_module = None
_importer = 0  # the thread importing it now
_FORK_WAIT = 10.0  # seconds a fork waits for another thread's import


def threadpoolctl():
    global _module
    module = _module
    if module is not None:
        return module
    global _importer
    with _lock:
        if _module is None:
            _importer = threading.get_ident()
            try:
                before = os.environ.get("KMP_DUPLICATE_LIB_OK")
                import threadpoolctl as module  # waits for another thread's import to finish
                if before is None:
                    os.environ.pop("KMP_DUPLICATE_LIB_OK", None)
                else:
                    os.environ["KMP_DUPLICATE_LIB_OK"] = before
                _module = module
            finally:
                _importer = 0
        return _module


def _before_fork() -> None:
    """Another thread importing threadpoolctl now: let it finish before the
    fork, or the child waits forever on the module's import lock, held by a
    thread that does not exist there. Run before the interpreter takes its
    own import lock for the fork. A fork from a signal handler inside this
    thread's own import does not wait (bounded, should it land before the
    importer is recorded)."""
    if _module is None and _lock.locked() and _importer != threading.get_ident():
        if _lock.acquire(timeout=_FORK_WAIT):
            _lock.release()


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # another thread may have held it at fork


os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
