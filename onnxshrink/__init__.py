"""onnxshrink: an ONNX compression compiler.

ONNX in, smaller and faster ONNX out, numerics checked with onnxruntime::

    import onnxshrink
    result = onnxshrink.shrink("model.onnx", ["cleanup"])
    result.save("small.onnx")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from onnxshrink._version import __version__

# In a source checkout the passes live in ``passes/`` beside this package (the wheel installs
# them as ``onnxshrink.passes``); let ``python -m onnxshrink.cli`` from the checkout find them.
_here = __import__("pathlib").Path(__file__).resolve().parent
if (
    (_here.parent / "pyproject.toml").is_file()
    and (_here.parent / "passes" / "__init__.py").is_file()
    and not (_here / "passes").exists()
):
    __path__.append(str(_here.parent))

if TYPE_CHECKING:
    from onnxshrink.api import ShrinkResult, shrink

__all__ = ["ShrinkResult", "__version__", "shrink"]


def __getattr__(name: str) -> Any:
    # Imported lazily so ``onnxshrink --help`` does not pay for onnx and numpy.
    if name in ("shrink", "ShrinkResult"):
        from onnxshrink import api

        return getattr(api, name)
    raise AttributeError(f"module 'onnxshrink' has no attribute {name!r}")
