"""pytest plugin: thread budgets per xdist worker, leak and oversubscription checks.

Inactive until enabled (``--threadguard`` or ``threadguard = true`` in the ini
file): installing threadguard never changes a suite. Enabled:

- every pool is capped to effective CPUs // xdist workers (at least 1), or
  ``--threadguard-threads N``, from before test modules are imported; the
  variables children read are set too;
- after each test: threads still alive that were not there before it (after a
  grace period, attributed to the pool that made them), pools resized beyond
  the budget, environment variables and CPU affinity left changed. Threads
  of pools that live for the process (OpenMP, OpenBLAS, TBB/OpenVINO, torch,
  loky's reusable executor) are reported once, as a pool started, never as a
  leak: a leak is a thread the test started and did not end;
- ``@pytest.mark.threadguard(max_threads=N, leaks="fail"|"warn"|"ignore")``,
  fixtures ``thread_budget`` and ``thread_census``;
- a summary table, ``--threadguard-report=PATH`` (JSON), and
  ``--threadguard-strict`` to turn findings into failures.

Settings: marker > command line > ini > default. Per test the plugin only
lists thread ids and compares the environment and affinity (microseconds).
"""

from __future__ import annotations

import json
import os
import time

import pytest

LEAK_POLICIES = ("fail", "warn", "ignore")
OPTIONS = {  # name: (description, default) -- one text for the flag and the ini key
    "threadguard": ("enable threadguard's thread budget and per-test checks", False),
    "threadguard_threads": ("threads per worker (default: effective CPUs // xdist workers)", None),
    "threadguard_scope": ("host: the workers also share the CPUs with every other process in "
                          "the host ledger (other sessions, services); default process", None),
    "threadguard_leaks": ("what a thread leak does: fail, warn or ignore", "warn"),
    "threadguard_grace": ("seconds to wait for threads that are shutting down", "0.5"),
    "threadguard_strict": ("turn every threadguard finding into a failure", False),
    "threadguard_report": ("write the findings as JSON to this path", None),
}
_KEY = pytest.StashKey["_State"]()


def pytest_addoption(parser):
    group = parser.getgroup("threadguard")
    for name, (help_text, default) in OPTIONS.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(default, bool):
            group.addoption(flag, action="store_true", default=None, dest=name, help=help_text)
            parser.addini(name, help_text, type="bool", default=default)
        else:
            group.addoption(flag, action="store", default=None, dest=name, help=help_text)
            parser.addini(name, help_text, default=default)


def _setting(config, name):
    """Command line, else ini, else default."""
    value = config.getoption(name)
    return value if value is not None else config.getini(name)


def _check_number(value, where: str, cast=int, low=1):
    """A setting as a number of at least ``low``, or a usage error naming it."""
    kind = "a whole number" if cast is int else "a number of seconds"
    try:
        number = cast(value)
    except (TypeError, ValueError):
        raise pytest.UsageError(f"threadguard: {where} must be {kind} of at least {low}, "
                                f"got {value!r}") from None
    if number < low:
        raise pytest.UsageError(f"threadguard: {where} must be {kind} of at least {low}, "
                                f"got {number}")
    return number


def _check_int(value, where: str) -> int | None:
    return None if value in (None, "") else _check_number(value, where)


def _check_seconds(value, where: str) -> float:
    return _check_number(value, where, float, 0)


def _check_policy(value, where: str) -> str:
    if value not in LEAK_POLICIES:
        raise pytest.UsageError(f"threadguard: {where} must be one of {', '.join(LEAK_POLICIES)}, "
                                f"got {value!r}")
    return value


