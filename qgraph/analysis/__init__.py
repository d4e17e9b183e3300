"""Analyses of a model's graph that sit above the IR, the numerics and the pass manager
(each one reads the IR, computes with ``qgraph.quant`` and is a ``qgraph.pm`` analysis)."""
