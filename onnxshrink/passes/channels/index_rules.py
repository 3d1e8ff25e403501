"""Channel rules that remap channel indices, and the rules that carry attention heads.

Transpose, Squeeze and Unsqueeze move the channel axis; Concat, Split and Slice shift channel
indices; Flatten and Reshape expand each channel into ``inner`` features or split the channel axis
into attention heads (see "index remaps" and "attention heads" in ``docs/channels.md``). Heads then
travel on a batch axis through a MatMul of two activations (QKᵀ, attention·V), and a Shape that only
reads the other dims of a head tensor leaves them alone. The rules follow the contract of
:mod:`onnxshrink.passes.channels.ruleset` and register themselves in its table.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from onnxshrink.ir.constants import constant_ints, is_constant
from onnxshrink.passbase import NoMatch
from onnxshrink.passes.channels.ruleset import CHANNEL_RULE_TABLE, ChannelWalk
from onnxshrink.passes.channels.types import Dim, Layout, input_at, node_name

AxesReader = Callable[[ir.Node], "list[int] | None"]
"""Reads the ``axes`` of a Squeeze, Unsqueeze or reduction: from its attribute or its input."""


def ints_attribute(node: ir.Node, name: str) -> list[int] | None:
    """An integer-list attribute as a list, or None when the node does not have it."""
    values = node.attributes.get_ints(name)
    return None if values is None else list(values)


def axes_attribute(node: ir.Node) -> list[int] | None:
    """The ``axes`` attribute (before the opset that made axes an input), or None."""
    return ints_attribute(node, "axes")


def axes_input(node: ir.Node) -> list[int] | None:
    """The constant ``axes`` input (input 1), or None when it is missing or not constant."""
    return constant_ints(input_at(node, 1))


def couple(
    w: ChannelWalk,
    node: ir.Node,
    ins: list[Layout | None],
    carried: list[Layout],
    axis: int,
    rank: int,
    *,
    params: bool = False,
) -> None:
    """Unifies the ``carried`` layouts position by position and passes them to the output.

    Every other input must broadcast over the channel axis (``axis`` of an output of ``rank``) or,
    with ``params``, be a constant per channel (recorded as a param site); otherwise the inputs
    are refused.
    """
    where = f"{node.op_type} '{node_name(node)}'"
    first = carried[0]
    for index, (value, layout) in enumerate(zip(node.inputs, ins, strict=True)):
        if layout is not None or value is None:
            continue
        if params and is_constant(value):
            if not w.param(node, index, first, rank, axis):
                w.kill_all(ins, NoMatch(f"{where} constant '{value.name}' does not broadcast per channel"))
                return
            continue
        if not w.broadcasts(value, axis - rank):
            w.kill_all(ins, NoMatch(f"{where} couples channels with '{value.name}', which no prunable layer makes"))
            return
    for other in carried[1:]:
        w.atoms.union(first.atoms, other.atoms)
    w.out(node, Layout(axis, rank, first.atoms, first.inner))


@CHANNEL_RULE_TABLE.register("Transpose")
def _transpose(w: ChannelWalk, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0]
    assert x is not None
    perm = node.attributes.get_ints("perm") or list(range(x.rank))[::-1]
    w.out(node, Layout(perm.index(x.axis), x.rank, x.atoms, x.inner))


def _squeeze(w: ChannelWalk, node: ir.Node, ins: list[Layout | None], read_axes: AxesReader = axes_input) -> None:
    x = ins[0]
    assert x is not None
    axes = read_axes(node)
    if axes is None:
        shape = w.shape(node.inputs[0])
        axes = [i for i, d in enumerate(shape) if d == 1] if shape is not None else None
    if axes is None or any(ins[1:]):
        w.kill(x, NoMatch(f"Squeeze '{node_name(node)}' has unknown axes", missing_facts=True))
        return
    axes = [a % x.rank for a in axes]
    if x.axis in axes:
        w.kill(x, NoMatch(f"Squeeze '{node_name(node)}' removes the channel axis"))
        return
    w.out(node, Layout(x.axis - sum(a < x.axis for a in axes), x.rank - len(axes), x.atoms, x.inner))


def _unsqueeze(w: ChannelWalk, node: ir.Node, ins: list[Layout | None], read_axes: AxesReader = axes_input) -> None:
    x = ins[0]
    assert x is not None
    axes = read_axes(node)
    if axes is None or any(ins[1:]):
        w.kill(x, NoMatch(f"Unsqueeze '{node_name(node)}' has unknown axes"))
        return
    rank = x.rank + len(axes)
    new_axes = {a % rank for a in axes}
    kept = [i for i in range(rank) if i not in new_axes]
    w.out(node, Layout(kept[x.axis], rank, x.atoms, x.inner))


# Squeeze and Unsqueeze read their axes from an attribute until opset 13 made them an input.
CHANNEL_RULE_TABLE.add("Squeeze", functools.partial(_squeeze, read_axes=axes_attribute), until=12)
CHANNEL_RULE_TABLE.add("Squeeze", _squeeze, since=13)
CHANNEL_RULE_TABLE.add("Unsqueeze", functools.partial(_unsqueeze, read_axes=axes_attribute), until=12)
CHANNEL_RULE_TABLE.add("Unsqueeze", _unsqueeze, since=13)


@CHANNEL_RULE_TABLE.register("Flatten")
def _flatten(w: ChannelWalk, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0]
    assert x is not None
    start = node.attributes.get_int("axis", 1) % x.rank if x.rank else 0
    shape = w.shape(node.inputs[0])
    where = f"Flatten '{node_name(node)}'"
    if shape is None or x.axis < start or any(d != 1 for d in shape[start : x.axis]):
        w.kill(x, NoMatch(f"{where} does not keep the channels outermost"))
        return
    after = shape[x.axis + 1 :]
    if not all(isinstance(d, int) for d in after):
        w.kill(x, NoMatch(f"{where} flattens dims of unknown size", missing_facts=True))
        return
    inner = x.inner * int(np.prod([int(d) for d in after if isinstance(d, int)], dtype=np.int64))
    w.out(node, Layout(1, 2, x.atoms, inner))


@CHANNEL_RULE_TABLE.register("Reshape")
def _reshape(w: ChannelWalk, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0]
    assert x is not None
    where = f"Reshape '{node_name(node)}'"
    target = constant_ints(node.inputs[1]) if not any(ins[1:]) else None
    in_shape, out_shape = w.shape(node.inputs[0]), w.shape(node.outputs[0])
    zero_copies = not node.attributes.get_int("allowzero", 0)
    if target is None and in_shape is not None and zero_copies and w.keeps_shape(node.inputs[1], in_shape, x.axis):
        tail = in_shape[x.axis + 1 :]
        merged = w.shape(node.inputs[1]) == [x.axis + 1]
        if merged and all(isinstance(d, int) for d in tail):  # e.g. [B, S, H, D] -> [B, S, -1]
            inner = x.inner * int(np.prod([d for d in tail if isinstance(d, int)], dtype=np.int64))
            w.out(node, Layout(x.axis, x.axis + 1, x.atoms, inner))
        elif not merged:
            w.out(node, x)
        else:
            w.kill(x, NoMatch(f"{where} merges dims of unknown size into the channel axis", missing_facts=True))
        return
    if target is None or in_shape is None or out_shape is None or len(in_shape) != x.rank:
        w.kill(x, NoMatch(f"{where} has a non-constant target or unknown shapes", missing_facts=target is not None))
        return
    a = x.axis
    count = len(x.atoms) * x.inner
    if len(out_shape) > a and out_shape[: a + 1] == in_shape[: a + 1] and in_shape[a] == count:
        layout = Layout(a, len(out_shape), x.atoms, x.inner)
    elif (
        len(out_shape) == a + 1
        and out_shape[:a] == in_shape[:a]
        and all(isinstance(d, int) for d in in_shape[a + 1 :])
        and in_shape[a] == count
    ):
        layout = Layout(
            a, a + 1, x.atoms, x.inner * int(np.prod([int(d) for d in in_shape[a + 1 :] if isinstance(d, int)]))
        )
    elif _splits_heads(in_shape, out_shape, a, count):
        heads, size = int(out_shape[a] or 0), int(out_shape[a + 1] or 0)
        if x.inner != size:  # the producers mint one atom per head in the next walk
            w.request_heads(x, size)
            w.kill(x, NoMatch(f"{where} splits the channels into {heads} heads of {size}, which no producer makes"))
            return
        layout = Layout(a, len(out_shape), x.atoms)
    else:
        w.kill(x, NoMatch(f"{where} splits or moves the channel axis"))
        return
    w.site("reshape", node, 1, a, layout.atoms, layout.inner, entry=target[a])
    w.out(node, layout)


def _splits_heads(in_shape: list[Dim], out_shape: list[Dim], axis: int, count: int) -> bool:
    """Whether a Reshape splits channel axis ``axis`` (``count`` wide) into (heads, d) and keeps the rest."""
    if len(out_shape) != len(in_shape) + 1 or in_shape[axis] != count:
        return False
    heads, size = out_shape[axis], out_shape[axis + 1]
    return (
        out_shape[:axis] == in_shape[:axis]
        and out_shape[axis + 2 :] == in_shape[axis + 1 :]
        and isinstance(heads, int)
        and isinstance(size, int)
        and heads * size == count
    )


@CHANNEL_RULE_TABLE.register("Concat")
def _concat(w: ChannelWalk, node: ir.Node, ins: list[Layout | None]) -> None:
    carried = [layout for layout in ins if layout is not None]
    rank = carried[0].rank
    axis = node.attributes.get_int("axis", 0) % rank
    where = f"Concat '{node_name(node)}'"
    if any(layout.rank != rank or layout.inner != 1 or layout.axis != carried[0].axis for layout in carried):
        w.kill_all(ins, NoMatch(f"{where} joins channels on different axes"))
        return
    if carried[0].axis == axis:
        parts = []
        for value, layout in zip(node.inputs, ins, strict=True):
            if layout is not None:
                parts.append(layout.atoms)
                continue
            shape = w.shape(value)
            size = shape[axis] if shape is not None else None
            name = value.name if value is not None else "?"
            if not isinstance(size, int):
                w.kill_all(ins, NoMatch(f"{where} input '{name}' has an unknown channel count", missing_facts=True))
                return
            parts.append(w.atoms.new(size, NoMatch(f"{where} input '{name}' is no prunable layer's output")))
        w.out(node, Layout(axis, rank, np.concatenate(parts)))
        return
    for index, (value, layout) in enumerate(zip(node.inputs, ins, strict=True)):
        if layout is None and not w.param(node, index, carried[0], rank, carried[0].axis):
            name = value.name if value is not None else "?"
            w.kill_all(ins, NoMatch(f"{where} joins channels with '{name}', which no layer makes"))
            return
    for layout in carried[1:]:
        w.atoms.union(carried[0].atoms, layout.atoms)
    w.out(node, carried[0])


@CHANNEL_RULE_TABLE.register("Split")
def _split(w: ChannelWalk, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0]
    assert x is not None
    axis = node.attributes.get_int("axis", 0) % x.rank
    if axis != x.axis:
        for index in range(len(node.outputs)):
            w.out(node, x, index)
        return
    where = f"Split '{node_name(node)}'"
    count = len(x.atoms)
    if w.opset >= 13:
        sizes = constant_ints(input_at(node, 1))
        explicit = input_at(node, 1) is not None
    else:
        sizes = ints_attribute(node, "split")
        explicit = sizes is not None
    if sizes is None and not explicit:
        parts = len(node.outputs)
        step = -(-count // parts)
        sizes = [min(step, count - i * step) for i in range(parts)]
    if sizes is None or sum(sizes) != count or x.inner != 1 or any(ins[1:]):
        w.kill(x, NoMatch(f"{where} has unknown split sizes", missing_facts=True))
        return
    w.site("split", node, 1, x.axis, x.atoms, sizes=sizes)
    bounds = np.cumsum([0, *sizes])
    for index in range(len(node.outputs)):
        part = x.atoms[bounds[index] : bounds[index + 1]]
        w.out(node, Layout(x.axis, x.rank, part), index)


@CHANNEL_RULE_TABLE.register("Slice")
def _slice(w: ChannelWalk, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0]
    assert x is not None
    where = f"Slice '{node_name(node)}'"
    if w.opset < 10:
        starts, ends, axes = (ints_attribute(node, key) for key in ("starts", "ends", "axes"))
        steps = None
    else:
        starts, ends, axes, steps = (constant_ints(input_at(node, i)) for i in (1, 2, 3, 4))
    if starts is None or ends is None or any(ins[1:]):
        w.kill(x, NoMatch(f"{where} has non-constant bounds"))
        return
    axes = [a % x.rank for a in (axes if axes is not None else range(len(starts)))]
    if x.axis not in axes:
        w.out(node, x)
        return
    entry = axes.index(x.axis)
    if (steps is not None and steps[entry] != 1) or x.inner != 1:
        w.kill(x, NoMatch(f"{where} steps over channels"))
        return
    count = len(x.atoms)
    start, end = (int(np.clip(v + count if v < 0 else v, 0, count)) for v in (starts[entry], ends[entry]))
    if end <= start:
        w.kill(x, NoMatch(f"{where} keeps no channel"))
        return
    w.site("slice", node, -1, x.axis, x.atoms, entry=entry, start=start, end=end, attrs=w.opset < 10)
    w.out(node, Layout(x.axis, x.rank, x.atoms[start:end]))


def matmul_activations(w: ChannelWalk, node: ir.Node, ins: list[Layout | None]) -> None:
    """QKᵀ and attention·V: channels (heads) on a batch axis couple both operands and pass through.

    Channels on a multiplied or reduced axis (the same dims removed from every head) are refused.
    """
    where = f"MatMul '{node_name(node)}'"
    ranks = [w.rank(v, layout) for v, layout in zip(node.inputs, ins, strict=True)]
    if any(r is None or r < 3 for r in ranks):
        w.kill_all(ins, NoMatch(f"{where} multiplies two activations over their channels"))
        return
    out_rank = max(r for r in ranks if r is not None)
    carried = [(layout.axis + out_rank - layout.rank, layout) for layout in ins if layout is not None]
    axis, first = carried[0]
    if any(
        other_axis != axis or other_axis >= out_rank - 2 or other.inner != first.inner for other_axis, other in carried
    ) or any(len(other.atoms) != len(first.atoms) for _, other in carried):
        w.kill_all(ins, NoMatch(f"{where} multiplies or reduces channels of two activations"))
        return
    couple(w, node, ins, [other for _, other in carried], axis, out_rank)


@CHANNEL_RULE_TABLE.register("Shape", "Size")
def _shape_of(w: ChannelWalk, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0]
    if w.purpose == "remove" and x is not None and not _reads_other_dims(node, x):
        w.kill(x, NoMatch(f"{node.op_type} '{node_name(node)}' reads the channel count"))


def _reads_other_dims(node: ir.Node, x: Layout) -> bool:
    """Whether a Shape's result is only read at dims other than the channel axis (through Gather).

    Attention exports take the sequence length this way from a tensor that carries the heads.
    """
    if node.op_type != "Shape":
        return False
    start = node.attributes.get_int("start", 0) % x.rank if x.rank else 0
    end = node.attributes.get_int("end", x.rank)
    end = end % x.rank if end < 0 else min(end, x.rank)
    if not start <= x.axis < end:
        return True
    output = node.outputs[0]
    if output.is_graph_output() or not output.uses():
        return not output.is_graph_output()
    for user, index in output.uses():
        indices = constant_ints(input_at(user, 1)) if user.op_type == "Gather" and index == 0 else None
        if indices is None or user.attributes.get_int("axis", 0) != 0:
            return False
        if any((i % (end - start)) + start == x.axis for i in indices):
            return False
    return True
