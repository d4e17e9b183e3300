"""Prepare ``bench/gpu_device.sh``'s files here (no GPU needed): each golden model and PP-OCRv4
rec / det / cls quantized, built with ``--target cuda`` (sm_90 by default: the lent H100 / H200)
and written as PTX + launch plan + inputs + the reference's outputs into ``bench/gpu_build/NAME/``,
with the float ONNX model's conv / matmul layer shapes for the PyTorch comparison.

    python bench/gpu_prepare.py [--arch sm_90] [--out bench/gpu_build] [NAME ...]

The folder holds only what the GPU machine needs (no TVM): kernels.ptx, kernels.cu, plan.json,
constants.npz, inputs.npz, reference.npz, layers.json, outputs.json; ``du -sh`` it to check it fits the
64 MiB a device call carries.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import shutil
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def _bench():
    spec = importlib.util.spec_from_file_location("check_tvm_models", os.path.join(REPO, "bench",
                                                                                 "check_tvm_models.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _golden(name: str):
    stem = name[:-4] if name.endswith("_cnn") and name != "example_cnn" else name
    data = os.path.join(REPO, "golden", "data")
    calib = os.path.join(data, f"{stem}_calib.npz")
    test = os.path.join(data, f"{stem}_test.npz")
    with np.load(test if os.path.exists(test) else calib) as z:
        feeds = {k: z[k][:1] for k in z.files if k != "label"}
    return os.path.join(REPO, "golden", "models", f"{name}.onnx"), calib, feeds


def layers(model, shapes: dict) -> list[dict]:
    """The float model's Conv layers with static shapes (PyTorch fp16 runs them on cuDNN)."""
    import tempfile

    import onnx
    from onnx import helper, shape_inference

    from qgraph.onnx import save

    with tempfile.TemporaryDirectory() as tmp:
        save(model, os.path.join(tmp, "m.onnx"))
        m = onnx.load(os.path.join(tmp, "m.onnx"))
    for i in m.graph.input:
        if i.name in shapes:
            dims = i.type.tensor_type.shape.dim
            for d, v in zip(dims, shapes[i.name]):
                d.ClearField("dim_param")
                d.dim_value = int(v)
    m = shape_inference.infer_shapes(m)
    known = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
             for v in list(m.graph.value_info) + list(m.graph.input)}
    inits = {t.name: list(t.dims) for t in m.graph.initializer}
    out = []
    for node in m.graph.node:
        if node.op_type != "Conv" or node.input[0] not in known or node.input[1] not in inits:
            continue
        a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
        pads = list(a.get("pads", [0, 0, 0, 0]))
        out.append({"op": "conv", "x": known[node.input[0]], "w": inits[node.input[1]],
                    "strides": list(a.get("strides", [1, 1])), "pads": pads[:len(pads) // 2],
                    "dilations": list(a.get("dilations", [1, 1])), "group": int(a.get("group", 1))})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*")
    ap.add_argument("--arch", default="sm_90", choices=["sm_80", "sm_89", "sm_90"])
    ap.add_argument("--out", default=os.path.join(REPO, "bench", "gpu_build"))
    args = ap.parse_args(argv)
    from qgraph.api import quantize
    from qgraph.ir import l3
    from qgraph.reference import Interpreter
    from qgraph.targets import cuda

    golden = sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(REPO, "golden", "models", "*.onnx")))
    names = args.names or golden + ["cls", "rec", "det"]
    bench = _bench()
    for name in names:
        start = time.perf_counter()
        if name in golden:
            path, calib, feeds = _golden(name)
            q = quantize(path, calib, report=False, show_progress=False)
        else:
            path = bench.model_path(name)
            q = quantize(bench.load_model(name, True), bench.samples(name, path, 4, seed=1), method="minmax",
                         report=False, show_progress=False)
            feeds = bench.samples(name, path, 1, seed=5)[0]
        shapes = {k: list(v.shape) for k, v in feeds.items()}
        c = q.build(cuda(args.arch), input_shapes=shapes)
        if c.ptx is None:
            raise SystemExit("nvcc is needed to write the PTX")
        folder = os.path.join(args.out, name)
        shutil.rmtree(folder, ignore_errors=True)
        c.plan.save(folder)
        with open(os.path.join(folder, "kernels.ptx"), "w") as f:
            f.write(c.ptx)
        with open(os.path.join(folder, "kernels.cu"), "w") as f:  # for the GPU machine's nvcc, if its
            f.write(c.source)                                     # driver cannot JIT this nvcc's PTX
        ref = Interpreter(q.integer).run(feeds)
        np.savez(os.path.join(folder, "inputs.npz"), *[feeds[s.name] for s in c.inputs])
        np.savez(os.path.join(folder, "reference.npz"), *[ref[s.name] for s in c.outputs])
        with open(os.path.join(folder, "layers.json"), "w") as f:
            json.dump(layers(q.float_model, shapes), f)
        tainted = l3.after_float_ops(q.integer.graph)
        with open(os.path.join(folder, "outputs.json"), "w") as f:  # which outputs a float op feeds
            json.dump([{"name": s.name, "after_float_ops": s.name in tainted} for s in c.outputs], f)
        print(f"{name}: {len(c.plan.launches)} kernels, PTX {len(c.ptx) / 1e6:.1f} MB, "
              f"{time.perf_counter() - start:.0f} s -> {folder}", flush=True)
    shutil.copy(os.path.join(REPO, "qgraph", "tvm", "gpu", "launch.py"), os.path.join(args.out, "launch.py"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
