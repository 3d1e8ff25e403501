"""``prune-channels``: structured removal of whole channels through their dependency groups (lossy)."""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import onnx_ir as ir

from onnxshrink import channels
from onnxshrink.activations import capture
from onnxshrink.channels import ChannelGroup, Site
from onnxshrink.errors import UsageError
from onnxshrink.passbase import ShrinkPass, ShrinkPassResult
from onnxshrink.registry import register_pass


@dataclasses.dataclass(frozen=True)
class PruneChannelsOptions:
    ratio: float = dataclasses.field(
        default=0.25, metadata={"help": "fraction of each group's channels removed, 0 <= ratio < 1"}
    )
    criterion: Literal["l1", "l2", "bn-gamma", "activation"] = dataclasses.field(
        default="l2",
        metadata={
            "help": "channel importance: norm of its producer and consumer weight slices (l1, l2), "
            "|BatchNormalization scale| (bn-gamma), or mean |output| on calibration data (activation, needs --calib)"
        },
    )
    round_to: int = dataclasses.field(
        default=8, metadata={"help": "channels kept per group are a multiple of this (1: no rounding)"}
    )
    scope: Literal["layer", "global"] = dataclasses.field(
        default="layer",
        metadata={"help": "layer: every group loses `ratio`; global: one threshold over all groups' scores"},
    )
    include: tuple[str, ...] = dataclasses.field(
        default=(), metadata={"help": "prune only groups with a producer whose op type or name glob matches"}
    )
    exclude: tuple[str, ...] = dataclasses.field(
        default=(), metadata={"help": "never prune groups with a producer whose op type or name glob matches"}
    )
    min_channels: int = dataclasses.field(default=8, metadata={"help": "never keep fewer channels in a group"})
    samples: int = dataclasses.field(default=256, metadata={"help": "calibration samples read (activation)"})
    dead: Literal["off", "only"] = dataclasses.field(
        default="off",
        metadata={
            "help": "only: remove just the channels that are provably constant (all-zero weights), folding "
            "their value into the consumers' biases; exact (ratio and criterion are ignored)"
        },
    )

    def __post_init__(self) -> None:
        if not isinstance(self.ratio, (int, float)) or not 0 <= self.ratio < 1:
            raise UsageError(f"prune-channels: ratio must be a number with 0 <= ratio < 1, got {self.ratio!r}")
        if self.criterion not in ("l1", "l2", "bn-gamma", "activation"):
            raise UsageError(f"prune-channels: bad criterion {self.criterion!r}; valid: l1, l2, bn-gamma, activation")
        if self.scope not in ("layer", "global"):
            raise UsageError(f"prune-channels: bad scope {self.scope!r}; valid: layer, global")
        if self.round_to < 1:
            raise UsageError(f"prune-channels: round-to must be >= 1, got {self.round_to}")
        if self.min_channels < 1:
            raise UsageError(f"prune-channels: min-channels must be >= 1, got {self.min_channels}")
        if self.samples < 1:
            raise UsageError(f"prune-channels: samples must be >= 1, got {self.samples}")
        if self.dead not in ("off", "only"):
            raise UsageError(f"prune-channels: bad dead {self.dead!r}; valid: off, only")


def _const(site: Site) -> np.ndarray:
    assert site.node is not None
    value = site.node.inputs[site.index]
    tensor = ir.convenience.get_const_tensor(value) if value is not None else None
    assert tensor is not None
    return tensor.numpy().astype(np.float64)


def _per_channel(group: ChannelGroup, site: Site, values: np.ndarray) -> np.ndarray:
    """Adds a per-position score of ``site`` onto the group's local channels."""
    total = np.zeros(group.size)
    local = group.local(site)
    np.add.at(total, local[local >= 0], values[local >= 0])
    return total


