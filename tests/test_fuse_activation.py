"""fuse-pad and fuse-activation: structure, refusal reasons, numerics, marks, property tests, PP-OCRv4."""

import glob
import os

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import qgraph
from qgraph.ir import fusion, ops
from qgraph.ir.text import parse_model
from qgraph.passes.fuse_activation import FuseActivation, FusePad, apply_marks
from qgraph.rewrite import MatchTracer, apply_rules, constant_tensor
from qgraph.testing.ort import max_rel_error, run
from tests.conftest import LIGHT_DIR, graph_text, run_pipeline, same_ir, structure_text


def model(text, opset=17):
    return parse_model(f'model opset {{"": {opset}}}\n' + text)


def feeds_for(proto, seed=0):
    rng = np.random.default_rng(seed)
    inits = {t.name for t in proto.graph.initializer}
    out = {}
    for vi in proto.graph.input:
        if vi.name not in inits:
            shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
            out[vi.name] = rng.standard_normal(shape).astype(np.float32)
    return out


def optimize_and_compare(m, pipeline):
    """Run ``pipeline``; assert ONNX Runtime outputs before / after agree; return the result."""
    before = qgraph.to_proto(m)
    res = run_pipeline(m, pipeline)
    after = qgraph.to_proto(m)
    feeds = feeds_for(before)
    assert max_rel_error(run(before, feeds), run(after, feeds)) <= 1e-5
    assert [o.name for o in after.graph.output] == [o.name for o in before.graph.output]
    return res


def node(m, name):
    return next(n for n in m.graph.all_nodes() if n.name == name)


def marks(m):
    return {n.name: dict(n.metadata_props) for n in m.graph.all_nodes() if fusion.is_marked(n)}


# -- fuse-pad: structure ---------------------------------------------------------------------------
W = {"w": np.random.default_rng(1).standard_normal((4, 3, 3, 3)).astype(np.float32)}


def test_pad_folds_into_conv_pads():
    m = parse_model('''model opset {"": 17}
graph g(%x: f32[1,3,8,8]) -> (%y) {
  init %w: f32[4,3,3,3] = <data 0>
  init %pads: i64[8] = [0, 0, 1, 2, 0, 0, 3, 0]
  %p = Pad(%x, %pads) @pad
  %c = Conv(%p, %w) {pads=[1, 1, 1, 1], strides=[2, 1]} @conv
  %y = Relu(%c) @relu
}''', W)
    res = optimize_and_compare(m, "fuse-pad,cleanup")
    assert res.records[0].stats == {"PadIntoConv": 1}
    assert same_ir(m, '''graph g(%x: f32[1,3,8,8]) -> (%y) {
  init %w: f32[4,3,3,3] = <data 0>
  %c = Conv(%x, %w) {pads=[2, 3, 4, 1], strides=[2, 1]} @conv
  %y = Relu(%c) @relu
}''', W), graph_text(m)


def test_pad_attribute_form_opset10_and_conv_without_pads():
    m = parse_model('''model opset {"": 10}
graph g(%x: f32[1,3,8,8]) -> (%y) {
  init %w: f32[4,3,3,3] = <data 0>
  init %b: f32[4] = [0.1, 0.2, 0.3, 0.4]
  %p = Pad(%x) {mode="constant", pads=[0, 0, 2, 1, 0, 0, 0, 1], value=0.0}
  %y = Conv(%p, %w, %b) {dilations=[2, 1]} @conv
}''', W)
    optimize_and_compare(m, "fuse-pad,cleanup")
    assert same_ir(m, '''graph g(%x: f32[1,3,8,8]) -> (%y) {
  init %w: f32[4,3,3,3] = <data 0>
  init %b: f32[4] = [0.1, 0.2, 0.3, 0.4]
  %y = Conv(%x, %w, %b) {dilations=[2, 1], pads=[2, 1, 0, 1]} @conv
}''', W), graph_text(m)


def test_pad_opset18_axes_and_constant_node_pads():
    # pads from a Constant node (as exporters write them), negative axes, explicit zero value
    m = parse_model('''model opset {"": 18}
graph g(%x: f32[1,3,8,8]) -> (%y) {
  init %w: f32[4,3,3,3] = <data 0>
  init %zero: f32[] = 0.0
  init %axes: i64[2] = [-1, 2]
  %pads = Constant() {value=tensor<i64[4]> [1, 2, 0, 3]}
  %p = Pad(%x, %pads, %zero, %axes)
  %y = Conv(%p, %w) {pads=[0, 0, 0, 0]} @conv
}''', W)
    optimize_and_compare(m, "fuse-pad,cleanup")
    # axes [-1, 2]: W begins 1, H begins 2, W ends 0, H ends 3 -> conv pads [H_b, W_b, H_e, W_e]
    assert node(m, "conv").attr("pads") == (2, 1, 3, 0)
    assert [n.op_type for n in m.graph] == ["Conv"]


