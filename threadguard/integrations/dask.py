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

import json
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
    ``scope="host"``: the workers share each host through the host ledger
    instead (``threadguard host``), with whatever else joined it, and
    follow it as workers come and go; no count is needed.
    """

    name = "threadguard"
    idempotent = True

    def __init__(self, workers_per_host: dict[str, int] | None = None, *, disjoint: bool = False,
                 scope: str = "process"):
        if _Base is object:
            raise ImportError("the Dask integration needs distributed: pip install distributed")
        if scope not in ("process", "host"):
            raise ValueError(f"scope must be one of process, host, got {scope!r}")
        self.workers_per_host = dict(workers_per_host or {})
        self.disjoint = disjoint
        self.scope = scope
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
        if self.scope == "host":  # the ledger shares the host: disjoint CPUs come from it
            self._section = budget(plan=plan, pin=plan.pin, env=True, scope="host")
            self._section._host_callers = nthreads  # each task thread gets a part
            self._section.__enter__()
            worker.threadguard = {"host": host, "scope": "host", "workers_on_host": None,
                                  "nthreads": nthreads, "share": self._section.threads * nthreads,
                                  "threads_per_task": self._section.threads,
                                  "set_by_dask": nanny, "cpus": _pinned(self._section)}
            return
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


def _pinned(section) -> list[int] | None:
    from ..host import pinned_cpus
    cpus = pinned_cpus()
    return list(cpus) if cpus and section.pin else None


def register(client, *, disjoint: bool = False, scope: str = "process") -> ThreadGuardPlugin:
    """Register the plugin with every worker (current and future); with
    ``scope="host"`` they share each host through its ledger."""
    workers = client.scheduler_info()["workers"]
    per_host: dict[str, int] = {}
    for address in workers:
        host = _host_of(address)
        per_host[host] = per_host.get(host, 0) + 1
    plugin = ThreadGuardPlugin(per_host, disjoint=disjoint, scope=scope)
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
            alone = [a for a, w in host["workers"].items() if w["threadguard"]
                     and w["threadguard"].get("scope") != "host"
                     and w["threadguard"].get("workers_on_host", 1) < len(host["workers"])]
            if task_threads > host["cpus"] and not unguarded:
                fix = (f"the workers' own task threads ({task_threads}) exceed the CPUs: start "
                       f"fewer workers or threads (dask worker --nthreads, LocalCluster("
                       f"threads_per_worker=...))")
            elif alone and not unguarded:  # preloaded, each sized as if alone on the host
                fix = (f"unset THREADGUARD_WORKERS_PER_HOST or set it to "
                       f"{len(host['workers'])} (dask worker --preload "
                       "threadguard.integrations.dask shares the host through its ledger "
                       "without it), or threadguard.integrations.dask.register(client)")
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
    the worker's own start-up. The workers share their host through the host
    ledger, whoever started them; ``THREADGUARD_WORKERS_PER_HOST=N`` instead
    gives each a fixed 1/N share (as ``register(client)`` does)."""
    count = os.environ.get("THREADGUARD_WORKERS_PER_HOST")
    if not count:
        plugin = ThreadGuardPlugin(scope="host")
        plugin.setup(worker)
        worker._threadguard_plugin = plugin
        return
    try:
        per_host = max(1, int(count))
    except ValueError:
        raise ValueError(f"THREADGUARD_WORKERS_PER_HOST must be a whole number, got {count!r}") \
            from None
    plugin = ThreadGuardPlugin({_host_of(worker.address): per_host})
    plugin.setup(worker)
    worker._threadguard_plugin = plugin  # torn down with the worker's process


# The report is gathered in a child process: a server that never answers the
# handshake (Client's timeout covers only the TCP connect) or answers with
# junk (read as a frame length: "Unable to allocate 3.07 EiB") costs a
# bounded wait and a one-line error, never a hang or a traceback.
_CHILD = r"""
import json, os, sys
from distributed import Client
from threadguard.integrations.dask import cluster_report
os.write(2, b"threadguard-imported\n")
with Client(sys.argv[1], timeout=float(sys.argv[3])) as client:
    os.write(2, b"threadguard-connected\n")
    report = cluster_report(client, interval=float(sys.argv[2]))
sys.stdout.write(json.dumps(report, default=str))
"""
IMPORT_TIMEOUT = 60.0  # seconds for the child to import distributed
CONNECT_TIMEOUT = 10.0  # seconds for the scheduler to accept and greet
REPORT_TIMEOUT = 120.0  # seconds for every worker's facts once connected


def report_from_child(address: str, interval: float = 0.5) -> dict:
    """``cluster_report`` of the scheduler at ``address``, gathered in a child."""
    import select
    import subprocess
    import sys
    import tempfile
    import time

    from .._errors import ThreadguardError

    if not address.strip():
        raise ThreadguardError("--dask needs a scheduler address, e.g. tcp://HOST:8786")
    if any(c.isspace() or not c.isprintable() for c in address):
        raise ThreadguardError(f"not a scheduler address: {address!r}")
    where = f"the Dask scheduler at {address!r}"
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen([sys.executable, "-c", _CHILD, address, str(interval),
                                 str(CONNECT_TIMEOUT)], stdout=out, stderr=subprocess.PIPE)
        try:
            errors = b""
            for marker, seconds, failure in (
                    (b"threadguard-imported", IMPORT_TIMEOUT,
                     f"distributed took over {IMPORT_TIMEOUT:.0f} s to import"),
                    (b"threadguard-connected", CONNECT_TIMEOUT + 2,
                     f"{where} did not answer as a Dask scheduler within "
                     f"{CONNECT_TIMEOUT:.0f} s")):
                deadline = time.monotonic() + seconds
                while marker not in errors and proc.poll() is None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise ThreadguardError(failure)
                    if select.select([proc.stderr], [], [], min(left, 0.5))[0]:
                        errors += proc.stderr.read1(65536)
            try:
                rest, _ = proc.communicate(timeout=REPORT_TIMEOUT + interval)
            except subprocess.TimeoutExpired:
                raise ThreadguardError(f"{where}: no report from its workers within "
                                       f"{REPORT_TIMEOUT:.0f} s") from None
            errors += rest or b""
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if proc.returncode != 0:
            lines = [line for line in errors.decode(errors="replace").splitlines()
                     if line.strip() and not line.startswith("threadguard-")]
            reason = lines[-1].strip() if lines else f"status {proc.returncode}"
            raise ThreadguardError(f"cannot reach {where}: {reason[:200]}")
        out.seek(0)
        try:
            return json.loads(out.read())
        except ValueError:
            raise ThreadguardError(f"{where}: the report could not be read") from None
