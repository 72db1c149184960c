"""OpenVINO with a matched thread budget: properties, compile, verify, zero-copy.

OpenVINO's CPU plugin runs on TBB and, left alone, sizes itself to the whole
machine while NumPy, OpenMP and Python threads compete for the same cores.
Here its properties come from the same plan as every other pool:

- latency: one stream on one socket's physical cores, hyper-threading off
  (the deployment guide's ``numactl -m 0 --physcpubind 0-27 benchmark_app
  -api sync -nthreads 28`` on 2 x 28 cores);
- throughput: at least one stream per NUMA node, one thread per stream on
  budgets under 8 threads and four above, never more threads in total than
  the budget;
- inside ``threadguard.budget()``: OpenVINO's share is what the ledger grants.

Pinning: OpenVINO pins its TBB workers by default on Linux, and processes
pinned the same way pile onto the same cores (openvino#32444). It is turned
on only when the plan gives OpenVINO CPUs nothing else uses: a pinned plan
(the process is restricted to exactly those CPUs) with no other budget
section active. Otherwise it is off.

Imported on demand (``threadguard.openvino``): importing threadguard never
imports OpenVINO.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

from .guard import OversubscriptionWarning, current_budget, current_topology, sections_inside
from .machine import Topology
from .planner import Plan, make_plan

INSTALL_HINT = "OpenVINO is not installed: pip install 'threadguard[openvino]'"


class OpenVINOMismatchWarning(UserWarning):
    """A compiled model does not run with the threads it was asked for."""


class CopyWarning(UserWarning):
    """An input could not be shared with OpenVINO and was copied."""


def require_openvino():
    """The openvino module, or an ImportError that says how to install it."""
    try:
        import openvino
        import openvino.properties  # noqa: F401
    except ImportError as err:
        raise ImportError(INSTALL_HINT) from err
    return openvino


@dataclass(frozen=True)
class CompileRecord:
    """Requested vs effective vs observed, for one compiled model."""

    requested: dict
    effective: dict
    threads_before: int | None
    threads_after: int | None  # after the first inference
    new_threads_by_pool: dict = field(default_factory=dict)
    mismatches: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def _exclusive(plan: Plan, topo: Topology) -> bool:
    """Whether OpenVINO's CPUs are its own: a pinned plan, this process
    restricted to exactly those CPUs, and no other budget section running."""
    if not plan.pin or sections_inside() > 1:
        return False
    cpus = os.sched_getaffinity(0) if topo.fsroot == "/" else topo.allowed_cpus
    return set(cpus) == set(plan.cpus)


def _plan_for(budget, mode: str, topology: Topology | None) -> tuple[Plan, int, bool]:
    """The plan, OpenVINO's thread share, and whether its CPUs are its own."""
    section = budget if budget is not None else current_budget()
    if section is not None and section.threads:
        topo = section._topology or current_topology()
        plan = section.plan
        share = section.threads
        if plan.mode != mode:
            plan = make_plan(topo, mode, threads=share, pin=plan.pin)
        return plan, share, _exclusive(plan, topo)
    topo = topology or current_topology()
    plan = make_plan(topo, mode)
    return plan, plan.threads, _exclusive(plan, topo)


def properties(budget=None, *, mode: str = "latency", device: str = "CPU",
               topology: Topology | None = None) -> dict:
    """The OpenVINO CPU properties for the plan, keyed by the installed
    release's ``openvino.properties`` names."""
    require_openvino()  # a clear error when OpenVINO is not installed
    import openvino.properties as props
    import openvino.properties.hint as hints
    import openvino.properties.streams as streams

    if device.split(":")[0] != "CPU":
        raise ValueError(f"thread budgets apply to the CPU device, got {device!r}")
    plan, share, exclusive = _plan_for(budget, mode, topology)
    values = property_values(plan, share, exclusive, mode)
    return {
        props.inference_num_threads(): values["INFERENCE_NUM_THREADS"],
        streams.num(): values["NUM_STREAMS"],
        hints.performance_mode(): getattr(hints.PerformanceMode, values["PERFORMANCE_HINT"]),
        hints.enable_cpu_pinning(): values["ENABLE_CPU_PINNING"],
        hints.enable_hyper_threading(): values["ENABLE_HYPER_THREADING"],
        hints.scheduling_core_type(): getattr(hints.SchedulingCoreType,
                                              values["SCHEDULING_CORE_TYPE"]),
    }


