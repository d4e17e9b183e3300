"""ONNX ModelProto -> qgraph IR.

The importer reads the protobuf directly (not through a graphsurgeon round trip) so
that nothing is lost: optional / sequence / map types, TYPE_PROTO attributes, doc
strings, metadata, model-local functions and per-value types all survive, and large
tensors stay undecoded until a pass reads them. ``qgraph.from_gs`` covers users of
onnx-graphsurgeon.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
from types import MappingProxyType
from typing import Iterable

import networkx as nx
import onnx
from google.protobuf.message import DecodeError

from qgraph.errors import ExternalDataError, InvalidModelError, ModelLoadError, QGraphError
from qgraph.ir.core import Attr, AttrType, Graph, Model, Node, Value
from qgraph.ir.dtypes import DType, bit_width
from qgraph.ir.ops import STANDARD_DOMAINS, OpId, normalize_domain
from qgraph.ir.tensor import ExternalRef, Tensor, safe_external_path
from qgraph.ir.types import TensorType
from qgraph.onnx._types import type_from_proto


def load(src: "str | os.PathLike | bytes | onnx.ModelProto", *, base_dir: str | None = None) -> Model:
    """Load an ONNX model from a path, serialized bytes or a ModelProto.

    External data is resolved relative to the model file (or ``base_dir``), refused if it
    points outside that folder, and read lazily.

    Raises:
        ModelLoadError: missing, unreadable, truncated or non-ONNX input.
        ExternalDataError: unsafe or missing external data.
        InvalidModelError: a cycle, an undefined value, an unknown op domain.
    """
    if isinstance(src, onnx.ModelProto):
        return from_proto(src, base_dir=base_dir)
    if isinstance(src, (bytes, bytearray)):
        return from_proto(_parse(bytes(src), "<bytes>"), base_dir=base_dir)
    path = os.fspath(src)
    if not os.path.exists(path):
        raise ModelLoadError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ModelLoadError(f"{path}: is a directory, expected an .onnx file")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ModelLoadError(f"{path}: cannot read: {e.strerror}") from e
    proto = _parse(data, path)
    return from_proto(proto, base_dir=base_dir if base_dir is not None else os.path.dirname(os.path.abspath(path)),
                      source=path)


def _parse(data: bytes, where: str) -> onnx.ModelProto:
    if not data:
        raise ModelLoadError(f"{where}: file is empty, expected an ONNX model")
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except DecodeError as e:
        raise ModelLoadError(f"{where}: not a readable ONNX model ({e}); the file is truncated, corrupt or not ONNX") from e
    if not proto.HasField("graph") or proto.ir_version <= 0:
        raise ModelLoadError(f"{where}: not an ONNX model (no graph or IR version in the file)")
    return proto


def from_proto(proto: onnx.ModelProto, *, base_dir: str | None = None, source: str = "<model>") -> Model:
    """Import a ModelProto (which is not modified)."""
    imp = _Importer(proto, base_dir, source)
    try:
        with _gc_paused():
            graph = imp.graph(proto.graph, outer=None)
    except (ValueError, TypeError, UnicodeError) as e:  # corrupt content protobuf still parsed
        raise InvalidModelError(f"{source}: malformed model ({type(e).__name__}: {e}); the file is corrupt") from e
    model = Model(graph, opset_imports={_text(o.domain): o.version for o in proto.opset_import},
                  ir_version=proto.ir_version, producer_name=_text(proto.producer_name),
                  producer_version=_text(proto.producer_version), domain=_text(proto.domain),
                  model_version=proto.model_version, doc_string=_text(proto.doc_string))
    model.metadata_props = {_text(p.key): _text(p.value) for p in proto.metadata_props}
    model.functions = list(proto.functions)
    model.training_info = list(proto.training_info)
    if hasattr(proto, "configuration"):
        model.configuration = list(proto.configuration)
    return model


@contextlib.contextmanager
def _gc_paused():
    """Pause the cyclic garbage collector while the IR is built.

    Import allocates ~10 GC-tracked objects per node, none of them garbage, and each full
    collection CPython triggers on the way walks every live object again: at 100k nodes that
    was half the load time and made load superlinear (see bench/bench_ir_scale.py).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


