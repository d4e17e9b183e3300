"""Op identities, one table.

Passes compare ``node.op is ops.Conv``, never ``node.op_type == "Conv"``. An ``OpId`` is
interned per (domain, op_type), so identity comparison is exact. ``"ai.onnx"`` and ``""``
name the same (default) domain.

Rewrite patterns are built with ``qgraph.rewrite.pat`` (``pat.Relu(pat.Conv(x, w, b))``),
not by calling an ``OpId``: the IR imports nothing of the rewrite engine above it.
"""

from __future__ import annotations

from typing import Any

DEFAULT_DOMAIN = ""
ML_DOMAIN = "ai.onnx.ml"
QGRAPH_DOMAIN = "qgraph"

# Domains whose op sets qgraph knows: a node in one of these is checked against the onnx
# schema registry on import. Other domains are accepted when the model declares them.
STANDARD_DOMAINS = frozenset({DEFAULT_DOMAIN, ML_DOMAIN, "ai.onnx.preview.training"})


def normalize_domain(domain: str) -> str:
    return DEFAULT_DOMAIN if domain == "ai.onnx" else domain


class OpId:
    """The identity of an operator: (domain, op_type). Create with ``op()``; compare with ``is``."""

    __slots__ = ("domain", "op_type")
    _interned: dict[tuple[str, str], "OpId"] = {}

    def __new__(cls, op_type: str, domain: str = DEFAULT_DOMAIN) -> "OpId":
        key = (normalize_domain(domain), op_type)
        found = cls._interned.get(key)
        if found is None:
            found = super().__new__(cls)
            object.__setattr__(found, "domain", key[0])
            object.__setattr__(found, "op_type", op_type)
            cls._interned[key] = found
        return found

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("OpId is immutable")

    def __reduce__(self):
        return (OpId, (self.op_type, self.domain))

    def __str__(self) -> str:
        return self.op_type if not self.domain else f"{self.domain}::{self.op_type}"

    def __repr__(self) -> str:
        return f"OpId({self})"

    def __call__(self, *inputs: Any, **kwargs: Any):
        # An OpId used to build a rewrite pattern when called; say where that builder went.
        raise TypeError(f"OpId {self} is not callable: build a rewrite pattern with "
                        f"qgraph.rewrite.pat.{self.op_type}(...) or pat[op](...)")


def op(op_type: str, domain: str = DEFAULT_DOMAIN) -> OpId:
    """The interned OpId for ``op_type`` in ``domain``."""
    return OpId(op_type, domain)


def parse_op(text: str) -> OpId:
    """Parse the text form ``Conv`` or ``domain::Op``."""
    domain, sep, op_type = text.rpartition("::")
    return OpId(op_type, domain if sep else DEFAULT_DOMAIN)


# -- the ONNX ops qgraph's passes refer to by name ----------------------------------------------
Abs = op("Abs")
Add = op("Add")
AveragePool = op("AveragePool")
BatchNormalization = op("BatchNormalization")
Cast = op("Cast")
Clip = op("Clip")
Concat = op("Concat")
Constant = op("Constant")
ConstantOfShape = op("ConstantOfShape")
Conv = op("Conv")
ConvTranspose = op("ConvTranspose")
DequantizeLinear = op("DequantizeLinear")
Div = op("Div")
Dropout = op("Dropout")
Elu = op("Elu")
Equal = op("Equal")
Erf = op("Erf")
Exp = op("Exp")
Expand = op("Expand")
Flatten = op("Flatten")
Gather = op("Gather")
Gelu = op("Gelu")
Gemm = op("Gemm")
GlobalAveragePool = op("GlobalAveragePool")
GRU = op("GRU")
HardSigmoid = op("HardSigmoid")
HardSwish = op("HardSwish")
Identity = op("Identity")
If = op("If")
LayerNormalization = op("LayerNormalization")
LeakyRelu = op("LeakyRelu")
Loop = op("Loop")
LSTM = op("LSTM")
MatMul = op("MatMul")
Max = op("Max")
MaxPool = op("MaxPool")
Min = op("Min")
Mish = op("Mish")
Mul = op("Mul")
Neg = op("Neg")
Pad = op("Pad")
Pow = op("Pow")
PRelu = op("PRelu")
QuantizeLinear = op("QuantizeLinear")
Range = op("Range")
Reciprocal = op("Reciprocal")
ReduceMean = op("ReduceMean")
Relu = op("Relu")
Reshape = op("Reshape")
Resize = op("Resize")
RNN = op("RNN")
Scan = op("Scan")
Selu = op("Selu")
Shape = op("Shape")
Sigmoid = op("Sigmoid")
Size = op("Size")
Slice = op("Slice")
Softmax = op("Softmax")
Softplus = op("Softplus")
Split = op("Split")
Sqrt = op("Sqrt")
Squeeze = op("Squeeze")
Sub = op("Sub")
Sum = op("Sum")
Tanh = op("Tanh")
Tile = op("Tile")
Transpose = op("Transpose")
Unsqueeze = op("Unsqueeze")
Where = op("Where")


# -- qgraph-domain ops ---------------------------------------------------------------------------
# Ops qgraph's passes create where the model's opset has no standard equivalent. Each has the
# interface of the ONNX op of the same name and is written back as standard ONNX on export
# (the decomposition table in qgraph.onnx.decompose); a model holding one imports "qgraph": 1.

#: ``Y = (X - mean) / sqrt(var + epsilon) * Scale + B`` over axes ``[axis, rank)``, in X's
#: element type; ``Scale`` and ``B`` are optional and broadcast as in Mul / Add.
QGraphLayerNormalization = op("LayerNormalization", QGRAPH_DOMAIN)
#: ONNX Gelu-20 (``approximate`` = "none" or "tanh") for models whose opset predates it.
QGraphGelu = op("Gelu", QGRAPH_DOMAIN)
#: ONNX HardSwish-14, ``y = x * max(0, min(1, x / 6 + 1 / 2))``, for models whose opset predates it.
QGraphHardSwish = op("HardSwish", QGRAPH_DOMAIN)
