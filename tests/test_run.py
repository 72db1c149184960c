"""threadguard run: a real command started with the plan applied."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import threadguard
from threadguard.launch import prepare, shell_line
from threadguard.runtime_libs import ShippedRuntime, intel_openmp_preload

ROOT = Path(__file__).parents[1]
PROBE = ("import json, os; print(json.dumps({'omp': os.environ.get('OMP_NUM_THREADS'), "
         "'blas': os.environ.get('OPENBLAS_NUM_THREADS'), 'cpus': sorted(os.sched_getaffinity(0)), "
         "'preload': os.environ.get('LD_PRELOAD')}))")


def clean_env(**extra):
    """This environment without thread variables another test or tool left set."""
    from threadguard.planner import FALLS_BACK_TO_OMP, THREAD_VARIABLES
    env = {k: v for k, v in os.environ.items()
           if k not in THREAD_VARIABLES + FALLS_BACK_TO_OMP + ("LD_PRELOAD",)}
    return dict(env, PYTHONPATH=str(ROOT), **extra)


def run(*args, **kw):
    return subprocess.run([sys.executable, "-m", "threadguard", "run", *args], capture_output=True,
                          text=True, env=clean_env(), **kw)


def test_command_gets_variables_and_pinning():
    out = run("--threads", "1", "--pin", "--", sys.executable, "-c", PROBE)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    assert seen["omp"] == "1" and seen["blas"] == "1"
    assert len(seen["cpus"]) == 1 and seen["cpus"][0] in os.sched_getaffinity(0)


def test_exit_status_is_the_commands():
    assert run("--", sys.executable, "-c", "raise SystemExit(7)").returncode == 7


def test_missing_command_is_one_line_127():
    out = run("--", "threadguard-no-such-command")
    assert out.returncode == 127
    assert len(out.stderr.strip().splitlines()) == 1 and "cannot run" in out.stderr


@pytest.mark.parametrize("args", [[], ["--threads", "0", "--", "true"],
                                  ["--socket", "99", "--", "true"], ["--mode", "fast", "--", "true"]])
def test_bad_input_exits_2(args):
    out = run(*args)
    assert out.returncode == 2 and "Traceback" not in out.stderr


def test_dry_run_prints_the_equivalent_shell_line():
    out = run("--dry-run", "--threads", "1", "--", "python", "-c", "print('a b')")
    assert out.returncode == 0
    line = out.stdout.strip()
    assert "OMP_NUM_THREADS=1" in line and line.endswith("python -c 'print('\"'\"'a b'\"'\"')'")


def test_oversubscription_warns():
    cpus = threadguard.topology().effective_cpus
    out = run("--threads", str(cpus + 2), "--", sys.executable, "-c", "pass")
    assert out.returncode == 0 and "oversubscribed" in out.stderr


def test_intel_openmp_preloaded_only_when_gnu_openmp_is_shipped_too():
    gnu = ShippedRuntime("openmp", "libgomp", "/x/libgomp.so.1", "scikit-learn")
    intel = ShippedRuntime("openmp", "libiomp5", "/y/libiomp5.so", "intel-openmp")
    assert intel_openmp_preload([gnu, intel]) == "/y/libiomp5.so"
    assert intel_openmp_preload([gnu]) is None and intel_openmp_preload([intel]) is None


def test_intel_openmp_is_preloaded_only_into_a_command_that_loads_both(tmp_path):
    from procs import intel_libiomp5, sklearn_libgomp
    intel, _ = intel_libiomp5(), sklearn_libgomp()
    both = tmp_path / "both.py"
    both.write_text(f"import ctypes\nimport sklearn.cluster\nctypes.CDLL({intel!r})\n")
    plan, env, _ = prepare([sys.executable, str(both)], environ={"LD_PRELOAD": "/opt/other.so",
                                                                "PATH": os.environ["PATH"]})
    assert os.path.realpath(env["LD_PRELOAD"].split(":")[0]) == os.path.realpath(intel)
    assert env["LD_PRELOAD"].endswith("/opt/other.so")
    assert "LD_PRELOAD=" in shell_line(["true"], plan, env, base={})
    # One runtime, none, TBB alone (benchmark_app), or a program that is not Python: none.
    for cmd in ([sys.executable, "-c", "import sklearn.cluster"], ["true"],
                [sys.executable, "-c", "import numpy"], ["benchmark_app", "-m", "m.xml"]):
        _, env, _ = prepare(cmd, environ={"PATH": os.environ["PATH"]})
        assert "LD_PRELOAD" not in env, cmd


def test_run_says_why_it_preloads(tmp_path):
    from procs import intel_libiomp5
    script = tmp_path / "both.py"
    script.write_text("import ctypes, sklearn.cluster\n"
                      f"ctypes.CDLL({intel_libiomp5()!r})\n"
                      "import os; print(os.environ.get('LD_PRELOAD', ''))\n")
    out = run("--", sys.executable, str(script))
    assert out.returncode == 0, out.stderr
    assert "libiomp5" in out.stdout
    assert "Intel OpenMP preloaded" in out.stderr and "sklearn" in out.stderr, out.stderr


def test_latency_dry_run_on_a_two_socket_machine(tmp_path):
    from machine_tree import multi_socket
    root = multi_socket(tmp_path, 2, 28, smt=2)
    out = subprocess.run([sys.executable, "-m", "threadguard", "run", "--dry-run", "--mode",
                          "latency", "--", "benchmark_app", "-m", "model.xml"],
                         capture_output=True, text=True,
                         env=clean_env(THREADGUARD_FSROOT=str(root)))
    assert out.returncode == 0, out.stderr
    assert "numactl -m 0 --physcpubind 0-27 benchmark_app -m model.xml" in out.stdout
    assert "OMP_NUM_THREADS=28" in out.stdout


@pytest.mark.parametrize("sockets,nodes_per_socket", [(2, 1), (1, 4)])
def test_instances_auto_is_one_copy_per_numa_node_in_a_dry_run(tmp_path, sockets,
                                                                nodes_per_socket):
    from machine_tree import multi_socket
    nodes = sockets * nodes_per_socket
    root = multi_socket(tmp_path, nodes, 8 // nodes)  # a node per "socket", 8 CPUs in all
    if nodes_per_socket > 1:  # one package: EPYC's NPS4 shape
        for cpu in range(8):
            (root / f"sys/devices/system/cpu/cpu{cpu}/topology/physical_package_id").write_text("0\n")
    out = subprocess.run([sys.executable, "-m", "threadguard", "run", "--dry-run", "--instances",
                          "auto", "--", "benchmark_app", "-m", "model.xml"],
                         capture_output=True, text=True,
                         env=clean_env(THREADGUARD_FSROOT=str(root)))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == nodes
    per_node = 8 // nodes
    for node, line in enumerate(lines):
        first = node * per_node
        cpus = f"{first}-{first + per_node - 1}" if per_node > 1 else f"{first}"
        assert f"numactl -m {node} --physcpubind {cpus} benchmark_app" in line, line
        assert f"OMP_NUM_THREADS={per_node} " in line
        assert f"-nthreads {per_node} " in line and "-pin YES" in line


def test_instances_are_placed_prefixed_and_give_the_worst_status():
    probe = ("import os, sys; cpus = sorted(os.sched_getaffinity(0)); print('cpus', cpus); "
             "print('to stderr', file=sys.stderr); sys.exit(5 if cpus == [1] else 0)")
    out = run("--instances", "2", "--", sys.executable, "-c", probe)
    assert out.returncode == 5, out.stderr
    assert sorted(out.stdout.splitlines()) == ["[0] cpus [0]", "[1] cpus [1]"]
    assert sorted(out.stderr.splitlines()) == ["[0] to stderr", "[1] to stderr"]


def test_sigterm_stops_every_instance(tmp_path):
    marker = tmp_path / "pids"
    probe = (f"import os, time; open({str(marker)!r}, 'a').write(f'{{os.getpid()}}\\n'); "
             "time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-m", "threadguard", "run", "--instances", "2", "--",
                             sys.executable, "-c", probe], env=clean_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    import time
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not marker.exists()
                                           or len(marker.read_text().split()) < 2):
        time.sleep(0.1)
    pids = [int(p) for p in marker.read_text().split()]
    assert len(pids) == 2
    proc.terminate()
    proc.wait(60)
    assert proc.returncode != 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_one_throughput_instance_gets_a_stream_per_numa_node(tmp_path):
    from machine_tree import multi_socket
    root = multi_socket(tmp_path, 4, 2)  # 4 nodes of 2 cores
    out = subprocess.run([sys.executable, "-m", "threadguard", "run", "--dry-run", "--",
                          "benchmark_app", "-m", "model.xml"], capture_output=True, text=True,
                         env=clean_env(THREADGUARD_FSROOT=str(root)))
    assert out.returncode == 0, out.stderr
    flags = out.stdout.split("benchmark_app -m model.xml ")[1].split()
    streams, threads = int(flags[flags.index("-nstreams") + 1]), int(flags[flags.index("-nthreads") + 1])
    assert streams >= 4 and threads <= 8
    values = json.loads(out.stdout.split("THREADGUARD_OPENVINO='")[1].split("'")[0])
    assert (values["NUM_STREAMS"], values["INFERENCE_NUM_THREADS"]) == (streams, threads)


@pytest.mark.parametrize("limit,pinned,threads", [
    # a 1.5-CPU quota pins 2 CPUs, not the socket (OpenVINO ignores quotas)
    ({"/proc/self/cgroup": "0::/job\n", "/sys/fs/cgroup/job/cpu.max": "150000 100000\n"},
     "0-1", 2),
    # a cpuset inside the second socket is the affinity already: sized to it, no numactl
    ({"/proc/self/status": "Cpus_allowed_list:\t20-23\nMems_allowed_list:\t0-1\n"}, None, 4),
])
def test_latency_dry_run_under_a_quota_or_a_cpuset(tmp_path, limit, pinned, threads):
    from machine_tree import V2_MOUNTINFO, multi_socket
    root = multi_socket(tmp_path, 2, 16, smt=2, extra=dict(limit, **{
        "/proc/self/mountinfo": V2_MOUNTINFO}))
    out = subprocess.run([sys.executable, "-m", "threadguard", "run", "--dry-run", "--mode",
                          "latency", "--", "benchmark_app", "-m", "model.xml"],
                         capture_output=True, text=True,
                         env=clean_env(THREADGUARD_FSROOT=str(root)))
    assert out.returncode == 0, out.stderr
    if pinned:
        assert f"numactl -m 0 --physcpubind {pinned} benchmark_app" in out.stdout, out.stdout
    else:
        assert "numactl" not in out.stdout, out.stdout
    assert f"-nthreads {threads} " in out.stdout and f"OMP_NUM_THREADS={threads} " in out.stdout


def test_instances_end_quietly_when_the_reader_goes_away():
    # `| head -1`: the copies get SIGPIPE as they would alone, run does not hang
    proc = subprocess.Popen(f"{shlex.quote(sys.executable)} -m threadguard run --instances 2 -- "
                            "yes | head -1", shell=True, env=clean_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=60)
    assert out.strip() in ("[0] y", "[1] y") and "Traceback" not in err, err


def test_instances_relay_output_without_newlines_in_bounded_pieces():
    out = subprocess.run([sys.executable, "-m", "threadguard", "run", "--instances", "1", "--",
                          "head", "-c", "300000", "/dev/zero"], capture_output=True,
                         env=clean_env(), timeout=60)
    assert out.returncode == 0
    pieces = out.stdout.split(b"\n")[:-1]
    assert len(pieces) >= 4 and all(p.startswith(b"[0] ") for p in pieces)
    assert sum(len(p) - 4 for p in pieces) == 300000


def test_sigterm_stops_every_copy_and_what_it_started(tmp_path):
    import signal
    import time
    marker = tmp_path / "pids"
    probe = f"sh -c 'echo $$ >> {marker}; sleep 77 & echo $! >> {marker}; wait'"
    proc = subprocess.Popen([sys.executable, "-m", "threadguard", "run", "--instances", "2", "--",
                             "sh", "-c", probe], env=clean_env(), start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not marker.exists()
                                           or len(marker.read_text().split()) < 4):
        time.sleep(0.1)
    pids = [int(p) for p in marker.read_text().split()]
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_more_copies_than_cores_take_turns_and_absurd_counts_are_refused():
    from threadguard.planner import instance_plans
    topo = threadguard.topology()
    cores = len(topo.allowed_cores())
    plans = instance_plans(topo, cores * 2)
    firsts = [p.cpus[0] for p in plans]
    assert all(firsts.count(c) == 2 for c in set(firsts)), firsts
    out = run("--instances", str(10 ** 6), "--dry-run", "--", "true")
    assert out.returncode == 2 and "at most" in out.stderr and len(out.stderr.splitlines()) == 1
    out = run("--instances", "2", "--pin", "--", "true")
    assert out.returncode == 2 and "--pin" in out.stderr


def test_python_m_is_read_without_running_the_package(tmp_path):
    pkg = tmp_path / "boom"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("print('SIDE EFFECT'); raise RuntimeError('ran')\n")
    (pkg / "main.py").write_text("import sklearn\n")
    env = clean_env()
    env["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{env['PYTHONPATH']}"
    out = subprocess.run([sys.executable, "-m", "threadguard", "run", "--dry-run", "--",
                          sys.executable, "-m", "boom.main"], capture_output=True, text=True,
                         env=env, timeout=60)
    assert out.returncode == 0 and "SIDE EFFECT" not in out.stdout + out.stderr, out.stderr
