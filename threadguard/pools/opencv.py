"""OpenCV's parallel backend, when cv2 is imported."""

from __future__ import annotations

import sys

from . import Pool


def detect() -> list[Pool]:
    cv2 = sys.modules.get("cv2")
    if cv2 is None or not hasattr(cv2, "getNumThreads"):
        return []
    return [Pool("opencv", "opencv", int(cv2.getNumThreads()), source="cv2.getNumThreads")]
