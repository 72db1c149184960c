"""BLAS and OpenMP pools, as threadpoolctl sees them (it never loads anything)."""

from __future__ import annotations

from . import Pool


def detect() -> list[Pool]:
    from .._tpc import threadpoolctl
    threadpool_info = threadpoolctl().threadpool_info

    pools = []
    for info in threadpool_info():
        api = info.get("user_api", "")
        library = info.get("internal_api", "")
        if library == "openmp":
            prefix = info.get("prefix", "")
            library = {"libgomp": "libgomp", "libiomp": "libiomp5", "libomp": "libomp",
                       "vcomp": "vcomp"}.get(prefix, prefix or "openmp")
        notes = []
        layer = info.get("threading_layer")
        if layer:
            notes.append(f"threading layer: {layer}")
        pools.append(Pool(library, api, info.get("num_threads"), info.get("filepath"),
                          source="threadpoolctl", notes=tuple(notes)))
    return pools
