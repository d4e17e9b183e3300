"""The ``qnn`` target: the HTP's quantization rules in insert-qdq and --precision auto (always
run), and the QDQ export on the Qualcomm HTP emulator (``onnxruntime-qnn`` in the environment
``QGRAPH_QNN_PYTHON`` names): every 8-bit layer within 1 LSB of the integer reference, every
node on the HTP, on the golden models and PP-OCRv4 cls / rec.

The emulator tests skip where no QNN environment is configured, except under
``QGRAPH_QNN_REQUIRED=1`` (``.ci/run`` sets it): there a missing environment fails them.
"""

import json
import os
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from qgraph import qnn
from qgraph.api import quantize
from qgraph.ir import ops
from qgraph.ir.l2 import read_qdq
from qgraph.quant import QuantConfig
from tests.conftest import REPO

GOLDEN = os.path.join(REPO, "golden")
GOLDEN_MODELS = ["digits_cnn", "example_cnn", "op_add_mul", "op_concat", "op_conv", "op_fallback", "op_gemm",
                 "op_matmul_act", "op_pool"]
QNN_CONFIG = {"target": "qnn"}

needs_qnn = pytest.mark.skipif(not qnn.available() and not os.environ.get("QGRAPH_QNN_REQUIRED"),
                               reason=f"no QNN environment: {qnn.HOW_TO_GET}")


# -- the HTP rules in insert-qdq (no emulator needed) -------------------------------------------
def _model(nodes, inputs, outputs, inits, opset=13):
    g = helper.make_graph(nodes, "g", inputs, outputs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _vi(name, *shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def _init(name, *shape, seed=0):
    a = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return onnx.numpy_helper.from_array(a, name)


def _calib(**shapes):
    rng = np.random.default_rng(1)
    return {k: rng.uniform(-1, 1, (16,) + s).astype(np.float32) for k, s in shapes.items()}


def _dq_of(model, node_name, index):
    node = next(n for n in model.graph if n.name == node_name)
    return node.inputs[index].producer()


def test_htp_weights_per_channel_only_on_conv_axis_0_and_symmetric():
    m = _model([helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"),
                helper.make_node("Flatten", ["c"], ["f"], name="flat"),
                helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], name="fc")],
               [_vi("x", 1, 2, 4, 4)], [_vi("y", 1, 3)],
               [_init("w", 4, 2, 3, 3), _init("b", 4), _init("fw", 16, 3, seed=2), _init("fb", 3)])
    plain = quantize(m, _calib(x=(2, 4, 4)), report=False, show_progress=False).qdq
    htp = quantize(m, _calib(x=(2, 4, 4)), QNN_CONFIG, report=False, show_progress=False).qdq
    assert read_qdq(_dq_of(plain, "fc", 1)).axis == 1  # the default: Gemm weights per channel
    gemm_w = read_qdq(_dq_of(htp, "fc", 1))
    conv_w = read_qdq(_dq_of(htp, "conv", 1))
    assert gemm_w.axis is None  # the HTP: per channel on Conv axis 0 only
    assert conv_w.axis == 0 and not np.any(conv_w.zero_point)
    assert htp.opset("") >= 20  # fused hard-swish / LayerNorm / GELU are standard ops there


def test_htp_fixed_16bit_sigmoid_and_narrow_act_matmul():
    m = _model([helper.make_node("MatMul", ["a", "b"], ["mm"], name="mm"),
                helper.make_node("Sigmoid", ["mm"], ["s"], name="sig"),
                helper.make_node("Add", ["mm", "s"], ["y"], name="add")],
               [_vi("a", 1, 4, 8), _vi("b", 1, 8, 5)], [_vi("y", 1, 4, 5)], [])
    cfg = {"target": "qnn", "activation": {"dtype": "uint16"}}
    q = quantize(m, _calib(a=(4, 8), b=(8, 5)), cfg, report=False, show_progress=False)
    mm = next(n for n in q.qdq.graph if n.name == "mm")
    for v in mm.inputs:  # uint16 x uint16 act MatMul is computed in 8 bits inside the EP: made 8-bit
        assert read_qdq(v.producer()).dtype.name.lower() == "uint8"
    sig = next(n for n in q.qdq.graph if n.name == "sig")
    q_sig = next(u for u in sig.outputs[0].users() if u.op is ops.QuantizeLinear)
    p = read_qdq(q_sig)
    assert p.dtype.name.lower() == "uint16" and float(p.scale) == pytest.approx(1 / 65536) and int(p.zero_point) == 0


