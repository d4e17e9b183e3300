"""report.md: the header, the warnings, the outputs, what stayed float and why, the layers.

Numbers print with 4 significant digits (``num``); the op counts are the report's summary
(``qgraph.verify.float_ops.op_counts``), so they agree with report.json and with the
"Stayed float" list.
"""

from __future__ import annotations

from typing import Any

from qgraph.verify.metrics import fmt


def samples(n) -> str:
    """``1 sample``, ``8 samples``."""
    return f"{n} sample{'' if n == 1 else 's'}"


def num(x) -> str:
    """A number with 4 significant digits (``%.4g``); strings (``inf``) as they are; None as ''."""
    if x is None:
        return ""
    if isinstance(x, str):
        return x
    return f"{x:.4g}"


def header_lines(s: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, text) pairs of the report header, shared by report.md and report.html."""
    ev = s.get("eval")
    return [
        ("model", str(s.get("model") or "(in memory)")),
        ("qgraph", str(s.get("qgraph_version"))),
        ("calibration", f"{s.get('method')} on {samples(s.get('calibration_samples'))}"),
        ("config", str(s.get("config"))),
        ("target", str(s.get("target") or "not given (the QDQ model and the integer reference)")),
        ("eval data", f"{samples(ev['samples'])} from {ev['source']}" + (" with labels" if ev.get("labels") else "")
         if ev else ("none: output metrics are on calibration data (in-sample); "
                     "give held-out data with --eval DATA.npz (eval= in Python)")),
        ("ops", f"{s.get('integer_ops')} integer, {s.get('lookups', 0)} table lookups, {s.get('float_ops')} float"),
    ] + ([("runs on", str(s["runs_on"]))] if s.get("runs_on") else [])


def weight_text(w: dict | None) -> str:
    if not w:
        return ""
    if w.get("per_channel"):
        return f"{w['dtype']} per-channel ({w['channels']}) {num(w['scale_min'])}..{num(w['scale_max'])}"
    return f"{w['dtype']} {num(w.get('scale'))}"


def range_text(out: dict) -> str:
    r = out.get("range")
    return f"[{num(r[0])}, {num(r[1])}]" if r else ""


def render_markdown(report) -> str:
    """The report as Markdown (``Report.markdown``)."""
    s = report.summary
    lines = ["# qgraph quantization report", ""]
    lines += [f"- {k}: {v}" for k, v in header_lines(s)]
    lines += ["", f"## Warnings ({len(report.warnings)})", ""]
    lines += [f"- **{w.kind}**: {w.message}" for w in report.warnings] or ["none"]
    lines += ["", f"## Outputs (quantized vs float, {s.get('measured_on')})", "",
              "| output | SQNR dB | cosine | top-1 agreement | accuracy float | accuracy quantized |",
              "|---|---|---|---|---|---|"]
    for name, m in report.outputs.items():
        pct = {k: "" if m.get(k) is None else f"{m[k] * 100:.2f}%" for k in ("top1", "accuracy_float",
                                                                            "accuracy_quantized")}
        lines.append(f"| {name} | {num(m.get('sqnr_db'))} | {fmt(m.get('cosine', 0), '.6f')} | {pct['top1']} | "
                     f"{pct['accuracy_float']} | {pct['accuracy_quantized']} |")
    lines += ["", "top-1 agreement is given for classifier-shaped outputs only (`[N, C]`, or a softmax-like "
              "last axis; see `qgraph.verify.metrics.classifier_shaped`); accuracy where the data has `labels`."]
    lines += precision_lines(report.precision)
    lines += qat_lines(report)
    lines += ["", f"## Stayed float ({len(report.stayed_float)})", ""]
    if report.stayed_float:
        lines += ["| node | op | why |", "|---|---|---|"]
        lines += [f"| {r['node']} | {r['op']} | {r['reason']} |" for r in report.stayed_float]
    else:
        lines.append("none: every op runs on integers")
    if report.placement:
        lines += ["", f"## Runs on ({s.get('target')})", "", "| node | op | kind | runs on |", "|---|---|---|---|"]
        lines += [f"| {r['node']} | {r['op']} | {r['kind']} | {r['runs_on']} |" for r in report.placement]
    placed = any("runs_on" in r for r in report.layers)  # a target that places ops (qnn: HTP or CPU)
    lines += ["", f"## Layers (SQNR on {s.get('layers_measured_on')})", "",
              "| node | op | inputs | weight | output | calibrated range | scale | zero point | SQNR dB |"
              + (" runs on |" if placed else ""),
              "|---|---|---|---|---|---|---|---|---|" + ("---|" if placed else "")]
    for r in report.layers:
        out = r.get("output") or {}
        lines.append(f"| {r['node']} | {r['op']} | {', '.join(r['inputs'])} | {weight_text(r.get('weight'))} | "
                     f"{out.get('dtype', 'float')} | {range_text(out)} | {num(out.get('scale'))} | "
                     f"{out.get('zero_point', '')} | {num(r.get('sqnr_db'))} |"
                     + (f" {r.get('runs_on', '')} |" if placed else ""))
    return "\n".join(lines) + "\n"


def _pct(m: dict, key: str) -> str:
    return "" if m.get(key) is None else f"{m[key] * 100:.2f}%"


def qat_rows(report) -> list[list[str]]:
    """One row per output and model: PTQ then QAT (SQNR dB, top-1 agreement, accuracy)."""
    rows = []
    for name, m in report.outputs.items():
        p = report.qat.get("ptq", {}).get(name, {})
        for label, x in (("PTQ", p), ("QAT", m)):
            rows.append([name, label, num(x.get("sqnr_db")), _pct(x, "top1"), _pct(x, "accuracy_quantized")])
    return rows


def qat_lines(report) -> list[str]:
    """The quantization-aware training section (``Report.qat``), when there was one."""
    q = report.qat
    if not q:
        return []
    lines = ["", "## Quantization-aware training", "", "| output | model | SQNR dB | top-1 agreement | accuracy |",
             "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in qat_rows(report)]
    metric = q.get("metric") or []
    lines += ["", "| epoch | loss |" + (f" eval {q.get('metric_name')} |" if metric else ""),
              "|---|---|" + ("---|" if metric else "")]
    for i, loss in enumerate(q.get("loss", [])):
        lines.append(f"| {i + 1} | {loss:.4f} |" + (f" {metric[i]:.4f} |" if i < len(metric) else ""))
    if q.get("best_epoch"):
        lines += ["", f"kept: epoch {q['best_epoch']} (best eval {q.get('metric_name')})"]
    return lines


def precision_lines(p: dict[str, Any]) -> list[str]:
    """The "Precision" section: MACs on 8-bit operands, weight bytes; after ``--precision auto``
    the search (floor, points verified) and one row per layer (format, candidates' damages, MACs)."""
    if not p:
        return []
    frac = p.get("mac_fraction_8bit")
    lines = ["", "## Precision", "",
             f"- multiply-accumulates on 8-bit operands: {'n/a' if frac is None else f'{frac:.1%}'}",
             f"- conv / matmul weight bytes: {p.get('weight_bytes')}"]
    search = p.get("search")
    if not search:
        return lines
    lines += [f"- chosen by `--precision auto`: floor {search['floor']} "
              f"{'held' if search['floor_met'] else '**not met**'} on {search['verify_samples']} calibration "
              f"samples ({', '.join(f'{k} {num(v)}' for k, v in search['measured'].items())}); "
              f"{search['probes']} sensitivity probes on {search['sensitivity_samples']} samples "
              f"({search['cached_probes']} cached, {search.get('bounded', 0)} wide formats bounded by their 8-bit "
              f"probe), {search['executor']}, {search['seconds']} s",
              "", "Assignments verified (cost is " + search["cost"] + "):", "",
              "| damage budget | cost | weight bytes | floor | metrics | formats |", "|---|---|---|---|---|---|"]
    for pt in search["points"]:
        lines.append(f"| {num(pt['budget'])} | {num(pt['cost'])} | {num(pt['weight_bytes'])} | "
                     f"{'holds' if pt['ok'] else 'fails'} | "
                     f"{', '.join(f'{k} {num(v)}' for k, v in pt['metrics'].items())} | "
                     f"{', '.join(f'{k} {n}' for k, n in sorted(pt['formats'].items()))} |")
    rows = [(name, r) for name, r in p["per_layer"].items() if "format" in r]
    lines += ["", "Per layer (damage: the outputs' channel noise-to-signal ratio with this layer alone in "
              "that format):", "", "| layer | op | format | MACs | weight bytes | damage per format |",
              "|---|---|---|---|---|---|"]
    for name, r in rows:
        dmg = ", ".join(f"{f} {num(d)}" for f, d in r["damage"].items() if f != "float")
        lines.append(f"| {name} | {r['op']} | {r['format']} | {r['macs']} | {num(r['weight_bytes'])} | {dmg} |")
    if search.get("forced_float"):
        lines += ["", "Kept float because lower-qdq refused their integer form: "
                  + ", ".join(search["forced_float"])]
    return lines
