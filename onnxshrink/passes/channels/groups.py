"""Channel groups and plans: the walk's sites gathered into the units that move or go together.

Unified atoms form a *class* (one channel that must move or go as a whole); classes linked through a
producer form a :class:`ChannelGroup`. :func:`group_sites` builds them from the walk's sites and
atoms; a :class:`ChannelPlan` is the plain-data result for one purpose.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from typing import Any

import networkx as nx
import numpy as np

from onnxshrink.passbase import NoMatch
from onnxshrink.passes.channels.types import Atoms, Purpose, Site


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
    reasons: list[NoMatch]

    @property
    def ok(self) -> bool:
        """True when the group can be changed (nothing refuses it)."""
        return not self.reasons

    @property
    def label(self) -> str:
        """The group's name in reports: its first producer, ``(+N)`` for the others."""
        names = [site.node_label for site in self.sites if site.kind == "producer"]
        unique = list(dict.fromkeys(names))
        return unique[0] + (f" (+{len(unique) - 1})" if len(unique) > 1 else "") if unique else f"group{self.index}"

    def of_kind(self, *kinds: str) -> list[Site]:
        """The group's sites of the given kinds, in walk order."""
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
            "reasons": [reason.reason for reason in self.reasons],
        }


@dataclasses.dataclass
class ChannelPlan:
    """The channel groups of a model for one purpose (``permute`` or ``remove``).

    Attributes:
        purpose: What the groups were built for.
        groups: The main graph's groups.
        outside: Producers the analysis does not enter (in subgraphs and model-local functions),
            by label, each with where it is.
    """

    purpose: Purpose
    groups: list[ChannelGroup]
    outside: dict[str, NoMatch] = dataclasses.field(default_factory=dict)

    def describe(self) -> list[dict[str, Any]]:
        """Every group's :meth:`ChannelGroup.describe`."""
        return [group.describe() for group in self.groups]

    def refused(self) -> dict[str, str]:
        """Returns ``{label: reason}`` for what a pass leaves alone and reports as skipped.

        That is every refused group (with its first reason) and every producer outside the main graph.
        """
        found = {group.label: group.reasons[0].reason for group in self.groups if not group.ok}
        found.update((label, reason.reason) for label, reason in self.outside.items() if label not in found)
        return found


def iter_ok(plan: ChannelPlan) -> Iterator[ChannelGroup]:
    """The groups of a plan that can be changed."""
    return (group for group in plan.groups if group.ok)


def group_sites(sites: list[Site], atoms: Atoms, purpose: Purpose) -> ChannelPlan:
    """Gathers the walk's sites into groups: classes linked through a producer go together."""
    for site in sites:
        site.classes = atoms.roots(site.atoms)
    links = nx.Graph()
    for site in sites:
        roots = np.unique(site.classes).tolist()
        links.add_nodes_from(roots)
        if site.kind == "producer":
            links.add_edges_from(itertools.pairwise(roots))
    producer_roots = {int(c) for site in sites if site.kind == "producer" for c in site.classes}
    poisoned: dict[int, NoMatch] = {}
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
    groups = [_make_group(index, members, grouped[index], poisoned) for index, members in enumerate(components)]
    return ChannelPlan(purpose, groups)


def _make_group(index: int, members: set[int], sites: list[Site], poisoned: dict[int, NoMatch]) -> ChannelGroup:
    order: dict[int, int] = {}
    for site in sites:
        for c in site.classes.tolist():
            if c in members and c not in order:
                order[c] = len(order)
    classes = np.array(list(order), dtype=np.int64)
    size = len(classes)
    reasons = list(dict.fromkeys(poisoned[c] for c in classes.tolist() if c in poisoned))
    # Sites that read the same classes get the same signature: each signature is one block.
    signature = np.zeros(size, dtype=np.uint64)
    for number, site in enumerate(sites):
        local = np.array([order.get(c, -1) for c in site.classes.tolist()], dtype=np.int64)
        mine = local[local >= 0]
        if len(np.unique(mine)) != len(mine):
            reasons.append(NoMatch(f"{site.describe()} reads one channel twice"))
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
                reasons.append(NoMatch(f"{site.describe()} reads channels in another order"))
                break
    return ChannelGroup(index, size, classes, sites, blocks, list(dict.fromkeys(reasons)))
