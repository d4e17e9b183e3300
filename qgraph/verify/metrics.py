"""Metrics for comparing a quantized model's outputs with a reference.

- ``sqnr_db``: signal-to-quantization-noise ratio, ``10 log10(sum ref^2 / sum (ref - test)^2)``
  over the whole tensor (infinite when equal). A useful rule of thumb: 8-bit layers land
  around 30-40 dB; below ~20 dB a layer loses accuracy.
- ``cosine_similarity``: of the flattened tensors.
- ``topk_agreement``: the fraction of rows (last axis = classes) whose arg-max (k=1) is the
  same, or whose reference arg-max is in the test's top k.
- ``lsb_distance``: ``max |a - b| / scale`` in units of the output's quantization step,
  the measure for two integer implementations that should agree (0 = bit-exact).
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
    """``10 log10(|ref|^2 / |ref - test|^2)`` in dB; ``inf`` when equal, ``-inf`` for a zero reference."""
    ref, test = _pair(ref, test)
    noise = float(np.sum((ref - test) ** 2))
    signal = float(np.sum(ref ** 2))
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
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
    """``v``, with an infinite float written as the string "inf" / "-inf" (JSON has no infinity)."""
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return v


def compare(ref, test, *, classes: bool = False) -> Comparison:
    """SQNR, cosine, max |diff| (and top-1 agreement when ``classes``) of ``test`` against ``ref``."""
    r, t = _pair(ref, test)
    return Comparison(sqnr_db(r, t), cosine_similarity(r, t), float(np.max(np.abs(r - t))) if r.size else 0.0,
                      topk_agreement(r, t) if classes else None)
