"""IR core: use-def chains, mutation while iterating, verifier, text form."""

import numpy as np
import pytest

from qgraph.errors import ParseError, QGraphError, VerificationError
from qgraph.ir import AttrType, Graph, Model, Node, TensorType, Value, ops
from qgraph.ir.dtypes import DType
from qgraph.ir.text import fingerprint, parse_model, print_model
from qgraph.ir.verify import verify


def f32(*shape):
    return TensorType(DType.FLOAT, shape)


def chain(n=4):
    x = Value("x", f32(2))
    g = Graph("g", inputs=[x])
    v = x
    nodes = []
    for i in range(n):
        node = Node(ops.Relu, [v], [Value(f"v{i}")], name=f"n{i}")
        g.append(node)
        nodes.append(node)
        v = node.output
    g.outputs.append(v)
    return Model(g, {"": 17}), nodes


def test_use_def_chains():
    m, nodes = chain(3)
    x = m.graph.inputs[0]
    assert x.uses() == [(nodes[0], 0)]
    assert nodes[1].inputs[0].producer() is nodes[0]
    assert nodes[0].output.users() == [nodes[1]]
    # rewire: n2 reads x directly
    nodes[2].replace_input(0, x)
    assert (nodes[2], 0) in x._uses and not nodes[1].output.has_uses()
    verify(m)


def test_replace_all_uses_with():
    m, nodes = chain(3)
    x = m.graph.inputs[0]
    nodes[0].output.replace_all_uses_with(x)
    assert nodes[1].inputs[0] is x
    assert x.users() == [nodes[0], nodes[1]]


def test_remove_refuses_used_node_and_names_users():
    m, nodes = chain(3)
    with pytest.raises(QGraphError, match=r"still used by Relu node 'n1'"):
        m.graph.remove(nodes[0])
    with pytest.raises(QGraphError, match="graph output"):
        m.graph.remove(nodes[2])


def test_mutation_while_iterating_is_safe():
    m, nodes = chain(5)
    g = m.graph
    seen = []
    for n in g:
        seen.append(n.name)
        if n.name == "n1":
            # drop n2 (rewire n3 to n1) and insert a node after n1: iteration visits it, skips n2
            nodes[3].replace_input(0, n.output)
            g.remove(nodes[2])
            g.insert_after(n, Node(ops.Identity, [n.output], [Value("extra")], name="extra"))
    assert seen == ["n0", "n1", "extra", "n3", "n4"]
    assert len(g) == 5
    verify(m)


def test_insert_before_and_len():
    m, nodes = chain(2)
    g = m.graph
    new = Node(ops.Neg, [m.graph.inputs[0]], [Value("neg")], name="neg") if hasattr(ops, "Neg") else \
        Node(ops.op("Neg"), [m.graph.inputs[0]], [Value("neg")], name="neg")
    g.insert_before(nodes[0], new)
    assert [n.name for n in g] == ["neg", "n0", "n1"]
    assert [n.name for n in reversed(g)] == ["n1", "n0", "neg"]
    assert len(g) == 3


def test_op_identities_are_interned():
    assert ops.op("Conv") is ops.Conv
    assert ops.op("Conv", "ai.onnx") is ops.Conv
    assert ops.parse_op("com.microsoft::QLinearConv") is ops.op("QLinearConv", "com.microsoft")
    assert ops.op("Conv", "com.microsoft") is not ops.Conv
    with pytest.raises(AttributeError):
        ops.Conv.op_type = "Relu"


def test_attributes_are_frozen_and_typed():
    n = Node(ops.Conv, [], 1, {"pads": [1, 1, 1, 1], "alpha": 1.0, "mode": "constant"})
    assert n.attr("pads") == (1, 1, 1, 1)
    assert n.attrs["alpha"].type == AttrType.FLOAT
    with pytest.raises(TypeError):
        n.attrs["pads"] = (0,)
    n.set_attr("pads", [0, 0, 0, 0])
    assert n.attr("pads") == (0, 0, 0, 0)
    with pytest.raises(TypeError, match="empty list"):
        n.set_attr("empty", [])
    n.set_attr("empty", [], AttrType.INTS)
    assert n.attrs["empty"].type == AttrType.INTS


