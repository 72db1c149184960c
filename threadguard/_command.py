"""The command a subcommand runs (``doctor``, ``record``, ``watch``, ``run``):
found and checked before it starts, started, stopped, and its status told
as shells tell it.

One place, so every subcommand gives the same one-line error and exit code
127 for a command that cannot start (missing, a directory, not executable,
no ``#!`` line, empty), and 128 + N for a command killed by signal N.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess

from ._errors import CommandNotStarted


def command_of(remainder: list[str]) -> list[str]:
    """The command after ``--`` of an ``argparse.REMAINDER`` argument."""
    return remainder[1:] if remainder[:1] == ["--"] else list(remainder)


def resolve(cmd: list[str], env: dict | None = None) -> str:
    """The program ``cmd`` would run, or CommandNotStarted saying why not."""
    if not cmd or not cmd[0]:
        raise CommandNotStarted("", "empty command")
    program = cmd[0]
    if "\0" in program:
        raise CommandNotStarted(program, "a NUL byte in the name")
    if os.sep in program:
        path = program
        if not os.path.exists(path):
            raise CommandNotStarted(program, "no such file")
    else:
        search = (env if env is not None else os.environ).get("PATH", os.defpath)
        path = shutil.which(program, path=search)
        if path is None:
            raise CommandNotStarted(program, "command not found")
    if os.path.isdir(path):
        raise CommandNotStarted(program, "is a directory")
    if not os.access(path, os.X_OK):
        raise CommandNotStarted(program, "permission denied (not executable)")
    return path


def _not_started(program: str, err: OSError) -> CommandNotStarted:
    if err.errno == errno.ENOEXEC:
        return CommandNotStarted(program, "not a program (no #! line or a foreign format)")
    return CommandNotStarted(program, err.strerror or str(err))


def start(cmd: list[str], **popen) -> subprocess.Popen:
    """``Popen(cmd)``, or CommandNotStarted with a one-line reason."""
    resolve(cmd, popen.get("env"))
    try:
        return subprocess.Popen(cmd, **popen)
    except OSError as err:
        raise _not_started(cmd[0], err) from None
    except ValueError as err:  # embedded NUL and the like
        raise CommandNotStarted(cmd[0], str(err)) from None


def exec_replacing(cmd: list[str], env: dict) -> None:
    """Become ``cmd`` (as numactl does); raises CommandNotStarted."""
    resolve(cmd, env)
    try:
        os.execvpe(cmd[0], cmd, env)
    except OSError as err:
        raise _not_started(cmd[0], err) from None
    except ValueError as err:
        raise CommandNotStarted(cmd[0], str(err)) from None


def stop(proc: subprocess.Popen, grace: float = 5.0) -> bool:
    """End ``proc`` if it still runs: SIGTERM, then SIGKILL after ``grace``
    seconds. True when it was still running (so this stopped it)."""
    if proc.poll() is not None:
        return False
    try:
        proc.terminate()
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return True


def shell_status(returncode: int) -> int:
    """A status as shells give it: 128 + N for a command killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode
