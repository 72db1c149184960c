"""The examples in examples/ run for real and do what they say."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import threadguard

ROOT = Path(__file__).parents[1]
ENV = dict(os.environ, CI="true", PYTHONPATH=str(ROOT))
SHARE = max(1, threadguard.topology().effective_cpus // 2)


def run_example(name: str) -> str:
    out = subprocess.run([sys.executable, str(ROOT / "examples" / name)], capture_output=True,
                         text=True, env=ENV, timeout=180, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_budget_basics():
    out = run_example("budget_basics.py")
    before = re.search(r"before: (.*) OMP_NUM_THREADS = (\S+)", out).groups()
    inside = re.search(r"inside: (.*) OMP_NUM_THREADS = (\S+)", out).groups()
    after = re.search(r"after: +(.*) OMP_NUM_THREADS = (\S+)", out).groups()
    exported = re.search(r"env=True: (.*) OMP_NUM_THREADS = (\S+)", out).groups()
    assert inside == ("{'openblas': 1}", before[1])  # the environment left alone
    assert exported == ("{'openblas': 1}", "1")
    assert after == before


def test_process_pools():
    out = run_example("process_pools.py")
    rows = re.findall(r"worker \d+: CPUs \[(.*?)\], OMP_NUM_THREADS=(\d+), pools \[(.*?)\]", out)
    assert len(rows) >= 2
    assert all(omp == str(SHARE) and set(pools.split(", ")) == {str(SHARE)}
               for _, omp, pools in rows)


def test_joblib_loky():
    pytest.importorskip("joblib")
    out = run_example("joblib_loky.py")
    rows = re.findall(r"pools \[(.*?)\] \(inner_max_num_threads=(\d+)\)", out)
    assert rows and all(n == str(SHARE) and set(p.split(", ")) == {n} for p, n in rows)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gunicorn_post_fork_gives_each_worker_its_share():
    pytest.importorskip("gunicorn")
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "examples/gunicorn_conf.py",
         "--bind", f"127.0.0.1:{port}", "examples.wsgi_app:app"],
        cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = {}
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(seen) < 2:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                    answer = json.load(r)
                seen[answer["pid"]] = answer
            except OSError:
                time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert seen, proc.stderr.read().decode()[-2000:]
    for answer in seen.values():
        assert answer["omp"] == str(SHARE)
        assert set(answer["pools"]) == {SHARE}


@pytest.mark.slow
def test_pytest_suite_example_under_xdist():
    out = subprocess.run([sys.executable, "-m", "pytest", "--threadguard", "-n", "2", "-p",
                          "no:cacheprovider", "-o", "addopts=", "examples/pytest_suite"],
                         capture_output=True, text=True, env=ENV, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-3000:]
    assert f"budget: gw0: {SHARE} thread(s)" in out.stdout
    assert f"budget: gw1: {SHARE} thread(s)" in out.stdout
    assert re.search(r"test_leaks_a_python_thread\s+TG601 thread leak\s+python\s+1\s+forgotten-worker",
                     out.stdout)
