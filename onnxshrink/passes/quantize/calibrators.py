"""A calibrator per activation tensor, chosen by the output error of the layers reading it (``calibrate=auto``).

One global calibrator fits no model everywhere: a tensor with a few far outliers loses most of its
resolution to ``minmax``, while clipping a tensor whose large values matter (a classifier's last
features) costs more than it gains. Rules:

1. Candidates: ``minmax``, ``percentile`` at ``PERCENTILES``, ``entropy`` and ``mse``; equal
   ranges are tried once.
2. Readers: the quantized Conv/Gemm/MatMul layers of the main graph with a constant weight whose
   input takes the tensor's range (directly, or through data movement such as MaxPool or
   Reshape: the plan's range root). Their inputs are split during the same calibration stream
   (no second pass): whole samples, at most half of each batch, are kept to judge the
   candidates (spread over the batches, at most ``SAMPLE_BYTES`` in all), and the other rows go
   into a histogram of their own that the candidates' ranges are fitted on (statistics.py), so
   that a range is never judged on the values it was fitted to. A reader is judged on as many
   kept samples as keep its float output within ``OUTPUT_BYTES``.
3. Error: each reader runs alone in onnxruntime on its sampled input, once in float and once
   per candidate with the input fake-quantized by the candidate's scale and zero point and the
   weight rounded as the plan rounds it (bits, per-channel axis). A candidate's error is the
   squared output difference over the squared float output, summed over the readers. With
   bias correction on, each Conv/Gemm output channel's mean error is left out (the correction
   removes it).
4. Choice: the candidate with the lowest error; ``minmax`` stays unless another is at least
   ``MIN_GAIN`` lower (a smaller gain measured on a sample is not worth a clipped range). The
   chosen calibrator then takes its range from the statistics of every calibration row.
   Tensors that no such layer reads (inputs of Add, Concat, pooling, or a MatMul of two
   activations), or inside If/Loop/Scan bodies, keep ``minmax``; the report says why.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxshrink.context import PassContext
from onnxshrink.ir.constants import constant_array
from onnxshrink.passes.quantize.plan import GraphView, QuantPlan, quantize_weight
from onnxshrink.passes.quantize.smooth import ErrorModel, _fake_quantized
from onnxshrink.passes.quantize.statistics import TensorStats, calibrated_range, qparams

__all__ = [
    "MIN_GAIN",
    "OUTPUT_BYTES",
    "PERCENTILES",
    "SAMPLE_BYTES",
    "InputSample",
    "RangeChoice",
    "choose_ranges",
    "layer_readers",
]

# Percentile levels tried (the percentile calibrator's default is 99.99).
PERCENTILES = (99.9, 99.99, 99.999)
# A candidate replaces minmax only when its relative output error is at least this share lower.
MIN_GAIN = 0.02
# Sampled reader inputs, all tensors together (each keeps at least one sample).
SAMPLE_BYTES = 256 << 20
# A reader's float output on the rows it is judged on (at least one sample), which bounds its
# time too: magika's first Dense layer turns 2 KB of input per sample into 1 MB of output, and
# with 32 MiB resnet18's choice took 94 s (one Conv run per candidate dominates).
OUTPUT_BYTES = 8 << 20


@dataclasses.dataclass(frozen=True)
class Reader:
    """A quantized layer with a constant weight reading a tensor's range: its key and input tensor."""

    key: str
    input: str


def layer_readers(model: ir.Model, plan: QuantPlan) -> dict[str, list[Reader]]:
    """Rule 2: range root -> the main-graph Conv/Gemm/MatMul layers with a constant weight reading it.

    Args:
        model: The float model the plan was made for.
        plan: A placement with every range known (the dry run before calibration).
    """
    view = GraphView(model.graph)
    readers: dict[str, list[Reader]] = {}
    for key, layer in plan.layers.items():
        if layer.weight is None or key not in view.nodes or not layer.inputs:
            continue
        name = layer.inputs[0]
        activation = plan.activations.get(name)
        if activation is None or name not in view.values:
            continue
        readers.setdefault(activation.root, []).append(Reader(key, name))
    return readers


