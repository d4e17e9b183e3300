"""The fused LSTM kernel (``qgraph/tvm/x86/recurrent.py``) with and without ``ALTERNATE``
(every other step's tasks in reverse order), side by side in one process, on ddddocr's CRNN
shape: 2 directions x 512 units x 23 steps, batch 1.

    TVM_NUM_THREADS=1 python bench/bench_lstm_order.py [--steps 23] [--hidden 512]

Prints whether both give the same bits and the best / median of 9 rounds of 10 calls each.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    import tvm

    from qgraph import targets
    from qgraph.tvm.x86 import recurrent as R

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=23)
    ap.add_argument("--hidden", type=int, default=512)
    args = ap.parse_args(argv)
    d, seq, b, H = 2, args.steps, 1, args.hidden
    tgt = targets.resolve("cpu").tvm_target()
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((d, seq * b, 4 * H)).astype(np.float32),
              R.pack_lstm_weights((rng.standard_normal((d, H, 4 * H)) * 0.05).astype(np.float32), R.lstm_units(H, b)),
              rng.standard_normal((d, 4 * H)).astype(np.float32)] + \
        [np.zeros(s, np.float32) for s in ((d, b, H), (d, b, H), (seq, d, b, H), (d, b, H), (d, b, H))]
    kernels, outs, times = {}, {}, {}
    saved = R.ALTERNATE
    try:
        for alt in (False, True):
            R.ALTERNATE = alt
            kernels[alt] = tvm.compile(R.float_lstm(d, seq, b, H, (False, True)).with_attr("global_symbol", "f"), tgt)
    finally:
        R.ALTERNATE = saved
    tensors = {k: [tvm.runtime.tensor(a) for a in inputs] for k in kernels}
    for k, f in kernels.items():
        f(*tensors[k])
        outs[k] = tensors[k][5].numpy()
        times[k] = []
    for _ in range(9):
        for k, f in kernels.items():
            t0 = time.perf_counter()
            for _ in range(10):
                f(*tensors[k])
            times[k].append((time.perf_counter() - t0) / 10)
    print(f"same bits: {np.array_equal(outs[False], outs[True])}")
    for k, v in times.items():
        print(f"{'alternate' if k else 'in order':9s}  best {min(v) * 1e6:7.0f} us  median {np.median(v) * 1e6:7.0f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
