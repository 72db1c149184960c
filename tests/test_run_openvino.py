"""threadguard run reaches OpenVINO: the real benchmark_app and a Python
child report the properties they really used, and they equal the plan."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

ov = pytest.importorskip("openvino")
import numpy as np  # noqa: E402
import openvino.opset13 as ops  # noqa: E402

import threadguard  # noqa: E402
from threadguard.openvino import property_values  # noqa: E402
from test_run import clean_env  # noqa: E402

pytestmark = [pytest.mark.openvino, pytest.mark.slow]
BENCHMARK_APP = shutil.which("benchmark_app") or os.path.join(os.path.dirname(sys.executable),
                                                             "benchmark_app")
CHILD = """
import json, sys, openvino as ov
core = ov.Core()
own = json.loads(sys.argv[2])
if own:
    core.set_property("CPU", own)
compiled = core.compile_model(sys.argv[1], "CPU")
print(json.dumps({k: str(compiled.get_property(k)) for k in
                  ("INFERENCE_NUM_THREADS", "NUM_STREAMS", "PERFORMANCE_HINT")}))
"""


@pytest.fixture(scope="module")
def model_xml(tmp_path_factory):
    p = ops.parameter([1, 64], np.float32, name="x")
    w = ops.constant(np.random.default_rng(0).random((64, 64), dtype=np.float32))
    path = tmp_path_factory.mktemp("model") / "matmul.xml"
    ov.save_model(ov.Model([ops.relu(ops.matmul(p, w, False, False))], [p], "matmul"), str(path))
    return str(path)


def expected(mode, threads=None):
    plan = threadguard.plan(threadguard.topology(), mode, threads=threads)
    return property_values(plan, plan.threads, plan.pin, mode)


def run(*args, timeout=240):
    return subprocess.run([sys.executable, "-m", "threadguard", "run", *args],
                          capture_output=True, text=True, timeout=timeout,
                          env=clean_env(CI="true"))


def printed(stdout: str) -> dict:
    """The compiled model's properties as benchmark_app prints them (step 8)."""
    out = {}
    for line in stdout.splitlines():
        parts = line.split("]", 1)[-1].strip().split(": ", 1)
        if len(parts) == 2 and parts[0] in ("NUM_STREAMS", "INFERENCE_NUM_THREADS",
                                            "PERFORMANCE_HINT", "ENABLE_CPU_PINNING"):
            out.setdefault(parts[0], parts[1])
    return out


@pytest.mark.skipif(not os.path.exists(BENCHMARK_APP), reason="the openvino wheel's benchmark_app "
                    "is not installed")
@pytest.mark.parametrize("mode,threads", [("latency", None), ("latency", 1),
                                          ("throughput", None), ("throughput", 1)])
def test_benchmark_app_runs_with_the_plan(model_xml, mode, threads):
    want = expected(mode, threads)
    args = ["--mode", mode] + (["--threads", str(threads)] if threads else [])
    api = "sync" if mode == "latency" else "async"
    out = run(*args, "--", BENCHMARK_APP, "-m", model_xml, "-d", "CPU", "-api", api, "-t", "1")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    seen = printed(out.stdout)
    assert seen["INFERENCE_NUM_THREADS"] == str(want["INFERENCE_NUM_THREADS"]), seen
    assert seen["NUM_STREAMS"] == str(want["NUM_STREAMS"]), seen
    assert seen["ENABLE_CPU_PINNING"] == str(want["ENABLE_CPU_PINNING"]), seen


@pytest.mark.skipif(not os.path.exists(BENCHMARK_APP), reason="the openvino wheel's benchmark_app "
                    "is not installed")
def test_benchmark_app_keeps_the_users_own_flags(model_xml):
    out = run("--mode", "latency", "--threads", "1", "--dry-run", "--", "benchmark_app", "-m",
              model_xml, "-hint", "throughput")
    assert out.returncode == 0 and "-nthreads" not in out.stdout, out.stdout
    planned = run("--mode", "latency", "--threads", "1", "--dry-run", "--", "benchmark_app",
                  "-m", model_xml)
    assert "-hint none -nthreads 1 -nstreams 1 -pin NO" in planned.stdout, planned.stdout
    # The guide's older line (-nthreads without -hint none) runs as the user meant.
    old = run("--mode", "latency", "--", BENCHMARK_APP, "-m", model_xml, "-api", "sync",
              "-nthreads", "1", "-t", "1")
    assert old.returncode == 0, old.stdout[-2000:]
    assert printed(old.stdout)["INFERENCE_NUM_THREADS"] == "1"


