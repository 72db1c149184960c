"""``inspect()``: one report joining topology, census, runtimes, pools, owners.

Linux is read exactly; elsewhere the report holds what psutil and
threadpoolctl know, with a note saying what is missing.
"""

from __future__ import annotations

import os
import sys
from typing import NamedTuple

import psutil

from . import attribution as _attribution
from ._errors import AccessDenied, NoSuchProcess, ProcessError, ZombieProcess
from .threads import take_census
from .libraries import loaded_libraries
from .pools import Pool, detect_pools, family_of_runtime
from .report import Report, command_line
from .runtime_libs import loaded_runtimes, parse_ld_preload
from .machine import read_topology

IS_LINUX = sys.platform.startswith("linux")

PF_KTHREAD = 0x00200000  # include/linux/sched.h


def _state_and_flags(pid: int) -> tuple[str, int]:
    """The state (3rd) and flags (9th) fields of ``/proc/PID/stat``, read
    after the command name, which may hold spaces and parentheses."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return fields[0].decode(), int(fields[6])
    except (OSError, IndexError, ValueError):
        return "?", 0


def environ_of(pid: int) -> tuple[dict[str, str] | None, str | None]:
    """A process's environment (another's: as it started, /proc/PID/environ) and why not."""
    if pid == os.getpid():
        return dict(os.environ), None
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            data = f.read()
    except PermissionError:
        return None, f"environment of process {pid} unreadable (permission denied)"
    except OSError as err:
        return None, f"environment of process {pid} unreadable ({err.strerror})"
    env = {}
    for item in data.split(b"\0"):
        if b"=" in item:
            k, v = item.split(b"=", 1)
            env[os.fsdecode(k)] = os.fsdecode(v)
    return env, None


def pools_of_other_process(pid: int, runtimes, libs) -> list[Pool]:
    """Pools seen from outside: one per runtime; sizes where memory tells them."""
    from .pools.openblas import size_in_other_process
    pools = []
    for r in runtimes:
        fam = family_of_runtime(r.name)
        key, library = (fam.key, fam.library) if fam else (r.name, r.name)
        size = size_in_other_process(pid, libs, r.path) if key == "openblas" else None
        if size is not None:
            pools.append(Pool(library, r.kind, size, r.path, source="blas_cpu_number in memory",
                              pool=key))
            continue
        pools.append(Pool(library, r.kind, None, r.path, source="unknown", pool=key, notes=(
            "the configured size is readable only inside the process; threads_observed "
            "counts the threads it created",)))
    return pools


def _count_observed(pools, attribution) -> list[Pool]:
    if attribution is None:
        return list(pools)
    counts: dict[str, int] = {}
    for owner in attribution.owners.values():
        counts[owner.pool] = counts.get(owner.pool, 0) + 1
    return [p.with_observed(counts.get(p.pool, 0)) if p.owns_threads else p for p in pools]


class Facts(NamedTuple):
    """Everything one inspection read, each fact once: the report, and the
    raw facts checks built on it need (the loaded libraries with their
    addresses, the environment)."""

    report: Report
    libraries: object | None  # threadguard.libraries.LoadedLibraries
    environ: dict[str, str] | None


def inspect(pid: int | None = None, interval: float = 0.2, *, fsroot=None,
            python_names: str | None = "auto") -> Report:
    """Inspect process ``pid`` (default: this one) over ``interval`` seconds.

    Raises ``NoSuchProcess`` / ``AccessDenied`` when the process cannot be
    inspected at all; facts that cannot be read are None with a note.
    """
    return gather(pid, interval, fsroot=fsroot, python_names=python_names).report


def gather(pid: int | None = None, interval: float = 0.2, *, fsroot=None,
           python_names: str | None = "auto") -> Facts:
    """``inspect``, keeping the facts it read."""
    target = os.getpid() if pid is None else int(pid)
    if not IS_LINUX:
        return Facts(_inspect_portable(target, interval), None, None)
    if not os.path.exists(f"/proc/{target}"):
        raise NoSuchProcess(target)
    state, flags = _state_and_flags(target)
    if state == "Z":
        raise ZombieProcess(target)
    if flags & PF_KTHREAD:
        raise ProcessError(target, "it is a kernel thread: no user code, libraries or pools")
    notes: list[str] = []
    census = take_census(target, interval)
    notes.extend(census.notes)
    topology = read_topology(fsroot, pid=target)
    libs = loaded_libraries(target)
    if libs.note:
        notes.append(f"load order: {libs.note}; order shown is {libs.order_source}")
    runtimes = loaded_runtimes(libraries=libs)

    names = None
    if target != os.getpid() and python_names == "auto":
        names, note = _attribution.python_names_with_py_spy(target)
        if note:
            notes.append(note)
    attribution = _attribution.attribute_threads(
        target, [t.tid for t in census.threads], libraries=libs, python_names=names)
    if attribution.note:
        notes.append(attribution.note)

    env, note = environ_of(target)
    if note:
        notes.append(note)
    preload = tuple(parse_ld_preload(env.get("LD_PRELOAD"))) if env is not None else None

    if target == os.getpid():
        pools = detect_pools()
    else:
        pools = pools_of_other_process(target, runtimes, libs)
    pools = _count_observed(pools, attribution)
    report = Report(pid=target, topology=topology, census=census, attribution=attribution,
                    runtimes=runtimes, runtimes_order_source=libs.order_source,
                    ld_preload=preload, pools=tuple(pools), notes=tuple(notes),
                    command=command_line(target))
    return Facts(report, libs, env)


def _inspect_portable(pid: int, interval: float) -> Report:
    """What psutil and threadpoolctl know on a platform without /proc."""
    notes = [f"{sys.platform}: topology, run-queue delay, load order and thread owners are "
             "read only on Linux; this report holds what psutil and threadpoolctl know"]
    try:
        proc = psutil.Process(pid)
        threads = proc.num_threads()
    except psutil.NoSuchProcess as err:
        raise NoSuchProcess(pid) from err
    except psutil.AccessDenied as err:
        raise AccessDenied(pid) from err
    from .threads import Census
    census = Census(pid=pid, interval=0.0, threads=(), threads_total=threads,
                    threads_active=None, peak_runnable=None, cpu_used=None,
                    run_delay_ratio=None, notes=())
    pools = detect_pools() if pid == os.getpid() else []
    return Report(pid=pid, topology=None, census=census, attribution=None, runtimes=(),
                  runtimes_order_source=None, ld_preload=None, pools=tuple(pools),
                  notes=tuple(notes))
