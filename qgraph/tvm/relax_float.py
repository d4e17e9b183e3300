"""Relax lowerings of the float fallback ops of L3 models (ONNX semantics).

These are the model's original float ops between ``Dequantize`` and ``Quantize``. Where the
ONNX reference computes with one IEEE operation per element (Add, Mul, Div, Sqrt, Clip,
HardSigmoid, HardSwish...) the lowering writes the same operations in the same order, so the
results are identical; sums (Conv, MatMul, ReduceMean, Softmax) and transcendental functions
(Exp, Sigmoid, Erf, Tanh) may differ from numpy in the last bits.
"""

from __future__ import annotations

import numpy as np

from qgraph.tvm.context import LowerContext


def _f32(ctx: LowerContext, value, like):
    return ctx.const(np.asarray(value, dtype=ctx.dtype(like)))


def _binary(name: str):
    def lower(ctx: LowerContext):
        from tvm import relax

        a, b = ctx.value(0), ctx.value(1)
        if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
            raise ctx.error("constant operands should have been folded")
        if ctx.dtype(a) != ctx.dtype(b):
            raise ctx.error(f"operands have different element types ({ctx.dtype(a)}, {ctx.dtype(b)})")
        a, b = ctx.expr(0), ctx.expr(1)
        if name == "divide" and not ctx.dtype(a).startswith("float"):
            raise ctx.error("integer Div is not supported outside constant shape arithmetic")
        return [ctx.emit(getattr(relax.op, name)(a, b))]

    lower.__doc__ = f"Elementwise ``{name}`` (broadcasting)."
    return lower


add, sub, mul, div = _binary("add"), _binary("subtract"), _binary("multiply"), _binary("divide")
equal, less, greater = _binary("equal"), _binary("less"), _binary("greater")


def _variadic(name: str):
    def lower(ctx: LowerContext):
        from tvm import relax

        exprs = [ctx.expr(i) for i in range(len(ctx.node.inputs)) if ctx.has_input(i)]
        out = exprs[0]
        for e in exprs[1:]:
            out = ctx.emit(getattr(relax.op, name)(out, e))
        return [out]

    lower.__doc__ = f"Variadic ``{name}``, folded left to right."
    return lower


sum_, max_, min_ = _variadic("add"), _variadic("maximum"), _variadic("minimum")


def _unary(name: str):
    def lower(ctx: LowerContext):
        from tvm import relax

        fn = relax.op
        for part in name.split("."):
            fn = getattr(fn, part)
        return [ctx.emit(fn(ctx.expr(0)))]

    lower.__doc__ = f"Elementwise ``{name}``."
    return lower


relu, tanh, exp, erf, sqrt, neg, abs_, log, floor, ceil = (
    _unary("nn.relu"), _unary("tanh"), _unary("exp"), _unary("erf"), _unary("sqrt"), _unary("negative"),
    _unary("abs"), _unary("log"), _unary("floor"), _unary("ceil"))


def sigmoid(ctx: LowerContext):
    """Sigmoid as ONNX's reference writes it: ``1 / (1 + exp(-x))`` for ``x > 0``, else
    ``exp(x) / (1 + exp(x))``."""
    return [ctx.emit(sigmoid_expr(ctx, ctx.expr(0)))]


def sigmoid_expr(ctx: LowerContext, x):
    """``sigmoid(x)`` in ONNX's split form (no overflow of ``exp`` on either side), unbound:
    ``1 / (1 + exp(-x))`` for ``x > 0``, else ``exp(x) / (1 + exp(x))``. Both sides take
    ``exp(-|x|)``, computed once: ``where`` evaluates both sides, and the second ``exp`` made a
    ``[2, 1, 2048]`` sigmoid 31 us instead of 21 (1 thread). The same bits on every input
    (a NaN stays a NaN)."""
    from tvm import relax

    one = _f32(ctx, 1.0, x)
    ex = relax.op.exp(relax.op.negative(relax.op.abs(x)))
    pos = relax.op.divide(one, relax.op.add(one, ex))
    neg = relax.op.divide(ex, relax.op.add(one, ex))
    return relax.op.where(relax.op.greater(x, _f32(ctx, 0.0, x)), pos, neg)


