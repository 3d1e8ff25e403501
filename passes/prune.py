"""``prune``: magnitude pruning of layer weights, unstructured or N:M along the reduction axis."""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from typing import Any, Literal

import numpy as np
import onnx_ir as ir

from onnxshrink.errors import UsageError
from onnxshrink.passbase import ShrinkPass, ShrinkPassResult
from onnxshrink.passes import _prune_plan as plan
from onnxshrink.registry import register_pass
from onnxshrink.sparsity import reduction_axis

_ONNX = ("", "ai.onnx")
_LAYERS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_NM = re.compile(r"^(\d+):(\d+)$")
# NVIDIA ASP sparsifies a layer only when these divide its output and reduction channels.
_ASP_OUT, _ASP_IN = 8, 16


@dataclasses.dataclass(frozen=True)
class MagnitudePruneOptions:
    sparsity: float = dataclasses.field(
        default=0.5, metadata={"help": "fraction of weights zeroed, 0 <= s < 1 (unstructured only)"}
    )
    pattern: str = dataclasses.field(
        default="unstructured", metadata={"help": "'unstructured' or N:M (keep N of every M), e.g. 2:4, 4:8"}
    )
    scope: Literal["layer", "global"] = dataclasses.field(
        default="layer", metadata={"help": "layer: each layer at the target; global: one threshold (unstructured)"}
    )
    criterion: Literal["l1", "l2"] = dataclasses.field(
        default="l1", metadata={"help": "layer norm that global scope divides |w| by: mean |w| or RMS"}
    )
    include: tuple[str, ...] = dataclasses.field(
        default=(), metadata={"help": "prune only layers whose op type or node-name glob matches (empty: all)"}
    )
    exclude: tuple[str, ...] = dataclasses.field(
        default=(), metadata={"help": "never prune layers whose op type or node-name glob matches"}
    )
    min_size: int = dataclasses.field(default=1024, metadata={"help": "skip weights with fewer elements"})
    keep_first_last: bool = dataclasses.field(
        default=True, metadata={"help": "leave the model's first and last weight layers dense"}
    )
    allocation: Literal["uniform"] = dataclasses.field(
        default="uniform", metadata={"help": "per-layer sparsity allocation: uniform (the same target everywhere)"}
    )

    def __post_init__(self) -> None:
        if not isinstance(self.sparsity, (int, float)) or not 0 <= self.sparsity < 1:
            raise UsageError(f"prune: sparsity must be a number with 0 <= sparsity < 1, got {self.sparsity!r}")
        if self.pattern != "unstructured":
            match = _NM.match(self.pattern)
            if match is None:
                raise UsageError(f"prune: pattern must be 'unstructured' or N:M such as 2:4, got {self.pattern!r}")
            n, m = int(match.group(1)), int(match.group(2))
            if not 0 < n < m:
                raise UsageError(f"prune: pattern {self.pattern} needs 0 < N < M (keep N of every M weights)")
        for key, value, valid in (
            ("scope", self.scope, ("layer", "global")),
            ("criterion", self.criterion, ("l1", "l2")),
            ("allocation", self.allocation, ("uniform",)),
        ):
            if value not in valid:
                raise UsageError(f"prune: bad {key} {value!r}; valid: {', '.join(valid)}")
        if self.min_size < 0:
            raise UsageError(f"prune: min-size must be >= 0, got {self.min_size}")

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


def _layer(node: ir.Node, key: str) -> _Layer | str:
    """The node as a :class:`_Layer`, or why it has no prunable weight."""
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    if weight is None:
        return "no weight input"
    tensor = weight.const_value
    if tensor is None or not weight.is_initializer():
        return f"weight '{weight.name}' is not a constant initializer"
    if weight.is_graph_input():
        return f"weight '{weight.name}' is also a graph input, so callers may override it"
    if weight.is_graph_output():
        return f"weight '{weight.name}' is a graph output"
    if not tensor.dtype.is_floating_point():
        return f"weight '{weight.name}' has non-float dtype {tensor.dtype.name}"
    shape = tuple(int(d) for d in tensor.shape.numpy())
    axis = reduction_axis(node, len(shape))
    if axis is None or (node.op_type == "Gemm" and len(shape) != 2):
        return f"weight '{weight.name}' of shape {list(shape)} has no reduction axis for {node.op_type}"
    group_attr = node.attributes.get("group")
    group = group_attr.as_int() if group_attr is not None else 1
    if node.op_type == "Conv":
        out_channels, in_channels = shape[0], shape[1]
    elif node.op_type == "ConvTranspose":
        out_channels, in_channels = shape[1] * group, shape[0] // group
    else:
        out_channels, in_channels = shape[1 - axis], shape[axis]
    return _Layer(key, node, weight, axis, out_channels, in_channels)


