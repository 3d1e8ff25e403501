"""Channel propagation rules for producers and consumers, pass-through, coupling and lossy ops.

Each rule follows the contract of :mod:`onnxshrink.passes.channels.ruleset` and registers itself in
its :data:`~onnxshrink.passes.channels.ruleset.CHANNEL_RULE_TABLE` table; ``docs/channels.md`` lists the
rules for users. The rules that remap channel indices (Transpose, Squeeze, Unsqueeze, Flatten,
Reshape, Concat, Split, Slice) and carry attention heads (a MatMul of two activations, a Shape read
past the heads) live in :mod:`onnxshrink.passes.channels.index_rules`.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx_ir as ir

from onnxshrink.ir.constants import constant_array, constant_ints
from onnxshrink.passbase import NoMatch
from onnxshrink.passes.channels.index_rules import AxesReader, axes_attribute, axes_input, couple, matmul_activations
from onnxshrink.passes.channels.ruleset import CHANNEL_RULE_TABLE, ChannelWalk
from onnxshrink.passes.channels.types import Layout, input_at, node_name

_UNARY = (
    *("Relu", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Gelu", "Erf", "Elu", "Selu"),
    *("Celu", "Softplus", "Softsign", "Exp", "Log", "Abs", "Neg", "Sqrt", "Reciprocal", "Floor", "Ceil"),
    *("Round", "Sign", "Sin", "Cos", "Identity", "Dropout", "Cast", "Not", "Mish", "ThresholdedRelu"),
    *("IsNaN", "IsInf"),
)

_ELEMENTWISE = (
    *("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "PRelu", "Mod"),
    *("Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor"),
)

_POOLS = ("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")

_REDUCE = (
    *("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2"),
    *("ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"),
)


def _sole(w: ChannelWalk, ins: list[Layout | None], reason: NoMatch) -> Layout | None:
    """The first input's layout when it is the only input carrying channels; else all are refused."""
    x = ins[0]
    if x is None or any(ins[1:]):
        w.kill_all(ins, reason)
        return None
    return x


@CHANNEL_RULE_TABLE.register("Conv")
def _conv(w: ChannelWalk, node: ir.Node, ins: list[Layout | None]) -> None:
    weight = constant_array(input_at(node, 1))
    x = ins[0]
    if weight is None or weight.ndim < 3 or any(ins[1:]):
        w.kill_all(ins, NoMatch(f"Conv '{node_name(node)}' has no constant weight"))
        return
    if x is not None and (x.axis != 1 or x.inner != 1):
        w.kill(x, NoMatch(f"Conv '{node_name(node)}' reads channels on axis {x.axis}"))
        x = None
    groups = node.attributes.get_int("group", 1)
    out_channels, per_group = weight.shape[0], weight.shape[1]
    if groups > 1 and per_group == 1 and out_channels == groups:  # depthwise: channel c in, c out
        if x is None:
            return
        w.site("param", node, 1, 0, x.atoms)
        if len(node.inputs) > 2 and node.inputs[2] is not None and not w.bias(node, 2, x):
            w.kill(x, NoMatch(f"Conv '{node_name(node)}' bias is not constant"))
        w.site("depthwise", node, -1, 0, x.atoms)
        w.out(node, x)
        return
    if groups > 1 and per_group == 1:
        w.kill(x, NoMatch(f"depthwise Conv '{node_name(node)}' has channel multiplier {out_channels // groups}"))
        return
    if x is not None:
        w.site("consumer", node, 1, 1, x.atoms, groups=groups)
        for part in np.split(x.atoms, groups) if groups > 1 else []:
            w.site("segment", node, -1, 1, part)
    atoms = w.producer(node, 0, out_channels, weight.ndim, 2, **({"groups": groups} if groups > 1 else {}))
    if groups > 1:
        for part in np.split(atoms, groups):
            w.site("segment", node, -1, 0, part)


