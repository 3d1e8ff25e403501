"""``onnxshrink auto``: tiny studies on the bundled digits CNN (real passes, real child processes,
a real Optuna journal). Profiles are measured once per module and copied into each study folder,
as a second study on the same model and data reuses them."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import optuna
import pytest
from click.testing import CliRunner

import onnxshrink
from onnxshrink.autotune.goal import Goal, parse_duration, parse_size
from onnxshrink.autotune.recipe import Knobs, candidate_specs, to_toml
from onnxshrink.autotune.study import TrialJournal
from onnxshrink.cli import main
from onnxshrink.spec import load_recipe

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "digits_cnn.onnx"
CALIB = ROOT / "models" / "digits_calib.npz"
EVAL = ROOT / "models" / "digits_test.npz"
INPUT_SIZE = MODEL.stat().st_size


@pytest.fixture(scope="module")
def profiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A study folder whose profile cache holds both knobs (measured once for the module)."""
    folder = tmp_path_factory.mktemp("warm")
    onnxshrink.auto(MODEL, calibration=str(CALIB), evaluation=str(EVAL), max_drop=100.0, study=folder, max_trials=1)
    return folder / "profiles"


def study(tmp_path: Path, profiles: Path, name: str = "study") -> Path:
    folder = tmp_path / name
    shutil.copytree(profiles, folder / "profiles")
    return folder


def _auto(folder: Path, **kwargs: object) -> onnxshrink.AutoResult:
    return onnxshrink.auto(MODEL, calibration=str(CALIB), evaluation=str(EVAL), study=folder, **kwargs)  # type: ignore[arg-type]


def test_parse_size_and_duration() -> None:
    assert parse_size("4MB") == 4_000_000
    assert parse_size("300KB") == 300_000
    assert parse_size("2MiB") == 2 * 1024**2
    assert parse_duration("30m") == 1800.0
    assert parse_duration("90s") == 90.0
    with pytest.raises(onnxshrink.errors.UsageError, match="bad size"):
        parse_size("four megs")


def test_a_measured_value_equal_to_its_limit_meets_it() -> None:
    goal = Goal(max_drop=1.0)
    at_limit = {"drop": 100 * (0.9725 - 0.9625)}  # 1.0000000000000009 in floats
    assert goal.misses(at_limit) == {} and goal.violation(at_limit) == (0.0, 0.0)
    assert "max_drop" in goal.misses({"drop": 1.25})
    assert Goal(min_agreement=0.99).misses({"agreement": 0.99}) == {}


def _trial(number: int, speedup: float, drop: float, goal: Goal) -> dict[str, object]:
    measured = {"size": 200_000, "macs": 10**6, "macs_ratio": 0.5, "speedup": speedup, "drop": drop, "latency_ms": 1.0}
    return {"number": number, "error": None, **measured, "loss": drop, "misses": goal.misses(measured)}


def test_the_nearest_candidate_stays_within_the_budget() -> None:
    from onnxshrink.autotune.result import choose

    # PP-OCR cls, --min-speedup 1.5 --max-drop 1: auto wrote the 1.60x model that lost 11.5 points
    # rather than the 1.13x one within the budget.
    goal = Goal(min_speedup=1.5, max_drop=1.0)
    fast, slow, middle = _trial(0, 1.60, 11.5, goal), _trial(1, 1.13, 0.25, goal), _trial(2, 1.45, 4.5, goal)
    chosen, feasible = choose(goal, [fast, slow, middle], "latency")
    assert chosen is slow and not feasible
    assert chosen["misses"] == {"min_speedup": "speedup 1.130x is 0.370x short of --min-speedup 1.5x"}
    nearer = _trial(3, 1.30, 1.0, goal)  # also within the budget (at its limit), less short of the target
    assert choose(goal, [fast, slow, middle, nearer], "latency")[0] is nearer
    # Nothing within the budget: the one that goes least past it, whatever its speed.
    chosen, _ = choose(goal, [fast, middle], "latency")
    assert chosen is middle
    assert chosen["misses"]["max_drop"] == "drop 4.5000 points is 3.5000 points past --max-drop 1.0 points"
    met = _trial(4, 1.55, 0.5, goal)
    assert choose(goal, [fast, slow, met], "latency") == (met, True)


