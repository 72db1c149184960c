"""The shared libraries a process has loaded, in the dynamic linker's order.

In this process and in another: the ``r_debug``/``link_map`` chain read
through ``/proc/PID/mem``, found from the auxiliary vector and the program's
``DT_DEBUG``. It is the linker's own list, so the order is load order, and
reading it runs no Python code under the loader's lock. ``/proc/PID/maps`` is only a fallback:
its order is by address, which is not load order, and the result says so.
"""

from __future__ import annotations

import bisect
import ctypes
import functools
import os
import struct
import sys
from typing import NamedTuple

from . import _procmem
from ._errors import AccessDenied, NoSuchProcess

ORDER_SELF = "r_debug link_map chain (this process)"
ORDER_LINK_MAP = "r_debug link_map chain"
ORDER_MAPS = "address order in /proc/PID/maps (not load order)"


class LoadedLibrary(NamedTuple):
    path: str
    index: int  # position in the linker's list (0: the program itself)
    base: int = 0  # load bias (l_addr)
    dynamic: int = 0  # address of its dynamic section (l_ld); 0 when unknown


class LoadedLibraries(NamedTuple):
    pid: int
    libraries: tuple[LoadedLibrary, ...]
    order_source: str
    note: str | None = None  # why a fallback was used


class Mapping(NamedTuple):
    start: int
    end: int
    perms: str
    path: str


def _is_library(name: str) -> bool:
    return name.startswith("/")


# --- in this process -------------------------------------------------------
#
# No ``dl_iterate_phdr`` with a Python callback: the callback would run with
# the loader's lock held and need the GIL, while a thread importing an
# extension module holds the GIL and waits for that lock (a deadlock). The
# linker's own list is read instead, through ``/proc/self/mem`` (a read of
# freed memory during a concurrent ``dlclose`` returns junk, never a crash),
# and retried until ``r_debug.r_state`` says it was consistent throughout.

RT_CONSISTENT = 0


class _SelfLinkMap:
    """This process's ``r_debug`` and an open ``/proc/self/mem``, per pid
    (after ``fork`` the descriptor would read the parent's memory)."""

    def __init__(self):
        self.pid = -1
        self.mem = None
        self.r_debug = 0
        self.tail = 0  # address of the last link_map seen
        self.next_ptr = None  # the last node's l_next, read in place
        self.held = None  # the last library, held open (its node stays valid)

    def ready(self) -> "_SelfLinkMap":
        pid = os.getpid()
        if self.pid != pid:
            mem = _procmem.ProcessMemory(pid)
            try:
                r_debug = _procmem.r_debug_address(mem, _procmem.read_auxv(pid))
            except BaseException:
                mem.close()
                raise
            if self.mem is not None and self.pid > 0:
                try:
                    self.mem.close()
                except OSError:
                    pass
            self.mem, self.r_debug, self.pid, self.tail = mem, r_debug, pid, 0
            self.next_ptr = None
        return self

    def read(self) -> tuple[LoadedLibrary, ...]:
        mem = self.mem
        for _ in range(100):
            state = mem.u32(self.r_debug + 24)  # r_state, after r_version, r_map, r_brk
            found, last, last_name = _libraries_of(
                _procmem.link_map_chain(mem, self.r_debug),
                lambda: os.path.realpath("/proc/self/exe"))
            if state == RT_CONSISTENT and mem.u32(self.r_debug + 24) == RT_CONSISTENT:
                if last != self.tail:
                    self.tail = last
                    self._hold_tail(last_name if _is_library(last_name or "") else None)
                return found
        raise OSError("the dynamic linker's list kept changing while read")

    def generation(self):
        """A token that changes when a library is loaded: the ``l_next`` of
        the last node of the list (a new library is linked after it). The
        last library is held open (``RTLD_NOLOAD``), so it cannot be unloaded
        and its node is read directly; one that cannot be held (a relative
        name) is read with one ``pread``."""
        if not self.tail:
            self.read()
        tail, ptr = self.tail, self.next_ptr
        if ptr is not None:
            return tail, ptr.value
        return tail, self.mem.read(tail, 40) if tail else b""

    def _hold_tail(self, path: str | None) -> None:
        self.next_ptr = None
        # Libraries held before stay held (never closed): another thread may
        # be reading the node a previous pointer points into.
        if path and self.tail:
            try:
                held = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
            except OSError:
                held = None
            # glibc's handle is the library's link_map: only that very node is held.
            if held is not None and held._handle == self.tail:
                self.held = held
                self.next_ptr = ctypes.c_void_p.from_address(self.tail + 24)  # l_next


_self_map = _SelfLinkMap()


def _c_realpath():
    """libc's realpath(3): one call, where ``os.path.realpath`` lstat()s
    every component from Python (~100 us a library)."""
    try:
        libc = ctypes.CDLL(None)
        realpath, free = libc.realpath, libc.free
    except (OSError, AttributeError):
        return None
    realpath.argtypes, realpath.restype = (ctypes.c_char_p, ctypes.c_void_p), ctypes.c_void_p
    free.argtypes, free.restype = (ctypes.c_void_p,), None
    return realpath, free


_C_REALPATH = _c_realpath() if os.name == "posix" else None


