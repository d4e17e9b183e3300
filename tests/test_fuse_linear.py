"""fuse-conv-bn, fuse-bias, fold-scale: structure (before / expected), legality refusals with
their reasons, numerics through ONNX Runtime, hypothesis properties, real models."""

import importlib.util
import os

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import qgraph
from qgraph.ir.text import parse_model
from qgraph.passes.fuse_linear import FoldScale, FuseBias, FuseConvBatchNorm
from qgraph.rewrite import MatchTracer, apply_rules
from qgraph.testing.ort import max_rel_error, random_feeds, run
from tests.conftest import LIGHT_DIR, graph_text, run_pipeline, same_ir

PASSES = ("fuse-conv-bn", "fuse-bias", "fold-scale")
RNG = np.random.default_rng(0)


def model_of(text, opset=17, **data):
    """A model from the text form; ``data`` fills initializers written as ``<data x>``."""
    return parse_model(f'model opset {{"": {opset}}}\n' + text, {k: np.asarray(v, np.float32) for k, v in data.items()})


def ops_left(m):
    return [n.op_type for n in m.graph]


def rnd(*shape, low=None):
    """Random float32 data; ``low`` gives values in [low, low + 1) (for variances, divisors)."""
    if low is not None:
        return (low + RNG.random(shape)).astype(np.float32)
    return RNG.standard_normal(shape).astype(np.float32)


def fused_error(m, pipeline, seed=0):
    """Run ``pipeline`` on ``m`` (verifying the IR); max relative output error against the original in ORT."""
    before = qgraph.to_proto(m)
    feeds = random_feeds(before, seed)
    ref = run(before, feeds)
    result = run_pipeline(m, pipeline)
    return max_rel_error(ref, run(qgraph.to_proto(m), feeds)), result


def refusal(m, pass_cls, rule):
    """Apply the pass's rules with a tracer; assert nothing fired and the IR is unchanged; the closest failure."""
    before = graph_text(m)
    tracer = MatchTracer()
    assert not apply_rules(m, pass_cls.rules, tracer=tracer)
    assert graph_text(m) == before
    return tracer.closest(rule).failure


# -- fuse-conv-bn: structure ---------------------------------------------------------------------
BN_CONV = """graph g(%x: f32[1,2,4,4]) -> (%y) {
  init %w: f32[2,1,1,1] = [1.0, 2.0]
  init %gamma: f32[2] = [1.0, 6.0]
  init %beta: f32[2] = [0.25, 1.0]
  init %mean: f32[2] = [1.0, 2.0]
  init %var: f32[2] = [3.0, 8.0]
  %c = Conv(%x, %w) {group=2} @conv
  %y = BatchNormalization(%c, %gamma, %beta, %mean, %var) {epsilon=1.0} @bn
}"""

# s = gamma / sqrt(var + 1) = [0.5, 2]; w * s = [0.5, 4]; (0 - mean) * s + beta = [-0.25, -3]
BN_CONV_EXPECTED = """graph g(%x: f32[1,2,4,4]) -> (%y) {
  init %w_fused: f32[2,1,1,1] = [0.5, 4.0]
  init %conv_bias: f32[2] = [-0.25, -3.0]
  %y = Conv(%x, %w_fused, %conv_bias) {group=2} @conv
}"""


def test_conv_bn_folds_into_conv_without_bias():
    m = model_of(BN_CONV)
    res = run_pipeline(m, "fuse-conv-bn,dead-code-elimination")
    assert res.records[0].stats == {"BatchNormIntoLinear": 1}
    assert same_ir(m, BN_CONV_EXPECTED), graph_text(m)


@pytest.mark.parametrize("opset, attrs", [
    (1, "{consumed_inputs=[0, 0, 0, 0, 0], epsilon=1.0, is_test=1, spatial=1}"),
    (6, "{epsilon=1.0, is_test=1}"),
    (7, "{epsilon=1.0, spatial=1}"),
    (9, "{epsilon=1.0, momentum=0.5}"),
    (14, "{epsilon=1.0, training_mode=0}"),
    (15, "{epsilon=1.0}"),
])
def test_conv_bn_folds_in_every_opset(opset, attrs):
    m = model_of(BN_CONV.replace("{epsilon=1.0}", attrs), opset)
    run_pipeline(m, "fuse-conv-bn,dead-code-elimination")
    assert same_ir(m, BN_CONV_EXPECTED), graph_text(m)


def test_conv_bn_with_bias_numerics_and_names():
    m = model_of("""graph g(%x: f32[2,3,8,8]) -> (%y) {
  init %w: f32[4,3,3,3] = <data w>
  init %b: f32[4] = <data b>
  init %gamma: f32[4] = <data gamma>
  init %beta: f32[4] = <data beta>
  init %mean: f32[4] = <data mean>
  init %var: f32[4] = <data var>
  %c = Conv(%x, %w, %b) {pads=[1, 1, 1, 1], strides=[2, 1]} @conv
  %n = BatchNormalization(%c, %gamma, %beta, %mean, %var) @bn
  %y = Relu(%n) @relu
}""", w=rnd(4, 3, 3, 3), b=rnd(4), gamma=rnd(4), beta=rnd(4), mean=rnd(4), var=rnd(4, low=0.1))
    err, _ = fused_error(m, "fuse-conv-bn,dead-code-elimination")
    assert err <= 1e-5
    assert ops_left(m) == ["Conv", "Relu"]
    conv = m.graph.nodes[0]
    assert conv.name == "conv" and conv.output.name == "c"
    assert [v.name for v in conv.inputs] == ["x", "w_fused", "b_fused"]
    assert sorted(m.graph.initializers) == ["b_fused", "w_fused"]


@pytest.mark.parametrize("dtype, linear, tol", [  # ORT's CPU Conv has no float64 kernel
    ("f16", "Conv(%x, %w) @lin", 2e-3), ("f64", "Gemm(%x, %w) {transB=1} @lin", 1e-12)])