def reciprocal(ctx: LowerContext):
    """``1 / x``."""
    from tvm import relax

    x = ctx.expr(0)
    return [ctx.emit(relax.op.divide(_f32(ctx, 1.0, x), x))]


def _hard_sigmoid(ctx: LowerContext, x, alpha: float, beta: float):
    from tvm import relax

    y = relax.op.add(relax.op.multiply(x, _f32(ctx, alpha, x)), _f32(ctx, beta, x))
    return ctx.emit(relax.op.maximum(_f32(ctx, 0.0, x), relax.op.minimum(_f32(ctx, 1.0, x), y)))


def hard_sigmoid(ctx: LowerContext):
    """``max(0, min(1, alpha * x + beta))``."""
    return [_hard_sigmoid(ctx, ctx.expr(0), float(ctx.attr("alpha", 0.2)), float(ctx.attr("beta", 0.5)))]


def hard_swish(ctx: LowerContext):
    """``x * HardSigmoid(x, alpha=1/6, beta=0.5)`` (ONNX's function body)."""
    from tvm import relax

    x = ctx.expr(0)
    return [ctx.emit(relax.op.multiply(x, _hard_sigmoid(ctx, x, 1.0 / 6.0, 0.5)))]


def leaky_relu(ctx: LowerContext):
    """``x`` where ``x >= 0`` else ``alpha * x``."""
    from tvm import relax

    x = ctx.expr(0)
    alpha = _f32(ctx, float(ctx.attr("alpha", 0.01)), x)
    return [ctx.emit(relax.op.where(relax.op.less(x, _f32(ctx, 0.0, x)), relax.op.multiply(x, alpha), x))]


def clip(ctx: LowerContext):
    """``min(max(x, lo), hi)`` (bounds as inputs from opset 11, attributes before)."""
    from tvm import relax

    x = ctx.expr(0)
    if ctx.opset < 11:
        lo, hi = ctx.attr("min"), ctx.attr("max")
    else:
        lo = ctx.const_input(1, "min").reshape(()).item() if ctx.has_input(1) else None
        hi = ctx.const_input(2, "max").reshape(()).item() if ctx.has_input(2) else None
    if lo is not None:
        x = ctx.emit(relax.op.maximum(x, _f32(ctx, lo, x)))
    if hi is not None:
        x = ctx.emit(relax.op.minimum(x, _f32(ctx, hi, x)))
    return [x]


def cast(ctx: LowerContext):
    """ONNX Cast (numeric types; float to int truncates, as numpy)."""
    from qgraph.ir.dtypes import DType, to_numpy

    to = np.dtype(to_numpy(DType(int(ctx.attr("to")))))
    return [ctx.astype(ctx.value(0), to.name)]


def pow_(ctx: LowerContext):
    """``x ** y``; a constant exponent 2 is ``x * x`` (numpy's special case: exact)."""
    from tvm import relax

    x = ctx.expr(0)
    y = ctx.maybe_const(1)
    if y is not None and y.size == 1 and float(y.reshape(())) == 2.0:
        return [ctx.emit(relax.op.multiply(x, x))]
    return [ctx.emit(relax.op.power(x, ctx.astype(ctx.expr(1), ctx.dtype(x))))]


def where(ctx: LowerContext):
    """ONNX Where."""
    from tvm import relax

    return [ctx.emit(relax.op.where(ctx.expr(0), ctx.expr(1), ctx.expr(2)))]


def _softmax_like(fn_name: str):
    def lower(ctx: LowerContext):
        from tvm import relax

        x = ctx.expr(0)
        s = ctx.shape(x)
        default = -1 if ctx.opset >= 13 else 1
        axis = int(ctx.attr("axis", default))
        axis = axis + len(s) if axis < 0 else axis
        fn = getattr(relax.op.nn, fn_name)
        if ctx.opset >= 13 or axis == len(s) - 1:
            return [ctx.emit(fn(x, axis=axis))]
        # before opset 13: the input is coerced to 2-D at axis
        rows = int(np.prod(s[:axis]))
        flat = ctx.emit(relax.op.reshape(x, (rows, int(np.prod(s[axis:])))))
        return [ctx.emit(relax.op.reshape(ctx.emit(fn(flat, axis=1)), s))]

    lower.__doc__ = f"ONNX {fn_name} (the 2-D coercion of opsets before 13 included)."
    return lower


