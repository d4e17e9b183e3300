"""qgraph's built-in pass library (installed as ``qgraph.passes``)."""

from __future__ import annotations

from qgraph.pm.registry import PassRegistry
from qgraph.passes.cleanup import DeadCodeElimination, EliminateIdentity

BUILTIN_PASSES = (
    EliminateIdentity,
    DeadCodeElimination,
)

ALIASES = {
    "cleanup": ("fixed-point(eliminate-identity,dead-code-elimination)",
                "remove identities and dead code until nothing changes"),
}


def registry() -> PassRegistry:
    """A fresh registry holding the built-in passes and aliases; register your own on it."""
    return PassRegistry(BUILTIN_PASSES, ALIASES)


__all__ = ["BUILTIN_PASSES", "DeadCodeElimination", "EliminateIdentity", "registry"]
