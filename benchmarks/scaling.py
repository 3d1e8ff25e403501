"""Issue 16's goals: profiling with 1 and 2 workers, local processes and Ray, and object-store traffic.

Profiles one model's precision units (int8 / int4 per Conv, Gemm, MatMul: the items of
``auto --search int8,int4``) four ways in one run, each into a fresh
cache folder: ``local`` with 1 worker (the serial profile, in this process), ``local`` with 2
(a forkserver pool), and ``ray`` with 1 and 2 workers (actors on a local Ray instance started here,
``ray.init(num_cpus=2)``). For each it prints the wall time, the speedup over its 1-worker
baseline, the per-item times (median, sum) from the streamed items file, whether the profile
equals the serial one, and, for Ray, how many nodes' object stores hold the setup object
(the model and samples put once) and how many times workers read it.

With ``--prune``, it times ``run -p prune:allocation=sensitivity`` instead (``shrink`` with the
executor in the pass context): the same four executors measure the layers' damage curves, one
work item per layer; it prints the pass's allocation time, the speedup, whether every curve and
chosen sparsity equals the serial run's, and whether the models are byte-identical.
(``quantize:min-cosine``'s budget judges its few candidates one after the other and uses no
executor, so it has no mode here.)

The machine may be shared: the load average is printed before and after, and per-item times are
the figures a projection should use (the wall-time speedup is capped by whatever else runs).
Run with the project's venv plus Ray::

    python benchmarks/scaling.py [--model magika|ocr-cls|digits] [--samples 64] [--json out.json]
    python benchmarks/scaling.py --prune [--model ocr-cls] [--samples 32] [--sparsity 0.5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import harness
import samples as bench_samples

import onnxshrink
from onnxshrink.autotune.items import ItemMeasure
from onnxshrink.autotune.profile import profile
from onnxshrink.data.readers import open_samples
from onnxshrink.executors import LocalExecutor
from onnxshrink.spec import make_spec


def _model(name: str, count: int) -> tuple[Path, dict[str, Any]]:
    if name == "magika":
        path, calib, _ = bench_samples.magika(count)
    elif name == "ocr-cls":
        path, calib, _ = bench_samples.ocr_cls(count)
    else:
        path, calib, _ = bench_samples.digits()
        calib = {k: v[:count] for k, v in calib.items()}
    return path, calib


def _one(base: Any, calib: dict[str, Any], executor: Any, folder: Path, knobs: list[str]) -> dict[str, Any]:
    measure = ItemMeasure(executor, calib)
    started = time.perf_counter()
    found = profile(base, open_samples(calib), provider="cpu", knobs=knobs, cache=folder, measure=measure)
    wall = time.perf_counter() - started
    items = [json.loads(line) for path in folder.glob("*.items.jsonl") for line in path.read_text().splitlines()]
    seconds = [item["seconds"] for item in items]
    return {
        "wall_s": wall,
        "items": len(items),
        "item_median_s": statistics.median(seconds) if seconds else None,
        "item_sum_s": sum(seconds),
        "units": [u.to_json() for u in found.units],
        "nodes": sorted({item["node"] for item in items}),
    }


def _same(reference: list[dict[str, Any]], units: list[dict[str, Any]]) -> str:
    """``identical``, or the largest damage difference when only floats moved (bytes, MACs, settings equal)."""
    if reference == units:
        return "identical"
    if [(u["name"], [s["value"] for s in u["settings"]]) for u in reference] != [
        (u["name"], [s["value"] for s in u["settings"]]) for u in units
    ]:
        return "DIFFERENT settings"
    pairs = [
        (a, b) for x, y in zip(reference, units, strict=True) for a, b in zip(x["settings"], y["settings"], strict=True)
    ]
    if any((a["bytes"], a["macs"]) != (b["bytes"], b["macs"]) for a, b in pairs):
        return "DIFFERENT costs"
    return f"damage within {max(abs(a['damage'] - b['damage']) for a, b in pairs):.1e}"


def _prune_one(path: Path, calib: dict[str, Any], executor: Any, spec: str) -> dict[str, Any]:
    """One run of ``spec``; ``curves`` and ``sparsities`` are what must equal serial."""
    started = time.perf_counter()
    result = onnxshrink.shrink(path, [spec], calibration=calib, verify=False, executor=executor)
    wall = time.perf_counter() - started
    (record,) = result.report["passes"]
    layers = record["stats"]["layers"]
    curves = {name: layer.get("sensitivity") for name, layer in layers.items()}
    chosen = {name: layer.get("sparsity") for name, layer in layers.items()}
    return {
        "wall_s": wall,
        "allocation_s": record["timings"]["allocation"],
        "layers": sum(1 for curve in curves.values() if curve),
        "curves": curves,
        "sparsities": chosen,
        "model": result.to_proto().SerializeToString(),
    }


def _same_curves(reference: dict[str, Any], row: dict[str, Any]) -> str:
    if reference["sparsities"] != row["sparsities"]:
        return "DIFFERENT choices"
    gaps = [
        abs(a - b)
        for name, curve in reference["curves"].items()
        if curve
        for a, b in zip(curve, row["curves"][name], strict=True)
    ]
    same_model = "same model" if reference["model"] == row["model"] else "DIFFERENT model"
    return f"measures within {max(gaps, default=0.0):.1e}, {same_model}"


def _load(when: str) -> tuple[float, float, float]:
    """The load average now, printed (the machine is shared: it says how noisy the times are)."""
    load = os.getloadavg()
    print(f"load average {when}: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return load


def _on_each_executor(
    measure: Callable[[Any, str], dict[str, Any]], seconds: str, ray_too: bool
) -> dict[str, dict[str, Any]]:
    """``measure(executor, tag)`` on local x1, x2 and (with ``ray_too``) Ray x1, x2: rows by executor.

    Ray rows also get the object-store transfers and each node's worker reads; ``seconds`` names
    the row's figure printed as each finishes.
    """
    rows: dict[str, dict[str, Any]] = {}
    for workers in (1, 2):
        rows[f"local x{workers}"] = measure(LocalExecutor(workers), f"local{workers}")
        print(f"local x{workers}: {rows[f'local x{workers}'][seconds]:.1f} s", flush=True)
    if not ray_too:
        return rows
    import ray

    from onnxshrink.executors.ray_cluster import RayExecutor

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        for workers in (1, 2):
            executor = RayExecutor(workers=workers)
            try:
                row = measure(executor, f"ray{workers}")
                row["objects"] = executor.transfers()
                row["fetches"] = {n: s["fetches"] for n, s in executor.stats["nodes"].items()}
            finally:
                executor.close()
            rows[f"ray x{workers}"] = row
            print(f"ray x{workers}: {row[seconds]:.1f} s", flush=True)
    finally:
        ray.shutdown()
    return rows


def prune_main(args: argparse.Namespace) -> None:
    """``prune:allocation=sensitivity`` on 1 and 2 workers, local and Ray; prints the table."""
    environment = harness.print_environment(["onnxruntime", "ray"])
    load_before = _load("before")
    path, calib = _model(args.model, args.samples)
    spec = f"prune:sparsity={args.sparsity},allocation=sensitivity,samples={args.samples}"
    if args.options:
        spec = f"{spec},{args.options}"
    rows = _on_each_executor(
        lambda executor, _tag: _prune_one(path, calib, executor, spec), "allocation_s", not args.no_ray
    )
    load_after = _load("after")
    table = []
    for name, row in rows.items():
        baseline = rows[name.replace("x2", "x1")]["allocation_s"]
        setup = next(iter((row.get("objects") or {}).values()), None)
        table.append(
            [
                name,
                row["layers"],
                harness.fmt(row["allocation_s"], ".1f"),
                harness.fmt(baseline / row["allocation_s"], ".2f"),
                harness.fmt(row["wall_s"], ".1f"),
                _same_curves(rows["local x1"], row),
                f"{setup['bytes']} B on {setup['nodes']} node(s)" if setup else "-",
            ]
        )
    title = f"{args.model}: {spec} ({args.samples} calibration samples)"
    headers = ["executor", "layers", "allocation s", "speedup", "run s", "same as serial", "workload object"]
    print(harness.markdown_table(headers, table, title=title))
    if args.json:
        for row in rows.values():
            row.pop("model")
        harness.write_json(args.json, {"environment": environment, "load": [load_before, load_after], "rows": rows})


def main() -> None:
    """Runs the four profiles and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("magika", "ocr-cls", "digits"), default="magika")
    parser.add_argument("--samples", type=int, default=64, help="Calibration samples (the judge uses up to 128).")
    parser.add_argument("--knobs", default="int8,int4", help="Profiles measured: channels,int8,int4.")
    parser.add_argument("--no-ray", action="store_true", help="Local executor only.")
    parser.add_argument("--json", help="Write the figures here.")
    parser.add_argument("--prune", action="store_true", help="Time prune:allocation=sensitivity instead.")
    parser.add_argument("--sparsity", type=float, default=0.5, help="--prune: the pass's target sparsity.")
    parser.add_argument("--options", help="--prune: more KEY=VALUE options of the pass.")
    args = parser.parse_args()
    if args.prune:
        prune_main(args)
        return
    environment = harness.print_environment(["onnxruntime", "ray"])
    load_before = _load("before")
    knobs = [k.strip() for k in args.knobs.split(",")]
    path, calib = _model(args.model, args.samples)
    base = onnxshrink.shrink(path, [make_spec("simplify", {})], verify=False).model
    with tempfile.TemporaryDirectory(prefix="onnxshrink-scaling-") as tmp:
        rows = _on_each_executor(
            lambda executor, tag: _one(base, calib, executor, Path(tmp) / tag, knobs), "wall_s", not args.no_ray
        )
    load_after = _load("after")
    reference = rows["local x1"]["units"]
    table = []
    for name, row in rows.items():
        baseline = rows[name.replace("x2", "x1")]["wall_s"]
        objects = row.get("objects") or {}
        setup = next((v for k, v in objects.items() if k.startswith("setup-")), None)
        table.append(
            [
                name,
                row["items"],
                harness.fmt(row["wall_s"], ".1f"),
                harness.fmt(baseline / row["wall_s"], ".2f"),
                harness.fmt(row["item_median_s"], ".2f"),
                harness.fmt(row["item_sum_s"], ".1f"),
                _same(reference, row["units"]),
                f"{setup['bytes']} B on {setup['nodes']} node(s)" if setup else "-",
                sum(row.get("fetches", {}).values()) if objects else "-",
            ]
        )
    title = f"{args.model}: profile of {args.knobs} ({args.samples} calibration samples)"
    headers = ["executor", "items", "wall s", "speedup", "item median s", "item sum s", "same profile"]
    print(harness.markdown_table([*headers, "setup object", "worker reads"], table, title=title))
    if args.json:
        for row in rows.values():
            row.pop("units")
        payload = {"environment": environment, "load": [load_before, load_after], "rows": rows}
        harness.write_json(args.json, payload)


if __name__ == "__main__":
    main()
