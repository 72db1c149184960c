"""budget() on real runtimes, each scenario in a fresh interpreter.

Limits, environment and affinity are process-global, so every check runs in
a child that loads real libraries (NumPy's OpenBLAS, scikit-learn's GNU
OpenMP, Intel OpenMP, LLVM OpenMP) and reports what it saw.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import threadguard
from procs import intel_libiomp5, llvm_libomp, python_child, sklearn_libgomp

pytestmark = pytest.mark.live

SNAPSHOT = """
import os, subprocess, sys
from threadpoolctl import threadpool_info
def snapshot():
    return {
        "pools": sorted((i["internal_api"], i["prefix"], i["num_threads"]) for i in threadpool_info()),
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")},
        "child_env": subprocess.run([sys.executable, "-c", "import os; print(os.environ.get('OMP_NUM_THREADS'))"],
                                    capture_output=True, text=True).stdout.strip(),
        "affinity": sorted(os.sched_getaffinity(0)),
    }
"""


def test_budget_one_caps_every_pool_and_restores_everything():
    gomp = sklearn_libgomp()
    code = SNAPSHOT + f"""
import numpy, ctypes, threadguard
start_openmp({gomp!r}, 2)
before = snapshot()
with threadguard.budget(1, env=True) as b:
    inside = snapshot()
    applied = [(a.target, a.status) for a in b.report()]
after = snapshot()
with threadguard.budget(1):
    default_env = snapshot()
report(before=before, inside=inside, after=after, applied=applied, default_env=default_env,
       final=snapshot())
"""
    with python_child(code, env={"OPENBLAS_NUM_THREADS": "2", "OMP_NUM_THREADS": "2",
                                 "MKL_NUM_THREADS": "3"}) as child:
        f = child.facts
    assert {p[0] for p in f["inside"]["pools"]} == {"openblas", "openmp"}
    assert all(n == 1 for _, _, n in f["inside"]["pools"])
    assert f["inside"]["env"] == {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                                  "MKL_NUM_THREADS": "1"}
    assert f["inside"]["child_env"] == "1"
    assert f["after"] == f["before"] == f["final"]
    assert f["before"]["env"]["MKL_NUM_THREADS"] == "3"
    # Without env=True children and the environment are left alone.
    assert f["default_env"]["env"] == f["before"]["env"]
    assert f["default_env"]["child_env"] == f["before"]["child_env"]
    assert all(n == 1 for _, _, n in f["default_env"]["pools"])
    assert ("openblas", "applied") in [tuple(a) for a in f["applied"]]


def test_restored_on_exceptions_and_as_a_decorator():
    code = SNAPSHOT + """
import numpy, threadguard
before = snapshot()
try:
    with threadguard.budget(1, env=True):
        raise RuntimeError("boom")
except RuntimeError:
    pass
after_error = snapshot()

@threadguard.budget(1, env=True)
def work():
    return snapshot()
inside = work()
report(before=before, after_error=after_error, inside=inside, after=snapshot())
"""
    with python_child(code, env={"OPENBLAS_NUM_THREADS": "2"}) as child:
        f = child.facts
    assert f["after_error"] == f["before"] == f["after"]
    assert f["inside"]["pools"] == [["openblas", "libscipy_openblas", 1]] or all(
        p[2] == 1 for p in f["inside"]["pools"])
    assert f["inside"]["env"]["OMP_NUM_THREADS"] == "1"


def test_nested_budget_never_exceeds_the_outer():
    code = """
import numpy, threadguard
from threadpoolctl import threadpool_info
with threadguard.budget(1, allow_oversubscription=True) as outer:
    with threadguard.budget(2) as inner:
        seen = [i["num_threads"] for i in threadpool_info()]
        granted = inner.threads
    back = [i["num_threads"] for i in threadpool_info()]
report(seen=seen, granted=granted, back=back)
"""
    with python_child(code, env={"OPENBLAS_NUM_THREADS": "2"}) as child:
        f = child.facts
    assert f["granted"] == 1 and f["seen"] == [1] and f["back"] == [1]


def test_ledger_shares_cpus_between_concurrent_sections(tmp_path):
    # An 8-CPU machine (a built tree), two Python threads inside budgets.
    from machine_tree import machine
    root = machine(tmp_path, 8)
    gomp = sklearn_libgomp()
    code = f"""
