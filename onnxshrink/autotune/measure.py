"""One candidate, built and measured.

The passes run, the model is saved, then its size, MACs, latency and accuracy on the evaluation
data are measured. This runs inside a trial's child process
(:mod:`onnxshrink.autotune.trials`), so everything it takes and returns is plain data.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from onnxshrink.api import shrink
from onnxshrink.data.readers import open_samples
from onnxshrink.data.samples import Samples
from onnxshrink.errors import UsageError
from onnxshrink.inspect.summary import inspect_model
from onnxshrink.latency import interleaved_latency, one_run_seconds, timing_plan
from onnxshrink.runtime import cap_threads, create_session, run
from onnxshrink.spec import make_spec
from onnxshrink.verify import verify

Metric = Callable[[Any, Samples], Any]
_LATENCY_ROUNDS, _LATENCY_RUNS = 15, 3
_LATENCY_SECONDS = 5.0  # the timing aims at this: a slow model gets fewer rounds (at least 5) and runs


@dataclasses.dataclass(frozen=True)
class Job:
    """What a child process needs to build and measure one candidate (picklable)."""

    model: str
    specs: tuple[dict[str, Any], ...]
    output: str
    calibration: str | None
    evaluation: str
    provider: str
    reference_macs: int
    metric: str | Metric | None = None
    metric_reference: float | None = None
    speed_batch: int | None = None
    sys_path: tuple[str, ...] = ()
    threads: int | None = None  # onnxruntime intra-op threads of every session (None: its default)


@dataclasses.dataclass(frozen=True)
class SessionFactory:
    """What a metric whose first parameter is named ``session_factory`` receives instead of a path.

    Calling it returns an ``onnxruntime.InferenceSession`` of the candidate on the study's
    provider (``auto``: CUDA when it can run, else CPU), with the trial's thread cap.

    Attributes:
        path: The candidate's model file.
        provider: ``cpu``, ``cuda`` or ``auto``.
    """

    path: str
    provider: str

    def __call__(self) -> Any:
        """A new session of the candidate."""
        return create_session(self.path, self.provider)[0]


def load_metric(metric: str | Metric) -> Metric:
    """The user's metric function from ``module:function`` (a callable is returned as is).

    Raises:
        UsageError: The module or function cannot be found.
    """
    if callable(metric):
        return metric
    module_name, colon, attribute = metric.partition(":")
    if not colon or not module_name or not attribute:
        raise UsageError(f"bad --metric '{metric}'; expected module:function")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")  # a module in the working directory, as for calibration readers
    try:
        function = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise UsageError(f"cannot import --metric '{metric}': {error}") from None
    if not callable(function):
        raise UsageError(f"--metric '{metric}' is not a function")
    return function


def takes_session_factory(metric: Metric) -> bool:
    """Whether the metric's first parameter is named ``session_factory`` (else it takes a model path)."""
    try:
        parameters = list(inspect.signature(metric).parameters)
    except (TypeError, ValueError):  # builtins and some C callables have no signature
        return False
    return bool(parameters) and parameters[0] == "session_factory"


def score(metric: Metric, model_path: str, data: Samples, provider: str = "cpu") -> float:
    """The metric's score of a model: a number, or ``(score, per_sample_scores)``.

    The metric gets ``(model_path, data)``, or ``(SessionFactory(model_path, provider), data)``
    when its first parameter is named ``session_factory``.
    """
    source = SessionFactory(model_path, provider) if takes_session_factory(metric) else model_path
    value = metric(source, data)
    if isinstance(value, tuple):
        value = value[0]
    number = float(value)
    if not np.isfinite(number):
        raise ValueError(f"metric returned {number}")
    return number


