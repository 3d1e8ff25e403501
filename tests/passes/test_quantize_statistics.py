"""Streamed calibration statistics: bounded memory, exact re-binning, calibrators on known data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from onnxshrink.errors import UsageError
from onnxshrink.passes.quantize.statistics import (
    CALIBRATORS,
    StatsCollector,
    TensorStats,
    calibrated_range,
    qparams,
    weight_scales,
)


def _stats(values: np.ndarray, batches: int = 1, bins: int = 4096) -> TensorStats:
    stats = TensorStats(bins=bins)
    for chunk in np.array_split(values, batches):
        stats.update(chunk)
    return stats


def test_running_min_max_and_counts() -> None:
    values = np.random.default_rng(0).normal(size=10_000).astype(np.float32)
    stats = _stats(values, batches=7)
    assert stats.minimum == values.min() and stats.maximum == values.max()
    assert stats.count == values.size and stats.histogram.sum() == values.size


def test_rebinning_when_the_range_grows_matches_one_pass() -> None:
    """Growing batches (each past the last range) give the histogram one batch of everything would."""
    rng = np.random.default_rng(1)
    batches = [rng.uniform(-scale, scale, size=3000) for scale in (0.5, 1.0, 3.0, 20.0)]
    streamed = TensorStats(bins=64)
    for batch in batches:
        streamed.update(batch)
    assert streamed.half_range >= 20.0 * 0.99
    # Same final range, filled at once: bins agree except where an old bin straddled a new edge (none: exact merge).
    once = TensorStats(bins=64)
    once.half_range = streamed.half_range
    once.update(np.concatenate(batches))
    np.testing.assert_array_equal(streamed.histogram, once.histogram)


def test_memory_is_independent_of_the_sample_count() -> None:
    rng = np.random.default_rng(2)
    small, large = StatsCollector(["x"]), StatsCollector(["x"])
    small.update({"x": rng.normal(size=(4, 100))}, 4)
    for _ in range(50):
        large.update({"x": rng.normal(size=(64, 100)) * 3}, 64)
    assert small.nbytes == large.nbytes == 4096 * 8
    assert large.samples == 3200


def test_nonfinite_values_are_counted_and_ignored() -> None:
    values = np.array([-np.inf, -1.0, 0.5, np.nan, 2.0, -np.inf], dtype=np.float32)
    stats = _stats(values)
    assert stats.nonfinite == 3 and stats.count == 3
    assert (stats.minimum, stats.maximum) == (-1.0, 2.0)
    for method in CALIBRATORS:
        low, high = calibrated_range(stats, method, symmetric=False)
        params = qparams(low, high, "u8", symmetric=False)
        assert math.isfinite(params.scale) and params.scale > 0, method


def test_a_tensor_of_only_nonfinite_values_has_no_range() -> None:
    stats = _stats(np.full(10, -np.inf, dtype=np.float32))
    assert not stats.finite and stats.nonfinite == 10
    with pytest.raises(ValueError, match="no finite"):
        calibrated_range(stats, "minmax", symmetric=True)


@pytest.mark.parametrize("method", sorted(CALIBRATORS))
def test_constant_and_zero_tensors_never_get_a_zero_scale(method: str) -> None:
    for value in (0.0, 3.0, -2.0):
        stats = _stats(np.full(100, value, dtype=np.float32))
        low, high = calibrated_range(stats, method, symmetric=False)
        for dtype, symmetric in (("u8", False), ("s8", False), ("s8", True)):
            params = qparams(low, high, dtype, symmetric=symmetric)  # type: ignore[arg-type]
            assert math.isfinite(params.scale) and params.scale > 0


def test_percentile_clips_outliers_minmax_keeps_them() -> None:
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.uniform(-1, 1, size=100_000), [50.0]])
    stats = _stats(values, batches=5)
    assert calibrated_range(stats, "minmax", symmetric=True)[1] == 50.0
    low, high = calibrated_range(stats, "percentile", symmetric=True)
    assert 0.99 <= high <= 1.1 and -1.1 <= low <= -0.99


def test_entropy_and_mse_clip_a_heavy_tail() -> None:
    """On Laplace(0, 1) with 1e6 samples max |x| is ~14; KL and MSE thresholds sit well inside it
    (the 8-bit MSE optimum for a unit Laplace is near 9-10) and above the bulk of the data."""
    values = np.random.default_rng(4).laplace(size=1_000_000).astype(np.float32)
    stats = _stats(values, batches=10)
    amax = float(np.abs(values).max())
    for method in ("entropy", "mse"):
        high = calibrated_range(stats, method, symmetric=True)[1]
        assert 6.0 < high < amax * 0.8, (method, high, amax)


def test_non_negative_data_keeps_zero_as_the_lower_bound() -> None:
    """A Relu output: every calibrator keeps low = 0, so the u8 zero point is 0 and clips like the Relu."""
    values = np.maximum(np.random.default_rng(5).normal(size=50_000), 0).astype(np.float32)
    stats = _stats(values, batches=3)
    for method in CALIBRATORS:
        low, high = calibrated_range(stats, method, symmetric=False)
        params = qparams(low, high, "u8", symmetric=False)
        assert low == 0.0 and params.zero_point == 0 and params.clips_below_zero, method


def test_qparams_asymmetric_and_symmetric() -> None:
    params = qparams(-1.0, 3.0, "u8", symmetric=False)
    assert params.scale == pytest.approx(4.0 / 255) and params.zero_point == 64
    params = qparams(-1.0, 3.0, "s8", symmetric=True)
    assert params.scale == pytest.approx(3.0 / 127) and params.zero_point == 0
    with pytest.raises(UsageError):
        qparams(-1.0, 1.0, "u8", symmetric=True)


def test_weight_scales_per_channel_and_zero_channels() -> None:
    weight = np.array([[1.0, -2.0], [0.0, 0.0], [0.5, 0.25]], dtype=np.float32)
    scales = weight_scales(weight, axis=0)
    np.testing.assert_allclose(scales, [2.0 / 127, 1.0, 0.5 / 127], rtol=1e-6)
    assert weight_scales(weight, axis=None).shape == ()


def test_unknown_calibrator_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="valid: minmax"):
        calibrated_range(_stats(np.ones(3)), "kl", symmetric=True)
