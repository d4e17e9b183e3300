"""The report's honesty: numbers labelled with their data, warnings, ``--eval``, ``--strict``.

Small models built here with ``onnx.helper`` (a detector-like head whose Concat puts box
coordinates and class scores under one scale; an output declared in another shape than it
has) and the golden digits CNN (calibration and held-out data with labels) for the cases
where a real model helps: all-zero and single-sample calibration data, an exclude name that
matches nothing, ``--eval`` numbers equal to ``qgraph verify``'s.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import qgraph
from qgraph.cli.main import main
from qgraph.verify.diagnose import check_layers
from qgraph.verify.metrics import classifier_shaped, output_metrics
from tests.conftest import REPO

DIGITS = os.path.join(REPO, "golden", "models", "digits_cnn.onnx")
CALIB = os.path.join(REPO, "golden", "data", "digits_calib.npz")
TEST = os.path.join(REPO, "golden", "data", "digits_test.npz")


def kinds(report) -> list[str]:
    return [w.kind for w in report.warnings]


def detector_head():
    """x [N, 8, 1, 10] -> boxes = Relu(Conv) in about [0, 230], scores = Sigmoid(Conv) in (0, 1),
    Concat on axis 1 -> y [N, 7, 1, 10]: a YOLO-style output in miniature."""
    rng = np.random.default_rng(0)
    wb = np.abs(rng.normal(size=(4, 8, 1, 1))).astype(np.float32) * 40
    ws = rng.normal(size=(3, 8, 1, 1)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "wb"], ["b"], name="box_conv"),
         helper.make_node("Relu", ["b"], ["boxes"], name="box_relu"),
         helper.make_node("Conv", ["x", "ws"], ["s"], name="score_conv"),
         helper.make_node("Sigmoid", ["s"], ["scores"], name="score_sigmoid"),
         helper.make_node("Concat", ["boxes", "scores"], ["y"], axis=1, name="head_concat")], "det",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 1, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 7, 1, 10])],
        [numpy_helper.from_array(wb, "wb"), numpy_helper.from_array(ws, "ws")])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    return proto, {"x": rng.uniform(0, 1, size=(32, 8, 1, 10)).astype(np.float32)}


@pytest.fixture(scope="module")
def digits_test():
    with np.load(TEST) as z:
        return z["input"], z["label"]


# -- metrics fit the output ---------------------------------------------------------------------
def test_top1_only_for_classifier_shaped_outputs():
    rng = np.random.default_rng(0)
    assert classifier_shaped(rng.normal(size=(4, 10)), 4)
    assert not classifier_shaped(rng.normal(size=(1, 84, 2100)), 1)  # a detector head
    assert not classifier_shaped(rng.normal(size=(4, 10)), 1)  # 4 rows from 1 sample: boxes, not classes
    assert not classifier_shaped(rng.normal(size=(4,)), 4)
    probs = rng.uniform(size=(2, 5, 10))
    assert classifier_shaped(probs / probs.sum(-1, keepdims=True), 2)  # softmax over the last axis
    m = output_metrics(np.ones((1, 84, 2100)), np.ones((1, 84, 2100)), 1)
    assert "top1" not in m and m["sqnr_db"] == float("inf")


def test_detector_output_gets_no_top1_and_a_mixed_ranges_warning():
    proto, calib = detector_head()
    q = qgraph.quantize(proto, calib)
    assert "top1" not in q.report.outputs["y"]
    mixed = [w for w in q.report.warnings if w.kind == "mixed-ranges"]
    assert len(mixed) == 1, q.report.warnings
    w = mixed[0]
    assert w.node == "head_concat" and w.inputs == ("scores",)
    assert "'boxes'" in w.message and "'scores'" in w.message and '{"exclude": ["head_concat"]}' in w.message
    assert "\n" not in w.message
    # the scores layer lost its resolution to the shared scale: its warning says where the cause is
    drop = [w for w in q.report.warnings if w.tensor == "scores" and w.kind in ("sqnr-drop", "low-sqnr")]
    assert drop and "head_concat" in drop[0].message
    # the advice works: excluded, the head keeps its scores and the warning goes
    fixed = qgraph.quantize(proto, calib, config={"exclude": ["head_concat"]})
    assert "mixed-ranges" not in kinds(fixed.report)
    scores = fixed.run({"x": calib["x"][:4]})["y"][:, 4:]
    assert len(np.unique(scores)) > 20
    assert any(r["node"] == "head_concat" and "excluded by the config" in r["reason"] for r in fixed.report.stayed_float)


def test_add_of_very_different_ranges_warns_with_a_config_that_parses():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(6, 5)).astype(np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "wbig"], ["big"], name="mm_big"),
                           helper.make_node("MatMul", ["x", "wsmall"], ["small"], name="mm_small"),
                           helper.make_node("Add", ["big", "small"], ["y"], name="residual")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
                          [numpy_helper.from_array(w * 100, "wbig"), numpy_helper.from_array(w * 0.1, "wsmall")])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    calib = {"x": rng.normal(size=(20, 6)).astype(np.float32)}
    q = qgraph.quantize(proto, calib)
    mixed = [w for w in q.report.warnings if w.kind == "mixed-ranges"]
    assert len(mixed) == 1 and mixed[0].node == "residual" and mixed[0].inputs == ("small",)
    suggested = json.loads(re.search(r'(\{"nodes": .*\}\}\}) in the config', mixed[0].message).group(1))
    fixed = qgraph.quantize(proto, calib, config=suggested)
    assert "mixed-ranges" not in kinds(fixed.report)  # 16 bits keep ~65 steps of 'small'
    assert next(r for r in fixed.report.layers if r["node"] == "residual")["output"]["dtype"] == "int16"


def test_declared_output_shape_that_the_model_does_not_return():
    rng = np.random.default_rng(0)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
                           helper.make_node("Unsqueeze", ["m", "ax"], ["y"], name="unsq")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "seqlen"])],
                          [numpy_helper.from_array(rng.normal(size=(6, 5)).astype(np.float32), "w"),
                           numpy_helper.from_array(np.array([0], np.int64), "ax")])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    q = qgraph.quantize(proto, {"x": rng.normal(size=(20, 6)).astype(np.float32)})
    shape = [w for w in q.report.warnings if w.kind == "output-shape"]
    assert len(shape) == 1 and shape[0].tensor == "y"
    assert "[1, seqlen]" in shape[0].message and "[1, 1, 5]" in shape[0].message


def test_layer_checks_flag_zero_db_and_a_drop_below_the_median():
    rows = [{"node": f"n{i}", "op": "Conv", "output": {"tensor": f"t{i}"}, "sqnr_db": db}
            for i, db in enumerate([40.0, 38.0, 41.0, 15.0, -2.0, "inf", 39.0, "-inf"])]
    found = check_layers(rows)
    assert [(w.kind, w.node, w.tensor) for w in found] == [("sqnr-drop", "n3", "t3"), ("low-sqnr", "n4", "t4"),
                                                           ("low-sqnr", "n7", "t7")]
    assert "-2.0 dB" in found[1].message and "all zero in float" in found[2].message
    assert "25.0 dB under the median" in found[0].message and '{"exclude": ["n3"]}' in found[0].message


# -- calibration data -----------------------------------------------------------------------------
def test_all_zero_calibration_warns_and_held_out_data_tells_the_truth(digits_test):
    x, labels = digits_test
    zeros = {"input": np.zeros((32, 1, 8, 8), np.float32)}
    q = qgraph.quantize(DIGITS, zeros, eval={"input": x[:64], "labels": labels[:64]})
    k = kinds(q.report)
    assert "constant-input" in k and "few-samples" not in k
    first = q.report.warnings[k.index("constant-input")]
    assert first.tensor == "input" and "all zero" in first.message
    assert q.report.summary["measured_on"] == "on 64 held-out samples from eval data"
    m = q.report.outputs["logits"]
    assert m["sqnr_db"] < 10 and m["accuracy_quantized"] < m["accuracy_float"] - 0.2  # in-sample: ~45 dB, 100%
    low = q.report.warnings[k.index("low-output")]  # the headline itself, first among the warnings
    assert k[0] == "low-output" and low.tensor == "logits"
    assert low.message.startswith("output 'logits' is at ") and "on 64 held-out samples" in low.message


def test_a_good_output_gets_no_low_output_warning():
    q = qgraph.quantize(DIGITS, CALIB)
    assert "low-output" not in kinds(q.report) and q.report.outputs["logits"]["sqnr_db"] > 30


def test_constant_calibrated_range_warns():
    """A Relu after a MatMul whose results are all negative on the calibration data: its
    range is [0, 0] and its scale a guess."""
    rng = np.random.default_rng(0)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "wneg"], ["m"], name="mm_dead"),
                           helper.make_node("Relu", ["m"], ["dead"], name="relu_dead"),
                           helper.make_node("MatMul", ["x", "w"], ["live"], name="mm_live"),
                           helper.make_node("Add", ["dead", "live"], ["y"], name="add")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
                          [numpy_helper.from_array(-np.abs(rng.normal(size=(6, 5))).astype(np.float32), "wneg"),
                           numpy_helper.from_array(rng.normal(size=(6, 5)).astype(np.float32), "w")])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    q = qgraph.quantize(proto, {"x": rng.uniform(0.1, 1, size=(20, 6)).astype(np.float32)})
    const = [w for w in q.report.warnings if w.kind == "constant-range"]
    assert [w.tensor for w in const] == ["dead"], q.report.warnings
    assert "single value 0" in const[0].message


def test_single_calibration_sample_warns(digits_test):
    x, _ = digits_test
    q = qgraph.quantize(DIGITS, {"input": x[:1]})
    few = [w for w in q.report.warnings if w.kind == "few-samples"]
    assert len(few) == 1 and "1 sample:" in few[0].message
    assert q.report.summary["measured_on"] == "on calibration data (in-sample), 1 sample"


def test_exclude_that_matches_nothing_warns():
    q = qgraph.quantize(DIGITS, CALIB, config={"exclude": ["conv_2", "Softmax"]})
    unused = [w for w in q.report.warnings if w.kind == "unused-exclude"]
    assert [w.node for w in unused] == ["conv_2", "Softmax"]
    assert "did you mean 'conv2'" in unused[0].message


# -- the command line -----------------------------------------------------------------------------
def _metrics_text(line: str) -> str:
    return re.search(r"logits:? (?:quantized vs float: )?(SQNR .*?)(?: \(vs float|$)", line).group(1)


def test_compile_eval_numbers_equal_verify(tmp_path, capsys, digits_test):
    x, labels = digits_test
    data = tmp_path / "held.npz"
    np.savez(data, input=x[:48], labels=labels[:48])
    out = tmp_path / "o"
    assert main(["compile", DIGITS, "--calib", CALIB, "-o", str(out), "--eval", str(data)]) == 0
    said = capsys.readouterr()
    line = said.out.splitlines()[0]
    assert "on 48 held-out samples from held.npz" in line and "in-sample" not in line
    assert "top-1 agreement" in line and "accuracy" in line
    assert "qgraph: warning" not in said.err
    assert main(["verify", str(out), "--inputs", str(data)]) == 0
    verified = [l for l in capsys.readouterr().out.splitlines() if l.startswith("logits:")][0]
    assert _metrics_text(line) == _metrics_text(verified)

    from qgraph.api import CompiledDir
    from qgraph.verify.outputs import verify_outputs

    report = json.loads((out / "report.json").read_text())
    want = verify_outputs(CompiledDir.load(str(out)), {"input": x[:48]}, (), labels=labels[:48])["logits"]
    assert report["outputs"]["logits"] == want  # the same function, not a lookalike
    assert report["summary"]["eval"] == {"source": "held.npz", "samples": 48, "labels": True}
    md = (out / "report.md").read_text()
    assert "on 48 held-out samples from held.npz" in md and "- eval data: 48 samples from held.npz with labels" in md


def test_labels_give_accuracy(digits_test):
    x, labels = digits_test
    q = qgraph.quantize(DIGITS, CALIB, eval={"input": x[:100], "label": labels[:100]})
    m = q.report.outputs["logits"]
    from qgraph.api import run_ort

    want = float(np.mean(run_ort(q.float_model, {"input": x[:100]})["logits"].argmax(1) == labels[:100]))
    assert m["accuracy_float"] == want
    assert m["accuracy_quantized"] == float(np.mean(q.run({"input": x[:100]})["logits"].argmax(1) == labels[:100]))


def test_verify_gives_each_backends_accuracy_against_labels(tmp_path, capsys, digits_test):
    x, labels = digits_test
    np.savez(tmp_path / "held.npz", input=x[:64], labels=labels[:64])
    assert main(["compile", DIGITS, "--calib", CALIB, "-o", str(tmp_path / "q")]) == 0
    capsys.readouterr()
    assert main(["verify", str(tmp_path / "q"), "--inputs", str(tmp_path / "held.npz")]) == 0
    lines = capsys.readouterr().out.splitlines()
    q = qgraph.api.CompiledDir.load(str(tmp_path / "q"))
    for backend, label in (("ort-sim", "QDQ simulated"), ("ort", "default CPU kernels")):
        acc = float(np.mean(q.run({"input": x[:64]}, backend)["logits"].argmax(1) == labels[:64]))
        line = next(line for line in lines if label in line)
        assert line.endswith(f", accuracy {acc * 100:.2f}%"), line


def test_without_eval_the_numbers_say_in_sample(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["compile", DIGITS, "--calib", CALIB, "-o", str(out)]) == 0
    said = capsys.readouterr()
    assert "(vs float, on calibration data (in-sample), 8 samples)" in said.out
    assert said.err == ""
    report = json.loads((out / "report.json").read_text())
    assert report["warnings"] == [] and report["summary"]["eval"] is None


def test_strict_makes_warnings_errors(tmp_path, capsys, digits_test):
    x, _ = digits_test
    one = tmp_path / "one.npz"
    np.savez(one, input=x[:1])
    out = tmp_path / "o"
    assert main(["compile", DIGITS, "--calib", str(one), "-o", str(out)]) == 0
    assert "qgraph: warning: calibration used 1 sample" in capsys.readouterr().err
    assert main(["compile", DIGITS, "--calib", str(one), "-o", str(out), "--strict"]) == 1
    err = capsys.readouterr().err
    assert "qgraph: warning: calibration used 1 sample" in err and "qgraph: error: --strict: 1 warning(s)" in err
    report = json.loads((out / "report.json").read_text())  # written, to be read
    assert [w["kind"] for w in report["warnings"]] == ["few-samples"]
    assert main(["compile", DIGITS, "--calib", CALIB, "-o", str(tmp_path / "p"), "--strict"]) == 0


def test_markdown_header_float_list_and_counts_agree(tmp_path, capsys):
    out = tmp_path / "o"
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"exclude": ["conv2"]}))
    assert main(["compile", DIGITS, "--calib", CALIB, "-o", str(out), "--config", str(cfg)]) == 0
    capsys.readouterr()
    report = json.loads((out / "report.json").read_text())
    md = (out / "report.md").read_text()
    s = report["summary"]
    assert f"- model: {DIGITS}" in md and f"- qgraph: {qgraph.__version__}" in md and "- target: qdq" in md
    assert "exclude: conv2" in md and "minmax on 128 samples" in md
    assert s["float_ops"] == len(report["stayed_float"]) == 2
    assert f"{s['float_ops']} float" in md and f"## Stayed float ({s['float_ops']})" in md
    why = {r["node"]: r["reason"] for r in report["stayed_float"]}
    assert "excluded by the config" in why["conv2"] and "conv2" in why["relu2"]
    fc = next(r for r in report["layers"] if r["node"] == "fc")
    assert f"| {fc['output']['scale']:.4g} |" in md  # 4 significant digits, not 2 decimals


def test_eval_data_errors_and_labels_that_fit_nothing(tmp_path, capsys, digits_test):
    x, labels = digits_test
    with pytest.raises(qgraph.QGraphError, match="no array for model input"):
        qgraph.quantize(DIGITS, CALIB, eval={"image": x[:8]})
    with pytest.raises(qgraph.QGraphError, match="labels of shape \\[5\\] for 8 samples"):
        qgraph.quantize(DIGITS, CALIB, eval={"input": x[:8], "labels": labels[:5]})
    q = qgraph.quantize(DIGITS, CALIB, eval={"input": x[:8], "labels": np.zeros((8, 3), np.int64)})
    assert "accuracy_float" not in q.report.outputs["logits"] and kinds(q.report) == ["unused-labels"]
    bad = tmp_path / "bad.npz"
    np.savez(bad, input=x[:8])
    assert main(["compile", DIGITS, "--calib", CALIB, "-o", str(tmp_path / "o"), "--eval", str(bad) + "x"]) == 1
    assert "no such file" in capsys.readouterr().err


def test_a_lowering_fallback_reason_reaches_report_md_and_the_saved_model(tmp_path, capsys):
    """16-bit activations leave Sigmoid / HardSwish float (a Lookup table takes <= 8-bit inputs):
    the rewrite tracer's reason is in report.md and on the node of the saved integer model."""
    model = os.path.join(REPO, "golden", "models", "op_fallback.onnx")
    calib = os.path.join(REPO, "golden", "data", "op_fallback_calib.npz")
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"activation": {"dtype": "uint16"}}))
    out = tmp_path / "o"
    assert main(["compile", model, "--calib", calib, "-o", str(out), "--config", str(cfg)]) == 0
    capsys.readouterr()
    md = (out / "report.md").read_text()
    why = "lower-lookup: input 'c1_dequantized' is uint16; Lookup tables take <= 8-bit inputs"
    assert f"no lower-qdq rule fits ({why})" in md
    assert "no integer form for op Softmax" in md  # no rule at all: said so, not a tracer reason
    from qgraph.passes.lower_qdq import fallback_reasons

    saved = fallback_reasons(qgraph.load(str(out / "model.qgraph.onnx")))
    assert saved["sigmoid"] == why and set(saved) == {"sigmoid", "hardswish"}
    cfg.write_text(json.dumps({}))  # 8-bit: both tabulate, nothing to explain
    assert main(["compile", model, "--calib", calib, "-o", str(tmp_path / "p"), "--config", str(cfg)]) == 0
    assert "no lower-qdq rule fits" not in (tmp_path / "p" / "report.md").read_text()
