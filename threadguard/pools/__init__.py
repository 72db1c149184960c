"""Thread pool families: one adapter module per family.

A family knows everything threadguard does about one kind of pool: its pool
key (the one name used by reports, thread attribution, timelines and
findings), the file names of its libraries, how to read its size in this
process, how to cap it (its limiters), and the size it would take from the
user's environment. Adding a library is adding one module to ``_MODULES``.

Adapters import nothing the process has not imported already: looking never
loads a library.
"""

from __future__ import annotations

import importlib
import os
import sys
from functools import lru_cache
from typing import NamedTuple

from .._tpc import threadpoolctl
from ..libraries import real_path
from ..limiters import Limiter

# Load order matters where families interact (Intel and LLVM OpenMP).
_MODULES = ("openblas", "mkl", "blis", "openmp", "tbb", "openvino", "torch", "onnxruntime",
            "opencv", "numba")

# Threads that belong to no pool family.
MAIN, PYTHON, OTHER, UNATTRIBUTED = "main", "python", "other", "unattributed"


class Pool(NamedTuple):
    library: str  # openblas | mkl | blis | libgomp | libiomp5 | libomp | tbb | openvino | torch | ...
    api: str  # blas | openmp | tbb | openvino | torch-intraop | torch-interop | ...
    num_threads: int | None  # the configured size; None when it cannot be read
    path: str | None = None
    threads_observed: int | None = None  # threads attributed to it by the census
    source: str = ""  # how num_threads was read
    notes: tuple[str, ...] = ()
    pool: str = ""  # the family's pool key (what attribution calls its threads)
    owns_threads: bool = True  # False: its threads are another pool's (torch's OpenMP)

    def with_observed(self, count: int | None) -> "Pool":
        return self._replace(threads_observed=count)


class Scan(NamedTuple):
    """What families look at, read once: threadpoolctl's controllers of the
    loaded libraries, in the dynamic linker's order, and that order."""

    controllers: tuple
    order: dict  # real path of every loaded library -> position in the linker's list

    def position(self, path: str | None) -> int:
        return self.order.get(real_path(path), 1 << 30) if path else 1 << 30


class Family:
    """One pool family. Subclasses set the attributes they need."""

    key: str = ""  # the pool key
    library: str = ""  # the name users know (Pool.library)
    api: str = ""
    runtime: str | None = None  # runtime_libs' name for its library files, if any
    prefixes: tuple[str, ...] = ()  # file-name prefixes of libraries whose threads it owns
    modules: tuple[str, ...] = ()  # Python modules whose import may bring its pool
    color: str = "#bbbbbb"  # its colour in timelines, the same in every picture

    def detect(self, scan: Scan) -> list[Pool]:
        """Its pools in this process (sizes read with the library's own getters)."""
        return []

    def limiters(self, scan: Scan) -> list[Limiter]:
        """Limiters for its libraries loaded now."""
        return []

    def owns(self, path: str) -> bool:
        base = os.path.basename(path)
        return any(base.startswith(prefix) for prefix in self.prefixes)


@lru_cache(maxsize=1)
def families() -> tuple[Family, ...]:
    return tuple(f for module in _ADAPTERS for f in module.FAMILIES)


@lru_cache(maxsize=None)
def family(key: str) -> Family | None:
    """The family of a pool key, or None (main, python, other, unattributed)."""
    return next((f for f in families() if f.key == key), None)


@lru_cache(maxsize=None)
def family_of_runtime(name: str) -> Family | None:
    """The family of a runtime library by runtime_libs' name (libgomp, libtbb...)."""
    return next((f for f in families() if f.runtime == name), None)


def trigger_modules() -> tuple[str, ...]:
    return tuple(m for f in families() for m in f.modules)


def pool_of_library(path: str | None) -> str:
    """The pool key of the threads a library creates."""
    if not path:
        return OTHER
    from ..runtime_libs import classify
    found = classify(path)
    if found is not None:
        fam = family_of_runtime(found[1])
        if fam is not None:
            return fam.key
    for fam in families():
        if fam.owns(path):
            return fam.key
    if os.path.basename(path).startswith(("libpython", "python")):
        return PYTHON
    return OTHER


def scan() -> Scan:
    """threadpoolctl's controllers of what is loaded, in load order."""
    import warnings

    from ..libraries import loaded_libraries
    from ..runtime_libs import classify

    if "threadpoolctl" not in sys.modules:
        libraries = loaded_libraries().libraries
        if not any(classify(lib.path) for lib in libraries):
            # Nothing threadpoolctl knows is loaded (and no controller of the
            # user's is registered, or it would be imported): no need to import it.
            return Scan((), {real_path(lib.path): lib.index for lib in libraries})
    with warnings.catch_warnings():
        # threadpoolctl warns when Intel and LLVM OpenMP are both loaded; the
        # OpenMP families handle and report that, and a warning here would
        # break suites run with -W error.
        warnings.simplefilter("ignore", RuntimeWarning)
        controllers = threadpoolctl().ThreadpoolController().lib_controllers
    order = {real_path(lib.path): lib.index for lib in loaded_libraries().libraries}
    scanned = Scan((), order)
    controllers = sorted(controllers, key=lambda c: scanned.position(c.filepath))
    return Scan(tuple(controllers), order)


def limiters(scanned: Scan | None = None) -> list[Limiter]:
    """Limiters of every family for what is loaded now."""
    scanned = scanned or scan()
    out: list[Limiter] = []
    for fam in families():
        out.extend(fam.limiters(scanned))
    return out


def detect_pools() -> list[Pool]:
    """Every pool of this process that a family recognises."""
    scanned = None
    pools: list[Pool] = []
    for fam in families():
        if fam.modules and not any(m in sys.modules for m in fam.modules):
            continue  # cheap: no scan for a family whose package is not imported
        try:
            if scanned is None:
                scanned = scan()
            pools.extend(fam.detect(scanned))
        except Exception as err:  # an adapter must never break inspection
            pools.append(Pool(fam.library, fam.api, None, source="error", pool=fam.key,
                              notes=(f"{fam.key} adapter failed: {err!r}",)))
    return pools


# The adapters are imported with this package, not at the first budget: a
# fork while another thread imports one would leave the child waiting
# forever on that module's import lock (after fork only the forking thread
# exists, and the lock stays held by one that does not).
_ADAPTERS = tuple(importlib.import_module(f"{__name__}.{name}") for name in _MODULES)
