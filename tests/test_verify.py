"""Metrics and tolerances of the numeric comparison."""

from __future__ import annotations

import numpy as np
import pytest

from onnxshrink.verify import accuracy, compare_output


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
