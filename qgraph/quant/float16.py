"""Float weights held to float16 values (``QuantConfig.recurrent_weights = "float16"``).

The weights of the ops that stay float (LSTM, GRU, RNN) can be rounded to the nearest float16
value, kept as float32 tensors: the graph says what it computes (float32 arithmetic on those
values) to every runtime and to the reference, and a kernel may store them in 2 bytes and widen
them in registers, which is exact (``holds_float16``). The rounding is a precision choice the
user names, as int8 weights are; the 2-byte storage of weights that already hold float16
values is lossless and needs no choice.
"""

from __future__ import annotations

import numpy as np

#: The largest finite float16.
FLOAT16_MAX = float(np.finfo(np.float16).max)

#: The weight storage types ``QuantConfig.recurrent_weights`` names.
RECURRENT_WEIGHT_TYPES = ("float32", "float16")


def round_float16(w: np.ndarray) -> np.ndarray:
    """``w`` rounded to the nearest float16 values (IEEE round to nearest even, float16
    subnormals kept), as float32.

    Raises:
        ValueError: a value is not finite or past float16's range (``FLOAT16_MAX``), where
            rounding would make it infinite.
    """
    w = np.asarray(w, np.float32)
    if not np.all(np.isfinite(w)):
        raise ValueError("holds a value that is not finite")
    big = float(np.abs(w).max(initial=0.0))
    if big > FLOAT16_MAX:
        raise ValueError(f"holds {big:g}, past float16's largest value {FLOAT16_MAX:g}")
    return w.astype(np.float16).astype(np.float32)


def holds_float16(w: np.ndarray) -> bool:
    """Whether every value of the float32 array ``w`` is a float16 value (so that float16
    storage, widened in registers, gives the same float32 values)."""
    w = np.asarray(w)
    if w.dtype != np.float32:
        return False
    with np.errstate(over="ignore"):
        return bool(np.array_equal(w.astype(np.float16).astype(np.float32), w))