softmax, log_softmax = _softmax_like("softmax"), _softmax_like("log_softmax")


def _reduce(name: str):
    def lower(ctx: LowerContext):
        from tvm import relax

        x = ctx.expr(0)
        rank = len(ctx.shape(x))
        if ctx.has_input(1):
            axes = [int(a) for a in ctx.const_input(1, "axes").reshape(-1)]
        else:
            axes = ctx.attr("axes")
        keepdims = bool(ctx.attr("keepdims", 1))
        if not axes:
            if ctx.attr("noop_with_empty_axes", 0):
                return [x]
            axes = list(range(rank))
        axes = [a + rank if a < 0 else a for a in axes]
        return [ctx.emit(getattr(relax.op, name)(x, axis=axes, keepdims=keepdims))]

    lower.__doc__ = f"ONNX Reduce ({name}), axes as attribute or input."
    return lower


reduce_mean, reduce_sum, reduce_max, reduce_min = _reduce("mean"), _reduce("sum"), _reduce("max"), _reduce("min")


def global_average_pool(ctx: LowerContext):
    """Mean over the spatial dims, kept."""
    from tvm import relax

    x = ctx.expr(0)
    return [ctx.emit(relax.op.mean(x, axis=list(range(2, len(ctx.shape(x)))), keepdims=True))]


def average_pool(ctx: LowerContext):
    """ONNX AveragePool, 2-D, through Relax's pool (its divisor rule)."""
    from tvm import relax

    x = ctx.expr(0)
    xs = ctx.shape(x)
    kernel = [int(k) for k in ctx.attr("kernel_shape", [])]
    if len(xs) != 4 or len(kernel) != 2:
        raise ctx.error("float AveragePool is supported in 2-D only")
    win = ctx.windows(xs[2:], kernel, ceil_mode=bool(ctx.attr("ceil_mode", 0)))
    return [ctx.emit(relax.op.nn.avg_pool2d(
        x, pool_size=win.kernel, strides=win.strides, dilation=win.dilations,
        padding=list(win.pads_begin) + list(win.pads_end), ceil_mode=bool(ctx.attr("ceil_mode", 0)),
        count_include_pad=bool(ctx.attr("count_include_pad", 0))))]


def conv(ctx: LowerContext):
    """Float ONNX Conv (1-3 spatial dims, grouped), bias added after."""
    from tvm import relax

    from qgraph.tvm.relax_integer import pad_spatial

    x, w = ctx.expr(0), ctx.expr(1)
    xs, ws = ctx.shape(x), ctx.shape(w)
    nd = len(xs) - 2
    ops = {1: (relax.op.nn.conv1d, "NCW", "OIW"), 2: (relax.op.nn.conv2d, "NCHW", "OIHW"),
           3: (relax.op.nn.conv3d, "NCDHW", "OIDHW")}
    if nd not in ops:
        raise ctx.error(f"Conv input {list(xs)} must have 1 to 3 spatial dims")
    fn, dl, kl = ops[nd]
    win = ctx.windows(xs[2:], [int(k) for k in ctx.attr("kernel_shape", list(ws[2:]))])
    x = pad_spatial(ctx, x, win.pads_begin, win.pads_end)
    y = ctx.emit(fn(x, w, strides=win.strides, padding=0, dilation=win.dilations,
                    groups=int(ctx.attr("group", 1)), data_layout=dl, kernel_layout=kl))
    if ctx.has_input(2):
        b = ctx.expr(2)
        y = ctx.emit(relax.op.add(y, relax.op.reshape(b, (1, -1) + (1,) * nd)))
    return [y]


