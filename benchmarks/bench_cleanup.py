"""Benchmark of the foundation: load/save round trip, ``cleanup`` against its anchors, verification.

The models are the digits model and every model in ``tests/helpers/real_models.REAL_MODELS``.
One run measures, per model:

1. **io** - load + save round trip: ``onnx.load`` + ``onnx.save`` against onnxshrink's
   ``loading.load_model`` + ``saving.save_model`` (safety checks, checker, atomic write).
   Median of ``--io-repeats`` (5). Every timed step gets one untimed warm-up call first.
2. **cleanup** - ``onnxshrink.shrink(path, ["cleanup"], verify=False)`` against tools doing the same
   kind of structural cleanup (median of ``--repeats``, 3). Each tool's time runs from the model
   path to the optimized model in memory (every tool reads the file itself; saving is not timed):

   - ``onnx-ir``: onnx_ir's common passes DeduplicateHashedInitializers, IdentityElimination,
     CommonSubexpressionElimination, RemoveUnusedNodes, RemoveUnusedFunctions, RemoveUnusedOpsets.
     A pass that raises on a model is left out for that model and the row says so.
   - ``onnxslim[clean]``: ``onnxslim.slim(model, skip_optimizations=["constant_folding",
     "graph_fusion"])``: keeps dead_node_elimination (which also drops no-op Cast/Reshape/Pad/Slice,
     Mul-by-1, Add-0 and friends, using inferred shapes), subexpression_elimination and
     weight_tying; shape inference stays on (its default). onnxslim has no ``no_constant_folding``
     keyword; ``skip_optimizations`` is how its API turns folding off.
   - ``onnxsim[clean]``: ``onnxsim.simplify(model, skip_constant_folding=True,
     skipped_optimizers=<every default optimizer except the elimination ones>, include_subgraph=True,
     certify=False)``. The optimizers left on: eliminate_identity, eliminate_nop_dropout,
     eliminate_deadend, eliminate_common_subexpression, eliminate_unused_initializer,
     eliminate_duplicate_initializer (and the ``nop`` placeholder). Even so onnxsim is not purely
     structural: its core still drops the all-zero initial state of LSTMs (oww-hey-mycroft).
   - ``onnxslim[default]*`` and ``onnxsim[default]*``: each tool's default mode (constant folding
     and fusions on). Marked with ``*``: they fold constants and fuse ops, so their node counts are
     not comparable with a cleanup.
3. **verify** - ``report["seconds"]["verify"]`` of ``shrink(path, ["cleanup"], verify=True,
   inputs=<feed>)`` (median of ``--repeats``), next to the pass time; plus whether verification on
   onnxshrink's own generated inputs (no ``inputs=``) passes.
4. **ORT check** - every tool's saved output is run with onnxruntime (CPU, graph optimizations off)
   on the feed from ``helpers.real_model_feed`` and compared with the original model: max abs
   difference over all outputs; ``OK`` when every output is within ``1e-5 + 1e-4 * max|ref|`` and
   the graph's input/output names are unchanged.

Ratios are always ``other / onnxshrink``: a time ratio above 1 means onnxshrink is faster, a node
ratio below 1 means the other tool left fewer nodes.

Run (the anchors live in the bench venv, see benchmarks/README.md)::

    python benchmarks/bench_cleanup.py [--models digits_cnn,silero-vad] [--json OUT]

A tool that is not importable is skipped with a printed note.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import io
import statistics
import sys
import tempfile
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import harness
import numpy as np
import onnx
from harness import fmt_ratio, fmt_seconds
from numerics import compare, ort_outputs

warnings.filterwarnings("ignore")

SHRINK = "onnxshrink"
ONNX_IR = "onnx-ir"
SLIM_CLEAN = "onnxslim[clean]"
SIM_CLEAN = "onnxsim[clean]"
SLIM_DEFAULT = "onnxslim[default]*"
SIM_DEFAULT = "onnxsim[default]*"
TOOLS = (SHRINK, ONNX_IR, SLIM_CLEAN, SIM_CLEAN, SLIM_DEFAULT, SIM_DEFAULT)

ONNXSIM_KEEP = {
    "nop",
    "eliminate_identity",
    "eliminate_nop_dropout",
    "eliminate_deadend",
    "eliminate_common_subexpression",
    "eliminate_unused_initializer",
    "eliminate_duplicate_initializer",
}
ONNX_IR_PASSES = (
    "DeduplicateHashedInitializersPass",
    "IdentityEliminationPass",
    "CommonSubexpressionEliminationPass",
    "RemoveUnusedNodesPass",
    "RemoveUnusedFunctionsPass",
    "RemoveUnusedOpsetsPass",
)

Tool = tuple[Callable[[Path], Any], Callable[[Any, Path], None]]  # path -> model in memory; saver


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silences the anchors' own progress tables (stdout and stderr, Python level)."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


# ------------------------------------------------------------------------------------------------
# tools


def tool_onnxshrink(path: Path) -> Any:
    """Runs onnxshrink's ``cleanup`` pass on the file, without verification."""
    import onnxshrink

    return onnxshrink.shrink(path, ["cleanup"], verify=False)