_DTYPE_CODES = frozenset(int(d) for d in DType)

# where a tensor without raw_data keeps its values, and how many entries one element takes;
# every other type of 8 to 16 bits keeps one element per int32_data entry
_DATA_FIELDS = {
    DType.FLOAT: ("float_data", 1), DType.COMPLEX64: ("float_data", 2), DType.DOUBLE: ("double_data", 1),
    DType.COMPLEX128: ("double_data", 2), DType.INT64: ("int64_data", 1), DType.INT32: ("int32_data", 1),
    DType.UINT32: ("uint64_data", 1), DType.UINT64: ("uint64_data", 1), DType.STRING: ("string_data", 1),
}


class _Scope:
    """Names visible in a graph: its own values, then the enclosing graphs'."""

    __slots__ = ("names", "outer")

    def __init__(self, outer: "_Scope | None"):
        self.names: dict[str, Value] = {}
        self.outer = outer

    def lookup(self, name: str) -> Value | None:
        s: _Scope | None = self
        while s is not None:
            v = s.names.get(name)
            if v is not None:
                return v
            s = s.outer
        return None


class _Importer:
    def __init__(self, proto: onnx.ModelProto, base_dir: str | None, source: str):
        self.base_dir = base_dir
        self.source = source
        self.domains = {normalize_domain(o.domain) for o in proto.opset_import}
        self.functions = {(normalize_domain(f.domain), f.name) for f in proto.functions}

    # -- tensors --------------------------------------------------------------------------
    def tensor(self, t: onnx.TensorProto, where: str) -> Tensor:
        _name(t.name)
        _name(t.doc_string)
        if t.data_type not in _DTYPE_CODES:
            raise InvalidModelError(f"{self.source}: {where} '{t.name}' has unknown element type code {t.data_type}; "
                                    "the file is corrupt or needs a newer onnx")
        if t.data_location != onnx.TensorProto.EXTERNAL:
            if t.HasField("raw_data"):
                if t.data_type == onnx.TensorProto.STRING:
                    raise InvalidModelError(f"{self.source}: {where} '{t.name}' is a STRING tensor with raw_data, which "
                                            "ONNX does not allow (strings go in string_data); the file is corrupt")
                self._check_bytes(t, len(t.raw_data), where)
            else:
                self._check_count(t, where)
            return Tensor.from_proto(t)
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")
        if self.base_dir is None:
            raise ExternalDataError(
                f"{where} '{t.name}' keeps its data in external file '{loc}', but the model was not "
                "loaded from a path; load it from its file or pass base_dir=")
        path = safe_external_path(self.base_dir, loc)
        if path is None:
            raise ExternalDataError(
                f"{self.source}: {where} '{t.name}' has external data location '{loc}', which is outside "
                f"the model's folder {self.base_dir}; refusing to read it (put the data file next to the model)")
        if not os.path.isfile(path):
            raise ExternalDataError(f"{self.source}: {where} '{t.name}': external data file '{loc}' not found in {self.base_dir}")
        offset = int(info.get("offset", 0))
        size = os.path.getsize(path)
        length = int(info["length"]) if "length" in info else size - offset
        if offset < 0 or length < 0 or offset + length > size:
            raise ExternalDataError(
                f"{self.source}: {where} '{t.name}': external data '{loc}' holds {size} bytes, "
                f"but the tensor wants bytes [{offset}, {offset + length}); the file is truncated")
        self._check_bytes(t, length, where)
        return Tensor.from_proto(t, ExternalRef(path, offset, length))

    def _check_bytes(self, t: onnx.TensorProto, got: int, where: str) -> None:
        """Raw / external data must hold exactly the bytes its dims and dtype need."""
        bits = bit_width(DType(t.data_type))
        if not bits:
            return
        want = (math.prod(t.dims) * bits + 7) // 8
        if got != want:
            raise InvalidModelError(
                f"{self.source}: {where} '{t.name}' has dims {list(t.dims)} of {DType(t.data_type).name} "
                f"({want} bytes) but holds {got} bytes; the file is corrupt")

    def _check_count(self, t: onnx.TensorProto, where: str) -> None:
        """A typed data field (``float_data``, ``int32_data``, ...) must hold one entry per element."""
        dtype = DType(t.data_type)
        field, per = _DATA_FIELDS.get(dtype, ("int32_data", 1))
        if field == "int32_data" and not 8 <= bit_width(dtype) <= 16 or dtype == DType.UNDEFINED:
            return  # sub-byte types pack several elements per entry; UNDEFINED has no data
        want, got = math.prod(t.dims) * per, len(getattr(t, field))
        if got != want:
            raise InvalidModelError(
                f"{self.source}: {where} '{t.name}' has dims {list(t.dims)} of {dtype.name}, {want} values in "
                f"{field}, but holds {got} there; the file is corrupt (or its data_type was changed)")

    # -- attributes -----------------------------------------------------------------------
    def attr(self, a: onnx.AttributeProto, scope: _Scope, node_name: str) -> Attr:
        t = AttrType(a.type)
        if t == AttrType.UNDEFINED:  # very old models leave type unset
            t = _infer_attr_type(a)
        where = f"attribute '{a.name}' of node '{node_name}'"
        if t == AttrType.FLOAT:
            v = a.f
        elif t == AttrType.INT:
            v = a.i
        elif t == AttrType.STRING:
            v = _decode(a.s)
        elif t == AttrType.TENSOR:
            v = self.tensor(a.t, where)
        elif t == AttrType.GRAPH:
            v = self.graph(a.g, outer=scope)
        elif t == AttrType.SPARSE_TENSOR:
            v = a.sparse_tensor
        elif t == AttrType.TYPE_PROTO:
            v = type_from_proto(a.tp)
        elif t == AttrType.FLOATS:
            v = tuple(a.floats)
        elif t == AttrType.INTS:
            v = tuple(a.ints)
        elif t == AttrType.STRINGS:
            v = tuple(_decode(s) for s in a.strings)
        elif t == AttrType.TENSORS:
            v = tuple(self.tensor(x, where) for x in a.tensors)
        elif t == AttrType.GRAPHS:
            v = tuple(self.graph(g, outer=scope) for g in a.graphs)
        elif t == AttrType.SPARSE_TENSORS:
            v = tuple(a.sparse_tensors)
        elif t == AttrType.TYPE_PROTOS:
            v = tuple(type_from_proto(x) for x in a.type_protos)
        else:
            raise InvalidModelError(f"{self.source}: {where} has unsupported type {a.type}")
        return Attr(t, v, _name(a.ref_attr_name), _text(a.doc_string))

    # -- graphs ---------------------------------------------------------------------------
    def graph(self, gp: onnx.GraphProto, outer: _Scope | None) -> Graph:
        g = Graph(_name(gp.name), doc_string=_text(gp.doc_string))
        g.metadata_props = {_text(p.key): _text(p.value) for p in getattr(gp, "metadata_props", ())}
        g.quantization_annotation = list(gp.quantization_annotation)
        g.sparse_initializers = list(gp.sparse_initializer)
        scope = _Scope(outer)
        names = scope.names
        init_by_name = {t.name: t for t in gp.initializer}

        for vi in gp.input:
            v = Value(_name(vi.name), self._type(vi) if vi.HasField("type") else None, doc_string=_text(vi.doc_string))
            if (outer is None and vi.name not in init_by_name and isinstance(v.type, TensorType)
                    and v.type.dtype == DType.UNDEFINED):  # fed data needs a dtype: calibration, ORT, the reference
                raise InvalidModelError(
                    f"{self.source}: graph input '{vi.name}' declares element type UNDEFINED (0); "
                    "set its elem_type to the type of the data it takes (e.g. 1 for FLOAT)")
            v.metadata_props = {_text(p.key): _text(p.value) for p in getattr(vi, "metadata_props", ())}
            t = init_by_name.get(vi.name)
            if t is not None:
                v.const_value = self.tensor(t, "initializer")
            g.inputs.append(v)
            names[vi.name] = v
        for t in gp.initializer:
            if t.name in names:
                v = names[t.name]
                if v.const_value is not None and v.is_initializer():
                    raise InvalidModelError(f"{self.source}: graph '{gp.name}' has two initializers named '{t.name}'")
                if v.const_value is None:
                    raise InvalidModelError(f"{self.source}: graph '{gp.name}': initializer '{t.name}' repeats an input name")
                g.register_initializer(v)
                continue
            tensor = self.tensor(t, "initializer")
            v = Value(_name(t.name), TensorType(tensor.dtype, tensor.shape), tensor)
            g.register_initializer(v)
            names[t.name] = v

        value_info = {vi.name: vi for vi in gp.value_info}
        for vi in gp.output:
            value_info[vi.name] = vi  # the output's declared type wins

        for np_ in self._ordered(gp, scope):
            try:
                self._node(np_, g, gp, scope, value_info)
            except QGraphError:
                raise
            except (ValueError, TypeError, UnicodeError, KeyError) as e:
                raise InvalidModelError(
                    f"{self.source}: node '{_text(np_.name) or '#' + _text(np_.op_type)}' in graph "
                    f"'{_text(gp.name)}' is malformed ({type(e).__name__}: {e}); the file is corrupt") from e

        for vi in gp.output:
            v = scope.lookup(vi.name)
            if v is None:
                raise InvalidModelError(f"{self.source}: graph '{gp.name}' output '{vi.name}' is not defined by any node, input or initializer")
            if vi.HasField("type") and v.type is None:
                v.type = self._type(vi)
            g.outputs.append(v)
        return g

    def _type(self, vi: onnx.ValueInfoProto):
        try:
            return type_from_proto(vi.type)
        except ValueError as e:
            raise InvalidModelError(f"{self.source}: value '{_text(vi.name)}' has a malformed type ({e})") from e

    def _node(self, np_: onnx.NodeProto, g: Graph, gp: onnx.GraphProto, scope: "_Scope",
              value_info: dict) -> None:
        names = scope.names
        op = OpId(_name(np_.op_type), _name(np_.domain))
        label = _name(np_.name) or f"#{np_.op_type}"
        self._check_op(op, label)
        inputs: list[Value | None] = []
        for name in np_.input:
            if not name:
                inputs.append(None)
                continue
            v = scope.lookup(name)
            if v is None and any(sp.values.name == name for sp in gp.sparse_initializer):
                raise InvalidModelError(
                    f"{self.source}: node '{label}' ({op}) reads '{name}', a sparse initializer of graph "
                    f"'{gp.name}'; qgraph reads dense initializers only: store it dense (e.g. onnx.numpy_helper."
                    "from_array of its values scattered into zeros) and rerun")
            if v is None:
                raise InvalidModelError(
                    f"{self.source}: node '{label}' ({op}) reads '{name}', which no node, input or "
                    f"initializer of graph '{gp.name}' (or an enclosing graph) defines")
            inputs.append(v)
        outputs: list[Value | None] = []
        for name in np_.output:
            if not name:
                outputs.append(None)
                continue
            if name in names:
                raise InvalidModelError(
                    f"{self.source}: value '{name}' is defined twice in graph '{gp.name}' "
                    f"(again by node '{label}'); ONNX values must have one producer")
            vi = value_info.get(name)
            v = Value(_name(name))
            if vi is not None:
                v.type = self._type(vi) if vi.HasField("type") else None
                v.doc_string = _text(vi.doc_string)
                v.metadata_props = {_text(p.key): _text(p.value) for p in getattr(vi, "metadata_props", ())}
            names[name] = v
            outputs.append(v)
        node = Node(op, inputs, outputs, name=_name(np_.name), doc_string=_text(np_.doc_string),
                    overload=_name(getattr(np_, "overload", "")))
        node.metadata_props = {_text(p.key): _text(p.value) for p in getattr(np_, "metadata_props", ())}
        if np_.attribute:
            attrs = {}
            for a in np_.attribute:
                if _name(a.name) in attrs:  # which one holds is undefined: the checker and ONNX Runtime refuse it
                    raise InvalidModelError(
                        f"{self.source}: node '{label}' ({op}) has attribute '{a.name}' more than once; "
                        "keep the one you mean")
                attrs[a.name] = self.attr(a, scope, label)
            node._attrs = MappingProxyType(attrs)
        g.append(node)

    def _check_op(self, op: OpId, label: str) -> None:
        if op.domain not in self.domains:
            raise InvalidModelError(
                f"{self.source}: node '{label}' uses op {op.op_type} from domain '{op.domain or 'ai.onnx'}', which the model "
                f"does not import (opset_import has {sorted(d or 'ai.onnx' for d in self.domains)}); "
                "add the domain to opset_import or fix the node's domain")
        if (op.domain in STANDARD_DOMAINS and (op.domain, op.op_type) not in self.functions
                and not onnx.defs.has(op.op_type, op.domain)):
            raise InvalidModelError(
                f"{self.source}: node '{label}' uses unknown op '{op.op_type}' in domain "
                f"'{op.domain or 'ai.onnx'}'; check the op name or its domain")

    def _ordered(self, gp: onnx.GraphProto, scope: _Scope) -> Iterable[onnx.NodeProto]:
        """The graph's nodes, topologically sorted if (and only if) the file's order is not."""
        produced: dict[str, int] = {}
        for i, n in enumerate(gp.node):
            for o in n.output:
                if o:
                    produced.setdefault(o, i)
        for i, n in enumerate(gp.node):
            if any(produced.get(x, -1) >= i for x in _reads(n)):
                break
        else:
            return gp.node
        dag = nx.DiGraph()
        dag.add_nodes_from(range(len(gp.node)))
        for i, n in enumerate(gp.node):
            for x in _reads(n):
                j = produced.get(x)
                if j is not None:
                    dag.add_edge(j, i)
        try:
            order = list(nx.lexicographical_topological_sort(dag))
        except nx.NetworkXUnfeasible:
            cycle = nx.find_cycle(dag)
            desc = " -> ".join(f"'{gp.node[a].name or '#' + str(a)}' ({gp.node[a].op_type})" for a, _ in cycle)
            first = gp.node[cycle[0][0]]
            raise InvalidModelError(
                f"{self.source}: graph '{gp.name}' has a cycle: {desc} -> '{first.name or '#' + str(cycle[0][0])}'; "
                "ONNX graphs must be acyclic") from None
        return [gp.node[i] for i in order]


