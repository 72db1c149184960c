"""OpenBLAS (NumPy's and SciPy's wheels vendor it, with prefixed symbols)."""

from __future__ import annotations

import itertools
import struct

from ..env_rules import openblas_value
from ..limiters import PROCESS, THREAD, Limiter, c_getter, c_setter, first_symbol
from . import Family, Scan
from ._cblas import controllers_of, pools_from_limiters

_AFFIXES = list(itertools.product(("", "scipy_"), ("", "64_", "_64")))


def _natural(environ, cpus: int) -> int | None:
    # Its variables, else every CPU it may use (it caps that at its build's maximum).
    _, value = openblas_value(environ)
    return value or cpus


class OpenBLAS(Family):
    key = library = "openblas"
    api = "blas"
    runtime = "openblas"
    color = "#55a868"

    def limiters(self, scan: Scan) -> list[Limiter]:
        out = []
        for ctrl in controllers_of(scan, "openblas"):
            get = first_symbol(ctrl.dynlib, [f"{p}openblas_get_num_threads{s}" for p, s in _AFFIXES])
            set_ = first_symbol(ctrl.dynlib, [f"{p}openblas_set_num_threads{s}" for p, s in _AFFIXES])
            if get is None or set_ is None:
                continue
            openmp = getattr(ctrl, "threading_layer", None) == "openmp"
            note = ("built on OpenMP: re-applies its limit per call; its OpenMP runtime is capped "
                    "too" if openmp else None)
            out.append(Limiter(self.key, self.library, ctrl.filepath, THREAD if openmp else PROCESS,
                               c_getter(get), c_setter(set_), note, natural=_natural))
        return out

    def detect(self, scan: Scan):
        return pools_from_limiters(self, self.limiters(scan))


def size_in_other_process(pid: int, libs, path: str) -> int | None:
    """OpenBLAS's ``blas_cpu_number`` (its configured threads), read from
    another process's memory: the library exports it."""
    from .. import _procmem
    from .._errors import AccessDenied
    lib = next((lib for lib in libs.libraries if lib.path == path and lib.dynamic), None)
    if lib is None or not _procmem.SUPPORTED:
        return None
    try:
        with _procmem.ProcessMemory(pid) as mem:
            addr = _procmem.SymbolTable(mem, lib.base, lib.dynamic).lookup("blas_cpu_number")
            return struct.unpack("<i", mem.read(addr, 4))[0] if addr else None
    except (OSError, LookupError, struct.error, AccessDenied):
        return None


FAMILIES = (OpenBLAS(),)
