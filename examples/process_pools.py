"""Each worker process gets an equal share of the CPUs.

multiprocessing.Pool and concurrent.futures.ProcessPoolExecutor take the
same initializer; disjoint=True also gives each worker its own cores.

    python examples/process_pools.py
"""

import concurrent.futures as cf
import multiprocessing as mp
import os

import threadguard


def probe(_):
    import time

    import numpy as np
    from threadpoolctl import threadpool_info
    np.ones((200, 200)) @ np.ones((200, 200))
    time.sleep(0.1)  # let the other worker take a task too
    return (os.getpid(), sorted(os.sched_getaffinity(0)), os.environ.get("OMP_NUM_THREADS"),
            [i["num_threads"] for i in threadpool_info()])


if __name__ == "__main__":
    workers = 2
    shares = threadguard.worker_budget(workers, disjoint=True)
    print(f"{workers} workers, {shares.threads} thread(s) each")

    with mp.Pool(workers, initializer=shares.initializer, initargs=shares.initargs) as pool:
        for pid, cpus, omp, pools in sorted({tuple(map(str, r)) for r in pool.map(probe, range(8))}):
            print(f"multiprocessing.Pool worker {pid}: CPUs {cpus}, OMP_NUM_THREADS={omp}, pools {pools}")

    shares = threadguard.worker_budget(workers)
    with cf.ProcessPoolExecutor(workers, initializer=shares.initializer,
                                initargs=shares.initargs) as pool:
        for pid, cpus, omp, pools in sorted({tuple(map(str, r)) for r in pool.map(probe, range(8))}):
            print(f"ProcessPoolExecutor worker {pid}: CPUs {cpus}, OMP_NUM_THREADS={omp}, pools {pools}")
