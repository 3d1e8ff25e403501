"""The contract between the channel walk and the per-op channel rules.

A rule is a function ``rule(walk, node, ins)``: ``ins`` holds the :class:`Layout` of every input
(``None`` where an input carries no tracked channels). It either gives the node's outputs a layout
(``walk.out``), records the sites the op touches (``walk.site``, ``walk.param``...) or refuses the
atoms it cannot carry (``walk.kill`` with a :class:`~onnxshrink.passbase.NoMatch`). Rules see the
walk only through :class:`ChannelWalk`, so the rule modules never import the walker.

:data:`CHANNEL_RULE_TABLE` is the table the walker dispatches on, keyed by (domain, op type, opset
range); ``onnxshrink.passes.channels.rules`` and ``onnxshrink.passes.channels.index_rules`` fill it
when imported. ``docs/channels.md`` describes the rules for users.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import onnx_ir as ir

from onnxshrink.ir.optable import OpTable
from onnxshrink.passbase import NoMatch
from onnxshrink.passes.channels.types import Atoms, Dim, Layout, Purpose


class ChannelWalk(Protocol):
    """What a channel rule may read and record during the walk."""

    opset: int
    """The default domain's opset version of the graph walked."""
    purpose: Purpose
    atoms: Atoms
    """The atom union-find: rules mint atoms (``new``) and couple them (``union``)."""

    def shape(self, value: ir.Value | None) -> list[Dim] | None:
        """The value's dims (declared, else inferred), or None when unknown."""

    def rank(self, value: ir.Value | None, layout: Layout | None) -> int | None:
        """The rank of a value: its layout's when it has one, else its shape's."""

    def broadcasts(self, value: ir.Value | None, axis: int, depth: int = 12) -> bool:
        """Whether ``value`` has size 1 (or no dim) at ``axis``, counted from the end (negative)."""

    def keeps_shape(self, target: ir.Value | None, dims: list[Dim], axis: int) -> bool:
        """Whether a computed Reshape target keeps ``dims`` up to the channel axis ``axis``."""

    def kill(self, layout: Layout | None, reason: NoMatch) -> None:
        """Refuses the atoms of ``layout`` (nothing when None)."""

    def kill_all(self, ins: list[Layout | None], reason: NoMatch) -> None:
        """Refuses the atoms of every input layout."""

    def out(self, node: ir.Node, layout: Layout, index: int = 0) -> None:
        """Gives output ``index`` of ``node`` a layout."""

    def site(
        self, kind: str, node: ir.Node, index: int, axis: int, atoms: np.ndarray, inner: int = 1, **extra: Any
    ) -> None:
        """Records a :class:`~onnxshrink.passes.channels.types.Site`."""

    def param(self, node: ir.Node, index: int, layout: Layout, out_rank: int, out_axis: int) -> bool:
        """Records a constant operand that broadcasts against the channel axis; False when it cannot."""

    def bias(self, node: ir.Node, index: int, layout: Layout) -> bool:
        """Records a Conv-style ``[C]`` bias; False when it is not a constant of that shape."""

    def producer(
        self, node: ir.Node, weight_axis: int, count: int, out_rank: int, bias: int | None, **extra: Any
    ) -> np.ndarray:
        """Mints atoms for a producer's output channels and records its weight and bias."""

    def request_heads(self, layout: Layout, size: int) -> None:
        """Asks the producers of ``layout``'s channels to mint one atom per head of ``size`` channels."""


ChannelRule = Callable[[ChannelWalk, ir.Node, list[Layout | None]], None]
"""``rule(walk, node, ins)``: propagates layouts through one node."""

CHANNEL_RULE_TABLE: OpTable[ChannelRule] = OpTable("channel rules")
"""The channel rule of every supported op, filled by the rule modules."""
