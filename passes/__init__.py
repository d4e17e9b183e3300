"""qgraph's built-in pass library (installed as ``qgraph.passes``).

Each module lists its passes in a module-level ``PASSES`` tuple; ``BUILTIN_PASSES`` is
their concatenation, in the order below (the order ``qgraph passes`` groups them by).
"""

from __future__ import annotations

from qgraph.passes import (
    calibrate, canonicalize, cleanup, fuse_activation, fuse_hardswish, fuse_linear, fuse_transformer, insert_qdq,
    lower_qdq, opset, ranges,
)
from qgraph.passes.cleanup import DeadCodeElimination, EliminateIdentity
from qgraph.pm.registry import PassRegistry

_MODULES = (cleanup, canonicalize, opset, fuse_linear, fuse_activation, fuse_hardswish, fuse_transformer, ranges,
            calibrate, insert_qdq, lower_qdq)

BUILTIN_PASSES = tuple(p for m in _MODULES for p in m.PASSES)

ALIASES = {
    "cleanup": ("fixed-point(eliminate-identity,dead-code-elimination)",
                "remove identities and dead code until nothing changes"),
}
for _m in _MODULES:
    ALIASES.update(getattr(_m, "ALIASES", {}))
ALIASES["fuse"] = (
    "fixed-point(fuse-hardswish,fuse-pad,fuse-conv-bn,fuse-bias,fold-scale,lower-batchnorm,fuse-layernorm,fuse-gelu,"
    "fuse-activation,dead-code-elimination)",
    "every float fusion, rerun until nothing changes (run canonicalize first)")


def registry() -> PassRegistry:
    """A fresh registry holding the built-in passes and aliases; register your own on it."""
    return PassRegistry(BUILTIN_PASSES, ALIASES)


__all__ = ["BUILTIN_PASSES", "DeadCodeElimination", "EliminateIdentity", "registry"]