def test_float16_and_float64_weights_keep_their_dtype(dtype, linear, tol):
    np_dtype = {"f64": np.float64, "f16": np.float16}[dtype]
    x, w = ((1, 2, 5, 5), (3, 2, 3, 3)) if linear.startswith("Conv") else ((4, 2), (3, 2))
    data = dict(w=rnd(*w), gamma=rnd(3), beta=rnd(3), mean=rnd(3), var=rnd(3, low=0.5))
    m = parse_model(f"""model opset {{"": 17}}
graph g(%x: {dtype}[{','.join(map(str, x))}]) -> (%y) {{
  init %w: {dtype}[{','.join(map(str, w))}] = <data w>
  init %gamma: {dtype}[3] = <data gamma>
  init %beta: {dtype}[3] = <data beta>
  init %mean: {dtype}[3] = <data mean>
  init %var: {dtype}[3] = <data var>
  %c = {linear}
  %y = BatchNormalization(%c, %gamma, %beta, %mean, %var) @bn
}}""", {k: v.astype(np_dtype) for k, v in data.items()})
    err, _ = fused_error(m, "fuse-conv-bn")
    assert err <= tol
    node = m.graph.nodes[0]
    assert ops_left(m) == [node.op_type] and node.inputs[1].const_value.numpy().dtype == np_dtype


def test_folds_inside_subgraphs_with_outer_constants():
    m = model_of("""graph main(%c: bool[], %x: f32[1,2,4,4]) -> (%y) {
  init %w: f32[2,1,1,1] = [1.0, 2.0]
  init %gamma: f32[2] = [1.0, 6.0]
  init %beta: f32[2] = [0.25, 1.0]
  init %mean: f32[2] = [1.0, 2.0]
  init %var: f32[2] = [3.0, 8.0]
  %y = If(%c) {else_branch=graph e() -> (%n) {
    %n = Relu(%x)
  }, then_branch=graph t() -> (%r) {
    %cv = Conv(%x, %w) {group=2} @conv
    %r = BatchNormalization(%cv, %gamma, %beta, %mean, %var) {epsilon=1.0} @bn
  }}
}""")
    run_pipeline(m, "fuse-conv-bn,dead-code-elimination")
    assert same_ir(m, """graph main(%c: bool[], %x: f32[1,2,4,4]) -> (%y) {
  %y = If(%c) {else_branch=graph e() -> (%n) {
    %n = Relu(%x)
  }, then_branch=graph t() -> (%r) {
    init %w_fused: f32[2,1,1,1] = [0.5, 4.0]
    init %conv_bias: f32[2] = [-0.25, -3.0]
    %r = Conv(%x, %w_fused, %conv_bias) {group=2} @conv
  }}
}"""), graph_text(m)


def test_shared_weight_is_not_changed_in_place():
    w = rnd(4, 3, 1, 1)
    m = model_of("""graph g(%x: f32[1,3,4,4]) -> (%y, %z) {
  init %w: f32[4,3,1,1] = <data w>
  init %gamma: f32[4] = <data gamma>
  init %beta: f32[4] = <data beta>
  init %mean: f32[4] = <data mean>
  init %var: f32[4] = <data var>
  %c = Conv(%x, %w) @conv_bn
  %y = BatchNormalization(%c, %gamma, %beta, %mean, %var) @bn
  %z = Conv(%x, %w) @conv_plain
}""", w=w, gamma=rnd(4), beta=rnd(4), mean=rnd(4), var=rnd(4, low=0.1))
    err, _ = fused_error(m, "fuse-conv-bn,dead-code-elimination")
    assert err <= 1e-5
    plain = [n for n in m.graph if n.name == "conv_plain"][0]
    assert plain.inputs[1].name == "w" and np.array_equal(plain.inputs[1].const_value.numpy(), w)
    assert [n.name for n in m.graph if n.inputs[1].name == "w_fused"] == ["conv_bn"]


def test_constant_node_params_fold():
    m = model_of("""graph g(%x: f32[1,2,3,3]) -> (%y) {
  %w = Constant() {value=tensor<f32[2,2,1,1]> [1.0, 2.0, 3.0, 4.0]}
  %gamma = Constant() {value=tensor<f32[2]> [1.0, 2.0]}
  %beta = Constant() {value=tensor<f32[2]> [0.5, 0.5]}
  %mean = Constant() {value=tensor<f32[2]> [0.1, 0.2]}
  %var = Constant() {value=tensor<f32[2]> [1.0, 4.0]}
  %c = Conv(%x, %w) @conv
  %y = BatchNormalization(%c, %gamma, %beta, %mean, %var) @bn
}""")
    err, _ = fused_error(m, "fuse-conv-bn,dead-code-elimination")
    assert err <= 1e-5 and ops_left(m) == ["Conv"]


@pytest.mark.parametrize("group, kernel", [(1, (3, 3)), (2, (3, 3)), (3, (2,)), (2, (1, 2, 2))])
def test_conv_transpose_bn_grouped(group, kernel):
    cin, cout_per_group = 6, 2
    spatial = [5] * len(kernel)
    rank = 2 + len(kernel)
    m = model_of(f"""graph g(%x: f32[1,{cin},{','.join(map(str, spatial))}]) -> (%y) {{
  init %w: f32[{cin},{cout_per_group},{','.join(map(str, kernel))}] = <data w>
  init %b: f32[{cout_per_group * group}] = <data b>
  init %gamma: f32[{cout_per_group * group}] = <data gamma>
  init %beta: f32[{cout_per_group * group}] = <data beta>
  init %mean: f32[{cout_per_group * group}] = <data mean>
  init %var: f32[{cout_per_group * group}] = <data var>
  %c = ConvTranspose(%x, %w, %b) {{group={group}, strides={[2] * (rank - 2)}}} @deconv
  %y = BatchNormalization(%c, %gamma, %beta, %mean, %var) @bn
}}""", w=rnd(cin, cout_per_group, *kernel), b=rnd(cout_per_group * group), gamma=rnd(cout_per_group * group),
        beta=rnd(cout_per_group * group), mean=rnd(cout_per_group * group), var=rnd(cout_per_group * group, low=0.1))
    err, _ = fused_error(m, "fuse-conv-bn")
    assert err <= 1e-5 and ops_left(m) == ["ConvTranspose"]


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_bn_per_column(trans_b):
    b_shape = "5,4" if trans_b else "4,5"
    m = model_of(f"""graph g(%a: f32[3,4]) -> (%y) {{
  init %w: f32[{b_shape}] = <data w>
  init %c: f32[5] = <data c>
  init %gamma: f32[5] = <data gamma>
  init %beta: f32[5] = <data beta>
  init %mean: f32[5] = <data mean>
  init %var: f32[5] = <data var>
  %t = Gemm(%a, %w, %c) {{alpha=0.5, beta=2.0, transB={trans_b}}} @fc
  %y = BatchNormalization(%t, %gamma, %beta, %mean, %var) @bn
}}""", w=rnd(*map(int, b_shape.split(","))), c=rnd(5), gamma=rnd(5), beta=rnd(5), mean=rnd(5), var=rnd(5, low=0.1))
    err, _ = fused_error(m, "fuse-conv-bn")
    assert err <= 1e-5 and ops_left(m) == ["Gemm"]
    assert "beta" not in m.graph.nodes[0].attrs  # folded into the new C


