"""``cleanup`` rules on layout: Reshape, Flatten, Squeeze/Unsqueeze, Transpose, Slice, Pad, Expand."""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from onnxshrink.passes.cleanup.facts import Dims, Facts
from onnxshrink.passes.cleanup.rules import (
    RULES,
    Bypass,
    Decision,
    NoMatch,
    Replace,
    Rewire,
    RuleContext,
    feeds_only,
    input_at,
    int_attr,
    ints_attr,
    keeps_shape,
    producer,
    unknown,
)

INT64_MAX = 2**63 - 1


def _axes_of(node: ir.Node, facts: Facts) -> list[int] | NoMatch | None:
    """Squeeze/Unsqueeze axes: the input (opset 13+) or the attribute; None when not given."""
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        axes = facts.constant_ints(node.inputs[1])
        return NoMatch("axes are not constant") if axes is None else axes
    if "axes" in node.attributes:
        axes = ints_attr(node, "axes")
        return NoMatch("axes attribute is not a list of ints") if axes is None else axes
    return None


# --------------------------------------------------------------------------- Reshape and friends

_VIEWS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")  # reinterpret dims, keep element order


def _reshape_result(dims: Dims, target: list[int], allowzero: bool) -> Dims | None:
    """The dims Reshape(x: dims, target) produces, where they can be named; None otherwise."""
    if target.count(-1) > 1 or any(t < -1 for t in target):
        return None
    out: list[int | str | None] = []
    for i, t in enumerate(target):
        if t == 0 and not allowzero:
            if i >= len(dims):
                return None
            out.append(dims[i])
        else:
            out.append(t)
    if -1 in out:
        known = [d for d in out if isinstance(d, int) and d != -1]
        static = [d for d in dims if isinstance(d, int)]
        if len(known) != len(out) - 1 or len(static) != len(dims):
            return None
        product, total = math.prod(known), math.prod(static)
        if product == 0 or total % product:
            return None
        out[out.index(-1)] = total // product
    return tuple(out)


def _same_dims(a: Dims, b: Dims) -> bool:
    return len(a) == len(b) and all(x == y and x is not None for x, y in zip(a, b, strict=True))


@RULES.register("Reshape", since=5)
def reshape_noop_or_merge(node: ir.Node, context: RuleContext) -> Decision | NoMatch:
    """Reshape to the input's own dims is removed; Reshape of a view reads the view's input."""
    facts = context.facts
    x, shape = node.inputs[0], input_at(node, 1)
    target = facts.constant_ints(shape)
    allowzero = int_attr(node, "allowzero", 0)
    if x is None or target is None or allowzero is None:
        return NoMatch("target is not a constant")
    # A 0 (allowzero=0) copies a dim of the direct input, which a merge would change.
    inner = producer(x, *_VIEWS) if (allowzero or 0 not in target) else None
    source = inner.inputs[0] if inner is not None else x
    if source is None:
        return NoMatch("view without input")
    dims = facts.dims(source)
    result = _reshape_result(dims, target, bool(allowzero)) if dims is not None else None
    rewire = Rewire(((0, source),), "reshapes_merged") if inner is not None else None
    if result is not None and dims is not None and _same_dims(result, dims):
        return Bypass(source, "noop_removed" if inner is None else "reshapes_merged", rewire)
    if rewire is not None:
        return rewire
    if dims is None:
        return unknown("input rank")
    return NoMatch(f"target {target} does not reproduce the input dims {dims}")


