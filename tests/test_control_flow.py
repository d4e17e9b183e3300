"""Models with control flow (If / Loop / Scan) quantize around it.

The control-flow nodes stay float: their inputs are dequantized, their outputs requantized
for the quantized ops that read them, their bodies untouched; the reference interpreter runs
them (bodies in nested interpreters), ONNX Runtime runs the QDQ export as it is, and
``--target cpu`` says exactly why it cannot build them. An If with a constant condition is
folded away by ``canonicalize`` and then builds like any model.

The models are built here with ``onnx.helper``, deterministic, with a symbolic batch dim so
``verify`` runs 32 samples in one batch.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from qgraph.api import CompiledDir, quantize
from qgraph.cli.main import main
from qgraph.ir import ops
from qgraph.onnx import from_proto, to_proto
from qgraph.reference import Interpreter
from qgraph.verify.outputs import verify_outputs
from tests.conftest import run_pipeline

SAMPLES = 32


# -- models ---------------------------------------------------------------------------------------
def _model(nodes, name, x_shape, y_shape, inits, check: bool = True) -> onnx.ModelProto:
    g = h.make_graph(nodes, name, [h.make_tensor_value_info("x", T.FLOAT, x_shape)],
                     [h.make_tensor_value_info("y", T.FLOAT, y_shape)], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    if check:
        onnx.checker.check_model(m, full_check=True)
    return m


def if_model() -> onnx.ModelProto:
    """Conv -> Relu -> If(ReduceSum(x) > 0: r * 2 | Sigmoid(r)) -> Conv -> Relu."""
    rng = np.random.default_rng(0)
    then_g = h.make_graph([h.make_node("Mul", ["r", "two"], ["t_out"])], "then", [],
                          [h.make_tensor_value_info("t_out", T.FLOAT, None)])
    else_g = h.make_graph([h.make_node("Sigmoid", ["r"], ["e_out"])], "else", [],
                          [h.make_tensor_value_info("e_out", T.FLOAT, None)])
    nodes = [
        h.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv1"),
        h.make_node("Relu", ["c"], ["r"], name="relu1"),
        h.make_node("ReduceSum", ["x"], ["s"], keepdims=0, name="sum"),
        h.make_node("Greater", ["s", "zero"], ["cond"], name="gt"),
        h.make_node("If", ["cond"], ["y_if"], then_branch=then_g, else_branch=else_g, name="branch"),
        h.make_node("Conv", ["y_if", "w2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        h.make_node("Relu", ["c2"], ["y"], name="relu2"),
    ]
    return _model(nodes, "ifnet", ["N", 3, 8, 8], ["N", 4, 8, 8], [
        nh.from_array(rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32), "w"),
        nh.from_array(rng.normal(0, 0.1, (4,)).astype(np.float32), "b"),
        nh.from_array(rng.normal(0, 0.3, (4, 4, 3, 3)).astype(np.float32), "w2"),
        nh.from_array(np.float32(0), "zero"), nh.from_array(np.float32(2), "two")])


def loop_model() -> onnx.ModelProto:
    """Conv -> Relu -> Loop (3 trips, no cond: v = v * 0.5 + r * s, reading outer r, s) -> Conv -> Relu."""
    rng = np.random.default_rng(3)
    body = h.make_graph(
        [h.make_node("Mul", ["v_in", "half"], ["v_half"]),
         h.make_node("Mul", ["r", "s"], ["r_s"]),
         h.make_node("Add", ["v_half", "r_s"], ["v_out"]),
         h.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body",
        [h.make_tensor_value_info("i", T.INT64, []), h.make_tensor_value_info("cond_in", T.BOOL, []),
         h.make_tensor_value_info("v_in", T.FLOAT, None)],
        [h.make_tensor_value_info("cond_out", T.BOOL, []), h.make_tensor_value_info("v_out", T.FLOAT, None)],
        [nh.from_array(np.float32(0.5), "half")])
    nodes = [h.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv1"),
             h.make_node("Relu", ["c"], ["r"], name="relu1"),
             h.make_node("Loop", ["trips", "", "r"], ["v"], body=body, name="loop"),
             h.make_node("Conv", ["v", "w2"], ["c2"], name="conv2"),
             h.make_node("Relu", ["c2"], ["y"], name="relu2")]
    return _model(nodes, "loopnet", ["N", 3, 8, 8], ["N", 4, 8, 8], [
        nh.from_array(rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32), "w"),
        nh.from_array(rng.normal(0, 0.3, (4, 4, 1, 1)).astype(np.float32), "w2"),
        nh.from_array(np.int64(3), "trips"), nh.from_array(np.float32(0.3), "s")])


def scan_model() -> onnx.ModelProto:
    """MatMul -> Scan over time on axis 1 (s = 0.5 s + h_t, every state out on axis 1) -> MatMul."""
    rng = np.random.default_rng(4)
    body = h.make_graph(
        [h.make_node("Mul", ["s_in", "decay"], ["s_dec"]),
         h.make_node("Add", ["s_dec", "h_t"], ["s_out"]),
         h.make_node("Identity", ["s_out"], ["seq_out"])],
        "body",
        [h.make_tensor_value_info("s_in", T.FLOAT, None), h.make_tensor_value_info("h_t", T.FLOAT, None)],
        [h.make_tensor_value_info("s_out", T.FLOAT, None), h.make_tensor_value_info("seq_out", T.FLOAT, None)])
    nodes = [h.make_node("MatMul", ["x", "w"], ["hh"], name="proj"),
             h.make_node("ReduceMean", ["hh"], ["s0"], axes=[1], keepdims=0, name="init_state"),
             h.make_node("Scan", ["s0", "hh"], ["s_last", "seq"], body=body, num_scan_inputs=1,
                         scan_input_axes=[1], scan_output_axes=[1], name="scan"),
             h.make_node("MatMul", ["seq", "w2"], ["y"], name="head")]
    return _model(nodes, "scannet", ["N", 7, 6], ["N", 7, 3], [
        nh.from_array(rng.normal(0, 0.4, (6, 5)).astype(np.float32), "w"),
        nh.from_array(rng.normal(0, 0.4, (5, 3)).astype(np.float32), "w2"),
        nh.from_array(np.float32(0.5), "decay")])


def const_if_model(flag: bool, computed: bool) -> onnx.ModelProto:
    """Conv -> Relu -> If -> If -> Conv, both Ifs on one constant condition (an initializer, or
    Greater of two constants): then ``v * k + bias`` (a branch initializer), else ``Sigmoid(v)``."""
    rng = np.random.default_rng(2)

    def branches(src: str) -> dict:
        then_g = h.make_graph([h.make_node("Mul", [src, "k"], [f"{src}_scaled"]),
                               h.make_node("Add", [f"{src}_scaled", f"{src}_bias"], [f"{src}_then"])], "then", [],
                              [h.make_tensor_value_info(f"{src}_then", T.FLOAT, None)],
                              [nh.from_array(np.float32(0.25), f"{src}_bias")])
        else_g = h.make_graph([h.make_node("Sigmoid", [src], [f"{src}_else"])], "else", [],
                              [h.make_tensor_value_info(f"{src}_else", T.FLOAT, None)])
        return {"then_branch": then_g, "else_branch": else_g}

    nodes = [h.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv1"),
             h.make_node("Relu", ["c"], ["r"], name="relu1")]
    inits = [nh.from_array(rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32), "w"),
             nh.from_array(np.float32(0.5), "k"),
             nh.from_array(rng.normal(0, 0.3, (4, 4, 1, 1)).astype(np.float32), "w2")]
    if computed:
        nodes.append(h.make_node("Greater", ["a", "zero"], ["cond"], name="gt"))
        inits += [nh.from_array(np.float32(1 if flag else -1), "a"), nh.from_array(np.float32(0), "zero")]
    else:
        inits.append(nh.from_array(np.array(flag), "cond"))
    nodes += [h.make_node("If", ["cond"], ["y1"], name="branch1", **branches("r")),
              h.make_node("If", ["cond"], ["y2"], name="branch2", **branches("y1")),
              h.make_node("Conv", ["y2", "w2"], ["y"], name="conv2")]
    return _model(nodes, "constif", ["N", 3, 8, 8], ["N", 4, 8, 8], inits)


def _inputs(shape, seed) -> np.ndarray:
    return (np.random.default_rng(seed).normal(0, 1, (SAMPLES, *shape)) + 0.05).astype(np.float32)


def _ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


CASES = {"if": (if_model, (3, 8, 8), "If"), "loop": (loop_model, (3, 8, 8), "Loop"),
         "scan": (scan_model, (7, 6), "Scan")}


@pytest.fixture(scope="module", params=sorted(CASES))
def compiled(request, tmp_path_factory):
    """(name, model file, inputs file, output folder) after `qgraph compile --target qdq`."""
    build, shape, _ = CASES[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    model, data, out = folder / "model.onnx", folder / "x.npz", folder / "out"
    onnx.save(build(), model)
    np.savez(data, x=_inputs(shape, 1))
    assert main(["compile", str(model), "--calib", str(data), "-o", str(out), "--target", "qdq"]) == 0
    return request.param, model, data, out


# -- quantized around the control flow -------------------------------------------------------------
def test_control_flow_stays_float(compiled):
    name, _, _, out = compiled
    op = getattr(ops, CASES[name][2])
    c = CompiledDir.load(str(out))
    for level in (c.qdq, c.integer):
        node = next(n for n in level.graph if n.op is op)
        bodies = [n for sub in node.subgraphs() for n in sub.all_nodes()]
        assert bodies and all(n.op.domain == "" and n.op not in (ops.QuantizeLinear, ops.DequantizeLinear)
                              for n in bodies)
        assert all(v.dtype is None or v.dtype.name == "FLOAT" for v in node.outputs if v is not None)
    # the rest is quantized: two integer linear ops around the control flow
    assert sum(n.op.domain == "qgraph" and n.op.op_type in ("QConv", "QMatMul") for n in c.integer.graph) == 2


def test_reference_close_to_float_and_ort_agrees(compiled):
    name, _, data, out = compiled
    c = CompiledDir.load(str(out))
    with np.load(data) as z:
        feeds = {"x": z["x"]}
    result = verify_outputs(c, feeds, ("ort-sim",))["y"]
    assert result["sqnr_db"] > 30, result
    assert result["ort-sim"]["max_lsb"] <= 1, result  # y is quantized: the QDQ export in ORT, within 1 LSB


def test_verify_runs_32_samples(compiled, capsys):
    _, _, data, out = compiled
    capsys.readouterr()
    assert main(["verify", str(out), "--inputs", str(data)]) == 0
    said = capsys.readouterr().out
    assert f"{SAMPLES} samples" in said and "SQNR" in said


def test_float_model_reference_equals_ort(compiled):
    """The interpreter's float semantics of the control flow itself, on the float model."""
    name, model, data, _ = compiled
    with np.load(data) as z:
        x = z["x"]
    y = Interpreter(from_proto(onnx.load(model))).run({"x": x})["y"]
    np.testing.assert_allclose(y, _ort(onnx.load(model), x), rtol=1e-5, atol=1e-5)


