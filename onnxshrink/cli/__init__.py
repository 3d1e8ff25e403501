"""The ``onnxshrink`` command line, derived from the pass registry.

One module per command; importing this package registers them all on :func:`main`. Heavy
imports (onnx, onnxruntime, numpy) happen inside the commands so ``--help`` stays fast.
"""

from __future__ import annotations

from onnxshrink.cli import auto, bench, inspect, passes, report, run, verify  # noqa: F401 - registers the commands
from onnxshrink.cli.common import main

__all__ = ["main"]
