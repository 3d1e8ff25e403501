"""Invariants checked after every pass (torch.fx ``Graph.lint()`` style).

Cheap checks (always): topological order, one producer per value, no dangling uses, unique
value names per scope, graph outputs defined. Full checks add the ONNX checker.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import onnx_ir as ir

from onnxshrink.graphs import all_tensors, count_bytes, subgraphs_of

_IN_MEMORY_CHECK_LIMIT = 1 << 30


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
    # Serializing in memory past ~1 GiB of weights costs as much as the model; saving runs the
    # checker on the written file instead.
    # External tensors resolve only next to the model file: saving checks those by path.
    in_memory = not any(isinstance(t, ir.ExternalTensor) for t in all_tensors(model))
    if full and not problems and in_memory and count_bytes(model) < _IN_MEMORY_CHECK_LIMIT:
        problem = onnx_checker_problem(ir.serde.serialize_model(model))
        if problem:
            problems.append(f"ONNX checker: {problem}")
    return problems
