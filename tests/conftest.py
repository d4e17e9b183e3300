import os
import warnings

import onnx
import pytest
from hypothesis import settings


from qgraph.ir.text import parse_model, print_model
from qgraph.passes import registry
from qgraph.pm import PassContext, PassManager

# CI (.ci/run sets HYPOTHESIS_PROFILE=ci) draws the same examples on every run and keeps no
# example database: a red CI run is then reproducible by rerunning it, and a failure found
# on a developer's machine (random draws, replayed from .hypothesis/) cannot turn CI red
# later without a code change.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

LIGHT_DIR = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_pipeline(model, text, reg=None):
    """Run a pipeline with IR verification after every pass (always on in tests)."""
    return PassManager((reg or registry()).parse(text), PassContext(verify_each=True)).run(model)


def one_node_model(op, feeds, consts=(), attrs=None, out_dtype=None, name="n", n_out=1):
    """A one-node model (opsets "" 21, qgraph 1): ``feeds`` (name -> array) are graph inputs,
    ``consts`` initializers (None: an absent optional input); outputs ``y``, ``y1``, ...
    of ``out_dtype`` (default uint8)."""
    from qgraph.ir import DType, Graph, Model, Node, TensorType, Value
    from qgraph.ir.dtypes import from_numpy

    g = Graph("g")
    ins = []
    for k, a in feeds.items():
        v = Value(k, TensorType(from_numpy(a.dtype), tuple(a.shape)))
        g.inputs.append(v)
        ins.append(v)
    for k, a in dict(consts).items():
        ins.append(None if a is None else g.add_initializer(k, a))
    out_dtype = DType.UINT8 if out_dtype is None else out_dtype
    outs = [Value(f"y{i}" if i else "y", TensorType(out_dtype, None)) for i in range(n_out)]
    g.append(Node(op, ins, outs, attrs or {}, name=name))
    for o in outs:
        g.outputs.append(o)
    return Model(g, {"": 21, "qgraph": 1})


def graph_text(model) -> str:
    """The model's text without the opset header, for before / expected comparisons."""
    return print_model(model).split("\n", 1)[1]


def structure_text(model) -> str:
    """graph_text without node metadata (fusion marks): the dataflow structure only."""
    import re

    return re.sub(r' meta \{[^\n]*\}$', "", graph_text(model), flags=re.M)


def same_ir(model, expected_text: str, initializers=None) -> bool:
    return graph_text(model) == graph_text(parse_model(expected_text, initializers))


@pytest.fixture(autouse=True)
def _quiet_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield
