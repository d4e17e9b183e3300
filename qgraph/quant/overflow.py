"""Overflow bounds: which integer kernel forms are provably exact for a weighted op.

This module is the numeric half: the kernel model below, the scheme, the facts of one node and
the integer bounds (``accumulator_bounds``, ``pair_sum_bounds``), on plain numpy arrays. The
graph half, which finds the weighted nodes, reads their weights and activation ranges and
reports per node (``analyze_node``, ``overflow_report``, ``OverflowAnalysis``), is
``qgraph.analysis.overflow``: the numerics import neither the IR nor the pass manager.

For every Conv / ConvTranspose / Gemm / MatMul whose weight is constant (float, or already
quantized behind a DequantizeLinear), the analysis quantizes the weights as the scheme says
(``choose_params``, ORT's conventions), maps the activation's interval to its integer range
``[q_lo, q_hi]`` and bounds, per output channel (a ConvTranspose: per output channel and
stride phase, the weights that reach one output position):

- the int32 accumulator ``sum_k (x_k - zp_x) * (w_k - zp_w) + bias`` (the exact integer
  result), and the zero-point-free sum ``sum_k x_k * w_k`` a u8 x s8 kernel accumulates
  before it subtracts ``zp_x * sum_k w_k``;
- the int16 pair sums of x86 AVX2 ``VPMADDUBSW``: it multiplies unsigned bytes (activations)
  by signed bytes (weights) and adds *adjacent* products into int16 with saturation,
  ``sat16(x[2j] * w[2j] + x[2j+1] * w[2j+1])``. Each pair's bound is exact:
  ``sum_i max(w_i * a, w_i * b)`` over ``x_i`` in ``[a, b]``, with ``x`` the raw uint8 value
  (not zero-point corrected).

All bounds are tight over the box ``x in [q_lo, q_hi]^K`` (every element may take any value
of the range), so a flagged pair is reachable by some input inside the range.

The kernel model (ONNX Runtime 1.32's MLAS on AVX2 without VNNI, confirmed by experiment in
``tests/test_overflow.py``):

- QDQ Conv, Gemm and MatMul with 8-bit activations and int8 weights run as
  ``VPMADDUBSW`` + ``VPMADDWD``: int16 pair sums, then exact int32 sums. int8 activations
  are shifted by +128 into uint8 first, so they saturate just like uint8 ones.
- Gemm / MatMul pair ``(k, k+1)`` for even ``k`` along the natural reduction axis.
- Conv runs channels-last: weights are reordered to ``[kernel position][input channel]``
  and the reduction index is ``k = (kh * KW + kw) * Cin_g + c`` (``k_order="mlas"``); pairs
  are ``(2j, 2j+1)`` of that flat index, so with an odd number of input channels per group a
  pair straddles two kernel positions. Groups are independent reductions.
- Depthwise Conv (one input and one output channel per group) uses a kernel that widens to
  int32 (``vpmovzxbd`` / ``vpmaddwd``): no pair sums, exact whenever int32 is.
- Padding reads the activation zero point, so a padded Conv's range includes it.
- ConvTranspose has no integer kernel: ORT's CPU EP runs ``DequantizeLinear -> float
  ConvTranspose -> QuantizeLinear`` (checked: its output equals the QDQ simulation), so its
  kernel is "float" and nothing saturates. Its accumulator bounds are those of qgraph's
  ``QConvTranspose``, always including the zero point (positions between inputs read it), and
  its pair sums those of the phase conv qgraph runs it as, in ``k_order``.

``k_order="cin-major"`` models the NCHW im2col order instead (``k = (c * KH + kh) * KW + kw``),
which a channels-first kernel (e.g. one qgraph lowers itself) would pack.

Not modelled: the uint8-weight kernels, asymmetric-weight row sums, and ORT's optional
enlargement of weight scales for large int32 biases.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from qgraph.quant.params import QuantParams, int_type

INT16_MIN, INT16_MAX = -(1 << 15), (1 << 15) - 1
K_ORDERS = ("mlas", "cin-major")


@dataclass(frozen=True)
class OverflowScheme:
    """How quantization will treat the weighted ops (default: ORT's QDQ default with per_channel=True).

    Attributes:
        activation: activation integer type ("uint8", "int8", ...), per tensor.
        activation_symmetric: symmetric activation ranges.
        weight: weight integer type.
        weight_symmetric: symmetric weights (ORT: always, per channel).
        per_channel: weights per output channel.
        reduce_range: ORT's 7-bit weights (int8 in [-64, 64]).
        k_order: the Conv reduction order the kernel packs: "mlas" (what ORT runs) or "cin-major".
    """

    activation: str = "uint8"
    activation_symmetric: bool = False
    weight: str = "int8"
    weight_symmetric: bool = True
    per_channel: bool = True
    reduce_range: bool = False
    k_order: str = "mlas"

    def __post_init__(self):
        int_type(self.activation), int_type(self.weight)
        if self.k_order not in K_ORDERS:
            raise ValueError(f"unknown k_order '{self.k_order}'; choose one of {', '.join(K_ORDERS)}")


@dataclass(frozen=True)
class NodeOverflow:
    """The overflow facts of one weighted node.

    ``status`` is "ok", or "unknown" (with ``reason``) when the activation range or the
    weights could not be read; the bounds are then None and nothing is proven.
    """

    node: str
    op_type: str
    status: str
    reason: str = ""
    activation: str = ""
    interval: tuple[float, float] | None = None
    activation_params: QuantParams | None = None
    q_range: tuple[int, int] | None = None  # the activation's integer range (own type)
    kernel_x_range: tuple[int, int] | None = None  # as the u8 x s8 kernel sees it (+128 for s8, padding)
    weight_params: QuantParams | None = None
    channels: int = 0
    reduction: int = 0
    accumulator: tuple[int, int] | None = None  # zero-point corrected, bias included
    raw_accumulator: tuple[int, int] | None = None  # sum x * w before zero-point correction
    int32_accumulator: bool = False
    pair_range: tuple[int, int] | None = None
    worst_pair_sum: int | None = None
    saturating_pairs: int = 0
    saturating_channels: tuple[int, ...] = ()
    avx2_u8s8_pairs: bool = False
    kernel: str = ""  # the form ORT's CPU EP runs here on AVX2: "u8s8-pairs", "depthwise-int32", "float", "n/a"
    ort_avx2_exact: bool = False

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able dict (quantization parameters as lists)."""
        out: dict[str, Any] = {}
        for k, v in self.__dict__.items():
            if isinstance(v, QuantParams):
                v = {"dtype": v.dtype.name, "axis": v.axis, "scale": v.scale.tolist(),
                     "zero_point": v.zero_point.tolist()}
            elif isinstance(v, tuple):
                v = list(v)
            out[k] = v
        return out


# -- the bounds, on integer arrays ----------------------------------------------------------------

def accumulator_bounds(w: np.ndarray, w_zp: np.ndarray, x_lo: int, x_hi: int, x_zp: int,
                       bias: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-row [lo, hi] of ``sum_k (x_k - x_zp) * (w[r, k] - w_zp[r]) + bias[r]`` over x in [x_lo, x_hi].

    ``w`` is [rows, K] integer; the bounds are exact (int64, or Python ints beyond).
    """
    wc = w.astype(np.int64) - np.asarray(w_zp, np.int64).reshape(-1, 1)
    a, b = x_lo - x_zp, x_hi - x_zp
    lo = np.minimum(wc * a, wc * b).sum(axis=1)
    hi = np.maximum(wc * a, wc * b).sum(axis=1)
    if bias is not None:
        lo, hi = lo + bias.astype(np.int64), hi + bias.astype(np.int64)
    return lo, hi


def pair_sum_bounds(w: np.ndarray, x_lo: int, x_hi: int) -> tuple[np.ndarray, np.ndarray]:
    """[lo, hi] of every adjacent-pair sum ``x[2j] * w[r, 2j] + x[2j+1] * w[r, 2j+1]``: [rows, ceil(K/2)] each.

    An odd K is padded with a zero weight, as the kernels pad.
    """
    w = w.astype(np.int64)
    if w.shape[1] % 2:
        w = np.concatenate([w, np.zeros((w.shape[0], 1), np.int64)], axis=1)
    lo = np.minimum(w * x_lo, w * x_hi)
    hi = np.maximum(w * x_lo, w * x_hi)
    return lo[:, 0::2] + lo[:, 1::2], hi[:, 0::2] + hi[:, 1::2]
