"""Benchmark of the foundation: load/save round trip, the ``cleanup`` pass against its anchors, and
the cost of verification, on the digits model and every model in ``tests/helpers/real_models.REAL_MODELS``.

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
   on the feed from ``real_models.real_model_feed`` and compared with the original model: max abs
   difference over all outputs; ``OK`` when every output is within ``1e-5 + 1e-4 * max|ref|`` and
   the graph's input/output names are unchanged.

Ratios are always ``other / onnxshrink``: a time ratio above 1 means onnxshrink is faster, a node
ratio below 1 means the other tool left fewer nodes.

Run (anchors live in their own venv, see benchmarks/README.md)::

    ONNXSHRINK_TEST_CACHE=/tmp/oscache /tmp/benchvenv2/bin/python benchmarks/bench_cleanup.py \
        --json /tmp/bench_cleanup.json

A tool that is not importable is skipped with a printed note.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import math
import platform
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from helpers import real_models  # noqa: E402

warnings.filterwarnings("ignore")

SHRINK = "onnxshrink"
ONNX_IR = "onnx-ir"
SLIM_CLEAN = "onnxslim[clean]"
SIM_CLEAN = "onnxsim[clean]"
SLIM_DEFAULT = "onnxslim[default]*"
SIM_DEFAULT = "onnxsim[default]*"
TOOLS = (SHRINK, ONNX_IR, SLIM_CLEAN, SIM_CLEAN, SLIM_DEFAULT, SIM_DEFAULT)
FOLDS = {SLIM_DEFAULT, SIM_DEFAULT}

ONNXSIM_KEEP = {
    "nop",
    "eliminate_identity",
    "eliminate_nop_dropout",
    "eliminate_deadend",
    "eliminate_common_subexpression",
    "eliminate_unused_initializer",
    "eliminate_duplicate_initializer",
}

DIGITS = real_models.RealModel(id="digits_cnn", package="-", version="-", member="models/digits_cnn.onnx")


# ----------------------------------------------------------------------------------------------
# helpers


@contextlib.contextmanager
def quiet() -> Any:
    """Silences the anchors' own progress tables (stdout and stderr, Python level)."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def median_time(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> tuple[float, list[float], Any]:
    """Median wall time of ``repeats`` calls after ``warmup`` untimed ones (imports, first-call caches)."""
    for _ in range(warmup):
        fn()
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times, result


def _graph_counts(graph: onnx.GraphProto) -> tuple[int, int, int]:
    nodes, inits, consts = len(graph.node), len(graph.initializer), 0
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            consts += 1
        for attr in node.attribute:
            subs = [attr.g] if attr.HasField("g") else list(attr.graphs)
            for sub in subs:
                n, i, c = _graph_counts(sub)
                nodes, inits, consts = nodes + n, inits + i, consts + c
    return nodes, inits, consts


def counts(path: Path) -> dict[str, int]:
    """Nodes (subgraphs and function bodies included), initializers (all graphs), Constant nodes."""
    proto = onnx.load(str(path), load_external_data=False)
    nodes, inits, consts = _graph_counts(proto.graph)
    for function in proto.functions:
        nodes += len(function.node)
    return {"nodes": nodes, "initializers": inits, "constants": consts, "bytes": path.stat().st_size}


def ort_run(path: Path, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v for k, v in feed.items() if k in names})


def signature(path: Path) -> tuple[list[str], list[str]]:
    proto = onnx.load(str(path), load_external_data=False)
    inits = {t.name for t in proto.graph.initializer}
    return [i.name for i in proto.graph.input if i.name not in inits], [o.name for o in proto.graph.output]