@RULES.register("Flatten")
def flatten_noop(node: ir.Node, context: RuleContext) -> Decision | NoMatch:
    """Flatten whose output dims equal its input's (a rank-2 input at axis 1, or static dims) is removed."""
    x = node.inputs[0]
    dims = context.facts.dims(x)
    axis = int_attr(node, "axis", 1)
    if x is None or axis is None:
        return NoMatch("no input or axis")
    if dims is None:
        return unknown("input rank")
    axis = axis + len(dims) if axis < 0 else axis
    if len(dims) == 2 and axis == 1:
        return Bypass(x, "noop_removed")
    static = context.facts.static_dims(x)
    if static is not None and len(static) == 2:
        flat = (math.prod(static[:axis]), math.prod(static[axis:]))
        if flat == static:
            return Bypass(x, "noop_removed")
    return NoMatch(f"Flatten(axis={axis}) of dims {dims} changes them")


def _normalized(axes: list[int], rank: int | None) -> set[int] | None:
    if all(a >= 0 for a in axes):
        return set(axes)
    return None if rank is None else {a + rank if a < 0 else a for a in axes}


def _undo_pair(node: ir.Node, inverse: str, context: RuleContext) -> Decision | NoMatch:
    """Squeeze(Unsqueeze(x, a), a) and Unsqueeze(Squeeze(x, a), a) are x."""
    inner = producer(node.inputs[0], inverse)
    if inner is None or inner.inputs[0] is None:
        return NoMatch(f"input is not computed by {inverse}")
    outer_axes, inner_axes = _axes_of(node, context.facts), _axes_of(inner, context.facts)
    if isinstance(outer_axes, NoMatch) or isinstance(inner_axes, NoMatch):
        return NoMatch("axes not constant")
    if outer_axes is None or inner_axes is None:
        return NoMatch("Squeeze without axes removes every 1 of x too")
    # Both lists index the larger tensor: Unsqueeze's output, Squeeze's input.
    between = node.inputs[0] if node.op_type == "Squeeze" else inner.inputs[0]
    rank = context.facts.rank(between)
    outer_set, inner_set = _normalized(outer_axes, rank), _normalized(inner_axes, rank)
    if outer_set is None or inner_set is None:
        return unknown("rank for negative axes")
    if len(outer_set) != len(outer_axes) or outer_set != inner_set:
        return NoMatch(f"axes {inner_axes} and {outer_axes} differ")
    return Bypass(inner.inputs[0], "squeeze_pairs_removed")


@RULES.register("Squeeze", "Unsqueeze")
def squeeze_noop_or_pair(node: ir.Node, context: RuleContext) -> Decision | NoMatch:
    """Squeeze of no 1 and Unsqueeze of no axis are removed; so is a Squeeze/Unsqueeze pair."""
    x = node.inputs[0]
    axes = _axes_of(node, context.facts)
    if x is None or isinstance(axes, NoMatch):
        return NoMatch("axes not constant")
    if node.op_type == "Unsqueeze":
        return Bypass(x, "noop_removed") if axes == [] else _undo_pair(node, "Squeeze", context)
    if not axes:
        static = context.facts.static_dims(x)
        if static is not None and 1 not in static:
            return Bypass(x, "noop_removed")
        if context.facts.dims(x) is None:
            return unknown("input rank")
    return _undo_pair(node, "Unsqueeze", context)


@RULES.register("Squeeze")
def squeeze_transposed_unsqueeze(node: ir.Node, context: RuleContext) -> Decision | NoMatch:
    """Squeeze(Transpose(Unsqueeze(x, [u]), p), [s]) with p[s] == u is one Transpose of x.

    The axis inserted and then squeezed carries nothing; the perm of the others survives.
    """
    transpose = producer(node.inputs[0], "Transpose")
    unsqueeze = producer(transpose.inputs[0] if transpose is not None else None, "Unsqueeze")
    if transpose is None or unsqueeze is None or unsqueeze.inputs[0] is None:
        return NoMatch("not Squeeze(Transpose(Unsqueeze(x)))")
    if not (feeds_only(transpose.outputs[0]) and feeds_only(unsqueeze.outputs[0])):
        return NoMatch("the Transpose or Unsqueeze has other uses")
    inserted, squeezed = _axes_of(unsqueeze, context.facts), _axes_of(node, context.facts)
    perm = ints_attr(transpose, "perm")
    if not isinstance(inserted, list) or not isinstance(squeezed, list) or perm is None:
        return NoMatch("axes or perm not known")
    if len(inserted) != 1 or len(squeezed) != 1:
        return NoMatch("more than one axis")
    rank = len(perm)
    u, s = inserted[0] % rank, squeezed[0] % rank
    if perm[s] != u:
        return NoMatch("the squeezed axis is not the inserted one")
    kept = [p - (p > u) for i, p in enumerate(perm) if i != s]
    return Replace("Transpose", (unsqueeze.inputs[0],), (ir.AttrInt64s("perm", kept),), "transposes_merged")


