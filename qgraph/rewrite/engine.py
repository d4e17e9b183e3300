"""Rewrite rules, rule sets, the fixed-point driver, the match tracer, and rewrite passes."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable, Sequence

import numpy as np

from qgraph.errors import PassError, RewriteCycleError
from qgraph.ir.core import Graph, Model, Node, Value
from qgraph.ir.ops import OpId
from qgraph.ir.tensor import Tensor
from qgraph.pm.base import Pass, PassResult
from qgraph.rewrite.pattern import Match, MatchFailed, MatchFailure, NodePattern, match


class Builder:
    """Creates nodes right before the rewrite's root, with fresh unique names."""

    def __init__(self, graph: Graph, anchor: Node):
        self.graph = graph
        self.anchor = anchor

    def op(self, op: OpId, inputs: Sequence[Value | None], attrs: dict[str, Any] | None = None, *,
           outputs: int = 1, name: str | None = None) -> Any:
        """Insert ``op(inputs)``; returns its output (or a tuple when ``outputs`` > 1)."""
        base = name or (f"{self.anchor.name}/{op.op_type}" if self.anchor.name else op.op_type)
        outs = [Value(self.graph.unique_name(f"{base}_out{k}" if outputs > 1 else base)) for k in range(outputs)]
        node = Node(op, inputs, outs, attrs, name=outs[0].name)  # value names are unique, so is this
        self.graph.insert_before(self.anchor, node)
        return outs[0] if outputs == 1 else tuple(outs)

    def constant(self, data: np.ndarray | Tensor, name: str = "const") -> Value:
        """A new initializer in the root's graph."""
        return self.graph.add_initializer(name, data)


class RewriteRule:
    """One rewrite: a ``pattern``, a ``check`` and a ``rewrite``.

    ``check(match)`` returns nothing (or True) to accept, or calls ``self.fail(reason,
    node)``; it only reads the graph, and may leave what it computed in ``match.facts``.
    ``rewrite(match, builder)`` returns the values that replace the root's outputs (one
    per output; None for an output nobody reads; the output itself where the rule rewired
    the root's readers instead). Matched nodes left without readers are then removed.
    """

    name: ClassVar[str] = ""
    pattern: ClassVar[NodePattern]

    def check(self, m: Match) -> bool | None:
        return True

    def rewrite(self, m: Match, b: Builder) -> Value | Sequence[Value | None]:
        raise NotImplementedError

    @staticmethod
    def fail(reason: str, node: Node | None = None) -> None:
        raise MatchFailed(reason, node)

    @classmethod
    def rule_name(cls) -> str:
        return cls.name or cls.__name__


class RuleSet:
    """An ordered collection of rules; ``a + b`` combines sets."""

    def __init__(self, rules: Iterable[RewriteRule]):
        self.rules = list(rules)
        self._by_root: dict[OpId, list[RewriteRule]] = {}
        for r in self.rules:
            self._by_root.setdefault(r.pattern.op, []).append(r)

    def __add__(self, other: "RuleSet") -> "RuleSet":
        return RuleSet(self.rules + other.rules)

    def for_op(self, op: OpId) -> list[RewriteRule]:
        return self._by_root.get(op, [])

    def __len__(self) -> int:
        return len(self.rules)


@dataclass
class TraceEntry:
    rule: str
    root: Node
    failure: MatchFailure


class MatchTracer:
    """Records why each attempted match failed; ``closest(rule)`` is the deepest partial match."""

    def __init__(self) -> None:
        self.entries: list[TraceEntry] = []

    def record(self, rule: RewriteRule, root: Node, failure: MatchFailure) -> None:
        self.entries.append(TraceEntry(rule.rule_name(), root, failure))

    def closest(self, rule: str) -> TraceEntry | None:
        cands = [e for e in self.entries if e.rule == rule]
        return max(cands, key=lambda e: e.failure.depth, default=None)

    def reasons(self, node: Node) -> list[str]:
        """Why each rule tried at root ``node`` did not fire, in the order they were tried."""
        return [f"{e.rule}: {e.failure.reason}" for e in self.entries if e.root is node]

    def report(self) -> str:
        lines = []
        for rule in dict.fromkeys(e.rule for e in self.entries):
            e = self.closest(rule)
            lines.append(f"{rule}: closest match at {e.root.describe()} "
                         f"({e.failure.depth} pattern node(s) matched): {e.failure.reason}")
        return "\n".join(lines)


