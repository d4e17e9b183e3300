"""The precisions a layer can be given, and what each costs.

A *format* names a weight type and an activation type (``W8A8``: int8 weights, uint8
activations), or ``float`` (the layer is left in float). A layer's format sets the types of
its weights and of its output tensors, as a node override of the quantization config does
(``qgraph.quant.config``: a node override sets the types of the node's outputs).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable

from qgraph.errors import QGraphError
from qgraph.quant.config import Override, QuantConfig
from qgraph.quant.params import int_type


@dataclass(frozen=True)
class Format:
    """``weight`` / ``activation``: a ``qgraph.quant.config`` dtype name, or None for float."""

    name: str
    weight: str | None
    activation: str | None

    @property
    def is_float(self) -> bool:
        return self.activation is None

    @property
    def weight_bits(self) -> int:
        return 32 if self.weight is None else int_type(self.weight).bits

    @property
    def activation_bits(self) -> int:
        return 32 if self.activation is None else int_type(self.activation).bits

    def config(self, base: QuantConfig) -> QuantConfig:
        """``base`` with every layer in this format (its global weight / activation types)."""
        if self.is_float:
            raise ValueError("the float format is not a global config")
        return replace(base, weight=replace(base.weight, dtype=int_type(self.weight)),
                       activation=replace(base.activation, dtype=int_type(self.activation)))

    def override(self) -> Override:
        """This format as a node override (not for float: that is an ``exclude``)."""
        return Override(activation={"dtype": int_type(self.activation)}, weight={"dtype": int_type(self.weight)})


W8A8 = Format("W8A8", "int8", "uint8")
W8A16 = Format("W8A16", "int8", "uint16")
W4A8 = Format("W4A8", "int4", "uint8")
FLOAT = Format("float", None, None)

#: The formats ``--precision auto`` chooses from by default, cheapest-to-run integer form first.
FORMATS = {f.name: f for f in (W8A8, W8A16, W4A8, FLOAT)}


def parse_formats(names: Iterable[str] | str) -> tuple[Format, ...]:
    """Formats by name (``"W8A8,W4A8,float"``); W8A8 and float are always included."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    out = []
    for n in names:
        key = next((k for k in FORMATS if k.lower() == n.lower()), None)
        if key is None:
            raise QGraphError(f"unknown precision format '{n}'; choose from {', '.join(FORMATS)}")
        out.append(FORMATS[key])
    for must in (W8A8, FLOAT):
        if must not in out:
            out.append(must)
    return tuple(dict.fromkeys(out))
