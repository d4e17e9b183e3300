"""Linear fusions on float graphs: fold BatchNormalization, per-channel Mul / Add, biases and
constant scales into the weights of Conv, ConvTranspose, Gemm and MatMul.

The arithmetic is done in float64 on the constant tensors and stored in the weight's dtype.
Folded weights and biases are new initializers: a weight may feed several nodes, so it is
never changed in place. The linear node itself is kept (its name and output value stay);
only its weight / bias inputs are repointed, and the folded node (BatchNormalization, Mul,
Add, Div) goes. Constants left without readers are for ``dead-code-elimination``.

Legality shared by every rule: the value between the linear node and the folded node has
exactly one reader and is not a graph output; the weight and the folded parameters are
compile-time constants (``qgraph.rewrite.constant_tensor``) of a float type; and the folded
constant broadcasts along the channel axis only, without changing the output's shape.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from qgraph.ir import ops
from qgraph.ir.core import Node, Value
from qgraph.ir.dtypes import DType, to_numpy
from qgraph.ir.ops import OpId
from qgraph.ir.tensor import Tensor
from qgraph.rewrite import Builder, Const, Match, RewritePass, RewriteRule, RuleSet, Var, constant_tensor, pat

FLOAT_DTYPES = frozenset({DType.FLOAT, DType.DOUBLE, DType.FLOAT16, DType.BFLOAT16})

# ops whose output has a channel axis a per-channel scale / shift can fold into, with a bias input
CHANNEL_OPS = (ops.Conv, ops.ConvTranspose, ops.Gemm)
# ops whose weight (input 1) a scale can fold into
LINEAR_OPS = CHANNEL_OPS + (ops.MatMul,)


def _opset(m: Match) -> int | None:
    return m.model.opset("") if m.model is not None else None


# -- the channel layout of a linear node ------------------------------------------------------------
@dataclass(frozen=True)
class ChannelLayout:
    """Where the channels of a linear node's weight, input and output are.

    Axes are negative (counted from the end) so they hold whatever the batch rank.

    Attributes:
        out_channels: output channels, None when the output has no channel axis (MatMul, 1-D B).
        out_axis: the output's channel axis.
        out_rank: the output's rank (exact when ``out_rank_exact``, else a lower bound).
        in_channels: input channels (Gemm / MatMul: the reduced K axis).
        in_axis: the input's channel (K) axis.
        in_rank: the input's rank, or None when the node does not fix it (MatMul).
    """

    out_channels: int | None
    out_axis: int
    out_rank: int
    out_rank_exact: bool
    in_channels: int
    in_axis: int
    in_rank: int | None


def channel_layout(node: Node) -> ChannelLayout | None:
    """The layout of ``node`` (an op in ``LINEAR_OPS`` with a constant weight), else None."""
    w = constant_tensor(node.inputs[1] if len(node.inputs) > 1 else None)
    if node.op not in LINEAR_OPS or w is None:
        return None
    shape = w.shape
    if node.op in (ops.Conv, ops.ConvTranspose):
        group = node.attr("group", 1)
        if len(shape) < 3 or group < 1 or shape[0] % group:
            return None
        r = len(shape)  # the output and the input have the weight's rank
        if node.op is ops.Conv:
            return ChannelLayout(shape[0], 1 - r, r, True, shape[1] * group, 1 - r, r)
        return ChannelLayout(shape[1] * group, 1 - r, r, True, shape[0], 1 - r, r)
    if node.op is ops.Gemm:
        if len(shape) != 2:
            return None
        k, n = shape[::-1] if node.attr("transB", 0) else shape
        return ChannelLayout(n, -1, 2, True, k, -2 if node.attr("transA", 0) else -1, 2)
    # MatMul: numpy matmul semantics, A's rank may be unknown
    if len(shape) == 0:
        return None
    ra = value_rank(node.inputs[0])
    if len(shape) == 1:
        out_rank = ra - 1 if ra is not None else 0
        return ChannelLayout(None, -1, out_rank, ra is not None, shape[0], -1, ra)
    if ra is None:
        out_rank = len(shape) - 1  # A may be 1-D; the output has at least this rank
    else:
        out_rank = len(shape) - 1 if ra == 1 else max(ra, len(shape))
    return ChannelLayout(shape[-1], -1, out_rank, ra is not None, shape[-2], -1, ra)


def value_rank(v: Value | None) -> int | None:
    """The rank of ``v`` when its type or its producer (Flatten, Gemm, Reshape to a constant shape) fixes it."""
    if v is None:
        return None
    if v.shape is not None:
        return len(v.shape)
    p = v.producer()
    if p is None:
        return None
    if p.op in (ops.Flatten, ops.Gemm):
        return 2
    if p.op is ops.Reshape and len(p.inputs) > 1:
        shape = constant_tensor(p.inputs[1])
        if shape is not None and len(shape.shape) == 1:
            return shape.shape[0]
    return None


def _known(dim) -> bool:
    return isinstance(dim, int) and dim >= 0  # some exporters write -1 for a dynamic dim


def static_dim(v: Value, axis: int) -> int | None:
    """The static size of ``v`` along ``axis`` (negative), from its type or a linear producer's weight."""
    if v.shape is not None and len(v.shape) >= -axis and _known(v.shape[axis]):
        return v.shape[axis]
    p = v.producer()
    layout = channel_layout(p) if p is not None and p.op in LINEAR_OPS else None
    if layout is not None and layout.out_axis == axis and layout.out_rank_exact:
        return layout.out_channels
    return None


