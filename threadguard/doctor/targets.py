"""What the doctor inspects: the environment, imported modules, a PID, a
command. Each target returns one ``Checked``: every fact read once."""

from __future__ import annotations

from typing import NamedTuple

import select
import subprocess
import sys
import tempfile
import threading
import time

from .. import _command
from .._errors import NoSuchProcess

# What the imported modules print goes to stderr: stdout carries only the
# child's word that it is ready to be inspected.
CHILD = r"""
import ctypes, importlib, os, sys
sys.stdout = sys.stderr
for entry in sys.argv[1:]:
    if "/" in entry or ".so" in entry:
        ctypes.CDLL(entry)
    else:
        importlib.import_module(entry)
sys.stderr.flush()
os.write(1, b"threadguard-ready\n")
sys.stdin.read()
"""
IMPORT_TIMEOUT = 600.0  # seconds for the imports (torch and OpenVINO take a few)


class Checked(NamedTuple):
    """The facts of one target."""

    report: object  # threadguard.report.Report
    environ: dict | None  # the target's own environment (None: unknown)
    gomp_provider: str | None  # the library every GOMP_* call binds to
    stderr: str = ""  # a command's, for its messages
    status: int | None = None  # a command's exit status (negative: killed by that signal)


def gomp_provider(pid: int, libraries) -> str | None:
    """The first library in load order that defines GOMP_parallel: the one
    every later GOMP_* call binds to."""
    from .. import _procmem
    try:
        with _procmem.ProcessMemory(pid) as mem:
            for lib in libraries.libraries:
                if not lib.dynamic:
                    continue
                try:
                    if _procmem.SymbolTable(mem, lib.base, lib.dynamic).lookup("GOMP_parallel"):
                        return lib.path
                except (OSError, LookupError):
                    continue
    except Exception:  # unreadable memory: nothing to say
        return None
    return None


def inspect_imports(entries: list[str], interval: float):
    """Load modules (or shared libraries) in a fresh interpreter and inspect it."""
    from ..inspection import gather
    errors = tempfile.TemporaryFile()  # a file, not a pipe: a chatty import cannot block
    proc = subprocess.Popen([sys.executable, "-c", CHILD, *entries], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=errors)
    try:
        ready = select.select([proc.stdout], [], [], IMPORT_TIMEOUT)[0]
        line = proc.stdout.readline() if ready else b""
        if line.strip() != b"threadguard-ready":
            proc.kill()
            proc.wait()
            errors.seek(0)
            err = errors.read().decode(errors="replace").strip().splitlines()
            if not ready:
                raise ImportError(f"the imports took over {IMPORT_TIMEOUT:.0f} s")
            raise ImportError(err[-1] if err else
                              f"the child exited with {_command.shell_status(proc.returncode)}")
        return _checked(proc.pid, gather(proc.pid, interval))
    finally:
        try:
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        errors.close()


def inspect_pid(pid: int, interval: float) -> Checked:
    from ..inspection import gather
    return _checked(pid, gather(pid, interval))


def _checked(pid: int, facts) -> Checked:
    """A live process's facts: its report and environment, and who serves GOMP_*."""
    return Checked(facts.report, facts.environ,
                   gomp_provider(pid, facts.libraries) if facts.libraries else None)


def run_command(cmd: list[str], interval: float, echo=sys.stderr) -> Checked:
    """Run ``cmd``, sampling its threads while it runs; its stderr is passed
    through and kept for classification. The report is the worst sample's
    (report None when it ended before one)."""
    proc = _command.start(cmd, stderr=subprocess.PIPE)
    captured: list[bytes] = []

    def pump():
        for chunk in iter(lambda: proc.stderr.read1(65536), b""):
            captured.append(chunk)
            if echo is not None:
                echo.buffer.write(chunk) if hasattr(echo, "buffer") else echo.write(
                    chunk.decode(errors="replace"))
                echo.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        return _sample_until_exit(proc, interval, reader, captured)
    finally:  # Ctrl-C or SIGTERM: the command does not outlive the doctor
        _command.stop(proc)


def _sample_until_exit(proc, interval, reader, captured) -> Checked:
    from ..inspection import gather
    worst = None
    environ = provider = None
    while proc.poll() is None:
        try:
            facts = gather(proc.pid, interval, python_names=None)
        except NoSuchProcess:
            break
        except Exception:  # a sample that raced the exit
            time.sleep(0.05)
            continue
        report = facts.report
        if report.census.threads_total == 0 or any("zombie" in n for n in report.census.notes):
            break  # it exited while being sampled: keep the samples of it alive
        environ = facts.environ if facts.environ is not None else environ
        if facts.libraries is not None:
            provider = gomp_provider(proc.pid, facts.libraries) or provider
        if worst is None or (report.census.run_delay_ratio or 0) >= (worst.census.run_delay_ratio or 0) \
                or len(report.runtimes) > len(worst.runtimes):
            worst = report
    status = proc.wait()
    reader.join(timeout=5)
    return Checked(worst, environ, provider, b"".join(captured).decode(errors="replace"), status)
