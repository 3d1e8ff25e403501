"""``cleanup``'s algebraic rules: an :class:`~onnxshrink.ir.optable.OpTable` of pure match functions.

A match function looks at one node (and the nodes that produce its inputs) and returns a
decision (what to rewrite) or :class:`NoMatch` with the reason it does not apply; it never
changes the graph. ``cleanup`` applies decisions (the rewrite step). Every rule is exact: it
fires only when the facts that make it so (dtypes, dims, constant contents) are known.

The table is keyed by (domain, op type, opset range): a rule registered ``since=5`` is only
tried on nodes that run at opset 5 or later. The rules live in ``rules_arith.py``,
``rules_layout.py`` and ``rules_activation.py``; importing them fills the table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Union

import numpy as np
import onnx_ir as ir

from onnxshrink.ir.graphs import is_onnx_op
from onnxshrink.ir.optable import OpTable
from onnxshrink.passbase import NoMatch
from onnxshrink.passes.cleanup.facts import Dims, Facts


@dataclasses.dataclass(frozen=True)
class RuleContext:
    """What a match function may consult besides the node: value facts and the node's opset."""

    facts: Facts
    opset: int


@dataclasses.dataclass(frozen=True)
class Rewire:
    """The node keeps its output but reads other inputs (index -> value) and attributes."""

    inputs: tuple[tuple[int, ir.Value], ...]
    stat: str
    attributes: tuple[ir.Attr, ...] = ()


@dataclasses.dataclass(frozen=True)
class Bypass:
    """The node's only output always equals ``source``: its uses read ``source`` instead.

    ``otherwise`` is applied when the bypass must not be (a graph output cannot be renamed),
    so that knowing more never does less than a weaker rule would have done.
    """

    source: ir.Value
    stat: str
    otherwise: Rewire | None = None


@dataclasses.dataclass(frozen=True)
class FormGemm:
    """``Add(MatMul(a, w), bias)`` (``add`` is the node matched) becomes ``Gemm(a, w, bias)``."""

    matmul: ir.Node
    a: ir.Value
    w: ir.Value
    bias: ir.Value
    stat: str = "gemm_formed"


@dataclasses.dataclass(frozen=True)
class Replace:
    """The node becomes one ``op_type`` node over ``inputs`` computing the same output."""

    op_type: str
    inputs: tuple[ir.Value, ...]
    attributes: tuple[ir.Attr, ...]
    stat: str
    constant: np.ndarray | None = None  # a new constant input, after ``inputs`` (a Reshape's target)


@dataclasses.dataclass(frozen=True)
class FormHardSwish:
    """The node matched computes ``x * Clip(x + 3, 0, 6) / 6``: one HardSwish, or HardSigmoid and Mul."""

    x: ir.Value
    fused: bool  # opset 14 or later: HardSwish; else x * HardSigmoid(x, 1/6, 0.5)
    stat: str = "hardswish_formed"


Decision = Union[Bypass, Rewire, FormGemm, Replace, FormHardSwish]  # noqa: UP007 - a runtime alias on Python 3.10 too
Match = Callable[[ir.Node, RuleContext], "Decision | NoMatch"]


RULES: OpTable[Match] = OpTable("cleanup rules")
"""Every algebraic rule, registered with ``@RULES.register(op_type, ..., since=opset)``."""


def match_node(node: ir.Node, context: RuleContext) -> Decision | NoMatch:
    """The first decision a rule for ``node`` takes, or why none applies."""
    reasons = []
    missing = False
    for entry in RULES.entries(node):
        if not entry.applies_to(context.opset):
            until = f" to {entry.until}" if entry.until is not None else ""
            reasons.append(f"{entry.entry.__name__}: needs opset {entry.since}{until}")
            continue
        decision = entry.entry(node, context)
        if not isinstance(decision, NoMatch):
            return decision
        reasons.append(f"{entry.entry.__name__}: {decision.reason}")
        missing = missing or decision.missing_facts
    return NoMatch("; ".join(reasons) or "no rule for this op", missing)


def unknown(what: str) -> NoMatch:
    """A rule cannot decide because a dtype or rank is unknown (shape inference may tell)."""
    return NoMatch(f"{what} unknown", missing_facts=True)


# --------------------------------------------------------------------------- helpers


def producer(value: ir.Value | None, *op_types: str) -> ir.Node | None:
    """The node computing ``value`` when it is one of ``op_types`` in the ONNX domain."""
    node = value.producer() if value is not None else None
    if node is None or not is_onnx_op(node, *op_types):
        return None
    return node


def ints_attr(node: ir.Node, name: str) -> list[int] | None:
    """Returns the INTS attribute ``name`` of ``node``; None when absent, of another type or a reference."""
    attr = node.attributes.get(name)
    if attr is None or attr.is_ref() or attr.type != ir.AttributeType.INTS:
        return None
    return [int(v) for v in attr.value]


def feeds_only(value: ir.Value) -> bool:
    """True when ``value`` has exactly one use and is not a graph output (its producer dies with it)."""
    return len(value.uses()) == 1 and not value.is_graph_output()


def int_attr(node: ir.Node, name: str, default: int) -> int | None:
    """Returns the INT attribute ``name`` of ``node``, ``default`` when absent, None when unusable.

    An attribute of another type, or a reference to a function attribute, is unusable.
    """
    attr = node.attributes.get(name)
    if attr is None:
        return default
    if attr.is_ref() or attr.type != ir.AttributeType.INT:
        return None
    return int(attr.value)


def input_at(node: ir.Node, index: int) -> ir.Value | None:
    """Returns input ``index`` of ``node``, or None when the node has fewer inputs or it is empty."""
    return node.inputs[index] if len(node.inputs) > index else None


def keeps_shape(x_dims: Dims | None, other: Sequence[int]) -> bool:
    """True when broadcasting a tensor of dims ``x_dims`` with static ``other`` gives ``x_dims``."""
    if x_dims is None:
        return len(other) == 0  # rank unknown: only a true scalar cannot enlarge x
    if len(other) > len(x_dims):
        return False
    aligned = x_dims[len(x_dims) - len(other) :]
    return all(o == 1 or (isinstance(d, int) and d == o) for d, o in zip(aligned, other, strict=True))
