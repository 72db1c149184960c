"""Checks of the OpenMP/TBB runtimes: loaded in a process, or shipped to be."""

from __future__ import annotations

import os
import re
import shlex

from ..runtime_libs import classify, parse_ld_preload, preload_fix
from .findings import finding


def _real(path: str) -> str:
    try:
        return os.path.realpath(path)
    except OSError:
        return path


def _preload_line(path: str, environ) -> str:
    return preload_fix(path, environ.get("LD_PRELOAD"))


def check_loaded(runtimes, environ, gomp_provider: str | None = None) -> list:
    """``runtimes``: the report's loaded runtimes, in load order."""
    out = []
    openmp = [r for r in runtimes if r.kind == "openmp"]
    kmp = {}
    for r in openmp:
        if r.name in ("libiomp5", "libomp"):
            kmp.setdefault(_real(r.path), r)
    if len(kmp) > 1:
        paths = [r.path for r in kmp.values()]
        names = {r.name for r in kmp.values()}
        out.append(finding(
            "TG101", f"{' and '.join(sorted(names))} loaded together"
            if len(names) > 1 else f"{len(paths)} copies of {names.pop()} loaded",
            [f"#{r.load_index} {r.name}: {r.path}" for r in kmp.values()],
            "use one OpenMP runtime for the whole process: e.g. MKL_THREADING_LAYER=GNU, or "
            "NumPy/SciPy built on OpenBLAS; OMP_NUM_THREADS=1 as a stopgap"))
    gnu = [r for r in openmp if r.name == "libgomp"]
    intel = [r for r in openmp if r.name == "libiomp5"]
    if gnu and intel:
        first_gnu, first_intel = gnu[0], intel[0]
        if first_gnu.load_index < first_intel.load_index:
            out.append(finding(
                "TG102", "GNU OpenMP was initialized before Intel OpenMP",
                [f"#{first_gnu.load_index} libgomp: {first_gnu.path}",
                 f"#{first_intel.load_index} libiomp5: {first_intel.path}"]
                + ([f"GOMP_* symbols served by {gomp_provider}"] if gomp_provider else []),
                _preload_line(first_intel.path, environ)))
        elif gomp_provider and "iomp" not in os.path.basename(gomp_provider):
            out.append(finding(
                "TG102", "Intel OpenMP loaded first, but GOMP_* symbols are served by another "
                "runtime", [f"GOMP_parallel from {gomp_provider}"],
                _preload_line(first_intel.path, environ)))
    distinct_gnu = {_real(r.path) for r in gnu}
    if len(distinct_gnu) > 1:
        out.append(finding("TG103", f"{len(distinct_gnu)} copies of GNU OpenMP loaded, each "
                           "with its own pool", [r.path for r in gnu],
                           "cap them together: with threadguard.budget(): ...  or "
                           "OMP_NUM_THREADS=<CPUs / copies>"))
    if environ.get("KMP_DUPLICATE_LIB_OK", "").upper() in ("TRUE", "1", "YES"):
        out.append(finding("TG105", "KMP_DUPLICATE_LIB_OK=TRUE is set",
                           ["KMP_DUPLICATE_LIB_OK=" + environ["KMP_DUPLICATE_LIB_OK"]]
                           + [f"OpenMP loaded: {r.path}" for r in openmp],
                           "unset KMP_DUPLICATE_LIB_OK and load a single OpenMP runtime"))
    layer = environ.get("MKL_THREADING_LAYER", "").upper()
    if layer == "INTEL" and gnu:
        out.append(finding("TG106", "MKL_THREADING_LAYER=INTEL with GNU OpenMP loaded: MKL will "
                           "stop with 'MKL_THREADING_LAYER=INTEL is incompatible with "
                           "libgomp.so.1'", ["MKL_THREADING_LAYER=INTEL", gnu[0].path],
                           "export MKL_THREADING_LAYER=GNU"))
    return out


