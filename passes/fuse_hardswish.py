"""fuse-hardswish: the decomposed hard-swish exporters emit becomes one HardSwish.

PP-OCR (Paddle2ONNX) writes hard-swish as ``x * Clip(x + 3, 0, 6) / 6``; other exporters
as ``x * (Clip(x + 3, 0, 6) / 6)``, with ``* (1/6)`` for the division, or as
``x * HardSigmoid(x)`` {alpha=1/6, beta=0.5}. One HardSwish is one activation for
quantization (a table lookup on an 8-bit input) instead of four float ops. Where the
model's opset predates HardSwish (14) the fusion creates ``qgraph::HardSwish``, which
export writes back as ``x * HardSigmoid(x)`` (``qgraph.onnx.decompose``).
"""

from __future__ import annotations

from typing import Iterator

from qgraph.ir import ops
from qgraph.ir.core import Node, Value
from qgraph.ir.dtypes import DType
from qgraph.pm.base import PassResult
from qgraph.rewrite import Const, Match, RewritePass, RewriteRule, RuleSet, Var, apply_rules, constant_tensor, pat
from qgraph.rewrite.pattern import NodePattern
from qgraph.passes.fuse_transformer import (CONST_RTOL, _const_rank_fits, _consumers_first,
                                            _declare_qgraph_domain, _escape, _result_type, _scalar)

HARD_SWISH_OPSET = 14
#: element types HardSwish-14 accepts
HARD_SWISH_TYPES = frozenset({DType.FLOAT, DType.FLOAT16, DType.DOUBLE})
#: HardSwish-14 is x * HardSigmoid(x) with these (fixed) HardSigmoid parameters
ALPHA, BETA = 1.0 / 6.0, 0.5


def _close(value: float | None, target: float) -> bool:
    """``value`` within ``CONST_RTOL`` of ``target`` (absolute for a target of 0)."""
    return value is not None and abs(value - target) <= CONST_RTOL * max(abs(target), 1.0)


def _binary(op: ops.OpId, a, b, swap: bool, bind: str | None = None) -> NodePattern:
    return pat[op](b, a, bind=bind) if swap else pat[op](a, b, bind=bind)


def _clip_gates(x: Var) -> Iterator[NodePattern]:
    """Clip(x + 3, 0, 6) (6 * hard-sigmoid), either Add operand order; bounds checked later."""
    for swap in (False, True):
        yield pat.Clip(_binary(ops.Add, x, Const("three"), swap, bind="add"), bind="clip", allow_extra_inputs=True)


def _hard_swish_patterns() -> Iterator[NodePattern]:
    """Every spelling of x * Clip(x + 3, 0, 6) / 6 and x * HardSigmoid(x) the rule accepts."""
    x = Var("x")
    for gate in _clip_gates(x):
        for swap in (False, True):
            prod = _binary(ops.Mul, x, gate, swap, bind="prod")
            yield pat.Div(prod, Const("six"))  # (x * Clip(x + 3, 0, 6)) / 6
            yield _binary(ops.Mul, x, pat.Div(gate, Const("six"), bind="scale"), swap)  # x * (Clip(.) / 6)
            for swap2 in (False, True):
                yield _binary(ops.Mul, prod, Const("sixth"), swap2)  # (x * Clip(.)) * (1/6)
                yield _binary(ops.Mul, x, _binary(ops.Mul, gate, Const("sixth"), swap2, bind="scale"), swap)
    for swap in (False, True):
        yield _binary(ops.Mul, x, pat.HardSigmoid(x, bind="hsig"), swap)  # x * HardSigmoid(x)


def _clip_bounds(clip: Node) -> tuple[float | None, float | None]:
    """A Clip's constant (min, max): attributes before opset 11, inputs after; None when unknown."""
    if "min" in clip.attrs or "max" in clip.attrs:
        return clip.attr("min"), clip.attr("max")
    lo, hi = (_scalar(clip.inputs[i]) if i < len(clip.inputs) else None for i in (1, 2))
    return lo, hi


