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

    if not cmd:
        return None, ""
    try:
        program = resolve(cmd, env)
    except CommandNotStarted:
        return None, ""
    source = python_source(cmd, program)  # first: the package scan below costs more
    if source is None:
        return None, ""
    shipped = shipped_runtimes()
    path = intel_openmp_preload(shipped)
    if path is None:
        return None, ""
    loads = runtimes_loaded(source[1], shipped)
    if "libgomp" in loads and "libiomp5" in loads:
        return path, f"{source[0]} {loads['libgomp']} and {loads['libiomp5']}"
    return None, ""


def prepare(cmd: list[str], *, threads=None, mode="throughput", socket=None, pin=None,
            allow_oversubscription=False, environ=None, warn=None, verbose=False, plan=None,
            note=None, preload=None):
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
    hook = True
    if cmd and os.path.basename(cmd[0]) == "benchmark_app":
        # Its own flags, which it prints back, and the hook for the rest of the
        # plan (the hint: "-hint none" leaves it unset). Flags of the user's
        # own: theirs alone, no hook adding to what they left to defaults.
        flags = benchmark_app_flags(cmd, values)
        cmd = [*cmd, *flags]
        hook = "-nthreads" in flags
    if hook:
        env["THREADGUARD_OPENVINO"] = json.dumps(values, separators=(",", ":"))
        path = env.get("PYTHONPATH", "")
        if STARTUP_DIR not in path.split(os.pathsep):
            env["PYTHONPATH"] = STARTUP_DIR + (os.pathsep + path if path else "")
        if verbose:
            env["THREADGUARD_VERBOSE"] = "1"
    preload, why = intel_openmp_needed(cmd, env) if preload is None else preload
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


