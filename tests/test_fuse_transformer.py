"""fuse-layernorm and fuse-gelu: structure (before / expected), refusal reasons, numerics through
ONNX Runtime (standard op at new opsets, qgraph op exported back at old ones), hypothesis
properties, PP-OCRv4 rec; and the export of qgraph-domain ops as standard ONNX."""

from __future__ import annotations

import glob
import math
import os

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import qgraph
from qgraph.errors import QGraphError
from qgraph.ir import ops
from qgraph.ir.text import parse_model
from qgraph.onnx import decompose
from qgraph.passes import registry
from qgraph.passes.fuse_transformer import FuseGelu, FuseLayerNorm
from qgraph.rewrite import MatchTracer, apply_rules
from qgraph.testing.ort import max_rel_error, run
from tests.conftest import graph_text, run_pipeline, same_ir

SQRT2 = math.sqrt(2.0)


def opt(text: str, pipeline: str, opset: int):
    m = parse_model(f'model opset {{"": {opset}}}\n' + text)
    return m, run_pipeline(m, pipeline)


def refusal(text: str, rules, rule: str, opset: int = 12) -> str:
    """The tracer's reason for ``rule`` not firing on ``text`` (asserting nothing fired)."""
    m = parse_model(f'model opset {{"": {opset}}}\n' + text)
    tracer = MatchTracer()
    fired = apply_rules(m, rules, tracer=tracer)
    assert not fired.get(rule), fired
    return tracer.closest(rule).failure.reason


def fused_export(model: onnx.ModelProto, pipeline: str):
    """Fuse (verifying after every pass), export, check; returns (qgraph model, exported proto)."""
    m = qgraph.load(model)
    run_pipeline(m, pipeline)
    exported = qgraph.to_proto(m)
    onnx.checker.check_model(exported)
    return m, exported


def op_names(m) -> list[str]:
    return [str(n.op) for n in m.graph.all_nodes()]


# -- fuse-layernorm: structure -------------------------------------------------------------------
LN_TEXT = """graph g(%x: f32[2,3,4]) -> (%y) {
  init %eps: f32[] = [1e-05]
  init %two: f32[] = [2.0]
  init %gamma: f32[4] = [1.0, 2.0, 3.0, 4.0]
  init %beta: f32[4] = [0.5, 0.5, 0.5, 0.5]
  %mean = ReduceMean(%x) {axes=[-1]}
  %d = Sub(%x, %mean)
  %sq = Pow(%d, %two)
  %var = ReduceMean(%sq) {axes=[-1]}
  %ve = Add(%var, %eps)
  %std = Sqrt(%ve)
  %n = Div(%d, %std) @norm
  %s = Mul(%n, %gamma) @scale
  %y = Add(%s, %beta) @shift
}"""


def test_layernorm_old_opset_becomes_qgraph_op():
    m, res = opt(LN_TEXT, "fuse-layernorm,dead-code-elimination", opset=12)
    assert res.records[0].stats == {"LayerNormCore": 1, "FoldLayerNormScale": 1, "FoldLayerNormBias": 1}
    assert m.opset_imports == {"": 12, "qgraph": 1}
    assert same_ir(m, """graph g(%x: f32[2,3,4]) -> (%y) {
  init %gamma: f32[4] = [1.0, 2.0, 3.0, 4.0]
  init %beta: f32[4] = [0.5, 0.5, 0.5, 0.5]
  %y: f32[2,3,4] = qgraph::LayerNormalization(%x, %gamma, %beta) {axis=-1, epsilon=1e-05} @"shift/LayerNormalization"
}"""), graph_text(m)


def test_layernorm_opset17_becomes_onnx_op_from_mul_and_reciprocal_forms():
    text = """graph g(%x: f32[2,3,4]) -> (%y) {
  init %eps: f32[1] = [1e-06]
  init %gamma: f32[3,4] = <data g>
  %mean = ReduceMean(%x) {axes=[1, 2]}
  %d = Sub(%x, %mean)
  %sq = Mul(%d, %d)
  %var = ReduceMean(%sq) {axes=[-2, -1]}
  %ve = Add(%eps, %var)
  %std = Sqrt(%ve)
  %r = Reciprocal(%std)
  %n = Mul(%r, %d)
  %y = Mul(%gamma, %n) @scale
}"""
    gamma = np.arange(12, dtype=np.float32).reshape(3, 4)
    m = parse_model('model opset {"": 17}\n' + text, {"gamma": gamma})
    run_pipeline(m, "fuse-layernorm,dead-code-elimination")
    assert m.opset_imports == {"": 17}  # no qgraph op, no qgraph domain
    assert same_ir(m, """graph g(%x: f32[2,3,4]) -> (%y) {
  init %gamma: f32[3,4] = <data g>
  %y: f32[2,3,4] = LayerNormalization(%x, %gamma) {axis=-2, epsilon=1e-06} @"scale/LayerNormalization"
}""", {"gamma": gamma}), graph_text(m)


