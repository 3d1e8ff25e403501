"""The one answer to "is this input a constant, and what does it hold?".

Policy, the same for every pass:

* an initializer is a constant **unless it is also a graph input**: ONNX lets the caller
  override such an initializer at run time (it is only a default), so no pass may rely on its
  contents, fold it, prune it or rewrite it;
* the output of a ``Constant`` node of the default domain is a constant (``value``,
  ``value_float(s)``, ``value_int(s)``; sparse and string forms are not);
* anything else, the output of a ``DequantizeLinear`` of constants included, is not: a pass that
  understands such a pattern says so itself.

Reading a constant's data reads the (possibly memory-mapped) weight; :func:`constant_source`
and :func:`is_constant` do not.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onnxshrink.ir.graphs import ONNX_DOMAINS


def _constant_node_tensor(node: ir.Node) -> ir.TensorProtocol | np.ndarray | None:
    """The value a ``Constant`` node holds, or None when it is not a plain tensor or number list."""
    for name, attr in node.attributes.items():
        if attr.is_ref():
            return None
        # .value, not as_tensor(): the protocol check behind it is slow and this runs often.
        if name == "value" and attr.type == ir.AttributeType.TENSOR:
            return attr.value
        if name in ("value_float", "value_floats"):
            return np.asarray(attr.value, dtype=np.float32)
        if name in ("value_int", "value_ints"):
            return np.asarray(attr.value, dtype=np.int64)
    return None


def constant_source(value: ir.Value | None) -> ir.TensorProtocol | np.ndarray | None:
    """The tensor a value always holds (see the module policy), without reading its data."""
    if value is None:
        return None
    if value.const_value is not None:
        return None if value.is_graph_input() else value.const_value
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and producer.domain in ONNX_DOMAINS:
        return _constant_node_tensor(producer)
    return None


def is_constant(value: ir.Value | None) -> bool:
    """True when the value is a constant by the module policy."""
    return constant_source(value) is not None


def constant_array(value: ir.Value | None, *, max_elements: int | None = None) -> np.ndarray | None:
    """The constant's data as numpy, or None when it is not a constant or has more than ``max_elements``."""
    source = constant_source(value)
    if source is None:
        return None
    size = source.size if isinstance(source, np.ndarray) else int(source.size)
    if max_elements is not None and size > max_elements:
        return None
    return source if isinstance(source, np.ndarray) else source.numpy()


def constant_scalar(value: ir.Value | None) -> float | None:
    """The constant's only element as a float, or None when it is not a one-element constant."""
    array = constant_array(value, max_elements=1)
    return None if array is None or array.size != 1 else float(array.reshape(()))


def constant_ints(value: ir.Value | None, *, max_elements: int | None = None) -> list[int] | None:
    """An integer constant's elements as Python ints (shape vectors, axes), or None."""
    array = constant_array(value, max_elements=max_elements)
    if array is None or not np.issubdtype(array.dtype, np.integer):
        return None
    return [int(v) for v in array.reshape(-1).tolist()]


def lift_constant(value: ir.Value | None, graph: ir.Graph) -> ir.Value | None:
    """Turns the default-domain ``Constant`` node producing ``value`` into an initializer of ``graph``.

    Exporters such as paddle2onnx hold every weight in a ``Constant`` node; passes that rewrite
    weights in place want initializers. The meaning is kept: every reader of ``value`` reads the
    initializer, which takes its name, and the node is removed.

    Args:
        value: The value to lift.
        graph: The graph that holds the ``Constant`` node (a function body is not a graph here:
            functions hold no initializers).

    Returns:
        The initializer value, or None when ``value`` is not the output of such a node in
        ``graph``, is a graph output, or holds a sparse or string form.
    """
    node = value.producer() if value is not None else None
    if value is None or node is None or node.op_type != "Constant" or node.domain not in ONNX_DOMAINS:
        return None
    if node.graph is not graph or value.is_graph_output():
        return None
    source = _constant_node_tensor(node)
    if source is None:
        return None
    tensor = ir.tensor(source) if isinstance(source, np.ndarray) else source
    name = value.name
    value.name = None  # free the name for the initializer
    lifted = ir.Value(
        name=name, shape=ir.Shape(tensor.shape.numpy()), type=ir.TensorType(tensor.dtype), const_value=tensor
    )
    ir.convenience.replace_all_uses_with(value, lifted)
    graph.remove(node, safe=True)
    graph.register_initializer(lifted)
    return lifted


def lift_weight_constants(graph: ir.Graph, ops: tuple[str, ...], index: int = 1) -> int:
    """Lifts (:func:`lift_constant`) input ``index`` of every default-domain ``ops`` node; returns the count.

    Covers ``graph`` and its If/Loop/Scan bodies, each weight into the body that holds its node.
    """
    lifted = 0
    for node in list(ir.traversal.RecursiveGraphIterator(graph)):
        if node.op_type not in ops or node.domain not in ONNX_DOMAINS or len(node.inputs) <= index:
            continue
        weight = node.inputs[index]
        producer = weight.producer() if weight is not None else None
        if producer is not None and producer.graph is not None and lift_constant(weight, producer.graph) is not None:
            lifted += 1
    return lifted
