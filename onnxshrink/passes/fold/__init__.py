"""``fold``: constant folding, including shape arithmetic on partly dynamic shapes."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from onnxshrink.ir.constants import constant_array, is_constant
from onnxshrink.ir.graphs import fresh_name, graph_likes, is_onnx_op, opset_version, subgraphs_of, taken_names
from onnxshrink.ir.shapes import infer_shapes
from onnxshrink.passbase import ShrinkPass, ShrinkPassResult, option
from onnxshrink.passes.fold.dim_classes import DimClasses
from onnxshrink.passes.fold.evaluators import NotEvaluable, evaluate, output_elements
from onnxshrink.passes.fold.partial_shapes import (
    Partial,
    as_partial,
    dims_of,
    propagate,
    reshape_target,
    tie_from_values,
)
from onnxshrink.registry import register_pass

logger = logging.getLogger(__name__)

_NEVER_FOLD = frozenset(
    {
        # Random ops differ per run; Q/DQ pairs are what quantized kernels match on.
        "RandomUniform", "RandomNormal", "RandomUniformLike", "RandomNormalLike", "Multinomial", "Bernoulli",
        "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
        # Control flow and sequences: left to dedicated rules.
        "If", "Loop", "Scan", "SequenceConstruct", "SequenceEmpty", "SequenceInsert", "SequenceAt",
        "Optional", "OptionalGetElement", "OptionalHasElement",
    }
)  # fmt: skip
# Past this many elements an evaluation is not attempted at all, whatever the inputs.
_HARD_ELEMENT_CAP = 1 << 31
# Ops whose output has the input's elements in the same order: a Reshape of one reads only the count.
_VIEWS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")


@dataclasses.dataclass(frozen=True)
class FoldOptions:
    """Options of ``fold``."""

    max_growth: int = option(
        1024, "bytes a folded output may exceed its constant inputs by (the size guard)", minimum=0
    )
    shapes: bool = option(True, "infer shapes and fold Shape arithmetic on partly dynamic shapes")
    inline_functions: Literal["auto", "always", "never"] = option(
        "auto",
        "inline model-local functions: auto = those called once or fed constants",
        choices=("auto", "always", "never"),
    )


def _label(node: ir.Node) -> str:
    return node.name or f"{node.op_type}->{node.outputs[0].name if node.outputs else ''}"


class _Folder:
    """One fold run over a model: graph by graph, node by node, in order."""

    def __init__(self, model: ir.Model, options: FoldOptions) -> None:
        self.model = model
        self.options = options
        self.stats: Counter[str] = Counter()
        self.skipped: dict[str, str] = {}
        self.partials: dict[ir.Value, Partial] = {}
        self.equal_values: dict[tuple[Any, ...], ir.Value] = {}
        self.classes = DimClasses().build(graph_likes(model)) if options.shapes else DimClasses()
        self.taken_names = taken_names(model)

    def unique_name(self, base: str) -> str:
        return fresh_name(self.taken_names, base)

    def fold_graph(self, graph: ir.Graph | ir.Function, opset: int) -> None:
        """Folds ``graph`` and its subgraphs, whose ONNX nodes run at ``opset``."""
        for node in list(graph):
            if node.graph is None:  # removed while folding an earlier node
                continue
            for sub in subgraphs_of(node):
                self.fold_graph(sub, opset)
            self.fold_node(node, graph, opset)

    def fold_node(self, node: ir.Node, graph: ir.Graph | ir.Function, opset: int) -> None:
        if not is_onnx_op(node) or node.op_type in _NEVER_FOLD:
            return
        if node.op_type == "Constant":
            if isinstance(graph, ir.Graph) and "value" in node.attributes:
                self.lift_constant(node, graph)
            elif isinstance(graph, ir.Graph) and "sparse_value" not in node.attributes:
                self.lift_value_attribute(node, graph, opset)
            return
        values: list[Any] = [self.known(v) for v in node.inputs]
        if self.options.shapes:
            tie_from_values(node, values, self.classes)
        if all(not isinstance(v, Partial) for v in values) and all(
            v is not None for v, inp in zip(values, node.inputs, strict=True) if inp is not None
        ):
            if node.inputs or node.op_type in ("ConstantOfShape", "Range"):
                self.try_evaluate(node, graph, values, opset)
            return
        if not self.options.shapes:
            return
        if node.op_type == "Reshape" and len(node.inputs) == 2 and values[1] is not None:
            target = as_partial(values[1])
            if target is not None:
                self.rewrite_reshape(node, graph, target, values[1])
            return
        partial = propagate(node, values, self.classes)
        if partial is None:
            return
        if partial.known:
            self.replace_with_constants(node, graph, [partial.to_array()])
            self.stats["shape_folded"] += 1
            return
        self.partials[node.outputs[0]] = partial
        self.merge_equal_partial(node, graph, partial)

    def merge_equal_partial(self, node: ir.Node, graph: ir.Graph | ir.Function, partial: Partial) -> None:
        """Uses of a shape value equal, element by element, to an earlier one of the graph read that one.

        Elements are equal when they are the same number or provably the same dim; the earlier
        value is computed before this node in the same graph, so it is available to every use.
        """
        result = node.outputs[0]
        if None in partial.elements or result.dtype is None or result.is_graph_output():
            return
        signature = (
            id(graph),
            result.dtype,
            partial.scalar,
            tuple(self.classes.find(e) if isinstance(e, tuple) else e for e in partial.elements),
        )
        earlier = self.equal_values.get(signature)
        if earlier is None or earlier.producer() is None or earlier.producer().graph is not graph:  # type: ignore[union-attr]
            self.equal_values[signature] = result
            return
        result.replace_all_uses_with(earlier)
        self.stats["shape_values_merged"] += 1

    def known(self, value: ir.Value | None) -> Any:
        if value is None:
            return None
        array = constant_array(value)
        if array is not None:
            return array
        return self.partials.get(value)

    def try_evaluate(self, node: ir.Node, graph: ir.Graph | ir.Function, arrays: list[Any], opset: int) -> None:
        # Only inputs this node is the last user of leave the file when it folds.
        in_bytes = sum(
            np.asarray(a).nbytes
            for a, value in zip(arrays, node.inputs, strict=True)
            if a is not None and value is not None and _freed_by(value, node)
        )
        expected = output_elements(node, arrays)
        if expected is not None and (expected < 0 or expected * 8 > in_bytes + self.options.max_growth):
            self.skip_size_guard(node, "its output may be large" if expected < 0 else f"{expected} elements")
            return
        if any(np.size(a) > _HARD_ELEMENT_CAP for a in arrays if a is not None):
            return
        try:
            results = evaluate(node, arrays, opset)
        except NotEvaluable as reason:
            logger.debug("not folding %s: %s", node.name or node.op_type, reason)
            self.stats["not_evaluable"] += 1
            self.skipped[_label(node)] = f"not evaluable: {reason}"
            return
        finally:
            arrays.clear()  # drop our views of memory-mapped inputs so they can be unmapped
            _release_mapped_inputs(node)
        if len(results) != len(node.outputs):
            return
        out_bytes = sum(r.nbytes for r in results)
        if out_bytes > in_bytes + self.options.max_growth:
            self.skip_size_guard(node, f"{out_bytes} bytes")
            return
        for result, value in zip(results, node.outputs, strict=True):
            if value.dtype is not None and value.dtype.is_floating_point() != (result.dtype.kind == "f"):
                return  # the evaluator disagrees with the declared type: leave it
        self.replace_with_constants(node, graph, results)
        self.stats["nodes_folded"] += 1

    def skip_size_guard(self, node: ir.Node, size: str) -> None:
        self.stats["skipped_size_guard"] += 1
        self.skipped[_label(node)] = f"size guard: {size} would exceed its freed inputs by more than max-growth"

    def replace_with_constants(
        self, node: ir.Node, graph: ir.Graph | ir.Function, arrays: Sequence[np.ndarray]
    ) -> None:
        for old, array in zip(node.outputs, arrays, strict=True):
            if not old.uses() and not old.is_graph_output():
                continue
            array = _match_dtype(array, old)
            name = old.name or self.unique_name(f"{node.name or node.op_type}_folded")
            if isinstance(graph, ir.Graph):
                new = ir.Value(
                    name=name, shape=ir.Shape(array.shape), type=old.type, const_value=ir.Tensor(array, name=name)
                )
                if new.type is None:
                    new.type = ir.TensorType(ir.DataType.from_numpy(array.dtype))
                _swap(old, new)
                graph.register_initializer(new)
            else:
                # Function bodies cannot hold initializers: a Constant node stands in.
                constant = ir.node("Constant", [], attributes={"value": ir.Tensor(array, name=name)})
                graph.insert_before(node, constant)
                new = constant.outputs[0]
                new.type, new.shape = old.type, ir.Shape(array.shape)
                _swap(old, new)
                new.name = name
        graph.remove(node, safe=True)

    def lift_constant(self, node: ir.Node, graph: ir.Graph) -> None:
        tensor = node.attributes["value"].as_tensor()
        old = node.outputs[0]
        name = old.name or self.unique_name("constant")
        shape = ir.Shape(tensor.shape.numpy())
        new = ir.Value(name=name, shape=shape, type=ir.TensorType(tensor.dtype), const_value=tensor)
        if old.type is not None:
            new.type = old.type
        _swap(old, new)
        graph.register_initializer(new)
        graph.remove(node, safe=True)
        self.stats["constants_lifted"] += 1

    def lift_value_attribute(self, node: ir.Node, graph: ir.Graph, opset: int) -> None:
        """``Constant <value_float(s)/value_int(s)/value_string(s)>``: the data is in the file already."""
        try:
            results = evaluate(node, [], opset)
        except NotEvaluable:
            return
        self.replace_with_constants(node, graph, results)
        self.stats["constants_lifted"] += 1

    def rewrite_reshape(
        self, node: ir.Node, graph: ir.Graph | ir.Function, target: Partial, original: Partial | np.ndarray
    ) -> None:
        """A Reshape whose target is partly known (or constant, its data not).

        The target becomes constant where :func:`reshape_target` can name it, against the input
        or, failing that, against the input of the view (Reshape, Flatten, Squeeze, Unsqueeze)
        that computes it: a reshape reads only the element count, which a view keeps. A
        Reshape that provably returns its input's own dims is removed.
        """
        data = node.inputs[0]
        allowzero = bool(node.attributes.get_int("allowzero", 0))
        if data is None:
            return
        shape = reshape_target(data, target, allowzero, self.classes)
        if shape is not None and self.is_identity_reshape(node, data, shape, allowzero):
            return
        if shape is None:
            view = data.producer()
            source = view.inputs[0] if view is not None and is_onnx_op(view, *_VIEWS) and view.inputs else None
            shape = reshape_target(source, target, allowzero, self.classes) if source is not None else None
            if shape is None or source is None:
                return
            node.replace_input_with(0, source)
            self.stats["reshapes_merged"] += 1
            data = source
            if self.is_identity_reshape(node, data, shape, allowzero):
                return
        if isinstance(original, np.ndarray) and np.array_equal(np.asarray(original).reshape(-1), shape):
            return  # the constant target is already this one
        name = self.unique_name(f"{node.name or 'reshape'}_shape")
        if isinstance(graph, ir.Graph):
            new = ir.Value(
                name=name,
                shape=ir.Shape(shape.shape),
                type=ir.TensorType(ir.DataType.INT64),
                const_value=ir.Tensor(shape, name=name),
            )
            graph.register_initializer(new)
        else:
            constant = ir.node("Constant", [], attributes={"value": ir.Tensor(shape, name=name)})
            graph.insert_before(node, constant)
            new = constant.outputs[0]
        node.replace_input_with(1, new)
        self.stats["reshape_targets_folded"] += 1

    def is_identity_reshape(self, node: ir.Node, data: ir.Value, shape: np.ndarray, allowzero: bool) -> bool:
        """Removes ``node`` when target ``shape`` gives ``data``'s own dims; True when it did.

        Each element must copy (``0``) or equal the input's dim at its position; one ``-1`` may
        stand for the dim left, which it then equals wherever the Reshape succeeds.
        """
        dims = dims_of(data, self.classes)
        result = node.outputs[0]
        if dims is None or len(dims) != len(shape) or result.is_graph_output() or np.count_nonzero(shape == -1) > 1:
            return False
        for size, dim in zip(shape.tolist(), dims, strict=True):
            if not ((size == 0 and not allowzero) or size == -1 or (isinstance(dim, int) and dim == size)):
                return False
        result.replace_all_uses_with(data)
        self.stats["reshapes_removed"] += 1
        return True

    def remove_orphans(self, graph: ir.Graph | ir.Function) -> None:
        """Nodes that folding left without consumers (the Shape chains behind a folded target)."""
        for node in reversed(list(graph)):
            for sub in subgraphs_of(node):
                self.remove_orphans(sub)
            if (
                is_onnx_op(node)
                and node.op_type not in _NEVER_FOLD
                and not any(v.uses() or v.is_graph_output() for v in node.outputs)
            ):
                graph.remove(node, safe=True)
                self.stats["orphans_removed"] += 1
        if isinstance(graph, ir.Graph):
            for value in list(graph.initializers.values()):
                if not value.uses() and not value.is_graph_input() and not value.is_graph_output():
                    assert value.name is not None
                    graph.initializers.pop(value.name)


_INFERRED_FOR = "onnxshrink.fold.inferred_for"


def _structure(model: ir.Model) -> int:
    """A hash of which node reads which values: equal when no pass changed the graph's wiring."""
    return hash(
        tuple(
            (id(node), node.op_type, tuple(id(v) for v in node.inputs))
            for node in ir.traversal.RecursiveGraphIterator(model.graph)
        )
    )


def _node_outputs(model: ir.Model) -> list[ir.Value]:
    """Every value a node computes, in the graph, its subgraphs and the model-local functions."""
    nodes = list(ir.traversal.RecursiveGraphIterator(model.graph))
    for function in model.functions.values():
        nodes += ir.traversal.RecursiveGraphIterator(function)
    return [value for node in nodes for value in node.outputs]


def _annotation(value: ir.Value) -> tuple[Any, ...]:
    return (value.type, None if value.shape is None else tuple(value.shape))


def _freed_by(value: ir.Value, node: ir.Node) -> bool:
    """True when folding ``node`` leaves ``value`` unused (so its bytes leave the file)."""
    return not value.is_graph_output() and all(use.node is node for use in value.uses())


def _release_mapped_inputs(node: ir.Node) -> None:
    """Unmaps external weights a fold has read: a model past 2 GiB must not stay resident."""
    for value in node.inputs:
        tensor = value.const_value if value is not None else None
        if isinstance(tensor, ir.ExternalTensor):
            with contextlib.suppress(BufferError):  # someone else still holds a view
                tensor.release()


def _match_dtype(array: np.ndarray, value: ir.Value) -> np.ndarray:
    if value.dtype is not None and value.dtype.numpy() != array.dtype:
        try:
            return array.astype(value.dtype.numpy())
        except (TypeError, ValueError):
            return array
    return array