def _slices(site: Site) -> np.ndarray:
    """The site's weight as ``[channel position, everything else]`` (a flattened channel's features joined)."""
    weight = _const(site)
    groups = int(site.extra.get("groups", 1))
    if site.kind == "consumer" and groups > 1:  # grouped Conv: position p reads W[rows of its group, p % per]
        rows = weight.shape[0] // groups
        parts = [np.moveaxis(weight[g * rows : (g + 1) * rows], 1, 0) for g in range(groups)]
        return np.concatenate([p.reshape(p.shape[0], -1) for p in parts], axis=0)
    moved = np.moveaxis(weight, site.axis, 0)
    return moved.reshape(len(site.classes), -1)


def _weight_scores(group: ChannelGroup, criterion: str) -> np.ndarray:
    """Per channel: the l1 (or l2) norm of its slices in the group's producer and consumer weights."""
    total = np.zeros(group.size)
    for site in group.of_kind("producer", "consumer"):
        moved = _slices(site)
        score = np.abs(moved).sum(axis=1) if criterion == "l1" else (moved * moved).sum(axis=1)
        total += _per_channel(group, site, score)
    return total if criterion == "l1" else np.sqrt(total)


def _gamma_scores(group: ChannelGroup) -> np.ndarray | None:
    sites = [s for s in group.of_kind("param") if s.node is not None and s.node.op_type == "BatchNormalization"]
    scales = [s for s in sites if s.index == 1]
    if not scales:
        return None
    return sum((_per_channel(group, s, np.abs(_const(s))) for s in scales), np.zeros(group.size))


def _static_batch(model: ir.Model) -> int:
    """The batch size a model with a fixed first input dimension takes; 32 when it is dynamic."""
    dims = {v.shape[0] for v in model.graph.inputs if v.shape is not None and len(v.shape) > 0}
    fixed = [d for d in dims if isinstance(d, int)]
    return fixed[0] if fixed and len(dims) == 1 else 32


def _producer_axis(site: Site, rank: int) -> int:
    assert site.node is not None
    return 1 if site.node.op_type in ("Conv", "ConvTranspose") else rank - 1


def _matches(site: Site, patterns: tuple[str, ...]) -> str | None:
    node = site.node
    assert node is not None
    name = node.name or ""
    return next((p for p in patterns if p == node.op_type or fnmatch.fnmatchcase(name, p)), None)


def _keep_count(size: int, removed: int, options: PruneChannelsOptions) -> int:
    """What a group keeps: a multiple of ``round-to`` near ``size - removed``, within its bounds."""
    target = size - removed
    step = options.round_to
    keep = int(step * np.floor(target / step + 0.5)) if step > 1 else target
    floor = max(options.min_channels, step)
    return int(min(size, max(keep, min(floor, size))))


