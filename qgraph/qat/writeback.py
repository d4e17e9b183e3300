"""Trained weights and scales back into the QDQ model, then the same lowering as ``compile``.

``write_back(ptq, module)`` copies ``ptq.qdq`` and rewrites its initializers from the module:

- each weight's integers: ``qgraph.quant.quantize(latent weight, learned scale, zero point)``
  and its scale initializer: the learned scale (float32, exactly the value the module's
  forward used);
- each activation Q / DQ scale initializer: the learned scale;
- each int32 bias: ``qgraph.quant.quantize_bias(latent bias, learned input scale, learned
  weight scale)`` and its scale, their float32 product.

Then ``lower-qdq`` runs on a copy (as ``qgraph.quantize`` runs it), giving L3, and the report
is rebuilt: a ``QuantizedModel`` that saves, runs on the reference and builds for TVM exactly
as a PTQ one. The QAT module's fake-quantized forward equals the written-back QDQ model run
as a float simulation (``backend="ort-sim"``) and the L3 reference within the L3 requantization's
rounding (``tests/test_qat.py``).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from qgraph.errors import QGraphError
from qgraph.ir import Model, Tensor
from qgraph.ir.dtypes import DType
from qgraph.quant.params import QuantParams, quantize, quantize_bias


def _set(g, name: str, array: np.ndarray, dtype: DType | None = None) -> None:
    v = g.initializers.get(name)
    if v is None:
        raise QGraphError(f"write back: no initializer '{name}' in the QDQ model (the module was made from another model?)")
    v.const_value = Tensor(np.ascontiguousarray(array), dtype if dtype is not None else v.const_value.dtype, name=name)


def written_qdq(qdq: Model, module) -> Model:
    """A copy of ``qdq`` holding ``module``'s trained weights and scales (module doc)."""
    out = qdq.clone()
    g = out.graph
    scales: dict[str, np.ndarray] = {}
    for key in module.log_scales:
        scales[key] = module.scale(key).detach().numpy().astype(np.float32)
    for w in module.weight_quants.values():
        s = scales[w.scale.key]
        params = QuantParams(s, w.zero_point, int(w.dtype), w.axis)
        q = quantize(module.weights[w.param].detach().numpy(), params)
        _set(g, w.int_name, q.astype(params.dtype.storage), DType(params.dtype.onnx))
    for w in module.weight_quants.values():
        _set(g, w.scale.scale_name, scales[w.scale.key].reshape(g.initializers[w.scale.scale_name].const_value.shape),
             DType.FLOAT)
    for a in module.act_quants.values():
        _set(g, a.scale.scale_name, scales[a.scale.key].reshape(g.initializers[a.scale.scale_name].const_value.shape),
             DType.FLOAT)
        if a.zp_key is not None:  # learned: the value the forward used, in the type's storage
            old = g.initializers[a.zp_name].const_value
            z = module.zero_point(a).detach().numpy().astype(np.int64)
            _set(g, a.zp_name, z.reshape(old.shape).astype(old.numpy().dtype), old.dtype)
    for b in module.bias_quants.values():
        bias = module.weights[b.param].detach().numpy()
        if b.act_scale is not None:
            q, bp = quantize_bias(bias, scales[b.act_scale], scales[b.weight_scale])
        else:
            q, bp = quantize_bias(bias, np.float32(1.0), b.fixed_scale)
        shape = g.initializers[b.scale_name].const_value.shape
        _set(g, b.int_name, q.reshape(g.initializers[b.int_name].const_value.shape), DType.INT32)
        _set(g, b.scale_name, bp.scale.reshape(shape), DType.FLOAT)
    return out


def write_back(ptq, module, calib: Any = None, *, eval: Any = None, report: bool = True,
               report_samples: int = 8):
    """``ptq`` (a ``QuantizedModel``) with ``module``'s trained parameters: a new ``QuantizedModel``
    (float model, ranges and config shared with ``ptq``; L2 written back, L3 lowered again;
    the report rebuilt on ``calib`` / ``eval`` when ``report``)."""
    from qgraph.api import QuantizedModel
    from qgraph.passes import registry
    from qgraph.pm import PassManager, Pipeline

    qdq = written_qdq(ptq.qdq, module)
    integer = qdq.clone()
    PassManager(Pipeline(registry().parse("lower-qdq"))).run(integer)
    result = QuantizedModel(ptq.float_model, qdq, integer, ptq.ranges, ptq.config)
    if report:
        from qgraph.verify.report import build_report

        result.report = build_report(result, calib, samples=report_samples, eval=eval)
    return result


def qat(model: Any, calib: Any, train_data: Any, config: Any = None, *, eval: Any = None,
        train_config=None, distill: bool = False, learn_zero_points: bool = False, report: bool = True,
        report_samples: int = 8, show_progress: bool | None = None):
    """Post-training quantization, then QAT, then write back: what ``qgraph qat`` runs.

    Args:
        model, calib, config: as ``qgraph.quantize`` (the PTQ result is the starting point).
        train_data: an .npz path or ``{name: array}``: the model's inputs and optionally ``labels``.
        eval: held-out data (same form; ``labels`` optional): the metric per epoch, the best
            epoch kept, early stop (``TrainConfig.patience``), and the report's numbers.
        train_config: a ``qgraph.qat.TrainConfig``.
        distill: distill from the float model even when the data has labels.
        learn_zero_points: learn the activations' zero points too (``QATModule``).

    Returns:
        ``(ptq, result, history)``: the PTQ ``QuantizedModel``, the QAT one, the ``TrainHistory``.
    """
    import qgraph
    from qgraph.qat.module import QATModule
    from qgraph.qat.train import TrainConfig, train
    from qgraph.verify.data import load_eval, read_feeds

    cfg = train_config or TrainConfig()
    if show_progress is not None:
        cfg.show_progress = show_progress
    ptq = qgraph.quantize(model, calib, config, report=report, report_samples=report_samples,
                          eval=eval, show_progress=show_progress)
    feeds, labels = read_feeds(train_data, ptq.float_model, "training data" if not isinstance(train_data, (str, os.PathLike))
                               else f"--train {os.fspath(train_data)}")
    eval_feeds = eval_labels = None
    held_out = None
    if eval is not None:
        eval_feeds, eval_labels = read_feeds(eval, ptq.float_model, "eval data")
        held_out = load_eval(eval, ptq.float_model)
    module = QATModule(ptq.qdq, ptq.float_model, learn_zero_points=learn_zero_points)
    teacher = QATModule(ptq.float_model) if (distill or labels is None or eval_labels is None
                                             or cfg.features) else None
    history = train(module, feeds, None if distill else labels, teacher=teacher, eval_feeds=eval_feeds,
                    eval_labels=eval_labels, config=cfg)
    result = write_back(ptq, module, calib, eval=held_out, report=report, report_samples=report_samples)
    result.qat_history = history
    if report:
        result.report.qat = {"ptq": ptq.report.outputs, "loss": history.loss, "metric": history.metric,
                             "metric_name": history.metric_name, "best_epoch": history.best_epoch,
                             "initial_metric": history.initial_metric,
                             "train": {k: v for k, v in vars(cfg).items()} | {"distill": bool(distill),
                                                                              "learn_zero_points": learn_zero_points}}
    return ptq, result, history


