"""``quantize`` ``rounding``: GPTQ error feedback against nearest rounding (weight-only 4-bit, static int8)."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnx.numpy_helper
import onnx.parser
import onnx_ir as ir
import pytest
from helpers import IF_READS_MAIN_RELU, OnceReader, parse_model, run, run_pass, run_unfused

from onnxshrink.errors import PassFailure, UsageError
from onnxshrink.passes.quantize import gptq, int8_rounding

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
        ("quantize:mode=dynamic,rounding=gptq", "rounding=gptq needs mode=static, or mode=weight-only with"),
        ("quantize:mode=weight-only,rounding=gptq", "rounding=gptq needs mode=static, or mode=weight-only"),
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


# Static int8 (int8_rounding.py): a Conv and a Gemm, each reading inputs with correlated channels.
STATIC_BODY = """g (float[N, 8, 12, 12] x, float[N, 64] v) => (float[N, 16, 6, 6] y, float[N, 24] z) {
    y = Conv <pads = [1, 1, 1, 1], strides = [2, 2]> (x, Wconv, Bconv)
    z = Gemm <transB = 1> (v, Wgemm, Bgemm)
}"""


def _static_model() -> onnx.ModelProto:
    rng = np.random.default_rng(7)
    weights = {
        "Wconv": rng.standard_normal((16, 8, 3, 3)) / 6.0,
        "Bconv": rng.standard_normal(16) / 10.0,
        "Wgemm": rng.standard_normal((24, 64)) / 8.0,
        "Bgemm": rng.standard_normal(24) / 10.0,
    }
    return parse_model(STATIC_BODY, initializers={k: v.astype(np.float32) for k, v in weights.items()}, opset=13)


def _static_feed(samples: int, seed: int) -> dict[str, np.ndarray]:
    """Images whose 8 channels mix 2 smooth latent fields, and Gemm inputs as in :func:`_correlated`."""
    rng = np.random.default_rng(seed)
    grid = np.linspace(0.0, np.pi, 12)
    phases = rng.uniform(0.0, 2.0 * np.pi, (samples, 2, 2))
    fields = np.sin(grid[None, None, :, None] + phases[..., :1, None]) * np.cos(
        grid[None, None, None, :] * 0.7 + phases[..., 1:, None]
    )  # [samples, 2, 12, 12]
    mixing = np.random.default_rng(98).standard_normal((8, 2)) * np.linspace(0.3, 2.0, 8)[:, None]
    x = np.einsum("ck,nkhw->nchw", mixing, fields) + 0.02 * rng.standard_normal((samples, 8, 12, 12))
    return {"x": x.astype(np.float32), "v": _correlated(samples, seed + 100)["x"]}


def _output_errors(model: onnx.ModelProto, quantized: onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[float]:
    """Relative squared error of each output of the QDQ graph as written (the same on every CPU)."""
    pairs = zip(run(model, feed), run_unfused(quantized, feed), strict=True)
    return [float(np.square(found - exact).sum() / np.square(exact).sum()) for exact, found in pairs]


def _int8_weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {
        t.name: onnx.numpy_helper.to_array(t)
        for t in model.graph.initializer
        if t.data_type == onnx.TensorProto.INT8 and len(t.dims) > 1
    }


# 8-bit weights: the input's own rounding noise (the same for both) is most of the layer's error.
@pytest.mark.parametrize(("reduce_range", "limit", "ratio"), [("on", 63, 0.6), ("off", 127, 0.9)])
def test_static_gptq_lowers_conv_and_gemm_output_error_under_nearest_scales(
    reduce_range: str, limit: int, ratio: float
) -> None:
    model = _static_model()
    calibration, held_out = _static_feed(64, seed=1), _static_feed(64, seed=2)
    spec = f"quantize:reduce-range={reduce_range},keep-slow-float=false,bias-correction=off"
    nearest = run_pass(model, f"{spec},rounding=nearest", calibration=calibration)
    rounded = run_pass(model, f"{spec},rounding=gptq", calibration=calibration)
    assert nearest.stats["rounding"] == {"method": "nearest", "reason": "rounding=nearest"}
    record = rounded.stats["rounding"]
    assert record["method"] == "gptq" and record["nearest"] == {}
    assert set(record["layers"]) == {"Conv#0", "Gemm#1"}
    assert record["layers"]["Conv#0"]["rows"] == 64 * 6 * 6  # one row per output position
    assert record["layers"]["Gemm#1"]["rows"] == 64
    for layer in record["layers"].values():
        assert layer["relative_error"]["gptq"] < ratio * layer["relative_error"]["nearest"], layer
    errors = zip(
        _output_errors(model, nearest.model, held_out), _output_errors(model, rounded.model, held_out), strict=True
    )
    for near, better in errors:
        assert better < max(ratio, 0.9) * near, (better, near)
    # Only the integer values change: the same initializers, scales and zero points, within the range.
    near_init = {t.name: onnx.numpy_helper.to_array(t) for t in nearest.model.graph.initializer}
    gptq_init = {t.name: onnx.numpy_helper.to_array(t) for t in rounded.model.graph.initializer}
    assert near_init.keys() == gptq_init.keys()
    changed = _int8_weights(rounded.model)
    assert set(changed) == {"Wconv_quantized", "Wgemm_quantized"}
    for name, array in gptq_init.items():
        if name in changed:
            assert array.dtype == near_init[name].dtype and array.shape == near_init[name].shape
            assert np.abs(array).max() <= limit and not np.array_equal(array, near_init[name])
            assert np.abs(array.astype(np.int32) - near_init[name]).max() <= limit // 4
        else:
            assert np.array_equal(array, near_init[name]), name
    assert [n.op_type for n in rounded.model.graph.node] == [n.op_type for n in nearest.model.graph.node]


def test_static_rounding_auto_fits_gemms_with_enough_rows_and_leaves_convs_nearest() -> None:
    """Rule 6 of int8_rounding.py: GPTQ for MatMul/Gemm with at least as many calibration rows as inputs."""
    model = _static_model()
    spec = "quantize:reduce-range=on,keep-slow-float=false,bias-correction=off"
    calibration = _static_feed(64, seed=1)  # the Gemm: 64 rows for its 64 inputs
    auto = run_pass(model, spec, calibration=calibration)
    record = auto.stats["rounding"]
    assert record["method"] == "gptq" and set(record["layers"]) == {"Gemm#1"}
    assert record["nearest"] == {
        "Conv#0": "Conv: rounding=auto rounds MatMul and Gemm weights by GPTQ (rounding=gptq: Convs too)"
    }
    error = record["layers"]["Gemm#1"]["relative_error"]
    assert error["gptq"] < error["nearest"]
    gptq = _int8_weights(run_pass(model, f"{spec},rounding=gptq", calibration=calibration).model)
    nearest = _int8_weights(run_pass(model, f"{spec},rounding=nearest", calibration=calibration).model)
    levels = _int8_weights(auto.model)
    assert np.array_equal(levels["Wgemm_quantized"], gptq["Wgemm_quantized"])
    assert np.array_equal(levels["Wconv_quantized"], nearest["Wconv_quantized"])
    # Fewer rows than inputs: found after the capture, or before it from samples= and the input's shape.
    few = run_pass(model, spec, calibration=_static_feed(32, seed=1)).stats["rounding"]
    assert few["method"] == "nearest" and few["layers"] == {}
    assert few["nearest"]["Gemm#1"] == "32 calibration rows < 64 inputs: too few to fit GPTQ (rounding=auto)"
    capped = run_pass(model, f"{spec},samples=16", calibration=calibration).stats["rounding"]
    assert capped["nearest"]["Gemm#1"] == "at most 16 calibration rows < 64 inputs: too few to fit GPTQ (rounding=auto)"
    # With a budget the written model is the nearest-rounded one the budget judged.
    budgeted = run_pass(model, f"{spec},min-cosine=0.5", calibration=calibration).stats["rounding"]
    assert budgeted == {"method": "nearest", "reason": "the budget judged nearest rounding (rounding=auto)"}


def test_static_gptq_rounds_a_depthwise_conv_per_group_and_is_deterministic() -> None:
    body = """g (float[N, 8, 12, 12] x) => (float[N, 8, 12, 12] y) {
        y = Conv <pads = [1, 1, 1, 1], group = 8> (x, W)
    }"""
    weight = (np.random.default_rng(3).standard_normal((8, 1, 3, 3)) / 3.0).astype(np.float32)
    model = parse_model(body, initializers={"W": weight}, opset=13)
    calibration = {"x": _static_feed(32, seed=1)["x"]}
    spec = "quantize:keep-slow-float=false,reduce-range=on,bias-correction=off,rounding=gptq"
    first, second = run_pass(model, spec, calibration=calibration), run_pass(model, spec, calibration=calibration)
    assert first.model.SerializeToString() == second.model.SerializeToString()
    layer = first.stats["rounding"]["layers"]["Conv#0"]
    assert layer["rows"] == 32 * 12 * 12
    assert layer["relative_error"]["gptq"] < layer["relative_error"]["nearest"], layer
    nearest = run_pass(model, spec.replace("gptq", "nearest"), calibration=calibration)
    held_out = {"x": _static_feed(32, seed=2)["x"]}
    assert _output_errors(model, first.model, held_out)[0] < _output_errors(model, nearest.model, held_out)[0]


def test_im2col_patches_times_the_weight_give_the_conv() -> None:
    rng = np.random.default_rng(4)
    sample = rng.standard_normal((3, 7, 9)).astype(np.float32)
    weight = rng.standard_normal((4, 3, 3, 2)).astype(np.float32)
    for attributes in ("pads = [1, 0, 2, 1], strides = [2, 1], dilations = [1, 2]", 'auto_pad = "SAME_UPPER"'):
        body = f"g (float[1, 3, 7, 9] x) => (float[1, 4, ?, ?] y) {{ y = Conv <{attributes}> (x, W) }}"
        model = parse_model(body, initializers={"W": weight}, opset=13)
        expected = run(model, {"x": sample[None]})[0][0]  # [4, H, W]
        node = next(iter(ir.from_proto(model).graph))
        patches = int8_rounding.im2col(sample[None], int8_rounding.ConvGeometry.of(node, (3, 2)))
        found = (patches @ weight.reshape(4, -1).T).T.reshape(expected.shape)
        np.testing.assert_allclose(found, expected, rtol=1e-5, atol=1e-5)


def test_static_gptq_needs_calibration_data_it_can_read_twice() -> None:
    feed = _static_feed(16, seed=1)
    batches = [{k: v[i : i + 4] for k, v in feed.items()} for i in range(0, 16, 4)]
    with pytest.raises(UsageError, match="rounding=gptq reads the calibration data again"):
        run_pass(_static_model(), "quantize:rounding=gptq", calibration=OnceReader(batches))


def test_static_gptq_in_one_pass_per_gram_matrix_gives_the_same_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    model, calibration = _static_model(), _static_feed(32, seed=1)
    spec = "quantize:keep-slow-float=false,reduce-range=on,rounding=gptq"
    together = run_pass(model, spec, calibration=calibration)
    monkeypatch.setattr(int8_rounding, "GRAM_BUDGET", 1)  # every Gram matrix in a capture pass of its own
    apart = run_pass(model, spec, calibration=calibration)
    assert apart.model.SerializeToString() == together.model.SerializeToString()


def test_static_gptq_leaves_a_shared_weight_to_nearest_rounding_with_the_reason() -> None:
    body = """g (float[N, 64] v, float[N, 64] u) => (float[N, 24] z, float[N, 24] w) {
        z = Gemm <transB = 1> (v, Wgemm)
        w = Gemm <transB = 1> (u, Wgemm)
    }"""
    weight = (np.random.default_rng(2).standard_normal((24, 64)) / 8.0).astype(np.float32)
    model = parse_model(body, initializers={"Wgemm": weight}, opset=13)
    feed = {"v": _correlated(32, seed=1)["x"], "u": _correlated(32, seed=2)["x"]}
    spec = "quantize:keep-slow-float=false,rounding=gptq"
    record = run_pass(model, spec, calibration=feed).stats["rounding"]
    assert record["layers"] == {}
    assert record["nearest"] == {
        "Gemm#0": "weight shared with another layer",
        "Gemm#1": "weight shared with another layer",
    }


def test_static_gptq_rounds_main_graph_layers_and_names_body_layers_left_nearest() -> None:
    body = IF_READS_MAIN_RELU
    rng = np.random.default_rng(1)
    weights = {"W1": rng.standard_normal((16, 16)), "W2": rng.standard_normal((16, 16)), "Zero": np.array(0.0)}
    model = parse_model(body, initializers={k: v.astype(np.float32) for k, v in weights.items()})
    magnitudes = np.abs(rng.standard_normal((16, 16))).astype(np.float32)
    calibration = {"x": np.concatenate([magnitudes[:8], -magnitudes[8:]])}  # one run per branch
    result = run_pass(model, "quantize:keep-slow-float=false,rounding=gptq", calibration=calibration)
    record = result.stats["rounding"]
    assert set(record["layers"]) == {"MatMul#0"}
    assert record["nearest"] == {"If#4/then_branch/MatMul#0": "in a subgraph: rounding=gptq works on the main graph"}
    assert set(result.stats["nodes"]) == {"MatMul#0", "If#4/then_branch/MatMul#0"}
