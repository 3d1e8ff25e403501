"""The one way onnxshrink runs onnx shape inference, for IR models of any size.

The model goes to onnx without its large weights (see ``checks.weightless_proto``), so a model
past 2 GiB infers like a small one and no weight is read. Inference always runs with the same
flags (types not checked, not strict, data propagation on unless asked otherwise), and a model
it gives up on (custom ops, malformed subgraphs) is logged with what the caller wanted, never
raised: callers fall back to the declared shapes.

* :func:`inferred_proto` infers on a proto the caller prepared (e.g. with inputs fixed);
* :func:`inferred_copy` infers on a weightless copy of an IR model, which stays untouched;
* :func:`infer_shapes` merges the inferred shapes and missing types back into the IR model.
"""

from __future__ import annotations

import logging
from typing import Any

import onnx
import onnx_ir as ir

from onnxshrink.ir.checks import weightless_proto

logger = logging.getLogger(__name__)


def inferred_proto(proto: onnx.ModelProto, *, purpose: str, data_prop: bool = True) -> onnx.ModelProto | None:
    """``proto`` with inferred ``value_info``, or None (logged with ``purpose``) when inference fails."""
    try:
        return onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False, data_prop=data_prop)
    except Exception as error:  # inference gives up on some custom or malformed graphs
        logger.info("shape inference failed (%s); declared shapes are used: %s", purpose, error)
        return None


def inferred_copy(model: ir.Model, *, purpose: str, data_prop: bool = True) -> onnx.ModelProto | None:
    """Shape inference on a weightless proto copy of ``model``; None when inference fails."""
    return inferred_proto(weightless_proto(model), purpose=purpose, data_prop=data_prop)


def _value_maps(graph: ir.Graph) -> dict[str, ir.Value]:
    values: dict[str, ir.Value] = {}
    for value in [*graph.inputs, *graph.initializers.values()]:
        if value.name:
            values[value.name] = value
    for node in graph:
        for value in node.outputs:
            if value.name:
                values[value.name] = value
    return values


def infer_shapes(model: ir.Model) -> bool:
    """Runs onnx shape inference (data propagation on) and merges shapes and missing types.

    Returns True when some value's shape or type got refined. Failures leave the model as it was.
    """
    inferred = inferred_copy(model, purpose="refining value shapes")
    if inferred is None:
        return False
    try:
        inferred_model = ir.serde.deserialize_model(inferred)
    except Exception as error:  # an inferred type this onnx-ir cannot read
        logger.info("shape inference result unreadable, shapes left as they were: %s", error)
        return False
    changed = False
    for graph, other in zip(model.graphs(), inferred_model.graphs(), strict=False):
        theirs = _value_maps(other)
        for name, value in _value_maps(graph).items():
            found = theirs.get(name)
            if found is None or found.type is None:
                continue
            if value.type is None:
                value.type = found.type
                changed = True
            elif value.type != found.type:
                continue  # we trust the model's own declaration
            new_shape = found.shape
            if not isinstance(found.type, ir.TensorType) or new_shape is None or new_shape == value.shape:
                continue
            merged = new_shape if value.shape is None else _merged(new_shape, value.shape)
            if merged is not None:
                value.shape = merged
                changed = True
    return changed


def _merged(new: ir.Shape, old: ir.Shape) -> ir.Shape | None:
    """Dim by dim, the more specific of two shapes; None when they disagree or add nothing.

    A size beats a symbol, a named symbol beats an anonymous one; two different symbols keep
    the model's own (names from separate inference runs are not comparable).
    """
    if len(new) != len(old):
        return None
    dims: list[Any] = []
    gained = False
    for a, b in zip(new, old, strict=True):
        if isinstance(b, int):
            if isinstance(a, int) and a != b:
                return None
            dims.append(b)
        elif isinstance(a, int) or (getattr(a, "value", None) and not getattr(b, "value", None)):
            dims.append(a)
            gained = True
        else:
            dims.append(b)
    return ir.Shape(dims) if gained else None
