"""threadguard on Dask clusters: a budget per worker, and a report per host.

``ThreadGuardPlugin`` is a ``distributed`` WorkerPlugin. At worker start it
takes the worker's share of its host: the effective CPUs divided among the
workers on that host, then among the worker's ``nthreads`` task threads,
and applies it as a budget (pools capped, thread variables for children,
optionally disjoint CPU sets). On teardown everything is restored.

Dask's nanny already sets ``OMP_NUM_THREADS``-style variables in its workers
(``distributed.nanny.pre-spawn-environ``): those are read and reported, and
the plugin never raises them.

``cluster_report(client)`` gathers every worker's facts (``client.run``)
and groups them by host, so a host oversubscribed by several workers shows
even when each worker alone looks fine.
"""

from __future__ import annotations

import os
import socket

from ..doctor.findings import finding

NANNY_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _host_of(address: str) -> str:
    return address.split("://")[-1].rsplit(":", 1)[0]


try:
    from distributed.diagnostics.plugin import WorkerPlugin as _Base
except ImportError:  # the module still imports; using the plugin says what to install
    _Base = object


class ThreadGuardPlugin(_Base):
    """Give each Dask worker its share of its host's CPUs.

    ``workers_per_host`` is filled by ``register(client)`` from the
    scheduler; a worker on a host it does not list counts alone there.
    """

    name = "threadguard"
    idempotent = True

    def __init__(self, workers_per_host: dict[str, int] | None = None, *, disjoint: bool = False):
        if _Base is object:
            raise ImportError("the Dask integration needs distributed: pip install distributed")
        self.workers_per_host = dict(workers_per_host or {})
        self.disjoint = disjoint
        self._section = None

    def setup(self, worker):
        from ..guard import budget, current_topology
        from ..planner import make_plan
        from ..workers import claim_slot

        host = _host_of(worker.address)
        on_host = max(1, self.workers_per_host.get(host, 1))
        nthreads = max(1, _nthreads(worker) or 1)
        topo = current_topology()
        share = max(1, topo.effective_cpus // on_host)
        per_task = max(1, share // nthreads)
        nanny = {name: os.environ.get(name) for name in NANNY_VARIABLES if os.environ.get(name)}
        set_by_dask = [int(v) for v in nanny.values() if v.strip().isdigit()]
        threads = min([per_task] + set_by_dask)  # never above what Dask's nanny set
        plan = make_plan(topo, threads=threads, pin=True if self.disjoint else None)
        if self.disjoint:
            directory = os.path.join("/tmp", f"threadguard-dask-{host}-{os.getppid()}")
            os.makedirs(directory, exist_ok=True)
            base = make_plan(topo, pin=True)
            plan = base.split(on_host, disjoint=True)[claim_slot(directory) % on_host]
        self._section = budget(plan=plan, pin=plan.pin, env=True)
        self._section.__enter__()
        worker.threadguard = {"host": host, "workers_on_host": on_host, "nthreads": nthreads,
                              "share": share, "threads_per_task": threads,
                              "set_by_dask": nanny, "cpus": list(plan.cpus) if plan.pin else None}

    def teardown(self, worker):
        if self._section is not None:
            self._section.__exit__(None, None, None)
            self._section = None


def register(client, *, disjoint: bool = False) -> ThreadGuardPlugin:
    """Register the plugin with every worker (current and future)."""
    workers = client.scheduler_info()["workers"]
    per_host: dict[str, int] = {}
    for address in workers:
        host = _host_of(address)
        per_host[host] = per_host.get(host, 0) + 1
    plugin = ThreadGuardPlugin(per_host, disjoint=disjoint)
    client.register_plugin(plugin)
    return plugin


def _nthreads(worker) -> int | None:
    if worker is None:
        return None
    state = getattr(worker, "state", None)
    return getattr(state, "nthreads", None) or getattr(worker, "nthreads", None)


def _worker_facts(dask_worker=None, interval: float = 0.5) -> dict:
    """Runs on each worker (``client.run``)."""
    from ..inspection import inspect
    report = inspect(interval=interval)
    pools = [{"library": p.library, "api": p.api, "num_threads": p.num_threads}
             for p in report.pools if p.num_threads is not None]
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "nthreads": _nthreads(dask_worker),
            "effective_cpus": report.topology.effective_cpus,
            "run_delay_ratio": report.census.run_delay_ratio,
            "threads_total": report.census.threads_total,
            "pools": pools,
            "threadguard": getattr(dask_worker, "threadguard", None),
            "dask_variables": {n: os.environ.get(n) for n in NANNY_VARIABLES}}


def cluster_report(client, interval: float = 0.5) -> dict:
    """Every worker's facts, grouped by host, with findings per host."""
    facts = client.run(_worker_facts, interval=interval)
    hosts: dict[str, dict] = {}
    for address, f in facts.items():
        host = hosts.setdefault(f["host"], {"cpus": f["effective_cpus"], "workers": {}})
        host["workers"][address] = f
    findings = []
    for name, host in hosts.items():
        demand = 0
        for w in host["workers"].values():
            widest = max([p["num_threads"] for p in w["pools"]] or [1])
            demand += max(1, w["nthreads"] or 1) * widest
        host["threads_demanded"] = demand
        if demand > host["cpus"]:
            unguarded = [a for a, w in host["workers"].items() if not w["threadguard"]]
            task_threads = sum(max(1, w["nthreads"] or 1) for w in host["workers"].values())
            if task_threads > host["cpus"] and not unguarded:
                fix = (f"the workers' own task threads ({task_threads}) exceed the CPUs: start "
                       f"fewer workers or threads (dask worker --nthreads, LocalCluster("
                       f"threads_per_worker=...))")
            else:
                fix = "threadguard.integrations.dask.register(client)"
            findings.append(finding(
                "TG501", f"host {name}: {len(host['workers'])} workers can run {demand} threads "
                f"on {host['cpus']} CPUs",
                [f"{a}: {w['nthreads']} task threads x pools {[p['num_threads'] for p in w['pools']]}"
                 f", run-delay ratio {w['run_delay_ratio']:.2f}" for a, w in host["workers"].items()]
                + ([f"without the plugin: {', '.join(unguarded)}"] if unguarded else []),
                fix))
    return {"hosts": hosts, "findings": [f.to_dict() for f in findings]}


def dask_setup(worker):
    """``dask worker --preload threadguard.integrations.dask``: the plugin from
    the worker's own start-up. A preloaded worker cannot ask how many workers
    share its host: ``THREADGUARD_WORKERS_PER_HOST`` says it (default 1)."""
    count = os.environ.get("THREADGUARD_WORKERS_PER_HOST", "1")
    try:
        per_host = max(1, int(count))
    except ValueError:
        raise ValueError(f"THREADGUARD_WORKERS_PER_HOST must be a whole number, got {count!r}") \
            from None
    plugin = ThreadGuardPlugin({_host_of(worker.address): per_host})
    plugin.setup(worker)
    worker._threadguard_plugin = plugin  # torn down with the worker's process
