"""The reference interpreter: numpy semantics of the L3 integer ops (the golden integer results).

    from qgraph.reference import Interpreter
    interp = Interpreter(model)
    outs = interp.run({"x": x}, keep=True)   # graph outputs and every intermediate value

Integer kernels compute exactly (int64, or float BLAS where every partial sum is provably an
exact integer), accumulate conv / matmul in int32 as the contract says (raising
``AccumulatorOverflowError`` otherwise) and requantize only through
``qgraph.quant.fixedpoint``; quantize / dequantize only through ``qgraph.quant.params``.
"""

from qgraph.reference.common import AccumulatorOverflowError, InterpreterError
from qgraph.reference.interpreter import KERNELS, Interpreter, run

__all__ = ["AccumulatorOverflowError", "Interpreter", "InterpreterError", "KERNELS", "run"]
