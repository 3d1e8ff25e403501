"""``inspect``'s per-layer table: every weighted layer, float or quantized, in every graph.

A layer is a compute node with a constant weight:

1. Conv, ConvTranspose, Gemm, MatMul whose weight (input 1) is a float constant, or the output of
   a ``DequantizeLinear`` of a constant (a QDQ model): precision is then the stored type (int8...).
2. ConvInteger, MatMulInteger (weight input 1), QLinearConv, QLinearMatMul (input 3).
3. com.microsoft MatMulNBits (input 1) and GatherBlockQuantized (input 0): ``bits``-wide packed
   blocks, precision ``int<bits>``.

Sparsity is the share of weights that are zero once dequantized (stored value == zero point);
it is left out where zero points are blocked or values are packed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxshrink.inspect.macs import Shapes, node_label, node_macs
from onnxshrink.ir.constants import constant_array, constant_source
from onnxshrink.ir.graphs import canonical_domain, tensor_nbytes
from onnxshrink.sparsity import patterns_of, reduction_axis

# (domain, op) → (weight input, weight zero-point input or None, per-channel axis of that zero point).
_WEIGHTS: dict[tuple[str, str], tuple[int, int | None, int]] = {
    ("", "Conv"): (1, None, 0),
    ("", "ConvTranspose"): (1, None, 0),
    ("", "Gemm"): (1, None, 0),
    ("", "MatMul"): (1, None, 0),
    ("", "ConvInteger"): (1, 3, 0),
    ("", "MatMulInteger"): (1, 3, -1),
    ("", "QLinearConv"): (3, 5, 0),
    ("", "QLinearMatMul"): (3, 5, -1),
    ("com.microsoft", "MatMulNBits"): (1, None, 0),
    ("com.microsoft", "GatherBlockQuantized"): (0, None, 0),
}
_PACKED = {"MatMulNBits", "GatherBlockQuantized"}
_FLOAT_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
_AS_FLOAT_OP = {"ConvInteger": "Conv", "QLinearConv": "Conv", "MatMulInteger": "MatMul", "QLinearMatMul": "MatMul"}


def precision_name(dtype: ir.DataType) -> str:
    """``float32``, ``float16``, ``int8``, ``uint4``...: the element type as users write it."""
    names = {ir.DataType.FLOAT: "float32", ir.DataType.DOUBLE: "float64"}
    return names.get(dtype, dtype.name.lower())


def walk_graphs(graph: ir.Graph, path: str = "") -> Iterator[tuple[ir.Node, str]]:
    """Every node of ``graph`` and its subgraphs, with the path of the graph it lies in."""
    for node in graph:
        yield node, path
        for name, attr in node.attributes.items():
            if attr.is_ref():
                continue
            if attr.type == ir.AttributeType.GRAPH:
                yield from walk_graphs(attr.as_graph(), f"{path}{node_label(node)}/{name}/")
            elif attr.type == ir.AttributeType.GRAPHS:
                for i, sub in enumerate(attr.as_graphs()):
                    yield from walk_graphs(sub, f"{path}{node_label(node)}/{name}[{i}]/")


def _dtype(source: ir.TensorProtocol | np.ndarray) -> ir.DataType:
    return ir.DataType.from_numpy(source.dtype) if isinstance(source, np.ndarray) else source.dtype


def _array(source: ir.TensorProtocol | np.ndarray) -> np.ndarray:
    return source if isinstance(source, np.ndarray) else source.numpy()


def _centered(stored: np.ndarray, zero_point: np.ndarray | None, axis: int) -> np.ndarray | None:
    """Stored values minus their zero point (zero where the dequantized weight is zero), or None."""
    if zero_point is None or zero_point.size == 1:
        offset = 0 if zero_point is None else int(zero_point.reshape(-1)[0])
        return stored.astype(np.int64) - offset
    if zero_point.ndim == 1 and stored.ndim and zero_point.size == stored.shape[axis]:
        shape = [1] * stored.ndim
        shape[axis] = zero_point.size
        return stored.astype(np.int64) - zero_point.astype(np.int64).reshape(shape)
    return None  # blocked zero points


def _row(node: ir.Node, graph: str, shape_of: Shapes) -> dict[str, Any] | None:
    key = (canonical_domain(node.domain), node.op_type)
    if key not in _WEIGHTS:
        return None
    weight_index, zp_index, zp_axis = _WEIGHTS[key]
    weight = node.inputs[weight_index] if weight_index < len(node.inputs) else None
    source = constant_source(weight)
    zero_point = constant_array(node.inputs[zp_index]) if zp_index is not None and zp_index < len(node.inputs) else None
    dequantized = blocked = False
    if source is None and weight is not None and node.op_type in _FLOAT_OPS:
        dequantize = weight.producer()
        if dequantize is not None and dequantize.op_type == "DequantizeLinear" and dequantize.inputs:
            source = constant_source(dequantize.inputs[0])
            dequantized = True
            has_zp = len(dequantize.inputs) > 2 and dequantize.inputs[2] is not None
            zero_point = constant_array(dequantize.inputs[2]) if has_zp else None
            zp_axis = dequantize.attributes.get_int("axis", 1)
            blocked = dequantize.attributes.get_int("block_size", 0) > 0
    if source is None or weight is None:
        return None
    dtype = _dtype(source)
    if node.op_type in _FLOAT_OPS and not dequantized and not dtype.is_floating_point():
        return None  # an integer constant fed to MatMul is shape arithmetic, not a layer
    precision = precision_name(dtype)
    sparsity: float | None = None
    patterns: list[str] = []
    shape = list(source.shape)
    if node.op_type in _PACKED:
        bits = node.attributes.get_int("bits", 4)
        if bits < 8 and dtype in (ir.DataType.UINT8, ir.DataType.INT8):
            precision = f"int{bits}"
        if node.op_type == "MatMulNBits":
            shape = [node.attributes.get_int("N", 0), node.attributes.get_int("K", 0)]
    elif not blocked:
        data = _array(source)
        values = data if dtype.is_floating_point() else _centered(data, zero_point, zp_axis % max(data.ndim, 1))
        if values is not None and values.size:
            sparsity = float(np.count_nonzero(values == 0) / values.size)
            axis = _reduction_axis(node, values.ndim)
            patterns = patterns_of(values, axis) if axis is not None else []
    nbytes = tensor_nbytes(source) if not isinstance(source, np.ndarray) else int(source.nbytes)
    return {
        "node": node_label(node),
        "graph": graph.rstrip("/"),
        "op": node.op_type,
        "weight": weight.name,
        "shape": shape,
        "precision": precision,
        "sparsity": sparsity,
        "nm_patterns": patterns,
        "macs": node_macs(node, shape_of),
        "bytes": nbytes,
    }


def _reduction_axis(node: ir.Node, rank: int) -> int | None:
    if node.op_type in _AS_FLOAT_OP:
        return (1 if rank >= 3 else None) if _AS_FLOAT_OP[node.op_type] == "Conv" else (0 if rank == 2 else None)
    return reduction_axis(node, rank)


def layer_rows(model: ir.Model, shape_of: Shapes) -> list[dict[str, Any]]:
    """One row per weighted layer of the model (subgraphs included), in graph order."""
    rows = []
    for node, graph in walk_graphs(model.graph):
        row = _row(node, graph, shape_of)
        if row is not None:
            rows.append(row)
    return rows


def attach_kernels(rows: list[dict[str, Any]], kernels: Mapping[str, str | None]) -> None:
    """Adds the onnxruntime kernel (node label → optimized op) to the main graph's rows."""
    for row in rows:
        if not row["graph"]:
            row["kernel"] = kernels.get(row["node"])
