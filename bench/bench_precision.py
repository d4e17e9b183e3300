"""Mixed precision side by side: ``--precision auto`` next to uniform int8, "keep the k most
sensitive layers float", ONNX Runtime's quantizer and OpenVINO NNCF's accuracy-controlled
quantizer, at the same allowed accuracy drop (issue 15).

    python bench/bench_precision.py [--models digits,det,rec,rec-plain,rec-shift] [--quick] [--no-nncf]
                                    [--nncf-timeout 600] [--cache] [--json OUT.json]

For each model, one table: the variant, its accuracy on held-out data, the drop from float
in points, ``mac_fraction_8bit`` (the share of Conv / MatMul / Gemm multiply-accumulates whose
two operands are 8 bits or narrower), the weight bytes, the share of weights stored at 4 bits,
and the seconds it took to produce the model (calibration included; for ``auto`` the search's
own seconds are in the note). Variants:

- ``float``: the model as given, ONNX Runtime.
- ``qgraph int8``: ``qgraph.quantize`` with the default config (W8A8: uint8 activations per
  tensor, int8 per-channel weights, bias correction), minmax.
- ``qgraph int8, no bias corr.``: the same with ``bias_correction`` off (the float biases, as
  ONNX Runtime's quantizer writes them).
- ``qgraph auto``: ``precision="auto"`` (W8A8 / W8A16 / W4A8 / float per layer) with the floor
  a callable on the calibration data: the task metric may drop at most ``max_drop`` from
  float's. Sensitivities are not read from the cache (a cold search) unless ``--cache``.
- ``qgraph k float``: uniform int8 with the k layers the search found most damaging at W8A8
  kept float (``assignment_config``, so their integer readers get the same uint16 boundary
  that ``auto``'s float layers get), k = 1, 3, 10.
- ``qgraph W4A8`` (digits only): every weight at 4 bits.
- ``ORT int8``: ``onnxruntime.quantization.quantize_static`` (QDQ, per-channel, MinMax,
  QUInt8 activations, QInt8 weights, no ``quant_pre_process``) over the same calibration
  arrays, run in ONNX Runtime's CPU EP. Two preparations its users need are made first and
  named in the note: opset raised to 13 (per-channel DequantizeLinear's ``axis``; ORT writes
  it into opset 11 / 12 models, then refuses them), and Constant-node weights (PP-OCRv4 rec
  has no initializers) moved to initializers (ORT would calibrate them as activations, per
  tensor: 48.9% characters on rec instead of ~95%). NNCF gets the opset 13 model (it reads
  Constant-node weights itself).
- ``NNCF qwac``: ``nncf.quantize_with_accuracy_control`` on the ONNX model (int8 or float per
  layer) with ``max_drop`` equal to qgraph's floor, validated on the same calibration data
  with the same metric; it runs in a child process (this script with ``--nncf-worker``) so its
  wall time and peak RSS (VmHWM, polled) are its own and it can be stopped at
  ``--nncf-timeout`` seconds. Optional: without ``nncf`` / ``openvino`` installed the column
  is skipped with the reason printed.

qgraph variants are evaluated through ``QuantizedModel.run(backend="ort-sim")`` (ONNX
Runtime's float simulation of the QDQ model, what the search verifies with); the peers' QDQ
models in ONNX Runtime as it runs them by default. ``mac_fraction_8bit`` and weight bytes
come from ``qgraph.verify.precision.precision_summary`` on every variant's QDQ model, shapes
inferred at the evaluation input shape, so the tools are counted the same way.

Models and data (everything in one process, so the figures are side by side):

- ``rec``: PP-OCRv4 rec (rapidocr wheel). Calibration: 48 lines (``ocr.sample_texts(48, 1)``)
  drawn by ``render_varied`` (other DejaVu faces and sizes than ``ocr.render_lines``, text /
  background colours, slight blur and noise; PaddleOCR's layout), seed 1. Held out: 500 lines
  (100 with ``--quick``) of seed 2, drawn the same way. Metric: character accuracy against
  the true text; allowed drop 0.25 points (3,508 characters in 200 lines: one point is ~35).
- ``rec-plain``: the same, calibration and held-out lines drawn by ``ocr.render_lines``.
- ``rec-shift``: calibrated on ``ocr.render_lines``, held out drawn by ``render_varied``: data
  unlike the calibration (a stress case: ranges calibrated on clean lines clip noisy ones).
- ``det``: ddddocr's YOLOX detector with YOLOX's decode head (``detect.decoded_model``), whose
  output Concat joins pixel boxes and scores. Calibration: 32 pages of seed 1; held out: 16
  pages (8 with ``--quick``) of seed 2. Metric: recall of float's detections at IoU 0.5;
  allowed drop 10 points (issue 15: recall >= 0.9).
- ``digits``: the golden digits CNN; calibration ``golden/data/digits_calib.npz`` (128, no
  labels: the floor and NNCF's validation use agreement with float's top-1 there), held out
  ``golden/data/digits_test.npz`` (500, labels). Metric: accuracy; allowed drop 0.25 points.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

MODELS = ("digits", "det", "rec", "rec-plain", "rec-shift")
K_FLOAT = (1, 3, 10)
FONT_DIR = "/usr/share/fonts/truetype/dejavu"
#: faces the held-out rec lines are drawn in (calibration lines use DejaVuSans only)
VARIED_FONTS = ("DejaVuSerif.ttf", "DejaVuSans-Bold.ttf", "DejaVuSansMono.ttf", "DejaVuSansCondensed.ttf",
                "DejaVuSerif-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans.ttf")


# -- models and data ------------------------------------------------------------------------------
def render_varied(texts: list[str], seed: int, height: int = 48, width: int = 320, margin: int = 6) -> np.ndarray:
    """Text lines laid out as ``ocr.render_lines`` lays them out (a light box just wide enough
    for the text, the rest of the row 0 after normalization), but drawn differently: a DejaVu
    face from ``VARIED_FONTS``, size 20-32, dark text on a light background of random colours,
    +-2 px vertical jitter, Gaussian blur of radius 0-0.9 and pixel noise of sigma 0-8.
    Deterministic for a seed."""
    from PIL import Image, ImageDraw, ImageFilter, ImageFont

    def font(name: str, size: int):
        path = os.path.join(FONT_DIR, name)
        return ImageFont.truetype(path, size) if os.path.exists(path) else ImageFont.load_default(size=size)

    rng = np.random.default_rng(seed)
    out = np.zeros((len(texts), 3, height, width), np.float32)
    for i, text in enumerate(texts):
        name = VARIED_FONTS[int(rng.integers(len(VARIED_FONTS)))]
        size = int(rng.integers(20, 33))
        bg = tuple(int(c) for c in rng.integers(185, 256, 3))
        fg = tuple(int(c) for c in rng.integers(0, 90, 3))
        jitter = int(rng.integers(-2, 3))
        blur = float(rng.uniform(0.0, 0.9))
        sigma = float(rng.uniform(0.0, 8.0))
        f = font(name, size)
        while size > 8 and f.getlength(text) + 2 * margin > width:
            size -= 1
            f = font(name, size)
        img = Image.new("RGB", (width, height), bg)
        top, bottom = f.getbbox("Hg")[1:4:2]
        ImageDraw.Draw(img).text((margin, (height - (bottom - top)) // 2 - top + jitter), text, fill=fg, font=f)
        if blur > 0.05:
            img = img.filter(ImageFilter.GaussianBlur(blur))
        px = np.asarray(img, np.float32) + rng.normal(0.0, sigma, (height, width, 3)).astype(np.float32)
        used = min(width, int(np.ceil(f.getlength(text))) + 2 * margin)
        px = np.clip(px, 0, 255)[:, :used].transpose(2, 0, 1)
        out[i, :, :, :used] = (px / 255.0 - 0.5) / 0.5
    return out


@dataclass
class Case:
    """One model of the bench: its data, its metric and the drop it is allowed."""

    name: str
    model: Any  # path or onnx.ModelProto
    input: str
    batch: int  # the batch size ONNX Runtime runs it at (the detector takes 1)
    calib: np.ndarray
    calib_truth: Any  # what the floor and NNCF's validation score the calibration samples against
    metric: str
    max_drop: float  # a fraction (0.0025 = 0.25 points)
    score: Callable[[np.ndarray, Any], float]  # (outputs, truth) -> metric
    per_sample: Callable[[np.ndarray, Any], list]  # (outputs, truth) -> metric per sample
    eval_x: np.ndarray | None = None
    eval_truth: Any = None
    extra: dict = field(default_factory=dict)

    def proto(self):
        import onnx

        return onnx.load(self.model) if isinstance(self.model, str) else self.model


def run_onnx(model: Any, x: np.ndarray, input_name: str, batch: int) -> np.ndarray:
    """The model's first output on ``x``, ONNX Runtime CPU EP, default optimizations."""
    from qgraph.testing.ort import session

    if not isinstance(model, (bytes, str)):
        model = model.SerializeToString()
    sess = session(model)
    return np.concatenate([sess.run(None, {input_name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def make_case(name: str, quick: bool, with_eval: bool = True) -> Case:
    if name in ("rec", "rec-plain", "rec-shift"):
        from qgraph.testing import ocr

        def rec_score(out, truth):
            return ocr.char_agreement(ocr.ctc_decode(out), list(truth))

        def rec_per(out, truth):
            return [ocr.char_agreement([a], [b]) for a, b in zip(ocr.ctc_decode(out), truth)]

        texts = ocr.sample_texts(48, seed=1)
        calib = ocr.render_lines(texts) if name in ("rec-plain", "rec-shift") else render_varied(texts, seed=1)
        case = Case(name, ocr.rec_model_path(), "x", 8, calib, texts, "char accuracy", 0.0025, rec_score, rec_per)
        if with_eval:
            held = ocr.sample_texts(100 if quick else 500, seed=2)
            case.eval_x = ocr.render_lines(held) if name == "rec-plain" else render_varied(held, seed=2)
            case.eval_truth = held
        return case
    if name == "det":
        from qgraph.testing import detect

        def det_score(out, truth):
            return detect.recall(truth, detect.decode(out))

        def det_per(out, truth):
            return [detect.recall([t], detect.decode(o[None])) for o, t in zip(out, truth)]

        model = detect.decoded_model()
        calib = detect.render_pages(32, seed=1)
        case = Case("det", model, "images", 1, calib, detect.decode(run_onnx(model, calib, "images", 1)),
                    "recall vs float @IoU0.5", 0.10, det_score, det_per)
        if with_eval:
            case.eval_x = detect.render_pages(8 if quick else 16, seed=2)
            case.eval_truth = detect.decode(run_onnx(model, case.eval_x, "images", 1))
            case.extra["float_detections"] = int(sum(len(b) for b, _, _ in case.eval_truth))
        return case
    if name == "digits":
        def top1(out, truth):
            return float(np.mean(np.argmax(out, -1) == np.asarray(truth)))

        def top1_per(out, truth):
            return [float(v) for v in (np.argmax(out, -1) == np.asarray(truth))]

        path = os.path.join(ROOT, "golden", "models", "digits_cnn.onnx")
        with np.load(os.path.join(ROOT, "golden", "data", "digits_calib.npz")) as z:
            calib = z["input"]
        agree = np.argmax(run_onnx(path, calib, "input", len(calib)), -1)
        case = Case("digits", path, "input", 500, calib, agree, "accuracy", 0.0025, top1, top1_per)
        if with_eval:
            with np.load(os.path.join(ROOT, "golden", "data", "digits_test.npz")) as z:
                case.eval_x, case.eval_truth = z["input"], z["label"]
        return case
    raise SystemExit(f"unknown model '{name}': choose from {', '.join(MODELS)}")


# -- the variants ---------------------------------------------------------------------------------
def summary(qdq_proto, case: Case) -> dict:
    """``precision_summary`` of a QDQ model, shapes inferred at the evaluation input shape; and
    the share of weight elements stored at 4 bits or fewer."""
    import onnx

    import qgraph
    from qgraph.ir.l2 import DEQUANTIZE
    from qgraph.verify.precision import precision_summary

    proto = onnx.ModelProto()
    proto.CopyFrom(qdq_proto)
    shape = (1, *case.calib.shape[1:])
    for inp in proto.graph.input:
        if inp.name == case.input:
            for d, n in zip(inp.type.tensor_type.shape.dim, shape):
                d.Clear()
                d.dim_value = n
    proto = onnx.shape_inference.infer_shapes(proto)
    model = qgraph.load(proto)
    s = precision_summary(model)
    elems = narrow = 0
    for node in model.graph:
        info = s["per_layer"].get(node.name or node.outputs[0].name)
        if info is None:
            continue
        src = node.inputs[1].producer()
        stored = src.inputs[0] if src is not None and src.op in DEQUANTIZE else node.inputs[1]
        n = math.prod(d for d in (stored.shape or ()) if isinstance(d, int))
        elems += n
        narrow += n if info["weight_bits"] <= 4 else 0
    return {"mac_fraction_8bit": s["mac_fraction_8bit"], "weight_bytes": s["weight_bytes"],
            "w4_share": narrow / elems if elems else 0.0}


def row(case: Case, variant: str, outputs: np.ndarray | None, qdq_proto, seconds: float | None, note: str = "",
        **more) -> dict:
    r = {"variant": variant, "metric": None, "drop_points": None, "mac_fraction_8bit": None, "weight_bytes": None,
         "w4_share": None, "seconds": None if seconds is None else round(seconds, 2), "note": note, **more}
    if outputs is not None:
        r["metric"] = case.score(outputs, case.eval_truth)
        r["drop_points"] = 100.0 * (case.extra["float_metric"] - r["metric"])
    if qdq_proto is not None:
        r.update(summary(qdq_proto, case))
    return r


def floor_fn(case: Case):
    """qgraph's floor: on the calibration samples the search verifies on (its first ones, in
    order), the metric may drop at most ``max_drop`` below float's."""
    def floor(float_outputs, quantized_outputs):
        key = next(iter(float_outputs))
        f, q = float_outputs[key], quantized_outputs[key]
        truth = case.calib_truth[:len(f)]
        return case.score(q, truth) >= case.score(f, truth) - case.max_drop - 1e-12

    floor.__name__ = f"{case.metric} drop<={100 * case.max_drop:g}pt"
    return floor


def qgraph_variants(case: Case, cache: bool) -> list[dict]:
    import qgraph
    from qgraph.onnx import to_proto
    from qgraph.precision import FLOAT, W4A8, assignment_config

    feeds = {case.input: case.calib}
    rows = []

    def evaluate(q):
        return q.run({case.input: case.eval_x}, backend="ort-sim")

    def first(out):
        return next(iter(out.values()))

    t = time.perf_counter()
    uniform = qgraph.quantize(case.model, feeds, report=False, show_progress=False)
    rows.append(row(case, "qgraph int8", first(evaluate(uniform)), to_proto(uniform.qdq), time.perf_counter() - t))
    print(f"  qgraph int8: {rows[-1]['metric']:.4f}", file=sys.stderr, flush=True)

    t = time.perf_counter()
    plain = qgraph.quantize(case.model, feeds, replace(uniform.config, bias_correction=False), report=False,
                            show_progress=False)
    rows.append(row(case, "qgraph int8, no bias corr.", first(evaluate(plain)), to_proto(plain.qdq),
                    time.perf_counter() - t))
    print(f"  qgraph int8 without bias correction: {rows[-1]['metric']:.4f}", file=sys.stderr, flush=True)

    t = time.perf_counter()
    auto = qgraph.quantize(case.model, feeds, report=False, show_progress=False, precision="auto",
                           accuracy=floor_fn(case), precision_options={"cache": cache})
    wall = time.perf_counter() - t
    p = auto.precision
    counts: dict[str, int] = {}
    for f in p.assignment.values():
        counts[f] = counts.get(f, 0) + 1
    note = (f"search {p.seconds:.1f}s, {p.probes} probes ({p.cached} cached), {len(p.points)} verified, "
            f"floor {'met' if p.floor_met else 'NOT met'}; " + " ".join(f"{k}:{v}" for k, v in sorted(counts.items())))
    rows.append(row(case, "qgraph auto", first(evaluate(auto)), to_proto(auto.qdq), wall, note,
                    search_seconds=round(p.seconds, 2), assignment=dict(p.assignment), floor_met=p.floor_met))
    print(f"  qgraph auto: {rows[-1]['metric']:.4f} ({note})", file=sys.stderr, flush=True)

    # the k units the search measured as most damaging at W8A8 (a range-mixing unit, which has
    # no W8A8 candidate because the search rules it out, counts as the most damaging)
    ranked = sorted(p.units, key=lambda u: -p.damage[u.name].get("W8A8", math.inf))
    for k in K_FLOAT:
        if k > len(ranked):
            continue
        names = [u.name for u in ranked[:k]]
        cfg = assignment_config(uniform.config, {n: FLOAT.name for n in names}, p.units)
        t = time.perf_counter()
        q = qgraph.quantize(case.model, feeds, cfg, report=False, show_progress=False)
        rows.append(row(case, f"qgraph {k} float", first(evaluate(q)), to_proto(q.qdq), time.perf_counter() - t,
                        "float: " + ", ".join(names[:3]) + (", ..." if k > 3 else ""), float_layers=names))
        print(f"  qgraph {k} float: {rows[-1]['metric']:.4f}", file=sys.stderr, flush=True)

    if case.name == "digits":
        t = time.perf_counter()
        q = qgraph.quantize(case.model, feeds, W4A8.config(uniform.config), report=False, show_progress=False)
        rows.append(row(case, "qgraph W4A8", first(evaluate(q)), to_proto(q.qdq), time.perf_counter() - t))
    return rows


def prepared(proto, initializers: bool = True):
    """The float model as a peer is given it, and a note saying what changed: opset raised to
    13 (per-channel DequantizeLinear's ``axis``; ORT writes it into opset 11 / 12 models, then
    refuses them; NNCF falls back to per-tensor) and, with ``initializers``, Constant-node
    weights moved to initializers (ORT quantizes only initializer weights and calibrates a
    Constant-node weight as an activation; NNCF reads Constant weights itself, and its
    ``eliminate_nop_cast`` pass fails on a Cast that reads an initializer)."""
    import onnx
    from onnx import version_converter

    notes = []
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 13)
    if opset < 13:
        proto = version_converter.convert_version(proto, 13)
        notes.append(f"opset {opset} -> 13")
    constants = [n for n in proto.graph.node if n.op_type == "Constant" and n.attribute[0].name == "value"]
    constants = constants if initializers else []
    for n in constants:
        tensor = onnx.TensorProto()
        tensor.CopyFrom(n.attribute[0].t)
        tensor.name = n.output[0]
        proto.graph.initializer.append(tensor)
        proto.graph.node.remove(n)
    if constants:
        notes.append(f"{len(constants)} Constant nodes -> initializers")
    return proto, (", ".join(notes) + " first") if notes else ""


def ort_variant(case: Case, tmp: str) -> dict:
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.i = 0

        def get_next(self):
            if self.i >= len(case.calib):
                return None
            self.i += 1
            return {case.input: case.calib[self.i - 1:self.i]}

    src, dst = os.path.join(tmp, f"{case.name}.onnx"), os.path.join(tmp, f"{case.name}.ort.onnx")
    proto, note = prepared(case.proto())
    onnx.save(proto, src)
    t = time.perf_counter()
    quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    seconds = time.perf_counter() - t
    proto = onnx.load(dst)
    return row(case, "ORT int8", run_onnx(proto, case.eval_x, case.input, case.batch), proto, seconds, note)


# -- NNCF, in a child process ---------------------------------------------------------------------
def nncf_missing() -> str | None:
    import importlib.util

    missing = [m for m in ("nncf", "openvino") if importlib.util.find_spec(m) is None]
    return f"{' and '.join(missing)} not installed (pip install nncf openvino)" if missing else None


def nncf_worker(name: str, out_dir: str) -> None:
    """Run ``quantize_with_accuracy_control`` on ``name``'s calibration data; write the model and
    its own timings to ``out_dir``."""
    import nncf
    import onnx

    case = make_case(name, quick=False, with_eval=False)
    items = [(case.calib[i:i + 1], i) for i in range(len(case.calib))]

    def validate(model, data):
        from qgraph.testing.ort import session

        sess = session(model.SerializeToString())
        outs, idx = [], []
        for x, i in data:
            outs.append(sess.run(None, {case.input: x})[0])
            idx.append(i)
        out = np.concatenate(outs)
        truth = [case.calib_truth[i] for i in idx]
        return case.score(out, truth), case.per_sample(out, truth)

    t = time.perf_counter()
    model, note = prepared(case.proto(), initializers=False)
    quantized = nncf.quantize_with_accuracy_control(
        model, nncf.Dataset(items, lambda item: {case.input: item[0]}), nncf.Dataset(items), validate,
        max_drop=case.max_drop, subset_size=len(items))
    seconds = time.perf_counter() - t
    onnx.save(quantized, os.path.join(out_dir, "nncf.onnx"))
    with open(os.path.join(out_dir, "nncf.json"), "w") as f:
        json.dump({"seconds": seconds, "nncf": nncf.__version__, "note": note}, f)


def _vm_hwm_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def nncf_variant(case: Case, tmp: str, timeout: float) -> dict:
    import onnx

    out_dir = tempfile.mkdtemp(prefix=f"nncf-{case.name}-", dir=tmp)
    log = os.path.join(out_dir, "log.txt")
    t = time.perf_counter()
    with open(log, "w") as f:
        child = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--nncf-worker", case.name,
                                  "--nncf-out", out_dir], stdout=f, stderr=subprocess.STDOUT)
    peak = 0
    timed_out = False
    while child.poll() is None:
        peak = max(peak, _vm_hwm_kb(child.pid))
        if time.perf_counter() - t > timeout:
            child.kill()  # only the child this function started
            child.wait()
            timed_out = True
            break
        time.sleep(0.5)
    wall = time.perf_counter() - t
    mem = f"peak RSS {peak / 2**20:.2f} GiB"
    if timed_out:
        return row(case, "NNCF qwac", None, None, wall, f"timed out after {timeout:g}s (--nncf-timeout); {mem}",
                   timed_out=True, peak_rss_mib=round(peak / 1024))
    if child.returncode != 0 or not os.path.exists(os.path.join(out_dir, "nncf.onnx")):
        with open(log) as f:
            tail = [ln.strip() for ln in f.read().splitlines() if ln.strip()][-1:]
        return row(case, "NNCF qwac", None, None, wall, f"failed (exit {child.returncode}): {' '.join(tail)[:200]}",
                   peak_rss_mib=round(peak / 1024))
    with open(os.path.join(out_dir, "nncf.json")) as f:
        info = json.load(f)
    proto = onnx.load(os.path.join(out_dir, "nncf.onnx"))
    return row(case, "NNCF qwac", run_onnx(proto, case.eval_x, case.input, case.batch), proto, info["seconds"],
               "; ".join(filter(None, [f"nncf {info['nncf']}, {mem}, {wall:.0f}s with imports", info.get("note")])), peak_rss_mib=round(peak / 1024))


# -- output ---------------------------------------------------------------------------------------
def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table(case: Case, rows: list[dict]) -> str:
    head = (f"### {case.name}: {case.metric}, allowed drop {100 * case.max_drop:g} points, "
            f"{len(case.calib)} calibration / {len(case.eval_x)} held-out samples")
    lines = [head, "", "| variant | " + case.metric + " | drop (points) | mac_fraction_8bit | weight bytes "
             "| weights at 4 bit | seconds | note |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {_fmt(r['metric'] and 100 * r['metric'], '.2f')} "
                     f"| {_fmt(r['drop_points'], '+.2f')} | {_fmt(r['mac_fraction_8bit'], '.3f')} "
                     f"| {_fmt(r['weight_bytes'], ',')} | {_fmt(r['w4_share'], '.0%')} "
                     f"| {_fmt(r['seconds'], '.1f')} | {r['note']} |")
    return "\n".join(lines)


def _guarded(case: Case, variant: str, fn, *args) -> dict:
    """A peer's row, or a row saying how it failed (a peer's failure is a result, not the end of the run)."""
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - any failure of a third-party tool is reported in its row
        print(f"[{case.name}] {variant} failed: {type(e).__name__}: {e}", file=sys.stderr)
        return row(case, variant, None, None, None, f"failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}")


def bench(name: str, args, tmp: str) -> dict:
    print(f"[{name}] data", file=sys.stderr, flush=True)
    case = make_case(name, args.quick)
    float_out = run_onnx(case.proto(), case.eval_x, case.input, case.batch)
    case.extra["float_metric"] = case.score(float_out, case.eval_truth)
    rows = [row(case, "float", float_out, case.proto(), None,
                f"{case.extra['float_detections']} detections" if name == "det" else "")]
    print(f"[{name}] qgraph", file=sys.stderr, flush=True)
    rows += qgraph_variants(case, args.cache)
    print(f"[{name}] ONNX Runtime", file=sys.stderr, flush=True)
    rows.append(_guarded(case, "ORT int8", ort_variant, case, tmp))
    if args.no_nncf:
        print(f"[{name}] NNCF skipped: --no-nncf", file=sys.stderr)
        rows.append(row(case, "NNCF qwac", None, None, None, "skipped: --no-nncf"))
    elif nncf_missing():
        print(f"[{name}] NNCF skipped: {nncf_missing()}", file=sys.stderr)
        rows.append(row(case, "NNCF qwac", None, None, None, f"skipped: {nncf_missing()}"))
    else:
        print(f"[{name}] NNCF (timeout {args.nncf_timeout:g}s)", file=sys.stderr, flush=True)
        rows.append(_guarded(case, "NNCF qwac", nncf_variant, case, tmp, args.nncf_timeout))
    print(table(case, rows) + "\n", flush=True)
    return {"metric": case.metric, "max_drop_points": 100 * case.max_drop, "calib_samples": len(case.calib),
            "eval_samples": len(case.eval_x), "float_metric": case.extra["float_metric"], "rows": rows,
            **{k: v for k, v in case.extra.items() if k != "float_metric"}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated: " + ", ".join(MODELS))
    ap.add_argument("--quick", action="store_true", help="fewer held-out samples (rec 100 lines, det 8 pages)")
    ap.add_argument("--no-nncf", action="store_true", help="skip OpenVINO NNCF")
    ap.add_argument("--nncf-timeout", type=float, default=600.0, help="seconds before NNCF is stopped (default 600)")
    ap.add_argument("--cache", action="store_true", help="reuse cached sensitivities (default: a cold search)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--nncf-worker", help=argparse.SUPPRESS)
    ap.add_argument("--nncf-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.nncf_worker:
        nncf_worker(args.nncf_worker, args.nncf_out)
        return
    import onnxruntime
    import platform

    names = [n.strip() for n in args.models.split(",") if n.strip()]
    for n in names:
        if n not in MODELS:
            raise SystemExit(f"unknown model '{n}': choose from {', '.join(MODELS)}")
    print(f"python bench/bench_precision.py --models {','.join(names)}{' --quick' if args.quick else ''}"
          f"{' --no-nncf' if args.no_nncf else ''}{' --cache' if args.cache else ''}; onnxruntime "
          f"{onnxruntime.__version__}, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}\n")
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-precision-") as tmp:
        for n in names:
            results[n] = bench(n, args, tmp)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"qgraph and ORT (this process): peak RSS {peak:.2f} GiB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"models": results, "peak_rss_gib_this_process": round(peak, 3)}, f, indent=1, default=float)


if __name__ == "__main__":
    main()
