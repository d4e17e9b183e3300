"""Transformer fusions: decomposed LayerNorm and GELU become one op each.

Where the model's opset predates the standard op (LayerNormalization: 17, Gelu: 20) the
fusions create the qgraph-domain op of the same name (``ops.QGraphLayerNormalization``,
``ops.QGraphGelu``), declare ``"qgraph": 1`` in the model's opset imports, and export writes
the op back as the decomposed form (``qgraph.onnx.decompose``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from qgraph.ir import ops
from qgraph.ir.core import Graph, Model, Node, Value
from qgraph.ir.dtypes import DType, to_numpy
from qgraph.ir.ops import OpId
from qgraph.ir.tensor import Tensor
from qgraph.ir.types import TensorType
from qgraph.pm.base import PassResult
from qgraph.rewrite import Const, Match, RewritePass, RewriteRule, RuleSet, Var, apply_rules, constant_tensor, pat

#: element types LayerNormalization-17 and Gelu-20 accept
FLOAT_TYPES = frozenset({DType.FLOAT, DType.DOUBLE, DType.FLOAT16, DType.BFLOAT16})
#: relative tolerance for the math constants of GELU (0.5, 1/sqrt(2), sqrt(2/pi), 0.044715):
#: accepts their float32 / float16 roundings and 5-digit spellings such as 1.4142
CONST_RTOL = 1e-4
LAYER_NORM_OPSET = 17
GELU_OPSET = 20


# -- shared helpers ----------------------------------------------------------------------------
def _scalar(v: Value | None) -> float | None:
    """The value of a one-element constant, else None."""
    t = constant_tensor(v)
    if t is None or t.size != 1 or t.dtype not in FLOAT_TYPES | {DType.INT32, DType.INT64}:
        return None
    return float(np.asarray(t.numpy(), np.float64).reshape(()))


def _rank(v: Value) -> int | None:
    return len(v.shape) if v.shape is not None else None


def _shape_of(v: Value) -> tuple[int, ...]:
    return tuple(constant_tensor(v).shape)


def _consumers_first(nodes: Iterable[Node]) -> list[Node]:
    """``nodes`` ordered so that each comes before the nodes of the set it reads.

    The engine removes matched nodes in list order, skipping any still read; this order
    lets it remove a whole chain whose values are read twice inside the match.
    """
    pending = list(dict.fromkeys(nodes))
    ordered: list[Node] = []
    while pending:
        inside = set(pending)
        ready = [n for n in pending if not any(u in inside and u is not n for u in n.users())]
        if not ready:  # a cycle cannot happen in a verified graph; keep the rest as given
            return ordered + pending
        ordered.extend(ready)
        pending = [n for n in pending if n not in set(ready)]
    return ordered


def _escape(nodes: Iterable[Node], root: Node) -> str | None:
    """Why fusing would keep part of the chain: a value in it read outside, or a graph output."""
    inside = set(nodes) | {root}
    for n in nodes:
        if n is root:
            continue
        for o in n.outputs:
            if o is None:
                continue
            if o.is_graph_output():
                return f"'{o.name}' (from {n.describe()}) is a graph output"
            outside = [u for u in o.users() if u not in inside]
            if outside:
                return (f"'{o.name}' (from {n.describe()}) is also read by {outside[0].describe()}, "
                        "so fusing would keep the chain and gain nothing")
    return None


def _declare_qgraph_domain(model: Model) -> None:
    if model.opset(ops.QGRAPH_DOMAIN) is None:
        model.opset_imports[ops.QGRAPH_DOMAIN] = 1


def _result_type(m: Match, x: Value, dtype: DType) -> TensorType:
    """The fused op's output type: the replaced value's, else x's element type and shape."""
    old = m.root.output.type
    if isinstance(old, TensorType):
        return old
    return TensorType(dtype, x.shape)


def _const_rank_fits(rule: RewriteRule, m: Match, consts: Iterable[Value], x: Value, at_least: int) -> None:
    """Constants of rank r broadcast x up to rank r: fine when x's rank is known to be >= r."""
    rank = _rank(x)
    for c in consts:
        r = len(_shape_of(c))
        if r > (rank if rank is not None else at_least):
            where = f"'{x.name}' has rank {rank}" if rank is not None else f"the rank of '{x.name}' is unknown"
            rule.fail(f"{m.root.describe()}: constant '{c.name}' has rank {r} and {where}, so it could change "
                      "the output's shape; run infer-shapes first", m.root)