@pytest.mark.parametrize("mode", ["latency", "throughput"])
def test_a_python_child_gets_the_plan_and_keeps_its_own_values(model_xml, mode, tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    want = expected(mode, 1)
    out = run("--mode", mode, "--threads", "1", "-v", "--", sys.executable, str(script),
              model_xml, "{}")
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got == {"INFERENCE_NUM_THREADS": str(want["INFERENCE_NUM_THREADS"]),
                   "NUM_STREAMS": str(want["NUM_STREAMS"]),
                   "PERFORMANCE_HINT": want["PERFORMANCE_HINT"]}
    assert "OpenVINO CPU properties added" in out.stderr
    # Its own thread count wins; its own hint keeps the streams the hint chooses.
    own = run("--mode", mode, "--threads", "1", "--", sys.executable, str(script), model_xml,
              json.dumps({"INFERENCE_NUM_THREADS": 2, "PERFORMANCE_HINT": "THROUGHPUT"}))
    assert own.returncode == 0, own.stderr
    got = json.loads(own.stdout)
    assert got["INFERENCE_NUM_THREADS"] == "2" and got["PERFORMANCE_HINT"] == "THROUGHPUT"
    assert own.stderr == ""  # silent without -v


def test_the_hook_runs_the_sitecustomize_it_shadows(model_xml, tmp_path):
    theirs = tmp_path / "site"
    theirs.mkdir()
    (theirs / "sitecustomize.py").write_text("import os\nos.environ['THEIRS_RAN'] = '1'\n")
    env = clean_env(CI="true")
    env["PYTHONPATH"] = f"{theirs}{os.pathsep}{env['PYTHONPATH']}"
    out = subprocess.run([sys.executable, "-m", "threadguard", "run", "--", sys.executable, "-c",
                          "import os, sys; print(os.environ.get('THEIRS_RAN'), "
                          "sys.modules['sitecustomize'].__file__)"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    ran, module = out.stdout.split()
    assert ran == "1" and module == str(theirs / "sitecustomize.py")


@pytest.mark.parametrize("how", [
    'core.set_property({"INFERENCE_NUM_THREADS": 2})',
    'core.set_property("CPU", ("INFERENCE_NUM_THREADS", 2))',
    'core.set_property(device_name="CPU", properties={"INFERENCE_NUM_THREADS": 2})',
    'core.set_property(("INFERENCE_NUM_THREADS", 2))',
])
def test_every_way_a_program_sets_its_own_value_wins(model_xml, tmp_path, how):
    script = tmp_path / "own.py"
    script.write_text("import sys, openvino as ov\ncore = ov.Core()\n" + how + "\n"
                      "print(core.compile_model(sys.argv[1], 'CPU')"
                      ".get_property('INFERENCE_NUM_THREADS'))\n"
                      "print(ov.Core().compile_model(sys.argv[1], 'CPU')"
                      ".get_property('INFERENCE_NUM_THREADS'))\n")
    out = run("--threads", "1", "--", sys.executable, str(script), model_xml)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["2", "1"]  # its own Core keeps 2; a fresh one gets the plan


def test_benchmark_app_flags_the_user_gave_are_not_overridden(model_xml):
    # The user's -hint none -nthreads 1: NUM_STREAMS and pinning stay benchmark_app's own.
    plain = subprocess.run([BENCHMARK_APP, "-m", model_xml, "-d", "CPU", "-hint", "none",
                            "-nthreads", "1", "-t", "1"], capture_output=True, text=True,
                           timeout=240, env=clean_env(CI="true"))
    under = run("--", BENCHMARK_APP, "-m", model_xml, "-d", "CPU", "-hint", "none",
                "-nthreads", "1", "-t", "1")
    assert plain.returncode == 0 and under.returncode == 0, under.stderr[-2000:]
    assert printed(under.stdout) == printed(plain.stdout)


def test_package_data_of_openvino_is_readable_under_the_hook():
    probe = ("import importlib.resources, pkgutil; "
             "print(importlib.resources.files('openvino').joinpath('__init__.py').is_file(), "
             "pkgutil.get_data('openvino', '__init__.py') is not None)")
    out = run("--", sys.executable, "-c", probe)
    assert out.returncode == 0 and out.stdout.split() == ["True", "True"], out.stderr