def test_htp_gelu_is_the_standard_op():
    """A decomposed GELU is float inside the quantized graph (the HTP fails to finalize it) and
    its Erf splits the graph: at opset 20 it is one Gelu, quantized."""
    half, one, sqrt2 = (onnx.numpy_helper.from_array(np.array(v, np.float32), n)
                        for n, v in (("half", 0.5), ("one", 1.0), ("sqrt2", 2 ** 0.5)))
    m = _model([helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
                helper.make_node("Div", ["h", "sqrt2"], ["d"], name="div"),
                helper.make_node("Erf", ["d"], ["e"], name="erf"),
                helper.make_node("Add", ["e", "one"], ["a"], name="add1"),
                helper.make_node("Mul", ["h", "a"], ["m"], name="mul1"),
                helper.make_node("Mul", ["m", "half"], ["y"], name="mul2")],
               [_vi("x", 1, 4, 8)], [_vi("y", 1, 4, 8)], [_init("w", 8, 8), half, one, sqrt2])
    q = quantize(m, _calib(x=(4, 8)), QNN_CONFIG, report=False, show_progress=False)
    kinds = [n.op_type for n in q.qdq.graph]
    assert "Gelu" in kinds and "Erf" not in kinds and q.qdq.opset("") >= 20
    gelu = next(n for n in q.qdq.graph if n.op_type == "Gelu")
    assert gelu.inputs[0].producer().op is ops.DequantizeLinear
    assert any(u.op is ops.QuantizeLinear for u in gelu.outputs[0].users())


def test_htp_mixed_types_get_a_conversion():
    m = _model([helper.make_node("Conv", ["x", "w", "b"], ["c1"], name="c1"),
                helper.make_node("Conv", ["c1", "w2", "b2"], ["y"], name="c2")],
               [_vi("x", 1, 2, 4, 4)], [_vi("y", 1, 3, 4, 4)],
               [_init("w", 4, 2, 1, 1), _init("b", 4), _init("w2", 3, 4, 1, 1), _init("b2", 3)])
    cfg = {"target": "qnn", "nodes": {"c2": {"activation": {"dtype": "uint16"}}}}
    q = quantize(m, _calib(x=(2, 4, 4)), cfg, report=False, show_progress=False)
    c2 = next(n for n in q.qdq.graph if n.name == "c2")
    dq = c2.inputs[0].producer()
    assert read_qdq(dq).dtype.name.lower() == "uint16"  # c1's uint8 output converted on the way into c2
    assert dq.inputs[0].producer().inputs[0].producer().op is ops.DequantizeLinear
    ref = q.run(_calib(x=(2, 4, 4)), "reference")
    assert np.isfinite(ref["y"]).all()


def test_htp_refuses_types_it_does_not_run():
    m = _model([helper.make_node("Conv", ["x", "w"], ["y"], name="c")], [_vi("x", 1, 2, 4, 4)],
               [_vi("y", 1, 4, 4, 4)], [_init("w", 4, 2, 1, 1)])
    with pytest.raises(Exception, match="does not run int4 weights"):
        quantize(m, _calib(x=(2, 4, 4)), {"target": "qnn", "weight": {"dtype": "int4"}}, report=False,
                 show_progress=False)