def test_target_cpu_says_why(compiled, capfd):
    import gc

    pytest.importorskip("tvm")
    name, model, data, out = compiled
    op = CASES[name][2]
    capfd.readouterr()
    assert main(["compile", str(model), "--calib", str(data), "-o", str(out.parent / "cpu"), "--target", "cpu"]) == 1
    gc.collect()  # TVM's BlockBuilder, if the error left it open, warns on fd 2 when freed
    err = capfd.readouterr().err
    assert len(err.splitlines()) == 1, err
    node = {"if": "branch", "loop": "loop", "scan": "scan"}[name]
    assert f"qgraph: error: {op} node '{node}': cannot lower to TVM" in err
    assert "control flow stays float" in err and "TVM lowering of If / Loop / Scan is not built" in err
    assert "--target qdq" in err and "internal error" not in err


def test_exclude_names_control_flow(tmp_path):
    """Naming the control-flow node (or its op type) in ``exclude`` is no error and changes nothing."""
    x = _inputs((3, 8, 8), 1)
    base = quantize(loop_model(), [{"x": x}], report=False, show_progress=False)
    excluded = quantize(loop_model(), [{"x": x}], {"exclude": ["loop", "If"]}, report=False, show_progress=False)
    assert np.array_equal(base.run({"x": x})["y"], excluded.run({"x": x})["y"])


