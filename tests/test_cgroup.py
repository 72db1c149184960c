"""cgroup quota, cpuset and throttling: parsers on strings, readers on built trees."""

from __future__ import annotations

import pytest

import threadguard
from threadguard import cgroup
from machine_tree import V1_MOUNTINFO, V2_MOUNTINFO, machine


@pytest.mark.parametrize("text, quota", [
    ("200000 100000", 2.0),
    ("50000 100000", 0.5),
    ("max 100000", None),
    ("max", None),
    ("150000 100000\n", 1.5),
])
def test_parse_cpu_max(text, quota):
    assert cgroup.quota_cpus(*cgroup.parse_cpu_max(text)) == quota


@pytest.mark.parametrize("quota, allowed, budget", [
    (None, 8, 8), (2.0, 64, 2), (1.5, 64, 2), (0.5, 64, 1), (0.01, 4, 1),
    (16.0, 4, 4), (None, 0, 1),
])
def test_quota_budget_rounds_up_like_nproc_and_never_zero(quota, allowed, budget):
    assert cgroup.quota_budget(quota, allowed) == budget


def test_v1_minus_one_means_no_limit():
    assert cgroup.quota_cpus(-1, 100000) is None


@pytest.mark.parametrize("text, throttled", [
    ("nr_periods 100\nnr_throttled 25\nthrottled_time 2500000000\n", 2.5),  # v1: ns
    ("usage_usec 5\nnr_periods 100\nnr_throttled 25\nthrottled_usec 2500000\n", 2.5),  # v2: us
])
def test_cpu_stat_units(text, throttled):
    stat = cgroup.parse_cpu_stat(text)
    assert (stat.nr_periods, stat.nr_throttled, stat.throttled_seconds) == (100, 25, throttled)


def test_mountinfo_keeps_mount_root_and_unescapes():
    text = "40 31 0:35 /docker/abc /sys/fs/cgroup/cpu\\040x rw - cgroup cgroup rw,cpu,cpuacct\n"
    (m,) = cgroup.parse_mountinfo(text)
    assert m.root == "/docker/abc" and m.mountpoint == "/sys/fs/cgroup/cpu x"
    assert "cpu" in m.options and m.fstype == "cgroup"


def v2(tmp_path, path, cpu_max, ncpus=64, extra=None):
    files = {"/proc/self/cgroup": f"0::{path}\n", "/proc/self/mountinfo": V2_MOUNTINFO,
             "/sys/fs/cgroup/cgroup.controllers": "cpuset cpu io memory pids\n"}
    for d, text in cpu_max.items():
        files[f"/sys/fs/cgroup{d}/cpu.max"] = text
    files.update(extra or {})
    return machine(tmp_path, ncpus, extra=files)


def test_v2_quota_two_cpus_on_64_cpu_host(tmp_path):
    root = v2(tmp_path, "/kubepods/pod1", {"/kubepods/pod1": "200000 100000\n"})
    topo = threadguard.topology(fsroot=root)
    assert len(topo.allowed_cpus) == 64
    assert topo.cpu_quota == 2.0
    assert topo.effective_cpus == 2
    assert topo.quota_source.endswith("/kubepods/pod1/cpu.max")
    assert "quota" in topo.effective_source


def test_v2_half_cpu_quota_gives_one_never_zero(tmp_path):
    root = v2(tmp_path, "/a", {"/a": "50000 100000\n"})
    topo = threadguard.topology(fsroot=root)
    assert topo.cpu_quota == 0.5 and topo.effective_cpus == 1


def test_v2_max_means_allowed_cpus(tmp_path):
    root = v2(tmp_path, "/a", {"/a": "max 100000\n"})
    topo = threadguard.topology(fsroot=root)
    assert topo.cpu_quota is None and topo.effective_cpus == 64


def test_v2_nested_tightest_ancestor_wins(tmp_path):
    root = v2(tmp_path, "/outer/inner/leaf", {
        "/outer": "800000 100000\n", "/outer/inner": "400000 100000\n",
        "/outer/inner/leaf": "max 100000\n"})
    topo = threadguard.topology(fsroot=root)
    assert topo.cpu_quota == 4.0 and topo.effective_cpus == 4
    assert topo.quota_source.endswith("/outer/inner/cpu.max")
    assert topo.cpu_stat_file is None or topo.cpu_stat_file.endswith("/outer/inner/cpu.stat")


