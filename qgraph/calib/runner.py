"""Run the float model in ONNX Runtime with its intermediate tensors exposed, batch by batch."""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from qgraph.errors import QGraphError
from qgraph.ir.core import Model
from qgraph.ir.dtypes import DType
from qgraph.ir.types import TensorType

FLOAT_TYPES = (DType.FLOAT, DType.FLOAT16, DType.DOUBLE, DType.BFLOAT16)


def observed_values(model: Model) -> list[str]:
    """Names of the float tensors calibration observes: graph inputs and main-graph node outputs."""
    names = [v.name for v in model.graph.inputs if not v.is_initializer() and v.dtype in FLOAT_TYPES]
    for n in model.graph:
        for o in n.outputs:
            if o is not None and isinstance(o.type, TensorType) and o.type.dtype in FLOAT_TYPES:
                names.append(o.name)
    return names


def _session(model: Model, names: list[str]):
    import onnxruntime as ort

    from qgraph.onnx.exporter import to_proto

    proto = to_proto(model)
    have = {o.name for o in proto.graph.output}
    inputs = {i.name for i in proto.graph.input}
    typed = {vi.name: vi for vi in proto.graph.value_info}
    for name in names:
        if name in have or name in inputs:
            continue
        out = proto.graph.output.add()
        if name in typed:
            out.CopyFrom(typed[name])
        else:
            out.name = name
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # observe the graph as written
    so.log_severity_level = 4  # fatal only: a failed run's error is raised below, in one line; ORT's own log of it was a second
    try:
        return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise QGraphError(f"ONNX Runtime cannot load the model for calibration: {str(e).splitlines()[0]}") from e


def batches(samples: Iterator[dict[str, np.ndarray]], model: Model, batch_size: int) -> Iterator[tuple[int, dict]]:
    """Group single samples into batches the model accepts: ``batch_size`` along a symbolic
    first axis, the fixed size otherwise. A first dim <= 0 counts as symbolic: PP-OCR's cls
    model declares a literal -1 for "any batch". Yields (sample count, feeds)."""
    fixed = None
    for v in model.graph.inputs:
        if not v.is_initializer() and v.shape and isinstance(v.shape[0], int) and v.shape[0] > 0:
            fixed = v.shape[0]
    size = fixed or max(1, batch_size)
    pending: list[dict[str, np.ndarray]] = []
    for s in samples:
        pending.append(s)
        if len(pending) == size:
            yield size, {k: np.concatenate([p[k] for p in pending]) for k in pending[0]}
            pending = []
    if pending:
        if fixed is not None and len(pending) != fixed:
            raise QGraphError(f"the model's batch dimension is fixed at {fixed}; {len(pending)} calibration "
                              f"sample(s) are left over (give a multiple of {fixed})")
        yield len(pending), {k: np.concatenate([p[k] for p in pending]) for k in pending[0]}


def run_observed(model: Model, samples: Iterator[dict[str, np.ndarray]], names: list[str],
                 batch_size: int = 1) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (samples in this batch, {tensor name: array}) for every batch."""
    sess = _session(model, names)
    out_names = [o.name for o in sess.get_outputs()]
    wanted = set(names)
    for count, feeds in batches(samples, model, batch_size):
        try:
            results = sess.run(None, feeds)
        except Exception as e:
            raise QGraphError(f"ONNX Runtime failed on a calibration batch of {count} sample(s): "
                              f"{str(e).splitlines()[0]}") from e
        observed = {k: v for k, v in feeds.items() if k in wanted}
        observed.update({k: v for k, v in zip(out_names, results) if k in wanted})
        yield count, observed


