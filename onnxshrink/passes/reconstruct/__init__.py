"""``reconstruct``: layer-wise least-squares refit of weights against the input model (lossy-aware)."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import onnx_ir as ir

from onnxshrink.activations import capture
from onnxshrink.errors import UsageError
from onnxshrink.ir.graphs import add_initializer
from onnxshrink.passbase import ShrinkPass, ShrinkPassResult
from onnxshrink.passes.reconstruct import layers as refit_layers
from onnxshrink.passes.reconstruct import least_squares as lstsq
from onnxshrink.registry import register_pass

logger = logging.getLogger(__name__)

_ONNX = ("", "ai.onnx")
refit_layers.LAYERS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
refit_layers.CONVS = ("Conv", "ConvTranspose")
# Nodes fuse-bn folds into the layer before them (the layer keeps its own output name).
_FOLDED = ("BatchNormalization", "Mul", "Add", "Sub", "Div")
# A layer whose output is this close to the teacher's already reproduces it (float rounding).
_MATCHED = 1e-6
# im2col elements per piece of a Conv batch (float64: 64 MiB); bounds memory on large feature maps.
_ROWS_BUDGET = 1 << 23


@dataclasses.dataclass(frozen=True)
class ReconstructOptions:
    ridge: float = dataclasses.field(
        default=1e-3,
        metadata={"help": "ridge towards the current weights, relative to the mean diagonal of XᵀX (>= 0)"},
    )
    samples: int = dataclasses.field(default=512, metadata={"help": "calibration samples used (at most)"})
    include: tuple[str, ...] = dataclasses.field(
        default=(), metadata={"help": "refit only layers whose op type or node-name glob matches (empty: all)"}
    )
    exclude: tuple[str, ...] = dataclasses.field(
        default=(), metadata={"help": "never refit layers whose op type or node-name glob matches"}
    )
    method: Literal["auto", "lstsq", "obs"] = dataclasses.field(
        default="auto",
        metadata={"help": "lstsq: exact masked solve; obs: dense solve + SparseGPT-style mask update; auto: by cost"},
    )
    bias: bool = dataclasses.field(
        default=True, metadata={"help": "refit Conv/Gemm biases too, adding one to layers that have none"}
    )

    def __post_init__(self) -> None:
        if not isinstance(self.ridge, (int, float)) or not self.ridge >= 0:
            raise UsageError(f"reconstruct: ridge must be a number >= 0, got {self.ridge!r}")
        if self.samples < 1:
            raise UsageError(f"reconstruct: samples must be >= 1, got {self.samples}")
        if self.method not in ("auto", "lstsq", "obs"):
            raise UsageError(f"reconstruct: bad method {self.method!r}; valid: auto, lstsq, obs")


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


def _pieces(layer: refit_layers.Layer, x: np.ndarray, y: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
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
    """The teacher value has more channels than the layer (it lost output channels) and is
    otherwise the same shape; then all teacher channels are summed and matched after the pass."""
    same_elsewhere = len(shape) == len(expected) and all(
        a == b for i, (a, b) in enumerate(zip(shape, expected, strict=True)) if i != axis
    )
    plain = int(layer.attr("group", 1)) == 1 and (layer.fit_bias or layer.bias is None)
    return same_elsewhere and plain and shape[axis] > expected[axis]


def _rows_and_targets(layer: refit_layers.Layer, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray] | str:
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
        return f"the input model's value '{layer.output_name}' has shape {list(y.shape)}, not {list(expected)}"
    if layer.bias is not None and not layer.fit_bias:
        # A bias that is not refit is part of the target: the weights fit what remains.
        offset = refit_layers.constant_array(layer.bias)
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


def _as_matrix(layer: refit_layers.Layer) -> np.ndarray:
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
class _Edits:
    """What the refits changed, so that they can all be undone."""

    tensors: list[tuple[ir.Value, ir.TensorProtocol | None]] = dataclasses.field(default_factory=list)
    # (node, its input count before, the bias input it had, the new bias initializer)
    inputs: list[tuple[ir.Node, int, ir.Value | None, ir.Value]] = dataclasses.field(default_factory=list)

    def set_tensor(self, value: ir.Value, array: np.ndarray) -> None:
        self.tensors.append((value, value.const_value))
        doc = value.const_value.doc_string if value.const_value is not None else None
        value.const_value = ir.Tensor(array, name=value.name, doc_string=doc)

    def mark(self) -> tuple[int, int]:
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


def _write(model: ir.Model, layer: refit_layers.Layer, matrix: np.ndarray, edits: _Edits) -> None:
    """Stores refit effective weights back into the layer's initializers (same names and dtypes)."""
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
    taken = set(model.graph.initializers) | {v.name for n in model.graph for v in n.outputs if v.name}
    base = f"{layer.weight.name}.bias" if current is None else f"{current.name}.refit"
    value = add_initializer(model.graph, taken, base, bias)
    edits.inputs.append((layer.node, len(layer.node.inputs), current, value))
    if len(layer.node.inputs) < 3:
        layer.node.resize_inputs(3)
    layer.node.replace_input_with(2, value)


