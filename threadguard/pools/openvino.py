"""OpenVINO's CPU plugin: the threads its compiled models were given.

OpenVINO keeps no list of compiled models that can be asked from outside, so
models are known when they were registered with ``track()`` (threadguard's
own ``compile_model`` does). Its workers run on TBB: the ``tbb`` adapter
reports that pool's size.
"""

from __future__ import annotations

import sys
import weakref

from . import Pool

_tracked: "weakref.WeakSet" = weakref.WeakSet()


def track(compiled_model) -> None:
    """Remember a compiled model so inspection can report its threads."""
    _tracked.add(compiled_model)


def detect() -> list[Pool]:
    if "openvino" not in sys.modules:
        return []
    pools = []
    for model in list(_tracked):
        try:
            threads = int(model.get_property("INFERENCE_NUM_THREADS"))
            streams = int(model.get_property("NUM_STREAMS"))
        except Exception as err:  # a released model, or a device without these
            pools.append(Pool("openvino", "openvino", None, source="unknown",
                              notes=(f"cannot read compiled model properties: {err}",)))
            continue
        pools.append(Pool("openvino", "openvino", threads, source="compiled model properties",
                          notes=(f"{streams} stream(s)",)))
    if not pools:
        pools.append(Pool("openvino", "openvino", None, source="unknown", notes=(
            "size known for models registered with threadguard.pools.openvino.track; "
            "its TBB workers: see tbb",)))
    return pools
