"""``simplify`` against onnxsim, onnxslim and plain onnx.load+save (issue 3's comparison).

Models (``export.py``, exported once and cached): ``resnet50``, ``mobilenet_v3_small``,
``efficientnet_b0``, ``vit_b_16``, ``bert-base`` and ``large`` (``large-transpose``: 2.42 GB of
external data, nine ``Relu(MatMul(h, Transpose(W_i)))`` layers, so folding a Transpose moves real
data); and, as users export them with paddle2onnx, rapidocr's PP-OCR text-direction classifier
(``ocr-cls``) and PP-OCRv4 recognizer (``ocr-rec``) from the test model cache.
``--issue-exports`` exports ``vit_b_16`` with a static batch of 1 and ``bert-base`` without the
all-zero re-draw, the recipes behind issue 3's table.

Tools, each in a fresh process (``harness.run_child``: wall time and peak RSS), round-robin over
the tools, ``--repeat`` times (medians):

- ``onnx.load+save``: the floor (external data kept external);
- ``onnxshrink``: ``onnxshrink run MODEL -o OUT -p ... --no-verify`` (whole process, peak RSS, the
  output that is checked) and, in a second fresh process, ``onnxshrink.shrink(path, passes,
  verify=False).save(out)`` timed from load to saved file (in-process time);
- ``onnxsim``: ``onnxsim.simplify(onnx.load(path))`` + ``onnx.save`` (defaults); for an
  external-data model ``onnxsim.simplify(path, output_path=out)``, its large-model route;
- ``onnxslim``: ``onnxslim.slim(onnx.load(path))`` + ``onnx.save`` (defaults; external data when
  the input has it).

Figures: nodes after (subgraphs and function bodies included), Shape nodes left, in-process time
(load + work + save, imports excluded) and its ratio to the floor's, whole-process wall time, peak
RSS and its ratio to the input's size, output size, and max |output diff| against the original
model (``numerics.py check``). ``--latency``: each tool's output against the original model on
onnxruntime CPU (one thread), interleaved rounds at batch 1 and 32 (PP-OCR: rendered text lines;
image models: seeded N(0, 1) images), the median of same-round ratios (above 1: faster). Run::

    python benchmarks/simplify.py [--models resnet50,bert-base,ocr-cls] [--repeat 3] [--latency] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import export
import harness

HERE = Path(__file__).resolve()
FLOOR, SHRINK, SIM, SLIM = "onnx.load+save", "onnxshrink", "onnxsim", "onnxslim"
TOOLS = (FLOOR, SHRINK, SIM, SLIM)
BERT, VIT, LARGE = "bert-base", "vit_b_16", "large"
OCR = {"ocr-cls": "ocr_cls", "ocr-rec": "ocr_rec"}  # samples.py's loaders
MODELS = ("resnet50", "mobilenet_v3_small", "efficientnet_b0", VIT, BERT, LARGE, *OCR)
LATENCY_BATCHES = (1, 32)


# ------------------------------------------------------------------------------------------------
# the child: one tool in-process (only the standard library is imported before the timer's start)


def _save_proto(model: Any, out: str, external: bool) -> None:
    import onnx

    if external:
        location = Path(out).name + ".data"
        onnx.save_model(
            model, out, save_as_external_data=True, all_tensors_to_one_file=True, location=location, size_threshold=1024
        )
    else:
        onnx.save_model(model, out)


def _uses_external_data(path: str) -> bool:
    import onnx

    proto = onnx.load(path, load_external_data=False)
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)


def child_tool(tool: str, model: str, out: str, passes: list[str]) -> None:
    """Imports (untimed), then load + work + save (timed); emits the timings."""
    import warnings

    warnings.filterwarnings("ignore")
    external = _uses_external_data(model)
    info: dict[str, Any] = {}
    started = time.perf_counter()
    if tool == FLOOR:
        import onnx

        t0 = time.perf_counter()
        _save_proto(onnx.load(model), out, external)
    elif tool == SHRINK:
        from onnxshrink import shrink  # the package loads its API lazily: an import, outside the timing

        t0 = time.perf_counter()
        shrink(model, passes, verify=False).save(out)
    elif tool == SIM:
        import onnx
        import onnxsim

        info["torch_imported"] = "torch" in sys.modules
        t0 = time.perf_counter()
        if external:
            info["mode"] = "simplify(path, output_path=out)"
            _result, ok = onnxsim.simplify(model, output_path=out)
        else:
            info["mode"] = "simplify(onnx.load(path)) + onnx.save"
            result, ok = onnxsim.simplify(onnx.load(model))
            onnx.save_model(result, out)
        info["check_ok"] = bool(ok)
    elif tool == SLIM:
        import onnx
        import onnxslim

        info["torch_imported"] = "torch" in sys.modules
        t0 = time.perf_counter()
        result = onnxslim.slim(onnx.load(model))
        if result is None:
            raise RuntimeError("onnxslim.slim returned None")
        _save_proto(result, out, external)
    else:
        raise ValueError(tool)
    info.update(in_process_s=time.perf_counter() - t0, import_s=t0 - started, torch_in_process="torch" in sys.modules)
    harness.emit_result(info)


# ------------------------------------------------------------------------------------------------
# the parent


def _probe_pass(name: str) -> str | None:
    """None when ``onnxshrink passes NAME`` succeeds, else its last error line."""
    probe = subprocess.run([*harness.onnxshrink_cli(), "passes", name], capture_output=True, text=True, check=False)
    if probe.returncode == 0:
        return None
    lines = (probe.stderr or probe.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit {probe.returncode}"


def resolve_passes(requested: list[str] | None) -> tuple[list[str], str | None]:
    """The pass list: ``-p`` specs as given, else ``simplify``, else (with a note) fold, fuse-bn, cleanup."""
    if requested:
        for spec in requested:
            reason = _probe_pass(spec.split(":", 1)[0])
            if reason:
                raise SystemExit(f"onnxshrink passes {spec.split(':', 1)[0]} failed: {reason}")
        return list(requested), None
    reason = _probe_pass("simplify")
    if reason is None:
        return ["simplify"], None
    passes = [name for name in ("fold", "fuse-bn") if _probe_pass(name) is None] + ["cleanup"]
    return passes, f"'onnxshrink passes simplify' failed ({reason}); falling back to -p {' -p '.join(passes)}"


def _model_path(model_id: str, args: argparse.Namespace) -> Path:
    if model_id in OCR:
        import samples

        return getattr(samples, OCR[model_id])(1)[0]
    if model_id == LARGE:
        return export.built_large("large-transpose", args)
    issue = args.issue_exports
    return export.exported(
        model_id, args, keep_zeros=issue and model_id == BERT, static_batch=issue and model_id == VIT
    )


def _fresh_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def _child(args: argparse.Namespace, *command: str) -> harness.ChildRun:
    return harness.run_child([sys.executable, *command], timeout=args.timeout, mem_limit_gb=args.mem_limit_gb)


def tool_once(tool: str, model: Path, work: Path, passes: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """One repeat of one tool. onnxshrink: the CLI process, then the in-process child."""
    out = _fresh_dir(work / tool.replace("+", "_").replace(".", "_")) / "out.onnx"
    in_process = [str(HERE), "--child", tool, str(model), str(out), json.dumps(passes)]
    if tool == SHRINK:
        pass_args = [arg for spec in passes for arg in ("-p", spec)]
        command = [*harness.onnxshrink_cli(), "run", str(model), "-o", str(out), *pass_args, "--no-verify"]
        cli = harness.run_child(command, timeout=args.timeout, mem_limit_gb=args.mem_limit_gb)
        if not cli.ok:
            return {"out": str(out), "ok": False, "failure": f"CLI: {cli.failure}", "tail": cli.tail}
        api_out = _fresh_dir(work / "onnxshrink_api") / "out.onnx"
        api = _child(args, *in_process[:4], str(api_out), in_process[5])
        shutil.rmtree(api_out.parent, ignore_errors=True)
        entry = {"out": str(out), "ok": api.ok, "wall_s": cli.wall_s, "rss_mb": cli.peak_rss_mb}
        if not api.ok:
            return {**entry, "failure": f"in-process child: {api.failure}", "tail": api.tail}
        return {**entry, **(api.result or {}), "api_wall_s": api.wall_s, "api_rss_mb": api.peak_rss_mb}
    run = _child(args, *in_process)
    entry = {"out": str(out), "ok": run.ok, "wall_s": run.wall_s, "rss_mb": run.peak_rss_mb}
    return {**entry, **(run.result or {})} if run.ok else {**entry, "failure": run.failure, "tail": run.tail}


def bench_model(model_id: str, tools: list[str], passes: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Runs every tool on one model, round-robin, ``--repeat`` times, each in a fresh process.

    Returns:
        The model's original counts and export recipe, the reference run, and per tool its runs,
        medians and numerics against the original (or the failure that stopped it).
    """
    path = _model_path(model_id, args)
    original = harness.model_counts(path)
    row: dict[str, Any] = {
        "model": model_id,
        "path": str(path),
        "original": original,
        "export": export.export_info(path),
    }
    work = args.cache / "runs" / "simplify" / model_id
    work.mkdir(parents=True, exist_ok=True)
    npz = work / "reference.npz"
    check = not (model_id == LARGE and args.no_large_diff)
    if check:
        ref = _child(args, str(HERE.parent / "numerics.py"), "reference", str(path), str(npz))
        row["reference"] = {"seconds": ref.wall_s, "ok": ref.ok, "failure": ref.failure}
        check = ref.ok
    runs: dict[str, list[dict[str, Any]]] = {tool: [] for tool in tools}
    repeats = args.large_repeat if model_id == LARGE and args.large_repeat else args.repeat
    for rep in range(repeats):
        for tool in tools:
            if runs[tool] and not runs[tool][-1]["ok"]:
                continue  # it failed: do not spend more repeats on it
            print(f"    {model_id} {tool} repeat {rep + 1}/{repeats}", file=sys.stderr, flush=True)
            runs[tool].append(tool_once(tool, path, work, passes, args))
    row["tools"] = {}
    for tool in tools:
        last = runs[tool][-1]
        entry: dict[str, Any] = {"runs": runs[tool], "ok": last["ok"]}
        row["tools"][tool] = entry
        if not last["ok"]:
            entry.update(failure=last["failure"], tail=last.get("tail"))
            continue
        for key in ("in_process_s", "wall_s", "rss_mb", "import_s"):
            entry[key] = statistics.median(r[key] for r in runs[tool])
        entry.update({k: last[k] for k in ("torch_imported", "mode", "check_ok") if k in last})
        entry.update(harness.model_counts(last["out"]))
        entry["rss_over_file"] = entry["rss_mb"] * 2**20 / original["bytes"]
        if check:
            numerics = _child(args, str(HERE.parent / "numerics.py"), "check", str(npz), last["out"])
            entry["numerics"] = numerics.result if numerics.ok else {"failure": f"ORT: {numerics.failure}"}
    floor = row["tools"].get(FLOOR, {})
    for entry in row["tools"].values():
        if entry["ok"] and floor.get("ok"):
            entry["in_process_over_floor"] = entry["in_process_s"] / floor["in_process_s"]
    if args.latency:
        row["latency"] = _latency(model_id, path, {t: row["tools"][t] for t in tools if t != FLOOR})
    if not args.keep_outputs:
        for tool in tools:
            shutil.rmtree(work / tool.replace("+", "_").replace(".", "_"), ignore_errors=True)
    return row


