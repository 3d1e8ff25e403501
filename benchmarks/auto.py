"""Issue 12's goals for ``onnxshrink auto``, each model side by side with its anchors in one run.

Models (``--models``, any subset, in this order):

- ``digits``: the bundled CNN, its 128 calibration digits and 540 labelled test digits;
  ``auto --max-drop 0.5`` (goal: >= 6x smaller than fp32 in <= 3 min), plus the profile-reuse run:
  a second study with another target in the same study folder (goal: <= 10 % of the first run's
  profiling time);
- ``ppocr_cls``: rapidocr's PP-OCR text-direction classifier, rendered text lines
  (``samples.ocr_cls``: calibration seed 1, 400 labelled test lines seed 2);
  ``auto --max-drop 1 --min-speedup 1.5`` (goal: >= 1.5x faster at batch 1 on ORT CPU);
- ``magika``: Google's file-type model on real files (``samples.magika``; 384 test files, no
  labels); ``auto --min-agreement 0.99 --max-size <fp32 / 4>`` (goal: >= 4x smaller);
- ``bert``: BERT-base with random weights (``export.py``'s cached export), random token ids
  (``samples.bert_tokens``: 8 calibration and 16 test sequences of 32 tokens by default; one fp32
  batch of 8 takes seconds on two cores); ``auto --min-cosine 0.99 --min-speedup 2 --batch 8``
  (goal: >= 2x faster at batch 8).

Tools, each in a child process (``harness.run_child``: wall time and peak RSS), all given the same
calibration samples:

- ``auto``: the ``onnxshrink auto`` command with the goal, ``--trials`` and ``--time-budget``;
- ``hand``: the best hand-written pipeline of the README's tables for that goal (``HAND``), the
  ``onnxshrink run`` command;
- ``ort``: ``onnxruntime.quantization.quantize_static`` with its defaults (QDQ, s8/s8 per-tensor,
  MinMax), calibration read in batches of 10;
- ``nncf``: NNCF's ``quantize_with_accuracy_control`` (ONNX backend, NNCF defaults;
  ``model_type=TRANSFORMER`` on BERT), calibration one sample per item, validated with the same
  measure and limit as ``auto``'s budget (accuracy, top-1 agreement or cosine against fp32, as
  an absolute drop). A failure prints its one-line reason in the table.

The anchors quantize the ``simplify``-ed fp32 model (BatchNorm folded, as ``quantize.py`` feeds
them); ``auto`` and ``hand`` start from the input model. Every output is then measured here the
same way: bytes of the file; accuracy drop, top-1 agreement and cosine against the input model on
the whole test set (cosine: the worst output, flattened); latency at the goal's batch on ORT CPU,
every model of the row timed interleaved with the fp32 input (``harness.session_latency``), the
speed ratio being the median of same-round ratios. Prints figures and whether each output is
within the goal; judges nothing else. Run::

    python benchmarks/auto.py [--models digits,ppocr_cls,magika,bert] [--tools auto,hand,ort,nncf]
        [--trials 12] [--time-budget 10m] [--repeats 1] [--bert-seq 32] [--keep DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import export
import harness
import numpy as np
import samples
from numerics import cosine

TOOLS = ("auto", "hand", "ort", "nncf")
BERT_VOCAB = 1000  # token ids in [0, 1000), as benchmarks/quantize.py draws them


@dataclasses.dataclass(frozen=True)
class Case:
    """One model's goal and how it is measured.

    Attributes:
        budget: ``drop`` (accuracy points on labels), ``agreement`` or ``cosine`` (against fp32).
        limit: The budget's value: points of drop, or the least agreement / cosine.
        goal: ``auto``'s target and budget options (``{fp32_quarter}`` is the input's bytes / 4).
        batch: The batch the speed ratio is measured at.
        target: ``size`` (smaller) or ``speed`` (faster) and the ratio the goal asks for.
        hand: The hand-written pipeline's passes.
        time_budget: ``auto --time-budget`` unless ``--time-budget`` is given.
        rounds: Latency rounds; runs: runs per round (one median each).
    """

    budget: str
    limit: float
    goal: tuple[str, ...]
    batch: int
    target: tuple[str, float]
    hand: tuple[str, ...]
    time_budget: str | None
    rounds: int
    runs: int


_INT8 = ("simplify", "quantize")
CASES = {
    "digits": Case("drop", 0.5, ("--max-drop", "0.5"), 1, ("size", 6.0), _INT8, None, rounds=30, runs=20),
    "ppocr_cls": Case(
        "drop", 1.0, ("--max-drop", "1", "--min-speedup", "1.5"), 1, ("speed", 1.5), _INT8, "10m", rounds=30, runs=5
    ),
    "magika": Case(
        "agreement",
        0.99,
        ("--min-agreement", "0.99", "--max-size", "{fp32_quarter}"),
        1,
        ("size", 4.0),
        _INT8,
        "10m",
        rounds=20,
        runs=3,
    ),
    "bert": Case(
        "cosine",
        0.99,
        ("--min-cosine", "0.99", "--min-speedup", "2", "--batch", "8"),
        8,
        ("speed", 2.0),
        _INT8,
        "20m",
        rounds=5,
        runs=1,
    ),
}


# ------------------------------------------------------------------------------------------------
# inputs


@dataclasses.dataclass
class Inputs:
    """A model's input file, its calibration and test npz files, the test arrays and labels."""

    model: Path
    calib: Path
    test: Path
    feed: dict[str, np.ndarray]
    labels: np.ndarray | None


