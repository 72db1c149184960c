"""numba's parallel threading layer, when numba is imported.

``numba.get_num_threads()`` starts the threading layer; until it has started,
the configured ``NUMBA_NUM_THREADS`` is reported instead. Its limit belongs
to the calling thread, at most ``NUMBA_NUM_THREADS``.
"""

from __future__ import annotations

import sys

from ..limiters import THREAD, Limiter
from . import Family, Pool, Scan


def _started():
    parallel = sys.modules.get("numba.np.ufunc.parallel")
    return parallel is not None and getattr(parallel, "_is_initialized", False)


def _natural(environ, cpus: int) -> int | None:
    # Its pool is sized once, from NUMBA_NUM_THREADS at import: a smaller
    # pool cannot grow back (set_num_threads refuses), so this is a ceiling.
    from ..env_rules import openmp_value
    value, _ = openmp_value(environ.get("NUMBA_NUM_THREADS"))
    return value or cpus


class Numba(Family):
    key = library = api = "numba"
    prefixes = ("libnumba", "omppool", "tbbpool", "workqueue")
    modules = ("numba.np.ufunc.parallel",)
    color = "#956cb4"

    def limiters(self, scan: Scan) -> list[Limiter]:
        numba = sys.modules.get("numba")
        if numba is None or not _started():
            return []
        return [Limiter(self.key, self.library, getattr(numba, "__file__", None), THREAD,
                        numba.get_num_threads, numba.set_num_threads,
                        note="limited to at most NUMBA_NUM_THREADS", natural=_natural)]

    def detect(self, scan: Scan) -> list[Pool]:
        numba = sys.modules.get("numba")
        if numba is None:
            return []
        if _started():
            return [Pool("numba", "numba", int(numba.get_num_threads()),
                         source="numba.get_num_threads", pool=self.key)]
        configured = getattr(getattr(numba, "config", None), "NUMBA_NUM_THREADS", None)
        return [Pool("numba", "numba", configured, source="numba.config.NUMBA_NUM_THREADS",
                     notes=("threading layer not started yet",), pool=self.key)]


FAMILIES = (Numba(),)
