"""Runtimes: classification, LD_PRELOAD, and exact load order on real libraries."""

from __future__ import annotations

import ctypes
import os

import pytest

import threadguard
from threadguard.libraries import ORDER_LINK_MAP, ORDER_MAPS, ORDER_SELF, loaded_libraries
from threadguard.runtime_libs import classify, parse_ld_preload
from procs import intel_libiomp5, llvm_libomp, python_child, sklearn_libgomp


@pytest.mark.parametrize("name, expected", [
    ("libgomp.so.1", ("openmp", "libgomp")),
    ("libgomp-e985bcbb.so.1.0.0", ("openmp", "libgomp")),
    ("libgomp-a34b3233.so.1", ("openmp", "libgomp")),
    ("libiomp5.so", ("openmp", "libiomp5")),
    ("libomp.so.5", ("openmp", "libomp")),
    ("libomp-7d1c7e1b.so", ("openmp", "libomp")),
    ("libomptarget.so", None),
    ("libtbb.so.12", ("tbb", "libtbb")),
    ("libtbb.so.2", ("tbb", "libtbb")),
    ("libtbbmalloc.so.2", None),
    ("libtbbbind_2_5.so.3", None),
    ("libscipy_openblas64_-32a4b2a6.so", ("blas", "openblas")),
    ("libopenblasp-r0-2ecf47d5.3.27.so", ("blas", "openblas")),
    ("libopenblas.so.0", ("blas", "openblas")),
    ("libmkl_rt.so.2", ("blas", "mkl")),
    ("libblis.so.4", ("blas", "blis")),
    ("libgfortran-040039e1.so.5.0.0", None),
    ("libstdc++.so.6", None),
])
def test_classify(name, expected):
    assert classify(f"/some/where/{name}") == expected


def test_ld_preload_spaces_colons_and_missing(tmp_path):
    real = tmp_path / "libiomp5.so"
    real.write_bytes(b"")
    entries = parse_ld_preload(f"  {real}:{tmp_path}/missing.so  libjemalloc.so.2 ::")
    assert [(e.entry, e.exists) for e in entries] == [
        (str(real), True), (f"{tmp_path}/missing.so", False), ("libjemalloc.so.2", None)]
    assert parse_ld_preload("") == [] and parse_ld_preload(None) == []


LOAD_IN_ORDER = """
import ctypes, sys
paths = sys.argv[1:] if len(sys.argv) > 1 else PATHS
for p in paths:
    ctypes.CDLL(p)
import threadguard
own = [(r.name, r.path) for r in threadguard.runtimes()]
report(own=own)
"""


@pytest.mark.live
@pytest.mark.parametrize("order", ["gnu-first", "intel-first"])
def test_load_order_is_the_linkers_in_process_and_from_outside(order):
    gomp, iomp = sklearn_libgomp(), intel_libiomp5()
    llvm = llvm_libomp()
    paths = [gomp, iomp, llvm] if order == "gnu-first" else [iomp, llvm, gomp]
    code = LOAD_IN_ORDER.replace("PATHS", repr(paths))
    with python_child(code) as child:
        outside = threadguard.runtimes(child.pid)
        libs = loaded_libraries(child.pid)
    own_openmp = [os.path.realpath(p) for n, p in child.facts["own"] if n.startswith("lib")
                  and n in ("libgomp", "libiomp5", "libomp")]
    assert own_openmp == [os.path.realpath(p) for p in paths]
    assert libs.order_source == ORDER_LINK_MAP
    outside_openmp = [os.path.realpath(r.path) for r in outside if r.kind == "openmp"]
    assert outside_openmp == [os.path.realpath(p) for p in paths]
    indices = [r.load_index for r in outside]
    assert indices == sorted(indices)