def _latency_feed(model_id: str, path: Path, batch: int) -> dict[str, Any] | None:
    """A batch for timing: rendered text lines for PP-OCR, seeded images for static image inputs."""
    import numpy as np
    import onnx

    if model_id in OCR:
        import samples

        return {"x": getattr(samples, OCR[model_id])(batch)[1]["x"]}
    (value,) = [i for i in onnx.load(str(path), load_external_data=False).graph.input][:1] or [None]
    dims = [d.dim_value for d in value.type.tensor_type.shape.dim] if value is not None else []
    if value is None or value.type.tensor_type.elem_type != onnx.TensorProto.FLOAT or not all(dims[1:]):
        return None
    return {value.name: np.random.default_rng(0).standard_normal((batch, *dims[1:])).astype(np.float32)}


def _latency(model_id: str, path: Path, entries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each tool's output against the original at :data:`LATENCY_BATCHES`: median same-round ratios."""
    paths = {"original": path, **{tool: Path(e["runs"][-1]["out"]) for tool, e in entries.items() if e["ok"]}}
    found: dict[str, Any] = {}
    for batch in LATENCY_BATCHES:
        feed = _latency_feed(model_id, path, batch)
        if feed is None:
            return {"skipped": "no float input of static non-batch dims"}
        first = harness.session_latency({"original": path}, feed, rounds=1, threads=1)["original"][0]
        rounds = max(3, min(60, int(10_000 / max(first, 1e-3))))  # about 10 s of the original per batch
        times = harness.session_latency(paths, feed, rounds=rounds, threads=1)
        found[f"b{batch}_ms"] = harness.median_ms(times, "original")
        for tool in paths.keys() - {"original"}:
            found.setdefault(tool, {})[f"b{batch}"] = harness.speedup(times, "original", tool)
    return found


def print_model(row: dict[str, Any], tools: list[str]) -> None:
    """Prints one model's table (tools against the load+save floor) and the notes under it."""
    orig, meta, fmt = row["original"], row["export"], harness.fmt
    recipe = ", ".join(
        f"{k} {meta[k]}" for k in ("keep_zeros", "static_batch", "bn_redrawn", "zero_params_redrawn") if k in meta
    )
    headers = (
        "tool", "nodes", "Shape", "in-proc s", "/floor", "wall s", "RSS MB", "RSS/file", "size MB", "max|diff|", "num"
    )  # fmt: skip
    rows: list[tuple[Any, ...]] = [
        ("original", orig["nodes"], orig["shape_nodes"], "", "", "", "", "", f"{orig['bytes'] / 1e6:.1f}", "", "")
    ]
    notes = [f"export: {recipe}"] if recipe else []
    for tool in tools:
        entry = row["tools"][tool]
        if not entry["ok"]:
            rows.append((tool, f"FAILED: {entry['failure']}", *[""] * 9))
            continue
        num = entry.get("numerics")
        if num is None:
            diff, verdict = "skipped", ""
        elif "failure" in num:
            diff, verdict = "error", "FAIL"
            notes.append(f"{tool}: {num['failure']}")
        else:
            diff, verdict = fmt(num["max_abs_diff"], ".1e"), "OK" if num["ok"] else "FAIL"
            notes += [f"{tool}: {note}" for note in num.get("notes", [])]
        rows.append(
            (
                tool, entry["nodes"], entry["shape_nodes"], fmt(entry["in_process_s"], ".2f"),
                fmt(entry.get("in_process_over_floor"), ".2f") + "x", fmt(entry["wall_s"], ".2f"),
                fmt(entry["rss_mb"], ".0f"), fmt(entry["rss_over_file"], ".2f") + "x", f"{entry['bytes'] / 1e6:.1f}",
                diff, verdict,
            )
        )  # fmt: skip
        if entry.get("torch_imported"):
            notes.append(f"{tool}: imports torch")
        if row["model"] == LARGE and entry.get("transposes"):
            notes.append(f"{tool}: {entry['transposes']} Transpose nodes left (unfolded)")
        if tool == SIM and entry.get("check_ok") is False:
            notes.append("onnxsim reported its check failed")
    if row.get("reference") and not row["reference"]["ok"]:
        notes.append(f"reference run failed: {row['reference']['failure']}")
    latency = row.get("latency") or {}
    if "skipped" in latency:
        notes.append(f"latency: skipped ({latency['skipped']})")
    elif latency:
        speeds = [
            f"{tool} {harness.fmt_ratio(latency[tool]['b1'])} / {harness.fmt_ratio(latency[tool]['b32'])}"
            for tool in tools
            if tool in latency
        ]
        original = f"original {latency['b1_ms']:.2f} / {latency['b32_ms']:.1f} ms"
        notes.append(
            f"latency at batch 1 / 32, 1 thread (x the original, higher is faster): {original}; " + ", ".join(speeds)
        )
    print("\n" + harness.markdown_table(headers, rows, title=row["model"]))
    for note in notes:
        print(f"- {note}")


def main(argv: list[str] | None = None) -> int:
    """Runs ``simplify`` against the anchors, or one tool when started as ``--child``."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        child_tool(argv[1], argv[2], argv[3], json.loads(argv[4]))
        return 0
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    export.add_arguments(parser)
    parser.add_argument("--json", metavar="OUT", help="write every raw number to this JSON file")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {', '.join(MODELS)}")
    parser.add_argument(
        "--tools", default=",".join(TOOLS[1:]), help=f"subset of {', '.join(TOOLS[1:])} ({FLOOR} always runs)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per tool and model, median (default 3)")
    parser.add_argument("--large-repeat", type=int, help="repeats for the 2.42 GB model (default: --repeat)")
    parser.add_argument(
        "-p",
        "--pass",
        dest="passes",
        action="append",
        metavar="SPEC",
        help="onnxshrink pass spec, repeatable (default: simplify)",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per process (default 600)")
    parser.add_argument("--mem-limit-gb", type=float, default=16.0, help="RLIMIT_AS per process, GiB (default 16)")
    parser.add_argument(
        "--issue-exports", action="store_true", help="vit_b_16 with a static batch, bert-base without the zero re-draw"
    )
    parser.add_argument("--no-large-diff", action="store_true", help="skip the ORT check on the 2.42 GB model")
    parser.add_argument("--keep-outputs", action="store_true", help="keep each tool's last output in the cache")
    parser.add_argument("--latency", action="store_true", help="time each output against the original (b1, b32)")
    parser.add_argument("--debug", action="store_true", help="print tracebacks and failing children's output")
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    tools = [FLOOR, *(t for t in TOOLS[1:] if t in args.tools.split(","))]
    unknown = sorted(set(models) - set(MODELS)) + sorted(set(args.tools.split(",")) - set(TOOLS))
    if unknown:
        parser.error(f"unknown models or tools {unknown}; models: {', '.join(MODELS)}; tools: {', '.join(TOOLS)}")

    started = time.perf_counter()
    passes, fallback = resolve_passes(args.passes)
    if fallback:
        print(f"note: {fallback}")
    settings = (
        f"onnxshrink -p {' -p '.join(passes)} --no-verify; median of {args.repeat} (large: "
        f"{args.large_repeat or args.repeat}), fresh process each, round-robin; RLIMIT_AS {args.mem_limit_gb:g} GiB, "
        f"timeout {args.timeout:g} s"
    )
    environment = harness.print_environment(("onnxsim", "onnxslim"), settings)
    rows = []
    for model_id in models:
        print(f"... {model_id}", file=sys.stderr, flush=True)
        model_started = time.perf_counter()
        try:
            row = bench_model(model_id, tools, passes, args)
            print_model(row, tools)
        except Exception as error:
            row = {"model": model_id, "error": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"}
            print(f"\n### {model_id}\n\nERROR: {row['error']}")
            if args.debug:
                traceback.print_exc()
        row["seconds"] = time.perf_counter() - model_started
        rows.append(row)
        for tool, entry in (row.get("tools") or {}).items():
            if args.debug and entry.get("tail") and not entry["ok"]:
                print(f"--- {model_id} {tool}:\n{entry['tail']}", file=sys.stderr)
    total = time.perf_counter() - started
    print(f"\ntotal {total:.0f} s (" + ", ".join(f"{r['model']} {r['seconds']:.0f} s" for r in rows) + ")")
    if args.json:
        settings_json = {
            "passes": passes,
            "fallback": fallback,
            "repeat": args.repeat,
            "large_repeat": args.large_repeat,
        }
        harness.write_json(args.json, {**environment, "settings": settings_json, "rows": rows, "seconds": total})
    return 0


if __name__ == "__main__":
    sys.exit(main())