def property_values(plan: Plan, share: int, exclusive: bool, mode: str) -> dict:
    """``properties()`` as OpenVINO's plain names and values, computed
    without OpenVINO: what ``threadguard run`` hands its children."""
    if mode == "latency":
        n_streams, threads, hint = 1, min(share, plan.threads), "LATENCY"
    else:
        # At least a stream per NUMA node; one thread per stream on small
        # budgets, four on large ones (OpenVINO's own throughput shapes).
        per_stream = 1 if share < 8 else 4
        n_streams = max(1, min(share, max(plan.streams, share // per_stream)))
        per_stream = max(1, share // n_streams)
        threads, hint = n_streams * per_stream, "THROUGHPUT"  # never more than the share
    return {
        "INFERENCE_NUM_THREADS": threads,
        "NUM_STREAMS": n_streams,
        "PERFORMANCE_HINT": hint,
        "ENABLE_CPU_PINNING": bool(exclusive),
        "ENABLE_HYPER_THREADING": bool(plan.hyper_threading),
        "SCHEDULING_CORE_TYPE": "PCORE_ONLY" if plan.core_type == "performance" else "ANY_CORE",
    }


_CHECKED = ("INFERENCE_NUM_THREADS", "NUM_STREAMS", "PERFORMANCE_HINT", "ENABLE_CPU_PINNING",
            "ENABLE_HYPER_THREADING", "SCHEDULING_CORE_TYPE")


def _normal(value):
    name = getattr(value, "name", None)
    return name if name is not None else (str(value) if not isinstance(value, (bool, int)) else value)


def effective_properties(compiled) -> dict:
    """What a compiled model reports it runs with."""
    out = {}
    for key in _CHECKED:
        try:
            out[key] = _normal(compiled.get_property(key))
        except Exception:  # a device or release without this property
            out[key] = None
    return out


def verify(compiled, requested: dict) -> tuple[str, ...]:
    """Properties whose effective value differs from the request (openvino#32444:
    a pipeline's sub-model reporting 16 threads after 1 was asked for)."""
    effective = effective_properties(compiled)
    mismatches = []
    for key, want in requested.items():
        if key in effective and effective[key] is not None and effective[key] != _normal(want):
            mismatches.append(f"{key}: asked {_normal(want)}, runs with {effective[key]}")
    return tuple(mismatches)


class GuardedModel:
    """A compiled model with its record; everything else is the model's own."""

    def __init__(self, compiled, record: CompileRecord):
        self.compiled = compiled
        self.record = record

    def __getattr__(self, name):
        return getattr(self.compiled, name)

    def __call__(self, *args, **kwargs):
        return self.compiled(*args, **kwargs)


def _first_inference(compiled) -> str | None:
    """Run one inference on zeros (static shapes only); a note when skipped."""
    import numpy as np

    inputs = {}
    for i, port in enumerate(compiled.inputs):
        shape = port.get_partial_shape()
        if shape.is_dynamic:
            return "dynamic input shape: the first inference was not run, threads not observed"
        dtype = port.get_element_type().to_dtype()
        inputs[i] = np.zeros([d.get_length() for d in shape], dtype)
    compiled.create_infer_request().infer(inputs)
    return None


def compile_model(model, device: str = "CPU", *, budget=None, mode: str = "latency",
                  core=None, config: dict | None = None, observe: bool = True) -> GuardedModel:
    """Compile with the plan's properties, then verify what OpenVINO did.

    ``model``: an ``openvino.Model`` or a path to an IR/ONNX file. ``config``
    keys win over the plan's, with a warning when they break the budget.
    The record holds the properties requested, read back, and the threads
    created by compile + first inference, attributed to their pools.
    """
    ov = require_openvino()
    from .attribution import attribute_threads
    from .threads import take_census

    if isinstance(model, (str, os.PathLike)) and not os.path.exists(model):
        raise FileNotFoundError(f"model file not found: {os.fspath(model)}")
    core = core or ov.Core()
    if device not in core.available_devices:
        raise ValueError(f"OpenVINO has no device {device!r}; available: "
                         f"{', '.join(core.available_devices)}")
    requested = properties(budget, mode=mode, device=device)
    known = core.get_property(device, "SUPPORTED_PROPERTIES")
    unknown = [key for key in (config or {}) if key not in known]
    if unknown:
        raise ValueError(f"OpenVINO {ov.__version__} does not know the {device} "
                         f"propert{'ies' if len(unknown) > 1 else 'y'} {', '.join(unknown)}")
    share = requested["INFERENCE_NUM_THREADS"]
    notes = []
    for key, value in (config or {}).items():
        requested[key] = value
    threads = _normal(requested.get("INFERENCE_NUM_THREADS"))
    streams = _normal(requested.get("NUM_STREAMS"))
    if isinstance(threads, int) and threads > share or isinstance(streams, int) and streams > share:
        warnings.warn(f"config asks OpenVINO for {threads} threads / {streams} streams; "
                      f"the budget gives it {share}", OversubscriptionWarning, stacklevel=2)
    before = take_census(interval=0).threads if observe else ()
    compiled = core.compile_model(model, device, requested)
    if observe:
        note = _first_inference(compiled)
        if note:
            notes.append(note)
    after = take_census(interval=0).threads if observe else ()
    new = sorted({t.tid for t in after} - {t.tid for t in before})
    by_pool: dict[str, int] = {}
    if new:
        owners = attribute_threads(tids=new).owners
        for tid in new:
            pool = owners[tid].pool if tid in owners else "unattributed"
            by_pool[pool] = by_pool.get(pool, 0) + 1
    mismatches = verify(compiled, requested)
    for mismatch in mismatches:
        warnings.warn(f"OpenVINO {mismatch}", OpenVINOMismatchWarning, stacklevel=2)
    from .pools.openvino import track
    track(compiled)
    record = CompileRecord(
        requested={k: _normal(v) for k, v in requested.items()},
        effective=effective_properties(compiled),
        threads_before=len(before) if observe else None,
        threads_after=len(after) if observe else None,
        new_threads_by_pool=by_pool, mismatches=mismatches, notes=tuple(notes))
    return GuardedModel(compiled, record)


# --- zero-copy inputs ------------------------------------------------------

def accept_nhwc_u8(model, *, model_layout: str = "NCHW"):
    """Make ``model`` take interleaved NHWC uint8 frames (OpenCV, NumPy images):
    the conversion to its planar float input happens inside the graph."""
    ov = require_openvino()
    from openvino.preprocess import PrePostProcessor

    ppp = PrePostProcessor(model)
    for i in range(len(model.inputs)):
        info = ppp.input(i)
        info.tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
        info.preprocess().convert_element_type(ov.Type.f32)
        info.model().set_layout(ov.Layout(model_layout))
    return ppp.build()


def frame_tensor(frame, *, dtype=None, on_copy: str = "warn"):
    """Wrap a frame as an ``openvino.Tensor`` sharing its memory (no copy).

    A HWC frame gets a batch axis as a view. When sharing is impossible (the
    array is not C-contiguous, or not of ``dtype``) the frame is copied and
    the reason reported: ``on_copy="warn"`` (CopyWarning), ``"raise"``
    (ValueError) or ``"allow"``. Returns ``(tensor, copied_reason)``.
    """
    ov = require_openvino()
    import numpy as np

    reason = None
    array = frame
    if dtype is not None and array.dtype != np.dtype(dtype):
        reason = f"dtype {array.dtype} is not {np.dtype(dtype)}"
        array = array.astype(dtype)
    if not array.flags.c_contiguous:
        reason = reason or "the array is not C-contiguous (a slice or a transposed view)"
        array = np.ascontiguousarray(array)
    if array.ndim == 3:
        array = array[np.newaxis]  # a view: same buffer
    if reason is not None:
        if on_copy == "raise":
            raise ValueError(f"frame would be copied: {reason}")
        if on_copy == "warn":
            warnings.warn(f"frame copied: {reason}", CopyWarning, stacklevel=2)
    return ov.Tensor(array, shared_memory=True), reason
