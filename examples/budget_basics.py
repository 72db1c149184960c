"""threadguard.budget(): every pool capped, then everything put back.

    python examples/budget_basics.py
"""

import os

import numpy as np
from threadpoolctl import threadpool_info

import threadguard


def pools():
    return {i["internal_api"]: i["num_threads"] for i in threadpool_info()}


a = np.random.rand(500, 500)
print("before:", pools(), "OMP_NUM_THREADS =", os.environ.get("OMP_NUM_THREADS"))

with threadguard.budget(1) as b:  # also: @threadguard.budget(1) on a function
    a @ a
    print("inside:", pools(), "OMP_NUM_THREADS =", os.environ.get("OMP_NUM_THREADS"))
    for applied in b.report():
        print(f"  {applied.target:12} {applied.scope:8} {applied.before!s:>6} -> "
              f"{applied.after!s:<4} {applied.status}")

print("after: ", pools(), "OMP_NUM_THREADS =", os.environ.get("OMP_NUM_THREADS"))

# Children size themselves as they would without threadguard (joblib/loky keeps
# its own cpu_count() // n_jobs); env=True also hands them this budget.
with threadguard.budget(1, env=True):
    print("env=True:", pools(), "OMP_NUM_THREADS =", os.environ.get("OMP_NUM_THREADS"))

plan = threadguard.budget(mode="latency").plan
print(f"latency plan here: {plan.threads} threads on CPUs {list(plan.cpus)} ({plan.why})")