def test_layernorm_opset18_axes_input_without_gamma_gets_ones_scale():
    m, _ = opt("""graph g(%x: f32[2,4]) -> (%y) {
  init %axes: i64[1] = [-1]
  init %eps: f32[] = [1e-05]
  init %two: f32[] = [2.0]
  %mean = ReduceMean(%x, %axes)
  %d = Sub(%x, %mean)
  %sq = Pow(%d, %two)
  %var = ReduceMean(%sq, %axes)
  %ve = Add(%var, %eps)
  %std = Sqrt(%ve)
  %y = Div(%d, %std) @norm
}""", "fuse-layernorm,dead-code-elimination", opset=18)
    assert same_ir(m, """graph g(%x: f32[2,4]) -> (%y) {
  init %x_ln_scale: f32[1] = [1.0]
  %y: f32[2,4] = LayerNormalization(%x, %x_ln_scale) {axis=-1, epsilon=1e-05} @"norm/LayerNormalization"
}"""), graph_text(m)


def test_layernorm_fused_inside_a_subgraph():
    m, res = opt("""graph main(%c: bool[], %x: f32[2,4]) -> (%y) {
  init %eps: f32[] = [1e-05]
  %y: f32[2,4] = If(%c) {else_branch=graph e() -> (%n) {
    %mean = ReduceMean(%x) {axes=[-1]}
    %d = Sub(%x, %mean)
    %sq = Mul(%d, %d)
    %var = ReduceMean(%sq) {axes=[-1]}
    %ve = Add(%var, %eps)
    %std = Sqrt(%ve)
    %n: f32[2,4] = Div(%d, %std)
  }, then_branch=graph t() -> (%r) {
    %r: f32[2,4] = Neg(%x)
  }}
}""", "fuse-layernorm", opset=13)
    assert res.records[0].stats == {"LayerNormCore": 1}
    assert op_names(m) == ["If", "qgraph::LayerNormalization", "Neg"]
    exported = qgraph.to_proto(m)
    onnx.checker.check_model(exported)
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    y = run(exported, {"c": np.array(False), "x": x})[0]
    ref = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    assert max_rel_error([ref], [y]) <= 1e-5


# -- fuse-layernorm: refusals --------------------------------------------------------------------
@pytest.mark.parametrize("edit, reason", [
    # an intermediate read outside the chain: fusing would keep it and gain nothing
    (("-> (%y)", "-> (%y, %mean)"), "'mean' (from unnamed ReduceMean node) is a graph output"),
    (("%y = Add(%s, %beta) @shift", "%y = Add(%s, %beta) @shift\n  %z = Exp(%std) @other"),
     "'std' (from unnamed Sqrt node) is also read by Exp node 'other', so fusing would keep the chain"),
    (("%d = Sub(%x, %mean)", "%d = Sub(%x2, %mean)"), "x must be the same value at every use"),
    (("%var = ReduceMean(%sq) {axes=[-1]}", "%var = ReduceMean(%sq) {axes=[-2, -1]}"), "normalize different axes"),
    (("%mean = ReduceMean(%x) {axes=[-1]}", "%mean = ReduceMean(%x) {axes=[1]}"), "are not the last axes of 'x'"),
    (("%mean = ReduceMean(%x) {axes=[-1]}", "%mean = ReduceMean(%x) {axes=[-1], keepdims=0}"), "keepdims=0"),
    (("init %two: f32[] = [2.0]", "init %two: f32[] = [3.0]"), "exponent 'two' is not 2"),
    (("init %eps: f32[] = [1e-05]", "init %eps: f32[2] = [1e-05, 1e-05]"), "is not a finite float scalar"),
])
def test_layernorm_refusals_name_the_reason(edit, reason):
    text = LN_TEXT.replace("%x: f32[2,3,4]", "%x: f32[2,3,4], %x2: f32[2,3,4]").replace(*edit)
    if "Exp" in edit[1]:
        text = text.replace("-> (%y)", "-> (%y, %z)")
    assert reason in refusal(text, FuseLayerNorm.rules, "LayerNormCore")


def test_layernorm_positive_axes_need_a_known_rank():
    text = LN_TEXT.replace("%x: f32[2,3,4]", "%x0: f32[2,3,4]").replace(
        "%mean = ReduceMean(%x) {axes=[-1]}", "%x = Relu(%x0)\n  %mean = ReduceMean(%x) {axes=[2]}").replace(
        "%var = ReduceMean(%sq) {axes=[-1]}", "%var = ReduceMean(%sq) {axes=[2]}")
    reason = refusal(text, FuseLayerNorm.rules, "LayerNormCore")
    assert "axes [2] are not provably the last axes (the rank of 'x' is unknown" in reason


