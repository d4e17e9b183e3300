"""Calibration data: where it comes from, checked against the model's inputs.

Accepted sources:
  * a ``.npz`` file: one array per graph input, keyed by input name, samples on the input's
    sample axis (axis 0 unless the batch axes say otherwise, none for rank-0 inputs; see
    ``qgraph.batching``); an optional ``__batch_axes__`` entry (a JSON string
    ``{"NAME": K}``) says how the file is laid out;
  * a folder of ``.npz`` files (each as above) and / or ``.npy`` files (single-input models:
    samples on the sample axis), read in file-name order;
  * in Python, any iterable of ``{input name: array}`` batches, laid out the same way (a
    ``__batch_axes__`` key, a dict or JSON string, is read as in a file).

The samples are handed on in the units the model takes: single samples where the batch dim
is symbolic, batches of B where it is fixed at B (B samples of the data); an input without
a sample axis goes whole into every unit.

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

from qgraph import batching
from qgraph.errors import NPZ_READ_ERRORS, QGraphError
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
    batch_axis: int | None = 0  # where the data holds its samples; None: the same for every sample

    def describe(self) -> str:
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"'{self.name}' ({self.dtype}[{dims}])"


def input_specs(model: Model, batch_axes: Mapping[str, int | None] | None = None) -> list[InputSpec]:
    """The model's fed inputs (graph inputs that are not initializers), with their sample
    axes: the model's recorded ones (``qgraph.batching.model_axes``) overridden by ``batch_axes``."""
    for v in model.graph.inputs:
        if not v.is_initializer() and (not isinstance(v.type, TensorType) or v.type.shape is None):
            raise CalibrationDataError(f"graph input '{v.name}' has no tensor type with a known rank; "
                                       "calibration needs one (fix the model's input declaration)")
    axes = batching.model_axes(model, batch_axes)
    return [InputSpec(v.name, to_numpy(v.type.dtype), tuple(v.type.shape), axes[v.name])
            for v in model.graph.inputs if not v.is_initializer()]


def read_npz(path: str) -> dict[str, np.ndarray]:
    """Every array of an .npz file.

    Raises:
        CalibrationDataError: the file cannot be read as one (names it and why).
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except NPZ_READ_ERRORS as e:
        raise CalibrationDataError(f"{path}: not a readable .npz file ({e})") from e


def _read_npy(path: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except NPZ_READ_ERRORS as e:
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
        return [_labelled(read_npz(path), path)]
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
            yield _labelled(read_npz(full), full)
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
    """Checked feeds in the units the model takes, in order: single samples (each input's
    sample axis of size 1) where the batch dim is symbolic, batches of B samples where it is
    fixed at B; inputs without a sample axis whole in each.

    Raises:
        CalibrationDataError: data that does not fit the model (names the input and the
            sample), or a sample count that is not a multiple of a fixed batch B.
    """
    axes = {s.name: s.batch_axis for s in specs}
    try:
        unit = batching.fixed_batch({s.name: s.shape for s in specs}, axes) or 1
    except QGraphError as e:
        raise CalibrationDataError(str(e)) from e
    seen = 0
    for count, feeds in batching.regroup(_checked(source, specs), axes, unit, "calibration data"):
        if count != unit:
            raise CalibrationDataError(f"the model's batch dimension is fixed at {unit}; {count} calibration "
                                       f"sample(s) are left over after {seen} (give a multiple of {unit})")
        seen += count
        yield feeds


def _checked(source: Any, specs: list[InputSpec]) -> Iterator[dict[str, np.ndarray]]:
    """The source's batches, each checked (names, dtypes, shapes, sample counts, NaN / Inf)."""
    index = 0
    for batch in open_source(source, specs):
        origin = getattr(batch, "origin", "") or f"batch starting at sample {index}"
        if not isinstance(batch, Mapping):
            raise CalibrationDataError(f"{origin}: expected a mapping of input name to array, got {type(batch).__name__}")
        if batching.FILE_KEY in batch:
            _agree(_file_axes(batch[batching.FILE_KEY], origin), specs, origin)
        by_name = {s.name: s for s in specs}
        unknown = [k for k in batch if k not in by_name and k != batching.FILE_KEY]
        if unknown:
            raise CalibrationDataError(f"{origin}: unknown input name(s) {unknown}; the model's inputs are "
                                       + ", ".join(s.describe() for s in specs))
        missing = [s.name for s in specs if s.name not in batch]
        if missing:
            raise CalibrationDataError(f"{origin}: no data for input(s) {missing}")
        arrays = {s.name: _check_array(s, np.asarray(batch[s.name]), origin, index) for s in specs}
        try:
            n = batching.count(arrays, {s.name: s.batch_axis for s in specs}, origin)
        except QGraphError as e:
            raise CalibrationDataError(str(e)) from e
        for s in specs:
            _check_finite(s, arrays[s.name], origin, index)
        yield arrays
        index += 1 if n is None else n


def _file_axes(value: Any, origin: str) -> dict:
    try:
        return batching.parse_mapping(value, f"{origin}: {batching.FILE_KEY}")
    except QGraphError as e:
        raise CalibrationDataError(str(e)) from e


def _agree(given: Mapping[str, int | None], specs: list[InputSpec], origin: str) -> None:
    """A batch's own ``__batch_axes__`` must say what the model's batch axes say (those were
    resolved from the options, the source's first file and the config before calibrating)."""
    for s in specs:
        if s.name in given and given[s.name] != s.batch_axis:
            raise CalibrationDataError(
                f"{origin}: {batching.FILE_KEY} puts the samples of input '{s.name}' on "
                f"{batching.axis_words(given[s.name])}, but the batch axes in use say "
                f"{batching.axis_words(s.batch_axis)}; "
                "make the data files and --batch-axis / the config's batch_axes agree")


def _check_finite(spec: InputSpec, a: np.ndarray, origin: str, index: int) -> None:
    try:
        batching.check_finite({spec.name: a}, {spec.name: spec.batch_axis}, origin, index)
    except QGraphError as e:
        raise CalibrationDataError(str(e)) from e


def _check_array(spec: InputSpec, a: np.ndarray, origin: str, index: int) -> np.ndarray:
    if a.size == 0:
        raise CalibrationDataError(f"{origin}: input '{spec.name}' is empty (shape {list(a.shape)})")
    if a.dtype != spec.dtype:
        if spec.dtype == np.float32 and a.dtype in (np.float64, np.float16):
            a = a.astype(np.float32)
        else:
            raise CalibrationDataError(f"{origin}: input '{spec.name}' is {a.dtype}, the model expects {spec.dtype}")
    k = spec.batch_axis
    layout = f"samples on axis {k}" if k is not None else "no sample axis: the same for every sample"
    if a.ndim != len(spec.shape):
        raise CalibrationDataError(
            f"{origin}: input '{spec.name}' has shape {list(a.shape)} (rank {a.ndim}); the model expects "
            f"{spec.describe()} with {layout} (set it with --batch-axis {spec.name}=K, none for no sample axis)")
    for axis, (got, want) in enumerate(zip(a.shape, spec.shape)):
        if axis != k and isinstance(want, int) and want > 0 and got != want:  # exporters write -1 for "any"
            where = f"; samples {index}..{index + a.shape[k] - 1}" if k is not None else ""
            raise CalibrationDataError(
                f"{origin}: input '{spec.name}' axis {axis} is {got}, the model expects {want} "
                f"({spec.describe()}, {layout}){where}")
    return a