@CHANNEL_RULE_TABLE.register("ConvTranspose")
def _conv_transpose(w: ChannelWalk, node: ir.Node, ins: list[Layout | None]) -> None:
    weight = constant_array(input_at(node, 1))
    x = ins[0]
    if weight is None or weight.ndim < 3 or any(ins[1:]) or node.attributes.get_int("group", 1) != 1:
        w.kill_all(ins, NoMatch(f"ConvTranspose '{node_name(node)}' has no constant weight or has groups"))
        return
    if x is not None:
        if x.axis != 1 or x.inner != 1:
            w.kill(x, NoMatch(f"ConvTranspose '{node_name(node)}' reads channels on axis {x.axis}"))
        else:
            w.site("consumer", node, 1, 0, x.atoms)
    w.producer(node, 1, weight.shape[1], weight.ndim, 2)


@CHANNEL_RULE_TABLE.register("Gemm")
def _gemm(w: ChannelWalk, node: ir.Node, ins: list[Layout | None]) -> None:
    weight = constant_array(node.inputs[1])
    x = ins[0]
    if weight is None or weight.ndim != 2 or any(ins[1:]):
        w.kill_all(ins, NoMatch(f"Gemm '{node_name(node)}' has no constant weight"))
        return
    trans_a, trans_b = node.attributes.get_int("transA", 0), node.attributes.get_int("transB", 0)
    k_axis = 1 if trans_b else 0
    if x is not None:
        if x.rank == 2 and x.axis == (0 if trans_a else 1) and len(x.atoms) * x.inner == weight.shape[k_axis]:
            w.site("consumer", node, 1, k_axis, x.atoms, x.inner)
        else:
            w.kill(x, NoMatch(f"Gemm '{node_name(node)}' reads channels on a non-reduction axis"))
    w.producer(node, 1 - k_axis, weight.shape[1 - k_axis], 2, 2)


@CHANNEL_RULE_TABLE.register("MatMul")
def _matmul(w: ChannelWalk, node: ir.Node, ins: list[Layout | None]) -> None:
    weight = constant_array(node.inputs[1])
    x = ins[0]
    if weight is None and node.inputs[1] is not None and any(ins):
        matmul_activations(w, node, ins)
        return
    if weight is None or weight.ndim != 2 or ins[1] is not None:
        w.kill_all(ins, NoMatch(f"MatMul '{node_name(node)}' multiplies two activations"))
        return
    if x is not None:
        if x.axis == x.rank - 1 and len(x.atoms) * x.inner == weight.shape[0]:
            w.site("consumer", node, 1, 0, x.atoms, x.inner)
        else:
            w.kill(x, NoMatch(f"MatMul '{node_name(node)}' reads channels on a non-reduction axis"))
    rank = w.rank(node.inputs[0], x)
    if rank is None or rank < 2:
        return  # no known output rank: its channels are not tracked (nothing reads them as a group)
    w.producer(node, 1, weight.shape[1], rank, None)


@CHANNEL_RULE_TABLE.register(*_UNARY)
def _unary(w: ChannelWalk, node: ir.Node, ins: list[Layout | None]) -> None:
    x = _sole(w, ins, NoMatch(f"{node.op_type} '{node_name(node)}' mixes channels"))
    if x is None:
        return
    for index in range(len(node.outputs)):
        w.out(node, x, index)


@CHANNEL_RULE_TABLE.register("Clip")
def _clip(w: ChannelWalk, node: ir.Node, ins: list[Layout | None]) -> None:
    for bound in node.inputs[1:]:
        shape = w.shape(bound) if bound is not None else []
        if shape is None or any(d != 1 for d in shape):
            w.kill_all(ins, NoMatch(f"Clip '{node_name(node)}' has non-scalar bounds"))
            return
    _unary(w, node, ins)


