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


def threadpoolctl():
    global _module
    module = _module
    if module is not None:
        return module
    with _lock:
        if _module is None:
            before = os.environ.get("KMP_DUPLICATE_LIB_OK")
            import threadpoolctl as module  # waits for another thread's import to finish
            if before is None:
                os.environ.pop("KMP_DUPLICATE_LIB_OK", None)
            else:
                os.environ["KMP_DUPLICATE_LIB_OK"] = before
            _module = module
        return _module


def _before_fork() -> None:
    """Another thread importing threadpoolctl now: let it finish before the
    fork, or the child waits forever on the module's import lock, held by a
    thread that does not exist there. (Run before the interpreter takes its
    own import lock for the fork; the lock is held only by an import.)"""
    if _module is None and _lock.locked():
        with _lock:
            pass


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # another thread may have held it at fork


os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
