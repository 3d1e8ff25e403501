"""One model that quantizes any one layer on demand: each layer's damage alone at the cost of a model run.

The probe model is the float model in which every candidate layer of the main graph gets its
input Qs, its weight rounding and its output Q as the plan writes them (QuantizeLinear →
DequantizeLinear; the weight's int8 values behind a DequantizeLinear), each read through
``Where(switch, quantized, float)``: one boolean input per layer picks the quantized or the
float value. A run with one switch on is the model with that layer alone quantized (in float
arithmetic: the int8 kernels' saturation is not modelled); with every switch off it is the float
model (up to float rounding: onnxruntime picks other kernels for a layer whose weight is
computed), so one session serves every layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx_ir as ir

from onnxshrink.ir.graphs import fresh_name, taken_names
from onnxshrink.passes.quantize import plan as placement
from onnxshrink.passes.quantize import rewrite


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
        for index, value in enumerate(node.inputs):
            if value is not None and value.name in layer.inputs and value.name in plan.activations:
                writer.activation(value, plan.activations[value.name].params, [(node, index)])
                _switched(probe.graph, taken, value, switch, [(node, index)])
        if layer.weight is not None:
            weight = node.inputs[layer.weight.index]
            assert weight is not None
            writer.weight(node, layer.weight.index, layer.weight.axis)
            _switched(probe.graph, taken, weight, switch, [(node, layer.weight.index)])
    for key, switch in switches.items():
        layer = plan.layers[key]
        output = view.values.get(layer.output or "")
        if not layer.output_q or output is None or output.is_graph_output() or layer.output not in plan.activations:
            continue
        readers = [(reader, index) for reader, index in output.uses()]
        writer.activation(output, plan.activations[output.name or ""].params, readers)
        _switched(probe.graph, taken, output, switch, readers)
    probe.graph.sort()
    return probe, {key: str(switch.name) for key, switch in switches.items()}


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
