"""``qgraph compile``, ``qgraph run`` and ``qgraph verify``."""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from qgraph.errors import QGraphError

TARGETS = ("qdq",)


def _read_inputs(path: str, model) -> dict[str, np.ndarray]:
    """Arrays keyed by the model's input names from a .npz (other keys, e.g. labels, are ignored)."""
    if not os.path.isfile(path):
        raise QGraphError(f"--inputs {path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise QGraphError(f"--inputs {path}: not a readable .npz ({e})") from e
    names = [v.name for v in model.graph.inputs if not v.is_initializer()]
    missing = [n for n in names if n not in arrays]
    if missing:
        raise QGraphError(f"--inputs {path}: no array for model input(s) {', '.join(missing)} "
                          f"(the file holds {', '.join(arrays) or 'nothing'})")
    from qgraph.ir.dtypes import to_numpy

    feeds = {}
    for v in model.graph.inputs:
        if v.name in arrays:
            a = arrays[v.name]
            want = to_numpy(v.dtype) if v.dtype is not None else a.dtype
            if a.dtype == np.float64 and want == np.float32:  # numpy's default float: accept it
                a = a.astype(np.float32)
            if a.dtype != want:
                raise QGraphError(f"--inputs {path}: '{v.name}' has dtype {a.dtype}, the model expects {want}")
            feeds[v.name] = a
    return feeds


def cmd_compile(args: argparse.Namespace) -> int:
    from qgraph.api import quantize

    if args.target not in TARGETS:
        raise QGraphError(f"--target {args.target}: not available; choose one of {', '.join(TARGETS)}")
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise QGraphError(f"-o {args.output}: exists and is not a folder")
    options = {"percentile": args.percentile, "num_bins": args.num_bins}
    start = time.perf_counter()
    q = quantize(args.model, args.calib, args.config, method=args.method,
                 method_options={k: v for k, v in options.items() if v is not None},
                 report_samples=args.report_samples)
    q.save(args.output)
    s = q.report.summary
    outs = ", ".join(f"{k} SQNR {v['sqnr_db'] if isinstance(v['sqnr_db'], str) else round(v['sqnr_db'], 2)} dB"
                     + (f", top-1 agreement {v['top1'] * 100:.2f}%" if v.get("top1") is not None else "")
                     for k, v in q.report.outputs.items())
    print(f"{args.model}: {s['integer_ops']} integer ops, {s['lookups']} lookups, {s['float_ops']} float ops; "
          f"{outs} (vs float, {s['report_samples']} calibration samples); "
          f"wrote {args.output}/ in {time.perf_counter() - start:.2f} s")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from qgraph.api import CompiledDir

    c = CompiledDir.load(args.outdir)
    feeds = _read_inputs(args.inputs, c.float_model)
    outs = c.run(feeds, args.backend)
    np.savez(args.output, **outs)
    print(f"{args.outdir}: ran {args.backend} on {args.inputs}; wrote {args.output} ({', '.join(outs)})")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from qgraph.api import CompiledDir
    from qgraph.verify.outputs import format_verify, verify_outputs

    c = CompiledDir.load(args.outdir)
    feeds = _read_inputs(args.inputs, c.float_model)
    n = next(iter(feeds.values())).shape[0] if feeds else 0
    print(format_verify(verify_outputs(c, feeds), n))
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("compile", help="quantize a float model: QDQ export, integer (L3) model and report")
    p.add_argument("model")
    p.add_argument("--calib", required=True, metavar="DATA", help="calibration data (.npz or folder)")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder")
    p.add_argument("--method", default="minmax", choices=["minmax", "percentile", "entropy", "mse"])
    p.add_argument("--percentile", type=float, help="percentile method: the percentile kept")
    p.add_argument("--num-bins", type=int, help="histogram bins (percentile / entropy / mse)")
    p.add_argument("--config", metavar="FILE", help="quantization config JSON (dtypes, overrides, exclude)")
    p.add_argument("--target", default="qdq", help="qdq (standard QDQ ONNX + integer reference)")
    p.add_argument("--report-samples", type=int, default=8, help="calibration samples the SQNR report uses")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("run", help="run a compiled model on inputs")
    p.add_argument("outdir")
    p.add_argument("--inputs", required=True, metavar="X.npz")
    p.add_argument("-o", "--output", required=True, metavar="Y.npz")
    p.add_argument("--backend", default="reference", choices=["reference", "ort", "ort-sim"])
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("verify", help="compare a compiled model with its float original and ONNX Runtime")
    p.add_argument("outdir")
    p.add_argument("--inputs", required=True, metavar="X.npz")
    p.set_defaults(func=cmd_verify)
