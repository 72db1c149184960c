"""Findings and the catalog of their codes.

A code never changes meaning; docs/checks.md lists every one with an example.
"""

from __future__ import annotations

from dataclasses import dataclass

ERROR, WARNING, INFO = "error", "warning", "info"
SEVERITIES = (ERROR, WARNING, INFO)  # most important first
RANK = {ERROR: 2, WARNING: 1, INFO: 0}


@dataclass(frozen=True)
class Finding:
    code: str
    severity: str
    title: str  # one line
    evidence: tuple[str, ...] = ()  # paths, values, measured numbers
    fix: str = ""  # the exact fix: a command line, variables, a code change

    def to_dict(self) -> dict:
        return {"code": self.code, "severity": self.severity, "title": self.title,
                "evidence": list(self.evidence), "fix": self.fix}


@dataclass(frozen=True)
class Check:
    code: str
    severity: str  # the usual severity (a check may lower it with a reason)
    name: str
    summary: str


CATALOG: dict[str, Check] = {c.code: c for c in (
    # runtimes
    Check("TG101", ERROR, "kmp-runtimes-together",
          "Intel OpenMP (libiomp5) and LLVM OpenMP (libomp) loaded in one process, or one of them "
          "from two paths: calling into both can abort the process."),
    Check("TG102", ERROR, "gnu-openmp-before-intel",
          "GNU and Intel OpenMP both loaded with GNU first: Intel's runtime must be initialized "
          "first (OpenVINO's guide), so that it serves the GOMP_* symbols too."),
    Check("TG103", WARNING, "several-gnu-openmp-copies",
          "Several copies of GNU OpenMP loaded (vendored by different wheels): each keeps its own "
          "thread pool sized to the machine."),
    Check("TG104", WARNING, "conflicting-openmp-shipped",
          "The environment ships OpenMP runtimes that conflict when both load."),
    Check("TG105", WARNING, "kmp-duplicate-lib-ok",
          "KMP_DUPLICATE_LIB_OK=TRUE hides a duplicate OpenMP runtime instead of removing it; "
          "results can be wrong and crashes remain possible."),
    Check("TG106", ERROR, "mkl-intel-layer-with-libgomp",
          "MKL_THREADING_LAYER=INTEL with GNU OpenMP in the process: MKL reports "
          "'MKL_THREADING_LAYER=INTEL is incompatible with libgomp.so.1'."),
    Check("TG107", WARNING, "jemalloc-preload-with-openvino",
          "LD_PRELOAD of jemalloc with OpenVINO 2024.3 or newer: oneTBB can fail with "
          "'free(): invalid size' (oneTBB#1645)."),
    Check("TG108", ERROR, "missing-preload",
          "An LD_PRELOAD entry does not exist: the dynamic linker skips it with an error line."),
    Check("TG110", WARNING, "tbb-and-openmp-active",
          "TBB and OpenMP pools both active in one process: idle OpenMP workers spin on the "
          "cores TBB needs (OpenVINO's guide prefers one threading model)."),
    # variables
    Check("TG201", WARNING, "invalid-thread-variable",
          "A thread-count variable the runtimes reject or read unlike intended."),
    Check("TG202", INFO, "thread-variables-disagree",
          "MKL_NUM_THREADS and OMP_NUM_THREADS differ: MKL uses its own, OpenMP pools the other."),
    Check("TG203", WARNING, "thread-variable-above-cpus",
          "A thread-count variable asks for more threads than the process has CPUs."),
    Check("TG204", INFO, "python-cpu-count-override",
          "Python's CPU count override (-X cpu_count / PYTHON_CPU_COUNT) is active."),
    Check("TG205", WARNING, "openmp-active-wait",
          "OMP_WAIT_POLICY=ACTIVE: idle OpenMP workers spin instead of sleeping."),
    # capacity
    Check("TG301", WARNING, "pools-exceed-cpus",
          "The Python threads calling pools, times the largest pool, exceed the effective "
          "CPUs."),
    Check("TG302", WARNING, "sized-to-the-host",
          "Pools will size themselves to the host's CPU count, above this process's quota or "
          "affinity."),
    Check("TG303", ERROR, "measured-oversubscription",
          "Measured oversubscription: threads waited for a CPU."),
    Check("TG304", WARNING, "cpu-throttled",
          "The cgroup's CPU quota throttled the process."),
    Check("TG305", INFO, "spread-over-numa-nodes",
          "The process may run on several sockets or NUMA nodes: latency-sensitive work is "
          "fastest on one."),
    Check("TG306", INFO, "compute-on-smt-siblings",
          "A compute pool is sized to hardware threads, not physical cores."),
    Check("TG307", WARNING, "openvino-over-budget",
          "An OpenVINO compiled model runs more threads than the process has CPUs."),
    # clusters
    Check("TG501", WARNING, "host-oversubscribed-by-workers",
          "The workers on one host can run more threads (task threads x pool sizes) than the "
          "host has CPUs, even if each worker alone fits."),
    Check("TG502", WARNING, "host-ledger-oversubscribed",
          "The participants of the host ledger hold more threads than the CPUs they share "
          "(each holds at least one), or the ledger cannot be read."),
    Check("TG503", WARNING, "pools-outside-host-ledger",
          "Processes run thread pools on a host whose CPUs are shared through the host ledger, "
          "without taking part: the grants do not count their threads."),
    # the pytest plugin, per test
    Check("TG601", WARNING, "thread-leak",
          "A thread the test started was still alive after it (and its grace period) ended."),
    Check("TG602", INFO, "pool-started",
          "A pool that lives for the process (OpenMP, OpenBLAS, TBB/OpenVINO, torch, loky's "
          "executor) started its threads during the test: reported once, not a leak."),
    Check("TG603", WARNING, "pool-resized",
          "A pool was left sized above the test's thread budget."),
    Check("TG604", WARNING, "environment-changed",
          "The test left environment variables changed."),
    Check("TG605", WARNING, "affinity-changed",
          "The test left the process's CPU affinity changed."),
    # messages seen on stderr
    Check("TG401", ERROR, "omp-error-15",
          "OMP: Error #15: a second OpenMP runtime initialized beside the first."),
    Check("TG402", ERROR, "openblas-thread-creation-failed",
          "OpenBLAS could not create its threads (process or cgroup limits)."),
    Check("TG403", ERROR, "openblas-memory-regions",
          "OpenBLAS ran out of memory regions: more threads or callers than it was built for."),
    Check("TG404", WARNING, "tbb-workers-limited",
          "TBB ignored a request for workers: a process-wide limit was set elsewhere."),
    Check("TG405", ERROR, "static-tls-exhausted",
          "A vendored libgomp could not be loaded: no room left in the static TLS block."),
    Check("TG406", WARNING, "fork-with-threads",
          "fork() while thread pools exist: the child can deadlock."),
)}


def finding(code: str, title: str, evidence=(), fix: str = "", severity: str | None = None) -> Finding:
    check = CATALOG[code]
    return Finding(code, severity or check.severity, title, tuple(evidence), fix)


def worst(findings) -> str | None:
    ranked = sorted(findings, key=lambda f: -RANK[f.severity])
    return ranked[0].severity if ranked else None
