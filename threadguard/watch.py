"""``threadguard watch``: a live view of a process's threads, about twice a second.

A terminal gets a rich live view (CPUs vs busy threads as a bar, run delay,
one row per pool, the busiest threads) that quits on ``q`` or Ctrl-C; output
that is not a terminal gets one plain line per refresh. Either way a summary
is printed when the process ends or the watch is stopped.
"""

from __future__ import annotations

import os
import select
import sys
from collections import defaultdict

from .sampler import RUNNABLE, SLEEPING, Sampler


def configured_sizes(pid: int) -> dict[str, int]:
    """Pool sizes that can be read from outside the process (OpenBLAS's)."""
    try:
        from .inspection import pools_of_other_process
        from .libraries import loaded_libraries
        from .runtime_libs import loaded_runtimes
        libs = loaded_libraries(pid)
        pools = pools_of_other_process(pid, loaded_runtimes(libraries=libs), libs)
    except Exception:  # gone or unreadable: the column shows "?"
        return {}
    return {p.library: p.num_threads for p in pools if p.num_threads is not None}


def _pool_rows(sampler, sample):
    rows = defaultdict(lambda: [0, 0, 0.0, 0.0])  # threads, busy, cpu, delay
    for tid, (state, cpu, delay) in sample.states.items():
        row = rows[sampler.recording.pools.get(tid, "other")]
        row[0] += 1
        row[1] += state != SLEEPING
        row[2] += cpu / sample.dt
        row[3] += delay / sample.dt
    return sorted(rows.items(), key=lambda kv: -kv[1][2])


def plain_line(sampler, sample) -> str:
    busy = sum(1 for s in sample.states.values() if s[0] != SLEEPING)
    waiting = sum(1 for s in sample.states.values() if s[0] == RUNNABLE)
    delay = sum(s[2] for s in sample.states.values()) / sample.dt
    pools = " ".join(f"{pool}={row[1]}/{row[0]}" for pool, row in _pool_rows(sampler, sample))
    return (f"{sample.t:6.1f}s  CPUs {sampler.recording.effective_cpus}  busy {busy}  "
            f"waiting {waiting}  run-delay {delay:.2f}  {pools}")


def _view(sampler, sample):
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    cpus = sampler.recording.effective_cpus
    busy = sum(1 for s in sample.states.values() if s[0] != SLEEPING)
    delay = sum(s[2] for s in sample.states.values()) / sample.dt
    width = 40
    scale = max(busy, cpus, 1)
    bar = Text()
    bar.append("#" * round(width * min(busy, cpus) / scale), style="green")
    bar.append("#" * round(width * max(0, busy - cpus) / scale), style="bold red")
    bar.append("." * (width - len(bar.plain)))
    head = Text(f"process {sampler.pid}  {busy} busy threads / {cpus} CPUs  "
                f"run-delay {delay:.2f}  ", style="bold")
    pools = Table(box=None)
    for col in ("pool", "configured", "threads seen", "busy", "CPU %", "waiting %"):
        pools.add_column(col, justify="left" if col == "pool" else "right")
    configured = getattr(sampler, "configured", {})
    for pool, (n, b, cpu, d) in _pool_rows(sampler, sample):
        size = configured.get(pool)
        pools.add_row(pool, "?" if size is None else str(size), str(n), str(b),
                      f"{cpu * 100:.0f}", f"{d * 100:.0f}")
    top = Table(box=None, title="busiest threads", title_justify="left")
    for col in ("tid", "name", "pool", "state", "CPU %"):
        top.add_column(col)
    busiest = sorted(sample.states.items(), key=lambda kv: -kv[1][1])[:5]
    for tid, (state, cpu, _d) in busiest:
        top.add_row(str(tid), sampler.recording.names.get(tid, "?"),
                    sampler.recording.pools.get(tid, "?"), state, f"{cpu / sample.dt * 100:.0f}")
    return Group(head, bar, Text(""), pools, Text(""), top, Text("q or Ctrl-C to quit", style="dim"))


def summary(rec) -> str:
    series = rec.series()
    if not series:
        return "no samples"
    peak = max(p["active"] for p in series)
    mean_delay = sum(p["run_delay_ratio"] for p in series) / len(series)
    over = sum(1 for p in series if p["active"] > rec.effective_cpus) / len(series)
    return (f"{len(series)} samples over {series[-1]['t']:.1f}s: peak {peak} busy threads on "
            f"{rec.effective_cpus} CPUs, more threads than CPUs in {over:.0%} of samples, "
            f"mean run-delay ratio {mean_delay:.2f}")


def watch(pid: int, *, hz: float = 2.0, stream=None, stop=None) -> str:
    stream = stream or sys.stdout
    sampler = Sampler(pid, hz)
    sampler.configured = configured_sizes(pid)
    if not stream.isatty():
        sampler.run(None, on_sample=lambda s: (stream.write(plain_line(sampler, s) + "\n"),
                                               stream.flush()), stop=stop)
        return summary(sampler.recording)
    import termios
    import tty

    from rich.console import Console
    from rich.live import Live

    fd = sys.stdin.fileno() if sys.stdin.isatty() else None
    saved = termios.tcgetattr(fd) if fd is not None else None
    quit_keys = lambda: fd is not None and select.select([fd], [], [], 0)[0] and \
        os.read(fd, 1) in (b"q", b"Q")  # noqa: E731
    try:
        if fd is not None:
            tty.setcbreak(fd)
        with Live(console=Console(file=stream), refresh_per_second=4, transient=False) as live:
            sampler.run(None, on_sample=lambda s: live.update(_view(sampler, s)),
                        stop=lambda: quit_keys() or (stop is not None and stop()))
    finally:
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
    return summary(sampler.recording)
