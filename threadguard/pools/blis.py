"""BLIS and FlexiBLAS: process-wide limits through their own setters."""

from __future__ import annotations

from ..env_rules import first_set
from ..limiters import PROCESS, Limiter, c_getter, c_setter
from . import Family, Scan
from ._cblas import controllers_of, pools_from_limiters


class _Named(Family):
    api = "blas"
    getter = setter = variable = ""

    def limiters(self, scan: Scan) -> list[Limiter]:
        out = []
        for ctrl in controllers_of(scan, self.key):
            get = getattr(ctrl.dynlib, self.getter, None)
            set_ = getattr(ctrl.dynlib, self.setter, None)
            if get is not None and set_ is not None:
                out.append(Limiter(self.key, self.library, ctrl.filepath, PROCESS, c_getter(get),
                                   c_setter(set_), natural=self._natural))
        return out

    def _natural(self, environ, cpus: int) -> int | None:
        return first_set(environ, (self.variable, "OMP_NUM_THREADS"))

    def detect(self, scan: Scan):
        return pools_from_limiters(self, self.limiters(scan))


class BLIS(_Named):
    key = library = runtime = "blis"
    getter, setter, variable = ("bli_thread_get_num_threads", "bli_thread_set_num_threads",
                                "BLIS_NUM_THREADS")
    color = "#6acc64"


class FlexiBLAS(_Named):
    key = library = runtime = "flexiblas"
    getter, setter, variable = ("flexiblas_get_num_threads", "flexiblas_set_num_threads",
                                "FLEXIBLAS_NUM_THREADS")
    color = "#82c6e2"


FAMILIES = (BLIS(), FlexiBLAS())
