"""The machine as pools should see it: CPUs, cores, sockets, NUMA nodes, limits.

Read from Linux sysfs/procfs under a filesystem root (see ``_fs``), so every
fact can come from a dumped tree. ``effective_cpus`` is the number pools
should be sized to: the CPUs the process may run on (affinity intersected
with the cgroup cpuset), capped by the cgroup quota rounded up.
"""

from __future__ import annotations

import os
import re
import sys
from typing import NamedTuple

from . import cgroup
from ._errors import BadMachineFacts, NoSuchProcess
from ._fs import FsRoot, format_cpulist, parse_cpulist, parse_number, shown

SYS_CPU = "/sys/devices/system/cpu"
SYS_NODE = "/sys/devices/system/node"


class Package(NamedTuple):
    id: int
    cpus: tuple[int, ...]


class NumaNode(NamedTuple):
    id: int
    cpus: tuple[int, ...]  # empty for memory-only nodes (GPU, CXL, PMEM)
    distances: tuple[int, ...] | None = None  # to every node, in node-id order


class Core(NamedTuple):
    package: int
    id: int
    cpus: tuple[int, ...]  # the SMT siblings (hardware threads) of this core
    kind: str | None = None  # "performance"/"efficiency" on hybrid CPUs, else None


class Topology(NamedTuple):
    """Machine facts, each limit with the source it came from."""

    online_cpus: tuple[int, ...]
    allowed_cpus: tuple[int, ...]
    allowed_source: str
    effective_cpus: int
    effective_source: str
    cpu_quota: float | None
    quota_source: str | None
    packages: tuple[Package, ...]
    numa_nodes: tuple[NumaNode, ...]
    cores: tuple[Core, ...]
    allowed_numa_nodes: tuple[int, ...] | None = None
    cgroup_version: int | None = None
    cgroup_path: str | None = None
    cpu_stat_file: str | None = None
    fsroot: str = "/"
    os_cpu_count: int | None = None
    notes: tuple[str, ...] = ()

    @property
    def hybrid(self) -> bool:
        return any(c.kind == "efficiency" for c in self.cores)

    @property
    def smt(self) -> bool:
        return any(len(c.cpus) > 1 for c in self.cores)

    def allowed_cores(self) -> tuple[Core, ...]:
        """Cores with at least one allowed CPU, restricted to those CPUs."""
        allowed = set(self.allowed_cpus)
        out = []
        for core in self.cores:
            cpus = tuple(c for c in core.cpus if c in allowed)
            if cpus:
                out.append(Core(core.package, core.id, cpus, core.kind))
        return tuple(out)

    def to_dict(self) -> dict:
        d = self._asdict()
        for key in ("online_cpus", "allowed_cpus", "notes"):
            d[key] = list(d[key])
        d["allowed_numa_nodes"] = (list(self.allowed_numa_nodes)
                                   if self.allowed_numa_nodes is not None else None)
        d["packages"] = [{"id": p.id, "cpus": list(p.cpus)} for p in self.packages]
        d["numa_nodes"] = [{"id": n.id, "cpus": list(n.cpus),
                            "distances": list(n.distances) if n.distances else None}
                           for n in self.numa_nodes]
        d["cores"] = [{"package": c.package, "id": c.id, "cpus": list(c.cpus), "kind": c.kind}
                      for c in self.cores]
        d["allowed_cpulist"] = format_cpulist(self.allowed_cpus)
        d["physical_cores_allowed"] = len(self.allowed_cores())
        return d


def _online_cpus(fs: FsRoot, notes: list[str]) -> tuple[int, ...]:
    listed = fs.try_cpulist(f"{SYS_CPU}/online")
    if listed == ():
        raise BadMachineFacts(f"{fs.path(SYS_CPU + '/online')}: lists no CPU")
    if listed:
        return listed
    cpus = []
    for name in fs.listdir(SYS_CPU):
        m = re.fullmatch(r"cpu(\d+)", name)
        if not m:
            continue
        if fs.try_read(f"{SYS_CPU}/{name}/online") == "0":
            continue
        cpus.append(int(m.group(1)))
    if cpus:
        return tuple(sorted(cpus))
    notes.append(f"{SYS_CPU} unreadable: CPUs taken from os.cpu_count()")
    return tuple(range(os.cpu_count() or 1)) if fs.is_live else (0,)


def _cpu_set(fs: FsRoot, base: str, *names: str) -> tuple[int, ...] | None:
    """The first of ``name_list`` (cpulist) or ``name`` (hex mask) found."""
    for name in names:
        text = fs.try_read(f"{base}/{name}")
        if text is not None:
            return fs.cpulist_in(f"{base}/{name}", text, mask=not name.endswith("list"))
    return None


