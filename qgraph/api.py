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
from qgraph.errors import QGraphError
from qgraph.ir.core import Model
from qgraph.progress import stage

if TYPE_CHECKING:
    from qgraph.pm import PassContext

#: Files ``QuantizedModel.save`` writes into its folder.
FLOAT_FILE = "model.float.onnx"
QDQ_FILE = "model.qdq.onnx"
L3_FILE = "model.qgraph.onnx"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
RANGES_FILE = "ranges.json"
CONFIG_FILE = "config.json"
#: The subfolder ``save`` exports a TVM build into (``qgraph.tvm.load`` reads it).
TVM_DIR = "tvm"

BACKENDS = ("reference", "ort", "ort-sim", "tvm")


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
    """A deep copy through the ONNX form (lossless: qgraph-domain ops stay as they are),
    keeping the range fields."""
    from qgraph.onnx import from_proto, to_proto

    copy = from_proto(to_proto(model, decompose=False))
    copy.input_ranges = dict(model.input_ranges)
    copy.calibration = model.calibration
    return copy


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
    """

    float_model: Model
    qdq: Model
    integer: Model
    ranges: Any
    config: Any
    report: Any = None
    compiled: Any = None
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
        if backend in BACKENDS:
            batching.check_finite(feeds, batching.model_axes(self.integer), f"backend '{backend}'")
        if backend == "reference":
            from qgraph.reference import Interpreter

            if self._interpreter is None:
                self._interpreter = Interpreter(self.integer)
            return batching.run_model(self.integer, self._interpreter.run, feeds, what="backend 'reference'",
                                      probe=self.float_model)
        if backend in ("ort", "ort-sim"):
            return run_ort(self.qdq, feeds, simulate=backend == "ort-sim", probe=self.float_model,
                           what=f"backend '{backend}'")
        if backend == "tvm":
            if self.compiled is None:
                raise QGraphError("backend 'tvm': this model has no TVM build; call build(target='cpu') first")
            return run_batched(self.compiled, feeds, model=self.integer, probe=self.float_model)
        raise QGraphError(f"unknown backend '{backend}'; choose one of {', '.join(BACKENDS)}")

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


def remove_build(outdir: str) -> None:
    """Delete the files a TVM export wrote into ``outdir/tvm/`` (and the folder, if left empty)."""
    from qgraph.tvm.build import LIBRARY_FILE, META_FILE, OBJECTS_FILE

    folder = os.path.join(outdir, TVM_DIR)
    if not os.path.isdir(folder):
        return
    for name in (LIBRARY_FILE, OBJECTS_FILE, META_FILE):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            os.remove(path)
    if not os.listdir(folder):
        os.rmdir(folder)


def run_batched(compiled, feeds: Mapping[str, np.ndarray], model: Model | None = None,
                probe: Model | None = None) -> dict[str, np.ndarray]:
    """Run a TVM build (static shapes) on feeds of any number of samples.

    The samples (on each input's sample axis, as ``model`` records them; axis 0 without a
    model) are split into batches of the compiled batch size B (the compiled dim at the
    sample axes): ``qgraph.batching.run_in_batches``, which pads a short last batch and drops
    the padding's outputs.

    Args:
        compiled: a ``qgraph.tvm.Compiled`` that runs on this machine.
        feeds: one array per compiled input, each of the compiled shape but for the sample axis.
        model: the model the build was made from (its batch axes); default: axis 0 for every
            input of rank >= 1.
        probe: the float model whose outputs tell their sample axes (``probe_output_axes``).

    Raises:
        QGraphError: feeds that do not match the compiled inputs (names the input, its
            expected and given shapes), or outputs whose sample axis cannot be told.
    """
    shapes = {s.name: tuple(s.shape) for s in compiled.inputs}
    if not shapes:
        return compiled.run({})
    axes = batching.resolve(shapes, batching.declared_axes(model) if model is not None else None)
    extra = [k for k in feeds if k not in shapes]
    if extra:
        raise QGraphError(f"backend 'tvm': unknown input '{extra[0]}'; the compiled inputs are "
                          f"{', '.join(repr(n) for n in shapes)}")

    def probed() -> dict:
        return batching.probe_output_axes(probe, axes) if probe is not None else {}

    return batching.run_in_batches(compiled.run, feeds, shapes, axes, output_axes=probed, what="backend 'tvm'")


def run_ort(model: Model, feeds: Mapping[str, np.ndarray], *, simulate: bool = False,
            threads: int | None = None, probe: Model | None = None,
            what: str = "ONNX Runtime") -> dict[str, np.ndarray]:
    """Run ``model`` in ONNX Runtime's CPU EP on any number of samples, in batches of the
    size it takes (``qgraph.batching.run_model``); ``simulate`` turns off its QDQ fusion
    (``session.disable_quant_qdq``), so Q/DQ run as written: the float simulation. ``what``
    names the run in errors and progress (e.g. ``backend 'ort'``, ``the float model``)."""
    import onnxruntime as ort

    from qgraph.onnx import to_proto

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if simulate:
        so.add_session_config_entry("session.disable_quant_qdq", "1")
    if threads:
        so.intra_op_num_threads = threads
    try:
        sess = ort.InferenceSession(to_proto(model).SerializeToString(), so, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise QGraphError(f"{what}: ONNX Runtime cannot load the model: {str(e).splitlines()[0]}") from e
    names = [o.name for o in sess.get_outputs()]

    def run(batch: dict) -> dict:
        try:
            return dict(zip(names, sess.run(None, batch)))
        except Exception as e:
            raise QGraphError(f"{what}: ONNX Runtime failed: {str(e).splitlines()[0]}") from e

    return batching.run_model(model, run, feeds, what=what, probe=probe)


def quantize(model: Any, calib: Any, config: Any = None, *, method: str = "minmax",
             method_options: Mapping[str, Any] | None = None, report: bool = True,
             report_samples: int = 8, show_progress: bool | None = None,
             input_shapes: Mapping[str, Any] | None = None,
             batch_axes: Mapping[str, Any] | None = None, eval: Any = None,
             context: "PassContext | None" = None) -> QuantizedModel:
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
            that shape-dependent integer forms apply (a GlobalAveragePool needs its spatial
            size for its multiplier; with symbolic dims it stays a float op).
        context: the ``qgraph.pm.PassContext`` every step runs under (instruments such as
            ``PassTimings`` / ``DumpIR``, ``verify_each``); default: a plain one. The steps are
            ``qgraph.passes.QUANTIZE_STAGES`` (``quantize_pipelines``), each run by the pass manager.
    """
    from qgraph.passes.calibrate import Calibrate
    from qgraph.passes.lower_qdq import LowerQDQ
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
    ctx = context if context is not None else PassContext()
    steps = quantize_pipelines(cfg, calib, method, method_options, show_progress=show_progress)
    lower = _find_pass(steps, LowerQDQ)  # its fallback_reasons feed the report's "Stayed float" list
    levels = {"float": float_model}
    current = "float"
    for level, text, pipeline in steps:
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
    if report:
        from qgraph.verify.report import build_report

        with stage("report", enabled=show_progress):
            result.report = build_report(result, calib, samples=report_samples, eval=held_out,
                                         model_path=os.path.abspath(model) if isinstance(model, (str, os.PathLike)) else None,
                                         declared_outputs=declared, fallback_reasons=lower.fallback_reasons)
    return result


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