# -- LayerNorm ---------------------------------------------------------------------------------
def _reduce_axes(node: Node) -> tuple[int, ...] | None:
    """ReduceMean's axes (the attribute before opset 18, the input from 18); None: all axes."""
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        t = constant_tensor(node.inputs[1])
        axes = tuple(int(a) for a in np.asarray(t.numpy()).ravel())
        return axes or None
    axes = node.attr("axes")
    return tuple(axes) if axes else None


def _layer_norm_patterns():
    """Every spelling of (x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps) the rule accepts."""
    x, d = Var("x"), Var("d")
    center = pat.Sub(x, pat.ReduceMean(x, Var("mean_axes", optional=True, const=True), bind="mean"), bind="center")
    for square in (pat.Pow(d, Const("two"), bind="square"), pat.Mul(d, d, bind="square")):
        var = pat.ReduceMean(square, Var("var_axes", optional=True, const=True), bind="var")
        for var_eps in (pat.Add(var, Const("eps")), pat.Add(Const("eps"), var)):
            std = pat.Sqrt(var_eps)
            yield pat.Div(center, std)
            yield pat.Mul(center, pat.Reciprocal(std))
            yield pat.Mul(pat.Reciprocal(std), center)


class LayerNormCore(RewriteRule):
    """(x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps) -> LayerNormalization(x, ones) {axis, epsilon}

    One instance per spelling: ``^2`` as Pow(d, 2) or Mul(d, d), ``/ sqrt`` as Div or Mul by
    Reciprocal, either operand order of the eps Add. Below opset 17 the result is
    qgraph::LayerNormalization(x) (no scale needed). Gamma and beta are folded in afterwards
    by ``FoldLayerNormScale`` / ``FoldLayerNormBias``.
    """

    def __init__(self, pattern):
        self.pattern = pattern

    def check(self, m: Match) -> None:
        root, x, center = m.root, m["x"], m.nodes["center"]
        if m["d"] is not center.output:
            self.fail(f"{root.describe()}: the squared value '{m['d'].name}' is not the centered "
                      f"'{center.output.name}'", root)
        axis = None
        for key in ("mean", "var"):
            rm = m.nodes[key]
            if rm.attr("keepdims", 1) != 1:
                self.fail(f"{rm.describe()} has keepdims=0", rm)
            axes = _reduce_axes(rm)
            if axes is None and rm.attr("noop_with_empty_axes", 0):
                self.fail(f"{rm.describe()} has no axes and noop_with_empty_axes=1 (it is an identity)", rm)
            a = self._axis(rm, axes, x)
            if axis is not None and a != axis:
                self.fail(f"{root.describe()}: the two ReduceMeans normalize different axes", rm)
            axis = a
        m.values["axis"] = axis  # type: ignore[assignment]
        eps = constant_tensor(m["eps"])
        if eps.dtype not in FLOAT_TYPES or eps.size != 1 or not math.isfinite(_scalar(m["eps"])):
            self.fail(f"{root.describe()}: epsilon '{m['eps'].name}' is not a finite float scalar "
                      f"({eps.dtype.name}, shape {list(eps.shape)})", root)
        consts = [m["eps"]]
        if m.nodes["square"].op is ops.Pow:
            if _scalar(m["two"]) != 2.0:
                self.fail(f"{m.nodes['square'].describe()}: exponent '{m['two'].name}' is not 2", m.nodes["square"])
            consts.append(m["two"])
        # x has at least as many axes as are normalized (axis 0, all axes, proves nothing)
        _const_rank_fits(self, m, consts, x, -axis if axis < 0 else 0)
        why = _escape(m.matched, root)
        if why:
            self.fail(f"{root.describe()}: {why}", root)
        m.matched[:] = _consumers_first(m.matched)

    def _axis(self, rm: Node, axes: tuple[int, ...] | None, x: Value) -> int:
        """The LayerNormalization axis for ReduceMean ``axes`` (a suffix of x's axes), as -k or 0."""
        if axes is None:
            return 0
        rank = _rank(x)
        if rank is not None:
            norm = sorted(a + rank if a < 0 else a for a in axes)
            if norm != list(range(rank - len(axes), rank)):
                self.fail(f"{rm.describe()}: axes {list(axes)} are not the last axes of '{x.name}' (rank {rank})", rm)
            return -len(axes)
        if sorted(axes) != list(range(-len(axes), 0)):
            self.fail(f"{rm.describe()}: axes {list(axes)} are not provably the last axes (the rank of "
                      f"'{x.name}' is unknown; run infer-shapes first)", rm)
        return -len(axes)

    def rewrite(self, m: Match, b):
        x = m["x"]
        dtype = constant_tensor(m["eps"]).dtype
        attrs = {"axis": m.values["axis"], "epsilon": _scalar(m["eps"])}
        if m.model.opset("") >= LAYER_NORM_OPSET:
            ones = b.constant(np.ones([1], to_numpy(dtype)), f"{x.name}_ln_scale")
            y = b.op(ops.LayerNormalization, [x, ones], attrs)
        else:
            _declare_qgraph_domain(m.model)
            y = b.op(ops.QGraphLayerNormalization, [x], attrs)
        y.type = _result_type(m, x, dtype)
        return y