def save_onnxshrink(result: Any, out: Path) -> None:
    """Saves an onnxshrink result through its own ``save`` (checks and atomic write)."""
    result.save(out)


def onnx_ir_working_passes(path: Path) -> tuple[list[str], str | None]:
    """The onnx-ir passes that run on this model; a pass that raises is left out (noted)."""
    import onnx_ir as ir
    import onnx_ir.passes.common as common

    working, failed = list(ONNX_IR_PASSES), []
    while True:
        model = ir.load(path)
        for name in working:
            try:
                getattr(common, name)()(model)
            except Exception as error:
                cause = error.__cause__ or error
                failed.append(f"{name} raised {type(cause).__name__}: {str(cause).splitlines()[0][:110]}")
                working.remove(name)
                break
        else:
            break
    return working, ("; ".join(failed) + " - left out") if failed else None


def tool_onnx_ir(path: Path, passes: list[str]) -> Any:
    """Loads the file with onnx-ir and runs the given common passes on it.

    Args:
        path: The model file.
        passes: Names of ``onnx_ir.passes.common`` classes, run in this order.

    Returns:
        The optimized ``onnx_ir.Model``.
    """
    import onnx_ir as ir
    import onnx_ir.passes.common as common

    return ir.passes.PassManager([getattr(common, name)() for name in passes])(ir.load(path)).model


def save_ir(model: Any, out: Path) -> None:
    """Saves an ``onnx_ir.Model`` with ``onnx_ir.save``."""
    import onnx_ir as ir

    ir.save(model, out)


def tool_slim(path: Path, clean: bool) -> onnx.ModelProto:
    """Runs onnxslim on the loaded model, quietly.

    Args:
        path: The model file.
        clean: Skip constant folding and graph fusion (the ``[clean]`` mode); else onnxslim's defaults.

    Raises:
        RuntimeError: onnxslim returned no model.
    """
    import onnxslim

    kwargs: dict[str, Any] = {"skip_optimizations": ["constant_folding", "graph_fusion"]} if clean else {}
    with quiet():
        result = onnxslim.slim(onnx.load(str(path)), **kwargs)
    if result is None:
        raise RuntimeError("onnxslim.slim returned None")
    return result


def tool_sim(path: Path, clean: bool) -> onnx.ModelProto:
    """Runs onnxsim on the loaded model, quietly and uncertified.

    Args:
        path: The model file.
        clean: No constant folding and only the elimination optimizers of ``ONNXSIM_KEEP``, subgraphs
            included (the ``[clean]`` mode); else onnxsim's defaults.
    """
    import onnxsim
    from onnxsim.onnx_simplifier import C

    kwargs: dict[str, Any] = {"certify": False}
    if clean:
        skipped = [name for name in C._list_optimizers() if name not in ONNXSIM_KEEP]
        kwargs.update(skip_constant_folding=True, skipped_optimizers=skipped, include_subgraph=True)
    with quiet():
        result, _ok = onnxsim.simplify(onnx.load(str(path)), **kwargs)
    return result