def host_plans(plans, topo, *, dry_run: bool, verbose: bool):
    """``plans`` cut to this run's share of the host ledger (``--scope
    host``): one slot for them all, asking their total, held by this
    process; a dry run only reads the ledger. Returns the plans as they are
    when the ledger cannot be used (with a warning)."""
    from . import host
    from .planner import host_share
    asked = max(1, min(sum(p.threads for p in plans), topo.effective_cpus))
    pin = len(plans) == 1 and plans[0].pin
    try:
        if dry_run:
            grant, cpus, count = host.preview(asked, pin, topo)
        else:
            grant = host.hold(host.new_token(), asked, pin, lambda: topo, follow=False)
            cpus, count = host.pinned_cpus(), len(host.participants())
    except OSError as err:
        _warn(f"host ledger not used ({err}): the command's share is planned alone")
        return plans
    if verbose:
        _note(f"host ledger: granted {grant} of {asked} threads asked, "
              f"{count} participant(s)" + (f", CPUs {format_cpulist(cpus)}" if cpus else ""))
    if len(plans) == 1:
        return (host_share(topo, plans[0], grant, cpus),)
    return tuple(host_share(topo, p, max(1, p.threads * grant // asked)) for p in plans)


def launch(cmd: list[str], *, dry_run: bool = False, instances=0, scope: str = "process",
           **options) -> int:
    if instances != 0:  # None: one per NUMA node
        return launch_instances(cmd, instances, dry_run=dry_run, scope=scope, **options)
    warn = _warn
    if scope == "host":
        topo = read_topology()
        threads = options.get("threads")
        if (threads is not None and threads > topo.effective_cpus
                and not options.get("allow_oversubscription")):
            warn(f"{threads} threads for {topo.effective_cpus} effective CPUs "
                 f"({topo.effective_source}): oversubscribed")
        base = make_plan(topo, options.get("mode", "throughput"), threads=threads,
                         socket=options.get("socket"), pin=options.get("pin"))
        options["plan"] = host_plans((base,), topo, dry_run=dry_run,
                                     verbose=options.get("verbose", False))[0]
    plan, env, cmd = prepare(cmd, warn=warn, note=_note, **options)
    if scope == "host" and STARTUP_DIR in env.get("PYTHONPATH", "").split(os.pathsep):
        # A Python command follows its share while it runs: the hook takes
        # over this slot (exec keeps the pid and its start time).
        # With the CPUs it may use before run pins it: pinned, it would see
        # only its share and could never grow back.
        env["THREADGUARD_HOST_FOLLOW"] = (f"{os.getpid()}:{base.threads}:{int(bool(plan.pin))}:"
                                          f"{format_cpulist(sorted(os.sched_getaffinity(0)))}")
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


MAX_INSTANCES_PER_CPU = 4  # more copies than this per allowed CPU is a typo, not a plan
_CHUNK = 1 << 16  # a line longer than this is relayed in pieces (binary output has none)


def launch_instances(cmd: list[str], instances: int | None, *, dry_run: bool = False,
                     threads=None, mode="throughput", verbose=False, socket=None, pin=None,
                     allow_oversubscription=False, scope="process") -> int:
    """Copies of ``cmd``, one per NUMA node (or ``instances`` of them), each
    bound to its node's CPUs and memory with its share of threads. Output
    lines carry the copy's number; Ctrl-C or SIGTERM stops them all (each
    copy is its own process group: its children stop too); the status is
    the worst one (a signal counts as 128 + N)."""
    import signal
    import subprocess
    import threading

    from ._command import shell_status, start
    from .planner import instance_plans

    if socket is not None or pin:
        raise ValueError("--socket and --pin do not apply with --instances: each copy is "
                         "pinned to its NUMA node")
    topo = read_topology()
    if instances is not None and instances > MAX_INSTANCES_PER_CPU * len(topo.allowed_cpus):
        raise ValueError(f"--instances {instances} for {len(topo.allowed_cpus)} allowed CPUs: "
                         f"at most {MAX_INSTANCES_PER_CPU} per CPU")
    plans = instance_plans(topo, instances, mode, threads=threads)
    if scope == "host":
        plans = host_plans(plans, topo, dry_run=dry_run, verbose=verbose)
    if threads is not None and threads * len(plans) > topo.effective_cpus \
            and not allow_oversubscription:
        _warn(f"{len(plans)} copies x {threads} threads for {topo.effective_cpus} effective "
              f"CPUs ({topo.effective_source}): oversubscribed")
    preload = intel_openmp_needed(cmd, dict(os.environ))  # the same command: read once
    if preload[0]:
        _note(f"Intel OpenMP preloaded: {preload[1]}; Intel's runtime must start first")
    runs = [(plan, *prepare(cmd, plan=plan, mode=mode, verbose=verbose, preload=preload)[1:])
            for plan in plans]
    if dry_run:  # one line per copy
        for plan, env, command in runs:
            print(shell_line(command, plan, env))
        return 0
    placed = _pinned_here()
    if not placed:
        _warn("machine facts come from THREADGUARD_FSROOT, not this machine: nothing pinned")
    lock = threading.Lock()

    def relay(stream, out, prefix: bytes):
        """Prefixed lines, in pieces of at most _CHUNK; on a closed output,
        stop reading: the copy then gets SIGPIPE, as it would alone."""
        pending = b""
        try:
            while True:
                data = stream.read1(_CHUNK)
                if not data:
                    break
                pending += data
                *lines, pending = pending.split(b"\n")
                if len(pending) >= _CHUNK:
                    lines.append(pending)
                    pending = b""
                if lines:
                    with lock:
                        out.write(b"".join(prefix + line + b"\n" for line in lines))
                        out.flush()
            if pending:
                with lock:
                    out.write(prefix + pending + b"\n")
                    out.flush()
        except (BrokenPipeError, ValueError, OSError):
            pass
        finally:
            stream.close()

    def stop_all(first):
        """Signal every copy's whole group at once (``first``, SIGTERM after
        2 s), SIGKILL what is left after 5 s: a copy's own children too,
        which may ignore SIGINT (background jobs of a shell do)."""
        import time

        def alive(proc):
            proc.poll()  # reaps the leader once it ends
            try:
                os.killpg(proc.pid, 0)
            except OSError:
                return False
            return True

        start_time = time.monotonic()
        for sig, after in ((first, 0.0), (signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
            while time.monotonic() - start_time < after and any(alive(p) for p in procs):
                time.sleep(0.05)
            for proc in procs:
                if alive(proc):
                    try:
                        os.killpg(proc.pid, sig)
                    except OSError:
                        pass
        for proc in procs:
            proc.wait()

    procs, relays = [], []
    try:
        for i, (plan, env, command) in enumerate(runs):
            def place(plan=plan):  # in the child, before exec: as numactl does
                os.sched_setaffinity(0, plan.cpus)
                if plan.memory_nodes:
                    numa.set_mempolicy(numa.MPOL_BIND, plan.memory_nodes)
            proc = start(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         process_group=0, preexec_fn=place if placed else None)
            procs.append(proc)
            prefix = f"[{i}] ".encode()
            for stream, out in ((proc.stdout, sys.stdout.buffer), (proc.stderr, sys.stderr.buffer)):
                t = threading.Thread(target=relay, args=(stream, out, prefix), daemon=True)
                t.start()
                relays.append(t)
        for proc in procs:
            proc.wait()
    except KeyboardInterrupt:  # Ctrl-C (the copies' groups did not get it) or SIGTERM
        stop_all(signal.SIGINT)
        raise
    except BaseException:  # a copy that could not start
        stop_all(signal.SIGTERM)
        raise
    finally:
        for t in relays:
            t.join(5)
    return max(shell_status(p.returncode) for p in procs)
