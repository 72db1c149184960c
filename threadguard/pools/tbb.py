"""oneTBB's pool: the default arena's concurrency and any global_control limit.

Read by calling oneTBB's own exported functions in the already-loaded
library (opened with ``RTLD_NOLOAD``, so nothing is loaded). No limiter:
TBB's size is set by its users (OpenVINO's properties, see
``threadguard.openvino``).
"""

from __future__ import annotations

import ctypes
import os

from . import Family, Pool, Scan

_MAX_CONCURRENCY = "_ZN3tbb6detail2r115max_concurrencyEPKNS0_2d115task_arena_baseE"
_ACTIVE_VALUE = "_ZN3tbb6detail2r127global_control_active_valueEi"
_MAX_ALLOWED_PARALLELISM = 0


class TBB(Family):
    key = library = api = "tbb"
    runtime = "libtbb"
    color = "#8172b3"

    def detect(self, scan: Scan) -> list[Pool]:
        from ..runtime_libs import classify

        pools = []
        for path in sorted(scan.order, key=scan.order.get):  # in load order
            if (classify(path) or ("", ""))[1] != "libtbb":
                continue
            try:
                lib = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
                concurrency = getattr(lib, _MAX_CONCURRENCY)
            except (OSError, AttributeError):
                pools.append(Pool("tbb", "tbb", None, path, source="unknown", pool=self.key,
                                  notes=("not oneTBB (>= 2021): its pool size cannot be read",)))
                continue
            concurrency.restype, concurrency.argtypes = ctypes.c_int, [ctypes.c_void_p]
            size = concurrency(None)
            notes = []
            active = getattr(lib, _ACTIVE_VALUE, None)
            if active is not None:
                active.restype, active.argtypes = ctypes.c_size_t, [ctypes.c_int]
                limit = active(_MAX_ALLOWED_PARALLELISM)
                if limit and limit < size:
                    notes.append(f"tbb::global_control limits parallelism to {limit}")
                    size = int(limit)
            pools.append(Pool("tbb", "tbb", size, path, source="tbb max_concurrency",
                              notes=tuple(notes), pool=self.key))
        return pools


FAMILIES = (TBB(),)
