"""The per-layer report of a quantized model: dtypes, scales, and SQNR against float.

One row per op of the QDQ model (L2) that reads or writes quantized tensors: its input
and weight types and scales, its output's type, scale and zero point, and the SQNR of the
quantized output (taken from the integer model, L3, run by the reference interpreter and
dequantized) against the float model's same tensor, over a few samples (of the held-out
data when there is some, else of the calibration data). The model outputs get
``qgraph.verify.metrics.output_metrics`` (SQNR, cosine; top-1 agreement and accuracy where
they mean something) on all the held-out data (or, labelled in-sample, on those
calibration samples). The warnings come from ``qgraph.verify.diagnose``, the float ops
and their reasons from ``qgraph.verify.float_ops``; report.md and report.html are
rendered by ``qgraph.verify.markdown`` and ``qgraph.verify.html``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from qgraph.ir import ops
from qgraph.ir.core import Model, Node
from qgraph.ir.l2 import QDQParams, QDQParamsError, read_qdq


def _params(node: Node) -> QDQParams | None:
    """The Q / DQ parameters of ``node``, or None where they are not constants (left unreported)."""
    try:
        return read_qdq(node)
    except QDQParamsError:
        return None


def _dq_info(dq: Node) -> dict:
    """dtype / scale / zero point of a DequantizeLinear's input."""
    p = _params(dq)
    if p is None:  # the type still shows: the zero point's, else the input's
        zp = dq.inputs[2] if len(dq.inputs) > 2 else None
        dtype = zp.dtype if zp is not None else dq.inputs[0].dtype
        return {"dtype": dtype.name.lower() if dtype is not None else "?"}
    info: dict[str, Any] = {"dtype": p.dtype.name.lower()}
    if p.axis is not None:
        info.update(per_channel=True, axis=p.axis, scale_min=float(p.scale.min()),
                    scale_max=float(p.scale.max()), channels=int(p.scale.size))
        if p.block_size:
            info["block_size"] = p.block_size
    else:
        info.update(scale=float(p.scale), zero_point=int(p.zero_point))
    return info


def _quantized_output(node: Node) -> tuple[Node | None, Node | None]:
    """The QuantizeLinear that quantizes ``node``'s output (directly, or after one fused
    activation), and that activation."""
    out = node.outputs[0] if node.outputs else None
    if out is None:
        return None, None
    for user in out.users():
        if user.op is ops.QuantizeLinear:
            return user, None
    users = out.users()
    if len(users) == 1 and users[0].op in (ops.Relu, ops.Clip):
        act = users[0]
        for user in act.outputs[0].users():
            if user.op is ops.QuantizeLinear:
                return user, act
    return None, None


def _float_name(q: Node) -> str:
    """The float model's name for the tensor ``q`` quantizes: its input, or, where
    insert-qdq renamed a graph output, the name the final DequantizeLinear writes."""
    for user in q.outputs[0].users():
        if user.op is ops.DequantizeLinear and user.outputs[0].is_graph_output():
            return user.outputs[0].name
    return q.inputs[0].name


