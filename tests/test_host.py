"""The host ledger: independent processes share the CPUs through one file.

Real processes each hold a ``budget(scope="host")`` over NumPy's OpenBLAS;
the tests read the limit every participant really has (threadpoolctl in
the participant) as others join, leave, are killed, or lie in the file.
Each test has its own ledger (``THREADGUARD_LEDGER``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from threadguard import host_file, shares

pytestmark = pytest.mark.live

ROOT = str(Path(__file__).parents[1])
CPUS = len(os.sched_getaffinity(0))

PARTICIPANT = r"""
import json, os, sys
import numpy
import threadguard
from threadpoolctl import threadpool_info

def facts(b):
    blas = [p["num_threads"] for p in threadpool_info() if p["internal_api"] == "openblas"]
    return {"pid": os.getpid(), "blas": blas[0], "threads": b.threads,
            "affinity": sorted(os.sched_getaffinity(0))}

numpy.ones((64, 64)) @ numpy.ones((64, 64))
before = facts(threadguard.budget())
pin = "pin" in sys.argv[1:]
scope = None if "env-scope" in sys.argv[1:] else "host"
with threadguard.budget(pin=pin, scope=scope) as b:
    print(json.dumps(dict(facts(b), before=before,
                          report=[list(map(str, r)) for r in b.report()])), flush=True)
    for line in sys.stdin:
        if line.strip() != "q":
            break
        print(json.dumps(facts(b)), flush=True)
out = facts(threadguard.budget())
print(json.dumps({"out": out, "restored": (out["blas"], out["affinity"]) ==
                  (before["blas"], before["affinity"])}), flush=True)
