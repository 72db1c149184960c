"""Instructions per ``budget(1)`` enter + exit, counted by valgrind.

Wall and CPU times on a shared VM swing between runs; instruction counts do
not. Runs a loop of ``with threadguard.budget(1): pass`` (OpenBLAS and GNU
OpenMP loaded) under ``valgrind --tool=callgrind`` 1,000 and 3,000 times and
divides the difference of the main thread's counts by 2,000, so start-up
and the other threads (idle BLAS workers spin) do not count.

    python benchmarks/budget_instructions.py
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile

LOOP = """
import ctypes, glob, os, sys, sysconfig
import numpy, threadguard
site = sysconfig.get_paths()["purelib"]
ctypes.CDLL(glob.glob(os.path.join(site, "scikit_learn.libs", "libgomp*.so*"))[0])
numpy.ones((64, 64)) @ numpy.ones((64, 64))
for _ in range(50):
    with threadguard.budget(1): pass
for _ in range(int(sys.argv[1])):
    with threadguard.budget(1): pass
"""


def main_thread_instructions(loops: int, workdir: str, loop: str = LOOP, env=None) -> int:
    """Instructions of the main thread running ``loop`` with ``loops`` as argv[1]."""
    out = os.path.join(workdir, f"cg.{loops}")
    env = dict(env or os.environ, PYTHONHASHSEED="0", CI="true")
    subprocess.run(["valgrind", "--tool=callgrind", "--separate-threads=yes",
                    f"--callgrind-out-file={out}", sys.executable, "-c", loop, str(loops)],
                   env=env, check=True, capture_output=True)
    with open(f"{out}-01") as f:  # thread 1: the main thread
        for line in f:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise SystemExit(f"no totals in {out}-01")


def main() -> None:
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed")
    if not glob.glob(os.path.join(sysconfig.get_paths()["purelib"], "scikit_learn.libs", "libgomp*")):
        raise SystemExit("install scikit-learn (its wheel vendors GNU OpenMP)")
    with tempfile.TemporaryDirectory() as tmp:
        few, many = main_thread_instructions(1000, tmp), main_thread_instructions(3000, tmp)
    print(f"budget(1) enter + exit: {(many - few) / 2000:,.0f} instructions (main thread)")


if __name__ == "__main__":
    main()
