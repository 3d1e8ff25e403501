"""The accuracy budget of ``quantize`` (ranked layers, verified float fallback) and its report helpers.

Layers are ranked by their damage alone, measured in one probe session (:func:`probe_layers`)
or, where the probe cannot reach, predicted from the calibration statistics
(:func:`predict_damage`); only the candidates of the search for the smallest float prefix of
that ranking are built and judged on the calibration samples (:func:`fit_budget`), one after
the other: 1 + O(log layers) onnxruntime sessions, not one per layer.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxshrink import progress
from onnxshrink.context import PassContext
from onnxshrink.errors import UsageError
from onnxshrink.latency import interleaved_latency
from onnxshrink.passbase import NoMatch
from onnxshrink.passes.quantize import plan as placement
from onnxshrink.passes.quantize import rewrite
from onnxshrink.passes.quantize.probe import probe_model
from onnxshrink.passes.quantize.scopes import control_flow_scopes
from onnxshrink.passes.quantize.statistics import TensorStats, mean_square, quantization_noise
from onnxshrink.runtime import run
from onnxshrink.verify import is_classifier_like

# Samples the budget is judged on: enough for a stable top-1 rate, bounded so memory stays small.
_JUDGE_SAMPLES = 256
# Judged samples per candidate run: a candidate's activations for this many are alive at once.
_STREAM_BATCH = 8
# Samples each layer's probe run reads at most (fewer when there are many layers).
_PROBE_SAMPLES = 8
# The speed check: one calibration batch of at most this many samples, timed this many rounds.
_SPEED_BATCH, _SPEED_ROUNDS = 32, 7


@dataclasses.dataclass(frozen=True)
class Damage:
    """How far a candidate's outputs are from the float model's on the judged samples."""

    cosine: float
    disagreement: float | None  # 1 - top-1 agreement, for classifier-like outputs

    def to_json(self) -> dict[str, float | None]:
        """Returns the damage as plain JSON data (``cosine``, ``disagreement``)."""
        return {"cosine": self.cosine, "disagreement": self.disagreement}

    @property
    def order(self) -> tuple[float, float]:
        """Sort key, larger is worse: top-1 disagreement first, then the cosine lost."""
        return (self.disagreement or 0.0, 1.0 - self.cosine)


class _Agreement:
    """Cosine and top-1 agreement of one output, accumulated batch by batch (as compare_output has them)."""

    def __init__(self) -> None:
        self.dot = self.ref_sq = self.cand_sq = 0.0
        self.same = True
        self.equal = True  # non-float outputs: exact match
        self.float = True
        self.matches = self.rows = 0
        self.classifier = False
        self.same_shape = True

    def add(self, ref: np.ndarray, ref_top1: np.ndarray | None, cand: Any) -> None:
        cand = np.asarray(cand)
        if ref.shape != cand.shape:
            self.same = self.equal = self.same_shape = False
            self.dot, self.ref_sq, self.cand_sq = 0.0, 1.0, 1.0
            return
        if not np.issubdtype(ref.dtype, np.floating):
            self.float = False
            self.equal = self.equal and bool(np.array_equal(ref, cand))
            return
        r = ref.astype(np.float64).ravel()
        c = cand.astype(np.float64).ravel()
        finite = np.isfinite(r)
        if not finite.all():
            r, c = r[finite], c[finite]
        self.dot += float(np.dot(r, c))
        self.ref_sq += float(np.dot(r, r))
        self.cand_sq += float(np.dot(c, c))
        self.same = self.same and bool(np.array_equal(r, c))
        if ref_top1 is not None:
            self.classifier = True
            self.matches += int(np.count_nonzero(ref_top1 == np.argmax(cand, axis=-1)))
            self.rows += ref_top1.size

    @property
    def cosine(self) -> float:
        if not self.float:
            return 1.0 if self.equal else 0.0
        norm = float(np.sqrt(self.ref_sq) * np.sqrt(self.cand_sq))
        return self.dot / norm if norm > 0 else float(self.same)

    @property
    def top1(self) -> float | None:
        return self.matches / self.rows if self.classifier and self.rows else None


class JudgedSamples:
    """The first calibration batches, up to the judged count, with the float model's outputs on them.

    Calibration fills it as it runs (the same batches of :data:`_STREAM_BATCH` the judge reads),
    so the judge reads the data and runs the float model no second time.

    Args:
        samples: Calibration samples the pass reads (at most 256 are kept).
    """

    def __init__(self, samples: int) -> None:
        self.wanted = min(samples, _JUDGE_SAMPLES)
        self.feeds: list[dict[str, np.ndarray]] = []
        self.references: list[dict[str, Any]] = []
        self.samples = 0

    def add(self, feed: Mapping[str, np.ndarray], outputs: Mapping[str, Any], count: int) -> None:
        """Keeps one calibration batch (``count`` samples) and the model's outputs on it, until enough are kept."""
        if self.samples < self.wanted:
            self.feeds.append(dict(feed))
            self.references.append({name: np.array(value) for name, value in outputs.items()})
            self.samples += count

    def clear(self) -> None:
        """Forgets every batch (calibration runs again)."""
        self.feeds.clear()
        self.references.clear()
        self.samples = 0