"""


class Participant:
    """A process inside a host-scoped budget, asked for its facts on demand."""

    def __init__(self, ledger: Path, *args: str, env: dict | None = None, cpus=None):
        full = dict(os.environ, CI="true", PYTHONPATH=ROOT, THREADGUARD_LEDGER=str(ledger))
        full.pop("OPENBLAS_NUM_THREADS", None)
        full.pop("OMP_NUM_THREADS", None)
        full.update(env or {})
        self.proc = subprocess.Popen([sys.executable, "-c", PARTICIPANT, *args], env=full,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True,
                                     preexec_fn=(lambda: os.sched_setaffinity(0, cpus))
                                     if cpus else None)
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"participant failed: {self.proc.stderr.read()}")
        self.first = json.loads(line)
        self.pid = self.proc.pid

    def ask(self) -> dict:
        self.proc.stdin.write("q\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def until(self, predicate, timeout: float = 20) -> dict:
        """Its facts once ``predicate`` holds (the watcher polls; no timing asserted)."""
        deadline = time.monotonic() + timeout
        while True:
            facts = self.ask()
            if predicate(facts) or time.monotonic() > deadline:
                return facts
            time.sleep(0.05)

    def leave(self) -> dict:
        self.proc.stdin.write("x\n")
        self.proc.stdin.flush()
        out = json.loads(self.proc.stdout.readline())
        self.proc.wait(30)
        return out

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)


@pytest.fixture
def ledger(tmp_path):
    return tmp_path / "host.ledger"


@pytest.fixture
def participants():
    started: list[Participant] = []
    yield started
    for p in started:
        p.kill()


def live_pids(ledger) -> list[int] | None:
    """The participants' pids; None while the file is not a ledger (damaged,
    before a participant rebuilds it)."""
    from threadguard.host import participants as listed
    try:
        return sorted(s.pid for s in listed(str(ledger)))
    except host_file.LedgerError:
        return None


def assert_planned_alone(participant: Participant, why: str) -> None:
    """The ledger was not used (``why`` says so in the report) and the
    budget was planned for the process alone, as a process-scoped one."""
    skipped = [r for r in participant.first["report"] if r[0] == "host ledger"]
    assert skipped and skipped[0][4] == "skipped" and why in skipped[0][6], skipped
    assert participant.first["blas"] == CPUS


needs_two = pytest.mark.skipif(CPUS < 2, reason="needs 2 allowed CPUs to share")


# -- the arithmetic -------------------------------------------------------------------

@given(st.integers(1, 256), st.lists(st.integers(1, 512), min_size=1, max_size=40))
def test_grants_share_the_cpus_in_proportion(capacity, asks):
    grants = shares.host_grants(capacity, asks)
    assert all(1 <= g <= a for g, a in zip(grants, asks))
    if sum(asks) <= capacity:
        assert grants == asks
    else:
        assert sum(grants) == max(capacity, len(asks))
        for i in range(len(asks)):  # who asked more never gets less; equal asks, +-1
            for j in range(len(asks)):
                if asks[i] > asks[j]:
                    assert grants[i] >= grants[j]
                elif asks[i] == asks[j]:
                    assert abs(grants[i] - grants[j]) <= 1


@given(st.lists(st.integers(1, 8), min_size=1, max_size=3),
       st.lists(st.tuples(st.integers(1, 4), st.sets(st.integers(0, 15), max_size=6)),
                max_size=6))
def test_pinned_shares_stay_inside_what_each_may_use(node_sizes, asks):
    nodes, first = [], 0
    for n in node_sizes:
        nodes.append(tuple(range(first, first + n)))
        first += n
    sizes = [size for size, _ in asks]
    allowed = [tuple(sorted(c for c in mine if c < first)) for _, mine in asks]
    sets = shares.host_cpus(nodes, sizes, allowed)
    for size, mine, got in zip(sizes, allowed, sets):
        assert set(got) <= (set(mine) or set(range(first)))
        assert len(got) == min(size, len(mine) if mine else first)


@given(st.lists(st.integers(1, 16), min_size=1, max_size=4),
       st.lists(st.integers(1, 8), max_size=8))
def test_pinned_shares_are_disjoint_and_inside_a_node_when_they_fit(node_sizes, sizes):
    nodes, first = [], 0
    for n in node_sizes:
        nodes.append(tuple(range(first, first + n)))
        first += n
    sets = shares.host_cpus(nodes, sizes)
    assert [len(s) for s in sets] == [min(s, first) for s in sizes]
    if sum(sizes) <= first:
        flat = [c for s in sets for c in s]
        assert len(flat) == len(set(flat))  # disjoint
    free = [len(n) for n in nodes]
    for size, cpus in zip(sizes, sets):
        fitting = [i for i, f in enumerate(free) if f >= size]
        homes = {i for i, n in enumerate(nodes) if set(cpus) & set(n)}
        if fitting:
            assert len(homes) == 1
        for i in homes:
            free[i] -= len(set(cpus) & set(nodes[i]))


# -- real processes ---------------------------------------------------------------------

@needs_two
def test_join_and_leave_move_the_survivors_limits(ledger, participants):
    a = Participant(ledger)
    participants.append(a)
    assert a.first["blas"] == a.first["before"]["blas"] == CPUS  # alone: everything
    b = Participant(ledger)
    participants.append(b)
    assert b.first["blas"] < CPUS
    shared = a.until(lambda f: f["blas"] < CPUS)
    assert shared["blas"] + b.first["blas"] == CPUS  # the CPUs, shared, while A runs
    b_out = b.leave()
    assert b_out["restored"]
    assert a.until(lambda f: f["blas"] == CPUS)["blas"] == CPUS  # B's share came back
    out = a.leave()
    assert out["restored"]
    assert live_pids(ledger) == []


@needs_two
def test_a_killed_participant_is_reclaimed(ledger, participants):
    a = Participant(ledger)
    b = Participant(ledger)
    participants += [a, b]
    assert a.until(lambda f: f["blas"] < CPUS)["blas"] < CPUS
    os.kill(b.pid, signal.SIGKILL)
    b.kill()
    assert a.until(lambda f: f["blas"] == CPUS)["blas"] == CPUS
    assert live_pids(ledger) == [a.pid]
    from threadguard.host_file import read_slots
    assert [s.pid for s in read_slots(str(ledger))] == [a.pid]  # dropped from the file too


def test_a_reused_pid_is_not_trusted(ledger):
    """A slot naming a live process that started at another time (the pid of
    a dead participant, reused) is dropped; the live participant's stays."""
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        f = host_file.LedgerFile(str(ledger))
        start = host_file.process_start(sleeper.pid)
        with f:
            f.write(host_file.Slot(0, sleeper.pid, False, start + 1, time.time(), 2, 2, 2, 2, 0, ()))
            f.write(host_file.Slot(1, sleeper.pid, False, start, time.time(), 2, 2, 2, 2, 0, ()))
        with f:
            live = f.reap(f.slots())
            assert [(s.index, s.pid) for s in live] == [(1, sleeper.pid)]
        f.close()
        assert [(s.index, s.pid) for s in host_file.read_slots(str(ledger))] == [(1, sleeper.pid)]
    finally:
        sleeper.kill()
        sleeper.wait()


def _ledger_bytes_cut(path) -> bytes:
    host_file.LedgerFile(str(path)).close()
    return path.read_bytes()[:100]


