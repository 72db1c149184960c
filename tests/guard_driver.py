"""Drives budget sections in real threads, one step at a time, for the
property-based tests: each worker thread runs the steps sent to it and
reports what it sees (its own OpenMP limit, the process's OpenBLAS limit).

Runs inside a fresh interpreter (see test_guard_properties.py)."""

from __future__ import annotations

import ctypes
import os
import queue
import threading

import threadguard
from threadguard import guard, host, numa
from threadpoolctl import threadpool_info

VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS", "OMP_WAIT_POLICY",
             "MKL_NUM_THREADS")


class Worker:
    """A thread that runs callables sent to it, one at a time."""

    def __init__(self, index: int, gomp):
        self.index, self.gomp = index, gomp
        self.inbox: queue.Queue = queue.Queue()
        self.entered: list = []  # the budget objects this thread is inside, in entry order
        self.thread = threading.Thread(target=self._run, name=f"driver-{index}", daemon=True)
        self.thread.start()

    def _run(self):
        while True:
            job, reply = self.inbox.get()
            if job is None:
                return
            try:
                reply.put((True, job(self)))
            except BaseException as err:  # reported to the driver, not raised here
                reply.put((False, err))

    def call(self, job, timeout: float = 30):
        reply: queue.Queue = queue.Queue()
        self.inbox.put((job, reply))
        ok, value = reply.get(timeout=timeout)
        if not ok:
            raise value
        return value

    def openmp_limit(self):
        return self.call(lambda w: w.gomp.omp_get_max_threads() if w.gomp else None)

    def stop(self):
        self.inbox.put((None, None))
        self.thread.join(10)


def pools() -> list:
    return sorted((os.path.basename(i["filepath"]), i["num_threads"]) for i in threadpool_info()
                  if i["internal_api"] != "openmp")


def snapshot(workers) -> dict:
    return {
        "pools": pools(),
        "openmp": [w.openmp_limit() for w in workers],
        "env": {k: os.environ.get(k) for k in VARIABLES},
        "affinity": sorted({tuple(sorted(os.sched_getaffinity(t)))  # runtimes start threads
                            for t in map(int, os.listdir("/proc/self/task"))}),
        "mempolicy": [w.call(lambda _: numa.get_mempolicy()) for w in workers],
        "sections": guard.sections_inside(),
        # Host-scoped sections held, and this process's slots in the host ledger.
        "host_holds": dict(host._member.holds),
        "guard_host": (dict(guard._ledger.host_live), set(guard._ledger.host_keep),
                       guard._ledger.host_cover, guard._ledger.host_cover_pinned),
        "host_slots": [s.index for s in host.participants() if s.pid == os.getpid()],
    }


def host_cover_problems() -> list[str]:
    """What breaks the guard's host accounting between steps: each entry
    that holds nothing of its own is within a live hold of this process
    that asks as much, every live hold is held in the host ledger, no hold
    is kept that no entry needs, nothing is left to give back."""
    led = guard._ledger
    with led.lock:
        entries = [e for stack in led.stacks.values() for e in stack]
        live, keep, forgotten = dict(led.host_live), set(led.host_keep), list(led.forgotten)
    problems = []
    cpus = guard.current_topology().effective_cpus
    covered = [e for e in entries if e.covered]
    for e in covered:
        need = min(e.want * e.section._host_callers, cpus)
        if not any(a >= need and (p or e.pin is None) for a, p in live.values()):
            problems.append(f"covered entry asking {need} has no live hold as large: {live}")
    holders = {e.host_token for e in entries if e.host_token}
    for token in live:
        if token not in host._member.holds:
            problems.append(f"live hold {token} not held: {host._member.holds}")
        if token not in holders and token not in keep:
            problems.append(f"live hold {token} of no entry, not kept")
    for token in keep:  # kept only while an entry needs it
        rest = [held for t, held in live.items() if t != token]
        if all(any(a >= min(e.want * e.section._host_callers, cpus) and (p or e.pin is None)
                   for a, p in rest) for e in covered):
            problems.append(f"hold {token} kept, needed by no entry: {live}")
    if forgotten:
        problems.append(f"holds left to give back: {forgotten}")
    return problems