import threading, ctypes, numpy, threadguard
gomp = start_openmp({gomp!r}, 2)
topo = threadguard.topology(fsroot={str(root)!r})
from threadpoolctl import threadpool_info
blas = lambda: [i["num_threads"] for i in threadpool_info() if i["internal_api"] == "openblas"][0]
a_in, b_in, a_measured, b_out = (threading.Event() for _ in range(4))
facts = {{"original": blas()}}
def section_a():
    with threadguard.budget(topology=topo, allow_oversubscription=True) as a:
        facts["a_alone"] = (a.threads, blas(), gomp.omp_get_max_threads())
        a_in.set(); b_in.wait()
        facts["a_with_b"] = (a.threads, blas(), gomp.omp_get_max_threads())
        a_measured.set(); b_out.wait()
        facts["a_after_b"] = blas()
def section_b():
    a_in.wait()
    with threadguard.budget(topology=topo) as b:
        facts["b"] = (b.threads, b.thread_limit, blas(), gomp.omp_get_max_threads())
        b_in.set(); a_measured.wait()
    b_out.set()
ta, tb = threading.Thread(target=section_a), threading.Thread(target=section_b)
ta.start(); tb.start(); ta.join(); tb.join()
facts["after"] = blas()
report(**facts)
"""
    with python_child(code, env={"OPENBLAS_NUM_THREADS": "8"}) as child:
        f = child.facts
    assert f["a_alone"] == [8, 8, 8]
    # B enters: each section's share is 8 // 2; OpenBLAS (one value per process)
    # drops to 4 at once; A's OpenMP limit is A's thread's own: B takes what is left.
    assert f["b"][0] == 4 and f["b"][2] == 4
    assert f["b"][1] + 8 <= 8 + 1  # never above the CPUs but for B's own thread
    assert f["a_with_b"][1] == 4
    assert f["a_after_b"] == 8  # B left: A's process-wide share grows back
    assert f["after"] == f["original"]  # put back as it was


def test_library_loaded_after_the_first_entry_is_capped():
    gomp = sklearn_libgomp()
    code = f"""
import numpy, ctypes, threadguard
with threadguard.budget(1):
    pass
lib = start_openmp({gomp!r}, 2)  # the dynamic linker's list changes here
with threadguard.budget(1) as b:
    inside = lib.omp_get_max_threads()
    names = [a.target for a in b.report()]
report(inside=inside, after=lib.omp_get_max_threads(), names=names)
"""
    with python_child(code, env={"OMP_NUM_THREADS": "2"}) as child:
        f = child.facts
    assert f["inside"] == 1 and f["after"] == 2
    assert "libgomp" in f["names"]


def test_intel_and_llvm_openmp_together_only_one_is_driven():
    iomp, omp = intel_libiomp5(), llvm_libomp()
    code = f"""
import ctypes, threadguard
ctypes.CDLL({iomp!r}); ctypes.CDLL({omp!r})
with threadguard.budget(1) as b:
    rows = [(a.target, a.status, a.note) for a in b.report() if a.target in ("libiomp5", "libomp")]
report(rows=rows)
"""
    with python_child(code) as child:
        rows = {r[0]: r for r in child.facts["rows"]}
    assert rows["libiomp5"][1] == "applied"
    assert rows["libomp"][1] == "skipped" and "abort" in rows["libomp"][2]


def test_a_library_refusing_a_limit_is_reported_not_fatal():
    code = """
import numpy, threadguard
with threadguard.budget(65536, allow_oversubscription=True) as b:
    rows = [(a.target, a.status, a.after) for a in b.report() if a.target == "openblas"]
report(rows=rows)
"""
    with python_child(code) as child:
        (row,) = child.facts["rows"]
    assert row[1] == "refused" and row[2] < 65536  # OpenBLAS caps at its build's maximum


def test_pin_restricts_every_thread_and_restores(tmp_path):
    code = """
import os, threading, time, threadguard
stop = threading.Event()
worker = threading.Thread(target=stop.wait); worker.start()
before = sorted(os.sched_getaffinity(worker.native_id))
with threadguard.budget(1, pin=True) as b:
    inside = sorted(os.sched_getaffinity(worker.native_id)), sorted(os.sched_getaffinity(0))
    cpus = list(b.plan.cpus)
after = sorted(os.sched_getaffinity(worker.native_id)), sorted(os.sched_getaffinity(0))
stop.set()
report(before=before, inside=inside, cpus=cpus, after=after)
"""
    with python_child(code) as child:
        f = child.facts
    assert len(f["cpus"]) == 1
    assert f["inside"] == [f["cpus"], f["cpus"]]
    assert f["after"] == [f["before"], f["before"]]


def test_memory_policy_bind_and_restore():
    code = """