# -- fuse-conv-bn: refusals ----------------------------------------------------------------------
@pytest.mark.parametrize("opset, bn, reason", [
    (6, "%y = BatchNormalization(%c, %gamma, %beta, %mean, %var) {is_test=0} @bn",
     "BatchNormalization node 'bn' has is_test=0 (training mode, opset 6)"),
    (6, "%y = BatchNormalization(%c, %gamma, %beta, %mean, %var) @bn", "is_test=0 (training mode, opset 6)"),
    (14, "%y, %rm, %rv = BatchNormalization(%c, %gamma, %beta, %mean, %var) {training_mode=1} @bn",
     "BatchNormalization node 'bn' has training_mode=1"),
    (9, "%y, %sm, %sv, %m1, %m2 = BatchNormalization(%c, %gamma, %beta, %mean, %var) @bn",
     "has statistics outputs ['sm', 'sv', 'm1', 'm2'] (training mode)"),
    (7, "%y = BatchNormalization(%c, %gamma, %beta, %mean, %var) {spatial=0} @bn", "spatial=0"),
])
def test_training_bn_is_refused(opset, bn, reason):
    m = model_of(BN_CONV.splitlines()[0] + "\n" + "\n".join(BN_CONV.splitlines()[1:-2]) + f"\n  {bn}\n}}", opset)
    failure = refusal(m, FuseConvBatchNorm, "BatchNormIntoLinear")
    assert reason in failure.reason and failure.node.name == "bn"


@pytest.mark.parametrize("edits, reason, node", [
    ([("-> (%y)", "-> (%y, %c)")], "'c' (output of Conv node 'conv') is a graph output", "conv"),
    ([("@bn", "@bn\n  %z = Relu(%c) @other")],
     "'c' (output of Conv node 'conv') has 2 readers (BatchNormalization node 'bn', Relu node 'other')", "conv"),
    ([("(%x: f32[1,2,4,4])", "(%x: f32[1,2,4,4], %mean: f32[2])"), ("  init %mean: f32[2] = [1.0, 2.0]\n", "")],
     "BatchNormalization node 'bn' input 3: 'mean' is not a constant", "bn"),
    ([("(%x: f32[1,2,4,4])", "(%x: f32[1,2,4,4], %w: f32[2,1,1,1])"), ("  init %w: f32[2,1,1,1] = [1.0, 2.0]\n", "")],
     "Conv node 'conv' input 1: 'w' is not a constant", "conv"),
    ([("init %var: f32[2] = [3.0, 8.0]", "init %var: f32[3] = [3.0, 8.0, 1.0]")],
     "var 'var' has shape [3], expected [2] (the channels of Conv node 'conv')", "bn"),
    ([("init %var: f32[2] = [3.0, 8.0]", "init %var: f32[2] = [3.0, -1.0]")], "var + epsilon is not positive", "bn"),
])
def test_conv_bn_legality(edits, reason, node):
    text = BN_CONV
    for old, new in edits:
        assert old in text
        text = text.replace(old, new)
    failure = refusal(model_of(text), FuseConvBatchNorm, "BatchNormIntoLinear")
    assert reason in failure.reason and failure.node.name == node


def test_overridable_initializer_is_not_a_constant():
    m = model_of(BN_CONV)
    m.graph.inputs.append(m.graph.initializers["gamma"])  # a graph input with a default: not constant
    failure = refusal(m, FuseConvBatchNorm, "BatchNormIntoLinear")
    assert "'gamma' is not a constant" in failure.reason


# -- fuse-conv-bn: Mul / Add pairs ----------------------------------------------------------------
@pytest.mark.parametrize("s_shape, t_shape", [("4,1,1", "1,4,1,1"), ("1,4,1,1", "4,1,1"), ("", "1"), ("1", "")])
@pytest.mark.parametrize("mul_first, add_first", [(False, False), (True, True)])
def test_conv_mul_add_pair(s_shape, t_shape, mul_first, add_first):
    shape = lambda text: [int(d) for d in text.split(",")] if text else []  # noqa: E731
    mul = "Mul(%s, %n)" if mul_first else "Mul(%n, %s)"
    add = "Add(%t, %m)" if add_first else "Add(%m, %t)"
    m = model_of(f"""graph g(%x: f32[1,3,6,6]) -> (%y) {{
  init %w: f32[4,3,3,3] = <data w>
  init %b: f32[4] = <data b>
  init %s: f32[{s_shape}] = <data s>
  init %t: f32[{t_shape}] = <data t>
  %n = Conv(%x, %w, %b) @conv
  %m = {mul} @mul
  %y = {add} @add
}}""", w=rnd(4, 3, 3, 3), b=rnd(4), s=rnd(*shape(s_shape)), t=rnd(*shape(t_shape)))
    err, res = fused_error(m, "fuse-conv-bn")
    assert err <= 1e-5 and ops_left(m) == ["Conv"]
    assert res.records[0].stats == {"AffineIntoLinear": 1}


