"""A real mixed program, unguarded vs guarded vs ideal, side by side in one run.

The program: a thread pool sized to the CPUs (as careful code has) pulls a
queue of mixed tasks: OpenBLAS matmuls (small and medium), OpenVINO
inference on a model built in code, and scikit-learn's KMeans (OpenMP from
scikit-learn's libgomp). Each library also sizes its own pool to the
machine, so every worker thread fans out again: oversubscription.

- unguarded: as the libraries behave by default;
- guarded: each task runs inside ``threadguard.budget()`` (the ledger shares
  the CPUs between the worker threads) and OpenVINO is compiled with the
  thread count the budget grants;
- ideal: the same work run serially with every pool at one thread, divided
  by the effective CPUs (perfect scaling, no contention).

The same tasks are also spread over a process pool of the same size, without and with
``threadguard.worker_budget``.

    python benchmarks/mixed_workload.py [--scale 1.0] [--repeat 3]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import statistics
import threading
import time

os.environ.setdefault("CI", "true")  # no OpenVINO telemetry fork

import numpy as np  # noqa: E402
import openvino as ov  # noqa: E402
import openvino.opset13 as ops  # noqa: E402
from sklearn.cluster import KMeans  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

import threadguard  # noqa: E402

RNG = np.random.default_rng(0)
SMALL = RNG.random((64, 64))
MEDIUM = RNG.random((320, 320))
POINTS = RNG.random((20000, 16))
WIDTH = 512


def build_model() -> ov.Model:
    p = ops.parameter([8, WIDTH], np.float32)
    x = p
    for _ in range(3):
        w = ops.constant(RNG.random((WIDTH, WIDTH), dtype=np.float32))
        x = ops.relu(ops.matmul(x, w, False, False))
    return ov.Model([x], [p])


MODEL = build_model()
FRAME = np.ones((8, WIDTH), np.float32)


_local = threading.local()
_compiled: dict = {}


def request_for(threads):
    """One inference request per worker thread, from a model compiled once."""
    key = threads
    if key not in _compiled:
        config = {} if threads is None else {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1}
        _compiled[key] = ov.Core().compile_model(MODEL, "CPU", config)
    requests = getattr(_local, "requests", None)
    if requests is None:
        requests = _local.requests = {}
    if key not in requests:
        requests[key] = _compiled[key].create_infer_request()
    return requests[key]


def small_matmuls(n, threads=None):
    for _ in range(n):
        SMALL @ SMALL


def medium_matmuls(n, threads=None):
    for _ in range(n):
        MEDIUM @ MEDIUM


def inference(n, threads=None):
    request = request_for(threads)
    for _ in range(n):
        request.infer({0: FRAME})


def kmeans(n, threads=None):
    for i in range(n):
        KMeans(n_clusters=8, n_init=1, max_iter=30, random_state=i).fit(POINTS)


def tasks(scale: float):
    """A queue of mixed chunks, as a data pipeline or a server would run."""
    s = lambda k: max(1, int(k * scale))  # noqa: E731
    chunk = [(small_matmuls, s(3000)), (medium_matmuls, s(40)), (inference, s(40)),
             (kmeans, 1), (small_matmuls, s(3000)), (medium_matmuls, s(40))]
    return chunk * 6


def run_threads(task_list, guarded: bool, workers: int) -> float:
    """A thread pool sized to the CPUs, as careful user code has."""
    def work(task):
        fn, n = task
        if not guarded:
            return fn(n)
        with threadguard.budget() as b:
            return fn(n, threads=b.threads)

    with cf.ThreadPoolExecutor(workers) as pool:
        list(pool.map(work, task_list[:workers]))  # start the threads, build requests
        t0 = time.perf_counter()
        list(pool.map(work, task_list))
        return time.perf_counter() - t0


def run_serial_single_threaded(task_list) -> float:
    t0 = time.perf_counter()
    with threadpool_limits(1):
        for fn, n in task_list:
            fn(n, threads=1)
    return time.perf_counter() - t0


def _call(task):
    fn, n = task
    fn(n)
    return os.getpid()


def run_process_pool(task_list, guarded: bool, workers: int) -> float:
    kwargs = {}
    if guarded:
        wb = threadguard.worker_budget(workers)
        kwargs = {"initializer": wb.initializer, "initargs": wb.initargs}
    with cf.ProcessPoolExecutor(workers, **kwargs) as pool:
        list(pool.map(_call, [(small_matmuls, 1)] * workers))  # start the workers
        t0 = time.perf_counter()
        list(pool.map(_call, task_list))
        return time.perf_counter() - t0


_SPIN = """
import os, sys, time
os.environ["OPENBLAS_NUM_THREADS"] = "1"
import numpy as np
a = np.random.default_rng(0).random((320, 320))
t = time.perf_counter()
for _ in range(200):
    a @ a
