"""Sensitivity allocation for ``prune``: measure what each layer's sparsity costs, then share the budget.

Measurement (:class:`Probe`): each measured weight is run on the sub-graph downstream of it,
the weight a graph input (:mod:`onnxshrink.overrides`); the activations entering that sub-graph
and the dense model's outputs come from one run of the model per batch of calibration inputs (at
most ``samples``, read once). Each layer alone is pruned to each sparsity of :data:`GRID`, one
layer's session open at a time. With a parallel executor in the context
(:attr:`~onnxshrink.context.PassContext.executor`: ``--executor local --workers N`` or ``ray``),
each layer is one work item (:class:`LayerDamage`): workers build the model, the feeds and their
captured activations once and measure the layers handed to them; the sums are the serial ones.
A layer's damage at sparsity ``s`` is ``sum ||y_s - y||^2 / sum ||y||^2`` over every float output
and sample: the relative squared error of the *model's* outputs, so a layer whose errors the rest
of the network amplifies counts as sensitive, and one whose errors it absorbs does not.

Allocation (:func:`allocate`): choose per-layer sparsities ``s_l`` with
``sum n_l s_l = target * sum n_l`` (``n_l`` = the layer's weight count) that minimise
``sum damage_l(s_l)``, damages assumed additive. Each curve is interpolated on a 1 % grid, made
monotone, and replaced by its lower convex hull; taking hull segments in order of damage per
pruned weight is then the exact optimum of the convexified problem, and the last segment is cut
to meet the target exactly.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from onnxshrink import overrides, progress
from onnxshrink.context import PassContext
from onnxshrink.executors import measure_all, model_bytes, parallel
from onnxshrink.passes.prune import plan as plan
from onnxshrink.runtime import run

GRID = (0.0, 0.25, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98)
MAX_SPARSITY = GRID[-1]  # no layer is pruned harder than this: an emptied layer cuts the network
_STEP = 0.01


@dataclasses.dataclass
class Curve:
    """The measured damage of one weight at each sparsity of :data:`GRID`."""

    name: str
    size: int
    damage: np.ndarray

    def to_json(self) -> dict[str, list[float]]:
        """Returns the curve as plain JSON data: the sparsity grid and the damage at each point."""
        return {"sparsity": list(GRID), "damage": [float(d) for d in self.damage]}


class _Pruner:
    """Pruned copies of one weight at any sparsity, from one stable magnitude order."""

    def __init__(self, weight: np.ndarray) -> None:
        self.weight = weight
        self.order = np.argsort(plan.magnitude(weight).ravel(), kind="stable")

    def at(self, sparsity: float) -> np.ndarray:
        flat = self.weight.ravel().copy()
        flat[self.order[: round(sparsity * flat.size)]] = 0
        return flat.reshape(self.weight.shape)


def _float_outputs(outputs: dict[str, np.ndarray]) -> Iterator[np.ndarray]:
    for value in outputs.values():
        array = np.asarray(value)
        if array.dtype.kind == "f":
            yield np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)


def _squared_error(outputs: dict[str, np.ndarray], reference: Sequence[np.ndarray]) -> float:
    return float(sum(np.sum((out - ref) ** 2) for out, ref in zip(_float_outputs(outputs), reference, strict=True)))


def _layer_damage(
    trials_model: overrides.WeightOverrides,
    name: str,
    pruner: _Pruner,
    references: Sequence[Sequence[np.ndarray]],
    start: int,
    on_trial: Callable[[], None] = lambda: None,
) -> np.ndarray:
    """One weight's summed squared output error at each sparsity of :data:`GRID` (columns before ``start``: 0)."""
    row = np.zeros(len(GRID))
    layer = trials_model.trials(name)
    for batch, reference in zip(trials_model.batches(), references, strict=True):
        for column, sparsity in enumerate(GRID[start:], start=start):
            pruned = layer.run(batch, pruner.at(sparsity))
            row[column] += _squared_error(pruned, reference)
            on_trial()
    return row


def _initializer(model: ir.Model, name: str) -> np.ndarray:
    tensor = model.graph.initializers[name].const_value
    assert tensor is not None  # the pass measures constant initializers only
    return tensor.numpy()


