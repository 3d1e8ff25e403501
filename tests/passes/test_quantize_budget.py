"""The ``quantize`` budget's judge streams samples and gives the whole-batch metrics of verification."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from helpers import DIGITS, DIGITS_CALIB

import onnxshrink
from onnxshrink.context import PassContext
from onnxshrink.data.readers import open_samples
from onnxshrink.passes.quantize import budget
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
