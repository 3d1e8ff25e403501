"""Channel dependency groups: which tensors carry a producer's output channels, and how to change them.

The analysis (:func:`analyze`) is one forward walk over the main graph in topological order. Every
producer (Conv, ConvTranspose, Gemm, MatMul with a constant weight) mints one *atom* per output
channel; each value then carries a :class:`Layout` (which axis holds channels, and the atom at each
position) as far as the rule table of ``CHANNEL_RULES.md`` lets it travel: pass-through ops keep it,
Transpose/Squeeze/Unsqueeze/Reduce move the axis, Concat/Split/Slice shift indices, Flatten/Reshape
expand each channel into ``inner`` features, depthwise Conv ties input to output, and coupling ops
(Add/Mul/... of two activations) unify their inputs' atoms position by position.

Attention heads: a Reshape that splits the channel axis into ``(heads, d)`` needs whole heads to
move together, so a first walk notes which producers feed one, and the walk runs again with those
producers minting one atom per head (``inner = d``). Heads then travel on a batch axis through
Transpose, QKᵀ and attention·V (a MatMul of two activations couples its operands' heads), scale,
mask and Softmax, and back through the merging Reshape (``inner = d``) to the output projection.
Computed Reshape targets and Expand-ed masks are read element by element (Shape/Gather/Concat/
Where arithmetic) when shape inference loses them. Unified atoms form
a *class* (one channel that must move or go as a whole); classes linked through a producer form a
:class:`ChannelGroup`, the unit that is permuted or shrunk at once. A group that reaches a graph
input or output, an unknown op or (for removal) a lossy op is refused with its reasons.

The plan is plain data (:meth:`ChannelPlan.describe`). :func:`permute` and :func:`remove` apply
decisions to the graph: every weight, per-channel constant, Split size, Slice bound, Reshape
constant and depthwise ``group`` the group touches is rewritten, copy-on-write.

This module is the public entry point and groups the walk's sites; the layouts, sites and atoms live
in ``onnxshrink.passes.channels.types``, the walk and its shape reasoning in ``onnxshrink.passes.channels.walk``,
the per-op rules in ``onnxshrink.passes.channels.rules`` and ``onnxshrink.passes.channels.index_rules``, and the
graph edits in ``onnxshrink.passes.channels.edits``.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from typing import Any, Literal

import networkx as nx
import numpy as np
import onnx_ir as ir

from onnxshrink.passes.channels.edits import permute, remove, set_constant_input
from onnxshrink.passes.channels.types import Layout, Site, _Atoms
from onnxshrink.passes.channels.walk import _inferred_shapes, _Walker

__all__ = [
    "ChannelGroup",
    "ChannelPlan",
    "Layout",
    "Purpose",
    "Site",
    "analyze",
    "iter_ok",
    "permute",
    "remove",
    "set_constant_input",
]


Purpose = Literal["permute", "remove"]


@dataclasses.dataclass
class ChannelGroup:
    """Channels that must be permuted or removed together.

    Attributes:
        index: Position of the group in the plan.
        size: Number of channel classes (channels of the group's space).
        classes: Root atom of each class, in canonical order (local index = position here).
        sites: Every tensor, attribute and constant the group touches.
        blocks: Local class indices that may only be permuted among themselves (Split, Slice,
            Concat segments); one block for a plain group.
        reasons: Why the group is refused; empty when it can be changed.
    """

    index: int
    size: int
    classes: np.ndarray
    sites: list[Site]
    blocks: list[np.ndarray]
    reasons: list[str]

    @property
    def ok(self) -> bool:
        return not self.reasons

    @property
    def label(self) -> str:
        names = [site.node_label for site in self.sites if site.kind == "producer"]
        unique = list(dict.fromkeys(names))
        return unique[0] + (f" (+{len(unique) - 1})" if len(unique) > 1 else "") if unique else f"group{self.index}"

    def of_kind(self, *kinds: str) -> list[Site]:
        return [site for site in self.sites if site.kind in kinds]

    def local(self, site: Site) -> np.ndarray:
        """The local class index at each channel position of ``site`` (-1 where another group's)."""
        lookup = dict(zip(self.classes.tolist(), range(self.size), strict=True))
        return np.array([lookup.get(int(c), -1) for c in site.classes], dtype=np.int64)

    def describe(self) -> dict[str, Any]:
        """Plain data: producers, parameters, index maps, consumers and reasons."""
        by_kind: dict[str, list[str]] = {}
        for site in self.sites:
            if site.kind != "value":
                by_kind.setdefault(site.kind, []).append(site.describe())
        return {
            "label": self.label,
            "channels": self.size,
            "blocks": [len(b) for b in self.blocks],
            **by_kind,
            "reasons": list(self.reasons),
        }


@dataclasses.dataclass
class ChannelPlan:
    """The channel groups of a model for one purpose (``permute`` or ``remove``)."""

    purpose: Purpose
    groups: list[ChannelGroup]

    def describe(self) -> list[dict[str, Any]]:
        return [group.describe() for group in self.groups]


def analyze(model: ir.Model, purpose: Purpose = "remove") -> ChannelPlan:
    """Builds the channel groups of the main graph; nothing in the model changes.

    Args:
        model: The model to analyze (its main graph; subgraphs and functions are not entered,
            and a channel used inside one refuses its group).
        purpose: ``permute`` accepts ops that are permutation-equivariant but lossy for removal
            (reductions and Softmax over the channel axis, Shape); ``remove`` refuses them.
    """
    shapes = _inferred_shapes(model)
    heads: dict[int, int] = {}
    while True:  # each round gives at least one more producer its head size, so it ends
        atoms = _Atoms()
        walker = _Walker(model, purpose, atoms, shapes, heads)
        walker.run()
        wanted = walker.head_sizes()
        if not wanted:
            return _group(walker.sites, atoms, purpose)
        heads.update(wanted)


def _group(sites: list[Site], atoms: _Atoms, purpose: Purpose) -> ChannelPlan:
    for site in sites:
        site.classes = atoms.roots(site.atoms)
    links = nx.Graph()
    for site in sites:
        roots = np.unique(site.classes).tolist()
        links.add_nodes_from(roots)
        if site.kind == "producer":
            links.add_edges_from(itertools.pairwise(roots))
    producer_roots = {int(c) for site in sites if site.kind == "producer" for c in site.classes}
    poisoned: dict[int, str] = {}
    for atom, reason in atoms.poison.items():
        poisoned.setdefault(atoms.find(atom), reason)
    component_of: dict[int, int] = {}
    components = [c for c in nx.connected_components(links) if c & producer_roots]
    components.sort(key=min)
    for index, members in enumerate(components):
        for root in members:
            component_of[root] = index
    grouped: list[list[Site]] = [[] for _ in components]
    for site in sites:
        owners = {component_of.get(int(c), -1) for c in site.classes} - {-1}
        for owner in owners:
            grouped[owner].append(site)
    groups = []
    for index, members in enumerate(components):
        groups.append(_make_group(index, members, grouped[index], poisoned))
    return ChannelPlan(purpose, groups)


def _make_group(index: int, members: set[int], sites: list[Site], poisoned: dict[int, str]) -> ChannelGroup:
    order: dict[int, int] = {}
    for site in sites:
        for c in site.classes.tolist():
            if c in members and c not in order:
                order[c] = len(order)
    classes = np.array(list(order), dtype=np.int64)
    size = len(classes)
    reasons = list(dict.fromkeys(poisoned[c] for c in classes.tolist() if c in poisoned))
    signature = np.zeros(size, dtype=np.uint64)
    for number, site in enumerate(sites):
        local = np.array([order.get(c, -1) for c in site.classes.tolist()], dtype=np.int64)
        mine = local[local >= 0]
        if len(np.unique(mine)) != len(mine):
            reasons.append(f"{site.describe()} reads one channel twice")
            continue
        signature[mine] = signature[mine] * np.uint64(1000003) + np.uint64(number + 1)
    blocks = [np.flatnonzero(signature == s) for s in dict.fromkeys(signature.tolist())]
    block_of = np.empty(size, dtype=np.int64)
    for number, block in enumerate(blocks):
        block_of[block] = number
    for site in sites:
        local = np.array([order.get(c, -1) for c in site.classes.tolist()], dtype=np.int64)
        mine = local[local >= 0]
        for number in np.unique(block_of[mine]).tolist():
            seen = mine[block_of[mine] == number]
            if np.any(np.diff(seen) < 0):
                reasons.append(f"{site.describe()} reads channels in another order")
                break
    return ChannelGroup(index, size, classes, sites, blocks, list(dict.fromkeys(reasons)))


def iter_ok(plan: ChannelPlan) -> Iterator[ChannelGroup]:
    """The groups of a plan that can be changed."""
    return (group for group in plan.groups if group.ok)
