"""``fuse-bn``: BatchNormalization and constant per-channel Mul/Add folded into the layer beside them."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxshrink.errors import UsageError
from onnxshrink.graphs import graph_likes, subgraphs_of
from onnxshrink.passbase import ShrinkPass, ShrinkPassResult
from onnxshrink.registry import register_pass

_ONNX = ("", "ai.onnx")
_LAYERS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_AFFINE_OPS = ("Mul", "Add", "Sub")


@dataclasses.dataclass(frozen=True)
class FuseBatchNormOptions:
    into: tuple[str, ...] = dataclasses.field(
        default=_LAYERS,
        metadata={"help": "layers that may absorb what follows (or precedes) them: " + ", ".join(_LAYERS)},
    )
    fold_affine: bool = dataclasses.field(
        default=True,
        metadata={"help": "also fold constant per-channel Mul/Add/Sub after a layer and before a Conv"},
    )

    def __post_init__(self) -> None:
        unknown = sorted(set(self.into) - set(_LAYERS))
        if unknown:
            raise UsageError(f"fuse-bn cannot fold into {', '.join(unknown)}; valid: {', '.join(_LAYERS)}")


@dataclasses.dataclass(frozen=True)
class _Step:
    """One node of a per-channel affine chain: ``y = x * scale + shift`` (float64, one entry per channel)."""

    node: ir.Node
    scale: np.ndarray
    shift: np.ndarray | None
    constants: tuple[ir.Value, ...]


@dataclasses.dataclass(frozen=True)
class _Layer:
    """A layer with constant weights and what is known of its output's channel layout."""

    node: ir.Node
    weight: np.ndarray
    bias: np.ndarray | None  # float64 [channels]; Gemm's beta already applied
    channels: int
    rank: int  # of the output; 1 with axis 0 for a MatMul of unknown rank (then only the last axis is known)
    axis: int
    takes_bias: bool


@dataclasses.dataclass(frozen=True)
class _Plan:
    """A decided rewrite: new weight (and bias, None = unchanged) and the chain nodes it removes."""

    layer: _Layer
    steps: tuple[_Step, ...]
    weight: np.ndarray
    bias: np.ndarray | None
    data: ir.Value | None  # rule 3: the layer's new data input; None for a chain after the layer


def _attribute(node: ir.Node, name: str, default: Any) -> Any:
    """An attribute's value, ``default`` when absent, None when a function's caller sets it."""
    attr = node.attributes.get(name)
    if attr is None:
        return default
    return None if attr.is_ref() else attr.value


def _constant(value: ir.Value | None) -> np.ndarray | None:
    """The data of an initializer no caller can override, or of a ``Constant`` node's output."""
    if value is None or value.is_graph_input():
        return None
    if value.is_initializer() and value.const_value is not None:
        return value.const_value.numpy()
    producer = value.producer()
    if producer is None or producer.op_type != "Constant" or producer.domain not in _ONNX:
        return None
    if len(producer.attributes) != 1:
        return None
    name, attr = next(iter(producer.attributes.items()))
    if attr.is_ref():
        return None
    if name == "value":
        return attr.as_tensor().numpy()
    if name in ("value_float", "value_floats"):
        return np.asarray(attr.value, dtype=np.float32)
    return None


def _body(graph: ir.Graph | ir.Function) -> ir.Graph:
    """The graph a node's ``.graph`` names: a function's nodes belong to its inner graph."""
    return graph.graph if isinstance(graph, ir.Function) else graph


def _is_float(array: np.ndarray) -> bool:
    return ir.DataType.from_numpy(array.dtype).is_floating_point()


def _per_channel(array: np.ndarray, channels: int, rank: int, axis: int, max_ndim: int) -> np.ndarray | None:
    """``array`` as a float64 [channels] vector when it broadcasts along ``axis`` only, else None."""
    if array.ndim > max_ndim or array.ndim > rank:
        return None
    shape = (1,) * (rank - array.ndim) + tuple(array.shape)
    if any(size != 1 for i, size in enumerate(shape) if i != axis) or shape[axis] not in (1, channels):
        return None
    return np.broadcast_to(array.astype(np.float64).reshape(-1), (channels,)).copy()


