"""Checks of the thread variables, against what the runtimes really do with
them (the rules are in ``threadguard.env_rules``)."""

from __future__ import annotations

import re

from ..env_rules import atoi, openmp_value
from .findings import finding


def check(environ, cpus: int) -> list:
    out = []
    omp = environ.get("OMP_NUM_THREADS")
    threads, problem = openmp_value(omp)
    if problem:
        out.append(finding("TG201", f"OMP_NUM_THREADS={omp!r} is {problem}",
                           [f"OMP_NUM_THREADS={omp!r}",
                            "GNU and Intel OpenMP pools then use every CPU: "
                            f"{cpus} here" if cpus else ""],
                           f"export OMP_NUM_THREADS={cpus}"))
    elif omp is not None and omp.strip(" \t\n\v\f\r") == "":
        # Checked with the runtimes: libgomp prints "Invalid value for environment
        # variable OMP_NUM_THREADS", libiomp5 says nothing, libomp 14 aborts.
        out.append(finding("TG201", "OMP_NUM_THREADS is set but empty: GNU OpenMP warns "
                           "and uses every CPU, LLVM OpenMP aborts at start-up",
                           [f"OMP_NUM_THREADS={omp!r}"],
                           f"unset OMP_NUM_THREADS  # or: export OMP_NUM_THREADS={cpus}"))
    elif omp and "," in omp:
        levels = environ.get("OMP_MAX_ACTIVE_LEVELS")
        nested = (environ.get("OMP_NESTED", "").lower() == "true"
                  or (levels is not None and levels.strip().isdigit() and int(levels) > 1))
        if not nested:
            out.append(finding("TG201", f"OMP_NUM_THREADS={omp!r} is a nested list but nesting "
                               f"is off: only the first level ({threads}) is used",
                               [f"OMP_NUM_THREADS={omp!r}", "OMP_MAX_ACTIVE_LEVELS unset or 1"],
                               f"export OMP_NUM_THREADS={threads}", severity="info"))
    if threads and threads > cpus:
        out.append(finding("TG203", f"OMP_NUM_THREADS={threads} for {cpus} effective CPUs",
                           [f"OMP_NUM_THREADS={omp}", f"effective CPUs: {cpus}"],
                           f"export OMP_NUM_THREADS={cpus}"))

    for name in ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS"):
        text = environ.get(name)
        if text is None:
            continue
        value = atoi(text)
        if value <= 0:
            out.append(finding("TG201", f"{name}={text!r} reads as {value} (atoi): OpenBLAS then "
                               "uses every core, not 1", [f"{name}={text!r}"],
                               f"export {name}=1  # or the thread count you meant"))
        elif not re.fullmatch(r"[ \t\n\v\f\r]*[0-9]+[ \t\n\v\f\r]*", text):
            out.append(finding("TG201", f"{name}={text!r} reads as {value} (atoi stops at the "
                               "first non-digit)", [f"{name}={text!r}"],
                               f"export {name}={value}", severity="info"))
        elif value > cpus:
            out.append(finding("TG203", f"{name}={value} for {cpus} effective CPUs",
                               [f"{name}={text}"], f"export {name}={cpus}"))

    for name, readers in _OTHER_VARIABLES.items():
        text = environ.get(name)
        if text is None or re.fullmatch(r"[ \t]*[0-9]+[ \t]*", text) and int(text) > 0:
            continue
        here = [r for r in readers if _installed(r)]
        out.append(finding("TG201", f"{name}={text!r} is not a positive whole number",
                           [f"{name}={text!r}",
                            f"read by {', '.join(here)} (installed here)" if here else
                            f"nothing installed here reads it ({', '.join(readers)} would): "
                            "it may be meant for another environment"],
                           f"export {name}={cpus}  # or unset it"))

    mkl = environ.get("MKL_NUM_THREADS")
    if mkl and threads and mkl.strip().isdigit() and int(mkl) != threads:
        out.append(finding("TG202", f"MKL_NUM_THREADS={mkl} and OMP_NUM_THREADS={threads}: MKL "
                           f"uses {mkl}, other OpenMP pools {threads}",
                           [f"MKL_NUM_THREADS={mkl}", f"OMP_NUM_THREADS={omp}"],
                           "set both to the same value unless this is meant"))
    if environ.get("OMP_WAIT_POLICY", "").strip().upper() == "ACTIVE":
        blocktime = environ.get("KMP_BLOCKTIME")
        out.append(finding("TG205", "OMP_WAIT_POLICY=ACTIVE" + ("" if blocktime else
                           " without KMP_BLOCKTIME") + ": idle OpenMP workers spin",
                           ["OMP_WAIT_POLICY=ACTIVE"] + ([f"KMP_BLOCKTIME={blocktime}"] if blocktime else []),
                           "export OMP_WAIT_POLICY=PASSIVE"))
    for name in ("PYTHON_CPU_COUNT",):
        if environ.get(name):
            out.append(finding("TG204", f"{name}={environ[name]} overrides os.cpu_count() for "
                               "Python code", [f"{name}={environ[name]}"],
                               "keep it equal to the effective CPUs, or unset it"))
    return out


# Thread variables other libraries read: variable -> the distributions that read it.
_OTHER_VARIABLES = {"MKL_NUM_THREADS": ("mkl",), "BLIS_NUM_THREADS": ("blis",),
                    "NUMEXPR_NUM_THREADS": ("numexpr",), "NUMBA_NUM_THREADS": ("numba",)}


def _installed(distribution: str) -> bool:
    from importlib import metadata
    try:
        metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True
