"""The ``quantize`` budget: the judge streams samples and gives the whole-batch metrics of verification;
layers are ranked by predicted and probed damage, and only O(log layers) candidates are judged."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from helpers import DIGITS, DIGITS_CALIB, parse_model

import onnxshrink
from onnxshrink.context import PassContext
from onnxshrink.data.readers import open_samples
from onnxshrink.passes.quantize import budget
from onnxshrink.passes.quantize.plan import QuantPlan
from onnxshrink.passes.quantize.statistics import (
    TensorStats,
    calibrated_range,
    mean_square,
    qparams,
    quantization_noise,
)
from onnxshrink.verify import compare_output

# Streamed sums differ from one whole-batch sum only by float64 rounding.
COSINE_TOL = 1e-12

SCORES = """
<ir_version: 8, opset_import: ["" : 17]>
scores (float[N, 8] X) => (float[N, 5] Y, int64[N] C)
<float[8, 5] W>
{
    Y = MatMul (X, W)
    C = ArgMax <axis = 1, keepdims = 0> (Y)
}
"""


def _scores(weight: np.ndarray) -> ir.Model:
    proto = onnx.parser.parse_model(SCORES)
    proto.graph.initializer.append(onnx.numpy_helper.from_array(weight, "W"))
    return ir.serde.deserialize_model(proto)


def _whole(model: ir.Model, candidate: ir.Model, feed: dict[str, np.ndarray]) -> tuple[float, float | None]:
    def outputs(m: ir.Model) -> dict[str, np.ndarray]:
        session = ort.InferenceSession(
            ir.serde.serialize_model(m).SerializeToString(), providers=["CPUExecutionProvider"]
        )
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(None, feed), strict=True))

    ref, cand = outputs(model), outputs(candidate)
    metrics = [compare_output(n, ref[n], cand[n], rtol=0.0, atol=0.0) for n in ref]
    agreements = [m.top1_agreement for m in metrics if m.top1_agreement is not None]
    return min(m.cosine for m in metrics), (1.0 - min(agreements)) if agreements else None


@pytest.mark.parametrize("samples", [1, 13, 40])
def test_streamed_damage_equals_the_whole_batch_metrics(samples: int) -> None:
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((8, 5)).astype(np.float32)
    model = _scores(weight)
    candidate = _scores(weight + 0.3 * rng.standard_normal((8, 5)).astype(np.float32))
    feed = {"X": rng.standard_normal((samples, 8)).astype(np.float32)}
    judge = budget.Judge(PassContext(calibration=open_samples(feed)), model, "quantize", samples, 0.5, None)
    damage = judge.measure(candidate)
    cosine, disagreement = _whole(model, candidate, feed)
    assert judge.samples == samples
    # The int64 ArgMax output differs somewhere, so its exact-match cosine is 0, as in verification.
    assert damage.cosine == pytest.approx(cosine, abs=COSINE_TOL)
    assert damage.disagreement == pytest.approx(disagreement, abs=1e-12)
    same = judge.measure(model)
    assert same.cosine == pytest.approx(1.0, abs=COSINE_TOL) and same.disagreement == 0.0


def test_streamed_damage_on_the_digits_cnn_equals_the_whole_batch_metrics() -> None:
    model = ir.load(DIGITS)
    calibration = {name: array[:50] for name, array in np.load(DIGITS_CALIB).items() if name != "labels"}
    quantized = onnxshrink.shrink(DIGITS, ["quantize:samples=50"], calibration=calibration, verify=False).model
    judge = budget.Judge(PassContext(calibration=open_samples(calibration)), model, "quantize", 50, 0.1, None)
    damage = judge.measure(quantized)
    cosine, disagreement = _whole(model, quantized, calibration)
    assert damage.cosine == pytest.approx(cosine, abs=COSINE_TOL) and damage.cosine < 1.0
    assert damage.disagreement == pytest.approx(disagreement, abs=1e-12)


def test_budget_record_counts_the_judged_samples() -> None:
    calibration = {name: array[:20] for name, array in np.load(DIGITS_CALIB).items() if name != "labels"}
    result = onnxshrink.shrink(DIGITS, ["quantize:samples=20,min-cosine=0.9999"], calibration=calibration, verify=False)
    record = result.report["passes"][0]["stats"]["budget"]
    assert record["samples"] == 20
    assert record["met"] == (record["result"]["cosine"] >= 0.9999)


@pytest.mark.parametrize("calibrator", ["minmax", "percentile", "mse"])
@pytest.mark.parametrize("shape", ["normal", "relu", "outliers"])
def test_quantization_noise_from_the_histogram_equals_the_rounding_error(calibrator: str, shape: str) -> None:
    rng = np.random.default_rng(3)
    values = rng.standard_normal(200_000)
    if shape == "relu":
        values = np.maximum(values, 0.0)  # half exact zeros, which cost nothing
    elif shape == "outliers":
        values = values * np.where(rng.random(values.size) < 1e-3, 50.0, 1.0)
    values = values.astype(np.float32)
    stats = TensorStats()
    stats.update(values)
    params = qparams(*calibrated_range(stats, calibrator, symmetric=False), "u8", symmetric=False)
    codes = np.clip(np.rint(values / params.scale) + params.zero_point, 0, 255)
    rounded = (codes - params.zero_point) * params.scale
    error = float(np.mean((values.astype(np.float64) - rounded) ** 2))
    assert quantization_noise(stats, params) == pytest.approx(error, rel=0.01)
    assert mean_square(stats) == pytest.approx(float(np.mean(values.astype(np.float64) ** 2)), rel=1e-3)


# Two independent layers; Z's channel 0 is 1000x the others, so one u8 scale over Z rounds the
# other 63 channels to a few levels, while W2's row 0 is 1000x smaller, so V still hears them.
TWO_LAYERS = """g (float[N, 64] X, float[N, 64] Z) => (float[N, 64] Y, float[N, 64] V) {
    Y = MatMul(X, W1)
    V = MatMul(Z, W2)
}"""


def _two_layers() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    rng = np.random.default_rng(5)
    w2 = rng.standard_normal((64, 64)).astype(np.float32)
    w2[0] /= 1000.0
    weights = {"W1": rng.standard_normal((64, 64)).astype(np.float32), "W2": w2}
    z = rng.standard_normal((64, 64)).astype(np.float32)
    z[:, 0] *= 1000.0
    x = rng.standard_normal((64, 64)).astype(np.float32)
    return parse_model(TWO_LAYERS, initializers=weights), {"X": x, "Z": z}


def test_prediction_and_probe_rank_the_layer_reading_an_outlier_channel_first() -> None:
    model, calibration = _two_layers()
    spec = "quantize:keep-slow-float=false,bias-correction=off,min-cosine=0.999"
    result = onnxshrink.shrink(model, [spec], calibration=calibration, verify=False)
    record = result.report["passes"][0]["stats"]["budget"]
    layers = record["layers"]
    assert set(layers) == {"MatMul#0", "MatMul#1"}
    # The outlier channel's layer: predicted and measured alone far worse than the other.
    assert layers["MatMul#1"]["predicted"] > 100 * layers["MatMul#0"]["predicted"]
    assert 1.0 - layers["MatMul#1"]["alone"]["cosine"] > 100 * (1.0 - layers["MatMul#0"]["alone"]["cosine"])
    # The budget keeps it float, and only it: the fully quantized model missed, one float layer holds.
    assert record["all_quantized"]["cosine"] < 0.999 <= record["result"]["cosine"]
    assert {key: layer["decision"] for key, layer in layers.items()} == {"MatMul#0": "int8", "MatMul#1": "float"}
    assert [(c["float_layers"], c["holds"]) for c in record["candidates"]] == [(0, False), (1, True)]


def _whole_cosine(model: onnx.ModelProto, candidate: onnx.ModelProto, feed: dict[str, np.ndarray]) -> float:
    def outputs(proto: onnx.ModelProto) -> list[np.ndarray]:
        session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        return session.run(None, feed)

    return min(
        compare_output("y", ref, cand, rtol=0.0, atol=0.0).cosine
        for ref, cand in zip(outputs(model), outputs(candidate), strict=True)
    )


@pytest.mark.parametrize("threshold", [0.99998, 0.99999])
def test_the_verified_result_holds_the_budget_on_the_digits_cnn(threshold: float) -> None:
    calibration = {name: array for name, array in np.load(DIGITS_CALIB).items() if name != "labels"}
    spec = f"quantize:min-cosine={threshold},bias-correction=off"
    result = onnxshrink.shrink(DIGITS, ["simplify", spec], calibration=calibration, verify=False)
    record = result.report["passes"][-1]["stats"]["budget"]
    assert record["met"] and record["samples"] == 128 and 0 < record["float_layers"] < len(record["layers"])
    # The saved model, run whole on the 128 judged samples, is the judged candidate: same cosine.
    cosine = _whole_cosine(onnx.load(DIGITS), result.to_proto(), calibration)
    assert cosine == pytest.approx(record["result"]["cosine"], abs=1e-9) and cosine >= threshold


def _chain(layers: int) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """``layers`` MatMul(64x64) -> Relu blocks in a row."""
    rng = np.random.default_rng(7)
    body = "".join(f"    m{i} = MatMul(h{i}, W{i})\n    h{i + 1} = Relu(m{i})\n" for i in range(layers))
    text = f"g (float[N, 64] h0) => (float[N, 64] h{layers}) {{\n{body}}}"
    weights = {f"W{i}": (rng.standard_normal((64, 64)) / 8.0).astype(np.float32) for i in range(layers)}
    return parse_model(text, initializers=weights), {"h0": rng.standard_normal((64, 64)).astype(np.float32)}


def _count_sessions(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The graph names of the sessions passes open from now on, in order (``PassContext.session`` wrapped)."""
    sessions: list[str] = []
    real_session = PassContext.session

    def counted(self: PassContext, model: ir.Model) -> tuple[object, object]:
        sessions.append(model.graph.name or "")
        return real_session(self, model)

    monkeypatch.setattr(PassContext, "session", counted)
    return sessions