class _FoldIntoLayerNorm(RewriteRule):
    """Shared check / rewrite of FoldLayerNormScale and FoldLayerNormBias."""

    mul: bool  # Mul by gamma (scale) or Add of beta (bias)

    def __init__(self, ln_op: OpId, const_first: bool):
        ln = pat[ln_op](Var("x"), Var("scale", optional=True, const=True), Var("bias", optional=True, const=True),
                   bind="ln")
        root = ops.Mul if self.mul else ops.Add
        self.pattern = pat[root](Const("c"), ln) if const_first else pat[root](ln, Const("c"))

    def check(self, m: Match) -> None:
        root, ln, c = m.root, m.nodes["ln"], m["c"]
        why = _escape([ln], root)
        if why:
            self.fail(f"{root.describe()}: {why}", root)
        ct = constant_tensor(c)
        if ct.dtype not in FLOAT_TYPES:
            self.fail(f"{root.describe()}: '{c.name}' is {ct.dtype.name}, not a float type", root)
        if ln.op is ops.LayerNormalization:  # ONNX LayerNormalization: the constant must keep Y's shape
            x, axis = m["x"], ln.attr("axis", -1)
            rank = _rank(x)
            limit = rank if rank is not None else (-axis if axis < 0 else axis + 1)  # a lower bound on the rank
            if len(ct.shape) > limit:
                self.fail(f"{root.describe()}: '{c.name}' has rank {len(ct.shape)}, more than '{x.name}' is known to "
                          "have; folding it would change the output's shape", root)
            if rank is not None:
                for cd, xd in zip(reversed(ct.shape), reversed(x.shape)):
                    if cd != 1 and isinstance(xd, int) and xd != cd:
                        self.fail(f"{root.describe()}: '{c.name}' (shape {list(ct.shape)}) broadcasts '{x.name}' "
                                  f"(shape {list(x.shape)}) to a larger shape", root)

    def rewrite(self, m: Match, b):
        ln, c = m.nodes["ln"], m["c"]
        scale, bias = m["scale"], m["bias"]
        if self.mul:
            scale = c if scale is None else self._combine(b, scale, c, np.multiply, "scale")
            bias = None if bias is None else self._combine(b, bias, c, np.multiply, "bias")
        else:
            bias = c if bias is None else self._combine(b, bias, c, np.add, "bias")
        inputs = [m["x"], scale, bias]
        while inputs[-1] is None:
            inputs.pop()
        y = b.op(ln.op, inputs, dict(ln.attrs))
        y.type = m.root.output.type or self._folded_type(ln.output, constant_tensor(c))
        return y

    @staticmethod
    def _folded_type(y: Value, c: Tensor) -> TensorType | None:
        """The type of ``y`` combined with ``c``: ``y``'s when the constant cannot grow its shape."""
        if not isinstance(y.type, TensorType):
            return None
        shape = y.shape
        if shape is not None and len(c.shape) <= len(shape) and all(
                cd == 1 or cd == yd for cd, yd in zip(reversed(c.shape), reversed(shape))):
            return y.type
        return TensorType(y.type.dtype, None)

    @staticmethod
    def _combine(b, old: Value, c: Value, fn, what: str) -> Value:
        """``fn(old, c)`` as a constant; ``c`` itself when ``old`` is the identity of ``fn``."""
        a, k = constant_tensor(old).numpy(), constant_tensor(c).numpy()
        identity = 1 if fn is np.multiply else 0
        if np.all(a == identity) and np.broadcast_shapes(a.shape, k.shape) == k.shape:
            return c
        return b.constant(Tensor(fn(a, k).astype(k.dtype)), f"{c.name}_ln_{what}")


