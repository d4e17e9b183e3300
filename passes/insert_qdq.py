"""insert-qdq: L1 float IR -> L2 QDQ IR (standard ONNX QuantizeLinear / DequantizeLinear)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import numpy as np

from qgraph.errors import PassError
from qgraph.ir import fusion, ops
from qgraph.ir.core import Model, Node, Value
from qgraph.ir.dtypes import DType
from qgraph.ir.l2 import QDQParamsError, read_qdq
# the op groups insert-qdq shares with lower-qdq (qgraph.ir.op_groups says what each means)
from qgraph.ir.op_groups import (
    CLAMPING_ACTIVATIONS, PASS_THROUGH_OPS, QUANTIZED_OPS, RECURRENT_OPS, SHARED_SCALE_OPS, UNARY_ACTIVATIONS,  # noqa: F401
)
from qgraph.ir.types import TensorType
from qgraph.passes.opset import OpsetUpgradeError, check_upgrade, upgrade_opset
from qgraph.pm.base import Pass, PassResult
from qgraph.quant.config import QuantConfig, TensorScheme
from qgraph.quant.float16 import round_float16
from qgraph.quant.params import (
    QuantParams, choose_params, choose_weight_params, dequantize, fit_weight_scale_to_bias, int_type, quantize,
    quantize_bias,
)
from qgraph.rewrite import constant_tensor

#: ops whose input 1 is a weight (input 2 a bias where present)
_LINEAR = frozenset({ops.Conv, ops.ConvTranspose, ops.Gemm, ops.MatMul})
_FLOAT = (DType.FLOAT,)


class InsertQDQError(PassError):
    """insert-qdq cannot quantize the model as asked (missing range, bad override...)."""


@dataclass
class _Unit:
    """A quantized node and what its group reads and writes.

    ``acts``: (input index, activation value); ``weights``: input indices of constants;
    ``output``: the group's output (the fused activation's, if any).
    """

    node: Node
    acts: list[tuple[int, Value]]
    weights: list[int]
    output: Value
    members: tuple[Node, ...] = ()


class InsertQDQ(Pass):
    """Place QuantizeLinear / DequantizeLinear pairs so the float graph runs quantized.

    before => after (activations uint8 per tensor, weights int8 per channel by default)::

        y = Relu(Conv(x, w, b))  [Relu fused]  =>  y = DQ(Q(Relu(Conv(DQ(xq), DQ(wq), DQ(bq)))))
        y = HardSwish(Conv(x, w, b))            =>  c = DQ(Q(Conv(DQ(xq), DQ(wq), DQ(bq)))); y = DQ(Q(HardSwish(c)))
        y = MatMul(a, w)                        =>  y = DQ(Q(MatMul(DQ(aq), DQ(wq axis=1))))
        y = Add(a, b)                           =>  y = DQ(Q(Add(DQ(aq), DQ(bq))))
        y = Concat(a, b)                        =>  y = DQ(Q(Concat(DQ(aq), DQ(bq)))), one scale for all
        y = MaxPool(x)  (also Reshape, ...)     =>  y = DQ(Q(MaxPool(DQ(xq)))), the scale of x
        y = Softmax(a)  (not quantized)         =>  y = Softmax(DQ(aq)), no Q unless a quantized op reads y

    Rules (what ONNX Runtime's and TensorRT's QDQ fusions expect):

    - One Q -> DQ pair per quantized tensor, right after its producer, shared by every
      quantized reader. Readers of a quantized op's output read the DQ (float readers too);
      a float producer's output keeps its float readers. Graph inputs read by a quantized op
      get a pair; a quantized graph output keeps its name (the DQ writes it; the op's own
      output becomes ``<name>_float``).
    - Weights become integer initializers -> DequantizeLinear, per channel on the output
      channel axis (Conv 0, ConvTranspose 1 when group = 1, MatMul B [.., K, N] last,
      Gemm B 0 with transB else 1); other constants (Add / Mul operands) per tensor.
      Conv / ConvTranspose / Gemm biases become int32 with scale ``scale_x * scale_w``.
    - No pair between an op and a fused activation that requantization clamps (Relu, Clip
      with constant bounds; ``qgraph.ir.fusion``): Conv -> Relu stays adjacent and the Q
      follows the activation, with the activation output's range. Any other fused
      activation (HardSwish, Sigmoid, LeakyRelu, a decomposed hard-swish group ...) is an
      op of its own: the producer's output gets a pair with its own range, so the producer
      can become an integer op.
    - A single-input elementwise activation (``UNARY_ACTIVATIONS``) whose input is quantized
      is quantized too (input DQ, output Q with its own range): lower-qdq makes it a table
      lookup on an 8-bit input and keeps it float between Dequantize / Quantize on a wider
      one. A marked activation group (a decomposed hard-swish) is quantized as one op; no
      pair sits inside it.
    - Concat, MaxPool and the data-movement ops share one scale over their inputs and output
      (the union of their ranges), so backends move integers without requantizing. The
      data-movement ops (Reshape, Transpose, Flatten, Squeeze, Unsqueeze) are quantized only
      when their input is.
    - Nodes that already read a DQ or feed a Q (a QAT export) are left as they are, and a
      tensor already followed by Q -> DQ keeps its pair.
    - The default-domain opset is raised to 13 for per-channel (``axis``) and to 21 for
      int16 / uint16 / int4 / uint4 (``upgrade-opset``, which adapts ops whose form changed:
      Squeeze axes ...); an op it cannot adapt is refused before anything changes.
    - The recurrent ops (LSTM, GRU, RNN) stay float. With ``recurrent_weights = "float16"``
      (``QuantConfig``) their constant W and R become float16 values in float32 tensors
      (``qgraph.quant.float16``), which x86's LSTM kernel streams in 2 bytes.
    - Control flow (If / Loop / Scan) stays float, bodies and all: a value a body reads from
      outside is read through its DQ where it has one (the IR holds that read as a use of the
      outer value), and a control-flow output gets a pair only where a quantized op reads it.

    Every quantized op therefore forms a canonical group for ``lower-qdq``: DQ inputs -> op
    [-> fused Relu / Clip, or the nodes of a hard-swish group] -> Q.

    Preconditions: ``calibrate`` (or a RangeMap in ``model.calibration``) gives a range for
    every float tensor a quantized op reads or writes; run ``canonicalize,fuse`` first.
    A tensor quantized wider than 8 bits takes the observed range where a clipping method
    (percentile, entropy, mse) chose a narrower one (``RangeMap.wide``): that clipping trades
    outliers for 8-bit resolution, which 16 bits do not need.
    Target rules: where the config names a target (``QuantConfig.target``, or the ``target``
    option), its ``qgraph.targets.rules.QuantRules`` decide what is written: op types it runs
    float stay float; weights are per channel only on the axis it allows (else per tensor) and
    symmetric where it needs zero point 0; an op's output takes the fixed scale / zero point
    the target gives it (the HTP's 16-bit Sigmoid / Tanh); the activations that meet in an op
    the target computes narrower (the HTP's activation x activation MatMul) take that type;
    the opset is raised to the target's minimum; a type the target does not run is an error.

    Options: ``config`` (a QuantConfig JSON file, see ``qgraph.quant.config``) and overrides
    of its global keys; from Python, ``InsertQDQ.from_config(QuantConfig(...))`` (or set the
    ``config_object`` attribute). Stats: ``quantized_nodes``, ``qdq_pairs`` (activation
    pairs), ``weights`` and ``biases`` (constants read through a DQ), and with
    ``recurrent_weights = "float16"`` ``float16_weights`` (recurrent weights rounded).
    """

    name = "insert-qdq"
    requires = ("calibrate",)  # when the pipeline calibrates, it does so first (else model.calibration)

    def __init__(self, config: Optional[str] = None, pow2_scales: Optional[bool] = None,
                 reduce_range: Optional[bool] = None, per_channel: Optional[bool] = None,
                 activation_dtype: Optional[str] = None, weight_dtype: Optional[str] = None,
                 target: Optional[str] = None, recurrent_weights: Optional[str] = None):
        self.config, self.pow2_scales, self.reduce_range = config, pow2_scales, reduce_range
        self.target, self.recurrent_weights = target, recurrent_weights
        self.per_channel, self.activation_dtype, self.weight_dtype = per_channel, activation_dtype, weight_dtype
        #: a QuantConfig object set from Python; used instead of ``config`` when set
        self.config_object: QuantConfig | None = None

    @classmethod
    def from_config(cls, config: QuantConfig, **options) -> "InsertQDQ":
        p = cls(**options)
        p.config_object = config
        return p

    def resolved_config(self) -> QuantConfig:
        """The config the pass runs with: the object or file, then the text options on top."""
        cfg = self.config_object or (QuantConfig.load(self.config) if self.config else QuantConfig())
        cfg = replace(cfg)
        if self.pow2_scales is not None:
            cfg.pow2_scales = self.pow2_scales
        if self.reduce_range is not None:
            cfg.reduce_range = self.reduce_range
        if self.per_channel is not None:
            cfg.weight = replace(cfg.weight, per_channel=self.per_channel)
        if self.activation_dtype is not None:
            cfg.activation = replace(cfg.activation, dtype=int_type(self.activation_dtype))
        if self.weight_dtype is not None:
            cfg.weight = replace(cfg.weight, dtype=int_type(self.weight_dtype))
        if self.target is not None:
            cfg.target = self.target
        if self.recurrent_weights is not None:
            cfg = replace(cfg, recurrent_weights=self.recurrent_weights)  # checked by the constructor
        return cfg

    def run(self, model: Model, analyses) -> PassResult:
        try:
            cfg = self.resolved_config()
        except ValueError as e:
            raise InsertQDQError(f"insert-qdq: {e}") from e
        return _Inserter(model, cfg).run()


class _Inserter:
    def __init__(self, model: Model, cfg: QuantConfig):
        self.model, self.g, self.cfg = model, model.graph, cfg
        self.units: dict[Node, _Unit] = {}
        self.quantized: dict[Value, None] = {}  # activation values to give a Q -> DQ pair, ordered
        self.readers: dict[Value, set[Node]] = {}  # quantized nodes that read a value through its DQ
        self.group_of: dict[Node, Node] = {}  # fused activation node -> the unit's node
        self.reader: dict[Value, Node] = {}  # a node reading the value (for error messages)
        self.parent: dict[Value, Value] = {}  # union-find of shared-scale classes
        self.params: dict[Value, QuantParams] = {}
        self.class_inits: dict[Value, tuple[Value, Value]] = {}
        self.replaced: list[Value] = []  # constants now read through a DQ
        self.dq_of: dict[Value, Value] = {}  # a quantized activation -> its DequantizeLinear's output
        self.opset_needed = 10
        self.counts = {"quantized_nodes": 0, "qdq_pairs": 0, "weights": 0, "biases": 0, "corrected_biases": 0}
        self.rules = target_rules(cfg.target)
        unknown = sorted(cfg.split_groups - set(fusion.GROUP_FORMS))
        if unknown:
            raise InsertQDQError(f"insert-qdq: split_groups names {unknown[0]!r}, not an activation group form; "
                                 f"the forms are {', '.join(fusion.GROUP_FORMS)}")
        if self.rules is not None:
            self.opset_needed = max(self.opset_needed, self.rules.min_opset)

    # -- 1. which nodes are quantized ---------------------------------------------------------
    def run(self) -> PassResult:
        member_of = self._activation_units()
        for node in list(self.g):
            if node in member_of:
                unit = member_of[node]
                if unit is None or unit.node is not node:
                    continue
            else:
                unit = self._unit(node)
            if unit is not None:
                self._add_unit(unit)
                if unit.node.op not in PASS_THROUGH_OPS:
                    self._want(unit.output, unit.node)
        self._propagate_from_inputs()
        if self.cfg.recurrent_weights == "float16":
            self.counts["float16_weights"] = self._round_recurrent_weights()
        if not self.units:
            return PassResult.changed(**self.counts) if self.counts.get("float16_weights") else PassResult.unchanged()
        self._choose_activation_params()
        self._plan_weights()
        self._upgrade_opset(check_only=True)  # refuse before changing anything
        self._rewrite()
        self._upgrade_opset()
        self.counts["quantized_nodes"] = len(self.units)
        return PassResult.changed(**self.counts)

    def _round_recurrent_weights(self) -> int:
        """``QuantConfig.recurrent_weights = "float16"``: the constant W and R of every LSTM,
        GRU and RNN replaced by their float16 values (float32 tensors, ``round_float16``); all
        are checked before any is replaced. Returns how many were."""
        rounded = []
        for node in self.g:
            for i in (1, 2) if node.op in RECURRENT_OPS else ():  # W, R
                v = node.inputs[i] if i < len(node.inputs) else None
                t = constant_tensor(v)
                if t is None or t.numpy().dtype != np.float32:
                    continue
                try:
                    rounded.append((node, i, v, round_float16(t.numpy())))
                except ValueError as e:
                    raise InsertQDQError(f"insert-qdq: {node.describe()}: weight '{v.name}' {e}; keep this model's "
                                         "recurrent weights float32 (recurrent_weights \"float32\")") from e
        for node, i, v, data in rounded:
            node.replace_input(i, self.g.add_initializer(v.name + "_float16", data))
            self._drop_if_unread(v)
        return len(rounded)

    def _drop_if_unread(self, v: Value) -> None:
        """Remove initializer ``v`` once nothing reads it (a weight replaced by its DQ or its rounding)."""
        if self.g.initializers.get(v.name) is v and not v.has_uses() and not v.is_graph_output():
            self.g.remove_initializer(v)

    def _upgrade_opset(self, check_only: bool = False) -> None:
        try:
            (check_upgrade if check_only else upgrade_opset)(self.model, self.opset_needed)
        except OpsetUpgradeError as e:
            raise InsertQDQError(f"insert-qdq: the quantized model needs opset {self.opset_needed}: {e}; "
                                 "or keep weights and activations per-tensor 8-bit") from e

    def _add_unit(self, unit: _Unit) -> None:
        self.units[unit.node] = unit
        for n in unit.members:
            self.group_of[n] = unit.node
        for _, v in unit.acts:
            readers = [n for n in (unit.node, *unit.members) if any(x is v for x in n.inputs)]
            self._want(v, unit.node, readers)

    def _activation_units(self) -> dict[Node, _Unit | None]:
        """Nodes of marked activation units -> the unit quantizing them (None: the group stays float)."""
        out: dict[Node, _Unit | None] = {}
        for node in self.g:
            form = node.metadata_props.get(fusion.ACTIVATION_GROUP_KEY)
            if form is not None and (form in self.cfg.split_groups
                                     or (self.rules is not None and form in self.rules.split_groups)):
                fusion.unmark(node)  # the config or the target asks for this group's ops one by one
            unit = fusion.marked_unit(node) if fusion.is_marked(node) else None
            if unit is None:
                continue
            producer = fusion.fused_producer(node)
            if producer is not None and _clamps(unit):
                core = self._unit(producer, output=unit.output)
                if core is not None:
                    core.members = unit.nodes
                for n in (producer, *unit.nodes):
                    out[n] = core
            elif unit.is_group:
                ok = not self._skipped(unit.root) and self._is_float(unit.input)
                core = _Unit(unit.root, [(0, unit.input)], [], unit.output, unit.nodes) if ok else None
                for n in unit.nodes:
                    out[n] = core
        return out

    def _skipped(self, node: Node) -> bool:
        if self.cfg.excludes(node) or node.graph is not self.g:
            return True
        if self.rules is not None and node.op_type in self.rules.float_ops:
            return True  # the target does not run it quantized
        # a QAT export: the node already reads a DQ or feeds a Q
        if any(v is not None and v.producer() is not None and v.producer().op is ops.DequantizeLinear
               for v in node.inputs):
            return True
        return any(u.op is ops.QuantizeLinear for o in node.outputs if o is not None for u in o.users())

    def _unit(self, node: Node, output: Value | None = None) -> _Unit | None:
        if node.op not in QUANTIZED_OPS or self._skipped(node) or not node.outputs:
            return None
        if len([o for o in node.outputs if o is not None]) != 1 or node.outputs[0] is None:
            return None  # MaxPool with Indices
        out = node.outputs[0]
        if output is None and _pair_free(out):
            return None  # handled with its activation (or stale: leave float)
        data = range(len(node.inputs))
        if node.op in _LINEAR:
            data = range(min(2, len(node.inputs)))
        elif node.op in (ops.AveragePool, ops.GlobalAveragePool, ops.MaxPool):
            data = range(1)
        acts, weights = [], []
        for i in data:
            v = node.inputs[i]
            if v is None:
                continue
            if not self._is_float(v):
                return None
            (weights if constant_tensor(v) is not None else acts).append((i, v))
        if not acts:
            return None
        if node.op is ops.Concat:  # constants of a Concat share its scale: quantized with it
            weights = []
        weight_idx = [i for i, _ in weights]
        if node.op in (ops.Conv, ops.ConvTranspose, ops.Gemm) and len(node.inputs) > 2 and node.inputs[2] is not None:
            if 1 in weight_idx and constant_tensor(node.inputs[2]) is not None:
                weight_idx.append(2)
            elif constant_tensor(node.inputs[2]) is None:
                return None  # a computed bias: leave the node float
        return _Unit(node, acts, weight_idx, output or out)

    def _is_float(self, v: Value) -> bool:
        return v.dtype is None or v.dtype in _FLOAT

    def _want(self, v: Value, node: Node, readers: list[Node] = ()) -> None:
        if _pair_free(v):
            return
        self.readers.setdefault(v, set()).update(readers)
        if _existing_dq(v) is not None:
            return
        self.quantized.setdefault(v)
        self.reader.setdefault(v, node)
        self.parent.setdefault(v, v)

    def _propagate_from_inputs(self) -> None:
        """Quantize, in dataflow order, the ops quantized because their input is: data movement
        (sharing the input's scale) and unary activations (their output with its own range)."""
        for node in self.g:
            if node.op is ops.MaxPool and node in self.units:
                self._union(node.inputs[0], node.outputs[0])
            elif node.op is ops.Concat and node in self.units:
                for i, v in self.units[node].acts:
                    self._union(v, node.outputs[0])
            elif node.op in PASS_THROUGH_OPS | UNARY_ACTIVATIONS and node not in self.units:
                x = node.inputs[0] if node.inputs else None
                if x is None or x not in self.quantized or self._skipped(node) or len(node.outputs) != 1:
                    continue
                if node.op in UNARY_ACTIVATIONS and (len(node.inputs) != 1 or not self._is_float(node.outputs[0])
                                                     or _pair_free(node.outputs[0])):  # inside a hard-swish group
                    continue
                self._add_unit(_Unit(node, [(0, x)], [], node.outputs[0]))
                self._want(node.outputs[0], node)
                if node.op in PASS_THROUGH_OPS:
                    self._union(x, node.outputs[0])

    def _find(self, v: Value) -> Value:
        while self.parent[v] is not v:
            self.parent[v] = self.parent[self.parent[v]]
            v = self.parent[v]
        return v

    def _union(self, a: Value, b: Value) -> None:
        if a in self.parent and b in self.parent:
            self.parent[self._find(b)] = self._find(a)

    # -- 2. activation parameters -------------------------------------------------------------
    def _range(self, v: Value, wide: bool = False) -> tuple[float, float]:
        where = f"tensor '{v.name}' (read or written by {self.reader[v].describe()})"
        cal = self.model.calibration
        if cal is None:
            raise InsertQDQError(f"insert-qdq: the model has no calibration ranges; {where} needs one: "
                                 "run `calibrate` first")
        iv = cal.wide(v.name) if wide and hasattr(cal, "wide") else cal.get(v.name)
        if iv is None:
            raise InsertQDQError(f"insert-qdq: no calibrated range for {where}: run `calibrate` after the "
                                 "passes that create it, or exclude the node")
        if not np.isfinite(iv.lo) or not np.isfinite(iv.hi):
            raise InsertQDQError(f"insert-qdq: the range of {where} is unbounded [{iv.lo}, {iv.hi}]")
        return iv.lo, iv.hi

    def _act_scheme(self, v: Value) -> tuple[TensorScheme, bool]:
        p = v.producer()
        node = self._group_node(p) if p is not None else None
        return self.cfg.activation_scheme(v.name, node), self.cfg.is_overridden(v.name, node)

    def _group_node(self, p: Node) -> Node:
        """The node whose config decides ``p``'s output: the fused producer of an activation."""
        return self.group_of.get(p, p)

    def _choose_activation_params(self) -> None:
        classes: dict[Value, list[Value]] = {}
        for v in self.quantized:
            classes.setdefault(self._find(v), []).append(v)
        for members in classes.values():
            scheme = self._target_scheme(members, self._class_scheme(members))
            lo, hi = np.inf, -np.inf
            for v in members:  # a clipping method's range is for 8 bits: a wider type takes all observed
                a, b = self._range(v, wide=scheme.dtype.bits > 8)
                lo, hi = min(lo, a), max(hi, b)
            for c in self._concat_constants(members):
                lo, hi = min(lo, float(c.min(initial=0))), max(hi, float(c.max(initial=0)))
            params = self._fixed_params(members, scheme) or choose_params(
                lo, hi, scheme.dtype, symmetric=scheme.symmetric, pow2=self.cfg.pow2_scales)
            self._note_dtype(scheme.dtype.name)
            for v in members:
                self.params[v] = params

    def _target_scheme(self, members: list[Value], scheme: TensorScheme) -> TensorScheme:
        """``scheme`` as the target runs it: narrowed where the class feeds an op that meets two
        activations in a narrower type (``QuantRules.narrow_act_pairs``), or is that op's output
        where the target wants one type per op (``same_act_types``); an error for a type the
        target does not run."""
        rules = self.rules
        if rules is None:
            return scheme
        for v in members:  # its readers, and (the types agree inside a node unit) its producer
            producer = self._group_node(v.producer()) if v.producer() is not None else None
            for node in (*self.readers.get(v, ()), *([producer] if rules.same_act_types and producer else [])):
                unit = self.units.get(node)
                narrow = rules.narrow_act_pairs.get(node.op_type)
                if unit is not None and narrow is not None and len(unit.acts) >= 2 \
                        and scheme.dtype.bits > int_type(narrow).bits:
                    scheme = replace(scheme, dtype=int_type(narrow))
        if scheme.dtype.name not in rules.activation_dtypes:
            v = members[0]
            raise InsertQDQError(f"insert-qdq: target '{self.cfg.target}' does not run {scheme.dtype.name} "
                                 f"activations (tensor '{v.name}', read or written by {self.reader[v].describe()}); "
                                 f"it runs {', '.join(sorted(rules.activation_dtypes))}")
        return scheme

    def _fixed_params(self, members: list[Value], scheme: TensorScheme) -> QuantParams | None:
        """The scale / zero point the target fixes for the output of one of ``members``' producers."""
        if self.rules is None:
            return None
        for v in members:
            p = v.producer()
            if p is None:
                continue
            fixed = self.rules.fixed_outputs.get((self._group_node(p).op_type, scheme.dtype.name))
            if fixed is not None:
                return QuantParams(np.float32(fixed[0]), fixed[1], scheme.dtype)
        return None

    def _weight_form(self, node: Node, i: int, ndim: int, scheme: TensorScheme) -> tuple[int | None, bool]:
        """(per-channel axis or None, symmetric) of weight input ``i`` of ``node``: the config's
        scheme, within what the target runs."""
        axis = _channel_axis(node, i, ndim) if scheme.per_channel else None
        if self.rules is None:
            return axis, scheme.symmetric
        if scheme.dtype.name not in self.rules.weight_dtypes:
            raise InsertQDQError(f"insert-qdq: target '{self.cfg.target}' does not run {scheme.dtype.name} weights "
                                 f"({node.describe()}, input '{node.inputs[i].name}'); it runs "
                                 f"{', '.join(sorted(self.rules.weight_dtypes))}")
        return self.rules.weight_axis(node.op_type, axis), scheme.symmetric or self.rules.symmetric_weights

    def _concat_constants(self, members: list[Value]):
        for v in members:
            p = v.producer()
            if p is not None and p.op is ops.Concat and p in self.units:
                for x in p.inputs:
                    t = constant_tensor(x)
                    if t is not None:
                        yield np.asarray(t.numpy(), np.float32)

    def _class_scheme(self, members: list[Value]) -> TensorScheme:
        found = [(v, *self._act_scheme(v)) for v in members]
        explicit = {(s.dtype, s.symmetric): v for v, s, over in found if over}
        if len(explicit) > 1:
            (a, b) = list(explicit.values())[:2]
            raise InsertQDQError(f"insert-qdq: tensors '{a.name}' and '{b.name}' must share one scale "
                                 "(Concat / pooling / data movement) but the config gives them different schemes")
        for v, s, over in found:
            if over:
                return s
        return found[0][1]

    def _note_dtype(self, name: str) -> None:
        if name not in ("int8", "uint8"):
            self.opset_needed = max(self.opset_needed, 21)

    def _plan_weights(self) -> None:
        """Note the opset the weights need (per channel: 13; 16- / 4-bit: 21) before rewriting."""
        for unit in self.units.values():
            for i in unit.weights:
                if i == 2:
                    continue
                w = unit.node.inputs[i]
                scheme = self.cfg.weight_scheme(w.name, unit.node)
                self._note_dtype(scheme.dtype.name)
                if self._weight_form(unit.node, i, len(constant_tensor(w).shape), scheme)[0] is not None:
                    self.opset_needed = max(self.opset_needed, 13)

    # -- 3. the rewrite ------------------------------------------------------------------------
    def _rewrite(self) -> None:
        for v in self.quantized:
            self._insert_pair(v)
        for v, readers in self.readers.items():  # tensors a QAT export already quantized
            dq = _existing_dq(v) if v not in self.quantized else None
            for node, i in (v.uses() if dq is not None else ()):
                if node in readers:
                    node.replace_input(i, dq)
        for unit in self.units.values():
            if unit.node.op is ops.Concat:
                self._concat_constant_inputs(unit)
            elif unit.weights:
                self._quantize_weights(unit)
        if self.rules is not None and self.rules.same_act_types:
            for unit in list(self.units.values()):
                self._convert_inputs(unit)
        for v in self.replaced:  # float weights no one reads any more
            self._drop_if_unread(v)

    def _insert_pair(self, v: Value) -> None:
        params = self.params[v]
        g, base = self.g, v.name
        root = self._find(v)  # a shared-scale class shares its scale / zero-point initializers
        if root not in self.class_inits:
            self.class_inits[root] = self._param_inits(root.name, params)
        scale, zp = self.class_inits[root]
        q = Value(g.unique_name(base + "_quantized"), TensorType(DType(params.dtype.onnx), v.shape))
        dq = Value(g.unique_name(base + "_dequantized"), v.type)
        qn = Node(ops.QuantizeLinear, [v, scale, zp], [q], name=g.unique_name(base + "_QuantizeLinear"))
        dqn = Node(ops.DequantizeLinear, [q, scale, zp], [dq], name=g.unique_name(base + "_DequantizeLinear"))
        p = v.producer()
        if p is not None:
            g.insert_after(p, [qn, dqn])
        else:
            first = next(iter(g), None)
            g.insert_before(first, [qn, dqn]) if first is not None else g.extend([qn, dqn])
        self.dq_of[v] = dq
        produced_quantized = p is not None and self._group_node(p) in self.units
        readers = self.readers.get(v, set())
        for node, i in v.uses():
            if node is not qn and (produced_quantized or node in readers):
                node.replace_input(i, dq)
        if produced_quantized and v.is_graph_output():
            v.name = g.unique_name(base + "_float")
            dq.name = base
            g.outputs.replace(v, dq)
        self.counts["qdq_pairs"] += 1

    def _convert_inputs(self, unit: _Unit) -> None:
        """Where the target needs an op's activation inputs in its output's type
        (``QuantRules.same_act_types``: ONNX Runtime's QDQ node units, which the QNN EP takes
        whole, need them equal), an input of another type is converted on the way in:
        ``DQ(x) -> Q(x, output type) -> DQ`` (a mixed-precision boundary, e.g. W8A8 -> W8A16)."""
        out = self.params.get(unit.output)
        if out is None or unit.node.op in SHARED_SCALE_OPS:
            return
        g = self.g
        for _, v in unit.acts:
            dq = self.dq_of.get(v)
            p = self.params.get(v)
            if dq is None or p is None or p.dtype == out.dtype:
                continue
            lo, hi = self._range(v, wide=out.dtype.bits > 8)
            params = choose_params(lo, hi, out.dtype, pow2=self.cfg.pow2_scales)
            base = f"{v.name}_as_{out.dtype.name}"
            scale, zp = self._param_inits(base, params)
            q = Value(g.unique_name(base + "_quantized"), TensorType(DType(params.dtype.onnx), v.shape))
            d = Value(g.unique_name(base + "_dequantized"), v.type)
            nodes = [Node(ops.QuantizeLinear, [dq, scale, zp], [q], name=g.unique_name(base + "_QuantizeLinear")),
                     Node(ops.DequantizeLinear, [q, scale, zp], [d], name=g.unique_name(base + "_DequantizeLinear"))]
            g.insert_after(dq.producer(), nodes)
            for n in (unit.node, *unit.members):
                for i, x in enumerate(n.inputs):
                    if x is dq:
                        n.replace_input(i, d)
            self._note_dtype(out.dtype.name)
            self.counts["qdq_pairs"] += 1

    def _param_inits(self, base: str, params: QuantParams) -> tuple[Value, Value]:
        scale = self.g.add_initializer(base + "_scale", params.scale.copy())
        zp = self.g.add_initializer(base + "_zero_point", _int_tensor(params.zero_point, params))
        if params.axis is not None:
            self.opset_needed = max(self.opset_needed, 13)
        return scale, zp

    def _input_scale(self, v: Value) -> np.ndarray:
        if v in self.params:
            return self.params[v].scale
        dq = (_existing_dq(v) or v).producer()
        if dq is None or dq.op is not ops.DequantizeLinear:
            raise InsertQDQError(f"insert-qdq: cannot read the scale of the quantized tensor '{v.name}': "
                                 "no DequantizeLinear produces it")
        try:
            return read_qdq(dq).scale
        except QDQParamsError as e:
            raise InsertQDQError(f"insert-qdq: cannot read the scale of the quantized tensor '{v.name}': {e}") from e

    def _quantize_weights(self, unit: _Unit) -> None:
        node = unit.node
        w_params = bias = x_scale = None
        for i in unit.weights:
            if i == 2:
                continue
            w = node.inputs[i]
            data = np.asarray(constant_tensor(w).numpy(), np.float32)
            scheme = self.cfg.weight_scheme(w.name, node)
            axis, symmetric = self._weight_form(node, i, data.ndim, scheme)
            params = choose_weight_params(data, scheme.dtype, axis=axis, symmetric=symmetric,
                                          reduce_range=self.cfg.reduce_range, pow2=self.cfg.pow2_scales,
                                          clip=self.cfg.weight_clip)
            if i == 1 and 2 in unit.weights:
                bias = self._quantizable_bias(node, params)
                if bias is not None:  # a dead channel's tiny scale would overflow the int32 bias
                    x = next(v for k, v in unit.acts if k == 0)
                    x_scale = self._input_scale(x)
                    params = fit_weight_scale_to_bias(params, bias, x_scale, pow2=self.cfg.pow2_scales)
                    corrected = self._corrected_bias(node, x, data, params, bias)
                    if corrected is not None:
                        bias = corrected
                        params = fit_weight_scale_to_bias(params, bias, x_scale, pow2=self.cfg.pow2_scales)
            self._note_dtype(scheme.dtype.name)
            self._dq_constant(node, i, quantize(data, params), params)
            self.counts["weights"] += 1
            if i == 1:
                w_params = params
        if bias is not None:
            q, bp = quantize_bias(bias, x_scale, w_params.scale)
            self._dq_constant(node, 2, q, bp)
            self.counts["biases"] += 1

    def _corrected_bias(self, node: Node, x: Value, w: np.ndarray, params: QuantParams,
                        bias: np.ndarray) -> np.ndarray | None:
        """``bias - (W_q - W) . E[x]`` per output channel (``QuantConfig.bias_correction``):
        the mean shift the weights' rounding causes on the calibration data, which a bias can
        absorb exactly. None where off or not known (no calibration means for the input)."""
        ranges = self.model.calibration
        if not self.cfg.bias_correction or ranges is None:
            return None
        entry = ranges.means.get(x.name)  # x: the float activation the node reads (before its Q/DQ pair)
        if entry is None:
            return None
        delta = weight_rounding_shift(node, w, dequantize(quantize(w, params), params), entry[1])
        if delta is None or delta.shape != bias.shape or not np.all(np.isfinite(delta)):
            return None
        self.counts["corrected_biases"] += 1
        return (bias.astype(np.float64) - delta).astype(np.float32)

    @staticmethod
    def _quantizable_bias(node: Node, w_params: QuantParams) -> np.ndarray | None:
        """The float bias (input 2) of ``node`` as int32 can hold it: one value per output channel."""
        bias = np.asarray(constant_tensor(node.inputs[2]).numpy(), np.float32)
        n_out = w_params.scale.size if w_params.axis is not None else None
        if bias.ndim != 1 or (n_out is not None and bias.shape[0] != n_out):
            return None  # Gemm C that broadcasts: left float
        return bias

    def _dq_constant(self, node: Node, i: int, q: np.ndarray, params: QuantParams) -> None:
        g, w = self.g, node.inputs[i]
        base = w.name
        qi = g.add_initializer(base + "_quantized", _int_tensor(q, params))
        scale, zp = self._param_inits(base, params)
        attrs = {"axis": params.axis} if params.axis is not None else {}
        out = Value(g.unique_name(base + "_dequantized"), TensorType(DType.FLOAT, qi.shape))
        g.insert_before(node, Node(ops.DequantizeLinear, [qi, scale, zp], [out], attrs,
                                   name=g.unique_name(base + "_DequantizeLinear")))
        node.replace_input(i, out)
        self.replaced.append(w)

    def _concat_constant_inputs(self, unit: _Unit) -> None:
        node = unit.node
        params = self.params[unit.output] if unit.output in self.params else None
        if params is None:
            return
        for i, x in enumerate(node.inputs):
            t = constant_tensor(x)
            if t is not None:
                self._dq_constant(node, i, quantize(np.asarray(t.numpy(), np.float32), params), params)


def target_rules(name: str | None):
    """The ``QuantRules`` of target ``name`` (None: no target, or one without rules)."""
    if name is None:
        return None
    from qgraph.targets import UnknownTargetError, get

    try:
        return get(name).quant
    except UnknownTargetError as e:
        raise InsertQDQError(f"insert-qdq: {e}") from e


def _clamps(unit: fusion.Activation) -> bool:
    """Whether requantization can apply activation ``unit``: clamping to y_qmin / y_qmax."""
    return not unit.is_group and unit.root.op in CLAMPING_ACTIVATIONS


def _pair_free(v: Value) -> bool:
    """Whether ``v`` must stay without a Q/DQ pair: a value inside a marked activation group, or
    the output of a producer fused with an activation that requantization clamps (Relu, Clip).

    The output of a producer fused with any other activation (HardSwish, Sigmoid, a hard-swish
    group ...) gets its own pair: an integer op cannot apply that activation, so lower-qdq
    needs the producer's result quantized to make the producer integer.
    """
    if not fusion.is_fused_edge(v):
        return False
    p = v.producer()
    if p.op in fusion.FUSABLE_PRODUCERS and v.index == 0:
        act = fusion.fused_activation(p)
        if act is not None:
            unit = fusion.marked_unit(act)
            return unit is not None and _clamps(unit)
    return True


def _existing_dq(v: Value) -> Value | None:
    """The output of a DequantizeLinear that reads a QuantizeLinear of ``v`` (a QAT pair), if any."""
    for u in v.users():
        if u.op is ops.QuantizeLinear and u.inputs[0] is v:
            for d in u.outputs[0].users():
                if d.op is ops.DequantizeLinear:
                    return d.outputs[0]
    return None


def _int_tensor(a: np.ndarray, params: QuantParams):
    from qgraph.ir.tensor import Tensor

    return Tensor(np.asarray(a).astype(params.dtype.storage), DType(params.dtype.onnx))


def weight_rounding_shift(node: Node, w: np.ndarray, wq: np.ndarray, mean_x: np.ndarray) -> np.ndarray | None:
    """Per output channel, the mean change of ``node``'s output when its weights ``w`` become
    ``wq``, for an input whose per-channel mean is ``mean_x``: ``sum (wq - w) * E[x]`` over
    the reduction (a Conv's input channels of its group and kernel taps; zero padding is not
    counted). None for a layout it does not know."""
    d = np.asarray(wq, np.float64) - np.asarray(w, np.float64)
    m = np.asarray(mean_x, np.float64).reshape(-1)
    g = int(node.attr("group", 1) or 1)
    if node.op is ops.Conv and d.ndim >= 3:
        out_c, cg = d.shape[:2]
        if m.size != cg * g or out_c % g:
            return None
        mx = m.reshape(g, cg)[np.repeat(np.arange(g), out_c // g)]  # [M, C/g]: the inputs each output reads
        return (d.reshape(out_c, cg, -1).sum(axis=2) * mx).sum(axis=1)
    if node.op is ops.ConvTranspose and d.ndim >= 3:
        cin, mg = d.shape[:2]
        if m.size != cin or cin % g:
            return None
        per = d.reshape(cin, mg, -1).sum(axis=2) * m[:, None]  # [C, M/g]
        return per.reshape(g, cin // g, mg).sum(axis=1).reshape(-1)
    if node.op is ops.Gemm and d.ndim == 2:
        d = d.T if node.attr("transB", 0) else d  # [K, N]
        return m @ d if m.size == d.shape[0] else None
    return None


def _channel_axis(node: Node, i: int, ndim: int) -> int | None:
    """The output-channel axis of constant input ``i`` of ``node`` (None: per tensor)."""
    if ndim < 2:
        return None
    if node.op is ops.Conv and i == 1:
        return 0
    if node.op is ops.ConvTranspose and i == 1:
        return 1 if node.attr("group", 1) == 1 else None
    if node.op is ops.Gemm and i == 1:
        return 0 if node.attr("transB", 0) else 1
    if node.op is ops.MatMul and i == 1:
        return ndim - 1
    return None


PASSES = (InsertQDQ,)
