"""CPU affinity and memory policy, set and restored (numactl's two halves).

Affinity is set on every thread of the process (``sched_setaffinity`` per
thread), as ``numactl --physcpubind`` would have at start; threads created
inside inherit it. The memory policy (``set_mempolicy(MPOL_BIND)``, numactl's
``-m``) is a per-thread property: it is set for the calling thread, which
covers the memory it allocates and the threads it starts.
"""

from __future__ import annotations

import ctypes
import os

from .applied import Applied

MPOL_DEFAULT, MPOL_BIND = 0, 2
_MASK_LONGS = 16  # 1,024 nodes
_SYSCALLS = {"x86_64": (238, 239), "aarch64": (237, 236), "ppc64le": (261, 260),
             "s390x": (270, 269)}  # (set_mempolicy, get_mempolicy)
_libc = None


def _syscall():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc.syscall


def get_mempolicy() -> tuple[int, tuple[int, ...]] | None:
    """The calling thread's (mode, nodes), or None where unsupported."""
    numbers = _SYSCALLS.get(os.uname().machine)
    if numbers is None:
        return None
    mode = ctypes.c_int(0)
    mask = (ctypes.c_ulong * _MASK_LONGS)()
    rc = _syscall()(numbers[1], ctypes.byref(mode), mask, ctypes.c_ulong(_MASK_LONGS * 64 + 1),
                    None, ctypes.c_ulong(0))
    if rc != 0:
        return None
    nodes = tuple(i for i in range(_MASK_LONGS * 64) if mask[i // 64] >> (i % 64) & 1)
    return mode.value, nodes


def set_mempolicy(mode: int, nodes) -> None:
    numbers = _SYSCALLS.get(os.uname().machine)
    if numbers is None:
        raise OSError(f"set_mempolicy: unsupported machine {os.uname().machine}")
    mask = (ctypes.c_ulong * _MASK_LONGS)()
    for node in nodes or ():
        mask[node // 64] |= 1 << (node % 64)
    maxnode = ctypes.c_ulong(_MASK_LONGS * 64 + 1 if nodes else 0)
    rc = _syscall()(numbers[0], ctypes.c_int(mode), mask if nodes else None, maxnode)
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"set_mempolicy: {os.strerror(err)}")


def _tids() -> list[int]:
    return [int(t) for t in os.listdir("/proc/self/task")]


def pin_affinity(cpus, saved: dict, applied) -> dict:
    """Restrict every thread to ``cpus``. ``saved`` gets each thread's
    affinity before the first pin (first value wins) and, as ``"default"``,
    the process's for threads started since, as it goes (an interrupted pin
    can still be undone); returned for ``unpin``."""
    first = "default" not in saved
    try:
        saved.setdefault("default", os.sched_getaffinity(0))
        count = 0
        for tid in _tids():
            try:
                # A thread first seen after the first pin was born pinned: its
                # own affinity is the process's from before.
                before = os.sched_getaffinity(tid) if first else saved.get(tid, saved["default"])
                os.sched_setaffinity(tid, cpus)
                saved.setdefault(tid, before)
                count += 1
            except OSError:  # a thread that ended, or a CPU outside the cpuset
                continue
        if applied is not None:
            applied.append(Applied("affinity", "process", sorted(saved["default"]), sorted(cpus),
                            "applied", None, f"{count} threads"))
    except (OSError, AttributeError) as err:
        if applied is not None:
            applied.append(Applied("affinity", "process", None, None, "refused", None, str(err)))
    return saved


def unpin(saved: dict) -> None:
    """Put every thread's affinity back (threads started meanwhile get the default)."""
    default = saved.get("default")
    try:
        tids = _tids()
    except OSError:
        return
    for tid in tids:
        before = saved.get(tid, default)
        if before is None:
            continue
        try:
            os.sched_setaffinity(tid, before)
        except OSError:
            pass


def bind_memory(nodes, applied):
    """Bind this thread's memory to ``nodes``; returns the policy before (or None)."""
    before = get_mempolicy()
    try:
        set_mempolicy(MPOL_BIND, nodes)
    except OSError as err:
        if applied is not None:
            applied.append(Applied("memory policy", "thread", before, None, "refused", None, str(err)))
        return None
    if applied is not None:
        applied.append(Applied("memory policy", "thread", before, ("bind", list(nodes)), "applied",
                        None, None))
    return before or (MPOL_DEFAULT, ())


def restore_mempolicy(before) -> None:
    mode, nodes = before
    try:
        set_mempolicy(mode, nodes if mode != MPOL_DEFAULT else ())
    except OSError:
        pass
