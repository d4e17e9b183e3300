"""Every input layout, and batches for every backend (``qgraph.batching``).

- a CNN declared with a fixed batch of 1 compiles (qdq, cpu) from 32 calibration samples, and
  ``run`` / ``verify`` on 32 samples work on every backend, equal to per-sample runs;
- a model with a rank-0 input (no sample axis) and a recurrent state ``[2, N, 16]`` batched on
  axis 1 compiles and runs, its outputs concatenated on their own sample axes;
- a model declared with a fixed batch of 2 calibrates, to the same ranges as batch 1;
- inconsistent data says what is wrong in one line.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qgraph import batching
from qgraph.api import CompiledDir, quantize
from qgraph.calib.calibrate import calibrate
from qgraph.errors import QGraphError
from qgraph.cli.main import main
from qgraph.onnx import from_proto

N = 32
RNG_CALIB, RNG_TEST = 0, 1


def _w(name: str, *shape: int, scale: float = 0.3, seed: int = 0):
    return numpy_helper.from_array((np.random.default_rng(seed + len(name)).standard_normal(shape) * scale)
                                   .astype(np.float32), name)


def cnn(batch) -> onnx.ModelProto:
    """x [batch,3,8,8] -> conv -> relu -> global average pool -> flatten -> matmul + add -> y [batch,5]."""
    nodes = [
        helper.make_node("Conv", ["x", "c.w", "c.b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("MatMul", ["f", "fc.w"], ["m"], name="fc"),
        helper.make_node("Add", ["m", "fc.b"], ["y"], name="fc_add"),
    ]
    graph = helper.make_graph(
        nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 5])],
        [_w("c.w", 4, 3, 3, 3), _w("c.b", 4, scale=0.1), _w("fc.w", 4, 5), _w("fc.b", 5, scale=0.1)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def recurrent(batch) -> onnx.ModelProto:
    """A GRU-free stand-in for a recurrent step: conv features of x [batch,3,8,8], a rank-0
    ``scale`` (the same for every sample) and a state [2,batch,16] batched on axis 1:
    new_state = state * scale + features; features [batch,16] is an output too."""
    nodes = [
        helper.make_node("Conv", ["x", "c.w", "c.b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["features"], name="flatten"),
        helper.make_node("Mul", ["state", "scale"], ["kept"], name="decay"),
        helper.make_node("Add", ["kept", "features"], ["new_state"], name="update"),
    ]
    graph = helper.make_graph(
        nodes, "recurrent",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 8, 8]),
         helper.make_tensor_value_info("scale", TensorProto.FLOAT, []),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, batch, 16])],
        [helper.make_tensor_value_info("new_state", TensorProto.FLOAT, [2, batch, 16]),
         helper.make_tensor_value_info("features", TensorProto.FLOAT, [batch, 16])],
        [_w("c.w", 16, 3, 3, 3), _w("c.b", 16, scale=0.1)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (n, 3, 8, 8)).astype(np.float32)


def states(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed + 100).uniform(-1, 1, (2, n, 16)).astype(np.float32)


def save(proto: onnx.ModelProto, path) -> str:
    onnx.save(proto, str(path))
    return str(path)


def run_cli(args: list[str], capsys) -> str:
    code = main(args)
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


def per_sample(c: CompiledDir, feeds: dict, backend: str, axes: dict, out_axes: dict) -> dict:
    """Outputs of ``c`` run on one sample at a time, concatenated."""
    n = batching.count(feeds, axes)
    parts = [c.run(batching.take(feeds, axes, i, i + 1), backend) for i in range(n)]
    return {k: np.concatenate([p[k] for p in parts], axis=out_axes[k]) for k in parts[0]}


# -- (a) a fixed batch of 1 ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def cnn_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cnn")
    model = save(cnn(1), d / "cnn.onnx")
    np.savez(d / "calib.npz", x=images(N, RNG_CALIB))
    np.savez(d / "test.npz", x=images(N, RNG_TEST))
    return d, model


@pytest.fixture(scope="module")
def cnn_cpu(cnn_files):
    pytest.importorskip("tvm")
    d, model = cnn_files
    assert main(["compile", model, "--calib", str(d / "calib.npz"), "-o", str(d / "cpu"), "--target", "cpu"]) == 0
    return d / "cpu"


def test_fixed_batch_1_compiles_and_runs_32_samples_on_reference_and_ort(cnn_files, tmp_path, capsys):
    d, model = cnn_files
    run_cli(["compile", model, "--calib", str(d / "calib.npz"), "-o", str(tmp_path / "q")], capsys)
    c = CompiledDir.load(str(tmp_path / "q"))
    x = images(N, RNG_TEST)
    for backend in ("reference", "ort", "ort-sim"):
        run_cli(["run", str(tmp_path / "q"), "--inputs", str(d / "test.npz"), "-o", str(tmp_path / "y.npz"),
                 "--backend", backend], capsys)
        with np.load(tmp_path / "y.npz") as z:
            got = z["y"]
        assert got.shape == (N, 5)
        assert np.array_equal(got, per_sample(c, {"x": x}, backend, {"x": 0}, {"y": 0})["y"]), backend
    flt = c.run_float({"x": x})["y"]
    assert flt.shape == (N, 5) and np.allclose(flt, np.concatenate([c.run_float({"x": x[i:i + 1]})["y"]
                                                                     for i in range(N)]), atol=1e-6)
    said = run_cli(["verify", str(tmp_path / "q"), "--inputs", str(d / "test.npz")], capsys)
    assert said.startswith(f"{N} samples") and "SQNR" in said


def test_fixed_batch_1_tvm_runs_and_verifies_32_samples(cnn_files, cnn_cpu, tmp_path, capsys):
    d, _ = cnn_files
    c = CompiledDir.load(str(cnn_cpu))
    said = run_cli(["run", str(cnn_cpu), "--inputs", str(d / "test.npz"), "-o", str(tmp_path / "t.npz"),
                    "--backend", "tvm"], capsys)
    assert f"batch 1: {N} samples in {N} runs" in said
    with np.load(tmp_path / "t.npz") as z:
        got = z["y"]
    x = images(N, RNG_TEST)
    assert np.array_equal(got, per_sample(c, {"x": x}, "tvm", {"x": 0}, {"y": 0})["y"])
    assert np.array_equal(got, c.run({"x": x}, "reference")["y"])
    said = run_cli(["verify", str(cnn_cpu), "--inputs", str(d / "test.npz")], capsys)
    assert "reference vs TVM cpu: max 0 LSB" in said


# -- (b) a rank-0 input and a state batched on axis 1 -------------------------------------------
def _recurrent_data(path, n: int, seed: int, layout: bool = False) -> dict:
    feeds = {"x": images(n, seed), "scale": np.float32(0.75), "state": states(n, seed)}
    extra = {batching.FILE_KEY: np.array(json.dumps({"state": 1}))} if layout else {}
    np.savez(path, **feeds, **extra)
    return feeds


RECURRENT_AXES = {"x": 0, "scale": None, "state": 1}
RECURRENT_OUT = {"new_state": 1, "features": 0}


def test_rank0_input_and_state_on_axis_1_compile_and_verify(tmp_path, capsys):
    model = save(recurrent(1), tmp_path / "rec.onnx")
    _recurrent_data(tmp_path / "calib.npz", N, RNG_CALIB)
    feeds = _recurrent_data(tmp_path / "test.npz", N, RNG_TEST)
    run_cli(["compile", model, "--calib", str(tmp_path / "calib.npz"), "-o", str(tmp_path / "q"),
             "--batch-axis", "state=1"], capsys)
    with open(tmp_path / "q" / "config.json") as f:
        assert json.load(f)["batch_axes"] == {"state": 1}
    c = CompiledDir.load(str(tmp_path / "q"))  # the folder knows the layout: no option from here on
    for backend in ("reference", "ort-sim"):
        run_cli(["run", str(tmp_path / "q"), "--inputs", str(tmp_path / "test.npz"), "-o", str(tmp_path / "y.npz"),
                 "--backend", backend], capsys)
        want = per_sample(c, feeds, backend, RECURRENT_AXES, RECURRENT_OUT)
        with np.load(tmp_path / "y.npz") as z:
            assert z["new_state"].shape == (2, N, 16) and z["features"].shape == (N, 16)
            assert all(np.array_equal(z[k], want[k]) for k in want), backend
    said = run_cli(["verify", str(tmp_path / "q"), "--inputs", str(tmp_path / "test.npz")], capsys)
    assert said.startswith(f"{N} samples") and "new_state: quantized vs float: SQNR" in said


def test_recurrent_cpu_build_batches_on_each_inputs_axis(tmp_path, capsys):
    pytest.importorskip("tvm")
    model = save(recurrent("N"), tmp_path / "rec.onnx")
    _recurrent_data(tmp_path / "calib.npz", N, RNG_CALIB, layout=True)  # the file says where the samples are
    feeds = _recurrent_data(tmp_path / "test.npz", N, RNG_TEST)
    run_cli(["compile", model, "--calib", str(tmp_path / "calib.npz"), "-o", str(tmp_path / "cpu"),
             "--target", "cpu", "--batch-size", "4"], capsys)
    c = CompiledDir.load(str(tmp_path / "cpu"))
    assert {t.name: list(t.shape) for t in c.tvm_build().inputs} == {"x": [4, 3, 8, 8], "scale": [],
                                                                     "state": [2, 4, 16]}
    said = run_cli(["run", str(tmp_path / "cpu"), "--inputs", str(tmp_path / "test.npz"), "-o",
                    str(tmp_path / "t.npz"), "--backend", "tvm"], capsys)
    assert f"batch 4: {N} samples in 8 runs" in said
    ref = c.run(feeds, "reference")
    with np.load(tmp_path / "t.npz") as z:
        assert all(np.array_equal(z[k], ref[k]) for k in ref)
    said = run_cli(["verify", str(tmp_path / "cpu"), "--inputs", str(tmp_path / "test.npz")], capsys)
    assert said.count("reference vs TVM cpu: max 0 LSB") == 2


def test_symbolic_batch_runs_in_chunks_along_each_outputs_axis(tmp_path):
    feeds = _recurrent_data(tmp_path / "calib.npz", 10, RNG_CALIB)
    q = quantize(recurrent("N"), str(tmp_path / "calib.npz"), report=False, show_progress=False,
                 batch_axes={"state": 1})
    whole = q.run(feeds)
    shapes = batching.input_shapes(q.integer)
    from qgraph.reference import Interpreter

    chunked = batching.run_in_batches(Interpreter(q.integer).run, feeds, shapes, RECURRENT_AXES, chunk=3,
                                      output_axes=batching.probe_output_axes(q.float_model, RECURRENT_AXES))
    assert batching.probe_output_axes(q.float_model, RECURRENT_AXES) == RECURRENT_OUT
    assert all(np.array_equal(whole[k], chunked[k]) for k in whole)


def test_python_api_layouts_from_the_config_and_from_the_batches(tmp_path):
    feeds = _recurrent_data(tmp_path / "calib.npz", 6, RNG_CALIB)
    by_config = quantize(recurrent(1), feeds, config={"batch_axes": {"state": 1}}, report=False, show_progress=False)
    layout = json.dumps({"state": 1})
    batches = [{**batching.take(feeds, RECURRENT_AXES, i, i + 3), batching.FILE_KEY: layout} for i in (0, 3)]
    by_batches = quantize(recurrent(1), batches, report=True, show_progress=False)
    assert by_batches.config.batch_axes == {"state": 1} and by_batches.report.summary["report_samples"] == 6
    a, b = by_config.run(feeds), by_batches.run(feeds)
    assert a["new_state"].shape == (2, 6, 16) and all(np.array_equal(a[k], b[k]) for k in a)
    bad = [batches[0], {**batches[1], batching.FILE_KEY: json.dumps({"state": 0})}]
    with pytest.raises(QGraphError, match="batch starting at sample 3: __batch_axes__ puts the samples of input "
                                          "'state' on axis 0, but the batch axes in use say axis 1"):
        quantize(recurrent(1), bad, report=False, show_progress=False)


# -- (c) a fixed batch of 2 ---------------------------------------------------------------------
def test_fixed_batch_2_calibrates_to_the_batch_1_ranges(tmp_path):
    x = images(N, RNG_CALIB)
    one = calibrate(from_proto(cnn(1)), {"x": x}, show_progress=False)
    two = calibrate(from_proto(cnn(2)), {"x": x}, show_progress=False)
    any_ = calibrate(from_proto(cnn("N")), {"x": x}, show_progress=False, batch_size=5)
    assert two.meta["samples"] == N
    assert {k: (v.lo, v.hi) for k, v in two.tensors.items()} == {k: (v.lo, v.hi) for k, v in one.tensors.items()}
    assert {k: (v.lo, v.hi) for k, v in any_.tensors.items()} == {k: (v.lo, v.hi) for k, v in one.tensors.items()}


def test_input_shape_batch_2_compiles_and_runs_an_odd_count(tmp_path, capsys):
    model = save(cnn("N"), tmp_path / "cnn.onnx")
    np.savez(tmp_path / "calib.npz", x=images(N, RNG_CALIB))
    x = images(31, RNG_TEST)
    np.savez(tmp_path / "test.npz", x=x)
    run_cli(["compile", model, "--calib", str(tmp_path / "calib.npz"), "-o", str(tmp_path / "q"),
             "--input-shape", "x=2,3,8,8"], capsys)
    c = CompiledDir.load(str(tmp_path / "q"))
    for backend in ("reference", "ort-sim"):
        got = c.run({"x": x}, backend)["y"]
        pairs = [c.run({"x": x[i:i + 2]}, backend)["y"] for i in range(0, 30, 2)]
        last = c.run({"x": x[[30, 30]]}, backend)["y"][:1]  # the padding the run adds
        assert got.shape == (31, 5) and np.array_equal(got, np.concatenate(pairs + [last])), backend
    said = run_cli(["verify", str(tmp_path / "q"), "--inputs", str(tmp_path / "test.npz")], capsys)
    assert said.startswith("31 samples")


# -- (d) errors ---------------------------------------------------------------------------------
def fails(args: list[str], capsys) -> str:
    code = main(args)
    err = capsys.readouterr().err
    assert code == 1, err
    assert err.count("\n") == 1, err  # one line
    return err


def test_errors_say_what_is_wrong_in_one_line(tmp_path, capsys):
    model = save(recurrent(1), tmp_path / "rec.onnx")
    feeds = {"x": images(N, 0), "scale": np.float32(1), "state": states(N - 1, 0)}
    np.savez(tmp_path / "uneven.npz", **feeds)
    err = fails(["calibrate", model, "--calib", str(tmp_path / "uneven.npz"), "-o", str(tmp_path / "r.json"),
                 "--batch-axis", "state=1"], capsys)
    assert "different sample counts" in err and "'x' 32 (axis 0)" in err and "'state' 31 (axis 1)" in err
    err = fails(["calibrate", model, "--calib", str(tmp_path / "uneven.npz"), "-o", str(tmp_path / "r.json"),
                 "--batch-axis", "state=3"], capsys)
    assert "batch axis 3 of input 'state' is out of range" in err and "rank 3" in err
    err = fails(["calibrate", model, "--calib", str(tmp_path / "uneven.npz"), "-o", str(tmp_path / "r.json"),
                 "--batch-axis", "state=first"], capsys)
    assert "--batch-axis state=first" in err and "integer >= 0, or none" in err
    err = fails(["calibrate", model, "--calib", str(tmp_path / "uneven.npz"), "-o", str(tmp_path / "r.json"),
                 "--batch-axis", "nope=1"], capsys)
    assert "'nope', which is not a model input" in err
    # without the option, the state's axis 0 (2) is not the batch of x (1)
    err = fails(["calibrate", model, "--calib", str(tmp_path / "uneven.npz"), "-o", str(tmp_path / "r.json")], capsys)
    assert "batch dims disagree: 'x' 1 (axis 0), 'state' 2 (axis 0)" in err and "--batch-axis" in err

    _recurrent_data(tmp_path / "laid_out.npz", N, 0, layout=True)
    err = fails(["calibrate", model, "--calib", str(tmp_path / "laid_out.npz"), "-o", str(tmp_path / "r.json"),
                 "--batch-axis", "state=0"], capsys)
    assert "--batch-axis state=0" in err and "axis 1" in err

    two = save(cnn(2), tmp_path / "cnn2.onnx")
    np.savez(tmp_path / "odd.npz", x=images(31, 0))
    err = fails(["calibrate", two, "--calib", str(tmp_path / "odd.npz"), "-o", str(tmp_path / "r.json")], capsys)
    assert "fixed at 2; 1 calibration sample(s) are left over" in err


def test_run_errors_name_the_input(tmp_path, capsys):
    model = save(cnn(1), tmp_path / "cnn.onnx")
    np.savez(tmp_path / "calib.npz", x=images(8, 0))
    run_cli(["compile", model, "--calib", str(tmp_path / "calib.npz"), "-o", str(tmp_path / "q")], capsys)
    np.savez(tmp_path / "bad.npz", x=images(4, 0)[:, :2])
    err = fails(["run", str(tmp_path / "q"), "--inputs", str(tmp_path / "bad.npz"), "-o", str(tmp_path / "y.npz")],
                capsys)
    assert "input 'x' has shape [4, 2, 8, 8]" in err and "axis 1 must be 3" in err
    np.savez(tmp_path / "flat.npz", x=images(4, 0).reshape(4, -1))
    err = fails(["verify", str(tmp_path / "q"), "--inputs", str(tmp_path / "flat.npz")], capsys)
    assert "input 'x' has shape [4, 192] (rank 2)" in err


def test_config_batch_axes_round_trip_and_errors():
    from qgraph.quant.config import QuantConfig, QuantConfigError

    cfg = QuantConfig.from_json({"batch_axes": {"state": 1, "sr": None, "h": -1, "t": "none"}})
    assert cfg.batch_axes == {"state": 1, "sr": None, "h": None, "t": None}
    assert QuantConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(QuantConfigError, match="batch_axes: 'state': axis -2 is out of range"):
        QuantConfig.from_json({"batch_axes": {"state": -2}})
    with pytest.raises(QuantConfigError, match="batch_axes: expected a JSON object"):
        QuantConfig.from_json({"batch_axes": [1]})


# -- --eval on every layout -------------------------------------------------------------------------
def _headline(said: str) -> list[str]:
    """`qgraph verify`'s lines about quantized vs float (the numbers --eval must repeat)."""
    return [line for line in said.splitlines() if "quantized vs float" in line]