from threadguard import numa
before = numa.get_mempolicy()
applied = []
saved = numa.bind_memory((0,), applied)
inside = numa.get_mempolicy()
numa.restore_mempolicy(saved)
report(before=before, inside=inside, after=numa.get_mempolicy(), applied=[a.status for a in applied])
"""
    with python_child(code) as child:
        f = child.facts
    if f["before"] is None:
        pytest.skip("get_mempolicy not supported on this machine")
    assert f["inside"] == [2, [0]]  # MPOL_BIND to node 0
    assert f["after"] == f["before"]


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_bad_thread_counts_raise_value_error(bad):
    with pytest.raises(ValueError, match=repr(bad) if not isinstance(bad, int) or isinstance(bad, bool) else str(bad)):
        threadguard.budget(bad)


def test_unknown_mode_and_socket():
    with pytest.raises(ValueError, match="mode must be one of"):
        threadguard.budget(mode="fast")
    with pytest.raises(ValueError, match="socket must be one of"):
        threadguard.budget(socket=99)


def test_more_threads_than_cpus_warns_unless_allowed():
    too_many = threadguard.topology().effective_cpus + 3
    with pytest.warns(threadguard.OversubscriptionWarning, match="effective CPUs"):
        with threadguard.budget(too_many):
            pass
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with threadguard.budget(too_many, allow_oversubscription=True) as b:
            assert b.threads == too_many


WORKERS = """
import os, concurrent.futures as cf, multiprocessing as mp, threadguard
def probe(_):
    import time
    from threadpoolctl import threadpool_info
    import numpy
    time.sleep(0.2)
    return (os.getpid(), tuple(sorted(os.sched_getaffinity(0))), os.environ.get("OMP_NUM_THREADS"),
            tuple(i["num_threads"] for i in threadpool_info()))
if __name__ == "__main__":
    wb = threadguard.worker_budget(2, disjoint=True)
    with cf.ProcessPoolExecutor(2, initializer=wb.initializer, initargs=wb.initargs) as ex:
        futures = sorted(set(ex.map(probe, range(6))))
    wb2 = threadguard.worker_budget(2)
    with mp.get_context("spawn").Pool(2, initializer=wb2.initializer, initargs=wb2.initargs) as pool:
        spawned = sorted(set(pool.map(probe, range(6))))
    print(repr((wb.threads, futures, spawned)))
"""


def test_worker_budget_in_process_pools(tmp_path):
    script = tmp_path / "workers.py"
    script.write_text(WORKERS)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         env=dict(os.environ, CI="true", PYTHONPATH=os.path.dirname(
                             os.path.dirname(os.path.abspath(__file__)))), timeout=120)
    assert out.returncode == 0, out.stderr
    threads, futures, spawned = eval(out.stdout)
    cpus = threadguard.topology().effective_cpus
    assert threads == max(1, cpus // 2)
    for results in (futures, spawned):
        pids = {r[0] for r in results}
        assert len(pids) == 2
        assert all(r[2] == str(threads) and all(n == threads for n in r[3]) for r in results)
    if cpus >= 2:  # disjoint: each worker on its own CPUs
        sets = [set(r[1]) for r in {r[0]: r for r in futures}.values()]
        assert not (sets[0] & sets[1])


def test_torch_pools_capped_and_restored():
    pytest.importorskip("torch")
    code = """
import torch, threadguard
before = (torch.get_num_threads(), torch.get_num_interop_threads())
torch.ones(200, 200) @ torch.ones(200, 200)
with threadguard.budget(1) as b:
    inside = torch.get_num_threads()
    status = [a.status for a in b.report() if a.target == "torch"]
report(before=before, inside=inside, after=torch.get_num_threads(), status=status)
"""
    with python_child(code, env={"OMP_NUM_THREADS": "2"}) as child:
        f = child.facts
    assert f["inside"] == 1 and f["status"] == ["applied"]
    assert f["after"] == f["before"][0]


def test_tbb_and_openmp_together_make_children_wait_passively():
    pytest.importorskip("openvino")
    gomp = sklearn_libgomp()
    code = f"""
import os, threadguard
start_openmp({gomp!r}, 2)
compiled, request = openvino_request(32)  # loads OpenVINO's TBB
with threadguard.budget(1, env=True) as b:
    inside = os.environ.get("OMP_WAIT_POLICY")
    noted = [a.note for a in b.report() if a.target == "OMP_WAIT_POLICY"]
report(inside=inside, after=os.environ.get("OMP_WAIT_POLICY"), noted=noted)
"""
    with python_child(code) as child:
        f = child.facts
    assert f["inside"] == "PASSIVE" and f["after"] is None
    assert f["noted"] and "TBB" in f["noted"][0]


def test_opencv_and_numba_pools_capped_and_restored():
    pytest.importorskip("cv2")
    pytest.importorskip("numba")
    code = """