class InputSample:
    """Whole samples of the readers' inputs, taken from the calibration stream in bounded memory.

    Args:
        names: The tensors to sample.
        samples: Calibration samples the stream will hold (to spread the sample over its batches).
        batch_size: Samples per batch of the stream.
    """

    def __init__(self, names: list[str], samples: int, batch_size: int) -> None:
        self.names = list(dict.fromkeys(names))
        self.batches = max(1, math.ceil(samples / batch_size))
        self.budget = SAMPLE_BYTES // max(1, len(self.names))
        self.parts: dict[str, list[np.ndarray]] = {name: [] for name in self.names}
        self.capacity: dict[str, int] = {}
        self.kept: dict[str, int] = dict.fromkeys(self.names, 0)
        self.batches_seen: dict[str, int] = dict.fromkeys(self.names, 0)
        self.rest: dict[str, TensorStats] = {name: TensorStats() for name in self.names}

    def update(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Keeps the first rows (axis 0, at most half the batch) of each named tensor, while its share lasts.

        The other rows go into :attr:`rest`, the statistics candidate ranges are fitted on: the
        kept rows judge ranges fitted without them. A batch of one row is kept every other batch.
        """
        for name in self.names:
            array = arrays.get(name)
            if array is None or np.ndim(array) == 0 or len(array) == 0:
                continue
            if name not in self.capacity:
                per_row = max(1, int(np.asarray(array[:1]).nbytes))
                self.capacity[name] = max(1, self.budget // per_row)
            room = self.capacity[name] - self.kept[name]
            half = len(array) // 2 if len(array) > 1 else 1 - self.batches_seen[name] % 2
            take = max(0, min(room, half, max(1, math.ceil(self.capacity[name] / self.batches))))
            self.batches_seen[name] += 1
            if take > 0:
                self.parts[name].append(np.array(array[:take], dtype=np.float32))
                self.kept[name] += take
            if take < len(array):
                self.rest[name].update(np.asarray(array[take:]))

    def clear(self) -> None:
        """Forgets every kept row and statistic (the calibration stream starts again)."""
        for parts in self.parts.values():
            parts.clear()
        self.kept = dict.fromkeys(self.names, 0)
        self.batches_seen = dict.fromkeys(self.names, 0)
        self.rest = {name: TensorStats() for name in self.names}

    def rows(self, name: str) -> np.ndarray | None:
        """The kept rows of ``name`` (non-finite values as 0), or None when none was kept."""
        if not self.parts.get(name):
            return None
        rows = np.concatenate(self.parts[name])
        return np.where(np.isfinite(rows), rows, np.float32(0.0))

    @property
    def nbytes(self) -> int:
        """Memory held by the kept rows, in bytes."""
        return sum(part.nbytes for parts in self.parts.values() for part in parts)


@dataclasses.dataclass
class RangeChoice:
    """One tensor's chosen calibrator, its range, and each candidate's relative error."""

    tensor: str
    calibrator: str = "minmax"
    range: tuple[float, float] = (0.0, 0.0)
    errors: dict[str, float] = dataclasses.field(default_factory=dict)
    readers: tuple[str, ...] = ()
    rows: int = 0
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        """One tensor's entry in the report's ``calibrator_choice``."""
        return {
            "calibrator": self.calibrator,
            "range": [float(f"{value:.6g}") for value in self.range],
            "readers": list(self.readers),
            "sampled": self.rows,
            "relative_error": {name: float(f"{value:.4g}") for name, value in self.errors.items()},
            "reason": self.reason,
        }


def candidate_range(stats: TensorStats, name: str, symmetric: bool) -> tuple[float, float]:
    """The range of one candidate of rule 1 (``percentile-99.9``: the percentile calibrator at 99.9)."""
    method, _, level = name.partition("-")
    if level:
        return calibrated_range(stats, method, symmetric=symmetric, percentile=float(level))
    return calibrated_range(stats, method, symmetric=symmetric)


def candidate_ranges(stats: TensorStats, symmetric: bool) -> dict[str, tuple[float, float]]:
    """Rule 1: each candidate calibrator's range, ``minmax`` first, equal ranges once."""
    names = ["minmax", *(f"percentile-{level:g}" for level in PERCENTILES), "entropy", "mse"]
    found = {name: candidate_range(stats, name, symmetric) for name in names}
    unique: dict[str, tuple[float, float]] = {}
    for name, span in found.items():
        if span not in unique.values():
            unique[name] = span
    return unique


def _reader_model(node: ir.Node, opset: int) -> ir.Model:
    """The layer alone, without bias (it cancels in the error): inputs ``x`` and ``w``, output ``y``."""
    tensor = ir.TensorType(ir.DataType.FLOAT)
    inputs = [ir.Value(name="x", type=tensor), ir.Value(name="w", type=tensor)]
    attributes = [ir.Attr(a.name, a.type, a.value) for a in node.attributes.values()]
    layer = ir.Node(node.domain, node.op_type, inputs, attributes, name="reader")
    layer.outputs[0].name, layer.outputs[0].type = "y", tensor
    graph = ir.Graph(inputs, [layer.outputs[0]], nodes=[layer], name="calibrator_reader", opset_imports={"": opset})
    return ir.Model(graph, ir_version=10)


def _rounded_weight(weight: np.ndarray, axis: int | None, bits: int) -> np.ndarray:
    quantized, scales = quantize_weight(weight, axis, bits)
    shape = [1] * weight.ndim
    if axis is not None:
        shape[axis] = -1
    return (quantized.astype(np.float32) * scales.reshape(shape)).astype(np.float32)


@dataclasses.dataclass
class _ReaderRun:
    """One reader's session, sampled input, weights and float output."""

    session: Any
    rows: np.ndarray
    rounded: np.ndarray
    exact: np.ndarray
    channel_axis: int | None  # the output axis whose mean error bias correction removes


def _error(run: _ReaderRun, rows: np.ndarray) -> float:
    """The reader's squared output error on ``rows`` (fake-quantized), less the removed channel means."""
    output = run.session.run(["y"], {"x": rows, "w": run.rounded})[0]
    difference = output.astype(np.float64) - run.exact
    if run.channel_axis is not None:
        axes = tuple(axis for axis in range(difference.ndim) if axis != run.channel_axis % difference.ndim)
        difference -= difference.mean(axis=axes, keepdims=True)
    return float(np.square(difference).sum())


def choose_ranges(
    context: PassContext,
    model: ir.Model,
    plan: QuantPlan,
    readers: Mapping[str, list[Reader]],
    stats: Mapping[str, TensorStats],
    sample: InputSample,
    error_model: ErrorModel,
    *,
    bias_correction: bool,
) -> dict[str, RangeChoice]:
    """Rules 1-4 for every calibrated tensor of ``stats``.

    Args:
        context: The pipeline context (sessions on the user's provider).
        model: The float model the plan was made for (not changed).
        plan: The placement with every range known.
        readers: :func:`layer_readers` of that plan.
        stats: The calibration statistics, by tensor.
        sample: The readers' sampled inputs.
        error_model: How the plan quantizes (activation type, symmetry, weight bits).
        bias_correction: Whether bias correction will remove each Conv/Gemm channel's mean error.

    Returns:
        Tensor -> its choice; tensors without a finite value are left out.
    """
    view = GraphView(model.graph)
    opset = model.opset_imports.get("", 13)
    choices: dict[str, RangeChoice] = {}
    for tensor, tensor_stats in stats.items():
        if not tensor_stats.finite:
            continue
        choice = RangeChoice(tensor, range=calibrated_range(tensor_stats, "minmax", symmetric=error_model.symmetric))
        choices[tensor] = choice
        # Each layer reads one tensor's range: its session and outputs are freed with the tensor.
        layer_runs = []
        for reader in readers.get(tensor, []):
            run = _reader_run(context, view, plan, reader, sample, error_model, opset, bias_correction)
            if run is not None:
                layer_runs.append(run)
                choice.readers += (reader.key,)
        if not layer_runs:
            choice.reason = "no quantized Conv/Gemm/MatMul with a constant weight of the main graph reads it"
            continue
        # Fitted on the rows the error is not measured on (rule 2), chosen by the error on held-out rows.
        fit = sample.rest.get(readers[tensor][0].input)
        candidates = candidate_ranges(fit if fit is not None and fit.finite else tensor_stats, error_model.symmetric)
        choice.rows = min(len(run.rows) for run in layer_runs)
        reference = sum(float(np.square(run.exact, dtype=np.float64).sum()) for run in layer_runs)
        for name, span in candidates.items():
            params = qparams(*span, error_model.dtype, symmetric=error_model.symmetric)
            error = sum(_error(run, _fake_quantized(run.rows, params)) for run in layer_runs)
            choice.errors[name] = error / reference if reference > 0 else 0.0
        best = min(choice.errors, key=lambda name: choice.errors[name])
        if choice.errors[best] <= (1.0 - MIN_GAIN) * choice.errors["minmax"]:
            choice.calibrator = best
            choice.range = candidate_range(tensor_stats, best, error_model.symmetric)  # fitted on every row
            choice.reason = "lowest output error of its readers"
        else:
            choice.reason = f"no candidate lowers its readers' output error by {MIN_GAIN:.0%}"
    return choices


def _reader_run(
    context: PassContext,
    view: GraphView,
    plan: QuantPlan,
    reader: Reader,
    sample: InputSample,
    error_model: ErrorModel,
    opset: int,
    bias_correction: bool,
) -> _ReaderRun | None:
    """Rule 3's session and float output for one reader, or None when its input was not sampled."""
    rows = sample.rows(reader.input)
    layer = plan.layers[reader.key]
    node = view.nodes[reader.key]
    weight = constant_array(node.inputs[1])
    if rows is None or weight is None or layer.weight is None:
        return None
    weight = np.asarray(weight, dtype=np.float32)
    session = context.session(_reader_model(node, opset))[0]
    per_row = session.run(["y"], {"x": rows[:1], "w": weight})[0].nbytes
    keep = max(1, OUTPUT_BYTES // max(1, per_row))
    rows = rows[:: max(1, len(rows) // keep)][:keep]  # spread over the kept batches
    exact = session.run(["y"], {"x": rows, "w": weight})[0]
    channel_axis = None
    if bias_correction and node.op_type in ("Conv", "Gemm"):
        channel_axis = 1 if node.op_type == "Conv" else -1
    rounded = _rounded_weight(weight, layer.weight.axis, error_model.weight_bits)
    return _ReaderRun(session, rows, rounded, exact, channel_axis)
