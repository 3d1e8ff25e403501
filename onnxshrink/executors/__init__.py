"""Where independent work runs: ``local`` processes or a ``ray`` cluster.

``auto`` hands its profile items and trials to an executor; passes reach the one the user chose
through :attr:`onnxshrink.context.PassContext.executor` (``prune:allocation=sensitivity``
measures its layers there). See :mod:`~onnxshrink.executors.base` for the interface both offer.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from typing import Any

import onnx_ir as ir

from onnxshrink import progress
from onnxshrink.errors import UsageError
from onnxshrink.executors.base import Executor, NodeProgress, Task, Workload
from onnxshrink.executors.local import LocalExecutor
from onnxshrink.executors.ray_cluster import check_address
from onnxshrink.runtime import RuntimeUnavailable

EXECUTORS = ("local", "ray")

logger = logging.getLogger(__name__)


def make_executor(
    name: str,
    workers: int | None,
    ray_address: str = "auto",
    retries: int = 2,
    *,
    gpus: float | None = None,
    provider: str = "cpu",
) -> Executor:
    """The executor called ``name``.

    Args:
        name: ``local`` or ``ray``.
        workers: Local worker processes (default 1); on Ray the most workers (default: every CPU of the cluster).
        ray_address: ``auto`` (the cluster this machine belongs to), ``HOST:PORT``, or ``local`` (start one here).
        retries: Ray: restarts of a dead worker and retries of its task before the work is recorded failed.
        gpus: Ray: GPUs each worker declares (``num_gpus``); None: 1 when ``provider`` is ``cuda`` and
            the cluster has GPUs, else 0.
        provider: The onnxruntime provider the work runs on (``cpu``, ``cuda``, ``auto``).

    Raises:
        UsageError: An unknown executor, bad counts, or Ray missing or unreachable.
    """
    check_executor_options(name, workers, gpus, ray_address)
    if name == "local":
        return LocalExecutor(workers or 1)
    from onnxshrink.executors.ray_cluster import RayExecutor

    return RayExecutor(workers, ray_address, retries, gpus=gpus, provider=provider)


def check_executor_options(
    name: str, workers: int | None, gpus: float | None = None, ray_address: str = "auto"
) -> None:
    """Checks the options of :func:`make_executor` without starting anything.

    Raises:
        UsageError: An unknown executor, fewer than one worker, GPUs asked of the local executor,
            or a Ray address that is not ``auto``, ``local`` or ``HOST:PORT``.
    """
    if name not in EXECUTORS:
        raise UsageError(f"--executor {name}: unknown; valid: {', '.join(EXECUTORS)}")
    if workers is not None and workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}")
    if gpus is not None and gpus < 0:
        raise UsageError(f"--gpus-per-worker must be at least 0, got {gpus:g}")
    if name == "local" and gpus:
        raise UsageError("--gpus-per-worker is for --executor ray (local workers share this machine's GPUs)")
    if name == "ray":
        check_address(ray_address)


def model_bytes(model: ir.Model, what: str) -> bytes | None:
    """``model`` serialized for workers, or None (with a warning) when one protobuf message cannot hold it.

    ``what`` names the work in the warning; the caller then does it in this process.
    """
    try:
        return ir.serde.serialize_model(model).SerializeToString()
    except ValueError as error:  # past 2 GiB
        logger.warning("%s: the model cannot be sent to workers (%s); running in this process", what, error)
        return None


def measure_all(
    executor: Executor, work: Workload, pieces: Sequence[Hashable], label: str
) -> dict[Any, dict[str, Any]]:
    """Every piece's (a layer's) result, measured on ``executor`` with a progress bar named ``label``.

    Raises:
        RuntimeUnavailable: A piece failed for good (after the executor's retries): the message
            names the work (``label`` up to its first colon), the first such layer and its error.
    """
    results: dict[Any, dict[str, Any]] = {}
    with progress.task(label, total=len(pieces)) as step:

        def done(piece: Any, result: dict[str, Any]) -> None:
            results[piece] = result
            step.advance()

        executor.profile_items(work, pieces, done)
    for piece in pieces:
        if results[piece].get("error") is not None:
            raise RuntimeUnavailable(f"{label.split(':')[0]}: layer {piece}: {results[piece]['error']}", stage="run")
    return results


def parallel(executor: Executor | None) -> bool:
    """Whether ``executor`` runs work anywhere but in this process, one piece at a time."""
    return executor is not None and not (executor.name == "local" and executor.workers == 1)


__all__ = [
    "EXECUTORS",
    "Executor",
    "LocalExecutor",
    "NodeProgress",
    "Task",
    "Workload",
    "check_executor_options",
    "make_executor",
    "measure_all",
    "model_bytes",
    "parallel",
]
