"""SmoothQuant-style scale migration (``smooth``): activation outlier channels moved into the weights.

A MatMul/Gemm ``Y = X W`` whose input ``X`` has a few channels far larger than the rest wastes
the per-tensor activation scale on them. For a positive vector ``s`` over the input channels,
``Y = (X / s) (s W)`` exactly (Xiao et al., SmoothQuant, 2023); ``s_j = max|X_j|^a / max|W_j|^(1-a)``
balances the two ranges, the weight keeping its per-output-channel scales. Rules:

1. Candidates are the activation tensors read by MatMul/Gemm layers that the plan quantizes (main
   graph; constant 2-D weight ``[K, N]``, or ``[N, K]`` for Gemm ``transB=1``); every such layer
   reading the tensor is smoothed with the same ``s`` (``max|W_j|`` over all of them).
2. Their per-channel extremes and a bounded sample of rows come from one capture over the
   calibration samples (``statistics.ChannelStats``): the calibration run's, of the model
   before smoothing (``calibrate=minmax`` without a budget: a smoothed tensor's range is then
   its channel extremes times ``1 / s``, :func:`smoothed_extremes`), or else a capture of its
   own before calibration, so that the smoothed tensors' histograms are those of the smoothed model.
3. ``smooth=auto`` smooths a tensor with the ``a`` of ``GRID`` that gives its layers the lowest
   relative output error on the sampled rows (activation and weight fake-quantized as the plan
   will quantize them), only when that error is at least ``MIN_GAIN`` below the error without
   smoothing (a smaller gain does not pay for a Mul) and the tensor was seen in at least
   ``MIN_ROWS`` rows (tokens or samples: maxima from fewer rows fit the calibration data so
   closely that balanced channels clip on new data). Neither the producer nor the outlier ratio
   (largest channel maximum over the median one, reported) gates it: on BERT-base with random
   weights the ratios are 1.4-4 and smoothing still lowers every layer's error (the weight rows'
   ranges even out too). ``smooth=A`` (a number in (0, 1)) smooths every candidate with ``a = A``.
4. ``X / s`` is folded into the producer when it is a LayerNormalization (last axis) whose output
   only these layers read (new scale and bias, divided by ``s``), or a Mul by a constant
   per-channel vector whose output only these layers read (a new vector; a scalar stays, because
   onnxruntime fuses BERT's GELU, which ends in ``* 0.5``, only with the scalar); otherwise a
   ``Mul`` by the constant ``1 / s`` is inserted before the layers (other readers, such as BERT's
   residual Add, keep reading ``X``). Each weight's rows are multiplied by ``s`` in a new
   initializer.
5. ``smooth=auto`` leaves alone a tensor that the plan makes int8 before the layer's own Q (a
   quantized node's output, or data movement after one): a Mul there would add a
   dequantize/quantize pair. A chain of data movement after a float op only moves its Q.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Collection, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxshrink.activations import capture
from onnxshrink.context import PassContext
from onnxshrink.ir.constants import constant_array
from onnxshrink.ir.graphs import add_initializer, fresh_name, is_onnx_op, taken_names
from onnxshrink.passbase import NoMatch
from onnxshrink.passes.quantize.plan import ADDED_NODE, GraphView, constant_initializer
from onnxshrink.passes.quantize.rewrite import drop_unused_initializers
from onnxshrink.passes.quantize.statistics import MIN_SCALE, QRANGE, ChannelStats, QDtype, QParams, qparams

__all__ = [
    "GRID",
    "MIN_GAIN",
    "MIN_ROWS",
    "Candidates",
    "SmoothChoice",
    "apply_smoothing",
    "candidates",
    "choose_scales",
    "smooth_captured",
    "smooth_model",
    "smoothed_extremes",
]

# Migration strengths tried by smooth=auto (SmoothQuant uses 0.5 for most models, up to 0.75-0.85).
GRID = (0.25, 0.4, 0.5, 0.6, 0.75)
# s stays within these bounds: a channel of zeros (or a weight row of zeros) keeps s = 1.
_SCALE_BOUNDS = (1e-4, 1e4)
# smooth=auto: the relative output error must drop by at least this share.
MIN_GAIN = 0.02
# smooth=auto: per-channel maxima from fewer rows (tokens, samples) fit the calibration data too
# closely; balanced channels then clip on new data (a 32-sample test graph lost cosine).
MIN_ROWS = 1024
_ROWS = 256
# Threads computing the strengths' errors (at most one per core).
_WORKERS = 4


@dataclasses.dataclass
class SmoothChoice:
    """One activation tensor, the layers that read it, and the scales chosen (None: left as is)."""

    tensor: str
    layers: tuple[str, ...]
    producer: str
    outlier_ratio: float
    alpha: float | None = None
    scales: np.ndarray | None = None
    errors: dict[str, float] = dataclasses.field(default_factory=dict)
    reason: str | None = None
    applied: str | None = None
    smoothed: str | None = None  # the value holding X / s once applied: the tensor, or the inserted Mul's output

    def to_json(self) -> dict[str, Any]:
        """One layer's entry in the report's ``smooth.layers``."""
        return {
            "tensor": self.tensor,
            "producer": self.producer,
            "outlier_ratio": round(self.outlier_ratio, 3) if math.isfinite(self.outlier_ratio) else None,
            "alpha": self.alpha,
            "relative_error": {key: float(f"{value:.4g}") for key, value in self.errors.items()},
            "applied": self.applied,
        }


def _weight_kn(node: ir.Node) -> np.ndarray:
    """The layer's weight as ``[K, N]`` (input channels first)."""
    array = constant_array(node.inputs[1])
    assert array is not None
    trans_b = node.op_type == "Gemm" and bool(node.attributes.get_int("transB"))
    return np.asarray(array.T if trans_b else array, dtype=np.float32)


