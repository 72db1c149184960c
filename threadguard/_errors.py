"""The exceptions threadguard raises: small, carrying the pid and the reason.

Modelled on psutil's: an ``OSError`` from ``/proc`` is translated at the
boundary into one of these, with ``raise ... from err`` so the cause survives.
"""

from __future__ import annotations


class ThreadguardError(Exception):
    """Base class of every error threadguard raises on purpose."""


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


class UnsupportedPlatform(ThreadguardError):
    """The fact asked for exists only on Linux."""