class Judge:
    """Runs candidates on the first calibration samples and checks them against the budget.

    The judged samples are streamed through each candidate in batches of :data:`_STREAM_BATCH`
    (the float model's outputs on them are kept), so a candidate's activations are never all
    alive at once.

    Args:
        context: Where the calibration data and the onnxruntime sessions come from.
        model: The float model; its outputs on the judged samples are the reference.
        pass_name: The pass asking, for messages.
        samples: Calibration samples the pass may read (at most 256 are judged).
        max_drop: The largest top-1 disagreement accepted, or None.
        min_cosine: The smallest cosine similarity of any output accepted, or None.
        judged: The judged samples with the float model's outputs, kept by calibration; None
            to read them and run the float model here.

    Raises:
        UsageError: ``max_drop`` is given but no output is classifier-like.
    """

    def __init__(
        self,
        context: PassContext,
        model: ir.Model,
        pass_name: str,
        samples: int,
        max_drop: float | None,
        min_cosine: float | None,
        judged: JudgedSamples | None = None,
    ) -> None:
        self.context = context
        self.model = model
        self.max_drop = max_drop
        self.min_cosine = min_cosine
        if judged is not None:
            self.feeds, self.references = judged.feeds, judged.references
        else:
            inputs = [v.name for v in model.graph.inputs if v.name and v.name not in model.graph.initializers]
            count = min(samples, _JUDGE_SAMPLES)
            batches = context.calibration_batches(pass_name, inputs, samples=count, batch_size=_STREAM_BATCH)
            self.feeds = list(batches)
            session = context.session(model)[0]
            self.references = [run(session, feed) for feed in self.feeds]
        self.samples = sum(min((len(v) for v in feed.values() if np.ndim(v)), default=1) for feed in self.feeds)
        self._top1 = [
            {name: np.argmax(v, axis=-1) if is_classifier_like(np.asarray(v)) else None for name, v in ref.items()}
            for ref in self.references
        ]
        # Totals over every judged sample: what a candidate stopped early could still reach.
        self._energy: dict[str, float] = {}
        self._rows: dict[str, int] = {}
        for reference, tops in zip(self.references, self._top1, strict=True):
            for name, value in reference.items():
                array = np.asarray(value)
                if np.issubdtype(array.dtype, np.floating):
                    finite = array[np.isfinite(array)].astype(np.float64)
                    self._energy[name] = self._energy.get(name, 0.0) + float(np.dot(finite, finite))
                if tops[name] is not None:
                    self._rows[name] = self._rows.get(name, 0) + int(np.asarray(tops[name]).size)
        first = self.references[0] if self.references else {}
        if max_drop is not None and not any(
            np.asarray(v).ndim >= 2 and np.asarray(v).dtype.kind == "f" for v in first.values()
        ):
            raise UsageError("quantize: max-drop needs a classifier-like output (top-1); use min-cosine")

    def measure(self, candidate: ir.Model) -> Damage:
        """Runs ``candidate`` on the judged samples and returns how far it is from the float model."""
        return _damage(self.context.session(candidate)[0], self.feeds, self.references, self._top1)

    def screen(self, candidate: ir.Model) -> tuple[Damage, int]:
        """Like :meth:`measure`, but stops once the budget cannot hold whatever the samples left give.

        After each batch, the best cosine the rest could reach (their outputs all aligned with the
        float model's) and the disagreement already certain are checked against the budget.

        Returns:
            The damage on the samples judged, and how many were judged (:attr:`samples`: all).
        """
        session = self.context.session(candidate)[0]
        totals: dict[str, _Agreement] = {}
        judged = 0
        for feed, reference, tops in zip(self.feeds, self.references, self._top1, strict=True):
            _accumulate(totals, run(session, feed), reference, tops)
            judged += min((len(v) for v in feed.values() if np.ndim(v)), default=1)
            if judged < self.samples and self._missed(totals):
                break
        return _summary(totals), judged

    def _missed(self, totals: Mapping[str, _Agreement]) -> bool:
        """Whether the budget is missed already, whatever the samples not yet judged give."""
        for name, total in totals.items():
            if self.min_cosine is not None and _best_cosine(total, self._energy.get(name, 0.0)) < self.min_cosine:
                return True
            rows = self._rows.get(name, 0)
            if self.max_drop is not None and rows and (total.rows - total.matches) / rows > self.max_drop:
                return True
        return False

    def holds(self, damage: Damage) -> bool:
        """Whether ``damage`` is within the budget (``min_cosine`` and ``max_drop``, where given)."""
        if self.min_cosine is not None and damage.cosine < self.min_cosine:
            return False
        drop = damage.disagreement
        return self.max_drop is None or drop is None or drop <= self.max_drop


