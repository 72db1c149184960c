"""What sampling at 10 Hz costs: the observed process's throughput with and
without the sampler behind `threadguard record`/`watch` attached, and the
sampler's own CPU time, side by side in one run (windows interleaved).
Start-up (the first attribution of 100 threads) and writing the files are
one-off costs, reported apart.

The observed process holds 100 threads: 2 hashing (its throughput) and 98
waiting, as pools do between parallel regions.

    python benchmarks/record_cost.py [--seconds 4] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

WORKLOAD = """
import hashlib, sys, threading
count = [0, 0]
data = b"x" * 65536
def spin(i):
    while True:
        hashlib.sha256(data).digest()
        count[i] += 1
idle = threading.Event()
for _ in range(98):
    threading.Thread(target=idle.wait, daemon=True).start()
for i in range(2):
    threading.Thread(target=spin, args=(i,), daemon=True).start()
for line in sys.stdin:
    print(sum(count), flush=True)
"""


def window(proc, seconds: float, hz=None):
    """Iterations per second over a window, and the sampler's CPU share."""
    from threadguard.sampler import Sampler
    sampler = Sampler(proc.pid, hz) if hz else None  # start-up outside the window
    proc.stdin.write("\n"); proc.stdin.flush()
    start = int(proc.stdout.readline())
    t0 = time.perf_counter()
    c0 = time.process_time()
    if sampler is not None:
        sampler.run(seconds)
        cpu = time.process_time() - c0
    else:
        time.sleep(seconds)
        cpu = None
    proc.stdin.write("\n"); proc.stdin.flush()
    end = int(proc.stdout.readline())
    elapsed = time.perf_counter() - t0
    return (end - start) / elapsed, (cpu / elapsed if cpu is not None else None)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    proc = subprocess.Popen([sys.executable, "-c", WORKLOAD], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    base, watched, recorder_cpu = [], [], []
    t0 = time.process_time()
    from threadguard.sampler import Sampler
    Sampler(proc.pid, 10).reader.close()
    startup = time.process_time() - t0
    try:
        window(proc, 1.0)  # warm up
        for _ in range(args.repeat):
            base.append(window(proc, args.seconds)[0])
            rate, cpu = window(proc, args.seconds, 10)
            watched.append(rate)
            recorder_cpu.append(cpu)
    finally:
        proc.kill()
        proc.wait()
    b, w = statistics.median(base), statistics.median(watched)
    print(f"100-thread process, {args.seconds:g} s windows, median of {args.repeat}")
    print(f"  throughput alone                 {b:10.0f} iterations/s")
    print(f"  throughput while sampled, 10 Hz  {w:10.0f} iterations/s  ({(b - w) / b:+.1%} cost)")
    print(f"  sampler CPU                      {statistics.median(recorder_cpu):10.2%} of one CPU")
    print(f"  sampler start-up (first attribution of 100 threads) {startup * 1000:.0f} ms CPU")


if __name__ == "__main__":
    main()
