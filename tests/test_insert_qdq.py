"""insert-qdq and QuantConfig: placement, parameters, config parsing, QAT models, opsets, numerics in ORT."""

import json
import os

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import qgraph
from qgraph.calib.calibrate import calibrate
from qgraph.calib.ranges import Interval, RangeMap
from qgraph.errors import PassError
from qgraph.ir import fusion
from qgraph.ir.text import parse_model
from qgraph.passes.insert_qdq import InsertQDQ
from qgraph.pm import PassContext, PassManager
from qgraph.quant import QuantConfig, QuantConfigError, choose_params, int_type
from qgraph.testing.ort import session
from tests.conftest import REPO, graph_text, run_pipeline

MODEL = os.path.join(REPO, "golden", "models", "example_cnn.onnx")
DATA = os.path.join(REPO, "golden", "data", "example_cnn_calib.npz")
RNG = np.random.default_rng(0)
W = {"w": RNG.standard_normal((4, 3, 3, 3)).astype(np.float32),
     "w2": RNG.standard_normal((4, 4, 1, 1)).astype(np.float32),
     "fc": RNG.standard_normal((8, 5)).astype(np.float32), "fc2": RNG.standard_normal((5, 5)).astype(np.float32)}


def model(body, opset=17):
    return parse_model(f'model opset {{"": {opset}}}\n' + body, W)


def with_ranges(m, /, **ranges):
    m.calibration = RangeMap({k.replace("__", "."): Interval(lo, hi, "calibration") for k, (lo, hi) in ranges.items()})
    return m


def insert(m, config=None, **options):
    p = InsertQDQ.from_config(config, **options) if config is not None else InsertQDQ(**options)
    return PassManager([p], PassContext(verify_each=True)).run(m).records[0].stats


def skeleton(m):
    """The graph without initializer lines (FileCheck-style: the dataflow that matters)."""
    return "\n".join(line.strip() for line in graph_text(m).splitlines()[1:-1] if not line.lstrip().startswith("init "))


def init(m, name):
    return m.graph.initializers[name].const_value.numpy()


def sqnr(ref, got):
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    return 10 * np.log10(np.sum(ref ** 2) / max(np.sum((ref - got) ** 2), 1e-30))


def run_qdq(proto, feeds):
    """ORT with its QDQ fusions off (the u8 x s8 AVX2 kernel saturates on CPUs without VNNI)."""
    return session(proto, **{"session.disable_quant_qdq": "1"}).run(None, feeds)


CONV_RELU = '''graph g(%x: f32[1,3,8,8]) -> (%y) {
  init %w: f32[4,3,3,3] = <data 0>
  init %b: f32[4] = [0.1, -0.2, 0.3, 0.0]
  %c: f32[1,4,8,8] = Conv(%x, %w, %b) {pads=[1, 1, 1, 1]} @conv
  %y: f32[1,4,8,8] = Relu(%c) @relu meta {"qgraph.fused_producer": "Conv"}
}'''


# -- placement -------------------------------------------------------------------------------------
def test_conv_with_fused_relu_keeps_the_pair_adjacent_and_the_output_name():
    m = with_ranges(model(CONV_RELU), x=(-1, 1), c=(-5, 4), y=(0, 4))
    stats = insert(m)
    assert stats == {"quantized_nodes": 1, "qdq_pairs": 2, "weights": 1, "biases": 1, "corrected_biases": 0}
    assert skeleton(m) == '''\
%x_quantized: u8[1,3,8,8] = QuantizeLinear(%x, %x_scale, %x_zero_point) @x_QuantizeLinear
%x_dequantized: f32[1,3,8,8] = DequantizeLinear(%x_quantized, %x_scale, %x_zero_point) @x_DequantizeLinear
%w_dequantized: f32[4,3,3,3] = DequantizeLinear(%w_quantized, %w_scale, %w_zero_point) {axis=0} @w_DequantizeLinear
%b_dequantized: f32[4] = DequantizeLinear(%b_quantized, %b_scale, %b_zero_point) {axis=0} @b_DequantizeLinear
%c: f32[1,4,8,8] = Conv(%x_dequantized, %w_dequantized, %b_dequantized) {pads=[1, 1, 1, 1]} @conv
%y_float: f32[1,4,8,8] = Relu(%c) @relu meta {"qgraph.fused_producer": "Conv"}
%y_quantized: u8[1,4,8,8] = QuantizeLinear(%y_float, %y_scale, %y_zero_point) @y_QuantizeLinear
%y: f32[1,4,8,8] = DequantizeLinear(%y_quantized, %y_scale, %y_zero_point) @y_DequantizeLinear'''
    # the activation's range decides the output scale; the bias is int32 at scale_x * scale_w
    assert float(init(m, "y_scale")) == float(choose_params(0, 4, "uint8").scale)
    assert init(m, "b_quantized").dtype == np.int32
    np.testing.assert_array_equal(init(m, "b_scale"), init(m, "x_scale") * init(m, "w_scale"))
    assert "w" not in m.graph.initializers and "b" not in m.graph.initializers  # float weights dropped