def compare(ref: list[np.ndarray], got: list[np.ndarray]) -> tuple[float, bool]:
    if len(ref) != len(got):
        return math.inf, False
    worst, ok = 0.0, True
    for r, g in zip(ref, got, strict=False):
        r, g = np.asarray(r), np.asarray(g)
        if r.shape != g.shape:
            return math.inf, False
        if r.dtype.kind in "fc":
            nan_r, inf_r = np.isnan(r), np.isinf(r)
            if not np.array_equal(nan_r, np.isnan(g)) or not np.array_equal(inf_r, np.isinf(g)):
                return math.inf, False
            if not np.array_equal(r[inf_r], g[inf_r]):
                return math.inf, False
            finite = ~(nan_r | inf_r)
            diff = float(np.max(np.abs(r[finite].astype(np.float64) - g[finite].astype(np.float64)), initial=0.0))
            tol = 1e-5 + 1e-4 * float(np.max(np.abs(r[finite]), initial=0.0))
            ok = ok and diff <= tol
        else:
            diff = 0.0 if np.array_equal(r, g) else math.inf
            ok = ok and diff == 0.0
        worst = max(worst, diff)
    return worst, ok


def geomean(values: list[float]) -> float | None:
    values = [v for v in values if v and v > 0 and math.isfinite(v)]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


# ----------------------------------------------------------------------------------------------
# tools: path -> optimized model (in memory); a saver writes it for the checks


def tool_onnxshrink(path: Path) -> Any:
    import onnxshrink

    return onnxshrink.shrink(path, ["cleanup"], verify=False)


def save_onnxshrink(result: Any, out: Path) -> None:
    result.save(out)


ONNX_IR_PASSES = (
    "DeduplicateHashedInitializersPass",
    "IdentityEliminationPass",
    "CommonSubexpressionEliminationPass",
    "RemoveUnusedNodesPass",
    "RemoveUnusedFunctionsPass",
    "RemoveUnusedOpsetsPass",
)


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
    import onnx_ir as ir
    import onnx_ir.passes.common as common

    model = ir.load(path)
    return ir.passes.PassManager([getattr(common, name)() for name in passes])(model).model


def save_ir(model: Any, out: Path) -> None:
    import onnx_ir as ir

    ir.save(model, out)


def tool_slim(path: Path, clean: bool) -> onnx.ModelProto:
    import onnxslim

    model = onnx.load(str(path))
    kwargs: dict[str, Any] = {}
    if clean:
        kwargs["skip_optimizations"] = ["constant_folding", "graph_fusion"]
    with quiet():
        result = onnxslim.slim(model, **kwargs)
    if result is None:
        raise RuntimeError("onnxslim.slim returned None")
    return result


def onnxsim_skipped() -> list[str]:
    from onnxsim.onnx_simplifier import C

    return [name for name in C._list_optimizers() if name not in ONNXSIM_KEEP]


def tool_sim(path: Path, clean: bool) -> onnx.ModelProto:
    import onnxsim

    model = onnx.load(str(path))
    kwargs: dict[str, Any] = {"certify": False}
    if clean:
        kwargs.update(skip_constant_folding=True, skipped_optimizers=onnxsim_skipped(), include_subgraph=True)
    with quiet():
        result, _ok = onnxsim.simplify(model, **kwargs)
    return result


def save_proto(model: onnx.ModelProto, out: Path) -> None:
    onnx.save(model, str(out))


