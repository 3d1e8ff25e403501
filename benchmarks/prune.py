"""Issue 4's benchmark: weight pruning on a trained CNN and two real third-party models.

For each model it prints, against the dense original on held-out inputs:

- accuracy (where labels exist), top-1 agreement and output cosine at 50 / 70 / 90 % unstructured
  sparsity, ``allocation=uniform`` and ``allocation=sensitivity`` side by side, plus ``2:4``;
- the magnitude kept by ``prune:pattern=2:4`` with and without ``sort:for=2:4`` before it, and the
  sort search time (when the ``sort`` pass is installed);
- weight bytes raw and compressed (zstd, else gzip) per setting: zeros buy download size;
- onnxruntime CPU latency, dense vs 90 % sparse vs 2:4 (median of interleaved runs): zeros buy no
  CPU speed, since onnxruntime has no sparse kernels.

Every pipeline starts with ``fold``, which lifts weights held in Constant nodes into initializers.

Models (fetched from PyPI wheels with tests/helpers/real_models.py into ``$ONNXSHRINK_TEST_CACHE``):

- ``digits``: models/digits_cnn.onnx, trained on scikit-learn's digits; calibration
  models/digits_calib.npz, labelled test set models/digits_test.npz;
- ``ocr-cls``: rapidocr-onnxruntime's PP-OCR text-direction classifier (53 Conv). Inputs are text
  lines rendered with Pillow (random words, 48x192, PP-OCR normalisation), half of them rotated by
  180 degrees: the label is the rotation, so accuracy is real;
- ``magika``: Google's file-type model (Conv + 2 MatMul). Inputs are the first and last 1024 bytes
  of files from this Python environment's site-packages (whitespace-stripped, padded with 256),
  magika's own feature layout; no labels, so agreement with the dense model is the metric.

Run it in an environment with onnxshrink, Pillow and zstandard (e.g. the bench extra):
``python benchmarks/prune.py [--models digits,ocr-cls,magika] [--samples 64]``.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import string
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from helpers import real_models  # noqa: E402

import onnxshrink  # noqa: E402
from onnxshrink.inspect.summary import _compressed_size  # noqa: E402
from onnxshrink.latency import measure_latency  # noqa: E402
from onnxshrink.registry import passes as registered_passes  # noqa: E402

SPARSITIES = (0.5, 0.7, 0.9)


def _digits(samples: int) -> tuple[Path, dict[str, np.ndarray], dict[str, np.ndarray], dict[str, Any]]:
    """The bundled calibration file (its 128 samples, whatever ``samples`` says)."""
    calib = dict(np.load(ROOT / "models" / "digits_calib.npz"))
    test = dict(np.load(ROOT / "models" / "digits_test.npz"))
    return ROOT / "models" / "digits_cnn.onnx", calib, test, {"keep-first-last": "false"}


def _text_lines(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
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


def _ocr_cls(samples: int) -> tuple[Path, dict[str, np.ndarray], dict[str, np.ndarray], dict[str, Any]]:
    path = real_models.fetch(real_models.get_real_model("rapidocr-cls"))
    calib_x, _ = _text_lines(samples, seed=1)
    test_x, test_y = _text_lines(400, seed=2)
    return path, {"x": calib_x}, {"x": test_x, "labels": test_y}, {}


def _magika_features(paths: list[str], beg: int = 1024, end: int = 1024, block: int = 4096) -> np.ndarray:
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


def _magika(samples: int) -> tuple[Path, dict[str, np.ndarray], dict[str, np.ndarray], dict[str, Any]]:
    path = real_models.fetch(real_models.get_real_model("magika"))
    site = Path(np.__file__).resolve().parents[1]
    files = sorted(str(p) for p in site.rglob("*") if p.is_file() and p.stat().st_size > 64)
    random.Random(0).shuffle(files)
    features = _magika_features(files[: samples + 384])
    return path, {"bytes": features[:samples]}, {"bytes": features[samples:]}, {"keep-first-last": "false"}


MODELS = {"digits": _digits, "ocr-cls": _ocr_cls, "magika": _magika}


def _spec(name: str, options: dict[str, Any]) -> str:
    return name + (":" + ",".join(f"{k}={v}" for k, v in options.items()) if options else "")


def _row(model: Path, passes: list[str], calib: dict[str, np.ndarray], test: dict[str, np.ndarray]) -> dict[str, Any]:
    started = time.perf_counter()
    # fold first: exporters such as Paddle's keep weights in Constant nodes, which fold lifts
    # into the initializers prune reads.
    result = onnxshrink.shrink(model, ["fold", *passes], calibration=calib, inputs=test, verify=True)
    seconds = time.perf_counter() - started
    verification = result.report["verification"]
    output = verification["outputs"][0]
    prune = next(r for r in result.report["passes"] if r["name"] == "prune")["stats"]
    sort = next((r for r in result.report["passes"] if r["name"] == "sort"), None)
    weights = [t for t in (v.const_value for v in result.model.graph.initializers.values()) if t is not None]
    method, compressed = _compressed_size([t for t in weights if t.dtype != ir.DataType.STRING])
    kept = [layer["kept_magnitude"] for layer in prune["layers"].values()]
    return {
        "accuracy": verification.get("accuracy_candidate"),
        "reference_accuracy": verification.get("accuracy_reference"),
        "agreement": output.get("top1_agreement"),
        "cosine": output.get("cosine"),
        "sparsity": prune["sparsity"],
        "kept": statistics.fmean(kept) if kept else None,
        "compressed": compressed,
        "method": method,
        "seconds": seconds,
        "sort": sort["stats"] if sort else None,
        "result": result,
    }


def _fmt(value: Any, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def bench_model(name: str, samples: int, latency_runs: int) -> None:
    model, calib, test, extra = MODELS[name](samples)
    print(
        f"\n## {name}  ({model.name}; {samples if name != 'digits' else len(calib[next(iter(calib))])} "
        f"calibration samples, {len(test[next(iter(test))])} test samples)\n"
    )
    dense = _row(model, ["prune:sparsity=0,min-size=0"], calib, test)
    rows: dict[str, dict[str, Any]] = {"dense": dense}
    print(f"dense: accuracy {_fmt(dense['reference_accuracy'])}, weights {dense['method']} {dense['compressed']:,} B\n")
    print("| setting | allocation | sparsity | accuracy | top-1 agreement | cosine | compressed / dense | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for sparsity in SPARSITIES:
        for allocation in ("uniform", "sensitivity"):
            options = {"sparsity": sparsity, **extra, "allocation": allocation, "samples": samples}
            row = _row(model, [_spec("prune", options)], calib, test)
            rows[f"{sparsity}-{allocation}"] = row
            print(
                f"| {sparsity:.0%} | {allocation} | {row['sparsity']:.3f} | {_fmt(row['accuracy'])} | "
                f"{_fmt(row['agreement'])} | {_fmt(row['cosine'], '.4f')} | "
                f"{row['compressed'] / dense['compressed']:.2f} | {row['seconds']:.1f} |"
            )
    nm = _row(model, [_spec("prune", {"pattern": "2:4", **extra})], calib, test)
    rows["2:4"] = nm
    print(
        f"| 2:4 | - | {nm['sparsity']:.3f} | {_fmt(nm['accuracy'])} | {_fmt(nm['agreement'])} | "
        f"{_fmt(nm['cosine'], '.4f')} | {nm['compressed'] / dense['compressed']:.2f} | {nm['seconds']:.1f} |"
    )
    if "sort" in registered_passes():
        sorted_nm = _row(model, ["sort:for=2:4", _spec("prune", {"pattern": "2:4", **extra})], calib, test)
        print(
            f"| sort:for=2:4 + 2:4 | - | {sorted_nm['sparsity']:.3f} | {_fmt(sorted_nm['accuracy'])} | "
            f"{_fmt(sorted_nm['agreement'])} | {_fmt(sorted_nm['cosine'], '.4f')} | "
            f"{sorted_nm['compressed'] / dense['compressed']:.2f} | {sorted_nm['seconds']:.1f} |"
        )
        print(
            f"\nmean kept magnitude of 2:4-pruned layers: {_fmt(nm['kept'], '.4f')} without sort, "
            f"{_fmt(sorted_nm['kept'], '.4f')} with sort:for=2:4"
        )
    _latency(model, rows, latency_runs)


def _latency(model: Path, rows: dict[str, dict[str, Any]], runs: int) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        paths = {"dense": os.path.join(tmp, "dense.onnx")}
        rows["dense"]["result"].save(paths["dense"])
        for label in ("0.9-uniform", "2:4"):
            out = os.path.join(tmp, f"{label}.onnx")
            rows[label]["result"].save(out)
            paths[label] = out
        times: dict[str, list[float]] = {label: [] for label in paths}
        for _ in range(3):  # interleaved rounds, medians of medians
            for label, path in paths.items():
                times[label].append(measure_latency(path, provider="cpu", runs=runs, warmup=3)["median_ms"])
    base = statistics.median(times["dense"])
    print("\nonnxruntime CPU latency, batch as in the test feed's first sample (median ms, speed vs dense):")
    for label, values in times.items():
        median = statistics.median(values)
        print(f"  {label:12s} {median:8.3f} ms  {base / median:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits,ocr-cls,magika")
    parser.add_argument("--samples", type=int, default=64, help="calibration samples (sensitivity)")
    parser.add_argument("--latency-runs", type=int, default=30)
    args = parser.parse_args()
    for name in args.models.split(","):
        bench_model(name, args.samples, args.latency_runs)


if __name__ == "__main__":
    main()