def _candidates(view: GraphView, layer_keys: Sequence[str]) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Rule 1: activation tensor -> the quantized MatMul/Gemm layers reading it."""
    groups: dict[str, list[str]] = {}
    skipped: dict[str, str] = {}
    for key in layer_keys:
        node = view.nodes.get(key)
        if node is None or not is_onnx_op(node, "MatMul", "Gemm"):
            continue
        if constant_array(node.inputs[1] if len(node.inputs) > 1 else None) is None:
            skipped[key] = "weight is not a constant (a MatMul of two activations)"
            continue
        source = node.inputs[0]
        if source is None or not source.name:
            skipped[key] = "activation input has no name to capture"
            continue
        groups.setdefault(source.name, []).append(key)
    return groups, skipped


def _fake_quantized(array: np.ndarray, params: QParams) -> np.ndarray:
    low, high = QRANGE[params.dtype]
    scale = np.float32(params.scale)
    q = np.clip(np.rint(array / scale) + params.zero_point, low, high)
    return ((q - params.zero_point) * scale).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class ErrorModel:
    """How the plan will quantize a smoothed layer: activation type and weight bits."""

    dtype: QDtype
    symmetric: bool
    weight_bits: int
    per_channel: bool


def migration_scales(x_max: np.ndarray, w_max: np.ndarray, alpha: float) -> np.ndarray:
    """``s_j = max|X_j|^alpha / max|W_j|^(1-alpha)``, 1 where either maximum is 0, within bounds."""
    x_max, w_max = x_max.astype(np.float64), w_max.astype(np.float64)
    valid = (x_max > 0) & (w_max > 0) & np.isfinite(x_max) & np.isfinite(w_max)
    safe_x, safe_w = np.where(valid, x_max, 1.0), np.where(valid, w_max, 1.0)
    scales = np.where(valid, safe_x**alpha / safe_w ** (1.0 - alpha), 1.0)
    return np.clip(scales, *_SCALE_BOUNDS).astype(np.float32)


def _fake_quantized_weight(weight: np.ndarray, model: ErrorModel) -> np.ndarray:
    """``weight`` ``[K, N]`` rounded as the plan rounds it: symmetric, per column (or per tensor).

    Rounded in place (no temporary the size of the weight): pass an array of your own.
    """
    limit = np.float32(2 ** (model.weight_bits - 1) - 1)
    axis = 0 if model.per_channel else None
    amax = np.maximum(weight.max(axis=axis, keepdims=True), -weight.min(axis=axis, keepdims=True))  # max |w|
    scale = np.where(amax > MIN_SCALE, amax / limit, np.float32(1.0)).astype(np.float32)
    np.divide(weight, scale, out=weight)
    np.rint(weight, out=weight)
    np.clip(weight, -limit, limit, out=weight)
    weight *= scale
    return weight


@dataclasses.dataclass
class _LayerRows:
    """The sampled rows of one tensor with its layers' weights and exact outputs, computed once."""

    rows: np.ndarray
    weights: list[np.ndarray]
    exact: list[np.ndarray]
    reference: float

    @classmethod
    def of(cls, rows: np.ndarray, weights: list[np.ndarray], per_channel: bool) -> _LayerRows:
        """The rows and the layers' weights, side by side as one ``[K, sum N]`` matrix when per channel.

        Each column has its own scale either way, so one product serves all the layers.
        """
        groups = [np.concatenate(weights, axis=1)] if per_channel and len(weights) > 1 else weights
        exact = [rows @ weight for weight in groups]
        return cls(rows, groups, exact, float(sum(np.square(e).sum() for e in exact)))


