"""ONNX Runtime, in one place: the CPU session every part of qgraph builds, and the batched
runner of a qgraph ``Model``.

``cpu_session`` is the only ``onnxruntime.InferenceSession`` qgraph makes: the API's
``ort`` / ``ort-sim`` backends and the float model (``run_ort``), calibration's observed run
(``qgraph.calib.runner``) and the test oracle (``qgraph.testing.ort``) differ only in the
options they pass it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from qgraph import batching
from qgraph.errors import QGraphError

if TYPE_CHECKING:
    import onnx

    from qgraph.ir.core import Model


def cpu_session(model: "Model | onnx.ModelProto | bytes | str", *, simulate: bool = False,
                threads: int | None = None, optimize: bool = True, log_severity: int = 3,
                config: Mapping[str, str] | None = None):
    """An ONNX Runtime session on the CPU execution provider.

    Args:
        model: a qgraph ``Model`` (exported with ``qgraph.onnx.to_proto``), an
            ``onnx.ModelProto``, its serialized bytes, or a path.
        simulate: set ``session.disable_quant_qdq``: ORT does not fuse Q/DQ into integer
            kernels, so they run as written (the float simulation of the quantization).
        threads: intra-op threads (None or 0: ORT's default).
        optimize: ORT's default graph optimizations; off (``ORT_DISABLE_ALL``), every node
            runs as written.
        log_severity: the session's ``log_severity_level`` (3: errors; 4: fatal only).
        config: further session config entries.

    Raises:
        Whatever ``onnxruntime.InferenceSession`` raises on a model it cannot load (callers
        word it for their context).
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = log_severity
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if simulate:
        so.add_session_config_entry("session.disable_quant_qdq", "1")
    if threads:
        so.intra_op_num_threads = threads
    for k, v in (config or {}).items():
        so.add_session_config_entry(k, v)
    return ort.InferenceSession(_serialized(model), so, providers=["CPUExecutionProvider"])


def _serialized(model: Any) -> "bytes | str":
    import onnx

    if isinstance(model, (bytes, str)):
        return model
    if isinstance(model, onnx.ModelProto):
        return model.SerializeToString()
    from qgraph.onnx import to_proto

    return to_proto(model).SerializeToString()


def run_ort(model: "Model", feeds: Mapping[str, np.ndarray], *, simulate: bool = False,
            threads: int | None = None, probe: "Model | None" = None,
            what: str = "ONNX Runtime") -> dict[str, np.ndarray]:
    """Run ``model`` in ONNX Runtime's CPU EP on any number of samples, in batches of the
    size it takes (``qgraph.batching.run_model``); ``simulate`` turns off its QDQ fusion
    (``session.disable_quant_qdq``), so Q/DQ run as written: the float simulation. ``what``
    names the run in errors and progress (e.g. ``backend 'ort'``, ``the float model``)."""
    try:
        sess = cpu_session(model, simulate=simulate, threads=threads)
    except Exception as e:
        raise QGraphError(f"{what}: ONNX Runtime cannot load the model: {str(e).splitlines()[0]}") from e
    names = [o.name for o in sess.get_outputs()]

    def run(batch: dict) -> dict:
        try:
            return dict(zip(names, sess.run(None, batch)))
        except Exception as e:
            raise QGraphError(f"{what}: ONNX Runtime failed: {str(e).splitlines()[0]}") from e

    return batching.run_model(model, run, feeds, what=what, probe=probe)
