"""Held-out evaluation data: the model's inputs and, optionally, class labels.

An evaluation ``.npz`` holds one array per model input (keyed by input name, samples on
each input's sample axis, ``qgraph.batching``), like ``qgraph verify --inputs``, and may hold
``labels`` (or ``label``): one class index per sample (or per row of a classifier-shaped
output, see ``qgraph.verify.metrics.classifier_shaped``). ``read_feeds`` reads both for
``qgraph run`` / ``verify``; ``load_eval`` lays them out for ``qgraph compile --eval`` and
``qgraph.quantize(eval=...)``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from qgraph.errors import QGraphError
from qgraph.ir.core import Model

#: keys of an .npz that hold class labels rather than a model input (first found wins)
LABEL_KEYS = ("labels", "label")


@dataclass
class EvalSet:
    """Evaluation feeds and labels.

    Attributes:
        feeds: one array per model input, samples on each input's sample axis (``axes``).
        labels: class indices, or None.
        source: where the data came from, for the report ("DATA.npz" or "eval data").
        samples: the number of samples.
        axes: input name -> sample axis, or None for an input without one
            (``qgraph.batching``).
        unit: samples per run of the model: its fixed batch, else 1.
    """

    feeds: dict[str, np.ndarray]
    labels: np.ndarray | None
    source: str
    samples: int
    axes: dict = field(default_factory=dict)
    unit: int = 1

    def describe(self) -> str:
        """``32 held-out samples from DATA.npz`` (the label the report's numbers carry)."""
        return f"{self.samples} held-out samples from {self.source}"

    def first(self, n: int) -> list[dict[str, np.ndarray]]:
        """Feeds of at least the first ``n`` samples (all there are, if fewer), in runs the
        model takes: one sample each, or whole batches of a fixed batch size."""
        from qgraph import batching

        runs = max(1, -(-min(n, self.samples) // self.unit))
        return [batching.take(self.feeds, self.axes, i * self.unit, min((i + 1) * self.unit, self.samples),
                              pad_to=self.unit if self.unit > 1 else None) for i in range(runs)]


def _split_labels(arrays: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    arrays = dict(arrays)
    for key in LABEL_KEYS:
        if key in arrays:
            return {k: v for k, v in arrays.items() if k not in LABEL_KEYS}, np.asarray(arrays[key])
    return arrays, None


def read_feeds(source: Any, model: Model, where: str) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """The model's inputs and the labels from an .npz path or a ``{name: array}`` mapping:
    what ``qgraph run`` / ``verify --inputs`` and ``compile --eval`` read.

    float64 arrays for float32 inputs are converted (numpy's default float); any other
    dtype mismatch or a missing input is an error naming the array. Other keys (the
    ``__batch_axes__`` layout entry, notes of the user's own) are ignored.

    Raises:
        QGraphError: the data does not fit the model's inputs (``where`` starts the message).
    """
    from qgraph.ir.dtypes import to_numpy

    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise QGraphError(f"{where}: no such file")
        from qgraph.calib.data import CalibrationDataError, read_npz

        try:
            arrays = read_npz(path)
        except CalibrationDataError as e:
            raise QGraphError(f"{where}: {e}") from e
    elif isinstance(source, Mapping):
        arrays = {k: np.asarray(v) for k, v in source.items()}
    else:
        raise QGraphError(f"{where}: expected an .npz path or a mapping of input name to array, "
                          f"got {type(source).__name__}")
    arrays, labels = _split_labels(arrays)
    inputs = [v for v in model.graph.inputs if not v.is_initializer()]
    missing = [v.name for v in inputs if v.name not in arrays]
    if missing:
        raise QGraphError(f"{where}: no array for model input(s) {', '.join(missing)} (it holds "
                          f"{', '.join(arrays) or 'nothing'}; labels go under 'labels')")
    feeds = {}
    for v in inputs:
        a = arrays[v.name]
        want = to_numpy(v.dtype) if v.dtype is not None else a.dtype
        if a.dtype == np.float64 and want == np.float32:  # numpy's default float: accept it
            a = a.astype(np.float32)
        if a.dtype != want:
            raise QGraphError(f"{where}: '{v.name}' has dtype {a.dtype}, the model expects {want}")
        feeds[v.name] = a
    return feeds, labels


def load_eval(source: Any, model: Model, axes: Mapping[str, Any] | None = None) -> EvalSet:
    """Read evaluation data for ``model`` (``read_feeds``), laid out with the model's batch
    axes (``qgraph.batching``: what the model records, then ``axes``, then the file's
    ``__batch_axes__`` entry).

    Raises:
        QGraphError: the data does not fit the model's inputs, or the labels the samples.
    """
    from qgraph import batching

    where = f"eval data {os.fspath(source)}" if isinstance(source, (str, os.PathLike)) else "eval data"
    name = os.path.basename(os.fspath(source)) if isinstance(source, (str, os.PathLike)) else "eval data"
    feeds, labels = read_feeds(source, model, where)
    shapes = batching.input_shapes(model)
    resolved = batching.model_axes(model, batching.combine(axes, batching.source_axes(source), None, where))
    n = batching.count(feeds, resolved, where)
    batching.check_finite(feeds, resolved, where)
    if not n:
        raise QGraphError(f"{where}: the inputs hold no samples")
    if labels is not None and (labels.ndim == 0 or labels.shape[0] != n):
        raise QGraphError(f"{where}: labels of shape {list(labels.shape)} for {n} samples; give one label "
                          "per sample on axis 0")
    return EvalSet(feeds, labels, name, n, resolved, batching.fixed_batch(shapes, resolved) or 1)