def _inputs(name: str, args: argparse.Namespace, work: Path) -> Inputs:
    if name == "digits":
        model, calib, test = samples.digits()
    elif name == "ppocr_cls":
        model, calib, test = samples.ocr_cls(args.calib_samples)
    elif name == "magika":
        model, calib, test = samples.magika(args.calib_samples)
    else:
        model = export.exported("bert-base", args)
        calib = samples.bert_tokens(args.bert_calib, args.bert_seq, vocab=BERT_VOCAB, seed=0)
        test = samples.bert_tokens(args.bert_eval, args.bert_seq, vocab=BERT_VOCAB, seed=1)
    calib_path, test_path = work / "calib.npz", work / "test.npz"
    np.savez(calib_path, **calib)  # type: ignore[arg-type]
    np.savez(test_path, **test)  # type: ignore[arg-type]
    labels = test.pop("labels", None)
    return Inputs(Path(model), calib_path, test_path, test, labels)


def _arrays(path: str) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


# ------------------------------------------------------------------------------------------------
# children: the anchors


def _child_ort(fp32: str, out: str, calib: str) -> None:
    from onnxruntime.quantization import quantize_static

    arrays = _arrays(calib)
    arrays.pop("labels", None)
    quantize_static(fp32, out, harness.ort_calibration_reader(arrays))


def _validation(budget: str, reference: list[np.ndarray], labels: np.ndarray | None) -> Callable[..., Any]:
    """NNCF's validation function: the budget's measure over the test items, and each item's."""
    import onnxruntime as ort

    def validate(model: Any, items: Any) -> tuple[float, list[float]]:
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        outputs, references, truths, per_item = [], [], [], []
        for start, feed in items:  # NNCF may pass any subset of the items
            got = session.run(None, feed)
            stop = start + len(next(iter(feed.values())))
            wanted, truth = [r[start:stop] for r in reference], _slice(labels, start, stop)
            per_item.append(_measure(budget, wanted, got, truth))
            outputs.append(got)
            references.append(wanted)
            truths.append(truth)
        whole = [np.concatenate([o[i] for o in outputs]) for i in range(len(reference))]
        expected = [np.concatenate([r[i] for r in references]) for i in range(len(reference))]
        truth_all = None if labels is None else np.concatenate(truths)
        return _measure(budget, expected, whole, truth_all), per_item

    return validate


def _slice(labels: np.ndarray | None, start: int, stop: int) -> np.ndarray | None:
    return None if labels is None else labels[start:stop]


def _measure(budget: str, reference: list[np.ndarray], outputs: list[np.ndarray], labels: np.ndarray | None) -> float:
    """The budget's score, higher is better: accuracy, top-1 agreement, or the worst output's cosine."""
    if budget == "drop":
        assert labels is not None
        return float(np.mean(outputs[0].argmax(-1) == labels))
    if budget == "agreement":
        return float(np.mean(outputs[0].argmax(-1) == reference[0].argmax(-1)))
    return min(cosine(r, o) for r, o in zip(reference, outputs, strict=True))


