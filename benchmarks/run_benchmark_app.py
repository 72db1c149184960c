"""The real benchmark_app beside a competing NumPy process: plain vs under
``threadguard run``, FPS and p99 latency side by side in one run
(interleaved), and the NumPy process's own rate in each.

    python benchmarks/run_benchmark_app.py [--seconds 10] [--repeat 3] [--mode latency]
        [--run-args "--threads 1"] [--numpy-run-args ""]

``--numpy-run-args`` starts the NumPy process under ``threadguard run`` too
(with those options), as a user who places both jobs would.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

NUMPY_LOAD = """
import sys, time, numpy as np
a = np.random.default_rng(0).random((384, 384))
n, t0 = 0, time.perf_counter()
while time.perf_counter() - t0 < float(sys.argv[1]):
    a @ a
    n += 1
print(n / (time.perf_counter() - t0))
"""


def build_model(path: str) -> None:
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops
    x = ops.parameter([1, 3, 64, 64], np.float32, name="x")
    rng = np.random.default_rng(0)
    h = x
    for channels in (16, 32, 32):
        w = ops.constant(rng.random((channels, h.get_output_partial_shape(0)[1].get_length(), 3, 3),
                                    dtype=np.float32))
        h = ops.relu(ops.convolution(h, w, [1, 1], [1, 1], [1, 1], [1, 1]))
    ov.save_model(ov.Model([h], [x], "convnet"), path)


def one(model: str, seconds: float, mode: str, run_args: list[str] | None,
        numpy_run_args: list[str] | None) -> dict:
    env = dict(os.environ, CI="true")
    load_cmd = [sys.executable, "-c", NUMPY_LOAD, str(seconds + 6)]
    if numpy_run_args is not None:
        load_cmd = [sys.executable, "-m", "threadguard", "run", *numpy_run_args, "--", *load_cmd]
    load = subprocess.Popen(load_cmd, stdout=subprocess.PIPE, text=True, env=env)
    time.sleep(1.5)  # the load is running before the measurement starts
    app = [shutil.which("benchmark_app") or "benchmark_app", "-m", model, "-d", "CPU",
           "-t", str(int(seconds)), "-latency_percentile", "99"]
    if mode == "latency":
        app += ["-api", "sync"]
    if run_args is not None:
        app = [sys.executable, "-m", "threadguard", "run", "--mode", mode, *run_args, "--", *app]
    out = subprocess.run(app, capture_output=True, text=True, env=env)
    rate = float(load.communicate()[0].strip() or "nan")
    if out.returncode != 0:
        raise SystemExit(out.stdout[-3000:] + out.stderr[-3000:])
    fps = float(re.search(r"Throughput:\s+([\d.]+) FPS", out.stdout).group(1))
    p99 = float(re.search(r"Latency:\s.*?(?:99 percentile|Percentile 99|P99)[^\d]*([\d.]+) ms",
                          out.stdout, re.S | re.I).group(1))
    return {"fps": fps, "p99": p99, "numpy": rate}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--mode", choices=("latency", "throughput"), default="latency")
    parser.add_argument("--run-args", default="", help="options for threadguard run")
    parser.add_argument("--numpy-run-args", default=None,
                        help="also start the NumPy process under threadguard run with these")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = os.path.join(tmp, "convnet.xml")
        build_model(model)
        rows = {"plain": [], "threadguard run": []}
        for _ in range(args.repeat):
            rows["plain"].append(one(model, args.seconds, args.mode, None, None))
            numpy_args = (None if args.numpy_run_args is None
                          else shlex.split(args.numpy_run_args))
            rows["threadguard run"].append(one(model, args.seconds, args.mode,
                                               shlex.split(args.run_args), numpy_args))
    print(f"benchmark_app ({args.mode}) beside a NumPy process, median of {args.repeat} "
          f"interleaved runs of {args.seconds:g} s")
    print(f"  {'':18}{'FPS':>10}{'p99 ms':>10}{'NumPy/s':>10}")
    med = {}
    for name, runs in rows.items():
        med[name] = {k: statistics.median(r[k] for r in runs) for k in ("fps", "p99", "numpy")}
        m = med[name]
        print(f"  {name:18}{m['fps']:10.1f}{m['p99']:10.2f}{m['numpy']:10.1f}")
    print(f"  FPS ratio {med['threadguard run']['fps'] / med['plain']['fps']:.2f}x, "
          f"p99 ratio {med['threadguard run']['p99'] / med['plain']['p99']:.2f}x")


if __name__ == "__main__":
    main()
