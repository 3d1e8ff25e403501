"""Matching and planning for ``fuse-bn``: which per-channel affine chain folds into which layer.

A plan is data (the layer, the chain of steps, the new weight and bias) computed before the graph
is touched; ``fuse_bn`` applies it. Every match step answers "no" with a :class:`NoMatch` saying
why, which the pass reports for the BatchNormalizations it leaves.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxshrink.ir.constants import constant_array
from onnxshrink.ir.graphs import is_onnx_op
from onnxshrink.passbase import NoMatch

_AFFINE_OPS = ("Mul", "Add", "Sub")


@dataclasses.dataclass(frozen=True)
class _Step:
    """One node of a per-channel affine chain: ``y = x * scale + shift`` (float64, one entry per channel)."""

    node: ir.Node
    scale: np.ndarray
    shift: np.ndarray | None
    constants: tuple[ir.Value, ...]


@dataclasses.dataclass(frozen=True)
class _Layer:
    """A layer with constant weights and what is known of its output's channel layout."""

    node: ir.Node
    weight: np.ndarray
    bias: np.ndarray | None  # float64 [channels]; Gemm's beta already applied
    channels: int
    rank: int  # of the output; 1 with axis 0 for a MatMul of unknown rank (then only the last axis is known)
    axis: int
    takes_bias: bool


@dataclasses.dataclass(frozen=True)
class Plan:
    """A decided rewrite: new weight (and bias, None = unchanged) and the chain nodes it removes."""

    layer: _Layer
    steps: tuple[_Step, ...]
    weight: np.ndarray
    bias: np.ndarray | None
    data: ir.Value | None  # rule 3: the layer's new data input; None for a chain after the layer


def _attribute(node: ir.Node, name: str, default: Any) -> Any:
    """An attribute's value, ``default`` when absent, None when a function's caller sets it."""
    attr = node.attributes.get(name)
    if attr is None:
        return default
    return None if attr.is_ref() else attr.value


def body_of(graph: ir.Graph | ir.Function) -> ir.Graph:
    """The graph a node's ``.graph`` names: a function's nodes belong to its inner graph."""
    return graph.graph if isinstance(graph, ir.Function) else graph


def _is_float(array: np.ndarray) -> bool:
    return ir.DataType.from_numpy(array.dtype).is_floating_point()


def _per_channel(array: np.ndarray, channels: int, rank: int, axis: int, max_ndim: int) -> np.ndarray | None:
    """``array`` as a float64 [channels] vector when it broadcasts along ``axis`` only, else None."""
    if array.ndim > max_ndim or array.ndim > rank:
        return None
    shape = (1,) * (rank - array.ndim) + tuple(array.shape)
    if any(size != 1 for i, size in enumerate(shape) if i != axis) or shape[axis] not in (1, channels):
        return None
    return np.broadcast_to(array.astype(np.float64).reshape(-1), (channels,)).copy()


def _match_batchnorm(node: ir.Node, data_index: int, channels: int, axis: int, opset: int) -> _Step | NoMatch:
    if data_index != 0 or axis != 1:
        return NoMatch("it does not normalize the layer's channel axis")
    if opset < 7 or len(node.inputs) != 5:
        return NoMatch("a BatchNormalization before opset 7 or without its four statistics")
    if _attribute(node, "training_mode", 0) != 0 or _attribute(node, "spatial", 1) != 1:
        return NoMatch("training_mode or spatial is not at its inference default")
    if any(v.uses() or v.is_graph_output() for v in node.outputs[1:]):
        return NoMatch("its running statistics outputs are used")
    arrays = [constant_array(v) for v in node.inputs[1:]]
    epsilon = _attribute(node, "epsilon", 1e-5)
    if epsilon is None:
        return NoMatch("epsilon is set by the function's caller")
    if any(a is None or a.shape != (channels,) or not _is_float(a) for a in arrays):
        return NoMatch(f"scale, bias, mean and var are not all constant float [{channels}] vectors")
    gamma, beta, mean, var = (np.asarray(a, dtype=np.float64) for a in arrays)
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = gamma / np.sqrt(var + np.float64(epsilon))
    constants = tuple(v for v in node.inputs[1:] if v is not None)
    return _Step(node, scale, beta - mean * scale, constants)