def _child_nncf(fp32: str, out: str, calib: str, test: str, budget: str, limit: str, batch: str) -> None:
    import nncf
    import onnx

    arrays = _arrays(calib)
    arrays.pop("labels", None)
    tests = _arrays(test)
    labels = tests.pop("labels", None)
    count = len(next(iter(arrays.values())))
    calibration = nncf.Dataset([{key: value[i : i + 1] for key, value in arrays.items()} for i in range(count)])
    step, total = int(batch), len(next(iter(tests.values())))
    items = [(start, {k: v[start : start + step] for k, v in tests.items()}) for start in range(0, total, step)]
    reference = _outputs(fp32, tests, step)
    max_drop = float(limit) / 100 if budget == "drop" else 1 - float(limit)
    model_type = nncf.ModelType.TRANSFORMER if "input_ids" in tests else None
    quantized = nncf.quantize_with_accuracy_control(
        onnx.load(fp32),
        calibration,
        nncf.Dataset(items),
        _validation(budget, reference, labels),
        max_drop=max_drop,
        drop_type=nncf.DropType.ABSOLUTE,
        subset_size=count,
        model_type=model_type,
    )
    onnx.save(quantized, out)


# ------------------------------------------------------------------------------------------------
# measuring an output


def _outputs(path: str | Path, feed: dict[str, np.ndarray], batch: int) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    total = len(next(iter(feed.values())))
    chunks = [session.run(None, {n: feed[n][s : s + batch] for n in names}) for s in range(0, total, batch)]
    return [np.concatenate([c[i] for c in chunks]) for i in range(len(chunks[0]))]


def _quality(
    case: Case, reference: list[np.ndarray], path: Path, inputs: Inputs, chunk: int, reference_accuracy: float | None
) -> dict[str, Any]:
    outputs = _outputs(path, inputs.feed, chunk)
    found: dict[str, Any] = {"cosine": _measure("cosine", reference, outputs, None)}
    if reference[0].ndim == 2:
        found["agreement"] = _measure("agreement", reference, outputs, None)
    if inputs.labels is not None:
        found["accuracy"] = _measure("drop", reference, outputs, inputs.labels)
        found["drop"] = 100 * ((reference_accuracy or 0.0) - found["accuracy"])
    value = {"drop": found.get("drop"), "agreement": found.get("agreement"), "cosine": found["cosine"]}[case.budget]
    within = value is not None and (value <= case.limit if case.budget == "drop" else value >= case.limit)
    found["within_budget"] = within
    return found


# ------------------------------------------------------------------------------------------------
# the tools


def _run_child(command: list[str], timeout: float) -> harness.ChildRun:
    return harness.run_child(command, timeout=timeout)


def _anchor(tool: str, fp32: Path, inputs: Inputs, case: Case, out: Path, timeout: float) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", tool, str(fp32), str(out), str(inputs.calib)]
    if tool == "nncf":
        command += [str(inputs.test), case.budget, str(case.limit), str(case.batch if case.batch > 1 else 8)]
    run = _run_child(command, timeout)
    if not run.ok:
        return {"failure": run.failure, "tail": run.tail}
    return {"wall_s": run.wall_s, "peak_rss_mb": run.peak_rss_mb}


def _hand(case: Case, inputs: Inputs, out: Path, timeout: float) -> dict[str, Any]:
    command = [*harness.onnxshrink_cli(), "run", str(inputs.model), "-o", str(out), "--no-verify"]
    for spec in case.hand:
        command += ["-p", spec]
    run = _run_child([*command, "--calib", str(inputs.calib)], timeout)
    if not run.ok:
        return {"failure": run.failure, "tail": run.tail}
    return {"wall_s": run.wall_s, "peak_rss_mb": run.peak_rss_mb}


