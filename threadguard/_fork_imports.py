"""Before a fork, let imports of threadguard's modules that other threads
have begun finish.

After fork only the forking thread exists. A module another thread was
importing at that moment stays locked in the child, by a thread that does
not exist there: the child's first budget, which imports what it needs,
would wait forever. threadguard's modules are imported on first use (often
from a worker thread), so the hook waits for those imports in the parent
instead; it runs before the interpreter takes its own import lock for the
fork, and costs a lookup in a small dict when nothing is being imported.
"""

from __future__ import annotations

import importlib
import os
import sys

_PREFIX = __name__.rpartition(".")[0] + "."


def _being_imported() -> list[str]:
    """Names of threadguard's modules some thread is importing now."""
    # CPython's import locks of the modules being imported: held from before
    # the module is in sys.modules (while its file is found) until it is done.
    locks = getattr(getattr(importlib, "_bootstrap", None), "_module_locks", None)
    if isinstance(locks, dict):
        return [name for name in list(locks) if name.startswith(_PREFIX)]
    return [name for name, module in list(sys.modules.items()) if name.startswith(_PREFIX)
            and getattr(getattr(module, "__spec__", None), "_initializing", False)]


def finish_imports() -> None:
    for name in _being_imported():
        try:
            importlib.import_module(name)  # waits for the thread importing it
        except Exception:  # its failure is that thread's to report
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=finish_imports)
