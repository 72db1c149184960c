"""NumPy matmul tasks on a 2-worker Dask LocalCluster, with and without
threadguard's plugin, side by side in one run (interleaved, median).

The nanny's own thread variables are cleared (as a deployment that sets its
own environment would have), so OpenBLAS sizes itself to the whole host in
every worker and task thread.

    python benchmarks/dask_matmul.py [--tasks 64] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("CI", "true")

import dask  # noqa: E402
from distributed import Client, LocalCluster  # noqa: E402

from threadguard.integrations import dask as tg_dask  # noqa: E402


def matmul(seed: int) -> float:
    import numpy as np
    a = np.random.default_rng(seed).random((500, 500))
    for _ in range(4):
        a = a @ a / 500
    return float(a.sum())


def timed(client, tasks: int) -> float:
    t0 = time.perf_counter()
    client.gather(client.map(matmul, range(tasks), pure=False))
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    runs = {"without the plugin": [], "with the plugin": []}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": {}}):
        with LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            timed(client, 4)  # warm-up: workers import NumPy
            for _ in range(args.repeat):
                runs["without the plugin"].append(timed(client, args.tasks))
                tg_dask.register(client)
                runs["with the plugin"].append(timed(client, args.tasks))
                client.unregister_worker_plugin("threadguard")
    off, on = (statistics.median(v) for v in runs.values())
    print(f"{args.tasks} matmul tasks, 2 workers x 1 task thread, median of {args.repeat}")
    print(f"  without the plugin   {off:6.2f} s")
    print(f"  with the plugin      {on:6.2f} s")
    print(f"  speed-up             {off / on:6.2f}x")


if __name__ == "__main__":
    main()