def test_the_budget_builds_o_log_n_sessions(monkeypatch: pytest.MonkeyPatch) -> None:
    model, calibration = _chain(32)
    sessions = _count_sessions(monkeypatch)
    # rounding=nearest: what the budget writes (rounding=auto's GPTQ would add a capture to the plain run)
    options = "quantize:keep-slow-float=false,bias-correction=off,samples=64,rounding=nearest"
    onnxshrink.shrink(model, [options], calibration=calibration, verify=False)
    plain = len(sessions)
    sessions.clear()
    result = onnxshrink.shrink(model, [f"{options},min-cosine=0.999"], calibration=calibration, verify=False)
    record = result.report["passes"][0]["stats"]["budget"]
    assert len(record["layers"]) == 32 and 0 < record["float_layers"] < 32
    # The budget's sessions: the probe and the judged candidates, at most 2 + 3 * bits(32) = 20
    # of them: far from one per layer. The float model's outputs come from the calibration run.
    candidates = len(record["candidates"])
    assert len(sessions) - plain == 1 + candidates
    assert 2 <= candidates <= 2 + 3 * (32).bit_length() < 32


def test_a_budget_the_fully_quantized_model_meets_ranks_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    model, calibration = _chain(8)
    sessions = _count_sessions(monkeypatch)
    probed: list[int] = []
    real_probe = budget.probe_layers
    monkeypatch.setattr(budget, "probe_layers", lambda *args: probed.append(1) or real_probe(*args))
    # rounding=nearest: what the budget writes (rounding=auto's GPTQ would add a capture to the plain run)
    options = "quantize:keep-slow-float=false,bias-correction=off,samples=64,rounding=nearest"
    plain = onnxshrink.shrink(model, [options], calibration=calibration, verify=False)
    plain_sessions = len(sessions)
    sessions.clear()
    result = onnxshrink.shrink(model, [f"{options},min-cosine=0.9"], calibration=calibration, verify=False)
    record = result.report["passes"][0]["stats"]["budget"]
    # One judged candidate, the fully quantized model, and no probe: the plain model's graph.
    assert record["met"] and record["float_layers"] == 0 and len(record["candidates"]) == 1
    assert record["probe_samples"] == 0 and not probed and len(sessions) - plain_sessions == 1
    assert all(layer == {"predicted": None, "alone": None, "decision": "int8"} for layer in record["layers"].values())
    assert result.to_proto().graph == plain.to_proto().graph

    sessions.clear()
    strict = onnxshrink.shrink(model, [f"{options},min-cosine=0.99999"], calibration=calibration, verify=False)
    assert probed and strict.report["passes"][0]["stats"]["budget"]["probe_samples"] > 0  # a miss ranks


