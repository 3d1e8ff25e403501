"""onnxshrink's rewrite passes, one module each; importing this package registers them all."""

from onnxshrink.passes import cleanup, fold, fuse_bn, prune, prune_channels, quantize, reconstruct, sort
from onnxshrink.registry import register_preset

__all__ = ["cleanup", "fold", "fuse_bn", "prune", "prune_channels", "quantize", "reconstruct", "sort"]

register_preset(
    "simplify",
    ("fold", "fuse-bn", "cleanup"),
    doc="structural optimization: fold, fuse BatchNorm, clean up; repeated to a fixed point",
    max_steps=8,
)
