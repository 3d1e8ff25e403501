"""``quantize``'s float-exact rewrites before rounding: SmoothQuant-style migration and cross-layer equalization."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from helpers import LAYERNORM_MLP, OnceReader, assert_close, op_counts, parse_model, run, run_pass, run_unfused

from onnxshrink.errors import UsageError
from onnxshrink.passes.quantize import equalize, rewrite, smooth
from onnxshrink.passes.quantize.plan import GraphView, QuantPlan
from onnxshrink.passes.quantize.statistics import ChannelStats

HIDDEN, OUTLIERS = 64, (3, 17)


# LayerNorm -> two MatMuls of a transformer: ``residual=True`` adds BERT's post-LN residual Add,
# which also reads the LayerNorm output (then 1/s cannot go into the LayerNorm).
def _ln_model(residual: bool) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    gamma = np.ones(HIDDEN, np.float32)
    gamma[list(OUTLIERS)] = 60.0  # the outlier channels of trained transformers' LayerNorms
    outputs = "float[N, 8, 32] h, float[N, 8, 32] y" + (", float[N, 8, 64] r" if residual else "")
    residual_add = "r = Add (n, x)" if residual else ""
    text = f"""g (float[N, 8, 64] x) => ({outputs}) {{
        n = LayerNormalization <axis = -1> (x, gamma, beta)
        h = MatMul (n, W1)
        y = MatMul (n, W2)
        {residual_add}
    }}"""
    weights = {
        "gamma": gamma,
        "beta": (rng.standard_normal(HIDDEN) * 0.1).astype(np.float32),
        "W1": (rng.standard_normal((HIDDEN, 32)) / 8).astype(np.float32),
        "W2": (rng.standard_normal((HIDDEN, 32)) / 8).astype(np.float32),
    }
    return parse_model(text, initializers=weights)


def _tokens(seed: int, count: int = 32) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((count, 8, HIDDEN)).astype(np.float32)}


@pytest.mark.parametrize("residual", [False, True], ids=["folded-into-layernorm", "mul-inserted"])
def test_smoothing_keeps_the_float_function(residual: bool) -> None:
    proto = _ln_model(residual)
    model = ir.from_proto(proto)
    view = GraphView(model.graph)
    stats = ChannelStats()
    (normalized,) = run(_exposed(proto, "n"), _tokens(1))
    stats.update(normalized)
    assert stats.outlier_ratio > 30
    groups = {"n": ["MatMul#1", "MatMul#2"]}
    model_for = smooth.ErrorModel("u8", False, 8, True)
    (choice,) = smooth.choose_scales(view, groups, {"n": stats}, "0.5", model_for)
    assert choice.alpha == 0.5 and choice.scales is not None
    assert choice.scales[list(OUTLIERS)].min() > 5 * np.median(choice.scales)  # outliers divided most
    smooth.apply_smoothing(model, [choice])
    smoothed = ir.to_proto(model)
    counts = op_counts(smoothed)
    assert counts["Mul"] == (1 if residual else 0)
    assert choice.applied is not None and choice.applied.startswith("Mul" if residual else "folded into")
    assert_close(proto, smoothed, _tokens(2), rtol=1e-5, atol=1e-5, context="smoothed float model")
    # A smoothed layer the plan leaves float (the accuracy budget) keeps its Mul by 1/s.
    rewrite.apply_plan(model, QuantPlan(target="ort-cpu"), 8)
    assert op_counts(ir.to_proto(model))["Mul"] == counts["Mul"]
    assert_close(proto, ir.to_proto(model), _tokens(2), rtol=1e-5, atol=1e-5, context="smoothed, left float")


def test_smoothing_folds_into_a_mul_by_a_constant() -> None:
    rng = np.random.default_rng(0)
    scale = np.ones(HIDDEN, np.float32)
    scale[list(OUTLIERS)] = 30.0
    proto = parse_model(
        """g (float[N, 8, 64] x) => (float[N, 8, 32] y) {
            e = Erf (x)
            a = Mul (x, e)
            g = Mul (a, half)
            y = MatMul (g, W)
        }""",
        initializers={
            "half": np.full(HIDDEN, 0.5, np.float32),  # per channel: a scalar (GELU's 0.5) stays for ORT's fusion
            "W": (rng.standard_normal((HIDDEN, 32)) / 8).astype(np.float32),
        },
    )
    feed = {"x": _tokens(1)["x"] * scale}
    model = ir.from_proto(proto)
    stats = ChannelStats()
    (gelu,) = run(_exposed(proto, "g"), feed)
    stats.update(gelu)
    (choice,) = smooth.choose_scales(
        GraphView(model.graph), {"g": ["MatMul#3"]}, {"g": stats}, "0.5", smooth.ErrorModel("u8", False, 8, True)
    )
    smooth.apply_smoothing(model, [choice])
    assert choice.applied == "folded into Mul#2"
    smoothed = ir.to_proto(model)
    assert op_counts(smoothed)["Mul"] == 2
    assert_close(proto, smoothed, {"x": _tokens(2)["x"] * scale}, rtol=1e-5, atol=1e-5, context="Mul folded")


def _exposed(proto: onnx.ModelProto, name: str) -> onnx.ModelProto:
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    del model.graph.output[:]
    model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return model


def _output_error(reference: onnx.ModelProto, candidate: onnx.ModelProto, feed: dict[str, np.ndarray]) -> float:
    expected, actual = run(reference, feed), run(candidate, feed)
    return float(sum(np.mean((a - e) ** 2) / np.mean(e**2) for e, a in zip(expected, actual, strict=True)))


@pytest.mark.parametrize("residual", [False, True], ids=["folded-into-layernorm", "mul-inserted"])
@pytest.mark.parametrize("setting", ["auto", "0.5"])
def test_smoothing_lowers_the_int8_error_of_an_outlier_input(residual: bool, setting: str) -> None:
    model = _ln_model(residual)
    calib = _tokens(1, 160)  # 1280 token rows: smooth=auto trusts channel maxima from 1024 on
    plain = run_pass(model, "quantize:cpu=vnni,smooth=off", calibration=calib)
    smoothed = run_pass(model, f"quantize:cpu=vnni,smooth={setting}", calibration=calib)
    before, after = _output_error(model, plain.model, _tokens(2)), _output_error(model, smoothed.model, _tokens(2))
    assert after < before / 2
    record = smoothed.stats["smooth"]
    assert set(record["layers"]) == {"MatMul#1", "MatMul#2"} and record["not_smoothed"] == {}
    layer = record["layers"]["MatMul#1"]
    assert layer["tensor"] == "n" and layer["producer"] == "LayerNormalization" and layer["outlier_ratio"] > 30
    assert layer["relative_error"][f"{layer['alpha']:g}"] < layer["relative_error"]["none"]
    if setting == "auto":
        assert layer["alpha"] in smooth.GRID
    assert plain.stats["smooth"] is None and smoothed.stats["quantized_nodes"] == 2
    assert not any("smooth" in key for key in smoothed.stats.get("skipped", {}))  # the added Mul is no layer


def test_smooth_auto_leaves_an_input_alone_when_no_strength_lowers_the_error() -> None:
    rng = np.random.default_rng(0)
    # Every channel of x and every row of W has the largest magnitude 1: s = 1 for every strength.
    model = parse_model(
        """g (float[N, 64] x) => (float[N, 256] y) {
            y = MatMul (x, W)
        }""",
        initializers={"W": rng.choice([-1.0, 1.0], (64, 256)).astype(np.float32)},
    )
    calib = {"x": rng.choice([-1.0, 1.0], (1024, 64)).astype(np.float32)}
    result = run_pass(model, "quantize:cpu=vnni,smooth=auto,samples=1024", calibration=calib)
    record = result.stats["smooth"]
    assert record["layers"] == {}
    assert "no migration strength of the grid lowers the output error" in record["not_smoothed"]["MatMul#0"]
    reference = run_pass(model, "quantize:cpu=vnni,samples=1024,smooth=off", calibration=calib)
    test = {"x": rng.standard_normal((16, 64)).astype(np.float32)}
    np.testing.assert_array_equal(run(result.model, test)[0], run(reference.model, test)[0])


def test_smooth_auto_leaves_an_input_that_is_int8_already_alone() -> None:
    rng = np.random.default_rng(0)
    model = parse_model(
        LAYERNORM_MLP,
        initializers={
            "gamma": np.where(np.arange(64) == 5, 40.0, 1.0).astype(np.float32),
            "beta": np.zeros(64, np.float32),
            "W1": (rng.standard_normal((64, 256)) / 8).astype(np.float32),
            "W2": (rng.standard_normal((256, 64)) / 16).astype(np.float32),
        },
    )
    result = run_pass(model, "quantize:cpu=vnni,smooth=auto", calibration=_tokens(1, 160))
    record = result.stats["smooth"]
    # The first MatMul's output Q (after its folded Relu) already makes the second one's input int8.
    assert "int8 already" in record["not_smoothed"]["MatMul#3"]
    assert record["layers"]["MatMul#1"]["applied"] == "folded into LayerNormalization#0"
    explicit = run_pass(model, "quantize:cpu=vnni,smooth=0.5", calibration=_tokens(1))
    few = run_pass(model, "quantize:cpu=vnni,smooth=auto", calibration=_tokens(1))  # 256 token rows
    assert few.stats["smooth"]["layers"] == {}
    assert "only 256 calibration rows < 1024" in few.stats["smooth"]["not_smoothed"]["MatMul#1"]
    batches = [{"x": _tokens(1, 160)["x"][i : i + 8]} for i in range(0, 160, 8)]
    once = run_pass(model, "quantize:cpu=vnni,smooth=auto", calibration=OnceReader(batches))
    assert "can be read only once" in once.stats["smooth"]["reason"] and once.stats["quantized_nodes"] == 2
    assert set(explicit.stats["smooth"]["layers"]) == {"MatMul#1", "MatMul#3"}  # a strength given: every input


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("quantize:smooth=1.5", "must be in (0, 1)"),
        ("quantize:smooth=strong", "must be off, auto or a migration strength"),
        ("quantize:mode=dynamic,smooth=0.5", "smooth/equalize need mode=static"),
        ("quantize:mode=weight-only,equalize=true", "smooth/equalize need mode=static"),
    ],
)
def test_bad_smooth_and_equalize_options_are_usage_errors(spec: str, message: str) -> None:
    with pytest.raises(UsageError, match="quantize") as error:
        run_pass(_ln_model(False), spec, calibration=_tokens(1))
    assert message in str(error.value)


# Depthwise-separable block: a depthwise Conv with skewed channel ranges, Relu, a pointwise Conv;
# then a plain 3x3 Conv -> Relu -> 1x1 Conv pair, and a Clip (Relu6) pair that must be left alone.
CHAIN = """g (float[N, 16, 8, 8] x) => (float[N, 8, 8, 8] y, float[N, 8, 8, 8] z) {
    d = Conv <group = 16, pads = [1, 1, 1, 1]> (x, Wd, Bd)
    dr = Relu (d)
    p = Conv (dr, Wp, Bp)
    c = Conv <pads = [1, 1, 1, 1]> (p, Wc, Bc)
    cr = LeakyRelu <alpha = 0.1> (c)
    y = Conv (cr, Wy)
    k = Conv (x, Wk, Bk)
    kc = Clip (k, zero, six)
    z = Conv (kc, Wz)
}"""


def _chain() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    skew = (10.0 ** np.linspace(-1.5, 1.5, 16)).astype(np.float32)
    weights = {
        "Wd": rng.standard_normal((16, 1, 3, 3)).astype(np.float32) * skew[:, None, None, None] / 3,
        "Bd": (rng.standard_normal(16) * skew * 0.1).astype(np.float32),
        "Wp": (rng.standard_normal((32, 16, 1, 1)) / 4).astype(np.float32),
        "Bp": (rng.standard_normal(32) * 0.1).astype(np.float32),
        "Wc": (rng.standard_normal((16, 32, 3, 3)) / 17).astype(np.float32) * skew[:, None, None, None],
        "Bc": (rng.standard_normal(16) * 0.1).astype(np.float32),
        "Wy": (rng.standard_normal((8, 16, 1, 1)) / 4).astype(np.float32),
        "Wk": (rng.standard_normal((16, 16, 1, 1)) / 4).astype(np.float32),
        "Bk": np.zeros(16, np.float32),
        "Wz": (rng.standard_normal((8, 16, 1, 1)) / 4).astype(np.float32),
        "zero": np.array(0.0, np.float32),
        "six": np.array(6.0, np.float32),
    }
    return parse_model(CHAIN, initializers=weights)


def _images(seed: int, count: int = 32) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((count, 16, 8, 8)).astype(np.float32)}


def test_equalization_keeps_the_float_function_and_levels_the_ranges() -> None:
    proto = _chain()
    model = ir.from_proto(proto)
    record = equalize.equalize_model(model)
    assert set(record["pairs"]) == {"Conv#0 -> Conv#2", "Conv#2 -> Conv#3", "Conv#3 -> Conv#5"}
    assert record["pairs"]["Conv#0 -> Conv#2"]["through"] == "Relu#1"
    assert record["pairs"]["Conv#3 -> Conv#5"]["through"] == "LeakyRelu#4"
    assert "Clip" in record["not_equalized"]["Conv#6 -> Conv#8"]
    depthwise = record["pairs"]["Conv#0 -> Conv#2"]["first_range_spread"]
    assert depthwise[0] > 100 and depthwise[1] < depthwise[0] / 10
    # Outputs reach ~70 and each product is rescaled by up to 30x: float rounding grows with them.
    assert_close(
        proto, ir.to_proto(model), _images(2), rtol=1e-5, atol=1e-5, scaled_atol=1e-5, context="equalized float model"
    )


@pytest.mark.parametrize("options", ["cpu=vnni", "cpu=vnni,keep-slow-float=false,bias-correction=off"])
def test_equalization_lowers_the_int8_error_of_a_skewed_chain(options: str) -> None:
    model = _chain()
    plain = run_pass(model, f"quantize:{options}", calibration=_images(1))
    equalized = run_pass(model, f"quantize:{options},equalize=true", calibration=_images(1))
    test = _images(2)
    (y, _), (y_plain, z_plain), (y_equalized, z_equalized) = (
        run(model, test),
        run_unfused(plain.model, test),  # cpu=vnni's 8-bit weights saturate in fused kernels without VNNI
        run_unfused(equalized.model, test),
    )
    before, after = np.mean((y_plain - y) ** 2), np.mean((y_equalized - y) ** 2)
    assert after < before / 1.5
    np.testing.assert_array_equal(z_plain, z_equalized)  # the Clip pair is left as it was
    assert equalized.stats["equalize"]["pairs"] and plain.stats["equalize"] is None
    assert equalized.stats["quantized_nodes"] == plain.stats["quantized_nodes"]


def test_equalization_leaves_shared_weights_and_branching_outputs_alone() -> None:
    rng = np.random.default_rng(0)
    model = parse_model(
        """g (float[N, 8, 4, 4] x) => (float[N, 8, 4, 4] y, float[N, 8, 4, 4] a) {
            a = Conv (x, W)
            b = Conv (a, W2)
            y = Conv (b, W)
        }""",
        initializers={
            "W": rng.standard_normal((8, 8, 1, 1)).astype(np.float32),
            "W2": rng.standard_normal((8, 8, 1, 1)).astype(np.float32),
        },
    )
    record = equalize.equalize_model(ir.from_proto(model))
    assert record["pairs"] == {}
    assert "shared with another node" in record["not_equalized"]["Conv#1 -> Conv#2"]
