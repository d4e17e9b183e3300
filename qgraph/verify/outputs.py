"""``qgraph verify``: a compiled model's outputs against its float original and against ONNX Runtime.

- quantized (reference interpreter, L3) vs float (ONNX Runtime on the float model):
  SQNR, cosine, top-1 agreement for classifier-shaped outputs and accuracy against the
  labels when the data holds them (``qgraph.verify.metrics.output_metrics``), computed by
  ``quantized_vs_float``, which ``qgraph compile --eval`` uses too: same data, same numbers;
- reference vs the QDQ export in ONNX Runtime, both as ORT simulates it
  (``session.disable_quant_qdq``: should be within 1 LSB) and as ORT runs it by default
  (its fused integer kernels: on AVX2 without VNNI the u8 x s8 kernel can saturate, and the
  distance shows it). Distances are in LSBs of the output's quantization step.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from qgraph.ir import ops
from qgraph.ir.core import Model
from qgraph.ir.l2 import QDQParamsError, read_qdq
from qgraph.verify.metrics import fmt, output_metrics


def output_scales(qdq: Model) -> dict[str, float]:
    """Each graph output's quantization step, where a DequantizeLinear produces it."""
    scales = {}
    for v in qdq.graph.outputs:
        p = v.producer()
        if p is None or p.op is not ops.DequantizeLinear:
            continue
        try:
            params = read_qdq(p)
        except QDQParamsError:
            continue  # not constant: the distances stay in float units
        if params.axis is None:
            scales[v.name] = float(params.scale)
    return scales


def quantized_vs_float(compiled, feeds: Mapping[str, np.ndarray], labels=None):
    """The float model (ONNX Runtime) and the L3 model (reference interpreter) on ``feeds``,
    in one batch each, and ``output_metrics`` per output.

    Args:
        compiled: a ``CompiledDir`` or ``QuantizedModel``.
        feeds: one array per model input, samples on axis 0.
        labels: class indices for accuracy, or None.

    Returns:
        ``(float outputs, quantized outputs, {output name: metrics})``.
    """
    from qgraph.ort import run_ort

    ref = compiled.run(feeds, "reference")
    flt = run_ort(compiled.float_model, feeds, what="the float model (ONNX Runtime)")
    from qgraph import batching

    n = batching.sample_count(compiled.float_model, feeds) if feeds else 0
    return flt, ref, {name: output_metrics(f, ref[name], n, labels) for name, f in flt.items()}


def verify_outputs(compiled, feeds: Mapping[str, np.ndarray], backends=("ort-sim", "ort"),
                   labels=None) -> dict[str, Any]:
    """Metrics per output (see the module doc); ``compiled`` is a ``CompiledDir`` or ``QuantizedModel``."""
    _, ref, metrics = quantized_vs_float(compiled, feeds, labels)
    scales = output_scales(compiled.qdq)
    others = {b: compiled.run(feeds, b) for b in backends}
    result: dict[str, Any] = {}
    for name, m in metrics.items():
        q = ref[name]
        m = dict(m)
        for b, outs in others.items():
            diff = np.abs(outs[name].astype(np.float64) - q.astype(np.float64))
            entry = {"max_abs": float(diff.max()) if diff.size else 0.0}
            if name in scales:
                lsb = np.rint(diff / scales[name])
                entry.update(max_lsb=int(lsb.max()) if lsb.size else 0,
                             exact=float(np.mean(lsb == 0)) if lsb.size else 1.0)
            if "accuracy_quantized" in m:  # labels fit this output: each backend's own accuracy
                entry["accuracy"] = float(np.mean(np.asarray(outs[name]).argmax(axis=-1)
                                                  == np.asarray(labels).astype(np.int64)))
            m[b] = entry
        result[name] = m
    return result


def format_metrics(m: Mapping[str, Any]) -> str:
    """``SQNR 31.20 dB, cosine 0.999621, top-1 agreement 99.40%, accuracy 97.20% float / 97.00%
    quantized``: one output's ``output_metrics`` (or their JSON form) as ``qgraph verify`` and
    ``qgraph compile`` print them."""
    sqnr = m["sqnr_db"]
    text = f"SQNR {sqnr if isinstance(sqnr, str) else fmt(sqnr, '.2f')} dB, cosine {fmt(m['cosine'], '.6f')}"
    if m.get("top1") is not None:
        text += f", top-1 agreement {m['top1'] * 100:.2f}%"
    if m.get("accuracy_float") is not None:
        text += (f", accuracy {m['accuracy_float'] * 100:.2f}% float / {m['accuracy_quantized'] * 100:.2f}% "
                 "quantized")
    return text


def format_verify(result: Mapping[str, Any], samples: int) -> str:
    lines = [f"{samples} samples"]
    for name, m in result.items():
        lines.append(f"{name}: quantized vs float: {format_metrics(m)}")
        for b, label in (("ort-sim", "ONNX Runtime, QDQ simulated (disable_quant_qdq)"),
                         ("ort", "ONNX Runtime, default CPU kernels")):
            if b in m:
                lines.append(backend_line(label, m[b]))
    return "\n".join(lines)


def backend_line(label: str, e: Mapping[str, Any]) -> str:
    """``  reference vs LABEL: max 0 LSB, 100.00% exact[, accuracy 97.00%]``: one backend of
    ``verify_outputs`` against the reference."""
    text = (f"  reference vs {label}: max {e['max_lsb']} LSB, {e['exact'] * 100:.2f}% exact" if "max_lsb" in e
            else f"  reference vs {label}: max |diff| {e['max_abs']:.4g} (float output)")
    return text + (f", accuracy {e['accuracy'] * 100:.2f}%" if "accuracy" in e else "")
