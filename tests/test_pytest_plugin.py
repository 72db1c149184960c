"""The pytest plugin, on real pytest runs (pytester, in subprocesses)."""

from __future__ import annotations

import json
import os
import re

import pytest

import threadguard

CPUS = threadguard.topology().effective_cpus

SUITE = """
import os, subprocess, sys, threading
import pytest

def test_leaks_a_python_thread():
    threading.Thread(target=threading.Event().wait, args=(30,), name="forgotten", daemon=True).start()

def test_clean():
    assert True

def test_child_process_sees_the_budget():
    out = subprocess.run([sys.executable, "-c", "import os; print(os.environ.get('OMP_NUM_THREADS'))"],
                         capture_output=True, text=True).stdout.strip()
    assert out == str(os.environ.get("OMP_NUM_THREADS"))
"""


def run(pytester, *args):
    # A subprocess: the plugin changes process-wide limits and variables.
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)


def table(result) -> list[list[str]]:
    lines = result.stdout.lines
    try:
        start = next(i for i, line in enumerate(lines) if line.startswith("test ") and "what" in line)
    except StopIteration:
        return []
    rows = []
    for line in lines[start + 1:]:
        if not line.strip() or line.startswith("="):
            break
        rows.append(re.split(r"\s{2,}", line.strip()))
    return rows


def test_inactive_unless_enabled(pytester):
    pytester.makepyfile(SUITE)
    result = run(pytester)
    result.assert_outcomes(passed=3)
    text = result.stdout.str()
    assert "= threadguard =" not in text and "thread(s) per worker" not in text


def test_python_thread_leak_is_tabled_with_its_name(pytester):
    pytester.makepyfile(SUITE)
    result = run(pytester, "--threadguard")
    result.assert_outcomes(passed=3)
    rows = table(result)
    assert [r[1:4] for r in rows] == [["TG601 thread leak", "python", "1"]], result.stdout.str()
    assert rows[0][0].endswith("test_leaks_a_python_thread") and rows[0][4] == "forgotten"
    result.stdout.fnmatch_lines([f"threadguard: {max(1, CPUS)} thread(s) per worker*"])


def test_strict_turns_findings_into_failures(pytester):
    pytester.makepyfile(SUITE)
    result = run(pytester, "--threadguard", "--threadguard-strict")
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(["*threadguard: thread leak: python 1 forgotten*"])


def test_a_pool_that_lives_for_the_process_is_reported_once_and_never_a_leak(pytester):
    pytester.makepyfile("""
        def test_starts_openblas():
            import numpy as np  # OpenBLAS starts its workers when it is loaded
            np.ones((100, 100)) @ np.ones((100, 100))
        def test_uses_it_again():
            import numpy as np
            np.ones((100, 100)) @ np.ones((100, 100))
    """)
    result = run(pytester, "--threadguard", "--threadguard-threads", "2",
                 "--threadguard-leaks", "fail")
    result.assert_outcomes(passed=2)
    rows = table(result)
    if CPUS < 2:
        pytest.skip("OpenBLAS starts no worker on one CPU")
    assert [r[1:3] for r in rows] == [["TG602 pool started", "openblas"]], result.stdout.str()
    assert rows[0][0].endswith("test_starts_openblas")


def test_a_thread_that_ends_while_another_starts_is_still_seen(pytester):
    pytester.makepyfile("""
        import threading
        stop = threading.Event()
        before = threading.Thread(target=stop.wait, name="old", daemon=True)
        before.start()
        def test_swaps_threads():
            stop.set(); before.join()  # one ends...
            threading.Thread(target=threading.Event().wait, name="new", daemon=True).start()
    """)
    result = run(pytester, "--threadguard")
    rows = table(result)
    assert [(r[1], r[4]) for r in rows] == [("TG601 thread leak", "new")], result.stdout.str()


def test_resized_pool_and_changed_environment(pytester):
    pytester.makepyfile("""
        import os, numpy
        from threadpoolctl import threadpool_limits
        def test_resizes():
            threadpool_limits(4)  # never restored
        def test_sets_a_variable():
            os.environ["LEFT_BEHIND"] = "1"
    """)
    result = run(pytester, "--threadguard", "--threadguard-threads", "1")
    rows = {(r[1], r[2]): r for r in table(result)}
    assert rows[("TG603 pool resized", "openblas")][3] == "4"
    assert "LEFT_BEHIND" in rows[("TG604 environment changed", "-")][-1]


