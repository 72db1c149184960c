"""``threadguard run``: start a command with a plan applied.

The plan's variables go into the command's environment; affinity and the
memory policy are set on this process just before ``exec``, which keeps
both (as numactl does). When the environment ships Intel and GNU OpenMP,
Intel's runtime is preloaded so that it is initialised first and serves the
GOMP_* symbols too (the OpenVINO deployment guide's rule).
"""

from __future__ import annotations

import os
import shlex
import sys

from . import numa
from .machine import read_topology
from .planner import make_plan
from .runtime_libs import intel_openmp_preload

EXIT_NOT_FOUND = 127  # as shells report a command that cannot be run


def prepare(cmd: list[str], *, threads=None, mode="throughput", socket=None, pin=None,
            allow_oversubscription=False, environ=None, warn=None):
    """``(plan, env)`` for ``cmd``: pure but for reading the machine."""
    topo = read_topology()
    plan = make_plan(topo, mode, threads=threads, socket=socket, pin=pin)
    if threads is not None and threads > topo.effective_cpus and not allow_oversubscription and warn:
        warn(f"{threads} threads for {topo.effective_cpus} effective CPUs "
             f"({topo.effective_source}): oversubscribed")
    env = dict(os.environ if environ is None else environ)
    env.update(plan.environment())
    preload = intel_openmp_preload()
    if preload:
        existing = env.get("LD_PRELOAD", "")
        if preload not in existing.replace(":", " ").split():
            env["LD_PRELOAD"] = f"{preload} {existing}".strip()
    return plan, env


def shell_line(cmd, plan, env, base=None) -> str:
    """The equivalent ``VAR=... numactl ... CMD`` line."""
    base = os.environ if base is None else base
    changed = [f"{k}={shlex.quote(v)}" for k, v in sorted(env.items()) if base.get(k) != v]
    numactl = plan.numactl_args()
    parts = changed + (["numactl"] + numactl if numactl else []) + [shlex.quote(c) for c in cmd]
    return " ".join(parts)


def launch(cmd: list[str], *, dry_run: bool = False, **options) -> int:
    def warn(message):
        print(f"threadguard: warning: {message}", file=sys.stderr)

    plan, env = prepare(cmd, warn=warn, **options)
    if dry_run:
        print(shell_line(cmd, plan, env))
        return 0
    if os.environ.get("THREADGUARD_FSROOT", "/") not in ("", "/") and (plan.pin or plan.memory_nodes):
        warn("machine facts come from THREADGUARD_FSROOT, not this machine: nothing pinned")
    elif plan.pin:
        os.sched_setaffinity(0, plan.cpus)
        if plan.memory_nodes:
            numa.set_mempolicy(numa.MPOL_BIND, plan.memory_nodes)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(cmd[0], cmd, env)
    except OSError as err:
        print(f"threadguard: error: cannot run {cmd[0]!r}: {err.strerror}", file=sys.stderr)
        return EXIT_NOT_FOUND
    return 0  # not reached
