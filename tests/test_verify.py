"""Metrics and tolerances of the numeric comparison, and the Verifier on real onnxruntime sessions."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from helpers import parse_model

from onnxshrink.data.samples import Feed
from onnxshrink.runtime import RuntimeUnavailable
from onnxshrink.verify import DEFAULT_ATOL, DEFAULT_RTOL, Verifier, accuracy, compare_output


def test_tolerance_scales_with_output_magnitude() -> None:
    # ORT disagrees with itself by ~5.8e-4 on resnet50 logits of 1.3e3: that must pass.
    ref = np.linspace(-1300, 1300, 1000, dtype=np.float32).reshape(1, 1000)
    cand = ref + np.float32(5.8e-4)
    metrics = compare_output("logits", ref, cand, rtol=1e-4, atol=1e-5)
    assert metrics.within_tolerance
    assert metrics.tolerance == pytest.approx(1e-5 + 1e-4 * 1300, rel=1e-6)
    assert metrics.top1_agreement == 1.0
    # The same absolute error on an output of magnitude 1e-2 is a real difference.
    small = compare_output("p", ref / 1e5, ref / 1e5 + np.float32(5.8e-4), rtol=1e-4, atol=1e-5)
    assert not small.within_tolerance


def test_metrics_values() -> None:
    ref = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]], dtype=np.float32)
    cand = np.array([[1.0, 2.0, 3.5], [3.0, 2.5, 1.0]], dtype=np.float32)
    m = compare_output("y", ref, cand, rtol=0.0, atol=0.0)
    assert m.max_abs == pytest.approx(0.5)
    assert m.max_rel == pytest.approx(0.5 / 3.0)
    expected_cos = float(np.dot(ref.ravel(), cand.ravel()) / (np.linalg.norm(ref) * np.linalg.norm(cand)))
    assert m.cosine == pytest.approx(expected_cos)
    assert m.top1_agreement == 1.0
    assert not m.within_tolerance


def test_nan_positions_must_match() -> None:
    ref = np.array([1.0, np.nan, np.inf], dtype=np.float32)
    assert compare_output("y", ref, ref.copy(), rtol=1e-5, atol=1e-6).within_tolerance
    moved = np.array([np.nan, 1.0, np.inf], dtype=np.float32)
    result = compare_output("y", ref, moved, rtol=1e-5, atol=1e-6)
    assert not result.within_tolerance


def test_integer_and_bool_outputs_must_be_equal() -> None:
    ref = np.array([1, 2, 3], dtype=np.int64)
    assert compare_output("i", ref, ref.copy(), rtol=1, atol=1).within_tolerance
    assert not compare_output("i", ref, ref + 1, rtol=1, atol=1).within_tolerance
    assert not compare_output("b", np.array([True]), np.array([False]), rtol=1, atol=1).within_tolerance


def test_shape_mismatch_fails() -> None:
    assert not compare_output("y", np.zeros((2, 3)), np.zeros((3, 2)), rtol=1, atol=1).within_tolerance


def test_sequences_compare_elementwise() -> None:
    ref = [np.ones(2, np.float32), np.zeros(3, np.float32)]
    assert compare_output("s", ref, [r.copy() for r in ref], rtol=1e-5, atol=1e-6).within_tolerance
    assert not compare_output("s", ref, ref[:1], rtol=1e-5, atol=1e-6).within_tolerance


def test_accuracy_uses_first_classifier_like_output() -> None:
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]], dtype=np.float32)
    assert accuracy({"logits": logits}, np.array([1, 0, 0])) == pytest.approx(2 / 3)
    assert accuracy({"score": np.ones(3, np.float32)}, np.array([1, 0, 0])) is None


_FIXED_BATCH = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[4, 3] x) => (float[4, 3] y) <float[3] b = {0.5, -1, 2}> { y = Add(x, b) }
"""


def _fixed_batch(bias: list[float] | None = None) -> ir.Model:
    proto = parse_model(_FIXED_BATCH)
    if bias is not None:
        proto.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(np.array(bias, np.float32), "b"))
    return ir.serde.deserialize_model(proto)


def test_verifier_runs_a_fixed_batch_model_in_runs_of_its_batch() -> None:
    """12 samples for a model that takes exactly 4: three runs each, outputs concatenated."""
    x = np.random.default_rng(0).standard_normal((12, 3)).astype(np.float32)
    feed = Feed({"x": x}, np.zeros(12, np.int64), "test arrays")
    reference = ir.serde.serialize_model(_fixed_batch()).SerializeToString()
    verifier = Verifier(reference, feed, "cpu", DEFAULT_RTOL, DEFAULT_ATOL)
    same = verifier.compare(_fixed_batch())
    assert same.within_tolerance and same.samples == 12 and same.inputs == "test arrays"
    assert same.failure(exact=True, max_drop=None, min_cosine=None) is None
    shifted = verifier.compare(_fixed_batch([0.5, -1, 2.5]))
    assert shifted.outputs[0].max_abs == pytest.approx(0.5)
    assert shifted.failure(exact=True, max_drop=None, min_cosine=None).startswith("output 'y' differs by 0.5")
    assert shifted.failure(exact=False, max_drop=None, min_cosine=None) is None  # lossy: no budget given
    assert "below --min-cosine 0.9999" in shifted.failure(exact=False, max_drop=None, min_cosine=0.9999)


def test_verifier_without_a_reference_cannot_compare() -> None:
    verifier = Verifier(None, Feed({"x": np.zeros((4, 3), np.float32)}, None, "zeros"), "cpu", 1e-4, 1e-5)
    with pytest.raises(RuntimeUnavailable, match="pass it as a path to verify"):
        verifier.compare(_fixed_batch())
