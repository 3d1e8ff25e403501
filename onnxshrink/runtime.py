"""onnxruntime sessions: provider choice, model sources and running feeds.

``auto`` means CUDAExecutionProvider when this onnxruntime lists it *and* a session with it can
be created (and actually uses it), else CPU. The choice and its reason go into the report.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxshrink.errors import UsageError
from onnxshrink.ir.graphs import all_tensors, count_bytes

logger = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
PROVIDERS = ("auto", "cpu", "cuda")
_IN_MEMORY_LIMIT = 1 << 30


class RuntimeUnavailable(Exception):
    """onnxruntime cannot load or run this model (custom op, unsupported type...).

    ``stage`` is ``"load"`` when no session could be created, ``"run"`` when the inputs failed.
    """

    def __init__(self, message: str, stage: str = "load") -> None:
        super().__init__(message)
        self.stage = stage


@dataclasses.dataclass(frozen=True)
class ProviderChoice:
    """Which execution provider ran, and why."""

    requested: str
    used: str
    reason: str

    def to_json(self) -> dict[str, str]:
        """Returns the choice as plain JSON data (``requested``, ``used``, ``reason``)."""
        return dataclasses.asdict(self)


def _ort() -> Any:
    import onnxruntime

    return onnxruntime


_thread_share: int | None = None  # this process's share of the cores, set by cap_threads


def cap_threads(threads: int | None) -> None:
    """Sets the intra-op threads of every session this process opens without a count of its own.

    A worker process that shares the machine with others takes its share of the cores: by
    default each onnxruntime session starts one thread per core, so N workers would run N times
    as many busy threads as there are cores. None restores onnxruntime's default.
    """
    global _thread_share
    _thread_share = threads


def _session_options(threads: int | None, configure: Callable[[Any], None] | None = None) -> Any:
    options = _ort().SessionOptions()
    options.log_severity_level = 4  # errors reach the user as our own one-line messages
    threads = threads or _thread_share
    if threads:
        options.intra_op_num_threads = threads
    if configure is not None:
        configure(options)
    return options


def _new_session(
    source: str | bytes, providers: list[str], threads: int | None, configure: Callable[[Any], None] | None = None
) -> Any:
    try:
        options = _session_options(threads, configure)
        return _ort().InferenceSession(source, sess_options=options, providers=providers)
    except Exception as error:  # onnxruntime raises several exception types for unloadable models
        raise RuntimeUnavailable(str(error).strip().splitlines()[0] if str(error).strip() else repr(error)) from None


def create_session(
    source: str | bytes,
    provider: str = "auto",
    *,
    available: Sequence[str] | None = None,
    threads: int | None = None,
    configure: Callable[[Any], None] | None = None,
) -> tuple[Any, ProviderChoice]:
    """Creates an InferenceSession on the chosen provider.

    Args:
        source: A model path or serialized model bytes.
        provider: ``auto``, ``cpu`` or ``cuda``.
        available: The providers to consider as available; defaults to what onnxruntime lists.
        threads: intra-op threads, or None for onnxruntime's default.
        configure: Called with each session's SessionOptions before the session is created
            (optimization level, ``optimized_model_filepath``...).

    Returns:
        The session and the provider choice with its reason.

    Raises:
        UsageError: ``cuda`` was asked for but cannot be used.
        RuntimeUnavailable: onnxruntime cannot load the model on any allowed provider.
    """
    if provider not in PROVIDERS:
        raise UsageError(f"unknown provider '{provider}'; valid: {', '.join(PROVIDERS)}")
    listed = list(available) if available is not None else list(_ort().get_available_providers())
    if provider == "cpu":
        return _new_session(source, [CPU], threads, configure), ProviderChoice(provider, CPU, "requested")
    if CUDA not in listed:
        if provider == "cuda":
            raise UsageError(
                "--provider cuda, but this onnxruntime has no CUDAExecutionProvider "
                "(install onnxshrink[gpu], which uses onnxruntime-gpu)"
            )
        return _new_session(source, [CPU], threads, configure), ProviderChoice(
            provider, CPU, "CUDAExecutionProvider not available"
        )
    failure: str
    try:
        session = _new_session(source, [CUDA, CPU], threads, configure)
    except RuntimeUnavailable as error:
        failure = f"CUDA session creation failed: {error}"
    else:
        if session.get_providers()[:1] == [CUDA]:
            return session, ProviderChoice(provider, CUDA, "available" if provider == "auto" else "requested")
        failure = "CUDAExecutionProvider is listed but the session did not use it"
    if provider == "cuda":
        raise UsageError(f"--provider cuda: {failure}")
    logger.info("falling back to CPU: %s", failure)
    return _new_session(source, [CPU], threads, configure), ProviderChoice(provider, CPU, failure)


@contextlib.contextmanager
def model_source(model: ir.Model) -> Iterator[str | bytes]:
    """A source onnxruntime can open for an IR model: bytes when small, else a temporary file."""
    has_external = any(isinstance(t, ir.ExternalTensor) for t in all_tensors(model))
    if not has_external and count_bytes(model) < _IN_MEMORY_LIMIT:
        yield ir.serde.serialize_model(model).SerializeToString()
        return
    with tempfile.TemporaryDirectory(prefix="onnxshrink-") as tmp:
        path = Path(tmp) / "model.onnx"
        ir.save(model, path, external_data="model.onnx.data")
        yield str(path)


def run(session: Any, feed: Mapping[str, Any]) -> dict[str, Any]:
    """Runs a session; returns outputs by name."""
    names = [o.name for o in session.get_outputs()]
    try:
        values = session.run(names, dict(feed))
    except Exception as error:  # onnxruntime raises its own exception types
        raise RuntimeUnavailable(str(error).strip().splitlines()[0], stage="run") from None
    return dict(zip(names, values, strict=True))


def run_batched(session: Any, feed: Mapping[str, np.ndarray], chunk: int) -> dict[str, np.ndarray]:
    """Runs a feed whose first axis is samples in chunks, concatenating outputs."""
    total = min(len(v) for v in feed.values()) if feed else 0
    if total <= chunk:
        return run(session, feed)
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, total, chunk):
        out = run(session, {k: v[start : start + chunk] for k, v in feed.items()})
        for name, value in out.items():
            parts.setdefault(name, []).append(np.asarray(value))
    return {name: np.concatenate(values, axis=0) for name, values in parts.items()}
