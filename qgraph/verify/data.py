"""Held-out evaluation data: the model's inputs and, optionally, class labels.

An evaluation ``.npz`` holds one array per model input (keyed by input name, samples on
axis 0), like ``qgraph verify --inputs``, and may hold ``labels`` (or ``label``): one class
index per sample (or per row of a classifier-shaped output, see
``qgraph.verify.metrics.classifier_shaped``). ``qgraph compile --eval`` and
``qgraph.quantize(eval=...)`` read it with ``load_eval``; ``qgraph verify`` reads the same
labels with ``read_labels``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
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
        feeds: one array per model input, all with ``samples`` on axis 0.
        labels: class indices, or None.
        source: where the data came from, for the report ("DATA.npz" or "eval data").
        samples: the number of samples.
    """

    feeds: dict[str, np.ndarray]
    labels: np.ndarray | None
    source: str
    samples: int

    def describe(self) -> str:
        """``32 held-out samples from DATA.npz`` (the label the report's numbers carry)."""
        return f"{self.samples} held-out samples from {self.source}"

    def first(self, n: int) -> list[dict[str, np.ndarray]]:
        """The first ``n`` samples, one feed dict each (leading axis 1)."""
        return [{k: a[i:i + 1] for k, a in self.feeds.items()} for i in range(min(n, self.samples))]


def _split_labels(arrays: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    arrays = dict(arrays)
    for key in LABEL_KEYS:
        if key in arrays:
            return {k: v for k, v in arrays.items() if k not in LABEL_KEYS}, np.asarray(arrays[key])
    return arrays, None


def read_labels(path: str) -> np.ndarray | None:
    """The labels array of an .npz (``labels`` or ``label``), or None when it holds none."""
    try:
        with np.load(path, allow_pickle=False) as z:
            for key in LABEL_KEYS:
                if key in z.files:
                    return z[key]
    except (OSError, ValueError) as e:
        raise QGraphError(f"{path}: not a readable .npz ({e})") from e
    return None


def load_eval(source: Any, model: Model) -> EvalSet:
    """Read evaluation data for ``model`` from an .npz path or a ``{name: array}`` mapping.

    float64 arrays for float32 inputs are converted (numpy's default float); any other
    dtype mismatch, a missing input, an unknown key or unequal sample counts is an error
    naming the array.

    Raises:
        QGraphError: the data does not fit the model's inputs.
    """
    from qgraph.ir.dtypes import to_numpy

    if isinstance(source, (str, os.PathLike)):
        where = os.fspath(source)
        if not os.path.isfile(where):
            raise QGraphError(f"eval data {where}: no such file")
        try:
            with np.load(where, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError) as e:
            raise QGraphError(f"eval data {where}: not a readable .npz ({e})") from e
        name = os.path.basename(where)
    elif isinstance(source, Mapping):
        where, name, arrays = "eval data", "eval data", {k: np.asarray(v) for k, v in source.items()}
    else:
        raise QGraphError(f"eval data must be an .npz path or a mapping of input name to array, "
                          f"got {type(source).__name__}")
    arrays, labels = _split_labels(arrays)
    inputs = [v for v in model.graph.inputs if not v.is_initializer()]
    names = [v.name for v in inputs]
    missing = [n for n in names if n not in arrays]
    unknown = [k for k in arrays if k not in names]
    if missing or unknown:
        raise QGraphError(f"{where}: " + (f"no array for model input(s) {', '.join(missing)}" if missing else
                                          f"array(s) {', '.join(unknown)} are no model input")
                          + f"; the model's inputs are {', '.join(names)} (labels go under 'labels')")
    feeds = {}
    for v in inputs:
        a = arrays[v.name]
        want = to_numpy(v.dtype) if v.dtype is not None else a.dtype
        if a.dtype == np.float64 and want == np.float32:
            a = a.astype(np.float32)
        if a.dtype != want:
            raise QGraphError(f"{where}: '{v.name}' has dtype {a.dtype}, the model expects {want}")
        feeds[v.name] = a
    counts = {k: (a.shape[0] if a.ndim else 0) for k, a in feeds.items()}
    if len(set(counts.values())) > 1 or 0 in counts.values():
        raise QGraphError(f"{where}: the inputs must hold the same, nonzero number of samples on axis 0; "
                          f"they hold {counts}")
    n = next(iter(counts.values()), 0)
    if labels is not None and (labels.ndim == 0 or labels.shape[0] != n):
        raise QGraphError(f"{where}: labels of shape {list(labels.shape)} for {n} samples; give one label "
                          "per sample on axis 0")
    return EvalSet(feeds, labels, name, n)
