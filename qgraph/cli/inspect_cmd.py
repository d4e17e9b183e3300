"""``qgraph inspect``: what a model holds."""

from __future__ import annotations

from collections import Counter
from typing import Any

from qgraph.ir.core import AttrType, Model, Value
from qgraph.ir.dtypes import SHORT_NAME
from qgraph.ir.ops import Constant
from qgraph.ir.types import TensorType


def _io(v: Value) -> dict[str, Any]:
    t = v.type
    if isinstance(t, TensorType):
        return {"name": v.name, "dtype": SHORT_NAME[t.dtype],
                "shape": None if t.shape is None else list(t.shape)}
    return {"name": v.name, "type": str(t) if t is not None else None}


def summarize(model: Model, path: str = "") -> dict[str, Any]:
    """The facts ``inspect`` shows, as a JSON-ready dict."""
    ops: Counter[str] = Counter()
    n_main = len(model.graph)
    n_all = 0
    tensors = []
    for g in model.graph.all_graphs():
        tensors.extend(v.const_value for v in g.initializers.values())
        for n in g:
            n_all += 1
            ops[str(n.op)] += 1
            if n.op is Constant:
                tensors.extend(a.value for a in n.attrs.values() if a.type == AttrType.TENSOR)
    return {
        "path": path,
        "ir_version": model.ir_version,
        "opsets": {(d or "ai.onnx"): v for d, v in model.opset_imports.items()},
        "producer": {"name": model.producer_name, "version": model.producer_version},
        "graph": model.graph.name,
        "nodes": {"total": n_all, "main_graph": n_main, "in_subgraphs": n_all - n_main},
        "ops": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
        "inputs": [_io(v) for v in model.graph.inputs if not v.is_initializer()],
        "outputs": [_io(v) for v in model.graph.outputs],
        "parameters": {
            "tensors": len(tensors),
            "elements": sum(t.size for t in tensors),
            "bytes": sum(t.nbytes for t in tensors),
            "external_tensors": sum(t.is_external for t in tensors),
        },
        "functions": len(model.functions),
    }


def _fmt_io(d: dict[str, Any]) -> str:
    if "dtype" in d:
        shape = "[*]" if d["shape"] is None else "[" + ",".join("?" if x is None else str(x) for x in d["shape"]) + "]"
        return f"  {d['name']}: {d['dtype']}{shape}"
    return f"  {d['name']}: {d['type']}"


def format_text(s: dict[str, Any]) -> str:
    p = s["parameters"]
    opsets = ", ".join(f"{d} {v}" for d, v in s["opsets"].items())
    nodes = s["nodes"]
    lines = [
        f"model {s['path']}",
        f"  ir_version {s['ir_version']}; opsets: {opsets}",
        f"  producer: {s['producer']['name']} {s['producer']['version']}".rstrip(),
        f"  nodes: {nodes['total']}" + (f" ({nodes['in_subgraphs']} in subgraphs)" if nodes["in_subgraphs"] else ""),
        f"  parameters: {p['elements']:,} elements in {p['tensors']} tensors, {p['bytes']:,} bytes"
        + (f" ({p['external_tensors']} external)" if p["external_tensors"] else ""),
        "inputs:", *(_fmt_io(d) for d in s["inputs"]),
        "outputs:", *(_fmt_io(d) for d in s["outputs"]),
        "ops:", *(f"  {name:32s} {count:6d}" for name, count in s["ops"].items()),
    ]
    return "\n".join(lines)


def format_ranges(ranges: dict[str, Any]) -> str:
    """The ``ranges`` section of ``inspect --ranges`` (a RangeMap's JSON form) as a table."""
    rows = ranges.get("ranges", {})
    sources = ranges.get("sources", {})
    lines = [f"ranges ({len(rows)} tensors):", f"  {'tensor':40s} {'source':12s} {'min':>14s} {'max':>14s}"]
    for name, (lo, hi) in rows.items():
        lines.append(f"  {name:40s} {sources.get(name, ''):12s} {str(lo):>14s} {str(hi):>14s}")
    unknown = ranges.get("meta", {}).get("unknown_ops")
    if unknown:
        lines.append("  ops with no static range rule: " + ", ".join(f"{k} x{v}" for k, v in unknown.items()))
    return "\n".join(lines)
