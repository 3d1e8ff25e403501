"""Issue 15 items 1-3: what profiling and budgeted calibration cost against the plain run, and calibration itself.

Each run is a child process (``onnxshrink run``), timed with its peak RSS; medians over
``--repeats``, both sides of a ratio alternated in the same benchmark run:

- prune: ``simplify`` + ``prune:allocation=uniform`` vs ``simplify`` + ``prune:allocation=sensitivity``
  (goal: sensitivity <= 5x uniform) on ``ocr-cls`` (PP-OCR direction classifier) and ``magika``,
  128 calibration samples;
- quantize: ``simplify`` + ``quantize`` vs ``simplify`` + ``quantize:min-cosine=0.99`` (goal: <= 2x
  the time and <= 2x the peak memory) on ``ocr-rec`` (PP-OCRv4 recognizer, rendered text lines
  48x192), ``magika`` and ``bert-base``;
- calibration: ``simplify`` + ``quantize`` (defaults: ``calibrate=minmax``, ``smooth=auto``,
  ``bias-correction=fast``) on ``bert-base`` (goal: the quantize pass, as the report times it,
  <= 20 s, and the whole run's peak RSS <= 2 GB), with the pass's own split.

``bert-base`` is ``benchmarks/export.py``'s BERT-base (random weights, 438 MB) with the 32
calibration sequences of 128 random token ids that ``benchmarks/quantize.py`` uses (so at most 32
samples, whatever ``--samples`` says). The 1-minute load average is printed with every run.

Run in the bench venv (Pillow): ``python benchmarks/profiling.py [--models ocr-cls,magika,ocr-rec,bert-base]
[--samples 128] [--repeats 3] [--parts prune,quantize,calibration]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import export
import harness
import numpy as np
import samples
from harness import fmt_ratio, fmt_seconds

BERT_SEQ, BERT_CALIB = 128, 32  # benchmarks/quantize.py's calibration set


def _ocr_rec(count: int, args: argparse.Namespace) -> tuple[Path, samples.Feed]:
    models = harness.real_models()
    path = models.fetch(models.get_real_model("rapidocr-rec"))
    lines, _ = samples.text_lines(count, seed=1)
    return path, {"x": lines}


def _bert(count: int, args: argparse.Namespace) -> tuple[Path, samples.Feed]:
    feed = samples.bert_tokens(min(count, BERT_CALIB), BERT_SEQ, vocab=1000, seed=0)
    return export.exported("bert-base", args), feed  # type: ignore[return-value]


DATA: dict[str, Callable[[int, argparse.Namespace], tuple[Path, samples.Feed]]] = {
    "ocr-cls": lambda count, args: samples.ocr_cls(count)[:2],
    "magika": lambda count, args: samples.magika(count)[:2],
    "ocr-rec": _ocr_rec,
    "bert-base": _bert,
}
PARTS = {
    "prune": ("prune:allocation=uniform", "prune:allocation=sensitivity", ("ocr-cls", "magika")),
    "quantize": ("quantize", "quantize:min-cosine=0.99", ("ocr-rec", "magika", "bert-base")),
}
CALIBRATION_MODELS = ("bert-base",)
CALIBRATION_GOAL = (20.0, 2048.0)  # quantize pass seconds, run peak RSS MiB
GOALS = {"prune": (5.0, None), "quantize": (2.0, 2.0)}
# magika's first and last layers are the only MatMuls; benchmarks/prune.py measures them too.
EXTRA = {("prune", "magika"): ",keep-first-last=false"}


def _measure(
    model: Path, calib: Path, spec: str, samples_count: int, work: Path, report: Path | None = None
) -> harness.ChildRun:
    sep = "," if ":" in spec else ":"
    command = [
        *harness.onnxshrink_cli(),
        "run",
        str(model),
        "-o",
        str(work / "out.onnx"),
        "-p",
        "simplify",
        "-p",
        f"{spec}{sep}samples={samples_count}",
        "--calib",
        str(calib),
        "--no-verify",
        *(["--report", str(report)] if report is not None else []),
    ]
    print(f"  load {os.getloadavg()[0]:.2f}: {spec}", flush=True)
    run = harness.run_child(command, timeout=1800)
    if not run.ok:
        print(f"  {spec}: {run.failure}\n{run.tail}", file=sys.stderr)
    return run


def _calibration(args: argparse.Namespace, wanted: list[str]) -> None:
    """Item 3: the default static quantization's pass time (from the report) and the run's peak RSS."""
    rows = []
    for name in (m for m in CALIBRATION_MODELS if m in wanted):
        model, feed = DATA[name](args.samples, args)
        runs: list[tuple[float, float, float, dict[str, float]]] = []
        with tempfile.TemporaryDirectory(prefix="onnxshrink-profiling-") as tmp:
            work = Path(tmp)
            calib = work / "calib.npz"
            np.savez(calib, **feed)
            for _ in range(args.repeats):
                load = os.getloadavg()[0]
                run = _measure(model, calib, "quantize", args.samples, work, work / "report.json")
                if not run.ok:
                    continue
                passes = json.loads((work / "report.json").read_text())["passes"]
                record = next(p for p in passes if p["name"] == "quantize")
                runs.append((record["seconds"], run.wall_s, run.peak_rss_mb, {"load": load, **record["timings"]}))
        if not runs:
            continue
        pass_s, wall_s, peak = (statistics.median(r[i] for r in runs) for i in range(3))
        parts = {key: statistics.median(r[3].get(key, 0.0) for r in runs) for key in runs[0][3]}
        loads = ", ".join(f"{r[3]['load']:.1f}" for r in runs)
        split = ", ".join(f"{key} {value:.1f}" for key, value in parts.items() if key != "load")
        count = len(next(iter(feed.values())))
        rows.append((name, str(count), fmt_seconds(pass_s), split, fmt_seconds(wall_s), f"{peak:.0f}", loads))
    time_goal, memory_goal = CALIBRATION_GOAL
    headers = ("model", "samples", "quantize pass", "pass split (s)", "whole run", "run peak MB", "load at start")
    title = f"calibration (goal: pass <= {time_goal:.0f} s, peak <= {memory_goal:.0f} MB; simplify first; medians)"
    print(harness.markdown_table(headers, rows, title=title))


def main(argv: list[str] | None = None) -> int:
    """Prints one table per part: medians of wall time and peak RSS, and their ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    export.add_arguments(parser)
    parser.add_argument("--models", default="ocr-cls,magika,ocr-rec,bert-base")
    parser.add_argument("--parts", default="prune,quantize,calibration")
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    harness.print_environment(settings=f"samples {args.samples}, repeats {args.repeats} (medians)")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    wanted = args.models.split(",")
    for part in args.parts.split(","):
        if part == "calibration":
            _calibration(args, wanted)
            continue
        plain, budgeted, models = PARTS[part]
        rows = []
        for name in (m for m in models if m in wanted):
            model, feed = DATA[name](args.samples, args)
            with tempfile.TemporaryDirectory(prefix="onnxshrink-profiling-") as tmp:
                work = Path(tmp)
                calib = work / "calib.npz"
                np.savez(calib, **feed)
                extra = EXTRA.get((part, name), "")
                times: dict[str, list[float]] = {plain: [], budgeted: []}
                memory: dict[str, list[float]] = {plain: [], budgeted: []}
                for _ in range(args.repeats):
                    for spec in (plain, budgeted):
                        run = _measure(model, calib, spec + extra, args.samples, work)
                        times[spec].append(run.wall_s)
                        memory[spec].append(run.peak_rss_mb)
            t0, t1 = statistics.median(times[plain]), statistics.median(times[budgeted])
            m0, m1 = statistics.median(memory[plain]), statistics.median(memory[budgeted])
            rows.append(
                (
                    name,
                    fmt_seconds(t0),
                    fmt_seconds(t1),
                    fmt_ratio(t1 / t0),
                    f"{m0:.0f}",
                    f"{m1:.0f}",
                    fmt_ratio(m1 / m0),
                )
            )
        time_goal, memory_goal = GOALS[part]
        goal = f"goal: time <= {time_goal}x" + (f", memory <= {memory_goal}x" if memory_goal else "")
        headers = ("model", plain, budgeted, "time ratio", "plain MB", "budgeted MB", "memory ratio")
        print(harness.markdown_table(headers, rows, title=f"{part} ({goal}; simplify first)"))
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
