"""joblib/loky: give each worker the matching inner thread count.

loky sets the thread variables of its workers from inner_max_num_threads;
threadguard says what that number should be for n workers on this machine.

    python examples/joblib_loky.py
"""

import os

from joblib import Parallel, delayed, parallel_config

import threadguard


def probe(_):
    from threadpoolctl import threadpool_info
    import numpy as np
    np.ones((100, 100)) @ np.ones((100, 100))
    return os.getpid(), [i["num_threads"] for i in threadpool_info()]


if __name__ == "__main__":
    n_jobs = 2
    shares = threadguard.worker_budget(n_jobs)
    with parallel_config(backend="loky", inner_max_num_threads=shares.inner_max_num_threads):
        results = Parallel(n_jobs=n_jobs)(delayed(probe)(i) for i in range(8))
    for pid, pools in sorted({(pid, tuple(p)) for pid, p in results}):
        print(f"loky worker {pid}: pools {list(pools)} (inner_max_num_threads="
              f"{shares.inner_max_num_threads})")
