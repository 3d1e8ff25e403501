"""What every executor offers, and the per-node progress they report.

An executor runs two kinds of work, whoever asks (``auto``, or a pass through the
:class:`~onnxshrink.context.PassContext`):

- profile items: independent pieces of a :class:`Workload` (one unit × one setting of ``auto``'s
  profile, one layer of ``prune:allocation=sensitivity``), measured by workers that build the
  workload's state once (a session, the calibration samples) and keep it for every piece;
- tasks: independent jobs (``auto``'s trials, one candidate built and measured in a child process
  with time and memory limits) that read some files and may write one.

Results come back through a ``done`` callback called in the driver's thread as each finishes, so
the caller records them at once. Workloads and tasks are plain data (picklable, and put once into
an object store); the executor knows nothing of what they compute.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from onnxshrink import progress


class Workload(Protocol):
    """Pieces of work that share one expensive state (a session and its data), built once per worker."""

    @property
    def timed(self) -> bool:
        """Whether pieces measure latency (and so must not share a CPU with other work)."""

    def start(self) -> Any:
        """The state a worker builds once and keeps for every piece it measures."""

    def measure(self, state: Any, piece: Any) -> dict[str, Any]:
        """One piece's result (JSON data), measured with ``state``."""

    def failed(self, piece: Any, reason: str) -> dict[str, Any]:
        """The result of a piece that could not be measured (after its retries): it holds ``error``."""


class Task(Protocol):
    """One independent job: reads the files it names and may write one file, ``output``."""

    @property
    def key(self) -> str:
        """The task's name (unique among the tasks of one call)."""

    @property
    def output(self) -> str:
        """Where the task's file goes on the driver's machine."""

    @property
    def timed(self) -> bool:
        """Whether the task measures latency."""

    def files(self) -> list[str]:
        """The regular files the task reads (a remote node gets one copy of each per study)."""

    def run(self, moved: Mapping[str, str], output: str, threads: int | None = None) -> dict[str, Any]:
        """Runs the task, reading each file at ``moved.get(path, path)`` and writing to ``output``.

        ``threads``: the onnxruntime intra-op threads the task may use (its share of the cores when
        tasks run side by side; None: the task's own choice).

        Returns its outcome (JSON data; ``{"error": ...}`` when it failed).
        """


PieceDone = Callable[[Any, dict[str, Any]], None]
TaskDone = Callable[[Any, dict[str, Any]], None]


class Executor(Protocol):
    """Runs profile items and tasks: ``local`` (processes on this machine) or ``ray`` (a cluster)."""

    name: str
    workers: int

    def profile_items(self, work: Workload, items: Sequence[Any], done: PieceDone) -> None:
        """Measures ``items`` of ``work``; ``done(item, result)`` as each finishes.

        A piece that failed for good (after its retries) has ``result["error"]``.
        """

    def trials(self, tasks: Sequence[Task], done: TaskDone) -> None:
        """Runs ``tasks``; ``done(task, outcome)`` as each finishes.

        ``outcome`` is what :meth:`Task.run` returned (or ``{"error": "..."}``), with ``seconds`` and
        ``node``; the task's file is at ``task.output`` when it wrote one.
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
