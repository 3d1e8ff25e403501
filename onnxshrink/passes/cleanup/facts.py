"""What ``cleanup``'s rewrite rules may assume about a value: dtype, dims, constant contents.

Facts come from what the model declares (graph inputs/outputs, ``value_info``, initializers,
``Constant`` nodes). When a rule would need a fact the model does not declare, onnx shape
inference runs once on a weightless proto (:func:`onnxshrink.ir.checks.weightless_proto`), and its
results are kept here, beside the model: the model itself is not annotated, so a ``cleanup``
that rewrites nothing leaves it as it was. What counts as a constant is
:mod:`onnxshrink.ir.constants`' policy (an initializer that is also a graph input is not one).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Union, cast

import numpy as np
import onnx
import onnx_ir as ir

from onnxshrink.ir.constants import constant_source
from onnxshrink.ir.shapes import inferred_copy

logger = logging.getLogger(__name__)

Dim = Union[int, str, None]  # noqa: UP007 - runtime alias; a static size, a symbolic name, or unknown
Dims = tuple[Dim, ...]

# Reading a constant's data is bounded: rules only ever need small ones (axes, perms, shapes,
# neutral operands that do not enlarge their partner).
MAX_CONSTANT_ELEMENTS = 1 << 20
_CACHED_ELEMENTS = 4096


def _dims_of_shape(shape: ir.Shape | None) -> Dims | None:
    if shape is None:
        return None
    dims: list[Dim] = []
    for dim in shape:
        if isinstance(dim, int):
            dims.append(dim)
        else:
            dims.append(dim.value)  # SymbolicDim: a name or None
    return tuple(dims)


def _source_dims(source: ir.TensorProtocol | np.ndarray) -> tuple[int, ...]:
    if isinstance(source, np.ndarray):
        return tuple(source.shape)
    return cast("tuple[int, ...]", tuple(source.shape.dims))  # a tensor's shape is static


def _dtype_of_source(source: ir.TensorProtocol | np.ndarray) -> ir.DataType | None:
    if isinstance(source, np.ndarray):
        return ir.DataType.from_numpy(source.dtype)
    return source.dtype


class Facts:
    """Dtypes, dims and constant contents of values, declared first, inferred otherwise.

    Args:
        inferred: Dtype and dims per value from shape inference; None when inference was not run.
    """

    def __init__(self, inferred: dict[ir.Value, tuple[ir.DataType | None, Dims | None]] | None = None) -> None:
        self._inferred = inferred or {}
        # Constants do not change during a pass and rules ask about them often.
        self._constants: dict[ir.Value, tuple[ir.TensorProtocol | np.ndarray, tuple[int, ...]] | None] = {}
        self._filled: dict[tuple[ir.Value, float], bool] = {}
        self._small_arrays: dict[ir.Value, np.ndarray | None] = {}

    def _constant(self, value: ir.Value) -> tuple[ir.TensorProtocol | np.ndarray, tuple[int, ...]] | None:
        if value not in self._constants:
            source = constant_source(value)
            self._constants[value] = None if source is None else (source, _source_dims(source))
        return self._constants[value]

    def is_constant(self, value: ir.Value | None) -> bool:
        """Whether ``value`` is a constant (see :mod:`onnxshrink.ir.constants`)."""
        return value is not None and self._constant(value) is not None

    def carry_over(self, old: ir.Value, new: ir.Value) -> None:
        """Records that ``new`` (a rewrite's fresh value) holds what ``old`` held."""
        if old in self._inferred:
            self._inferred[new] = self._inferred[old]

    def dtype(self, value: ir.Value | None) -> ir.DataType | None:
        """Returns the value's dtype: declared, else from its constant, else inferred; None if unknown."""
        if value is None:
            return None
        if value.dtype is not None:
            return value.dtype
        constant = self._constant(value)
        if constant is not None:
            return _dtype_of_source(constant[0])
        return self._inferred.get(value, (None, None))[0]

    def dims(self, value: ir.Value | None) -> Dims | None:
        """The value's dims (ints, symbol names or None each), or None when its rank is unknown."""
        if value is None:
            return None
        constant = self._constant(value)
        if constant is not None:
            return constant[1]
        declared = _dims_of_shape(value.shape)
        inferred = self._inferred.get(value, (None, None))[1]
        if declared is None:
            return inferred
        if inferred is None or len(inferred) != len(declared):
            return declared
        # Each source may know a dim the other does not; a static size wins.
        return tuple(
            d if isinstance(d, int) else i if isinstance(i, int) else d or i
            for d, i in zip(declared, inferred, strict=True)
        )

    def rank(self, value: ir.Value | None) -> int | None:
        """Returns the value's rank, or None when it is unknown."""
        dims = self.dims(value)
        return None if dims is None else len(dims)

    def static_dims(self, value: ir.Value | None) -> tuple[int, ...] | None:
        """The dims when every one is a known size, else None."""
        dims = self.dims(value)
        if dims is None or not all(isinstance(d, int) and d >= 0 for d in dims):
            return None
        return tuple(int(d) for d in dims)  # type: ignore[arg-type]

    def constant(self, value: ir.Value | None, max_elements: int = MAX_CONSTANT_ELEMENTS) -> np.ndarray | None:
        """The value's contents when it is a constant of at most ``max_elements`` elements."""
        constant = self._constant(value) if value is not None else None
        if value is None or constant is None or math.prod(constant[1]) > max_elements:
            return None
        source, dims = constant
        if isinstance(source, np.ndarray):
            return source
        if source.dtype == ir.DataType.STRING:
            return None
        if math.prod(dims) > _CACHED_ELEMENTS:
            return np.asarray(source.numpy())
        if value not in self._small_arrays:  # axes, perms, targets: read on every sweep
            self._small_arrays[value] = np.asarray(source.numpy())
        return self._small_arrays[value]

    def is_filled_with(self, value: ir.Value, number: float) -> bool:
        """True when ``value`` is a numeric constant whose every element equals ``number``."""
        key = (value, number)
        if key not in self._filled:  # constants do not change during a pass; rules ask often
            array = self.constant(value)
            self._filled[key] = array is not None and array.dtype.kind in "biuf" and bool(np.all(array == number))
        return self._filled[key]

    def constant_ints(self, value: ir.Value | None) -> list[int] | None:
        """A small integer constant (axes, perm, shape, pads) as a list, else None."""
        array = self.constant(value, max_elements=1024)
        if array is None or array.dtype.kind not in "iu" or array.ndim > 1:
            return None
        return [int(v) for v in array.reshape(-1)]


def infer_facts(model: ir.Model) -> Facts:
    """Declared facts plus what onnx shape inference finds (main graph and its subgraphs)."""
    return Facts(_infer(model))


def _proto_facts(graph_proto: onnx.GraphProto) -> dict[str, tuple[ir.DataType | None, Dims | None]]:
    found = {}
    for info in [*graph_proto.input, *graph_proto.value_info, *graph_proto.output]:
        if not info.type.HasField("tensor_type"):
            continue
        tensor_type = info.type.tensor_type
        dtype = ir.DataType(tensor_type.elem_type) if tensor_type.elem_type else None
        dims: Dims | None = None
        if tensor_type.HasField("shape"):
            dims = tuple(
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor_type.shape.dim
            )
        found[info.name] = (dtype, dims)
    return found


def _graph_pairs(graph: ir.Graph, proto: onnx.GraphProto) -> Iterator[tuple[ir.Graph, onnx.GraphProto]]:
    """Each IR graph with its inferred proto, subgraphs included (node order is kept by serialization)."""
    yield graph, proto
    for node, node_proto in zip(graph, proto.node, strict=False):
        attr_protos = {a.name: a for a in node_proto.attribute}
        for name, attr in node.attributes.items():
            if attr.is_ref() or name not in attr_protos:
                continue
            if attr.type == ir.AttributeType.GRAPH:
                yield from _graph_pairs(attr.as_graph(), attr_protos[name].g)
            elif attr.type == ir.AttributeType.GRAPHS:
                for sub, sub_proto in zip(attr.as_graphs(), attr_protos[name].graphs, strict=False):
                    yield from _graph_pairs(sub, sub_proto)


def _infer(model: ir.Model) -> dict[ir.Value, tuple[ir.DataType | None, Dims | None]]:
    facts: dict[ir.Value, tuple[ir.DataType | None, Dims | None]] = {}
    inferred = inferred_copy(model, purpose="cleanup: dtypes and dims its rules need")
    if inferred is None:
        return facts
    try:
        for graph, graph_proto in _graph_pairs(model.graph, inferred.graph):
            by_name = _proto_facts(graph_proto)
            for value in [*graph.inputs, *(v for node in graph for v in node.outputs)]:
                if value.name in by_name:
                    facts[value] = by_name[value.name]
    except ValueError as error:  # an element type this onnx-ir does not know: declared facts only
        logger.debug("shape inference result unreadable for cleanup: %s", error)
        return {}
    return facts
