"""Known runtime messages on stderr, classified into findings."""

from __future__ import annotations

import os
import re
import shlex

from ..runtime_libs import preload_fix
from .findings import finding

_OMP15 = re.compile(r"OMP: Error #15: Initializing (\S+?),? but found (\S+?) already initialized")
_PTHREAD = re.compile(r"OpenBLAS blas_thread_init: pthread_create failed for thread (\d+) of (\d+)")
_RLIMIT = re.compile(r"RLIMIT_NPROC (-?\d+) current, (-?\d+) max")
_REGIONS = re.compile(r"too many memory regions")
_BUILT_FOR = re.compile(r"maximum of (\d+) threads")
_TBB = re.compile(r"TBB Warning: The number of workers is currently limited to (\d+)\. "
                  r"The request for (\d+) workers is ignored")
_TLS = re.compile(r"(\S*libgomp\S*\.so\S*): cannot allocate memory in static TLS block")
_FORK = re.compile(r"is multi-threaded, use of fork\(\) may lead to deadlocks")
_MKL_LAYER = re.compile(r"MKL_THREADING_LAYER=INTEL is incompatible with (\S+)")


def classify(stderr: str) -> list:
    out = []
    for m in _OMP15.finditer(stderr):
        new, old = m.group(1), m.group(2)
        out.append(finding("TG401", f"OpenMP runtime {new} initialized while {old} was already",
                           [m.group(0)], "load a single OpenMP runtime; OMP_NUM_THREADS=1 only "
                           "hides the crash"))
    m = _PTHREAD.search(stderr)
    if m:
        limit = _RLIMIT.search(stderr)
        evidence = [m.group(0)] + ([limit.group(0)] if limit else [])
        if limit and limit.group(1) == "-1":
            fix = "the cgroup's pids.max is the limit: raise it, or cap OpenBLAS (OPENBLAS_NUM_THREADS)"
        else:
            fix = (f"OPENBLAS_NUM_THREADS x processes exceeds RLIMIT_NPROC: export "
                   f"OPENBLAS_NUM_THREADS=<CPUs / processes> (asked {m.group(2)})")
        out.append(finding("TG402", f"OpenBLAS could not start thread {m.group(1)} of {m.group(2)}",
                           evidence, fix))
    m = _REGIONS.search(stderr)
    if m:
        built_m = _BUILT_FOR.search(stderr)
        built = built_m.group(1) if built_m else None
        out.append(finding("TG403", "OpenBLAS ran out of memory regions" +
                           (f" (built for {built} threads)" if built else ""),
                           [m.group(0)] + ([built_m.group(0)] if built else []),
                           "cap OpenBLAS below its build limit and the number of threads calling "
                           "it: with threadguard.budget(): ..."))
    m = _TBB.search(stderr)
    if m:
        out.append(finding("TG404", f"TBB kept {m.group(1)} workers, not the {m.group(2)} asked",
                           [m.group(0)], "a tbb::global_control or another library limited TBB "
                           "process-wide: size OpenVINO's INFERENCE_NUM_THREADS to it"))
    m = _TLS.search(stderr)
    if m:
        out.append(finding("TG405", f"{m.group(1)} could not be loaded (static TLS block full)",
                           [m.group(0)], _preload_fix_for(m.group(1))))
    if _FORK.search(stderr):
        out.append(finding("TG406", "fork() in a process with threads", ["Python warned: " +
                           _FORK.search(stderr).group(0)],
                           "multiprocessing.set_start_method('spawn') or 'forkserver'"))
    m = _MKL_LAYER.search(stderr)
    if m:
        out.append(finding("TG106", m.group(0), [m.group(0)], "export MKL_THREADING_LAYER=GNU"))
    return out


def _preload_fix_for(name: str) -> str:
    """Only an existing absolute path is pasted; a bare name is a template."""
    if os.path.isabs(name) and os.path.isfile(name):
        return preload_fix(name, os.environ.get("LD_PRELOAD"))
    return (f"preload it by its absolute path: export LD_PRELOAD=/path/to/"
            f"{shlex.quote(os.path.basename(name))}")
