"""onnxshrink's rewrite passes, one module each; importing this package registers them all."""

from onnxshrink.passes import cleanup, fold

__all__ = ["cleanup", "fold"]