def test_v2_cpuset_restricts_allowed_cpus(tmp_path):
    root = v2(tmp_path, "/a", {"/a": "max\n"}, extra={
        "/sys/fs/cgroup/a/cpuset.cpus.effective": "4-5\n",
        "/sys/fs/cgroup/a/cpuset.mems.effective": "0\n"})
    topo = threadguard.topology(fsroot=root)
    assert topo.allowed_cpus == (4, 5) and topo.effective_cpus == 2


def test_affinity_only_kubernetes_static_cpu_manager(tmp_path):
    root = machine(tmp_path, 64, affinity="8-11", extra={
        "/proc/self/cgroup": "0::/pod\n", "/proc/self/mountinfo": V2_MOUNTINFO,
        "/sys/fs/cgroup/pod/cpu.max": "max 100000\n"})
    topo = threadguard.topology(fsroot=root)
    assert topo.allowed_cpus == (8, 9, 10, 11)
    assert topo.effective_cpus == 4 and topo.cpu_quota is None
    assert "affinity" in topo.allowed_source


@pytest.mark.parametrize("quota_us, quota, budget", [
    ("-1", None, 64), ("150000", 1.5, 2), ("50000", 0.5, 1)])
def test_v1_quota(tmp_path, quota_us, quota, budget):
    root = machine(tmp_path, 64, extra={
        "/proc/self/cgroup": "4:cpu,cpuacct:/job\n3:cpuset:/\n",
        "/proc/self/mountinfo": V1_MOUNTINFO,
        "/sys/fs/cgroup/cpu,cpuacct/job/cpu.cfs_quota_us": quota_us + "\n",
        "/sys/fs/cgroup/cpu,cpuacct/job/cpu.cfs_period_us": "100000\n",
        "/sys/fs/cgroup/cpu,cpuacct/job/cpu.stat": "nr_periods 10\nnr_throttled 4\nthrottled_time 5\n"})
    topo = threadguard.topology(fsroot=root)
    assert topo.cgroup_version == 1
    assert topo.cpu_quota == quota and topo.effective_cpus == budget


def test_v1_container_whose_mount_root_is_its_cgroup(tmp_path):
    # Docker without a cgroup namespace: /proc/self/cgroup names /docker/abc,
    # and that same directory is what is mounted at /sys/fs/cgroup/cpu.
    root = machine(tmp_path, 16, extra={
        "/proc/self/cgroup": "4:cpu,cpuacct:/docker/abc\n",
        "/proc/self/mountinfo": "40 31 0:35 /docker/abc /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n",
        "/sys/fs/cgroup/cpu/cpu.cfs_quota_us": "300000\n",
        "/sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n"})
    topo = threadguard.topology(fsroot=root)
    assert topo.cpu_quota == 3.0 and topo.effective_cpus == 3
    assert not any("not found" in n for n in topo.notes)


def test_masked_cgroup_fs_is_unknown_not_a_crash(tmp_path):
    root = machine(tmp_path, 8, extra={"/proc/self/cgroup": "0::/x\n",
                                       "/proc/self/mountinfo": V2_MOUNTINFO})
    # /sys/fs/cgroup is mounted but holds nothing: quota unknown, budget from affinity.
    topo = threadguard.topology(fsroot=root)
    assert topo.cpu_quota is None and topo.effective_cpus == 8


def test_no_proc_cgroup_is_reported_unknown(tmp_path):
    root = machine(tmp_path, 4, extra={"/proc/mounts": "proc /proc proc rw 0 0\n"})
    topo = threadguard.topology(fsroot=root)
    assert topo.cpu_quota is None and topo.effective_cpus == 4
    assert any("cgroup" in n and "unknown" in n for n in topo.notes)


def test_fsroot_from_environment(tmp_path, monkeypatch):
    root = v2(tmp_path, "/a", {"/a": "100000 100000\n"}, ncpus=32)
    monkeypatch.setenv("THREADGUARD_FSROOT", str(root))
    topo = threadguard.topology()
    assert topo.online_cpus == tuple(range(32)) and topo.effective_cpus == 1
    assert topo.os_cpu_count is None  # a dumped tree is not this machine


def test_smt_cores_and_physical_core_count(tmp_path):
    root = machine(tmp_path, 8, smt=2)
    topo = threadguard.topology(fsroot=root)
    assert topo.smt and len(topo.cores) == 4
    assert {c.cpus for c in topo.cores} == {(0, 4), (1, 5), (2, 6), (3, 7)}


def test_live_machine_agrees_with_the_kernel():
    import os
    topo = threadguard.topology()
    assert set(topo.allowed_cpus) == os.sched_getaffinity(0)
    assert topo.effective_cpus <= len(topo.allowed_cpus)