def test_pad_with_other_readers_folds_and_stays_for_them():
    m = parse_model('''model opset {"": 17}
graph g(%x: f32[1,3,8,8]) -> (%y, %z) {
  init %w: f32[4,3,3,3] = <data 0>
  init %pads: i64[8] = [0, 0, 1, 1, 0, 0, 1, 1]
  %p = Pad(%x, %pads) @pad
  %y = Conv(%p, %w) @conv
  %z = Relu(%p) @relu
}''', W)
    optimize_and_compare(m, "fuse-pad,cleanup")
    assert same_ir(m, '''graph g(%x: f32[1,3,8,8]) -> (%y, %z) {
  init %w: f32[4,3,3,3] = <data 0>
  init %pads: i64[8] = [0, 0, 1, 1, 0, 0, 1, 1]
  %p = Pad(%x, %pads) @pad
  %y = Conv(%x, %w) {pads=[1, 1, 1, 1]} @conv
  %z = Relu(%p) @relu
}''', W), graph_text(m)


def test_pad_read_by_two_convs_folds_into_both_and_goes():
    m = parse_model('''model opset {"": 17}
graph g(%x: f32[1,3,8,8]) -> (%y, %z) {
  init %w: f32[4,3,3,3] = <data 0>
  init %pads: i64[8] = [0, 0, 1, 1, 0, 0, 1, 1]
  %p = Pad(%x, %pads)
  %y = Conv(%p, %w) @conv1
  %z = Conv(%p, %w) {strides=[2, 2]} @conv2
}''', W)
    res = optimize_and_compare(m, "fuse-pad,cleanup")
    assert res.records[0].stats == {"PadIntoConv": 2}
    assert [n.op_type for n in m.graph] == ["Conv", "Conv"] and "pads" not in m.graph.initializers


def test_pad_conv_keeps_value_names_and_node_metadata():
    m = parse_model('''model opset {"": 17}
graph g(%x: f32[1,3,8,8]) -> (%y) {
  init %w: f32[4,3,3,3] = <data 0>
  init %pads: i64[8] = [0, 0, 1, 1, 0, 0, 1, 1]
  %p = Pad(%x, %pads)
  %c = Conv(%p, %w) @conv
  %y = Neg(%c)
}''', W)
    node(m, "conv").metadata_props["origin"] = "exporter"
    run_pipeline(m, "fuse-pad")
    conv = node(m, "conv")
    assert conv.output.name == "c" and conv.metadata_props == {"origin": "exporter"}


@pytest.mark.parametrize("pad_line, conv_attrs, reason", [
    ('%p = Pad(%x, %pads) {mode="reflect"}', "", "mode 'reflect'"),
    ('%p = Pad(%x, %pads, %one)', "", "pads with 1.0"),
    ('%p = Pad(%x, %neg)', "", "negative pads"),
    ('%p = Pad(%x, %channel)', "", "batch or channel axis"),
    ('%p = Pad(%x, %batch)', "", "batch or channel axis"),
    ('%p = Pad(%x, %pads)', '{auto_pad="SAME_UPPER"}', "auto_pad=SAME_UPPER"),
    ('%p = Pad(%x, %dyn)', "", "pads 'dyn' is not a constant"),
    ('%p = Pad(%x, %pads, %dynval)', "", "pad value 'dynval' is not a constant"),
])
def test_pad_refusals_name_the_reason(pad_line, conv_attrs, reason):
    m = parse_model(f'''model opset {{"": 17}}
graph g(%x: f32[1,3,8,8], %dyn: i64[8], %dynval: f32[]) -> (%y) {{
  init %w: f32[4,3,3,3] = <data 0>
  init %pads: i64[8] = [0, 0, 1, 1, 0, 0, 1, 1]
  init %neg: i64[8] = [0, 0, 1, -1, 0, 0, 1, 1]
  init %channel: i64[8] = [0, 1, 1, 1, 0, 0, 1, 1]
  init %batch: i64[8] = [0, 0, 1, 1, 1, 0, 1, 1]
  init %one: f32[] = 1.0
  {pad_line}
  %y = Conv(%p, %w) {conv_attrs} @conv
}}''', W)
    before = structure_text(m)
    tracer = MatchTracer()
    assert not apply_rules(m, FusePad.rules, tracer=tracer)
    assert structure_text(m) == before
    why = tracer.closest("PadIntoConv").failure.reason
    assert reason in why, why


