"""``budget()``: apply a plan to every pool of this process, and restore it.

The only module that changes the process. Every change goes through the
ledger: the sections inside now (a stack per Python thread) and the values
to put back, one record per thing changed, keyed by what it is, a pool
family and a library's real path, an environment variable, a thread's
affinity, and never by a Python object, so a rescan that rebuilds the
limiters cannot lose or overwrite an original (the first value saved wins).
After each entry or exit the limits are made to follow the ledger
(``threadguard.shares`` holds the arithmetic), so sections may be nested,
reused, run in several threads and left in any order, and everything is
back as it was when the last one leaves, on exceptions too.

What may change mid-section: one-per-process limits (OpenBLAS, MKL, BLIS,
OpenCV, torch) follow the sections of all threads at once. A thread's own
limits (OpenMP's nthreads-var, numba) are set by that thread only, at its
entries and exits. Affinity is the union of the pinned sections' CPUs.

Children: by default a budget exports nothing, so child processes size
their pools as they would without threadguard (joblib/loky keeps its own
``cpu_count() // n_jobs``). ``env=True`` also exports the grant in the
thread variables children read; ``worker_budget`` gives process pools an
exact share each.

No Python code runs under the loader's lock: the libraries are listed from
the linker's own list in memory (``threadguard.libraries``). After ``fork``
the child keeps only the forking thread's sections.
"""

from __future__ import annotations

import functools
import opcode
import os
import sys
import threading
import warnings
from . import _env
from ._fork_imports import acquire_following
from . import host as _host
from .applied import Applied
from . import numa as _numa
from . import pools as _pools
from . import shares as _shares
from .libraries import linker_generation
from .limiters import PROCESS, THREAD
from .machine import Topology, read_topology
from .planner import (FALLS_BACK_TO_OMP, MAX_THREADS, MODES, Plan, check_count, check_mode,
                      make_plan)
from .runtime_libs import classify


UNCAPPED = sys.maxsize  # the host cap of a process that holds no part of the host


class OversubscriptionWarning(UserWarning):
    """A budget asked for more threads than the process has CPUs."""


# -- what is loaded ------------------------------------------------------------

class _Registry:
    """Limiters for what is loaded, rebuilt only when the linker's list changed
    or a module that brings a pool was imported. Rebuilt limiters are new
    objects; the ledger knows them by ``Limiter.key``."""

    def __init__(self):
        self.generation = None
        self.modules_key = None
        self.split: tuple[tuple, tuple] = ((), ())
        self.tbb_with_openmp = False
        self.triggers: tuple[str, ...] | None = None
        self.modules_count = -1
        self.version = 0  # bumped at each rescan
        self.lock = threading.RLock()

    def current(self) -> tuple[tuple, tuple]:
        """``(process-scope limiters, thread-scope limiters)``; may rescan."""
        generation = linker_generation()
        modules = sys.modules
        if len(modules) == self.modules_count and generation == self.generation:
            return self.split  # nothing loaded or imported since the last look
        key = self.modules_key
        if len(modules) != self.modules_count:  # an import happened
            triggers = self.triggers
            if triggers is None:
                triggers = self.triggers = _pools.trigger_modules()
            key = tuple(m in modules for m in triggers)
            self.modules_count = len(modules)
        if generation != self.generation or key != self.modules_key:
            # One rescan at a time; a finalizer inside may rescan again.
            lock = acquire_following(lambda: self.lock)  # a fork may replace it meanwhile
            try:
                self._rescan(generation, key)
            finally:
                lock.release()
        return self.split

    def _rescan(self, generation, key) -> None:
        """Rebuild the limiters. ``generation`` was read before the scan: a
        library loaded during it changes the token again, so it is not missed."""
        scanned = _pools.scan()
        every = _pools.limiters(scanned)
        led = _ledger
        if led.env_dirty or led.pin_dirty:  # started under our variables or pinning:
            known = {lim.key for part in self.split for lim in part}  # they read them
            led.natural_keys.update(lim.key for lim in every if lim.key not in known)
        led.env_dirty = led.env_saved is not None
        led.pin_dirty = led.pinned_to is not None
        kinds = {k for k, _ in filter(None, map(classify, scanned.order))}
        self.tbb_with_openmp = {"tbb", "openmp"} <= kinds
        self.split = (tuple(x for x in every if x.scope == PROCESS),
                      tuple(x for x in every if x.scope == THREAD))
        self.generation, self.modules_key = generation, key
        self.version += 1


_registry = _Registry()
_topology_cache: dict = {}


def current_topology() -> Topology:
    """This process's topology, read once per process (a forked child
    re-reads its own limits)."""
    key = os.getpid()
    topo = _topology_cache.get(key)
    if topo is None:
        _topology_cache.clear()
        topo = _topology_cache[key] = read_topology()
    return topo


def current_limiters() -> tuple[tuple, tuple]:
    """``(process-scope, thread-scope)`` limiters of what is loaded now."""
    return _registry.current()


# -- the environment children read --------------------------------------------

def _always_set() -> tuple[str, ...]:
    """Variables set by ``env=True``: OMP_NUM_THREADS, which the BLAS libraries
    read when their own is unset, and those with no such fallback."""
    import importlib.util
    names = ["OMP_NUM_THREADS"]
    if importlib.util.find_spec("numba") is not None:
        names.append("NUMBA_NUM_THREADS")
    if sys.platform == "darwin":
        names.append("VECLIB_MAXIMUM_THREADS")
    return tuple(names)


_ENV: tuple = ()  # _always_set()'s variables, made at the first export (find_spec costs)


def _exported() -> tuple:
    global _ENV
    if not _ENV:
        _ENV = tuple(_env.Variable(name) for name in _always_set())
    return _ENV
# Set only when present: an exported OPENBLAS_NUM_THREADS=8 would beat OMP_NUM_THREADS.
_ENV_IF_SET = tuple(_env.Variable(name) for name in FALLS_BACK_TO_OMP)
# TBB and OpenMP pools in one process: OpenMP workers that spin while TBB runs
# steal its cores (OpenVINO's guide). Runtimes read this at start: children.
_WAIT_POLICY = _env.Variable("OMP_WAIT_POLICY")


@functools.lru_cache(maxsize=256)
def _encoded(value: int):
    return _env.encode(str(value))


# -- the ledger ------------------------------------------------------------------

