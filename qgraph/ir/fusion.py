"""Fusion marks: which activation a producer (Conv, Gemm, ...) is fused with.

At L1 a fused (producer, activation) pair keeps both of its nodes, so the graph means what
it meant and its ONNX export stays plain ONNX. The fusion is a mark on the activation's
*root* node (the node whose output is the activation's output), kept in
``node.metadata_props`` so that it survives ``save`` / ``load``. (ONNX defines node
metadata_props from IR version 10; onnx.checker and ONNX Runtime 1.32 also accept them in
IR version 3-9 models such as PP-OCRv4's, and ignore them when running.)

Two marks, both on the root:

    qgraph.fused_producer = "Conv"
        the producer and the activation are one op for quantization: no Q/DQ pair
        may sit on the producer's output. The value is the producer's op.
    qgraph.activation_group = "x*Clip(x+3,0,6)/6"
        the root's node group is one activation (a decomposed hard-swish or SiLU): no Q/DQ
        pair may sit on a value inside the group. The value is the group's form.

An activation unit is one op (Relu, Clip, LeakyRelu, HardSwish, HardSigmoid, Sigmoid,
Tanh; its root is the op itself) or a decomposed hard-swish, as PP-OCR exports it, or SiLU:

    x * HardSigmoid(x)            nodes (HardSigmoid, Mul), root Mul   (either operand order)
    x * Clip(x + 3, 0, 6) / 6     nodes (Add, Clip, Mul, Div), root Div (Add, Mul in either order)
    x * Clip(x + 3, 0, 6)         nodes (Add, Clip, Mul), root Mul: 6 * hard-swish, what is left
                                  when a pass folds the "/ 6" into the next op's weights (only
                                  where the Mul is not the inside of a whole "/ 6" group)
    x * Sigmoid(x)                nodes (Sigmoid, Mul), root Mul: SiLU / swish (either order)

A mark is a claim, not a fact. Every query re-validates it through use-def (the group's
shape, the producer's op, who reads the values inside the unit), so a mark that a later
rewrite made stale (a second reader of the conv output, a node put in between, a group
member replaced) is ignored, never trusted. Legality of a producer fusion: the producer is
Conv / ConvTranspose / Gemm / MatMul in the activation's graph, and its output is read
only by the activation unit and is not a graph output. A group alone (no producer fusion)
needs only that the values inside it are read only inside it and are not graph outputs.

The quantizer asks ``is_fused_edge(value)``: True for the output of a fused producer and
for a value inside a marked group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from qgraph.errors import QGraphError
from qgraph.ir import op_groups, ops
from qgraph.ir.core import Node, Value
from qgraph.ir.ops import OpId

FUSED_PRODUCER_KEY = "qgraph.fused_producer"
ACTIVATION_GROUP_KEY = "qgraph.activation_group"
MARK_KEYS = (FUSED_PRODUCER_KEY, ACTIVATION_GROUP_KEY)

# FUSABLE_PRODUCERS: ops an activation may be fused into; SINGLE_ACTIVATIONS: one-op activations
# (qgraph.ir.op_groups says why Add and Mul are producers)
FUSABLE_PRODUCERS = op_groups.FUSABLE_PRODUCERS
SINGLE_ACTIVATIONS = op_groups.SINGLE_ACTIVATIONS

HARD_SIGMOID_SWISH = "x*HardSigmoid(x)"
CLIP_HARD_SWISH = "x*Clip(x+3,0,6)/6"
SCALED_CLIP_HARD_SWISH = "x*Clip(x+3,0,6)"
#: SiLU / swish (YOLOv5-v8, YOLOX, EfficientNet ...): ONNX has no op for it before Swish-24, so
#: exporters write it as two; as a group it is one activation (one table on an 8-bit input)
#: instead of a Sigmoid table and an integer Mul, each rounding to 8 bits
SIGMOID_SWISH = "x*Sigmoid(x)"
GROUP_FORMS = (HARD_SIGMOID_SWISH, CLIP_HARD_SWISH, SCALED_CLIP_HARD_SWISH, SIGMOID_SWISH)
#: the op of each group form's root
GROUP_ROOTS = {HARD_SIGMOID_SWISH: ops.Mul, CLIP_HARD_SWISH: ops.Div, SCALED_CLIP_HARD_SWISH: ops.Mul,
               SIGMOID_SWISH: ops.Mul}

#: producers that take a fused activation only when no operand is a constant
_ELEMENTWISE_PRODUCERS = frozenset({ops.Add, ops.Mul})
_PRODUCER_NAMES = ", ".join(sorted(str(o) for o in FUSABLE_PRODUCERS))


class FusionRefused(QGraphError):
    """A fusion is not legal (or a node group is not an activation); ``node`` is where."""

    def __init__(self, reason: str, node: Node | None = None):
        super().__init__(reason)
        self.reason = reason
        self.node = node


@dataclass(frozen=True)
class Activation:
    """An activation unit: one op, or the node group of a decomposed hard-swish or SiLU.

    Attributes:
        form: the op type for a one-op unit (``"Relu"``), else one of ``GROUP_FORMS``.
        nodes: the unit's nodes in dataflow order, the root last.
        input: the value the unit activates (``x``).
    """

    form: str
    nodes: tuple[Node, ...]
    input: Value

    @property
    def root(self) -> Node:
        return self.nodes[-1]

    @property
    def output(self) -> Value:
        return self.root.outputs[0]

    @property
    def is_group(self) -> bool:
        return len(self.nodes) > 1

    def internal_values(self) -> list[Value]:
        """Values produced and consumed inside the unit (none for a one-op unit)."""
        return [o for n in self.nodes[:-1] for o in n.outputs if o is not None]


# -- recognizing activation units ----------------------------------------------------------------
def find_activation(root: Node, form: str | None = None) -> Activation:
    """The activation unit rooted at ``root`` (of ``form`` when given), or ``FusionRefused``.

    ``form`` is an op type for a one-op unit or one of ``GROUP_FORMS``; None tries the
    one-op form for activation ops and the group forms for Mul / Div.
    """
    if form in GROUP_FORMS or (form is None and root.op not in SINGLE_ACTIVATIONS):
        forms = [form] if form is not None else [f for f in GROUP_FORMS if GROUP_ROOTS[f] is root.op]
        if not forms:
            raise FusionRefused(f"{root.describe()} is not an activation", root)
        reasons = []
        for f in forms:
            try:
                return _find_group(root, f)
            except FusionRefused as e:
                reasons.append(e)
        raise reasons[0] if len(reasons) == 1 else FusionRefused(
            f"{root.describe()} is not a decomposed activation group: " + "; ".join(e.reason for e in reasons), root)
    if root.op not in SINGLE_ACTIVATIONS or (form is not None and form != str(root.op)):
        raise FusionRefused(f"{root.describe()} is not a {form or 'fusable activation'}", root)
    x = root.inputs[0] if root.inputs else None
    if x is None:
        raise FusionRefused(f"{root.describe()} has no input", root)
    if root.op is ops.Clip:
        for i, bound in ((1, "min"), (2, "max")):
            v = root.inputs[i] if i < len(root.inputs) else None
            if v is not None and _constant(v) is None:
                raise FusionRefused(f"{root.describe()} {bound} '{v.name}' is not a constant "
                                    "(a fused Clip needs known bounds)", root)
    return Activation(str(root.op), (root,), x)


def _find_group(root: Node, form: str) -> Activation:
    if form == HARD_SIGMOID_SWISH:
        act = _find_hard_sigmoid_swish(root)
    elif form == CLIP_HARD_SWISH:
        act = _find_clip_hard_swish(root)
    elif form == SCALED_CLIP_HARD_SWISH:
        act = _find_scaled_clip_hard_swish(root)
    elif form == SIGMOID_SWISH:
        act = _find_sigmoid_swish(root)
    else:
        raise FusionRefused(f"unknown activation group form {form!r} on {root.describe()}", root)
    members = set(act.nodes)
    for n in act.nodes:
        if n.graph is not root.graph:
            raise FusionRefused(f"{n.describe()} is in another graph than {root.describe()}", n)
    for v in act.internal_values():
        if v.is_graph_output():
            raise FusionRefused(f"'{v.name}' inside the {form} group of {root.describe()} is a graph output", v.producer())
        outside = [u for u in v.users() if u not in members]
        if outside:
            raise FusionRefused(f"'{v.name}' inside the {form} group of {root.describe()} is also read by "
                                f"{outside[0].describe()}", outside[0])
    return act


def _find_hard_sigmoid_swish(mul: Node) -> Activation:
    """Mul(x, HardSigmoid(x)) or Mul(HardSigmoid(x), x)."""
    return _find_x_times_gate(mul, ops.HardSigmoid, HARD_SIGMOID_SWISH)


def _find_sigmoid_swish(mul: Node) -> Activation:
    """Mul(x, Sigmoid(x)) or Mul(Sigmoid(x), x)."""
    return _find_x_times_gate(mul, ops.Sigmoid, SIGMOID_SWISH)


def _find_x_times_gate(mul: Node, gate_op: OpId, form: str) -> Activation:
    """Mul(x, gate(x)) in either operand order: the group (gate, Mul) of ``form``."""
    if mul.op is not ops.Mul or len(mul.inputs) != 2:
        raise FusionRefused(f"{mul.describe()} is not a Mul of two values ({form})", mul)
    for gate, x in (mul.inputs, reversed(mul.inputs)):
        g = _producer(gate, gate_op)
        if g is not None and g.inputs[0] is x and x is not None:
            return Activation(form, (g, mul), x)
    raise FusionRefused(f"{mul.describe()} does not multiply a value by {gate_op.op_type} of the same value", mul)


def _find_clip_hard_swish(div: Node) -> Activation:
    """Div(Mul(x, Clip(Add(x, 3), 0, 6)), 6), Mul and Add in either operand order."""
    if div.op is not ops.Div or len(div.inputs) != 2:
        raise FusionRefused(f"{div.describe()} is not a Div ({CLIP_HARD_SWISH})", div)
    if not _is_scalar(div.inputs[1], 6.0):
        raise FusionRefused(f"{div.describe()} does not divide by a constant 6", div)
    mul = _producer(div.inputs[0], ops.Mul)
    if mul is None:
        raise FusionRefused(f"{div.describe()} does not divide a Mul", div)
    add, clip, x = _x_times_clip(mul)
    return Activation(CLIP_HARD_SWISH, (add, clip, mul, div), x)


def _find_scaled_clip_hard_swish(mul: Node) -> Activation:
    """Mul(x, Clip(Add(x, 3), 0, 6)) whose output no Div by 6 completes to a whole hard-swish."""
    add, clip, x = _x_times_clip(mul)
    for reader in mul.outputs[0].users():
        if reader.op is ops.Div:
            try:
                _find_group(reader, CLIP_HARD_SWISH)
            except FusionRefused:
                continue
            raise FusionRefused(f"{mul.describe()} is inside the {CLIP_HARD_SWISH} group rooted at "
                                f"{reader.describe()}", mul)
    return Activation(SCALED_CLIP_HARD_SWISH, (add, clip, mul), x)


def _x_times_clip(mul: Node) -> tuple[Node, Node, Value]:
    """(Add, Clip, x) of ``mul`` = x * Clip(x + 3, 0, 6), operands of Mul and Add in either order."""
    if mul.op is not ops.Mul or len(mul.inputs) != 2:
        raise FusionRefused(f"{mul.describe()} is not a Mul of two values", mul)
    for gate, x in (mul.inputs, reversed(mul.inputs)):
        clip = _producer(gate, ops.Clip)
        if clip is None or x is None:
            continue
        add = _producer(clip.inputs[0], ops.Add)
        if add is None or len(add.inputs) != 2:
            continue
        if not any(a is x and _is_scalar(c, 3.0) for a, c in (add.inputs, reversed(add.inputs))):
            continue
        lo, hi = _clip_bounds(clip)
        if lo != 0.0 or hi != 6.0:
            raise FusionRefused(f"{clip.describe()} clips to [{lo}, {hi}], a hard-swish needs [0, 6]", clip)
        return add, clip, x
    raise FusionRefused(f"{mul.describe()} is not x * Clip(x + 3, 0, 6)", mul)


def _producer(v: Value | None, op: OpId) -> Node | None:
    p = v.producer() if v is not None else None
    return p if p is not None and p.op is op and v.index == 0 else None


def _constant(v: Value | None):
    t = None if v is None else v.constant()  # the one definition of "known at compile time"
    return None if t is None else np.asarray(t.numpy())


def _static(v: Value | None, depth: int = 4) -> bool:
    """``v`` is known at compile time: a constant, or computed from constants only (a
    ``Reshape`` of a bias before ``canonicalize`` folds it), looking ``depth`` producers up."""
    if v is None or _constant(v) is not None:
        return v is not None
    p = v.producer()
    if p is None or depth == 0:
        return False
    return all(_static(i, depth - 1) for i in p.inputs if i is not None)


def _is_scalar(v: Value | None, k: float) -> bool:
    """``v`` is a one-element constant equal to ``k`` that broadcasting cannot widen."""
    a = _constant(v)
    return a is not None and a.size == 1 and a.ndim <= 1 and a.dtype.kind == "f" and float(a.ravel()[0]) == k


def _clip_bounds(clip: Node) -> tuple[float | None, float | None]:
    """A Clip's constant (min, max); None for an absent bound or one not known at compile time."""
    if "min" in clip.attrs or "max" in clip.attrs:  # opset < 11: attributes
        return clip.attr("min"), clip.attr("max")
    out = []
    for i in (1, 2):
        a = _constant(clip.inputs[i]) if i < len(clip.inputs) else None
        out.append(float(a.ravel()[0]) if a is not None and a.size == 1 else None)
    return out[0], out[1]