def _match_step(
    node: ir.Node, data_index: int, channels: int, rank: int, axis: int, max_ndim: int, opset: int
) -> _Step | NoMatch:
    """The node as a per-channel affine map of its input ``data_index``, or why it is not one."""
    if is_onnx_op(node, "BatchNormalization"):
        return _match_batchnorm(node, data_index, channels, axis, opset)
    if not is_onnx_op(node, *_AFFINE_OPS) or len(node.inputs) != 2 or len(node.outputs) != 1:
        return NoMatch(f"{node.op_type} is not a BatchNormalization, Mul, Add or Sub")
    other = node.inputs[1 - data_index]
    array = constant_array(other)
    if other is None or array is None or not _is_float(array):
        return NoMatch(f"the other operand of {node.op_type} is not a float constant")
    vector = _per_channel(array, channels, rank, axis, max_ndim)
    if vector is None:
        return NoMatch(f"the {node.op_type} operand does not broadcast along the channel axis only")
    ones = np.ones(channels)
    if node.op_type == "Mul":
        return _Step(node, vector, None, (other,))
    if node.op_type == "Add":
        return _Step(node, ones, vector, (other,))
    return _Step(node, ones, -vector, (other,)) if data_index == 0 else _Step(node, -ones, vector, (other,))


def match_layer(node: ir.Node) -> _Layer | NoMatch:
    """The layer when its weight (and bias) are constant and its channel axis is known."""
    if not is_onnx_op(node) or len(node.inputs) < 2 or len(node.outputs) != 1:
        return NoMatch(f"{node.op_type} is not an ONNX layer with a weight input")
    weight = constant_array(node.inputs[1])
    if weight is None or weight.size == 0 or not _is_float(weight):
        return NoMatch(f"the {node.op_type} weight is not a non-empty float constant")
    bias_value = node.inputs[2] if len(node.inputs) > 2 else None
    bias = constant_array(bias_value)
    if bias_value is not None and bias is None:
        return NoMatch(f"the {node.op_type} bias is not a constant")
    op = node.op_type
    if op in ("Conv", "ConvTranspose"):
        group = _attribute(node, "group", 1)
        if weight.ndim < 3 or not group or weight.shape[0] % group:
            return NoMatch(f"the {op} weight shape {weight.shape} does not fit group {group}")
        channels = weight.shape[0] if op == "Conv" else weight.shape[1] * group
        if bias is not None and bias.shape != (channels,):
            return NoMatch(f"the {op} bias is not a [{channels}] vector")
        vector = None if bias is None else bias.astype(np.float64)
        return _Layer(node, weight, vector, channels, weight.ndim, 1, True)
    if op == "Gemm":
        trans_b, beta = _attribute(node, "transB", 0), _attribute(node, "beta", 1.0)
        if weight.ndim != 2 or trans_b is None or beta is None or _attribute(node, "alpha", 1.0) is None:
            return NoMatch("the Gemm weight is not 2-D or its attributes are set by the function's caller")
        channels = weight.shape[0] if trans_b else weight.shape[1]
        vector = None if bias is None else _per_channel(bias, channels, 2, 1, 2)
        if bias is not None and vector is None:
            return NoMatch("the Gemm bias varies along the batch axis")
        return _Layer(node, weight, None if vector is None else vector * beta, channels, 2, 1, True)
    if op == "MatMul" and len(node.inputs) == 2 and weight.ndim == 2:
        shapes = [v.shape for v in (node.inputs[0], node.outputs[0]) if v is not None and v.shape is not None]
        rank = len(shapes[0]) if shapes else None
        if rank is None:
            return _Layer(node, weight, None, weight.shape[1], 1, 0, False)
        return _Layer(node, weight, None, weight.shape[1], rank, rank - 1, rank == 2)
    return NoMatch(f"{op} is not a Conv, ConvTranspose, Gemm or MatMul with a 2-D weight")


def _compose(steps: Iterable[_Step], channels: int) -> tuple[np.ndarray, np.ndarray | None]:
    scale, shift = np.ones(channels), None
    for step in steps:
        scale = scale * step.scale
        shift = None if shift is None else shift * step.scale
        if step.shift is not None:
            shift = step.shift if shift is None else shift + step.shift
    return scale, shift


