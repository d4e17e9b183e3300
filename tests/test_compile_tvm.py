"""End to end with TVM: ``qgraph compile --target cpu / aarch64``, ``run --backend tvm``, ``verify``.

The golden digits CNN compiled for this CPU at batch size 8 runs 20 test digits (two full
batches and a padded one) bit for bit like the integer reference; ``verify`` reports the
TVM distance (0 LSB); an aarch64 build is exported without running; a folder without a
build says how to get one.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from qgraph.cli.main import main
from tests.conftest import REPO

pytest.importorskip("tvm")

DIGITS = os.path.join(REPO, "golden", "models", "digits_cnn.onnx")
CALIB = os.path.join(REPO, "golden", "data", "digits_calib.npz")
TEST = os.path.join(REPO, "golden", "data", "digits_test.npz")


@pytest.fixture(scope="module")
def inputs_20(tmp_path_factory):
    path = tmp_path_factory.mktemp("x") / "x20.npz"
    with np.load(TEST) as z:
        np.savez(path, input=z["input"][:20])
    return str(path)


@pytest.fixture(scope="module")
def cpu_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("cpu") / "digits"
    assert main(["compile", DIGITS, "--calib", CALIB, "-o", str(out), "--target", "cpu", "--batch-size", "8"]) == 0
    return out


def test_compile_cpu_writes_build(cpu_build, capsys):
    meta = json.loads((cpu_build / "tvm" / "model.json").read_text())
    assert (cpu_build / "tvm" / "model.so").exists() and (cpu_build / "model.qdq.onnx").exists()
    assert meta["target"] == "cpu" and meta["inputs"][0]["shape"] == [8, 1, 8, 8]


def test_run_tvm_equals_reference(cpu_build, inputs_20, tmp_path, capsys):
    y_tvm, y_ref = tmp_path / "tvm.npz", tmp_path / "ref.npz"
    assert main(["run", str(cpu_build), "--inputs", inputs_20, "-o", str(y_tvm), "--backend", "tvm"]) == 0
    said = capsys.readouterr().out
    assert "20 samples in 3 runs" in said and "padded with 4" in said
    assert main(["run", str(cpu_build), "--inputs", inputs_20, "-o", str(y_ref), "--backend", "reference"]) == 0
    with np.load(y_tvm) as t, np.load(y_ref) as r:
        assert t["logits"].shape == (20, 10)
        assert t["logits"].dtype == r["logits"].dtype
        assert np.array_equal(t["logits"], r["logits"])


def test_verify_reports_tvm(cpu_build, inputs_20, capsys):
    assert main(["verify", str(cpu_build), "--inputs", inputs_20]) == 0
    said = capsys.readouterr().out
    assert "reference vs TVM cpu: max 0 LSB, 100.00% exact" in said, said


def test_aarch64_exports_without_running(tmp_path, inputs_20, capsys):
    out = tmp_path / "arm"
    assert main(["compile", DIGITS, "--calib", CALIB, "-o", str(out), "--target", "aarch64"]) == 0
    assert "cross compiled" in capsys.readouterr().out
    meta = json.loads((out / "tvm" / "model.json").read_text())
    assert meta["target"] == "aarch64" and meta["tvm_target"]["mtriple"].startswith("aarch64")
    assert (out / "tvm" / meta["library"]).stat().st_size > 0
    assert main(["run", str(out), "--inputs", inputs_20, "-o", str(tmp_path / "y.npz"), "--backend", "tvm"]) == 1
    assert "target 'aarch64'" in capsys.readouterr().err


def test_missing_build_says_recompile(tmp_path, inputs_20, capsys):
    out = tmp_path / "qdq"
    assert main(["compile", DIGITS, "--calib", CALIB, "-o", str(out)]) == 0
    assert main(["run", str(out), "--inputs", inputs_20, "-o", str(tmp_path / "y.npz"), "--backend", "tvm"]) == 1
    err = capsys.readouterr().err
    assert "no TVM build" in err and "--target cpu" in err


def test_bad_batch_size_is_refused_before_work(tmp_path, capsys):
    assert main(["compile", DIGITS, "--calib", CALIB, "-o", str(tmp_path / "o"), "--target", "cpu",
                 "--batch-size", "0"]) == 1
    assert "--batch-size 0" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_python_api_build_run_save(tmp_path):
    import qgraph.api

    q = qgraph.api.quantize(DIGITS, CALIB, report=False)
    with pytest.raises(qgraph.api.QGraphError, match="no TVM build"):
        q.run({"input": np.zeros((1, 1, 8, 8), np.float32)}, backend="tvm")
    q.build(target="cpu", batch_size=4)
    with np.load(TEST) as z:
        x = z["input"][:6]
    assert np.array_equal(q.run({"input": x}, backend="tvm")["logits"], q.run({"input": x})["logits"])
    q.save(str(tmp_path / "q"))
    loaded = qgraph.api.CompiledDir.load(str(tmp_path / "q"))
    assert loaded.has_build
    assert np.array_equal(loaded.run({"input": x}, "tvm")["logits"], q.run({"input": x})["logits"])
    q.compiled = None  # saving without a build removes the stale one
    q.save(str(tmp_path / "q"))
    assert not os.path.exists(tmp_path / "q" / "tvm")


def test_readme_tvm_command_runs(monkeypatch, capsys):
    import re
    import shlex

    monkeypatch.chdir(REPO)
    readme = open(os.path.join(REPO, "README.md")).read()
    lines = [line for block in re.findall(r"```sh\n(.*?)```", readme, re.S) for line in block.splitlines()
             if line.startswith("qgraph compile golden/") and "--target cpu" in line]
    assert len(lines) == 1
    assert main(shlex.split(lines[0])[1:]) == 0
    assert "TVM cpu" in capsys.readouterr().out


def test_compile_names_the_conv_forms(tmp_path, inputs_20, capsys):
    """With 7-bit weights the digits convs run the exact u8 x s8 kernel (on a VNNI CPU: the
    VPDPBUSD one, which every 8-bit conv runs), and compile says so (with 8-bit weights it names
    the int16 form and how to reach the faster one); verify still finds the build bit-exact
    with the reference."""
    from qgraph.tvm import x86
    from qgraph.tvm.kernel_packages import kernel_package

    config = tmp_path / "rr.json"
    config.write_text('{"reduce_range": true}')
    out = tmp_path / "rr"
    assert main(["compile", DIGITS, "--calib", CALIB, "-o", str(out), "--target", "cpu", "--batch-size", "8",
                 "--config", str(config)]) == 0
    said = capsys.readouterr().out
    u8 = "qdirect_conv_vnni" if isinstance(kernel_package(None), x86.VnniPackage) else "qdirect_conv_ubsw"
    assert f"{u8} x3" in said and "exact int16 pairs" not in said, said  # all three convs
    assert main(["verify", str(out), "--inputs", inputs_20]) == 0
    assert "reference vs TVM cpu: max 0 LSB, 100.00% exact" in capsys.readouterr().out


def test_compile_checks_the_build_against_the_reference(tmp_path, capsys, monkeypatch):
    """``compile --target cpu`` runs the build and the reference on calibration samples: it says
    they agree, and refuses a build whose integers differ (a kernel that computes something
    else on this CPU), naming the output."""
    out = tmp_path / "digits"
    assert main(["compile", DIGITS, "--calib", CALIB, "-o", str(out), "--target", "cpu", "--batch-size", "8"]) == 0
    assert "TVM build vs reference on 2 calibration sample(s): bit-exact" in capsys.readouterr().out

    from qgraph.api import QuantizedModel

    real = QuantizedModel.run

    def off_by_one(self, feeds, backend="reference"):
        outs = real(self, feeds, backend)
        return {k: v + np.float32(1.0) for k, v in outs.items()} if backend == "tvm" else outs

    monkeypatch.setattr(QuantizedModel, "run", off_by_one)
    assert main(["compile", DIGITS, "--calib", CALIB, "-o", str(tmp_path / "bad"), "--target", "cpu",
                 "--batch-size", "8"]) == 1
    err = capsys.readouterr().err
    assert "differs from the reference interpreter" in err and "logits (" in err and "kernel bug" in err
