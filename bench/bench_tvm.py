"""Latency of qgraph's int8 TVM build next to ONNX Runtime int8 (QDQ) and fp32, same model, same input.

    python bench/bench_tvm.py [--models digits1,digits64,rec,cls,resnet50,det,crnn,yolox] [--threads 1,2] [--quick]

For each model: quantize it (``qgraph.api.quantize``, default config, minmax), build the L3
model with ``qgraph.tvm`` for this CPU (time: lowering, ``tvm.compile``, first VM creation,
the last being where LLVM generates the machine code) and export it. Then, once per thread
count, a fresh process (``TVM_NUM_THREADS`` set before TVM starts its thread pool; ORT
sessions with ``intra_op_num_threads``) loads the three runners side by side:

- qgraph int8: the exported TVM library (``qgraph.tvm.load``), ``Compiled.run``;
- ORT int8: ``model.qdq.onnx`` (the QDQ export), default CPU EP, ``ORT_ENABLE_ALL``;
- ORT int8, SiLU split: for a model with SiLU (``x * Sigmoid(x)``), which qgraph quantizes as
  one activation (float between its DQ and Q, so ORT runs float Sigmoid and Mul there),
  ``model.qdq_split.onnx``: the same quantization with ``{"split_groups": ["x*Sigmoid(x)"]}``,
  a quantized Sigmoid and a quantized Mul, which ORT runs as QLinearSigmoid / QLinearMul;
- ORT int8, its own quantizer: ``model.ort_qdq.onnx``, ``onnxruntime.quantization.quantize_static``
  (QDQ, its defaults: uint8 activations, int8 per-tensor weights, minmax) on the same
  calibration samples, same session options.

The ``TVM / ORT int8`` ratio is against the fastest of the ORT int8 models: ORT's int8 at its best;
- ORT fp32: the float model as given.

Runs are interleaved (one run of each tool per round, the order rotating), after warm-up;
each figure is a median over the rounds. Ratios hold on a shared machine where absolute
times do not. Models:

- ``digits1`` / ``digits64``: the golden digits CNN, batch 1 / 64 (golden calibration data);
- ``rec``: PP-OCRv4 rec at 1x3x48x320, calibrated on 16 rendered text lines (``qgraph.testing.ocr``);
- ``cls``: PP-OCR cls (rapidocr's ``ch_ppocr_mobile_v2.0_cls``) at 1x3x48x192, calibrated on
  16 rendered lines at 48x192;
- ``resnet50``: ``light_resnet50`` from the onnx wheel at 1x3x224x224, 8 random calibration samples;
- ``det``: PP-OCRv4 det (a DB text detector: ConvTranspose, Resize) at 1x3x320x320, calibrated on 8
  pages of 4 rendered lines;
- ``crnn``: ddddocr's captcha CRNN (conv stack, bidirectional LSTM, 8210-class Gemm; the ddddocr
  wheel) at 1x1x64x192, calibrated on 16 rendered lines in grey;
- ``yolox``: ddddocr's YOLOX-style click-captcha detector at 1x3x416x416, calibrated on 8 rendered
  captchas (``qgraph.testing.detect``);
- ``yolov8``: NudeNet's YOLOv8n detector (``320n.onnx`` in the ``nudenet`` wheel; ``pip install
  --no-deps nudenet==3.4.2``: only its model file is read) at 1x3x320x320, calibrated on 8 crops of
  scikit-learn's two sample photos (``photo_crops``), run on a ninth.

With ``openvino`` installed (``pip install openvino``), OpenVINO's CPU plugin runs qgraph's QDQ
export as a fourth runner (true int8 kernels: u8 x s8, saturating without VNNI; a peer for
speed). Where its default runs what stays float in bf16 (a CPU with AVX-512 BF16 or AMX: the
CRNN's LSTM), it also runs with ``INFERENCE_PRECISION_HINT`` f32, the second OpenVINO figure.

The last column is each int8 runtime's output fidelity, SQNR in dB of its first output against
ORT fp32's on the bench input (``fidelity``): qgraph's QDQ model three ways (TVM, ORT,
OpenVINO), then ORT's own quantization of the model in ORT.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from qgraph.quant.float16 import RECURRENT_WEIGHT_TYPES

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MODELS = ("digits1", "digits64", "rec", "cls", "resnet50", "det", "crnn", "yolox", "yolov8")


# -- models and data ----------------------------------------------------------------------------
def _rapidocr(pattern: str) -> str:
    import rapidocr_onnxruntime

    found = sorted(glob.glob(os.path.join(os.path.dirname(rapidocr_onnxruntime.__file__), "models", pattern)))
    if not found:
        raise FileNotFoundError(f"no {pattern} in the rapidocr-onnxruntime wheel")
    return found[0]


def model_spec(name: str) -> dict:
    """Path, input name, static input shape and calibration samples of bench model ``name``."""
    if name.startswith("digits"):
        batch = int(name[len("digits"):])
        with np.load(os.path.join(ROOT, "golden", "data", "digits_test.npz")) as z:
            x = z["input"][:batch]
        return {"path": os.path.join(ROOT, "golden", "models", "digits_cnn.onnx"), "input": "input",
                "shape": list(x.shape), "calib": os.path.join(ROOT, "golden", "data", "digits_calib.npz"), "x": x}
    if name in ("rec", "cls"):
        from qgraph.testing import ocr

        width = 320 if name == "rec" else 192
        path = ocr.rec_model_path() if name == "rec" else _rapidocr("*cls*.onnx")
        calib = ocr.render_lines(ocr.sample_texts(16, seed=1), width=width)
        x = ocr.render_lines(ocr.sample_texts(1, seed=7), width=width)
        return {"path": path, "input": "x", "shape": [1, 3, 48, width],
                "calib": [{"x": calib[i:i + 1]} for i in range(len(calib))], "x": x}
    if name == "resnet50":
        import onnx

        path = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light", "light_resnet50.onnx")
        rng = np.random.default_rng(0)
        calib = [{"gpu_0/data_0": rng.uniform(-1, 1, (1, 3, 224, 224)).astype(np.float32)} for _ in range(8)]
        x = rng.uniform(-1, 1, (1, 3, 224, 224)).astype(np.float32)
        return {"path": path, "input": "gpu_0/data_0", "shape": [1, 3, 224, 224], "calib": calib, "x": x}
    if name == "det":
        from qgraph.testing import ocr

        path = _rapidocr("*det*.onnx")
        lines = ocr.render_lines(ocr.sample_texts(40, seed=1), height=40, width=320, font_size=18)
        pages = np.zeros((10, 3, 320, 320), np.float32)
        for i in range(10):
            for k in range(4):
                pages[i, :, 16 + 72 * k:56 + 72 * k] = lines[4 * i + k]
        return {"path": path, "input": "x", "shape": [1, 3, 320, 320],
                "calib": [{"x": pages[i:i + 1]} for i in range(8)], "x": pages[9:10]}
    if name == "crnn":
        import ddddocr

        from qgraph.testing import ocr

        lines = ocr.render_lines(ocr.sample_texts(17, seed=1), height=64, width=192, font_size=40)
        gray = np.where(lines[:, :1] == 0, 1.0, lines[:, :1] * 0.5 + 0.5).astype(np.float32)
        return {"path": os.path.join(os.path.dirname(ddddocr.__file__), "common.onnx"), "input": "input1",
                "shape": [1, 1, 64, 192], "calib": [{"input1": gray[i:i + 1]} for i in range(16)], "x": gray[16:]}
    if name == "yolox":
        from qgraph.testing import detect

        pages = detect.render_pages(9, seed=1)
        return {"path": detect.model_path(), "input": "images", "shape": list(pages[:1].shape),
                "calib": [{"images": pages[i:i + 1]} for i in range(8)], "x": pages[8:]}
    if name == "yolov8":
        import importlib.util

        found = importlib.util.find_spec("nudenet")  # not imported: its package needs OpenCV, the bench only the model
        if found is None:
            raise SystemExit("yolov8: pip install --no-deps nudenet==3.4.2 (its wheel ships 320n.onnx)")
        crops = photo_crops(9, 320)
        return {"path": os.path.join(os.path.dirname(found.origin), "320n.onnx"), "input": "images",
                "shape": [1, 3, 320, 320], "calib": [{"images": crops[i:i + 1]} for i in range(8)], "x": crops[8:]}
    raise SystemExit(f"unknown model '{name}'; choose from {', '.join(MODELS)}")


def photo_crops(n: int, size: int, seed: int = 0) -> np.ndarray:
    """``n`` deterministic crops of scikit-learn's two sample photos (a temple, a flower; 427x640):
    a random square of ``size`` to ``2 * size`` pixels (at most the photo's height) scaled to ``size``
    x ``size`` (nearest pixel), mirrored half the time: float32 ``[n, 3, size, size]``, RGB in
    [0, 1], as YOLOv8's preprocessing feeds it."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    out = np.empty((n, 3, size, size), np.float32)
    for i in range(n):
        img = photos[i % len(photos)]
        span = int(rng.integers(size, min(min(img.shape[:2]), 2 * size) + 1))
        y0, x0 = (int(rng.integers(0, d - span + 1)) for d in img.shape[:2])
        idx = np.arange(size) * span // size
        crop = img[y0 + idx][:, x0 + idx]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out[i] = crop.transpose(2, 0, 1) / 255.0
    return out


# -- worker: quantize, build, export ------------------------------------------------------------
def quantize_source(name: str, spec: dict):
    """The float model ``qgraph.api.quantize`` takes for ``name``: its path, or for resnet50
    (opset 9: per-channel DequantizeLinear needs 13, and insert-qdq asks for the upgrade) the
    model converted to opset 13."""
    if name != "resnet50":
        return spec["path"]
    import onnx
    from onnx import version_converter

    return version_converter.convert_version(onnx.load(spec["path"]), 13)


def prepare(name: str, workdir: str, reduce_range: bool = False, recurrent_weights: str = "float32") -> dict:
    """Quantize and build ``name``; write the QDQ model, the TVM library and the input into
    ``workdir``; return the compile times."""
    import qgraph.api
    from qgraph import tvm as qtvm
    from qgraph.ir import fusion
    from qgraph.onnx import save

    spec = model_spec(name)
    os.makedirs(workdir, exist_ok=True)
    source = quantize_source(name, spec)
    start = time.perf_counter()
    config = {"reduce_range": True} if reduce_range else {}  # 7-bit weights for both runtimes
    if recurrent_weights != "float32":  # the recurrent ops' weights as float16 values, for every runtime
        config["recurrent_weights"] = recurrent_weights
    config = config or None
    # the input's static shape before quantization, as ``qgraph compile --input-shape`` sets it
    q = qgraph.api.quantize(source, spec["calib"], config, report=False, show_progress=False,
                            input_shapes={spec["input"]: spec["shape"]})
    quantized = time.perf_counter()
    compiled = qtvm.build(q.integer, "cpu", input_shapes={spec["input"]: spec["shape"]})
    built = time.perf_counter()
    compiled.warm()
    save(q.qdq, os.path.join(workdir, "model.qdq.onnx"))
    ort_quantized = ort_quantize(source, spec["calib"], os.path.join(workdir, "model.ort_qdq.onnx"))
    silu = any(n.metadata_props.get(fusion.ACTIVATION_GROUP_KEY) == fusion.SIGMOID_SWISH for n in q.qdq.graph)
    if silu:  # ORT's form of SiLU for the ORT column (see the module doc)
        split = dict(config or {}, split_groups=[fusion.SIGMOID_SWISH])
        save(qgraph.api.quantize(source, spec["calib"], split, report=False, show_progress=False,
                                 input_shapes={spec["input"]: spec["shape"]}).qdq,
             os.path.join(workdir, "model.qdq_split.onnx"))
    compiled.export(os.path.join(workdir, "tvm"))
    np.savez(os.path.join(workdir, "x.npz"), x=spec["x"])
    # the build equals the reference interpreter on the bench input (a bench of wrong code is no bench)
    got = compiled.run({spec["input"]: spec["x"]})
    try:
        ref = q.run({spec["input"]: spec["x"]})
    except Exception as e:  # the reference's own limits must not hide the timing
        exact = f"reference failed: {str(e).splitlines()[0]}"
    else:
        exact = "; ".join(_agreement(got[k], ref[k]) for k in got)
    return {"model": name, "path": spec["path"], "input": spec["input"], "shape": spec["shape"],
            "reduce_range": reduce_range, "recurrent_weights": recurrent_weights,
            "quantize_s": quantized - start, "lower_s": built - quantized - compiled.compile_seconds,
            "tvm_compile_s": compiled.compile_seconds, "first_vm_s": compiled.load_seconds,
            "compile_s": compiled.compile_seconds + compiled.load_seconds, "matches_reference": exact,
            "ort_quantize": ort_quantized, "silu_split": silu}


def ort_quantize(source, calib, dst: str) -> str:
    """ONNX Runtime's own static quantization of ``source`` (a path or a ModelProto) into
    ``dst``: QDQ, ``quantize_static``'s defaults, calibrated on ``calib`` (feed dicts, or an
    ``.npz`` whose arrays are split into single samples). Returns "ok" or why it failed."""
    import onnx
    from onnxruntime import quantization

    if isinstance(calib, str):
        with np.load(calib) as z:
            calib = [{k: z[k][i:i + 1] for k in z.files} for i in range(len(z[z.files[0]]))]
    feeds = iter(calib)

    class Reader(quantization.CalibrationDataReader):
        def get_next(self):
            return next(feeds, None)

    with tempfile.TemporaryDirectory() as d:
        src = source if isinstance(source, str) else os.path.join(d, "float.onnx")
        if not isinstance(source, str):
            onnx.save(source, src)
        try:
            quantization.quantize_static(src, dst, Reader(), quant_format=quantization.QuantFormat.QDQ)
        except Exception as e:  # a model ORT's quantizer refuses: the column says so
            return f"failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
    return "ok"


def _agreement(got: np.ndarray, ref: np.ndarray) -> str:
    """How a TVM output compares with the reference's: bit-exact, or its distance (a float
    output after float fallback ops differs in the last bits, and a Quantize of it by 1 LSB)."""
    if np.array_equal(got, ref):
        return "bit-exact"
    diff = float(np.abs(got.astype(np.float64) - ref.astype(np.float64)).max())
    text = f"max |diff| {diff:.3g}"
    if got.ndim >= 2 and got.shape[-1] >= 2:
        text += f", argmax agrees {np.mean(got.argmax(-1) == ref.argmax(-1)) * 100:.1f}%"
    return text


# -- worker: interleaved timing -----------------------------------------------------------------
def _ort(path: str, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def _openvino(qdq_path: str, threads: int, precision: str | None = None):
    """OpenVINO's CPU plugin on qgraph's QDQ export (it runs the Q/DQ groups as true int8
    kernels, u8 x s8 and not exact), as a ``feeds -> outputs`` callable; None when the
    ``openvino`` package is not installed (``pip install openvino``: an optional column).

    Known artifact: at 2 threads on 2 cores, four thread pools in one process (ORT int8, ORT
    fp32, OpenVINO, TVM) starve the digits CNN at batch 64 (0.1 ms of work): TVM reads 8 ms
    there with OpenVINO loaded and 0.07-0.11 ms without it or with any two of the others
    (measured 2026-12-07; ``ENABLE_CPU_PINNING`` off changed nothing). Read sub-millisecond
    2-thread rows from a run without ``openvino`` installed. With the three ORT int8 models
    (six pools) the CRNN's 2-thread ORT rows read 8-26 ms across runs, where each ORT int8
    model alone in a process took 8.5-8.8 ms (and the TVM build alone 8.1-8.3): measure a
    2-thread row that looks slower than its 1-thread one alone.

    ``precision``: the plugin's ``INFERENCE_PRECISION_HINT`` for what stays float (None: its
    default, bf16 on a CPU with AVX-512 BF16 or AMX: the CRNN's float LSTM then runs in bf16)."""
    try:
        import openvino as ov
    except ImportError:
        return None
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    if precision is not None:
        config["INFERENCE_PRECISION_HINT"] = precision
    compiled = ov.Core().compile_model(qdq_path, "CPU", config)
    request = compiled.create_infer_request()
    return lambda feeds: request.infer(feeds)


#: Seconds of untimed runs (at least one) of a runner before each of its timed runs (see ``measure``).
SETTLE_S = 0.005


def settle(fn, seconds: float = SETTLE_S) -> None:
    """Run ``fn`` untimed, once and then until ``seconds`` have passed.

    Both runtimes' pool threads spin a while after a run (their defaults, kept). On 2 cores the
    previous runner's spinning thread takes the core this runner's second thread needs, and a
    parallel region then waits for the OS scheduler: the digits CNN at batch 64, 2 threads, TVM
    measured 15-20 ms with one untimed run before each timed one and 0.13-0.20 ms with about
    5 ms of them (rec, 20+ ms per run: 1.8x its 1-thread time with none)."""
    end = time.perf_counter() + seconds
    fn()
    while time.perf_counter() < end:
        fn()


def measure(name: str, workdir: str, threads: int, runs: int, warmup: int, settle_s: float = SETTLE_S) -> dict:
    """Median latency of the three runners on ``name``, interleaved, with ``threads`` threads."""
    from qgraph import tvm as qtvm

    with open(os.path.join(workdir, "prepare.json")) as f:
        info = json.load(f)
    with np.load(os.path.join(workdir, "x.npz")) as z:
        x = z["x"]
    feeds = {info["input"]: x}
    compiled = qtvm.load(os.path.join(workdir, "tvm")).warm()
    int8 = _ort(os.path.join(workdir, "model.qdq.onnx"), threads)
    fp32 = _ort(info["path"], threads)
    tools = {"qgraph_tvm": lambda: compiled.run(feeds),
             "ort_int8": lambda: int8.run(None, feeds),
             "ort_fp32": lambda: fp32.run(None, feeds)}
    own = _ort(os.path.join(workdir, "model.ort_qdq.onnx"), threads) if info.get("ort_quantize") == "ok" else None
    if own is not None:
        tools["ort_int8_own"] = lambda: own.run(None, feeds)
    split = _ort(os.path.join(workdir, "model.qdq_split.onnx"), threads) if info.get("silu_split") else None
    if split is not None:
        tools["ort_int8_split"] = lambda: split.run(None, feeds)
    openvino = _openvino(os.path.join(workdir, "model.qdq.onnx"), threads)
    if openvino is not None:
        tools["openvino_int8"] = lambda: openvino(feeds)
    # where OpenVINO's default runs the float parts in bf16 (not exact), also with them in f32
    openvino_f32 = _openvino(os.path.join(workdir, "model.qdq.onnx"), threads, "f32") \
        if openvino is not None and openvino_float_precision() != "f32" else None
    if openvino_f32 is not None:
        tools["openvino_int8_f32"] = lambda: openvino_f32(feeds)
    for fn in tools.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in tools}
    order = list(tools)
    for r in range(runs):
        for k in order[r % len(order):] + order[:r % len(order)]:
            settle(tools[k], settle_s)  # the previous runner's spinning threads stop first
            t0 = time.perf_counter()
            tools[k]()
            times[k].append(time.perf_counter() - t0)
    med = {k: float(np.median(v)) for k, v in times.items()}
    extra = {k.replace("openvino", "tvm_over_openvino"): med["qgraph_tvm"] / med[k]
             for k in ("openvino_int8", "openvino_int8_f32") if k in med}
    extra.update(fidelity(compiled, int8, fp32, openvino, feeds, own))
    best = min(med[k] for k in ("ort_int8", "ort_int8_split", "ort_int8_own") if k in med)  # ORT int8 at its fastest
    return {"model": name, "threads": threads, "runs": runs, **{f"{k}_ms": v * 1e3 for k, v in med.items()},
            **extra, "tvm_over_ort_int8": med["qgraph_tvm"] / best,
            "tvm_over_ort_fp32": med["qgraph_tvm"] / med["ort_fp32"],
            "ort_int8_over_fp32": best / med["ort_fp32"]}


def openvino_float_precision() -> str | None:
    """OpenVINO's CPU default for the float parts of a model (``f32``, or ``bf16`` where the CPU
    has AVX-512 BF16 or AMX), or None without ``openvino``."""
    try:
        import openvino as ov
    except ImportError:
        return None
    hint = ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT")  # an ov.Type
    return hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)


