"""``sort:for=2:4`` on resnet50 and trained models: kept magnitude, search time, exactness (issue 4).

The model is torchvision ``resnet50`` with random weights (seed 0), every BatchNorm's running stats
and affine re-drawn (var U[0.5, 1.5], mean U[-0.1, 0.1], gamma U[0.5, 1.5], beta U[-0.1, 0.1]) so
the logits are not ~0 (``export.py``: exported once in the torch environment and cached; the
BatchNormalization nodes stay). Torch is never imported here.

Then ``onnxshrink.shrink(model, ["sort:for=2:4"])`` runs in this process and the script prints,
for every layer the search scored with >= 64 input channels, the fraction of ``|W|`` a 2:4
magnitude prune keeps without and with the permutation, their average, the search time, the
whole pass time, and the max |output difference| against the original model through onnxruntime
(CPU, graph optimizations off, seeded N(0, 1) inputs, batch 2), relative to the output scale.
The same row is printed for trained third-party models of ``tests/helpers/real_models.py`` (``--real``;
their inputs from ``real_model_feed``), where channels differ in scale as they do after training
(rapidocr-det's sigmoid map is ~5e-7 everywhere on random input, so its ratio only shows float
rounding of saturated values; its max |diff| is the number to read). Run::

    python benchmarks/sort.py [--spec sort:for=2:4] [--real rapidocr-det ...] [--json OUT]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import export
import harness
import numpy as np
import onnx_ir as ir
from numerics import ort_outputs


def _wide_layers(path: Path, layers: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """The scored layers whose reduction axis (input channels) holds at least 64 channels.

    Layers are keyed as ``prune`` and ``sort`` report them: the node name, else op type and position.
    """
    from onnxshrink.loading import load_model
    from onnxshrink.sparsity import reduction_axis

    model = load_model(path).model
    wide = {}
    for index, node in enumerate(ir.traversal.RecursiveGraphIterator(model.graph)):
        key = node.name or f"{node.op_type}#{index}"
        tensor = ir.convenience.get_const_tensor(node.inputs[1]) if key in layers and len(node.inputs) > 1 else None
        axis = reduction_axis(node, len(tensor.shape)) if tensor is not None else None
        if tensor is not None and axis is not None and tensor.shape[axis] >= 64:
            wide[key] = layers[key]
    return wide


def measure(path: Path, spec: str, feed: dict[str, np.ndarray], *, verbose: bool) -> dict[str, Any]:
    """Runs the pass on one model and returns kept magnitudes, times and the output difference."""
    import onnxshrink

    started = time.perf_counter()
    result = onnxshrink.shrink(path, [spec], verify=False)
    seconds = time.perf_counter() - started
    record = result.report["passes"][0]
    stats = record["stats"]
    # The pass reports refused and unsearched groups together in ``skipped`` (older reports kept
    # ``refused`` apart); both are groups left as they were.
    left_alone = {**stats.get("refused", {}), **stats.get("skipped", {})}
    wide = _wide_layers(path, stats["layers"])
    if verbose:
        rows = [
            (key[-48:], f"{100 * e['kept_before']:.2f}%", f"{100 * e['kept_after']:.2f}%",
             f"{100 * (e['kept_after'] - e['kept_before']):+.2f}")
            for key, e in wide.items()
        ]  # fmt: skip
        print("\n" + harness.markdown_table(("layer", "kept 2:4", "sorted", "gain"), rows, title="resnet50 layers"))
    before = float(np.mean([e["kept_before"] for e in wide.values()])) if wide else float("nan")
    after = float(np.mean([e["kept_after"] for e in wide.values()])) if wide else float("nan")
    reference = ort_outputs(path, feed)[2]
    candidate = ort_outputs(result.to_proto().SerializeToString(), feed)[2]
    floats = [(np.asarray(r), np.asarray(c)) for r, c in zip(reference, candidate, strict=True) if r.dtype.kind == "f"]
    scale = max((float(np.abs(r).max()) for r, _ in floats), default=1.0)
    diff = max((float(np.abs(c - r).max()) for r, c in floats), default=0.0)
    return {
        "layers_scored": len(stats["layers"]),
        "layers_wide": len(wide),
        "kept_before": before,
        "kept_after": after,
        "gain_points": 100 * (after - before),
        "search_seconds": harness.pass_timing(record, "search", "search_seconds"),
        "search_cpu_seconds": harness.pass_timing(record, "search_cpu", "search_cpu_seconds"),
        "pass_seconds": record["seconds"],
        "shrink_seconds": seconds,
        "groups": stats["groups"],
        "groups_permuted": stats["groups_permuted"],
        "groups_left_alone": len(left_alone),
        "output_scale": scale,
        "max_abs_diff": diff,
        "max_diff_over_scale": diff / scale if scale else 0.0,
        "reasons": left_alone,
        "layers": wide,
    }


def main(argv: list[str] | None = None) -> int:
    """Measures ``--spec`` on resnet50 and the ``--real`` models and prints one row per model."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    export.add_arguments(parser)
    parser.add_argument("--spec", default="sort:for=2:4")
    parser.add_argument(
        "--real",
        nargs="*",
        default=["rapidocr-det", "rapidocr-rec", "oww-embedding", "captcha-crnn"],
        help="trained models from tests/helpers/real_models.py to measure too (fetched into $ONNXSHRINK_TEST_CACHE)",
    )
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    environment = harness.print_environment(settings=f"onnxshrink -p {args.spec}")
    path = export.exported("resnet50", args)
    feed = {"input": np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)}
    numbers = {"resnet50": measure(path, args.spec, feed, verbose=True)}
    real_models = harness.real_models()
    for model_id in args.real:
        spec = real_models.get_real_model(model_id)
        model_path = real_models.fetch(spec)
        numbers[model_id] = measure(model_path, args.spec, real_models.real_model_feed(spec, model_path), verbose=False)

    first = numbers["resnet50"]
    print(
        f"\nresnet50 groups {first['groups']}: permuted {first['groups_permuted']}, "
        f"left alone (refused or not searched) {first['groups_left_alone']}"
    )
    for label, why in first["reasons"].items():
        print(f"- {label}: {why}")
    headers = ("model", "layers>=64", "kept 2:4", "sorted", "gain", "search", "max|diff|", "scale", "diff/scale")
    rows = [
        (
            name, row["layers_wide"], f"{100 * row['kept_before']:.2f}%", f"{100 * row['kept_after']:.2f}%",
            f"{row['gain_points']:+.2f}", f"{harness.fmt(row['search_seconds'], '.1f')}s", f"{row['max_abs_diff']:.2g}",
            f"{row['output_scale']:.2g}", f"{row['max_diff_over_scale']:.2g}",
        )
        for name, row in numbers.items()
    ]  # fmt: skip
    print("\n" + harness.markdown_table(headers, rows))
    print(
        f"\nresnet50 search: {harness.fmt(first['search_seconds'], '.1f')} s wall, "
        f"{harness.fmt(first['search_cpu_seconds'], '.1f')} s CPU over {os.cpu_count()} cores "
        f"(load average {os.getloadavg()[0]:.1f}); pass {first['pass_seconds']:.1f} s"
    )
    if args.json:
        harness.write_json(args.json, {**environment, "spec": args.spec, "models": numbers})
    return 0


if __name__ == "__main__":
    sys.exit(main())
