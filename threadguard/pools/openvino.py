"""OpenVINO's CPU plugin: the threads its compiled models were given.

OpenVINO keeps no list of compiled models that can be asked from outside, so
models are known when they were registered with ``track()`` (threadguard's
own ``compile_model`` does). Its workers run on TBB: the ``tbb`` family
reports that pool's size; threads created by OpenVINO's own libraries are
this family's.
"""

from __future__ import annotations

import sys
import weakref

from . import Family, Pool, Scan

_tracked: "weakref.WeakSet" = weakref.WeakSet()


def track(compiled_model) -> None:
    """Remember a compiled model so inspection can report its threads."""
    _tracked.add(compiled_model)


class OpenVINO(Family):
    key = library = api = "openvino"
    prefixes = ("libopenvino",)
    modules = ("openvino",)
    color = "#937860"

    def detect(self, scan: Scan) -> list[Pool]:
        if "openvino" not in sys.modules:
            return []
        pools = []
        for model in list(_tracked):
            try:
                threads = int(model.get_property("INFERENCE_NUM_THREADS"))
                streams = int(model.get_property("NUM_STREAMS"))
            except Exception as err:  # a released model, or a device without these
                pools.append(Pool("openvino", "openvino", None, source="unknown", pool=self.key,
                                  notes=(f"cannot read compiled model properties: {err}",)))
                continue
            pools.append(Pool("openvino", "openvino", threads, source="compiled model properties",
                              notes=(f"{streams} stream(s)",), pool=self.key))
        if not pools:
            pools.append(Pool("openvino", "openvino", None, source="unknown", pool=self.key, notes=(
                "size known for models registered with threadguard.pools.openvino.track; "
                "its TBB workers: see tbb",)))
        return pools


FAMILIES = (OpenVINO(),)
