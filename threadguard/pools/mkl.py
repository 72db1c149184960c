"""Intel MKL: one process-wide limit (``MKL_Set_Num_Threads``)."""

from __future__ import annotations

from ..env_rules import first_set
from ..limiters import PROCESS, Limiter, c_getter, c_setter
from . import Family, Scan
from ._cblas import controllers_of, pools_from_limiters


def _natural(environ, cpus: int) -> int | None:
    # MKL_NUM_THREADS, else OMP_NUM_THREADS; unset: MKL's own default (its cores),
    # which is not known from outside: keep what it reports.
    return first_set(environ, ("MKL_NUM_THREADS", "OMP_NUM_THREADS"))


class MKL(Family):
    key = library = "mkl"
    api = "blas"
    runtime = "mkl"
    prefixes = ("libmkl_",)
    color = "#4878d0"

    def limiters(self, scan: Scan) -> list[Limiter]:
        out = []
        for ctrl in controllers_of(scan, "mkl"):
            get = getattr(ctrl.dynlib, "MKL_Get_Max_Threads", None)
            set_ = getattr(ctrl.dynlib, "MKL_Set_Num_Threads", None)
            if get is not None and set_ is not None:
                out.append(Limiter(self.key, self.library, ctrl.filepath, PROCESS, c_getter(get),
                                   c_setter(set_), natural=_natural))
        return out

    def detect(self, scan: Scan):
        return pools_from_limiters(self, self.limiters(scan))


FAMILIES = (MKL(),)
