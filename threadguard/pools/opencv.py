"""OpenCV's parallel backend, when cv2 is imported: one process-wide size."""

from __future__ import annotations

import sys

from ..limiters import PROCESS, Limiter
from . import Family, Pool, Scan


def _natural(environ, cpus: int) -> int:
    return cpus  # it sizes itself to the CPUs it may use


class OpenCV(Family):
    key = library = api = "opencv"
    prefixes = ("libopencv", "cv2")
    modules = ("cv2",)
    color = "#d65f5f"

    def limiters(self, scan: Scan) -> list[Limiter]:
        cv2 = sys.modules.get("cv2")
        if cv2 is None or not hasattr(cv2, "setNumThreads"):
            return []
        return [Limiter(self.key, self.library, getattr(cv2, "__file__", None), PROCESS,
                        cv2.getNumThreads, cv2.setNumThreads, natural=_natural)]

    def detect(self, scan: Scan) -> list[Pool]:
        cv2 = sys.modules.get("cv2")
        if cv2 is None or not hasattr(cv2, "getNumThreads"):
            return []
        return [Pool("opencv", "opencv", int(cv2.getNumThreads()), source="cv2.getNumThreads",
                     pool=self.key)]


FAMILIES = (OpenCV(),)
