"""Training throughput of qgraph's QAT module next to the same model written in PyTorch.

    python bench/bench_qat.py [--batch 32] [--steps 40] [--repeat 5] [--threads 1]

The golden digits CNN at W8A8 (int8 per-channel weights, uint8 activations), trained with
AdamW on random batches of the digits, side by side in one process, ``--repeat`` interleaved
rounds of ``--steps`` steps each:

    qgraph        qgraph.qat.QATModule(ptq.qdq, ptq.float_model): the L2 graph interpreted,
                  its own fake quantization (true division, LSQ scales)
    torch.ao      the same layers written as a torch.nn.Module with
                  torch.ao.quantization.FakeQuantize on every weight (per-channel symmetric
                  int8, moving-average min/max observer) and activation (uint8), as a PyTorch
                  user writes eager-mode QAT; observers on, as in its training

and prints the median samples / s of each and their ratio (qgraph / torch.ao).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.ao.quantization import FakeQuantize, MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver

import qgraph
from qgraph.qat import QATModule
from qgraph.testing import digits as D

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _weight_fq():
    return FakeQuantize(observer=MovingAveragePerChannelMinMaxObserver, quant_min=-127, quant_max=127,
                        dtype=torch.qint8, qscheme=torch.per_channel_symmetric, ch_axis=0)


def _act_fq():
    return FakeQuantize(observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255, dtype=torch.quint8,
                        qscheme=torch.per_tensor_affine)


class TorchDigits(nn.Module):
    """golden/models/digits_cnn.onnx after fuse, by hand, with torch.ao fake quantization."""

    def __init__(self, float_model):
        super().__init__()
        g = float_model.graph
        consts = {n.name: [v.constant().numpy() if v is not None and v.constant() is not None else None
                           for v in n.inputs] for n in g}
        self.w = nn.ParameterList([nn.Parameter(torch.from_numpy(np.array(consts[k][1], np.float32)))
                                   for k in ("conv1", "conv2", "conv3", "fc")])
        self.b = nn.ParameterList([nn.Parameter(torch.from_numpy(np.array(consts[k][2], np.float32)))
                                   for k in ("conv1", "conv2", "conv3", "fc")])
        self.wq = nn.ModuleList([_weight_fq() for _ in range(4)])
        self.aq = nn.ModuleList([_act_fq() for _ in range(5)])

    def forward(self, x):
        x = self.aq[0](x)
        for i, stride in enumerate((1, 2, 2)):
            x = self.aq[i + 1](F.relu(F.conv2d(x, self.wq[i](self.w[i]), self.b[i], stride, 1)))
        return self.aq[4](F.linear(x.flatten(1), self.wq[3](self.w[3]), self.b[3]))


def _steps(step, batches) -> float:
    start = time.perf_counter()
    for x, y in batches:
        step(x, y)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ptq = qgraph.quantize(os.path.join(ROOT, "golden/models/digits_cnn.onnx"),
                          os.path.join(ROOT, "golden/data/digits_calib.npz"), report=False)
    x_tr, y_tr, _, _ = D.load_split()
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(args.steps):
        idx = rng.integers(0, len(x_tr), args.batch)
        batches.append((torch.from_numpy(x_tr[idx]), torch.from_numpy(y_tr[idx])))

    ours = QATModule(ptq.qdq, ptq.float_model)
    theirs = TorchDigits(ptq.float_model)
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-4)
    opt_theirs = torch.optim.AdamW(theirs.parameters(), lr=1e-4)

    def step_ours(x, y):
        loss = F.cross_entropy(ours({"input": x})["logits"], y)
        opt_ours.zero_grad(set_to_none=True)
        loss.backward()
        opt_ours.step()

    def step_theirs(x, y):
        loss = F.cross_entropy(theirs(x), y)
        opt_theirs.zero_grad(set_to_none=True)
        loss.backward()
        opt_theirs.step()

    _steps(step_ours, batches[:3])  # warm-up
    _steps(step_theirs, batches[:3])
    times = {"qgraph": [], "torch.ao": []}
    for _ in range(args.repeat):
        times["qgraph"].append(_steps(step_ours, batches))
        times["torch.ao"].append(_steps(step_theirs, batches))
    n = args.steps * args.batch
    rate = {k: n / statistics.median(v) for k, v in times.items()}
    for k, r in rate.items():
        print(f"{k:9s} {r:10.0f} samples/s  (median of {args.repeat} x {args.steps} steps of {args.batch}, "
              f"{args.threads} thread(s))")
    print(f"qgraph / torch.ao throughput: {rate['qgraph'] / rate['torch.ao']:.2f}")


if __name__ == "__main__":
    main()
