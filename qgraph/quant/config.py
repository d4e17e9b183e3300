"""Quantization configuration: which tensors become which integer type, and which stay float.

A ``QuantConfig`` holds global defaults and overrides; ``insert-qdq`` asks it for the
scheme of each activation tensor (``activation_scheme``) and each weight
(``weight_scheme``) and whether a node is excluded (``excludes``).

Defaults (ONNX Runtime's QDQ defaults with ``per_channel=True``): activations uint8,
asymmetric, per tensor; weights int8, symmetric, per channel on the output-channel axis;
biases int32 with scale ``scale_x * scale_w`` (always).

Precedence, most specific first:

- a **weight** (a constant input of a quantized node): tensor override (its name), then the
  consuming node's name override, then its op type override, then ``weight``;
- an **activation** tensor: tensor override, then the override of the node that produces it
  (name, then op type; for the output of a fused Relu / Clip, the producer it is fused
  with, e.g. the Conv of Conv + Relu; for a decomposed hard-swish group, its last node), then
  ``activation``. Other activations (HardSwish, Sigmoid ...) are quantized as ops of their
  own: their output follows their own node's override, the producer's output the
  producer's. A node override therefore sets the type of the node's *outputs*; to change
  what a node reads, override its input tensor (or the node producing it). Graph inputs take
  tensor overrides and the global default.

JSON form (every key optional; unknown keys are errors naming the key)::

    {
      "activation": {"dtype": "uint8", "symmetric": false},
      "weight": {"dtype": "int8", "symmetric": true, "per_channel": true},
      "pow2_scales": false,
      "reduce_range": false,
      "bias_correction": true,
      "weight_clip": "minmax",
      "exclude": ["Softmax", "head/conv_out"],
      "op_types": {"MatMul": {"activation": {"dtype": "int16"}}},
      "nodes": {"conv1": {"weight": {"dtype": "int4"}, "activation": {"dtype": "uint16"}}},
      "tensors": {"input": {"dtype": "int8", "symmetric": true}},
      "batch_axes": {"state": 1, "sr": null},
      "split_groups": ["x*Sigmoid(x)"],
      "target": "qnn",
      "recurrent_weights": "float16"
    }

- ``dtype``: one of int8, uint8, int16, uint16, int4, uint4 (16- and 4-bit types need
  opset 21; ``insert-qdq`` raises the model's opset).
- ``symmetric``: symmetric range around 0 (zero point 0 for signed types, the middle of the
  range for unsigned ones).
- ``per_channel``: weights only; one scale per output channel.
- ``pow2_scales``: every scale rounded up to a power of two (NPUs that shift); bias scales,
  being products of two, are then powers of two too.
- ``bias_correction``: each Conv / ConvTranspose / Gemm bias absorbs the mean shift its
  weights' rounding causes on the calibration data: ``bias -= (W_q - W) . E[x]`` per output
  channel, with ``E[x]`` the per-channel mean of its input from calibration (as NNCF's and
  OpenVINO's default bias correction). Off: the float bias as given.
- ``weight_clip``: how a weight's range is chosen (``qgraph.quant.params.choose_weight_params``):
  ``"minmax"`` (the default: its min / max, as ORT) or ``"mse"`` (per channel, the range shrunk
  to the least squared quantization error). Measured at 4-bit weights: the digits CNN's PTQ
  W4A4 96.8% -> 97.6% with ``"mse"`` (QAT from either start 97.6-98.0%); PP-OCRv4 rec's PTQ
  W4A8 0% either way, and QAT from the ``"mse"`` start 97.8% against 98.2% (bench/qat_ocr.py):
  not a default on that evidence.
- ``reduce_range``: ORT's 7-bit weights (int8 [-64, 64]) for CPUs whose u8 x s8 kernels
  saturate; applies to weights only.
- ``exclude``: node names or op types left in float.
- ``op_types`` / ``nodes``: ``{"activation": partial scheme, "weight": partial scheme}``;
  ``tensors``: a partial scheme (``per_channel`` only for weights). A partial scheme changes
  only the keys it names.
- ``batch_axes``: input name -> the axis that holds its samples in the data and its batch in
  the model (default 0; rank-0 inputs none), or ``null`` / ``-1``: no sample axis, the same
  value for every sample (see ``qgraph.batching``). Not a quantization choice, but kept here
  so that one file describes how a model is fed, and saved with the compiled folder.
- ``split_groups``: activation group forms (``qgraph.ir.fusion.GROUP_FORMS``) quantized op by
  op instead of as one activation: ``["x*Sigmoid(x)"]`` writes SiLU as a quantized Sigmoid and
  a quantized Mul (ONNX Runtime's quantizer's form, which it runs as QLinearSigmoid and
  QLinearMul; qgraph's default rounds once, and ORT runs the float ops between its DQ and Q).
- ``target``: a ``qgraph.targets`` name whose quantization rules ``insert-qdq`` follows
  (``qnn``: what the Qualcomm HTP runs, ``qgraph.targets.qnn``); absent: no target rules.
  The config names it (not only the command line) so that every ``insert-qdq`` run of one
  compile, the mixed-precision probes included, writes what the target runs.
- ``recurrent_weights``: ``"float32"`` (the default) or ``"float16"``: the weights (W, R) of
  the recurrent ops, which stay float, rounded to float16 values and still computed in
  float32 (``qgraph.quant.float16``). The graph holds the rounded values, so every runtime and
  the reference compute the same thing; x86's LSTM kernel streams them in 2 bytes instead of 4
  (its time loop reads every recurrence weight once a step). A precision choice: the report's
  SQNR against float includes it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping

from qgraph.errors import QGraphError
from qgraph.quant.float16 import RECURRENT_WEIGHT_TYPES
from qgraph.quant.params import INT_TYPES, WEIGHT_CLIPS, IntType, int_type

#: integer types a tensor may be quantized to (int32 is for biases only)
TENSOR_DTYPES = ("int8", "uint8", "int16", "uint16", "int4", "uint4")


class QuantConfigError(QGraphError):
    """A quantization configuration is malformed; the message names the key."""


@dataclass(frozen=True)
class TensorScheme:
    """How one tensor is quantized.

    Attributes:
        dtype: the integer type (one of ``TENSOR_DTYPES``).
        symmetric: symmetric range around 0.
        per_channel: one scale per output channel (weights only).
    """

    dtype: IntType
    symmetric: bool = False
    per_channel: bool = False

    def __post_init__(self):
        if self.dtype.name not in TENSOR_DTYPES:
            raise QuantConfigError(f"dtype {self.dtype.name} cannot quantize a tensor; choose one of "
                                   f"{', '.join(TENSOR_DTYPES)}")

    def merged(self, partial: Mapping[str, Any]) -> "TensorScheme":
        """This scheme with the keys of a parsed partial scheme replaced."""
        return replace(self, **partial) if partial else self

    def to_json(self) -> dict:
        return {"dtype": self.dtype.name, "symmetric": self.symmetric, "per_channel": self.per_channel}


@dataclass(frozen=True)
class Override:
    """Partial schemes for a node name or an op type (parsed: ``{"dtype": IntType, ...}``)."""

    activation: Mapping[str, Any] = field(default_factory=dict)
    weight: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict:
        out = {}
        for key in ("activation", "weight"):
            part = getattr(self, key)
            if part:
                out[key] = _partial_to_json(part)
        return out


@dataclass
class QuantConfig:
    """Global quantization defaults, overrides and exclusions (see the module doc).

    Attributes:
        activation: default scheme of activation tensors.
        weight: default scheme of weights.
        pow2_scales: round every scale up to a power of two.
        reduce_range: ORT's reduced (7-bit) weight range.
        bias_correction: biases absorb the mean shift of their weights' rounding.
        weight_clip: ``"minmax"`` or ``"mse"`` (``qgraph.quant.params.WEIGHT_CLIPS``).
        exclude: node names or op types kept float.
        op_types: overrides by op type (``"Conv"``).
        nodes: overrides by node name.
        tensors: partial schemes by tensor name.
        batch_axes: input name -> sample axis, or None for an input without one.
        target: the ``qgraph.targets`` name whose quantization rules apply, or None.
        split_groups: activation group forms quantized op by op.
        recurrent_weights: ``"float32"``, or ``"float16"``: the weights of the recurrent ops
            (LSTM, GRU, RNN: they stay float) rounded to float16 values, still computed in
            float32 (``qgraph.quant.float16``); a kernel streams them in half the bytes.
    """

    activation: TensorScheme = field(default_factory=lambda: TensorScheme(int_type("uint8")))
    weight: TensorScheme = field(default_factory=lambda: TensorScheme(int_type("int8"), True, True))
    pow2_scales: bool = False
    reduce_range: bool = False
    bias_correction: bool = True
    weight_clip: str = "minmax"
    exclude: tuple[str, ...] = ()
    op_types: dict[str, Override] = field(default_factory=dict)
    nodes: dict[str, Override] = field(default_factory=dict)
    tensors: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    batch_axes: dict[str, int | None] = field(default_factory=dict)
    target: str | None = None
    split_groups: frozenset[str] = frozenset()
    recurrent_weights: str = "float32"

    def __post_init__(self):
        if self.activation.per_channel:
            raise QuantConfigError("activation: per_channel applies to weights only")
        self.exclude = tuple(self.exclude)
        if self.weight_clip not in WEIGHT_CLIPS:
            raise QuantConfigError(f"weight_clip must be one of {', '.join(WEIGHT_CLIPS)}, "
                                   f"got {self.weight_clip!r}")
        self.split_groups = frozenset(self.split_groups)  # names checked by insert-qdq (qgraph.ir.fusion)
        if self.recurrent_weights not in RECURRENT_WEIGHT_TYPES:
            raise QuantConfigError(f"recurrent_weights must be one of {', '.join(RECURRENT_WEIGHT_TYPES)}, "
                                   f"got {self.recurrent_weights!r}")

    # -- queries ------------------------------------------------------------------------------
    def excludes(self, node) -> bool:
        """Whether ``node`` (a ``qgraph.ir.Node``) stays float."""
        return node.name in self.exclude or node.op_type in self.exclude

    def _node_override(self, node) -> tuple[Override | None, Override | None]:
        return self.nodes.get(node.name) if node is not None else None, \
            self.op_types.get(node.op_type) if node is not None else None

    def weight_scheme(self, tensor: str, consumer) -> TensorScheme:
        """The scheme of weight ``tensor`` read by node ``consumer``."""
        by_name, by_op = self._node_override(consumer)
        scheme = self.weight
        for o in (by_op, by_name):
            if o is not None:
                scheme = scheme.merged(o.weight)
        return scheme.merged(self.tensors.get(tensor, {}))

    def activation_scheme(self, tensor: str, producer=None) -> TensorScheme:
        """The scheme of activation ``tensor`` produced by node ``producer`` (None: a graph input)."""
        by_name, by_op = self._node_override(producer)
        scheme = self.activation
        for o in (by_op, by_name):
            if o is not None:
                scheme = scheme.merged(o.activation)
        scheme = scheme.merged(self.tensors.get(tensor, {}))
        if scheme.per_channel:
            where = f"tensor '{tensor}'" + (f" (output of {producer.describe()})" if producer is not None else "")
            raise QuantConfigError(f"{where}: per_channel applies to weights only")
        return scheme

    def is_overridden(self, tensor: str, producer=None) -> bool:
        """Whether an override (not the global default) decides activation ``tensor``'s scheme."""
        by_name, by_op = self._node_override(producer)
        return tensor in self.tensors or any(o is not None and o.activation for o in (by_name, by_op))

    # -- JSON ---------------------------------------------------------------------------------
    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "quantization config") -> "QuantConfig":
        """Parse the JSON form (a dict); errors name the bad key as a path, e.g. ``nodes.conv1.weight.dtype``."""
        obj = _object(data, where)
        known = {"activation", "weight", "pow2_scales", "reduce_range", "bias_correction", "weight_clip", "exclude",
                 "op_types", "nodes", "tensors", "batch_axes", "target", "split_groups", "recurrent_weights"}
        _no_unknown(obj, known, where)
        kw: dict[str, Any] = {}
        defaults = cls()
        if "activation" in obj:
            kw["activation"] = defaults.activation.merged(_partial(obj["activation"], f"{where}: activation"))
        if "weight" in obj:
            kw["weight"] = defaults.weight.merged(_partial(obj["weight"], f"{where}: weight"))
        for key in ("pow2_scales", "reduce_range", "bias_correction"):
            if key in obj:
                kw[key] = _bool(obj[key], f"{where}: {key}")
        if "weight_clip" in obj:
            kw["weight_clip"] = obj["weight_clip"]  # checked by the constructor
        if "exclude" in obj:
            ex = obj["exclude"]
            if not isinstance(ex, list) or not all(isinstance(x, str) for x in ex):
                raise QuantConfigError(f"{where}: exclude must be a list of node names or op types, got {ex!r}")
            kw["exclude"] = tuple(ex)
        for key in ("op_types", "nodes"):
            if key in obj:
                kw[key] = {name: _override(o, f"{where}: {key}.{name}")
                           for name, o in _object(obj[key], f"{where}: {key}").items()}
        if "tensors" in obj:
            kw["tensors"] = {name: _partial(p, f"{where}: tensors.{name}")
                             for name, p in _object(obj["tensors"], f"{where}: tensors").items()}
        if "batch_axes" in obj:
            from qgraph import batching

            try:
                kw["batch_axes"] = batching.parse_mapping(_object(obj["batch_axes"], f"{where}: batch_axes"),
                                                          f"{where}: batch_axes")
            except QuantConfigError:
                raise
            except QGraphError as e:
                raise QuantConfigError(str(e)) from e
        if "target" in obj:
            if obj["target"] is not None and not isinstance(obj["target"], str):
                raise QuantConfigError(f"{where}: target must be a target name, got {obj['target']!r}")
            kw["target"] = obj["target"]
        if "split_groups" in obj:
            sg = obj["split_groups"]
            if not isinstance(sg, list) or not all(isinstance(x, str) for x in sg):
                raise QuantConfigError(f"{where}: split_groups must be a list of activation group forms, got {sg!r}")
            kw["split_groups"] = frozenset(sg)
        if "recurrent_weights" in obj:
            kw["recurrent_weights"] = obj["recurrent_weights"]  # checked by the constructor
        try:
            return cls(**kw)
        except QuantConfigError as e:
            raise QuantConfigError(f"{where}: {e}") from e

    def to_json(self) -> dict:
        """The JSON form; ``from_json(to_json())`` gives an equal config."""
        out = {
            "activation": {k: v for k, v in self.activation.to_json().items() if k != "per_channel"},
            "weight": self.weight.to_json(),
            "pow2_scales": self.pow2_scales,
            "reduce_range": self.reduce_range,
            "bias_correction": self.bias_correction,
            "weight_clip": self.weight_clip,
            "exclude": list(self.exclude),
            "op_types": {k: v.to_json() for k, v in self.op_types.items()},
            "nodes": {k: v.to_json() for k, v in self.nodes.items()},
            "tensors": {k: _partial_to_json(v) for k, v in self.tensors.items()},
            "batch_axes": dict(self.batch_axes),
        }
        if self.target is not None:
            out["target"] = self.target
        if self.split_groups:
            out["split_groups"] = sorted(self.split_groups)
        if self.recurrent_weights != "float32":
            out["recurrent_weights"] = self.recurrent_weights
        return out

    @classmethod
    def load(cls, path: str) -> "QuantConfig":
        """Read the JSON form from ``path``."""
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise QuantConfigError(f"{path}: cannot read the quantization config: {e}") from e
        return cls.from_json(data, str(path))

    def save(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(self.to_json(), f, indent=1)


# -- parsing helpers ----------------------------------------------------------------------------
_SCHEME_KEYS = {f.name for f in fields(TensorScheme)}


def _object(x: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(x, Mapping):
        raise QuantConfigError(f"{where}: expected a JSON object, got {type(x).__name__} {x!r}")
    return x


def _no_unknown(obj: Mapping, known: set[str], where: str) -> None:
    bad = [k for k in obj if k not in known]
    if bad:
        raise QuantConfigError(f"{where}: unknown key '{bad[0]}' (known keys: {', '.join(sorted(known))})")


def _bool(x: Any, where: str) -> bool:
    if not isinstance(x, bool):
        raise QuantConfigError(f"{where} must be true or false, got {x!r}")
    return x


def _partial(x: Any, where: str) -> dict[str, Any]:
    obj = _object(x, where)
    _no_unknown(obj, _SCHEME_KEYS, where)
    out: dict[str, Any] = {}
    if "dtype" in obj:
        name = obj["dtype"]
        if not isinstance(name, str) or name.lower() not in TENSOR_DTYPES:
            raise QuantConfigError(f"{where}.dtype must be one of {', '.join(TENSOR_DTYPES)}, got {name!r}")
        out["dtype"] = INT_TYPES[name.lower()]
    for key in ("symmetric", "per_channel"):
        if key in obj:
            out[key] = _bool(obj[key], f"{where}.{key}")
    return out


def _override(x: Any, where: str) -> Override:
    obj = _object(x, where)
    _no_unknown(obj, {"activation", "weight"}, where)
    return Override(_partial(obj.get("activation", {}), f"{where}.activation"),
                    _partial(obj.get("weight", {}), f"{where}.weight"))


def _partial_to_json(part: Mapping[str, Any]) -> dict:
    return {k: (v.name if isinstance(v, IntType) else v) for k, v in part.items()}
