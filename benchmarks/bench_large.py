"""Over 2 GiB: onnxshrink load + cleanup + save against plain onnx.load + onnx.save.

The model is ``large-identity`` from ``export.py`` (built once, cached): nine
``MatMul(x, Identity(W_i))`` layers of 4096x16384 float32 weights, 2.4 GB of external data, two
layers holding the same bytes (so cleanup has an initializer to merge and Identities to remove).
Each tool runs in its own process (``harness.run_child``); the figures are wall time and peak RSS
(median of ``--repeat`` runs) and their ratios. Run::

    python benchmarks/bench_large.py [--cache DIR] [--repeat 3] [--json OUT]
"""

from __future__ import annotations

import argparse
import statistics
import sys

import export
import harness

ONNX_ROUND_TRIP = r"""
import sys, onnx
m = onnx.load(sys.argv[1])
onnx.save_model(m, sys.argv[2], save_as_external_data=True, location="plain.onnx.data")
"""


def main(argv: list[str] | None = None) -> int:
    """Builds the 2.4 GB model once, then compares onnx.load+save with onnxshrink's cleanup, process by process."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    export.add_arguments(parser)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", metavar="OUT", help="write the raw numbers to this JSON file")
    args = parser.parse_args(argv)
    environment = harness.print_environment(settings=f"median of {args.repeat}, one process per run")
    model = export.built_large("large-identity", args)
    size = sum(p.stat().st_size for p in model.parent.glob(model.name + "*"))
    out = args.cache / "runs" / "bench_large"
    out.mkdir(parents=True, exist_ok=True)
    tools = {
        "onnx.load+save": [sys.executable, "-c", ONNX_ROUND_TRIP, str(model), str(out / "plain.onnx")],
        "onnxshrink cleanup": [
            *harness.onnxshrink_cli(), "run", str(model), "-o", str(out / "shrunk.onnx"), "-p", "cleanup", "--no-verify"
        ],
    }  # fmt: skip
    results: dict[str, list[harness.ChildRun]] = {}
    for name, command in tools.items():
        results[name] = []
        for _ in range(args.repeat):
            # onnx.save appends to an existing external-data file: every run starts from nothing.
            for old in out.iterdir():
                old.unlink()
            run = harness.run_child(command, timeout=1800)
            if not run.ok:
                raise SystemExit(f"{name} failed: {run.failure}\n{run.tail}")
            results[name].append(run)
    medians = {
        name: (statistics.median(r.wall_s for r in runs), statistics.median(r.peak_rss_mb for r in runs))
        for name, runs in results.items()
    }
    print(f"\nmodel: {model.name} ({size / 1e9:.2f} GB, {export.LARGE_LAYERS} MatMul layers, external data)\n")
    rows = [(name, f"{s:.2f}", f"{rss:.0f}", f"{rss * 2**20 / size:.2f}") for name, (s, rss) in medians.items()]
    print(harness.markdown_table(("tool", "seconds", "peak RSS MB", "RSS/size"), rows))
    base_s, base_rss = medians["onnx.load+save"]
    ours_s, ours_rss = medians["onnxshrink cleanup"]
    shrunk = sum(p.stat().st_size for p in out.glob("shrunk.onnx*"))
    print(f"\nonnxshrink / onnx: time {ours_s / base_s:.2f}x, peak RSS {ours_rss / base_rss:.2f}x")
    print(f"onnxshrink output {shrunk / 1e9:.2f} GB (input {size / 1e9:.2f} GB)")
    if args.json:
        harness.write_json(args.json, {**environment, "model_bytes": size, "output_bytes": shrunk, "runs": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
