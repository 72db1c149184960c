"""``threadguard bench-openvino``: OpenVINO's defaults vs the threadguard plan.

A benchmark_app-like run: latency percentiles and throughput of one model,
compiled with OpenVINO's defaults (its performance hint only) and with the
plan, each optionally beside a competing load (NumPy/OpenBLAS threads or
OpenMP work), printed side by side. The planned run puts the load's threads
and the inference thread in budget sections, so the ledger shares the CPUs.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

from .guard import budget

LOADS = ("none", "numpy", "openmp")


@dataclass(frozen=True)
class RunResult:
    label: str
    latencies_ms: tuple[float, ...]
    seconds: float
    inferences: int
    properties: dict
    load_rate: float | None = None  # the competing load's iterations per second

    def percentile(self, q: float) -> float:
        data = sorted(self.latencies_ms)
        if not data:
            return float("nan")
        k = min(len(data) - 1, max(0, round(q / 100 * (len(data) - 1))))
        return data[k]

    @property
    def fps(self) -> float:
        return self.inferences / self.seconds if self.seconds else 0.0


def demo_model():
    """A small convolutional net built in code (no download)."""
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    rng = np.random.default_rng(0)
    x = ops.parameter([1, 3, 160, 160], np.float32, name="image")
    h = x
    for cin, cout in ((3, 32), (32, 64), (64, 64), (64, 128)):
        w = ops.constant(rng.standard_normal((cout, cin, 3, 3)).astype(np.float32) * 0.1)
        h = ops.relu(ops.convolution(h, w, [2, 2], [1, 1], [1, 1], [1, 1]))
    pooled = ops.reduce_mean(h, ops.constant(np.array([2, 3], np.int64)), False)
    logits = ops.matmul(pooled, ops.constant(rng.standard_normal((128, 10)).astype(np.float32)),
                        False, False)
    return ov.Model([ops.softmax(logits, 1)], [x], "threadguard-demo")


def load_model(spec: str):
    import openvino as ov
    if spec == "demo":
        return demo_model()
    if not os.path.exists(spec):
        raise FileNotFoundError(f"model file not found: {spec}")
    return ov.Core().read_model(spec)


class CompetingLoad:
    """Threads doing NumPy matmuls or OpenMP work until stopped."""

    def __init__(self, kind: str, threads: int, guarded: bool):
        self.kind, self.guarded = kind, guarded
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.ready = threading.Barrier(threads + 1)
        self.count = 0
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _work(self):
        import numpy as np
        self.ready.wait(timeout=120)  # every load thread is inside its budget
        if self.kind == "numpy":
            a = np.random.default_rng(0).random((256, 256))
            while not self.stop.is_set():
                a @ a
                self.count += 1
        else:
            from sklearn.cluster import KMeans
            points = np.random.default_rng(0).random((20000, 8))
            while not self.stop.is_set():
                KMeans(n_clusters=8, n_init=1, max_iter=10).fit(points)
                self.count += 1

    def _run(self):
        try:
            if self.guarded:
                with budget():
                    self._work()
            else:
                self._work()
        except BaseException as err:  # the others must not wait for this thread forever
            self.error = self.error or err
            self.stop.set()
            self.ready.abort()

    def __enter__(self):
        self.error = None
        for t in self.threads:
            t.start()
        try:
            self.ready.wait(timeout=120)
        except threading.BrokenBarrierError:
            self.__exit__(None, None, None)
            raise RuntimeError(f"the competing load failed to start: {self.error!r}") from self.error
        self.started = time.perf_counter()
        return self

    def rate(self) -> float:
        return self.count / (time.perf_counter() - self.started)

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join()


def _measure(compiled, mode: str, seconds: float, progress=None) -> tuple[list, float, int]:
    import numpy as np
    import openvino as ov

    inputs = {}
    for i, port in enumerate(compiled.inputs):
        dims = [d.get_length() for d in port.get_partial_shape()]
        inputs[i] = np.random.default_rng(i).random(dims).astype(port.get_element_type().to_dtype())
    latencies: list[float] = []
    if mode == "latency":
        request = compiled.create_infer_request()
        request.infer(inputs)  # warm-up
        start = time.perf_counter()
        while (now := time.perf_counter()) - start < seconds:
            t0 = time.perf_counter()
            request.infer(inputs)
            latencies.append((time.perf_counter() - t0) * 1000)
            if progress:
                progress(min(1.0, (now - start) / seconds))
        return latencies, time.perf_counter() - start, len(latencies)
    nireq = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
    queue = ov.AsyncInferQueue(compiled, nireq)
    queue.set_callback(lambda request, t0: latencies.append((time.perf_counter() - t0) * 1000))
    start = time.perf_counter()
    count = 0
    while (now := time.perf_counter()) - start < seconds:
        queue.start_async(inputs, time.perf_counter())
        count += 1
        if progress and count % 8 == 0:
            progress(min(1.0, (now - start) / seconds))
    queue.wait_all()
    return latencies, time.perf_counter() - start, count


def run_one(model, label: str, mode: str, load: str, seconds: float, *, planned: bool,
            pin: bool = False, load_threads: int = 2, progress=None) -> RunResult:
    import openvino as ov
    import openvino.properties.hint as hints

    from . import openvino as tg_ov

    core = ov.Core()
    hint = hints.PerformanceMode.LATENCY if mode == "latency" else hints.PerformanceMode.THROUGHPUT
    load_ctx = CompetingLoad(load, load_threads, guarded=planned) if load != "none" else None
    if load_ctx:
        load_ctx.__enter__()
    try:
        if planned:
            with budget():
                config = {"ENABLE_CPU_PINNING": True} if pin else None
                guarded = tg_ov.compile_model(model, core=core, mode=mode, observe=False,
                                              config=config)
                compiled = guarded.compiled
                props = guarded.record.requested
                latencies, elapsed, count = _measure(compiled, mode, seconds, progress)
        else:
            compiled = core.compile_model(model, "CPU", {hints.performance_mode(): hint})
            props = tg_ov.effective_properties(compiled)
            latencies, elapsed, count = _measure(compiled, mode, seconds, progress)
    finally:
        rate = load_ctx.rate() if load_ctx else None
        if load_ctx:
            load_ctx.__exit__(None, None, None)
    return RunResult(label, tuple(latencies), elapsed, count, props, rate)


def compare(model_spec: str, mode: str = "latency", load: str = "numpy", seconds: float = 10.0,
            console=None) -> list[RunResult]:
    """OpenVINO's defaults, the plan, and the plan with OpenVINO's CPU pinning
    forced on (to measure it), side by side (one run each)."""
    from rich.progress import Progress

    from .guard import current_topology

    model = load_model(model_spec)
    cpus = current_topology().effective_cpus
    runs = [("defaults", dict(planned=False)),
            ("plan", dict(planned=True)),
            ("plan+pin", dict(planned=True, pin=True))]
    results = []
    with Progress(console=console, transient=True) as bar:
        for label, options in runs:
            task = bar.add_task(f"{label} ({mode}, load: {load})", total=1.0)
            results.append(run_one(model, label, mode, load, seconds, load_threads=cpus,
                                   progress=lambda f, t=task: bar.update(t, completed=f),
                                   **options))
            bar.update(task, completed=1.0)
    return results


def render(results: list[RunResult], mode: str, load: str, console) -> None:
    from rich.table import Table

    base = results[0]
    if not console.is_terminal and console.width < 100:
        console.width = 100  # logs and files: room for every column
    table = Table(title=f"OpenVINO {mode}, competing load: {load}", title_justify="left")
    for col in ("run", "thr", "str", "pin", "p50 ms", "p90 ms", "p99 ms", "FPS", "vs def",
                "load/s"):
        table.add_column(col, justify="right" if col != "run" else "left", no_wrap=True)
    for r in results:
        p = r.properties
        table.add_row(r.label, str(p.get("INFERENCE_NUM_THREADS")), str(p.get("NUM_STREAMS")),
                      "yes" if p.get("ENABLE_CPU_PINNING") else "no", f"{r.percentile(50):.2f}",
                      f"{r.percentile(90):.2f}", f"{r.percentile(99):.2f}", f"{r.fps:.1f}",
                      f"{r.fps / base.fps:.2f}x" if base.fps else "-",
                      "-" if r.load_rate is None else f"{r.load_rate:.0f}")
    console.print(table)
    planned = results[1:]
    if len(planned) == 2:
        better = max(planned, key=lambda r: r.fps)
        console.print(f"OpenVINO's pinning {'won' if better is planned[1] else 'lost'} here: "
                      f"{planned[1].fps:.1f} FPS pinned vs {planned[0].fps:.1f} unpinned; "
                      "thr = INFERENCE_NUM_THREADS, str = NUM_STREAMS, load/s = the competing "
                      "load's iterations per second")
