"""``cleanup``: dead code, Identity/Dropout, no-op and mergeable ops, common subexpressions, duplicate initializers."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Hashable
from typing import Any

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from onnxshrink.ir.activations import hard_swish_nodes
from onnxshrink.ir.constants import constant_array
from onnxshrink.ir.graphs import (
    graph_likes,
    is_onnx_op,
    opset_version,
    scoped_graph_likes,
    subgraphs_of,
    take_over_output,
)
from onnxshrink.passbase import ShrinkPass, ShrinkPassResult, option
from onnxshrink.passes.cleanup import rules_activation, rules_arith, rules_layout  # noqa: F401 - importing them fills the rule table
from onnxshrink.passes.cleanup.dedupe import dedupe_initializers
from onnxshrink.passes.cleanup.facts import Facts, infer_facts
from onnxshrink.passes.cleanup.rules import (
    Bypass,
    Decision,
    FormGemm,
    FormHardSwish,
    NoMatch,
    Replace,
    RuleContext,
    match_node,
)
from onnxshrink.registry import register_pass

_NONDETERMINISTIC = frozenset({"RandomUniform", "RandomNormal", "RandomUniformLike", "RandomNormalLike", "Multinomial"})
# Rules, CSE and dead-code removal feed one another (a merge can leave a MatMul with one use);
# they repeat until a round changes nothing, at most this often.
_MAX_ROUNDS = 8


@dataclasses.dataclass(frozen=True)
class CleanupOptions:
    """Options of ``cleanup``; every rule is exact, these only turn the costlier ones off."""

    cse: bool = option(True, "merge nodes computing the same thing")
    cse_max_constant: int = option(1024, "largest tensor attribute (elements) compared by CSE", minimum=0)
    dedupe_initializers: bool = option(True, "merge initializers with identical dtype, shape and bytes")


def _is_graph_output(value: ir.Value) -> bool:
    return value.is_graph_output()


def _owned_by(value: ir.Value, graph: ir.Graph | ir.Function) -> bool:
    """True when ``value`` is produced by a node of ``graph`` itself (not an input or outer value)."""
    producer = value.producer()
    return producer is not None and producer.graph is graph


def _bypass(node: ir.Node, source: ir.Value, result: ir.Value) -> bool:
    """Removes ``node`` whose output ``result`` equals ``source``; False when it must stay.

    A graph output keeps its name: ``source`` takes it over when ``source`` is produced in the
    same graph and is not itself an output; otherwise the node stays.
    """
    graph = node.graph
    assert graph is not None
    if _is_graph_output(result):
        if not _owned_by(source, graph) or _is_graph_output(source):
            return False
        take_over_output(result, source)
    else:
        ir.convenience.replace_all_uses_with(result, source)
    graph.remove(node, safe=True)
    return True


def _constant_bool(value: ir.Value | None) -> bool | None:
    """An optional flag input: False when absent, its value when constant, None when unknown."""
    if value is None:
        return False
    array = constant_array(value, max_elements=1)
    return None if array is None or array.size != 1 else bool(array.reshape(-1)[0])


def _remove_identity_like(graph: ir.Graph | ir.Function, stats: Counter[str]) -> None:
    for node in list(graph):
        if not is_onnx_op(node) or not node.inputs or node.inputs[0] is None:
            continue
        if node.op_type == "Identity" and len(node.outputs) == 1:
            if _bypass(node, node.inputs[0], node.outputs[0]):
                stats["identity_removed"] += 1
        elif node.op_type == "Dropout":
            # Rule 2: inference Dropout is Identity unless training_mode may be on or the mask is used.
            training = _constant_bool(node.inputs[2]) if len(node.inputs) > 2 else False
            is_test = node.attributes.get_int("is_test", 1) if "is_test" in node.attributes else 1
            mask_used = len(node.outputs) > 1 and (node.outputs[1].uses() or _is_graph_output(node.outputs[1]))
            if training is False and is_test and not mask_used and _bypass(node, node.inputs[0], node.outputs[0]):
                stats["dropout_removed"] += 1


def _rule_scopes(model: ir.Model) -> list[tuple[ir.Graph | ir.Function, int]]:
    """Every graph-like with the version of the ONNX domain its nodes run at."""
    return [(graph, opset_version(model, scope=function)) for graph, function in scoped_graph_likes(model)]


def _apply(node: ir.Node, decision: Decision, facts: Facts) -> bool:
    """The rewrite step of an algebraic rule; False when it must not be applied after all."""
    if isinstance(decision, Bypass):
        if len(node.outputs) == 1 and _bypass(node, decision.source, node.outputs[0]):
            return True
        return decision.otherwise is not None and _apply(node, decision.otherwise, facts)
    if isinstance(decision, FormGemm):
        return _form_gemm(node, decision, facts)
    if isinstance(decision, Replace):
        return _replace(node, decision, facts)
    if isinstance(decision, FormHardSwish):
        return _form_hard_swish(node, decision, facts)
    for index, value in decision.inputs:
        node.replace_input_with(index, value)
    for attr in decision.attributes:
        node.attributes[attr.name] = attr
    return True


def _form_gemm(add: ir.Node, decision: FormGemm, facts: Facts) -> bool:
    graph = add.graph
    matmul = decision.matmul
    if graph is None or matmul.graph is not graph or len(add.outputs) != 1:
        return False
    gemm = ir.node("Gemm", [decision.a, decision.w, decision.bias])
    graph.insert_before(add, gemm)
    facts.carry_over(add.outputs[0], gemm.outputs[0])
    take_over_output(add.outputs[0], gemm.outputs[0])
    graph.remove([add, matmul], safe=True)
    gemm.name = matmul.name
    return True


def _form_hard_swish(node: ir.Node, decision: FormHardSwish, facts: Facts) -> bool:
    """``HardSwish(x)`` (opset 14 on), else ``Mul(x, HardSigmoid(x, 1/6, 0.5))``, in place of ``node``."""
    graph = node.graph
    if graph is None or len(node.outputs) != 1:
        return False
    gate_name = f"{node.name}_hardsigmoid" if node.name else None
    new = hard_swish_nodes(decision.x, fused=decision.fused, name=node.name, gate_name=gate_name)
    graph.insert_before(node, new)
    facts.carry_over(node.outputs[0], new[-1].outputs[0])
    take_over_output(node.outputs[0], new[-1].outputs[0])
    graph.remove(node, safe=True)
    return True


def _replace(node: ir.Node, decision: Replace, facts: Facts) -> bool:
    graph = node.graph
    if graph is None or len(node.outputs) != 1:
        return False
    inputs = list(decision.inputs)
    if decision.constant is not None:
        inputs.append(_new_constant(graph, node, decision.constant))
    new = ir.node(decision.op_type, inputs, attributes={a.name: a for a in decision.attributes})
    graph.insert_before(node, new)
    facts.carry_over(node.outputs[0], new.outputs[0])
    take_over_output(node.outputs[0], new.outputs[0])
    graph.remove(node, safe=True)
    new.name = node.name
    return True


def _new_constant(graph: ir.Graph | ir.Function, before: ir.Node, array: np.ndarray) -> ir.Value:
    """A constant for a rewrite: an initializer, or a Constant node in a function (which has none)."""
    taken = {v.name for v in graph.initializers.values()} if isinstance(graph, ir.Graph) else set()
    taken |= {v.name for n in graph for v in n.outputs}
    base = f"{before.name or before.op_type}_shape"
    name, index = base, 0
    while name in taken:
        index += 1
        name = f"{base}_{index}"
    if isinstance(graph, ir.Graph):
        value = ir.Value(
            name=name,
            shape=ir.Shape(array.shape),
            type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
            const_value=ir.Tensor(array, name=name),
        )
        graph.register_initializer(value)
        return value
    constant = ir.node("Constant", [], attributes={"value": ir.Tensor(array, name=name)})
    graph.insert_before(before, constant)
    constant.outputs[0].name = name
    return constant.outputs[0]


def _apply_rules(graph: ir.Graph | ir.Function, context: RuleContext, stats: Counter[str]) -> bool:
    """One sweep in graph order; True when some rule could not decide for want of a dtype or rank."""
    missing_facts = False
    for node in list(graph):
        if node.graph is None or not any(v.uses() or _is_graph_output(v) for v in node.outputs):
            continue  # removed by an earlier rewrite, or dead: dead-node removal takes it
        decision = match_node(node, context)
        if isinstance(decision, NoMatch):
            missing_facts = missing_facts or decision.missing_facts
        elif _apply(node, decision, context.facts):
            stats[decision.stat] += 1
    return missing_facts


def _sweep(scopes: list[tuple[ir.Graph | ir.Function, int]], facts: Facts, stats: Counter[str]) -> bool:
    """The rules over every graph-like; True when some rule wanted a dtype or rank it lacked."""
    missing_facts = False
    for graph, opset in scopes:
        missing_facts |= _apply_rules(graph, RuleContext(facts, opset), stats)
    return missing_facts


def _attribute_key(attr: ir.Attr, max_constant: int) -> Hashable | None:
    """A hashable image of an attribute, or None when CSE must skip the node."""
    if attr.is_ref():
        return ("ref", attr.ref_attr_name)
    kind = attr.type
    if kind in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
        return None
    value: Any = attr.value
    if kind == ir.AttributeType.TENSOR:
        if value.size > max_constant:
            return None
        array = value.numpy()
        return (str(array.dtype), array.shape, array.tobytes() if array.dtype != object else str(array.tolist()))
    if kind == ir.AttributeType.TENSORS:
        return None
    if isinstance(value, (list, tuple)):
        return tuple(value)
    if kind == ir.AttributeType.FLOAT:
        return ("f", np.float32(value).tobytes())  # NaN-safe, bit-exact
    return (kind.name, value) if isinstance(value, Hashable) else None


def _eliminate_common_subexpressions(graph: ir.Graph | ir.Function, max_constant: int, stats: Counter[str]) -> None:
    seen: dict[Hashable, ir.Node] = {}
    for node in list(graph):
        if is_onnx_op(node, *_NONDETERMINISTIC):
            continue
        attrs = []
        for name, attr in sorted(node.attributes.items()):
            key = _attribute_key(attr, max_constant)
            if key is None:
                break
            attrs.append((name, key))
        else:
            signature = (
                node.op_identifier(),
                len(node.outputs),
                tuple(id(v) if v is not None else None for v in node.inputs),
                tuple(attrs),
            )
            kept = seen.get(signature)
            if kept is None:
                seen[signature] = node
                continue
            if _merge_into(node, kept):
                stats["cse_merged"] += 1


def _merge_into(node: ir.Node, kept: ir.Node) -> bool:
    """Points every use of ``node``'s outputs at ``kept``'s and removes ``node``."""
    graph = node.graph
    assert graph is not None
    pairs = list(zip(node.outputs, kept.outputs, strict=True))
    for old, new in pairs:
        if _is_graph_output(old) and _is_graph_output(new):
            return False  # both names must stay; merging would need an Identity
    for old, new in pairs:
        if _is_graph_output(old):
            take_over_output(old, new)
        else:
            ir.convenience.replace_all_uses_with(old, new)
    graph.remove(node, safe=True)
    return True


def _remove_dead_nodes(graph: ir.Graph | ir.Function, stats: Counter[str]) -> None:
    for node in reversed(list(graph)):
        if any(v.uses() or _is_graph_output(v) for v in node.outputs):
            for sub in subgraphs_of(node):
                _remove_dead_nodes(sub, stats)
            continue
        graph.remove(node, safe=True)
        stats["dead_nodes_removed"] += 1


def _remove_unused_initializers(graph: ir.Graph, stats: Counter[str]) -> None:
    for value in list(graph.initializers.values()):
        if not value.uses() and not value.is_graph_input() and not _is_graph_output(value):
            assert value.name is not None
            graph.initializers.pop(value.name)
            stats["initializers_removed"] += 1


@register_pass
class CleanupPass(ShrinkPass[CleanupOptions]):
    """Removes what a deployed model does not compute, keeping the signature.

    Rules, applied in every graph, subgraph (If/Loop/Scan) and model-local function:

    1. ``y = Identity(x)`` is removed and uses of ``y`` read ``x``. When ``y`` is a graph output,
       ``x`` takes its name if ``x`` is computed in that graph and is not an output itself;
       otherwise the node stays (graph input straight to output, outer-scope values).
    2. Inference Dropout (no ``training_mode`` input or a constant false one, mask unused) is
       removed like Identity.
    3. Initializers with identical dtype, shape and bytes are merged (only same-layout tensors
       are read, one at a time).
    4. Nodes with the same op, inputs and attributes are merged into the first (common
       subexpressions); random ops, nodes with subgraphs and large tensor attributes are skipped;
       two graph outputs are never merged.
    5. Nodes whose outputs are never used and are not graph outputs are removed, then unused
       initializers, unused model-local functions and unused opset imports.

    Algebraic rules (``rules_arith.py``, ``rules_layout.py``, ``rules_activation.py``), each only
    where the dtypes, dims and constants that make it exact are known: declared by the model or,
    when missing, found by onnx shape inference on a weight-free copy (the model is not annotated).
    A removed node's output is replaced like an Identity's (rule 1).

    6. Cast to its input's own dtype, and CastLike to the same dtype, are removed.
    7. ``Cast(Cast(x, A), B)`` reads ``x`` directly when the first cast is lossless and the
       second then converts the same value (float32 -> float64 -> float32 is ``x``; never through
       a float to an integer that ``x``'s range may overflow; never float -> int -> float).
    8. Concat, Sum, Max, Min and Mean of a single input are removed.
    9. Reshape to its input's own dims (static, or copied with 0) is removed; a Reshape of a
       Reshape/Flatten/Squeeze/Unsqueeze reads that node's input when its constant target has no
       0 (or ``allowzero=1``): a 0 would copy a dim of the intermediate.
    10. Flatten of a rank-2 tensor at axis 1 (or of static dims it keeps), Squeeze without axes
        of static dims with no 1, and Unsqueeze with empty axes are removed;
        ``Squeeze(Unsqueeze(x, a), a)`` and ``Unsqueeze(Squeeze(x, a), a)`` are ``x``.
    11. Transpose with the identity perm is removed; ``Transpose(Transpose(x, p1), p2)`` becomes
        one Transpose with perm ``p1[p2]``, or ``x`` when that is the identity.
    12. Slice with step 1, starting at 0 and ending at or past every sliced dim (a static dim,
        or INT64_MAX) is removed.
    13. Pad with all-zero pads (input, or attribute before opset 11) is removed.
    14. ``x+0``, ``0+x``, ``x-0``, ``x*1``, ``1*x`` and ``x/1`` with a constant all-0 / all-1
        operand are ``x`` when that operand broadcasts into ``x``'s known dims without changing
        them (``x`` of unknown rank: only a rank-0 constant). NaN stays NaN; ``-0.0 + 0.0`` is
        ``+0.0``, an equal value.
    15. Expand to a shape that broadcasts into the input's dims without changing them is removed.
    16. ``Add(MatMul(A, W), b)`` becomes ``Gemm(A, W, b)`` when ``A`` has rank 2, ``W`` is a
        constant matrix ``[K, N]``, ``b`` a constant ``[N]`` or ``[1, N]``, the dtype is one Gemm
        takes (float, double, float16; bfloat16 from opset 13), and the MatMul output has no other
        use and is not a graph output. The Gemm keeps the Add's output name and type.
    17. A Transpose that only moves dims of static size 1 (the others keep their order) becomes
        a Reshape to its static output dims (a dim kept in place is copied with 0), where that
        merges: with the single-use view before it, whose input it then reads, or with the
        Reshapes that are its only uses.
    18. Activations written out op by op on float32 tensors (paddle2onnx's MobileNetV3), each
        intermediate feeding the pattern alone, the constants one-element: ``Clip(x + 3, 0, 6) / 6``
        (or ``* (1/6)``) becomes ``HardSigmoid(x, alpha=1/6, beta=0.5)``; ``x * Clip(x + 3, 0, 6) / 6``
        (the products in any order) becomes ``HardSwish(x)`` from opset 14, ``x * HardSigmoid(x)``
        below (the opset is kept); ``x * HardSigmoid(x, 1/6, 0.5)`` becomes ``HardSwish(x)`` from
        opset 14. Equal up to float rounding; onnxruntime runs each as one kernel.

    Rules 4 and 6-18 and dead-node removal repeat until a round changes nothing (at most 8).
    A bypass that a graph output refuses still merges (rules 7, 9, 11) where that frees a node.
    Stats: ``noop_removed`` (6, 8-15), ``casts_merged``, ``reshapes_merged``,
    ``squeeze_pairs_removed``, ``transposes_merged``, ``gemm_formed``, ``transposes_to_reshape``,
    ``hardsigmoid_formed``, ``hardswish_formed``.
    Graph inputs and outputs keep their names, types and order.
    """

    name = "cleanup"
    exact = True

    def call(self, model: ir.Model) -> ShrinkPassResult:
        """Runs the rules to a fixed point; ``modified`` is True when any count is non-zero."""
        options = self.options
        stats: Counter[str] = Counter()
        for graph in list(graph_likes(model)):
            _remove_identity_like(graph, stats)
        if options.dedupe_initializers:
            for graph in model.graphs():
                dedupe_initializers(graph, stats)
        facts, inferred = Facts(), False
        for round_index in range(_MAX_ROUNDS):
            before = sum(stats.values())
            scopes = _rule_scopes(model)  # the graph-likes, with the opset each runs at
            missing_facts = _sweep(scopes, facts, stats)
            if missing_facts and not inferred:
                facts, inferred = infer_facts(model), True  # once, and only when a rule asked
                _sweep(scopes, facts, stats)
            # CSE and dead-node removal reach their fixed point in one sweep: later rounds need
            # them only after the rules changed something.
            if round_index == 0 or sum(stats.values()) != before:
                if options.cse:
                    for graph, _ in scopes:
                        _eliminate_common_subexpressions(graph, options.cse_max_constant, stats)
                _remove_dead_nodes(model.graph, stats)
                for function in model.functions.values():
                    _remove_dead_nodes(function, stats)
            if sum(stats.values()) == before:
                break
        for graph in model.graphs():
            _remove_unused_initializers(graph, stats)
        functions_before = len(model.functions)
        common_passes.RemoveUnusedFunctionsPass()(model)
        stats["functions_removed"] = functions_before - len(model.functions)
        opsets_before = len(model.opset_imports) + sum(len(f.opset_imports) for f in model.functions.values())
        common_passes.RemoveUnusedOpsetsPass()(model)
        opsets_after = len(model.opset_imports) + sum(len(f.opset_imports) for f in model.functions.values())
        stats["opsets_removed"] = opsets_before - opsets_after
        clean = {key: count for key, count in sorted(stats.items()) if count}
        return ShrinkPassResult(model, modified=bool(clean), stats=clean)