def _swap(old: ir.Value, new: ir.Value) -> None:
    """Points every use (and graph output slot) of ``old`` at ``new``, which takes its name."""
    name = old.name
    was_output = old.is_graph_output()
    ir.convenience.replace_all_uses_with(old, new, replace_graph_outputs=True)
    old.name = None
    new.name = name
    if was_output and old.shape is not None:
        new.shape = old.shape


def _functions_to_inline(model: ir.Model, mode: str) -> set[ir.OperatorIdentifier]:
    if mode == "never" or not model.functions:
        return set()
    if mode == "always":
        return set(model.functions)
    calls: Counter[ir.OperatorIdentifier] = Counter()
    fed_constants: set[ir.OperatorIdentifier] = set()
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        op = node.op_identifier()
        if op in model.functions:
            calls[op] += 1
            if any(is_constant(v) for v in node.inputs):
                fed_constants.add(op)
    for function in model.functions.values():
        for node in ir.traversal.RecursiveGraphIterator(function):
            if node.op_identifier() in model.functions:
                calls[node.op_identifier()] += 2  # called from a function: keep it a function
    return {op for op, count in calls.items() if count == 1} | fed_constants


@register_pass
class FoldPass(ShrinkPass[FoldOptions]):
    """Evaluates what does not depend on the model's inputs and stores the result.

    Rules, in every graph, If/Loop/Scan body and model-local function:

    1. Model-local functions are inlined where that lets folding see through them (``auto``:
       functions called once, or fed a constant); ``inline-functions=never|always`` overrides.
    2. Shapes are inferred (onnx shape inference, large weights left out) so symbolic dims are
       known through the graph.
    3. ``Constant`` nodes become initializers (in functions, which have none, they stay).
    4. A node whose inputs are all constant is evaluated (numpy for the common ops, the ONNX
       reference evaluator otherwise) and replaced by its outputs. Never folded: random ops,
       Quantize/DequantizeLinear (quantized kernels match on them), control flow, custom domains.
    5. Size guard: a folded output may exceed its constant inputs by at most ``max-growth`` bytes;
       Expand/Tile/ConstantOfShape/Range sizes are checked before anything is allocated.
    6. Shape, Gather, Slice, Concat, Unsqueeze, Squeeze, Cast, Identity, integer Add/Sub/Mul/Div,
       Equal and Where over partly known shapes are tracked element by element; fully known
       results become constants. A dim is never assumed 1 or non-zero: dims are equal only
       when proved (same symbol; an op that keeps, permutes or contracts dims; a broadcast whose
       operands not provably 1 are all one class; ``Expand``, ``ConstantOfShape``,
       ``Range(0, d, 1)`` and ``Slice(x, 0, d)`` read their shape inputs; a Slice of a static
       axis up to ``d`` is ``min(d, D)``, which a broadcast against ``d`` makes ``d``). A shape
       value equal element by element to an earlier one of the same graph is read from there.
    7. A Reshape whose target is partly known gets a constant target: ``0`` where the input's dim
       at that position is provably the same, ``-1`` for at most one other element, and only
       beside known positive sizes (a ``-1`` beside a dim that is 0 at run time fails where the
       original did not). Failing against its input, the target is named against the input of
       the view (Reshape, Flatten, Squeeze, Unsqueeze) computing it, which the Reshape then
       reads. A Reshape that provably returns its input's dims is removed.
    8. Nodes that folding left without consumers, and initializers no longer used, are removed.
    """

    name = "fold"
    exact = True

    def call(self, model: ir.Model) -> ShrinkPassResult:
        """Folds every scope; ``skipped`` names the nodes with constant inputs left unfolded, and why."""
        options = self.options
        stats: Counter[str] = Counter()
        inline = _functions_to_inline(model, options.inline_functions)
        if inline:
            before = len(model.functions)
            common_passes.InlinePass(criteria=lambda f: f.identifier() in inline)(model)
            stats["functions_inlined"] = before - len(model.functions)
        # Inference on a graph no pass has touched since the last fold would find nothing new.
        fingerprint = _structure(model)
        fresh = model.meta.get(_INFERRED_FOR) != fingerprint
        bare: list[ir.Value] = []
        shapes_changed = False
        if options.shapes and fresh:
            values = _node_outputs(model)
            bare = [v for v in values if v.type is None and v.shape is None]
            declared = {v: _annotation(v) for v in values if v.type is not None or v.shape is not None}
            # Shapes inferred for values the model left bare serve this fold only: kept, they
            # would be saved as value_info and could make the output larger than the input.
            shapes_changed = infer_shapes(model) and any(_annotation(v) != a for v, a in declared.items())
        folder = _Folder(model, options)
        folder.fold_graph(model.graph, opset_version(model))
        for function in model.functions.values():
            folder.fold_graph(function, opset_version(model, scope=function))
        folder.remove_orphans(model.graph)
        for function in model.functions.values():
            folder.remove_orphans(function)
        stats.update(folder.stats)
        for value in bare:
            if not value.is_graph_output():
                value.type, value.shape = None, None
        model.meta[_INFERRED_FOR] = _structure(model) if options.shapes else None
        changed = {k: v for k, v in sorted(stats.items()) if v and k not in ("not_evaluable", "skipped_size_guard")}
        report = {k: v for k, v in sorted(stats.items()) if v}
        if shapes_changed:
            report["shapes_refined"] = 1
        return ShrinkPassResult(
            model, modified=bool(changed) or shapes_changed, stats=report, skipped=dict(sorted(folder.skipped.items()))
        )
