"""The filesystem root every machine fact is read from, and tolerant readers.

Like hwloc's ``HWLOC_FSROOT``: pointing ``THREADGUARD_FSROOT`` (or passing
``fsroot=``) at a dumped ``/sys`` + ``/proc`` tree makes every reader use it,
so multi-socket, NUMA, cgroup and hybrid machines are tested on any machine.
A root other than ``/`` means "not this system": nothing live is consulted
(no ``sched_getaffinity``) and nothing is ever changed through it.
"""

from __future__ import annotations

import os
import stat
from typing import NamedTuple

from ._errors import BadMachineFacts

ENV_VAR = "THREADGUARD_FSROOT"
MAX_FILE = 16 << 20  # bytes read from one file: /proc/cpuinfo of 1,000 CPUs is ~1.5 MiB
MAX_CPU = 1 << 16  # highest CPU (or NUMA node) number believed: Linux's NR_CPUS is at most 8192


class FsRoot(NamedTuple):
    """A root directory under which ``/proc`` and ``/sys`` are read."""

    root: str = "/"

    @classmethod
    def resolve(cls, fsroot: "str | os.PathLike[str] | FsRoot | None" = None) -> "FsRoot":
        """The explicit argument, else ``$THREADGUARD_FSROOT``, else ``/``."""
        if isinstance(fsroot, FsRoot):
            return fsroot
        source = "fsroot"
        if fsroot is None:
            fsroot, source = os.environ.get(ENV_VAR) or "/", ENV_VAR
        root = os.path.abspath(os.fspath(fsroot))
        if root != "/" and not os.path.isdir(root):
            raise BadMachineFacts(f"{source}={os.fspath(fsroot)!r}: no such directory")
        return cls(root)

    @property
    def is_live(self) -> bool:
        """True when the root is this machine's own ``/``."""
        return self.root == "/"

    def path(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def read(self, path: str) -> str:
        """The file's text; raises ``OSError`` when it cannot be read, and
        BadMachineFacts when it is not a regular file (a FIFO would block, a
        link to /dev/zero never end) or is larger than any real one."""
        full = self.path(path)
        fd = os.open(full, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise BadMachineFacts(f"{full}: not a regular file")
            data = f.read(MAX_FILE + 1)
        if len(data) > MAX_FILE:
            raise BadMachineFacts(f"{full}: larger than {MAX_FILE >> 20} MiB")
        return data.decode("utf-8", errors="replace")

    def try_read(self, path: str) -> str | None:
        """The file's stripped text, or None when absent or unreadable."""
        try:
            return self.read(path).replace("\x00", "").strip()
        except (OSError, ValueError):
            return None

    def try_cpulist(self, path: str, mask: bool = False) -> tuple[int, ...] | None:
        """The CPU list (or hex mask) in a file; None when absent or empty.
        A file that holds something else is an error naming the file."""
        text = self.try_read(path)
        return self.cpulist_in(path, text, mask) if text else None

    def cpulist_in(self, path: str, text: str, mask: bool = False) -> tuple[int, ...]:
        """``text``, read from ``path``, as a CPU list (or hex mask); an error
        naming the file when it is something else."""
        try:
            return parse_cpumask(text) if mask else parse_cpulist(text)
        except ValueError as err:
            raise BadMachineFacts(f"{self.path(path)}: {err}") from None

    def try_int(self, path: str) -> int | None:
        text = self.try_read(path)
        if text is None:
            return None
        try:
            return int(text.split()[0])
        except (ValueError, IndexError):
            return None

    def exists(self, path: str) -> bool:
        return os.path.exists(self.path(path))

    def isdir(self, path: str) -> bool:
        return os.path.isdir(self.path(path))

    def listdir(self, path: str) -> list[str]:
        try:
            return os.listdir(self.path(path))
        except OSError:
            return []


def parse_cpulist(text: str | None) -> tuple[int, ...]:
    """``"0-3,8,10-11"`` -> ``(0, 1, 2, 3, 8, 10, 11)``; empty for ``""``/None.

    Also accepts the stride form ``"0-15:2"`` that the kernel accepts.
    """
    if not text:
        return ()
    cpus: set[int] = set()
    for part in text.replace("\x00", "").strip().split(","):
        part = part.strip()
        if not part:
            continue
        try:
            stride = 1
            span = part
            if ":" in span:
                span, stride_text = span.split(":", 1)
                stride = parse_number(stride_text.split("/")[0])
            if "-" in span:
                lo, hi = (parse_number(x) for x in span.split("-", 1))
                if hi < lo:
                    raise ValueError
                cpus.update(range(lo, hi + 1, max(stride, 1)))
            else:
                cpus.add(parse_number(span))
        except ValueError:
            raise ValueError(f"not a CPU list: {shown(text)}") from None
    return tuple(sorted(cpus))


def parse_number(text: str) -> int:
    """A CPU number as the kernel writes it: ASCII digits, at most MAX_CPU."""
    text = text.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 6 or int(text) > MAX_CPU:
        raise ValueError(text)
    return int(text)


def shown(text: str) -> str:
    """Untrusted text for a one-line message: quoted, escaped, cut short."""
    return repr(text[:60] + ("..." if len(text) > 60 else ""))


def parse_cpumask(text: str | None) -> tuple[int, ...]:
    """A sysfs hex mask ``"00000000,00000101"`` -> ``(0, 8)``."""
    if not text:
        return ()
    digits = text.strip().replace(",", "")
    if not all(c in "0123456789abcdefABCDEF" for c in digits) or len(digits) > MAX_CPU // 4:
        raise ValueError(f"not a CPU mask: {shown(text)}")
    value = int(digits or "0", 16)
    cpus = []
    bit = 0
    while value:
        if value & 1:
            cpus.append(bit)
        value >>= 1
        bit += 1
    return tuple(cpus)


def format_cpulist(cpus) -> str:
    """``(0, 1, 2, 3, 8)`` -> ``"0-3,8"`` (the kernel's own notation)."""
    cpus = sorted(set(cpus))
    if not cpus:
        return ""
    ranges = []
    start = prev = cpus[0]
    for cpu in cpus[1:]:
        if cpu == prev + 1:
            prev = cpu
            continue
        ranges.append((start, prev))
        start = prev = cpu
    ranges.append((start, prev))
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in ranges)
