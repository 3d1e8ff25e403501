"""Bias correction (``bias-correction``): the quantized model's per-channel output mean shift, undone.

Rounding weights and activations shifts the mean of a layer's output channels (most for layers
with few input channels, such as depthwise Conv). ``bias-correction=fast`` computes the shift
from the float model's layer inputs (per-channel means of the input and of its rounding error,
times the weight and its rounding error: the layer is linear; NNCF's fast bias correction
measures the same quantity by running the layer). ``measured`` runs both models:

1. The plan is applied to a copy of the float model; both models run the calibration samples and
   every corrected layer's raw output (before its output Q, and before a folded Relu/Clip) is
   averaged per output channel (Conv: axis 1; Gemm: the last axis). The quantized model's
   layers see the quantized upstream, so the shift includes the error that reaches them.
2. The float bias of each layer becomes ``bias - (mean_quantized - mean_float)`` (a Conv or Gemm
   without bias gets one); the plan is then applied to that corrected float model, so the int32
   bias holds the correction. Layers whose bias is not a constant 1-D vector of the output
   channels, and MatMul (no bias input), are left as they were, each named with its reason.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxshrink.activations import KeptBatches, capture
from onnxshrink.context import PassContext
from onnxshrink.ir.constants import constant_array, is_constant
from onnxshrink.ir.graphs import add_initializer, taken_names
from onnxshrink.passes.quantize.plan import GraphView, QuantPlan, quantize_weight
from onnxshrink.passes.quantize.rewrite import apply_plan, drop_unused_initializers
from onnxshrink.passes.quantize.statistics import QRANGE, QParams

__all__ = ["BiasShifts", "correct_biases", "fast_inputs"]

# Samples per capture batch: calibration's, so inputs it kept are the batches a capture would read.
_BATCH = 8


@dataclasses.dataclass
class BiasShifts:
    """The corrected float model, the plan that goes with it, and per-layer shift records."""

    model: ir.Model
    plan: QuantPlan
    layers: dict[str, dict[str, Any]]
    left: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        """The report's ``bias_correction`` field."""
        return {"layers": self.layers, "not_corrected": self.left}


def _bias_problem(node: ir.Node, channels: int) -> str | None:
    if node.op_type not in ("Conv", "Gemm"):
        return f"{node.op_type} has no bias input"
    if node.op_type == "Gemm" and node.attributes.get_int("transA"):
        return "Gemm with transA=1"
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        bias = node.inputs[2]
        array = constant_array(bias)
        if array is None or not is_constant(bias) or not bias.is_initializer():
            return "bias is not a constant initializer"
        if array.dtype != np.float32 or array.size != channels or (array.ndim > 1 and array.shape[-1] != channels):
            return f"bias of shape {list(array.shape)} is not one value per output channel"
    return None


def _channel_sums(
    context: PassContext, model: ir.Model, names: dict[str, str], kinds: dict[str, str], pass_name: str, samples: int
) -> tuple[dict[str, np.ndarray], int]:
    """Per-channel sums of the named outputs over the calibration samples, and the sample count."""
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for _, arrays in capture(
        context, model, list(names.values()), pass_name=pass_name, samples=samples, batch_size=_BATCH
    ):
        for key, name in names.items():
            array = np.asarray(arrays[name], dtype=np.float64)
            axis = 1 if kinds[key] == "Conv" else array.ndim - 1
            moved = np.moveaxis(array, axis, 0).reshape(array.shape[axis], -1)
            sums[key] = sums.get(key, 0.0) + moved.sum(axis=1)
            counts[key] = counts.get(key, 0) + moved.shape[1]
    return {key: sums[key] / counts[key] for key in sums}, sum(counts.values())


def _candidates(view: GraphView, plan: QuantPlan) -> tuple[dict[str, int], dict[str, str]]:
    """The layers whose bias can take a correction, with their output channels; the others with why."""
    candidates: dict[str, int] = {}
    left: dict[str, str] = {}
    for key, layer in plan.layers.items():
        if layer.weight is None:
            continue
        if key not in view.nodes:
            left[key] = "in a subgraph: bias correction works on the main graph"
            continue
        node = view.nodes[key]
        weight = constant_array(node.inputs[1])
        assert weight is not None
        axis = layer.weight.axis if layer.weight.axis is not None else (0 if node.op_type == "Conv" else 1)
        if node.op_type == "Gemm" and layer.weight.axis is None:
            axis = 0 if node.attributes.get_int("transB") else 1
        channels = int(weight.shape[axis])
        why = _bias_problem(node, channels)
        if why is None and not node.outputs[0].name:
            why = "output has no name to capture"
        if why is not None:
            left[key] = why
        else:
            candidates[key] = channels
    return candidates, left