@pytest.mark.parametrize("damage", ["zeroed", "truncated", "another version", "our magic, wrong size"])
def test_a_damaged_ledger_is_rebuilt(ledger, participants, damage):
    content = {"zeroed": lambda: b"\0" * 100,
               "truncated": lambda: _ledger_bytes_cut(ledger),
               "another version": lambda: b"TGHOST\0\2" + b"\x01" * 500,
               "our magic, wrong size": lambda: b"TGHOST\0\1" + b"\xff" * 70000}[damage]()
    ledger.write_bytes(content)
    listed = threadguard_cli("host", "--json", ledger=ledger)  # read-only: none, no error
    assert listed.returncode == 0 and json.loads(listed.stdout)["participants"] == []
    a = Participant(ledger)
    participants.append(a)
    assert any(r[0] == "host ledger" and r[4] == "applied" for r in a.first["report"])
    assert live_pids(ledger) == [a.pid]
    assert a.leave()["restored"]
    assert "rebuilt" in a.proc.stderr.read()
    assert host_file.read_slots(str(ledger)) == []  # a valid, empty ledger now


@pytest.mark.parametrize("content", [
    b"export PATH=$HOME/bin:$PATH\n" * 1000,  # a typo in the path: a shell profile
    bytes(4096) + b"IMPORTANT USER DATA\n" * 1000,  # a disk image's zeroed first blocks
], ids=["text", "zeroed start"])
def test_a_file_that_is_not_a_ledger_is_never_overwritten(ledger, participants, content):
    """THREADGUARD_LEDGER naming another file: refused, untouched."""
    ledger.write_bytes(content)
    a = Participant(ledger)
    participants.append(a)
    assert_planned_alone(a, "not a threadguard host ledger")
    assert a.leave()["restored"]
    assert ledger.read_bytes() == content
    assert "HostLedgerWarning" in a.proc.stderr.read()


@needs_two
def test_a_ledger_truncated_or_deleted_under_live_participants(ledger, participants):
    """Truncated (a mapping would die of SIGBUS) or deleted (a tmp cleaner):
    the participants carry on and find each other in the file at the path."""
    a = Participant(ledger)
    b = Participant(ledger)
    participants += [a, b]
    assert a.until(lambda f: f["blas"] < CPUS)["blas"] < CPUS
    ledger.write_bytes(b"")  # truncated
    a.until(lambda f: live_pids(ledger) == sorted([a.pid, b.pid]))
    assert live_pids(ledger) == sorted([a.pid, b.pid])
    ledger.unlink()  # deleted: each finds the path again
    c = Participant(ledger)
    participants.append(c)
    a.until(lambda f: live_pids(ledger) == sorted([a.pid, b.pid, c.pid]))
    assert live_pids(ledger) == sorted([a.pid, b.pid, c.pid])
    for p in (a, b, c):
        assert p.proc.poll() is None  # alive: no SIGBUS
    assert c.leave()["restored"] and b.leave()["restored"]
    assert a.until(lambda f: f["blas"] == CPUS)["blas"] == CPUS


def test_an_unusable_ledger_falls_back_to_process_scope(tmp_path, participants):
    target = tmp_path / "elsewhere"
    target.write_bytes(b"")
    link = tmp_path / "host.ledger"
    link.symlink_to(target)
    a = Participant(link)
    participants.append(a)
    assert_planned_alone(a, "link")
    out = a.leave()
    assert out["restored"]
    assert target.read_bytes() == b""  # nothing written through the link
    assert "HostLedgerWarning" in a.proc.stderr.read()


def test_the_per_user_directory_is_refused_when_not_ours(tmp_path):
    directory = tmp_path / "threadguard-x"
    directory.mkdir()
    os.chown(directory, 65534, 65534) if os.geteuid() == 0 else pytest.skip("needs root to chown")
    with pytest.raises(host_file.LedgerError, match="another user"):
        host_file._own_directory(str(directory))
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    with pytest.raises(host_file.LedgerError, match="not a directory"):
        host_file._own_directory(str(link))


@needs_two
def test_pinned_participants_get_disjoint_cpus(ledger, participants):
    a = Participant(ledger, "pin")
    participants.append(a)
    assert a.first["affinity"] == sorted(os.sched_getaffinity(0))
    b = Participant(ledger, "pin")
    participants.append(b)
    a_now = a.until(lambda f: not set(f["affinity"]) & set(b.first["affinity"]))
    assert not set(a_now["affinity"]) & set(b.first["affinity"])
    assert len(a_now["affinity"]) == a_now["blas"] and len(b.first["affinity"]) == b.first["blas"]
    assert b.leave()["restored"]
    assert a.until(lambda f: len(f["affinity"]) == CPUS)["affinity"] == sorted(
        os.sched_getaffinity(0))
    assert a.leave()["restored"]


