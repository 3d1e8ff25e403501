"""``cleanup`` rules on activations written out op by op: hard-sigmoid and hard-swish.

Exporters such as paddle2onnx write MobileNetV3's hard-swish as ``x * Clip(x + 3, 0, 6) / 6``
(four nodes, each a pass over the tensor) and its hard-sigmoid as ``Clip(x + 3, 0, 6) / 6``.
onnxruntime has one kernel for each and does not fuse the written-out forms itself:

- ``Clip(x + 3, 0, 6) / 6`` (or ``* (1/6)``) becomes ``HardSigmoid(x, alpha=1/6, beta=0.5)``;
- ``x * Clip(x + 3, 0, 6) / 6``, in any order of the two products, becomes ``HardSwish(x)`` from
  opset 14, and ``x * HardSigmoid(x)`` below it (the model's opset is kept);
- ``x * HardSigmoid(x, alpha=1/6, beta=0.5)`` becomes ``HardSwish(x)`` from opset 14.

The results equal the written-out forms up to float rounding (one ulp of the scaling). Only
float32 tensors are rewritten (onnxruntime's CPU kernels), and only where every intermediate
value feeds the pattern alone, so no node is computed twice.
"""

from __future__ import annotations

import onnx_ir as ir

from onnxshrink.ir.activations import SIXTH, times_hard_sigmoid
from onnxshrink.passes.cleanup.rules import (
    RULES,
    Decision,
    FormHardSwish,
    NoMatch,
    Replace,
    RuleContext,
    feeds_only,
    keeps_shape,
    producer,
    unknown,
)

_HARD_SIGMOID = (ir.AttrFloat32("alpha", SIXTH), ir.AttrFloat32("beta", 0.5))


def _is(value: ir.Value | None, number: float, context: RuleContext) -> bool:
    """A one-element float constant equal to ``number`` (whether it keeps x's rank is checked apart)."""
    array = context.facts.constant(value, max_elements=1)
    return array is not None and array.size == 1 and array.dtype.kind == "f" and float(array.reshape(-1)[0]) == number


def _scaled_by_sixth(node: ir.Node, context: RuleContext) -> tuple[ir.Value, ir.Value] | None:
    """``(v, scale)`` when ``node`` is ``Div(v, 6)`` or ``Mul(v, 1/6)`` (either order), ``scale`` one element."""
    if len(node.inputs) != 2:
        return None
    first, second = node.inputs
    if first is None or second is None:
        return None
    if node.op_type == "Div":
        return (first, second) if _is(second, 6.0, context) else None
    for value, scale in ((first, second), (second, first)):
        if _is(scale, SIXTH, context):
            return value, scale
    return None


def _relu6_of_x_plus_3(value: ir.Value | None, context: RuleContext) -> tuple[ir.Value, ir.Value] | None:
    """``(x, three)`` when ``value`` is ``Clip(x + 3, 0, 6)`` (bounds as inputs or, before opset 11, attributes)."""
    clip = producer(value, "Clip")
    if clip is None or value is None or not feeds_only(value) or not clip.inputs:
        return None
    if len(clip.inputs) == 3:
        bounds_ok = _is(clip.inputs[1], 0.0, context) and _is(clip.inputs[2], 6.0, context)
    else:
        low, high = clip.attributes.get("min"), clip.attributes.get("max")
        bounds_ok = len(clip.inputs) == 1 and low is not None and high is not None
        bounds_ok = bounds_ok and low.value == 0.0 and high.value == 6.0  # type: ignore[union-attr]
    shifted = clip.inputs[0]
    add = producer(shifted, "Add")
    if not bounds_ok or add is None or shifted is None or not feeds_only(shifted) or len(add.inputs) != 2:
        return None
    for x, three in ((add.inputs[0], add.inputs[1]), (add.inputs[1], add.inputs[0])):
        if x is not None and three is not None and _is(three, 3.0, context) and not context.facts.is_constant(x):
            return x, three
    return None


def _float32_keeping_shape(x: ir.Value, constants: tuple[ir.Value, ...], context: RuleContext) -> NoMatch | None:
    """None when ``x`` is float32 and no one-element constant broadcasts it to a higher rank."""
    dtype = context.facts.dtype(x)
    if dtype is None:
        return unknown("dtype of x")
    if dtype != ir.DataType.FLOAT:
        return NoMatch(f"x is {dtype}: only float32 is rewritten")
    dims = context.facts.dims(x)
    for constant in constants:
        shape = context.facts.static_dims(constant)
        if shape is None or not keeps_shape(dims, shape):
            return NoMatch("a constant could raise the rank of x") if dims is not None else unknown("rank of x")
    return None


@RULES.register("Div", "Mul", since=6)
def hard_sigmoid_or_swish(node: ir.Node, context: RuleContext) -> Decision | NoMatch:
    """``Clip(x + 3, 0, 6) / 6`` -> HardSigmoid; ``(x * Clip(x + 3, 0, 6)) / 6`` -> hard-swish."""
    found = _scaled_by_sixth(node, context)
    if found is None:
        return NoMatch("not a division by 6")
    scaled, scale = found
    relu6 = _relu6_of_x_plus_3(scaled, context)
    if relu6 is not None:
        x, three = relu6
        failed = _float32_keeping_shape(x, (scale, three), context)
        return failed or Replace("HardSigmoid", (x,), _HARD_SIGMOID, "hardsigmoid_formed")
    product = producer(scaled, "Mul")
    if product is None or not feeds_only(scaled) or len(product.inputs) != 2:
        return NoMatch("not Clip(x + 3, 0, 6) or x times it")
    for clipped, other in (product.inputs, tuple(reversed(product.inputs))):
        relu6 = _relu6_of_x_plus_3(clipped, context)
        if relu6 is not None and relu6[0] is other:
            failed = _float32_keeping_shape(relu6[0], (scale, relu6[1]), context)
            return failed or FormHardSwish(relu6[0], fused=context.opset >= 14)
    return NoMatch("not Clip(x + 3, 0, 6) or x times it")


@RULES.register("Mul", since=14)
def hard_swish_of_hard_sigmoid(node: ir.Node, context: RuleContext) -> Decision | NoMatch:
    """``x * HardSigmoid(x, alpha=1/6, beta=0.5)`` -> ``HardSwish(x)``."""
    found = times_hard_sigmoid(node)
    if found is None:
        return NoMatch("not x * HardSigmoid(x, 1/6, 0.5)")
    x = found[0]
    return _float32_keeping_shape(x, (), context) or Replace("HardSwish", (x,), (), "hardswish_formed")