@pytest.mark.parametrize("layout", ["fixed batch 2", "rank-0 input and state on axis 1"])
def test_eval_numbers_equal_verify_on_every_layout(tmp_path, capsys, layout):
    if layout == "fixed batch 2":
        model = save(cnn(2), tmp_path / "m.onnx")
        np.savez(tmp_path / "calib.npz", x=images(N, RNG_CALIB))
        np.savez(tmp_path / "test.npz", x=images(N, RNG_TEST))
        extra = []
    else:
        model = save(recurrent(1), tmp_path / "m.onnx")
        _recurrent_data(tmp_path / "calib.npz", N, RNG_CALIB)
        _recurrent_data(tmp_path / "test.npz", N, RNG_TEST)
        extra = ["--batch-axis", "state=1"]
    out = tmp_path / "q"
    compiled = run_cli(["compile", model, "--calib", str(tmp_path / "calib.npz"), "-o", str(out), "--eval",
                        str(tmp_path / "test.npz"), "--report-samples", "5"] + extra, capsys)
    with open(out / "report.json") as f:
        summary = json.load(f)["summary"]
    assert summary["measured_on"] == f"on {N} held-out samples from test.npz"
    # whole runs of the model's batch: 5 samples take 3 runs of 2 (the last padded), counted as samples
    assert summary["report_samples"] == (6 if layout == "fixed batch 2" else 5)
    said = run_cli(["verify", str(out), "--inputs", str(tmp_path / "test.npz")], capsys)
    assert said.startswith(f"{N} samples")
    assert _headline(said)
    for line in _headline(said):  # the same numbers, to the digit, in compile's summary
        name, numbers = line.split(": quantized vs float: ")
        assert f"{name} {numbers}" in compiled, (line, compiled)