def test_threadguard_scope_variable_makes_every_budget_host_scoped(ledger, participants):
    a = Participant(ledger, "env-scope", env={"THREADGUARD_SCOPE": "host"})
    participants.append(a)
    assert live_pids(ledger) == [a.pid]
    code = ("import threadguard\nwith threadguard.budget() as b:\n    "
            "print(b.scope, [r.target for r in b.report()].count('host ledger'))")
    for value, scope in (("cluster", "process"), (" HOST ", "host")):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=dict(os.environ, PYTHONPATH=ROOT, THREADGUARD_SCOPE=value,
                                      THREADGUARD_LEDGER=str(ledger)))
        assert out.returncode == 0, out.stderr  # a bad setting never breaks the program
        assert out.stdout.split() == [scope, "1" if scope == "host" else "0"]
        assert ("must be one of process, host" in out.stderr) == (scope == "process")


def threadguard_cli(*args, ledger, **kwargs):
    return subprocess.run([sys.executable, "-m", "threadguard", *args], capture_output=True,
                          text=True, env=dict(os.environ, CI="true", PYTHONPATH=ROOT,
                                              THREADGUARD_LEDGER=str(ledger)), **kwargs)


def test_host_json_lists_the_participants(ledger, participants):
    empty = threadguard_cli("host", "--json", ledger=ledger)
    assert empty.returncode == 0 and json.loads(empty.stdout)["participants"] == []
    a = Participant(ledger)
    participants.append(a)
    snap = json.loads(threadguard_cli("host", "--json", ledger=ledger).stdout)
    (row,) = snap["participants"]
    assert row["pid"] == a.pid and "threadguard.budget" in row["command"]
    assert row["asked"] == CPUS and row["granted"] == a.first["blas"]
    assert row["cpus"] is None and row["since"]
    assert snap["capacity"] == CPUS and snap["granted"] == row["granted"]
    shown = threadguard_cli("host", ledger=ledger)
    assert str(a.pid) in shown.stdout and shown.returncode == 0
    ledger.write_bytes(b"not a ledger")
    a.kill()
    bad = threadguard_cli("host", ledger=ledger)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "not a threadguard host ledger" in bad.stderr


@needs_two
def test_run_scope_host_gives_a_command_its_share(ledger, participants):
    a = Participant(ledger)
    participants.append(a)
    probe = ("import json, os, subprocess, sys; print(json.dumps({'omp': "
             "os.environ['OMP_NUM_THREADS'], 'host': json.loads(subprocess.run([sys.executable, "
             "'-m', 'threadguard', 'host', '--json'], capture_output=True, text=True).stdout)}))")
    run = threadguard_cli("run", "--scope", "host", "-v", "--", sys.executable, "-c", probe,
                          ledger=ledger, timeout=120)
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout)
    pids = [p["pid"] for p in seen["host"]["participants"]]
    assert a.pid in pids and len(pids) == 2  # the command holds its share while it runs
    assert int(seen["omp"]) == CPUS // 2
    assert "host ledger: granted" in run.stderr
    assert a.until(lambda f: f["blas"] == CPUS)["blas"] == CPUS  # reclaimed once it ended
    dry = threadguard_cli("run", "--scope", "host", "--dry-run", "--", "prog", ledger=ledger)
    assert f"OMP_NUM_THREADS={CPUS // 2}" in dry.stdout
    assert live_pids(ledger) == [a.pid]  # a dry run only reads the ledger


def test_a_forked_child_is_not_its_parents_participant(ledger):
    code = r"""
import json, os, threadguard
from threadguard.host import participants
with threadguard.budget(scope="host"):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        mine_before = [s.pid for s in participants()]
        with threadguard.budget(scope="host"):
            inside = [s.pid for s in participants()]
        os.write(w, json.dumps([mine_before, inside, os.getpid()]).encode())
        os._exit(0)
    os.close(w)
    data = json.loads(os.read(r, 4096))
    os.waitpid(pid, 0)
    print(json.dumps([os.getpid()] + data + [[s.pid for s in participants()]]))
print(json.dumps([s.pid for s in participants()]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, CI="true", PYTHONPATH=ROOT,
                                  THREADGUARD_LEDGER=str(ledger)), timeout=60)
    assert out.returncode == 0, out.stderr
    first, last = out.stdout.splitlines()
    parent, before, inside, child, after = json.loads(first)
    assert before == [parent]  # the child is not a participant at fork
    assert sorted(inside) == sorted([parent, child])  # it joins as itself
    assert after == [parent]  # and left
    assert json.loads(last) == []


@needs_two
def test_worker_budget_workers_join_the_host_ledger(ledger, participants):
    a = Participant(ledger)
    participants.append(a)
    script = ledger.parent / "pool.py"  # spawn re-imports the main module: a file
    script.write_text(r"""
