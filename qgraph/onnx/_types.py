"""TypeProto <-> qgraph types."""

from __future__ import annotations

import onnx

from qgraph.ir.dtypes import DType
from qgraph.ir.types import (MapType, OptionalType, SequenceType, Shape, SparseTensorType,
                             TensorType, Type)


def _shape_from_proto(shape: onnx.TensorShapeProto) -> Shape:
    dims = []
    for d in shape.dim:
        which = d.WhichOneof("value")
        dims.append(d.dim_value if which == "dim_value" else d.dim_param if which == "dim_param" else None)
    return tuple(dims)


def type_from_proto(tp: onnx.TypeProto) -> Type | None:
    which = tp.WhichOneof("value")
    den = tp.denotation
    if which == "tensor_type":
        tt = tp.tensor_type
        return TensorType(DType(tt.elem_type), _shape_from_proto(tt.shape) if tt.HasField("shape") else None, den)
    if which == "sparse_tensor_type":
        tt = tp.sparse_tensor_type
        return SparseTensorType(DType(tt.elem_type), _shape_from_proto(tt.shape) if tt.HasField("shape") else None, den)
    if which == "sequence_type":
        st = tp.sequence_type
        return SequenceType(type_from_proto(st.elem_type) if st.HasField("elem_type") else None, den)
    if which == "optional_type":
        ot = tp.optional_type
        return OptionalType(type_from_proto(ot.elem_type) if ot.HasField("elem_type") else None, den)
    if which == "map_type":
        mt = tp.map_type
        return MapType(DType(mt.key_type), type_from_proto(mt.value_type) if mt.HasField("value_type") else None, den)
    return None


def _fill_shape(shape: Shape, sp: onnx.TensorShapeProto) -> None:
    for d in shape:
        dim = sp.dim.add()
        if isinstance(d, int):
            dim.dim_value = d
        elif isinstance(d, str):
            dim.dim_param = d


def fill_type_proto(t: Type, tp: onnx.TypeProto) -> None:
    if t.denotation:
        tp.denotation = t.denotation
    if isinstance(t, (TensorType, SparseTensorType)):
        tt = tp.tensor_type if isinstance(t, TensorType) else tp.sparse_tensor_type
        tt.elem_type = int(t.dtype)
        if t.shape is not None:
            tt.shape.SetInParent()
            _fill_shape(t.shape, tt.shape)
    elif isinstance(t, SequenceType):
        tp.sequence_type.SetInParent()
        if t.elem is not None:
            fill_type_proto(t.elem, tp.sequence_type.elem_type)
    elif isinstance(t, OptionalType):
        tp.optional_type.SetInParent()
        if t.elem is not None:
            fill_type_proto(t.elem, tp.optional_type.elem_type)
    elif isinstance(t, MapType):
        tp.map_type.key_type = int(t.key)
        if t.value is not None:
            fill_type_proto(t.value, tp.map_type.value_type)
    else:
        raise TypeError(f"cannot export type {t!r}")


def type_to_proto(t: Type) -> onnx.TypeProto:
    tp = onnx.TypeProto()
    fill_type_proto(t, tp)
    return tp
