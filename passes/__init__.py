"""qgraph's built-in pass library (installed as ``qgraph.passes``).

Each module lists its passes in a module-level ``PASSES`` tuple; ``BUILTIN_PASSES`` is
their concatenation, in the order below (the order ``qgraph passes`` groups them by).
"""

from __future__ import annotations

from qgraph.passes import (
    calibrate, canonicalize, cleanup, fuse_activation, fuse_hardswish, fuse_linear, fuse_transformer, insert_qdq,
    lower_qdq, opset, qat_export, ranges,
)
from qgraph.passes.cleanup import DeadCodeElimination, EliminateIdentity
from qgraph.pm.registry import PassRegistry

_MODULES = (cleanup, canonicalize, opset, fuse_linear, fuse_activation, fuse_hardswish, fuse_transformer, ranges,
            calibrate, qat_export, insert_qdq, lower_qdq)

BUILTIN_PASSES = tuple(p for m in _MODULES for p in m.PASSES)

ALIASES = {
    "cleanup": ("fixed-point(eliminate-identity,dead-code-elimination)",
                "remove identities and dead code until nothing changes"),
}
for _m in _MODULES:
    ALIASES.update(getattr(_m, "ALIASES", {}))
# The decomposed activations (hard-swish, GELU) fuse before fold-scale: fold-scale would fold
# their constant factor (GELU's 0.5, hard-swish's 1/6) into the next Conv / Gemm and leave the
# rest of the chain unmatchable (a PP-OCRv6-class recognizer kept 13 GELUs as 5-op float chains).
ALIASES["fuse"] = (
    "fixed-point(fuse-hardswish,fuse-gelu,fuse-pad,fuse-conv-bn,fuse-bias,fold-scale,lower-batchnorm,"
    "fuse-layernorm,fuse-activation,dead-code-elimination)",
    "every float fusion, rerun until nothing changes (run canonicalize first)")

#: ``qgraph.quantize`` step by step: (the model a step works on, its pipeline). Every step runs
#: through the pass manager under the caller's context; the model is cloned where the level
#: changes, so that all three are kept: the float model L1 (canonicalized, fused, calibrated),
#: the QDQ model L2, the integer model L3. ``lower-qdq`` completes shapes and prunes what it
#: replaced itself: an L2 model from another quantizer needs both too.
QUANTIZE_STAGES = (
    ("float", "canonicalize,fuse"),
    ("float", "calibrate"),
    ("qdq", "fold-qat-export,insert-qdq"),
    ("integer", "lower-qdq"),
)
ALIASES["quantize"] = (
    ",".join(text for _, text in QUANTIZE_STAGES),
    "post-training quantization on one model, float to integer ops (needs calibrate's data: "
    "`qgraph opt --calib`); `qgraph compile` runs the same passes and keeps the float, QDQ and integer models")


def registry() -> PassRegistry:
    """A fresh registry holding the built-in passes and aliases; register your own on it."""
    return PassRegistry(BUILTIN_PASSES, ALIASES)


__all__ = ["BUILTIN_PASSES", "DeadCodeElimination", "EliminateIdentity", "QUANTIZE_STAGES", "registry"]
