"""Rewrite engine: patterns, checks with reasons, the tracer, rule sets, cycles."""

import numpy as np
import pytest

from qgraph.errors import RewriteCycleError
from qgraph.ir import ops
from qgraph.ir.text import parse_model
from qgraph.ir.verify import verify
from qgraph.rewrite import Const, MatchFailure, MatchTracer, RewriteRule, RuleSet, Var, apply_rules, match, pat
from tests.conftest import graph_text, same_ir


class AddZero(RewriteRule):
    """Add(x, 0) -> x"""

    pattern = pat.Add(Var("x"), Const("zero"))

    def check(self, m):
        if np.any(m["zero"].const_value.numpy() != 0):
            self.fail(f"'{m['zero'].name}' is not all zeros", m.root)
        if m["zero"].shape != () and m["zero"].shape != (1,):
            self.fail("the constant would broadcast", m.root)

    def rewrite(self, m, b):
        return m["x"]


class MulAddToGemmLike(RewriteRule):
    """Add(MatMul(x, w), c) -> Gemm(x, w, c) (for this test: 2-D x only)."""

    pattern = pat.Add(pat.MatMul(Var("x"), Const("w"), bind="mm"), Const("c"))

    def rewrite(self, m, b):
        return b.op(ops.Gemm, [m["x"], m["w"], m["c"]])


def test_pattern_matches_and_binds():
    m = parse_model("""graph g(%x: f32[2,3]) -> (%y) {
      init %w: f32[3,4] = 0.5
      init %c: f32[4] = [1.0, 2.0, 3.0, 4.0]
      %t = MatMul(%x, %w)
      %y = Add(%t, %c)
    }""")
    add = list(m.graph)[1]
    res = match(MulAddToGemmLike.pattern, add, m)
    assert not isinstance(res, MatchFailure)
    assert res["x"] is m.graph.inputs[0] and res.nodes["mm"] is list(m.graph)[0]
    assert res.matched == [add, list(m.graph)[0]]


def test_same_var_must_bind_same_value():
    pattern = pat.Mul(Var("x"), Var("x"))
    m = parse_model("""graph g(%a: f32[2], %b: f32[2]) -> (%y, %z) {
      %y = Mul(%a, %a)
      %z = Mul(%a, %b)
    }""")
    y, z = list(m.graph)
    assert not isinstance(match(pattern, y), MatchFailure)
    f = match(pattern, z)
    assert isinstance(f, MatchFailure) and "same value" in f.reason


def test_const_var_rejects_overridable_initializer():
    m = parse_model("""graph g(%x: f32[2]) -> (%y) {
      %y = Add(%x, %x)
    }""")
    f = match(pat.Add(Var("a"), Const("c")), next(iter(m.graph)))
    assert isinstance(f, MatchFailure) and "not a constant" in f.reason


def test_rewrite_with_builder_and_cleanup_of_matched_nodes():
    m = parse_model("""graph g(%x: f32[2,3]) -> (%y) {
      init %w: f32[3,4] = 0.5
      init %c: f32[4] = [1.0, 2.0, 3.0, 4.0]
      %t = MatMul(%x, %w)
      %y = Add(%t, %c)
    }""")
    fired = apply_rules(m, RuleSet([MulAddToGemmLike()]))
    assert fired == {"MulAddToGemmLike": 1}
    verify(m)
    assert [n.op for n in m.graph] == [ops.Gemm]
    assert m.graph.outputs[0].name == "y"  # the output keeps its name


def test_intermediate_with_other_users_is_kept():
    m = parse_model("""graph g(%x: f32[2,3]) -> (%y, %t) {
      init %w: f32[3,4] = 0.5
      init %c: f32[4] = [1.0, 2.0, 3.0, 4.0]
      %t = MatMul(%x, %w)
      %y = Add(%t, %c)
    }""")
    apply_rules(m, RuleSet([MulAddToGemmLike()]))
    verify(m)
    assert sorted(str(n.op) for n in m.graph) == ["Gemm", "MatMul"]  # t is still an output


