"""eliminate-identity and dead-code-elimination: structure (before / expected) and numerics."""

import glob
import os

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import qgraph
from qgraph.ir.text import parse_model
from qgraph.passes import registry
from qgraph.pm import PassContext, PassManager
from qgraph.rewrite import MatchTracer, apply_rules
from qgraph.passes.cleanup import EliminateIdentity
from qgraph.testing import conformance
from qgraph.testing.ort import compare_all, random_feeds, run
from tests.conftest import LIGHT_DIR, graph_text, run_pipeline, same_ir


def opt(text, pipeline, opset=17):
    m = parse_model(f'model opset {{"": {opset}}}\n' + text)
    res = run_pipeline(m, pipeline)
    return m, res


# -- eliminate-identity ------------------------------------------------------------------------
def test_identity_removed_between_nodes():
    m, res = opt("""graph g(%x: f32[2]) -> (%y) {
  %a = Relu(%x) @r1
  %b = Identity(%a)
  %y = Neg(%b) @neg
}""", "eliminate-identity")
    assert res.records[0].stats == {"IdentityRule": 1}
    assert same_ir(m, """graph g(%x: f32[2]) -> (%y) {
  %a = Relu(%x) @r1
  %y = Neg(%a) @neg
}"""), graph_text(m)


def test_identity_feeding_graph_output_renames_producer():
    m, _ = opt("""graph g(%x: f32[2]) -> (%y) {
  %a = Relu(%x)
  %y = Identity(%a)
}""", "eliminate-identity")
    assert same_ir(m, """graph g(%x: f32[2]) -> (%y) {
  %y = Relu(%x)
}"""), graph_text(m)


@pytest.mark.parametrize("text, reason", [
    ("graph g(%x: f32[2]) -> (%y) {\n  %y = Identity(%x)\n}", "'x' (a graph input)"),
    ("graph g(%x: f32[2]) -> (%y) {\n  init %w: f32[2] = [1.0, 2.0]\n  %y = Identity(%w)\n}", "(an initializer)"),
    ("graph g(%x: f32[2]) -> (%a, %y) {\n  %a = Relu(%x)\n  %y = Identity(%a)\n}", "(already a graph output)"),
])
def test_identity_kept_when_removal_would_rename_the_interface(text, reason):
    m = parse_model(text)
    before = graph_text(m)
    tracer = MatchTracer()
    assert not apply_rules(m, EliminateIdentity.rules, tracer=tracer)
    assert graph_text(m) == before
    assert reason in tracer.closest("IdentityRule").failure.reason


def test_dropout_inference_removed_training_kept():
    m, _ = opt("""graph g(%x: f32[2]) -> (%y, %z, %w) {
  init %ratio: f32[] = [0.5]
  init %train: bool[] = [1]
  init %infer: bool[] = [0]
  %a, _ = Dropout(%x, %ratio)
  %y = Relu(%a)
  %b, _ = Dropout(%x, %ratio, %train) @training
  %z = Relu(%b)
  %c, %mask = Dropout(%x, %ratio, %infer) @mask_read
  %w = Where(%mask, %c, %c)
}""", "eliminate-identity,dead-code-elimination")
    ops_left = [(n.op_type, n.name) for n in m.graph]
    assert ("Dropout", "training") in ops_left and ("Dropout", "mask_read") in ops_left
    assert sum(op == "Dropout" for op, _ in ops_left) == 2
    assert "infer" in m.graph.initializers and "train" in m.graph.initializers


def test_dropout_opset6_is_test():
    m, _ = opt("""graph g(%x: f32[2]) -> (%y, %z) {
  %a = Dropout(%x) {is_test=1}
  %y = Relu(%a)
  %b = Dropout(%x) {is_test=0} @train
  %z = Relu(%b)
}""", "eliminate-identity", opset=6)
    assert [n.name for n in m.graph if n.op_type == "Dropout"] == ["train"]


def test_identity_inside_subgraph_and_outer_value():
    m, _ = opt("""graph main(%c: bool[], %x: f32[2]) -> (%y) {
  %y = If(%c) {else_branch=graph e() -> (%n) {
    %i = Identity(%x)
    %n = Neg(%i)
  }, then_branch=graph t() -> (%r) {
    %r = Identity(%x)
  }}
}""", "cleanup")
    # the else-branch Identity goes; the then-branch one forwards an outer value to the branch output: kept
    assert same_ir(m, """graph main(%c: bool[], %x: f32[2]) -> (%y) {
  %y = If(%c) {else_branch=graph e() -> (%n) {
    %n = Neg(%x)
  }, then_branch=graph t() -> (%r) {
    %r = Identity(%x)
  }}
}"""), graph_text(m)


