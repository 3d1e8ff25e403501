"""The one helper every test uses to run onnxruntime and compare outputs with tight tolerances.

fp32 exact passes: rtol 1e-5, atol 1e-6 unless a test writes down why it needs more.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

RTOL = 1e-5
ATOL = 1e-6


def session(model: onnx.ModelProto | bytes | str | os.PathLike[str]) -> ort.InferenceSession:
    """A CPU session with full graph optimizations, as users run models."""
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(
        model if isinstance(model, bytes) else str(model), sess_options=options, providers=["CPUExecutionProvider"]
    )


def run(model: onnx.ModelProto | bytes | str | os.PathLike[str], feed: Mapping[str, Any]) -> list[Any]:
    """Outputs of ``model`` on ``feed`` in graph-output order."""
    return session(model).run(None, dict(feed))


def assert_outputs_close(
    expected: Sequence[Any], actual: Sequence[Any], *, rtol: float = RTOL, atol: float = ATOL, context: str = ""
) -> None:
    """Element-wise comparison of two output lists (tensors, sequences, optionals)."""
    assert len(expected) == len(actual), f"{context}: {len(actual)} outputs, expected {len(expected)}"
    for index, (want, got) in enumerate(zip(expected, actual, strict=True)):
        where = f"{context} output {index}"
        if isinstance(want, list):
            assert isinstance(got, list) and len(got) == len(want), f"{where}: sequence differs"
            assert_outputs_close(want, got, rtol=rtol, atol=atol, context=where)
            continue
        if want is None or got is None:
            assert want is None and got is None, f"{where}: optional presence differs"
            continue
        want_arr, got_arr = np.asarray(want), np.asarray(got)
        assert want_arr.shape == got_arr.shape, f"{where}: shape {got_arr.shape} != {want_arr.shape}"
        assert want_arr.dtype == got_arr.dtype, f"{where}: dtype {got_arr.dtype} != {want_arr.dtype}"
        if want_arr.dtype.kind in "fc":
            np.testing.assert_allclose(got_arr, want_arr, rtol=rtol, atol=atol, equal_nan=True, err_msg=where)
        else:
            np.testing.assert_array_equal(got_arr, want_arr, err_msg=where)
