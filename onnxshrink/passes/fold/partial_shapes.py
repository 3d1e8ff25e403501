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


@PARTIAL_RULES.register(*_ARITHMETIC)
def _arithmetic(node: ir.Node, inputs: Sequence[Any], classes: DimClasses) -> Partial | None:
    """Element-wise integer arithmetic: known elements are computed, the others stay unknown."""
    a, b = as_partial(inputs[0]), as_partial(inputs[1]) if len(inputs) > 1 else None
    if a is None or b is None:
        return None
    if len(a.elements) != len(b.elements) and 1 not in (len(a.elements), len(b.elements)):
        return None
    size = max(len(a.elements), len(b.elements))
    left = a.elements * size if len(a.elements) == 1 else a.elements
    right = b.elements * size if len(b.elements) == 1 else b.elements
    op = _ARITHMETIC[node.op_type]
    elements = tuple(
        op(x, y) if isinstance(x, int) and isinstance(y, int) else None for x, y in zip(left, right, strict=True)
    )
    return Partial(elements, scalar=a.scalar and b.scalar)


def propagate(node: ir.Node, inputs: Sequence[Any], classes: DimClasses) -> Partial | None:
    """The node's output as a Partial, when a rule knows how (inputs: arrays, Partials or None)."""
    if len(node.outputs) != 1:
        return None
    handler = PARTIAL_RULES.lookup(node, None)
    return handler(node, inputs, classes) if handler is not None else None


def reshape_target(data: ir.Value, target: Partial, allowzero: bool, classes: DimClasses) -> np.ndarray | None:
    """A constant Reshape target equal to ``target`` for this input, or None when none exists.

    Element i may become ``0`` when the input's dim i is provably the same (allowzero off),
    and one element we cannot name becomes ``-1``.
    """
    if target.scalar:
        return None
    dims = dims_of(data, classes)
    result: list[int] = []
    unknown = 0
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
            result.append(-1)
    if unknown > 1:
        return None
    return np.array(result, dtype=np.int64)
