"""Value types: tensors (the common case) and the sequence / optional / map / sparse kinds ONNX has.

A shape is a tuple of dims; a dim is an ``int`` (static), a ``str`` (symbolic, e.g. ``"N"``)
or ``None`` (unknown). A shape of ``None`` means the rank is unknown.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from qgraph.ir.dtypes import SHORT_NAME, DType

Dim = Union[int, str, None]
Shape = tuple[Dim, ...]


def format_shape(shape: Shape | None) -> str:
    if shape is None:
        return "[*]"
    return "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"


@dataclass(frozen=True, slots=True)
class TensorType:
    dtype: DType
    shape: Shape | None = None
    denotation: str = ""

    def __str__(self) -> str:
        return SHORT_NAME[self.dtype] + format_shape(self.shape)


@dataclass(frozen=True, slots=True)
class SparseTensorType:
    dtype: DType
    shape: Shape | None = None
    denotation: str = ""

    def __str__(self) -> str:
        return f"sparse<{SHORT_NAME[self.dtype]}{format_shape(self.shape)}>"


@dataclass(frozen=True, slots=True)
class SequenceType:
    elem: "Type | None"
    denotation: str = ""

    def __str__(self) -> str:
        return f"seq<{self.elem if self.elem is not None else '?'}>"


@dataclass(frozen=True, slots=True)
class OptionalType:
    elem: "Type | None"
    denotation: str = ""

    def __str__(self) -> str:
        return f"opt<{self.elem if self.elem is not None else '?'}>"


@dataclass(frozen=True, slots=True)
class MapType:
    key: DType
    value: "Type | None"
    denotation: str = ""

    def __str__(self) -> str:
        return f"map<{SHORT_NAME[self.key]},{self.value}>"


Type = Union[TensorType, SparseTensorType, SequenceType, OptionalType, MapType]