def test_bn_then_unsqueezed_mul_add_like_densenet():
    """light_densenet121 / light_inception_v2: Conv, BatchNormalization, then Mul / Add by [C,1,1]."""
    m = model_of("""graph g(%x: f32[1,3,6,6]) -> (%y) {
  init %w: f32[4,3,1,1] = <data w>
  init %gamma: f32[4] = <data gamma>
  init %beta: f32[4] = <data beta>
  init %mean: f32[4] = <data mean>
  init %var: f32[4] = <data var>
  init %s: f32[4,1,1] = <data s>
  init %t: f32[4,1,1] = <data t>
  %c = Conv(%x, %w) @conv
  %n = BatchNormalization(%c, %gamma, %beta, %mean, %var) @bn
  %m = Mul(%n, %s) @mul
  %a = Add(%m, %t) @add
  %y = Relu(%a) @relu
}""", w=rnd(4, 3, 1, 1), gamma=rnd(4), beta=rnd(4), mean=rnd(4), var=rnd(4, low=0.1), s=rnd(4, 1, 1), t=rnd(4, 1, 1))
    err, res = fused_error(m, "fuse-conv-bn,dead-code-elimination")
    assert err <= 1e-5 and ops_left(m) == ["Conv", "Relu"]
    assert res.records[0].stats == {"BatchNormIntoLinear": 1, "AffineIntoLinear": 1}
    assert len(m.graph.initializers) == 2  # one weight, one bias


@pytest.mark.parametrize("s_shape, reason", [
    ("4", "constant 's' of shape [4] varies along axis -1, not only the channel axis -3"),
    ("1,1,4,1", "varies along axis -2"),
    ("1,1,1,1,1", "constant 's' has rank 5, but the tensor it scales has rank 4"),
    ("2,1,1", "has 2 entries on the channel axis, the tensor has 4 channels"),
])
def test_mul_add_pair_must_be_per_channel(s_shape, reason):
    dims = [int(d) for d in s_shape.split(",")]
    m = model_of(f"""graph g(%x: f32[1,3,4,4]) -> (%y) {{
  init %w: f32[4,3,1,1] = <data w>
  init %s: f32[{s_shape}] = <data s>
  init %t: f32[4,1,1] = <data t>
  %n = Conv(%x, %w) @conv
  %m = Mul(%n, %s) @mul
  %y = Add(%m, %t) @add
}}""", w=rnd(4, 3, 1, 1), s=rnd(*dims), t=rnd(4, 1, 1))
    failure = refusal(m, FuseConvBatchNorm, "AffineIntoLinear")
    assert "Mul node 'mul'" in failure.reason and reason in failure.reason


@pytest.mark.parametrize("trans_b, s_shape", [(0, "5"), (1, "1,5"), (0, "")])
def test_gemm_mul_add_pair(trans_b, s_shape):
    m = model_of(f"""graph g(%a: f32[3,4]) -> (%y) {{
  init %w: f32[{'5,4' if trans_b else '4,5'}] = <data w>
  init %s: f32[{s_shape}] = <data s>
  init %t: f32[5] = <data t>
  %n = Gemm(%a, %w) {{transB={trans_b}}} @fc
  %m = Mul(%n, %s) @mul
  %y = Add(%t, %m) @add
}}""", w=rnd(5, 4) if trans_b else rnd(4, 5), s=rnd(*[int(d) for d in s_shape.split(",") if d]), t=rnd(5))
    err, _ = fused_error(m, "fuse-conv-bn")
    assert err <= 1e-5 and ops_left(m) == ["Gemm"]


def test_legacy_broadcast_axis_opset6():
    """Before opset 7, Mul / Add with broadcast=1, axis=1 apply a [C] constant on the channel axis."""
    m = model_of("""graph g(%x: f32[1,2,3,3]) -> (%y) {
  init %w: f32[2,1,1,1] = [1.0, 2.0]
  init %s: f32[2] = [2.0, 3.0]
  init %t: f32[2] = [0.5, 0.25]
  %n = Conv(%x, %w) {group=2} @conv
  %m = Mul(%n, %s) {axis=1, broadcast=1} @mul
  %y = Add(%m, %t) {axis=1, broadcast=1} @add
}""", opset=6)
    run_pipeline(m, "fuse-conv-bn,dead-code-elimination")
    assert same_ir(m, """graph g(%x: f32[1,2,3,3]) -> (%y) {
  init %w_fused: f32[2,1,1,1] = [2.0, 6.0]
  init %conv_bias: f32[2] = [0.5, 0.25]
  %y = Conv(%x, %w_fused, %conv_bias) {group=2} @conv
}"""), graph_text(m)


# -- fuse-bias -----------------------------------------------------------------------------------
def test_matmul_add_becomes_gemm():
    m = model_of("""graph g(%a: f32[2,3]) -> (%y) {
  init %w: f32[3,2] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
  init %c: f32[2] = [0.5, -0.5]
  %t = MatMul(%a, %w) @fc
  %y: f32[2,2] = Add(%t, %c) @add
}""")
    err, res = fused_error(m, "fuse-bias")
    assert err <= 1e-5 and res.records[0].stats == {"MatMulAddToGemm": 1}
    assert same_ir(m, """graph g(%a: f32[2,3]) -> (%y) {
  init %w: f32[3,2] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
  init %c: f32[2] = [0.5, -0.5]
  %y: f32[2,2] = Gemm(%a, %w, %c) @fc
}"""), graph_text(m)


