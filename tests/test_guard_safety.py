"""The guard inside other people's programs: no hang, no crash, nothing left
changed, children keep their own shares. Each scenario runs in a fresh
interpreter on real runtimes (NumPy's OpenBLAS, scikit-learn's GNU OpenMP)."""

from __future__ import annotations

import pytest

from procs import python_child, sklearn_libgomp

pytestmark = pytest.mark.live

POOLS = """
from threadpoolctl import threadpool_info
def pools():
    return sorted((os.path.basename(i["filepath"]), i["num_threads"]) for i in threadpool_info())
"""


def test_no_deadlock_while_other_threads_import_extension_modules():
    # Budgets need the loaded-library list; a thread importing an extension
    # module holds the GIL and waits for the loader's lock. Listing libraries
    # with a Python callback under that lock deadlocked every time.
    code = """
import faulthandler, glob, importlib, os, sys, sysconfig, threading
faulthandler.dump_traceback_later(90, exit=True)
import numpy, threadguard
dynload = os.path.join(sysconfig.get_paths()["stdlib"], "lib-dynload")
names = sorted({os.path.basename(p).split(".")[0] for p in glob.glob(dynload + "/*.so")}
               - set(sys.modules) - {"_tkinter", "_test_multiphase", "xxlimited", "xxlimited_35",
                                     "_testmultiphase", "_xxtestfuzz", "_ctypes_test"})
stop = threading.Event()
counts = [0] * 6
def enter(i):
    while not stop.is_set():
        with threadguard.budget(1):
            counts[i] += 1
workers = [threading.Thread(target=enter, args=(i,)) for i in range(6)]
for w in workers: w.start()
imported = 0
for name in names:
    try:
        importlib.import_module(name)
        imported += 1
    except Exception:
        pass
stop.set()
for w in workers: w.join()
faulthandler.cancel_dump_traceback_later()
report(imported=imported, entries=sum(counts), inside=threadguard.current_budget() is None)
"""
    with python_child(code, timeout=120) as child:
        f = child.facts
    assert f["imported"] >= 10 and f["entries"] > 0 and f["inside"]


@pytest.mark.slow
def test_first_entries_racing_in_many_threads():
    code = POOLS + """
import threading, numpy, threadguard
before = pools()
barrier = threading.Barrier(8)
errors = []
def first():
    barrier.wait()
    try:
        with threadguard.budget(1):
            pass
    except Exception as err:
        errors.append(repr(err))
threads = [threading.Thread(target=first) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
report(errors=errors, same=pools() == before)
"""
    for _ in range(12):  # the race hit 3-9 runs in 20 before the fix
        with python_child(code, env={"OPENBLAS_NUM_THREADS": None, "OMP_NUM_THREADS": None}) as child:
            assert child.facts == {"errors": [], "same": True}


def test_fork_while_other_threads_enter_budgets():
    # A child forked while another thread held the guard's locks (or the
    # loader's) used to block forever in its first budget.
    code = """
import threading, numpy, threadguard, multiprocessing as mp
with threadguard.budget(1):  # imported before threads start (a fork during the imports:
    pass                     # test_fork_while_another_thread_imports_what_budgets_need)
def own_pid(_):
    return os.getpid()
stop = threading.Event()
def churn():
    while not stop.is_set():
        with threadguard.budget(1):
            pass
workers = [threading.Thread(target=churn, daemon=True) for _ in range(3)]
for w in workers: w.start()
statuses = []
for _ in range(30):
    pid = os.fork()
    if pid == 0:
        with threadguard.budget(1):
            pass
        os._exit(7)
    statuses.append(wait_child(pid, 20))
shares = threadguard.worker_budget(2)
ctx = mp.get_context("fork")
started = 0
for _ in range(5):
    with ctx.Pool(2, initializer=shares.initializer, initargs=shares.initargs) as pool:
        started += len(pool.map(own_pid, range(4), chunksize=1)) == 4
stop.set()
for w in workers: w.join()
report(statuses=statuses, pools_started=started)
"""
    with python_child(code, timeout=300) as child:
        f = child.facts
    assert f["statuses"] == [7] * 30
    assert f["pools_started"] == 5


