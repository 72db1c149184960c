"""Which pool or library created each OS thread of a process.

The exact source is glibc's own thread descriptor (``struct pthread``): the
dynamic linker keeps every thread's descriptor on two lists in
``_rtld_global`` (``_dl_stack_used``, ``_dl_stack_user``), and libc publishes
the field offsets for libthread_db as ``_thread_db_*`` symbols. Each
descriptor gives the thread's kernel tid and its ``start_routine``; the
library mapped at that address created the thread. For C++ ``std::thread``
the start routine is libstdc++'s trampoline, so the creator is the library
holding the vtable of the thread's state object (the routine's argument).

All reads go through ``/proc/PID/mem``: nothing is stopped or injected, and
threads in hand-written assembly (OpenBLAS kernels) are attributed as well
as any other. Where the memory cannot be read, threads are reported
``unattributed`` with the reason, never guessed.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import threading
from dataclasses import dataclass

from . import _procmem
from ._errors import AccessDenied, NoSuchProcess
from .libraries import AddressSpace, LoadedLibraries, loaded_libraries, read_maps
from .pools import MAIN, PYTHON, UNATTRIBUTED, pool_of_library

@dataclass(frozen=True)
class ThreadOwner:
    tid: int
    pool: str  # a family's pool key (openblas, openmp:libgomp, tbb...), or main | python | other | unattributed
    library: str | None  # the library that created the thread
    method: str  # how it was found
    python_name: str | None = None  # the threading.Thread name, for Python threads


@dataclass(frozen=True)
class Attribution:
    pid: int
    owners: dict[int, ThreadOwner]
    note: str | None = None  # why some or all threads are unattributed


class _Layout:
    """Offsets published by libc for libthread_db, and the lists' address."""

    def __init__(self, mem: _procmem.ProcessMemory, libs: LoadedLibraries):
        rtld = libc = None
        for lib in libs.libraries:
            base = os.path.basename(lib.path)
            if not lib.dynamic:
                continue
            if rtld is None and base.startswith("ld-"):
                rtld = _procmem.SymbolTable(mem, lib.base, lib.dynamic)
            elif base.startswith(("libc.so", "libpthread.so")):
                table = _procmem.SymbolTable(mem, lib.base, lib.dynamic)
                if table.lookup("_thread_db_pthread_tid"):
                    libc = table
        if rtld is None or libc is None:
            raise LookupError("glibc's dynamic linker or thread_db symbols not found "
                              "(not a glibc process?)")
        self.rtld_global = rtld.lookup("_rtld_global")
        if not self.rtld_global:
            raise LookupError("_rtld_global not found")

        def offset(name: str) -> int:
            addr = libc.lookup("_thread_db_" + name)
            if not addr:
                raise LookupError(f"_thread_db_{name} not found")
            return struct.unpack("<III", mem.read(addr, 12))[2]

        self.stack_used = offset("rtld_global__dl_stack_used")
        self.stack_user = offset("rtld_global__dl_stack_user")
        self.list = offset("pthread_list")
        self.tid = offset("pthread_tid")
        self.start_routine = offset("pthread_start_routine")
        # `arg` directly follows `start_routine` in struct pthread (every glibc
        # since NPTL); libthread_db publishes no descriptor for it.
        self.arg = self.start_routine + 8


def _descriptors(mem, layout: _Layout, limit: int = 100_000):
    """``(tid, start_routine, arg)`` of every thread descriptor glibc knows."""
    for head_offset in (layout.stack_user, layout.stack_used):
        head = layout.rtld_global + head_offset
        node = mem.u64(head)
        count = 0
        while node and node != head and count < limit:
            pd = node - layout.list
            tid = struct.unpack("<i", mem.read(pd + layout.tid, 4))[0]
            start = mem.u64(pd + layout.start_routine)
            arg = mem.u64(pd + layout.arg)
            yield tid, start, arg
            node = mem.u64(node)
            count += 1


def _python_names_in_process() -> dict[int, str]:
    return {t.native_id: t.name for t in threading.enumerate() if t.native_id}


def find_py_spy() -> str | None:
    """py-spy on PATH, or installed beside this interpreter (a venv not activated)."""
    beside = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return shutil.which("py-spy") or (beside if os.access(beside, os.X_OK) else None)