@register_pass
class PruneChannelsPass(ShrinkPass):
    """Removes whole channels (lossy): producer outputs and every tensor that carries them.

    Rules (channel groups from ``onnxshrink.channels``, built for removal):

    1. A group is refused, with its reason in ``stats["refused"]``, when it reaches a graph input
       or output, a subgraph, an op without a removal rule, or an op for which removal is
       lossy beyond the consumer (reductions, Softmax or LayerNormalization over channels, Shape).
    2. ``include``/``exclude`` select groups by their producers' op types or node-name globs.
    3. Each channel gets a score: the l1 (or l2, the default) norm of all its weight slices,
       producer rows and consumer input columns together (Torch-Pruning's group norm: on the
       digits CNN, 25 % removed keeps 92 % accuracy where producer rows alone keep 34 %), the
       ``|scale|`` of its BatchNormalizations (``bn-gamma``; groups without one are skipped),
       or its mean ``|output|`` at the producers on calibration data (``activation``).
    4. ``scope=layer``: each group drops ``round(ratio * channels)`` of its lowest scores;
       ``scope=global``: scores divided by their group's mean compete under one threshold.
       What a group keeps is then rounded to the nearest multiple of ``round-to`` and never
       below ``min-channels`` (nor ``round-to``). A group of several blocks (Split, Slice and
       Concat segments, grouped Conv groups) loses the same share of every block, at least one
       channel kept per block, and is not rounded.
    5. Removal deletes producer rows, biases, BatchNormalization statistics, per-channel
       constants, depthwise filters (and their ``group``) and consumer input slices; it rewrites
       Split sizes, Slice bounds and Reshape constants that carry the count. The result equals
       the original with only the consumers' input slices of the removed channels set to zero.
    6. ``dead=only`` (exact; ``ratio``/``criterion`` ignored): a channel goes only when it is
       provably constant: its producers' weight slices are all zero, so it carries its bias,
       mapped through the ops on its way (BatchNormalization, activations, per-channel
       constants, pools, depthwise Conv) to a constant ``k`` at every consumer. ``k`` is folded
       into the consumer's bias: Conv ``b += k * sum(W[:, c])`` only when the Conv has no
       padding (zero padding would see 0, not ``k``, at the borders), Gemm ``C += alpha * k *
       sum(B[c]) / beta`` (C created when missing); with ``k == 0`` any consumer is fine. A
       group keeps at least one channel. (Channels that are only dead on calibration data are
       not removed.)
    """

    name = "prune-channels"
    exact = False
    Options = PruneChannelsOptions

    def call(self, model: ir.Model) -> ShrinkPassResult:
        options: PruneChannelsOptions = self.options
        plan = channels.analyze(model, "remove")
        refused = {g.label: g.reasons[0] for g in plan.groups if not g.ok}
        skipped: dict[str, str] = {}
        chosen: list[ChannelGroup] = []
        for group in channels.iter_ok(plan):
            producers = group.of_kind("producer")
            if options.include and not any(_matches(s, options.include) for s in producers):
                skipped[group.label] = f"not matched by include={','.join(options.include)}"
            elif options.exclude and (hit := next((p for s in producers if (p := _matches(s, options.exclude))), None)):
                skipped[group.label] = f"excluded by '{hit}'"
            else:
                chosen.append(group)
        folded = 0
        if options.dead == "only":
            plan, keeps, folded = _remove_dead(model, plan, chosen)
            chosen = [g for g in plan.groups if g.index in keeps]
        else:
            scores = self._scores(model, chosen, options, skipped)
            keeps = self._keeps(chosen, scores, options)
        per_group: dict[str, dict[str, int]] = {}
        changed = {}
        for group in chosen:
            if group.index not in keeps:
                continue
            keep = keeps[group.index]
            per_group[group.label] = {"before": group.size, "after": len(keep)}
            if len(keep) < group.size:
                changed[group.index] = keep
        rewritten = channels.remove(model, plan, changed) if changed else 0
        stats: dict[str, Any] = {
            "groups": len(plan.groups),
            "groups_pruned": len(changed),
            "channels_removed": sum(e["before"] - e["after"] for e in per_group.values()),
            "tensors_rewritten": rewritten,
            "biases_folded": folded,
            "channels": per_group,
            "refused": refused,
            "skipped": skipped,
        }
        return ShrinkPassResult(model, modified=rewritten + folded > 0, stats=stats)

    def _scores(
        self, model: ir.Model, groups: list[ChannelGroup], options: PruneChannelsOptions, skipped: dict[str, str]
    ) -> dict[int, np.ndarray]:
        scores: dict[int, np.ndarray] = {}
        if options.criterion == "activation":
            return self._activation_scores(model, groups, options)
        for group in groups:
            if options.criterion == "bn-gamma":
                gamma = _gamma_scores(group)
                if gamma is None:
                    skipped[group.label] = "criterion bn-gamma: no BatchNormalization on its channels"
                    continue
                scores[group.index] = gamma
            else:
                scores[group.index] = _weight_scores(group, options.criterion)
        return scores

    def _activation_scores(
        self, model: ir.Model, groups: list[ChannelGroup], options: PruneChannelsOptions
    ) -> dict[int, np.ndarray]:
        """Mean |output| per channel at each group's producers, streamed over calibration batches."""
        outputs = {id(s): s.node.outputs[0] for g in groups for s in g.of_kind("producer") if s.node is not None}
        names = [v.name for v in outputs.values() if v.name]
        if not names:
            return {}
        sums: dict[str, np.ndarray] = {}
        count = 0
        batch = _static_batch(model)
        batches = capture(self.context, model, names, pass_name=self.name, samples=options.samples, batch_size=batch)
        for _, arrays in batches:
            count += 1
            for name in names:
                array = np.abs(np.asarray(arrays[name], dtype=np.float64))
                site = next(s for g in groups for s in g.of_kind("producer") if outputs[id(s)].name == name)
                axis = _producer_axis(site, array.ndim)
                mean = np.moveaxis(array, axis, 0).reshape(array.shape[axis], -1).mean(axis=1)
                sums[name] = sums.get(name, 0) + mean
        if count == 0:
            raise UsageError("prune-channels: criterion activation read no calibration samples")
        scores = {}
        for group in groups:
            total = np.zeros(group.size)
            for site in group.of_kind("producer"):
                total += _per_channel(group, site, sums[outputs[id(site)].name or ""] / count)
            scores[group.index] = total
        return scores

    @staticmethod
    def _keeps(
        groups: list[ChannelGroup], scores: dict[int, np.ndarray], options: PruneChannelsOptions
    ) -> dict[int, np.ndarray]:
        scored = [g for g in groups if g.index in scores]
        removed: dict[int, int] = {}
        if options.scope == "global" and scored:
            normalized = {g.index: scores[g.index] / max(float(scores[g.index].mean()), 1e-30) for g in scored}
            flat = np.concatenate(list(normalized.values()))
            count = round(options.ratio * flat.size)
            threshold = np.sort(flat, kind="stable")[count - 1] if count else -np.inf
            removed = {g.index: int(np.count_nonzero(normalized[g.index] <= threshold)) for g in scored}
        else:
            removed = {g.index: round(options.ratio * g.size) for g in scored}
        keeps = {}
        for group in scored:
            score = scores[group.index]
            if len(group.blocks) == 1:
                keep_count = _keep_count(group.size, removed[group.index], options)
                keeps[group.index] = np.sort(np.argsort(-score, kind="stable")[:keep_count])
                continue
            share = removed[group.index] / group.size
            per_block = [max(1, len(b) - round(share * len(b))) for b in group.blocks]
            if len({len(b) for b in group.blocks}) == 1:
                per_block = [min(per_block)] * len(group.blocks)  # grouped Conv: balanced
            kept = [b[np.argsort(-score[b], kind="stable")[:k]] for b, k in zip(group.blocks, per_block, strict=True)]
            keeps[group.index] = np.sort(np.concatenate(kept))
        return keeps


