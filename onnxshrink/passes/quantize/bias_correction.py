"""Bias correction (``bias-correction``): the quantized model's per-channel output mean shift, undone.

Rounding weights and activations shifts the mean of a layer's output channels (most for layers
with few input channels, such as depthwise Conv). The shift is measured, not modelled:

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
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxshrink.activations import capture
from onnxshrink.context import PassContext
from onnxshrink.ir.constants import constant_array, is_constant
from onnxshrink.ir.graphs import add_initializer, taken_names
from onnxshrink.passes.quantize.plan import GraphView, QuantPlan
from onnxshrink.passes.quantize.rewrite import apply_plan, drop_unused_initializers

__all__ = ["BiasShifts", "correct_biases"]


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
    for _, arrays in capture(context, model, list(names.values()), pass_name=pass_name, samples=samples, batch_size=8):
        for key, name in names.items():
            array = np.asarray(arrays[name], dtype=np.float64)
            axis = 1 if kinds[key] == "Conv" else array.ndim - 1
            moved = np.moveaxis(array, axis, 0).reshape(array.shape[axis], -1)
            sums[key] = sums.get(key, 0.0) + moved.sum(axis=1)
            counts[key] = counts.get(key, 0) + moved.shape[1]
    return {key: sums[key] / counts[key] for key in sums}, sum(counts.values())


def correct_biases(
    context: PassContext,
    float_model: ir.Model,
    plan: QuantPlan,
    weight_bits: int,
    *,
    pass_name: str,
    samples: int,
    int32_bias: bool,
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
    """
    view = GraphView(float_model.graph)
    candidates: dict[str, int] = {}
    left: dict[str, str] = {}
    for key, layer in plan.layers.items():
        if layer.weight is None:
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
    if not candidates:
        return BiasShifts(float_model, plan, {}, left)
    quantized = float_model.clone()
    quantized_nodes = GraphView(quantized.graph).nodes
    outputs = {key: quantized_nodes[key].outputs[0] for key in candidates}
    apply_plan(quantized, plan, weight_bits)
    kinds = {key: view.nodes[key].op_type for key in candidates}
    float_names = {key: view.nodes[key].outputs[0].name or "" for key in candidates}
    quantized_names = {key: value.name or "" for key, value in outputs.items()}
    float_means, _ = _channel_sums(context, float_model, float_names, kinds, pass_name, samples)
    quantized_means, _ = _channel_sums(context, quantized, quantized_names, kinds, pass_name, samples)
    corrected = float_model.clone()
    return _fold_shifts(corrected, plan, candidates, float_means, quantized_means, left, int32_bias)


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
