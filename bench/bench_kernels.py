"""qgraph's integer kernels (TVM, hand-scheduled AVX2) next to ONNX Runtime int8 and fp32, per op.

    python bench/bench_kernels.py [--runs 21] [--threads 1 2] [--ops NAME ...] [--no-default]

Each op is a one-node model with the shapes of a real layer (PP-OCRv4 rec, light_resnet50,
the digits CNN); random 8-bit data, per-channel int8 weights (so qgraph's convs take the
int16-pair form). Side by side in one process, interleaved (per round, each implementation
runs untimed for 5 ms, so the previous one's spinning pool threads settle: ``bench_tvm.settle``,
then once timed; ``--runs`` rounds), medians in microseconds:

    qgraph     the L3 op built by ``qgraph.tvm.build`` (fast kernels, the default here)
    default    the same with ``kernels="default"`` (TVM's default lowering, untuned)
    ort-int8   the QDQ form (DQ -> Conv/MatMul -> Q) in ONNX Runtime's CPU EP, which fuses
               it into its u8 x s8 kernel (QLinearConv / QLinearMatMul)
    ort-fp32   the float op in ONNX Runtime

Whole models: the golden digits CNN at batch 1 and 64 (qgraph integer vs ORT fp32 of the
float model and ORT int8 of qgraph's QDQ export). Ratios below 1 mean qgraph is faster.
Thread counts apply to both runtimes (TVM's thread pool, ORT's intra-op threads).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_tvm import settle  # noqa: E402

#: name: (kind, x shape, w shape, strides, pads, group)
OPS = {
    "rec-stem-3x3s2": ("conv", (1, 3, 48, 320), (16, 3, 3, 3), (2, 2), (1, 1, 1, 1), 1),
    "conv3x3-64": ("conv", (1, 64, 24, 160), (64, 64, 3, 3), (1, 1), (1, 1, 1, 1), 1),
    "rec-1x1-240": ("conv", (1, 240, 12, 80), (240, 240, 1, 1), (1, 1), (0, 0, 0, 0), 1),
    "rec-1x1-64-128": ("conv", (1, 64, 12, 160), (128, 64, 1, 1), (1, 1), (0, 0, 0, 0), 1),
    "rec-dw5x5-240": ("conv", (1, 240, 12, 80), (240, 1, 5, 5), (1, 1), (2, 2, 2, 2), 240),
    "rec-dw3x3-64s21": ("conv", (1, 64, 24, 160), (64, 1, 3, 3), (2, 1), (1, 1, 1, 1), 64),
    "rec-neck-1x3": ("conv", (1, 480, 1, 40), (60, 480, 1, 3), (1, 1), (0, 1, 0, 1), 1),
    "r50-3x3-256-14": ("conv", (1, 256, 14, 14), (256, 256, 3, 3), (1, 1), (1, 1, 1, 1), 1),
    "r50-3x3-64-56": ("conv", (1, 64, 56, 56), (64, 64, 3, 3), (1, 1), (1, 1, 1, 1), 1),
    "r50-1x1-64-256-56": ("conv", (1, 64, 56, 56), (256, 64, 1, 1), (1, 1), (0, 0, 0, 0), 1),
    "r50-1x1-256-1024-14": ("conv", (1, 256, 14, 14), (1024, 256, 1, 1), (1, 1), (0, 0, 0, 0), 1),
    "r50-3x3-512-7": ("conv", (1, 512, 7, 7), (512, 512, 3, 3), (1, 1), (1, 1, 1, 1), 1),
    "digits-conv2-b64": ("conv", (64, 8, 8, 8), (16, 8, 3, 3), (2, 2), (1, 1, 1, 1), 1),
    "digits-conv3-b64": ("conv", (64, 16, 4, 4), (32, 16, 3, 3), (2, 2), (1, 1, 1, 1), 1),
    "rec-fc-120x360": ("matmul", (1, 40, 120), (120, 360)),
    "rec-fc-240x120": ("matmul", (1, 40, 240), (240, 120)),
    "rec-ctc-120x6625": ("matmul", (1, 40, 120), (120, 6625)),
}


def _rng_params(kind_spec, rng):
    if kind_spec[0] == "conv":
        _, xs, ws, strides, pads, group = kind_spec
        oc = ws[0]
    else:
        _, xs, ws = kind_spec
        oc = ws[1]
    w = rng.integers(-127, 128, ws).astype(np.int8)
    sw = (rng.random(oc) * 0.02 + 0.005).astype(np.float32)
    sx, zx = np.float32(0.02), 120
    bias = rng.integers(-2000, 2000, oc).astype(np.int32)
    k = int(np.prod(ws[1:])) if kind_spec[0] == "conv" else ws[0]
    sy = np.float32(0.02 * 0.012 * np.sqrt(k) * 8)
    zy = 128
    return w, sw, sx, zx, bias, sy, zy


def l3_model(name, spec, rng):
    """The one-node L3 model and its feed."""
    from qgraph.ir import DType, Graph, Model, Node, TensorType, Value, l3
    from qgraph.quant.fixedpoint import fixed_point_multiplier

    w, sw, sx, zx, bias, sy, zy = _rng_params(spec, rng)
    xs = spec[1]
    x = rng.integers(0, 256, xs).astype(np.uint8)
    fp = fixed_point_multiplier(sx * sw.astype(np.float64) / sy, acc_bound=2**31 - 1)
    rq = {"multiplier": [int(m) for m in fp.multiplier], "shift": [int(s) for s in fp.shift],
          "y_zero_point": zy, "y_qmin": 0, "y_qmax": 255}
    g = Graph(name)
    xv = Value("x", TensorType(DType.UINT8, xs))
    g.inputs.append(xv)
    wv, bv = g.add_initializer("w", w), g.add_initializer("b", bias)
    y = Value("y", TensorType(DType.UINT8, None))
    if spec[0] == "conv":
        _, _, ws, strides, pads, group = spec
        attrs = {"strides": list(strides), "pads": list(pads), "group": group, "kernel_shape": list(ws[2:]),
                 "x_zero_point": zx, "w_zero_point": [0], **rq}
        g.append(Node(l3.QConv, [xv, wv, bv], [y], attrs, name="n"))
    else:
        attrs = {"a_zero_point": zx, "b_zero_point": [0], **rq}
        g.append(Node(l3.QMatMul, [xv, wv, bv], [y], attrs, name="n"))
    g.outputs.append(y)
    return Model(g, {"": 21, "qgraph": 1}), {"x": x}


def onnx_models(name, spec, rng):
    """(fp32 model, QDQ model, fp32 feed, uint8 feed) of the same op."""
    w, sw, sx, zx, bias, sy, zy = _rng_params(spec, rng)
    xs = spec[1]
    xq = rng.integers(0, 256, xs).astype(np.uint8)
    xf = ((xq.astype(np.float32) - zx) * sx).astype(np.float32)
    wf = (w.astype(np.float32) * (sw.reshape((-1,) + (1,) * (w.ndim - 1)) if spec[0] == "conv" else sw))
    bf = (bias * sx * sw).astype(np.float32)
    if spec[0] == "conv":
        _, _, ws, strides, pads, group = spec
        attrs = {"strides": list(strides), "pads": list(pads), "group": group, "kernel_shape": list(ws[2:])}
        op, axis = "Conv", 0
    else:
        attrs, op, axis = {}, "MatMul", 1
    # float
    nodes = [helper.make_node(op, ["x", "w"] + (["b"] if op == "Conv" else []), ["y0" if op == "MatMul" else "y"],
                              **attrs)]
    if op == "MatMul":
        nodes.append(helper.make_node("Add", ["y0", "b"], ["y"]))
    inits = [numpy_helper.from_array(wf.astype(np.float32), "w"), numpy_helper.from_array(bf, "b")]
    g = helper.make_graph(nodes, "f", [helper.make_tensor_value_info("x", TensorProto.FLOAT, xs)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    fmodel = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    # QDQ
    qi = [numpy_helper.from_array(np.array(sx, np.float32), "sx"), numpy_helper.from_array(np.array(zx, np.uint8), "zx"),
          numpy_helper.from_array(w, "wq"), numpy_helper.from_array(sw, "sw"),
          numpy_helper.from_array(np.zeros(sw.shape, np.int8), "zw"),
          numpy_helper.from_array(bias, "bq"), numpy_helper.from_array((sx * sw).astype(np.float32), "sb"),
          numpy_helper.from_array(np.zeros(sw.shape, np.int32), "zb"),
          numpy_helper.from_array(np.array(sy, np.float32), "sy"), numpy_helper.from_array(np.array(zy, np.uint8), "zy")]
    qn = [helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["x"]),
          helper.make_node("DequantizeLinear", ["wq", "sw", "zw"], ["w"], axis=axis),
          helper.make_node("DequantizeLinear", ["bq", "sb", "zb"], ["b"], axis=0)]
    qn += nodes
    qn.append(helper.make_node("QuantizeLinear", ["y", "sy", "zy"], ["yq"]))
    g = helper.make_graph(qn, "q", [helper.make_tensor_value_info("xq", TensorProto.UINT8, xs)],
                          [helper.make_tensor_value_info("yq", TensorProto.UINT8, None)], qi)
    qmodel = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    return fmodel, qmodel, {"x": xf}, {"xq": xq}


def ort_session(model, threads):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def tvm_runner(model, feeds, kernels):
    import tvm

    from qgraph import tvm as qtvm

    c = qtvm.build(model, kernels=kernels).warm()
    vm = c._machine()
    args = [tvm.runtime.tensor(np.ascontiguousarray(feeds[s.name])) for s in c.inputs]
    f = vm["main"]
    return lambda: f(*args)


def set_tvm_threads(n):
    import tvm

    tvm.get_global_func("runtime.config_threadpool")(0, n)


def interleaved(runners: dict, runs: int) -> dict:
    times = {k: [] for k in runners}
    for f in runners.values():  # warm-up
        f(), f()
    for _ in range(runs):
        for k, f in runners.items():
            settle(f)  # untimed, as in bench_tvm: the previous runner's spinning pool threads settle
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e6 for k, v in times.items()}


def bench_ops(names, threads, runs, with_default):
    rows = []
    for name in names:
        spec = OPS[name]
        rng = np.random.default_rng(0)
        model, feeds = l3_model(name, spec, rng)
        fmodel, qmodel, ffeed, qfeed = onnx_models(name, spec, np.random.default_rng(0))
        fast = tvm_runner(model, feeds, "auto")
        default = tvm_runner(model, feeds, "default") if with_default else None
        for t in threads:
            set_tvm_threads(t)
            sf, sq = ort_session(fmodel, t), ort_session(qmodel, t)
            runners = {"qgraph": fast, "ort-int8": lambda: sq.run(None, qfeed), "ort-fp32": lambda: sf.run(None, ffeed)}
            if default is not None:
                runners["default"] = default
            med = interleaved(runners, runs)
            rows.append((name, t, med))
    return rows


def bench_digits(threads, runs, with_default):
    from qgraph.api import quantize

    q = quantize(os.path.join(REPO, "golden", "models", "digits_cnn.onnx"),
                 os.path.join(REPO, "golden", "data", "digits_calib.npz"), report=False)
    data = np.load(os.path.join(REPO, "golden", "data", "digits_test.npz"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        qdq = os.path.join(tmp, "digits_qdq.onnx")
        q.export_qdq(qdq)
        fmodel = onnx.load(os.path.join(REPO, "golden", "models", "digits_cnn.onnx"))
        for bs in (1, 64):
            x = np.ascontiguousarray(data["input"][:bs])
            import tvm

            from qgraph import tvm as qtvm

            c = qtvm.build(q.integer, batch_size=bs).warm()
            f = c._machine()["main"]
            arg = tvm.runtime.tensor(x)
            fast = lambda f=f, arg=arg: f(arg)  # noqa: E731
            default = None
            if with_default:
                cd = qtvm.build(q.integer, batch_size=bs, kernels="default").warm()
                fd = cd._machine()["main"]
                default = lambda fd=fd, arg=arg: fd(arg)  # noqa: E731
            for t in threads:
                set_tvm_threads(t)
                sf, sq = ort_session(fmodel, t), ort_session(qdq, t)
                in_f = sf.get_inputs()[0].name
                in_q = sq.get_inputs()[0].name
                runners = {"qgraph": fast, "ort-int8": lambda: sq.run(None, {in_q: x}),
                           "ort-fp32": lambda: sf.run(None, {in_f: x})}
                if default is not None:
                    runners["default"] = default
                rows.append((f"digits-cnn-b{bs}", t, interleaved(runners, runs)))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=21)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--ops", nargs="+", default=list(OPS), choices=list(OPS))
    ap.add_argument("--no-default", action="store_true", help="skip TVM's default lowering (slow)")
    ap.add_argument("--no-digits", action="store_true")
    args = ap.parse_args(argv)
    rows = bench_ops(args.ops, args.threads, args.runs, not args.no_default)
    if not args.no_digits:
        rows += bench_digits(args.threads, args.runs, not args.no_default)
    cols = ["qgraph", "ort-int8", "ort-fp32"] + ([] if args.no_default else ["default"])
    print(f"medians of {args.runs} interleaved runs, microseconds; ratio = qgraph / other (< 1: qgraph faster)")
    head = f"{'op':<20} {'thr':>3} " + " ".join(f"{c:>10}" for c in cols) + "  q/int8  q/fp32" + (
        "  q/default" if not args.no_default else "")
    print(head)
    for name, t, med in rows:
        line = f"{name:<20} {t:>3} " + " ".join(f"{med[c]:>10.1f}" for c in cols)
        line += f"  {med['qgraph'] / med['ort-int8']:>6.2f}  {med['qgraph'] / med['ort-fp32']:>6.2f}"
        if not args.no_default:
            line += f"  {med['qgraph'] / med['default']:>9.2f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