# A module's import made slow where only that module's import lock is held
# (while it runs; finding it holds the interpreter's global import lock too,
# which a fork waits for anyway): a fork can then land inside the import.
SLOW_IMPORT = """
import faulthandler, importlib.abc, importlib.machinery, threading, time
faulthandler.dump_traceback_later(60, exit=True)  # a hang fails the test in a minute
class _SlowLoader(importlib.abc.Loader):
    def __init__(self, real, seconds, started, after):
        self.real, self.seconds, self.started, self.after = real, seconds, started, after
    def create_module(self, spec):
        return self.real.create_module(spec)
    def exec_module(self, module):
        if self.after:  # the module's code has run, its import is not done
            self.real.exec_module(module)
        self.started.set()
        time.sleep(self.seconds)
        if not self.after:
            self.real.exec_module(module)
class _SlowFinder(importlib.abc.MetaPathFinder):
    def __init__(self, name, seconds, finding, after):
        self.name, self.seconds, self.finding, self.after = name, seconds, finding, after
        self.started = threading.Event()
    def find_spec(self, name, path=None, target=None):
        if name != self.name:
            return None
        if self.finding:  # before the module is in sys.modules
            self.started.set()
            time.sleep(self.seconds)
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        spec.loader = _SlowLoader(spec.loader, self.seconds, self.started, self.after)
        return spec
def slow_import(name, seconds=0.5, finding=False, after=False):
    finder = _SlowFinder(name, seconds, finding, after)
    sys.meta_path.insert(0, finder)
    return finder.started
def child_budget():  # in a forked child: exits 7 when its first budget caps and leaks nothing
    with threadguard.budget(1) as b:
        capped = b.threads == 1
    os._exit(7 if capped and "KMP_DUPLICATE_LIB_OK" not in os.environ else 3)
"""


@pytest.mark.parametrize("first", ["threadguard.budget", "import threadguard.guard", "threadpoolctl"])
def test_fork_while_another_thread_imports_what_budgets_need(first):
    # A worker thread's first budget imports the guard, then threadpoolctl at
    # the first look at the loaded libraries. A fork meanwhile used to leave
    # the child waiting forever on that module's import lock, held by a
    # thread that does not exist there (also when a fork hook waited for the
    # guard's import: the thread began threadpoolctl's while another
    # library's slow hook ran). The child imports them afresh, and does not
    # keep the variable threadpoolctl's code sets.
    code = SLOW_IMPORT + f"""
os.register_at_fork(before=lambda: time.sleep(0.3))  # a slow hook of another library's
import importlib, numpy, threadguard
FIRST = {first!r}
SLOWED = "threadpoolctl" if FIRST == "threadpoolctl" else "threadguard.guard"
if FIRST == "threadpoolctl":
    threadguard.budget  # the guard is imported here: the thread imports threadpoolctl only
# threadpoolctl's own code sets KMP_DUPLICATE_LIB_OK: the fork lands after it
started = slow_import(SLOWED, after=FIRST == "threadpoolctl")
if SLOWED != "threadpoolctl":
    slow_import("threadpoolctl")
def first():
    if FIRST == "import threadguard.guard":
        importlib.import_module("threadguard.guard")  # not through the package's names
    with threadguard.budget(1):
        pass
t = threading.Thread(target=first)
t.start()
started.wait()
landed_inside = SLOWED in importlib._bootstrap._module_locks  # its import lock is held
pid = os.fork()
if pid == 0:
    child_budget()
status = wait_child(pid)
t.join()
report(landed_inside=landed_inside, status=status)
"""
    with python_child(code, env={"KMP_DUPLICATE_LIB_OK": None}, timeout=60) as child:
        assert child.facts == {"landed_inside": True, "status": 7}


@pytest.mark.parametrize("module", ["dataclasses", "fcntl"])
def test_fork_while_the_program_imports_a_standard_module_budgets_need_too(module):
    # Not threadguard's import: another thread of the program imports a
    # standard module at the fork, of Python code or an extension. The
    # child's first budget imports it too (the guard's records are
    # dataclasses, the host ledger locks with fcntl), and used to wait
    # forever.
    code = SLOW_IMPORT + f"""
import numpy, threadguard
MODULE = {module!r}
if MODULE in sys.modules:
    report(status="imported at start"); os._exit(0)
started = slow_import(MODULE)
t = threading.Thread(target=lambda: __import__(MODULE))
t.start()
started.wait()
pid = os.fork()
if pid == 0:
    child_budget()
status = wait_child(pid)
t.join()
report(status=status)
"""
    with python_child(code, env={"KMP_DUPLICATE_LIB_OK": None}, timeout=60) as child:
        if child.facts["status"] == "imported at start":
            pytest.skip(f"{module} is imported at this interpreter's start")
        assert child.facts == {"status": 7}


