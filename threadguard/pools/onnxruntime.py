"""onnxruntime: pools belong to sessions; there is no process-wide size to read."""

from __future__ import annotations

import sys

from . import Pool


def detect() -> list[Pool]:
    if "onnxruntime" not in sys.modules:
        return []
    return [Pool("onnxruntime", "onnxruntime", None, source="unknown", notes=(
        "each InferenceSession sizes its own pools (SessionOptions.intra_op_num_threads, "
        "default: physical cores)",))]
