"""onnx shape inference for IR models of any size, merged back without losing types.

The model goes to onnx without its large weights (see ``checks.weightless_proto``), so a model
past 2 GiB infers like a small one and no weight is read.
"""

from __future__ import annotations

import logging
from typing import Any

import onnx
import onnx_ir as ir

from onnxshrink.checks import weightless_proto

logger = logging.getLogger(__name__)


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
    try:
        proto = weightless_proto(model)
        inferred = onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False, data_prop=True)
        inferred_model = ir.serde.deserialize_model(inferred)
    except Exception as error:  # inference gives up on some custom or malformed graphs
        logger.info("shape inference failed, shapes left as they were: %s", error)
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
