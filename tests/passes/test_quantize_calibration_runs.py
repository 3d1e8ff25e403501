"""How many model runs static quantization spends, and what each session holds; real onnxruntime sessions."""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir
import pytest
from helpers import LAYERNORM_MLP, parse_model, run_pass

import onnxshrink.passes.quantize as quantize_package
from onnxshrink.activations import KeptBatches
from onnxshrink.context import PassContext
from onnxshrink.passes.quantize.statistics import TensorStats, calibrated_range, mean_square
from onnxshrink.runtime import create_session, run


@pytest.fixture
def sessions(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Every session a pass opens through the context, by the output names it computes."""
    opened: list[list[str]] = []
    real = PassContext.session

    def counted(self: PassContext, model: ir.Model) -> tuple[Any, Any]:
        opened.append([value.name or "" for value in model.graph.outputs])
        return real(self, model)

    monkeypatch.setattr(PassContext, "session", counted)
    return opened


def _gemm_model() -> onnx.ModelProto:
    """A Conv feeding a Gemm with bias: both corrected by bias-correction=fast."""
    rng = np.random.default_rng(0)
    return parse_model(
        """g (float[N, 8, 4, 4] x) => (float[N, 16] y) {
            c = Conv (x, W, B)
            r = Relu (c)
            f = Flatten (r)
            y = Gemm <transB = 1> (f, W2, B2)
        }""",
        initializers={
            "W": (rng.standard_normal((8, 8, 1, 1)) / 3).astype(np.float32),
            "B": rng.standard_normal(8).astype(np.float32),
            "W2": (rng.standard_normal((16, 128)) / 11).astype(np.float32),
            "B2": rng.standard_normal(16).astype(np.float32),
        },
    )


def _calibration() -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(1).standard_normal((20, 8, 4, 4)).astype(np.float32)}


def test_fast_bias_correction_reads_the_calibration_run_and_writes_the_same_model(
    sessions: list[list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = "quantize:cpu=vnni,bias-correction=fast,smooth=off,keep-slow-float=false,rounding=nearest"
    kept = run_pass(_gemm_model(), spec, calibration=_calibration())
    assert len(sessions) == 1  # calibration only: the layer inputs were kept from it
    assert set(kept.stats["bias_correction"]["layers"]) == {"Conv#0", "Gemm#3"}
    sessions.clear()
    monkeypatch.setattr(quantize_package, "_KEPT_BYTES", 0)  # too large to keep: a capture of its own
    captured = run_pass(_gemm_model(), spec, calibration=_calibration())
    assert sessions[1] == ["f"]  # the Conv reads the graph input: from the feed
    assert kept.stats["bias_correction"] == captured.stats["bias_correction"]
    assert kept.model.SerializeToString() == captured.model.SerializeToString()


def test_kept_batches_are_dropped_past_the_limit_from_the_first_batch_on() -> None:
    small = KeptBatches(["a"], batch_size=4, samples=10, limit=3 * 16)
    for count in (4, 4, 2):
        small.add({"a": np.zeros(count, np.float32), "b": np.zeros(100, np.float32)}, count)
    assert small.holds(["a"], 4) and not small.holds(["a"], 8) and not small.holds(["a", "b"], 4)
    assert [list(batch) for batch in small.replay()] == [["a"]] * 3 and small.nbytes == 40
    # 16 bytes a batch of 4 samples, 10 samples to read: 48 bytes projected, past a limit of 40.
    large = KeptBatches(["a"], batch_size=4, samples=10, limit=40)
    large.add({"a": np.zeros(4, np.float32)}, 4)
    assert large.dropped and not large.batches and not large.holds(["a"], 4)
    large.clear()
    assert not large.dropped


def test_a_session_reads_large_weights_from_memory_and_computes_what_the_serialized_model_does() -> None:
    rng = np.random.default_rng(0)
    proto = parse_model(
        """g (float[N, 64] x) => (float[N, 32] y) {
            h = MatMul (x, w)
            y = Mul (h, t)
        }""",
        initializers={"w": rng.standard_normal((64, 32)).astype(np.float32), "t": np.full(32, 0.5, np.float32)},
    )
    model = ir.serde.deserialize_model(proto)
    before = ir.serde.serialize_model(model).SerializeToString()
    session, _ = PassContext(provider="cpu").session(model)
    assert ir.serde.serialize_model(model).SerializeToString() == before  # the model is left as it was
    feed = {"x": rng.standard_normal((5, 64)).astype(np.float32)}
    expected = run(create_session(before, "cpu")[0], feed)
    assert np.array_equal(run(session, feed)["y"], expected["y"])
    # The 8 KB weight went by memory; the 128-byte vector stayed in the proto.
    assert len(session.onnxshrink_weights) == 1


def test_a_model_with_external_data_onnxruntime_cannot_take_from_memory_opens_through_a_file(tmp_path: Any) -> None:
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((64, 32)).astype(np.float32)
    proto = parse_model(
        """g (float[N, 64] x) => (float[N, 32] y) {
            y = MatMul (x, w)
        }""",
        initializers={"w": weight},
    )
    model = ir.serde.deserialize_model(proto)
    # A bfloat16 table (no OrtValue wraps one) stays external data that only the file can hold.
    table = ir.Tensor(np.ones(1024, dtype=ml_dtypes.bfloat16), name="table")
    model.graph.register_initializer(ir.Value(name="table", const_value=table))
    ir.save(model, tmp_path / "m.onnx", external_data="m.onnx.data", size_threshold_bytes=0)
    loaded = ir.load(tmp_path / "m.onnx")
    assert isinstance(loaded.graph.initializers["table"].const_value, ir.ExternalTensor)
    session, _ = PassContext(provider="cpu").session(loaded)
    assert not hasattr(session, "onnxshrink_weights")
    feed = {"x": rng.standard_normal((3, 64)).astype(np.float32)}
    np.testing.assert_allclose(run(session, feed)["y"], feed["x"] @ weight, rtol=1e-5, atol=1e-5)


def _smoothed_model() -> onnx.ModelProto:
    """LayerNorm -> MatMul (1/s folds into the LayerNorm) -> Relu -> MatMul (a Mul by 1/s is inserted)."""
    rng = np.random.default_rng(0)
    gamma = np.ones(64, np.float32)
    gamma[[3, 17]] = 40.0  # outlier channels, as in trained transformers' LayerNorms
    return parse_model(
        LAYERNORM_MLP,
        initializers={
            "gamma": gamma,
            "beta": (rng.standard_normal(64) * 0.1).astype(np.float32),
            "W1": (rng.standard_normal((64, 128)) / 8).astype(np.float32),
            "W2": (rng.standard_normal((128, 64)) / 11).astype(np.float32),
        },
    )


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {tensor.name: onnx.numpy_helper.to_array(tensor) for tensor in model.graph.initializer}


def test_smoothing_statistics_come_from_the_calibration_run(
    sessions: list[list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    calibration = {"x": np.random.default_rng(1).standard_normal((24, 8, 64)).astype(np.float32)}
    spec = "quantize:cpu=vnni,smooth=0.5,keep-slow-float=false,rounding=nearest"
    one_run = run_pass(_smoothed_model(), spec, calibration=calibration)
    assert len(sessions) == 1  # smoothing's channel extremes were captured beside the histograms
    smoothed = one_run.stats["smooth"]["layers"]
    assert {layer["applied"].split(" ")[0] for layer in smoothed.values()} == {"folded", "Mul"}
    sessions.clear()
    monkeypatch.setattr(quantize_package.QuantizePass, "_smoothing_rides_calibration", lambda self: False)
    two_runs = run_pass(_smoothed_model(), spec, calibration=calibration)
    assert len(sessions) == 2  # smoothing's capture, then calibration of the smoothed model
    assert one_run.stats["smooth"] == two_runs.stats["smooth"]
    # The same model up to float rounding: the ranges of the smoothed tensors come from the
    # channel extremes before smoothing, not from the smoothed model's own run.
    found, expected = _initializers(one_run.model), _initializers(two_runs.model)
    assert found.keys() == expected.keys()
    for name, array in expected.items():
        if array.dtype.kind == "f":
            np.testing.assert_allclose(found[name], array, rtol=1e-6, err_msg=name)
        else:
            np.testing.assert_array_equal(found[name], array, err_msg=name)


def test_histogram_calibrators_calibrate_the_smoothed_model_in_a_run_of_its_own(sessions: list[list[str]]) -> None:
    calibration = {"x": np.random.default_rng(1).standard_normal((24, 8, 64)).astype(np.float32)}
    result = run_pass(
        _smoothed_model(),
        "quantize:cpu=vnni,smooth=0.5,calibrate=percentile,keep-slow-float=false,rounding=nearest",
        calibration=calibration,
    )
    assert len(sessions) == 2 and len(result.stats["smooth"]["layers"]) == 2


def test_extremes_only_statistics_serve_minmax_and_refuse_the_histogram_readers() -> None:
    stats = TensorStats.from_extremes(-0.5, 3.0, 100)
    assert calibrated_range(stats, "minmax", symmetric=False) == (-0.5, 3.0)
    for method in ("percentile", "entropy", "mse"):
        with pytest.raises(ValueError, match="extremes only"):
            calibrated_range(stats, method, symmetric=False)
    with pytest.raises(ValueError, match="extremes only"):
        mean_square(stats)
