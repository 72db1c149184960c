"""Cost of entering and leaving a budget, next to threadpoolctl's.

With OpenBLAS (NumPy), an OpenMP runtime (scikit-learn's libgomp) and
OpenVINO (TBB) loaded, times ``with threadguard.budget(1): pass`` and
``with threadpoolctl.threadpool_limits(1): pass`` side by side in one run,
in interleaved rounds: a shared machine's slow spells (they last seconds,
and halve the speed of both) fall on both alike.

    python benchmarks/budget_overhead.py [--loops 2000] [--rounds 15]
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


def per_call_us(stmt, loops: int) -> float:
    # CPU time of the calling thread: what the guard costs it, without the
    # waits a shared VM adds, and without the CPU that idle OpenMP and TBB
    # workers of the process spin away meanwhile (process time counts them).
    return timeit.timeit(stmt, number=loops, timer=time.thread_time) / loops * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--loops", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=15)
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
    tpc()
    ours, theirs = [], []
    for _ in range(args.rounds):
        ours.append(per_call_us(guard, args.loops))
        theirs.append(per_call_us(tpc, max(1, args.loops // 20)))
    ratios = [t / o for o, t in zip(ours, theirs)]
    print(f"{args.rounds} interleaved rounds, the calling thread's CPU time per enter + exit:"
          " median (range)")
    for name, values in (("threadguard.budget(1)", ours),
                         ("threadpoolctl.threadpool_limits(1)", theirs)):
        print(f"  {name:34} {statistics.median(values):8.1f} us "
              f"({min(values):.1f} to {max(values):.1f})")
    print(f"  {'threadpoolctl / threadguard':34} {statistics.median(ratios):8.1f}x "
          f"({min(ratios):.0f}x to {max(ratios):.0f}x)")


if __name__ == "__main__":
    main()
