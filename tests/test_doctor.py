"""threadguard doctor: each check in its real situation, and silence when healthy."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import threadguard
from threadguard import env_rules
from threadguard.doctor import CATALOG, diagnose, messages, variables
from threadguard.runtime_libs import ShippedRuntime
from machine_tree import V2_MOUNTINFO, machine, multi_socket
from procs import intel_libiomp5, llvm_libomp, python_child, sklearn_libgomp

ROOT = Path(__file__).parents[1]
CPUS = threadguard.topology().effective_cpus


def doctor(*args, env=None, **kw):
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("OMP_", "KMP_", "MKL_", "OPENBLAS_", "GOTO_", "LD_PRELOAD"))}
    base.update(CI="true", PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run([sys.executable, "-m", "threadguard", "doctor", *args],
                          capture_output=True, text=True, env=base, timeout=300, **kw)


def codes(out) -> set[str]:
    return set(re.findall(r"^(?:error|warning|info) (TG\d+)", out.stdout, re.M))


def json_codes(out) -> set[str]:
    return {f["code"] for f in json.loads(out.stdout)["findings"]}


# --- variables: what the runtimes really do with each value ---------------

@pytest.mark.parametrize("value, threads, problem", [
    ("4", 4, False), ("4,3,2", 4, False), (" 8 ", 8, False), ("", None, False),
    ("abc", None, True), ("0", None, True), ("1.0", None, True), ("all", None, True),
    ("-2", None, True), ("4,", None, True),
    # C's isdigit knows ASCII only: Arabic-Indic, fullwidth digits, a no-break space
    ("1\u0663", None, True), ("\uff14", None, True), ("\u00a04", None, True),
    ("9" * 5000, None, True),  # no int() limit error: too large for the runtimes
])
def test_openmp_reading_of_omp_num_threads(value, threads, problem):
    got, why = env_rules.openmp_value(value)
    assert got == threads and bool(why) == problem


@pytest.mark.parametrize("environ, used, threads", [
    ({"OPENBLAS_NUM_THREADS": "4,2"}, "OPENBLAS_NUM_THREADS", 4),
    ({"OPENBLAS_NUM_THREADS": ""}, "OPENBLAS_NUM_THREADS", 0),
    ({"OPENBLAS_NUM_THREADS": "abc"}, "OPENBLAS_NUM_THREADS", 0),
    ({"OPENBLAS_NUM_THREADS": "-3"}, "OPENBLAS_NUM_THREADS", 0),
    ({"GOTO_NUM_THREADS": "3", "OMP_NUM_THREADS": "2"}, "GOTO_NUM_THREADS", 3),
    ({"OMP_NUM_THREADS": "2"}, "OMP_NUM_THREADS", 2),
    ({}, None, None),
    ({"OPENBLAS_NUM_THREADS": "\u0663"}, "OPENBLAS_NUM_THREADS", 0),  # atoi: no digit
    ({"OPENBLAS_NUM_THREADS": "1\u0663"}, "OPENBLAS_NUM_THREADS", 1),
    ({"OPENBLAS_NUM_THREADS": "\uff14"}, "OPENBLAS_NUM_THREADS", 0),
    ({"OPENBLAS_NUM_THREADS": "9" * 5000}, "OPENBLAS_NUM_THREADS", 0),  # strtol clamps, (int) is -1
    ({"OPENBLAS_NUM_THREADS": "4294967297"}, "OPENBLAS_NUM_THREADS", 1),
])
def test_openblas_reading_with_atoi(environ, used, threads):
    assert env_rules.openblas_value(environ) == (used, threads)


def test_omp_num_threads_abc_from_the_command_line():
    out = doctor(env={"OMP_NUM_THREADS": "abc"})
    assert "TG201" in codes(out) and "OMP_NUM_THREADS='abc'" in out.stdout
    assert f"fix: export OMP_NUM_THREADS={CPUS}" in out.stdout


@pytest.mark.parametrize("environ, code, severity", [
    ({"OMP_NUM_THREADS": "0"}, "TG201", "warning"),
    ({"OMP_NUM_THREADS": ""}, "TG201", "warning"),
    ({"OMP_NUM_THREADS": "4,2"}, "TG201", "info"),
    ({"OPENBLAS_NUM_THREADS": "-3"}, "TG201", "warning"),
    ({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "2"}, "TG202", "info"),
    ({"OPENBLAS_NUM_THREADS": "512"}, "TG203", "warning"),
    ({"OMP_NUM_THREADS": "512"}, "TG203", "warning"),
    ({"OMP_WAIT_POLICY": "active"}, "TG205", "warning"),
    ({"PYTHON_CPU_COUNT": "64"}, "TG204", "info"),
    ({"KMP_DUPLICATE_LIB_OK": "TRUE"}, None, None),  # needs a process: see below
])
def test_variable_findings(environ, code, severity):
    found = variables.check(environ, CPUS)
    if code is None:
        assert found == []
    else:
        assert (code, severity) in {(f.code, f.severity) for f in found}


def test_nested_list_is_fine_when_nesting_is_on():
    assert variables.check({"OMP_NUM_THREADS": "2,1", "OMP_MAX_ACTIVE_LEVELS": "2"}, 4) == []


# --- a healthy setup stays silent ------------------------------------------

@pytest.mark.slow
def test_clean_venv_with_numpy_only_has_no_findings(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    install = subprocess.run([str(py), "-m", "pip", "install", "-q", "numpy", "psutil",
                              "threadpoolctl", "rich"], capture_output=True, text=True)
    if install.returncode != 0:
        pytest.skip(f"cannot install into a fresh venv here: {install.stderr[-300:]}")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OMP_", "OPENBLAS_", "LD_", "KMP_", "MKL_"))}
    env["PYTHONPATH"] = str(ROOT)
    for args in (["doctor", "--json"], ["doctor", "--json", "--import", "numpy"]):
        out = subprocess.run([str(py), "-m", "threadguard", *args], capture_output=True,
                             text=True, env=env)
        assert out.returncode == 0, out.stderr
        findings = json.loads(out.stdout)["findings"]
        assert [f for f in findings if f["severity"] != "info"] == [], findings


def test_healthy_single_threaded_process_is_silent():
    code = "import numpy as np\nnp.ones((50, 50)) @ np.ones((50, 50))\nreport()"
    with python_child(code, env={"OPENBLAS_NUM_THREADS": "1"}) as child:
        report, _ = threadguard.doctor.doctor("pid", value=child.pid, interval=0.3)
    assert [f.code for f in report.findings if f.severity != "info"] in ([], ["TG104"])


# --- runtimes, with real libraries ------------------------------------------

def test_gnu_before_intel_is_an_error_and_the_printed_fix_clears_it():
    gomp, iomp = sklearn_libgomp(), intel_libiomp5()
    out = doctor("--import", f"sklearn.cluster,{iomp}")
    assert out.returncode == 1
    assert "TG102" in codes(out)
    fix = re.search(r"fix: export (LD_PRELOAD=\S+)", out.stdout).group(1)
    value = shlex.split(fix)[0].split("=", 1)[1]
    assert os.path.realpath(value.split(":")[0]) == os.path.realpath(iomp)
    fixed = doctor("--import", f"sklearn.cluster,{iomp}", env={"LD_PRELOAD": value})
    assert fixed.returncode == 0, fixed.stdout
    assert "TG102" not in codes(fixed) and "TG104" not in codes(fixed)
    del gomp


def test_intel_and_llvm_openmp_together():
    out = doctor("--json", "--import", f"{intel_libiomp5()},{llvm_libomp()}")
    assert "TG101" in json_codes(out) and out.returncode == 1


def test_two_gnu_openmp_copies():
    pytest.importorskip("torch")
    out = doctor("--json", "--import", "sklearn.cluster,torch")
    assert "TG103" in json_codes(out)


def test_kmp_duplicate_lib_ok_is_flagged_with_the_duplicates():
    out = doctor("--json", "--import", f"{intel_libiomp5()},{llvm_libomp()}",
                 env={"KMP_DUPLICATE_LIB_OK": "TRUE"})
    found = {f["code"]: f for f in json.loads(out.stdout)["findings"]}
    assert "TG105" in found and any("libomp" in e for e in found["TG105"]["evidence"])


def test_mkl_intel_layer_with_libgomp_loaded():
    out = doctor("--json", "--import", "sklearn.cluster", env={"MKL_THREADING_LAYER": "INTEL"})
    assert "TG106" in json_codes(out)


def test_shipped_conflicts_predicted_without_loading():
    gnu = ShippedRuntime("openmp", "libgomp", sklearn_libgomp(), "scikit-learn")
    intel = ShippedRuntime("openmp", "libiomp5", intel_libiomp5(), "intel-openmp")
    llvm = ShippedRuntime("openmp", "libomp", "/usr/lib/libomp.so.5", "x")
    assert "TG104" in {f.code for f in diagnose(environ={}, shipped=[gnu, intel])}
    assert "TG104" not in {f.code for f in diagnose(environ={"LD_PRELOAD": intel.path},
                                                    shipped=[gnu, intel])}
    assert any("abort" in f.title for f in diagnose(environ={}, shipped=[intel, llvm]))
    assert "TG104" not in {f.code for f in diagnose(environ={}, shipped=[gnu])}


def test_preload_entries(tmp_path):
    found = {f.code for f in diagnose(environ={"LD_PRELOAD": f"{tmp_path}/missing.so"}, shipped=[])}
    assert "TG108" in found
    if __import__("importlib").util.find_spec("openvino"):
        found = {f.code for f in diagnose(environ={"LD_PRELOAD": "libjemalloc.so.2"}, shipped=[])}
        assert "TG107" in found


def test_scan_imports_nothing():
    code = ("import sys; from threadguard.doctor import doctor; doctor()\n"
            "print([m for m in ('numpy', 'sklearn', 'openvino', 'torch') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.stdout.strip() == "[]", out.stderr


# --- capacity ----------------------------------------------------------------

OVERSUBSCRIBED = """
import numpy as np, threading, time
a = np.random.rand(300, 300)
def work():
    t = time.time()
    while time.time() - t < 3:
        a @ a
