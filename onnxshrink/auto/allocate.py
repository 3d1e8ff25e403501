"""Allocation: one setting per unit, the least predicted damage under cost caps, as a
multiple-choice knapsack solved exactly by ``scipy.optimize.milp`` (HiGHS); sweeping the cap of
the primary cost gives the predicted Pareto front."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from onnxshrink.auto.profile import Profile, Unit

COSTS = ("bytes", "macs")
_FRONT_POINTS = 24
_TIE = 1e-9  # per unit of normalized cost: among equal damages, the cheaper setting wins


@dataclasses.dataclass(frozen=True)
class Point:
    """An allocation (a setting index per unit) with its predicted size, MACs and damage."""

    choice: tuple[int, ...]
    size: int
    macs: int
    damage: float

    def settings(self, units: Sequence[Unit]) -> dict[str, dict[str, float | str]]:
        """The chosen value of every unit, by knob and unit name (what the report shows)."""
        table: dict[str, dict[str, float | str]] = {}
        for unit, index in zip(units, self.choice, strict=True):
            table.setdefault(unit.knob, {})[unit.name] = unit.settings[index].value
        return table

    def to_json(self, units: Sequence[Unit]) -> dict[str, Any]:
        return {"size": self.size, "macs": self.macs, "damage": self.damage, "settings": self.settings(units)}


def _columns(profile: Profile) -> tuple[np.ndarray, dict[str, np.ndarray], list[tuple[int, int]]]:
    """Per (unit, setting) column: its damage, its cost deltas, and which unit and setting it is."""
    where = [(u, s) for u, unit in enumerate(profile.units) for s in range(len(unit.settings))]
    settings = [profile.units[u].settings[s] for u, s in where]
    damage = np.array([s.damage for s in settings], dtype=np.float64)
    costs = {
        "bytes": np.array([s.bytes for s in settings], dtype=np.float64),
        "macs": np.array([s.macs for s in settings], dtype=np.float64),
    }
    return damage, costs, where


def solve(profile: Profile, caps: Mapping[str, float], objective: str = "damage") -> Point | None:
    """The allocation minimizing ``objective`` (damage, bytes or macs) with totals within ``caps``.

    Caps are totals (model bytes, MACs), not deltas. Returns None when no allocation fits them.
    """
    if not profile.units:
        return Point((), profile.size, profile.macs, 0.0) if _fits(profile.size, profile.macs, caps) else None
    damage, costs, where = _columns(profile)
    base = {"bytes": profile.size, "macs": profile.macs}
    scale = {k: max(float(np.abs(v).max()), 1.0) for k, v in costs.items()}
    if objective == "damage":
        weights = damage + _TIE * sum(costs[k] / scale[k] for k in COSTS)
    else:
        weights = costs[objective] / scale[objective] + _TIE * damage
    pairs = _overlaps(profile, where)
    count = len(where)
    total = count + len(pairs)
    rows = np.zeros((len(profile.units), total))
    for column, (owner, _) in enumerate(where):
        rows[owner, column] = 1.0
    constraints = [LinearConstraint(rows, 1.0, 1.0)]
    # y = a AND b for each overlap: y >= a + b - 1, y <= a, y <= b.
    links = np.zeros((3 * len(pairs), total))
    for pair, (a, b, _) in enumerate(pairs):
        y = count + pair
        links[3 * pair, [a, b, y]] = (1.0, 1.0, -1.0)
        links[3 * pair + 1, [y, a]] = (1.0, -1.0)
        links[3 * pair + 2, [y, b]] = (1.0, -1.0)
    if pairs:
        upper = np.tile([1.0, 0.0, 0.0], len(pairs))
        constraints.append(LinearConstraint(links, -np.inf, upper))
    bytes_row = np.concatenate([costs["bytes"], [extra for _, _, extra in pairs]])
    for key, cap in caps.items():
        limit = bytes_row if key == "bytes" else np.concatenate([costs[key], np.zeros(len(pairs))])
        constraints.append(LinearConstraint(limit[None, :], -np.inf, cap - base[key]))
    weights = np.concatenate([weights, [_TIE * extra / scale["bytes"] for _, _, extra in pairs]])
    if objective == "bytes":
        weights[count:] = [extra / scale["bytes"] for _, _, extra in pairs]
    result = milp(weights, constraints=constraints, integrality=np.ones(total), bounds=Bounds(0, 1))
    if result.x is None:
        return None
    picked = np.round(result.x).astype(bool)
    chosen = picked[:count]
    choice = [0] * len(profile.units)
    for found in np.flatnonzero(chosen):
        owner, setting = where[int(found)]
        choice[owner] = int(setting)
    size = profile.size + int(bytes_row[picked].sum())
    macs = profile.macs + int(costs["macs"][chosen].sum())
    return Point(tuple(choice), size, macs, float(damage[chosen].sum()))


def _overlaps(profile: Profile, where: Sequence[tuple[int, int]]) -> list[tuple[int, int, float]]:
    """(channel column, int8 column, bytes counted twice) for each channel setting that shrinks a
    layer whose int8 setting is also profiled: quantizing a pruned layer saves only on what is left."""
    int8 = {
        profile.units[u].name: (column, profile.units[u])
        for column, (u, s) in enumerate(where)
        if profile.units[u].knob == "int8" and s == 1
    }
    pairs = []
    shrinking: dict[str, list[tuple[int, int, int]]] = {}  # layer -> (column, unit, bytes delta)
    for column, (u, s) in enumerate(where):
        if profile.units[u].knob != "channels":
            continue
        for layer, delta in profile.units[u].settings[s].layers.items():
            if layer in int8:
                other, unit = int8[layer]
                pairs.append((column, other, unit.settings[1].bytes * delta / max(unit.weight_bytes, 1)))
            # Two groups cutting one layer (its inputs and its outputs) remove the corner twice.
            for first, first_unit, first_delta in shrinking.get(layer, []):
                if first_unit != u:
                    pairs.append((first, column, first_delta * delta / max(profile.layer_bytes.get(layer, 1), 1)))
            shrinking.setdefault(layer, []).append((column, u, delta))
    return pairs


def _fits(size: float, macs: float, caps: Mapping[str, float]) -> bool:
    return size <= caps.get("bytes", np.inf) and macs <= caps.get("macs", np.inf)


def front(profile: Profile, caps: Mapping[str, float], primary: str) -> list[Point]:
    """Least-damage allocations for caps of the primary cost swept from its cap (or the model's
    own cost) down to the smallest reachable; the other caps hold throughout. Least damage first."""
    cheapest = solve(profile, caps, objective=primary)
    if cheapest is None:
        return []
    low = float(getattr(cheapest, "size" if primary == "bytes" else "macs"))
    high = float(min(caps.get(primary, np.inf), profile.size if primary == "bytes" else profile.macs))
    points: list[Point] = []
    for cap in np.linspace(max(high, low), low, _FRONT_POINTS):
        point = solve(profile, {**caps, primary: float(cap)})
        if point is not None and all(point.choice != p.choice for p in points):
            points.append(point)
    if all(cheapest.choice != p.choice for p in points):
        points.append(cheapest)
    return sorted(points, key=lambda p: (p.damage, p.size, p.macs))