class _Entry:
    """One entry of a budget section, in one thread. Of one class whatever
    its part in the host ledger: code that reads entries of several kinds
    would be looked up the slow way (the interpreter specializes a field's
    read for one class)."""

    __slots__ = ("section", "thread", "want", "capacity", "thread_grant", "pin",
                 "memory_nodes", "env", "applied", "site", "host_token", "host_ask", "covered")

    def __init__(self, section, thread, want, capacity, pin, memory_nodes, env, site=None,
                 thread_grant=0, covered=0):
        # (frame, instruction) of the with statement that entered (None: entered
        # by a call). The frame itself is held, not its id: ids of ended frames
        # are reused, and a section may outlive the frame that entered it.
        self.site = site
        self.section, self.thread, self.want, self.capacity = section, thread, want, capacity
        self.pin, self.memory_nodes, self.env = pin, memory_nodes, env
        self.thread_grant = thread_grant
        self.applied: list = []
        # Host scope. host_token: its hold in the host ledger (0: none), which
        # asked host_ask, (asked, pinned), set when it joins (read only where
        # host_token is); none of this process's live holds asked as much when
        # it entered. covered: true when one did (any thread's): no change in
        # membership, nothing of its own to hold; that hold stays while it is
        # inside (``_host_settle``).
        self.host_token = 0
        self.covered = covered

    def top(self) -> _shares.Top:
        return _shares.Top(self.want, self.capacity, self.thread_grant)


class _Ledger:
    """The sections inside now, and the values to put back."""

    def __init__(self):
        self.lock = threading.Lock()
        self.stacks: dict[int, list[_Entry]] = {}
        self.process_saved: dict[tuple, object] = {}  # limiter key -> original
        self.thread_saved: dict[int, dict[tuple, object]] = {}  # thread -> limiter key -> original
        self.thread_version: dict[int, tuple] = {}  # thread -> (rescan, Thread) of its originals
        self.env_saved: dict[str, object] | None = None  # variable -> original (raw)
        self.env_entries = 0  # entries inside with env=True
        self.env_dirty = False  # our variables were exported since the last scan
        self.pin_dirty = False  # the process was pinned since the last scan
        self.busy = 0  # the thread inside the ledger's lock (0: none; an int either way)
        self.pending: list = []  # exits made while that thread was inside (finalizers)
        self.owners: dict[int, threading.Thread] = {}  # thread -> its Thread (ids are reused)
        self.natural_keys: set[tuple] = set()  # libraries that started under our variables
        self.affinity_saved: dict | None = None  # tid -> CPUs; "default" -> for new threads
        self.pinned_to: frozenset | None = None
        self.mempolicy_saved: dict[int, object] = {}  # thread -> (mode, nodes)
        # This process's grant from the host ledger; UNCAPPED when it holds none
        # (an int either way: the limits' arithmetic compares it, never tests it).
        self.host_cap: int = UNCAPPED
        self.forgotten: list[int] = []  # host holds to give back once the lock is let go
        # Host holds of this process, live: token -> (asked, pinned). Those of
        # entries inside, and kept ones: holds whose entry left, kept while a
        # covered entry needs them (``_host_settle``).
        self.host_live: dict[int, tuple[int, bool]] = {}
        self.host_keep: frozenset = frozenset()
        self.host_cover = 0  # the most a live hold asked
        self.host_cover_pinned = 0  # the most a live pinned hold asked
        # Entries with a part of the host were dropped without their exit: the
        # holds are settled at the next exit (an interrupted drop leaves it set).
        self.host_dirty = False
        self.inherited_cpus: tuple | None = None  # a forked child's: the CPUs its parent held
        # Only lone sections entered and left the fast way since the ledger was
        # last found clean: set False by every other entry, found again when
        # the last section has left (``clean()``).
        self.plain = True

    def clean(self) -> bool:
        """No exported variables, pins, memory policies, natural sizes, saved
        originals or queued exits: nothing but what the fast way handles."""
        return (self.env_saved is None and self.pinned_to is None and not self.natural_keys
                and not self.env_dirty and not self.pin_dirty and not self.mempolicy_saved
                and not self.env_entries and not self.pending and not self.process_saved
                and self.host_cap == UNCAPPED and not self.host_live)

    def tops(self, skip: int | None = None) -> list[_shares.Top]:
        return [s[-1].top() for i, s in self.stacks.items() if s and i != skip]

    def process_value(self) -> int | None:
        stacks = self.stacks
        if len(stacks) == 1:  # the common case, without building tops
            for stack in stacks.values():
                if not stack:
                    return None
                top = stack[-1]
                value = top.want if top.want <= top.capacity else top.capacity
        else:
            value = _shares.process_value(self.tops()) if stacks else None
            if value is None:
                return None
        cap = self.host_cap
        return value if value <= cap else cap

    def capacity(self, entry: "_Entry") -> int:
        """The CPUs ``entry`` may share: its own, or this process's host grant."""
        cap = self.host_cap
        return entry.capacity if entry.capacity <= cap else cap


_ledger = _Ledger()
_get_ident, _getframe, _new_row = threading.get_ident, sys._getframe, tuple.__new__
_current_thread = threading.current_thread
# Thread objects by id, as current_thread() finds them, without its call
# (a thread not started by threading is not there: current_thread() then).
_threads_by_ident = getattr(threading, "_active", {})
_WITH_OPCODES = frozenset(opcode.opmap[name] for name in ("BEFORE_WITH", "SETUP_WITH",
                                                           "BEFORE_ASYNC_WITH", "SETUP_ASYNC_WITH")
                          if name in opcode.opmap)


def _after_fork_in_child() -> None:
    """Only the forking thread exists in the child: keep its sections only.
    Locks another thread held at fork are made anew."""
    global _ledger, _threads_by_ident
    _threads_by_ident = getattr(threading, "_active", {})  # threading's after-fork hook ran first
    _registry.lock = threading.RLock()
    _plans_here.clear()
    old, me = _ledger, threading.get_ident()
    new = _Ledger()
    if me in old.stacks:
        new.stacks[me] = list(old.stacks[me])
    if me in old.thread_saved:
        new.thread_saved[me] = dict(old.thread_saved[me])
        if me in old.thread_version:
            new.thread_version[me] = old.thread_version[me]
    if me in old.mempolicy_saved:
        new.mempolicy_saved[me] = old.mempolicy_saved[me]
    new.process_saved, new.env_saved = dict(old.process_saved), old.env_saved
    new.env_entries = sum(e.env for e in new.stacks.get(me, ()))
    new.env_dirty, new.natural_keys = old.env_dirty, set(old.natural_keys)
    new.affinity_saved, new.pinned_to = old.affinity_saved, old.pinned_to
    new.pin_dirty = old.pin_dirty
    # The child is not its parent's participant: its inherited sections keep
    # the grant the parent had at fork; it joins as itself at its next entry.
    for entry in new.stacks.get(me, ()):
        entry.host_token = 0
    new.host_cap = old.host_cap if new.stacks else UNCAPPED
    new.inherited_cpus = (_host.forked_cpus or old.inherited_cpus) if new.stacks else None
    if me in old.owners:
        new.owners[me] = old.owners[me]
    new.plain = False
    _ledger = new
    try:  # the other threads' sections are gone: their limits and pins too
        _sync_process(_registry.split[0], None)
        if new.pinned_to is not None:
            _sync_affinity(None)
    except Exception:  # never break the child over this
        pass
    new.plain = not new.stacks and new.clean()