import json, multiprocessing as mp, os, sys
import threadguard
from threadguard.host import participants

def facts(_):
    import numpy, time
    from threadpoolctl import threadpool_info
    time.sleep(0.5)  # both workers are in before either answers
    return os.getpid(), [p["num_threads"] for p in threadpool_info()
                         if p["internal_api"] == "openblas"][0]

if __name__ == "__main__":
    wb = threadguard.worker_budget(2, scope="host")
    with mp.get_context("spawn").Pool(2, initializer=wb.initializer,
                                      initargs=wb.initargs) as pool:
        seen = dict(pool.map(facts, range(2), chunksize=1))
        listed = sorted(s.pid for s in participants())
    print(json.dumps({"seen": seen, "listed": listed}))
""")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=120, env=dict(os.environ, CI="true", PYTHONPATH=ROOT,
                                               THREADGUARD_LEDGER=str(ledger)))
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    workers = {int(pid) for pid in data["seen"]}
    assert set(data["listed"]) == workers | {a.pid}  # the pool's workers are participants
    assert all(n == 1 for n in data["seen"].values())
    assert a.until(lambda f: f["blas"] == CPUS)["blas"] == CPUS  # given back when they exit


def test_pytest_plugin_can_share_the_host(ledger, participants, pytester, monkeypatch):
    monkeypatch.setenv("THREADGUARD_LEDGER", str(ledger))
    a = Participant(ledger)
    participants.append(a)
    pytester.makepyfile(f"""
        import os
        from threadguard.host import participants

        def test_inside():
            assert sorted(s.pid for s in participants()) == sorted([os.getpid(), {a.pid}])
    """)
    result = pytester.runpytest_subprocess("--threadguard", "--threadguard-scope", "host", "-p",
                                           "no:xdist", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    pytester.makepyfile(test_xdist="""
        import os
        from threadguard.host import participants

        def test_the_controller_holds_no_share():
            pids = [s.pid for s in participants()]
            assert os.getpid() in pids and os.getppid() not in pids
    """)
    spread = pytester.runpytest_subprocess("--threadguard", "--threadguard-scope", "host", "-n",
                                           "2", "-p", "no:cacheprovider", "test_xdist.py")
    spread.assert_outcomes(passed=1)
    bad = pytester.runpytest_subprocess("--threadguard", "--threadguard-scope", "cluster")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    assert "--threadguard-scope must be process or host" in bad.stderr.str()


def test_doctor_reports_grants_beyond_the_cpus_and_pools_outside_the_ledger(ledger,
                                                                            participants):
    participants += [Participant(ledger) for _ in range(CPUS + 1)]  # one thread each at least
    outsider = subprocess.Popen(
        [sys.executable, "-c", "import numpy, sys; numpy.ones((200, 200)) @ numpy.ones((200, 200));"
                               " sys.stdin.read()"],
        stdin=subprocess.PIPE, env=dict(os.environ, CI="true", OPENBLAS_NUM_THREADS="2"))
    try:
        time.sleep(1)  # its OpenBLAS workers started
        out = threadguard_cli("doctor", "--json", "--fail-on", "never", ledger=ledger, timeout=120)
    finally:
        outsider.stdin.close()
        outsider.wait(30)
    assert out.returncode == 0, out.stderr
    found = {f["code"]: f for f in json.loads(out.stdout)["findings"]}
    assert f"{CPUS + 1} participants" in found["TG502"]["title"]
    assert {f"pid {p.pid}" for p in participants} == {
        line.split(":")[0] for line in found["TG502"]["evidence"]}
    assert any(line.startswith(f"pid {outsider.pid}:") and "openblas" in line
               for line in found["TG503"]["evidence"])
    assert not any(line.startswith(f"pid {p.pid}:") for p in participants
                   for line in found["TG503"]["evidence"])  # participants are not outside


def test_a_participant_stopped_holding_the_lock_hangs_no_one(ledger, participants):
    """A process stopped (SIGSTOP, a debugger) while it holds the file's
    lock: joining gives up at once, with a warning, and the budget applies
    to the process alone; once it is gone the ledger is usable again."""
    host_file.LedgerFile(str(ledger)).close()  # a valid ledger
    holder = subprocess.Popen([sys.executable, "-c", f"""