def test_unmarked_relu_stays_float_between_two_pairs():
    m = with_ranges(model(CONV_RELU.replace(' meta {"qgraph.fused_producer": "Conv"}', "")),
                    x=(-1, 1), c=(-5, 4), y=(0, 4))
    insert(m)
    assert "%y = Relu(%c_dequantized) @relu" in skeleton(m).replace(": f32[1,4,8,8]", "")
    assert "QuantizeLinear(%y," not in skeleton(m)  # a float op's output gets no pair of its own


def test_matmul_weight_gemm_transb_add_and_float_fallback():
    m = with_ranges(model('''graph g(%a: f32[2,8], %b: f32[2,5]) -> (%out, %sm) {
  init %fc: f32[8,5] = <data 0>
  init %k: f32[5] = [1.0, -2.0, 0.5, 0.25, 3.0]
  init %fc2: f32[5,5] = <data 1>
  %mm: f32[2,5] = MatMul(%a, %fc) @mm
  %s: f32[2,5] = Add(%mm, %b) @add
  %sm: f32[2,5] = Softmax(%s) @softmax
  %m2: f32[2,5] = Mul(%sm, %k) @scale
  %out: f32[2,5] = Gemm(%m2, %fc2) {transB=1} @gemm
}'''),
        a=(-1, 1), mm=(-3, 3), b=(-2, 2), s=(-4, 4), sm=(0, 1), m2=(-3, 3), out=(-2, 2))
    insert(m)
    sk = skeleton(m)
    assert "DequantizeLinear(%fc_quantized, %fc_scale, %fc_zero_point) {axis=1}" in sk  # MatMul B [K, N]
    assert "DequantizeLinear(%fc2_quantized, %fc2_scale, %fc2_zero_point) {axis=0}" in sk  # transB = 1
    assert "Add(%mm_dequantized, %b_dequantized)" in sk
    # Softmax stays float: it reads the Add's DQ; its output is quantized for Mul, and the
    # graph output %sm keeps the float value (a float producer keeps its float readers)
    assert "%sm: f32[2,5] = Softmax(%s_dequantized)" in sk
    assert "Mul(%sm_dequantized, %k_dequantized)" in sk and "%k_dequantized: f32[5] = DequantizeLinear" in sk
    assert init(m, "k_quantized").dtype == np.int8 and init(m, "k_scale").shape == ()  # per tensor
    assert m.graph.outputs[1].name == "sm" and m.graph.outputs[1].producer().op_type == "Softmax"
    assert m.graph.outputs[0].producer().op_type == "DequantizeLinear"


