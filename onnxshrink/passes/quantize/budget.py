"""The accuracy budget of ``quantize`` (per-layer sensitivity, float fallback) and its report helpers.

Each layer's sensitivity (the candidate with every other layer quantized) is independent of the
others': with a parallel executor in the context (``--workers N``, ``--executor ray``) the
candidates are built and judged as work items (:class:`LayerCandidates`), one per layer.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from onnxshrink import progress
from onnxshrink.context import PassContext
from onnxshrink.errors import UsageError
from onnxshrink.executors import measure_all, model_bytes, parallel
from onnxshrink.latency import interleaved_latency
from onnxshrink.passbase import NoMatch
from onnxshrink.passes.quantize import plan as placement
from onnxshrink.passes.quantize import rewrite
from onnxshrink.runtime import run
from onnxshrink.verify import is_classifier_like

# Samples the budget is judged on: enough for a stable top-1 rate, bounded so memory stays small.
_JUDGE_SAMPLES = 256
# Judged samples per candidate run: a candidate's activations for this many are alive at once.
_STREAM_BATCH = 8
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

    def add(self, ref: np.ndarray, ref_top1: np.ndarray | None, cand: Any) -> None:
        cand = np.asarray(cand)
        if ref.shape != cand.shape:
            self.same = self.equal = False
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
    ) -> None:
        self.context = context
        self.model = model
        self.max_drop = max_drop
        self.min_cosine = min_cosine
        inputs = [v.name for v in model.graph.inputs if v.name and v.name not in model.graph.initializers]
        count = min(samples, _JUDGE_SAMPLES)
        self.feeds = list(context.calibration_batches(pass_name, inputs, samples=count, batch_size=_STREAM_BATCH))
        self.samples = sum(min((len(v) for v in feed.values() if np.ndim(v)), default=1) for feed in self.feeds)
        session = context.session(model)[0]
        self.references = [run(session, feed) for feed in self.feeds]
        self._top1 = [
            {name: np.argmax(v, axis=-1) if is_classifier_like(np.asarray(v)) else None for name, v in ref.items()}
            for ref in self.references
        ]
        first = self.references[0] if self.references else {}
        if max_drop is not None and not any(
            np.asarray(v).ndim >= 2 and np.asarray(v).dtype.kind == "f" for v in first.values()
        ):
            raise UsageError("quantize: max-drop needs a classifier-like output (top-1); use min-cosine")

    def measure(self, candidate: ir.Model) -> Damage:
        """Runs ``candidate`` on the judged samples and returns how far it is from the float model."""
        return _damage(self.context.session(candidate)[0], self.feeds, self.references, self._top1)

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
        outputs = run(session, feed)
        for name, ref in reference.items():
            totals.setdefault(name, _Agreement()).add(np.asarray(ref), tops[name], outputs[name])
    agreements = [t.top1 for t in totals.values() if t.top1 is not None]
    cosine = min((t.cosine for t in totals.values()), default=1.0)
    return Damage(cosine, 1.0 - min(agreements) if agreements else None)


def quantized_copy(model: ir.Model, plan: placement.QuantPlan, weight_bits: int) -> ir.Model:
    """A copy of ``model`` rewritten by ``plan`` (the model is not changed)."""
    copy = model.clone()
    rewrite.apply_plan(copy, plan, weight_bits)
    return copy


@dataclasses.dataclass(frozen=True)
class LayerCandidates:
    """Each layer's sensitivity as an executor's workload: a piece is a layer key.

    The layer's candidate is the float model with every other layer quantized (``plans[key]``),
    judged as :class:`Judge` does. Plain data (picklable, put once into an object store): the float
    model serialized, the plans, and the judged samples with the float model's outputs on them.
    """

    model: bytes
    plans: Mapping[str, placement.QuantPlan]
    weight_bits: int
    feeds: tuple[dict[str, np.ndarray], ...]
    references: tuple[Mapping[str, Any], ...]
    top1: tuple[Mapping[str, np.ndarray | None], ...]
    provider: str

    @property
    def timed(self) -> bool:
        """Damage is not a timing: workers may share a machine."""
        return False

    def start(self) -> ir.Model:
        """The worker's state: the float model."""
        return ir.serde.deserialize_model(onnx.load_from_string(self.model))

    def measure(self, model: ir.Model, key: str) -> dict[str, Any]:
        """``{"key", "cosine", "disagreement"}`` of the layer's candidate."""
        candidate = quantized_copy(model, self.plans[key], self.weight_bits)
        session = PassContext(provider=self.provider).session(candidate)[0]
        return {"key": key, **_damage(session, self.feeds, self.references, self.top1).to_json()}

    def failed(self, key: str, reason: str) -> dict[str, Any]:
        """A layer whose candidate could not be judged."""
        return {"key": key, "error": reason}


