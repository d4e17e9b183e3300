"""OCR harness for PP-OCRv4 rec (the ``rapidocr-onnxruntime==1.4.4`` wheel, ``test`` extra).

Renders deterministic ASCII text lines the way PaddleOCR feeds its recognizer, decodes the
recognizer's CTC output greedily with the model's own character dictionary, and scores
agreement between two lists of strings::

    from qgraph.testing import ocr

    texts = ocr.sample_texts(16, seed=0)
    x = ocr.render_lines(texts)                      # float32 [16, 3, 48, 320]
    probs = ocr.run_rec(x)                           # [16, 40, 6625] softmax, float ONNX Runtime
    ocr.char_agreement(ocr.ctc_decode(probs), texts) # ~1.0

The dictionary is the model's ``character`` metadata entry (one character per line), with
``blank`` inserted at index 0 and a space appended, as rapidocr's ``CTCLabelDecode`` does.
"""

from __future__ import annotations

import functools
import glob
import os
from typing import Any, Sequence

import numpy as np

HEIGHT, WIDTH = 48, 320
FONT_PATH = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
FONT_SIZE = 26

_WORDS = (
    "quantize graph compiler tensor kernel range scale zero point model layer weight bias input "
    "output value node pass float integer shift round clip pool conv matmul batch norm relu "
    "golden check test data line text image digit vector matrix cache thread vendor target "
    "Linear Delta Alpha Omega River Stone Paper Cloud Light Green Orange Silver Winter Summer "
    "North South Data Model Graph Tensor Python Linux Apple Table Chair Music Water Fire House"
).split()


def rec_model_path() -> str:
    """Path of PP-OCRv4 rec (``ch_PP-OCRv4_rec_infer.onnx``) inside the rapidocr wheel."""
    import rapidocr_onnxruntime

    root = os.path.join(os.path.dirname(rapidocr_onnxruntime.__file__), "models")
    path = os.path.join(root, "ch_PP-OCRv4_rec_infer.onnx")
    if not os.path.exists(path):
        found = sorted(glob.glob(os.path.join(root, "*rec*.onnx")))
        if not found:
            raise FileNotFoundError(f"no rec model under {root}")
        path = found[0]
    return path


