"""Walking a model: every graph (main, subgraphs, function bodies), node and tensor.

Counting nodes and bytes reads only shapes and dtypes, never tensor data, so it is cheap on
memory-mapped models of any size.
"""

from __future__ import annotations

from collections.abc import Iterator

import onnx_ir as ir


def graph_likes(model: ir.Model) -> Iterator[ir.Graph | ir.Function]:
    """The main graph, every subgraph, every model-local function and their subgraphs."""
    yield from model.graphs()
    for function in model.functions.values():
        yield function
        for node in ir.traversal.RecursiveGraphIterator(function):
            yield from subgraphs_of(node)


def subgraphs_of(node: ir.Node) -> Iterator[ir.Graph]:
    """Graphs held directly in a node's attributes (If branches, Loop/Scan bodies)."""
    for attr in node.attributes.values():
        if attr.is_ref():
            continue
        if attr.type == ir.AttributeType.GRAPH:
            yield attr.as_graph()
        elif attr.type == ir.AttributeType.GRAPHS:
            yield from attr.as_graphs()


def all_nodes(model: ir.Model) -> Iterator[ir.Node]:
    """Every node of the model, subgraphs and function bodies included."""
    yield from ir.traversal.RecursiveGraphIterator(model.graph)
    for function in model.functions.values():
        yield from ir.traversal.RecursiveGraphIterator(function)


def all_tensors(model: ir.Model) -> Iterator[ir.TensorProtocol]:
    """Initializers of every graph plus tensors held in node attributes (Constant values)."""
    for graph in model.graphs():
        for value in graph.initializers.values():
            if value.const_value is not None:
                yield value.const_value
    for node in all_nodes(model):
        for attr in node.attributes.values():
            if attr.is_ref():
                continue
            # .value, not as_tensor(): this runs on every attribute of every node, often.
            if attr.type == ir.AttributeType.TENSOR:
                yield attr.value
            elif attr.type == ir.AttributeType.TENSORS:
                yield from attr.value


def tensor_nbytes(tensor: ir.TensorProtocol) -> int:
    """Bytes of a tensor's data, from its shape and dtype alone (strings: best effort)."""
    if tensor.dtype == ir.DataType.STRING:
        try:
            return int(sum(len(s) for s in tensor.string_data()))  # type: ignore[attr-defined,misc]
        except AttributeError:
            return 0
    return int(tensor.nbytes)


def count_nodes(model: ir.Model) -> int:
    return sum(1 for _ in all_nodes(model))


def count_bytes(model: ir.Model) -> int:
    """Weight bytes: initializers and constant attributes of every graph."""
    return sum(tensor_nbytes(t) for t in all_tensors(model))


def count_params(model: ir.Model) -> int:
    """Elements held in initializers and constants."""
    return sum(int(t.size) for t in all_tensors(model))
