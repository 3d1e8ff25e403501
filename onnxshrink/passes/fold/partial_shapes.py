"""Partly known shape values for ``fold``: 1-D int tensors whose elements are numbers or symbols.

``Shape(x)`` of a tensor with dims ``[N, S, 768]`` is the partial value ``(N, S, 768)``; Gather,
Slice, Concat, Unsqueeze, Squeeze, Cast and Identity carry such values along. A ``Reshape`` whose
target is partial becomes a constant target with ``0`` (copy the input's dim at that position:
the same symbol) and at most one ``-1`` (the one element we cannot name).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Union

import numpy as np
import onnx_ir as ir

from onnxshrink.ir.optable import OpTable
from onnxshrink.passes.fold.dim_classes import DimClasses

# A number, a dim of some tensor (a DimClasses key: equal when provably the same size), or unknown.
Element = Union[int, tuple[Any, ...], None]  # noqa: UP007 - a runtime alias, evaluated at import


@dataclasses.dataclass(frozen=True)
class Partial:
    """A small int tensor (rank 0 or 1) with some elements known only by symbol or not at all."""

    elements: tuple[Element, ...]
    scalar: bool = False

    @property
    def known(self) -> bool:
        """Whether every element is a number."""
        return all(isinstance(e, int) for e in self.elements)

    def to_array(self) -> np.ndarray:
        """Returns the int64 array of a :attr:`known` value (rank 0 when ``scalar``)."""
        array = np.array(self.elements, dtype=np.int64)
        return array.reshape(()) if self.scalar else array


Rule = Callable[[ir.Node, Sequence[Any], DimClasses], Partial | None]
PARTIAL_RULES: OpTable[Rule] = OpTable("fold partial shapes")
"""How each op carries partial values: registered with ``@PARTIAL_RULES.register(op_type, ...)``."""


def as_partial(value: Any) -> Partial | None:
    """A Partial from a constant array (int, rank <= 1) or an existing Partial."""
    if isinstance(value, Partial):
        return value
    if value is None:
        return None
    array = np.asarray(value)
    if array.dtype.kind not in "iu" or array.ndim > 1 or array.size > 64:
        return None
    return Partial(tuple(int(v) for v in array.reshape(-1)), scalar=array.ndim == 0)


def dims_of(value: ir.Value, classes: DimClasses) -> tuple[Element, ...] | None:
    """A value's dims as elements (sizes, or dim keys when symbolic), or None when rank is unknown."""
    if value.shape is None:
        return None
    return tuple(d if isinstance(d, int) else classes.key(value, axis) for axis, d in enumerate(value.shape))


@PARTIAL_RULES.register("Shape")
def _shape(node: ir.Node, inputs: Sequence[Any], classes: DimClasses) -> Partial | None:
    dims = dims_of(node.inputs[0], classes) if node.inputs[0] is not None else None
    if dims is None:
        return None
    start_attr, end_attr = node.attributes.get("start"), node.attributes.get("end")
    start = start_attr.as_int() if start_attr is not None else 0
    end = end_attr.as_int() if end_attr is not None else None
    return Partial(dims[start:end])


@PARTIAL_RULES.register("Identity", "Cast")
def _same(node: ir.Node, inputs: Sequence[Any], classes: DimClasses) -> Partial | None:
    if node.op_type == "Cast":
        to = node.attributes.get("to")
        if to is None or to.as_int() not in (ir.DataType.INT64.value, ir.DataType.INT32.value):
            return None
    return as_partial(inputs[0])


@PARTIAL_RULES.register("Gather")
def _gather(node: ir.Node, inputs: Sequence[Any], classes: DimClasses) -> Partial | None:
    data, indices = as_partial(inputs[0]), inputs[1]
    axis = node.attributes.get("axis")
    if data is None or data.scalar or isinstance(indices, Partial) or indices is None or (axis and axis.as_int() != 0):
        return None
    picks = np.asarray(indices)
    if picks.ndim > 1:
        return None
    try:
        chosen = tuple(data.elements[int(i)] for i in picks.reshape(-1))
    except IndexError:
        return None
    return Partial(chosen, scalar=picks.ndim == 0)


