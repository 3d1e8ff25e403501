"""``prune-channels``: structured removal of whole channels through their dependency groups (lossy)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import onnx_ir as ir

from onnxshrink.activations import capture
from onnxshrink.errors import UsageError
from onnxshrink.passbase import NoMatch, ShrinkPass, ShrinkPassResult, option
from onnxshrink.passes import channels
from onnxshrink.passes.channels import ChannelGroup, Site
from onnxshrink.passes.channels.dead import remove_dead
from onnxshrink.registry import register_pass
from onnxshrink.selection import matching_pattern


def _ratios_problem(ratios: Mapping[str, float]) -> str | None:
    bad = next((name for name, ratio in ratios.items() if not 0 <= ratio < 1), None)
    return None if bad is None else f"ratio of '{bad}' must be >= 0 and < 1, got {ratios[bad]}"


@dataclasses.dataclass(frozen=True)
class PruneChannelsOptions:
    """Options of ``prune-channels``."""

    ratio: float = option(0.25, "fraction of each group's channels removed, 0 <= ratio < 1", minimum=0, below=1)
    criterion: Literal["l1", "l2", "bn-gamma", "activation"] = option(
        "l2",
        "channel importance: norm of its producer and consumer weight slices (l1, l2), "
        "|BatchNormalization scale| (bn-gamma), or mean |output| on calibration data (activation, needs --calib)",
        choices=("l1", "l2", "bn-gamma", "activation"),
    )
    round_to: int = option(8, "channels kept per group are a multiple of this (1: no rounding)", minimum=1)
    scope: Literal["layer", "global"] = option(
        "layer",
        "layer: every group loses `ratio`; global: one threshold over all groups' scores",
        choices=("layer", "global"),
    )
    include: tuple[str, ...] = option((), "prune only groups with a producer whose op type or name glob matches")
    exclude: tuple[str, ...] = option((), "never prune groups with a producer whose op type or name glob matches")
    ratios: Mapping[str, float] = option(
        help="per-group ratios, NAME:RATIO,... keyed by a producer's node name (scope=layer); "
        "groups not named take `ratio`",
        default_factory=dict,
        check=_ratios_problem,
    )
    min_channels: int = option(8, "never keep fewer channels in a group", minimum=1)
    samples: int = option(256, "calibration samples read (activation)", minimum=1)
    dead: Literal["off", "only"] = option(
        "off",
        "only: remove just the channels that are provably constant (all-zero weights), folding "
        "their value into the consumers' biases; exact (ratio and criterion are ignored)",
        choices=("off", "only"),
    )

    def problem(self) -> str | None:
        """What is wrong with the options together (each alone is checked by its metadata)."""
        if self.ratios and self.scope != "layer":
            return "ratios sets per-group ratios; use scope=layer"
        return None

    def ratio_of(self, group: ChannelGroup) -> float:
        """The ratio ``ratios`` gives one of the group's producers, else ``ratio``."""
        for site in group.of_kind("producer"):
            name = site.node.name if site.node is not None else None
            if name is not None and name in self.ratios:
                return self.ratios[name]
        return self.ratio


def _per_channel(group: ChannelGroup, site: Site, values: np.ndarray) -> np.ndarray:
    """Adds a per-position score of ``site`` onto the group's local channels."""
    total = np.zeros(group.size)
    local = group.local(site)
    np.add.at(total, local[local >= 0], values[local >= 0])
    return total


def _slices(site: Site) -> np.ndarray:
    """The site's weight as ``[channel position, everything else]`` (a flattened channel's features joined)."""
    weight = site.constant().astype(np.float64)
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


def _gamma_scores(group: ChannelGroup) -> np.ndarray | NoMatch:
    """Per channel: the sum of ``|scale|`` over the group's BatchNormalizations."""
    sites = [s for s in group.of_kind("param") if s.node is not None and s.node.op_type == "BatchNormalization"]
    scales = [s for s in sites if s.index == 1]
    if not scales:
        return NoMatch("criterion bn-gamma: no BatchNormalization on its channels")
    return sum((_per_channel(group, s, np.abs(s.constant().astype(np.float64))) for s in scales), np.zeros(group.size))


def _static_batch(model: ir.Model) -> int:
    """The batch size a model with a fixed first input dimension takes; 32 when it is dynamic."""
    dims = {v.shape[0] for v in model.graph.inputs if v.shape is not None and len(v.shape) > 0}
    fixed = [d for d in dims if isinstance(d, int)]
    return fixed[0] if fixed and len(dims) == 1 else 32


def _producer_axis(site: Site, rank: int) -> int:
    assert site.node is not None
    return 1 if site.node.op_type in ("Conv", "ConvTranspose") else rank - 1


def _select(group: ChannelGroup, options: PruneChannelsOptions) -> ChannelGroup | NoMatch:
    """The group when ``include``/``exclude`` select it through one of its producers, else why not."""
    producers = [site.node for site in group.of_kind("producer") if site.node is not None]
    if options.include and not any(matching_pattern(n, n.name or "", options.include) for n in producers):
        return NoMatch(f"not matched by include={','.join(options.include)}")
    hit = next((p for n in producers if (p := matching_pattern(n, n.name or "", options.exclude))), None)
    return group if hit is None else NoMatch(f"excluded by '{hit}'")


