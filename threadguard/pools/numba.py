"""numba's parallel threading layer, when numba is imported.

``numba.get_num_threads()`` starts the threading layer; until it has started,
the configured ``NUMBA_NUM_THREADS`` is reported instead.
"""

from __future__ import annotations

import sys

from . import Pool


def detect() -> list[Pool]:
    numba = sys.modules.get("numba")
    if numba is None:
        return []
    parallel = sys.modules.get("numba.np.ufunc.parallel")
    if parallel is not None and getattr(parallel, "_is_initialized", False):
        return [Pool("numba", "numba", int(numba.get_num_threads()),
                     source="numba.get_num_threads")]
    configured = getattr(getattr(numba, "config", None), "NUMBA_NUM_THREADS", None)
    return [Pool("numba", "numba", configured, source="numba.config.NUMBA_NUM_THREADS",
                 notes=("threading layer not started yet",))]
