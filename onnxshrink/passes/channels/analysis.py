"""Channel analysis: the walk, run until attention heads settle, then its sites grouped.

The walk (:class:`~onnxshrink.passes.channels.walk.ChannelWalker`) dispatches on the rule table
that :mod:`onnxshrink.passes.channels.rules` and :mod:`onnxshrink.passes.channels.index_rules`
fill; the grouping is :func:`~onnxshrink.passes.channels.groups.group_sites`.
"""

from __future__ import annotations

import onnx_ir as ir

from onnxshrink.passes.channels import index_rules, rules
from onnxshrink.passes.channels.groups import ChannelPlan, group_sites
from onnxshrink.passes.channels.ruleset import CHANNEL_RULE_TABLE
from onnxshrink.passes.channels.types import Purpose
from onnxshrink.passes.channels.walk import ChannelWalker, inferred_shapes, producers_outside

# The rule modules register their rules in CHANNEL_RULE_TABLE when imported; the walk needs them all.
_RULE_MODULES = (rules, index_rules)


def analyze(model: ir.Model, purpose: Purpose = "remove") -> ChannelPlan:
    """Builds the channel groups of the main graph; nothing in the model changes.

    Attention heads: a Reshape that splits the channel axis into ``(heads, d)`` needs whole heads
    to move together, so a walk notes which producers feed one, and the walk runs again with those
    producers minting one atom per head; each round gives at least one more producer its head
    size, so the loop ends.

    Args:
        model: The model to analyze (its main graph; subgraphs and functions are not entered:
            a channel used inside one refuses its group, and their own producers are listed in
            :attr:`ChannelPlan.outside`).
        purpose: ``permute`` accepts ops that are permutation-equivariant but lossy for removal
            (reductions and Softmax over the channel axis, Shape); ``remove`` refuses them.
    """
    shapes = inferred_shapes(model)
    heads: dict[int, int] = {}
    while True:
        walker = ChannelWalker(model, purpose, CHANNEL_RULE_TABLE, shapes, heads)
        walker.run()
        wanted = walker.head_sizes()
        if not wanted:
            plan = group_sites(walker.sites, walker.atoms, purpose)
            plan.outside = producers_outside(model)
            return plan
        heads.update(wanted)
