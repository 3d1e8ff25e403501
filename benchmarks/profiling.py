"""Issue 15 items 1-2: what profiling and budgeted calibration cost against the plain run.

Each run is a child process (``onnxshrink run``), timed with its peak RSS; medians over
``--repeats``, both sides of a ratio alternated in the same benchmark run:

- prune: ``simplify`` + ``prune:allocation=uniform`` vs ``simplify`` + ``prune:allocation=sensitivity``
  (goal: sensitivity <= 5x uniform) on ``ocr-cls`` (PP-OCR direction classifier) and ``magika``,
  128 calibration samples;
- quantize: ``simplify`` + ``quantize`` vs ``simplify`` + ``quantize:min-cosine=0.99`` (goal: <= 2x
  the time and <= 2x the peak memory) on ``ocr-rec`` (PP-OCRv4 recognizer, rendered text lines
  48x192) and ``magika``.

Run in the bench venv (Pillow): ``python benchmarks/profiling.py [--models ocr-cls,magika,ocr-rec]
[--samples 128] [--repeats 3] [--parts prune,quantize]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import harness
import numpy as np
import samples
from harness import fmt_ratio, fmt_seconds


def _ocr_rec(count: int) -> tuple[Path, samples.Feed]:
    models = harness.real_models()
    path = models.fetch(models.get_real_model("rapidocr-rec"))
    lines, _ = samples.text_lines(count, seed=1)
    return path, {"x": lines}


DATA: dict[str, Callable[[int], tuple[Path, samples.Feed]]] = {
    "ocr-cls": lambda count: samples.ocr_cls(count)[:2],
    "magika": lambda count: samples.magika(count)[:2],
    "ocr-rec": _ocr_rec,
}
PARTS = {
    "prune": ("prune:allocation=uniform", "prune:allocation=sensitivity", ("ocr-cls", "magika")),
    "quantize": ("quantize", "quantize:min-cosine=0.99", ("ocr-rec", "magika")),
}
GOALS = {"prune": (5.0, None), "quantize": (2.0, 2.0)}
# magika's first and last layers are the only MatMuls; benchmarks/prune.py measures them too.
EXTRA = {("prune", "magika"): ",keep-first-last=false"}


def _measure(model: Path, calib: Path, spec: str, samples_count: int, work: Path) -> harness.ChildRun:
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
    ]
    run = harness.run_child(command, timeout=1800)
    if not run.ok:
        print(f"  {spec}: {run.failure}\n{run.tail}", file=sys.stderr)
    return run


def main(argv: list[str] | None = None) -> int:
    """Prints one table per part: medians of wall time and peak RSS, and their ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="ocr-cls,magika,ocr-rec")
    parser.add_argument("--parts", default="prune,quantize")
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    harness.print_environment(settings=f"samples {args.samples}, repeats {args.repeats} (medians)")
    wanted = args.models.split(",")
    for part in args.parts.split(","):
        plain, budgeted, models = PARTS[part]
        rows = []
        for name in (m for m in models if m in wanted):
            model, feed = DATA[name](args.samples)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