def test_max_drop_without_target_minimizes_size(tmp_path: Path, profiles: Path) -> None:
    result = _auto(study(tmp_path, profiles), max_drop=1.0, max_trials=3, search="int8")
    assert result.feasible and result.misses == {}
    chosen = result.report["trials"][result.report["chosen"]["trial"]]
    assert chosen["drop"] <= 1.0
    assert chosen["size"] < INPUT_SIZE / 3  # int8 weights
    assert result.report["profile"]["cached"] == ["precision"]  # the profile came from the cache
    assert all(t["seconds"] > 0 and "settings" in t and "specs" in t for t in result.trials)
    assert result.front and all({"size", "macs", "damage", "settings"} <= set(p) for p in result.front)
    out = result.save(tmp_path / "best.onnx")
    onnx.checker.check_model(onnx.load(out))
    result.best.save(tmp_path / "again.onnx")  # the ShrinkResult saves the same bytes
    assert (tmp_path / "again.onnx").read_bytes() == out.read_bytes()


@pytest.mark.parametrize(
    ("target", "budget", "search"),
    [
        ({"max_size": "120KB"}, {"max_drop": 1.0}, "int8"),
        ({"max_macs": 0.95}, {"min_agreement": 0.9}, "channels"),
        ({"min_speedup": 0.2}, {"min_cosine": 0.99}, "int8"),
    ],
)
def test_each_target_and_budget_kind(
    tmp_path: Path, profiles: Path, target: dict[str, object], budget: dict[str, float], search: str
) -> None:
    result = _auto(study(tmp_path, profiles), **target, **budget, max_trials=1, search=search)
    assert result.feasible, result.misses
    chosen = result.report["trials"][result.report["chosen"]["trial"]]
    if "max_size" in target:
        assert chosen["size"] <= 120_000
    if "max_macs" in target:
        assert chosen["macs_ratio"] <= 0.95
    if "min_speedup" in target:
        assert chosen["speedup"] >= 0.2 and chosen["latency_ms"] > 0
        assert result.report["profile"]["latency_ms"] > 0  # the latency table was measured
    if "min_agreement" in budget:
        assert chosen["agreement"] >= 0.9
    if "min_cosine" in budget:
        assert chosen["cosine"] >= 0.99


def test_infeasible_writes_the_nearest_and_exits_1(tmp_path: Path, profiles: Path) -> None:
    out = tmp_path / "out.onnx"
    args = ["auto", str(MODEL), "-o", str(out), "--calib", str(CALIB), "--eval", str(EVAL)]
    args += ["--max-size", "1KB", "--max-drop", "1", "--trials", "1", "--search", "int8"]
    args += ["--report", str(tmp_path / "report.html")]
    result = CliRunner().invoke(main, [*args, "--study", str(study(tmp_path, profiles))])
    assert result.exit_code == 1, result.output
    assert "wrote the nearest to it (trial 1): size" in result.output and "B over --max-size 1000 B" in result.output
    assert out.is_file() and out.with_suffix(".toml").is_file()
    page = (tmp_path / "report.html").read_text()
    assert "misses: size" in page and page.count('<tr class="chosen">') == 1 and "<svg" in page


