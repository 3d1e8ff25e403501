"""Channel propagation rules: one handler per op, in the order of ``CHANNEL_RULES.md``.

Each handler receives the :class:`Layout` of every input (``None`` where an input carries no
tracked channels) and either gives its outputs a layout, records the sites the op touches
(``w.site``) or refuses the atoms it cannot carry (``w.kill``). The walk that calls them is
``onnxshrink.channels._Walker``; ``_HANDLERS`` is the table it dispatches on.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx_ir as ir

if TYPE_CHECKING:
    from onnxshrink.channels import _Walker

_ONNX = ("", "ai.onnx")


@dataclasses.dataclass(frozen=True)
class Layout:
    """How a value carries channels: ``atoms[c]`` sits at positions ``c*inner ... c*inner+inner-1`` of ``axis``."""

    axis: int
    rank: int
    atoms: np.ndarray
    inner: int = 1


Dim = int | str | None

_UNARY = frozenset(
    (
        *("Relu", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Gelu", "Erf", "Elu", "Selu"),
        *("Celu", "Softplus", "Softsign", "Exp", "Log", "Abs", "Neg", "Sqrt", "Reciprocal", "Floor", "Ceil"),
        *("Round", "Sign", "Sin", "Cos", "Identity", "Dropout", "Cast", "Not", "Mish", "ThresholdedRelu"),
        *("IsNaN", "IsInf"),
    )
)
_ELEMENTWISE = frozenset(
    (
        *("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "PRelu", "Mod"),
        *("Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor"),
    )
)
_POOLS = frozenset(("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"))
_REDUCE = frozenset(
    (
        *("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2"),
        *("ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"),
    )
)
# Reduce ops whose axes became an input at this opset (ReduceSum at 13, the others at 18).
_AXES_INPUT_SINCE = {"ReduceSum": 13}


def _ints(value: ir.Value | None) -> list[int] | None:
    if value is None:
        return None
    tensor = ir.convenience.get_const_tensor(value)
    return None if tensor is None else [int(v) for v in tensor.numpy().reshape(-1).tolist()]


def _const(value: ir.Value | None) -> np.ndarray | None:
    if value is None or value.is_graph_input():
        return None
    tensor = ir.convenience.get_const_tensor(value)
    return None if tensor is None else tensor.numpy()


def _attr_int(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return attr.as_int() if attr is not None else default


def _attr_ints(node: ir.Node, name: str) -> list[int] | None:
    attr = node.attributes.get(name)
    return [int(v) for v in attr.as_ints()] if attr is not None else None


def _conv(w: _Walker, node: ir.Node, ins: list[Layout | None]) -> None:
    weight = _const(node.inputs[1] if len(node.inputs) > 1 else None)
    x = ins[0]
    if weight is None or weight.ndim < 3 or any(ins[1:]):
        w.kill_all(node, ins, f"Conv '{w.name(node)}' has no constant weight")
        return
    if x is not None and (x.axis != 1 or x.inner != 1):
        w.kill(x, f"Conv '{w.name(node)}' reads channels on axis {x.axis}")
        x = None
    groups = _attr_int(node, "group", 1)
    out_channels, per_group = weight.shape[0], weight.shape[1]
    if groups > 1 and per_group == 1 and out_channels == groups:  # depthwise: channel c in, c out
        if x is None:
            return
        w.site("param", node, 1, 0, x.atoms)
        if len(node.inputs) > 2 and node.inputs[2] is not None and not w.bias(node, 2, x):
            w.kill(x, f"Conv '{w.name(node)}' bias is not constant")
        w.site("depthwise", node, -1, 0, x.atoms)
        w.out(node, x)
        return
    if groups > 1 and per_group == 1:
        w.kill(x, f"depthwise Conv '{w.name(node)}' has channel multiplier {out_channels // groups}")
        return
    if x is not None:
        w.site("consumer", node, 1, 1, x.atoms, groups=groups)
        for part in np.split(x.atoms, groups) if groups > 1 else []:
            w.site("segment", node, -1, 1, part)
    first = len(w.sites)
    atoms = w.producer(node, 0, out_channels, weight.ndim, 2)
    if groups > 1:
        w.sites[first].extra["groups"] = groups
        for part in np.split(atoms, groups):
            w.site("segment", node, -1, 0, part)


def _conv_transpose(w: _Walker, node: ir.Node, ins: list[Layout | None]) -> None:
    weight = _const(node.inputs[1] if len(node.inputs) > 1 else None)
    x = ins[0]
    if weight is None or weight.ndim < 3 or any(ins[1:]) or _attr_int(node, "group", 1) != 1:
        w.kill_all(node, ins, f"ConvTranspose '{w.name(node)}' has no constant weight or has groups")
        return
    if x is not None:
        if x.axis != 1 or x.inner != 1:
            w.kill(x, f"ConvTranspose '{w.name(node)}' reads channels on axis {x.axis}")
        else:
            w.site("consumer", node, 1, 0, x.atoms)
    w.producer(node, 1, weight.shape[1], weight.ndim, 2)


def _gemm(w: _Walker, node: ir.Node, ins: list[Layout | None]) -> None:
    weight = _const(node.inputs[1])
    x = ins[0]
    if weight is None or weight.ndim != 2 or any(ins[1:]):
        w.kill_all(node, ins, f"Gemm '{w.name(node)}' has no constant weight")
        return
    trans_a, trans_b = _attr_int(node, "transA", 0), _attr_int(node, "transB", 0)
    k_axis = 1 if trans_b else 0
    if x is not None:
        if x.rank == 2 and x.axis == (0 if trans_a else 1) and len(x.atoms) * x.inner == weight.shape[k_axis]:
            w.site("consumer", node, 1, k_axis, x.atoms, x.inner)
        else:
            w.kill(x, f"Gemm '{w.name(node)}' reads channels on a non-reduction axis")
    w.producer(node, 1 - k_axis, weight.shape[1 - k_axis], 2, 2)


def _matmul(w: _Walker, node: ir.Node, ins: list[Layout | None]) -> None:
    weight = _const(node.inputs[1])
    x = ins[0]
    if weight is None and node.inputs[1] is not None and any(ins):
        _matmul_activations(w, node, ins)
        return
    if weight is None or weight.ndim != 2 or ins[1] is not None:
        w.kill_all(node, ins, f"MatMul '{w.name(node)}' multiplies two activations")
        return
    if x is not None:
        if x.axis == x.rank - 1 and len(x.atoms) * x.inner == weight.shape[0]:
            w.site("consumer", node, 1, 0, x.atoms, x.inner)
        else:
            w.kill(x, f"MatMul '{w.name(node)}' reads channels on a non-reduction axis")
    rank = w.rank(node.inputs[0], x)
    if rank is None or rank < 2:
        return  # no known output rank: its channels are not tracked (nothing reads them as a group)
    w.producer(node, 1, weight.shape[1], rank, None)


def _matmul_activations(w: _Walker, node: ir.Node, ins: list[Layout | None]) -> None:
    """QKᵀ and attention·V: channels (heads) on a batch axis couple both operands and pass through.

    Channels on a multiplied or reduced axis (the same dims removed from every head) are refused.
    """
    where = f"MatMul '{w.name(node)}'"
    ranks = [w.rank(v, layout) for v, layout in zip(node.inputs, ins, strict=True)]
    if any(r is None or r < 3 for r in ranks):
        w.kill_all(node, ins, f"{where} multiplies two activations over their channels")
        return
    out_rank = max(r for r in ranks if r is not None)
    carried = [(layout.axis + out_rank - layout.rank, layout) for layout in ins if layout is not None]
    axis, first = carried[0]
    if any(
        other_axis != axis or other_axis >= out_rank - 2 or other.inner != first.inner for other_axis, other in carried
    ) or any(len(other.atoms) != len(first.atoms) for _, other in carried):
        w.kill_all(node, ins, f"{where} multiplies or reduces channels of two activations")
        return
    for value, layout in zip(node.inputs, ins, strict=True):
        if layout is not None:
            continue
        if not w.broadcasts(value, axis - out_rank):
            name = value.name if value is not None else "?"
            w.kill_all(node, ins, f"{where} couples channels with '{name}', which no prunable layer makes")
            return
    for _, other in carried[1:]:
        w.atoms.union(first.atoms, other.atoms)
    w.out(node, Layout(axis, out_rank, first.atoms, first.inner))


def _unary(w: _Walker, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0]
    if x is None or any(ins[1:]):
        w.kill_all(node, ins, f"{node.op_type} '{w.name(node)}' mixes channels")
        return
    for index in range(len(node.outputs)):
        w.out(node, x, index)


def _clip(w: _Walker, node: ir.Node, ins: list[Layout | None]) -> None:
    for bound in node.inputs[1:]:
        shape = w.shape(bound) if bound is not None else []
        if shape is None or any(d != 1 for d in shape):
            w.kill_all(node, ins, f"Clip '{w.name(node)}' has non-scalar bounds")
            return
    _unary(w, node, ins)


def _elementwise(w: _Walker, node: ir.Node, ins: list[Layout | None]) -> None:
    where = f"{node.op_type} '{w.name(node)}'"
    ranks = [w.rank(v, layout) for v, layout in zip(node.inputs, ins, strict=True)]
    if any(r is None for r in ranks):
        w.kill_all(node, ins, f"{where} has an input of unknown rank")
        return
    out_rank = max(r for r in ranks if r is not None)
    carried = [(layout.axis + out_rank - layout.rank, layout) for layout in ins if layout is not None]
    widest = max(len(other.atoms) * other.inner for _, other in carried)
    if widest > 1:  # a one-channel activation (a spatial gate) broadcasts; it is not coupled
        for _, other in carried:
            if len(other.atoms) * other.inner == 1:
                w.kill(other, f"{where} broadcasts a single channel over {widest}")
        carried = [(axis, other) for axis, other in carried if len(other.atoms) * other.inner > 1]
    out_axis, first = carried[0]
    if any(
        axis != out_axis or other.inner != first.inner or len(other.atoms) != len(first.atoms)
        for axis, other in carried
    ):
        w.kill_all(node, ins, f"{where} combines channels on different axes")
        return
    for index, (value, layout) in enumerate(zip(node.inputs, ins, strict=True)):
        if layout is not None or value is None:
            continue
        if _const(value) is not None:
            if not w.param(node, index, first, out_rank, out_axis):
                w.kill_all(node, ins, f"{where} constant '{value.name}' does not broadcast per channel")
                return
            continue
        if not w.broadcasts(value, out_axis - out_rank):
            w.kill_all(node, ins, f"{where} couples channels with '{value.name}', which no prunable layer makes")
            return
    for _, other in carried[1:]:
        w.atoms.union(first.atoms, other.atoms)
    w.out(node, Layout(out_axis, out_rank, first.atoms, first.inner))


def _batch_norm(w: _Walker, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0]
    where = f"{node.op_type} '{w.name(node)}'"
    extra_outputs = any(o.uses() or o.is_graph_output() for o in node.outputs[1:])
    if x is None or x.axis != 1 or x.inner != 1 or any(ins[1:]) or _attr_int(node, "training_mode", 0) or extra_outputs:
        w.kill_all(node, ins, f"{where} is not an inference normalization over axis 1")
        return
    for index in range(1, len(node.inputs)):
        array = _const(node.inputs[index])
        if array is None or array.shape != (len(x.atoms),):
            w.kill(x, f"{where} parameter {index} is not a constant per channel")
            return
        w.site("param", node, index, 0, x.atoms)
    w.out(node, x)


def _pool(w: _Walker, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0]
    if x is None or x.axis != 1 or x.inner != 1 or any(o.uses() or o.is_graph_output() for o in node.outputs[1:]):
        w.kill_all(node, ins, f"{node.op_type} '{w.name(node)}' pools over channels or returns indices")
        return
    w.out(node, x)


def _resize(w: _Walker, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0]
    where = f"{node.op_type} '{w.name(node)}'"
    if x is None or any(ins[1:]):
        w.kill_all(node, ins, f"{where} resizes by an activation")
        return
    scale_index = 1 if node.op_type == "Upsample" or w.opset < 11 else 2
    scales = _const(node.inputs[scale_index]) if scale_index < len(node.inputs) else None
    sizes = _ints(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else None
    if scales is not None and scales.size:
        if scales.size != x.rank or float(scales.reshape(-1)[x.axis]) != 1.0:
            w.kill(x, f"{where} scales the channel axis")
            return
    elif sizes is not None:
        if w.purpose == "remove":
            w.kill(x, f"{where} sizes constant carries the channel count")
            return
    elif _attr_ints(node, "scales") is None:
        w.kill(x, f"{where} has no constant scales or sizes")
        return
    w.out(node, x)


def _pad(w: _Walker, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0]
    where = f"Pad '{w.name(node)}'"
    if x is None or any(ins[1:]):
        w.kill_all(node, ins, f"{where} pads by an activation")
        return
    pads = _attr_ints(node, "pads") if w.opset < 11 else _ints(node.inputs[1] if len(node.inputs) > 1 else None)
    axes = _ints(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else list(range(x.rank))
    if pads is None or axes is None:
        w.kill(x, f"{where} has non-constant pads")
        return
    axes = [a % x.rank for a in axes]
    if x.axis in axes:
        i = axes.index(x.axis)
        if pads[i] or pads[i + len(axes)]:
            w.kill(x, f"{where} pads the channel axis")
            return
    w.out(node, x)


def _transpose(w: _Walker, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0]
    assert x is not None
    perm = _attr_ints(node, "perm") or list(range(x.rank))[::-1]
    w.out(node, Layout(perm.index(x.axis), x.rank, x.atoms, x.inner))


def _axes(w: _Walker, node: ir.Node, since: int) -> list[int] | None:
    if w.opset >= since:
        return _ints(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
    return _attr_ints(node, "axes")


def _squeeze(w: _Walker, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0]
    assert x is not None
    axes = _axes(w, node, 13)
    if axes is None:
        shape = w.shape(node.inputs[0])
        axes = [i for i, d in enumerate(shape) if d == 1] if shape is not None else None
    if axes is None or any(ins[1:]):
        w.kill(x, f"Squeeze '{w.name(node)}' has unknown axes")
        return
    axes = [a % x.rank for a in axes]
    if x.axis in axes:
        w.kill(x, f"Squeeze '{w.name(node)}' removes the channel axis")
        return
    w.out(node, Layout(x.axis - sum(a < x.axis for a in axes), x.rank - len(axes), x.atoms, x.inner))


def _unsqueeze(w: _Walker, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0]
    assert x is not None
    axes = _axes(w, node, 13)
    if axes is None or any(ins[1:]):
        w.kill(x, f"Unsqueeze '{w.name(node)}' has unknown axes")
        return
    rank = x.rank + len(axes)
    new_axes = {a % rank for a in axes}
    kept = [i for i in range(rank) if i not in new_axes]
    w.out(node, Layout(kept[x.axis], rank, x.atoms, x.inner))


def _flatten(w: _Walker, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0]
    assert x is not None
    start = _attr_int(node, "axis", 1) % x.rank if x.rank else 0
    shape = w.shape(node.inputs[0])
    where = f"Flatten '{w.name(node)}'"
    if shape is None or x.axis < start or any(d != 1 for d in shape[start : x.axis]):
        w.kill(x, f"{where} does not keep the channels outermost")
        return
    after = shape[x.axis + 1 :]
    if not all(isinstance(d, int) for d in after):
        w.kill(x, f"{where} flattens dims of unknown size")
        return
    inner = x.inner * int(np.prod([int(d) for d in after if isinstance(d, int)], dtype=np.int64))
    w.out(node, Layout(1, 2, x.atoms, inner))


def _reshape(w: _Walker, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0]
    assert x is not None
    where = f"Reshape '{w.name(node)}'"
    target = _ints(node.inputs[1]) if not any(ins[1:]) else None
    in_shape, out_shape = w.shape(node.inputs[0]), w.shape(node.outputs[0])
    zero_copies = not _attr_int(node, "allowzero", 0)
    if target is None and in_shape is not None and zero_copies and w.keeps_shape(node.inputs[1], in_shape, x.axis):
        tail = in_shape[x.axis + 1 :]
        merged = w.shape(node.inputs[1]) == [x.axis + 1]
        if merged and all(isinstance(d, int) for d in tail):  # e.g. [B, S, H, D] -> [B, S, -1]
            inner = x.inner * int(np.prod([d for d in tail if isinstance(d, int)], dtype=np.int64))
            w.out(node, Layout(x.axis, x.axis + 1, x.atoms, inner))
        elif not merged:
            w.out(node, x)
        else:
            w.kill(x, f"{where} merges dims of unknown size into the channel axis")
        return
    if target is None or in_shape is None or out_shape is None or len(in_shape) != x.rank:
        w.kill(x, f"{where} has a non-constant target or unknown shapes")
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
            w.kill(x, f"{where} splits the channels into {heads} heads of {size}, which no producer makes")
            return
        layout = Layout(a, len(out_shape), x.atoms)
    else:
        w.kill(x, f"{where} splits or moves the channel axis")
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


def _concat(w: _Walker, node: ir.Node, ins: list[Layout | None]) -> None:
    carried = [layout for layout in ins if layout is not None]
    rank = carried[0].rank
    axis = _attr_int(node, "axis", 0) % rank
    where = f"Concat '{w.name(node)}'"
    if any(layout.rank != rank or layout.inner != 1 or layout.axis != carried[0].axis for layout in carried):
        w.kill_all(node, ins, f"{where} joins channels on different axes")
        return
    if carried[0].axis == axis:
        parts = []
        for value, layout in zip(node.inputs, ins, strict=True):
            if layout is not None:
                parts.append(layout.atoms)
                continue
            shape = w.shape(value)
            size = shape[axis] if shape is not None else None
            if not isinstance(size, int):
                w.kill_all(node, ins, f"{where} input '{value.name if value else '?'}' has an unknown channel count")
                return
            parts.append(
                w.atoms.new(size, f"{where} input '{value.name if value else '?'}' is no prunable layer's output")
            )
        w.out(node, Layout(axis, rank, np.concatenate(parts)))
        return
    for index, (value, layout) in enumerate(zip(node.inputs, ins, strict=True)):
        if layout is None and not w.param(node, index, carried[0], rank, carried[0].axis):
            w.kill_all(node, ins, f"{where} joins channels with '{value.name if value else '?'}', which no layer makes")
            return
    for layout in carried[1:]:
        w.atoms.union(carried[0].atoms, layout.atoms)
    w.out(node, carried[0])


def _split(w: _Walker, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0]
    assert x is not None
    axis = _attr_int(node, "axis", 0) % x.rank
    if axis != x.axis:
        for index in range(len(node.outputs)):
            w.out(node, x, index)
        return
    where = f"Split '{w.name(node)}'"
    count = len(x.atoms)
    if w.opset >= 13:
        sizes = _ints(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
        explicit = sizes is not None or (len(node.inputs) > 1 and node.inputs[1] is not None)
    else:
        sizes = _attr_ints(node, "split")
        explicit = sizes is not None
    if sizes is None and not explicit:
        parts = len(node.outputs)
        step = -(-count // parts)
        sizes = [min(step, count - i * step) for i in range(parts)]
    if sizes is None or sum(sizes) != count or x.inner != 1 or any(ins[1:]):
        w.kill(x, f"{where} has unknown split sizes")
        return
    w.site("split", node, 1, x.axis, x.atoms, sizes=sizes)
    bounds = np.cumsum([0, *sizes])
    for index in range(len(node.outputs)):
        part = x.atoms[bounds[index] : bounds[index + 1]]
        w.out(node, Layout(x.axis, x.rank, part), index)


def _slice(w: _Walker, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0]
    assert x is not None
    where = f"Slice '{w.name(node)}'"
    if w.opset < 10:
        starts, ends, axes = (_attr_ints(node, key) for key in ("starts", "ends", "axes"))
        steps = None
    else:
        starts, ends, axes, steps = (
            _ints(node.inputs[i]) if len(node.inputs) > i and node.inputs[i] is not None else None for i in (1, 2, 3, 4)
        )
    if starts is None or ends is None or any(ins[1:]):
        w.kill(x, f"{where} has non-constant bounds")
        return
    axes = [a % x.rank for a in (axes if axes is not None else range(len(starts)))]
    if x.axis not in axes:
        w.out(node, x)
        return
    entry = axes.index(x.axis)
    if (steps is not None and steps[entry] != 1) or x.inner != 1:
        w.kill(x, f"{where} steps over channels")
        return
    count = len(x.atoms)
    start, end = (int(np.clip(v + count if v < 0 else v, 0, count)) for v in (starts[entry], ends[entry]))
    if end <= start:
        w.kill(x, f"{where} keeps no channel")
        return
    w.site("slice", node, -1, x.axis, x.atoms, entry=entry, start=start, end=end, attrs=w.opset < 10)
    w.out(node, Layout(x.axis, x.rank, x.atoms[start:end]))


def _reduce(w: _Walker, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0]
    assert x is not None
    axes = _axes(w, node, _AXES_INPUT_SINCE.get(node.op_type, 18))
    keep = _attr_int(node, "keepdims", 1)
    if not axes:
        axes = [] if _attr_int(node, "noop_with_empty_axes", 0) else list(range(x.rank))
    axes = [a % x.rank for a in axes]
    if x.axis in axes or any(ins[1:]):
        if w.purpose == "remove" or any(ins[1:]) or node.op_type.startswith("Arg"):
            w.kill(x, f"{node.op_type} '{w.name(node)}' reduces over the channel axis (lossy)")
        return
    if keep:
        w.out(node, x)
    else:
        w.out(node, Layout(x.axis - sum(a < x.axis for a in axes), x.rank - len(axes), x.atoms, x.inner))


def _arg(w: _Walker, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0]
    assert x is not None
    axis = _attr_int(node, "axis", 0) % x.rank
    if axis == x.axis:
        w.kill(x, f"{node.op_type} '{w.name(node)}' returns channel indices")
        return
    keep = _attr_int(node, "keepdims", 1)
    w.out(node, x if keep else Layout(x.axis - (axis < x.axis), x.rank - 1, x.atoms, x.inner))


def _softmax(w: _Walker, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0]
    assert x is not None
    axis = _attr_int(node, "axis", 1 if w.opset < 13 else -1) % x.rank
    covered = x.axis >= axis if w.opset < 13 else x.axis == axis
    if covered and (w.purpose == "remove" or node.op_type == "Hardmax"):
        w.kill(x, f"{node.op_type} '{w.name(node)}' normalizes over the channel axis (lossy)")
        return
    w.out(node, x)


def _layer_norm(w: _Walker, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0]
    where = f"LayerNormalization '{w.name(node)}'"
    if x is None or any(ins[1:]) or any(o.uses() or o.is_graph_output() for o in node.outputs[1:]):
        w.kill_all(node, ins, f"{where} is normalized by an activation")
        return
    axis = _attr_int(node, "axis", -1) % x.rank
    if x.axis < axis:
        w.out(node, x)
        return
    if w.purpose == "remove" or axis != x.rank - 1 or x.axis != axis:
        w.kill(x, f"{where} normalizes over the channel axis (lossy)")
        return
    for index in range(1, len(node.inputs)):
        if node.inputs[index] is not None and not w.param(node, index, x, x.rank, x.axis):
            w.kill(x, f"{where} parameter {index} is not constant")
            return
    w.out(node, x)


def _quantize(w: _Walker, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0]
    where = f"{node.op_type} '{w.name(node)}'"
    scale = _const(node.inputs[1]) if len(node.inputs) > 1 else None
    if x is None or any(ins[1:]) or scale is None:
        w.kill_all(node, ins, f"{where} has non-constant scales")
        return
    if scale.size > 1:
        if _attr_int(node, "axis", 1) % x.rank != x.axis or scale.shape != (len(x.atoms) * x.inner,):
            w.kill(x, f"{where} quantizes per channel on another axis")
            return
        for index in range(1, len(node.inputs)):
            if node.inputs[index] is not None:
                w.site("param", node, index, 0, x.atoms, x.inner)
    w.out(node, x)


def _shape_of(w: _Walker, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0]
    if w.purpose == "remove" and x is not None and not _reads_other_dims(node, x):
        w.kill(x, f"{node.op_type} '{w.name(node)}' reads the channel count")


def _reads_other_dims(node: ir.Node, x: Layout) -> bool:
    """Whether a Shape's result is only read at dims other than the channel axis (through Gather).

    Attention exports take the sequence length this way from a tensor that carries the heads.
    """
    if node.op_type != "Shape":
        return False
    start = _attr_int(node, "start", 0) % x.rank if x.rank else 0
    end = _attr_int(node, "end", x.rank)
    end = end % x.rank if end < 0 else min(end, x.rank)
    if not start <= x.axis < end:
        return True
    output = node.outputs[0]
    if output.is_graph_output() or not output.uses():
        return not output.is_graph_output()
    for user, index in output.uses():
        indices = _ints(user.inputs[1]) if user.op_type == "Gather" and index == 0 and len(user.inputs) > 1 else None
        if indices is None or _attr_int(user, "axis", 0) != 0:
            return False
        if any((i % (end - start)) + start == x.axis for i in indices):
            return False
    return True


_HANDLERS: dict[str, Any] = {
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "BatchNormalization": _batch_norm,
    "InstanceNormalization": _batch_norm,
    "Clip": _clip,
    "Resize": _resize,
    "Upsample": _resize,
    "Pad": _pad,
    "Transpose": _transpose,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Concat": _concat,
    "Split": _split,
    "Slice": _slice,
    "ArgMax": _arg,
    "ArgMin": _arg,
    "Softmax": _softmax,
    "LogSoftmax": _softmax,
    "Hardmax": _softmax,
    "LayerNormalization": _layer_norm,
    "QuantizeLinear": _quantize,
    "DequantizeLinear": _quantize,
    "Shape": _shape_of,
    "Size": _shape_of,
    **dict.fromkeys(_UNARY, _unary),
    **dict.fromkeys(_ELEMENTWISE, _elementwise),
    **dict.fromkeys(_POOLS, _pool),
    **dict.fromkeys(_REDUCE, _reduce),
}
