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
from typing import NamedTuple

from . import cgroup
from ._errors import AccessDenied, NoSuchProcess
from ._fs import FsRoot

ACTIVE_SHARE = 0.05  # of one CPU over the interval
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class ThreadStats(NamedTuple):
    """One thread over the census interval (a named tuple: a census of
    thousands of threads builds thousands of these)."""

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
    peak_runnable: int  # threads in state R when they were read
    cpu_used: float | None  # CPUs' worth of time used in the interval
    run_delay_ratio: float | None  # summed run-queue wait / interval
    throttling: Throttling | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)


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


def _fd_budget() -> int:
    """How many schedstat files may stay open between reads (half the free fds)."""
    try:
        import resource
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft == resource.RLIM_INFINITY:
            soft = 65536
    except (ImportError, OSError, ValueError):
        soft = 1024
    if soft <= 0:
        soft = 65536
    in_use = len(os.listdir("/proc/self/fd"))
    return max(0, (soft - in_use) // 2)


class TaskReader:
    """Reads ``/proc/PID/task/*``, keeping schedstat files open between reads.

    Opening a /proc file costs several times more than re-reading it
    (``pread`` at offset 0 regenerates it), so a census of 1,000 threads
    opens each thread's files once.
    """

    def __init__(self, pid: int):
        self.pid = pid
        try:
            self.task_fd = os.open(f"/proc/{pid}/task", os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError as err:
            raise NoSuchProcess(pid) from err
        except PermissionError as err:
            raise AccessDenied(pid, "cannot open /proc/PID/task") from err
        self.kept: dict[int, int] = {}
        self.budget = _fd_budget()

    def close(self) -> None:
        for fd in self.kept.values():
            os.close(fd)
        self.kept.clear()
        os.close(self.task_fd)

    def tids(self) -> list[int]:
        try:
            return [int(t) for t in os.listdir(self.task_fd)]
        except OSError as err:
            if not os.path.exists(f"/proc/{self.pid}"):
                raise NoSuchProcess(self.pid) from err
            raise AccessDenied(self.pid, str(err)) from err

    def schedstat(self, tid: int) -> tuple[int, int] | None:
        """(ns on CPU, ns of run-queue delay); None if the thread is gone;
        delay -1 when the kernel keeps no schedstats."""
        fd = self.kept.get(tid)
        try:
            if fd is not None:
                return parse_schedstat(os.pread(fd, 128, 0))
            fd = os.open(b"%d/schedstat" % tid, os.O_RDONLY, dir_fd=self.task_fd)
        except (FileNotFoundError, ProcessLookupError):
            return None
        except (OSError, ValueError):
            return (-1, -1)
        try:
            data = os.read(fd, 128)
        except OSError:
            os.close(fd)
            return None
        if len(self.kept) < self.budget:
            self.kept[tid] = fd
        else:
            os.close(fd)
        try:
            return parse_schedstat(data)
        except ValueError:
            return (-1, -1)

    def stat(self, tid: int):
        try:
            fd = os.open(b"%d/stat" % tid, os.O_RDONLY, dir_fd=self.task_fd)
        except (FileNotFoundError, ProcessLookupError):
            return None
        try:
            data = os.read(fd, 1024)
        except ProcessLookupError:
            return None
        finally:
            os.close(fd)
        try:
            return parse_stat(data)
        except (ValueError, IndexError):
            return None


def _read_cpu_stat(path: str | None) -> cgroup.CpuStat | None:
    if path is None:
        return None
    try:
        with open(path) as f:
            return cgroup.parse_cpu_stat(f.read())
    except OSError:
        return None


def take_census(pid: int | None = None, interval: float = 0.2, *,
                active_share: float = ACTIVE_SHARE) -> Census:
    """Measure every thread of ``pid`` (default: this process) over ``interval``
    seconds. ``interval=0`` takes one snapshot: no rates, no run-delay ratio.

    Threads are listed at the end of the interval; those that ended during it
    are counted in a note, those born during it are measured from their start.
    """
    pid = os.getpid() if pid is None else int(pid)
    notes: list[str] = []
    stat_file = cgroup.read_limits(FsRoot("/"), pid).cpu_stat_file
    reader = TaskReader(pid)
    try:
        cpu_stat0 = _read_cpu_stat(stat_file)
        t0 = time.monotonic()
        first = {}
        if interval > 0:
            for tid in reader.tids():
                value = reader.schedstat(tid)
                if value is not None:
                    first[tid] = value
            time.sleep(interval)
        try:
            tids = reader.tids()
        except NoSuchProcess:
            if not first:
                raise
            tids = []
        elapsed = max(time.monotonic() - t0, 1e-9) if interval > 0 else 0.0
        threads = []
        no_schedstat = False
        stat, schedstat, affinity = reader.stat, reader.schedstat, os.sched_getaffinity
        tick = float(_TICK)
        for tid in tids:
            st = stat(tid)
            if st is None:
                continue
            name, state, ut, stt, last_cpu = st
            used = delay_s = share = None
            if interval > 0:  # a snapshot needs no schedstat: it has no rates
                sched = schedstat(tid)
                if sched is None:
                    continue
                oncpu, delay = sched
                if oncpu < 0:
                    no_schedstat = True
                else:
                    oncpu0, delay0 = first.get(tid, (0, 0))
                    used = (oncpu - oncpu0) / 1e9 if oncpu > oncpu0 else 0.0
                    share = used / elapsed
                    delay_s = ((delay - delay0) / 1e9 if delay > delay0 else 0.0) if delay >= 0 else None
            try:
                allowed = tuple(sorted(affinity(tid)))
            except OSError:
                allowed = None
            threads.append(ThreadStats(
                tid, name, state, (ut + stt) / tick, ut / tick, stt / tick, used, delay_s, share,
                share is not None and share >= active_share and state not in "ZX",
                last_cpu, allowed))
        cpu_stat1 = _read_cpu_stat(stat_file)
    finally:
        reader.close()

    if first and not threads and not os.path.exists(f"/proc/{pid}"):
        notes.append(f"process {pid} exited during the interval: nothing left to measure")
    main = next((t for t in threads if t.tid == pid), None)
    if main is not None and main.state == "Z":
        notes.append(f"process {pid} is a zombie: its threads are gone")
    seen = {t.tid for t in threads}
    ended = set(first) - seen
    born = seen - set(first) if interval > 0 else set()
    if ended and threads:
        notes.append(f"{len(ended)} thread(s) ended during the interval")
    if born:
        notes.append(f"{len(born)} thread(s) started during the interval")
    if no_schedstat:
        notes.append("schedstat unavailable in this kernel: CPU time and run-queue delay unknown")

    cpu_used = ratio = None
    if elapsed > 0:
        used = [t.interval_cpu_seconds for t in threads if t.interval_cpu_seconds is not None]
        delays = [t.run_delay_seconds for t in threads if t.run_delay_seconds is not None]
        cpu_used = sum(used) / elapsed if used else (0.0 if not threads else None)
        ratio = sum(delays) / elapsed if delays else (0.0 if not threads else None)

    throttling = None
    if cpu_stat0 is not None and cpu_stat1 is not None and elapsed > 0:
        throttling = Throttling(cpu_stat1.nr_periods - cpu_stat0.nr_periods,
                                cpu_stat1.nr_throttled - cpu_stat0.nr_throttled,
                                cpu_stat1.throttled_seconds - cpu_stat0.throttled_seconds)
    return Census(
        pid=pid, interval=elapsed, threads=tuple(threads), threads_total=len(threads),
        threads_active=sum(t.active for t in threads),
        peak_runnable=sum(1 for t in threads if t.state == "R"),
        cpu_used=cpu_used, run_delay_ratio=ratio, throttling=throttling, notes=tuple(notes))
