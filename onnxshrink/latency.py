"""``onnxshrink bench``: onnxruntime latency of one model, warm-up then median of timed runs."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Mapping
from typing import Any

import click
import numpy as np

from onnxshrink.errors import UsageError
from onnxshrink.inputs import generate_inputs
from onnxshrink.loading import load_model
from onnxshrink.runtime import RuntimeUnavailable, create_session, run


def measure_latency(
    path: str | os.PathLike[str],
    *,
    provider: str = "auto",
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    batch: int | None = None,
    threads: int | None = None,
    runs: int = 50,
    warmup: int = 5,
    progress: bool = False,
) -> dict[str, Any]:
    """Median latency in milliseconds with p10/p90, on generated inputs."""
    loaded = load_model(path)
    feed = generate_inputs(loaded.model, shapes or {}, batch=batch)
    try:
        session, choice = create_session(str(path), provider, threads=threads)
        for _ in range(warmup):
            run(session, feed)
        timings = []
        with click.progressbar(range(runs), label="timing", file=None) if progress else _plain(runs) as steps:
            for _ in steps:
                start = time.perf_counter()
                run(session, feed)
                timings.append((time.perf_counter() - start) * 1000)
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


class _plain:
    """A stand-in for click.progressbar when stderr is not a terminal."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __enter__(self) -> range:
        return range(self.count)

    def __exit__(self, *exc: object) -> None:
        return None