@functools.lru_cache(maxsize=4)
def _dictionary(path: str) -> tuple[str, ...]:
    import onnx

    model = onnx.load(path, load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    if "character" not in meta:
        raise ValueError(f"{path} has no 'character' metadata entry")
    return ("blank", *meta["character"].splitlines(), " ")


def dictionary(model_path: str | None = None) -> list[str]:
    """The CTC classes of a PaddleOCR rec model: ``blank`` at 0, the model's ``character``
    metadata lines, then ``" "`` (rapidocr's ``CTCLabelDecode`` layout)."""
    return list(_dictionary(model_path or rec_model_path()))


def _font(size: int):
    from PIL import ImageFont

    if os.path.exists(FONT_PATH):
        return ImageFont.truetype(FONT_PATH, size)
    return ImageFont.load_default(size=size)


def render_lines(texts: Sequence[str], height: int = HEIGHT, width: int = WIDTH,
                 font_size: int = FONT_SIZE, margin: int = 6) -> np.ndarray:
    """Render each text as a black-on-white line, laid out as PaddleOCR feeds its recognizer.

    PaddleOCR (and rapidocr) crop the text box, resize it to the model height keeping its
    aspect ratio and pad the rest of the width with 0 after normalization (mid grey). So each
    line is drawn on a white box just wide enough for the text plus ``margin`` on each side,
    and the rest of the row is 0; a white background across the whole width makes the model
    read trailing spaces. The font is DejaVuSans when installed (``fonts-dejavu-core``), else
    Pillow's built-in scalable default font; a line too long for ``width`` is drawn smaller.

    Args:
        texts: The lines to draw.
        height: Image height in pixels (48 for PP-OCRv4 rec).
        width: Image width in pixels (320 for PP-OCRv4 rec).
        font_size: Nominal font size in pixels.
        margin: White pixels left and right of the text.

    Returns:
        float32 ``[N, 3, height, width]``, ``(pixel / 255 - 0.5) / 0.5`` in [-1, 1].
    """
    from PIL import Image, ImageDraw

    out = np.zeros((len(texts), 3, height, width), np.float32)
    for i, text in enumerate(texts):
        size = font_size
        font = _font(size)
        while size > 8 and font.getlength(text) + 2 * margin > width:
            size -= 1
            font = _font(size)
        img = Image.new("RGB", (width, height), (255, 255, 255))
        top, bottom = font.getbbox("Hg")[1:4:2]
        ImageDraw.Draw(img).text((margin, (height - (bottom - top)) // 2 - top), text, fill=(0, 0, 0), font=font)
        used = min(width, int(np.ceil(font.getlength(text))) + 2 * margin)
        pixels = np.asarray(img, np.float32)[:, :used].transpose(2, 0, 1)
        out[i, :, :, :used] = (pixels / 255.0 - 0.5) / 0.5
    return out


def sample_texts(n: int, seed: int = 0) -> list[str]:
    """``n`` deterministic random ASCII lines of 10 to 25 characters: words and numbers.

    Args:
        n: Number of lines.
        seed: Seed of ``np.random.default_rng``.
    """
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(n):
        target = int(rng.integers(10, 26))
        tokens: list[str] = []
        while len(" ".join(tokens)) < target:
            if rng.random() < 0.25:
                tokens.append(str(int(rng.integers(0, 10 ** int(rng.integers(1, 5))))))
            else:
                tokens.append(str(rng.choice(_WORDS)))
        line = " ".join(tokens)[:target]
        if line.endswith(" "):
            line = line[:-1] + str(int(rng.integers(0, 10)))
        lines.append(line)
    return lines


def ctc_decode(probs: np.ndarray, dictionary_: Sequence[str] | None = None) -> list[str]:
    """Greedy CTC decoding, as rapidocr does: argmax per step, merge repeats, drop blank (0).

    Args:
        probs: ``[N, T, C]`` scores (softmax or logits) per time step and class.
        dictionary_: The ``C`` class strings; default: PP-OCRv4 rec's ``dictionary()``.
    """
    chars = dictionary_ if dictionary_ is not None else _dictionary(rec_model_path())
    idx = np.argmax(np.asarray(probs), axis=-1)
    texts = []
    for row in idx:
        keep = np.ones(len(row), bool)
        keep[1:] = row[1:] != row[:-1]
        keep &= row != 0
        texts.append("".join(chars[int(k)] for k in row[keep]))
    return texts


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions all cost 1)."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def char_agreement(a: Sequence[str], b: Sequence[str]) -> float:
    """``1 - sum(edit_distance(a_i, b_i)) / sum(len(b_i))``, clamped at 0.

    Args:
        a: Recognized texts.
        b: Reference texts (ground truth, or the float model's reading), same length as ``a``.

    Returns:
        1.0 when every pair is identical (or all references and texts are empty).
    """
    if len(a) != len(b):
        raise ValueError(f"{len(a)} texts vs {len(b)} references")
    total = sum(len(r) for r in b)
    dist = sum(edit_distance(x, r) for x, r in zip(a, b))
    if total == 0:
        return 1.0 if dist == 0 else 0.0
    return max(0.0, 1.0 - dist / total)


def run_rec(x: np.ndarray, model: Any = None, batch_size: int = 8) -> np.ndarray:
    """PP-OCRv4 rec (or ``model``: path, bytes or ModelProto) on ``x`` in ONNX Runtime's CPU EP.

    Returns:
        The model's first output, ``[N, T, C]`` (softmax over the dictionary for PP-OCRv4 rec).
    """
    from qgraph.testing.ort import run_first_output

    return run_first_output(rec_model_path() if model is None else model, x, batch_size)
