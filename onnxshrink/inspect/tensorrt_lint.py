"""``onnxshrink inspect --lint tensorrt``: TensorRT's ONNX-parser rules for Q/DQ nodes.

Violations of these rules make TensorRT's parser refuse the model (see the TensorRT target in
``docs/quantization.md``; the rules come from onnx-tensorrt's QDQ importer). Each QuantizeLinear /
DequantizeLinear node is checked for:

1. ``dtype``: the quantized type is INT8, INT4, FP8 (E4M3FN) or FP4 (E2M1). ``uint8``: UINT8 is
   only accepted for DLA; elsewhere TensorRT re-reads the zero point as INT8.
2. ``int32-dequantize``: a DequantizeLinear of an INT32 tensor (a quantized bias) is rejected;
   keep biases float.
3. ``zero-point``: the zero point must be all zeros (symmetric quantization), and
   ``zero-point-constant``: a constant, so the parser can see that it is.
4. ``zero-point-volume``: the zero point holds as many elements as the scale.
5. ``scale-constant``, ``scale-positive``, ``scale-finite``: scales are constants, > 0, finite.
6. ``per-channel-scale``: a per-channel scale is 1-D with length ``input.dims[axis]``.
7. ``block-shape``: a block-quantized scale has the input's rank and differs from the input's
   shape only along ``axis``, where it holds ``ceil(dims[axis] / block_size)``; ``block-dtype``:
   TensorRT block-quantizes INT4/FP4 (weight-only) tensors only.
8. ``int4-even``: an INT4/FP4 constant holds an even number of elements.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping

import numpy as np
import onnx_ir as ir

from onnxshrink.ir.constants import constant_array
from onnxshrink.ir.graphs import all_nodes, is_onnx_op

_ALLOWED = {ir.DataType.INT8, ir.DataType.INT4, ir.DataType.FLOAT8E4M3FN, ir.DataType.FLOAT4E2M1}
_FOUR_BIT = {ir.DataType.INT4, ir.DataType.UINT4, ir.DataType.FLOAT4E2M1}
_QDQ = ("QuantizeLinear", "DequantizeLinear")


@dataclasses.dataclass(frozen=True)
class LintFinding:
    """One rule one node breaks."""

    node: str
    op: str
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.node} ({self.op}): [{self.rule}] {self.message}"


def _label(node: ir.Node) -> str:
    return node.name or f"{node.op_type}->{node.outputs[0].name}"


def _input(node: ir.Node, index: int) -> ir.Value | None:
    return node.inputs[index] if len(node.inputs) > index else None


def _quantized_dtype(node: ir.Node) -> ir.DataType | None:
    """The integer/FP8 side's element type: Q's output, DQ's input."""
    zero_point = _input(node, 2)
    if node.op_type == "QuantizeLinear":
        output_dtype = node.attributes.get_int("output_dtype", 0)
        if output_dtype:
            return ir.DataType(output_dtype)
        if zero_point is not None and zero_point.dtype is not None:
            return zero_point.dtype
        return ir.DataType.UINT8  # the ONNX default without a zero point
    data = node.inputs[0]
    if data is not None and data.dtype is not None:
        return data.dtype
    producer = data.producer() if data is not None else None
    if producer is not None and is_onnx_op(producer, "QuantizeLinear"):
        return _quantized_dtype(producer)
    return zero_point.dtype if zero_point is not None else None


def _dims(value: ir.Value | None, shapes: Mapping[str, tuple[int, ...]]) -> tuple[int, ...] | None:
    if value is None:
        return None
    tensor = ir.convenience.get_const_tensor(value)
    if tensor is not None:
        return tuple(tensor.shape.numpy())
    if value.shape is not None:
        dims = [d for d in value.shape if isinstance(d, int)]
        if len(dims) == len(value.shape):
            return tuple(dims)
    return shapes.get(value.name or "")


def _check_dtype(dtype: ir.DataType | None) -> Iterator[tuple[str, str]]:
    if dtype is None or dtype in _ALLOWED:
        return
    if dtype == ir.DataType.UINT8:
        yield "uint8", "UINT8 is accepted only for DLA; elsewhere TensorRT re-reads it as INT8 (use INT8, zero point 0)"
    elif dtype == ir.DataType.INT32:
        yield "int32-dequantize", "INT32 DequantizeLinear (a quantized bias) is rejected; keep the bias float"
    else:
        yield "dtype", f"quantized type {dtype.name} is not supported; use INT8, INT4, FP8 (E4M3FN) or FP4"