class FoldLayerNormScale(_FoldIntoLayerNorm):
    """Mul(LayerNormalization(x, s, b), gamma) -> LayerNormalization(x, s * gamma, b * gamma)"""

    mul = True


class FoldLayerNormBias(_FoldIntoLayerNorm):
    """Add(LayerNormalization(x, s, b), beta) -> LayerNormalization(x, s, b + beta)"""

    mul = False


class FuseLayerNorm(RewritePass):
    """Fuse the decomposed LayerNorm exporters emit into one LayerNormalization.

    before => after:
        m = ReduceMean(x); d = Sub(x, m); v = ReduceMean(Pow(d, 2)); n = Div(d, Sqrt(Add(v, eps)))
        y = Add(Mul(n, gamma), beta)
            =>  y = LayerNormalization(x, gamma, beta) {axis=-k, epsilon=eps}    (opset >= 17)
            =>  y = qgraph::LayerNormalization(x, gamma, beta) {...}              (opset < 17)

    Also accepted: Mul(d, d) for the square, Mul by Reciprocal(Sqrt) for the division,
    either eps operand order, the ``axes`` attribute (opset < 18) or input (>= 18); gamma and
    beta are optional (without gamma an opset-17 LayerNormalization gets a scale of ones),
    and a Mul / Add by a constant right after any LayerNormalization is folded into it.
    Preconditions: both ReduceMeans keep dims and reduce the same last axes of the same x;
    no intermediate value is read outside the chain (fusing would then keep the chain and
    gain nothing: the match is refused with that reason). Unknown ranks only refuse what
    they leave undecided (positive axes, constants of rank > the normalized axes).
    Initializers the pass creates and then no longer needs are removed; the constants the
    fused chain read are left to dead-code-elimination.
    """

    name = "fuse-layernorm"
    rules = RuleSet([LayerNormCore(p) for p in _layer_norm_patterns()]
                    + [rule(ln_op, first) for rule in (FoldLayerNormScale, FoldLayerNormBias)
                       for ln_op in (ops.LayerNormalization, ops.QGraphLayerNormalization) for first in (False, True)])

    def run(self, model: Model, analyses) -> PassResult:
        before = {v for g in model.graph.all_graphs() for v in g.initializers.values()}
        fired = apply_rules(model, self.rules)
        for g in model.graph.all_graphs():
            for v in list(g.initializers.values()):
                if v not in before and not v.has_uses() and not v.is_graph_output():
                    g.remove_initializer(v)
        return PassResult.of(bool(fired), **dict(fired))


# -- GELU --------------------------------------------------------------------------------------
@dataclass
class _Terms:
    """A flattened product (or sum): its constant part, non-constant operands, nodes walked.

    ``shared`` lists operands that are Mul / Div / Add outputs left unwalked because
    something besides their one consumer reads them.
    """

    const: float
    consts: list[Value] = field(default_factory=list)
    leaves: list[Value] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    shared: list[Value] = field(default_factory=list)


_MAX_WALK = 16  # nodes one flattening may walk; GELU needs at most 5


def _read_once(v: Value) -> bool:
    return len(v.uses()) == 1 and not v.is_graph_output()


