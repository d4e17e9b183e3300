"""lower-qdq: L2 QDQ graphs (ONNX Runtime's quantizer, hand-built) -> L3 integer ops.

Numerics: the L3 model in the reference interpreter against the L2 model in ONNX Runtime
with ``session.disable_quant_qdq`` (the float simulation of QDQ): every QuantizeLinear
output within 1 LSB, every float output within one step of its scale.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import qgraph
from qgraph.ir import l3, ops
from qgraph.passes.lower_qdq import LowerQDQ, LoweringError, fallback_reasons
from qgraph.reference import Interpreter

from conftest import REPO, run_pipeline

import onnxruntime as ort
import onnxruntime.quantization as quantization

F = TensorProto.FLOAT


# -- helpers ------------------------------------------------------------------------------------------

class _Reader(quantization.CalibrationDataReader):
    def __init__(self, samples):
        self._it = iter(samples)

    def get_next(self):
        return next(self._it, None)


def ort_quantize(model: onnx.ModelProto, samples, *, act="QUInt8", weight="QInt8", per_channel=True, **extra):
    """ORT's QDQ quantizer on ``model``, calibrated on ``samples`` (list of feed dicts)."""
    with tempfile.TemporaryDirectory() as d:
        src, dst = os.path.join(d, "f.onnx"), os.path.join(d, "q.onnx")
        onnx.save(model, src)
        quantization.quantize_static(
            src, dst, _Reader(samples), quant_format=quantization.QuantFormat.QDQ, per_channel=per_channel,
            activation_type=getattr(quantization.QuantType, act), weight_type=getattr(quantization.QuantType, weight),
            extra_options=extra or None)
        return onnx.load(dst)


def make_model(nodes, inputs, outputs, inits=(), opset=17):
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info(n, F, s) for n, s in inputs],
                          [helper.make_tensor_value_info(n, F, None) for n in outputs],
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in dict(inits).items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def lower(proto: onnx.ModelProto):
    model = qgraph.load(proto)
    result = run_pipeline(model, "lower-qdq")
    return model, result.records[0].stats


def ort_qdq_sim(proto: onnx.ModelProto, feeds, extra_outputs=()):
    """ORT's float simulation of the QDQ model; ``extra_outputs`` become graph outputs too."""
    p = onnx.ModelProto()
    p.CopyFrom(proto)
    have = {o.name for o in p.graph.output}
    for name in extra_outputs:
        if name not in have:
            p.graph.output.append(helper.make_value_info(name, onnx.TypeProto()))
    so = ort.SessionOptions()
    so.add_session_config_entry("session.disable_quant_qdq", "1")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(p.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feeds)))


def check_against_ort(proto: onnx.ModelProto, model, feeds_list, *, lsb: int = 1) -> int:
    """L3 (reference) vs L2 (ORT simulation): Q outputs within ``lsb``, float outputs within a step.

    Returns how many integer tensors were compared.
    """
    q_outputs = [n.output[0] for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    out_scale = {}
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    for n in proto.graph.node:
        if n.op_type == "DequantizeLinear" and n.output[0] in {o.name for o in proto.graph.output}:
            out_scale[n.output[0]] = float(inits[n.input[1]])
    interp = Interpreter(model)
    compared = 0
    for feeds in feeds_list:
        want = ort_qdq_sim(proto, feeds, q_outputs)
        got = interp.run(feeds, keep=True)
        for name in q_outputs:
            if name in got:
                diff = np.abs(got[name].astype(np.int64) - want[name].astype(np.int64))
                assert diff.max(initial=0) <= lsb, f"{name}: {diff.max()} LSB off"
                compared += 1
        for o in proto.graph.output:
            step = out_scale.get(o.name, 0.0)
            np.testing.assert_allclose(got[o.name], want[o.name], rtol=0, atol=lsb * step + 1e-6,
                                       err_msg=o.name)
    return compared


def ops_of(model):
    return [n.op for n in model.graph]


def node_of(model, op):
    found = [n for n in model.graph if n.op is op]
    assert found, f"no {op} in {ops_of(model)}"
    return found[0]


RNG = np.random.default_rng(7)


def samples(shape, n=6, lo=-1.0, hi=1.0, name="x"):
    return [{name: RNG.uniform(lo, hi, size=shape).astype(np.float32)} for _ in range(n)]


def w(*shape, scale=0.5):
    return (RNG.normal(size=shape) * scale).astype(np.float32)


# -- ORT-quantized models: each lowering rule against ONNX Runtime ---------------------------------------

CNN_NODES = [
    helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1], name="conv"),
    helper.make_node("Relu", ["c"], ["r"], name="relu"),
    helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
    helper.make_node("Sigmoid", ["p"], ["s"], name="sigmoid"),
    helper.make_node("Add", ["s", "p"], ["a"], name="add"),
    helper.make_node("Mul", ["a", "s"], ["m"], name="mul"),
    helper.make_node("AveragePool", ["m"], ["ap"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1],
                     name="avgpool"),
    helper.make_node("Flatten", ["ap"], ["f"], name="flatten"),
    helper.make_node("Gemm", ["f", "G", "GB"], ["y"], transB=1, name="gemm"),
]