@functools.lru_cache(maxsize=4096)
def real_path(path: str) -> str:
    """``os.path.realpath``, remembered (a loaded library's file does not
    move, and every scan resolves each of them)."""
    if _C_REALPATH is not None and "\0" not in path:
        realpath, free = _C_REALPATH
        found = realpath(os.fsencode(path), None)
        if found:
            try:
                return os.fsdecode(ctypes.string_at(found))
            finally:
                free(found)
    return os.path.realpath(path)  # gone, or no libc: the same answer from Python


_IN_MEMORY = _procmem.SUPPORTED and sys.platform.startswith("linux")


def linker_generation():
    """A token that changes when this process loads a library; cheap (no
    system call once the last library is held), and it never takes the
    loader's lock."""
    m = _self_map
    ptr = m.next_ptr  # read once: another thread may replace it
    if ptr is not None:  # still right after fork: the child's copy, at the same address
        return ptr, ptr.value
    if _IN_MEMORY:
        try:
            return m.ready().generation()
        except (OSError, LookupError, NoSuchProcess, AccessDenied, struct.error):
            pass
    return ("modules", len(sys.modules))  # no /proc/self/mem: imports stand in


def _self_libraries() -> tuple[LoadedLibrary, ...]:
    return _self_map.ready().read()


# --- in another process ----------------------------------------------------

def _link_map_libraries(pid: int) -> tuple[LoadedLibrary, ...]:
    with _procmem.ProcessMemory(pid) as mem:
        auxv = _procmem.read_auxv(pid)
        r_debug = _procmem.r_debug_address(mem, auxv)
        return _libraries_of(_procmem.link_map_chain(mem, r_debug),
                             lambda: os.readlink(f"/proc/{pid}/exe"))[0]


def _libraries_of(chain, program) -> tuple[tuple[LoadedLibrary, ...], int, str | None]:
    """The libraries of a ``link_map`` chain (the program's own entry has no
    name: ``program()`` gives it), with the last node's address and name."""
    found: list[LoadedLibrary] = []
    last, last_name = 0, None
    for node, l_addr, name, l_ld in chain:
        if not found and not name:
            name = program()
        if _is_library(name):
            found.append(LoadedLibrary(os.path.normpath(name), len(found), l_addr, l_ld))
        last, last_name = node, name
    return tuple(found), last, last_name


def read_maps(pid: int | str) -> list[Mapping]:
    try:
        with open(f"/proc/{pid}/maps") as f:
            text = f.read()
    except FileNotFoundError as err:
        raise NoSuchProcess(int(pid) if str(pid).isdigit() else os.getpid()) from err
    except PermissionError as err:
        raise AccessDenied(int(pid), "cannot read /proc/PID/maps") from err
    out = []
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 6 or not parts[5].startswith("/"):
            continue
        lo, hi = parts[0].split("-")
        path = parts[5]
        if path.endswith(" (deleted)"):
            path = path[: -len(" (deleted)")]
        out.append(Mapping(int(lo, 16), int(hi, 16), parts[1], path))
    return out


def _maps_libraries(pid: int) -> tuple[LoadedLibrary, ...]:
    seen: dict[str, LoadedLibrary] = {}
    exe = None
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        pass
    for m in read_maps(pid):
        if m.path in seen or not (".so" in os.path.basename(m.path) or m.path == exe):
            continue
        seen[m.path] = LoadedLibrary(m.path, len(seen), m.start, 0)
    return tuple(seen.values())


def loaded_libraries(pid: int | None = None) -> LoadedLibraries:
    """The libraries ``pid`` (default: this process) has loaded, in load order."""
    if pid is None or pid == os.getpid():
        if sys.platform.startswith("linux"):
            try:
                return LoadedLibraries(os.getpid(), _self_libraries(), ORDER_SELF)
            except (OSError, LookupError, NoSuchProcess, AccessDenied, struct.error) as err:
                note = f"the linker's list is unreadable ({err})"
                return LoadedLibraries(os.getpid(), _maps_libraries(os.getpid()), ORDER_MAPS, note)
        pid = os.getpid()
    if not os.path.exists(f"/proc/{pid}"):
        raise NoSuchProcess(pid)
    note = None
    if _procmem.SUPPORTED:
        try:
            return LoadedLibraries(pid, _link_map_libraries(pid), ORDER_LINK_MAP)
        except AccessDenied as err:
            note = f"the linker's list is unreadable: {err.detail}"
        except (OSError, LookupError, KeyError, struct.error) as err:
            if not os.path.exists(f"/proc/{pid}"):
                raise NoSuchProcess(pid) from err
            note = f"the linker's list is unreadable: {err}"
    else:
        note = "the linker's list is read only on 64-bit little-endian Linux"
    try:
        return LoadedLibraries(pid, _maps_libraries(pid), ORDER_MAPS, note)
    except AccessDenied as err:
        return LoadedLibraries(pid, (), ORDER_MAPS, f"{note}; {err.detail}: libraries unknown")


class AddressSpace:
    """Which mapped file holds an address (for start routines and vtables)."""

    def __init__(self, maps: list[Mapping]):
        self._maps = sorted(maps, key=lambda m: m.start)
        self._starts = [m.start for m in self._maps]

    def path_at(self, addr: int) -> str | None:
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0 and self._maps[i].start <= addr < self._maps[i].end:
            return self._maps[i].path
        return None
