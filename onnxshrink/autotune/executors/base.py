"""What every executor offers, and the per-node progress they report.

An executor runs two kinds of work for ``auto``: profile items
(:class:`~onnxshrink.autotune.items.Item`, one unit × one setting, measured by a worker that keeps
the simplified model and the calibration samples) and trials (one candidate built and measured in
a child process with time and memory limits, :mod:`onnxshrink.autotune.trials`). Results come back
through a ``done`` callback called in the driver's thread as each finishes, so the caller writes
them to the study folder at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from onnxshrink import progress
from onnxshrink.autotune.items import Item, Setup
from onnxshrink.autotune.measure import Job


@dataclasses.dataclass(frozen=True)
class TrialTask:
    """One candidate to build: its journal key, the job and the limits of its child process."""

    key: str
    job: Job
    timeout: float
    memory_bytes: int | None


ItemDone = Callable[[Item, dict[str, Any]], None]
TrialDone = Callable[[TrialTask, dict[str, Any]], None]


class Executor(Protocol):
    """Runs profile items and trials: ``local`` (processes on this machine) or ``ray`` (a cluster)."""

    name: str
    workers: int

    def profile_items(self, setup: Setup, items: Sequence[Item], done: ItemDone) -> None:
        """Measures ``items``; ``done(item, result)`` as each finishes (``result["error"]`` after its retries)."""

    def trials(self, tasks: Sequence[TrialTask], done: TrialDone) -> None:
        """Builds and measures candidates; ``done(task, outcome)`` as each finishes.

        ``outcome`` is ``{"measured": {...}}`` or ``{"error": "..."}``, with ``seconds`` and ``node``;
        the candidate's model is at ``task.job.output`` when it was built.
        """

    def close(self) -> None:
        """Releases the workers (the study is over)."""


class NodeProgress:
    """Tasks queued / running / done per node, shown through :mod:`onnxshrink.progress`.

    Each change redraws one line (a new progress task whose label holds the counts), e.g.
    ``trials: 3 queued | 10.0.0.5/1a2b3c 2 running 7 done | 10.0.0.6/4d5e6f 1 running 8 done``.
    """

    def __init__(self, what: str, total: int) -> None:
        self.what = what
        self.total = total
        self.queued = total
        self.running: dict[str, int] = {}
        self.done: dict[str, int] = {}
        self._stack = contextlib.ExitStack()
        self._shown = ""

    def __enter__(self) -> NodeProgress:
        self._show()
        return self

    def __exit__(self, *args: object) -> None:
        self._stack.close()

    def start(self, node: str) -> None:
        """A task left the queue and runs on ``node``."""
        self.queued -= 1
        self.running[node] = self.running.get(node, 0) + 1
        self._show()

    def finish(self, node: str, ran_on: str | None = None) -> None:
        """The task started on ``node`` finished (on ``ran_on`` when it was retried elsewhere)."""
        self.running[node] = max(0, self.running.get(node, 0) - 1)
        where = ran_on or node
        self.done[where] = self.done.get(where, 0) + 1
        self._show()

    @property
    def label(self) -> str:
        """The counts as one line."""
        nodes = sorted(set(self.running) | set(self.done))
        parts = [f"{n} {self.running.get(n, 0)} running {self.done.get(n, 0)} done" for n in nodes]
        return " | ".join([f"{self.what}: {self.queued} queued", *parts])

    def _show(self) -> None:
        label = self.label
        if label == self._shown:
            return
        self._shown = label
        self._stack.close()
        self._stack = contextlib.ExitStack()
        step = self._stack.enter_context(progress.task(label, total=self.total))
        step.advance(sum(self.done.values()))


def error_text(error: BaseException) -> str:
    """One line naming an exception: ``Type: first line of its message``."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {message}" if message else type(error).__name__