def test_nan_in_run_inputs_names_the_input_and_sample(tmp_path, capsys):
    model = save(recurrent(1), tmp_path / "rec.onnx")
    _recurrent_data(tmp_path / "calib.npz", N, RNG_CALIB)
    feeds = _recurrent_data(tmp_path / "test.npz", N, RNG_TEST)
    run_cli(["compile", model, "--calib", str(tmp_path / "calib.npz"), "-o", str(tmp_path / "q"),
             "--batch-axis", "state=1"], capsys)
    feeds["state"][1, 5, 3] = np.nan  # sample 5 of a state batched on axis 1
    np.savez(tmp_path / "nan.npz", **feeds)
    nan = str(tmp_path / "nan.npz")
    for args in (["run", str(tmp_path / "q"), "--inputs", nan, "-o", str(tmp_path / "y.npz"), "--backend", "ort"],
                 ["verify", str(tmp_path / "q"), "--inputs", nan]):
        assert f"--inputs {nan}: input 'state' sample 5 contains NaN" in fails(args, capsys)
    err = fails(["compile", model, "--calib", str(tmp_path / "calib.npz"), "-o", str(tmp_path / "q2"),
                 "--batch-axis", "state=1", "--eval", nan], capsys)
    assert f"eval data {nan}: input 'state' sample 5 contains NaN" in err
    c = CompiledDir.load(str(tmp_path / "q"))
    for backend in ("reference", "ort-sim"):  # the Python API names it too, not the Quantize node that met it
        with pytest.raises(QGraphError, match=f"backend '{backend}': input 'state' sample 5 contains NaN"):
            c.run(feeds, backend)
    assert np.isnan(c.run_float(feeds)["new_state"][:, 5]).any()  # the float model takes NaN as ONNX does