def _keep_count(size: int, removed: int, options: PruneChannelsOptions, width: int = 1) -> int:
    """What a group keeps: a multiple of ``round-to`` near ``size - removed``, within its bounds.

    ``width`` is the number of channels each unit of the group spans (an attention head's d):
    ``round-to`` and ``min-channels`` count channels, so heads round to what keeps their channels aligned.
    """
    target = size - removed
    step = options.round_to // math.gcd(options.round_to, width)
    keep = int(step * np.floor(target / step + 0.5)) if step > 1 else target
    floor = max(-(-options.min_channels // width), step)
    return int(min(size, max(keep, min(floor, size))))


@register_pass
class PruneChannelsPass(ShrinkPass[PruneChannelsOptions]):
    """Removes whole channels (lossy): producer outputs and every tensor that carries them.

    Rules (channel groups from ``onnxshrink.passes.channels``, built for removal):

    1. A group is refused, with its reason in ``stats["skipped"]``, when it reaches a graph input
       or output, a subgraph, an op without a removal rule, or an op for which removal is
       lossy beyond the consumer (reductions, Softmax or LayerNormalization over channels, Shape).
       Subgraphs (If, Loop) and model-local functions are not entered: their producers are
       listed in ``stats["skipped"]`` with where they are.
    2. ``include``/``exclude`` select groups by their producers' op types or node-name globs.
    3. Each channel gets a score: the l1 (or l2, the default) norm of all its weight slices,
       producer rows and consumer input columns together (Torch-Pruning's group norm: on the
       digits CNN, 25 % removed keeps 92 % accuracy where producer rows alone keep 34 %), the
       ``|scale|`` of its BatchNormalizations (``bn-gamma``; groups without one are skipped),
       or its mean ``|output|`` at the producers on calibration data (``activation``).
    4. ``scope=layer``: each group drops ``round(ratio * channels)`` of its lowest scores, where
       ``ratios`` may give a group its own ratio by naming one of its producer nodes;
       ``scope=global``: scores divided by their group's mean compete under one threshold.
       What a group keeps is then rounded to the nearest multiple of ``round-to`` and never
       below ``min-channels`` (nor ``round-to``). A group of several blocks (Split, Slice and
       Concat segments, grouped Conv groups) loses the same share of every block, at least one
       channel kept per block, and is not rounded.
    5. Removal deletes producer rows, biases, BatchNormalization statistics, per-channel
       constants, depthwise filters (and their ``group``) and consumer input slices; it rewrites
       Split sizes, Slice bounds and Reshape constants that carry the count. Attention loses
       whole heads: Q, K, V projection columns and biases and the output projection's input rows
       of a head go together, and the head count in Reshape constants is rewritten (a ``-1``
       stays); ``round-to`` and ``min-channels`` count channels, so heads of d=64 round freely.
       The residual stream (tied to LayerNormalization and the embeddings) is refused. The result
       equals the original with only the consumers' input slices of the removed channels zeroed.
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

    def call(self, model: ir.Model) -> ShrinkPassResult:
        """Removes the lowest-scoring channels; ``skipped`` names the groups left whole, and why."""
        options = self.options
        plan = channels.analyze(model, "remove")
        skipped = plan.refused()
        chosen: list[ChannelGroup] = []
        for group in channels.iter_ok(plan):
            selected = _select(group, options)
            if isinstance(selected, NoMatch):
                skipped[group.label] = selected.reason
            else:
                chosen.append(selected)
        producers = {s.node.name for g in plan.groups for s in g.of_kind("producer") if s.node is not None}
        for name in sorted(set(options.ratios) - producers):
            skipped[f"ratios '{name}'"] = "names no channel group's producer"
        folded = 0
        if options.dead == "only":
            plan, keeps, folded = remove_dead(model, plan, chosen)
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
        }
        return ShrinkPassResult(model, modified=rewritten + folded > 0, stats=stats, skipped=skipped)

    def _scores(
        self, model: ir.Model, groups: list[ChannelGroup], options: PruneChannelsOptions, skipped: dict[str, str]
    ) -> dict[int, np.ndarray]:
        scores: dict[int, np.ndarray] = {}
        if options.criterion == "activation":
            return self._activation_scores(model, groups, options)
        for group in groups:
            if options.criterion == "bn-gamma":
                gamma = _gamma_scores(group)
                if isinstance(gamma, NoMatch):
                    skipped[group.label] = gamma.reason
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
                mean = np.moveaxis(array, axis, 0).reshape(len(site.classes), -1).mean(axis=1)  # per head too
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
            removed = {g.index: round(options.ratio_of(g) * g.size) for g in scored}
        keeps = {}
        for group in scored:
            score = scores[group.index]
            if len(group.blocks) == 1:
                width = max(site.inner for site in group.of_kind("producer"))
                keep_count = _keep_count(group.size, removed[group.index], options, width)
                keeps[group.index] = np.sort(np.argsort(-score, kind="stable")[:keep_count])
                continue
            share = removed[group.index] / group.size
            per_block = [max(1, len(b) - round(share * len(b))) for b in group.blocks]
            if len({len(b) for b in group.blocks}) == 1:
                per_block = [min(per_block)] * len(group.blocks)  # grouped Conv: balanced
            kept = [b[np.argsort(-score[b], kind="stable")[:k]] for b, k in zip(group.blocks, per_block, strict=True)]
            keeps[group.index] = np.sort(np.concatenate(kept))
        return keeps
