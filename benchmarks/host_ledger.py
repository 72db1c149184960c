"""Three independent processes of matmuls: ``budget()`` vs ``budget(scope="host")``.

Each process is started on its own (no parent shares anything with it but a
start signal), runs 300 matmuls of 300x300 from one thread inside a budget,
and reports its time. Process scope: each grants itself every CPU (what any
per-process budget sees). Host scope: the three share the CPUs through the
ledger. Rounds alternate, side by side in one run; the wall time of a round
is from the signal until the last process ends.

Also measured side by side: joining and leaving the ledger (a lone
host-scoped section), and entries that change no membership, host vs
process scope: nested in a section of the same thread, and beside a
section another thread holds (CPU time of the calling thread; one process
per scope and round, the rounds interleaved).

Costs are counted in instructions too (``--instructions``: valgrind, as
``budget_instructions.py``), since CPU times on a shared VM swing.

    python benchmarks/host_ledger.py [--repeat 5] [--processes 3] [--instructions]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import os, sys, time
import numpy as np
import threadguard
a = np.random.RandomState(0).rand(300, 300)
a @ a
go, scope = sys.argv[1], sys.argv[2]
while not os.path.exists(go):
    time.sleep(0.001)
with threadguard.budget(scope=scope) as b:
    start = time.perf_counter()
    for _ in range(300):
        a @ a
    print(time.perf_counter() - start, b.threads, flush=True)
"""


def round_of(scope: str, processes: int, ledger: str) -> tuple[float, list[str]]:
    with tempfile.TemporaryDirectory() as tmp:
        go = os.path.join(tmp, "go")
        env = dict(os.environ, CI="true", THREADGUARD_LEDGER=ledger)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        children = [subprocess.Popen([sys.executable, "-c", CHILD, go, scope], env=env,
                                     stdout=subprocess.PIPE, text=True)
                    for _ in range(processes)]
        time.sleep(1.5)  # every child imported numpy and waits
        start = time.perf_counter()
        open(go, "w").close()
        outs = [c.communicate()[0].split() for c in children]
        wall = time.perf_counter() - start
    return wall, [o[1] if len(o) > 1 else "?" for o in outs]


def batch(section, calls: int) -> float:
    """CPU seconds of the calling thread per enter+exit of ``section()``."""
    start = time.thread_time()
    for _ in range(calls):
        with section():
            pass
    return (time.thread_time() - start) / calls


def cpu_per_call(section, batches: int = 15, calls: int = 2000) -> float:
    """Median CPU seconds of one enter+exit of ``section()``."""
    return statistics.median(batch(section, calls) for _ in range(batches))


# Entries that change no membership, in the main thread: nested in its own
# section, or beside a section another thread holds for the whole loop.
NO_CHANGE = """
import ctypes, glob, os, sys, sysconfig
import numpy, threadguard
site = sysconfig.get_paths()["purelib"]
ctypes.CDLL(glob.glob(os.path.join(site, "scikit_learn.libs", "libgomp*.so*"))[0])
numpy.ones((64, 64)) @ numpy.ones((64, 64))
sys.path.insert(0, os.environ["BENCHMARKS"])
from host_ledger import around
scope = os.environ["SCOPE"]
with around(os.environ["CASE"], scope):
    for _ in range(50):
        with threadguard.budget(1, scope=scope): pass
    for _ in range(int(sys.argv[1])):
        with threadguard.budget(1, scope=scope): pass
"""
CASES = ("nested", "beside")


def no_change_instructions(ledger: str) -> dict[tuple[str, str], float]:
    """Instructions per enter+exit of the main thread, by (case, scope)."""
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    from budget_instructions import main_thread_instructions
    out = {}
    for case in CASES:
        for scope in ("process", "host"):
            env = dict(os.environ, SCOPE=scope, CASE=case, THREADGUARD_LEDGER=ledger,
                       BENCHMARKS=here)
            with tempfile.TemporaryDirectory() as tmp:
                few = main_thread_instructions(1000, tmp, NO_CHANGE, env)
                many = main_thread_instructions(3000, tmp, NO_CHANGE, env)
            out[case, scope] = (many - few) / 2000
    return out


