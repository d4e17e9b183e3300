"""Harnesses shared by qgraph's tests and scripts (ONNX Runtime needed: the ``test`` extra)."""
