"""qgraph IR -> ONNX ModelProto / file."""

from __future__ import annotations

import os
from typing import Callable

import onnx

from qgraph.errors import QGraphError
from qgraph.ir.core import Attr, AttrType, Graph, Model, Node, Value
from qgraph.ir.ops import QGRAPH_DOMAIN
from qgraph.ir.tensor import ExternalRef, Tensor
from qgraph.onnx._types import fill_type_proto, type_to_proto
from qgraph.onnx.decompose import decompose, uses_domain

# Protobuf refuses to serialize messages over 2 GiB; past this much tensor data, save
# writes external data even when the caller did not ask for it.
_PROTO_LIMIT = 1_800_000_000


def to_proto(model: Model, *, tensor_hook: Callable[[Tensor, onnx.TensorProto], None] | None = None,
             keep_data: Callable[[Tensor], bool] | None = None, decompose: bool = True) -> onnx.ModelProto:
    """Export ``model`` to a ModelProto. Values without a name get a fresh unique one.

    ``tensor_hook`` sees every initializer / tensor attribute proto (save uses it to move
    data to an external file). ``keep_data``, when given, decides per tensor whether its
    bytes are written; the others get dims and dtype only, marked as external data with
    no file (for analyses such as shape inference that need no weights).

    qgraph-domain ops listed in ``qgraph.onnx.decompose.DECOMPOSITIONS`` are written as the
    standard ONNX nodes they stand for (``model`` itself is not changed); the "qgraph"
    opset import is then dropped if no qgraph-domain node is left. ``decompose=False``
    writes them as they are (a lossless copy that only qgraph reads back).
    """
    mp = onnx.ModelProto()
    mp.ir_version = model.ir_version
    for domain, version in model.opset_imports.items():
        o = mp.opset_import.add()
        o.domain, o.version = domain, version
    mp.producer_name = model.producer_name
    mp.producer_version = model.producer_version
    mp.domain = model.domain
    mp.model_version = model.model_version
    mp.doc_string = model.doc_string
    for k, v in model.metadata_props.items():
        p = mp.metadata_props.add()
        p.key, p.value = k, v
    mp.functions.extend(model.functions)
    mp.training_info.extend(model.training_info)
    if model.configuration:
        mp.configuration.extend(model.configuration)
    exporter = _Exporter(tensor_hook, keep_data, opset=model.opset(""), decompose=decompose)
    exporter.graph(model.graph, mp.graph)
    if exporter.decomposed and not uses_domain(mp, QGRAPH_DOMAIN):
        kept = [o for o in mp.opset_import if o.domain != QGRAPH_DOMAIN]
        del mp.opset_import[:]
        mp.opset_import.extend(kept)
    return mp


def save(model: Model, path: "str | os.PathLike", *, external_data: bool | None = None,
         size_threshold: int = 1024, location: str | None = None) -> None:
    """Write ``model`` to ``path``.

    Args:
        external_data: store tensors of at least ``size_threshold`` bytes in one file next
            to the model. Default: when the loaded model had external data, or when the
            tensors would exceed protobuf's 2 GiB limit.
        location: the data file's name (default ``<model file name>.data``).
    """
    path = os.fspath(path)
    tensors = [v.const_value for g in model.graph.all_graphs() for v in g.initializers.values()]
    if external_data is None:
        external_data = any(t.is_external for t in tensors) or sum(t.nbytes for t in tensors) > _PROTO_LIMIT
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    if not external_data:
        data = to_proto(model).SerializeToString()
        with open(path, "wb") as f:
            f.write(data)
        return
    location = location or os.path.basename(path) + ".data"
    if os.path.isabs(location) or os.path.dirname(location):
        raise QGraphError(f"external data location '{location}' must be a plain file name next to the model")
    data_path = os.path.join(folder, location)
    tmp_path = data_path + ".tmp"  # the model may be reading its tensors from data_path
    placed: dict[int, tuple[Tensor, int, int] | tuple[Tensor, None, None]] = {}  # where each tensor went
    with open(tmp_path, "wb") as data_file:
        def hook(tensor: Tensor, proto: onnx.TensorProto) -> None:
            if tensor.nbytes < size_threshold or tensor.dtype == onnx.TensorProto.STRING:
                placed.setdefault(id(tensor), (tensor, None, None))
                return
            raw = tensor.raw_bytes()
            offset = data_file.tell()
            pad = (-offset) % 64
            data_file.write(b"\0" * pad)
            offset += pad
            data_file.write(raw)
            placed[id(tensor)] = (tensor, offset, len(raw))
            proto.ClearField("raw_data")
            for field in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
                proto.ClearField(field)
            proto.data_location = onnx.TensorProto.EXTERNAL
            del proto.external_data[:]
            for k, v in (("location", location), ("offset", str(offset)), ("length", str(len(raw)))):
                e = proto.external_data.add()
                e.key, e.value = k, v

        mp = to_proto(model, tensor_hook=hook)
    # Tensors that read their bytes from the file about to be replaced (they do so on every
    # to_proto, not only until numpy()) are re-pointed at their bytes in the new file, or,
    # when they were written inline, keep their bytes in memory.
    real = os.path.realpath(data_path)
    moved = []
    for t, offset, length in placed.values():
        if t.is_external and os.path.realpath(t._external.path) == real:
            if offset is None:
                t._proto, t._external = t._source_proto(), None
            else:
                moved.append((t, offset, length))
    os.replace(tmp_path, data_path)
    for t, offset, length in moved:
        t._external = ExternalRef(real, offset, length)
    with open(path, "wb") as f:
        f.write(mp.SerializeToString())