def test_the_probe_is_the_float_model_with_every_switch_off_and_each_layer_alone_with_one_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: dict[str, Any] = {}
    real_fit = budget.fit_budget

    def spy(judge: budget.Judge, plan: QuantPlan, make_plan: Callable[..., QuantPlan], bits: int, *rest: Any) -> Any:
        seen.update(judge=judge, plan=plan, make_plan=make_plan, bits=bits)
        return real_fit(judge, plan, make_plan, bits, *rest)

    monkeypatch.setattr(budget, "fit_budget", spy)
    calibration = {name: array[:16] for name, array in np.load(DIGITS_CALIB).items() if name != "labels"}
    spec = "quantize:samples=16,min-cosine=0.9,bias-correction=off"
    onnxshrink.shrink(DIGITS, ["simplify", spec], calibration=calibration, verify=False)
    judge, plan, make_plan, bits = seen["judge"], seen["plan"], seen["make_plan"], seen["bits"]
    layers = [key for key, layer in plan.layers.items() if layer.op_type in ("Conv", "Gemm")]
    probe, switches = budget.probe_model(judge.model, plan, layers, bits)
    assert list(switches) == layers and len(layers) == 8
    session = judge.context.session(probe)[0]
    off = {name: np.array(False) for name in switches.values()}
    feed = judge.feeds[0]
    (reference,) = judge.references[:1]
    floats = session.run(None, {**feed, **off})
    # The same float model; onnxruntime picks other Conv kernels for a computed weight, which sum
    # in another order: logits of magnitude ~10 differ by up to 1.5e-6.
    for probed_float, float_output in zip(floats, reference.values(), strict=True):
        np.testing.assert_allclose(probed_float, np.asarray(float_output), rtol=1e-5, atol=1e-5)
    for key in (layers[0], layers[-1]):  # the stem and the classifier head
        probed = session.run(None, {**feed, **off, switches[key]: np.array(True)})
        alone = make_plan(tuple(k for k in layers if k != key))
        quantized = budget.quantized_copy(judge.model, alone, bits)
        real = judge.context.session(quantized)[0].run(None, feed)
        (name,) = reference
        ours = compare_output(name, np.asarray(reference[name]), probed[0], rtol=0.0, atol=0.0).cosine
        theirs = compare_output(name, np.asarray(reference[name]), real[0], rtol=0.0, atol=0.0).cosine
        # Float arithmetic on the rounded values vs the int8 kernels: the same damage within 30 %.
        assert ours < 1.0 and (1.0 - ours) == pytest.approx(1.0 - theirs, rel=0.3)


