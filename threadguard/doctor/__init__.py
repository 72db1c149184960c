"""``threadguard doctor``: find every threading problem, explain it, print the fix.

One module per family of checks (``variables``, ``runtimes``, ``capacity``,
``messages``); each returns findings (``findings.Finding``) with a stable
code from ``findings.CATALOG``. ``diagnose`` runs the families on the facts
a target gave; ``targets`` gathers those facts.
"""

from __future__ import annotations

import os
from dataclasses import replace

from ..machine import read_topology
from ..report import Report
from . import capacity, ledger, messages, runtimes, variables
from .findings import CATALOG, RANK, SEVERITIES, Finding, worst  # noqa: F401


def _openvino_version() -> str | None:
    from importlib import metadata
    try:
        return metadata.version("openvino")
    except metadata.PackageNotFoundError:
        return None


def diagnose(*, environ=None, topology=None, report=None, shipped=None, stderr: str = "",
             gomp_provider: str | None = None, host_cpus: int | None = None) -> list[Finding]:
    """Every check that the given facts allow, most important first."""
    from ..runtime_libs import shipped_runtimes

    environ = dict(os.environ if environ is None else environ)
    topology = topology or (report.topology if report is not None else None) or read_topology()
    if host_cpus is None and topology.fsroot == "/":
        host_cpus = os.cpu_count()
    shipped = shipped_runtimes() if shipped is None else shipped
    found: list[Finding] = []
    found += variables.check(environ, topology.effective_cpus)
    found += runtimes.check_shipped(shipped, environ, _openvino_version())
    found += capacity.check_machine(topology, environ, host_cpus)
    if topology.fsroot == "/":
        found += ledger.check(topology)
    if report is not None:
        found += runtimes.check_loaded(report.runtimes, environ, gomp_provider)
        found += runtimes.check_mixed_pools(report)
        found += capacity.check_process(report)
    if stderr:
        found += messages.classify(stderr)
    # A loaded-runtime error supersedes the same conflict predicted from packages.
    codes = {f.code for f in found}
    if {"TG101", "TG102"} & codes:
        found = [f for f in found if f.code != "TG104"]
    unique, seen = [], set()
    for f in found:
        key = (f.code, f.title)
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return sorted(unique, key=lambda f: (-RANK[f.severity], f.code))


def doctor(target: str = "environment", *, value=None, interval: float = 0.5) -> tuple[Report, dict]:
    """Gather facts for a target and diagnose them: (report with findings, extra)."""
    from . import targets

    extra: dict = {"target": {"kind": target, "value": value}}
    from ..runtime_libs import shipped_runtimes
    shipped = shipped_runtimes()
    extra["shipped_runtimes"] = [{"kind": r.kind, "name": r.name, "path": r.path,
                                  "distribution": r.distribution} for r in shipped]
    if target == "environment":
        topo = read_topology()
        report = Report(pid=os.getpid(), topology=topo, census=None, attribution=None,
                        runtimes=(), runtimes_order_source=None, ld_preload=None, pools=())
        environ = dict(os.environ)
        found = diagnose(topology=topo, environ=environ, shipped=shipped)
    elif target in ("import", "pid", "command"):
        checked = {"import": targets.inspect_imports, "pid": targets.inspect_pid,
                   "command": targets.run_command}[target](value, interval)
        report = checked.report
        if target == "command":
            extra["command_status"] = checked.status
        if report is None:
            topo = read_topology()
            report = Report(pid=0, topology=topo, census=None, attribution=None, runtimes=(),
                            runtimes_order_source=None, ld_preload=None, pools=(),
                            notes=("the command ended before it could be sampled",))
        # The target's own environment: what its runtimes read (a command may
        # have been given LD_PRELOAD or OMP_* of its own).
        environ = checked.environ if checked.environ is not None else (
            {} if target == "pid" else dict(os.environ))
        found = diagnose(report=report, stderr=checked.stderr, environ=environ,
                         gomp_provider=checked.gomp_provider, shipped=shipped)
    else:
        raise ValueError(f"unknown doctor target {target!r}")
    from .checklist import checklist
    extra["checked"] = [list(row) for row in checklist(report.topology, report.runtimes,
                                                       shipped, environ)]
    return replace(report, findings=tuple(found)), extra
