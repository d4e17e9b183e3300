"""Where the samples are in each input, and running a model on any number of them.

The layout convention (calibration data, ``qgraph run`` / ``verify`` inputs, the Python API):
each input's array holds its samples concatenated along the input's **sample axis**, the
axis of the model's batch dim: axis 0 by default (``[N, 3, H, W]``), another axis where
the model batches elsewhere (a recurrent state ``[2, N, 128]``: axis 1), or none: an input
without a sample axis (a rank-0 sample rate, a shared table) is given once and is the same
for every sample. Rank-0 inputs have no sample axis unless told otherwise; every other
input has axis 0 unless told otherwise, by any of:

- ``--batch-axis NAME=K`` on the command line, ``batch_axes={NAME: K}`` in the Python API;
- a ``__batch_axes__`` entry in the ``.npz`` (or a key of a batch dict of the Python API),
  a JSON string ``{"NAME": K}``: the file says how it is laid out (an option that says
  otherwise is an error: the data cannot be laid out both ways);
- the quantization config's ``"batch_axes": {"NAME": K}`` (the option and the file win).

``qgraph compile`` records the result in the models' metadata (``qgraph.batch_axes``) and in
``config.json``, so ``run`` / ``verify`` on the folder know it without the option.

``K`` is an axis (``0 <= K < rank``), or ``none`` / ``-1`` / JSON ``null``: no sample axis.

``run_in_batches`` runs any backend on N samples in batches of the size the model takes
(its fixed batch dim, or chunks of ``CHUNK`` samples where the batch dim is symbolic),
padding a short last batch of a fixed-size model with copies of its last sample and
dropping their outputs, and concatenates each output along its own sample axis.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from qgraph.errors import NPZ_READ_ERRORS, QGraphError
from qgraph.progress import Progress

#: The model metadata key (``Model.metadata_props``) holding the non-default sample axes, JSON.
META_KEY = "qgraph.batch_axes"
#: The ``.npz`` entry (a JSON string) that says how that file is laid out.
FILE_KEY = "__batch_axes__"
#: Samples per run where the model's batch dim is symbolic: bounds the memory of a run
#: (every intermediate tensor of a run is held at once) while keeping per-run overhead small.
CHUNK = 64
#: The dim name the output-axis probe gives the inputs' sample axes.
_PROBE_DIM = "qgraph_samples"

Axes = dict  # input name -> sample axis (int) or None (no sample axis)


class BatchingError(QGraphError):
    """Inputs whose samples cannot be found or split (sample counts, axes, shapes)."""


# -- parsing -----------------------------------------------------------------------------------
def parse_axis(value: Any, where: str) -> int | None:
    """One sample axis from an option or JSON value: an int >= 0, or ``none`` / ``-1`` / None."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
        return None
    if isinstance(value, bool):
        raise BatchingError(f"{where}: {value!r} is not an axis; give an integer >= 0, or none (-1) for no sample axis")
    try:
        k = int(value)
    except (TypeError, ValueError):
        raise BatchingError(f"{where}: {value!r} is not an axis; give an integer >= 0, or none (-1) "
                            "for no sample axis") from None
    if isinstance(value, float) and value != k:
        raise BatchingError(f"{where}: {value!r} is not an axis; give an integer >= 0, or none (-1)")
    if k < -1:
        raise BatchingError(f"{where}: axis {k} is out of range; give an integer >= 0, or none (-1) for no sample axis")
    return None if k == -1 else k


def parse_mapping(obj: Any, where: str) -> Axes:
    """``{name: axis}`` from JSON (a dict or a JSON string), values as in ``parse_axis``."""
    if isinstance(obj, (str, bytes, np.ndarray)):
        text = obj.item() if isinstance(obj, np.ndarray) else obj
        try:
            obj = json.loads(text)
        except (TypeError, ValueError) as e:
            raise BatchingError(f"{where}: not a JSON object of input name -> sample axis ({e})") from e
    if not isinstance(obj, Mapping):
        raise BatchingError(f"{where}: expected an object of input name -> sample axis, got {type(obj).__name__}")
    return {str(k): parse_axis(v, f"{where}: '{k}'") for k, v in obj.items()}


def axis_words(k: int | None) -> str:
    return "no sample axis" if k is None else f"axis {k}"


def combine(config: Mapping[str, int | None] | None, file: Mapping[str, int | None] | None,
            explicit: Mapping[str, int | None] | None, file_label: str = FILE_KEY) -> Axes:
    """The batch axes from the config, a data file's ``__batch_axes__`` and the options
    (``--batch-axis`` / ``batch_axes=``): later ones win over the config.

    Raises:
        BatchingError: the file and the options disagree about an input.
    """
    for name, k in (explicit or {}).items():
        if name in (file or {}) and file[name] != k:
            raise BatchingError(f"--batch-axis {name}={'none' if k is None else k}, but {file_label} lays '{name}' "
                                f"out with {axis_words(file[name])}; drop the option or fix the file")
    return {**(config or {}), **(file or {}), **(explicit or {})}


def source_axes(source: Any) -> Axes:
    """The batch axes a data source declares: the ``__batch_axes__`` entry of a ``.npz``,
    of the ``.npz`` files of a folder (they must agree), of a dict or of the first dict of a
    list; {} otherwise (the batches of other iterables are checked as they come)."""
    if isinstance(source, (list, tuple)) and source and isinstance(source[0], Mapping):
        source = source[0]  # a list of batches: the first says how they are laid out
    if isinstance(source, Mapping):
        return parse_mapping(source[FILE_KEY], FILE_KEY) if FILE_KEY in source else {}
    if not isinstance(source, (str, os.PathLike)):
        return {}
    path = os.fspath(source)
    if os.path.isdir(path):
        files = [os.path.join(path, f) for f in sorted(os.listdir(path)) if f.endswith(".npz")]
    else:
        files = [path] if path.endswith(".npz") and os.path.isfile(path) else []
    found: Axes = {}
    for f in files:
        try:
            with np.load(f, allow_pickle=False) as z:
                if FILE_KEY not in z.files:
                    continue
                given = parse_mapping(z[FILE_KEY], f"{f}: {FILE_KEY}")
        except NPZ_READ_ERRORS:
            continue  # an unreadable file is reported, with its name, where its data is read
        for name, k in given.items():
            if name in found and found[name] != k:
                raise BatchingError(f"{f}: {FILE_KEY} lays '{name}' out with {axis_words(k)}, an earlier file of "
                                    f"{path} with {axis_words(found[name])}; lay every file out the same way")
            found[name] = k
    return found


def parse_options(items: Sequence[str] | None) -> Axes:
    """``--batch-axis NAME=K`` options as ``{name: axis}``."""
    out: Axes = {}
    for item in items or ():
        name, sep, k = item.rpartition("=")
        if not sep or not name:
            raise BatchingError(f"--batch-axis {item}: expected NAME=K (K an axis >= 0, or none for no sample axis)")
        out[name] = parse_axis(k, f"--batch-axis {item}")
    return out


# -- a model's layout --------------------------------------------------------------------------
def fed_inputs(model) -> list:
    """The model's graph inputs that are fed (not initializers)."""
    return [v for v in model.graph.inputs if not v.is_initializer()]


def declared_axes(model) -> Axes:
    """The sample axes recorded in ``model``'s metadata (only the non-default ones)."""
    text = model.metadata_props.get(META_KEY)
    return parse_mapping(text, f"model metadata '{META_KEY}'") if text else {}


def default_axis(shape: Sequence | None) -> int | None:
    """Rank-0 inputs have no sample axis (there is no axis to hold samples); others axis 0."""
    return None if shape is not None and len(shape) == 0 else 0


def resolve(shapes: Mapping[str, Sequence | None], *explicit: Mapping[str, int | None] | None) -> Axes:
    """Every input's sample axis: the defaults, overridden by each mapping in turn (later
    ones win), checked against the inputs' ranks.

    Args:
        shapes: input name -> declared shape (None: unknown rank).

    Raises:
        BatchingError: a name that is not an input, or an axis out of the input's rank.
    """
    axes = {name: default_axis(s) for name, s in shapes.items()}
    for given in explicit:
        for name, k in (given or {}).items():
            if name not in shapes:
                raise BatchingError(f"batch axis for '{name}', which is not a model input; the inputs are "
                                    f"{', '.join(repr(n) for n in shapes)}")
            s = shapes[name]
            if k is not None and s is not None and k >= len(s):
                raise BatchingError(f"batch axis {k} of input '{name}' is out of range: the model declares it with "
                                    f"rank {len(s)} {list(s)}; give an axis in 0..{len(s) - 1}, or none")
            axes[name] = k
    return axes


def input_shapes(model) -> dict[str, tuple | None]:
    return {v.name: (tuple(v.shape) if v.shape is not None else None) for v in fed_inputs(model)}


def model_axes(model, *explicit: Mapping[str, int | None] | None) -> Axes:
    """The sample axis of each fed input of ``model``: defaults, then its metadata, then ``explicit``.
    Metadata naming an input the model no longer has (a pass removed an unused one) is ignored."""
    shapes = input_shapes(model)
    recorded = {k: v for k, v in declared_axes(model).items() if k in shapes}
    return resolve(shapes, recorded, *explicit)


def set_model_axes(model, axes: Mapping[str, int | None] | None) -> None:
    """Record ``axes`` (checked, merged over what ``model`` records) in its metadata, where the
    saved ONNX files, and so ``qgraph run`` / ``verify``, find them."""
    if not axes:
        return
    shapes = input_shapes(model)
    merged = {**{k: v for k, v in declared_axes(model).items() if k in shapes}, **axes}
    resolved = resolve(shapes, merged)
    kept = {k: v for k, v in resolved.items() if k in merged and v != default_axis(shapes[k])}
    if kept:
        model.metadata_props[META_KEY] = json.dumps(kept)
    else:
        model.metadata_props.pop(META_KEY, None)


def is_fixed(dim: Any) -> bool:
    """A static batch dim (exporters write -1 or 0 for "any")."""
    return isinstance(dim, (int, np.integer)) and not isinstance(dim, bool) and dim > 0


def fixed_batch(shapes: Mapping[str, Sequence | None], axes: Mapping[str, int | None]) -> int | None:
    """The batch size the model takes: the static dim at the inputs' sample axes (None:
    symbolic, any size).

    Raises:
        BatchingError: inputs whose static batch dims disagree.
    """
    sizes = {name: int(shapes[name][k]) for name, k in axes.items()
             if k is not None and shapes.get(name) is not None and is_fixed(shapes[name][k])}
    if len(set(sizes.values())) > 1:
        detail = ", ".join(f"'{n}' {b} (axis {axes[n]})" for n, b in sizes.items())
        raise BatchingError(f"the model's batch dims disagree: {detail} (each input's dim at its sample axis); "
                            "set the batch axes (--batch-axis NAME=K, none for an input that is the same for every "
                            "sample) or the input shapes")
    return next(iter(sizes.values()), None)


# -- samples -----------------------------------------------------------------------------------
def count(arrays: Mapping[str, np.ndarray], axes: Mapping[str, int | None], where: str = "inputs") -> int | None:
    """The number of samples in ``arrays`` (None: no input has a sample axis).

    Raises:
        BatchingError: an axis beyond an array's rank, or inputs holding different counts.
    """
    counts = {}
    for name, a in arrays.items():
        k = axes.get(name, default_axis(a.shape))
        if k is None:
            continue
        if k >= a.ndim:
            raise BatchingError(f"{where}: input '{name}' has shape {list(a.shape)}, no axis {k} to hold its samples; "
                                "give the array its sample axis, or set the input's batch axis (--batch-axis "
                                f"{name}=K, none for no sample axis)")
        counts[name] = int(a.shape[k])
    if len(set(counts.values())) > 1:
        detail = ", ".join(f"'{n}' {c} (axis {axes.get(n, 0)})" for n, c in counts.items())
        raise BatchingError(f"{where}: the inputs hold different sample counts: {detail}; give every input the same "
                            "number of samples, or set the batch axes (--batch-axis NAME=K, none for an input "
                            "that is the same for every sample)")
    return next(iter(counts.values()), None)


def take(arrays: Mapping[str, np.ndarray], axes: Mapping[str, int | None], start: int, stop: int,
         pad_to: int | None = None) -> dict[str, np.ndarray]:
    """Samples ``start:stop`` of every input (inputs without a sample axis whole); with
    ``pad_to``, padded to that many samples with copies of the last one."""
    out = {}
    for name, a in arrays.items():
        k = axes.get(name, default_axis(a.shape))
        if k is None:
            out[name] = a
            continue
        part = _slice(a, k, start, stop)
        if pad_to is not None and stop - start < pad_to:
            last = _slice(a, k, stop - 1, stop)
            part = np.concatenate([part] + [last] * (pad_to - (stop - start)), axis=k)
        out[name] = part
    return out


def _slice(a: np.ndarray, axis: int, start: int, stop: int) -> np.ndarray:
    index = [slice(None)] * a.ndim
    index[axis] = slice(start, stop)
    return a[tuple(index)]


def join(parts: Sequence[Mapping[str, np.ndarray]], axes: Mapping[str, int | None],
         where: str = "inputs") -> dict[str, np.ndarray]:
    """Feeds of several groups of samples as one: concatenated on each input's sample axis;
    an input without one must be the same in every group.

    Raises:
        BatchingError: an input without a sample axis that differs between the groups.
    """
    if len(parts) == 1:
        return dict(parts[0])
    out = {}
    for name, first in parts[0].items():
        k = axes.get(name, default_axis(first.shape))
        if k is None:
            if any(not np.array_equal(p[name], first) for p in parts[1:]):
                raise BatchingError(f"{where}: input '{name}' has no sample axis but differs between the batches "
                                    "that make up one model batch; keep it the same, or give it a sample axis "
                                    f"(--batch-axis {name}=K)")
            out[name] = first
        else:
            out[name] = np.concatenate([p[name] for p in parts], axis=k)
    return out


def regroup(stream: Iterable[Mapping[str, np.ndarray]], axes: Mapping[str, int | None], size: int,
            where: str = "inputs") -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """Feeds of exactly ``size`` samples from feeds of any size (the last may be short).
    Yields (sample count, feeds). Feeds without any sample axis count as one sample."""
    pending: list[dict[str, np.ndarray]] = []
    have = 0
    for feeds in stream:
        n = count(feeds, axes, where)
        if n is None:
            yield 1, dict(feeds)
            continue
        if n == 0:
            continue
        pending.append(dict(feeds))
        have += n
        while have >= size:
            merged = join(pending, axes, where)
            yield size, take(merged, axes, 0, size)
            have -= size
            pending = [take(merged, axes, size, size + have)] if have else []
    if have:
        yield have, join(pending, axes, where)


# -- running -----------------------------------------------------------------------------------
def check_feeds(feeds: Mapping[str, np.ndarray], shapes: Mapping[str, Sequence | None],
                axes: Mapping[str, int | None], what: str) -> dict[str, np.ndarray]:
    """``feeds`` as arrays, one per input, each of the input's rank and static dims (the
    sample axis excepted).

    Raises:
        BatchingError: a missing input, or an array of the wrong rank or dims (names the
            input, the expected and given shapes).
    """
    missing = [n for n in shapes if n not in feeds]
    if missing:
        raise BatchingError(f"{what}: no array for input '{missing[0]}'; the model's inputs are "
                            f"{', '.join(repr(n) for n in shapes)}")
    arrays = {}
    for name, declared in shapes.items():
        a = np.asarray(feeds[name])
        k = axes.get(name)
        if declared is not None:
            shown = "[" + ",".join(str(d) if is_fixed(d) else "?" for d in declared) + "]"
            layout = f"samples on axis {k}" if k is not None else "no sample axis: the same for every sample"
            if a.ndim != len(declared):
                raise BatchingError(f"{what}: input '{name}' has shape {list(a.shape)} (rank {a.ndim}); the model "
                                    f"takes {shown} ({layout}); give an array of rank {len(declared)}, or set its "
                                    f"batch axis (--batch-axis {name}=K, none for no sample axis)")
            bad = [i for i, d in enumerate(declared) if i != k and is_fixed(d) and a.shape[i] != d]
            if bad:
                raise BatchingError(f"{what}: input '{name}' has shape {list(a.shape)}; the model takes {shown} "
                                    f"({layout}): axis {bad[0]} must be {declared[bad[0]]}")
        arrays[name] = a
    return arrays


def check_finite(arrays: Mapping[str, np.ndarray], axes: Mapping[str, int | None], where: str,
                 first: int = 0) -> None:
    """Refuse NaN / Inf in float inputs, naming the input and the first sample that holds one
    (``first`` numbers the arrays' first sample): a quantized model has no code for them
    (QuantizeLinear makes NaN 0 in ONNX Runtime, silently), and the error would otherwise
    name the internal Quantize node that met it.

    Raises:
        BatchingError: ``where: input 'x' sample 17 contains NaN; ...``.
    """
    for name, a in arrays.items():
        a = np.asarray(a)
        if a.dtype.kind != "f" or np.isfinite(a).all():
            continue
        bad = "NaN" if np.isnan(a).any() else "Inf"
        k = axes.get(name, default_axis(a.shape))
        if k is None or k >= a.ndim:
            raise BatchingError(f"{where}: input '{name}' (the same for every sample) contains {bad}; fix it")
        other = tuple(i for i in range(a.ndim) if i != k)
        sample = first + int(np.argmax(~np.isfinite(a).all(axis=other)))
        raise BatchingError(f"{where}: input '{name}' sample {sample} contains {bad}; a quantized model cannot take "
                            "it: remove or fix that sample")


def run_in_batches(run: Callable[[dict], Mapping[str, np.ndarray]], feeds: Mapping[str, np.ndarray],
                   shapes: Mapping[str, Sequence | None], axes: Mapping[str, int | None], *,
                   output_axes: Mapping[str, int] | Callable[[], Mapping[str, int]] | None = None,
                   what: str = "run",
                   chunk: int = CHUNK) -> dict[str, np.ndarray]:
    """Run ``run`` on feeds of any number of samples, in batches the model takes.

    The batch is the static dim at the inputs' sample axes (``fixed_batch``), or ``chunk``
    samples where it is symbolic. A short last batch of a fixed size is padded with copies
    of its last sample and their outputs dropped (samples are computed independently, so the
    padding changes none of the kept outputs). Inputs without a sample axis go whole to every
    batch. Outputs are concatenated on their sample axis: ``output_axes[name]`` where given
    (``probe_output_axes``), else the one axis whose size is the batch's.

    Args:
        run: runs one batch: ``{input: array} -> {output: array}``.
        feeds: one array per input (``shapes``' names), samples laid out as ``axes`` says.
        shapes: input name -> the declared (or compiled) shape.
        axes: input name -> sample axis or None (``model_axes``).
        output_axes: output name -> sample axis, where known; or a function giving it,
            called only when the samples are split (``probe_output_axes`` costs a shape
            inference).
        what: names the backend in errors.

    Raises:
        BatchingError: feeds that do not fit (see ``check_feeds``, ``count``), or an output
            whose sample axis cannot be told.
    """
    arrays = check_feeds(feeds, shapes, axes, what)
    n = count(arrays, axes, what)
    batch = fixed_batch(shapes, axes)
    size = batch or max(1, int(chunk))
    if n is None or n == batch or (batch is None and n <= size):
        return dict(run(arrays))
    if n == 0:
        raise BatchingError(f"{what}: the inputs hold no samples")
    known = (output_axes() if callable(output_axes) else output_axes) or {}
    parts: dict[str, list[np.ndarray]] = {}
    out_axes: dict[str, int] = {}
    with Progress(what, total=n) as progress:
        for start in range(0, n, size):
            stop = min(start + size, n)
            outs = run(take(arrays, axes, start, stop, pad_to=batch))
            ran = batch or stop - start
            for name, y in outs.items():
                y = np.asarray(y)
                if name not in out_axes:
                    out_axes[name] = _output_axis(name, y, ran, known.get(name), axes, n, what)
                parts.setdefault(name, []).append(_slice(y, out_axes[name], 0, stop - start))
            progress.advance(stop - start)
    return {name: np.concatenate(ys, axis=out_axes[name]) for name, ys in parts.items()}