def test_layernorm_gamma_that_would_grow_the_output_is_not_folded():
    # gamma [3,1,4] on x [2,4]: Mul broadcasts to [3,2,4]; LayerNormalization cannot express that
    text = """graph g(%x: f32[2,4]) -> (%y) {
  init %eps: f32[] = [1e-05]
  init %gamma: f32[3,1,4] = <data g>
  %mean = ReduceMean(%x) {axes=[-1]}
  %d = Sub(%x, %mean)
  %sq = Mul(%d, %d)
  %var = ReduceMean(%sq) {axes=[-1]}
  %ve = Add(%var, %eps)
  %std = Sqrt(%ve)
  %n = Div(%d, %std)
  %y = Mul(%n, %gamma) @scale
}"""
    gamma = np.ones((3, 1, 4), np.float32)
    m = parse_model('model opset {"": 17}\n' + text, {"gamma": gamma})
    tracer = MatchTracer()
    assert apply_rules(m, FuseLayerNorm.rules, tracer=tracer) == {"LayerNormCore": 1}
    assert "'gamma' has rank 3, more than 'x' is known to have" in tracer.closest("FoldLayerNormScale").failure.reason
    assert [n.op_type for n in m.graph] == ["LayerNormalization", "Mul"]
    # the qgraph op broadcasts like Mul, so the same gamma folds at opset 12
    m = parse_model('model opset {"": 12}\n' + text, {"gamma": gamma})
    assert apply_rules(m, FuseLayerNorm.rules) == {"LayerNormCore": 1, "FoldLayerNormScale": 1}
    assert m.graph.outputs[0].shape is None  # no longer x's shape, and not guessed


# -- numerics: helpers building the decomposed forms with onnx.helper -----------------------------
def _const(name: str, value, dtype=np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype), name)