@CHANNEL_RULE_TABLE.register(*_ELEMENTWISE)
def _elementwise(w: ChannelWalk, node: ir.Node, ins: list[Layout | None]) -> None:
    where = f"{node.op_type} '{node_name(node)}'"
    ranks = [w.rank(v, layout) for v, layout in zip(node.inputs, ins, strict=True)]
    if any(r is None for r in ranks):
        w.kill_all(ins, NoMatch(f"{where} has an input of unknown rank", missing_facts=True))
        return
    out_rank = max(r for r in ranks if r is not None)
    carried = [(layout.axis + out_rank - layout.rank, layout) for layout in ins if layout is not None]
    widest = max(len(other.atoms) * other.inner for _, other in carried)
    if widest > 1:  # a one-channel activation (a spatial gate) broadcasts; it is not coupled
        for _, other in carried:
            if len(other.atoms) * other.inner == 1:
                w.kill(other, NoMatch(f"{where} broadcasts a single channel over {widest}"))
        carried = [(axis, other) for axis, other in carried if len(other.atoms) * other.inner > 1]
    out_axis, first = carried[0]
    if any(
        axis != out_axis or other.inner != first.inner or len(other.atoms) != len(first.atoms)
        for axis, other in carried
    ):
        w.kill_all(ins, NoMatch(f"{where} combines channels on different axes"))
        return
    couple(w, node, ins, [other for _, other in carried], out_axis, out_rank, params=True)


@CHANNEL_RULE_TABLE.register("BatchNormalization", "InstanceNormalization")
def _batch_norm(w: ChannelWalk, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0]
    where = f"{node.op_type} '{node_name(node)}'"
    training = node.attributes.get_int("training_mode", 0) or any(
        o.uses() or o.is_graph_output() for o in node.outputs[1:]
    )
    if x is None or x.axis != 1 or x.inner != 1 or any(ins[1:]) or training:
        w.kill_all(ins, NoMatch(f"{where} is not an inference normalization over axis 1"))
        return
    for index in range(1, len(node.inputs)):
        array = constant_array(node.inputs[index])
        if array is None or array.shape != (len(x.atoms),):
            w.kill(x, NoMatch(f"{where} parameter {index} is not a constant per channel"))
            return
        w.site("param", node, index, 0, x.atoms)
    w.out(node, x)


@CHANNEL_RULE_TABLE.register(*_POOLS)
def _pool(w: ChannelWalk, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0]
    if x is None or x.axis != 1 or x.inner != 1 or any(o.uses() or o.is_graph_output() for o in node.outputs[1:]):
        w.kill_all(ins, NoMatch(f"{node.op_type} '{node_name(node)}' pools over channels or returns indices"))
        return
    w.out(node, x)


@CHANNEL_RULE_TABLE.register("Resize", "Upsample")
def _resize(w: ChannelWalk, node: ir.Node, ins: list[Layout | None]) -> None:
    where = f"{node.op_type} '{node_name(node)}'"
    x = _sole(w, ins, NoMatch(f"{where} resizes by an activation"))
    if x is None:
        return
    scale_index = 1 if node.op_type == "Upsample" or w.opset < 11 else 2
    scales = constant_array(input_at(node, scale_index))
    sizes = constant_ints(input_at(node, 3))
    if scales is not None and scales.size:
        if scales.size != x.rank or float(scales.reshape(-1)[x.axis]) != 1.0:
            w.kill(x, NoMatch(f"{where} scales the channel axis"))
            return
    elif sizes is not None:
        if w.purpose == "remove":
            w.kill(x, NoMatch(f"{where} sizes constant carries the channel count"))
            return
    elif node.attributes.get_ints("scales") is None:
        w.kill(x, NoMatch(f"{where} has no constant scales or sizes"))
        return
    w.out(node, x)


@CHANNEL_RULE_TABLE.register("Pad")
def _pad(w: ChannelWalk, node: ir.Node, ins: list[Layout | None]) -> None:
    where = f"Pad '{node_name(node)}'"
    x = _sole(w, ins, NoMatch(f"{where} pads by an activation"))
    if x is None:
        return
    pads = node.attributes.get_ints("pads") if w.opset < 11 else constant_ints(input_at(node, 1))
    axes = list(range(x.rank)) if input_at(node, 3) is None else constant_ints(input_at(node, 3))
    if pads is None or axes is None:
        w.kill(x, NoMatch(f"{where} has non-constant pads"))
        return
    axes = [a % x.rank for a in axes]
    if x.axis in axes:
        i = axes.index(x.axis)
        if pads[i] or pads[i + len(axes)]:
            w.kill(x, NoMatch(f"{where} pads the channel axis"))
            return
    w.out(node, x)