@pytest.mark.parametrize("x_decl, producer, c_shape", [
    ("%x: f32[5,2,3]", "%a = Flatten(%x) {axis=1}", "1,4"),  # rank 2 from the producer ...
    ("%x: f32[5,6]", "%a = Reshape(%x, %shape)", ""),
    ("%x: f32[5,6]", "%a = Gemm(%x, %g)", "4"),
    ("%x: f32[5,6]", "%a: f32[5,6] = Relu(%x)", "5,4"),  # ... or from the type, which also gives M
])
def test_matmul_add_rank_from_producer(x_decl, producer, c_shape):
    m = model_of(f"""graph g({x_decl}) -> (%y) {{
  init %shape: i64[2] = [5, 6]
  init %g: f32[6,6] = <data g>
  init %w: f32[6,4] = <data w>
  init %c: f32[{c_shape}] = <data c>
  {producer} @prod
  %t = MatMul(%a, %w) @fc
  %y = Add(%c, %t) @add
}}""", g=rnd(6, 6), w=rnd(6, 4), c=rnd(*[int(d) for d in c_shape.split(",") if d]))
    err, _ = fused_error(m, "fuse-bias,dead-code-elimination")
    assert err <= 1e-5 and ops_left(m) == [producer.split("= ")[1].split("(")[0], "Gemm"]


@pytest.mark.parametrize("a_decl, c_shape, reason, node", [
    ("%a: f32[2,5,3]", "4", "MatMul node 'fc': A 'a' has rank 3; Gemm takes only a 2-D A, so the MatMul stays", "fc"),
    ("%a: f32[*]", "4", "MatMul node 'fc': the rank of A 'a' is unknown", "fc"),
    ("%a: f32[N,3]", "2,4", "Add node 'add': C 'c' of shape [2, 4] does not broadcast to the MatMul output [M, 4]",
     "add"),
    ("%a: f32[2,3]", "1,1,4", "C 'c' of shape [1, 1, 4] does not broadcast", "add"),
])
def test_matmul_add_legality(a_decl, c_shape, reason, node):
    m = model_of(f"""graph g({a_decl}) -> (%y) {{
  init %w: f32[3,4] = <data w>
  init %c: f32[{c_shape}] = <data c>
  %t = MatMul(%a, %w) @fc
  %y = Add(%t, %c) @add
}}""", w=rnd(3, 4), c=rnd(*map(int, c_shape.split(","))))
    failure = refusal(m, FuseBias, "MatMulAddToGemm")
    assert reason in failure.reason and failure.node.name == node


def test_integer_matmul_is_refused():
    m = model_of("""graph g(%a: i32[2,3]) -> (%y) {
  init %w: i32[3,2] = [1, 2, 3, 4, 5, 6]
  init %c: i32[2] = [1, 2]
  %t = MatMul(%a, %w) @fc
  %y = Add(%t, %c) @add
}""")
    assert "MatMul node 'fc' input 'w' is INT32; only float tensors are folded" in \
        refusal(m, FuseBias, "MatMulAddToGemm").reason


def test_conv_add_adds_to_existing_bias():
    m = model_of("""graph g(%x: f32[1,2,3,3]) -> (%y) {
  init %w: f32[2,2,1,1] = [1.0, 2.0, 3.0, 4.0]
  init %b: f32[2] = [1.0, 2.0]
  init %d: f32[1,2,1,1] = [0.5, 0.25]
  %c = Conv(%x, %w, %b) @conv
  %y = Add(%c, %d) @add
}""")
    err, _ = fused_error(m, "fuse-bias,dead-code-elimination")
    assert err <= 1e-5
    assert same_ir(m, """graph g(%x: f32[1,2,3,3]) -> (%y) {
  init %w: f32[2,2,1,1] = [1.0, 2.0, 3.0, 4.0]
  init %b_fused: f32[2] = [1.5, 2.25]
  %y = Conv(%x, %w, %b_fused) @conv
}"""), graph_text(m)


@pytest.mark.parametrize("op, w_shape, d_shape", [
    ("Conv", "4,3,3,3", "4,1,1"), ("Conv", "4,3,3,3", ""), ("ConvTranspose", "3,4,3,3", "1,4,1,1"),
    ("Gemm", "5,4", "4"), ("Gemm", "5,4", "1,4"),
])
def test_bias_add_numerics(op, w_shape, d_shape):
    dims = lambda text: [int(d) for d in text.split(",") if d]  # noqa: E731
    if op == "Gemm":
        x, node, w = "%x: f32[2,5]", "Gemm(%x, %w, %b) {beta=0.5}", rnd(*dims(w_shape))
    else:
        x, node, w = "%x: f32[1,3,5,5]", f"{op}(%x, %w, %b)", rnd(*dims(w_shape))
    m = model_of(f"""graph g({x}) -> (%y) {{
  init %w: f32[{','.join(map(str, w.shape))}] = <data w>
  init %b: f32[4] = <data b>
  init %d: f32[{d_shape}] = <data d>
  %c = {node} @lin
  %y = Add(%d, %c) @add
}}""", w=w, b=rnd(4), d=rnd(*dims(d_shape)))
    err, res = fused_error(m, "fuse-bias")
    assert err <= 1e-5 and ops_left(m) == [op] and res.records[0].stats == {"BiasAddIntoLinear": 1}


def test_bias_add_refuses_spatial_constant():
    m = model_of("""graph g(%x: f32[1,2,3,3]) -> (%y) {
  init %w: f32[2,2,1,1] = [1.0, 2.0, 3.0, 4.0]
  init %d: f32[3] = [0.5, 0.25, 1.0]
  %c = Conv(%x, %w) @conv
  %y = Add(%c, %d) @add
}""")
    failure = refusal(m, FuseBias, "BiasAddIntoLinear")
    assert "Add node 'add': constant 'd' of shape [3] varies along axis -1" in failure.reason


