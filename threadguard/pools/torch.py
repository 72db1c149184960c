"""PyTorch's intra-op (OpenMP or native) and inter-op pools, when torch is imported."""

from __future__ import annotations

import sys

from . import Pool


def detect() -> list[Pool]:
    torch = sys.modules.get("torch")
    if torch is None or not hasattr(torch, "get_num_threads"):
        return []
    return [
        Pool("torch", "torch-intraop", torch.get_num_threads(), source="torch.get_num_threads"),
        Pool("torch", "torch-interop", torch.get_num_interop_threads(),
             source="torch.get_num_interop_threads"),
    ]