# -- constants --------------------------------------------------------------------------------------
def float_constant(rule: RewriteRule, v: Value, node: Node) -> np.ndarray:
    """The data of constant ``v`` (an input of ``node``) in float64; fails unless it is a float tensor."""
    t = constant_tensor(v)
    if t is None:
        rule.fail(f"{node.describe()} input '{v.name}' is not a constant", node)
    if t.dtype not in FLOAT_DTYPES:
        rule.fail(f"{node.describe()} input '{v.name}' is {t.dtype.name}; only float tensors are folded", node)
    return np.asarray(t.numpy(), np.float64)


def broadcast_view(node: Node, index: int, data: np.ndarray, rank: int | None, opset: int | None) -> np.ndarray:
    """Constant input ``index`` of elementwise ``node`` shaped as it numpy-broadcasts against the other.

    Before opset 7, Add / Mul / Div with ``broadcast=1`` and an ``axis`` align the second
    input at ``axis`` rather than at the end.
    """
    if (opset is not None and opset < 7 and index == 1 and node.attr("broadcast", 0) == 1
            and "axis" in node.attrs and rank is not None):
        axis = node.attr("axis")
        axis += rank if axis < 0 else 0
        if 0 <= axis and axis + data.ndim <= rank:
            return data.reshape((1,) * axis + data.shape + (1,) * (rank - axis - data.ndim))
    return data


def channel_vector(rule: RewriteRule, data: np.ndarray, *, rank: int, rank_exact: bool, axis: int,
                   channels: int | None, node: Node, what: str) -> np.ndarray:
    """``data`` as one value per channel when it broadcasts against a tensor of rank ``rank`` along
    channel ``axis`` only; a 0-d array when it is a scalar and there is no channel axis.

    Fails (naming ``node`` and ``what`` the constant is) when the constant would raise the
    tensor's rank or varies along another axis.
    """
    if data.ndim > rank:
        bound = "" if rank_exact else "at least "
        rule.fail(f"{node.describe()}: {what} has rank {data.ndim}, but the tensor it scales has rank "
                  f"{bound}{rank}; broadcasting could change its shape", node)
    pos = data.ndim + axis  # the channel axis, counted in data's own dims
    for i, d in enumerate(data.shape):
        if d != 1 and i != pos:
            rule.fail(f"{node.describe()}: {what} of shape {list(data.shape)} varies along axis {i - data.ndim}, "
                      f"not only the channel axis {axis}", node)
    if 0 <= pos and data.shape[pos] != 1:
        if channels is None:
            rule.fail(f"{node.describe()}: {what} of shape {list(data.shape)} is not a scalar, and the tensor "
                      "it scales has no channel axis", node)
        if data.shape[pos] != channels:
            rule.fail(f"{node.describe()}: {what} of shape {list(data.shape)} has {data.shape[pos]} entries "
                      f"on the channel axis, the tensor has {channels} channels", node)
        return data.reshape(channels)
    scalar = data.reshape(-1)[0]
    return np.full(channels, scalar) if channels is not None else np.asarray(scalar)


def check_sole_reader(rule: RewriteRule, v: Value, reader: Node) -> None:
    """``v`` is read by ``reader`` only and is not a graph output (so it may stop existing)."""
    p = v.producer()
    where = f"'{v.name}' (output of {p.describe()})" if p is not None else f"'{v.name}'"
    if v.is_graph_output():
        rule.fail(f"{where} is a graph output; folding {reader.describe()} into it would change it", p or reader)
    if len(v.uses()) != 1:
        readers = ", ".join(n.describe() for n in v.users())
        rule.fail(f"{where} has {len(v.uses())} readers ({readers}); folding {reader.describe()} into it "
                  "would change what the others read", p or reader)