threads = [threading.Thread(target=work) for _ in range(4)]
[t.start() for t in threads]; [t.join() for t in threads]
"""


@pytest.mark.slow
def test_measured_oversubscription_of_a_command_and_its_guarded_twin(tmp_path):
    script = tmp_path / "over.py"
    script.write_text(OVERSUBSCRIBED)
    out = doctor("--json", "--", sys.executable, str(script), env={"OPENBLAS_NUM_THREADS": "2"})
    found = json_codes(out)
    assert "TG303" in found and "TG301" in found
    report = json.loads(out.stdout)
    assert report["target"]["kind"] == "command" and report["command_status"] == 0
    # The same work in 1 thread with a 1-thread pool: no pools to add up, and
    # (whatever else this shared machine runs) less waiting than 8 threads on it.
    calm = tmp_path / "calm.py"
    calm.write_text(OVERSUBSCRIBED.replace("range(4)", "range(1)"))
    quiet = doctor("--json", "--", sys.executable, str(calm), env={"OPENBLAS_NUM_THREADS": "1"})
    assert "TG301" not in json_codes(quiet)
    assert (json.loads(quiet.stdout)["process"]["run_delay_ratio"]
            < report["process"]["run_delay_ratio"])
    # TG301's own fix: a budget in each calling thread shares the CPUs.
    fixed = tmp_path / "fixed.py"
    fixed.write_text("import threadguard\n" + OVERSUBSCRIBED.replace(
        "    t = time.time()", "    with threadguard.budget():\n        work_inside()\ndef work_inside():\n    t = time.time()"))
    out = doctor("--json", "--", sys.executable, str(fixed), env={"OPENBLAS_NUM_THREADS": "2"})
    assert "TG301" not in json_codes(out), out.stdout


def test_one_thread_calling_a_small_blas_and_an_openmp_pool_is_not_oversubscribed(tmp_path):
    # OpenBLAS at 1 and GNU OpenMP at 2 on 2 CPUs, one calling thread: each
    # pool's size counts that thread, and it runs one pool at a time.
    script = tmp_path / "two_pools.py"
    script.write_text(f"""
import ctypes, time, numpy as np
ctypes.CDLL({sklearn_libgomp()!r})
from sklearn.cluster import KMeans
X = np.random.rand(20000, 8)
t = time.time()
while time.time() - t < 2:
    np.ones((200, 200)) @ np.ones((200, 200)); KMeans(4, n_init=1, max_iter=5).fit(X)
""")
    out = doctor("--json", "--", sys.executable, str(script),
                 env={"OPENBLAS_NUM_THREADS": "1"})
    assert "TG301" not in json_codes(out), out.stdout


def test_sized_to_the_host_inside_a_quota(tmp_path):
    root = machine(tmp_path, 64, extra={
        "/proc/self/cgroup": "0::/pod\n", "/proc/self/mountinfo": V2_MOUNTINFO,
        "/sys/fs/cgroup/pod/cpu.max": "200000 100000\n"})
    topo = threadguard.topology(fsroot=root)
    found = {f.code: f for f in diagnose(environ={}, topology=topo, shipped=[], host_cpus=64)}
    assert "TG302" in found and "OMP_NUM_THREADS=2" in found["TG302"].fix
    calm = diagnose(environ={"OMP_NUM_THREADS": "2"}, topology=topo, shipped=[], host_cpus=64)
    assert "TG302" not in {f.code for f in calm}


def test_latency_on_several_numa_nodes(tmp_path):
    topo = threadguard.topology(fsroot=multi_socket(tmp_path, 2, 4))
    found = {f.code: f for f in diagnose(environ={}, topology=topo, shipped=[], host_cpus=8)}
    assert "numactl -m 0 --physcpubind 0-3" in found["TG305"].fix


def test_throttled_process(request):
    from test_census import SPIN_AND_SLEEP
    path = request.getfixturevalue("quota_cgroup")

    def join():
        with open(f"{path}/cgroup.procs", "w") as f:
            f.write(str(os.getpid()))
    with python_child(SPIN_AND_SLEEP, preexec_fn=join) as child:
        report, _ = threadguard.doctor.doctor("pid", value=child.pid, interval=0.6)
    assert "TG304" in {f.code for f in report.findings}


@pytest.mark.openvino
def test_tbb_and_openmp_active_together():
    pytest.importorskip("openvino")
    gomp = sklearn_libgomp()
    code = """
