"""Inspect a process that runs NumPy (OpenBLAS) and OpenVINO (TBB) side by side.

    pip install ".[openvino]"
    python examples/inspect_numpy_openvino.py          # the console view
    python examples/inspect_numpy_openvino.py --json   # the JSON report

Every OS thread is listed with the pool that created it, next to what each
pool says its size is, and the measured run-queue delay.
"""

import sys
import threading

import numpy as np
import openvino as ov
import openvino.opset13 as ops

import threadguard
from threadguard.render.console import make_console, render_report

param = ops.parameter([1, 512], np.float32)
weights = ops.constant(np.random.rand(512, 512).astype(np.float32))
model = ov.Model([ops.relu(ops.matmul(param, weights, False, False))], [param])
request = ov.Core().compile_model(model, "CPU").create_infer_request()

stop = threading.Event()


def inference() -> None:
    frame = np.ones((1, 512), np.float32)
    while not stop.is_set():
        request.infer({0: frame})


def algebra() -> None:
    a = np.random.rand(500, 500)
    while not stop.is_set():
        a @ a


workers = [threading.Thread(target=inference, name="inference"),
           threading.Thread(target=algebra, name="numpy")]
for w in workers:
    w.start()
try:
    report = threadguard.inspect(interval=1.0)
finally:
    stop.set()
    for w in workers:
        w.join()

if "--json" in sys.argv:
    print(report.to_json())
else:
    render_report(report, make_console())
