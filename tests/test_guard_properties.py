"""Property-based tests of the guard: random sequences of nested, reused and
concurrent budgets in several real threads, exits in any order, exits from
the wrong thread, exceptions, a runtime loaded mid-section and fork inside
a section, host-scoped sections beside another participant of the host
ledger (its grant moves the limits mid-section). After each sequence every
pool, every thread's own OpenMP limit, the thread variables, every thread's
affinity and memory policy must be exactly as before, no section may be left
in the ledger and this process may hold no slot of the host ledger.

Hypothesis runs inside a fresh interpreter (limits are process-global), on
NumPy's OpenBLAS, scikit-learn's GNU OpenMP and Intel's OpenMP loaded late.
"""

from __future__ import annotations

import os

import pytest

from procs import intel_libiomp5, python_child, sklearn_libgomp

pytestmark = [pytest.mark.live, pytest.mark.slow]

PROPERTY = """
import os, subprocess, sys, traceback
sys.path.insert(0, {tests!r})
# Another participant of the host ledger for the whole run: host-scoped
# sections here get half the CPUs, or the whole when it is gone.
other = subprocess.Popen([sys.executable, "-c",
    "import sys, threadguard; threadguard.budget(scope='host').__enter__(); sys.stdin.read()"],
    stdin=subprocess.PIPE)
import numpy
from hypothesis import HealthCheck, given, settings, strategies as st
from guard_driver import Driver, host_cover_problems, pools, snapshot

drv = Driver(3, {gomp!r})
initial = snapshot(drv.workers)
initial_env = dict(initial["env"])

thread = st.integers(0, 2)
step = {steps}

failures = []

@settings(max_examples={examples}, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(st.lists(step, min_size={min_size}, max_size=14))
def sequence(steps):
    try:
        for op, who, *args in steps:
            if op == "enter":
                threads, env, pin, reuse, scope = args
                drv.enter(who, threads, env, pin, reuse, scope)
            elif op == "exit":
                drv.exit(who, args[0])
            elif op == "exit_elsewhere":
                drv.exit_elsewhere(who, args[0])
            elif op == "raise_inside":
                assert drv.raise_inside(who, args[0]) == "raised"
            elif op == "load":
                # Only while no section exports variables: a runtime started under
                # exported ones keeps them as every new thread's default (see docs).
                if {{k: os.environ.get(k) for k in initial_env}} == initial_env:
                    drv.load_runtime(who, {iomp!r})
            elif op == "fork":
                assert drv.fork(who) == "ok"
            assert host_cover_problems() == [], host_cover_problems()
            now = pools()
            if initial["sections"] == 0 and not any(w.entered for w in drv.workers):
                assert now == initial["pools"], (now, initial["pools"])
            else:
                assert all(n >= 1 for _, n in now), now
    finally:
        drv.unwind()
    after = snapshot(drv.workers)
    assert after == initial, {{k: (initial[k], after[k]) for k in after if after[k] != initial[k]}}
    late = drv.late_limits()
    assert len(set(late)) <= 1, late  # every worker as a thread that never entered a budget

try:
    sequence()
except Exception:
    failures.append(traceback.format_exc())
other.stdin.close()
other.wait()
report(failures=failures)
drv.close()
"""


EVERY_STEP = """st.one_of(
    st.tuples(st.just("enter"), thread, st.integers(1, 3), st.booleans(), st.booleans(),
              st.booleans(), st.sampled_from(["process", "host"])),
    st.tuples(st.just("exit"), thread, st.integers(0, 5)),
    st.tuples(st.just("exit_elsewhere"), thread, thread),
    st.tuples(st.just("raise_inside"), thread, st.integers(1, 3)),
    st.tuples(st.just("load"), thread),
    st.tuples(st.just("fork"), thread),
)"""

# Host-scoped sections mostly, entered and left in any order (no env, no reuse).
HOST_STEPS = """st.one_of(
    st.tuples(st.just("enter"), thread, st.integers(1, 3), st.just(False), st.booleans(),
              st.just(False), st.sampled_from(["host", "host", "process"])),
    st.tuples(st.just("exit"), thread, st.integers(0, 5)),
)"""


def run_property(tmp_path, steps: str, min_size: int = 0) -> list:
    code = PROPERTY.format(tests=os.path.dirname(os.path.abspath(__file__)),
                           gomp=sklearn_libgomp(), iomp=intel_libiomp5(), steps=steps,
                           min_size=min_size,
                           examples=int(os.environ.get("THREADGUARD_PROPERTY_EXAMPLES", "60")))
    with python_child(code, env={"OMP_NUM_THREADS": None, "OPENBLAS_NUM_THREADS": None,
                                 "THREADGUARD_LEDGER": str(tmp_path / "host.ledger")},
                      timeout=600) as child:
        return child.facts["failures"]


def test_random_sequences_leave_everything_as_it_was(tmp_path):
    failures = run_property(tmp_path, EVERY_STEP)
    assert not failures, failures[0]


def test_host_scoped_sections_in_any_order_stay_covered_and_give_everything_back(tmp_path):
    """Host-scoped sections in three threads, entered and left in any order:
    after every step each section that holds nothing of its own is inside
    a live hold of this process that asks as much (the hold stays while
    such sections are inside, even when its own section left), every live
    hold is held in the host ledger, and at the end nothing is held."""
    failures = run_property(tmp_path, HOST_STEPS, min_size=2)
    assert not failures, failures[0]