def test_pad_feeding_conv_weight_is_not_folded():
    m = parse_model('''model opset {"": 17}
graph g(%x: f32[1,3,8,8], %w0: f32[4,3,1,1]) -> (%y) {
  init %pads: i64[8] = [0, 0, 1, 1, 0, 0, 1, 1]
  %w = Pad(%w0, %pads)
  %y = Conv(%x, %w)
}''')
    tracer = MatchTracer()
    assert not apply_rules(m, FusePad.rules, tracer=tracer)
    assert "has no producer, expected Pad" in tracer.closest("PadIntoConv").failure.reason


# -- fuse-activation: structure and marks -----------------------------------------------------------
PRODUCERS = {
    # name: (input declaration, initializers, producer line); the producer's output is %c
    "Conv": ("%x: f32[1,3,6,6]", "init %w: f32[4,3,3,3] = 0.25", "%c = Conv(%x, %w) {pads=[1, 1, 1, 1]} @prod"),
    "ConvTranspose": ("%x: f32[1,3,4,4]", "init %w: f32[3,2,3,3] = 0.25", "%c = ConvTranspose(%x, %w) @prod"),
    "Gemm": ("%x: f32[2,5]", "init %w: f32[5,4] = 0.25", "%c = Gemm(%x, %w) {alpha=2.0} @prod"),
    "MatMul": ("%x: f32[2,3,5]", "init %w: f32[5,4] = 0.25", "%c = MatMul(%x, %w) @prod"),
    # a residual sum / a gate: two activations
    "Add": ("%x: f32[1,3,6,6]", "init %w: f32[1] = 0.25", "%x2 = Mul(%x, %w)\n  %c = Add(%x, %x2) @prod"),
    "Mul": ("%x: f32[1,3,6,6]", "init %w: f32[1] = 0.25", "%x2 = Add(%x, %w)\n  %c = Mul(%x, %x2) @prod"),
}
ACTIVATIONS = {
    "Relu": "%y = Relu(%c) @act",
    "Clip": "%y = Clip(%c, %lo, %hi) @act",
    "ReLU6": "%y = Clip(%c, %zero, %six) @act",
    "ClipMinOnly": "%y = Clip(%c, %lo) @act",
    "LeakyRelu": "%y = LeakyRelu(%c) {alpha=0.1} @act",
    "HardSwish": "%y = HardSwish(%c) @act",
    "HardSigmoid": "%y = HardSigmoid(%c) {alpha=0.2, beta=0.5} @act",
    "Sigmoid": "%y = Sigmoid(%c) @act",
    "Tanh": "%y = Tanh(%c) @act",
}
CONSTS = """  init %lo: f32[] = -0.5
  init %hi: f32[] = 0.75
  init %zero: f32[] = 0.0
  init %six: f32[] = 6.0
  init %three: f32[] = 3.0"""


def producer_model(producer, act_line, extra="", outputs="%y", opset=17):
    decl, init, line = PRODUCERS[producer]
    return model(f"""graph g({decl}) -> ({outputs}) {{
  {init}
{CONSTS}
  {line}
  {act_line}
{extra}}}""", opset)


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
@pytest.mark.parametrize("producer", sorted(PRODUCERS))
def test_activation_marked_fused_with_producer(producer, act):
    m = producer_model(producer, ACTIVATIONS[act])
    before = structure_text(m)
    res = optimize_and_compare(m, "fuse-activation")
    assert res.records[0].stats == {"fused_activations": 1}
    assert structure_text(m) == before  # both nodes stay: the fusion is a mark
    prod, a = node(m, "prod"), node(m, "act")
    assert fusion.fused_producer(a) is prod and fusion.fused_activation(prod) is a
    assert fusion.is_fused_edge(prod.output) and not fusion.is_fused_edge(a.output)
    assert marks(m) == {"act": {fusion.FUSED_PRODUCER_KEY: producer}}
    assert not run_pipeline(m, "fuse-activation").modified


def test_clip_attribute_form_opset6():
    m = producer_model("Conv", "%y = Clip(%c) {min=0.0, max=6.0} @act", opset=6)
    optimize_and_compare(m, "fuse-activation")
    assert fusion.fused_producer(node(m, "act")) is node(m, "prod")


