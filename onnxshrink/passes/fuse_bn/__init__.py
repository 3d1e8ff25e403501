"""``fuse-bn``: BatchNormalization and constant per-channel Mul/Add folded into the layer beside them."""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import onnx_ir as ir

from onnxshrink.ir.graphs import (
    fresh_name,
    is_onnx_op,
    opset_version,
    scoped_graph_likes,
    take_over_output,
    taken_names,
)
from onnxshrink.passbase import NoMatch, ShrinkPass, ShrinkPassResult, option
from onnxshrink.passes.fuse_bn.affine_chain import Plan, body_of, match_layer, plan_after, plan_before
from onnxshrink.registry import register_pass

_LAYERS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclasses.dataclass(frozen=True)
class FuseBatchNormOptions:
    """Options of ``fuse-bn``."""

    into: tuple[str, ...] = option(
        _LAYERS, "layers that may absorb what follows (or precedes) them: " + ", ".join(_LAYERS), choices=_LAYERS
    )
    fold_affine: bool = option(True, "also fold constant per-channel Mul/Add/Sub after a layer and before a Conv")


class _Constants:
    """Creates and drops constants: initializers in graphs, ``Constant`` nodes in function bodies."""

    def __init__(self, graph: ir.Graph | ir.Function, taken: set[str], *, in_function: bool) -> None:
        self.graph = graph
        self.taken = taken
        self.in_function = in_function

    def fresh_name(self, base: str) -> str:
        return fresh_name(self.taken, base)

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


def _shrinks(plan: Plan, in_function: bool) -> bool:
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
    take_over_output(matmul.outputs[0], gemm.outputs[0])
    graph.remove(matmul, safe=True)
    return gemm


def _bias_name(weight: ir.Value | None) -> str:
    name = weight.name if weight is not None and weight.name else "fused"
    return name[: -len("weight")] + "bias" if name.endswith(".weight") else f"{name}_bias"


def _apply(plan: Plan, graph: ir.Graph | ir.Function, constants: _Constants, stats: Counter[str]) -> None:
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
            take_over_output(last, node.outputs[0])
        else:
            last.replace_all_uses_with(node.outputs[0])
    for step in reversed(plan.steps):
        graph.remove(step.node, safe=True)
        stats["batchnorm_fused" if step.node.op_type == "BatchNormalization" else "affine_fused"] += 1
    for step in plan.steps:
        for value in step.constants:
            constants.release(value)


def _label(node: ir.Node) -> str:
    return node.name or f"{node.op_type}->{node.outputs[0].name}"


def _plan(
    layer_node: ir.Node, graph: ir.Graph | ir.Function, opset: int, options: FuseBatchNormOptions, *, after: bool
) -> Plan | NoMatch:
    """The rewrite for one layer (rules 1-2 with ``after``, rule 3 without), or why there is none."""
    layer = match_layer(layer_node)
    if isinstance(layer, NoMatch):
        return layer
    return plan_after(layer, graph, opset, options.fold_affine) if after else plan_before(layer, graph, opset)


def _why_kept(batchnorm: ir.Node, graph: ir.Graph | ir.Function, opset: int, options: FuseBatchNormOptions) -> str:
    """Why a BatchNormalization still stands after the pass: what its neighbours answered."""
    data = batchnorm.inputs[0] if batchnorm.inputs else None
    source = data.producer() if data is not None else None
    if source is None or source.graph is not batchnorm.graph or not is_onnx_op(source, *options.into):
        where = f"'{_label(source)}'" if source is not None else "outside this graph"
        reasons = [f"its input comes from {where}, not a layer it may fold into ({', '.join(options.into)})"]
    else:
        plan = _plan(source, graph, opset, options, after=True)
        reasons = [f"after '{_label(source)}': {plan if isinstance(plan, NoMatch) else _NO_GAIN}"]
    uses = batchnorm.outputs[0].uses()
    if options.fold_affine and "Conv" in options.into and len(uses) == 1:
        user, index = next(iter(uses))
        if index == 0 and is_onnx_op(user, "Conv") and user.graph is batchnorm.graph:
            plan = _plan(user, graph, opset, options, after=False)
            reasons.append(f"before '{_label(user)}': {plan if isinstance(plan, NoMatch) else _NO_GAIN}")
    return "; ".join(reasons)


_NO_GAIN = "folding would add constant nodes to the function body"


@register_pass
class FuseBnPass(ShrinkPass[FuseBatchNormOptions]):
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
    Every BatchNormalization left in place is reported in ``skipped`` with what its neighbours
    answered.
    """

    name = "fuse-bn"
    exact = True

    def call(self, model: ir.Model) -> ShrinkPassResult:
        """Applies rules 1-2, then rule 3, scope by scope; ``modified`` when anything folded."""
        options = self.options
        stats: Counter[str] = Counter()
        skipped: dict[str, str] = {}
        taken = taken_names(model)
        for graph, function in list(scoped_graph_likes(model)):
            opset, in_function = opset_version(model, scope=function), function is not None
            constants = _Constants(graph, taken, in_function=in_function)
            body = body_of(graph)
            rules = [(True, options.into)]
            if options.fold_affine and "Conv" in options.into:
                rules.append((False, ("Conv",)))
            for after, layers in rules:
                for node in list(graph):
                    if node.graph is body and is_onnx_op(node, *layers):
                        plan = _plan(node, graph, opset, options, after=after)
                        if not isinstance(plan, NoMatch) and _shrinks(plan, in_function):
                            _apply(plan, graph, constants, stats)
            for node in graph:
                if is_onnx_op(node, "BatchNormalization"):
                    skipped[_label(node)] = _why_kept(node, graph, opset, options)
        fused = {key: count for key, count in sorted(stats.items()) if count}
        return ShrinkPassResult(model, modified=bool(fused), stats=fused, skipped=skipped)


FuseBatchNormPass = FuseBnPass  # the name before pass classes were named after their pass
