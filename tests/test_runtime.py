"""Provider selection: CUDA when listed *and* usable, else CPU, with the reason reported."""

from __future__ import annotations

import onnxruntime as ort
import pytest
from helpers import DIGITS

from onnxshrink.errors import UsageError
from onnxshrink.runtime import CPU, CUDA, cap_threads, create_session

DIGITS_BYTES = DIGITS.read_bytes()
HAS_CUDA = CUDA in ort.get_available_providers()


def test_cpu_when_cuda_is_not_listed() -> None:
    session, choice = create_session(DIGITS_BYTES, "auto", available=[CPU])
    assert choice.used == CPU and choice.reason == "CUDAExecutionProvider not available"
    assert session.get_providers() == [CPU]


@pytest.mark.skipif(HAS_CUDA, reason="needs an onnxruntime where CUDA cannot actually run")
def test_cuda_listed_but_unusable_falls_back_to_cpu() -> None:
    session, choice = create_session(DIGITS_BYTES, "auto", available=[CUDA, CPU])
    assert choice.used == CPU
    assert "CUDA" in choice.reason and "did not use it" in choice.reason
    assert session.get_providers() == [CPU]


@pytest.mark.skipif(HAS_CUDA, reason="needs an onnxruntime without CUDA")
def test_explicit_cuda_without_cuda_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="no CUDAExecutionProvider"):
        create_session(DIGITS_BYTES, "cuda")
    with pytest.raises(UsageError, match="--provider cuda"):
        create_session(DIGITS_BYTES, "cuda", available=[CUDA, CPU])


@pytest.mark.skipif(not HAS_CUDA, reason="needs onnxruntime-gpu and a GPU")
def test_auto_picks_cuda_when_usable() -> None:
    session, choice = create_session(DIGITS_BYTES, "auto")
    assert choice.used == CUDA and session.get_providers()[0] == CUDA


def test_explicit_cpu() -> None:
    _, choice = create_session(DIGITS_BYTES, "cpu")
    assert choice == type(choice)("cpu", CPU, "requested")


def test_unknown_provider() -> None:
    with pytest.raises(UsageError, match="valid: auto, cpu, cuda"):
        create_session(DIGITS_BYTES, "tpu")


def test_a_workers_thread_share_applies_to_sessions_without_their_own_count() -> None:
    """cap_threads (a pool worker's share of the cores) sets intra-op threads; an explicit count wins."""
    try:
        cap_threads(1)
        capped, _ = create_session(str(DIGITS), "cpu")
        explicit, _ = create_session(str(DIGITS), "cpu", threads=2)
        assert capped.get_session_options().intra_op_num_threads == 1
        assert explicit.get_session_options().intra_op_num_threads == 2
    finally:
        cap_threads(None)
    default, _ = create_session(str(DIGITS), "cpu")
    assert default.get_session_options().intra_op_num_threads == 0
