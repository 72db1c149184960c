"""threadpoolctl, imported without its side effect on the environment.

Importing threadpoolctl runs ``os.environ.setdefault("KMP_DUPLICATE_LIB_OK",
"True")``, which would leave the user's process (and its children) changed
and hide duplicate OpenMP runtimes. threadguard imports it through here and
puts the variable back as it was.

Several threads may ask at once (the first budgets of a thread pool): the
module is handed out only once fully imported. ``sys.modules`` holds a
module while it is still executing, so a plain lookup there would give a
second thread a half-initialised one. The import holds the lock of
threadguard's lazy imports, which a fork takes too: a child is never forked
inside the import, nor before the variable is put back.
"""

from __future__ import annotations

import os

from ._fork_imports import lock as _lock

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