import fcntl, os, signal, struct, sys
fd = os.open({str(ledger)!r}, os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX)
os.pwrite(fd, struct.pack("<i", os.getpid()), {host_file.OWNER_AT})  # as a writer does
print("locked", flush=True)
os.kill(os.getpid(), signal.SIGSTOP)
"""], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        a = Participant(ledger)
        participants.append(a)
        assert_planned_alone(a, "which is stopped")
        assert a.leave()["restored"]
    finally:
        holder.kill()
        holder.wait(30)
    b = Participant(ledger)  # the lock is free again: it joins
    participants.append(b)
    assert live_pids(ledger) == [b.pid]


@needs_two
def test_a_python_command_under_run_follows_its_share_while_it_runs(ledger, participants):
    """run --scope host takes a slot and execs the command; a Python command
    takes that slot over (one participant, its own pid) and its OpenBLAS
    follows when another participant joins and leaves."""
    probe = r"""
import json, os, sys, time
import numpy
from threadpoolctl import threadpool_info
from threadguard.host import participants

def blas():
    return [p["num_threads"] for p in threadpool_info() if p["internal_api"] == "openblas"][0]

numpy.ones((64, 64)) @ numpy.ones((64, 64))
print(json.dumps({"start": blas(), "slots": [s.pid for s in participants()]}), flush=True)
last, deadline = blas(), time.monotonic() + 30
while time.monotonic() < deadline:
    if blas() != last:
        last = blas()
        print(json.dumps({"now": last}), flush=True)  # each change, as it is seen
    time.sleep(0.05)
"""
    env = dict(os.environ, CI="true", PYTHONPATH=ROOT, THREADGUARD_LEDGER=str(ledger))
    run = subprocess.Popen([sys.executable, "-m", "threadguard", "run", "--scope", "host", "--",
                            sys.executable, "-c", probe], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        first = json.loads(run.stdout.readline())
        assert first["start"] == CPUS and first["slots"] == [run.pid]  # run's slot, taken over
        a = Participant(ledger)
        participants.append(a)
        assert json.loads(run.stdout.readline())["now"] == CPUS // 2  # shared while A is in
        assert a.leave()["restored"]
        assert json.loads(run.stdout.readline())["now"] == CPUS  # whole again once it left
    finally:
        run.kill()
        run.wait(30)


INTERRUPTED = r"""
import json, os, sys, threading, time
import numpy
import threadguard
from threadguard import guard, host, host_file
from threadpoolctl import threadpool_info

COVERED = sys.argv[1] == "covered"

def blas():
    return [p["num_threads"] for p in threadpool_info() if p["internal_api"] == "openblas"][0]

numpy.ones((64, 64)) @ numpy.ones((64, 64))
before = blas()
ours = {guard.__file__, host.__file__, host_file.__file__}
EXIT = guard.budget.__exit__.__code__

def cycle(fire_at):
    # One host-scoped section in and out; a KeyboardInterrupt raised as the
    # fire_at-th call of this thread into threadguard's own code starts:
    # where CPython runs a signal handler (a function's first instruction
    # checks for pending signals), so where Ctrl-C lands.
    # Not as budget.__exit__ itself starts: no context manager can close
    # that window (docs/guard.md), the with statement never sees it end.
    # COVERED: another thread holds part of the host and this section is
    # covered by it; that thread leaves while this one is inside (its hold
    # is kept for this section), then this one leaves.
    inside, leave, left = threading.Event(), threading.Event(), threading.Event()
    def holder():
        with threadguard.budget(1, scope="host"):
            inside.set()
            leave.wait()
        left.set()
    if COVERED:
        t = threading.Thread(target=holder)
        t.start()
        inside.wait()
    seen = [0]
    def tracer(frame, event, arg):
        if (event == "call" and frame.f_code.co_filename in ours
                and frame.f_code is not EXIT):
            seen[0] += 1
            if seen[0] == fire_at:
                raise KeyboardInterrupt
    sys.settrace(tracer)
    try:
        with threadguard.budget(1, scope="host"):
            if COVERED:
                leave.set()
                left.wait()
    except KeyboardInterrupt:
        pass
    finally:
        sys.settrace(None)
        if COVERED:
            leave.set()
            t.join()
    return seen[0]

events = cycle(0)  # how many calls one cycle makes
bad = []
for n in range(1, events + 1):
    cycle(n)
    deadline = time.monotonic() + 5  # an interrupted write is finished by the watcher
    while time.monotonic() < deadline and (
            os.getpid() in [s.pid for s in host.participants()] or host._member.index is not None):
        time.sleep(0.05)
    led = guard._ledger
    state = (guard.sections_inside(), dict(host._member.holds), host._member.index,
             os.getpid() in [s.pid for s in host.participants()], led.host_cap,
             dict(led.host_live), sorted(led.host_keep), list(led.forgotten), blas())
    if state != (0, {}, None, False, guard.UNCAPPED, {}, [], [], before):
        bad.append((n, state))
with threadguard.budget(2) as b:  # a process-scoped budget afterwards: no grant left over
    after = b.threads
