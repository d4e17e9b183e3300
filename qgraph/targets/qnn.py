"""The Qualcomm HTP (``--target qnn``): what ONNX Runtime's QNN execution provider runs on the
Hexagon Tensor Processor, as data that ``insert-qdq`` and ``--precision auto`` honour.

The rules were measured on the HTP emulator (``onnxruntime-qnn`` 2.7.0, ``htp_arch`` 73,
x86-compiled HTP ops) against qgraph's numpy integer reference:

- ``htp_arch`` must be given, >= 73: the EP's default (v68) is off by up to 23 LSB on 16-bit
  activations.
- Conv weights per channel only on axis 0 and with zero point 0 (symmetric): any other
  per-channel weight makes the session fail.
- 16-bit Sigmoid / Tanh outputs take the HTP's fixed parameters, (1/65536, 0) and
  (1/32768, 32768) for uint16: calibrated ones came out 22-1179 LSB off.
- A MatMul of two activations is computed in 8 bits inside the EP when both are uint16
  (256 LSB off): its activation inputs are kept 8-bit.
- A QDQ Erf splits the graph (it runs on the CPU): Erf stays float.

``QuantRules`` is the form every target's rules take (``Target.quant``); a target without
rules (``cpu``) accepts every scheme qgraph writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

#: The HTP version the ``qnn`` target compiles for (the QNN EP option ``htp_arch``).
HTP_ARCH = 73


@dataclass(frozen=True)
class QuantRules:
    """The quantization a target executes, as data (read by ``insert-qdq``).

    Attributes:
        activation_dtypes / weight_dtypes: the integer types it runs (dtype names).
        symmetric_weights: weights must have zero point 0.
        per_channel_axes: op type -> the one weight axis per-channel scales may use; a weight
            of an op not listed is quantized per tensor.
        fixed_outputs: (op type, dtype) -> (scale, zero point) its output must have.
        narrow_act_pairs: op type -> the widest activation type when two activations meet
            in it (a MatMul of two activations).
        float_ops: op types it does not run quantized (kept float).
    """

    activation_dtypes: frozenset[str]
    weight_dtypes: frozenset[str]
    symmetric_weights: bool = False
    per_channel_axes: Mapping[str, int] = field(default_factory=dict)
    fixed_outputs: Mapping[tuple[str, str], tuple[float, int]] = field(default_factory=dict)
    narrow_act_pairs: Mapping[str, str] = field(default_factory=dict)
    float_ops: frozenset[str] = frozenset()


#: The HTP rules (the module doc says where each comes from).
HTP_RULES = QuantRules(
    activation_dtypes=frozenset({"uint8", "uint16", "int8", "int16"}),
    weight_dtypes=frozenset({"int8", "uint8", "int16"}),
    symmetric_weights=True,
    per_channel_axes={"Conv": 0},
    fixed_outputs={("Sigmoid", "uint16"): (1.0 / 65536, 0), ("Tanh", "uint16"): (1.0 / 32768, 32768)},
    narrow_act_pairs={"MatMul": "uint8"},
    float_ops=frozenset({"Erf"}),
)