def _saved_batch_axes(path: str) -> dict:
    """The ``batch_axes`` of the folder's ``config.json`` (the models record the same in their
    metadata; the file wins, so that editing it is enough)."""
    config = os.path.join(path, CONFIG_FILE)
    if not os.path.exists(config):
        return {}
    try:
        with open(config) as f:
            saved = json.load(f)
    except (OSError, ValueError) as e:
        raise QGraphError(f"{config}: not readable JSON ({e}); rerun `qgraph compile` into {path}") from e
    axes = saved.get("batch_axes") if isinstance(saved, dict) else None
    return batching.parse_mapping(axes, f"{config}: batch_axes") if axes else {}


@dataclass
class CompiledDir:
    """A folder written by ``qgraph compile`` / ``QuantizedModel.save``, read back.

    The TVM build (``tvm/``, written by ``qgraph compile --target cpu``) is loaded on first
    use (``tvm_build``).
    """

    path: str
    float_model: Model
    qdq: Model
    integer: Model
    report: dict | None
    _compiled: Any = field(default=None, repr=False)

    @classmethod
    def load(cls, path: str) -> "CompiledDir":
        from qgraph.onnx import load

        if not os.path.isdir(path):
            raise QGraphError(f"{path}: not a folder written by `qgraph compile`")
        missing = [f for f in (FLOAT_FILE, QDQ_FILE, L3_FILE) if not os.path.exists(os.path.join(path, f))]
        if missing:
            raise QGraphError(f"{path}: missing {', '.join(missing)}; rerun `qgraph compile` into this folder")
        report = None
        if os.path.exists(os.path.join(path, REPORT_JSON)):
            with open(os.path.join(path, REPORT_JSON)) as f:
                report = json.load(f)
        c = cls(path, load(os.path.join(path, FLOAT_FILE)), load(os.path.join(path, QDQ_FILE)),
                load(os.path.join(path, L3_FILE)), report)
        c.set_batch_axes(_saved_batch_axes(path))
        return c

    @property
    def has_build(self) -> bool:
        """Whether the folder holds a TVM build (``tvm/model.json``)."""
        from qgraph.tvm.build import META_FILE

        return os.path.exists(os.path.join(self.path, TVM_DIR, META_FILE))

    def build_info(self) -> dict:
        """The TVM build's description (``tvm/model.json``: target, inputs, outputs, library)."""
        from qgraph.tvm.build import META_FILE

        if not self.has_build:
            raise QGraphError(self._no_build())
        with open(os.path.join(self.path, TVM_DIR, META_FILE)) as f:
            return json.load(f)

    def _no_build(self) -> str:
        return (f"{self.path}: no TVM build (no {TVM_DIR}/model.json); recompile with "
                f"`qgraph compile MODEL --calib DATA -o {self.path} --target cpu` to run backend 'tvm'")

    def tvm_build(self):
        """The TVM build, loaded (``qgraph.tvm.load``) once.

        Raises:
            QGraphError: no build in the folder, or one for a target that does not run here.
        """
        if self._compiled is None:
            if not self.has_build:
                raise QGraphError(self._no_build())
            from qgraph import tvm as qtvm
            from qgraph.tvm.build import LIBRARY_FILE

            info = self.build_info()
            if info.get("library") != LIBRARY_FILE:
                raise QGraphError(f"{self.path}: the TVM build is for target '{info.get('target')}' "
                                  f"({info.get('library')}: object files to link on the device); it does not run "
                                  "here; recompile with --target cpu to run it on this machine")
            if info.get("target") == "cpu":
                from qgraph.targets import get

                here = json.loads(json.dumps(dict(get("cpu").tvm_dict)))
                if info.get("tvm_target") != here:
                    raise QGraphError(f"{self.path}: the TVM build is for another CPU ({info.get('tvm_target')}; this "
                                      f"one is {here}); recompile here with --target cpu")
            self._compiled = qtvm.load(os.path.join(self.path, TVM_DIR))
            if not self._compiled.target.runnable:
                raise QGraphError(f"{self.path}: the TVM build is for target '{info.get('target')}', which does not "
                                  "run on this machine; recompile with --target cpu")
        return self._compiled

    def set_batch_axes(self, axes: Mapping[str, int | None] | None) -> None:
        """Run with these sample axes (input name -> axis, or None: no sample axis) over the
        ones the folder's models record (``qgraph run --batch-axis``)."""
        for m in (self.float_model, self.qdq, self.integer):
            batching.set_model_axes(m, axes)

    def run(self, feeds: Mapping[str, np.ndarray], backend: str = "reference") -> dict[str, np.ndarray]:
        """Run the folder's models on any number of samples; ``backend`` as in
        ``QuantizedModel.run`` (``tvm`` runs the exported build)."""
        if backend == "tvm":
            batching.check_finite(feeds, batching.model_axes(self.integer), "backend 'tvm'")
            return run_batched(self.tvm_build(), feeds, model=self.integer, probe=self.float_model)
        q = QuantizedModel(self.float_model, self.qdq, self.integer, None, None)
        return q.run(feeds, backend)

    def run_float(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The float model in ONNX Runtime, on any number of samples."""
        return run_ort(self.float_model, feeds, what="the float model (ONNX Runtime)")


def golden_integer_outputs(model_path: str, calib_path: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The golden recipe (``golden/generate.py``): default config (uint8 activations, int8
    per-channel weights), minmax calibration; the L3 model's outputs on ``inputs`` from the
    reference interpreter."""
    q = quantize(model_path, calib_path, method="minmax", report=False, show_progress=False)
    return q.run(inputs, "reference")
