"""L3 integer models on Apache TVM (Relax): lowering, build, run, export.

    from qgraph import tvm as qtvm
    mod = qtvm.lower(q.integer, batch_size=1)       # tvm.IRModule, Relax function "main"
    c = qtvm.build(q.integer, "cpu", batch_size=1)  # tvm.compile for this host
    y = c.run({"input": x})                         # bit-exact with q.run(...) on integer paths
    c.export("out/"); c2 = qtvm.load("out/")

Importing this package does not import TVM; ``lower`` / ``build`` do.
"""

from qgraph.tvm.build import Compiled, RunError, TensorSpec, build, load
from qgraph.tvm.context import LoweringError
from qgraph.tvm.lower import LOWERINGS, lower, static_input_shapes

__all__ = ["Compiled", "LOWERINGS", "LoweringError", "RunError", "TensorSpec", "build", "load", "lower",
           "static_input_shapes"]
