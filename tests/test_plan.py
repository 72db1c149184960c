"""The planner: pure functions over dumped and built topologies."""

from __future__ import annotations

import pytest

import threadguard
from threadguard.planner import MODES
from threadguard._fs import format_cpulist
from hwloc_expected import cases, unpack
from machine_tree import V2_MOUNTINFO, machine, multi_socket


@pytest.fixture(scope="module")
def two_by_28(tmp_path_factory):
    root = multi_socket(tmp_path_factory.mktemp("2x28"), sockets=2, cores_per_socket=28, smt=2)
    return threadguard.topology(fsroot=root)


def test_guide_latency_plan_on_two_sockets_of_28_smt_cores(two_by_28):
    plan = threadguard.plan(two_by_28, "latency")
    # numactl -m 0 --physcpubind 0-27 benchmark_app -api sync -nthreads 28
    assert plan.threads == 28
    assert format_cpulist(plan.cpus) == "0-27"
    assert plan.memory_nodes == (0,)
    assert plan.pin and not plan.hyper_threading
    assert plan.numactl_args() == ["-m", "0", "--physcpubind", "0-27"]
    assert plan.streams == 1


def test_latency_on_the_other_socket(two_by_28):
    plan = threadguard.plan(two_by_28, "latency", socket=1)
    assert format_cpulist(plan.cpus) == "28-55" and plan.memory_nodes == (1,)


def test_throughput_uses_physical_cores_and_a_stream_per_node(two_by_28):
    plan = threadguard.plan(two_by_28)
    assert plan.threads == 56  # 112 hardware threads, 56 cores
    assert plan.streams == 2 and plan.threads_per_stream == 28
    assert not plan.pin and plan.memory_nodes is None
    assert len(plan.cpus) == 112  # not pinned: every allowed CPU


def test_quota_caps_the_plan(tmp_path):
    root = multi_socket(tmp_path, 2, 8, smt=2, extra={
        "/proc/self/cgroup": "0::/job\n", "/proc/self/mountinfo": V2_MOUNTINFO,
        "/sys/fs/cgroup/job/cpu.max": "300000 100000\n"})
    topo = threadguard.topology(fsroot=root)
    assert threadguard.plan(topo).threads == 3
    assert threadguard.plan(topo, "latency").threads == 3


def _with_quota(tmp_path, quota: str, nodes_per_socket: int = 1):
    """2 sockets x 16 SMT cores, ``nodes_per_socket`` NUMA nodes each (EPYC
    NPS4: 4), under a cgroup v2 ``cpu.max`` of ``quota``."""
    extra = {"/proc/self/cgroup": "0::/job\n", "/proc/self/mountinfo": V2_MOUNTINFO,
             "/sys/fs/cgroup/job/cpu.max": quota + "\n"}
    root = multi_socket(tmp_path, 2, 16, smt=2, extra=extra)
    if nodes_per_socket > 1:
        import shutil
        shutil.rmtree(root / "sys/devices/system/node")
        per = 16 // nodes_per_socket
        count = 2 * nodes_per_socket
        for node in range(count):
            first = node * per
            cpus = f"{first}-{first + per - 1},{32 + first}-{32 + first + per - 1}"
            d = root / f"sys/devices/system/node/node{node}"
            d.mkdir(parents=True)
            (d / "cpulist").write_text(cpus + "\n")
            (d / "distance").write_text(" ".join("10" if k == node else "20"
                                                 for k in range(count)) + "\n")
        (root / "proc/self/status").write_text(
            f"Cpus_allowed_list:\t0-63\nMems_allowed_list:\t0-{count - 1}\n")
    return threadguard.topology(fsroot=root)


@pytest.mark.parametrize("nodes_per_socket", [1, 4])
def test_a_quota_never_pins_more_cpus_than_it_rounds_up_to(tmp_path, nodes_per_socket):
    # OpenVINO sizes itself to its affinity and ignores quotas (openvino#37838):
    # 1.5 CPUs of a 2 x 16-core host must pin 2 CPUs, not a socket.
    topo = _with_quota(tmp_path, "150000 100000", nodes_per_socket)
    assert topo.effective_cpus == 2
    for plan in (threadguard.plan(topo, "latency"), threadguard.plan(topo, pin=True)):
        assert plan.pin and plan.threads == 2 and len(plan.cpus) == 2, plan
        nodes = {n.id for n in topo.numa_nodes if set(plan.cpus) <= set(n.cpus)}
        assert nodes, f"{plan.cpus} spans NUMA nodes"
        assert plan.memory_nodes == tuple(sorted(nodes))
        assert plan.numactl_args()[-1] == format_cpulist(plan.cpus)


