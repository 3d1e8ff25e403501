"""Quantizing inside If/Loop/Scan bodies: the scopes placement visits, and body values for calibration.

onnxruntime runs the Q/DQ fusions inside control-flow bodies as in the main graph, so each body
is placed like a graph of its own; its node keys start with the path of the node holding it
(``If_0/then_branch/<node>``). Calibration cannot ask a session for a value inside a body, so
:func:`exposing_bodies` writes a copy of the model that carries each wanted body value out to the
main graph: as an extra output of both If branches (the branch that holds it outputs it, the
other an empty tensor, so a branch no sample took gives no statistics) and as an extra scan
output of a Loop or Scan body (every iteration's value, stacked).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection

import numpy as np
import onnx_ir as ir

from onnxshrink.ir.constants import is_constant
from onnxshrink.ir.graphs import fresh_name, is_onnx_op, take_over_output, taken_names
from onnxshrink.passes.quantize.plan import ADDED_NODE, GraphView

CONTROL_FLOW = ("If", "Loop", "Scan")
_GRAPH_ATTRIBUTES = {"If": ("then_branch", "else_branch"), "Loop": ("body",), "Scan": ("body",)}


@dataclasses.dataclass(frozen=True)
class Scope:
    """The main graph or one control-flow body, with the prefix of its node keys (``""`` for the main graph)."""

    graph: ir.Graph
    prefix: str
    in_loop: bool = False  # inside a Loop or Scan body (at any depth)


def control_flow_scopes(model: ir.Model) -> list[Scope]:
    """The main graph, then every If/Loop/Scan body under it (parents first).

    Graphs held by other ops (custom domains) and function bodies are not scopes: their layers
    stay float.
    """
    scopes = [Scope(model.graph, "")]

    def visit(graph: ir.Graph, prefix: str, in_loop: bool) -> None:
        for key, node in GraphView(graph, prefix).nodes.items():
            if not is_onnx_op(node, *CONTROL_FLOW):
                continue
            for attribute in _GRAPH_ATTRIBUTES[node.op_type]:
                attr = node.attributes.get(attribute)
                if attr is None or attr.is_ref() or attr.type != ir.AttributeType.GRAPH:
                    continue
                body = attr.as_graph()
                looped = in_loop or node.op_type != "If"
                scopes.append(Scope(body, f"{key}/{attribute}/", looped))
                visit(body, f"{key}/{attribute}/", looped)

    visit(model.graph, "", False)
    return scopes


def _scope_values(graph: ir.Graph) -> list[ir.Value]:
    return [*graph.inputs, *(output for node in graph for output in node.outputs)]


def unique_value_names(model: ir.Model) -> int:
    """Renames body values whose name another scope uses already (sibling bodies may repeat names).

    Placement and calibration name tensors by name across the whole model. The main graph keeps
    every name; body values are internal, so renaming them keeps the function. Returns the count.
    """
    seen: set[str] = set(model.graph.initializers)
    taken = taken_names(model)
    renamed = 0
    for scope in control_flow_scopes(model):
        seen.update(name for name in scope.graph.initializers if scope.prefix)
        for value in _scope_values(scope.graph):
            if not value.name:
                continue
            if value.name in seen and scope.prefix:
                value.name = fresh_name(taken, value.name)
                renamed += 1
            seen.add(value.name)
    return renamed


def read_outer_values_locally(model: ir.Model, layer_ops: tuple[str, ...]) -> int:
    """Gives each body layer that reads an enclosing graph's activation a local Identity of it.

    The Q→DQ before a layer must sit in the layer's own body for onnxruntime to fuse them; an
    Identity makes the activation a value of that body. Returns the number of Identity nodes.
    """
    added = 0
    taken = taken_names(model)
    for scope in control_flow_scopes(model)[1:]:
        graph = scope.graph
        local: dict[int, ir.Value] = {}
        for node in list(graph):
            if not is_onnx_op(node, *layer_ops):
                continue
            for index, value in enumerate(node.inputs[:2]):
                if value is None or is_constant(value) or value.graph is graph or not value.name:
                    continue
                if id(value) not in local:
                    identity = ir.node("Identity", [value], name=fresh_name(taken, f"{value.name}_local"))
                    identity.outputs[0].name = fresh_name(taken, f"{value.name}_local")
                    identity.outputs[0].type = value.type
                    identity.outputs[0].shape = value.shape
                    identity.meta[ADDED_NODE] = True
                    graph.insert_before(next(iter(graph)), identity)
                    local[id(value)] = identity.outputs[0]
                    added += 1
                node.replace_input_with(index, local[id(value)])
    return added


def body_value_names(model: ir.Model, *, loops_only: bool = False) -> set[str]:
    """Names of the values defined inside control-flow bodies (not reachable as main-graph outputs).

    With ``loops_only``, only those inside a Loop or Scan body (at any depth).
    """
    return {
        v.name
        for scope in control_flow_scopes(model)[1:]
        if scope.in_loop or not loops_only
        for v in _scope_values(scope.graph)
        if v.name
    }


def exposing_bodies(model: ir.Model, names: Collection[str]) -> tuple[ir.Model, dict[str, str]]:
    """A copy of ``model`` whose main graph holds a value for each named body value.

    Returns:
        The copy, and for each named body value, the main-graph value that carries it out (an
        output of the outermost If/Loop/Scan around it).
    """
    copy = model.clone()
    wanted = set(names)
    taken = taken_names(copy)

    def carry(body: ir.Graph, local: ir.Value | None, name: str, dtype: ir.DataType) -> None:
        """Appends ``local`` to the body's outputs (through an Identity), or an empty tensor when None."""
        if local is not None:
            node = ir.node("Identity", [local], name=fresh_name(taken, f"{name}_exposed"))
        else:  # the other If branch: the same output, with no value in it
            empty = ir.tensor(np.zeros(0, dtype=dtype.numpy()))
            node = ir.node("Constant", [], attributes={"value": empty}, name=fresh_name(taken, f"{name}_not_run"))
        node.outputs[0].name = fresh_name(taken, node.name or name)
        node.outputs[0].type = ir.TensorType(dtype)
        body.append(node)
        body.outputs.append(node.outputs[0])

    def visit(graph: ir.Graph) -> dict[str, ir.Value]:
        found = {v.name: v for v in _scope_values(graph) if v.name in wanted}
        for node in list(graph):
            if not is_onnx_op(node, *CONTROL_FLOW):
                continue
            attributes = [node.attributes.get(a) for a in _GRAPH_ATTRIBUTES[node.op_type]]
            bodies = [a.as_graph() for a in attributes if a is not None and not a.is_ref()]
            extra: list[tuple[str, ir.DataType]] = []
            for position, carried in enumerate([visit(body) for body in bodies]):
                for name, local in carried.items():
                    dtype = local.dtype if local.dtype is not None else ir.DataType.FLOAT
                    for other, body in enumerate(bodies):
                        carry(body, local if other == position else None, name, dtype)
                    extra.append((name, dtype))
            if extra:
                found.update(_with_outputs(graph, node, extra, taken))
        return found

    carried = {name: value.name or "" for name, value in visit(copy.graph).items() if value.graph is not None}
    return copy, {name: outer for name, outer in carried.items() if name != outer}


def _with_outputs(
    graph: ir.Graph, node: ir.Node, extra: list[tuple[str, ir.DataType]], taken: set[str]
) -> dict[str, ir.Value]:
    """Replaces ``node`` by a copy with one more output per ``extra`` entry (its bodies gained them)."""
    attributes = list(node.attributes.values())
    if node.op_type == "Scan":  # the new scan outputs are stacked along axis 0, forwards
        for key in ("scan_output_axes", "scan_output_directions"):
            if key in node.attributes:
                ints = [*node.attributes[key].as_ints(), *([0] * len(extra))]
                attributes = [a for a in attributes if a.name != key] + [ir.AttrInt64s(key, ints)]
    copy = ir.Node(
        node.domain,
        node.op_type,
        list(node.inputs),
        attributes,
        num_outputs=len(node.outputs) + len(extra),
        name=node.name,
        version=node.version,
    )
    graph.insert_after(node, copy)
    for old, new in zip(node.outputs, copy.outputs, strict=False):
        take_over_output(old, new)
    graph.remove(node, safe=True)
    added: dict[str, ir.Value] = {}
    for (name, dtype), value in zip(extra, copy.outputs[len(node.outputs) :], strict=True):
        value.name = fresh_name(taken, f"{name}_carried")
        value.type = ir.TensorType(dtype)
        added[name] = value
    return added