def _auto(
    goal: list[str], inputs: Inputs, folder: Path, name: str, trials: int, budget: str | None, timeout: float
) -> dict[str, Any]:
    out, report = folder / f"{name}.onnx", folder / f"{name}.json"
    command = [*harness.onnxshrink_cli(), "auto", str(inputs.model), "-o", str(out), "--calib", str(inputs.calib)]
    command += ["--eval", str(inputs.test), *goal, "--trials", str(trials), "--study", str(folder / "study")]
    command += ["--time-budget", budget] if budget else []
    run = _run_child([*command, "--report", str(report)], timeout)
    if not report.exists():
        return {"failure": run.failure, "tail": run.tail}
    data = json.loads(report.read_text())
    chosen = data["trials"][data["chosen"]["trial"]]
    return {
        "output": str(out),
        "exit_ok": run.ok,
        "feasible": data["chosen"]["feasible"],
        "misses": data["chosen"]["misses"],
        "trials": len(data["trials"]),
        "failed_trials": sum(1 for t in data["trials"] if t.get("error")),
        "trial_errors": sorted({str(t["error"])[:160] for t in data["trials"] if t.get("error")}),
        "profile_s": data["profile"]["seconds"],
        "profile_cached": data["profile"]["cached"],
        "own_speedup": chosen.get("speedup"),
        "predicted_speedup": _predicted_speedup(data, chosen),
        "own_size": chosen.get("size"),
        "settings": chosen.get("settings"),
        "knobs": chosen.get("knobs"),
        "wall_s": run.wall_s,
        "peak_rss_mb": run.peak_rss_mb,
        "recipe": out.with_suffix(".toml").read_text() if out.with_suffix(".toml").exists() else None,
    }


def _predicted_speedup(report: dict[str, Any], chosen: dict[str, Any]) -> float | None:
    """The speedup the latency model predicted for the chosen trial (``None`` without a latency goal)."""
    predicted = (chosen.get("predicted") or {}).get("latency_ms")
    base = report["profile"].get("latency_ms")
    return base / predicted if predicted and base else None