def _check_zero_point(node: ir.Node, scale: np.ndarray | None) -> Iterator[tuple[str, str]]:
    value = _input(node, 2)
    if value is None:
        return
    zero_point = constant_array(value)
    if zero_point is None:
        yield "zero-point-constant", f"zero point '{value.name}' is not a constant"
        return
    nonzero = int(np.count_nonzero(zero_point.astype(np.float64)))
    if nonzero:
        yield "zero-point", f"zero point '{value.name}' has {nonzero} non-zero values; TensorRT needs all zeros"
    if scale is not None and zero_point.size != scale.size:
        yield (
            "zero-point-volume",
            f"zero point '{value.name}' has {zero_point.size} elements, the scale {scale.size}",
        )


def _check_scale(node: ir.Node, scale: np.ndarray | None) -> Iterator[tuple[str, str]]:
    value = node.inputs[1]
    if scale is None:
        yield "scale-constant", f"scale '{value.name if value else ''}' is not a constant"
        return
    values = scale.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.all():
        yield "scale-finite", f"scale '{value.name if value else ''}' has {int((~finite).sum())} NaN/inf values"
    if (values[finite] <= 0).any():
        yield (
            "scale-positive",
            f"scale '{value.name if value else ''}' has {int((values[finite] <= 0).sum())} values <= 0",
        )


def _check_granularity(
    node: ir.Node, scale: np.ndarray, dtype: ir.DataType | None, shapes: Mapping[str, tuple[int, ...]]
) -> Iterator[tuple[str, str]]:
    block_size = node.attributes.get_int("block_size", 0)
    dims = _dims(node.inputs[0], shapes)
    if block_size <= 0 and scale.size <= 1:
        return  # per tensor
    if block_size <= 0 and scale.ndim != 1:
        yield "per-channel-scale", f"per-channel scale must be 1-D, got shape {list(scale.shape)}"
        return
    if dims is None:
        return  # input shape unknown: nothing to compare with
    axis = node.attributes.get_int("axis", 1)
    if not -len(dims) <= axis < len(dims):
        yield "per-channel-scale", f"axis {axis} is outside the input's rank {len(dims)}"
        return
    axis %= len(dims)
    if block_size <= 0:
        if scale.shape[0] != dims[axis]:
            yield (
                "per-channel-scale",
                f"per-channel scale has {scale.shape[0]} values but input dim {axis} is {dims[axis]}",
            )
        return
    if dtype not in _FOUR_BIT:
        yield "block-dtype", f"block quantization of {dtype.name if dtype else 'this type'}; TensorRT blocks INT4/FP4"
    want = tuple(math.ceil(d / block_size) if i == axis else d for i, d in enumerate(dims))
    if tuple(scale.shape) != want:
        yield (
            "block-shape",
            f"block scale shape {list(scale.shape)} for input {list(dims)}, axis {axis}, block_size {block_size}; "
            f"expected {list(want)}",
        )


def _check_four_bit(node: ir.Node, dtype: ir.DataType | None) -> Iterator[tuple[str, str]]:
    if dtype not in _FOUR_BIT or node.op_type != "DequantizeLinear":
        return
    tensor = ir.convenience.get_const_tensor(node.inputs[0]) if node.inputs[0] is not None else None
    if tensor is not None and tensor.size % 2:
        yield "int4-even", f"{dtype.name} tensor holds an odd number of elements ({tensor.size})"


def lint_tensorrt(model: ir.Model, shapes: Mapping[str, tuple[int, ...]] | None = None) -> list[LintFinding]:
    """The TensorRT parser rules each Q/DQ node breaks, in graph order (empty: importable).

    Args:
        model: The model; every graph, subgraph and function is checked.
        shapes: Inferred static shapes by value name, for the per-channel and block rules where
            a Q/DQ input is not a constant (see :func:`onnxshrink.inspect.summary.value_shapes`).
    """
    shapes = shapes or {}
    findings: list[LintFinding] = []
    for node in all_nodes(model):
        if not is_onnx_op(node, *_QDQ) or len(node.inputs) < 2:
            continue
        dtype = _quantized_dtype(node)
        scale = constant_array(node.inputs[1])
        rules = [*_check_dtype(dtype), *_check_scale(node, scale), *_check_zero_point(node, scale)]
        if scale is not None:
            rules.extend(_check_granularity(node, scale, dtype, shapes))
        rules.extend(_check_four_bit(node, dtype))
        findings.extend(LintFinding(_label(node), node.op_type, rule, message) for rule, message in rules)
    return findings
