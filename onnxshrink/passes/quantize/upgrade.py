"""Rewrites that keep a node's meaning when the model's default-domain opset is raised.

Each rewrite turns a node written for an older opset into nodes that mean the same at the newer
one (:data:`onnxshrink.passes.quantize.opset.MEANING_CHANGES` says which rewrite each op needs).
New constants are initializers of the graph that holds the node, named from the node.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from onnxshrink.ir.graphs import add_initializer, fresh_name

#: A rewrite: the node, and the model's name reservation (see :func:`onnxshrink.ir.graphs.taken_names`).
Rewrite = Callable[[ir.Node, set[str]], None]


def _graph(node: ir.Node) -> ir.Graph:
    graph = node.graph
    assert isinstance(graph, ir.Graph), f"node '{node.name}' is not in a graph"
    return graph


def attribute_to_input(attribute: str, index: int, dtype: type[np.generic] = np.int64) -> Rewrite:
    """A rewrite that moves ``attribute`` to input ``index`` (Split ``split``, Squeeze ``axes``, ...)."""

    def rewrite(node: ir.Node, taken: set[str]) -> None:
        attr = node.attributes.pop(attribute, None)
        if attr is None:
            return  # absent attribute, absent input: the same default on both sides
        data = np.asarray(attr.value, dtype=dtype)
        value = add_initializer(_graph(node), taken, f"{node.name or node.op_type}_{attribute}", data)
        if len(node.inputs) <= index:
            node.resize_inputs(index + 1)
        node.replace_input_with(index, value)

    return rewrite


def flatten_softmax(node: ir.Node, taken: set[str]) -> None:
    """Softmax-like ops before 13 worked on the input flattened to 2-D at ``axis``: spell that out.

    ``x → Flatten(axis) → op(axis=1) → Reshape(Shape(x))``, which means the same at any opset.
    """
    graph = _graph(node)
    axis = node.attributes["axis"].as_int() if "axis" in node.attributes else 1
    source = node.inputs[0]
    assert source is not None
    base = node.name or node.op_type
    flat = ir.node("Flatten", [source], {"axis": axis}, name=fresh_name(taken, f"{base}_flatten"))
    shape = ir.node("Shape", [source], name=fresh_name(taken, f"{base}_shape"))
    flat.outputs[0].name = fresh_name(taken, f"{base}_flat")
    shape.outputs[0].name = fresh_name(taken, f"{base}_input_shape")
    graph.insert_before(node, [flat, shape])
    output = node.outputs[0]
    inner = ir.node(node.op_type, [flat.outputs[0]], {"axis": 1}, domain=node.domain, name=node.name)
    inner.outputs[0].name = fresh_name(taken, f"{base}_2d")
    reshape = ir.node("Reshape", [inner.outputs[0], shape.outputs[0]], name=fresh_name(taken, f"{base}_reshape"))
    graph.insert_before(node, [inner, reshape])
    # The Reshape takes over the node's output value (name, type, shape, readers, graph output).
    ir.convenience.replace_all_uses_with(output, reshape.outputs[0], replace_graph_outputs=True)
    graph.remove(node, safe=True)
    name, kind, dims = output.name, output.type, output.shape
    output.name = None
    reshape.outputs[0].name, reshape.outputs[0].type, reshape.outputs[0].shape = name, kind, dims
