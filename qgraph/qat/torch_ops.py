"""ONNX op semantics in PyTorch, one entry per op identity of ``qgraph.ir.ops``.

``TORCH_OPS[op](node, inputs) -> outputs``: ``node`` is the qgraph ``Node`` (its attributes),
``inputs`` its input tensors (None for an absent optional input), the result a list of output
tensors. The table covers the float ops of the golden models, the onnx wheel's light models
and PP-OCRv4 det / rec / cls after qgraph's ``canonicalize,fuse`` (BatchNormalization is folded
there; the inference form stays here for models that keep one). Shape arithmetic (Shape,
Slice, Reshape of computed shapes) runs on int64 tensors, as ONNX's does. An op missing here
is a ``QATError`` naming the node: add it to this table.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from qgraph.ir import ops

OpFn = Callable[..., list]


def _pads(node, nd: int) -> tuple[list[int], list[int]]:
    pads = list(node.attr("pads", [0] * (2 * nd)) or [0] * (2 * nd))
    auto = node.attr("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto not in ("NOTSET", "VALID", ""):
        raise NotImplementedError(f"auto_pad={auto}")
    return pads[:nd], pads[nd:]


def _pad_input(x, begin, end, value=0.0):
    """F.pad takes the last dim first."""
    spec = []
    for b, e in zip(reversed(begin), reversed(end)):
        spec += [b, e]
    return F.pad(x, spec, value=value)


def _conv(node, xs):
    x, w = xs[0], xs[1]
    b = xs[2] if len(xs) > 2 else None
    nd = w.dim() - 2
    begin, end = _pads(node, nd)
    strides = list(node.attr("strides", [1] * nd) or [1] * nd)
    dil = list(node.attr("dilations", [1] * nd) or [1] * nd)
    group = int(node.attr("group", 1))
    if begin != end:
        x, padding = _pad_input(x, begin, end), 0
    else:
        padding = begin
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
    return [fn(x, w, b, strides, padding, dil, group)]


def _conv_transpose(node, xs):
    x, w = xs[0], xs[1]
    b = xs[2] if len(xs) > 2 else None
    nd = w.dim() - 2
    begin, end = _pads(node, nd)
    if begin != end or node.attr("output_shape") is not None:
        raise NotImplementedError("asymmetric pads / output_shape")
    strides = list(node.attr("strides", [1] * nd) or [1] * nd)
    dil = list(node.attr("dilations", [1] * nd) or [1] * nd)
    outpad = list(node.attr("output_padding", [0] * nd) or [0] * nd)
    fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[nd]
    return [fn(x, w, b, strides, begin, outpad, int(node.attr("group", 1)), dil)]


def _gemm(node, xs):
    a, b = xs[0], xs[1]
    c = xs[2] if len(xs) > 2 else None
    if node.attr("transA", 0):
        a = a.t()
    if node.attr("transB", 0):
        b = b.t()
    alpha, beta = float(node.attr("alpha", 1.0)), float(node.attr("beta", 1.0))
    y = a @ b
    if alpha != 1.0:
        y = y * alpha
    if c is not None:
        y = y + (c if beta == 1.0 else c * beta)
    return [y]


def _pool(kind):
    def fn(node, xs):
        x = xs[0]
        k = list(node.attr("kernel_shape"))
        nd = len(k)
        begin, end = _pads(node, nd)
        strides = list(node.attr("strides", [1] * nd) or [1] * nd)
        ceil = bool(node.attr("ceil_mode", 0))
        if kind == "max":
            if list(node.attr("dilations", [1] * nd) or [1] * nd) != [1] * nd:
                raise NotImplementedError("dilated MaxPool")
            if begin != end:
                x, begin = _pad_input(x, begin, end, float("-inf")), [0] * nd
            f = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[nd]
            return [f(x, k, strides, begin, ceil_mode=ceil)]
        include = bool(node.attr("count_include_pad", 0))
        f = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[nd]
        if begin != end:
            if ceil:
                raise NotImplementedError("asymmetric AveragePool pads with ceil_mode")
            padded = _pad_input(x, begin, end)
            total = f(padded, k, strides, 0, count_include_pad=True)
            if include:
                return [total]
            # the mean over the window's real (unpadded) elements: divide by their share
            ones = _pad_input(torch.ones_like(x[:1, :1]), begin, end)
            return [total / f(ones, k, strides, 0, count_include_pad=True)]
        return [f(x, k, strides, begin, ceil_mode=ceil, count_include_pad=include)]
    return fn


def _global_avg(node, xs):
    x = xs[0]
    return [x.mean(dim=tuple(range(2, x.dim())), keepdim=True)]


def _axes(node, xs, i=1):
    if len(xs) > i and xs[i] is not None:
        return [int(a) for a in xs[i].reshape(-1).tolist()]
    a = node.attr("axes")
    return None if a is None else [int(v) for v in a]


def _reduce_mean(node, xs):
    axes = _axes(node, xs)
    keep = bool(node.attr("keepdims", 1))
    if axes is None or not axes:
        if node.attr("noop_with_empty_axes", 0):
            return [xs[0]]
        axes = list(range(xs[0].dim()))
    return [xs[0].mean(dim=axes, keepdim=keep)]


def _clip(node, xs):
    lo = xs[1] if len(xs) > 1 and xs[1] is not None else node.attr("min")
    hi = xs[2] if len(xs) > 2 and xs[2] is not None else node.attr("max")
    lo = float(lo) if lo is not None else None
    hi = float(hi) if hi is not None else None
    return [torch.clamp(xs[0], lo, hi)]


def _hard_sigmoid(node, xs):
    a, b = float(node.attr("alpha", 0.2)), float(node.attr("beta", 0.5))
    return [torch.clamp(xs[0] * a + b, 0.0, 1.0)]


def _hard_swish(node, xs):
    x = xs[0]
    return [x * torch.clamp(x * (1.0 / 6.0) + 0.5, 0.0, 1.0)]


def _softmax(node, xs, opset: int | None = None):
    """Softmax-13 on ``axis`` (default -1); before opset 13, the input is coerced to 2-D at
    ``axis`` (default 1) and the softmax runs over everything from there on."""
    x = xs[0]
    if opset is not None and opset < 13:
        axis = int(node.attr("axis", 1))
        axis = axis + x.dim() if axis < 0 else axis
        return [torch.softmax(x.reshape(*x.shape[:axis], -1), dim=-1).reshape(x.shape)]
    return [torch.softmax(x, dim=int(node.attr("axis", -1)))]


def _constant_of_shape(node, xs):
    value = node.attr("value")
    fill = value.numpy().reshape(-1)[0].item() if value is not None else 0.0
    dtype = _TORCH_DTYPES.get(int(value.dtype), torch.float32) if value is not None else torch.float32
    return [torch.full([int(d) for d in xs[0].reshape(-1).tolist()], fill, dtype=dtype)]


def _flatten(node, xs):
    x = xs[0]
    axis = int(node.attr("axis", 1))
    axis = axis + x.dim() if axis < 0 else axis
    lead = 1
    for d in x.shape[:axis]:
        lead *= d
    return [x.reshape(lead, -1)]


def _reshape(node, xs):
    x, shape = xs[0], [int(v) for v in xs[1].reshape(-1).tolist()]
    if not node.attr("allowzero", 0):
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return [x.reshape(shape)]


def _transpose(node, xs):
    perm = node.attr("perm")
    perm = list(perm) if perm is not None else list(reversed(range(xs[0].dim())))
    return [xs[0].permute(perm)]


def _concat(node, xs):
    return [torch.cat([x for x in xs if x is not None], dim=int(node.attr("axis")))]


def _squeeze(node, xs):
    axes = _axes(node, xs)
    x = xs[0]
    if axes is None:
        return [x.squeeze()]
    for a in sorted((a + x.dim() if a < 0 else a for a in axes), reverse=True):
        x = x.squeeze(a)
    return [x]


def _unsqueeze(node, xs):
    axes = _axes(node, xs)
    x = xs[0]
    rank = x.dim() + len(axes)
    for a in sorted(a + rank if a < 0 else a for a in axes):
        x = x.unsqueeze(a)
    return [x]


def _slice(node, xs):
    x = xs[0]
    starts = xs[1].reshape(-1).tolist()
    ends = xs[2].reshape(-1).tolist()
    axes = xs[3].reshape(-1).tolist() if len(xs) > 3 and xs[3] is not None else list(range(len(starts)))
    steps = xs[4].reshape(-1).tolist() if len(xs) > 4 and xs[4] is not None else [1] * len(starts)
    index = [slice(None)] * x.dim()
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = a + x.dim() if a < 0 else a
        n = x.shape[a]
        if st < 0:
            raise NotImplementedError("negative Slice steps")
        s = max(0, min(n, s + n if s < 0 else s))
        e = max(0, min(n, e + n if e < 0 else e))
        index[a] = slice(s, e, st)
    return [x[tuple(index)]]


def _shape(node, xs):
    shape = list(xs[0].shape)
    start, end = int(node.attr("start", 0)), node.attr("end")
    shape = shape[start:] if end is None else shape[start:int(end)]
    return [torch.tensor(shape, dtype=torch.int64)]


_TORCH_DTYPES = {1: torch.float32, 6: torch.int32, 7: torch.int64, 9: torch.bool, 11: torch.float64,
                 10: torch.float16, 2: torch.uint8, 3: torch.int8}


def _cast(node, xs):
    return [xs[0].to(_TORCH_DTYPES[int(node.attr("to"))])]


def _batch_norm(node, xs):
    x, scale, bias, mean, var = xs[:5]
    return [F.batch_norm(x, mean, var, scale, bias, False, 0.0, float(node.attr("epsilon", 1e-5)))]


def _gather(node, xs):
    axis = int(node.attr("axis", 0))
    x, idx = xs[0], xs[1].long()
    axis = axis + x.dim() if axis < 0 else axis
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    out = torch.index_select(x, axis, idx.reshape(-1))
    return [out.reshape(list(x.shape[:axis]) + list(idx.shape) + list(x.shape[axis + 1:]))]


def _resize(node, xs):
    mode = node.attr("mode", "nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    sizes = xs[3] if len(xs) > 3 and xs[3] is not None and xs[3].numel() else None
    scales = xs[2] if len(xs) > 2 and xs[2] is not None and xs[2].numel() else None
    x = xs[0]
    if mode != "nearest":
        raise NotImplementedError(f"Resize mode {mode}")
    if sizes is not None:
        size = [int(v) for v in sizes.tolist()[2:]]
        return [F.interpolate(x, size=size, mode="nearest")]
    sf = [float(v) for v in scales.tolist()[2:]]
    return [F.interpolate(x, scale_factor=sf, mode="nearest")]


def _unary(fn) -> OpFn:
    return lambda node, xs: [fn(xs[0])]


def _binary(fn) -> OpFn:
    return lambda node, xs: [fn(xs[0], xs[1])]


def _matmul(a, b):
    return torch.matmul(a, b)


def _gelu(node, xs):
    approx = node.attr("approximate", "none")
    approx = approx.decode() if isinstance(approx, bytes) else approx
    return [F.gelu(xs[0], approximate=approx)]


def _layer_norm(node, xs):
    x = xs[0]
    axis = int(node.attr("axis", -1))
    axis = axis + x.dim() if axis < 0 else axis
    dims = tuple(range(axis, x.dim()))
    mean = x.mean(dim=dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
    y = (x - mean) / torch.sqrt(var + float(node.attr("epsilon", 1e-5)))
    if len(xs) > 1 and xs[1] is not None:
        y = y * xs[1]
    if len(xs) > 2 and xs[2] is not None:
        y = y + xs[2]
    return [y]


#: op identity -> PyTorch function (the module doc)
TORCH_OPS: dict = {
    ops.op("Conv"): _conv,
    ops.op("ConvTranspose"): _conv_transpose,
    ops.op("Gemm"): _gemm,
    ops.op("MatMul"): _binary(_matmul),
    ops.op("Add"): _binary(torch.add),
    ops.op("Sub"): _binary(torch.sub),
    ops.op("Mul"): _binary(torch.mul),
    ops.op("Div"): _binary(lambda a, b: a / b if a.is_floating_point() else torch.div(a, b, rounding_mode="trunc")),
    ops.op("Pow"): _binary(torch.pow),
    ops.op("Sqrt"): _unary(torch.sqrt),
    ops.op("Exp"): _unary(torch.exp),
    ops.op("Erf"): _unary(torch.erf),
    ops.op("Tanh"): _unary(torch.tanh),
    ops.op("Abs"): _unary(torch.abs),
    ops.op("Neg"): _unary(torch.neg),
    ops.op("Relu"): _unary(torch.relu),
    ops.op("Sigmoid"): _unary(torch.sigmoid),
    ops.op("LeakyRelu"): lambda node, xs: [F.leaky_relu(xs[0], float(node.attr("alpha", 0.01)))],
    ops.op("Gelu"): _gelu,
    ops.op("Clip"): _clip,
    ops.op("HardSigmoid"): _hard_sigmoid,
    ops.op("HardSwish"): _hard_swish,
    ops.QGraphHardSwish: _hard_swish,
    ops.QGraphGelu: _gelu,
    ops.op("LayerNormalization"): _layer_norm,
    ops.QGraphLayerNormalization: _layer_norm,
    ops.op("Softmax"): _softmax,
    ops.op("ConstantOfShape"): _constant_of_shape,
    ops.op("Identity"): _unary(lambda x: x),
    ops.op("Dropout"): lambda node, xs: [xs[0]],
    ops.op("Flatten"): _flatten,
    ops.op("Reshape"): _reshape,
    ops.op("Transpose"): _transpose,
    ops.op("Concat"): _concat,
    ops.op("Squeeze"): _squeeze,
    ops.op("Unsqueeze"): _unsqueeze,
    ops.op("Slice"): _slice,
    ops.op("Shape"): _shape,
    ops.op("Cast"): _cast,
    ops.op("Gather"): _gather,
    ops.op("MaxPool"): _pool("max"),
    ops.op("AveragePool"): _pool("avg"),
    ops.op("GlobalAveragePool"): _global_avg,
    ops.op("ReduceMean"): _reduce_mean,
    ops.op("BatchNormalization"): _batch_norm,
    ops.op("Resize"): _resize,
    ops.op("LRN"): lambda node, xs: [F.local_response_norm(xs[0], int(node.attr("size")), float(node.attr("alpha", 1e-4)),
                                                            float(node.attr("beta", 0.75)), float(node.attr("bias", 1.0)))],
}


#: ops whose semantics changed with the opset: called with the model's default-domain opset
OPSET_AWARE = frozenset({ops.op("Softmax")})

