"""Where ``auto``'s profile items and trials run: ``local`` processes or a ``ray`` cluster.

See :mod:`~onnxshrink.autotune.executors.base` for the interface both offer.
"""

from __future__ import annotations

from onnxshrink.autotune.executors.base import Executor, NodeProgress, TrialTask
from onnxshrink.autotune.executors.local import LocalExecutor
from onnxshrink.errors import UsageError

EXECUTORS = ("local", "ray")


def make_executor(name: str, workers: int | None, ray_address: str = "auto", retries: int = 2) -> Executor:
    """The executor called ``name``.

    Args:
        name: ``local`` or ``ray``.
        workers: Local worker processes (default 1); on Ray the most workers (default: every CPU of the cluster).
        ray_address: ``auto`` (the cluster this machine belongs to), ``HOST:PORT``, or ``local`` (start one here).
        retries: Ray: restarts of a dead worker and retries of its task before the work is recorded failed.

    Raises:
        UsageError: An unknown executor, or Ray missing or unreachable.
    """
    if workers is not None and workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}")
    if name == "local":
        return LocalExecutor(workers or 1)
    if name == "ray":
        from onnxshrink.autotune.executors.ray_cluster import RayExecutor

        return RayExecutor(workers, ray_address, retries)
    raise UsageError(f"--executor {name}: unknown; valid: {', '.join(EXECUTORS)}")


__all__ = ["EXECUTORS", "Executor", "LocalExecutor", "NodeProgress", "TrialTask", "make_executor"]
