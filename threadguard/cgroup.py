"""cgroup v1/v2 CPU limits of a process: quota, cpuset and throttling.

The process's cgroup comes from ``/proc/PID/cgroup`` (``/proc/PID/cpuset``
on old cpuset-only systems), the mount points from ``/proc/PID/mountinfo``
(``/proc/mounts`` in dumped trees). Every ancestor up to the mount point is
read: the tightest quota wins (nested containers, Kubernetes pods).
Parsers are pure functions over strings; ``read_limits`` is the one reader.
"""

from __future__ import annotations

import math
import posixpath
from typing import NamedTuple

from ._fs import FsRoot


class Mount(NamedTuple):
    root: str  # the part of the hierarchy mounted here ("/" when unknown)
    mountpoint: str
    fstype: str
    options: frozenset[str]


class CpuStat(NamedTuple):
    """Throttling counters of one cgroup (``cpu.stat``)."""

    nr_periods: int
    nr_throttled: int
    throttled_seconds: float


class CgroupLimits(NamedTuple):
    """What the cgroups allow a process, each value with where it came from."""

    version: int | None = None  # 1, 2, or None when no cgroup was readable
    path: str | None = None  # the process's cgroup (cpu controller)
    cpu_quota: float | None = None  # CPUs' worth of time per period; None: no limit
    quota_source: str | None = None  # the file that set the tightest quota
    cpuset_cpus: tuple[int, ...] | None = None
    cpuset_mems: tuple[int, ...] | None = None
    cpuset_source: str | None = None
    cpu_stat_file: str | None = None  # throttling counters of the quota's cgroup
    notes: tuple[str, ...] = ()


def parse_proc_cgroup(text: str) -> list[tuple[int, tuple[str, ...], str]]:
    """``/proc/PID/cgroup`` -> ``[(hierarchy_id, controllers, path)]``."""
    entries = []
    for line in text.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        hid, controllers, path = parts
        try:
            hid_num = int(hid)
        except ValueError:
            continue
        entries.append((hid_num, tuple(c for c in controllers.split(",") if c), path))
    return entries


def _unescape(text: str) -> str:
    # /proc/*/mount* escape space, tab, newline and backslash as octal.
    return (text.replace("\\040", " ").replace("\\011", "\t")
            .replace("\\012", "\n").replace("\\134", "\\"))


def parse_mountinfo(text: str) -> list[Mount]:
    """``/proc/PID/mountinfo`` lines -> mounts (root of the mount included)."""
    mounts = []
    for line in text.splitlines():
        if " - " not in line:
            continue
        left, right = line.split(" - ", 1)
        lf, rf = left.split(), right.split()
        if len(lf) < 5 or len(rf) < 1:
            continue
        opts = set(lf[5].split(",")) if len(lf) > 5 else set()
        if len(rf) > 2:
            opts |= set(rf[2].split(","))
        mounts.append(Mount(_unescape(lf[3]), _unescape(lf[4]), rf[0], frozenset(opts)))
    return mounts


def parse_mounts(text: str) -> list[Mount]:
    """``/proc/mounts`` lines -> mounts (the mounted root is unknown: ``/``)."""
    mounts = []
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 4:
            mounts.append(Mount("/", _unescape(f[1]), f[2], frozenset(f[3].split(","))))
    return mounts


def parse_cpu_max(text: str) -> tuple[int | None, int]:
    """v2 ``cpu.max`` ``"200000 100000"`` -> ``(200000, 100000)``; ``max`` -> None."""
    parts = text.split()
    quota = None if parts[0] == "max" else int(parts[0])
    period = int(parts[1]) if len(parts) > 1 else 100000
    return quota, period


def quota_cpus(quota_us: int | None, period_us: int | None) -> float | None:
    """A quota/period pair as CPUs (``150000/100000`` -> 1.5); None when unlimited."""
    if quota_us is None or quota_us < 0 or not period_us or period_us <= 0:
        return None
    try:
        return quota_us / period_us
    except OverflowError:  # beyond any machine: no limit
        return None


def quota_budget(quota: float | None, allowed: int) -> int:
    """CPUs that pools should be sized to: the quota rounded up, as GNU nproc,
    never more than the allowed CPUs and never 0."""
    if quota is None:
        return max(allowed, 1)
    return max(1, min(allowed, math.ceil(quota - 1e-9)))


def parse_cpu_stat(text: str) -> CpuStat:
    """``cpu.stat``: v1 ``throttled_time`` is in ns, v2 ``throttled_usec`` in us."""
    values = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            values[parts[0]] = int(parts[1])
    if "throttled_usec" in values:
        seconds = values["throttled_usec"] / 1e6
    else:
        seconds = values.get("throttled_time", 0) / 1e9
    return CpuStat(values.get("nr_periods", 0), values.get("nr_throttled", 0), seconds)


def _ancestors(directory: str, stop: str) -> list[str]:
    """``directory`` and its parents up to and including ``stop``."""
    dirs = [directory]
    while directory != stop and directory not in ("/", ""):
        directory = posixpath.dirname(directory)
        dirs.append(directory)
    return dirs


def _cgroup_dir(fs: FsRoot, mount: Mount, path: str) -> tuple[str, str | None]:
    """Where a cgroup path lives under its mount; a note when it had to guess."""
    rel = path
    if mount.root != "/" and (path == mount.root or path.startswith(mount.root + "/")):
        rel = path[len(mount.root):] or "/"
    directory = posixpath.normpath(posixpath.join(mount.mountpoint, rel.lstrip("/")))
    if fs.isdir(directory):
        return directory, None
    return mount.mountpoint, (
        f"cgroup directory {directory} not found (cgroup namespace?); "
        f"read {mount.mountpoint} instead")


