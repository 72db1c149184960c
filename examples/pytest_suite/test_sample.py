"""A sample suite for the threadguard pytest plugin.

    pytest --threadguard -n 2 examples/pytest_suite

Each xdist worker's pools are capped to its share of the CPUs; the summary
shows every worker's budget and the tests that leaked threads.
"""

import os
import threading

import pytest


def test_numpy_runs_inside_the_budget():
    import numpy as np
    from threadpoolctl import threadpool_info
    np.ones((200, 200)) @ np.ones((200, 200))
    budget = int(os.environ["OMP_NUM_THREADS"])
    assert all(i["num_threads"] <= budget for i in threadpool_info())


def test_leaks_a_python_thread():
    stop = threading.Event()
    threading.Thread(target=stop.wait, args=(30,), name="forgotten-worker", daemon=True).start()


@pytest.mark.threadguard(max_threads=1)
def test_with_one_thread(thread_budget):
    assert thread_budget.threads == 1


def test_clean(thread_census):
    assert thread_census.new_threads() == []