print(json.dumps({"events": events, "bad": bad[:5], "after": after}))
"""


def interrupted(ledger, mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", INTERRUPTED, mode], capture_output=True,
                         text=True, timeout=600, env=dict(os.environ, CI="true", PYTHONPATH=ROOT,
                                                          THREADGUARD_LEDGER=str(ledger)))
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


@needs_two
def test_ctrl_c_anywhere_in_entry_or_exit_leaves_nothing_held(ledger):
    """A KeyboardInterrupt raised at each call into threadguard's own code
    in turn, during one host-scoped entry and exit: wherever it lands,
    nothing is held afterwards (no hold, no slot, no grant), the limits are
    back, and nothing hangs."""
    result = interrupted(ledger, "alone")
    assert result["events"] > 20  # the entry and exit were really traced
    assert result["bad"] == []
    assert result["after"] == CPUS


@needs_two
def test_ctrl_c_anywhere_in_a_covered_section_leaves_nothing_held(ledger):
    """A section covered by another thread's hold, which is kept after that
    thread leaves: a KeyboardInterrupt raised at each call into threadguard
    in turn during its entry and exit leaves nothing held once both left."""
    result = interrupted(ledger, "covered")
    assert result["events"] > 10  # the entry and exit were really traced
    assert result["bad"] == []
    assert result["after"] == CPUS


HANDLER_ENTERS = r"""
import faulthandler, signal, sys, threading, time
import threadguard
from threadguard import guard, host
faulthandler.dump_traceback_later(60, exit=True)  # a hang fails with every thread's stack
inside, leave = threading.Event(), threading.Event()
def holder():
    with threadguard.budget(1, scope="host"):
        inside.set()
        leave.wait()
t = threading.Thread(target=holder)
t.start()
inside.wait()
calls = [0]
def handler(signum, frame):
    calls[0] += 1
    with threadguard.budget(1, scope="host"):
        pass
signal.signal(signal.SIGALRM, handler)
signal.setitimer(signal.ITIMER_REAL, 0.001, 0.003)
sections, end = 0, time.monotonic() + 5
while time.monotonic() < end:
    with threadguard.budget(2, scope="host"):  # holds its own part: given back at each exit
        sections += 1
signal.setitimer(signal.ITIMER_REAL, 0)
leave.set()
t.join()
print(sections, calls[0], guard.sections_inside(), len(host._member.holds))
"""


def test_a_signal_handler_entering_host_budgets_never_hangs(ledger):
    """A SIGALRM handler that enters a host-scoped budget every 3 ms while the
    main thread enters and leaves one that takes and gives back its own part
    of the host beside another thread's: wherever the handler lands (in the
    give-back, in the follow-up of the grant) it never waits for a lock its
    own thread holds, and nothing is held at the end."""
    out = subprocess.run([sys.executable, "-c", HANDLER_ENTERS], capture_output=True, text=True,
                         timeout=120, env=dict(os.environ, CI="true", PYTHONPATH=ROOT,
                                               THREADGUARD_LEDGER=str(ledger)))
    assert out.returncode == 0, out.stderr[-3000:]
    sections, calls, inside, holds = map(int, out.stdout.split())
    assert sections > 100 and calls > 100  # the handler really ran among the sections
    assert (inside, holds) == (0, 0)


def test_a_nested_section_never_raises_the_processs_ask(ledger):
    code = r"""
import json, threadguard
from threadguard.host import participants
with threadguard.budget(1, scope="host"):
    with threadguard.budget(2, scope="host", allow_oversubscription=True) as inner:
        asks = [s.asked for s in participants()]
        print(json.dumps({"asks": asks, "inner": inner.threads}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, CI="true", PYTHONPATH=ROOT,
                                  THREADGUARD_LEDGER=str(ledger)))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"asks": [1], "inner": 1}


