"""joblib.Parallel(n_jobs=2) of scikit-learn KMeans fits, with and without a budget.

Side by side in one run, interleaved: no budget, inside ``threadguard.budget()``
(children keep loky's own share) and inside ``budget(env=True)`` (the budget
exported to the workers, which loky then gives to each of them). Also prints
what each worker's OpenMP runtime was set to.

    python benchmarks/joblib_budget.py [--repeat 5] [--tasks 8]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time

os.environ.setdefault("CI", "true")

import numpy as np  # noqa: E402
from joblib import Parallel, delayed  # noqa: E402

import threadguard  # noqa: E402


def fit(seed: int):
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_info
    X = np.random.RandomState(seed).rand(20_000, 20)
    KMeans(n_clusters=8, n_init=1, random_state=seed).fit(X)
    return next((i["num_threads"] for i in threadpool_info() if i["internal_api"] == "openmp"),
                None)


def run(tasks: int) -> tuple[float, set]:
    start = time.perf_counter()
    threads = Parallel(n_jobs=2)(delayed(fit)(i) for i in range(tasks))
    return time.perf_counter() - start, set(threads)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=8)
    args = parser.parse_args()
    ways = {
        "no budget": contextlib.nullcontext,
        "budget()": threadguard.budget,
        "budget(env=True)": lambda: threadguard.budget(env=True),
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    seen: dict[str, set] = {name: set() for name in ways}
    for _ in range(args.repeat):
        for name, section in ways.items():
            with section():
                run(2)  # loky restarts its workers when their env changes: not timed
                seconds, threads = run(args.tasks)
            times[name].append(seconds)
            seen[name] |= threads
    base = statistics.median(times["no budget"])
    print(f"{args.tasks} KMeans fits on joblib.Parallel(n_jobs=2), {os.cpu_count()} CPUs, "
          f"median of {args.repeat} interleaved runs")
    for name in ways:
        median = statistics.median(times[name])
        print(f"  {name:18} {median:6.2f} s   {median / base:5.2f}x   "
              f"workers' OpenMP threads: {sorted(seen[name])}")


if __name__ == "__main__":
    main()