def test_in_process_list_is_the_linkers_load_order():
    # Loaded in a known order (Intel's runtime first, then GNU's), they must be
    # listed in that order, and the list must equal what another process reads.
    iomp, gomp = intel_libiomp5(), sklearn_libgomp()
    code = f"""
import ctypes, os
from threadguard.libraries import loaded_libraries
ctypes.CDLL({iomp!r}); ctypes.CDLL({gomp!r})
libs = loaded_libraries()
report(source=libs.order_source, paths=[os.path.realpath(l.path) for l in libs.libraries])
"""
    with python_child(code) as child:
        outside = [os.path.realpath(lib.path) for lib in loaded_libraries(child.pid).libraries]
        facts = child.facts
    assert facts["source"] == ORDER_SELF
    paths = facts["paths"]
    assert paths.index(os.path.realpath(iomp)) < paths.index(os.path.realpath(gomp))
    assert any("libc.so" in p for p in paths)
    assert paths == outside


def _drop_ptrace_capability():
    # PR_CAPBSET_DROP(CAP_SYS_PTRACE): after exec, even root cannot read the
    # memory of a process that made itself non-dumpable.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(24, 19, 0, 0, 0)


NON_DUMPABLE = """
import ctypes, numpy as np
np.ones((200, 200)) @ np.ones((200, 200))
ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: /proc/PID/mem, maps: owner only
report()
"""

INSPECT_OTHER = """
import json, sys, threadguard
from threadguard.libraries import loaded_libraries
from threadguard.attribution import attribute_threads
pid = int(sys.argv[1])
libs = loaded_libraries(pid)
att = attribute_threads(pid)
c = threadguard.census(pid, interval=0.1)
print(json.dumps({"order": libs.order_source, "note": libs.note, "n": len(libs.libraries),
                  "pools": sorted({o.pool for o in att.owners.values()}), "att_note": att.note,
                  "threads": c.threads_total}))
"""


@pytest.mark.live
def test_unreadable_memory_falls_back_and_says_why():
    if os.geteuid() != 0:
        pytest.skip("the test makes a root inspector lose CAP_SYS_PTRACE; run as root")
    import json
    import subprocess
    import sys
    with python_child(NON_DUMPABLE, env={"OPENBLAS_NUM_THREADS": "2"}) as child:
        out = subprocess.run([sys.executable, "-c", INSPECT_OTHER, str(child.pid)],
                             capture_output=True, text=True, preexec_fn=_drop_ptrace_capability,
                             env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(
                                 os.path.abspath(__file__)))))
    assert out.returncode == 0, out.stderr
    facts = json.loads(out.stdout)
    assert facts["order"] == ORDER_MAPS
    assert "permission" in facts["note"] or "ptrace" in facts["note"]
    assert facts["pools"] == ["main", "unattributed"]
    assert "ptrace" in facts["att_note"]
    assert facts["threads"] >= 2  # the census itself still works


def test_real_path_is_os_path_realpath(tmp_path, monkeypatch):
    # libc's realpath(3) stands in for os.path.realpath: the same answer for
    # links, chains, dangling and relative paths (a wrong key would split one
    # library into two limiters).
    from threadguard.libraries import real_path
    lib = tmp_path / "lib" / "libx.so.1.2"
    lib.parent.mkdir()
    lib.write_bytes(b"")
    (tmp_path / "lib" / "libx.so.1").symlink_to("libx.so.1.2")
    (tmp_path / "libx.so").symlink_to(tmp_path / "lib" / "libx.so.1")
    (tmp_path / "dir-link").symlink_to("lib")
    (tmp_path / "dangling").symlink_to("nowhere/libz.so")
    (tmp_path / "loop").symlink_to("loop")
    monkeypatch.chdir(tmp_path)
    paths = [str(tmp_path / "libx.so"), str(tmp_path / "dir-link" / "libx.so.1"),
             str(tmp_path / "dir-link" / ".." / "libx.so"), "libx.so", "./dir-link//libx.so.1",
             str(tmp_path / "dangling"), str(tmp_path / "loop"), str(tmp_path / "missing.so"),
             "/"]
    for path in paths:
        assert real_path(path) == os.path.realpath(path), path