# -- dead-code-elimination ---------------------------------------------------------------------
def test_dce_removes_dead_chains_and_initializers_in_one_run():
    m, res = opt("""graph g(%x: f32[2], %unused_input: f32[2]) -> (%y) {
  init %w: f32[2] = [1.0, 2.0]
  init %dead_w: f32[2] = [3.0, 4.0]
  %y = Mul(%x, %w)
  %d1 = Add(%x, %dead_w)
  %d2 = Exp(%d1)
  %d3 = Neg(%d2)
}""", "dead-code-elimination")
    assert res.records[0].stats == {"removed_nodes": 3, "removed_initializers": 1}
    assert same_ir(m, """graph g(%x: f32[2], %unused_input: f32[2]) -> (%y) {
  init %w: f32[2] = [1.0, 2.0]
  %y = Mul(%x, %w)
}"""), graph_text(m)


def test_dce_keeps_values_read_only_inside_subgraphs():
    m, res = opt("""graph main(%c: bool[], %x: f32[2]) -> (%y) {
  %only_inner = Relu(%x)
  %dead = Exp(%x)
  %y = If(%c) {else_branch=graph e() -> (%n) {
    %n = Neg(%only_inner)
  }, then_branch=graph t() -> (%r) {
    %inner_dead = Exp(%x)
    %r = Relu(%x)
  }}
}""", "dead-code-elimination")
    assert res.records[0].stats["removed_nodes"] == 2
    names = [n.op_type for n in m.graph.all_nodes()]
    assert names == ["Relu", "If", "Neg", "Relu"]


def test_second_run_changes_nothing():
    m = qgraph.load(os.path.join(os.path.dirname(__file__), "..", "golden", "models", "example_cnn.onnx"))
    assert run_pipeline(m, "cleanup").modified
    assert not run_pipeline(m, "cleanup").modified


# -- numerics ----------------------------------------------------------------------------------
def _cleanup_proto(model: onnx.ModelProto) -> onnx.ModelProto:
    m = qgraph.load(model)
    PassManager(registry().parse("cleanup"), PassContext(verify_each=True)).run(m)
    return qgraph.to_proto(m)


def test_cleanup_keeps_outputs_on_conformance_suite():
    outcomes = list(conformance.run_suite(transform=_cleanup_proto))
    fails = [o for o in outcomes if o.status == "fail"]
    assert not fails, fails[:5]
    assert sum(o.status == "pass" for o in outcomes) > 1500


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(LIGHT_DIR, "*.onnx"))), ids=os.path.basename)
def test_cleanup_keeps_outputs_on_light_models(path):
    original = onnx.load(path)
    feeds = random_feeds(original)
    new = _cleanup_proto(original)
    assert compare_all(run(original, feeds), run(new, feeds), [o.name for o in original.graph.output]) is None


# -- property: random graphs keep their outputs under cleanup -----------------------------------
UNARY = ["Relu", "Neg", "Identity", "Dropout", "Exp_dead", "Sigmoid"]
BINARY = ["Add", "Mul", "Sub"]


@st.composite
def random_graphs(draw):
    n = draw(st.integers(2, 12))
    live = ["x"]
    nodes, inits = [], []
    for i in range(n):
        out = f"v{i}"
        kind = draw(st.sampled_from(UNARY + BINARY))
        a = draw(st.sampled_from(live))
        if kind in BINARY:
            if draw(st.booleans()):
                b = draw(st.sampled_from(live))
            else:
                b = f"c{i}"
                data = np.asarray(draw(st.lists(st.floats(-2, 2, width=32), min_size=4, max_size=4)), np.float32)
                inits.append(numpy_helper.from_array(data, b))
            nodes.append(helper.make_node(kind, [a, b], [out]))
        elif kind == "Exp_dead":
            nodes.append(helper.make_node("Exp", [a], [f"dead{i}"]))
            continue
        elif kind == "Dropout":
            nodes.append(helper.make_node("Dropout", [a], [out]))
        else:
            nodes.append(helper.make_node(kind, [a], [out]))
        live.append(out)
    outputs = draw(st.lists(st.sampled_from(live), min_size=1, max_size=3, unique=True))
    graph = helper.make_graph(nodes, "random", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, [4]) for o in outputs], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_graphs(), st.integers(0, 2**31 - 1))
def test_cleanup_preserves_outputs_on_random_graphs(model, seed):
    feeds = {"x": np.random.default_rng(seed).standard_normal(4).astype(np.float32)}
    new = _cleanup_proto(model)
    ref = run(model, feeds)
    assert compare_all(ref, run(new, feeds), [o.name for o in model.graph.output]) is None
    assert [o.name for o in new.graph.output] == [o.name for o in model.graph.output]
    # a second run changes nothing
    m = qgraph.load(new)
    assert not run_pipeline(m, "cleanup").modified
    assert not any(n.op_type in ("Exp",) for n in m.graph)
