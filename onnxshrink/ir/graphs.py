"""The IR helpers every module shares: domains and opsets, graph scopes, names, counts.

* Domains and opsets: :data:`ONNX_DOMAINS`, :func:`canonical_domain`, :func:`is_onnx_op`,
  :func:`opset_version` (one policy for a missing import).
* Graph scopes: :func:`graph_likes` (main graph, subgraphs, functions), :func:`scoped_graph_likes`
  (each with the function it lies in), :func:`subgraphs_of`, :func:`all_nodes`, :func:`all_tensors`.
* Names: :func:`taken_names` reserves every name in use, :func:`fresh_name` hands out new ones,
  :func:`add_initializer` registers a new named weight, :func:`take_over_output` renames in place.
* Counts: :func:`totals` reads only shapes and dtypes, never tensor data, so it is cheap on
  memory-mapped models of any size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import onnx
import onnx_ir as ir

ONNX_DOMAINS = ("", "ai.onnx")
"""The two spellings of the default ONNX operator set's domain."""


def canonical_domain(domain: str) -> str:
    """``""`` for the default ONNX domain however it is spelled, the domain itself otherwise."""
    return "" if domain in ONNX_DOMAINS else domain


def is_onnx_op(node: ir.Node, *op_types: str) -> bool:
    """True when the node is in the default ONNX domain and (if any are given) one of ``op_types``."""
    return node.domain in ONNX_DOMAINS and (not op_types or node.op_type in op_types)


def opset_version(model: ir.Model, domain: str = "", scope: ir.Graph | ir.Function | None = None) -> int:
    """The opset version of ``domain`` that nodes in ``scope`` (default: the main graph) run under.

    A function's own import wins over the model's; a domain neither imports (only possible for a
    function, or a model that uses no op of the domain) is taken at the newest version this onnx
    knows for the default domain, and at 1 for any other domain.
    """
    wanted = canonical_domain(domain)
    spellings = ONNX_DOMAINS if wanted == "" else (wanted,)
    for imports in (scope.opset_imports if isinstance(scope, ir.Function) else {}, model.opset_imports):
        for spelling in spellings:
            if spelling in imports:
                return int(imports[spelling])
    return onnx.defs.onnx_opset_version() if wanted == "" else 1


def graph_likes(model: ir.Model) -> Iterator[ir.Graph | ir.Function]:
    """The main graph, every subgraph, every model-local function and their subgraphs."""
    for graph, _ in scoped_graph_likes(model):
        yield graph


def scoped_graph_likes(model: ir.Model) -> Iterator[tuple[ir.Graph | ir.Function, ir.Function | None]]:
    """Each graph-like of :func:`graph_likes` with the model-local function it lies in.

    The function is None for the main graph and its subgraphs. It is what a pass needs to know
    which opset the scope's nodes run under (``opset_version(model, scope=function)``) and whether
    the scope can hold initializers (a function body, and any graph inside one, cannot). Parents
    come before their subgraphs.
    """
    for graph in _graph_tree(model.graph):
        yield graph, None
    for function in model.functions.values():
        for graph in _graph_tree(function):
            yield graph, function


def _graph_tree(graph: ir.Graph | ir.Function) -> Iterator[ir.Graph | ir.Function]:
    """``graph`` and every subgraph under it, parents first (cheaper than onnx-ir's iterator)."""
    yield graph
    for node in graph:
        for sub in subgraphs_of(node):
            yield from _graph_tree(sub)


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


@dataclasses.dataclass(frozen=True)
class Totals:
    """Nodes, weight bytes and weight elements of a whole model (subgraphs and functions too)."""

    nodes: int = 0
    bytes: int = 0
    params: int = 0


def _add_tensor(counts: list[int], tensor: ir.TensorProtocol) -> None:
    counts[1] += tensor_nbytes(tensor)
    counts[2] += int(tensor.size)


def _count_graph(graph: ir.Graph | ir.Function, counts: list[int]) -> None:
    if isinstance(graph, ir.Graph):
        for value in graph.initializers.values():
            if value.const_value is not None:
                _add_tensor(counts, value.const_value)
    for node in graph:
        counts[0] += 1
        for attr in node.attributes.values():
            kind = attr.type
            if kind == ir.AttributeType.TENSOR and not attr.is_ref():
                _add_tensor(counts, attr.value)
            elif kind == ir.AttributeType.TENSORS and not attr.is_ref():
                for tensor in attr.value:
                    _add_tensor(counts, tensor)
            elif kind == ir.AttributeType.GRAPH and not attr.is_ref():
                _count_graph(attr.value, counts)
            elif kind == ir.AttributeType.GRAPHS and not attr.is_ref():
                for sub in attr.value:
                    _count_graph(sub, counts)


def totals(model: ir.Model) -> Totals:
    """One walk over the model; reads shapes and dtypes only (this runs before and after every pass)."""
    counts = [0, 0, 0]
    _count_graph(model.graph, counts)
    for function in model.functions.values():
        _count_graph(function, counts)
    return Totals(*counts)


def count_bytes(model: ir.Model) -> int:
    """Weight bytes: initializers and constant attributes of every graph."""
    return totals(model).bytes


def count_params(model: ir.Model) -> int:
    """Elements held in initializers and constants."""
    return totals(model).params


def take_over_output(old: ir.Value, new: ir.Value) -> None:
    """Makes ``new`` stand for ``old`` everywhere, graph outputs included, with its name, type and shape.

    The declared type and shape win: a graph output's signature is what the model declared, not
    what was inferred inside.
    """
    name = old.name
    ir.convenience.replace_all_uses_with(old, new, replace_graph_outputs=True)
    old.name = None
    new.name = name
    if old.type is not None:
        new.type = old.type
    if old.shape is not None:
        new.shape = old.shape


def taken_names(model: ir.Model) -> set[str]:
    """Every value and node name in use anywhere in the model (subgraphs and functions included).

    The one way to start a name reservation: pass the set to :func:`fresh_name` and
    :func:`add_initializer`, which add each name they hand out.
    """
    names: set[str] = set()
    for graph in graph_likes(model):
        values = [*graph.inputs, *graph.outputs]
        if isinstance(graph, ir.Graph):
            values.extend(graph.initializers.values())
        for node in graph:
            values.extend(node.outputs)
            if node.name:
                names.add(node.name)
        names.update(v.name for v in values if v.name)
    return names


def fresh_name(taken: set[str], base: str) -> str:
    """``base``, or ``base__N`` for the first N that is not in ``taken``; the name is then taken."""
    name, index = base, 0
    while name in taken:
        index += 1
        name = f"{base}__{index}"
    taken.add(name)
    return name


def add_initializer(graph: ir.Graph, taken: set[str], base: str, data: np.ndarray | ir.Tensor) -> ir.Value:
    """Registers ``data`` as a new, typed and shaped initializer of ``graph`` and returns its value.

    The initializer is named ``base``, or the first free :func:`fresh_name` after it; the name is
    added to ``taken``.
    """
    name = fresh_name(taken, base)
    tensor = data if isinstance(data, ir.Tensor) else ir.Tensor(data, name=name)
    tensor.name = name
    value = ir.Value(name=name, const_value=tensor, type=ir.TensorType(tensor.dtype), shape=ir.Shape(tensor.shape))
    graph.register_initializer(value)
    return value