def _relative_error(stats: ChannelStats, layer_rows: _LayerRows, scales: np.ndarray | None, model: ErrorModel) -> float:
    """The layers' squared output error over their squared output on the rows, both sides fake-quantized."""
    assert stats.minimum is not None and stats.maximum is not None
    rows = layer_rows.rows
    s = np.ones(rows.shape[1], np.float32) if scales is None else scales
    low = float((stats.minimum / s).min())
    high = float((stats.maximum / s).max())
    activation = _fake_quantized(rows / s, qparams(low, high, model.dtype, symmetric=model.symmetric))
    error = 0.0
    for weight, exact in zip(layer_rows.weights, layer_rows.exact, strict=True):
        difference = activation @ _fake_quantized_weight(weight * s[:, None], model)
        difference -= exact
        error += float(np.square(difference, out=difference).sum())
    return error / layer_rows.reference if layer_rows.reference > 0 else 0.0


def _errors(
    stats: ChannelStats, weights: list[np.ndarray], w_max: np.ndarray, alphas: Sequence[float], model: ErrorModel
) -> dict[str, float]:
    """The relative output error of a tensor's layers without smoothing and with each strength."""
    rows = _LayerRows.of(stats.sample(), weights, model.per_channel)
    errors = {"none": _relative_error(stats, rows, None, model)}
    for alpha in alphas:
        errors[f"{alpha:g}"] = _relative_error(stats, rows, migration_scales(stats.abs_max, w_max, alpha), model)
    return errors


def choose_scales(
    view: GraphView,
    groups: dict[str, list[str]],
    stats: dict[str, ChannelStats],
    setting: str,
    model: ErrorModel,
) -> list[SmoothChoice]:
    """Rule 3: the migration scales of each candidate tensor (or why it is left as is).

    The tensors' errors are computed on a few threads (numpy's rounding runs on one core, the
    products on all): each tensor's numbers are the same as computed alone.
    """
    choices: list[SmoothChoice] = []
    alphas = GRID if setting == "auto" else (float(setting),)
    computed: list[tuple[SmoothChoice, np.ndarray, Future[dict[str, float]]]] = []
    with ThreadPoolExecutor(max_workers=min(_WORKERS, os.cpu_count() or 1)) as pool:
        for tensor, keys in groups.items():
            value = view.values[tensor]
            producer = value.producer()
            producer_op = producer.op_type if producer is not None else "graph input"
            channel_stats = stats[tensor]
            choice = SmoothChoice(tensor, tuple(keys), producer_op, channel_stats.outlier_ratio)
            choices.append(choice)
            weights = [_weight_kn(view.nodes[key]) for key in keys]
            x_max = channel_stats.abs_max
            if x_max.size == 0:
                choice.reason = "no finite calibration value"
                continue
            if any(weight.shape[0] != x_max.size for weight in weights):
                choice.reason = f"weight rows differ from the {x_max.size} input channels"
                continue
            if setting == "auto" and channel_stats.seen < MIN_ROWS:
                choice.reason = (
                    f"only {channel_stats.seen} calibration rows < {MIN_ROWS}: too few to trust channel maxima"
                )
                continue
            w_max = np.max([np.abs(weight).max(axis=1) for weight in weights], axis=0)
            computed.append((choice, w_max, pool.submit(_errors, channel_stats, weights, w_max, alphas, model)))
    for choice, w_max, errors in computed:
        choice.errors.update(errors.result())
        best = min(alphas, key=lambda a: choice.errors[f"{a:g}"])
        if setting == "auto" and choice.errors[f"{best:g}"] > (1.0 - MIN_GAIN) * choice.errors["none"]:
            choice.reason = (
                f"no migration strength of the grid lowers the output error ({choice.errors['none']:.3g}, smooth=auto)"
            )
            continue
        choice.alpha = best
        choice.scales = migration_scales(stats[choice.tensor].abs_max, w_max, best)
    return choices


