"""Element types, one table: ONNX data type codes, short names for the text form, numpy dtypes."""

from __future__ import annotations

import enum
import re

import numpy as np
import onnx
from onnx import helper

# Every element type the installed onnx knows, by its ONNX code (so new float8 / int4 /
# float4 types arrive with onnx itself, not with an edit here).
DType = enum.IntEnum("DType", dict(onnx.TensorProto.DataType.items()))
DType.__doc__ = "ONNX tensor element type (TensorProto.DataType)."

_SHORT = {
    "FLOAT": "f32", "DOUBLE": "f64", "FLOAT16": "f16", "BFLOAT16": "bf16",
    "INT8": "i8", "INT16": "i16", "INT32": "i32", "INT64": "i64",
    "UINT8": "u8", "UINT16": "u16", "UINT32": "u32", "UINT64": "u64",
    "BOOL": "bool", "STRING": "str", "COMPLEX64": "c64", "COMPLEX128": "c128",
    "INT4": "i4", "UINT4": "u4", "INT2": "i2", "UINT2": "u2", "UNDEFINED": "undef",
}

SHORT_NAME: dict[DType, str] = {d: _SHORT.get(d.name, d.name.lower()) for d in DType}
FROM_SHORT_NAME: dict[str, DType] = {v: k for k, v in SHORT_NAME.items()}


def bit_width(dtype: DType) -> int:
    """Bits per element (4 for int4/uint4/float4, 0 for strings and UNDEFINED)."""
    if dtype in (DType.STRING, DType.UNDEFINED):
        return 0
    sub_byte = re.match(r"U?INT([24])$|FLOAT([46])E", dtype.name)
    if sub_byte:
        return int(sub_byte.group(1) or sub_byte.group(2))
    return np.dtype(helper.tensor_dtype_to_np_dtype(int(dtype))).itemsize * 8


def to_numpy(dtype: DType) -> np.dtype:
    """The numpy dtype numpy_helper uses for ``dtype`` (ml_dtypes types for float8 / int4)."""
    return np.dtype(helper.tensor_dtype_to_np_dtype(int(dtype)))


def from_numpy(dtype: np.dtype) -> DType:
    """The ONNX element type of a numpy dtype (object arrays are strings)."""
    dtype = np.dtype(dtype)
    if dtype.kind in ("O", "U", "S"):
        return DType.STRING
    return DType(helper.np_dtype_to_tensor_dtype(dtype))