def _input_names(view: GraphView, keys: Iterable[str]) -> dict[str, str]:
    """Each layer's activation input (input 0) by name, '' when it has none."""
    return {key: (value.name or "") if (value := view.nodes[key].inputs[0]) is not None else "" for key in keys}


def fast_inputs(float_model: ir.Model, plan: QuantPlan) -> list[str]:
    """The activations ``fast`` reads: the inputs of the layers of ``plan`` whose bias can be corrected.

    Calibration keeps them (:class:`~onnxshrink.activations.KeptBatches`) for :func:`correct_biases`
    when they are small; a plan with fewer layers reads a subset.
    """
    view = GraphView(float_model.graph)
    candidates, _ = _candidates(view, plan)
    return [name for name in dict.fromkeys(_input_names(view, candidates).values()) if name]


def correct_biases(
    context: PassContext,
    float_model: ir.Model,
    plan: QuantPlan,
    weight_bits: int,
    *,
    pass_name: str,
    samples: int,
    int32_bias: bool,
    method: str = "measured",
    kept: KeptBatches | None = None,
    rounded: Mapping[str, np.ndarray] | None = None,
) -> BiasShifts:
    """Measures each quantized layer's output mean shift and folds it into a copy of ``float_model``.

    Args:
        context: The pipeline context (calibration data, sessions).
        float_model: The float model the plan was made for (not changed).
        plan: The static plan.
        weight_bits: Weight bits the plan is applied with (7 with reduce-range).
        pass_name: For calibration-data errors.
        samples: Calibration samples read.
        int32_bias: Whether a newly added bias is stored int32 (ort-cpu, ort-cuda) or float.
        method: ``measured`` (both models run) or ``fast`` (float inputs, weight and input error).
        kept: ``fast``: the layer inputs as calibration captured them from ``float_model``, batch
            by batch (the same batches a capture would read); when they hold every input needed,
            no model runs.
        rounded: GPTQ int8 levels by weight name (``rounding=gptq``), in place of nearest rounding's.
    """
    view = GraphView(float_model.graph)
    candidates, left = _candidates(view, plan)
    if not candidates:
        return BiasShifts(float_model, plan, {}, left)
    corrected = float_model.clone()
    if method == "fast":
        float_means, quantized_means = _fast_shifts(
            context, float_model, plan, candidates, weight_bits, pass_name, samples, kept, rounded or {}
        )
        return _fold_shifts(corrected, plan, candidates, float_means, quantized_means, left, int32_bias)
    quantized = float_model.clone()
    quantized_nodes = GraphView(quantized.graph).nodes
    outputs = {key: quantized_nodes[key].outputs[0] for key in candidates}
    apply_plan(quantized, plan, weight_bits, rounded)
    kinds = {key: view.nodes[key].op_type for key in candidates}
    float_names = {key: view.nodes[key].outputs[0].name or "" for key in candidates}
    quantized_names = {key: value.name or "" for key, value in outputs.items()}
    float_means, _ = _channel_sums(context, float_model, float_names, kinds, pass_name, samples)
    quantized_means, _ = _channel_sums(context, quantized, quantized_names, kinds, pass_name, samples)
    return _fold_shifts(corrected, plan, candidates, float_means, quantized_means, left, int32_bias)


def _fake_quantized(array: np.ndarray, params: QParams) -> np.ndarray:
    low, high = QRANGE[params.dtype]
    q = np.clip(np.rint(array / params.scale) + params.zero_point, low, high)
    return (q - params.zero_point) * params.scale


