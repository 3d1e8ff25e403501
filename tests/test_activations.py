"""Activation capture and calibration batching through the pass context, on real ORT sessions."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import parse_ir_model

from onnxshrink.activations import capture
from onnxshrink.context import PassContext
from onnxshrink.data.readers import open_samples
from onnxshrink.errors import UsageError

_TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 4] x) => (float[N, 3] y) <float[4, 3] w = {1,0,0, 0,1,0, 0,0,1, 1,1,1}> {
    h = MatMul(x, w)
    y = Relu(h)
}
"""


def _context(samples: int) -> PassContext:
    rng = np.random.default_rng(0)
    data = {"x": rng.standard_normal((samples, 4)).astype(np.float32), "labels": np.zeros(samples, np.int64)}
    return PassContext(calibration=open_samples(data))


def test_capture_streams_batches_of_intermediate_values_and_leaves_the_model_alone() -> None:
    model = parse_ir_model(_TEXT)
    context = _context(10)
    seen = []
    for feed, arrays in capture(context, model, ["h", "x", "w"], pass_name="t", batch_size=4):
        assert set(feed) == {"x"}  # labels are not a model input
        np.testing.assert_allclose(arrays["h"], feed["x"] @ arrays["w"], rtol=1e-6)
        np.testing.assert_array_equal(arrays["x"], feed["x"])
        seen.append(len(feed["x"]))
    assert seen == [4, 4, 2]
    assert [v.name for v in model.graph.outputs] == ["y"]


def test_calibration_batches_stop_at_the_sample_count() -> None:
    batches = list(_context(10).calibration_batches("t", ["x"], samples=7, batch_size=4))
    assert [len(b["x"]) for b in batches] == [4, 3]


def test_missing_input_and_unknown_value_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="no input 'z'"):
        list(_context(4).calibration_batches("t", ["z"]))
    with pytest.raises(UsageError, match="no value named 'nope'"):
        list(capture(_context(4), parse_ir_model(_TEXT), ["nope"], pass_name="t"))
    with pytest.raises(UsageError, match="needs calibration data"):
        list(capture(PassContext(), parse_ir_model(_TEXT), ["h"], pass_name="t"))


def test_a_batch_is_dropped_when_the_next_is_asked_for() -> None:
    """One batch of activations alive at a time: the previous dict is empty while the next one runs."""
    batches = capture(_context(10), parse_ir_model(_TEXT), ["h"], pass_name="t", batch_size=4)
    _, first = next(batches)
    assert first["h"].shape == (4, 3)
    _, second = next(batches)
    assert first == {} and second["h"].shape == (4, 3)
