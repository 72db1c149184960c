"""Printed fixes are safe to paste: quoted, naming only real absolute paths,
and pasting one makes its finding go away."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from procs import intel_libiomp5, sklearn_libgomp

ROOT = Path(__file__).parents[1]


def doctor_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OMP_", "KMP_", "MKL_", "OPENBLAS_", "LD_PRELOAD"))}
    env.update(CI="true", PYTHONPATH=str(ROOT), **extra)
    return env


def findings(env, cwd) -> dict:
    out = subprocess.run([sys.executable, "-m", "threadguard", "doctor", "--json",
                          "--fail-on", "never"], capture_output=True, text=True, env=env,
                         cwd=cwd, timeout=120)
    assert out.returncode == 0, out.stderr
    return {f["code"]: f for f in json.loads(out.stdout)["findings"]}


def test_the_preload_fix_is_quoted_and_pasting_it_removes_the_finding(tmp_path):
    intel_libiomp5(), sklearn_libgomp()  # both shipped: TG104 is due
    hostile = f"/opt/x.so;touch {tmp_path}/pwned $(touch {tmp_path}/pwned2) ./relative.so"
    found = findings(doctor_env(LD_PRELOAD=hostile), tmp_path)
    fix = found["TG104"]["fix"]
    assert fix.startswith("export LD_PRELOAD=")
    value = shlex.split(fix, comments=True)[1].split("=", 1)[1]
    assert all(os.path.isabs(p) and os.path.isfile(p) for p in value.split(":")), value
    pasted = fix + "\n" + shlex.join([sys.executable, "-m", "threadguard", "doctor", "--json",
                                     "--fail-on", "never"])  # the whole line, as pasted
    out = subprocess.run(["sh", "-c", pasted], capture_output=True, text=True, cwd=tmp_path,
                         env=doctor_env(LD_PRELOAD=hostile), timeout=120)
    assert out.returncode == 0, out.stderr
    assert not list(tmp_path.glob("pwned*"))  # nothing of the old value ran
    assert "TG104" not in {f["code"] for f in json.loads(out.stdout)["findings"]}


def test_a_directory_in_ld_preload_is_flagged(tmp_path):
    found = findings(doctor_env(LD_PRELOAD=str(tmp_path)), tmp_path)
    assert "a directory" in found["TG108"]["title"]


def test_run_preloads_a_path_with_a_space_through_a_link_ld_so_can_take(tmp_path):
    from threadguard.launch import carriable
    spaced = tmp_path / "my env" / "lib:x"
    spaced.mkdir(parents=True)
    lib = spaced / Path(intel_libiomp5()).name
    shutil.copy(intel_libiomp5(), lib)
    link = carriable(str(lib))
    assert link and " " not in link and ":" not in link and os.path.realpath(link) == str(lib)
    assert carriable(str(lib)) == link  # made once
    out = subprocess.run([sys.executable, "-c", "print(open('/proc/self/maps').read())"],
                         capture_output=True, text=True, env=dict(os.environ, LD_PRELOAD=link),
                         timeout=60)
    assert str(lib) in out.stdout, out.stderr


def test_a_fix_the_checked_command_already_has_is_not_repeated(tmp_path):
    # The command's own environment is what its runtimes read: given the
    # preload, TG104 is settled for it, whatever threadguard's environment.
    intel_libiomp5(), sklearn_libgomp()
    work = [sys.executable, "-c", "import time, numpy; time.sleep(1.5)"]

    def codes(*cmd):
        out = subprocess.run([sys.executable, "-m", "threadguard", "doctor", "--json",
                              "--fail-on", "never", "--", *cmd], capture_output=True, text=True,
                             env=doctor_env(), cwd=tmp_path, timeout=120)
        return {f["code"] for f in json.loads(out.stdout)["findings"]}
    assert "TG104" in codes(*work)
    assert "TG104" not in codes("env", f"LD_PRELOAD={intel_libiomp5()}", *work)


def test_a_preload_that_cannot_settle_the_order_keeps_the_finding(tmp_path):
    intel, gnu = intel_libiomp5(), sklearn_libgomp()
    for value in ("libiomp5.so", f"{gnu}:{intel}"):  # not found by ld.so; GNU's first
        assert "TG104" in findings(doctor_env(LD_PRELOAD=value), tmp_path), value
    assert "TG104" not in findings(doctor_env(LD_PRELOAD=f"{intel}:{gnu}"), tmp_path)