def _flatten(v: Value, g: Graph, add: bool, *, top: bool = False, t: _Terms | None = None) -> _Terms:
    """``v`` as const * prod(leaves) (``add``: const + sum(leaves)).

    Walks Mul and Div-by-constant (``add``: Add) nodes of graph ``g`` whose output is read
    only by the node walked from (``top``: ``v`` itself is always walked). A value read
    more than once, such as GELU's x, is a leaf: the walk never descends into x.
    """
    t = t if t is not None else _Terms(0.0 if add else 1.0)
    c = _scalar(v)
    if c is not None:
        t.const = t.const + c if add else t.const * c
        t.consts.append(v)
        return t
    p = v.producer()
    divisor = _scalar(p.inputs[1]) if p is not None and p.op is ops.Div and not add else None
    walkable = p is not None and p.graph is g and (p.op is (ops.Add if add else ops.Mul) or bool(divisor))
    if walkable and not (top or _read_once(v)):
        t.shared.append(v)
    elif walkable and len(t.nodes) < _MAX_WALK:
        t.nodes.append(p)
        if divisor:
            t.consts.append(p.inputs[1])
            t.const /= divisor
            return _flatten(p.inputs[0], g, add, t=t)
        _flatten(p.inputs[0], g, add, t=t)
        _flatten(p.inputs[1], g, add, t=t)
        return t
    t.leaves.append(v)
    return t


def _close(value: float, target: float) -> bool:
    return abs(value - target) <= CONST_RTOL * abs(target)


def _reaches_activation(v: Value, depth: int = 6) -> bool:
    """Whether ``v`` is computed from an Erf or Tanh through Mul / Div / Add nodes."""
    p = v.producer()
    if p is None or depth == 0:
        return False
    if p.op in (ops.Erf, ops.Tanh):
        return True
    return p.op in (ops.Mul, ops.Div, ops.Add) and any(
        u is not None and _reaches_activation(u, depth - 1) for u in p.inputs)


def _one_plus_activation(a: Value, g: Graph) -> _Terms | None:
    """``a`` flattened as a sum, when it is 1 + Erf(...) or 1 + Tanh(...)."""
    p = a.producer()
    if p is None or p.op is not ops.Add or p.graph is not g:
        return None
    s = _flatten(a, g, add=True)
    if len(s.leaves) != 1 or not _close(s.const, 1.0):
        return None
    t = s.leaves[0].producer()
    return s if t is not None and t.graph is g and t.op in (ops.Erf, ops.Tanh) else None