def check_shipped(shipped, environ, openvino_version: str | None) -> list:
    """Conflicts predicted from what the installed packages ship."""
    out = []
    intel = [r for r in shipped if r.name == "libiomp5"]
    gnu = [r for r in shipped if r.name == "libgomp"]
    llvm = [r for r in shipped if r.name == "libomp"]
    # Settled only when the first OpenMP runtime preloaded is Intel's and
    # ld.so can find it (a bare name it cannot find is skipped with an error).
    first = next((e for e in parse_ld_preload(environ.get("LD_PRELOAD"))
                  if (classify(e.entry) or ("", ""))[0] == "openmp"), None)
    intel_preloaded = (first is not None and classify(first.entry)[1] == "libiomp5"
                       and _found_by_ld_so(first, environ))
    if intel and gnu and not intel_preloaded:
        out.append(finding(
            "TG104", "Intel and GNU OpenMP are both installed: if both load, Intel's must be "
            "initialized first",
            [f"{r.name}: {r.path} ({r.distribution})" for r in intel[:1] + gnu],
            _preload_line(intel[0].path, environ)))
    if intel and llvm:
        out.append(finding(
            "TG104", "Intel OpenMP and LLVM OpenMP are both installed: loaded together they can "
            "abort the process", [f"{r.name}: {r.path} ({r.distribution})" for r in intel[:1] + llvm],
            "keep one of the packages that ship them"))
    layer = environ.get("MKL_THREADING_LAYER", "").upper()
    if layer == "INTEL" and gnu:
        out.append(finding("TG106", "MKL_THREADING_LAYER=INTEL while packages ship GNU OpenMP: "
                           "MKL stops when both load", ["MKL_THREADING_LAYER=INTEL"]
                           + [f"{r.path} ({r.distribution})" for r in gnu],
                           "export MKL_THREADING_LAYER=GNU"))
    for entry in parse_ld_preload(environ.get("LD_PRELOAD")):
        if entry.path is not None and not os.path.isfile(entry.path):
            what = "a directory" if os.path.isdir(entry.path) else "a missing file"
            out.append(finding("TG108", f"LD_PRELOAD names {what}: {entry.entry}",
                               [f"LD_PRELOAD={shlex.quote(environ.get('LD_PRELOAD', ''))}"],
                               "fix the path or remove the entry (ld.so skips it with an "
                               "error line in every process)"))
        if "jemalloc" in entry.entry and openvino_version and _at_least(openvino_version, (2024, 3)):
            out.append(finding("TG107", f"{entry.entry} preloaded with OpenVINO {openvino_version}",
                               [f"LD_PRELOAD={shlex.quote(environ.get('LD_PRELOAD', ''))}"],
                               "remove jemalloc from LD_PRELOAD for OpenVINO processes, or set "
                               "MALLOC_CONF=... per oneTBB#1645"))
    return out


def _at_least(version: str, floor: tuple[int, int]) -> bool:
    m = re.match(r"(\d+)\.(\d+)", version)
    return bool(m) and (int(m.group(1)), int(m.group(2))) >= floor


def check_mixed_pools(report) -> list:
    """TBB and OpenMP pools both present in a busy process. Counting only
    active workers would miss it: OpenVINO's inference runs mostly in the
    thread that calls it, so its TBB worker can look idle while OpenMP's spin."""
    if report is None or report.attribution is None or report.census is None:
        return []
    threads: dict[str, int] = {}
    active: dict[str, int] = {}
    for t in report.census.threads:
        owner = report.attribution.owners.get(t.tid)
        if owner:
            threads[owner.pool] = threads.get(owner.pool, 0) + 1
            active[owner.pool] = active.get(owner.pool, 0) + int(t.active)
    tbb = threads.get("tbb", 0) + threads.get("openvino", 0)
    omp = sum(n for pool, n in threads.items() if pool.startswith("openmp:"))
    omp_loaded = [r for r in report.runtimes if r.kind == "openmp"]
    busy = (report.census.cpu_used or 0) >= 0.5 or any(active.values())
    # An OpenMP runtime's workers come and go with its parallel regions: a
    # loaded runtime in a busy process counts even between two regions.
    if tbb and (omp or omp_loaded) and busy:
        return [finding("TG110", f"TBB ({tbb} threads) and OpenMP ({omp} workers now, "
                        f"{len(omp_loaded)} runtime(s) loaded) in one busy process",
                        [f"{pool}: {n} threads, {active.get(pool, 0)} active"
                         for pool, n in sorted(threads.items())]
                        + [f"OpenMP loaded: {r.path}" for r in omp_loaded],
                        "export OMP_WAIT_POLICY=PASSIVE, and give each pool its share: "
                        "with threadguard.budget(): ...")]
    return []


_LIBRARY_DIRS = ("/lib", "/usr/lib", "/lib64", "/usr/lib64", "/usr/local/lib",
                 "/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu",
                 "/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu")


def _found_by_ld_so(entry, environ) -> bool:
    """An LD_PRELOAD entry ld.so will load: an existing file, or a bare name
    on LD_LIBRARY_PATH or in the usual library directories."""
    if entry.path is not None:
        return os.path.isfile(entry.path)
    dirs = [d for d in environ.get("LD_LIBRARY_PATH", "").split(":") if d] + list(_LIBRARY_DIRS)
    return any(os.path.isfile(os.path.join(d, entry.entry)) for d in dirs)
