"""The Dask integration on real LocalClusters of worker processes (loopback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

distributed = pytest.importorskip("distributed")
import dask  # noqa: E402

import threadguard  # noqa: E402
from threadguard.integrations import dask as tg_dask  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.live]
ROOT = Path(__file__).parents[1]
CPUS = threadguard.topology().effective_cpus


@contextmanager
def cluster(threads_per_worker=1, nanny_environ=None, preload=()):
    config = {} if nanny_environ is None else {"distributed.nanny.pre-spawn-environ": nanny_environ}
    saved = dict(os.environ)  # the nannies run here and set their variables in os.environ
    try:
        with dask.config.set(config):
            with distributed.LocalCluster(n_workers=2, processes=True,
                                          threads_per_worker=threads_per_worker,
                                          dashboard_address=None, host="127.0.0.1",
                                          preload=list(preload)) as c:
                with distributed.Client(c, timeout=60) as client:
                    yield c, client
    finally:
        os.environ.clear()
        os.environ.update(saved)


def probe():
    import numpy as np
    from threadpoolctl import threadpool_info
    np.ones((100, 100)) @ np.ones((100, 100))
    return [i["num_threads"] for i in threadpool_info()], os.environ.get("OMP_NUM_THREADS")


def test_each_worker_gets_its_share_and_teardown_restores():
    with cluster(nanny_environ={}) as (_, client):
        before = client.run(probe)
        tg_dask.register(client)
        capped = client.run(probe)
        client.unregister_worker_plugin("threadguard")
        after = client.run(probe)
    share = max(1, CPUS // 2)
    assert len(capped) == 2
    assert all(pools and set(pools) == {share} and omp == str(share) for pools, omp in capped.values())
    assert after == before


def test_cluster_report_lists_workers_with_budgets_and_flags_unguarded_hosts():
    with cluster(threads_per_worker=2, nanny_environ={}) as (_, client):
        client.run(probe)  # OpenBLAS loaded, at its default size
        unguarded = tg_dask.cluster_report(client)
        tg_dask.register(client)
        guarded = tg_dask.cluster_report(client)
    (host,) = unguarded["hosts"].values()
    assert len(host["workers"]) == 2
    if CPUS >= 2:  # 2 workers x 2 task threads x OpenBLAS sized to the CPUs
        assert [f["code"] for f in unguarded["findings"]] == ["TG501"]
        assert "without the plugin" in unguarded["findings"][0]["evidence"][-1]
    (host,) = guarded["hosts"].values()
    assert all(w["threadguard"]["threads_per_task"] >= 1 for w in host["workers"].values())
    assert all(p["num_threads"] == 1 for w in host["workers"].values() for p in w["pools"]) \
        or CPUS > 2
    if 4 > CPUS:  # pools now at 1: what is left is Dask's own task threads, and it says so
        assert "threads_per_worker" in guarded["findings"][0]["fix"]


def test_a_guarded_cluster_that_fits_is_silent():
    with cluster(threads_per_worker=1, nanny_environ={}) as (_, client):
        client.run(probe)
        tg_dask.register(client)
        assert tg_dask.cluster_report(client)["findings"] == []


def test_dasks_own_variables_are_read_and_not_raised():
    # By default the nanny starts workers with OMP_NUM_THREADS=1 and friends.
    with cluster(threads_per_worker=1) as (_, client):
        tg_dask.register(client)
        facts = tg_dask.cluster_report(client)
    for w in next(iter(facts["hosts"].values()))["workers"].values():
        assert w["threadguard"]["set_by_dask"].get("OMP_NUM_THREADS") == "1"
        assert w["threadguard"]["threads_per_task"] == 1


def test_doctor_dask_command_line():
    with cluster(threads_per_worker=2, nanny_environ={}) as (c, client):
        client.run(probe)
        out = subprocess.run([sys.executable, "-m", "threadguard", "doctor", "--dask",
                              c.scheduler_address, "--json", "--fail-on", "warning"],
                             capture_output=True, text=True, timeout=120,
                             env=dict(os.environ, PYTHONPATH=str(ROOT)))
        text = subprocess.run([sys.executable, "-m", "threadguard", "doctor", "--dask",
                               c.scheduler_address, "--fail-on", "never"], capture_output=True,
                              text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    report = json.loads(out.stdout)
    assert len(next(iter(report["hosts"].values()))["workers"]) == 2
    assert out.returncode == (1 if CPUS >= 2 else 0)
    lines = text.stdout.splitlines()  # the header first, then the hosts, then findings
    assert lines[0].startswith("threadguard doctor: Dask cluster"), text.stdout
    assert lines[1].split()[0] == "host" and "threads demanded" in lines[1]


def test_doctor_dask_unreachable_scheduler_exits_2():
    out = subprocess.run([sys.executable, "-m", "threadguard", "doctor", "--dask",
                          "tcp://127.0.0.1:9"], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode == 2 and "cannot reach the Dask scheduler" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("reply", [b"", b"\xff" * 8 + bytes(range(1, 9)) + b"\xff" * 8],
                         ids=["silent", "junk"])
def test_doctor_dask_against_a_server_that_is_not_a_scheduler_exits_2(reply):
    # A silent server once hung the doctor (Client's timeout covers only the
    # TCP connect); junk was read as a frame length ("Unable to allocate 3 EiB").
    import socket
    import threading
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    held = []

    def serve():
        conn, _ = server.accept()
        held.append(conn)
        conn.sendall(reply)

    threading.Thread(target=serve, daemon=True).start()
    try:
        out = subprocess.run([sys.executable, "-m", "threadguard", "doctor", "--dask",
                              f"tcp://127.0.0.1:{server.getsockname()[1]}"], capture_output=True,
                             text=True, timeout=150, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    finally:
        server.close()
        for conn in held:
            conn.close()
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("threadguard: error:") and "Dask" in lines[0]


def test_example_runs():
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "dask_cluster.py")],
                         capture_output=True, text=True, timeout=180, cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=str(ROOT), CI="true"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("budget 1 thread(s) per task") == 2 or CPUS > 2
    assert "findings: none" in out.stdout


def test_preload_gives_the_same_share(monkeypatch):
    monkeypatch.setenv("THREADGUARD_WORKERS_PER_HOST", "2")
    with cluster(nanny_environ={}, preload=["threadguard.integrations.dask"]) as (_, client):
        capped = client.run(probe)
    share = max(1, CPUS // 2)
    assert all(set(pools) == {share} and omp == str(share) for pools, omp in capped.values())


def test_preloaded_workers_told_they_are_alone_get_the_variable_as_their_fix(monkeypatch):
    if CPUS >= 4:
        pytest.skip("two workers sized alone fit on 4 CPUs")
    monkeypatch.setenv("THREADGUARD_WORKERS_PER_HOST", "1")
    with cluster(nanny_environ={}, preload=["threadguard.integrations.dask"]) as (_, client):
        client.run(probe)
        report = tg_dask.cluster_report(client)
    tg501 = [f for f in report["findings"] if f["code"] == "TG501"]
    assert tg501 and "THREADGUARD_WORKERS_PER_HOST" in tg501[0]["fix"], report["findings"]


def _until(check, timeout=30.0):
    import time
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value[0] or time.monotonic() > deadline:
            return value[1]
        time.sleep(0.2)


@pytest.mark.skipif(CPUS < 2, reason="needs 2 CPUs to share")
def test_workers_started_by_hand_share_the_host_through_the_ledger(tmp_path):
    """``dask scheduler`` and two ``dask worker --preload ...`` started from the
    command line, as by hand: no count of workers given anywhere. Each ends
    with its share; when one is killed the other takes the host back."""
    import signal
    env = dict(os.environ, CI="true", PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
               THREADGUARD_LEDGER=str(tmp_path / "host.ledger"))  # tests: the probe's module
    env.pop("THREADGUARD_WORKERS_PER_HOST", None)
    env.pop("OMP_NUM_THREADS", None)
    env.pop("OPENBLAS_NUM_THREADS", None)
    scheduler_file = str(tmp_path / "scheduler.json")
    bindir = os.path.dirname(sys.executable)
    procs = [subprocess.Popen([os.path.join(bindir, "dask"), "scheduler", "--host", "127.0.0.1",
                               "--port", "0", "--no-dashboard", "--scheduler-file",
                               scheduler_file], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)]
    try:
        _until(lambda: (os.path.exists(scheduler_file), None))
        for _ in range(2):
            procs.append(subprocess.Popen(
                [os.path.join(bindir, "dask"), "worker", "--scheduler-file", scheduler_file,
                 "--no-nanny", "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1",
                 "--preload", "threadguard.integrations.dask"],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        with distributed.Client(scheduler_file=scheduler_file, timeout=60) as client:
            client.wait_for_workers(2, timeout=60)
            share = CPUS // 2
            seen = _until(lambda: (lambda r: (all(set(p) == {share} for p, _ in r.values()), r))(
                client.run(probe)))
            assert all(set(pools) == {share} for pools, _ in seen.values()), seen
            report = tg_dask.cluster_report(client)
            assert not [f for f in report["findings"] if f["code"] == "TG501"], report["findings"]
            host = subprocess.run([sys.executable, "-m", "threadguard", "host", "--json"],
                                  env=env, capture_output=True, text=True)
            listed = {p["pid"] for p in json.loads(host.stdout)["participants"]}
            assert listed == {procs[1].pid, procs[2].pid}
            procs[2].send_signal(signal.SIGKILL)
            procs[2].wait(30)
            alone = _until(lambda: (lambda r: (all(set(p) == {CPUS} for p, _ in r.values()), r))(
                client.run(probe, workers=[a for a in client.scheduler_info()["workers"]][:1])))
            assert all(set(pools) == {CPUS} for pools, _ in alone.values()), alone
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