def _match_batchnorm(node: ir.Node, data_index: int, channels: int, axis: int, opset: int) -> _Step | None:
    if data_index != 0 or axis != 1 or opset < 7 or len(node.inputs) != 5:
        return None
    if _attribute(node, "training_mode", 0) != 0 or _attribute(node, "spatial", 1) != 1:
        return None
    if any(v.uses() or v.is_graph_output() for v in node.outputs[1:]):
        return None
    arrays = [_constant(v) for v in node.inputs[1:]]
    epsilon = _attribute(node, "epsilon", 1e-5)
    if epsilon is None or any(a is None or a.shape != (channels,) or not _is_float(a) for a in arrays):
        return None
    gamma, beta, mean, var = (np.asarray(a, dtype=np.float64) for a in arrays)
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = gamma / np.sqrt(var + np.float64(epsilon))
    constants = tuple(v for v in node.inputs[1:] if v is not None)
    return _Step(node, scale, beta - mean * scale, constants)


def _match_step(
    node: ir.Node, data_index: int, channels: int, rank: int, axis: int, max_ndim: int, opset: int
) -> _Step | None:
    """The node as a per-channel affine map of its input ``data_index``, or None."""
    if node.domain not in _ONNX:
        return None
    if node.op_type == "BatchNormalization":
        return _match_batchnorm(node, data_index, channels, axis, opset)
    if node.op_type not in _AFFINE_OPS or len(node.inputs) != 2 or len(node.outputs) != 1:
        return None
    other = node.inputs[1 - data_index]
    array = _constant(other)
    if other is None or array is None or not _is_float(array):
        return None
    vector = _per_channel(array, channels, rank, axis, max_ndim)
    if vector is None:
        return None
    ones = np.ones(channels)
    if node.op_type == "Mul":
        return _Step(node, vector, None, (other,))
    if node.op_type == "Add":
        return _Step(node, ones, vector, (other,))
    return _Step(node, ones, -vector, (other,)) if data_index == 0 else _Step(node, -ones, vector, (other,))


def _match_layer(node: ir.Node) -> _Layer | None:
    """The layer when its weight (and bias) are constant and its channel axis is known."""
    if node.domain not in _ONNX or len(node.inputs) < 2 or len(node.outputs) != 1:
        return None
    weight = _constant(node.inputs[1])
    if weight is None or weight.size == 0 or not _is_float(weight):
        return None
    bias_value = node.inputs[2] if len(node.inputs) > 2 else None
    bias = _constant(bias_value)
    if bias_value is not None and bias is None:
        return None
    op = node.op_type
    if op in ("Conv", "ConvTranspose"):
        group = _attribute(node, "group", 1)
        if weight.ndim < 3 or not group or weight.shape[0] % group:
            return None
        channels = weight.shape[0] if op == "Conv" else weight.shape[1] * group
        if bias is not None and bias.shape != (channels,):
            return None
        vector = None if bias is None else bias.astype(np.float64)
        return _Layer(node, weight, vector, channels, weight.ndim, 1, True)
    if op == "Gemm":
        trans_b, beta = _attribute(node, "transB", 0), _attribute(node, "beta", 1.0)
        if weight.ndim != 2 or trans_b is None or beta is None or _attribute(node, "alpha", 1.0) is None:
            return None
        channels = weight.shape[0] if trans_b else weight.shape[1]
        vector = None if bias is None else _per_channel(bias, channels, 2, 1, 2)
        if bias is not None and vector is None:
            return None  # a bias that varies along the batch axis is not per-channel
        return _Layer(node, weight, None if vector is None else vector * beta, channels, 2, 1, True)
    if op == "MatMul" and len(node.inputs) == 2 and weight.ndim == 2:
        shapes = [v.shape for v in (node.inputs[0], node.outputs[0]) if v is not None and v.shape is not None]
        rank = len(shapes[0]) if shapes else None
        if rank is None:
            return _Layer(node, weight, None, weight.shape[1], 1, 0, False)
        return _Layer(node, weight, None, weight.shape[1], rank, rank - 1, rank == 2)
    return None


def _compose(steps: Iterable[_Step], channels: int) -> tuple[np.ndarray, np.ndarray | None]:
    scale, shift = np.ones(channels), None
    for step in steps:
        scale = scale * step.scale
        shift = None if shift is None else shift * step.scale
        if step.shift is not None:
            shift = step.shift if shift is None else shift + step.shift
    return scale, shift


