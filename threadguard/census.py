"""The threads of one process, measured over an interval.

Per thread: state, CPU time, run-queue delay (time spent runnable but waiting
for a CPU, from ``/proc/PID/task/TID/schedstat``), the CPU it last ran on and
its allowed CPUs. A thread counts as *active* by the CPU it used in the
interval, not by its state: idle OpenMP and TBB workers spin-yield and show
state ``R`` while using almost nothing.

The run-delay ratio (waiting time summed over threads / interval) is the
measured oversubscription: 0 means no thread ever waited for a CPU, 2 means
that on average two threads were waiting. Under a CPU quota, throttled time
shows up as run delay too, so the cgroup's throttling counters are read over
the same interval and reported apart.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from . import cgroup
from ._errors import AccessDenied, NoSuchProcess
from ._fs import FsRoot

ACTIVE_SHARE = 0.05  # of one CPU over the interval
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class ThreadSample:
    """One read of one thread (cumulative counters)."""

    tid: int
    name: str
    state: str
    utime: float  # seconds, tick resolution
    stime: float
    oncpu_ns: int  # schedstat: time spent running
    delay_ns: int  # schedstat: time spent runnable, waiting for a CPU
    last_cpu: int | None


@dataclass(frozen=True)
class ThreadStats:
    """One thread over the census interval."""

    tid: int
    name: str
    state: str
    cpu_seconds: float  # user + system, since the thread started
    user_seconds: float
    system_seconds: float
    interval_cpu_seconds: float | None  # CPU time used during the interval
    run_delay_seconds: float | None  # run-queue wait during the interval
    cpu_share: float | None  # interval CPU time / interval (1.0 = one CPU)
    active: bool
    last_cpu: int | None
    allowed_cpus: tuple[int, ...] | None


@dataclass(frozen=True)
class Throttling:
    periods: int
    throttled_periods: int
    throttled_seconds: float

    @property
    def throttled_share(self) -> float | None:
        return self.throttled_periods / self.periods if self.periods else None


@dataclass(frozen=True)
class Census:
    pid: int
    interval: float  # measured wall time between the two reads
    threads: tuple[ThreadStats, ...]
    threads_total: int
    threads_active: int
    peak_runnable: int  # most threads in state R at one read
    cpu_used: float | None  # CPUs' worth of time used in the interval
    run_delay_ratio: float | None  # summed run-queue wait / interval
    throttling: Throttling | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)


def _read(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 4096)
    finally:
        os.close(fd)


def parse_stat(data: bytes) -> tuple[str, str, int, int, int | None]:
    """``/proc/.../stat`` -> (name, state, utime ticks, stime ticks, last CPU)."""
    open_paren = data.index(b"(")
    close_paren = data.rindex(b")")
    name = data[open_paren + 1:close_paren].decode("utf-8", "replace")
    rest = data[close_paren + 2:].split()
    last_cpu = int(rest[36]) if len(rest) > 36 else None
    return name, rest[0].decode(), int(rest[11]), int(rest[12]), last_cpu


def parse_schedstat(data: bytes) -> tuple[int, int]:
    """``schedstat`` -> (ns on CPU, ns waiting on a run queue)."""
    oncpu, delay, _ = data.split()
    return int(oncpu), int(delay)


def _sample_thread(task_dir: str, tid: int) -> ThreadSample | None:
    """None when the thread vanished between listing and reading."""
    try:
        name, state, ut, st, last_cpu = parse_stat(_read(f"{task_dir}/{tid}/stat"))
    except (FileNotFoundError, ProcessLookupError):
        return None
    try:
        oncpu, delay = parse_schedstat(_read(f"{task_dir}/{tid}/schedstat"))
    except (FileNotFoundError, ProcessLookupError):
        return None
    except (OSError, ValueError):  # schedstats disabled in this kernel
        oncpu, delay = int((ut + st) * 1e9 / _TICK), -1
    return ThreadSample(tid, name, state, ut / _TICK, st / _TICK, oncpu, delay, last_cpu)


def _list_tids(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError as err:
        raise NoSuchProcess(pid) from err
    except PermissionError as err:
        raise AccessDenied(pid, "cannot list /proc/PID/task") from err


def sample(pid: int) -> dict[int, ThreadSample]:
    """Every thread of ``pid`` now; raises NoSuchProcess if it is gone."""
    task_dir = f"/proc/{pid}/task"
    out = {}
    for tid in _list_tids(pid):
        s = _sample_thread(task_dir, tid)
        if s is not None:
            out[tid] = s
    if not out and not os.path.exists(f"/proc/{pid}"):
        raise NoSuchProcess(pid)
    return out


def _read_cpu_stat(path: str | None) -> cgroup.CpuStat | None:
    if path is None:
        return None
    try:
        with open(path) as f:
            return cgroup.parse_cpu_stat(f.read())
    except OSError:
        return None


def _affinity(tid: int) -> tuple[int, ...] | None:
    try:
        return tuple(sorted(os.sched_getaffinity(tid)))
    except (OSError, AttributeError):
        return None


def take_census(pid: int | None = None, interval: float = 0.2, *,
                active_share: float = ACTIVE_SHARE) -> Census:
    """Measure every thread of ``pid`` (default: this process) over ``interval``
    seconds. ``interval=0`` takes one snapshot: no rates, no run-delay ratio."""
    pid = os.getpid() if pid is None else int(pid)
    notes: list[str] = []
    stat_file = cgroup.read_limits(FsRoot("/"), pid).cpu_stat_file
    cpu_stat0 = _read_cpu_stat(stat_file)
    t0 = time.monotonic()
    first = sample(pid)
    runnable = [sum(1 for s in first.values() if s.state == "R")]
    last = first
    elapsed = 0.0
    if interval > 0:
        time.sleep(interval)
        try:
            last = sample(pid)
            runnable.append(sum(1 for s in last.values() if s.state == "R"))
        except NoSuchProcess:
            notes.append(f"process {pid} exited during the interval: counts are from its start")
            last = {}
        elapsed = time.monotonic() - t0
    cpu_stat1 = _read_cpu_stat(stat_file)

    main = first.get(pid)
    if main is not None and main.state == "Z":
        notes.append(f"process {pid} is a zombie: its threads are gone")
    vanished = set(first) - set(last) if last else set()
    if vanished and last:
        notes.append(f"{len(vanished)} thread(s) ended during the interval")
    born = set(last) - set(first)

    threads = []
    for tid in sorted(set(first) | set(last)):
        a, b = first.get(tid), last.get(tid)
        now = b or a
        if elapsed > 0 and b is not None:
            oncpu0 = a.oncpu_ns if a else 0
            delay0 = a.delay_ns if a else 0
            used = max(b.oncpu_ns - oncpu0, 0) / 1e9
            delay = (max(b.delay_ns - delay0, 0) / 1e9) if b.delay_ns >= 0 else None
            share = used / elapsed
        else:
            used = delay = share = None
        active = share is not None and share >= active_share and now.state not in "ZX"
        threads.append(ThreadStats(
            tid=tid, name=now.name, state=now.state,
            cpu_seconds=now.utime + now.stime, user_seconds=now.utime,
            system_seconds=now.stime, interval_cpu_seconds=used, run_delay_seconds=delay,
            cpu_share=share, active=active, last_cpu=now.last_cpu,
            allowed_cpus=_affinity(tid) if b is not None or elapsed == 0 else None))
    if born:
        notes.append(f"{len(born)} thread(s) started during the interval")

    if elapsed > 0:
        measured = [t for t in threads if t.interval_cpu_seconds is not None]
        cpu_used = sum(t.interval_cpu_seconds for t in measured) / elapsed
        delays = [t.run_delay_seconds for t in measured if t.run_delay_seconds is not None]
        ratio = sum(delays) / elapsed if delays else None
        if not delays and measured:
            notes.append("schedstat unavailable: run-queue delay unknown")
    else:
        cpu_used = ratio = None

    throttling = None
    if cpu_stat0 is not None and cpu_stat1 is not None and elapsed > 0:
        throttling = Throttling(cpu_stat1.nr_periods - cpu_stat0.nr_periods,
                                cpu_stat1.nr_throttled - cpu_stat0.nr_throttled,
                                cpu_stat1.throttled_seconds - cpu_stat0.throttled_seconds)
    return Census(
        pid=pid, interval=elapsed, threads=tuple(threads),
        threads_total=len(last or first), threads_active=sum(t.active for t in threads),
        peak_runnable=max(runnable), cpu_used=cpu_used, run_delay_ratio=ratio,
        throttling=throttling, notes=tuple(notes))
