"""What the doctor looked at, before what it found: the CPUs this process
may use and why, the runtimes (loaded, in load order, or installed, with the
package that ships each) and the thread variables set. Pure: facts in, lines out."""

from __future__ import annotations

from .._fs import format_cpulist
from ..planner import THREAD_VARIABLES

EXTRA_VARIABLES = ("OMP_WAIT_POLICY", "OMP_PROC_BIND", "OMP_PLACES", "KMP_AFFINITY",
                   "MKL_THREADING_LAYER", "LD_PRELOAD")


def checklist(topology, runtimes, shipped, environ) -> list[tuple[str, str]]:
    """``(label, text)`` rows. ``runtimes``: loaded ones in load order (a live
    process), or empty; ``shipped``: what the installed packages ship."""
    rows = []
    if topology is not None:
        cpus = (f"{topology.effective_cpus} of {len(topology.online_cpus)} online, from "
                f"{topology.effective_source}")
        if list(topology.allowed_cpus) != list(topology.online_cpus):
            cpus += f", CPUs {format_cpulist(topology.allowed_cpus)}"
        rows.append(("CPUs", cpus))
    if runtimes:
        rows.append(("loaded", ", ".join(f"#{r.load_index} {r.name}" + (
            f" {r.version}" if r.version else "") for r in runtimes)))
    by_name: dict[str, list[str]] = {}
    for r in shipped:
        by_name.setdefault(r.name, [])
        if r.distribution not in by_name[r.name]:
            by_name[r.name].append(r.distribution or "?")
    rows.append(("installed", ", ".join(f"{name} ({', '.join(dists)})" for name, dists in
                                        sorted(by_name.items())) or "no OpenMP or TBB runtime"))
    names = [n for n in THREAD_VARIABLES + EXTRA_VARIABLES if n in environ]
    rows.append(("variables", ", ".join(f"{n}={environ[n]!r}" if not environ[n].isprintable()
                                        or " " in environ[n] else f"{n}={environ[n]}"
                                        for n in names) or "no thread variables set"))
    return rows