@dataclass
class Report:
    """Per-layer rows, model-output metrics, warnings and the float ops left (see the module doc).

    Attributes:
        layers: one row per quantized op (``layer_rows``) with its SQNR and calibrated range.
        outputs: ``output_metrics`` per model output (JSON-safe), measured on what
            ``summary["measured_on"]`` says.
        summary: the header (model, qgraph version, method, config, target, eval data) and
            the op counts (``qgraph.verify.float_ops.op_counts``).
        warnings: ``qgraph.verify.diagnose.QuantWarning``s.
        stayed_float: the L3 model's float ops and why (``qgraph.verify.float_ops.stayed_float``).
        plots: data for report.html only (float and quantized samples of each output).
        precision: ``qgraph.verify.precision.precision_summary`` of the QDQ model
            (``mac_fraction_8bit``, ``weight_bytes``, ``per_layer``); after ``--precision auto``
            each layer also has its ``format`` and the ``damage`` of each candidate, and
            ``search`` says how the choice was made (floor, points verified, probes, time).
        qat: after quantization-aware training (``qgraph.qat``): ``ptq`` (the PTQ model's
            ``outputs``, measured on the same data), ``loss`` and ``metric`` per epoch,
            ``metric_name``, ``best_epoch``, ``train`` (the options); empty otherwise.
    """

    layers: list[dict] = field(default_factory=list)
    outputs: dict[str, dict] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    stayed_float: list[dict] = field(default_factory=list)
    plots: dict[str, Any] = field(default_factory=dict, repr=False)
    precision: dict[str, Any] = field(default_factory=dict)
    qat: dict[str, Any] = field(default_factory=dict)
    #: which target runs each L3 op (``qgraph.verify.placement``), once a target is chosen
    placement: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        out = {"summary": self.summary, "warnings": [w.to_json() for w in self.warnings], "outputs": self.outputs,
               "stayed_float": self.stayed_float, "layers": self.layers, "precision": self.precision}
        if self.qat:
            out["qat"] = self.qat
        if self.placement:
            out["placement"] = self.placement
        return out

    def markdown(self) -> str:
        """report.md (``qgraph.verify.markdown``)."""
        from qgraph.verify.markdown import render_markdown

        return render_markdown(self)

    def html(self) -> str:
        """report.html: one self-contained file with the plots (``qgraph.verify.html``)."""
        from qgraph.verify.html import render_html

        return render_html(self)


def layer_rows(qdq: Model) -> list[dict]:
    """One row per op of the QDQ model that touches quantized tensors (no SQNR yet)."""
    rows = []
    fused: set[int] = set()  # activations reported with the op they follow
    for node in qdq.graph:
        if node.op in (ops.QuantizeLinear, ops.DequantizeLinear) or id(node) in fused:
            continue
        inputs, weight = [], None
        for v in node.inputs:
            p = v.producer() if v is not None else None
            if p is not None and p.op is ops.DequantizeLinear:
                info = _dq_info(p)
                const = p.inputs[0].constant() is not None
                if const and weight is None and info["dtype"] != "int32":
                    weight = info
                elif not const:
                    inputs.append(info["dtype"])
            elif v is not None and v.constant() is None:
                inputs.append("float")
        q, act = _quantized_output(node)
        if act is not None:
            fused.add(id(act))
        if not inputs and q is None:
            continue
        row: dict[str, Any] = {"node": node.name, "op": node.op_type + (f"+{act.op_type}" if act else ""),
                               "inputs": inputs}
        if weight:
            row["weight"] = weight
        qp = _params(q) if q is not None else None
        if qp is not None and qp.axis is not None:
            qp = None  # the SQNR dequantizes with one scale: a per-axis output is not reported
        if qp is None:
            q = None
        else:
            row["output"] = {"tensor": _float_name(q), "q_tensor": q.outputs[0].name,
                             "dtype": qp.dtype.name.lower(), "scale": float(qp.scale),
                             "zero_point": int(qp.zero_point)}
        row["integer"] = q is not None and bool(inputs) and all(i != "float" for i in inputs)
        rows.append(row)
    return rows


def _samples(model: Model, calib: Any, n: int) -> list[dict[str, np.ndarray]]:
    """Runs of the first ``n`` calibration samples (at least one run): single samples, or
    whole batches of a model with a fixed batch size."""
    from qgraph.calib.data import input_specs, iter_samples

    runs, seen = [], 0
    for feeds in iter_samples(calib, input_specs(model)):
        runs.append(feeds)
        seen += _count(model, [feeds])
        if seen >= n:
            break
    return runs


def _count(model: Model, runs: list[dict[str, np.ndarray]]) -> int:
    """Samples in ``runs`` (a run of a fixed-batch model holds several)."""
    from qgraph import batching

    return sum(batching.sample_count(model, feeds) for feeds in runs)


#: points of each output kept for report.html's scatter plot
SCATTER_POINTS = 4000


