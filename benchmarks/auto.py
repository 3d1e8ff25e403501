"""Issue 12's goals for ``onnxshrink auto`` on the bundled digits CNN (labelled).

Size ratio against the fp32 input at ``--max-drop 0.5`` and the wall time (goal: >= 6x smaller in <= 3 min),
beside plain int8 (``simplify`` -> ``quantize``, about 4x), and profile reuse: a second study with
another target in the same study folder (goal: <= 10 % of the first run's profiling time).

Each ``auto`` run is a fresh study (``--repeats`` of them, medians printed); the reuse run follows
the first one in its folder. Prints figures, judges nothing. Run::

    .venv/bin/python benchmarks/auto.py [--trials 12] [--repeats 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna

import onnxshrink

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "digits_cnn.onnx"
CALIB = ROOT / "models" / "digits_calib.npz"
EVAL = ROOT / "models" / "digits_test.npz"


def _int8_baseline(folder: Path) -> dict[str, Any]:
    started = time.perf_counter()
    result = onnxshrink.shrink(str(MODEL), ["simplify", "quantize"], calibration=str(CALIB), inputs=str(EVAL))
    path = folder / "int8.onnx"
    result.save(path)
    verification = result.report["verification"]
    return {
        "size": path.stat().st_size,
        "seconds": time.perf_counter() - started,
        "drop": 100 * (verification["accuracy_reference"] - verification["accuracy_candidate"]),
    }


def _auto(folder: Path, trials: int, **goal: Any) -> dict[str, Any]:
    started = time.perf_counter()
    result = onnxshrink.auto(
        str(MODEL), calibration=str(CALIB), evaluation=str(EVAL), study=folder, max_trials=trials, **goal
    )
    seconds = time.perf_counter() - started
    chosen = result.report["trials"][result.report["chosen"]["trial"]]
    return {
        "size": chosen["size"],
        "drop": chosen["drop"],
        "accuracy": chosen["accuracy"],
        "accuracy_reference": chosen["accuracy_reference"],
        "feasible": result.feasible,
        "trials": len(result.trials),
        "failed": sum(1 for t in result.trials if t.get("error")),
        "profile_seconds": result.report["profile"]["seconds"],
        "profile_cached": result.report["profile"]["cached"],
        "seconds": seconds,
        "recipe": result.recipe,
    }


def main() -> None:
    """Runs the studies and prints the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12, help="max trials of each auto run")
    parser.add_argument("--repeats", type=int, default=1, help="fresh studies; medians are printed")
    parser.add_argument("--json", type=Path, help="write every number here")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    fp32 = MODEL.stat().st_size
    runs, reuses = [], []
    with tempfile.TemporaryDirectory() as tmp:
        baseline = _int8_baseline(Path(tmp))
        for repeat in range(args.repeats):
            folder = Path(tmp) / f"study{repeat}"
            runs.append(_auto(folder, args.trials, max_drop=0.5))
            reuses.append(_auto(folder, 2, max_size=int(fp32 / 4), max_drop=1.0))
    size = statistics.median(r["size"] for r in runs)
    seconds = statistics.median(r["seconds"] for r in runs)
    print(f"digits CNN fp32: {fp32} B, accuracy {runs[0]['accuracy_reference']:.4f} on {EVAL.name}")
    print(f"int8 (simplify -> quantize): {baseline['size']} B = {fp32 / baseline['size']:.2f}x smaller, ", end="")
    print(f"drop {baseline['drop']:.2f} points, {baseline['seconds']:.1f} s")
    print(f"auto --max-drop 0.5 (median of {len(runs)}, {args.trials} trials max): {size:.0f} B = ", end="")
    print(f"{fp32 / size:.2f}x smaller, drop {statistics.median(r['drop'] for r in runs):.2f} points, ", end="")
    print(f"{seconds:.1f} s wall, {runs[0]['trials']} trials ({runs[0]['failed']} failed), ", end="")
    print(f"profiling {statistics.median(r['profile_seconds'] for r in runs):.2f} s")
    first = statistics.median(r["profile_seconds"] for r in runs)
    second = statistics.median(r["profile_seconds"] for r in reuses)
    print(f"profile reuse (second study, --max-size {int(fp32 / 4)}): profiling {second:.3f} s = ", end="")
    print(f"{100 * second / first:.1f} % of the first run's {first:.2f} s (cached: {reuses[0]['profile_cached']})")
    print("chosen recipe:\n" + runs[0]["recipe"])
    if args.json:
        data = {"fp32": fp32, "int8": baseline, "auto": runs, "reuse": reuses}
        args.json.write_text(json.dumps(data, indent=2))


if __name__ == "__main__":
    main()