def cnn_model():
    inits = {"W": w(4, 3, 3, 3), "B": w(4), "G": w(5, 64, scale=0.2), "GB": w(5)}
    return make_model(CNN_NODES, [("x", [1, 3, 8, 8])], ["y"], inits)


@pytest.mark.parametrize("act,weight", [("QUInt8", "QInt8"), ("QInt8", "QInt8"), ("QUInt16", "QInt8"),
                                        ("QInt16", "QInt8"), ("QUInt8", "QInt4")])
def test_cnn_rules_match_ort(act, weight):
    """Conv(+Relu), MaxPool, Sigmoid, Add, Mul, AveragePool, Flatten, Gemm(transB) for each type mix."""
    calib = samples([1, 3, 8, 8])
    proto = ort_quantize(cnn_model(), calib, act=act, weight=weight)
    model, stats = lower(proto)
    kinds = set(ops_of(model))
    assert {l3.QConv, l3.QAdd, l3.QMul, l3.QAveragePool, l3.QMatMul, ops.MaxPool, ops.Flatten} <= kinds
    assert ops.QuantizeLinear not in kinds and ops.DequantizeLinear not in kinds
    eight_bit = act in ("QUInt8", "QInt8")
    assert (l3.Lookup in kinds) == eight_bit  # 16-bit Sigmoid stays float
    assert stats["float_fallbacks"] == (0 if eight_bit else 1)
    assert stats["integer_ops"] == 5
    assert check_against_ort(proto, model, samples([1, 3, 8, 8], n=3)) >= 8


def test_cnn_structure_attributes():
    proto = ort_quantize(cnn_model(), samples([1, 3, 8, 8]))
    model, _ = lower(proto)
    conv = node_of(model, l3.QConv)
    assert conv.name == "conv"
    assert len(conv.attr("multiplier")) == 4 and len(conv.attr("w_zero_point")) == 4  # per channel
    assert conv.attr("kernel_shape") == (3, 3) and conv.attr("pads") == (1, 1, 1, 1) and conv.attr("group") == 1
    w_, b_ = conv.inputs[1].const_value.numpy(), conv.inputs[2].const_value.numpy()
    assert w_.dtype == np.int8 and b_.dtype == np.int32 and b_.shape == (4,)
    mm = node_of(model, l3.QMatMul)
    assert mm.inputs[1].const_value.shape == (64, 5)  # transB applied to the constant
    assert len(mm.attr("b_zero_point")) == 5
    pool = node_of(model, l3.QAveragePool)
    assert len(pool.attr("multiplier")) == 10 and pool.attr("multiplier")[0] == 0
    assert pool.attr("count_include_pad") == 0
    lut = node_of(model, l3.Lookup)
    assert len(lut.attr("table")) == 256 and lut.attr("x_qmin") == 0
    # graph input and output stay float and keep their names
    assert [v.name for v in model.graph.inputs] == ["x"] and [v.name for v in model.graph.outputs] == ["y"]
    assert model.graph.outputs[0].producer().op is l3.Dequantize
    assert model.graph.inputs[0].users()[0].op is l3.Quantize
    assert all(v.dtype is not None for v in model.graph.initializers.values())
    assert not any(v.const_value.dtype.name == "FLOAT" for v in model.graph.initializers.values())