def _damage(
    session: Any,
    feeds: Sequence[dict[str, np.ndarray]],
    references: Sequence[Mapping[str, Any]],
    top1: Sequence[Mapping[str, np.ndarray | None]],
) -> Damage:
    """How far ``session``'s outputs on ``feeds`` are from ``references``."""
    totals: dict[str, _Agreement] = {}
    for feed, reference, tops in zip(feeds, references, top1, strict=True):
        _accumulate(totals, run(session, feed), reference, tops)
    return _summary(totals)


def _accumulate(
    totals: dict[str, _Agreement],
    outputs: Mapping[str, Any],
    reference: Mapping[str, Any],
    tops: Mapping[str, np.ndarray | None],
) -> None:
    """Adds one batch's outputs to each output's running agreement."""
    for name, ref in reference.items():
        totals.setdefault(name, _Agreement()).add(np.asarray(ref), tops[name], outputs[name])


def _summary(totals: Mapping[str, _Agreement]) -> Damage:
    """The damage of the batches accumulated: the smallest cosine and the largest disagreement of any output."""
    agreements = [t.top1 for t in totals.values() if t.top1 is not None]
    cosine = min((t.cosine for t in totals.values()), default=1.0)
    return Damage(cosine, 1.0 - min(agreements) if agreements else None)


def _best_cosine(total: _Agreement, energy: float) -> float:
    """The largest cosine ``total`` can end with when the float model's outputs left hold ``energy - ref_sq``.

    With ``D``, ``C`` the dot product and candidate energy so far and ``r`` the reference energy
    left, the best the rest can do is align with the reference: ``sqrt((D²/C + r) / energy)``
    (``sqrt(r / energy)`` when ``D <= 0``). Non-float outputs and mismatched shapes are final.
    """
    if not total.float or not total.same_shape:
        return total.cosine
    if energy <= 0:
        return 1.0
    left = max(energy - total.ref_sq, 0.0)
    reached = total.dot**2 / total.cand_sq if total.dot > 0 and total.cand_sq > 0 else 0.0
    return float(np.sqrt(min((reached + left) / energy, 1.0)))


def quantized_copy(model: ir.Model, plan: placement.QuantPlan, weight_bits: int) -> ir.Model:
    """A copy of ``model`` rewritten by ``plan`` (the model is not changed)."""
    copy = model.clone()
    rewrite.apply_plan(copy, plan, weight_bits)
    return copy


def layer_outputs(model: ir.Model, plan: placement.QuantPlan) -> list[str]:
    """The output tensor of every candidate layer of ``plan``: calibration captures them for the prediction."""
    nodes = _nodes(model)
    names = [nodes[key].outputs[0].name for key, layer in plan.layers.items() if layer.op_type in placement.TRT_LAYERS]
    return [name for name in names if name]


