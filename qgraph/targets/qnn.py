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

- An op whose activation inputs and output differ in type (a W8A8 layer feeding a W8A16
  one) is not a QDQ node unit for ONNX Runtime: its weights' DequantizeLinear stays on the
  CPU ("standalone DQ op with per-channel quantization") and the op runs unquantized on the
  HTP (300-460 LSB off on 16-bit layers of the digits CNN): inputs are converted to the
  output's type first.
- A float op inside the quantized graph makes it fail to finalize (QNN_COMMON_ERROR_MEM_ALLOC:
  the decomposed hard-swish of PP-OCRv4 cls, LayerNorm of rec, a decomposed GELU), and a
  QDQ Erf splits the graph: the model is written at opset 20, where the fused hard-swish,
  LayerNorm and GELU are the standard HardSwish, LayerNormalization and Gelu, which the HTP
  runs quantized (a GELU then has no Erf). SiLU has no standard op before opset 24, so its
  ``x * Sigmoid(x)`` group is quantized op by op (a Sigmoid table, then an integer Mul).

``qgraph.targets.rules.QuantRules`` is the form every target's rules take (``Target.quant``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qgraph.ir.fusion import SIGMOID_SWISH
from qgraph.targets.rules import QuantRules

if TYPE_CHECKING:
    from qgraph.targets import Target

#: The HTP version the ``qnn`` target compiles for (the QNN EP option ``htp_arch``).
HTP_ARCH = 73


#: The HTP rules (the module doc says where each comes from).
HTP_RULES = QuantRules(
    activation_dtypes=frozenset({"uint8", "uint16", "int8", "int16"}),
    weight_dtypes=frozenset({"int8", "uint8", "int16"}),
    symmetric_weights=True,
    per_channel_axes={"Conv": 0},
    fixed_outputs={("Sigmoid", "uint16"): (1.0 / 65536, 0), ("Tanh", "uint16"): (1.0 / 32768, 32768)},
    narrow_act_pairs={"MatMul": "uint8"},
    min_opset=20,
    same_act_types=True,
    split_groups=frozenset({SIGMOID_SWISH}),
)


def htp() -> "Target":
    """The Qualcomm HTP through ONNX Runtime's QNN EP: a QDQ model and a QNN context binary,
    no TVM build (``runnable``: the HTP emulator's environment is configured, ``qgraph.qnn``)."""
    import importlib.util
    import os

    from qgraph.targets import Target

    env = os.environ.get("QGRAPH_QNN_PYTHON")
    runnable = bool(env and os.path.exists(env)) or importlib.util.find_spec("onnxruntime_qnn") is not None
    return Target("qnn", {}, runnable, frozenset({f"htp_v{HTP_ARCH}"}),
                  frozenset({"int8", "uint8", "int16", "uint16", "int32"}), quant=HTP_RULES)