def conv_transpose(ctx: LowerContext):
    """Float ONNX ConvTranspose, 2-D, explicit pads."""
    from tvm import relax

    x, w = ctx.expr(0), ctx.expr(1)
    if len(ctx.shape(x)) != 4:
        raise ctx.error("ConvTranspose is supported in 2-D only")
    if ctx.attr("auto_pad", "NOTSET") not in ("NOTSET", "VALID") or ctx.attr("output_shape") is not None:
        raise ctx.error("ConvTranspose with auto_pad / output_shape is not supported")
    y = ctx.emit(relax.op.nn.conv2d_transpose(
        x, w, strides=list(ctx.attr("strides", [1, 1])), padding=list(ctx.attr("pads", [0, 0, 0, 0])),
        output_padding=list(ctx.attr("output_padding", [0, 0])), dilation=list(ctx.attr("dilations", [1, 1])),
        groups=int(ctx.attr("group", 1)), kernel_layout="IOHW"))
    if ctx.has_input(2):
        y = ctx.emit(relax.op.add(y, relax.op.reshape(ctx.expr(2), (1, -1, 1, 1))))
    return [y]


def matmul(ctx: LowerContext):
    """Float numpy-style MatMul."""
    from tvm import relax

    return [ctx.emit(relax.op.matmul(ctx.expr(0), ctx.expr(1)))]


def gemm(ctx: LowerContext):
    """``alpha * A' @ B' + beta * C``."""
    from tvm import relax

    a, b = ctx.expr(0), ctx.expr(1)
    if ctx.attr("transA", 0):
        a = ctx.emit(relax.op.permute_dims(a, [1, 0]))
    if ctx.attr("transB", 0):
        b = ctx.emit(relax.op.permute_dims(b, [1, 0]))
    y = ctx.emit(relax.op.matmul(a, b))
    alpha, beta = float(ctx.attr("alpha", 1.0)), float(ctx.attr("beta", 1.0))
    if alpha != 1.0:
        y = ctx.emit(relax.op.multiply(y, _f32(ctx, alpha, y)))
    if ctx.has_input(2) and beta != 0.0:
        c = ctx.expr(2)
        if beta != 1.0:
            c = relax.op.multiply(c, _f32(ctx, beta, y))
        y = ctx.emit(relax.op.add(y, c))
    return [y]


def batch_norm(ctx: LowerContext):
    """Inference BatchNormalization: ``scale * (x - mean) / sqrt(var + eps) + B``."""
    from tvm import relax

    x = ctx.expr(0)
    nd = len(ctx.shape(x))
    per = [relax.op.reshape(ctx.expr(i), (1, -1) + (1,) * (nd - 2)) for i in range(1, 5)]
    scale, bias, mean, var = per
    eps = _f32(ctx, float(ctx.attr("epsilon", 1e-5)), x)
    norm = relax.op.divide(relax.op.subtract(x, mean), relax.op.sqrt(relax.op.add(var, eps)))
    return [ctx.emit(relax.op.add(relax.op.multiply(scale, norm), bias))]


def layer_norm(ctx: LowerContext):
    """LayerNormalization (ONNX or qgraph domain) as qgraph's decomposition writes it:
    ReduceMean, Sub, Mul, ReduceMean, Add eps, Sqrt, Div, [Mul scale], [Add B]."""
    from tvm import relax

    if len(ctx.node.outputs) > 1 and any(o is not None for o in ctx.node.outputs[1:]):
        raise ctx.error("only the Y output of LayerNormalization is supported")
    x = ctx.expr(0)
    rank = len(ctx.shape(x))
    axis = int(ctx.attr("axis", -1))
    axis = axis + rank if axis < 0 else axis
    axes = list(range(axis, rank))
    d = ctx.emit(relax.op.subtract(x, relax.op.mean(x, axis=axes, keepdims=True)))
    var = ctx.emit(relax.op.mean(relax.op.multiply(d, d), axis=axes, keepdims=True))
    std = relax.op.sqrt(relax.op.add(var, _f32(ctx, float(ctx.attr("epsilon", 1e-5)), x)))
    y = ctx.emit(relax.op.divide(d, std))
    if ctx.has_input(1):
        y = ctx.emit(relax.op.multiply(y, ctx.expr(1)))
    if ctx.has_input(2):
        y = ctx.emit(relax.op.add(y, ctx.expr(2)))
    return [y]