def python_names_with_py_spy(pid: int, timeout: float = 10.0) -> tuple[dict[int, str], str | None]:
    """Python thread names of another process via ``py-spy dump --json``."""
    exe = find_py_spy()
    if exe is None:
        return {}, "py-spy not installed: Python thread names unknown"
    try:
        # --nonblocking: the process is read while it runs, never paused.
        out = subprocess.run([exe, "dump", "--nonblocking", "--pid", str(pid), "--json"],
                             capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as err:
        return {}, f"py-spy failed: {err}"
    if out.returncode != 0:
        lines = [" ".join(line.split()) for line in out.stderr.splitlines() if line.strip()]
        said = next((line for line in lines if line.lower().startswith("error")),
                    lines[0] if lines else f"it exited with status {out.returncode}")
        return {}, f"py-spy failed: {said[:200]}"
    try:
        threads = json.loads(out.stdout)
    except ValueError:
        return {}, "py-spy printed no JSON"
    return {t["os_thread_id"]: t.get("thread_name") or "" for t in threads
            if t.get("os_thread_id")}, None


def attribute_threads(pid: int | None = None, tids=None, *,
                      libraries: LoadedLibraries | None = None,
                      python_names: dict[int, str] | None = None) -> Attribution:
    """Map each thread of ``pid`` (default: this process) to the pool that made it."""
    in_process = pid is None or pid == os.getpid()
    pid = os.getpid() if pid is None else pid
    if tids is None:
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except FileNotFoundError as err:
            raise NoSuchProcess(pid) from err
    tids = list(tids)
    if python_names is None:
        python_names = _python_names_in_process() if in_process else {}

    def unattributed(reason: str) -> Attribution:
        owners = {}
        for tid in tids:
            if tid == pid:
                owners[tid] = ThreadOwner(tid, MAIN, None, "main thread", python_names.get(tid))
            elif tid in python_names:
                owners[tid] = ThreadOwner(tid, PYTHON, None, "Python threading", python_names[tid])
            else:
                owners[tid] = ThreadOwner(tid, UNATTRIBUTED, None, reason)
        return Attribution(pid, owners, reason)

    if not _procmem.SUPPORTED:
        return unattributed("thread descriptors are read only on 64-bit little-endian Linux")
    try:
        libs = libraries or loaded_libraries(pid)
        space = AddressSpace(read_maps(pid))
        with _procmem.ProcessMemory(pid) as mem:
            layout = _Layout(mem, libs)
            found = {tid: (start, arg) for tid, start, arg in _descriptors(mem, layout)}
            owners = {}
            for tid in tids:
                if tid == pid:
                    owners[tid] = ThreadOwner(tid, MAIN, None, "main thread",
                                              python_names.get(tid))
                    continue
                if tid not in found:
                    owners[tid] = ThreadOwner(
                        tid, UNATTRIBUTED, None,
                        "no glibc descriptor (created with clone() directly, or just exited)")
                    continue
                start, arg = found[tid]
                owners[tid] = _owner(mem, space, tid, start, arg, python_names.get(tid))
    except AccessDenied as err:
        return unattributed(f"unattributed: {err.detail}")
    except (OSError, LookupError, struct.error) as err:
        if not os.path.exists(f"/proc/{pid}"):
            raise NoSuchProcess(pid) from err
        return unattributed(f"unattributed: {err}")
    return Attribution(pid, owners)


def _owner(mem, space: AddressSpace, tid: int, start: int, arg: int,
           python_name: str | None) -> ThreadOwner:
    library = space.path_at(start)
    method = "pthread start_routine"
    base = os.path.basename(library or "")
    if base.startswith("libstdc++") and arg:
        # std::thread: the argument is the thread's _State object; its vtable
        # lives in the library whose code created the thread.
        try:
            creator = space.path_at(mem.u64(arg))
        except OSError:
            creator = None
        if creator:
            library, method = creator, "std::thread state vtable"
    pool = pool_of_library(library)
    if python_name is not None or pool == PYTHON:
        return ThreadOwner(tid, PYTHON, library, method + " (Python threading)", python_name)
    return ThreadOwner(tid, pool, library, method)
