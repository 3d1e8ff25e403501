"""What ``auto`` returns: the chosen model, every trial, the front, the recipe and the report."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from onnxshrink.api import ShrinkResult
from onnxshrink.autotune.goal import Goal


@dataclasses.dataclass
class AutoResult:
    """The outcome of :func:`onnxshrink.auto`.

    Attributes:
        best: The chosen model as a shrink result (the nearest one when ``feasible`` is False).
        feasible: Whether it meets every target within the budget.
        misses: For an infeasible result: each constraint it misses, with by how much.
        front: The predicted Pareto points (size, MACs, damage, settings), measured where built.
        trials: Every trial: settings, size, MACs, latency, metric, seconds, error.
        recipe: TOML text that ``onnxshrink run --recipe`` turns into the same model, byte for byte.
        report: The JSON-serializable report.
        model_file: The chosen trial's saved model.
    """

    best: ShrinkResult
    feasible: bool
    misses: dict[str, str]
    front: list[dict[str, Any]]
    trials: list[dict[str, Any]]
    recipe: str
    report: dict[str, Any]
    model_file: Path
    # A study without a folder of its own lives in a temporary one until this result goes.
    temporary: tempfile.TemporaryDirectory[str] | None = dataclasses.field(default=None, repr=False)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Writes the chosen model, the very bytes its trial measured, atomically."""
        target = Path(path)
        data = self.model_file.read_bytes()
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent if str(target.parent) else ".")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.report["output"] = str(target)
        return target


def rank(goal: Goal, trial: Mapping[str, Any], primary: str) -> tuple[float, ...]:
    """Sort key of a measured trial, best first.

    With a target, the least loss wins (then the smallest); with only a budget, the smallest
    (in the primary cost) wins, then the least loss.
    """
    cost = float({"bytes": trial["size"], "macs": trial["macs"]}.get(primary, trial.get("latency_ms") or 0.0))
    if goal.has_target:
        return (float(trial["loss"]), cost)
    return (cost, float(trial["loss"]))


def choose(goal: Goal, trials: Sequence[dict[str, Any]], primary: str) -> tuple[dict[str, Any] | None, bool]:
    """The best feasible trial, else the nearest measured one; and whether it is feasible.

    The nearest: among the trials within the accuracy budget, the one least short of the targets
    (then the best by :func:`rank`); only when no trial is within the budget, the one that goes
    least past it (then the least short of the targets). The budget is what a user must not lose
    silently; missing a size or speed target only compresses less than asked.
    """
    measured = [t for t in trials if t.get("error") is None]
    feasible = [t for t in measured if not t["misses"]]
    if feasible:
        return min(feasible, key=lambda t: (*rank(goal, t, primary), t["number"])), True
    if measured:
        return min(measured, key=lambda t: (*goal.violation(t), *rank(goal, t, primary), t["number"])), False
    return None, False