def test_matmul_and_data_movement_match_ort():
    """MatMul with a per-channel weight, act x act MatMul, Reshape, Transpose, Squeeze, Unsqueeze,
    Slice, Split, Concat of tensors with different scales, GlobalAveragePool, Tanh / LeakyRelu lookups."""
    nodes = [
        helper.make_node("MatMul", ["x", "Wm"], ["m1"], name="mm_w"),
        helper.make_node("Tanh", ["m1"], ["t"], name="tanh"),
        helper.make_node("Transpose", ["t"], ["tt"], perm=[0, 2, 1], name="transpose"),
        helper.make_node("MatMul", ["t", "tt"], ["aa"], name="mm_act"),
        helper.make_node("LeakyRelu", ["aa"], ["lr"], alpha=0.1, name="leaky"),
        helper.make_node("Reshape", ["lr", "shape"], ["rs"], name="reshape"),
        helper.make_node("Unsqueeze", ["rs", "ax0"], ["us"], name="unsqueeze"),
        helper.make_node("Squeeze", ["us", "ax0"], ["sq"], name="squeeze"),
        helper.make_node("Slice", ["sq", "st", "en", "ax1"], ["sl"], name="slice"),
        helper.make_node("Split", ["sl"], ["s1", "s2"], axis=1, num_outputs=2, name="split"),
        helper.make_node("Mul", ["s2", "two"], ["s2x"], name="scale"),
        helper.make_node("Concat", ["s1", "s2x", "t2"], ["cat"], axis=1, name="concat"),
        helper.make_node("GlobalAveragePool", ["cat"], ["gap"], name="gap"),
    ]
    inits = {"Wm": w(6, 6), "shape": np.array([2, 4, 3, 3], np.int64), "ax0": np.array([0], np.int64),
             "st": np.array([0], np.int64), "en": np.array([4], np.int64), "ax1": np.array([1], np.int64),
             "two": np.array(3.0, np.float32)}
    proto0 = make_model(nodes + [helper.make_node("Tanh", ["sq"], ["t2pre"], name="tanh2"),
                                 helper.make_node("Slice", ["t2pre", "st", "en", "ax1"], ["t2"], name="slice2")],
                        [("x", [2, 6, 6])], ["gap"], inits, opset=18)
    calib = samples([2, 6, 6], lo=-2, hi=2)
    proto = ort_quantize(proto0, calib)
    model, stats = lower(proto)
    kinds = ops_of(model)
    assert kinds.count(l3.QMatMul) == 2
    act_mm = [n for n in model.graph if n.op is l3.QMatMul and n.inputs[1].const_value is None][0]
    assert act_mm.name == "mm_act" and len(act_mm.attr("b_zero_point")) == 1
    for op in (ops.Reshape, ops.Transpose, ops.Squeeze, ops.Unsqueeze, ops.Slice, ops.Split, ops.Concat,
               l3.QGlobalAveragePool):
        assert op in kinds, op
    assert kinds.count(l3.Lookup) == 3  # tanh, leaky relu, x * 3 (a scalar constant)
    # ORT leaves Tanh -> Slice unquantized in between: both stay float
    assert stats["float_fallbacks"] == 2
    assert sorted(n.name for n in model.graph if n.op in (ops.Tanh, ops.Slice) and n.inputs[0].dtype == 1) \
        == ["slice2", "tanh2"]
    assert check_against_ort(proto, model, samples([2, 6, 6], n=3, lo=-2, hi=2)) >= 3 * 12


def test_concat_requantizes_inputs_with_other_params():
    nodes = [helper.make_node("Sigmoid", ["x"], ["a"]), helper.make_node("Tanh", ["x"], ["b"]),
             helper.make_node("Mul", ["x", "k"], ["c"]),
             helper.make_node("Concat", ["a", "b", "c"], ["y"], axis=1, name="cat")]
    proto = ort_quantize(make_model(nodes, [("x", [1, 4])], ["y"], {"k": np.array(5.0, np.float32)}),
                         samples([1, 4], lo=-3, hi=3))
    model, stats = lower(proto)
    cat = node_of(model, ops.Concat)
    producers = [v.producer().op for v in cat.inputs]
    assert l3.Requantize in producers, producers
    assert stats["requantizes"] >= 2
    check_against_ort(proto, model, samples([1, 4], n=4, lo=-3, hi=3))


def test_float_fallback_keeps_float_op_between_dequantize_and_quantize():
    """Softmax and ReduceMean have no integer rule: Dequantize -> op -> Quantize around them."""
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="conv"),
             helper.make_node("ReduceMean", ["c"], ["r"], axes=[3], keepdims=1, name="reduce"),
             helper.make_node("Conv", ["r", "W2"], ["y"], name="conv2")]
    proto = ort_quantize(make_model(nodes, [("x", [1, 2, 5, 5])], ["y"], {"W": w(3, 2, 1, 1), "W2": w(2, 3, 1, 1)}),
                         samples([1, 2, 5, 5]))
    model, stats = lower(proto)
    reduce = [n for n in model.graph if n.op is ops.ReduceMean][0]
    assert reduce.inputs[0].producer().op is l3.Dequantize
    assert stats["float_fallbacks"] == 1 and stats["integer_ops"] == 2
    check_against_ort(proto, model, samples([1, 2, 5, 5], n=3))


def test_example_cnn_end_to_end():
    """golden example_cnn: canonicalize,fuse -> ORT QDQ -> lower-qdq -> reference vs ORT within 1 LSB."""
    model = qgraph.load(os.path.join(REPO, "golden", "models", "example_cnn.onnx"))
    run_pipeline(model, "canonicalize,fuse")
    calib = np.load(os.path.join(REPO, "golden", "data", "example_cnn_calib.npz"))["input"]
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.onnx")
        qgraph.save(model, path)
        proto = ort_quantize(onnx.load(path), [{"input": calib[i:i + 8]} for i in range(0, 32, 8)])
    l3_model, stats = lower(proto)
    assert stats["float_fallbacks"] == 0, stats
    assert {l3.QConv, l3.QGlobalAveragePool, l3.QMatMul} <= set(ops_of(l3_model))
    assert check_against_ort(proto, l3_model, [{"input": calib[32:48]}, {"input": calib[48:64]}]) >= 2 * 6