def fidelity(compiled, int8, fp32, openvino, feeds, own=None) -> dict:
    """SQNR (dB) of each int8 runtime's first output against ONNX Runtime fp32's on the bench
    input: ``sqnr_<runner>_db`` for qgraph TVM (the exact integer program), ORT int8 and
    OpenVINO int8 (where loaded) on qgraph's QDQ export, and ORT on its own quantization
    (``own``, where it quantized). One input: an indicator of fidelity, not an accuracy figure."""
    from qgraph.verify.metrics import sqnr_db

    name = fp32.get_outputs()[0].name
    ref = np.asarray(fp32.run(None, feeds)[0], np.float64)
    got = {"tvm": compiled.run(feeds)[name], "ort_int8": int8.run(None, feeds)[0]}
    if openvino is not None:
        got["openvino_int8"] = openvino(feeds)[0]
    if own is not None:
        got["ort_int8_own"] = own.run(None, feeds)[0]
    return {f"sqnr_{k}_db": float(sqnr_db(ref, np.asarray(v, np.float64).reshape(ref.shape))) for k, v in got.items()}


# -- driver -------------------------------------------------------------------------------------
def _worker(args: list[str], env: dict | None = None, timeout: float | None = None) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__)] + args
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if p.returncode != 0:
        tail = "\n".join(p.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"{' '.join(args)} failed (exit {p.returncode}):\n{tail}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def _db(v) -> str:
    return "n/a" if v is None else f"{v:.1f}"


def _table(prep: list[dict], rows: list[dict]) -> str:
    out = ["| model | input | threads | qgraph TVM int8 ms | ORT int8 ms: qgraph QDQ / SiLU split / ORT's quantizer | "
           "ORT fp32 ms | OpenVINO int8 ms: default / f32 float parts | TVM / ORT int8 (faster) | TVM / ORT fp32 | "
           "TVM / OpenVINO int8: default / f32 float parts | "
           "ORT int8 (faster) / fp32 | SQNR vs fp32, dB: TVM / ORT int8 / OpenVINO / ORT's quantizer |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    shapes = {p["model"]: "x".join(str(d) for d in p["shape"]) for p in prep}
    for r in rows:
        ov_ms = " / ".join(f"{r[k]:.3f}" if k in r else "n/a" for k in ("openvino_int8_ms", "openvino_int8_f32_ms"))
        own_ms = " / ".join(f"{r[k]:.3f}" if k in r else "n/a" for k in ("ort_int8_split_ms", "ort_int8_own_ms"))
        ov_ratio = " / ".join(f"{r[k]:.2f}" if k in r else "n/a"
                              for k in ("tvm_over_openvino_int8", "tvm_over_openvino_int8_f32"))
        sqnr = " / ".join(_db(r.get(f"sqnr_{k}_db")) for k in ("tvm", "ort_int8", "openvino_int8", "ort_int8_own"))
        out.append(f"| {r['model']} | {shapes.get(r['model'], '')} | {r['threads']} | {r['qgraph_tvm_ms']:.3f} | "
                   f"{r['ort_int8_ms']:.3f} / {own_ms} | {r['ort_fp32_ms']:.3f} | {ov_ms} | "
                   f"{r['tvm_over_ort_int8']:.2f} | {r['tvm_over_ort_fp32']:.2f} | {ov_ratio} | "
                   f"{r['ort_int8_over_fp32']:.2f} | {sqnr} |")
    out += ["", "| model | quantize s | lowering s | tvm.compile s | first VM s | compile (tvm.compile + first VM) s "
                "| TVM vs reference |", "|---|---|---|---|---|---|---|"]
    for p in prep:
        out.append(f"| {p['model']} | {p['quantize_s']:.1f} | {p['lower_s']:.1f} | {p['tvm_compile_s']:.1f} | "
                   f"{p['first_vm_s']:.1f} | {p['compile_s']:.1f} | {p['matches_reference']} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    ap.add_argument("--threads", default="1,2", help="thread counts, comma-separated (default 1,2)")
    ap.add_argument("--quick", action="store_true", help="5 rounds after 1 warm-up (default: 30 after 3)")
    ap.add_argument("--runs", type=int, help="timed rounds per thread count (overrides --quick)")
    ap.add_argument("--workdir", help="where builds go (default: a temporary folder)")
    ap.add_argument("--reduce-range", action="store_true",
                    help="quantize with 7-bit weights (config reduce_range): the QDQ model ORT runs and the "
                         "TVM build both use them; qgraph's convs then run the exact VPMADDUBSW form")
    ap.add_argument("--recurrent-weights", default="float32", choices=RECURRENT_WEIGHT_TYPES,
                    help="the LSTM's weights as float16 values (config recurrent_weights): the QDQ model every "
                         "runtime runs and the TVM build both use them; TVM's LSTM kernel streams them in 2 bytes")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--prepare", metavar="MODEL", help=argparse.SUPPRESS)
    ap.add_argument("--measure", metavar="MODEL", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    runs = args.runs or (5 if args.quick else 30)
    warmup = 1 if args.quick else 3

    if args.prepare:
        info = prepare(args.prepare, args.workdir, args.reduce_range, args.recurrent_weights)
        with open(os.path.join(args.workdir, "prepare.json"), "w") as f:
            json.dump(info, f)
        print(json.dumps(info))
        return 0
    if args.measure:
        print(json.dumps(measure(args.measure, args.workdir, int(args.threads), runs, warmup)))
        return 0

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in models:
        if m not in MODELS:
            ap.error(f"--models: unknown model '{m}'; choose from {', '.join(MODELS)}")
    threads = [int(t) for t in args.threads.split(",")]
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_tvm_")
    prep, rows = [], []
    for m in models:
        folder = os.path.join(workdir, m)
        print(f"{m}: quantize + build ...", file=sys.stderr, flush=True)
        try:
            p = _worker(["--prepare", m, "--workdir", folder, "--recurrent-weights", args.recurrent_weights]
                        + (["--reduce-range"] if args.reduce_range else []))
        except RuntimeError as e:
            print(f"{m}: {e}", file=sys.stderr)
            continue
        prep.append(p)
        print(f"{m}: compile {p['compile_s']:.1f} s (tvm.compile {p['tvm_compile_s']:.1f} s + first VM "
              f"{p['first_vm_s']:.1f} s)", file=sys.stderr, flush=True)
        for t in threads:
            env = dict(os.environ, TVM_NUM_THREADS=str(t), OMP_NUM_THREADS=str(t))
            r = _worker(["--measure", m, "--workdir", folder, "--threads", str(t), "--runs", str(runs)]
                        + (["--quick"] if args.quick else []), env)
            rows.append(r)
            print(f"{m}, {t} thread(s): TVM {r['qgraph_tvm_ms']:.2f} ms, ORT int8 {r['ort_int8_ms']:.2f} ms "
                  f"(SiLU split {r.get('ort_int8_split_ms', float('nan')):.2f} ms, its own quantizer "
                  f"{r.get('ort_int8_own_ms', float('nan')):.2f} ms), "
                  f"ORT fp32 {r['ort_fp32_ms']:.2f} ms", file=sys.stderr, flush=True)
    print(f"{runs} interleaved rounds per row (medians); {os.cpu_count()} CPUs"
          + ("; 7-bit weights (--reduce-range)" if args.reduce_range else "")
          + ("; recurrent weights as float16 values (--recurrent-weights float16)"
             if args.recurrent_weights != "float32" else "") + "\n")
    print(_table(prep, rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"prepare": prep, "latency": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
