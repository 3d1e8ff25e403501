"""Latency measured one way everywhere: ``onnxshrink bench``, ``quantize:min-speedup`` and the benchmarks.

:func:`interleaved_latency` times several runnables in rotating round-robin order, so machine
noise (another process, frequency changes) hits every candidate alike; :func:`measure_latency`
is ``onnxshrink bench``'s single-model form of it.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from onnxshrink import progress
from onnxshrink.data.model_inputs import generate_inputs
from onnxshrink.errors import UsageError
from onnxshrink.loading import load_model
from onnxshrink.runtime import RuntimeUnavailable, create_session, run


def interleaved_latency(
    runners: Mapping[str, Callable[[], object]],
    *,
    rounds: int,
    runs_per_round: int = 1,
    warmup: int = 1,
    on_round: Callable[[int], None] | None = None,
) -> dict[str, list[float]]:
    """Milliseconds per call of each runner, ``rounds`` samples each, timed interleaved.

    Every runner is first called ``warmup`` times. Each round then calls every runner
    ``runs_per_round`` times and records the median of those calls; the order rotates by one
    position every round, so each runner takes every position equally often (a fixed order
    measured the same network 5-8 % apart on a shared machine). ``on_round(i)`` is called after
    each round (progress display).
    """
    names = list(runners)
    for name in names:
        for _ in range(warmup):
            runners[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        shift = index % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            call = runners[name]
            samples = []
            for _ in range(runs_per_round):
                started = time.perf_counter()
                call()
                samples.append((time.perf_counter() - started) * 1000)
            times[name].append(statistics.median(samples))
        if on_round is not None:
            on_round(index)
    return times


def timing_plan(
    seconds: float, *, models: int, rounds: int, runs: int, budget: float, least_rounds: int = 3
) -> tuple[int, int]:
    """Rounds and runs per round that time ``models`` models of ``seconds`` per run in about ``budget`` s.

    A fast model keeps ``rounds`` x ``runs``; a slow one gives up runs per round first, then rounds,
    never below ``least_rounds`` rounds of one run (BERT-base at batch 8 takes seconds a run on two cores).
    """
    per_round = models * max(seconds, 1e-6)  # one run of each model
    fitted_runs = max(1, min(runs, int(budget / (rounds * per_round))))
    fitted_rounds = max(least_rounds, min(rounds, int(budget / per_round)))
    return fitted_rounds, fitted_runs


def one_run_seconds(call: Callable[[], object]) -> float:
    """Seconds of one call after a warm-up call (to size a timing with :func:`timing_plan`)."""
    call()
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def measure_latency(
    path: str | os.PathLike[str],
    *,
    provider: str = "auto",
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    batch: int | None = None,
    threads: int | None = None,
    runs: int = 50,
    warmup: int = 5,
) -> dict[str, Any]:
    """Median latency in milliseconds with p10/p90, on generated inputs; the runs are a progress task."""
    loaded = load_model(path)
    feed = generate_inputs(loaded.model, shapes or {}, batch=batch)
    try:
        session, choice = create_session(str(path), provider, threads=threads)
        with progress.task("timing", total=runs) as step:
            timings = interleaved_latency(
                {"model": lambda: run(session, feed)}, rounds=runs, warmup=warmup, on_round=lambda _: step.advance()
            )["model"]
    except RuntimeUnavailable as error:
        raise UsageError(f"onnxruntime cannot run {path}: {error}") from None
    ordered = np.sort(np.asarray(timings))
    return {
        "model": str(path),
        "provider": choice.used,
        "provider_reason": choice.reason,
        "threads": threads,
        "runs": runs,
        "warmup": warmup,
        "median_ms": float(statistics.median(timings)),
        "p10_ms": float(np.percentile(ordered, 10)),
        "p90_ms": float(np.percentile(ordered, 90)),
        "input_shapes": {k: list(np.shape(v)) for k, v in feed.items()},
    }
