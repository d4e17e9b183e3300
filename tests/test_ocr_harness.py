"""The PP-OCRv4 rec harness: rendering, greedy CTC decoding, agreement, float accuracy."""

import numpy as np
import pytest

from qgraph.testing import ocr

pytest.importorskip("rapidocr_onnxruntime")
pytest.importorskip("PIL")


def test_dictionary_layout():
    chars = ocr.dictionary()
    assert chars[0] == "blank" and chars[-1] == " "
    assert len(chars) == 6625  # PP-OCRv4 rec's output classes
    assert all(c in chars for c in "abcXYZ0123456789")


def test_sample_texts_deterministic_ascii():
    texts = ocr.sample_texts(50, seed=3)
    assert texts == ocr.sample_texts(50, seed=3)
    assert texts != ocr.sample_texts(50, seed=4)
    assert all(10 <= len(t) <= 25 and t.isascii() and t == t.strip() for t in texts)


def test_render_lines_layout():
    x = ocr.render_lines(["hello 123", "a much longer line of text here"])
    assert x.shape == (2, 3, 48, 320) and x.dtype == np.float32
    assert x.min() >= -1.0 and x.max() <= 1.0
    assert (x[0] == -1.0).any()  # black ink
    assert (x[0, :, :, :4] == 1.0).all()  # white margin
    assert (x[0, :, :, -4:] == 0.0).all()  # PaddleOCR's zero padding after the short text
    assert np.array_equal(x, ocr.render_lines(["hello 123", "a much longer line of text here"]))


def test_ctc_decode_greedy():
    chars = ["blank", "a", "b", " "]
    seq = [1, 1, 0, 1, 2, 2, 0, 0, 3, 2]  # a a _ a b b _ _ ' ' b -> "aab b"
    probs = np.eye(4, dtype=np.float32)[seq][None]
    assert ocr.ctc_decode(probs, chars) == ["aab b"]
    assert ocr.ctc_decode(np.eye(4, dtype=np.float32)[[0, 0]][None], chars) == [""]


def test_edit_distance_and_agreement():
    assert ocr.edit_distance("kitten", "sitting") == 3
    assert ocr.edit_distance("", "abc") == 3
    assert ocr.char_agreement(["abc", "de"], ["abc", "de"]) == 1.0
    assert ocr.char_agreement(["abd", "de"], ["abc", "de"]) == pytest.approx(0.8)
    assert ocr.char_agreement(["xxxxxxxxxx"], ["ab"]) == 0.0
    with pytest.raises(ValueError):
        ocr.char_agreement(["a"], [])


def test_float_rec_reads_rendered_lines():
    texts = ocr.sample_texts(16, seed=0)
    probs = ocr.run_rec(ocr.render_lines(texts))
    assert probs.shape == (16, 40, 6625)
    got = ocr.ctc_decode(probs)
    assert ocr.char_agreement(got, texts) >= 0.95, list(zip(got, texts))
