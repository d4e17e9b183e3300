"""The Python API of post-training quantization, mirroring ``qgraph compile / run / verify``.

    import qgraph
    q = qgraph.quantize("model.onnx", "calib.npz", method="minmax")
    q.save("out/")                    # model.qdq.onnx, model.qgraph.onnx, report.json, report.md
    y = q.run({"input": x})            # the integer reference interpreter (L3)
    print(q.report.markdown())

The steps: import the float model, ``canonicalize,fuse`` (L1), ``calibrate`` on the data,
``insert-qdq`` from the config (L2: standard QDQ), ``lower-qdq`` (L3: integer ops). The
float L1 model is kept: a quantized model is always judged against its float original.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from qgraph.errors import QGraphError
from qgraph.ir.core import Model

#: Files ``QuantizedModel.save`` writes into its folder.
FLOAT_FILE = "model.float.onnx"
QDQ_FILE = "model.qdq.onnx"
L3_FILE = "model.qgraph.onnx"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
RANGES_FILE = "ranges.json"
CONFIG_FILE = "config.json"

BACKENDS = ("reference", "ort", "ort-sim")


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
        report: per-layer dtypes, scales and SQNR (``qgraph.verify.report``), when computed.
    """

    float_model: Model
    qdq: Model
    integer: Model
    ranges: Any
    config: Any
    report: Any = None
    _interpreter: Any = field(default=None, repr=False)

    def run(self, feeds: Mapping[str, np.ndarray], backend: str = "reference") -> dict[str, np.ndarray]:
        """Run the quantized model: ``reference`` (L3, numpy integer interpreter), ``ort``
        (the QDQ export in ONNX Runtime as it runs by default) or ``ort-sim`` (the QDQ export
        with ``session.disable_quant_qdq``: float simulation of the quantization)."""
        if backend == "reference":
            from qgraph.reference import Interpreter

            if self._interpreter is None:
                self._interpreter = Interpreter(self.integer)
            return self._interpreter.run(dict(feeds))
        if backend in ("ort", "ort-sim"):
            return run_ort(self.qdq, feeds, simulate=backend == "ort-sim")
        raise QGraphError(f"unknown backend '{backend}'; choose one of {', '.join(BACKENDS)}")

    def export_qdq(self, path: str) -> None:
        from qgraph.onnx import save

        save(self.qdq, path)

    def export_integer(self, path: str) -> None:
        from qgraph.onnx import save

        save(self.integer, path)

    def save(self, outdir: str) -> None:
        """Write the float, QDQ and L3 models, the ranges, the config and the report into ``outdir``."""
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


def run_ort(model: Model, feeds: Mapping[str, np.ndarray], *, simulate: bool = False,
            threads: int | None = None) -> dict[str, np.ndarray]:
    """Run ``model`` in ONNX Runtime's CPU EP; ``simulate`` turns off its QDQ fusion
    (``session.disable_quant_qdq``), so Q/DQ run as written: the float simulation."""
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
        names = [o.name for o in sess.get_outputs()]
        return dict(zip(names, sess.run(None, dict(feeds))))
    except Exception as e:
        raise QGraphError(f"ONNX Runtime failed on the QDQ model: {str(e).splitlines()[0]}") from e


def quantize(model: Any, calib: Any, config: Any = None, *, method: str = "minmax",
             method_options: Mapping[str, Any] | None = None, report: bool = True,
             report_samples: int = 8, show_progress: bool | None = None) -> QuantizedModel:
    """Post-training quantization of ``model`` on calibration data ``calib``.

    Args:
        model: a path, an ``onnx.ModelProto`` or a qgraph ``Model`` (not modified).
        calib: calibration data: a ``.npz``, a folder of ``.npz`` / ``.npy``, or an iterable
            of ``{input name: array}`` (see ``qgraph.calib.data``).
        config: a ``QuantConfig``, its JSON dict, or a path to a JSON file (None: defaults,
            uint8 activations per tensor, int8 symmetric per-channel weights, int32 bias).
        method: calibration method (``minmax``, ``percentile``, ``entropy``, ``mse``).
        method_options: options of the method (``percentile``, ``num_bins``, ``bits``).
        report: compute the per-layer report (SQNR against float on ``report_samples``
            calibration samples).
    """
    from qgraph.calib.calibrate import calibrate
    from qgraph.passes import registry
    from qgraph.passes.insert_qdq import InsertQDQ
    from qgraph.passes.lower_qdq import LowerQDQ
    from qgraph.pm import PassContext, PassManager

    cfg = _config(config)
    float_model = clone(_load(model))
    PassManager(registry().parse("canonicalize,fuse"), PassContext()).run(float_model)
    ranges = calibrate(float_model, calib, method, show_progress=show_progress, **dict(method_options or {}))
    float_model.calibration = ranges

    qdq = clone(float_model)
    PassManager([InsertQDQ.from_config(cfg)], PassContext()).run(qdq)
    integer = clone(qdq)
    PassManager([LowerQDQ()], PassContext()).run(integer)
    result = QuantizedModel(float_model, qdq, integer, ranges, cfg)
    if report:
        from qgraph.verify.report import build_report

        result.report = build_report(result, calib, samples=report_samples)
    return result


@dataclass
class CompiledDir:
    """A folder written by ``qgraph compile`` / ``QuantizedModel.save``, read back."""

    path: str
    float_model: Model
    qdq: Model
    integer: Model
    report: dict | None

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
        return cls(path, load(os.path.join(path, FLOAT_FILE)), load(os.path.join(path, QDQ_FILE)),
                   load(os.path.join(path, L3_FILE)), report)

    def run(self, feeds: Mapping[str, np.ndarray], backend: str = "reference") -> dict[str, np.ndarray]:
        q = QuantizedModel(self.float_model, self.qdq, self.integer, None, None)
        return q.run(feeds, backend)

    def run_float(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return run_ort(self.float_model, feeds)


def golden_integer_outputs(model_path: str, calib_path: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The golden recipe (``golden/generate.py``): default config (uint8 activations, int8
    per-channel weights), minmax calibration; the L3 model's outputs on ``inputs`` from the
    reference interpreter."""
    q = quantize(model_path, calib_path, method="minmax", report=False, show_progress=False)
    return q.run(inputs, "reference")
