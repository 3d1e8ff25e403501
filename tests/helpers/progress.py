"""A progress recorder: installed with ``progress.use``, it keeps every task started and how far it got."""

from __future__ import annotations

from onnxshrink import progress


class RecordedTask:
    """One task a pass or an executor started: its label, total, count done and whether it finished."""

    def __init__(self, label: str, total: int | None) -> None:
        self.label, self.total, self.done, self.finished = label, total, 0, False

    def advance(self, count: int = 1) -> None:
        self.done += count


class ProgressRecorder:
    """Keeps every task started, in order, with how far each got."""

    def __init__(self) -> None:
        self.tasks: list[RecordedTask] = []

    def start(self, label: str, total: int | None) -> progress.Step:
        self.tasks.append(RecordedTask(label, total))
        return self.tasks[-1]

    def finish(self, step: progress.Step) -> None:
        assert isinstance(step, RecordedTask)
        step.finished = True

    def labelled(self, prefix: str) -> list[RecordedTask]:
        """The tasks whose label starts with ``prefix``."""
        return [task for task in self.tasks if task.label.startswith(prefix)]
