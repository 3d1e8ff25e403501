"""``simplify`` on int8 models made by another tool (onnxruntime's quantizer) against onnxsim.

Variants, built once into ``<cache>/int8`` from the ``export.py`` exports: onnxruntime
``quantize_static`` in QDQ and in QOperator format (resnet18, mobilenet_v3_small; 8 random
calibration samples) and ``quantize_dynamic`` (resnet18, mobilenet_v3_small, bert-base). Each
variant is simplified by ``onnxshrink.shrink(path, ["simplify"])`` and by ``onnxsim.simplify``
(defaults), in this process; the table gives nodes and file sizes (input, onnxshrink, onnxsim)
and each output's max |diff| against the input with onnxruntime (optimizations off). Run::

    python benchmarks/bench_int8.py [--models resnet18,mobilenet_v3_small,bert-base] [--json OUT]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import export
import harness
import numpy as np

IMAGE_MODELS = ("resnet18", "mobilenet_v3_small")
MODELS = (*IMAGE_MODELS, "bert-base")


def _feed(path: Path, seed: int = 0) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    feed = {}
    for value in session.get_inputs():
        shape = [d if isinstance(d, int) else (1 if i == 0 else 16) for i, d in enumerate(value.shape)]
        if "int64" in value.type:
            feed[value.name] = rng.integers(0, 2, size=shape).astype(np.int64)
        else:
            feed[value.name] = rng.standard_normal(shape).astype(np.float32)
    return feed


class _Reader:
    """onnxruntime CalibrationDataReader over a few random samples."""

    def __init__(self, path: Path, count: int = 8) -> None:
        self.samples = iter([_feed(path, seed) for seed in range(count)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.samples, None)


def build_variants(model_id: str, source: Path, folder: Path) -> dict[str, Path]:
    """The int8 variants of one export (built once, cached)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    folder.mkdir(parents=True, exist_ok=True)
    variants: dict[str, Path] = {}
    prepared = folder / f"{model_id}.pre.onnx"
    if not prepared.exists():
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=model_id == "bert-base")
    if model_id in IMAGE_MODELS:
        for name, fmt in (("qdq", QuantFormat.QDQ), ("qop", QuantFormat.QOperator)):
            out = folder / f"{model_id}.static-{name}.onnx"
            if not out.exists():
                quantize_static(str(prepared), str(out), _Reader(prepared), quant_format=fmt, per_channel=True)
            variants[f"{model_id} static {name.upper()}"] = out
    out = folder / f"{model_id}.dynamic.onnx"
    if not out.exists():
        quantize_dynamic(str(prepared), str(out), weight_type=QuantType.QInt8)
    variants[f"{model_id} dynamic"] = out
    return variants


def _max_diff(reference: Path, candidate: Path) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    feed = _feed(reference, seed=99)
    a = ort.InferenceSession(str(reference), options, providers=["CPUExecutionProvider"]).run(None, feed)
    b = ort.InferenceSession(str(candidate), options, providers=["CPUExecutionProvider"]).run(None, feed)
    return max(
        float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))) if x.size else 0.0
        for x, y in zip(a, b, strict=True)
    )


def run_variant(path: Path, work: Path) -> dict[str, Any]:
    """Simplifies one variant with both tools; counts, sizes and numerics."""
    import onnx
    import onnxsim

    import onnxshrink

    row: dict[str, Any] = {"input": harness.model_counts(path)}
    shrunk = work / "onnxshrink.onnx"
    onnxshrink.shrink(str(path), ["simplify"], verify=False).save(str(shrunk))
    row["onnxshrink"] = {**harness.model_counts(shrunk), "max_diff": _max_diff(path, shrunk)}
    simmed = work / "onnxsim.onnx"
    try:
        result, ok = onnxsim.simplify(onnx.load(str(path)))
        onnx.save(result, str(simmed))
        row["onnxsim"] = {**harness.model_counts(simmed), "max_diff": _max_diff(path, simmed), "check_ok": ok}
    except Exception as error:  # onnxsim refuses some quantized graphs
        row["onnxsim"] = {"failure": f"{type(error).__name__}: {str(error).splitlines()[0][:80]}"}
    return row


def main(argv: list[str] | None = None) -> int:
    """Builds the variants, simplifies each with both tools and prints the table."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    export.add_arguments(parser)
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {', '.join(MODELS)}")
    parser.add_argument("--json", metavar="OUT", help="write every raw number to this JSON file")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    environment = harness.print_environment(("onnxsim",), "onnxshrink simplify vs onnxsim.simplify (defaults)")
    rows: dict[str, Any] = {}
    for model_id in [m for m in args.models.split(",") if m]:
        source = export.exported(model_id, args, keep_zeros=False, static_batch=False)
        for label, path in build_variants(model_id, source, args.cache / "int8").items():
            print(f"... {label}", file=sys.stderr, flush=True)
            with tempfile.TemporaryDirectory() as work:
                rows[label] = run_variant(path, Path(work))
    table = []
    for label, row in rows.items():
        shrink, sim = row["onnxshrink"], row["onnxsim"]
        mb = lambda entry: f"{entry['bytes'] / 1e6:.2f}"  # noqa: E731
        table.append(
            (
                label, row["input"]["nodes"], shrink["nodes"], sim.get("nodes", sim.get("failure")),
                mb(row["input"]), mb(shrink), mb(sim) if "bytes" in sim else "-",
                harness.fmt(shrink["max_diff"], ".1e"), harness.fmt(sim.get("max_diff"), ".1e"),
            )
        )  # fmt: skip
    headers = (
        "variant",
        "nodes in",
        "onnxshrink",
        "onnxsim",
        "MB in",
        "MB onnxshrink",
        "MB onnxsim",
        "diff shrink",
        "diff sim",
    )
    print("\n" + harness.markdown_table(headers, table, title="int8 models from onnxruntime's quantizer"))
    if args.json:
        harness.write_json(args.json, {**environment, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
