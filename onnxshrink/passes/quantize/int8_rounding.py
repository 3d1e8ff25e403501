"""GPTQ rounding of static int8 weights (``rounding=gptq`` with ``mode=static``).

The 4-bit rounding of gptq.py, for the per-channel int8 weights of a static plan: each layer is a
matrix product ``X W`` of its input rows and a ``[K, N]`` weight, and GPTQ moves each input
channel's rounding error onto the channels not yet rounded, in the proportions the input's Gram
matrix ``H = X^T X`` gives. Rules:

1. Layers: the quantized Conv, Gemm and MatMul of the main graph whose constant weight no other
   layer reads. Each other layer keeps nearest rounding, named with its reason (inside a body,
   a shared weight, ConvTranspose).
2. Each layer as matrix products: MatMul ``X [..., K] W [K, N]``; Gemm the same (with ``transB``,
   ``W^T``); Conv, per group, the im2col patches of its input (one row per output position,
   ``Cin/group * prod(kernel)`` values in the weight's order, zero padding included) times
   ``weight[group].reshape(Cout/group, -1)^T``. ``H`` per group is summed in float64 over the
   calibration samples from the float layer input. (From the input fake-quantized by the plan's
   Q, as the int8 model sees it, it measured no better: the same digits and PP-OCR cls scores,
   magika cosine 0.99946 against 0.99951, resnet18 agreement 60 against 62 of 64 images.)
3. Scales are exactly those nearest rounding uses (``plan.quantize_weight``: per output channel or
   per tensor, ``±(2**(bits-1) - 1)`` with reduce-range, zero point 0); only the integer values
   change, so the kernels and the size stay those of nearest rounding.
4. Memory: layers reading the same tensor with the same geometry share one ``H``; the layers are
   captured in passes over the calibration data, each holding at most ``GRAM_BUDGET`` bytes of
   Gram matrices (one larger matrix gets a pass alone); patches are formed for a few samples at a time
   (``PATCH_VALUES``).
5. Report: per layer, the relative output error ``||Xq Wq - X W||^2 / ||X W||^2`` of nearest
   rounding and of GPTQ on up to 256 sampled input rows (``Xq``: the fake-quantized rows).
6. ``rounding=auto`` (the default): MatMul and Gemm layers only, and only those whose calibration
   gave at least as many input rows as the weight has inputs (``K``); the others keep nearest
   rounding, named with why. Measured (AVX2 EPYC, 7-bit weights): BERT-base cosine 0.99924 ->
   0.99973; PP-OCR rec's MatMuls alone 86 -> 87 exact lines, where its Convs by GPTQ read 80
   (im2col rows of a text line are mostly blank background); GPTQ fitted on 64 rows for magika's
   512 inputs lost to nearest rounding.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import onnx_ir as ir
from numpy.lib.stride_tricks import sliding_window_view

from onnxshrink.activations import capture
from onnxshrink.context import PassContext
from onnxshrink.ir.constants import constant_array
from onnxshrink.passes.quantize.gptq import GramMatrix, gptq_round
from onnxshrink.passes.quantize.plan import GraphView, QuantPlan, quantize_weight
from onnxshrink.passes.quantize.statistics import QRANGE, ChannelStats, QParams

__all__ = ["GRAM_BUDGET", "PATCH_VALUES", "ConvGeometry", "im2col", "round_static"]

# Bytes of Gram matrices one capture pass holds (BERT-base: 12 x (768^2 + 3072^2) x 8 B = 960 MB in 2 passes).
GRAM_BUDGET = 512 * 2**20
# Patch values formed at once (64 MB of float32): a Conv's im2col is made for this many samples' worth.
PATCH_VALUES = 16 * 2**20
_REPORT_ROWS = 256


@dataclasses.dataclass(frozen=True)
class ConvGeometry:
    """How a Conv turns its input into patches: kernel, strides, dilations, pads and ``auto_pad``."""

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads: tuple[int, ...]
    auto_pad: str

    @classmethod
    def of(cls, node: ir.Node, kernel: tuple[int, ...]) -> ConvGeometry:
        """The geometry of a Conv ``node`` whose weight has spatial shape ``kernel``."""
        rank = len(kernel)

        def ints(name: str, default: int, count: int) -> tuple[int, ...]:
            attribute = node.attributes.get(name)
            return tuple(attribute.as_ints()) if attribute is not None else (default,) * count

        auto_pad = node.attributes.get_string("auto_pad", "NOTSET") or "NOTSET"
        return cls(kernel, ints("strides", 1, rank), ints("dilations", 1, rank), ints("pads", 0, 2 * rank), auto_pad)

    def padding(self, spatial: tuple[int, ...]) -> list[tuple[int, int]]:
        """(begin, end) zero padding per spatial axis of an input of shape ``spatial``."""
        rank = len(self.kernel)
        if self.auto_pad in ("NOTSET", "VALID"):
            pads = self.pads if self.auto_pad == "NOTSET" else (0,) * (2 * rank)
            return [(pads[axis], pads[axis + rank]) for axis in range(rank)]
        result = []
        for size, kernel, stride, dilation in zip(spatial, self.kernel, self.strides, self.dilations, strict=True):
            total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
            small = total // 2
            result.append((small, total - small) if self.auto_pad == "SAME_UPPER" else (total - small, small))
        return result


def im2col(batch: np.ndarray, geometry: ConvGeometry) -> np.ndarray:
    """The patches of samples ``[N, C, *spatial]``: ``[N * positions, C * prod(kernel)]``, channel-major.

    Column ``c * prod(kernel) + tap`` holds input channel ``c`` at kernel tap ``tap`` (row-major over
    the kernel axes), the order of ``weight[o].reshape(-1)``.
    """
    rank = len(geometry.kernel)
    padded = np.pad(batch, [(0, 0), (0, 0), *geometry.padding(tuple(batch.shape[2:]))])
    extents = tuple((k - 1) * d + 1 for k, d in zip(geometry.kernel, geometry.dilations, strict=True))
    windows = sliding_window_view(padded, extents, axis=tuple(range(2, rank + 2)))  # [N, C, *out_full, *extents]
    steps = [slice(None), slice(None), *(slice(None, None, s) for s in geometry.strides)]
    steps += [slice(None, None, d) for d in geometry.dilations]
    moved = np.moveaxis(windows[tuple(steps)], 1, rank + 1)  # [N, *out, C, *kernel]
    return moved.reshape(int(np.prod(moved.shape[: rank + 1])), -1)


@dataclasses.dataclass
class LayerMatrix:
    """One layer as ``groups`` matrix products ``rows [R, K] @ weight[g] [K, N/groups]`` (rule 2).

    Attributes:
        weights: ``[groups, K, N/groups]`` float64, input channels first.
        scales: Nearest rounding's scale of each column ``[groups, N/groups]``.
        limit: The largest level, 127 (or 63 with reduce-range); levels span ``[-limit, limit]``.
        layout: Turns levels ``[groups, K, N/groups]`` back into the weight's own shape.
    """

    key: str
    weight_name: str
    tensor: str
    geometry: ConvGeometry | None
    weights: np.ndarray
    scales: np.ndarray
    shape: tuple[int, ...]
    transposed: bool
    limit: int

    @property
    def groups(self) -> int:
        return int(self.weights.shape[0])

    @property
    def inputs(self) -> int:
        """``K``: the inputs each output of a group sums over."""
        return int(self.weights.shape[1])

    def stored(self, levels: np.ndarray) -> np.ndarray:
        """Levels ``[groups, K, N/groups]`` as the int8 initializer of the weight's own shape."""
        if self.geometry is not None:  # [g, K, Cout/g] -> [Cout, Cin/g, *kernel]
            return np.ascontiguousarray(levels.transpose(0, 2, 1).reshape(self.shape)).astype(np.int8)
        matrix = levels[0]
        return np.ascontiguousarray(matrix.T if self.transposed else matrix).astype(np.int8)