# -- fold-scale ----------------------------------------------------------------------------------
@pytest.mark.parametrize("op, scale, s_shape", [
    ("Conv", "Mul(%c, %s)", "4,1,1"), ("Conv", "Div(%c, %s)", ""), ("Conv", "Mul(%s, %c)", "1,4,1,1"),
    ("ConvTranspose", "Mul(%c, %s)", "4,1,1"), ("Gemm", "Div(%c, %s)", "4"), ("Gemm", "Mul(%c, %s)", "1,4"),
    ("MatMul", "Mul(%c, %s)", "4"), ("MatMul", "Mul(%c, %s)", "1,1,4"),
])
def test_scale_after(op, scale, s_shape):
    dims = lambda text: [int(d) for d in text.split(",") if d]  # noqa: E731
    if op == "Conv":
        x, node, w = "%x: f32[1,4,5,5]", "Conv(%x, %w, %b) {group=2, pads=[1, 1, 1, 1]}", rnd(4, 2, 3, 3)
    elif op == "ConvTranspose":
        x, node, w = "%x: f32[1,4,5,5]", "ConvTranspose(%x, %w, %b) {group=2}", rnd(4, 2, 3, 3)
    elif op == "Gemm":
        x, node, w = "%x: f32[3,5]", "Gemm(%x, %w, %b) {beta=0.5, transB=1}", rnd(4, 5)
    else:
        x, node, w = "%x: f32[2,3,5]", "MatMul(%x, %w)", rnd(5, 4)
    m = model_of(f"""graph g({x}) -> (%y) {{
  init %w: f32[{','.join(map(str, w.shape))}] = <data w>
  init %b: f32[4] = <data b>
  init %s: f32[{s_shape}] = <data s>
  %c = {node} @lin
  %y = {scale} @scale
}}""", w=w, b=rnd(4), s=rnd(*dims(s_shape), low=0.5))
    err, res = fused_error(m, "fold-scale,dead-code-elimination")
    assert err <= 1e-5 and ops_left(m) == [op]
    assert res.records[0].stats == {"ScaleAfterLinear": 1}