def save_proto(model: onnx.ModelProto, out: Path) -> None:
    """Saves a ``ModelProto`` with ``onnx.save``."""
    onnx.save(model, str(out))


def available_tools() -> tuple[dict[str, Tool], dict[str, str]]:
    """The tools that can run here, as (run, save) pairs by label.

    Returns:
        The importable tools (onnxshrink always) and, for each tool left out, a note saying why.
    """
    tools: dict[str, Tool] = {SHRINK: (tool_onnxshrink, save_onnxshrink)}
    notes: dict[str, str] = {}
    try:
        import onnx_ir.passes.common  # noqa: F401

        tools[ONNX_IR] = (tool_onnx_ir, save_ir)  # bench_model binds the working pass list
    except ImportError as error:
        notes[ONNX_IR] = f"skipped: onnx_ir not importable ({error})"
    anchors = ((SLIM_CLEAN, SLIM_DEFAULT, "onnxslim", tool_slim), (SIM_CLEAN, SIM_DEFAULT, "onnxsim", tool_sim))
    for clean, default, module, run in anchors:
        try:
            with quiet():
                importlib.import_module(module)
        except Exception as error:
            notes[clean] = notes[default] = f"skipped: {module} not importable ({error})"
            continue
        tools[clean] = (functools.partial(run, clean=True), save_proto)
        tools[default] = (functools.partial(run, clean=False), save_proto)
    return tools, notes


# ------------------------------------------------------------------------------------------------
# the benchmark


def bench_io(path: Path, work: Path, repeats: int) -> dict[str, Any]:
    """Times the load + save round trip: ``onnx`` against onnxshrink's loading and saving.

    Returns:
        The median seconds of each (``onnx_s``, ``onnxshrink_s``) and every timed run.
    """
    from onnxshrink.loading import load_model
    from onnxshrink.saving import save_model

    plain_out, shrink_out = work / "io_onnx.onnx", work / "io_shrink.onnx"
    t_onnx, all_onnx, _ = harness.median_time(lambda: onnx.save(onnx.load(str(path)), str(plain_out)), repeats)
    t_shrink, all_shrink, _ = harness.median_time(lambda: save_model(load_model(path).model, shrink_out), repeats)
    return {"onnx_s": t_onnx, "onnxshrink_s": t_shrink, "onnx_all": all_onnx, "onnxshrink_all": all_shrink}


def bench_verify(path: Path, feed: dict[str, np.ndarray], repeats: int) -> dict[str, Any]:
    """Times onnxshrink's verification of a cleanup on ``feed``, then tries its generated inputs.

    Returns:
        Median verify, pass and load seconds, the provider and verdict, and ``generated``: whether
        verification on onnxshrink's own inputs passed, failed or was skipped (with the reason).
    """
    import onnxshrink

    verify_times, pass_times, load_times = [], [], []
    report: dict[str, Any] = {}
    onnxshrink.shrink(path, ["cleanup"], verify=True, inputs=feed)  # warm-up
    for _ in range(repeats):
        report = onnxshrink.shrink(path, ["cleanup"], verify=True, inputs=feed).report
        verify_times.append(report["seconds"]["verify"])
        pass_times.append(report["seconds"]["passes"])
        load_times.append(report["seconds"]["load"])
    verification = report.get("verification") or {}
    out: dict[str, Any] = {
        "verify_s": statistics.median(verify_times),
        "passes_s": statistics.median(pass_times),
        "load_s": statistics.median(load_times),
        "verify_all": verify_times,
        "provider": verification.get("provider"),
        "passed": verification.get("passed"),
        "verification": verification,
    }
    # onnxshrink's own generated inputs (what a user without --inputs gets)
    try:
        generated = onnxshrink.shrink(path, ["cleanup"], verify=True).report
        verification = generated.get("verification") or {}
        if "skipped" in verification:
            reason = verification["skipped"].splitlines()[0].split("Status Message:")[-1].strip()
            out["generated"] = "skipped (onnxruntime cannot run them: " + reason[:90] + ")"
        else:
            out["generated"] = "passed" if verification.get("passed") else "FAILED"
            out["generated_verify_s"] = generated["seconds"]["verify"]
    except Exception as error:
        out["generated"] = f"error: {type(error).__name__}: {str(error).splitlines()[0][:120]}"
    return out


