"""Detector harness: ddddocr's trained YOLOX click-captcha detector (``ddddocr==1.6.1``, ``test`` extra).

The model is ``common_det.onnx`` inside the ddddocr wheel (MIT): a YOLOX detector trained to
find the characters of click captchas, input ``images`` ``[1, 3, 416, 416]`` (BGR pixels
0..255, letterboxed top-left on grey 114), output ``[1, 3549, 6]`` per anchor point of the
strides 8 / 16 / 32: ``cx, cy, w, h`` (raw), objectness, one class score. It was exported
without YOLOX's ``decode_in_inference``, so its boxes are grid offsets and log sizes (about
-2..3) and uniform int8 keeps them. :func:`decoded_model` appends the head YOLOX's own
export writes with ``decode_in_inference=True``::

    Concat((xy + grid) * stride, Exp(wh) * stride, scores)   # boxes in pixels 0..416, scores 0..1

so the output Concat (:data:`DECODE_CONCAT`) joins box coordinates and scores under one
scale, the head that uniform int8 destroys::

    from qgraph.testing import detect

    x = detect.render_pages(8, seed=2)                 # float32 [8, 3, 416, 416]
    model = detect.decoded_model()                     # onnx.ModelProto
    ref = detect.decode(detect.run_float(x, model))    # per image: boxes, scores, classes
    detect.recall(ref, ref)                            # 1.0

Pre- and post-processing follow ddddocr's ``DetectionEngine.get_bbox``: letterbox, score =
objectness * class score, score threshold 0.1 (strictly above), class-agnostic NMS at IoU
0.45 with its ``+1`` pixel areas. The rendered images are 416 pixels wide, so the letterbox
ratio is 1 and no resize (OpenCV in ddddocr) is needed.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Any, Sequence

import numpy as np

INPUT_SIZE = 416
STRIDES = (8, 16, 32)
#: ddddocr's ``get_bbox`` thresholds.
SCORE_THRESHOLD = 0.1
NMS_THRESHOLD = 0.45
PAD_VALUE = 114
#: Rendered images: ``WIDTH`` x ``HEIGHT`` pixels, letterboxed to 416 x 416.
WIDTH, HEIGHT = 416, 224
#: Name of the output Concat that :func:`decoded_model` appends (boxes in pixels, scores).
DECODE_CONCAT = "decode/Concat"

FONT_DIR = "/usr/share/fonts/truetype/dejavu"
FONTS = ("DejaVuSans-Bold.ttf", "DejaVuSans.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif.ttf")
# Glyphs every DejaVu font has: Latin capitals and digits (no look-alikes), Greek, Cyrillic.
_CHARS = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789ΓΔΘΛΞΠΣΦΨΩБГДЖЗИЛПФЦЧШЩЭЮЯ"


def model_path() -> str:
    """Path of ``common_det.onnx`` inside the installed ddddocr wheel (ddddocr is not imported)."""
    spec = importlib.util.find_spec("ddddocr")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("ddddocr is not installed: pip install -e '.[test]' (ddddocr==1.6.1)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "common_det.onnx")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing from the ddddocr install")
    return path


def _grids(size: int = INPUT_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Anchor-point grid ``[A, 2]`` (x, y cell indices) and stride ``[A, 1]`` in output order,
    as ddddocr's ``demo_postprocess`` builds them."""
    grids, strides = [], []
    for stride in STRIDES:
        n = size // stride
        xv, yv = np.meshgrid(np.arange(n), np.arange(n))
        grids.append(np.stack((xv, yv), 2).reshape(-1, 2))
        strides.append(np.full((n * n, 1), stride))
    return np.concatenate(grids).astype(np.float32), np.concatenate(strides).astype(np.float32)


@functools.lru_cache(maxsize=2)
def _decoded_bytes(path: str) -> bytes:
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(path)
    graph = model.graph
    (out,) = graph.output
    raw = "raw_output"
    for node in graph.node:
        node.output[:] = [raw if o == out.name else o for o in node.output]
    grid, stride = _grids()
    graph.initializer.extend([
        numpy_helper.from_array(grid[None], "decode/grid"),
        numpy_helper.from_array(stride[None], "decode/stride"),
        *(numpy_helper.from_array(np.array([i], np.int64), f"decode/at{i}") for i in (0, 2, 4, 6)),
        numpy_helper.from_array(np.array([2], np.int64), "decode/axis"),
    ])

    def part(name: str, lo: int, hi: int) -> str:
        graph.node.append(helper.make_node("Slice", [raw, f"decode/at{lo}", f"decode/at{hi}", "decode/axis"],
                                           [f"decode/{name}"], name=f"decode/Slice_{name}"))
        return f"decode/{name}"

    xy, wh, scores = part("xy", 0, 2), part("wh", 2, 4), part("scores", 4, 6)
    graph.node.extend([
        helper.make_node("Add", [xy, "decode/grid"], ["decode/xy_grid"], name="decode/Add_grid"),
        helper.make_node("Mul", ["decode/xy_grid", "decode/stride"], ["decode/xy_px"], name="decode/Mul_xy"),
        helper.make_node("Exp", [wh], ["decode/wh_exp"], name="decode/Exp_wh"),
        helper.make_node("Mul", ["decode/wh_exp", "decode/stride"], ["decode/wh_px"], name="decode/Mul_wh"),
        helper.make_node("Concat", ["decode/xy_px", "decode/wh_px", scores], [out.name],
                         name=DECODE_CONCAT, axis=2),
    ])
    model.doc_string = ("ddddocr common_det.onnx with YOLOX's decode_in_inference head appended "
                        "(qgraph.testing.detect.decoded_model)")
    onnx.checker.check_model(model)
    return model.SerializeToString()


