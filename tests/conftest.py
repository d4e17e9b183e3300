import os
import warnings

import onnx
import pytest

from qgraph.ir.text import parse_model, print_model
from qgraph.passes import registry
from qgraph.pm import PassContext, PassManager

LIGHT_DIR = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_pipeline(model, text, reg=None):
    """Run a pipeline with IR verification after every pass (always on in tests)."""
    return PassManager((reg or registry()).parse(text), PassContext(verify_each=True)).run(model)


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