def _output_axis(name: str, y: np.ndarray, ran: int, hint: int | None, axes: Mapping[str, int | None],
                 n: int, what: str) -> int:
    """The sample axis of output ``name`` from a run of ``ran`` samples."""
    if hint is not None and hint < y.ndim and y.shape[hint] == ran:
        return hint
    candidates = [k for k, d in enumerate(y.shape) if d == ran]
    if len(candidates) == 1:
        return candidates[0]
    shared = {k for k in axes.values() if k is not None}
    if len(shared) == 1 and shared <= set(candidates):
        return shared.pop()
    why = (f"no axis of its shape {list(y.shape)} is the batch's {ran}" if not candidates else
           f"axes {candidates} of its shape {list(y.shape)} all match the batch's {ran}")
    raise BatchingError(f"{what}: cannot tell which axis of output '{name}' holds the samples ({why}); "
                        f"give the model a symbolic batch dim there, or run the {n} samples as one batch")


def probe_output_axes(model, axes: Mapping[str, int | None]) -> dict[str, int]:
    """Each output's sample axis, found by ONNX shape inference with the inputs' sample axes
    made one symbolic dim: an output whose shape carries that dim once has it there. Outputs
    it cannot tell (shape inference gave up, a reshape fixed the batch) are left out; at run
    time ``run_in_batches`` then looks for the axis of the batch's size."""
    import onnx

    from qgraph.onnx.exporter import to_proto

    try:
        proto = to_proto(model)
    except Exception:  # a model ONNX cannot express (qgraph-domain ops): left to the run-time rule
        return {}
    del proto.graph.value_info[:]
    for o in proto.graph.output:
        if o.type.HasField("tensor_type"):
            o.type.tensor_type.ClearField("shape")
    for i in proto.graph.input:
        k = axes.get(i.name)
        dims = i.type.tensor_type.shape.dim if i.type.HasField("tensor_type") else []
        if k is not None and k < len(dims):
            dims[k].Clear()
            dims[k].dim_param = _PROBE_DIM
    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception:  # onnx gives up on the whole model: fall back to the run-time rule
        return {}
    found = {}
    for o in inferred.graph.output:
        dims = [d.dim_param for d in o.type.tensor_type.shape.dim]
        if dims.count(_PROBE_DIM) == 1:
            found[o.name] = dims.index(_PROBE_DIM)
    return found


def run_model(model, run: Callable[[dict], Mapping[str, np.ndarray]], feeds: Mapping[str, np.ndarray], *,
              what: str, shapes: Mapping[str, Sequence | None] | None = None, probe=None) -> dict[str, np.ndarray]:
    """``run_in_batches`` with the layout ``model`` records (``model_axes``).

    Args:
        model: the model whose inputs and metadata give the layout.
        shapes: the shapes the backend takes (a TVM build's static shapes); default: the
            model's declared ones.
        probe: the model whose outputs ``probe_output_axes`` reads (default ``model``): give the
            float model where ``model`` holds ops ONNX shape inference does not know.
    """
    axes = model_axes(model)
    shapes = dict(shapes) if shapes is not None else input_shapes(model)
    return run_in_batches(run, feeds, shapes, axes, what=what,
                          output_axes=lambda: probe_output_axes(probe if probe is not None else model, axes))


def sample_count(model, feeds: Mapping[str, np.ndarray]) -> int:
    """The number of samples in ``feeds`` laid out as ``model`` records (1 where no input
    has a sample axis)."""
    axes = model_axes(model)
    n = count({k: np.asarray(v) for k, v in feeds.items() if k in axes}, axes)
    return 1 if n is None else n


def describe(shapes: Mapping[str, Sequence | None], axes: Mapping[str, int | None], n: int) -> str:
    """How ``run_in_batches`` splits ``n`` samples for a model of these inputs, in words."""
    batch = fixed_batch(shapes, axes)
    if batch is None:
        return f"{n} samples" + (f" in {-(-n // CHUNK)} runs of up to {CHUNK}" if n > CHUNK else "")
    if n == batch:
        return f"batch {batch}"
    runs, pad = -(-n // batch), -n % batch
    return (f"batch {batch}: {n} samples in {runs} runs"
            + (f", the last padded with {pad} copies of its last sample, dropped from the outputs" if pad else ""))