def _scatter(f: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f, g = np.asarray(f, np.float64).reshape(-1), np.asarray(g, np.float64).reshape(-1)
    if f.size > SCATTER_POINTS:  # a fixed subset: the same report for the same model and data
        pick = np.random.default_rng(0).choice(f.size, SCATTER_POINTS, replace=False)
        f, g = f[pick], g[pick]
    return f, g


def config_text(config) -> str:
    """The quantization config in one line for the report's header."""
    if config is None:
        return "?"
    a, w = config.activation, config.weight
    parts = [f"activations {a.dtype.name} {'symmetric' if a.symmetric else 'asymmetric'}",
             f"weights {w.dtype.name} {'symmetric' if w.symmetric else 'asymmetric'}"
             f"{' per-channel' if w.per_channel else ' per-tensor'}"]
    if config.pow2_scales:
        parts.append("power-of-two scales")
    if config.reduce_range:
        parts.append("reduced (7-bit) weight range")
    overrides = [f"{len(getattr(config, k))} {k.replace('_', ' ')}" for k in ("nodes", "op_types", "tensors")
                 if getattr(config, k)]
    if overrides:
        parts.append("overrides: " + ", ".join(overrides))
    parts.append("exclude: " + (", ".join(config.exclude) if config.exclude else "none"))
    return "; ".join(parts)


def _layer_sqnr(q, rows: list[dict], feeds: list[dict]) -> tuple[dict, dict, dict]:
    """Run ``feeds`` one by one through the float model (ONNX Runtime, every tensor exposed)
    and the L3 model (reference interpreter); set each row's ``sqnr_db``. Returns the
    float and quantized outputs per output name (lists, one array per sample) and the
    float outputs' shapes of the first sample."""
    from qgraph.calib.runner import run_observed
    from qgraph.reference import Interpreter

    float_names = [r["output"]["tensor"] for r in rows if "output" in r]
    out_names = [v.name for v in q.float_model.graph.outputs]
    interp = Interpreter(q.integer)
    l3_names = {v.name for v in q.integer.graph.values()}
    keep = [r["output"]["q_tensor"] for r in rows if "output" in r and r["output"]["q_tensor"] in l3_names]
    signal: dict[str, float] = {}
    noise: dict[str, float] = {}
    outs_f: dict[str, list] = {k: [] for k in out_names}
    outs_q: dict[str, list] = {k: [] for k in out_names}
    shapes: dict[str, tuple] = {}
    by_q = {r["output"]["q_tensor"]: r for r in rows if "output" in r}
    for sample, (_, observed) in zip(feeds, run_observed(q.float_model, iter(feeds), float_names + out_names)):
        got = interp.run(sample, keep=keep)
        for qname in keep:
            if qname not in got:
                continue
            o = by_q[qname]["output"]
            ref = observed.get(o["tensor"])
            if ref is None:
                continue
            deq = (got[qname].astype(np.float64) - o["zero_point"]) * o["scale"]
            signal[qname] = signal.get(qname, 0.0) + float(np.sum(np.asarray(ref, np.float64) ** 2))
            noise[qname] = noise.get(qname, 0.0) + float(np.sum((np.asarray(ref, np.float64) - deq) ** 2))
        for k in out_names:
            shapes.setdefault(k, tuple(np.shape(observed[k])))
            outs_f[k].append(np.asarray(observed[k]))
            outs_q[k].append(np.asarray(got[k]))
    for qname, r in by_q.items():
        if qname in noise:
            r["sqnr_db"] = _db(signal[qname], noise[qname])
    return outs_f, outs_q, shapes


def build_report(q, calib: Any, samples: int = 8, *, eval: Any = None, model_path: str | None = None,
                 declared_outputs: Mapping[str, Any] | None = None) -> Report:
    """The report of quantized model ``q`` (a ``QuantizedModel``).

    Args:
        q: rows come from ``q.qdq``, SQNR from ``q.integer`` (reference interpreter) vs
            ``q.float_model``, ranges from ``q.ranges``.
        calib: the calibration data (its first ``samples`` samples are measured when there is
            no ``eval``; they are checked for identical samples either way).
        samples: how many samples the per-layer SQNR runs (one by one, every tensor kept).
        eval: held-out data (``qgraph.verify.data.EvalSet``): the output metrics are
            ``quantized_vs_float`` on all of it, the numbers ``qgraph verify`` prints for the
            same data; the layers use its first ``samples``. None: both on calibration data,
            labelled in-sample.
        model_path: the model's path, for the header.
        declared_outputs: output name -> declared shape, as the model was given (before shape
            inference), for the ``output-shape`` check.
    """
    from qgraph.version import VERSION
    from qgraph.verify import diagnose
    from qgraph.verify.markdown import samples as n_samples
    from qgraph.verify.float_ops import op_counts, stayed_float
    from qgraph.verify.metrics import json_float, output_metrics
    from qgraph.verify.outputs import quantized_vs_float

    rows = layer_rows(q.qdq)
    for r in rows:
        rng = q.ranges.get(r["output"]["tensor"]) if "output" in r and q.ranges is not None else None
        if rng is not None:
            r["output"]["range"] = [json_float(rng.lo), json_float(rng.hi)]
    calib_first = _samples(q.float_model, calib, samples)
    feeds = eval.first(samples) if eval is not None else calib_first
    measured = _count(q.float_model, feeds)
    layers_on = (f"the first {measured} of {eval.describe()}" if eval is not None
                 else f"{n_samples(measured).replace('sample', 'calibration sample')} (in-sample)")
    outs_f, outs_q, shapes = _layer_sqnr(q, rows, feeds)
    if eval is not None:
        flt, ref, outputs = quantized_vs_float(q, eval.feeds, eval.labels)
        measured_on = f"on {eval.describe()}"
    else:
        flt = {k: np.concatenate([np.atleast_1d(a) for a in v]) for k, v in outs_f.items() if v}  # 0-d outputs too
        ref = {k: np.concatenate([np.atleast_1d(a) for a in outs_q[k]]) for k in flt}
        outputs = {k: output_metrics(flt[k], ref[k], measured) for k in flt}
        measured_on = f"on calibration data (in-sample), {n_samples(measured)}"

    mixed = diagnose.check_mixed_ranges(q.float_model, q.ranges, q.config,
                                        {r["output"]["tensor"]: r["output"]["dtype"] for r in rows if "output" in r})
    found = (diagnose.check_outputs(outputs, measured_on)
             + diagnose.check_calibration(q.ranges, q.float_model, calib_first)
             + diagnose.check_ranges(rows)
             + mixed
             + diagnose.check_layers(rows, mixed)
             + diagnose.check_output_shapes(declared_outputs or {}, shapes)
             + diagnose.check_excludes(q.config, [q.float_model])
             + (diagnose.check_labels(outputs, eval.labels, eval.source) if eval is not None else []))
    meta = getattr(q.ranges, "meta", {}) or {}
    summary = {"model": model_path, "qgraph_version": VERSION, "method": meta.get("method"),
               "calibration_samples": meta.get("samples"), "config": config_text(q.config), "target": None,
               "eval": None if eval is None else {"source": eval.source, "samples": eval.samples,
                                                   "labels": eval.labels is not None},
               "measured_on": measured_on, "report_samples": measured, "layers_measured_on": layers_on,
               **op_counts(q.integer)}
    plots = {"outputs": {k: _scatter(flt[k], ref[k]) for k in flt if k in ref}}
    return Report(rows, {k: {kk: json_float(vv) for kk, vv in v.items()} for k, v in outputs.items()}, summary,
                  found, stayed_float(q.integer, q.qdq, q.config), plots, _precision(q, calib_first[0] if calib_first else {}))


def _precision(q, feeds) -> dict:
    """report.json's ``precision``: what the QDQ model computes in (shapes of one sample of
    ``feeds``), and the search when there was one."""
    from qgraph import batching
    from qgraph.analysis.shapes import sample_shapes
    from qgraph.verify.metrics import json_float
    from qgraph.verify.precision import precision_summary

    out = precision_summary(q.qdq, sample_shapes(q.qdq, feeds, batching.model_axes(q.float_model)))
    r = getattr(q, "precision", None)
    if r is not None:
        chosen = r.per_layer()
        for name, row in chosen.items():
            row["damage"] = {f: json_float(d) for f, d in row["damage"].items()}
            out["per_layer"][name] = {**out["per_layer"].get(name, {}), **row}
        out["search"] = r.to_json()
    return out


def _db(signal: float, noise: float):
    """SQNR from signal and noise energies summed over samples (``sqnr_db`` of the
    concatenation, without holding every sample's tensors), JSON-safe."""
    from qgraph.verify.metrics import energy_db, json_float

    return json_float(energy_db(signal, noise))