def ln_model(shape, k, *, opset, eps=1e-5, square="pow", norm="div", eps_first=False, gamma=True, beta=True,
             positive_axes=False, leak=False, seed=0) -> onnx.ModelProto:
    """A decomposed LayerNorm over the last ``k`` axes of an input of ``shape``."""
    rank = len(shape)
    axes = list(range(rank - k, rank)) if positive_axes else list(range(-k, 0))
    rng = np.random.default_rng(seed)
    inits = [_const("eps", eps), _const("two", 2.0)]
    nodes = []

    def reduce(src, out):
        if opset >= 18:
            nodes.append(helper.make_node("ReduceMean", [src, "axes"], [out]))
        else:
            nodes.append(helper.make_node("ReduceMean", [src], [out], axes=axes))

    if opset >= 18:
        inits.append(_const("axes", axes, np.int64))
    reduce("x", "mean")
    nodes.append(helper.make_node("Sub", ["x", "mean"], ["d"]))
    nodes.append(helper.make_node("Pow", ["d", "two"], ["sq"]) if square == "pow"
                 else helper.make_node("Mul", ["d", "d"], ["sq"]))
    reduce("sq", "var")
    nodes.append(helper.make_node("Add", ["eps", "var"] if eps_first else ["var", "eps"], ["ve"]))
    nodes.append(helper.make_node("Sqrt", ["ve"], ["std"]))
    if norm == "div":
        nodes.append(helper.make_node("Div", ["d", "std"], ["n"]))
    else:
        nodes.append(helper.make_node("Reciprocal", ["std"], ["r"]))
        nodes.append(helper.make_node("Mul", ["d", "r"] if norm == "mul" else ["r", "d"], ["n"]))
    y = "n"
    if gamma:
        inits.append(_const("gamma", rng.uniform(0.5, 2.0, shape[rank - k:])))
        nodes.append(helper.make_node("Mul", [y, "gamma"], ["scaled"]))
        y = "scaled"
    if beta:
        inits.append(_const("beta", rng.standard_normal(shape[rank - k:])))
        nodes.append(helper.make_node("Add", [y, "beta"], ["shifted"]))
        y = "shifted"
    nodes.append(helper.make_node("Relu", [y], ["y"]))  # the fused op's output is not the graph output
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))]
    if leak:
        outputs.append(helper.make_tensor_value_info("d", TensorProto.FLOAT, list(shape)))
    graph = helper.make_graph(nodes, "ln", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _binary(nodes, op, a, b, out, swap):
    nodes.append(helper.make_node(op, [b, a] if swap else [a, b], [out]))
    return out


def gelu_model(shape, *, opset, form="erf", scaled_by="div", assoc=0, swaps=(False,) * 8, cube="pow",
               x_source="input", const_shape=(), halve="mul") -> onnx.ModelProto:
    """A decomposed GELU of x; x is the graph input or an Add of it (read by many, like a bias add).

    ``halve``: "mul" multiplies by 0.5 (with ``assoc`` choosing which two of x, 0.5 and
    1 + erf / tanh are multiplied first), "div" divides x * (1 + erf / tanh) by 2.
    """
    nodes, swaps = [], list(swaps) + [False] * 8
    consts = {"half": 0.5, "one": 1.0, "sqrt2": SQRT2, "inv_sqrt2": 1 / SQRT2, "c": math.sqrt(2 / math.pi),
              "k": 0.044715, "three": 3.0, "p2": 2.0, "two": 2.0}
    inits = [_const(n, np.full(const_shape, v)) for n, v in consts.items()]
    x = "inp"
    if x_source == "add":
        inits.append(_const("bias", np.linspace(-1, 1, shape[-1])))
        x = _binary(nodes, "Add", "inp", "bias", "x", False)
    if form == "erf":
        if scaled_by == "div":
            arg = _binary(nodes, "Div", x, "sqrt2", "arg", False)
        else:
            arg = _binary(nodes, "Mul", x, "inv_sqrt2", "arg", swaps[0])
        nodes.append(helper.make_node("Erf", [arg], ["act"]))
    else:
        if cube == "pow":
            x3 = _binary(nodes, "Pow", x, "three", "x3", False)
        elif cube == "mul":
            x3 = _binary(nodes, "Mul", _binary(nodes, "Mul", x, x, "x2", False), x, "x3", swaps[0])
        else:
            x3 = _binary(nodes, "Mul", x, _binary(nodes, "Pow", x, "p2", "x2", False), "x3", swaps[0])
        t = _binary(nodes, "Mul", "k", x3, "t", swaps[1])
        inner = _binary(nodes, "Add", x, t, "inner", swaps[2])
        u = _binary(nodes, "Mul", "c", inner, "u", swaps[3])
        nodes.append(helper.make_node("Tanh", [u], ["act"]))
    a = _binary(nodes, "Add", "act", "one", "a", swaps[4])
    if halve == "div":
        _binary(nodes, "Div", _binary(nodes, "Mul", x, a, "p", swaps[5]), "two", "g", False)
    else:
        pair = {0: (x, "half"), 1: (x, a), 2: ("half", a)}[assoc]
        rest = {0: a, 1: "half", 2: x}[assoc]
        p = _binary(nodes, "Mul", pair[0], pair[1], "p", swaps[5])
        _binary(nodes, "Mul", p, rest, "g", swaps[6])
    nodes.append(helper.make_node("Neg", ["g"], ["y"]))
    graph = helper.make_graph(nodes, "gelu", [helper.make_tensor_value_info("inp", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)


def _check_numerics(model: onnx.ModelProto, pipeline: str, feeds: dict, expect_op: str | None):
    """Fuse, export, run; outputs within 1e-5 relative; returns the fused qgraph model."""
    m, exported = fused_export(model, pipeline)
    if expect_op is not None:
        assert expect_op in op_names(m), op_names(m)
    assert all(o.domain != "qgraph" for o in exported.opset_import)
    assert all(n.domain in ("", "ai.onnx") for n in exported.graph.node)
    assert [o.name for o in exported.graph.output] == [o.name for o in model.graph.output]
    ref, got = run(model, feeds), run(exported, feeds)
    assert max_rel_error(ref, got) <= 1e-5
    return m


# -- fuse-layernorm: numerics --------------------------------------------------------------------
@pytest.mark.parametrize("opset, expect", [(12, "qgraph::LayerNormalization"), (17, "LayerNormalization"),
                                           (18, "LayerNormalization")])
@pytest.mark.parametrize("variant", [
    dict(), dict(square="mul", norm="mul", eps_first=True), dict(norm="mul_first", gamma=False),
    dict(beta=False, positive_axes=True), dict(gamma=False, beta=False),
])
def test_layernorm_numerics(opset, expect, variant):
    model = ln_model((2, 3, 8), 1, opset=opset, **variant)
    x = np.random.default_rng(1).standard_normal((2, 3, 8)).astype(np.float32) * 3 + 1
    m = _check_numerics(model, "fuse-layernorm,dead-code-elimination", {"x": x}, expect)
    assert op_names(m) == [expect, "Relu"]


# -- fuse-gelu: structure and refusals ------------------------------------------------------------
GELU_TEXT = """graph g(%x: f32[2,8]) -> (%y) {
  init %sqrt2: f32[] = [1.4142135]
  init %one: f32[] = [1.0]
  init %half: f32[] = [0.5]
  %arg = Div(%x, %sqrt2)
  %e = Erf(%arg)
  %a = Add(%e, %one)
  %h = Mul(%x, %half)
  %y = Mul(%h, %a) @gelu
}"""


def test_gelu_erf_opset20_becomes_onnx_gelu():
    m, res = opt(GELU_TEXT, "fuse-gelu,dead-code-elimination", opset=20)
    assert res.records[0].stats == {"GeluRule": 1}
    assert m.opset_imports == {"": 20}
    assert same_ir(m, """graph g(%x: f32[2,8]) -> (%y) {
  %y: f32[2,8] = Gelu(%x) @"gelu/Gelu"
}"""), graph_text(m)


def test_gelu_tanh_old_opset_becomes_qgraph_gelu():
    m, _ = opt("""graph g(%x: f32[2,8]) -> (%y) {
  init %three: f32[] = [3.0]
  init %k: f32[] = [0.044715]
  init %c: f32[] = [0.7978846]
  init %one: f32[] = [1.0]
  init %half: f32[] = [0.5]
  %x3 = Pow(%x, %three)
  %t = Mul(%k, %x3)
  %inner = Add(%x, %t)
  %u = Mul(%inner, %c)
  %th = Tanh(%u)
  %a = Add(%one, %th)
  %h = Mul(%half, %x)
  %y = Mul(%a, %h) @gelu
}""", "fuse-gelu,dead-code-elimination", opset=13)
    assert m.opset_imports == {"": 13, "qgraph": 1}
    assert same_ir(m, """graph g(%x: f32[2,8]) -> (%y) {
  %y: f32[2,8] = qgraph::Gelu(%x) {approximate="tanh"} @"gelu/Gelu"
}"""), graph_text(m)


def test_gelu_constants_match_within_tolerance_only():
    # 1.4142 is sqrt(2) to 5 digits: accepted; 1.414 is off by 1.5e-4: refused
    m, res = opt(GELU_TEXT.replace("[1.4142135]", "[1.4142]"), "fuse-gelu", opset=20)
    assert res.records[0].stats == {"GeluRule": 1}
    reason = refusal(GELU_TEXT.replace("[1.4142135]", "[1.414]"), FuseGelu.rules, "GeluRule")
    assert "the Erf argument is not x / sqrt(2)" in reason


@pytest.mark.parametrize("edit, reason", [
    (("init %half: f32[] = [0.5]", "init %half: f32[] = [0.6]"), "the constant factor is 0.6, not 0.5"),
    (("-> (%y)", "-> (%y, %h)"), "'h' is read by"),
    (("%y = Mul(%h, %a) @gelu", "%y = Mul(%h, %a) @gelu\n  %z = Exp(%e) @other"),
     "'e' (from unnamed Erf node) is also read by Exp node 'other'"),
    (("%a = Add(%e, %one)", "%a = Add(%e, %x)"), "neither factor is 1 + Erf(...) or 1 + Tanh(...)"),
    (("%h = Mul(%x, %half)", "%h = Mul(%x2, %half)"), "the factor 'x2' is not the activation's input 'x'"),
])
def test_gelu_refusals_name_the_reason(edit, reason):
    text = GELU_TEXT.replace("%x: f32[2,8]", "%x: f32[2,8], %x2: f32[2,8]").replace(*edit)
    if "Exp" in edit[1]:
        text = text.replace("-> (%y)", "-> (%y, %z)")
    assert reason in refusal(text, FuseGelu.rules, "GeluRule", opset=20)


def test_gelu_rank1_constants_need_the_rank_of_x():
    # [1]-shaped constants would broadcast a rank-0 x to [1]: refused while x's rank is unknown
    text = GELU_TEXT.replace("f32[] = ", "f32[1] = ").replace(
        "%x: f32[2,8]", "%x0: f32[2,8]").replace("%arg = Div", "%x = Relu(%x0)\n  %arg = Div")
    assert "constant 'half' has rank 1 and the rank of 'x' is unknown" in refusal(text, FuseGelu.rules, "GeluRule")
    m, res = opt(GELU_TEXT.replace("f32[] = ", "f32[1] = "), "fuse-gelu", opset=20)  # x's rank known: fused
    assert res.records[0].stats == {"GeluRule": 1}


# -- fuse-gelu: numerics -------------------------------------------------------------------------
@pytest.mark.parametrize("opset, expect", [(13, "qgraph::Gelu"), (20, "Gelu")])
@pytest.mark.parametrize("variant", [
    dict(form="erf"), dict(form="erf", scaled_by="mul", assoc=1, x_source="add", swaps=(True,) * 8),
    dict(form="tanh"), dict(form="tanh", cube="mul", assoc=2, x_source="add", swaps=(True, False) * 4),
    dict(form="tanh", cube="x_pow2", assoc=1, const_shape=(1,)), dict(form="erf", halve="div", swaps=(True,) * 8),
])
def test_gelu_numerics(opset, expect, variant):
    model = gelu_model((3, 16), opset=opset, **variant)
    feeds = {"inp": np.random.default_rng(2).standard_normal((3, 16)).astype(np.float32) * 3}
    m = _check_numerics(model, "fuse-gelu,dead-code-elimination", feeds, expect)
    assert op_names(m) == (["Add"] if variant.get("x_source") == "add" else []) + [expect, "Neg"]


# -- property tests ------------------------------------------------------------------------------
@st.composite
def ln_cases(draw):
    rank = draw(st.integers(1, 4))
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=rank, max_size=rank)))
    return dict(shape=shape, k=draw(st.integers(1, rank)), opset=draw(st.sampled_from([11, 13, 17, 18])),
                eps=draw(st.sampled_from([1e-12, 1e-6, 1e-5, 1e-3])), square=draw(st.sampled_from(["pow", "mul"])),
                norm=draw(st.sampled_from(["div", "mul", "mul_first"])), eps_first=draw(st.booleans()),
                gamma=draw(st.booleans()), beta=draw(st.booleans()), positive_axes=draw(st.booleans()),
                leak=draw(st.sampled_from([False, False, False, False, True])))