class _State:
    def __init__(self, config):
        self.threads = _check_int(_setting(config, "threadguard_threads"), "--threadguard-threads")
        self.scope = _setting(config, "threadguard_scope") or None  # None: THREADGUARD_SCOPE
        if self.scope not in (None, "process", "host"):
            raise pytest.UsageError(f"threadguard: --threadguard-scope must be process or host, "
                                    f"got {self.scope!r}")
        self.leaks = _check_policy(_setting(config, "threadguard_leaks"), "--threadguard-leaks")
        self.grace = _check_seconds(_setting(config, "threadguard_grace"), "--threadguard-grace")
        self.strict = bool(_setting(config, "threadguard_strict"))
        self.report_path = _setting(config, "threadguard_report") or None
        # xdist gives its workers their id and count; the environment
        # (PYTEST_XDIST_WORKER_COUNT) would also reach a pytest run nested in one.
        workerinput = getattr(config, "workerinput", None)
        if workerinput is not None:
            self.worker = workerinput.get("workerid", "gw?")
            self.workers = _check_int(workerinput.get("workercount", 1), "xdist's workercount") or 1
        else:
            self.worker, self.workers = "main", 1
            if getattr(config.option, "numprocesses", None):  # xdist's controller: no tests
                self.scope = "process"  # run here; its workers share the host, not it
        self.session_budget = None
        self.generation = None
        self.findings: list[dict] = []  # gathered from every worker's reports
        self.budgets: dict[str, int] = {}
        self.budget_reported = False
        self.kept: set[str] = set()  # threads of process-lifetime pools, reported once
        # The threads seen when the last test's check ended: the next test's
        # "before" (one listing per test; nothing but pytest runs in between).
        self.last_tids: set[str] | None = None
        self.last_environ: dict | None = None  # the same for the environment, when unchanged

    # -- the budget ---------------------------------------------------------
    def start(self):
        import threadguard
        from threadguard import _env
        from threadguard.guard import current_limiters, current_topology
        from threadguard.libraries import linker_generation
        # Looked up once: each test uses them (an import statement costs ~1 us).
        self.env, self.current_limiters = _env, current_limiters
        self.linker_generation = linker_generation
        effective = current_topology().effective_cpus
        self.budget_threads = self.threads or max(1, effective // self.workers)
        self.source = ("--threadguard-threads" if self.threads else
                       f"{effective} effective CPUs // {self.workers} worker(s)")
        self._enter(threadguard)

    def _enter(self, threadguard):
        if self.session_budget is not None:
            self.session_budget.__exit__(None, None, None)
        self.session_budget = threadguard.budget(self.budget_threads, allow_oversubscription=True,
                                                  env=True, scope=self.scope)
        self.session_budget.__enter__()
        self.generation = self.linker_generation()
        self.last_environ = None  # the budget may have exported its variables anew

    def refresh(self):
        """Re-apply when the dynamic linker loaded something (a new runtime)."""
        if self.linker_generation() != self.generation:
            import threadguard
            self._enter(threadguard)

    def stop(self):
        if self.session_budget is not None:
            self.session_budget.__exit__(None, None, None)
            self.session_budget = None


def pytest_configure(config):
    config.addinivalue_line("markers", "threadguard(max_threads=None, leaks=None): thread "
                                       "budget and leak policy for one test")
    if not _setting(config, "threadguard"):
        return
    state = _State(config)
    config.stash[_KEY] = state
    config.pluginmanager.register(_Collector(state), "threadguard-collector")
    state.start()  # before test modules are imported


def pytest_unconfigure(config):
    state = config.stash.get(_KEY, None)
    if state is not None:
        state.stop()


def pytest_report_header(config):
    state = config.stash.get(_KEY, None)
    if state is not None:
        return (f"threadguard: {state.budget_threads} thread(s) per worker "
                f"({state.source}), leaks: {state.leaks}")
    return None


# Findings, with codes as the doctor's (``threadguard.doctor.findings.CATALOG``).
LEAK, STARTED, RESIZED, ENVIRONMENT, AFFINITY = "TG601", "TG602", "TG603", "TG604", "TG605"
# Pools that live for the process: their threads are kept on purpose.
_LOKY_THREADS = ("ExecutorManagerThread", "QueueFeederThread")
WATCHER_NAME = "threadguard-host"  # threadguard.host's watcher, named here: no import at start


def _thread_ids() -> set[str]:
    """This process's thread ids, listed each time (a count can stay the
    same while one thread ends and another starts). Off Linux: the Python
    threads only."""
    try:
        return set(os.listdir("/proc/self/task"))
    except OSError:
        import threading
        return {str(t.native_id) for t in threading.enumerate() if t.native_id is not None}


def _snapshot(state: _State, tids: set[str] | None):
    environ, state.last_environ = state.last_environ, None
    return (_thread_ids() if tids is None else tids,
            state.env.snapshot() if environ is None else environ, _affinity())


def _affinity():
    try:
        return os.sched_getaffinity(0)
    except (AttributeError, OSError):
        return None


def _leaked(before_tids: set[str], grace: float) -> tuple[set[int], set[str]]:
    """Threads born in the test and still alive after ``grace`` seconds
    (a thread that ended while another was born is seen by its id), and
    the last listing."""
    deadline = None
    while True:
        now = _thread_ids()
        new = now - before_tids
        if not new:
            return set(), now
        if deadline is None:
            deadline = time.monotonic() + grace
        elif time.monotonic() >= deadline:
            return {int(t) for t in new}, now
        time.sleep(0.02)


def _describe_threads(tids: set[int]) -> list[dict]:
    """Each thread's pool, Python name, and whether its pool lives for the
    process (a runtime's workers, loky's executor)."""
    import threading
    from threadguard.pools import MAIN, OTHER, PYTHON, UNATTRIBUTED
    names = {t.native_id: t.name for t in threading.enumerate()}
    try:
        from threadguard.attribution import attribute_threads
        owners = attribute_threads(tids=tids, python_names=names).owners
    except Exception:  # another OS, a denied read: names only
        owners = {}
    out = []
    for tid in sorted(tids):
        owner = owners.get(tid)
        pool = owner.pool if owner else (PYTHON if tid in names else UNATTRIBUTED)
        name = (owner.python_name if owner and owner.python_name else names.get(tid, ""))
        if pool == PYTHON and name.startswith(_LOKY_THREADS):
            pool = "loky"
        elif pool == PYTHON and name == WATCHER_NAME:  # follows the host ledger
            pool = "threadguard"
        persistent = pool not in (MAIN, PYTHON, OTHER, UNATTRIBUTED)
        out.append({"tid": tid, "pool": pool, "name": name, "persistent": persistent,
                    "library": owner.library if owner else None})
    return out


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    state = item.config.stash.get(_KEY, None)
    if state is None:
        return (yield)
    marker = item.get_closest_marker("threadguard")
    leaks, max_threads = state.leaks, None
    if marker is not None:
        if "leaks" in marker.kwargs:
            leaks = _check_policy(marker.kwargs["leaks"], f"{item.nodeid}: leaks")
        if marker.kwargs.get("max_threads") is not None:
            max_threads = _check_int(marker.kwargs["max_threads"], f"{item.nodeid}: max_threads")
    if state.strict and leaks == "warn":
        leaks = "fail"
    state.refresh()  # a runtime loaded since the last test gets the budget now
    tids, state.last_tids = state.last_tids, None
    if max_threads is None:
        item.stash[_ITEM_KEY] = (leaks, max_threads, _snapshot(state, tids))
        return (yield)
    import threadguard  # the marker's budget covers setup, call and teardown
    state.last_environ = None  # its variables are this test's "before"
    with threadguard.budget(max_threads, allow_oversubscription=True):
        item.stash[_ITEM_KEY] = (leaks, max_threads, _snapshot(state, tids))
        return (yield)


_ITEM_KEY = pytest.StashKey[tuple]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if call.when != "teardown":
        return report
    state = item.config.stash.get(_KEY, None)
    entry = item.stash.get(_ITEM_KEY, None)
    if state is None or entry is None:
        return report
    del item.stash[_ITEM_KEY]  # kept, 1,000s of environment copies would stay alive all session
    leaks, max_threads, (tids, environ, affinity) = entry
    findings = []
    if leaks != "ignore":
        leaked, state.last_tids = _leaked(tids | state.kept, state.grace)
        if leaked:
            threads = _describe_threads(leaked)
            by_pool: dict[tuple, int] = {}
            for t in threads:
                key = (t["pool"], t["persistent"])
                by_pool[key] = by_pool.get(key, 0) + 1
                if t["persistent"]:  # reported once: later tests see it as known
                    state.kept.add(str(t["tid"]))
            for (pool, persistent), count in sorted(by_pool.items()):
                names = sorted({t["name"] for t in threads if t["pool"] == pool and t["name"]})
                if persistent:
                    findings.append({"code": STARTED, "what": "pool started", "pool": pool,
                                     "threads": count, "detail": ", ".join(names),
                                     "fail": False})
                else:
                    findings.append({"code": LEAK, "what": "thread leak", "pool": pool,
                                     "threads": count, "detail": ", ".join(names),
                                     "fail": leaks == "fail"})
    allowed = max_threads or state.budget_threads
    process, thread = state.current_limiters()  # with what the test loaded
    for lim in process + thread:
        if not lim.driven:
            continue
        try:
            size = lim.get()
        except Exception:
            continue
        if size and size > allowed:
            findings.append({"code": RESIZED, "what": "pool resized", "pool": lim.name,
                             "threads": size,
                             "detail": f"budget {allowed}", "fail": state.strict})
    changed = state.env.changed_since(environ, ignore=("PYTEST_CURRENT_TEST",))
    if not changed:
        if max_threads is None:  # a marker's budget puts its variables back after this
            state.last_environ = environ  # still true: the next test's "before"
    else:
        findings.append({"code": ENVIRONMENT, "what": "environment changed", "pool": "",
                         "threads": None,
                         "detail": ", ".join(changed[:8]), "fail": state.strict})
    if _affinity() != affinity:
        findings.append({"code": AFFINITY, "what": "affinity changed", "pool": "",
                         "threads": None,
                         "detail": f"{sorted(affinity or ())} -> {sorted(_affinity() or ())}",
                         "fail": state.strict})
    if findings:
        report.user_properties.append(("threadguard", json.dumps(findings)))
        if any(f["fail"] for f in findings) and report.outcome != "failed":
            report.outcome = "failed"
            report.longrepr = "threadguard: " + "; ".join(
                f"{f['what']}: {f['pool'] or ''} {f['threads'] or ''} {f['detail']}".strip()
                for f in findings if f["fail"])
    if not state.budget_reported:  # once per worker: where the summary is printed
        state.budget_reported = True
        report.user_properties.append(("threadguard_budget", json.dumps(
            [state.worker, state.budget_threads])))
    return report


class _Collector:
    """Gathers findings where the terminal is (xdist's controller too): test
    reports carry them from the workers as user properties."""

    def __init__(self, state: _State):
        self.state = state

    def pytest_runtest_logreport(self, report):
        for key, value in report.user_properties:
            if key == "threadguard":
                for f in json.loads(value):
                    self.state.findings.append(dict(f, test=report.nodeid))
            elif key == "threadguard_budget":
                worker, threads = json.loads(value)
                self.state.budgets[worker] = threads


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    state = config.stash.get(_KEY, None)
    if state is None:
        return
    tr = terminalreporter
    tr.section("threadguard")
    for worker, threads in sorted(state.budgets.items()):
        tr.line(f"budget: {worker}: {threads} thread(s)")
    if not state.findings:
        tr.line("no thread leaks, resized pools or changed environment")
    else:
        rows = [(f["test"], f"{f['code']} {f['what']}", f["pool"] or "-",
                 "-" if f["threads"] is None else str(f["threads"]), f["detail"] or "-")
                for f in state.findings]
        widths = [max(len(r[i]) for r in rows + [("test", "what", "pool", "threads", "detail")])
                  for i in range(5)]
        header = ("test", "what", "pool", "threads", "detail")
        tr.line("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
        for r in rows:
            tr.line("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    if state.report_path:
        with open(state.report_path, "w") as f:
            json.dump({"schema": "threadguard.pytest/1", "budgets": state.budgets,
                       "findings": state.findings}, f, indent=2)


@pytest.fixture
def thread_budget(request):
    """A budget scoped to the test (planned, or the marker's max_threads)."""
    import threadguard
    marker = request.node.get_closest_marker("threadguard")
    threads = marker.kwargs.get("max_threads") if marker else None
    with threadguard.budget(threads, allow_oversubscription=True) as section:
        yield section


class ThreadCensus:
    """The census at the start of the test, and a way to take another."""

    def __init__(self):
        import threadguard
        self._census = threadguard.census
        self.before = threadguard.census(interval=0)

    def now(self, interval: float = 0):
        return self._census(interval=interval)

    def new_threads(self):
        before = {t.tid for t in self.before.threads}
        return [t for t in self.now().threads if t.tid not in before]


@pytest.fixture
def thread_census():
    return ThreadCensus()
