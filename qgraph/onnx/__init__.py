"""ONNX import and export."""

from qgraph.onnx.exporter import save, to_proto
from qgraph.onnx.gs import from_gs, to_gs
from qgraph.onnx.importer import from_proto, load

__all__ = ["load", "from_proto", "save", "to_proto", "from_gs", "to_gs"]

