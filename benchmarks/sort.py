"""Issue 4's ``sort:for=2:4`` goals on resnet50: kept magnitude, search time, exactness.

The model is torchvision ``resnet50`` with random weights (seed 0), every BatchNorm's running stats
and affine re-drawn (var U[0.5, 1.5], mean U[-0.1, 0.1], gamma U[0.5, 1.5], beta U[-0.1, 0.1]) so
the logits are not ~0, exported by the torch TorchScript exporter (``dynamo=False``, opset 17,
eval mode, ``do_constant_folding=False``: the BatchNormalization nodes stay) in the torch
environment (``--torch-python``, default ``$ONNXSHRINK_BENCH_TORCH_PYTHON`` or
``/tmp/benchvenv/bin/python``) and cached in ``$ONNXSHRINK_BENCH_CACHE`` (default
``~/.cache/onnxshrink-bench``), folder ``sort/``. Torch is never imported here.

Then ``onnxshrink.shrink(model, ["sort:for=2:4"])`` runs in this process and the script prints,
for every layer the search scored with >= 64 input channels, the fraction of ``|W|`` a 2:4
magnitude prune keeps without and with the permutation, their average, the search time, the
whole pass time, and the max |output difference| against the original model through onnxruntime
(CPU, graph optimizations off, seeded N(0, 1) inputs, batch 2), relative to the output scale.
The same row is printed for trained third-party models of ``tests/helpers/real_models.py`` (``--real``;
their inputs from ``make_inputs``), where channels differ in scale as they do after training.
Goals (issue 4): average gain >= +1 point, search < 60 s, max diff <= 1e-5 x output scale
(rapidocr-det's sigmoid map is ~5e-7 everywhere on random input, so its ratio only shows float
rounding of saturated values; its max |diff| is the number to read). Run::

    .venv/bin/python benchmarks/sort.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

import onnxshrink
from onnxshrink.loading import load_model
from onnxshrink.passes.sort import _layer_keys
from onnxshrink.sparsity import reduction_axis

CACHE = Path(os.environ.get("ONNXSHRINK_BENCH_CACHE", Path.home() / ".cache" / "onnxshrink-bench")) / "sort"

EXPORT = r"""
import sys, torch, torchvision
torch.manual_seed(0)
net = torchvision.models.resnet50(weights=None).eval()
with torch.no_grad():
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_var.uniform_(0.5, 1.5)
            module.running_mean.uniform_(-0.1, 0.1)
            module.weight.uniform_(0.5, 1.5)
            module.bias.uniform_(-0.1, 0.1)
