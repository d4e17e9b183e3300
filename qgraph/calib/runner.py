"""Run the float model in ONNX Runtime with its intermediate tensors exposed, batch by batch."""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from qgraph import batching
from qgraph.errors import QGraphError
from qgraph.ir.core import Model
from qgraph.ir.dtypes import DType
from qgraph.ir.types import TensorType
from qgraph.ort import cpu_session

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
    try:
        # the graph as written is observed; fatal only: a failed run's error is raised below, in one line
        return cpu_session(proto, optimize=False, log_severity=4)
    except Exception as e:
        raise QGraphError(f"ONNX Runtime cannot load the model for calibration: {str(e).splitlines()[0]}") from e


def batches(samples: Iterator[dict[str, np.ndarray]], model: Model, batch_size: int,
            specs=None) -> Iterator[tuple[int, dict]]:
    """Group feeds (single samples, or the fixed-size units of ``iter_samples``) into batches
    the model takes: ``batch_size`` samples along a symbolic batch dim, the fixed size
    otherwise, each input on its own sample axis (``specs``, default ``input_specs(model)``).
    A batch dim <= 0 counts as symbolic: PP-OCR's cls model declares a literal -1 for "any
    batch". Yields (sample count, feeds)."""
    from qgraph.calib.data import input_specs

    specs = input_specs(model) if specs is None else specs
    axes = {s.name: s.batch_axis for s in specs}
    fixed = batching.fixed_batch({s.name: s.shape for s in specs}, axes)
    for count, feeds in batching.regroup(samples, axes, fixed or max(1, batch_size), "calibration data"):
        if fixed is not None and count != fixed:
            raise QGraphError(f"the model's batch dimension is fixed at {fixed}; {count} calibration "
                              f"sample(s) are left over (give a multiple of {fixed})")
        yield count, feeds


def run_observed(model: Model, samples: Iterator[dict[str, np.ndarray]], names: list[str],
                 batch_size: int = 1, specs=None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (samples in this batch, {tensor name: array}) for every batch (``batches``)."""
    sess = _session(model, names)
    out_names = [o.name for o in sess.get_outputs()]
    wanted = set(names)
    for count, feeds in batches(samples, model, batch_size, specs):
        try:
            results = sess.run(None, feeds)
        except Exception as e:
            raise QGraphError(f"ONNX Runtime failed on a calibration batch of {count} sample(s): "
                              f"{str(e).splitlines()[0]}") from e
        observed = {k: v for k, v in feeds.items() if k in wanted}
        observed.update({k: v for k, v in zip(out_names, results) if k in wanted})
        yield count, observed


