"""The Python API of post-training quantization, mirroring ``qgraph compile / run / verify``.

    import qgraph
    q = qgraph.quantize("model.onnx", "calib.npz", method="minmax")
    q.save("out/")                    # model.qdq.onnx, model.qgraph.onnx, report.json, report.md
    y = q.run({"input": x})            # the integer reference interpreter (L3)
    print(q.report.markdown())
    q.build(target="cpu", batch_size=1)  # TVM: the L3 model compiled for this CPU
    y = q.run({"input": x}, backend="tvm")
    q.save("out/")                     # ... and tvm/model.so + tvm/model.json

The steps: import the float model, ``canonicalize,fuse`` (L1), ``calibrate`` on the data,
``insert-qdq`` from the config (L2: standard QDQ), ``lower-qdq`` (L3: integer ops), each run
by the pass manager under one ``PassContext`` (``quantize(..., context=)``; the steps are
``qgraph.passes.QUANTIZE_STAGES``). The float L1 model is kept: a quantized model is always
judged against its float original.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from qgraph import batching
from qgraph.backends import BACKENDS, run_backend, run_batched
from qgraph.compiled import (
    CONFIG_FILE,
    FLOAT_FILE,
    L3_FILE,
    QDQ_FILE,
    RANGES_FILE,
    REPORT_HTML,
    REPORT_JSON,
    REPORT_MD,
    TVM_DIR,
    CompiledDir,
    remove_build,
)
from qgraph.errors import QGraphError
from qgraph.ir.core import Model
from qgraph.ort import run_ort
from qgraph.progress import stage

if TYPE_CHECKING:
    from qgraph.pm import PassContext

#: The names this module re-exports from where they are defined (``qgraph.compiled``: the
#: folder format; ``qgraph.backends``: the dispatch; ``qgraph.ort``: ONNX Runtime), so that
#: ``from qgraph.api import CompiledDir, run_ort, FLOAT_FILE`` keeps working.
__all__ = [
    "BACKENDS", "CONFIG_FILE", "FLOAT_FILE", "L3_FILE", "QDQ_FILE", "RANGES_FILE", "REPORT_HTML",
    "REPORT_JSON", "REPORT_MD", "TVM_DIR", "CompiledDir", "QGraphError", "QuantizedModel", "clone",
    "golden_integer_outputs", "quantize", "quantize_pipelines", "remove_build", "run_batched", "run_ort",
    "set_input_shapes",
]




def _load(model: Any) -> Model:
    from qgraph.onnx import from_proto, load

    if isinstance(model, Model):
        return model
    if isinstance(model, (str, os.PathLike)):
        return load(os.fspath(model))
    import onnx

    if isinstance(model, onnx.ModelProto):
        return from_proto(model)
    raise QGraphError(f"cannot read a model from {type(model).__name__}; give a path, an onnx.ModelProto or a qgraph Model")


def set_input_shapes(model: Model, shapes: Mapping[str, Any]) -> None:
    """Give the graph inputs named in ``shapes`` those static dims (a declared static dim must
    agree; a symbolic one takes the given value). Later shape inference refines the graph."""
    from qgraph.ir import TensorType

    inputs = {v.name: v for v in model.graph.inputs if v.name not in model.graph.initializers}
    for name, dims in shapes.items():
        v = inputs.get(name)
        if v is None:
            raise QGraphError(f"input shape for '{name}', which is not a graph input; the inputs are "
                              f"{', '.join(repr(n) for n in inputs)}")
        try:
            dims = tuple(int(d) for d in dims)
        except (TypeError, ValueError):
            raise QGraphError(f"input shape for '{name}': {dims!r} is not a list of integers") from None
        if any(d < 1 for d in dims):
            raise QGraphError(f"input shape for '{name}': {list(dims)} has a dim below 1")
        declared = v.type.shape if isinstance(v.type, TensorType) else None
        if declared is not None:
            if len(declared) != len(dims):
                raise QGraphError(f"input shape for '{name}': {list(dims)} has rank {len(dims)}; the model "
                                  f"declares {v.type} (rank {len(declared)})")
            clash = [i for i, (d, g) in enumerate(zip(declared, dims)) if isinstance(d, int) and d >= 0 and d != g]
            if clash:
                raise QGraphError(f"input shape for '{name}': {list(dims)} disagrees with the model's {v.type} "
                                  f"at dim {clash[0]}")
        v.type = TensorType(v.type.dtype, dims)


def clone(model: Model) -> Model:
    """``model.clone()``: a copy sharing nothing mutable (``qgraph.ir.Model.clone``)."""
    return model.clone()


def _config(config: Any):
    from qgraph.quant.config import QuantConfig

    if config is None:
        return QuantConfig()
    if isinstance(config, QuantConfig):
        return config
    if isinstance(config, (str, os.PathLike)):
        return QuantConfig.load(os.fspath(config))
    if isinstance(config, Mapping):
        return QuantConfig.from_json(config)
    raise QGraphError(f"cannot read a quantization config from {type(config).__name__}")


@dataclass
class QuantizedModel:
    """The three levels of one quantized model, and what made them.

    Attributes:
        float_model: L1, the float model after canonicalize and fusion (the reference).
        qdq: L2, the float model with QuantizeLinear / DequantizeLinear (standard QDQ ONNX).
        integer: L3, integer ops in the qgraph domain (what the reference and TVM run).
        ranges: the calibrated ranges the scales came from.
        config: the quantization config used.
        report: per-layer dtypes, scales and SQNR, output metrics, warnings and the float ops
            left (``qgraph.verify.report``), when computed.
        compiled: the last TVM build (``build``), a ``qgraph.tvm.Compiled``, or None.
        precision: the mixed-precision search (``qgraph.precision.PrecisionResult``) when
            ``quantize(precision="auto")`` chose the config, else None.
    """

    float_model: Model
    qdq: Model
    integer: Model
    ranges: Any
    config: Any
    report: Any = None
    compiled: Any = None
    precision: Any = None
    _interpreter: Any = field(default=None, repr=False)

    def build(self, target: str = "cpu", batch_size: int = 1,
              input_shapes: Mapping[str, Any] | None = None):
        """Compile the L3 model with TVM for ``target`` (static shapes) and keep it for
        ``run(..., backend="tvm")`` and ``save``.

        Args:
            target: a ``qgraph.targets`` name: ``cpu`` (this host) or ``aarch64`` (cross
                compiled: it exports, it does not run here).
            batch_size: the leading dim of inputs whose declared leading dim is symbolic.
            input_shapes: full static shapes of inputs with other symbolic dims
                (e.g. ``{"x": [1, 3, 48, 320]}``).

        Returns:
            The ``qgraph.tvm.Compiled`` (also kept as ``self.compiled``).

        Raises:
            QGraphError: the target is unknown, or the model cannot be lowered (the error names
                the node and op).
        """
        from qgraph import tvm as qtvm

        if int(batch_size) < 1:
            raise QGraphError(f"batch_size {batch_size}: must be at least 1")
        self.compiled = qtvm.build(self.integer, target, batch_size=int(batch_size), input_shapes=input_shapes)
        return self.compiled

    def run(self, feeds: Mapping[str, np.ndarray], backend: str = "reference") -> dict[str, np.ndarray]:
        """Run the quantized model on any number of samples.

        Args:
            feeds: one array per model input, samples on each input's sample axis (axis 0
                unless the model's batch axes say otherwise; see ``qgraph.batching``).
            backend: ``reference`` (L3, numpy integer interpreter), ``ort`` (the QDQ export
                in ONNX Runtime as it runs by default), ``ort-sim`` (the QDQ export with
                ``session.disable_quant_qdq``: float simulation of the quantization) or
                ``tvm`` (the TVM build of ``build``). Every backend runs in batches of the
                size the model (or build) takes: ``qgraph.batching.run_in_batches``.

        Raises:
            QGraphError: unknown backend, ``tvm`` without a build, or feeds that do not fit
                (NaN / Inf included: ``batching.check_finite``).
        """
        if backend == "reference" and self._interpreter is None:
            from qgraph.backends import interpreter

            self._interpreter = interpreter(self.integer)
        return run_backend(backend, feeds, float_model=self.float_model, qdq=self.qdq, integer=self.integer,
                           compiled=self.compiled, reference=self._interpreter)

    def export_qdq(self, path: str) -> None:
        from qgraph.onnx import save

        save(self.qdq, path)

    def export_integer(self, path: str) -> None:
        from qgraph.onnx import save

        save(self.integer, path)

    def export_build(self, outdir: str) -> str:
        """Export the TVM build into ``outdir/tvm/`` (``Compiled.export``: ``model.so``, or
        ``model.tar`` for a target without a linker here, and ``model.json``).

        Returns:
            The library path.

        Raises:
            QGraphError: there is no build.
        """
        if self.compiled is None:
            raise QGraphError("no TVM build to export; call build(target=...) first")
        folder = os.path.join(outdir, TVM_DIR)
        remove_build(outdir)  # a stale model.so next to a new model.tar would be loaded by mistake
        return self.compiled.export(folder)

    def save(self, outdir: str) -> None:
        """Write the float, QDQ and L3 models, the ranges, the config and the report into
        ``outdir``; and the TVM build into ``outdir/tvm/`` if there is one (a build left there
        by an earlier save is removed otherwise: it would not match these models)."""
        from qgraph.onnx import save

        os.makedirs(outdir, exist_ok=True)
        save(self.float_model, os.path.join(outdir, FLOAT_FILE))
        save(self.qdq, os.path.join(outdir, QDQ_FILE))
        save(self.integer, os.path.join(outdir, L3_FILE))
        self.ranges.save(os.path.join(outdir, RANGES_FILE))
        with open(os.path.join(outdir, CONFIG_FILE), "w") as f:
            json.dump(self.config.to_json(), f, indent=2)
        if self.report is not None:
            with open(os.path.join(outdir, REPORT_JSON), "w") as f:
                json.dump(self.report.to_json(), f, indent=2)
            with open(os.path.join(outdir, REPORT_MD), "w") as f:
                f.write(self.report.markdown())
            with open(os.path.join(outdir, REPORT_HTML), "w") as f:
                f.write(self.report.html())
        if self.compiled is not None:
            self.export_build(outdir)
        else:
            remove_build(outdir)


def quantize(model: Any, calib: Any, config: Any = None, *, method: str = "minmax",
             method_options: Mapping[str, Any] | None = None, report: bool = True,
             report_samples: int = 8, show_progress: bool | None = None,
             input_shapes: Mapping[str, Any] | None = None,
             batch_axes: Mapping[str, Any] | None = None, eval: Any = None,
             context: "PassContext | None" = None, precision: str | None = None, accuracy: Any = None,
             budget: Any = None, executor: Any = None,
             precision_options: Mapping[str, Any] | None = None) -> QuantizedModel:
    """Post-training quantization of ``model`` on calibration data ``calib``.

    Args:
        model: a path, an ``onnx.ModelProto`` or a qgraph ``Model`` (not modified).
        calib: calibration data: a ``.npz``, a folder of ``.npz`` / ``.npy``, or an iterable
            of ``{input name: array}`` (see ``qgraph.calib.data``).
        config: a ``QuantConfig``, its JSON dict, or a path to a JSON file (None: defaults,
            uint8 activations per tensor, int8 symmetric per-channel weights, int32 bias).
        method: calibration method (``minmax``, ``percentile``, ``entropy``, ``mse``).
        method_options: options of the method (``percentile``, ``num_bins``, ``bits``).
        report: compute the report (``qgraph.verify.report``): per-layer SQNR against float
            on ``report_samples`` samples, output metrics, warnings (``report.warnings``).
        eval: held-out data (an .npz path or ``{input name: array}``, optionally with
            ``labels``): the report's output metrics are measured on it, as ``qgraph verify``
            measures them; without it they are in-sample, on calibration data.
        input_shapes: static shapes of graph inputs (name -> dims) for a model declared with
            symbolic dims: shapes are inferred through the graph before quantization, so
            that shape-dependent integer forms apply (a GlobalAveragePool folds a static
            spatial size into its multiplier; with symbolic dims it divides by the count at
            run time, ``qgraph.ir.l3``).
        context: the ``qgraph.pm.PassContext`` every step runs under (instruments such as
            ``PassTimings`` / ``DumpIR``, ``verify_each``); default: a plain one. The steps are
            ``qgraph.passes.QUANTIZE_STAGES`` (``quantize_pipelines``), each run by the pass manager.
        precision: None (the config decides every layer's types) or ``"auto"``: each layer's
            format (W8A8, W8A16, W4A8 or float) chosen from measured sensitivity on the
            calibration data (``qgraph.precision.choose_precision``), between calibration and
            insert-qdq; the chosen config replaces ``config`` (``result.config``) and the search
            is ``result.precision``.
        accuracy: the floor for ``precision="auto"``: ``"top1>=0.998"``, ``"sqnr>=30"``,
            ``"cosine>=0.999"``, ``"kl<=0.01"``, a callable ``(float_outputs, quantized_outputs) -> bool``, or
            None (``auto``).
        budget: ``"bytes=N"`` / ``"bops=N"``: instead of a floor, the most accurate assignment
            within this cost.
        executor: where the sensitivity probes run: None (this process), ``"ray"``,
            ``"ray=ADDRESS"``.
        precision_options: further ``choose_precision`` keywords (``formats``, ``samples``,
            ``verify_samples``, ``cost_kind``, ``cache``).
    """
    from qgraph.passes.calibrate import Calibrate
    from qgraph.pm import PassContext, PassManager

    cfg = _config(config)
    float_model = clone(_load(model))
    if input_shapes:
        set_input_shapes(float_model, input_shapes)
    cfg = _with_batch_axes(cfg, float_model, calib, batch_axes)
    declared = {v.name: v.shape for v in float_model.graph.outputs}  # before shape inference refines them
    held_out = None
    if report and eval is not None:  # bad eval data fails before the minutes of calibration
        from qgraph.verify.data import load_eval

        held_out = load_eval(eval, float_model)
    if precision not in (None, "auto"):
        raise QGraphError(f"precision '{precision}': use 'auto', or leave it out and set types in the config")
    ctx = context if context is not None else PassContext()
    steps = quantize_pipelines(cfg, calib, method, method_options, show_progress=show_progress)
    levels = {"float": float_model}
    current = "float"
    chosen = None
    for k, (level, text, pipeline) in enumerate(steps):
        if level != "float" and precision == "auto" and chosen is None:
            chosen = _choose_precision(float_model, cfg, calib, accuracy, budget, executor, precision_options,
                                       show_progress)
            cfg = chosen.config
            steps[k:] = [s for s in quantize_pipelines(cfg, calib, method, method_options,
                                                       show_progress=show_progress) if s[0] != "float"]
            level, text, pipeline = steps[k]
        if level != current:  # the next level starts from a copy: the one before is kept
            levels[level] = clone(levels[current])
            current = level
        if _find_pass([(level, text, pipeline)], Calibrate) is not None:  # calibrate shows its own progress
            PassManager(pipeline, ctx).run(levels[level])
            continue
        with stage(text, enabled=show_progress):
            PassManager(pipeline, ctx).run(levels[level])
    ranges = float_model.calibration
    result = QuantizedModel(float_model, levels["qdq"], levels["integer"], ranges, cfg)
    result.precision = chosen
    if report:
        from qgraph.verify.report import build_report

        with stage("report", enabled=show_progress):
            result.report = build_report(result, calib, samples=report_samples, eval=held_out,
                                         model_path=os.path.abspath(model) if isinstance(model, (str, os.PathLike)) else None,
                                         declared_outputs=declared)
    return result


def _choose_precision(float_model: Model, cfg, calib: Any, accuracy: Any, budget: Any, executor: Any,
                      options: Mapping[str, Any] | None, show_progress: bool | None):
    """``qgraph.precision.choose_precision`` on the calibration data as arrays."""
    from qgraph.precision import choose_precision
    from qgraph.verify.data import read_feeds

    feeds, _ = read_feeds(calib, float_model, "the calibration data")
    return choose_precision(float_model, cfg, feeds, accuracy=accuracy, budget=budget, executor=executor,
                            show_progress=show_progress, **dict(options or {}))


def quantize_pipelines(config: Any, calib: Any, method: str = "minmax",
                       method_options: Mapping[str, Any] | None = None, *,
                       show_progress: bool | None = None) -> list[tuple[str, str, Any]]:
    """The steps of ``quantize``: ``qgraph.passes.QUANTIZE_STAGES`` parsed, with ``calibrate``
    given the data, method and options, and ``insert-qdq`` the config.

    Returns:
        (level, pipeline text, ``qgraph.pm.Pipeline``) in order; the level (``float``, ``qdq``,
        ``integer``) names the model the pipeline runs on (``quantize`` clones where it changes).
    """
    from qgraph.passes import QUANTIZE_STAGES, registry
    from qgraph.passes.calibrate import Calibrate
    from qgraph.passes.insert_qdq import InsertQDQ
    from qgraph.pm import Pipeline

    reg = registry()

    def configured(p):
        if isinstance(p, Calibrate):
            return Calibrate.with_options(method, calib, dict(method_options or {}), show_progress=show_progress)
        if isinstance(p, InsertQDQ):
            return InsertQDQ.from_config(_config(config))
        return p

    return [(level, text, Pipeline([configured(p) for p in reg.parse(text)])) for level, text in QUANTIZE_STAGES]


def _find_pass(steps, cls):
    """The first pass of class ``cls`` at the top level of ``steps``' pipelines, or None."""
    return next((p for _, _, pipeline in steps for p in pipeline if isinstance(p, cls)), None)


def _with_batch_axes(cfg, model: Model, calib: Any, batch_axes: Mapping[str, Any] | None):
    """Record the batch axes (config, then the data's ``__batch_axes__``, then ``batch_axes``)
    in ``model``'s metadata; return the config holding them (for ``config.json``)."""
    from dataclasses import replace

    given = {k: batching.parse_axis(v, f"batch_axes['{k}']") for k, v in (batch_axes or {}).items()}
    axes = batching.combine(cfg.batch_axes, batching.source_axes(calib), given)
    batching.set_model_axes(model, axes)
    return replace(cfg, batch_axes=axes) if axes != cfg.batch_axes else cfg


def golden_integer_outputs(model_path: str, calib_path: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The golden recipe (``golden/generate.py``): default config (uint8 activations, int8
    per-channel weights, bias correction), minmax calibration; the L3 model's outputs on
    ``inputs`` from the reference interpreter."""
    q = quantize(model_path, calib_path, method="minmax", report=False, show_progress=False)
    return q.run(inputs, "reference")