def apply_rules(model: Model, rules: RuleSet, *, max_sweeps: int = 64,
                tracer: MatchTracer | None = None) -> Counter[str]:
    """Apply ``rules`` everywhere (subgraphs included) until none fires; count firings per rule."""
    from qgraph.ir.text import fingerprint

    total: Counter[str] = Counter()
    seen: dict[str, int] = {}
    for sweep in range(1, max_sweeps + 1):
        fired: Counter[str] = Counter()
        for g in list(model.graph.all_graphs()):
            if g.parent is not None and g.parent.graph is None:
                continue  # its owner was removed this sweep
            for node in g:
                for rule in rules.for_op(node.op):
                    if node.graph is not g:
                        break
                    if try_rule(rule, node, model, tracer):
                        fired[rule.rule_name()] += 1
                        break
        if not fired:
            return total
        total += fired
        state = fingerprint(model)
        if state in seen:
            raise RewriteCycleError(f"rewrite rules cycle: sweep {sweep} recreated the IR of sweep {seen[state]}; "
                                    f"rules that fired: {dict(fired)}")
        seen[state] = sweep
    raise RewriteCycleError(f"rewrite rules did not converge in {max_sweeps} sweeps; still firing: {dict(fired)}")


def try_rule(rule: RewriteRule, node: Node, model: Model, tracer: MatchTracer | None = None) -> bool:
    """Match, check and apply ``rule`` at ``node`` once; True when it fired.

    A failed match or check is recorded in ``tracer`` (when given) and changes nothing.
    """
    g = node.graph
    m = match(rule.pattern, node, model)
    if isinstance(m, MatchFailure):
        if tracer is not None:
            tracer.record(rule, node, m)
        return False
    try:
        ok = rule.check(m)
    except MatchFailed as f:
        if tracer is not None:
            tracer.record(rule, node, MatchFailure(f.reason, f.node or node, rule.pattern.size() + 1))
        return False
    if ok is False:
        if tracer is not None:
            tracer.record(rule, node, MatchFailure("check returned False", node, rule.pattern.size() + 1))
        return False
    replacements = rule.rewrite(m, Builder(g, node))
    if isinstance(replacements, Value):
        replacements = [replacements]
    replacements = list(replacements)
    if len(replacements) != len(node.outputs):
        raise PassError(f"rule {rule.rule_name()} returned {len(replacements)} values for the "
                        f"{len(node.outputs)} outputs of {node.describe()}")
    for old, new in zip(node.outputs, replacements):
        if old is None:
            continue
        if new is None:
            if old.has_uses() or old.is_graph_output():
                raise PassError(f"rule {rule.rule_name()} dropped output '{old.name}' of {node.describe()}, which is still read")
            continue
        g.replace_value(old, new)
    # Remove matched nodes left without readers; repeat, since a producer inside the match
    # may be read by several matched consumers (the match order is depth first, not topological).
    pending = list(m.matched)
    while True:
        dead = [n for n in pending if n.graph is g
                and not any(o is not None and (o.has_uses() or o.is_graph_output()) for o in n.outputs)]
        if not dead:
            return True
        for n in dead:
            g.remove(n)
            pending.remove(n)


class RewritePass(Pass):
    """A pass that applies a rule set to a fixed point. Subclasses set ``name`` and ``rules``."""

    rules: ClassVar[RuleSet]

    def run(self, model: Model, analyses) -> PassResult:
        fired = apply_rules(model, self.rules)
        return PassResult.of(bool(fired), **dict(fired))