@PARTIAL_RULES.register("Slice")
def _slice(node: ir.Node, inputs: Sequence[Any], classes: DimClasses) -> Partial | None:
    data = as_partial(inputs[0])
    if data is None or data.scalar or len(inputs) < 3:
        return None
    rest = inputs[1:]
    if any(isinstance(v, Partial) for v in rest) or rest[0] is None or rest[1] is None:
        return None
    starts, ends = np.asarray(rest[0]).reshape(-1), np.asarray(rest[1]).reshape(-1)
    axes = np.asarray(rest[2]).reshape(-1) if len(rest) > 2 and rest[2] is not None else np.zeros(1, np.int64)
    steps = np.asarray(rest[3]).reshape(-1) if len(rest) > 3 and rest[3] is not None else np.ones(1, np.int64)
    if len(starts) != 1 or int(axes[0]) not in (0, -1):
        return None
    return Partial(data.elements[int(starts[0]) : int(max(min(ends[0], 2**62), -(2**62))) : int(steps[0])])


@PARTIAL_RULES.register("Concat")
def _concat(node: ir.Node, inputs: Sequence[Any], classes: DimClasses) -> Partial | None:
    parts = [as_partial(v) for v in inputs]
    if any(p is None or p.scalar for p in parts):
        return None
    return Partial(tuple(e for p in parts for e in p.elements))  # type: ignore[union-attr]


@PARTIAL_RULES.register("Unsqueeze")
def _unsqueeze(node: ir.Node, inputs: Sequence[Any], classes: DimClasses) -> Partial | None:
    data = as_partial(inputs[0])
    axes = node.attributes.get("axes")
    axes_list = (
        list(axes.as_ints())
        if axes is not None
        else (
            [int(a) for a in np.asarray(inputs[1]).reshape(-1)]
            if len(inputs) > 1 and not isinstance(inputs[1], Partial) and inputs[1] is not None
            else None
        )
    )
    if data is None or not data.scalar or axes_list not in ([0], [-1]):
        return None
    return Partial(data.elements)


@PARTIAL_RULES.register("Squeeze")
def _squeeze(node: ir.Node, inputs: Sequence[Any], classes: DimClasses) -> Partial | None:
    data = as_partial(inputs[0])
    if data is None or data.scalar or len(data.elements) != 1:
        return None
    return Partial(data.elements, scalar=True)


_ARITHMETIC: dict[str, Callable[[int, int], int | None]] = {
    "Add": lambda a, b: a + b,
    "Sub": lambda a, b: a - b,
    "Mul": lambda a, b: a * b,
    # ONNX integer Div truncates toward zero.
    "Div": lambda a, b: int(a / b) if b else None,
}


def _broadcast_elements(a: Partial, b: Partial) -> tuple[Sequence[Element], Sequence[Element]] | None:
    """Both element lists of an element-wise op over two 1-D values, a length-1 side repeated.

    None when the lengths do not broadcast.
    """
    if len(a.elements) != len(b.elements) and 1 not in (len(a.elements), len(b.elements)):
        return None
    size = max(len(a.elements), len(b.elements))
    left = a.elements * size if len(a.elements) == 1 else a.elements
    right = b.elements * size if len(b.elements) == 1 else b.elements
    return left, right


@PARTIAL_RULES.register(*_ARITHMETIC)
def _arithmetic(node: ir.Node, inputs: Sequence[Any], classes: DimClasses) -> Partial | None:
    """Element-wise integer arithmetic: known elements are computed, the others stay unknown."""
    a, b = as_partial(inputs[0]), as_partial(inputs[1]) if len(inputs) > 1 else None
    if a is None or b is None:
        return None
    paired = _broadcast_elements(a, b)
    if paired is None:
        return None
    left, right = paired
    op = _ARITHMETIC[node.op_type]
    elements = tuple(
        op(x, y) if isinstance(x, int) and isinstance(y, int) else None for x, y in zip(left, right, strict=True)
    )
    return Partial(elements, scalar=a.scalar and b.scalar)


def _is_dim(element: Element) -> bool:
    return isinstance(element, tuple)


@PARTIAL_RULES.register("Equal")
def _equal(node: ir.Node, inputs: Sequence[Any], classes: DimClasses) -> Partial | None:
    """Elements compared one by one; the unknown stay unknown.

    Known: two numbers, two provably equal dims, and a dim (never negative) against a negative
    number (the ``-1`` of a ``view(-1, ...)`` an exporter compares shape elements with).
    """
    a, b = as_partial(inputs[0]), as_partial(inputs[1]) if len(inputs) > 1 else None
    if a is None or b is None or node.outputs[0].dtype != ir.DataType.BOOL:
        return None
    paired = _broadcast_elements(a, b)
    if paired is None:
        return None
    left, right = paired
    elements: list[Element] = []
    for x, y in zip(left, right, strict=True):
        if isinstance(x, int) and isinstance(y, int):
            elements.append(int(x == y))
        elif _is_dim(x) and _is_dim(y) and classes.same(x, y):  # type: ignore[arg-type]
            elements.append(1)
        elif (_is_dim(x) and isinstance(y, int) and y < 0) or (_is_dim(y) and isinstance(x, int) and x < 0):
            elements.append(0)
        else:
            elements.append(None)
    return Partial(tuple(elements), scalar=a.scalar and b.scalar)


