"""Inputs the benchmarks feed their models: calibration and held-out test sets, seeded.

- ``digits``: models/digits_cnn.onnx with its bundled calibration set (128 digits) and labelled
  test set (``labels``);
- ``ocr-cls``: rapidocr's PP-OCR text-direction classifier; text lines rendered with Pillow
  (random words, 48x192, PP-OCR normalisation), every second one rotated by 180 degrees, the
  rotation being the label: calibration seed 1, test seed 2 (400 lines);
- ``ocr-rec``: rapidocr's PP-OCRv4 recognizer; upright text lines rendered the same way on
  48x320 (random words that fit the width), their text the label: calibration seed 1, test
  seed 3 (100 lines); the model's own dictionary (its ``character`` metadata) decodes the output;
- ``magika``: Google's file-type model; the first and last 1024 bytes of files from this Python
  environment's site-packages (whitespace-stripped, padded with 256: magika's own feature
  layout), no labels;
- :func:`bert_tokens`: random token ids, a mask of ones and token types of zeros.

The third-party models come from ``tests/helpers/real_models.py`` (``$ONNXSHRINK_TEST_CACHE``).
"""

from __future__ import annotations

import random
import string
from pathlib import Path
from typing import Any

import numpy as np
from harness import ROOT, real_models

Feed = dict[str, np.ndarray]


def digits() -> tuple[Path, Feed, Feed]:
    """(model, calibration, test with ``labels``): the bundled files, all their samples."""
    calib = dict(np.load(ROOT / "models" / "digits_calib.npz"))
    test = dict(np.load(ROOT / "models" / "digits_test.npz"))
    return ROOT / "models" / "digits_cnn.onnx", calib, test