def test_concat_maxpool_and_reshape_share_one_scale():
    m = with_ranges(model('''graph g(%x: f32[1,4,4,4], %z: f32[1,4,4,4]) -> (%r) {
  init %shape: i64[2] = [1, 128]
  %p: f32[1,4,4,4] = MaxPool(%x) {kernel_shape=[1, 1]} @pool
  %t: f32[1,8,4,4] = Concat(%p, %z) {axis=1} @cat
  %r: f32[1,128] = Reshape(%t, %shape) @reshape
}'''), x=(-1, 2), p=(-1, 2), z=(-3, 1), t=(-3, 2), r=(-3, 2))
    insert(m)
    qs = [n for n in m.graph if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    (scale,) = {n.inputs[1].name for n in qs}  # one class: x, p, z, t, r
    assert len(qs) == 10 and float(init(m, scale)) == float(choose_params(-3, 2, "uint8").scale)
    assert "%r: f32[1,128] = DequantizeLinear" in skeleton(m)


def test_data_movement_after_a_float_op_stays_float():
    m = with_ranges(model('''graph g(%x: f32[1,4]) -> (%y) {
  %e: f32[1,4] = Exp(%x) @exp
  %y: f32[1,4] = Transpose(%e) @tr
}'''), x=(-1, 1), e=(0, 3), y=(0, 3))
    assert insert(m) == {}
    assert skeleton(m).count("QuantizeLinear") == 0


def test_unfused_hard_swish_group_is_one_unit():
    m = with_ranges(model('''graph g(%x: f32[1,4]) -> (%y) {
  init %three: f32[] = 3.0
  init %zero: f32[] = 0.0
  init %six: f32[] = 6.0
  %a: f32[1,4] = Add(%x, %three) @add
  %c: f32[1,4] = Clip(%a, %zero, %six) @clip
  %m: f32[1,4] = Mul(%x, %c) @mul
  %y: f32[1,4] = Div(%m, %six) @div meta {"qgraph.activation_group": "x*Clip(x+3,0,6)/6"}
}'''), x=(-4, 4), a=(-1, 7), c=(0, 6), m=(-1, 16), y=(-0.5, 4))
    insert(m)
    sk = skeleton(m)
    assert "Add(%x_dequantized, %three)" in sk and "Mul(%x_dequantized, %c)" in sk
    assert sk.count("QuantizeLinear(") == 2  # x and y only: nothing inside the group


CONV_ACT = '''graph g(%x: f32[1,3,8,8]) -> (%y) {
  init %w: f32[4,3,3,3] = <data 0>
  init %b: f32[4] = [0.1, -0.2, 0.3, 0.0]
  %c: f32[1,4,8,8] = Conv(%x, %w, %b) {pads=[1, 1, 1, 1]} @conv
  %y: f32[1,4,8,8] = ACT(%c) @act meta {"qgraph.fused_producer": "Conv"}
}'''


@pytest.mark.parametrize("act", ["HardSwish", "Sigmoid", "LeakyRelu", "Tanh", "HardSigmoid"])
def test_a_fused_activation_requantization_cannot_clamp_gets_its_own_pair(act):
    m = with_ranges(model(CONV_ACT.replace("ACT", act)), x=(-1, 1), c=(-5, 4), y=(-1, 4))
    stats = insert(m)
    assert stats == {"quantized_nodes": 2, "qdq_pairs": 3, "weights": 1, "biases": 1, "corrected_biases": 0}
    sk = skeleton(m)
    assert f"""\
%c: f32[1,4,8,8] = Conv(%x_dequantized, %w_dequantized, %b_dequantized) {{pads=[1, 1, 1, 1]}} @conv
%c_quantized: u8[1,4,8,8] = QuantizeLinear(%c, %c_scale, %c_zero_point) @c_QuantizeLinear
%c_dequantized: f32[1,4,8,8] = DequantizeLinear(%c_quantized, %c_scale, %c_zero_point) @c_DequantizeLinear
%y_float: f32[1,4,8,8] = {act}(%c_dequantized) @act meta {{"qgraph.fused_producer": "Conv"}}
%y_quantized: u8[1,4,8,8] = QuantizeLinear(%y_float, %y_scale, %y_zero_point) @y_QuantizeLinear
%y: f32[1,4,8,8] = DequantizeLinear(%y_quantized, %y_scale, %y_zero_point) @y_DequantizeLinear""" in sk, sk
    # each pair has its own calibrated range
    assert float(init(m, "c_scale")) == float(choose_params(-5, 4, "uint8").scale)
    assert float(init(m, "y_scale")) == float(choose_params(-1, 4, "uint8").scale)


@pytest.mark.parametrize("act, lookup", [("Relu", False), ("Clip", False), ("HardSwish", True), ("Sigmoid", True)])
def test_lower_qdq_makes_the_conv_integer_and_the_activation_a_lookup(act, lookup):
    from qgraph.passes.lower_qdq import LowerQDQ
    from qgraph.reference import Interpreter

    text = CONV_ACT.replace("ACT(%c)", "Clip(%c, %lo, %hi)" if act == "Clip" else f"{act}(%c)")
    text = text.replace("init %b:", "init %lo: f32[] = 0.0\n  init %hi: f32[] = 6.0\n  init %b:")
    m = model(text)
    x = RNG.uniform(-1, 1, (8, 3, 8, 8)).astype(np.float32)
    m.calibration = calibrate(m, {"x": x})
    float_proto = qgraph.to_proto(m)
    insert(m)
    qdq, lsb = qgraph.to_proto(m), float(init(m, "y_scale"))
    PassManager([LowerQDQ()], PassContext(verify_each=True)).run(m)
    names = [str(n.op) for n in m.graph]
    assert names.count("qgraph::QConv") == 1 and act not in names
    assert names.count("qgraph::Lookup") == int(lookup)
    ref = np.concatenate([session(float_proto).run(None, {"x": x[i:i + 1]})[0] for i in range(4)])
    sim = np.concatenate([run_qdq(qdq, {"x": x[i:i + 1]})[0] for i in range(4)])
    got = np.concatenate([Interpreter(m).run({"x": x[i:i + 1]})["y"] for i in range(4)])
    assert sqnr(ref, got) > 25 and np.abs(got - sim).max() <= lsb * 1.001


def test_a_16_bit_activation_stays_float_between_integer_ops():
    from qgraph.passes.lower_qdq import LowerQDQ

    m = model(CONV_ACT.replace("ACT", "HardSwish"))
    m.calibration = calibrate(m, {"x": RNG.uniform(-1, 1, (4, 3, 8, 8)).astype(np.float32)})
    insert(m, QuantConfig.from_json({"activation": {"dtype": "uint16"}}))
    PassManager([LowerQDQ()], PassContext(verify_each=True)).run(m)
    names = [str(n.op) for n in m.graph]
    assert names.count("qgraph::QConv") == 1 and "qgraph::Lookup" not in names
    assert names[names.index("HardSwish") - 1] == "qgraph::Dequantize"  # a float op: lower-qdq decides


def test_unary_activations_are_quantized_where_their_input_is():
    m = with_ranges(model('''graph g(%a: f32[1,4], %b: f32[1,4]) -> (%y, %z) {
  %s: f32[1,4] = Add(%a, %b) @add
  %t: f32[1,4] = Sigmoid(%s) @sigmoid
  %y: f32[1,4] = Softmax(%t) @softmax
  %e: f32[1,4] = Exp(%a) @exp
  %z: f32[1,4] = Tanh(%e) @tanh
}'''), a=(-1, 1), b=(-1, 1), s=(-2, 2), t=(0, 1), y=(0, 1), e=(0, 3), z=(0, 1))
    stats = insert(m)
    sk = skeleton(m).replace(": f32[1,4]", "")
    # Sigmoid reads the Add's quantized output: quantized itself, Softmax reads its DQ
    assert "%t = Sigmoid(%s_dequantized) @sigmoid" in sk and "%t_quantized: u8[1,4] = QuantizeLinear(%t," in sk
    assert "%y = Softmax(%t_dequantized) @softmax" in sk
    # Tanh of a float value stays float, with no pair
    assert "%z = Tanh(%e) @tanh" in sk and "QuantizeLinear(%z" not in sk and "QuantizeLinear(%e" not in sk
    assert stats["quantized_nodes"] == 2


def test_a_hard_swish_group_fused_with_a_conv_is_an_op_of_its_own():
    m = with_ranges(model('''graph g(%x: f32[1,3,8,8]) -> (%y) {
  init %w: f32[4,3,3,3] = <data 0>
  init %three: f32[] = 3.0
  init %zero: f32[] = 0.0
  init %six: f32[] = 6.0
  %c: f32[1,4,8,8] = Conv(%x, %w) {pads=[1, 1, 1, 1]} @conv
  %a: f32[1,4,8,8] = Add(%c, %three) @add
  %k: f32[1,4,8,8] = Clip(%a, %zero, %six) @clip
  %m: f32[1,4,8,8] = Mul(%c, %k) @mul
  %y: f32[1,4,8,8] = Div(%m, %six) @div meta {"qgraph.activation_group": "x*Clip(x+3,0,6)/6", \
"qgraph.fused_producer": "Conv"}
}'''), x=(-1, 1), c=(-5, 4), a=(-2, 7), k=(0, 6), m=(-1, 24), y=(-0.4, 4))
    insert(m)
    sk = skeleton(m).replace(": f32[1,4,8,8]", "")
    assert "QuantizeLinear(%c, %c_scale" in sk
    assert "Add(%c_dequantized, %three)" in sk and "Mul(%c_dequantized, %k)" in sk
    assert sk.count("QuantizeLinear(") == 3  # x, c and y: nothing inside the group


SILU = '''graph g(%x: f32[1,3,8,8]) -> (%y) {
  init %w: f32[4,3,3,3] = <data 0>
  %c: f32[1,4,8,8] = Conv(%x, %w) {pads=[1, 1, 1, 1]} @conv
  %s: f32[1,4,8,8] = Sigmoid(%c) @sig
  %y: f32[1,4,8,8] = Mul(%c, %s) @mul meta {"qgraph.activation_group": "x*Sigmoid(x)", "qgraph.fused_producer": "Conv"}
}'''


def test_a_silu_group_is_one_unit_but_a_target_that_cannot_run_it_splits_it():
    m = with_ranges(model(SILU), x=(-1, 1), c=(-5, 4), s=(0, 1), y=(-0.3, 4))
    insert(m)
    sk = skeleton(m).replace(": f32[1,4,8,8]", "")
    assert "Sigmoid(%c_dequantized)" in sk and "Mul(%c_dequantized, %s)" in sk
    assert sk.count("QuantizeLinear(") == 3  # x, c and y: nothing inside the group
    # the HTP runs no float op inside a quantized graph: Sigmoid and Mul each quantized
    qnn = with_ranges(model(SILU), x=(-1, 1), c=(-5, 4), s=(0, 1), y=(-0.3, 4))
    insert(qnn, QuantConfig(target="qnn"))
    sk = skeleton(qnn).replace(": f32[1,4,8,8]", "")
    assert "QuantizeLinear(%s, %s_scale" in sk and "Mul(%c_dequantized, %s_dequantized)" in sk
    assert not any(fusion.is_marked(n) for n in qnn.graph)
    # the config asks for the same (ONNX Runtime's quantizer's form), by the group's form name
    split = with_ranges(model(SILU), x=(-1, 1), c=(-5, 4), s=(0, 1), y=(-0.3, 4))
    insert(split, QuantConfig.from_json({"split_groups": ["x*Sigmoid(x)"]}))
    assert "Mul(%c_dequantized, %s_dequantized)" in skeleton(split)
    assert QuantConfig.from_json(QuantConfig(split_groups={"x*Sigmoid(x)"}).to_json()).split_groups == {"x*Sigmoid(x)"}
    with pytest.raises(PassError, match="split_groups names 'x\\*Tanh\\(x\\)', not an activation group form"):
        insert(model(SILU), QuantConfig(split_groups={"x*Tanh(x)"}))
    with pytest.raises(QuantConfigError, match="split_groups must be a list"):
        QuantConfig.from_json({"split_groups": "x*Sigmoid(x)"})


def test_a_hard_sigmoid_inside_a_hard_swish_group_is_not_an_op_of_its_own():
    m = with_ranges(model('''graph g(%a: f32[1,4], %b: f32[1,4]) -> (%y) {
  %x: f32[1,4] = Add(%a, %b) @add
  %h: f32[1,4] = HardSigmoid(%x) {alpha=0.1666667} @hsig
  %y: f32[1,4] = Mul(%x, %h) @mul meta {"qgraph.activation_group": "x*HardSigmoid(x)"}
}'''), a=(-1, 1), b=(-1, 1), x=(-2, 2), h=(0, 1), y=(-0.4, 2))
    stats = insert(m)
    assert stats["quantized_nodes"] == 2 and stats["qdq_pairs"] == 4  # a, b, x, y; not h
    assert "QuantizeLinear(%h" not in skeleton(m)


def test_a_dead_channel_does_not_overflow_the_int32_bias():
    from qgraph.passes.lower_qdq import LowerQDQ
    from qgraph.quant.params import BIAS_BOUND

    w = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    w[2] = 1e-15  # a channel training left dead; its bias still matters
    m = parse_model('model opset {"": 17}\n' + CONV_RELU, {"w": w})
    m = with_ranges(m, x=(-1, 1), c=(-5, 4), y=(0, 4))
    insert(m)
    bias, w_scale = init(m, "b_quantized"), init(m, "w_scale")
    assert np.abs(bias).max() <= BIAS_BOUND and np.all(bias != np.iinfo(np.int32).max)
    assert w_scale[2] > 1e-12 and np.array_equal(init(m, "w_quantized")[2], np.zeros((3, 3, 3), np.int8))
    np.testing.assert_array_equal(init(m, "b_scale"), init(m, "x_scale") * w_scale)  # still scale_x * scale_w
    assert w_scale[0] == float(choose_params(-np.abs(w[0]).max(), np.abs(w[0]).max(), "int8", symmetric=True).scale)
    PassManager([LowerQDQ()], PassContext(verify_each=True)).run(m)  # no accumulator overflow


def test_exclude_by_name_and_op_type():
    m = with_ranges(model(CONV_RELU), x=(-1, 1), c=(-5, 4), y=(0, 4))
    assert insert(m, QuantConfig(exclude=("conv",))) == {}
    m = with_ranges(model(CONV_RELU), x=(-1, 1), c=(-5, 4), y=(0, 4))
    assert insert(m, QuantConfig(exclude=("Conv",))) == {}
    assert "Quantize" not in skeleton(m)


def test_missing_ranges_name_the_tensor_and_node():
    m = model(CONV_RELU)
    with pytest.raises(PassError, match="no calibration ranges.*'x'.*Conv node 'conv'.*run `calibrate` first"):
        insert(m)
    m = with_ranges(model(CONV_RELU), x=(-1, 1))
    with pytest.raises(PassError, match="no calibrated range for tensor 'y' .*Conv node 'conv'"):
        insert(m)
    m = with_ranges(model(CONV_RELU), x=(-1, float("inf")), y=(0, 1))
    with pytest.raises(PassError, match="range of tensor 'x'.* is unbounded"):
        insert(m)


def test_qat_pairs_are_kept():
    m = with_ranges(model('''graph g(%x: f32[1,3,8,8]) -> (%y) {
  init %w: f32[4,3,3,3] = <data 0>
  init %s: f32[] = 0.05
  init %zp: u8[] = [7]
  init %w2: f32[4,4,1,1] = <data 0>
  %xq: u8[1,3,8,8] = QuantizeLinear(%x, %s, %zp) @qat_q
  %xd: f32[1,3,8,8] = DequantizeLinear(%xq, %s, %zp) @qat_dq
  %c: f32[1,4,8,8] = Conv(%xd, %w) {pads=[1, 1, 1, 1]} @conv
  %cq: u8[1,4,8,8] = QuantizeLinear(%c, %s, %zp) @qat_q2
  %cd: f32[1,4,8,8] = DequantizeLinear(%cq, %s, %zp) @qat_dq2
  %y: f32[1,4,8,8] = Conv(%c, %w2) @conv2
}'''), x=(-1, 1), c=(-9, 9), y=(-5, 5))
    stats = insert(m)
    sk = skeleton(m)
    assert stats["qdq_pairs"] == 1  # only conv2's output: %c keeps its QAT pair, conv is left alone
    assert "Conv(%xd, %w)" in sk and "Conv(%cd, %w2_dequantized)" in sk  # conv2 reads the existing DQ
    assert float(init(m, "s")) == np.float32(0.05) and int(init(m, "zp")) == 7


# -- config ---------------------------------------------------------------------------------------
def test_overrides_by_op_node_and_tensor_and_opset_21():
    m = with_ranges(model('''graph g(%x: f32[1,3,8,8]) -> (%y) {
  init %w: f32[4,3,3,3] = <data 0>
  init %b: f32[4] = [0.1, -0.2, 0.3, 0.0]
  %c: f32[1,4,8,8] = Conv(%x, %w, %b) {pads=[1, 1, 1, 1]} @conv
  %r: f32[1,4,8,8] = Relu(%c) @relu meta {"qgraph.fused_producer": "Conv"}
  %y: f32[1,4,8,8] = Add(%r, %r) @add
}'''), x=(-1, 1), c=(-5, 4), r=(0, 4), y=(0, 8))
    cfg = QuantConfig.from_json({
        "op_types": {"Conv": {"activation": {"dtype": "int16"}, "weight": {"dtype": "int4"}}},
        "nodes": {"add": {"activation": {"dtype": "int8", "symmetric": True}}},
        "tensors": {"x": {"dtype": "uint16"}, "b": {}},
    })
    insert(m, cfg)
    assert init(m, "x_zero_point").dtype == np.uint16
    assert m.graph.initializers["w_quantized"].const_value.dtype.name == "INT4"
    assert init(m, "r_zero_point").dtype == np.int16  # the fused Relu's output follows its Conv
    assert init(m, "y_zero_point").dtype == np.int8 and int(init(m, "y_zero_point")) == 0
    assert m.opset_imports[""] == 21 and m.ir_version >= 10
    proto = qgraph.to_proto(m)
    onnx.checker.check_model(proto, full_check=True)
    x = RNG.uniform(-1, 1, (1, 3, 8, 8)).astype(np.float32)
    (got,) = run_qdq(proto, {"x": x})
    assert got.shape == (1, 4, 8, 8)


def test_pow2_scales_and_reduce_range():
    m = with_ranges(model(CONV_RELU), x=(-1, 1), c=(-5, 4), y=(0, 3))
    insert(m, pow2_scales=True)
    for name in ("x_scale", "y_scale", "w_scale", "b_scale"):
        s = init(m, name).astype(np.float64)
        assert np.all(np.exp2(np.round(np.log2(s))) == s), name
    assert float(init(m, "y_scale")) == 2.0 ** -6  # 3 / 255 rounded up
    m = with_ranges(model(CONV_RELU), x=(-1, 1), c=(-5, 4), y=(0, 3))
    insert(m, reduce_range=True)
    assert np.abs(init(m, "w_quantized")).max() == 64  # reduced range [-64, 64]


def test_choose_params_pow2():
    p = choose_params(-1.0, 3.0, "uint8", pow2=True)  # 4 / 255 = 0.0157 -> 2^-5
    assert float(p.scale) == 2.0 ** -5 and int(p.zero_point) == 32  # round(0 - (-1) / 2^-5)
    p = choose_params(np.array([-1.0, 0.0]), np.array([1.0, 0.0]), "int8", symmetric=True, axis=0, pow2=True)
    assert p.scale.tolist() == [2.0 ** -6, 1.0] and p.zero_point.tolist() == [0, 0]
    assert choose_params(0.0, 1.0, "uint8", pow2=False).scale == np.float32(1 / 255)


def test_config_json_round_trip_and_file(tmp_path):
    data = {"activation": {"dtype": "int8", "symmetric": True}, "weight": {"per_channel": False},
            "pow2_scales": True, "exclude": ["Softmax"], "op_types": {"MatMul": {"activation": {"dtype": "int16"}}},
            "nodes": {"conv1": {"weight": {"dtype": "int4"}}}, "tensors": {"input": {"dtype": "uint16"}}}
    cfg = QuantConfig.from_json(data)
    assert cfg.activation.dtype is int_type("int8") and cfg.weight.per_channel is False
    assert cfg.weight.dtype is int_type("int8") and cfg.weight.symmetric  # keys not named keep defaults
    assert QuantConfig.from_json(cfg.to_json()) == cfg
    path = tmp_path / "q.json"
    path.write_text(json.dumps(data))
    assert QuantConfig.load(str(path)) == cfg
    m = with_ranges(model(CONV_RELU), x=(-1, 1), c=(-5, 4), y=(0, 4))
    run_pipeline(m, f"insert-qdq(config={path},pow2-scales=false)")
    assert init(m, "x_zero_point").dtype == np.int8 and init(m, "w_scale").shape == ()


@pytest.mark.parametrize("data, message", [
    ({"activations": {}}, "unknown key 'activations'"),
    ({"weight": {"dtype": "int32"}}, "weight.dtype must be one of int8, uint8, int16, uint16, int4, uint4"),
    ({"weight": {"bits": 8}}, "weight: unknown key 'bits'"),
    ({"nodes": {"conv1": {"weights": {}}}}, "nodes.conv1: unknown key 'weights'"),
    ({"nodes": {"conv1": {"weight": {"symmetric": "yes"}}}}, "nodes.conv1.weight.symmetric must be true or false"),
    ({"exclude": "Conv"}, "exclude must be a list"),
    ({"activation": {"per_channel": True}}, "per_channel applies to weights only"),
    ([], "expected a JSON object"),
])
def test_config_errors_name_the_key(data, message):
    with pytest.raises(QuantConfigError, match=message):
        QuantConfig.from_json(data)


def test_config_load_errors(tmp_path):
    with pytest.raises(QuantConfigError, match="cannot read the quantization config"):
        QuantConfig.load(str(tmp_path / "missing.json"))


# -- opsets ---------------------------------------------------------------------------------------
OLD_OPS = '''graph g(%x: f32[1,3,8,8]) -> (%y, %sq) {
  init %w: f32[4,3,3,3] = <data 0>
  %c: f32[1,4,8,8] = Conv(%x, %w) {pads=[1, 1, 1, 1]} @conv
  %y: f32[1,4,8,8] = Softmax(%c) @softmax
  %p: f32[1,4,1,1] = GlobalAveragePool(%c) @gap
  %sq: f32[1,4] = Squeeze(%p) {axes=[2, 3]} @squeeze
}'''


def test_opset_11_is_raised_to_13_for_per_channel_and_old_ops_adapted():
    float_proto = qgraph.to_proto(model(OLD_OPS, opset=11))
    m = model(OLD_OPS, opset=11)
    x = RNG.uniform(-1, 1, (1, 3, 8, 8)).astype(np.float32)
    m.calibration = calibrate(m, {"x": x})
    insert(m)
    assert m.opset_imports[""] == 13
    proto = qgraph.to_proto(m)
    onnx.checker.check_model(proto, full_check=True)
    ref = session(float_proto).run(None, {"x": x})
    got = run_qdq(proto, {"x": x})
    # Softmax-11 over axis 1 of a rank-4 tensor normalizes over C*H*W: kept through Flatten/Reshape
    np.testing.assert_allclose(got[0].sum(), 1.0, rtol=1e-4)
    assert sqnr(ref[0], got[0]) > 25 and sqnr(ref[1], got[1]) > 25
    assert [o.name for o in proto.graph.output] == ["y", "sq"]


def test_an_op_that_cannot_be_upgraded_is_refused_before_any_change():
    m = with_ranges(model('''graph g(%x: f32[1,3,8,8], %grid: f32[1,8,8,2]) -> (%z) {
  init %w: f32[4,3,3,3] = <data 0>
  %y: f32[1,4,8,8] = Conv(%x, %w) {pads=[1, 1, 1, 1]} @conv
  %z: f32[1,4,8,8] = GridSample(%y, %grid) @grid
}''', opset=16), x=(-1, 1), y=(-5, 4))
    before = graph_text(m)
    with pytest.raises(PassError, match="GridSample node 'grid' changes meaning between opset 16 and 21"):
        insert(m, QuantConfig.from_json({"weight": {"dtype": "int4"}}))
    assert graph_text(m) == before


def test_8bit_per_tensor_keeps_an_old_opset():
    m = with_ranges(model(CONV_RELU, opset=11), x=(-1, 1), c=(-5, 4), y=(0, 4))
    insert(m, per_channel=False)
    assert m.opset_imports[""] == 11
    onnx.checker.check_model(qgraph.to_proto(m), full_check=True)


# -- numerics against float and against ONNX Runtime's quantizer -----------------------------------
def test_small_net_with_conv_transpose_concat_add_runs_close_to_float():
    m = model('''graph g(%x: f32[1,3,8,8]) -> (%y) {
  init %w: f32[4,3,3,3] = <data 0>
  init %w2: f32[4,4,1,1] = <data 0>
  init %k: f32[] = 0.5
  %c: f32[1,4,8,8] = Conv(%x, %w) {pads=[1, 1, 1, 1]} @conv
  %r: f32[1,4,8,8] = Relu(%c) @relu meta {"qgraph.fused_producer": "Conv"}
  %t: f32[1,4,8,8] = ConvTranspose(%r, %w2) @deconv
  %a: f32[1,4,8,8] = Add(%t, %c) @add
  %s: f32[1,8,8,8] = Concat(%a, %r) {axis=1} @cat
  %p: f32[1,8,4,4] = AveragePool(%s) {kernel_shape=[2, 2], strides=[2, 2]} @pool
  %y: f32[1,8,4,4] = Mul(%p, %k) @mul
}''')
    x = RNG.uniform(-1, 1, (16, 3, 8, 8)).astype(np.float32)
    m.calibration = calibrate(m, {"x": x})
    float_proto = qgraph.to_proto(m)
    stats = insert(m)
    # the Relu mark is stale (%c has a second reader): Relu stays float between two pairs
    assert stats["quantized_nodes"] == 6 and stats["weights"] == 3  # w, w2 and the Mul constant
    sk = skeleton(m)
    assert "DequantizeLinear(%w2_quantized, %w2_scale, %w2_zero_point) {axis=1}" in sk  # ConvTranspose W [C, M, ..]
    assert "Conv(%x_dequantized, %w_dequantized)" in sk and "Relu(%c_dequantized)" in sk
    proto = qgraph.to_proto(m)
    onnx.checker.check_model(proto, full_check=True)
    ref = [session(float_proto).run(None, {"x": x[i:i + 1]})[0] for i in range(4)]
    got = [run_qdq(proto, {"x": x[i:i + 1]})[0] for i in range(4)]
    assert sqnr(ref, got) > 28


def _example_cnn():
    m = qgraph.load(MODEL)
    run_pipeline(m, f"canonicalize,fuse,calibrate(data={DATA})")
    return m


def test_example_cnn_matches_ort_quantizer_and_float(tmp_path):
    m = _example_cnn()
    m.calibration.means = {}  # no bias correction (ORT's quantizer has none): the biases are ORT's
    fused = qgraph.to_proto(m)
    run_pipeline(m, "insert-qdq")
    proto = qgraph.to_proto(m)
    onnx.checker.check_model(proto, full_check=True)
    x = np.load(DATA)["input"]
    (ref,) = session(fused).run(None, {"input": x})
    (got,) = run_qdq(proto, {"input": x})
    assert sqnr(ref, got) > 30
    assert [o.name for o in proto.graph.output] == ["logits"]

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": x[i:i + 1]} for i in range(len(x))])

        def get_next(self):
            return next(self.it, None)

    onnx.save(fused, str(tmp_path / "f.onnx"))
    quantize_static(str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    ort_proto = onnx.load(str(tmp_path / "q.onnx"))
    # the same placement: which tensors are quantized, and the same parameters, value for value
    ours = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    theirs = {i.name.replace("_quantized_scale", "_scale").replace("_quantized_zero_point", "_zero_point"):
              numpy_helper.to_array(i) for i in ort_proto.graph.initializer}
    ort_acts = {n.input[0] for n in ort_proto.graph.node if n.op_type == "QuantizeLinear"}
    our_acts = {n.input[0].removesuffix("_float") for n in proto.graph.node if n.op_type == "QuantizeLinear"}
    assert our_acts == (ort_acts - {"logits_QuantizeLinear_Input"}) | {"logits"}
    for name, value in theirs.items():
        if name in ours:
            assert np.array_equal(value, ours[name]) and value.dtype == ours[name].dtype, name
    assert sum(name in ours for name in theirs) >= 20


def test_ppocr_cls_exports_valid_and_runs_close_to_float():
    import rapidocr_onnxruntime as rapidocr  # the test extra

    path = os.path.join(os.path.dirname(rapidocr.__file__), "models", "ch_ppocr_mobile_v2.0_cls_infer.onnx")
    m = qgraph.load(path)
    float_proto = onnx.load(path)
    run_pipeline(m, "canonicalize,fuse")
    rng = np.random.default_rng(0)
    samples = [{"x": rng.uniform(-1, 1, (1, 3, 48, 192)).astype(np.float32)} for _ in range(4)]
    m.calibration = calibrate(m, samples, batch_size=2)  # the model declares its batch dim as a literal -1
    stats = insert(m)
    assert stats["quantized_nodes"] > 70 and stats["weights"] == 54
    assert m.opset_imports[""] == 13
    proto = qgraph.to_proto(m)
    onnx.checker.check_model(proto, full_check=True)
    for s in samples[:2]:
        (ref,) = session(float_proto).run(None, s)
        (got,) = run_qdq(proto, s)
        assert np.abs(ref - got).max() < 0.1, (ref, got)


# -- recurrent weights as float16 values -------------------------------------------------------------
def _lstm_model(scale=0.4):
    """x [5, 1, 8] -> MatMul (quantized) -> LSTM (16 units; stays float) -> y."""
    from onnx import TensorProto, helper

    from qgraph.onnx import from_proto

    rng = np.random.default_rng(4)
    inits = {"m": rng.standard_normal((8, 8)).astype(np.float32),
             "W": (rng.standard_normal((1, 64, 8)) * scale).astype(np.float32),
             "R": (rng.standard_normal((1, 64, 16)) * scale).astype(np.float32),
             "B": rng.standard_normal((1, 128)).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "m"], ["h"], name="proj"),
             helper.make_node("LSTM", ["h", "W", "R", "B"], ["y"], hidden_size=16, name="lstm")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])), inits