def _matches(node: ir.Node, key: str, patterns: tuple[str, ...]) -> str | None:
    return next((p for p in patterns if p == node.op_type or fnmatch.fnmatchcase(key, p)), None)


def _selection_reason(layer: _Layer, options: MagnitudePruneOptions) -> str | None:
    """Why the options leave ``layer`` dense, or None when they select it."""
    if options.include and _matches(layer.node, layer.key, options.include) is None:
        return f"not matched by include={','.join(options.include)}"
    if (pattern := _matches(layer.node, layer.key, options.exclude)) is not None:
        return f"excluded by '{pattern}'"
    size = layer.weight.const_value.size if layer.weight.const_value is not None else 0
    if size < options.min_size:
        return f"{size} weights < min-size {options.min_size}"
    nm = options.nm
    if nm is not None:
        if layer.out_channels % _ASP_OUT:
            return f"{layer.out_channels} output channels, not a multiple of {_ASP_OUT} ({options.pattern})"
        if layer.in_channels % _ASP_IN or layer.in_channels % nm[1]:
            step = np.lcm(_ASP_IN, nm[1])
            return f"{layer.in_channels} reduction channels, not a multiple of {step} ({options.pattern})"
    return None


def _plan_layers(model: ir.Model, options: MagnitudePruneOptions) -> tuple[list[list[_Layer]], dict[str, str]]:
    """The weights to prune (each with the layers that read it, first user first) and skip reasons."""
    skipped: dict[str, str] = {}
    layers: list[_Layer] = []
    for index, node in enumerate(ir.traversal.RecursiveGraphIterator(model.graph)):
        if node.domain not in _ONNX or node.op_type not in _LAYERS:
            continue
        key = _key(node, index)
        found = _layer(node, key)
        if isinstance(found, str):
            skipped[key] = found
        else:
            layers.append(found)
    reasons = {layer.key: _selection_reason(layer, options) for layer in layers}
    if options.keep_first_last and layers:
        reasons[layers[0].key] = "first weight layer (keep-first-last)"
        reasons[layers[-1].key] = "last weight layer (keep-first-last)"
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
            skipped[layer.key] = reasons[layer.key] or why
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
class MagnitudePrunePass(ShrinkPass):
    """Zeroes the smallest-magnitude weights of Conv, ConvTranspose, Gemm and MatMul layers (lossy).

    Rules, in the main graph and its If/Loop/Scan bodies (function bodies hold no initializers
    and are left alone):

    1. A layer is a Conv, ConvTranspose, Gemm or MatMul whose input 1 is a constant float
       initializer (of its graph or an outer one) that is neither a graph input nor a graph
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
    Every layer left dense gets its reason in ``stats["skipped"]``. Weights are replaced by
    new tensors of the same dtype and name; nothing is changed in place.
    """

    name = "prune"
    exact = False
    Options = MagnitudePruneOptions

    def call(self, model: ir.Model) -> ShrinkPassResult:
        options: MagnitudePruneOptions = self.options
        targets, skipped = _plan_layers(model, options)
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
            if len(users) > 1:
                entry["shared_with"] = [layer.key for layer in users[1:]]
            per_layer[users[0].key] = entry
        stats = {
            "layers_pruned": pruned,
            "weights_zeroed": zeroed,
            "sparsity": zeros / total if total else 0.0,
            "layers": per_layer,
            "skipped": skipped,
        }
        return ShrinkPassResult(model, modified=zeroed > 0, stats=stats)
