"""``auto``: name a target (size, MACs, speed) and an accuracy budget, get the best model found.

- ``goal``: targets, budget and how far a measured candidate is from them;
- ``profile``: per channel group / layer damage and exact costs of each setting, cached on disk;
- ``allocate``: the multiple-choice knapsack (``scipy.optimize.milp``) and the predicted front;
- ``recipe``: allocations as pass specs and TOML recipes;
- ``measure`` / ``trials``: one candidate built and measured in a child process with limits;
- ``study``: the trial journal (Optuna JournalStorage) that ``--resume`` reads;
- ``search``: the search itself; ``run``: :func:`auto`; ``result``: :class:`AutoResult`.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from onnxshrink.auto.result import AutoResult
from onnxshrink.auto.run import auto

__all__ = ["AutoResult", "auto"]


class _CallablePackage(types.ModuleType):
    """The ``onnxshrink.auto`` package, callable as :func:`auto`.

    ``onnxshrink.auto`` names both this package and the function (the DESIGN's API): Python binds
    a subpackage over a same-named attribute of its parent whenever it is imported, so the package
    itself is made callable, and ``onnxshrink.auto(...)`` works whatever was imported first.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> AutoResult:
        return auto(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
