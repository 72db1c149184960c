"""Cost of entering and leaving a budget, next to threadpoolctl's.

With OpenBLAS (NumPy), an OpenMP runtime (scikit-learn's libgomp) and
OpenVINO (TBB) loaded, times ``with threadguard.budget(1): pass`` and
``with threadpoolctl.threadpool_limits(1): pass`` side by side in one run.

    python benchmarks/budget_overhead.py [--loops 2000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import os
import statistics
import sysconfig
import time
import timeit

os.environ.setdefault("CI", "true")  # no OpenVINO telemetry fork during timing

import numpy as np  # noqa: E402  OpenBLAS
import threadpoolctl  # noqa: E402

import threadguard  # noqa: E402


def load_openmp() -> str:
    site = sysconfig.get_paths()["purelib"]
    found = glob.glob(os.path.join(site, "scikit_learn.libs", "libgomp*.so*"))
    if not found:
        raise SystemExit("install scikit-learn (its wheel vendors GNU OpenMP)")
    ctypes.CDLL(found[0])
    return found[0]


def load_openvino() -> None:
    import openvino as ov
    import openvino.opset13 as ops
    p = ops.parameter([1, 64], np.float32)
    model = ov.Model([ops.relu(p)], [p])
    ov.Core().compile_model(model, "CPU").create_infer_request().infer(
        {0: np.ones((1, 64), np.float32)})


def per_call_us(stmt, loops: int, repeat: int) -> float:
    # CPU time of the calling thread: what the guard costs it, without the
    # waits a shared VM adds, and without the CPU that idle OpenMP and TBB
    # workers of the process spin away meanwhile (process time counts them).
    runs = timeit.repeat(stmt, number=loops, repeat=repeat, timer=time.thread_time)
    return statistics.median(runs) / loops * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--loops", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    np.ones((64, 64)) @ np.ones((64, 64))
    load_openmp()
    load_openvino()
    print("loaded:", ", ".join(sorted({i["internal_api"] for i in threadpoolctl.threadpool_info()}
                                     | {"tbb (openvino)"})))

    def guard():
        with threadguard.budget(1):
            pass

    def tpc():
        with threadpoolctl.threadpool_limits(1):
            pass

    guard()
    ours = per_call_us(guard, args.loops, args.repeat)
    theirs = per_call_us(tpc, max(1, args.loops // 20), args.repeat)
    print(f"median of {args.repeat} runs, the calling thread's CPU time per enter + exit")
    print(f"  threadguard.budget(1)              {ours:8.1f} us")
    print(f"  threadpoolctl.threadpool_limits(1) {theirs:8.1f} us")
    print(f"  threadpoolctl / threadguard        {theirs / ours:8.1f}x")


if __name__ == "__main__":
    main()
