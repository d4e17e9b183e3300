"""qgraph.verify metrics: SQNR, cosine, top-k agreement, LSB distance."""

import math

import numpy as np
import pytest

from qgraph.verify import compare, cosine_similarity, lsb_distance, sqnr_db, topk_agreement


def test_sqnr_of_known_noise():
    ref = np.ones(1000)
    test = ref + 0.01  # noise power 1e-4 of signal power 1 -> 40 dB
    assert sqnr_db(ref, test) == pytest.approx(40.0)
    assert sqnr_db(ref, ref) == math.inf
    assert sqnr_db(np.zeros(3), np.ones(3)) == -math.inf


def test_cosine():
    assert cosine_similarity([1, 0], [0, 1]) == pytest.approx(0.0)
    assert cosine_similarity([1, 2], [2, 4]) == pytest.approx(1.0)
    assert cosine_similarity([0, 0], [0, 0]) == 1.0


def test_topk_agreement():
    ref = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1]])
    test = np.array([[0.2, 0.7, 0.1], [0.1, 0.5, 0.4]])
    assert topk_agreement(ref, test) == 0.5
    assert topk_agreement(ref, test, k=3) == 1.0
    with pytest.raises(ValueError):
        topk_agreement(np.ones((4, 1)), np.ones((4, 1)))


def test_lsb_distance_and_shapes():
    assert lsb_distance([0.0, 0.5], [0.25, 0.5], 0.25) == 1.0
    with pytest.raises(ValueError, match="shapes"):
        sqnr_db(np.ones(3), np.ones(4))


def test_compare_to_json_is_json_safe():
    import json

    c = compare(np.eye(3), np.eye(3), classes=True)
    assert c.top1 == 1.0 and c.max_abs == 0.0
    assert json.loads(json.dumps(c.to_json()))["sqnr_db"] == "inf"