def text_lines(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` rendered text lines [N, 3, 48, 192] and their labels (1: rotated by 180 degrees)."""
    from PIL import Image, ImageDraw, ImageFont

    rng = random.Random(seed)
    images, labels = [], []
    for index in range(count):
        words = " ".join(
            "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(rng.randint(2, 7)))
            for _ in range(rng.randint(2, 3))
        )
        font = ImageFont.load_default(size=rng.randint(22, 30))
        image = Image.new("RGB", (192, 48), (rng.randint(200, 255),) * 3)
        ImageDraw.Draw(image).text(
            (rng.randint(0, 10), rng.randint(2, 10)), words, fill=(rng.randint(0, 60),) * 3, font=font
        )
        flipped = index % 2 == 1
        if flipped:
            image = image.rotate(180)
        images.append((np.asarray(image, dtype=np.float32) / 255.0 - 0.5) / 0.5)
        labels.append(int(flipped))
    return np.stack(images).transpose(0, 3, 1, 2).copy(), np.array(labels, dtype=np.int64)


def ocr_cls(samples: int) -> tuple[Path, Feed, Feed]:
    """(model, ``samples`` calibration lines, 400 labelled test lines)."""
    models = real_models()
    path = models.fetch(models.get_real_model("rapidocr-cls"))
    calib_x, _ = text_lines(samples, seed=1)
    test_x, test_y = text_lines(400, seed=2)
    return path, {"x": calib_x}, {"x": test_x, "labels": test_y}


# Letters and digits a reader can tell apart in the default font (no 0/O/o, 1/l/I/i, c/C, k/K, s/S...).
READABLE = "abdefghmnqrtyABDEFGHLMNQRTY23456789"


def _fitting_words(rng: random.Random, font: Any, width: int) -> str:
    """Two or three random words of :data:`READABLE` characters, fewer when they would overflow ``width`` pixels."""
    words = ["".join(rng.choice(READABLE) for _ in range(rng.randint(2, 7))) for _ in range(rng.randint(2, 3))]
    while len(words) > 1 and font.getlength(" ".join(words)) > width:
        words.pop()
    return " ".join(words)


def text_lines_read(count: int, seed: int, width: int = 320) -> tuple[np.ndarray, list[str]]:
    """``count`` upright rendered text lines [N, 3, 48, width] and their text (PP-OCR normalisation)."""
    from PIL import Image, ImageDraw, ImageFont

    rng = random.Random(seed)
    images, texts = [], []
    for _ in range(count):
        font = ImageFont.load_default(size=rng.randint(22, 30))
        text = _fitting_words(rng, font, width - 20)
        image = Image.new("RGB", (width, 48), (rng.randint(200, 255),) * 3)
        place = (rng.randint(0, 10), rng.randint(2, 10))
        ImageDraw.Draw(image).text(place, text, fill=(rng.randint(0, 60),) * 3, font=font)
        images.append((np.asarray(image, dtype=np.float32) / 255.0 - 0.5) / 0.5)
        texts.append(text)
    return np.stack(images).transpose(0, 3, 1, 2).copy(), texts


def ocr_rec(samples: int) -> tuple[Path, Feed, Feed]:
    """(model, ``samples`` calibration lines, 100 test lines with their text as ``labels``)."""
    models = real_models()
    path = models.fetch(models.get_real_model("rapidocr-rec"))
    calib_x, _ = text_lines_read(samples, seed=1)
    test_x, texts = text_lines_read(100, seed=3)
    return path, {"x": calib_x}, {"x": test_x, "labels": np.array(texts, dtype=object)}


def ocr_dictionary(path: Path) -> list[str]:
    """The recognizer's CTC classes: blank, its ``character`` metadata (one a line), then space (rapidocr's order).

    Raises:
        ValueError: The model carries no ``character`` metadata.
    """
    import onnx

    metadata = {prop.key: prop.value for prop in onnx.load(str(path), load_external_data=False).metadata_props}
    if "character" not in metadata:
        raise ValueError(f"{path}: no 'character' metadata (the recognizer's dictionary)")
    return ["", *metadata["character"].splitlines(), " "]


def ctc_decode(probabilities: np.ndarray, classes: list[str]) -> list[str]:
    """Greedy CTC decoding of [N, T, C] outputs: argmax per step, repeats merged, blanks (class 0) dropped."""
    best = probabilities.argmax(axis=-1)
    lines = []
    for row in best:
        kept = [int(c) for i, c in enumerate(row) if c != 0 and (i == 0 or c != row[i - 1])]
        lines.append("".join(classes[c] for c in kept))
    return lines


def magika_features(paths: list[str], beg: int = 1024, end: int = 1024, block: int = 4096) -> np.ndarray:
    """Magika's input rows for ``paths``: the first and last bytes of each file, padded with 256.

    Leading whitespace is stripped from the first ``block`` bytes and trailing whitespace from the
    last ``block`` bytes before the ``beg`` and ``end`` bytes are taken.

    Args:
        paths: The files to read.
        beg: Bytes taken from the start.
        end: Bytes taken from the end.
        block: How far from each end whitespace is stripped.

    Returns:
        int32 array [len(paths), beg + end].
    """
    rows = []
    for path in paths:
        data = Path(path).read_bytes()
        head = data[:block].lstrip()[:beg]
        tail = data[-block:].rstrip()[-end:]
        row = np.full(beg + end, 256, dtype=np.int32)
        row[: len(head)] = np.frombuffer(head, dtype=np.uint8)
        if tail:
            row[beg + end - len(tail) :] = np.frombuffer(tail, dtype=np.uint8)
        rows.append(row)
    return np.stack(rows)


def magika(samples: int) -> tuple[Path, Feed, Feed]:
    """(model, ``samples`` calibration files, 384 test files), files shuffled with seed 0."""
    models = real_models()
    path = models.fetch(models.get_real_model("magika"))
    site = Path(np.__file__).resolve().parents[1]
    files = sorted(str(p) for p in site.rglob("*") if p.is_file() and p.stat().st_size > 64)
    random.Random(0).shuffle(files)
    features = magika_features(files[: samples + 384])
    return path, {"bytes": features[:samples]}, {"bytes": features[samples:]}


def bert_tokens(count: int, seq: int, *, vocab: int, seed: int) -> Feed:
    """``count`` sequences of ``seq`` ids in [0, ``vocab``), a mask of ones, token types of zeros."""
    rng = np.random.default_rng(seed)
    return {
        "input_ids": rng.integers(0, vocab, (count, seq), dtype=np.int64),
        "attention_mask": np.ones((count, seq), dtype=np.int64),
        "token_type_ids": np.zeros((count, seq), dtype=np.int64),
    }
