"""The IR: ``Value``, ``Node``, ``Graph``, ``Model``.

Use-def chains live on ``Value`` (``producer()``, ``uses()``, ``replace_all_uses_with``).
A graph keeps its nodes in a linked list, so inserting or removing a node is O(1) and
iterating a graph while mutating it is safe: a removed node is skipped, nodes inserted
after the iterator's position are visited.

Subgraphs (If / Loop / Scan bodies) are ``Graph`` objects held in GRAPH attributes; a
node inside one may use a value of an enclosing graph directly (that use is recorded on
the outer value, so dead-code elimination and use counts see it).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import onnx

from qgraph.errors import QGraphError
from qgraph.ir.dtypes import DType
from qgraph.ir import ops
from qgraph.ir.ops import OpId
from qgraph.ir.tensor import Tensor
from qgraph.ir.types import Shape, TensorType, Type

AttrType = enum.IntEnum("AttrType", dict(onnx.AttributeProto.AttributeType.items()))
AttrType.__doc__ = "ONNX attribute type (AttributeProto.AttributeType)."


@dataclass(frozen=True, slots=True)
class Attr:
    """A frozen attribute value with its ONNX type (so ``[]`` keeps being INTS, ``1.0`` FLOAT)."""

    type: AttrType
    value: Any
    ref_attr_name: str = ""
    doc_string: str = ""


_LIST_OF = {
    AttrType.INT: AttrType.INTS, AttrType.FLOAT: AttrType.FLOATS, AttrType.STRING: AttrType.STRINGS,
    AttrType.TENSOR: AttrType.TENSORS, AttrType.GRAPH: AttrType.GRAPHS,
    AttrType.TYPE_PROTO: AttrType.TYPE_PROTOS, AttrType.SPARSE_TENSOR: AttrType.SPARSE_TENSORS,
}


def _scalar_attr_type(value: Any) -> AttrType:
    if isinstance(value, (bool, int, np.integer)):
        return AttrType.INT
    if isinstance(value, (float, np.floating)):
        return AttrType.FLOAT
    if isinstance(value, (str, bytes)):
        return AttrType.STRING
    if isinstance(value, (Tensor, np.ndarray)):
        return AttrType.TENSOR
    if isinstance(value, Graph):
        return AttrType.GRAPH
    from qgraph.ir import types as _types

    if isinstance(value, (_types.TensorType, _types.SequenceType, _types.OptionalType,
                          _types.MapType, _types.SparseTensorType)):
        return AttrType.TYPE_PROTO
    raise TypeError(f"cannot infer an ONNX attribute type for {type(value).__name__} {value!r}")


def _normalize_scalar(t: AttrType, value: Any) -> Any:
    if t == AttrType.INT:
        return int(value)
    if t == AttrType.FLOAT:
        return float(value)
    if t == AttrType.TENSOR and isinstance(value, np.ndarray):
        return Tensor(value)
    return value


def make_attr(value: Any, type: AttrType | None = None) -> Attr:
    """An ``Attr`` from a Python value, inferring the ONNX type unless given.

    Lists become tuples. An empty list needs an explicit ``type``.
    """
    if isinstance(value, Attr):
        return value
    if isinstance(value, (list, tuple)):
        if type is None:
            if not value:
                raise TypeError("an empty list attribute needs an explicit type (e.g. AttrType.INTS)")
            type = _LIST_OF[_scalar_attr_type(value[0])]
            if type == AttrType.INTS and any(isinstance(v, (float, np.floating)) for v in value):
                type = AttrType.FLOATS
        scalar = {v: k for k, v in _LIST_OF.items()}[type]
        return Attr(type, tuple(_normalize_scalar(scalar, v) for v in value))
    if type is None:
        type = _scalar_attr_type(value)
    return Attr(type, _normalize_scalar(type, value))


class Value:
    """A tensor (or sequence / optional / map) flowing along graph edges.

    ``const_value`` is set for initializers. ``type`` may be None when unknown.
    """

    __slots__ = ("_name", "type", "const_value", "doc_string", "metadata_props",
                 "_producer", "_index", "_uses", "_graph", "_n_output_refs", "_is_input")

    def __init__(self, name: str = "", type: Type | None = None, const_value: Tensor | None = None,
                 doc_string: str = ""):
        self._name = name
        self.type = type
        self.const_value = const_value
        self.doc_string = doc_string
        self.metadata_props: dict[str, str] = {}
        self._producer: Node | None = None
        self._index = 0
        self._uses: dict[tuple[Node, int], None] = {}
        self._graph: Graph | None = None  # set for graph inputs and initializers
        self._n_output_refs = 0
        self._is_input = False

    # -- naming ---------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._name

    @name.setter
    def name(self, new: str) -> None:
        g = self._graph
        if g is not None and g.initializers.get(self._name) is self:
            del g.initializers[self._name]
            g.initializers[new] = self
        self._name = new

    # -- use-def --------------------------------------------------------------------------
    def producer(self) -> "Node | None":
        """The node whose output this is, or None for graph inputs and initializers."""
        return self._producer

    @property
    def index(self) -> int:
        """Output index in the producer."""
        return self._index

    def uses(self) -> list[tuple["Node", int]]:
        """(node, input index) pairs that read this value, in insertion order."""
        return list(self._uses)

    def users(self) -> list["Node"]:
        """Distinct nodes that read this value."""
        return list(dict.fromkeys(n for n, _ in self._uses))

    def has_uses(self) -> bool:
        return bool(self._uses)

    @property
    def graph(self) -> "Graph | None":
        """The graph that defines this value."""
        return self._producer.graph if self._producer is not None else self._graph

    def is_graph_output(self) -> bool:
        return self._n_output_refs > 0

    def is_graph_input(self) -> bool:
        return self._is_input

    def is_initializer(self) -> bool:
        g = self._graph
        return g is not None and g.initializers.get(self._name) is self

    def constant(self) -> Tensor | None:
        """The data of this value when it is fixed at compile time, else None.

        A value is constant when it is an initializer that is not also a graph input, or
        the output of a ``Constant`` node holding a tensor (``value``). An initializer that
        is also a graph input is *not* constant: ONNX makes it a default that a feed may
        override, so folding it would change what the model computes for that feed.
        This is the one definition qgraph uses (the rewrite engine's ``Const``, the Q/DQ
        parameter reader ``qgraph.ir.l2``, the overflow analysis and the report).
        """
        if self.const_value is not None:
            return None if self._is_input else self.const_value
        p = self._producer
        if p is not None and p.op is ops.Constant:
            t = p.attr("value")
            return t if isinstance(t, Tensor) else None
        return None

    def replace_all_uses_with(self, other: "Value", *, outputs: bool = False) -> None:
        """Make every reader of this value read ``other`` instead.

        With ``outputs=True`` graph-output slots holding this value are replaced too (the
        output's name then changes unless the caller renames; see ``Graph.replace_value``).
        """
        if other is self:
            return
        for node, i in list(self._uses):
            node.replace_input(i, other)
        if outputs and self._n_output_refs:
            g = self.graph
            if g is not None and self in g.outputs:
                g.outputs.replace(self, other)

    # -- type shortcuts -------------------------------------------------------------------
    @property
    def dtype(self) -> DType | None:
        return self.type.dtype if isinstance(self.type, TensorType) else None

    @property
    def shape(self) -> Shape | None:
        return self.type.shape if isinstance(self.type, TensorType) else None

    def __repr__(self) -> str:
        return f"Value({self._name!r}, {self.type})"


class Node:
    """An operator application: op identity, inputs, outputs, frozen attributes."""

    __slots__ = ("op", "name", "_inputs", "_outputs", "_attrs", "doc_string", "metadata_props",
                 "overload", "graph", "_prev", "_next")

    def __init__(self, op: OpId, inputs: Sequence[Value | None] = (),
                 outputs: int | Sequence[Value | str | None] = 1,
                 attrs: Mapping[str, Any] | None = None, name: str = "", doc_string: str = "",
                 overload: str = ""):
        if not isinstance(op, OpId):
            raise TypeError(f"Node op must be an OpId (see qgraph.ir.ops), got {op!r}")
        self.op = op
        self.name = name
        self.doc_string = doc_string
        self.metadata_props: dict[str, str] = {}
        self.overload = overload
        self.graph: Graph | None = None
        self._prev: Node | None = None
        self._next: Node | None = None
        self._inputs: tuple[Value | None, ...] = tuple(inputs)
        for i, v in enumerate(self._inputs):
            if v is not None:
                v._uses[(self, i)] = None
        if isinstance(outputs, int):
            outputs = [Value() for _ in range(outputs)]
        outs: list[Value | None] = []
        for k, o in enumerate(outputs):
            if o is None:
                outs.append(None)
                continue
            if isinstance(o, str):
                o = Value(o)
            if o._producer is not None or o._graph is not None:
                raise QGraphError(f"value '{o.name}' already has a producer; cannot be an output of {op} node '{name}'")
            o._producer, o._index = self, k
            outs.append(o)
        self._outputs: tuple[Value | None, ...] = tuple(outs)
        self._attrs: Mapping[str, Attr] = MappingProxyType(
            {k: make_attr(v) for k, v in (attrs or {}).items()})

    # -- inputs / outputs -----------------------------------------------------------------
    @property
    def inputs(self) -> tuple[Value | None, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[Value | None, ...]:
        return self._outputs

    @property
    def output(self) -> Value:
        """The single output (for one-output ops)."""
        if len(self._outputs) != 1 or self._outputs[0] is None:
            raise QGraphError(f"{self.op} node '{self.name}' has {len(self._outputs)} outputs; use .outputs")
        return self._outputs[0]

    def replace_input(self, index: int, value: Value | None) -> None:
        old = self._inputs[index]
        if old is value:
            return
        if old is not None:
            old._uses.pop((self, index), None)
        if value is not None:
            value._uses[(self, index)] = None
        self._inputs = self._inputs[:index] + (value,) + self._inputs[index + 1:]

    def set_inputs(self, inputs: Sequence[Value | None]) -> None:
        self._detach_inputs()
        self._inputs = tuple(inputs)
        for i, v in enumerate(self._inputs):
            if v is not None:
                v._uses[(self, i)] = None

    def _detach_inputs(self) -> None:
        for i, v in enumerate(self._inputs):
            if v is not None:
                v._uses.pop((self, i), None)

    def users(self) -> list["Node"]:
        """Distinct nodes reading any output of this node."""
        seen: dict[Node, None] = {}
        for o in self._outputs:
            if o is not None:
                for n, _ in o._uses:
                    seen[n] = None
        return list(seen)

    # -- attributes -----------------------------------------------------------------------
    @property
    def attrs(self) -> Mapping[str, Attr]:
        return self._attrs

    def attr(self, name: str, default: Any = None) -> Any:
        """The value of attribute ``name`` (``default`` when absent)."""
        a = self._attrs.get(name)
        return default if a is None else a.value

    def set_attr(self, name: str, value: Any, type: AttrType | None = None) -> None:
        attrs = dict(self._attrs)
        attrs[name] = make_attr(value, type)
        self._attrs = MappingProxyType(attrs)

    def del_attr(self, name: str) -> None:
        attrs = dict(self._attrs)
        attrs.pop(name, None)
        self._attrs = MappingProxyType(attrs)

    def subgraphs(self) -> Iterator["Graph"]:
        for a in self._attrs.values():
            if a.type == AttrType.GRAPH:
                yield a.value
            elif a.type == AttrType.GRAPHS:
                yield from a.value

    # -- convenience ----------------------------------------------------------------------
    @property
    def op_type(self) -> str:
        return self.op.op_type

    @property
    def domain(self) -> str:
        return self.op.domain

    def describe(self) -> str:
        """How errors name this node: ``Conv node 'conv1'``."""
        return f"{self.op} node '{self.name}'" if self.name else f"unnamed {self.op} node"

    def __repr__(self) -> str:
        return f"Node({self.op}, name={self.name!r})"


class _ValueList:
    """A graph's input or output list; keeps the per-value membership flags current."""

    __slots__ = ("_items", "_graph", "_is_output")

    def __init__(self, graph: "Graph", is_output: bool):
        self._items: list[Value] = []
        self._graph = graph
        self._is_output = is_output

    def _add(self, v: Value) -> None:
        if self._is_output:
            v._n_output_refs += 1
        else:
            if v._producer is not None:
                raise QGraphError(f"value '{v.name}' is produced by {v._producer.describe()}; it cannot be a graph input")
            v._is_input = True
            v._graph = self._graph

    def _drop(self, v: Value) -> None:
        if self._is_output:
            v._n_output_refs -= 1
        else:
            v._is_input = False
            if not v.is_initializer():
                v._graph = None

    def append(self, v: Value) -> None:
        self._add(v)
        self._items.append(v)

    def extend(self, vs: Iterable[Value]) -> None:
        for v in vs:
            self.append(v)

    def insert(self, i: int, v: Value) -> None:
        self._add(v)
        self._items.insert(i, v)

    def remove(self, v: Value) -> None:
        self._items.remove(v)
        self._drop(v)

    def pop(self, i: int = -1) -> Value:
        v = self._items.pop(i)
        self._drop(v)
        return v

    def clear(self) -> None:
        for v in self._items:
            self._drop(v)
        self._items.clear()

    def replace(self, old: Value, new: Value) -> None:
        for i, v in enumerate(self._items):
            if v is old:
                self[i] = new

    def index(self, v: Value) -> int:
        return self._items.index(v)

    def __setitem__(self, i: int, v: Value) -> None:
        self._drop(self._items[i])
        self._add(v)
        self._items[i] = v

    def __getitem__(self, i):
        return self._items[i]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Value]:
        return iter(list(self._items))

    def __contains__(self, v: object) -> bool:
        return any(x is v for x in self._items)

    def __repr__(self) -> str:
        return repr(self._items)