def test_an_unreachable_target_keeps_the_accuracy_budget(tmp_path: Path, profiles: Path) -> None:
    # The summed relative violation weighed bytes over the target against points of accuracy:
    # a 28 KB model losing many points was "nearer" to 1 KB than the int8 model within the budget.
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    args = ["auto", str(MODEL), "-o", str(out), "--calib", str(CALIB), "--eval", str(EVAL), "--report", str(report)]
    args += ["--max-size", "1KB", "--max-drop", "1", "--trials", "3", "--study", str(study(tmp_path, profiles))]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    data = json.loads(report.read_text())
    trials, chosen = data["trials"], data["trials"][data["chosen"]["trial"]]
    assert any(t["error"] is None and "max_drop" in t["misses"] for t in trials)  # a smaller one lost too much
    within = [t for t in trials if t["error"] is None and "max_drop" not in t["misses"]]
    assert chosen["drop"] <= 1.0 and chosen["size"] == min(t["size"] for t in within)
    over = chosen["size"] - 1000
    expected = f"wrote the nearest to it (trial {chosen['number'] + 1}): size {chosen['size']} B is {over} B over"
    assert expected in result.output, result.output


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    base = ["auto", str(MODEL), "-o", str(tmp_path / "o.onnx"), "--calib", str(CALIB), "--eval", str(EVAL)]
    assert CliRunner().invoke(main, base).exit_code == 2  # neither target nor budget
    assert CliRunner().invoke(main, [*base, "--max-drop", "1", "--resume"]).exit_code == 2
    assert CliRunner().invoke(main, [*base, "--max-drop", "1", "--search", "int3"]).exit_code == 2
    sparse = CliRunner().invoke(main, [*base, "--max-drop", "1", "--search", "int8,sparsity,nm"])
    assert (
        sparse.exit_code == 2
        and "--search sparsity,nm: not a knob of auto: unstructured sparsity (prune) and 2:4" in sparse.output
    )
    assert "so no target can reward them" in sparse.output and sparse.output.count("\n") == 1
    bad_address = CliRunner().invoke(main, [*base, "--max-drop", "1", "--executor", "ray", "--ray-address", "nowhere"])
    assert bad_address.exit_code == 2 and "--ray-address nowhere" in bad_address.output
    unlabelled = tmp_path / "unlabelled.npz"
    np.savez(unlabelled, input=np.load(EVAL)["input"])
    args = ["auto", str(MODEL), "-o", str(tmp_path / "o.onnx"), "--calib", str(CALIB), "--eval", str(unlabelled)]
    result = CliRunner().invoke(main, [*args, "--max-drop", "1"])
    assert result.exit_code == 2 and "labels" in result.output


def test_recipe_rebuilds_the_model_byte_for_byte(tmp_path: Path, profiles: Path) -> None:
    out = tmp_path / "out.onnx"
    args = ["auto", str(MODEL), "-o", str(out), "--calib", str(CALIB), "--eval", str(EVAL), "--max-size", "60KB"]
    args += ["--max-drop", "5", "--trials", "1", "--study", str(study(tmp_path, profiles))]
    result = CliRunner().invoke(main, args)
    assert result.exit_code in (0, 1), result.output
    recipe = out.with_suffix(".toml")
    assert "prune-channels" in recipe.read_text() and "quantize" in recipe.read_text()
    again = tmp_path / "again.onnx"
    run = ["run", str(MODEL), "--recipe", str(recipe), "--calib", str(CALIB), "-o", str(again), "--no-verify"]
    rebuilt = CliRunner().invoke(main, run)
    assert rebuilt.exit_code == 0, rebuilt.output
    assert again.read_bytes() == out.read_bytes()


def test_recipe_round_trips_per_group_and_per_layer_settings(tmp_path: Path, profiles: Path) -> None:
    result = _auto(study(tmp_path, profiles), max_drop=100.0, max_trials=1)
    units = result.report["profile"]["units"]
    assert {u["knob"] for u in units} == {"channels", "precision"}
    from onnxshrink.autotune.profile import Unit

    parsed = [Unit.from_json(u) for u in units]
    choice = [len(u.settings) - 1 if i % 2 == 0 else 0 for i, u in enumerate(parsed)]
    specs = candidate_specs(parsed, choice, Knobs(calibrate="percentile", reconstruct=True, percentile=99.9))
    path = tmp_path / "r.toml"
    path.write_text(to_toml(specs, ["a comment"]))
    assert load_recipe(path) == specs
    assert any(s.name == "quantize" and s.options.get("percentile") == 99.9 for s in specs)


def _write_metric(folder: Path, body: str) -> str:
    """A metric module named after its folder: the driver imports a module name once per process."""
    folder.mkdir(parents=True, exist_ok=True)
    module = f"metric_{folder.name}"
    (folder / f"{module}.py").write_text(body)
    sys.path.insert(0, str(folder))
    return f"{module}:score"


_ACCURACY = """
import numpy as np
import onnxruntime as ort

def accuracy(path, samples):
    data = samples.take()
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": data["input"]})[0]
    per_sample = (logits.argmax(axis=1) == data["labels"]).astype(float)
    return float(per_sample.mean()), per_sample
"""


def test_user_metric_hook(tmp_path: Path, profiles: Path) -> None:
    metric = _write_metric(tmp_path / "m1", _ACCURACY + "\nscore = accuracy\n")
    result = _auto(study(tmp_path, profiles), metric=metric, max_drop=0.01, max_trials=2, search="int8")
    chosen = result.report["trials"][result.report["chosen"]["trial"]]
    assert 0.5 < chosen["score_reference"] <= 1.0
    assert chosen["drop"] == pytest.approx(chosen["score_reference"] - chosen["score"])
    assert chosen["drop"] <= 0.01