@pytest.mark.parametrize("case", ["own threadpoolctl import", "own guard import",
                                  "own threadpoolctl import, its child goes on",
                                  "own guard import, its child goes on",
                                  "waiting for another thread's guard import",
                                  "waiting, its child goes on",
                                  "waiting in an import statement, its child goes on",
                                  "waiting for threadpoolctl, its child goes on"])
def test_a_signal_handler_forking_during_an_import_neither_hangs_nor_breaks_it(case):
    # The fork hooks must not touch an import of the forking thread's own
    # (it is the thread the handler interrupted), nor run an import again
    # inside the one it interrupted. A child that goes on with an import its
    # thread waited for (another thread's, abandoned there) gets the module
    # whole, however it waited: in importlib, in CPython's fast path for a
    # module already in sys.modules, or on threadguard's own lock.
    code = SLOW_IMPORT + f"""
import gc, importlib, signal, numpy, threadguard
CASE = {case!r}
GOES_ON = CASE.endswith("its child goes on")
forks, in_child = [], []
def handler(signum, frame):
    pid = os.fork()
    if pid == 0:
        if not GOES_ON:
            os._exit(7)  # the child of a handler: only shows the fork returned
        in_child.append(True)
        return
    forks.append(pid)
signal.signal(signal.SIGALRM, handler)
if CASE.startswith("own threadpoolctl import"):
    threadguard.budget
    slow_import("threadpoolctl")
    signal.setitimer(signal.ITIMER_REAL, 0.2)
    with threadguard.budget(1):
        pass
elif CASE.startswith("own guard import"):
    slow_import("threadguard.guard", finding=True)  # not in sys.modules yet
    signal.setitimer(signal.ITIMER_REAL, 0.2)
    threadguard.budget
elif CASE == "waiting for threadpoolctl, its child goes on":
    threadguard.budget
    started = slow_import("threadpoolctl", 1.0)
    def first():
        with threadguard.budget(1):  # imports it, holding threadguard's lock for that
            pass
    t = threading.Thread(target=first)
    t.start()
    started.wait()
    signal.setitimer(signal.ITIMER_REAL, 0.3)  # while this thread waits for that lock
    assert threadguard.runtimes() is not None
    t.join()
else:
    started = slow_import("threadguard.guard", 1.0)
    t = threading.Thread(target=lambda: threadguard.budget)
    t.start()
    started.wait()
    signal.setitimer(signal.ITIMER_REAL, 0.3)  # while this thread waits for the import
    if "statement" in CASE:
        from threadguard.guard import budget  # in sys.modules already: the fast path
    else:
        threadguard.budget
    t.join()
with threadguard.budget(1) as b:
    capped = b.threads == 1
if in_child:  # (the other thread's abandoned frames hold what it had, a ledger too)
    os._exit(7 if capped and "KMP_DUPLICATE_LIB_OK" not in os.environ else 3)
ledgers = sum(type(o).__name__ == "_Ledger" for o in gc.get_objects())  # the guard ran once
report(forks=[wait_child(pid) for pid in forks], capped=capped, ledgers=ledgers)
"""
    with python_child(code, env={"KMP_DUPLICATE_LIB_OK": None}, timeout=60) as child:
        assert child.facts == {"forks": [7], "capped": True, "ledgers": 1}


@pytest.mark.parametrize("env", [False, True])
def test_library_loaded_inside_a_section_gets_its_own_size_back(env):
    # scikit-learn brings SciPy's OpenBLAS and GNU OpenMP while inside; when
    # all sections are left every pool must be as in an interpreter that never
    # used threadguard, here at the CPUs' count, whatever the budget exported.
    code = POOLS + f"""
import numpy, threadguard
with threadguard.budget(1, env={env}):
    with threadguard.budget(1, env={env}):
        import sklearn.cluster
    with threadguard.budget(1, env={env}):
        pass
for _ in range(3):
    with threadguard.budget(1, env={env}):
        pass
report(pools=pools(), env=os.environ.get("OMP_NUM_THREADS"))
"""
    fresh = POOLS + """
import numpy, sklearn.cluster
report(pools=pools(), env=os.environ.get("OMP_NUM_THREADS"))
"""
    unset = {"OMP_NUM_THREADS": None, "OPENBLAS_NUM_THREADS": None}
    with python_child(code, env=unset) as guarded, python_child(fresh, env=unset) as plain:
        assert guarded.facts == plain.facts
    assert len(plain.facts["pools"]) >= 3