def _foldable_layer_norm(value: ir.Value, layers: list[ir.Node]) -> ir.Node | None:
    """Rule 4: the LayerNormalization whose scale and bias can take ``1 / s``, or None."""
    producer = value.producer()
    if producer is None or not is_onnx_op(producer, "LayerNormalization") or value.is_graph_output():
        return None
    if producer.outputs[0] is not value or any(user not in layers for user, _ in value.uses()):
        return None
    if producer.attributes.get_int("axis", -1) not in (-1, len(value.shape or ()) - 1):
        return None
    for index in (1, 2):
        parameter = producer.inputs[index] if len(producer.inputs) > index else None
        if parameter is None:
            continue
        if isinstance(constant_initializer(parameter, "scale"), NoMatch):
            return None
        if constant_array(parameter) is None:
            return None
        if np.asarray(constant_array(parameter)).ndim != 1:
            return None
    return producer


def _foldable_mul(value: ir.Value, layers: list[ir.Node], channels: int) -> tuple[ir.Node, int] | None:
    """Rule 4: a Mul by a constant per-channel vector that can take ``1 / s``, and the constant's index."""
    producer = value.producer()
    if producer is None or not is_onnx_op(producer, "Mul") or value.is_graph_output() or len(producer.inputs) != 2:
        return None
    if any(user not in layers for user, _ in value.uses()):
        return None
    for index in (0, 1):
        constant = producer.inputs[index]
        other = producer.inputs[1 - index]
        if constant is None or other is None or isinstance(constant_initializer(constant, "factor"), NoMatch):
            continue
        array = constant_array(constant)
        if array is None or array.dtype != np.float32:
            continue  # a shared constant is fine: this Mul gets a new one
        # One factor per channel on the last axis (the new one keeps the product's shape). A scalar
        # stays: onnxruntime fuses GELU's x * 0.5 * (1 + erf) only with the scalar 0.5 (BiasGelu);
        # folding 1/s there unfused it and BERT-base ran 0.81x at batch 8.
        if array.size == channels and array.shape[-1] == channels and channels > 1:
            return producer, index
    return None


def apply_smoothing(model: ir.Model, choices: list[SmoothChoice]) -> None:
    """Rule 4, in place: ``X / s`` folded into a LayerNormalization or a new Mul, weight rows times ``s``."""
    view = GraphView(model.graph)
    taken = taken_names(model)
    graph = model.graph
    for choice in choices:
        if choice.scales is None:
            continue
        scales = choice.scales
        value = view.values[choice.tensor]
        layers = [view.nodes[key] for key in choice.layers]
        norm = _foldable_layer_norm(value, layers)
        if norm is not None:
            for index in (1, 2):
                parameter = norm.inputs[index] if len(norm.inputs) > index else None
                if parameter is None:
                    continue
                array = np.asarray(constant_array(parameter), dtype=np.float32)
                new = add_initializer(graph, taken, f"{parameter.name}_smoothed", (array / scales).astype(np.float32))
                norm.replace_input_with(index, new)
            choice.applied, choice.smoothed = f"folded into {view.key(norm)}", choice.tensor
        elif (factor := _foldable_mul(value, layers, scales.size)) is not None:
            mul_node, index = factor
            constant = mul_node.inputs[index]
            assert constant is not None
            array = np.asarray(constant_array(constant), dtype=np.float32)
            folded = array.reshape(-1) / scales
            if array.ndim > 1:
                folded = folded.reshape((1,) * (array.ndim - 1) + (-1,))
            mul_node.replace_input_with(
                index, add_initializer(graph, taken, f"{constant.name}_smoothed", folded.astype(np.float32))
            )
            choice.applied, choice.smoothed = f"folded into {view.key(mul_node)}", choice.tensor
        else:
            inverse = add_initializer(graph, taken, f"{choice.tensor}_smooth_scale", (1.0 / scales).astype(np.float32))
            mul = ir.node("Mul", [value, inverse], name=fresh_name(taken, f"{choice.tensor}_smooth"))
            mul.meta[ADDED_NODE] = True
            mul.outputs[0].name = fresh_name(taken, f"{choice.tensor}_smoothed")
            mul.outputs[0].type = value.type
            mul.outputs[0].shape = value.shape
            first = min(layers, key=lambda node: list(graph).index(node))
            graph.insert_before(first, mul)
            for layer in layers:
                layer.replace_input_with(0, mul.outputs[0])
            choice.applied, choice.smoothed = f"Mul by 1/s inserted ({mul.name})", mul.outputs[0].name
        for layer in layers:
            weight = layer.inputs[1]
            assert weight is not None
            array = np.asarray(constant_array(weight), dtype=np.float32)
            trans_b = layer.op_type == "Gemm" and bool(layer.attributes.get_int("transB"))
            scaled = array * (scales[None, :] if trans_b else scales[:, None])
            layer.replace_input_with(1, add_initializer(graph, taken, f"{weight.name}_smoothed", scaled))
    drop_unused_initializers(graph)


