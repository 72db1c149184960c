"""The inspection report and its versioned JSON form (``threadguard.report/1``).

One typed object feeds every renderer (console, JSON). The JSON schema is
documented field by field in docs/report-schema.md; adding a field keeps
the version, renaming or removing one needs ``threadguard.report/2``.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the report only holds these; importing it loads none of them
    from .attribution import Attribution
    from .machine import Topology
    from .pools import Pool
    from .runtime_libs import PreloadEntry, Runtime
    from .threads import Census

SCHEMA = "threadguard.report/1"


@dataclass(frozen=True)
class Report:
    pid: int
    topology: "Topology | None"
    census: "Census | None"
    attribution: "Attribution | None"
    runtimes: "tuple[Runtime, ...]"
    runtimes_order_source: str | None
    ld_preload: "tuple[PreloadEntry, ...] | None"
    pools: "tuple[Pool, ...]"
    findings: tuple = ()
    notes: tuple[str, ...] = field(default_factory=tuple)
    command: str | None = None
    created: float = field(default_factory=time.time)

    def owner_pool(self, tid: int) -> str | None:
        if self.attribution is None:
            return None
        owner = self.attribution.owners.get(tid)
        return owner.pool if owner else None

    def to_dict(self) -> dict:
        return {
            "schema": SCHEMA,
            "threadguard_version": _version(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created)),
            "platform": {"system": platform.system(), "machine": platform.machine(),
                         "python": platform.python_version()},
            "topology": self.topology.to_dict() if self.topology else None,
            "process": self._process_dict(),
            "threads": self._threads_list(),
            "runtimes": [{"kind": r.kind, "name": r.name, "path": r.path, "version": r.version,
                          "load_index": r.load_index} for r in self.runtimes],
            "runtimes_order_source": self.runtimes_order_source,
            "ld_preload": (None if self.ld_preload is None else
                           [{"entry": e.entry, "path": e.path, "exists": e.exists}
                            for e in self.ld_preload]),
            "pools": [{"pool": p.pool, "library": p.library, "api": p.api,
                       "num_threads": p.num_threads,
                       "threads_observed": p.threads_observed, "path": p.path,
                       "source": p.source, "notes": list(p.notes)} for p in self.pools],
            "findings": [f.to_dict() if hasattr(f, "to_dict") else f for f in self.findings],
            "notes": list(self.notes),
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def _process_dict(self) -> dict:
        c = self.census
        d = {"pid": self.pid, "command": self.command,
             "threads_total": c.threads_total if c else None,
             "threads_active": c.threads_active if c else None,
             "peak_runnable": c.peak_runnable if c else None,
             "cpu_used": _round(c.cpu_used) if c else None,
             "run_delay_ratio": _round(c.run_delay_ratio) if c else None,
             "interval": _round(c.interval) if c else None,
             "throttling": None}
        if c and c.throttling is not None:
            t = c.throttling
            d["throttling"] = {"periods": t.periods, "throttled_periods": t.throttled_periods,
                               "throttled_share": _round(t.throttled_share),
                               "throttled_seconds": _round(t.throttled_seconds)}
        return d

    def _threads_list(self) -> list[dict]:
        if self.census is None:
            return []
        out = []
        for t in self.census.threads:
            owner = self.attribution.owners.get(t.tid) if self.attribution else None
            out.append({
                "tid": t.tid, "name": t.name, "state": t.state,
                "pool": owner.pool if owner else None,
                "library": owner.library if owner else None,
                "attribution": owner.method if owner else None,
                "python_name": owner.python_name if owner else None,
                "cpu_seconds": _round(t.cpu_seconds),
                "interval_cpu_seconds": _round(t.interval_cpu_seconds),
                "cpu_share": _round(t.cpu_share),
                "active": t.active,
                "run_delay_seconds": _round(t.run_delay_seconds),
                "last_cpu": t.last_cpu,
                "allowed_cpus": list(t.allowed_cpus) if t.allowed_cpus is not None else None,
            })
        return out


def _round(value, digits: int = 6):
    return round(value, digits) if isinstance(value, float) else value


def _version() -> str:
    from . import __version__
    return __version__


def command_line(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            parts = f.read().split(b"\0")
        return " ".join(os.fsdecode(p) for p in parts if p) or None
    except OSError:
        return " ".join(sys.argv) if pid == os.getpid() else None
