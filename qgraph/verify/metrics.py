"""Metrics for comparing a quantized model's outputs with a reference.

- ``sqnr_db``: signal-to-quantization-noise ratio, ``10 log10(sum ref^2 / sum (ref - test)^2)``
  over the whole tensor (infinite when equal). A useful rule of thumb: 8-bit layers land
  around 30-40 dB; below ~20 dB a layer loses accuracy.
- ``cosine_similarity``: of the flattened tensors.
- ``topk_agreement``: the fraction of rows (last axis = classes) whose arg-max (k=1) is the
  same, or whose reference arg-max is in the test's top k.
- ``channel_sqnr_db``: SQNR per channel (the shortest axis but the samples'), then averaged as
  noise-to-signal ratios: a channel of small values (a detector's class scores next to box
  coordinates in pixels) counts as much as a large one, where ``sqnr_db`` would not see it.
- ``lsb_distance``: ``max |a - b| / scale`` in units of the output's quantization step,
  the measure for two integer implementations that should agree (0 = bit-exact).
- ``output_metrics``: what ``qgraph compile``'s summary, the report and ``qgraph verify``
  all say about one model output (one function, so that they agree to the last digit).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


def _pair(ref, test) -> tuple[np.ndarray, np.ndarray]:
    ref = np.asarray(ref, dtype=np.float64)
    test = np.asarray(test, dtype=np.float64)
    if ref.shape != test.shape:
        raise ValueError(f"cannot compare tensors of shapes {ref.shape} and {test.shape}")
    return ref, test


def sqnr_db(ref, test) -> float:
    """``10 log10(|ref|^2 / |ref - test|^2)`` in dB (``energy_db``)."""
    ref, test = _pair(ref, test)
    with np.errstate(over="ignore", invalid="ignore"):
        return energy_db(float(np.sum(ref ** 2)), float(np.sum((ref - test) ** 2)))


def energy_db(signal: float, noise: float) -> float:
    """SQNR from signal and noise energies: ``inf`` when the noise is zero; ``-inf`` for a zero
    reference, and where the noise is infinite or NaN (a quantized output that overflowed
    to inf, e.g. the reciprocal of a value that quantized to 0: unusable, not a crash)."""
    if noise == 0.0:
        return math.inf
    if signal == 0.0 or not math.isfinite(noise):
        return -math.inf
    if not math.isfinite(signal):
        return math.nan
    return 10.0 * math.log10(signal / noise)


def cosine_similarity(ref, test) -> float:
    """Cosine of the angle between the flattened tensors (1.0 when both are zero)."""
    ref, test = _pair(ref, test)
    a, b = ref.reshape(-1), test.reshape(-1)
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def topk_agreement(ref, test, k: int = 1) -> float:
    """Fraction of rows whose reference arg-max is among the test's top ``k`` (last axis)."""
    ref, test = _pair(ref, test)
    if ref.ndim == 0 or ref.shape[-1] < 2:
        raise ValueError("top-k agreement needs a class axis (last axis) of at least 2")
    r = ref.reshape(-1, ref.shape[-1])
    t = test.reshape(-1, test.shape[-1])
    want = r.argmax(axis=1)
    top = np.argsort(-t, axis=1, kind="stable")[:, :k]
    return float(np.mean((top == want[:, None]).any(axis=1)))


def channel_nsr(ref, test, sample_axis: int | None = 0) -> float:
    """Noise-to-signal energy ratio of ``test`` against ``ref``, per channel, averaged.

    The channel axis is the shortest axis other than ``sample_axis`` (the first of equals): a
    YOLOv8 head's 84 rows of ``[N, 84, 2100]``, a YOLOX head's 6 columns of ``[N, 3549, 6]``,
    the positions of an OCR recognizer's ``[N, 40, 6625]``, the classes of ``[N, C]``); a
    tensor of rank < 2 is one channel.
    Each channel's ratio ``sum (test - ref)^2 / sum ref^2`` is capped at 1 (a channel lost
    entirely; a zero channel with any noise counts so), so the mean is in ``[0, 1]``: 0 when
    equal. NaN or infinite test values count as a lost channel.
    """
    r, t = _pair(ref, test)
    if r.ndim >= 2:
        axes = [k for k in range(r.ndim) if k != sample_axis] or [0]
        c = min(axes, key=lambda k: (r.shape[k], k))
        r = np.moveaxis(r, c, 0).reshape(r.shape[c], -1)
        t = np.moveaxis(t, c, 0).reshape(r.shape[0], -1)
    else:
        r, t = r.reshape(1, -1), t.reshape(1, -1)
    with np.errstate(over="ignore", invalid="ignore"):
        noise = np.sum((t - r) ** 2, axis=1)
        signal = np.sum(r ** 2, axis=1)
        ratio = np.where(signal > 0, noise / np.where(signal > 0, signal, 1.0), np.where(noise > 0, 1.0, 0.0))
    ratio = np.where(np.isfinite(ratio), np.minimum(ratio, 1.0), 1.0)
    return float(np.mean(ratio)) if ratio.size else 0.0


def channel_sqnr_db(ref, test, sample_axis: int | None = 0) -> float:
    """``-10 log10(channel_nsr)`` in dB: infinite when equal, 0 when every channel is lost."""
    nsr = channel_nsr(ref, test, sample_axis)
    return math.inf if nsr == 0.0 else -10.0 * math.log10(nsr)


def lsb_distance(a, b, scale) -> float:
    """``max |a - b| / scale``: the largest disagreement in quantization steps."""
    a, b = _pair(a, b)
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b) / np.asarray(scale, np.float64)))