torch.onnx.export(
    net, (torch.randn(2, 3, 224, 224),), sys.argv[1], dynamo=False, opset_version=17,
    do_constant_folding=False, input_names=["input"], output_names=["output"],
    dynamic_axes={"input": {0: "N"}, "output": {0: "N"}},
)
"""


def export(torch_python: str) -> Path:
    """The cached resnet50 export, made once in the torch environment."""
    path = CACHE / "resnet50.onnx"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.onnx")
        subprocess.run([torch_python, "-c", EXPORT, str(tmp)], check=True)
        tmp.rename(path)
    return path


def _wide_layers(path: Path, layers: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """The scored layers whose reduction axis (input channels) holds at least 64 channels."""
    model = load_model(path).model
    keys = _layer_keys(model)
    wide = {}
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        key = keys[id(node)]
        tensor = ir.convenience.get_const_tensor(node.inputs[1]) if key in layers and len(node.inputs) > 1 else None
        axis = reduction_axis(node, len(tensor.shape)) if tensor is not None else None
        if tensor is not None and axis is not None and tensor.shape[axis] >= 64:
            wide[key] = layers[key]
    return wide


def measure(path: Path, spec: str, feed: dict[str, np.ndarray], *, verbose: bool) -> dict[str, Any]:
    """Runs the pass on one model and returns kept magnitudes, times and the output difference."""
    started = time.perf_counter()
    result = onnxshrink.shrink(path, [spec], verify=False)
    seconds = time.perf_counter() - started
    record = result.report["passes"][0]
    stats = record["stats"]
    wide = _wide_layers(path, stats["layers"])
    if verbose:
        print(f"{'layer':48s} {'kept 2:4':>9s} {'sorted':>9s} {'gain':>7s}")
        for key, entry in wide.items():
            gain = 100 * (entry["kept_after"] - entry["kept_before"])
            print(f"{key[-48:]:48s} {100 * entry['kept_before']:8.2f}% {100 * entry['kept_after']:8.2f}% {gain:+6.2f}")
    before = float(np.mean([e["kept_before"] for e in wide.values()])) if wide else float("nan")
    after = float(np.mean([e["kept_after"] for e in wide.values()])) if wide else float("nan")

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    providers = ["CPUExecutionProvider"]
    reference = ort.InferenceSession(str(path), options, providers=providers).run(None, feed)
    candidate = ort.InferenceSession(result.to_proto().SerializeToString(), options, providers=providers).run(
        None, feed
    )
    floats = [
        (np.asarray(r), np.asarray(c))
        for r, c in zip(reference, candidate, strict=True)
        if np.asarray(r).dtype.kind == "f"
    ]
    scale = max((float(np.abs(r).max()) for r, _ in floats), default=1.0)
    diff = max((float(np.abs(c - r).max()) for r, c in floats), default=0.0)
    return {
        "layers_scored": len(stats["layers"]),
        "layers_wide": len(wide),
        "kept_before": before,
        "kept_after": after,
        "gain_points": 100 * (after - before),
        "search_seconds": stats["search_seconds"],
        "search_cpu_seconds": stats["search_cpu_seconds"],
        "pass_seconds": record["seconds"],
        "shrink_seconds": seconds,
        "groups": stats["groups"],
        "groups_permuted": stats["groups_permuted"],
        "groups_refused": len(stats["refused"]),
        "groups_skipped": len(stats["skipped"]),
        "output_scale": scale,
        "max_abs_diff": diff,
        "max_diff_over_scale": diff / scale if scale else 0.0,
        "reasons": {**stats["refused"], **stats["skipped"]},
        "layers": wide,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--torch-python", default=os.environ.get("ONNXSHRINK_BENCH_TORCH_PYTHON", "/tmp/benchvenv/bin/python")
    )
    parser.add_argument("--spec", default="sort:for=2:4")
    parser.add_argument(
        "--real",
        nargs="*",
        default=["rapidocr-det", "rapidocr-rec", "oww-embedding", "captcha-crnn"],
        help="trained models from tests/helpers/real_models.py to measure too (fetched into $ONNXSHRINK_TEST_CACHE)",
    )
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    path = export(args.torch_python)
    feed = {"input": np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)}
    numbers = {"resnet50": measure(path, args.spec, feed, verbose=True)}
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from helpers import real_models

    for model_id in args.real:
        spec = real_models.get_real_model(model_id)
        model_path = real_models.fetch(spec)
        numbers[model_id] = measure(model_path, args.spec, real_models.real_model_feed(spec, model_path), verbose=False)

    print()
    first = numbers["resnet50"]
    print(
        f"resnet50 groups {first['groups']}: permuted {first['groups_permuted']}, refused {first['groups_refused']}, "
        f"not searched {first['groups_skipped']}"
    )
    for label, why in first["reasons"].items():
        print(f"  {label}: {why}")
    print()
    header = f"{'model':16s} {'layers>=64':>10s} {'kept 2:4':>9s} {'sorted':>9s} {'gain':>7s} {'search':>8s}"
    print(f"{header} {'max|diff|':>10s} {'scale':>9s} {'diff/scale':>10s}")
    for name, row in numbers.items():
        print(
            f"{name:16s} {row['layers_wide']:10d} {100 * row['kept_before']:8.2f}% {100 * row['kept_after']:8.2f}% "
            f"{row['gain_points']:+7.2f} {row['search_seconds']:7.1f}s {row['max_abs_diff']:10.2g} "
            f"{row['output_scale']:9.2g} {row['max_diff_over_scale']:10.2g}"
        )
    row = numbers["resnet50"]
    print(
        f"resnet50 search: {row['search_seconds']:.1f} s wall, {row['search_cpu_seconds']:.1f} s CPU over "
        f"{os.cpu_count()} cores (load average {os.getloadavg()[0]:.1f}); pass {row['pass_seconds']:.1f} s"
    )
    print("goals: gain >= +1 point on layers >= 64 in; resnet50 search < 60 s; diff <= 1e-5 x output scale")
    if args.json:
        args.json.write_text(json.dumps({"spec": args.spec, **numbers}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
