"""BLAS and OpenMP pools, through the same limiters the guard uses.

threadpoolctl finds them (it never loads anything); their sizes are read
with the runtimes' own getters, never from both Intel and LLVM OpenMP in one
process (that aborts it: threadpoolctl#41).
"""

from __future__ import annotations

from . import Pool


def detect() -> list[Pool]:
    from ..limiters import runtime_limiters

    pools = []
    for lim in runtime_limiters():
        api = "openmp" if lim.name in ("libgomp", "libiomp5", "libomp") else "blas"
        if not lim.driven:
            pools.append(Pool(lim.name, api, None, lim.path, source="not read",
                              notes=(f"size not read: {lim.note}",)))
            continue
        notes = (lim.note,) if lim.note else ()
        pools.append(Pool(lim.name, api, lim.get(), lim.path, source="runtime getter",
                          notes=notes))
    return pools
