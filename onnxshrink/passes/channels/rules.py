"""Channel propagation rules: one handler per op, in the order of ``CHANNEL_RULES.md``.

Each handler receives the :class:`Layout` of every input (``None`` where an input carries no
tracked channels) and either gives its outputs a layout, records the sites the op touches
(``w.site``) or refuses the atoms it cannot carry (``w.kill``). The walk that calls them is
``onnxshrink.passes.channels.walk._Walker``; ``_HANDLERS`` is the table it dispatches on.

This module holds producers and consumers, pass-through, coupling and lossy ops; the rules that
remap channel indices (Transpose, Squeeze, Unsqueeze, Flatten, Reshape, Concat, Split, Slice) and
carry attention heads (a MatMul of two activations, a Shape read past the heads) live in
``onnxshrink.passes.channels.index_rules``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import onnx_ir as ir

from onnxshrink.passes.channels.index_rules import (
    _axes,
    _concat,
    _flatten,
    _matmul_activations,
    _reshape,
    _shape_of,
    _slice,
    _split,
    _squeeze,
    _transpose,
    _unsqueeze,
)
from onnxshrink.passes.channels.types import Layout, _attr_int, _attr_ints, _const, _ints

if TYPE_CHECKING:
    from onnxshrink.passes.channels.walk import _Walker


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