import cv2, numba, numpy as np, threadguard
@numba.njit(parallel=True)
def total(a):
    s = 0.0
    for i in numba.prange(a.shape[0]):
        s += a[i]
    return s
total(np.ones(1000))  # starts numba's threading layer
before = (cv2.getNumThreads(), numba.get_num_threads())
with threadguard.budget(1) as b:
    inside = (cv2.getNumThreads(), numba.get_num_threads())
    rows = sorted((a.target, a.scope, a.status) for a in b.report() if a.target in ("opencv", "numba"))
    total(np.ones(1000))
report(before=before, inside=inside, after=(cv2.getNumThreads(), numba.get_num_threads()), rows=rows)
"""
    with python_child(code, env={"OMP_NUM_THREADS": "2", "NUMBA_NUM_THREADS": "2"}) as child:
        f = child.facts
    assert f["inside"] == [1, 1]
    assert f["after"] == f["before"]
    assert f["rows"] == [["numba", "thread", "applied"], ["opencv", "process", "applied"]]


def test_using_the_guard_leaves_the_environment_as_it_was():
    # threadpoolctl sets KMP_DUPLICATE_LIB_OK when imported; the guard must not.
    code = """
import os, numpy, threadguard
before = dict(os.environ)
with threadguard.budget(1):
    pass
threadguard.inspect(interval=0.01)
report(same=dict(os.environ) == before, kmp=os.environ.get("KMP_DUPLICATE_LIB_OK"))
"""
    with python_child(code, env={"KMP_DUPLICATE_LIB_OK": None}) as child:
        assert child.facts == {"same": True, "kmp": None}


def test_a_lone_section_reports_and_restores_as_one_entered_beside_another():
    # A section entered while no other is inside takes a shorter way; one
    # entered while another thread is inside takes the ledger's general way.
    # Both must report the same rows and leave the same limits, also when the
    # other thread comes and goes while the lone section is inside.
    gomp = sklearn_libgomp()
    code = f"""
import threading, numpy, threadguard
from threadpoolctl import threadpool_info
start_openmp({gomp!r}, 2)
def pools():
    return sorted((i["internal_api"], i["num_threads"]) for i in threadpool_info())
def rows(b):
    return sorted((a.target, a.scope, a.before, a.after, a.status) for a in b.report())
before = pools()
with threadguard.budget(1) as b:
    lone = rows(b)
inside, leave = threading.Event(), threading.Event()
def other():
    with threadguard.budget(2):
        inside.set(); leave.wait()
t = threading.Thread(target=other); t.start(); inside.wait()
with threadguard.budget(1) as b:
    beside = rows(b)
leave.set(); t.join()
after_beside = pools()
inside.clear(); leave.clear()
with threadguard.budget(1) as b:  # lone at entry; the other comes and goes inside
    t = threading.Thread(target=other); t.start(); inside.wait(); leave.set(); t.join()
    still = pools()
after_mixed = pools()
report(before=before, lone=lone, beside=beside, after_beside=after_beside, still=still,
       after_mixed=after_mixed, cpus=len(os.sched_getaffinity(0)))
"""
    with python_child(code, env={"OPENBLAS_NUM_THREADS": None, "OMP_NUM_THREADS": None}) as child:
        f = child.facts
    if f["cpus"] < 2:
        pytest.skip("needs 2 CPUs to tell a grant of 1 from the original")
    assert f["lone"] and f["lone"] == f["beside"]
    assert {(r[0], r[3], r[4]) for r in f["lone"]} == {("openblas", 1, "applied"),
                                                      ("libgomp", 1, "applied")}
    assert f["after_beside"] == f["before"] == f["after_mixed"]
    assert dict(f["still"])["openblas"] == 1  # the other thread's exit kept this one's cap


def test_a_process_with_no_pool_library_does_not_import_threadpoolctl_and_finds_one_loaded_later():
    code = """
import json, sys, threadguard
with threadguard.budget(1):
    pass
before = "threadpoolctl" in sys.modules
import numpy
with threadguard.budget(1) as b:
    capped = {r.target: r.after for r in b.report() if r.status == "applied"}
print(json.dumps([before, "threadpoolctl" in sys.modules, capped]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, CI="true", OPENBLAS_NUM_THREADS="2"))
    assert out.returncode == 0, out.stderr
    import json
    before, after, capped = json.loads(out.stdout)
    assert before is False and after is True
    assert capped.get("openblas") == 1, capped
