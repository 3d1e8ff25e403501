"""Sparsity of weights: zero fractions, N:M patterns along the reduction axis, and the masks that keep them."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import onnx_ir as ir

from onnxshrink.ir.graphs import is_onnx_op

PATTERNS = ((2, 4), (4, 8), (1, 4))


@dataclasses.dataclass(frozen=True)
class LayerWeight:
    """A prunable layer's constant weight and the axis its dot products reduce over."""

    node: ir.Node
    weight: ir.Value
    reduction_axis: int


def reduction_axis(node: ir.Node, rank: int) -> int | None:
    """The weight axis a layer sums over: input channels for Conv, K for Gemm/MatMul."""
    if node.op_type == "Conv":
        return 1 if rank >= 3 else None
    if node.op_type == "ConvTranspose":
        return 0 if rank >= 3 else None
    if node.op_type == "Gemm":
        attr = node.attributes.get("transB")
        return 1 if attr is not None and attr.as_int() else 0
    if node.op_type == "MatMul":
        return 0 if rank == 2 else None
    return None


def layer_weights(model: ir.Model) -> Iterator[LayerWeight]:
    """Conv/ConvTranspose/Gemm/MatMul nodes of the main graph whose weight is a constant."""
    for node in model.graph:
        if not is_onnx_op(node, "Conv", "ConvTranspose", "Gemm", "MatMul"):
            continue
        if len(node.inputs) < 2 or node.inputs[1] is None:
            continue
        weight = node.inputs[1]
        tensor = weight.const_value
        if tensor is None or weight.is_graph_input() or not tensor.dtype.is_floating_point():
            continue
        axis = reduction_axis(node, len(tensor.shape))
        if axis is not None:
            yield LayerWeight(node, weight, axis)


def satisfies_nm(weight: np.ndarray, n: int, m: int, axis: int) -> bool:
    """True when every group of ``m`` consecutive elements along ``axis`` has at most ``n`` non-zeros."""
    if weight.ndim == 0 or weight.shape[axis] % m:
        return False
    moved = np.moveaxis(weight, axis, -1)
    groups = moved.reshape(-1, m)
    return bool(np.all(np.count_nonzero(groups, axis=1) <= n))


def patterns_of(weight: np.ndarray, axis: int) -> list[str]:
    """The N:M patterns (of :data:`PATTERNS`) the weight satisfies along ``axis``."""
    return [f"{n}:{m}" for n, m in PATTERNS if satisfies_nm(weight, n, m, axis)]


def magnitude(weight: np.ndarray) -> np.ndarray:
    """``|w|`` in float32 (float16/bfloat16 included), the score every criterion ranks by."""
    return np.abs(weight.astype(np.float32))


def nm_mask(weight: np.ndarray, n: int, m: int, axis: int) -> np.ndarray:
    """Keeps the ``n`` largest of every ``m`` consecutive elements along ``axis`` (its size % m == 0)."""
    moved = np.moveaxis(magnitude(weight), axis, -1)
    groups = moved.reshape(-1, m)
    drop = np.argsort(groups, axis=1, kind="stable")[:, : m - n]
    keep = np.ones(groups.shape, dtype=bool)
    np.put_along_axis(keep, drop, False, axis=1)
    return np.moveaxis(keep.reshape(moved.shape), -1, axis)


def kept_magnitude(weight: np.ndarray, keep: np.ndarray) -> float:
    """The fraction of the layer's total ``|w|`` the mask keeps (1.0 for an all-zero layer)."""
    score = magnitude(weight).astype(np.float64)
    total = float(score.sum())
    return float(score[keep].sum()) / total if total > 0 else 1.0
