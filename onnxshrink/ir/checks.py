"""Invariants checked after every pass (torch.fx ``Graph.lint()`` style).

Cheap checks (always): topological order, one producer per value, no dangling uses, unique
value names per scope, graph outputs defined. Full checks add the ONNX checker.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import onnx_ir as ir

from onnxshrink.ir.graphs import subgraphs_of

_WEIGHTLESS_LIMIT = 1024  # bytes of initializer data kept inline


def _node_label(node: ir.Node) -> str:
    name = f"'{node.name}' " if node.name else ""
    return f"node {name}({node.op_type})"


class _ScopeChecker:
    def __init__(self) -> None:
        self.problems: list[str] = []

    def check(
        self,
        graph: ir.Graph | ir.Function,
        outer: set[ir.Value],
        outer_names: dict[str, ir.Value],
        where: str,
    ) -> None:
        defined = set(outer)
        names = dict(outer_names)
        own: list[ir.Value] = list(graph.inputs)
        if isinstance(graph, ir.Graph):
            own.extend(graph.initializers.values())
        for value in own:
            self._define(value, defined, names, where)
        positions = {id(node): i for i, node in enumerate(graph)}
        for index, node in enumerate(graph):
            for used in node.inputs:
                if used is None or used in defined:
                    continue
                value = used
                producer = value.producer()
                if producer is None:
                    self.problems.append(
                        f"{where}: input '{value.name}' of {_node_label(node)} is not produced by any node, "
                        "graph input or initializer (dangling)"
                    )
                elif positions.get(id(producer), -1) >= index:
                    self.problems.append(
                        f"{where}: {_node_label(node)} uses '{value.name}' before {_node_label(producer)} "
                        "produces it (not in topological order, or a cycle)"
                    )
                else:
                    self.problems.append(f"{where}: {_node_label(node)} uses '{value.name}' from outside its scope")
            for sub in subgraphs_of(node):
                self.check(sub, defined, names, f"{where} > {_node_label(node)} subgraph '{sub.name}'")
            for value in node.outputs:
                if value.producer() is not node:
                    self.problems.append(f"{where}: output '{value.name}' of {_node_label(node)} has another producer")
                if value in defined:
                    self.problems.append(f"{where}: value '{value.name}' is defined twice")
                self._define(value, defined, names, where)
        for value in graph.outputs:
            if value not in defined:
                self.problems.append(f"{where}: graph output '{value.name}' is not defined in the graph")

    def _define(self, value: ir.Value, defined: set[ir.Value], names: dict[str, ir.Value], where: str) -> None:
        defined.add(value)
        if not value.name:
            return
        other = names.get(value.name)
        if other is not None and other is not value:
            self.problems.append(f"{where}: two different values are named '{value.name}'")
        names[value.name] = value


def structural_problems(model: ir.Model) -> list[str]:
    """Every broken structural invariant of the model, one sentence each; empty when sound."""
    checker = _ScopeChecker()
    checker.check(model.graph, set(), {}, "main graph")
    for function in model.functions.values():
        checker.check(function, set(), {}, f"function '{function.domain}::{function.name}'")
    return checker.problems


def weightless_proto(model: ir.Model) -> onnx.ModelProto:
    """The model as a proto whose large initializers are plain graph inputs (type and shape only).

    What the ONNX checker and shape inference need, at a fraction of the bytes: no 2 GiB limit,
    no weight is read or copied. Small initializers stay (shape inference propagates their data).
    The IR model is left exactly as it was.
    """
    graph = model.graph
    originals = list(graph.initializers.values())
    input_count = len(graph.inputs)
    held: list[tuple[ir.Value, ir.TensorProtocol]] = []
    try:
        for value in originals:
            tensor = value.const_value
            # External tensors always go: their files resolve only next to the model.
            if tensor is None or (tensor.nbytes <= _WEIGHTLESS_LIMIT and not isinstance(tensor, ir.ExternalTensor)):
                continue
            if value.shape is None:
                value.shape = ir.Shape(tensor.shape.numpy())
            if value.type is None:
                value.type = ir.TensorType(tensor.dtype)
            held.append((value, tensor))
            assert value.name is not None
            graph.initializers.pop(value.name)
            value.const_value = None
            if value not in graph.inputs:
                graph.inputs.append(value)
        return ir.serde.serialize_model(model)
    finally:
        for value, tensor in held:
            value.const_value = tensor
        # pop() one by one: slice deletion leaves the values flagged as graph inputs (onnx-ir 1.1).
        while len(graph.inputs) > input_count:
            graph.inputs.pop()
        graph.initializers.clear()
        for value in originals:
            graph.register_initializer(value)


def onnx_checker_problem(model: onnx.ModelProto | Path) -> str | None:
    """The ONNX checker's complaint about a model proto or file (first line), or None."""
    try:
        onnx.checker.check_model(model if isinstance(model, onnx.ModelProto) else str(model))
    except onnx.checker.ValidationError as error:
        return str(error).strip().splitlines()[0]
    return None


def model_problems(model: ir.Model, *, full: bool) -> list[str]:
    """Structural problems, plus the ONNX checker's verdict when ``full``."""
    problems = structural_problems(model)
    if full and not problems:
        problem = onnx_checker_problem(weightless_proto(model))
        if problem:
            problems.append(f"ONNX checker: {problem}")
    return problems