_FACTORY_METRIC = """
import json
import numpy as np

def score(session_factory, samples):
    session = session_factory()
    with open(LOG, "a") as log:
        threads = session.get_session_options().intra_op_num_threads
        log.write(json.dumps([type(session).__name__, session.get_providers()[0], threads]) + "\\n")
    data = samples.take()
    logits = session.run(None, {"input": data["input"]})[0]
    per_sample = (logits.argmax(axis=1) == data["labels"]).astype(float)
    return float(per_sample.mean()), per_sample
"""


def test_a_metric_taking_a_session_factory(tmp_path: Path, profiles: Path) -> None:
    """A first parameter named session_factory gets sessions: the study's provider, each trial's thread cap."""
    log = tmp_path / "calls.jsonl"
    folder = tmp_path / "m3"
    folder.mkdir()
    (folder / "factory_metric.py").write_text(f"LOG = {str(log)!r}\n" + _FACTORY_METRIC)
    sys.path.insert(0, str(folder))
    metric = "factory_metric:score"  # a module name of its own: the driver imports a module once
    result = _auto(study(tmp_path, profiles), metric=metric, max_drop=0.01, max_trials=2, search="int8", workers=2)
    chosen = result.report["trials"][result.report["chosen"]["trial"]]
    assert 0.5 < chosen["score_reference"] <= 1.0 and chosen["drop"] <= 0.01
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(calls) == 1 + len(result.trials)  # the input model, then each trial
    assert all(kind == "InferenceSession" and provider == "CPUExecutionProvider" for kind, provider, _ in calls)
    share = max(1, len(os.sched_getaffinity(0)) // 2)
    assert calls[0][2] == 0 and all(threads == share for _, _, threads in calls[1:])  # two workers: half the cores each


def test_a_raising_metric_is_a_failed_trial(tmp_path: Path, profiles: Path) -> None:
    marker = tmp_path / "raised"
    body = (
        _ACCURACY
        + f"""
from pathlib import Path

def score(path, samples):
    if Path(path).name != "digits_cnn.onnx" and not Path({str(marker)!r}).exists():
        Path({str(marker)!r}).touch()
        raise RuntimeError("metric exploded")
    return accuracy(path, samples)
"""
    )
    metric = _write_metric(tmp_path / "m2", body)
    folder = study(tmp_path, profiles)
    result = _auto(folder, metric=metric, max_drop=0.05, max_trials=3, search="int8")
    assert result.trials[0]["error"] == "RuntimeError: metric exploded"
    assert result.feasible and any(t["error"] is None for t in result.trials)
    journal = TrialJournal(folder, result.report["study"]["name"], resume=True)
    states = [t.state for t in journal.study.get_trials()]
    assert optuna.trial.TrialState.FAIL in states and optuna.trial.TrialState.COMPLETE in states


def test_same_seed_same_recipe(tmp_path: Path, profiles: Path) -> None:
    first = _auto(study(tmp_path, profiles, "a"), max_drop=1.0, max_trials=3, search="int8", seed=3)
    second = _auto(study(tmp_path, profiles, "b"), max_drop=1.0, max_trials=3, search="int8", seed=3)
    assert first.recipe == second.recipe
    assert [t["key"] for t in first.trials] == [t["key"] for t in second.trials]


def test_resume_after_kill_runs_no_finished_trial_twice(tmp_path: Path, profiles: Path) -> None:
    folder = study(tmp_path, profiles)
    args = [sys.executable, "-m", "onnxshrink.cli", "-v", "auto", str(MODEL), "-o", str(tmp_path / "o.onnx")]
    args += ["--calib", str(CALIB), "--eval", str(EVAL), "--max-drop", "0.5", "--search", "int8"]
    args += ["--trials", "6", "--seed", "1", "--study", str(folder)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list((folder / "trials").glob("*.onnx"))) < 2:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    before = _finished_keys(folder)
    assert before, "the study was killed before any trial finished"
    result = subprocess.run([*args, "--resume"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "(from the journal)" in result.stderr
    after = _finished_keys(folder)
    assert len(after) == len(set(after))  # no finished trial ran twice
    assert set(before) <= set(after) and len(after) > len(before)


def _study(folder: Path) -> optuna.Study:
    """The one study in the folder's journal."""
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(folder / "journal.log")))
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage)