def test_screen_stops_only_when_the_budget_is_missed_for_certain() -> None:
    rng = np.random.default_rng(11)
    weight = rng.standard_normal((8, 5)).astype(np.float32)
    model = _scores(weight)
    feed = {"X": rng.standard_normal((64, 8)).astype(np.float32)}
    context = PassContext(calibration=open_samples(feed))
    judge = budget.Judge(context, model, "quantize", 64, None, 0.999)
    ruined = _scores(weight + rng.standard_normal((8, 5)).astype(np.float32))
    damage, judged = judge.screen(ruined)
    assert judged < judge.samples == 64  # stopped after a batch or two
    assert judge.measure(ruined).cosine < 0.999 and damage.cosine < 0.999
    close = _scores(weight + 1e-4 * rng.standard_normal((8, 5)).astype(np.float32))
    cosine_only = budget.Judge(context, _scores(weight), "quantize", 64, None, 0.999)
    damage, judged = cosine_only.screen(close)
    assert judged == 64 and damage == cosine_only.measure(close) and cosine_only.holds(damage)
    # max-drop: certain once the mismatches already exceed the budget's share of every judged row.
    strict = budget.Judge(context, model, "quantize", 64, 0.05, None)
    damage, judged = strict.screen(ruined)
    assert judged < 64 and strict.measure(ruined).disagreement > 0.05