def _scale_outputs(layer: _Layer, scale: np.ndarray) -> np.ndarray:
    weight = layer.weight.astype(np.float64)
    op = layer.node.op_type
    if op == "Conv":
        return weight * scale.reshape((-1,) + (1,) * (weight.ndim - 1))
    if op == "ConvTranspose":
        # [C_in, C_out/g, k...]: output channel (group i, j) is column j of input rows of group i.
        group = layer.channels // weight.shape[1]
        grouped = weight.reshape(group, weight.shape[0] // group, *weight.shape[1:])
        return (grouped * scale.reshape(group, 1, -1, *(1,) * (weight.ndim - 2))).reshape(weight.shape)
    if op == "Gemm" and _attribute(layer.node, "transB", 0):
        return weight * scale[:, None]
    return weight * scale[None, :]


def _finish(layer: _Layer, steps: tuple[_Step, ...], weight: np.ndarray, bias: np.ndarray | None) -> _Plan | None:
    dtype = layer.weight.dtype
    new_weight = weight.astype(dtype)
    new_bias = None if bias is None else bias.astype(dtype)
    with np.errstate(invalid="ignore", over="ignore"):
        if not np.isfinite(new_weight.astype(np.float64)).all():
            return None
        if new_bias is not None and not np.isfinite(new_bias.astype(np.float64)).all():
            return None
    return _Plan(layer, steps, new_weight, new_bias, None)


def _plan_after(layer: _Layer, graph: ir.Graph | ir.Function, opset: int, fold_affine: bool) -> _Plan | None:
    """Rules 1-2: the chain of per-channel affine nodes reading the layer's output, one use at a time."""
    steps: list[_Step] = []
    value = layer.node.outputs[0]
    while not value.is_graph_output() and len(value.uses()) == 1:
        user, index = next(iter(value.uses()))
        if user.graph is not _body(graph) or (user.op_type != "BatchNormalization" and not fold_affine):
            break
        step = _match_step(user, index, layer.channels, layer.rank, layer.axis, layer.rank, opset)
        if step is None or (step.shift is not None and not layer.takes_bias):
            break
        steps.append(step)
        value = user.outputs[0]
    if not steps:
        return None
    scale, shift = _compose(steps, layer.channels)
    bias = None
    if layer.bias is not None or shift is not None:
        bias = (layer.bias if layer.bias is not None else 0.0) * scale + (shift if shift is not None else 0.0)
    return _finish(layer, tuple(steps), _scale_outputs(layer, scale), bias)


def _plan_before(layer: _Layer, graph: ir.Graph | ir.Function, opset: int) -> _Plan | None:
    """Rule 3: the chain of per-channel affine nodes feeding a Conv's data input."""
    weight = layer.weight.astype(np.float64)
    group = _attribute(layer.node, "group", 1)
    in_channels = weight.shape[1] * group
    pads, auto_pad = _attribute(layer.node, "pads", ()), _attribute(layer.node, "auto_pad", "NOTSET")
    # Zero padding is applied after the shift in the original and before it once folded.
    shift_exact = auto_pad in ("NOTSET", "VALID") and pads is not None and not any(pads)
    steps: list[_Step] = []
    value = layer.node.inputs[0]
    while value is not None and not value.is_graph_output() and len(value.uses()) == 1:
        node = value.producer()
        if node is None or node.graph is not _body(graph) or len(node.inputs) < 1:
            break
        data_index = 1 if node.op_type in _AFFINE_OPS and _constant(node.inputs[0]) is not None else 0
        data = node.inputs[data_index]
        rank_known = data is not None and data.shape is not None and len(data.shape) == weight.ndim
        max_ndim = weight.ndim if rank_known else weight.ndim - 1
        step = _match_step(node, data_index, in_channels, weight.ndim, 1, max_ndim, opset)
        if data is None or step is None or (step.shift is not None and not shift_exact):
            break
        steps.insert(0, step)
        value = data
    if not steps:
        return None
    scale, shift = _compose(steps, in_channels)
    grouped = weight.reshape(group, weight.shape[0] // group, weight.shape[1], -1)
    new_weight = (grouped * scale.reshape(group, 1, -1, 1)).reshape(weight.shape)
    bias = layer.bias
    if shift is not None:
        moved = np.einsum("gmck,gc->gm", grouped, shift.reshape(group, -1)).reshape(-1)
        bias = moved if bias is None else bias + moved
    plan = _finish(layer, tuple(steps), new_weight, bias if shift is not None else None)
    return None if plan is None else dataclasses.replace(plan, data=value)


class _Constants:
    """Creates and drops constants: initializers in graphs, ``Constant`` nodes in function bodies."""

    def __init__(self, graph: ir.Graph | ir.Function, taken: set[str], *, in_function: bool) -> None:
        self.graph = graph
        self.taken = taken
        self.in_function = in_function

    def fresh_name(self, base: str) -> str:
        name, index = base, 0
        while name in self.taken:
            index += 1
            name = f"{base}__{index}"
        self.taken.add(name)
        return name

    def new(self, array: np.ndarray, base: str, before: ir.Node) -> ir.Value:
        name = self.fresh_name(base)
        tensor = ir.Tensor(array, name=name)
        if not self.in_function and isinstance(self.graph, ir.Graph):
            value = ir.Value(name=name, const_value=tensor)
            self.graph.register_initializer(value)
        else:
            constant = ir.node("Constant", [], attributes={"value": tensor})
            self.graph.insert_before(before, constant)
            value = constant.outputs[0]
            value.name = name
        value.type = ir.TensorType(ir.DataType.from_numpy(array.dtype))
        value.shape = ir.Shape(array.shape)
        return value

    def replace_input(self, node: ir.Node, index: int, array: np.ndarray, base: str) -> None:
        """Feeds ``node`` a new constant at ``index``; it takes the old one's name when that one goes."""
        old = node.inputs[index] if index < len(node.inputs) else None
        new = self.new(array, old.name if old is not None and old.name else base, node)
        if index >= len(node.inputs):
            node.resize_inputs(index + 1)
        node.replace_input_with(index, new)
        if old is not None and old.name and self.release(old):
            self.taken.discard(new.name or "")
            new.name = old.name

    def release(self, value: ir.Value) -> bool:
        """Removes a constant nothing reads any more; True when it went."""
        if value.uses() or value.is_graph_output() or value.is_graph_input():
            return False
        owner = value.graph
        if value.is_initializer() and isinstance(owner, ir.Graph) and value.name:
            owner.initializers.pop(value.name)
            return True
        producer = value.producer()
        if producer is not None and producer.op_type == "Constant" and producer.graph is not None:
            producer.graph.remove(producer, safe=True)
            return True
        return False


def _shrinks(plan: _Plan, in_function: bool) -> bool:
    """True when the rewrite leaves fewer nodes (new constants in a function body are nodes)."""
    node = plan.layer.node
    removed = {step.node for step in plan.steps}
    replaced = {1, 2} if plan.bias is not None else {1}
    constants = [node.inputs[i] for i in replaced if i < len(node.inputs)]
    constants += [v for step in plan.steps for v in step.constants]
    dead = set()
    for value in constants:
        producer = value.producer() if value is not None else None
        if value is None or producer is None or producer.op_type != "Constant" or value.is_graph_output():
            continue
        if all(user in removed or (user is node and index in replaced) for user, index in value.uses()):
            dead.add(producer)
    added = 1 + (plan.bias is not None) if in_function else 0
    return added < len(removed) + len(dead)


def _as_gemm(matmul: ir.Node, graph: ir.Graph | ir.Function) -> ir.Node:
    """A 2-D MatMul replaced by an equivalent Gemm (which can take a bias)."""
    gemm = ir.node("Gemm", list(matmul.inputs), domain=matmul.domain, name=matmul.name)
    graph.insert_before(matmul, gemm)
    _take_over_output(matmul.outputs[0], gemm.outputs[0])
    graph.remove(matmul, safe=True)
    return gemm


def _take_over_output(old: ir.Value, new: ir.Value) -> None:
    """Makes ``new`` stand for ``old`` everywhere, graph outputs included, with its name and type."""
    name = old.name
    ir.convenience.replace_all_uses_with(old, new, replace_graph_outputs=True)
    old.name = None
    new.name = name
    if old.type is not None:
        new.type = old.type
    if old.shape is not None:
        new.shape = old.shape


def _bias_name(weight: ir.Value | None) -> str:
    name = weight.name if weight is not None and weight.name else "fused"
    return name[: -len("weight")] + "bias" if name.endswith(".weight") else f"{name}_bias"


def _apply(plan: _Plan, graph: ir.Graph | ir.Function, constants: _Constants, stats: Counter[str]) -> None:
    node = plan.layer.node
    if node.op_type == "MatMul" and plan.bias is not None:
        node = _as_gemm(node, graph)
    bias_name = _bias_name(node.inputs[1])
    constants.replace_input(node, 1, plan.weight, "fused_weight")
    if plan.bias is not None:
        constants.replace_input(node, 2, plan.bias, bias_name)
        if node.op_type == "Gemm":
            node.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
    if plan.data is not None:
        node.replace_input_with(0, plan.data)
    else:
        last = plan.steps[-1].node.outputs[0]
        if last.is_graph_output():
            _take_over_output(last, node.outputs[0])
        else:
            last.replace_all_uses_with(node.outputs[0])
    for step in reversed(plan.steps):
        graph.remove(step.node, safe=True)
        stats["batchnorm_fused" if step.node.op_type == "BatchNormalization" else "affine_fused"] += 1
    for step in plan.steps:
        for value in step.constants:
            constants.release(value)


def _taken_names(model: ir.Model) -> set[str]:
    names: set[str] = set()
    for graph in graph_likes(model):
        values = [*graph.inputs, *graph.outputs]
        if isinstance(graph, ir.Graph):
            values.extend(graph.initializers.values())
        for node in graph:
            values.extend(node.outputs)
        names.update(v.name for v in values if v.name)
    return names


def _opset(imports: dict[str, int]) -> int:
    return next((imports[domain] for domain in _ONNX if domain in imports), 0)


def _scopes(model: ir.Model) -> Iterator[tuple[ir.Graph | ir.Function, int, bool]]:
    """Every graph with its ONNX opset and whether it lies in a function (no initializers there)."""
    for graph in model.graphs():
        yield graph, _opset(model.opset_imports), False
    for function in model.functions.values():
        opset = _opset(function.opset_imports) or _opset(model.opset_imports)
        yield function, opset, True
        for node in ir.traversal.RecursiveGraphIterator(function):
            for sub in subgraphs_of(node):
                yield sub, opset, True


@register_pass
class FuseBatchNormPass(ShrinkPass):
    """Folds BatchNormalization and constant per-channel Mul/Add/Sub into the weights beside them.

    Rules, in every graph, If/Loop/Scan body and model-local function (weights may be
    initializers of the graph or an outer graph, or ``Constant`` nodes):

    1. An inference ``BatchNormalization`` (opset 7+, ``training_mode``/``spatial`` at their
       defaults, only output 0 used, scale/bias/mean/var constant [C]) reading a Conv,
       ConvTranspose (any group), Gemm (any ``transB``; bias per-channel) or MatMul (constant
       2-D weight, 2-D input: it becomes a Gemm) whose output has no other consumer and is not
       a graph output, folds into it: ``W' = W * s`` per output channel and
       ``b' = (b - mean) * s + beta`` with ``s = gamma / sqrt(var + eps)``. A missing bias is
       created; Gemm's ``beta`` becomes 1.
    2. ``fold-affine``: a following ``Mul``/``Add``/``Sub`` (either operand order) by a constant that broadcasts along
       the channel axis only (per-channel vector or scalar, never growing the shape) folds the
       same way, chained with rule 1 (Conv → BN → Mul → Add folds into one Conv). After a MatMul
       that cannot become a Gemm, only ``Mul`` folds.
    3. ``fold-affine``: the same chain (BatchNormalization included) *feeding* a Conv folds into
       its input channels (group by group): ``W'[:, c] = W[:, c] * s[c]``, ``b' = b + sum(W * t)``. A shift ``t``
       (Add/Sub/BN) folds only when the Conv has no padding (``pads`` all zero, ``auto_pad``
       NOTSET or VALID): zero padding is applied after the shift in the original model, so a
       padded Conv would see ``t`` where it now sees 0. A pure scale is exact with any padding.
    Affine maps are composed in float64 and cast once to the weight dtype (float16 included);
    results that overflow are left alone. A rewrite applies only when it removes nodes (in a
    function, the new weights are ``Constant`` nodes too). New constants never overwrite
    shared tensors; a replaced constant nothing else reads is dropped and its name reused.
    The last folded node's output name, type and shape stay when it is a graph output.
    """

    name = "fuse-bn"
    exact = True
    Options = FuseBatchNormOptions

    def call(self, model: ir.Model) -> ShrinkPassResult:
        options: FuseBatchNormOptions = self.options
        stats: Counter[str] = Counter()
        taken = _taken_names(model)
        for graph, opset, in_function in list(_scopes(model)):
            constants = _Constants(graph, taken, in_function=in_function)
            body = _body(graph)
            for node in list(graph):
                if node.graph is body and node.op_type in options.into and (layer := _match_layer(node)):
                    plan = _plan_after(layer, graph, opset, options.fold_affine)
                    if plan is not None and _shrinks(plan, in_function):
                        _apply(plan, graph, constants, stats)
            if not options.fold_affine or "Conv" not in options.into:
                continue
            for node in list(graph):
                if node.graph is body and node.op_type == "Conv" and (layer := _match_layer(node)):
                    plan = _plan_before(layer, graph, opset)
                    if plan is not None and _shrinks(plan, in_function):
                        _apply(plan, graph, constants, stats)
        fused = {key: count for key, count in sorted(stats.items()) if count}
        return ShrinkPassResult(model, modified=bool(fused), stats=fused)
