"""Layer-wise least squares as data: streamed normal equations, masked ridge solves, im2col.

Pure numpy, no graph. A layer is seen as ``g`` independent groups (Conv groups; one group for
Gemm/MatMul): calibration rows ``X [P, g, K]`` and teacher targets ``Y [P, g, O]`` give, per group,
``W [O, K]`` with ``X @ W.T ~ Y``. Only ``XᵀX``, ``XᵀY`` and ``sum(Y**2)`` are kept (float64),
so memory is ``g·K·(K+O)`` whatever the amount of calibration data.

The ridge term pulls towards the layer's current weights, not towards zero: with fewer
calibration rows than inputs the directions the data does not see keep their trained values.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

# Rows of a value compared when matching its channels to the input model's.
_MATCH_ROWS = 4096
# Above this many multiply-adds of per-support dense solves, method=auto switches to OBS.
_LSTSQ_BUDGET = 2e9


@dataclasses.dataclass
class NormalEquations:
    """Running sums over calibration rows, per group: ``XᵀX [g, K, K]``, ``XᵀY [g, K, O]``, ``ΣY² [g, O]``."""

    xtx: np.ndarray
    xty: np.ndarray
    yy: np.ndarray
    rows: int = 0

    @classmethod
    def zeros(cls, groups: int, inputs: int, outputs: int) -> NormalEquations:
        """Returns empty sums for ``groups`` groups of ``inputs`` columns and ``outputs`` targets."""
        return cls(
            np.zeros((groups, inputs, inputs)),
            np.zeros((groups, inputs, outputs)),
            np.zeros((groups, outputs)),
        )

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        """Adds one batch of rows ``x [P, g, K]`` with targets ``y [P, g, O]``."""
        xg = np.ascontiguousarray(x.astype(np.float64, copy=False).transpose(1, 2, 0))  # [g, K, P]
        yg = y.astype(np.float64, copy=False).transpose(1, 0, 2)  # [g, P, O]
        self.xtx += xg @ xg.transpose(0, 2, 1)
        self.xty += xg @ yg
        self.yy += np.einsum("gpo,gpo->go", yg, yg)
        self.rows += x.shape[0]

    def columns(self, index: np.ndarray) -> NormalEquations:
        """The same sums restricted to the target columns ``index``."""
        return NormalEquations(self.xtx, self.xty[..., index], self.yy[:, index], self.rows)

    def squared_error(self, weights: np.ndarray) -> float:
        """``Σ ||X wᵀ - Y||²`` over all rows and groups for ``weights [g, O, K]``, from the sums alone."""
        quadratic = np.einsum("gok,gok->", weights @ self.xtx, weights)
        linear = np.einsum("gok,gko->", weights, self.xty)
        return max(float(quadratic - 2 * linear + self.yy.sum()), 0.0)

    def relative_error(self, weights: np.ndarray) -> float:
        """``||X wᵀ - Y|| / ||Y||`` (Frobenius, all rows); 0 when the targets are all zero."""
        total = float(self.yy.sum())
        return math.sqrt(self.squared_error(weights) / total) if total > 0 else 0.0


def kept_columns(equations: NormalEquations, weights: np.ndarray) -> np.ndarray | None:
    """Returns which target column each output of ``weights [1, O, K]`` reproduces.

    This is for targets with more columns than the layer has outputs: a layer that lost output
    channels, and kept the others in order.

    The columns are the increasing sequence that maximises the summed cosine similarity of the
    layer's current outputs with the targets, computed from the sums alone; None when no such
    sequence has a finite score (a layer with all-zero outputs).
    """
    cross = (weights @ equations.xty)[0]  # Σ student output · teacher value, [O, O_teacher]
    student = np.einsum("gok,gok->o", weights @ equations.xtx, weights)  # matmul first: no O·K² einsum loop
    return increasing_match(cross, student, equations.yy[0])


def matched_channels(student: np.ndarray, teacher: np.ndarray, axis: int) -> np.ndarray | None:
    """Returns which channel of ``teacher`` each channel of ``student`` is (along ``axis``).

    For a value that lost channels (its other axes the same): the increasing sequence of teacher
    channels most similar (cosine over every other axis) to the student's; None when no such
    sequence has a finite score.
    """
    # float32 and at most _MATCH_ROWS rows: the sums only rank candidates (BERT-base FFN: 2150 x
    # 3072 channels).
    s = np.moveaxis(student, axis, -1).reshape(-1, student.shape[axis])[:_MATCH_ROWS].astype(np.float32)
    t = np.moveaxis(teacher, axis, -1).reshape(-1, teacher.shape[axis])[:_MATCH_ROWS].astype(np.float32)
    norms = (np.einsum("rk,rk->k", a, a, dtype=np.float64) for a in (s, t))
    return increasing_match((s.T @ t).astype(np.float64), *norms)


def increasing_match(cross: np.ndarray, student: np.ndarray, teacher: np.ndarray) -> np.ndarray | None:
    """The increasing column sequence, one per row of ``cross``, of greatest summed cosine.

    Args:
        cross: ``Σ s_i t_j`` over rows, ``[S, T]`` with ``S <= T``.
        student: ``Σ s_i²``, ``[S]``.
        teacher: ``Σ t_j²``, ``[T]``.

    Returns:
        The chosen column of each row, or None when no sequence has a finite score (a student
        channel that is all zero).
    """
    scale = np.sqrt(np.outer(student, teacher))
    cosine = np.divide(cross, scale, out=np.full_like(cross, -np.inf), where=scale > 0)
    best = np.argmax(cosine, axis=1)
    if np.all(np.isfinite(cosine[np.arange(len(best)), best])) and np.all(np.diff(best) > 0):
        return best  # each row's own best column, already increasing: the optimum
    outputs, columns = cosine.shape
    positions = np.arange(columns)
    total = cosine[0].copy()
    previous = np.zeros((outputs, columns), dtype=np.int64)
    # Dynamic programme over rows (not weights): total[i] is the best score of rows 0..j
    # with row j on column i.
    for output in range(1, outputs):
        best = np.maximum.accumulate(total)
        where = np.maximum.accumulate(np.where(total >= best, positions, 0))
        total = np.full(columns, -np.inf)
        total[1:] = cosine[output, 1:] + best[:-1]
        previous[output, 1:] = where[:-1]
    if not np.isfinite(total.max()):
        return None
    chosen = np.empty(outputs, dtype=np.int64)
    chosen[-1] = int(np.argmax(total))
    for output in range(outputs - 1, 0, -1):
        chosen[output - 1] = previous[output, chosen[output]]
    return chosen


def choose_method(keep: np.ndarray) -> str:
    """``lstsq`` when solving each distinct row support exactly is cheap enough, else ``obs``.

    A layer without zeros (channel removal leaves none) is always ``lstsq``: one Cholesky solve,
    cheaper than the inverse and factorisation OBS starts from.
    """
    if keep.all():
        return "lstsq"
    cost = 0.0
    for group in keep:
        supports = group[:1] if group.all() else np.unique(group, axis=0)
        cost += float(np.sum(supports.sum(axis=1).astype(np.float64) ** 3))
    return "lstsq" if cost <= _LSTSQ_BUDGET else "obs"


def solve(equations: NormalEquations, current: np.ndarray, keep: np.ndarray, ridge: float, method: str) -> np.ndarray:
    """Refit ``current [g, O, K]`` under the mask ``keep`` (False entries stay exactly zero).

    Minimises ``||X wᵀ - Y||² + λ||w - current||²`` per group with ``λ = ridge · mean(diag XᵀX)``.
    ``lstsq`` solves it exactly, one dense solve per distinct row support; ``obs`` solves it densely
    and then zeroes masked weights column by column with the Optimal Brain Surgeon update of
    SparseGPT (Frantar & Alistarh, 2023), compensating in the columns not yet visited.
    """
    refit = np.zeros_like(current, dtype=np.float64)
    for group in range(current.shape[0]):
        gram = equations.xtx[group]
        scale = float(np.mean(np.diag(gram)))
        lam = ridge * (scale if scale > 0 else 1.0)
        system = gram + lam * np.eye(gram.shape[0])
        rhs = equations.xty[group] + lam * current[group].T.astype(np.float64)
        if method == "obs":
            refit[group] = _obs(system, rhs, keep[group])
        else:
            refit[group] = _masked(system, rhs, keep[group])
    return refit


def _solve(system: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Cholesky solve of the (symmetric, ridge-shifted) normal equations."""
    # Imported here: every run registers this pass, few run it, and scipy.linalg costs a
    # noticeable share of a short run's start-up.
    import scipy.linalg

    try:
        return scipy.linalg.cho_solve(scipy.linalg.cho_factor(system, check_finite=False), rhs, check_finite=False)
    except (np.linalg.LinAlgError, scipy.linalg.LinAlgError):
        # Only reachable with ridge=0 and rank-deficient inputs: take the minimum-norm solution.
        return np.linalg.lstsq(system, rhs, rcond=None)[0]


