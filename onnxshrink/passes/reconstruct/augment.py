"""Calibration feeds seen several ways (``reconstruct:augment=shifts``): more rows from few samples.

Each layer's least-squares problem sees the same transformed feed through the model being refit
and through the input model (the teacher), so a shifted image is one more sample whose targets
are the input model's own values: distillation on data the calibration set implies. With 128
samples a conv refit overfits; one-pixel shifts (the 8 neighbours and the image itself) give 9x
the rows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from onnxshrink.errors import UsageError

Augment = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]
# (dy, dx) of the shifts: the image itself first, then its 8 neighbours.
SHIFTS = ((0, 0), (-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def shifted(images: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``images [N, C, H, W]`` moved ``dy`` rows down and ``dx`` columns right, zeros shifted in."""
    out = np.zeros_like(images)
    height, width = images.shape[-2:]
    rows_from, rows_to = slice(max(-dy, 0), height - max(dy, 0)), slice(max(dy, 0), height - max(-dy, 0))
    cols_from, cols_to = slice(max(-dx, 0), width - max(dx, 0)), slice(max(dx, 0), width - max(-dx, 0))
    out[..., rows_to, cols_to] = images[..., rows_from, cols_from]
    return out


def _is_image(array: np.ndarray) -> bool:
    return array.ndim == 4 and array.dtype.kind == "f" and min(array.shape[-2:]) > 1


def shifts(feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The feed 9 times along the sample axis: image inputs shifted by one pixel, others repeated.

    Raises:
        UsageError: No input is an image (float ``[N, C, H, W]`` with ``H, W > 1``).
    """
    if not any(_is_image(array) for array in feed.values()):
        described = ", ".join(f"{name} {list(array.shape)}" for name, array in feed.items())
        raise UsageError(
            f"reconstruct: augment=shifts needs an image input (float [N, C, H, W]); the inputs are {described}"
        )
    return {
        name: np.concatenate([shifted(array, dy, dx) for dy, dx in SHIFTS])
        if _is_image(array)
        else np.concatenate([array] * len(SHIFTS))
        for name, array in feed.items()
    }


AUGMENTS: dict[str, Augment | None] = {"none": None, "shifts": shifts}
