"""``reconstruct``'s cost and recovery (issue 15): BERT-base time / peak RSS, digits accuracy.

Cases, each run in a fresh process (``harness.run_child``: wall time and peak RSS of the whole
process, model load and save included), ``--repeats`` times, medians reported:

- ``bert-base``: transformers ``BertModel(BertConfig())`` (keep-zeros export, ``export.py``),
  ``simplify`` first (cached), then ``prune-channels:ratio=0.3`` (attention heads and FFN
  neurons) followed by ``reconstruct`` with ``--bert-orders`` (``single``: every layer from one
  streamed data pass; ``staged``, the pass's default: one data pass per depth stage, 49 on this
  model, each after the first running only the segment of the graph not run yet;
  ``staged-whole``: the same with every data pass a whole-model run, as before segments, about
  7 minutes quiet on a 2-core machine, so it is off by default), on ``--bert-calib`` (16)
  random sequences of 128 tokens. Also printed: the pipeline without
  ``reconstruct`` (its cost alone is the difference; each run also verifies against the dense
  model on 16 held-out sequences), the pass's own, capture and refit seconds, the layers refit,
  the relative error of the model's outputs on the calibration data before and after, and the
  lowest output cosine against the dense model on the held-out sequences, the whole-model and
  segment runs of each model, the boundary values kept between data passes, and the 1-minute
  load average before and after the run (``OPENBLAS_NUM_THREADS`` is printed in the settings).
- ``digits``: models/digits_cnn.onnx, ``simplify`` → ``prune-channels:ratio=0.5`` →
  ``reconstruct`` (default options, and ``augment=shifts,ridge=0.01``: each image also moved by
  one pixel in 8 directions) on the 128 bundled calibration digits, accuracy on the 540 labelled test digits
  (the issue's goal: a drop of at most 0.5 point against the dense model).
- ``digits-ceiling`` (needs torch: the bench venv): what the architecture that ratio 0.5 leaves
  (8 channels where the model has 16, fc1 32 wide) reaches when trained from scratch on all
  1,257 labelled training digits with the bundled model's own recipe (models/build_digits.py),
  for ``--ceiling-seeds`` seeds, beside the full-width architecture trained the same way: how
  much of the drop is the smaller network's, not the refit's.

Run: ``python benchmarks/reconstruct.py [--cases bert-base,digits,digits-ceiling]
[--bert-orders single,staged,staged-whole] [--ceiling-seeds 5] [--repeats 1] [--json OUT]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import export
import harness
import numpy as np
import samples

BERT_SEQ, BERT_VOCAB, BERT_TEST = 128, 30522, 16


def _child(model: str, calib: str, passes: str, test: str, runs: str = "segments") -> None:
    import onnxshrink
    from onnxshrink.passes.reconstruct import segments

    # "whole": every data pass runs the whole model (how order=staged ran before segments).
    segments.SEGMENTS = runs != "whole"
    started = time.perf_counter()
    result = onnxshrink.shrink(model, passes.split("|"), calibration=calib, inputs=test or None, verify=bool(test))
    info: dict[str, Any] = {"in_process_s": time.perf_counter() - started}
    record = result.report["passes"][-1]
    if record["name"] == "reconstruct":
        stats, timings = record["stats"], record.get("timings", {})
        info["pass_s"] = record["seconds"]
        info.update({k: stats.get(k) for k in ("stages", "data_passes", "layers_refit")})
        info.update(output_error_before=stats.get("output_error_before"), output_error=stats.get("output_error_after"))
        info["capture_s"] = timings.get("capture")
        info["refit_s"] = sum(v for k, v in timings.items() if k.startswith("refit."))
        info["model_runs"] = stats.get("model_runs")
        info["boundary_mb"] = (stats.get("boundary_bytes") or {}).get("peak", 0) / 2**20
    if test:
        verification = result.report["verification"]
        info.update(accuracy=verification.get("accuracy_candidate"), reference=verification.get("accuracy_reference"))
        info["cosine"] = verification["min_cosine"]
    harness.emit_result(info)


def _measure(
    model: Path, calib: Path, passes: list[str], test: str, repeats: int, runs_as: str = "segments"
) -> dict[str, Any]:
    runs = []
    for _ in range(repeats):
        command = [sys.executable, __file__, "--child", str(model), str(calib), "|".join(passes), test, runs_as]
        load = os.getloadavg()[0]
        run = harness.run_child(command, timeout=3600)
        if not run.ok:
            return {"ok": False, "error": run.failure}
        loads = {"load_start": load, "load_end": os.getloadavg()[0]}
        runs.append({"wall_s": run.wall_s, "rss_mb": run.peak_rss_mb, **loads, **(run.result or {})})
    row: dict[str, Any] = {"ok": True, "runs": runs}
    for key in ("wall_s", "rss_mb", "capture_s", "refit_s", "pass_s"):
        values = [r[key] for r in runs if r.get(key) is not None]
        row[key] = statistics.median(values) if values else None
    row.update({k: v for k, v in runs[-1].items() if k not in row})
    return row


def _model_runs(runs: dict[str, dict[str, int]] | None) -> str:
    """``1 + 48; 1 + 48``: whole-model runs and segment runs of the model and of the input model."""
    if not runs:
        return "-"
    return "; ".join(f"{r['whole']} + {r['segments']}" for r in (runs["model"], runs["input_model"]))


def bench_bert(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """BERT-base pruned at 0.3, without and with ``reconstruct`` in each order."""
    source = export.exported("bert-base", args, keep_zeros=True)
    dense = args.cache / "reconstruct" / "bert-base_simplified.onnx"
    dense.parent.mkdir(parents=True, exist_ok=True)
    if not dense.exists():
        import onnxshrink

        onnxshrink.shrink(str(source), ["simplify"], verify=False).save(str(dense))
    calib = work / "bert_calib.npz"
    np.savez(calib, **samples.bert_tokens(args.bert_calib, BERT_SEQ, vocab=BERT_VOCAB, seed=1))  # type: ignore[arg-type]
    # Held-out sequences: the cosine of the outputs against the dense model (verification).
    test = work / "bert_test.npz"
    np.savez(test, **samples.bert_tokens(BERT_TEST, BERT_SEQ, vocab=BERT_VOCAB, seed=2))  # type: ignore[arg-type]
    prune = "prune-channels:ratio=0.3"
    settings = [("prune-channels only", [prune])]
    for order in args.bert_orders:
        if order == "staged-whole":
            settings.append(("+ reconstruct order=staged, whole-model runs", [prune, "reconstruct:order=staged"]))
        else:
            settings.append((f"+ reconstruct order={order}", [prune, f"reconstruct:order={order}"]))
    rows = []
    for label, passes in settings:
        runs_as = "whole" if label.endswith("whole-model runs") else "segments"
        row = {"label": label, **_measure(dense, calib, passes, str(test), args.repeats, runs_as)}
        print(f"  {label}: {row}", flush=True)
        rows.append(row)
    table = [
        (
            r["label"], harness.fmt(r.get("wall_s"), ".1f"), harness.fmt(r.get("rss_mb"), ".0f"),
            harness.fmt(r.get("pass_s"), ".1f"), harness.fmt(r.get("capture_s"), ".1f"),
            harness.fmt(r.get("refit_s"), ".1f"), r.get("data_passes", "-"), r.get("layers_refit", "-"),
            harness.fmt(r.get("output_error_before"), ".4f"), harness.fmt(r.get("output_error"), ".4f"),
            harness.fmt(r.get("cosine"), ".4f"), _model_runs(r.get("model_runs")),
            harness.fmt(r.get("boundary_mb"), ".0f"), f"{r['load_start']:.1f} / {r['load_end']:.1f}",
        ) if r["ok"] else (r["label"], f"failed: {r['error']}", *[""] * 12)
        for r in rows
    ]  # fmt: skip
    headers = (
        "pipeline (after simplify)", "wall s (median)", "peak RSS MB", "reconstruct s", "capture s", "refit s",
        "data passes", "layers refit", "calib. output rel. error before", "after",
        f"held-out cosine ({BERT_TEST} seq.)", "runs: whole + segments (model; input model)", "boundary MB",
        "load 1 min (start / end, last run)",
    )  # fmt: skip
    title = f"bert-base, prune-channels ratio 0.3, {args.bert_calib} calibration sequences of {BERT_SEQ} tokens"
    print("\n" + harness.markdown_table(headers, table, title=title), flush=True)
    return rows


def bench_digits(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Digits at channel ratio 0.5, with and without ``reconstruct`` (128 calibration digits)."""
    model, calib = harness.ROOT / "models" / "digits_cnn.onnx", harness.ROOT / "models" / "digits_calib.npz"
    test = str(harness.ROOT / "models" / "digits_test.npz")
    prune = "prune-channels:ratio=0.5"
    rows = []
    for label, passes in (
        ("prune-channels", ["simplify", prune]),
        ("+ reconstruct", ["simplify", prune, "reconstruct"]),
        ("+ reconstruct augment=shifts,ridge=0.01", ["simplify", prune, "reconstruct:augment=shifts,ridge=0.01"]),
    ):
        row = {"label": label, **_measure(model, calib, passes, test, args.repeats)}
        rows.append(row)
    table = [
        (
            r["label"], harness.fmt(r.get("accuracy"), ".4f"), harness.fmt(r.get("reference"), ".4f"),
            f"{(r['reference'] - r['accuracy']) * 100:+.2f} pt" if r["ok"] else "-",
            harness.fmt(r.get("wall_s"), ".1f"), harness.fmt(r.get("rss_mb"), ".0f"),
        ) if r["ok"] else (r["label"], f"failed: {r['error']}", *[""] * 4)
        for r in rows
    ]  # fmt: skip
    headers = ("digits, ratio 0.5", "accuracy", "dense", "drop", "wall s", "peak RSS MB")
    print("\n" + harness.markdown_table(headers, table, title="digits CNN, 128 calibration digits, 540 test"))
    return rows


