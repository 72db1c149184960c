"""CPU cost of a census of a process holding 1,000 threads.

Measures the CPU time threadguard spends reading (the sleep between the two
reads excluded: ``interval=0`` reads once, a full census reads twice) next
to ``psutil.Process(pid).threads()`` on the same process in the same run.

    python benchmarks/census_1000_threads.py [--threads 1000] [--repeat 15]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import psutil

import threadguard

CHILD = """
import sys, threading, time
n = int(sys.argv[1])
stop = threading.Event()
threads = [threading.Thread(target=stop.wait, daemon=True) for _ in range(n)]
for t in threads:
    t.start()
print("ready", flush=True)
sys.stdin.read()
"""


def cpu_ms(fn, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        samples.append((time.process_time() - t0) * 1000)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(args.threads)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        child.stdout.readline()
        pid = child.pid
        proc = psutil.Process(pid)
        assert threadguard.census(pid, interval=0).threads_total == args.threads + 1
        one_read = cpu_ms(lambda: threadguard.census(pid, interval=0), args.repeat)
        # A full census reads twice; its sleep costs no CPU.
        full = cpu_ms(lambda: threadguard.census(pid, interval=0.001), args.repeat)
        ps = cpu_ms(proc.threads, args.repeat)
    finally:
        child.stdin.close()
        child.wait()
    print(f"process with {args.threads + 1} threads, median CPU time of {args.repeat} runs")
    print(f"  threadguard.census (one read)       {one_read:7.1f} ms")
    print(f"  threadguard.census (two reads)      {full:7.1f} ms")
    print(f"  psutil.Process.threads()            {ps:7.1f} ms")
    print(f"  census / psutil.threads()           {full / ps:7.2f}x")


if __name__ == "__main__":
    main()