os.register_at_fork(after_in_child=_after_fork_in_child)


class CrossThreadExit(RuntimeError):
    """A budget section was left by a thread other than the one that entered it."""


class HostLedgerWarning(UserWarning):
    """The host ledger could not be used: the budget applies to this process alone."""


SCOPES = ("process", "host")
_SCOPE_VAR = _env.Variable("THREADGUARD_SCOPE")
# One dict lookup per budget object: the environment's own mapping where it can be had.
_scope_in_environ, _SCOPE_KEY = ((_env._data.get, _SCOPE_VAR.key) if _env._fast
                                 else (os.environ.get, "THREADGUARD_SCOPE"))


def _default_scope() -> str:
    """``THREADGUARD_SCOPE``; a value that is neither is warned about once
    and read as ``process``: a setting of the environment must not break
    the program's every budget."""
    raw = _SCOPE_VAR.get_raw()
    if not raw:
        return "process"
    value = os.fsdecode(raw) if isinstance(raw, bytes) else raw
    scope = value.strip().lower()
    if scope in SCOPES:
        return scope
    if value not in _host_warned:
        _host_warned.add(value)
        warnings.warn(f"threadguard: THREADGUARD_SCOPE must be one of {', '.join(SCOPES)}, got "
                      f"{value!r}: budgets are process-scoped", HostLedgerWarning, stacklevel=4)
    return "process"


def _host_cap() -> int:
    """This process's grant from the host ledger, UNCAPPED when it holds none."""
    grant = _host.grant()
    return UNCAPPED if grant is None else grant


def _host_changed() -> None:
    """This process's grant or CPUs may have moved (the watcher saw it, or a
    hold was given back): the process-wide limits and the affinity follow
    now; thread limits at each thread's next entry."""
    led = _ledger
    try:  # libraries loaded since the last entry are followed too
        process_limiters = _registry.current()[0]
    except Exception:
        process_limiters = _registry.split[0]
    me = _get_ident()  # before the lock: a signal handler may run after any call
    with led.lock:
        led.busy = me
        try:
            led.host_cap = _host_cap()
            if led.stacks:
                _sync_process(process_limiters, None)
                if led.pinned_to is not None:
                    _sync_affinity(None)
            else:  # the grant left with the last section: the fast way again
                led.plain = led.clean()
        finally:
            led.busy = 0


_host.on_change = _host_changed
_host_warned: set = set()


def _join_host(entry: _Entry, plan: Plan) -> None:
    """Take part in the host ledger for ``entry`` (before the ledger's lock:
    the file's lock may wait for another process)."""
    callers = entry.section._host_callers
    asked = _host_need(entry.section, plan, _ledger.stacks.get(entry.thread))
    entry.host_ask = (asked, bool(plan.pin))
    # The token first: an entry interrupted during hold() gives it back on its way out.
    token = entry.host_token = _host.new_token()
    try:
        grant = _host.hold(token, asked, bool(plan.pin), current_topology, callers=callers)
    except Exception as err:  # never fatal: a damaged file, a signal handler re-entering
        entry.host_token = 0
        reason = str(err)
        if reason not in _host_warned:
            _host_warned.add(reason)
            warnings.warn(f"threadguard: host ledger not used ({reason}): this budget "
                          "covers this process only", HostLedgerWarning, stacklevel=4)
        entry.applied.append(Applied("host ledger", PROCESS, None, None, "skipped", None, reason))
        return
    entry.applied.append(_new_row(Applied, ("host ledger", PROCESS, asked, grant, "applied",
                                            _host.path(), "asked, granted")))


def _cover_of(live: dict) -> tuple[int, int]:
    """The most a live hold asked, and the most a pinned one asked."""
    cover = pinned = 0
    for asked, pin in live.values():
        if asked > cover:
            cover = asked
        if pin and asked > pinned:
            pinned = asked
    return cover, pinned


def _covers(holds, need: int, pin: bool) -> bool:
    """Whether one of ``holds`` ((asked, pinned) pairs) asks ``need``, pinned if ``pin``."""
    return any(a >= need and (p or not pin) for a, p in holds)


def _host_need(section: "budget", plan: Plan, stack) -> int:
    """What a host-scoped entry asks: its threads (times the callers that
    share it), never more than the CPUs this process may use, oversubscribed
    or not; nested, never more than the enclosing section lets it use."""
    callers = section._host_callers
    asked = max(1, min(plan.threads * callers, section._capacity,
                       current_topology().effective_cpus))
    if stack:
        asked = min(asked, stack[-1].want * callers)
    return asked


def _host_settle() -> None:
    """Which of this process's holds stay live (the ledger's lock is held),
    from the entries inside: every holder's own; of the others (holds whose
    section left, or was dropped without its exit), the largest that a
    covered entry still needs (no holder's covers it), pinned if it pins;
    the rest are given back once the lock is let go (``_release_forgotten``).
    Put in place by one assignment: an exception a signal handler raises
    meanwhile leaves the old state, and the next settle finishes it."""
    led = _ledger
    holders, needs = {}, []
    for stack in led.stacks.values():
        for e in stack:
            if e.host_token:
                holders[e.host_token] = e.host_ask
            elif e.covered:
                needs.append((e.want * e.section._host_callers, e.pin is not None))
    if needs:  # as asks are: never more than the CPUs this process may use
        cpus = current_topology().effective_cpus
        needs = [(min(n, cpus), pin) for n, pin in needs]
    others = {t: held for t, held in led.host_live.items() if t not in holders}
    keep = {}
    unmet = [(n, pin) for n, pin in needs if not _covers(holders.values(), n, pin)]
    if others and unmet:
        pinned = [(held[0], t) for t, held in others.items() if held[1]]
        if pinned and any(pin for _, pin in unmet):
            best = max(pinned)[1]
            keep[best] = others[best]
        if any(not _covers(keep.values(), n, pin) for n, pin in unmet):
            best = max((held[0], held[1], t) for t, held in others.items())[2]
            keep[best] = others[best]
    gone = [t for t in others if t not in keep]
    live = {**holders, **keep}
    cover, pinned_cover = _cover_of(live)
    led.host_live, led.host_keep, led.host_cover, led.host_cover_pinned, led.host_dirty = (
        live, frozenset(keep), cover, pinned_cover, False)
    led.forgotten += gone


