"""Calibration data: where it comes from, checked against the model's inputs.

Accepted sources:
  * a ``.npz`` file: one array per graph input, keyed by input name, samples on axis 0;
  * a folder of ``.npz`` files (each as above) and / or ``.npy`` files (single-input models:
    samples on axis 0), read in file-name order;
  * in Python, any iterable of ``{input name: array}`` batches (samples on axis 0).

Every batch is checked before it is used: unknown or missing input names, wrong rank or
static dims, a dtype that is not the input's (float64 for a float32 input is converted),
empty arrays, and NaN / Inf each raise ``CalibrationDataError`` naming the input and
the sample.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

from qgraph.errors import QGraphError
from qgraph.ir.core import Model
from qgraph.ir.dtypes import to_numpy
from qgraph.ir.types import TensorType


class CalibrationDataError(QGraphError):
    """Calibration data does not fit the model (name, shape, dtype, NaN / Inf, empty)."""


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    shape: tuple  # dims: int, str (symbolic) or None

    def describe(self) -> str:
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"'{self.name}' ({self.dtype}[{dims}])"


def input_specs(model: Model) -> list[InputSpec]:
    """The model's fed inputs (graph inputs that are not initializers)."""
    specs = []
    for v in model.graph.inputs:
        if v.is_initializer():
            continue
        if not isinstance(v.type, TensorType) or v.type.shape is None:
            raise CalibrationDataError(f"graph input '{v.name}' has no tensor type with a known rank; "
                                       "calibration needs one (fix the model's input declaration)")
        specs.append(InputSpec(v.name, to_numpy(v.type.dtype), tuple(v.type.shape)))
    return specs


def _read_npz(path: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise CalibrationDataError(f"{path}: not a readable .npz file ({e})") from e


def _read_npy(path: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise CalibrationDataError(f"{path}: not a readable .npy file ({e})") from e


def open_source(source: Any, specs: list[InputSpec]) -> Iterable[Mapping[str, np.ndarray]]:
    """Batches from a path (.npz file or folder) or an iterable of dicts."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise CalibrationDataError(f"{path}: no such file or folder (calibration data)")
        if os.path.isdir(path):
            files = sorted(f for f in os.listdir(path) if f.endswith((".npz", ".npy")))
            if not files:
                raise CalibrationDataError(f"{path}: folder holds no .npz or .npy files")
            return _folder(path, files, specs)
        if path.endswith(".npy"):
            return _npy_batches([path], specs)
        return [_labelled(_read_npz(path), path)]
    if isinstance(source, Mapping):
        return [source]
    try:
        iter(source)
    except TypeError:
        raise CalibrationDataError(
            f"calibration data must be a .npz path, a folder, or an iterable of {{input name: array}}; "
            f"got {type(source).__name__}") from None
    return source


class _Labelled(dict):
    """A batch that knows which file it came from (for error messages)."""

    origin = ""


def _labelled(d: dict, origin: str) -> _Labelled:
    out = _Labelled(d)
    out.origin = origin
    return out


def _folder(path: str, files: list[str], specs: list[InputSpec]) -> Iterator[Mapping[str, np.ndarray]]:
    for f in files:
        full = os.path.join(path, f)
        if f.endswith(".npz"):
            yield _labelled(_read_npz(full), full)
        else:
            yield from _npy_batches([full], specs)


def _npy_batches(paths: list[str], specs: list[InputSpec]) -> Iterator[Mapping[str, np.ndarray]]:
    if len(specs) != 1:
        names = ", ".join(s.name for s in specs)
        raise CalibrationDataError(f"{paths[0]}: .npy files feed single-input models; this model has inputs {names} "
                                   "(use .npz files keyed by input name)")
    for p in paths:
        yield _labelled({specs[0].name: _read_npy(p)}, p)


def iter_samples(source: Any, specs: list[InputSpec]) -> Iterator[dict[str, np.ndarray]]:
    """Checked single samples (each array with a leading axis of 1), in order."""
    by_name = {s.name: s for s in specs}
    index = 0
    for batch in open_source(source, specs):
        origin = getattr(batch, "origin", "") or f"batch starting at sample {index}"
        if not isinstance(batch, Mapping):
            raise CalibrationDataError(f"{origin}: expected a mapping of input name to array, got {type(batch).__name__}")
        unknown = [k for k in batch if k not in by_name]
        if unknown:
            raise CalibrationDataError(f"{origin}: unknown input name(s) {unknown}; the model's inputs are "
                                       + ", ".join(s.describe() for s in specs))
        missing = [s.name for s in specs if s.name not in batch]
        if missing:
            raise CalibrationDataError(f"{origin}: no data for input(s) {missing}")
        arrays = {k: _check_array(by_name[k], np.asarray(v), origin, index) for k, v in batch.items()}
        counts = {k: a.shape[0] for k, a in arrays.items()}
        if len(set(counts.values())) > 1:
            raise CalibrationDataError(f"{origin}: inputs hold different sample counts {counts}")
        n = next(iter(counts.values()))
        for i in range(n):
            sample = {k: a[i:i + 1] for k, a in arrays.items()}
            for k, a in sample.items():
                if a.dtype.kind == "f" and not np.isfinite(a).all():
                    bad = "NaN" if np.isnan(a).any() else "Inf"
                    raise CalibrationDataError(f"{origin}: input '{k}' sample {index + i} contains {bad}; "
                                               "remove or fix that sample")
            yield sample
        index += n


def _check_array(spec: InputSpec, a: np.ndarray, origin: str, index: int) -> np.ndarray:
    if a.size == 0:
        raise CalibrationDataError(f"{origin}: input '{spec.name}' is empty (shape {list(a.shape)})")
    if a.dtype != spec.dtype:
        if spec.dtype == np.float32 and a.dtype in (np.float64, np.float16):
            a = a.astype(np.float32)
        else:
            raise CalibrationDataError(f"{origin}: input '{spec.name}' is {a.dtype}, the model expects {spec.dtype}")
    if a.ndim != len(spec.shape):
        raise CalibrationDataError(
            f"{origin}: input '{spec.name}' has shape {list(a.shape)} (rank {a.ndim}); the model expects "
            f"{spec.describe()} with samples on axis 0")
    for axis, (got, want) in enumerate(zip(a.shape[1:], spec.shape[1:]), start=1):
        if isinstance(want, int) and want > 0 and got != want:  # exporters write -1 for "any"
            raise CalibrationDataError(
                f"{origin}: input '{spec.name}' axis {axis} is {got}, the model expects {want} "
                f"({spec.describe()}); samples {index}..{index + a.shape[0] - 1}")
    return a