class Graph:
    """An ordered list of nodes with inputs, outputs and initializers.

    ``parent`` is the node whose attribute holds this graph (None for the main graph).
    """

    def __init__(self, name: str = "", inputs: Sequence[Value] = (), outputs: Sequence[Value] = (),
                 nodes: Sequence[Node] = (), initializers: Sequence[Value] = (), doc_string: str = ""):
        self.name = name
        self.doc_string = doc_string
        self.metadata_props: dict[str, str] = {}
        self.parent: Node | None = None
        self.inputs = _ValueList(self, is_output=False)
        self.outputs = _ValueList(self, is_output=True)
        self.initializers: dict[str, Value] = {}
        # Kept verbatim: ONNX fields no qgraph pass reads.
        self.quantization_annotation: list[onnx.TensorAnnotation] = []
        self.sparse_initializers: list[onnx.SparseTensorProto] = []
        self._head: Node | None = None
        self._tail: Node | None = None
        self._len = 0
        self._names: set[str] | None = None
        for v in inputs:
            self.inputs.append(v)
        for v in initializers:
            self.register_initializer(v)
        self.extend(nodes)
        for v in outputs:
            self.outputs.append(v)

    # -- node list ------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Node]:
        n = self._head
        while n is not None:
            if n.graph is self:
                yield n
            n = n._next

    def __reversed__(self) -> Iterator[Node]:
        n = self._tail
        while n is not None:
            if n.graph is self:
                yield n
            n = n._prev

    def __len__(self) -> int:
        return self._len

    @property
    def nodes(self) -> list[Node]:
        return list(self)

    def _claim(self, node: Node) -> None:
        if node.graph is not None:
            raise QGraphError(f"{node.describe()} already belongs to a graph; remove it first")
        node.graph = self
        self._len += 1
        for sub in node.subgraphs():
            sub.parent = node
        if self._names is not None:
            self._note_names(node)

    def append(self, node: Node) -> Node:
        self._claim(node)
        node._prev, node._next = self._tail, None
        if self._tail is None:
            self._head = node
        else:
            self._tail._next = node
        self._tail = node
        return node

    def extend(self, nodes: Iterable[Node]) -> None:
        for n in nodes:
            self.append(n)

    def insert_before(self, anchor: Node, nodes: Node | Sequence[Node]) -> None:
        """Insert ``nodes`` (in order) right before ``anchor``."""
        if anchor.graph is not self:
            raise QGraphError(f"insert_before: {anchor.describe()} is not in graph '{self.name}'")
        for node in [nodes] if isinstance(nodes, Node) else nodes:
            self._claim(node)
            prev = anchor._prev
            node._prev, node._next = prev, anchor
            anchor._prev = node
            if prev is None:
                self._head = node
            else:
                prev._next = node

    def insert_after(self, anchor: Node, nodes: Node | Sequence[Node]) -> None:
        """Insert ``nodes`` (in order) right after ``anchor``."""
        if anchor.graph is not self:
            raise QGraphError(f"insert_after: {anchor.describe()} is not in graph '{self.name}'")
        for node in [nodes] if isinstance(nodes, Node) else nodes:
            self._claim(node)
            nxt = anchor._next
            node._prev, node._next = anchor, nxt
            anchor._next = node
            if nxt is None:
                self._tail = node
            else:
                nxt._prev = node
            anchor = node

    def remove(self, node: Node, *, safe: bool = True) -> None:
        """Unlink ``node`` and drop its input uses (also those made inside its subgraphs).

        With ``safe`` (the default) a node whose outputs are still read or are graph outputs
        is refused, naming the readers.
        """
        if node.graph is not self:
            raise QGraphError(f"remove: {node.describe()} is not in graph '{self.name}'")
        if safe:
            for o in node.outputs:
                if o is None:
                    continue
                if o.has_uses():
                    users = ", ".join(u.describe() for u in o.users()[:5])
                    raise QGraphError(f"cannot remove {node.describe()}: its output '{o.name}' is still used by {users}")
                if o.is_graph_output():
                    raise QGraphError(f"cannot remove {node.describe()}: its output '{o.name}' is a graph output")
        node._detach_inputs()
        for sub in node.subgraphs():
            for inner in sub.all_nodes():
                inner._detach_inputs()
        prev, nxt = node._prev, node._next
        if prev is None:
            self._head = nxt
        else:
            prev._next = nxt
        if nxt is None:
            self._tail = prev
        else:
            nxt._prev = prev
        # node._next is kept so an iterator standing on it can continue.
        node.graph = None
        self._len -= 1

    # -- initializers ---------------------------------------------------------------------
    def register_initializer(self, value: Value) -> Value:
        if value.const_value is None:
            raise QGraphError(f"initializer '{value.name}' has no const_value")
        if value._producer is not None:
            raise QGraphError(f"initializer '{value.name}' is produced by {value._producer.describe()}")
        old = self.initializers.get(value.name)
        if old is not None and old is not value:
            raise QGraphError(f"graph '{self.name}' already has an initializer named '{value.name}'")
        self.initializers[value.name] = value
        value._graph = self
        if self._names is not None:
            self._names.add(value.name)
        return value

    def add_initializer(self, name: str, data: np.ndarray | Tensor) -> Value:
        """Create an initializer value (name made unique) holding ``data``."""
        tensor = data if isinstance(data, Tensor) else Tensor(np.asarray(data))
        name = self.unique_name(name)
        tensor.name = name
        v = Value(name, TensorType(tensor.dtype, tensor.shape), tensor)
        return self.register_initializer(v)

    def remove_initializer(self, value: Value) -> None:
        if self.initializers.get(value.name) is value:
            del self.initializers[value.name]
            if not value._is_input:
                value._graph = None

    # -- traversal ------------------------------------------------------------------------
    @property
    def parent_graph(self) -> "Graph | None":
        return self.parent.graph if self.parent is not None else None

    @property
    def root(self) -> "Graph":
        g = self
        while g.parent is not None and g.parent.graph is not None:
            g = g.parent.graph
        return g

    def all_nodes(self) -> Iterator[Node]:
        """Every node, subgraphs included, each node before the nodes of its subgraphs."""
        for n in self:
            yield n
            for sub in n.subgraphs():
                yield from sub.all_nodes()

    def all_graphs(self) -> Iterator["Graph"]:
        """This graph and every nested subgraph."""
        yield self
        for n in self:
            for sub in n.subgraphs():
                yield from sub.all_graphs()

    def values(self) -> Iterator[Value]:
        """Inputs, initializers and node outputs of this graph (not subgraphs)."""
        yield from self.inputs
        for v in self.initializers.values():
            if not v._is_input:
                yield v
        for n in self:
            for o in n.outputs:
                if o is not None:
                    yield o

    # -- names ----------------------------------------------------------------------------
    def _note_names(self, node: Node) -> None:
        names = self.root._names
        if names is None:
            return
        for o in node.outputs:
            if o is not None:
                names.add(o.name)
        for sub in node.subgraphs():
            for g in sub.all_graphs():
                for v in g.values():
                    names.add(v.name)

    def unique_name(self, hint: str) -> str:
        """A value name not used anywhere in the model (``hint``, else ``hint_1``, ...)."""
        root = self.root
        if root._names is None:
            root._names = {v.name for g in root.all_graphs() for v in g.values()}
        names = root._names
        hint = hint or "v"
        name, k = hint, 0
        while name in names:
            k += 1
            name = f"{hint}_{k}"
        names.add(name)
        return name

    # -- rewiring -------------------------------------------------------------------------
    def can_take_output_name(self, value: Value) -> bool:
        """Whether ``value`` may be renamed to become an output of this graph in place of another.

        True for a node output of this graph that is not already a graph output (renaming
        a graph input, an initializer or an outer value would change what it means).
        """
        return value._producer is not None and value._producer.graph is self and not value.is_graph_output()

    def replace_value(self, old: Value, new: Value) -> None:
        """Replace ``old`` by ``new`` everywhere, keeping graph-output names stable.

        If ``old`` is an output of this graph, ``new`` takes over the output slot and the
        name when ``new`` is a node output of this graph that is not itself an output;
        otherwise an Identity keeps the output's name. Replacing a value by itself does nothing.
        """
        if old is new:
            return
        old.replace_all_uses_with(new)
        if old not in self.outputs:
            return
        if self.can_take_output_name(new):
            old_name = old.name
            old.name = self.unique_name(old_name + "_replaced")
            new.name = old_name
            if new.type is None:
                new.type = old.type
            self.outputs.replace(old, new)
        else:
            from qgraph.ir import ops

            keep = Value(self.unique_name(old.name + "_kept"), old.type)
            ident = Node(ops.Identity, [new], [keep], name=self.unique_name(old.name + "_keep_name"))
            old_name = old.name
            old.name = self.unique_name(old_name + "_replaced")
            keep.name = old_name
            producer = new.producer()
            if producer is not None and producer.graph is self:
                self.insert_after(producer, ident)
            else:
                self.append(ident)
            self.outputs.replace(old, keep)

    def clone(self, outer: Mapping[Value, Value] | None = None) -> "Graph":
        """A copy of this graph: new values, nodes and subgraphs, the same (immutable) tensors.

        ``outer`` maps the values of enclosing graphs that this graph (a subgraph) reads to
        their copies; a value read here that is defined neither here nor in ``outer`` is
        kept as it is (a subgraph copied on its own still reads its outer scope).
        """
        vmap: dict[Value, Value] = dict(outer or {})

        def fresh(v: Value) -> Value:
            c = Value(v.name, v.type, v.const_value, v.doc_string)
            c.metadata_props = dict(v.metadata_props)
            vmap[v] = c
            return c

        g = Graph(self.name, doc_string=self.doc_string)
        g.metadata_props = dict(self.metadata_props)
        g.quantization_annotation = list(self.quantization_annotation)
        g.sparse_initializers = list(self.sparse_initializers)
        for v in self.inputs:
            g.inputs.append(fresh(v))
        for v in self.initializers.values():
            g.register_initializer(vmap[v] if v in vmap else fresh(v))
        for n in self:
            outs = [None if o is None else fresh(o) for o in n.outputs]
            attrs = {k: _clone_attr(a, vmap) for k, a in n.attrs.items()}
            c = Node(n.op, [None if v is None else vmap.get(v, v) for v in n.inputs], outs, attrs,
                     name=n.name, doc_string=n.doc_string, overload=n.overload)
            c.metadata_props = dict(n.metadata_props)
            g.append(c)
        for v in self.outputs:
            g.outputs.append(vmap.get(v, v))
        return g

    def __repr__(self) -> str:
        return f"Graph({self.name!r}, {self._len} nodes)"


