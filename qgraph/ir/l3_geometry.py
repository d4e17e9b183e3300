"""Window geometry of convolutions and pools: where each output position's window lies over
the (padded) input, from ONNX Conv / pool attributes.

Part of the L3 contract (``qgraph.ir.l3``): ``QConv`` and ``QAveragePool`` take ONNX Conv's /
AveragePool's window attributes, and ``MaxPool`` is an L3 op with its ONNX meaning, so the
reference interpreter and the TVM lowering read the geometry from here, one rule for both.
``QConvTranspose``'s output size is ``transposed``; which of its taps reach which output
positions (its stride phases) is ``Phases`` / ``phase_weights``, read by the TVM lowering
(which runs it as one conv over the phases) and by the int32 bounds of ``lower-qdq`` and the
overflow analysis (the reference scatters tap by tap instead, so it checks the phases).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from qgraph.ir.l3 import ContractError


@dataclass(frozen=True)
class Windows:
    """Where the sliding windows of a conv / pool lie over the spatial dims.

    ``pads_begin`` / ``pads_end`` are the declared pads; ``extra_end`` the additional
    positions past the end pad that ``ceil_mode`` windows reach (no data, no pad).
    """

    out: tuple[int, ...]
    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads_begin: tuple[int, ...]
    pads_end: tuple[int, ...]
    extra_end: tuple[int, ...]

    def pad_width(self, lead: int) -> list[tuple[int, int]]:
        """``np.pad`` widths for a tensor with ``lead`` non-spatial leading dims."""
        return [(0, 0)] * lead + [(b, e + x) for b, e, x in zip(self.pads_begin, self.pads_end, self.extra_end)]

    def taps(self) -> Iterator[tuple[slice, ...]]:
        """For each kernel tap (row-major over ``kernel``), the spatial slices of the padded
        input it reads at every output position."""
        for offs in itertools.product(*(range(k) for k in self.kernel)):
            yield tuple(slice(o * d, o * d + s * (n - 1) + 1, s)
                        for o, d, s, n in zip(offs, self.dilations, self.strides, self.out))


def _ints(node, name: str, default: Sequence[int]) -> list[int]:
    """INT / INTS attribute ``name`` of ``node`` (``default`` when absent) as a list of ints."""
    value = node.attr(name, default)
    return [int(v) for v in np.atleast_1d(np.asarray(value, dtype=np.int64)).reshape(-1)]


def _spatial_attrs(node, nd: int) -> tuple[tuple[int, ...], tuple[int, ...], list[int], str]:
    """``strides``, ``dilations`` (default 1 per spatial dim), ``pads`` (default 0) and
    ``auto_pad`` (decoded) of a conv-like ``node`` over ``nd`` spatial dims, unchecked."""
    strides = tuple(_ints(node, "strides", [1] * nd))
    dilations = tuple(_ints(node, "dilations", [1] * nd))
    pads = _ints(node, "pads", [0] * (2 * nd))
    auto_pad = node.attr("auto_pad", "NOTSET")
    return strides, dilations, pads, auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad


def windows(node, spatial: Sequence[int], kernel: Sequence[int], *, ceil_mode: bool = False) -> Windows:
    """Window geometry from ONNX Conv / pool attributes (``strides``, ``pads``, ``dilations``,
    ``auto_pad``) of ``node`` over the ``spatial`` input dims.

    ``ceil_mode`` keeps a last partial window only if it starts inside the input or the
    begin pad (the ONNX / ONNX Runtime / PyTorch rule).

    Raises:
        ContractError: the attributes do not match the spatial rank, ``auto_pad`` is unknown,
            or a window is larger than the padded input (the message names the node).
    """
    nd = len(spatial)
    strides, dilations, pads, auto_pad = _spatial_attrs(node, nd)
    if len(strides) != nd or len(dilations) != nd or len(pads) != 2 * nd or len(kernel) != nd:
        raise ContractError(f"{node.describe()}: strides / dilations / pads / kernel_shape do not match "
                            f"{nd} spatial dims")
    eff = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        for i in range(nd):
            out = -(-spatial[i] // strides[i])
            total = max(0, (out - 1) * strides[i] + eff[i] - spatial[i])
            small, big = total // 2, total - total // 2
            pads[i], pads[i + nd] = (small, big) if auto_pad == "SAME_UPPER" else (big, small)
    elif auto_pad == "VALID":
        pads = [0] * (2 * nd)
    elif auto_pad != "NOTSET":
        raise ContractError(f"{node.describe()}: unknown auto_pad '{auto_pad}'")
    begin, end = tuple(pads[:nd]), tuple(pads[nd:])
    out, extra = [], []
    for i in range(nd):
        span = spatial[i] + begin[i] + end[i] - eff[i]
        if span < 0:
            raise ContractError(f"{node.describe()}: the window ({eff[i]}) is larger than the padded input "
                                f"({spatial[i] + begin[i] + end[i]}) along spatial dim {i}")
        n = (-(-span // strides[i]) if ceil_mode else span // strides[i]) + 1
        if ceil_mode and (n - 1) * strides[i] >= spatial[i] + begin[i]:
            n -= 1
        out.append(n)
        extra.append(max(0, (n - 1) * strides[i] + eff[i] - (spatial[i] + begin[i] + end[i])))
    return Windows(tuple(out), tuple(int(k) for k in kernel), strides, dilations, begin, end, tuple(extra))


# -- transposed convolution (QConvTranspose) ------------------------------------------------------
@dataclass(frozen=True)
class Transposed:
    """Where a transposed convolution's taps land over the spatial dims.

    Input position ``i`` and tap ``t`` write output position ``i * s + t * d - pads_begin``;
    ``full`` is the length they span before the pads crop it (``(i - 1) * s + (k - 1) * d + 1``),
    ``out`` the output length (``full + output_padding - pads_begin - pads_end``).
    """

    inp: tuple[int, ...]
    out: tuple[int, ...]
    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads_begin: tuple[int, ...]
    pads_end: tuple[int, ...]
    output_padding: tuple[int, ...]

    @property
    def full(self) -> tuple[int, ...]:
        return tuple((i - 1) * s + (k - 1) * d + 1
                     for i, s, k, d in zip(self.inp, self.strides, self.kernel, self.dilations))

    def phases(self) -> list["Phases"]:
        """The stride phases of each spatial dim (``transposed_phases``)."""
        return [transposed_phases(k, s, d) for k, s, d in zip(self.kernel, self.strides, self.dilations)]


@dataclass(frozen=True)
class Phases:
    """The taps of one spatial dim of a transposed convolution, by the output positions they reach.

    Tap ``t`` adds input ``i`` to uncropped output ``u = i * s + t * d``: writing
    ``u = q * s + r``, tap ``t`` reaches only the phase ``r = phase[t] = (t * d) % s``, and there
    reads input ``q - offset[t]`` (``offset[t] = (t * d) // s``). So each phase is an ordinary
    stride-1 correlation of the input, and all phases together one conv with ``s`` times the
    output channels: kernel length ``span``, dilation ``dilation`` (the gcd of the offsets),
    input padded by ``reach = max(offset)`` at the start, tap ``t`` at kernel position
    ``(reach - offset[t]) // dilation``.
    """

    stride: int
    phase: tuple[int, ...]
    offset: tuple[int, ...]

    @property
    def reach(self) -> int:
        return max(self.offset, default=0)

    @property
    def dilation(self) -> int:
        return math.gcd(*self.offset) or 1

    @property
    def span(self) -> int:
        return self.reach // self.dilation + 1

    def position(self, t: int) -> int:
        """Tap ``t``'s kernel position in the phase conv."""
        return (self.reach - self.offset[t]) // self.dilation


def transposed_phases(kernel: int, stride: int, dilation: int) -> Phases:
    """``Phases`` of one spatial dim: the phase and input offset of each of ``kernel`` taps."""
    return Phases(int(stride), tuple((t * dilation) % stride for t in range(kernel)),
                  tuple((t * dilation) // stride for t in range(kernel)))


def transposed(node, spatial: Sequence[int], kernel: Sequence[int]) -> Transposed:
    """Geometry of a ``QConvTranspose`` from its explicit ``strides``, ``pads``, ``dilations``,
    ``output_padding`` over the ``spatial`` input dims.

    Raises:
        ContractError: an attribute does not match the spatial rank or is negative (strides
            and dilations must be >= 1), ``auto_pad`` / ``output_shape`` is set (L3 takes the
            pads they resolve to), or the output would be empty (the message names the node).
    """
    nd = len(spatial)
    strides, dilations, pads, auto_pad = _spatial_attrs(node, nd)
    extra = tuple(_ints(node, "output_padding", [0] * nd))
    if len(strides) != nd or len(dilations) != nd or len(pads) != 2 * nd or len(extra) != nd or len(kernel) != nd:
        raise ContractError(f"{node.describe()}: strides / dilations / pads / output_padding / kernel_shape do not "
                            f"match {nd} spatial dims")
    if auto_pad not in ("NOTSET", "") or node.attr("output_shape") is not None:
        raise ContractError(f"{node.describe()}: auto_pad / output_shape are not L3 attributes; give the pads "
                            "they resolve to")
    if min(strides + dilations, default=1) < 1 or min(pads + list(extra) + list(kernel), default=0) < 0:
        raise ContractError(f"{node.describe()}: strides / dilations must be >= 1 and pads / output_padding / "
                            "kernel_shape >= 0")
    begin, end = tuple(pads[:nd]), tuple(pads[nd:])
    out = tuple((i - 1) * s + x + (k - 1) * d + 1 - b - e
                for i, s, x, k, d, b, e in zip(spatial, strides, extra, kernel, dilations, begin, end))
    if any(o < 1 for o in out) or any(i < 1 or k < 1 for i, k in zip(spatial, kernel)):
        raise ContractError(f"{node.describe()}: the output {list(out)} of input {list(spatial)} and kernel "
                            f"{list(kernel)} is empty")
    return Transposed(tuple(int(i) for i in spatial), out, tuple(int(k) for k in kernel), strides, dilations, begin,
                      end, extra)


def phase_weights(w: np.ndarray, group: int, phases: Sequence[Phases]) -> np.ndarray:
    """A ``[C, M/group, k...]`` transposed-conv weight (zero-point-shifted) as the weight of the
    equivalent conv (``Phases``): ``[group * P * M/group, C/group, span...]``, ``P`` the product
    of the strides, output channel ``(g * P + p) * M/group + m`` for group ``g``, phase ``p``
    (row-major over the spatial dims) and channel ``m``; positions no tap reaches hold 0.

    The row of one output channel and phase holds the weights that can reach an output position
    of that phase (one at the border reads fewer: the zero point for the rest), so
    ``accumulator_bounds`` over these rows bounds the int32 accumulator."""
    c, mg = w.shape[:2]
    cg = c // group
    strides = [ph.stride for ph in phases]
    p_count = math.prod(strides)
    out = np.zeros((group, p_count, mg, cg) + tuple(ph.span for ph in phases), w.dtype)
    src = w.reshape((group, cg, mg) + w.shape[2:])
    for taps in itertools.product(*(range(k) for k in w.shape[2:])):
        p = int(np.ravel_multi_index([ph.phase[t] for ph, t in zip(phases, taps)], strides)) if strides else 0
        pos = tuple(ph.position(t) for ph, t in zip(phases, taps))
        out[(slice(None), p, slice(None), slice(None)) + pos] = src[(slice(None), slice(None), slice(None)) + taps] \
            .transpose(0, 2, 1)
    return out.reshape((group * p_count * mg, cg) + out.shape[4:])
