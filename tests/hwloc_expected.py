"""Expected topologies parsed from hwloc's own test outputs (.console, .xml).

Only the structure threadguard reports is kept: logical CPUs (PU OS numbers),
the CPUs of each Package, Core and NUMA node. Levels that ``--merge`` or
``--filter`` dropped are reported as absent rather than guessed.
"""

from __future__ import annotations

import re
import tarfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

DATA = Path(__file__).parent / "data" / "hwloc-linux"


@dataclass
class Expected:
    pus: set[int] = field(default_factory=set)
    packages: list[frozenset[int]] | None = None  # each package's CPUs
    cores: set[frozenset[int]] | None = None  # each core's CPUs
    numa: dict[int, frozenset[int]] = field(default_factory=dict)  # P# -> CPUs of its parent
    core_kinds: dict[frozenset[int], int] = field(default_factory=dict)  # core CPUs -> cpukind
    disallowed: bool = False  # lstopo --disallowed: every online CPU shown


@dataclass
class Case:
    name: str
    source: Path
    target: Path
    options: str
    env: str


def cases() -> list[Case]:
    out = []
    for test in sorted(DATA.glob("*.test")):
        fields: dict[str, str] = {}
        for line in test.read_text().splitlines():
            if ":" in line and not line.startswith("#"):
                key, value = line.split(":", 1)
                fields[key.strip()] = (fields.get(key.strip(), "") + " " + value.strip()).strip()
        target = DATA / fields["target"]
        source = DATA / fields["source"]
        if target.suffix not in (".console", ".xml") or not source.exists():
            continue
        out.append(Case(test.stem, source, target, fields.get("options", ""),
                        fields.get("env", "")))
    return out


def unpack(case: Case, into: Path) -> Path:
    """Unpack the dump; return the folder that holds its sys/ and proc/.

    Only the files a topology reads are written: the dumps hold thousands
    of cache, cpuidle and PCI files whose creation would dominate the suite.
    """
    with tarfile.open(case.source) as tar:
        members = tar.getmembers()
        top = members[0].name.split("/")[0]
        if not (into / top).exists():
            wanted = [m for m in members if (m.isfile() or m.issym()) and _WANTED.search(m.name)]
            if hasattr(tarfile, "data_filter"):
                tar.extractall(into, members=wanted, filter="tar")
            else:
                tar.extractall(into, members=wanted)
    return into / top


_WANTED = re.compile(
    r"^[^/]+/(proc/"
    r"|sys/devices/system/cpu/(online|cpu\d+/(online|topology/|cpu_capacity|cpufreq$"
    r"|cpufreq/(base_frequency|cpuinfo_max_freq))"
    r"|cpufreq/policy\d+/(base_frequency|cpuinfo_max_freq))"
    r"|sys/devices/system/node/(online|node\d+/(cpulist|cpumap|distance))"
    r"|sys/devices/cpu_(core|atom)/cpus"
    r"|(sys/fs/cgroup|dev/cpuset|dev/cgroup|cgroup)/.*(cpus|mems|cpu\.|cgroup\.controllers))")


class _Node:
    def __init__(self, kind: str, os_index: int | None, parent: "_Node | None",
                 cpukind: int | None = None):
        self.kind, self.os_index, self.parent, self.cpukind = kind, os_index, parent, cpukind
        self.children: list[_Node] = []

    def pus(self) -> set[int]:
        if self.kind == "PU":
            return {self.os_index}
        return set().union(*(c.pus() for c in self.children)) if self.children else set()


def _collect(root: _Node, disallowed: bool) -> Expected:
    exp = Expected(disallowed=disallowed)
    all_pus: list[_Node] = []
    packages: list[_Node] = []
    cores: list[_Node] = []
    numa: list[_Node] = []

    def walk(n: _Node):
        {"PU": all_pus, "Package": packages, "Core": cores, "NUMANode": numa}.get(
            n.kind, []).append(n)
        for c in n.children:
            walk(c)

    walk(root)
    exp.pus = {p.os_index for p in all_pus}

    def every_pu_under(kind: str) -> bool:
        for pu in all_pus:
            a = pu.parent
            while a is not None and a.kind != kind:
                a = a.parent
            if a is None:
                return False
        return True

    if packages and every_pu_under("Package"):
        exp.packages = [frozenset(p.pus()) for p in packages]
    if cores and every_pu_under("Core"):
        exp.cores = {frozenset(c.pus()) for c in cores}
    exp.core_kinds = {frozenset(c.pus()): c.cpukind for c in cores if c.cpukind is not None}
    for node in numa:
        # A NUMA node hangs under the object it is local to, maybe through
        # memory-side caches: its CPUs are that object's.
        parent = node.parent
        while parent is not None and parent.kind in ("MemCache", "NUMANode"):
            parent = parent.parent
        exp.numa[node.os_index] = frozenset(parent.pus() if parent else set())
    return exp


_LINE = re.compile(r"^(\s*)([A-Za-z0-9]+)")
_CPUKIND = re.compile(r"\bcpukind=(\d+)")
_OS_INDEX = re.compile(r"^\s*\S+(?: L#\d+)? \(P#(\d+)")


def parse_console(path: Path, options: str) -> Expected:
    root = _Node("Root", None, None)
    stack: list[tuple[int, _Node]] = [(-1, root)]
    for line in path.read_text().splitlines():
        m = _LINE.match(line)
        if not m or not line.strip():
            continue
        indent, kind = len(m.group(1)), m.group(2)
        if indent == 0 and root.children:
            break  # the tree is over: what follows (-v) are attribute tables
        p = _OS_INDEX.match(line)
        while stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1][1]
        kind_attr = _CPUKIND.search(line)
        node = _Node(kind, int(p.group(1)) if p else None, parent,
                     int(kind_attr.group(1)) if kind_attr else None)
        parent.children.append(node)
        stack.append((indent, node))
    return _collect(root, "--disallowed" in options)


def parse_xml(path: Path, options: str) -> Expected:
    def build(elem, parent):
        node = _Node(elem.get("type"), int(elem.get("os_index")) if elem.get("os_index") else None,
                     parent)
        for child in elem.findall("object"):
            node.children.append(build(child, node))
        return node

    tree = ET.parse(path)
    top = tree.getroot().find("object")
    return _collect(build(top, None), "--disallowed" in options)


def expected(case: Case) -> Expected:
    if case.target.suffix == ".xml":
        return parse_xml(case.target, case.options)
    return parse_console(case.target, case.options)
