"""Clean-up passes: identity elimination and dead-code elimination."""

from __future__ import annotations

import numpy as np

from qgraph.ir import ops
from qgraph.ir.core import Graph, Model, Node
from qgraph.pm.base import Pass, PassResult
from qgraph.rewrite import Match, RewritePass, RewriteRule, RuleSet, Var, constant_tensor, pat


def _check_output_rename(rule: RewriteRule, m: Match, x_name: str = "x") -> None:
    """An op forwarding ``x`` to a graph output can go only if ``x`` can take the output's name."""
    root = m.root
    y, x = root.outputs[0], m.values[x_name]
    if y is not None and y.is_graph_output() and not root.graph.can_take_output_name(x):
        why = ("a graph input" if x.is_graph_input() else "an initializer" if x.is_initializer()
               else "already a graph output" if x.is_graph_output() else "defined in an enclosing graph")
        rule.fail(f"{root.describe()} forwards '{x.name}' ({why}) to graph output '{y.name}'; "
                  "removing it would rename the model's interface", root)


class IdentityRule(RewriteRule):
    """Identity(x) -> x"""

    pattern = pat.Identity(Var("x"))

    def check(self, m: Match) -> None:
        _check_output_rename(self, m)

    def rewrite(self, m: Match, b):
        return m["x"]


class InferenceDropoutRule(RewriteRule):
    """Dropout(x) -> x, when it runs in inference mode and its mask is unread."""

    pattern = pat.Dropout(Var("x"), allow_extra_inputs=True)

    def check(self, m: Match) -> None:
        node = m.root
        opset = m.model.opset("") if m.model is not None else None
        if opset is not None and opset < 7 and node.attr("is_test", 0) == 0:
            self.fail(f"{node.describe()} has is_test=0 (training mode, opset {opset})", node)
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            mode = constant_tensor(node.inputs[2])
            if mode is None or bool(np.asarray(mode.numpy()).any()):
                self.fail(f"{node.describe()} training_mode is not a constant false", node)
        if len(node.outputs) > 1 and node.outputs[1] is not None:
            mask = node.outputs[1]
            if mask.has_uses() or mask.is_graph_output():
                self.fail(f"{node.describe()} mask output '{mask.name}' is read", node)
        _check_output_rename(self, m)

    def rewrite(self, m: Match, b):
        return [m["x"]] + [None] * (len(m.root.outputs) - 1)


class EliminateIdentity(RewritePass):
    """Remove Identity and inference-mode Dropout nodes.

    before => after:
        y = Identity(x); z = Relu(y)            =>  z = Relu(x)
        y, _ = Dropout(x, ratio); z = Relu(y)   =>  z = Relu(x)

    Preconditions: none. A node that forwards a graph input, an initializer or an outer
    value straight to a graph output is kept (removing it would rename the model's
    outputs), as is a Dropout in training mode or whose mask is read. Runs in subgraphs.
    """

    name = "eliminate-identity"
    rules = RuleSet([IdentityRule(), InferenceDropoutRule()])


class DeadCodeElimination(Pass):
    """Remove nodes no output depends on, and unused initializers.

    before => after:
        a = Relu(x); b = Exp(x); y = Neg(a)   (outputs: y)   =>   a = Relu(x); y = Neg(a)

    Graph inputs and outputs are the model's interface and stay. A node counts as used
    when any output is read, also from inside a subgraph; dead nodes inside subgraphs
    are removed too. One reverse sweep per graph: O(nodes).
    """

    name = "dead-code-elimination"

    def run(self, model: Model, analyses) -> PassResult:
        nodes, inits = remove_dead_code(model.graph)
        return PassResult.of(bool(nodes or inits), removed_nodes=nodes, removed_initializers=inits)


def _live(n: Node) -> bool:
    return any(o is not None and (o.has_uses() or o.is_graph_output()) for o in n.outputs)


def remove_dead_code(g: Graph) -> tuple[int, int]:
    """Remove ``g``'s dead nodes (subgraphs included) and unused initializers; return how many
    of each. The graph utility behind ``dead-code-elimination``, for passes that prune what
    their own rewrites left dead (a pass does not run another pass)."""
    nodes = inits = 0
    for n in reversed(g):  # consumers before producers: one sweep frees whole dead chains
        if not _live(n):
            g.remove(n)
            nodes += 1
            continue
        for sub in n.subgraphs():
            dn, di = remove_dead_code(sub)
            nodes += dn
            inits += di
    for v in list(g.initializers.values()):
        if not v.has_uses() and not v.is_graph_input() and not v.is_graph_output():
            g.remove_initializer(v)
            inits += 1
    return nodes, inits

PASSES = (EliminateIdentity, DeadCodeElimination)
