"""A limiter: read and set one loaded library's thread limit.

Each pool family (``threadguard.pools``) builds the limiters of its loaded
libraries; the setters are the runtimes' own C functions, called directly,
so several Python threads can each hold a budget (threadpoolctl lets only one
thread control OpenBLAS).

What each library allows decides the *scope* of its limit:

- ``process``: one value for the whole process: OpenBLAS (pthreads build),
  MKL (``mkl_set_num_threads``), BLIS, FlexiBLAS, OpenCV, torch's intra-op
  pool size.
- ``thread``: the calling thread's own value: every OpenMP runtime
  (``omp_set_num_threads`` sets the calling thread's nthreads-var), numba.
  OpenBLAS built on OpenMP follows its OpenMP runtime (and re-applies its own
  limit on each call), so its OpenMP runtime is capped too.

A limiter is identified by what it limits, ``(pool key, real path)``, never
by the object: the guard's saved values survive a rescan that builds new
limiter objects for the same libraries.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from typing import Callable, Mapping

from .libraries import real_path

PROCESS, THREAD = "process", "thread"


@dataclass(eq=False)
class Limiter:
    pool: str  # the family's pool key: openblas | openmp:libgomp | torch | ...
    name: str  # the library as users know it: openblas | libgomp | torch | ...
    path: str | None
    scope: str  # process | thread
    get: Callable[[], int | None]
    set: Callable[[int], object]
    note: str | None = None
    driven: bool = True  # False: never called into (the note says why)
    # The size the library takes at start-up from the user's environment and
    # the CPUs it may use: for one that started while a budget had exported
    # its variables or pinned the process.
    natural: Callable[[Mapping[str, str], int], int | None] | None = None
    accepted: set = field(default_factory=set)  # values a read-back confirmed once
    key: tuple = ()

    def __post_init__(self):
        if not self.key:
            self.key = (self.pool, real_path(self.path) if self.path else self.name)

    def apply(self, value: int) -> int | None:
        """Set ``value`` and return what the library now reports, reading it
        back only the first time for each value: a refusal shows then."""
        self.set(value)
        after = value if value in self.accepted else self.get()
        if after == value:
            self.accepted.add(value)
        return after


# The runtimes' getters and setters are called keeping the GIL (PYFUNCTYPE):
# handing it over and taking it back cost more than the call, which only
# reads or writes a count (OpenBLAS may start its missing workers, under a
# lock of its own that no thread holds while it waits for Python). A
# runtime's first call may set it up (MKL loads its threading layer, an
# OpenMP runtime may load tools: dlopen, which waits for any thread inside
# dl_iterate_phdr, whose callback may wait for the GIL), so the getter is
# called once first the usual way, handing the GIL over.
_C_INT_GETTER = ctypes.PYFUNCTYPE(ctypes.c_int)
_C_SETTER = ctypes.PYFUNCTYPE(None)


def _address(fn) -> int:
    return ctypes.cast(fn, ctypes.c_void_p).value


def c_getter(fn) -> Callable[[], int | None]:
    fn.restype, fn.argtypes = ctypes.c_int, []
    try:
        fn()  # set up, the GIL handed over
    except Exception:  # reported when the limit is read
        pass
    return _C_INT_GETTER(_address(fn))


def c_setter(fn) -> Callable[[int], object]:
    # No argtypes: a C-calling-convention prototype passes extra arguments as
    # it finds them, a Python int as a C int, at half the cost of a declared
    # converter (budgets call setters on every entry and exit). Callers pass
    # only ints already bounded by MAX_THREADS.
    return _C_SETTER(_address(fn))


def first_symbol(dynlib, names):
    for name in names:
        fn = getattr(dynlib, name, None)
        if fn is not None:
            return fn
    return None


def not_driven(pool: str, name: str, path: str | None, note: str) -> Limiter:
    """A library seen but never called into (the note says why)."""
    return Limiter(pool, name, path, THREAD, lambda: None, lambda n: None, note=note,
                   driven=False)
