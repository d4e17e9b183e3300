"""Calibration data feeding, the calibrate pass and CLI, and agreement with ONNX Runtime's calibrators."""

import json
import os

import numpy as np
import onnx
import pytest

import qgraph
from qgraph.calib.calibrate import calibrate
from qgraph.calib.data import CalibrationDataError, input_specs, iter_samples
from qgraph.cli.main import main as cli
from tests.conftest import REPO, run_pipeline

MODEL = os.path.join(REPO, "golden", "models", "example_cnn.onnx")
DATA = os.path.join(REPO, "golden", "data", "example_cnn_calib.npz")


@pytest.fixture
def model():
    return qgraph.load(MODEL)


def images(n, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (n, 1, 8, 8)).astype(np.float32)


# -- data feeding and its errors ----------------------------------------------------------------
def test_sources_npz_folder_and_iterable_give_the_same_samples(model, tmp_path):
    x = images(10)
    np.savez(tmp_path / "all.npz", input=x)
    folder = tmp_path / "parts"
    folder.mkdir()
    np.savez(folder / "a.npz", input=x[:4])
    np.save(folder / "b.npy", x[4:])
    specs = input_specs(model)
    for source in (str(tmp_path / "all.npz"), str(folder), [{"input": x[:3]}, {"input": x[3:]}]):
        got = np.concatenate([s["input"] for s in iter_samples(source, specs)])
        assert np.array_equal(got, x)


@pytest.mark.parametrize("batch, message", [
    ({"inputt": images(2)}, "unknown input name(s) ['inputt']; the model's inputs are 'input' (float32[N,1,8,8])"),
    ({}, "no data for input(s) ['input']"),
    ({"input": images(2)[:, :, :4]}, "input 'input' axis 2 is 4, the model expects 8"),
    ({"input": images(2)[0]}, "has shape [1, 8, 8] (rank 3)"),
    ({"input": images(2).astype(np.int32)}, "input 'input' is int32, the model expects float32"),
    ({"input": np.zeros((0, 1, 8, 8), np.float32)}, "input 'input' is empty"),
])
def test_bad_batches_are_named(model, batch, message):
    with pytest.raises(CalibrationDataError) as e:
        list(iter_samples([batch], input_specs(model)))
    assert message in str(e.value)


def test_nan_and_inf_name_the_sample(model):
    x = images(6)
    x[4, 0, 3, 3] = np.nan
    with pytest.raises(CalibrationDataError, match="input 'input' sample 4 contains NaN"):
        list(iter_samples([{"input": x[:2]}, {"input": x[2:]}], input_specs(model)))
    x[4, 0, 3, 3] = np.inf
    with pytest.raises(CalibrationDataError, match="sample 4 contains Inf"):
        list(iter_samples({"input": x}, input_specs(model)))


def test_float64_is_converted(model):
    (s,) = list(iter_samples({"input": images(1).astype(np.float64)}, input_specs(model)))
    assert s["input"].dtype == np.float32


def test_missing_path_and_wrong_kind(model, tmp_path):
    with pytest.raises(CalibrationDataError, match="no such file or folder"):
        calibrate(model, str(tmp_path / "nope.npz"))
    with pytest.raises(CalibrationDataError, match="iterable"):
        calibrate(model, 42)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(CalibrationDataError, match="not a readable .npz"):
        calibrate(model, str(tmp_path / "bad.npz"))


# -- calibration ---------------------------------------------------------------------------------
def test_minmax_covers_every_float_tensor_and_matches_numpy_of_the_inputs(model):
    x = images(20)
    ranges = calibrate(model, {"input": x}, "minmax", batch_size=7)
    assert ranges.meta["samples"] == 20
    assert ranges["input"].lo == x.min() and ranges["input"].hi == x.max()
    named = {o.name for n in model.graph for o in n.outputs if o is not None and o.dtype is not None}
    assert named <= set(ranges)
    assert ranges["r1"].lo >= 0.0  # a Relu output


def test_batching_does_not_change_minmax(model):
    x = images(13)
    a = calibrate(model, {"input": x}, "minmax", batch_size=1)
    b = calibrate(model, {"input": x}, "minmax", batch_size=13)
    assert {k: (v.lo, v.hi) for k, v in a.tensors.items()} == {k: (v.lo, v.hi) for k, v in b.tensors.items()}


