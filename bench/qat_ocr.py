"""PP-OCRv4 rec: PTQ vs QAT by distillation from the float model, no labels.

    python bench/qat_ocr.py [--format W8A8] [--train 32] [--eval 64] [--epochs 2] [--lr 1e-5] [--scale-lr X]
        [--batch-size 8] [--threads 2]

Rendered ASCII lines (``qgraph.testing.ocr``): ``--train`` lines (seed 11) calibrate (the
first 32) and train, without their texts (KL to the float model's per-step character
distribution, ``qgraph.qat.train``); ``--eval`` other lines (seed 12) are decoded greedily and
scored by character agreement with their texts: float (ONNX Runtime), PTQ and QAT on the L3
reference interpreter (the integer program) and in ONNX Runtime's QDQ simulation (ort-sim).
"""

from __future__ import annotations

import argparse
import time

import onnx
import torch

import qgraph
from qgraph.qat import QATModule, TrainConfig, train, write_back
from qgraph.quant.config import QuantConfig
from qgraph.testing import ocr

FORMATS = {"W8A8": {}, "W4A8": {"weight": {"dtype": "int4"}}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--format", default="W8A8", choices=list(FORMATS))
    ap.add_argument("--train", type=int, default=32)
    ap.add_argument("--eval", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--scale-lr", type=float, default=None, help="learning rate of the log-scales (default: --lr)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    path = ocr.rec_model_path()
    name = onnx.load(path, load_external_data=False).graph.input[0].name
    train_x = ocr.render_lines(ocr.sample_texts(args.train, seed=11))
    texts = ocr.sample_texts(args.eval, seed=12)
    x = ocr.render_lines(texts)

    def score(probs) -> str:
        return f"{100 * ocr.char_agreement(ocr.ctc_decode(probs), texts):.2f}%"

    ptq = qgraph.quantize(path, {name: train_x[:32]}, QuantConfig.from_json(FORMATS[args.format]), report=False)
    out = ptq.float_model.graph.outputs[0].name
    print(f"float (ORT): {score(ocr.run_rec(x))} characters on {args.eval} held-out lines", flush=True)
    print(f"PTQ {args.format}: reference {score(ptq.run({name: x})[out])}, "
          f"ort-sim {score(ptq.run({name: x}, backend='ort-sim')[out])}", flush=True)
    module = QATModule(ptq.qdq, ptq.float_model)
    start = time.perf_counter()
    history = train(module, {name: train_x}, None, teacher=QATModule(ptq.float_model),
                    config=TrainConfig(epochs=args.epochs, lr=args.lr, scale_lr=args.scale_lr,
                                                       batch_size=args.batch_size, seed=0))
    seconds = time.perf_counter() - start
    result = write_back(ptq, module, report=False)
    print(f"QAT {args.format}: reference {score(result.run({name: x})[out])}, "
          f"ort-sim {score(result.run({name: x}, backend='ort-sim')[out])} "
          f"(distillation on {args.train} unlabelled lines, {args.epochs} epochs, lr {args.lr}, "
          f"{seconds:.0f} s; loss per epoch {', '.join(f'{v:.4f}' for v in history.loss)})", flush=True)


if __name__ == "__main__":
    main()