def decoded_model(path: str | None = None):
    """The detector with YOLOX's ``decode_in_inference`` head: output ``[1, 3549, 6]`` is
    ``cx, cy, w, h`` in input pixels, objectness, class score, produced by the Concat named
    :data:`DECODE_CONCAT`. Deterministic (same bytes on every call).

    Args:
        path: The raw detector; default :func:`model_path`.

    Returns:
        A new ``onnx.ModelProto``.
    """
    import onnx

    return onnx.load_from_string(_decoded_bytes(path or model_path()))


def save_decoded_model(out_path: str, path: str | None = None) -> str:
    """Write :func:`decoded_model` to ``out_path`` (for ``qgraph compile``) and return the path."""
    with open(out_path, "wb") as f:
        f.write(_decoded_bytes(path or model_path()))
    return out_path


def _font(name: str, size: int):
    from PIL import ImageFont

    path = os.path.join(FONT_DIR, name)
    if os.path.exists(path):
        return ImageFont.truetype(path, size)
    return ImageFont.load_default(size=size)


def render_pages(n: int, seed: int = 0) -> np.ndarray:
    """``n`` deterministic click-captcha images, preprocessed as ddddocr feeds its detector.

    Each image is ``WIDTH`` x ``HEIGHT``: a blurred background of random coloured ellipses
    (what click captchas draw their characters on), then 3 to 5 characters (Latin capitals,
    digits, Greek, Cyrillic; 26 to 44 px; random colour, font and rotation up to 30 degrees),
    one per column so they do not overlap. Fonts are DejaVu when installed
    (``fonts-dejavu-core``), else Pillow's default font.

    Args:
        n: Number of images.
        seed: Seed of ``np.random.default_rng``.

    Returns:
        float32 ``[n, 3, 416, 416]``: BGR pixels 0..255, the image at the top left, the rest
        114 (ddddocr's ``preproc`` with ratio 1).
    """
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    out = np.full((n, 3, INPUT_SIZE, INPUT_SIZE), PAD_VALUE, np.float32)
    for i in range(n):
        img = Image.new("RGB", (WIDTH, HEIGHT), tuple(int(c) for c in rng.integers(60, 230, 3)))
        draw = ImageDraw.Draw(img)
        for _ in range(10):
            x0, y0 = int(rng.integers(-40, WIDTH)), int(rng.integers(-40, HEIGHT))
            draw.ellipse([x0, y0, x0 + int(rng.integers(30, 160)), y0 + int(rng.integers(30, 110))],
                         fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        img = img.filter(ImageFilter.GaussianBlur(3))
        count = int(rng.integers(3, 6))
        column = WIDTH // count
        for k in range(count):
            size = int(rng.integers(26, 45))
            font = _font(FONTS[int(rng.integers(len(FONTS)))], size)
            tile = Image.new("RGBA", (2 * size, 2 * size), (0, 0, 0, 0))
            colour = (*(int(c) for c in rng.integers(0, 256, 3)), 255)
            ImageDraw.Draw(tile).text((size // 2, size // 3), _CHARS[int(rng.integers(len(_CHARS)))],
                                      font=font, fill=colour)
            tile = tile.rotate(float(rng.uniform(-30, 30)), resample=Image.BICUBIC)
            x = k * column + int(rng.integers(0, max(1, column - 2 * size + 1)))
            y = int(rng.integers(0, HEIGHT - 2 * size + 1))
            img.paste(tile, (x, y), tile)
        bgr = np.asarray(img, np.float32)[:, :, ::-1].transpose(2, 0, 1)
        out[i, :, :HEIGHT, :WIDTH] = bgr
    return out


def _nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """ddddocr's single-class NMS (areas with ``+1`` pixels, keep while IoU <= threshold)."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort(kind="stable")[::-1]
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(int(i))
        w = np.maximum(0.0, np.minimum(x2[i], x2[order[1:]]) - np.maximum(x1[i], x1[order[1:]]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[order[1:]]) - np.maximum(y1[i], y1[order[1:]]) + 1)
        inter = w * h
        order = order[1:][inter / (areas[i] + areas[order[1:]] - inter) <= threshold]
    return keep


#: One image's detections: boxes ``[K, 4]`` xyxy float32, scores ``[K]`` float32, classes ``[K]`` int64.
Detections = tuple[np.ndarray, np.ndarray, np.ndarray]


def decode(outputs: np.ndarray, conf_threshold: float = SCORE_THRESHOLD, *, raw: bool = False,
           nms_threshold: float = NMS_THRESHOLD) -> list[Detections]:
    """Detections per image from the detector's output, as ddddocr's ``get_bbox`` makes them.

    Args:
        outputs: ``[N, A, 5 + C]`` rows ``cx, cy, w, h, objectness, class scores``; in input
            pixels (:func:`decoded_model`), or raw grid offsets and log sizes with ``raw=True``
            (the wheel's ``common_det.onnx``).
        conf_threshold: Keep rows whose best ``objectness * class score`` is above this.
        raw: Apply YOLOX's grid decoding first (ddddocr's ``demo_postprocess``).
        nms_threshold: Class-agnostic NMS IoU threshold.

    Returns:
        Per image ``(boxes [K, 4] xyxy in input pixels, scores [K], classes [K])``, by
        descending score. Boxes are neither clipped nor rounded (ddddocr's last step).
    """
    out = np.array(outputs, np.float32)
    if out.ndim != 3 or out.shape[-1] < 6:
        raise ValueError(f"expected [N, anchors, 5 + classes] detector output, got shape {out.shape}")
    if raw:
        grid, stride = _grids()
        if out.shape[1] != len(grid):
            raise ValueError(f"raw output has {out.shape[1]} anchors, the {INPUT_SIZE} grid has {len(grid)}")
        out[..., :2] = (out[..., :2] + grid) * stride
        out[..., 2:4] = np.exp(out[..., 2:4]) * stride
    dets = []
    for pred in out:
        cls_scores = pred[:, 4:5] * pred[:, 5:]
        classes = cls_scores.argmax(1)
        scores = cls_scores[np.arange(len(classes)), classes]
        ok = scores > conf_threshold
        cx, cy, w, h = pred[ok, :4].T
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1).astype(np.float32)
        keep = _nms(boxes, scores[ok], nms_threshold) if ok.any() else []
        dets.append((boxes[keep].reshape(-1, 4), scores[ok][keep].astype(np.float32),
                     classes[ok][keep].astype(np.int64)))
    return dets


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU ``[len(a), len(b)]`` of xyxy boxes (continuous coordinates, no ``+1``)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def recall(reference: Sequence[Detections], test: Sequence[Detections], iou_threshold: float = 0.5) -> float:
    """Share of the reference detections that a test detection of the same class matches.

    Per image, reference detections in descending score each take the unmatched test
    detection of their class with the highest IoU, if that IoU is >= ``iou_threshold``; a
    test detection matches at most one reference.

    Args:
        reference: Per image ``(boxes, scores, classes)`` (e.g. the float model's).
        test: The same for the model under test; as many images as ``reference``.

    Returns:
        Matched / reference detections over all images; 1.0 when the reference has none.
    """
    if len(reference) != len(test):
        raise ValueError(f"{len(test)} test images vs {len(reference)} reference images")
    total = matched = 0
    for (rb, rs, rc), (tb, _ts, tc) in zip(reference, test):
        total += len(rb)
        if not len(rb) or not len(tb):
            continue
        overlap = iou(rb, tb)
        overlap[np.asarray(rc)[:, None] != np.asarray(tc)[None, :]] = -1.0
        used = np.zeros(len(tb), bool)
        for r in np.argsort(-np.asarray(rs), kind="stable"):
            cand = np.where(used, -1.0, overlap[r])
            j = int(cand.argmax())
            if cand[j] >= iou_threshold:
                used[j] = True
                matched += 1
    return 1.0 if total == 0 else matched / total


def run_float(x: np.ndarray, model: Any = None) -> np.ndarray:
    """The detector (default :func:`decoded_model`; or a path, bytes or ModelProto) on ``x``
    ``[N, 3, 416, 416]`` in ONNX Runtime's CPU EP, one image at a time (batch 1 model).

    Returns:
        ``[N, 3549, 6]``.
    """
    from qgraph.testing.ort import run_first_output

    return run_first_output(_decoded_bytes(model_path()) if model is None else model, x, 1)