def test_each_finding_belongs_to_the_test_that_caused_it(pytester):
    # The listing and environment seen when one test's check ended are the
    # next test's "before": a leak or a variable must not move to a neighbour.
    pytester.makepyfile("""
        import os, threading, pytest
        def test_quiet_first():
            pass
        def test_leaks():
            threading.Thread(target=threading.Event().wait, args=(30,), name="kept",
                             daemon=True).start()
        def test_quiet_after_leak():
            pass
        def test_sets():
            os.environ["LEFT_BEHIND"] = "1"
        def test_quiet_after_set():
            pass
        @pytest.mark.threadguard(max_threads=1)
        def test_marked():
            pass
        def test_quiet_after_marked():
            pass
        def test_unsets():
            del os.environ["LEFT_BEHIND"]
    """)
    result = run(pytester, "--threadguard", "--threadguard-grace", "0.1")
    result.assert_outcomes(passed=8)
    found = sorted((r[0].split("::")[1], r[1].split()[0]) for r in table(result))
    assert found == [("test_leaks", "TG601"), ("test_sets", "TG604"), ("test_unsets", "TG604")]


def test_marker_and_fixtures(pytester):
    pytester.makepyfile("""
        import threading, pytest
        @pytest.mark.threadguard(max_threads=1, leaks="ignore")
        def test_marked(thread_budget):
            assert thread_budget.threads == 1
            threading.Thread(target=threading.Event().wait, args=(30,), daemon=True).start()
        def test_census(thread_census):
            t = threading.Thread(target=threading.Event().wait, args=(30,), name="seen", daemon=True)
            t.start()
            assert [x.tid for x in thread_census.new_threads()] == [t.native_id]
    """)
    result = run(pytester, "--threadguard", "--threadguard-leaks", "warn")
    result.assert_outcomes(passed=2)
    rows = table(result)
    assert len(rows) == 1 and rows[0][0].endswith("test_census")


def test_budget_is_applied_before_test_modules_import(pytester):
    pytester.makepyfile("""
        import numpy  # imported at collection, inside the session's budget
        from threadpoolctl import threadpool_info
        SIZES = [i["num_threads"] for i in threadpool_info()]
        def test_sizes():
            assert SIZES and all(n == 1 for n in SIZES)
    """)
    run(pytester, "--threadguard", "--threadguard-threads", "1").assert_outcomes(passed=1)


def test_ini_enables_it_and_writes_the_json_report(pytester):
    pytester.makeini("[pytest]\nthreadguard = true\nthreadguard_report = tg.json\n")
    pytester.makepyfile(SUITE)
    run(pytester).assert_outcomes(passed=3)
    data = json.loads((pytester.path / "tg.json").read_text())
    assert data["schema"] == "threadguard.pytest/1"
    assert [f["what"] for f in data["findings"]] == ["thread leak"]


def test_bad_settings_are_usage_errors(pytester):
    pytester.makepyfile(SUITE)
    result = run(pytester, "--threadguard", "--threadguard-leaks", "sometimes")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--threadguard-leaks must be one of fail, warn, ignore*"])


@pytest.mark.slow
def test_each_xdist_worker_gets_its_share(pytester):
    pytester.makepyfile(SUITE)
    result = run(pytester, "--threadguard", "-n", "2")
    result.assert_outcomes(passed=3)
    share = max(1, CPUS // 2)
    result.stdout.fnmatch_lines([f"budget: gw0: {share} thread(s)", f"budget: gw1: {share} thread(s)"])


def test_affinity_left_changed(pytester):
    pytester.makepyfile("""
        import os
        def test_pins_itself():
            os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    """)
    result = run(pytester, "--threadguard")
    rows = table(result)
    assert [r[1] for r in rows] == ["TG605 affinity changed"], result.stdout.str()
    assert "->" in rows[0][-1]


@pytest.mark.slow
def test_scikit_learns_own_tests_pass_with_leaks_failing(tmp_path):
    # Software we did not write: GNU OpenMP's workers (k-means) and loky's
    # executor threads (joblib) live for the process: never leaks.
    import subprocess
    import sys
    pytest.importorskip("sklearn")
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
         "--pyargs", "sklearn.cluster.tests.test_k_means", "sklearn.utils.tests.test_parallel",
         "-k", "test_kmeans_results or loky", "--threadguard", "--threadguard-leaks", "fail"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
        env=dict(os.environ, CI="true"))
    assert out.returncode == 0, out.stdout[-3000:]
    assert "TG601" not in out.stdout
    assert re.search(r"TG602 pool started\s+(openmp:libgomp|loky)", out.stdout), out.stdout[-3000:]


def test_without_proc_the_plugin_falls_back_to_python_threads(pytester):
    # Another OS has no /proc/self/task and no attribution: Python's own list
    # of threads stands in, and nothing crashes.
    pytester.makeconftest("""
        import os
        _listdir = os.listdir
        def listdir(path="."):
            if str(path).startswith("/proc"):
                raise FileNotFoundError(2, "No such file or directory", str(path))
            return _listdir(path)
        os.listdir = listdir
    """)
    pytester.makepyfile(SUITE)
    result = run(pytester, "--threadguard")
    result.assert_outcomes(passed=3)
    rows = table(result)
    assert [r[1:3] for r in rows] == [["TG601 thread leak", "python"]], result.stdout.str()
    assert rows[0][4] == "forgotten"
