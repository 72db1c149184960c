"""Three independent processes of matmuls: ``budget()`` vs ``budget(scope="host")``.

Each process is started on its own (no parent shares anything with it but a
start signal), runs 300 matmuls of 300x300 from one thread inside a budget,
and reports its time. Process scope: each grants itself every CPU (what any
per-process budget sees). Host scope: the three share the CPUs through the
ledger. Rounds alternate, side by side in one run; the wall time of a round
is from the signal until the last process ends.

Also measured side by side: joining and leaving the ledger (a lone
host-scoped section), and a nested entry that changes no membership, host
vs process scope (CPU time of the calling thread, median of batches).

Costs are counted in instructions too (``--instructions``: valgrind, as
``budget_instructions.py``), since CPU times on a shared VM swing.

    python benchmarks/host_ledger.py [--repeat 5] [--processes 3] [--instructions]
"""

from __future__ import annotations

import argparse
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


def cpu_per_call(section, batches: int = 15, calls: int = 2000) -> float:
    """Median CPU seconds of one enter+exit of ``section()``."""
    samples = []
    for _ in range(batches):
        start = time.thread_time()
        for _ in range(calls):
            with section():
                pass
        samples.append((time.thread_time() - start) / calls)
    return statistics.median(samples)


NESTED = """
import ctypes, glob, os, sys, sysconfig
import numpy, threadguard
site = sysconfig.get_paths()["purelib"]
ctypes.CDLL(glob.glob(os.path.join(site, "scikit_learn.libs", "libgomp*.so*"))[0])
numpy.ones((64, 64)) @ numpy.ones((64, 64))
scope = os.environ["SCOPE"]
with threadguard.budget(1, scope=scope):
    for _ in range(50):
        with threadguard.budget(1, scope=scope): pass
    for _ in range(int(sys.argv[1])):
        with threadguard.budget(1, scope=scope): pass
"""


def nested_instructions(ledger: str) -> dict[str, float]:
    """Instructions per nested enter+exit (main thread), by scope."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from budget_instructions import main_thread_instructions
    out = {}
    for scope in ("process", "host"):
        env = dict(os.environ, SCOPE=scope, THREADGUARD_LEDGER=ledger)
        with tempfile.TemporaryDirectory() as tmp:
            few = main_thread_instructions(1000, tmp, NESTED, env)
            many = main_thread_instructions(3000, tmp, NESTED, env)
        out[scope] = (many - few) / 2000
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--instructions", action="store_true",
                        help="also count the nested entry's instructions (valgrind)")
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
    with threadguard.budget(1, scope="host"):
        nested_host = cpu_per_call(lambda: threadguard.budget(1, scope="host"))
    with threadguard.budget(1):
        nested_process = cpu_per_call(lambda: threadguard.budget(1))
    print("enter+exit, CPU time per call (median of batches):")
    print(f"  lone budget(1): process {lone_process * 1e6:.1f} us, host (join and leave) "
          f"{lone_host * 1e6:.1f} us")
    print(f"  nested, no change in membership: process {nested_process * 1e6:.1f} us, "
          f"host {nested_host * 1e6:.1f} us ({nested_host / nested_process:.2f}x)")
    if args.instructions:
        counts = nested_instructions(ledger)
        print(f"  nested, instructions: process {counts['process']:,.0f}, host "
              f"{counts['host']:,.0f} ({counts['host'] / counts['process']:.3f}x)")


if __name__ == "__main__":
    main()
