"""Window geometry of convolutions and pools: where each output position's window lies over
the (padded) input, from ONNX Conv / pool attributes.

Part of the L3 contract (``qgraph.ir.l3``): ``QConv`` and ``QAveragePool`` take ONNX Conv's /
AveragePool's window attributes, and ``MaxPool`` is an L3 op with its ONNX meaning, so the
reference interpreter and the TVM lowering read the geometry from here, one rule for both.
"""

from __future__ import annotations

import itertools
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
    strides = tuple(_ints(node, "strides", [1] * nd))
    dilations = tuple(_ints(node, "dilations", [1] * nd))
    pads = _ints(node, "pads", [0] * (2 * nd))
    if len(strides) != nd or len(dilations) != nd or len(pads) != 2 * nd or len(kernel) != nd:
        raise ContractError(f"{node.describe()}: strides / dilations / pads / kernel_shape do not match "
                            f"{nd} spatial dims")
    auto_pad = node.attr("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
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