# --- dead=only: channels that are provably constant, folded into the consumers' biases ----------

_SAME = frozenset(
    (
        *("Identity", "Dropout", "Cast", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Reshape", "Concat"),
        *("Split", "Slice", "GlobalAveragePool", "GlobalMaxPool", "MaxPool", "Resize", "Upsample"),
        *("ReduceMean", "ReduceMax", "ReduceMin"),
    )
)


def _unary(op: str, node: ir.Node, v: np.ndarray) -> np.ndarray | None:
    def attr(name: str, default: float) -> float:
        found = node.attributes.get(name)
        return found.as_float() if found is not None else default

    with np.errstate(all="ignore"):
        table = {
            "Relu": lambda: np.maximum(v, 0.0),
            "LeakyRelu": lambda: np.where(v >= 0, v, v * attr("alpha", 0.01)),
            "Sigmoid": lambda: 1.0 / (1.0 + np.exp(-v)),
            "HardSigmoid": lambda: np.clip(attr("alpha", 0.2) * v + attr("beta", 0.5), 0.0, 1.0),
            "HardSwish": lambda: v * np.clip(v / 6.0 + 0.5, 0.0, 1.0),
            "Tanh": lambda: np.tanh(v),
            "Abs": lambda: np.abs(v),
            "Neg": lambda: -v,
            "Exp": lambda: np.exp(v),
            "Softplus": lambda: np.log1p(np.exp(v)),
            "Elu": lambda: np.where(v >= 0, v, attr("alpha", 1.0) * (np.exp(v) - 1.0)),
        }
        return table[op]() if op in table else None


_BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "Add": np.add,
    "Sub": np.subtract,
    "Mul": np.multiply,
    "Div": np.divide,
    "Pow": np.power,
    "Max": np.maximum,
    "Min": np.minimum,
    "Sum": np.add,
    "PRelu": lambda x, s: np.where(x >= 0, x, x * s),
}