# -- hand-built L2 graphs -----------------------------------------------------------------------------

def qdq_chain(x, scale, zp, dtype=TensorProto.UINT8, tag=None):
    """(nodes, inits, output) for x -> QuantizeLinear -> DequantizeLinear."""
    tag = tag or x
    inits = [numpy_helper.from_array(np.array(scale, np.float32), f"{tag}_s"),
             helper.make_tensor(f"{tag}_z", dtype, [], [zp])]
    nodes = [helper.make_node("QuantizeLinear", [x, f"{tag}_s", f"{tag}_z"], [f"{tag}_q"], name=f"{tag}_Q"),
             helper.make_node("DequantizeLinear", [f"{tag}_q", f"{tag}_s", f"{tag}_z"], [f"{tag}_dq"],
                              name=f"{tag}_DQ")]
    return nodes, inits, f"{tag}_dq"


def weight_dq(name, wq, scale, axis=0):
    inits = [numpy_helper.from_array(wq, f"{name}_q"),
             numpy_helper.from_array(np.asarray(scale, np.float32), f"{name}_s"),
             numpy_helper.from_array(np.zeros(np.shape(scale), wq.dtype), f"{name}_z")]
    return [helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_z"], [name], axis=axis)], inits


def hand_model(nodes, inits, inputs, outputs, opset=19):
    g = helper.make_graph(nodes, "h", [helper.make_tensor_value_info(n, F, s) for n, s in inputs],
                          [helper.make_tensor_value_info(n, F, None) for n in outputs], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def conv_act_model(act_nodes):
    n1, i1, x = qdq_chain("x", 0.02, 128)
    wq = RNG.integers(-127, 128, size=(3, 2, 3, 3)).astype(np.int8)
    n2, i2 = weight_dq("W", wq, [0.01, 0.02, 0.015])
    conv = helper.make_node("Conv", [x, "W"], ["c"], name="conv", pads=[1, 1, 1, 1])
    n3, i3, y = qdq_chain(act_nodes[-1].output[0], 0.05, 60, tag="y")
    return hand_model(n1 + n2 + [conv] + act_nodes + n3, i1 + i2 + i3, [("x", [1, 2, 5, 5])], [y])


@pytest.mark.parametrize("act,lo,hi", [("Relu", 60, 255), ("Clip", 60 + 10, 60 + 40)])
def test_fused_activation_narrows_output_range(act, lo, hi):
    if act == "Relu":
        nodes = [helper.make_node("Relu", ["c"], ["a"], name="relu")]
        proto = conv_act_model(nodes)
    else:
        nodes = [helper.make_node("Clip", ["c", "lo", "hi"], ["a"], name="clip")]
        proto = conv_act_model(nodes)
        proto.graph.initializer.extend([numpy_helper.from_array(np.array(0.5, np.float32), "lo"),
                                        numpy_helper.from_array(np.array(2.0, np.float32), "hi")])
    model, stats = lower(proto)
    conv = node_of(model, l3.QConv)
    assert (conv.attr("y_qmin"), conv.attr("y_qmax"), conv.attr("y_zero_point")) == (lo, hi, 60)
    assert ops.Relu not in ops_of(model) and ops.Clip not in ops_of(model)
    assert stats["integer_ops"] == 1 and stats["float_fallbacks"] == 0
    check_against_ort(proto, model, samples([1, 2, 5, 5], n=3, lo=-2, hi=3))


def test_gemm_alpha_beta_and_float_bias():
    n1, i1, x = qdq_chain("x", 0.03, 120)
    wq = RNG.integers(-127, 128, size=(4, 6)).astype(np.int8)
    n2, i2 = weight_dq("W", wq, [0.01, 0.02, 0.03, 0.04], axis=0)
    gemm = helper.make_node("Gemm", [x, "W", "C"], ["g"], transB=1, alpha=0.5, beta=2.0, name="gemm")
    n3, i3, y = qdq_chain("g", 0.02, 128, tag="y")
    c = numpy_helper.from_array(w(4), "C")
    proto = hand_model(n1 + n2 + [gemm] + n3, i1 + i2 + i3 + [c], [("x", [3, 6])], [y])
    model, stats = lower(proto)
    mm = node_of(model, l3.QMatMul)
    assert mm.name == "gemm" and mm.inputs[1].const_value.shape == (6, 4) and len(mm.inputs) == 3
    real = np.asarray(mm.attr("multiplier"), np.float64) * np.exp2(-np.asarray(mm.attr("shift"), np.float64))
    f32 = lambda v: np.asarray(v, np.float32).astype(np.float64)  # noqa: E731 - scales are float32
    np.testing.assert_allclose(real, 0.5 * f32(0.03) * f32([0.01, 0.02, 0.03, 0.04]) / f32(0.02), rtol=1e-8)
    check_against_ort(proto, model, samples([3, 6], n=3, lo=-3, hi=3))


def test_gemm_with_trans_a_stays_float():
    n1, i1, x = qdq_chain("x", 0.03, 120)
    n2, i2 = weight_dq("W", RNG.integers(-127, 128, size=(6, 4)).astype(np.int8), 0.01)
    gemm = helper.make_node("Gemm", [x, "W"], ["g"], transA=1, name="gemm")
    n3, i3, y = qdq_chain("g", 0.02, 128, tag="y")
    proto = hand_model(n1 + n2 + [gemm] + n3, i1 + i2 + i3, [("x", [6, 3])], [y])
    p = LowerQDQ()
    model = qgraph.load(proto)
    from qgraph.pm import PassContext, PassManager

    result = PassManager([p], PassContext(verify_each=True)).run(model)
    assert result.records[0].stats["float_fallbacks"] == 1
    gemm_node = node_of(model, ops.Gemm)
    assert gemm_node.inputs[0].producer().op is l3.Dequantize
    assert gemm_node.inputs[1].const_value is not None  # the weight folded to a float constant
    reasons = fallback_reasons(model)  # the rewrite tracer's reason, kept on the node
    assert reasons["gemm"] == "lower-gemm: transA=1 (the activation would need a transpose)"
    assert gemm_node.metadata_props[l3.STAYED_FLOAT] == reasons["gemm"]
    check_against_ort(proto, model, samples([6, 3], n=2))


def test_int16_accumulator_overflow_is_an_error_naming_the_node():
    k = 4096
    n1, i1, x = qdq_chain("x", 0.001, 0, dtype=TensorProto.INT16)
    n2, i2 = weight_dq("W", np.full((k, 2), 127, np.int8), [0.01, 0.01], axis=1)
    mm = helper.make_node("MatMul", [x, "W"], ["m"], name="big_matmul")
    n3, i3, y = qdq_chain("m", 10.0, 0, dtype=TensorProto.INT16, tag="y")
    proto = hand_model(n1 + n2 + [mm] + n3, i1 + i2 + i3, [("x", [1, k])], [y])
    with pytest.raises(Exception) as info:
        lower(proto)
    chain = [info.value] + [e for e in (info.value.__cause__, getattr(info.value.__cause__, "__cause__", None)) if e]
    assert any(isinstance(e, LoweringError) and "big_matmul" in str(e) and "int32" in str(e) for e in chain), chain


def test_dequantized_graph_output_keeps_its_name_and_export_round_trips(tmp_path):
    proto = ort_quantize(cnn_model(), samples([1, 3, 8, 8]))
    model, _ = lower(proto)
    path = str(tmp_path / "model.qgraph.onnx")
    qgraph.save(model, path)
    saved = onnx.load(path)
    assert {o.domain for o in saved.opset_import} >= {"qgraph"}
    assert any(n.domain == "qgraph" and n.op_type == "QConv" for n in saved.graph.node)
    again = qgraph.load(path)
    assert [n.op for n in again.graph] == [n.op for n in model.graph]
    for a, b in zip(again.graph, model.graph):
        assert dict(a.attrs) == dict(b.attrs), a
    x = samples([1, 3, 8, 8], n=1)[0]
    np.testing.assert_array_equal(Interpreter(again).run(x)["y"], Interpreter(model).run(x)["y"])


def test_no_qdq_is_unchanged():
    model = qgraph.load(cnn_model())
    result = run_pipeline(model, "lower-qdq")
    assert not result.records[0].modified
    assert "qgraph" not in model.opset_imports


def test_residual_add_relu_is_one_clamping_qadd():
    """Conv -> Add(x, conv) -> Relu (a ResNet block): qgraph's quantizer fuses the Relu into the
    Add, so L3 holds one QAdd whose clamp is the Relu (y_qmin == y_zero_point), no Lookup,
    and the reference equals ORT's simulation of the QDQ model."""
    from qgraph.api import quantize

    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Add", ["x", "c"], ["s"], name="add"),
             helper.make_node("Relu", ["s"], ["y"], name="relu")]
    proto = make_model(nodes, [("x", [1, 4, 6, 6])], ["y"], {"W": w(4, 4, 3, 3, scale=0.3), "B": w(4)})
    calib = samples([1, 4, 6, 6], n=4)
    q = quantize(proto, calib, report=False, show_progress=False)
    add = node_of(q.integer, l3.QAdd)
    assert add.attr("y_qmin") == add.attr("y_zero_point")
    assert l3.Lookup not in ops_of(q.integer) and ops.Relu not in ops_of(q.integer)
    check_against_ort(qgraph.to_proto(q.qdq), q.integer, samples([1, 4, 6, 6], n=3))


# -- ConvTranspose --------------------------------------------------------------------------------------
CONV_TRANSPOSE = [
    # (x shape, W shape [C, M/group, k...], attrs, act, weight)
    ([1, 4, 6, 6], (4, 3, 2, 2), dict(strides=[2, 2]), "QUInt8", "QInt8"),  # PP-OCR's DB head
    ([1, 4, 5, 6], (4, 3, 3, 3), dict(strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1]), "QInt8", "QInt8"),
    ([1, 4, 5, 6], (4, 2, 3, 2), dict(strides=[2, 1], pads=[1, 0, 0, 1], group=2), "QUInt8", "QInt8"),
    ([1, 4, 5, 5], (4, 3, 3, 3), dict(strides=[2, 2], auto_pad="SAME_UPPER"), "QUInt8", "QInt4"),
    ([1, 4, 5, 5], (4, 3, 3, 3), dict(strides=[2, 2], auto_pad="SAME_LOWER", output_padding=[1, 0]), "QInt8", "QInt8"),
    ([1, 4, 5, 5], (4, 3, 3, 3), dict(strides=[2, 2], output_shape=[10, 11]), "QUInt16", "QInt8"),
    ([1, 4, 5, 5], (4, 3, 3, 3), dict(strides=[3, 2], dilations=[2, 1]), "QInt16", "QInt8"),
    ([1, 3, 7], (3, 2, 3), dict(strides=[2], pads=[1, 0]), "QUInt8", "QUInt8"),  # asymmetric uint8 weights
]