def available_tools() -> tuple[dict[str, tuple[Callable[[Path], Any], Callable[[Any, Path], None]]], dict[str, str]]:
    tools: dict[str, tuple[Callable[[Path], Any], Callable[[Any, Path], None]]] = {}
    notes: dict[str, str] = {}
    tools[SHRINK] = (tool_onnxshrink, save_onnxshrink)
    try:
        import onnx_ir.passes.common  # noqa: F401

        tools[ONNX_IR] = (tool_onnx_ir, save_ir)  # bench_model binds the working pass list
    except ImportError as error:
        notes[ONNX_IR] = f"skipped: onnx_ir not importable ({error})"
    try:
        with quiet():
            import onnxslim  # noqa: F401
        tools[SLIM_CLEAN] = (lambda p: tool_slim(p, True), save_proto)
        tools[SLIM_DEFAULT] = (lambda p: tool_slim(p, False), save_proto)
    except Exception as error:
        notes[SLIM_CLEAN] = notes[SLIM_DEFAULT] = f"skipped: onnxslim not importable ({error})"
    try:
        with quiet():
            import onnxsim  # noqa: F401
        tools[SIM_CLEAN] = (lambda p: tool_sim(p, True), save_proto)
        tools[SIM_DEFAULT] = (lambda p: tool_sim(p, False), save_proto)
    except Exception as error:
        notes[SIM_CLEAN] = notes[SIM_DEFAULT] = f"skipped: onnxsim not importable ({error})"
    return tools, notes


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("onnxshrink", "onnx", "onnx-ir", "onnxruntime", "numpy", "onnxslim", "onnxsim"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "-"
    return out


# ----------------------------------------------------------------------------------------------
# the benchmark


def bench_io(path: Path, work: Path, repeats: int) -> dict[str, Any]:
    from onnxshrink.loading import load_model
    from onnxshrink.saving import save_model

    plain_out, shrink_out = work / "io_onnx.onnx", work / "io_shrink.onnx"

    def plain() -> None:
        onnx.save(onnx.load(str(path)), str(plain_out))

    def ours() -> None:
        save_model(load_model(path).model, shrink_out)

    t_onnx, all_onnx, _ = median_time(plain, repeats)
    t_shrink, all_shrink, _ = median_time(ours, repeats)
    return {"onnx_s": t_onnx, "onnxshrink_s": t_shrink, "onnx_all": all_onnx, "onnxshrink_all": all_shrink}


def bench_verify(path: Path, feed: dict[str, np.ndarray], repeats: int) -> dict[str, Any]:
    import onnxshrink

    verify_times, pass_times, load_times = [], [], []
    report: dict[str, Any] = {}
    onnxshrink.shrink(path, ["cleanup"], verify=True, inputs=feed)  # warm-up
    for _ in range(repeats):
        report = onnxshrink.shrink(path, ["cleanup"], verify=True, inputs=feed).report
        verify_times.append(report["seconds"]["verify"])
        pass_times.append(report["seconds"]["passes"])
        load_times.append(report["seconds"]["load"])
    out: dict[str, Any] = {
        "verify_s": statistics.median(verify_times),
        "passes_s": statistics.median(pass_times),
        "load_s": statistics.median(load_times),
        "verify_all": verify_times,
        "provider": (report.get("verification") or {}).get("provider"),
        "passed": (report.get("verification") or {}).get("passed"),
        "verification": report.get("verification"),
        "pass_stats": report["passes"][0].get("stats") if report.get("passes") else None,
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


def bench_model(
    model: real_models.RealModel,
    path: Path,
    tools: dict[str, tuple[Callable[[Path], Any], Callable[[Any, Path], None]]],
    args: argparse.Namespace,
) -> dict[str, Any]:
    row: dict[str, Any] = {"model": model.id, "path": str(path)}
    feed = real_models.real_model_feed(model, path)
    reference = ort_run(path, feed)
    ref_sig = signature(path)
    row["original"] = counts(path)
    with tempfile.TemporaryDirectory(prefix="bench_cleanup.") as tmp:
        work = Path(tmp)
        row["io"] = bench_io(path, work, args.io_repeats)
        row["tools"] = {}
        for name, (run, save) in tools.items():
            entry: dict[str, Any] = {}
            try:
                if name == ONNX_IR:
                    passes, note = onnx_ir_working_passes(path)
                    entry["passes"] = passes
                    if note:
                        entry["note"] = note
                    run = functools.partial(tool_onnx_ir, passes=passes)
                t, all_t, result = median_time(lambda run=run: run(path), args.repeats)
                entry.update(seconds=t, all_seconds=all_t)
                out = work / f"{name.replace('[', '_').replace(']', '').replace('*', '')}.onnx"
                save(result, out)
                entry.update(counts(out))
                sig = signature(out)
                try:
                    got = ort_run(out, feed)
                    diff, ok = compare(reference, got)
                    entry["max_abs_diff"] = diff
                    entry["ort_ok"] = ok and sig == ref_sig
                    if sig != ref_sig:
                        entry["note"] = (entry.get("note", "") + f" signature changed: {ref_sig} -> {sig}").strip()
                except Exception as error:
                    entry["ort_ok"] = False
                    entry["note"] = (
                        entry.get("note", "") + " ORT failed"
                    ).strip() + f": {type(error).__name__}: {str(error).splitlines()[0][:150]}"
            except Exception as error:
                entry["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:150] if str(error) else ''}"
                if args.debug:
                    traceback.print_exc()
            row["tools"][name] = entry
        try:
            row["verify"] = bench_verify(path, feed, args.repeats)
        except Exception as error:
            row["verify"] = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:150]}"}
    return row


# ----------------------------------------------------------------------------------------------
# output


def fmt_t(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.1f}ms" if seconds < 1 else f"{seconds:.2f}s"


def fmt_r(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.2f}x"


def print_table(rows: list[dict[str, Any]], tools: list[str], notes: dict[str, str]) -> None:
    header = ("model", "step / tool", "nodes", "inits", "KB", "time", "t/t_shrink", "n/n_shrink", "max|diff|", "ORT")
    widths = (18, 24, 6, 6, 7, 9, 10, 10, 9, 4)
    line = "  ".join(h.ljust(w) if i < 2 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths, strict=False)))
    print(line)
    print("-" * len(line))

    def out(*cells: Any) -> None:
        print(
            "  ".join(
                str(c).ljust(w) if i < 2 else str(c).rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=False))
            ).rstrip()
        )

    for row in rows:
        name = row["model"]
        if "error" in row:
            out(name, "ERROR: " + row["error"])
            print()
            continue
        orig = row["original"]
        out(name, "original", orig["nodes"], orig["initializers"], f"{orig['bytes'] / 1024:.0f}", "", "", "", "", "")
        io_ = row["io"]
        out(name, "io onnx.load+save", "", "", "", fmt_t(io_["onnx_s"]), fmt_r(io_["onnx_s"] / io_["onnxshrink_s"]))
        out(name, "io onnxshrink", "", "", "", fmt_t(io_["onnxshrink_s"]), "1.00x")
        base = row["tools"].get(SHRINK, {})
        for tool in tools:
            entry = row["tools"].get(tool)
            if entry is None:
                continue
            if "error" in entry:
                out(name, f"cleanup {tool}", "ERROR: " + entry["error"])
                continue
            t_ratio = entry["seconds"] / base["seconds"] if base.get("seconds") else None
            n_ratio = entry["nodes"] / base["nodes"] if base.get("nodes") else None
            diff = entry.get("max_abs_diff")
            out(
                name,
                f"cleanup {tool}",
                entry["nodes"],
                entry["initializers"],
                f"{entry['bytes'] / 1024:.0f}",
                fmt_t(entry["seconds"]),
                fmt_r(t_ratio),
                fmt_r(n_ratio),
                "-" if diff is None else ("inf" if not math.isfinite(diff) else f"{diff:.1e}"),
                "OK" if entry.get("ort_ok") else "FAIL",
            )
            if entry.get("note"):
                print(f"{'':>20}  note: {entry['note']}")
        ver = row.get("verify", {})
        if "error" in ver:
            out(name, "verify onnxshrink", "ERROR: " + ver["error"])
        else:
            ratio = ver["verify_s"] / ver["passes_s"] if ver.get("passes_s") else None
            out(
                name,
                "verify onnxshrink",
                "",
                "",
                "",
                fmt_t(ver["verify_s"]),
                "",
                "",
                "",
                "OK" if ver["passed"] else "FAIL",
            )
            print(
                f"{'':>20}  verify = {fmt_r(ratio)} the cleanup pass ({fmt_t(ver['passes_s'])}), "
                f"load {fmt_t(ver['load_s'])}, provider {ver['provider']}; "
                f"with onnxshrink's generated inputs: {ver['generated']}"
            )
        print()
    for tool, note in sorted(set(notes.items())):
        print(f"note: {tool}: {note}")


