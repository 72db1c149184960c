"""Real child processes for live tests: fresh interpreters and real runtimes."""

from __future__ import annotations

import ctypes.util
import glob
import json
import os
import subprocess
import sys
import sysconfig
import textwrap
from contextlib import contextmanager
from pathlib import Path

import pytest

# Run by every child before its code: `report(**facts)` prints one JSON line
# and then waits until the test closes stdin.
PRELUDE = """
import json, os, sys, threading, time
def report(**facts):
    print(json.dumps(facts), flush=True)
    sys.stdin.read()
def wait_child(pid, seconds=15):  # a forked child's exit code, or "hung" (then killed)
    deadline = time.monotonic() + seconds
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, 9); os.waitpid(pid, 0)
            return "hung"
        time.sleep(0.005)
def new_tids(before):
    return sorted(set(int(t) for t in os.listdir("/proc/self/task")) - set(before))
def tids():
    return [int(t) for t in os.listdir("/proc/self/task")]
def openvino_model(width=256):
    # A real model built in code (matmul + relu).
    import numpy as np, openvino as ov, openvino.opset13 as ops
    p = ops.parameter([1, width], np.float32)
    w = ops.constant(np.ones((width, width), np.float32))
    return ov.Model([ops.relu(ops.matmul(p, w, False, False))], [p])
def openvino_request(width=256):
    import openvino as ov
    compiled = ov.Core().compile_model(openvino_model(width), "CPU")
    return compiled, compiled.create_infer_request()
def start_openmp(path, n=2):
    import ctypes
    lib = ctypes.CDLL(path)
    body = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(lambda data: None)
    lib.GOMP_parallel(body, None, ctypes.c_uint(n), ctypes.c_uint(0))
    return lib
"""


class Child:
    def __init__(self, proc: subprocess.Popen, facts: dict):
        self.proc, self.facts, self.pid = proc, facts, proc.pid


@contextmanager
def python_child(code: str, env: dict | None = None, preexec_fn=None, timeout: float = 120):
    """A fresh interpreter running PRELUDE + code; yields once it reported."""
    full_env = dict(os.environ, CI="true", PYTHONPATH=str(Path(__file__).parents[1]))
    full_env.update(env or {})
    full_env = {k: v for k, v in full_env.items() if v is not None}  # None: unset
    proc = subprocess.Popen([sys.executable, "-c", PRELUDE + textwrap.dedent(code)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=full_env, preexec_fn=preexec_fn)
    try:
        line = proc.stdout.readline()
        if not line:
            proc.wait(timeout)
            raise RuntimeError(f"child failed: {proc.stderr.read()}")
        yield Child(proc, json.loads(line))
    finally:
        try:
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def site_packages() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


def sklearn_libgomp() -> str:
    """GNU OpenMP as scikit-learn's wheel vendors it."""
    found = glob.glob(str(site_packages() / "scikit_learn.libs" / "libgomp*.so*"))
    if not found:
        pytest.skip("scikit-learn's vendored libgomp not installed (pip install scikit-learn)")
    return found[0]


def intel_libiomp5() -> str:
    """Intel OpenMP from the intel-openmp wheel (installed into <prefix>/lib)."""
    for base in (sys.prefix, sys.base_prefix):
        path = Path(base) / "lib" / "libiomp5.so"
        if path.exists():
            return str(path)
    pytest.skip("intel-openmp wheel not installed (pip install intel-openmp)")


def llvm_libomp() -> str:
    """LLVM OpenMP as Debian's libomp5-14 ships it."""
    for path in ("/usr/lib/x86_64-linux-gnu/libomp.so.5", "/usr/lib/aarch64-linux-gnu/libomp.so.5",
                 "/usr/lib/llvm-14/lib/libomp.so.5"):
        if os.path.exists(path):
            return path
    name = ctypes.util.find_library("omp")
    if name:
        return name
    pytest.skip("LLVM libomp not installed (apt-get install libomp5-14)")
