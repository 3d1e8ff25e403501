"""``sort``: function-preserving channel permutations, by importance or for a following N:M prune."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import re
import time
from typing import Any, Literal

import numpy as np
import onnx_ir as ir

from onnxshrink.passbase import NoMatch, ShrinkPass, ShrinkPassResult, option
from onnxshrink.passes import channels
from onnxshrink.passes.channels import ChannelGroup, Site
from onnxshrink.passes.sort import search as _sort_search
from onnxshrink.registry import register_pass
from onnxshrink.sparsity import kept_magnitude, nm_mask

_NM = re.compile(r"^(\d+):(\d+)$")
# NVIDIA ASP sparsifies a layer only when these divide its output and reduction channels.
_ASP_OUT, _ASP_IN = 8, 16


def _nm_problem(value: str) -> str | None:
    """What is wrong with a ``for`` value (empty: no N:M search), or None."""
    match = _NM.match(value)
    if value and (match is None or not 0 < int(match.group(1)) < int(match.group(2))):
        return f"must be N:M with 0 < N < M, such as 2:4, got {value!r}"
    return None


@dataclasses.dataclass(frozen=True)
class SortOptions:
    """Options of ``sort``."""

    key: Literal["l1", "l2"] = option(
        "l1", "order each group's channels by their producers' weight norm, descending (l1 or l2)", choices=("l1", "l2")
    )
    for_: str = option(
        "", "N:M (e.g. 2:4): instead, search the order keeping most magnitude under an N:M prune", check=_nm_problem
    )
    seconds: float = option(
        0.0,
        "wall-time cap of the for=N:M search, 0 for none; the search is deterministic "
        "unless the cap cuts it (stats: search_capped)",
        minimum=0,
    )

    @property
    def nm(self) -> tuple[int, int] | None:
        """``(N, M)`` of ``for``, or None when no N:M search is asked for."""
        match = _NM.match(self.for_)
        return (int(match.group(1)), int(match.group(2))) if match else None


def _workers() -> int:
    """Threads for the search: the cores this process may use, at most 4."""
    try:
        return max(1, min(4, len(os.sched_getaffinity(0))))
    except AttributeError:  # not on Linux
        return max(1, min(4, os.cpu_count() or 1))


@dataclasses.dataclass
class _Counted:
    """A Stop layer whose N:M groups the search scores: its weight columns for one group."""

    site: Site
    key: str
    offset: int  # first input channel of the group in the layer


def _as_rows(weight: np.ndarray, axis: int) -> np.ndarray:
    """``|W|`` as ``[rows, input channels]``: the reduction axis last, everything else rows."""
    moved = np.moveaxis(np.abs(weight.astype(np.float32)), axis, -1)
    return moved.reshape(-1, moved.shape[-1])


def _layer_keys(model: ir.Model) -> dict[int, str]:
    """Layer names as ``prune`` reports them: the node name, else op type and position."""
    nodes = ir.traversal.RecursiveGraphIterator(model.graph)
    return {id(node): node.name or f"{node.op_type}#{index}" for index, node in enumerate(nodes)}


def _counted(group: ChannelGroup, m: int, keys: dict[int, str]) -> list[_Counted] | NoMatch:
    """The group's consumers an N:M prune would touch and the search can score, or why none."""
    if len(group.blocks) > 1:
        return NoMatch(f"channels split into {len(group.blocks)} blocks (Split/Slice/Concat); searched only whole")
    if group.size % m:
        return NoMatch(f"{group.size} channels, not a multiple of {m}")
    found, why = [], "no consumer eligible for N:M"
    for site in group.of_kind("consumer"):
        if site.inner != 1 or site.extra.get("groups", 1) != 1:
            why = f"{site.describe()} is grouped or flattened"
            continue
        local = group.local(site)
        where = np.flatnonzero(local >= 0)
        offset = int(where[0])
        weight = site.constant()
        inputs = weight.shape[site.axis]
        outputs = weight.size // (inputs * int(np.prod(weight.shape[2:]) if weight.ndim > 2 else 1))
        if not np.array_equal(local[where], np.arange(group.size)) or where[-1] - offset + 1 != group.size:
            why = f"{site.describe()} reads the channels out of order"
        elif offset % m or outputs % _ASP_OUT or inputs % _ASP_IN or inputs % m:
            why = f"{site.describe()}: {outputs} out / {inputs} in channels are not N:M eligible (ASP: %8, %16)"
        else:
            found.append(_Counted(site, keys[id(site.node)], offset))
    return found if found else NoMatch(why)


def _importance(group: ChannelGroup, key: str) -> np.ndarray:
    """Per channel: the l1 norm (or l2) of its slices in every producer weight of the group."""
    total = np.zeros(group.size)
    for site in group.of_kind("producer"):
        weight = site.constant().astype(np.float64)
        moved = np.moveaxis(weight, site.axis, 0).reshape(len(site.classes), -1)  # a head's d channels as one
        score = np.abs(moved).sum(axis=1) if key == "l1" else (moved * moved).sum(axis=1)
        local = group.local(site)
        np.add.at(total, local[local >= 0], score[local >= 0])
    return total if key == "l1" else np.sqrt(total)


def _kept(site: Site, n: int, m: int) -> float:
    """Fraction of the site's ``|w|`` an N:M prune along its input channels keeps."""
    weight = site.constant()
    return kept_magnitude(weight, nm_mask(weight, n, m, site.axis))


