"""The shared libraries a process has loaded, in the dynamic linker's order.

In this process: ``dl_iterate_phdr`` (as threadpoolctl does). In another:
the ``r_debug``/``link_map`` chain read through ``/proc/PID/mem``, found from
the auxiliary vector and the program's ``DT_DEBUG``. Both are the linker's
own list, so the order is load order. ``/proc/PID/maps`` is only a fallback:
its order is by address, which is not load order, and the result says so.
"""

from __future__ import annotations

import bisect
import ctypes
import os
import struct
import sys
from dataclasses import dataclass

from . import _procmem
from ._errors import AccessDenied, NoSuchProcess

ORDER_DL_ITERATE = "dl_iterate_phdr"
ORDER_LINK_MAP = "r_debug link_map chain"
ORDER_MAPS = "address order in /proc/PID/maps (not load order)"


@dataclass(frozen=True)
class LoadedLibrary:
    path: str
    index: int  # position in the linker's list (0: the program itself)
    base: int = 0  # load bias (l_addr)
    dynamic: int = 0  # address of its dynamic section (l_ld); 0 when unknown


@dataclass(frozen=True)
class LoadedLibraries:
    pid: int
    libraries: tuple[LoadedLibrary, ...]
    order_source: str
    note: str | None = None  # why a fallback was used


@dataclass(frozen=True)
class Mapping:
    start: int
    end: int
    perms: str
    path: str


def _is_library(name: str) -> bool:
    return name.startswith("/")


# --- in this process -------------------------------------------------------

class _DlPhdrInfo(ctypes.Structure):
    _fields_ = [("dlpi_addr", ctypes.c_size_t), ("dlpi_name", ctypes.c_char_p),
                ("dlpi_phdr", ctypes.c_void_p), ("dlpi_phnum", ctypes.c_uint16),
                ("dlpi_adds", ctypes.c_ulonglong), ("dlpi_subs", ctypes.c_ulonglong)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(_DlPhdrInfo), ctypes.c_size_t,
                             ctypes.c_void_p)
_libc = None


def _dl_iterate_phdr(visit) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None)
    _libc.dl_iterate_phdr(_CALLBACK(lambda info, size, data: visit(info.contents, size) or 0),
                          None)


def _dynamic_of(info: _DlPhdrInfo) -> int:
    for i in range(info.dlpi_phnum):
        p_type, _, _, p_vaddr = struct.unpack(
            "<IIQQ", ctypes.string_at(info.dlpi_phdr + 56 * i, 24))
        if p_type == _procmem.PT_DYNAMIC:
            return info.dlpi_addr + p_vaddr
    return 0


_generation = [0, 0]


def _record_generation(info, size, data):
    contents = info.contents
    _generation[0], _generation[1] = contents.dlpi_adds, contents.dlpi_subs
    return 1  # the counters are the same in every entry: stop at the first


_GENERATION_CALLBACK = _CALLBACK(_record_generation)


def linker_generation() -> tuple[int, int]:
    """``(adds, subs)``: the linker's load/unload counters, to rescan only on change."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None)
    _libc.dl_iterate_phdr(_GENERATION_CALLBACK, None)
    return _generation[0], _generation[1]


def _self_libraries() -> tuple[LoadedLibrary, ...]:
    found: list[LoadedLibrary] = []

    def visit(info, size):
        name = os.fsdecode(info.dlpi_name or b"")
        if not found and not name:
            name = os.path.realpath("/proc/self/exe")
        if _is_library(name):
            found.append(LoadedLibrary(os.path.normpath(name), len(found), info.dlpi_addr,
                                       _dynamic_of(info)))
        return 0

    _dl_iterate_phdr(visit)
    return tuple(found)


# --- in another process ----------------------------------------------------

def _link_map_libraries(pid: int) -> tuple[LoadedLibrary, ...]:
    with _procmem.ProcessMemory(pid) as mem:
        auxv = _procmem.read_auxv(pid)
        r_debug = _procmem.r_debug_address(mem, auxv)
        found = []
        for l_addr, name, l_ld in _procmem.link_map_chain(mem, r_debug):
            if not found and not name:
                name = os.readlink(f"/proc/{pid}/exe")
            if _is_library(name):
                found.append(LoadedLibrary(os.path.normpath(name), len(found), l_addr, l_ld))
        return tuple(found)


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
                return LoadedLibraries(os.getpid(), _self_libraries(), ORDER_DL_ITERATE)
            except (OSError, AttributeError) as err:
                note = f"dl_iterate_phdr unavailable ({err})"
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