@dataclasses.dataclass
class _OutputError:
    """Streamed ``Σ(student - teacher)²`` and ``Σ teacher²`` over the model's float outputs."""

    squared_error: float = 0.0
    squared_norm: float = 0.0

    def add(self, student: np.ndarray, teacher: np.ndarray) -> None:
        if student.shape == teacher.shape and teacher.dtype.kind == "f":
            difference = student.astype(np.float64) - teacher
            self.squared_error += float(np.sum(difference * difference))
            self.squared_norm += float(np.sum(np.square(teacher, dtype=np.float64)))

    @property
    def relative(self) -> float:
        return float(np.sqrt(self.squared_error / self.squared_norm)) if self.squared_norm > 0 else 0.0


@register_pass
class ReconstructPass(ShrinkPass):
    """Refits layer weights by least squares so each layer reproduces the input model's value (lossy).

    Rules, in the main graph (subgraph and function layers are left alone):

    1. A layer is a Conv or ConvTranspose (any group count, N-D, strides, pads, dilations; Conv
       auto_pad too; ConvTranspose output_padding, but not output_shape or auto_pad SAME_*), a Gemm
       (alpha, beta, transA, transB) or a MatMul whose weight (input 1) is a constant float
       initializer, or a DequantizeLinear of constant integers (rule 4), that no other node reads
       and that is not a graph input or output.
    2. Its teacher point is the value of the input model (the pipeline's input) with the name of
       its output, moved forward past per-channel affine nodes (BatchNormalization, Mul/Add/Sub/Div
       by a constant) whose outputs this model no longer has: fuse-bn folds them into the layer,
       which keeps its own output name. A layer without a teacher point, or whose teacher value
       has another shape, is skipped with a reason; except that a layer that lost output channels
       (prune-channels; group 1, bias refit or absent) is fit to the teacher channels it kept,
       found as the increasing sequence of channels most similar (cosine) to its current outputs.
    3. Layers run in stages (a stage = layers with the same number of refittable layers on their
       longest path from the inputs), so each is fit on inputs that carry every earlier refit.
       Per stage the calibration data streams once through the current model (layer inputs) and
       once through the input model (teacher values): two onnxruntime sessions and one pass over
       the data per stage, plus one more pair at the end (cost grows with the network's depth).
    4. Per layer (and Conv group), ``XᵀX`` and ``XᵀY`` are summed batch by batch in float64 (im2col
       rows for convolutions, split so one piece stays near 64 MiB) and
       ``min ||X wᵀ - Y||² + λ||w - w₀||²`` is solved, ``λ = ridge · mean(diag XᵀX)``: the ridge
       pulls towards the current weights ``w₀``, so directions the data does not see keep them.
       Zero weights stay exactly zero (pruning masks survive); a layer with fewer input channels is
       just a smaller problem. A weight that a DequantizeLinear makes out of constant integers
       (per tensor or per axis) is refit in float and rounded back onto the same grid
       (scale and zero point kept); pruned entries stay at the zero point, and a kept weight may
       round onto it. ``method=lstsq`` solves the masked problem exactly (one factorisation
       per distinct row support); ``obs`` solves densely, then enforces the mask column by column
       with SparseGPT's Optimal Brain Surgeon update; ``auto`` takes lstsq up to about 2e9
       multiply-adds of factorisations, else obs.
    5. With ``bias`` (default), Conv, ConvTranspose and Gemm biases are refit too; a layer without
       one gets a new initializer (a shared one is copied). A bias that is not refit (``bias=false``,
       one out of a DequantizeLinear, a Gemm C that is not one value per output column or has
       beta=0) stays as it is and is subtracted from the target.
    6. A layer's refit is kept only when, as stored (cast to the weight's dtype or rounded onto
       its grid), it lowers the layer's error on the calibration data; a
       layer already within 1e-6 (relative) of its teacher point is left alone. When all refits
       together do not lower the error of the model's outputs on the calibration data, every one
       of them is undone and the pass reports ``modified=False``.
    Stats: per layer the teacher point, relative error ``||X wᵀ - Y|| / ||Y||`` before and after,
    method, calibration rows and seconds; the relative error of the model's outputs before and
    after; seconds spent streaming activations; a reason for each layer left alone.
    """

    name = "reconstruct"
    exact = False
    Options = ReconstructOptions

    def call(self, model: ir.Model) -> ShrinkPassResult:
        options: ReconstructOptions = self.options
        self.context.require_calibration(self.name)
        teacher = self.context.reference_model(self.name)
        points = refit_layers.TeacherPoints(teacher, model)
        layers, skipped = refit_layers.plan(model, options, points)
        outputs = [v.name for v in model.graph.outputs if v.name and v.name in points.outputs]
        per_layer: dict[str, dict[str, Any]] = {}
        stages = sorted({layer.stage for layer in layers})
        edits = _Edits()
        before = _OutputError()
        capture_seconds = 0.0
        for stage in stages:
            members = [layer for layer in layers if layer.stage == stage]
            started = time.perf_counter()
            # The model's outputs ride along with the first stage, before anything is refit.
            watched = outputs if stage == stages[0] else []
            equations, reasons = self._accumulate(model, teacher, members, watched, before)
            capture_seconds += time.perf_counter() - started
            skipped.update(reasons)
            for layer in members:
                if layer.key in equations:
                    per_layer[layer.key] = self._refit(model, layer, equations[layer.key], edits)
        stats: dict[str, Any] = {"stages": len(stages)}
        if edits.tensors:
            started = time.perf_counter()
            after = _OutputError()
            self._accumulate(model, teacher, [], outputs, after)
            capture_seconds += time.perf_counter() - started
            stats.update(output_error_before=before.relative, output_error_after=after.relative)
            # No comparable output (all differ in shape or are not float): nothing to judge by.
            if before.squared_norm > 0 and after.relative >= before.relative:
                edits.revert(model)
                stats["reverted"] = "the refits did not lower the error of the model's outputs"
                for entry in per_layer.values():
                    entry.update(refit=False, reason="reverted with all others: the model's outputs got worse")
        for key, entry in per_layer.items():
            if not entry["refit"]:
                skipped[key] = entry.pop("reason")
        stats.update(
            layers_refit=sum(entry["refit"] for entry in per_layer.values()),
            capture_seconds=capture_seconds,
            layers=per_layer,
            skipped=skipped,
        )
        return ShrinkPassResult(model, modified=bool(edits.tensors), stats=stats)

    def _accumulate(
        self,
        model: ir.Model,
        teacher: ir.Model,
        layers: list[refit_layers.Layer],
        outputs: list[str],
        error: _OutputError,
    ) -> tuple[dict[str, lstsq.NormalEquations], dict[str, str]]:
        """Streams calibration rows of ``layers`` into normal equations (one per layer), and the
        difference of the named model outputs into ``error``; two sessions, one pass over the data."""
        samples = self.options.samples
        inputs = [layer.input_name for layer in layers]
        points = [layer.output_name for layer in layers]
        student = capture(self.context, model, [*inputs, *outputs], pass_name=self.name, samples=samples)
        reference = capture(self.context, teacher, [*points, *outputs], pass_name=self.name, samples=samples)
        equations: dict[str, lstsq.NormalEquations] = {}
        reasons: dict[str, str] = {}
        for (_, xs), (_, ys) in zip(student, reference, strict=True):
            for name in outputs:
                error.add(xs[name], ys[name])
            for layer, x_name, y_name in zip(layers, inputs, points, strict=True):
                if layer.key in reasons:
                    continue
                for x, y in _pieces(layer, xs[x_name], ys[y_name]):
                    found = _rows_and_targets(layer, x, y)
                    if isinstance(found, str):
                        reasons[layer.key] = found
                        equations.pop(layer.key, None)
                        break
                    rows, targets = found
                    if layer.key not in equations:
                        equations[layer.key] = lstsq.NormalEquations.zeros(
                            rows.shape[1], rows.shape[2], targets.shape[-1]
                        )
                    equations[layer.key].add(rows, targets)
        return equations, reasons

    def _refit(
        self, model: ir.Model, layer: refit_layers.Layer, equations: lstsq.NormalEquations, edits: _Edits
    ) -> dict[str, Any]:
        started = time.perf_counter()
        current = _as_matrix(layer)
        entry: dict[str, Any] = {"teacher_point": layer.output_name, "rows": equations.rows}
        if equations.xty.shape[-1] != current.shape[1]:
            kept = lstsq.kept_columns(equations, current)
            if kept is None:
                entry.update(refit=False, reason="cannot tell which of the input model's channels the layer kept")
                return entry
            equations = equations.columns(kept)
            entry["teacher_channels"] = kept.tolist()
        before = equations.relative_error(current)
        entry["error_before"] = before
        if before <= _MATCHED:
            entry.update(refit=False, reason=f"already matches the input model (relative error {before:.2g})")
            return entry
        keep = current != 0
        if layer.fit_bias:
            keep[..., -1] = True
        method = lstsq.choose_method(keep) if self.options.method == "auto" else self.options.method
        new = lstsq.solve(equations, current, keep, self.options.ridge, method)
        mark = edits.mark()
        _write(model, layer, new, edits)
        # Measured on the weights as stored: after the cast to their dtype or the integer grid.
        after = equations.relative_error(_as_matrix(layer))
        entry.update(error_after=after, method=method, refit=after < before)
        if after >= before:
            edits.revert(model, mark)
            entry["reason"] = f"refit did not lower the error ({before:.4g} -> {after:.4g})"
        entry["seconds"] = time.perf_counter() - started
        logger.info("reconstruct %s: relative error %.4g -> %.4g (%s)", layer.key, before, after, method)
        return entry
