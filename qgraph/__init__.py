"""qgraph: a graph-rewriting compiler pass library for quantizing neural networks."""

from qgraph.errors import QGraphError
from qgraph.ir import Graph, Model, Node, Tensor, Value, ops
from qgraph.onnx import from_gs, load, save, to_gs, to_proto
from qgraph.api import QuantizedModel, quantize

from qgraph.version import VERSION as __version__

__all__ = ["Graph", "Model", "Node", "QGraphError", "QuantizedModel", "Tensor", "Value", "from_gs", "load", "ops",
           "quantize", "save", "to_gs", "to_proto"]
