"""The ``local`` executor: worker processes on this machine.

Profile items run in a pool of ``workers`` processes from a ``forkserver`` (no child inherits the
driver's onnxruntime threads); each builds the simplified model's judge once and keeps it for
every item it measures, with its share of the cores as onnxruntime's thread count (N workers each
running one thread per core would oversubscribe the machine). With one worker the items run in
the driver itself, as the serial profile did. Items time nothing (the latency model of
``--min-speedup`` is measured once, by the driver). Trials run as before: up to ``workers`` at a
time, each in its own child process with its limits and, with several workers, its share of
the cores.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from typing import Any, TypeVar

from onnxshrink.autotune.executors.base import ItemDone, NodeProgress, TrialDone, TrialTask, error_text
from onnxshrink.autotune.items import Item, Setup, failed, measure_item
from onnxshrink.autotune.profile import VariantBuilder
from onnxshrink.autotune.trials import run_trial
from onnxshrink.runtime import cap_threads

logger = logging.getLogger(__name__)

Work = TypeVar("Work")

_builder: VariantBuilder | None = None  # the pool process's builder, made by _start


def _start(setup: Setup, threads: int) -> None:
    global _builder
    cap_threads(threads)
    _builder = setup.builder()


def _cores() -> int:
    """The cores this process may run on."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else os.cpu_count() or 1


def _timed_item(builder: VariantBuilder, item: Item, node: str) -> dict[str, Any]:
    """``item``'s result with the seconds it took and the node (or node/pid) that measured it."""
    started = time.perf_counter()
    result = measure_item(builder, item)
    result["seconds"] = time.perf_counter() - started
    result["node"] = node
    return result


def _item(item: Item) -> dict[str, Any]:
    assert _builder is not None
    return _timed_item(_builder, item, f"{platform.node()}/{os.getpid()}")


def _as_they_finish(
    pool: Executor,
    call: Callable[[Work], dict[str, Any]],
    work: Sequence[Work],
    limit: int,
    shown: NodeProgress,
    node: str,
) -> Iterator[tuple[Work, Future[dict[str, Any]]]]:
    """Submits ``work`` in order, at most ``limit`` at a time, and yields each entry with its finished future.

    Entries are submitted only as workers free up, so the progress line's queued and running
    counts stay true.
    """
    pending: dict[Future[dict[str, Any]], Work] = {}
    queue = list(reversed(work))
    while queue or pending:
        while queue and len(pending) < limit:
            entry = queue.pop()
            pending[pool.submit(call, entry)] = entry
            shown.start(node)
        finished, _ = wait(pending, return_when=FIRST_COMPLETED)
        for future in finished:
            yield pending.pop(future), future


class LocalExecutor:
    """Processes on this machine (see the module docstring)."""

    name = "local"

    def __init__(self, workers: int = 1) -> None:
        self.workers = workers
        self.node = platform.node() or "local"

    def profile_items(self, setup: Setup, items: Sequence[Item], done: ItemDone) -> None:
        """Measures ``items`` in the driver (one worker) or a forkserver pool."""
        workers = min(self.workers, len(items))
        with NodeProgress("profile items", len(items)) as shown:
            if workers <= 1:
                builder = setup.builder()
                for item in items:
                    shown.start(self.node)
                    result = _timed_item(builder, item, self.node)
                    shown.finish(self.node)
                    done(item, result)
                return
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(["onnxshrink.autotune.measure", "onnxshrink.autotune.items"])
            share = max(1, _cores() // workers)
            with ProcessPoolExecutor(workers, mp_context=context, initializer=_start, initargs=(setup, share)) as pool:
                for item, future in _as_they_finish(pool, _item, items, workers, shown, self.node):
                    try:
                        result = future.result()
                    except Exception as error:  # a crashed pool process fails its item, not the profile
                        result = failed(item, error_text(error))
                    shown.finish(self.node)
                    done(item, result)

    def trials(self, tasks: Sequence[TrialTask], done: TrialDone) -> None:
        """Up to ``workers`` candidates at a time, each in its own child process (on its share of the cores)."""
        if self.workers > 1:
            share = max(1, _cores() // self.workers)
            tasks = [dataclasses.replace(t, job=dataclasses.replace(t.job, threads=share)) for t in tasks]
        with NodeProgress("trials", len(tasks)) as shown, ThreadPoolExecutor(max_workers=self.workers) as pool:
            for task, future in _as_they_finish(pool, _trial, tasks, self.workers, shown, self.node):
                outcome = future.result()
                outcome["node"] = self.node
                shown.finish(self.node)
                done(task, outcome)

    def close(self) -> None:
        """Nothing to release: pools end with each call."""


def _trial(task: TrialTask) -> dict[str, Any]:
    started = time.perf_counter()
    outcome = run_trial(task.job, timeout=task.timeout, memory_bytes=task.memory_bytes)
    outcome["seconds"] = time.perf_counter() - started
    return outcome