def _release_host(entry: _Entry) -> None:
    """Give the entry's part of the host back. Safe to repeat: a token given
    back twice counts once, so the token is forgotten only once it is back."""
    token = entry.host_token
    if token:
        _host.release(token)
        entry.host_token = 0
        _ledger.host_cap = _host_cap()


# -- the public section -------------------------------------------------------------

class budget:
    """Cap every thread pool of this process to a matched budget.

    ``threads``: the budget (default: planned from the CPUs this process may
    use, see ``threadguard.plan``). ``mode``: ``throughput`` or ``latency``.
    ``pin``: restrict CPU affinity (and memory, on several NUMA nodes) to the
    planned CPUs while inside. ``env``: also export the grant in the
    variables child processes read (``OMP_NUM_THREADS``...); off by default,
    so children size themselves as they would without threadguard. Usable as
    a context manager (also nested, reused, or from several threads at once)
    and as a decorator; nested budgets never exceed the outer one.
    """

    def __init__(self, threads: int | None = None, *, mode: str = "throughput",
                 pin: bool | None = False, socket: int | None = None, env: bool = False,
                 allow_oversubscription: bool = False, topology: Topology | None = None,
                 plan: Plan | None = None, scope: str | None = None):
        host = False
        if scope is not None or _scope_in_environ(_SCOPE_KEY):  # else the class's "process"
            if scope is None:
                scope = _default_scope()
            if scope == "host":
                self.scope = scope
                self._host_callers = 1
                # A given topology is not this machine's: nothing to share with its host.
                if topology is None:
                    host = True
            elif scope != "process":
                raise ValueError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
        # Set on every object, not left to the class: every entry reads them,
        # and an attribute the object lacks is looked up the slow way.
        self._host = host
        self.env = env = bool(env)
        self._apart = env or host  # exporting or joining: never the lone way
        self._inert = None
        if threads is not None and (type(threads) is not int or not 0 < threads <= MAX_THREADS):
            check_count(threads, upper=MAX_THREADS)  # raises, naming the valid range
        self.requested = threads
        self.mode = mode if mode in MODES else check_mode(mode)
        self.pin = pin
        self.socket = socket
        self.allow_oversubscription = allow_oversubscription
        self._topology = topology
        if plan is not None:  # an exact share (a worker's), applied as planned
            self._plan = self._given_plan = plan
            self.requested = plan.threads
            self._capacity = max((topology or current_topology()).effective_cpus, plan.threads)
        else:
            if topology is None:  # planned already in this process: nothing left for entry
                cached = _plans_here.get((self.mode, threads, socket, pin, allow_oversubscription))
                if cached is not None and not cached[3]:
                    self._plan, self._capacity = cached[1], cached[2]
                    return
            self._plan: Plan | None = None  # planned at first use
            self._capacity = 0
        if socket is not None:  # validate now: bad input fails at the call site
            make_plan(topology or current_topology(), mode, socket=socket)

    scope = "process"  # or "host": share the host through its ledger (set per object)
    _apart = False  # True: entries take the general way (env=True, or joining the host)
    # Host scope on this machine: an entry is covered by a live hold of this
    # process or, checked under the lock, joins the host ledger.
    _host = False
    _last_applied: list | tuple = ()  # the last entry's report rows (no cycle to the entry)
    # Host scope: threads that call this process's pools at once (a Dask
    # worker's task threads); its ask counts them all, each gets a part.
    _host_callers = 1
    _inert: dict[int, int] | None = None  # thread -> entries that applied nothing (made when needed)
    _given_plan: Plan | None = None  # an exact share passed in

    # -- the plan ----------------------------------------------------------
    @property
    def plan(self) -> Plan:
        if self._plan is None:
            args = (self.mode, self.requested, self.socket, self.pin, self.allow_oversubscription)
            if self._topology is None:  # this process's: planned once per process
                cached = _plans_here.get(args)
                if cached is None:
                    cached = _plans_here[args] = _planned(current_topology(), *args)
            else:
                cached = _planned(self._topology, *args)
            topo, plan, capacity, over = cached
            if over:
                warnings.warn(
                    f"budget of {self.requested} threads for {topo.effective_cpus} effective "
                    f"CPUs ({topo.effective_source}); pass allow_oversubscription=True if "
                    "this is meant", OversubscriptionWarning, stacklevel=3)
            self._capacity = capacity
            self._plan = plan
        return self._plan

    def _mine(self, thread: int | None = None) -> _Entry | None:
        """This object's innermost entry in ``thread`` (default: the calling one)."""
        stack = _ledger.stacks.get(threading.get_ident() if thread is None else thread)
        if stack:
            for entry in reversed(stack):
                if entry.section is self:
                    return entry
        return None

    @property
    def threads(self) -> int:
        """What one-per-process limits are set to now, while this thread is
        inside this section (0 outside): its share, and no more than any other
        thread's section asked for."""
        if self._mine() is None:
            return 0
        value = _ledger.process_value()
        return value if value is not None else 0

    @property
    def thread_limit(self) -> int:
        """The limit set on this thread's own runtimes (OpenMP, numba)."""
        entry = self._mine()
        return entry.thread_grant if entry is not None else 0

    def report(self) -> list[Applied]:
        """What the last entry applied to which library or setting."""
        entry = self._mine()
        rows = entry.applied if entry is not None else self._last_applied
        # A lone section records (limiter, before, after, wanted): rows are
        # built here, not on every entry.
        out = [row if isinstance(row, Applied) else _outcome(*row) for row in rows]
        if self._host and not any(r.target == "host ledger" for r in out):
            cap = _ledger.host_cap
            out.insert(0, Applied("host ledger", PROCESS, None, None if cap == UNCAPPED else cap,
                                  "applied", _host.path(), "covered by a hold of this process"))
        return out

    # -- entering and leaving ---------------------------------------------
    def __enter__(self) -> "budget":
        plan = self._plan or self.plan
        ident = _get_ident()
        caller = _getframe(1)
        lasti = caller.f_lasti
        # Only a with statement's entry may be judged by where it was made (and
        # only its frame is held: a frame keeps its locals alive).
        site = (caller, lasti) if caller.f_code.co_code[lasti] in _WITH_OPCODES else None
        del caller
        if not (_ledger.stacks or plan.pin or self._apart or _ledger.busy == ident):
            if self._enter_alone(plan, ident, site):
                return self
        led = _ledger
        # Host scope: first tried as covered.
        if plan.pin:
            entry = _Entry(self, ident, plan.threads, self._capacity, frozenset(plan.cpus),
                           tuple(plan.memory_nodes or ()), self.env, site, 0, self._host)
        else:
            entry = _Entry(self, ident, plan.threads, self._capacity, None, (), self.env, site,
                           0, self._host)
        joins = False
        if led.busy == ident:  # a signal handler or finalizer, while this thread is inside
            entry.applied.append(Applied("budget", PROCESS, None, None, "skipped", None,
                                         "entered from a signal handler or finalizer while "
                                         "this thread was inside threadguard: not applied"))
            self._last_applied = entry.applied
            if self._inert is None:
                self._inert = {}
            self._inert[ident] = self._inert.get(ident, 0) + 1
            return self
        try:
            # Twice at most: a host-scoped entry is first tried as covered (a live
            # hold of this process asks as much); if not, it joins, then enters.
            while True:
                if joins:
                    _join_host(entry, plan)
                process_limiters, thread_limiters = _registry.current()
                # A thread's own originals first: a process-wide setter may touch
                # them (torch.set_num_threads sets this thread's OpenMP limit).
                thread = _threads_by_ident.get(ident) or _current_thread()
                if thread_limiters and led.thread_version.get(ident) != (_registry.version, thread):
                    _save_thread(ident, thread, thread_limiters)
                with led.lock:
                    led.busy = ident
                    led.plain = False
                    try:
                        stack = led.stacks.get(ident)
                        if stack is None:
                            stack = led.stacks[ident] = []
                            led.owners[ident] = thread
                        elif led.owners.get(ident) is not thread:  # a dead thread's id
                            _drop_stale(stack, None)
                            led.owners[ident] = thread
                        elif site is not None and any(e.site == site for e in stack):
                            _drop_stale(stack, site)
                        if len(led.stacks) > 1:
                            _drop_dead_threads()  # their shares go back before this one is computed
                        # Host scope: covered when a live hold of this process asks
                        # as much (pinned, if this pins): no change in membership,
                        # nothing to hold (report() tells the grant). Else join.
                        if entry.covered and entry.want * self._host_callers > (
                                cover := led.host_cover_pinned if entry.pin is not None
                                else led.host_cover
                        ) and _host_need(self, plan, stack) > cover:
                            if not stack:  # nothing of it is in: join, then enter
                                led.stacks.pop(ident, None)
                                led.owners.pop(ident, None)
                        else:
                            if joins:  # the grant it shares (the watcher may have moved it)
                                led.host_cap = _host_cap()
                            if stack:
                                entry.want = _shares.nested_want(plan.threads, stack[-1].top())
                            others = led.tops(skip=ident) if len(led.stacks) > 1 else ()
                            _, entry.thread_grant = _shares.entry_grants(
                                entry.want, led.capacity(entry), others)
                            if joins and entry.host_token:  # live: covered sections count on it
                                live = dict(led.host_live)
                                live[entry.host_token] = entry.host_ask
                                cover, pinned = _cover_of(live)
                                # Live and in with no call between (no signal lands there).
                                led.host_live, led.host_cover, led.host_cover_pinned = (
                                    live, cover, pinned)
                            led.env_entries += entry.env
                            stack += (entry,)
                            if led.host_keep and joins:  # kept ones it covers go
                                _host_settle()
                            _sync_process(process_limiters, entry.applied)
                            if entry.pin is not None:
                                _sync_affinity(entry.applied)
                            break
                    finally:
                        led.busy = 0
                joins = True  # not covered: join, then enter
                entry.covered = 0
            if led.forgotten:
                _release_forgotten()
            if led.pending:
                _drain_pending()
            _sync_thread(ident, thread_limiters, entry.applied)
            if entry.pin is not None and entry.memory_nodes:
                _sync_mempolicy(ident, entry.applied)
            self._last_applied = entry.applied
        except BaseException:  # also a signal handler's: nothing is left half-entered
            _leave(entry)
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:  # from the first line: a signal handler's exception may come anywhere
            ident = _get_ident()
            stack = _ledger.stacks.get(ident)
            if (stack is not None and len(stack) == 1 and stack[0].section is self
                    and (self._inert is None or not self._inert.get(ident))
                    and _exit_alone(stack[0], ident)):
                return None
            entry = self._mine()
            inert = self._inert.get(ident) if self._inert is not None else None
            if inert:  # entered while this thread was inside the guard: nothing to undo
                self._inert[ident] = inert - 1
                return None
            if entry is not None:
                if _ledger.busy == ident:  # a finalizer inside threadguard's own work
                    _ledger.pending.append(entry)  # on this thread: done right after
                    return None
                _leave(entry)
                return None
        except BaseException:  # a signal handler's exception: leave all the same
            entry = self._mine()
            if entry is not None:
                _leave(entry)
            raise
        ident = threading.get_ident()
        owner = next((t for t in list(_ledger.stacks) if self._mine(t) is not None), None)
        if owner is None:
            return None  # not inside: nothing to undo
        if _ledger.busy == ident:
            _ledger.pending.append(self._mine(owner))
        else:
            _leave(self._mine(owner))
        if exc and exc[0] is GeneratorExit:  # a generator closed by the collector elsewhere
            return None
        raise CrossThreadExit(
            f"budget entered in thread {owner} was left in thread {ident}: process-wide limits "
            "and the environment are restored now; that thread's own OpenMP limits are "
            "restored at its next budget call. Enter and leave a budget in one thread.")

    def _enter_alone(self, plan, ident: int, site) -> bool:
        """Entry while no thread is inside any section, the common case, with
        none of the ledger's arithmetic: a lone section's grant is what it
        asked for, capped by its capacity. Not pinned, exports nothing. False:
        the ledger is not empty and clean after all; take the general way."""
        led = _ledger
        reg = _registry
        process_limiters, thread_limiters = reg.current()
        want = grant = plan.threads
        capacity = self._capacity
        if capacity < grant:
            grant = capacity
        entry = _Entry(self, ident, want, capacity, None, (), False, site, grant)
        rows = entry.applied  # (limiter, before, after, wanted): report() builds the rows
        # As the general way, in this order: this thread's own originals, read
        # before anything is set (a process-wide setter may set them too:
        # torch.set_num_threads sets this thread's OpenMP limit, and torch's
        # getter reads it); the process-wide ones under the lock, then set;
        # this thread's set last, once its originals are in the ledger.
        # (A limiter's getter and setter are fetched, then called: called as a
        # method, a field is looked up the slow way on every call.)
        thread_saved = {}
        for lim in thread_limiters:
            if lim.driven:
                get = lim.get
                try:
                    thread_saved[lim.key] = get()
                except Exception:  # reported when applied
                    pass
        thread = _threads_by_ident.get(ident) or _current_thread()
        try:
            with led.lock:
                led.busy = ident  # first: a finalizer run from here must not take the lock
                try:
                    if not led.plain or led.stacks or ident in led.thread_saved:
                        return False  # not alone after all: nothing was set
                    led.stacks[ident] = [entry]
                    led.owners[ident] = thread
                    led.thread_saved[ident] = thread_saved
                    led.thread_version[ident] = (reg.version, thread)
                    saved = led.process_saved
                    for lim in process_limiters:
                        get, set_ = lim.get, lim.set
                        try:
                            saved[lim.key] = before = get()
                            set_(grant)  # read back once per value, as Limiter.apply does
                            after = grant if grant in lim.accepted else lim.apply(grant)
                        except Exception as err:  # reported, not fatal
                            rows.append(_refused(lim, saved.get(lim.key), err))
                            continue
                        rows.append((lim, before, after, grant))
                finally:
                    led.busy = 0
            for lim in thread_limiters:
                if not lim.driven:
                    rows.append(Applied(lim.name, lim.scope, None, None, "skipped", lim.path,
                                        f"not driven: {lim.note}"))
                    continue
                set_ = lim.set
                try:
                    before = thread_saved.get(lim.key)
                    if before is None:
                        thread_saved[lim.key] = before = lim.get()
                    set_(grant)
                    after = grant if grant in lim.accepted else lim.apply(grant)
                except Exception as err:
                    rows.append(_refused(lim, thread_saved.get(lim.key), err))
                    continue
                rows.append((lim, before, after, grant))
            if led.pending:
                _drain_pending()
        except BaseException:  # also a signal handler's: nothing is left half-entered
            _leave(entry)
            raise
        self._last_applied = rows
        return True

    def __call__(self, func):
        """A decorator: a new section around each call (around each run of a
        coroutine or generator, not just its creation)."""
        def section():
            return budget(self.requested, mode=self.mode, pin=self.pin, socket=self.socket,
                          env=self.env, allow_oversubscription=self.allow_oversubscription,
                          topology=self._topology, plan=self._given_plan, scope=self.scope)
        import inspect  # here, not at import: the guard is imported at every pytest start
        if inspect.iscoroutinefunction(func):
            @functools.wraps(func)
            async def run_coroutine(*args, **kwargs):
                with section():
                    return await func(*args, **kwargs)
            return run_coroutine
        if inspect.isgeneratorfunction(func):
            @functools.wraps(func)
            def run_generator(*args, **kwargs):
                with section():
                    return (yield from func(*args, **kwargs))
            return run_generator
        if inspect.isasyncgenfunction(func):
            @functools.wraps(func)
            async def run_async_generator(*args, **kwargs):
                with section():
                    async for item in func(*args, **kwargs):
                        yield item
            return run_async_generator

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            with section():
                return func(*args, **kwargs)
        return wrapper