def test_unique_name_avoids_all_values():
    m, _ = chain(2)
    assert m.graph.unique_name("v0") == "v0_1"
    assert m.graph.unique_name("v0") == "v0_2"
    assert m.graph.unique_name("fresh") == "fresh"


def test_replace_value_keeps_output_name():
    m = parse_model("""
    graph g(%x: f32[2]) -> (%y) {
      %a = Relu(%x)
      %y = Identity(%a)
    }""")
    g = m.graph
    ident = list(g)[1]
    a = ident.inputs[0]
    g.replace_value(ident.output, a)
    g.remove(ident)
    assert [v.name for v in g.outputs] == ["y"] and g.outputs[0] is a
    verify(m)


def test_replace_value_with_graph_input_keeps_name_with_identity():
    m = parse_model("""
    graph g(%x: f32[2]) -> (%y) {
      %y = Relu(%x)
    }""")
    g = m.graph
    relu = list(g)[0]
    g.replace_value(relu.output, g.inputs[0])
    g.remove(relu)
    assert [v.name for v in g.outputs] == ["y"]
    assert [n.op for n in g] == [ops.Identity]
    verify(m)


def test_verify_finds_dangling_use_and_order_problems():
    m, nodes = chain(3)
    # a node that was created reading v0 but never inserted: a dangling use
    Node(ops.Relu, [nodes[0].output], [Value("orphan")], name="orphan")
    with pytest.raises(VerificationError, match="removed unnamed|orphan|removed"):
        verify(m)


def test_verify_reports_cycle():
    m, nodes = chain(3)
    nodes[0].replace_input(0, nodes[2].output)  # n0 reads n2: a cycle
    with pytest.raises(VerificationError, match="cycle"):
        verify(m)


def test_verify_reports_out_of_order_and_duplicates():
    m, nodes = chain(3)
    g = m.graph
    nodes[2].output.name = "v0"
    with pytest.raises(VerificationError, match="'v0' is used by two different values"):
        verify(m)
    nodes[2].output.name = "v2"
    # move n0 to the end: n1 now reads v0 before it is defined
    nodes[1].replace_input(0, g.inputs[0])
    g.remove(nodes[0])
    nodes[0].graph = None
    g.append(nodes[0])
    nodes[1].replace_input(0, nodes[0].output)
    with pytest.raises(VerificationError, match="topological order"):
        verify(m)


def test_verify_undeclared_domain():
    m, nodes = chain(1)
    n = Node(ops.op("Foo", "custom.domain"), [m.graph.inputs[0]], [Value("foo")], name="foo")
    m.graph.append(n)
    m.graph.outputs.append(n.output)
    with pytest.raises(VerificationError, match="custom.domain"):
        verify(m)
    m.opset_imports["custom.domain"] = 1
    verify(m)


TEXT = """model opset {"": 17}
graph main(%x: f32[1,3,8,8], %s: i64[N]) -> (%y, %z) {
  init %w: f32[4,3,3,3] = <data 7f1e2d3c4b5a>
  init %b: f32[4] = [0.0, 0.1, 0.2, 0.3]
  %c: f32[1,4,8,8] = Conv(%x, %w, %b) {kernel_shape=[3, 3], pads=[1, 1, 1, 1]}
  %y = Relu(%c)
  %z, _ = Dropout(%y, _) {seed=3}
}"""


def test_text_round_trip():
    w = np.arange(108, dtype=np.float32).reshape(4, 3, 3, 3)
    m = parse_model(TEXT, {"w": w})
    verify(m)
    again = parse_model(print_model(m), {"w": w})
    assert print_model(again) == print_model(m)
    assert np.array_equal(m.graph.initializers["w"].const_value.numpy(), w)
    assert m.graph.inputs[1].shape == ("N",)