def _cpuinfo_ids(fs: FsRoot) -> dict[int, tuple[int | None, int | None]]:
    """``processor -> (physical id, core id)`` from /proc/cpuinfo (old kernels)."""
    ids: dict[int, tuple[int | None, int | None]] = {}
    text = fs.try_read("/proc/cpuinfo") or ""
    for block in text.split("\n\n"):
        fields = {}
        for line in block.splitlines():
            if ":" in line:
                k, v = line.split(":", 1)
                fields[k.strip()] = v.strip()
        try:
            cpu = int(fields["processor"])
        except (KeyError, ValueError):
            continue
        pkg = int(fields["physical id"]) if fields.get("physical id", "").isdigit() else None
        core = int(fields["core id"]) if fields.get("core id", "").isdigit() else None
        ids[cpu] = (pkg, core)
    return ids


def _core_kinds(fs: FsRoot, online: tuple[int, ...]) -> dict[int, str]:
    """``cpu -> "performance"|"efficiency"`` on hybrid CPUs, empty otherwise.

    Intel exposes ``/sys/devices/cpu_core`` and ``cpu_atom``; elsewhere the
    kinds come from ``cpu_capacity`` (ARM) or cpufreq base/max frequency.
    Frequencies within 10% are one kind (turbo bins differ per core).
    """
    core = fs.try_cpulist("/sys/devices/cpu_core/cpus")
    atom = fs.try_cpulist("/sys/devices/cpu_atom/cpus")
    if core and atom:
        kinds = {c: "performance" for c in core}
        kinds.update({c: "efficiency" for c in atom})
        return kinds
    for files in (("cpu_capacity",), ("cpufreq/base_frequency",), ("cpufreq/cpuinfo_max_freq",)):
        values = {}
        for cpu in online:
            v = fs.try_int(f"{SYS_CPU}/cpu{cpu}/{files[0]}")
            if v is not None and v > 0:
                values[cpu] = v
        if len(values) != len(online) or not values:
            continue
        top = max(values.values())
        if min(values.values()) >= 0.9 * top:
            return {}
        return {cpu: ("performance" if v >= 0.9 * top else "efficiency")
                for cpu, v in values.items()}
    return {}


def _read_cores(fs: FsRoot, online: tuple[int, ...], notes: list[str]):
    """Packages and cores from ``cpuN/topology`` (or /proc/cpuinfo).

    As hwloc does, a package is the kernel's set of package siblings
    (``package_cpus_list``); ``physical_package_id`` is only its number, which
    some firmware repeats.
    """
    kinds = _core_kinds(fs, online)
    online_set = set(online)
    cpuinfo = None
    pkg_key_of: dict[int, tuple] = {}
    pkg_ids: dict[tuple, int] = {}
    core_groups: dict[tuple, list[int]] = {}  # (sibling set, core_id|None) -> CPUs
    for cpu in online:
        base = f"{SYS_CPU}/cpu{cpu}/topology"
        pkg = fs.try_int(f"{base}/physical_package_id")
        core_id = fs.try_int(f"{base}/core_id")
        siblings = _cpu_set(fs, base, "core_cpus_list", "thread_siblings_list",
                            "core_cpus", "thread_siblings")
        pkg_cpus = _cpu_set(fs, base, "package_cpus_list", "core_siblings_list",
                            "package_cpus", "core_siblings")
        if pkg is None or core_id is None:
            if cpuinfo is None:
                cpuinfo = _cpuinfo_ids(fs)
            info_pkg, info_core = cpuinfo.get(cpu, (None, None))
            pkg = pkg if pkg is not None else info_pkg
            core_id = core_id if core_id is not None else info_core
        if pkg_cpus:
            key: tuple = tuple(c for c in pkg_cpus if c in online_set)
        else:
            key = ("id", pkg)
        pkg_key_of[cpu] = key
        if key not in pkg_ids:
            pkg_ids[key] = pkg if pkg is not None and pkg >= 0 else len(pkg_ids)
        # SMT siblings share a core_id; AMD Bulldozer reports its compute-unit
        # mates as siblings with distinct core_ids: those are cores (as hwloc).
        key_core = (tuple(c for c in (siblings or ()) if c in online_set) or (cpu,),
                    core_id)
        core_groups.setdefault(key_core, []).append(cpu)
    if not fs.isdir(f"{SYS_CPU}/cpu{online[0]}/topology"):
        notes.append("no sysfs CPU topology: one core per CPU assumed")

    cores = [Core(pkg_ids[pkg_key_of[cpus[0]]], core_id if core_id is not None else cpus[0],
                  tuple(cpus), kinds.get(cpus[0]))
             for (_, core_id), cpus in core_groups.items()]
    cores.sort(key=lambda c: c.cpus[0])
    members: dict[tuple, list[int]] = {}
    for cpu in online:
        members.setdefault(pkg_key_of[cpu], []).append(cpu)
    pkgs = sorted((Package(pkg_ids[k], tuple(sorted(c))) for k, c in members.items()),
                  key=lambda p: p.cpus[0])
    return tuple(pkgs), tuple(cores)


