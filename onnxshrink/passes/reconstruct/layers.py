"""What ``reconstruct`` refits: its layers, their weights, and the values they must reproduce.

A weight is a plain constant or sits behind a DequantizeLinear; each layer's output must
reproduce a point (a value) of the input model.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import numpy as np
import onnx_ir as ir

from onnxshrink.ir.constants import constant_array, is_constant
from onnxshrink.ir.graphs import is_onnx_op
from onnxshrink.passbase import NoMatch
from onnxshrink.passes.reconstruct.segments import reads
from onnxshrink.selection import matching_pattern

LAYERS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
CONVS = ("Conv", "ConvTranspose")
# Nodes fuse-bn folds into the layer before them (the layer keeps its own output name).
_FOLDED = ("BatchNormalization", "Mul", "Add", "Sub", "Div")


class Selection(Protocol):
    """The options that choose layers (``reconstruct``'s options)."""

    @property
    def include(self) -> tuple[str, ...]:
        """Op types or node-name globs a layer must match (empty: every layer)."""
        ...

    @property
    def exclude(self) -> tuple[str, ...]:
        """Op types or node-name globs of layers never refit."""
        ...

    @property
    def bias(self) -> bool:
        """Whether biases are refit too (a layer without one gains one)."""
        ...


@dataclasses.dataclass(frozen=True)
class _Grid:
    """The integer grid of a weight behind a DequantizeLinear: ``w = (q - zero_point) · scale``."""

    values: ir.Value  # the integer initializer q
    scale: np.ndarray  # shaped to broadcast against q
    zero_point: np.ndarray
    dtype: np.dtype  # what the DequantizeLinear outputs (the scale's dtype)

    def dequantize(self) -> np.ndarray:
        return (array_of(self.values).astype(np.float64) - self.zero_point) * self.scale

    def quantize(self, weight: np.ndarray, keep: np.ndarray) -> np.ndarray:
        """``weight`` rounded onto the grid (same scale and zero point); dropped entries stay at zero."""
        dtype = array_of(self.values).dtype
        limits = np.iinfo(dtype)
        steps = np.clip(np.rint(weight / self.scale) + self.zero_point, limits.min, limits.max)
        return np.where(keep, steps, self.zero_point).astype(dtype)


def _grid(dequantize: ir.Node) -> _Grid | NoMatch:
    """The grid of a DequantizeLinear that reads constants only, or why it is not refit."""
    values, scale = dequantize.inputs[0], dequantize.inputs[1] if len(dequantize.inputs) > 1 else None
    zero_point = dequantize.inputs[2] if len(dequantize.inputs) > 2 else None
    if values is None or scale is None or values.const_value is None or not values.is_initializer():
        return NoMatch("weight comes out of a DequantizeLinear whose input is not a constant initializer")
    if values.is_graph_input() or values.is_graph_output() or len(values.uses()) > 1:
        return NoMatch(f"quantized weight '{values.name}' is a graph input or output, or read by other nodes too")
    if dequantize.attributes.get_int("block_size", 0):
        return NoMatch("blocked quantization (block_size) is not refit")
    q = values.const_value.numpy()
    if q.dtype.kind not in "iu":
        return NoMatch(f"quantized weight '{values.name}' has dtype {q.dtype}, not an integer type")
    scales, zeros = constant_array(scale), constant_array(zero_point) if zero_point is not None else np.zeros(1)
    if scales is None or zeros is None or np.any(scales == 0):
        return NoMatch("the DequantizeLinear's scale or zero point is not a constant (or a scale is 0)")
    shape = [1] * q.ndim
    if scales.size > 1:
        shape[dequantize.attributes.get_int("axis", 1) % q.ndim] = -1
    return _Grid(
        values, scales.astype(np.float64).reshape(shape), zeros.astype(np.float64).reshape(shape), scales.dtype
    )


def constant_or_dequantized(value: ir.Value) -> np.ndarray | None:
    """Returns the value's data when it is a constant or the DequantizeLinear of constants, else None.

    What counts as a constant is :mod:`onnxshrink.ir.constants`'s policy.
    """
    array = constant_array(value)
    if array is not None:
        return array
    producer = value.producer()
    if producer is not None and is_onnx_op(producer, "DequantizeLinear"):
        grid = _grid(producer) if all(v is None or is_constant(v) for v in producer.inputs) else None
        return grid.dequantize() if isinstance(grid, _Grid) else None
    return None


@dataclasses.dataclass
class Layer:
    """A refittable layer: its constant weight and bias, and how many refittable layers precede it."""

    key: str
    node: ir.Node
    weight: ir.Value
    bias: ir.Value | None  # Conv B / Gemm C as given
    fit_bias: bool
    input_name: str  # the layer input the student streams
    output_name: str  # the teacher point: the value of the input model the layer must reproduce
    grid: _Grid | None = None  # the integer grid when the weight comes out of a DequantizeLinear
    stage: int = 0

    @property
    def op(self) -> str:
        """The layer node's op type (``Conv``, ``ConvTranspose``, ``Gemm`` or ``MatMul``)."""
        return self.node.op_type

    def attr(self, name: str, default: Any) -> Any:
        """Returns the value of the node's attribute ``name``, or ``default`` when it is absent."""
        found = self.node.attributes.get(name)
        return found.value if found is not None else default


def array_of(value: ir.Value) -> np.ndarray:
    """Returns the data of ``value``, which must hold a constant tensor."""
    assert value.const_value is not None
    return value.const_value.numpy()


def weight_of(layer: Layer) -> np.ndarray:
    """The layer's weight as a float array (dequantized when it sits on an integer grid)."""
    return layer.grid.dequantize() if layer.grid is not None else array_of(layer.weight)


def weight_shape(layer: Layer) -> tuple[int, ...]:
    """The weight's shape, read from its tensor's header (no data)."""
    tensor = layer.grid.values.const_value if layer.grid is not None else layer.weight.const_value
    assert tensor is not None
    return tuple(int(d) for d in tensor.shape.numpy())


def _constant(value: ir.Value, what: str) -> NoMatch | None:
    """Why ``value`` cannot be rewritten as a constant initializer, or None when it can."""
    if value.const_value is None or not value.is_initializer():
        return NoMatch(f"{what} '{value.name}' is not a constant initializer")
    if not is_constant(value) or value.is_graph_output():
        return NoMatch(f"{what} '{value.name}' is a graph input or output")
    if not value.const_value.dtype.is_floating_point():
        return NoMatch(f"{what} '{value.name}' has non-float dtype {value.const_value.dtype.name}")
    return None


class TeacherPoints:
    """Where a student value lives in the input model.

    It is the value of the same name, moved past the per-channel affine nodes (BatchNormalization,
    Mul/Add/Sub/Div by a constant) that follow it there but whose outputs the student no longer has:
    fuse-bn folded them into the layer, which keeps its own output name.

    Args:
        teacher: The input model (the pipeline's input).
        student: The model being refit.
    """

    def __init__(self, teacher: ir.Model, student: ir.Model) -> None:
        graph = teacher.graph
        self.values = {v.name: v for v in graph.inputs} | {v.name: v for n in graph for v in n.outputs}
        self.student = {v.name for v in student.graph.inputs} | {v.name for n in student.graph for v in n.outputs}
        self.outputs = {v.name for v in graph.outputs}

    def find(self, name: str | None) -> str | None:
        """Returns the name of the teacher value that student value ``name`` must reproduce, or None."""
        value = self.values.get(name) if name else None
        while value is not None and not value.is_graph_output() and len(value.uses()) == 1:
            consumer, _ = next(iter(value.uses()))
            following = consumer.outputs[0]
            if not is_onnx_op(consumer, *_FOLDED) or following.name in self.student:
                break
            if not all(is_constant(v) for v in consumer.inputs if v is not None and v is not value):
                break
            value = following
        return value.name if value is not None else None


def _find_layer(node: ir.Node, key: str, options: Selection, teacher: TeacherPoints) -> Layer | NoMatch:
    """The node as a :class:`Layer`, or why it is not refit."""
    if options.include and matching_pattern(node, key, options.include) is None:
        return NoMatch(f"not matched by include={','.join(options.include)}")
    if matching_pattern(node, key, options.exclude) is not None:
        return NoMatch("excluded")
    data, weight = (node.inputs[0], node.inputs[1]) if len(node.inputs) > 1 else (None, None)
    if data is None or weight is None or not data.name or not node.outputs[0].name:
        return NoMatch("no named input or no weight")
    producer = weight.producer()
    grid: _Grid | NoMatch | None = None
    if weight.const_value is None and producer is not None and producer.op_type == "DequantizeLinear":
        grid = _grid(producer) if is_onnx_op(producer) else NoMatch("custom-domain DequantizeLinear")
    elif (why := _constant(weight, "weight")) is not None:
        return why
    if isinstance(grid, NoMatch):
        return grid
    if len(weight.uses()) > 1:
        return NoMatch(f"weight '{weight.name}' is read by other nodes too")
    tensor = weight.const_value if grid is None else grid.values.const_value
    assert tensor is not None
    rank = len(tensor.shape)
    if (node.op_type in CONVS and rank < 3) or (node.op_type not in CONVS and rank != 2):
        return NoMatch(f"weight '{weight.name}' of rank {rank} is not a {node.op_type} weight this pass refits")
    if node.op_type == "ConvTranspose" and ("output_shape" in node.attributes or auto_pad(node) != "NOTSET"):
        return NoMatch("ConvTranspose with output_shape or auto_pad SAME_* is not refit")
    output = teacher.find(node.outputs[0].name)
    if output is None:
        return NoMatch(f"no value '{node.outputs[0].name}' in the input model to match")
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    fit_bias = options.bias and node.op_type != "MatMul"
    if bias is not None and _constant(bias, "bias") is not None:
        if constant_or_dequantized(bias) is None:
            what = "also a graph input, so callers may override it" if bias.is_graph_input() else "not a constant"
            return NoMatch(f"bias '{bias.name}' is {what}")
        fit_bias = False  # a quantized (or otherwise computed) bias stays; its value is subtracted
    if node.op_type == "Gemm":
        beta = node.attributes.get("beta")
        columns = tensor.shape[0 if node.attributes.get_int("transB", 0) else 1]
        shape = tuple(bias.const_value.shape) if bias is not None and bias.const_value is not None else None
        broadcast_row = shape is None or shape in ((columns,), (1, columns))
        fit_bias = fit_bias and broadcast_row and (beta is None or beta.as_float() != 0)
    return Layer(key, node, weight, bias, fit_bias, data.name, output, grid)


def plan(model: ir.Model, options: Selection, teacher: TeacherPoints) -> tuple[list[Layer], dict[str, str]]:
    """Refittable layers of the main graph in order, each with its stage, and reasons for the others."""
    layers: list[Layer] = []
    skipped: dict[str, str] = {}
    depth: dict[str, int] = {}
    for index, node in enumerate(model.graph):
        # What If/Loop/Scan bodies read from the main graph counts: the node runs after it.
        stage = max((depth.get(name, 0) for name in reads(node, model.graph)), default=0)
        found: Layer | NoMatch | None = None
        if is_onnx_op(node, *LAYERS):
            found = _find_layer(node, node.name or f"{node.op_type}#{index}", options, teacher)
        if isinstance(found, Layer):
            found.stage = stage
            layers.append(found)
            stage += 1
        elif isinstance(found, NoMatch):
            skipped[node.name or f"{node.op_type}#{index}"] = found.reason
        for output in node.outputs:
            if output.name:
                depth[output.name] = stage
    return layers, skipped


def _output_axis(layer: Layer) -> int | None:
    """The axis of the layer's weight that runs along its output channels (None: not plain)."""
    if layer.op == "Conv":
        return 0 if int(layer.attr("group", 1)) == 1 else None
    if layer.op == "Gemm":
        return 0 if layer.attr("transB", 0) else 1
    return 1 if layer.op == "MatMul" else None


def _kept_slices(student: np.ndarray, teacher: np.ndarray, axis: int) -> np.ndarray | None:
    """The increasing teacher indices along ``axis`` whose slices ``student`` holds exactly, or None."""
    if student.ndim != teacher.ndim or student.dtype != teacher.dtype:
        return None
    s, t = np.moveaxis(student, axis, 0), np.moveaxis(teacher, axis, 0)
    if s.shape[1:] != t.shape[1:]:
        return None
    kept, position = [], 0
    for row in s:
        while position < len(t) and not np.array_equal(row, t[position]):
            position += 1
        if position == len(t):
            return None
        kept.append(position)
        position += 1
    return np.array(kept, dtype=np.int64)


def is_teacher_slice(layer: Layer, teacher: ir.Model) -> bool:
    """Whether the layer computes the input model's value at its teacher point, given the same input.

    True when its weight (and bias) are the input model's initializers of the same names with some
    output channels removed and nothing else changed, and its output is the teacher point itself.
    """
    axis = _output_axis(layer)
    if axis is None or layer.grid is not None or layer.output_name != layer.node.outputs[0].name:
        return False
    initializers = teacher.graph.initializers
    source = initializers.get(layer.weight.name or "")
    if source is None or source.const_value is None:
        return False
    kept = _kept_slices(array_of(layer.weight), source.const_value.numpy(), axis)
    if kept is None:
        return False
    bias = layer.node.inputs[2] if len(layer.node.inputs) > 2 else None
    if bias is None:
        return True
    given = initializers.get(bias.name or "")
    if bias.const_value is None or given is None or given.const_value is None:
        return False
    teacher_bias, student_bias = given.const_value.numpy(), array_of(bias)
    if teacher_bias.ndim != 1 or student_bias.shape != kept.shape:
        return False
    return bool(np.array_equal(student_bias, teacher_bias[kept]))


def auto_pad(node: ir.Node) -> str:
    """Returns the node's ``auto_pad``, with ``VALID`` and an empty value read as ``NOTSET``.

    ``VALID`` means no padding, which is what ``NOTSET`` with the default (zero) pads computes.
    """
    mode = node.attributes.get_string("auto_pad", "NOTSET")
    return "NOTSET" if mode in ("", "VALID") else mode