def test_recurrent_weights_float16_rounds_w_and_r_only():
    """``recurrent_weights = "float16"``: the LSTM's W and R hold their nearest float16 values
    (float32 tensors), the bias and the quantized MatMul's weight are untouched, the float
    originals are gone; the default keeps them float32."""
    m, inits = _lstm_model()
    m.calibration = RangeMap({"x": Interval(-3, 3, "calibration"), "h": Interval(-9, 9, "calibration")})
    stats = insert(m, recurrent_weights="float16")
    assert stats["float16_weights"] == 2
    lstm = next(n for n in m.graph if n.op_type == "LSTM")
    w, r, b = (np.asarray(v.constant().numpy()) for v in lstm.inputs[1:4])
    for got, name in ((w, "W"), (r, "R")):
        assert got.dtype == np.float32
        assert np.array_equal(got, inits[name].astype(np.float16).astype(np.float32))
        assert not np.array_equal(got, inits[name])
    assert np.array_equal(b, inits["B"])
    assert "W" not in m.graph.initializers and "R" not in m.graph.initializers
    m2, _ = _lstm_model()
    m2.calibration = m.calibration
    assert "float16_weights" not in insert(m2)
    lstm2 = next(n for n in m2.graph if n.op_type == "LSTM")
    assert np.array_equal(lstm2.inputs[1].constant().numpy(), inits["W"])
    cfg = QuantConfig.from_json({"recurrent_weights": "float16"})
    assert cfg.recurrent_weights == "float16" and QuantConfig.from_json(cfg.to_json()) == cfg
    assert "recurrent_weights" not in QuantConfig().to_json()  # the default is not written
    with pytest.raises(QuantConfigError, match="recurrent_weights must be one of float32, float16, got 'bfloat16'"):
        QuantConfig.from_json({"recurrent_weights": "bfloat16"})


def test_recurrent_weights_past_float16_range_are_refused_naming_the_node():
    m, _ = _lstm_model(scale=1e5)
    m.calibration = RangeMap({"x": Interval(-3, 3, "calibration"), "h": Interval(-9, 9, "calibration")})
    before = {k: v.const_value.numpy().copy() for k, v in m.graph.initializers.items()}
    with pytest.raises(PassError, match="LSTM node 'lstm': weight 'W' holds .*past float16's largest value 65504; keep "
                                        "this model's recurrent weights float32"):
        insert(m, recurrent_weights="float16")
    assert {k: v.const_value.numpy().tolist() for k, v in m.graph.initializers.items()} == \
        {k: v.tolist() for k, v in before.items()}  # refused before any change
