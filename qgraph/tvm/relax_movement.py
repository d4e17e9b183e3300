"""Relax lowerings of standard ONNX data-movement and shape ops (integer or float tensors).

Shapes are static: every shape, axis, start and split is resolved here in numpy (from
constants and the inputs' static shapes), so the Relax program only moves data.
"""

from __future__ import annotations

import math

import numpy as np

from qgraph.tvm.context import LowerContext
from qgraph.tvm.relax_integer import pad_spatial


def _axis(ctx: LowerContext, axis: int, rank: int) -> int:
    a = axis + rank if axis < 0 else axis
    if not 0 <= a < rank:
        raise ctx.error(f"axis {axis} is out of range for rank {rank}")
    return a


def _axes_arg(ctx: LowerContext, index: int, attr: str = "axes") -> list[int] | None:
    """An axes list given as input ``index`` (newer opsets) or attribute ``attr`` (older)."""
    if ctx.has_input(index):
        return [int(a) for a in ctx.const_input(index, attr).reshape(-1)]
    value = ctx.attr(attr)
    return None if value is None else [int(a) for a in value]


def _reshape(ctx: LowerContext, x, shape):
    from tvm import relax

    shape = tuple(int(d) for d in shape)
    if isinstance(x, np.ndarray):
        return x.reshape(shape)
    if ctx.shape(x) == shape:
        return x
    return ctx.emit(relax.op.reshape(x, shape))


def identity(ctx: LowerContext):
    """Identity / Dropout (inference): the input."""
    outs = [ctx.value(0)]
    if len(ctx.node.outputs) > 1 and ctx.node.outputs[1] is not None:  # Dropout's mask
        outs.append(np.ones(ctx.shape(outs[0]), np.bool_))
    return outs


def reshape(ctx: LowerContext):
    """ONNX Reshape: 0 copies the input dim (unless ``allowzero``), -1 is inferred."""
    x = ctx.value(0)
    ins = ctx.shape(x)
    shape = [int(d) for d in ctx.const_input(1, "shape").reshape(-1)]
    if not ctx.attr("allowzero", 0):
        shape = [ins[i] if d == 0 else d for i, d in enumerate(shape)]
    if shape.count(-1) == 1:
        known = math.prod(d for d in shape if d != -1)
        shape[shape.index(-1)] = math.prod(ins) // known if known else 0
    if math.prod(shape) != math.prod(ins) or any(d < 0 for d in shape):
        raise ctx.error(f"cannot reshape {list(ins)} to {shape}")
    return [_reshape(ctx, x, shape)]


def flatten(ctx: LowerContext):
    """ONNX Flatten: ``[prod(shape[:axis]), prod(shape[axis:])]``."""
    x = ctx.value(0)
    s = ctx.shape(x)
    axis = int(ctx.attr("axis", 1))
    axis = axis + len(s) if axis < 0 else axis
    return [_reshape(ctx, x, (math.prod(s[:axis]), math.prod(s[axis:])))]


def squeeze(ctx: LowerContext):
    """ONNX Squeeze (axes as attribute or input; none: every dim of size 1)."""
    x = ctx.value(0)
    s = ctx.shape(x)
    axes = _axes_arg(ctx, 1)
    drop = {i for i, d in enumerate(s) if d == 1} if axes is None else {_axis(ctx, a, len(s)) for a in axes}
    if any(s[a] != 1 for a in drop):
        raise ctx.error(f"cannot squeeze axes {sorted(drop)} of shape {list(s)}")
    return [_reshape(ctx, x, [d for i, d in enumerate(s) if i not in drop])]


def unsqueeze(ctx: LowerContext):
    """ONNX Unsqueeze (axes as attribute or input)."""
    x = ctx.value(0)
    s = list(ctx.shape(x))
    axes = _axes_arg(ctx, 1)
    if axes is None:
        raise ctx.error("Unsqueeze needs axes")
    rank = len(s) + len(axes)
    for a in sorted(_axis(ctx, a, rank) for a in axes):
        s.insert(a, 1)
    return [_reshape(ctx, x, s)]