def _reduce(w: ChannelWalk, node: ir.Node, ins: list[Layout | None], read_axes: AxesReader = axes_input) -> None:
    x = ins[0]
    assert x is not None
    axes = read_axes(node)
    keep = node.attributes.get_int("keepdims", 1)
    if not axes:
        axes = [] if node.attributes.get_int("noop_with_empty_axes", 0) else list(range(x.rank))
    axes = [a % x.rank for a in axes]
    if x.axis in axes or any(ins[1:]):
        if w.purpose == "remove" or any(ins[1:]) or node.op_type.startswith("Arg"):
            w.kill(x, NoMatch(f"{node.op_type} '{node_name(node)}' reduces over the channel axis (lossy)"))
        return
    if keep:
        w.out(node, x)
    else:
        w.out(node, Layout(x.axis - sum(a < x.axis for a in axes), x.rank - len(axes), x.atoms, x.inner))


def _register_reductions() -> None:
    """Reductions read their axes from an attribute until the opset that made them an input."""
    for op in _REDUCE:
        since = 13 if op == "ReduceSum" else 18
        CHANNEL_RULE_TABLE.add(op, functools.partial(_reduce, read_axes=axes_attribute), until=since - 1)
        CHANNEL_RULE_TABLE.add(op, _reduce, since=since)


_register_reductions()


@CHANNEL_RULE_TABLE.register("ArgMax", "ArgMin")
def _arg(w: ChannelWalk, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0]
    assert x is not None
    axis = node.attributes.get_int("axis", 0) % x.rank
    if axis == x.axis:
        w.kill(x, NoMatch(f"{node.op_type} '{node_name(node)}' returns channel indices"))
        return
    keep = node.attributes.get_int("keepdims", 1)
    w.out(node, x if keep else Layout(x.axis - (axis < x.axis), x.rank - 1, x.atoms, x.inner))


@CHANNEL_RULE_TABLE.register("Softmax", "LogSoftmax", "Hardmax")
def _softmax(w: ChannelWalk, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0]
    assert x is not None
    axis = node.attributes.get_int("axis", 1 if w.opset < 13 else -1) % x.rank
    covered = x.axis >= axis if w.opset < 13 else x.axis == axis
    if covered and (w.purpose == "remove" or node.op_type == "Hardmax"):
        w.kill(x, NoMatch(f"{node.op_type} '{node_name(node)}' normalizes over the channel axis (lossy)"))
        return
    w.out(node, x)


@CHANNEL_RULE_TABLE.register("LayerNormalization")
def _layer_norm(w: ChannelWalk, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0]
    where = f"LayerNormalization '{node_name(node)}'"
    if x is None or any(ins[1:]) or any(o.uses() or o.is_graph_output() for o in node.outputs[1:]):
        w.kill_all(ins, NoMatch(f"{where} is normalized by an activation"))
        return
    axis = node.attributes.get_int("axis", -1) % x.rank
    if x.axis < axis:
        w.out(node, x)
        return
    if w.purpose == "remove" or axis != x.rank - 1 or x.axis != axis:
        w.kill(x, NoMatch(f"{where} normalizes over the channel axis (lossy)"))
        return
    for index in range(1, len(node.inputs)):
        if node.inputs[index] is not None and not w.param(node, index, x, x.rank, x.axis):
            w.kill(x, NoMatch(f"{where} parameter {index} is not constant"))
            return
    w.out(node, x)


@CHANNEL_RULE_TABLE.register("QuantizeLinear", "DequantizeLinear")
def _quantize(w: ChannelWalk, node: ir.Node, ins: list[Layout | None]) -> None:
    x = ins[0]
    where = f"{node.op_type} '{node_name(node)}'"
    scale = constant_array(input_at(node, 1))
    if x is None or any(ins[1:]) or scale is None:
        w.kill_all(ins, NoMatch(f"{where} has non-constant scales"))
        return
    if scale.size > 1:
        if node.attributes.get_int("axis", 1) % x.rank != x.axis or scale.shape != (len(x.atoms) * x.inner,):
            w.kill(x, NoMatch(f"{where} quantizes per channel on another axis"))
            return
        for index in range(1, len(node.inputs)):
            if node.inputs[index] is not None:
                w.site("param", node, index, 0, x.atoms, x.inner)
    w.out(node, x)
