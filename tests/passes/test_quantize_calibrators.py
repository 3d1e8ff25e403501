"""``quantize:calibrate=auto``: a calibrator per tensor, chosen by the output error of the layers reading it."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import parse_model, run, run_pass

from onnxshrink.errors import UsageError
from onnxshrink.passes.quantize import calibrators
from onnxshrink.passes.quantize.statistics import TensorStats

OUTLIER_CHANNEL = 3
# Fixed options: 8-bit weights on any CPU, the layer int8 however slow; no smoothing, which would
# move the outlier channel first.
OPTIONS = "cpu=vnni,keep-slow-float=false,smooth=off,bias-correction=off"


def _matmul_model(outlier_row: float) -> onnx.ModelProto:
    """``y = x W``; ``W``'s row of the outlier channel is ``outlier_row`` (0: the layer ignores it)."""
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((64, 32)) / 8).astype(np.float32)
    weight[OUTLIER_CHANNEL] = outlier_row
    return parse_model(
        """g (float[N, 8, 64] x) => (float[N, 8, 32] y) {
            y = MatMul (x, W)
        }""",
        initializers={"W": weight},
    )


def _outlier_tokens(seed: int) -> dict[str, np.ndarray]:
    """N(0, 1) tokens whose outlier channel holds 100 in 8 of 4096 tokens (under 0.1 % of the values).

    The outlier samples fall in both halves of their batches of 8: in the rows kept to judge
    ranges and in the rows the ranges are fitted on.
    """
    x = np.random.default_rng(seed).standard_normal((512, 8, 64)).astype(np.float32)
    x[[1, 6, 100, 205, 300, 333, 410, 501], 3, OUTLIER_CHANNEL] = 100.0
    return {"x": x}


def _output_error(reference: onnx.ModelProto, candidate: onnx.ModelProto, feed: dict[str, np.ndarray]) -> float:
    (expected,), (actual,) = run(reference, feed), run(candidate, feed)
    return float(np.sum((actual - expected) ** 2) / np.sum(expected**2))


def test_an_outlier_the_layer_ignores_is_clipped_and_the_layer_error_drops() -> None:
    model, calib = _matmul_model(0.0), _outlier_tokens(1)
    minmax = run_pass(model, f"quantize:{OPTIONS},samples=512", calibration=calib)
    auto = run_pass(model, f"quantize:{OPTIONS},samples=512,calibrate=auto", calibration=calib)
    choice = auto.stats["calibrator_choice"]["x"]
    assert choice["calibrator"] != "minmax" and choice["readers"] == ["MatMul#0"]
    assert choice["relative_error"][choice["calibrator"]] < choice["relative_error"]["minmax"] / 10
    assert choice["range"][1] < 10.0  # the 100s are clipped
    assert choice["sampled"] > 0 and choice["reason"] == "lowest output error of its readers"
    # The real quantized models, on the calibration data and on new tokens alike.
    for feed in (calib, _outlier_tokens(2)):
        assert _output_error(model, auto.model, feed) < _output_error(model, minmax.model, feed) / 10
    assert minmax.stats["calibrator_choice"] is None and auto.stats["calibrator"] == "auto"


def test_an_outlier_the_layer_reads_keeps_minmax() -> None:
    model, calib = _matmul_model(1.0), _outlier_tokens(1)
    auto = run_pass(model, f"quantize:{OPTIONS},samples=512,calibrate=auto", calibration=calib)
    choice = auto.stats["calibrator_choice"]["x"]
    assert choice["calibrator"] == "minmax"
    errors = choice["relative_error"]
    # Clipping the 100s costs far more than it saves (entropy and mse clip them): no gain of MIN_GAIN.
    assert all(errors[name] > (1.0 - calibrators.MIN_GAIN) * errors["minmax"] for name in errors)
    assert errors["entropy"] > 2 * errors["minmax"] and errors["mse"] > 2 * errors["minmax"]
    minmax = run_pass(model, f"quantize:{OPTIONS},samples=512", calibration=calib)
    assert auto.model.SerializeToString() == minmax.model.SerializeToString()


CONV_CHAIN = """g (float[N, 4, 12, 12] x) => (float[N, 8, 12, 12] y) {
    a = Conv <pads = [1, 1, 1, 1]> (x, W1, B1)
    r = Relu (a)
    p = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (r)
    c = Conv <pads = [1, 1, 1, 1], strides = [1, 1]> (p, W2, B2)
    u = Relu (c)
    y = Resize <mode = "nearest"> (u, , scales)
}"""


