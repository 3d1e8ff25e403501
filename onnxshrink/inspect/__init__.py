"""What ``onnxshrink inspect`` reports: the model summary, the integer-kernel map, the TensorRT lint."""
