"""Issue 12's goals for ``onnxshrink auto`` on the bundled digits CNN (labelled).

Figures: the size ratio against the fp32 input at ``--max-drop 0.5`` and the wall time (goal: >= 6x
smaller in <= 3 min), beside plain int8 (``simplify`` -> ``quantize``, about 3-4x); and profile
reuse: a second study with another target in the same study folder (goal: <= 10 % of the first
run's profiling time).

Every run is the ``onnxshrink`` command in a child process (``harness.run_child``: wall time and
peak RSS); ``auto`` runs are fresh studies (``--repeats`` of them, medians printed), each followed
by the reuse run in its folder. Prints figures, judges nothing. Run::

    python benchmarks/auto.py [--trials 12] [--repeats 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import harness

MODEL = harness.ROOT / "models" / "digits_cnn.onnx"
CALIB = harness.ROOT / "models" / "digits_calib.npz"
EVAL = harness.ROOT / "models" / "digits_test.npz"


def _int8(folder: Path) -> dict[str, Any]:
    out, report = folder / "int8.onnx", folder / "int8.json"
    command = [*harness.onnxshrink_cli(), "run", str(MODEL), "-o", str(out), "-p", "simplify", "-p", "quantize"]
    run = harness.run_child([*command, "--calib", str(CALIB), "--inputs", str(EVAL), "--report", str(report)])
    if not run.ok:
        return {"failure": run.failure}
    verification = json.loads(report.read_text())["verification"]
    drop = 100 * (verification["accuracy_reference"] - verification["accuracy_candidate"])
    return {"size": out.stat().st_size, "drop": drop, "wall_s": run.wall_s, "peak_rss_mb": run.peak_rss_mb}


def _auto(folder: Path, name: str, trials: int, goal: list[str]) -> dict[str, Any]:
    out, report = folder / f"{name}.onnx", folder / f"{name}.json"
    command = [*harness.onnxshrink_cli(), "auto", str(MODEL), "-o", str(out), "--calib", str(CALIB)]
    command += ["--eval", str(EVAL), *goal, "--trials", str(trials), "--study", str(folder / "study")]
    run = harness.run_child([*command, "--report", str(report)], timeout=1800)
    if not report.exists():
        return {"failure": run.failure, "tail": run.tail}
    data = json.loads(report.read_text())
    chosen = data["trials"][data["chosen"]["trial"]]
    return {
        "exit_ok": run.ok,
        "size": chosen["size"],
        "drop": chosen["drop"],
        "feasible": data["chosen"]["feasible"],
        "trials": len(data["trials"]),
        "failed_trials": sum(1 for t in data["trials"] if t.get("error")),
        "profile_s": data["profile"]["seconds"],
        "profile_cached": data["profile"]["cached"],
        "wall_s": run.wall_s,
        "peak_rss_mb": run.peak_rss_mb,
        "recipe": out.with_suffix(".toml").read_text(),
    }


def _median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def main() -> None:
    """Runs the studies and prints the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12, help="most trials of each auto run")
    parser.add_argument("--repeats", type=int, default=1, help="fresh studies; medians are printed")
    parser.add_argument("--json", type=Path, help="write every number here")
    args = parser.parse_args()
    environment = harness.print_environment(extra_dists=("optuna", "scipy"))
    fp32 = MODEL.stat().st_size
    reuse_goal = ["--max-size", str(fp32 // 4), "--max-drop", "1"]
    runs, reuses = [], []
    with tempfile.TemporaryDirectory() as tmp:
        baseline = _int8(Path(tmp))
        for repeat in range(args.repeats):
            folder = Path(tmp) / f"study{repeat}"
            folder.mkdir()
            runs.append(_auto(folder, "auto", args.trials, ["--max-drop", "0.5"]))
            reuses.append(_auto(folder, "reuse", 2, reuse_goal))
    failed = [r for r in runs + reuses if "failure" in r]
    for run in failed:
        print(f"note: a run failed: {run['failure']}\n{run.get('tail') or ''}")
    rows = [
        ["fp32 input", fp32, "1.00x", "-", "-", "-", "-", "-"],
        [
            "int8: simplify -> quantize",
            baseline.get("size", "-"),
            harness.fmt_ratio(fp32 / baseline["size"]) if "size" in baseline else "-",
            harness.fmt(baseline.get("drop"), ".2f"),
            harness.fmt_seconds(baseline.get("wall_s")),
            harness.fmt(baseline.get("peak_rss_mb"), ".0f"),
            "-",
            "-",
        ],
    ]
    for label, group in (("auto --max-drop 0.5", runs), (f"auto {' '.join(reuse_goal)}, same study", reuses)):
        size = _median(group, "size")
        rows.append(
            [
                f"{label} (median of {len(group)})",
                harness.fmt(size, ".0f"),
                harness.fmt_ratio(fp32 / size) if size else "-",
                harness.fmt(_median(group, "drop"), ".2f"),
                harness.fmt_seconds(_median(group, "wall_s")),
                harness.fmt(_median(group, "peak_rss_mb"), ".0f"),
                harness.fmt(_median(group, "trials"), ".0f"),
                harness.fmt_seconds(_median(group, "profile_s")),
            ]
        )
    headers = ["digits CNN", "bytes", "smaller", "drop (points)", "wall", "peak RSS MiB", "trials", "profiling"]
    print(harness.markdown_table(headers, rows, title="onnxshrink auto"))
    first, second = _median(runs, "profile_s"), _median(reuses, "profile_s")
    if first and second is not None:
        print(f"\nprofile reuse: the second study profiled for {100 * second / first:.1f} % of the first's time")
    if runs and "recipe" in runs[0]:
        print("\nchosen recipe (first study):\n" + runs[0]["recipe"])
    if args.json:
        harness.write_json(args.json, {"fp32": fp32, "int8": baseline, "auto": runs, "reuse": reuses, **environment})


if __name__ == "__main__":
    main()