def test_a_literal_batch_dim_of_minus_one_is_symbolic(model):
    # PP-OCR's cls model declares x: [-1, 3, ?, ?]; -1 is not a batch of -1 samples
    from qgraph.calib.runner import batches
    from qgraph.ir.types import TensorType

    x0 = model.graph.inputs[0]
    x0.type = TensorType(x0.dtype, (-1,) + tuple(x0.shape[1:]))
    x = images(10)
    sizes = [n for n, feeds in batches(({"input": x[i:i + 1]} for i in range(10)), model, 4)]
    assert sizes == [4, 4, 2]
    a = calibrate(model, {"input": x}, "minmax", batch_size=1)
    b = calibrate(model, {"input": x}, "minmax", batch_size=4)
    assert {k: (v.lo, v.hi) for k, v in a.tensors.items()} == {k: (v.lo, v.hi) for k, v in b.tensors.items()}


def test_a_fixed_batch_dim_is_kept(model):
    from qgraph.calib.runner import batches
    from qgraph.errors import QGraphError
    from qgraph.ir.types import TensorType

    x0 = model.graph.inputs[0]
    x0.type = TensorType(x0.dtype, (2,) + tuple(x0.shape[1:]))
    samples = [{"input": images(1, seed=i)} for i in range(5)]
    with pytest.raises(QGraphError, match="fixed at 2; 1 calibration sample"):
        [n for n, _ in batches(iter(samples), model, 4)]
    assert [n for n, _ in batches(iter(samples[:4]), model, 3)] == [2, 2]


def test_calibrate_pass_records_ranges_and_invalidates_range_analysis(model):
    from qgraph.calib.intervals import RangeAnalysis
    from qgraph.passes import registry
    from qgraph.pm import AnalysisManager, PassContext, PassManager

    am = AnalysisManager(model)
    static = am.get(RangeAnalysis)
    pm = PassManager(registry().parse(f"calibrate(method=minmax,data={DATA})"), PassContext(verify_each=True))
    res = pm.run(model, am)
    assert res.modified and model.calibration is not None
    assert not am.is_cached(RangeAnalysis)
    combined = am.get(RangeAnalysis)
    assert combined["c2"].hi - combined["c2"].lo <= static["c2"].hi - static["c2"].lo


def test_calibrate_pass_without_data_says_what_to_do(model):
    from qgraph.errors import PassError

    with pytest.raises(PassError, match="calibrate needs data"):
        run_pipeline(model, "calibrate")


def test_cli_calibrate_writes_ranges_json(tmp_path, capsys):
    out = tmp_path / "ranges.json"
    assert cli(["calibrate", MODEL, "--calib", DATA, "--method", "entropy", "-o", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["meta"]["method"] == "entropy" and data["meta"]["samples"] == 64
    assert all(lo <= hi for lo, hi in data["ranges"].values())
    assert "64 samples" in capsys.readouterr().out


def test_cli_calibrate_bad_data_is_one_line(tmp_path, capsys):
    np.savez(tmp_path / "bad.npz", image=images(2))
    assert cli(["calibrate", MODEL, "--calib", str(tmp_path / "bad.npz"), "-o", str(tmp_path / "r.json")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown input name(s) ['image']" in err[0]


def test_cli_inspect_ranges(tmp_path, capsys):
    out = tmp_path / "ranges.json"
    assert cli(["calibrate", MODEL, "--calib", DATA, "-o", str(out)]) == 0
    capsys.readouterr()
    assert cli(["inspect", MODEL, "--json", "--input-range", "0,1", "--ranges-file", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["ranges"]["ranges"]["input"] == [0.0, 1.0]
    assert summary["ranges"]["sources"]["r1"] in ("calibration", "static")


# -- agreement with ONNX Runtime's calibrators on the same model and data ------------------------
def _ort_ranges(path, x, method, **extra):
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": x[i:i + 1]} for i in range(len(x))])

        def get_next(self):
            return next(self.it, None)

    cal = create_calibrator(path, None, augmented_model_path=str(os.path.dirname(path)) + "/aug.onnx",
                            calibrate_method=getattr(CalibrationMethod, method), extra_options=extra)
    cal.collect_data(Reader())
    return {k: (np.asarray(v.range_value[0]).item(), np.asarray(v.range_value[1]).item())
            for k, v in cal.compute_data().data.items()}


def test_minmax_equals_onnxruntime(tmp_path):
    path = str(tmp_path / "m.onnx")
    onnx.save(onnx.load(MODEL), path)
    x = np.load(DATA)["input"]
    ours = calibrate(qgraph.load(path), {"input": x}, "minmax")
    theirs = _ort_ranges(path, x, "MinMax")
    common = set(ours) & set(theirs)
    assert len(common) >= len(theirs) - 1
    for k in common:
        assert np.float32(ours[k].lo) == np.float32(theirs[k][0]) and np.float32(ours[k].hi) == np.float32(theirs[k][1]), k