def test_check_failure_reason_and_closest_partial_match():
    m = parse_model("""graph g(%x: f32[2]) -> (%y, %z) {
      init %one: f32[1] = [1.0]
      init %zero: f32[1] = [0.0]
      %y = Add(%x, %one) @add_one
      %z = Add(%y, %zero) @add_zero
    }""")
    tracer = MatchTracer()
    fired = apply_rules(m, RuleSet([AddZero(), MulAddToGemmLike()]), tracer=tracer)
    assert fired == {"AddZero": 1}
    reasons = [e.failure.reason for e in tracer.entries if e.rule == "AddZero"]
    assert any("'one' is not all zeros" in r for r in reasons)
    closest = tracer.closest("MulAddToGemmLike")
    assert closest.failure.depth == 1 and "MatMul" in closest.failure.reason
    assert "Add node 'add_one'" in closest.failure.reason or "Add node 'add_zero'" in closest.failure.reason
    assert "MulAddToGemmLike: closest match" in tracer.report()


def test_rule_sets_compose():
    rs = RuleSet([AddZero()]) + RuleSet([MulAddToGemmLike()])
    assert len(rs) == 2 and len(rs.for_op(ops.Add)) == 2 and rs.for_op(ops.Relu) == []


class ReluToAbsRelu(RewriteRule):
    """Relu(x) -> Abs(x) (nonsense, to make a cycle with the next rule)"""

    pattern = pat.Relu(Var("x"))

    def rewrite(self, m, b):
        return b.op(ops.op("Abs"), [m["x"]])


class AbsToRelu(RewriteRule):
    """Abs(x) -> Relu(x)"""

    pattern = pat[ops.op("Abs")](Var("x"))

    def rewrite(self, m, b):
        return b.op(ops.Relu, [m["x"]])


def test_rule_cycle_is_reported():
    m = parse_model("graph g(%x: f32[2]) -> (%y) {\n  %y = Relu(%x)\n}")
    with pytest.raises(RewriteCycleError, match="cycle|converge"):
        apply_rules(m, RuleSet([ReluToAbsRelu(), AbsToRelu()]))


def test_rules_apply_inside_subgraphs():
    m = parse_model("""model opset {"": 17}
graph main(%c: bool[], %x: f32[1]) -> (%y) {
  init %zero: f32[1] = [0.0]
  %y = If(%c) {else_branch=graph e() -> (%n) {
    %n = Neg(%x)
  }, then_branch=graph t() -> (%r) {
    %a = Add(%x, %zero)
    %r = Relu(%a)
  }}
}""")
    assert apply_rules(m, RuleSet([AddZero()])) == {"AddZero": 1}
    verify(m)
    assert same_ir(m, """graph main(%c: bool[], %x: f32[1]) -> (%y) {
  init %zero: f32[1] = [0.0]
  %y = If(%c) {else_branch=graph e() -> (%n) {
    %n = Neg(%x)
  }, then_branch=graph t() -> (%r) {
    %r = Relu(%x)
  }}
}"""), graph_text(m)


def test_patterns_are_built_by_pat_not_by_calling_an_op():
    """The IR knows nothing of patterns: ``pat`` builds them, a called OpId says where to go."""
    p = pat.Relu(pat[ops.Conv](Var("x"), Const("w"), bind="conv"))
    assert p.op is ops.Relu and p.inputs[0].op is ops.Conv and p.inputs[0].bind == "conv" and p.size() == 2
    with pytest.raises(TypeError, match=r"pat\.Relu"):
        ops.Relu(Var("x"))
    with pytest.raises(AttributeError, match="no op identity 'NotAnOp'"):
        pat.NotAnOp
    with pytest.raises(TypeError, match="takes an OpId"):
        pat["Relu"]
