"""Calibration-aware 4-bit weight rounding for ``mode=weight-only`` (``rounding=gptq``).

Nearest rounding makes each weight's own error as small as it can be; what matters is the layer's
output error ``||X W - X Q||^2 = tr((W - Q)^T H (W - Q))`` with ``H = X^T X`` over the calibration
rows (the Gram matrix of the layer input). GPTQ (Frantar et al., 2023) rounds the input channels
(rows of ``W [K, N]``) one at a time and moves each row's rounding error onto the rows not yet
rounded, in the proportions ``H^-1`` gives, so the rest of the rows compensate. Rules:

1. The Gram matrix of each MatMul/Gemm input is summed in float64 over the calibration samples,
   streamed in batches (one ``[K, K]`` matrix per input tensor, never the activations); layers
   reading the same tensor (attention's Q, K and V) share it and are rounded together, their
   weights side by side as one ``[K, sum N]`` matrix (each column's rounding is independent).
2. Block scales (``block_size`` rows of one column share one) are chosen before the rounding, from
   the float weight, and stay fixed ("static groups"): each block's scale is the one of a grid of
   clipping ratios (``CLIP_RATIOS``) that gives the lowest ``sum_k H_kk (w_k - q_k)^2`` over the
   block's rows. ``s4`` spans the whole int4 range ``[-8, 7]``: the scale is
   ``max(-min / 8, max / 7)`` (times the ratio), zero point 0; ``u4`` keeps min/max with a zero point.
3. ``H`` is damped by ``DAMP`` times its mean diagonal (a channel no sample reached keeps
   ``H_kk = 1``: its rounding error moves nowhere), the rows are visited in order of decreasing
   ``H_kk`` (activation order, so the rows that matter most are rounded while the most rows remain
   to compensate), and the upper Cholesky factor ``U`` of ``H^-1`` gives the updates: row ``k``'s
   error ``e = (w_k - q_k) / U_kk`` moves as ``w_j -= U_kj e`` onto every later row ``j``, applied
   lazily in column blocks of ``LAZY_BLOCK`` rows (one matrix product per block).
4. The result is stored exactly as nearest rounding stores it (same values, scales, zero points
   and block layout), so the model runs on the same MatMulNBits kernel at the same size.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import onnx_ir as ir
from scipy import linalg
from scipy.linalg import blas, lapack

from onnxshrink.activations import capture
from onnxshrink.context import PassContext
from onnxshrink.ir.constants import constant_array
from onnxshrink.passes.quantize.statistics import ChannelStats

__all__ = [
    "CLIP_RATIOS",
    "DAMP",
    "GramMatrix",
    "RoundedWeight",
    "block_scales",
    "gptq_round",
    "quantized_rows",
    "round_layers",
]

# Clipping ratios tried per block (HQQ / GPTQ's "mse" search use a similar grid).
CLIP_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7)
# Damping of H, a share of its mean diagonal (GPTQ's percdamp default).
DAMP = 0.01
# Rows rounded between two matrix-product updates of the remaining rows.
LAZY_BLOCK = 128
# s8/s7: static int8 weights, narrow range (7 bits with reduce-range; int8_rounding.py).
_LEVELS = {"s4": (-8, 7), "u4": (0, 15), "s8": (-127, 127), "s7": (-63, 63)}
_MIN_SCALE = 1e-12


@dataclasses.dataclass
class GramMatrix:
    """``H = sum X^T X`` of one activation tensor over its rows (all axes but the last), in float64.

    Args:
        channels: ``K``, the size of the last axis.
    """

    channels: int
    rows: int = 0
    nonfinite_rows: int = 0
    _upper: np.ndarray = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._upper = np.zeros((self.channels, self.channels), np.float64)

    def update(self, array: np.ndarray) -> None:
        """Adds one batch; rows holding a non-finite value are counted and left out."""
        rows = np.asarray(array, dtype=np.float32).reshape(-1, self.channels)
        finite = np.isfinite(rows).all(axis=1)
        if not finite.all():
            self.nonfinite_rows += int((~finite).sum())
            rows = rows[finite]
        if rows.shape[0] == 0:
            return
        # The upper triangle only (BLAS syrk: half the products of X^T X), float32 within one batch
        # (a few thousand rows), summed across batches in float64.
        self._upper += blas.ssyrk(1.0, np.ascontiguousarray(rows), trans=1, lower=0)
        self.rows += rows.shape[0]

    @property
    def matrix(self) -> np.ndarray:
        """``H``, ``[K, K]`` float64, symmetric."""
        return self._upper + np.triu(self._upper, 1).T


def _grouped(weight: np.ndarray, block_size: int) -> np.ndarray:
    """``weight [K, N]`` zero-padded to whole blocks and reshaped to ``[blocks, block_size, N]``."""
    k, n = weight.shape
    blocks = -(-k // block_size)
    padded = np.zeros((blocks * block_size, n), np.float64)
    padded[:k] = weight
    return padded.reshape(blocks, block_size, n)


def _scales_for(grouped: np.ndarray, dtype: str, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """Rule 2: the scales and zero points ``[blocks, N]`` of each block, its range times ``ratio``."""
    low = np.minimum(grouped.min(axis=1), 0.0) * ratio
    high = np.maximum(grouped.max(axis=1), 0.0) * ratio
    if dtype == "s4":
        scales = np.maximum(-low / 8.0, high / 7.0)
        zero = np.zeros_like(scales)
    else:
        scales = (high - low) / 15.0
    scales = np.where(~np.isfinite(scales) | (scales < _MIN_SCALE), 1.0, scales).astype(np.float32)
    if dtype != "s4":
        zero = np.clip(np.rint(-low / scales), 0, 15)
    return scales, zero


def _rounded(values: np.ndarray, scales: np.ndarray, zero: np.ndarray, dtype: str) -> np.ndarray:
    """Integer levels of ``values`` for broadcastable ``scales`` and ``zero`` (float64 result)."""
    qmin, qmax = _LEVELS[dtype]
    return np.clip(np.rint(values / scales) + zero, qmin, qmax)


def block_scales(
    weight: np.ndarray, block_size: int, dtype: str, importance: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Rule 2: per-block scales and zero points ``[ceil(K/b), N]`` of ``weight [K, N]``.

    Args:
        weight: The float weight, input channels first.
        block_size: Rows per block.
        dtype: ``s4`` or ``u4``.
        importance: ``H_kk`` per row (None: the full range, no clipping search).

    Returns:
        float32 scales and zero points (all 0 for ``s4``).
    """
    grouped = _grouped(weight, block_size)
    if importance is None:
        return _scales_for(grouped, dtype, 1.0)
    weights = _grouped(importance.reshape(-1, 1), block_size)  # [blocks, b, 1]
    best_error = np.full(grouped.shape[::2], np.inf)
    best_scales, best_zero = _scales_for(grouped, dtype, 1.0)
    for ratio in CLIP_RATIOS:
        scales, zero = _scales_for(grouped, dtype, ratio)
        levels = _rounded(grouped, scales[:, None, :], zero[:, None, :], dtype)
        error = (weights * np.square(grouped - (levels - zero[:, None, :]) * scales[:, None, :])).sum(axis=1)
        better = error < best_error
        best_error = np.where(better, error, best_error)
        best_scales = np.where(better, scales, best_scales)
        best_zero = np.where(better, zero, best_zero)
    return best_scales.astype(np.float32), best_zero


