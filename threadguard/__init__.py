"""threadguard: find, explain and prevent thread oversubscription.

The public API, nothing else: every name here is documented in README.md.
"""

from ._errors import AccessDenied, NoSuchProcess, ThreadguardError, ZombieProcess
from .threads import Census, take_census as census
from .guard import Applied, OversubscriptionWarning, budget, current_budget
from .inspection import inspect
from .report import Report
from .runtime_libs import loaded_runtimes as runtimes
from .planner import Plan, make_plan as plan
from .machine import Topology, read_topology as topology
from .workers import WorkerBudget, worker_budget

__all__ = [
    "topology", "census", "inspect", "runtimes", "plan", "budget", "current_budget",
    "worker_budget", "WorkerBudget",
    "Topology", "Census", "Report", "Plan", "Applied", "OversubscriptionWarning",
    "ThreadguardError", "NoSuchProcess", "AccessDenied", "ZombieProcess",
]
__version__ = "0.1.0"


def __getattr__(name):
    # threadguard.openvino is imported on first use: importing threadguard
    # never imports OpenVINO.
    if name == "openvino":
        import importlib
        return importlib.import_module(".openvino", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
