"""Lossless ONNX round trip: qgraph.load -> qgraph.save must not change what ONNX Runtime computes.

Covers the operator conformance suite, the light model zoo shipped in the onnx wheel, the
PP-OCRv4 models shipped with rapidocr, external data (lazy loading, saving elsewhere and
over itself, unsafe / missing / truncated data files) and the graphsurgeon bridges.
"""

from __future__ import annotations

import functools
import glob
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import qgraph
from qgraph.errors import ExternalDataError
from qgraph.ir.verify import verify
from qgraph.testing import conformance
from qgraph.testing import ort as qort

ONNX_DIR = os.path.dirname(onnx.__file__)
LIGHT_MODELS = sorted(glob.glob(os.path.join(ONNX_DIR, "backend", "test", "data", "light", "*.onnx")))


def _rapidocr_models() -> list[str]:
    import rapidocr_onnxruntime

    return sorted(glob.glob(os.path.join(os.path.dirname(rapidocr_onnxruntime.__file__), "models", "*.onnx")))


OCR_MODELS = _rapidocr_models()
# Fixed shapes for the OCR models' symbolic input dims (height / width must survive the
# network's downsampling, so random_feeds' 1 for every symbolic dim does not work).
OCR_SHAPES = {"_det_": (1, 3, 64, 64), "_rec_": (1, 3, 48, 320), "_cls_": (1, 3, 48, 192)}


_collect_cases = conformance.cases


@functools.cache
def _cases() -> list:
    return _collect_cases()


def _output_names(path_or_proto) -> list[str]:
    proto = path_or_proto if isinstance(path_or_proto, onnx.ModelProto) else onnx.load(path_or_proto, load_external_data=False)
    return [o.name for o in proto.graph.output]


def _assert_same_outputs(original, roundtripped, feeds: dict) -> None:
    ref = qort.run(original, feeds)
    got = qort.run(roundtripped, feeds)
    why = qort.compare_all(ref, got, _output_names(original))
    assert why is None, why


# -- conformance suite ----------------------------------------------------------------------

def test_conformance_suite_roundtrip(monkeypatch):
    monkeypatch.setattr(conformance, "cases", _cases)  # share the (slow) collection with test_gs_bridge
    counts = {"pass": 0, "fail": 0, "not-runnable": 0}
    failures = []
    for outcome in conformance.run_suite():
        counts[outcome.status] += 1
        if outcome.status == "fail":
            failures.append(f"{outcome.name}: {outcome.detail}")
    print(f"conformance round trip: {counts}")
    assert not failures, f"{len(failures)} conformance cases fail the round trip:\n" + "\n".join(failures[:20])
    assert counts["pass"] >= 1500, counts


# -- model zoo --------------------------------------------------------------------------------

def _roundtrip_and_compare(path: str, feeds: dict, tmp_path) -> None:
    model = qgraph.load(path)
    verify(model)
    out = tmp_path / os.path.basename(path)
    qgraph.save(model, out)
    verify(qgraph.load(out))
    _assert_same_outputs(path, str(out), feeds)


def test_model_sets_found():
    assert len(LIGHT_MODELS) >= 9, LIGHT_MODELS
    assert len(OCR_MODELS) == 3, OCR_MODELS


@pytest.mark.parametrize("path", LIGHT_MODELS, ids=lambda p: os.path.basename(p)[:-5])
def test_light_model_roundtrip(path, tmp_path):
    feeds = qort.random_feeds(onnx.load(path))
    _roundtrip_and_compare(path, feeds, tmp_path)


@pytest.mark.parametrize("path", OCR_MODELS, ids=lambda p: os.path.basename(p)[:-5])
def test_ppocr_model_roundtrip(path, tmp_path):
    proto = onnx.load(path)
    (shape,) = [s for key, s in OCR_SHAPES.items() if key in os.path.basename(path)]
    (inp,) = [vi.name for vi in proto.graph.input if vi.name not in {t.name for t in proto.graph.initializer}]
    feeds = {inp: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    _roundtrip_and_compare(path, feeds, tmp_path)


# -- external data ----------------------------------------------------------------------------

def _external_model(folder, location: str = "weights.bin") -> str:
    """A small Conv -> Relu -> MatMul -> Add -> Add(Constant) model, every tensor external."""
    rng = np.random.default_rng(0)
    arrays = {
        "W": rng.standard_normal((16, 3, 3, 3)).astype(np.float32),  # 1728 bytes
        "B": rng.standard_normal((16,)).astype(np.float32),  # 64 bytes
        "M": rng.standard_normal((6, 64)).astype(np.float32),  # 1536 bytes
        "C": rng.standard_normal((64,)).astype(np.float32),  # 256 bytes
    }
    inits = [numpy_helper.from_array(a, name) for name, a in arrays.items()]
    k = numpy_helper.from_array(rng.standard_normal((64,)).astype(np.float32), "K")
    nodes = [
        helper.make_node("Conv", ["x", "W", "B"], ["y"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["y"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "M"], ["mm"], name="matmul"),
        helper.make_node("Add", ["mm", "C"], ["a"], name="add"),
        helper.make_node("Constant", [], ["k"], value=k, name="const"),
        helper.make_node("Add", ["a", "k"], ["out"], name="add_const"),
    ]
    graph = helper.make_graph(nodes, "ext", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 16, 6, 64])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "model.onnx")
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=0, convert_attribute=True)
    return path


