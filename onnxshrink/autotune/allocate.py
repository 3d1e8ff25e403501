"""Allocation: one setting per unit, the least predicted damage under cost caps.

A multiple-choice knapsack solved exactly by ``scipy.optimize.milp`` (HiGHS); sweeping the cap of
the primary cost gives the predicted Pareto front.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from onnxshrink.autotune.profile import Profile, Unit, precision_kind

COSTS = ("bytes", "macs", "latency")
_FRONT_POINTS = 32
_TIE = 1e-9  # per unit of normalized cost: among equal damages, the cheaper setting wins
_CAP_TRIES = 4  # knapsacks solved at a target's own cap, each moved in by the last one's predicted excess


@dataclasses.dataclass(frozen=True)
class Point:
    """An allocation (a setting index per unit) with its predicted size, MACs and damage."""

    choice: tuple[int, ...]
    size: int
    macs: int
    damage: float
    latency: float = 0.0  # predicted milliseconds, when the profile has a latency model

    def settings(self, units: Sequence[Unit]) -> dict[str, dict[str, float | str]]:
        """The chosen value of every unit, by knob and unit name (what the report shows)."""
        table: dict[str, dict[str, float | str]] = {}
        for unit, index in zip(units, self.choice, strict=True):
            table.setdefault(unit.knob, {})[unit.name] = unit.settings[index].value
        return table

    def to_json(self, units: Sequence[Unit]) -> dict[str, Any]:
        """The point as the report shows it."""
        return {
            "size": self.size,
            "macs": self.macs,
            "latency_ms": self.latency,
            "damage": self.damage,
            "settings": self.settings(units),
        }

    def cost(self, kind: str) -> float:
        """The predicted total of a cost kind: ``bytes``, ``macs`` or ``latency``."""
        return float({"bytes": self.size, "macs": self.macs, "latency": self.latency}[kind])


def _columns(profile: Profile) -> tuple[np.ndarray, dict[str, np.ndarray], list[tuple[int, int]]]:
    """Per (unit, setting) column: its damage, its cost deltas, and which unit and setting it is."""
    where = [(u, s) for u, unit in enumerate(profile.units) for s in range(len(unit.settings))]
    settings = [profile.units[u].settings[s] for u, s in where]
    damage = np.array([s.damage for s in settings], dtype=np.float64)
    costs = {
        "bytes": np.array([s.bytes for s in settings], dtype=np.float64),
        "macs": np.array([s.macs for s in settings], dtype=np.float64),
        "latency": np.array([s.latency for s in settings], dtype=np.float64),
    }
    return damage, costs, where


def predicted_size(profile: Profile, choice: Sequence[int]) -> int:
    """Bytes of an allocation with each layer's weight scaled by every cut on it and by its precision.

    The knapsack adds settings' byte savings; where two channel groups cut one layer (its inputs
    and its outputs) or a cut layer is also quantized, the sum counts a part twice. Here a layer
    keeps ``prod(1 - cut fraction)`` of its weight, then int8 or int4 keeps its profiled share of that.
    """
    kept = {layer: 1.0 for layer in profile.layer_bytes}
    other = 0.0  # what settings change besides layer weights (biases, norms, Q/DQ parameters)
    precision: dict[str, float] = {}
    for unit, index in zip(profile.units, choice, strict=True):
        setting = unit.settings[index]
        if unit.knob == "precision":
            if index and unit.weight_bytes:
                precision[unit.name] = setting.bytes / unit.weight_bytes
            elif index:
                other += setting.bytes
            continue
        other += setting.bytes - sum(setting.layers.values())
        for layer, delta in setting.layers.items():
            if profile.layer_bytes.get(layer):
                kept[layer] *= 1.0 + delta / profile.layer_bytes[layer]
    total = float(profile.size) + other
    for layer, size in profile.layer_bytes.items():
        total += size * (kept[layer] * (1.0 + precision.get(layer, 0.0)) - 1.0)
    return round(total)


def predicted_latency(profile: Profile, choice: Sequence[int]) -> float:
    """Milliseconds of an allocation: each node's time at its layer's precision, scaled by its cuts.

    The knapsack adds settings' latency deltas; a node cut on both sides, or cut and quantized,
    changes by the product of its changes, which this counts (0 without a latency model).
    """
    if profile.latency is None:
        return 0.0
    ratios: dict[str, float] = {}
    precision: dict[str, str] = {}
    for unit, index in zip(profile.units, choice, strict=True):
        setting = unit.settings[index]
        if unit.knob == "precision":
            precision[unit.name] = precision_kind(setting.value)
            continue
        for name, ratio in setting.work.items():
            ratios[name] = ratios.get(name, 1.0) * ratio
    return profile.latency.predict(ratios, precision)


def solve(profile: Profile, caps: Mapping[str, float], objective: str = "damage") -> Point | None:
    """The allocation minimizing ``objective`` (damage, bytes, macs or latency) with summed costs within ``caps``.

    Caps are totals (model bytes, MACs), not deltas; the knapsack sums settings' costs. Returns
    None when no allocation fits them. The point's size is :func:`predicted_size`, its latency
    :func:`predicted_latency`.
    """
    if not profile.units:
        point = Point((), profile.size, profile.macs, 0.0, profile.latency_ms)
        return point if _fits(point, caps) else None
    damage, costs, where = _columns(profile)
    base = _bases(profile)
    scale = {k: max(float(np.abs(v).max()), 1.0) for k, v in costs.items()}
    if objective == "damage":
        weights = damage + _TIE * sum(costs[k] / scale[k] for k in COSTS)
    else:
        weights = costs[objective] / scale[objective] + _TIE * damage
    rows = np.zeros((len(profile.units), len(where)))
    for column, (owner, _) in enumerate(where):
        rows[owner, column] = 1.0
    constraints = [LinearConstraint(rows, 1.0, 1.0)]
    for key, cap in caps.items():
        constraints.append(LinearConstraint(costs[key][None, :], -np.inf, cap - base[key]))
    result = milp(weights, constraints=constraints, integrality=np.ones(len(where)), bounds=Bounds(0, 1))
    if result.x is None:
        return None
    chosen = np.round(result.x).astype(bool)
    choice = [0] * len(profile.units)
    for found in np.flatnonzero(chosen):
        owner, setting = where[int(found)]
        choice[owner] = int(setting)
    macs = profile.macs + int(costs["macs"][chosen].sum())
    latency = predicted_latency(profile, choice)
    return Point(tuple(choice), predicted_size(profile, choice), macs, float(damage[chosen].sum()), latency)


def uniform_int8(profile: Profile) -> Point | None:
    """Every layer with an int8 setting at int8, nothing else changed: plain ``quantize`` (None without one).

    Its pipeline quantizes every layer the profile did not measure too (the pass's defaults), so
    it stands for the whole-model int8 a user would write by hand, even on a partial profile.
    """
    choice = [0] * len(profile.units)
    for owner, unit in enumerate(profile.units):
        found = [i for i, setting in enumerate(unit.settings) if unit.knob == "precision" and setting.value == "int8"]
        choice[owner] = found[0] if found else 0
    if not any(choice):
        return None
    chosen = [profile.units[u].settings[i] for u, i in enumerate(choice)]
    macs = profile.macs + sum(s.macs for s in chosen)
    latency = predicted_latency(profile, choice)
    return Point(tuple(choice), predicted_size(profile, choice), macs, sum(s.damage for s in chosen), latency)


def _bases(profile: Profile) -> dict[str, float]:
    return {"bytes": profile.size, "macs": profile.macs, "latency": profile.latency_ms}


def _fits(point: Point, caps: Mapping[str, float]) -> bool:
    return all(point.cost(kind) <= cap for kind, cap in caps.items())


def _at_cap(
    profile: Profile, summed: Mapping[str, float], primary: str, cap: float, points: Sequence[Point]
) -> list[Point]:
    """The knapsack's points at the primary's cap, moved in by each one's predicted excess (new points only)."""
    found: list[Point] = []
    level = cap
    for _ in range(_CAP_TRIES):
        point = solve(profile, {**summed, primary: level})
        if point is None:
            break
        if all(point.choice != p.choice for p in [*points, *found]):
            found.append(point)
        excess = point.cost(primary) - cap
        if excess <= 0:
            break
        level -= excess
    return found


def front(profile: Profile, caps: Mapping[str, float], primary: str) -> list[Point]:
    """The predicted Pareto front within ``caps``, least damage first.

    The knapsack's summed cost of the primary kind is capped at levels swept from the model's own
    cost down to the smallest reachable (other caps hold throughout), and at the primary's own cap
    when ``caps`` has one: an even sweep misses the least damaging point under a target where one
    unit dominates the cost (magika's Conv: 62 % of the bytes), its levels falling either side of
    the target. When the point at the cap is predicted past it (summed costs count a layer cut and
    quantized twice), the cap moves in by the excess and is solved again. Each point is then judged
    by its :func:`predicted_size` and :func:`predicted_latency`, and points that another beats on
    both damage and cost are dropped.
    """
    summed = {k: v for k, v in caps.items() if k != "bytes"}
    cheapest = solve(profile, summed, objective=primary)
    if cheapest is None:
        return []
    base = _bases(profile)[primary]
    low = float(base + sum(min(getattr(s, primary) for s in unit.settings) for unit in profile.units))
    points: list[Point] = [cheapest]
    for cap in np.linspace(base, low, _FRONT_POINTS):
        point = solve(profile, {**summed, primary: float(cap)})
        if point is not None and all(point.choice != p.choice for p in points):
            points.append(point)
    if primary in caps:
        points += _at_cap(profile, summed, primary, caps[primary], points)
    inside = [p for p in points if _fits(p, caps)]
    inside.sort(key=lambda p: (p.damage, p.cost(primary)))
    kept: list[Point] = []
    for point in inside:
        if not kept or point.cost(primary) < kept[-1].cost(primary):
            kept.append(point)
    return kept