_plan_cache: dict = {}
_plans_here: dict = {}  # arguments -> planned on current_topology(); emptied at fork


def _planned(topo, mode, requested, socket, pin, allow) -> tuple[Topology, Plan, int, bool]:
    """``(topo, plan, capacity, oversubscribed)``, by topology object
    (compared by identity: hashing one is slow)."""
    key = (id(topo), mode, requested, socket, pin, allow)
    cached = _plan_cache.get(key)
    if cached is None or cached[0] is not topo:
        if len(_plan_cache) > 256:
            _plan_cache.clear()
        plan = make_plan(topo, mode, threads=requested, socket=socket, pin=pin)
        cpus = topo.effective_cpus
        cached = _plan_cache[key] = (
            topo, plan, max(cpus, plan.threads) if allow else cpus,
            requested is not None and requested > cpus and not allow)
    return cached


# -- making the process follow the ledger ------------------------------------------

def _drop_stale(stack: list, site) -> None:
    """The same statement of the same live frame entered again while an entry
    of its own is still here: that entry's exit was lost (an exception raised
    by a signal handler as ``__exit__`` began, before any of its code ran; no
    context manager can catch that). One frame cannot run a with statement
    that is still active, so the old entry, and what it enclosed, is stale."""
    index = 0 if site is None else next(i for i, e in enumerate(stack) if e.site == site)
    stale = stack[index:]
    _ledger.host_dirty = True  # first: whatever is cut short, the holds are settled
    del stack[index:]
    for entry in stale:
        _forget(entry)
    _host_settle()


