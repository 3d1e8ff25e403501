"""What ``onnxshrink auto`` and :func:`onnxshrink.auto` run.

Name a target (size, MACs, speed) and an accuracy budget, get the best model found.

- ``goal``: targets, budget and how far a measured candidate is from them;
- ``profile``: per channel group / layer damage and exact costs of each setting, cached on disk;
- ``allocate``: the multiple-choice knapsack (``scipy.optimize.milp``) and the predicted front;
- ``recipe``: allocations as pass specs and TOML recipes;
- ``measure`` / ``trials``: one candidate built and measured in a child process with limits;
- ``study``: the trial journal (Optuna JournalStorage) that ``--resume`` reads;
- ``search``: the search itself; ``run``: :func:`auto`; ``result``: :class:`AutoResult`.
"""

from __future__ import annotations

from onnxshrink.autotune.result import AutoResult
from onnxshrink.autotune.run import auto

__all__ = ["AutoResult", "auto"]
