"""onnxshrink: an ONNX compression compiler.

ONNX in, smaller and faster ONNX out, numerics checked with onnxruntime::

    import onnxshrink
    result = onnxshrink.shrink("model.onnx", ["cleanup"])
    result.save("small.onnx")

Calibration data opens from a path in one call: ``onnxshrink.open_samples("calib.npz")``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from onnxshrink._version import __version__

if TYPE_CHECKING:
    from onnxshrink.api import ShrinkResult, shrink
    from onnxshrink.autotune import AutoResult, auto
    from onnxshrink.data.readers import open_samples

__all__ = ["AutoResult", "ShrinkResult", "__version__", "auto", "open_samples", "shrink"]
_LAZY = {
    "shrink": "onnxshrink.api",
    "ShrinkResult": "onnxshrink.api",
    "open_samples": "onnxshrink.data.readers",
    "auto": "onnxshrink.autotune",
    "AutoResult": "onnxshrink.autotune",
}


def __getattr__(name: str) -> Any:
    # Imported lazily so ``onnxshrink --help`` does not pay for onnx and numpy.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'onnxshrink' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