def test_pinned_sections_left_in_any_order():
    code = """
import threading, threadguard
original = sorted(os.sched_getaffinity(0))
a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
seen = {}
def a():
    with threadguard.budget(1, pin=True):
        a_in.set(); b_in.wait()
    a_out.set()
def b():
    a_in.wait()
    with threadguard.budget(1, pin=True):
        b_in.set(); a_out.wait()
        seen["b_after_a_left"] = sorted(os.sched_getaffinity(0))
ta, tb = threading.Thread(target=a), threading.Thread(target=b)
ta.start(); tb.start(); ta.join(); tb.join()
report(original=original, after=sorted(os.sched_getaffinity(0)), **seen)
"""
    with python_child(code) as child:
        f = child.facts
    if len(f["original"]) < 2:
        pytest.skip("needs 2 CPUs to see pinning")
    assert len(f["b_after_a_left"]) < len(f["original"])  # B is still pinned
    assert f["after"] == f["original"]


def test_left_from_another_thread_is_refused_and_restored():
    gomp = sklearn_libgomp()
    code = POOLS + f"""
import threading, numpy, threadguard
gomp = start_openmp({gomp!r}, 2)
before = pools()
section = threadguard.budget(1, env=True)
state = {{}}
entered, left = threading.Event(), threading.Event()
def a():
    section.__enter__()
    entered.set(); left.wait()
    state["a_openmp_before_next_call"] = gomp.omp_get_max_threads()
    with threadguard.budget(2):
        pass
    state["a_openmp_after_next_call"] = gomp.omp_get_max_threads()
ta = threading.Thread(target=a); ta.start(); entered.wait()
try:
    section.__exit__(None, None, None)
    state["error"] = None
except RuntimeError as err:
    state["error"] = type(err).__name__
state["pools"], state["env"] = pools(), os.environ.get("OMP_NUM_THREADS")
state["inside"] = threadguard.current_budget() is not None
left.set(); ta.join()
report(before=before, **state)
"""
    with python_child(code, env={"OMP_NUM_THREADS": None}) as child:
        f = child.facts
    assert f["error"] == "CrossThreadExit"
    assert f["env"] is None and not f["inside"]
    blas = lambda pools: [p for p in pools if "openblas" in p[0]]
    assert blas(f["pools"]) == blas(f["before"])
    assert f["a_openmp_before_next_call"] == 1  # only thread A can set its own limit
    assert f["a_openmp_after_next_call"] == 2


def test_one_object_reused_and_nested_sections_left_outer_first():
    gomp = sklearn_libgomp()
    code = POOLS + f"""
import numpy, threadguard
gomp = start_openmp({gomp!r}, 2)
before = (pools(), gomp.omp_get_max_threads())
b = threadguard.budget(1)
with b:
    with b:
        pass
    reused_inner_left = gomp.omp_get_max_threads()
after_reuse = (pools(), gomp.omp_get_max_threads())
outer, inner = threadguard.budget(2), threadguard.budget(1)
outer.__enter__(); inner.__enter__()
outer.__exit__(None, None, None)
still_inner = gomp.omp_get_max_threads()
inner.__exit__(None, None, None)
report(before=before, reused_inner_left=reused_inner_left, after_reuse=after_reuse,
       still_inner=still_inner, after=(pools(), gomp.omp_get_max_threads()))
"""
    with python_child(code, env={"OMP_NUM_THREADS": None}) as child:
        f = child.facts
    assert f["reused_inner_left"] == 1  # the outer entry of the same object is still in
    assert f["after_reuse"] == f["before"] == f["after"]
    assert f["still_inner"] == 1


