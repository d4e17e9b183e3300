"""Corrections to onnx's reference implementations, given to every evaluator qgraph builds.

``qgraph.onnx.evaluate.NodeEvaluator`` passes ``FIXES`` as ``ReferenceEvaluator(new_ops=...)``,
so constant folding (canonicalize, and TVM lowering's fold of constant nodes), lookup tables
and the reference interpreter's float ops all compute what the spec and ONNX Runtime
compute. Each class below replaces onnx 1.23's implementation of one op, for every opset
(the op's forms across opsets are handled here), and says what onnx gets wrong:

- ``LRN`` loops over the batch axis instead of the channels: for a batch of N it sums the
  window only for channels below N and leaves the rest 0;
- ``ConvTranspose`` with ``group`` > 1 reshapes the weights wrongly ("cannot reshape array");
- ``Pad`` hands negative pads (a crop, legal since opset 11) to ``np.pad``, which refuses them.

Tests: ``tests/test_reference.py`` checks each against ONNX Runtime.
"""

from __future__ import annotations

import math

import numpy as np
from onnx.reference.op_run import OpRun
from onnx.reference.ops.op_conv_transpose import ConvTranspose as _OnnxConvTranspose


class LRN(OpRun):
    """``Y = X / (bias + alpha / size * square_sum) ** beta`` across channels (axis 1),
    ``square_sum[c]`` the sum of ``X[c'] ** 2`` for ``c'`` in ``[c - floor((size - 1) / 2),
    c + ceil((size - 1) / 2)]`` clipped to the channels, added in channel order; float32
    throughout with ``alpha / size`` rounded to the input's type, as onnx's own does."""

    op_domain = ""

    def _run(self, x, alpha=None, beta=None, bias=None, size=None):
        if x.ndim < 3:
            raise ValueError(f"LRN needs an input of rank >= 3, got {list(x.shape)}")
        if size is None:
            raise ValueError("LRN: missing attribute 'size'")
        size = int(size)
        alpha = 1e-4 if alpha is None else float(alpha)
        beta = 0.75 if beta is None else float(beta)
        bias = 1.0 if bias is None else float(bias)
        before, after = (size - 1) // 2, math.ceil((size - 1) / 2)
        channels = x.shape[1]
        padded = np.zeros((x.shape[0], channels + before + after) + x.shape[2:], x.dtype)
        padded[:, before:before + channels] = x * x
        total = padded[:, 0:channels].copy()  # window terms in channel order; the zero padding adds exactly
        for k in range(1, size):
            total = total + padded[:, k:k + channels]
        dt = x.dtype.type
        return ((x / ((dt(bias) + dt(alpha / size) * total) ** dt(beta))).astype(x.dtype),)


class ConvTranspose(_OnnxConvTranspose):
    """onnx's ConvTranspose, one group at a time where ``group`` > 1."""

    op_domain = ""

    def _run(self, X, W, B=None, group=None, **attributes):
        group = 1 if group is None else int(group)
        if group == 1:
            return super()._run(X, W, B, group=1, **attributes)
        if X.shape[1] % group or W.shape[0] != X.shape[1]:
            raise ValueError(f"ConvTranspose: input channels {X.shape[1]} and weight {list(W.shape)} do not split "
                             f"into {group} groups")
        cin, cout = X.shape[1] // group, W.shape[1]
        parts = [super(ConvTranspose, self)._run(X[:, g * cin:(g + 1) * cin], W[g * cin:(g + 1) * cin],
                                                 None if B is None else B[g * cout:(g + 1) * cout],
                                                 group=1, **attributes)[0] for g in range(group)]
        return (np.concatenate(parts, axis=1).astype(X.dtype),)


class Pad(OpRun):
    """ONNX Pad at every opset: ``pads`` (and ``value``) as attributes before opset 11, as
    inputs (with ``constant_value`` and, from 18, ``axes``) since. Negative pads crop first;
    the positive ones pad as ``np.pad`` does, which is what onnx's own implementation does."""

    op_domain = ""

    def _run(self, data, pads=None, constant_value=None, axes=None, mode=None, value=None, paddings=None):
        pads = paddings if pads is None else pads  # opset 1 named the attribute paddings
        pads = [int(p) for p in np.asarray(pads).reshape(-1)] if pads is not None else []
        axes = list(range(data.ndim)) if axes is None else [int(a) + data.ndim if int(a) < 0 else int(a)
                                                            for a in np.asarray(axes).reshape(-1)]
        if len(pads) != 2 * len(axes):
            raise ValueError(f"Pad: {len(pads)} pads for {len(axes)} axes (need two per axis)")
        crop = [slice(None)] * data.ndim
        widths = [(0, 0)] * data.ndim
        for a, b, e in zip(axes, pads[:len(axes)], pads[len(axes):]):
            crop[a] = slice(max(-b, 0), data.shape[a] - max(-e, 0))
            widths[a] = (max(b, 0), max(e, 0))
        x = data[tuple(crop)]
        mode = "constant" if mode is None else mode.decode() if isinstance(mode, bytes) else mode
        if mode == "constant":
            fill = constant_value if constant_value is not None else value if value is not None else 0
            fill = np.asarray(fill).reshape(-1)[0] if np.size(fill) else 0
            return (np.pad(x, widths, mode="constant", constant_values=fill).astype(data.dtype),)
        if mode not in ("reflect", "edge", "wrap"):
            raise ValueError(f"Pad: unknown mode {mode!r}")
        return (np.pad(x, widths, mode=mode).astype(data.dtype),)


#: the replacements ``NodeEvaluator`` gives onnx's ReferenceEvaluator
FIXES = (LRN, ConvTranspose, Pad)