def _masked(system: np.ndarray, rhs: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Exact restricted solve: output rows that keep the same inputs share one factorisation."""
    if keep.all():
        return _solve(system, rhs).T
    weights = np.zeros(keep.shape)
    supports, inverse = np.unique(keep, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    for index, support in enumerate(supports):
        cols = np.flatnonzero(support)
        if cols.size == 0:
            continue
        rows = np.flatnonzero(inverse == index)
        solution = _solve(system[np.ix_(cols, cols)], rhs[np.ix_(cols, rows)])
        weights[np.ix_(rows, cols)] = solution.T
    return weights


def _obs(system: np.ndarray, rhs: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Dense solve, then SparseGPT's sequential OBS update that enforces ``keep`` (one step per column)."""
    try:
        # Upper Cholesky factor of the inverse Hessian: row j holds the update for column j onwards.
        upper = np.linalg.cholesky(np.linalg.inv(system)).T
    except np.linalg.LinAlgError:
        # Singular (only with ridge=0 and rank-deficient inputs): OBS needs the inverse.
        return _masked(system, rhs, keep)
    weights = _solve(system, rhs).T.copy()
    drop = ~keep
    for column in np.flatnonzero(drop.any(axis=0)):
        error = np.where(drop[:, column], weights[:, column], 0.0) / upper[column, column]
        weights[:, column:] -= np.outer(error, upper[column, column:])
    weights[drop] = 0.0
    return weights


def same_pads(
    size: Sequence[int], kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int], mode: str
) -> list[int]:
    """ONNX ``auto_pad`` SAME_UPPER/SAME_LOWER as explicit ``[begins..., ends...]``."""
    begins, ends = [], []
    for length, k, s, d in zip(size, kernel, strides, dilations, strict=True):
        total = max(0, (math.ceil(length / s) - 1) * s + (k - 1) * d + 1 - length)
        small, large = total // 2, total - total // 2
        begins.append(small if mode == "SAME_UPPER" else large)
        ends.append(large if mode == "SAME_UPPER" else small)
    return begins + ends


