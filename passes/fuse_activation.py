"""Fusion passes: Pad into Conv, activations into their producers.

``fuse-pad`` rewrites the graph. ``fuse-activation`` only marks: it records, on the
activation node, that the (producer, activation) pair (and a decomposed hard-swish's node
group) is one op for quantization; see ``qgraph.ir.fusion`` for the marks and their API.
"""

from __future__ import annotations

from collections import Counter
import numpy as np

from qgraph.ir import fusion, ops
from qgraph.ir.core import Model, Node, Value
from qgraph.ir.fusion import FusionRefused
from qgraph.pm.base import ALL_ANALYSES, Pass, PassResult
from qgraph.rewrite import (Match, MatchFailure, MatchTracer, RewritePass, RewriteRule, RuleSet, Var,
                            constant_tensor, match, pat)
from qgraph.rewrite.pattern import MatchFailed


# -- fuse-pad --------------------------------------------------------------------------------------
class PadIntoConv(RewriteRule):
    """Conv(Pad(x, pads), w, b) -> Conv(x, w, b) {pads = conv pads + spatial pads}

    Only zero constant padding of the spatial axes folds; the Pad stays for its other readers.
    """

    pattern = pat.Conv(pat.Pad(Var("x"), bind="pad", allow_extra_inputs=True), Var("w"), Var("b", optional=True))

    def check(self, m: Match) -> None:
        conv, pad = m.root, m.nodes["pad"]
        auto_pad = conv.attr("auto_pad", "NOTSET")
        if auto_pad not in ("NOTSET", b"NOTSET"):
            self.fail(f"{conv.describe()} has auto_pad={_text(auto_pad)}; its padding is computed at run time "
                      "and cannot take explicit pads", conv)
        mode = _text(pad.attr("mode", "constant"))
        if mode != "constant":
            self.fail(f"{pad.describe()} has mode '{mode}'; only constant zero padding folds into a Conv", pad)
        value = self._pad_value(pad)
        if value != 0.0:
            self.fail(f"{pad.describe()} pads with {value}; a Conv pads with zeros", pad)
        self._spatial_pads(m)  # fails with the reason when the pads do not fold

    def rewrite(self, m: Match, b) -> Value:
        conv = m.root
        spatial = self._spatial_pads(m)
        old = conv.attr("pads") or (0,) * len(spatial)
        attrs = dict(conv.attrs)
        attrs["pads"] = [int(p) + int(q) for p, q in zip(old, spatial)]
        inputs = [m["x"], m["w"]] + ([m["b"]] if m["b"] is not None else [])
        return _replace_node(conv, inputs, attrs)

    def _pad_value(self, pad: Node) -> float | None:
        """The constant the Pad fills with (None when not known at compile time)."""
        if _attr_form(pad):
            return float(pad.attr("value", 0.0))
        v = pad.inputs[2] if len(pad.inputs) > 2 else None
        if v is None:
            return 0.0
        t = constant_tensor(v)
        if t is None:
            self.fail(f"{pad.describe()} pad value '{v.name}' is not a constant", pad)
        a = np.asarray(t.numpy())
        return float(a.ravel()[0]) if a.size == 1 else None

    def _spatial_pads(self, m: Match) -> list[int]:
        """The Pad's pads as Conv pads ([x1_begin, x2_begin, ..., x1_end, ...]), or fail."""
        conv, pad = m.root, m.nodes["pad"]
        if _attr_form(pad):
            pads = list(pad.attr("pads", pad.attr("paddings", ())))
            axes = None
        else:
            pads = self._const_ints(pad, 1, "pads")
            axes = self._const_ints(pad, 3, "axes") if len(pad.inputs) > 3 and pad.inputs[3] is not None else None
        rank = _rank(m["w"]) or _rank(m["x"])
        if axes is None:
            if rank is not None and len(pads) != 2 * rank:
                self.fail(f"{pad.describe()} has {len(pads)} pads for rank {rank}", pad)
            rank = len(pads) // 2
        else:
            if rank is None:
                self.fail(f"{pad.describe()} pads axes {axes} of an input of unknown rank", pad)
            if len(pads) != 2 * len(axes):
                self.fail(f"{pad.describe()} has {len(pads)} pads for {len(axes)} axes", pad)
            full = [0] * (2 * rank)
            for k, ax in enumerate(axes):
                ax = ax + rank if ax < 0 else ax
                full[ax], full[rank + ax] = pads[k], pads[len(axes) + k]
            pads = full
        if any(p < 0 for p in pads):
            self.fail(f"{pad.describe()} has negative pads {pads} (a crop); a Conv cannot crop", pad)
        if rank < 3 or any(pads[i] or pads[rank + i] for i in (0, 1)):
            self.fail(f"{pad.describe()} pads the batch or channel axis (pads {pads}); "
                      "a Conv pads only spatial axes", pad)
        spatial = pads[2:rank] + pads[rank + 2:]
        existing = conv.attr("pads")
        if existing is not None and len(existing) != len(spatial):
            self.fail(f"{conv.describe()} has {len(existing)} pads, the Pad {len(spatial)} spatial ones", conv)
        return spatial

    def _const_ints(self, pad: Node, i: int, what: str) -> list[int]:
        v = pad.inputs[i] if i < len(pad.inputs) else None
        t = constant_tensor(v)
        if t is None:
            self.fail(f"{pad.describe()} {what} {('%r' % v.name) if v is not None else '(absent)'} "
                      "is not a constant", pad)
        return [int(p) for p in np.asarray(t.numpy()).ravel()]