@contextlib.contextmanager
def around(case: str, scope: str):
    """What the entries measured are inside of: a section of their own
    thread (nested), or one another thread holds meanwhile (beside)."""
    import threading
    import threadguard
    if case == "nested":
        with threadguard.budget(1, scope=scope):
            yield
        return
    inside, done = threading.Event(), threading.Event()

    def holder():
        with threadguard.budget(1, scope=scope):
            inside.set()
            done.wait()

    t = threading.Thread(target=holder)
    t.start()
    inside.wait()
    try:
        yield
    finally:
        done.set()
        t.join()


# One scope per process, as in real use. (Alternated in one process, the
# host-scoped batches measured 4-19% slower, in processes of their own not,
# with the same instructions counted either way: the two share the
# interpreter's specialized instructions, a state neither has alone.)
NO_CHANGE_CPU = """
import statistics, sys, numpy, threadguard
sys.path.insert(0, sys.argv[3])
from host_ledger import around, batch
case, scope = sys.argv[1], sys.argv[2]
with around(case, scope):
    batch(lambda: threadguard.budget(1, scope=scope), 500)
    print(statistics.median(batch(lambda: threadguard.budget(1, scope=scope), 2000)
                            for _ in range(5)))
"""


def no_change_cpu(case: str, ledger: str, rounds: int = 7) -> dict[str, float]:
    """Median CPU seconds per enter+exit by scope: one process per scope
    and round, the scopes' rounds interleaved (a shared machine's slow
    spells fall on both alike)."""
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, CI="true", THREADGUARD_LEDGER=ledger)
    samples: dict[str, list[float]] = {"process": [], "host": []}
    for _ in range(rounds):
        for scope, values in samples.items():
            out = subprocess.run([sys.executable, "-c", NO_CHANGE_CPU, case, scope, here],
                                 env=env, check=True, capture_output=True, text=True).stdout
            values.append(float(out.split()[-1]))
    return {scope: statistics.median(values) for scope, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--instructions", action="store_true",
                        help="also count the no-change entries' instructions (valgrind)")
    args = parser.parse_args()
    ledger = os.path.join(tempfile.mkdtemp(prefix="threadguard-bench-"), "host.ledger")
    walls: dict[str, list[float]] = {"process": [], "host": []}
    granted: dict[str, set] = {"process": set(), "host": set()}
    for _ in range(args.repeat):
        for scope in walls:
            wall, threads = round_of(scope, args.processes, ledger)
            walls[scope].append(wall)
            granted[scope].update(threads)
    print(f"{args.processes} processes x 300 matmuls 300x300, {args.repeat} rounds each")
    for scope, values in walls.items():
        print(f"  budget(scope={scope!r}): median {statistics.median(values):.2f} s "
              f"(min {min(values):.2f}, max {max(values):.2f}); OpenBLAS threads as each ended "
              f"{sorted(granted[scope])}")
    ratio = statistics.median(walls["process"]) / statistics.median(walls["host"])
    print(f"  host scope is {ratio:.2f}x faster")

    os.environ["THREADGUARD_LEDGER"] = ledger
    import numpy  # noqa: F401  (a pool to cap, as in real use)
    import threadguard
    lone_process = cpu_per_call(lambda: threadguard.budget(1), calls=500)
    lone_host = cpu_per_call(lambda: threadguard.budget(1, scope="host"), calls=500)
    cpu = {(case, scope): value for case in CASES
           for scope, value in no_change_cpu(case, ledger).items()}
    print("enter+exit, CPU time per call (median of rounds, one process per scope and round,"
          " interleaved):")
    print(f"  lone budget(1): process {lone_process * 1e6:.1f} us, host (join and leave) "
          f"{lone_host * 1e6:.1f} us")
    for case, what in zip(CASES, ("nested in a section of its thread",
                                  "beside another thread's section")):
        p, h = cpu[case, "process"], cpu[case, "host"]
        print(f"  no change in membership, {what}: process {p * 1e6:.1f} us, "
              f"host {h * 1e6:.1f} us ({h / p:.2f}x)")
    if args.instructions:
        counts = no_change_instructions(ledger)
        print("enter+exit, instructions of the calling thread (valgrind):")
        for case in CASES:
            p, h = counts[case, "process"], counts[case, "host"]
            print(f"  {case}: process {p:,.0f}, host {h:,.0f} ({h / p:.3f}x)")


if __name__ == "__main__":
    main()
