"""Latency measured one way everywhere: ``onnxshrink bench``, ``quantize:min-speedup`` and the benchmarks.

:func:`interleaved_latency` times several runnables in rotating round-robin order, so machine
noise (another process, frequency changes) hits every candidate alike; :func:`measure_latency`
is ``onnxshrink bench``'s single-model form of it. :func:`node_times` asks onnxruntime's own
profiler where the time of a run goes, node by node of the graph onnxruntime really runs.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxshrink import progress
from onnxshrink.data.model_inputs import generate_inputs
from onnxshrink.errors import UsageError
from onnxshrink.loading import load_model
from onnxshrink.runtime import ProviderChoice, RuntimeUnavailable, create_session, run


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


@dataclasses.dataclass(frozen=True)
class NodeTimes:
    """Where the time of a run goes: the graph onnxruntime ran and each of its nodes' milliseconds.

    Attributes:
        graph: The main graph onnxruntime ran, after its graph optimizations: fusions and layout
            changes rename nodes and tensors (``relu_0.tmp_0_nchwc``, ``ReorderOutput_token_12``),
            so mapping them back to the model's nodes is the caller's business.
        times: Median milliseconds per run of each node of ``graph``, by name (a node that runs
            several times in one run, in a loop body, counts the sum).
        runs: Runs the medians are taken over.
        provider: Which provider ran.
    """

    graph: onnx.GraphProto
    times: dict[str, float]
    runs: int
    provider: ProviderChoice


def _kernel_events(path: str, warmup: int) -> tuple[dict[str, list[float]], int]:
    """Per node name, its milliseconds in each profiled run after ``warmup`` runs; and how many runs."""
    events = json.loads(Path(path).read_text(encoding="utf-8"))
    spans = sorted(
        (e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"
    )[warmup:]
    starts = [start for start, _ in spans]
    per_run: dict[str, list[float]] = {}
    for event in events:
        name = str(event.get("name", ""))
        if event.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        index = bisect.bisect_right(starts, event["ts"]) - 1
        if index < 0 or event["ts"] > spans[index][1]:
            continue  # a warm-up run
        row = per_run.setdefault(name.removesuffix("_kernel_time"), [0.0] * len(spans))
        row[index] += event["dur"] / 1000.0
    return per_run, len(spans)


def node_times(
    source: str | bytes,
    feed: Mapping[str, np.ndarray],
    *,
    provider: str = "cpu",
    runs: int = 20,
    warmup: int = 3,
    threads: int | None = None,
) -> NodeTimes:
    """Per-node milliseconds of a model from onnxruntime's profiler (``SessionOptions.enable_profiling``).

    The session is the one onnxruntime would run (default optimization level, ``threads``); it
    runs ``warmup`` times, then ``runs`` times, and each node's median over those runs is kept
    (the profiler's own events, ``dur`` of each ``*_kernel_time``). The profiler adds some
    bookkeeping to every node: absolute times are high for small nodes, their shares are what
    to use. When the provider cannot save its optimized graph, ``graph`` is empty.

    Raises:
        RuntimeUnavailable: onnxruntime cannot load or run the model.
    """
    with tempfile.TemporaryDirectory(prefix="onnxshrink-profile-") as tmp:
        folder = Path(tmp)

        def profiling(options: Any) -> None:
            options.enable_profiling = True
            options.profile_file_prefix = str(folder / "profile")

        def saving(options: Any) -> None:
            profiling(options)
            options.optimized_model_filepath = str(folder / "optimized.onnx")
            # Weights go to a side file: no 2 GiB limit and nothing to read back but the graph.
            options.add_session_config_entry(
                "session.optimized_model_external_initializers_file_name", "optimized.onnx.data"
            )
            options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "64")

        try:
            session, choice = create_session(source, provider, threads=threads, configure=saving)
        except RuntimeUnavailable:  # some providers cannot save what they optimized: times by node name only
            session, choice = create_session(source, provider, threads=threads, configure=profiling)
        for _ in range(warmup + runs):
            run(session, feed)
        per_run, count = _kernel_events(session.end_profiling(), warmup)
        optimized = folder / "optimized.onnx"
        graph = onnx.load(str(optimized), load_external_data=False).graph if optimized.is_file() else onnx.GraphProto()
    times = {name: float(statistics.median(values)) for name, values in per_run.items()}
    return NodeTimes(graph, times, count, choice)