import numpy as np, threading
from sklearn.cluster import KMeans
compiled, request = openvino_request(256)
stop = threading.Event()
def infer():
    x = np.ones((1, 256), np.float32)
    while not stop.is_set():
        request.infer({0: x})
def cluster():
    pts = np.random.rand(20000, 8)
    while not stop.is_set():
        KMeans(n_clusters=8, n_init=1, max_iter=10).fit(pts)
for f in (infer, cluster):
    threading.Thread(target=f, daemon=True).start()
import time
from threadguard.attribution import attribute_threads
deadline = time.monotonic() + 30  # until both pools have started their workers
while time.monotonic() < deadline:
    pools = {o.pool for o in attribute_threads().owners.values()}
    if "tbb" in pools and "openmp:libgomp" in pools:
        break
    time.sleep(0.1)
report()
stop.set()
"""
    with python_child(code) as child:
        report, _ = threadguard.doctor.doctor("pid", value=child.pid, interval=0.5)
    pools = {report.owner_pool(t.tid) for t in report.census.threads}
    assert "TG110" in {f.code for f in report.findings}, (pools, report.census.cpu_used)
    del gomp


@pytest.mark.openvino
def test_openvino_ignoring_a_cpu_quota_is_over_budget(request):
    # openvino#37838: compiled inside a 0.2-CPU quota, OpenVINO still sizes
    # itself to every CPU it sees.
    pytest.importorskip("openvino")
    if CPUS < 2:
        pytest.skip("needs 2 CPUs to exceed a 1-CPU budget")
    path = request.getfixturevalue("quota_cgroup")

    def join():
        with open(f"{path}/cgroup.procs", "w") as f:
            f.write(str(os.getpid()))
    code = """
