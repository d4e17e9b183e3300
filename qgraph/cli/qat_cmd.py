"""``qgraph qat``: post-training quantization, fine-tuning with fake quantization, write back.

Writes the folder ``qgraph compile`` writes (model.qdq.onnx, model.qgraph.onnx, model.float.onnx,
report.*, ranges.json, config.json), from the trained model; the reports have a "Quantization-aware
training" section (PTQ and QAT side by side, loss and eval metric per epoch, a curve in
report.html), and ``qat.json`` holds the same numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from qgraph.errors import QGraphError


def cmd_qat(args: argparse.Namespace) -> int:
    try:
        import torch  # noqa: F401
    except ImportError as e:
        raise QGraphError("qgraph qat needs PyTorch: pip install \"qgraph[qat]\"") from e
    from qgraph.qat import TrainConfig
    from qgraph.qat.writeback import qat
    from qgraph.verify.outputs import format_metrics

    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise QGraphError(f"-o {args.output}: exists and is not a folder")
    for flag, value in (("--epochs", args.epochs), ("--batch-size", args.batch_size)):
        if value < 1:
            raise QGraphError(f"{flag} {value}: must be at least 1")
    if not args.lr > 0:
        raise QGraphError(f"--lr {args.lr}: must be > 0")
    features = tuple(f.strip() for f in (args.distill_features or "").split(",") if f.strip())
    cfg = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                      patience=args.patience, temperature=args.temperature, threads=args.threads,
                      features=features, feature_weight=args.feature_weight)
    start = time.perf_counter()
    ptq, result, history = qat(args.model, args.calib, args.train, args.config, eval=args.eval, train_config=cfg,
                               distill=args.distill, learn_zero_points=args.learn_zero_points)
    result.save(args.output)
    summary = dict(result.report.qat, qat=result.report.outputs, measured_on=result.report.summary.get("measured_on"))
    with open(os.path.join(args.output, "qat.json"), "w") as f:
        json.dump(summary, f, indent=2, default=float)
    for k in result.report.outputs:
        print(f"{args.model}: {k}: PTQ {format_metrics(ptq.report.outputs[k])}; QAT "
              f"{format_metrics(result.report.outputs[k])} (vs float, {result.report.summary.get('measured_on')})")
    print(f"qat: {len(history.loss)} epochs, final loss {history.loss[-1]:.4f}; wrote {args.output}/ in "
          f"{time.perf_counter() - start:.2f} s")
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("qat", help="quantization-aware training from a float model: PTQ, fine-tune, write "
                       "the same folder as compile")
    p.add_argument("model")
    p.add_argument("--calib", required=True, metavar="DATA", help="calibration data (.npz or folder): the PTQ start")
    p.add_argument("--train", required=True, metavar="TRAIN.npz", help="training inputs by name, optionally "
                   "'labels' (cross entropy); without labels: distillation from the float model")
    p.add_argument("--eval", metavar="EVAL.npz", help="held-out data (optionally 'labels'): the metric per epoch, "
                   "the best epoch kept, early stop with --patience, and the report's numbers")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (cosine schedule)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--patience", type=int, help="with --eval: stop after N epochs without improvement")
    p.add_argument("--temperature", type=float, default=1.0, help="distillation temperature")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--config", metavar="FILE", help="quantization config JSON (as compile's)")
    p.add_argument("--distill", action="store_true", help="distill from the float model even with labels")
    p.add_argument("--distill-features", metavar="NAME[,NAME]", help="values (by name) whose mismatch with the "
                   "float model's joins the loss: mean((q - f)^2) / mean(f^2), times --feature-weight")
    p.add_argument("--feature-weight", type=float, default=1.0, help="weight of --distill-features (default 1)")
    p.add_argument("--learn-zero-points", action="store_true", help="learn the activations' zero points too "
                   "(default: fixed at the PTQ ones)")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR")
    p.set_defaults(func=cmd_qat)
