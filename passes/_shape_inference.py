"""onnx shape inference for IR models of any size, merged back without losing types.

The model goes to onnx without its large weights (see ``checks.weightless_proto``), so a model
past 2 GiB infers like a small one and no weight is read.
"""

from __future__ import annotations

import logging

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
            if value.shape is None or _more_specific(new_shape, value.shape):
                value.shape = new_shape
                changed = True
    return changed


def _more_specific(new: ir.Shape, old: ir.Shape) -> bool:
    """True when ``new`` has the same rank and says at least as much as ``old`` on every dim."""
    if len(new) != len(old):
        return False
    gained = False
    for a, b in zip(new, old, strict=True):
        if isinstance(b, int) or getattr(b, "value", None):
            if a != b:
                return False  # a known size or a named symbol must stay as it is
        elif isinstance(a, int) or getattr(a, "value", None):
            gained = True
    return gained