def ln_condition(x: np.ndarray, k: int, eps: float) -> float:
    """How much float32 rounding a LayerNorm over the last ``k`` axes of ``x`` can amplify: at
    least 1, else ``max|x| / sqrt(var + eps)`` of its worst row over 50. ``x - mean`` carries an
    error of about an ulp of ``max|x|``, which the division by the standard deviation scales up:
    two nearly equal values (``[2.396786, 2.3884068]``, a drawn case) normalize to +-1 with
    relative errors of 3e-5 in either form of the op, fused or not."""
    axes = tuple(range(x.ndim - k, x.ndim))
    x = x.astype(np.float64)
    std = np.sqrt(x.var(axis=axes, keepdims=True) + eps)
    return float(max(1.0, np.max(np.abs(x).max(axis=axes, keepdims=True) / std) / 50))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ln_cases(), st.integers(0, 2**31 - 1))
def test_layernorm_property(case, seed):
    shape, leak = case.pop("shape"), case["leak"]
    model = ln_model(shape, **case, seed=seed)
    feeds = {"x": np.random.default_rng(seed).standard_normal(shape).astype(np.float32) * 2}
    m, exported = fused_export(model, "fuse-layernorm,dead-code-elimination")
    assert max_rel_error(run(model, feeds), run(exported, feeds)) <= 1e-5 * ln_condition(feeds["x"], case["k"], case["eps"])
    assert [o.name for o in exported.graph.output] == [o.name for o in model.graph.output]
    fused = sum(n.op_type == "LayerNormalization" for n in m.graph)
    assert fused == (0 if leak else 1)
    if not leak:
        assert "ReduceMean" not in op_names(m)
    assert not run_pipeline(m, "fuse-layernorm").modified  # a second run changes nothing


