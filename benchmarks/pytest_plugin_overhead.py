"""A suite of 1,000 trivial tests with the plugin enabled vs disabled,
side by side in one run (interleaved, median wall time).

    python benchmarks/pytest_plugin_overhead.py [--tests 1000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tests", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        with open(os.path.join(root, "test_trivial.py"), "w") as f:
            for i in range(args.tests):
                f.write(f"def test_{i}():\n    pass\n\n")
        base = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                "-o", "addopts=", root]
        env = dict(os.environ, CI="true")
        runs = {"disabled": [], "enabled": []}
        for _ in range(args.repeat):
            for name, extra in (("disabled", []), ("enabled", ["--threadguard"])):
                t0 = time.perf_counter()
                out = subprocess.run(base + extra, capture_output=True, text=True, env=env, cwd=root)
                runs[name].append(time.perf_counter() - t0)
                if out.returncode != 0:
                    raise SystemExit(out.stdout[-2000:] + out.stderr[-2000:])
    off, on = statistics.median(runs["disabled"]), statistics.median(runs["enabled"])
    print(f"{args.tests} trivial tests, median wall time of {args.repeat} interleaved runs")
    print(f"  plugin disabled   {off:6.2f} s")
    print(f"  plugin enabled    {on:6.2f} s")
    print(f"  enabled / disabled {on / off:5.2f}x")


if __name__ == "__main__":
    main()
