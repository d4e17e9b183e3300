"""Bridges for onnx-graphsurgeon users: ``from_gs`` / ``to_gs``.

Both go through ONNX protos, so they inherit graphsurgeon's own import / export
(which, in onnx-graphsurgeon 0.6, drops TYPE_PROTO attributes and cannot represent
optional-typed values); qgraph's own ``load`` / ``save`` do not have those limits.
"""

from __future__ import annotations

import logging

from qgraph.ir.core import Model
from qgraph.onnx.exporter import to_proto
from qgraph.onnx.importer import from_proto


def _gs():
    import onnx_graphsurgeon as gs

    # graphsurgeon logs through its own logger on import and export; keep it quiet unless
    # the user turned qgraph's logging up.
    if not logging.getLogger("qgraph").isEnabledFor(logging.DEBUG):
        gs.logger.G_LOGGER.severity = gs.logger.G_LOGGER.ERROR
    return gs


def to_gs(model: Model):
    """The model as an ``onnx_graphsurgeon.Graph``."""
    return _gs().import_onnx(to_proto(model))


def from_gs(graph, *, base_dir: str | None = None) -> Model:
    """A qgraph ``Model`` from an ``onnx_graphsurgeon.Graph``."""
    return from_proto(_gs().export_onnx(graph), base_dir=base_dir)
