"""Fake quantization in PyTorch whose forward is ``qgraph.quant``'s QuantizeLinear then
DequantizeLinear, bit for bit, and whose backward is LSQ's.

The forward follows ``qgraph.quant.params.quantize`` / ``dequantize`` step by step, in float32:
``x / scale`` (a true IEEE division: PyTorch's own ``fake_quantize_per_*`` multiplies by the
reciprocal, which differs at ties), ``torch.round`` (half to even, as ``np.rint``), ``+ zero_point``,
saturation to the type's full range ``[qmin, qmax]``, ``- zero_point``, ``* scale``. Every step
is a correctly rounded float32 operation on both sides, so the results are equal bits
(``tests/test_qat.py`` checks it over every integer type, per tensor and per channel on any
axis, symmetric and asymmetric, at ties and in saturation). The integer bounds, zero points
and scales come from ``qgraph.quant.QuantParams``: this module holds no rounding rule of its
own, it only restates the numpy one in torch ops.

Backward (Esser et al., "Learned Step Size Quantization", 2019):

- input: straight-through inside the range, 0 where the value saturated (clipped STE);
- scale: ``round(x/s) - x/s`` inside the range, ``qmin - zp`` / ``qmax - zp`` where it
  saturated, times LSQ's gradient scale ``1 / sqrt(n * (qmax - zp))`` (``n``: elements per scale);
- zero point (when learned): ``-s`` where the value saturated, 0 inside (LSQ+), same scale.

Biases (int32, scale ``act_scale * weight_scale``) follow ``qgraph.quant.quantize_bias``:
division in float64, half-to-even rounding, int32 saturation; straight-through to the bias.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from qgraph.quant.params import INT32, QuantParams


def broadcast_shape(ndim: int, axis: int | None, channels: int) -> list[int]:
    """The shape a per-channel parameter takes to broadcast along ``axis`` of a rank-``ndim`` tensor."""
    if axis is None:
        return []
    axis = axis + ndim if axis < 0 else axis
    if not 0 <= axis < ndim:
        raise ValueError(f"channel axis {axis} is out of range for a rank-{ndim} tensor")
    shape = [1] * ndim
    shape[axis] = channels
    return shape


class _FakeQuantize(torch.autograd.Function):
    """``(clamp(round(x / s) + zp, qmin, qmax) - zp) * s`` with LSQ's backward (module doc).

    Computed as ``clamp(round(x / s), qmin - zp, qmax - zp) * s``: the same bits, since every
    value involved is an integer below 2**24 (exact in float32) except where ``round(x / s)``
    is larger, and then both forms saturate; a rounded -0.0 is made +0.0, as ``q - zp`` is in
integers. One buffer, five passes, done in place: the
    activations of PP-OCRv4 rec make this the module's hottest loop.
    """

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin: int, qmax: int, grad_scale: float):
        lo, hi = qmin - zero_point, qmax - zero_point
        xs = x / scale
        y = torch.round(xs).add_(0.0)  # -0.0 -> +0.0: (q - zp) * s never makes a negative zero
        y = torch.clamp(y, lo, hi) if lo.dim() else y.clamp_(float(lo), float(hi))
        y.mul_(scale)
        ctx.save_for_backward(xs, lo, hi, scale)
        ctx.bounds = (grad_scale, scale.shape)
        return y

    @staticmethod
    def backward(ctx, gy):
        xs, lo, hi, scale = ctx.saved_tensors
        grad_scale, scale_shape = ctx.bounds
        r = torch.round(xs)
        below, above = r < lo, r > hi
        inside = ~(below | above)
        gx = gy * inside if ctx.needs_input_grad[0] else None
        gs = None
        if ctx.needs_input_grad[1]:
            ds = torch.where(inside, r - xs, torch.where(below, lo, hi))
            g = gy * ds * grad_scale
            gs = g.sum() if len(scale_shape) == 0 else _sum_to(g, scale_shape)
        gz = None
        if ctx.needs_input_grad[2]:  # y = (qmin - zp) * s where saturated, round(x/s) * s inside
            g = torch.where(inside, torch.zeros_like(gy), -gy * scale) * grad_scale
            gz = g.sum() if lo.dim() == 0 else _sum_to(g, lo.shape)
        return gx, gs, gz, None, None, None


def _sum_to(g: torch.Tensor, shape) -> torch.Tensor:
    dims = [i for i, (a, b) in enumerate(zip(g.shape, shape)) if b == 1 and a != 1]
    return g.sum(dim=dims, keepdim=True) if dims else g


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int,
                  axis: int | None = None, grad_scale: float | None = None) -> torch.Tensor:
    """QuantizeLinear then DequantizeLinear of ``x`` (float32), differentiable (module doc).

    Args:
        x: the float tensor.
        scale: float32, shape ``()`` or ``(C,)`` (per channel along ``axis``); every value > 0.
        zero_point: the zero points as float32 integers, the scale's shape.
        qmin, qmax: the integer type's full range (``QuantParams.dtype.qmin`` / ``qmax``).
        axis: the channel axis of ``x`` for a per-channel ``scale``.
        grad_scale: LSQ's gradient scale for ``scale`` (default ``1 / sqrt(n * (qmax - zp))``).
    """
    if axis is not None:
        shape = broadcast_shape(x.dim(), axis, scale.numel())
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    if grad_scale is None:
        n = max(1, x.numel() // max(1, scale.numel()))
        grad_scale = 1.0 / math.sqrt(n * max(1, qmax - int(zero_point.reshape(-1)[0].item())))
    return _FakeQuantize.apply(x, scale, zero_point, int(qmin), int(qmax), float(grad_scale))


def fake_quantize_params(x: torch.Tensor, params: QuantParams) -> torch.Tensor:
    """``fake_quantize`` with the scale, zero point, type and axis of a ``QuantParams``."""
    scale = torch.from_numpy(np.array(params.scale, np.float32))
    zp = torch.from_numpy(params.zero_point.astype(np.float32))
    return fake_quantize(x, scale, zp, params.dtype.qmin, params.dtype.qmax, params.axis)


class _BiasFakeQuantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, b, scale):
        q = torch.round(b.double() / scale.double()).clamp(INT32.qmin, INT32.qmax)
        return q.float() * scale

    @staticmethod
    def backward(ctx, gy):
        return gy, None


def fake_quantize_bias(b: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``dequantize(quantize_bias(b, ...))``: int32 with ``scale`` (float32, per tensor or per
    channel along axis 0), rounded in float64 as ``qgraph.quant.quantize_bias``; the gradient
    passes straight to ``b`` (the scale is the product of two learned scales, not learned itself)."""
    return _BiasFakeQuantize.apply(b, scale.detach())
