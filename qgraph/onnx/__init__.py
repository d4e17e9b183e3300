"""ONNX import and export."""

from qgraph.ir.core import Model
from qgraph.onnx.exporter import save, to_proto
from qgraph.onnx.gs import from_gs, to_gs
from qgraph.onnx.importer import from_proto, load

__all__ = ["load", "from_proto", "save", "to_proto", "from_gs", "to_gs", "clone"]


def clone(model: Model) -> Model:
    """A deep copy of ``model`` keeping its range fields (``input_ranges`` as a new dict of the
    same intervals; ``calibration`` the same object).

    The copy goes through the ONNX form, which is lossless (qgraph-domain ops stay as they
    are; unnamed values get the exporter's names). It lives here, not as ``Model.clone`` in
    the IR, because the IR imports nothing above it; a pure-IR copy would let it move down.
    """
    copy = from_proto(to_proto(model, decompose=False))
    copy.input_ranges = dict(model.input_ranges)
    copy.calibration = model.calibration
    return copy
