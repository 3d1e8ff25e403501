"""The channel walk: layouts propagated through the main graph, and the shape reasoning it needs.

:class:`ChannelWalker` visits the main graph in topological order, dispatches each node to its rule
in an ``OpTable`` of channel rules (by domain, op type and the graph's opset) and records every
:class:`Site`; it is the :class:`~onnxshrink.passes.channels.ruleset.ChannelWalk` the rules see.
:func:`inferred_shapes` and :func:`shape_element` recover the dims the rules read when declared
shapes lack them (computed Reshape targets, Expand-ed attention masks).
:func:`onnxshrink.passes.channels.analysis.analyze` runs the walk and groups its sites.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxshrink.ir.constants import constant_array
from onnxshrink.ir.graphs import is_onnx_op, opset_version, subgraphs_of
from onnxshrink.ir.optable import OpTable
from onnxshrink.ir.shapes import inferred_copy
from onnxshrink.passbase import NoMatch
from onnxshrink.passes.channels.ruleset import ChannelRule
from onnxshrink.passes.channels.types import Atoms, Dim, Layout, Purpose, Site, node_name

PRODUCERS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
"""The ops that mint channels (with a constant weight)."""

# Ops whose output dim is 1 wherever all their inputs' dims are (broadcasting or elementwise).
_BROADCASTING = frozenset(
    (
        *("Add", "Sub", "Mul", "Div", "Where", "Equal", "Less", "Greater", "And", "Or", "Not", "Cast", "Neg"),
        *("Max", "Min", "Pow", "Sqrt", "Exp", "Identity"),
    )
)


def shape_element(walker: ChannelWalker, value: ir.Value | None, index: int, depth: int) -> Dim:
    """Returns element ``index`` of a small integer tensor (a shape being computed), when provably known.

    A known element is an int, or the symbol of an inferred dim it reads through Shape and Gather;
    anything else is None.
    """
    if value is None or depth == 0:
        return None
    array = constant_array(value)
    if array is not None:
        flat = array.reshape(-1)
        return int(flat[index if flat.size > 1 else 0]) if flat.size else None
    node = value.producer()
    if node is None or not is_onnx_op(node):
        return None
    op, inputs = node.op_type, node.inputs
    if op == "Concat":
        start = 0
        for part in inputs:
            shape = walker.shape(part)
            length = shape[0] if shape is not None and len(shape) == 1 else None
            if not isinstance(length, int):
                return None
            if index < start + length:
                return shape_element(walker, part, index - start, depth - 1)
            start += length
        return None
    if op in ("Unsqueeze", "Cast", "Identity", "Squeeze"):
        return shape_element(walker, inputs[0], index, depth - 1)
    if op == "Gather" and inputs[0] is not None and inputs[0].producer() is not None:
        shape_node = inputs[0].producer()
        position = shape_element(walker, inputs[1], index, depth - 1)
        position = position if isinstance(position, int) else None
        if shape_node is None or shape_node.op_type != "Shape" or position is None or shape_node.attributes:
            return None
        dims = walker.shape(shape_node.inputs[0])
        inside = dims is not None and isinstance(position, int) and -len(dims) <= position < len(dims)
        return dims[position] if dims is not None and isinstance(position, int) and inside else None
    if op == "ConstantOfShape":
        fill = node.attributes.get("value")
        return int(fill.as_tensor().numpy().reshape(-1)[0]) if fill is not None else 0
    parts = [shape_element(walker, v, index, depth - 1) for v in inputs]
    if op == "Where":
        if isinstance(parts[0], int):
            return parts[1] if parts[0] else parts[2]
        return parts[1] if parts[1] is not None and parts[1] == parts[2] else None
    if len(parts) != 2 or not all(isinstance(p, int) for p in parts):
        return None
    a, b = (int(p) for p in parts if isinstance(p, int))
    table = {"Equal": int(a == b), "Add": a + b, "Sub": a - b, "Mul": a * b}
    return table.get(op)


def inferred_shapes(model: ir.Model) -> dict[str, list[Dim]]:
    """Shapes by value name from onnx shape inference on a weightless copy (the model is untouched)."""
    proto = inferred_copy(model, purpose="channel analysis")
    if proto is None:
        return {}
    shapes: dict[str, list[Dim]] = {}
    for info in [*proto.graph.value_info, *proto.graph.output, *proto.graph.input]:
        if not info.type.HasField("tensor_type") or not info.type.tensor_type.HasField("shape"):
            continue
        dims: list[Dim] = []
        for dim in info.type.tensor_type.shape.dim:
            if dim.HasField("dim_value"):
                dims.append(int(dim.dim_value))
            else:
                dims.append(dim.dim_param or None)
        shapes[info.name] = dims
    return shapes


def producers_outside(model: ir.Model) -> dict[str, NoMatch]:
    """Returns the producers the walk does not enter, by label, each with where it is.

    Those are the producers in subgraphs (If branches, Loop and Scan bodies) and in model-local
    functions.
    """
    found: dict[str, NoMatch] = {}

    def visit_subgraphs(node: ir.Node) -> None:
        for sub in subgraphs_of(node):
            visit(sub, f"subgraph '{sub.name}' of {node.op_type} '{node_name(node)}'")

    def visit(graph: ir.Graph | ir.Function, where: str) -> None:
        for node in graph:
            if is_onnx_op(node, *PRODUCERS):
                reason = f"inside {where}: channel groups are built for the main graph only"
                found.setdefault(f"{node.op_type} '{node_name(node)}'", NoMatch(reason))
            visit_subgraphs(node)

    for node in model.graph:
        visit_subgraphs(node)
    for function in model.functions.values():
        visit(function, f"model-local function '{function.domain}::{function.name}'")
    return found


class ChannelWalker:
    """Propagates layouts through the main graph and records every site (see :class:`Site`).

    Args:
        model: The model whose main graph is walked (nothing in it changes).
        purpose: What the plan is for; rules refuse lossy ops only for ``remove``.
        rules: The per-op rules, looked up by the graph's default-domain opset.
        shapes: Inferred shapes by value name (:func:`inferred_shapes`).
        heads: Producers (by node id) that mint one atom per attention head of this many channels.
    """

    def __init__(
        self,
        model: ir.Model,
        purpose: Purpose,
        rules: OpTable[ChannelRule],
        shapes: Mapping[str, list[Dim]],
        heads: Mapping[int, int],
    ) -> None:
        self.graph = model.graph
        self.opset = opset_version(model)
        self.purpose = purpose
        self.rules = rules
        self.atoms = Atoms()
        self.layouts: dict[ir.Value, Layout] = {}
        self.sites: list[Site] = []
        self.shapes = shapes
        # Attention: a producer whose channels a Reshape splits into (heads, d) mints one atom per
        # head spanning d channels (``heads``: producer node id -> d), found by a first walk.
        self.heads = heads
        self.owner: dict[int, ir.Node] = {}
        self.head_requests: dict[int, int] = {}

    def run(self) -> None:
        """Walks the graph once: every node's rule, then the values' sites and what refuses them."""
        for node in self.graph:
            ins = [self.layouts.get(v) if v is not None else None for v in node.inputs]
            if not any(ins) and node.op_type not in PRODUCERS:
                continue
            if not is_onnx_op(node):
                self.kill_all(ins, NoMatch(f"custom op {node.domain}::{node.op_type} '{node_name(node)}'"))
                continue
            rule = self.rules.lookup(node, self.opset)
            if rule is None:
                self.kill_all(ins, NoMatch(f"{node.op_type} '{node_name(node)}' has no channel rule"))
                continue
            rule(self, node, ins)
        for value, layout in self.layouts.items():
            if value.is_graph_output():
                self.atoms.mark(layout.atoms, NoMatch(f"reaches graph output '{value.name}'"))
            inner_use = next((n for n, _ in value.uses() if n.graph is not self.graph), None)
            if inner_use is not None:
                reason = f"'{value.name}' is read inside a subgraph ({inner_use.op_type})"
                self.atoms.mark(layout.atoms, NoMatch(reason))
            self.sites.append(Site("value", None, -1, layout.axis, layout.atoms, layout.inner, value=value))

    def shape(self, value: ir.Value | None) -> list[Dim] | None:
        """The value's dims: a constant's, declared ones when all known, else inferred; None when unknown."""
        if value is None:
            return None
        array = constant_array(value)
        if array is not None:
            return list(array.shape)
        if value.shape is not None:
            dims: list[Dim] = [d if isinstance(d, int) else (d.value or None) for d in value.shape]
            if all(isinstance(d, int) for d in dims) or (value.name or "") not in self.shapes:
                return dims
        return self.shapes.get(value.name or "")

    def broadcasts(self, value: ir.Value | None, axis: int, depth: int = 12) -> bool:
        """Whether ``value`` has size 1 (or no dim) at ``axis``, counted from the end (negative).

        Shape inference loses attention masks built by ``Expand`` to a computed shape, so when the
        inferred dim is unknown this looks through Expand (its target shape evaluated element-wise
        by :func:`shape_element`) and elementwise ops, whose dim is 1 when all their inputs' is.
        """
        shape = self.shape(value)
        if value is None or shape is None:
            return False
        if -axis > len(shape) or shape[axis] == 1:
            return True
        node = value.producer()
        if node is None or depth == 0 or (shape[axis] is not None and not isinstance(shape[axis], str)):
            return False
        if is_onnx_op(node, "Expand"):
            target = self.shape(node.inputs[1])
            if target is None or len(target) != 1 or not isinstance(target[0], int) or -axis > target[0]:
                return self.broadcasts(node.inputs[0], axis, depth - 1)
            wanted = shape_element(self, node.inputs[1], target[0] + axis, depth)
            return wanted == 1 and self.broadcasts(node.inputs[0], axis, depth - 1)
        if is_onnx_op(node, *_BROADCASTING):
            return all(self.broadcasts(v, axis, depth - 1) for v in node.inputs if v is not None)
        return False

    def keeps_shape(self, target: ir.Value | None, dims: list[Dim], axis: int) -> bool:
        """Whether a computed Reshape target is ``dims[: axis + 1]`` with -1 (or 0) at ``axis``.

        Such a Reshape keeps (or, when shorter, merges the dims after ``axis`` into) the channel axis
        and stays right after the channel count changes.

        Torch's attention exports rebuild ``[B, -1, S, D]`` from Shape/Gather of other tensors;
        shape inference names their symbolic dims apart, so a symbolic element read from a tensor's
        shape is taken to match a symbolic dim (a read of a channel axis already refuses the group).
        """
        shape = self.shape(target)
        if shape is None or len(shape) != 1 or shape[0] not in (len(dims), axis + 1):
            return False
        for index, dim in enumerate(dims[: shape[0]]):
            found = shape_element(self, target, index, 12)
            if index == axis:
                if found not in (-1, 0):
                    return False
            elif found is None or (
                found != dim and found != 0 and not (isinstance(found, str) and isinstance(dim, str))
            ):
                return False
        return True

    def rank(self, value: ir.Value | None, layout: Layout | None) -> int | None:
        """The rank of a value: its layout's when it has one, else its shape's."""
        if layout is not None:
            return layout.rank
        shape = self.shape(value)
        return None if shape is None else len(shape)

    def kill(self, layout: Layout | None, reason: NoMatch) -> None:
        """Refuses the atoms of ``layout`` (nothing when None)."""
        if layout is not None:
            self.atoms.mark(layout.atoms, reason)

    def kill_all(self, ins: list[Layout | None], reason: NoMatch) -> None:
        """Refuses the atoms of every input layout."""
        for layout in ins:
            self.kill(layout, reason)

    def out(self, node: ir.Node, layout: Layout, index: int = 0) -> None:
        """Gives output ``index`` of ``node`` a layout (nothing when the node has no such output)."""
        if index < len(node.outputs):
            self.layouts[node.outputs[index]] = layout

    def site(
        self, kind: str, node: ir.Node, index: int, axis: int, atoms: np.ndarray, inner: int = 1, **extra: Any
    ) -> None:
        """Records a :class:`Site` of ``kind`` at input ``index`` of ``node``."""
        self.sites.append(Site(kind, node, index, axis, atoms, inner, extra=extra))

    def param(self, node: ir.Node, index: int, layout: Layout, out_rank: int, out_axis: int) -> bool:
        """Records a constant operand that broadcasts against the channel axis; False when it cannot."""
        array = constant_array(node.inputs[index])
        if array is None:
            return False
        aligned = out_axis - (out_rank - array.ndim)
        if aligned < 0 or array.shape[aligned] == 1:
            return True
        if array.shape[aligned] != len(layout.atoms) * layout.inner:
            return False
        self.site("param", node, index, aligned, layout.atoms, layout.inner)
        return True

    def producer(
        self, node: ir.Node, weight_axis: int, count: int, out_rank: int, bias: int | None, **extra: Any
    ) -> np.ndarray:
        """Mints atoms for a producer's output channels and records its weight and bias."""
        weight = node.inputs[1]
        reason = None
        if weight is not None and (weight.is_graph_input() or weight.is_graph_output()):
            reason = NoMatch(f"{node.op_type} '{node_name(node)}' weight '{weight.name}' is a graph input/output")
        conv_like = node.op_type in ("Conv", "ConvTranspose")
        head = 1 if conv_like else self.heads.get(id(node), 1)
        if count % head:
            head = 1
        atoms = self.atoms.new(count // head, reason)
        self.owner.update(dict.fromkeys(atoms.tolist(), node))
        self.site("producer", node, 1, weight_axis, atoms, head, **extra)
        layout = Layout(1 if conv_like else out_rank - 1, out_rank, atoms, head)
        if bias is not None and bias < len(node.inputs) and node.inputs[bias] is not None:
            ok = self.bias(node, bias, layout) if conv_like else self.param(node, bias, layout, out_rank, 1)
            if not ok:
                why = f"{node.op_type} '{node_name(node)}' bias is not a per-channel constant"
                self.atoms.mark(atoms, NoMatch(why))
        self.out(node, layout)
        return atoms

    def request_heads(self, layout: Layout, size: int) -> None:
        """Asks the producers of ``layout``'s channels to mint one atom per head of ``size`` channels."""
        self.head_requests.update(dict.fromkeys(layout.atoms.tolist(), size))

    def head_sizes(self) -> dict[int, int]:
        """Producers (by node id) that should mint heads in the next walk and are not doing so yet."""
        wanted = {self.atoms.find(atom): size for atom, size in self.head_requests.items()}
        found: dict[int, int] = {}
        for atom, node in self.owner.items():
            size = wanted.get(self.atoms.find(atom))
            if size is not None and id(node) not in self.heads:
                found.setdefault(id(node), size)
        return found

    def bias(self, node: ir.Node, index: int, layout: Layout) -> bool:
        """Records a Conv-style ``[C]`` bias; False when it is not a constant of that shape."""
        array = constant_array(node.inputs[index])
        if array is None or array.shape != (len(layout.atoms),):
            return False
        self.site("param", node, index, 0, layout.atoms)
        return True
