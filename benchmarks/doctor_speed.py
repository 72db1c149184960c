"""Wall time of `threadguard doctor` (no live target) next to importing its two
core dependencies, side by side in one run.

    python benchmarks/doctor_speed.py [--repeat 11]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def wall(cmd: list[str], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=11)
    args = parser.parse_args()
    base = [sys.executable, "-c", "import psutil, threadpoolctl"]
    doctor = [sys.executable, "-m", "threadguard", "doctor", "--fail-on", "never"]
    wall(base, 2), wall(doctor, 2)  # warm the file cache
    ours, theirs = [], []
    for _ in range(args.repeat):  # interleaved, so drift hits both alike
        theirs.append(wall(base, 1))
        ours.append(wall(doctor, 1))
    t_base, t_doc = statistics.median(theirs), statistics.median(ours)
    print(f"median wall time of {args.repeat} runs, interleaved")
    print(f"  python -c 'import psutil, threadpoolctl'   {t_base * 1000:7.0f} ms")
    print(f"  threadguard doctor                         {t_doc * 1000:7.0f} ms")
    print(f"  doctor / import                            {t_doc / t_base:7.2f}x")


if __name__ == "__main__":
    main()
