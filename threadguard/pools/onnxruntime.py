"""onnxruntime: pools belong to sessions; there is no process-wide size to read."""

from __future__ import annotations

import sys

from . import Family, Pool, Scan


class ONNXRuntime(Family):
    key = library = api = "onnxruntime"
    prefixes = ("libonnxruntime", "onnxruntime_pybind11")
    modules = ("onnxruntime",)
    color = "#dc7ec0"

    def detect(self, scan: Scan) -> list[Pool]:
        if "onnxruntime" not in sys.modules:
            return []
        return [Pool("onnxruntime", "onnxruntime", None, source="unknown", pool=self.key, notes=(
            "each InferenceSession sizes its own pools (SessionOptions.intra_op_num_threads, "
            "default: physical cores)",))]


FAMILIES = (ONNXRuntime(),)