def _nodes(model: ir.Model) -> dict[str, ir.Node]:
    """Every node of the main graph and the If/Loop/Scan bodies, by plan key."""
    nodes: dict[str, ir.Node] = {}
    for scope in control_flow_scopes(model):
        nodes.update(placement.GraphView(scope.graph, scope.prefix).nodes)
    return nodes


def predict_damage(
    model: ir.Model, plan: placement.QuantPlan, tensors: Mapping[str, TensorStats], weight_bits: int
) -> dict[str, float]:
    """Each layer's predicted damage: the noise quantization adds to its output, over the output's energy.

    Read from what calibration collected, with no model run. For a layer ``y = W x`` (``Wj``:
    the weights of one output channel, ``E``: the mean over the calibration values):

    - the rounding noise of its input Q (variance ``σx²``, from the histogram of ``x`` with the
      plan's qparams: :func:`~onnxshrink.passes.quantize.statistics.quantization_noise`) reaches
      each output as ``σx² ||Wj||²``;
    - the weight's rounding error ``ΔW`` reaches it as ``E[x²] ||ΔWj||²``;
    - its own output Q adds ``σy²``;

    each averaged over the output channels and divided by ``E[y²]`` (the layer's output, captured
    by calibration; ``E[x²] ||Wj||²`` where it was not). A layer of two activations (attention)
    adds its inputs' relative noises ``σ²/E[x²]``. Noise a layer's successors amplify or
    average out is not modelled: the prediction ranks, the judged candidates decide.

    Args:
        model: The float model the plan was made for.
        plan: The placement with every candidate layer quantized.
        tensors: The calibration statistics, by tensor (a data-movement chain's root, and
            the layers' outputs from :func:`layer_outputs`).
        weight_bits: Bits of the quantized weights.

    Returns:
        Layer key -> predicted relative noise energy of its output (0 is harmless).
    """
    nodes = _nodes(model)
    predicted: dict[str, float] = {}
    for key, layer in plan.layers.items():
        if layer.op_type not in placement.TRT_LAYERS:
            continue
        node = nodes[key]
        inputs = [_noise(plan.activations.get(name), tensors) for name in layer.inputs]
        noise = 0.0
        if layer.weight is None:  # two activations: their relative noises add
            noise = sum(error / square for error, square in inputs if square > 0)
        else:
            weight = node.inputs[layer.weight.index]
            assert weight is not None and weight.const_value is not None
            array = weight.const_value.numpy()
            output_axis = placement.weight_axis(node, array.ndim)
            energy, error = _weight_energies(array, layer.weight.axis, output_axis, weight_bits)
            input_error, input_square = inputs[0] if inputs else (0.0, 0.0)
            output = tensors.get(node.outputs[0].name or "")
            signal = mean_square(output) if output is not None else 0.0
            signal = signal if signal > 0 else input_square * energy
            noise = (input_error * energy + input_square * error) / signal if signal > 0 else 0.0
        if layer.output_q and layer.output:
            error, square = _noise(plan.activations.get(layer.output), tensors)
            noise += error / square if square > 0 else 0.0
        predicted[key] = noise
    return predicted


def _noise(q: placement.ActivationQ | None, tensors: Mapping[str, TensorStats]) -> tuple[float, float]:
    """``(σ², E[x²])`` of one quantized activation: its rounding noise and mean square ((0, 0) without stats)."""
    stats = tensors.get(q.root) if q is not None else None
    if q is None or stats is None:
        return 0.0, 0.0
    return quantization_noise(stats, q.params), mean_square(stats)


def _weight_energies(weight: np.ndarray, axis: int | None, output_axis: int | None, bits: int) -> tuple[float, float]:
    """``||Wj||²`` and ``||ΔWj||²`` (``ΔW = W - deq(Q(W))``) averaged over the output channels ``j``.

    The weight is rounded as the rewrite does: symmetric, per ``axis`` (one scale when None);
    ``output_axis`` holds the output channels (None: one).
    """
    values, scales = placement.quantize_weight(weight, axis, bits)
    shape = [1] * weight.ndim
    if axis is not None:
        shape[axis] = -1
    error = weight.astype(np.float64) - values.astype(np.float64) * scales.astype(np.float64).reshape(shape)
    channels = weight.shape[output_axis] if output_axis is not None else 1
    return float(np.vdot(weight, weight)) / channels, float(np.vdot(error, error)) / channels