def _finished_keys(folder: Path) -> list[str]:
    trials = _study(folder).get_trials()
    return [t.user_attrs["record"]["key"] for t in trials if t.state == optuna.trial.TrialState.COMPLETE]


def test_readme_auto_command_runs(tmp_path: Path) -> None:
    text = (ROOT / "README.md").read_text().replace("\\\n", " ")
    (command,) = [c for c in re.findall(r"^\$ (onnxshrink auto .+)$", text, flags=re.MULTILINE)]
    args = shlex.split(command.replace("/tmp/", f"{tmp_path}/"))[1:]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "auto.json").read_text())
    assert {"goal", "profile", "front", "trials", "chosen", "recipe"} <= set(report)
    assert (tmp_path / "auto.onnx").stat().st_size <= 60_000
    assert (tmp_path / "study" / "best.toml").read_text() == (tmp_path / "auto.toml").read_text()


@pytest.mark.parametrize(
    ("limits", "why"),
    [({"trial_timeout": 0.01}, "timed out after"), ({"trial_memory": 64 * 1024**2}, "")],
)
def test_a_trial_past_its_limits_is_a_failed_trial(
    tmp_path: Path, profiles: Path, limits: dict[str, float], why: str
) -> None:
    folder = study(tmp_path, profiles)
    with pytest.raises(onnxshrink.errors.VerificationError, match=f"every trial failed.*{why}"):
        _auto(folder, max_drop=1.0, max_trials=2, search="int8", **limits)
    failed = [t for t in _study(folder).get_trials() if t.state == optuna.trial.TrialState.FAIL]
    assert failed and all(t.user_attrs["record"]["error"] for t in failed)


def test_a_model_proto_without_study_folder_and_a_time_budget(tmp_path: Path) -> None:
    result = onnxshrink.auto(
        onnx.load(MODEL),
        calibration=str(CALIB),
        evaluation=str(EVAL),
        max_drop=1.0,
        search="int8",
        time_budget="0s",  # no trial starts after the first
    )
    assert len(result.trials) == 1 and result.report["study"]["folder"] is None
    saved = result.save(tmp_path / "m.onnx")
    assert saved.read_bytes() == result.model_file.read_bytes()


def test_progress_line_names_the_trial_the_best_so_far_and_time_left() -> None:
    from onnxshrink.cli.auto import _trial_line

    trial = {"number": 2, "size": 40_000, "macs_ratio": 0.5, "loss": 0.25, "misses": {}, "seconds": 1.5}
    status = {"trial": trial, "max_trials": 12, "best": trial, "feasible": True, "seconds_left": 30.0}
    line = _trial_line(status)
    assert line.startswith("trial 3/12: 40.0 KB") and "best so far: trial 3" in line and "30 s left" in line
    failed = {**status, "trial": {**trial, "error": "RuntimeError: boom"}, "best": None, "seconds_left": None}
    assert _trial_line(failed) == "trial 3/12: failed: RuntimeError: boom [1.5 s]"


def test_two_workers_build_candidates_side_by_side(tmp_path: Path, profiles: Path) -> None:
    result = _auto(study(tmp_path, profiles), max_drop=1.0, max_trials=4, search="int8", workers=2)
    assert result.feasible and 2 <= len(result.trials) <= 4
    assert len({t["key"] for t in result.trials}) == len(result.trials)
    assert [t["number"] for t in result.trials] == list(range(len(result.trials)))


def test_per_group_ratios_option_of_prune_channels() -> None:
    from onnxshrink.spec import parse_spec

    spec = parse_spec("prune-channels:ratio=0,ratios=/conv3/conv3.0/Conv:0.5,/nowhere:0.25")
    assert spec.options["ratios"] == {"/conv3/conv3.0/Conv": 0.5, "/nowhere": 0.25}
    assert str(spec) == "prune-channels:ratio=0.0,ratios=/conv3/conv3.0/Conv:0.5,/nowhere:0.25"
    result = onnxshrink.shrink(str(MODEL), ["simplify", spec], verify=False)
    stats = result.report["passes"][-1]["stats"]
    changed = {label: entry for label, entry in stats["channels"].items() if entry["before"] != entry["after"]}
    assert changed == {"Conv '/conv3/conv3.0/Conv'": {"before": 32, "after": 16}}
    assert stats["skipped"]["ratios '/nowhere'"] == "names no channel group's producer"
    for bad, message in (
        ("ratios=/a:1.5", "ratio of '/a' must be >= 0 and < 1"),
        ("ratios=/a", "expected NAME:VALUE"),
        ("ratios=/a:x", "expected float"),
        ("ratios=/a:0.5,scope=global", "use scope=layer"),
    ):
        with pytest.raises(onnxshrink.errors.UsageError, match=message):
            parse_spec(f"prune-channels:{bad}")


