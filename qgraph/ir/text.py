"""A compact textual form of the IR, for tests, dumps and error messages.

    model opset {"": 17}
    graph main(%x: f32[1,3,8,8]) -> (%y) {
      init %w: f32[4,3,3,3] = <data 1a2b3c4d5e6f>
      init %b: f32[4] = [0.0, 0.1, 0.2, 0.3]
      %c: f32[1,4,8,8] = Conv(%x, %w, %b) {pads=[1,1,1,1]}
      %y = Relu(%c) @relu1
    }

Values are ``%name`` (``%"odd name"`` when needed); a missing optional input is ``_``;
a node's name, if any, follows it as ``@name``, then its metadata as ``meta {"k": "v"}``;
an op in another domain is ``domain::Op``. Initializers of up to 16 elements are
printed in full; larger ones as a content digest, which ``parse`` accepts only when the
data is passed in ``initializers=``. Subgraphs print as nested ``graph`` blocks.
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping

import numpy as np

from qgraph.errors import ParseError
from qgraph.ir.core import Attr, AttrType, Graph, Model, Node, Value
from qgraph.ir.dtypes import FROM_SHORT_NAME, SHORT_NAME, DType, to_numpy
from qgraph.ir.ops import parse_op
from qgraph.ir.tensor import Tensor
from qgraph.ir.types import OptionalType, SequenceType, TensorType, Type

_INLINE_LIMIT = 16
_NODE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_./\-]+(?::[A-Za-z0-9_./\-]+)*$")


# -- printing ---------------------------------------------------------------------------------
def _vname(v: Value | None) -> str:
    if v is None:
        return "_"
    return "%" + (v.name if _PLAIN_NAME.match(v.name) else json.dumps(v.name))


def _decl(v: Value) -> str:
    return _vname(v) + (f": {v.type}" if v.type is not None else "")


def _scalar(x: Any) -> str:
    if isinstance(x, float):  # ONNX float attributes are float32
        return _float(np.float32(x))
    if isinstance(x, bytes):
        return "b" + json.dumps(x.decode("latin-1"))
    if isinstance(x, str):
        return json.dumps(x)
    return str(x)


def _float(x: Any) -> str:
    text = str(x)  # numpy scalars print their shortest round-tripping form
    if text in ("nan", "inf", "-inf"):
        return json.dumps(text)
    return text if any(c in text for c in ".e") else text + ".0"


def _tensor_text(t: Tensor) -> str:
    if t.size <= _INLINE_LIMIT and t.dtype != DType.STRING:
        flat = np.asarray(t.numpy()).ravel()
        if flat.dtype.kind in "iub":
            items = [str(int(x)) for x in flat]
        else:
            items = [_float(x) for x in flat]
        return "[" + ", ".join(items) + "]"
    return f"<data {t.digest()}>"


def _attr_text(a: Attr, indent: str) -> str:
    t, v = a.type, a.value
    if a.ref_attr_name:
        return f"@{a.ref_attr_name}"
    if t in (AttrType.INT, AttrType.FLOAT, AttrType.STRING):
        return _scalar(v)
    if t in (AttrType.INTS, AttrType.FLOATS, AttrType.STRINGS):
        if not v:
            return f"{t.name.lower()}[]"
        return "[" + ", ".join(_scalar(x) for x in v) + "]"
    if t == AttrType.TENSOR:
        return f"tensor<{SHORT_NAME[v.dtype]}{list(v.shape)}> {_tensor_text(v)}"
    if t == AttrType.GRAPH:
        return _graph_text(v, indent)
    if t == AttrType.GRAPHS:
        return "[" + ", ".join(_graph_text(x, indent) for x in v) + "]"
    if t == AttrType.TYPE_PROTO:
        return f"type<{v}>"
    if t == AttrType.TENSORS:
        return "[" + ", ".join(f"tensor<{SHORT_NAME[x.dtype]}{list(x.shape)}> {_tensor_text(x)}" for x in v) + "]"
    return f"<{t.name.lower()}>"


def _node_text(n: Node, indent: str) -> str:
    outs = ", ".join(_decl(o) if o is not None else "_" for o in n.outputs)
    ins = ", ".join(_vname(v) for v in n.inputs)
    text = f"{indent}{outs} = {n.op}({ins})"
    if n.attrs:
        text += " {" + ", ".join(f"{k}={_attr_text(a, indent + '  ')}" for k, a in n.attrs.items()) + "}"
    if n.name:
        text += " @" + (n.name if _NODE_NAME.match(n.name) else json.dumps(n.name))
    if n.metadata_props:
        text += " meta " + json.dumps(n.metadata_props, sort_keys=True)
    return text


def _graph_text(g: Graph, indent: str = "") -> str:
    ins = ", ".join(_decl(v) for v in g.inputs)
    outs = ", ".join(_vname(v) for v in g.outputs)
    name = g.name if _PLAIN_NAME.match(g.name or "") else json.dumps(g.name)
    lines = [f"graph {name}({ins}) -> ({outs}) {{"]
    inner = indent + "  "
    for v in g.initializers.values():
        lines.append(f"{inner}init {_decl(v)} = {_tensor_text(v.const_value)}")
    for n in g:
        lines.append(_node_text(n, inner))
    lines.append(indent + "}")
    return "\n".join(lines)


def print_graph(g: Graph) -> str:
    return _graph_text(g)


def print_model(model: Model) -> str:
    """The model as text (opset header, then the main graph)."""
    return f"model opset {json.dumps(model.opset_imports, sort_keys=True)}\n" + _graph_text(model.graph)


# -- parsing ----------------------------------------------------------------------------------
_TOKEN = re.compile(r"""
    (?P<ws>\s+|\#[^\n]*)
  | (?P<value>%(?:"(?:[^"\\]|\\.)*"|[A-Za-z0-9_./\-]+(?::[A-Za-z0-9_./\-]+)*))
  | (?P<bytes>b"(?:[^"\\]|\\.)*")
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<number>[-+]?(?:\d+\.\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+|\d+))
  | (?P<arrow>->)
  | (?P<dcolon>::)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<punct>[()\[\]{},=:<>@*?_])