def conv_rows(
    x: np.ndarray,
    kernel: Sequence[int],
    strides: Sequence[int],
    pads: Sequence[int],
    dilations: Sequence[int],
    group: int,
) -> np.ndarray:
    """Returns the im2col rows of ``x [N, C, *S]``: ``[N·∏out, group, (C/group)·∏kernel]``.

    The columns are ordered as the Conv weight ``[O, C/group, *kernel]`` flattens (channel, then
    kernel positions).
    """
    spatial = x.ndim - 2
    widths = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]
    padded = np.pad(x, [(0, 0), (0, 0), *((pads[i], pads[i + spatial]) for i in range(spatial))])
    axes = tuple(range(2, 2 + spatial))
    windows = np.lib.stride_tricks.sliding_window_view(padded, widths, axis=axes)
    steps = (
        slice(None),
        slice(None),
        *(slice(None, None, s) for s in strides),
        *(slice(None, None, d) for d in dilations),
    )
    windows = windows[steps]  # [N, C, *out, *kernel]
    order = (0, *axes, 1, *range(2 + spatial, 2 + 2 * spatial))
    count = x.shape[0] * math.prod(windows.shape[2 : 2 + spatial])
    return windows.transpose(order).reshape(count, group, -1)


def conv_output_shape(
    x_shape: Sequence[int], kernel: Sequence[int], strides: Sequence[int], pads: Sequence[int], dilations: Sequence[int]
) -> tuple[int, ...]:
    """Spatial output sizes of a Conv (the ONNX floor rule)."""
    spatial = len(kernel)
    return tuple(
        (x_shape[2 + i] + pads[i] + pads[i + spatial] - (kernel[i] - 1) * dilations[i] - 1) // strides[i] + 1
        for i in range(spatial)
    )