def _fast_shifts(
    context: PassContext,
    float_model: ir.Model,
    plan: QuantPlan,
    candidates: dict[str, int],
    weight_bits: int,
    pass_name: str,
    samples: int,
    kept: KeptBatches | None,
    rounded: Mapping[str, np.ndarray],
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Each layer's output mean shift from float inputs: weight rounding and input rounding error.

    The inputs come from ``kept`` when it holds them all, else from a capture of ``float_model``.

    The layer is linear, so the per-channel output mean moves by ``dW . mean(x) + Wq . mean(fq(x) - x)``
    (Conv: kernel taps summed, zero padding at borders ignored).

    Returns:
        The float and the quantized per-channel output means, the same way estimated.
    """
    view = GraphView(float_model.graph)
    nodes = {key: view.nodes[key] for key in candidates}
    names = _input_names(view, candidates)
    wanted = list(dict.fromkeys(names.values()))
    batches: Iterable[dict[str, np.ndarray]]
    if kept is not None and kept.holds(wanted, _BATCH):
        batches = kept.replay()
    else:
        batches = (
            arrays
            for _, arrays in capture(
                context, float_model, wanted, pass_name=pass_name, samples=samples, batch_size=_BATCH
            )
        )
    sums: dict[str, np.ndarray] = {}
    errors: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for arrays in batches:
        for key, name in names.items():
            array = np.asarray(arrays[name], dtype=np.float64)
            axis = 1 if nodes[key].op_type == "Conv" else array.ndim - 1
            moved = np.moveaxis(array, axis, 0).reshape(array.shape[axis], -1)
            activation = plan.activations.get(name)
            error = _fake_quantized(moved, activation.params) - moved if activation is not None else 0.0 * moved
            sums[key] = sums.get(key, 0.0) + moved.sum(axis=1)
            errors[key] = errors.get(key, 0.0) + error.sum(axis=1)
            counts[key] = counts.get(key, 0) + moved.shape[1]
    outputs: dict[str, np.ndarray] = {}
    shifts: dict[str, np.ndarray] = {}
    for key, node in nodes.items():
        mean, error = sums[key] / counts[key], errors[key] / counts[key]
        weight = constant_array(node.inputs[1])
        assert weight is not None
        layer_weight = plan.layers[key].weight
        assert layer_weight is not None
        q, scales = quantize_weight(weight.astype(np.float32), layer_weight.axis, weight_bits)
        weight_value = node.inputs[1]
        assert weight_value is not None
        q = rounded.get(str(weight_value.name), q)
        shape = [1] * weight.ndim
        if layer_weight.axis is not None:
            shape[layer_weight.axis] = -1
        wq = q.astype(np.float64) * scales.reshape(shape)
        delta = wq - weight
        if node.op_type == "Conv":
            group = node.attributes.get_int("group", 1)
            out_channels, per_group = weight.shape[0], weight.shape[1]
            taps = tuple(range(2, weight.ndim))
            delta_sum, wq_sum = delta.sum(axis=taps), wq.sum(axis=taps)  # [Cout, Cin/group]
            index = (np.arange(out_channels)[:, None] // (out_channels // group)) * per_group + np.arange(per_group)
            shift = (delta_sum * mean[index]).sum(axis=1) + (wq_sum * error[index]).sum(axis=1)
            output = (weight.sum(axis=taps) * mean[index]).sum(axis=1)
        else:
            trans_b = node.op_type == "Gemm" and bool(node.attributes.get_int("transB"))
            delta_kn, wq_kn = (delta.T, wq.T) if trans_b else (delta, wq)
            shift = mean @ delta_kn + error @ wq_kn
            output = mean @ (weight.T if trans_b else weight)
        bias = constant_array(node.inputs[2]) if len(node.inputs) > 2 else None
        outputs[key] = output + (bias.reshape(-1) if bias is not None else 0.0)
        shifts[key] = outputs[key] + shift
    return outputs, shifts


def _fold_shifts(
    corrected: ir.Model,
    plan: QuantPlan,
    channels: dict[str, int],
    float_means: dict[str, np.ndarray],
    quantized_means: dict[str, np.ndarray],
    left: dict[str, str],
    int32_bias: bool,
) -> BiasShifts:
    nodes = GraphView(corrected.graph).nodes
    taken = taken_names(corrected)
    layers: dict[str, dict[str, Any]] = {}
    new_plan = dataclasses.replace(plan, layers=dict(plan.layers))
    for key in channels:
        shift = quantized_means[key] - float_means[key]
        node = nodes[key]
        scale = float(np.mean(np.abs(float_means[key]))) or 1.0
        layers[key] = {
            "max_abs_shift": float(np.max(np.abs(shift))),
            "mean_abs_shift": float(np.mean(np.abs(shift))),
            "relative_to_mean_output": float(np.mean(np.abs(shift)) / scale),
        }
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            bias = node.inputs[2]
            array = constant_array(bias)
            assert array is not None
            new = (array.astype(np.float64) - shift.reshape(array.shape)).astype(np.float32)
            value = add_initializer(corrected.graph, taken, f"{bias.name}_corrected", new)
            node.replace_input_with(2, value)
        else:
            new = (-shift).astype(np.float32)
            value = add_initializer(corrected.graph, taken, f"{node.name or node.op_type}_bias_corrected", new)
            node.resize_inputs(3)
            node.replace_input_with(2, value)
            new_plan.layers[key] = dataclasses.replace(plan.layers[key], bias="int32" if int32_bias else "float")
    drop_unused_initializers(corrected.graph)
    return BiasShifts(corrected, new_plan, layers, left)