print(time.perf_counter() - t)
"""


def parallel_efficiency(cpus: int) -> float:
    """How close this machine comes to perfect scaling: one single-threaded
    process alone vs ``cpus`` of them at once (1.0 = perfect). Shared VMs
    and SMT hosts give less, which bounds any program on them."""
    import subprocess
    import sys
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    alone = float(subprocess.run([sys.executable, "-c", _SPIN], capture_output=True,
                                 text=True, env=env).stdout)
    procs = [subprocess.Popen([sys.executable, "-c", _SPIN], stdout=subprocess.PIPE, text=True,
                              env=env) for _ in range(cpus)]
    together = max(float(p.communicate()[0]) for p in procs)
    return alone / together


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=float, default=1.0, help="work per task")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--run", choices=("unguarded", "guarded"),
                        help="run the thread-pool program once, as it is or guarded "
                             "(for threadguard record), instead of the comparison")
    args = parser.parse_args()
    if args.run:
        cpus = threadguard.topology().effective_cpus
        seconds = run_threads(tasks(args.scale), args.run == "guarded", cpus)
        print(f"threads, {args.run}: {seconds:.2f} s")
        return
    cpus = threadguard.topology().effective_cpus
    work = tasks(args.scale)
    run_serial_single_threaded(tasks(0.05))  # warm-up: compile, load, fault in
    rows = {"ideal (serial 1-thread / CPUs)": [], "threads, unguarded": [],
            "threads, guarded": [], "process pool, unguarded": [], "process pool, guarded": []}
    efficiency_rows = []
    for _ in range(args.repeat):
        rows["ideal (serial 1-thread / CPUs)"].append(run_serial_single_threaded(work) / cpus)
        rows["threads, unguarded"].append(run_threads(work, False, cpus))
        rows["threads, guarded"].append(run_threads(work, True, cpus))
        rows["process pool, unguarded"].append(run_process_pool(work, False, cpus))
        rows["process pool, guarded"].append(run_process_pool(work, True, cpus))
        efficiency_rows.append(parallel_efficiency(cpus))
    ideal = statistics.median(rows["ideal (serial 1-thread / CPUs)"])
    print(f"{cpus} effective CPUs; median of {args.repeat} runs (wall seconds)")
    print(f"{'':34} {'seconds':>8} {'/ ideal':>8}")
    rows["parallel efficiency of this machine"] = efficiency_rows
    for name, values in list(rows.items())[:5]:
        m = statistics.median(values)
        print(f"{name:34} {m:8.2f} {m / ideal:8.2f}")
    unguarded = statistics.median(rows["threads, unguarded"])
    guarded = statistics.median(rows["threads, guarded"])
    print(f"guarded threads are {unguarded / guarded:.2f}x faster than unguarded")
    efficiency = statistics.median(rows["parallel efficiency of this machine"])
    print(f"this machine's parallel efficiency ({cpus} single-threaded processes at once vs one "
          f"alone): {efficiency:.2f}; ideal reachable here: {ideal / efficiency:.2f}s, "
          f"guarded threads at {guarded / (ideal / efficiency):.2f}x of it")


if __name__ == "__main__":
    main()
