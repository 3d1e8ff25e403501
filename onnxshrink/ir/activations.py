"""Hard-swish in one kernel: the nodes ``cleanup`` fuses to and ``quantize`` fuses back to.

``HardSwish(x)`` exists from opset 14; below it, ``x * HardSigmoid(x, alpha=1/6, beta=0.5)`` is the
same function in two nodes. Both equal the written-out ``x * Clip(x + 3, 0, 6) / 6`` up to float
rounding.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onnxshrink.ir.graphs import is_onnx_op

SIXTH = float(np.float32(1.0) / np.float32(6.0))
"""``1/6`` as float32 holds it: HardSigmoid's ``alpha`` for hard-swish, and the ``* (1/6)`` it may be written with."""


def is_sixth_hard_sigmoid(node: ir.Node) -> bool:
    """True when ``node``'s attributes are hard-swish's gate: ``alpha = 1/6``, ``beta = 0.5``."""
    alpha, beta = node.attributes.get("alpha"), node.attributes.get("beta")
    return alpha is not None and beta is not None and alpha.value == SIXTH and beta.value == 0.5


def times_hard_sigmoid(node: ir.Node) -> tuple[ir.Value, ir.Node] | None:
    """``(x, gate)`` when ``node`` is ``Mul(x, HardSigmoid(x, 1/6, 0.5))`` (either order) and reads the gate alone.

    The gate's output must have no other use and not be a graph output: fusing then removes it.
    """
    if not is_onnx_op(node, "Mul") or len(node.inputs) != 2:
        return None
    for gate_value, x in (node.inputs, tuple(reversed(node.inputs))):
        gate = gate_value.producer() if gate_value is not None else None
        if gate is None or gate_value is None or x is None or not is_onnx_op(gate, "HardSigmoid"):
            continue
        alone = len(gate_value.uses()) == 1 and not gate_value.is_graph_output()
        if alone and gate.inputs and gate.inputs[0] is x and is_sixth_hard_sigmoid(gate):
            return x, gate
    return None


def hard_swish_nodes(x: ir.Value, *, fused: bool, name: str | None, gate_name: str | None = None) -> list[ir.Node]:
    """The nodes computing hard-swish of ``x``, the last one producing it and named ``name``.

    Args:
        x: The input.
        fused: ``HardSwish`` (opset 14 on); else ``HardSigmoid`` named ``gate_name``, then ``Mul``.
        name: The last node's name.
        gate_name: The HardSigmoid's name when not ``fused``.
    """
    if fused:
        return [ir.node("HardSwish", [x], name=name)]
    attributes = {"alpha": ir.AttrFloat32("alpha", SIXTH), "beta": ir.AttrFloat32("beta", 0.5)}
    gate = ir.node("HardSigmoid", [x], attributes=attributes, name=gate_name)
    return [gate, ir.node("Mul", [x, gate.outputs[0]], name=name)]
