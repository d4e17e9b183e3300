"""Constant tensors (initializers, Constant values, tensor attributes).

A ``Tensor`` is immutable. It is created from a numpy array, or lazily from the
``TensorProto`` or external-data file it was loaded from: the bytes are decoded only
when ``numpy()`` is first called, and a tensor that was never changed is written back
exactly as it was read (which is what keeps the ONNX round trip lossless for dtypes
numpy does not know natively, and keeps loading a large model cheap).
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from qgraph.ir.dtypes import SHORT_NAME, DType, bit_width, from_numpy, to_numpy


@dataclass(frozen=True, slots=True)
class ExternalRef:
    """Where an external tensor's bytes live: an already validated absolute path."""

    path: str
    offset: int
    length: int

    def read(self) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read(self.length)
        if len(data) != self.length:
            raise OSError(f"{self.path}: expected {self.length} bytes at offset {self.offset}, got {len(data)}")
        return data


class Tensor:
    """An immutable constant tensor with a dtype, a static shape and (lazy) data."""

    __slots__ = ("dtype", "shape", "name", "doc_string", "_array", "_proto", "_external", "_digest")

    def __init__(self, array: np.ndarray, dtype: DType | None = None, name: str = "", doc_string: str = ""):
        array = np.asarray(array)
        self.dtype = DType(dtype) if dtype is not None else from_numpy(array.dtype)
        self.shape: tuple[int, ...] = tuple(int(d) for d in array.shape)
        self.name = name
        self.doc_string = doc_string
        if self.dtype != DType.STRING and array.dtype != to_numpy(self.dtype):
            array = array.astype(to_numpy(self.dtype))
        array.flags.writeable = False
        self._array: np.ndarray | None = array
        self._proto: onnx.TensorProto | None = None
        self._external: ExternalRef | None = None
        self._digest: str | None = None

    @classmethod
    def from_proto(cls, proto: onnx.TensorProto, external: ExternalRef | None = None) -> "Tensor":
        """Wrap a TensorProto without decoding it. ``external`` is set for external-data tensors."""
        t = cls.__new__(cls)
        t.dtype = DType(proto.data_type)
        t.shape = tuple(int(d) for d in proto.dims)
        t.name = proto.name
        t.doc_string = proto.doc_string
        t._array = None
        t._proto = proto
        t._external = external
        t._digest = None
        return t

    # -- data -------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes the data takes in ONNX storage (sub-byte types packed)."""
        if self.dtype == DType.STRING:
            return sum(len(s) for s in self.numpy().ravel())
        return (self.size * bit_width(self.dtype) + 7) // 8

    @property
    def is_external(self) -> bool:
        return self._external is not None

    @property
    def is_loaded(self) -> bool:
        return self._array is not None

    def _source_proto(self) -> onnx.TensorProto:
        """A copy of the proto this tensor was read from, external bytes pulled inline."""
        proto = onnx.TensorProto()
        proto.CopyFrom(self._proto)
        if self._external is not None:
            del proto.external_data[:]
            proto.data_location = onnx.TensorProto.DEFAULT
            proto.raw_data = self._external.read()
        return proto

    def numpy(self) -> np.ndarray:
        """The data as a read-only numpy array (ml_dtypes types for float8 / int4 / bfloat16)."""
        if self._array is None:
            proto = self._proto if self._external is None else self._source_proto()
            array = numpy_helper.to_array(proto)
            array.flags.writeable = False
            self._array = array
        return self._array

    def to_proto(self, name: str | None = None) -> onnx.TensorProto:
        """A TensorProto with the data inline (the original bytes when the tensor is unchanged)."""
        if self._proto is not None:
            proto = self._source_proto()
        else:
            array = self.numpy()
            if self.dtype == DType.STRING:
                proto = numpy_helper.from_array(array.astype(object))
            else:
                proto = numpy_helper.from_array(array)
                proto.data_type = int(self.dtype)
            proto.doc_string = self.doc_string
        name = self.name if name is None else name
        if name:
            proto.name = name
        else:
            proto.ClearField("name")
        return proto

    def raw_bytes(self) -> bytes:
        """Little-endian packed bytes, as ONNX stores them in ``raw_data`` / external files."""
        if self._external is not None and self._array is None:
            return self._external.read()
        proto = self.to_proto()
        if proto.HasField("raw_data"):
            return proto.raw_data
        return numpy_helper.from_array(self.numpy()).raw_data

    def digest(self) -> str:
        """A short content hash (dtype, shape and data); computed once (tensors are immutable)."""
        if self._digest is None:
            h = hashlib.sha1(f"{int(self.dtype)}:{self.shape}".encode())
            if self.dtype == DType.STRING:
                h.update(repr(self.numpy().tolist()).encode())
            else:
                h.update(self.raw_bytes())
            self._digest = h.hexdigest()[:12]
        return self._digest

    def __repr__(self) -> str:
        dims = ",".join(str(d) for d in self.shape)
        return f"Tensor({SHORT_NAME[self.dtype]}[{dims}]{' external' if self.is_external else ''})"


def safe_external_path(base_dir: str, location: str) -> str | None:
    """The absolute path of ``location`` if it stays inside ``base_dir``, else None.

    Rejects absolute locations, ``..`` escapes and symlinks that point outside.
    """
    if not location or os.path.isabs(location) or location.startswith(("/", "\\")):
        return None
    base = os.path.realpath(base_dir)
    full = os.path.realpath(os.path.join(base, location))
    if os.path.commonpath([base, full]) != base:
        return None
    return full