def _reads(n: onnx.NodeProto) -> Iterable[str]:
    """Names a node reads: its inputs and the free names of its subgraphs."""
    yield from (x for x in n.input if x)
    for a in n.attribute:
        for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
            for inner in g.node:
                yield from _reads(inner)


def _name(s: "str | bytes") -> str:
    """A name field; protobuf hands back bytes when the file's string is not UTF-8."""
    if isinstance(s, bytes):
        raise ValueError(f"name {s[:40]!r} is not valid UTF-8")
    return s


def _text(s: "str | bytes") -> str:
    return s.decode("utf-8", "replace") if isinstance(s, bytes) else s


def _decode(b: bytes) -> str | bytes:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return b


def _infer_attr_type(a: onnx.AttributeProto) -> AttrType:
    for field, t in (("f", AttrType.FLOAT), ("i", AttrType.INT), ("s", AttrType.STRING), ("t", AttrType.TENSOR),
                     ("g", AttrType.GRAPH), ("floats", AttrType.FLOATS), ("ints", AttrType.INTS),
                     ("strings", AttrType.STRINGS), ("tensors", AttrType.TENSORS), ("graphs", AttrType.GRAPHS)):
        if field in ("floats", "ints", "strings", "tensors", "graphs"):
            if len(getattr(a, field)):
                return t
        elif a.HasField(field):
            return t
    return AttrType.UNDEFINED