def test_precision_formats_follow_the_target():
    from qgraph.precision.search import PrecisionError, _target_formats
    from qgraph.precision import parse_formats

    fmts = parse_formats("W8A8,W8A16,W4A8,float")
    assert [f.name for f in _target_formats(fmts, QuantConfig(), explicit=False)] == ["W8A8", "W8A16", "W4A8",
                                                                                      "float"]
    htp = QuantConfig(target="qnn")
    assert [f.name for f in _target_formats(fmts, htp, explicit=False)] == ["W8A8", "W8A16", "float"]
    with pytest.raises(PrecisionError, match="does not run W4A8"):
        _target_formats(fmts, htp, explicit=True)


def test_config_target_round_trip_and_target_registry():
    from qgraph import targets

    cfg = QuantConfig.from_json({"target": "qnn"})
    assert cfg.target == "qnn" and QuantConfig.from_json(cfg.to_json()) == cfg
    assert "target" not in QuantConfig().to_json()  # unchanged for configs without one
    t = targets.get("qnn")
    assert t.quant is not None and not t.builds_tvm and targets.get("cpu").builds_tvm


def test_parse_placement_reads_node_units():
    log = "\n".join([
        "2026 [V:onnxruntime:, qnn_execution_provider.cc:1713 LogNodeSupport] Validation PASSED for 3 nodes in "
        "OrtNodeUnit (Conv) :",
        "\tOperator type: DequantizeLinear Node name: x_dq Node index: 1",
        "\tOperator type: Conv Node name: conv Node index: 2",
        "\tOperator type: QuantizeLinear Node name: y_q Node index: 3",
        "",
        "2026 [V:onnxruntime:, qnn_execution_provider.cc:1713 LogNodeSupport] Validation FAILED for 1 nodes in "
        "OrtNodeUnit (Erf) :",
        "\tOperator type: Erf Node name: erf Node index: 4",
        "\tREASON : not supported",
        ""])
    p = qnn.parse_placement(log, {"x_dq": "DequantizeLinear", "conv": "Conv", "y_q": "QuantizeLinear", "erf": "Erf",
                                  "shape": "Shape"})
    assert p.where == {"x_dq": "HTP", "conv": "HTP", "y_q": "HTP", "erf": "CPU", "shape": "CPU"}
    assert p.reasons == {"erf": "not supported"} and p.htp_share == pytest.approx(0.6)


def test_missing_qnn_environment_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv(qnn.PYTHON_ENV, str(tmp_path / "no-python"))
    assert not qnn.available()
    m = quantize(os.path.join(GOLDEN, "models", "op_conv.onnx"), os.path.join(GOLDEN, "data", "op_conv_calib.npz"),
                 report=False, show_progress=False)
    with pytest.raises(qnn.QnnError, match="no such interpreter"):
        m.run(dict(np.load(os.path.join(GOLDEN, "data", "op_conv_test.npz"))), "qnn")


# -- on the HTP emulator ------------------------------------------------------------------------
def _golden(name):
    stem = "digits" if name == "digits_cnn" else name
    calib = os.path.join(GOLDEN, "data", f"{stem}_calib.npz")
    test = os.path.join(GOLDEN, "data", f"{stem}_test.npz")
    return os.path.join(GOLDEN, "models", f"{name}.onnx"), calib, test if os.path.exists(test) else calib


def _assert_on_htp(q, feeds):
    from qgraph.verify.qnn import layer_check

    check = layer_check(q, feeds)
    assert check.placement.htp_share == 1.0, {n: check.placement.reasons.get(n) for n in check.placement.on_cpu()}
    bad = {k: (l.op, l.max_lsb) for k, l in check.layers.items() if l.dtype.endswith("8") and l.max_lsb > 1}
    assert check.layers and not bad, bad
    return check


@needs_qnn
@pytest.mark.parametrize("name", GOLDEN_MODELS)
def test_golden_model_on_htp_within_1_lsb(name):
    path, calib, test = _golden(name)
    q = quantize(path, calib, QNN_CONFIG, report=False, show_progress=False)
    inputs = {v.name for v in q.float_model.graph.inputs}
    with np.load(test) as z:
        feeds = {k: z[k][:64] for k in z.files if k in inputs}
    _assert_on_htp(q, feeds)


