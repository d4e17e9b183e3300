"""End to end: ``qgraph compile / run / verify`` and ``qgraph.quantize`` on the golden digits CNN.

The acceptance checks of post-training quantization: the QDQ export runs in ONNX Runtime
and, with QDQ fusion off (``session.disable_quant_qdq``), lands within 1 LSB of the
integer reference; the INT8 digits CNN keeps its held-out accuracy within 0.25 points of
float through the reference interpreter; the report has per-layer SQNR.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from qgraph.cli.main import main
from tests.conftest import REPO

DIGITS = os.path.join(REPO, "golden", "models", "digits_cnn.onnx")
CALIB = os.path.join(REPO, "golden", "data", "digits_calib.npz")
TEST = os.path.join(REPO, "golden", "data", "digits_test.npz")


@pytest.fixture(scope="module")
def digits_q():
    import qgraph

    return qgraph.quantize(DIGITS, CALIB)  # the top-level name of qgraph.api.quantize


@pytest.fixture(scope="module")
def digits_test():
    with np.load(TEST) as z:
        return z["input"], z["label"]


def test_digits_int8_accuracy_within_a_quarter_point(digits_q, digits_test):
    from qgraph.api import run_ort

    x, labels = digits_test
    float_acc = float(np.mean(run_ort(digits_q.float_model, {"input": x})["logits"].argmax(1) == labels))
    q_logits = digits_q.run({"input": x})["logits"]
    q_acc = float(np.mean(q_logits.argmax(1) == labels))
    assert float_acc >= 0.97
    assert abs(q_acc - float_acc) * 100 <= 0.25, (q_acc, float_acc)


def test_digits_reference_within_one_lsb_of_ort_simulation(digits_q, digits_test):
    from qgraph.verify.outputs import verify_outputs

    x, _ = digits_test
    result = verify_outputs(digits_q, {"input": x[:64]})["logits"]
    assert result["ort-sim"]["max_lsb"] <= 1
    assert result["sqnr_db"] > 20
    assert "ort" in result  # ORT's default kernels: reported, whatever they do


def test_digits_report_has_per_layer_sqnr(digits_q):
    layers = digits_q.report.layers
    convs = [r for r in layers if r["op"].startswith("Conv")]
    assert len(convs) >= 3
    for r in convs:
        assert r["weight"]["per_channel"] and r["weight"]["dtype"] == "int8"
        assert r["output"]["dtype"] == "uint8"
        assert isinstance(r["sqnr_db"], float) and r["sqnr_db"] > 15, r
    assert "| node | op |" in digits_q.report.markdown()


def test_compile_run_verify_cli(tmp_path, capsys, digits_test):
    out = tmp_path / "digits"
    assert main(["compile", DIGITS, "--calib", CALIB, "-o", str(out)]) == 0
    said = capsys.readouterr().out
    assert "integer ops" in said and "SQNR" in said
    for f in ("model.qdq.onnx", "model.qgraph.onnx", "model.float.onnx", "report.json", "report.md"):
        assert (out / f).exists(), f
    report = json.loads((out / "report.json").read_text())
    assert report["layers"] and report["outputs"]["logits"]["top1"] >= 0.9

    x, _ = digits_test
    np.savez(tmp_path / "x.npz", input=x[:32])
    assert main(["run", str(out), "--inputs", str(tmp_path / "x.npz"), "-o", str(tmp_path / "y.npz")]) == 0
    with np.load(tmp_path / "y.npz") as z:
        assert z["logits"].shape == (32, 10)
    assert main(["verify", str(out), "--inputs", str(tmp_path / "x.npz")]) == 0
    said = capsys.readouterr().out
    assert "top-1 agreement" in said and "disable_quant_qdq" in said and "default CPU kernels" in said


def test_compile_errors_name_the_problem(tmp_path, capsys):
    assert main(["compile", DIGITS, "--calib", CALIB, "-o", str(tmp_path / "o"), "--target", "npu9"]) == 1
    assert "--target npu9" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "nothing"), "--inputs", CALIB, "-o", str(tmp_path / "y.npz")]) == 1
    assert "not a folder written by `qgraph compile`" in capsys.readouterr().err


def test_quantize_with_input_shapes_makes_shape_dependent_ops_integer(tmp_path):
    """A model declared with symbolic dims gets the runtime-count QGlobalAveragePool (it divides
    by the spatial size at run time); ``input_shapes`` fixes the dims before quantization and it
    gets the static form, the size folded into its multiplier. A name that is no input, a wrong
    rank, or a dim that disagrees with a declared static one is an error naming the input."""
    from onnx import TensorProto, helper, numpy_helper

    import qgraph
    from qgraph.errors import QGraphError
    from qgraph.ir import l3
    from qgraph.ir.types import TensorType

    rng = np.random.default_rng(0)
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("GlobalAveragePool", ["r"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
         helper.make_node("Gemm", ["f", "b"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(rng.normal(size=(8, 3, 3, 3)).astype(np.float32), "w"),
         numpy_helper.from_array(rng.normal(size=(8, 4)).astype(np.float32), "b")])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    calib = [{"x": rng.normal(size=(1, 3, 6, 10)).astype(np.float32)} for _ in range(4)]

    def gap_forms(q):
        return [n.attr("runtime_count", 0) for n in q.integer.graph if n.op is l3.QGlobalAveragePool]

    dynamic = qgraph.quantize(proto, calib, report=False)
    assert gap_forms(dynamic) == [1]
    static = qgraph.quantize(proto, calib, report=False, input_shapes={"x": [1, 3, 6, 10]})
    assert gap_forms(static) == [0]
    assert static.qdq.graph.inputs[0].type == TensorType(static.qdq.graph.inputs[0].type.dtype, (1, 3, 6, 10))

    for shapes, words in (({"z": [1, 3, 6, 10]}, "'z', which is not a graph input"),
                          ({"x": [1, 3, 6]}, "has rank 3"),
                          ({"x": [1, 4, 6, 10]}, "disagrees with the model's"),
                          ({"x": [1, 3, 0, 10]}, "a dim below 1")):
        with pytest.raises(QGraphError, match=words):
            qgraph.quantize(proto, calib, report=False, input_shapes=shapes)


def test_compile_recurrent_weights_float16_cli(tmp_path):
    """``qgraph compile --recurrent-weights float16``: the LSTM's W and R in the exported models
    hold float16 values; ``config.json`` says so (reusing it with ``--config`` repeats it), and
    so does the report's row for the LSTM among the ops that stayed float."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(2)
    inits = {"W": rng.standard_normal((1, 32, 4)).astype(np.float32) * 0.3,
             "R": rng.standard_normal((1, 32, 8)).astype(np.float32) * 0.3, "m": rng.standard_normal((4, 4)).astype(np.float32)}
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "m"], ["h"]), helper.make_node("LSTM", ["h", "W", "R"], ["y"], hidden_size=8)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [6, 1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [numpy_helper.from_array(v, k) for k, v in inits.items()])
    path = tmp_path / "lstm.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((6, 8, 4)).astype(np.float32))  # 8 samples on axis 1
    out = tmp_path / "o"
    assert main(["compile", str(path), "--calib", str(tmp_path / "calib.npz"), "-o", str(out),
                 "--recurrent-weights", "float16", "--batch-axis", "x=1"]) == 0
    assert json.loads((out / "config.json").read_text())["recurrent_weights"] == "float16"
    rows = json.loads((out / "report.json").read_text())["stayed_float"]
    assert any(r["op"] == "LSTM" and "weights hold float16 values" in r["reason"] for r in rows), rows
    for name in ("model.qdq.onnx", "model.qgraph.onnx"):
        g = onnx.load(str(out / name)).graph
        lstm = next(n for n in g.node if n.op_type == "LSTM")
        by_name = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        for i, orig in ((1, "W"), (2, "R")):
            w = by_name[lstm.input[i]]
            assert w.dtype == np.float32 and np.array_equal(w, inits[orig].astype(np.float16).astype(np.float32)), name