def bench_digits_ceiling(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Test accuracy of the digits CNN at width 8 (what ratio 0.5 leaves) and 16, trained from scratch."""
    import contextlib
    import io

    import torch

    sys.path.insert(0, str(harness.ROOT / "models"))
    import build_digits

    x_train, x_test, y_train, y_test = build_digits.load_data()
    rows = []
    for width in (8, 16):
        accuracies = []
        for seed in range(args.ceiling_seeds):
            build_digits.SEED = seed
            build_digits.set_determinism()
            model = build_digits.build_model(width)
            with contextlib.redirect_stdout(io.StringIO()):  # the per-epoch lines
                accuracies.append(build_digits.train(model, x_train, y_train, x_test, y_test))
            torch.use_deterministic_algorithms(False)
        rows.append({"width": width, "accuracies": accuracies, "median": statistics.median(accuracies)})
    table = [
        (r["width"], " / ".join(f"{100 * a:.2f}" for a in r["accuracies"]), f"{100 * r['median']:.2f}") for r in rows
    ]
    headers = ("width", f"test accuracy %, seeds 0-{args.ceiling_seeds - 1}", "median %")
    title = f"digits CNN trained from scratch on {len(y_train)} labelled digits, {len(y_test)} test"
    print("\n" + harness.markdown_table(headers, table, title=title))
    return rows


def main(argv: list[str] | None = None) -> int:
    """Runs the chosen cases, or one pipeline when started as ``--child``."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        _child(*argv[1:6])
        return 0
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    export.add_arguments(parser)
    parser.add_argument("--cases", default="bert-base,digits")
    parser.add_argument("--bert-orders", default="single,staged", type=lambda s: [o for o in s.split(",") if o])
    parser.add_argument("--bert-calib", type=int, default=16)
    parser.add_argument("--ceiling-seeds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", metavar="OUT")
    args = parser.parse_args(argv)
    blas = os.environ.get("OPENBLAS_NUM_THREADS", "unset")
    settings = f"repeats {args.repeats} (medians), one child process per run, OPENBLAS_NUM_THREADS={blas}"
    environment = harness.print_environment(settings=settings)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="onnxshrink-bench-reconstruct-") as tmp:
        for case in args.cases.split(","):
            print(f"{case}:", flush=True)
            benches = {"bert-base": lambda: bench_bert(args, Path(tmp)), "digits": lambda: bench_digits(args)}
            benches["digits-ceiling"] = lambda: bench_digits_ceiling(args)
            results[case] = benches[case]()
    if args.json:
        harness.write_json(args.json, {**environment, "cases": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
