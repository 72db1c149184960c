"""The census on real processes: activity, run-queue delay, races, limits."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

import threadguard
from threadguard._errors import NoSuchProcess
from threadguard.threads import parse_schedstat, parse_stat
from procs import python_child

pytestmark = pytest.mark.live

SPIN_AND_SLEEP = """
import hashlib, threading, time
data = b"x" * (1 << 20)
stop = threading.Event()
def spin():
    while not stop.is_set():
        hashlib.sha256(data).digest()  # releases the GIL: really parallel
busy = [threading.Thread(target=spin, name=f"busy{i}") for i in range(int(sys.argv[1]) if len(sys.argv) > 1 else 2)]
idle = [threading.Thread(target=stop.wait, name=f"idle{i}") for i in range(3)]
for t in busy + idle:
    t.start()
time.sleep(0.1)
report(busy=[t.native_id for t in busy], idle=[t.native_id for t in idle])
stop.set()
"""


@pytest.mark.parametrize("data, expected", [
    (b"42 (python) S 1 2 3 4 5 6 7 8 9 10 150 25 0 0 20 0 1 0 100 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 17 3 0",
     ("python", "S", 150, 25, 3)),
    # A thread name may hold spaces and parentheses: the name ends at the last ')'.
    (b"7 (a) b (c)) R 1 2 3 4 5 6 7 8 9 10 1 2 0 0 20 0 1 0 100 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0",
     ("a) b (c)", "R", 1, 2, 0)),
])
def test_parse_stat(data, expected):
    assert parse_stat(data) == expected


def test_parse_schedstat():
    assert parse_schedstat(b"1500000 250000 7\n") == (1500000, 250000)


def test_busy_threads_are_active_idle_ones_are_not():
    with python_child(SPIN_AND_SLEEP) as child:
        census = threadguard.census(child.pid, interval=0.5)
    by_tid = {t.tid: t for t in census.threads}
    assert all(by_tid[tid].active for tid in child.facts["busy"])
    assert not any(by_tid[tid].active for tid in child.facts["idle"])
    assert census.threads_total == 6  # main + 2 busy + 3 idle
    assert census.threads_active >= 2
    assert census.cpu_used > 0.5


def test_run_delay_ratio_measures_oversubscription():
    # Three CPU-bound threads pinned to one CPU: at any moment two wait.
    pin = lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # noqa: E731
    code = SPIN_AND_SLEEP.replace("int(sys.argv[1]) if len(sys.argv) > 1 else 2", "3")
    with python_child(code, preexec_fn=pin) as child:
        census = threadguard.census(child.pid, interval=0.5)
    assert census.run_delay_ratio > 1.0
    busy = [t for t in census.threads if t.tid in child.facts["busy"]]
    assert all(t.allowed_cpus is not None and len(t.allowed_cpus) == 1 for t in busy)
    assert all(t.run_delay_seconds > 0 for t in busy)


def test_process_exiting_mid_interval_gives_partial_result():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3)"])
    reaper = threading.Thread(target=proc.wait)  # reaped at once: no zombie left
    reaper.start()
    census = threadguard.census(proc.pid, interval=1.5)
    reaper.join()
    assert census.threads_total == 0
    assert any("exited" in n for n in census.notes)


def test_thread_ending_mid_interval_is_noted():
    code = """
import threading, time
t = threading.Thread(target=time.sleep, args=(0.3,))
t.start()
report(short=t.native_id)
"""
    with python_child(code) as child:
        census = threadguard.census(child.pid, interval=1.0)
    assert child.facts["short"] not in {t.tid for t in census.threads}
    assert any("ended" in n for n in census.notes)


def test_zombie_is_reported_not_raised():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # wait until it exited but is not reaped
        with open(f"/proc/{proc.pid}/stat") as f:
            if f.read().split(")")[-1].split()[0] == "Z":
                break
        time.sleep(0.05)
    try:
        census = threadguard.census(proc.pid, interval=0.1)
    finally:
        proc.wait()
    assert any("zombie" in n for n in census.notes)
    assert census.threads_active == 0


def test_missing_process_raises_no_such_process():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    with pytest.raises(NoSuchProcess) as err:
        threadguard.census(proc.pid, interval=0)
    assert str(proc.pid) in str(err.value)


def test_snapshot_has_no_rates():
    census = threadguard.census(interval=0)
    assert census.run_delay_ratio is None and census.cpu_used is None
    assert census.threads_total >= 1
    assert any(t.tid == os.getpid() for t in census.threads)


def test_real_cpu_quota_is_read_and_throttling_reported(quota_cgroup):
    def join():
        with open(f"{quota_cgroup}/cgroup.procs", "w") as f:
            f.write(str(os.getpid()))
    with python_child(SPIN_AND_SLEEP, preexec_fn=join) as child:
        topo = threadguard.topology(pid=child.pid)
        census = threadguard.census(child.pid, interval=0.6)
    assert topo.cpu_quota == pytest.approx(0.2)
    assert topo.effective_cpus == 1
    assert census.throttling is not None
    assert census.throttling.periods > 0 and census.throttling.throttled_periods > 0
    assert census.throttling.throttled_share > 0.5