def test_agreement_on_a_model_without_classes_is_a_usage_error(tmp_path: Path) -> None:
    model = onnx.parser.parse_model(
        """<ir_version: 8, opset_import: ["" : 17]>
        regress (float[N, 4] x) => (float[N, 1] y)
        <float[4, 1] w = {1.0, 2.0, 3.0, 4.0}> { y = MatMul(x, w) }"""
    )
    path, data = tmp_path / "regress.onnx", tmp_path / "x.npz"
    onnx.save(model, path)
    np.savez(data, x=np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32))
    args = ["auto", str(path), "-o", str(tmp_path / "o.onnx"), "--calib", str(data), "--eval", str(data)]
    result = CliRunner().invoke(main, [*args, "--min-agreement", "0.9"])
    assert result.exit_code == 2 and "classifier-like" in result.output


def test_the_time_budget_bounds_the_profile(tmp_path: Path) -> None:
    # A study used to measure its whole profile whatever --time-budget said (hours on BERT-base);
    # the serial profile now stops at its share of the budget and caches no knob it cut short.
    folder = tmp_path / "study"
    result = _auto(folder, max_drop=1.0, time_budget="0s")
    unmeasured = result.report["profile"]["unmeasured"]
    assert set(unmeasured) == {"channels", "precision"}
    assert "/stem/stem.0/Conv" in unmeasured["precision"] and result.report["profile"]["units"] == []
    assert not list((folder / "profiles").glob("*.json"))
    assert len(result.trials) == 1 and result.trials[0]["error"] is None
    again = _auto(tmp_path / "again", max_drop=1.0, search="int8", max_trials=1)
    assert again.report["profile"]["unmeasured"] == {} and again.report["profile"]["units"]


def test_timing_plan_fits_slow_models_into_a_few_seconds() -> None:
    from onnxshrink.latency import timing_plan

    # The profile's plan (9 rounds of 5 runs, about 2 s per setting for two models).
    assert timing_plan(0.001, models=2, rounds=9, runs=5, budget=2.0) == (9, 5)  # a millisecond model: all of it
    assert timing_plan(0.05, models=2, rounds=9, runs=5, budget=2.0) == (9, 2)
    assert timing_plan(1.7, models=2, rounds=9, runs=5, budget=2.0) == (3, 1)  # BERT-base, batch 8: 6 runs, not 90
    assert timing_plan(1.7, models=2, rounds=15, runs=3, budget=5.0, least_rounds=5) == (5, 1)


def test_whole_model_int8_is_tried_when_no_allocation_meets_the_goal(tmp_path: Path, profiles: Path) -> None:
    # On BERT-base a 20-minute budget profiled 3 of 97 layers, no allocation reached 2x, and auto
    # wrote a 1.01x model while plain `simplify -> quantize` ran 2.87x faster within the budget.
    result = _auto(study(tmp_path, profiles), max_size=5_000, max_drop=1.0, max_trials=3)  # out of reach
    uniform = [t for t in result.trials if t["phase"] == "uniform"]
    assert len(uniform) == 1 and uniform[0]["error"] is None and uniform[0]["front_index"] is None
    assert [s["name"] for s in uniform[0]["specs"]] == ["simplify", "quantize"]
    no_int8 = {
        u["name"] for u in result.report["profile"]["units"] if "int8" not in [s["value"] for s in u["settings"]]
    }
    assert set(uniform[0]["specs"][1]["options"]["exclude"]) <= no_int8  # only layers that have no int8 kept float
    assert not result.feasible and "max_size" in result.misses
    feasible = _auto(study(tmp_path, profiles, "easy"), max_size=INPUT_SIZE // 2, max_drop=1.0, search="int8")
    assert feasible.feasible and not any(t["phase"] == "uniform" for t in feasible.trials)