# -- constant conditions are folded -----------------------------------------------------------------
@pytest.mark.parametrize("flag", [True, False])
@pytest.mark.parametrize("computed", [False, True])
def test_canonicalize_folds_constant_if(flag, computed):
    proto = const_if_model(flag, computed)
    model = from_proto(proto)
    run_pipeline(model, "canonicalize")
    assert not any(n.op is ops.If for n in model.graph.all_nodes())
    names = [v.name for v in model.graph.values()]
    assert len(names) == len(set(names))
    out = to_proto(model)
    onnx.checker.check_model(out, full_check=True)
    x = _inputs((3, 8, 8), 7)[:4]
    np.testing.assert_array_equal(_ort(out, x), _ort(proto, x))
    np.testing.assert_allclose(Interpreter(model).run({"x": x})["y"], _ort(proto, x), rtol=1e-5, atol=1e-6)


def test_fold_constant_if_keeps_graph_output_and_outer_value():
    """A branch returning an outer value as the graph output: the output keeps its name.

    (onnx's checker and ONNX Runtime refuse a subgraph output defined outside it, qgraph reads
    it; folded, the model is valid.)"""
    then_g = h.make_graph([], "then", [], [h.make_tensor_value_info("r", T.FLOAT, None)])
    else_g = h.make_graph([h.make_node("Neg", ["r"], ["n"])], "else", [],
                          [h.make_tensor_value_info("n", T.FLOAT, None)])
    proto = _model([h.make_node("Relu", ["x"], ["r"]),
                    h.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g)],
                   "g", ["N", 3], ["N", 3], [nh.from_array(np.array(True), "cond")], check=False)
    model = from_proto(proto)
    run_pipeline(model, "fold-constant-if")
    assert [v.name for v in model.graph.outputs] == ["y"]
    assert not any(n.op is ops.If for n in model.graph)
    x = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    out = to_proto(model)
    onnx.checker.check_model(out, full_check=True)
    np.testing.assert_array_equal(_ort(out, x), np.maximum(x, 0))


