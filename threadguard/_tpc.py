"""threadpoolctl, imported without its side effect on the environment.

Importing threadpoolctl runs ``os.environ.setdefault("KMP_DUPLICATE_LIB_OK",
"True")``, which would leave the user's process (and its children) changed
and hide duplicate OpenMP runtimes. threadguard imports it through here and
puts the variable back as it was, in a forked child too when the fork came
while another thread imported it.

Several threads may ask at once (the first budgets of a thread pool): the
module is handed out only once fully imported. ``sys.modules`` holds a
module while it is still executing, so a plain lookup there would give a
second thread a half-initialised one.
"""

from __future__ import annotations

import os
import threading

from ._fork_imports import acquire_following

_lock = threading.Lock()
_module = None
_importer = 0  # the thread importing it now
_before: str | None = None  # the variable's value before that import


def threadpoolctl():
    global _module, _importer, _before
    module = _module
    if module is not None:
        return module
    lock = acquire_following(lambda: _lock)  # a fork may replace it meanwhile
    try:
        if _module is None:
            # Kept here for the put-back (a nested call in a forked child may
            # change the global), published for a child of a fork meanwhile.
            _before = before = os.environ.get("KMP_DUPLICATE_LIB_OK")
            _importer = threading.get_ident()
            try:
                import threadpoolctl as module  # waits for another thread's import to finish
            finally:
                _put_back(before)
                _importer = 0
            _module = module
        return _module
    finally:
        lock.release()


def _put_back(before: str | None) -> None:
    if before is None:
        os.environ.pop("KMP_DUPLICATE_LIB_OK", None)
    else:
        os.environ["KMP_DUPLICATE_LIB_OK"] = before


def _after_fork_in_child() -> None:
    global _lock, _importer
    if _importer and _importer != threading.get_ident():
        _put_back(_before)  # that thread's import is abandoned here (see _fork_imports)
        _importer = 0
    _lock = threading.Lock()  # another thread may have held it at fork


os.register_at_fork(after_in_child=_after_fork_in_child)
