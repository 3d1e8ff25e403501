"""``prune``: magnitude pruning of layer weights, unstructured or N:M along the reduction axis."""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Any, Literal

import numpy as np
import onnx_ir as ir

from onnxshrink.errors import UsageError
from onnxshrink.ir.constants import is_constant, lift_weight_constants
from onnxshrink.ir.graphs import is_onnx_op
from onnxshrink.passbase import NoMatch, ShrinkPass, ShrinkPassResult, option
from onnxshrink.passes.prune import plan as plan
from onnxshrink.passes.prune import sensitivity as sensitivity
from onnxshrink.registry import register_pass
from onnxshrink.runtime import RuntimeUnavailable
from onnxshrink.selection import unselected
from onnxshrink.sparsity import reduction_axis

_LAYERS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_NM = re.compile(r"^(\d+):(\d+)$")
# NVIDIA ASP sparsifies a layer only when these divide its output and reduction channels.
_ASP_OUT, _ASP_IN = 8, 16


def _is_number(value: object) -> str | None:
    return None if isinstance(value, (int, float)) and not isinstance(value, bool) else f"{value!r} is not a number"


def _keeps_fewer(pattern: str) -> str | None:
    match = _NM.match(pattern)
    if match is not None and not 0 < int(match.group(1)) < int(match.group(2)):
        return f"{pattern} needs 0 < N < M (keep N of every M weights)"
    return None


@dataclasses.dataclass(frozen=True)
class MagnitudePruneOptions:
    """What ``prune`` zeroes and how it chooses."""

    sparsity: float = option(
        0.5, "fraction of weights zeroed, 0 <= s < 1 (unstructured only)", minimum=0.0, below=1.0, check=_is_number
    )
    pattern: str = option(
        "unstructured",
        "'unstructured' or N:M (keep N of every M), e.g. 2:4, 4:8",
        pattern=r"unstructured|\d+:\d+",
        check=_keeps_fewer,
    )
    scope: Literal["layer", "global"] = option(
        "layer", "layer: each layer at the target; global: one threshold (unstructured)", choices=("layer", "global")
    )
    criterion: Literal["l1", "l2"] = option(
        "l1", "layer norm that global scope divides |w| by: mean |w| or RMS", choices=("l1", "l2")
    )
    include: tuple[str, ...] = option((), "prune only layers whose op type or node-name glob matches (empty: all)")
    exclude: tuple[str, ...] = option((), "never prune layers whose op type or node-name glob matches")
    min_size: int = option(1024, "skip weights with fewer elements", minimum=0)
    keep_first_last: bool = option(True, "leave the model's first and last weight layers dense")
    allocation: Literal["uniform", "sensitivity"] = option(
        "uniform",
        "uniform: every layer at the target; sensitivity: per-layer sparsities that meet the "
        "target with the least output damage, measured on calibration data (unstructured, layer scope)",
        choices=("uniform", "sensitivity"),
    )
    samples: int = option(128, "calibration samples measured by allocation=sensitivity", minimum=1)
    rounds: int = option(
        1,
        "allocation=sensitivity: measurement rounds; each after the first re-measures "
        "every layer with the others pruned as last chosen",
        minimum=1,
    )

    def problem(self) -> str | None:
        """What is wrong with the options together (each alone is checked by its metadata)."""
        if self.allocation != "sensitivity":
            return None
        if self.pattern != "unstructured":
            return f"allocation=sensitivity needs pattern=unstructured ({self.pattern} fixes it)"
        if self.scope != "layer":
            return "allocation=sensitivity chooses per-layer sparsities; use scope=layer"
        if self.sparsity > sensitivity.MAX_SPARSITY:
            return (
                f"allocation=sensitivity caps each layer at {sensitivity.MAX_SPARSITY}, "
                f"so sparsity {self.sparsity} cannot be met"
            )
        return None

    @property
    def nm(self) -> tuple[int, int] | None:
        """``(N, M)`` for an N:M pattern, None for unstructured."""
        match = _NM.match(self.pattern)
        return (int(match.group(1)), int(match.group(2))) if match else None


@dataclasses.dataclass(frozen=True)
class _Layer:
    """A layer whose weight is a constant float initializer, with the axes pruning needs."""

    key: str  # the node's name, or op type and position for an unnamed node
    node: ir.Node
    weight: ir.Value
    axis: int  # reduction axis of the weight
    out_channels: int
    in_channels: int  # reduction length per group


def _key(node: ir.Node, index: int) -> str:
    return node.name or f"{node.op_type}#{index}"


