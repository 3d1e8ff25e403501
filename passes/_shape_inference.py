"""onnx shape inference for IR models of any size, merged back without losing types.

Large initializers are turned into plain graph inputs for the call (their shape and type are
all inference needs), so a model past 2 GiB infers like a small one and no weight is read.
"""

from __future__ import annotations

import logging

import onnx
import onnx_ir as ir

logger = logging.getLogger(__name__)

_INLINE_LIMIT = 1024  # bytes of initializer data kept for data propagation


def _inference_proto(model: ir.Model) -> onnx.ModelProto:
    graph = model.graph
    originals = list(graph.initializers.values())
    input_count = len(graph.inputs)
    held: list[tuple[ir.Value, ir.TensorProtocol]] = []
    try:
        for value in originals:
            tensor = value.const_value
            if tensor is None or tensor.nbytes <= _INLINE_LIMIT:
                continue
            if value.shape is None:
                value.shape = ir.Shape(tensor.shape.numpy())
            if value.type is None:
                value.type = ir.TensorType(tensor.dtype)
            held.append((value, tensor))
            assert value.name is not None
            graph.initializers.pop(value.name)
            value.const_value = None
            if value not in graph.inputs:
                graph.inputs.append(value)
        return ir.serde.serialize_model(model)
    finally:
        for value, tensor in held:
            value.const_value = tensor
        # pop() one by one: slice deletion leaves the values flagged as graph inputs (onnx-ir 1.1).
        while len(graph.inputs) > input_count:
            graph.inputs.pop()
        graph.initializers.clear()
        for value in originals:
            graph.register_initializer(value)


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
        proto = _inference_proto(model)
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
