"""qgraph's IR: values with use-def chains, nodes, graphs, models."""

from qgraph.ir import ops
from qgraph.ir.core import Attr, AttrType, Graph, Model, Node, Value, make_attr
from qgraph.ir.dtypes import DType
from qgraph.ir.ops import OpId
from qgraph.ir.tensor import Tensor
from qgraph.ir.types import MapType, OptionalType, SequenceType, SparseTensorType, TensorType, Type

__all__ = [
    "Attr", "AttrType", "DType", "Graph", "MapType", "Model", "Node", "OpId", "OptionalType",
    "SequenceType", "SparseTensorType", "Tensor", "TensorType", "Type", "Value", "make_attr", "ops",
]