@dataclasses.dataclass(frozen=True)
class LayerDamage:
    """The layers of one measurement round as an executor's workload: each piece is a weight's name.

    Plain data (picklable, put once into an object store): the model serialized with its weights,
    the calibration feeds and the dense model's float outputs on them. A worker builds the
    sub-graph machinery once (:meth:`start`) and returns each weight's unscaled damage row.
    """

    model: bytes
    weights: tuple[str, ...]
    feeds: tuple[dict[str, np.ndarray], ...]
    references: tuple[tuple[np.ndarray, ...], ...]
    starts: Mapping[str, int]
    base: Mapping[str, np.ndarray] | None
    provider: str

    @property
    def timed(self) -> bool:
        """Damage is not a timing: workers may share a machine."""
        return False

    def start(self) -> tuple[overrides.WeightOverrides, dict[str, _Pruner]]:
        """The worker's state: the trials model (others replaced by ``base``) and each weight's pruner."""
        model = ir.serde.deserialize_model(onnx.load_from_string(self.model))
        pruners = {name: _Pruner(_initializer(model, name)) for name in self.weights}
        trials_model = overrides.replaced(model, self.base) if self.base else model
        context = PassContext(provider=self.provider)
        return overrides.WeightOverrides(context, trials_model, list(self.weights), list(self.feeds)), pruners

    def measure(self, state: tuple[overrides.WeightOverrides, dict[str, _Pruner]], piece: str) -> dict[str, Any]:
        """``{"weight", "damage"}``: the weight's summed squared error per sparsity."""
        trials_model, pruners = state
        row = _layer_damage(trials_model, piece, pruners[piece], self.references, self.starts[piece])
        return {"weight": piece, "damage": row.tolist()}

    def failed(self, piece: str, reason: str) -> dict[str, Any]:
        """A weight that could not be measured."""
        return {"weight": piece, "error": reason}


