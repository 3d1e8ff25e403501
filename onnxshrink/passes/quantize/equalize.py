"""Cross-layer equalization (``equalize``): Conv→(Relu)?→Conv pairs rescaled to equal channel ranges.

For a Conv pair ``y = W2 * f(W1 * x + b1)`` with ``f`` positively homogeneous (``f(x / s) =
f(x) / s`` for ``s > 0``: none, Relu, LeakyRelu), dividing output channel ``j`` of the first Conv
(its weight slice and bias) by ``s_j`` and multiplying input channel ``j`` of the second Conv's
weight by ``s_j`` keeps the function exactly (Nagel et al., Data-Free Quantization, 2019). With
``s_j = sqrt(r1_j / r2_j)``, ``r1_j`` the range (``max|w|``) of the first weight's output channel
``j`` and ``r2_j`` that of the second weight's input channel ``j``, both become ``sqrt(r1_j r2_j)``:
the intermediate activation's channels (quantized with one scale) get comparable ranges, and so do
the weights of a depthwise Conv followed by a pointwise one. Rules:

1. A pair is two Convs of the main graph with constant float32 weights that no other node reads
   (and a constant bias, or none, on the first), the first Conv's output read only by the second
   (input 0), directly or through one Relu or LeakyRelu read only by it; not a graph output.
2. Clip (Relu6) and other activations between them are not positively homogeneous (Relu6 clips
   at 6, which would have to move with ``s``): such pairs are left alone and named with the reason.
3. Pairs are equalized in graph order, in sweeps until no scale moves by more than 1e-4
   (relative) or after ``SWEEPS`` sweeps: in a chain A→B→C, equalizing B→C changes B again.
4. A channel whose range is zero on either side keeps ``s = 1``; ``s`` stays within [1e-4, 1e4].
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxshrink.ir.constants import constant_array
from onnxshrink.ir.graphs import add_initializer, is_onnx_op, taken_names
from onnxshrink.passbase import NoMatch
from onnxshrink.passes.quantize.plan import GraphView, constant_initializer
from onnxshrink.passes.quantize.rewrite import drop_unused_initializers

__all__ = ["SWEEPS", "equalize_model", "find_pairs"]

SWEEPS = 20
HOMOGENEOUS = ("Relu", "LeakyRelu")
_SCALE_BOUNDS = (1e-4, 1e4)


@dataclasses.dataclass
class ConvPair:
    """Two Convs equalized together and the activation between them."""

    first: str
    second: str
    through: str | None


def _own_constant(node: ir.Node, index: int, what: str) -> str | None:
    """Why input ``index`` of ``node`` is not a float32 initializer that only ``node`` reads."""
    value = node.inputs[index] if len(node.inputs) > index else None
    if value is None:
        return None if index == 2 else f"{what} is missing"
    tensor = constant_initializer(value, what)
    if isinstance(tensor, NoMatch):
        return tensor.reason
    if tensor.dtype != ir.DataType.FLOAT:
        return f"{what} is not float32"
    if len({id(user) for user, _ in value.uses()}) != 1:
        return f"{what} '{value.name}' is shared with another node"
    return None


def _single_reader(value: ir.Value) -> tuple[ir.Node, int] | None:
    uses = list(value.uses())
    if len(uses) != 1 or value.is_graph_output():
        return None
    return uses[0][0], uses[0][1]


def find_pairs(view: GraphView) -> tuple[list[ConvPair], dict[str, str]]:
    """Rules 1 and 2: the Conv pairs to equalize, and the pairs left alone with why."""
    pairs: list[ConvPair] = []
    skipped: dict[str, str] = {}
    for key, node in view.nodes.items():
        if not is_onnx_op(node, "Conv"):
            continue
        reader = _single_reader(node.outputs[0])
        if reader is None:
            continue
        through: ir.Node | None = None
        second, index = reader
        if not is_onnx_op(second, "Conv"):
            through = second
            after = _single_reader(second.outputs[0]) if second.outputs else None
            if after is None or not is_onnx_op(after[0], "Conv") or after[1] != 0:
                continue
            second, index = after
        if index != 0:
            continue
        label = f"{key} -> {view.key(second)}"
        if through is not None and not is_onnx_op(through, *HOMOGENEOUS):
            bounds = " (its bounds would have to move with the scales)" if through.op_type == "Clip" else ""
            skipped[label] = f"{through.op_type} between them is not positively homogeneous{bounds}"
            continue
        why = (
            _own_constant(node, 1, "weight")
            or _own_constant(node, 2, "bias")
            or _own_constant(second, 1, "second weight")
        )
        if why is None:
            first_weight, second_weight = constant_array(node.inputs[1]), constant_array(second.inputs[1])
            assert first_weight is not None and second_weight is not None
            group = second.attributes.get_int("group", 1)
            if second_weight.shape[1] * group != first_weight.shape[0]:
                why = "channel counts do not match"
        if why is not None:
            skipped[label] = why
            continue
        pairs.append(ConvPair(key, view.key(second), view.key(through) if through is not None else None))
    return pairs, skipped


def _input_channel_index(weight: np.ndarray, group: int) -> np.ndarray:
    """``[out, in/group]``: the input channel each slice of a Conv weight reads."""
    out_channels, per_group = weight.shape[0], weight.shape[1]
    return (np.arange(out_channels)[:, None] // (out_channels // group)) * per_group + np.arange(per_group)[None, :]


def _ranges(first: np.ndarray, second: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r1 = np.abs(first).reshape(first.shape[0], -1).max(axis=1)
    slices = np.abs(second).reshape(second.shape[0], second.shape[1], -1).max(axis=2)
    r2 = np.zeros(first.shape[0])
    np.maximum.at(r2, index.reshape(-1), slices.reshape(-1))
    return r1, r2


def _spread(ranges: np.ndarray) -> float:
    positive = ranges[ranges > 0]
    return float(positive.max() / positive.min()) if positive.size else 1.0


def equalize_model(model: ir.Model) -> dict[str, Any]:
    """Rules 1-4 on ``model``'s main graph, in place; returns the report's ``equalize`` record."""
    view = GraphView(model.graph)
    pairs, skipped = find_pairs(view)
    weights: dict[str, np.ndarray] = {}
    biases: dict[str, np.ndarray] = {}
    for pair in pairs:
        for key in (pair.first, pair.second):
            weights.setdefault(key, np.asarray(constant_array(view.nodes[key].inputs[1]), dtype=np.float64))
        bias = view.nodes[pair.first].inputs[2] if len(view.nodes[pair.first].inputs) > 2 else None
        if bias is not None:
            biases[pair.first] = np.asarray(constant_array(bias), dtype=np.float64)
    before: dict[str, tuple[float, float]] = {}
    indices = {
        pair.second: _input_channel_index(weights[pair.second], view.nodes[pair.second].attributes.get_int("group", 1))
        for pair in pairs
    }
    for pair in pairs:
        r1, r2 = _ranges(weights[pair.first], weights[pair.second], indices[pair.second])
        before[pair.first] = (_spread(r1), _spread(r2))
    for _ in range(SWEEPS):
        moved = 0.0
        for pair in pairs:
            index = indices[pair.second]
            r1, r2 = _ranges(weights[pair.first], weights[pair.second], index)
            valid = (r1 > 0) & (r2 > 0)
            scales = np.clip(np.sqrt(np.where(valid, r1, 1.0) / np.where(valid, r2, 1.0)), *_SCALE_BOUNDS)
            scales = np.where(valid, scales, 1.0)
            shape = (-1,) + (1,) * (weights[pair.first].ndim - 1)
            weights[pair.first] = weights[pair.first] / scales.reshape(shape)
            if pair.first in biases:
                biases[pair.first] = biases[pair.first] / scales
            factor = scales[index].reshape(index.shape + (1,) * (weights[pair.second].ndim - 2))
            weights[pair.second] = weights[pair.second] * factor
            moved = max(moved, float(np.max(np.abs(np.log(scales)))))
        if moved < 1e-4:
            break
    taken = taken_names(model)
    for key, array in weights.items():
        node = view.nodes[key]
        weight = node.inputs[1]
        assert weight is not None
        new_weight = add_initializer(model.graph, taken, f"{weight.name}_equalized", array.astype(np.float32))
        node.replace_input_with(1, new_weight)
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        if key in biases and bias is not None:
            new = add_initializer(model.graph, taken, f"{bias.name}_equalized", biases[key].astype(np.float32))
            node.replace_input_with(2, new)
    drop_unused_initializers(model.graph)
    layers: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        r1, r2 = _ranges(weights[pair.first], weights[pair.second], indices[pair.second])
        layers[f"{pair.first} -> {pair.second}"] = {
            "through": pair.through,
            "first_range_spread": [round(before[pair.first][0], 3), round(_spread(r1), 3)],
            "second_range_spread": [round(before[pair.first][1], 3), round(_spread(r2), 3)],
        }
    return {"pairs": layers, "not_equalized": skipped}
