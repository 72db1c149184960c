"""Build small dumped-machine trees for THREADGUARD_FSROOT tests."""

from __future__ import annotations

from pathlib import Path

V2_MOUNTINFO = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
V1_MOUNTINFO = (
    "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
    "34 31 0:31 / /sys/fs/cgroup/cpuset rw - cgroup cgroup rw,cpuset\n"
)


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def machine(root: Path, ncpus: int, *, affinity: str | None = None, smt: int = 1,
            extra: dict[str, str] | None = None) -> Path:
    """A one-socket machine of ``ncpus`` CPUs, ``smt`` threads per core."""
    files = {"/sys/devices/system/cpu/online": f"0-{ncpus - 1}\n"}
    cores = ncpus // smt
    for cpu in range(ncpus):
        core = cpu % cores
        siblings = ",".join(str(core + k * cores) for k in range(smt))
        base = f"/sys/devices/system/cpu/cpu{cpu}/topology"
        files[f"{base}/physical_package_id"] = "0\n"
        files[f"{base}/core_id"] = f"{core}\n"
        files[f"{base}/thread_siblings_list"] = siblings + "\n"
        files[f"{base}/core_siblings_list"] = f"0-{ncpus - 1}\n"
    files["/proc/self/status"] = (f"Name:\tpython\nCpus_allowed_list:\t{affinity or f'0-{ncpus - 1}'}\n"
                                  "Mems_allowed_list:\t0\n")
    files.update(extra or {})
    return write_tree(root, files)


def multi_socket(root: Path, sockets: int, cores_per_socket: int, smt: int = 1,
                 extra: dict[str, str] | None = None) -> Path:
    """Linux's usual numbering: first threads of all cores, then their siblings;
    one NUMA node per socket."""
    total = sockets * cores_per_socket
    files = {"/sys/devices/system/cpu/online": f"0-{total * smt - 1}\n"}
    node_cpus: dict[int, list[int]] = {s: [] for s in range(sockets)}
    for t in range(smt):
        for s in range(sockets):
            for c in range(cores_per_socket):
                cpu = t * total + s * cores_per_socket + c
                siblings = ",".join(str(k * total + s * cores_per_socket + c) for k in range(smt))
                base = f"/sys/devices/system/cpu/cpu{cpu}/topology"
                files[f"{base}/physical_package_id"] = f"{s}\n"
                files[f"{base}/core_id"] = f"{c}\n"
                files[f"{base}/thread_siblings_list"] = siblings + "\n"
                node_cpus[s].append(cpu)
    for s, cpus in node_cpus.items():
        files[f"/sys/devices/system/node/node{s}/cpulist"] = ",".join(map(str, sorted(cpus))) + "\n"
        files[f"/sys/devices/system/node/node{s}/distance"] = " ".join(
            "10" if k == s else "21" for k in range(sockets)) + "\n"
    files["/proc/self/status"] = (f"Cpus_allowed_list:\t0-{total * smt - 1}\n"
                                  f"Mems_allowed_list:\t0-{sockets - 1}\n")
    files.update(extra or {})
    return write_tree(root, files)