def _bool_elements(value: Any) -> tuple[int, ...] | None:
    """A constant bool (or int 0/1) tensor of rank <= 1 as 0/1 numbers, or a known Partial's."""
    if isinstance(value, Partial):
        return value.elements if value.known else None  # type: ignore[return-value]
    if value is None:
        return None
    array = np.asarray(value)
    if array.dtype.kind not in "biu" or array.ndim > 1 or array.size > 64:
        return None
    return tuple(int(bool(v)) for v in array.reshape(-1))


@PARTIAL_RULES.register("Where")
def _where(node: ir.Node, inputs: Sequence[Any], classes: DimClasses) -> Partial | None:
    """``Where(c, x, y)`` with every element of ``c`` known picks element by element."""
    condition = _bool_elements(inputs[0])
    x, y = as_partial(inputs[1]), as_partial(inputs[2])
    if condition is None or x is None or y is None:
        return None
    size = max(len(condition), len(x.elements), len(y.elements))
    if any(n not in (1, size) for n in (len(condition), len(x.elements), len(y.elements))):
        return None

    def at(seq: Sequence[Any], i: int) -> Any:
        return seq[0] if len(seq) == 1 else seq[i]

    elements = tuple(at(x.elements, i) if at(condition, i) else at(y.elements, i) for i in range(size))
    scalar = x.scalar and y.scalar and (not isinstance(inputs[0], Partial) or inputs[0].scalar)
    if not isinstance(inputs[0], Partial):
        scalar = scalar and np.asarray(inputs[0]).ndim == 0
    return Partial(elements, scalar=scalar)


# --------------------------------------------------------------------------- ties known at fold time


def _dim_element(value: Any, index: int = 0) -> Element:
    partial = as_partial(value)
    if partial is None or index >= len(partial.elements):
        return None
    return partial.elements[index]


def _scalar_int(value: Any) -> int | None:
    partial = as_partial(value)
    if partial is None or len(partial.elements) != 1:
        return None
    element = partial.elements[0]
    return element if isinstance(element, int) else None


def tie_from_values(node: ir.Node, inputs: Sequence[Any], classes: DimClasses) -> None:
    """Ties that need the node's constant or partly known inputs, found in graph order while folding.

    - ``Expand(x, shape)``: an output dim is the broadcast of x's dim and the shape's element.
    - ``ConstantOfShape(shape)``: output dim i is element i.
    - ``Range(0, c, 1)``: its length is c.
    - ``Slice(x, 0, c)`` with step 1: the dim is c where x's dim is c, else ``min(c, D)`` for
      x's static size D (a cap, which a broadcast against c resolves to c); axes not sliced keep
      x's dims.
    Then the node's own rule runs again, now that earlier nodes may have proved more.
    """
    op = node.op_type
    out = node.outputs[0] if len(node.outputs) == 1 else None
    out_dims = dims_of(out, classes) if out is not None else None
    if out is not None and out_dims is not None:
        if op == "Expand" and len(inputs) == 2:
            _tie_expand(node, inputs[1], classes, len(out_dims))
        elif op == "ConstantOfShape":
            shape = as_partial(inputs[0])
            if shape is not None and len(shape.elements) == len(out_dims):
                for axis, element in enumerate(shape.elements):
                    if _is_dim(element):
                        classes.union(classes.key(out, axis), element)  # type: ignore[arg-type]
        elif op == "Range" and len(inputs) == 3 and len(out_dims) == 1:
            limit = _dim_element(inputs[1])
            if _scalar_int(inputs[0]) == 0 and _scalar_int(inputs[2]) == 1 and _is_dim(limit):
                classes.union(classes.key(out, 0), limit)  # type: ignore[arg-type]
        elif op == "Slice" and len(inputs) >= 3 and not isinstance(inputs[0], Partial):
            _tie_slice(node, inputs, classes, len(out_dims))
    classes.apply(node)


