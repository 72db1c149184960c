"""A recording as Chrome Trace Event JSON (opens in Perfetto and chrome://tracing).

One track per thread, named ``pool: name (tid)`` and sorted so each pool's
threads sit together; ``running`` / ``runnable`` / ``sleeping`` slices
(consecutive samples in one state merged); counters for runnable threads,
active threads and the CPUs the process may use.
"""

from __future__ import annotations

from ..sampler import SLEEPING, Recording


def trace_events(rec: Recording) -> dict:
    us = 1e6
    events = [{"ph": "M", "pid": rec.pid, "name": "process_name",
               "args": {"name": f"process {rec.pid}"}}]
    order = sorted(rec.names, key=lambda tid: (rec.pools.get(tid, "other"), tid))
    for index, tid in enumerate(order):
        pool = rec.pools.get(tid, "other")
        events.append({"ph": "M", "pid": rec.pid, "tid": tid, "name": "thread_name",
                       "args": {"name": f"{pool}: {rec.names[tid]} ({tid})"}})
        events.append({"ph": "M", "pid": rec.pid, "tid": tid, "name": "thread_sort_index",
                       "args": {"sort_index": index}})
    open_slices: dict[int, list] = {}  # tid -> [state, start, end]

    def close(tid):
        state, start, end = open_slices.pop(tid)
        events.append({"ph": "X", "pid": rec.pid, "tid": tid, "name": state,
                       "cat": rec.pools.get(tid, "other"), "ts": round(start * us, 1),
                       "dur": round((end - start) * us, 1),
                       **({"cname": "grey"} if state == SLEEPING else {})})

    for sample in rec.samples:
        start = sample.t - sample.dt
        for tid, (state, _cpu, _delay) in sample.states.items():
            current = open_slices.get(tid)
            if current is not None and current[0] == state and abs(current[2] - start) < 1e-6:
                current[2] = sample.t
                continue
            if current is not None:
                close(tid)
            open_slices[tid] = [state, start, sample.t]
        for tid in [t for t in open_slices if t not in sample.states]:
            close(tid)
    for tid in list(open_slices):
        close(tid)
    for point in rec.series():
        ts = round(point["t"] * us, 1)
        events.append({"ph": "C", "pid": rec.pid, "name": "threads", "ts": ts,
                       "args": {"runnable (waiting)": point["runnable"],
                                "active": point["active"]}})
        events.append({"ph": "C", "pid": rec.pid, "name": "allowed CPUs", "ts": ts,
                       "args": {"CPUs": rec.effective_cpus}})
    return {"traceEvents": events, "displayTimeUnit": "ms",
            "otherData": {"threadguard": "record", "hz": rec.hz}}