@pytest.mark.slow
def test_exceptions_from_a_signal_handler_leave_nothing_behind():
    # A SIGALRM handler raising every 50-500 us, anywhere: in entry, in exit,
    # in the runtimes' setters. Before, 100-200 sections of 5,000 were left.
    code = POOLS + """
import random, signal, time, numpy as np, threadguard
from sklearn.cluster import KMeans
KMeans(n_clusters=2, n_init=1, random_state=0).fit(np.random.RandomState(0).rand(200, 3))
before = (pools(), os.environ.get("OMP_NUM_THREADS"))
with threadguard.budget(1):
    pass
class Tick(Exception):
    pass
armed, raised = [False], [0]
def handler(signum, frame):
    signal.setitimer(signal.ITIMER_REAL, random.uniform(50e-6, 500e-6))
    if armed[0]:
        raised[0] += 1
        raise Tick
signal.signal(signal.SIGALRM, handler)
signal.setitimer(signal.ITIMER_REAL, 200e-6)
start = time.perf_counter()
for i in range(5000):
    try:
        armed[0] = True
        with threadguard.budget(1, env=(i % 2 == 0)):
            pass
        armed[0] = False
    except Tick:
        armed[0] = False
    if time.perf_counter() - start > 30:
        break
signal.setitimer(signal.ITIMER_REAL, 0)
signal.signal(signal.SIGALRM, signal.SIG_IGN)
report(before=before, after=(pools(), os.environ.get("OMP_NUM_THREADS")), raised=raised[0],
       inside=threadguard.current_budget() is not None)
"""
    with python_child(code, env={"OMP_NUM_THREADS": None}) as child:
        f = child.facts
    assert f["raised"] > 50
    assert f["after"] == f["before"] and not f["inside"]


def test_fork_child_keeps_only_the_forking_threads_sections():
    code = """
import threading, numpy, threadguard
r, w = os.pipe()
def fork_here():
    pid = os.fork()
    if pid == 0:
        with threadguard.budget(2) as b:
            granted = b.threads
        os.write(w, f"{granted} {os.environ.get('OMP_NUM_THREADS')}".encode())
        os._exit(0)
    os.waitpid(pid, 0)
with threadguard.budget(1, env=True):  # the main thread is inside while a worker forks
    t = threading.Thread(target=fork_here); t.start(); t.join()
granted, env = os.read(r, 64).decode().split()
report(granted=int(granted), env=env, cpus=len(os.sched_getaffinity(0)))
"""
    with python_child(code, env={"OMP_NUM_THREADS": None}) as child:
        f = child.facts
    assert f["granted"] == min(2, f["cpus"])  # the main thread's section is not in the child
    assert f["env"] == "None"


CHILDREN = POOLS + """
import subprocess, sys, multiprocessing as mp, numpy, threadguard
from joblib import Parallel, delayed
def seen(_=None):
    import numpy, os
    from threadpoolctl import threadpool_info
    return (os.environ.get("OMP_NUM_THREADS"),
            tuple(sorted(i["num_threads"] for i in threadpool_info() if "openblas" in i["filepath"])))
def child_process():
    code = "import numpy, os; from threadpoolctl import threadpool_info as t; " \\
           "print(os.environ.get('OMP_NUM_THREADS'), [i['num_threads'] for i in t()])"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip()
def all_children():
    out = {"subprocess": child_process(),
           "loky": sorted(set(Parallel(n_jobs=2)(delayed(seen)(i) for i in range(4))))}
    for method in ("fork", "spawn"):
        with mp.get_context(method).Pool(1) as pool:
            out[method] = pool.map(seen, [0])
    return out
if __name__ == "__main__":
    plain = all_children()
    with threadguard.budget(1):
        default = all_children()
    with threadguard.budget(1, env=True):
        exported = all_children()
    print(json.dumps({"plain": plain, "default": default, "exported": exported}))
"""


