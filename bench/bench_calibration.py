"""Calibration wall time and peak memory: qgraph vs ONNX Runtime's calibrators, same model and data.

    python bench/bench_calibration.py [--samples 64] [--ort-timeout 900] [--skip-ort]

Models: PP-OCRv4 rec (rapidocr-onnxruntime) on rendered ASCII text lines (48x320), and
light_squeezenet (onnx wheel) on deterministic random images. Methods: minmax, entropy.
Each configuration runs in its own subprocess, so its peak RSS (ru_maxrss) is its own;
the two tools run back to back on the same data. Memory flatness: qgraph's peak at 256
samples / at 32 samples (goal < 1.5).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def model_path(name: str) -> str:
    if name == "rec":
        import rapidocr_onnxruntime

        return glob.glob(os.path.join(os.path.dirname(rapidocr_onnxruntime.__file__), "models", "*rec*.onnx"))[0]
    import onnx

    return os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light", f"light_{name}.onnx")


def text_line(i: int) -> np.ndarray:
    """Text line ``i`` (1x3x48x320), normalized as PaddleOCR's rec expects: (x / 255 - 0.5) / 0.5."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(i)
    words = ["quantize", "graph", "compiler", "int8", "tensor", "kernel", "ONNX", "2026", "range", "scale", "zero",
             "point", "calibrate", "entropy", "Conv", "Gemm", "rec", "line", "text", "42", "x86", "AVX2"]
    img = Image.new("RGB", (320, 48), (255, 255, 255))
    ImageDraw.Draw(img).text((4, 16), " ".join(rng.choice(words, 4)), fill=(0, 0, 0), font=ImageFont.load_default())
    return ((np.asarray(img, np.float32).transpose(2, 0, 1) / 255 - 0.5) / 0.5)[None]


def sample(name: str, i: int) -> np.ndarray:
    """Sample ``i`` (a batch of 1), made on demand: the data set is never held whole, so peak
    memory measures the calibrator, not the bench's data."""
    if name == "rec":
        return text_line(i)
    return np.random.default_rng(i).uniform(-1, 1, (1, 3, 224, 224)).astype(np.float32)


def worker(tool: str, name: str, method: str, samples: int) -> dict:
    import onnx

    path = model_path(name)
    graph = onnx.load(path, load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}  # old IR versions list weights as inputs too
    input_name = next(i.name for i in graph.input if i.name not in initializers)
    start = time.perf_counter()
    if tool == "qgraph":
        import qgraph
        from qgraph.calib.calibrate import calibrate

        ranges = calibrate(qgraph.load(path), ({input_name: sample(name, i)} for i in range(samples)), method, batch_size=1, show_progress=False)
        count = len(ranges)
    else:
        from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod
        from onnxruntime.quantization.calibrate import create_calibrator

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.i = 0

            def get_next(self):
                if self.i >= samples:
                    return None
                self.i += 1
                return {input_name: sample(name, self.i - 1)}

        with tempfile.TemporaryDirectory() as tmp:
            cal = create_calibrator(path, None, augmented_model_path=os.path.join(tmp, "aug.onnx"),
                                    calibrate_method={"minmax": CalibrationMethod.MinMax,
                                                      "entropy": CalibrationMethod.Entropy}[method])
            cal.collect_data(Reader())
            count = len(cal.compute_data().data)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "tensors": count}


def run(tool: str, name: str, method: str, samples: int, timeout: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", tool, name, method, str(samples)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"over {timeout} s"}
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:120]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--ort-timeout", type=int, default=900)
    ap.add_argument("--skip-ort", action="store_true")
    ap.add_argument("--models", nargs="+", default=["rec", "squeezenet"])
    args = ap.parse_args()
    if args.worker:
        tool, name, method, samples = args.worker
        print(json.dumps(worker(tool, name, method, int(samples))))
        return 0
    print(f"calibration, {args.samples} samples, qgraph vs onnxruntime calibrators (each run in its own process)")
    print(f"{'model':12s} {'method':8s} {'qgraph s':>9s} {'ort s':>9s} {'time q/o':>9s} {'qgraph MB':>10s} {'ort MB':>8s} {'mem q/o':>8s}")
    for name in args.models:
        for method in ("minmax", "entropy"):
            q = run("qgraph", name, method, args.samples, 3600)
            o = {"error": "skipped"} if args.skip_ort else run("ort", name, method, args.samples, args.ort_timeout)
            qs, os_ = q.get("seconds"), o.get("seconds")
            qm, om = q.get("peak_mb"), o.get("peak_mb")
            fmt = lambda v, f: format(v, f) if v is not None else "-"  # noqa: E731
            print(f"{name:12s} {method:8s} {fmt(qs, '9.2f')} {fmt(os_, '9.2f')} "
                  f"{fmt(qs / os_ if qs and os_ else None, '9.3f')} {fmt(qm, '10.0f')} {fmt(om, '8.0f')} "
                  f"{fmt(qm / om if qm and om else None, '8.2f')}"
                  + (f"   qgraph: {q['error']}" if "error" in q else "") + (f"   ort: {o['error']}" if "error" in o else ""))
    print("\nmemory flatness, qgraph peak RSS at 256 samples / at 32 samples (goal < 1.5):")
    for name in args.models:
        for method in ("minmax", "entropy"):
            small, big = run("qgraph", name, method, 32, 3600), run("qgraph", name, method, 256, 3600)
            if "peak_mb" in small and "peak_mb" in big:
                print(f"  {name} {method}: {small['peak_mb']:.0f} MB -> {big['peak_mb']:.0f} MB, "
                      f"ratio {big['peak_mb'] / small['peak_mb']:.2f} ({small['seconds']:.1f} s -> {big['seconds']:.1f} s)")
            else:
                print(f"  {name} {method}: {small.get('error') or big.get('error')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
