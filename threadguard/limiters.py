"""One limiter per runtime or library: read and set a pool's thread limit.

Discovery reuses threadpoolctl's (it walks the loaded libraries and opens
them with ``RTLD_NOLOAD``: looking never loads anything); the setters are the
runtimes' own C functions, called directly, so several Python threads can
each hold a budget (threadpoolctl lets only one thread control OpenBLAS).

What each library allows decides the *scope* of its limit:

- ``process``: one value for the whole process: OpenBLAS (pthreads build),
  MKL (``mkl_set_num_threads``), BLIS, FlexiBLAS, OpenCV, torch's intra-op
  pool size.
- ``thread``: the calling thread's own value: every OpenMP runtime
  (``omp_set_num_threads`` sets the calling thread's nthreads-var), numba.
  OpenBLAS built on OpenMP follows its OpenMP runtime (and re-applies its own
  limit on each call), so its OpenMP runtime is capped too.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import sys
import warnings
from dataclasses import dataclass, field
from typing import Callable

PROCESS, THREAD = "process", "thread"

# libiomp5 and libomp in one process: calling into both can abort
# (threadpoolctl#41), so only the first one loaded is driven.
_KMP_FAMILY = ("libiomp5", "libomp")


@dataclass(eq=False)  # compared and hashed by identity: one per loaded library
class Limiter:
    name: str  # openblas | mkl | blis | flexiblas | libgomp | libiomp5 | libomp | torch | opencv | numba
    path: str | None
    scope: str  # process | thread
    get: Callable[[], int | None]
    set: Callable[[int], object]
    note: str | None = None
    driven: bool = True  # False: never called into (the note says why)
    accepted: set = field(default_factory=set)  # values a read-back confirmed once

    def apply(self, value: int) -> int | None:
        """Set ``value`` and return what the library now reports, reading it
        back only the first time for each value: a refusal shows then."""
        self.set(value)
        after = value if value in self.accepted else self.get()
        if after == value:
            self.accepted.add(value)
        return after


def _c_get(fn) -> Callable[[], int | None]:
    fn.restype, fn.argtypes = ctypes.c_int, []
    return fn


def _c_set(fn) -> Callable[[int], object]:
    fn.restype, fn.argtypes = None, [ctypes.c_int]
    return fn


def _first(dynlib, names):
    for name in names:
        fn = getattr(dynlib, name, None)
        if fn is not None:
            return fn
    return None


def _openblas(ctrl) -> Limiter | None:
    affixes = list(itertools.product(("", "scipy_"), ("", "64_", "_64")))
    get = _first(ctrl.dynlib, [f"{p}openblas_get_num_threads{s}" for p, s in affixes])
    set_ = _first(ctrl.dynlib, [f"{p}openblas_set_num_threads{s}" for p, s in affixes])
    if get is None or set_ is None:
        return None
    layer = getattr(ctrl, "threading_layer", None)
    scope = THREAD if layer == "openmp" else PROCESS
    note = ("built on OpenMP: re-applies its limit per call; its OpenMP runtime is capped too"
            if layer == "openmp" else None)
    return Limiter("openblas", ctrl.filepath, scope, _c_get(get), _c_set(set_), note)


def _named(name, getter, setter, scope):
    def build(ctrl) -> Limiter | None:
        get, set_ = getattr(ctrl.dynlib, getter, None), getattr(ctrl.dynlib, setter, None)
        if get is None or set_ is None:
            return None
        return Limiter(name, ctrl.filepath, scope, _c_get(get), _c_set(set_))
    return build


_BUILDERS = {
    "openblas": _openblas,
    "mkl": _named("mkl", "MKL_Get_Max_Threads", "MKL_Set_Num_Threads", PROCESS),
    "blis": _named("blis", "bli_thread_get_num_threads", "bli_thread_set_num_threads", PROCESS),
    "flexiblas": _named("flexiblas", "flexiblas_get_num_threads", "flexiblas_set_num_threads",
                        PROCESS),
}


def _openmp_name(ctrl) -> str:
    prefix = getattr(ctrl, "prefix", "")
    return {"libgomp": "libgomp", "libiomp": "libiomp5", "libomp": "libomp"}.get(prefix, prefix)


def runtime_limiters() -> list[Limiter]:
    """Limiters for every BLAS and OpenMP runtime loaded now."""
    from ._tpc import threadpoolctl
    ThreadpoolController = threadpoolctl().ThreadpoolController

    with warnings.catch_warnings():
        # threadpoolctl warns when Intel and LLVM OpenMP are both loaded; that
        # case is handled below and reported, and a warning here would break
        # suites run with -W error.
        warnings.simplefilter("ignore", RuntimeWarning)
        controllers = ThreadpoolController().lib_controllers
    # In the dynamic linker's order: of two conflicting runtimes, the one
    # loaded first is the one driven.
    from .libraries import loaded_libraries
    order = {os.path.realpath(lib.path): lib.index for lib in loaded_libraries().libraries}
    controllers = sorted(controllers, key=lambda c: order.get(os.path.realpath(c.filepath), 1 << 30))
    out: list[Limiter] = []
    kmp_driven = None
    for ctrl in controllers:
        if ctrl.internal_api == "openmp":
            name = _openmp_name(ctrl)
            get = getattr(ctrl.dynlib, "omp_get_max_threads", None)
            set_ = getattr(ctrl.dynlib, "omp_set_num_threads", None)
            if get is None or set_ is None:
                continue
            if name in _KMP_FAMILY:
                if kmp_driven is not None:
                    out.append(Limiter(name, ctrl.filepath, THREAD, lambda: None, lambda n: None,
                                       note=f"{kmp_driven} is loaded too and calling into both "
                                            "can abort the process", driven=False))
                    continue
                kmp_driven = name
            out.append(Limiter(name, ctrl.filepath, THREAD, _c_get(get), _c_set(set_)))
            continue
        build = _BUILDERS.get(ctrl.internal_api)
        limiter = build(ctrl) if build else None
        if limiter is not None:
            out.append(limiter)
    return out


def module_limiters() -> list[Limiter]:
    """Limiters for pools owned by Python packages that are imported already."""
    out = []
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "set_num_threads"):
        out.append(Limiter("torch", getattr(torch, "__file__", None), PROCESS,
                           torch.get_num_threads, torch.set_num_threads))
    cv2 = sys.modules.get("cv2")
    if cv2 is not None and hasattr(cv2, "setNumThreads"):
        out.append(Limiter("opencv", getattr(cv2, "__file__", None), PROCESS,
                           cv2.getNumThreads, cv2.setNumThreads))
    parallel = sys.modules.get("numba.np.ufunc.parallel")
    numba = sys.modules.get("numba")
    if numba is not None and parallel is not None and getattr(parallel, "_is_initialized", False):
        out.append(Limiter("numba", getattr(numba, "__file__", None), THREAD,
                           numba.get_num_threads, numba.set_num_threads,
                           note="limited to at most NUMBA_NUM_THREADS"))
    return out