def _scale_outputs(layer: _Layer, scale: np.ndarray) -> np.ndarray:
    weight = layer.weight.astype(np.float64)
    op = layer.node.op_type
    if op == "Conv":
        return weight * scale.reshape((-1,) + (1,) * (weight.ndim - 1))
    if op == "ConvTranspose":
        # [C_in, C_out/g, k...]: output channel (group i, j) is column j of input rows of group i.
        group = layer.channels // weight.shape[1]
        grouped = weight.reshape(group, weight.shape[0] // group, *weight.shape[1:])
        return (grouped * scale.reshape(group, 1, -1, *(1,) * (weight.ndim - 2))).reshape(weight.shape)
    if op == "Gemm" and _attribute(layer.node, "transB", 0):
        return weight * scale[:, None]
    return weight * scale[None, :]


def _finish(layer: _Layer, steps: tuple[_Step, ...], weight: np.ndarray, bias: np.ndarray | None) -> Plan | NoMatch:
    dtype = layer.weight.dtype
    new_weight = weight.astype(dtype)
    new_bias = None if bias is None else bias.astype(dtype)
    with np.errstate(invalid="ignore", over="ignore"):
        finite = np.isfinite(new_weight.astype(np.float64)).all() and (
            new_bias is None or np.isfinite(new_bias.astype(np.float64)).all()
        )
    if not finite:
        return NoMatch(f"the fused weights would not be finite in {np.dtype(dtype).name}")
    return Plan(layer, steps, new_weight, new_bias, None)


def _next_step(
    layer: _Layer, value: ir.Value, graph: ir.Graph | ir.Function, opset: int, fold_affine: bool
) -> _Step | NoMatch:
    """The chain's next step: the one node reading ``value``, when it is a per-channel affine map."""
    if value.is_graph_output():
        return NoMatch(f"'{value.name}' is a graph output")
    if len(value.uses()) != 1:
        return NoMatch(f"'{value.name}' has {len(value.uses())} uses")
    user, index = next(iter(value.uses()))
    if user.graph is not body_of(graph):
        return NoMatch(f"'{value.name}' is read in a subgraph")
    if user.op_type != "BatchNormalization" and not fold_affine:
        return NoMatch("fold-affine is off")
    step = _match_step(user, index, layer.channels, layer.rank, layer.axis, layer.rank, opset)
    if not isinstance(step, NoMatch) and step.shift is not None and not layer.takes_bias:
        return NoMatch(f"a shift cannot fold into a {layer.node.op_type} that takes no bias")
    return step


def plan_after(layer: _Layer, graph: ir.Graph | ir.Function, opset: int, fold_affine: bool) -> Plan | NoMatch:
    """Rules 1-2: the chain of per-channel affine nodes reading the layer's output, one use at a time."""
    steps: list[_Step] = []
    value = layer.node.outputs[0]
    while not isinstance(step := _next_step(layer, value, graph, opset, fold_affine), NoMatch):
        steps.append(step)
        value = step.node.outputs[0]
    if not steps:
        return step
    scale, shift = _compose(steps, layer.channels)
    bias = None
    if layer.bias is not None or shift is not None:
        bias = (layer.bias if layer.bias is not None else 0.0) * scale + (shift if shift is not None else 0.0)
    return _finish(layer, tuple(steps), _scale_outputs(layer, scale), bias)


def plan_before(layer: _Layer, graph: ir.Graph | ir.Function, opset: int) -> Plan | NoMatch:
    """Rule 3: the chain of per-channel affine nodes feeding a Conv's data input."""
    weight = layer.weight.astype(np.float64)
    group = _attribute(layer.node, "group", 1)
    in_channels = weight.shape[1] * group
    pads, auto_pad = _attribute(layer.node, "pads", ()), _attribute(layer.node, "auto_pad", "NOTSET")
    # Zero padding is applied after the shift in the original and before it once folded.
    shift_exact = auto_pad in ("NOTSET", "VALID") and pads is not None and not any(pads)
    steps: list[_Step] = []
    value = layer.node.inputs[0]
    stop = NoMatch("the Conv has no data input")
    while value is not None and not value.is_graph_output() and len(value.uses()) == 1:
        node = value.producer()
        if node is None or node.graph is not body_of(graph) or len(node.inputs) < 1:
            stop = NoMatch(f"'{value.name}' is not computed in the same graph")
            break
        data_index = 1 if node.op_type in _AFFINE_OPS and constant_array(node.inputs[0]) is not None else 0
        data = node.inputs[data_index]
        rank_known = data is not None and data.shape is not None and len(data.shape) == weight.ndim
        max_ndim = weight.ndim if rank_known else weight.ndim - 1
        step = _match_step(node, data_index, in_channels, weight.ndim, 1, max_ndim, opset)
        if isinstance(step, NoMatch) or data is None:
            stop = step if isinstance(step, NoMatch) else NoMatch(f"{node.op_type} has no data input")
            break
        if step.shift is not None and not shift_exact:
            stop = NoMatch("a shift cannot fold into a padded Conv (padding would see it)")
            break
        steps.insert(0, step)
        value = data
    else:
        if value is not None and not steps:
            stop = NoMatch(f"'{value.name}' is a graph output or has other uses")
    if not steps:
        return stop
    scale, shift = _compose(steps, in_channels)
    grouped = weight.reshape(group, weight.shape[0] // group, weight.shape[1], -1)
    new_weight = (grouped * scale.reshape(group, 1, -1, 1)).reshape(weight.shape)
    bias = layer.bias
    if shift is not None:
        moved = np.einsum("gmck,gc->gm", grouped, shift.reshape(group, -1)).reshape(-1)
        bias = moved if bias is None else bias + moved
    plan = _finish(layer, tuple(steps), new_weight, bias if shift is not None else None)
    return plan if isinstance(plan, NoMatch) else dataclasses.replace(plan, data=value)
