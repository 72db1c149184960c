"""Checks of threads against CPUs: quota, host-sized pools, measured waiting."""

from __future__ import annotations

from collections import defaultdict

from .._fs import format_cpulist
from .findings import finding

DELAY_WARNING, DELAY_ERROR = 0.5, 1.0  # threads waiting for a CPU, on average
THROTTLE_WARNING = 0.10  # share of periods


def _throttled_since_start(topology) -> str | None:
    if not topology.cpu_stat_file:
        return None
    try:
        from ..cgroup import parse_cpu_stat
        with open(topology.cpu_stat_file) as f:
            stat = parse_cpu_stat(f.read())
    except OSError:
        return None
    if not stat.nr_periods:
        return None
    return (f"throttled in {stat.nr_throttled / stat.nr_periods:.0%} of "
            f"{stat.nr_periods} periods ({stat.throttled_seconds:.1f}s) since the cgroup started")


def check_machine(topology, environ, host_cpus: int | None) -> list:
    """What the environment and the machine predict, before anything runs."""
    out = []
    eff = topology.effective_cpus
    if host_cpus and host_cpus > eff:
        sized = [n for n in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
                 if environ.get(n, "").strip().isdigit() and int(environ[n]) <= eff]
        if "OMP_NUM_THREADS" not in sized:
            evidence = [f"os.cpu_count() = {host_cpus}", f"effective CPUs = {eff} "
                        f"({topology.effective_source})"]
            throttled = _throttled_since_start(topology)
            if throttled:
                evidence.append(throttled)
            out.append(finding("TG302", f"pools will size to {host_cpus} CPUs; this process "
                               f"may use {eff}", evidence,
                               f"export OMP_NUM_THREADS={eff}  # or: threadguard run -- COMMAND"))
    nodes = [n for n in topology.numa_nodes if set(n.cpus) & set(topology.allowed_cpus)]
    if len(nodes) > 1:
        from ..planner import make_plan
        plan = make_plan(topology, "latency")
        out.append(finding("TG305", f"this process may run on {len(nodes)} NUMA nodes",
                           [f"node {n.id}: CPUs {format_cpulist(n.cpus)}" for n in nodes],
                           f"numactl {' '.join(plan.numactl_args())} \"$SHELL\"  # a shell on "
                           "one node; or: threadguard run --mode latency -- COMMAND"))
    return out


def check_process(report) -> list:
    """What the census and the pools of a live process show."""
    out = []
    topo, census = report.topology, report.census
    if topo is None or census is None:
        return out
    eff = topo.effective_cpus
    ratio = census.run_delay_ratio
    if ratio is not None and ratio >= DELAY_WARNING:
        by_pool = defaultdict(float)
        for t in census.threads:
            by_pool[report.owner_pool(t.tid) or "?"] += t.run_delay_seconds or 0.0
        top = sorted(by_pool.items(), key=lambda kv: -kv[1])[:3]
        out.append(finding(
            "TG303", f"threads waited for a CPU: run-delay ratio {ratio:.2f} on {eff} CPUs",
            [f"{census.threads_active} active of {census.threads_total} threads over "
             f"{census.interval:.2f}s, {census.cpu_used:.2f} CPUs used"]
            + [f"{pool}: {seconds * 1000:.0f} ms waiting" for pool, seconds in top],
            "with threadguard.budget(): ...  around the parallel work, or threadguard run -- "
            "<command>", severity="error" if ratio >= DELAY_ERROR else "warning"))
    if census.throttling is not None and census.throttling.throttled_share:
        share = census.throttling.throttled_share
        if share >= THROTTLE_WARNING:
            out.append(finding("TG304", f"CPU quota throttled the process in {share:.0%} of "
                               "periods", [f"{census.throttling.throttled_periods} of "
                                           f"{census.throttling.periods} periods, "
                                           f"{census.throttling.throttled_seconds:.2f}s",
                                           f"quota: {topo.cpu_quota} ({topo.quota_source})"],
                               f"size pools to the quota: export OMP_NUM_THREADS={eff}"))
    sizes = {}
    for p in report.pools:
        if p.api in ("torch-interop", "onnxruntime", "openvino"):
            continue
        size = p.num_threads if p.num_threads is not None else (
            p.threads_observed + 1 if p.threads_observed else None)
        if size:
            sizes[f"{p.library} ({p.api})"] = size
    python_active = sum(1 for t in census.threads
                        if t.active and report.owner_pool(t.tid) in ("python", "main"))
    # A pool's size counts its caller: one Python thread runs one pool at a
    # time, so what can run at once is (active callers) x (the largest pool).
    # Pools of 1 add no thread: busy callers alone are TG303's to measure.
    callers = max(1, python_active)
    largest = max(sizes.values(), default=0)
    if largest > 1 and callers * largest > eff:
        title = (f"{callers} Python threads calling pools of up to {largest} threads: "
                 f"{callers * largest} threads for {eff} CPUs" if callers > 1 else
                 f"a pool of {largest} threads for {eff} CPUs")
        out.append(finding("TG301", title,
                           [f"{name}: {size} threads (its caller included)"
                            for name, size in sizes.items()]
                           + ([f"{python_active} Python threads calling them"] if callers > 1 else []),
                           "with threadguard.budget(): ...  in each calling thread shares the "
                           "CPUs between them"))
    physical = len(topo.allowed_cores())
    if topo.smt:
        for p in report.pools:
            if p.api in ("blas", "openmp") and p.num_threads and p.num_threads > physical:
                out.append(finding("TG306", f"{p.library} sized to {p.num_threads} hardware "
                                   f"threads; {physical} physical cores", [p.path or p.library],
                                   f"export OMP_NUM_THREADS={physical}"))
    for p in report.pools:
        if p.library == "openvino" and p.num_threads and p.num_threads > eff:
            out.append(finding("TG307", f"an OpenVINO model runs {p.num_threads} threads on "
                               f"{eff} CPUs", list(p.notes),
                               "compile with threadguard.openvino.compile_model(...)"))
    return out
