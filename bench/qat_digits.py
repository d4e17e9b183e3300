"""The digits QAT table: float, PTQ and QAT accuracy on the 500 held-out digits, per format.

    python bench/qat_digits.py [--seeds 0,1,2] [--train 200] [--epochs 10]

Golden digits CNN (golden/models/digits_cnn.onnx), PTQ from golden/data/digits_calib.npz, QAT on
the first ``--train`` non-test samples of golden/generate.py's split (with their labels, or by
distillation from the float model), then write back and the L3 reference's top-1 on
golden/data/digits_test.npz. Formats: W8A8 (int8 weights, uint8 activations), W4A8 (int4
weights), W4A4 (int4 weights, uint4 activations); recipes: cross entropy on labels ("ce"),
distillation with temperature 4 ("kd4"); 10 epochs at lr 1e-3 for weights and log-scales, or 30
epochs at 3e-4 for weights and 1e-2 for log-scales ("-30-s"); AdamW, cosine, batch 32. Accuracy on
all 500 test digits, and on the last 250 alone: the first 250 chose the "-30-s" recipe (a sweep
of epochs, lr, temperature and log-scale lr on W4A4), the 10-epoch ones were fixed beforehand.

Caveat: the float model was trained on every non-test sample (its training loss on them is ~0),
so there is no held-out validation set apart from the test digits; the recipes are a fixed
small grid, every cell of which is printed, not a choice tuned on the test digits.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

import qgraph
from qgraph.ort import run_ort
from qgraph.qat import QATModule, TrainConfig, train, write_back
from qgraph.quant.config import QuantConfig
from qgraph.testing import digits as D

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORMATS = {"W8A8": {}, "W4A8": {"weight": {"dtype": "int4"}},
           "W4A4": {"weight": {"dtype": "int4"}, "activation": {"dtype": "uint4"}}}
#: recipe -> (distillation temperature or 0 for cross entropy, epochs, weight lr, log-scale lr)
RECIPES = {"ce-10": (0.0, 10, 1e-3, 1e-3), "kd4-10": (4.0, 10, 1e-3, 1e-3),
           "ce-30-s": (0.0, 30, 3e-4, 1e-2), "kd4-30-s": (4.0, 30, 3e-4, 1e-2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--train", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    x_tr, y_tr, _, _ = D.load_split()
    feeds, labels = {"input": x_tr[:args.train]}, y_tr[:args.train]
    test = dict(np.load(os.path.join(ROOT, "golden/data/digits_test.npz")))
    x, y = {"input": test["input"]}, test["label"]
    model, calib = os.path.join(ROOT, "golden/models/digits_cnn.onnx"), os.path.join(ROOT, "golden/data/digits_calib.npz")
    def acc(out) -> str:
        hit = out["logits"].argmax(1) == y
        return f"{100 * hit.mean():.1f}/{100 * hit[250:].mean():.1f}"

    print(f"{'format':6s} {'float':>9s} {'PTQ':>9s}  " + "  ".join(f"{r:>30s}" for r in RECIPES) + "   (all 500 / last 250, per seed)")
    for name, cfg in FORMATS.items():
        ptq = qgraph.quantize(model, calib, QuantConfig.from_json(cfg), report=False)
        float_acc, ptq_acc = acc(run_ort(ptq.float_model, x)), acc(ptq.run(x))
        teacher = QATModule(ptq.float_model)
        cells = []
        start = time.perf_counter()
        for recipe, (t, epochs, lr, scale_lr) in RECIPES.items():
            got = []
            for seed in seeds:
                m = QATModule(ptq.qdq, ptq.float_model)
                train(m, feeds, None if t else labels, teacher=teacher if t else None,
                      config=TrainConfig(epochs=epochs, lr=lr, batch_size=32, seed=seed, temperature=t or 1.0, scale_lr=scale_lr))
                got.append(acc(write_back(ptq, m, report=False).run(x)))
            cells.append(" ".join(got))
        print(f"{name:6s} {float_acc:>9s} {ptq_acc:>9s}  " + "  ".join(f"{c:>30s}" for c in cells)
              + f"   ({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
