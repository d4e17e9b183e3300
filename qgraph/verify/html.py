"""report.html: the report as one self-contained page, with plots.

Warnings first, then the header, the outputs (metrics and a float-vs-quantized scatter
of each), a per-layer SQNR bar chart, the calibrated ranges of the worst layers, what
stayed float. Plots are drawn with matplotlib's object API (``matplotlib.figure.Figure``,
rendered by Agg): no pyplot, so no global state is touched, and they are embedded as
base64 PNG so that the file opens anywhere, offline.
"""

from __future__ import annotations

import base64
import io
import math
from html import escape
from typing import Any

import numpy as np

from qgraph.verify.markdown import header_lines, num, qat_rows, range_text, weight_text
from qgraph.verify.metrics import fmt

#: layers shown in the "worst layers" table
WORST = 10

_STYLE = """body{font-family:sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:left;font-size:90%}
.warn{background:#fff3cd;border:1px solid #e0b000;padding:.5em 1em}.ok{color:#2a7a2a}
img{max-width:100%}"""


def _png(fig) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)  # Agg for this figure only; the process-wide backend stays as it is
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _img(fig, alt: str) -> str:
    return f'<img class="plot" alt="{escape(alt)}" src="data:image/png;base64,{_png(fig)}">'


def _db(x) -> float | None:
    if x is None:
        return None
    if isinstance(x, str):
        return math.inf if x == "inf" else -math.inf
    return float(x)


def sqnr_chart(layers: list[dict], flagged: set[str]) -> str:
    """A bar per layer with an SQNR, in graph order; layers with a warning and those at or
    below 0 dB in red; infinite (exact) SQNR drawn at the top of the axis."""
    from matplotlib.figure import Figure

    rows = [(r["node"] or (r.get("output") or {}).get("tensor", "?"), _db(r.get("sqnr_db"))) for r in layers]
    rows = [(n, v) for n, v in rows if v is not None]
    if not rows:
        return "<p>no layer has an SQNR.</p>"
    finite = [v for _, v in rows if math.isfinite(v)] or [0.0]
    top, bottom = max(finite + [0.0]) + 5, min(finite + [0.0]) - 5
    values = [min(max(v, bottom), top) for _, v in rows]
    colors = ["#c0392b" if n in flagged or v <= 0 else "#2e86c1" for (n, v) in rows]
    # constrained layout: fixed fractional margins left a band of empty inches above a tall chart
    fig = Figure(figsize=(8, max(2.5, 0.16 * len(rows) + 1)), layout="constrained")
    ax = fig.add_subplot()
    ax.barh(range(len(rows)), values, color=colors)
    ax.margins(y=0.005)
    ax.set_yticks(range(len(rows)), [n for n, _ in rows], fontsize=7)
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlim(bottom, top)
    ax.set_xlabel("SQNR vs float (dB)")
    ax.set_title("per-layer SQNR (red: warned or <= 0 dB)")
    return _img(fig, "per-layer SQNR")


def scatter(name: str, f: np.ndarray, q: np.ndarray) -> str:
    """Quantized against float values of one output, with the diagonal."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2, 4.2), layout="constrained")
    ax = fig.add_subplot()
    ax.scatter(f, q, s=3, alpha=0.4)
    if f.size:
        lo, hi = float(min(f.min(), q.min())), float(max(f.max(), q.max()))
        ax.plot([lo, hi], [lo, hi], color="black", linewidth=0.8)
    ax.set_xlabel("float")
    ax.set_ylabel("quantized")
    ax.set_title(name, fontsize=9)
    return _img(fig, f"output {name}: quantized vs float")


def _table(head: list[str] | None, rows: list[list[Any]]) -> str:
    out = ["<table>" + ("<tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr>" if head else "")]
    out += ["<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in r) + "</tr>" for r in rows]
    return "".join(out) + "</table>"


def pareto(points: list[dict], cost_kind: str) -> str:
    """The assignments ``--precision auto`` built and measured: channel SQNR against cost, the
    ones that held the floor filled, the chosen one ringed."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.6), layout="constrained")
    ax = fig.add_subplot()
    for ok, marker in ((True, "o"), (False, "x")):
        pts = [p for p in points if p["ok"] is ok and _db(p["metrics"].get("sqnr")) is not None]
        if pts:
            ax.scatter([p["cost"] for p in pts], [_db(p["metrics"]["sqnr"]) for p in pts], marker=marker,
                       label="holds the floor" if ok else "fails the floor")
    ax.set_xlabel(f"cost ({cost_kind})")
    ax.set_ylabel("worst output's channel SQNR (dB)")
    ax.legend(loc="lower right", fontsize=8)
    return _img(fig, "accuracy against cost of every assignment measured")