def _no_padding(node: ir.Node) -> bool:
    pads = node.attributes.get("pads")
    auto = node.attributes.get("auto_pad")
    return (pads is None or not any(pads.as_ints())) and (auto is None or auto.as_string() in ("NOTSET", "VALID"))


class _DeadChannels:
    """Per channel class, the constant each value holds (NaN where it is not provably constant)."""

    def __init__(self, model: ir.Model, plan: channels.ChannelPlan) -> None:
        self.model = model
        self.values: dict[ir.Value, np.ndarray] = {}
        self.params: dict[tuple[int, int], Site] = {}
        self.producers: dict[int, Site] = {}
        for group in plan.groups:
            for site in group.sites:
                if site.kind == "value" and site.value is not None:
                    self.values[site.value] = site.classes
                elif site.kind == "param" and site.node is not None:
                    self.params[(id(site.node), site.index)] = site
                elif site.kind == "producer" and site.node is not None:
                    self.producers[id(site.node)] = site
        self.const: dict[ir.Value, dict[int, float]] = {}
        self.arrays: dict[int, np.ndarray] = {}  # per site: its constant, read once
        self.alive: dict[int, np.ndarray] = {}
        self.scalars: dict[ir.Value, float] = {}

    def array(self, site: Site) -> np.ndarray:
        if id(site) not in self.arrays:
            self.arrays[id(site)] = _const(site)
        return self.arrays[id(site)]

    def run(self) -> None:
        for node in self.model.graph:
            for output in node.outputs:
                if output in self.values:
                    classes = self.values[output]
                    found = {int(c): self.evaluate(node, int(c), p) for p, c in enumerate(classes.tolist())}
                    self.const[output] = {c: v for c, v in found.items() if np.isfinite(v)}

    def operand(self, node: ir.Node, index: int, klass: int) -> float:
        value = node.inputs[index]
        if value is None:
            return float("nan")
        if value in self.values:
            return self.const.get(value, {}).get(klass, float("nan"))
        site = self.params.get((id(node), index))
        if site is not None:
            return self.param(site, klass)
        if value not in self.scalars:  # a constant that is the same everywhere, else NaN
            array = _constant(value)
            uniform = array is not None and array.size and np.all(array == array.reshape(-1)[0])
            self.scalars[value] = float(array.reshape(-1)[0]) if uniform and array is not None else float("nan")
        return self.scalars[value]

    def param(self, site: Site, klass: int) -> float:
        positions = np.flatnonzero(site.classes == klass)
        values = np.take(
            self.array(site), (positions[:, None] * site.inner + np.arange(site.inner)).reshape(-1), axis=site.axis
        )
        flat = values.reshape(-1)
        return float(flat[0]) if flat.size and np.all(flat == flat[0]) else float("nan")

    def evaluate(self, node: ir.Node, klass: int, position: int) -> float:
        op = node.op_type
        if id(node) in self.producers and node.outputs[0] in self.values:
            return self.produced(node, position)
        if op == "Concat":
            # Every input that holds the channel (all of them off the channel axis) must agree.
            found = [
                self.operand(node, i, klass)
                for i, v in enumerate(node.inputs)
                if v is not None and (v not in self.values or klass in self.values[v])
            ]
            same = bool(found) and all(np.isfinite(v) and v == found[0] for v in found)
            return found[0] if same else float("nan")
        if op in _SAME:
            return self.operand(node, 0, klass)
        if op == "AveragePool":
            include = node.attributes.get("count_include_pad")
            padded = not _no_padding(node) and include is not None and include.as_int()
            return float("nan") if padded else self.operand(node, 0, klass)
        if op == "Pad":
            mode = node.attributes.get("mode")
            v = self.operand(node, 0, klass)
            if mode is not None and mode.as_string() in ("reflect", "edge"):
                return v
            fill = self.operand(node, 2, klass) if len(node.inputs) > 2 and node.inputs[2] is not None else 0.0
            return v if v == fill else float("nan")
        if op == "BatchNormalization":
            x, scale, bias, mean, var = (self.operand(node, i, klass) for i in range(5))
            eps = node.attributes["epsilon"].as_float() if "epsilon" in node.attributes else 1e-5
            return float((x - mean) / np.sqrt(var + eps) * scale + bias)
        if op == "Clip":
            x = self.operand(node, 0, klass)
            low = self.operand(node, 1, klass) if len(node.inputs) > 1 and node.inputs[1] is not None else -np.inf
            high = self.operand(node, 2, klass) if len(node.inputs) > 2 and node.inputs[2] is not None else np.inf
            return float(np.clip(x, low, high))
        if op == "Conv" and (id(node), 1) in self.params:  # depthwise: a constant in, a constant out
            x = self.operand(node, 0, klass)
            bias = self.operand(node, 2, klass) if len(node.inputs) > 2 and node.inputs[2] is not None else 0.0
            if x == 0:
                return bias
            site = self.params[(id(node), 1)]
            total = float(np.take(self.array(site), np.flatnonzero(site.classes == klass), axis=0).sum())
            return x * total + bias if _no_padding(node) else float("nan")
        if op in _BINARY:
            operands = [self.operand(node, i, klass) for i in range(len(node.inputs))]
            combine = _BINARY[op]
            with np.errstate(all="ignore"):
                total = operands[0]
                for other in operands[1:]:
                    total = float(combine(total, other))
            return total
        applied = _unary(op, node, np.array(self.operand(node, 0, klass)))
        return float(applied) if applied is not None else float("nan")

    def produced(self, node: ir.Node, position: int) -> float:
        """A producer's channel is the constant bias when its weight slice is all zero."""
        site = self.producers[id(node)]
        if id(site) not in self.alive:  # per channel: does any weight of the slice differ from zero
            weight = self.array(site)
            self.alive[id(site)] = np.asarray(
                np.moveaxis(weight, site.axis, 0).reshape(weight.shape[site.axis], -1).any(axis=1)
            )
        if self.alive[id(site)][position]:
            return float("nan")
        bias = self.params.get((id(node), 2))
        return self.param(bias, int(site.classes[position])) if bias is not None else 0.0