def _ppocr(name, n_calib, n_test):
    sys.path.insert(0, os.path.join(REPO, "bench"))
    try:
        import check_tvm_models as bench
    finally:
        sys.path.pop(0)
    path = bench.model_path(name)
    q = quantize(path, bench.samples(name, path, n_calib, seed=1), QNN_CONFIG, report=False, show_progress=False)
    feeds = {"x": np.concatenate([d["x"] for d in bench.samples(name, path, n_test, seed=5)])}
    return q, feeds


@needs_qnn
def test_ppocr_cls_on_htp_within_1_lsb():
    q, feeds = _ppocr("cls", 16, 4)
    check = _assert_on_htp(q, feeds)
    assert len(check.layers) >= 100


@needs_qnn
def test_ppocr_rec_on_htp_within_1_lsb():
    """One rendered text line (48x320): about 40 s here, 18 s of them the emulator running the
    cut model (205 layers, each fed the reference's integers)."""
    q, feeds = _ppocr("rec", 16, 1)
    check = _assert_on_htp(q, feeds)
    assert len(check.layers) >= 200


@needs_qnn
@pytest.mark.slow
def test_ppocr_rec_on_htp_within_1_lsb_4_lines():
    """Slow: 4 lines take the emulator about 18 s each (2-4 minutes with the rest on 2 cores)."""
    q, feeds = _ppocr("rec", 16, 4)
    check = _assert_on_htp(q, feeds)
    assert len(check.layers) >= 200


@needs_qnn
def test_cli_target_qnn_context_binary_run_and_verify(tmp_path, capsys):
    from qgraph.cli.main import main

    path, calib, test = _golden("digits_cnn")
    out = tmp_path / "o"
    assert main(["compile", path, "--calib", calib, "-o", str(out), "--target", "qnn"]) == 0
    printed = capsys.readouterr().out
    assert "28/28 nodes (100.0%) on the HTP" in printed
    ctx = onnx.load(str(out / "model.qnn_ctx.onnx"))
    assert [n.op_type for n in ctx.graph.node] == ["EPContext"]
    assert "runs on" in (out / "report.md").read_text()
    assert json.loads((out / "config.json").read_text())["target"] == "qnn"
    assert main(["run", str(out), "--inputs", test, "-o", str(tmp_path / "y.npz"), "--backend", "qnn"]) == 0
    x = np.load(test)["input"][:1]
    with qnn.QnnSession(str(out / "model.qnn_ctx.onnx"), {}) as s:  # the context binary runs as compiled
        np.testing.assert_array_equal(s.run({"input": x})["logits"], np.load(tmp_path / "y.npz")["logits"][:1])
    assert main(["verify", str(out), "--inputs", test]) == 0
    printed = capsys.readouterr().out
    assert "reference vs QNN HTP emulator: max 1 LSB" in printed or "reference vs QNN HTP emulator: max 0 LSB" in printed
    assert "HTP placement: 28/28 nodes (100.0%)" in printed
    assert "8-bit layers, each from the reference's inputs): max 1 LSB" in printed


@needs_qnn
def test_precision_auto_on_htp(tmp_path, capsys):
    """W8A16 next to W8A8: every node stays on the HTP (conversions at the boundaries)."""
    from qgraph.cli.main import main

    path, calib, test = _golden("digits_cnn")
    out = tmp_path / "p"
    assert main(["compile", path, "--calib", calib, "-o", str(out), "--target", "qnn", "--precision", "auto",
                 "--accuracy", "sqnr>=45"]) == 0
    printed = capsys.readouterr().out
    assert "W8A16" in printed and "W4A8" not in printed and "(100.0%) on the HTP" in printed
    assert main(["verify", str(out), "--inputs", test]) == 0
    printed = capsys.readouterr().out
    assert "(100.0%) on the HTP" in printed
    assert "8-bit layers, each from the reference's inputs): max 1 LSB" in printed
