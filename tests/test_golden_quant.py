"""Every golden model, quantized with the golden recipe: its QDQ export runs in ONNX Runtime
and, with ORT's QDQ fusion off (``session.disable_quant_qdq``), every output is within 1 LSB
of the integer reference interpreter; the reference reproduces golden/ref/<name>.int.npz."""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest

from tests.conftest import REPO

MODELS = sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(REPO, "golden", "models", "*.onnx"))
                if not os.path.basename(p).startswith("example"))


def _data(name: str, kind: str) -> dict[str, np.ndarray]:
    stem = name[:-4] if name.endswith("_cnn") else name
    with np.load(os.path.join(REPO, "golden", "data", f"{stem}_{kind}.npz")) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize("name", MODELS)
def test_golden_qdq_in_ort_within_one_lsb_of_reference(name):
    import qgraph.api
    from qgraph.verify.outputs import output_scales

    path = os.path.join(REPO, "golden", "models", f"{name}.onnx")
    q = qgraph.api.quantize(path, os.path.join(REPO, "golden", "data", f"{name.removesuffix('_cnn')}_calib.npz"),
                            report=False, show_progress=False)
    inputs = {k: v for k, v in _data(name, "test").items() if k in {i.name for i in q.float_model.graph.inputs}}
    ref = q.run(inputs, "reference")
    sim = q.run(inputs, "ort-sim")
    q.run(inputs, "ort")  # ORT's default kernels run it too (their distance is verify's business)
    scales = output_scales(q.qdq)
    assert scales, "no output is quantized"
    for out, scale in scales.items():
        lsb = np.abs(ref[out].astype(np.float64) - sim[out]) / scale
        assert lsb.max() <= 1.0 + 1e-6, (out, lsb.max())
    golden_int = os.path.join(REPO, "golden", "ref", f"{name}.int.npz")
    assert os.path.exists(golden_int), "run python golden/generate.py"
    with np.load(golden_int) as z:
        for k in z.files:
            np.testing.assert_array_equal(ref[k], z[k])
