"""onnxshrink: an ONNX compression compiler.

ONNX in, smaller and faster ONNX out, numerics checked with onnxruntime::

    import onnxshrink
    result = onnxshrink.shrink("model.onnx", ["cleanup"])
    result.save("small.onnx")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from onnxshrink._version import __version__

if TYPE_CHECKING:
    from onnxshrink.api import ShrinkResult, shrink

__all__ = ["ShrinkResult", "__version__", "shrink"]


def __getattr__(name: str) -> Any:
    # Imported lazily so ``onnxshrink --help`` does not pay for onnx and numpy.
    if name in ("shrink", "ShrinkResult"):
        from onnxshrink import api

        return getattr(api, name)
    raise AttributeError(f"module 'onnxshrink' has no attribute {name!r}")
