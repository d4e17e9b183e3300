"""--executor ray: the sensitivity probes on a local 2-worker Ray give the local executor's
damages bit for bit, hence its assignment (API and CLI); what travels to a worker pickles;
a missing or failing Ray is a QGraphError.

Ray is started once for the module (about 7 s here, and 5 s more for the workers' first
imports) and shut down after it; ``qgraph.quantize(executor="ray")`` joins that instance.
"""

import json
import os
import pickle
import sys
import types

import numpy as np
import pytest

import qgraph
from qgraph.cli.main import main
from qgraph.errors import QGraphError
from qgraph.precision import sensitivity as S
from qgraph.precision.executor import RayExecutor, make_executor
from tests.conftest import REPO

DIGITS = os.path.join(REPO, "golden", "models", "digits_cnn.onnx")
CALIB = os.path.join(REPO, "golden", "data", "digits_calib.npz")
FLOOR = "top1>=0.998"


def calib():
    with np.load(CALIB) as z:
        return {k: z[k] for k in z.files}


def quantize(executor):
    return qgraph.quantize(DIGITS, calib(), precision="auto", accuracy=FLOOR, report=False, executor=executor,
                           precision_options={"cache": False})


class _Stop(Exception):
    pass


class Capture:
    """An executor that keeps the sweep's inputs and runs nothing."""

    name = "capture"
    threads = 1

    def map(self, fn, shared, tasks, on_done):
        self.shared, self.tasks = shared, list(tasks)
        raise _Stop

    def close(self):
        pass


@pytest.fixture(scope="module")
def ray_session():
    pytest.importorskip("ray")
    ex = RayExecutor(workers=2)
    assert ex.started and ex.name == "ray (local, 2 CPUs)"
    yield ex
    ex.close()


@pytest.fixture(scope="module")
def local():
    return quantize(None).precision


# -- what travels to a worker ----------------------------------------------------------------------
def test_shared_and_tasks_pickle_and_the_model_is_imported_once_per_process():
    cap = Capture()
    with pytest.raises(_Stop):
        quantize(cap)
    shared, tasks = cap.shared, cap.tasks
    a, b = pickle.loads(pickle.dumps(shared)), pickle.loads(pickle.dumps(shared))
    assert a._model is None and a._digest == shared.digest()
    assert a.model() is b.model()  # one import for both copies, by digest
    for t in tasks:
        t2 = pickle.loads(pickle.dumps(t))
        assert (t2.unit, t2.format) == (t.unit, t.format) and S.task_key(t2) == S.task_key(t)
    w4 = next(t for t in tasks if t.format == "W4A8")
    assert S.evaluate(a, pickle.loads(pickle.dumps(w4))) == S.evaluate(shared, w4)


# -- Ray gives the local numbers -------------------------------------------------------------------
def test_ray_gives_the_local_damages_and_assignment(ray_session, local):
    r = quantize("ray").precision
    assert r.executor == "ray (local, 2 CPUs)" and r.probes == local.probes > 0
    assert r.damage == local.damage  # exact: one ORT thread per worker gives the same bits here
    assert r.assignment == local.assignment
    assert {"W4A8", "W8A8"} <= set(local.assignment.values())  # a mixed assignment, not a trivial one


def test_cli_compile_precision_auto_executor_ray(ray_session, local, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("QGRAPH_CACHE_DIR", str(tmp_path / "cache"))  # a cold cache: every probe runs on Ray
    out = tmp_path / "q"
    assert main(["compile", DIGITS, "--calib", CALIB, "-o", str(out), "--precision", "auto", "--accuracy", FLOOR,
                 "--executor", "ray"]) == 0
    assert f"{local.probes} probes (0 cached) on ray (local, 2 CPUs)" in capsys.readouterr().out
    rep = json.loads((out / "report.json").read_text())["precision"]
    assert rep["search"]["executor"] == "ray (local, 2 CPUs)"
    assert rep["per_layer"] and all(row["format"] == local.assignment[name] and row["damage"] == local.damage[name]
                                    for name, row in rep["per_layer"].items())


# -- errors ----------------------------------------------------------------------------------------
def test_missing_ray_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(QGraphError, match=r"pip install 'ray>=2.9'") as e:
        make_executor("ray")
    assert isinstance(e.value.__cause__, ImportError)


def test_ray_that_cannot_start_is_a_qgraph_error(monkeypatch):
    def init(**kw):
        raise RuntimeError("no room in /dev/shm")

    fake = types.SimpleNamespace(is_initialized=lambda: False, init=init)
    monkeypatch.setitem(sys.modules, "ray", fake)
    with pytest.raises(QGraphError, match="cannot start a local Ray: no room in /dev/shm") as e:
        make_executor("ray", workers=2)
    assert isinstance(e.value.__cause__, RuntimeError)
    with pytest.raises(QGraphError, match="cannot join the Ray cluster at '10.0.0.1:6379'"):
        make_executor("ray=10.0.0.1:6379")
    with pytest.raises(QGraphError, match="not to the cluster"):
        make_executor("ray=auto", workers=2)
