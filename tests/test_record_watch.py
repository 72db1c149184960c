"""record and watch on real oversubscribed and guarded workloads."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import threadguard

pytestmark = [pytest.mark.live, pytest.mark.slow]
ROOT = Path(__file__).parents[1]
CPUS = threadguard.topology().effective_cpus
ENV = dict(os.environ, CI="true", PYTHONPATH=str(ROOT))

# As many Python threads as CPUs, each calling OpenBLAS sized to every CPU:
# oversubscribed by the pools alone. GUARDED runs each thread in a budget.
WORKLOAD = """
import sys, threading, time
import numpy as np
import threadguard
guarded = sys.argv[1] == "guarded"
a = np.random.rand(400, 400)
def work():
    t = time.time()
    while time.time() - t < 3:
        a @ a
def run():
    if guarded:
        with threadguard.budget():
            work()
    else:
        work()
threads = [threading.Thread(target=run) for _ in range(int(sys.argv[2]))]
[t.start() for t in threads]; [t.join() for t in threads]
"""


def record(tmp_path, mode):
    script = tmp_path / "work.py"
    script.write_text(WORKLOAD)
    out_dir = tmp_path / mode
    out = subprocess.run([sys.executable, "-m", "threadguard", "record", "-o", str(out_dir),
                          "--hz", "20", "--", sys.executable, str(script), mode, str(CPUS)],
                         capture_output=True, text=True, env=ENV, timeout=120)
    assert out.returncode == 0, out.stderr
    return out_dir, out


def p90(values):
    values = sorted(values)
    return values[int(0.9 * (len(values) - 1))]


@pytest.mark.skipif(CPUS < 2, reason="needs 2 CPUs for OpenBLAS to start workers")
def test_record_oversubscribed_vs_guarded(tmp_path):
    import matplotlib.image
    over_dir, over_out = record(tmp_path, "unguarded")
    calm_dir, _ = record(tmp_path, "guarded")
    trace = json.loads((over_dir / "trace.json").read_text())
    events = trace["traceEvents"]
    tracks = [e["args"]["name"] for e in events if e.get("name") == "thread_name"]
    assert any(t.startswith("openblas:") for t in tracks)
    assert any(t.startswith("python:") for t in tracks)
    slices = {e["name"] for e in events if e["ph"] == "X"}
    assert slices <= {"running", "runnable", "sleeping"} and {"runnable", "sleeping"} <= slices
    assert all(e["dur"] > 0 for e in events if e["ph"] == "X")
    assert {e["name"] for e in events if e["ph"] == "C"} == {"threads", "allowed CPUs"}
    png = over_dir / "timeline.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.image.imread(str(png)).shape[0] > 100
    assert (over_dir / "timeline.svg").read_text().lstrip().startswith(("<?xml", "<svg"))
    summary = json.loads((over_dir / "summary.json").read_text())
    assert summary["schema"] == "threadguard.report/1"

    def busy(d):
        return [p["active"] for p in json.loads((d / "summary.json").read_text())["recording"]["series"]]
    assert p90(busy(over_dir)) > CPUS  # more threads than CPUs most of the time
    assert p90(busy(calm_dir)) <= CPUS
    assert "more threads than CPUs" in over_out.stdout


def test_ctrl_c_ends_the_recording_and_still_writes(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "threadguard", "record", "-o", str(tmp_path / "r"),
                             "--", sys.executable, "-c", "import time; time.sleep(60)"],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert "wrote" in out, err
    assert {p.name for p in (tmp_path / "r").iterdir()} == {
        "trace.json", "timeline.png", "timeline.svg", "summary.json"}
    assert "Ctrl-C" in json.loads((tmp_path / "r" / "summary.json").read_text())["recording"]["notes"][0]


def test_record_a_running_pid(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        out = subprocess.run([sys.executable, "-m", "threadguard", "record", "--pid", str(child.pid),
                              "--seconds", "0.5", "-o", str(tmp_path / "p")], capture_output=True,
                             text=True, env=ENV, timeout=60)
    finally:
        child.kill()
        child.wait()
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "p" / "summary.json").read_text())["recording"]["pid"] == child.pid


@pytest.mark.parametrize("args", [["record"], ["record", "--pid", "1"], ["watch"], ["watch", "abc"],
                                  ["watch", "999999999"], ["record", "--hz", "0", "--", "true"]])
def test_bad_input_exits_2(args):
    out = subprocess.run([sys.executable, "-m", "threadguard", *args], capture_output=True,
                         text=True, env=ENV, timeout=60)
    assert out.returncode == 2 and "Traceback" not in out.stderr


def test_watch_prints_plain_lines_when_not_a_terminal(tmp_path):
    script = tmp_path / "work.py"
    script.write_text(WORKLOAD)
    out = subprocess.run([sys.executable, "-m", "threadguard", "watch", "--", sys.executable,
                          str(script), "unguarded", "1"], capture_output=True, text=True, env=ENV,
                         timeout=60)
    lines = out.stdout.strip().splitlines()
    assert len(lines) >= 3 and all("CPUs" in line and "busy" in line for line in lines[:-1])
    assert "\x1b[" not in out.stdout
    assert lines[-1].startswith(tuple("0123456789")) and "samples over" in lines[-1]


def test_watch_in_a_terminal_quits_on_q():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    pid, fd = pty.fork()
    if pid == 0:  # the watcher, on a real terminal
        os.execvpe(sys.executable, [sys.executable, "-m", "threadguard", "watch", str(child.pid)], ENV)
    output = b""
    try:
        deadline = time.monotonic() + 30
        while b"busy threads" not in output and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.5)[0]:
                output += os.read(fd, 65536)
        os.write(fd, b"q")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if select.select([fd], [], [], 0.5)[0]:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                output += chunk
        _, status = os.waitpid(pid, 0)
    finally:
        child.kill()
        child.wait()
    text = output.decode(errors="replace")
    assert "busy threads" in text and "q or Ctrl-C to quit" in text
    assert "samples over" in text  # the summary after quitting
    assert os.waitstatus_to_exitcode(status) == 0