def summary(rows: list[dict[str, Any]], tools: list[str]) -> dict[str, Any]:
    ok_rows = [r for r in rows if "error" not in r]
    result: dict[str, Any] = {
        "io_onnx_over_shrink": geomean([r["io"]["onnx_s"] / r["io"]["onnxshrink_s"] for r in ok_rows]),
        "verify_over_cleanup_pass": geomean(
            [r["verify"]["verify_s"] / r["verify"]["passes_s"] for r in ok_rows if r.get("verify", {}).get("passes_s")]
        ),
        "tools": {},
    }
    for tool in tools:
        if tool == SHRINK:
            continue
        t, n, ok, total = [], [], 0, 0
        for r in ok_rows:
            base, entry = r["tools"].get(SHRINK, {}), r["tools"].get(tool, {})
            if "nodes" in entry and base.get("nodes"):
                t.append(entry["seconds"] / base["seconds"])
                n.append(entry["nodes"] / base["nodes"])
                total += 1
                ok += bool(entry.get("ort_ok"))
        result["tools"][tool] = {"time_ratio": geomean(t), "node_ratio": geomean(n), "ort_ok": f"{ok}/{total}"}
    shrink_ok = sum(bool(r["tools"].get(SHRINK, {}).get("ort_ok")) for r in ok_rows)
    result["tools"][SHRINK] = {"ort_ok": f"{shrink_ok}/{len(ok_rows)}"}
    return result


