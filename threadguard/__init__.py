"""threadguard: find, explain and prevent thread oversubscription."""

from ._errors import AccessDenied, NoSuchProcess, ThreadguardError, ZombieProcess
from .topology import Topology, read_topology as topology

__all__ = ["topology", "Topology", "ThreadguardError", "NoSuchProcess",
           "AccessDenied", "ZombieProcess"]
__version__ = "0.1.0"