# -- producer fusion legality ---------------------------------------------------------------------
def check_producer_fusion(act: Activation) -> Node:
    """The producer ``act`` may fuse into, or ``FusionRefused`` saying why none may."""
    x, root = act.input, act.root
    p = x.producer()
    if p is None:
        what = "a graph input" if x.is_graph_input() else "a constant" if x.const_value is not None else "not produced by a node"
        raise FusionRefused(f"the input '{x.name}' of {root.describe()} is {what}", root)
    if p.op not in FUSABLE_PRODUCERS:
        raise FusionRefused(f"the input '{x.name}' of {root.describe()} is produced by {p.describe()}, "
                            f"not one of {_PRODUCER_NAMES}", p)
    if p.op in _ELEMENTWISE_PRODUCERS and any(_static(v) for v in p.inputs):
        raise FusionRefused(f"{p.describe()} has a constant operand (a bias, or the x + 3 of a hard-swish); "
                            f"only an {p.op} of two activations takes a fused activation", p)
    if p.graph is not root.graph:
        raise FusionRefused(f"{p.describe()} is in another graph than {root.describe()}", p)
    if x.index != 0:
        raise FusionRefused(f"'{x.name}' is output {x.index} of {p.describe()}", p)
    if x.is_graph_output():
        raise FusionRefused(f"'{x.name}' (output of {p.describe()}) is a graph output; fusing would hide it", p)
    members = set(act.nodes)
    outside = [u for u in x.users() if u not in members]
    if outside:
        readers = ", ".join(u.describe() for u in x.users()[:4])
        raise FusionRefused(f"'{x.name}' (output of {p.describe()}) has {len(x.users())} readers ({readers}); "
                            f"it must be read only by {root.describe()}", p)
    return p