def _tie_expand(node: ir.Node, shape_value: Any, classes: DimClasses, rank: int) -> None:
    shape, data = as_partial(shape_value), node.inputs[0]
    data_dims = dims_of(data, classes) if data is not None else None
    if shape is None or data is None or data_dims is None or len(shape.elements) > rank or len(data_dims) > rank:
        return
    for axis in range(rank):
        covering: list[Any] = []
        j = axis - (rank - len(data_dims))
        if j >= 0 and data_dims[j] != 1 and not classes.is_one(classes.key(data, j)):
            covering.append(classes.key(data, j))
        k = axis - (rank - len(shape.elements))
        element = shape.elements[k] if k >= 0 else 1
        if element is None or (isinstance(element, int) and element != 1):
            continue  # an unknown or static element: nothing to tie (inference knows a static one)
        if _is_dim(element):
            covering.append(element)
        root = classes.broadcast_root(covering) if covering else None
        if root is not None:
            classes.union(classes.key(node.outputs[0], axis), root)


def _ints_or_none(value: Any, present: bool) -> list[int] | bool | None:
    """An optional constant input as ints; None when absent; False when present but not constant."""
    if not present:
        return None
    if value is None or isinstance(value, Partial):
        return False
    return [int(v) for v in np.asarray(value).reshape(-1)]


def _tie_slice(node: ir.Node, inputs: Sequence[Any], classes: DimClasses, rank: int) -> None:
    data, out = node.inputs[0], node.outputs[0]
    data_dims = dims_of(data, classes) if data is not None else None
    present = [i < len(node.inputs) and node.inputs[i] is not None for i in range(5)]
    starts = _ints_or_none(inputs[1], present[1])
    axes = _ints_or_none(inputs[3] if len(inputs) > 3 else None, present[3])
    steps = _ints_or_none(inputs[4] if len(inputs) > 4 else None, present[4])
    ends = as_partial(inputs[2])
    if data is None or data_dims is None or len(data_dims) != rank or ends is None:
        return
    if not isinstance(starts, list) or axes is False or steps is False:
        return
    axis_list = [a % rank for a in axes] if isinstance(axes, list) else list(range(len(starts)))
    step_list = steps if isinstance(steps, list) else [1] * len(starts)
    if not len(starts) == len(axis_list) == len(step_list) == len(ends.elements):
        return
    for axis in range(rank):
        if axis not in axis_list:
            classes.union(classes.key(out, axis), classes.key(data, axis))
    for start, axis, step, end in zip(starts, axis_list, step_list, ends.elements, strict=True):
        if start != 0 or step != 1 or not _is_dim(end):
            continue
        dim = data_dims[axis]
        if _is_dim(dim) and classes.same(dim, end):  # type: ignore[arg-type]
            classes.union(classes.key(out, axis), end)  # type: ignore[arg-type]
        elif isinstance(dim, int):
            classes.cap(classes.key(out, axis), end)  # type: ignore[arg-type]


def propagate(node: ir.Node, inputs: Sequence[Any], classes: DimClasses) -> Partial | None:
    """The node's output as a Partial, when a rule knows how (inputs: arrays, Partials or None)."""
    if len(node.outputs) != 1:
        return None
    handler = PARTIAL_RULES.lookup(node, None)
    return handler(node, inputs, classes) if handler is not None else None


def reshape_target(data: ir.Value, target: Partial, allowzero: bool, classes: DimClasses) -> np.ndarray | None:
    """A constant Reshape target equal to ``target`` for this input, or None when none exists.

    Element i may become ``0`` when the input's dim i is provably the same (allowzero off), and
    one element we cannot name becomes ``-1``, but only when every other element is a known
    positive size: a ``-1`` beside a copied dim that is 0 at run time has no answer
    (onnxruntime refuses it), where the original target reshaped the empty tensor fine.
    """
    if target.scalar:
        return None
    dims = dims_of(data, classes)
    result: list[int] = []
    unknown = 0
    introduced = False
    for index, element in enumerate(target.elements):
        dim = dims[index] if dims is not None and index < len(dims) else None
        if isinstance(element, int):
            if element == 0 and allowzero:
                result.append(0)
                continue
            if element == -1:
                unknown += 1
            result.append(element)
        elif isinstance(element, tuple) and isinstance(dim, tuple) and not allowzero and classes.same(dim, element):
            result.append(0)
        else:
            unknown += 1
            introduced = True
            result.append(-1)
    if unknown > 1:
        return None
    if introduced and any(size <= 0 for size in result if size != -1):
        return None  # a 0 (copied, or literal with allowzero) may leave -1 without an answer
    return np.array(result, dtype=np.int64)
