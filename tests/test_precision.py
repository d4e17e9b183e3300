"""Mixed precision (``qgraph.precision``, ``--precision auto``) on the golden models.

The probe's fake quantization equals QuantizeLinear / DequantizeLinear bit for bit (ties and
saturation included); the digits CNN's auto assignment puts most weight bytes at 4 bits and
keeps held-out accuracy within 0.25 points, its config reproduces the same QDQ model, and it
lowers and runs in TVM bit-exact with the reference; shared-scale classes get one width, a
range-mixing Concat loses its 8-bit forms, an unlowerable integer form is kept float, an
impossible floor is reported, not hidden.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import qgraph
from qgraph.cli.main import main
from qgraph.precision import FLOAT, W8A8, PrecisionError, assignment_config, parse_accuracy, parse_budget
from qgraph.precision.search import _Search, _unlowerable, _insert, cost
from qgraph.precision.sensitivity import _fake_quantize
from qgraph.precision.units import find_units
from qgraph.quant.params import QuantParams, dequantize, quantize
from qgraph.verify.data import read_feeds
from qgraph.verify.metrics import channel_nsr, channel_sqnr_db
from tests.conftest import REPO

DIGITS = os.path.join(REPO, "golden", "models", "digits_cnn.onnx")
CALIB = os.path.join(REPO, "golden", "data", "digits_calib.npz")
TEST = os.path.join(REPO, "golden", "data", "digits_test.npz")
CONCAT = os.path.join(REPO, "golden", "models", "op_concat.onnx")
CONCAT_CALIB = os.path.join(REPO, "golden", "data", "op_concat_calib.npz")


@pytest.fixture(scope="module")
def digits_auto():
    return qgraph.quantize(DIGITS, CALIB, precision="auto", accuracy="top1>=0.998", report=True,
                           precision_options={"cache": False})


def test_fake_quantize_is_quantize_dequantize_bit_for_bit():
    # x / scale lands on .5 ties (round half to even) and beyond both ends (saturation)
    p = QuantParams(np.float32(0.25), 3, "uint8")
    x = np.array([[-1.0, -0.625, -0.375, 0.125, 0.375, 0.625, 1.1, 62.0, 70.0, 1e9]], np.float32)
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"], name="id")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 10])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])])
    model = qgraph.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    node = next(iter(model.graph))
    _fake_quantize(model.graph, node, node.outputs[0], p, 17)
    from qgraph.ort import run_ort

    got = run_ort(model, {"x": x})["y"]
    want = dequantize(quantize(x, p), p)
    np.testing.assert_array_equal(got, want)
    assert [o.name for o in model.graph.outputs] == ["y"]  # the graph output keeps its name


def test_channel_metric_sees_a_small_channel_that_whole_tensor_sqnr_hides():
    ref = np.zeros((4, 2, 10), np.float32)
    ref[:, 0] = 300.0  # boxes in pixels
    ref[:, 1] = 0.3    # scores
    test = ref.copy()
    test[:, 1] = 0.0   # the scores lost
    from qgraph.verify.metrics import sqnr_db

    assert sqnr_db(ref, test) > 59  # the whole tensor looks fine
    assert channel_nsr(ref, test) == pytest.approx(0.5)  # one of two channels lost
    assert channel_sqnr_db(ref, test) == pytest.approx(3.0103, abs=1e-3)
    assert channel_nsr(ref, ref) == 0.0 and math.isinf(channel_sqnr_db(ref, ref))
    rows = np.transpose(ref, (0, 2, 1))  # a YOLOX head: [N, anchors, columns], the columns the channels
    assert channel_nsr(rows, np.transpose(test, (0, 2, 1))) == pytest.approx(0.5)


def test_parse_floor_and_budget():
    assert parse_accuracy("top1 >= 0.998").value == 0.998 and parse_accuracy(None).metric == "auto"
    assert parse_budget("bytes=4K") == ("bytes", 4000.0) and parse_budget(None) is None
    kl = parse_accuracy("kl <= 0.02")
    assert (kl.metric, kl.value, kl.describe()) == ("kl", 0.02, "kl<=0.02")
    for bad in ("top1>0.9", "speed>=3", "top1>=2", "sqnr>=x", "kl>=0.1", "kl<=0", "kl<=-1"):
        with pytest.raises(PrecisionError):
            parse_accuracy(bad)
    with pytest.raises(PrecisionError):
        parse_budget("flops=3")


def test_digits_auto_puts_weights_at_4_bits_and_keeps_held_out_accuracy(digits_auto):
    q = digits_auto
    r = q.precision
    assert r.floor_met and r.probes > 0
    assert {u.name for u in r.units if u.weights} == {"conv1", "conv2", "conv3", "fc"}
    assert all("W4A8" not in r.candidates[u.name] for u in r.units if not u.weights)  # no weights: no W4A8
    assert all(c[-1] == FLOAT.name for c in r.candidates.values())
    s = q.report.precision
    per = s["per_layer"]
    four = sum(per[n]["weight_bytes"] for n in per if per[n].get("weight_bits") == 4)
    assert four >= 0.5 * s["weight_bytes"]
    x, labels = read_feeds(TEST, q.float_model, "test")
    name = q.float_model.graph.outputs[0].name
    from qgraph.ort import run_ort

    acc_float = np.mean(run_ort(q.float_model, x)[name].argmax(-1) == labels)
    acc_q = np.mean(q.run(x, backend="reference")[name].argmax(-1) == labels)
    assert acc_float - acc_q <= 0.0025 + 1e-9


def test_the_chosen_config_reproduces_the_model(digits_auto, tmp_path):
    from qgraph.ir.text import fingerprint

    path = tmp_path / "config.json"
    digits_auto.config.save(str(path))
    again = qgraph.quantize(DIGITS, CALIB, str(path), report=False)
    assert fingerprint(again.qdq) == fingerprint(digits_auto.qdq)
    assert fingerprint(again.integer) == fingerprint(digits_auto.integer)


def test_mixed_int4_int16_and_float_layers_run_bit_exact_in_tvm():
    pytest.importorskip("tvm")
    assignment = {"conv1": "W4A8", "relu1": "W8A16", "conv2": "W8A16", "relu2": "W8A16", "conv3": "float",
                  "relu3": "W8A8", "flatten": "W8A8", "fc": "W4A8"}
    base = qgraph.quantize(DIGITS, CALIB, report=False)
    units = find_units(base.float_model, base.qdq)
    q = qgraph.quantize(DIGITS, CALIB, assignment_config(base.config, assignment, units), report=False)
    kinds = {n.op_type for n in q.integer.graph}
    assert "QConv" in kinds and "Conv" in kinds  # integer layers and a float island
    x, _ = read_feeds(TEST, q.float_model, "test")
    x = {k: v[:16] for k, v in x.items()}
    q.build(target="cpu", batch_size=8)
    ref, tvm = q.run(x, backend="reference"), q.run(x, backend="tvm")
    for k in ref:
        np.testing.assert_array_equal(ref[k], tvm[k])


def _search_on(model, calib, damage_of):
    base = qgraph.quantize(model, calib, report=False)
    fm = base.float_model
    units = find_units(fm, base.qdq)
    cands = {u.name: [W8A8.name, "W8A16", FLOAT.name] for u in units}
    damage = {u.name: damage_of(u) for u in units}
    feeds, _ = read_feeds(calib, fm, "calib")
    from qgraph import batching
    from qgraph.ort import run_ort

    s = _Search(fm, base.config, units, cands, damage, "bops", parse_accuracy("sqnr>=10"), feeds,
                run_ort(fm, feeds), batching.model_axes(fm), False)
    return base, units, s


def test_a_shared_scale_class_gets_one_width():
    # conv_small and conv_big feed a Concat: one scale for the three tensors. Only conv_small
    # "needs" 16 bits; the tie gives its class partners 16 bits (or float) too, and the
    # config insert-qdq receives is consistent (it refuses mixed schemes in one class).
    def damage(u):
        return {"W8A8": 1.0 if u.name == "conv_small" else 1e-6, "W8A16": 1e-7, "float": 0.0}

    base, units, s = _search_on(CONCAT, CONCAT_CALIB, damage)
    classes = {u.name: u.scale_class for u in units}
    assert classes["conv_small"] == classes["conv_big"] == classes["concat"] != ""
    chosen = s.solve(damage_budget=0.01)
    wide = {n for n, f in chosen.items() if f != "W8A8"}
    assert {"conv_small", "conv_big", "concat"} <= wide
    _insert(base.float_model, assignment_config(base.config, chosen, units))  # no mixed-scheme error


def test_a_range_mixing_concat_is_not_given_8_bits(tmp_path):
    # boxes 0..320 next to scores 0..1 in one Concat (a detector head): an 8-bit output keeps
    # the scores at 0, so the search never offers the Concat an 8-bit form
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(2, 3, 1, 1)).astype(np.float32), "w")
    v = numpy_helper.from_array(rng.normal(size=(4, 3, 1, 1)).astype(np.float32), "v")
    k = numpy_helper.from_array(np.float32(160.0), "k")
    nodes = [helper.make_node("Conv", ["x", "w"], ["s0"], name="score_conv"),
             helper.make_node("Sigmoid", ["s0"], ["s"], name="score"),
             helper.make_node("Conv", ["x", "v"], ["b0"], name="box_conv"),
             helper.make_node("Sigmoid", ["b0"], ["b1"], name="box_sig"),
             helper.make_node("Mul", ["b1", "k"], ["b"], name="box_scale"),
             helper.make_node("Concat", ["b", "s"], ["y"], axis=1, name="head")]
    g = helper.make_graph(nodes, "det", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6, 8, 8])], [w, v, k])
    path = tmp_path / "det.onnx"
    import onnx

    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    calib = {"x": rng.normal(size=(32, 3, 8, 8)).astype(np.float32)}
    q = qgraph.quantize(str(path), calib, precision="auto", report=True, precision_options={"cache": False})
    r = q.precision
    assert "head" in r.range_mixing
    assert all(f in ("W8A16", "float") for f in r.candidates["head"])
    assert r.assignment["head"] in ("W8A16", "float") and r.floor_met
    y = q.run(calib, backend="reference")["y"]
    yf = q.run(calib, backend="ort-sim")["y"]
    assert np.abs(y[:, 4:] - yf[:, 4:]).max() < 0.05  # the scores survive
    from qgraph.ort import run_ort

    ref = run_ort(q.float_model, calib)["y"]
    assert channel_sqnr_db(ref, y) > 20


def test_an_integer_form_lower_qdq_refuses_is_kept_float():
    # an activation x activation MatMul over 4096 values of two 16-bit inputs can overflow int32
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("Relu", ["a"], ["ra"], name="ra"), helper.make_node("Relu", ["b"], ["rb"], name="rb"),
             helper.make_node("MatMul", ["ra", "rb"], ["y"], name="mm")]
    g = helper.make_graph(nodes, "mm", [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 2, 4096]),
                                        helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 4096, 2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 2])])
    calib = {"a": rng.random((4, 2, 4096), np.float32), "b": rng.random((4, 4096, 2), np.float32)}
    base = qgraph.quantize(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), calib, report=False)
    units = find_units(base.float_model, base.qdq)
    wide = _insert(base.float_model, assignment_config(base.config, {u.name: "W8A16" for u in units}, units))
    assert _unlowerable(wide) == "mm"
    assert _unlowerable(base.qdq) is None


def test_a_floor_only_float_meets_gives_float(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["compile", DIGITS, "--calib", CALIB, "-o", str(out), "--precision", "auto",
                 "--accuracy", "sqnr>=200"]) == 0
    said = capsys.readouterr().out
    assert "floor sqnr>=200 held" in said and "0 integer ops" in said
    report = json.loads((out / "report.json").read_text())
    assert report["precision"]["mac_fraction_8bit"] == 0.0


def test_an_unmet_floor_is_reported_and_the_most_accurate_kept(tmp_path):
    def never(float_outputs, quantized_outputs):
        return False

    q = qgraph.quantize(DIGITS, CALIB, precision="auto", accuracy=never, report=True,
                        precision_options={"cache": False})
    r = q.precision
    assert r.floor_met is False and len(r.points) >= 2 and not any(p.ok for p in r.points)
    assert r.measured["sqnr"] == max(p.metrics["sqnr"] for p in r.points)
    q.save(str(tmp_path / "o"))
    assert "**not met**" in (tmp_path / "o" / "report.md").read_text()
    page = (tmp_path / "o" / "report.html").read_text()
    assert "<h2>Precision</h2>" in page and "accuracy against cost of every assignment measured" in page


def test_budget_mode_stays_within_the_weight_bytes():
    q = qgraph.quantize(DIGITS, CALIB, precision="auto", budget="bytes=4500", report=False,
                        precision_options={"cache": False})
    r = q.precision
    assert sum(cost(u, _fmt(r.assignment[u.name]), "bytes") for u in r.units) <= 4500
    with pytest.raises(PrecisionError, match="no assignment fits"):
        qgraph.quantize(DIGITS, CALIB, precision="auto", budget="bytes=10", report=False,
                        precision_options={"cache": False})


def _fmt(name):
    from qgraph.precision import FORMATS

    return FORMATS[name]


def test_cli_precision_options_need_auto_and_parse_early(tmp_path, capsys):
    out = str(tmp_path / "o")
    assert main(["compile", DIGITS, "--calib", CALIB, "-o", out, "--accuracy", "top1>=0.99"]) == 1
    assert "--accuracy applies to --precision auto" in capsys.readouterr().err
    assert main(["compile", DIGITS, "--calib", CALIB, "-o", out, "--precision", "auto", "--accuracy", "fast"]) == 1
    assert "write METRIC>=VALUE" in capsys.readouterr().err
    assert not os.path.exists(out)


def test_sensitivity_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("QGRAPH_CACHE_DIR", str(tmp_path))
    first = qgraph.quantize(DIGITS, CALIB, precision="auto", report=False).precision
    again = qgraph.quantize(DIGITS, CALIB, precision="auto", report=False).precision
    assert first.probes > 0 and again.probes == 0 and again.cached == first.probes
    assert again.damage == first.damage and again.assignment == first.assignment


@pytest.mark.slow
def test_a_trained_detector_keeps_its_detections_with_auto_precision():
    """The ddddocr YOLOX with its box decoding as a Concat head (pixel boxes next to 0..1 scores):
    uniform int8 loses detections; --precision auto, with no hand-written exclude, keeps recall
    >= 0.9 at IoU 0.5 against float on held-out pages."""
    from qgraph.testing import detect

    model = detect.decoded_model()
    calib = {"images": detect.render_pages(32, seed=1)}
    x = detect.render_pages(16, seed=2)
    ref = detect.decode(detect.run_float(x, model))
    q = qgraph.quantize(model, calib, precision="auto", report=False, precision_options={"cache": False})
    r = q.precision
    assert detect.DECODE_CONCAT in r.range_mixing and r.assignment[detect.DECODE_CONCAT] != "W8A8"
    got = detect.decode(q.run({"images": x}, backend="reference")["output"])
    assert detect.recall(ref, got) >= 0.9
    uniform = qgraph.quantize(model, calib, report=False)
    lost = detect.decode(uniform.run({"images": x}, backend="reference")["output"])
    assert detect.recall(ref, lost) < 0.9  # what the search fixed


def test_a_16_bit_tensor_is_not_clipped_by_an_8_bit_calibration_method():
    # percentile clips outliers for 8-bit resolution; at 16 bits the whole observed range fits
    q8 = qgraph.quantize(DIGITS, CALIB, method="percentile", method_options={"percentile": 99.0}, report=False)
    q16 = qgraph.quantize(DIGITS, CALIB, {"activation": {"dtype": "uint16"}}, method="percentile",
                          method_options={"percentile": 99.0}, report=False)
    cal = q8.float_model.calibration
    assert cal.observed  # the clipped tensors keep what was seen
    inputs = {v.name for v in q8.float_model.graph.inputs}
    name = max((k for k in cal.observed if k not in inputs and cal.tensors[k].hi > 0),
               key=lambda k: cal.observed[k].hi / cal.tensors[k].hi)
    seen = cal.observed[name]
    assert seen.hi > 1.05 * cal.tensors[name].hi
    from qgraph.ir.l2 import QUANTIZE, read_qdq

    def top(q):
        node = next(n for n in q.qdq.graph if n.op in QUANTIZE and n.inputs[0].name == name)
        p = read_qdq(node)
        return float(p.scale) * (p.qmax - float(p.zero_point))

    assert top(q8) < seen.hi * 0.999 and top(q16) >= seen.hi * 0.999
    from qgraph.calib.ranges import RangeMap

    again = RangeMap.from_json(json.loads(json.dumps(cal.to_json())))
    assert again.observed[name].hi == seen.hi


def _residual_model(tmp_path):
    """x -> conv a -> relu -> (conv b -> relu) + relu -> conv c -> y: the block's input is
    read after conv b, so no cut falls inside the block."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.normal(size=(4, 4, 3, 3)).astype(np.float32) * 0.3, n)
             for n in ("wa", "wb", "wc")]
    nodes = [helper.make_node("Conv", ["x", "wa"], ["a"], pads=[1, 1, 1, 1], name="conv_a"),
             helper.make_node("Relu", ["a"], ["ra"], name="relu_a"),
             helper.make_node("Conv", ["ra", "wb"], ["b"], pads=[1, 1, 1, 1], name="conv_b"),
             helper.make_node("Relu", ["b"], ["rb"], name="relu_b"),
             helper.make_node("Add", ["rb", "ra"], ["s"], name="add"),
             helper.make_node("Conv", ["s", "wc"], ["y"], pads=[1, 1, 1, 1], name="conv_c")]
    g = helper.make_graph(nodes, "res", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])], inits)
    path = tmp_path / "res.onnx"
    import onnx

    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return str(path), {"x": rng.normal(size=(16, 4, 8, 8)).astype(np.float32)}