def _constant(value: ir.Value) -> np.ndarray | None:
    if value.is_graph_input():
        return None
    tensor = ir.convenience.get_const_tensor(value)
    return None if tensor is None else tensor.numpy().astype(np.float64)


def _fold(site: Site, klass: int, k: float) -> tuple[int, np.ndarray]:
    """Which bias input of the consumer absorbs the constant channel, and by how much per output."""
    node = site.node
    assert node is not None
    weight = _const(site)
    position = int(np.flatnonzero(site.classes == klass)[0])
    if node.op_type == "Conv":
        groups = int(site.extra.get("groups", 1))
        per, rows = len(site.classes) // groups, weight.shape[0] // groups
        g = position // per
        delta = np.zeros(weight.shape[0])
        delta[g * rows : (g + 1) * rows] = k * weight[g * rows : (g + 1) * rows, position - g * per].reshape(
            rows, -1
        ).sum(axis=1)
        return 2, delta
    features = np.take(weight, np.arange(position * site.inner, (position + 1) * site.inner), axis=site.axis)
    alpha = node.attributes["alpha"].as_float() if "alpha" in node.attributes else 1.0
    beta = node.attributes["beta"].as_float() if "beta" in node.attributes else 1.0
    return 2, alpha * k * features.sum(axis=site.axis) / beta