def _inverse_factor(gram: np.ndarray) -> np.ndarray:
    """Rule 3: the upper Cholesky factor ``U`` of the damped ``H^-1`` (``H^-1 = U^T U``).

    With ``J`` the order reversal and ``J H J = L L^T``, ``U = J L^-1 J``: one Cholesky and one
    triangular inverse, no full inverse. The damping grows tenfold (up to ``H``'s mean diagonal)
    until ``H`` factors.
    """
    h = gram.copy()
    dead = np.diag(h) <= 0
    h[dead, :] = 0.0
    h[:, dead] = 0.0
    h[dead, dead] = 1.0
    mean = float(np.mean(np.diag(h)))
    flipped = np.ascontiguousarray(h[::-1, ::-1])
    damp = DAMP
    while True:
        shifted = flipped.copy()  # damped in place: no [K, K] identity (int8 Convs: K up to 4608)
        shifted[np.diag_indices_from(shifted)] += damp * mean
        try:
            lower = linalg.cholesky(shifted, lower=True, overwrite_a=True)
            break
        except linalg.LinAlgError:
            if damp >= 1.0:
                raise
            damp *= 10.0
    inverse, info = lapack.dtrtri(lower, lower=1)
    if info != 0:
        raise linalg.LinAlgError(f"triangular inverse failed (LAPACK info {info})")
    return np.ascontiguousarray(inverse[::-1, ::-1])


