"""Pure planning: topology + mode + consumers -> threads, CPUs, memory nodes, streams.

No I/O here: every function takes a ``Topology`` and returns a ``Plan``, so
the planner is tested on dumped machines and built trees alike.

- ``throughput`` (default): all effective CPUs; on SMT machines compute pools
  get one thread per physical core (a hyper-thread adds little to dense math);
  a CPU quota caps the count.
- ``latency``: on several sockets or NUMA nodes, one socket's physical cores
  and its local memory, pinned (the deployment guide's
  ``numactl -m 0 --physcpubind 0-27 ... -nthreads 28`` on 2 x 28 cores); on one
  socket, its physical cores. Hybrid CPUs: performance cores first.
"""

from __future__ import annotations

import sys
from typing import NamedTuple

from ._fs import format_cpulist
from .machine import Core, Topology

MODES = ("throughput", "latency")


class Plan(NamedTuple):
    """What a budget applies: each number says where it came from (``why``)."""

    mode: str
    threads: int  # the thread budget of every compute pool
    cpus: tuple[int, ...]  # CPUs the budget runs on (its affinity when pinned)
    memory_nodes: tuple[int, ...] | None  # NUMA nodes to bind memory to; None: no binding
    pin: bool  # restrict affinity (and memory) to cpus / memory_nodes
    streams: int  # OpenVINO streams (parallel inference requests)
    threads_per_stream: int
    hyper_threading: bool  # whether SMT siblings of a core are used
    core_type: str | None  # "performance" when a hybrid CPU's P-cores were chosen
    package: int | None = None  # the socket a latency plan runs on
    why: str = ""

    def split(self, n: int, *, disjoint: bool = False) -> tuple["Plan", ...]:
        """Shares of this plan for ``n`` concurrent workers (processes or threads).

        Each gets ``threads // n`` (at least 1). With ``disjoint``, each also
        gets its own CPUs (whole cores kept together) and is pinned to them.
        """
        n = check_count(n, "workers")
        share = max(1, self.threads // n)
        if not disjoint:
            streams = min(self.streams, share)
            return tuple(self._replace(threads=share, streams=streams,
                                       threads_per_stream=max(1, share // max(1, streams)),
                                       why=f"{self.why}; 1/{n} share") for _ in range(n))
        chunks = [self.cpus[i * len(self.cpus) // n:(i + 1) * len(self.cpus) // n]
                  for i in range(n)]
        out = []
        for i, chunk in enumerate(chunks):
            if not chunk:  # more workers than CPUs: share round-robin
                chunk = (self.cpus[i % len(self.cpus)],)
            threads = min(share, len(chunk)) or 1
            out.append(self._replace(threads=threads, cpus=tuple(chunk), pin=True, streams=1,
                                     threads_per_stream=threads,
                                     why=f"{self.why}; worker {i + 1}/{n} on CPUs "
                                         f"{format_cpulist(chunk)}"))
        return tuple(out)

    def environment(self) -> dict[str, str]:
        """The variables child processes read to size their pools."""
        return thread_env(self.threads)

    def numactl_args(self) -> list[str]:
        """The equivalent ``numactl`` options (empty when nothing is bound)."""
        args = []
        if self.memory_nodes is not None:
            args += ["-m", format_cpulist(self.memory_nodes)]
        if self.pin:
            args += ["--physcpubind", format_cpulist(self.cpus)]
        return args


# Variables read by the runtimes and libraries that size pools from the
# environment (at their initialisation: children, or libraries loaded later).
THREAD_VARIABLES = (
    "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS", "NUMBA_NUM_THREADS",
) + (("VECLIB_MAXIMUM_THREADS",) if sys.platform == "darwin" else ())  # Accelerate


# Every library above falls back to OMP_NUM_THREADS when its own variable is
# unset (OpenBLAS via GOTO_NUM_THREADS first), except numba and Accelerate.
FALLS_BACK_TO_OMP = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "MKL_NUM_THREADS",
                     "BLIS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def thread_env(threads: int) -> dict[str, str]:
    return {name: str(threads) for name in THREAD_VARIABLES}


# More than any machine has CPUs, and far below what a C int setter would wrap.
MAX_THREADS = 1 << 16


def check_count(value, what: str = "threads", upper: int | None = None) -> int:
    """A positive int, or ValueError naming the value and the valid range."""
    valid = f"1 to {upper}" if upper else "a whole number of at least 1"
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be {valid}, got {value!r}")
    if value < 1 or (upper is not None and value > upper):
        raise ValueError(f"{what} must be {valid}, got {value}")
    return value


def check_mode(mode) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


def _first_siblings(cores) -> tuple[int, ...]:
    """One CPU per core (its first hardware thread), in CPU order."""
    return tuple(sorted(core.cpus[0] for core in cores))


def _pinned_cpus(topology: Topology, cores, count: int) -> tuple[int, ...]:
    """``count`` CPUs to pin to, one per core (SMT siblings left out), inside
    one NUMA node where they fit: the node with most of ``cores``, lowest id
    on ties. A quota of 1.5 CPUs pins 2, not the socket: OpenVINO sizes itself
    to its affinity and ignores quotas (openvino#37838)."""
    firsts = _first_siblings(cores)
    if count >= len(firsts):
        return firsts
    best: tuple[int, ...] = ()
    for node in topology.numa_nodes:
        members = set(node.cpus)
        inside = tuple(c for c in firsts if c in members)
        if len(inside) > len(best):
            best = inside
    return best[:count] if len(best) >= count else firsts[:count]


def _nodes_of(topology: Topology, cpus) -> tuple[int, ...]:
    cpus = set(cpus)
    allowed = set(topology.allowed_numa_nodes) if topology.allowed_numa_nodes is not None else None
    nodes = [n.id for n in topology.numa_nodes if cpus & set(n.cpus)
             and (allowed is None or n.id in allowed)]
    return tuple(nodes)


def _prefer_performance(cores: tuple[Core, ...]) -> tuple[tuple[Core, ...], str | None]:
    perf = tuple(c for c in cores if c.kind == "performance")
    if perf and len(perf) < len(cores):
        return perf, "performance"
    return cores, None


def make_plan(topology: Topology, mode: str = "throughput", *, threads: int | None = None,
              consumers: int = 1, socket: int | None = None, pin: bool | None = None) -> Plan:
    """The plan for ``consumers`` concurrent users of this machine."""
    check_mode(mode)
    check_count(consumers, "consumers")
    if threads is not None:
        check_count(threads)
    cores = topology.allowed_cores()
    packages = sorted({c.package for c in cores})
    nodes_in_use = _nodes_of(topology, topology.allowed_cpus)
    multi = len(packages) > 1 or len(nodes_in_use) > 1
    if socket is not None:
        if socket not in packages:
            raise ValueError(f"socket must be one of {', '.join(map(str, packages))} "
                             f"(packages with allowed CPUs), got {socket!r}")
    smt = any(len(c.cpus) > 1 for c in cores)
    cap = topology.effective_cpus  # the quota, rounded up, or the allowed CPUs

    if mode == "latency" or socket is not None:
        if socket is None:
            # The socket with the most allowed (performance) cores; lowest id on ties.
            def score(pkg):
                pcores = [c for c in cores if c.package == pkg]
                return (sum(c.kind == "performance" for c in pcores), len(pcores), -pkg)
            socket = max(packages, key=score)
        chosen, core_type = _prefer_performance(tuple(c for c in cores if c.package == socket))
        budget = min(len(chosen), cap)
        do_pin = multi if pin is None else pin
        cpus = _pinned_cpus(topology, chosen, budget) if do_pin else _first_siblings(chosen)
        memory = _nodes_of(topology, cpus) if do_pin else None
        why = (f"latency: {len(chosen)} physical {core_type + ' ' if core_type else ''}cores "
               f"of socket {socket}" + (f", capped by {topology.effective_source}"
                                        if budget < len(chosen) else ""))
        plan = Plan(mode="latency", threads=budget, cpus=cpus, memory_nodes=memory, pin=do_pin,
                    streams=1, threads_per_stream=budget, hyper_threading=False,
                    core_type=core_type, package=socket, why=why)
    else:
        physical = len(cores)
        budget = min(physical, cap)
        cpus = topology.allowed_cpus
        do_pin = bool(pin)
        if do_pin:
            cpus = _pinned_cpus(topology, cores, budget)
        memory = _nodes_of(topology, cpus) if do_pin and multi else None
        streams = max(1, min(len(nodes_in_use) or 1, budget))
        why = (f"throughput: {physical} physical cores" + (" (SMT siblings left out)" if smt else "")
               + (f", capped by {topology.effective_source}" if budget < physical else ""))
        plan = Plan(mode="throughput", threads=budget, cpus=cpus, memory_nodes=memory,
                    pin=do_pin, streams=streams, threads_per_stream=max(1, budget // streams),
                    hyper_threading=False, core_type=None, why=why)

    if threads is not None:
        cpus = plan.cpus
        if plan.pin and threads < len(cpus):  # pinned: one CPU per thread asked for
            cpus = _pinned_cpus(topology, [c for c in cores if c.cpus[0] in cpus], threads)
        plan = plan._replace(threads=threads, cpus=cpus,
                             memory_nodes=_nodes_of(topology, cpus) if plan.memory_nodes else None,
                             threads_per_stream=max(1, threads // plan.streams),
                             why=f"{threads} threads asked for ({plan.why})")
    if consumers > 1:
        plan = plan.split(consumers)[0]
    return plan


def instance_plans(topology: Topology, instances: int | None, mode: str = "throughput", *,
                   threads: int | None = None) -> tuple[Plan, ...]:
    """One plan per copy of a program, as torch's ``run_cpu --ninstances``:
    each bound to one NUMA node's CPUs and memory (``instances=None``: one
    per node with allowed CPUs). Copies that share a node get disjoint
    cores of it. The effective CPUs (a quota) are shared out among all
    copies, and no copy is pinned to more CPUs than its share."""
    check_mode(mode)
    cores = topology.allowed_cores()
    nodes = [n for n in topology.numa_nodes
             if any(c.cpus[0] in n.cpus for c in cores)] or list(topology.numa_nodes[:1])
    count = len(nodes) if instances is None else check_count(instances, "instances")
    share = threads or max(1, topology.effective_cpus // count)
    on_node: dict[int, list[int]] = {}
    for i in range(count):
        on_node.setdefault(nodes[i % len(nodes)].id, []).append(i)
    out: list[Plan | None] = [None] * count
    for node in nodes:
        members = on_node.get(node.id, [])
        node_cores = [c for c in cores if c.cpus[0] in node.cpus] or list(cores)
        for k, i in enumerate(members):
            if len(members) > len(node_cores):  # more copies than cores: one core each, in turn
                chunk = [node_cores[k % len(node_cores)]]
            else:
                chunk = node_cores[k * len(node_cores) // len(members):
                                   (k + 1) * len(node_cores) // len(members)]
            cpus = _first_siblings(chunk)
            n_threads = share if threads else min(share, len(cpus))
            cpus = cpus[:n_threads] if n_threads < len(cpus) else cpus
            out[i] = Plan(mode=mode, threads=n_threads, cpus=cpus, memory_nodes=(node.id,),
                          pin=True, streams=1, threads_per_stream=n_threads,
                          hyper_threading=False, core_type=None, package=chunk[0].package,
                          why=f"instance {i + 1} of {count}: NUMA node {node.id}, "
                              f"{len(chunk)} cores" + (f", {share} CPUs' share of "
                                                       f"{topology.effective_source}"
                                                       if n_threads < len(chunk) else ""))
    return tuple(out)


def host_share(topology: Topology, plan: Plan, threads: int,
               cpus: tuple[int, ...] | None = None) -> Plan:
    """``plan`` cut to the share the host ledger granted: ``threads``, and
    when pinned the disjoint ``cpus`` the ledger chose."""
    if threads >= plan.threads and not cpus:
        return plan
    threads = min(threads, plan.threads)
    streams = max(1, min(plan.streams, threads))
    new_cpus = tuple(cpus) if cpus and plan.pin else plan.cpus
    return plan._replace(threads=threads, cpus=new_cpus, streams=streams,
                         threads_per_stream=max(1, threads // streams),
                         memory_nodes=(_nodes_of(topology, new_cpus) if plan.memory_nodes
                                       else None),
                         why=f"{plan.why}; host ledger share: {threads} threads")