def _attr_form(pad: Node) -> bool:
    """Opset < 11 Pad: pads, mode and value are attributes (``paddings`` in opset 1)."""
    return "pads" in pad.attrs or "paddings" in pad.attrs


def _rank(v: Value | None) -> int | None:
    return len(v.shape) if v is not None and v.shape is not None else None


def _text(s) -> str:
    return s.decode("utf-8", "replace") if isinstance(s, bytes) else str(s)


def _replace_node(node: Node, inputs: list[Value | None], attrs: dict) -> Value:
    """A copy of one-output ``node`` with new inputs / attributes, put right before it.

    The copy keeps the node's name, doc string and metadata, and its output takes over the
    old output's name (for a graph output the rewrite driver moves the name over).
    """
    g, out = node.graph, node.output
    new_out = Value(g.unique_name(out.name + "_rewritten"), out.type)
    new = Node(node.op, inputs, [new_out], attrs, name=node.name, doc_string=node.doc_string, overload=node.overload)
    new.metadata_props = dict(node.metadata_props)
    g.insert_before(node, new)
    if not out.is_graph_output():
        out.name, new_out.name = new_out.name, out.name
    return new_out


class FusePad(RewritePass):
    """Fold a zero constant Pad of the spatial axes into the Conv that reads it.

    before => after:
        p = Pad(x, pads=[0,0,1,2, 0,0,1,2]); y = Conv(p, w) {pads=[1,1,1,1]}
            =>  y = Conv(x, w) {pads=[2,3,2,3]}

    Preconditions: the Pad is mode constant with value 0 (or absent), its pads are constant,
    non-negative and zero on the batch and channel axes (opset < 11 attribute form, opset
    >= 11 input form, opset >= 18 ``axes``); the Conv reads it as its data input and has
    auto_pad NOTSET or absent. Otherwise the pair is kept and the match tracer records why.
    A Pad that other nodes also read stays for them (dead-code elimination removes it once
    unread).
    """

    name = "fuse-pad"
    rules = RuleSet([PadIntoConv()])


# -- fuse-activation ---------------------------------------------------------------------------------
class MarkRule(RewriteRule):
    """A rule that annotates instead of rewriting: ``pattern``, ``check``, ``mark``.

    Run by ``apply_marks``: one sweep, which also drops stale marks (marks change no
    structure, so the rewrite driver's repeated sweeps and IR fingerprints add nothing).
    """

    def mark(self, m: Match) -> str:
        """Write the marks; returns the stat to count."""
        raise NotImplementedError

    def rewrite(self, m: Match, b):
        raise NotImplementedError(f"{self.rule_name()} marks; run it with apply_marks")


class ProducerActivation(MarkRule):
    """act(producer(...)) -> act marked fused with producer, producer in {Conv, ConvTranspose, Gemm, MatMul}

    The producer's output must be read by the activation alone and not be a graph output.
    """

    def __init__(self, act: ops.OpId):
        self.pattern = pat[act](Var("x"), allow_extra_inputs=act is ops.Clip)

    def check(self, m: Match) -> None:
        try:
            unit = fusion.find_activation(m.root)
            producer = fusion.check_producer_fusion(unit)
        except FusionRefused as e:
            self.fail(e.reason, e.node)
        if fusion.fused_producer(m.root) is producer:
            self.fail(f"{m.root.describe()} is already marked fused with {producer.describe()}", m.root)

    def mark(self, m: Match) -> str:
        fusion.mark_fused_activation(m.root)
        return "fused_activations"