def _clone_attr(a: Attr, vmap: Mapping[Value, Value]) -> Attr:
    if a.type == AttrType.GRAPH:
        return Attr(a.type, a.value.clone(vmap), a.ref_attr_name, a.doc_string)
    if a.type == AttrType.GRAPHS:
        return Attr(a.type, tuple(sg.clone(vmap) for sg in a.value), a.ref_attr_name, a.doc_string)
    return a  # frozen, and its tensors immutable: shared


class Model:
    """A graph with its opset imports and model-level metadata.

    ``functions`` (model-local FunctionProtos) and ``training_info`` are kept verbatim.
    """

    def __init__(self, graph: Graph, opset_imports: Mapping[str, int] | None = None, ir_version: int = 10,
                 producer_name: str = "qgraph", producer_version: str = "", domain: str = "",
                 model_version: int = 0, doc_string: str = ""):
        self.graph = graph
        self.opset_imports: dict[str, int] = dict(opset_imports or {"": 21})
        self.ir_version = ir_version
        self.producer_name = producer_name
        self.producer_version = producer_version
        self.domain = domain
        self.model_version = model_version
        self.doc_string = doc_string
        self.metadata_props: dict[str, str] = {}
        # Range facts that are inputs to quantization, not analyses of the graph: intervals
        # the user declares for graph inputs, and what calibration observed (both
        # qgraph.calib.RangeMap / Interval). Range analysis reads them; passes that rename
        # values keep names stable, so these stay valid.
        self.input_ranges: dict[str, Any] = {}
        self.calibration: Any = None
        self.functions: list[onnx.FunctionProto] = []
        self.training_info: list[onnx.TrainingInfoProto] = []
        self.configuration: list[Any] = []

    def clone(self) -> "Model":
        """A copy that shares nothing mutable with this model (``Graph.clone``); tensors are
        immutable and shared. ``input_ranges`` is a new dict of the same intervals;
        ``calibration`` (read-only once made) is the same object; the ONNX fields kept
        verbatim (functions, training info) are new lists of the same protos."""
        m = Model(self.graph.clone(), self.opset_imports, self.ir_version, self.producer_name,
                  self.producer_version, self.domain, self.model_version, self.doc_string)
        m.metadata_props = dict(self.metadata_props)
        m.input_ranges = dict(self.input_ranges)
        m.calibration = self.calibration
        m.functions = list(self.functions)
        m.training_info = list(self.training_info)
        m.configuration = list(self.configuration)
        return m

    def opset(self, domain: str = "") -> int | None:
        """The imported version of ``domain`` ("" = the default ONNX domain)."""
        from qgraph.ir.ops import normalize_domain

        for d, v in self.opset_imports.items():
            if normalize_domain(d) == normalize_domain(domain):
                return v
        return None

    def __repr__(self) -> str:
        return f"Model({self.graph!r}, opsets={self.opset_imports})"
