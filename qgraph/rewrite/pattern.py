"""Patterns and the matcher.

A pattern is a tree of ``NodePattern`` (an op and its input patterns) with ``Var``
leaves. Build one by calling op identities:

    x, w, b = Var("x"), Const("w"), Var("b", optional=True)
    pattern = pat.Relu(pat.Conv(x, w, b, bind="conv"))

``pat.Conv`` names the op identity ``ops.Conv``; ``pat[op]`` takes one held in a variable.

A ``Var`` used twice must bind the same value. A pattern producer must live in the
same graph as the root (rewrites never reach across subgraph boundaries).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from qgraph.ir.core import Model, Node, Value
from qgraph.ir import ops
from qgraph.ir.ops import OpId
from qgraph.ir.tensor import Tensor


class Var:
    """Matches any value. ``optional``: also a missing input. ``const``: only constants."""

    def __init__(self, name: str, *, optional: bool = False, const: bool = False,
                 predicate: Callable[[Value], bool] | None = None):
        self.name = name
        self.optional = optional
        self.const = const
        self.predicate = predicate

    def __repr__(self) -> str:
        return f"Var({self.name})"


def Const(name: str, *, optional: bool = False) -> Var:  # noqa: N802 - reads like a pattern type
    """A value whose data is known at compile time (initializer or Constant output)."""
    return Var(name, optional=optional, const=True)


class NodePattern:
    """Matches a node with op ``op`` whose inputs match ``inputs`` position by position.

    Args:
        bind: name under which the matched node appears in ``Match.nodes``.
        output: which output of the matched node feeds the consumer (default 0).
        allow_extra_inputs: the node may have more inputs than the pattern lists.
    """

    def __init__(self, op: OpId, inputs: Sequence[Any], *, bind: str | None = None, output: int = 0,
                 allow_extra_inputs: bool = False):
        self.op = op
        self.inputs = list(inputs)
        self.bind = bind
        self.output = output
        self.allow_extra_inputs = allow_extra_inputs

    def size(self) -> int:
        return 1 + sum(p.size() for p in self.inputs if isinstance(p, NodePattern))

    def __repr__(self) -> str:
        return f"{self.op}({', '.join(map(repr, self.inputs))})"


class PatternOps:
    """The op identities of ``qgraph.ir.ops``, called as pattern nodes.

    ``pat.Relu(x)`` is ``NodePattern(ops.Relu, [x])``. The builder lives here, not on
    ``OpId``, so the IR knows nothing of the rewrite engine built on it.
    """

    def __getitem__(self, op: OpId) -> Callable[..., NodePattern]:
        if not isinstance(op, OpId):
            raise TypeError(f"pat[...] takes an OpId, got {op!r}")

        def build(*inputs: Any, **kwargs: Any) -> NodePattern:
            return NodePattern(op, inputs, **kwargs)

        build.__name__ = build.__qualname__ = op.op_type
        return build

    def __getattr__(self, name: str) -> Callable[..., NodePattern]:
        found = getattr(ops, name, None)
        if not isinstance(found, OpId):
            raise AttributeError(f"qgraph.ir.ops has no op identity {name!r}; for another op use pat[ops.op(...)]")
        return self[found]


#: Build pattern nodes: ``pat.Relu(pat.Conv(x, w, b))``.
pat = PatternOps()


def constant_tensor(v: Value | None) -> Tensor | None:
    """The compile-time data of ``v`` (``Value.constant``: a non-overridable initializer or a
    Constant's tensor), or None for a missing input."""
    return None if v is None else v.constant()


@dataclass
class Match:
    """A successful match: the root node, bound values and nodes."""

    root: Node
    model: Model | None
    values: dict[str, Value | None] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)
    matched: list[Node] = field(default_factory=list)  # root first, then producers
    facts: dict[str, Any] = field(default_factory=dict)  # what ``check`` found, for ``rewrite``

    def __getitem__(self, name: str) -> Any:
        if name in self.values:
            return self.values[name]
        return self.nodes[name]


@dataclass
class MatchFailure:
    """Why a pattern did not match: the reason, the node where it failed, how far it got."""

    reason: str
    node: Node | None
    depth: int  # pattern nodes matched before the failure


class MatchFailed(Exception):
    """Raised by ``RewriteRule.fail`` inside ``check``."""

    def __init__(self, reason: str, node: Node | None = None):
        super().__init__(reason)
        self.reason = reason
        self.node = node


def match(pattern: NodePattern, node: Node, model: Model | None = None) -> Match | MatchFailure:
    """Match ``pattern`` rooted at ``node``."""
    m = Match(node, model)
    failure = _match_node(pattern, node, m, node)
    return m if failure is None else failure


def _match_node(pat: NodePattern, node: Node, m: Match, root: Node) -> MatchFailure | None:
    if node.op is not pat.op:
        return MatchFailure(f"{node.describe()} is not {pat.op}", node, len(m.matched))
    if node.graph is not root.graph:
        return MatchFailure(f"{node.describe()} is in another graph than the root", node, len(m.matched))
    n_in = len(node.inputs)
    if n_in > len(pat.inputs) and not pat.allow_extra_inputs:
        extra = node.inputs[len(pat.inputs):]
        if any(v is not None for v in extra):
            return MatchFailure(f"{node.describe()} has {n_in} inputs, the pattern {len(pat.inputs)}", node, len(m.matched))
    m.matched.append(node)
    if pat.bind:
        m.nodes[pat.bind] = node
    for i, sub in enumerate(pat.inputs):
        v = node.inputs[i] if i < n_in else None
        if sub is None:
            if v is not None:
                return MatchFailure(f"{node.describe()} input {i} should be absent", node, len(m.matched))
            continue
        if isinstance(sub, Var):
            why = _bind(sub, v, m)
            if why:
                return MatchFailure(f"{node.describe()} input {i}: {why}", node, len(m.matched))
            continue
        if v is None:
            return MatchFailure(f"{node.describe()} input {i} is missing, expected {sub.op}", node, len(m.matched))
        producer = v.producer()
        if producer is None:
            return MatchFailure(f"{node.describe()} input {i} ('{v.name}') has no producer, expected {sub.op}", node, len(m.matched))
        if v.index != sub.output:
            return MatchFailure(f"'{v.name}' is output {v.index} of {producer.describe()}, expected output {sub.output}", producer, len(m.matched))
        failure = _match_node(sub, producer, m, root)
        if failure is not None:
            return failure
    return None


def _bind(var: Var, v: Value | None, m: Match) -> str | None:
    if v is None and not var.optional:
        return f"missing, but {var.name} is required"
    if var.name in m.values:
        return None if m.values[var.name] is v else f"{var.name} must be the same value at every use"
    if v is not None:
        if var.const and constant_tensor(v) is None:
            return f"'{v.name}' is not a constant"
        if var.predicate is not None and not var.predicate(v):
            return f"'{v.name}' fails the condition on {var.name}"
    m.values[var.name] = v
    return None
