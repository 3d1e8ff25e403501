"""What ``onnxshrink inspect`` reports.

The model summary (MACs, per-layer table), the side-by-side diff of two models, the
integer-kernel map and the TensorRT lint.
"""
