"""One model that quantizes any one layer on demand: each layer's damage alone at the cost of a model run.

The probe model is the float model with one boolean input (a switch) per candidate layer of the
main graph. A layer with a constant weight becomes ``If(switch)``: the ``then`` branch is the
layer with its input Qs and its rounded weight as the plan writes them (QuantizeLinear →
DequantizeLinear, the weight's int8 values behind a DequantizeLinear), the ``else`` branch the
float layer; only the branch taken runs, and both weights stay constants onnxruntime pre-packs.
A layer of two activations reads each quantized input through ``Where(switch, quantized, float)``,
and a layer's output Q is read the same way. A run with one switch on is the model with that
layer alone quantized (in float arithmetic: the int8 kernels' saturation is not modelled); with
every switch off it is the float model (up to float rounding), so one session serves every layer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from onnxshrink.ir.graphs import fresh_name, taken_names
from onnxshrink.passes.quantize import plan as placement
from onnxshrink.passes.quantize import rewrite
from onnxshrink.passes.quantize.statistics import QParams

_ZERO_TYPES = {"u8": np.uint8, "s8": np.int8}


def probe_model(
    model: ir.Model, plan: placement.QuantPlan, layers: Sequence[str], weight_bits: int
) -> tuple[ir.Model, dict[str, str]]:
    """A copy of ``model`` with one switch input per layer of ``layers`` in the main graph.

    Args:
        model: The float model (not changed).
        plan: The placement with every layer of ``layers`` quantized.
        layers: The layers to switch; those inside If/Loop/Scan bodies get no switch.
        weight_bits: Bits of the quantized weights.

    Returns:
        The probe model, and layer key -> the name of its boolean switch input.
    """
    probe = model.clone()
    taken = taken_names(probe)
    writer = rewrite.QdqWriter(probe, weight_bits, taken=taken)
    view = placement.GraphView(probe.graph)
    switches: dict[str, ir.Value] = {}
    outputs: dict[str, str] = {}  # layer -> the tensor its output Q quantizes
    # Inputs and weights first, on the float values; outputs after, so that a successor's input
    # Q reads the switched output.
    for key in layers:
        node = view.nodes.get(key)
        if node is None:
            continue
        layer = plan.layers[key]
        switch = ir.Value(
            name=fresh_name(taken, f"onnxshrink_probe_{key}"), type=ir.TensorType(ir.DataType.BOOL), shape=ir.Shape([])
        )
        probe.graph.inputs.append(switch)
        switches[key] = switch
        quantized = {
            index: plan.activations[value.name].params
            for index, value in enumerate(node.inputs)
            if value is not None and value.name in layer.inputs and value.name in plan.activations
        }
        if layer.output_q and layer.output in plan.activations:
            outputs[key] = layer.output
        if layer.weight is not None:
            _branched(probe.graph, taken, writer, node, layer.weight, quantized, switch)
            continue
        for index, params in quantized.items():
            value = node.inputs[index]
            assert value is not None
            writer.activation(value, params, [(node, index)])
            _switched(probe.graph, taken, value, switch, [(node, index)])
    values = placement.GraphView(probe.graph).values
    for key, name in outputs.items():
        output = values.get(name)
        if output is None or output.is_graph_output():
            continue
        readers = [(reader, index) for reader, index in output.uses()]
        writer.activation(output, plan.activations[name].params, readers)
        _switched(probe.graph, taken, output, switches[key], readers)
    probe.graph.sort()
    return probe, {key: str(switch.name) for key, switch in switches.items()}


def _branched(
    graph: ir.Graph,
    taken: set[str],
    writer: rewrite.QdqWriter,
    node: ir.Node,
    weight: placement.WeightQ,
    inputs: Mapping[int, QParams],
    switch: ir.Value,
) -> None:
    """Replaces ``node`` by ``If(switch)``: the layer quantized (``inputs`` and ``weight``), else as it is.

    Only the branch taken runs, and each branch's weight stays a constant that onnxruntime
    pre-packs (a computed weight, such as a ``Where`` of both, runs about 3x slower).
    """
    original = node.inputs[weight.index]
    writer.weight(node, weight.index, weight.axis)
    rounded = node.inputs[weight.index]
    assert original is not None and rounded is not None
    node.replace_input_with(weight.index, original)
    output = node.outputs[0]

    def branch(label: str, quantized: bool) -> ir.Graph:
        nodes: list[ir.Node] = []
        reads = list(node.inputs)
        if quantized:
            reads[weight.index] = rounded
            for index, params in inputs.items():
                value = reads[index]
                assert value is not None
                q, dq = _qdq(graph, taken, writer, value, params)
                nodes += [q, dq]
                reads[index] = dq.outputs[0]
        attributes = [ir.Attr(a.name, a.type, a.value) for a in node.attributes.values()]
        copy = ir.Node(node.domain, node.op_type, reads, attributes, name=fresh_name(taken, f"{node.name}_{label}"))
        copy.outputs[0].name = fresh_name(taken, f"{output.name}_{label}")
        copy.outputs[0].type, copy.outputs[0].shape = output.type, output.shape
        nodes.append(copy)
        return ir.Graph([], [copy.outputs[0]], nodes=nodes, name=fresh_name(taken, f"{node.name}_{label}_branch"))

    branches = [ir.AttrGraph("then_branch", branch("int8", True)), ir.AttrGraph("else_branch", branch("float", False))]
    chosen = ir.Node("", "If", [switch], branches, name=fresh_name(taken, f"{node.name}_probe"))
    name, output.name = output.name, fresh_name(taken, f"{output.name}_replaced")
    chosen.outputs[0].name, chosen.outputs[0].type, chosen.outputs[0].shape = name, output.type, output.shape
    graph.insert_before(node, chosen)
    output.replace_all_uses_with(chosen.outputs[0], replace_graph_outputs=True)
    graph.remove(node, safe=True)


def _qdq(
    graph: ir.Graph, taken: set[str], writer: rewrite.QdqWriter, value: ir.Value, params: QParams
) -> tuple[ir.Node, ir.Node]:
    """A QuantizeLinear → DequantizeLinear pair on ``value`` (constants in ``graph``), not yet in any graph."""
    base = value.name or "probe"
    scale = writer.constant(np.array(params.scale, np.float32), f"{base}_probe_scale")
    zero = writer.constant(np.array(params.zero_point, _ZERO_TYPES[params.dtype]), f"{base}_probe_zero_point")
    q = ir.node("QuantizeLinear", [value, scale, zero], name=fresh_name(taken, f"{base}_probe_q"))
    q.outputs[0].name = fresh_name(taken, f"{base}_probe_quantized")
    dq = ir.node("DequantizeLinear", [q.outputs[0], scale, zero], name=fresh_name(taken, f"{base}_probe_dq"))
    dq.outputs[0].name = fresh_name(taken, f"{base}_probe_dequantized")
    dq.outputs[0].type, dq.outputs[0].shape = value.type, value.shape
    return q, dq


def _switched(
    graph: ir.Graph, taken: set[str], original: ir.Value, switch: ir.Value, readers: list[tuple[ir.Node, int]]
) -> None:
    """Makes ``readers`` (which read the quantized value now) read ``Where(switch, quantized, original)``."""
    reader, index = readers[0]
    quantized = reader.inputs[index]
    assert quantized is not None
    where = ir.node("Where", [switch, quantized, original], name=fresh_name(taken, f"{original.name}_switch"))
    where.outputs[0].name = fresh_name(taken, f"{original.name}_switched")
    where.outputs[0].type = original.type
    where.outputs[0].shape = original.shape
    graph.append(where)
    for reader, index in readers:
        reader.replace_input_with(index, where.outputs[0])
