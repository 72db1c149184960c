"""What the doctor inspects: the environment, imported modules, a PID, a command."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

from .._errors import NoSuchProcess

CHILD = r"""
import ctypes, importlib, sys
for entry in sys.argv[1:]:
    if "/" in entry or ".so" in entry:
        ctypes.CDLL(entry)
    else:
        importlib.import_module(entry)
sys.stdout.write("ready\n"); sys.stdout.flush()
sys.stdin.read()
"""


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
    from ..inspection import inspect
    proc = subprocess.Popen([sys.executable, "-c", CHILD, *entries], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        if line.strip() != "ready":
            proc.wait(30)
            err = proc.stderr.read().strip().splitlines()
            raise ImportError(err[-1] if err else f"the child exited with {proc.returncode}")
        report = inspect(proc.pid, interval)
        from ..libraries import loaded_libraries
        provider = gomp_provider(proc.pid, loaded_libraries(proc.pid))
        return report, provider
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


def inspect_pid(pid: int, interval: float):
    from ..inspection import inspect
    from ..libraries import loaded_libraries
    report = inspect(pid, interval)
    return report, gomp_provider(pid, loaded_libraries(pid))


def run_command(cmd: list[str], interval: float, echo=sys.stderr):
    """Run ``cmd``, sampling its threads while it runs; its stderr is passed
    through and kept for classification. Returns (worst report, stderr, status)."""
    from ..inspection import inspect
    from ..libraries import loaded_libraries
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE)
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
    worst = None
    provider = None
    while proc.poll() is None:
        try:
            report = inspect(proc.pid, interval, python_names=None)
        except NoSuchProcess:
            break
        except Exception:  # a sample that raced the exit
            time.sleep(0.05)
            continue
        if report.census.threads_total == 0 or any("zombie" in n for n in report.census.notes):
            break  # it exited while being sampled: keep the samples of it alive
        try:
            provider = gomp_provider(proc.pid, loaded_libraries(proc.pid)) or provider
        except Exception:
            pass
        if worst is None or (report.census.run_delay_ratio or 0) >= (worst.census.run_delay_ratio or 0) \
                or len(report.runtimes) > len(worst.runtimes):
            worst = report
    status = proc.wait()
    reader.join(timeout=5)
    return worst, b"".join(captured).decode(errors="replace"), status, provider