class Driver:
    def __init__(self, n_threads: int, gomp_path: str | None):
        self.gomp_path = gomp_path
        gomp = ctypes.CDLL(gomp_path) if gomp_path else None
        self.workers = [Worker(i, gomp) for i in range(n_threads)]
        self.shared = threadguard.budget(2)  # one object reused by every thread
        self.refused: set[int] = set()  # threads whose section another thread left

    def enter(self, who: int, threads: int, env: bool, pin: bool, reuse: bool,
              scope: str = "process"):
        def job(w):
            section = self.shared if reuse else threadguard.budget(
                threads, env=env, pin=pin, allow_oversubscription=True, scope=scope)
            section.__enter__()
            w.entered.append(section)
            return section.threads
        return self.workers[who].call(job)

    def exit(self, who: int, pick: int):
        """Leave one of the thread's entries, not necessarily the innermost."""
        def job(w):
            if not w.entered:
                return None
            section = w.entered.pop(pick % len(w.entered))
            section.__exit__(None, None, None)
        return self.workers[who].call(job)

    def exit_elsewhere(self, who: int, other: int):
        """Leave thread ``who``'s innermost entry from thread ``other``: refused
        with CrossThreadExit, process-wide values restored."""
        w = self.workers[who]
        if not w.entered or who == other or w.entered[-1] is self.shared:
            return None  # the shared object would leave the other thread's own entry
        section = w.entered.pop()
        if any(s is section for s in w.entered):
            w.entered.append(section)
            return None
        try:
            self.workers[other].call(lambda _: section.__exit__(None, None, None))
        except guard.CrossThreadExit:
            self.refused.add(who)
            return "refused"
        return "left"

    def raise_inside(self, who: int, threads: int):
        def job(w):
            try:
                with threadguard.budget(threads, allow_oversubscription=True):
                    raise KeyError("inside")
            except KeyError:
                return "raised"
        return self.workers[who].call(job)

    def load_runtime(self, who: int, path: str):
        """Load an OpenMP runtime now, inside whatever sections are active (a
        no-op once loaded); its limits are then read in every worker."""
        def job(w):
            lib = ctypes.CDLL(path)
            self.late = lib
            return lib.omp_get_max_threads()
        return self.workers[who].call(job)

    def late_limits(self) -> list:
        """Each worker's limit in the runtime loaded late, and a fresh thread's."""
        lib = getattr(self, "late", None)
        if lib is None:
            return []
        seen = [w.call(lambda _: lib.omp_get_max_threads()) for w in self.workers]
        fresh: list = []
        t = threading.Thread(target=lambda: fresh.append(lib.omp_get_max_threads()))
        t.start()
        t.join()
        return seen + fresh

    def fork(self, who: int):
        """Fork from a worker thread; the child reports what its ledger holds."""
        def job(w):
            r, wfd = os.pipe()
            pid = os.fork()
            if pid == 0:
                try:
                    inside = guard.sections_inside()
                    with threadguard.budget(1):
                        pass
                    ok = guard.sections_inside() == inside and inside <= 1
                    os.write(wfd, b"ok" if ok else b"bad")
                finally:
                    os._exit(0)
            os.close(wfd)
            data = os.read(r, 16)
            os.close(r)
            os.waitpid(pid, 0)
            return data.decode()
        return self.workers[who].call(job)

    def unwind(self):
        """Leave every entry, each from its own thread, innermost first. A
        thread whose section another thread left gets its own OpenMP limit
        back at its next budget call (only it can set it): one is made."""
        for w in self.workers:
            while w.entered:
                self.exit(w.index, -1)
        def next_call(_):
            with threadguard.budget(1):
                pass
        for who in sorted(self.refused):
            self.workers[who].call(next_call)
        self.refused.clear()

    def close(self):
        self.unwind()
        for w in self.workers:
            w.stop()
