"""Where Q/DQ go, per target (docs/quantization.md).

Placement fills a :class:`QuantPlan` before the graph is touched.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Literal

import onnx_ir as ir

from onnxshrink.ir.graphs import is_onnx_op
from onnxshrink.passbase import NoMatch
from onnxshrink.passes.quantize.options import QuantizeOptions
from onnxshrink.passes.quantize.plan import (
    ADDED_NODE,
    CONSTANT_OPERAND_OPS,
    FOLDABLE,
    NEIGHBOURS,
    ORT_LAYERS,
    SLOW_INT8_NEIGHBOURS,
    TRT_LAYERS,
    TRT_MIN_CHANNELS,
    ActivationQ,
    GraphView,
    LayerQ,
    QuantPlan,
    WeightQ,
    activation_inputs,
    constant_operand,
    constant_scalar,
    fold_candidate,
    is_activation_matmul,
    is_constant,
    is_float,
    layer_problem,
    moves_int8,
    weight_axis,
)
from onnxshrink.passes.quantize.scopes import control_flow_scopes
from onnxshrink.passes.quantize.statistics import QParams, qparams
from onnxshrink.selection import unselected


def trt_skip_reason(node: ir.Node, first: bool) -> NoMatch | None:
    """TensorRT rule 11: tiny GEMMs and low-channel convolutions stay float."""
    weight = node.inputs[1]
    assert weight is not None and weight.const_value is not None
    shape = [int(d) for d in weight.const_value.shape.numpy()]
    if node.op_type in ("MatMul", "Gemm"):
        axis = weight_axis(node, 2)
        n, k = shape[axis if axis is not None else 1], shape[1 - (axis if axis is not None else 1)]
        if min(n, k) < TRT_MIN_CHANNELS:
            return NoMatch(f"GEMM with K={k}, N={n} < {TRT_MIN_CHANNELS} (TensorRT rule 11)")
        return None
    group = node.attributes["group"].as_int() if "group" in node.attributes else 1
    out_ch, in_ch = (shape[0], shape[1] * group) if node.op_type == "Conv" else (shape[1] * group, shape[0])
    if min(out_ch, in_ch) >= TRT_MIN_CHANNELS or first:
        return None
    square = len(set(shape[2:])) <= 1
    if group == 1 and out_ch % 8 == 0 and in_ch % 8 == 0 and square:
        return None
    return NoMatch(f"{in_ch}->{out_ch} channels < {TRT_MIN_CHANNELS} (TensorRT rule 11)")


RangeOf = Callable[[str], "tuple[float, float] | None"]


class OrtPlacement:
    """ORT CPU placement (rules 1-8).

    Integer kernels get Q on their outputs, int8 flows through data movement, and QLinear
    elementwise ops are used only between int8 neighbours.

    Args:
        view: The main graph, indexed by node key.
        layers: Keys of the layers to quantize.
        range_of: Each tensor's calibrated range (None: no finite value seen).
        speed_rules: ``target=ort-cpu`` with ``keep-slow-float``: a MaxPool carries int8 only
            after an int8 Conv (rule 6b) and AveragePool stays float (rule 7c).
    """

    def __init__(self, view: GraphView, layers: list[str], range_of: RangeOf, speed_rules: bool = False) -> None:
        self.view = view
        self.range_of = range_of
        self.layers = frozenset(layers)
        self.quantized: set[str] = set(layers)
        self.speed_rules = speed_rules

    def moves(self, node: ir.Node) -> bool:
        """Rule 6 (6b with the speed rules): whether ``node`` carries int8 through."""
        return moves_int8(node, self._int8_conv if self.speed_rules else None)

    def _int8_conv(self, node: ir.Node) -> bool:
        return node.graph is self.view.graph and self.view.key(node) in self.layers

    def _has_range(self, value: ir.Value) -> bool:
        return value.name is not None and self.range_of(value.name) is not None

    def _reaches_int8(self, value: ir.Value, seen: set[int] | None = None) -> bool:
        """Whether a quantized node reads ``value``, directly or through data movement."""
        seen = seen if seen is not None else set()
        for user, index in value.uses():
            if id(user) in seen or user.graph is not self.view.graph:
                continue
            seen.add(id(user))
            key = self.view.key(user)
            if key in self.quantized and any(i == index for i, _ in activation_inputs(user)):
                return True
            moves_on = self.moves(user) and index == 0
            if moves_on and any(self._reaches_int8(out, seen) for out in user.outputs):
                return True
        return False

    def output_q(self, node: ir.Node) -> bool:
        """Rule 1: a Conv/elementwise kernel needs a Q on its output; MatMul/Gemm only when int8 is read."""
        effective, _ = fold_candidate(node)
        if node.op_type in ("MatMul", "Gemm"):
            return self._has_range(effective) and self._reaches_int8(effective)
        return True

    def _int8_tensors(self) -> dict[str, ir.Value]:
        """Tensors that get a Q→DQ under the current node set."""
        tensors: dict[str, ir.Value] = {}
        # Graph order, not set order: the order of tensors here is the order of the Q/DQ written,
        # and a set of strings iterates differently in every process (PYTHONHASHSEED).
        for key in [k for k in self.view.nodes if k in self.quantized]:
            node = self.view.nodes[key]
            for _, value in activation_inputs(node):
                tensors[value.name or ""] = value
            if self.output_q(node):
                effective, _ = fold_candidate(node)
                tensors[effective.name or ""] = effective
        # Rule 6: the input of a data-movement op whose output is int8 shares its qparams.
        pending = list(tensors.values())
        while pending:
            value = pending.pop()
            producer = value.producer()
            if producer is None or not self.moves(producer) or producer.graph is not self.view.graph:
                continue
            source = producer.inputs[0]
            if source is None or is_constant(source) or not is_float(source) or source.name in tensors:
                continue
            if self._has_range(source):
                tensors[source.name or ""] = source
                pending.append(source)
        return tensors

    def _int8_without(self, value: ir.Value, reader: str) -> bool:
        """Whether ``value`` is int8 without ``reader``'s own Q.

        It is when it is the (folded) output of another quantized node with an output Q, or an
        input of a quantized layer, maybe through data movement.
        """
        if any(self.view.key(user) in self.layers for user, _ in value.uses() if user.graph is self.view.graph):
            return True
        producer = value.producer()
        if producer is None or producer.graph is not self.view.graph:
            return False
        if self.moves(producer) and producer.inputs[0] is not None:
            return self._int8_without(producer.inputs[0], reader)
        source = producer
        if producer.op_type in FOLDABLE and producer.inputs[0] is not None:
            before = producer.inputs[0].producer()
            if before is not None and before.graph is self.view.graph and fold_candidate(before)[1] is producer:
                source = before
        key = self.view.key(source)
        return key != reader and key in self.quantized and self.output_q(source)

    def grow(self) -> dict[str, ir.Value]:
        """Returns the elementwise and pool nodes all of whose neighbours are int8 (rule 7).

        Every candidate is assumed quantized, then those lacking an int8 neighbour are dropped
        until none is, so chains such as Add → GlobalAveragePool → Gemm are found together.
        """
        candidates = []
        for key, node in self.view.nodes.items():
            if not is_onnx_op(node, *NEIGHBOURS, *CONSTANT_OPERAND_OPS):
                continue
            if self.speed_rules and is_onnx_op(node, *SLOW_INT8_NEIGHBOURS):
                continue  # rule 7c
            inputs = activation_inputs(node)
            constants = 0 if constant_operand(node) is None else 1
            if node.op_type == "Div" and not constants:
                continue  # no QLinear kernel divides by an activation
            if len(inputs) + constants != len([v for v in node.inputs if v is not None]):
                continue  # rule 7b: one constant operand at most, stored quantized; Div only by a constant
            effective, _ = fold_candidate(node)
            if self._has_range(effective) and all(self._has_range(v) for _, v in inputs):
                candidates.append(key)
        self.quantized.update(candidates)
        changed = True
        while changed:
            changed = False
            for key in candidates:
                if key not in self.quantized:
                    continue
                node = self.view.nodes[key]
                effective, _ = fold_candidate(node)
                inputs_int8 = all(self._int8_without(v, key) for _, v in activation_inputs(node))
                if not (inputs_int8 and self._reaches_int8(effective)):
                    self.quantized.discard(key)
                    changed = True
        return self._int8_tensors()


def _move_root(value: ir.Value, tensors: Mapping[str, ir.Value], moves: Callable[[ir.Node], bool]) -> ir.Value:
    """The upstream-most int8 tensor linked to ``value`` through data-movement ops."""
    while True:
        producer = value.producer()
        if producer is None or not moves(producer) or producer.inputs[0] is None:
            return value
        source = producer.inputs[0]
        if source.name not in tensors:
            return value
        value = source


def plan_static(
    model: ir.Model,
    options: QuantizeOptions,
    range_of: RangeOf,
    float_layers: Iterable[str] = (),
    unreached: Callable[[str], str | None] = lambda name: None,
    slow: Mapping[str, str] | None = None,
) -> QuantPlan:
    """Returns the placement for ``options.target`` given each tensor's calibrated range.

    The main graph and every If/Loop/Scan body under it are placed one by one, each as a graph
    of its own (body keys start with the body's path, ``If_0/then_branch/``).
    With ``activation-matmuls`` (ort-cpu, ort-cuda), a MatMul of two activations (attention's
    QKᵀ and probabilities·V) is a layer too: DQ on both inputs, then QLinearMatMul when an int8
    kernel reads its output, else MatMulIntegerToFloat.

    Args:
        model: The float model (not changed).
        options: The quantize options (target, dtypes, include/exclude...).
        range_of: Each tensor's calibrated range; None when no finite value was seen.
        float_layers: Layers kept float (the accuracy budget).
        unreached: Why a tensor has no calibration statistics when no sample ran the code that
            computes it (an If branch never taken), or None: such layers stay float with that reason.
        slow: Layers kept float because int8 is slower than float on the CPU, with the reason.
    """
    plan = QuantPlan(target=options.target)
    for scope in control_flow_scopes(model):
        view = GraphView(scope.graph, scope.prefix)
        _plan_scope(view, options, range_of, set(float_layers), unreached, plan, slow or {})
    return plan


def _layer_problem(
    key: str,
    node: ir.Node,
    options: QuantizeOptions,
    range_of: RangeOf,
    forced_float: set[str],
    unreached: Callable[[str], str | None],
    first: bool,
    slow: Mapping[str, str],
) -> NoMatch | None:
    tensorrt = options.target == "tensorrt"
    two_activations = options.activation_matmuls and not tensorrt and is_activation_matmul(node)
    why = None if two_activations else layer_problem(node)
    if why is None:
        why = unselected(node, key, options.include, options.exclude)
    if why is None and key in forced_float:
        why = NoMatch("kept float by the accuracy budget")
    if why is None and key in slow:
        why = NoMatch(slow[key])
    if why is None and tensorrt:
        why = trt_skip_reason(node, first)
    effective, _ = fold_candidate(node)
    inputs = [v.name or "" for _, v in activation_inputs(node)]
    reasons = [unreached(name) for name in inputs]
    if why is None and inputs and all(reasons):
        why = NoMatch(str(reasons[0]))
    if why is None and not all(name and range_of(name) for name in inputs):
        why = NoMatch("input has no finite calibration value")
    if why is None and not tensorrt and node.op_type == "Conv" and not (effective.name and range_of(effective.name)):
        why = NoMatch("output has no finite calibration value")
    return why


def _plan_scope(
    view: GraphView,
    options: QuantizeOptions,
    range_of: RangeOf,
    forced_float: set[str],
    unreached: Callable[[str], str | None],
    plan: QuantPlan,
    slow: Mapping[str, str],
) -> None:
    """Places one graph's Q/DQ into ``plan``."""
    dtype, per_channel = options.activations, options.per_channel
    tensorrt = options.target == "tensorrt"
    symmetric = tensorrt or options.target == "ort-cuda"
    layer_ops = TRT_LAYERS if tensorrt else ORT_LAYERS
    layers: list[str] = []
    first = not plan.layers and not plan.left_float  # TensorRT's first convolution: in the main graph only
    for key, node in view.nodes.items():
        if not is_onnx_op(node, *layer_ops):
            continue
        why = _layer_problem(key, node, options, range_of, forced_float, unreached, first, slow)
        first = first and node.op_type not in ("Conv", "ConvTranspose")
        if why is not None:
            plan.left_float[key] = why.reason
        else:
            layers.append(key)

    def params(value: ir.Value) -> QParams:
        assert value.name is not None
        found = range_of(value.name)
        assert found is not None
        return qparams(found[0], found[1], "s8" if symmetric else dtype, symmetric=symmetric)

    if tensorrt:
        _place_tensorrt(view, layers, plan, params, range_of)
    else:
        speed_rules = options.target == "ort-cpu" and options.keep_slow_float
        _place_ort(view, layers, plan, params, range_of, speed_rules)
    for key in layers:
        node = view.nodes[key]
        if options.activation_matmuls and not tensorrt and is_activation_matmul(node):
            continue  # no constant weight
        weight = node.inputs[1]
        assert weight is not None and weight.const_value is not None
        axis = weight_axis(node, len(weight.const_value.shape)) if per_channel else None
        has_bias = len(node.inputs) > 2 and node.inputs[2] is not None
        bias: Literal["int32", "float", "none"] = "none"
        if has_bias:
            bias = "int32" if not tensorrt and is_constant(node.inputs[2]) else "float"
        previous = plan.layers[key]
        plan.layers[key] = dataclasses.replace(previous, weight=WeightQ(1, axis), bias=bias)


def _place_ort(
    view: GraphView,
    layers: list[str],
    plan: QuantPlan,
    params: Callable[[ir.Value], QParams],
    range_of: RangeOf,
    speed_rules: bool,
) -> None:
    placement = OrtPlacement(view, layers, range_of, speed_rules)
    tensors = placement.grow()
    for name, value in tensors.items():
        root = _move_root(value, tensors, placement.moves)
        plan.activations[name] = ActivationQ(params(root), None, root.name or name)
    for key in sorted(placement.quantized, key=list(view.nodes).index):
        node = view.nodes[key]
        output_q = placement.output_q(node)
        effective, fold = fold_candidate(node)
        inputs = tuple(v.name or "" for _, v in activation_inputs(node))
        output = effective.name if output_q else None
        constant = constant_operand(node) if key not in placement.layers else None
        plan.layers[key] = LayerQ(key, node.op_type, None, "none", output_q, inputs, output, constant)
        if fold is not None and output_q and effective.name in plan.activations:
            q = plan.activations[effective.name]
            clip_max = constant_scalar(fold.inputs[2]) if fold.op_type == "Clip" and len(fold.inputs) > 2 else None
            represented_max = q.params.scale * (
                255 - q.params.zero_point if q.params.dtype == "u8" else 127 - q.params.zero_point
            )
            # Rule 5: drop the Relu/Clip only when the computed zero point already clips at 0.
            if q.params.clips_below_zero and (clip_max is None or clip_max >= represented_max):
                plan.folds.append(view.key(fold))
    for key, node in view.nodes.items():
        candidate = is_onnx_op(node, *NEIGHBOURS) or constant_operand(node) is not None
        if not candidate or key in placement.quantized or node.meta.get(ADDED_NODE):
            continue
        if speed_rules and is_onnx_op(node, *SLOW_INT8_NEIGHBOURS):
            why = f"onnxruntime's QLinear{node.op_type} is slower than float with its DQ and Q on CPUs (rule 7c)"
        else:
            why = "a neighbour is float: QLinear kernel would add conversions (rule 7)"
        plan.left_float.setdefault(key, why)


def _place_tensorrt(
    view: GraphView, layers: list[str], plan: QuantPlan, params: Callable[[ir.Value], QParams], range_of: RangeOf
) -> None:
    readers: dict[str, list[tuple[str, int]]] = {}
    values: dict[str, ir.Value] = {}
    for key in layers:
        node = view.nodes[key]
        names = tuple(v.name or "" for _, v in activation_inputs(node))
        plan.layers[key] = LayerQ(key, node.op_type, None, "none", False, names)
        for index, value in activation_inputs(node):
            readers.setdefault(value.name or "", []).append((key, index))
            values[value.name or ""] = value
    chosen = set(layers)
    # Rule 10: an Add fed by a fusible layer gets Q/DQ on its other (residual) input only.
    for key, node in view.nodes.items():
        if not is_onnx_op(node, "Add") or len(activation_inputs(node)) != 2:
            continue
        fused = [
            index
            for index, value in activation_inputs(node)
            if (p := value.producer()) is not None
            and p.graph is view.graph
            and view.key(p) in chosen
            and len(list(value.uses())) == 1
        ]
        if len(fused) != 1:
            continue
        residual_index = 1 - fused[0]
        residual = node.inputs[residual_index]
        if residual is None or not residual.name or range_of(residual.name) is None:
            continue
        readers.setdefault(residual.name, []).append((key, residual_index))
        values[residual.name] = residual
    for name, value in values.items():
        plan.activations[name] = ActivationQ(params(value), tuple(readers[name]), name)