def _signature(path: Path) -> tuple[list[str], list[str]]:
    proto = onnx.load(str(path), load_external_data=False)
    inits = {t.name for t in proto.graph.initializer}
    return [i.name for i in proto.graph.input if i.name not in inits], [o.name for o in proto.graph.output]


def _error(error: Exception) -> str:
    return f"{type(error).__name__}: {str(error).splitlines()[0][:150] if str(error) else ''}"


def bench_tool(name: str, tool: Tool, path: Path, out: Path, reference: list[Any], repeats: int) -> dict[str, Any]:
    """Times one tool (median of ``repeats``), saves its model and checks it with onnxruntime."""
    run, save = tool
    entry: dict[str, Any] = {}
    if name == ONNX_IR:
        passes, note = onnx_ir_working_passes(path)
        entry["passes"] = passes
        if note:
            entry["note"] = note
        run = functools.partial(tool_onnx_ir, passes=passes)
    seconds, all_seconds, result = harness.median_time(lambda: run(path), repeats)
    entry.update(seconds=seconds, all_seconds=all_seconds)
    save(result, out)
    entry.update(harness.model_counts(out))
    notes = [entry["note"]] if "note" in entry else []
    try:
        feed = reference[0]
        checked = compare(reference[1], ort_outputs(out, feed)[2], atol=1e-5, rtol=1e-4)
        entry["max_abs_diff"] = checked["max_abs_diff"]
        signature, expected = _signature(out), reference[2]
        entry["ort_ok"] = checked["ok"] and signature == expected
        if signature != expected:
            notes.append(f"signature changed: {expected} -> {signature}")
    except Exception as error:
        entry["ort_ok"] = False
        notes.append(f"ORT failed: {_error(error)}")
    if notes:
        entry["note"] = " ".join(notes)
    return entry


def bench_model(model: Any, path: Path, tools: dict[str, Tool], args: argparse.Namespace) -> dict[str, Any]:
    """One model's row: the round trip, every tool's cleanup with its ORT check, and verification.

    Args:
        model: The ``RealModel`` (its id and input ranges make the feed).
        path: The model file.
        tools: The tools to run, by label.
        args: The command line (repeats, ``--debug``).

    Returns:
        The row; a tool or step that raised holds ``{"error": ...}`` instead of numbers.
    """
    feed = harness.real_models().real_model_feed(model, path)
    reference = (feed, ort_outputs(path, feed)[2], _signature(path))
    row: dict[str, Any] = {"model": model.id, "path": str(path), "original": harness.model_counts(path), "tools": {}}
    with tempfile.TemporaryDirectory(prefix="bench_cleanup.") as tmp:
        work = Path(tmp)
        row["io"] = bench_io(path, work, args.io_repeats)
        for name, tool in tools.items():
            out = work / f"{name.replace('[', '_').replace(']', '').replace('*', '')}.onnx"
            try:
                row["tools"][name] = bench_tool(name, tool, path, out, reference, args.repeats)
            except Exception as error:
                row["tools"][name] = {"error": _error(error)}
                if args.debug:
                    traceback.print_exc()
        try:
            row["verify"] = bench_verify(path, feed, args.repeats)
        except Exception as error:
            row["verify"] = {"error": _error(error)}
    return row


# ------------------------------------------------------------------------------------------------
# output


