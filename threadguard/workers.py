"""Budgets for worker processes: each of n workers gets an equal share.

Usable as the initializer of ``multiprocessing.Pool`` and
``concurrent.futures.ProcessPoolExecutor``, from a gunicorn ``post_fork``
hook, and as joblib/loky's ``inner_max_num_threads``. A worker's share is
applied for the life of the process (it is not restored: the worker exits).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref

from .guard import budget, current_topology
from .planner import Plan, check_count, make_plan
from .machine import Topology

_held: list = []  # budgets entered for the life of this worker process


def apply_share(share: Plan, scope: str = "process") -> budget:
    """Apply one worker's share to this process until it exits (``scope="host"``:
    as its share of the host ledger, beside every other participant)."""
    section = budget(plan=share, pin=share.pin, env=True, scope=scope)
    section.__enter__()
    _held.append(section)
    return section


def claim_slot(directory: str) -> int:
    """The next free worker number: the first file this process creates
    exclusively in ``directory``. Needs no lock and no shared memory, so it
    works for fork, spawn and forkserver pools alike."""
    slot = 0
    while True:
        try:
            os.close(os.open(os.path.join(directory, str(slot)),
                             os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            return slot
        except FileExistsError:
            slot += 1


def _initializer(shares: tuple[Plan, ...], directory: str, scope: str = "process") -> None:
    apply_share(shares[claim_slot(directory) % len(shares)], scope)


class WorkerBudget:
    """Shares of this machine for ``n_workers`` processes.

    ``disjoint=True`` also gives each worker its own CPUs (whole cores), so
    workers pinned this way never compete for a core. ``scope="host"``: each
    worker also joins the host ledger, so the pool shares the host with
    every other participant (its disjoint CPUs then come from the ledger).
    """

    def __init__(self, n_workers: int, *, mode: str = "throughput", disjoint: bool = False,
                 topology: Topology | None = None, scope: str = "process"):
        self.n_workers = check_count(n_workers, "n_workers")
        if scope not in ("process", "host"):
            raise ValueError(f"scope must be one of process, host, got {scope!r}")
        self.scope = scope
        topo = topology or current_topology()
        base = make_plan(topo, mode, pin=True if disjoint else None)
        self.shares = base.split(self.n_workers, disjoint=disjoint)
        self._slots: str | None = None

    @property
    def threads(self) -> int:
        """Threads per worker; joblib/loky's ``inner_max_num_threads``."""
        return self.shares[0].threads

    inner_max_num_threads = threads

    @property
    def initializer(self):
        return _initializer

    @property
    def initargs(self) -> tuple:
        """Arguments for ``initializer``: the shares and where workers claim slots."""
        if self._slots is None:
            self._slots = tempfile.mkdtemp(prefix="threadguard-slots-")
            weakref.finalize(self, shutil.rmtree, self._slots, True)
        return (self.shares, self._slots, self.scope)

    def apply(self, slot: int) -> budget:
        """Apply share ``slot`` (taken modulo n) in this process: for hooks
        that know their worker number, such as gunicorn's ``worker.age``."""
        return apply_share(self.shares[slot % self.n_workers], self.scope)


def worker_budget(n_workers: int, **kwargs) -> WorkerBudget:
    """``WorkerBudget(n_workers, ...)``: shares for a pool of worker processes."""
    return WorkerBudget(n_workers, **kwargs)
