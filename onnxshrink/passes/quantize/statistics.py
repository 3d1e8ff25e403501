"""Streamed activation statistics and the calibrators that turn them into quantization ranges.

Each tensor keeps a running min/max and one fixed-size histogram of its finite values over a
symmetric range ``[-A, A]``. When a batch holds a value past ``A``, the range doubles (as often
as needed) and pairs of old bins merge into one new bin exactly, so memory per tensor is fixed
(``bins`` counters) whatever the sample count. Non-finite values (``-inf`` masked attention
scores, NaN) never enter a range: they are counted and reported.

Calibrators (``minmax``, ``percentile``, ``entropy``, ``mse``) read a :class:`TensorStats` and
return a float range; :func:`qparams` turns a range into a scale and zero point that are always
finite and positive.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Literal

import numpy as np

from onnxshrink.errors import UsageError

# 4096 signed bins = 2048 bins of |x|, TensorRT's entropy-calibration resolution.
DEFAULT_BINS = 4096
DEFAULT_PERCENTILE = 99.99
# Values per batch and tensor that enter the histogram (min/max always see all of them).
HISTOGRAM_SAMPLE = 1 << 20
# A range narrower than this gives a scale that float32 cannot divide by safely; such a tensor
# is (near) constant and any positive scale represents it.
MIN_SCALE = 1e-12
QDtype = Literal["u8", "s8"]
QRANGE: dict[str, tuple[int, int]] = {"u8": (0, 255), "s8": (-128, 127)}


@dataclasses.dataclass
class TensorStats:
    """Running statistics of one tensor's finite values, in bounded memory.

    Attributes:
        bins: Number of histogram bins over ``[-half_range, half_range]`` (a multiple of 4).
        count: Finite values seen.
        nonfinite: Non-finite values seen (ignored for every range).
        minimum, maximum: Extremes of the finite values (``inf``/``-inf`` while none was seen).
        half_range: ``A``: the histogram covers ``[-A, A]``; 0 until a non-zero value is seen.
        histogram: ``bins`` counters.
        zeros: Values exactly 0 (Relu outputs hold many): any zero point represents them exactly,
            so the entropy calibrator leaves them out.
        extremes_only: Only ``count``, ``minimum`` and ``maximum`` are known (:meth:`from_extremes`):
            the histogram stays empty and only ``minmax`` reads such statistics.
    """

    bins: int = DEFAULT_BINS
    count: int = 0
    nonfinite: int = 0
    minimum: float = math.inf
    maximum: float = -math.inf
    half_range: float = 0.0
    histogram: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    zeros: int = 0
    extremes_only: bool = False

    @classmethod
    def from_extremes(cls, low: float, high: float, count: int, bins: int = DEFAULT_BINS) -> TensorStats:
        """Statistics of ``count`` finite values known only by their extremes (a smoothed tensor ``X / s``)."""
        return cls(bins=bins, count=count, minimum=low, maximum=high, extremes_only=True)

    def __post_init__(self) -> None:
        if self.bins < 8 or self.bins % 4:
            raise ValueError(f"histogram bins must be a multiple of 4 and >= 8, got {self.bins}")
        if self.histogram.size == 0:
            self.histogram = np.zeros(self.bins, dtype=np.int64)

    @property
    def nbytes(self) -> int:
        """Memory held by the statistics: constant for a given ``bins``."""
        return int(self.histogram.nbytes)

    def update(self, array: np.ndarray) -> None:
        """Adds one batch of values; non-finite ones are only counted.

        Min and max see every value. Past ``HISTOGRAM_SAMPLE`` values, the histogram (and the
        exact-zero count beside it) sees an evenly strided subset, so a batch of a large tensor
        costs a bounded time; the calibrators read shapes of the distribution, which the subset keeps.
        """
        values = np.asarray(array)
        if values.dtype.kind != "f":
            values = values.astype(np.float32)
        values = values.reshape(-1)
        if values.size == 0:
            return
        low, high = float(values.min()), float(values.max())
        finite_count = values.size
        if not (math.isfinite(low) and math.isfinite(high)):  # NaN propagates into min/max too
            finite = np.isfinite(values)
            finite_count = int(np.count_nonzero(finite))
            self.nonfinite += values.size - finite_count
            if finite_count == 0:
                return
            values = values[finite]
            low, high = float(values.min()), float(values.max())
        self.minimum = min(self.minimum, low)
        self.maximum = max(self.maximum, high)
        self.count += finite_count
        self._grow(max(abs(low), abs(high)))
        if values.size > HISTOGRAM_SAMPLE:
            values = values[:: values.size // HISTOGRAM_SAMPLE]
        self.zeros += int(np.count_nonzero(values == 0))
        if self.half_range == 0.0:  # all zeros so far: they sit in the middle bin
            self.histogram[self.bins // 2] += values.size
            return
        # Shifted to [0, bins): truncation is floor, and float32 keeps a large batch cheap.
        scaled = values.astype(np.float32) * np.float32(self.bins / (2.0 * self.half_range))
        scaled += np.float32(self.bins // 2)
        index = scaled.astype(np.int32)
        np.clip(index, 0, self.bins - 1, out=index)
        self.histogram += np.bincount(index, minlength=self.bins)

    def _grow(self, needed: float) -> None:
        """Doubles the range until it covers ``needed``, merging old bin pairs exactly."""
        if needed <= self.half_range:
            return
        if self.half_range == 0.0:
            # Zeros seen before any non-zero value were put in the middle bin; it stays the bin of 0.
            self.half_range = needed
            return
        doublings = max(0, math.ceil(math.log2(needed / self.half_range)))
        while self.half_range * 2.0**doublings < needed:  # float rounding of log2
            doublings += 1
        for _ in range(doublings):
            merged = self.histogram.reshape(-1, 2).sum(axis=1)  # bins/2 counters for the old range
            grown = np.zeros_like(self.histogram)
            quarter = self.bins // 4
            grown[quarter : quarter + merged.size] = merged
            self.histogram = grown
            self.half_range *= 2.0

    @property
    def finite(self) -> bool:
        """Whether any finite value was seen (a range exists)."""
        return self.count > 0

    def bin_centers(self) -> np.ndarray:
        """Returns the center of every histogram bin over ``[-A, A]``."""
        width = 2.0 * self.half_range / self.bins
        return -self.half_range + width * (np.arange(self.bins) + 0.5)

    def abs_histogram(self) -> tuple[np.ndarray, float]:
        """The histogram of ``|x|``: ``bins/2`` counters over ``[0, A]``, and the bin width."""
        half = self.bins // 2
        folded = self.histogram[half:] + self.histogram[:half][::-1]
        return folded, self.half_range / half


def _quantile(stats: TensorStats, fraction: float) -> float:
    """The value below which ``fraction`` of the finite values lie (bin upper edge)."""
    cumulative = np.cumsum(stats.histogram)
    index = int(np.searchsorted(cumulative, fraction * cumulative[-1], side="left"))
    width = 2.0 * stats.half_range / stats.bins
    return -stats.half_range + width * (min(index, stats.bins - 1) + 1)


def _abs_quantile(stats: TensorStats, fraction: float) -> float:
    folded, width = stats.abs_histogram()
    cumulative = np.cumsum(folded)
    index = int(np.searchsorted(cumulative, fraction * cumulative[-1], side="left"))
    return width * (min(index, folded.size - 1) + 1)


def _clip_range(stats: TensorStats, threshold: float) -> tuple[float, float]:
    """The observed range clipped to ``[-threshold, threshold]``."""
    return max(stats.minimum, -threshold), min(stats.maximum, threshold)


def _levels(stats: TensorStats, symmetric: bool) -> int:
    """Quantization steps on the ``|x|`` side: 127 for signed or symmetric data, 255 for one-sided."""
    return 255 if not symmetric and stats.minimum >= 0 else 127


def minmax_range(stats: TensorStats, symmetric: bool, percentile: float = DEFAULT_PERCENTILE) -> tuple[float, float]:
    """The observed finite extremes."""
    return stats.minimum, stats.maximum


def percentile_range(
    stats: TensorStats, symmetric: bool, percentile: float = DEFAULT_PERCENTILE
) -> tuple[float, float]:
    """``|x|``'s percentile (symmetric) or the two-sided percentiles of ``x``."""
    if stats.half_range == 0.0:
        return stats.minimum, stats.maximum
    fraction = percentile / 100.0
    if symmetric:
        return _clip_range(stats, _abs_quantile(stats, fraction))
    low = _quantile(stats, 1.0 - fraction) - 2.0 * stats.half_range / stats.bins
    high = _quantile(stats, fraction)
    return max(stats.minimum, low), min(stats.maximum, high)


