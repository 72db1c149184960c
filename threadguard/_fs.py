"""The filesystem root every machine fact is read from, and tolerant readers.

Like hwloc's ``HWLOC_FSROOT``: pointing ``THREADGUARD_FSROOT`` (or passing
``fsroot=``) at a dumped ``/sys`` + ``/proc`` tree makes every reader use it,
so multi-socket, NUMA, cgroup and hybrid machines are tested on any machine.
A root other than ``/`` means "not this system": nothing live is consulted
(no ``sched_getaffinity``) and nothing is ever changed through it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

ENV_VAR = "THREADGUARD_FSROOT"


@dataclass(frozen=True)
class FsRoot:
    """A root directory under which ``/proc`` and ``/sys`` are read."""

    root: str = "/"

    @classmethod
    def resolve(cls, fsroot: "str | os.PathLike[str] | FsRoot | None" = None) -> "FsRoot":
        """The explicit argument, else ``$THREADGUARD_FSROOT``, else ``/``."""
        if isinstance(fsroot, FsRoot):
            return fsroot
        if fsroot is None:
            fsroot = os.environ.get(ENV_VAR) or "/"
        root = os.path.abspath(os.fspath(fsroot))
        return cls(root)

    @property
    def is_live(self) -> bool:
        """True when the root is this machine's own ``/``."""
        return self.root == "/"

    def path(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def read(self, path: str) -> str:
        """The file's text; raises ``OSError`` when it cannot be read."""
        with open(self.path(path), encoding="utf-8", errors="replace") as f:
            return f.read()

    def try_read(self, path: str) -> str | None:
        """The file's stripped text, or None when absent or unreadable."""
        try:
            return self.read(path).replace("\x00", "").strip()
        except (OSError, ValueError):
            return None

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
        stride = 1
        if ":" in part:
            part, stride_text = part.split(":", 1)
            stride = int(stride_text.split("/")[0])
        if "-" in part:
            lo, hi = part.split("-", 1)
            cpus.update(range(int(lo), int(hi) + 1, max(stride, 1)))
        else:
            cpus.add(int(part))
    return tuple(sorted(cpus))


def parse_cpumask(text: str | None) -> tuple[int, ...]:
    """A sysfs hex mask ``"00000000,00000101"`` -> ``(0, 8)``."""
    if not text:
        return ()
    value = int(text.strip().replace(",", "") or "0", 16)
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