def _sensitivity_on_executor(
    judge: Judge, layers: list[str], make_plan: Callable[[tuple[str, ...]], placement.QuantPlan], weight_bits: int
) -> dict[str, Damage] | None:
    """Each layer's damage, its candidate built and judged on the context's executor.

    None when the model cannot be sent to workers (one protobuf message holds at most 2 GiB).

    Raises:
        RuntimeUnavailable: A candidate could not be judged (after the executor's retries).
    """
    executor = judge.context.executor
    assert executor is not None
    model = model_bytes(judge.model, "quantize budget")
    if model is None:
        return None
    work = LayerCandidates(
        model,
        {key: make_plan(tuple(k for k in layers if k != key)) for key in layers},
        weight_bits,
        tuple(judge.feeds),
        tuple(judge.references),
        tuple(judge._top1),
        judge.context.provider,
    )
    label = f"quantize budget: {len(layers)} layers on {executor.workers} {executor.name} workers"
    results = measure_all(executor, work, layers, label)
    return {key: Damage(results[key]["cosine"], results[key]["disagreement"]) for key in layers}


def fit_budget(
    judge: Judge,
    plan: placement.QuantPlan,
    make_plan: Callable[[tuple[str, ...]], placement.QuantPlan],
    weight_bits: int,
) -> tuple[placement.QuantPlan, dict[str, Any]]:
    """Keeps the most sensitive layers float until the budget holds; returns the plan and its record."""
    layers = [key for key, layer in plan.layers.items() if layer.op_type in placement.TRT_LAYERS]

    def applied(model: ir.Model, plan: placement.QuantPlan) -> ir.Model:
        return quantized_copy(model, plan, weight_bits)

    sensitivity: dict[str, Damage] | None = None
    if parallel(judge.context.executor) and len(layers) > 1:
        sensitivity = _sensitivity_on_executor(judge, layers, make_plan, weight_bits)
    if sensitivity is None:
        sensitivity = {}
        with progress.task(f"quantize budget: {len(layers)} layers one at a time", total=len(layers)) as step:
            for key in layers:
                alone = make_plan(tuple(k for k in layers if k != key))
                sensitivity[key] = judge.measure(applied(judge.model, alone))
                step.advance()
    order = sorted(layers, key=lambda k: sensitivity[k].order, reverse=True)
    kept_float: list[str] = []
    current = judge.measure(applied(judge.model, plan))
    first = current
    # At most one trial per layer; it usually stops far earlier, so the total is an upper bound.
    with progress.task("quantize budget: keeping layers float", total=len(order)) as step:
        while not judge.holds(current) and len(kept_float) < len(order):
            kept_float.append(order[len(kept_float)])
            plan = make_plan(tuple(kept_float))
            current = judge.measure(applied(judge.model, plan))
            step.advance()
    record = {
        "max_drop": judge.max_drop,
        "min_cosine": judge.min_cosine,
        "samples": judge.samples,
        "all_quantized": first.to_json(),
        "result": current.to_json(),
        "met": judge.holds(current),
        "layers": {
            key: {**sensitivity[key].to_json(), "decision": "float" if key in kept_float else "int8"} for key in layers
        },
    }
    return plan, record


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
