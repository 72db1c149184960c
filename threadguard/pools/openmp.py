"""The OpenMP runtimes: GNU (libgomp), Intel (libiomp5), LLVM (libomp).

Their limit is the calling thread's nthreads-var (``omp_set_num_threads``).
Intel's and LLVM's runtimes share their symbols' implementation: with both
in one process, calling into both can abort it (threadpoolctl#41), so only
the one loaded first is ever called; the other is reported, not read.
"""

from __future__ import annotations

from ..env_rules import openmp_value
from ..limiters import THREAD, Limiter, c_getter, c_setter, not_driven
from . import Family, Scan
from ._cblas import controllers_of, pools_from_limiters

_KMP_FAMILY = ("libiomp5", "libomp")


def _natural(environ, cpus: int) -> int | None:
    # OMP_NUM_THREADS, else one thread per CPU it may use.
    value, _ = openmp_value(environ.get("OMP_NUM_THREADS"))
    return value or cpus


class OpenMP(Family):
    api = "openmp"

    def __init__(self, library: str, prefix: str, color: str):
        self.library = self.runtime = library
        self.key = f"openmp:{library}"
        self.prefix = prefix  # threadpoolctl's controller prefix
        self.color = color

    def limiters(self, scan: Scan) -> list[Limiter]:
        out = []
        for ctrl in controllers_of(scan, "openmp", self.prefix):
            get = getattr(ctrl.dynlib, "omp_get_max_threads", None)
            set_ = getattr(ctrl.dynlib, "omp_set_num_threads", None)
            if get is None or set_ is None:
                continue
            first = _first_kmp(scan) if self.library in _KMP_FAMILY else None
            if first is not None and first.filepath != ctrl.filepath:
                other = "libiomp5" if self.library == "libomp" else "libomp"
                out.append(not_driven(self.key, self.library, ctrl.filepath,
                                      f"{other} is loaded too and calling into both can abort "
                                      "the process"))
                continue
            out.append(Limiter(self.key, self.library, ctrl.filepath, THREAD, c_getter(get),
                               c_setter(set_), natural=_natural))
        return out

    def detect(self, scan: Scan):
        return pools_from_limiters(self, self.limiters(scan))


def _first_kmp(scan: Scan):
    """The Intel or LLVM runtime loaded first: the only one called into."""
    kmp = [c for c in scan.controllers if c.internal_api == "openmp"
           and getattr(c, "prefix", None) in ("libiomp", "libomp")]
    return kmp[0] if kmp else None


FAMILIES = (OpenMP("libgomp", "libgomp", "#c44e52"), OpenMP("libiomp5", "libiomp", "#da8bc3"),
            OpenMP("libomp", "libomp", "#8c8c8c"))