def _foldable(site: Site, k: float) -> bool:
    node = site.node
    assert node is not None
    if k == 0:
        return True
    if node.op_type == "Conv":
        return _no_padding(node)
    beta = node.attributes["beta"].as_float() if "beta" in node.attributes else 1.0
    return node.op_type == "Gemm" and beta != 0


def _remove_dead(
    model: ir.Model, plan: channels.ChannelPlan, chosen: list[ChannelGroup]
) -> tuple[channels.ChannelPlan, dict[int, np.ndarray], int]:
    """Folds provably constant channels into their consumers' biases and plans their removal."""
    evaluator = _DeadChannels(model, plan)
    evaluator.run()
    dead: list[tuple[ir.Node, int]] = []  # (a producer of the class, its position there)
    deltas: dict[tuple[int, int], tuple[ir.Node, np.ndarray]] = {}
    for group in chosen:
        consumers = group.of_kind("consumer")
        found: list[tuple[int, list[tuple[Site, float]]]] = []
        for local, klass in enumerate(group.classes.tolist()):
            pending: list[tuple[Site, float]] = []
            for site in consumers:
                if klass not in site.classes:
                    continue
                assert site.node is not None
                k = evaluator.const.get(site.node.inputs[0], {}).get(klass, float("nan"))  # type: ignore[arg-type]
                if not np.isfinite(k) or not _foldable(site, k):
                    break
                pending.append((site, k))
            else:
                found.append((local, pending))
        if len(found) == group.size:
            found = found[1:]  # a group keeps at least one channel: that one stays as it is
        for local, pending in found:
            klass = int(group.classes[local])
            producer = next(s for s in group.of_kind("producer") if klass in s.classes)
            assert producer.node is not None
            dead.append((producer.node, int(np.flatnonzero(producer.classes == klass)[0])))
            for site, k in pending:
                if k == 0:
                    continue
                index, delta = _fold(site, klass, k)
                assert site.node is not None
                key = (id(site.node), index)
                node_delta = deltas.get(key, (site.node, np.zeros_like(delta)))[1]
                deltas[key] = (site.node, node_delta + delta)
    for (_, index), (node, delta) in deltas.items():
        old = node.inputs[index] if index < len(node.inputs) else None
        weight = ir.convenience.get_const_tensor(node.inputs[1])  # type: ignore[arg-type]
        assert weight is not None
        dtype = weight.numpy().dtype
        base = _constant(old) if old is not None else np.zeros(delta.shape)
        assert base is not None
        channels.set_constant_input(model, node, index, (base + delta).astype(dtype))
    plan = channels.analyze(model, "remove") if deltas else plan
    keeps: dict[int, np.ndarray] = {}
    dead_at: dict[int, list[int]] = {}
    for node, position in dead:
        dead_at.setdefault(id(node), []).append(position)
    for group in channels.iter_ok(plan):
        gone: set[int] = set()
        for site in group.of_kind("producer"):
            if id(site.node) in dead_at:
                where = group.local(site)
                gone.update(int(where[p]) for p in dead_at[id(site.node)])
        if gone:
            keeps[group.index] = np.array([c for c in range(group.size) if c not in gone], dtype=np.int64)
    return plan, keeps, len(deltas)