def test_single_value_cuts_skip_the_inside_of_a_residual_block(tmp_path):
    from qgraph.precision.sensitivity import single_value_cuts

    path, _ = _residual_model(tmp_path)
    cuts = [name for _, name in single_value_cuts(qgraph.load(path))]
    assert cuts == ["a", "ra", "s"]  # not b / rb (ra is read by the Add), not y (an output)


def test_suffix_probes_measure_what_whole_model_probes_measure(tmp_path, monkeypatch):
    # the same sweep with cuts and without: damages agree closely (the suffix's float ops are
    # the whole model's, fed the same activations), and a probe changing nothing measures 0
    from qgraph.precision import sensitivity as S
    from qgraph.precision.units import Effect

    path, calib = _residual_model(tmp_path)
    with_cuts = qgraph.quantize(path, calib, precision="auto", report=False,
                                precision_options={"cache": False}).precision
    monkeypatch.setattr(S, "MAX_CUTS", 0)
    whole = qgraph.quantize(path, calib, precision="auto", report=False,
                            precision_options={"cache": False}).precision
    assert with_cuts.damage.keys() == whole.damage.keys()
    for unit, d in whole.damage.items():
        for f, v in d.items():
            assert with_cuts.damage[unit][f] == pytest.approx(v, rel=1e-3, abs=1e-9), (unit, f)
    assert any(v > 0 for d in whole.damage.values() for v in d.values())

    fm = qgraph.quantize(path, calib, report=False).float_model
    from qgraph.analysis.shapes import sample_shapes
    from qgraph import batching
    from qgraph.onnx import to_proto

    shapes = sample_shapes(fm, calib, batching.model_axes(fm))
    monkeypatch.setattr(S, "MAX_CUTS", 8)
    cuts = S.make_cuts(fm, calib, shapes)
    assert cuts and all(c.position < len(list(fm.graph)) for c in cuts)
    shared = S.Shared(to_proto(fm).SerializeToString(), calib, {}, {}, cuts=cuts,
                      positions={n.name: i for i, n in enumerate(fm.graph) if n.name})
    unit = next(u for u in find_units(fm, qgraph.quantize(path, calib, report=False).qdq) if u.name == "conv_c")
    task = S.Task(unit, "none", Effect({}, {}))
    assert S.cut_for(shared, task) is not None
    assert all(v == 0.0 for v in S.evaluate(shared, task).values())


def test_softmax_kl_reads_logits_and_probabilities():
    from qgraph.verify.metrics import softmax_kl

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(32, 10))
    assert softmax_kl(logits, logits) == 0.0
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    q_logits = logits + rng.normal(scale=0.3, size=logits.shape)
    q = np.exp(q_logits) / np.exp(q_logits).sum(axis=1, keepdims=True)
    want = float(np.mean(np.sum(p * np.log(p / q), axis=1)))
    assert softmax_kl(logits, q_logits) == pytest.approx(want, rel=1e-6)  # logits: softmax first
    assert softmax_kl(p, q) == pytest.approx(want, rel=1e-6)  # rows already distributions: as they are
    assert softmax_kl(logits, np.full_like(logits, np.nan)) == math.inf


def test_a_kl_ceiling_holds_on_digits():
    q = qgraph.quantize(DIGITS, CALIB, precision="auto", accuracy="kl<=0.002", report=False,
                        show_progress=False, precision_options={"cache": False})
    r = q.precision
    assert r.floor_met and r.measured["kl"] <= 0.002
    assert r.to_json()["floor"] == "kl<=0.002"
