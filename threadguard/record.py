"""``threadguard record``: sample a process (or a command) and write
``trace.json``, ``timeline.png``, ``timeline.svg`` and ``summary.json``.

The output directory is checked before anything starts. Every file is
created in a fresh private directory inside it and renamed into place, so
nothing is ever written through a link planted in the directory, and
``trace.json`` grows while the recording runs: if threadguard is killed,
what was sampled is there (a JSON array trace without its closing bracket,
which Perfetto and chrome://tracing read). The finished trace replaces it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile

from . import _command
from ._errors import ThreadguardError
from .render.trace import trace_events
from .sampler import Sampler


OUTPUTS = ("trace.json", "summary.json", "timeline.png", "timeline.svg")


class OutputDir:
    """Where a recording goes: checked up front, written without following links."""

    def __init__(self, path: str):
        self.path = path
        if os.path.lexists(path) and not os.path.isdir(path):
            what = "a link to nothing" if os.path.islink(path) else "not a directory"
            raise ThreadguardError(f"output {path!r} is {what}")
        self.created = []  # directories made here, deepest last
        ancestor = os.path.abspath(path)
        while not os.path.lexists(ancestor):
            self.created.insert(0, ancestor)
            ancestor = os.path.dirname(ancestor)
        for name in OUTPUTS:
            if os.path.isdir(os.path.join(path, name)) and not os.path.islink(
                    os.path.join(path, name)):
                raise ThreadguardError(f"output {os.path.join(path, name)!r} is a directory")
        try:
            os.makedirs(path, exist_ok=True)
            # mkdtemp: a new directory only this user can enter (0700).
            self.private = tempfile.mkdtemp(prefix=".threadguard-record-", dir=path)
        except OSError as err:
            raise ThreadguardError(f"cannot write to output {path!r}: {err.strerror}") from None

    def open(self, name: str, mode: str = "w"):
        return open(os.path.join(self.private, name), mode, encoding="utf-8")

    def staged(self, name: str) -> str:
        return os.path.join(self.private, name)

    def publish(self, name: str) -> str:
        """Move ``name`` from the private directory into place (a link or
        file already there is replaced, never followed)."""
        final = os.path.join(self.path, name)
        try:
            os.replace(os.path.join(self.private, name), final)
        except OSError as err:
            raise ThreadguardError(f"cannot write {final!r}: {err.strerror}") from None
        return final

    def close(self, failed: bool = False) -> None:
        shutil.rmtree(self.private, ignore_errors=True)
        for directory in reversed(self.created if failed else ()):  # made for nothing
            try:
                os.rmdir(directory)  # only while empty
            except OSError:
                break


class LiveTrace:
    """``trace.json`` written sample by sample while recording."""

    def __init__(self, out: OutputDir, recording):
        self.rec = recording
        self.file = out.open("trace.json")
        self.file.write("[\n")
        self.file.flush()
        self.path = out.publish("trace.json")  # the open file moves with it
        self.named: set[int] = set()

    def add(self, sample) -> None:
        rec, lines = self.rec, []
        start = round((sample.t - sample.dt) * 1e6, 1)
        dur = round(sample.dt * 1e6, 1)
        for tid, (state, _cpu, _delay) in sample.states.items():
            if tid not in self.named:
                self.named.add(tid)
                lines.append({"ph": "M", "pid": rec.pid, "tid": tid, "name": "thread_name",
                              "args": {"name": f"{rec.pools.get(tid, 'other')}: "
                                               f"{rec.names.get(tid, '?')} ({tid})"}})
            lines.append({"ph": "X", "pid": rec.pid, "tid": tid, "name": state,
                          "cat": rec.pools.get(tid, "other"), "ts": start, "dur": dur})
        self.file.write("".join(json.dumps(e) + ",\n" for e in lines))
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def write_outputs(rec, out: OutputDir, report=None, title: str = "") -> list[str]:
    """The finished files; a plot that fails costs only the pictures."""
    paths = []
    with out.open("trace.json") as f:
        json.dump(trace_events(rec), f)
    paths.append(out.publish("trace.json"))
    summary = report.to_dict() if report is not None else {"schema": "threadguard.report/1"}
    summary["recording"] = {"pid": rec.pid, "hz": rec.hz, "effective_cpus": rec.effective_cpus,
                            "threads": {str(t): {"name": n, "pool": rec.pools.get(t)}
                                        for t, n in rec.names.items()},
                            "series": rec.series(), "notes": rec.notes}
    with out.open("summary.json") as f:
        json.dump(summary, f, indent=1)
    paths.append(out.publish("summary.json"))
    try:
        from .render.timeline import plot_timeline
        names = ["timeline.png", "timeline.svg"]
        plot_timeline(rec, [out.staged(n) for n in names], title)
        paths += [out.publish(n) for n in names]
    except ImportError as err:
        print(f"threadguard: warning: no timeline pictures: {err}", file=sys.stderr)
    except KeyboardInterrupt:  # Ctrl-C while drawing: the recording itself is written
        print("threadguard: warning: timeline pictures skipped (interrupted)", file=sys.stderr)
    except Exception as err:  # the trace and the summary stand without them
        print(f"threadguard: warning: the timeline could not be drawn: {err}", file=sys.stderr)
    return paths


def record(*, pid: int | None = None, cmd: list[str] | None = None, seconds: float | None = None,
           hz: float = 20.0, out_dir: str = "threadguard-record", progress=None):
    """Record ``pid`` for ``seconds``, or ``cmd`` until it exits (or ``seconds``).

    Returns ``(recording, paths, status)``: ``status`` is the command's exit
    status as a shell gives it, 0 when threadguard itself stopped it (time
    up, Ctrl-C), None without a command."""
    if cmd:
        _command.resolve(cmd)  # nothing is created for a command that cannot start
    out = OutputDir(out_dir)
    proc = live = sampler = None
    status = None
    written = False
    try:
        if cmd:
            proc = _command.start(cmd)
            pid = proc.pid
        try:
            sampler = Sampler(pid, hz)
            report = None
            try:
                from .inspection import inspect
                report = inspect(pid, interval=0.0, python_names=None)
            except Exception:  # the process may already be gone: the recording still stands
                pass
            live = LiveTrace(out, sampler.recording)

            def on_sample(sample):
                live.add(sample)
                if progress is not None:
                    progress(sample)
            stop = (lambda: proc.poll() is not None) if proc is not None else None
            rec = sampler.run(seconds, on_sample=on_sample, stop=stop)
        finally:
            if live is not None:
                live.close()
            if proc is not None:  # time is up, or Ctrl-C: the files are still written
                stopped = _command.stop(proc) or (sampler is not None and sampler.interrupted)
                status = 0 if stopped else _command.shell_status(proc.returncode)
        title = " ".join([os.path.basename(cmd[0])] + cmd[1:]) if cmd else f"process {pid}"
        paths = write_outputs(rec, out, report, title[:80])
        written = True
    finally:
        out.close(failed=not written and live is None)
    return rec, paths, status
