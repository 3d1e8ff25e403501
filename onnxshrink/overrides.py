"""Weights replaced per run, evaluated only on the part of the model that depends on them.

Profiling a weight (pruning it to a grid of sparsities, rounding it to another precision) changes
only the nodes downstream of it. :class:`WeightOverrides` cuts, for each weight, the sub-graph
of its readers and every node they reach (subgraph reads included), with the weight as a graph
input; the activations entering that sub-graph from upstream are captured once per batch, in one
run of the whole model that also gives the model's outputs. A trial then costs one run of the
weight's sub-graph: upstream work is never repeated, and every other weight stays a constant
initializer that onnxruntime pre-packs. Sessions are opened once per weight and kept.

The outputs of a trial are the model outputs that depend on the weight; the others are the
captured ones, unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxshrink.activations import exposed
from onnxshrink.context import PassContext
from onnxshrink.ir.graphs import subgraphs_of
from onnxshrink.runtime import run

Feed = dict[str, np.ndarray]


def _reads(node: ir.Node) -> list[ir.Value]:
    """The values ``node`` reads: its inputs and the outer-scope values its subgraphs read."""
    found = [value for value in node.inputs if value is not None]
    for sub in subgraphs_of(node):
        inner: set[int] = set()
        reads: list[ir.Value] = []
        for graph_node in ir.traversal.RecursiveGraphIterator(sub):
            inner.update(id(value) for value in graph_node.outputs)
            reads.extend(value for value in graph_node.inputs if value is not None)
            for nested in subgraphs_of(graph_node):
                inner.update(id(value) for value in nested.inputs)
                inner.update(id(value) for value in nested.initializers.values())
        inner.update(id(value) for value in sub.inputs)
        inner.update(id(value) for value in sub.initializers.values())
        found.extend(value for value in reads if id(value) not in inner)
    return found


@dataclasses.dataclass
class Cut:
    """The nodes downstream of some main-graph weights, and the values entering them from upstream."""

    nodes: list[ir.Node]  # graph order
    boundary: list[ir.Value]  # graph inputs and upstream activations the nodes read (no initializers)
    outputs: list[ir.Value]  # graph outputs the nodes produce


def cut(graph: ir.Graph, weights: Iterable[str]) -> Cut:
    """The sub-graph of ``graph`` that depends on the named initializers.

    Source nodes (no input, such as ``Constant``) whose outputs the sub-graph reads are part of it.
    """
    readers: dict[int, list[ir.Node]] = {}
    order = list(graph)
    reads = {id(node): _reads(node) for node in order}
    for node in order:
        for value in reads[id(node)]:
            readers.setdefault(id(value), []).append(node)
    inside: set[int] = set()
    frontier = [graph.initializers[name] for name in weights]
    while frontier:
        value = frontier.pop()
        for node in readers.get(id(value), ()):
            if id(node) not in inside:
                inside.add(id(node))
                frontier.extend(node.outputs)
    for node in order:  # sources the sub-graph reads
        if (
            id(node) not in inside
            and not reads[id(node)]
            and any(id(n) in inside for v in node.outputs for n, _ in v.uses())
        ):
            inside.add(id(node))
    nodes = [node for node in order if id(node) in inside]
    initializers = {id(value) for value in graph.initializers.values()}
    boundary: dict[int, ir.Value] = {}
    for node in nodes:
        for value in reads[id(node)]:
            producer = value.producer()
            upstream = producer is None or id(producer) not in inside
            if upstream and id(value) not in initializers:
                boundary.setdefault(id(value), value)
    outputs = [value for value in graph.outputs if (p := value.producer()) is not None and id(p) in inside]
    return Cut(nodes, list(boundary.values()), outputs)


def subgraph_model(model: ir.Model, weight: str, types: Mapping[str, np.ndarray]) -> ir.Model:
    """A copy of ``model`` holding only what depends on ``weight``, which becomes a graph input.

    Its other inputs are the values entering the sub-graph, typed and ranked like the arrays in
    ``types`` (every dimension left free), so captured activations can be fed to it.
    """
    copy = model.clone()
    graph = copy.graph
    part = cut(graph, [weight])
    inputs: list[ir.Value] = []
    for value in part.boundary:
        array = types[value.name or ""]
        if value.producer() is None and value in graph.inputs:
            inputs.append(value)
            continue
        name = value.name
        value.name = f"{name}::upstream"
        fresh = ir.Value(name=name, type=ir.TensorType(ir.DataType.from_numpy(array.dtype)))
        fresh.shape = ir.Shape([None, *array.shape[1:]]) if array.ndim else ir.Shape([])
        value.replace_all_uses_with(fresh)
        inputs.append(fresh)
    stored = graph.initializers.pop(weight)
    tensor = stored.const_value
    assert tensor is not None
    stored.type, stored.shape = ir.TensorType(tensor.dtype), ir.Shape(list(tensor.shape.numpy()))
    graph.outputs.clear()
    graph.outputs.extend(part.outputs)
    kept = {id(node) for node in part.nodes}
    graph.remove([node for node in graph if id(node) not in kept], safe=True)
    graph.inputs.clear()
    graph.inputs.extend([*inputs, stored])
    for name, value in list(graph.initializers.items()):
        if not value.uses():
            graph.initializers.pop(name)
    return copy


def replaced(model: ir.Model, weights: Mapping[str, np.ndarray]) -> ir.Model:
    """A copy of ``model`` whose named main-graph initializers hold the given arrays."""
    copy = model.clone()
    for name, array in weights.items():
        value = copy.graph.initializers[name]
        value.const_value = ir.Tensor(np.asarray(array), name=name)
    return copy


@dataclasses.dataclass
class Batch:
    """One calibration batch: its feed, the model's outputs on it, and the captured activations."""

    feed: Feed
    outputs: Feed
    activations: Feed

    @property
    def nbytes(self) -> int:
        """Bytes of the captured arrays (the feed's included)."""
        return sum(np.asarray(array).nbytes for array in self.activations.values())


