"""bench/bench_tvm.py's fidelity column: SQNR of each int8 runtime's first output against ORT
fp32's, and its place in the table."""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))


def test_fidelity_is_the_sqnr_of_each_int8_runtime_against_fp32():
    import bench_tvm

    ref = np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 64)
    noise = np.full_like(ref, 0.01)
    fp32 = SimpleNamespace(get_outputs=lambda: [SimpleNamespace(name="y")], run=lambda _o, _f: [ref, ref * 0])
    int8 = SimpleNamespace(run=lambda _o, _f: [ref + noise])
    compiled = SimpleNamespace(run=lambda _f: {"other": ref * 0, "y": ref.reshape(64)})  # by name, any shape
    got = bench_tvm.fidelity(compiled, int8, fp32, lambda _f: [ref + 10 * noise], {})
    expect = 10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / (64 * 0.01 ** 2))
    assert got["sqnr_tvm_db"] == float("inf")
    assert abs(got["sqnr_ort_int8_db"] - expect) < 1e-3
    assert abs(got["sqnr_openvino_int8_db"] - (expect - 20)) < 1e-3
    assert "sqnr_openvino_int8_db" not in bench_tvm.fidelity(compiled, int8, fp32, None, {})
    row = {"model": "m", "threads": 1, "qgraph_tvm_ms": 1.0, "ort_int8_ms": 2.0, "ort_fp32_ms": 2.0,
           "tvm_over_ort_int8": 0.5, "tvm_over_ort_fp32": 0.5, "ort_int8_over_fp32": 1.0, **got}
    del row["sqnr_openvino_int8_db"]
    table = bench_tvm._table([], [row])
    assert f"| inf / {expect:.1f} / n/a / n/a |" in table and "| 2.000 / n/a / n/a |" in table, table
    assert "| n/a / n/a |" in table  # no OpenVINO: neither its default nor its f32 run
    row.update(openvino_int8_ms=4.0, tvm_over_openvino_int8=0.25)
    assert "| 4.000 / n/a |" in bench_tvm._table([], [row]) and "| 0.25 / n/a |" in bench_tvm._table([], [row])
    own = SimpleNamespace(run=lambda _o, _f: [ref + 100 * noise])
    assert abs(bench_tvm.fidelity(compiled, int8, fp32, None, {}, own)["sqnr_ort_int8_own_db"] - (expect - 40)) < 1e-3


def test_ort_quantize_writes_ort_s_own_qdq_model_or_says_why_not(tmp_path):
    import onnx
    import bench_tvm

    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "golden", "models", "op_conv.onnx")
    calib = src.replace("models", "data").replace(".onnx", "_calib.npz")
    dst = str(tmp_path / "q.onnx")
    assert bench_tvm.ort_quantize(src, calib, dst) == "ok"
    ops = [n.op_type for n in onnx.load(dst).graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops and "Conv" in ops
    assert bench_tvm.ort_quantize(str(tmp_path / "missing.onnx"), [], dst).startswith("failed: ")