EXT_FEEDS = {"x": np.random.default_rng(1).standard_normal((1, 3, 6, 6)).astype(np.float32)}


def _locations(path: str) -> dict[str, str | None]:
    """Initializer name -> external data location (None when inline), as saved in ``path``."""
    proto = onnx.load(path, load_external_data=False)
    return {t.name: ({e.key: e.value for e in t.external_data}.get("location")
                     if t.data_location == TensorProto.EXTERNAL else None) for t in proto.graph.initializer}


def test_external_data_lazy_and_saved_elsewhere(tmp_path):
    src = _external_model(tmp_path / "src")
    assert set(_locations(src).values()) == {"weights.bin"}
    ref = qort.run(src, EXT_FEEDS)

    model = qgraph.load(src)
    verify(model)
    inits = model.graph.initializers
    assert set(inits) == {"W", "B", "M", "C"}
    for v in inits.values():
        assert v.const_value.is_external and not v.const_value.is_loaded, v.const_value
    const = next(n for n in model.graph if n.op_type == "Constant")
    assert const.attr("value").is_external and not const.attr("value").is_loaded

    w = inits["W"].const_value
    assert w.dtype == TensorProto.FLOAT and w.shape == (16, 3, 3, 3)
    assert not w.is_loaded  # dtype / shape do not decode
    expected = np.random.default_rng(0).standard_normal((16, 3, 3, 3)).astype(np.float32)
    np.testing.assert_array_equal(w.numpy(), expected)
    assert w.is_loaded
    assert not inits["M"].const_value.is_loaded  # decoding one tensor leaves the others alone

    dst = tmp_path / "dst" / "model.onnx"
    qgraph.save(model, dst)  # external data by default, since the model was loaded with it
    assert os.path.isfile(tmp_path / "dst" / "model.onnx.data")
    locs = _locations(str(dst))
    assert locs["W"] == "model.onnx.data" and locs["M"] == "model.onnx.data", locs
    assert locs["B"] is None and locs["C"] is None, locs  # under the 1024-byte default threshold
    verify(qgraph.load(dst))
    assert qort.compare_all(ref, qort.run(str(dst), EXT_FEEDS), ["out"]) is None

    # Every tensor external, the Constant's attribute tensor included.
    dst0 = tmp_path / "dst0" / "model.onnx"
    qgraph.save(model, dst0, size_threshold=0)
    assert set(_locations(str(dst0)).values()) == {"model.onnx.data"}
    assert qort.compare_all(ref, qort.run(str(dst0), EXT_FEEDS), ["out"]) is None

    # ... and inline when asked.
    inline = tmp_path / "inline" / "model.onnx"
    qgraph.save(model, inline, external_data=False)
    assert set(_locations(str(inline)).values()) == {None}
    assert os.listdir(tmp_path / "inline") == ["model.onnx"]
    assert qort.compare_all(ref, qort.run(str(inline), EXT_FEEDS), ["out"]) is None


@pytest.mark.parametrize("location", [None, "weights.bin"], ids=["default-location", "same-data-file"])
@pytest.mark.parametrize("size_threshold", [1024, 0])
def test_external_data_save_over_itself(tmp_path, location, size_threshold):
    src = _external_model(tmp_path / "m")
    ref = qort.run(src, EXT_FEEDS)
    model = qgraph.load(src)
    for _ in range(2):  # the second save reads back what the first one wrote
        qgraph.save(model, src, location=location, size_threshold=size_threshold)
        assert qort.compare_all(ref, qort.run(src, EXT_FEEDS), ["out"]) is None
        # The model in memory still holds the right bytes, though the data file it was
        # loaded from has been rewritten with another layout.
        assert qort.compare_all(ref, qort.run(qgraph.to_proto(model), EXT_FEEDS), ["out"]) is None
        again = tmp_path / "again" / "model.onnx"
        qgraph.save(model, again)
        assert qort.compare_all(ref, qort.run(str(again), EXT_FEEDS), ["out"]) is None
        assert qort.compare_all(ref, qort.run(src, EXT_FEEDS), ["out"]) is None
    assert not [f for f in os.listdir(tmp_path / "m") if f.endswith(".tmp")]
    assert qort.compare_all(ref, qort.run(qgraph.to_proto(qgraph.load(src)), EXT_FEEDS), ["out"]) is None


