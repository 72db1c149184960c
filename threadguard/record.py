"""``threadguard record``: sample a process (or a command) and write
``trace.json``, ``timeline.png``, ``timeline.svg`` and ``summary.json``."""

from __future__ import annotations

import json
import os
import subprocess

from .render.timeline import plot_timeline
from .render.trace import trace_events
from .sampler import Sampler


def write_outputs(rec, out_dir: str, report=None, title: str = "") -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    trace = os.path.join(out_dir, "trace.json")
    with open(trace, "w") as f:
        json.dump(trace_events(rec), f)
    paths.append(trace)
    pictures = [os.path.join(out_dir, "timeline.png"), os.path.join(out_dir, "timeline.svg")]
    plot_timeline(rec, pictures, title)
    paths += pictures
    summary = report.to_dict() if report is not None else {"schema": "threadguard.report/1"}
    summary["recording"] = {"pid": rec.pid, "hz": rec.hz, "effective_cpus": rec.effective_cpus,
                            "threads": {str(t): {"name": n, "pool": rec.pools.get(t)}
                                        for t, n in rec.names.items()},
                            "series": rec.series(), "notes": rec.notes}
    path = os.path.join(out_dir, "summary.json")
    with open(path, "w") as f:
        json.dump(summary, f, indent=1)
    paths.append(path)
    return paths


def record(*, pid: int | None = None, cmd: list[str] | None = None, seconds: float | None = None,
           hz: float = 20.0, out_dir: str = "threadguard-record", progress=None):
    """Record ``pid`` for ``seconds``, or ``cmd`` until it exits (or ``seconds``)."""
    proc = None
    if cmd:
        proc = subprocess.Popen(cmd)
        pid = proc.pid
    try:
        sampler = Sampler(pid, hz)
        report = None
        try:
            from .inspection import inspect
            report = inspect(pid, interval=0.0, python_names=None)
        except Exception:  # the process may already be gone: the recording still stands
            pass
        stop = (lambda: proc.poll() is not None) if proc is not None else None
        rec = sampler.run(seconds, on_sample=progress, stop=stop)
    finally:
        if proc is not None:
            if proc.poll() is None:  # time is up, or Ctrl-C: the files are still written
                proc.terminate()
            status = proc.wait()
    title = " ".join([os.path.basename(cmd[0])] + cmd[1:]) if cmd else f"process {pid}"
    paths = write_outputs(rec, out_dir, report, title[:80])
    return rec, paths, (status if proc is not None else None)
