"""inspect() and the CLI, end to end on real processes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import threadguard
from threadguard import cli, inspection
from hwloc_expected import cases, expected, unpack
from procs import python_child

ROOT = Path(__file__).parents[1]

NUMPY_AND_OPENVINO = """
import numpy as np
compiled, request = openvino_request()
a = np.random.rand(400, 400)
stop = threading.Event()
def work():
    x = np.ones((1, 256), np.float32)
    while not stop.is_set():
        a @ a
        request.infer({0: x})
t = threading.Thread(target=work, daemon=True)
t.start()
report()
stop.set()
"""


def run_cli(*args, env=None, **kw):
    return subprocess.run([sys.executable, "-m", "threadguard", *args], capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=str(ROOT), **(env or {})),
                          **kw)


@pytest.mark.live
@pytest.mark.openvino
def test_inspect_json_of_numpy_and_openvino_process():
    pytest.importorskip("openvino")
    with python_child(NUMPY_AND_OPENVINO, env={"OPENBLAS_NUM_THREADS": "2"}) as child:
        out = run_cli("inspect", "--json", "--pid", str(child.pid), "--interval", "0.3")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["schema"] == "threadguard.report/1"
    assert report["process"]["pid"] == child.pid
    names = [r["name"] for r in report["runtimes"]]
    assert "openblas" in names and "libtbb" in names
    assert report["runtimes_order_source"] == "r_debug link_map chain"
    pools = {p["library"]: p for p in report["pools"]}
    assert pools["openblas"]["threads_observed"] >= 1
    assert pools["tbb"]["threads_observed"] >= 1
    owners = {t["pool"] for t in report["threads"]}
    assert {"main", "openblas", "tbb"} <= owners
    assert report["process"]["threads_active"] >= 1
    assert report["topology"]["effective_cpus"] >= 1


IN_PROCESS_POOLS = """
import numpy as np
compiled, request = openvino_request()
for _ in range(200):  # TBB starts its workers asynchronously
    request.infer({0: np.ones((1, 256), np.float32)})
    if len(tids()) >= 5:  # main, OpenBLAS worker, 2 OpenVINO threads, a TBB worker
        break
np.ones((100, 100)) @ np.ones((100, 100))
import threadguard
r = threadguard.inspect(interval=0.05)
report(pools=[[p.library, p.api, p.num_threads, p.threads_observed] for p in r.pools])
"""


@pytest.mark.live
@pytest.mark.openvino
def test_in_process_pools_have_their_configured_sizes():
    pytest.importorskip("openvino")
    with python_child(IN_PROCESS_POOLS, env={"OPENBLAS_NUM_THREADS": "2"}) as child:
        pools = {p[0]: p for p in child.facts["pools"]}
    assert pools["openblas"][2] == 2 and pools["openblas"][3] == 1  # caller + 1 worker
    assert pools["tbb"][2] == len(os.sched_getaffinity(0))  # TBB sizes to the allowed CPUs
    assert pools["tbb"][3] >= 1


def test_every_report_field_is_documented():
    doc = (ROOT / "docs" / "report-schema.md").read_text()
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", doc, re.M))
    report = threadguard.inspect(interval=0.01).to_dict()
    keys = set(report)
    for section in ("topology", "process"):
        keys |= set(report[section])
    for section in ("threads", "runtimes", "pools"):
        for item in report[section]:
            keys |= set(item)
    missing = keys - documented
    assert not missing, f"fields missing from docs/report-schema.md: {sorted(missing)}"


def test_missing_pid_is_one_line_and_exit_2():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    out = run_cli("inspect", "--pid", str(proc.pid))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and str(proc.pid) in lines[0] and "does not exist" in lines[0]
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("args", [
    ["inspect", "--pid", "abc"], ["inspect", "--pid", "-3"], ["inspect", "--interval", "-1"],
    ["topology", "--fsroot", "/no/such/dir"], ["frobnicate"], [],
])
def test_usage_errors_exit_2_without_traceback(args):
    out = run_cli(*args)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr


@pytest.mark.live
def test_unreadable_process_is_partial_with_reasons_not_an_error():
    if os.geteuid() != 0:
        pytest.skip("needs root to drop CAP_SYS_PTRACE from the inspector")
    from test_runtimes import NON_DUMPABLE, _drop_ptrace_capability
    with python_child(NON_DUMPABLE) as child:
        out = run_cli("inspect", "--json", "--pid", str(child.pid), "--interval", "0.05",
                      preexec_fn=_drop_ptrace_capability)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["runtimes_order_source"].startswith("address order")
    assert report["threads"] and {t["pool"] for t in report["threads"]} <= {"main", "unattributed"}
    unattributed = [t for t in report["threads"] if t["pool"] == "unattributed"]
    assert unattributed and all("ptrace" in t["attribution"] for t in unattributed)
    assert any("load order" in n and "ptrace" in n for n in report["notes"])


def _become_nobody():
    os.setgid(65534)
    os.setuid(65534)


@pytest.mark.live
def test_another_users_process_gives_unknowns_with_reasons():
    if os.geteuid() != 0:
        pytest.skip("needs root to start an inspector as another user")
    try:
        check = subprocess.run([sys.executable, "-c", "import threadguard, psutil"],
                               preexec_fn=_become_nobody, capture_output=True,
                               env=dict(os.environ, PYTHONPATH=str(ROOT))).returncode
    except PermissionError:
        check = 1
    if check != 0:
        pytest.skip("this interpreter cannot run as user nobody (installed under a private home)")
    with python_child("report()") as child:
        out = run_cli("inspect", "--json", "--pid", str(child.pid), "--interval", "0.05",
                      preexec_fn=_become_nobody)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["ld_preload"] is None
    assert any("environment" in n and "permission" in n for n in report["notes"])
    assert report["process"]["threads_total"] >= 1


def test_topology_json_from_a_dump_matches_hwloc(tmp_path):
    case = next(c for c in cases() if c.name == "16em64t-4s2c2t")
    root = unpack(case, tmp_path)
    exp = expected(case)
    out = run_cli("topology", "--json", env={"THREADGUARD_FSROOT": str(root)})
    assert out.returncode == 0, out.stderr
    topo = json.loads(out.stdout)
    assert len(topo["packages"]) == len(exp.packages)
    assert len(topo["cores"]) == len(exp.cores)
    assert set(topo["online_cpus"]) == exp.pus
    assert topo["fsroot"] == str(root)


def test_console_views_render(tmp_path):
    out = run_cli("inspect", "--interval", "0.05", env={"NO_COLOR": "1"})
    assert out.returncode == 0, out.stderr
    assert "effective CPUs" in out.stdout and "Threads by owner" in out.stdout
    assert "\x1b[" not in out.stdout  # no colour codes when not a terminal


def test_python_dash_m_and_console_script_agree():
    out = run_cli("--version")
    assert out.returncode == 0 and threadguard.__version__ in out.stdout


def test_other_platforms_get_what_psutil_and_threadpoolctl_know(monkeypatch, capsys):
    monkeypatch.setattr(inspection, "IS_LINUX", False)
    monkeypatch.setattr(sys, "platform", "darwin")
    report = threadguard.inspect(interval=0.01)
    data = json.loads(report.to_json())
    assert data["topology"] is None
    assert data["process"]["threads_total"] >= 1
    assert any("only on Linux" in n for n in data["notes"])
    assert cli.main(["inspect", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["schema"] == "threadguard.report/1"


@pytest.mark.live
def test_pools_of_imported_libraries_are_reported():
    pytest.importorskip("cv2")
    pytest.importorskip("numba")
    code = """
import cv2, numba, threadguard
cv2.setNumThreads(2)
r = threadguard.inspect(interval=0.01)
report(pools={p.library: [p.num_threads, p.source, list(p.notes)] for p in r.pools})
"""
    with python_child(code, env={"NUMBA_NUM_THREADS": "2"}) as child:
        pools = child.facts["pools"]
    assert pools["opencv"][0] == 2
    # numba's layer has not started: its configured size is reported, not started
    assert pools["numba"][0] == 2 and "not started" in " ".join(pools["numba"][2])


def test_importing_threadguard_loads_and_changes_nothing():
    code = ("import os, sys; before = dict(os.environ); import threadguard; "
            "heavy = [m for m in ('numpy', 'openvino', 'torch', 'threadpoolctl', 'rich') if m in sys.modules]; "
            "print(heavy, dict(os.environ) == before)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.stdout.strip() == "[] True", out.stderr


@pytest.mark.live
def test_inspecting_intel_and_llvm_openmp_together_does_not_abort():
    # threadpoolctl#41: asking both runtimes for their thread count aborts the
    # process (OMP: Error #15) unless KMP_DUPLICATE_LIB_OK hides it.
    from procs import intel_libiomp5, llvm_libomp
    code = f"""
import ctypes, threadguard
ctypes.CDLL({intel_libiomp5()!r}); ctypes.CDLL({llvm_libomp()!r})
r = threadguard.inspect(interval=0.01)
report(pools={{p.library: [p.num_threads, list(p.notes)] for p in r.pools}},
       runtimes=[x.name for x in r.runtimes])
"""
    with python_child(code, env={"KMP_DUPLICATE_LIB_OK": None}) as child:
        facts = child.facts
    assert facts["runtimes"][-2:] == ["libiomp5", "libomp"]
    assert facts["pools"]["libiomp5"][0] >= 1
    assert facts["pools"]["libomp"][0] is None and "abort" in facts["pools"]["libomp"][1][0]


@pytest.mark.live
def test_openblas_size_of_another_process_is_read_from_its_memory():
    code = "import numpy as np\nnp.ones((50, 50)) @ np.ones((50, 50))\nreport()"
    with python_child(code, env={"OPENBLAS_NUM_THREADS": "1"}) as child:
        one = {p.library: p for p in threadguard.inspect(child.pid, interval=0.01).pools}
    with python_child(code, env={"OPENBLAS_NUM_THREADS": "2"}) as child:
        two = {p.library: p for p in threadguard.inspect(child.pid, interval=0.01).pools}
    assert one["openblas"].num_threads == 1 and two["openblas"].num_threads == 2
    assert two["openblas"].source == "blas_cpu_number in memory"