def _forget(entry: _Entry) -> None:
    """An entry dropped without its exit (stale, or its thread ended): what
    it counted for goes. Its part of the host is settled by the caller
    (``host_dirty`` is set first, so an interrupted drop is settled at the
    next exit); what is given back goes once the ledger's lock is let go
    (``_release_forgotten``): giving it back may wait for another process's
    file lock, which no budget call should wait for."""
    _ledger.env_entries -= entry.env


def _release_forgotten() -> None:
    """Give back the holds settled as no longer needed (the ledger's lock is
    not held: giving one back may wait for the file's lock)."""
    led = _ledger
    while led.forgotten:
        try:
            token = led.forgotten[-1]
        except IndexError:  # another thread gave the last one back
            break
        try:
            _host.release(token)  # given back twice counts once
        except Exception:  # the watcher settles the file
            pass
        try:
            led.forgotten.remove(token)
        except ValueError:
            pass
    _host_changed()  # the process's limits follow its grant now


def _drain_pending() -> None:
    """Exits queued by finalizers while this thread was inside the ledger."""
    while _ledger.pending:
        _leave(_ledger.pending.pop())


def _drop_dead_threads() -> None:
    """Sections of threads that ended inside them (the ledger's lock is held):
    their share goes back to the others; their own limits ended with them."""
    led = _ledger
    dead = [i for i, t in led.owners.items() if not t.is_alive()]
    if not dead:
        return
    led.host_dirty = True  # first: whatever is cut short, the holds are settled
    for ident in dead:
        for stale in led.stacks.pop(ident, ()):
            _forget(stale)
        led.owners.pop(ident, None)
        led.thread_saved.pop(ident, None)
        led.thread_version.pop(ident, None)
        led.mempolicy_saved.pop(ident, None)
    _host_settle()


