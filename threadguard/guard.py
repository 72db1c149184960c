"""``budget()``: apply a plan to every pool of this process, and restore it.

The only module that changes the process. Values are recorded before they
are changed and put back on exit, on exceptions too: pool limits, the
environment children read, CPU affinity and memory policy.

The ledger shares the CPUs between Python threads that are inside budget
sections at the same time: with ``k`` sections active on ``C`` effective
CPUs each is granted ``C // k`` (at least 1, its own thread). Limits that are
one value per process (OpenBLAS, MKL, BLIS, OpenCV, torch, the environment)
follow the smallest current grant at once, so they shrink when a section
enters and grow back when one leaves. Limits that belong to a thread (an
OpenMP runtime's nthreads-var, numba) can only be set by that thread: a
section sets its own at entry, and an entering section is granted no more
than what the others' thread limits leave; a section already inside keeps
its thread limit until its next entry.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
import warnings
from dataclasses import dataclass, field

from . import _env
from . import limiters as _limiters
from . import numa as _numa
from .libraries import linker_generation, loaded_libraries
from .planner import FALLS_BACK_TO_OMP, Plan, check_count, check_mode, make_plan
from .machine import Topology, read_topology
from .runtime_libs import classify


class OversubscriptionWarning(UserWarning):
    """A budget asked for more threads than the process has CPUs."""


@dataclass(frozen=True)
class Applied:
    """What one budget did to one library or setting."""

    target: str  # library name, an environment variable, "affinity", "memory policy"
    scope: str  # process | thread
    before: object
    after: object
    status: str  # applied | refused | skipped
    path: str | None = None
    note: str | None = None


class _Registry:
    """Limiters for what is loaded, rebuilt only when the linker's list changed
    (``dl_iterate_phdr``'s adds/subs counters) or a pool-owning module was imported."""

    def __init__(self):
        self.generation = None
        self.modules_key = None
        self.runtime: list = []
        self.modules: list = []
        self.split: tuple[tuple, tuple] = ((), ())
        self.tbb_with_openmp = False

    def current(self) -> tuple[tuple, tuple]:
        """``(process-scope limiters, thread-scope limiters)``."""
        generation = linker_generation()
        modules = sys.modules
        key = ("torch" in modules, "cv2" in modules, "numba.np.ufunc.parallel" in modules)
        if generation != self.generation or key != self.modules_key:
            if generation != self.generation:
                self.runtime = _limiters.runtime_limiters()
                kinds = {k for k, _ in filter(None, (classify(lib.path) for lib in
                                                     loaded_libraries().libraries))}
                self.tbb_with_openmp = {"tbb", "openmp"} <= kinds
            if key != self.modules_key:
                self.modules = _limiters.module_limiters()
            self.generation, self.modules_key = generation, key
            every = self.runtime + self.modules
            self.split = (tuple(x for x in every if x.scope == _limiters.PROCESS),
                          tuple(x for x in every if x.scope == _limiters.THREAD))
        return self.split


_registry = _Registry()
_topology_cache: dict = {}
_plan_cache: dict = {}
def _always_set() -> tuple[str, ...]:
    """Variables set on every entry: OMP_NUM_THREADS, which the BLAS libraries
    read when their own is unset, and those with no such fallback."""
    import importlib.util
    names = ["OMP_NUM_THREADS"]
    if importlib.util.find_spec("numba") is not None:
        names.append("NUMBA_NUM_THREADS")
    if sys.platform == "darwin":
        names.append("VECLIB_MAXIMUM_THREADS")
    return tuple(names)


_ENV_NAMES = _always_set()
_ENV_ENTRY = object()  # marks the environment's raw entry in a report
_ENV = tuple(_env.Variable(name) for name in _ENV_NAMES)
# Set only when present: an exported OPENBLAS_NUM_THREADS=8 would beat OMP_NUM_THREADS.
_ENV_IF_SET = tuple(_env.Variable(name) for name in FALLS_BACK_TO_OMP)
# TBB and OpenMP pools in one process: OpenMP workers that spin while TBB runs
# steal its cores (OpenVINO's guide). Runtimes read this at start: children.
_WAIT_POLICY = _env.Variable("OMP_WAIT_POLICY")


@functools.lru_cache(maxsize=256)
def _encoded(value: int):
    return _env.encode(str(value))


def _env_report(before: tuple) -> str:
    values = {os.fsdecode(v) if isinstance(v, bytes) else v for v in before}
    return "unset" if values == {None} else ", ".join(sorted(str(v) for v in values))


def _topology() -> Topology:
    key = os.getpid()  # a forked child re-reads its own limits
    topo = _topology_cache.get(key)
    if topo is None:
        _topology_cache.clear()
        topo = _topology_cache[key] = read_topology()
    return topo


class _Ledger:
    """The sections active now: one stack per Python thread, and the
    original process-wide values to put back when the last one leaves."""

    def __init__(self):
        self.lock = threading.Lock()
        self.stacks: dict[int, list["budget"]] = {}
        self.saved: dict | None = None

    def process_value(self) -> int:
        """What process-wide limits are set to: every active thread's share."""
        if len(self.stacks) == 1:
            (stack,) = self.stacks.values()
            return min(stack[-1]._want, stack[-1]._capacity)
        tops = [stack[-1] for stack in self.stacks.values()]
        capacity = max(top._capacity for top in tops)
        share = max(1, capacity // len(tops))
        return min(share, min(top._want for top in tops))


_ledger = _Ledger()


class budget:
    """Cap every thread pool of this process to a matched budget.

    ``threads``: the budget (default: planned from the CPUs this process may
    use, see ``threadguard.plan``). ``mode``: ``throughput`` or ``latency``.
    ``pin``: restrict CPU affinity (and memory, on several NUMA nodes) to the
    planned CPUs while inside. ``env``: also set the variables child
    processes read (``OMP_NUM_THREADS``...). Usable as a context manager and
    as a decorator; nested budgets never exceed the outer one.
    """

    def __init__(self, threads: int | None = None, *, mode: str = "throughput",
                 pin: bool | None = False, socket: int | None = None, env: bool = True,
                 allow_oversubscription: bool = False, topology: Topology | None = None,
                 plan: Plan | None = None):
        if threads is not None:
            check_count(threads)
        self.requested = threads
        self.mode = check_mode(mode)
        self.pin = pin
        self.socket = socket
        self.env = env
        self.allow_oversubscription = allow_oversubscription
        self._topology = topology
        self._plan: Plan | None = plan
        if plan is not None:  # an exact share (a worker's), applied as planned
            self.requested = plan.threads
            self._capacity = max((topology or _topology()).effective_cpus, plan.threads)
        if socket is not None:  # validate now: bad input fails at the call site
            make_plan(topology or _topology(), mode, socket=socket)
        self._capacity = self._capacity if plan is not None else 0
        self._want = 0
        self._grant = 0
        self._thread_grant = 0
        self._applied: list = []
        self._thread_saved: list = []
        self._pin_saved = None

    # -- the plan ----------------------------------------------------------
    @property
    def plan(self) -> Plan:
        if self._plan is None:
            topo = self._topology or _topology()
            key = (id(topo), self.mode, self.requested, self.socket, self.pin)
            cached = _plan_cache.get(key)
            if cached is None or cached[0] is not topo:
                cached = (topo, make_plan(topo, self.mode, threads=self.requested,
                                          socket=self.socket, pin=self.pin))
                if len(_plan_cache) > 256:
                    _plan_cache.clear()
                _plan_cache[key] = cached
            plan = cached[1]
            if self.requested is not None and self.requested > topo.effective_cpus:
                if not self.allow_oversubscription:
                    warnings.warn(
                        f"budget of {self.requested} threads for {topo.effective_cpus} effective "
                        f"CPUs ({topo.effective_source}); pass allow_oversubscription=True if "
                        "this is meant", OversubscriptionWarning, stacklevel=3)
            self._capacity = (max(topo.effective_cpus, plan.threads)
                              if self.allow_oversubscription else topo.effective_cpus)
            self._plan = plan
        return self._plan

    @property
    def threads(self) -> int:
        """The threads granted now to process-wide pools (0 outside the section)."""
        return self._grant

    @property
    def thread_limit(self) -> int:
        """The limit set on this thread's own runtimes (OpenMP, numba)."""
        return self._thread_grant

    def report(self) -> list[Applied]:
        """What the last entry applied to which library or setting."""
        out = []
        for a in self._applied:
            if a[0] is _ENV_ENTRY:
                _, before, before_if_set, value = a
                names = _ENV_NAMES + tuple(v.name for v, old in zip(_ENV_IF_SET, before_if_set)
                                           if old)
                a = ("environment", _limiters.PROCESS, _env_report(before), str(value),
                     "applied", None, " ".join(names))
            out.append(a if isinstance(a, Applied) else Applied(*a))
        return out

    # -- entering and leaving ---------------------------------------------
    def __enter__(self) -> "budget":
        plan = self._plan or self.plan
        ident = threading.get_ident()
        process_limiters, thread_limiters = _registry.current()
        applied: list = []
        with _ledger.lock:
            stacks = _ledger.stacks
            stack = stacks.get(ident)
            if stack is None:
                stack = stacks[ident] = []
            # Nested: never more than the enclosing section.
            self._want = min(plan.threads, stack[-1]._want) if stack else plan.threads
            stack.append(self)
            self._grant = min(self._want, max(1, self._capacity // len(stacks)))
            # Thread limits of the other sections cannot be lowered from here:
            # take at most what they leave (and always this thread itself).
            others = (sum(s[-1]._thread_grant for i, s in stacks.items() if i != ident)
                      if len(stacks) > 1 else 0)
            self._thread_grant = max(1, min(self._grant, self._capacity - others))
            if _ledger.saved is None:
                _ledger.saved = {}
            self._apply_process_scope(process_limiters, _ledger.process_value(), applied)
        self._apply_thread_scope(thread_limiters, self._thread_grant, applied)
        if plan.pin:
            self._pin(plan, applied)
        self._applied = applied
        return self

    def __exit__(self, *exc) -> None:
        if self._pin_saved is not None:
            _numa.unpin(self._pin_saved)
            self._pin_saved = None
        for limiter, before in reversed(self._thread_saved):
            try:
                limiter.set(before)
            except Exception:  # a runtime that refuses is not fatal on the way out
                pass
        self._thread_saved = []
        ident = threading.get_ident()
        with _ledger.lock:
            stack = _ledger.stacks.get(ident)
            if stack and self in stack:
                stack.remove(self)
            if not stack:
                _ledger.stacks.pop(ident, None)
            if _ledger.stacks:  # others remain: process-wide limits grow back to their share
                self._apply_process_scope(_registry.current()[0], _ledger.process_value(), None)
            else:
                self._restore_process_scope()
        self._grant = self._thread_grant = 0
        return None

    def __call__(self, func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            with budget(self.requested, mode=self.mode, pin=self.pin, socket=self.socket,
                        env=self.env, allow_oversubscription=self.allow_oversubscription,
                        topology=self._topology, plan=self._plan):
                return func(*args, **kwargs)
        return wrapper

    # -- the effects ---------------------------------------------------------
    def _apply_process_scope(self, limiters, value: int, applied) -> None:
        """Process-wide limits and variables (the ledger's lock is held)."""
        saved = _ledger.saved
        for lim in limiters:
            try:
                if lim not in saved:
                    saved[lim] = lim.get()
                after = lim.apply(value)
            except Exception as err:  # a library that refuses is reported, not fatal
                if applied is not None:
                    applied.append(_refused(lim, saved.get(lim), err))
                continue
            if applied is not None:
                applied.append(_outcome(lim, saved[lim], after, value))
        if self.env:
            raw = _encoded(value)
            before = _env.set_all(_ENV, raw)
            before_if_set = _env.set_all(_ENV_IF_SET, raw, only_if_set=True)
            if "env" not in saved:
                saved["env"] = before
                saved["env_if_set"] = before_if_set
            if applied is not None:  # formatted only if report() is asked for
                applied.append((_ENV_ENTRY, saved["env"], saved["env_if_set"], value))
            if _registry.tbb_with_openmp and "wait" not in saved and _WAIT_POLICY.get_raw() is None:
                saved["wait"] = None
                _WAIT_POLICY.set_raw(_env.encode("PASSIVE"))
                if applied is not None:
                    applied.append(("OMP_WAIT_POLICY", _limiters.PROCESS, None, "PASSIVE",
                                    "applied", None, "TBB and OpenMP both loaded: OpenMP "
                                    "runtimes started from here wait passively"))

    def _restore_process_scope(self) -> None:
        saved = _ledger.saved or {}
        for key, before in saved.items():
            if key == "env":
                _env.restore_all(_ENV, before)
            elif key == "env_if_set":
                _env.restore_all(_ENV_IF_SET, before)
            elif key == "wait":
                _WAIT_POLICY.set_raw(None)
            elif before is not None:
                try:
                    key.set(before)
                except Exception:
                    pass
        _ledger.saved = None

    def _apply_thread_scope(self, limiters, grant: int, applied) -> None:
        saved = []
        for lim in limiters:
            if not lim.driven:
                applied.append((lim.name, lim.scope, None, None, "skipped", lim.path,
                                f"not driven: {lim.note}"))
                continue
            try:
                before = lim.get()
                after = lim.apply(grant)
            except Exception as err:
                applied.append(_refused(lim, None, err))
                continue
            saved.append((lim, before))
            applied.append(_outcome(lim, before, after, grant))
        self._thread_saved = saved

    def _pin(self, plan: Plan, applied) -> None:
        topo = self._topology or _topology()
        if topo.fsroot != "/":
            applied.append(("affinity", _limiters.PROCESS, None, None, "skipped", None,
                            f"topology read from {topo.fsroot}: not this machine"))
            return
        self._pin_saved = _numa.pin(plan.cpus, plan.memory_nodes, applied)


def _outcome(lim, before, after, wanted) -> tuple:
    """A report row: applied, or refused with what the library reads back."""
    if after == wanted:
        return (lim.name, lim.scope, before, after, "applied", lim.path, lim.note)
    return (lim.name, lim.scope, before, after, "refused", lim.path, f"reads back {after}")


def _refused(lim, before, err: Exception) -> tuple:
    return (lim.name, lim.scope, before, None, "refused", lim.path,
            f"{type(err).__name__}: {err}")


def current_budget() -> budget | None:
    """The innermost budget section of the calling thread, or None."""
    stack = _ledger.stacks.get(threading.get_ident())
    return stack[-1] if stack else None