def _precision(p: dict) -> list[str]:
    if not p:
        return []
    frac = p.get("mac_fraction_8bit")
    out = ["<h2>Precision</h2>", _table(None, [
        ["multiply-accumulates on 8-bit operands", "n/a" if frac is None else f"{frac:.1%}"],
        ["conv / matmul weight bytes", p.get("weight_bytes")]])]
    search = p.get("search")
    if not search:
        return out
    out.append(f"<p>Chosen by <code>--precision auto</code>: floor {escape(search['floor'])} "
               f"{'held' if search['floor_met'] else '<b>not met</b>'} on {search['verify_samples']} calibration "
               f"samples; {search['probes']} probes ({search['cached_probes']} cached), {escape(search['executor'])}, "
               f"{search['seconds']} s.</p>")
    out.append(pareto(search["points"], search["cost"]))
    rows = [[n, r["op"], r["format"], r["macs"], num(r["weight_bytes"]),
             ", ".join(f"{f} {num(d)}" for f, d in r["damage"].items() if f != "float")]
            for n, r in p["per_layer"].items() if "format" in r]
    out.append(_table(["layer", "op", "format", "MACs", "weight bytes", "damage per format"], rows))
    return out


def _qat(report) -> list[str]:
    """PTQ vs QAT per output and the loss / eval metric curve (``Report.qat``)."""
    from matplotlib.figure import Figure

    q = report.qat
    if not q:
        return []
    out = ["<h2>Quantization-aware training</h2>",
           _table(["output", "model", "SQNR dB", "top-1 agreement", "accuracy"], qat_rows(report))]
    loss, metric = q.get("loss") or [], q.get("metric") or []
    if loss:
        fig = Figure(figsize=(6, 3.2), layout="constrained")
        ax = fig.add_subplot()
        epochs = list(range(1, len(loss) + 1))
        ax.plot(epochs, loss, marker="o", label="training loss")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        if metric:
            ax2 = ax.twinx()
            ax2.plot(epochs[:len(metric)], metric, marker="s", color="tab:orange", label=f"eval {q.get('metric_name')}")
            ax2.set_ylabel(str(q.get("metric_name")))
        out.append(_img(fig, "training loss and eval metric per epoch"))
    return out


def render_html(report) -> str:
    """The page (``Report.html``)."""
    s = report.summary
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>qgraph report</title>"
             f"<style>{_STYLE}</style></head><body><h1>qgraph quantization report</h1>"]
    if report.warnings:
        parts.append(f"<div class='warn'><h2>Warnings ({len(report.warnings)})</h2><ul>"
                     + "".join(f"<li><b>{escape(w.kind)}</b>: {escape(w.message)}</li>" for w in report.warnings)
                     + "</ul></div>")
    else:
        parts.append("<p class='ok'>No warnings.</p>")
    parts.append(_table(None, [[k, v] for k, v in header_lines(s)]))

    parts.append(f"<h2>Outputs (quantized vs float, {escape(str(s.get('measured_on')))})</h2>")
    parts.append(_table(["output", "SQNR dB", "cosine", "top-1 agreement", "accuracy float", "accuracy quantized"],
                        [[k, num(m.get("sqnr_db")), fmt(m.get('cosine', 0), '.6f'),
                          *("" if m.get(x) is None else f"{m[x] * 100:.2f}%"
                            for x in ("top1", "accuracy_float", "accuracy_quantized"))]
                         for k, m in report.outputs.items()]))
    parts += [scatter(k, f, q) for k, (f, q) in report.plots.get("outputs", {}).items()]

    flagged = {w.node for w in report.warnings if w.node}
    parts.append(f"<h2>Per-layer SQNR (on {escape(str(s.get('layers_measured_on')))})</h2>")
    parts.append(sqnr_chart(report.layers, flagged))

    measured = [r for r in report.layers if _db(r.get("sqnr_db")) is not None]
    worst = sorted(measured, key=lambda r: _db(r["sqnr_db"]))[:WORST]
    parts.append(f"<h2>Worst {len(worst)} layers: calibrated ranges</h2>")
    parts.append(_table(["node", "op", "tensor", "calibrated range", "scale", "zero point", "weight", "SQNR dB"],
                        [[r["node"], r["op"], (r.get("output") or {}).get("tensor", ""),
                          range_text(r.get("output") or {}), num((r.get("output") or {}).get("scale")),
                          (r.get("output") or {}).get("zero_point", ""), weight_text(r.get("weight")),
                          num(r.get("sqnr_db"))] for r in worst]))

    parts += _precision(report.precision)
    parts += _qat(report)

    parts.append(f"<h2>Stayed float ({len(report.stayed_float)})</h2>")
    parts.append(_table(["node", "op", "why"], [[r["node"], r["op"], r["reason"]] for r in report.stayed_float])
                 if report.stayed_float else "<p>none: every op runs on integers</p>")
    parts.append("</body></html>\n")
    return "".join(parts)