def _kl_divergence(reference: np.ndarray, candidate: np.ndarray) -> float:
    mask = reference > 0
    if candidate.sum() <= 0:
        return math.inf
    p = reference[mask] / reference.sum()
    q = candidate[mask] / candidate.sum()
    return float(np.sum(p * np.log(p / np.maximum(q, 1e-12))))


def entropy_range(stats: TensorStats, symmetric: bool, percentile: float = DEFAULT_PERCENTILE) -> tuple[float, float]:
    """Returns the range from TensorRT's KL calibration on the ``|x|`` histogram.

    The threshold is the one whose quantized distribution (``levels`` steps) diverges least from
    the clipped original.
    """
    folded, width = stats.abs_histogram()
    folded = folded.copy()
    folded[0] -= min(stats.zeros, int(folded[0]))  # exact zeros: represented exactly at any threshold
    levels = _levels(stats, symmetric) + 1
    if stats.half_range == 0.0 or folded.size <= levels:
        return stats.minimum, stats.maximum
    used = int(np.flatnonzero(folded)[-1]) + 1  # bins past the largest value change nothing
    start = min(levels, used)
    stride = max(1, (used - start) // 256)
    best, best_bins = math.inf, used
    for edge in sorted({*range(start, used + 1, stride), used}):
        reference = folded[:edge].astype(np.float64)
        reference[-1] += folded[edge:].sum()
        # Merge the `edge` bins into `levels` chunks, then spread each chunk evenly over its non-zero bins.
        starts = (np.arange(levels) * edge) // levels
        chunk_sums = np.add.reduceat(folded[:edge].astype(np.float64), starts)
        nonzero = (folded[:edge] > 0).astype(np.float64)
        chunk_nonzero = np.add.reduceat(nonzero, starts)
        per_bin = np.divide(chunk_sums, chunk_nonzero, out=np.zeros_like(chunk_sums), where=chunk_nonzero > 0)
        lengths = np.diff(np.append(starts, edge))
        candidate = np.repeat(per_bin, lengths) * nonzero
        divergence = _kl_divergence(reference, candidate)
        if divergence < best:
            best, best_bins = divergence, edge
    return _clip_range(stats, best_bins * width)


def mse_range(stats: TensorStats, symmetric: bool, percentile: float = DEFAULT_PERCENTILE) -> tuple[float, float]:
    """Returns the range whose ``|x|`` threshold minimizes the expected squared error.

    The error is the clipping error past the threshold plus the uniform rounding error
    ``step**2 / 12`` inside it, all computed from the histogram.
    """
    folded, width = stats.abs_histogram()
    if stats.half_range == 0.0:
        return stats.minimum, stats.maximum
    used = int(np.flatnonzero(folded)[-1]) + 1
    centers = width * (np.arange(used) + 0.5)
    counts = folded[:used].astype(np.float64)
    candidates = width * np.unique(np.linspace(1, used, num=min(used, 512)).round().astype(np.int64))
    steps = candidates / _levels(stats, symmetric)
    over = np.maximum(centers[None, :] - candidates[:, None], 0.0)
    clipping = (over**2 * counts[None, :]).sum(axis=1)
    inside = (counts[None, :] * (centers[None, :] <= candidates[:, None])).sum(axis=1)
    errors = clipping + inside * steps**2 / 12.0
    return _clip_range(stats, float(candidates[int(np.argmin(errors))]))


Calibrator = Callable[[TensorStats, bool, float], tuple[float, float]]
CALIBRATORS: dict[str, Calibrator] = {
    "minmax": minmax_range,
    "percentile": percentile_range,
    "entropy": entropy_range,
    "mse": mse_range,
}


def calibrated_range(
    stats: TensorStats, method: str, *, symmetric: bool, percentile: float = DEFAULT_PERCENTILE
) -> tuple[float, float]:
    """The float range the calibrator ``method`` picks for one tensor.

    Raises:
        UsageError: Unknown calibrator.
        ValueError: The tensor had no finite value.
    """
    if method not in CALIBRATORS:
        raise UsageError(f"unknown calibrator {method!r}; valid: {', '.join(CALIBRATORS)}")
    if not stats.finite:
        raise ValueError("no finite value was seen")
    if stats.extremes_only and method != "minmax":
        raise ValueError(f"calibrator {method!r} reads a histogram; these statistics hold extremes only")
    return CALIBRATORS[method](stats, symmetric, percentile)


@dataclasses.dataclass(frozen=True)
class QParams:
    """Scale and zero point of one activation tensor; ``scale`` is finite and > 0."""

    scale: float
    zero_point: int
    dtype: QDtype

    def to_json(self) -> dict[str, float | int | str]:
        """Returns the parameters as plain JSON data (``scale``, ``zero_point``, ``dtype``)."""
        return {"scale": self.scale, "zero_point": self.zero_point, "dtype": self.dtype}

    @property
    def clips_below_zero(self) -> bool:
        """Whether the represented range starts at 0 exactly (a Relu before it changes nothing)."""
        return self.zero_point == QRANGE[self.dtype][0]


def qparams(low: float, high: float, dtype: QDtype, *, symmetric: bool) -> QParams:
    """Scale and zero point representing ``[low, high]`` (widened to include 0).

    Symmetric ranges give zero point 0 (s8) and scale ``max|x| / 127``. The scale is never zero
    or non-finite: a degenerate range gets scale 1.
    """
    qmin, qmax = QRANGE[dtype]
    low, high = min(float(low), 0.0), max(float(high), 0.0)
    if symmetric:
        if dtype != "s8":
            raise UsageError("symmetric activations need s8")
        scale = max(abs(low), abs(high)) / 127.0
        zero_point = 0
    else:
        scale = (high - low) / (qmax - qmin)
        zero_point = 0
    if not math.isfinite(scale) or scale < MIN_SCALE:
        scale = 1.0
    scale = float(np.float32(scale))
    if not symmetric:
        zero_point = int(np.clip(round(qmin - low / scale), qmin, qmax))
    return QParams(scale, zero_point, dtype)


def _rounding_integral(u: np.ndarray) -> np.ndarray:
    """``∫ (t - round(t))² dt`` from ``-1/2`` to ``u``: the squared rounding error on a unit grid, accumulated."""
    nearest = np.floor(u + 0.5)
    offset = u - nearest
    return nearest / 12.0 + (offset**3 + 0.125) / 3.0


def _require_histogram(stats: TensorStats) -> None:
    if stats.extremes_only:
        raise ValueError("these statistics hold extremes only, no histogram")


def _bin_edges(stats: TensorStats) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each histogram bin's start and end, and its count less the exact zeros (in the bin starting at 0)."""
    width = 2.0 * stats.half_range / stats.bins
    edges = -stats.half_range + width * np.arange(stats.bins + 1)
    counts = stats.histogram.astype(np.float64)
    middle = stats.bins // 2
    counts[middle] -= min(float(stats.zeros), counts[middle])
    return edges[:-1], edges[1:], counts


def mean_square(stats: TensorStats) -> float:
    """``E[x²]`` of the tensor's finite values, read from the histogram (values spread evenly within each bin)."""
    _require_histogram(stats)
    if stats.count == 0 or stats.half_range == 0.0:
        return 0.0
    start, end, counts = _bin_edges(stats)
    return float(counts @ ((start**2 + start * end + end**2) / 3.0) / stats.histogram.sum())


def quantization_noise(stats: TensorStats, params: QParams) -> float:
    """The mean squared error of quantizing the tensor's finite values with ``params``.

    Read from the histogram, values spread evenly within each bin: inside the represented range
    ``[(qmin - zp) * scale, (qmax - zp) * scale]`` the error is the distance to the nearest
    multiple of ``scale`` (integrated exactly over each bin), past it the distance to the range's
    end. Exact zeros are represented exactly. 0 when no non-zero value was seen.
    """
    _require_histogram(stats)
    if stats.count == 0 or stats.half_range == 0.0:
        return 0.0
    qmin, qmax = QRANGE[params.dtype]
    scale = params.scale
    low, high = (qmin - params.zero_point) * scale, (qmax - params.zero_point) * scale
    start, end, counts = _bin_edges(stats)
    inner_start, inner_end = np.clip(start, low, high), np.clip(end, low, high)
    rounding = scale**3 * (_rounding_integral(inner_end / scale) - _rounding_integral(inner_start / scale))
    above = (np.maximum(end, high) - high) ** 3 - (np.maximum(start, high) - high) ** 3
    below = (low - np.minimum(start, low)) ** 3 - (low - np.minimum(end, low)) ** 3
    error = (rounding + (above + below) / 3.0) / (end - start)
    return float(counts @ error / stats.histogram.sum())


def weight_scales(weight: np.ndarray, axis: int | None, *, bits: int = 8) -> np.ndarray:
    """Returns symmetric narrow-range scales ``max|w| / (2**(bits-1) - 1)`` per slice along ``axis``.

    ``axis`` None gives one scale for the tensor; zero or non-finite maxima get scale 1.
    """
    magnitude = np.abs(weight.astype(np.float64))
    if axis is None:
        amax = np.asarray(magnitude.max() if magnitude.size else 0.0)
    else:
        amax = np.moveaxis(magnitude, axis, 0).reshape(weight.shape[axis], -1).max(axis=1)
    scales = amax / (2 ** (bits - 1) - 1)
    bad = ~np.isfinite(scales) | (scales < MIN_SCALE)
    return np.where(bad, 1.0, scales).astype(np.float32)


class StatsCollector:
    """Statistics of many tensors, fed one batch at a time.

    Args:
        names: The tensors to follow.
        bins: Histogram bins per tensor.
    """

    def __init__(self, names: list[str], bins: int = DEFAULT_BINS) -> None:
        self.stats: dict[str, TensorStats] = {name: TensorStats(bins=bins) for name in names}
        self.samples = 0

    def update(self, arrays: Mapping[str, np.ndarray], samples: int) -> None:
        """Adds one batch; ``arrays`` may hold more names than were asked for."""
        for name, stats in self.stats.items():
            if name in arrays:
                stats.update(arrays[name])
        self.samples += samples

    @property
    def nbytes(self) -> int:
        """Memory held by the histograms, in bytes."""
        return sum(stats.nbytes for stats in self.stats.values())

    def nonfinite(self) -> dict[str, int]:
        """Tensors that held non-finite values, with how many."""
        return {name: stats.nonfinite for name, stats in self.stats.items() if stats.nonfinite}


class ChannelStats:
    """Per-channel extremes of one activation along its last axis, and a bounded sample of its rows.

    SmoothQuant-style scale migration (``smooth``) reads ``max|X_j|`` per input channel ``j`` of a
    MatMul/Gemm, and picks its migration strength by the layer's output error on ``rows``.
    Memory is fixed: ``channels`` extremes and at most ``max_rows`` rows.

    Args:
        max_rows: Rows kept for error estimates; each batch contributes an even stride of its rows.
        rows_per_batch: Rows taken from one batch (the rest of ``max_rows`` waits for later batches).
    """

    def __init__(self, max_rows: int = 512, rows_per_batch: int = 64) -> None:
        self.max_rows = max_rows
        self.rows_per_batch = rows_per_batch
        self.clear()

    def clear(self) -> None:
        """Forgets every batch (a capture that starts over fills the statistics again)."""
        self.minimum: np.ndarray | None = None
        self.maximum: np.ndarray | None = None
        self.rows: list[np.ndarray] = []
        self.kept = 0
        self.seen = 0  # finite rows seen in all
        self.dropped = 0  # rows left out for a non-finite value

    def update(self, array: np.ndarray) -> None:
        """Adds one batch; rows with a non-finite value are left out of the extremes and the sample."""
        values = np.asarray(array, dtype=np.float32)
        if values.ndim == 0 or values.size == 0:
            return
        rows = values.reshape(-1, values.shape[-1])
        finite = rows[np.isfinite(rows).all(axis=1)]
        self.dropped += rows.shape[0] - finite.shape[0]
        rows = finite
        if rows.shape[0] == 0:
            return
        self.seen += rows.shape[0]
        low, high = rows.min(axis=0), rows.max(axis=0)
        self.minimum = low if self.minimum is None else np.minimum(self.minimum, low)
        self.maximum = high if self.maximum is None else np.maximum(self.maximum, high)
        take = min(self.rows_per_batch, self.max_rows - self.kept, rows.shape[0])
        if take > 0:
            stride = rows.shape[0] // take
            self.rows.append(rows[::stride][:take].copy())
            self.kept += take

    @property
    def abs_max(self) -> np.ndarray:
        """``max|X_j|`` per channel (empty before any finite row)."""
        if self.minimum is None or self.maximum is None:
            return np.zeros(0, np.float32)
        return np.maximum(np.abs(self.minimum), np.abs(self.maximum))

    def sample(self) -> np.ndarray:
        """The kept rows, ``[rows, channels]``."""
        return np.concatenate(self.rows) if self.rows else np.zeros((0, self.abs_max.size), np.float32)

    @property
    def outlier_ratio(self) -> float:
        """The largest channel maximum over the median one: how far the outlier channels stand out."""
        amax = self.abs_max
        if amax.size == 0:
            return 1.0
        median = float(np.median(amax))
        return float(amax.max() / median) if median > 0 else math.inf
