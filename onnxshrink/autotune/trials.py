"""Trials in child processes.

Each candidate is built and measured in a child process with a time and a memory limit, so a
crash, an out-of-memory or a raising metric is a failed trial with its error, not a failed study.

Children come from a ``forkserver`` that has imported onnxshrink once: a fork is cheap, and no
child inherits the parent's onnxruntime threads.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import resource
import signal
from collections.abc import Mapping
from multiprocessing.connection import Connection
from typing import Any

from onnxshrink.autotune.measure import Job, measure

logger = logging.getLogger(__name__)

_JOIN_SECONDS = 5.0


@dataclasses.dataclass(frozen=True)
class TrialTask:
    """One candidate to build, an executor's :class:`~onnxshrink.executors.Task`: journal key, job, limits."""

    key: str
    job: Job
    timeout: float
    memory_bytes: int | None

    @property
    def output(self) -> str:
        """Where the candidate's model goes."""
        return self.job.output

    @property
    def timed(self) -> bool:
        """Whether the trial measures latency (``--min-speedup``)."""
        return self.job.speed_batch is not None

    def files(self) -> list[str]:
        """The data files the trial reads: model, calibration, evaluation."""
        return [path for path in (self.job.model, self.job.calibration, self.job.evaluation) if path]

    def run(self, moved: Mapping[str, str], output: str, threads: int | None = None) -> dict[str, Any]:
        """Builds and measures the candidate in a child process, reading files at their ``moved`` copies."""
        job = self.job
        local = dataclasses.replace(
            job,
            model=moved.get(job.model, job.model),
            calibration=moved.get(job.calibration, job.calibration) if job.calibration else job.calibration,
            evaluation=moved.get(job.evaluation, job.evaluation),
            output=output,
            threads=threads if threads is not None else job.threads,
        )
        return run_trial(local, timeout=self.timeout, memory_bytes=self.memory_bytes)


def _context() -> Any:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["onnxshrink.autotune.measure"])
    return context


def _child(job: Job, connection: Connection, memory_bytes: int | None) -> None:
    if memory_bytes is not None:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    try:
        result: dict[str, Any] = {"measured": measure(job)}
    except MemoryError:
        result = {"error": f"out of memory (limit {memory_bytes} bytes of address space)"}
    except BaseException as error:  # any failure of the passes or the user's metric fails the trial
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        result = {"error": f"{type(error).__name__}: {message}" if message else type(error).__name__}
    connection.send(result)
    connection.close()


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        hint = " (out of memory?)" if -exitcode == signal.SIGKILL else ""
        return f"the trial's process was killed by {name}{hint}"
    return f"the trial's process exited with code {exitcode} without a result"


def run_trial(job: Job, *, timeout: float, memory_bytes: int | None) -> dict[str, Any]:
    """Builds and measures ``job`` in a child process.

    Returns:
        ``{"measured": {...}}``, or ``{"error": "..."}`` when the child raised, crashed, ran out of
        memory or ran past ``timeout`` seconds.
    """
    context = _context()
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(job, sender, memory_bytes), daemon=True)
    process.start()
    sender.close()
    try:
        if not receiver.poll(timeout):
            process.kill()
            process.join(_JOIN_SECONDS)
            return {"error": f"timed out after {timeout:.0f} s"}
        try:
            result: dict[str, Any] = receiver.recv()
        except EOFError:
            process.join(_JOIN_SECONDS)
            return {"error": _death(process.exitcode)}
        process.join(_JOIN_SECONDS)
        return result
    finally:
        receiver.close()
        if process.is_alive():
            process.kill()
            process.join(_JOIN_SECONDS)


def default_memory_bytes() -> int | None:
    """The machine's physical memory: a trial may use all of it, but no more (swap storms end)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None