def _from_constants(node: ir.Node) -> bool:
    """True when every input of ``node`` is a constant (a Constant node has none): fold computes it."""
    return all(value is None or is_constant(value) for value in node.inputs)


def _layer(node: ir.Node, key: str) -> _Layer | NoMatch:
    """The node as a :class:`_Layer`, or why it has no prunable weight."""
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    if weight is None:
        return NoMatch("no weight input")
    tensor = weight.const_value
    if tensor is None or not weight.is_initializer():
        producer = weight.producer()
        if producer is not None and producer.op_type != "DequantizeLinear" and _from_constants(producer):
            where = f"{producer.op_type} '{producer.name}'" if producer.name else producer.op_type
            return NoMatch(f"weight '{weight.name}' is computed from constants by {where}: run fold first")
        return NoMatch(f"weight '{weight.name}' is not a constant initializer")
    if not is_constant(weight):
        return NoMatch(f"weight '{weight.name}' is also a graph input, so callers may override it")
    if weight.is_graph_output():
        return NoMatch(f"weight '{weight.name}' is a graph output")
    if not tensor.dtype.is_floating_point():
        return NoMatch(f"weight '{weight.name}' has non-float dtype {tensor.dtype.name}")
    shape = tuple(int(d) for d in tensor.shape.numpy())
    axis = reduction_axis(node, len(shape))
    if axis is None or (node.op_type == "Gemm" and len(shape) != 2):
        return NoMatch(f"weight '{weight.name}' of shape {list(shape)} has no reduction axis for {node.op_type}")
    group_attr = node.attributes.get("group")
    group = group_attr.as_int() if group_attr is not None else 1
    if node.op_type == "Conv":
        out_channels, in_channels = shape[0], shape[1]
    elif node.op_type == "ConvTranspose":
        out_channels, in_channels = shape[1] * group, shape[0] // group
    else:
        out_channels, in_channels = shape[1 - axis], shape[axis]
    return _Layer(key, node, weight, axis, out_channels, in_channels)


def _unselected(layer: _Layer, options: MagnitudePruneOptions) -> NoMatch | None:
    """Why the options leave ``layer`` dense, or None when they select it."""
    if (why := unselected(layer.node, layer.key, options.include, options.exclude)) is not None:
        return why
    size = layer.weight.const_value.size if layer.weight.const_value is not None else 0
    if size < options.min_size:
        return NoMatch(f"{size} weights < min-size {options.min_size}")
    nm = options.nm
    if nm is not None:
        if layer.out_channels % _ASP_OUT:
            return NoMatch(f"{layer.out_channels} output channels, not a multiple of {_ASP_OUT} ({options.pattern})")
        if layer.in_channels % _ASP_IN or layer.in_channels % nm[1]:
            step = np.lcm(_ASP_IN, nm[1])
            return NoMatch(f"{layer.in_channels} reduction channels, not a multiple of {step} ({options.pattern})")
    return None


def _plan_layers(model: ir.Model, options: MagnitudePruneOptions) -> tuple[list[list[_Layer]], dict[str, str]]:
    """The weights to prune (each with the layers that read it, first user first) and skip reasons."""
    skipped: dict[str, str] = {}
    layers: list[_Layer] = []
    for index, node in enumerate(ir.traversal.RecursiveGraphIterator(model.graph)):
        if not is_onnx_op(node, *_LAYERS):
            continue
        key = _key(node, index)
        found = _layer(node, key)
        if isinstance(found, NoMatch):
            skipped[key] = found.reason
        else:
            layers.append(found)
    reasons = {layer.key: _unselected(layer, options) for layer in layers}
    if options.keep_first_last and layers:
        reasons[layers[0].key] = NoMatch("first weight layer (keep-first-last)")
        reasons[layers[-1].key] = NoMatch("last weight layer (keep-first-last)")
    by_weight: dict[int, list[_Layer]] = {}
    for layer in layers:
        by_weight.setdefault(id(layer.weight), []).append(layer)
    targets = []
    for users in by_weight.values():
        weight = users[0].weight
        readers = {id(layer.node) for layer in users}
        other = next((node for node, i in weight.uses() if id(node) not in readers or i != 1), None)
        blocked = next((layer for layer in users if reasons[layer.key]), None)
        if other is not None:
            why = f"weight '{weight.name}' is also read by {other.op_type} '{other.name}'"
        elif blocked is not None:
            why = f"weight '{weight.name}' is shared with skipped layer '{blocked.key}'"
        elif options.nm is not None and len({layer.axis for layer in users}) > 1:
            why = f"weight '{weight.name}' is shared by layers reducing over different axes"
        else:
            targets.append(users)
            continue
        for layer in users:
            own = reasons[layer.key]
            skipped[layer.key] = own.reason if own is not None else why
    for function in model.functions.values():
        for index, node in enumerate(function):
            if is_onnx_op(node, *_LAYERS):
                where = f"in function '{function.name}'"
                skipped[f"{function.name}/{_key(node, index)}"] = f"{where}: function bodies hold no initializers"
    return targets, skipped