def print_model(row: dict[str, Any], tools: list[str]) -> None:
    """Prints one model's markdown table and the notes under it (tool notes, verify cost)."""
    headers = ("step / tool", "nodes", "inits", "KB", "time", "t/t_shrink", "n/n_shrink", "max|diff|", "ORT")
    orig, io_ = row["original"], row["io"]
    rows: list[tuple[Any, ...]] = [
        ("original", orig["nodes"], orig["initializers"], f"{orig['bytes'] / 1024:.0f}", "", "", "", "", ""),
        ("io onnx.load+save", "", "", "", fmt_seconds(io_["onnx_s"]), fmt_ratio(io_["onnx_s"] / io_["onnxshrink_s"]),
         "", "", ""),
        ("io onnxshrink", "", "", "", fmt_seconds(io_["onnxshrink_s"]), "1.00x", "", "", ""),
    ]  # fmt: skip
    notes = []
    base = row["tools"].get(SHRINK, {})
    for tool in tools:
        entry = row["tools"].get(tool)
        if entry is None:
            continue
        if "error" in entry:
            rows.append((f"cleanup {tool}", "ERROR: " + entry["error"], *[""] * 7))
            continue
        t_ratio = entry["seconds"] / base["seconds"] if base.get("seconds") else None
        n_ratio = entry["nodes"] / base["nodes"] if base.get("nodes") else None
        diff = entry.get("max_abs_diff")
        rows.append(
            (
                f"cleanup {tool}", entry["nodes"], entry["initializers"], f"{entry['bytes'] / 1024:.0f}",
                fmt_seconds(entry["seconds"]), fmt_ratio(t_ratio), fmt_ratio(n_ratio), harness.fmt(diff, ".1e"),
                "OK" if entry.get("ort_ok") else "FAIL",
            )
        )  # fmt: skip
        if entry.get("note"):
            notes.append(f"{tool}: {entry['note']}")
    ver = row.get("verify", {})
    if "error" in ver:
        rows.append(("verify onnxshrink", "ERROR: " + ver["error"], *[""] * 7))
    else:
        ratio = ver["verify_s"] / ver["passes_s"] if ver.get("passes_s") else None
        passed = "OK" if ver["passed"] else "FAIL"
        rows.append(("verify onnxshrink", "", "", "", fmt_seconds(ver["verify_s"]), "", "", "", passed))
        notes.append(
            f"verify = {fmt_ratio(ratio)} the cleanup pass ({fmt_seconds(ver['passes_s'])}), load "
            f"{fmt_seconds(ver['load_s'])}, provider {ver['provider']}; with onnxshrink's generated inputs: "
            f"{ver['generated']}"
        )
    print("\n" + harness.markdown_table(headers, rows, title=row["model"]))
    for note in notes:
        print(f"- {note}")


def summary(rows: list[dict[str, Any]], tools: list[str]) -> dict[str, Any]:
    """Geometric means over the models that ran: io ratio, verify/pass ratio, each tool's time and node ratios.

    Returns:
        ``io_onnx_over_shrink``, ``verify_over_cleanup_pass`` and per tool ``time_ratio``,
        ``node_ratio`` and ``ort_ok`` (``passed/checked``).
    """
    ok_rows = [r for r in rows if "error" not in r]
    verify = [r["verify"] for r in ok_rows if r.get("verify", {}).get("passes_s")]
    result: dict[str, Any] = {
        "io_onnx_over_shrink": harness.geomean([r["io"]["onnx_s"] / r["io"]["onnxshrink_s"] for r in ok_rows]),
        "verify_over_cleanup_pass": harness.geomean([v["verify_s"] / v["passes_s"] for v in verify]),
        "tools": {},
    }
    for tool in tools:
        if tool == SHRINK:
            continue
        t, n, ok = [], [], 0
        for r in ok_rows:
            base, entry = r["tools"].get(SHRINK, {}), r["tools"].get(tool, {})
            if "nodes" in entry and base.get("nodes"):
                t.append(entry["seconds"] / base["seconds"])
                n.append(entry["nodes"] / base["nodes"])
                ok += bool(entry.get("ort_ok"))
        result["tools"][tool] = {
            "time_ratio": harness.geomean(t), "node_ratio": harness.geomean(n), "ort_ok": f"{ok}/{len(t)}"
        }  # fmt: skip
    shrink_ok = sum(bool(r["tools"].get(SHRINK, {}).get("ort_ok")) for r in ok_rows)
    result["tools"][SHRINK] = {"ort_ok": f"{shrink_ok}/{len(ok_rows)}"}
    return result