def _exit_alone(entry: _Entry, ident: int) -> bool:
    """Exit of the only section inside, entered by this thread: the originals
    go back with none of the ledger's arithmetic. False: take the general way
    (other sections, pins, exported variables, or a rescan due)."""
    led = _ledger
    if led.busy == ident:  # a finalizer inside threadguard's own work: queued
        return False
    process_limiters, thread_limiters = _registry.split
    try:
        with led.lock:
            led.busy = ident  # first: a finalizer run from here must not take the lock
            try:
                # Plain: only sections entered the fast way since the ledger was
                # empty; this thread's, seen in its stack, is then the only one.
                if not led.plain:
                    return False
                del led.stacks[ident]
                led.owners.pop(ident, None)
                _put_back(process_limiters, led.process_saved)  # all set, then forgotten:
                led.process_saved.clear()  # safe to repeat
            finally:
                led.busy = 0
        thread_saved = led.thread_saved.get(ident)
        if thread_saved:
            _put_back(thread_limiters, thread_saved)
        led.thread_saved.pop(ident, None)
        led.thread_version.pop(ident, None)
        if led.pending:
            _drain_pending()
    except BaseException:  # a signal handler's: finish the restore first
        _leave(entry)
        raise
    return True


def _put_back(limiters, saved: dict) -> None:
    """Limits back to the values ``saved`` holds for them."""
    for lim in limiters:
        before = saved.get(lim.key)
        if before is not None:
            set_ = lim.set  # fetched, then called: see _enter_alone
            try:
                set_(before)
            except Exception:  # a library that refuses is not fatal on the way out
                pass


def _leave(entry: _Entry) -> None:
    """Remove ``entry`` and make everything follow the ledger again. Safe to
    repeat: an exception raised meanwhile (a signal handler) does not leave
    the limits half-restored."""
    pending = None
    for _ in range(3):
        try:
            if entry.host_token and entry.host_token not in _ledger.host_live:
                _release_host(entry)  # an entry interrupted before its hold was live
            _remove_and_sync(entry)
            break
        except BaseException as err:  # KeyboardInterrupt mid-restore: finish first
            pending = pending or err
    if pending is not None:
        raise pending


def _remove_and_sync(entry: _Entry) -> None:
    me = _get_ident()
    led = _ledger
    # A library loaded inside was never capped: nothing to put back, so no
    # rescan, unless it started under exported variables or pinning (it read
    # them). The entry is out first: a failing rescan cannot keep it in.
    rescan = led.env_dirty or led.pin_dirty
    with led.lock:
        led.busy = me
        try:
            _remove(entry)
            if not rescan:
                _sync_after_exit(entry, me, _registry.split)
        finally:
            led.busy = 0
    if rescan:
        limiters = _registry.split
        try:
            limiters = _registry.current()
        except Exception:
            pass
        with led.lock:
            led.busy = me
            try:
                _sync_after_exit(entry, me, limiters)
            finally:
                led.busy = 0
    if led.forgotten:
        _release_forgotten()
    if led.pending:
        _drain_pending()


def _remove(entry: _Entry) -> None:
    """Take ``entry`` out of its thread's stack (the ledger's lock is held)."""
    led = _ledger
    stack = led.stacks.get(entry.thread)
    if stack is not None and entry in stack:
        index = stack.index(entry)
        # Entered later from the same frame by a with statement: lexically
        # inside this with block, so they ended with it (their exit was lost
        # to an exception raised as __exit__ began).
        if index + 1 < len(stack) and entry.site:
            frame = entry.site[0]
            later = [e for e in stack[index + 1:] if e.site and e.site[0] is frame]
            if later:
                led.host_dirty = True  # first: whatever is cut short, the holds are settled
                for e in later:
                    stack.remove(e)
                    _forget(e)
                index = stack.index(entry)
        # Out and uncounted with no call between (no signal lands there).
        del stack[index]
        led.env_entries -= entry.env
    # Its hold (kept if covered entries still need it), or kept holds no
    # longer needed, or entries dropped without their exit: settled.
    if entry.host_token or led.host_keep or led.host_dirty:
        _host_settle()
        if entry.host_token:
            entry.host_token = 0
    if not stack:
        led.stacks.pop(entry.thread, None)
        led.owners.pop(entry.thread, None)


def _sync_after_exit(entry: _Entry, me: int, limiters) -> None:
    """Everything follows the ledger again (its lock is held)."""
    led = _ledger
    stacks = led.stacks
    if len(stacks) > 1 or (stacks and me not in stacks):
        _drop_dead_threads()
    process_limiters, thread_limiters = limiters
    # Process-wide first, then this thread's own: a process-wide setter may
    # set the calling thread's limit too (torch.set_num_threads).
    _sync_process(process_limiters, None)
    if entry.thread == me:
        _sync_thread(me, thread_limiters, None)
        if me in led.mempolicy_saved:
            _sync_mempolicy(me, None)
    if led.pinned_to is not None:
        _sync_affinity(None)
    if not stacks:  # all back: what loads from now on reads the user's values
        led.host_cap = _host_cap()  # a forked child's inherited grant ends here
        led.env_dirty = led.pin_dirty = False
        led.natural_keys.clear()
        led.plain = led.clean()


def _sync_process(limiters, applied) -> None:
    """One-per-process limits and the exported variables follow the ledger
    (its lock is held)."""
    led = _ledger
    value = led.process_value()
    saved = led.process_saved
    if value is None:
        for lim in limiters:  # set all, then forget: safe to repeat if interrupted
            before = saved.get(lim.key)
            if before is None and lim.key in led.natural_keys:
                before = _original(lim)
            if before is not None:
                try:
                    lim.set(before)
                except Exception:  # a library that refuses is not fatal on the way out
                    pass
        saved.clear()  # libraries no longer loaded
        if led.env_saved is not None:
            _sync_env(None)
        return
    for lim in limiters:
        key = lim.key
        try:
            if key not in saved:
                saved[key] = _original(lim)
            after = lim.apply(value)
        except Exception as err:  # a library that refuses is reported, not fatal
            if applied is not None:
                applied.append(_refused(lim, saved.get(key), err))
            continue
        if applied is not None:
            applied.append(_outcome(lim, saved[key], after, value))
    if led.env_entries or led.env_saved is not None:
        _sync_env(value if led.env_entries else None, applied)


def _original(lim):
    """The value to put back: what the library reports, unless it started
    while a budget exported its variables (it read them): then the size it
    takes from the user's environment."""
    if lim.key in _ledger.natural_keys and lim.natural is not None:
        saved = _ledger.affinity_saved
        cpus = len(saved["default"]) if saved else len(os.sched_getaffinity(0))
        value = lim.natural(_saved_environ(), cpus)
        if value:
            return value
    return lim.get()