@pytest.mark.parametrize("xshape, wshape, attrs, act, weight", CONV_TRANSPOSE)
def test_conv_transpose_lowers_and_matches_ort(xshape, wshape, attrs, act, weight):
    """DQ -> ConvTranspose -> Relu -> Q from ORT's quantizer becomes one QConvTranspose (the Relu
    in its clamp; auto_pad / output_shape resolved to pads) equal to ORT's QDQ simulation
    within 1 LSB. ORT's quantizer fails on grouped per-channel ConvTranspose (its bias scale
    has M/group values): the grouped case is per tensor."""
    group = attrs.get("group", 1)
    nodes = [helper.make_node("ConvTranspose", ["x", "W", "B"], ["c"], name="deconv", **attrs),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    proto = ort_quantize(make_model(nodes, [("x", xshape)], ["y"], {"W": w(*wshape), "B": w(wshape[1] * group)}),
                         samples(xshape), act=act, weight=weight, per_channel=group == 1)
    model, stats = lower(proto)
    node = node_of(model, l3.QConvTranspose)
    assert stats["float_fallbacks"] == 0 and stats["integer_ops"] == 1 and ops.Relu not in ops_of(model)
    assert node.attr("auto_pad") is None and node.attr("output_shape") is None
    assert len(node.attr("multiplier")) == (wshape[1] if group == 1 else 1)
    assert node.attr("y_qmin") == node.attr("y_zero_point")  # the Relu
    assert check_against_ort(proto, model, samples(xshape, n=2, lo=-2, hi=2)) == 2 * 2


def test_conv_transpose_pads_resolved_as_ort_resolves_them():
    """auto_pad SAME_UPPER puts the odd padding at the end, SAME_LOWER and output_shape at the start."""
    def lowered(**attrs):
        nodes = [helper.make_node("ConvTranspose", ["x", "W"], ["y"], name="deconv", strides=[2, 2], **attrs)]
        proto = ort_quantize(make_model(nodes, [("x", [1, 2, 5, 5])], ["y"], {"W": w(2, 2, 3, 3)}),
                             samples([1, 2, 5, 5]))
        return node_of(lower(proto)[0], l3.QConvTranspose).attr("pads")

    # full output (5 - 1) * 2 + 3 = 11, SAME wants 10: total padding 1
    assert lowered(auto_pad="SAME_UPPER") == (0, 0, 1, 1)
    assert lowered(auto_pad="SAME_LOWER") == (1, 1, 0, 0)
    assert lowered(output_shape=[8, 11]) == (2, 0, 1, 0)


def test_conv_transpose_refusals_name_the_reason():
    """Weights per channel on axis 0 (the input channel) stay float with the rule's reason; so does
    output_shape without a static input shape. An accumulator that can pass int32 is an error."""
    n1, i1, x = qdq_chain("x", 0.02, 128)
    n2, i2 = weight_dq("W", RNG.integers(-127, 128, size=(3, 2, 2, 2)).astype(np.int8), [0.01, 0.02, 0.03], axis=0)
    deconv = helper.make_node("ConvTranspose", [x, "W"], ["c"], name="deconv", strides=[2, 2])
    n3, i3, y = qdq_chain("c", 0.05, 60, tag="y")
    model, stats = lower(hand_model(n1 + n2 + [deconv] + n3, i1 + i2 + i3, [("x", [1, 3, 4, 4])], [y]))
    assert stats["float_fallbacks"] == 1
    assert fallback_reasons(model)["deconv"] == ("lower-conv-transpose: weight 'W_q' of shape (3, 2, 2, 2) is not "
                                                 "per-tensor or per-channel on axis 1 (the output channel)")
    n2, i2 = weight_dq("W", RNG.integers(-127, 128, size=(3, 2, 2, 2)).astype(np.int8), 0.01)
    deconv = helper.make_node("ConvTranspose", [x, "W"], ["c"], name="deconv", strides=[2, 2], output_shape=[8, 8])
    model, _ = lower(hand_model(n1 + n2 + [deconv] + n3, i1 + i2 + i3, [("x", [1, 3, "h", "w"])], [y]))
    assert fallback_reasons(model)["deconv"] == ("lower-conv-transpose: output_shape needs the static spatial shape "
                                                 "of 'x_dq'")
    # int16 activations, 128 channels, stride 1, 3x3: 9 taps x 128 x 32768 x 127 reach one output
    n1, i1, x = qdq_chain("x", 0.001, 0, dtype=TensorProto.INT16)
    n2, i2 = weight_dq("W", np.full((128, 1, 3, 3), 127, np.int8), 0.01)
    deconv = helper.make_node("ConvTranspose", [x, "W"], ["c"], name="big_deconv")
    n3, i3, y = qdq_chain("c", 10.0, 0, dtype=TensorProto.INT16, tag="y")
    with pytest.raises(Exception) as info:
        lower(hand_model(n1 + n2 + [deconv] + n3, i1 + i2 + i3, [("x", [1, 128, 4, 4])], [y]))
    chain = [info.value] + [e for e in (info.value.__cause__, getattr(info.value.__cause__, "__cause__", None)) if e]
    assert any(isinstance(e, LoweringError) and "big_deconv" in str(e) and "int32" in str(e) for e in chain), chain


def gap_model(s_in, zp_in, s_out, zp_out, dtype=TensorProto.UINT8):
    """x [1, 3, H, W] (symbolic H, W) -> Q/DQ -> GlobalAveragePool -> Q/DQ."""
    n1, i1, x = qdq_chain("x", s_in, zp_in, dtype)
    gap = helper.make_node("GlobalAveragePool", [x], ["g"], name="gap")
    n2, i2, y = qdq_chain("g", s_out, zp_out, dtype, tag="y")
    return hand_model(n1 + [gap] + n2, i1 + i2, [("x", [1, 3, "H", "W"])], [y])


def gap_tie_feeds(h, w, s_in=0.5, zp=128, seed=0):
    """Inputs whose quantized channel sums (minus the zero point) are count * (k + 1/2) for even
    and odd k (exact ties of the rounding division when s_in == s_out)."""
    rng = np.random.default_rng(seed)
    n = h * w
    q = np.zeros((1, 3, n), np.int64)
    for c, k in enumerate((2, -3, 1)):  # sum = n * (k + 1/2) (n even): means 2.5, -2.5, 1.5
        q[0, c] = zp + k + (np.arange(n) < n // 2)
        d = rng.integers(0, 20, n // 2)  # moved between pairs: the sum stays
        q[0, c, 0::2] += d
        q[0, c, 1::2] -= d
        q[0, c] = rng.permutation(q[0, c])
    q = q.reshape(1, 3, h, w)
    return {"x": ((q - zp) * s_in).astype(np.float32)}, q


@pytest.mark.parametrize("h,w", [(2, 2), (4, 6)])
def test_global_average_pool_symbolic_size_divides_at_run_time(h, w):
    """Symbolic H, W: the runtime-count QGlobalAveragePool; ties of the division go to even as
    QuantizeLinear's do (s_in == s_out: exact against ORT), other scales within 1 LSB."""
    proto = gap_model(0.5, 128, 0.5, 128)
    model, stats = lower(proto)
    gap = node_of(model, l3.QGlobalAveragePool)
    assert gap.attr("runtime_count") == 1 and stats["float_fallbacks"] == 0
    feeds, q = gap_tie_feeds(h, w)
    acc = (q - 128).sum(axis=(2, 3))[0]
    assert (2 * (acc % (h * w)) == h * w).all()  # the ties are there
    y = Interpreter(model).run(feeds)["y_dq"].reshape(-1)
    assert (y / 0.5).tolist() == [2, -2, 2]  # 2.5 -> 2, -2.5 -> -2, 1.5 -> 2: to even
    check_against_ort(proto, model, [feeds], lsb=0)
    proto = gap_model(0.0173, 121, 0.0061, 130)
    model, _ = lower(proto)
    assert node_of(model, l3.QGlobalAveragePool).attr("runtime_count") == 1
    check_against_ort(proto, model, samples([1, 3, h, w], n=3, lo=-1.5, hi=0.6) + [gap_tie_feeds(h, w, 0.0173, 121)[0]])


def test_global_average_pool_static_size_keeps_the_folded_multiplier():
    n1, i1, x = qdq_chain("x", 0.02, 128)
    gap = helper.make_node("GlobalAveragePool", [x], ["g"], name="gap")
    n2, i2, y = qdq_chain("g", 0.01, 128, tag="y")
    model, _ = lower(hand_model(n1 + [gap] + n2, i1 + i2, [("x", [1, 3, 4, 5])], [y]))
    assert node_of(model, l3.QGlobalAveragePool).attr("runtime_count", 0) == 0


def test_global_average_pool_symbolic_size_refused_where_int64_cannot_hold():
    """int32 activations: 2**20 positions of 2**31 leave too few multiplier bits; stays float."""
    model, stats = lower(gap_model(0.5, 0, 0.5, 0, TensorProto.INT32))
    assert stats["float_fallbacks"] == 1
    reason = fallback_reasons(model)["gap"]
    assert reason.startswith("lower-global-average-pool: the spatial shape of 'x_dq' is not static, and the "
                             "runtime-count form does not fit int64: an average of up to 1048576 values"), reason


@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_nearest_resize_moves_integers_and_linear_stays_float(mode):
    """An FPN's upsampling (DQ -> Resize(nearest) -> Q) picks input values: it runs on the
    integers as data movement (no float round trip, nothing after it tainted for TVM); linear
    interpolation computes new values and stays float, with that reason."""
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="conv"),
             helper.make_node("Resize", ["c", "", "scales"], ["r"], mode=mode, name="up"),
             helper.make_node("Conv", ["r", "W2"], ["y"], name="conv2")]
    inits = {"W": w(3, 2, 1, 1), "W2": w(2, 3, 1, 1), "scales": np.array([1, 1, 2, 2], np.float32)}
    proto = ort_quantize(make_model(nodes, [("x", [1, 2, 5, 5])], ["y"], inits), samples([1, 2, 5, 5]))
    model, stats = lower(proto)
    up = [n for n in model.graph if n.op is ops.Resize][0]
    if mode == "nearest":
        assert up.inputs[0].producer().op is l3.QConv and stats["float_fallbacks"] == 0
        feeds = {"x": samples([1, 2, 5, 5])[0]["x"]}
        outs = Interpreter(model).run(feeds, outputs=[up.outputs[0].name])
        assert outs[up.outputs[0].name].dtype in (np.uint8, np.int8)
    else:
        assert up.inputs[0].producer().op is l3.Dequantize and stats["float_fallbacks"] == 1
        assert "computes new values" in fallback_reasons(model)["up"]
        return  # (ORT's float linear Resize and the onnx reference's round differently: not compared)
    check_against_ort(proto, model, samples([1, 2, 5, 5], n=3))


# -- SiLU ------------------------------------------------------------------------------------------
def silu_model():
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Sigmoid", ["c"], ["s"], name="sig"),
             helper.make_node("Mul", ["c", "s"], ["y"], name="mul")]
    return make_model(nodes, [("x", [1, 3, 6, 6])], ["y"], {"W": w(4, 3, 3, 3), "B": w(4)})