""", re.VERBOSE)


class _Parser:
    def __init__(self, text: str, initializers: Mapping[str, np.ndarray]):
        self.toks: list[tuple[str, str, int]] = []
        pos = 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if not m:
                raise ParseError(f"line {text.count(chr(10), 0, pos) + 1}: unexpected character {text[pos]!r}")
            if m.lastgroup != "ws":
                self.toks.append((m.lastgroup, m.group(), text.count("\n", 0, pos) + 1))
            pos = m.end()
        self.i = 0
        self.data = dict(initializers)
        self.scopes: list[dict[str, Value]] = []

    # token helpers
    def peek(self, k: int = 0) -> tuple[str, str, int]:
        return self.toks[self.i + k] if self.i + k < len(self.toks) else ("eof", "", -1)

    def take(self, kind: str | None = None, text: str | None = None) -> str:
        tk, tt, line = self.peek()
        if (kind and tk != kind) or (text is not None and tt != text):
            raise ParseError(f"line {line}: expected {text or kind}, found {tt or 'end of input'!r}")
        self.i += 1
        return tt

    def accept(self, text: str) -> bool:
        if self.peek()[1] == text and self.peek()[0] != "string":
            self.i += 1
            return True
        return False

    # grammar
    def model(self) -> Model:
        opsets = {"": 21}
        if self.accept("model"):
            self.take("ident", "opset")
            opsets = self.json_object()
        g = self.graph()
        if self.peek()[0] != "eof":
            raise ParseError(f"line {self.peek()[2]}: unexpected {self.peek()[1]!r} after the graph")
        return Model(g, opset_imports=opsets)

    def json_object(self) -> dict:
        self.take("punct", "{")
        out = {}
        while not self.accept("}"):
            key = json.loads(self.take("string"))
            self.take("punct", ":")
            out[key] = int(self.take("number"))
            self.accept(",")
        return out

    def value_ref(self) -> str:
        t = self.take("value")[1:]
        return json.loads(t) if t.startswith('"') else t

    def lookup(self, name: str) -> Value:
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        raise ParseError(f"line {self.peek(-1)[2]}: value %{name} is used before it is defined")

    def type_(self) -> Type:
        kind = self.take("ident")
        if kind in ("seq", "opt"):
            self.take("punct", "<")
            elem = None if self.accept("?") else self.type_()
            self.take("punct", ">")
            return SequenceType(elem) if kind == "seq" else OptionalType(elem)
        if kind not in FROM_SHORT_NAME:
            raise ParseError(f"line {self.peek(-1)[2]}: unknown element type {kind!r}")
        return TensorType(FROM_SHORT_NAME[kind], self.shape())

    def shape(self) -> tuple | None:
        self.take("punct", "[")
        if self.accept("*"):
            self.take("punct", "]")
            return None
        dims: list = []
        while not self.accept("]"):
            k, t, _ = self.peek()
            self.i += 1
            dims.append(int(t) if k == "number" else None if t == "?" else t)
            self.accept(",")
        return tuple(dims)

    def decl(self) -> Value:
        v = Value(self.value_ref())
        if self.accept(":"):
            v.type = self.type_()
        return v

    def graph(self) -> Graph:
        self.take("ident", "graph")
        k, name, _ = self.peek()
        self.i += 1
        name = json.loads(name) if k == "string" else name
        g = Graph(name)
        scope: dict[str, Value] = {}
        self.scopes.append(scope)
        self.take("punct", "(")
        while not self.accept(")"):
            v = self.decl()
            g.inputs.append(v)
            scope[v.name] = v
            self.accept(",")
        self.take("arrow")
        self.take("punct", "(")
        out_names = []
        while not self.accept(")"):
            out_names.append(self.value_ref())
            self.accept(",")
        self.take("punct", "{")
        while not self.accept("}"):
            if self.accept("init"):
                self.initializer(g, scope)
            else:
                g.append(self.node(scope))
        for name in out_names:
            g.outputs.append(self.lookup(name))
        self.scopes.pop()
        return g

    def initializer(self, g: Graph, scope: dict[str, Value]) -> None:
        v = self.decl()
        if not isinstance(v.type, TensorType) or v.type.shape is None or any(not isinstance(d, int) for d in v.type.shape):
            raise ParseError(f"line {self.peek()[2]}: initializer %{v.name} needs a static tensor type")
        self.take("punct", "=")
        dtype = to_numpy(v.type.dtype)
        if self.peek()[1] == "<":
            self.take("punct", "<")
            self.take("ident", "data")
            while self.peek()[1] not in (">", ""):  # the digest (hex: may lex as number + ident)
                self.i += 1
            self.take("punct", ">")
            if v.name not in self.data:
                raise ParseError(f"initializer %{v.name} has no inline data; pass it in initializers=")
            array = np.asarray(self.data[v.name], dtype=dtype)
        else:
            lit = self.literal()
            array = np.asarray(lit, dtype=dtype)
            array = np.broadcast_to(array, v.type.shape) if array.ndim == 0 else array.reshape(v.type.shape)
        if tuple(array.shape) != tuple(v.type.shape):
            raise ParseError(f"initializer %{v.name}: data has shape {array.shape}, declared {v.type.shape}")
        v.const_value = Tensor(np.require(array, requirements="C"), v.type.dtype, name=v.name)
        g.register_initializer(v)
        scope[v.name] = v

    def literal(self) -> Any:
        k, t, line = self.peek()
        if t == "[":
            self.i += 1
            items = []
            while not self.accept("]"):
                items.append(self.literal())
                self.accept(",")
            return items
        self.i += 1
        if k == "number":
            return float(t) if any(c in t for c in ".eE") else int(t)
        if k == "string":
            s = json.loads(t)
            return float(s) if s in ("nan", "inf", "-inf") else s
        if k == "bytes":
            return json.loads(t[1:]).encode("latin-1")
        if k == "ident" and t in ("nan", "inf"):
            return float(t)
        raise ParseError(f"line {line}: expected a literal, found {t!r}")

    def node(self, scope: dict[str, Value]) -> Node:
        outs: list[Value | None] = []
        while True:
            if self.accept("_"):
                outs.append(None)
            else:
                outs.append(self.decl())
            if not self.accept(","):
                break
        self.take("punct", "=")
        op_text = self.take("ident")
        while self.accept("::"):
            op_text += "::" + self.take("ident")
        op = parse_op(op_text)
        self.take("punct", "(")
        ins: list[Value | None] = []
        while not self.accept(")"):
            ins.append(None if self.accept("_") else self.lookup(self.value_ref()))
            self.accept(",")
        attrs: dict[str, Attr] = {}
        if self.accept("{"):
            while not self.accept("}"):
                key = self.take("ident")
                self.take("punct", "=")
                attrs[key] = self.attr_value()
                self.accept(",")
        name = ""
        if self.accept("@"):
            k, name, _ = self.peek()
            self.i += 1
            name = json.loads(name) if k == "string" else name
        node = Node(op, ins, outs, attrs, name=name)
        if self.accept("meta"):
            self.take("punct", "{")
            while not self.accept("}"):
                key = json.loads(self.take("string"))
                self.take("punct", ":")
                node.metadata_props[key] = json.loads(self.take("string"))
                self.accept(",")
        for o in outs:
            if o is not None:
                if o.name in scope:
                    raise ParseError(f"line {self.peek(-1)[2]}: %{o.name} is defined twice")
                scope[o.name] = o
        return node

    def attr_value(self) -> Attr:
        k, t, line = self.peek()
        if t == "graph":
            return Attr(AttrType.GRAPH, self.graph())
        if t == "@":
            self.i += 1
            return Attr(AttrType.UNDEFINED, None, ref_attr_name=self.take("ident"))
        if k == "ident" and t in ("ints", "floats", "strings") and self.peek(1)[1] == "[":
            self.i += 1
            self.take("punct", "[")
            self.take("punct", "]")
            return Attr(AttrType[t.upper()], ())
        if t == "tensor":
            self.i += 1
            self.take("punct", "<")
            tt = TensorType(FROM_SHORT_NAME[self.take("ident")], self.shape())
            self.take("punct", ">")
            array = np.asarray(self.literal(), dtype=to_numpy(tt.dtype)).reshape(tt.shape)
            return Attr(AttrType.TENSOR, Tensor(array, tt.dtype))
        if t == "type":
            self.i += 1
            self.take("punct", "<")
            ty = self.type_()
            self.take("punct", ">")
            return Attr(AttrType.TYPE_PROTO, ty)
        if t == "[" and self.peek(1)[1] == "graph":
            self.i += 1
            graphs = []
            while not self.accept("]"):
                graphs.append(self.graph())
                self.accept(",")
            return Attr(AttrType.GRAPHS, tuple(graphs))
        from qgraph.ir.core import make_attr

        return make_attr(self.literal())


def parse_model(text: str, initializers: Mapping[str, np.ndarray] | None = None) -> Model:
    """Parse the text form into a Model. ``initializers`` supplies data printed as digests."""
    return _Parser(text, initializers or {}).model()


def fingerprint(model: Model) -> str:
    """A content hash of the whole model (structure, attributes, tensor data)."""
    import hashlib

    return hashlib.sha1(print_model(model).encode()).hexdigest()