def print_summary(summ: dict[str, Any]) -> None:
    parts = [f"io onnx/onnxshrink {fmt_r(summ['io_onnx_over_shrink'])}"]
    for tool, values in summ["tools"].items():
        if tool == SHRINK:
            parts.append(f"{tool} ORT {values['ort_ok']}")
            continue
        parts.append(f"{tool} t {fmt_r(values['time_ratio'])} n {fmt_r(values['node_ratio'])} ORT {values['ort_ok']}")
    parts.append(f"verify/cleanup-pass {fmt_r(summ['verify_over_cleanup_pass'])}")
    print("SUMMARY (geometric means of other/onnxshrink): " + " | ".join(parts))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", metavar="OUT", help="write the raw numbers to this JSON file")
    parser.add_argument("--models", help="comma-separated model ids (default: digits_cnn and every real model)")
    parser.add_argument("--tools", help=f"comma-separated subset of {', '.join(TOOLS)}")
    parser.add_argument("--repeats", type=int, default=3, help="cleanup and verify repeats (median)")
    parser.add_argument("--io-repeats", type=int, default=5, help="load+save repeats (median)")
    parser.add_argument("--debug", action="store_true", help="print tracebacks of tool failures")
    args = parser.parse_args(argv)

    try:
        import onnxruntime

        onnxruntime.set_default_logger_severity(3)  # errors only: the generated-input check is expected to fail on some
    except ImportError:
        pass
    tools, notes = available_tools()
    if args.tools:
        wanted = [t.strip() for t in args.tools.split(",")]
        unknown = sorted(set(wanted) - set(TOOLS))
        if unknown:
            parser.error(f"unknown tools {unknown}; choose from {list(TOOLS)}")
        tools = {k: v for k, v in tools.items() if k in wanted or k == SHRINK}
    for tool, note in sorted(set(notes.items())):
        print(f"note: {tool}: {note}")

    models: list[tuple[real_models.RealModel, Path | None]] = [(DIGITS, ROOT / DIGITS.member)]
    models += [(m, None) for m in real_models.REAL_MODELS]
    if args.models:
        wanted_models = {m.strip() for m in args.models.split(",")}
        models = [(m, p) for m, p in models if m.id in wanted_models]

    env = versions()
    print("versions: " + ", ".join(f"{k} {v}" for k, v in env.items()))
    print(
        f"cleanup/verify: median of {args.repeats}; io: median of {args.io_repeats}; "
        f"onnxsim[clean] keeps optimizers {sorted(ONNXSIM_KEEP)}; * = folds constants and fuses (node counts "
        "not comparable)\n"
    )

    rows = []
    for model, path in models:
        print(f"... {model.id}", file=sys.stderr, flush=True)
        try:
            path = path or real_models.fetch(model)
            rows.append(bench_model(model, path, tools, args))
        except Exception as error:
            rows.append({"model": model.id, "error": f"{type(error).__name__}: {error}"})
            if args.debug:
                traceback.print_exc()

    order = [t for t in TOOLS if t in tools]
    print_table(rows, order, notes)
    summ = summary(rows, order)
    print()
    print_summary(summ)
    if args.json:
        payload = {
            "versions": env,
            "settings": {"repeats": args.repeats, "io_repeats": args.io_repeats, "onnxsim_keep": sorted(ONNXSIM_KEEP)},
            "notes": notes,
            "rows": rows,
            "summary": summ,
        }
        Path(args.json).write_text(json.dumps(payload, indent=2, default=str))
        print(f"raw numbers written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