def test_fold_constant_if_inside_a_loop_body():
    inner_then = h.make_graph([h.make_node("Add", ["v_in", "one"], ["t"])], "t", [],
                              [h.make_tensor_value_info("t", T.FLOAT, None)])
    inner_else = h.make_graph([h.make_node("Sub", ["v_in", "one"], ["e"])], "e", [],
                              [h.make_tensor_value_info("e", T.FLOAT, None)])
    body = h.make_graph(
        [h.make_node("If", ["flag"], ["v_out"], then_branch=inner_then, else_branch=inner_else),
         h.make_node("Identity", ["cond_in"], ["cond_out"])], "body",
        [h.make_tensor_value_info("i", T.INT64, []), h.make_tensor_value_info("cond_in", T.BOOL, []),
         h.make_tensor_value_info("v_in", T.FLOAT, None)],
        [h.make_tensor_value_info("cond_out", T.BOOL, []), h.make_tensor_value_info("v_out", T.FLOAT, None)])
    proto = _model([h.make_node("Loop", ["trips", "", "x"], ["y"], body=body, name="loop")], "g", ["N", 3], ["N", 3],
                   [nh.from_array(np.int64(4), "trips"), nh.from_array(np.array(False), "flag"),
                    nh.from_array(np.float32(1), "one")])
    model = from_proto(proto)
    run_pipeline(model, "canonicalize")
    assert not any(n.op is ops.If for n in model.graph.all_nodes())
    x = np.ones((2, 3), np.float32)
    np.testing.assert_array_equal(Interpreter(model).run({"x": x})["y"], _ort(proto, x))
    np.testing.assert_array_equal(_ort(to_proto(model), x), x - 4)


def test_constant_if_model_builds_for_cpu_and_equals_reference(tmp_path, capsys):
    pytest.importorskip("tvm")
    model, data, out = tmp_path / "m.onnx", tmp_path / "x.npz", tmp_path / "out"
    onnx.save(const_if_model(True, True), model)
    np.savez(data, x=_inputs((3, 8, 8), 1))
    assert main(["compile", str(model), "--calib", str(data), "-o", str(out), "--target", "cpu",
                 "--batch-size", str(SAMPLES)]) == 0
    assert json.loads((out / "tvm" / "model.json").read_text())["target"] == "cpu"
    capsys.readouterr()
    assert main(["verify", str(out), "--inputs", str(data)]) == 0
    said = capsys.readouterr().out
    assert "reference vs TVM cpu: max 0 LSB, 100.00% exact" in said, said


# -- the interpreter's float path on onnx's own control-flow cases ---------------------------------
def _conformance_cases():
    from qgraph.testing.conformance import cases

    # not test_if_opt: onnx's own evaluator wraps its Optional's sequence in one list too many;
    # not test_scan_sum: Scan-8 (batch axis, sequence_lens) is refused, saying so
    wanted = ("test_if", "test_if_seq", "test_loop11", "test_loop13_seq", "test_loop16_seq_none", "test_scan9_sum",
              "test_range_float_type_positive_delta_expanded")
    return [c for c in cases() if c.name in wanted]