_FUSED_SUFFIX = re.compile(r"_fused(_\d+)?$")


def _fused_name(name: str) -> str:
    return _FUSED_SUFFIX.sub("", name) + "_fused"


# -- a linear node's weight and bias, in float64 ----------------------------------------------------
class FoldedLinear:
    """The weight and bias of a linear node as float64 arrays, scaled / shifted, then written back.

    ``bias`` is the node's effective additive term (Gemm: ``beta * C``), None when it has none.
    """

    def __init__(self, rule: RewriteRule, node: Node, *, with_bias: bool = True):
        self.node = node
        w = node.inputs[1]
        self.layout = channel_layout(node)
        if self.layout is None:  # the pattern made the weight a constant; its shape is wrong
            shape = list(constant_tensor(w).shape)
            grouped = f" with group={node.attr('group', 1)}" if node.op in (ops.Conv, ops.ConvTranspose) else ""
            rule.fail(f"{node.describe()}: weight '{w.name}' of shape {shape} does not fit a {node.op}{grouped}", node)
        self.weight = float_constant(rule, w, node)
        self.dtype = constant_tensor(w).dtype
        self.bias: np.ndarray | None = None
        self._weight_changed = self._bias_changed = False
        b = node.inputs[2] if len(node.inputs) > 2 else None
        if with_bias and b is not None:
            self.bias = float_constant(rule, b, node)
            if node.op is ops.Gemm:
                self.bias = self.bias * node.attr("beta", 1.0)

    # -- the math ---------------------------------------------------------------------------------
    def scale_out(self, s: np.ndarray) -> None:
        """y -> y * s, ``s`` per output channel (or 0-d for MatMul without a channel axis)."""
        w, op = self.weight, self.node.op
        if op is ops.Conv:
            self.weight = w * s.reshape((-1,) + (1,) * (w.ndim - 1))
        elif op is ops.ConvTranspose:  # [Cin, Cout/group, k...]: output channel g*Cout/group + j
            g = self.node.attr("group", 1)
            grouped = w.reshape((g, w.shape[0] // g) + w.shape[1:])
            self.weight = (grouped * s.reshape((g, 1, w.shape[1]) + (1,) * (w.ndim - 2))).reshape(w.shape)
        elif op is ops.Gemm:
            self.weight = w * (s[:, None] if self.node.attr("transB", 0) else s[None, :])
        else:  # MatMul: the output channel is B's last axis
            self.weight = w * s
        self._weight_changed = True
        if self.bias is not None:
            self.bias = self.bias * s
            self._bias_changed = True

    def shift_out(self, t: np.ndarray) -> None:
        """y -> y + t, ``t`` per output channel."""
        if self.node.op is ops.MatMul:
            raise AssertionError("a MatMul has no bias to shift")
        self.bias = t.copy() if self.bias is None else self.bias + t
        self._bias_changed = True

    def scale_in(self, s: np.ndarray) -> None:
        """x -> x * s, ``s`` per input channel (Gemm / MatMul: per entry of the reduced K axis)."""
        w, op = self.weight, self.node.op
        if op is ops.Conv:  # [M, C/group, k...]: output channel m reads inputs of its group
            g = self.node.attr("group", 1)
            grouped = w.reshape((g, w.shape[0] // g) + w.shape[1:])
            s_grouped = s.reshape((g, 1, w.shape[1]) + (1,) * (w.ndim - 2))
            self.weight = (grouped * s_grouped).reshape(w.shape)
        elif op is ops.ConvTranspose:
            self.weight = w * s.reshape((-1,) + (1,) * (w.ndim - 1))
        elif op is ops.Gemm:
            self.weight = w * (s[None, :] if self.node.attr("transB", 0) else s[:, None])
        else:
            self.weight = w * (s[:, None] if w.ndim >= 2 else s)
        self._weight_changed = True

    # -- writing back -----------------------------------------------------------------------------
    def write(self, b: Builder, opset: int | None) -> None:
        """Point the node at new initializers holding the weight and bias, where they changed."""
        node, np_dtype = self.node, to_numpy(self.dtype)
        inputs = list(node.inputs)
        if self._weight_changed:
            inputs[1] = b.constant(Tensor(self.weight.astype(np_dtype), self.dtype), _fused_name(inputs[1].name))
        if self._bias_changed:
            old = inputs[2] if len(inputs) > 2 else None
            hint = _fused_name(old.name) if old is not None else f"{node.name or node.output.name}_bias"
            bias = b.constant(Tensor(self.bias.astype(np_dtype), self.dtype), hint)
            inputs = inputs[:2] + [bias] + inputs[3:]
            if node.op is ops.Gemm:
                node.del_attr("beta")  # beta is folded into the new C
                if opset is not None and opset < 7:
                    node.set_attr("broadcast", 1)  # C is now per column
        node.set_inputs(inputs)


def _linear_pattern(op: OpId, x, *, bias: str = "const"):
    """``op(x, w, b)`` with a constant weight; the bias is a constant (``const``) or anything (``any``)."""
    if op is ops.MatMul:
        return pat.MatMul(x, Const("w"), bind="linear")
    b = Const("b", optional=True) if bias == "const" else Var("b", optional=True)
    return pat[op](x, Const("w"), b, bind="linear")


def _binary(op: OpId, a, b, *, const_first: bool, bind: str | None = None):
    return pat[op](b, a, bind=bind) if const_first else pat[op](a, b, bind=bind)


# -- fuse-conv-bn -----------------------------------------------------------------------------------
def check_inference_batch_norm(rule: RewriteRule, bn: Node, opset: int | None) -> None:
    """A BatchNormalization normalizes with its constant running statistics (not batch statistics)."""
    if opset is not None and opset < 7 and bn.attr("is_test", 0) == 0:
        rule.fail(f"{bn.describe()} has is_test=0 (training mode, opset {opset}); "
                  "only inference BatchNormalization folds", bn)
    if bn.attr("training_mode", 0):
        rule.fail(f"{bn.describe()} has training_mode=1; only inference BatchNormalization folds", bn)
    if opset is not None and opset < 9 and bn.attr("spatial", 1) == 0:
        rule.fail(f"{bn.describe()} has spatial=0 (per-activation statistics, opset {opset})", bn)
    extra = [o.name for o in bn.outputs[1:] if o is not None]
    if extra:
        rule.fail(f"{bn.describe()} has statistics outputs {extra} (training mode); "
                  "only single-output inference BatchNormalization folds", bn)


class BatchNormIntoLinear(RewriteRule):
    """BatchNormalization(Conv(x, w, b), gamma, beta, mean, var) -> Conv(x, w * s, (b - mean) * s + beta),
    s = gamma / sqrt(var + epsilon); likewise for ConvTranspose and Gemm (channel = output column)."""

    def __init__(self, linear: OpId):
        self.pattern = pat.BatchNormalization(_linear_pattern(linear, Var("x")), Const("gamma"), Const("beta"),
                                              Const("mean"), Const("var"))

    def check(self, m: Match) -> None:
        bn, node = m.root, m.nodes["linear"]
        check_inference_batch_norm(self, bn, _opset(m))
        check_sole_reader(self, node.output, bn)
        channels = FoldedLinear(self, node).layout.out_channels
        for name in ("gamma", "beta", "mean", "var"):
            data = float_constant(self, m[name], bn)
            if data.shape != (channels,):
                self.fail(f"{bn.describe()}: {name} '{m[name].name}' has shape {list(data.shape)}, "
                          f"expected [{channels}] (the channels of {node.describe()})", bn)
        var = float_constant(self, m["var"], bn)
        if np.any(var + bn.attr("epsilon", 1e-5) <= 0):
            self.fail(f"{bn.describe()}: var + epsilon is not positive everywhere", bn)

    def rewrite(self, m: Match, b: Builder) -> Value:
        bn = m.root
        lin = FoldedLinear(self, m.nodes["linear"])
        gamma, beta, mean, var = (float_constant(self, m[k], bn) for k in ("gamma", "beta", "mean", "var"))
        s = gamma / np.sqrt(var + bn.attr("epsilon", 1e-5))
        lin.scale_out(s)
        lin.shift_out(beta - mean * s)
        lin.write(b, _opset(m))
        return lin.node.output


class AffineIntoLinear(RewriteRule):
    """Add(Mul(Conv(x, w, b), s), t) -> Conv(x, w * s, b * s + t), s and t per channel or scalar;
    likewise for ConvTranspose and Gemm, either operand order of Mul and Add."""

    def __init__(self, linear: OpId, *, mul_const_first: bool = False, add_const_first: bool = False):
        self.mul_index = 0 if mul_const_first else 1
        self.add_index = 0 if add_const_first else 1
        mul = _binary(ops.Mul, _linear_pattern(linear, Var("x")), Const("s"), const_first=mul_const_first, bind="mul")
        self.pattern = _binary(ops.Add, mul, Const("t"), const_first=add_const_first)

    def _vectors(self, m: Match) -> tuple[FoldedLinear, np.ndarray, np.ndarray]:
        add, mul = m.root, m.nodes["mul"]
        lin = FoldedLinear(self, m.nodes["linear"])
        lay, opset = lin.layout, _opset(m)
        vec = {}
        for node, index, name in ((mul, self.mul_index, "s"), (add, self.add_index, "t")):
            data = broadcast_view(node, index, float_constant(self, m[name], node), lay.out_rank, opset)
            vec[name] = channel_vector(self, data, rank=lay.out_rank, rank_exact=True, axis=lay.out_axis,
                                       channels=lay.out_channels, node=node, what=f"constant '{m[name].name}'")
        return lin, vec["s"], vec["t"]

    def check(self, m: Match) -> None:
        check_sole_reader(self, m.nodes["linear"].output, m.nodes["mul"])
        check_sole_reader(self, m.nodes["mul"].output, m.root)
        self._vectors(m)

    def rewrite(self, m: Match, b: Builder) -> Value:
        lin, s, t = self._vectors(m)
        lin.scale_out(s)
        lin.shift_out(t)
        lin.write(b, _opset(m))
        return lin.node.output


class FuseConvBatchNorm(RewritePass):
    """Fold inference BatchNormalization, and per-channel Mul-then-Add pairs, into the Conv before it.

    before => after:
        c = Conv(x, w, b); y = BatchNormalization(c, gamma, beta, mean, var)
            =>  y = Conv(x, w * s, (b - mean) * s + beta),  s = gamma / sqrt(var + epsilon)
        c = Conv(x, w, b); m = Mul(c, s); y = Add(m, t)   =>  y = Conv(x, w * s, b * s + t)

    Also after ConvTranspose (weight [Cin, Cout/group, k...], grouped) and Gemm (the
    channel is the output column; B's columns scale, ``beta * C`` becomes the new C).
    A missing bias counts as zero.

    Preconditions / legality: the BatchNormalization runs in inference mode (opset < 7:
    ``is_test=1``; opset >= 14: ``training_mode=0``; no statistics outputs; no ``spatial=0``)
    and its four parameters are float constants of shape [C]. Mul / Add constants broadcast
    along the channel axis only ([C,1,1], [1,C,1,1], scalars; [C] or [1,C] after Gemm) and
    do not raise the output's rank. The intermediate values have one reader each and are
    not graph outputs; weight and bias are float constants. Fused weights are new
    initializers; the old ones are left for dead-code-elimination.
    """

    name = "fuse-conv-bn"
    rules = RuleSet(
        [BatchNormIntoLinear(op) for op in CHANNEL_OPS]
        + [AffineIntoLinear(op, mul_const_first=mf, add_const_first=af)
           for op in CHANNEL_OPS for mf in (False, True) for af in (False, True)])


class BatchNormToAffine(RewriteRule):
    """BatchNormalization(x, gamma, beta, mean, var) -> Add(Mul(x, s), t) per channel,
    s = gamma / sqrt(var + epsilon), t = beta - mean * s (no linear op to fold into)."""

    pattern = pat.BatchNormalization(Var("x"), Const("gamma"), Const("beta"), Const("mean"), Const("var"))

    def check(self, m: Match) -> None:
        bn = m.root
        check_inference_batch_norm(self, bn, _opset(m))
        shape = m["x"].shape
        if shape is None or len(shape) < 2:
            self.fail(f"{bn.describe()}: the rank of '{m['x'].name}' is unknown (run infer-shapes first)", bn)
        for name in ("gamma", "beta", "mean", "var"):
            data = float_constant(self, m[name], bn)
            if data.ndim != 1:
                self.fail(f"{bn.describe()}: {name} '{m[name].name}' is not 1-D", bn)
        if np.any(float_constant(self, m["var"], bn) + bn.attr("epsilon", 1e-5) <= 0):
            self.fail(f"{bn.describe()}: var + epsilon is not positive everywhere", bn)

    def rewrite(self, m: Match, b: Builder) -> Value:
        bn = m.root
        gamma, beta, mean, var = (float_constant(self, m[k], bn) for k in ("gamma", "beta", "mean", "var"))
        s = gamma / np.sqrt(var + bn.attr("epsilon", 1e-5))
        t = beta - mean * s
        channel_shape = (len(s),) + (1,) * (len(m["x"].shape) - 2)
        dtype = m["x"].dtype or DType.FLOAT
        np_dtype = to_numpy(dtype)
        base = bn.name or bn.output.name
        scale = b.constant(Tensor(s.reshape(channel_shape).astype(np_dtype), dtype), f"{base}_scale")
        shift = b.constant(Tensor(t.reshape(channel_shape).astype(np_dtype), dtype), f"{base}_shift")
        scaled = b.op(ops.Mul, [m["x"], scale], name=f"{base}_mul")
        scaled.type = m["x"].type
        out = b.op(ops.Add, [scaled, shift], name=f"{base}_add")
        out.type = bn.output.type
        return out


class LowerBatchNorm(RewritePass):
    """Lower an inference BatchNormalization no linear op precedes to a per-channel Mul and Add.

    before => after:
        y = BatchNormalization(x, gamma, beta, mean, var)   (x from a Concat, a pool, ...)
            =>  y = Add(Mul(x, s[C,1,1]), t[C,1,1]),  s = gamma / sqrt(var + epsilon), t = beta - mean * s

    Run after fuse-conv-bn (the ``fuse`` alias does): a BatchNormalization after a Conv /
    ConvTranspose / Gemm folds into it instead. The Mul / Add pair is what quantizers and
    integer backends know (ONNX Runtime's quantizer leaves BatchNormalization in float),
    and fuse-conv-bn folds the pair if a linear op appears before it later. Preconditions:
    inference mode, constant float parameters, the input's rank known.
    """

    name = "lower-batchnorm"
    rules = RuleSet([BatchNormToAffine()])


# -- fuse-bias --------------------------------------------------------------------------------------
class MatMulAddToGemm(RewriteRule):
    """Add(MatMul(a, w), c) -> Gemm(a, w, c), a and w 2-D, c broadcastable to the [M, N] output."""

    def __init__(self, *, const_first: bool = False):
        self.add_index = 0 if const_first else 1
        self.pattern = _binary(ops.Add, pat.MatMul(Var("a"), Const("w"), bind="matmul"), Const("c"),
                               const_first=const_first)

    def check(self, m: Match) -> None:
        add, mm = m.root, m.nodes["matmul"]
        a, w, c = m["a"], m["w"], m["c"]
        check_sole_reader(self, mm.output, add)
        w_data = float_constant(self, w, mm)
        c_data = broadcast_view(add, self.add_index, float_constant(self, c, add), 2, _opset(m))
        rank = value_rank(a)
        if rank is None:
            self.fail(f"{mm.describe()}: the rank of A '{a.name}' is unknown; Gemm takes only a 2-D A, "
                      "so the MatMul stays", mm)
        if rank != 2:
            self.fail(f"{mm.describe()}: A '{a.name}' has rank {rank}; Gemm takes only a 2-D A, "
                      "so the MatMul stays", mm)
        if w_data.ndim != 2:
            self.fail(f"{mm.describe()}: B '{w.name}' has rank {w_data.ndim}; Gemm takes only a 2-D B", mm)
        rows = a.shape[0] if a.shape is not None and _known(a.shape[0]) else None
        n = w_data.shape[1]
        bad = c_data.ndim > 2 or (c_data.ndim >= 1 and c_data.shape[-1] not in (1, n)) or (
            c_data.ndim == 2 and c_data.shape[0] != 1 and c_data.shape[0] != rows)
        if bad:
            self.fail(f"{add.describe()}: C '{c.name}' of shape {list(c_data.shape)} does not broadcast to the "
                      f"MatMul output [{rows if rows is not None else 'M'}, {n}] (Gemm's C must)", add)

    def rewrite(self, m: Match, b: Builder) -> Value:
        add, mm = m.root, m.nodes["matmul"]
        c = m["c"]
        opset = _opset(m)
        data = broadcast_view(add, self.add_index, np.asarray(constant_tensor(c).numpy()), 2, opset)
        if data.shape != constant_tensor(c).shape:  # a legacy axis-aligned constant
            c = b.constant(Tensor(data, constant_tensor(c).dtype), _fused_name(c.name))
        attrs = {"broadcast": 1} if opset is not None and opset < 7 else {}
        out = Value(b.graph.unique_name(add.output.name), add.output.type)
        b.graph.insert_before(add, Node(ops.Gemm, [m["a"], m["w"], c], [out], attrs, name=mm.name))
        return out


class BiasAddIntoLinear(RewriteRule):
    """Add(Conv(x, w, b), t) -> Conv(x, w, b + t), t per channel or scalar; likewise ConvTranspose, Gemm."""

    def __init__(self, linear: OpId, *, const_first: bool = False):
        self.add_index = 0 if const_first else 1
        self.pattern = _binary(ops.Add, _linear_pattern(linear, Var("x")), Const("t"), const_first=const_first)

    def _shift(self, m: Match) -> tuple[FoldedLinear, np.ndarray]:
        add = m.root
        lin = FoldedLinear(self, m.nodes["linear"])
        lay = lin.layout
        data = broadcast_view(add, self.add_index, float_constant(self, m["t"], add), lay.out_rank, _opset(m))
        return lin, channel_vector(self, data, rank=lay.out_rank, rank_exact=True, axis=lay.out_axis,
                                   channels=lay.out_channels, node=add, what=f"constant '{m['t'].name}'")

    def check(self, m: Match) -> None:
        check_sole_reader(self, m.nodes["linear"].output, m.root)
        self._shift(m)

    def rewrite(self, m: Match, b: Builder) -> Value:
        lin, t = self._shift(m)
        lin.shift_out(t)
        lin.write(b, _opset(m))
        return lin.node.output


class FuseBias(RewritePass):
    """Turn MatMul + constant Add into Gemm, and fold constant per-channel Adds into a bias.

    before => after:
        t = MatMul(a, w); y = Add(t, c)       =>  y = Gemm(a, w, c)
        t = Conv(x, w, b); y = Add(t, d)      =>  y = Conv(x, w, b + d)

    The Conv form also applies after ConvTranspose and Gemm (whose ``beta * C`` becomes the
    new C); a missing bias counts as zero. Either operand order of the Add.

    Preconditions / legality: the MatMul's A has rank 2 (known from its type, or a Flatten /
    Gemm / constant-shape Reshape producer; otherwise the MatMul stays, since Gemm takes
    only 2-D operands), B is a 2-D float constant and C broadcasts unidirectionally to the
    [M, N] output. The Conv-form constant broadcasts along the channel axis only
    ([1,C,1,1], [C,1,1], scalars; [C] or [1,C] after Gemm). The MatMul / Conv output has
    the Add as its only reader and is not a graph output.
    """

    name = "fuse-bias"
    rules = RuleSet([MatMulAddToGemm(const_first=cf) for cf in (False, True)]
                    + [BiasAddIntoLinear(op, const_first=cf) for op in CHANNEL_OPS for cf in (False, True)])


# -- fold-scale -------------------------------------------------------------------------------------
class ScaleAfterLinear(RewriteRule):
    """Mul(Conv(x, w, b), s) -> Conv(x, w * s, b * s) (Div: 1 / s), s per output channel or scalar;
    likewise for ConvTranspose, Gemm and MatMul (per output column)."""

    def __init__(self, linear: OpId, scale: OpId = ops.Mul, *, const_first: bool = False):
        self.scale_index = 0 if const_first else 1
        self.divide = scale is ops.Div
        self.pattern = _binary(scale, _linear_pattern(linear, Var("x")), Const("s"), const_first=const_first)

    def _scale(self, m: Match) -> tuple[FoldedLinear, np.ndarray]:
        op = m.root
        lin = FoldedLinear(self, m.nodes["linear"])
        lay = lin.layout
        data = float_constant(self, m["s"], op)
        if self.divide:
            if np.any(data == 0):
                self.fail(f"{op.describe()} divides by '{m['s'].name}', which has zeros", op)
            data = 1.0 / data
        data = broadcast_view(op, self.scale_index, data, lay.out_rank if lay.out_rank_exact else None, _opset(m))
        return lin, channel_vector(self, data, rank=lay.out_rank, rank_exact=lay.out_rank_exact, axis=lay.out_axis,
                                   channels=lay.out_channels, node=op, what=f"constant '{m['s'].name}'")

    def check(self, m: Match) -> None:
        check_sole_reader(self, m.nodes["linear"].output, m.root)
        self._scale(m)

    def rewrite(self, m: Match, b: Builder) -> Value:
        lin, s = self._scale(m)
        lin.scale_out(s)
        lin.write(b, _opset(m))
        return lin.node.output


class ScaleBeforeLinear(RewriteRule):
    """Conv(Mul(x, s), w, b) -> Conv(x, w * s[input channel], b) (Div: 1 / s), s per input channel
    or scalar (zero padding stays zero); likewise ConvTranspose, Gemm and MatMul (per K entry)."""

    def __init__(self, linear: OpId, scale: OpId = ops.Mul, *, const_first: bool = False):
        self.scale_index = 0 if const_first else 1
        self.divide = scale is ops.Div
        scaled = _binary(scale, Var("x"), Const("s"), const_first=const_first, bind="scale")
        self.pattern = _linear_pattern(linear, scaled, bias="any")

    def _scale(self, m: Match) -> tuple[FoldedLinear, np.ndarray]:
        op, x = m.nodes["scale"], m["x"]
        lin = FoldedLinear(self, m.root, with_bias=False)
        lay = lin.layout
        data = float_constant(self, m["s"], op)
        if self.divide:
            if np.any(data == 0):
                self.fail(f"{op.describe()} divides by '{m['s'].name}', which has zeros", op)
            data = 1.0 / data
        x_rank = value_rank(x)
        data = broadcast_view(op, self.scale_index, data, lay.in_rank, _opset(m))
        # Mul(x, s) must have x's shape: s may not raise x's rank, nor widen a size-1 channel axis of x.
        if data.ndim > 0 and (x_rank is None or x_rank < data.ndim) and not (
                lay.in_rank is not None and data.ndim < lay.in_rank):
            self.fail(f"{op.describe()}: the rank of '{x.name}' is {x_rank if x_rank is not None else 'unknown'}; "
                      f"the rank-{data.ndim} constant '{m['s'].name}' could be raising it", op)
        rank = data.ndim if x_rank is None else max(x_rank, data.ndim)
        vec = channel_vector(self, data, rank=rank, rank_exact=x_rank is not None, axis=lay.in_axis,
                             channels=lay.in_channels, node=op, what=f"constant '{m['s'].name}'")
        pos = data.ndim + lay.in_axis
        size = static_dim(x, lay.in_axis)
        if 0 <= pos and data.shape[pos] != 1 and size != lay.in_channels:
            known = "an unknown size" if size is None else f"size {size}"
            self.fail(f"{op.describe()}: '{x.name}' has {known} on the channel axis {lay.in_axis}, so the "
                      f"per-channel constant '{m['s'].name}' may be broadcasting it to {lay.in_channels}", op)
        return lin, vec

    def check(self, m: Match) -> None:
        check_sole_reader(self, m.nodes["scale"].output, m.root)
        self._scale(m)

    def rewrite(self, m: Match, b: Builder) -> Value:
        lin, s = self._scale(m)
        lin.scale_in(s)
        lin.node.replace_input(0, m["x"])
        lin.write(b, _opset(m))
        return lin.node.output


_SCALES = ((ops.Mul, False), (ops.Mul, True), (ops.Div, False))


class FoldScale(RewritePass):
    """Fold a multiplication or division by a constant into the weight of an adjacent Conv / Gemm / MatMul.

    before => after:
        c = Conv(x, w, b); y = Mul(c, s)   =>  y = Conv(x, w * s, b * s)        (s per output channel)
        m = Mul(x, s); y = Conv(m, w, b)   =>  y = Conv(x, w * s[in channel], b) (s per input channel)
        Div(., s) folds as Mul(., 1 / s).

    Also ConvTranspose (grouped weight layouts handled), Gemm (``transA`` / ``transB``
    respected; per output column after, per K entry before) and MatMul (per output column
    after, per K entry before). Scalars fold everywhere.

    Preconditions / legality: the scale is a float constant that broadcasts along the
    channel axis only and changes neither the rank nor a dimension of the tensor it scales
    (so before a node, the size of the scaled input's channel axis must be known); a
    divisor has no zeros; the intermediate value has one reader and is not a graph output;
    the weight (and, when scaling after, the bias) are float constants. Zero padding stays
    zero under scaling, so Conv padding is no obstacle.
    """

    name = "fold-scale"
    rules = RuleSet([ScaleAfterLinear(op, scale, const_first=cf) for op in LINEAR_OPS for scale, cf in _SCALES]
                    + [ScaleBeforeLinear(op, scale, const_first=cf) for op in LINEAR_OPS for scale, cf in _SCALES])


PASSES = (FuseConvBatchNorm, LowerBatchNorm, FuseBias, FoldScale)
