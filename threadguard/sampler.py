"""Sampling a process's threads over time: the data behind watch and record.

Each thread's ``schedstat`` file stays open and is re-read with ``pread`` at
every sample (a few microseconds a thread), so sampling 100 threads at 10 Hz
costs the sampler well under a percent of a CPU and the sampled process
nothing but the kernel's bookkeeping. Between two samples a thread was:

- ``running``: it used at least a tenth of the interval on a CPU;
- ``runnable``: it waited for a CPU (run-queue delay) longer than that, and
  longer than it ran: the oversubscription;
- ``sleeping``: neither.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ._errors import NoSuchProcess
from .threads import TaskReader

RUNNING, RUNNABLE, SLEEPING = "running", "runnable", "sleeping"


@dataclass(frozen=True)
class Sample:
    t: float  # seconds since the recording started (end of the interval)
    dt: float
    states: dict  # tid -> (state, cpu seconds, delay seconds) over the interval


@dataclass
class Recording:
    pid: int
    hz: float
    effective_cpus: int
    started: float = field(default_factory=time.time)
    names: dict = field(default_factory=dict)  # tid -> thread name
    pools: dict = field(default_factory=dict)  # tid -> owner pool
    samples: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    def series(self):
        """Per sample: t, runnable-or-running threads per pool, waiting threads, delay ratio."""
        out = []
        for s in self.samples:
            busy: dict[str, int] = {}
            waiting = 0
            delay = 0.0
            for tid, (state, _cpu, d) in s.states.items():
                delay += d
                if state == RUNNABLE:
                    waiting += 1
                if state != SLEEPING:
                    pool = self.pools.get(tid, "other")
                    busy[pool] = busy.get(pool, 0) + 1
            out.append({"t": round(s.t, 4), "busy_by_pool": busy, "runnable": waiting,
                        "active": sum(busy.values()), "run_delay_ratio": round(delay / s.dt, 4)})
        return out


def classify(cpu: float, delay: float, dt: float) -> str:
    if delay >= 0.1 * dt and delay > cpu:
        return RUNNABLE
    if cpu >= 0.1 * dt:
        return RUNNING
    return SLEEPING


class Sampler:
    """Samples ``pid`` at ``hz`` until stopped or the process ends."""

    def __init__(self, pid: int, hz: float = 10.0, attribute: bool = True):
        from .machine import read_topology
        self.pid, self.hz, self.attribute = pid, hz, attribute
        self.reader = TaskReader(pid)
        self.recording = Recording(pid, hz, read_topology(pid=pid).effective_cpus)
        self._last: dict[int, tuple[int, int]] = {}
        self.interrupted = False  # stopped by Ctrl-C (or SIGTERM), not by the process
        self._t0 = time.monotonic()
        self._prev = self._t0
        self._prime()

    def _learn(self, tids):
        new = [t for t in tids if t not in self.recording.names]
        if not new:
            return
        for tid in new:
            st = self.reader.stat(tid)
            self.recording.names[tid] = st[0] if st else "?"
        if self.attribute:
            try:
                from .attribution import attribute_threads
                owners = attribute_threads(self.pid, new).owners
                for tid in new:
                    owner = owners.get(tid)
                    self.recording.pools[tid] = owner.pool if owner else "unattributed"
            except Exception as err:  # vanished, denied: keep sampling without owners
                self.recording.notes.append(f"owners unknown for some threads: {err}")

    def _prime(self):
        tids = self.reader.tids()
        self._learn(tids)
        for tid in tids:
            value = self.reader.schedstat(tid)
            if value is not None:
                self._last[tid] = value

    def sample(self) -> Sample | None:
        """One sample; None when the process has ended."""
        try:
            tids = self.reader.tids()
        except NoSuchProcess:
            return None
        if not tids:
            return None
        now = time.monotonic()
        dt = max(now - self._prev, 1e-6)
        main = self.reader.stat(self.pid)
        if main is None or main[1] in ("Z", "X"):  # exited, not yet reaped
            return None
        self._learn(tids)
        states = {}
        for tid in tids:
            value = self.reader.schedstat(tid)
            if value is None:
                continue
            oncpu0, delay0 = self._last.get(tid, value)
            cpu = max(value[0] - oncpu0, 0) / 1e9
            delay = max(value[1] - delay0, 0) / 1e9 if value[1] >= 0 else 0.0
            self._last[tid] = value
            states[tid] = (classify(cpu, delay, dt), cpu, delay)
        self._prev = now
        sample = Sample(now - self._t0, dt, states)
        self.recording.samples.append(sample)
        return sample

    def run(self, seconds: float | None = None, on_sample=None, stop=None) -> Recording:
        """Sample until ``seconds`` pass, ``stop()`` is true, or the process ends."""
        period = 1.0 / self.hz
        deadline = None if seconds is None else self._t0 + seconds
        next_at = self._t0 + period
        try:
            while True:
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                next_at += period
                sample = self.sample()
                if sample is None:
                    self.recording.notes.append("the process ended")
                    break
                if on_sample is not None:
                    on_sample(sample)
                if deadline is not None and time.monotonic() >= deadline:
                    break
                if stop is not None and stop():
                    break
        except KeyboardInterrupt:
            self.interrupted = True
            self.recording.notes.append("stopped with Ctrl-C")
        finally:
            self.reader.close()
        return self.recording