def gptq_round(
    weight: np.ndarray, gram: np.ndarray, scales: np.ndarray, zero: np.ndarray, block_size: int, dtype: str
) -> np.ndarray:
    """Rule 3: integer levels ``[K, N]`` of ``weight`` with GPTQ error feedback under fixed block scales.

    Args:
        weight: The float weight ``[K, N]``.
        gram: ``H = X^T X`` ``[K, K]`` of the layer input.
        scales: Block scales ``[ceil(K/b), N]`` (rule 2).
        zero: Block zero points, same shape (0 for ``s4``).
        block_size: Rows per block (int8 per channel: ``K``, one block).
        dtype: ``s4`` or ``u4``; ``s8``/``s7`` for static int8 weights (int8_rounding.py).

    Returns:
        The levels, float64 (``[-8, 7]`` for s4, ``[0, 15]`` for u4, ``[-127, 127]`` for s8,
        ``[-63, 63]`` for s7), rows in the weight's order.
    """
    k = weight.shape[0]
    order = np.argsort(-np.diag(gram), kind="stable")
    factor = _inverse_factor(gram[np.ix_(order, order)])
    remaining = weight.astype(np.float64)[order]
    row_scales = np.repeat(scales.astype(np.float64), block_size, axis=0)[:k][order]
    row_zero = np.repeat(zero.astype(np.float64), block_size, axis=0)[:k][order]
    levels = np.empty_like(remaining)
    for start in range(0, k, LAZY_BLOCK):
        stop = min(start + LAZY_BLOCK, k)
        block = remaining[start:stop]  # a view: updated in place
        errors = np.empty_like(block)
        for i in range(stop - start):
            row = start + i
            q = _rounded(block[i], row_scales[row], row_zero[row], dtype)
            levels[row] = q
            errors[i] = (block[i] - (q - row_zero[row]) * row_scales[row]) / factor[row, row]
            block[i + 1 :] -= np.outer(factor[row, row + 1 : stop], errors[i])
        remaining[stop:] -= factor[start:stop, stop:].T @ errors
    restored = np.empty_like(levels)
    restored[order] = levels
    return restored


