"""OpenVINO with a matched budget: real compile and inference on models built in code."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ov = pytest.importorskip("openvino")
import numpy as np  # noqa: E402
import openvino.opset13 as ops  # noqa: E402

import threadguard  # noqa: E402
from threadguard import openvino as tgov  # noqa: E402
from hwloc_expected import cases, unpack  # noqa: E402
from machine_tree import V2_MOUNTINFO, multi_socket  # noqa: E402

pytestmark = pytest.mark.openvino
ROOT = Path(__file__).parents[1]


def matmul_model(width=64):
    p = ops.parameter([1, width], np.float32)
    w = ops.constant(np.random.default_rng(0).random((width, width), dtype=np.float32))
    return ov.Model([ops.relu(ops.matmul(p, w, False, False))], [p])


def test_latency_properties_on_two_sockets_of_28_smt_cores(tmp_path):
    topo = threadguard.topology(fsroot=multi_socket(tmp_path, 2, 28, smt=2))
    props = tgov.properties(mode="latency", topology=topo)
    assert props["INFERENCE_NUM_THREADS"] == 28
    assert props["NUM_STREAMS"] == 1
    assert props["ENABLE_HYPER_THREADING"] is False
    assert props["PERFORMANCE_HINT"].name == "LATENCY"
    # The process may run on every socket: OpenVINO's CPUs are not its own.
    assert props["ENABLE_CPU_PINNING"] is False


def test_pinning_only_when_the_process_runs_on_exactly_the_plans_cpus(tmp_path):
    # As under `numactl --physcpubind 0-27` (or threadguard run --mode latency).
    root = multi_socket(tmp_path, 2, 28, smt=2, extra={
        "/proc/self/status": "Cpus_allowed_list:\t0-27\nMems_allowed_list:\t0\n"})
    topo = threadguard.topology(fsroot=root)
    plan = threadguard.plan(topo, "latency")
    assert plan.pin is False  # one socket is all it may use: nothing to pin against
    props = tgov.properties(mode="latency", topology=topo)
    assert props["INFERENCE_NUM_THREADS"] == 28


def test_throughput_streams_per_numa_node_within_the_budget(tmp_path):
    topo = threadguard.topology(fsroot=multi_socket(tmp_path, 2, 28, smt=2))
    props = tgov.properties(mode="throughput", topology=topo)
    assert props["NUM_STREAMS"] >= 2  # at least one per NUMA node
    assert props["INFERENCE_NUM_THREADS"] <= 56
    assert props["INFERENCE_NUM_THREADS"] % props["NUM_STREAMS"] == 0


def test_quota_limited_container(tmp_path):
    root = multi_socket(tmp_path, 1, 16, extra={
        "/proc/self/cgroup": "0::/pod\n", "/proc/self/mountinfo": V2_MOUNTINFO,
        "/sys/fs/cgroup/pod/cpu.max": "100000 100000\n"})
    topo = threadguard.topology(fsroot=root)
    for mode in ("latency", "throughput"):
        props = tgov.properties(mode=mode, topology=topo)
        assert props["INFERENCE_NUM_THREADS"] == 1 and props["NUM_STREAMS"] == 1


def test_hybrid_latency_uses_performance_cores(tmp_path):
    case = next(c for c in cases() if c.name == "20em64t-hybrid-1p6c2t+2ca4co1t")
    topo = threadguard.topology(fsroot=unpack(case, tmp_path))
    props = tgov.properties(mode="latency", topology=topo)
    assert props["SCHEDULING_CORE_TYPE"].name == "PCORE_ONLY"
    assert props["INFERENCE_NUM_THREADS"] == 6


def test_inside_a_budget_openvino_gets_the_ledgers_share():
    with threadguard.budget(1, allow_oversubscription=True):
        props = tgov.properties(mode="throughput")
    assert props["INFERENCE_NUM_THREADS"] == 1 and props["NUM_STREAMS"] == 1


def test_compile_model_records_requested_effective_and_observed():
    guarded = tgov.compile_model(matmul_model(256), mode="latency")
    record = guarded.record
    assert record.effective["INFERENCE_NUM_THREADS"] == record.requested["INFERENCE_NUM_THREADS"]
    assert record.effective["NUM_STREAMS"] == 1
    assert record.mismatches == ()
    assert record.threads_after >= record.threads_before
    assert set(record.new_threads_by_pool) <= {"tbb", "openvino", "other"}
    out = guarded.create_infer_request().infer({0: np.ones((1, 256), np.float32)})
    assert next(iter(out.values())).shape == (1, 256)


def test_compile_from_an_ir_file(tmp_path):
    path = tmp_path / "model.xml"
    ov.save_model(matmul_model(), str(path))
    guarded = tgov.compile_model(str(path))
    assert guarded.record.effective["NUM_STREAMS"] == 1


def test_user_config_wins_with_warnings_naming_the_property():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        guarded = tgov.compile_model(matmul_model(), mode="throughput",
                                     config={"NUM_STREAMS": 64, "INFERENCE_NUM_THREADS": 1})
    messages = [str(w.message) for w in seen]
    assert any("64 streams" in m for m in messages)  # breaks the budget
    assert any(m.startswith("OpenVINO NUM_STREAMS: asked 64") for m in messages)  # not honoured
    assert any("NUM_STREAMS" in m for m in guarded.record.mismatches)


def test_bad_input_is_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="model file not found"):
        tgov.compile_model(str(tmp_path / "missing.xml"))
    with pytest.raises(ValueError, match="no device 'NOPE'"):
        tgov.compile_model(matmul_model(), device="NOPE")
    with pytest.raises(ValueError, match="does not know the CPU property NOT_A_PROPERTY"):
        tgov.compile_model(matmul_model(), config={"NOT_A_PROPERTY": 1})


def conv_model():
    p = ops.parameter([1, 3, 32, 32], np.float32)
    w = ops.constant(np.random.default_rng(1).standard_normal((4, 3, 3, 3)).astype(np.float32))
    return ov.Model([ops.convolution(p, w, [1, 1], [1, 1], [1, 1], [1, 1])], [p])


def test_zero_copy_frame_gives_the_same_result_as_the_copy_path():
    frame = np.random.default_rng(2).integers(0, 255, (32, 32, 3), dtype=np.uint8)  # HWC, OpenCV-like
    nhwc = tgov.compile_model(tgov.accept_nhwc_u8(conv_model()), observe=False)
    tensor, copied = tgov.frame_tensor(frame)
    assert copied is None
    assert tensor.data.ctypes.data == frame.ctypes.data  # the frame's own buffer
    shared = next(iter(nhwc.create_infer_request().infer({0: tensor}).values()))
    planar = np.ascontiguousarray(frame.transpose(2, 0, 1)[np.newaxis]).astype(np.float32)
    plain = tgov.compile_model(conv_model(), observe=False)
    copied_result = next(iter(plain.create_infer_request().infer({0: planar}).values()))
    np.testing.assert_allclose(shared, copied_result, rtol=1e-5, atol=1e-4)


def test_unavoidable_copies_are_reported():
    frame = np.zeros((32, 64, 3), np.uint8)[:, ::2]  # a strided view
    with pytest.warns(tgov.CopyWarning, match="not C-contiguous"):
        tensor, copied = tgov.frame_tensor(frame)
    assert copied and tensor.data.ctypes.data != frame.ctypes.data
    with pytest.raises(ValueError, match="float64 is not uint8"):
        tgov.frame_tensor(np.zeros((32, 32, 3)), dtype=np.uint8, on_copy="raise")


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "threadguard", *args], capture_output=True,
                          text=True, env=dict(os.environ, CI="true", PYTHONPATH=str(ROOT),
                                              **(env or {})), timeout=300)


@pytest.mark.slow
def test_bench_demo_with_numpy_load_prints_defaults_vs_plan():
    out = run_cli("bench-openvino", "demo", "--load", "numpy", "--seconds", "1")
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith("│")]
    assert [r.split("│")[1].strip() for r in rows] == ["defaults", "plan", "plan+pin"]
    assert "pinning" in out.stdout


def test_bench_bad_model_path_is_one_line_exit_2(tmp_path):
    out = run_cli("bench-openvino", str(tmp_path / "nope.xml"), "--seconds", "1")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [f"threadguard: error: model file not found: "
                                               f"{tmp_path / 'nope.xml'}"]


def test_without_openvino_the_error_names_the_extra():
    code = ("import sys; sys.modules['openvino'] = None\n"
            "from threadguard import cli\nraise SystemExit(cli.main(['bench-openvino', 'demo']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode == 2
    assert "pip install 'threadguard[openvino]'" in out.stderr and "Traceback" not in out.stderr


def test_properties_under_a_quota_never_ask_for_more_than_it_rounds_up_to(tmp_path):
    # 1.5 CPUs of a 2 x 16-core host: OpenVINO ignores quotas (openvino#37838)
    root = multi_socket(tmp_path, 2, 16, smt=2, extra={
        "/proc/self/cgroup": "0::/job\n", "/proc/self/mountinfo": V2_MOUNTINFO,
        "/sys/fs/cgroup/job/cpu.max": "150000 100000\n"})
    topo = threadguard.topology(fsroot=root)
    for mode in ("latency", "throughput"):
        props = tgov.properties(mode=mode, topology=topo)
        assert props["INFERENCE_NUM_THREADS"] == 2, (mode, props)
        assert props["NUM_STREAMS"] <= 2
