"""threadguard: find, explain and prevent thread oversubscription.

The public API, nothing else. Names are imported on first use, so
``import threadguard`` (and every command) loads only what it needs, and
never imports NumPy, OpenVINO or torch.
"""

from . import _fork_imports  # noqa: F401  (first: a forked child can import what another thread was importing)
from ._errors import AccessDenied, NoSuchProcess, ThreadguardError, ZombieProcess

__version__ = "0.1.0"

# public name -> (module, attribute in it; None for the module itself)
_LAZY = {
    "topology": ("machine", "read_topology"),
    "Topology": ("machine", "Topology"),
    "census": ("threads", "take_census"),
    "Census": ("threads", "Census"),
    "runtimes": ("runtime_libs", "loaded_runtimes"),
    "inspect": ("inspection", "inspect"),
    "Report": ("report", "Report"),
    "plan": ("planner", "make_plan"),
    "Plan": ("planner", "Plan"),
    "budget": ("guard", "budget"),
    "current_budget": ("guard", "current_budget"),
    "Applied": ("applied", "Applied"),
    "OversubscriptionWarning": ("guard", "OversubscriptionWarning"),
    "worker_budget": ("workers", "worker_budget"),
    "WorkerBudget": ("workers", "WorkerBudget"),
    "diagnose": ("doctor", "diagnose"),
    "openvino": ("openvino", None),
}

__all__ = sorted(_LAZY) + ["ThreadguardError", "NoSuchProcess", "AccessDenied", "ZombieProcess"]


def __getattr__(name):
    try:
        module_name, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    import importlib
    module = importlib.import_module(f".{module_name}", __name__)
    value = module if attribute is None else getattr(module, attribute)
    if attribute is not None:
        globals()[name] = value  # next time: a plain attribute lookup
    return value


def __dir__():
    return __all__