def probe_layers(
    judge: Judge, plan: placement.QuantPlan, layers: Sequence[str], weight_bits: int
) -> tuple[dict[str, Damage], int]:
    """Each main-graph layer's damage with it alone quantized, measured in one session on a few samples.

    The probe model (:func:`~onnxshrink.passes.quantize.probe.probe_model`) runs once per layer
    on the first judged samples, ``max(1, min(8, judged // (2 * layers)))`` of them, so all layers
    together cost about half a pass over the judged samples (a probe run costs more per sample than
    a candidate's: its layers read computed weights, which onnxruntime cannot pre-pack); its float
    run (every switch off) is the reference.
    Layers inside If/Loop/Scan bodies are not measured (absent from the result).

    Returns:
        Layer key -> its damage alone, and the samples each probe run read (0: none ran).
    """
    if not judge.feeds or not layers:
        return {}, 0
    probe, switches = probe_model(judge.model, plan, layers, weight_bits)
    if not switches:
        return {}, 0
    feed = judge.feeds[0]
    count = max(1, min(_PROBE_SAMPLES, judge.samples // (2 * len(switches))))
    batch = min((len(v) for v in feed.values() if np.ndim(v)), default=1)
    feed = {name: v[:count] if np.ndim(v) and len(v) == batch else v for name, v in feed.items()}
    session = judge.context.session(probe)[0]
    off = {name: np.array(False) for name in switches.values()}
    reference = run(session, {**feed, **off})
    top1 = {name: np.argmax(v, axis=-1) if is_classifier_like(np.asarray(v)) else None for name, v in reference.items()}
    damages: dict[str, Damage] = {}
    with progress.task(f"quantize budget: {len(switches)} layers probed alone", total=len(switches)) as step:
        for key, name in switches.items():
            damages[key] = _damage(session, [{**feed, **off, name: np.array(True)}], [reference], [top1])
            step.advance()
    return damages, count


@dataclasses.dataclass(frozen=True)
class Trial:
    """One verified candidate: the first ``float_layers`` layers of the ranking kept float."""

    float_layers: int
    damage: Damage
    holds: bool
    samples: int  # judged: fewer than all when the budget was missed for certain before the end

    def to_json(self) -> dict[str, Any]:
        """``{"float_layers", "cosine", "disagreement", "holds", "samples"}``."""
        damage = self.damage.to_json()
        return {"float_layers": self.float_layers, **damage, "holds": self.holds, "samples": self.samples}


def _needed_tail(judge: Judge, low: tuple[float, Damage], high: tuple[float, Damage] | None) -> float:
    """The damage left (by the ranking's scores) that should just meet the budget.

    ``1 - cosine`` grows like the noise energy, top-1 disagreement like its square root (the
    fraction of margins one noise standard deviation crosses), so each failing budget's
    ``1 - cosine`` or squared disagreement is taken as linear in the damage left, through the
    last failing candidate ``low`` and the last holding one ``high`` (none yet: no damage left,
    none measured); the tightest budget decides.

    Args:
        judge: Holds the budgets.
        low: The damage left and the measured damage of a candidate that misses the budget.
        high: The same of one that meets it, or None.
    """

    def excess(damage: Damage) -> list[tuple[float, float]]:
        """(measured, allowed) of each budget in the units that grow linearly with the noise."""
        pairs = []
        if judge.min_cosine is not None:
            pairs.append((1.0 - damage.cosine, 1.0 - judge.min_cosine))
        if judge.max_drop is not None and damage.disagreement is not None:
            pairs.append((damage.disagreement**2, judge.max_drop**2))
        return pairs

    low_tail, low_damage = low
    high_tail, high_pairs = (0.0, None) if high is None else (high[0], excess(high[1]))
    needed = [low_tail]
    for index, (measured, allowed) in enumerate(excess(low_damage)):
        base = 0.0 if high_pairs is None else high_pairs[index][0]
        if measured > allowed and measured > base:
            needed.append(high_tail + (allowed - base) * (low_tail - high_tail) / (measured - base))
    return min(needed)


def _scores(layers: Sequence[str], predicted: Mapping[str, float], alone: Mapping[str, Damage]) -> dict[str, float]:
    """Each layer's rank score: ``1 - cosine`` of its probe run, else its prediction scaled to the probes.

    A layer without a probe run (inside an If/Loop/Scan body) gets its predicted noise times the
    median ratio of measured to predicted damage over the probed layers.
    """
    ratios = [(1.0 - alone[k].cosine) / predicted[k] for k in layers if k in alone and predicted[k] > 0]
    scale = statistics.median(ratios) if ratios else 1.0
    return {key: 1.0 - alone[key].cosine if key in alone else predicted[key] * scale for key in layers}


def fit_budget(
    judge: Judge,
    plan: placement.QuantPlan,
    make_plan: Callable[[tuple[str, ...]], placement.QuantPlan],
    weight_bits: int,
    tensors: Mapping[str, TensorStats],
) -> tuple[placement.QuantPlan, dict[str, Any]]:
    """Keeps the layers that hurt most float until the budget holds, on judged candidates.

    The fully quantized candidate is judged first; when it meets the budget it is the result and
    nothing is ranked. Otherwise layers are ranked by their damage alone, probed in one session
    (:func:`probe_layers`), or where the probe cannot reach them by :func:`predict_damage` (no
    model run), and the smallest float prefix of the ranking that meets the budget is searched
    with real candidates: each guess interpolates the
    damage left (the sum of the scores past it) between the nearest judged candidates
    (:func:`_needed_tail`); after two guesses in a row that did not halve the interval comes a
    bisection, so at most ``2 + 3 * bits(layers)`` candidates are built. A candidate stops
    early once the budget is missed for certain (:meth:`Judge.screen`). The result is always a
    judged candidate, run on every judged sample (the float end of the ranking included).

    Args:
        judge: The judged samples, the float model's outputs on them, and the budget.
        plan: The placement with every candidate layer quantized.
        make_plan: The placement with the named layers kept float.
        weight_bits: Bits of the quantized weights.
        tensors: The calibration statistics, by tensor (for :func:`predict_damage`).

    Returns:
        The plan and its record: each layer's prediction, damage alone (both None when no
        ranking was needed) and decision, every judged candidate.
    """
    layers = [key for key, layer in plan.layers.items() if layer.op_type in placement.TRT_LAYERS]
    order = list(layers)  # the ranking, once made: verify(k) keeps its first k layers float
    trials: dict[int, Trial] = {}

    def verify(count: int) -> Trial:
        candidate = quantized_copy(judge.model, make_plan(tuple(order[:count])), weight_bits)
        damage, samples = judge.screen(candidate)
        trials[count] = Trial(count, damage, judge.holds(damage) and samples == judge.samples, samples)
        return trials[count]

    with progress.task("quantize budget: judging the fully quantized model", total=1) as step:
        verify(0)
        step.advance()
    predicted: dict[str, float] = {}
    alone: dict[str, Damage] = {}
    probe_samples = 0
    if not trials[0].holds and layers:  # a ranking is needed only when some layer must stay float
        predicted = predict_damage(judge.model, plan, tensors, weight_bits)
        alone, probe_samples = probe_layers(judge, plan, layers, weight_bits)
        scores = _scores(layers, predicted, alone)
        order.sort(key=lambda key: scores[key], reverse=True)
        # tails[k]: the damage left, by the scores, with the first k layers of the ranking float.
        tails = [float(sum(scores[key] for key in order[k:])) for k in range(len(order) + 1)]
        # Every third step at most halves the interval: a bisection after two guesses that did not.
        limit = 1 + 3 * len(order).bit_length()
        label = f"quantize budget: verifying candidates ({len(layers)} layers ranked)"
        with progress.task(label, total=limit) as step:
            low, high = 0, len(order)  # the ranking's first `low` float misses; the first `high` float holds
            stalls = 0  # guesses in a row that did not halve the interval
            while high - low > 1:
                width, bisecting = high - low, stalls == 2
                if bisecting:
                    count = (low + high) // 2
                else:
                    holding = (tails[high], trials[high].damage) if high in trials else None
                    needed = _needed_tail(judge, (tails[low], trials[low].damage), holding)
                    count = next(k for k in range(low + 1, len(order) + 1) if tails[k] <= needed or k == high)
                    count = min(max(count, low + 1), high - 1)
                if verify(count).holds:
                    high = count
                else:
                    low = count
                stalls = 0 if bisecting or 2 * (high - low) <= width else stalls + 1
                step.advance()
            if high not in trials:
                verify(high)
                step.advance()
    kept = min((count for count, trial in trials.items() if trial.holds), default=len(order))
    result = trials[kept] if kept in trials else trials[max(trials)]
    float_layers = set(order[:kept])
    record = {
        "max_drop": judge.max_drop,
        "min_cosine": judge.min_cosine,
        "samples": judge.samples,
        "all_quantized": trials[0].damage.to_json(),
        "result": result.damage.to_json(),
        "met": result.holds,
        "float_layers": kept,
        "candidates": [trial.to_json() for trial in trials.values()],
        "probe_samples": probe_samples,
        "layers": {
            key: {
                "predicted": predicted.get(key),
                "alone": alone[key].to_json() if key in alone else None,
                "decision": "float" if key in float_layers else "int8",
            }
            for key in layers
        },
    }
    return make_plan(tuple(order[:kept])), record


def node_summaries(plan: placement.QuantPlan) -> dict[str, dict[str, Any]]:
    """Per quantized node: op, input/output qparams, weight and bias kinds."""
    summaries: dict[str, dict[str, Any]] = {}
    for key, layer in plan.layers.items():
        entry: dict[str, Any] = {"op": layer.op_type}
        entry["inputs"] = [plan.activations[n].params.to_json() for n in layer.inputs if n in plan.activations]
        if layer.output is not None and layer.output in plan.activations:
            entry["output"] = plan.activations[layer.output].params.to_json()
        if layer.weight is not None:
            axis = layer.weight.axis
            entry["weight"] = f"s8 symmetric, per-channel axis {axis}" if axis is not None else "s8 per-tensor"
            entry["bias"] = layer.bias
        summaries[key] = entry
    return summaries


def weight_layer_problem(node: ir.Node, mode: str, bits: str) -> NoMatch | None:
    """Why a layer cannot take dynamic or weight-only quantization, or None when it can."""
    if node.op_type not in ("MatMul", "Gemm"):
        return NoMatch(f"{mode}: only MatMul/Gemm (ConvInteger has no fast CPU kernel)")
    why = placement.layer_problem(node)
    if why is not None:
        return why
    if node.op_type == "Gemm":
        alpha = node.attributes.get_float("alpha", 1.0)
        beta = node.attributes.get_float("beta", 1.0)
        if (mode == "dynamic" or bits != "s8") and (alpha != 1.0 or beta != 1.0):
            return NoMatch(f"Gemm with alpha={alpha}, beta={beta}")
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        if mode == "dynamic" and bias is not None and not placement.is_constant(bias):
            return NoMatch("Gemm bias is not a constant")
    return None


def measure_speedup(
    context: PassContext, original: ir.Model, quantized: ir.Model, pass_name: str, samples: int
) -> dict[str, float]:
    """Returns the median run time of the float and the quantized model on one calibration batch.

    The two are timed interleaved (round-robin) so machine noise hits both alike.
    """
    inputs = [v.name for v in original.graph.inputs if v.name and v.name not in original.graph.initializers]
    count = min(samples, _SPEED_BATCH)
    feed = next(iter(context.calibration_batches(pass_name, inputs, samples=count, batch_size=count)))
    float_session, quantized_session = context.session(original)[0], context.session(quantized)[0]
    with progress.task("quantize speed check: float vs int8", total=_SPEED_ROUNDS) as step:
        times = interleaved_latency(
            {"float": lambda: run(float_session, feed), "quantized": lambda: run(quantized_session, feed)},
            rounds=_SPEED_ROUNDS,
            on_round=lambda _: step.advance(),
        )
    float_ms, quantized_ms = statistics.median(times["float"]), statistics.median(times["quantized"])
    count = len(next(iter(feed.values()))) if feed else 0
    return {"batch": count, "float_ms": float_ms, "quantized_ms": quantized_ms, "speedup": float_ms / quantized_ms}