class HardSwishGroup(MarkRule):
    """x * HardSigmoid(x), x * Clip(x + 3, 0, 6) / 6 -> the group marked as one activation

    and, when legal, marked fused with the producer of x. Also x * Clip(x + 3, 0, 6) (the
    group once a pass folded its "/ 6" into the next op), where no Div completes it.
    """

    def __init__(self, form: str):
        self.form = form
        self.pattern = pat[fusion.GROUP_ROOTS[form]](Var("a"), Var("b"))

    def check(self, m: Match) -> None:
        try:
            unit = fusion.find_activation(m.root, self.form)
        except FusionRefused as e:
            self.fail(e.reason, e.node)
        if fusion.marked_unit(m.root) == unit and (fusion.fused_producer(m.root) is not None
                                                    or not self._fusable(unit)):
            self.fail(f"{m.root.describe()} is already marked as a {self.form} group", m.root)

    @staticmethod
    def _fusable(unit: fusion.Activation) -> bool:
        try:
            fusion.check_producer_fusion(unit)
        except FusionRefused:
            return False
        return True

    def mark(self, m: Match) -> str:
        unit = fusion.mark_activation_group(m.root, self.form)
        if self._fusable(unit):
            fusion.mark_fused_activation(m.root)
            return "fused_activations"
        return "unfused_activation_groups"


def apply_marks(model: Model, rules: RuleSet, *, tracer: MatchTracer | None = None) -> Counter[str]:
    """One sweep over every graph: drop stale fusion marks, then let ``rules`` mark.

    Marks change no structure, so one sweep reaches the fixed point. Returns counts of what
    was marked (the stats each rule's ``mark`` names) and ``stale_marks_removed``.
    """
    counts: Counter[str] = Counter()
    for g in list(model.graph.all_graphs()):
        for node in g:
            if fusion.is_marked(node) and fusion.marked_unit(node) is None:
                fusion.unmark(node)
                counts["stale_marks_removed"] += 1
            for rule in rules.for_op(node.op):
                m = match(rule.pattern, node, model)
                if isinstance(m, MatchFailure):
                    if tracer is not None:
                        tracer.record(rule, node, m)
                    continue
                try:
                    rule.check(m)
                except MatchFailed as f:
                    if tracer is not None:
                        tracer.record(rule, node, MatchFailure(f.reason, f.node or node, rule.pattern.size() + 1))
                    continue
                counts[rule.mark(m)] += 1
                break
    return counts


class FuseActivation(Pass):
    """Mark activations fused into their Conv / ConvTranspose / Gemm / MatMul producer.

    before => after (no structural change; ``qgraph.ir.fusion`` describes the marks):
        c = Conv(x, w, b); y = Relu(c)
            =>  c = Conv(x, w, b); y = Relu(c)   Relu marked qgraph.fused_producer=Conv
        c = Conv(x, w); a = Add(c, 3); k = Clip(a, 0, 6); t = Mul(c, k); y = Div(t, 6)
            =>  the same nodes; Div marked qgraph.activation_group=x*Clip(x+3,0,6)/6
                and qgraph.fused_producer=Conv

    Activations: Relu, Clip (constant bounds, attribute or input form), LeakyRelu,
    HardSwish, HardSigmoid, Sigmoid, Tanh, and the decomposed hard-swish forms
    x * HardSigmoid(x), x * Clip(x + 3, 0, 6) / 6 and x * Clip(x + 3, 0, 6) (the last
    when its "/ 6" was folded away), marked as a group even when x's producer cannot
    fuse. Preconditions of a producer fusion: the producer's output is read only by the
    activation (its group) and is not a graph output. Quantization puts no Q/DQ inside a
    marked unit (``fusion.is_fused_edge``). Stale marks (no longer legal after other
    rewrites) are removed; a second run changes nothing.

    Run it outside ``fixed-point(...)`` groups: the IR fingerprint those groups compare
    does not cover metadata, so an iteration that only adds marks reads as a cycle.
    """

    name = "fuse-activation"
    rules = RuleSet([ProducerActivation(op) for op in sorted(fusion.SINGLE_ACTIVATIONS, key=str)]
                    + [HardSwishGroup(f) for f in fusion.GROUP_FORMS])

    def run(self, model: Model, analyses) -> PassResult:
        counts = apply_marks(model, self.rules)
        # marks change no node, value or edge: every analysis stays valid
        return PassResult.of(bool(counts), ALL_ANALYSES, **dict(counts))


PASSES = (FusePad, FuseActivation)
