"""``threadguard run``: start a command with a plan applied.

The plan's variables go into the command's environment; affinity and the
memory policy are set on this process just before ``exec``, which keeps
both (as numactl does). OpenVINO reads none of the variables, so:

- Python children get a start-up hook (``threadguard/_startup``, first on
  ``PYTHONPATH``) that adds the plan's CPU properties to every
  ``Core.compile_model`` for the CPU device; the program's own values win;
- ``benchmark_app`` gets its own flags, ``-hint none -nthreads -nstreams
  -pin``, which it prints back, unless the user gave any of them;
- other programs follow their affinity (OpenVINO sizes itself to it).

When the command will load Intel and GNU OpenMP both (``command_openmp``
reads a Python command's imports), Intel's runtime is preloaded so that it
is initialised first and serves the GOMP_* symbols too (the OpenVINO
deployment guide's rule); into anything else, nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import stat
import sys
import tempfile

from . import numa
from ._command import exec_replacing, resolve
from ._fs import format_cpulist
from .command_openmp import runs_python
from .machine import read_topology
from .planner import make_plan
from .runtime_libs import intel_openmp_preload, ld_so_can_carry, parse_ld_preload


STARTUP_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_startup")
# benchmark_app's flags for what threadguard sets; any of them given: none added.
_BENCHMARK_APP_FLAGS = ("-hint", "--perf_hint", "-nthreads", "--number_threads", "-nstreams",
                        "--number_streams", "-pin", "--infer_threads_pinning")


def openvino_values(plan, mode: str) -> dict:
    """The CPU properties a child's OpenVINO gets: the plan's share, pinned
    when ``run`` pins (its CPUs are then its own)."""
    from .openvino import property_values
    return property_values(plan, plan.threads, plan.pin, mode)


def benchmark_app_flags(cmd: list[str], values: dict) -> list[str]:
    """The flags that make benchmark_app run as planned; none when the user
    gave any of them (2026.4 rejects -nthreads beside a hint other than none)."""
    if os.path.basename(cmd[0]) != "benchmark_app":
        return []
    given = {arg.split("=")[0] for arg in cmd[1:]} & set(_BENCHMARK_APP_FLAGS)
    if given:  # the user's own; the old guide's -nthreads alone needs -hint none since 2024
        return [] if given & {"-hint", "--perf_hint"} else ["-hint", "none"]
    return ["-hint", "none", "-nthreads", str(values["INFERENCE_NUM_THREADS"]),
            "-nstreams", str(values["NUM_STREAMS"]),
            "-pin", "YES" if values["ENABLE_CPU_PINNING"] else "NO"]


def intel_openmp_needed(cmd: list[str], env: dict) -> tuple[str | None, str]:
    """The libiomp5 to preload and why, when ``cmd`` will load Intel and
    GNU OpenMP both (``command_openmp``); ``(None, "")`` otherwise."""
    from ._errors import CommandNotStarted
    from .command_openmp import python_source, runtimes_loaded
    from .runtime_libs import shipped_runtimes

    shipped = shipped_runtimes()
    path = intel_openmp_preload(shipped)
    if path is None or not cmd:
        return None, ""
    try:
        program = resolve(cmd, env)
    except CommandNotStarted:
        return None, ""
    source = python_source(cmd, program)
    if source is None:
        return None, ""
    loads = runtimes_loaded(source[1], shipped)
    if "libgomp" in loads and "libiomp5" in loads:
        return path, f"{source[0]} {loads['libgomp']} and {loads['libiomp5']}"
    return None, ""


def prepare(cmd: list[str], *, threads=None, mode="throughput", socket=None, pin=None,
            allow_oversubscription=False, environ=None, warn=None, verbose=False, plan=None,
            note=None):
    """``(plan, env, cmd)`` for ``cmd``: pure but for reading the machine.
    ``plan``: one already made (an instance's)."""
    if plan is None:
        topo = read_topology()
        plan = make_plan(topo, mode, threads=threads, socket=socket, pin=pin)
        if (threads is not None and threads > topo.effective_cpus and not allow_oversubscription
                and warn):
            warn(f"{threads} threads for {topo.effective_cpus} effective CPUs "
                 f"({topo.effective_source}): oversubscribed")
    env = dict(os.environ if environ is None else environ)
    env.update(plan.environment())
    values = openvino_values(plan, mode)
    env["THREADGUARD_OPENVINO"] = json.dumps(values, separators=(",", ":"))
    path = env.get("PYTHONPATH", "")
    if STARTUP_DIR not in path.split(os.pathsep):
        env["PYTHONPATH"] = STARTUP_DIR + (os.pathsep + path if path else "")
    if verbose:
        env["THREADGUARD_VERBOSE"] = "1"
    cmd = [*cmd, *benchmark_app_flags(cmd, values)]
    preload, why = intel_openmp_needed(cmd, env)
    if preload and note:
        note(f"Intel OpenMP preloaded: {why}; Intel's runtime must start first")
    existing = env.get("LD_PRELOAD", "")
    if preload and not any(e.path and os.path.realpath(e.path) == os.path.realpath(preload)
                           for e in parse_ld_preload(existing)):
        carried = carriable(preload)
        if carried is None:
            if warn:
                warn(f"Intel OpenMP not preloaded: ld.so would split {preload!r} at its "
                     "space or colon, and no private link could be made for it")
        else:
            env["LD_PRELOAD"] = carried + (f":{existing}" if existing else "")
    return plan, env, cmd


def carriable(path: str) -> str | None:
    """``path``, or a link to it that LD_PRELOAD can carry (ld.so splits at
    spaces and colons), kept in a directory only this user may write; None
    when no such directory can be had."""
    if ld_so_can_carry(path):
        return path
    base = os.path.join(tempfile.gettempdir(), f"threadguard-{os.getuid()}")
    if not ld_so_can_carry(base):
        return None
    try:
        os.mkdir(base, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return None
    st = os.lstat(base)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        return None  # not ours alone: a link there could be swapped
    name = re.sub(r"[\s:]", "_", os.path.basename(path))
    link = os.path.join(base, f"{hashlib.sha256(os.fsencode(path)).hexdigest()[:12]}-{name}")
    try:
        if os.readlink(link) == path:
            return link
    except OSError:
        pass
    staged = f"{link}.{os.getpid()}"
    try:
        os.symlink(path, staged)
        os.replace(staged, link)  # the link swapped in whole
    except OSError:
        return None
    return link


def shell_line(cmd, plan, env, base=None) -> str:
    """The equivalent ``VAR=... numactl ... CMD`` line."""
    base = os.environ if base is None else base
    changed = [f"{k}={shlex.quote(v)}" for k, v in sorted(env.items()) if base.get(k) != v]
    numactl = plan.numactl_args()
    parts = changed + (["numactl"] + numactl if numactl else []) + [shlex.quote(c) for c in cmd]
    return " ".join(parts)


def _warn(message):
    print(f"threadguard: warning: {message}", file=sys.stderr)


def _note(message):
    print(f"threadguard: {message}", file=sys.stderr)


def launch(cmd: list[str], *, dry_run: bool = False, instances=0, **options) -> int:
    if instances != 0:  # None: one per NUMA node
        return launch_instances(cmd, instances, dry_run=dry_run, **options)
    warn = _warn
    plan, env, cmd = prepare(cmd, warn=warn, note=_note, **options)
    if dry_run:
        print(shell_line(cmd, plan, env))
        return 0
    program = resolve(cmd, env)  # before pinning anything: a command that cannot start is 127
    if options.get("verbose") and not runs_python(program):
        where = (f"pinned to {format_cpulist(plan.cpus)}" if plan.pin
                 else "every allowed CPU; --pin chooses them")
        print(f"threadguard: {cmd[0]} is not a Python program: OpenVINO in it sizes its "
              f"threads to its affinity ({where})", file=sys.stderr)
    if os.environ.get("THREADGUARD_FSROOT", "/") not in ("", "/") and (plan.pin or plan.memory_nodes):
        warn("machine facts come from THREADGUARD_FSROOT, not this machine: nothing pinned")
    elif plan.pin:
        os.sched_setaffinity(0, plan.cpus)
        if plan.memory_nodes:
            numa.set_mempolicy(numa.MPOL_BIND, plan.memory_nodes)
    sys.stdout.flush()
    sys.stderr.flush()
    exec_replacing(cmd, env)  # raises CommandNotStarted (exit 127) when it cannot
    return 0  # not reached


def _pinned_here() -> bool:
    return os.environ.get("THREADGUARD_FSROOT", "/") in ("", "/")


def launch_instances(cmd: list[str], instances: int | None, *, dry_run: bool = False,
                     threads=None, mode="throughput", verbose=False, **_ignored) -> int:
    """Copies of ``cmd``, one per NUMA node (or ``instances`` of them), each
    bound to its node's CPUs and memory with its share of threads. Output
    lines carry the copy's number; Ctrl-C or SIGTERM stops them all; the
    status is the worst one (a signal counts as 128 + N)."""
    import subprocess
    import threading

    from ._command import start, stop, shell_status
    from .planner import instance_plans

    plans = instance_plans(read_topology(), instances, mode, threads=threads)
    runs = [(plan, *prepare(cmd, plan=plan, mode=mode, verbose=verbose,
                            note=_note if i == 0 else None)[1:])
            for i, plan in enumerate(plans)]
    if dry_run:  # one line per copy
        for plan, env, command in runs:
            print(shell_line(command, plan, env))
        return 0
    pin = _pinned_here()
    if not pin:
        _warn("machine facts come from THREADGUARD_FSROOT, not this machine: nothing pinned")
    lock = threading.Lock()

    def relay(stream, out, prefix: bytes):
        for line in iter(stream.readline, b""):
            with lock:
                out.write(prefix + (line if line.endswith(b"\n") else line + b"\n"))
                out.flush()
        stream.close()

    procs, relays = [], []
    try:
        for i, (plan, env, command) in enumerate(runs):
            def place(plan=plan):  # in the child, before exec: as numactl does
                os.sched_setaffinity(0, plan.cpus)
                if plan.memory_nodes:
                    numa.set_mempolicy(numa.MPOL_BIND, plan.memory_nodes)
            proc = start(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         preexec_fn=place if pin else None)
            procs.append(proc)
            prefix = f"[{i}] ".encode()
            for stream, out in ((proc.stdout, sys.stdout.buffer), (proc.stderr, sys.stderr.buffer)):
                t = threading.Thread(target=relay, args=(stream, out, prefix), daemon=True)
                t.start()
                relays.append(t)
        for proc in procs:
            proc.wait()
    except BaseException:  # Ctrl-C, SIGTERM, or a copy that could not start
        for proc in procs:
            stop(proc)
        raise
    finally:
        for t in relays:
            t.join(5)
    return max(shell_status(p.returncode) for p in procs)
