"""A ``reconstruct`` layer as a least-squares problem.

Its calibration rows and targets, its effective weight matrix ``[g, O, K(+1)]``, and writing a
refit matrix back (undoably).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import onnx_ir as ir

from onnxshrink.ir.graphs import add_initializer
from onnxshrink.passbase import NoMatch
from onnxshrink.passes.reconstruct import layers as refit_layers
from onnxshrink.passes.reconstruct import least_squares as lstsq

# im2col elements per piece of a Conv batch (float64: 64 MiB); bounds memory on large feature maps.
_ROWS_BUDGET = 1 << 23


def _as_conv(layer: refit_layers.Layer, x: np.ndarray) -> tuple[np.ndarray, list[int], list[int], list[int], list[int]]:
    """The Conv that computes the layer: its input, kernel shape, strides, pads and dilations.

    A ConvTranspose is a stride-1 Conv of the zero-upsampled input with the flipped kernel.
    """
    kernel = list(refit_layers.weight_shape(layer)[2:])
    spatial = len(kernel)
    strides = list(layer.attr("strides", [1] * spatial))
    dilations = list(layer.attr("dilations", [1] * spatial))
    mode = layer.attr("auto_pad", "NOTSET")
    if mode in ("SAME_UPPER", "SAME_LOWER"):
        pads = lstsq.same_pads(x.shape[2:], kernel, strides, dilations, mode)
    elif mode == "VALID":
        pads = [0] * (2 * spatial)
    else:
        pads = list(layer.attr("pads", [0] * (2 * spatial)))
    if layer.op == "ConvTranspose":
        output_padding = list(layer.attr("output_padding", [0] * spatial))
        x, pads = lstsq.transposed_as_conv(x, kernel, strides, pads, dilations, output_padding)
        strides = [1] * spatial
    return x, kernel, strides, pads, dilations


def pieces(layer: refit_layers.Layer, x: np.ndarray, y: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Splits a Conv batch by samples so its im2col rows stay near ``_ROWS_BUDGET`` elements."""
    if layer.op not in refit_layers.CONVS or x.ndim < 3 or y.ndim < 1 or len(x) != len(y):
        yield x, y
        return
    per_sample = x[0].size * int(np.prod(refit_layers.weight_shape(layer)[2:]))
    if layer.op == "ConvTranspose":
        per_sample *= int(np.prod(layer.attr("strides", [1])))
    step = max(1, _ROWS_BUDGET // max(per_sample, 1))
    for start in range(0, len(x), step):
        yield x[start : start + step], y[start : start + step]


def _wider(layer: refit_layers.Layer, shape: tuple[int, ...], expected: tuple[int, ...], axis: int) -> bool:
    """Whether the teacher value has more channels than the layer and is otherwise the same shape.

    The layer lost output channels; all teacher channels are then summed and matched after the pass.
    """
    same_elsewhere = len(shape) == len(expected) and all(
        a == b for i, (a, b) in enumerate(zip(shape, expected, strict=True)) if i != axis
    )
    plain = int(layer.attr("group", 1)) == 1 and (layer.fit_bias or layer.bias is None)
    return same_elsewhere and plain and shape[axis] > expected[axis]


def input_channel_axis(layer: refit_layers.Layer, rank: int) -> int | None:
    """The axis of the layer's input that its weight's input channels run along (None: Gemm transA)."""
    if layer.op in refit_layers.CONVS:
        return 1
    if layer.op == "Gemm" and layer.attr("transA", 0):
        return None
    return rank - 1


def rows_and_targets(
    layer: refit_layers.Layer, x: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | NoMatch:
    """Calibration rows ``[P, g, K(+1)]`` and targets ``[P, g, O]``, or why the teacher value does not fit."""
    weight_shape = refit_layers.weight_shape(layer)
    group = int(layer.attr("group", 1))
    if layer.op in refit_layers.CONVS:
        x, kernel, strides, pads, dilations = _as_conv(layer, x)
        spatial = lstsq.conv_output_shape(x.shape, kernel, strides, pads, dilations)
        channels = weight_shape[0] if layer.op == "Conv" else weight_shape[1] * group
        expected: tuple[int, ...] = (x.shape[0], channels, *spatial)
    else:
        if layer.op == "Gemm" and layer.attr("transA", 0):
            x = x.T
        transposed = layer.op == "Gemm" and layer.attr("transB", 0)
        expected = (*x.shape[:-1], weight_shape[0] if transposed else weight_shape[1])
    axis = 1 if layer.op in refit_layers.CONVS else len(expected) - 1
    if y.shape != expected and not _wider(layer, y.shape, expected, axis):
        return NoMatch(f"the input model's value '{layer.output_name}' has shape {list(y.shape)}, not {list(expected)}")
    if layer.bias is not None and not layer.fit_bias:
        # A bias that is not refit is part of the target: the weights fit what remains.
        offset = refit_layers.constant_or_dequantized(layer.bias)
        assert offset is not None
        if layer.op in refit_layers.CONVS:
            offset = offset.reshape(-1, *([1] * (y.ndim - 2)))
        y = y - float(layer.attr("beta", 1.0)) * offset if layer.op == "Gemm" else y - offset
    if layer.op in refit_layers.CONVS:
        rows = lstsq.conv_rows(x, kernel, strides, pads, dilations, group)
        targets = np.moveaxis(y, 1, -1).reshape(rows.shape[0], group, -1)
    else:
        rows = x.reshape(-1, 1, x.shape[-1])
        targets = y.reshape(-1, 1, y.shape[-1])
    if layer.fit_bias:
        rows = np.concatenate([rows, np.ones((*rows.shape[:2], 1), dtype=rows.dtype)], axis=-1)
    return rows, targets


def as_matrix(layer: refit_layers.Layer) -> np.ndarray:
    """The layer's effective weights ``[g, O, K(+1)]`` (float64), bias in the last column when fit."""
    weight = refit_layers.weight_of(layer).astype(np.float64)
    if layer.op == "Conv":
        group = int(layer.attr("group", 1))
        matrix = weight.reshape(group, weight.shape[0] // group, -1)
    elif layer.op == "ConvTranspose":
        matrix = lstsq.transposed_weight_matrix(weight, int(layer.attr("group", 1)))
    elif layer.op == "Gemm":
        matrix = float(layer.attr("alpha", 1.0)) * (weight if layer.attr("transB", 0) else weight.T)[None]
    else:
        matrix = weight.T[None]
    if not layer.fit_bias:
        return matrix
    outputs = matrix.shape[0] * matrix.shape[1]
    # The node's input, not layer.bias: a refit may have given the layer a bias of its own.
    given = layer.node.inputs[2] if len(layer.node.inputs) > 2 else None
    bias = np.zeros(outputs) if given is None else refit_layers.array_of(given).astype(np.float64).reshape(outputs)
    if layer.op == "Gemm":
        bias = bias * float(layer.attr("beta", 1.0))
    return np.concatenate([matrix, bias.reshape(*matrix.shape[:2], 1)], axis=-1)


@dataclasses.dataclass
class Edits:
    """What the refits changed, so that they can all be undone."""

    tensors: list[tuple[ir.Value, ir.TensorProtocol | None]] = dataclasses.field(default_factory=list)
    # (node, its input count before, the bias input it had, the new bias initializer)
    inputs: list[tuple[ir.Node, int, ir.Value | None, ir.Value]] = dataclasses.field(default_factory=list)

    def set_tensor(self, value: ir.Value, array: np.ndarray) -> None:
        """Replaces the data of ``value`` with ``array``, keeping the old tensor to undo it."""
        self.tensors.append((value, value.const_value))
        doc = value.const_value.doc_string if value.const_value is not None else None
        value.const_value = ir.Tensor(array, name=value.name, doc_string=doc)

    def mark(self) -> tuple[int, int]:
        """Returns a point to :meth:`revert` to: the edits made so far."""
        return len(self.tensors), len(self.inputs)

    def revert(self, model: ir.Model, since: tuple[int, int] = (0, 0)) -> None:
        """Undoes the edits made after ``since`` (a :meth:`mark`), newest first."""
        for value, tensor in reversed(self.tensors[since[0] :]):
            value.const_value = tensor
        for node, count, previous, added in reversed(self.inputs[since[1] :]):
            node.replace_input_with(2, previous)
            node.resize_inputs(count)
            if added.name is not None:
                model.graph.initializers.pop(added.name)
        del self.tensors[since[0] :]
        del self.inputs[since[1] :]


def write(model: ir.Model, layer: refit_layers.Layer, matrix: np.ndarray, edits: Edits, taken: set[str]) -> None:
    """Stores refit effective weights back into the layer's initializers (same names and dtypes).

    A new bias takes a name from ``taken`` (see :func:`onnxshrink.ir.graphs.taken_names`); every
    change is recorded in ``edits``.
    """
    old = refit_layers.weight_of(layer)
    weights = matrix[..., :-1] if layer.fit_bias else matrix
    if layer.op == "Conv":
        new = weights.reshape(old.shape)
    elif layer.op == "ConvTranspose":
        new = lstsq.transposed_weight_from_matrix(weights, old.shape)
    elif layer.op == "Gemm":
        flat = weights[0] / float(layer.attr("alpha", 1.0))
        new = flat if layer.attr("transB", 0) else flat.T
    else:
        new = weights[0].T
    if layer.grid is not None:
        edits.set_tensor(layer.grid.values, layer.grid.quantize(new, old != 0))
    else:
        # Masked entries are exact zeros already; np.where keeps them so through the dtype cast.
        edits.set_tensor(layer.weight, np.where(old == 0, np.zeros((), old.dtype), new.astype(old.dtype)))
    if not layer.fit_bias:
        return
    scale = float(layer.attr("beta", 1.0)) if layer.op == "Gemm" else 1.0
    current = layer.bias
    shape = tuple(current.const_value.shape.numpy()) if current is not None and current.const_value else (-1,)
    dtype = layer.grid.dtype if layer.grid is not None else old.dtype
    bias: np.ndarray = (matrix[..., -1] / scale).astype(dtype).reshape(shape)
    if current is not None and len(current.uses()) == 1:
        edits.set_tensor(current, bias)
        return
    # No bias yet, or one shared with other nodes: this layer gets its own.
    base = f"{layer.weight.name}.bias" if current is None else f"{current.name}.refit"
    value = add_initializer(model.graph, taken, base, bias)
    edits.inputs.append((layer.node, len(layer.node.inputs), current, value))
    if len(layer.node.inputs) < 3:
        layer.node.resize_inputs(3)
    layer.node.replace_input_with(2, value)