@dataclasses.dataclass
class Candidates:
    """Rules 1 and 5: the tensors to smooth, the layers reading each, and their statistics to fill.

    Attributes:
        setting: ``auto`` or a migration strength in (0, 1).
        groups: Activation tensor -> the layers reading it.
        skipped: Layer -> why it gets no smoothing.
        stats: Activation tensor -> its per-channel statistics, filled batch by batch by a capture
            of the float model (smoothing's own, or calibration's: the same batches).
    """

    setting: str
    groups: dict[str, list[str]]
    skipped: dict[str, str]
    stats: dict[str, ChannelStats]


def candidates(
    model: ir.Model,
    layer_keys: Sequence[str],
    setting: str,
    *,
    int8_already: Collection[str] = (),
    samples: int,
    batch_size: int,
) -> Candidates:
    """Rules 1 and 5 on ``model``: what to capture, with empty statistics sized for ``samples``."""
    groups, skipped = _candidates(GraphView(model.graph), layer_keys)
    if setting == "auto":
        for name in [name for name in groups if name in int8_already]:
            for key in groups.pop(name):
                skipped[key] = f"'{name}' is int8 already: a Mul by 1/s would add a dequantize/quantize pair"
    per_batch = max(1, math.ceil(_ROWS / max(1, math.ceil(samples / batch_size))))
    return Candidates(setting, groups, skipped, {name: ChannelStats(_ROWS, per_batch) for name in groups})


def smooth_captured(
    model: ir.Model, found: Candidates, error_model: ErrorModel
) -> tuple[dict[str, Any], list[SmoothChoice]]:
    """Rules 3-4 on ``model`` (in place) from the filled statistics of ``found``.

    Returns:
        The report's ``smooth`` record, and every candidate tensor's choice.
    """
    view = GraphView(model.graph)
    choices = choose_scales(view, found.groups, found.stats, found.setting, error_model)
    apply_smoothing(model, choices)
    layers: dict[str, dict[str, Any]] = {}
    skipped = dict(found.skipped)
    for choice in choices:
        for key in choice.layers:
            if choice.scales is None:
                skipped[key] = str(choice.reason)
            else:
                layers[key] = choice.to_json()
    return {"setting": found.setting, "layers": layers, "not_smoothed": skipped}, choices


def smoothed_extremes(choice: SmoothChoice, stats: ChannelStats) -> tuple[float, float] | None:
    """The extremes of ``X / s`` where the smoothed model holds it, from ``X``'s per-channel extremes.

    ``x * (1 / s)`` is monotonic in ``x`` for ``s > 0``, so each channel's extreme maps to the
    product's extreme: exact where a Mul by ``1 / s`` was inserted; where ``1 / s`` was folded into
    a LayerNormalization or Mul, the smoothed model rounds its product once more (float rounding).
    None when ``X`` was not smoothed, or some of its rows held a non-finite value (left out of
    the channel extremes, so the tensor's own extremes are unknown).
    """
    if choice.scales is None or stats.minimum is None or stats.maximum is None or stats.dropped:
        return None
    inverse = (1.0 / choice.scales).astype(np.float32)
    return float((stats.minimum * inverse).min()), float((stats.maximum * inverse).max())


def smooth_model(
    context: PassContext,
    model: ir.Model,
    layer_keys: Sequence[str],
    setting: str,
    error_model: ErrorModel,
    *,
    int8_already: Collection[str] = (),
    pass_name: str,
    samples: int,
    batch_size: int,
) -> dict[str, Any]:
    """Rules 1-5 on ``model`` (in place), with a capture of its own; returns the report's ``smooth`` record.

    Args:
        context: The pipeline context (calibration data, sessions).
        model: The float model, changed in place.
        layer_keys: The layers the plan quantizes.
        setting: ``auto`` or a migration strength in (0, 1).
        error_model: How the plan quantizes (for the output error of each strength).
        pass_name: For calibration-data errors.
        samples: Calibration samples read.
        batch_size: Samples per capture batch.
        int8_already: Tensors the plan makes int8 before the layers' own Q; ``auto`` leaves them.
    """
    found = candidates(model, layer_keys, setting, int8_already=int8_already, samples=samples, batch_size=batch_size)
    if found.groups:
        for _, arrays in capture(
            context, model, list(found.groups), pass_name=pass_name, samples=samples, batch_size=batch_size
        ):
            for name, channel_stats in found.stats.items():
                channel_stats.update(arrays[name])
    record, _ = smooth_captured(model, found, error_model)
    return record