@pytest.mark.parametrize("act_line, extra, outputs, reason", [
    ("%y = Relu(%c) @act", "  %z = Neg(%c)\n", "%y, %z", "'c' (output of Conv node 'prod') has 2 readers"),
    ("%y = Relu(%c) @act", "", "%y, %c", "'c' (output of Conv node 'prod') is a graph output"),
    ("%b = Relu(%c)\n  %y = Relu(%b) @act", "", "%y", "produced by unnamed Relu node, not one of"),
    ("%y = Relu(%x) @act", "", "%y, %c", "'x' of Relu node 'act' is a graph input"),
])
def test_activation_refusals_name_the_reason(act_line, extra, outputs, reason):
    m = producer_model("Conv", act_line, extra, outputs)
    tracer = MatchTracer()
    apply_marks(m, FuseActivation.rules, tracer=tracer)
    assert fusion.fused_producer(node(m, "act")) is None and not fusion.is_marked(node(m, "act"))
    reasons = [e.failure.reason for e in tracer.entries if e.root.name == "act"]
    assert any(reason in r for r in reasons), reasons


def test_clip_with_runtime_bound_is_not_fused():
    m = model("""graph g(%hi: f32[], %x: f32[1,3,6,6]) -> (%y) {
  init %w: f32[4,3,3,3] = 0.25
  init %zero: f32[] = 0.0
  %c = Conv(%x, %w) @prod
  %y = Clip(%c, %zero, %hi) @act
}""")
    tracer = MatchTracer()
    assert not apply_marks(m, FuseActivation.rules, tracer=tracer)
    assert "max 'hi' is not a constant" in tracer.closest("ProducerActivation").failure.reason


def test_batchnorm_producer_is_not_fused():
    m = model("""graph g(%x: f32[1,2,4,4]) -> (%y) {
  init %s: f32[2] = [1.0, 2.0]
  init %b: f32[2] = [0.0, 1.0]
  %n = BatchNormalization(%x, %s, %b, %b, %s)
  %y = Relu(%n) @act
}""")
    tracer = MatchTracer()
    assert not apply_marks(m, FuseActivation.rules, tracer=tracer)
    assert "produced by unnamed BatchNormalization node, not one of Add, Conv, ConvTranspose, Gemm, MatMul, Mul" in \
        tracer.closest("ProducerActivation").failure.reason


@pytest.mark.parametrize("op", ["Add", "Mul"])
def test_elementwise_producer_with_a_constant_operand_is_not_fused(op):
    """A bias Add (or the x + 3 of a decomposed hard-swish) is no producer: only an Add / Mul of
    two activations takes a fused activation, even before canonicalize folds its constant."""
    m = model(f"""graph g(%x: f32[1,2,4,4]) -> (%y) {{
  init %b: f32[2] = [0.5, 1.0]
  init %shape: i64[3] = [2, 1, 1]
  %bb = Reshape(%b, %shape)
  %s = {op}(%x, %bb) @prod
  %y = Relu(%s) @act
}}""")
    tracer = MatchTracer()
    assert not apply_marks(m, FuseActivation.rules, tracer=tracer)
    assert f"only an {op} of two activations takes a fused activation" in \
        tracer.closest("ProducerActivation").failure.reason


def test_activation_inside_subgraph_is_marked():
    m = model("""graph main(%cond: bool[], %x: f32[2,5]) -> (%y) {
  init %w: f32[5,4] = 0.5
  %y = If(%cond) {else_branch=graph e() -> (%r) {
    %c = MatMul(%x, %w) @inner_mm
    %r = Relu(%c) @inner_relu
  }, then_branch=graph t() -> (%s) {
    %s = Neg(%x)
  }}
}""")
    assert run_pipeline(m, "fuse-activation").modified
    assert fusion.fused_producer(node(m, "inner_relu")) is node(m, "inner_mm")


# -- decomposed hard-swish -----------------------------------------------------------------------
HARD_SWISH_FORMS = {
    # name: (lines computing %y from %c, the group's form)
    "clip_div": ("%a = Add(%c, %three) @add\n  %k = Clip(%a, %zero, %six) @clip\n"
                 "  %t = Mul(%c, %k) @mul\n  %y = Div(%t, %six) @act", fusion.CLIP_HARD_SWISH),
    "clip_div_commuted": ("%a = Add(%three, %c) @add\n  %k = Clip(%a, %zero, %six) @clip\n"
                          "  %t = Mul(%k, %c) @mul\n  %y = Div(%t, %six) @act", fusion.CLIP_HARD_SWISH),
    "clip_without_div": ("%a = Add(%c, %three) @add\n  %k = Clip(%a, %zero, %six) @clip\n  %y = Mul(%c, %k) @act",
                         fusion.SCALED_CLIP_HARD_SWISH),
    "hardsigmoid_mul": ("%h = HardSigmoid(%c) {alpha=0.16666667, beta=0.5} @hs\n  %y = Mul(%c, %h) @act",
                        fusion.HARD_SIGMOID_SWISH),
    "hardsigmoid_mul_commuted": ("%h = HardSigmoid(%c) @hs\n  %y = Mul(%h, %c) @act", fusion.HARD_SIGMOID_SWISH),
    "silu": ("%h = Sigmoid(%c) @hs\n  %y = Mul(%c, %h) @act", fusion.SIGMOID_SWISH),
    "silu_commuted": ("%h = Sigmoid(%c) @hs\n  %y = Mul(%h, %c) @act", fusion.SIGMOID_SWISH),
}