def transposed_as_conv(
    x: np.ndarray,
    kernel: Sequence[int],
    strides: Sequence[int],
    pads: Sequence[int],
    dilations: Sequence[int],
    output_padding: Sequence[int],
) -> tuple[np.ndarray, list[int]]:
    """Rewrites a ConvTranspose input for a stride-1 Conv with the spatially flipped kernel.

    Returns:
        The input with ``stride - 1`` zeros between samples (cropped where the equivalent padding
        is negative), and the pads of that Conv.
    """
    spatial = x.ndim - 2
    upsampled = np.zeros((*x.shape[:2], *((n - 1) * s + 1 for n, s in zip(x.shape[2:], strides, strict=True))), x.dtype)
    every: tuple[slice, ...] = (slice(None), slice(None))
    upsampled[every + tuple(slice(None, None, s) for s in strides)] = x
    reach = [(k - 1) * d for k, d in zip(kernel, dilations, strict=True)]
    begins = [r - p for r, p in zip(reach, pads[:spatial], strict=True)]
    ends = [r - p + o for r, p, o in zip(reach, pads[spatial:], output_padding, strict=True)]
    crop = tuple(
        slice(max(0, -b), upsampled.shape[2 + i] - max(0, -e))
        for i, (b, e) in enumerate(zip(begins, ends, strict=True))
    )
    return upsampled[every + crop], [max(0, b) for b in begins] + [max(0, e) for e in ends]


def transposed_weight_matrix(weight: np.ndarray, group: int) -> np.ndarray:
    """Returns a ConvTranspose weight ``[C, O/g, *k]`` as the matrix of its equivalent Conv.

    The matrix is ``[g, O/g, (C/g)·∏k]`` (kernel flipped), in the column order of :func:`conv_rows`.
    """
    spatial = weight.ndim - 2
    flip = (slice(None), slice(None)) + (slice(None, None, -1),) * spatial
    flipped = weight[flip]
    per_group = flipped.reshape(group, weight.shape[0] // group, *weight.shape[1:])
    return np.swapaxes(per_group, 1, 2).reshape(group, weight.shape[1], -1)


def transposed_weight_from_matrix(matrix: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """The inverse of :func:`transposed_weight_matrix`: back to the ConvTranspose layout ``shape``."""
    group, spatial = matrix.shape[0], len(shape) - 2
    per_group = matrix.reshape(group, shape[1], shape[0] // group, *shape[2:])
    flipped = np.swapaxes(per_group, 1, 2).reshape(shape)
    flip = (slice(None), slice(None)) + (slice(None, None, -1),) * spatial
    return flipped[flip]