def test_silu_is_one_lookup_of_x_times_sigmoid_x_rounded_once():
    """Conv -> x * Sigmoid(x) (YOLO's and the CRNN's activation): one table on the conv's 8-bit
    output, y = Q(x * sigmoid(x)) for each dequantized x, instead of a Sigmoid table and a QMul
    that round twice; the reference equals ORT's simulation of the QDQ export within 1 LSB."""
    from qgraph.api import quantize

    calib = samples([1, 3, 6, 6], n=4)
    q = quantize(silu_model(), calib, report=False, show_progress=False)
    kinds = ops_of(q.integer)
    assert kinds.count(l3.Lookup) == 1 and l3.QMul not in kinds, kinds
    proto = qgraph.to_proto(q.qdq)
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    qs = {n.input[0]: n for n in proto.graph.node if n.op_type == "QuantizeLinear"}
    (xs_, xz), (ys, yz) = ((float(inits[qs[v].input[1]]), int(inits[qs[v].input[2]])) for v in ("c", "y_float"))
    xs = ((np.arange(0, 256) - xz) * xs_).astype(np.float32)
    want = np.clip(np.round(xs / (1 + np.exp(-xs)) / ys) + yz, 0, 255)
    assert np.abs(np.asarray(node_of(q.integer, l3.Lookup).attr("table")) - want).max() <= 1
    check_against_ort(proto, q.integer, samples([1, 3, 6, 6], n=3))
    # --target qnn splits it: a Sigmoid table and a QMul (the HTP runs no float op in a QDQ graph)
    qnn = quantize(silu_model(), calib, {"target": "qnn"}, report=False, show_progress=False)
    assert l3.QMul in ops_of(qnn.integer) and ops_of(qnn.integer).count(l3.Lookup) == 1