def transpose(ctx: LowerContext):
    """ONNX Transpose (``perm`` defaults to reversing the axes)."""
    from tvm import relax

    x = ctx.value(0)
    perm = ctx.attr("perm")
    perm = list(range(len(ctx.shape(x))))[::-1] if perm is None else [int(p) for p in perm]
    if isinstance(x, np.ndarray):
        return [np.transpose(x, perm)]
    return [ctx.emit(relax.op.permute_dims(x, perm))]


def concat(ctx: LowerContext):
    """ONNX Concat along ``axis`` (inputs share the element type)."""
    from tvm import relax

    axis = ctx.attr("axis")
    if axis is None:
        raise ctx.error("missing attribute 'axis'")
    parts = [ctx.value(i) for i in range(len(ctx.node.inputs)) if ctx.has_input(i)]
    dtypes = {ctx.dtype(p) for p in parts}
    if len(dtypes) > 1:
        raise ctx.error(f"inputs have different element types ({', '.join(sorted(dtypes))})")
    rank = len(ctx.shape(parts[0]))
    parts = [p for p in parts if not (isinstance(p, np.ndarray) and p.size == 0 and p.ndim != rank)]
    if all(isinstance(p, np.ndarray) for p in parts):
        return [np.concatenate(parts, axis=int(axis))]
    exprs = [ctx.const(p) if isinstance(p, np.ndarray) else p for p in parts]
    return [ctx.emit(relax.op.concat(exprs, axis=_axis(ctx, int(axis), rank)))]


def slice_(ctx: LowerContext):
    """ONNX Slice (starts / ends / axes / steps as inputs, or attributes before opset 10)."""
    from tvm import relax

    x = ctx.value(0)
    s = ctx.shape(x)
    if ctx.opset < 10:
        starts, ends = list(ctx.attr("starts")), list(ctx.attr("ends"))
        axes = ctx.attr("axes")
        steps = [1] * len(starts)
    else:
        starts = [int(v) for v in ctx.const_input(1, "starts").reshape(-1)]
        ends = [int(v) for v in ctx.const_input(2, "ends").reshape(-1)]
        axes = _axes_arg(ctx, 3) if ctx.has_input(3) else None
        steps = [int(v) for v in ctx.const_input(4, "steps").reshape(-1)] if ctx.has_input(4) else [1] * len(starts)
    axes = list(range(len(starts))) if axes is None else [_axis(ctx, int(a), len(s)) for a in axes]
    picks: dict[int, range] = {}
    for a, b, e, st in zip(axes, starts, ends, steps):
        if st == 0:
            raise ctx.error("Slice steps must not be 0")
        picks[a] = range(*slice(b, e, st).indices(s[a]))  # ONNX's clamping is Python's
    if isinstance(x, np.ndarray):
        for a, r in picks.items():
            x = np.take(x, np.array(r, np.int64), axis=a)
        return [x]
    out = x
    forward = [(a, r) for a, r in sorted(picks.items()) if r.step > 0 and r != range(s[a])]
    if forward:
        out = ctx.emit(relax.op.strided_slice(out, [a for a, _ in forward], [r.start for _, r in forward],
                                              [max(r.stop, r.start) for _, r in forward],
                                              [r.step for _, r in forward], assume_inbound=True))
    for a, r in sorted(picks.items()):  # negative steps: gather the indices
        if r.step < 0:
            out = ctx.emit(relax.op.take(out, ctx.const(np.array(r, np.int64), "int64"), axis=a))
    return [out]