def _layer_matrix(key: str, node: ir.Node, axis: int | None, bits: int) -> LayerMatrix:
    array = constant_array(node.inputs[1])
    source, weight = node.inputs[0], node.inputs[1]
    assert array is not None and source is not None and source.name and weight is not None and weight.name
    array = np.asarray(array, np.float32)
    _, scales = quantize_weight(array, axis, bits)
    limit = 2 ** (bits - 1) - 1
    if node.op_type == "Conv":
        groups = node.attributes.get_int("group", 1)
        out_channels = array.shape[0]
        matrices = array.reshape(groups, out_channels // groups, -1).transpose(0, 2, 1)
        columns = np.broadcast_to(scales, (out_channels,)).reshape(groups, -1)
        geometry = ConvGeometry.of(node, tuple(array.shape[2:]))
        return LayerMatrix(key, weight.name, source.name, geometry, matrices, columns, array.shape, False, limit)
    transposed = node.op_type == "Gemm" and bool(node.attributes.get_int("transB"))
    matrix = array.T if transposed else array
    columns = np.broadcast_to(scales, (matrix.shape[1],)).reshape(1, -1)
    return LayerMatrix(key, weight.name, source.name, None, matrix[None], columns, array.shape, transposed, limit)


def _most_rows(node: ir.Node, samples: int) -> int | None:
    """The most rows ``samples`` calibration samples give a MatMul/Gemm (None: its input's shape does not say)."""
    if node.op_type == "Gemm":
        return samples  # one row per sample
    shape = None if node.inputs[0] is None else node.inputs[0].shape
    inner = [] if shape is None else list(shape)[1:-1]
    if shape is None or len(shape) < 2 or not all(isinstance(d, int) for d in inner):
        return None
    per_sample = 1
    for d in inner:
        per_sample *= int(d)  # type: ignore[arg-type]
    return samples * per_sample


def _too_few_rows(rows: str, matrix: LayerMatrix) -> str:
    """Rule 6's reason for nearest rounding."""
    return f"{rows} calibration rows < {matrix.inputs} inputs: too few to fit GPTQ (rounding=auto)"


def _candidates(model: ir.Model, plan: QuantPlan, auto: bool) -> tuple[dict[str, ir.Node], dict[str, str]]:
    """Rule 1 (and 6 with ``auto``): the layers GPTQ rounds, and the others with why they keep nearest rounding."""
    nodes = GraphView(model.graph).nodes
    readers: dict[str, int] = {}
    for key, layer in plan.layers.items():
        node = nodes.get(key)
        if layer.weight is not None and node is not None and (value := node.inputs[layer.weight.index]) is not None:
            readers[str(value.name)] = readers.get(str(value.name), 0) + 1
    chosen: dict[str, ir.Node] = {}
    left: dict[str, str] = {}
    for key, layer in plan.layers.items():
        if layer.weight is None:
            continue
        node = nodes.get(key)
        if node is None:
            left[key] = "in a subgraph: rounding=gptq works on the main graph"
        elif node.op_type not in ("Conv", "Gemm", "MatMul"):
            left[key] = f"{node.op_type}: rounding=gptq rounds Conv, Gemm and MatMul weights"
        elif readers[str(node.inputs[1].name if node.inputs[1] is not None else "")] > 1:
            left[key] = "weight shared with another layer"
        elif auto and node.op_type == "Conv":
            left[key] = "Conv: rounding=auto rounds MatMul and Gemm weights by GPTQ (rounding=gptq: Convs too)"
        else:
            chosen[key] = node
    return chosen, left


_GramKey = tuple[str, "ConvGeometry | None"]  # the input tensor and, for a Conv, how it becomes patches


class _GroupedGram:
    """``H`` per group ``[groups, K, K]`` of rows ``[R, groups * K]``, float64 (rule 2)."""

    def __init__(self, groups: int, channels: int) -> None:
        self.single = GramMatrix(channels) if groups == 1 else None
        self.grouped = np.zeros((groups, channels, channels)) if groups > 1 else None
        self.groups, self.channels = groups, channels
        self.rows = 0

    def update(self, rows: np.ndarray) -> None:
        """Adds rows ``[R, groups * K]``; rows holding a non-finite value are left out."""
        if self.single is not None:
            self.single.update(rows)
            self.rows = self.single.rows
            return
        assert self.grouped is not None
        rows = rows[np.isfinite(rows).all(axis=1)].reshape(-1, self.groups, self.channels)
        self.grouped += np.einsum("rgk,rgl->gkl", rows, rows, dtype=np.float64)
        self.rows += rows.shape[0]

    @property
    def matrices(self) -> np.ndarray:
        """``H`` per group, ``[groups, K, K]``."""
        if self.single is not None:
            return self.single.matrix[None]
        assert self.grouped is not None
        return self.grouped


def _fake_quantized(array: np.ndarray, params: QParams | None) -> np.ndarray:
    if params is None:
        return array
    low, high = QRANGE[params.dtype]
    levels = np.clip(np.rint(array / np.float32(params.scale)) + params.zero_point, low, high)
    return ((levels - params.zero_point) * np.float32(params.scale)).astype(np.float32)


def _rows(array: np.ndarray, geometry: ConvGeometry | None) -> Iterator[np.ndarray]:
    """The input rows of one batch; a Conv's patches in chunks of at most ``PATCH_VALUES`` values (rule 4)."""
    if geometry is None:
        yield array.reshape(-1, array.shape[-1])
        return
    per_sample = array[0].size * int(np.prod(geometry.kernel)) // int(np.prod(geometry.strides))
    step = max(1, PATCH_VALUES // max(1, per_sample))
    for start in range(0, array.shape[0], step):
        yield im2col(array[start : start + step], geometry)


def _passes(sizes: dict[_GramKey, tuple[int, int]]) -> list[list[_GramKey]]:
    """Rule 4: the Gram keys (with ``(groups, K)``) split into passes of at most GRAM_BUDGET bytes each."""
    passes: list[list[_GramKey]] = []
    held = GRAM_BUDGET
    for key, (groups, channels) in sizes.items():
        nbytes = groups * channels * channels * 8
        if held + nbytes > GRAM_BUDGET:
            passes.append([])
            held = 0
        passes[-1].append(key)
        held += nbytes
    return passes


def _relative_error(
    rows: np.ndarray, quantized_rows: np.ndarray, weights: np.ndarray, dequantized: np.ndarray
) -> float:
    groups, channels = weights.shape[:2]
    exact = np.matmul(rows.reshape(-1, groups, channels).transpose(1, 0, 2).astype(np.float64), weights)
    grouped = quantized_rows.reshape(-1, groups, channels).transpose(1, 0, 2).astype(np.float64)
    found = np.matmul(grouped, dequantized)  # [groups, rows, N/groups]
    reference = float(np.square(exact).sum())
    error = float(np.square(found - exact).sum()) / reference if reference > 0 else 0.0
    return float(f"{error:.4g}")


def round_static(
    context: PassContext,
    model: ir.Model,
    plan: QuantPlan,
    weight_bits: int,
    *,
    pass_name: str,
    samples: int,
    batch_size: int,
    auto: bool = False,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Rules 1-5 (6 with ``auto``) for the plan's layers; the model is not changed.

    Args:
        context: The pipeline context (calibration data, sessions).
        model: The float model the plan was made for.
        plan: The static plan (its input Qs give the fake quantization).
        weight_bits: Weight bits (7 with reduce-range).
        pass_name: For calibration-data errors.
        samples: Calibration samples read.
        batch_size: Samples per capture run.
        auto: ``rounding=auto`` (rule 6): MatMul and Gemm only, each with at least as many
            calibration rows as inputs.

    Returns:
        The GPTQ levels per weight initializer name (int8, the weight's shape), and the report's
        record: per layer its input tensor, rows and relative output errors, and the layers left
        to nearest rounding with why.
    """
    chosen, left = _candidates(model, plan, auto)
    matrices = {
        key: _layer_matrix(key, node, plan.layers[key].weight.axis, weight_bits)  # type: ignore[union-attr]
        for key, node in chosen.items()
    }
    if auto:  # rule 6 before any capture: samples= and the input's shape bound the rows
        for layer, matrix in list(matrices.items()):
            most = _most_rows(chosen[layer], samples)
            if most is not None and most < matrix.inputs:
                left[layer] = _too_few_rows(f"at most {most}", matrix)
                del matrices[layer]
    sizes: dict[_GramKey, tuple[int, int]] = {}
    for matrix in matrices.values():
        sizes[matrix.tensor, matrix.geometry] = (matrix.groups, matrix.inputs)
    per_batch = max(1, math.ceil(_REPORT_ROWS / max(1, math.ceil(samples / batch_size))))
    params = {name: q.params for name, q in plan.activations.items()}
    rounded: dict[str, np.ndarray] = {}
    layers: dict[str, Any] = {}
    for keys in _passes(sizes):
        # Rule 4: only this pass's Gram matrices are alive; they are freed once their layers are rounded.
        grams = {key: _GroupedGram(*sizes[key]) for key in keys}
        sampled = {key: ChannelStats(_REPORT_ROWS, per_batch) for key in keys}
        tensors = list(dict.fromkeys(name for name, _ in keys))
        for _, arrays in capture(context, model, tensors, pass_name=pass_name, samples=samples, batch_size=batch_size):
            for name, geometry in keys:
                array = np.asarray(arrays[name], np.float32)
                for rows in _rows(array, geometry):
                    grams[name, geometry].update(rows)
                sampled[name, geometry].update(next(_rows(array[:1] if geometry else array, geometry)))
        for matrix in matrices.values():
            key = (matrix.tensor, matrix.geometry)
            if key in grams and auto and grams[key].rows < matrix.inputs:
                left[matrix.key] = _too_few_rows(str(grams[key].rows), matrix)
            elif key in grams:
                levels = _gptq_levels(matrix, grams[key])
                rounded[matrix.weight_name] = matrix.stored(levels)
                rows = sampled[key].sample()
                layers[matrix.key] = _layer_record(matrix, grams[key].rows, rows, params.get(matrix.tensor), levels)
    return rounded, {"layers": {key: layers[key] for key in matrices if key in layers}, "nearest": left}


def _gptq_levels(matrix: LayerMatrix, gram: _GroupedGram) -> np.ndarray:
    """Rule 3: the layer's levels ``[groups, K, N/groups]`` by GPTQ under nearest rounding's scales."""
    dtype = {127: "s8", 63: "s7"}[matrix.limit]
    hessians = gram.matrices
    levels = np.empty_like(matrix.weights)
    channels = matrix.weights.shape[1]
    for group in range(matrix.groups):
        scales = matrix.scales[group][None].astype(np.float64)
        zero = np.zeros_like(scales)
        levels[group] = gptq_round(matrix.weights[group], hessians[group], scales, zero, channels, dtype)
    return levels


def _layer_record(
    matrix: LayerMatrix, count: int, rows: np.ndarray, params: QParams | None, levels: np.ndarray
) -> dict[str, Any]:
    """Rule 5: the layer's input tensor, rows summed and both roundings' relative output errors."""
    quantized_rows = _fake_quantized(rows, params)
    scales = matrix.scales[:, None, :]
    nearest = np.clip(np.rint(matrix.weights / scales), -matrix.limit, matrix.limit)
    return {
        "tensor": matrix.tensor,
        "rows": count,
        "relative_error": {
            "nearest": _relative_error(rows, quantized_rows, matrix.weights, nearest * scales),
            "gptq": _relative_error(rows, quantized_rows, matrix.weights, levels * scales),
        },
    }
