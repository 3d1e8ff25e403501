"""A fused hard-swish written out for the int8 kernels, and fused again where it stays float.

``cleanup`` fuses ``x * Clip(x + 3, 0, 6) / 6`` into ``HardSwish(x)`` (opset 14 on) or
``x * HardSigmoid(x, 1/6, 0.5)``: one float kernel in onnxruntime, but none that runs on int8.
For ``target=ort-cpu`` the plan sees each main-graph hard-swish written out again
(:func:`expand`): between int8 neighbours rule 7b then runs its ``+ 3``, its product and its
``/ 6`` as QLinearAdd / QLinearMul, the Clip folded into the Q before them. After the rewrite,
:func:`refuse` puts the fused form back wherever the written-out chain was left float.

The written-out chain keeps the fused node's place and name (its last node), so the keys of the
model's own nodes do not move; the nodes it adds are named after it and marked as added.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from onnxshrink.ir.activations import hard_swish_nodes, times_hard_sigmoid
from onnxshrink.ir.graphs import add_initializer, fresh_name, is_onnx_op, take_over_output
from onnxshrink.passes.quantize.plan import ADDED_NODE

_STEPS = ("add", "clip", "mul")  # the chain's added nodes, before its last (the ``/ 6``)
_CONSTANTS = (("three", 3.0), ("zero", 0.0), ("six", 6.0), ("six_div", 6.0))


@dataclasses.dataclass(frozen=True)
class Expanded:
    """One hard-swish written out: its nodes' names (``+ 3``, Clip, product, ``/ 6``) and its fused form."""

    names: tuple[str, str, str, str]
    fused: bool  # HardSwish (opset 14 on); else x * HardSigmoid(x, 1/6, 0.5)
    original: tuple[str | None, str | None]  # the names the model gave its last node and its HardSigmoid


def _hard_swish(node: ir.Node) -> tuple[ir.Value, ir.Node | None] | None:
    """``(x, HardSigmoid node or None)`` when ``node`` is ``HardSwish(x)`` or ``x * HardSigmoid(x, 1/6, 0.5)``."""
    if is_onnx_op(node, "HardSwish") and node.inputs and node.inputs[0] is not None:
        return node.inputs[0], None
    return times_hard_sigmoid(node)


def expand(model: ir.Model, taken: set[str]) -> list[Expanded]:
    """Writes each float32 hard-swish of the main graph out as ``x * Clip(x + 3, 0, 6) / 6``.

    The fused nodes stay where they are: the last becomes the ``/ 6``, a HardSigmoid the Clip;
    the others are added (marked so that the keys of the model's own nodes keep their positions).

    Args:
        model: Changed in place.
        taken: Value and node names in use; the new ones are added.

    Returns:
        What :func:`refuse` needs to fuse each chain again.
    """
    graph = model.graph
    # A value of unknown dtype is taken as float32 when no other float type appears in the model.
    float32_model = _float_types(graph) <= {ir.DataType.FLOAT}
    found = []
    for node in list(graph):
        match = _hard_swish(node)
        dtype = None if match is None else match[0].dtype
        if match is None or not (dtype == ir.DataType.FLOAT or (dtype is None and float32_model)):
            continue
        x, sigmoid = match
        original = (node.name, None if sigmoid is None else sigmoid.name)
        base = node.name or node.outputs[0].name or "hard_swish"
        three, zero, six, six_div = (
            add_initializer(graph, taken, f"{base}/{c}", np.array(n, np.float32)) for c, n in _CONSTANTS
        )
        add = _added("Add", [x, three], f"{base}/add", x, taken)
        if sigmoid is None:
            clip = _added("Clip", [add.outputs[0], zero, six], f"{base}/clip", x, taken)
            graph.insert_before(node, [add, clip])
        else:  # the HardSigmoid becomes the Clip, in its place
            clip = sigmoid
            _rewrite(clip, "Clip", [add.outputs[0], zero, six], clip.name or fresh_name(taken, f"{base}/clip"))
            graph.insert_before(clip, add)
        product = _added("Mul", [x, clip.outputs[0]], f"{base}/mul", x, taken)
        graph.insert_before(node, product)
        _rewrite(node, "Div", [product.outputs[0], six_div], node.name or fresh_name(taken, f"{base}/scale"))
        names = (str(add.name), str(clip.name), str(product.name), str(node.name))
        found.append(Expanded(names, fused=sigmoid is None, original=original))
    return found


def refuse(model: ir.Model, chains: list[Expanded]) -> int:
    """Fuses again each chain of :func:`expand` that no Q/DQ entered; returns how many.

    A chain is left as it is where the rewrite quantized any of its nodes: then its constants
    are quantized ones (read through a DequantizeLinear).
    """
    graph = model.graph
    nodes = {node.name: node for node in graph if node.name}
    fused = 0
    for chain in chains:
        add, clip, product, last = (nodes.get(name) for name in chain.names)
        if add is None or clip is None or product is None or last is None:
            continue
        x = add.inputs[0]
        if x is None:
            continue
        constants = (add.inputs[1], *clip.inputs[1:], last.inputs[1])
        float_chain = (
            all(is_onnx_op(n, op) for n, op in ((add, "Add"), (clip, "Clip"), (product, "Mul"), (last, "Div")))
            and list(product.inputs) == [x, clip.outputs[0]]
            and clip.inputs[0] is add.outputs[0]
            and last.inputs[0] is product.outputs[0]
            and all(len(n.outputs[0].uses()) == 1 for n in (add, clip, product))
            and all(v is not None and v.const_value is not None for v in constants)
        )
        if not float_chain:
            continue
        last_name, gate_name = chain.original
        new = hard_swish_nodes(x, fused=chain.fused, name=last_name, gate_name=gate_name)
        graph.insert_before(add, new)
        take_over_output(last.outputs[0], new[-1].outputs[0])
        graph.remove([last, product, clip, add], safe=True)
        fused += 1
    return fused


def _added(op_type: str, inputs: list[ir.Value], name: str, like: ir.Value, taken: set[str]) -> ir.Node:
    """A new node of the chain, marked as added, its output typed and shaped like ``like``."""
    node = ir.node(op_type, inputs, name=fresh_name(taken, name))
    node.meta[ADDED_NODE] = True
    node.outputs[0].name = fresh_name(taken, f"{name}_out")
    node.outputs[0].type, node.outputs[0].shape = like.type, like.shape
    return node


def _rewrite(node: ir.Node, op_type: str, inputs: list[ir.Value], name: str) -> None:
    """Turns ``node`` into ``op_type`` over ``inputs`` (no attributes), keeping its place and output."""
    node.op_type = op_type
    node.attributes.clear()
    node.resize_inputs(len(inputs))
    for index, value in enumerate(inputs):
        node.replace_input_with(index, value)
    node.name = name


def _float_types(graph: ir.Graph) -> set[ir.DataType]:
    """The floating-point dtypes of the graph's inputs, outputs, initializers and typed values."""
    values = [*graph.inputs, *graph.outputs, *graph.initializers.values()]
    values += [v for node in graph for v in node.outputs]
    return {v.dtype for v in values if v.dtype is not None and v.dtype.is_floating_point()}
