"""``onnxshrink.auto``: name a target and an accuracy budget, get the best model found.

Orchestration: resolve the inputs into files a trial's child process can read, simplify the model,
profile it (or read the cached profile), search, and put the chosen trial, its recipe and the
report together.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from onnxshrink._version import __version__
from onnxshrink.api import ShrinkResult, shrink
from onnxshrink.autotune.goal import Goal, parse_duration, parse_size
from onnxshrink.autotune.items import ItemMeasure
from onnxshrink.autotune.measure import load_metric, score
from onnxshrink.autotune.profile import INT4_BLOCK, INT4_BLOCKS, KNOBS, profile
from onnxshrink.autotune.recipe import to_toml
from onnxshrink.autotune.result import AutoResult, choose
from onnxshrink.autotune.search import Search, Settings
from onnxshrink.autotune.study import TrialJournal
from onnxshrink.autotune.trials import default_memory_bytes
from onnxshrink.data.readers import open_samples
from onnxshrink.data.samples import Feed
from onnxshrink.errors import UsageError, VerificationError
from onnxshrink.executors import Executor, check_executor_options, make_executor
from onnxshrink.inspect.summary import inspect_model
from onnxshrink.loading import load_model
from onnxshrink.runtime import create_session, run
from onnxshrink.spec import make_spec
from onnxshrink.verify import is_classifier_like

logger = logging.getLogger(__name__)

DEFAULT_TRIALS = 12
_CALIBRATION_KEPT = 1024  # samples written for a child when calibration is not a file
_PROFILE_SHARE = 0.5  # of --time-budget, for measuring the profile (serial); the trials get the rest


def _model_file(model: Any, folder: Path) -> str:
    if isinstance(model, (str, os.PathLike)):
        if not Path(model).is_file():
            raise UsageError(f"model file not found: {model}")
        return str(Path(model).resolve())
    path = folder / "input.onnx"
    if isinstance(model, onnx.ModelProto):
        onnx.save(model, path)
    elif isinstance(model, ir.Model):
        ir.save(model, path)
    else:
        raise UsageError(
            f"auto reads a model from a path, onnx.ModelProto or onnx_ir.Model, not {type(model).__name__}"
        )
    return str(path)


def _data_source(data: Any, folder: Path, name: str, role: str, count: int | None) -> str:
    """A path or ``module:attribute`` a child process can open; arrays and readers are written to npz."""
    if isinstance(data, (str, os.PathLike)):
        text = str(data)
        return str(Path(text).resolve()) if Path(text).exists() else text
    samples = open_samples(data, role="inputs" if role == "evaluation" else "calibration")
    path = folder / f"{name}.npz"
    arrays: dict[str, Any] = samples.take(count)
    np.savez(path, **arrays)
    return str(path)


def _require_classifier(model_file: str, feed: Feed, provider: str) -> None:
    """Top-1 agreement and accuracy need a classifier-like output (float, last axis 2..100k classes).

    Raises:
        UsageError: No output of the input model is one.
    """
    session, _ = create_session(model_file, provider)
    first = {name: value[:1] for name, value in feed.arrays.items()}
    outputs = run(session, first)
    if not any(isinstance(v, np.ndarray) and is_classifier_like(v) for v in outputs.values()):
        raise UsageError(
            "--max-drop and --min-agreement compare top-1 classes, but no output of the model is "
            "classifier-like; use --min-cosine, or --metric with --max-drop"
        )


def _int4_blocks(goal: Goal) -> tuple[int, ...]:
    """The 4-bit block lengths to profile: several where bytes are what the search trades, else the default.

    Bytes are the primary cost with ``--max-size``, and with no target at all (the front is swept
    in bytes); a MACs or speed target leaves a longer block nothing to gain.
    """
    if goal.max_size is not None or (goal.max_macs is None and goal.min_speedup is None):
        return INT4_BLOCKS
    return (INT4_BLOCK,)


def _study_name(model: str, goal: Goal, knobs: Sequence[str], seed: int, data: Sequence[str | None]) -> str:
    digest = hashlib.sha256(Path(model).read_bytes())
    digest.update(json.dumps([goal.to_json(), list(knobs), seed, list(data)], sort_keys=True, default=str).encode())
    return f"auto-{digest.hexdigest()[:16]}"


# Knobs a user may expect (the passes have them) that no target of auto rewards, and why.
_UNREWARDED = {
    "sparsity": "unstructured sparsity (prune)",
    "nm": "2:4 sparsity (prune:pattern=2:4)",
}


def _knobs(search: Sequence[str] | str | None) -> list[str]:
    """The knobs ``--search`` names (all of them when None).

    Raises:
        UsageError: A name is not a knob of auto; sparsity and 2:4 with the reason they are not.
    """
    if search is None:
        return list(KNOBS)
    names = [s.strip() for s in (search.split(",") if isinstance(search, str) else search) if s.strip()]
    unrewarded = [n for n in names if n in _UNREWARDED]
    if unrewarded:
        what = " and ".join(_UNREWARDED[n] for n in unrewarded)
        raise UsageError(
            f"--search {','.join(unrewarded)}: not a knob of auto: {what} leave the saved bytes, the MACs and "
            "onnxruntime's CPU latency as they are, so no target can reward them (sparse kernels such as "
            f"TensorRT's 2:4 would); prune with 'onnxshrink run -p prune'; auto searches {', '.join(KNOBS)}"
        )
    unknown = [n for n in names if n not in KNOBS]
    if unknown or not names:
        valid = ", ".join(KNOBS)
        raise UsageError(f"--search: {', '.join(unknown) or 'nothing'} is not a knob of auto; valid: {valid}")
    return names


def auto(
    model: str | os.PathLike[str] | onnx.ModelProto | ir.Model,
    *,
    calibration: Any,
    evaluation: Any,
    max_size: int | str | None = None,
    max_macs: float | None = None,
    min_speedup: float | None = None,
    max_drop: float | None = None,
    min_agreement: float | None = None,
    min_cosine: float | None = None,
    metric: str | Callable[[str, Any], Any] | None = None,
    time_budget: float | str | None = None,
    study: str | os.PathLike[str] | None = None,
    resume: bool = False,
    workers: int = 1,
    executor: str | Executor = "local",
    ray_address: str = "auto",
    gpus_per_worker: float | None = None,
    seed: int = 0,
    provider: str = "cpu",
    batch: int = 1,
    search: Sequence[str] | str | None = None,
    max_trials: int = DEFAULT_TRIALS,
    trial_timeout: float = 600.0,
    trial_memory: int | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> AutoResult:
    """Searches channel pruning and int8/int4 placement for the best model meeting a target and budget.

    Args:
        model: A path, ``onnx.ModelProto`` or ``onnx_ir.Model``.
        calibration: Calibration data (as for :func:`onnxshrink.shrink`).
        evaluation: Evaluation data: an npz (with ``labels`` for ``max_drop``) or arrays.
        max_size: Bytes of the saved model (``"4MB"``, ``"300KB"`` or an int).
        max_macs: MACs as a fraction of the input's.
        min_speedup: Latency speedup on ``provider`` at ``batch``.
        max_drop: Accuracy drop in points (or of ``metric``'s score).
        min_agreement: Budget: top-1 agreement with the input model.
        min_cosine: Budget: smallest output cosine similarity with the input model.
        metric: ``module:function`` (or a module-level function) called as ``f(model_path, samples)``,
            or as ``f(session_factory, samples)`` when its first parameter is named
            ``session_factory`` (a zero-argument callable returning an ``onnxruntime.InferenceSession``
            of the candidate on ``provider``, with the trial's thread cap); returns a score or
            ``(score, per_sample_scores)``; higher is better.
        time_budget: Seconds (or ``"30m"``) after which no new trial starts.
        study: Folder for the profile cache and trial journal (a temporary one when None).
        resume: Continue the study's journal instead of starting it over.
        workers: Trials built (and profile items measured) at a time: local processes, or Ray workers.
        executor: Where profile items and trials run: ``local`` (processes on this machine), ``ray``
            (a Ray cluster, ``pip install 'onnxshrink[ray]'``), or an executor object
            (:mod:`onnxshrink.executors`; the caller closes it).
        ray_address: With ``executor="ray"``: ``auto`` (this machine's cluster), ``HOST:PORT``, or
            ``local`` (start a Ray instance here for this study).
        gpus_per_worker: With ``executor="ray"``: GPUs each worker declares (``num_gpus``; default:
            1 when ``provider`` is ``cuda`` and the cluster has GPUs, else 0).
        seed: Seeds the global-knob search; same inputs and seed give the same recipe.
        provider: Where latency and metrics are measured (``cpu``, ``cuda``, ``auto``).
        batch: The batch size latency is measured at.
        search: Knobs to search (``channels``, ``int8``, ``int4``); all by default.
        max_trials: Most candidates built.
        trial_timeout: Seconds a trial's child process may run.
        trial_memory: Bytes of address space a trial's child process may take (default: physical memory).
        progress: Called as each trial finishes with ``{"trial": record, "done": n, "max_trials": n,
            "best": record or None, "feasible": bool, "seconds_left": float or None}``.

    Raises:
        UsageError: Bad goal, options or data.
        VerificationError: Every trial failed, so there is no model to return.
    """
    started = time.perf_counter()
    goal = Goal(
        max_size=parse_size(max_size) if max_size is not None else None,
        max_macs=max_macs,
        min_speedup=min_speedup,
        max_drop=max_drop,
        min_agreement=min_agreement,
        min_cosine=min_cosine,
        metric=metric if isinstance(metric, str) or metric is None else f"{metric.__module__}:{metric.__name__}",
    )
    goal.check()
    if workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}")
    if isinstance(executor, str):
        check_executor_options(executor, workers, gpus_per_worker, ray_address)
    knobs = _knobs(search)
    budget = parse_duration(time_budget) if time_budget is not None else None
    temporary = tempfile.TemporaryDirectory(prefix="onnxshrink-auto-") if study is None else None
    folder = Path(temporary.name if temporary is not None else study).resolve()  # type: ignore[arg-type]
    folder.mkdir(parents=True, exist_ok=True)
    model_file = _model_file(model, folder)
    calib_source = _data_source(calibration, folder, "calibration", "calibration", _CALIBRATION_KEPT)
    eval_source = _data_source(evaluation, folder, "evaluation", "evaluation", None)
    calib = open_samples(calib_source)
    loaded = load_model(model_file).model
    feed = open_samples(eval_source, role="inputs").feed_for(loaded)
    if goal.max_drop is not None and goal.metric is None and feed.labels is None:
        raise UsageError("--max-drop needs labelled evaluation data (a 'labels' array) or --metric")
    if goal.min_agreement is not None or (goal.max_drop is not None and goal.metric is None):
        _require_classifier(model_file, feed, provider)
    metric_reference = None
    if metric is not None:
        try:
            samples = open_samples(eval_source, role="inputs")
            metric_reference = score(load_metric(metric), model_file, samples, provider)
        except UsageError:
            raise
        except Exception as error:
            raise UsageError(f"--metric failed on the input model: {type(error).__name__}: {error}") from None
    reference_macs = int(inspect_model(loaded)["macs"])
    base = shrink(model_file, [make_spec("simplify", {})], verify=False).model
    timed = batch if goal.min_speedup is not None else None
    runner_executor = (
        make_executor(executor, workers, ray_address, gpus=gpus_per_worker, provider=provider)
        if isinstance(executor, str)
        else executor
    )
    try:
        serial = runner_executor.name == "local" and runner_executor.workers == 1
        measure = None if serial else ItemMeasure(runner_executor)
        # The profile may take half the time budget; the trials get the rest (and at least one runs).
        profile_deadline = (
            time.monotonic() + budget * _PROFILE_SHARE - (time.perf_counter() - started) if budget is not None else None
        )
        measured_profile = profile(
            base,
            calib,
            provider=provider,
            knobs=knobs,
            cache=folder / "profiles",
            batch=timed,
            measure=measure,
            deadline=profile_deadline,
            int4_blocks=_int4_blocks(goal),
        )
        name = _study_name(model_file, goal, knobs, seed, [calib_source, eval_source, provider, str(batch)])
        journal = TrialJournal(folder, name, resume=resume)
        settings = Settings(
            model=model_file,
            calibration=calib_source,
            evaluation=eval_source,
            provider=provider,
            batch=batch,
            seed=seed,
            max_trials=max_trials,
            workers=workers,
            deadline=time.monotonic() + budget - (time.perf_counter() - started)
            if budget is not None
            else float("inf"),
            trial_timeout=trial_timeout,
            trial_memory=trial_memory if trial_memory is not None else default_memory_bytes(),
            reference_macs=reference_macs,
            reference_size=Path(model_file).stat().st_size,
            metric=metric if not isinstance(metric, str) else goal.metric,
            metric_reference=metric_reference,
            folder=folder,
            sys_path=tuple(sys.path),
        )
        runner = Search(goal, measured_profile, settings, journal, progress, runner_executor)
        runner.structure()
        runner.knobs()
        result = _result(runner, name, started, temporary)
        result.report["search"] = {
            "knobs": knobs,
            "seed": seed,
            "workers": workers,
            "max_trials": max_trials,
            "executor": runner_executor.name,
        }
    finally:
        if isinstance(executor, str):
            runner_executor.close()
    return result


def _result(runner: Search, name: str, started: float, temporary: Any) -> AutoResult:
    """The chosen trial (or the nearest), its recipe (also ``best.toml`` in the study) and the report.

    Raises:
        VerificationError: No trial produced a model.
    """
    goal, settings, measured_profile = runner.goal, runner.settings, runner.profile
    chosen, feasible = choose(goal, runner.trials, runner.primary)
    if chosen is None:
        first = next((t["error"] for t in runner.trials if t.get("error")), "no trial ran")
        raise VerificationError(f"auto: every trial failed, nothing written; first error: {first}")
    model_path = Path(chosen["model"])
    if not model_path.is_file():  # a resumed study whose trial files were removed
        raise VerificationError(f"auto: the chosen trial's model {model_path} is missing; rerun without --resume")
    specs = [make_spec(s["name"], s["options"]) for s in chosen["specs"]]
    header = [
        f"onnxshrink {__version__} auto: trial {chosen['number']} of study {name}",
        f"rebuild: onnxshrink run MODEL --recipe THIS.toml --calib {settings.calibration} -o OUT",
    ]
    recipe = to_toml(specs, header)
    (settings.folder / "best.toml").write_text(recipe, encoding="utf-8")
    front = runner.front_json()
    report: dict[str, Any] = {
        "onnxshrink_version": __version__,
        "input": {"path": settings.model, "size": settings.reference_size, "macs": settings.reference_macs},
        "goal": goal.to_json(),
        "provider": settings.provider,
        "batch": settings.batch,
        "study": {"folder": str(settings.folder) if temporary is None else None, "name": name},
        "profile": measured_profile.to_json(),
        "front": front,
        "trials": runner.trials,
        "chosen": {
            "trial": chosen["number"],
            "feasible": feasible,
            "misses": chosen.get("misses", {}),
            "settings": chosen["settings"],
            "knobs": chosen["knobs"],
            "specs": chosen["specs"],
        },
        "output": None,
        "seconds": {"total": time.perf_counter() - started, "profile": measured_profile.seconds},
    }
    best_report = {"pipeline": chosen["specs"], "trial": chosen, "output": {"path": None, "bytes": chosen["size"]}}
    return AutoResult(
        best=ShrinkResult(load_model(model_path).model, best_report),
        feasible=feasible,
        misses=dict(chosen.get("misses", {})),
        front=front,
        trials=runner.trials,
        recipe=recipe,
        report=report,
        model_file=model_path,
        temporary=temporary,
    )
