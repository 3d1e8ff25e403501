"""Evaluating one ONNX node on constant inputs, for ``fold``.

An :class:`~onnxshrink.ir.optable.OpTable` of numpy evaluators (:data:`EVALUATORS`) covers the ops that carry shape
arithmetic and weight layout changes; everything else in the ONNX domain goes through
``onnx.reference`` on a one-node model. Neither is ever asked to run custom-domain ops.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from onnxshrink.ir.optable import OpTable

logger = logging.getLogger(__name__)

Evaluator = Callable[[ir.Node, Sequence[Any]], list[np.ndarray]]
EVALUATORS: OpTable[Evaluator] = OpTable("fold evaluators")
"""Numpy evaluators, registered with ``@EVALUATORS.register(op_type, ...)``; may raise :class:`NotEvaluable`."""


class NotEvaluable(Exception):
    """The node cannot be evaluated here (the reason is the message)."""


def _ints(node: ir.Node, name: str, default: Sequence[int] | None = None) -> list[int] | None:
    attr = node.attributes.get(name)
    return list(attr.as_ints()) if attr is not None else (list(default) if default is not None else None)


def _int(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return attr.as_int() if attr is not None else default


@EVALUATORS.register("Identity")
def _identity(node: ir.Node, x: Sequence[Any]) -> list[np.ndarray]:
    return [np.asarray(x[0])]


@EVALUATORS.register("Shape")
def _shape(node: ir.Node, x: Sequence[Any]) -> list[np.ndarray]:
    dims = np.array(np.shape(x[0]), dtype=np.int64)
    start, end = _int(node, "start", 0), node.attributes.get("end")
    return [dims[start : end.as_int() if end is not None else None]]


@EVALUATORS.register("Size")
def _size(node: ir.Node, x: Sequence[Any]) -> list[np.ndarray]:
    return [np.array(np.size(x[0]), dtype=np.int64)]


# Tile edge of the blocked 2-D transpose: a whole column walk misses the cache on every element.
_TILE = 256


def _transpose_2d(matrix: np.ndarray) -> np.ndarray:
    """``matrix.T`` made contiguous tile by tile (about 5x faster than one strided copy on weights)."""
    rows, cols = matrix.shape
    out = np.empty((cols, rows), dtype=matrix.dtype)
    for i in range(0, cols, _TILE):
        for j in range(0, rows, _TILE):
            out[i : i + _TILE, j : j + _TILE] = matrix[j : j + _TILE, i : i + _TILE].T
    return out


@EVALUATORS.register("Transpose")
def _transpose(node: ir.Node, x: Sequence[Any]) -> list[np.ndarray]:
    perm = _ints(node, "perm")
    data = np.asarray(x[0])
    if data.ndim == 2 and perm in (None, [1, 0]) and data.size >= _TILE * _TILE:
        return [_transpose_2d(data)]
    return [np.ascontiguousarray(np.transpose(data, perm))]


@EVALUATORS.register("Reshape")
def _reshape(node: ir.Node, x: Sequence[Any]) -> list[np.ndarray]:
    data, shape = np.asarray(x[0]), [int(d) for d in np.asarray(x[1]).reshape(-1)]
    if not _int(node, "allowzero", 0):
        shape = [data.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return [data.reshape(shape)]


@EVALUATORS.register("Unsqueeze")
def _unsqueeze(node: ir.Node, x: Sequence[Any]) -> list[np.ndarray]:
    axes = _ints(node, "axes") if len(x) < 2 else [int(a) for a in np.asarray(x[1]).reshape(-1)]
    data = np.asarray(x[0])
    rank = data.ndim + len(axes or [])
    result = data
    for axis in sorted(a % rank for a in axes or []):
        result = np.expand_dims(result, axis)
    return [result]


@EVALUATORS.register("Squeeze")
def _squeeze(node: ir.Node, x: Sequence[Any]) -> list[np.ndarray]:
    data = np.asarray(x[0])
    axes = _ints(node, "axes") if len(x) < 2 or x[1] is None else [int(a) for a in np.asarray(x[1]).reshape(-1)]
    return [np.squeeze(data, axis=tuple(axes)) if axes else np.squeeze(data)]


@EVALUATORS.register("Concat")
def _concat(node: ir.Node, x: Sequence[Any]) -> list[np.ndarray]:
    return [np.concatenate([np.asarray(v) for v in x], axis=_int(node, "axis", 0))]


@EVALUATORS.register("Gather")
def _gather(node: ir.Node, x: Sequence[Any]) -> list[np.ndarray]:
    data, indices = np.asarray(x[0]), np.asarray(x[1]).astype(np.int64)
    return [np.take(data, indices, axis=_int(node, "axis", 0))]


@EVALUATORS.register("Slice")
def _slice(node: ir.Node, x: Sequence[Any]) -> list[np.ndarray]:
    data = np.asarray(x[0])
    if len(x) >= 3:
        starts = np.asarray(x[1]).reshape(-1)
        ends = np.asarray(x[2]).reshape(-1)
        axes = np.asarray(x[3]).reshape(-1) if len(x) > 3 and x[3] is not None else np.arange(len(starts))
        steps = np.asarray(x[4]).reshape(-1) if len(x) > 4 and x[4] is not None else np.ones(len(starts), np.int64)
    else:  # opset < 10: attributes
        starts = np.array(_ints(node, "starts"))
        ends = np.array(_ints(node, "ends"))
        axes = np.array(_ints(node, "axes", list(range(len(starts)))))
        steps = np.ones(len(starts), np.int64)
    index: list[slice] = [slice(None)] * data.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        index[int(axis)] = slice(int(start), int(end), int(step))
    return [data[tuple(index)]]


_CAST: dict[int, Any] = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.INT32: np.int32,
    onnx.TensorProto.INT16: np.int16,
    onnx.TensorProto.INT8: np.int8,
    onnx.TensorProto.UINT8: np.uint8,
    onnx.TensorProto.BOOL: np.bool_,
}


@EVALUATORS.register("Cast")
def _cast(node: ir.Node, x: Sequence[Any]) -> list[np.ndarray]:
    to = _int(node, "to", 0)
    data = np.asarray(x[0])
    if to not in _CAST or data.dtype.kind not in "biuf":
        raise NotEvaluable(f"Cast to {to} from {data.dtype} is left to the reference evaluator")
    # Float to int casts of NaN/Inf values are implementation-defined.
    if data.dtype.kind == "f" and np.dtype(_CAST[to]).kind in "iu" and not np.all(np.isfinite(data)):
        raise NotEvaluable("Cast of non-finite floats to int")
    return [data.astype(_CAST[to])]


def _binary(func: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Evaluator:
    def evaluate(node: ir.Node, x: Sequence[Any]) -> list[np.ndarray]:
        a, b = np.asarray(x[0]), np.asarray(x[1])
        if a.dtype != b.dtype:
            raise NotEvaluable("mixed dtypes")
        with np.errstate(all="ignore"):
            result = func(a, b)
        return [np.asarray(result).astype(a.dtype, copy=False)]

    return evaluate


EVALUATORS.add("Add", _binary(np.add))
EVALUATORS.add("Sub", _binary(np.subtract))
EVALUATORS.add("Mul", _binary(np.multiply))


@EVALUATORS.register("Div")
def _div(node: ir.Node, x: Sequence[Any]) -> list[np.ndarray]:
    a, b = np.asarray(x[0]), np.asarray(x[1])
    if a.dtype != b.dtype:
        raise NotEvaluable("mixed dtypes")
    if a.dtype.kind in "iu":
        if np.any(b == 0):
            raise NotEvaluable("integer division by zero")
        # ONNX integer Div truncates toward zero, like C; numpy's // floors.
        return [(np.trunc(a / b)).astype(a.dtype)]
    with np.errstate(all="ignore"):
        return [np.divide(a, b).astype(a.dtype, copy=False)]


@EVALUATORS.register("Equal", "Less", "Greater")
def _compare(node: ir.Node, x: Sequence[Any]) -> list[np.ndarray]:
    a, b = np.asarray(x[0]), np.asarray(x[1])
    func = {"Equal": np.equal, "Less": np.less, "Greater": np.greater}[node.op_type]
    return [func(a, b)]


@EVALUATORS.register("Not")
def _not(node: ir.Node, x: Sequence[Any]) -> list[np.ndarray]:
    return [np.logical_not(x[0])]


@EVALUATORS.register("Where")
def _where(node: ir.Node, x: Sequence[Any]) -> list[np.ndarray]:
    return [np.where(np.asarray(x[0]), np.asarray(x[1]), np.asarray(x[2]))]


@EVALUATORS.register("ConstantOfShape")
def _constant_of_shape(node: ir.Node, x: Sequence[Any]) -> list[np.ndarray]:
    attr = node.attributes.get("value")
    fill = attr.as_tensor().numpy().reshape(-1) if attr is not None else np.zeros(1, np.float32)
    shape = [int(d) for d in np.asarray(x[0]).reshape(-1)]
    return [np.full(shape, fill[0], dtype=fill.dtype)]


@EVALUATORS.register("Range")
def _range(node: ir.Node, x: Sequence[Any]) -> list[np.ndarray]:
    start, limit, delta = (np.asarray(v) for v in x)
    return [np.asarray(np.arange(start.item(), limit.item(), delta.item()), dtype=start.dtype)]


@EVALUATORS.register("Expand")
def _expand(node: ir.Node, x: Sequence[Any]) -> list[np.ndarray]:
    data = np.asarray(x[0])
    shape = [int(d) for d in np.asarray(x[1]).reshape(-1)]
    return [data * np.ones(shape, dtype=data.dtype)]


@EVALUATORS.register("Neg")
def _neg(node: ir.Node, x: Sequence[Any]) -> list[np.ndarray]:
    return [np.negative(x[0])]


@EVALUATORS.register("ReduceProd")
def _reduce_prod(node: ir.Node, x: Sequence[Any]) -> list[np.ndarray]:
    data = np.asarray(x[0])
    axes = _ints(node, "axes") if len(x) < 2 else [int(a) for a in np.asarray(x[1]).reshape(-1)]
    keep = bool(_int(node, "keepdims", 1))
    if not axes and _int(node, "noop_with_empty_axes", 0):
        return [data]
    return [np.prod(data, axis=tuple(axes) if axes else None, keepdims=keep).astype(data.dtype)]


def output_elements(node: ir.Node, arrays: Sequence[Any]) -> int | None:
    """Elements the node would produce, for ops whose output can dwarf their inputs; else None.

    Computed before evaluating, so an untrusted model cannot make us allocate without bound.
    """
    op = node.op_type
    try:
        if op == "ConstantOfShape":
            return int(np.prod(np.asarray(arrays[0]).reshape(-1), dtype=np.float64))
        if op == "Expand":
            shape = np.broadcast_shapes(np.shape(arrays[0]), tuple(int(d) for d in np.asarray(arrays[1]).reshape(-1)))
            return int(np.prod(shape, dtype=np.float64))
        if op == "Tile":
            return int(np.size(arrays[0]) * np.prod(np.asarray(arrays[1]), dtype=np.float64))
        if op == "Range":
            start, limit, delta = (float(np.asarray(v)) for v in arrays)
            return max(0, int(np.ceil((limit - start) / delta))) if delta else None
        if op in ("Resize", "Upsample", "Pad", "OneHot", "EyeLike"):
            return None if op == "EyeLike" else -1  # -1: unknown but possibly large
    except (ValueError, TypeError, OverflowError):
        return -1
    return None


def _one_node_model(node: ir.Node, arrays: Sequence[Any], opset: int) -> onnx.ModelProto:
    """Builds a model that runs ``node`` alone, on inputs ``in<i>`` typed from ``arrays``.

    The copy shares ``node``'s attributes (an IR attribute has no owner, so ``node`` stays as it was).
    Its outputs are ``out<i>``, untyped; an output ``node`` leaves unnamed stays unnamed, so the
    reference evaluator computes exactly the outputs the graph asks for.
    """
    inputs = [
        None
        if a is None
        else ir.Value(
            name=f"in{i}", type=ir.TensorType(ir.DataType.from_numpy(np.asarray(a).dtype)), shape=ir.Shape(np.shape(a))
        )
        for i, a in enumerate(arrays)
    ]
    one = ir.Node(
        node.domain,
        node.op_type,
        inputs,
        attributes=list(node.attributes.values()),
        overload=node.overload,
        num_outputs=len(node.outputs),
    )
    for i, (output, original) in enumerate(zip(one.outputs, node.outputs, strict=True)):
        output.name = f"out{i}" if original.name else ""
    graph = ir.Graph(
        [v for v in inputs if v is not None],
        [v for v in one.outputs if v.name],
        nodes=[one],
        name="fold",
        opset_imports={"": opset},
    )
    one.name = node.name  # the graph names anonymous nodes; keep the reference evaluator's messages as before
    return ir.serde.serialize_model(ir.Model(graph, ir_version=onnx.IR_VERSION))


def _reference(node: ir.Node, arrays: Sequence[Any], opset: int) -> list[np.ndarray]:
    from onnx.reference import ReferenceEvaluator

    feed = {f"in{i}": np.asarray(a) for i, a in enumerate(arrays) if a is not None}
    results = ReferenceEvaluator(_one_node_model(node, arrays, opset)).run(None, feed)
    return [np.asarray(r) for r in results]


def evaluate(node: ir.Node, arrays: Sequence[Any], opset: int) -> list[np.ndarray]:
    """The node's outputs on constant inputs; raises NotEvaluable when it cannot say."""
    evaluator = EVALUATORS.lookup(node, opset)
    if evaluator is not None:
        try:
            return evaluator(node, arrays)
        except NotEvaluable:
            pass
        except (ValueError, IndexError, TypeError) as error:
            raise NotEvaluable(f"{node.op_type}: {error}") from None
    try:
        return _reference(node, arrays, opset)
    except Exception as error:  # the reference evaluator raises many types for unsupported cases
        raise NotEvaluable(f"{node.op_type}: reference evaluator: {type(error).__name__}: {error}") from None