# --------------------------------------------------------------------------- Transpose


def _perm(node: ir.Node, rank: int | None) -> list[int] | None:
    perm = ints_attr(node, "perm")
    if perm is not None:
        return perm
    return None if rank is None else list(reversed(range(rank)))


@RULES.register("Transpose")
def transpose_noop_or_merge(node: ir.Node, context: RuleContext) -> Decision | NoMatch:
    """Identity perms are removed; Transpose(Transpose(x, p1), p2) is Transpose(x, p1[p2])."""
    x = node.inputs[0]
    if x is None or ("perm" in node.attributes and ints_attr(node, "perm") is None):
        return NoMatch("perm is not a list of ints")
    inner = producer(x, "Transpose")
    source = inner.inputs[0] if inner is not None else None
    if inner is not None and source is not None and "perm" not in node.attributes and "perm" not in inner.attributes:
        return Bypass(source, "transposes_merged")  # reversing twice
    outer_perm = ints_attr(node, "perm")
    rank = len(outer_perm) if outer_perm is not None else context.facts.rank(x)
    perm = _perm(node, rank)
    if perm is None:
        return unknown("rank (no perm)")
    if inner is None or source is None:
        if perm == list(range(len(perm))):
            return Bypass(x, "noop_removed")
        return NoMatch(f"perm {perm} is not the identity")
    inner_perm = _perm(inner, len(perm))
    if inner_perm is None or sorted(inner_perm) != list(range(len(perm))):
        return NoMatch("inner perm does not match")
    composed = [inner_perm[p] for p in perm]
    rewire = Rewire(((0, source),), "transposes_merged", (ir.AttrInt64s("perm", composed),))
    if composed != sorted(composed):
        return rewire
    # An identity Transpose reading ``source`` only pays when the inner one dies.
    return Bypass(source, "transposes_merged", rewire if feeds_only(x) else None)


@RULES.register("Transpose", since=5)
def transpose_of_unit_dims_merges(node: ir.Node, context: RuleContext) -> Decision | NoMatch:
    """A Transpose that only moves dims of size 1 keeps the element order: it is a Reshape.

    Applied where that saves a node: its input comes from a constant-target Reshape (or another
    view) used only here, whose input it then reshapes directly, or every use is a Reshape
    (which then merges with it). The output dims must be static, or copied from the same
    position of the input.
    """
    facts = context.facts
    x = node.inputs[0]
    dims = facts.dims(x)
    if x is None or dims is None:
        return unknown("input rank")
    perm = _perm(node, len(dims))
    if perm is None or sorted(perm) != list(range(len(dims))):
        return NoMatch("perm does not match the rank")
    moved = [p for p in perm if not (isinstance(dims[p], int) and dims[p] == 1)]
    if moved != sorted(moved):
        return NoMatch("the Transpose reorders dims that may be larger than 1")
    out = [dims[p] for p in perm]
    target = []
    for axis, dim in enumerate(out):
        if isinstance(dim, int):
            target.append(dim)
        elif dim is not None and axis < len(dims) and dims[axis] == dim:
            target.append(0)
        else:
            return NoMatch(f"output dim {axis} is neither static nor copied")
    inner = producer(x, *_VIEWS)
    source = inner.inputs[0] if inner is not None and feeds_only(x) and inner.inputs else None
    if source is not None and 0 in target:
        source = None  # a 0 copies a dim of the direct input, not of the view's
    uses = node.outputs[0].uses()
    if source is None and not (uses and all(use.node.op_type == "Reshape" and use.idx == 0 for use in uses)):
        return NoMatch("no view before and no Reshape after to merge with")
    return Replace(
        "Reshape", (source if source is not None else x,), (), "transposes_to_reshape", np.array(target, np.int64)
    )


