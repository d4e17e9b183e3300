"""The quantization math, written once: integer types, scale / zero-point choice, rounding,
and the overflow bounds of the integer kernels quantization creates (the graph analysis
built on them is ``qgraph.analysis.overflow``: this package imports neither the IR nor the
pass manager).

Passes, the integer reference and the TVM lowering all use these functions; a second copy
of a rounding rule elsewhere is a bug.
"""

from qgraph.quant.config import QuantConfig, QuantConfigError, TensorScheme
from qgraph.quant.overflow import NodeOverflow, OverflowScheme, accumulator_bounds, pair_sum_bounds
from qgraph.quant.params import (
    INT4, INT8, INT16, INT32, INT_TYPES, UINT4, UINT8, UINT16, IntType, QuantParams, choose_params,
    choose_weight_params, dequantize, int_type, quantize, quantize_bias,
)

__all__ = [
    "INT4", "INT8", "INT16", "INT32", "INT_TYPES", "UINT4", "UINT8", "UINT16", "IntType", "NodeOverflow",
    "OverflowScheme", "QuantConfig", "QuantConfigError", "QuantParams", "TensorScheme",
    "accumulator_bounds", "choose_params", "choose_weight_params", "dequantize", "int_type",
    "pair_sum_bounds", "quantize", "quantize_bias",
]
