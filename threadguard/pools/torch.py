"""PyTorch's intra-op pool (OpenMP or native) and inter-op pool.

The intra-op size is one process-wide value (``torch.set_num_threads``);
its threads are its OpenMP runtime's, counted there. The inter-op pool's
threads are created by ``libtorch``/``libc10`` and are torch's own.
"""

from __future__ import annotations

import sys

from ..env_rules import first_set
from ..limiters import PROCESS, Limiter
from . import Family, Pool, Scan


def _natural(environ, cpus: int) -> int | None:
    # torch reads MKL_NUM_THREADS over OMP_NUM_THREADS at start; unset, its
    # own default (physical cores) is kept as it reports it.
    return first_set(environ, ("MKL_NUM_THREADS", "OMP_NUM_THREADS"))


class Torch(Family):
    key = library = "torch"
    api = "torch-intraop"
    prefixes = ("libc10", "libtorch")
    modules = ("torch",)
    color = "#ccb974"

    def limiters(self, scan: Scan) -> list[Limiter]:
        torch = sys.modules.get("torch")
        if torch is None or not hasattr(torch, "set_num_threads"):
            return []
        return [Limiter(self.key, self.library, getattr(torch, "__file__", None), PROCESS,
                        torch.get_num_threads, torch.set_num_threads, natural=_natural)]

    def detect(self, scan: Scan) -> list[Pool]:
        torch = sys.modules.get("torch")
        if torch is None or not hasattr(torch, "get_num_threads"):
            return []
        return [
            Pool("torch", "torch-intraop", torch.get_num_threads(), source="torch.get_num_threads",
                 pool=self.key, owns_threads=False),
            Pool("torch", "torch-interop", torch.get_num_interop_threads(),
                 source="torch.get_num_interop_threads", pool=self.key),
        ]


FAMILIES = (Torch(),)