@pytest.mark.parametrize("case", _conformance_cases(), ids=lambda c: c.name)
def test_interpreter_on_onnx_control_flow_cases(case):
    from qgraph.testing.conformance import _feeds

    interp = Interpreter(from_proto(case.model))
    for inputs, expected in case.data_sets:
        got = interp.run(_feeds(case.model, list(inputs)))
        for o, want in zip(case.model.graph.output, expected):
            y = got[o.name]
            if isinstance(want, list):
                assert len(y) == len(want) and all(np.array_equal(a, b) for a, b in zip(y, want)), o.name
            elif want is None:
                assert y is None
            else:
                assert np.asarray(y).dtype == want.dtype and np.asarray(y).shape == want.shape, o.name
                np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)


def test_if_on_a_static_shape_is_inlined_by_the_tvm_lowering():
    """``If(Shape(x)[0] == 1)`` with a symbolic batch stays an If through quantization; the
    TVM build for batch 1 knows the condition and lowers the branch taken."""
    pytest.importorskip("tvm")
    rng = np.random.default_rng(9)
    then_g = h.make_graph([h.make_node("Mul", ["r", "two"], ["r_twice"])], "then", [],
                          [h.make_tensor_value_info("r_twice", T.FLOAT, None)])
    else_g = h.make_graph([h.make_node("Neg", ["r"], ["r_neg"])], "else", [],
                          [h.make_tensor_value_info("r_neg", T.FLOAT, None)])
    proto = _model([h.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv1"),
                    h.make_node("Relu", ["c"], ["r"], name="relu1"),
                    h.make_node("Shape", ["x"], ["shape"], name="shape"),
                    h.make_node("Gather", ["shape", "zero"], ["batch"], axis=0, name="batch"),
                    h.make_node("Equal", ["batch", "one"], ["single"], name="single"),
                    h.make_node("If", ["single"], ["y_if"], then_branch=then_g, else_branch=else_g, name="branch"),
                    h.make_node("Conv", ["y_if", "w2"], ["y"], name="conv2")],
                   "shapeif", ["N", 3, 8, 8], ["N", 4, 8, 8],
                   [nh.from_array(rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32), "w"),
                    nh.from_array(rng.normal(0, 0.3, (4, 4, 1, 1)).astype(np.float32), "w2"),
                    nh.from_array(np.float32(2), "two"), nh.from_array(np.int64(0), "zero"),
                    nh.from_array(np.int64(1), "one")])
    x = _inputs((3, 8, 8), 3)
    q = quantize(proto, [{"x": x[i:i + 1]} for i in range(8)], report=False, show_progress=False)
    assert any(n.op is ops.If for n in q.integer.graph)
    q.build("cpu", batch_size=1)
    for i in range(3):
        one = {"x": x[i:i + 1]}
        np.testing.assert_array_equal(q.run(one, "tvm")["y"], q.run(one, "reference")["y"])


def test_fold_constant_if_folds_nested_ifs_in_one_run():
    inner_then = h.make_graph([h.make_node("Neg", ["r"], ["r_neg"])], "it", [],
                              [h.make_tensor_value_info("r_neg", T.FLOAT, None)])
    inner_else = h.make_graph([h.make_node("Abs", ["r"], ["r_abs"])], "ie", [],
                              [h.make_tensor_value_info("r_abs", T.FLOAT, None)])
    outer_then = h.make_graph([h.make_node("If", ["no"], ["inner"], then_branch=inner_then, else_branch=inner_else)],
                              "ot", [], [h.make_tensor_value_info("inner", T.FLOAT, None)])
    outer_else = h.make_graph([h.make_node("Identity", ["r"], ["r_id"])], "oe", [],
                              [h.make_tensor_value_info("r_id", T.FLOAT, None)])
    proto = _model([h.make_node("Sin", ["x"], ["r"]),
                    h.make_node("If", ["yes"], ["y"], then_branch=outer_then, else_branch=outer_else)],
                   "g", ["N", 3], ["N", 3],
                   [nh.from_array(np.array(True), "yes"), nh.from_array(np.array(False), "no")])
    model = from_proto(proto)
    run_pipeline(model, "fold-constant-if")
    assert not any(n.op is ops.If for n in model.graph.all_nodes())
    assert [n.op for n in model.graph] == [ops.op("Sin"), ops.op("Abs")]
    x = np.linspace(-3, 3, 6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(_ort(to_proto(model), x), _ort(proto, x))