@st.composite
def gelu_cases(draw):
    rank = draw(st.integers(1, 3))
    shape = tuple(draw(st.lists(st.integers(1, 6), min_size=rank, max_size=rank)))
    return dict(shape=shape, opset=draw(st.sampled_from([9, 13, 17, 20])), form=draw(st.sampled_from(["erf", "tanh"])),
                scaled_by=draw(st.sampled_from(["div", "mul"])), assoc=draw(st.integers(0, 2)),
                swaps=tuple(draw(st.lists(st.booleans(), min_size=8, max_size=8))),
                cube=draw(st.sampled_from(["pow", "mul", "x_pow2"])), x_source=draw(st.sampled_from(["input", "add"])),
                const_shape=draw(st.sampled_from([(), (1,)])), halve=draw(st.sampled_from(["mul", "div"])))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(gelu_cases(), st.integers(0, 2**31 - 1))
def test_gelu_property(case, seed):
    shape = case.pop("shape")
    model = gelu_model(shape, **case)
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32) * 3
    # 1 + tanh(u) for u << 0 cancels: the decomposed form is off by ~1e-7 absolute, so the
    # relative measure needs an output of magnitude ~1 (not only GELU's tiny negative tail)
    x.flat[0] = abs(x.flat[0]) + 1
    feeds = {"inp": x}
    m, exported = fused_export(model, "fuse-gelu,dead-code-elimination")
    assert max_rel_error(run(model, feeds), run(exported, feeds)) <= 1e-5
    # [1]-shaped constants are refused only when x's rank is unknown (x is an untyped Add output)
    refused = case["const_shape"] == (1,) and case["x_source"] == "add"
    assert sum(n.op_type == "Gelu" for n in m.graph) == (0 if refused else 1)
    if not refused:
        assert not {"Erf", "Tanh"} & set(op_names(m))
    assert not run_pipeline(m, "fuse-gelu").modified


# -- export of qgraph-domain ops -----------------------------------------------------------------
def test_every_decomposition_is_for_a_qgraph_op():
    assert set(decompose.DECOMPOSITIONS) == {ops.QGraphLayerNormalization, ops.QGraphGelu, ops.QGraphHardSwish}
    assert all(op.domain == ops.QGRAPH_DOMAIN for op in decompose.DECOMPOSITIONS)


