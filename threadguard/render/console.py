"""The readable console view of a topology and an inspection report (rich)."""

from __future__ import annotations

import os
from collections import Counter, defaultdict

from rich.console import Console
from rich.table import Table

from .._fs import format_cpulist
from ..report import Report
from ..machine import Topology


def make_console(file=None, width: int | None = None) -> Console:
    """A console that honours NO_COLOR and drops colour when not a terminal."""
    return Console(file=file, width=width, highlight=False, soft_wrap=False)


def render_topology(topo: Topology, console: Console) -> None:
    console.print("[bold]Machine[/bold]" + (f"  (from {topo.fsroot})" if topo.fsroot != "/" else ""))
    smt = max((len(c.cpus) for c in topo.cores), default=1)
    kinds = Counter(c.kind for c in topo.cores if c.kind)
    rows = [
        ("online CPUs", f"{len(topo.online_cpus)}  ({format_cpulist(topo.online_cpus)})"),
        ("packages (sockets)", str(len(topo.packages))),
        ("NUMA nodes", ", ".join(f"{n.id}: {format_cpulist(n.cpus) or 'memory only'}"
                                 for n in topo.numa_nodes)),
        ("physical cores", f"{len(topo.cores)}" + (f", {smt} hardware threads each" if smt > 1
                                                    else ", no SMT")),
    ]
    if kinds:
        rows.append(("core kinds", ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))))
    rows += [
        ("allowed CPUs", f"{len(topo.allowed_cpus)}  ({format_cpulist(topo.allowed_cpus)}) "
                         f"from {topo.allowed_source}"),
        ("CPU quota", "none" if topo.cpu_quota is None else
         f"{topo.cpu_quota:g} CPUs ({topo.quota_source})"),
        ("effective CPUs", f"[bold]{topo.effective_cpus}[/bold]  from {topo.effective_source}"),
    ]
    if topo.os_cpu_count is not None and topo.os_cpu_count != topo.effective_cpus:
        rows.append(("os.cpu_count()", f"{topo.os_cpu_count}  (pools that use it oversubscribe)"))
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="dim")
    table.add_column()
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)
    for note in topo.notes:
        console.print(f"[yellow]note:[/yellow] {note}")


def render_report(report: Report, console: Console) -> None:
    if report.topology is not None:
        render_topology(report.topology, console)
        console.print()
    c = report.census
    console.print(f"[bold]Process {report.pid}[/bold]"
                  + (f"  {_short(report.command, 70)}" if report.command else ""))
    if c is not None:
        parts = [f"{c.threads_total} threads"]
        if c.threads_active is not None:
            parts.append(f"{c.threads_active} active")
        if c.cpu_used is not None:
            parts.append(f"{c.cpu_used:.2f} CPUs used")
        if c.run_delay_ratio is not None:
            parts.append(f"run-delay ratio {c.run_delay_ratio:.2f}")
        if c.interval:
            parts.append(f"over {c.interval:.2f}s")
        console.print("  " + ", ".join(parts))
        if c.throttling is not None and c.throttling.periods:
            share = c.throttling.throttled_share or 0.0
            console.print(f"  cgroup throttled in {share:.0%} of {c.throttling.periods} periods "
                          f"({c.throttling.throttled_seconds:.3f}s)")
    console.print()

    if report.runtimes:
        table = Table(title="Runtimes (load order: " + (report.runtimes_order_source or "?") + ")",
                      title_justify="left")
        for col in ("#", "kind", "name", "version"):
            table.add_column(col)
        table.add_column("path", overflow="fold")
        for r in report.runtimes:
            table.add_row(str(r.load_index), r.kind, r.name, r.version or "?", _home(r.path))
        console.print(table)
    else:
        console.print("No OpenMP, TBB or BLAS runtime loaded.")
    if report.ld_preload:
        console.print("LD_PRELOAD: " + " ".join(
            e.entry + ("" if e.exists is not False else " [red](missing)[/red]")
            for e in report.ld_preload))

    if report.pools:
        table = Table(title="Pools", title_justify="left")
        for col in ("library", "api", "configured", "threads seen", "notes"):
            table.add_column(col)
        for p in report.pools:
            table.add_row(p.library, p.api, _num(p.num_threads), _num(p.threads_observed),
                          "; ".join(p.notes))
        console.print(table)

    if c is not None and c.threads:
        groups = defaultdict(list)
        for t in c.threads:
            groups[report.owner_pool(t.tid) or "?"].append(t)
        table = Table(title="Threads by owner", title_justify="left")
        for col in ("owner", "threads", "active", "CPU", "run delay", "names"):
            table.add_column(col)
        for pool, threads in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            cpu = sum(t.cpu_share or 0 for t in threads)
            delay = sum(t.run_delay_seconds or 0 for t in threads)
            names = sorted({(report.attribution.owners[t.tid].python_name
                             if report.attribution and t.tid in report.attribution.owners
                             and report.attribution.owners[t.tid].python_name else t.name)
                            for t in threads})
            table.add_row(pool, str(len(threads)), str(sum(t.active for t in threads)),
                          f"{cpu:.2f}", f"{delay * 1000:.1f} ms", _short(", ".join(names), 40))
        console.print(table)
    for note in report.notes:
        console.print(f"[yellow]note:[/yellow] {note}")


def _num(value) -> str:
    return "?" if value is None else str(value)


def _short(text: str | None, width: int) -> str:
    text = (text or "").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def _home(path: str) -> str:
    home = os.path.expanduser("~")
    return "~" + path[len(home):] if home != "/" and path.startswith(home + "/") else path
