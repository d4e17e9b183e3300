"""canonicalize and its parts: constant folding, shape inference, old op forms."""

import glob
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import qgraph
from qgraph.ir.text import parse_model
from qgraph.ir.types import TensorType
from qgraph.testing.ort import max_rel_error, random_feeds, run
from tests.conftest import LIGHT_DIR, graph_text, run_pipeline, same_ir


def test_constant_nodes_become_initializers_and_chains_fold():
    m = parse_model("""model opset {"": 13}
graph g(%x: f32[2,3]) -> (%y) {
  init %shape: i64[1] = [3]
  %c = Constant() {value_float=2.0}
  %filled = ConstantOfShape(%shape) {value=tensor<f32[1]> [0.5]}
  %axes = Constant() {value_ints=[0]}
  %u = Unsqueeze(%filled, %axes)
  %s = Mul(%u, %c)
  %y = Add(%x, %s)
}""")
    res = run_pipeline(m, "canonicalize")
    assert res.modified
    assert [n.op_type for n in m.graph] == ["Add"]
    folded = list(m.graph)[0].inputs[1]
    assert folded.name == "s" and np.array_equal(folded.const_value.numpy(), np.full((1, 3), 1.0, np.float32))


def test_size_cap_keeps_big_results_computed():
    m = parse_model("""model opset {"": 13}
graph g(%x: f32[1]) -> (%y) {
  init %shape: i64[1] = [1000]
  %big = ConstantOfShape(%shape)
  %y = Add(%x, %big)
}""")
    run_pipeline(m, "fold-constants(max-size=100)")
    assert [n.op_type for n in m.graph] == ["ConstantOfShape", "Add"]
    run_pipeline(m, "fold-constants(max-size=1000)")
    assert [n.op_type for n in m.graph] == ["Add"]


def test_random_ops_are_not_folded():
    m = parse_model("""model opset {"": 13}
graph g(%x: f32[2]) -> (%y) {
  %r = RandomNormal() {shape=[2]}
  %y = Add(%x, %r)
}""")
    assert not run_pipeline(m, "fold-constants").modified


def test_shape_of_partially_static_input_folds_static_dims():
    m = parse_model("""model opset {"": 13}
graph g(%x: f32[N,3,?,?]) -> (%y, %z) {
  init %one: i64[] = [1]
  init %starts: i64[1] = [2]
  init %ends: i64[1] = [4]
  %s = Shape(%x)
  %c = Gather(%s, %one)
  %y = Cast(%c) {to=1}
  %hw = Slice(%s, %starts, %ends)
  %z = Cast(%hw) {to=1}
}""")
    run_pipeline(m, "fold-constants")
    assert [n.op_type for n in m.graph] == ["Shape", "Slice", "Cast"]  # Gather(Shape)[1] = 3 folded
    # the Cast of the folded constant folded too
    assert "y" in m.graph.initializers and float(m.graph.initializers["y"].const_value.numpy()) == 3.0
    assert m.graph.initializers["y"].const_value.shape == ()  # a folded scalar stays a scalar


def test_infer_shapes_types_every_value_and_follows_symbolic_reshape():
    m = parse_model("""model opset {"": 13}
graph g(%x: f32[N,8,4,4]) -> (%y) {
  init %zero: i64[] = [0]
  init %minus1: i64[1] = [-1]
  %s = Shape(%x)
  %n = Gather(%s, %zero)
  %n1 = Unsqueeze(%n) {axes=[0]}
  %shape = Concat(%n1, %minus1) {axis=0}
  %flat = Reshape(%x, %shape)
  %y = Relu(%flat)
}""".replace("{axes=[0]}", "{}").replace("Unsqueeze(%n)", "Unsqueeze(%n, %zero1)").replace(
        "init %minus1", "init %zero1: i64[1] = [0]\n  init %minus1"))
    run_pipeline(m, "infer-shapes")
    types = {n.output.name: n.output.type for n in m.graph}
    assert str(types["flat"]) in ("f32[N,?]", "f32[N,128]"), types["flat"]
    assert all(isinstance(t, TensorType) and t.shape is not None for t in types.values())


def test_sum_becomes_add_chain():
    m = parse_model("""model opset {"": 13}
graph g(%a: f32[2], %b: f32[2], %c: f32[2]) -> (%y, %z) {
  %y = Sum(%a, %b, %c) @sum3
  %s1 = Sum(%a)
  %z = Neg(%s1)
}""")
    run_pipeline(m, "upgrade-ops")
    assert same_ir(m, """graph g(%a: f32[2], %b: f32[2], %c: f32[2]) -> (%y, %z) {
  %sum3_add0 = Add(%a, %b) @sum3_add0
  %y = Add(%sum3_add0, %c) @sum3_add1
  %z = Neg(%a)
}"""), graph_text(m)


def test_initializer_inputs_stop_being_inputs():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    w = helper.make_tensor_value_info("w", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    g = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["y"])], "g", [x, w], [y],
                          [numpy_helper.from_array(np.array([2, 3], np.float32), "w")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 9)], ir_version=3)
    m = qgraph.load(model)
    run_pipeline(m, "remove-initializer-inputs")
    assert [v.name for v in m.graph.inputs] == ["x"] and m.ir_version == 4
    assert qgraph.to_proto(m).graph.initializer[0].name == "w"


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(LIGHT_DIR, "*.onnx"))), ids=os.path.basename)
def test_canonicalize_light_models(path):
    original = onnx.load(path)
    m = qgraph.load(original)
    before = len(m.graph)
    run_pipeline(m, "canonicalize")
    assert len(m.graph) < before
    assert not any(n.op_type in ("Sum", "Identity", "Dropout") for n in m.graph)
    # ConstantOfShape stays only where its result exceeds fold-constants' size cap (16M elements)
    for n in m.graph:
        if n.op_type == "ConstantOfShape":
            assert np.prod(n.inputs[0].const_value.numpy()) > 1 << 24
    for n in m.graph:
        for o in n.outputs:
            assert isinstance(o.type, TensorType) and o.type.shape is not None, (n, o)
    feeds = random_feeds(original)
    assert max_rel_error(run(original, feeds), run(qgraph.to_proto(m), feeds)) <= 1e-5


# Expanded AffineGrid feeds 1-element tensors (not scalars) to Range, against Range's spec;
# ONNX Runtime runs it only while it cannot see the shapes. Once infer-shapes writes them,
# its shape inference rejects the model. qgraph keeps the types (they are correct).
KNOWN_SPEC_VIOLATIONS = {"test_affine_grid_2d_expanded", "test_affine_grid_2d_align_corners_expanded"}


def test_canonicalize_keeps_outputs_on_conformance_suite():
    from qgraph.passes import registry
    from qgraph.pm import PassContext, PassManager
    from qgraph.testing import conformance

    def transform(model):
        m = qgraph.load(model)
        PassManager(registry().parse("canonicalize"), PassContext(verify_each=True)).run(m)
        return qgraph.to_proto(m)

    outcomes = list(conformance.run_suite(transform=transform))
    fails = {o.name: o.detail for o in outcomes if o.status == "fail"}
    assert set(fails) <= KNOWN_SPEC_VIOLATIONS, fails
    assert sum(o.status == "pass" for o in outcomes) >= 1524
