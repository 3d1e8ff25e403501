"""A bare ``auto`` search over a hand-made profile: for tests of how it moves its caps."""

from __future__ import annotations

from pathlib import Path

from onnxshrink.autotune.goal import Goal
from onnxshrink.autotune.profile import Profile
from onnxshrink.autotune.search import Search, Settings
from onnxshrink.autotune.study import TrialJournal


def bare_search(folder: Path, goal: Goal, profile: Profile) -> Search:
    """A :class:`Search` of ``goal`` over ``profile`` (reference 1000 MACs and bytes), its journal in ``folder``."""
    settings = Settings(
        model="m.onnx",
        calibration=None,
        evaluation="e.npz",
        provider="cpu",
        batch=1,
        seed=0,
        max_trials=4,
        workers=1,
        deadline=float("inf"),
        trial_timeout=60.0,
        trial_memory=None,
        reference_macs=1000,
        reference_size=1000,
        metric=None,
        metric_reference=None,
        folder=folder,
        sys_path=(),
    )
    return Search(goal, profile, settings, TrialJournal(folder, "s", resume=False), None)