@pytest.mark.parametrize("name", sorted(HARD_SWISH_FORMS))
def test_decomposed_hard_swish_marked_as_group_fused_with_conv(name):
    lines, form = HARD_SWISH_FORMS[name]
    m = producer_model("Conv", lines)
    before = structure_text(m)
    res = optimize_and_compare(m, "fuse-activation")
    assert res.records[0].stats == {"fused_activations": 1}
    assert structure_text(m) == before
    prod, act = node(m, "prod"), node(m, "act")
    assert marks(m) == {"act": {fusion.ACTIVATION_GROUP_KEY: form, fusion.FUSED_PRODUCER_KEY: "Conv"}}
    assert fusion.fused_producer(act) is prod and fusion.fused_activation(prod) is act
    gate = "hs" if form in (fusion.HARD_SIGMOID_SWISH, fusion.SIGMOID_SWISH) else "clip"
    unit = fusion.activation_group(node(m, gate))
    assert unit is not None and unit.root is act and unit.form == form and unit.input is prod.output
    # no Q/DQ on the conv output nor inside the group; the group's output is quantized
    assert all(fusion.is_fused_edge(v) for v in [prod.output] + unit.internal_values())
    assert not fusion.is_fused_edge(act.output)
    assert not run_pipeline(m, "fuse-activation").modified


def test_hard_swish_whose_div_was_folded_away_is_a_group_but_never_inside_a_whole_one():
    # "/ 3" does not complete a hard-swish: the Mul roots a 6 * hard-swish group, the Div stays outside
    m = producer_model("Conv", "%a = Add(%c, %three)\n  %k = Clip(%a, %zero, %six)\n  %t = Mul(%c, %k) @mul\n"
                               "  %y = Div(%t, %three) @act")
    run_pipeline(m, "fuse-activation")
    assert marks(m) == {"mul": {fusion.ACTIVATION_GROUP_KEY: fusion.SCALED_CLIP_HARD_SWISH,
                                fusion.FUSED_PRODUCER_KEY: "Conv"}}
    # with "/ 6" the Mul is inside the whole group, never a group of its own
    whole = producer_model("Conv", HARD_SWISH_FORMS["clip_div"][0])
    with pytest.raises(fusion.FusionRefused, match="inside the x\\*Clip\\(x\\+3,0,6\\)/6 group rooted at Div node 'act'"):
        fusion.find_activation(node(whole, "mul"), fusion.SCALED_CLIP_HARD_SWISH)


def test_hard_swish_after_unfusable_producer_is_marked_as_group_only():
    m = model(f"""graph g(%x: f32[1,2,4,4]) -> (%y) {{
{CONSTS}
  %c = Sigmoid(%x) @prod
  %a = Add(%c, %three)
  %k = Clip(%a, %zero, %six)
  %t = Mul(%c, %k) @mul
  %y = Div(%t, %six) @act
}}""")
    res = optimize_and_compare(m, "fuse-activation")
    assert res.records[0].stats == {"unfused_activation_groups": 1}
    assert marks(m) == {"act": {fusion.ACTIVATION_GROUP_KEY: fusion.CLIP_HARD_SWISH}}
    assert fusion.fused_producer(node(m, "act")) is None
    assert fusion.is_fused_edge(node(m, "mul").output) and not fusion.is_fused_edge(node(m, "prod").output)
    assert not run_pipeline(m, "fuse-activation").modified