def test_a_pinned_share_larger_than_a_node_spills_over(tmp_path):
    topo = _with_quota(tmp_path, "600000 100000", nodes_per_socket=4)  # nodes of 4 cores
    plan = threadguard.plan(topo, "latency")
    assert plan.threads == 6 and len(plan.cpus) == 6
    assert len(plan.memory_nodes) == 2  # the quota does not fit one node of 4 cores


def test_consumers_share_the_budget(two_by_28):
    assert threadguard.plan(two_by_28, consumers=4).threads == 14
    assert threadguard.plan(two_by_28, consumers=1000).threads == 1


def test_split_disjoint_cpu_sets(two_by_28):
    plan = threadguard.plan(two_by_28, pin=True)
    shares = plan.split(4, disjoint=True)
    sets = [set(s.cpus) for s in shares]
    assert all(s.pin for s in shares)
    assert sum(len(s) for s in sets) == len(plan.cpus)
    assert all(not (a & b) for i, a in enumerate(sets) for b in sets[i + 1:])
    assert all(s.threads == 14 for s in shares)


def test_hybrid_latency_takes_performance_cores(tmp_path):
    case = next(c for c in cases() if c.name == "20em64t-hybrid-1p6c2t+2ca4co1t")
    topo = threadguard.topology(fsroot=unpack(case, tmp_path))
    plan = threadguard.plan(topo, "latency")
    perf = [c for c in topo.cores if c.kind == "performance"]
    assert plan.core_type == "performance"
    assert plan.threads == len(perf) == 6
    assert set(plan.cpus) == {c.cpus[0] for c in perf}


@pytest.mark.parametrize("case", [c for c in cases() if c.name in (
    "16em64t-4s2c2t", "16amd64-8n2c", "32intel64-2p8co2t+8ve", "64amd64-4s2n4ca2co",
    "48amd64-4pa2n6c-sparse", "16amd64-8n2c-cpusets")], ids=lambda c: c.name)
def test_plans_on_dumped_machines_stay_inside_the_machine(case, tmp_path):
    topo = threadguard.topology(fsroot=unpack(case, tmp_path))
    for mode in MODES:
        plan = threadguard.plan(topo, mode)
        assert 1 <= plan.threads <= topo.effective_cpus
        assert set(plan.cpus) <= set(topo.allowed_cpus)
        assert plan.threads <= len(topo.allowed_cores())
        if plan.memory_nodes:
            assert set(plan.memory_nodes) <= set(n.id for n in topo.numa_nodes)
    latency = threadguard.plan(topo, "latency")
    packages = {c.package for c in topo.cores if set(c.cpus) & set(latency.cpus)}
    assert len(packages) == 1  # one socket


@pytest.mark.parametrize("bad, message", [
    (0, "got 0"), (-2, "got -2"), (1.5, "got 1.5"), ("4", "got '4'"), (True, "got True")])
def test_bad_thread_counts(two_by_28, bad, message):
    with pytest.raises(ValueError, match=message):
        threadguard.plan(two_by_28, threads=bad)


def test_bad_mode_and_socket(two_by_28):
    with pytest.raises(ValueError, match="throughput, latency"):
        threadguard.plan(two_by_28, "fast")
    with pytest.raises(ValueError, match="socket must be one of 0, 1"):
        threadguard.plan(two_by_28, "latency", socket=7)


def test_single_socket_latency_is_its_physical_cores_unpinned(tmp_path):
    topo = threadguard.topology(fsroot=machine(tmp_path, 8, smt=2))
    plan = threadguard.plan(topo, "latency")
    assert plan.threads == 4 and not plan.pin and plan.memory_nodes is None


@pytest.mark.parametrize("case", [c for c in cases() if c.name in (
    "16em64t-4s2c2t", "16amd64-8n2c", "64amd64-4s2n4ca2co", "48amd64-4pa2n6c-sparse",
    "16amd64-8n2c-cpusets")], ids=lambda c: c.name)
def test_instances_on_dumped_machines_are_one_per_node_and_disjoint(case, tmp_path):
    from threadguard.planner import instance_plans
    topo = threadguard.topology(fsroot=unpack(case, tmp_path))
    allowed = set(topo.allowed_cpus)
    nodes = [n for n in topo.numa_nodes if allowed & set(n.cpus)]
    for count in (None, 1, len(nodes) * 2 + 1):
        plans = instance_plans(topo, count)
        assert len(plans) == (count or len(nodes))
        for plan in plans:
            node = next(n for n in topo.numa_nodes if n.id == plan.memory_nodes[0])
            assert plan.pin and set(plan.cpus) <= set(node.cpus) & allowed, (plan, node)
            assert plan.threads == len(plan.cpus) or count and count > len(topo.allowed_cores())
        if count is None or count <= len(topo.allowed_cores()):
            sets = [set(p.cpus) for p in plans]
            assert all(not (a & b) for i, a in enumerate(sets) for b in sets[i + 1:])
        assert sum(p.threads for p in plans) <= max(topo.effective_cpus, len(plans))
