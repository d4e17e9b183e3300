"""What a target executes of quantization, as data: ``QuantRules``.

``insert-qdq`` reads the rules of the config's target (``QuantConfig.target``) and writes
only what the target runs; ``--precision auto`` offers only the formats whose types it
runs. A target without rules (``cpu``, ``aarch64``) runs every scheme qgraph writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping


@dataclass(frozen=True)
class QuantRules:
    """The quantization a target executes.

    Attributes:
        activation_dtypes / weight_dtypes: the integer types it runs (dtype names).
        symmetric_weights: weights must have zero point 0.
        per_channel_axes: op type -> the one weight axis per-channel scales may use; the
            weights of an op not listed are quantized per tensor.
        fixed_outputs: (op type, dtype name) -> (scale, zero point) its output must have.
        narrow_act_pairs: op type -> the widest activation type its inputs may have when two
            or more of them are activations (not constants).
        float_ops: op types it does not run quantized (left float).
        min_opset: the opset the QDQ model is written at, at least (e.g. 14: a fused
            hard-swish is the standard HardSwish, not ``x * HardSigmoid(x)``).
        same_act_types: an op's activation inputs must have its output's type (a mixed-precision
            boundary gets a conversion, ``DQ -> Q -> DQ``).
        split_groups: activation group forms (``qgraph.ir.fusion.GROUP_FORMS``) it cannot run
            as one quantized unit (float ops between DQ and Q): insert-qdq quantizes their ops
            one by one instead.
    """

    activation_dtypes: frozenset[str]
    weight_dtypes: frozenset[str]
    symmetric_weights: bool = False
    per_channel_axes: Mapping[str, int] = field(default_factory=dict)
    fixed_outputs: Mapping[tuple[str, str], tuple[float, int]] = field(default_factory=dict)
    narrow_act_pairs: Mapping[str, str] = field(default_factory=dict)
    float_ops: frozenset[str] = frozenset()
    min_opset: int = 0
    same_act_types: bool = False
    split_groups: frozenset[str] = frozenset()

    def runs(self, weight: str | None, activation: str | None) -> bool:
        """Whether a format of these weight / activation types (None: float) runs here."""
        return ((weight is None or weight in self.weight_dtypes)
                and (activation is None or activation in self.activation_dtypes))

    def weight_axis(self, op_type: str, axis: int | None) -> int | None:
        """The per-channel axis a weight of ``op_type`` may keep (None: per tensor)."""
        return axis if axis is not None and self.per_channel_axes.get(op_type) == axis else None
