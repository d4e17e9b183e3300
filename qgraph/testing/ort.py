"""Run models in ONNX Runtime and compare outputs exactly."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import onnx


def session(model: "onnx.ModelProto | bytes | str", *, optimize: bool = True, **options: str):
    """A CPU ONNX Runtime session with the given session config entries.

    Args:
        optimize: ONNX Runtime's default graph optimizations; off, every node runs as
            written (what an oracle for qgraph's own rewrites needs: ORT's fusions have
            preconditions of their own, e.g. its Relu+Clip fusion raises Clip's min to 0
            and then refuses a Clip whose max is below 0).
    """
    import onnxruntime as ort

    from qgraph.ort import cpu_session

    ort.set_default_logger_severity(4)
    return cpu_session(model, optimize=optimize, log_severity=4, config=options)


def run(model, feeds: dict[str, Any]) -> list[Any]:
    """The model's outputs from ONNX Runtime with graph optimizations off: the ops as written
    are the semantics qgraph's passes must keep, not what ORT's own rewrites make of them."""
    sess = session(model, optimize=False)
    return sess.run(None, feeds)


def run_first_output(model: Any, x: np.ndarray, batch_size: int) -> np.ndarray:
    """The model's first output on ``x`` (float32, samples on axis 0), ``batch_size`` samples per
    run, concatenated. ``model``: a path, bytes or ModelProto (harness models: rec, detector)."""
    if isinstance(model, str):
        with open(model, "rb") as f:
            model = f.read()
    sess = session(model)
    name = sess.get_inputs()[0].name
    x = np.asarray(x, np.float32)
    return np.concatenate([sess.run(None, {name: x[i:i + batch_size]})[0] for i in range(0, len(x), batch_size)])


def random_feeds(model: onnx.ModelProto, seed: int = 0, batch: int = 1) -> dict[str, np.ndarray]:
    """Random inputs for a model's tensor inputs (symbolic dims become ``batch``)."""
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else batch for d in tt.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        if np.issubdtype(dtype, np.floating):
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[vi.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            feeds[vi.name] = rng.integers(0, 10, shape).astype(dtype)
    return feeds


def same(a: Any, b: Any) -> str | None:
    """None if ``a`` and ``b`` are identical outputs (dtype, shape, values; NaN == NaN), else why not."""
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        if not isinstance(a, (list, tuple)) or not isinstance(b, (list, tuple)):
            return f"kind differs: {type(a).__name__} vs {type(b).__name__}"
        if len(a) != len(b):
            return f"sequence length {len(a)} vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            why = same(x, y)
            if why:
                return f"[{i}]: {why}"
        return None
    if a is None or b is None:
        return None if a is None and b is None else "one output is None"
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype:
        return f"dtype {a.dtype} vs {b.dtype}"
    if a.shape != b.shape:
        return f"shape {a.shape} vs {b.shape}"
    if a.dtype.kind in "fc":
        ok = np.array_equal(a, b, equal_nan=True)
    else:
        ok = np.array_equal(a, b)
    return None if ok else f"values differ (max |diff| {_maxdiff(a, b)})"


def _maxdiff(a: np.ndarray, b: np.ndarray) -> str:
    try:
        return str(np.nanmax(np.abs(a.astype(np.float64) - b.astype(np.float64))))
    except (TypeError, ValueError):
        return "n/a"


def compare_all(ref: Sequence[Any], got: Sequence[Any], names: Sequence[str]) -> str | None:
    if len(ref) != len(got):
        return f"{len(ref)} outputs vs {len(got)}"
    for name, r, g in zip(names, ref, got):
        why = same(r, g)
        if why:
            return f"output '{name}': {why}"
    return None


def max_rel_error(ref: Sequence[Any], got: Sequence[Any]) -> float:
    """max over outputs of max|ref - got| / max|ref| (0 for identical outputs; inf on shape mismatch)."""
    worst = 0.0
    for r, g in zip(ref, got):
        r, g = np.asarray(r, np.float64), np.asarray(g, np.float64)
        if r.shape != g.shape:
            return float("inf")
        if r.size == 0:
            continue
        scale = float(np.max(np.abs(r))) or 1.0
        worst = max(worst, float(np.max(np.abs(r - g))) / scale)
    return worst
