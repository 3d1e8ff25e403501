"""The one place tests build models, make inputs, run passes and compare outputs.

Test modules import every name from here (``from helpers import parse_model, run_pass``), never
from one another; fixtures built on these live in ``conftest.py``.

* :mod:`helpers.models`: models from ONNX text (:func:`parse_model`, :func:`parse_ir_model`),
  :func:`random_arrays` for weights, :func:`op_counts`, :func:`initializer_arrays`,
  :func:`assert_same_signature`; paths :data:`DIGITS`, :data:`DIGITS_CALIB`, :data:`DIGITS_TEST`.
* :mod:`helpers.feeds`: :func:`random_feed` (dtype and shape aware, seeded, dynamic dims by a
  sizes map), :class:`OnceReader` (a calibration reader), :func:`node_cases` and
  :func:`node_case_feed` (the ONNX backend node suite), :class:`NodeSuiteTally`.
* :mod:`helpers.running`: :func:`run_pass`, passes through the real pipeline with every check
  on, returning a :class:`PassRun`; :class:`PassRegistrations`, passes and presets registered
  for one test and removed afterwards.
* :mod:`helpers.numerics`: onnxruntime :func:`session` and :func:`run`, :func:`assert_outputs_close`
  and :func:`assert_close`, the one tolerance helper (fp32 exact passes: rtol 1e-5, atol 1e-6
  unless a test writes down why).
* :mod:`helpers.real_models`: real third-party models, :data:`REAL_MODELS`, :func:`fetch` and
  :func:`real_model_feed`, speech-like audio and silero-vad's streaming calls
  (:func:`speech_like_audio`, :func:`silero_stream`); :mod:`helpers.wheel_cache` keeps their files.
* :mod:`helpers.search`: :func:`bare_search`, an ``auto`` search over a hand-made profile.
"""

from __future__ import annotations

from .feeds import NodeSuiteTally, OnceReader, node_case_feed, node_cases, random_feed
from .models import (
    DIGITS,
    DIGITS_CALIB,
    DIGITS_TEST,
    IF_READS_MAIN_RELU,
    IR_VERSION,
    LAYERNORM_MLP,
    MODELS,
    OPSET,
    ROOT,
    Initializer,
    ModelFile,
    ModelLike,
    as_proto,
    assert_same_signature,
    initializer_arrays,
    op_counts,
    parse_ir_model,
    parse_model,
    random_arrays,
)
from .numerics import ATOL, RTOL, assert_close, assert_outputs_close, output_scale, run, run_unfused, session
from .progress import ProgressRecorder, RecordedTask
from .real_models import (
    REAL_MODELS,
    RealModel,
    cache_dir,
    fetch,
    get_real_model,
    real_model_feed,
    silero_stream,
    speech_like_audio,
)
from .running import PassLike, PassRegistrations, PassRun, assert_exact_change, run_pass
from .search import bare_search

__all__ = [
    "ATOL",
    "DIGITS",
    "DIGITS_CALIB",
    "DIGITS_TEST",
    "IF_READS_MAIN_RELU",
    "IR_VERSION",
    "LAYERNORM_MLP",
    "MODELS",
    "OPSET",
    "REAL_MODELS",
    "ROOT",
    "RTOL",
    "Initializer",
    "ModelFile",
    "ModelLike",
    "NodeSuiteTally",
    "OnceReader",
    "PassLike",
    "PassRegistrations",
    "PassRun",
    "ProgressRecorder",
    "RealModel",
    "RecordedTask",
    "as_proto",
    "assert_close",
    "assert_exact_change",
    "assert_outputs_close",
    "assert_same_signature",
    "bare_search",
    "cache_dir",
    "fetch",
    "get_real_model",
    "initializer_arrays",
    "node_case_feed",
    "node_cases",
    "op_counts",
    "output_scale",
    "parse_ir_model",
    "parse_model",
    "random_arrays",
    "random_feed",
    "real_model_feed",
    "run",
    "run_pass",
    "run_unfused",
    "session",
    "silero_stream",
    "speech_like_audio",
]