@register_pass
class SortPass(ShrinkPass[SortOptions]):
    """Permutes channels (exact): producers' outputs and everything reading them, in the same order.

    Rules (see ``onnxshrink.passes.channels`` and ``docs/channels.md`` for how channels travel):

    1. The main graph's channel groups are built for permutation: a group is refused (and left
       as it is, with its reason in ``stats["skipped"]``) when it reaches a graph input or
       output, a subgraph, or an op without a permutation rule. Subgraphs (If, Loop) and
       model-local functions are not entered.
    2. ``key=l1|l2``: each group's channels are ordered by the norm of their producers' weight
       slices, descending, within each block (Split/Slice/Concat segments stay in place), so
       structured removal can take a contiguous tail and all-zero channels gather at the end.
    3. ``for=N:M`` (replaces the key order): the group's Stop consumers an N:M prune would
       sparsify (ASP: output channels % 8 == 0, input channels % 16 == 0, group = 1, not fed
       through Flatten) and that read the group's channels whole and in order score each
       candidate order by the ``|w|`` kept by N:M magnitude pruning along their input
       channels. A greedy channel-swap search (``onnxshrink.passes.sort.search``) improves on
       the current order; the permutation is applied only when it keeps more. Groups of several
       blocks, or without a scored consumer, are listed in ``stats["skipped"]``; the search's
       wall and CPU seconds are the pass's ``search`` and ``search_cpu`` timings.
    4. The permutation rewrites producer weights and biases, per-channel constants
       (BatchNormalization, Mul/Add operands, PRelu slopes, per-channel Q/DQ scales),
       depthwise filters and consumer input channels; shared constants are copied, never
       changed in place. Names, graph inputs and outputs stay.
    """

    name = "sort"
    exact = True

    def call(self, model: ir.Model) -> ShrinkPassResult:
        """Permutes the channels of every group it may; ``skipped`` names the groups left as they are."""
        options = self.options
        plan = channels.analyze(model, "permute")
        stats: dict[str, Any] = {"groups": len(plan.groups)}
        skipped = plan.refused()
        timings: dict[str, float] = {}
        nm = options.nm
        if nm is None:
            orders = self._key_orders(plan, options.key)
            rewritten = channels.permute(model, plan, orders)
        else:
            found = _nm_orders(plan, nm, options.seconds, _layer_keys(model))
            orders = found.orders
            skipped.update(found.skipped)
            timings.update(found.timings)
            stats["search_capped"] = found.capped
            stats["layers"] = found.layers
            rewritten = channels.permute(model, plan, orders)
            for key, site in found.sites.items():
                found.layers[key]["kept_after"] = _kept(site, *nm)
        stats["groups_permuted"] = len(orders)
        stats["tensors_rewritten"] = rewritten
        if nm is not None:
            layers = stats["layers"].values()
            stats["kept_before"] = float(np.mean([e["kept_before"] for e in layers])) if layers else 1.0
            stats["kept_after"] = float(np.mean([e["kept_after"] for e in layers])) if layers else 1.0
        return ShrinkPassResult(model, modified=rewritten > 0, stats=stats, skipped=skipped, timings=timings)

    @staticmethod
    def _key_orders(plan: channels.ChannelPlan, key: str) -> dict[int, np.ndarray]:
        orders = {}
        for group in channels.iter_ok(plan):
            order = np.argsort(-_importance(group, key), kind="stable")
            if not np.array_equal(order, np.arange(group.size)):
                orders[group.index] = order
        return orders


@dataclasses.dataclass
class _NMSearch:
    """What the ``for=N:M`` search found: orders, per-layer kept magnitude, skips and timings."""

    orders: dict[int, np.ndarray]
    layers: dict[str, dict[str, Any]]
    sites: dict[str, Site]
    skipped: dict[str, str]
    capped: bool
    timings: dict[str, float]


def _nm_orders(plan: channels.ChannelPlan, nm: tuple[int, int], seconds: float, keys: dict[int, str]) -> _NMSearch:
    n, m = nm
    work: list[tuple[ChannelGroup, list[_Counted]]] = []
    skipped: dict[str, str] = {}
    for group in channels.iter_ok(plan):
        counted = _counted(group, m, keys)
        if isinstance(counted, NoMatch):
            skipped[group.label] = counted.reason
        else:
            work.append((group, counted))
    matrices = [
        [_as_rows(c.site.constant(), c.site.axis)[:, c.offset : c.offset + group.size] for c in counted]
        for group, counted in work
    ]
    cost = [group.size * sum(x.shape[0] for x in mats) for (group, _), mats in zip(work, matrices, strict=True)]
    layers: dict[str, dict[str, Any]] = {}
    sites: dict[str, Site] = {}
    orders: dict[int, np.ndarray] = {}
    started, cpu = time.perf_counter(), time.process_time()
    total = max(1, sum(cost))
    budgets = [seconds * share / total if seconds else None for share in cost]

    def one(args: tuple[list[np.ndarray], float | None]) -> tuple[np.ndarray, bool]:
        return _sort_search.search(args[0], n, m, seconds=args[1])

    # numpy's kernels release the GIL: groups are searched in parallel, each deterministically.
    with concurrent.futures.ThreadPoolExecutor(max_workers=_workers()) as pool:
        found = list(pool.map(one, zip(matrices, budgets, strict=True)))
    capped = False
    for (group, counted), mats, (order, cut) in zip(work, matrices, found, strict=True):
        capped |= cut
        before = _sort_search.kept_magnitude(mats, np.arange(group.size), n, m)
        if _sort_search.kept_magnitude(mats, order, n, m) > before:
            orders[group.index] = order
        for c in counted:
            if c.key not in layers:
                layers[c.key] = {"kept_before": _kept(c.site, n, m)}
                sites[c.key] = c.site
    timings = {
        "search": round(time.perf_counter() - started, 3),
        "search_cpu": round(time.process_time() - cpu, 3),  # all threads
    }
    return _NMSearch(orders, layers, sites, skipped, capped, timings)
