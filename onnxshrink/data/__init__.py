"""Calibration, verification and evaluation data: one type, :class:`Samples`, for all three.

- ``readers``: where samples come from (npz, folder of npz, ``module:attribute`` reader, arrays).
- ``samples``: :class:`Samples` (streaming, batching, checking against a model) and :class:`Feed`,
  the arrays one comparison runs on; :func:`verification_feed` picks them.
- ``model_inputs``: the model's runtime inputs, ``--shape`` sizes and generated values.
"""

from __future__ import annotations

from onnxshrink.data.model_inputs import (
    LABELS_KEY,
    InputSpec,
    generate_inputs,
    input_specs,
    parse_shapes,
    split_labels,
)
from onnxshrink.data.readers import CalibrationDataReader, open_samples
from onnxshrink.data.samples import VERIFY_SAMPLES, Feed, Samples, verification_feed

__all__ = [
    "LABELS_KEY",
    "VERIFY_SAMPLES",
    "CalibrationDataReader",
    "Feed",
    "InputSpec",
    "Samples",
    "generate_inputs",
    "input_specs",
    "open_samples",
    "parse_shapes",
    "split_labels",
    "verification_feed",
]