@pytest.mark.parametrize("lines, reason", [
    ("%a = Add(%c, %six)\n  %k = Clip(%a, %zero, %six)\n  %t = Mul(%c, %k)\n  %y = Div(%t, %six) @act",
     "is not x * Clip(x + 3, 0, 6)"),
    ("%a = Add(%c, %three)\n  %k = Clip(%a, %zero, %three) @clip\n  %t = Mul(%c, %k)\n  %y = Div(%t, %six) @act",
     "clips to [0.0, 3.0]"),
    ("%a = Add(%c, %three)\n  %k = Clip(%a, %zero, %six)\n  %t = Mul(%c, %k)\n  %y = Div(%t, %three) @act",
     "does not divide by a constant 6"),
    ("%a = Add(%c, %three)\n  %k = Clip(%a, %zero, %six)\n  %t = Mul(%c, %k)\n  %y = Div(%t, %six) @act\n"
     "  %z = Neg(%k)", "also read by unnamed Neg node"),
    ("%h = HardSigmoid(%x2)\n  %y = Mul(%c, %h) @act", "does not multiply a value by HardSigmoid of the same value"),
    ("%h = Sigmoid(%x2)\n  %y = Mul(%c, %h) @act", "does not multiply a value by Sigmoid of the same value"),
    ("%h = Sigmoid(%c)\n  %y = Mul(%c, %h) @act\n  %z = Neg(%h)", "also read by unnamed Neg node"),
])
def test_hard_swish_near_misses_are_not_groups(lines, reason):
    m = model(f"""graph g(%x: f32[1,3,6,6], %x2: f32[1,4,6,6]) -> (%y{', %z' if '%z =' in lines else ''}) {{
  init %w: f32[4,3,3,3] = 0.25
{CONSTS}
  %c = Conv(%x, %w) {{pads=[1, 1, 1, 1]}}
  {lines}
}}""")
    tracer = MatchTracer()
    apply_marks(m, FuseActivation.rules, tracer=tracer)
    assert not fusion.is_marked(node(m, "act"))
    reasons = [e.failure.reason for e in tracer.entries if e.root.name == "act"]
    assert any(reason in r for r in reasons), reasons


# -- stale marks, save / load, pipelines -----------------------------------------------------------
def test_stale_mark_is_not_trusted_and_rerun_removes_it():
    m = producer_model("Conv", ACTIVATIONS["Relu"], outputs="%y")
    run_pipeline(m, "fuse-activation")
    prod, act = node(m, "prod"), node(m, "act")
    assert fusion.fused_producer(act) is prod
    # a later rewrite gives the conv output a second reader: the pair is no longer legal
    extra = qgraph.Node(ops.Neg, [prod.output], ["z"], name="late_reader")
    m.graph.append(extra)
    m.graph.outputs.append(extra.output)
    assert fusion.fused_producer(act) is None and fusion.fused_activation(prod) is None
    assert not fusion.is_fused_edge(prod.output)
    res = run_pipeline(m, "fuse-activation")
    assert res.modified and res.records[0].stats == {"stale_marks_removed": 1}
    assert not fusion.is_marked(act)
    assert not run_pipeline(m, "fuse-activation").modified


def test_mark_api_refuses_illegal_pairs():
    m = producer_model("Conv", ACTIVATIONS["Relu"], extra="  %z = Neg(%c)\n", outputs="%y, %z")
    with pytest.raises(fusion.FusionRefused, match="has 2 readers"):
        fusion.mark_fused_activation(node(m, "act"))
    assert not fusion.is_marked(node(m, "act"))


@pytest.mark.parametrize("ir_version", [7, 8, 10])
def test_save_load_keeps_marks(tmp_path, ir_version):
    lines, _ = HARD_SWISH_FORMS["clip_div"]
    m = producer_model("Conv", lines, opset=12)
    m.graph.append(qgraph.Node(ops.Relu, [m.graph.inputs[0]], ["r"], name="unfused"))
    m.graph.outputs.append(node(m, "unfused").output)
    m.ir_version = ir_version
    original = onnx.shape_inference.infer_shapes(qgraph.to_proto(m))  # typed values, for the checker
    m = qgraph.load(original)
    run_pipeline(m, "fuse-activation")
    expected = marks(m)
    path = str(tmp_path / "marked.onnx")
    qgraph.save(m, path)
    onnx.checker.check_model(path, full_check=True)  # node metadata_props pass the checker at IR < 10 too
    loaded = qgraph.load(path)
    assert marks(loaded) == expected
    assert fusion.fused_producer(node(loaded, "act")) is node(loaded, "prod")
    assert not run_pipeline(loaded, "fuse-activation").modified
    feeds = feeds_for(original)
    assert max_rel_error(run(original, feeds), run(path, feeds)) == 0.0


def test_fuse_activation_inside_fixed_point_group():
    m = producer_model("Conv", ACTIVATIONS["Relu"])
    run_pipeline(m, "fixed-point(fuse-pad,fuse-activation)")
    assert fusion.fused_producer(node(m, "act")) is node(m, "prod")


def test_light_model_marks_survive_export_and_run():
    # IR version 3 model: ONNX Runtime loads it with node metadata_props and outputs are unchanged
    path = os.path.join(LIGHT_DIR, "light_squeezenet.onnx")
    m = qgraph.load(path)
    res = optimize_and_compare(m, "cleanup,fuse-pad,fuse-activation")
    assert res.records[-1].stats["fused_activations"] == 26
    assert sum(fusion.fused_producer(n) is not None for n in m.graph) == 26