# -- marks ------------------------------------------------------------------------------------
def mark_fused_activation(act: Node) -> Node:
    """Mark the activation rooted at ``act`` as fused with its producer; returns the producer.

    ``act`` is a one-op activation or the root of a decomposed hard-swish (the group is
    marked too). Raises ``FusionRefused`` when the fusion is not legal.
    """
    unit = find_activation(act, act.metadata_props.get(ACTIVATION_GROUP_KEY))
    producer = check_producer_fusion(unit)
    if unit.is_group:
        act.metadata_props[ACTIVATION_GROUP_KEY] = unit.form
    act.metadata_props[FUSED_PRODUCER_KEY] = str(producer.op)
    return producer


def mark_activation_group(root: Node, form: str | None = None) -> Activation:
    """Mark the decomposed activation (hard-swish, SiLU) rooted at ``root`` as one activation;
    returns it."""
    unit = find_activation(root, form)
    if not unit.is_group:
        raise FusionRefused(f"{root.describe()} is a one-op activation, not a group", root)
    root.metadata_props[ACTIVATION_GROUP_KEY] = unit.form
    return unit


def unmark(node: Node) -> bool:
    """Remove the fusion marks from ``node``; whether it had any."""
    found = False
    for k in MARK_KEYS:
        found |= node.metadata_props.pop(k, None) is not None
    return found


