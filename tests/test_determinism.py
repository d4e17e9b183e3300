"""``qgraph compile`` twice gives byte-identical folders.

Each compile runs in its own interpreter with a different ``PYTHONHASHSEED``, so that an
output which follows set or dict-of-str iteration order, a timestamp, an absolute path, the
output folder's name or a per-process id shows up as a difference here.
"""

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


def _compile(model: str, calib: str, out: str, hash_seed: str, cwd: str) -> None:
    env = dict(os.environ, PYTHONHASHSEED=hash_seed)
    r = subprocess.run([sys.executable, "-m", "qgraph.cli.main", "compile", model, "--calib", calib, "-o", out],
                       capture_output=True, text=True, env=env, cwd=cwd, timeout=300)
    assert r.returncode == 0, r.stderr


def _files(root: str) -> dict[str, bytes]:
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            p = os.path.join(d, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = f.read()
    return out


@pytest.mark.parametrize("model,calib", [("digits_cnn", "digits_calib"),
                                         ("op_fallback", "op_fallback_calib")])  # lookups and a float op
def test_compile_twice_is_byte_identical(tmp_path, model, calib):
    # A: repository-relative paths from the repository; B: absolute paths from elsewhere
    _compile(f"golden/models/{model}.onnx", f"golden/data/{calib}.npz", str(tmp_path / "A"), "0", REPO)
    _compile(os.path.join(REPO, "golden", "models", f"{model}.onnx"), os.path.join(REPO, "golden", "data", f"{calib}.npz"),
             str(tmp_path / "B"), "12345", str(tmp_path))
    a, b = _files(str(tmp_path / "A")), _files(str(tmp_path / "B"))
    assert sorted(a) == sorted(b)
    assert {"model.float.onnx", "model.qdq.onnx", "model.qgraph.onnx", "report.json"} <= set(a)
    differ = [name for name in sorted(a) if a[name] != b[name]]
    assert not differ, f"files differ between two compiles: {differ}"
