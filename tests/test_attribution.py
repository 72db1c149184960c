"""Thread owners on real processes: OpenBLAS, OpenMP runtimes, TBB/OpenVINO, Python.

The expected owner of each thread is known independently of threadguard:
the child lists its threads before and after starting each pool.
"""

from __future__ import annotations


import pytest

import threadguard
from threadguard.attribution import attribute_threads
from procs import intel_libiomp5, llvm_libomp, python_child, sklearn_libgomp

pytestmark = pytest.mark.live

MIXED = """
import time
before = tids()
import numpy as np  # OpenBLAS starts its workers when it is loaded
np.ones((300, 300)) @ np.ones((300, 300))
blas = new_tids(before)

before = tids()
start_openmp(OPENMP_PATH, 3)
openmp = new_tids(before)

worker = threading.Thread(target=time.sleep, args=(600,), name="tg-worker", daemon=True)
worker.start()

ov_threads = []
if WITH_OPENVINO:
    before = tids()
    compiled, request = openvino_request(64)
    request.infer({0: np.ones((1, 64), np.float32)})
    ov_threads = new_tids(before)

from threadguard.attribution import attribute_threads
own = {str(t): o.pool for t, o in attribute_threads().owners.items()}
report(blas=blas, openmp=openmp, python=worker.native_id, ov=ov_threads, own=own)
"""


def run_mixed(openmp_path: str, with_openvino: bool):
    code = MIXED.replace("OPENMP_PATH", repr(openmp_path)).replace(
        "WITH_OPENVINO", repr(with_openvino))
    if with_openvino:
        pytest.importorskip("openvino")
    return python_child(code, env={"OPENBLAS_NUM_THREADS": "3"})


def check(facts: dict, owners: dict, openmp_pool: str, with_openvino: bool):
    assert facts["blas"], "numpy's matmul started no OpenBLAS worker"
    assert {owners[t] for t in facts["blas"]} == {"openblas"}
    assert facts["openmp"], "GOMP_parallel started no OpenMP worker"
    assert {owners[t] for t in facts["openmp"]} == {openmp_pool}
    assert owners[facts["python"]] == "python"
    if with_openvino:
        pools = {owners[t] for t in facts["ov"]}
        assert "tbb" in pools and pools <= {"tbb", "openvino"}


@pytest.mark.openvino
def test_openblas_libgomp_tbb_openvino_and_python_threads():
    gomp = sklearn_libgomp()
    with run_mixed(gomp, True) as child:
        outside = attribute_threads(child.pid)
    facts = child.facts
    own = {int(k): v for k, v in facts["own"].items()}
    check(facts, own, "openmp:libgomp", True)
    check(facts, {t: o.pool for t, o in outside.owners.items()}, "openmp:libgomp", True)
    assert {outside.owners[t].library for t in facts["openmp"]} == {gomp}
    assert outside.owners[child.pid].pool == "main"


@pytest.mark.parametrize("runtime", ["libiomp5", "libomp"])
def test_intel_and_llvm_openmp_workers(runtime):
    path = intel_libiomp5() if runtime == "libiomp5" else llvm_libomp()
    with run_mixed(path, False) as child:
        outside = attribute_threads(child.pid)
    check(child.facts, {t: o.pool for t, o in outside.owners.items()}, f"openmp:{runtime}", False)


def test_python_thread_names_in_process():
    import threading
    import time
    t = threading.Thread(target=time.sleep, args=(2,), name="named-for-test", daemon=True)
    t.start()
    owner = attribute_threads().owners[t.native_id]
    assert owner.pool == "python" and owner.python_name == "named-for-test"


def test_python_thread_names_from_outside_with_py_spy():
    from threadguard.attribution import find_py_spy
    if find_py_spy() is None:
        pytest.skip("py-spy not installed")
    code = """
import time
t = threading.Thread(target=time.sleep, args=(600,), name="seen-by-py-spy", daemon=True)
t.start()
report(tid=t.native_id)
"""
    with python_child(code) as child:
        report = threadguard.inspect(child.pid, interval=0.05)
    owner = report.attribution.owners[child.facts["tid"]]
    assert owner.pool == "python" and owner.python_name == "seen-by-py-spy"


def test_torch_openmp_workers_and_interop_pool():
    pytest.importorskip("torch")
    code = """
before = tids()
import torch
torch.set_num_threads(2)
x = torch.ones(400, 400)
for _ in range(5):
    x @ x
fut = torch.jit._fork(torch.mm, x, x)  # runs on the inter-op pool
torch.jit._wait(fut)
report(new=new_tids(before))
"""
    with python_child(code) as child:
        owners = attribute_threads(child.pid).owners
    new = [owners[t] for t in child.facts["new"] if t in owners]
    pools = {o.pool for o in new}
    assert {"openmp:libgomp", "torch"} <= pools, pools  # torch's OpenMP workers, its inter-op pool
    gomp = {o.library for o in new if o.pool == "openmp:libgomp"}
    assert all("/torch" in path for path in gomp)  # torch's own vendored libgomp
    assert pools <= {"openmp:libgomp", "torch", "openblas", "other"}, pools