import threadguard
from threadguard.pools.openvino import track
compiled, _ = openvino_request(32)  # OpenVINO's defaults
track(compiled)
r = threadguard.inspect(interval=0.05)
from threadguard.doctor import capacity
report(codes=[f.code for f in capacity.check_process(r)], eff=r.topology.effective_cpus,
       threads=compiled.get_property("INFERENCE_NUM_THREADS"))
"""
    with python_child(code, preexec_fn=join) as child:
        facts = child.facts
    assert facts["eff"] == 1 and facts["threads"] > 1
    assert "TG307" in facts["codes"]


# --- messages on stderr --------------------------------------------------------

@pytest.mark.parametrize("text, code, needle", [
    ("OMP: Error #15: Initializing libiomp5.so, but found libomp.so.5 already initialized.\n"
     "OMP: Hint This means that multiple copies...", "TG401", "libiomp5.so initialized while libomp.so.5"),
    ("OMP: Error #15: Initializing libiomp5md.dll, but found libiomp5md.dll already initialized.\n"
     "OMP: Hint: This means", "TG401", "libiomp5md.dll"),
    ("OMP: Error #15: Initializing libomp.dylib, but found libomp.dylib already initialized.",
     "TG401", "libomp.dylib"),
    ("OpenBLAS blas_thread_init: pthread_create failed for thread 50 of 64: Resource temporarily "
     "unavailable\nOpenBLAS blas_thread_init: RLIMIT_NPROC 4096 current, 4096 max", "TG402",
     "thread 50 of 64"),
    ("OpenBLAS blas_thread_init: pthread_create failed for thread 3 of 8: Resource temporarily "
     "unavailable\nOpenBLAS blas_thread_init: RLIMIT_NPROC -1 current, -1 max", "TG402", "pids.max"),
    ("OpenBLAS warning: precompiled NUM_THREADS exceeded, adding auxiliary array for thread "
     "metadata.\nBLAS : Program is Terminated. Because you tried to allocate too many memory "
     "regions.\nThis library was built to support a maximum of 128 threads", "TG403", "128"),
    ("TBB Warning: The number of workers is currently limited to 3. The request for 15 workers "
     "is ignored. Further requests for more workers will be silently ignored until the limit "
     "changes.", "TG404", "3 workers"),
    ("ImportError: /venv/lib/python3.11/site-packages/scikit_learn.libs/libgomp-d22c30c5.so.1.0.0: "
     "cannot allocate memory in static TLS block", "TG405",  # not here: a template, not a path
     "LD_PRELOAD=/path/to/libgomp-d22c30c5.so.1.0.0"),
    ("DeprecationWarning: This process (pid=12) is multi-threaded, use of fork() may lead to "
     "deadlocks in the child.", "TG406", "spawn"),
    ("Error: MKL_THREADING_LAYER=INTEL is incompatible with libgomp.so.1 library.", "TG106",
     "MKL_THREADING_LAYER=GNU"),
])
def test_messages_are_classified(text, code, needle):
    found = messages.classify(text)
    assert [f.code for f in found] == [code]
    f = found[0]
    assert needle in f.title + " ".join(f.evidence) + f.fix


# --- output, exit codes, documentation -------------------------------------------

def test_json_and_exit_codes():
    out = doctor("--json", env={"OMP_NUM_THREADS": "abc"})
    data = json.loads(out.stdout)
    assert data["schema"] == "threadguard.report/1" and data["target"]["kind"] == "environment"
    f = next(f for f in data["findings"] if f["code"] == "TG201")
    assert set(f) == {"code", "severity", "title", "evidence", "fix"}
    assert out.returncode == 0  # warnings do not fail by default
    assert doctor("--fail-on", "warning", env={"OMP_NUM_THREADS": "abc"}).returncode == 1
    assert doctor("--fail-on", "never", "--import", f"{intel_libiomp5()},{llvm_libomp()}").returncode == 0


@pytest.mark.parametrize("args", [["--pid", "999999999"], ["--import", "no_such_module_xyz"],
                                  ["--fail-on", "sometimes"], ["--import", ","],
                                  ["--dask", ""]])
def test_doctor_bad_input_exits_2(args):
    out = doctor(*args)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr


def test_no_color_and_plain_output_when_not_a_terminal():
    out = doctor(env={"OMP_NUM_THREADS": "abc"})
    assert "\x1b[" not in out.stdout
    assert re.search(r"^\d+ errors?, \d+ warnings?, \d+ infos?$", out.stdout, re.M)


def test_every_code_is_documented_with_an_example():
    doc = (ROOT / "docs" / "checks.md").read_text()
    for code, check in CATALOG.items():
        section = re.search(rf"^## {code} {re.escape(check.name)}\n(.*?)(?=^## |\Z)", doc, re.M | re.S)
        assert section, f"{code} {check.name} is not documented in docs/checks.md"
        assert "```" in section.group(1), f"{code} has no example output"


def test_pool_sized_to_smt_siblings(tmp_path):
    from threadguard.doctor import capacity
    from threadguard.pools import Pool
    from threadguard.report import Report
    topo = threadguard.topology(fsroot=machine(tmp_path, 16, smt=2))  # 8 cores x 2 threads
    census = threadguard.census(interval=0.01)
    def report(size):
        return Report(pid=os.getpid(), topology=topo, census=census, attribution=None,
                      runtimes=(), runtimes_order_source=None, ld_preload=None,
                      pools=(Pool("openblas", "blas", size, "/x/libopenblas.so"),))
    assert "TG306" in {f.code for f in capacity.check_process(report(16))}
    assert "TG306" not in {f.code for f in capacity.check_process(report(8))}


def test_a_dying_command_has_its_stderr_classified():
    code = ("import sys; sys.stderr.write('OMP: Error #15: Initializing libiomp5.so, but found "
            "libomp.so.5 already initialized.\\nOMP: Hint: This means that...\\n'); sys.exit(3)")
    out = doctor("--json", "--", sys.executable, "-c", code)
    data = json.loads(out.stdout)
    assert data["command_status"] == 3 and "TG401" in json_codes(out) and out.returncode == 1
    assert "OMP: Error #15" in out.stderr  # passed through as it ran


def test_json_lists_the_shipped_runtimes():
    data = json.loads(doctor("--json").stdout)
    names = {(r["name"], r["distribution"]) for r in data["shipped_runtimes"]}
    assert ("libgomp", "scikit-learn") in names


def test_the_doctor_shows_what_it_checked_before_what_it_found():
    env = {"OMP_NUM_THREADS": "abc"}
    full = doctor(env=env)
    head = full.stdout.split("\n\n")[0].splitlines()
    rows = {line.split()[0]: line for line in head[1:]}
    assert {"CPUs", "installed", "variables"} <= set(rows), full.stdout
    assert f"{CPUS} of" in rows["CPUs"] and "OMP_NUM_THREADS=abc" in rows["variables"]
    assert "libgomp (" in rows["installed"]  # scikit-learn's wheel ships it
    quiet = doctor("--quiet", env=env)
    firsts = {line.split()[0] for line in quiet.stdout.splitlines() if line.strip()}
    assert not {"threadguard", "CPUs", "installed", "variables"} & firsts, quiet.stdout
    assert codes(quiet) == codes(full) and "TG201" in codes(quiet)
    data = json.loads(doctor("--json", env=env).stdout)
    assert [row[0] for row in data["checked"]][:1] == ["CPUs"]


def test_the_checklist_of_a_process_lists_its_runtimes_in_load_order():
    out = doctor("--import", f"{sklearn_libgomp()},{intel_libiomp5()}", "--fail-on", "never")
    loaded = next(line for line in out.stdout.splitlines() if line.split()[:1] == ["loaded"])
    names = [part.split()[1] for part in loaded.split(None, 1)[1].split(", ")]
    assert names.index("libgomp") < names.index("libiomp5"), loaded


@pytest.mark.parametrize("value", ["", " ", "x1"])
def test_what_the_doctor_says_of_a_bad_omp_num_threads_is_what_the_runtimes_do(value):
    out = doctor("--json", env={"OMP_NUM_THREADS": value})
    title = next(f["title"] for f in json.loads(out.stdout)["findings"] if f["code"] == "TG201")
    probe = ("import ctypes, sys; lib = ctypes.CDLL(sys.argv[1]); "
             "lib.omp_get_max_threads.restype = ctypes.c_int; print(lib.omp_get_max_threads())")

    def run(path):
        try:
            return subprocess.run([sys.executable, "-c", probe, path], capture_output=True,
                                  text=True, env=dict(os.environ, OMP_NUM_THREADS=value),
                                  timeout=30)
        except subprocess.TimeoutExpired:  # libomp reading junk as a count can hang
            return subprocess.CompletedProcess(path, None, "", "hung")
    gnu = run(sklearn_libgomp())
    assert "GNU OpenMP warns" in title or "GNU and Intel OpenMP ignore it (and warn)" in title
    assert "Invalid value" in gnu.stderr and gnu.stdout.split() == [str(CPUS)]
    llvm = run(llvm_libomp())
    if "LLVM OpenMP aborts" in title:
        assert llvm.returncode != 0
    else:
        assert "misreads" in title and "hang" in title
        assert llvm.stdout.split() != [str(CPUS)] and llvm.stderr


def test_a_bad_value_of_a_library_variable_is_flagged_installed_or_not():
    from importlib import metadata
    out = doctor("--json", env={"MKL_NUM_THREADS": "x1"})
    found = [f for f in json.loads(out.stdout)["findings"] if f["code"] == "TG201"]
    assert found and "MKL_NUM_THREADS='x1'" in found[0]["title"]
    try:
        metadata.distribution("mkl")
        expected = "read by mkl"
    except metadata.PackageNotFoundError:
        expected = "nothing installed here reads it"
    assert any(expected in line for line in found[0]["evidence"]), found


@pytest.mark.parametrize("name, value, code", [
    ("OMP_NUM_THREADS", "abc", "TG201"), ("OMP_NUM_THREADS", "", "TG201"),
    ("OMP_NUM_THREADS", "4096", "TG203"), ("OPENBLAS_NUM_THREADS", "0", "TG201"),
    ("OPENBLAS_NUM_THREADS", "4096", "TG203"), ("OMP_WAIT_POLICY", "ACTIVE", "TG205"),
    ("MKL_NUM_THREADS", "x1", "TG201")])
def test_applying_a_printed_variable_fix_makes_its_finding_go_away(name, value, code, tmp_path):
    first = json.loads(doctor("--json", env={name: value}).stdout)["findings"]
    fix = next(f["fix"] for f in first if f["code"] == code and name in f["fix"])
    pasted = f"{fix}\nexec {shlex.join([sys.executable, '-m', 'threadguard', 'doctor', '--json'])}"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OMP_", "KMP_", "MKL_", "OPENBLAS_", "GOTO_", "LD_PRELOAD"))}
    env.update(CI="true", PYTHONPATH=str(ROOT), **{name: value})
    out = subprocess.run(["sh", "-c", pasted], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=120)
    again = {(f["code"], f["title"]) for f in json.loads(out.stdout)["findings"]}
    assert not any(c == code and name in title for c, title in again), (fix, again)


def test_a_static_tls_fix_names_the_real_library_quoted():
    path = sklearn_libgomp()
    found = messages.classify(f"ImportError: {path}: cannot allocate memory in static TLS block")
    assert found[0].fix.startswith(f"export LD_PRELOAD={shlex.quote(path)}")
