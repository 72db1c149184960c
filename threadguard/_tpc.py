"""threadpoolctl, imported without its side effect on the environment.

Importing threadpoolctl runs ``os.environ.setdefault("KMP_DUPLICATE_LIB_OK",
"True")``, which would leave the user's process (and its children) changed
and hide duplicate OpenMP runtimes. threadguard imports it through here and
puts the variable back as it was.
"""

from __future__ import annotations

import os
import sys


def threadpoolctl():
    module = sys.modules.get("threadpoolctl")
    if module is not None:
        return module
    before = os.environ.get("KMP_DUPLICATE_LIB_OK")
    import threadpoolctl as module
    if before is None:
        os.environ.pop("KMP_DUPLICATE_LIB_OK", None)
    else:
        os.environ["KMP_DUPLICATE_LIB_OK"] = before
    return module
