"""Golden comparison: bit-exactness, LSB distance, SQNR, cosine similarity, top-k agreement."""

from qgraph.verify.metrics import (
    Comparison, compare, cosine_similarity, lsb_distance, sqnr_db, topk_agreement,
)

__all__ = ["Comparison", "compare", "cosine_similarity", "lsb_distance", "sqnr_db", "topk_agreement"]
