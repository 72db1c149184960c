import atexit
import os
import shutil
import sys
import tempfile

import pytest

pytest_plugins = ["pytester"]

sys.path.insert(0, os.path.dirname(__file__))
# openvino's telemetry forks a child at import unless CI is set; the fork
# tears down OpenBLAS's workers, making thread counts racy.
os.environ.setdefault("CI", "true")
# The host ledger of this test session alone (children inherit it): the
# tests neither see nor disturb this user's real participants.
_LEDGER_DIR = tempfile.mkdtemp(prefix="threadguard-tests-")
os.environ["THREADGUARD_LEDGER"] = os.path.join(_LEDGER_DIR, "host.ledger")
atexit.register(shutil.rmtree, _LEDGER_DIR, True)


CGROUP_V1_CPU = "/sys/fs/cgroup/cpu"


@pytest.fixture
def quota_cgroup():
    """A real cgroup v1 child with a 0.2-CPU quota (root only)."""
    if os.geteuid() != 0 or not os.path.isfile(f"{CGROUP_V1_CPU}/cpu.cfs_quota_us"):
        pytest.skip("needs root and the cgroup v1 cpu controller at /sys/fs/cgroup/cpu")
    path = f"{CGROUP_V1_CPU}/threadguard-test-{os.getpid()}"
    try:
        os.mkdir(path)
        with open(f"{path}/cpu.cfs_period_us", "w") as f:
            f.write("100000")
        with open(f"{path}/cpu.cfs_quota_us", "w") as f:
            f.write("20000")
    except OSError as err:
        pytest.skip(f"cannot create a cgroup here: {err}")
    try:
        yield path
    finally:
        try:
            with open(f"{path}/tasks") as f:
                leftover = [line.strip() for line in f if line.strip()]
            for tid in leftover:
                with open(f"{CGROUP_V1_CPU}/tasks", "w") as f:
                    f.write(tid)
        except OSError:
            pass
        os.rmdir(path)
