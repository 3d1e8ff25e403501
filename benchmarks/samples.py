"""Inputs the benchmarks feed their models: calibration and held-out test sets, seeded.

- ``digits``: models/digits_cnn.onnx with its bundled calibration set (128 digits) and labelled
  test set (``labels``);
- ``ocr-cls``: rapidocr's PP-OCR text-direction classifier; text lines rendered with Pillow
  (random words, 48x192, PP-OCR normalisation), every second one rotated by 180 degrees, the
  rotation being the label: calibration seed 1, test seed 2 (400 lines);
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