def _relocate(path: str, tensor: str, location: str) -> None:
    """Rewrite ``path`` so that initializer ``tensor`` reads its data from ``location``."""
    proto = onnx.load(path, load_external_data=False)
    (t,) = [t for t in proto.graph.initializer if t.name == tensor]
    for e in t.external_data:
        if e.key == "location":
            e.value = location
    with open(path, "wb") as f:
        f.write(proto.SerializeToString())


def _secret(tmp_path) -> str:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\x01" * 8192)  # big enough for any offset / length in the model
    return str(secret)


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_external_data_outside_model_folder(tmp_path, kind):
    path = _external_model(tmp_path / "m")
    secret = _secret(tmp_path)
    if kind == "dotdot":
        location = "../secret.bin"
    elif kind == "absolute":
        location = secret
    else:
        os.symlink(secret, tmp_path / "m" / "link.bin")
        location = "link.bin"
    _relocate(path, "M", location)
    with pytest.raises(ExternalDataError) as err:
        qgraph.load(path)
    assert "'M'" in str(err.value), str(err.value)
    assert "outside" in str(err.value)


def test_external_data_missing_file(tmp_path):
    path = _external_model(tmp_path / "m")
    _relocate(path, "M", "nothere.bin")
    with pytest.raises(ExternalDataError) as err:
        qgraph.load(path)
    assert "'M'" in str(err.value) and "nothere.bin" in str(err.value), str(err.value)

    path = _external_model(tmp_path / "n")
    os.remove(tmp_path / "n" / "weights.bin")
    with pytest.raises(ExternalDataError) as err:
        qgraph.load(path)
    assert "weights.bin" in str(err.value) and "not found" in str(err.value), str(err.value)


def test_external_data_truncated_file(tmp_path):
    path = _external_model(tmp_path / "m")
    offsets = {t.name: {e.key: int(e.value) for e in t.external_data if e.key != "location"}
               for t in onnx.load(path, load_external_data=False).graph.initializer}
    cut = offsets["M"]["offset"] + offsets["M"]["length"] // 2  # W and B stay whole, M is cut
    data = (tmp_path / "m" / "weights.bin").read_bytes()
    (tmp_path / "m" / "weights.bin").write_bytes(data[:cut])
    with pytest.raises(ExternalDataError) as err:
        qgraph.load(path)
    assert "'M'" in str(err.value) and "truncated" in str(err.value), str(err.value)


def test_external_data_needs_a_folder(tmp_path):
    proto = onnx.load(_external_model(tmp_path / "m"), load_external_data=False)
    with pytest.raises(ExternalDataError) as err:
        qgraph.load(proto.SerializeToString())
    assert "'W'" in str(err.value), str(err.value)
    # With base_dir the same bytes load, and read the data lazily from that folder.
    model = qgraph.load(proto.SerializeToString(), base_dir=str(tmp_path / "m"))
    w = model.graph.initializers["W"].const_value
    assert w.is_external and not w.is_loaded
    assert qort.compare_all(qort.run(str(tmp_path / "m" / "model.onnx"), EXT_FEEDS),
                            qort.run(qgraph.to_proto(model), EXT_FEEDS), ["out"]) is None


# -- graphsurgeon bridges ---------------------------------------------------------------------

def _through_gs(model: "onnx.ModelProto | str") -> onnx.ModelProto:
    return qgraph.to_proto(qgraph.from_gs(qgraph.to_gs(qgraph.load(model))))


def test_gs_bridge_squeezenet():
    (path,) = [p for p in LIGHT_MODELS if os.path.basename(p) == "light_squeezenet.onnx"]
    model = qgraph.from_gs(qgraph.to_gs(qgraph.load(path)))
    verify(model)
    _assert_same_outputs(path, qgraph.to_proto(model), qort.random_feeds(onnx.load(path)))


@pytest.mark.parametrize("name", ["test_conv_with_strides_padding", "test_loop11"])
def test_gs_bridge_conformance_case(name):
    (case,) = [c for c in _cases() if c.name == name]
    outcome = conformance.check_case(case, _through_gs)
    assert outcome.status == "pass", outcome