@pytest.mark.parametrize("op, x_shape, scale, s_shape, attrs", [
    ("Conv", "1,4,6,6", "Mul(%x, %s)", "1,4,1,1", "{group=2, pads=[1, 1, 1, 1]}"),
    ("Conv", "1,6,6,6", "Div(%x, %s)", "6,1,1", "{group=3, pads=[1, 1, 1, 1], strides=[2, 2]}"),
    ("Conv", "1,4,6,6", "Mul(%s, %x)", "", "{auto_pad=\"SAME_UPPER\"}"),
    ("ConvTranspose", "1,4,6,6", "Mul(%x, %s)", "4,1,1", "{group=2}"),
    ("Gemm", "3,4", "Mul(%x, %s)", "1,4", "{transB=1}"),
    ("Gemm", "4,3", "Mul(%x, %s)", "4,1", "{transA=1}"),
    ("MatMul", "2,3,4", "Div(%x, %s)", "4", ""),
])
def test_scale_before(op, x_shape, scale, s_shape, attrs):
    dims = lambda text: [int(d) for d in text.split(",") if d]  # noqa: E731
    cin = dims(x_shape)[-2 if "transA=1" in attrs else 1 if op.startswith("Conv") else -1]
    if op == "Conv":
        w = rnd(6, cin // (3 if "group=3" in attrs else 2 if "group=2" in attrs else 1), 3, 3)
    elif op == "ConvTranspose":
        w = rnd(cin, 3, 3, 3)
    else:
        w = rnd(5, cin) if "transB=1" in attrs else rnd(cin, 5)
    inputs = "%m, %w, %b" if op == "Gemm" else "%m, %w"
    m = model_of(f"""graph g(%x: f32[{x_shape}]) -> (%y) {{
  init %w: f32[{','.join(map(str, w.shape))}] = <data w>
  init %b: f32[1] = [0.5]
  init %s: f32[{s_shape}] = <data s>
  %m = {scale} @scale
  %y = {op}({inputs}) {attrs} @lin
}}""".replace(" {} @", " @"), w=w, s=rnd(*dims(s_shape), low=0.5))
    err, res = fused_error(m, "fold-scale")
    assert err <= 1e-5 and ops_left(m) == [op]
    assert res.records[0].stats == {"ScaleBeforeLinear": 1}


def test_scale_before_keeps_graph_output_name():
    """The rewrite returns the linear node's own output; no Identity may appear for a graph output."""
    m = model_of("""graph g(%x: f32[1,2,3,3]) -> (%y) {
  init %w: f32[2,2,1,1] = [1.0, 2.0, 3.0, 4.0]
  init %s: f32[] = [2.0]
  %m = Mul(%x, %s) @scale
  %y = Conv(%m, %w) @conv
}""")
    run_pipeline(m, "fold-scale,dead-code-elimination")
    assert same_ir(m, """graph g(%x: f32[1,2,3,3]) -> (%y) {
  init %w_fused: f32[2,2,1,1] = [2.0, 4.0, 6.0, 8.0]
  %y = Conv(%x, %w_fused) @conv
}"""), graph_text(m)


@pytest.mark.parametrize("text, rule, reason, node", [
    ("""graph g(%x: f32[1,2,3,3]) -> (%y) {
  init %w: f32[2,2,1,1] = [1.0, 2.0, 3.0, 4.0]
  init %s: f32[2,1,1] = [2.0, 0.0]
  %c = Conv(%x, %w) @conv
  %y = Div(%c, %s) @div
}""", "ScaleAfterLinear", "Div node 'div' divides by 's', which has zeros", "div"),
    ("""graph g(%x: f32[1,2,3,3]) -> (%y, %z) {
  init %w: f32[2,2,1,1] = [1.0, 2.0, 3.0, 4.0]
  init %s: f32[] = [2.0]
  %m = Mul(%x, %s) @scale
  %y = Conv(%m, %w) @conv
  %z = Relu(%m) @relu
}""", "ScaleBeforeLinear", "'m' (output of Mul node 'scale') has 2 readers", "scale"),
    ("""graph g(%x: f32[1,2,3,3]) -> (%y) {
  init %w: f32[2,2,1,1] = [1.0, 2.0, 3.0, 4.0]
  init %s: f32[2,1,1] = [2.0, 3.0]
  %r = Relu(%x) @relu
  %m = Mul(%r, %s) @scale
  %y = Conv(%m, %w) @conv
}""", "ScaleBeforeLinear", "'r' has an unknown size on the channel axis -3, so the per-channel constant 's' "
      "may be broadcasting it to 2", "scale"),
    ("""graph g(%x: f32[1,2,3,3]) -> (%y) {
  init %w: f32[2,2,1,1] = [1.0, 2.0, 3.0, 4.0]
  init %s: f32[1,2,1,1] = [2.0, 3.0]
  %r = Relu(%x) @relu
  %m = Mul(%r, %s) @scale
  %y = Conv(%m, %w) @conv
}""", "ScaleBeforeLinear", "the rank of 'r' is unknown; the rank-4 constant 's' could be raising it", "scale"),
    ("""graph g(%x: f32[1,1,3,3]) -> (%y) {
  init %w: f32[2,2,1,1] = [1.0, 2.0, 3.0, 4.0]
  init %s: f32[2,1,1] = [2.0, 3.0]
  %m = Mul(%x, %s) @scale
  %y = Conv(%m, %w) @conv
}""", "ScaleBeforeLinear", "'x' has size 1 on the channel axis -3", "scale"),
    ("""graph g(%x: f32[2,3]) -> (%y) {
  init %w: f32[3] = [1.0, 2.0, 3.0]
  init %s: f32[2] = [2.0, 3.0]
  %c = MatMul(%x, %w) @mm
  %y = Mul(%c, %s) @scale
}""", "ScaleAfterLinear", "constant 's' of shape [2] is not a scalar, and the tensor it scales has no channel "
      "axis", "scale"),
])
def test_fold_scale_legality(text, rule, reason, node):
    failure = refusal(model_of(text), FoldScale, rule)
    assert reason in failure.reason and failure.node.name == node


def test_matmul_1d_weight_takes_scalar_only():
    m = model_of("""graph g(%x: f32[2,3]) -> (%y) {
  init %w: f32[3] = [1.0, 2.0, 3.0]
  init %s: f32[] = [2.0]
  %c = MatMul(%x, %w) @mm
  %y = Mul(%c, %s) @scale
}""")
    err, _ = fused_error(m, "fold-scale")
    assert err <= 1e-6 and ops_left(m) == ["MatMul"]


# -- property: random Conv / BN / Mul / Add / MatMul chains keep their outputs ---------------------
def _const(draw, name, shape, inits, positive=False):
    data = np.asarray(draw(st.lists(st.floats(0.25, 2.0) if positive else st.floats(-2, 2),
                                    min_size=int(np.prod(shape)), max_size=int(np.prod(shape)))), np.float32)
    inits.append(numpy_helper.from_array(data.reshape(shape), name))
    return name


@st.composite
def random_chains(draw):
    """x [N, C, H, W] through Conv / ConvTranspose / BN / Mul / Add / Div / Relu, then maybe
    Flatten into MatMul / Gemm / Add / Mul; extra readers and outputs test legality."""
    n, c, hw = draw(st.integers(1, 2)), draw(st.integers(1, 4)), draw(st.integers(3, 5))
    nodes, inits, outputs, live, c_in = [], [], [], "x", c
    k = [0]

    def fresh(prefix):
        k[0] += 1
        return f"{prefix}{k[0]}"

    def emit(op, inputs, **attrs):
        out = fresh("v")
        nodes.append(helper.make_node(op, inputs, [out], name=fresh(op.lower()), **attrs))
        return out

    def scale_shape(channels, rank):
        choice = draw(st.sampled_from(["c11", "1c11", "scalar", "one", "last"] if rank == 4
                                      else ["c", "1c", "scalar", "first"]))
        # "last" and "first" vary along a non-channel axis: they must be refused
        return {"c11": [channels, 1, 1], "1c11": [1, channels, 1, 1], "scalar": [], "one": [1],
                "last": [hw], "c": [channels], "1c": [1, channels],
                "first": [n, 1]}[choice]

    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["Conv", "ConvTranspose", "BN", "Mul", "Add", "Div", "Relu", "Affine"]))
        if kind in ("Conv", "ConvTranspose"):
            group = draw(st.sampled_from([g for g in (1, 2, 3) if c % g == 0]))
            out_c = group * draw(st.integers(1, 2))
            ksize = draw(st.sampled_from([1, 3]))
            w_shape = [out_c, c // group, ksize, ksize] if kind == "Conv" else [c, out_c // group, ksize, ksize]
            inputs = [live, _const(draw, fresh("w"), w_shape, inits)]
            if draw(st.booleans()):
                inputs.append(_const(draw, fresh("b"), [out_c], inits))
            live, c = emit(kind, inputs, group=group, pads=[ksize // 2] * 4), out_c
        elif kind == "BN":
            params = [_const(draw, fresh(p), [c], inits, positive=(p == "var")) for p in ("g", "be", "m", "var")]
            live = emit("BatchNormalization", [live] + params)
        elif kind == "Relu":
            live = emit("Relu", [live])
        elif kind == "Affine":  # Mul then Add, as exporters emit after a BatchNormalization
            live = emit("Mul", [live, _const(draw, fresh("s"), scale_shape(c, 4), inits)])
            live = emit("Add", [live, _const(draw, fresh("t"), scale_shape(c, 4), inits)])
        else:
            s = _const(draw, fresh("s"), scale_shape(c, 4), inits, positive=(kind == "Div"))
            live = emit(kind, [s, live] if kind != "Div" and draw(st.booleans()) else [live, s])
        if draw(st.integers(0, 5)) == 0:
            outputs.append(live)  # an intermediate graph output blocks folding into its producer
        if draw(st.integers(0, 5)) == 0:
            outputs.append(emit("Relu", [live]))  # a second reader does too
    if draw(st.booleans()):
        live, c = emit("Flatten", [live], axis=1), c * hw * hw
        for _ in range(draw(st.integers(1, 4))):
            kind = draw(st.sampled_from(["MatMul", "MatMulAdd", "Gemm", "Add", "Mul", "BN"]))
            if kind.startswith("MatMul"):
                out_c = draw(st.integers(1, 4))
                live, c = emit("MatMul", [live, _const(draw, fresh("w"), [c, out_c], inits)]), out_c
                if kind == "MatMulAdd":
                    live = emit("Add", [live, _const(draw, fresh("t"), scale_shape(c, 2), inits)])
            elif kind == "Gemm":
                out_c, trans_b = draw(st.integers(1, 4)), draw(st.integers(0, 1))
                w = _const(draw, fresh("w"), [out_c, c] if trans_b else [c, out_c], inits)
                live, c = emit("Gemm", [live, w, _const(draw, fresh("b"), [out_c], inits)], transB=trans_b,
                               beta=draw(st.sampled_from([1.0, 0.5]))), out_c
            elif kind == "BN":
                params = [_const(draw, fresh(p), [c], inits, positive=(p == "var")) for p in ("g", "be", "m", "var")]
                live = emit("BatchNormalization", [live] + params)
            else:
                s = _const(draw, fresh("s"), scale_shape(c, 2), inits)
                live = emit(kind, [live, s] if draw(st.booleans()) else [s, live])
    outputs.append(live)
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, c_in, hw, hw])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in dict.fromkeys(outputs)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_chains(), st.integers(0, 2**31 - 1))
def test_passes_preserve_outputs_on_random_chains(model, seed):
    feeds = random_feeds(model, seed)
    ref = run(model, feeds)
    # one pass alone, then all of them until none changes anything (fuse-bias can expose a Gemm
    # to fuse-conv-bn); afterwards no pass finds anything more to do
    for pipeline, rerun in [(p, [p]) for p in PASSES] + [(f"fixed-point({','.join(PASSES)})", PASSES)]:
        m = qgraph.load(model)
        run_pipeline(m, pipeline)
        assert max_rel_error(ref, run(qgraph.to_proto(m), feeds)) <= 1e-4, pipeline
        for name in rerun:
            assert not run_pipeline(m, name).modified, f"a second {name} changed the graph after {pipeline}"