def quantized_rows(
    weights: Iterable[np.ndarray], gram: GramMatrix, block_size: int, dtype: str
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Rules 1-2-3 for the layers reading one tensor: each weight's levels, scales and zero points.

    Args:
        weights: The layers' float weights, each ``[K, N_i]``.
        gram: The Gram matrix of their shared input.
        block_size: Rows per block.
        dtype: ``s4`` or ``u4``.

    Returns:
        Per weight: levels ``[K, N_i]`` (int8 for s4, uint8 for u4), float32 scales and zero
        points ``[ceil(K/b), N_i]`` (the same dtype as the levels).
    """
    arrays = [np.asarray(weight, np.float64) for weight in weights]
    joined = np.concatenate(arrays, axis=1)
    matrix = gram.matrix
    scales, zero = block_scales(joined, block_size, dtype, np.diag(matrix))
    levels = gptq_round(joined, matrix, scales, zero, block_size, dtype)
    integer = np.int8 if dtype == "s4" else np.uint8
    results = []
    start = 0
    for array in arrays:
        stop = start + array.shape[1]
        results.append(
            (levels[:, start:stop].astype(integer), scales[:, start:stop], zero[:, start:stop].astype(integer))
        )
        start = stop
    return results


def relative_output_error(rows: np.ndarray, weight: np.ndarray, dequantized: np.ndarray) -> float:
    """``||X W - X Q||^2 / ||X W||^2`` on ``rows`` (for reports and tests)."""
    exact = rows @ weight
    reference = float(np.square(exact).sum())
    return float(np.square(rows @ dequantized - exact).sum()) / reference if reference > 0 else 0.0


def dequantize(levels: np.ndarray, scales: np.ndarray, zero: np.ndarray, block_size: int) -> np.ndarray:
    """The float weight ``[K, N]`` that the levels, scales and zero points stand for."""
    k = levels.shape[0]
    row_scales = np.repeat(scales.astype(np.float32), block_size, axis=0)[:k]
    row_zero = np.repeat(zero.astype(np.float32), block_size, axis=0)[:k]
    return (levels.astype(np.float32) - row_zero) * row_scales


# Rows per input tensor kept to report each layer's output error (nearest against gptq).
_REPORT_ROWS = 256


@dataclasses.dataclass(frozen=True)
class RoundedWeight:
    """One layer's 4-bit weight as ``rewrite.weight_only`` stores it: levels ``[K, N]``, scales and zero points."""

    levels: np.ndarray
    scales: np.ndarray
    zero: np.ndarray | None


def layer_weight(node: ir.Node) -> np.ndarray:
    """A MatMul/Gemm's constant weight as ``[K, N]`` (input channels first), float32."""
    array = constant_array(node.inputs[1])
    assert array is not None
    trans_b = node.op_type == "Gemm" and bool(node.attributes.get_int("transB"))
    return np.asarray(array.T if trans_b else array, dtype=np.float32)


def nearest_levels(weight: np.ndarray, scales: np.ndarray, zero: np.ndarray, block_size: int, dtype: str) -> np.ndarray:
    """Each weight rounded to its nearest level under the block ``scales`` and ``zero`` points."""
    k = weight.shape[0]
    row_scales = np.repeat(scales.astype(np.float64), block_size, axis=0)[:k]
    row_zero = np.repeat(zero.astype(np.float64), block_size, axis=0)[:k]
    return _rounded(weight.astype(np.float64), row_scales, row_zero, dtype)


def round_layers(
    context: PassContext,
    model: ir.Model,
    layers: Mapping[str, ir.Node],
    block_size: int,
    dtype: str,
    *,
    pass_name: str,
    samples: int,
    batch_size: int,
) -> tuple[dict[str, RoundedWeight], dict[str, Any]]:
    """Rules 1-3 for ``layers`` (key -> MatMul/Gemm node of the main graph); the model is not changed.

    Returns:
        Each layer's rounded weight, and the report's record: the calibration rows, and per layer
        its input tensor and the relative output error of nearest rounding and of GPTQ on up to
        256 sampled calibration rows.

    Raises:
        UsageError: No calibration data (``capture``).
    """
    groups: dict[str, list[str]] = {}
    for key, node in layers.items():
        source = node.inputs[0]
        assert source is not None and source.name
        groups.setdefault(source.name, []).append(key)
    weights = {key: layer_weight(node) for key, node in layers.items()}
    grams = {name: GramMatrix(weights[keys[0]].shape[0]) for name, keys in groups.items()}
    per_batch = max(1, math.ceil(_REPORT_ROWS / max(1, math.ceil(samples / batch_size))))
    rows = {name: ChannelStats(_REPORT_ROWS, per_batch) for name in groups}
    for _, arrays in capture(context, model, list(groups), pass_name=pass_name, samples=samples, batch_size=batch_size):
        for name, gram in grams.items():
            gram.update(arrays[name])
            rows[name].update(arrays[name])
    rounded: dict[str, RoundedWeight] = {}
    record: dict[str, Any] = {}
    for name, keys in groups.items():
        gram = grams.pop(name)  # each Gram matrix is freed once its layers are rounded
        results = quantized_rows([weights[key] for key in keys], gram, block_size, dtype)
        sample = rows.pop(name).sample()
        for key, (levels, scales, zero) in zip(keys, results, strict=True):
            rounded[key] = RoundedWeight(levels, scales, zero if dtype == "u4" else None)
            weight = weights[key]
            full_scales, full_zero = block_scales(weight, block_size, dtype)
            nearest = nearest_levels(weight, full_scales, full_zero, block_size, dtype)
            record[key] = {
                "tensor": name,
                "rows": gram.rows,
                "relative_error": {
                    "nearest": _rounded_error(sample, weight, dequantize(nearest, full_scales, full_zero, block_size)),
                    "gptq": _rounded_error(sample, weight, dequantize(levels, scales, zero, block_size)),
                },
            }
    return rounded, record


def _rounded_error(rows: np.ndarray, weight: np.ndarray, dequantized: np.ndarray) -> float:
    return float(f"{relative_output_error(rows, weight, dequantized):.4g}")
