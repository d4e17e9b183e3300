"""The detector harness: the decoded head, rendering, decoding with NMS, recall, float detections."""

import numpy as np
import pytest

from qgraph.testing import detect

pytest.importorskip("PIL")


def _model_or_skip():
    try:
        return detect.model_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))


def _dets(boxes, scores, classes=None):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    classes = np.zeros(len(boxes), np.int64) if classes is None else np.asarray(classes, np.int64)
    return boxes, np.asarray(scores, np.float32), classes


def test_decode_hand_made_output():
    # rows: cx, cy, w, h, objectness, class score (pixels, as the decoded head gives them)
    out = np.array([[
        [100, 100, 40, 20, 0.9, 0.9],   # 0.81: kept
        [102, 101, 40, 20, 0.9, 0.8],   # 0.72, IoU ~0.86 with the first: suppressed by NMS
        [300, 50, 10, 10, 0.5, 0.5],    # 0.25: kept
        [200, 200, 30, 30, 0.5, 0.2],   # 0.10: not above the threshold
        [10, 10, 4, 4, 0.05, 1.0],      # 0.05: dropped
    ]], np.float32)
    (boxes, scores, classes), = detect.decode(out, 0.1)
    assert np.allclose(scores, [0.81, 0.25])
    assert np.allclose(boxes, [[80, 90, 120, 110], [295, 45, 305, 55]])
    assert classes.tolist() == [0, 0]
    (boxes, _, _), = detect.decode(out, 0.9)
    assert boxes.shape == (0, 4)


def test_decode_raw_applies_yolox_grid():
    out = np.zeros((1, 3549, 6), np.float32)
    # anchor 52 * 3 + 5 of stride 8: cell (x=5, y=3); offsets (0.5, 0.5), size exp(log 2) * 8 = 16
    out[0, 3 * 52 + 5] = [0.5, 0.5, np.log(2), np.log(2), 1.0, 1.0]
    (boxes, scores, _), = detect.decode(out, raw=True)
    assert np.allclose(boxes, [[44 - 8, 28 - 8, 44 + 8, 28 + 8]], atol=1e-4) and np.allclose(scores, [1.0])


def test_recall():
    ref = [_dets([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.8]), _dets([[0, 0, 5, 5]], [0.5])]
    assert detect.recall(ref, ref) == 1.0
    empty = [_dets([], []), _dets([], [])]
    assert detect.recall(ref, empty) == 0.0
    assert detect.recall(empty, empty) == 1.0
    # one box shifted to IoU 0.6, one missing, one of another class: 1 of 3 matched
    test = [_dets([[0, 2.5, 10, 12.5], [20, 20, 30, 30]], [0.9, 0.8], [0, 1]), _dets([], [])]
    assert detect.iou(test[0][0][:1], ref[0][0][:1])[0, 0] == pytest.approx(0.6)
    assert detect.recall(ref, test) == pytest.approx(1 / 3)
    assert detect.recall(ref, test, iou_threshold=0.7) == 0.0
    # a test box matches one reference only
    assert detect.recall([_dets([[0, 0, 10, 10], [0, 0, 10, 10]], [0.9, 0.8])],
                         [_dets([[0, 0, 10, 10]], [0.9])]) == 0.5
    with pytest.raises(ValueError):
        detect.recall(ref, ref[:1])


def test_render_pages_layout_and_determinism():
    x = detect.render_pages(3, seed=5)
    assert x.shape == (3, 3, 416, 416) and x.dtype == np.float32
    assert (x[:, :, detect.HEIGHT:, :] == detect.PAD_VALUE).all()  # ddddocr's letterbox grey
    assert x.min() >= 0 and x.max() <= 255
    assert np.array_equal(x, detect.render_pages(3, seed=5))
    assert not np.array_equal(x, detect.render_pages(3, seed=6))


def test_decoded_head_concatenates_boxes_and_scores():
    _model_or_skip()
    model = detect.decoded_model()
    concat = [n for n in model.graph.node if n.name == detect.DECODE_CONCAT]
    assert len(concat) == 1 and concat[0].output[0] == model.graph.output[0].name
    assert model.SerializeToString() == detect.decoded_model().SerializeToString()


def test_float_detector_finds_the_rendered_characters():
    path = _model_or_skip()
    x = detect.render_pages(8, seed=0)
    raw = detect.run_float(x, path)
    out = detect.run_float(x)
    assert out.shape == (8, 3549, 6)
    dets = detect.decode(out)
    # the decoded head is the raw model plus ddddocr's own decoding
    assert detect.recall(detect.decode(raw, raw=True), dets) == 1.0
    # the head mixes ranges: box coordinates in pixels, scores in [0, 1]
    assert out[..., :2].max() > 300 and out[..., 4:].max() <= 1.0
    # measured: 27 detections with DejaVu, 28 with Pillow's default font; 3 to 5 characters an image
    counts = [len(s) for _, s, _ in dets]
    assert sum(counts) >= 24 and min(counts) >= 1, counts
