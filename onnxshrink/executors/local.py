"""The ``local`` executor: worker processes on this machine.

Profile items run in a pool of ``workers`` processes from a ``forkserver`` (no child inherits the
driver's onnxruntime threads); each builds the workload's state once (for ``auto``, the simplified
model's judge) and keeps it for every item it measures, with its share of the cores as
onnxruntime's thread count (N workers each running one thread per core would oversubscribe the
machine). With one worker the items run in the driver itself, as a serial loop would. A timed
workload runs in one process whatever ``workers`` says: timings taken side by side would disturb
each other (``auto``'s items time nothing: the latency model of ``--min-speedup`` is measured once,
by the driver). Tasks (``auto``'s trials) run up to ``workers`` at a time, each starting its own
child process with its limits and, with several workers, its share of the cores.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from typing import Any, TypeVar

from onnxshrink.executors.base import NodeProgress, PieceDone, Task, TaskDone, Workload, error_text
from onnxshrink.runtime import cap_threads

logger = logging.getLogger(__name__)

Work = TypeVar("Work")

_work: Workload | None = None  # the pool process's workload and its state, made by _start
_state: Any = None


def _start(work: Workload, threads: int) -> None:
    global _work, _state
    cap_threads(threads)
    _work, _state = work, work.start()


def _cores() -> int:
    """The cores this process may run on."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else os.cpu_count() or 1


def _timed_item(work: Workload, state: Any, item: Any, node: str) -> dict[str, Any]:
    """``item``'s result with the seconds it took and the node (or node/pid) that measured it."""
    started = time.perf_counter()
    result = work.measure(state, item)
    result["seconds"] = time.perf_counter() - started
    result["node"] = node
    return result


def _item(item: Any) -> dict[str, Any]:
    assert _work is not None
    return _timed_item(_work, _state, item, f"{platform.node()}/{os.getpid()}")


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

    def profile_items(self, work: Workload, items: Sequence[Any], done: PieceDone) -> None:
        """Measures ``items`` in the driver (one worker) or a forkserver pool."""
        workers = 1 if work.timed else min(self.workers, len(items))
        if work.timed and self.workers > 1:
            logger.info("a timed profile runs in one process: timings side by side would disturb each other")
        with NodeProgress("profile items", len(items)) as shown:
            if workers <= 1:
                state = work.start()
                for item in items:
                    shown.start(self.node)
                    result = _timed_item(work, state, item, self.node)
                    shown.finish(self.node)
                    done(item, result)
                return
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload([type(work).__module__])
            share = max(1, _cores() // workers)
            with ProcessPoolExecutor(workers, mp_context=context, initializer=_start, initargs=(work, share)) as pool:
                for item, future in _as_they_finish(pool, _item, items, workers, shown, self.node):
                    try:
                        result = future.result()
                    except Exception as error:  # a crashed pool process fails its item, not the profile
                        result = work.failed(item, error_text(error))
                    shown.finish(self.node)
                    done(item, result)

    def trials(self, tasks: Sequence[Task], done: TaskDone) -> None:
        """Up to ``workers`` tasks at a time, each on its share of the cores (a trial starts a child process)."""
        share = max(1, _cores() // self.workers) if self.workers > 1 else None
        run = functools.partial(_trial, threads=share)
        with NodeProgress("trials", len(tasks)) as shown, ThreadPoolExecutor(max_workers=self.workers) as pool:
            for task, future in _as_they_finish(pool, run, tasks, self.workers, shown, self.node):
                outcome = future.result()
                outcome["node"] = self.node
                shown.finish(self.node)
                done(task, outcome)

    def close(self) -> None:
        """Nothing to release: pools end with each call."""


def _trial(task: Task, threads: int | None) -> dict[str, Any]:
    started = time.perf_counter()
    outcome = task.run({}, task.output, threads)
    outcome["seconds"] = time.perf_counter() - started
    return outcome
