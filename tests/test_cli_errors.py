"""One error model for every command: a one-line message and the documented
exit code (2 bad input, 127 a command that cannot start, the command's own
status as a shell gives it), never a traceback, and nothing left behind."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from machine_tree import machine

ENV = dict(os.environ, CI="true")


def tg(*args, env=None, timeout=120, cwd=None):
    return subprocess.run([sys.executable, "-m", "threadguard", *args], capture_output=True,
                          text=True, env=dict(ENV, **(env or {})), timeout=timeout, cwd=cwd)


def one_line_error(out) -> str:
    assert "Traceback" not in out.stderr, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("threadguard")]
    assert len(lines) == 1 and "error" in lines[0], out.stderr
    return lines[0]


@pytest.fixture
def bad_programs(tmp_path):
    plain = tmp_path / "not-executable"
    plain.write_text("#!/bin/sh\necho hi\n")
    no_shebang = tmp_path / "no-shebang"
    no_shebang.write_bytes(b"\x00\x01 not a program\n")
    no_shebang.chmod(0o755)
    return {"missing": "/nonexistent/cmd", "directory": str(tmp_path), "not executable": str(plain),
            "no #! line": str(no_shebang), "empty": "", "not on PATH": "threadguard-no-such-cmd"}


@pytest.mark.parametrize("command", [["doctor"], ["record", "--seconds", "1"], ["watch"], ["run"]])
def test_a_command_that_cannot_start_is_127_with_one_line(command, bad_programs, tmp_path):
    for why, program in bad_programs.items():
        out = tg(*command, "--", program, cwd=tmp_path)
        assert out.returncode == 127, (why, out.stderr)
        assert repr(program) in one_line_error(out), why
    assert not (tmp_path / "threadguard-record").exists()  # nothing created for it


def test_a_recording_stopped_by_threadguard_succeeds_and_signals_read_as_a_shell_does(tmp_path):
    out = tg("record", "--seconds", "1", "-o", str(tmp_path / "a"), "--", "sleep", "30")
    assert out.returncode == 0, out.stderr  # time was up: threadguard stopped it
    out = tg("record", "-o", str(tmp_path / "b"), "--", "sh", "-c", "kill -9 $$")
    assert out.returncode == 128 + signal.SIGKILL
    out = tg("record", "-o", str(tmp_path / "c"), "--", "sh", "-c", "exit 3")
    assert out.returncode == 3


@pytest.mark.parametrize("args", [
    ["record", "--seconds", "nan", "--", "true"], ["record", "--hz", "nan", "--", "true"],
    ["record", "--hz", "1e-300", "--", "true"], ["record", "--seconds", "inf", "--", "true"],
    ["doctor", "--interval", "nan"], ["inspect", "--interval", "-inf"], ["watch", "0"],
    ["watch", "99999999999999999999"], ["topology", "--pid", "4194000"],
    ["record", "--pid", "99999999999", "--seconds", "1"], ["doctor", "--dask", ""],
    ["doctor", "--dask", "tcp://a\nb:1"]])
def test_bad_numbers_and_missing_processes_exit_2(args):
    out = tg(*args, timeout=60)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr


def test_record_checks_its_output_before_starting_anything(tmp_path):
    marker = tmp_path / "started"
    a_file = tmp_path / "file"
    a_file.write_text("keep")
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    for out_dir in (a_file, dangling):
        out = tg("record", "-o", str(out_dir), "--", "touch", str(marker))
        assert out.returncode == 2 and str(out_dir) in one_line_error(out)
        assert not marker.exists()
    assert a_file.read_text() == "keep" and not (tmp_path / "nowhere").exists()


def test_record_never_writes_through_links_planted_in_its_directory(tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (out_dir / "trace.json").symlink_to(victim)
    (out_dir / "summary.json").symlink_to(tmp_path / "created-through-link")
    out = tg("record", "-o", str(out_dir), "--", "sh", "-c", "echo $$; sleep 0.5")
    assert out.returncode == 0, out.stderr
    assert victim.read_text() == "precious"
    assert not (tmp_path / "created-through-link").exists()
    for name in ("trace.json", "summary.json", "timeline.png"):  # '$$' in the title too
        assert stat.S_ISREG(os.lstat(out_dir / name).st_mode), name
    assert json.loads((out_dir / "trace.json").read_text())["traceEvents"]
    assert [p.name for p in out_dir.iterdir() if p.name.startswith(".")] == []


def test_what_was_sampled_survives_when_record_is_killed(tmp_path):
    out_dir = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "threadguard", "record", "--hz", "20", "-o",
                             str(out_dir), "--", "sleep", "60"], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    trace = out_dir / "trace.json"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if trace.exists() and trace.read_text().count('"ph": "X"') >= 3:
                break
            time.sleep(0.1)
        proc.kill()
        proc.wait()
    finally:
        subprocess.run(["pkill", "-f", "^sleep 60$"], check=False)
    text = trace.read_text()
    events = json.loads(text.rstrip().rstrip(",") + "]")  # the array format's open end
    slices = [e for e in events if e["ph"] == "X"]
    assert len(slices) >= 3 and all(e["dur"] > 0 for e in slices)


def test_doctor_imports_a_module_that_prints(tmp_path):
    out = tg("doctor", "--import", "this", timeout=60)
    assert out.returncode == 0, out.stderr
    assert "Zen of Python" not in out.stdout  # the module's output went to stderr


@pytest.mark.parametrize("online", [",,,", "7-1", "0-4000000000", "\x1b[31mjunk\x07", "٣"])
def test_a_dumped_tree_with_a_bad_cpu_list_names_the_file(online, tmp_path):
    root = machine(tmp_path / "root", 2, extra={"/sys/devices/system/cpu/online": online})
    out = tg("topology", env={"THREADGUARD_FSROOT": str(root)}, timeout=30)
    assert out.returncode == 2, out.stdout + out.stderr
    line = one_line_error(out)
    assert "sys/devices/system/cpu/online" in line and "\x1b" not in line and "\x07" not in line


def test_a_dumped_tree_that_is_missing_or_holds_a_fifo_or_an_endless_file(tmp_path):
    out = tg("topology", env={"THREADGUARD_FSROOT": str(tmp_path / "nonexistent")})
    assert out.returncode == 2 and "THREADGUARD_FSROOT" in one_line_error(out)
    for name, make in (("fifo", os.mkfifo), ("zero", lambda p: os.symlink("/dev/zero", p))):
        root = machine(tmp_path / name, 2)
        online = root / "sys/devices/system/cpu/online"
        online.unlink()
        make(online)
        out = tg("topology", env={"THREADGUARD_FSROOT": str(root)}, timeout=30)
        assert out.returncode == 2 and "not a regular file" in one_line_error(out), name


def test_a_kernel_thread_is_named_as_such(tmp_path):
    from threadguard.inspection import PF_KTHREAD, _state_and_flags
    kernel = next((int(p) for p in os.listdir("/proc")
                   if p.isdigit() and _state_and_flags(int(p))[1] & PF_KTHREAD), None)
    if kernel is None:
        pytest.skip("no kernel thread visible here (a PID namespace)")
    for command in (["inspect"], ["doctor"]):
        out = tg(*command, "--pid", str(kernel))
        assert out.returncode == 2 and "kernel thread" in one_line_error(out)


def test_output_that_cannot_be_written_is_one_line(tmp_path):
    with open("/dev/full", "w") as full:
        out = subprocess.run([sys.executable, "-m", "threadguard", "topology", "--json"],
                             stdout=full, stderr=subprocess.PIPE, text=True, env=ENV, timeout=60)
    assert out.returncode == 2 and "No space left" in one_line_error(out)


def test_sigterm_stops_the_recorded_command_and_keeps_the_recording(tmp_path):
    marker = tmp_path / "alive"
    script = f"import time, pathlib\nwhile True:\n    pathlib.Path({str(marker)!r}).touch(); time.sleep(0.05)\n"
    proc = subprocess.Popen([sys.executable, "-m", "threadguard", "record", "-o",
                             str(tmp_path / "out"), "--", sys.executable, "-c", script],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == 0  # stopped on request: the recording succeeded
    marker.unlink()
    time.sleep(0.5)
    assert not marker.exists()  # the command was stopped too
    assert json.loads((tmp_path / "out" / "trace.json").read_text())["traceEvents"]
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_nested_output_directories_made_for_a_command_that_cannot_start_are_removed(tmp_path):
    no_shebang = tmp_path / "prog"
    no_shebang.write_bytes(b"\x00junk")
    no_shebang.chmod(0o755)
    out = tg("record", "-o", str(tmp_path / "a" / "b" / "c"), "--", str(no_shebang))
    assert out.returncode == 127 and not (tmp_path / "a").exists()
    (tmp_path / "d" / "trace.json").mkdir(parents=True)
    out = tg("record", "-o", str(tmp_path / "d"), "--", "touch", str(tmp_path / "started"))
    assert out.returncode == 2 and not (tmp_path / "started").exists()


@pytest.mark.parametrize("args", [["watch", "--"], ["doctor", "--"], ["watch", "²"], ["watch", "١"]])
def test_an_empty_command_or_a_foreign_digit_is_a_usage_error(args):
    out = tg(*args)
    assert out.returncode == 2, out.stderr
    one_line_error(out)


def test_a_zombie_cannot_be_inspected():
    child = subprocess.Popen(["true"])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # exited, not reaped: a zombie
        with open(f"/proc/{child.pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                break
        time.sleep(0.02)
    try:
        for command in (["inspect"], ["doctor"]):
            out = tg(*command, "--pid", str(child.pid))
            assert out.returncode == 2 and "zombie" in one_line_error(out)
    finally:
        child.wait()


def test_ctrl_c_while_the_timeline_is_drawn_keeps_the_recording(tmp_path, monkeypatch, capsys):
    from threadguard import record
    from threadguard.render import timeline
    from threadguard.sampler import Recording

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(timeline, "plot_timeline", interrupted)
    out = record.OutputDir(str(tmp_path / "out"))
    try:
        paths = record.write_outputs(Recording(os.getpid(), 20.0, 2), out, None, "title")
    finally:
        out.close()
    assert sorted(os.path.basename(p) for p in paths) == ["summary.json", "trace.json"]
    assert "interrupted" in capsys.readouterr().err
