"""The per-layer report of a quantized model: dtypes, scales, and SQNR against float.

One row per op of the QDQ model (L2) that reads or writes quantized tensors: its input
and weight types and scales, its output's type, scale and zero point, and the SQNR of the
quantized output (taken from the integer model, L3, run by the reference interpreter and
dequantized) against the float model's same tensor, over a few calibration samples.
The model outputs get SQNR, cosine and top-1 agreement.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qgraph.ir import ops
from qgraph.ir.core import Model, Node, Value


def _const(v: Value | None) -> np.ndarray | None:
    if v is None or v.const_value is None:
        return None
    return v.const_value.numpy()


def _dq_info(dq: Node) -> dict:
    """dtype / scale / zero point of a DequantizeLinear's input."""
    scale = _const(dq.inputs[1])
    zp = _const(dq.inputs[2]) if len(dq.inputs) > 2 else None
    dtype = (dq.inputs[2].dtype if len(dq.inputs) > 2 and dq.inputs[2] is not None else dq.inputs[0].dtype)
    info: dict[str, Any] = {"dtype": dtype.name.lower() if dtype is not None else "?"}
    if scale is not None and scale.size > 1:
        info.update(per_channel=True, axis=int(dq.attr("axis", 1)), scale_min=float(scale.min()),
                    scale_max=float(scale.max()), channels=int(scale.size))
    elif scale is not None:
        info.update(scale=float(scale.reshape(-1)[0]), zero_point=int(zp.reshape(-1)[0]) if zp is not None else 0)
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
    """Per-layer rows and model-output metrics (see the module doc)."""

    layers: list[dict] = field(default_factory=list)
    outputs: dict[str, dict] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"summary": self.summary, "outputs": self.outputs, "layers": self.layers}

    def markdown(self) -> str:
        s = self.summary
        lines = ["# qgraph quantization report", ""]
        lines.append(f"- calibration: {s.get('method')} on {s.get('calibration_samples')} samples; "
                     f"SQNR measured on {s.get('report_samples')} of them")
        lines.append(f"- ops: {s.get('integer_ops')} integer, {s.get('lookups', 0)} table lookups, "
                     f"{s.get('float_ops')} float")
        lines += ["", "## Outputs (quantized vs float)", "", "| output | SQNR dB | cosine | top-1 agreement |",
                  "|---|---|---|---|"]
        for name, m in self.outputs.items():
            top1 = "" if m.get("top1") is None else f"{m['top1']:.4f}"
            lines.append(f"| {name} | {_fmt(m.get('sqnr_db'))} | {m.get('cosine', 0):.6f} | {top1} |")
        lines += ["", "## Layers", "",
                  "| node | op | inputs | weight | output | scale | zero point | SQNR dB |", "|---|---|---|---|---|---|---|---|"]
        for r in self.layers:
            w = r.get("weight")
            wtext = ""
            if w:
                wtext = (f"{w['dtype']} per-channel ({w['channels']}) {w['scale_min']:.3g}..{w['scale_max']:.3g}"
                         if w.get("per_channel") else f"{w['dtype']} {w.get('scale', 0):.3g}")
            out = r.get("output") or {}
            lines.append(f"| {r['node']} | {r['op']} | {', '.join(r['inputs'])} | {wtext} | "
                         f"{out.get('dtype', 'float')} | {_fmt(out.get('scale'))} | {out.get('zero_point', '')} | "
                         f"{_fmt(r.get('sqnr_db'))} |")
        return "\n".join(lines) + "\n"


def _fmt(x) -> str:
    if x is None:
        return ""
    if isinstance(x, str):
        return x
    return f"{x:.3g}" if abs(x) < 1e-2 or abs(x) >= 1e4 else f"{x:.2f}"


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
                if p.inputs[0].const_value is not None and weight is None and info["dtype"] != "int32":
                    weight = info
                elif p.inputs[0].const_value is None:
                    inputs.append(info["dtype"])
            elif v is not None and v.const_value is None:
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
        if q is not None:
            scale, zp = _const(q.inputs[1]), _const(q.inputs[2]) if len(q.inputs) > 2 else None
            row["output"] = {"tensor": _float_name(q), "q_tensor": q.outputs[0].name,
                             "dtype": (q.inputs[2].dtype.name.lower() if zp is not None else "uint8"),
                             "scale": float(scale.reshape(-1)[0]),
                             "zero_point": int(zp.reshape(-1)[0]) if zp is not None else 0}
        row["integer"] = q is not None and bool(inputs) and all(i != "float" for i in inputs)
        rows.append(row)
    return rows


