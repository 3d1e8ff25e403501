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
    from onnxshrink.autotune import AutoResult
    from onnxshrink.autotune import auto as auto

__all__ = ["AutoResult", "ShrinkResult", "__version__", "auto", "shrink"]


def __getattr__(name: str) -> Any:
    # Imported lazily so ``onnxshrink --help`` does not pay for onnx and numpy.
    if name in ("shrink", "ShrinkResult"):
        from onnxshrink import api

        return getattr(api, name)
    if name in ("auto", "AutoResult"):
        from onnxshrink import autotune

        return getattr(autotune, name)
    raise AttributeError(f"module 'onnxshrink' has no attribute {name!r}")