def test_a_new_qgraph_op_needs_only_a_table_entry(monkeypatch):
    def swish(node, e):  # e.g. a qgraph Swish: x * Sigmoid(x)
        x = e.input(0)
        return [e.op("Mul", x, e.op("Sigmoid", x))]

    def relu_twice(node, e):  # one emitted value given to two outputs
        r = e.op("Relu", e.input(0))
        return [r, r]

    table = dict(decompose.DECOMPOSITIONS)
    table[ops.op("Swish", ops.QGRAPH_DOMAIN)] = swish
    table[ops.op("ReluTwice", ops.QGRAPH_DOMAIN)] = relu_twice
    monkeypatch.setattr(decompose, "DECOMPOSITIONS", table)
    m = parse_model("""model opset {"": 13, "qgraph": 1}
graph g(%x: f32[8]) -> (%y, %a, %b) {
  %y: f32[8] = qgraph::Swish(%x)
  %a: f32[8], %b: f32[8] = qgraph::ReluTwice(%y)
}""")
    exported = qgraph.to_proto(m)
    onnx.checker.check_model(exported)
    assert [n.op_type for n in exported.graph.node] == ["Sigmoid", "Mul", "Relu", "Identity"]
    x = np.linspace(-4, 4, 8, dtype=np.float32)
    y, a, b = run(exported, {"x": x})
    ref = x / (1 + np.exp(-x))
    assert max_rel_error([ref, np.maximum(ref, 0), np.maximum(ref, 0)], [y, a, b]) <= 1e-6


def test_export_leaves_the_model_unchanged_and_is_deterministic():
    m, _ = opt(LN_TEXT, "fuse-layernorm", opset=12)
    before = graph_text(m)
    first, second = qgraph.to_proto(m), qgraph.to_proto(m)
    assert graph_text(m) == before and m.opset_imports == {"": 12, "qgraph": 1}
    assert first.SerializeToString() == second.SerializeToString()
    assert "qgraph" not in {o.domain for o in first.opset_import}
    # re-imported, the decomposed form fuses again into the same op
    again = qgraph.load(first)
    run_pipeline(again, "fuse-layernorm,dead-code-elimination")
    assert op_names(again) == ["qgraph::LayerNormalization"]


def test_qgraph_import_kept_while_another_qgraph_op_remains():
    m = parse_model("""model opset {"": 13, "qgraph": 1}
graph g(%x: f32[2,4]) -> (%y, %z) {
  %y = qgraph::Gelu(%x)
  %z = qgraph::SomethingElse(%x)
}""")
    exported = qgraph.to_proto(m)
    assert [n.op_type for n in exported.graph.node][-1] == "SomethingElse"
    assert {o.domain: o.version for o in exported.opset_import} == {"": 13, "qgraph": 1}


def test_unused_qgraph_import_without_decompositions_is_kept():
    # lossless round trip: a declared domain is dropped only when export removed its last use
    m = parse_model('model opset {"": 13, "qgraph": 1}\ngraph g(%x: f32[2]) -> (%y) {\n  %y = Relu(%x)\n}')
    assert "qgraph" in {o.domain for o in qgraph.to_proto(m).opset_import}


@pytest.mark.parametrize("opset", [17, 18])
def test_qgraph_layernorm_decomposes_at_any_opset(opset):
    # ReduceMean takes axes as an attribute before opset 18 and as an input from 18
    m = parse_model(f"""model opset {{"": {opset}, "qgraph": 1}}
graph g(%x: f32[2,3,4]) -> (%y) {{
  init %b: f32[4] = [0.0, 1.0, 2.0, 3.0]
  %y: f32[2,3,4] = qgraph::LayerNormalization(%x, _, %b) {{axis=1, epsilon=0.001}}
}}""")
    exported = qgraph.to_proto(m)
    onnx.checker.check_model(exported)
    reduce_inputs = {len(n.input) for n in exported.graph.node if n.op_type == "ReduceMean"}
    assert reduce_inputs == ({2} if opset >= 18 else {1})
    x = np.random.default_rng(3).standard_normal((2, 3, 4)).astype(np.float32)
    mean = x.mean((1, 2), keepdims=True)
    ref = (x - mean) / np.sqrt(((x - mean) ** 2).mean((1, 2), keepdims=True) + 1e-3) + np.arange(4, dtype=np.float32)
    assert max_rel_error([ref], run(exported, {"x": x})) <= 1e-5


def test_decomposition_needs_an_element_type():
    m = parse_model("""model opset {"": 13, "qgraph": 1}
graph g(%x: f32[2]) -> (%y) {
  %r = Relu(%x)
  %y = qgraph::Gelu(%r) @act
}""")
    m.graph.outputs[0].type = None
    with pytest.raises(QGraphError, match="qgraph::Gelu node 'act' as standard ONNX: the element type of "
                                          "its input 'r' is unknown"):
        qgraph.to_proto(m)


def test_passes_are_registered():
    assert registry().get("fuse-layernorm") is FuseLayerNorm and registry().get("fuse-gelu") is FuseGelu


