"""A suite of 1,000 trivial tests with the plugin enabled vs disabled,
side by side in one run (interleaved): wall time and the CPU time of the
pytest process, median and fastest of the runs; with ``--instructions``,
also the instructions each run executes, counted by valgrind (times on a
shared VM swing between runs; instruction counts do not).

    python benchmarks/pytest_plugin_overhead.py [--tests 1000] [--repeat 5] [--instructions]

pytest runs alone with this plugin (other installed plugins would dilute
the ratio: hypothesis's imports itself at the end of every run) and with
cached bytecode, as after ``pip install``.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

VARIANTS = (("disabled", []), ("enabled", ["--threadguard"]))


def instructions(command: list[str], env: dict, cwd: str) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *command],
                       env=dict(env, PYTHONHASHSEED="0"), cwd=cwd, check=True,
                       capture_output=True)
        with open(out) as f:
            for line in f:
                if line.startswith("totals:"):
                    return int(line.split()[1])
    raise SystemExit("valgrind wrote no totals")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tests", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--instructions", action="store_true",
                        help="also count instructions under valgrind (about 3 minutes)")
    args = parser.parse_args()
    if args.instructions and shutil.which("valgrind") is None:
        raise SystemExit("--instructions needs valgrind")
    with tempfile.TemporaryDirectory() as root:
        with open(os.path.join(root, "test_trivial.py"), "w") as f:
            for i in range(args.tests):
                f.write(f"def test_{i}():\n    pass\n\n")
        base = [sys.executable, "-m", "pytest", "-q", "-p", "threadguard.pytest_plugin",
                "-p", "no:cacheprovider", "-o", "addopts=", root]
        env = dict(os.environ, CI="true", PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        # One run first: it writes the rewritten test module's bytecode.
        subprocess.run(base, env=env, cwd=root, capture_output=True)
        wall = {name: [] for name, _ in VARIANTS}
        cpu = {name: [] for name, _ in VARIANTS}
        for _ in range(args.repeat):
            for name, extra in VARIANTS:
                used = resource.getrusage(resource.RUSAGE_CHILDREN)
                t0 = time.perf_counter()
                out = subprocess.run(base + extra, capture_output=True, text=True, env=env, cwd=root)
                wall[name].append(time.perf_counter() - t0)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu[name].append(after.ru_utime + after.ru_stime - used.ru_utime - used.ru_stime)
                if out.returncode != 0:
                    raise SystemExit(out.stdout[-2000:] + out.stderr[-2000:])
        counted = ({name: instructions(base + extra, env, root) for name, extra in VARIANTS}
                   if args.instructions else None)
    print(f"{args.tests} trivial tests, {args.repeat} interleaved runs of each")
    print(f"  {'':22}{'disabled':>12}{'enabled':>12}{'ratio':>8}")
    for label, times in (("wall", wall), ("cpu", cpu)):
        for how, pick in (("median", statistics.median), ("fastest", min)):
            off, on = pick(times["disabled"]), pick(times["enabled"])
            print(f"  {label + ' ' + how:22}{off:11.2f}s{on:11.2f}s{on / off:7.3f}x")
    if counted:
        off, on = counted["disabled"], counted["enabled"]
        print(f"  {'instructions (M)':22}{off / 1e6:12,.0f}{on / 1e6:12,.0f}{on / off:7.3f}x")


if __name__ == "__main__":
    main()