def _samples(model: Model, calib: Any, n: int):
    from qgraph.calib.data import input_specs, iter_samples

    return list(itertools.islice(iter_samples(calib, input_specs(model)), n))


def build_report(q, calib: Any, samples: int = 8) -> Report:
    """Rows from ``q.qdq``; SQNR from ``q.integer`` (reference interpreter) vs ``q.float_model``."""
    from qgraph.calib.runner import run_observed
    from qgraph.reference import Interpreter
    from qgraph.verify.metrics import cosine_similarity, json_float, sqnr_db, topk_agreement

    rows = layer_rows(q.qdq)
    feeds = _samples(q.float_model, calib, samples)
    float_names = [r["output"]["tensor"] for r in rows if "output" in r]
    out_names = [v.name for v in q.float_model.graph.outputs]
    interp = Interpreter(q.integer)
    l3_names = {v.name for v in q.integer.graph.values()}
    keep = [r["output"]["q_tensor"] for r in rows if "output" in r and r["output"]["q_tensor"] in l3_names]
    signal: dict[str, float] = {}
    noise: dict[str, float] = {}
    outs_f: dict[str, list] = {k: [] for k in out_names}
    outs_q: dict[str, list] = {k: [] for k in out_names}
    by_q = {r["output"]["q_tensor"]: r for r in rows if "output" in r}
    for sample, (_, observed) in zip(feeds, run_observed(q.float_model, iter(feeds), float_names + out_names)):
        got = interp.run(sample, keep=keep)
        for qname in keep:
            if qname not in got:
                continue
            r = by_q[qname]
            o = r["output"]
            ref = observed.get(o["tensor"])
            if ref is None:
                continue
            deq = (got[qname].astype(np.float64) - o["zero_point"]) * o["scale"]
            signal[qname] = signal.get(qname, 0.0) + float(np.sum(np.asarray(ref, np.float64) ** 2))
            noise[qname] = noise.get(qname, 0.0) + float(np.sum((np.asarray(ref, np.float64) - deq) ** 2))
        for k in out_names:
            outs_f[k].append(np.asarray(observed[k]))
            outs_q[k].append(np.asarray(got[k]))
    for qname, r in by_q.items():
        if qname in noise:
            r["sqnr_db"] = _db(signal[qname], noise[qname])
    outputs = {}
    for k in out_names:
        if not outs_f[k]:
            continue
        f, g = np.concatenate(outs_f[k]), np.concatenate(outs_q[k])
        m = {"sqnr_db": sqnr_db(f, g),
             "cosine": cosine_similarity(f, g)}
        if f.ndim >= 2 and f.shape[-1] >= 2:
            m["top1"] = topk_agreement(f, g)
        outputs[k] = m
    from qgraph.ir import l3

    counts = {"integer_ops": 0, "lookups": 0, "float_ops": 0}
    for n in q.integer.graph:
        if n.op is l3.Lookup:
            counts["lookups"] += 1
        elif n.op in l3.INTEGER_OPS and n.op not in (l3.Quantize, l3.Dequantize):
            counts["integer_ops"] += 1
        elif n.op.domain == "" and any(v is not None and v.dtype is not None and v.dtype.name == "FLOAT"
                                       for v in n.outputs):
            counts["float_ops"] += 1
    meta = getattr(q.ranges, "meta", {}) or {}
    summary = {"method": meta.get("method"), "calibration_samples": meta.get("samples"), "report_samples": len(feeds),
               **counts}
    return Report(rows, {k: {kk: json_float(vv) for kk, vv in v.items()} for k, v in outputs.items()}, summary)


def _db(signal: float, noise: float):
    """SQNR from signal and noise energies summed over samples (``sqnr_db`` of the
    concatenation, without holding every sample's tensors), JSON-safe."""
    if noise == 0.0:
        return "inf"
    if signal == 0.0:
        return "-inf"
    return 10.0 * math.log10(signal / noise)