# -- property: random Conv / Pad / activation chains ----------------------------------------------
@st.composite
def random_chains(draw):
    opset = draw(st.sampled_from([10, 13, 17]))
    c, h, w = draw(st.integers(1, 3)), draw(st.integers(5, 9)), draw(st.integers(5, 9))
    input_shape = [1, c, h, w]
    nodes, inits, outputs = [], [], []
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    cur, k = "x", 0

    def const(name, array):
        inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    for _ in range(draw(st.integers(1, 6))):
        k += 1
        kind = draw(st.sampled_from(["pad_conv", "conv", "act", "act", "hard_swish", "branch"]))
        out = f"v{k}"
        if kind in ("pad_conv", "conv"):
            src = cur
            if kind == "pad_conv":
                pads = [0, 0] + draw(st.lists(st.integers(0, 2), min_size=2, max_size=2))
                pads += [0, 0] + draw(st.lists(st.integers(0, 2), min_size=2, max_size=2))
                modes = ["constant"] * 4 + (["reflect", "edge"] if min(h, w) >= 3 else [])
                mode = draw(st.sampled_from(modes))
                if mode == "constant" and draw(st.integers(0, 5)) == 0:  # a channel pad must not fold
                    pads[1] = 1
                src = f"p{k}"
                if opset < 11:
                    nodes.append(helper.make_node("Pad", [cur], [src], mode=mode, pads=pads))
                else:
                    nodes.append(helper.make_node("Pad", [cur, const(f"pads{k}", np.array(pads, np.int64))], [src],
                                                  mode=mode))
                c += pads[1] + pads[5]
                h += pads[2] + pads[6]
                w += pads[3] + pads[7]
            co = draw(st.integers(1, 4))
            kh, kw = draw(st.integers(1, min(3, h))), draw(st.integers(1, min(3, w)))
            cpads = draw(st.lists(st.integers(0, 1), min_size=4, max_size=4))
            wt = const(f"w{k}", rng.standard_normal((co, c, kh, kw)).astype(np.float32))
            b = [const(f"b{k}", rng.standard_normal(co).astype(np.float32))] if draw(st.booleans()) else []
            nodes.append(helper.make_node("Conv", [src, wt] + b, [out], pads=cpads))
            c, h, w = co, h + cpads[0] + cpads[2] - kh + 1, w + cpads[1] + cpads[3] - kw + 1
        elif kind == "act":
            if draw(st.integers(0, 3)) == 0:  # the activation's input has a second reader
                nodes.append(helper.make_node("Neg", [cur], [f"n{k}"]))
                outputs.append(f"n{k}")
            act = draw(st.sampled_from(["Relu", "Clip", "LeakyRelu", "HardSigmoid", "Sigmoid", "Tanh", "HardSwish"]))
            if act == "HardSwish" and opset < 14:
                act = "Sigmoid"
            if act == "Clip":
                lo = draw(st.floats(-2, 0, width=32))
                hi = lo + draw(st.floats(0.125, 6, width=32))
                if opset < 11:
                    nodes.append(helper.make_node("Clip", [cur], [out], min=lo, max=hi))
                else:
                    nodes.append(helper.make_node("Clip", [cur, const(f"lo{k}", np.float32(lo)),
                                                          const(f"hi{k}", np.float32(hi))], [out]))
            elif act == "LeakyRelu":
                nodes.append(helper.make_node(act, [cur], [out], alpha=draw(st.floats(0.01, 0.5))))
            else:
                nodes.append(helper.make_node(act, [cur], [out]))
        elif kind == "hard_swish":
            three, six = const(f"three{k}", np.float32(3)), const(f"six{k}", np.float32(6))
            if opset < 11:
                clip = helper.make_node("Clip", [f"a{k}"], [f"k{k}"], min=0.0, max=6.0)
            else:
                clip = helper.make_node("Clip", [f"a{k}", const(f"zero{k}", np.float32(0)), six], [f"k{k}"])
            swap = draw(st.booleans())  # operand order of Add and Mul
            nodes += [helper.make_node("Add", [three, cur] if swap else [cur, three], [f"a{k}"]), clip,
                      helper.make_node("Mul", [f"k{k}", cur] if swap else [cur, f"k{k}"], [f"t{k}"])]
            if draw(st.booleans()):
                nodes.append(helper.make_node("Div", [f"t{k}", six], [out]))
            else:  # the "/ 6" already folded away
                out = f"t{k}"
        else:  # a second reader of the current value, kept as an extra graph output
            nodes.append(helper.make_node("Neg", [cur], [f"n{k}"]))
            outputs.append(f"n{k}")
            continue
        cur = out
    outputs.append(cur)
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, input_shape)],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in dict.fromkeys(outputs)],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=7)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_chains(), st.integers(0, 2**31 - 1))
def test_fusion_passes_keep_outputs_on_random_chains(proto, seed):
    check_fusion_keeps_outputs(proto, seed)