def is_marked(node: Node) -> bool:
    """Whether ``node`` carries a fusion mark (valid or not)."""
    return any(k in node.metadata_props for k in MARK_KEYS)


def marked_unit(root: Node) -> Activation | None:
    """The activation unit the marks on ``root`` claim, re-validated; None if unmarked or stale.

    A unit is valid when its group (if marked) still has its form and its producer (if
    marked) is still legal and of the marked op.
    """
    props = root.metadata_props
    if not is_marked(root):
        return None
    try:
        unit = find_activation(root, props.get(ACTIVATION_GROUP_KEY) or str(root.op))
        if FUSED_PRODUCER_KEY in props and str(check_producer_fusion(unit).op) != props[FUSED_PRODUCER_KEY]:
            return None
    except FusionRefused:
        return None
    return unit


def fused_producer(act: Node) -> Node | None:
    """The producer ``act`` is marked as fused with, if the mark is still valid."""
    if FUSED_PRODUCER_KEY not in act.metadata_props:
        return None
    unit = marked_unit(act)
    return unit.input.producer() if unit is not None else None


def fused_activation(producer: Node) -> Node | None:
    """The root of the activation marked as fused into ``producer``, if the mark is valid."""
    if producer.op not in FUSABLE_PRODUCERS or not producer.outputs or producer.outputs[0] is None:
        return None
    for cand in _forward(producer.outputs[0].users(), depth=3):
        if FUSED_PRODUCER_KEY in cand.metadata_props and fused_producer(cand) is producer:
            return cand
    return None


def activation_group(node: Node) -> Activation | None:
    """The marked activation unit that ``node`` belongs to (as root or group member), if valid."""
    for cand in _forward([node], depth=3):
        if is_marked(cand):
            unit = marked_unit(cand)
            if unit is not None and node in unit.nodes:
                return unit
    return None


def is_fused_edge(value: Value) -> bool:
    """Whether quantization must leave ``value`` without a Q/DQ pair.

    True for the output of a producer with a validly marked fused activation, and for a
    value inside a validly marked activation group.
    """
    p = value.producer()
    if p is None:
        return False
    if p.op in FUSABLE_PRODUCERS and value.index == 0 and fused_activation(p) is not None:
        return True
    unit = activation_group(p)
    return unit is not None and unit.is_group and any(v is value for v in unit.internal_values())


def _forward(start: list[Node], depth: int) -> Iterator[Node]:
    """``start`` and the nodes reading them, up to ``depth`` steps on (each node once, bounded)."""
    seen: dict[Node, None] = {}
    frontier = list(start)
    for _ in range(depth + 1):
        nxt = []
        for n in frontier:
            if n in seen or len(seen) >= 64:
                continue
            seen[n] = None
            yield n
            nxt.extend(n.users())
        frontier = nxt
