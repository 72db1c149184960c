"""The ``threadguard`` command: subcommands, exit codes, one-line errors.

Exit codes: 0 success, 1 findings at or above the failing severity
(doctor), 2 usage error or a target that could not be inspected, 127 a
command that cannot start; ``run`` and ``record -- CMD`` return the
command's own status (128 + N when signal N killed it). Every error is one
line: commands raise typed errors (``threadguard._errors``) and ``main``
maps them to codes in one place.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

from ._command import command_of
from ._errors import ThreadguardError

EXIT_OK, EXIT_FINDINGS, EXIT_USAGE = 0, 1, 2


def _bounded(cast, low, high, what: str, *, low_open: bool = False):
    """An argparse type: ``cast`` the text, then check ``low <= value <= high``
    (``low < value`` with ``low_open``); the error names the value and range."""
    def parse(text: str):
        try:
            value = cast(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"{what}: got {text!r}") from None
        if not math.isfinite(value):  # nan passes every comparison
            raise argparse.ArgumentTypeError(f"{what}: got {text!r}")
        too_low = value <= low if low_open else value < low
        if too_low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{what}: got {text!r}")
        return value
    return parse


_pid = _bounded(int, 1, (1 << 31) - 1, "a process id is a whole number from 1 to 2147483647")
_interval = _bounded(float, 0, 3600, "interval must be 0 to 3600 seconds")
_count = _bounded(int, 1, None, "must be a whole number of at least 1")
_seconds = _bounded(float, 0, 3600, "seconds must be above 0 and at most 3600", low_open=True)


def _instances(text: str) -> int | None:
    """A number of copies, or None for ``auto`` (one per NUMA node)."""
    return None if text == "auto" else _count(text)


def _socket_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a socket number: {text!r}") from None


def _fsroot(text: str) -> str:
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"no such directory: {text!r}")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="threadguard",
        description="Find, explain and prevent thread oversubscription.")
    parser.add_argument("--version", action="version", version=f"threadguard {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    doc = sub.add_parser(
        "doctor", help="find threading problems and print the exact fix",
        description="Checks this environment (variables, installed runtimes, CPU limits); "
                    "with --import, --pid or -- CMD also a live process.")
    what = doc.add_mutually_exclusive_group()
    what.add_argument("--import", dest="imports", metavar="MODULES",
                      help="comma-separated modules (or shared-library paths) to load in a "
                           "child process and inspect, in that order")
    what.add_argument("--pid", type=_pid, help="inspect this running process")
    what.add_argument("--dask", metavar="ADDRESS",
                      help="report a Dask cluster by host (tcp://SCHEDULER:PORT)")
    doc.add_argument("--json", action="store_true", help="print the JSON report with findings")
    doc.add_argument("-q", "--quiet", action="store_true",
                     help="print only the findings (not what was checked)")
    doc.add_argument("--fail-on", choices=("error", "warning", "never"), default="error",
                     help="exit 1 when a finding reaches this severity (default: error)")
    doc.add_argument("--interval", type=_interval, default=0.5,
                     help="seconds to measure a live process over (default 0.5)")
    doc.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ...",
                     help="run a command and sample it while it runs")

    rec = sub.add_parser("record", help="sample a process's threads into a trace and a plot",
                         description="Writes trace.json (Perfetto/chrome://tracing), "
                                     "timeline.png, timeline.svg and summary.json.")
    rec.add_argument("-o", "--output", default="threadguard-record", help="output directory")
    rec.add_argument("--hz", type=_bounded(float, 0.01, 1000, "hz must be 0.01 to 1000"),
                     default=20.0, help="samples per second (default 20)")
    rec.add_argument("--pid", type=_pid, help="the process to record (with --seconds)")
    rec.add_argument("--seconds", type=_seconds, help="how long (default: until the command ends)")
    rec.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ...")

    wat = sub.add_parser("watch", help="a live view of a process's threads and pools")
    wat.add_argument("target", nargs=argparse.REMAINDER, metavar="PID | -- CMD ...",
                     help="a running process, or a command to start and watch")

    topo = sub.add_parser("topology", help="the machine: sockets, NUMA, cores, limits")
    topo.add_argument("--json", action="store_true", help="print JSON")
    topo.add_argument("--fsroot", type=_fsroot,
                      help="read machine facts from this dumped tree ($THREADGUARD_FSROOT)")
    topo.add_argument("--pid", type=_pid, help="the limits of this process (default: threadguard)")

    run = sub.add_parser(
        "run", help="start a command with a thread budget, CPU and memory placement",
        description="Start CMD with the plan applied: thread variables, CPU affinity, memory "
                    "binding; OpenVINO's CPU properties for Python children (a start-up hook) "
                    "and benchmark_app (its own flags); Intel OpenMP preloaded when CMD will "
                    "load Intel and GNU OpenMP both. The exit status is CMD's (the worst one "
                    "with --instances).")
    run.add_argument("--threads", type=_count, help="thread budget (default: planned)")
    run.add_argument("--mode", choices=("throughput", "latency"), default="throughput")
    run.add_argument("--socket", type=_socket_number, help="run on this socket (latency plan)")
    run.add_argument("--pin", action="store_true", help="pin to the planned CPUs")
    run.add_argument("--allow-oversubscription", action="store_true",
                     help="no warning when --threads exceeds the effective CPUs")
    run.add_argument("--dry-run", action="store_true",
                     help="print the equivalent shell line (env + numactl) instead")
    run.add_argument("--instances", type=_instances, default=0, metavar="N|auto",
                     help="start N copies, one per NUMA node (auto: one per node), each bound "
                          "to its node's CPUs and memory with its share of threads")
    run.add_argument("--scope", choices=("process", "host"), default="process",
                     help="host: take the command's share from the host ledger, beside "
                          "the other processes in it (see threadguard host)")
    run.add_argument("-v", "--verbose", action="store_true",
                     help="say on stderr what OpenVINO in the command was given")
    run.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ...")

    hst = sub.add_parser("host", help="the processes sharing this host's CPUs through the "
                                      "host ledger, and their grants")
    hst.add_argument("--json", action="store_true", help="print JSON")
    hst.add_argument("--ledger", metavar="PATH",
                     help="the ledger file (default: $THREADGUARD_LEDGER, else this user's)")

    bench = sub.add_parser(
        "bench-openvino", help="OpenVINO's defaults vs the threadguard plan, side by side",
        description="A benchmark_app-like run: latency percentiles and FPS with OpenVINO's "
                    "defaults and with the threadguard plan, beside an optional competing load.")
    bench.add_argument("model", help="an IR (.xml) or ONNX file, or 'demo' (a conv net built in code)")
    bench.add_argument("--mode", choices=("latency", "throughput"), default="latency")
    bench.add_argument("--load", choices=("numpy", "openmp", "none"), default="numpy")
    bench.add_argument("--seconds", type=_seconds, default=10.0, help="per run (default 10)")

    insp = sub.add_parser("inspect", help="threads, runtimes and pools of a process")
    insp.add_argument("--pid", type=_pid, help="the process to inspect (default: this one)")
    insp.add_argument("--interval", type=_interval, default=0.2,
                      help="seconds to measure over (default 0.2)")
    insp.add_argument("--json", action="store_true", help="print the JSON report")
    return parser


def _version() -> str:
    from . import __version__
    return __version__


def _cmd_topology(args) -> int:
    from .render.console import make_console, render_topology
    from .machine import read_topology

    topo = read_topology(args.fsroot, pid=args.pid)
    if args.json:
        import json
        print(json.dumps(topo.to_dict(), indent=2))
    else:
        render_topology(topo, make_console())
    return EXIT_OK


def _cmd_inspect(args) -> int:
    from .inspection import inspect
    from .render.console import make_console, render_report

    report = inspect(args.pid, args.interval)
    if args.json:
        print(report.to_json())
    else:
        render_report(report, make_console())
    return EXIT_OK


def _cmd_run(args) -> int:
    from .launch import launch

    cmd = command_of(args.cmd)
    if not args.cmd or args.cmd == ["--"]:
        print("threadguard: error: run needs a command: threadguard run [options] -- CMD ...",
              file=sys.stderr)
        return EXIT_USAGE
    return launch(cmd, threads=args.threads, mode=args.mode, socket=args.socket,
                  pin=args.pin or None, dry_run=args.dry_run, verbose=args.verbose,
                  instances=args.instances, scope=args.scope,
                  allow_oversubscription=args.allow_oversubscription)


def _cmd_host(args) -> int:
    from .host import snapshot
    snap = snapshot(args.ledger)
    if args.json:
        import json
        print(json.dumps(snap, indent=2))
    else:
        from .render.console import make_console
        from .render.host import render_host
        render_host(snap, make_console())
    return EXIT_OK


def _cmd_bench_openvino(args) -> int:
    try:
        from . import bench_openvino
        from .openvino import require_openvino
        require_openvino()
    except ImportError as err:
        print(f"threadguard: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    from .render.console import make_console

    console = make_console()
    try:
        results = bench_openvino.compare(args.model, args.mode, args.load, args.seconds, console)
    except FileNotFoundError as err:
        print(f"threadguard: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except RuntimeError as err:  # OpenVINO's own errors: keep its first line
        first = next((line for line in str(err).splitlines() if line.strip()
                      and not line.startswith("Exception from")), str(err))
        print(f"threadguard: error: OpenVINO: {first.strip()}", file=sys.stderr)
        return EXIT_USAGE
    bench_openvino.render(results, args.mode, args.load, console)
    return EXIT_OK


def _doctor_dask(args) -> int:
    import json
    import importlib.util
    if importlib.util.find_spec("distributed") is None:
        print("threadguard: error: --dask needs distributed: pip install distributed",
              file=sys.stderr)
        return EXIT_USAGE
    from .doctor import RANK
    from .doctor.findings import Finding
    from .integrations.dask import report_from_child
    from .render.findings import render_findings
    report = report_from_child(args.dask, interval=args.interval)
    findings = [Finding(f["code"], f["severity"], f["title"], tuple(f["evidence"]), f["fix"])
                for f in report["findings"]]
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        checked = []  # the hosts and workers, under the header, before the findings
        for host, h in report["hosts"].items():
            checked.append((f"host {host}", f"{h['cpus']} CPUs, {len(h['workers'])} workers, "
                                            f"{h['threads_demanded']} threads demanded"))
            for address, w in h["workers"].items():
                tg = w["threadguard"]
                checked.append((f"  {address}", f"{w['nthreads']} task threads, pools "
                                f"{[p['num_threads'] for p in w['pools']]}, run-delay "
                                f"{w['run_delay_ratio']:.2f}, budget "
                                f"{tg['threads_per_task'] if tg else 'none (no plugin)'}"))
        render_findings(findings, target=f"Dask cluster {args.dask}", checked=checked,
                        quiet=args.quiet)
    if args.fail_on == "never":
        return EXIT_OK
    return EXIT_FINDINGS if any(RANK[f.severity] >= RANK[args.fail_on] for f in findings) else EXIT_OK


def _cmd_doctor(args) -> int:
    from .doctor import RANK, doctor
    from .render.findings import render_findings

    cmd = command_of(args.cmd)
    if args.dask is not None:
        return _doctor_dask(args)
    if args.cmd and not cmd:
        raise ValueError("a command goes after --: threadguard doctor -- CMD ...")
    if cmd and (args.imports or args.pid):
        print("threadguard: error: give one target: --import, --pid or -- CMD", file=sys.stderr)
        return EXIT_USAGE
    if args.imports is not None:
        entries = [e.strip() for e in args.imports.split(",") if e.strip()]
        if not entries:
            print("threadguard: error: --import needs at least one module", file=sys.stderr)
            return EXIT_USAGE
        target, value, label = "import", entries, f"after importing {', '.join(entries)}"
    elif args.pid is not None:
        target, value, label = "pid", args.pid, f"process {args.pid}"
    elif cmd:
        target, value, label = "command", cmd, "command: " + " ".join(cmd)
    else:
        target, value, label = "environment", None, "this environment"
    try:
        report, extra = doctor(target, value=value, interval=args.interval)
    except ImportError as err:
        print(f"threadguard: error: cannot import in the child process: {err}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        import json
        data = report.to_dict()
        data.update(extra)
        print(json.dumps(data, indent=2))
    else:
        notes = list(report.notes)
        if "command_status" in extra:
            status = extra["command_status"]
            notes.append(f"the command exited with status {status}" if status >= 0 else
                         f"the command was killed by {_signal_name(-status)}")
        render_findings(report.findings, target=label, notes=notes,
                        checked=extra.get("checked", ()), quiet=args.quiet)
    if args.fail_on == "never":
        return EXIT_OK
    floor = RANK[args.fail_on]
    return EXIT_FINDINGS if any(RANK[f.severity] >= floor for f in report.findings) else EXIT_OK


def _target(args, cmd):
    if cmd and getattr(args, "pid", None):
        raise ValueError("give a PID or -- CMD, not both")
    if not cmd and not getattr(args, "pid", None):
        raise ValueError("give a PID (--pid for record) or -- CMD ...")


def _cmd_record(args) -> int:
    from .record import record

    cmd = command_of(args.cmd)
    _target(args, cmd)
    if args.pid and args.seconds is None:
        raise ValueError("--pid needs --seconds")
    shown = {"n": 0}

    def progress(sample):
        shown["n"] += 1
        if sys.stderr.isatty():
            sys.stderr.write(f"\rrecording {sample.t:6.1f}s, {len(sample.states)} threads, "
                             f"{shown['n']} samples  (Ctrl-C ends it, files are still written)")
            sys.stderr.flush()
    try:
        rec, paths, status = record(pid=args.pid, cmd=cmd or None, seconds=args.seconds,
                                    hz=args.hz, out_dir=args.output, progress=progress)
    except ImportError as err:
        print(f"threadguard: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    from .watch import summary
    print(summary(rec))
    for path in paths:
        print(f"wrote {path}")
    return status if status is not None else EXIT_OK


def _cmd_watch(args) -> int:
    from . import _command
    from .watch import watch

    target = args.target
    if target[:1] == ["--"] and len(target) > 1:
        cmd, pid = target[1:], None
        _command.resolve(cmd)  # before anything is printed
    elif len(target) == 1 and target[0] != "--":
        cmd, pid = [], None
        if target[0].isascii() and target[0].isdigit() and 0 < int(target[0]) < 1 << 31:
            pid = int(target[0])
        if pid is None:
            raise ValueError(f"not a process id: {target[0]!r} (a command goes after --)")
    else:
        raise ValueError("give a PID or -- CMD ...")
    proc = _command.start(cmd) if cmd else None
    try:
        print(watch(proc.pid if proc else pid,
                    stop=(lambda: proc.poll() is not None) if proc else None))
    except KeyboardInterrupt:
        pass
    finally:
        if proc is not None:
            _command.stop(proc)
    return EXIT_OK


def _signal_name(number: int) -> str:
    import signal
    try:
        return f"{signal.Signals(number).name} (signal {number})"
    except ValueError:
        return f"signal {number}"


def _one_line(err: Exception) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= 400 else text[:397] + "..."


COMMANDS = {"doctor": _cmd_doctor, "record": _cmd_record, "watch": _cmd_watch, "topology": _cmd_topology, "inspect": _cmd_inspect, "run": _cmd_run, "host": _cmd_host,
            "bench-openvino": _cmd_bench_openvino}


def _stop_requested(signum, frame):
    raise KeyboardInterrupt  # as Ctrl-C: commands stop what they started, write what they have


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    import signal
    for name in ("SIGTERM", "SIGHUP"):  # timeout(1), a closed terminal: clean up as on Ctrl-C
        if hasattr(signal, name) and signal.getsignal(getattr(signal, name)) == signal.SIG_DFL:
            signal.signal(getattr(signal, name), _stop_requested)
    try:
        return COMMANDS[args.command](args)
    except ThreadguardError as err:
        return _error(_one_line(err), err.exit_code)
    except ValueError as err:
        return _error(_one_line(err), EXIT_USAGE)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except OSError as err:  # a full disk or closed output, an unreadable file
        return _error(_one_line(err), EXIT_USAGE)


def _error(message: str, code: int) -> int:
    try:
        print(f"threadguard: error: {message}", file=sys.stderr)
    except OSError:  # stderr itself cannot be written
        pass
    return code


if __name__ == "__main__":
    sys.exit(main())