class HardSwishRule(RewriteRule):
    """x * Clip(x + 3, 0, 6) / 6 -> HardSwish(x); x * HardSigmoid(x) {alpha=1/6, beta=0.5} -> HardSwish(x)

    One instance per spelling (see ``_hard_swish_patterns``): the division by 6 outside
    or inside the product, or a Mul by 1/6; either operand order of every Mul and Add.
    Constants within ``CONST_RTOL`` of 3, 6, 1/6, and the Clip bounds of 0 and 6.
    """

    def __init__(self, pattern: NodePattern):
        self.pattern = pattern

    def check(self, m: Match) -> None:
        root, x = m.root, m["x"]
        consts: list[Value] = []
        if "hsig" in m.nodes:
            hs = m.nodes["hsig"]
            alpha, beta = hs.attr("alpha", 0.2), hs.attr("beta", 0.5)
            if not (_close(alpha, ALPHA) and _close(beta, BETA)):
                self.fail(f"{hs.describe()} has alpha={alpha:g}, beta={beta:g}; a hard-swish needs 1/6 and 0.5", hs)
        else:
            self._expect(m, "three", 3.0, consts)
            if m.values.get("six") is not None:
                self._expect(m, "six", 6.0, consts)
            else:
                self._expect(m, "sixth", 1.0 / 6.0, consts)
            clip = m.nodes["clip"]
            lo, hi = _clip_bounds(clip)
            if not (_close(lo, 0.0) and _close(hi, 6.0)):
                self.fail(f"{clip.describe()} clips to [{lo}, {hi}]; a hard-swish needs [0, 6]", clip)
        dtype = x.dtype if x.dtype is not None else (constant_tensor(consts[0]).dtype if consts else None)
        if dtype not in HARD_SWISH_TYPES:
            self.fail(f"{root.describe()}: '{x.name}' is {dtype.name if dtype else 'of unknown type'}; "
                      "HardSwish takes float, float16 or double", root)
        for c in consts:
            if constant_tensor(c).dtype != dtype:
                self.fail(f"{root.describe()}: constant '{c.name}' is {constant_tensor(c).dtype.name}, "
                          f"'{x.name}' {dtype.name}", root)
        _const_rank_fits(self, m, consts, x, 0)
        why = _escape(m.matched, root)
        if why:
            self.fail(f"{root.describe()}: {why}", root)
        m.values["dtype"] = dtype  # type: ignore[assignment]
        m.matched[:] = _consumers_first(m.matched)

    def _expect(self, m: Match, name: str, target: float, consts: list[Value]) -> None:
        v = m[name]
        c = _scalar(v)
        t = constant_tensor(v)
        if c is None or t.dtype not in HARD_SWISH_TYPES or not _close(c, target):
            shown = f"{c:g}" if c is not None else f"a {t.dtype.name} tensor of shape {list(t.shape)}"
            self.fail(f"{m.root.describe()}: constant '{v.name}' is {shown}, not {target:g}", m.root)
        consts.append(v)

    def rewrite(self, m: Match, b):
        x = m["x"]
        if m.model.opset("") >= HARD_SWISH_OPSET:
            y = b.op(ops.HardSwish, [x])
        else:
            _declare_qgraph_domain(m.model)
            y = b.op(ops.QGraphHardSwish, [x])
        y.type = _result_type(m, x, m.values["dtype"])
        return y


class FuseHardSwish(RewritePass):
    """Fuse the decomposed hard-swish exporters emit into one HardSwish.

    before => after:
        a = Add(x, 3); c = Clip(a, 0, 6); t = Mul(x, c); y = Div(t, 6)   =>  y = HardSwish(x)
        h = HardSigmoid(x) {alpha=1/6, beta=0.5}; y = Mul(x, h)           =>  y = HardSwish(x)

    Also ``x * (Clip(x + 3, 0, 6) / 6)`` and Mul by 1/6 for either division, every operand
    order of the Mul and Add nodes, Clip bounds as attributes (opset < 11) or inputs. At
    opset < 14 the result is ``qgraph::HardSwish`` (exported back as x * HardSigmoid(x)).
    Preconditions: the constants are float scalars (one element) of x's type within
    ``CONST_RTOL`` of 3, 6, 1/6 and the bounds 0 and 6; constants of rank > 0 need x's rank
    to be known (so the fused op cannot change the output's shape); the intermediate values
    are read only inside the hard-swish (else the match is refused with the reader's name).
    The constants are left to dead-code-elimination. Run it before ``fold-scale``, which
    would otherwise fold the "/ 6" into the next Conv (the ``fuse`` alias does).
    """

    name = "fuse-hardswish"
    rules = RuleSet([HardSwishRule(p) for p in _hard_swish_patterns()])

    def run(self, model, analyses) -> PassResult:
        fired = apply_rules(model, self.rules)
        return PassResult.of(bool(fired), fused=sum(fired.values()))


PASSES = (FuseHardSwish,)
