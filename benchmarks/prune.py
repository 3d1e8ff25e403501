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

Latency: onnxruntime CPU sessions on onnxshrink's generated inputs for the dense model, timed
interleaved (``harness.session_latency``): 3 rounds of ``--latency-runs`` runs each.

Run it in the bench venv (Pillow, zstandard): ``python benchmarks/prune.py [--models digits,ocr-cls,magika]
[--samples 64] [--json OUT]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import harness
import samples
from harness import fmt

SPARSITIES = (0.5, 0.7, 0.9)
Loader = Callable[[int], tuple[Path, samples.Feed, samples.Feed]]
# Per model: how its samples are made, and prune options it needs (digits and magika are small
# enough that the first and last layers count).
MODELS: dict[str, tuple[Loader, dict[str, Any]]] = {
    "digits": (lambda _samples: samples.digits(), {"keep-first-last": "false"}),
    "ocr-cls": (samples.ocr_cls, {}),
    "magika": (samples.magika, {"keep-first-last": "false"}),
}


def _spec(name: str, options: dict[str, Any]) -> str:
    return name + (":" + ",".join(f"{k}={v}" for k, v in options.items()) if options else "")


def _row(model: Path, passes: list[str], calib: samples.Feed, test: samples.Feed) -> dict[str, Any]:
    import onnxshrink
    from onnxshrink.inspect.summary import inspect_model

    started = time.perf_counter()
    # fold first: exporters such as Paddle's keep weights in Constant nodes, which fold lifts
    # into the initializers prune reads.
    result = onnxshrink.shrink(model, ["fold", *passes], calibration=calib, inputs=test, verify=True)
    seconds = time.perf_counter() - started
    verification = result.report["verification"]
    output = verification["outputs"][0]
    prune = harness.pass_record(result.report, "prune")["stats"]
    sort = next((r for r in result.report["passes"] if r["name"] == "sort"), None)
    summary = inspect_model(result.model)
    kept = [layer["kept_magnitude"] for layer in prune["layers"].values()]
    return {
        "accuracy": verification.get("accuracy_candidate"),
        "reference_accuracy": verification.get("accuracy_reference"),
        "agreement": output.get("top1_agreement"),
        "cosine": output.get("cosine"),
        "sparsity": prune["sparsity"],
        "kept": statistics.fmean(kept) if kept else None,
        "compressed": summary["bytes_compressed"],
        "method": summary["compression"],
        "seconds": seconds,
        "sort": sort["stats"] if sort else None,
        "result": result,
    }


def _table_row(label: str, allocation: str, row: dict[str, Any], dense: dict[str, Any]) -> tuple[str, ...]:
    return (
        label, allocation, f"{row['sparsity']:.3f}", fmt(row["accuracy"]), fmt(row["agreement"]),
        fmt(row["cosine"], ".4f"), f"{row['compressed'] / dense['compressed']:.2f}", f"{row['seconds']:.1f}",
    )  # fmt: skip


def bench_model(name: str, count: int, latency_runs: int) -> dict[str, Any]:
    """Prunes one model at every sparsity, allocation and 2:4 pattern; prints and returns its rows.

    Args:
        name: A key of ``MODELS`` (``digits``, ``ocr-cls``, ``magika``).
        count: Calibration samples (also the ``samples`` option of ``sensitivity``).
        latency_runs: onnxruntime runs per latency figure.

    Returns:
        The rows by setting (``dense``, ``0.5-uniform``, ``2:4``, ...) with quality, size and latency.
    """
    from onnxshrink.registry import passes as registered_passes

    load, extra = MODELS[name]
    model, calib, test = load(count)
    calib_count = len(next(iter(calib.values())))
    print(
        f"\n## {name}  ({model.name}; {calib_count} calibration samples, {len(next(iter(test.values())))} test samples)"
    )
    dense = _row(model, ["prune:sparsity=0,min-size=0"], calib, test)
    rows: dict[str, dict[str, Any]] = {"dense": dense}
    table = []
    for sparsity in SPARSITIES:
        for allocation in ("uniform", "sensitivity"):
            options = {"sparsity": sparsity, **extra, "allocation": allocation, "samples": count}
            row = rows[f"{sparsity}-{allocation}"] = _row(model, [_spec("prune", options)], calib, test)
            table.append(_table_row(f"{sparsity:.0%}", allocation, row, dense))
    nm = rows["2:4"] = _row(model, [_spec("prune", {"pattern": "2:4", **extra})], calib, test)
    table.append(_table_row("2:4", "-", nm, dense))
    if "sort" in registered_passes():
        sorted_nm = _row(model, ["sort:for=2:4", _spec("prune", {"pattern": "2:4", **extra})], calib, test)
        rows["sort:for=2:4 + 2:4"] = sorted_nm
        table.append(_table_row("sort:for=2:4 + 2:4", "-", sorted_nm, dense))
    headers = (
        "setting", "allocation", "sparsity", "accuracy", "top-1 agreement", "cosine", "compressed / dense", "seconds"
    )  # fmt: skip
    print(
        f"\ndense: accuracy {fmt(dense['reference_accuracy'])}, weights {dense['method']} {dense['compressed']:,} B\n"
    )
    print(harness.markdown_table(headers, table))
    if "sort:for=2:4 + 2:4" in rows:
        print(
            f"\nmean kept magnitude of 2:4-pruned layers: {fmt(nm['kept'], '.4f')} without sort, "
            f"{fmt(rows['sort:for=2:4 + 2:4']['kept'], '.4f')} with sort:for=2:4"
        )
    latency = _latency(rows, {k: v[:1] for k, v in test.items() if k != "labels"}, latency_runs)
    return {"rows": {k: {f: v for f, v in r.items() if f != "result"} for k, r in rows.items()}, "latency": latency}


def _latency(rows: dict[str, dict[str, Any]], feed: samples.Feed, runs: int) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for label in ("dense", "0.9-uniform", "2:4"):
            paths[label] = Path(tmp) / f"{label}.onnx"
            rows[label]["result"].save(paths[label])
        times = harness.session_latency(paths, feed, rounds=3, runs_per_round=runs, warmup=3)
    print("\nonnxruntime CPU latency, batch 1 (the test feed's first sample; median ms, speed vs dense):")
    for label in times:
        print(f"  {label:12s} {harness.median_ms(times, label):8.3f} ms  {harness.speedup(times, 'dense', label):.2f}x")
    return times


def main(argv: list[str] | None = None) -> int:
    """Runs the pruning benchmark on the chosen models; ``--json`` writes the raw numbers."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--models", default="digits,ocr-cls,magika")
    parser.add_argument("--samples", type=int, default=64, help="calibration samples (sensitivity)")
    parser.add_argument("--latency-runs", type=int, default=30)
    parser.add_argument("--json", metavar="OUT", help="write the raw numbers to this JSON file")
    args = parser.parse_args(argv)
    environment = harness.print_environment(("zstandard", "Pillow"))
    results = {name: bench_model(name, args.samples, args.latency_runs) for name in args.models.split(",")}
    if args.json:
        harness.write_json(args.json, {**environment, "models": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
