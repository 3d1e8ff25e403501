"""The onnxshrink version, kept apart so the CLI can print it without importing onnx."""

__version__ = "0.1.0"