def _saved_environ() -> dict:
    env = {k: v for k, v in os.environ.items()}
    for name, raw in (_ledger.env_saved or {}).items():
        if raw is None:
            env.pop(name, None)
        else:
            env[name] = os.fsdecode(raw) if isinstance(raw, bytes) else raw
    return env


def _sync_env(value: int | None, applied=None) -> None:
    led = _ledger
    if value is None:
        if led.env_saved is not None:
            for var in _exported() + _ENV_IF_SET + (_WAIT_POLICY,):
                if var.name in led.env_saved:
                    var.set_raw(led.env_saved[var.name])
            led.env_saved = None
        return
    saved = led.env_saved
    if saved is None:
        saved = led.env_saved = {}
    raw = _encoded(value)
    names = []
    for var in _exported() + _ENV_IF_SET:
        current = var.get_raw()
        if var.name not in saved:
            if current is None and var in _ENV_IF_SET:
                continue
            saved[var.name] = current
        if current != raw:
            var.set_raw(raw)
        names.append(var.name)
    led.env_dirty = True
    if _registry.tbb_with_openmp and "OMP_WAIT_POLICY" not in saved and _WAIT_POLICY.get_raw() is None:
        saved["OMP_WAIT_POLICY"] = None
        _WAIT_POLICY.set_raw(_env.encode("PASSIVE"))
        if applied is not None:
            applied.append(Applied("OMP_WAIT_POLICY", PROCESS, None, "PASSIVE", "applied", None,
                            "TBB and OpenMP both loaded: OpenMP runtimes started from here "
                            "wait passively"))
    if applied is not None:
        before = {saved.get(n) for n in names}
        shown = "unset" if before == {None} else ", ".join(
            sorted(os.fsdecode(v) if isinstance(v, bytes) else str(v) for v in before))
        applied.append(Applied("environment", PROCESS, shown, str(value), "applied", None,
                        " ".join(names)))


def _save_thread(ident: int, me: threading.Thread, limiters) -> None:
    """Record this thread's own limits before anything changes them."""
    led = _ledger
    known = led.thread_version.get(ident)
    if known is not None and known[1] is not me:  # a dead thread's id, reused
        led.thread_saved.pop(ident, None)
    saved = led.thread_saved.get(ident)
    if saved is None:
        saved = led.thread_saved[ident] = {}
    led.thread_version[ident] = (_registry.version, me)
    for lim in limiters:
        if lim.driven and lim.key not in saved:
            try:
                saved[lim.key] = _original(lim)
            except Exception:  # read again, and reported, when applied
                pass


def _sync_thread(ident: int, limiters, applied) -> None:
    """This thread's own limits follow its innermost section. Only this thread
    can set them; its records in the ledger may also change under the lock
    (dead threads, fork), which the callers hold or do not need."""
    stack = _ledger.stacks.get(ident)
    saved = _ledger.thread_saved.get(ident)
    if not stack:
        if saved is not None:
            for lim in limiters:
                before = saved.get(lim.key)
                if before is None and lim.key in _ledger.natural_keys:
                    before = _original(lim)
                if before is not None and lim.driven:
                    try:
                        lim.set(before)
                    except Exception:
                        pass
        _ledger.thread_saved.pop(ident, None)
        _ledger.thread_version.pop(ident, None)
        return
    if saved is None:
        saved = _ledger.thread_saved[ident] = {}
    grant = stack[-1].thread_grant
    for lim in limiters:
        if not lim.driven:
            if applied is not None:
                applied.append(Applied(lim.name, lim.scope, None, None, "skipped", lim.path,
                                f"not driven: {lim.note}"))
            continue
        try:
            if lim.key not in saved:
                saved[lim.key] = _original(lim)
            after = lim.apply(grant)
        except Exception as err:
            if applied is not None:
                applied.append(_refused(lim, saved.get(lim.key), err))
            continue
        if applied is not None:
            applied.append(_outcome(lim, saved[lim.key], after, grant))


def _sync_affinity(applied) -> None:
    """Every thread's affinity follows the pinned sections (the ledger's lock is held)."""
    led = _ledger
    pins = [e.pin for s in led.stacks.values() for e in s if e.pin is not None]
    target = _shares.pinned_cpus(pins)
    if target is not None and led.host_cap != UNCAPPED:  # the host gave disjoint CPUs
        given = _host.pinned_cpus() or led.inherited_cpus
        if given:
            target = frozenset(given)
    if target == led.pinned_to:
        if target is not None and applied is not None:
            applied.append(Applied("affinity", PROCESS, None, sorted(target), "applied", None,
                            "already pinned"))
        return
    if target is None:
        _numa.unpin(led.affinity_saved or {})
        led.affinity_saved = led.pinned_to = None
        return
    topo = current_topology()
    if topo.fsroot != "/":
        if applied is not None:
            applied.append(Applied("affinity", PROCESS, None, None, "skipped", None,
                            f"topology read from {topo.fsroot}: not this machine"))
        return
    # Recorded first: a pin interrupted halfway is still undone.
    led.pinned_to, led.pin_dirty = target, True
    if led.affinity_saved is None:
        led.affinity_saved = {}
    _numa.pin_affinity(target, led.affinity_saved, applied)


def _sync_mempolicy(ident: int, applied) -> None:
    """This thread's memory policy follows its innermost pinned section."""
    stack = _ledger.stacks.get(ident) or []
    nodes = next((e.memory_nodes for e in reversed(stack) if e.pin is not None), ())
    saved = _ledger.mempolicy_saved
    if not nodes:
        if ident in saved:
            _numa.restore_mempolicy(saved.pop(ident))
        return
    before = _numa.bind_memory(nodes, applied)
    if before is not None and ident not in saved:
        saved[ident] = before


def _outcome(lim, before, after, wanted) -> Applied:
    """A report row: applied, or refused with what the library reads back."""
    if after == wanted:  # built without Applied's Python-level __new__: every entry makes these
        return _new_row(Applied, (lim.name, lim.scope, before, after, "applied", lim.path,
                                  lim.note))
    return Applied(lim.name, lim.scope, before, after, "refused", lim.path, f"reads back {after}")


def _refused(lim, before, err: Exception) -> Applied:
    return Applied(lim.name, lim.scope, before, None, "refused", lim.path,
                   f"{type(err).__name__}: {err}")


def current_budget() -> budget | None:
    """The innermost budget section of the calling thread, or None."""
    stack = _ledger.stacks.get(threading.get_ident())
    return stack[-1].section if stack else None


def sections_inside() -> int:
    """How many threads are inside budget sections now."""
    return sum(1 for s in _ledger.stacks.values() if s)