def print_summary(summ: dict[str, Any]) -> None:
    """Prints the ``SUMMARY`` line from :func:`summary`'s numbers."""
    parts = [f"io onnx/onnxshrink {fmt_ratio(summ['io_onnx_over_shrink'])}"]
    for tool, values in summ["tools"].items():
        if tool == SHRINK:
            parts.append(f"{tool} ORT {values['ort_ok']}")
        else:
            ratios = f"t {fmt_ratio(values['time_ratio'])} n {fmt_ratio(values['node_ratio'])}"
            parts.append(f"{tool} {ratios} ORT {values['ort_ok']}")
    parts.append(f"verify/cleanup-pass {fmt_ratio(summ['verify_over_cleanup_pass'])}")
    print("SUMMARY (geometric means of other/onnxshrink): " + " | ".join(parts))


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark over the chosen models and tools and prints a table per model and a summary."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--json", metavar="OUT", help="write the raw numbers to this JSON file")
    parser.add_argument("--models", help="comma-separated model ids (default: digits_cnn and every real model)")
    parser.add_argument("--tools", help=f"comma-separated subset of {', '.join(TOOLS)}")
    parser.add_argument("--repeats", type=int, default=3, help="cleanup and verify repeats (median)")
    parser.add_argument("--io-repeats", type=int, default=5, help="load+save repeats (median)")
    parser.add_argument("--debug", action="store_true", help="print tracebacks of tool failures")
    args = parser.parse_args(argv)

    with contextlib.suppress(ImportError):
        import onnxruntime

        onnxruntime.set_default_logger_severity(3)  # errors only: the generated-input check is expected to fail on some
    tools, notes = available_tools()
    if args.tools:
        wanted = [t.strip() for t in args.tools.split(",")]
        unknown = sorted(set(wanted) - set(TOOLS))
        if unknown:
            parser.error(f"unknown tools {unknown}; choose from {list(TOOLS)}")
        tools = {k: v for k, v in tools.items() if k in wanted or k == SHRINK}
    real_models = harness.real_models()
    digits = real_models.RealModel(id="digits_cnn", package="-", version="-", member="models/digits_cnn.onnx")
    models: list[tuple[Any, Path | None]] = [(digits, harness.ROOT / digits.member)]
    models += [(m, None) for m in real_models.REAL_MODELS]
    if args.models:
        wanted_models = {m.strip() for m in args.models.split(",")}
        models = [(m, p) for m, p in models if m.id in wanted_models]

    settings = (
        f"cleanup/verify: median of {args.repeats}; io: median of {args.io_repeats}; onnxsim[clean] keeps optimizers "
        f"{sorted(ONNXSIM_KEEP)}; * = folds constants and fuses (node counts not comparable)"
    )
    environment = harness.print_environment(("onnxslim", "onnxsim"), settings)
    for tool, note in sorted(set(notes.items())):
        print(f"note: {tool}: {note}")
    order = [t for t in TOOLS if t in tools]
    rows = []
    for model, path in models:
        print(f"... {model.id}", file=sys.stderr, flush=True)
        try:
            rows.append(bench_model(model, path or real_models.fetch(model), tools, args))
            print_model(rows[-1], order)
        except Exception as error:
            rows.append({"model": model.id, "error": f"{type(error).__name__}: {error}"})
            print(f"\n### {model.id}\n\nERROR: {rows[-1]['error']}")
            if args.debug:
                traceback.print_exc()
    summ = summary(rows, order)
    print()
    print_summary(summ)
    if args.json:
        settings_json = {"repeats": args.repeats, "io_repeats": args.io_repeats, "onnxsim_keep": sorted(ONNXSIM_KEEP)}
        payload = {**environment, "settings": settings_json, "notes": notes, "rows": rows, "summary": summ}
        harness.write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
