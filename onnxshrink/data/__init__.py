"""Calibration, verification and evaluation data: one type, ``Samples``, for all three.

- ``readers``: where samples come from (npz, npy, folder of npz, ``module:attribute`` reader,
  arrays): ``open_samples`` (also ``onnxshrink.open_samples``).
- ``samples``: ``Samples`` (streamed, batched, checked against a model, labels split off) and
  ``Feed``, the arrays one comparison runs on; ``verification_feed`` picks them.
- ``model_inputs``: the model's runtime inputs, ``--shape``/``--fix-shape`` sizes, data fitted to
  the inputs (``fit_arrays``: names, ranks, fixed dims, dtypes), generated values.
"""
