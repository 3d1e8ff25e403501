"""Multiply-accumulates of a model, subgraphs included.

Conv, ConvTranspose, Gemm, MatMul, their integer forms and MatMulNBits are counted from inferred shapes.
Control flow is counted so that a reader can check it:

1. **If**: each branch is counted and listed; the total takes the larger branch (one runs).
2. **Loop**: the body times the trip count when the trip count is a constant, else the body
   once, with a note saying so.
3. **Scan**: the body times the length of the first scan input along its scan axis when that
   shape is known, else the body once, with a note.
4. Any other node holding a graph (SequenceMap...): the graph once.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Mapping

import onnx_ir as ir

from onnxshrink.ir.constants import constant_scalar
from onnxshrink.ir.graphs import is_onnx_op

# Op type → (index of the activation input A, index of the weight W) for MAC counting.
MAC_OPS: dict[str, tuple[int, int]] = {
    "Conv": (0, 1),
    "ConvInteger": (0, 1),
    "QLinearConv": (0, 3),
    "ConvTranspose": (0, 1),
    "Gemm": (0, 1),
    "MatMul": (0, 1),
    "MatMulInteger": (0, 1),
    "QLinearMatMul": (0, 3),
}

Shapes = Mapping[str, tuple[int, ...]]


def node_label(node: ir.Node) -> str:
    """The node's name, or ``op->first output`` for an unnamed node."""
    return node.name or f"{node.op_type}->{node.outputs[0].name if node.outputs else '?'}"


def is_matmul_nbits(node: ir.Node) -> bool:
    """Whether the node is com.microsoft MatMulNBits, a block-quantized MatMul (MACs: rows × N × K)."""
    return node.domain == "com.microsoft" and node.op_type == "MatMulNBits"


def node_macs(node: ir.Node, shape_of: Shapes) -> int | None:
    """Multiply-accumulates of one layer; None when it is no MAC op or a shape it needs is unknown.

    Conv: every output element sums C/group × kernel products, i.e. ``|Y| × prod(W.shape[1:])``
    (W is [M, C/group, k...]); ConvTranspose scatters every input element over
    ``prod(W.shape[1:])`` outputs (W is [C, M/group, k...]); Gemm/MatMul: ``|Y| × K``.
    """
    if is_matmul_nbits(node):
        # onnx shape inference does not know com.microsoft ops: the rows come from A [..., K].
        data = shape_of.get(node.inputs[0].name or "") if node.inputs and node.inputs[0] is not None else None
        n, k = node.attributes.get_int("N", 0), node.attributes.get_int("K", 0)
        return None if not data else math.prod(data[:-1]) * n * k
    if not is_onnx_op(node, *MAC_OPS):
        return None

    def get(index: int) -> tuple[int, ...] | None:
        value = node.inputs[index] if index < len(node.inputs) else None
        return None if value is None or value.name is None else shape_of.get(value.name)

    data_index, weight_index = MAC_OPS[node.op_type]
    out_value = node.outputs[0] if node.outputs else None
    out = shape_of.get(out_value.name) if out_value is not None and out_value.name else None
    data, weight = get(data_index), get(weight_index)
    op = node.op_type
    if op in ("Conv", "ConvInteger", "QLinearConv"):
        return None if out is None or weight is None else math.prod(out) * math.prod(weight[1:])
    if op == "ConvTranspose":
        return None if data is None or weight is None else math.prod(data) * math.prod(weight[1:])
    if out is None or not data:
        return None
    if op == "Gemm":
        k = data[0] if node.attributes.get_int("transA", 0) else data[-1]
        return math.prod(out) * k
    return math.prod(out) * data[-1]


@dataclasses.dataclass
class GraphMacs:
    """MACs of a graph: the total, per op type, nodes of unknown shape, and how subgraphs counted."""

    macs: int = 0
    by_op: Counter[str] = dataclasses.field(default_factory=Counter)
    unknown: int = 0
    subgraphs: list[dict[str, object]] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    def add(self, other: GraphMacs, times: int = 1) -> None:
        """Adds ``other`` counted ``times`` times (its unknown nodes and notes once)."""
        self.macs += other.macs * times
        for op, count in other.by_op.items():
            self.by_op[op] += count * times
        self.unknown += other.unknown
        self.subgraphs.extend(other.subgraphs)
        self.notes.extend(other.notes)


def _iterations(node: ir.Node, shape_of: Shapes) -> tuple[int | None, str]:
    """How many times a Loop or Scan runs its body, and what that number rests on."""
    if node.op_type == "Loop":
        trip = constant_scalar(node.inputs[0]) if node.inputs else None
        if trip is None:
            return None, "trip count not constant"
        return int(trip), "constant trip count"
    scan_inputs = node.attributes.get_int("num_scan_inputs", 0)
    axes = node.attributes.get_ints("scan_input_axes", None) or [0]
    first = node.inputs[len(node.inputs) - scan_inputs] if scan_inputs else None
    shape = shape_of.get(first.name) if first is not None and first.name else None
    if not shape:
        return None, "scan length unknown"
    return shape[axes[0] % len(shape)], "scan length"


def graph_macs(graph: ir.Graph, shape_of: Shapes, path: str = "") -> GraphMacs:
    """MACs of ``graph`` and the graphs under it, counted by the rules of this module's docstring."""
    result = GraphMacs()
    for node in graph:
        if is_onnx_op(node, *MAC_OPS) or is_matmul_nbits(node):
            macs = node_macs(node, shape_of)
            if macs is None:
                result.unknown += 1
            else:
                result.macs += macs
                result.by_op[node.op_type] += macs
            continue
        bodies = _bodies(node)
        if not bodies:
            continue
        where = f"{path}{node_label(node)}"
        counted = [(attr, graph_macs(body, shape_of, f"{where}/{attr}/")) for attr, body in bodies]
        if is_onnx_op(node, "If"):
            larger = max(counted, key=lambda item: item[1].macs)
            for attr, inner in counted:
                chosen = attr == larger[0]
                result.subgraphs.append(
                    {"graph": f"{where}/{attr}", "macs": inner.macs, "times": 1 if chosen else 0, "why": "If branch"}
                )
                if chosen:
                    result.add(inner)
                else:  # its inner listings and unknown nodes still show
                    result.subgraphs.extend(inner.subgraphs)
                    result.unknown += inner.unknown
                    result.notes.extend(inner.notes)
            continue
        for attr, inner in counted:
            times, why = _iterations(node, shape_of) if is_onnx_op(node, "Loop", "Scan") else (1, "runs once")
            if times is None:
                result.notes.append(f"{node.op_type} '{where}': {why}, body counted once")
                times = 1
            result.subgraphs.append({"graph": f"{where}/{attr}", "macs": inner.macs, "times": times, "why": why})
            result.add(inner, times)
    return result


def _bodies(node: ir.Node) -> list[tuple[str, ir.Graph]]:
    """The graphs a node holds, each with its attribute name (``body``, ``then_branch``...)."""
    bodies = []
    for name, attr in node.attributes.items():
        if attr.is_ref():
            continue
        if attr.type == ir.AttributeType.GRAPH:
            bodies.append((name, attr.as_graph()))
        elif attr.type == ir.AttributeType.GRAPHS:
            bodies.extend((f"{name}[{i}]", graph) for i, graph in enumerate(attr.as_graphs()))
    return bodies
