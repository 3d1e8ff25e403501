"""onnxruntime for tests: sessions, runs, and the one tolerance helper.

:func:`assert_close` runs two models on the same feed and compares their outputs with
:func:`assert_outputs_close`: fp32 exact passes use :data:`RTOL` 1e-5 and :data:`ATOL` 1e-6 unless
a test writes down why it needs more.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnxruntime as ort

from .feeds import random_feed
from .models import ModelLike, as_proto

RTOL = 1e-5
ATOL = 1e-6


def session(model: ModelLike) -> ort.InferenceSession:
    """A CPU session with full graph optimizations, as users run models."""
    source: str | bytes
    if isinstance(model, (bytes, str, os.PathLike)):
        source = model if isinstance(model, bytes) else os.fspath(model)
    else:
        source = as_proto(model).SerializeToString()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])


def run(model: ModelLike, feed: Mapping[str, Any]) -> list[Any]:
    """Outputs of ``model`` on ``feed`` in graph-output order."""
    return session(model).run(None, dict(feed))


def run_unfused(model: ModelLike, feed: Mapping[str, Any]) -> list[Any]:
    """Outputs of ``model`` with onnxruntime's graph optimizations off: a QDQ model as its nodes define it.

    Fused integer kernels depend on the CPU: on x86 without VNNI, u8 x s8 products are summed in
    saturating int16 pairs, so the 8-bit weights of ``quantize:cpu=vnni`` saturate there. Tests
    of rounding arithmetic read the unfused graph, which is the same on every CPU.
    """
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    source = as_proto(model).SerializeToString() if not isinstance(model, bytes) else model
    return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"]).run(None, dict(feed))


def assert_outputs_close(
    expected: Sequence[Any], actual: Sequence[Any], *, rtol: float = RTOL, atol: float = ATOL, context: str = ""
) -> None:
    """Element-wise comparison of two output lists (tensors, sequences, optionals).

    Float elements must satisfy ``|actual - expected| <= atol + rtol * |expected|`` (NaN matches
    NaN); other dtypes must be equal. Shapes and dtypes must match exactly.
    """
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


def output_scale(outputs: Sequence[Any]) -> float:
    """The largest magnitude among the float tensors of an output list (1.0 when there are none)."""
    return max((float(np.abs(o).max()) for o in outputs if _is_float_tensor(o)), default=1.0)


def _is_float_tensor(value: Any) -> bool:
    return value is not None and not isinstance(value, list) and np.asarray(value).dtype.kind == "f"


def assert_close(
    reference: ModelLike,
    candidate: ModelLike,
    feed: Mapping[str, Any] | None = None,
    *,
    rtol: float = RTOL,
    atol: float = ATOL,
    scaled_atol: float = 0.0,
    context: str = "",
) -> None:
    """Runs both models with onnxruntime (CPU) on the same feed; their outputs must agree.

    Args:
        reference: The model whose outputs are expected.
        candidate: The model under test.
        feed: Inputs for both; default :func:`random_feed` of ``reference``.
        rtol: Relative tolerance (fp32 exact passes: 1e-5).
        atol: Absolute tolerance (fp32 exact passes: 1e-6).
        scaled_atol: When positive, the absolute tolerance is at least this times the largest
            float output of ``reference``: for passes that reorder float sums, whose rounding
            grows with the values.
        context: Names the comparison in failure messages.
    """
    inputs = random_feed(reference) if feed is None else feed
    want, got = run(reference, inputs), run(candidate, inputs)
    if scaled_atol > 0:
        atol = max(atol, scaled_atol * output_scale(want))
    assert_outputs_close(want, got, rtol=rtol, atol=atol, context=context)