class GeluRule(RewriteRule):
    """x * 0.5 * (1 + Erf(x / sqrt(2))) -> Gelu(x);
    0.5 * x * (1 + Tanh(sqrt(2/pi) * (x + 0.044715 * x^3))) -> Gelu(x) {approximate="tanh"}

    Products and sums are matched up to order and association (a Div by a constant counts
    as a Mul by its reciprocal; x^3 may be Pow(x, 3), x*x*x or x * Pow(x, 2)); the
    constants must be within ``CONST_RTOL`` of their exact values. The pattern is only the
    root (a Mul, or a Div by a constant) with the operand ``activation_input`` computed from
    an Erf or Tanh (so the tracer's closest match is a real candidate); ``check`` matches
    the rest algebraically.
    """

    def __init__(self, root_op: OpId, activation_input: int):
        a, b = Var("a"), Var("b")
        (a, b)[activation_input].predicate = _reaches_activation
        self.pattern = pat[root_op](a, b)

    def check(self, m: Match) -> None:
        root = m.root
        g = root.graph
        walked: list[_Terms] = []
        x: Value | None = None

        def flatten(v: Value, add: bool, top: bool = False) -> _Terms:
            walked.append(_flatten(v, g, add, top=top))
            return walked[-1]

        def fail(why: str) -> None:
            shared = [v for w in walked for v in w.shared if v is not x]
            if shared:
                readers = ", ".join(u.describe() for u in shared[0].users())
                why += (f" ('{shared[0].name}' is read by {readers}; a value inside the GELU read outside it "
                        "keeps the chain, so it is not fused)")
            self.fail(f"{root.describe()}: {why}", root)

        prod = flatten(root.output, add=False, top=True)
        if len(prod.leaves) != 2:
            fail(f"the product has {len(prod.leaves)} non-constant factor(s), GELU has 2 (x and 1 + erf / tanh)")
        for other, a in (prod.leaves, prod.leaves[::-1]):
            one_plus = _one_plus_activation(a, g)
            if one_plus is not None:
                break
        else:
            fail("neither factor is 1 + Erf(...) or 1 + Tanh(...)")
        walked.append(one_plus)
        act = one_plus.leaves[0].producer()
        arg = flatten(act.inputs[0], add=False)
        exponents: list[Value] = []
        extra: list[Node] = [act]
        if act.op is ops.Erf:  # x is the Erf argument's one operand
            approximate = "none"
            if len(arg.leaves) != 1 or not _close(arg.const, 1 / math.sqrt(2)):
                fail("the Erf argument is not x / sqrt(2)")
            x = arg.leaves[0]
        else:  # x is the operand of x + 0.044715 x^3 that the other one is the cube of
            approximate = "tanh"
            inner = flatten(arg.leaves[0], add=True) if len(arg.leaves) == 1 else None
            if (inner is None or not _close(arg.const, math.sqrt(2 / math.pi))
                    or len(inner.leaves) != 2 or inner.const != 0):
                fail("the Tanh argument is not sqrt(2/pi) * (x + 0.044715 x^3)")
            for x, w in (inner.leaves, inner.leaves[::-1]):
                cubic = _flatten(w, g, add=False)
                if _close(cubic.const, 0.044715) and self._degree(cubic.leaves, x, extra, exponents) == 3:
                    walked.append(cubic)
                    break
            else:
                x = None
                fail("the Tanh argument's cubic term is not 0.044715 x^3")
        if other is not x:
            fail(f"the factor '{other.name}' is not the activation's input '{x.name}'")
        if not _close(prod.const, 0.5):
            fail(f"the constant factor is {prod.const:g}, not 0.5")
        consts = [c for w in walked for c in w.consts]
        for c in consts:
            dt = constant_tensor(c).dtype
            if dt not in FLOAT_TYPES:
                fail(f"constant '{c.name}' is {dt.name}, not a float type")
        _const_rank_fits(self, m, consts + exponents, x, 0)
        matched = [n for w in walked for n in w.nodes if n is not root] + extra
        why = _escape(matched, root)
        if why:
            fail(why)
        m.values["x"] = x
        m.values["approximate"] = approximate  # type: ignore[assignment]
        m.values["dtype"] = constant_tensor(consts[0]).dtype  # type: ignore[assignment]
        m.matched[:] = _consumers_first([root] + matched)

    @staticmethod
    def _degree(leaves: list[Value], x: Value, nodes: list[Node], exponents: list[Value]) -> int:
        """The power of x that ``leaves`` multiply to (each x or Pow(x, 2 | 3)), -1 if not one.

        The Pow nodes and exponents are appended to ``nodes`` / ``exponents`` on success.
        """
        degree, pows, ks = 0, [], []
        for v in leaves:
            p = v.producer()
            k = _scalar(p.inputs[1]) if p is not None and p.op is ops.Pow and p.inputs[0] is x else None
            if v is x:
                degree += 1
            elif k in (2.0, 3.0):
                degree += int(k)
                pows.append(p)
                ks.append(p.inputs[1])
            else:
                return -1
        if degree == 3:
            nodes.extend(pows)
            exponents.extend(ks)
        return degree

    def rewrite(self, m: Match, b):
        x, approximate = m["x"], m.values["approximate"]
        attrs = {"approximate": "tanh"} if approximate == "tanh" else {}
        if m.model.opset("") >= GELU_OPSET:
            y = b.op(ops.Gelu, [x], attrs)
        else:
            _declare_qgraph_domain(m.model)
            y = b.op(ops.QGraphGelu, [x], attrs)
        y.type = _result_type(m, x, m.values["dtype"])
        return y


class FuseGelu(RewritePass):
    """Fuse the decomposed GELU exporters emit into one Gelu.

    before => after:
        y = Mul(Mul(x, 0.5), Add(Erf(Div(x, 1.4142135)), 1))          =>  y = Gelu(x)
        y = Mul(Mul(0.5, x), Add(1, Tanh(Mul(0.7978846,
                Add(x, Mul(0.044715, Pow(x, 3)))))))                    =>  y = Gelu(x) {approximate="tanh"}

    At opset < 20 the result is qgraph::Gelu (exported back as the decomposed form).
    Products and sums match in any order and association; constants within ``CONST_RTOL``.
    Preconditions: the intermediate values are read only inside the GELU (else the match is
    refused with the reader's name); constants of rank > 0 need x's rank to be known (so the
    fused op cannot change the output's shape). The constants are left to
    dead-code-elimination.
    """

    name = "fuse-gelu"
    rules = RuleSet([GeluRule(ops.Mul, 0), GeluRule(ops.Mul, 1), GeluRule(ops.Div, 0)])


PASSES = (FuseLayerNorm, FuseGelu)