def _conv_model() -> onnx.ModelProto:
    rng = np.random.default_rng(3)
    return parse_model(
        CONV_CHAIN,
        initializers={
            "W1": (rng.standard_normal((16, 4, 3, 3)) / 6).astype(np.float32),
            "B1": (rng.standard_normal(16) / 10).astype(np.float32),
            "W2": (rng.standard_normal((8, 16, 3, 3)) / 12).astype(np.float32),
            "B2": (rng.standard_normal(8) / 10).astype(np.float32),
            "scales": np.array([1, 1, 2, 2], np.float32),
        },
    )


def test_conv_readers_through_data_movement_and_the_same_bytes_twice() -> None:
    model = _conv_model()
    x = np.random.default_rng(4).laplace(size=(64, 4, 12, 12)).astype(np.float32)
    spec = "quantize:cpu=vnni,keep-slow-float=false,calibrate=auto,samples=64"
    first, second = run_pass(model, spec, calibration={"x": x}), run_pass(model, spec, calibration={"x": x})
    assert first.model.SerializeToString() == second.model.SerializeToString()
    record = first.stats["calibrator_choice"]
    assert record == second.stats["calibrator_choice"]
    assert record["x"]["readers"] == ["Conv#0"]
    assert record["r"]["readers"] == ["Conv#3"]  # the second Conv reads it through MaxPool
    for tensor in ("x", "r"):
        errors = record[tensor]["relative_error"]
        assert "minmax" in errors and len(errors) >= 3 and record[tensor]["sampled"] == 32  # half of each batch
        assert errors[record[tensor]["calibrator"]] == min(errors.values()) or record[tensor]["calibrator"] == "minmax"
    # The last Conv's output Q feeds no layer with a weight: minmax, with why.
    assert record["u"]["calibrator"] == "minmax" and record["u"]["relative_error"] == {}
    assert record["u"]["reason"].startswith("no quantized Conv/Gemm/MatMul")


def test_the_sample_stays_within_its_share() -> None:
    sample = calibrators.InputSample(["a", "b"], samples=64, batch_size=8)
    sample.budget = 4 * 100 * 10  # ten rows of 100 float32 values per tensor
    for _ in range(8):
        sample.update({"a": np.ones((8, 100), np.float32), "b": np.full((8, 2, 50), np.inf, np.float32)})
    a, b = sample.rows("a"), sample.rows("b")
    assert a is not None and b is not None and a.shape == (10, 100) and b.shape == (10, 2, 50)
    assert not b.any()  # non-finite values read as 0
    # The other rows are the statistics candidate ranges are fitted on.
    assert sample.rest["a"].count == (64 - 10) * 100 and sample.rest["b"].nonfinite == (64 - 10) * 100
    assert sample.nbytes == 2 * 4000 and sample.rows("c") is None


def test_a_reader_is_judged_on_rows_whose_output_fits_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(calibrators, "OUTPUT_BYTES", 4 * 8 * 32 * 4)  # four samples of y [8, 32] float32
    auto = run_pass(_matmul_model(0.0), f"quantize:{OPTIONS},samples=64,calibrate=auto", calibration=_outlier_tokens(1))
    assert auto.stats["calibrator_choice"]["x"]["sampled"] == 4


def test_candidates_are_distinct_ranges_with_minmax_first() -> None:
    stats = TensorStats()
    stats.update(np.random.default_rng(0).standard_normal(100_000).astype(np.float32))
    found = calibrators.candidate_ranges(stats, symmetric=False)
    assert next(iter(found)) == "minmax" and found["minmax"] == (stats.minimum, stats.maximum)
    assert len(set(found.values())) == len(found)
    assert found["percentile-99.9"][1] < found["percentile-99.99"][1] < stats.maximum


@pytest.mark.parametrize(
    ("spec", "message"),
    [("quantize:calibrate=best", "auto"), ("quantize:calibrate=AUTO", "valid")],
)
def test_calibrate_accepts_auto_and_names_it_among_the_valid_values(spec: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        run_pass(_matmul_model(0.0), spec, calibration=_outlier_tokens(1))