@needs_two
def test_a_forked_child_keeps_the_grant_of_the_sections_it_inherits(ledger, participants):
    a = Participant(ledger)
    participants.append(a)
    code = r"""
import json, os, numpy, threadguard
from threadpoolctl import threadpool_info
def blas():
    return [p["num_threads"] for p in threadpool_info() if p["internal_api"] == "openblas"][0]
numpy.ones((64, 64)) @ numpy.ones((64, 64))
with threadguard.budget(scope="host") as b:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        inside = (blas(), b.threads)
        with threadguard.budget() as plain:  # a process-scoped section, nested
            nested = plain.threads
        os.write(w, json.dumps([inside, nested]).encode())
        os._exit(0)
    os.close(w)
    child = json.loads(os.read(r, 4096))
    os.waitpid(pid, 0)
    print(json.dumps({"parent": [blas(), b.threads], "child": child}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, CI="true", PYTHONPATH=ROOT,
                                  THREADGUARD_LEDGER=str(ledger)))
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    share = CPUS // 2
    assert seen["parent"] == [share, share]
    assert seen["child"] == [[share, share], share]  # not more than the parent's share


@needs_two
def test_run_scope_host_pin_keeps_the_python_commands_cpus_its_own(ledger, participants):
    probe = ("import json, os, time; from threadguard.host import participants; time.sleep(0.5); "
             "print(json.dumps({'affinity': sorted(os.sched_getaffinity(0)), "
             "'slots': [(s.pid, s.pinned, list(s.cpus)) for s in participants()]}))")
    a = Participant(ledger, "pin")
    participants.append(a)
    run = threadguard_cli("run", "--scope", "host", "--pin", "--", sys.executable, "-c", probe,
                          ledger=ledger, timeout=120)
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout)
    slots = {pid: (pinned, cpus) for pid, pinned, cpus in seen["slots"]}
    mine = [pid for pid in slots if pid != a.pid]
    assert len(mine) == 1 and slots[mine[0]][0]  # the command's slot stays pinned
    assert not set(slots[mine[0]][1]) & set(slots[a.pid][1])  # disjoint from A's
    assert seen["affinity"] == slots[mine[0]][1]


def test_damaged_slots_are_skipped_and_cleared(ledger, participants):
    """A slot with numbers no participant has (a join time of 1e300, a
    negative ask) beside a sound file: `threadguard host` lists no such
    participant and exits 0; the next participant clears it."""
    import struct
    host_file.LedgerFile(str(ledger)).close()
    data = bytearray(ledger.read_bytes())
    start = host_file.process_start(os.getpid())
    for index, (joined, asked) in enumerate([(1e300, 2), (time.time(), -5), (float("nan"), 2)]):
        at = host_file.HEADER_SIZE + index * host_file.SLOT_SIZE
        host_file.FIELDS.pack_into(data, at, os.getpid(), host_file.USED, start, joined, asked,
                                   2, 2, 2, 0)
    struct.pack_into("<I", data, host_file.HIGH_AT, 3)
    ledger.write_bytes(bytes(data))
    shown = threadguard_cli("host", "--json", ledger=ledger)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["participants"] == []
    a = Participant(ledger)
    participants.append(a)
    assert live_pids(ledger) == [a.pid]
    raw = ledger.read_bytes()
    flags = [struct.unpack_from("<I", raw, host_file.HEADER_SIZE + i * host_file.SLOT_SIZE + 4)[0]
             for i in range(3)]
    assert sum(1 for f in flags if f & host_file.USED) == 1  # only A's: the damaged ones cleared


def test_a_thread_that_ends_inside_a_host_section_gives_its_part_back(ledger):
    code = r"""
import json, os, threading, threadguard
from threadguard.host import participants
def die_inside():
    threadguard.budget(scope="host").__enter__()  # never left: the thread ends inside
t = threading.Thread(target=die_inside)
t.start(); t.join()
inside = [s.pid for s in participants()]
with threadguard.budget():  # the next budget call drops the dead thread's sections
    pass
print(json.dumps({"inside": inside, "after": [s.pid for s in participants()],
                  "holds": len(threadguard.host._member.holds)}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, CI="true", PYTHONPATH=ROOT,
                                  THREADGUARD_LEDGER=str(ledger)))
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    assert seen["inside"] != [] and seen["after"] == [] and seen["holds"] == 0


def test_a_damaged_ledger_is_repaired_under_warnings_as_errors(ledger, participants):
    ledger.write_bytes(b"TGHOST")
    a = Participant(ledger, env={"PYTHONWARNINGS": "error::RuntimeWarning"})
    participants.append(a)
    assert any(r[0] == "host ledger" and r[4] == "applied" for r in a.first["report"])
    assert live_pids(ledger) == [a.pid]



@needs_two
@pytest.mark.parametrize("order", ["restricted first", "restricted second"])
def test_pinned_participants_get_cpus_they_may_use(ledger, participants, order):
    """One participant started under taskset (CPU 1 only): whoever
    rebalances, it is given CPU 1 and the other one CPU 0, never both 1."""
    made = []
    for restricted in ([True, False] if order == "restricted first" else [False, True]):
        made.append(Participant(ledger, "pin", cpus={1} if restricted else None))
        participants.append(made[-1])
    restricted = made[0] if order == "restricted first" else made[1]
    free = made[1] if order == "restricted first" else made[0]
    got = free.until(lambda f: f["affinity"] == [0])
    assert got["affinity"] == [0]
    assert restricted.ask()["affinity"] == [1]