def _read_numa(fs: FsRoot, online: tuple[int, ...], notes: list[str]) -> tuple[NumaNode, ...]:
    ids = []
    for name in fs.listdir(SYS_NODE):
        m = re.fullmatch(r"node(\d+)", name)
        if m:
            ids.append(int(m.group(1)))
    if not ids:
        notes.append(f"{SYS_NODE} absent: one NUMA node assumed")
        return (NumaNode(0, online, None),)
    online_set = set(online)
    nodes = []
    for node in sorted(ids):
        base = f"{SYS_NODE}/node{node}"
        cpus = _cpu_set(fs, base, "cpulist", "cpumap") or ()
        dist_text = fs.try_read(f"{base}/distance")
        try:
            distances = (tuple(parse_number(x) for x in dist_text.split()) if dist_text
                         else None)
        except ValueError:
            raise BadMachineFacts(f"{fs.path(base + '/distance')}: not a list of distances: "
                                  f"{shown(dist_text)}") from None
        nodes.append(NumaNode(node, tuple(c for c in cpus if c in online_set), distances))
    seen: set[int] = set()
    for node in nodes:
        if seen & set(node.cpus):
            notes.append("NUMA nodes claim the same CPUs (buggy firmware tables): "
                         "one node assumed, as hwloc does")
            return (NumaNode(nodes[0].id, online, None),)
        seen |= set(node.cpus)
    return tuple(nodes)


def _status_list(fs: FsRoot, pid, key: str) -> tuple[int, ...] | None:
    text = fs.try_read(f"/proc/{pid}/status")
    if not text:
        return None
    for line in text.splitlines():
        if line.startswith(key + ":"):
            try:
                return parse_cpulist(line.split(":", 1)[1].strip())
            except ValueError as err:
                raise BadMachineFacts(f"{fs.path(f'/proc/{pid}/status')}: {key}: {err}") from None
    return None


def python_cpu_count_override() -> str | None:
    """Python 3.13's ``-X cpu_count`` / ``PYTHON_CPU_COUNT``, when set here."""
    xopt = getattr(sys, "_xoptions", {}).get("cpu_count")
    if xopt:
        return f"-X cpu_count={xopt}"
    env = os.environ.get("PYTHON_CPU_COUNT")
    if env and sys.version_info >= (3, 13):
        return f"PYTHON_CPU_COUNT={env}"
    return None


def read_topology(fsroot=None, pid: int | None = None) -> Topology:
    """The machine and the limits of process ``pid`` (default: this one)."""
    fs = FsRoot.resolve(fsroot)
    notes: list[str] = []
    if pid is not None and fs.is_live and not os.path.isdir(f"/proc/{pid}"):
        raise NoSuchProcess(pid)  # its limits would silently be the machine's
    proc = pid if pid is not None else "self"
    online = _online_cpus(fs, notes)
    packages, cores = _read_cores(fs, online, notes)
    nodes = _read_numa(fs, online, notes)

    limits = cgroup.read_limits(fs, proc)
    notes.extend(limits.notes)
    affinity = _status_list(fs, proc, "Cpus_allowed_list")
    allowed = set(online)
    sources = []
    if affinity is not None:
        allowed &= set(affinity)
        sources.append("affinity")
    if limits.cpuset_cpus is not None:
        allowed &= set(limits.cpuset_cpus)
        sources.append(f"cpuset ({limits.cpuset_source})")
    if not allowed:
        notes.append("affinity and cpuset share no online CPU: all online CPUs assumed")
        allowed = set(online)
        sources = []
    allowed_cpus = tuple(sorted(allowed))
    allowed_source = " and ".join(sources) or "online CPUs (no affinity or cpuset known)"

    mems = _status_list(fs, proc, "Mems_allowed_list")
    if limits.cpuset_mems is not None:
        mems = tuple(sorted(set(mems or limits.cpuset_mems) & set(limits.cpuset_mems)))

    effective = cgroup.quota_budget(limits.cpu_quota, len(allowed_cpus))
    if limits.cpu_quota is not None and effective < len(allowed_cpus):
        eff_source = f"cgroup quota {limits.cpu_quota:g} CPUs rounded up ({limits.quota_source})"
    else:
        eff_source = f"allowed CPUs ({allowed_source})"

    os_count = None
    if fs.is_live:
        os_count = os.cpu_count()
        override = python_cpu_count_override()
        if override:
            notes.append(f"Python's CPU count override is active: {override}")
    return Topology(
        online_cpus=online, allowed_cpus=allowed_cpus, allowed_source=allowed_source,
        effective_cpus=effective, effective_source=eff_source,
        cpu_quota=limits.cpu_quota, quota_source=limits.quota_source,
        packages=packages, numa_nodes=nodes, cores=cores,
        allowed_numa_nodes=mems, cgroup_version=limits.version, cgroup_path=limits.path,
        cpu_stat_file=limits.cpu_stat_file, fsroot=fs.root, os_cpu_count=os_count,
        notes=tuple(notes))