def _speedup(reference: str, candidate: str, data: Samples, provider: str, batch: int) -> dict[str, float]:
    """Median latency of both models on the first ``batch`` evaluation samples, timed interleaved, and the speedup."""
    ref_session, choice = create_session(reference, provider)
    cand_session, _ = create_session(candidate, "cuda" if choice.used.startswith("CUDA") else "cpu")
    names = [i.name for i in ref_session.get_inputs()]
    arrays = data.take(batch)
    if min(len(arrays[n]) for n in names) < batch:  # fewer samples than the batch: repeat them
        arrays = {n: np.resize(arrays[n], (batch, *arrays[n].shape[1:])) for n in names}
    feed = {n: arrays[n][:batch] for n in names}
    rounds, runs = timing_plan(
        one_run_seconds(lambda: run(ref_session, feed)),
        models=2,
        rounds=_LATENCY_ROUNDS,
        runs=_LATENCY_RUNS,
        budget=_LATENCY_SECONDS,
        least_rounds=5,
    )
    times = interleaved_latency(
        {"reference": lambda: run(ref_session, feed), "candidate": lambda: run(cand_session, feed)},
        rounds=rounds,
        runs_per_round=runs,
        warmup=2,
    )
    ref_ms, cand_ms = statistics.median(times["reference"]), statistics.median(times["candidate"])
    # Each round times both models back to back: the median of the rounds' ratios is steadier
    # on a busy machine than the ratio of the medians (load that changes between rounds cancels).
    ratios = [r / c for r, c in zip(times["reference"], times["candidate"], strict=True) if c > 0]
    speedup = statistics.median(ratios) if ratios else ref_ms / cand_ms
    return {"reference_ms": ref_ms, "latency_ms": cand_ms, "speedup": speedup}


def measure(job: Job) -> dict[str, Any]:
    """Builds the candidate with the real passes, saves it to ``job.output`` and measures it."""
    sys.path[:0] = [p for p in job.sys_path if p not in sys.path]
    cap_threads(job.threads)
    started = time.perf_counter()
    specs = [make_spec(spec["name"], spec["options"]) for spec in job.specs]
    result = shrink(job.model, specs, calibration=job.calibration, provider=job.provider, verify=False)
    saved = result.save(job.output)
    build_seconds = time.perf_counter() - started
    size = saved.model.stat().st_size + (saved.external_data.stat().st_size if saved.external_data else 0)
    macs = int(inspect_model(result.model)["macs"])
    data = open_samples(job.evaluation, role="inputs")
    feed = data.feed_for(result.model)
    report = verify(job.model, job.output, feed, provider=job.provider, chunk=feed.run_size(result.model))
    agreements = [o.top1_agreement for o in report.outputs if o.top1_agreement is not None]
    measured: dict[str, Any] = {
        "size": size,
        "macs": macs,
        "macs_ratio": macs / job.reference_macs if job.reference_macs else 1.0,
        "cosine": report.min_cosine,
        "agreement": min(agreements) if agreements else None,
        "accuracy_reference": report.accuracy_reference,
        "accuracy": report.accuracy_candidate,
        "drop": None,
        "provider": report.provider,
    }
    if job.metric is not None:
        measured["score"] = score(load_metric(job.metric), job.output, data, job.provider)
        measured["score_reference"] = job.metric_reference
        measured["drop"] = (job.metric_reference or 0.0) - measured["score"]
    elif report.accuracy_reference is not None and report.accuracy_candidate is not None:
        measured["drop"] = 100.0 * (report.accuracy_reference - report.accuracy_candidate)
    if job.speed_batch is not None:
        measured.update(_speedup(job.model, job.output, data, job.provider, job.speed_batch))
    measured["build_seconds"] = build_seconds
    measured["passes"] = [{"name": p["name"], "stats": _brief(p.get("stats", {}))} for p in result.report["passes"]]
    return measured


def _brief(stats: dict[str, Any]) -> dict[str, Any]:
    """A pass's stats without its per-node tables (the report keeps one line per trial readable)."""
    return {k: v for k, v in stats.items() if not isinstance(v, (dict, list)) or k == "channels"}


def spec_dicts(specs: Sequence[Any]) -> tuple[dict[str, Any], ...]:
    """Pass specs as plain data for a :class:`Job`."""
    return tuple(spec.to_json() for spec in specs)
