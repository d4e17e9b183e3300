"""Golden comparison: bit-exactness, LSB distance, SQNR, cosine similarity, top-k agreement."""

from qgraph.verify.metrics import (
    Comparison, classifier_shaped, compare, cosine_similarity, lsb_distance, output_metrics, sqnr_db, topk_agreement,
)

__all__ = ["Comparison", "classifier_shaped", "compare", "cosine_similarity", "lsb_distance", "output_metrics",
           "sqnr_db", "topk_agreement"]