# -- real models ---------------------------------------------------------------------------------
def _ppocr_cls():
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None:
        pytest.skip("rapidocr_onnxruntime is not installed")
    path = os.path.join(os.path.dirname(spec.origin), "models", "ch_ppocr_mobile_v2.0_cls_infer.onnx")
    if not os.path.exists(path):
        pytest.skip(f"{path} is missing")
    return onnx.load(path)


def test_ppocr_cls_folds_every_batch_norm():
    original = _ppocr_cls()
    original.graph.output.append(helper.make_tensor_value_info("linear_1.tmp_1", TensorProto.FLOAT, None))  # logits
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 3, 48, 192)).astype(np.float32)}
    ref = run(original, feeds)
    m = qgraph.load(original)
    run_pipeline(m, "cleanup")
    counts = lambda: {op: sum(n.op_type == op for n in m.graph) for op in ("BatchNormalization", "Conv")}  # noqa: E731
    before = counts()
    assert before["BatchNormalization"] == 35
    run_pipeline(m, "fuse-conv-bn,fuse-bias,fold-scale,cleanup")
    after = counts()
    assert after == {"BatchNormalization": 0, "Conv": before["Conv"]}
    assert max_rel_error(ref, run(qgraph.to_proto(m), feeds)) <= 1e-4
    assert not any(run_pipeline(m, name).modified for name in PASSES)


def test_ppocr_cls_after_canonicalize_turns_its_matmul_into_gemm():
    """With shapes inferred, the classifier head's MatMul (A from a dynamic Reshape) has a known rank."""
    from qgraph.errors import PipelineError
    from qgraph.passes import registry

    try:
        registry().parse("canonicalize")
    except PipelineError:
        pytest.skip("canonicalize is not registered")
    original = _ppocr_cls()
    feeds = {"x": np.random.default_rng(1).standard_normal((1, 3, 48, 192)).astype(np.float32)}
    m = qgraph.load(original)
    run_pipeline(m, "canonicalize,fuse-conv-bn,fuse-bias,fold-scale,cleanup")
    assert "BatchNormalization" not in ops_left(m) and "MatMul" not in ops_left(m) and "Gemm" in ops_left(m)
    assert max_rel_error(run(original, feeds), run(qgraph.to_proto(m), feeds)) <= 1e-4


def _fold_constant_of_shape(proto):
    """Turn ConstantOfShape / Unsqueeze of constants into initializers (the light models build
    their weights that way), and stop listing initializers as graph inputs (IR version 3 had
    to, which makes them overridable, so not constants); stands in for canonicalize."""
    known = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    kept = []
    for node in proto.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "ConstantOfShape" and node.input[0] in known:
            value = numpy_helper.to_array(attrs["value"]) if "value" in attrs else np.zeros(1, np.float32)
            known[node.output[0]] = np.full(known[node.input[0]], value.reshape(-1)[0], value.dtype)
        elif node.op_type == "Unsqueeze" and node.input[0] in known and len(node.input) == 1:
            known[node.output[0]] = np.expand_dims(known[node.input[0]], tuple(attrs["axes"]))
        else:
            kept.append(node)
            continue
        proto.graph.initializer.append(numpy_helper.from_array(known[node.output[0]], node.output[0]))
    del proto.graph.node[:]
    proto.graph.node.extend(kept)
    inputs = [i for i in proto.graph.input if i.name not in known]
    del proto.graph.input[:]
    proto.graph.input.extend(inputs)
    proto.ir_version = max(proto.ir_version, 4)
    return proto


@pytest.mark.parametrize("name", ["light_resnet50", "light_shufflenet", "light_densenet121", "light_inception_v2"])
def test_light_models_after_constant_folding(name):
    original = _fold_constant_of_shape(onnx.load(os.path.join(LIGHT_DIR, name + ".onnx")))
    feeds = random_feeds(original)
    ref = run(original, feeds)
    m = qgraph.load(original)
    run_pipeline(m, "cleanup")
    # densenet121 normalizes Concat outputs too (BN, Mul, Add, Relu, Conv): those stay
    after_conv = sum(n.op_type == "BatchNormalization" and n.inputs[0].producer().op_type == "Conv" for n in m.graph)
    bn_before = ops_left(m).count("BatchNormalization")
    assert after_conv > 0
    run_pipeline(m, "fuse-conv-bn,fuse-bias,fold-scale,cleanup")
    assert ops_left(m).count("BatchNormalization") == bn_before - after_conv
    assert ops_left(m).count("Mul") == ops_left(m).count("Add") == ops_left(m).count("BatchNormalization")
    assert max_rel_error(ref, run(qgraph.to_proto(m), feeds)) <= 1e-4