# --------------------------------------------------------------------------- Slice, Pad, Expand


def _slice_spec(node: ir.Node, facts: Facts) -> tuple[list[int], list[int], list[int] | None, list[int] | None] | None:
    if len(node.inputs) >= 3:  # opset 10+
        starts, ends = facts.constant_ints(node.inputs[1]), facts.constant_ints(node.inputs[2])
        axes_value, steps_value = input_at(node, 3), input_at(node, 4)
        axes = facts.constant_ints(axes_value) if axes_value is not None else None
        steps = facts.constant_ints(steps_value) if steps_value is not None else None
        if (axes_value is not None and axes is None) or (steps_value is not None and steps is None):
            return None
    else:
        starts, ends, axes, steps = ints_attr(node, "starts"), ints_attr(node, "ends"), ints_attr(node, "axes"), None
    if starts is None or ends is None:
        return None
    return starts, ends, axes, steps


@RULES.register("Slice")
def slice_whole(node: ir.Node, context: RuleContext) -> Decision | NoMatch:
    """A Slice that starts at 0 and ends at or past every sliced dim with step 1 is removed."""
    x = node.inputs[0]
    spec = _slice_spec(node, context.facts)
    if x is None or spec is None:
        return NoMatch("starts/ends/axes/steps not constant")
    starts, ends, axes, steps = spec
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(starts)
    if not len(starts) == len(ends) == len(axes) == len(steps):
        return NoMatch("malformed slice")
    dims = context.facts.dims(x)
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        dim = None
        if dims is not None and -len(dims) <= axis < len(dims):
            dim = dims[axis]
        if step != 1:
            return NoMatch(f"step {step} on axis {axis}")
        if dims is None and (start != 0 or end != INT64_MAX):
            return unknown("input rank")
        if start != 0 and not (isinstance(dim, int) and start <= -dim):
            return NoMatch(f"starts at {start} on axis {axis}")
        if end != INT64_MAX and not (isinstance(dim, int) and end >= dim):
            return NoMatch(f"ends at {end} on axis {axis} of size {dim}")
    return Bypass(x, "noop_removed")


@RULES.register("Pad")
def pad_zero(node: ir.Node, context: RuleContext) -> Decision | NoMatch:
    """Pad with constant pads that are all zero is removed."""
    x = node.inputs[0]
    if len(node.inputs) > 1:
        pads = context.facts.constant_ints(node.inputs[1])
    else:
        pads = ints_attr(node, "pads") if "pads" in node.attributes else ints_attr(node, "paddings")
    if x is None or pads is None:
        return NoMatch("pads not constant")
    if any(pads):
        return NoMatch("pads are not all zero")
    return Bypass(x, "noop_removed")


@RULES.register("Expand", since=8)
def expand_noop(node: ir.Node, context: RuleContext) -> Decision | NoMatch:
    """Expand to a constant shape that broadcasting cannot make larger than the input is removed."""
    x = node.inputs[0]
    shape = context.facts.constant_ints(input_at(node, 1))
    if x is None or shape is None:
        return NoMatch("shape not constant")
    dims = context.facts.dims(x)
    if not keeps_shape(dims, shape):
        return unknown("input rank") if dims is None else NoMatch(f"expanding {dims} to {shape} may change them")
    return Bypass(x, "noop_removed")