@pytest.mark.slow
def test_children_started_inside_a_budget_keep_their_own_share(tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path
    script = tmp_path / "children.py"
    script.write_text("import json, os\n" + CHILDREN)
    env = dict(os.environ, CI="true", PYTHONPATH=str(Path(__file__).parents[1]))
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "LOKY_MAX_CPU_COUNT"):
        env.pop(name, None)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                         timeout=240)
    assert out.returncode == 0, out.stderr
    f = json.loads(out.stdout.strip().splitlines()[-1])
    plain, default, exported = f["plain"], f["default"], f["exported"]
    # By default, every child gets what it gets without threadguard: loky its
    # cpu_count() // n_jobs, the others their own size (never the parent's).
    assert default["loky"] == plain["loky"] and default["subprocess"] == plain["subprocess"]
    assert default["spawn"] == plain["spawn"]
    cpus = len(os.sched_getaffinity(0))
    assert all(row[0] == str(max(1, cpus // 2)) for row in default["loky"])
    # A forked child is a copy: it keeps the parent's capped pools.
    assert all(n == 1 for n in default["fork"][0][1])
    # env=True hands the grant to children that read the environment.
    assert exported["subprocess"].startswith("1 ") and exported["spawn"][0][0] == "1"
    assert all(n == 1 for n in exported["spawn"][0][1])


def test_finalizers_and_signal_handlers_inside_the_guard_never_deadlock():
    # A generator holding a section, closed by the collector while another
    # budget is being entered on the same thread; a signal handler that enters
    # budgets while the interrupted code is inside one. Both hung before.
    code = POOLS + """
import gc, random, signal, numpy, threadguard
before = pools()
def holder():
    with threadguard.budget(1):
        yield
for _ in range(300):
    g = holder(); next(g)
    cycle = [g]; cycle.append(cycle)  # only the collector can close it
    del g, cycle
    gc.collect() if random.random() < 0.1 else None
    with threadguard.budget(1):  # the collector may run inside this entry
        pass
gc.collect()
handled = [0]
def handler(signum, frame):
    with threadguard.budget(1):
        handled[0] += 1
    signal.setitimer(signal.ITIMER_REAL, random.uniform(20e-6, 200e-6))
signal.signal(signal.SIGALRM, handler)
signal.setitimer(signal.ITIMER_REAL, 100e-6)
for _ in range(3000):
    with threadguard.budget(1):
        pass
signal.setitimer(signal.ITIMER_REAL, 0)
signal.signal(signal.SIGALRM, signal.SIG_IGN)
report(handled=handled[0], same=pools() == before, inside=threadguard.current_budget() is not None)
"""
    with python_child(code, env={"OPENBLAS_NUM_THREADS": None, "OMP_NUM_THREADS": None},
                      timeout=120) as child:
        f = child.facts
    assert f["handled"] > 10 and f["same"] and not f["inside"]


def test_a_thread_that_ends_inside_a_section_gives_its_share_back():
    code = POOLS + """
import threading, numpy, threadguard
before = pools()
def leaves_nothing():
    threadguard.budget(1).__enter__()  # and the thread ends inside it
t = threading.Thread(target=leaves_nothing); t.start(); t.join()
with threadguard.budget(2) as b:
    granted = b.threads
report(before=before, after=pools(), granted=granted, cpus=len(os.sched_getaffinity(0)))
"""
    with python_child(code, env={"OPENBLAS_NUM_THREADS": None, "OMP_NUM_THREADS": None}) as child:
        f = child.facts
    assert f["granted"] == min(2, f["cpus"])  # not halved by the dead thread's section
    assert f["after"] == f["before"]


@pytest.mark.parametrize("how", ["env=True", "pin=True"])
def test_numpy_imported_inside_an_exporting_or_pinned_section_gets_its_size_back(how):
    # OpenBLAS sizes itself when it loads: from the exported variable, or from
    # the pinned CPUs. After the section it must be as without threadguard.
    code = POOLS + f"""
import threadguard
with threadguard.budget(1, {how}):
    import numpy
report(pools=pools())
"""
    plain = POOLS + """
import numpy
report(pools=pools())
"""
    unset = {"OPENBLAS_NUM_THREADS": None, "OMP_NUM_THREADS": None}
    with python_child(code, env=unset) as guarded, python_child(plain, env=unset) as fresh:
        assert guarded.facts == fresh.facts


def test_a_child_forked_outside_any_section_is_not_left_capped():
    code = POOLS + """
import threading, numpy, threadguard
before = (pools(), os.environ.get("OMP_NUM_THREADS"), sorted(os.sched_getaffinity(0)))
inside, done = threading.Event(), threading.Event()
def hold():
    with threadguard.budget(1, env=True, pin=True):
        inside.set(); done.wait()
t = threading.Thread(target=hold); t.start(); inside.wait()
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    state = (pools(), os.environ.get("OMP_NUM_THREADS"), sorted(os.sched_getaffinity(0)))
    os.write(w, json.dumps(state).encode()); os._exit(0)
os.waitpid(pid, 0)
child = json.loads(os.read(r, 65536))
done.set(); t.join()
report(before=before, child=child)
"""
    with python_child(code, env={"OPENBLAS_NUM_THREADS": None, "OMP_NUM_THREADS": None}) as child:
        f = child.facts
    assert f["child"] == f["before"]  # the forking thread had no section


def test_decorated_coroutines_and_generators_run_inside_their_budget():
    code = POOLS + """
import asyncio, numpy, threadguard
from threadpoolctl import threadpool_info
blas = lambda: [i["num_threads"] for i in threadpool_info() if i["internal_api"] == "openblas"][0]
@threadguard.budget(1)
async def coroutine():
    await asyncio.sleep(0)
    return blas()
@threadguard.budget(1)
def generator():
    yield blas()
report(outside=blas(), coroutine=asyncio.run(coroutine()), generator=next(iter(generator())))
"""
    with python_child(code, env={"OPENBLAS_NUM_THREADS": "2"}) as child:
        f = child.facts
    assert f == {"outside": 2, "coroutine": 1, "generator": 1}


def test_thread_counts_a_c_int_would_wrap_are_refused():
    import threadguard
    with pytest.raises(ValueError, match="1 to 65536"):
        threadguard.budget(2**31)


def test_leaving_with_torch_loaded_restores_the_threads_own_openmp_limit():
    # torch.set_num_threads also sets the calling thread's OpenMP limit: the
    # thread's own limit must be put back after the process-wide ones.
    pytest.importorskip("torch")
    code = """
import ctypes, threading, torch, threadguard
from threadguard.libraries import loaded_libraries
torch.get_num_threads()  # torch's lazy start sets this thread's OpenMP limit once
gomp = ctypes.CDLL([l.path for l in loaded_libraries().libraries if "gomp" in l.path][0])
seen = {}
def worker():
    torch.get_num_threads(); gomp.omp_set_num_threads(5)
    seen["before"] = gomp.omp_get_max_threads()
    with threadguard.budget(1):
        seen["inside"] = gomp.omp_get_max_threads()
    seen["after"] = gomp.omp_get_max_threads()
t = threading.Thread(target=worker); t.start(); t.join()
report(**seen)
"""
    with python_child(code) as child:
        assert child.facts == {"before": 5, "inside": 1, "after": 5}


def test_a_dead_threads_section_is_dropped_when_the_last_live_one_leaves():
    code = POOLS + """
import threading, numpy, threadguard
before = (pools(), os.environ.get("OMP_NUM_THREADS"))
with threadguard.budget(2):
    t = threading.Thread(target=lambda: threadguard.budget(1, env=True).__enter__())
    t.start(); t.join()
report(before=before, after=(pools(), os.environ.get("OMP_NUM_THREADS")),
       inside=threadguard.current_budget() is not None)
"""
    with python_child(code, env={"OPENBLAS_NUM_THREADS": None, "OMP_NUM_THREADS": None}) as child:
        f = child.facts
    assert f["after"] == f["before"] and not f["inside"]


def test_a_setting_made_after_an_exporting_section_is_kept():
    gomp = sklearn_libgomp()
    code = f"""
import ctypes, threadguard
with threadguard.budget(1, env=True):
    pass
lib = ctypes.CDLL({gomp!r})  # loaded after the variables were put back
lib.omp_set_num_threads(1)  # the user's own choice
with threadguard.budget(2):
    pass
report(after=lib.omp_get_max_threads())
"""
    with python_child(code, env={"OMP_NUM_THREADS": None}) as child:
        assert child.facts == {"after": 1}


def test_a_budget_used_as_a_decorator_after_being_entered_keeps_its_limits():
    code = """
import warnings, numpy, threadguard
from threadpoolctl import threadpool_info
blas = lambda: [i["num_threads"] for i in threadpool_info() if i["internal_api"] == "openblas"][0]
warnings.simplefilter("ignore")
b = threadguard.budget(64)
with b:
    direct = blas()
report(direct=direct, decorated=b(blas)(), cpus=len(os.sched_getaffinity(0)))
"""
    with python_child(code, env={"OPENBLAS_NUM_THREADS": None, "OMP_NUM_THREADS": None}) as child:
        f = child.facts
    assert f["decorated"] == f["direct"] <= f["cpus"]


def test_an_interrupt_at_the_start_of_any_guard_function_leaves_nothing_behind():
    # A signal handler's exception can come at any function entry (where the
    # interpreter runs pending handlers). Every function the guard runs in
    # one entry and exit, interrupted in turn at its first line, must leave
    # the limits and the ledger as before; but __exit__'s own first line:
    # no context manager can catch an exception raised before its code runs.
    code = POOLS + f"""
import ctypes, sys, threadguard
from threadguard import guard
gomp = start_openmp({sklearn_libgomp()!r}, 2)
gomp.omp_get_max_threads.restype = ctypes.c_int
import numpy
def state():
    led = guard._ledger
    return (pools(), gomp.omp_get_max_threads(), dict(led.stacks), dict(led.process_saved),
            dict(led.thread_saved), led.busy)
def cycle():
    with threadguard.budget(1):
        pass
cycle(); cycle()
before = repr(state())
called = []
def spy(frame, event, arg):
    if event == "call" and "threadguard" in frame.f_code.co_filename:
        called.append(frame.f_code.co_name)
sys.settrace(spy); cycle(); sys.settrace(None)
targets = [(name, called[:i].count(name)) for i, name in enumerate(called) if name != "__exit__"]
left, hit = {{}}, []
for name, nth in targets:
    seen = {{}}
    def interrupt(frame, event, arg, name=name, nth=nth):
        if event == "call" and "threadguard" in frame.f_code.co_filename:
            here = frame.f_code.co_name
            seen[here] = seen.get(here, 0) + 1
            if here == name and seen[here] - 1 == nth:
                sys.settrace(None)
                hit.append(f"{{name}}#{{nth}}")
                raise KeyboardInterrupt
    try:
        sys.settrace(interrupt)
        cycle()
    except KeyboardInterrupt:
        pass
    sys.settrace(None)
    if repr(state()) != before:
        left[f"{{name}}#{{nth}}"] = repr(state())
        cycle()  # the next cycle may clean up; the finding stands
report(hit=hit, left=left)
"""
    with python_child(code, env={"OPENBLAS_NUM_THREADS": None, "OMP_NUM_THREADS": None}) as child:
        f = child.facts
    assert {"_enter_alone#0", "_exit_alone#0", "_put_back#0"} <= set(f["hit"]), f["hit"]
    assert f["left"] == {}, f["left"]


def test_torch_gets_back_its_own_size_after_a_lone_section():
    # torch.get_num_threads() reads the calling thread's OpenMP limit: the
    # original must be read before any limit of the thread is set, or torch
    # is put back at the grant (which threads started later then inherit).
    pytest.importorskip("torch")
    code = """
import threading, torch, threadguard
def in_new_thread():
    out = []
    t = threading.Thread(target=lambda: out.append(torch.get_num_threads())); t.start(); t.join()
    return out[0]
start = (torch.get_num_threads(), in_new_thread())
with threadguard.budget(1) as b:
    before = [r.before for r in b.report() if r.target == "torch"]
report(start=start, before=before, after=(torch.get_num_threads(), in_new_thread()))
"""
    with python_child(code, env={"OMP_NUM_THREADS": None}) as child:
        f = child.facts
    assert f["before"] == [f["start"][0]] and f["after"] == f["start"]


def test_a_reused_thread_id_does_not_inherit_a_left_threads_originals():
    # A section left from another thread keeps its thread's own originals for
    # that thread's next call; a new thread that gets the id must not use them.
    code = f"""
import ctypes, threading, time, threadguard
from threadguard.guard import CrossThreadExit
gomp = start_openmp({sklearn_libgomp()!r}, 2)
gomp.omp_get_max_threads.restype = ctypes.c_int
results = []
for attempt in range(20):
    keep, idents, res = [], [], {{}}
    def first():
        idents.append(threading.get_ident())
        gomp.omp_set_num_threads(5)
        b = threadguard.budget(1); b.__enter__(); keep.append(b)
    t = threading.Thread(target=first); t.start(); t.join()
    try:
        keep[0].__exit__(None, None, None)
    except CrossThreadExit:
        pass
    def second():
        idents.append(threading.get_ident())
        res["before"] = gomp.omp_get_max_threads()
        with threadguard.budget(1):
            pass
        res["after"] = gomp.omp_get_max_threads()
    t = threading.Thread(target=second); t.start(); t.join()
    if idents[0] == idents[1]:
        results.append(res)
report(results=results)
"""
    with python_child(code, env={"OMP_NUM_THREADS": None}) as child:
        f = child.facts
    assert f["results"], "no thread id was reused in 20 tries"
    assert all(r["after"] == r["before"] for r in f["results"]), f["results"]