def _masks(targets: list[list[_Layer]], options: MagnitudePruneOptions) -> list[np.ndarray]:
    weights = [_array(users[0].weight) for users in targets]
    nm = options.nm
    if nm is not None:
        return [plan.nm_mask(w, nm[0], nm[1], users[0].axis) for w, users in zip(weights, targets, strict=True)]
    if options.scope == "global":
        return plan.global_masks(weights, options.sparsity, options.criterion)
    return [plan.unstructured_mask(w, options.sparsity) for w in weights]


def _array(value: ir.Value) -> np.ndarray:
    assert value.const_value is not None
    return value.const_value.numpy()


@register_pass
class PrunePass(ShrinkPass[MagnitudePruneOptions]):
    """Zeroes the smallest-magnitude weights of Conv, ConvTranspose, Gemm and MatMul layers (lossy).

    Rules, in the main graph and its If/Loop/Scan bodies (function bodies hold no initializers:
    their layers are left alone, each named in ``skipped``):

    1. A layer is a Conv, ConvTranspose, Gemm or MatMul whose input 1 is a constant float
       initializer (a default-domain ``Constant`` node there is first lifted into one, counted in
       ``constants_lifted``) (of its graph or an outer one) that is neither a graph input nor a graph
       output; a MatMul's weight must be 2-D. Gather embeddings are not pruned.
    2. ``keep-first-last`` leaves the first and last such layers (in graph order, before
       ``include``/``exclude``) dense. ``include`` keeps only layers whose op type equals, or
       whose node name matches the glob of, one of its entries; ``exclude`` then drops matches;
       weights with fewer than ``min-size`` elements stay dense.
    3. A weight read by several layers is pruned once, and only when every reader is selected
       and nothing else reads it.
    4. Unstructured, ``scope=layer``: each weight loses its ``round(sparsity * size)`` smallest
       ``|w|`` (ties: the earlier element), zeros already there counted.
       ``scope=global``: one threshold over all selected weights, each layer's ``|w|`` divided
       by its size under ``criterion`` (``l1``: mean ``|w|``, ``l2``: root-mean-square), so the
       total zeroed is ``round(sparsity * total)`` and layers of different scale compete fairly.
       Element-wise, ``|w|`` and ``w**2`` rank the same, so ``criterion`` matters only there.
    5. N:M keeps the ``N`` largest ``|w|`` of every ``M`` consecutive weights along the reduction
       axis: Conv ``[O, I/g, kh, kw]`` input channels at each (output channel, kernel position);
       ConvTranspose ``[I, O/g, kh, kw]`` axis 0; Gemm ``B`` axis 0, or axis 1 with ``transB=1``;
       MatMul ``B [K, N]`` axis 0. ``sparsity`` and ``scope`` are ignored: the pattern fixes the
       sparsity at ``1 - N/M``. As in NVIDIA ASP, a layer is pruned only when its output
       channels are a multiple of 8 and its reduction channels (per group) a multiple of 16
       (and of ``M``).
    6. ``allocation=sensitivity`` (unstructured, layer scope): each selected main-graph weight is
       pruned alone to each sparsity of a fixed grid and the model's relative output error on
       calibration data is measured (each weight a graph input of the sub-graph downstream
       of it, fed activations captured once per batch); per-layer sparsities, at most 0.98 each, are then chosen to
       meet ``sparsity`` over the selected weights with the least summed damage. Weights in
       subgraphs keep ``sparsity``. Both allocations are then run whole on the calibration
       data, and the uniform one is kept if it does better (the damages need not add up).
       With a parallel executor (``run --workers N`` or ``--executor ray``) each layer's
       measurement is one work item on a worker; the curves are the same up to float rounding.
    Every layer left dense gets its reason in ``skipped``. Weights are replaced by
    new tensors of the same dtype and name; nothing is changed in place.
    """

    name = "prune"
    exact = False

    def _sensitivity_masks(
        self, model: ir.Model, targets: list[list[_Layer]]
    ) -> tuple[list[np.ndarray], dict[str, Any], dict[str, list[float]]]:
        """Masks at per-layer sparsities chosen from measured damage (rule 6), stats, and curves by key."""
        options = self.options
        weights = [_array(users[0].weight) for users in targets]
        measured: dict[str, int] = {}
        for index, users in enumerate(targets):
            name = users[0].weight.name
            if name is not None and model.graph.initializers.get(name) is users[0].weight:
                measured[name] = index
        uniform = [plan.unstructured_mask(w, options.sparsity) for w in weights]
        if not measured:
            return uniform, {"chosen": "uniform", "reason": "no main-graph layer to measure"}, {}
        try:
            probe = sensitivity.Probe(
                self.context,
                model,
                {name: weights[index] for name, index in measured.items()},
                pass_name=self.name,
                samples=options.samples,
            )

            def replaced(masks: list[np.ndarray]) -> dict[str, np.ndarray]:
                return {name: plan.apply_mask(weights[i], masks[i]) for name, i in measured.items()}

            def masks_at(chosen: dict[str, float]) -> list[np.ndarray]:
                masks = list(uniform)
                for name, index in measured.items():
                    masks[index] = plan.unstructured_mask(weights[index], chosen[name])
                return masks

            curves = probe.curves()
            allocated = masks_at(sensitivity.allocate(curves, options.sparsity))
            for _ in range(options.rounds - 1):
                curves = probe.curves(base=replaced(allocated))
                allocated = masks_at(sensitivity.allocate(curves, options.sparsity))

            errors = probe.errors({"uniform": replaced(uniform), "sensitivity": replaced(allocated)})
        except RuntimeUnavailable as error:
            raise UsageError(f"prune: allocation=sensitivity needs onnxruntime to run the model: {error}") from None
        # The allocation assumes damages add up; if the joint run says otherwise, keep uniform.
        better = errors["sensitivity"] <= errors["uniform"]
        stats = {
            "chosen": "sensitivity" if better else "uniform",
            "calibration_output_error": errors,
            "samples": options.samples,
        }
        keys = {curve.name: targets[measured[curve.name]][0].key for curve in curves}
        return (allocated if better else uniform), stats, {keys[c.name]: c.to_json()["damage"] for c in curves}

    def call(self, model: ir.Model) -> ShrinkPassResult:
        """Prunes the selected weights in place; ``skipped`` names the layers left dense, and why."""
        options = self.options
        timings: dict[str, float] = {}
        if options.allocation == "sensitivity":
            self.context.require_calibration(self.name)
        # Exporters such as paddle2onnx hold weights in Constant nodes: the same data, as initializers.
        lifted = lift_weight_constants(model.graph, _LAYERS)
        targets, skipped = _plan_layers(model, options)
        allocation: dict[str, Any] | None = None
        curves: dict[str, list[float]] = {}
        if options.allocation == "sensitivity" and targets:
            started = time.perf_counter()
            masks, allocation, curves = self._sensitivity_masks(model, targets)
            timings["allocation"] = time.perf_counter() - started
        else:
            masks = _masks(targets, options)
        per_layer: dict[str, dict[str, Any]] = {}
        zeroed = pruned = zeros = total = 0
        for users, keep in zip(targets, masks, strict=True):
            weight = users[0].weight
            old = _array(weight)
            changed = int(np.count_nonzero((old != 0) & ~keep))
            new = plan.apply_mask(old, keep) if changed else old
            if changed:
                assert weight.const_value is not None
                weight.const_value = ir.Tensor(new, name=weight.name, doc_string=weight.const_value.doc_string)
                pruned += 1
                zeroed += changed
            layer_zeros = int(new.size - np.count_nonzero(new))
            zeros += layer_zeros
            total += new.size
            entry: dict[str, Any] = {
                "sparsity": layer_zeros / new.size if new.size else 0.0,
                "kept_magnitude": plan.kept_magnitude(old, keep),
            }
            if users[0].key in curves:
                entry["sensitivity"] = curves[users[0].key]
            if len(users) > 1:
                entry["shared_with"] = [layer.key for layer in users[1:]]
            per_layer[users[0].key] = entry
        stats = {
            "layers_pruned": pruned,
            "weights_zeroed": zeroed,
            "sparsity": zeros / total if total else 0.0,
            "layers": per_layer,
            "constants_lifted": lifted,
        }
        if allocation is not None:
            stats["allocation"] = {**allocation, "sensitivity_grid": list(sensitivity.GRID)}
        return ShrinkPassResult(model, modified=zeroed > 0 or lifted > 0, stats=stats, skipped=skipped, timings=timings)


MagnitudePrunePass = PrunePass  # the name before pass classes were named after their pass
