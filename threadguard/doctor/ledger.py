"""Checks of the host ledger: grants beyond the CPUs, pools outside it.

Read without joining (``threadguard.host.participants``). Run only when the
ledger has participants: without one, no process is sharing the host this
way and there is nothing to compare.
"""

from __future__ import annotations

import os

from .findings import finding

MAX_LISTED = 10  # processes named in the evidence


def pools_outside(members: set[int], me: int) -> list[tuple[int, str, int, list[str]]]:
    """Processes this user can see that run thread pools (a BLAS, OpenMP or
    TBB runtime mapped, and more than one thread) and are not in the
    ledger: ``(pid, command, threads, runtimes)``. Unreadable ones are
    skipped: only what can be seen is reported."""
    import psutil

    from .._errors import ThreadguardError
    from ..libraries import read_maps
    from ..runtime_libs import classify
    out = []
    for proc in psutil.process_iter(["pid", "num_threads", "cmdline"]):
        info = proc.info
        pid = info["pid"]
        if pid in members or pid == me or (info["num_threads"] or 0) < 2:
            continue
        try:
            names = {classify(m.path) for m in read_maps(pid)}
        except (ThreadguardError, OSError):  # gone, or not ours
            continue
        runtimes = sorted(n[1] for n in names if n)
        if runtimes:
            import shlex
            out.append((pid, shlex.join(info["cmdline"] or []) or "?", info["num_threads"],
                        runtimes))
    return out


def check(topology, path: str | None = None) -> list:
    from ..host import host_capacity, participants
    from ..host_file import LedgerError
    try:
        slots = participants(path)
    except LedgerError as err:
        return [finding("TG502", "the host ledger cannot be read", [str(err)],
                        "remove the file; the next participant rebuilds it")]
    if not slots:
        return []
    found = []
    capacity = host_capacity(slots)
    granted = sum(s.grant for s in slots)
    rows = [f"pid {s.pid}: asked {s.asked}, granted {s.grant}" for s in slots]
    if granted > capacity:
        found.append(finding(
            "TG502", f"{len(slots)} participants of the host ledger hold {granted} threads on "
                     f"{capacity} CPUs", rows,
            "fewer participants (each holds at least one thread), or fewer processes "
            "started at once"))
    outside = pools_outside({s.pid for s in slots}, os.getpid())
    if outside:
        shown = [f"pid {pid}: {threads} threads, {', '.join(rt)}: {cmd[:120]}"
                 for pid, cmd, threads, rt in outside[:MAX_LISTED]]
        if len(outside) > MAX_LISTED:
            shown.append(f"... and {len(outside) - MAX_LISTED} more")
        found.append(finding(
            "TG503", f"{len(outside)} process(es) run thread pools outside the host ledger "
                     f"({len(slots)} participant(s) share {capacity} CPUs without counting them)",
            shown,
            "start them with threadguard run --scope host -- CMD, or set THREADGUARD_SCOPE=host "
            "for programs that use threadguard.budget()"))
    return found