@dataclass
class Comparison:
    """How a test tensor compares with its reference."""

    sqnr_db: float
    cosine: float
    max_abs: float
    top1: float | None = None  # for tensors with a class axis

    def to_json(self) -> dict:
        """JSON-safe: infinite SQNR (bit-exact) is written as the string "inf"."""
        return {k: json_float(v) for k, v in asdict(self).items()}


def json_float(v):
    """``v``, with an infinite or NaN float written as the string "inf" / "-inf" / "nan" (JSON
    has neither)."""
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    return v


def fmt(v, spec: str) -> str:
    """``format(v, spec)`` for a finite number; an infinite or NaN one, or its JSON string
    form (``json_float``), as it is ("inf", "-inf", "nan")."""
    if isinstance(v, str):
        return v
    v = float(v)
    return format(v, spec) if math.isfinite(v) else str(v)


def compare(ref, test, *, classes: bool = False) -> Comparison:
    """SQNR, cosine, max |diff| (and top-1 agreement when ``classes``) of ``test`` against ``ref``."""
    r, t = _pair(ref, test)
    return Comparison(sqnr_db(r, t), cosine_similarity(r, t), float(np.max(np.abs(r - t))) if r.size else 0.0,
                      topk_agreement(r, t) if classes else None)


#: rows whose values lie in [0, 1] and sum to 1 within this are probability distributions
_SOFTMAX_TOL = 1e-3


def softmax_kl(ref, test) -> float:
    """Mean KL divergence ``KL(p_ref || p_test)`` (nats) over the rows of the last axis, where
    ``p`` is the row itself if it is already a distribution (non-negative, summing to 1 within
    1e-3, as a softmax output is) and its softmax otherwise (logits). 0 when equal; a NaN or
    infinite test value gives infinity."""
    r, t = _pair(ref, test)
    if r.ndim == 0 or r.shape[-1] < 2:
        raise ValueError("KL needs a class axis (last axis) of at least 2")
    r, t = r.reshape(-1, r.shape[-1]), t.reshape(-1, t.shape[-1])
    if not np.all(np.isfinite(t)):
        return math.inf

    def dist(a: np.ndarray, probs: bool) -> np.ndarray:
        if probs:
            return np.clip(a, 0.0, None) / np.maximum(np.clip(a, 0.0, None).sum(axis=1, keepdims=True), 1e-300)
        e = np.exp(a - a.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    probs = bool(np.all(r >= 0.0) and np.allclose(r.sum(axis=1), 1.0, atol=1e-3))
    p, q = dist(r, probs), dist(t, probs)
    eps = 1e-12
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = np.where(p > 0, p * (np.log(p + eps) - np.log(q + eps)), 0.0).sum(axis=1)
    return float(max(0.0, np.mean(kl)))


def classifier_shaped(ref, samples: int) -> bool:
    """Whether an output reads as class scores, so that top-1 agreement (and accuracy against
    labels) means something.

    The rule: the output is ``[N, C]`` with ``N`` the number of samples and ``C >= 2`` (one
    row of logits or probabilities per sample), or an output of rank >= 2 whose last axis is
    softmax-like (every row non-negative and summing to 1 within 1e-3, e.g. an OCR
    recognizer's ``[N, T, C]``). Not classifier-shaped: detector heads (``[1, 84, 2100]``,
    box coordinates and class scores on one axis), boxes and masks of other row counts,
    feature maps, and rank-0/1 outputs. A per-sample ``[N, 4]`` box output passes the shape
    rule; nothing in a shape tells it from four logits.

    Args:
        ref: the float (reference) output, samples on axis 0.
        samples: how many samples produced it.
    """
    ref = np.asarray(ref)
    if ref.ndim < 2 or ref.shape[-1] < 2 or ref.size == 0:
        return False
    if ref.ndim == 2 and ref.shape[0] == samples:
        return True
    if ref.dtype.kind != "f":
        return False
    rows = ref.reshape(-1, ref.shape[-1]).astype(np.float64)
    return bool(rows.min() >= 0.0 and np.all(np.abs(rows.sum(axis=1) - 1.0) <= _SOFTMAX_TOL))


def labels_fit(ref, labels) -> bool:
    """Whether ``labels`` give one class index per row of ``ref``'s last axis
    (``labels.shape == ref.shape[:-1]``, integer-valued)."""
    labels = np.asarray(labels)
    return (labels.shape == np.shape(ref)[:-1] and labels.size > 0
            and (labels.dtype.kind in "iu" or bool(np.all(labels == np.round(labels)))))


def output_metrics(ref, test, samples: int, labels=None) -> dict:
    """What quantized-vs-float means for one model output: ``sqnr_db``, ``cosine``, and for a
    classifier-shaped output (``classifier_shaped``) ``top1`` agreement; with ``labels`` that
    fit it (``labels_fit``) also ``accuracy_float`` and ``accuracy_quantized``.

    Args:
        ref: the float model's output, samples on axis 0.
        test: the quantized model's output, same shape.
        samples: the number of samples behind them.
        labels: class indices (e.g. the ``labels`` array of an .npz), or None.

    Returns:
        Plain floats (infinite SQNR stays ``inf``: see ``json_float`` for JSON).
    """
    r, t = _pair(ref, test)
    m: dict = {"sqnr_db": sqnr_db(r, t), "cosine": cosine_similarity(r, t)}
    if classifier_shaped(ref, samples):
        m["top1"] = topk_agreement(r, t)
        if labels is not None and labels_fit(r, labels):
            want = np.asarray(labels).astype(np.int64)
            m["accuracy_float"] = float(np.mean(r.argmax(axis=-1) == want))
            m["accuracy_quantized"] = float(np.mean(t.argmax(axis=-1) == want))
    return m