def test_fusion_keeps_outputs_of_relu_then_negative_clip():
    # Once found by the property test: Clip(Relu(x), -2, -1) is -1 everywhere; ONNX Runtime's
    # own Relu+Clip fusion makes it Clip(x, 0, -1) and refuses to load it, so the oracle runs
    # with ORT's optimizations off (qgraph.testing.ort.run).
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Clip", ["r"], ["y"], min=-2.0, max=-1.0)],
        "relu_clip", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 10)], ir_version=7)
    check_fusion_keeps_outputs(proto, 0)


def check_fusion_keeps_outputs(proto, seed):
    m = qgraph.load(proto)
    run_pipeline(m, "fuse-pad,fuse-activation,cleanup")
    new = qgraph.to_proto(m)
    feeds = feeds_for(proto, seed)
    assert max_rel_error(run(proto, feeds), run(new, feeds)) <= 1e-5
    assert [o.name for o in new.graph.output] == [o.name for o in proto.graph.output]
    # every legal (producer, one-op activation) pair is marked, and every mark is valid
    for n in m.graph:
        if n.op in fusion.SINGLE_ACTIVATIONS:
            try:
                legal = fusion.check_producer_fusion(fusion.find_activation(n))
            except fusion.FusionRefused:
                legal = None
            assert fusion.fused_producer(n) is legal
        if fusion.is_marked(n):
            unit = fusion.marked_unit(n)
            assert unit is not None
            if fusion.fused_producer(n) is not None:  # checked here without fusion's own legality test
                x = unit.input
                assert set(x.users()) <= set(unit.nodes) and not x.is_graph_output()
        for form in fusion.GROUP_FORMS:  # every decomposed hard-swish is marked as a group
            try:
                fusion.find_activation(n, form)
            except fusion.FusionRefused:
                continue
            assert n.metadata_props.get(fusion.ACTIVATION_GROUP_KEY) == form
    # a Pad left in front of a Conv is one that must not fold
    for n in m.graph:
        p = n.inputs[0].producer() if n.op is ops.Conv else None
        if p is not None and p.op is ops.Pad:
            pads = p.attr("pads") or constant_tensor(p.inputs[1]).numpy().tolist()
            assert p.attr("mode", "constant") != "constant" or pads[1] or pads[5]
    # a second run changes nothing; the marks survive export / import
    assert not run_pipeline(m, "fuse-pad,fuse-activation,cleanup").modified
    assert marks(qgraph.load(new)) == marks(m)


# -- PP-OCRv4 -------------------------------------------------------------------------------------
def _ocr_models():
    import rapidocr_onnxruntime

    return sorted(glob.glob(os.path.join(os.path.dirname(rapidocr_onnxruntime.__file__), "models", "*.onnx")))


# model: (input shape, Conv+activation pairs, x*Clip(x+3,0,6)/6 groups whose x is not a Conv output)
OCR_EXPECTED = {
    "det": ((1, 3, 64, 64), {"Relu": 10, "HardSigmoid": 10}, 24),
    "rec": ((1, 3, 48, 320), {"Relu": 2, "HardSigmoid": 2}, 28),
    "cls": ((1, 3, 48, 192), {}, 18),
}


@pytest.mark.parametrize("path", _ocr_models(), ids=os.path.basename)
def test_ppocr_fusion_counts_and_outputs(path):
    key = next(k for k in OCR_EXPECTED if f"_{k}_" in os.path.basename(path))
    shape, pairs, groups = OCR_EXPECTED[key]
    m = qgraph.load(path)
    run_pipeline(m, "cleanup")
    before = qgraph.to_proto(m)
    res = run_pipeline(m, "fuse-pad,fuse-activation")
    fused: dict[str, int] = {}
    for n in m.graph:
        p = fusion.fused_producer(n)
        if p is not None:
            assert p.op is ops.Conv
            fused[n.op_type] = fused.get(n.op_type, 0) + 1
    assert fused == pairs
    assert res.records[1].stats.get("unfused_activation_groups", 0) == groups
    assert sum(n.metadata_props.get(fusion.ACTIVATION_GROUP_KEY) == fusion.CLIP_HARD_SWISH for n in m.graph) == groups
    after = qgraph.to_proto(m)
    feeds = {"x": np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    assert max_rel_error(run(before, feeds), run(after, feeds)) <= 1e-5
    assert not run_pipeline(m, "fuse-pad,fuse-activation").modified