def _median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def bench_model(name: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Runs every tool on one model, then measures every output the same way.

    Returns:
        ``rows`` (a dict per tool: size, speed, quality, wall, peak RSS or ``failure``), the input's
        ``fp32`` figures and, for digits, ``reuse`` (the second study in the first's folder).
    """
    case = CASES[name]
    inputs = _inputs(name, args, work)
    fp32_size = inputs.model.stat().st_size
    simplified = work / "fp32_simplified.onnx"
    import onnxshrink

    onnxshrink.shrink(str(inputs.model), ["simplify"], verify=False).save(str(simplified))
    goal = [g.replace("{fp32_quarter}", str(fp32_size // 4)) for g in case.goal]
    budget = args.time_budget or case.time_budget
    rows: dict[str, dict[str, Any]] = {}
    outputs: dict[str, Path] = {}
    reuse: list[dict[str, Any]] = []
    for tool in args.tools:
        started = time.perf_counter()
        out = work / f"{tool}.onnx"
        if tool == "auto":
            runs = []
            for repeat in range(args.repeats):
                folder = work / f"auto{repeat}"
                folder.mkdir()
                runs.append(_auto(goal, inputs, folder, "auto", args.trials, budget, args.timeout))
                if name == "digits" and args.reuse:
                    reuse_goal = ["--max-size", str(fp32_size // 4), "--max-drop", "1"]
                    reuse.append(_auto(reuse_goal, inputs, folder, "reuse", 2, None, args.timeout))
            good = [r for r in runs if "failure" not in r]
            row = dict(good[0] if good else runs[0])
            row["repeats"] = runs
            for key in ("wall_s", "peak_rss_mb", "profile_s", "trials"):
                row[key] = _median(good, key)
            if good:
                Path(good[0]["output"]).replace(out)
        elif tool == "hand":
            row = _hand(case, inputs, out, args.timeout)
        else:
            row = _anchor(tool, simplified, inputs, case, out, args.timeout)
        rows[tool] = row
        brief = {k: v for k, v in row.items() if k not in ("recipe", "repeats", "settings", "tail")}
        print(f"  {tool} ({time.perf_counter() - started:.0f} s): {json.dumps(brief, default=str)}", flush=True)
        if "failure" in row:
            print("    " + (row.get("tail") or "").strip().replace("\n", "\n    ")[-1500:], flush=True)
        elif out.exists():
            outputs[tool] = out
    chunk = 8 if name == "bert" else 64
    reference = _outputs(inputs.model, inputs.feed, chunk)
    accuracy = _measure("drop", reference, reference, inputs.labels) if inputs.labels is not None else None
    fp32 = {"size": fp32_size, "accuracy": accuracy}
    for tool, path in list(outputs.items()):
        try:
            rows[tool].update(_quality(case, reference, path, inputs, chunk, accuracy))
        except Exception as error:  # an anchor can write a model onnxruntime refuses
            rows[tool]["failure"] = "ORT refuses the output: " + str(error).strip().splitlines()[0][-160:]
            del outputs[tool]
            continue
        rows[tool]["size"] = path.stat().st_size
    paths: dict[str, Path] = {"fp32": inputs.model, **outputs}
    batch_feed = {k: np.resize(v, (case.batch, *v.shape[1:])) for k, v in inputs.feed.items()}
    times = harness.session_latency(paths, batch_feed, rounds=case.rounds, runs_per_round=case.runs)
    fp32["ms"] = harness.median_ms(times, "fp32")
    for tool in outputs:
        rows[tool]["ms"] = harness.median_ms(times, tool)
        rows[tool]["speedup"] = harness.speedup(times, "fp32", tool)
        rows[tool]["smaller"] = fp32_size / rows[tool]["size"]
        kind, ratio = case.target
        reached = rows[tool]["smaller"] if kind == "size" else rows[tool]["speedup"]
        rows[tool]["goal_met"] = bool(reached >= ratio and rows[tool]["within_budget"])
    return {"case": dataclasses.asdict(case), "goal": goal, "time_budget": budget, "fp32": fp32, "rows": rows} | (
        {"reuse": reuse} if reuse else {}
    )


# ------------------------------------------------------------------------------------------------
# output

LABELS = {
    "auto": "`auto {goal}`",
    "hand": "hand: `{hand}`",
    "ort": "onnxruntime `quantize_static` (defaults)",
    "nncf": "NNCF `quantize_with_accuracy_control`",
}


def _metric(case: Case, row: dict[str, Any]) -> str:
    if case.budget == "drop":
        return f"drop {row['drop']:.2f} pts (acc {100 * row['accuracy']:.2f} %)"
    if case.budget == "agreement":
        return f"agreement {row['agreement']:.4f}"
    return f"cosine {row['cosine']:.5f}"


def print_table(name: str, result: dict[str, Any]) -> None:
    """One model's table: fp32, then each tool (a failure with its reason)."""
    case = Case(**result["case"])
    fp32 = result["fp32"]
    kind, ratio = case.target
    headers = [
        "tool",
        "bytes",
        "smaller",
        f"speed b{case.batch} (x fp32)",
        "metric",
        f"goal (>= {ratio:g}x {'smaller' if kind == 'size' else 'faster'}, within budget)",
        "wall",
        "peak RSS MiB",
        "notes",
    ]
    base = "-" if fp32["accuracy"] is None else f"acc {100 * fp32['accuracy']:.2f} %"
    table = [["fp32 input", f"{fp32['size']:,}", "1.00x", f"1.00x ({fp32['ms']:.2f} ms)", base, "", "", "", ""]]
    for tool, row in result["rows"].items():
        label = LABELS[tool].format(goal=" ".join(result["goal"]), hand=" -> ".join(case.hand))
        if "failure" in row or "size" not in row:
            reason = row.get("failure") or "no output"
            table.append([label, f"failed: {reason}", "", "", "", "no", harness.fmt_seconds(row.get("wall_s")), "", ""])
            continue
        notes = ""
        if tool == "auto":
            profiled = harness.fmt_seconds(row.get("profile_s"))
            notes = f"{harness.fmt(row.get('trials'), '.0f')} trials, profile {profiled}"
            notes += "" if row.get("feasible") else "; infeasible: " + "; ".join(row.get("misses", {}).values())
            if row.get("predicted_speedup") is not None:
                notes += f"; predicted {row['predicted_speedup']:.2f}x"
            if row.get("own_speedup") is not None:
                notes += f"; its own timing {row['own_speedup']:.2f}x"
        table.append(
            [
                label,
                f"{row['size']:,}",
                harness.fmt_ratio(row["smaller"]),
                harness.fmt_ratio(row["speedup"]),
                _metric(case, row),
                "**yes**" if row["goal_met"] else "no",
                harness.fmt_seconds(row.get("wall_s")),
                harness.fmt(row.get("peak_rss_mb"), ".0f"),
                notes,
            ]
        )
    print("\n" + harness.markdown_table(headers, table, title=f"{name}: auto {' '.join(result['goal'])}"), flush=True)
    reuse = result.get("reuse") or []
    first = result["rows"].get("auto", {}).get("profile_s")
    second = _median(reuse, "profile_s")
    if first and second is not None:
        wall, size = harness.fmt_seconds(_median(reuse, "wall_s")), harness.fmt(_median(reuse, "own_size"), ",.0f")
        print(
            f"\nprofile reuse ({name}): a second study, --max-size {fp32['size'] // 4} --max-drop 1, same folder: "
            f"profiled {harness.fmt_seconds(second)} = {100 * second / first:.1f} % of the first's time; "
            f"wall {wall}, {size} bytes"
        )
    recipe = result["rows"].get("auto", {}).get("recipe")
    if recipe:
        print(f"\nauto's recipe ({name}):\n{recipe}")


def _load() -> str:
    return ", ".join(f"{value:.1f}" for value in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    """Runs the side-by-side comparison, or one anchor when started as ``--child TOOL``."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["--child", "ort"]:
        _child_ort(*argv[2:5])
        return 0
    if argv[:2] == ["--child", "nncf"]:
        _child_nncf(*argv[2:9])
        return 0
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    export.add_arguments(parser)
    parser.add_argument("--models", default=",".join(CASES), help=f"any of {','.join(CASES)}")
    parser.add_argument("--tools", default=",".join(TOOLS), help=f"any of {','.join(TOOLS)}")
    parser.add_argument("--trials", type=int, default=12, help="most trials of each auto run")
    parser.add_argument("--time-budget", help="auto --time-budget for every model (default: per model)")
    parser.add_argument("--repeats", type=int, default=1, help="fresh auto studies per model; medians printed")
    parser.add_argument("--no-reuse", dest="reuse", action="store_false", help="skip the digits profile-reuse run")
    parser.add_argument("--calib-samples", type=int, default=64, help="calibration samples of ppocr_cls and magika")
    parser.add_argument("--bert-seq", type=int, default=32, help="BERT sequence length (2 cores: 128 is 4x slower)")
    parser.add_argument("--bert-calib", type=int, default=8, help="BERT calibration sequences")
    parser.add_argument("--bert-eval", type=int, default=16, help="BERT test sequences")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds each tool may run")
    parser.add_argument("--keep", type=Path, help="keep each model's studies and outputs in DIR/<model>")
    parser.add_argument("--json", type=Path, help="write every number here")
    args = parser.parse_args(argv)
    args.tools = [t for t in args.tools.split(",") if t]
    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in CASES] + [t for t in args.tools if t not in TOOLS]
    if unknown:
        parser.error(f"unknown model or tool: {', '.join(unknown)}")
    settings = f"calibration {args.calib_samples} samples (BERT {args.bert_calib} x seq {args.bert_seq})"
    environment = harness.print_environment(extra_dists=("optuna", "scipy", "nncf"), settings=settings)
    results: dict[str, Any] = {}
    for name in models:
        print(f"{name}: load average {_load()}", flush=True)
        if args.keep is not None:  # the studies, reports and outputs stay for inspection
            work = args.keep / name
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            results[name] = bench_model(name, args, work)
        else:
            with tempfile.TemporaryDirectory(prefix=f"onnxshrink-bench-auto-{name}-") as tmp:
                results[name] = bench_model(name, args, Path(tmp))
        results[name]["load_after"] = os.getloadavg()
        print_table(name, results[name])
        print(f"\nload average after {name}: {_load()}", flush=True)
    if args.json:
        harness.write_json(args.json, {**environment, "models": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
