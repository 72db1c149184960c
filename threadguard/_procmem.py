"""Reading a live process's memory: the dynamic linker's structures and symbols.

Everything goes through ``/proc/PID/mem`` (``pread`` at virtual addresses), so
one code path serves this process and others, and nothing is loaded, stopped
or injected. Only 64-bit little-endian ELF (x86_64, aarch64) is handled;
callers fall back with a note elsewhere.
"""

from __future__ import annotations

import os
import struct
import sys

from ._errors import AccessDenied, NoSuchProcess

AT_PHDR, AT_PHNUM, AT_BASE = 3, 5, 7
PT_DYNAMIC, PT_PHDR = 2, 6
DT_NULL, DT_HASH, DT_STRTAB, DT_SYMTAB, DT_DEBUG = 0, 4, 5, 6, 21
DT_GNU_HASH = 0x6FFFFEF5

SUPPORTED = sys.byteorder == "little" and struct.calcsize("P") == 8


class ProcessMemory:
    """Random access to another (or this) process's address space."""

    def __init__(self, pid: int):
        self.pid = pid
        try:
            self._fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
        except FileNotFoundError as err:
            raise NoSuchProcess(pid) from err
        except PermissionError as err:
            raise AccessDenied(pid, "/proc/PID/mem needs ptrace permission "
                                    "(same user and kernel.yama.ptrace_scope, or root)") from err

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def read(self, addr: int, size: int) -> bytes:
        data = os.pread(self._fd, size, addr)
        if len(data) != size:
            raise OSError(f"short read at {addr:#x}")
        return data

    def u64(self, addr: int) -> int:
        return struct.unpack("<Q", self.read(addr, 8))[0]

    def u32(self, addr: int) -> int:
        return struct.unpack("<I", self.read(addr, 4))[0]

    def cstring(self, addr: int, limit: int = 4096) -> str:
        out = b""
        while len(out) < limit:
            chunk = os.pread(self._fd, 256, addr + len(out))
            if not chunk:
                break
            end = chunk.find(b"\0")
            if end >= 0:
                out += chunk[:end]
                break
            out += chunk
        return out.decode("utf-8", "surrogateescape")


def read_auxv(pid: int) -> dict[int, int]:
    with open(f"/proc/{pid}/auxv", "rb") as f:
        data = f.read()
    pairs = struct.iter_unpack("<QQ", data[: len(data) // 16 * 16])
    return {k: v for k, v in pairs if k}


def dynamic_entries(mem: ProcessMemory, dyn_addr: int, limit: int = 512):
    """``(tag, value)`` of an ELF dynamic section in memory, up to DT_NULL."""
    for i in range(limit):
        tag, value = struct.unpack("<qQ", mem.read(dyn_addr + 16 * i, 16))
        if tag == DT_NULL:
            return
        yield tag, value


def r_debug_address(mem: ProcessMemory, auxv: dict[int, int]) -> int:
    """The dynamic linker's ``r_debug``, from the program's ``DT_DEBUG``.

    The program headers are found through the auxiliary vector (``AT_PHDR``);
    ``PT_PHDR`` gives the load bias of a PIE program.
    """
    phdr, phnum = auxv[AT_PHDR], auxv[AT_PHNUM]
    bias = 0
    dynamic = None
    for i in range(phnum):
        p_type, _, _, p_vaddr = struct.unpack("<IIQQ", mem.read(phdr + 56 * i, 24))
        if p_type == PT_PHDR:
            bias = phdr - p_vaddr
        elif p_type == PT_DYNAMIC:
            dynamic = p_vaddr
    if dynamic is None:
        raise LookupError("the program has no PT_DYNAMIC (statically linked)")
    for tag, value in dynamic_entries(mem, bias + dynamic):
        if tag == DT_DEBUG:
            if not value:
                raise LookupError("DT_DEBUG is not filled in yet")
            return value
    raise LookupError("the program has no DT_DEBUG entry")


def link_map_chain(mem: ProcessMemory, r_debug: int, limit: int = 4096):
    """``(node, l_addr, l_name, l_ld)`` of each loaded object, in load order
    (``node``: the address of its ``link_map``). At most ``limit`` entries, so
    a torn read cannot loop forever."""
    node = mem.u64(r_debug + 8)  # r_map, after int r_version (padded)
    seen = 0
    while node and seen < limit:
        l_addr, l_name, l_ld, l_next = struct.unpack("<QQQQ", mem.read(node, 32))
        name = mem.cstring(l_name) if l_name else ""
        yield node, l_addr, name, l_ld
        node = l_next
        seen += 1


def _gnu_hash(name: bytes) -> int:
    h = 5381
    for c in name:
        h = (h * 33 + c) & 0xFFFFFFFF
    return h


class SymbolTable:
    """Looks symbols up in one loaded object's dynamic symbol table, in memory."""

    def __init__(self, mem: ProcessMemory, l_addr: int, l_ld: int):
        self.mem, self.l_addr = mem, l_addr
        info = dict(dynamic_entries(mem, l_ld))

        def addr(tag):
            value = info.get(tag)
            if value is None:
                return None
            # ld.so relocates these in place on most architectures; not all.
            return value if value >= l_addr else value + l_addr

        self.symtab, self.strtab = addr(DT_SYMTAB), addr(DT_STRTAB)
        self.gnu_hash, self.hash = addr(DT_GNU_HASH), addr(DT_HASH)
        if self.symtab is None or self.strtab is None:
            raise LookupError("no dynamic symbol table")

    def _sym(self, index: int) -> tuple[str, int]:
        st_name, _, _, _, st_value, _ = struct.unpack(
            "<IBBHQQ", self.mem.read(self.symtab + 24 * index, 24))
        return self.mem.cstring(self.strtab + st_name, 256), st_value

    def lookup(self, name: str) -> int | None:
        """The symbol's run-time address, or None."""
        if self.gnu_hash is not None:
            return self._lookup_gnu(name)
        if self.hash is not None:
            nchain = self.mem.u32(self.hash + 4)
            for i in range(1, nchain):
                sym, value = self._sym(i)
                if sym == name and value:
                    return self.l_addr + value
        return None

    def _lookup_gnu(self, name: str) -> int | None:
        mem, base = self.mem, self.gnu_hash
        nbuckets, symoffset, bloom_size, _ = struct.unpack("<IIII", mem.read(base, 16))
        buckets = base + 16 + 8 * bloom_size
        chains = buckets + 4 * nbuckets
        h = _gnu_hash(name.encode())
        index = mem.u32(buckets + 4 * (h % nbuckets))
        if index < symoffset:
            return None
        while True:
            chain_hash = mem.u32(chains + 4 * (index - symoffset))
            if (chain_hash | 1) == (h | 1):
                sym, value = self._sym(index)
                if sym == name and value:
                    return self.l_addr + value
            if chain_hash & 1:
                return None
            index += 1