def read_limits(fs: FsRoot, pid: int | str = "self") -> CgroupLimits:
    """The quota, cpuset and throttling file of a process's cgroups."""
    notes: list[str] = []
    cgroup_text = fs.try_read(f"/proc/{pid}/cgroup")
    mountinfo = fs.try_read(f"/proc/{pid}/mountinfo")
    if mountinfo:
        mounts = parse_mountinfo(mountinfo)
    else:
        mounts_text = fs.try_read("/proc/mounts") or ""
        mounts = parse_mounts(mounts_text)
    if not mounts:
        return CgroupLimits(notes=("no mount table readable: cgroup limits unknown",))

    entries = parse_proc_cgroup(cgroup_text) if cgroup_text else []
    v2_path = next((p for hid, c, p in entries if hid == 0 and not c), None)
    v1_paths = {c: p for hid, cs, p in entries if hid != 0 for c in cs}
    if not entries:
        legacy = fs.try_read(f"/proc/{pid}/cpuset")
        if legacy:
            v2_path = legacy
            v1_paths = {"cpuset": legacy, "cpu": legacy}
        else:
            notes.append(f"/proc/{pid}/cgroup unreadable: cgroup limits unknown")

    v2_mount = next((m for m in mounts if m.fstype == "cgroup2"), None)
    v2_controllers = set()
    if v2_mount is not None:
        text = fs.try_read(posixpath.join(v2_mount.mountpoint, "cgroup.controllers"))
        v2_controllers = set(text.split()) if text is not None else {"cpu", "cpuset"}

    def v1_mount(controller: str) -> Mount | None:
        for m in mounts:
            if m.fstype == "cgroup" and controller in m.options:
                return m
        if controller == "cpuset":
            return next((m for m in mounts if m.fstype == "cpuset"), None)
        return None

    version = None
    path = None
    quota = None
    quota_source = None
    stat_file = None

    # CPU quota: v2 cpu.max or v1 cfs_quota_us, tightest ancestor wins.
    cpu_v1 = v1_mount("cpu")
    if v2_mount is not None and v2_path is not None and "cpu" in v2_controllers:
        version, path = 2, v2_path
        leaf, note = _cgroup_dir(fs, v2_mount, v2_path)
        if note:
            notes.append(note)
        stat_file = posixpath.join(leaf, "cpu.stat")
        for d in _ancestors(leaf, v2_mount.mountpoint):
            text = fs.try_read(posixpath.join(d, "cpu.max"))
            if not text:
                continue
            try:
                q = quota_cpus(*parse_cpu_max(text))
            except (ValueError, IndexError):
                notes.append(f"unparsable {d}/cpu.max: {text!r}")
                continue
            if q is not None and (quota is None or q < quota):
                quota, quota_source, stat_file = q, posixpath.join(d, "cpu.max"), posixpath.join(d, "cpu.stat")
    elif cpu_v1 is not None and "cpu" in v1_paths:
        version, path = 1, v1_paths["cpu"]
        leaf, note = _cgroup_dir(fs, cpu_v1, v1_paths["cpu"])
        if note:
            notes.append(note)
        stat_file = posixpath.join(leaf, "cpu.stat")
        for d in _ancestors(leaf, cpu_v1.mountpoint):
            q_us = fs.try_int(posixpath.join(d, "cpu.cfs_quota_us"))
            p_us = fs.try_int(posixpath.join(d, "cpu.cfs_period_us"))
            q = quota_cpus(q_us, p_us)
            if q is not None and (quota is None or q < quota):
                quota = q
                quota_source = posixpath.join(d, "cpu.cfs_quota_us")
                stat_file = posixpath.join(d, "cpu.stat")
    elif entries or v2_path:
        notes.append("no cgroup cpu controller mounted: CPU quota unknown")

    if stat_file is not None and not fs.exists(stat_file):
        stat_file = None

    # cpuset: v2 cpuset.cpus.effective, v1 cpuset.effective_cpus / cpuset.cpus / cpus.
    cpus = mems = None
    cpuset_source = None
    cs_v1 = v1_mount("cpuset")
    if v2_mount is not None and v2_path is not None and "cpuset" in v2_controllers:
        leaf, _ = _cgroup_dir(fs, v2_mount, v2_path)
        for d in _ancestors(leaf, v2_mount.mountpoint):
            listed = fs.try_cpulist(posixpath.join(d, "cpuset.cpus.effective"))
            if listed:
                cpus = listed
                cpuset_source = posixpath.join(d, "cpuset.cpus.effective")
                mems = fs.try_cpulist(posixpath.join(d, "cpuset.mems.effective"))
                break
        version = version or 2
    elif cs_v1 is not None and "cpuset" in v1_paths:
        leaf, note = _cgroup_dir(fs, cs_v1, v1_paths["cpuset"])
        if note:
            notes.append(note)
        for d in _ancestors(leaf, cs_v1.mountpoint):
            # As hwloc: v1's configured set first (live processes are also
            # bounded by their affinity, which the kernel keeps inside it).
            for cpus_name, mems_name in (("cpuset.cpus", "cpuset.mems"), ("cpus", "mems"),
                                         ("cpuset.effective_cpus", "cpuset.effective_mems")):
                listed = fs.try_cpulist(posixpath.join(d, cpus_name))
                if listed:
                    cpus = listed
                    cpuset_source = posixpath.join(d, cpus_name)
                    mems = fs.try_cpulist(posixpath.join(d, mems_name))
                    break
            if cpus is not None:
                break
        version = version or 1
    return CgroupLimits(version, path, quota, quota_source, cpus, mems, cpuset_source,
                        stat_file, tuple(notes))
