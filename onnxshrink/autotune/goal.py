"""What ``auto`` is asked for.

Targets (size, MACs, speed), an accuracy budget, and how far a measured candidate is from them.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from onnxshrink.errors import UsageError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "ki": 1024, "mi": 1024**2, "gi": 1024**3}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h)?\s*$", re.IGNORECASE)
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600}
BUDGETS = ("max_drop", "min_agreement", "min_cosine")  # the keys of the budget among a candidate's misses
# Measured values equal to a limit meet it: 100 * (0.9725 - 0.9625) is 1.0000000000000009 points.
_TOLERANCE = 1e-9


def parse_size(text: str | int) -> int:
    """Bytes from ``4MB``, ``300KB``, ``1.5MiB`` or a plain number (KB = 1000 bytes, KiB = 1024).

    Raises:
        UsageError: The text is not a size.
    """
    if isinstance(text, int):
        return text
    match = _SIZE.match(str(text))
    if match is None:
        raise UsageError(f"bad size '{text}'; expected a number with an optional unit, e.g. 4MB, 300KB, 2MiB")
    unit = (match.group(2) or "").lower().removesuffix("b")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def parse_duration(text: str | float) -> float:
    """Seconds from ``30m``, ``90s``, ``2h`` or a plain number of seconds.

    Raises:
        UsageError: The text is not a duration.
    """
    if isinstance(text, (int, float)):
        return float(text)
    match = _DURATION.match(str(text))
    if match is None:
        raise UsageError(f"bad duration '{text}'; expected e.g. 90s, 30m, 2h")
    return float(match.group(1)) * _DURATION_UNITS[(match.group(2) or "").lower()]


@dataclasses.dataclass(frozen=True)
class Goal:
    """Targets (at least one of them or a budget) and the accuracy budget of a search.

    Attributes:
        max_size: Bytes of the saved model.
        max_macs: MACs as a fraction of the input model's.
        min_speedup: Input model latency / candidate latency on the provider and batch.
        max_drop: Accuracy drop in points (0.5 = half a percentage point) on labelled
            evaluation data, or the drop of ``metric``'s score in its own units.
        min_agreement: Top-1 agreement with the input model.
        min_cosine: Smallest output cosine similarity with the input model.
        metric: ``module:function`` scoring a model path on the evaluation data.
    """

    max_size: int | None = None
    max_macs: float | None = None
    min_speedup: float | None = None
    max_drop: float | None = None
    min_agreement: float | None = None
    min_cosine: float | None = None
    metric: str | None = None

    def check(self) -> None:
        """Raises UsageError when the goal names nothing, or names a value out of range."""
        if self.max_size is not None and self.max_size <= 0:
            raise UsageError(f"--max-size must be positive, got {self.max_size}")
        if self.max_macs is not None and not 0 < self.max_macs <= 1:
            raise UsageError(f"--max-macs is a ratio of the input's MACs, 0 < r <= 1, got {self.max_macs}")
        if self.min_speedup is not None and self.min_speedup <= 0:
            raise UsageError(f"--min-speedup must be positive, got {self.min_speedup}")
        if self.max_drop is not None and self.max_drop < 0:
            raise UsageError(f"--max-drop must be >= 0, got {self.max_drop}")
        for name, value in (("--min-agreement", self.min_agreement), ("--min-cosine", self.min_cosine)):
            if value is not None and not -1 <= value <= 1:
                raise UsageError(f"{name} must be between -1 and 1, got {value}")
        if self.metric is not None and self.max_drop is None:
            raise UsageError("--metric scores candidates; give --max-drop on its score")
        budgets = [b for b in (self.max_drop, self.min_agreement, self.min_cosine) if b is not None]
        if len(budgets) > 1:
            raise UsageError("give one accuracy budget: --max-drop, --min-agreement or --min-cosine")
        if not budgets and not self.has_target:
            raise UsageError("name a target (--max-size, --max-macs, --min-speedup) or a budget (--max-drop, ...)")

    @property
    def has_target(self) -> bool:
        """Whether a size, MACs or speed target was named."""
        return any(t is not None for t in (self.max_size, self.max_macs, self.min_speedup))

    def loss(self, measured: Mapping[str, Any]) -> float:
        """The budgeted quantity as a loss (smaller is better): drop, disagreement or 1 - cosine."""
        if self.min_agreement is not None:
            return 1.0 - float(measured["agreement"])
        if self.min_cosine is not None:
            return 1.0 - float(measured["cosine"])
        if self.max_drop is not None:
            return float(measured["drop"])
        return 1.0 - float(measured["cosine"])

    def misses(self, measured: Mapping[str, Any]) -> dict[str, str]:
        """Each constraint the measured candidate misses, with by how much."""
        found: dict[str, str] = {}
        if self.max_size is not None and measured["size"] > self.max_size:
            over = measured["size"] - self.max_size
            found["max_size"] = f"size {measured['size']} B is {over} B over --max-size {self.max_size} B"
        if self.max_macs is not None and measured["macs_ratio"] > self.max_macs:
            over_macs = measured["macs_ratio"] - self.max_macs
            found["max_macs"] = (
                f"MACs ratio {measured['macs_ratio']:.4f} is {over_macs:.4f} above --max-macs {self.max_macs}"
            )
        speedup = measured.get("speedup") or 0.0
        if self.min_speedup is not None and speedup < self.min_speedup:
            short = self.min_speedup - speedup
            found["min_speedup"] = f"speedup {speedup:.3f}x is {short:.3f}x short of --min-speedup {self.min_speedup}x"
        if self.max_drop is not None and measured["drop"] > self.max_drop + _TOLERANCE:
            unit = "" if self.metric else " points"
            past = measured["drop"] - self.max_drop
            found["max_drop"] = (
                f"drop {measured['drop']:.4f}{unit} is {past:.4f}{unit} past --max-drop {self.max_drop}{unit}"
            )
        if self.min_agreement is not None and measured["agreement"] < self.min_agreement - _TOLERANCE:
            below = self.min_agreement - measured["agreement"]
            found["min_agreement"] = (
                f"agreement {measured['agreement']:.4f} is {below:.4f} below --min-agreement {self.min_agreement}"
            )
        if self.min_cosine is not None and measured["cosine"] < self.min_cosine - _TOLERANCE:
            below = self.min_cosine - measured["cosine"]
            found["min_cosine"] = f"cosine {measured['cosine']:.6f} is {below:.6f} below --min-cosine {self.min_cosine}"
        return found

    def target_violation(self, measured: Mapping[str, Any]) -> float:
        """How far the candidate is from the size, MACs and speed targets: each shortfall relative to its limit.

        0 when it meets them all; a model at half the wanted speedup is 0.5 short, one twice the
        size limit 1.0 over.
        """
        total = 0.0
        if self.max_size is not None:
            total += max(0.0, measured["size"] / self.max_size - 1)
        if self.max_macs is not None:
            total += max(0.0, measured["macs_ratio"] / self.max_macs - 1)
        if self.min_speedup is not None:
            total += max(0.0, 1 - (measured.get("speedup") or 0.0) / self.min_speedup)
        return total

    def budget_violation(self, measured: Mapping[str, Any]) -> float:
        """How far the candidate is past the accuracy budget, in the budget's own units (0: within it).

        Points of drop (or the metric's units) past ``max_drop``; agreement or cosine below its
        least value.
        """
        if self.max_drop is not None:
            return max(0.0, measured["drop"] - self.max_drop - _TOLERANCE)
        if self.min_agreement is not None:
            return max(0.0, self.min_agreement - _TOLERANCE - measured["agreement"])
        if self.min_cosine is not None:
            return max(0.0, self.min_cosine - _TOLERANCE - measured["cosine"])
        return 0.0

    def violation(self, measured: Mapping[str, Any]) -> tuple[float, float]:
        """``(budget_violation, target_violation)``: how near a candidate is, the accuracy budget first.

        A model past the budget loses accuracy the user did not agree to lose; one short of a
        target only compresses less than asked. So candidates are compared by what they lose past
        the budget first and by how short of the targets they fall after that, never by a sum of
        the two: a sum weighs a relative shortfall of speed against points of accuracy, which
        have no common unit.
        """
        return self.budget_violation(measured), self.target_violation(measured)

    def to_json(self) -> dict[str, Any]:
        """The goal as the report shows it."""
        return dataclasses.asdict(self)
