"""Thread pools in this process, one small adapter per family.

Each adapter module has ``detect() -> list[Pool]`` and imports nothing the
process has not imported already: looking never loads a library. Adding a
library is adding one module to ``ADAPTERS``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field, replace

ADAPTERS = ("threadpoolctl_pools", "tbb", "openvino", "torch", "onnxruntime", "opencv", "numba")


@dataclass(frozen=True)
class Pool:
    library: str  # openblas | mkl | blis | libgomp | libiomp5 | libomp | tbb | openvino | torch | ...
    api: str  # blas | openmp | tbb | openvino | torch-intraop | torch-interop | ...
    num_threads: int | None  # the configured size; None when it cannot be read
    path: str | None = None
    threads_observed: int | None = None  # threads attributed to it by the census
    source: str = ""  # how num_threads was read
    notes: tuple[str, ...] = field(default_factory=tuple)

    def with_observed(self, count: int | None) -> "Pool":
        return replace(self, threads_observed=count)


def detect_pools() -> list[Pool]:
    """Every pool of this process that an adapter recognises."""
    pools: list[Pool] = []
    for name in ADAPTERS:
        module = importlib.import_module(f"{__name__}.{name}")
        try:
            pools.extend(module.detect())
        except Exception as err:  # an adapter must never break inspection
            pools.append(Pool(name, name, None, source="error",
                              notes=(f"{name} adapter failed: {err!r}",)))
    return pools