def split(ctx: LowerContext):
    """ONNX Split (sizes as input, attribute, ``num_outputs`` or equal parts)."""
    from tvm import relax

    x = ctx.value(0)
    s = ctx.shape(x)
    axis = _axis(ctx, int(ctx.attr("axis", 0)), len(s))
    n_out = len(ctx.node.outputs)
    if ctx.has_input(1):
        sizes = [int(v) for v in ctx.const_input(1, "split").reshape(-1)]
    elif ctx.attr("split") is not None:
        sizes = [int(v) for v in ctx.attr("split")]
    else:
        parts = int(ctx.attr("num_outputs", n_out))
        chunk = -(-s[axis] // parts)
        sizes = [min(chunk, s[axis] - i * chunk) for i in range(parts)]
    if sum(sizes) != s[axis] or len(sizes) != n_out:
        raise ctx.error(f"split sizes {sizes} do not cover dim {s[axis]} in {n_out} outputs")
    bounds = np.cumsum([0] + sizes)
    if isinstance(x, np.ndarray):
        return [np.take(x, np.arange(b, e), axis=axis) for b, e in zip(bounds[:-1], bounds[1:])]
    outs = []
    for b, e in zip(bounds[:-1], bounds[1:]):
        outs.append(ctx.emit(relax.op.strided_slice(x, [axis], [int(b)], [int(e)], assume_inbound=True)))
    return outs


def gather(ctx: LowerContext):
    """ONNX Gather: ``take`` along ``axis`` (negative indices wrap)."""
    from tvm import relax

    x = ctx.value(0)
    s = ctx.shape(x)
    axis = _axis(ctx, int(ctx.attr("axis", 0)), len(s))
    idx = ctx.value(1)
    if isinstance(idx, np.ndarray):
        idx = np.where(idx < 0, idx + s[axis], idx).astype(np.int64)
        if isinstance(x, np.ndarray):
            return [np.take(x, idx, axis=axis)]
        scalar = idx.ndim == 0
        out = ctx.emit(relax.op.take(ctx.expr(0), ctx.const(idx.reshape(-1) if scalar else idx, "int64"),
                                     axis=axis))
        if scalar:
            out = _reshape(ctx, out, s[:axis] + s[axis + 1:])
        return [out]
    it = ctx.dtype(idx)
    wrapped = ctx.emit(relax.op.where(relax.op.less(idx, ctx.const(0, it)),
                                      relax.op.add(idx, ctx.const(s[axis], it)), idx))
    return [ctx.emit(relax.op.take(ctx.expr(0), wrapped, axis=axis))]


def shape(ctx: LowerContext):
    """ONNX Shape: the static shape (``start`` / ``end`` from opset 15)."""
    s = np.array(ctx.shape(ctx.value(0)), np.int64)
    start, end = int(ctx.attr("start", 0)), ctx.attr("end")
    return [s[start:None if end is None else int(end)]]


def size(ctx: LowerContext):
    """ONNX Size: the static element count."""
    return [np.array(math.prod(ctx.shape(ctx.value(0))), np.int64)]


def expand(ctx: LowerContext):
    """ONNX Expand: broadcast to ``broadcast(shape(x), shape)``."""
    from tvm import relax

    x = ctx.value(0)
    target = tuple(int(d) for d in ctx.const_input(1, "shape").reshape(-1))
    out = np.broadcast_shapes(ctx.shape(x), target)
    if isinstance(x, np.ndarray):
        return [np.broadcast_to(x, out).copy()]
    return [ctx.emit(relax.op.broadcast_to(x, out))]


def tile(ctx: LowerContext):
    """ONNX Tile with constant repeats."""
    from tvm import relax

    reps = [int(r) for r in ctx.const_input(1, "repeats").reshape(-1)]
    return [ctx.emit(relax.op.tile(ctx.expr(0), reps))]


def pad(ctx: LowerContext):
    """ONNX Pad, constant mode, constant pads (inputs from opset 11, attributes before)."""
    from tvm import relax

    x = ctx.expr(0)
    rank = len(ctx.shape(x))
    mode = ctx.attr("mode", "constant")
    if mode != "constant":
        raise ctx.error(f"Pad mode '{mode}' is not supported (only 'constant')")
    if ctx.opset < 11:
        pads, value = [int(p) for p in ctx.attr("pads")], float(ctx.attr("value", 0.0))
    else:
        pads = [int(p) for p in ctx.const_input(1, "pads").reshape(-1)]
        value = float(ctx.const_input(2, "constant_value").reshape(-1)[0]) if ctx.has_input(2) else 0.0
    axes = _axes_arg(ctx, 3) if ctx.has_input(3) else list(range(rank))
    widths = [0] * (2 * rank)
    for k, a in enumerate(axes):
        a = _axis(ctx, a, rank)
        widths[2 * a], widths[2 * a + 1] = pads[k], pads[k + len(axes)]
    if any(w < 0 for w in widths):
        raise ctx.error("negative pads are not supported")
    return [ctx.emit(relax.op.nn.pad(x, widths, pad_value=value))]


def max_pool(ctx: LowerContext):
    """ONNX MaxPool (``Y`` only): explicit padding with the lowest value, then an unpadded pool."""
    from tvm import relax

    if len(ctx.node.outputs) > 1 and ctx.node.outputs[1] is not None:
        raise ctx.error("MaxPool's Indices output is not supported")
    if int(ctx.attr("storage_order", 0)):
        raise ctx.error("MaxPool storage_order=1 is not supported")
    x = ctx.expr(0)
    xs = ctx.shape(x)
    nd = len(xs) - 2
    kernel = [int(k) for k in ctx.attr("kernel_shape", [])]
    pools = {1: relax.op.nn.max_pool1d, 2: relax.op.nn.max_pool2d, 3: relax.op.nn.max_pool3d}
    if nd not in pools or len(kernel) != nd:
        raise ctx.error(f"kernel_shape {kernel} does not fit input {list(xs)} (1 to 3 spatial dims)")
    win = ctx.windows(xs[2:], kernel, ceil_mode=bool(ctx.attr("ceil_mode", 0)))
    dt = np.dtype(ctx.dtype(x))
    end = [e + extra for e, extra in zip(win.pads_end, win.extra_end)]
    padding = [0] * (2 * nd)
    if dt.kind in "iu":
        # the pool pads with the dtype's lowest value itself: no separate pad kernel (on
        # light_resnet50 that pad of the 112x112 stem output took 0.69 ms, the pool 0.18 ms)
        padding = list(win.pads_begin) + end
    else:  # float: ONNX pads with -inf, which a window entirely in the pads would return
        x = pad_spatial(ctx, x, win.pads_begin, end, float("-inf"))
    layout = {1: "NCW", 2: "NCHW", 3: "NCDHW"}[nd]
    kh, kw = (list(win.kernel) + [1, 1])[:2]
    if nd == 2 and dt.kind in "iu" and kh > 1 and kw > 1 and kh * kw >= SEPARABLE_POOL_MIN:
        # max is separable: the max over rows of each row's max (pads at the lowest value in
        # both passes, as in one), kh + kw comparisons per output instead of kh x kw
        rows = ctx.emit(relax.op.nn.max_pool2d(x, pool_size=[1, kw], strides=[1, win.strides[1]],
                                               padding=[0, padding[1], 0, padding[3]],
                                               dilation=[1, win.dilations[1]], layout=layout))
        return [ctx.emit(relax.op.nn.max_pool2d(rows, pool_size=[kh, 1], strides=[win.strides[0], 1],
                                                padding=[padding[0], 0, padding[2], 0],
                                                dilation=[win.dilations[0], 1], layout=layout))]
    return [ctx.emit(pools[nd](x, pool_size=win.kernel, strides=win.strides, padding=padding,
                               dilation=win.dilations, layout=layout))]


#: Integer 2-D max pools of at least this many window positions run as a row pool then a
#: column pool (``max_pool``): YOLOX's SPP 13x13 pool on [1, 192, 13, 13] took 765 us in
#: TVM's one-pass lowering, 1 thread.
SEPARABLE_POOL_MIN = 16