def test_text_round_trip_through_onnx_with_subgraph():
    import qgraph

    text = """model opset {"": 17}
graph main(%c: bool[], %x: f32[2]) -> (%y) {
  %y = If(%c) {else_branch=graph e() -> (%n) {
    %n = Neg(%x)
  }, then_branch=graph t() -> (%r) {
    %r = Relu(%x)
  }}
}"""
    m = parse_model(text)
    verify(m)
    x = m.graph.inputs[1]
    assert len(x.uses()) == 2  # uses inside both branches are recorded on the outer value
    back = qgraph.load(qgraph.to_proto(m))
    assert print_model(back) == print_model(m)


def test_parse_errors_name_the_line():
    with pytest.raises(ParseError, match="line 3"):
        parse_model("graph g(%x: f32[2]) -> (%y) {\n  %y = Relu(%x)\n  %z = Relu(%nope)\n}")
    with pytest.raises(ParseError, match="initializers="):
        parse_model("graph g() -> (%w) {\n  init %w: f32[64] = <data 0123456789ab>\n}")


def test_fingerprint_sees_data_changes():
    m = parse_model("graph g(%x: f32[2]) -> (%y) {\n  init %b: f32[2] = [1.0, 2.0]\n  %y = Add(%x, %b)\n}")
    before = fingerprint(m)
    from qgraph.ir import Tensor

    m.graph.initializers["b"].const_value = Tensor(np.array([1.0, 3.0], np.float32))
    assert fingerprint(m) != before



def _clone_cases():
    import glob
    import os

    from qgraph.testing.conformance import cases

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    flow = {"test_if", "test_if_seq", "test_loop11", "test_loop13_seq", "test_scan9_sum"}  # subgraphs, captures
    return (sorted(glob.glob(os.path.join(repo, "golden", "models", "*.onnx")))
            + [pytest.param(c.model, id=c.name) for c in cases() if c.name in flow])


@pytest.mark.parametrize("src", _clone_cases(), ids=lambda p: p.split("/")[-1] if isinstance(p, str) else None)
def test_model_clone_is_the_same_model_sharing_nothing_mutable(src):
    import qgraph
    from qgraph.onnx import to_proto

    m = qgraph.load(src)
    m.input_ranges["x"] = object()
    c = m.clone()
    assert to_proto(c, decompose=False).SerializeToString() == to_proto(m, decompose=False).SerializeToString()
    assert fingerprint(c) == fingerprint(m) and c.input_ranges == m.input_ranges
    for g, gc in zip(m.graph.all_graphs(), c.graph.all_graphs(), strict=True):
        assert gc is not g and len(list(gc)) == len(list(g))
        for n, nc in zip(g, gc):
            assert nc is not n and nc.graph is gc
            assert not {id(v) for v in nc.outputs if v is not None} & {id(v) for v in n.outputs if v is not None}
        if g.parent is not None:  # a subgraph's copy belongs to the copied node
            assert gc.parent is not None and gc.parent is not g.parent and gc.parent.graph is not g.parent.graph
    originals = {id(v) for g in m.graph.all_graphs() for n in g for v in n.outputs + n.inputs if v is not None}
    originals |= {id(v) for g in m.graph.all_graphs() for v in list(g.inputs) + list(g.initializers.values())}
    assert not any(id(v) in originals for g in c.graph.all_graphs() for n in g for v in n.inputs)  # captures too
    before = fingerprint(m)
    node = next(iter(c.graph))  # edit the copy: the original does not change
    node.metadata_props["edited"] = "1"
    node.outputs[0].name = node.outputs[0].name + "_renamed"
    c.opset_imports["edited"] = 1
    c.input_ranges.clear()
    assert fingerprint(m) == before and "edited" not in m.opset_imports and "x" in m.input_ranges
    assert "edited" not in next(iter(m.graph)).metadata_props