class Probe:
    """Trials of the given main-graph weights, each run on the part of the model downstream of it."""

    def __init__(
        self,
        context: PassContext,
        model: ir.Model,
        weights: dict[str, np.ndarray],
        *,
        pass_name: str,
        samples: int,
        batch_size: int = 32,
    ) -> None:
        """Reads the calibration inputs and runs the dense model once on them.

        Raises:
            UsageError: No calibration data, or it lacks a model input.
            RuntimeUnavailable: onnxruntime cannot load the model.
        """
        self.context = context
        self.model = model
        self.weights = weights
        inputs = [v.name for v in model.graph.inputs if v.name and v.name not in model.graph.initializers]
        # Read once (at most ``samples`` inputs): every trial reuses the same feeds, and a reader
        # that can be read only once still serves several rounds.
        feeds = list(context.calibration_batches(pass_name, inputs, samples=samples, batch_size=batch_size))
        self._dense = overrides.WeightOverrides(context, model, list(weights), feeds)
        self._feeds = feeds
        self._reference: list[list[np.ndarray]] | None = None

    def _references(self) -> list[list[np.ndarray]]:
        """The dense model's float outputs per batch."""
        if self._reference is None:
            self._reference = [list(_float_outputs(batch.outputs)) for batch in self._dense.batches()]
        return self._reference

    def curves(self, base: dict[str, np.ndarray] | None = None) -> list[Curve]:
        """Each weight pruned to each sparsity of :data:`GRID`: relative output damage vs the dense model.

        With ``base``, every other weight is replaced by its ``base`` array during a weight's trials,
        so the curves measure each layer in the company of the others' current pruning.

        Raises:
            UsageError: No calibration data, or it lacks a model input.
            RuntimeUnavailable: onnxruntime cannot run the model.
        """
        names = list(self.weights)
        references = self._references()
        # With others pruned, even a dense layer has damage; alone, its dense trial is exact.
        starts = {name: 0 if any(key != name for key in base or {}) else 1 for name in names}
        energy = sum(float(sum(np.sum(ref**2) for ref in reference)) for reference in references)
        damage = self._on_executor(names, starts, base) if parallel(self.context.executor) else None
        if damage is None:
            damage = np.zeros((len(names), len(GRID)))
            pruners = {name: _Pruner(self.weights[name]) for name in names}
            trials_model = self._dense
            if base:
                trials_model = overrides.WeightOverrides(
                    self.context, overrides.replaced(self.model, base), names, self._feeds
                )
            trials = len(self._feeds) * sum(len(GRID) - start for start in starts.values())
            with progress.task(f"sensitivity: {len(names)} layers x {len(GRID)} sparsities", total=trials) as step:
                for row, name in enumerate(names):
                    damage[row] = _layer_damage(
                        trials_model, name, pruners[name], references, starts[name], step.advance
                    )
        scale = 1.0 / energy if energy > 0 else 0.0
        return [Curve(name, self.weights[name].size, damage[row] * scale) for row, name in enumerate(names)]

    def _on_executor(
        self, names: list[str], starts: dict[str, int], base: dict[str, np.ndarray] | None
    ) -> np.ndarray | None:
        """The damage rows of ``names`` measured as work items on the context's executor.

        None when the model cannot be sent to workers (one protobuf message holds at most 2 GiB).

        Raises:
            RuntimeUnavailable: A layer could not be measured (after the executor's retries).
        """
        executor = self.context.executor
        assert executor is not None
        model = model_bytes(self.model, "sensitivity")
        if model is None:
            return None
        work = LayerDamage(
            model,
            tuple(names),
            tuple(self._feeds),
            tuple(tuple(reference) for reference in self._references()),
            starts,
            base,
            self.context.provider,
        )
        label = (
            f"sensitivity: {len(names)} layers x {len(GRID)} sparsities on {executor.workers} {executor.name} workers"
        )
        rows = measure_all(executor, work, names, label)
        return np.array([rows[name]["damage"] for name in names], dtype=np.float64).reshape(len(names), len(GRID))

    def errors(self, trials: dict[str, dict[str, np.ndarray]]) -> dict[str, float]:
        """The relative squared output error of each named set of replacement weights, run together."""
        references = self._references()
        energy = sum(float(sum(np.sum(ref**2) for ref in reference)) for reference in references)
        totals = dict.fromkeys(trials, 0.0)
        for label, replacement in trials.items():
            session = self.context.session(overrides.replaced(self.model, replacement))[0]
            for feed, reference in zip(self._feeds, references, strict=True):
                totals[label] += _squared_error(run(session, feed), reference)
        return {label: total / energy if energy > 0 else 0.0 for label, total in totals.items()}


def _lower_hull(x: np.ndarray, y: np.ndarray) -> list[int]:
    """Indices of the lower convex hull of points sorted by ``x`` (Andrew's monotone chain)."""
    hull: list[int] = []
    for i in range(len(x)):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            if (y[b] - y[a]) * (x[i] - x[a]) >= (y[i] - y[a]) * (x[b] - x[a]):
                hull.pop()
            else:
                break
        hull.append(i)
    return hull


def allocate(curves: Sequence[Curve], target: float) -> dict[str, float]:
    """Per-weight sparsities meeting ``target`` over all curves' weights with the least summed damage."""
    fine = np.round(np.arange(0.0, MAX_SPARSITY + _STEP / 2, _STEP), 6)
    segments: list[tuple[float, int, float, float]] = []  # (damage per weight, curve, from, to)
    for index, curve in enumerate(curves):
        damage = np.maximum.accumulate(np.interp(fine, GRID, curve.damage))
        hull = _lower_hull(fine, damage)
        for a, b in itertools.pairwise(hull):
            slope = (damage[b] - damage[a]) / ((fine[b] - fine[a]) * max(curve.size, 1))
            segments.append((float(slope), index, float(fine[a]), float(fine[b])))
    segments.sort(key=lambda segment: segment[0])  # stable: a curve's own segments keep their order
    chosen = [0.0] * len(curves)
    needed = target * sum(curve.size for curve in curves)
    for _, index, start, stop in segments:
        if needed <= 0:
            break
        size = curves[index].size
        take = min((stop - start) * size, needed)
        chosen[index] = start + take / size
        needed -= take
    return {curve.name: min(sparsity, MAX_SPARSITY) for curve, sparsity in zip(curves, chosen, strict=True)}