class _Exporter:
    def __init__(self, tensor_hook=None, keep_data=None, opset: int | None = None, decompose: bool = True):
        self.tensor_hook = tensor_hook
        self.decompose = decompose
        self.keep_data = keep_data
        self.opset = opset  # the default-domain opset decompositions are written for
        self.decomposed = 0  # qgraph-domain nodes written as standard ONNX
        self._root: Graph | None = None
        self._taken: set[str] | None = None  # value names in use, for decompositions

    def tensor(self, t: Tensor, proto: onnx.TensorProto, name: str | None = None) -> None:
        if self.keep_data is not None and not self.keep_data(t):
            proto.dims.extend(t.shape)
            proto.data_type = int(t.dtype)
            proto.name = t.name if name is None else name
            proto.data_location = onnx.TensorProto.EXTERNAL
            e = proto.external_data.add()
            e.key, e.value = "location", "qgraph-data-omitted"
            return
        proto.CopyFrom(t.to_proto(name))
        if self.tensor_hook is not None:
            self.tensor_hook(t, proto)

    def value_info(self, v: Value, vi: onnx.ValueInfoProto) -> None:
        vi.name = v.name
        if v.type is not None:
            fill_type_proto(v.type, vi.type)
        if v.doc_string:
            vi.doc_string = v.doc_string
        for k, val in v.metadata_props.items():
            p = vi.metadata_props.add()
            p.key, p.value = k, val

    def attr(self, name: str, a: Attr, ap: onnx.AttributeProto) -> None:
        ap.name = name
        ap.type = int(a.type)
        if a.ref_attr_name:
            ap.ref_attr_name = a.ref_attr_name
        if a.doc_string:
            ap.doc_string = a.doc_string
        t, v = a.type, a.value
        if a.ref_attr_name and v is None:
            return
        if t == AttrType.FLOAT:
            ap.f = v
        elif t == AttrType.INT:
            ap.i = v
        elif t == AttrType.STRING:
            ap.s = _encode(v)
        elif t == AttrType.TENSOR:
            self.tensor(v, ap.t, v.name)
        elif t == AttrType.GRAPH:
            self.graph(v, ap.g)
        elif t == AttrType.SPARSE_TENSOR:
            ap.sparse_tensor.CopyFrom(v)
        elif t == AttrType.TYPE_PROTO:
            ap.tp.CopyFrom(type_to_proto(v))
        elif t == AttrType.FLOATS:
            ap.floats.extend(v)
        elif t == AttrType.INTS:
            ap.ints.extend(v)
        elif t == AttrType.STRINGS:
            ap.strings.extend(_encode(s) for s in v)
        elif t == AttrType.TENSORS:
            for x in v:
                self.tensor(x, ap.tensors.add(), x.name)
        elif t == AttrType.GRAPHS:
            for x in v:
                self.graph(x, ap.graphs.add())
        elif t == AttrType.SPARSE_TENSORS:
            ap.sparse_tensors.extend(v)
        elif t == AttrType.TYPE_PROTOS:
            ap.type_protos.extend(type_to_proto(x) for x in v)
        else:
            raise QGraphError(f"cannot export attribute '{name}' of type {t!r}")

    def graph(self, g: Graph, gp: onnx.GraphProto) -> None:
        if self._root is None:
            self._root = g.root
        gp.name = g.name
        if g.doc_string:
            gp.doc_string = g.doc_string
        for k, val in g.metadata_props.items():
            p = gp.metadata_props.add()
            p.key, p.value = k, val
        for v in g.values():
            if not v.name:
                v.name = g.unique_name("v")
        for v in g.inputs:
            self.value_info(v, gp.input.add())
        for name, v in g.initializers.items():
            self.tensor(v.const_value, gp.initializer.add(), name)
        gp.sparse_initializer.extend(g.sparse_initializers)
        outputs = {id(v) for v in g.outputs}
        for n in g:
            standard = decompose(n, self.opset, self.fresh_name) if n.op.domain and self.decompose else None
            if standard is not None:
                gp.node.extend(standard)
                self.decomposed += 1
            else:
                self.node(n, gp.node.add())
            for o in n.outputs:
                if o is not None and o.type is not None and id(o) not in outputs:
                    self.value_info(o, gp.value_info.add())
        for v in g.outputs:
            self.value_info(v, gp.output.add())
        gp.quantization_annotation.extend(g.quantization_annotation)

    def node(self, n: Node, np_: onnx.NodeProto) -> None:
        np_.op_type = n.op.op_type
        if n.op.domain:
            np_.domain = n.op.domain
        if n.name:
            np_.name = n.name
        np_.input.extend(v.name if v is not None else "" for v in n.inputs)
        np_.output.extend(v.name if v is not None else "" for v in n.outputs)
        for name, a in n.attrs.items():
            self.attr(name, a, np_.attribute.add())
        if n.doc_string:
            np_.doc_string = n.doc_string
        if n.overload:
            np_.overload = n.overload
        for k, val in n.metadata_props.items():
            p = np_.metadata_props.add()
            p.key, p.value = k, val

    def fresh_name(self, hint: str) -> str:
        """A value name used nowhere in the model (nor by earlier decompositions).

        Kept apart from the model's own name cache, so exporting twice writes the same
        names. Hints contain "/", which the names export gives unnamed values ("v", "v_1")
        never do.
        """
        if self._taken is None:
            self._taken = {v.name for sub in self._root.all_graphs() for v in sub.values()}
        name, k = hint, 0
        while name in self._taken:
            k += 1
            name = f"{hint}_{k}"
        self._taken.add(name)
        return name


def _encode(s: str | bytes) -> bytes:
    return s if isinstance(s, bytes) else s.encode("utf-8")
