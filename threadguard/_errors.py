"""The exceptions threadguard raises: small, carrying the pid and the reason.

Modelled on psutil's: an ``OSError`` from ``/proc`` is translated at the
boundary into one of these, with ``raise ... from err`` so the cause survives.
"""

from __future__ import annotations


class ThreadguardError(Exception):
    """Base class of every error threadguard raises on purpose. The command
    line prints its message on one line and exits with ``exit_code``."""

    exit_code = 2  # a usage error, or a target that could not be inspected


class ProcessError(ThreadguardError):
    """A process could not be inspected."""

    reason = "cannot be inspected"

    def __init__(self, pid: int, detail: str | None = None):
        self.pid = pid
        self.detail = detail
        text = f"process {pid} {self.reason}"
        super().__init__(f"{text}: {detail}" if detail else text)


class NoSuchProcess(ProcessError):
    reason = "does not exist"


class ZombieProcess(ProcessError):
    reason = "is a zombie (exited, not yet reaped)"


class AccessDenied(ProcessError):
    reason = "may not be inspected by this user"


class CommandNotStarted(ThreadguardError):
    """The command to run, record or watch could not be started."""

    exit_code = 127  # as shells report a command that cannot be run

    def __init__(self, program: str, reason: str):
        self.program, self.reason = program, reason
        super().__init__(f"cannot run {program!r}: {reason}")


class BadMachineFacts(ThreadguardError):
    """A dumped /proc + /sys tree (THREADGUARD_FSROOT) holds a file that cannot be used."""


class UnsupportedPlatform(ThreadguardError):
    """The fact asked for exists only on Linux."""
