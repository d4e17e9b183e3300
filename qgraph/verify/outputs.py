"""``qgraph verify``: a compiled model's outputs against its float original and against ONNX Runtime.

- quantized (reference interpreter, L3) vs float (ONNX Runtime on the float model):
  SQNR, cosine and top-1 agreement per output;
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
from qgraph.verify.metrics import cosine_similarity, sqnr_db, topk_agreement


def output_scales(qdq: Model) -> dict[str, float]:
    """Each graph output's quantization step, where a DequantizeLinear produces it."""
    scales = {}
    for v in qdq.graph.outputs:
        p = v.producer()
        if p is not None and p.op is ops.DequantizeLinear and p.inputs[1].const_value is not None:
            s = p.inputs[1].const_value.numpy()
            if s.size == 1:
                scales[v.name] = float(s.reshape(-1)[0])
    return scales


def verify_outputs(compiled, feeds: Mapping[str, np.ndarray], backends=("ort-sim", "ort")) -> dict[str, Any]:
    """Metrics per output (see the module doc); ``compiled`` is a ``CompiledDir`` or ``QuantizedModel``."""
    from qgraph.api import run_ort

    ref = compiled.run(feeds, "reference")
    flt = run_ort(compiled.float_model, feeds)
    scales = output_scales(compiled.qdq)
    others = {b: compiled.run(feeds, b) for b in backends}
    result: dict[str, Any] = {}
    for name, f in flt.items():
        q = ref[name]
        m: dict[str, Any] = {"sqnr_db": sqnr_db(f, q), "cosine": cosine_similarity(f, q)}
        if f.ndim >= 2 and f.shape[-1] >= 2:
            m["top1"] = topk_agreement(f, q)
        for b, outs in others.items():
            diff = np.abs(outs[name].astype(np.float64) - q.astype(np.float64))
            entry = {"max_abs": float(diff.max()) if diff.size else 0.0}
            if name in scales:
                lsb = np.rint(diff / scales[name])
                entry.update(max_lsb=int(lsb.max()) if lsb.size else 0,
                             exact=float(np.mean(lsb == 0)) if lsb.size else 1.0)
            m[b] = entry
        result[name] = m
    return result


def format_verify(result: Mapping[str, Any], samples: int) -> str:
    lines = [f"{samples} samples"]
    for name, m in result.items():
        top1 = f", top-1 agreement {m['top1'] * 100:.2f}%" if "top1" in m else ""
        lines.append(f"{name}: quantized vs float: SQNR {m['sqnr_db']:.2f} dB, cosine {m['cosine']:.6f}{top1}")
        for b, label in (("ort-sim", "ONNX Runtime, QDQ simulated (disable_quant_qdq)"),
                         ("ort", "ONNX Runtime, default CPU kernels")):
            if b in m:
                e = m[b]
                if "max_lsb" in e:
                    lines.append(f"  reference vs {label}: max {e['max_lsb']} LSB, {e['exact'] * 100:.2f}% exact")
                else:
                    lines.append(f"  reference vs {label}: max |diff| {e['max_abs']:.4g} (float output)")
    return "\n".join(lines)
