"""``quantize`` weight-only 4-bit ``rounding``: GPTQ error feedback against nearest rounding."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnx.numpy_helper
import onnx.parser
import pytest
from helpers import parse_model, run, run_pass

from onnxshrink.errors import PassFailure, UsageError
from onnxshrink.passes.quantize import gptq

# Two layers reading one tensor (rounded together), and a Gemm with transB reading their sum.
BODY = """g (float[N, 64] x) => (float[N, 48] y) {
    a = MatMul(x, Wa)
    b = MatMul(x, Wb)
    s = Add(a, b)
    y = Gemm <transB = 1> (s, Wc)
}"""


def _model(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    weights = {
        "Wa": rng.standard_normal((64, 32)) / 8.0,
        "Wb": rng.standard_normal((64, 32)) / 8.0,
        "Wc": rng.standard_normal((48, 32)) / 6.0,
    }
    return parse_model(BODY, initializers={k: v.astype(np.float32) for k, v in weights.items()}, opset=21)


def _correlated(samples: int, seed: int) -> dict[str, np.ndarray]:
    """Inputs whose 64 channels mix 8 latent factors with uneven scales (a low-rank, correlated X)."""
    rng = np.random.default_rng(seed)
    mixing = np.random.default_rng(99).standard_normal((8, 64)) * np.linspace(0.2, 3.0, 64)
    latent = rng.standard_normal((samples, 8))
    noise = 0.05 * rng.standard_normal((samples, 64))
    return {"x": (latent @ mixing + noise).astype(np.float32)}


def _error(model: onnx.ModelProto, quantized: onnx.ModelProto, feed: dict[str, np.ndarray]) -> float:
    reference, candidate = run(model, feed)[0], run(quantized, feed)[0]
    return float(np.square(candidate - reference).sum() / np.square(reference).sum())


@pytest.mark.parametrize("bits", ["s4", "u4"])
def test_gptq_lowers_the_output_error_of_nearest_rounding_on_correlated_inputs(bits: str) -> None:
    model = _model()
    calibration, held_out = _correlated(128, seed=1), _correlated(256, seed=2)
    spec = f"quantize:mode=weight-only,weights={bits},block-size=16"
    nearest = run_pass(model, f"{spec},rounding=nearest", calibration=calibration)
    rounded = run_pass(model, f"{spec},rounding=gptq", calibration=calibration)
    assert nearest.stats["rounding"] == {"method": "nearest", "reason": "rounding=nearest"}
    record = rounded.stats["rounding"]
    assert record["method"] == "gptq" and set(record["layers"]) == {"MatMul#0", "MatMul#1", "Gemm#3"}
    assert record["layers"]["MatMul#0"]["tensor"] == record["layers"]["MatMul#1"]["tensor"] == "x"
    for layer in record["layers"].values():
        assert layer["rows"] == 128  # samples=128 by default
        assert layer["relative_error"]["gptq"] < 0.7 * layer["relative_error"]["nearest"], layer
    near, better = _error(model, nearest.model, held_out), _error(model, rounded.model, held_out)
    assert better < 0.7 * near, (better, near)
    assert rounded.stats["nodes"]["Gemm#3"] == f"{bits} blocks of 16 along K, GPTQ rounding"
    # Same storage: 4-bit values, one scale per block, the same initializer sizes as nearest rounding.
    sizes = {t.name: onnx.helper.tensor_dtype_to_np_dtype(t.data_type) for t in rounded.model.graph.initializer}
    assert sizes == {t.name: onnx.helper.tensor_dtype_to_np_dtype(t.data_type) for t in nearest.model.graph.initializer}


def test_auto_rounds_by_gptq_with_calibration_and_to_nearest_without() -> None:
    model = _model()
    calibration = _correlated(64, seed=1)
    with_data = run_pass(model, "quantize:mode=weight-only,weights=s4,block-size=16", calibration=calibration)
    without = run_pass(model, "quantize:mode=weight-only,weights=s4,block-size=16")
    nearest = run_pass(model, "quantize:mode=weight-only,weights=s4,block-size=16,rounding=nearest")
    assert with_data.stats["rounding"]["method"] == "gptq"
    assert without.stats["rounding"] == {"method": "nearest", "reason": "no calibration data (rounding=auto)"}
    assert without.model.SerializeToString() == nearest.model.SerializeToString()
    assert run_pass(model, "quantize:mode=weight-only", calibration=calibration).stats["rounding"] is None


def test_gptq_output_runs_in_onnxruntime_and_is_byte_identical_across_runs() -> None:
    model = _model()
    calibration = _correlated(64, seed=1)
    spec = "quantize:mode=weight-only,weights=s4,block-size=32,rounding=gptq"
    first, second = run_pass(model, spec, calibration=calibration), run_pass(model, spec, calibration=calibration)
    assert first.model.SerializeToString() == second.model.SerializeToString()
    outputs = run(first.model, _correlated(8, seed=3))
    assert outputs[0].shape == (8, 48) and np.isfinite(outputs[0]).all()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("quantize:rounding=gptq", "rounding=gptq needs mode=weight-only with weights=s4 or u4"),
        ("quantize:mode=weight-only,rounding=gptq", "rounding=gptq needs mode=weight-only"),
        ("quantize:mode=weight-only,weights=s4,rounding=best", "rounding"),
        ("quantize:mode=weight-only,weights=s4,rounding=gptq", "needs calibration data"),
    ],
)
def test_bad_rounding_options_are_one_line_usage_errors(spec: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        run_pass(_model(), spec)


def _levels_error(weight: np.ndarray, gram: np.ndarray, dequantized: np.ndarray) -> float:
    """``tr(E^T H E) / tr(W^T H W)``: the relative output error over the rows ``H`` was summed from."""
    error = weight - dequantized
    return float(np.trace(error.T @ gram @ error) / np.trace(weight.T @ gram @ weight))


def test_gptq_round_keeps_block_scales_and_lowers_the_gram_weighted_error() -> None:
    rows = _correlated(512, seed=4)["x"].astype(np.float64)
    weight = np.random.default_rng(5).standard_normal((64, 24))
    gram = gptq.GramMatrix(64)
    gram.update(rows)
    scales, zero = gptq.block_scales(weight, 16, "s4", np.diag(gram.matrix))
    levels = gptq.gptq_round(weight, gram.matrix, scales, zero, 16, "s4")
    assert levels.min() >= -8 and levels.max() <= 7 and np.array_equal(levels, np.rint(levels))
    nearest = gptq.nearest_levels(weight, scales, zero, 16, "s4")
    errors: dict[str, Any] = {
        name: _levels_error(weight, gram.matrix, gptq.dequantize(found, scales, zero, 16))
        for name, found in (("gptq", levels), ("nearest", nearest))
    }
    assert errors["gptq"] < 0.5 * errors["nearest"], errors


def test_full_range_s4_scales_reach_minus_eight_without_clipping() -> None:
    weight = np.array([[-8.0, 7.0], [4.0, -1.0], [1.0, 3.5], [0.0, 0.0]])
    scales, zero = gptq.block_scales(weight, 16, "s4")
    assert scales.shape == (1, 2) and np.allclose(scales, [[1.0, 1.0]]) and not zero.any()
    levels = gptq.nearest_levels(weight, scales, zero, 16, "s4")
    assert np.array_equal(gptq.dequantize(levels, scales, zero, 16), np.rint(weight))


def test_inverse_factor_is_the_upper_cholesky_factor_of_the_damped_inverse() -> None:
    rows = _correlated(256, seed=6)["x"].astype(np.float64)
    gram = rows.T @ rows
    gram[5, :] = gram[:, 5] = 0.0  # a channel no row reached
    upper = gptq._inverse_factor(gram)
    assert np.allclose(upper, np.triu(upper))
    damped = gram.copy()
    damped[5, 5] = 1.0
    damped += gptq.DAMP * np.mean(np.diag(damped)) * np.eye(64)
    assert np.allclose(upper.T @ upper, np.linalg.inv(damped), rtol=1e-6, atol=1e-9)
    assert not upper[5, 6:].any()  # the dead channel's error moves nowhere


def test_auto_rounds_to_nearest_when_onnxruntime_cannot_run_the_model() -> None:
    body = """<ir_version: 10, opset_import: ["" : 21, "custom.domain" : 1]>
    g (float[N, 64] x) => (float[N, 32] y) {
        h = custom.domain.Unknown(x)
        y = MatMul(h, Wa)
    }"""
    weight = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    model = onnx.parser.parse_model(body)
    model.graph.initializer.append(onnx.numpy_helper.from_array(weight, "Wa"))
    spec = "quantize:mode=weight-only,weights=s4,block-size=16"
    result = run_pass(model, spec, calibration=_correlated(16, seed=1))
    assert result.stats["rounding"]["method"] == "nearest"
    assert "onnxruntime cannot run the model" in result.stats["rounding"]["reason"]
    assert result.stats["nodes"] == {"MatMul#1": "s4 blocks of 16 along K"}
    with pytest.raises(PassFailure, match=r"RuntimeUnavailable: .*Unknown"):
        run_pass(model, f"{spec},rounding=gptq", calibration=_correlated(16, seed=1))