class Trials:
    """One weight's sub-graph, opened once: runs it with the weight replaced."""

    def __init__(self, owner: WeightOverrides, weight: str, session: Any) -> None:
        self.owner = owner
        self.weight = weight
        self.session = session
        self.boundary = [value.name or "" for value in owner.cuts[weight].boundary]

    def run(self, batch: Batch, array: np.ndarray) -> Feed:
        """The model's outputs on ``batch`` with the weight replaced by ``array``.

        Raises:
            RuntimeUnavailable: onnxruntime cannot run the sub-graph.
        """
        feed = {name: batch.activations[name] for name in self.boundary}
        changed = run(self.session, {**feed, self.weight: array})
        return {name: changed.get(name, batch.outputs[name]) for name in self.owner.outputs}


class WeightOverrides:
    """Runs ``model`` with one of the named main-graph weights replaced, on that weight's sub-graph.

    Meant to be used weight by weight (:meth:`trials`, then every batch of :meth:`batches`), so
    one sub-graph session is alive at a time. The captured batches are kept while they fit in
    ``cache_bytes`` together; past that they are captured again for each weight.

    Args:
        context: Where sessions come from (the user's provider).
        model: The model; never changed.
        weights: Names of main-graph initializers that trials replace.
        feeds: The calibration feeds, read once by the caller (batches of samples).
        cache_bytes: The most captured activation bytes kept between weights.
    """

    def __init__(
        self,
        context: PassContext,
        model: ir.Model,
        weights: Sequence[str],
        feeds: Sequence[Feed],
        *,
        cache_bytes: int = 1 << 30,
    ) -> None:
        self.context = context
        self.model = model
        self.feeds = feeds
        self.cuts = {name: cut(model.graph, [name]) for name in weights}
        captured = {
            value.name: None
            for part in self.cuts.values()
            for value in part.boundary
            if value.producer() is not None and value.name
        }
        self.outputs = [value.name for value in model.graph.outputs if value.name]
        names = list(dict.fromkeys([*self.outputs, *captured]))
        self._capture = context.session(exposed(model, names))[0]
        self._cache_bytes = cache_bytes
        self._cache: list[Batch] | None = None
        self._types: Feed = {}

    def batches(self) -> Iterator[Batch]:
        """Each calibration batch with the model's outputs and every activation a trial reads."""
        if self._cache is not None:
            yield from self._cache
            return
        kept: list[Batch] | None = []
        total = 0
        for feed in self.feeds:
            arrays = run(self._capture, feed)
            batch = Batch(feed, {name: arrays[name] for name in self.outputs}, {**feed, **arrays})
            if not self._types:
                self._types = {name: np.asarray(array)[:0] for name, array in batch.activations.items()}
            total += batch.nbytes
            if kept is not None:
                kept = [*kept, batch] if total <= self._cache_bytes else None
            yield batch
        self._cache = kept

    def trials(self, weight: str) -> Trials:
        """Opens the sub-graph of ``weight`` (after a first batch was captured, which gives its input types).

        Raises:
            RuntimeUnavailable: onnxruntime cannot load the sub-graph.
        """
        if not self._types:
            next(iter(self.batches()), None)
        sub = subgraph_model(self.model, weight, self._types)
        return Trials(self, weight, self.context.session(sub)[0])