# -- PP-OCRv4 rec --------------------------------------------------------------------------------
def _ppocr_rec() -> str | None:
    try:
        import rapidocr_onnxruntime
    except ImportError:
        return None
    found = glob.glob(os.path.join(os.path.dirname(rapidocr_onnxruntime.__file__), "models", "*PP-OCRv4_rec*.onnx"))
    return found[0] if found else None


@pytest.mark.skipif(_ppocr_rec() is None, reason="rapidocr-onnxruntime (PP-OCRv4 models) not installed")
def test_ppocr_rec_layernorms_fused():
    path = _ppocr_rec()
    m = qgraph.load(path)
    before = len(m.graph)
    res = run_pipeline(m, "fuse-layernorm,dead-code-elimination")
    assert res.records[0].stats == {"LayerNormCore": 5, "FoldLayerNormScale": 5, "FoldLayerNormBias": 5}
    assert op_names(m).count("qgraph::LayerNormalization") == 5
    assert not {"ReduceMean", "Pow", "Sqrt"} & set(op_names(m))
    assert len(m.graph) < before - 5 * 8
    exported = qgraph.to_proto(m)
    onnx.checker.check_model(exported)
    assert {o.domain for o in exported.opset_import} == {""}
    x = np.random.default_rng(0).standard_normal((1, 3, 48, 320)).astype(np.float32)
    assert max_rel_error(run(onnx.load(path), {"x": x}), run(exported, {"x": x})) <= 1e-4
    assert not run_pipeline(m, "fuse-layernorm").modified


# -- fuse-gelu inside `fuse`: before fold-scale --------------------------------------------------
def gelu_conv_model(form: str, halve: str) -> onnx.ModelProto:
    """x -> decomposed GELU -> 1x1 Conv, the 0.5 where exporters put it: ``halve="last"``
    multiplies x * (1 + erf / tanh) by 0.5 (PyTorch's export: the 0.5 Mul feeds the conv),
    ``"first"`` multiplies x by 0.5 first (x * 0.5 * (1 + erf / tanh), as written)."""
    rng = np.random.default_rng(5)
    inits = [_const(n, np.array(v)) for n, v in
             (("half", 0.5), ("one", 1.0), ("sqrt2", SQRT2), ("c", math.sqrt(2 / math.pi)), ("k", 0.044715),
              ("three", 3.0))]
    inits.append(numpy_helper.from_array(rng.standard_normal((6, 8, 1, 1)).astype(np.float32), "w"))
    inits.append(numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "b"))
    nodes = []
    if form == "erf":
        nodes += [helper.make_node("Div", ["x", "sqrt2"], ["arg"]), helper.make_node("Erf", ["arg"], ["act"])]
    else:
        nodes += [helper.make_node("Pow", ["x", "three"], ["x3"]), helper.make_node("Mul", ["k", "x3"], ["t"]),
                  helper.make_node("Add", ["x", "t"], ["inner"]), helper.make_node("Mul", ["c", "inner"], ["u"]),
                  helper.make_node("Tanh", ["u"], ["act"])]
    nodes.append(helper.make_node("Add", ["act", "one"], ["a"]))
    if halve == "last":
        nodes += [helper.make_node("Mul", ["x", "a"], ["p"]), helper.make_node("Mul", ["p", "half"], ["g"])]
    else:
        nodes += [helper.make_node("Mul", ["x", "half"], ["p"]), helper.make_node("Mul", ["p", "a"], ["g"])]
    nodes.append(helper.make_node("Conv", ["g", "w", "b"], ["y"], name="pointwise"))
    graph = helper.make_graph(nodes, "gelu_conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 5, 5])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=9)


@pytest.mark.parametrize("form", ["erf", "tanh"])
@pytest.mark.parametrize("halve", ["last", "first"])
def test_fuse_fuses_gelu_before_fold_scale_takes_its_half(form, halve):
    """`fuse` runs fuse-gelu before fold-scale: with fold-scale first, the 0.5 of a GELU whose
    product feeds a 1x1 conv went into the conv's weights and the GELU stayed 5-9 float ops
    (a PP-OCRv6-class recognizer: 50 float ops, 24 with the GELUs fused)."""
    model = gelu_conv_model(form, halve)
    m = _check_numerics(model, "canonicalize,fuse", {"x": np.random.default_rng(2).standard_normal(
        (1, 8, 5, 5)).astype(np.float32) * 2}, "qgraph::Gelu")
    assert op_names(m) == ["qgraph::Gelu", "Conv"]
    w = next(n for n in m.graph if n.op is ops.Conv).inputs[1].constant().numpy()
    assert np.array_equal(w, numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "w")))


def test_fuse_alias_runs_fusions_of_decomposed_activations_before_fold_scale():
    from qgraph.passes import ALIASES

    pipeline = ALIASES["fuse"][0]
    assert pipeline.index("fuse-gelu") < pipeline.index("fold-scale")
    assert pipeline.index("fuse-hardswish") < pipeline.index("fold-scale")