def gelu(ctx: LowerContext):
    """Gelu (ONNX or qgraph domain): ``x * 0.5 * (1 + erf(x / sqrt(2)))`` or the tanh form."""
    from tvm import relax

    x = ctx.expr(0)
    c = lambda v: _f32(ctx, v, x)  # noqa: E731
    if ctx.attr("approximate", "none") == "tanh":
        cube = relax.op.multiply(relax.op.multiply(x, x), x)
        inner = relax.op.add(x, relax.op.multiply(cube, c(0.044715)))
        t = relax.op.tanh(relax.op.multiply(inner, c(float(np.sqrt(2.0 / np.pi)))))
    else:
        t = relax.op.erf(relax.op.divide(x, c(float(np.sqrt(2.0)))))
    return [ctx.emit(relax.op.multiply(relax.op.multiply(x, c(0.5)), relax.op.add(t, c(1.0))))]


def resize(ctx: LowerContext):
    """ONNX Resize, nearest mode, 4-D NCHW, scaling H and W only."""
    from tvm import relax

    x = ctx.expr(0)
    xs = ctx.shape(x)
    mode = ctx.attr("mode", "nearest")
    if mode != "nearest" or len(xs) != 4:
        raise ctx.error(f"Resize mode '{mode}' on rank {len(xs)} is not supported (nearest, 4-D only)")
    sizes = ctx.maybe_const(3)
    scales = ctx.maybe_const(2)
    if sizes is not None and sizes.size:
        out = [int(v) for v in sizes.reshape(-1)]
    elif scales is not None and scales.size:
        out = [int(np.floor(d * float(s))) for d, s in zip(xs, scales.reshape(-1))]
    else:
        raise ctx.error("Resize needs constant scales or sizes")
    if out[:2] != list(xs[:2]):
        raise ctx.error("Resize may scale H and W only")
    coord = ctx.attr("coordinate_transformation_mode", "half_pixel")
    nearest = {"round_prefer_floor": "round_prefer_floor", "round_prefer_ceil": "round_prefer_ceil",
               "floor": "floor", "ceil": "ceil"}[ctx.attr("nearest_mode", "round_prefer_floor")]
    return [ctx.emit(relax.op.image.resize2d(x, out[2:], method="nearest_neighbor",
                                             coordinate_transformation_mode=coord, rounding_method=nearest))]


def lrn(ctx: LowerContext):
    """ONNX LRN across channels, as the reference interpreter computes it
    (``qgraph.reference.onnx_ops.lrn``): squares, the channel window summed in channel order
    from a zero-padded copy (zeros add exactly), then ``x / (bias + alpha / size * sum) ** beta``
    in float32. Only ``pow`` may differ from numpy in the last bits."""
    from tvm import relax

    x = ctx.expr(0)
    xs = ctx.shape(x)
    if len(xs) < 3:
        raise ctx.error(f"LRN needs an input of rank >= 3, got {list(xs)}")
    size = ctx.attr("size")
    if size is None:
        raise ctx.error("missing attribute 'size'")
    size = int(size)
    alpha, beta, bias = float(ctx.attr("alpha", 1e-4)), float(ctx.attr("beta", 0.75)), float(ctx.attr("bias", 1.0))
    before, after = (size - 1) // 2, -(-(size - 1) // 2)
    channels = xs[1]
    sq = ctx.emit(relax.op.multiply(x, x))
    parts = []
    if before:
        parts.append(ctx.const(np.zeros((xs[0], before) + tuple(xs[2:]), ctx.dtype(x))))
    parts.append(sq)
    if after:
        parts.append(ctx.const(np.zeros((xs[0], after) + tuple(xs[2:]), ctx.dtype(x))))
    padded = ctx.emit(relax.op.concat(parts, axis=1)) if len(parts) > 1 else sq
    total = ctx.emit(relax.op.strided_slice(padded, axes=[1], begin=[0], end=[channels]))
    for k in range(1, size):
        total = ctx.emit(relax.op.add(total, relax.op.strided_slice(padded, axes=[1], begin=[k], end=[k + channels])))
    scale = relax.op.add(_f32(ctx, bias, x), relax.op.multiply(_f32(ctx, alpha / size, x), total))
    return [ctx.emit(relax.op.divide(x, relax.op.power(scale, _f32(ctx, beta, x))))]
