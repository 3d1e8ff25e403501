"""Over 2 GiB: onnxshrink load + cleanup + save against plain onnx.load + onnx.save.

Builds (once, cached outside the tree) a 2.4 GB model with external data: nine
``MatMul(x, Identity(W_i))`` layers of 4096x16384 float32 weights, two of which hold the same
bytes (so cleanup has an initializer to merge and Identities to remove). Each tool runs in its
own process; the figures are wall time and peak RSS (median of ``--repeat`` runs) and their
ratios. Run: ``python benchmarks/bench_large.py [--cache DIR] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROWS, COLS, LAYERS = 4096, 16384, 9

BUILD = r"""
import sys, numpy as np, onnx
from onnx import helper, TensorProto, numpy_helper
rows, cols, layers, path = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
nodes, inits = [], []
prev = "x"
for i in range(layers):
    seed = 1 if i == 5 else i  # layer 5 repeats layer 1's weights
    shape = (rows, cols) if i % 2 == 0 else (cols, rows)
    w = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32) * 0.01
    inits.append(numpy_helper.from_array(w, f"w{i}"))
    nodes.append(helper.make_node("Identity", [f"w{i}"], [f"wi{i}"]))
    nodes.append(helper.make_node("MatMul", [prev, f"wi{i}"], [f"h{i}"]))
    prev = f"h{i}"
last = cols if (layers - 1) % 2 == 0 else rows
x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", rows])
y = helper.make_tensor_value_info(prev, TensorProto.FLOAT, ["N", last])
graph = helper.make_graph(nodes, "big", [x], [y], inits)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
onnx.save_model(model, path, save_as_external_data=True, location="big.onnx.data", size_threshold=0)
"""

ONNX_ROUND_TRIP = r"""
import sys, onnx
m = onnx.load(sys.argv[1])
onnx.save_model(m, sys.argv[2], save_as_external_data=True, location="plain.onnx.data")
"""


def _run(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of a child process."""
    start = time.perf_counter()
    wrapped = ["/usr/bin/time", "-f", "%M", *command] if Path("/usr/bin/time").exists() else command
    result = subprocess.run(wrapped, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{result.stderr[-2000:]}")
    rss_kb = float(result.stderr.strip().splitlines()[-1]) if wrapped is not command else float("nan")
    return seconds, rss_kb / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("ONNXSHRINK_BENCH_CACHE", Path.home() / ".cache" / "onnxshrink-bench")),
    )
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    folder = args.cache / "large"
    folder.mkdir(parents=True, exist_ok=True)
    model = folder / "big.onnx"
    if not model.exists():
        print("building the 2.4 GB model (once)...", flush=True)
        subprocess.run([sys.executable, "-c", BUILD, str(ROWS), str(COLS), str(LAYERS), str(model)], check=True)
    size = sum(p.stat().st_size for p in folder.glob("big.onnx*"))
    out = folder / "out"
    out.mkdir(exist_ok=True)
    tools = {
        "onnx.load+save": [sys.executable, "-c", ONNX_ROUND_TRIP, str(model), str(out / "plain.onnx")],
        "onnxshrink cleanup": [
            sys.executable,
            "-m",
            "onnxshrink.cli",
            "run",
            str(model),
            "-o",
            str(out / "shrunk.onnx"),
            "-p",
            "cleanup",
            "--no-verify",
        ],
    }
    results = {}
    for name, command in tools.items():
        runs = []
        for _ in range(args.repeat):
            # onnx.save appends to an existing external-data file: every run starts from nothing.
            for old in out.iterdir():
                old.unlink()
            runs.append(_run(command))
        results[name] = (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
    print(f"model: {model} ({size / 1e9:.2f} GB, {LAYERS} MatMul layers, external data)")
    print(f"{'tool':22} {'seconds':>9} {'peak RSS MB':>12} {'RSS/size':>9}")
    for name, (seconds, rss) in results.items():
        print(f"{name:22} {seconds:9.2f} {rss:12.0f} {rss * 1e6 / size:9.2f}")
    base_s, base_rss = results["onnx.load+save"]
    ours_s, ours_rss = results["onnxshrink cleanup"]
    print(f"onnxshrink / onnx: time {ours_s / base_s:.2f}x, peak RSS {ours_rss / base_rss:.2f}x")
    shrunk = sum(p.stat().st_size for p in out.glob("shrunk.onnx*"))
    print(f"onnxshrink output {shrunk / 1e9:.2f} GB (duplicate weight merged: {size - shrunk > 2**27})")


if __name__ == "__main__":
    main()
